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
//! A frame is held by the sink from [`TcpSink::try_send`] until the collector's TCP
//! acknowledged its last byte: in the queue, then in the one write batch the task holds
//! (up to [`BATCH_FRAMES`] frames concatenated until they reach [`BATCH_BYTES`]), then in
//! the *retransmit buffer* (written, not yet acknowledged). Both `queue` (frames) and
//! `queue_bytes` (bytes) bound all of it together ([`SinkStats::queue_depth`] and
//! [`SinkStats::queue_bytes`]); a frame that does not fit is dropped and counted
//! ([`SinkStats::dropped_queue_full`]). The retransmit buffer holds the same [`Bytes`] as
//! the queue did (no copy); the kernel's send buffer holds its own copy.
//!
//! # What "sent" means
//!
//! A frame is counted [`SinkStats::sent`] once the collector's TCP acknowledged all of it:
//! the task asks the kernel how many written bytes are still unacknowledged (`SIOCOUTQ`)
//! after each write and every [`ACK_POLL`] while some are. Acknowledged bytes reached the
//! collector's kernel; whether its application read them the sink cannot know (a
//! collector that resets with unread bytes in its receive buffer loses them, counted sent).
//!
//! # Connection
//!
//! The task connects at once (timeout [`CONNECT_TIMEOUT`]), and after every failure waits
//! an exponential backoff: 100 ms, doubling, at most 5 s, each wait drawn in
//! `[0.75, 1.0] ×` that value (jitter, so restarted collectors are not hit in step). A
//! connection that broke after [`STABLE_AFTER`] or more is retried at once; one that broke
//! sooner, or that stalled, counts as a failure (accept-then-close peers get the backoff
//! too). It never sleeps while connected. Sockets get `TCP_NODELAY`, keepalive (idle 15 s,
//! then 3 probes 5 s apart) and `TCP_USER_TIMEOUT` 30 s, so a collector host that vanished
//! without a FIN or RST is detected (idle: about 30 s; with unacknowledged data: 30 s)
//! instead of after the kernel's ~15 min of retransmissions.
//!
//! # Dead and stalled collectors
//!
//! A collector never sends anything on a HEP connection, so the socket becoming readable
//! means its FIN (read returns 0) or RST (read fails) arrived. The task watches readability
//! while idle, and right before every write batch it does one non-blocking `recv` system
//! call on the socket (not tokio's cached readiness, which may lag). Bytes a collector does
//! send are read and discarded.
//!
//! A connection that has written bytes outstanding and sees none of them acknowledged for
//! `stall_timeout` is *stalled* (the collector accepts and stops reading): it is counted
//! ([`SinkStats::stalls`]), reported down ([`SinkStats::connected`] false, so failover
//! routes move on), and replaced by a new connection. After a stall the destination stays
//! reported down on the new connection until it has caught up (everything written on it
//! acknowledged, nothing waiting to be replayed).
//!
//! When a connection ends (FIN, RST, failed write, stall), the task learns how many of the
//! bytes it wrote were acknowledged, counts the frames wholly acknowledged as sent, and
//! writes every other frame of the retransmit buffer again, first and in order, on the
//! next connection; the old connection is aborted (RST), so its kernel does not go on
//! delivering them. If the kernel cannot tell (the `SIOCOUTQ` call fails), those frames
//! are counted lost ([`SinkStats::dropped_connection_lost`]), never sent.
//!
//! What a collector can see: a frame cut short at the end of a broken connection (its
//! first bytes were acknowledged, the rest not), then that frame whole at the start of the
//! next connection; and, when the connection broke less than [`ACK_POLL`] after the last
//! acknowledgement check, the frames the collector's TCP acknowledged since that check
//! written again (the kernel cannot be asked once the connection is reset): delivery is
//! at least once, with a bounded overlap of whole frames at a reconnect.
//!
//! # TLS
//!
//! A sink made with [`TcpSink::spawn_tls`] runs a TLS handshake on every new connection
//! (a failure counts as a failed connection attempt, and by reason in
//! `tls_handshakes_failed`) and writes each frame as TLS records; acknowledgements are
//! counted in wire bytes, so "sent" keeps its meaning (see `tls.rs`).
//! [`TcpSink::set_tls`] (a reload) changes the configuration of the next connections.
//!
//! # Shutdown
//!
//! [`TcpSink::drain`] asks the task to write what is queued, wait for its
//! acknowledgement, and stop (closing its side with a FIN); at the deadline it stops the
//! task, which counts every frame not acknowledged yet (queued, in its batch, or in the
//! retransmit buffer: the kernel may still deliver those) in
//! [`SinkStats::dropped_shutdown`]. Draining is terminal: the sink accepts no frames
//! afterwards (they are counted in `dropped_shutdown`). Dropping every handle without a
//! drain (a reload removed the destination) drains on its own: the task keeps writing
//! what is queued for at most [`ORPHAN_DRAIN`], then stops, counting what is left the
//! same way.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hep_common::framing::{MAX_FRAME_LEN, frame_len};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};

mod tls;
use tls::Wire;
pub use tls::{HANDSHAKE_TIMEOUT, SinkTls};

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
/// While written bytes are unacknowledged, the kernel is asked this often how many.
pub const ACK_POLL: Duration = Duration::from_millis(10);
/// The default of `queue_bytes`: the most bytes a sink holds.
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// The default of `stall_timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits of one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SinkOptions {
    /// Most frames held (at least 1).
    pub queue: usize,
    /// Most bytes held (at least one frame of the largest size is always let in).
    pub queue_bytes: usize,
    /// How long a connection with unacknowledged bytes may see none acknowledged before
    /// it counts as stalled.
    pub stall_timeout: Duration,
}

impl SinkOptions {
    /// `queue` frames, the default byte bound and stall timeout.
    pub fn with_queue(queue: usize) -> Self {
        SinkOptions {
            queue,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// Counters of one TCP destination: the daemon's [`DestinationStats`], so `/metrics` and
/// failover read what the sink writes. The sink updates `sent`, `dropped_queue_full`,
/// `dropped_shutdown`, `dropped_invalid`, `dropped_connection_lost`, `reconnects`,
/// `connect_failures`, `stalls`, `connected`, `queue_depth` and `queue_bytes`.
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
    /// The most frames held.
    queue: u64,
    /// The most bytes held.
    queue_bytes: u64,
    stats: Arc<SinkStats>,
    ctl: watch::Sender<Phase>,
    /// `Some(everything written)` once the task has ended.
    done: watch::Receiver<Option<bool>>,
    /// TLS: what the next connection uses.
    tls: Option<Arc<ArcSwap<SinkTls>>>,
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
    /// for `queue` frames (at least 1) and the default byte bound and stall timeout.
    pub fn spawn(
        name: String,
        addr: SocketAddr,
        queue: usize,
        stats: Arc<SinkStats>,
        handle: &tokio::runtime::Handle,
    ) -> TcpSink {
        Self::spawn_with(name, addr, SinkOptions::with_queue(queue), stats, handle)
    }

    /// Starts the connection task of destination `name` at `addr` on `handle`, with the
    /// limits of `options`.
    pub fn spawn_with(
        name: String,
        addr: SocketAddr,
        options: SinkOptions,
        stats: Arc<SinkStats>,
        handle: &tokio::runtime::Handle,
    ) -> TcpSink {
        Self::spawn_tls(name, addr, options, None, stats, handle)
    }

    /// Starts the connection task of destination `name` at `addr` on `handle`, with the
    /// limits of `options`, over TLS when `tls` is given.
    pub fn spawn_tls(
        name: String,
        addr: SocketAddr,
        options: SinkOptions,
        tls: Option<SinkTls>,
        stats: Arc<SinkStats>,
        handle: &tokio::runtime::Handle,
    ) -> TcpSink {
        let tls = tls.map(|t| Arc::new(ArcSwap::from_pointee(t)));
        let (tx, rx) = mpsc::channel(options.queue.clamp(1, Semaphore::MAX_PERMITS));
        let (ctl, ctl_rx) = watch::channel(Phase::Run);
        let (done_tx, done) = watch::channel(None);
        let worker = Worker {
            name: name.clone(),
            addr,
            rx,
            ctl: ctl_rx.clone(),
            stats: Arc::clone(&stats),
            stall_timeout: options.stall_timeout,
            batch: Batch::default(),
            retransmit: Retransmit::default(),
            replay: VecDeque::new(),
            queue_closed: false,
            suspect: false,
            backoff: Backoff::new(seed(addr)),
            outage: Outage::default(),
            tls: tls.clone(),
        };
        handle.spawn(worker.task(ctl_rx, done_tx));
        TcpSink {
            inner: Arc::new(Inner {
                name,
                addr,
                tx,
                queue: options.queue.clamp(1, Semaphore::MAX_PERMITS) as u64,
                queue_bytes: options.queue_bytes as u64,
                stats,
                ctl,
                done,
                tls,
            }),
        }
    }

    /// TLS: the configuration the next connections use (open ones keep their session).
    /// Ignored by a plain TCP sink.
    pub fn set_tls(&self, tls: SinkTls) {
        if let Some(current) = &self.inner.tls {
            current.store(Arc::new(tls));
        }
    }

    /// Queues one whole HEPv3 frame without blocking; callable from any thread. Returns
    /// false (and counts why in [`SinkStats`]) when the frame is dropped: queue full (in
    /// frames or in bytes), sink stopped, or not a single HEPv3 frame.
    pub fn try_send(&self, frame: Bytes) -> bool {
        let stats = &self.inner.stats;
        if frame_len(&frame, MAX_FRAME_LEN) != Ok(Some(frame.len())) {
            stats.dropped_invalid.fetch_add(1, Relaxed);
            return false;
        }
        let len = frame.len() as u64;
        // Counted before the send so the task's decrement can never come first.
        let held = stats.queue_bytes.fetch_add(len, Relaxed);
        // An empty sink always takes a frame, whatever the byte bound.
        if held > 0 && held + len > self.inner.queue_bytes {
            stats.queue_bytes.fetch_sub(len, Relaxed);
            stats.dropped_queue_full.fetch_add(1, Relaxed);
            return false;
        }
        if stats.queue_depth.fetch_add(1, Relaxed) >= self.inner.queue {
            stats.queue_depth.fetch_sub(1, Relaxed);
            stats.queue_bytes.fetch_sub(len, Relaxed);
            stats.dropped_queue_full.fetch_add(1, Relaxed);
            return false;
        }
        match self.inner.tx.try_send(frame) {
            Ok(()) => true,
            Err(e) => {
                stats.queue_depth.fetch_sub(1, Relaxed);
                stats.queue_bytes.fetch_sub(len, Relaxed);
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

    /// Writes what is queued and waits for its acknowledgement, at most `deadline`, then
    /// stops the sink. Frames left at the deadline are counted in
    /// [`SinkStats::dropped_shutdown`]. Returns whether every frame accepted by
    /// [`TcpSink::try_send`] was acknowledged by the collector's TCP. Terminal: later frames
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

/// The write batch: up to [`BATCH_FRAMES`] whole frames, concatenated (until
/// [`BATCH_BYTES`]), and how much of it was written. Its frames are in the retransmit
/// buffer from the moment the batch is filled.
#[derive(Debug, Default)]
struct Batch {
    /// The frames, concatenated.
    bytes: Vec<u8>,
    /// How many frames `bytes` holds (0: no batch).
    frames: u64,
    /// How many bytes of `bytes` were written.
    written: usize,
}

impl Batch {
    /// Whether there is no batch.
    fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The number of frames in the batch.
    #[cfg(test)]
    fn frames(&self) -> u64 {
        self.frames
    }

    /// The bytes to write.
    #[cfg(test)]
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes not written yet.
    fn unwritten(&self) -> &[u8] {
        &self.bytes[self.written.min(self.bytes.len())..]
    }

    /// Starts a batch with `first`, then takes frames from `next` up to the limits; calls
    /// `took` with each frame taken (`first` included).
    #[cfg(test)]
    fn fill(
        &mut self,
        first: Bytes,
        next: impl FnMut() -> Option<Bytes>,
        mut took: impl FnMut(&Bytes),
    ) {
        let filled = self.fill_on(&mut Wire::Plain, first, next, |frame, _| took(frame));
        assert!(filled.is_ok(), "plain frames always encode");
    }

    /// Starts a batch with `first`, then takes frames from `next` up to the limits, each
    /// encoded by `wire`; calls `took` with each frame taken and its length on the wire.
    /// A frame `wire` cannot encode is handed back with the error (the batch keeps the
    /// frames before it).
    fn fill_on(
        &mut self,
        wire: &mut Wire,
        first: Bytes,
        mut next: impl FnMut() -> Option<Bytes>,
        mut took: impl FnMut(&Bytes, u64),
    ) -> Result<(), (Bytes, io::Error)> {
        self.bytes.clear();
        self.frames = 0;
        self.written = 0;
        let mut frame = first;
        loop {
            match wire.encode(&frame, &mut self.bytes) {
                Ok(n) => took(&frame, n as u64),
                Err(e) => return Err((frame, e)),
            }
            self.frames += 1;
            if (self.frames as usize) >= BATCH_FRAMES || self.bytes.len() >= BATCH_BYTES {
                return Ok(());
            }
            match next() {
                Some(more) => frame = more,
                None => return Ok(()),
            }
        }
    }

    /// Empties the batch (written, or abandoned); returns how many frames it held.
    fn take(&mut self) -> u64 {
        let frames = self.frames;
        self.bytes.clear();
        self.frames = 0;
        self.written = 0;
        frames
    }
}

/// The frames handed to the current connection and not yet acknowledged by the
/// collector's TCP, each with the connection's byte offset of its end.
#[derive(Debug, Default)]
struct Retransmit {
    /// The frames, in connection order, with the offset just past their last byte.
    frames: VecDeque<(Bytes, u64)>,
    /// The offset just past the last frame handed to the connection.
    end: u64,
    /// Bytes the kernel accepted on this connection.
    written: u64,
    /// Bytes the collector's TCP acknowledged on this connection.
    acked: u64,
    /// When an acknowledgement last advanced, or bytes became outstanding after none were.
    last_progress: Option<Instant>,
}

impl Retransmit {
    /// Whether no frame waits for its acknowledgement.
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Hands `frame` to the connection.
    #[cfg(test)]
    fn push(&mut self, frame: &Bytes) {
        self.push_on_wire(frame, frame.len() as u64);
    }

    /// Hands `frame` to the connection, where it takes `wire_len` bytes (its length, or
    /// that of its TLS records).
    fn push_on_wire(&mut self, frame: &Bytes, wire_len: u64) {
        if self.end == self.acked {
            // Nothing was outstanding: the stall clock starts now.
            self.last_progress = Some(Instant::now());
        }
        self.end += wire_len;
        self.frames.push_back((frame.clone(), self.end));
    }

    /// The kernel accepted `n` more bytes.
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// The kernel says `outstanding` written bytes are unacknowledged: takes out the frames
    /// now wholly acknowledged, returning how many and their bytes.
    fn acknowledge(&mut self, outstanding: u64) -> (u64, u64) {
        let acked = self.written.saturating_sub(outstanding);
        if acked > self.acked {
            self.acked = acked;
            self.last_progress = Some(Instant::now());
        }
        let (mut frames, mut bytes) = (0, 0);
        while let Some((frame, end)) = self.frames.front() {
            if *end > self.acked {
                break;
            }
            frames += 1;
            bytes += frame.len() as u64;
            self.frames.pop_front();
        }
        (frames, bytes)
    }

    /// Whether bytes handed to the connection are unacknowledged and none was acknowledged
    /// for `timeout`.
    fn stalled(&self, timeout: Duration) -> bool {
        self.end > self.acked && self.last_progress.is_some_and(|t| t.elapsed() >= timeout)
    }

    /// The connection is gone: the frames not wholly acknowledged, in order, and a fresh
    /// state for the next connection.
    fn reset(&mut self) -> VecDeque<(Bytes, u64)> {
        let frames = std::mem::take(&mut self.frames);
        *self = Retransmit::default();
        frames
    }
}

/// When to try connecting again: the exponent of the wait, grown by failed attempts and by
/// connections that broke before [`STABLE_AFTER`], and the random state of its jitter.
#[derive(Debug)]
struct Backoff {
    /// Failed attempts and short-lived connections in a row: the backoff exponent.
    level: u32,
    /// When the current connection was made.
    connected_at: Option<Instant>,
    /// The xorshift state of the jitter (never 0).
    rng: u64,
}

impl Backoff {
    /// No wait yet, jitter seeded with `seed` (odd, see [`seed`]).
    fn new(seed: u64) -> Self {
        Backoff {
            level: 0,
            connected_at: None,
            rng: seed,
        }
    }

    /// Whether the next attempt waits first.
    fn is_due(&self) -> bool {
        self.level > 0
    }

    /// A connection attempt failed.
    fn attempt_failed(&mut self) {
        self.level = self.level.saturating_add(1);
    }

    /// A connection was made.
    fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// The connection broke: one that lasted [`STABLE_AFTER`] or more resets the backoff,
    /// a shorter one counts as a failed attempt. Returns how long it lasted.
    fn disconnected(&mut self) -> Duration {
        let lasted = self
            .connected_at
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if lasted >= STABLE_AFTER {
            self.level = 0;
        } else {
            self.level = self.level.saturating_add(1);
        }
        lasted
    }

    /// The connection stalled: a failed attempt, however long it lasted.
    fn stalled(&mut self) {
        self.connected_at = None;
        self.level = self.level.saturating_add(1);
    }

    /// The wait before the next attempt: 100 ms · 2^(level-1), at most 5 s, times a
    /// random factor in [0.75, 1].
    fn next_wait(&mut self) -> Duration {
        let doublings = self.level.saturating_sub(1).min(16);
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
}

/// What the logs say about the time the collector is unreachable: since when, how many
/// attempts failed, and when it was last warned about (at most every
/// [`FAILURE_LOG_EVERY`]).
#[derive(Debug, Default)]
struct Outage {
    /// Whether a connection was ever made (the next one is then a reconnect).
    ever_connected: bool,
    /// Failed connection attempts since the last connection (or the start).
    failures: u32,
    /// When the connection broke, or the first attempt failed.
    down_since: Option<Instant>,
    /// When the last warning of this outage was logged.
    last_warn: Option<Instant>,
    /// The error of the last failed attempt.
    last_error: String,
}

/// What a failed attempt is worth in the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    /// The first failure: warn.
    First,
    /// A failure, and the last warning is [`FAILURE_LOG_EVERY`] old: warn again.
    Again,
    /// Not due for a warning, but the error changed: debug.
    NewError,
    /// Nothing new.
    Quiet,
}

/// How an outage ended, for the connection log.
#[derive(Debug, Clone, Copy)]
struct Ended {
    /// A connection was made before: this one is a reconnect.
    reconnect: bool,
    /// The attempts that failed before this one.
    failures: u32,
    /// How long the collector was unreachable.
    down: Option<Duration>,
}

impl Outage {
    /// A connection attempt failed with `error`: what to log.
    fn attempt_failed(&mut self, error: &str) -> Report {
        self.failures = self.failures.saturating_add(1);
        let now = Instant::now();
        self.down_since.get_or_insert(now);
        let due = self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_EVERY);
        let report = if due {
            self.last_warn = Some(now);
            if self.failures == 1 {
                Report::First
            } else {
                Report::Again
            }
        } else if error != self.last_error {
            Report::NewError
        } else {
            Report::Quiet
        };
        error.clone_into(&mut self.last_error);
        report
    }

    /// The connection broke: an outage starts now.
    fn begin(&mut self) {
        self.down_since = Some(Instant::now());
        self.last_warn = None;
        self.last_error.clear();
    }

    /// A connection was made: the outage (if any) is over.
    fn end(&mut self) -> Ended {
        let ended = Ended {
            reconnect: self.ever_connected,
            failures: self.failures,
            down: self.down_since.take().map(|t| t.elapsed()),
        };
        self.ever_connected = true;
        self.failures = 0;
        self.last_warn = None;
        ended
    }
}

/// The task of one sink: connects, takes frames out of the queue in batches and writes
/// them.
struct Worker {
    name: String,
    addr: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    ctl: watch::Receiver<Phase>,
    stats: Arc<SinkStats>,
    /// How long written bytes may stay unacknowledged, none advancing.
    stall_timeout: Duration,
    /// The batch being written.
    batch: Batch,
    /// The frames handed to the current connection, not yet acknowledged.
    retransmit: Retransmit,
    /// Frames a broken connection did not deliver, written first on the next one.
    replay: VecDeque<Bytes>,
    /// Every handle is gone and the queue is empty.
    queue_closed: bool,
    /// The last connection stalled: reported down until the next one catches up.
    suspect: bool,
    /// When to try connecting again.
    backoff: Backoff,
    /// The state of the current outage, for the logs.
    outage: Outage,
    /// TLS: what each new connection uses (`None`: plain TCP).
    tls: Option<Arc<ArcSwap<SinkTls>>>,
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

    /// Closes the queue and counts every frame not acknowledged as dropped at shutdown.
    fn abandon(&mut self) -> u64 {
        self.rx.close();
        self.batch.take();
        let (mut left, mut bytes) = (0u64, 0u64);
        let unacked = self.retransmit.reset().into_iter().map(|(frame, _)| frame);
        let replay = std::mem::take(&mut self.replay);
        for frame in unacked.chain(replay) {
            left += 1;
            bytes += frame.len() as u64;
        }
        while let Ok(frame) = self.rx.try_recv() {
            left += 1;
            bytes += frame.len() as u64;
        }
        if left > 0 {
            self.stats.dropped_shutdown.fetch_add(left, Relaxed);
            self.release(left, bytes);
        }
        left
    }

    /// `frames` frames of `bytes` bytes left the sink (sent or dropped).
    fn release(&self, frames: u64, bytes: u64) {
        self.stats.queue_depth.fetch_sub(frames, Relaxed);
        self.stats.queue_bytes.fetch_sub(bytes, Relaxed);
    }

    /// Asked to drain, or every handle is gone.
    fn draining(&self) -> bool {
        match self.ctl.has_changed() {
            Ok(_) => *self.ctl.borrow() == Phase::Drain,
            Err(_) => true,
        }
    }

    /// Draining and nothing left to write or to see acknowledged.
    fn finished(&self) -> bool {
        self.draining()
            && self.batch.is_empty()
            && self.retransmit.is_empty()
            && self.replay.is_empty()
            && self.rx.is_empty()
    }

    async fn run(&mut self) {
        loop {
            let Some((stream, wire)) = self.connect().await else {
                return;
            };
            match self.serve(stream, wire).await {
                Served::Broken => {}
                Served::Finished => return,
            }
        }
    }

    /// Connects, retrying with backoff. `None`: finished, or every handle is gone.
    async fn connect(&mut self) -> Option<(TcpStream, Wire)> {
        loop {
            if self.finished() {
                return None;
            }
            if self.backoff.is_due() {
                let until = tokio::time::Instant::now() + self.backoff.next_wait();
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
            // A host name not resolved yet: no address to try (0.0.0.0 would reach this
            // host). The daemon starts a new sink once the name resolves.
            if self.addr.ip().is_unspecified() {
                self.connect_failed("the host name has not resolved");
                continue;
            }
            let error =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
                    Ok(Ok(stream)) => match self.secure(stream).await {
                        Ok((stream, wire)) => {
                            self.connected(&stream);
                            return Some((stream, wire));
                        }
                        Err(error) => error,
                    },
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("timed out after {CONNECT_TIMEOUT:?}"),
                };
            self.connect_failed(&error);
        }
    }

    /// A TLS sink's handshake on a new connection (counted by reason when it fails); a
    /// plain sink's connection as it is.
    async fn secure(&mut self, stream: TcpStream) -> Result<(TcpStream, Wire), String> {
        let Some(tls) = &self.tls else {
            return Ok((stream, Wire::Plain));
        };
        let tls = tls.load_full();
        tls::handshake(stream, &tls).await.map_err(|e| {
            self.stats.tls_handshakes_failed[e.failure.index()].fetch_add(1, Relaxed);
            e.message
        })
    }

    fn connected(&mut self, stream: &TcpStream) {
        configure(stream, &self.name);
        if self.suspect {
            tracing::info!(
                destination = %self.name,
                addr = %self.addr,
                "TCP destination stalled before: reported down until it catches up"
            );
        } else {
            self.stats.connected.store(true, Relaxed);
        }
        let ended = self.outage.end();
        if ended.reconnect {
            self.stats.reconnects.fetch_add(1, Relaxed);
            tracing::info!(
                destination = %self.name,
                addr = %self.addr,
                failed_attempts = ended.failures,
                down = ?ended.down.unwrap_or_default(),
                "reconnected to TCP destination"
            );
        } else {
            tracing::info!(
                destination = %self.name,
                addr = %self.addr,
                failed_attempts = ended.failures,
                "connected to TCP destination"
            );
        }
        self.backoff.connected();
    }

    fn connect_failed(&mut self, error: &str) {
        self.stats.connect_failures.fetch_add(1, Relaxed);
        self.backoff.attempt_failed();
        match self.outage.attempt_failed(error) {
            Report::First => tracing::warn!(
                destination = %self.name,
                addr = %self.addr,
                %error,
                queued = self.stats.queue_depth.load(Relaxed),
                "cannot connect to TCP destination; retrying with backoff"
            ),
            Report::Again => tracing::warn!(
                destination = %self.name,
                addr = %self.addr,
                %error,
                failed_attempts = self.outage.failures,
                queued = self.stats.queue_depth.load(Relaxed),
                "still cannot connect to TCP destination"
            ),
            Report::NewError => {
                tracing::debug!(destination = %self.name, addr = %self.addr, %error, "connect failed")
            }
            Report::Quiet => {}
        }
    }

    /// The connection on `stream` ended for `reason`: counts what its collector
    /// acknowledged as sent, keeps the rest for the next connection (or counts it lost when
    /// the kernel cannot tell), and aborts the connection.
    fn disconnected(&mut self, stream: &TcpStream, reason: &str, stalled: bool) {
        self.stats.connected.store(false, Relaxed);
        let replayed = match unacknowledged_bytes(stream) {
            Ok(outstanding) => {
                let (frames, bytes) = self.retransmit.acknowledge(outstanding);
                self.sent(frames, bytes);
                let kept = self.retransmit.reset();
                let replayed = kept.len();
                for (frame, _) in kept.into_iter().rev() {
                    self.replay.push_front(frame);
                }
                replayed
            }
            Err(error) => {
                let lost = self.retransmit.reset();
                let frames = lost.len() as u64;
                let bytes = lost.iter().map(|(frame, _)| frame.len() as u64).sum();
                self.stats
                    .dropped_connection_lost
                    .fetch_add(frames, Relaxed);
                self.release(frames, bytes);
                tracing::warn!(
                    destination = %self.name,
                    addr = %self.addr,
                    %error,
                    frames,
                    "cannot learn what the TCP destination acknowledged; frames counted lost"
                );
                0
            }
        };
        self.batch.take();
        // Abort: the kernel must not go on delivering what will be written again.
        if let Err(e) = SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(destination = %self.name, error = %e, "setting SO_LINGER failed");
        }
        let lasted = if stalled {
            self.stats.stalls.fetch_add(1, Relaxed);
            self.suspect = true;
            self.backoff.stalled();
            None
        } else {
            Some(self.backoff.disconnected())
        };
        self.outage.begin();
        tracing::warn!(
            destination = %self.name,
            addr = %self.addr,
            %reason,
            replayed_frames = replayed,
            ?lasted,
            "TCP destination disconnected; reconnecting"
        );
    }

    /// `frames` frames of `bytes` bytes were acknowledged by the collector's TCP.
    fn sent(&mut self, frames: u64, bytes: u64) {
        if frames > 0 {
            self.stats.sent.fetch_add(frames, Relaxed);
            self.release(frames, bytes);
        }
    }

    /// Asks the kernel what the collector acknowledged; counts the frames wholly
    /// acknowledged as sent. A suspect destination that caught up is reported up again.
    fn settle(&mut self, stream: &TcpStream) {
        if !self.retransmit.is_empty() {
            match unacknowledged_bytes(stream) {
                Ok(outstanding) => {
                    let (frames, bytes) = self.retransmit.acknowledge(outstanding);
                    self.sent(frames, bytes);
                }
                Err(e) => {
                    tracing::debug!(destination = %self.name, error = %e, "SIOCOUTQ failed");
                }
            }
        }
        if self.suspect
            && self.retransmit.is_empty()
            && self.batch.is_empty()
            && self.replay.is_empty()
        {
            self.suspect = false;
            self.stats.connected.store(true, Relaxed);
            tracing::info!(destination = %self.name, addr = %self.addr, "TCP destination caught up");
        }
    }

    /// Fills the batch with `first` (if any), then frames to replay, then queued frames,
    /// encoded by `wire`, handing each to the retransmit buffer. A frame the session cannot
    /// encode goes back to the front of the replay queue, and the error is returned: the
    /// connection is to be dropped.
    fn fill_batch(&mut self, first: Option<Bytes>, wire: &mut Wire) -> Result<(), String> {
        let Some(first) = first.or_else(|| self.replay.pop_front()) else {
            return Ok(());
        };
        let (replay, rx, retransmit) = (&mut self.replay, &mut self.rx, &mut self.retransmit);
        let filled = self.batch.fill_on(
            wire,
            first,
            || replay.pop_front().or_else(|| rx.try_recv().ok()),
            |frame, wire_len| retransmit.push_on_wire(frame, wire_len),
        );
        filled.map_err(|(frame, error)| {
            self.replay.push_front(frame);
            format!("TLS encoding failed: {error}")
        })
    }

    /// Writes batches on `stream` until it breaks, stalls, or the sink is finished.
    async fn serve(&mut self, mut stream: TcpStream, mut wire: Wire) -> Served {
        let mut scratch = [0u8; 512];
        let mut poll = tokio::time::interval(ACK_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.settle(&stream);
            if self.retransmit.stalled(self.stall_timeout) {
                let reason = format!("no progress for {:?}", self.stall_timeout);
                self.disconnected(&stream, &reason, true);
                return Served::Broken;
            }
            if self.batch.is_empty() {
                if self.finished() {
                    wire.close(&stream);
                    let _ = SockRef::from(&stream).shutdown(Shutdown::Write);
                    return Served::Finished;
                }
                if !self.replay.is_empty() {
                    if let Err(reason) = self.fill_batch(None, &mut wire) {
                        self.disconnected(&stream, &reason, false);
                        return Served::Broken;
                    }
                } else {
                    let waiting = !self.retransmit.is_empty();
                    tokio::select! {
                        _ = ctl_changed(&mut self.ctl) => continue,
                        ready = stream.readable() => {
                            let state = match ready {
                                Ok(()) => peer_state(|b| stream.try_read(b), &mut scratch),
                                Err(e) => PeerState::Gone(format!("socket error: {e}")),
                            };
                            if let PeerState::Gone(reason) = state {
                                self.disconnected(&stream, &reason, false);
                                return Served::Broken;
                            }
                            continue;
                        }
                        _ = poll.tick(), if waiting => continue,
                        frame = self.rx.recv(), if !self.queue_closed => match frame {
                            Some(frame) => {
                                if let Err(reason) = self.fill_batch(Some(frame), &mut wire) {
                                    self.disconnected(&stream, &reason, false);
                                    return Served::Broken;
                                }
                            }
                            None => {
                                self.queue_closed = true;
                                continue;
                            }
                        },
                    }
                }
            }
            // The peer may have gone since we last looked: ask the kernel, not tokio.
            let sock = SockRef::from(&stream);
            if let PeerState::Gone(reason) = peer_state(|b| (&*sock).read(b), &mut scratch) {
                self.disconnected(&stream, &reason, false);
                return Served::Broken;
            }
            while !self.batch.unwritten().is_empty() {
                tokio::select! {
                    biased;
                    written = stream.write(self.batch.unwritten()) => match written {
                        Ok(0) => {
                            self.disconnected(&stream, "write returned 0", false);
                            return Served::Broken;
                        }
                        Ok(n) => {
                            self.batch.written += n;
                            self.retransmit.wrote(n);
                        }
                        Err(e) => {
                            self.disconnected(&stream, &format!("write failed: {e}"), false);
                            return Served::Broken;
                        }
                    },
                    _ = poll.tick() => {
                        self.settle(&stream);
                        if self.retransmit.stalled(self.stall_timeout) {
                            let reason = format!("no progress for {:?}", self.stall_timeout);
                            self.disconnected(&stream, &reason, true);
                            return Served::Broken;
                        }
                    }
                }
            }
            self.batch.take();
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

/// Bytes written on `stream` that its peer has not acknowledged yet (`SIOCOUTQ`).
fn unacknowledged_bytes(stream: &TcpStream) -> io::Result<u64> {
    let mut outstanding: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ on Linux) writes one int through a valid pointer; the
    // descriptor is a TCP socket owned by `stream` for the whole call.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &raw mut outstanding) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(outstanding).map_err(|_| io::Error::other("negative SIOCOUTQ"))
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
mod tests;
