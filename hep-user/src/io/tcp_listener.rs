//! TCP listeners: HEPv3 frames cut from each connection's byte stream, processed by the
//! engine. Garbage on a connection is counted and closes it.
//!
//! A connection costs its socket, a task and a read buffer that is allocated when bytes
//! arrive, grows only to the frame being read (at most 65535 bytes: the bound of what one
//! connection holds, whatever its header announces or however slowly it sends) and is
//! given back when the connection has nothing pending. What processing and sending need
//! (the engine's scratch buffers, the outbox, the UDP sockets toward the destinations) is
//! not per connection: the listener's connections share a few [`Slot`]s.
//!
//! Guards, from the listener's configuration: at accept, a sender outside `allow` and a
//! connection beyond `max_connections` are refused (closed at once) and counted; a
//! connection that sends nothing for `idle_timeout`, or whose frame has not arrived whole
//! `frame_timeout` after its first byte (a slowloris client), is closed and counted; accepted
//! sockets have TCP keepalive on, so a peer that vanished is noticed.
//!
//! A listener's `tls` address is served by the same code: after the guards above, the
//! connection's task runs the TLS handshake (bounded by `tls_handshake_timeout`, with the
//! certificate of the configuration current at accept, so a reload's new files serve new
//! connections), counts it (completed, or failed by reason), then reads the decrypted
//! stream exactly as a TCP one ([`connection`] is generic over the stream). A connection
//! in its handshake holds its place in `max_connections`; rustls bounds what it buffers.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf as _, BytesMut};
use hep_common::chunk::HEADER_LEN;
use hep_common::framing::{MAX_FRAME_LEN, frame_len};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use super::accept::AcceptLoop;
use super::output::Flusher;
use crate::admin::stats::{ListenerStats, parse_error_index};
use crate::config::plan::ListenerTls;
use crate::engine::{Engine, Outbox, WorkerCtx};
use crate::tls::HandshakeFailure;

/// The smallest read buffer a connection allocates when bytes arrive: enough for a typical
/// SIP frame; a larger frame grows it to its own length.
const INITIAL_READ_BUFFER: usize = 2048;

/// Most slots a listener shares among its connections (one per core up to this).
const MAX_SLOTS: usize = 8;

/// TCP keepalive on accepted connections: first probe after this much silence.
const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
/// TCP keepalive: between probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// TCP keepalive: unanswered probes before the kernel resets the connection.
const KEEPALIVE_RETRIES: u32 = 4;

/// A running TCP listener.
pub struct TcpListener {
    /// The address it listens on.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Processing state shared by a listener's connections: the engine's per-worker scratch,
/// an outbox and a flusher with its UDP sockets. A connection holds one for the frames of
/// one read, processes them, sends them and gives it back.
struct Slot {
    ctx: WorkerCtx,
    out: Outbox,
    flusher: Flusher,
}

/// A listener's [`Slot`]s, handed out round-robin to whichever is free.
struct Slots {
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
}

impl Slots {
    fn new(count: usize) -> Self {
        Slots {
            slots: (0..count.max(1))
                .map(|_| {
                    Mutex::new(Slot {
                        ctx: WorkerCtx::new(),
                        out: Outbox::new(),
                        flusher: Flusher::new(),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs `work` with a free slot (waiting for one when all are busy). The lock is held
    /// only while frames already read are processed and sent: never across an await.
    fn with<R>(&self, work: impl FnOnce(&mut Slot) -> R) -> R {
        let count = self.slots.len();
        let start = self.next.fetch_add(1, Relaxed);
        for i in 0..count {
            if let Ok(mut slot) = self.slots[(start + i) % count].try_lock() {
                return work(&mut slot);
            }
        }
        let mut slot = self.slots[start % count]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        work(&mut slot)
    }
}

/// What every connection of a listener needs.
struct Shared {
    /// The configured address (how the engine's plan names the listener).
    configured: SocketAddr,
    engine: Arc<ArcSwap<Engine>>,
    slots: Slots,
    /// Connections open now (only the accept task adds to it, so the check against
    /// `max_connections` and the increment do not race).
    open: AtomicUsize,
}

/// One open connection of a listener: counted while it lives.
struct OpenConnection {
    shared: Arc<Shared>,
    stats: Arc<ListenerStats>,
}

impl OpenConnection {
    fn new(shared: Arc<Shared>, stats: Arc<ListenerStats>) -> Self {
        shared.open.fetch_add(1, Relaxed);
        stats.tcp_open.fetch_add(1, Relaxed);
        stats.tcp_connections.fetch_add(1, Relaxed);
        OpenConnection { shared, stats }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Relaxed);
        self.stats.tcp_open.fetch_sub(1, Relaxed);
    }
}

/// What the accept loop decided about a new connection.
enum Admission {
    /// Serve it, closing it after this much silence.
    Accept {
        stats: Arc<ListenerStats>,
        deadlines: Deadlines,
        /// The TLS configuration, when this is the listener's `tls` address.
        tls: Option<ListenerTls>,
    },
    /// Close it at once (counted already).
    Refuse,
}

impl Shared {
    /// Checks a new connection from `from` against the listener's current configuration.
    fn admit(&self, from: SocketAddr) -> Admission {
        let eng = self.engine.load();
        let Some(idx) = listener_index(&eng, self.configured) else {
            return Admission::Refuse;
        };
        let (Some(plan), Some(stats)) = (eng.plan.listeners.get(idx), eng.listener_stats(idx))
        else {
            return Admission::Refuse;
        };
        if let Some(allow) = &plan.allow
            && !allow.iter().any(|n| n.contains(&from.ip().to_canonical()))
        {
            stats.tcp_refused_allow.fetch_add(1, Relaxed);
            tracing::debug!(%from, listener = %plan.name, "TCP connection refused: not in allow");
            return Admission::Refuse;
        }
        let open = self.open.load(Relaxed);
        if open >= plan.max_connections {
            stats.tcp_refused_max_connections.fetch_add(1, Relaxed);
            tracing::debug!(%from, listener = %plan.name, open, "TCP connection refused: max_connections reached");
            return Admission::Refuse;
        }
        let tls = if plan.tls == Some(self.configured) {
            let Some(tls) = plan.tls_config.clone() else {
                return Admission::Refuse;
            };
            Some(tls)
        } else {
            None
        };
        Admission::Accept {
            stats: stats.clone(),
            deadlines: Deadlines {
                idle: plan.idle_timeout,
                frame: plan.frame_timeout,
            },
            tls,
        }
    }
}

/// Turns TCP keepalive on for an accepted connection.
fn set_keepalive(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

impl TcpListener {
    /// Binds `addr` (SO_REUSEADDR, listen backlog `backlog`) and accepts connections in a
    /// task.
    pub fn start(
        addr: SocketAddr,
        backlog: u32,
        engine: Arc<ArcSwap<Engine>>,
    ) -> std::io::Result<Self> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let lis = socket.listen(backlog)?;
        let bound = lis.local_addr()?;
        let slot_count = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_SLOTS);
        let shared = Arc::new(Shared {
            configured: addr,
            engine,
            slots: Slots::new(slot_count),
            open: AtomicUsize::new(0),
        });
        let mut accepts = AcceptLoop::new(lis, format!("HEP TCP listener {bound}"));
        let task = tokio::spawn(async move {
            loop {
                let (stream, from) = accepts.accept().await;
                let (stats, deadlines, tls) = match shared.admit(from) {
                    Admission::Accept {
                        stats,
                        deadlines,
                        tls,
                    } => (stats, deadlines, tls),
                    Admission::Refuse => continue,
                };
                let _ = stream.set_nodelay(true);
                if let Err(e) = set_keepalive(&stream) {
                    tracing::debug!(%from, error = %e, "cannot turn TCP keepalive on");
                }
                let open = OpenConnection::new(shared.clone(), stats);
                match tls {
                    None => {
                        tokio::spawn(connection(open, stream, from, deadlines));
                    }
                    Some(tls) => {
                        tokio::spawn(tls_connection(open, stream, from, deadlines, tls));
                    }
                }
            }
        });
        Ok(TcpListener { addr: bound, task })
    }

    /// Stops accepting (open connections end when their peers close them).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The listener's index in `eng`'s plan, by its configured address.
fn listener_index(eng: &Engine, configured: SocketAddr) -> Option<usize> {
    eng.plan
        .listeners
        .iter()
        .position(|l| l.tcp == Some(configured) || l.tls == Some(configured))
}

/// How many bytes the buffer must hold for the frame it starts with to be whole (a header
/// first), never more than the largest HEP frame.
fn bytes_needed(buf: &[u8]) -> usize {
    if buf.len() < HEADER_LEN {
        return HEADER_LEN;
    }
    let announced = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    announced.clamp(HEADER_LEN, MAX_FRAME_LEN)
}

/// Why a connection ended.
enum End {
    /// The peer closed it (or the listener left the configuration).
    Closed,
    /// It sent bytes that are not HEPv3 frames.
    Garbage,
}

/// Runs the TLS handshake of an accepted connection (at most the configured timeout),
/// counts how it went, and serves the connection when it succeeded. The connection's place
/// in `max_connections` is held until it ends, handshake included.
async fn tls_connection(
    open: OpenConnection,
    stream: tokio::net::TcpStream,
    from: SocketAddr,
    deadlines: Deadlines,
    tls: ListenerTls,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let failure = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            open.stats.tls_handshakes.fetch_add(1, Relaxed);
            tracing::debug!(%from, "TLS handshake completed");
            connection(open, stream, from, deadlines).await;
            return;
        }
        Ok(Err(error)) => {
            let failure = HandshakeFailure::of(&error);
            tracing::info!(%from, reason = failure.as_str(), %error, "TLS handshake failed");
            failure
        }
        Err(_) => {
            tracing::info!(%from, timeout = ?tls.handshake_timeout, "TLS handshake timed out");
            HandshakeFailure::Timeout
        }
    };
    open.stats.tls_handshakes_failed[failure.index()].fetch_add(1, Relaxed);
}

/// How long a connection may be silent, and how long one frame may take.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// Nothing received for this long: closed (`idle_timeout`).
    idle: Duration,
    /// A frame not whole this long after its first byte: closed (`frame_timeout`).
    frame: Duration,
}

/// Reads HEPv3 frames from one connection (TCP, or the plaintext of a TLS one) until it
/// ends, is idle for `deadlines.idle`, takes longer than `deadlines.frame` to complete a
/// frame, or sends garbage.
async fn connection<S: AsyncRead + Unpin>(
    open: OpenConnection,
    mut stream: S,
    from: SocketAddr,
    deadlines: Deadlines,
) {
    let shared = &open.shared;
    // Allocated when bytes arrive; empty (no allocation) while nothing is pending.
    let mut buf = BytesMut::new();
    // When the first byte of the pending (incomplete) frame arrived.
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        let need = bytes_needed(&buf).max(INITIAL_READ_BUFFER);
        if buf.capacity() < need {
            // Exactly what the frame needs: never more than the largest frame.
            let mut bigger = BytesMut::with_capacity(need);
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        // `read_buf` fills the spare capacity only (there is some: the buffer holds less
        // than the frame it needs), so the buffer never grows here. Cancelling it (the
        // idle timeout) loses nothing: a TCP read is atomic, and rustls keeps what it
        // decrypted.
        let idle_deadline = tokio::time::Instant::now() + deadlines.idle;
        let deadline = match frame_started {
            Some(t) => idle_deadline.min(t + deadlines.frame),
            None => idle_deadline,
        };
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) if deadline < idle_deadline => {
                open.stats.tcp_closed_frame_timeout.fetch_add(1, Relaxed);
                tracing::info!(%from, frame_timeout = ?deadlines.frame, pending = buf.len(), "closing a TCP connection whose frame does not arrive");
                break;
            }
            Err(_) => {
                open.stats.tcp_closed_idle.fetch_add(1, Relaxed);
                tracing::debug!(%from, idle_timeout = ?deadlines.idle, "closing an idle TCP connection");
                break;
            }
            Ok(Ok(0)) => {
                count_cut_off(&open.stats, from, &buf);
                break;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%from, error = %e, "TCP connection failed");
                count_cut_off(&open.stats, from, &buf);
                break;
            }
        }
        let completed = match process_whole_frames(shared, from, &mut buf) {
            Ok(n) => n,
            Err(End::Closed) => return,
            Err(End::Garbage) => break,
        };
        if buf.is_empty() {
            // Nothing pending: give the buffer back.
            buf = BytesMut::new();
            frame_started = None;
        } else if completed > 0 || frame_started.is_none() {
            // A new frame began in what just arrived: its clock starts now.
            frame_started = Some(tokio::time::Instant::now());
        }
    }
}

/// Counts the partial frame a connection ended with, if any (the peer closed or reset it
/// in the middle of a frame): a truncated packet, in `hepfwd_parse_errors_total`.
fn count_cut_off(stats: &ListenerStats, from: SocketAddr, pending: &[u8]) {
    if pending.is_empty() {
        return;
    }
    stats.parse_errors[parse_error_index("truncated")].fetch_add(1, Relaxed);
    tracing::info!(%from, pending = pending.len(), "a TCP connection ended in the middle of a frame");
}

/// Processes and sends every whole frame at the start of `buf`, and removes them; how many
/// there were.
fn process_whole_frames(
    shared: &Shared,
    from: SocketAddr,
    buf: &mut BytesMut,
) -> Result<usize, End> {
    let eng = shared.engine.load_full();
    let Some(idx) = listener_index(&eng, shared.configured) else {
        return Err(End::Closed);
    };
    let Some(stats) = eng.listener_stats(idx) else {
        return Err(End::Closed);
    };
    let mut used = 0;
    let mut frames = 0;
    let mut result = Ok(());
    shared.slots.with(|slot| {
        loop {
            match frame_len(&buf[used..], MAX_FRAME_LEN) {
                Ok(Some(n)) => {
                    stats.received_tcp.fetch_add(1, Relaxed);
                    eng.process(
                        &mut slot.ctx,
                        idx,
                        from,
                        &buf[used..used + n],
                        &mut slot.out,
                    );
                    used += n;
                    frames += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    stats.parse_errors[parse_error_index("tcp_framing")].fetch_add(1, Relaxed);
                    tracing::info!(%from, error = %e, "closing a TCP connection that is not HEPv3");
                    result = Err(End::Garbage);
                    break;
                }
            }
        }
        slot.flusher.flush(&eng, &mut slot.out);
    });
    buf.advance(used);
    result.map(|()| frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_buffers_at_most_the_frame_its_header_announces() {
        assert_eq!(bytes_needed(b""), HEADER_LEN);
        assert_eq!(bytes_needed(b"HEP3\x00"), HEADER_LEN);
        assert_eq!(bytes_needed(b"HEP3\x01\x00"), 256);
        assert_eq!(bytes_needed(b"HEP3\xff\xff"), MAX_FRAME_LEN);
        // A length below the header's is garbage the framer rejects; never below a header.
        assert_eq!(bytes_needed(b"HEP3\x00\x01"), HEADER_LEN);
    }

    #[test]
    fn slots_are_shared_round_robin() {
        let slots = Slots::new(2);
        let first = slots.with(|s| std::ptr::from_mut(s) as usize);
        let second = slots.with(|s| std::ptr::from_mut(s) as usize);
        assert_ne!(first, second);
        assert_eq!(slots.with(|s| std::ptr::from_mut(s) as usize), first);
    }
}
