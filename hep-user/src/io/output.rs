//! [`Flusher`]: moves an [`Outbox`] to the destinations — UDP through per-destination
//! connected sockets with `sendmmsg`, TCP into the destination's queue.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;

use super::udp_batch::{connect_sender, send_batch};
use crate::config::plan::Transport;
use crate::engine::{Engine, Outbox};

/// How long one UDP send may block on a full socket buffer.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// Per-worker sending state: one connected UDP socket per UDP destination.
#[derive(Default)]
pub struct Flusher {
    generation: Option<u64>,
    udp: Vec<Option<std::net::UdpSocket>>,
    /// Per UDP socket: when it last sent (daemon clock, ms; 0: never).
    last_send_ms: Vec<u64>,
    buckets: Vec<Vec<usize>>,
}

impl Flusher {
    /// A flusher with no sockets yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn prepare(&mut self, eng: &Engine) {
        if self.generation == Some(eng.generation) {
            return;
        }
        self.generation = Some(eng.generation);
        self.udp = eng
            .destinations
            .iter()
            .map(|d| {
                // No socket for a host name not resolved yet: its packets are counted
                // as `unresolved` (connecting to 0.0.0.0 would reach this host).
                if d.plan.transport != Transport::Udp || !d.plan.resolved() {
                    return None;
                }
                match connect_sender(d.plan.address, SEND_TIMEOUT) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(destination = %d.plan.name, error = %e, "cannot open a UDP socket");
                        None
                    }
                }
            })
            .collect();
        self.last_send_ms = vec![0; eng.destinations.len()];
        self.buckets = vec![Vec::new(); eng.destinations.len()];
    }

    /// Sends everything in `out` and clears it.
    pub fn flush(&mut self, eng: &Engine, out: &mut Outbox) {
        if out.is_empty() {
            return;
        }
        self.prepare(eng);
        for b in &mut self.buckets {
            b.clear();
        }
        for (i, item) in out.items().iter().enumerate() {
            if let Some(b) = self.buckets.get_mut(item.dest) {
                b.push(i);
            }
        }
        for (dest, idxs) in self.buckets.iter().enumerate() {
            if idxs.is_empty() {
                continue;
            }
            let Some(d) = eng.destinations.get(dest) else {
                continue;
            };
            match d.plan.transport {
                Transport::Tcp => {
                    let Some(q) = &d.queue else { continue };
                    for i in idxs {
                        let item = out.items()[*i];
                        // The sink counts what it drops.
                        q.try_send(Bytes::copy_from_slice(out.bytes(&item)));
                    }
                }
                Transport::Udp => {
                    let packets: Vec<&[u8]> =
                        idxs.iter().map(|i| out.bytes(&out.items()[*i])).collect();
                    let Some(Some(sock)) = self.udp.get(dest) else {
                        let why = if d.plan.resolved() {
                            &d.stats.dropped_send_error
                        } else {
                            &d.stats.dropped_unresolved
                        };
                        why.fetch_add(packets.len() as u64, Relaxed);
                        continue;
                    };
                    // A pending ICMP error is about datagrams of the last send on this
                    // socket; once that is a hold-down old, the error is stale: forget it
                    // rather than start a new hold-down of a destination that may be back.
                    let now = eng.clock_ms().max(1);
                    let last = self.last_send_ms[dest];
                    if last != 0
                        && now.saturating_sub(last)
                            >= eng.plan.engine.udp_error_holddown.as_millis() as u64
                    {
                        let _ = sock.take_error();
                    }
                    self.last_send_ms[dest] = now;
                    let mut done = 0;
                    let mut retried = false;
                    while done < packets.len() {
                        let (n, err) = send_batch(sock, &packets[done..]);
                        done += n;
                        d.stats.sent.fetch_add(n as u64, Relaxed);
                        match err {
                            None => break,
                            Some(e) if e.kind() == io::ErrorKind::ConnectionRefused && !retried => {
                                // An ICMP error from an earlier datagram: note it, send on.
                                d.stats.last_error_ms.store(eng.clock_ms().max(1), Relaxed);
                                d.stats.connected.store(false, Relaxed);
                                retried = true;
                            }
                            Some(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                                // This datagram is too big for UDP; the next ones may fit.
                                d.stats.dropped_send_error.fetch_add(1, Relaxed);
                                done += 1;
                            }
                            Some(e) => {
                                let lost = packets.len() - done;
                                d.stats.dropped_send_error.fetch_add(lost as u64, Relaxed);
                                tracing::debug!(destination = %d.plan.name, error = %e, lost, "UDP send failed");
                                break;
                            }
                        }
                    }
                    if !d.stats.connected.load(Relaxed) && eng.healthy(dest) {
                        d.stats.connected.store(true, Relaxed);
                    }
                }
            }
        }
        out.clear();
    }
}
