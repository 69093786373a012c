//! The connection to one TCP destination (collector): a bounded queue of whole HEPv3 frames
//! and a tokio task that keeps a connection open and writes them, in order.
//!
//! # Use
//!
//! [`TcpSink::spawn`] starts the task; [`TcpSink::try_send`] hands it a frame from any
//! thread (UDP worker threads or tokio tasks) without blocking: when the queue is full the
//! frame is dropped and counted ([`SinkStats::dropped_queue_full`]), never waited for. On
//! SIGTERM the daemon stops its producers, then calls [`TcpSink::drain`] with its deadline.
//! [`SinkStats`] is read by the metrics at scrape time and by the failover logic
//! ([`SinkStats::connected`]).
//!
//! # Buffering
//!
//! The queue (`queue` frames) is the only buffer of the sink, plus the one write batch the
//! task holds: up to [`BATCH_FRAMES`] frames taken out of the queue and concatenated until
//! they reach [`BATCH_BYTES`] (so a batch is at most `BATCH_BYTES - 1 + 65535` bytes). The
//! task only takes frames out of the queue while it is connected, so while the collector
//! is away at most `queue` frames wait, plus the batch whose write failed. Beyond that,
//! the kernel's socket send buffer holds bytes that `write` accepted.
//!
//! # Connection
//!
//! The task connects at once (timeout [`CONNECT_TIMEOUT`]), and after every failure waits
//! an exponential backoff: 100 ms, doubling, at most 5 s, each wait drawn in
//! `[0.75, 1.0] ×` that value (jitter, so restarted collectors are not hit in step). A
//! connection that broke after [`STABLE_AFTER`] or more is retried at once; one that broke
//! sooner counts as a failure (accept-then-close peers get the backoff too). It never
//! sleeps while connected. Sockets get `TCP_NODELAY`, keepalive (idle 15 s, then
//! 3 probes 5 s apart) and `TCP_USER_TIMEOUT` 30 s, so a collector host that vanished
//! without a FIN or RST is detected (idle: about 30 s; with unacknowledged data: 30 s)
//! instead of after the kernel's ~15 min of retransmissions.
//!
//! # Dead collector detection
//!
//! A collector never sends anything on a HEP connection, so the socket becoming readable
//! means its FIN (read returns 0) or RST (read fails) arrived. The task watches readability
//! while idle, and right before every write batch it does one non-blocking `recv` system
//! call on the socket (not tokio's cached readiness, which may lag). Bytes a collector does
//! send are read and discarded. When the connection is found broken, before a write or by
//! a failed write, the batch is kept and written first on the next connection, so it is
//! not lost; a batch whose write failed part-way is written again whole (the collector
//! may then see frames of that batch twice: the bytes of the broken connection that did
//! reach it).
//!
//! ## Residual loss window
//!
//! Bytes are counted [`SinkStats::sent`] when the kernel accepted them. They can still be
//! lost, without any error reported to the sink, in exactly these cases:
//!
//! 1. **Written after the collector closed, before its FIN (or RST) reached us.** The
//!    check before each write sees nothing yet, so batches are handed to our kernel; the
//!    collector's kernel answers them with a RST and discards them. The window runs from
//!    the collector's `close` to the arrival of its FIN here: the one-way network delay
//!    (practically nothing on loopback, half an RTT across a WAN), plus the few µs between
//!    our check and our `write`. Every batch written in it is lost (about send rate ×
//!    one-way delay); the first check after the FIN arrives, or the first write after the
//!    RST arrives, finds the connection broken, and that batch is kept.
//! 2. **Written before the collector closed but not read by its application.** Bytes still
//!    in flight, in the collector's receive buffer, or in our send buffer when the collector
//!    process stops or crashes are discarded by the kernels (an unread receive buffer
//!    makes the collector's close a RST). The amount is bounded by the send buffer plus the
//!    collector's receive buffer; the sink cannot know which of them were read, so it does
//!    not resend them (that would need a replay buffer of every unacknowledged byte).
//! 3. **The collector host or the path disappears silently** (power loss, partition): the
//!    bytes in our send buffer are lost when `TCP_USER_TIMEOUT` (30 s) aborts the connection;
//!    writes in that time still succeed while the send buffer has room.
//!
//! # Shutdown
//!
//! [`TcpSink::drain`] asks the task to write what is queued and stop ("written" as for
//! [`SinkStats::sent`]: accepted by our kernel, which goes on delivering it after the
//! process exits; the task then closes its side with a FIN); at the deadline it
//! stops the task, which counts every frame still queued or in its batch in
//! [`SinkStats::dropped_shutdown`]. Draining is terminal: the sink accepts no frames
//! afterwards (they are counted in `dropped_shutdown`). Dropping every handle without a
//! drain (a reload removed the destination) drains on its own: the task keeps writing
//! what is queued for at most [`ORPHAN_DRAIN`], then stops, counting what is left the
//! same way.

use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hep_common::framing::{MAX_FRAME_LEN, frame_len};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait after a failed connection attempt.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most frames in one write batch.
pub const BATCH_FRAMES: usize = 64;
/// A batch stops growing once it holds this many bytes.
pub const BATCH_BYTES: usize = 256 * 1024;
/// A connection that breaks sooner than this counts as a failed attempt for the backoff,
/// so a collector (or load balancer) that accepts and closes at once is not hammered.
pub const STABLE_AFTER: Duration = Duration::from_secs(1);
/// While the collector stays unreachable, a warning is repeated at most this often.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);
/// After the drain deadline, how long `drain` waits for the task to count what is left.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// When every handle is dropped without a drain (the destination left the configuration),
/// the task goes on writing what is queued for at most this long.
pub const ORPHAN_DRAIN: Duration = Duration::from_secs(10);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters of one TCP destination: the daemon's [`DestinationStats`], so `/metrics` and
/// failover read what the sink writes. The sink updates `sent`, `dropped_queue_full`,
/// `dropped_shutdown`, `dropped_invalid`, `reconnects`, `connect_failures`, `connected`
/// and `queue_depth`.
pub type SinkStats = crate::admin::stats::DestinationStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Normal operation.
    Run,
    /// Write what is queued, then stop.
    Drain,
    /// Stop now, counting what is left.
    Stop,
}

struct Inner {
    name: String,
    addr: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    stats: Arc<SinkStats>,
    ctl: watch::Sender<Phase>,
    /// `Some(everything written)` once the task has ended.
    done: watch::Receiver<Option<bool>>,
}

/// Handle to the connection of one TCP destination. Cheap to clone; every clone feeds the
/// same queue.
#[derive(Clone)]
pub struct TcpSink {
    inner: Arc<Inner>,
}

impl fmt::Debug for TcpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSink")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl TcpSink {
    /// Starts the connection task of destination `name` at `addr` on `handle`, with room
    /// for `queue` frames (at least 1).
    pub fn spawn(
        name: String,
        addr: SocketAddr,
        queue: usize,
        stats: Arc<SinkStats>,
        handle: &tokio::runtime::Handle,
    ) -> TcpSink {
        let (tx, rx) = mpsc::channel(queue.clamp(1, Semaphore::MAX_PERMITS));
        let (ctl, ctl_rx) = watch::channel(Phase::Run);
        let (done_tx, done) = watch::channel(None);
        let worker = Worker {
            name: name.clone(),
            addr,
            rx,
            ctl: ctl_rx.clone(),
            stats: Arc::clone(&stats),
            batch: Vec::new(),
            batch_frames: 0,
            ever_connected: false,
            failures: 0,
            backoff_level: 0,
            connected_at: None,
            last_error: String::new(),
            down_since: None,
            last_warn: None,
            rng: seed(addr),
        };
        handle.spawn(worker.task(ctl_rx, done_tx));
        TcpSink {
            inner: Arc::new(Inner {
                name,
                addr,
                tx,
                stats,
                ctl,
                done,
            }),
        }
    }

    /// Queues one whole HEPv3 frame without blocking; callable from any thread. Returns
    /// false (and counts why in [`SinkStats`]) when the frame is dropped: queue full,
    /// sink stopped, or not a single HEPv3 frame.
    pub fn try_send(&self, frame: Bytes) -> bool {
        let stats = &self.inner.stats;
        if frame_len(&frame, MAX_FRAME_LEN) != Ok(Some(frame.len())) {
            stats.dropped_invalid.fetch_add(1, Relaxed);
            return false;
        }
        // Counted before the send so the task's decrement can never come first.
        stats.queue_depth.fetch_add(1, Relaxed);
        match self.inner.tx.try_send(frame) {
            Ok(()) => true,
            Err(e) => {
                stats.queue_depth.fetch_sub(1, Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        stats.dropped_queue_full.fetch_add(1, Relaxed)
                    }
                    mpsc::error::TrySendError::Closed(_) => {
                        stats.dropped_shutdown.fetch_add(1, Relaxed)
                    }
                };
                false
            }
        }
    }

    /// Writes what is queued, waiting at most `deadline`, then stops the sink. Frames left
    /// at the deadline are counted in [`SinkStats::dropped_shutdown`]. Returns whether
    /// every frame accepted by [`TcpSink::try_send`] was written. Terminal: later frames
    /// are refused. Calling it again returns the same answer.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.inner.ctl.send_if_modified(|p| {
            if *p == Phase::Run {
                *p = Phase::Drain;
                true
            } else {
                false
            }
        });
        let mut done = self.inner.done.clone();
        match tokio::time::timeout(deadline, wait_done(&mut done)).await {
            Ok(all) => all,
            Err(_) => {
                self.inner.ctl.send_replace(Phase::Stop);
                tokio::time::timeout(STOP_GRACE, wait_done(&mut done))
                    .await
                    .unwrap_or(false)
            }
        }
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The collector's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.inner.stats
    }
}

impl crate::engine::FrameQueue for TcpSink {
    fn try_send(&self, frame: Bytes) -> bool {
        TcpSink::try_send(self, frame)
    }
}

async fn wait_done(rx: &mut watch::Receiver<Option<bool>>) -> bool {
    loop {
        if let Some(all) = *rx.borrow_and_update() {
            return all;
        }
        if rx.changed().await.is_err() {
            // The task is gone without a word (runtime shut down).
            return rx.borrow().unwrap_or(false);
        }
    }
}

/// Why `serve` returned.
enum Served {
    /// The connection broke; reconnect.
    Broken,
    /// Drained (asked to, or every handle is gone): end the task.
    Finished,
}

/// What a read on the idle connection found.
enum PeerState {
    /// Nothing to read: the connection looks alive.
    Alive,
    /// FIN or error: the connection is dead.
    Gone(String),
}

struct Worker {
    name: String,
    addr: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    ctl: watch::Receiver<Phase>,
    stats: Arc<SinkStats>,
    /// The write batch: frames concatenated.
    batch: Vec<u8>,
    /// Frames in `batch` (0: no batch).
    batch_frames: u64,
    ever_connected: bool,
    /// Failed connection attempts since the last connection (or the start), for the logs.
    failures: u32,
    /// Failed attempts and short-lived connections in a row: the backoff exponent.
    backoff_level: u32,
    connected_at: Option<Instant>,
    last_error: String,
    down_since: Option<Instant>,
    last_warn: Option<Instant>,
    rng: u64,
}

impl Worker {
    async fn task(mut self, mut stop: watch::Receiver<Phase>, done: watch::Sender<Option<bool>>) {
        tokio::select! {
            biased;
            _ = wait_stop(&mut stop) => {}
            _ = self.run() => {}
        }
        self.stats.connected.store(false, Relaxed);
        let left = self.abandon();
        if left > 0 {
            tracing::warn!(
                destination = %self.name,
                addr = %self.addr,
                frames = left,
                "TCP destination stopped with frames not written"
            );
        } else {
            tracing::debug!(destination = %self.name, addr = %self.addr, "TCP destination drained");
        }
        done.send_replace(Some(left == 0));
    }

    /// Closes the queue and counts every frame not written as dropped at shutdown.
    fn abandon(&mut self) -> u64 {
        self.rx.close();
        let mut left = self.batch_frames;
        self.batch.clear();
        self.batch_frames = 0;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            self.stats.dropped_shutdown.fetch_add(left, Relaxed);
            self.stats.queue_depth.fetch_sub(left, Relaxed);
        }
        left
    }

    /// Asked to drain, or every handle is gone.
    fn draining(&self) -> bool {
        match self.ctl.has_changed() {
            Ok(_) => *self.ctl.borrow() == Phase::Drain,
            Err(_) => true,
        }
    }

    /// Draining and nothing left to write.
    fn finished(&self) -> bool {
        self.draining() && self.batch_frames == 0 && self.rx.is_empty()
    }

    async fn run(&mut self) {
        loop {
            let Some(stream) = self.connect().await else {
                return;
            };
            match self.serve(stream).await {
                Served::Broken => {}
                Served::Finished => return,
            }
        }
    }

    /// Connects, retrying with backoff. `None`: finished, or every handle is gone.
    async fn connect(&mut self) -> Option<TcpStream> {
        loop {
            if self.finished() {
                return None;
            }
            if self.backoff_level > 0 {
                let until = tokio::time::Instant::now() + self.backoff();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        _ = ctl_changed(&mut self.ctl) => {
                            if self.finished() {
                                return None;
                            }
                            if self.draining() {
                                // Shutting down with frames queued: one attempt now
                                // rather than at the end of a long backoff.
                                break;
                            }
                        }
                    }
                }
            }
            let error =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
                    Ok(Ok(stream)) => {
                        self.connected(&stream);
                        return Some(stream);
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("timed out after {CONNECT_TIMEOUT:?}"),
                };
            self.connect_failed(error);
        }
    }

    fn connected(&mut self, stream: &TcpStream) {
        configure(stream, &self.name);
        self.stats.connected.store(true, Relaxed);
        let down = self.down_since.take().map(|t| t.elapsed());
        if self.ever_connected {
            self.stats.reconnects.fetch_add(1, Relaxed);
            tracing::info!(
                destination = %self.name,
                addr = %self.addr,
                failed_attempts = self.failures,
                down = ?down.unwrap_or_default(),
                "reconnected to TCP destination"
            );
        } else {
            tracing::info!(
                destination = %self.name,
                addr = %self.addr,
                failed_attempts = self.failures,
                "connected to TCP destination"
            );
        }
        self.ever_connected = true;
        self.failures = 0;
        self.last_warn = None;
        self.connected_at = Some(Instant::now());
    }

    fn connect_failed(&mut self, error: String) {
        self.stats.connect_failures.fetch_add(1, Relaxed);
        self.failures = self.failures.saturating_add(1);
        self.backoff_level = self.backoff_level.saturating_add(1);
        let now = Instant::now();
        self.down_since.get_or_insert(now);
        let due = self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_EVERY);
        if due {
            self.last_warn = Some(now);
            if self.failures == 1 {
                tracing::warn!(
                    destination = %self.name,
                    addr = %self.addr,
                    %error,
                    queued = self.stats.queue_depth.load(Relaxed),
                    "cannot connect to TCP destination; retrying with backoff"
                );
            } else {
                tracing::warn!(
                    destination = %self.name,
                    addr = %self.addr,
                    %error,
                    failed_attempts = self.failures,
                    queued = self.stats.queue_depth.load(Relaxed),
                    "still cannot connect to TCP destination"
                );
            }
        } else if error != self.last_error {
            tracing::debug!(destination = %self.name, addr = %self.addr, %error, "connect failed");
        }
        self.last_error = error;
    }

    fn disconnected(&mut self, reason: &str) {
        self.stats.connected.store(false, Relaxed);
        let lasted = self
            .connected_at
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if lasted >= STABLE_AFTER {
            self.backoff_level = 0;
        } else {
            self.backoff_level = self.backoff_level.saturating_add(1);
        }
        self.down_since = Some(Instant::now());
        self.last_warn = None;
        self.last_error.clear();
        tracing::warn!(
            destination = %self.name,
            addr = %self.addr,
            %reason,
            kept_frames = self.batch_frames,
            ?lasted,
            "TCP destination disconnected; reconnecting"
        );
    }

    /// The wait before the next attempt: 100 ms · 2^(level-1), at most 5 s, times a
    /// random factor in [0.75, 1].
    fn backoff(&mut self) -> Duration {
        let doublings = self.backoff_level.saturating_sub(1).min(16);
        let base = BACKOFF_INITIAL
            .saturating_mul(1u32 << doublings)
            .min(BACKOFF_MAX);
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.75 + 0.25 * unit)
    }

    /// Writes batches on `stream` until it breaks or the sink is finished.
    async fn serve(&mut self, mut stream: TcpStream) -> Served {
        let mut scratch = [0u8; 512];
        loop {
            if self.batch_frames == 0 {
                if self.finished() {
                    let _ = SockRef::from(&stream).shutdown(Shutdown::Write);
                    return Served::Finished;
                }
                tokio::select! {
                    _ = ctl_changed(&mut self.ctl) => continue,
                    ready = stream.readable() => {
                        let state = match ready {
                            Ok(()) => peer_state(|b| stream.try_read(b), &mut scratch),
                            Err(e) => PeerState::Gone(format!("socket error: {e}")),
                        };
                        if let PeerState::Gone(reason) = state {
                            self.disconnected(&reason);
                            return Served::Broken;
                        }
                        continue;
                    }
                    frame = self.rx.recv() => match frame {
                        Some(frame) => self.fill_batch(frame),
                        None => return Served::Finished,
                    },
                }
            }
            // The peer may have gone since we last looked: ask the kernel, not tokio.
            let sock = SockRef::from(&stream);
            if let PeerState::Gone(reason) = peer_state(|b| (&*sock).read(b), &mut scratch) {
                self.disconnected(&reason);
                return Served::Broken;
            }
            match stream.write_all(&self.batch).await {
                Ok(()) => {
                    let n = self.batch_frames;
                    self.batch.clear();
                    self.batch_frames = 0;
                    self.stats.sent.fetch_add(n, Relaxed);
                    self.stats.queue_depth.fetch_sub(n, Relaxed);
                }
                Err(e) => {
                    self.disconnected(&format!("write failed: {e}"));
                    return Served::Broken;
                }
            }
        }
    }

    /// Starts a batch with `first`, then takes what is already queued, up to the limits.
    fn fill_batch(&mut self, first: Bytes) {
        self.batch.clear();
        self.batch.extend_from_slice(&first);
        self.batch_frames = 1;
        while (self.batch_frames as usize) < BATCH_FRAMES && self.batch.len() < BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(frame) => {
                    self.batch.extend_from_slice(&frame);
                    self.batch_frames += 1;
                }
                Err(_) => break,
            }
        }
    }
}

/// Returns when told to stop, or [`ORPHAN_DRAIN`] after every handle is gone.
async fn wait_stop(rx: &mut watch::Receiver<Phase>) {
    loop {
        if *rx.borrow_and_update() == Phase::Stop {
            return;
        }
        if rx.changed().await.is_err() {
            tokio::time::sleep(ORPHAN_DRAIN).await;
            return;
        }
    }
}

/// Returns when the phase changes; never once every handle is gone (the task then notices
/// through [`Worker::draining`] and the closed queue).
async fn ctl_changed(rx: &mut watch::Receiver<Phase>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Reads (and discards) what the collector sent, without blocking, to learn whether the
/// connection is still open. `read` must not block.
fn peer_state(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>, buf: &mut [u8]) -> PeerState {
    // Bounded, so a chatty peer cannot hold the task; the next check reads on.
    for _ in 0..64 {
        match read(buf) {
            Ok(0) => return PeerState::Gone("collector closed the connection".into()),
            Ok(n) => {
                tracing::trace!(bytes = n, "discarding bytes sent by a TCP destination");
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return PeerState::Alive,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return PeerState::Gone(format!("connection error: {e}")),
        }
    }
    PeerState::Alive
}

/// `TCP_NODELAY`, keepalive and `TCP_USER_TIMEOUT`; failures are logged, not fatal.
fn configure(stream: &TcpStream, name: &str) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(destination = %name, error = %e, "setting TCP_NODELAY failed");
    }
    let sock = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(destination = %name, error = %e, "setting TCP keepalive failed");
    }
    if let Err(e) = sock.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::debug!(destination = %name, error = %e, "setting TCP_USER_TIMEOUT failed");
    }
}

/// A per-sink seed for the backoff jitter.
fn seed(addr: SocketAddr) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    addr.hash(&mut h);
    Instant::now().hash(&mut h);
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(10);

    /// A HEPv3 frame: header, one payload chunk holding `seq` and filler.
    fn frame(seq: u32, extra: usize) -> Bytes {
        let mut payload = seq.to_be_bytes().to_vec();
        payload.extend((0..extra).map(|i| (i as u32 ^ seq) as u8));
        let len = 6 + 6 + payload.len();
        let mut v = b"HEP3".to_vec();
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0x0f]);
        v.extend_from_slice(&((6 + payload.len()) as u16).to_be_bytes());
        v.extend_from_slice(&payload);
        Bytes::from(v)
    }

    fn frames(from: u32, n: u32) -> Vec<Bytes> {
        (from..from + n)
            .map(|i| frame(i, (i as usize * 37) % 1400))
            .collect()
    }

    /// A port nobody listens on (bound, then released).
    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn sink(addr: SocketAddr, queue: usize) -> (TcpSink, Arc<SinkStats>) {
        let stats = Arc::new(SinkStats::default());
        let s = TcpSink::spawn(
            "test".into(),
            addr,
            queue,
            Arc::clone(&stats),
            &tokio::runtime::Handle::current(),
        );
        (s, stats)
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(t.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn accept(l: &TcpListener) -> TcpStream {
        tokio::time::timeout(WAIT, l.accept())
            .await
            .expect("timed out waiting for the sink to connect")
            .unwrap()
            .0
    }

    /// Reads exactly `n` frames (framed with `frame_len`).
    async fn read_frames(s: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let work = async {
            while out.len() < n {
                if let Some(len) = frame_len(buf, MAX_FRAME_LEN).unwrap() {
                    out.push(buf.split_to(len).freeze());
                    continue;
                }
                let got = s.read_buf(buf).await.unwrap();
                assert!(got > 0, "EOF after {} of {n} frames", out.len());
            }
        };
        tokio::time::timeout(WAIT, work)
            .await
            .expect("timed out reading frames");
        out
    }

    /// Reads frames until EOF.
    async fn read_to_eof(s: &mut TcpStream) -> Vec<Bytes> {
        let mut buf = BytesMut::new();
        let work = async { while s.read_buf(&mut buf).await.unwrap() > 0 {} };
        tokio::time::timeout(WAIT, work)
            .await
            .expect("timed out waiting for EOF");
        let mut out = Vec::new();
        while let Some(len) = frame_len(&buf, MAX_FRAME_LEN).unwrap() {
            out.push(buf.split_to(len).freeze());
        }
        assert!(buf.is_empty(), "a partial frame before EOF");
        out
    }

    /// Nothing more arrives within a short while (the stream stays open and silent).
    async fn assert_silent(s: &mut TcpStream) {
        let mut b = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            panic!("unexpected read result {r:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_arrive_intact_and_in_order_from_a_plain_thread() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (s, stats) = sink(l.local_addr().unwrap(), 5000);
        let sent = frames(0, 3000);
        let producer = {
            let (s, sent) = (s.clone(), sent.clone());
            std::thread::spawn(move || sent.into_iter().all(|f| s.try_send(f)))
        };
        let mut c = accept(&l).await;
        let got = read_frames(&mut c, &mut BytesMut::new(), sent.len()).await;
        assert!(producer.join().unwrap(), "a frame was refused");
        assert!(got == sent, "frames differ");
        wait_until("sent == 3000", || stats.sent.load(Relaxed) == 3000).await;
        assert_eq!(stats.queue_depth.load(Relaxed), 0);
        assert!(stats.connected.load(Relaxed));
        assert_eq!(stats.reconnects.load(Relaxed), 0);
        assert_eq!(stats.connect_failures.load(Relaxed), 0);
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 0);
        assert_silent(&mut c).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_queue_while_the_collector_is_away_then_all_arrive() {
        let addr = free_port();
        let (s, stats) = sink(addr, 100);
        let sent = frames(0, 20);
        for f in &sent {
            assert!(s.try_send(f.clone()));
        }
        wait_until("two connect failures", || {
            stats.connect_failures.load(Relaxed) >= 2
        })
        .await;
        assert!(!stats.connected.load(Relaxed));
        assert_eq!(stats.queue_depth.load(Relaxed), 20);
        assert_eq!(stats.sent.load(Relaxed), 0);

        let l = TcpListener::bind(addr).await.unwrap();
        let mut c = accept(&l).await;
        let got = read_frames(&mut c, &mut BytesMut::new(), 20).await;
        assert!(got == sent, "frames differ");
        wait_until("sent == 20", || stats.sent.load(Relaxed) == 20).await;
        assert!(stats.connected.load(Relaxed));
        assert_eq!(
            stats.reconnects.load(Relaxed),
            0,
            "the first connection is no reconnect"
        );
        assert_eq!(stats.queue_depth.load(Relaxed), 0);
        assert_silent(&mut c).await;
    }

    /// The collector reads 30 frames and goes away (FIN, or RST with `reset`); 25 frames
    /// sent while it is down arrive, exactly, at its next incarnation on the same port.
    async fn collector_restart(reset: bool) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (s, stats) = sink(addr, 100);
        let mut c = accept(&l).await;
        let first = frames(0, 30);
        for f in &first {
            assert!(s.try_send(f.clone()));
        }
        let got = read_frames(&mut c, &mut BytesMut::new(), first.len()).await;
        assert!(got == first, "first frames differ");
        wait_until("sent == 30", || stats.sent.load(Relaxed) == 30).await;
        if reset {
            SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
        }
        // The listener first: else the sink may reconnect into its backlog in between.
        drop(l);
        drop(c);
        wait_until("the sink to notice", || !stats.connected.load(Relaxed)).await;

        let second = frames(30, 25);
        for f in &second {
            assert!(s.try_send(f.clone()));
        }
        assert_eq!(stats.queue_depth.load(Relaxed), 25);
        let l = TcpListener::bind(addr).await.unwrap();
        let mut c = accept(&l).await;
        let got = read_frames(&mut c, &mut BytesMut::new(), second.len()).await;
        assert!(got == second, "frames after the restart differ");
        assert_silent(&mut c).await;
        assert_eq!(stats.reconnects.load(Relaxed), 1);
        assert_eq!(stats.sent.load(Relaxed), 55);
        assert_eq!(stats.queue_depth.load(Relaxed), 0);
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 0);
        assert!(stats.connected.load(Relaxed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collector_restart_after_fin() {
        collector_restart(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collector_restart_after_rst() {
        collector_restart(true).await;
    }

    /// The collector resets the connection while frames flood in (so the reset is often
    /// found by the check before a write, with a batch kept). Frames can be lost (the
    /// residual window) but after the reconnect they arrive in order, without gaps, up to
    /// the last one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_under_load_keeps_order_after_the_reconnect() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (s, stats) = sink(addr, 100_000);
        let total = 20_000u32;
        let producer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..total {
                    while !s.try_send(frame(i, 200)) {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            })
        };
        let mut c = accept(&l).await;
        let seq = |f: &Bytes| u32::from_be_bytes([f[12], f[13], f[14], f[15]]);
        let first = read_frames(&mut c, &mut BytesMut::new(), 2000).await;
        SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
        drop(l);
        drop(c);
        let last_before = seq(first.last().unwrap());
        wait_until("the sink to notice", || !stats.connected.load(Relaxed)).await;
        let l = TcpListener::bind(addr).await.unwrap();
        let mut c = accept(&l).await;
        let mut buf = BytesMut::new();
        let head = read_frames(&mut c, &mut buf, 1).await;
        let start = seq(&head[0]);
        // A batch whose write failed part-way is written again whole: at most one batch
        // of frames the first collector read can come again.
        assert!(
            start + BATCH_FRAMES as u32 > last_before,
            "frames {start}..={last_before} duplicated"
        );
        let rest = read_frames(&mut c, &mut buf, (total - start - 1) as usize).await;
        for (k, f) in rest.iter().enumerate() {
            assert_eq!(
                seq(f),
                start + 1 + k as u32,
                "gap or reordering after the reconnect"
            );
        }
        producer.join().unwrap();
        assert_silent(&mut c).await;
        assert_eq!(stats.reconnects.load(Relaxed), 1);
    }

    /// A peer that accepts and closes at once (a load balancer without backends) gets the
    /// backoff, not a reconnect loop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accept_then_close_is_backed_off() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_s, stats) = sink(l.local_addr().unwrap(), 10);
        let closer = tokio::spawn(async move {
            let mut n = 0u32;
            while let Ok((c, _)) = l.accept().await {
                drop(c);
                n += 1;
            }
            n
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        closer.abort();
        // Waits of at least 75, 150, 300, 600 ms: at most 5 connections in 1.5 s.
        let r = stats.reconnects.load(Relaxed);
        assert!((2..=4).contains(&r), "{r} reconnects");
        assert_eq!(stats.connect_failures.load(Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_is_the_only_bound() {
        let addr = free_port();
        let (s, stats) = sink(addr, 10);
        let sent = frames(0, 25);
        let accepted: Vec<bool> = sent.iter().map(|f| s.try_send(f.clone())).collect();
        assert!(accepted[..10].iter().all(|a| *a));
        assert!(accepted[10..].iter().all(|a| !*a));
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 15);
        assert_eq!(stats.queue_depth.load(Relaxed), 10);
        // Connection attempts do not take frames out of the queue.
        wait_until("two connect failures", || {
            stats.connect_failures.load(Relaxed) >= 2
        })
        .await;
        assert!(!s.try_send(frame(99, 0)));
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 16);

        let l = TcpListener::bind(addr).await.unwrap();
        let mut c = accept(&l).await;
        let got = read_frames(&mut c, &mut BytesMut::new(), 10).await;
        assert!(got[..] == sent[..10], "frames differ");
        assert_silent(&mut c).await;
        assert_eq!(stats.sent.load(Relaxed), 10);
        assert_eq!(stats.queue_depth.load(Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_zero_queue_holds_one_frame_and_bad_frames_are_refused() {
        let (s, stats) = sink(free_port(), 0);
        assert!(!s.try_send(Bytes::new()));
        assert!(!s.try_send(Bytes::from_static(b"GET / HTTP/1.1\r\n")));
        let mut long = frame(1, 10).to_vec();
        long.push(0);
        assert!(!s.try_send(Bytes::from(long)));
        let f = frame(2, 10);
        assert!(!s.try_send(f.slice(..f.len() - 1)));
        assert_eq!(stats.dropped_invalid.load(Relaxed), 4);
        assert!(s.try_send(frame(3, 0)));
        assert!(!s.try_send(frame(4, 0)));
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 1);
        assert_eq!(stats.queue_depth.load(Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_without_a_collector_gives_up_at_the_deadline() {
        let (s, stats) = sink(free_port(), 100);
        for f in frames(0, 7) {
            assert!(s.try_send(f));
        }
        let t = Instant::now();
        assert!(!s.drain(Duration::from_millis(200)).await);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(stats.dropped_shutdown.load(Relaxed), 7);
        assert_eq!(stats.queue_depth.load(Relaxed), 0);
        assert_eq!(stats.sent.load(Relaxed), 0);
        assert!(!stats.connected.load(Relaxed));
        // Terminal: later frames are refused and counted, a second drain answers the same.
        assert!(!s.try_send(frame(7, 0)));
        assert_eq!(stats.dropped_shutdown.load(Relaxed), 8);
        assert!(!s.drain(Duration::from_millis(200)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_of_an_empty_queue_returns_at_once() {
        let (s, stats) = sink(free_port(), 100);
        let t = Instant::now();
        assert!(s.drain(WAIT).await);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(stats.dropped_shutdown.load(Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_with_a_collector_writes_everything_then_closes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (s, stats) = sink(l.local_addr().unwrap(), 1000);
        let sent = frames(0, 500);
        for f in &sent {
            assert!(s.try_send(f.clone()));
        }
        let mut c = accept(&l).await;
        assert!(s.drain(WAIT).await);
        assert_eq!(stats.sent.load(Relaxed), 500);
        assert_eq!(stats.dropped_shutdown.load(Relaxed), 0);
        assert_eq!(stats.queue_depth.load(Relaxed), 0);
        assert!(!stats.connected.load(Relaxed));
        let got = read_to_eof(&mut c).await;
        assert!(got == sent, "frames differ");
    }

    /// A drain does not wait out a long backoff: it makes an attempt at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_cuts_a_long_backoff_short() {
        let addr = free_port();
        let (s, stats) = sink(addr, 100);
        let sent = frames(0, 5);
        for f in &sent {
            assert!(s.try_send(f.clone()));
        }
        // After the 5th failure the task waits 1.2 to 1.6 s.
        wait_until("five connect failures", || {
            stats.connect_failures.load(Relaxed) >= 5
        })
        .await;
        let l = TcpListener::bind(addr).await.unwrap();
        let t = Instant::now();
        assert!(s.drain(Duration::from_millis(800)).await);
        assert!(t.elapsed() < Duration::from_millis(800));
        let mut c = accept(&l).await;
        assert!(read_to_eof(&mut c).await == sent, "frames differ");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_every_handle_finishes_the_queue() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (s, stats) = sink(l.local_addr().unwrap(), 1000);
        let sent = frames(0, 300);
        for f in &sent {
            assert!(s.try_send(f.clone()));
        }
        drop(s);
        let mut c = accept(&l).await;
        let got = read_to_eof(&mut c).await;
        assert!(got == sent, "frames differ");
        wait_until("the task to end", || !stats.connected.load(Relaxed)).await;
        assert_eq!(stats.sent.load(Relaxed), 300);
        assert_eq!(stats.dropped_shutdown.load(Relaxed), 0);
    }

    #[test]
    fn the_check_before_a_write_sees_fin_and_rst() {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        let mut scratch = [0u8; 16];
        for reset in [false, true] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            ours.set_nonblocking(true).unwrap();
            let (theirs, _) = l.accept().unwrap();
            let check = |scratch: &mut [u8]| {
                let sock = SockRef::from(&ours);
                peer_state(|b| (&*sock).read(b), scratch)
            };
            assert!(matches!(check(&mut scratch), PeerState::Alive));
            // Bytes from the collector are discarded, not a failure.
            (&theirs).write_all(&[7; 40]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert!(matches!(check(&mut scratch), PeerState::Alive));
            if reset {
                SockRef::from(&theirs)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(theirs);
            std::thread::sleep(Duration::from_millis(20));
            match check(&mut scratch) {
                PeerState::Gone(reason) => {
                    assert_eq!(reason.contains("reset"), reset, "{reason}")
                }
                PeerState::Alive => panic!("closed peer not seen (reset: {reset})"),
            }
        }
    }
}
