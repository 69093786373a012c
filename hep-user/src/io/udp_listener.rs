//! UDP listeners: one worker thread per core, each with its own SO_REUSEPORT socket,
//! receiving in batches, running the engine, and flushing its outbox per batch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::output::Flusher;
use super::udp_batch::{RecvBatch, bind_reuseport};
use crate::engine::{Engine, Outbox, WorkerCtx};

/// How often an idle worker wakes to notice shutdown.
const POLL: Duration = Duration::from_millis(100);
/// After a batch that was not full, the worker waits this long before the next receive so
/// that datagrams accumulate: one wake-up then moves many datagrams instead of one. At
/// low rates this adds at most this much latency; under load batches are full and there
/// is no wait.
const COALESCE: Duration = Duration::from_micros(200);

/// A running UDP listener (all its workers).
pub struct UdpListener {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// Datagrams cut because they exceeded 64 KiB (counted as truncated parse errors too).
    pub oversize: Arc<AtomicU64>,
}

impl UdpListener {
    /// Binds `workers` sockets on `addr` and starts their threads.
    pub fn start(
        addr: SocketAddr,
        workers: usize,
        batch: usize,
        recv_buffer: usize,
        engine: Arc<ArcSwap<Engine>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let oversize = Arc::new(AtomicU64::new(0));
        let mut sockets = Vec::new();
        refuse_if_bound_elsewhere(addr)?;
        // The first bind decides the port (for ":0"); the others share it.
        let first = bind_reuseport(addr, recv_buffer, POLL)?;
        let bound = first.local_addr()?;
        sockets.push(first);
        for _ in 1..workers.max(1) {
            sockets.push(bind_reuseport(bound, recv_buffer, POLL)?);
        }
        let mut handles = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            let stop = stop.clone();
            let engine = engine.clone();
            let oversize = oversize.clone();
            let h = std::thread::Builder::new()
                .name(format!("udp-{}-{i}", bound.port()))
                .spawn(move || worker(addr, sock, batch, engine, stop, oversize))?;
            handles.push(h);
        }
        Ok(UdpListener {
            addr: bound,
            stop,
            workers: handles,
            oversize,
        })
    }

    /// Stops the workers and waits for them (at most one poll interval).
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        for h in self.workers {
            let _ = h.join();
        }
    }
}

/// The address of a UDP listener is already bound by a socket that is not this
/// listener's (another process, e.g. a second hepfwd with the same configuration).
#[derive(Debug, thiserror::Error)]
#[error(
    "UDP {addr} is already bound by another socket (another hepfwd?): refusing to share it \
     through SO_REUSEPORT, which would split the traffic"
)]
pub struct AddressTaken {
    /// The listener's address.
    pub addr: SocketAddr,
    /// What the probe bind said.
    pub source: std::io::Error,
}

/// Fails when `addr` is already bound by another process: binds a probe socket there
/// *without* SO_REUSEPORT (which fails on any existing socket of the address, SO_REUSEPORT
/// or not), then closes it so that the listener's own SO_REUSEPORT workers can bind. When
/// the probe fails only because of this daemon's own sockets (another listener of ours on
/// the same port, e.g. `0.0.0.0:P` and `127.0.0.1:P` while a reload moves one), the
/// listener binds as before. Port 0 needs no probe (the kernel picks a free port).
fn refuse_if_bound_elsewhere(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As the listener binds it: dual-stack on [::].
        let _ = probe.set_only_v6(false);
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
            if udp_port_held_only_by_this_process(addr.port()) {
                return Ok(());
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                AddressTaken { addr, source },
            ))
        }
        Err(e) => Err(e),
    }
}

/// Whether every UDP socket on `port` in this network namespace (`/proc/net/udp`,
/// `/proc/net/udp6`) is one of this process's descriptors (`/proc/self/fd`), and there is
/// at least one. False when anything cannot be read: the caller then refuses.
fn udp_port_held_only_by_this_process(port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    let own: std::collections::HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|inode| inode.parse().ok())
        })
        .collect();
    let mut found = false;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            return false;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode ...
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            match inode.parse::<u64>() {
                Ok(inode) if own.contains(&inode) => found = true,
                _ => return false,
            }
        }
    }
    found
}

fn worker(
    configured: SocketAddr,
    sock: std::net::UdpSocket,
    batch: usize,
    engine: Arc<ArcSwap<Engine>>,
    stop: Arc<AtomicBool>,
    oversize: Arc<AtomicU64>,
) {
    let _span = tracing::info_span!("udp_worker", listen = %configured).entered();
    let mut rb = RecvBatch::new(batch);
    let mut ctx = WorkerCtx::new();
    let mut out = Outbox::new();
    let mut flusher = Flusher::new();
    let mut listener_idx: Option<(u64, Option<usize>)> = None;
    while !stop.load(Relaxed) {
        let n = match rb.recv(&sock) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let eng = engine.load_full();
        // The listener's index in this configuration, by address.
        let idx = match listener_idx {
            Some((g, i)) if g == eng.generation => i,
            _ => {
                let i = eng
                    .plan
                    .listeners
                    .iter()
                    .position(|l| l.udp == Some(configured));
                listener_idx = Some((eng.generation, i));
                i
            }
        };
        let Some(idx) = idx else { continue };
        if let Some(s) = eng.listener_stats(idx) {
            s.received_udp.fetch_add(n as u64, Relaxed);
        }
        for i in 0..n {
            let Some((from, data, cut)) = rb.get(i) else {
                continue;
            };
            if cut {
                oversize.fetch_add(1, Relaxed);
            }
            eng.process(&mut ctx, idx, from, data, &mut out);
        }
        flusher.flush(&eng, &mut out);
        if n < rb.capacity() {
            std::thread::sleep(COALESCE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_held_by_this_process_only_is_not_refused() {
        let own = bind_reuseport("127.0.0.1:0".parse().unwrap(), 4096, POLL).unwrap();
        let addr = own.local_addr().unwrap();
        assert!(udp_port_held_only_by_this_process(addr.port()));
        // Another socket of ours on the same port (a wildcard listener next to it).
        refuse_if_bound_elsewhere(SocketAddr::from(([0, 0, 0, 0], addr.port()))).unwrap();
        refuse_if_bound_elsewhere(addr).unwrap();
        drop(own);
        refuse_if_bound_elsewhere(addr).unwrap();
    }
}
