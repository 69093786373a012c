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
//!
//! # Spool
//!
//! With a spool ([`SinkOptions::spool`], see [`crate::io::spool`]) frames the sink cannot
//! hold in memory go to disk instead of being dropped, and are written later in the order
//! they were accepted:
//!
//! - The sink is *spilling* (new frames go to the spool, [`SinkStats::spooling`]) from
//!   the moment the destination is unreachable (a failed connection attempt, a broken or
//!   stalled connection) or the memory queue refuses a frame, and at start when the spool
//!   holds frames. [`TcpSink::try_send`] decides between the memory queue and the spool
//!   under the spool's lock, so a frame never overtakes one already spooled.
//! - When an outage starts, the frames held in memory (to replay, then queued) move to the
//!   spool if the spool has nothing left to read and none of them precedes a frame read
//!   from the spool (that is, when appending them keeps the order); otherwise they stay in
//!   memory and are written first.
//! - Connected, the task writes what it holds in memory (older), then reads the spool
//!   oldest first (in a blocking task). When the spool has nothing left to read, it stops
//!   spilling under the same lock: later frames take the memory queue and follow on the
//!   same connection.
//! - A frame read from the spool stays in it (counted in [`SinkStats::spool_frames`])
//!   until the collector's TCP acknowledged it: then it is consumed there and counted
//!   [`SinkStats::sent`] and [`SinkStats::replayed`]. A broken connection writes the
//!   unacknowledged ones again, like memory frames; a process killed before they were
//!   consumed (and the position synced) replays them at the next start.
//! - Another task `fdatasync`s the spool every `sync`; the task syncs it a last time when
//!   it stops. At a stop, frames held in memory move to the spool when the order allows
//!   (else they are counted [`SinkStats::dropped_shutdown`] as without a spool).
//!
//! So sent + dropped + `queue_depth` + `spool_frames` = frames routed to the sink + frames
//! found in the spool at start ([`SinkStats::spool_recovered`]).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hep_common::framing::{MAX_FRAME_LEN, frame_len};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::io::spool::{Appended, Spool, SpoolError, SpoolOptions};

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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SinkOptions {
    /// Most frames held (at least 1).
    pub queue: usize,
    /// Most bytes held (at least one frame of the largest size is always let in).
    pub queue_bytes: usize,
    /// How long a connection with unacknowledged bytes may see none acknowledged before
    /// it counts as stalled.
    pub stall_timeout: Duration,
    /// The disk spool, if any (see the module documentation, "Spool").
    pub spool: Option<SpoolOptions>,
}

impl SinkOptions {
    /// `queue` frames, the default byte bound and stall timeout.
    pub fn with_queue(queue: usize) -> Self {
        SinkOptions {
            queue,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            spool: None,
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
    /// The collector's address now (a destination's host name may resolve anew).
    target: watch::Sender<SocketAddr>,
    tx: mpsc::Sender<Bytes>,
    /// The most frames held.
    queue: u64,
    /// The most bytes held.
    queue_bytes: u64,
    stats: Arc<SinkStats>,
    /// The disk spool, once configured and opened.
    spool: Arc<SpoolSlot>,
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
            .field("addr", &*self.inner.target.borrow())
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
        let spool = Arc::new(SpoolSlot::default());
        if let Some(o) = options.spool.as_ref() {
            // Opening reads every segment: on a worker of a multi-threaded runtime, tell
            // it so that its other tasks move elsewhere meanwhile.
            let open = || SpoolShared::open(&name, o, &stats);
            let opened = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(open),
                _ => open(),
            };
            match opened {
                Ok(shared) => {
                    spool.current.store(Some(Arc::clone(&shared)));
                    handle.spawn(sync_task(shared, done.clone()));
                }
                Err(SpoolError::Locked(dir)) => {
                    tracing::warn!(
                        destination = %name,
                        dir = %dir.display(),
                        "spool directory in use (by the sink this one replaces?); opening it once released"
                    );
                    handle.spawn(open_later(
                        name.clone(),
                        o.clone(),
                        Arc::clone(&stats),
                        Arc::clone(&spool),
                        done.clone(),
                    ));
                }
                Err(e) => tracing::error!(
                    destination = %name,
                    error = %e,
                    "cannot open the spool; the destination runs without it"
                ),
            }
        }
        let (target, target_rx) = watch::channel(addr);
        let worker = Worker {
            name: name.clone(),
            addr,
            target: target_rx,
            rx,
            ctl: ctl_rx.clone(),
            stats: Arc::clone(&stats),
            stall_timeout: options.stall_timeout,
            batch: Batch::default(),
            retransmit: Retransmit::default(),
            replay: VecDeque::new(),
            spool: Arc::clone(&spool),
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
                target,
                tx,
                queue: options.queue.clamp(1, Semaphore::MAX_PERMITS) as u64,
                queue_bytes: options.queue_bytes as u64,
                stats,
                spool,
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
        let Some(shared) = self.inner.spool.get() else {
            return match self.enqueue(frame) {
                Ok(()) => true,
                Err(Refused::Full(_)) => {
                    stats.dropped_queue_full.fetch_add(1, Relaxed);
                    false
                }
                Err(Refused::Closed) => {
                    stats.dropped_shutdown.fetch_add(1, Relaxed);
                    false
                }
            };
        };
        if self.inner.tx.is_closed() {
            stats.dropped_shutdown.fetch_add(1, Relaxed);
            return false;
        }
        // One lock decides between the memory queue and the spool, so no frame overtakes
        // one already spooled.
        let mut state = shared.lock();
        let frame = if state.spilling {
            frame
        } else {
            match self.enqueue(frame) {
                Ok(()) => return true,
                Err(Refused::Closed) => {
                    stats.dropped_shutdown.fetch_add(1, Relaxed);
                    return false;
                }
                Err(Refused::Full(frame)) => {
                    state.start_spilling(&self.inner.name, "memory queue full", stats);
                    frame
                }
            }
        };
        let stored = state.append(&frame, stats);
        drop(state);
        self.inner.spool.notify.notify_one();
        stored
    }

    /// Puts `frame` in the memory queue, counting it held.
    fn enqueue(&self, frame: Bytes) -> Result<(), Refused> {
        let stats = &self.inner.stats;
        let len = frame.len() as u64;
        // Counted before the send so the task's decrement can never come first.
        let held = stats.queue_bytes.fetch_add(len, Relaxed);
        // An empty sink always takes a frame, whatever the byte bound.
        if held > 0 && held + len > self.inner.queue_bytes {
            stats.queue_bytes.fetch_sub(len, Relaxed);
            return Err(Refused::Full(frame));
        }
        if stats.queue_depth.fetch_add(1, Relaxed) >= self.inner.queue {
            stats.queue_depth.fetch_sub(1, Relaxed);
            stats.queue_bytes.fetch_sub(len, Relaxed);
            return Err(Refused::Full(frame));
        }
        match self.inner.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(e) => {
                stats.queue_depth.fetch_sub(1, Relaxed);
                stats.queue_bytes.fetch_sub(len, Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(frame) => Err(Refused::Full(frame)),
                    mpsc::error::TrySendError::Closed(_) => Err(Refused::Closed),
                }
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
        *self.inner.target.borrow()
    }

    /// A new address for the collector (its host name resolved anew): an open connection
    /// to the old one ends at the next moment the sink is idle (what it had not
    /// acknowledged is written again first), and the next connection goes to `addr`. The
    /// queue and the spool stay: nothing is dropped for the change.
    pub fn set_address(&self, addr: SocketAddr) {
        self.inner.target.send_if_modified(|current| {
            let changed = *current != addr;
            *current = addr;
            changed
        });
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

/// Why the memory queue refused a frame.
enum Refused {
    /// Full (in frames or bytes): the frame, for the spool.
    Full(Bytes),
    /// The sink stopped.
    Closed,
}

/// Where a frame the task holds comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The memory queue: counted in `queue_depth` until acknowledged.
    Memory,
    /// The spool: read from it, consumed there once acknowledged.
    Spool,
}

/// A frame the task holds, and where it came from.
#[derive(Debug, Clone)]
struct Tagged {
    frame: Bytes,
    origin: Origin,
}

impl Tagged {
    fn memory(frame: Bytes) -> Self {
        Tagged {
            frame,
            origin: Origin::Memory,
        }
    }
}

impl AsRef<[u8]> for Tagged {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

/// The spool of a sink and whether new frames go to it, under one lock (taken by
/// [`TcpSink::try_send`] and by the task).
#[derive(Debug)]
struct SpoolShared {
    state: Mutex<SpoolState>,
}

/// Where a sink's spool is: opened when the sink starts, or later when its directory was
/// still locked by the sink this one replaces (a reload that changed the destination):
/// see [`open_later`].
#[derive(Debug, Default)]
struct SpoolSlot {
    current: arc_swap::ArcSwapOption<SpoolShared>,
    /// Wakes the task when a frame was spooled or the spool was opened.
    notify: Notify,
}

impl SpoolSlot {
    fn get(&self) -> Option<Arc<SpoolShared>> {
        self.current.load_full()
    }
}

/// While a replaced sink holds the spool directory, the new one tries again this often...
const SPOOL_OPEN_RETRY: Duration = Duration::from_millis(200);
/// ...for at most this long (the old sink drains for at most [`ORPHAN_DRAIN`]).
const SPOOL_OPEN_FOR: Duration = Duration::from_secs(30);

/// Opens the spool of `name` once the sink this one replaces released it. Frames taken in
/// the meantime went to the memory queue: they may reach the collector before the older
/// frames the old sink left in the spool (the order holds again from then on).
async fn open_later(
    name: String,
    options: SpoolOptions,
    stats: Arc<SinkStats>,
    slot: Arc<SpoolSlot>,
    mut done: watch::Receiver<Option<bool>>,
) {
    let until = Instant::now() + SPOOL_OPEN_FOR;
    while Instant::now() < until {
        tokio::select! {
            _ = tokio::time::sleep(SPOOL_OPEN_RETRY) => {}
            changed = done.changed() => {
                if changed.is_err() || done.borrow().is_some() {
                    return;
                }
                continue;
            }
        }
        let (n, o, st) = (name.clone(), options.clone(), Arc::clone(&stats));
        match tokio::task::spawn_blocking(move || SpoolShared::open(&n, &o, &st)).await {
            Ok(Ok(shared)) => {
                tracing::info!(destination = %name, "spool opened after the replaced sink released it");
                slot.current.store(Some(Arc::clone(&shared)));
                slot.notify.notify_one();
                sync_task(shared, done).await;
                return;
            }
            Ok(Err(SpoolError::Locked(_))) => {}
            Ok(Err(e)) => {
                tracing::error!(destination = %name, error = %e, "cannot open the spool; the destination runs without it");
                return;
            }
            Err(e) => {
                tracing::error!(destination = %name, error = %e, "spool open task failed; the destination runs without it");
                return;
            }
        }
    }
    tracing::error!(
        destination = %name,
        "spool directory still in use; the destination runs without it until a restart"
    );
}

#[derive(Debug)]
struct SpoolState {
    spool: Spool,
    /// New frames go to the spool, not the memory queue. Set when the destination is
    /// unreachable or its memory queue is full, cleared by the task only when it has
    /// handed every spooled frame to the connection.
    spilling: bool,
    /// Destination name, for the logs.
    name: String,
    /// When an append error was last logged.
    last_error_log: Option<Instant>,
}

/// While the spool cannot be written, an error is logged at most this often.
const SPOOL_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// After an error reading the spool, the task waits this long before trying again.
const SPOOL_READ_RETRY: Duration = Duration::from_secs(1);

impl SpoolShared {
    /// Opens the spool of destination `name`.
    fn open(
        name: &str,
        options: &SpoolOptions,
        stats: &SinkStats,
    ) -> Result<Arc<SpoolShared>, SpoolError> {
        match Spool::open(options.clone()) {
            Ok((spool, recovery)) => {
                stats.has_spool.store(true, Relaxed);
                stats.spool_max_bytes.store(options.max_bytes, Relaxed);
                stats.spool_recovered.fetch_add(recovery.frames, Relaxed);
                stats
                    .spool_corrupt
                    .fetch_add(recovery.corrupt_skipped, Relaxed);
                let spilling = !spool.is_empty();
                if spilling || recovery.corrupt_skipped > 0 || recovery.truncated_bytes > 0 {
                    tracing::info!(
                        destination = %name,
                        dir = %spool.dir().display(),
                        frames = recovery.frames,
                        corrupt_skipped = recovery.corrupt_skipped,
                        truncated_bytes = recovery.truncated_bytes,
                        "spool opened with frames to replay"
                    );
                }
                let state = SpoolState {
                    spool,
                    spilling,
                    name: name.to_string(),
                    last_error_log: None,
                };
                state.publish(stats);
                Ok(Arc::new(SpoolShared {
                    state: Mutex::new(state),
                }))
            }
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SpoolState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `fdatasync`s the spool and saves its position (blocking).
    fn sync(&self) {
        let mut state = self.lock();
        if let Err(e) = state.spool.sync() {
            tracing::warn!(destination = %state.name, error = %e, "spool sync failed");
        }
    }
}

impl SpoolState {
    /// New frames go to the spool from now on.
    fn start_spilling(&mut self, name: &str, why: &str, stats: &SinkStats) {
        if !self.spilling {
            self.spilling = true;
            stats.spooling.store(true, Relaxed);
            tracing::info!(destination = %name, reason = why, "spooling to disk");
        }
    }

    /// Appends `frame`, counting the outcome; whether it was stored.
    fn append(&mut self, frame: &[u8], stats: &SinkStats) -> bool {
        let stored = match self.spool.append(frame) {
            Ok(Appended::Stored { dropped_oldest }) => {
                stats.dropped_spool_full.fetch_add(dropped_oldest, Relaxed);
                stats.spooled.fetch_add(1, Relaxed);
                stats.spooled_bytes.fetch_add(frame.len() as u64, Relaxed);
                true
            }
            Ok(Appended::Refused { dropped_oldest }) => {
                stats
                    .dropped_spool_full
                    .fetch_add(dropped_oldest + 1, Relaxed);
                false
            }
            Err(e) => {
                stats.dropped_spool_error.fetch_add(1, Relaxed);
                let now = Instant::now();
                if self
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= SPOOL_ERROR_LOG_EVERY)
                {
                    self.last_error_log = Some(now);
                    tracing::warn!(destination = %self.name, error = %e, "cannot write to the spool; frame dropped");
                }
                false
            }
        };
        self.publish(stats);
        stats.spooling.store(self.spilling, Relaxed);
        stored
    }

    /// The gauges.
    fn publish(&self, stats: &SinkStats) {
        stats.spool_frames.store(self.spool.frames(), Relaxed);
        stats.spool_bytes.store(self.spool.bytes(), Relaxed);
        stats
            .spool_oldest_ms
            .store(self.spool.oldest_ms().unwrap_or(0), Relaxed);
        stats.spooling.store(self.spilling, Relaxed);
    }
}

/// `fdatasync`s the spool every `sync` until the sink's task ends (it syncs a last time).
async fn sync_task(shared: Arc<SpoolShared>, mut done: watch::Receiver<Option<bool>>) {
    let every = shared.lock().spool.sync_every();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = Arc::clone(&shared);
                let _ = tokio::task::spawn_blocking(move || s.sync()).await;
            }
            changed = done.changed() => {
                if changed.is_err() || done.borrow().is_some() {
                    return;
                }
            }
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
    fn fill_on<T: AsRef<[u8]>>(
        &mut self,
        wire: &mut Wire,
        first: T,
        mut next: impl FnMut() -> Option<T>,
        mut took: impl FnMut(&T, u64),
    ) -> Result<(), (T, io::Error)> {
        self.bytes.clear();
        self.frames = 0;
        self.written = 0;
        let mut frame = first;
        loop {
            match wire.encode(frame.as_ref(), &mut self.bytes) {
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
    frames: VecDeque<(Tagged, u64)>,
    /// Frames from the spool wholly acknowledged, not yet taken by the task.
    acked_spool: u64,
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

    /// Hands `frame` (from the memory queue) to the connection.
    #[cfg(test)]
    fn push(&mut self, frame: &Bytes) {
        self.push_on_wire(&Tagged::memory(frame.clone()), frame.len() as u64);
    }

    /// Hands `item` to the connection, where it takes `wire_len` bytes (its length, or
    /// that of its TLS records).
    fn push_on_wire(&mut self, item: &Tagged, wire_len: u64) {
        if self.end == self.acked {
            // Nothing was outstanding: the stall clock starts now.
            self.last_progress = Some(Instant::now());
        }
        self.end += wire_len;
        self.frames.push_back((item.clone(), self.end));
    }

    /// The frames from the spool acknowledged since the last call.
    fn take_acked_spool(&mut self) -> u64 {
        std::mem::take(&mut self.acked_spool)
    }

    /// The kernel accepted `n` more bytes.
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// The kernel says `outstanding` written bytes are unacknowledged: takes out the frames
    /// now wholly acknowledged, returning how many from the memory queue and their bytes
    /// (those from the spool: [`Retransmit::take_acked_spool`]).
    fn acknowledge(&mut self, outstanding: u64) -> (u64, u64) {
        let acked = self.written.saturating_sub(outstanding);
        if acked > self.acked {
            self.acked = acked;
            self.last_progress = Some(Instant::now());
        }
        let (mut frames, mut bytes) = (0, 0);
        while let Some((item, end)) = self.frames.front() {
            if *end > self.acked {
                break;
            }
            match item.origin {
                Origin::Memory => {
                    frames += 1;
                    bytes += item.frame.len() as u64;
                }
                Origin::Spool => self.acked_spool += 1,
            }
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
    fn reset(&mut self) -> VecDeque<(Bytes, Origin)> {
        let frames = std::mem::take(&mut self.frames);
        *self = Retransmit::default();
        frames
            .into_iter()
            .map(|(item, _)| (item.frame, item.origin))
            .collect()
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
    /// The address of the connection (being) made.
    addr: SocketAddr,
    /// The address to use: [`TcpSink::set_address`].
    target: watch::Receiver<SocketAddr>,
    rx: mpsc::Receiver<Bytes>,
    ctl: watch::Receiver<Phase>,
    stats: Arc<SinkStats>,
    /// How long written bytes may stay unacknowledged, none advancing.
    stall_timeout: Duration,
    /// The batch being written.
    batch: Batch,
    /// The frames handed to the current connection, not yet acknowledged.
    retransmit: Retransmit,
    /// Frames a broken connection did not deliver, written first on the next one (and
    /// frames read from the spool that did not fit in a batch).
    replay: VecDeque<Tagged>,
    /// The disk spool, if any.
    spool: Arc<SpoolSlot>,
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
        if let Some(shared) = self.spool.get() {
            let _ = tokio::task::spawn_blocking(move || shared.sync()).await;
        }
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

    /// Closes the queue; moves the frames not acknowledged to the spool when that keeps
    /// the order (see [`Worker::spill`]), and counts the others as dropped at shutdown
    /// (frames read from the spool stay in it).
    fn abandon(&mut self) -> u64 {
        self.rx.close();
        self.batch.take();
        let mut pipeline: Vec<Tagged> = self
            .retransmit
            .reset()
            .into_iter()
            .map(|(frame, origin)| Tagged { frame, origin })
            .collect();
        pipeline.extend(std::mem::take(&mut self.replay));
        while let Ok(frame) = self.rx.try_recv() {
            pipeline.push(Tagged::memory(frame));
        }
        let kept = self.spill(pipeline, "stopping");
        let (mut left, mut bytes) = (0u64, 0u64);
        for item in kept.iter().filter(|t| t.origin == Origin::Memory) {
            left += 1;
            bytes += item.frame.len() as u64;
        }
        if left > 0 {
            self.stats.dropped_shutdown.fetch_add(left, Relaxed);
            self.release(left, bytes);
        }
        left
    }

    /// New frames go to the spool from now on (`why`: the destination is unreachable, or
    /// the task stops), and the frames of `pipeline` (held in memory, oldest first) move
    /// to the spool where that keeps the order: the memory frames after the last one read
    /// from the spool, when the spool has nothing left to read. Returns the frames kept in
    /// memory, in order (all of them without a spool).
    fn spill(&mut self, pipeline: Vec<Tagged>, why: &str) -> VecDeque<Tagged> {
        let Some(shared) = self.spool.get() else {
            return pipeline.into();
        };
        let mut state = shared.lock();
        state.start_spilling(&self.name, why, &self.stats);
        let movable_from = if state.spool.unread_frames() == 0 {
            pipeline
                .iter()
                .rposition(|t| t.origin == Origin::Spool)
                .map_or(0, |i| i + 1)
        } else {
            pipeline.len()
        };
        let mut kept = VecDeque::new();
        let (mut moved, mut moved_bytes) = (0u64, 0u64);
        for (index, item) in pipeline.into_iter().enumerate() {
            if index >= movable_from {
                moved += 1;
                moved_bytes += item.frame.len() as u64;
                state.append(&item.frame, &self.stats);
            } else {
                kept.push_back(item);
            }
        }
        drop(state);
        if moved > 0 {
            self.release(moved, moved_bytes);
            tracing::debug!(destination = %self.name, frames = moved, "memory queue moved to the spool");
        }
        kept
    }

    /// The frames held in memory (the replay list, then the queue) go to the spool where
    /// the order allows; the rest stays in the replay list.
    fn spill_held(&mut self, why: &str) {
        if self.spool.current.load().is_none() {
            return;
        }
        let mut pipeline: Vec<Tagged> = std::mem::take(&mut self.replay).into();
        while let Ok(frame) = self.rx.try_recv() {
            pipeline.push(Tagged::memory(frame));
        }
        self.replay = self.spill(pipeline, why);
    }

    /// Whether new frames go to the spool (the task replays it before the memory queue's
    /// newer frames).
    fn spooling(&self) -> bool {
        self.spool.current.load().is_some() && self.stats.spooling.load(Relaxed)
    }

    /// Reads the next frames to replay from the spool (blocking work off the runtime's
    /// threads). When nothing is left to read, new frames go to the memory queue again
    /// (decided under the lock producers take, so none slips in between).
    async fn read_spool(&self) -> Result<Vec<Tagged>, ()> {
        let Some(shared) = self.spool.get() else {
            return Ok(Vec::new());
        };
        let stats = Arc::clone(&self.stats);
        let name = self.name.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut state = shared.lock();
            let read = state.spool.read(BATCH_FRAMES, BATCH_BYTES);
            let exhausted = match &read {
                Ok(frames) => frames.is_empty() || state.spool.unread_frames() == 0,
                Err(_) => false,
            };
            if exhausted && state.spilling {
                if state.spool.unread_frames() > 0 {
                    tracing::warn!(destination = %name, frames = state.spool.unread_frames(), "spool: frames counted but not readable");
                }
                state.spilling = false;
                tracing::info!(destination = %name, "spool replayed; back to the memory queue");
            }
            state.publish(&stats);
            read
        })
        .await;
        match result {
            Ok(Ok(frames)) => Ok(frames
                .into_iter()
                .map(|frame| Tagged {
                    frame,
                    origin: Origin::Spool,
                })
                .collect()),
            Ok(Err(e)) => {
                tracing::warn!(destination = %self.name, error = %e, "cannot read the spool; retrying");
                Err(())
            }
            Err(e) => {
                tracing::warn!(destination = %self.name, error = %e, "spool read task failed; retrying");
                Err(())
            }
        }
    }

    /// `frames` frames read from the spool were acknowledged: consumed there, counted sent.
    fn consume_spool(&self, frames: u64) {
        if frames == 0 {
            return;
        }
        self.stats.sent.fetch_add(frames, Relaxed);
        self.stats.replayed.fetch_add(frames, Relaxed);
        if let Some(shared) = self.spool.get() {
            let mut state = shared.lock();
            if let Err(e) = state.spool.consume(frames) {
                tracing::warn!(destination = %self.name, error = %e, "spool: cannot delete a consumed segment");
            }
            state.publish(&self.stats);
        }
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

    /// Draining and nothing left to write or to see acknowledged (frames read from the
    /// spool and waiting to be written again stay in the spool for the next start).
    fn finished(&self) -> bool {
        self.draining()
            && self.batch.is_empty()
            && self.retransmit.is_empty()
            && self.replay.iter().all(|t| t.origin == Origin::Spool)
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
                        // A new address (a name resolved anew): try it now.
                        Ok(()) = self.target.changed() => break,
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
            self.addr = *self.target.borrow_and_update();
            // A host name not resolved yet: no address to try (0.0.0.0 would reach this
            // host). The daemon gives the sink the address once the name resolves.
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
        self.spill_held("destination unreachable");
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
                let acked_spool = self.retransmit.take_acked_spool();
                self.consume_spool(acked_spool);
                let kept = self.retransmit.reset();
                let replayed = kept.len();
                for (frame, origin) in kept.into_iter().rev() {
                    self.replay.push_front(Tagged { frame, origin });
                }
                replayed
            }
            Err(error) => {
                let all = self.retransmit.reset();
                // Frames read from the spool are still in it: written again.
                let (lost, kept): (Vec<_>, Vec<_>) =
                    all.into_iter().partition(|(_, o)| *o == Origin::Memory);
                for (frame, origin) in kept.into_iter().rev() {
                    self.replay.push_front(Tagged { frame, origin });
                }
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
        self.spill_held("destination disconnected");
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
                    let acked_spool = self.retransmit.take_acked_spool();
                    self.consume_spool(acked_spool);
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
    fn fill_batch(&mut self, first: Option<Tagged>, wire: &mut Wire) -> Result<(), String> {
        let Some(first) = first.or_else(|| self.replay.pop_front()) else {
            return Ok(());
        };
        let (replay, rx, retransmit) = (&mut self.replay, &mut self.rx, &mut self.retransmit);
        let filled = self.batch.fill_on(
            wire,
            first,
            || {
                replay
                    .pop_front()
                    .or_else(|| rx.try_recv().ok().map(Tagged::memory))
            },
            |item, wire_len| retransmit.push_on_wire(item, wire_len),
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
                } else if self.spooling() {
                    // The memory queue's frames are older than the spool's: first.
                    let first = match self.rx.try_recv() {
                        Ok(frame) => Some(Tagged::memory(frame)),
                        Err(_) => match self.read_spool().await {
                            Ok(read) if !read.is_empty() => {
                                self.replay.extend(read);
                                None
                            }
                            Ok(_) => continue,
                            Err(()) => {
                                tokio::select! {
                                    _ = tokio::time::sleep(SPOOL_READ_RETRY) => {}
                                    _ = ctl_changed(&mut self.ctl) => {}
                                }
                                continue;
                            }
                        },
                    };
                    if let Err(reason) = self.fill_batch(first, &mut wire) {
                        self.disconnected(&stream, &reason, false);
                        return Served::Broken;
                    }
                } else {
                    let waiting = !self.retransmit.is_empty();
                    let slot = Arc::clone(&self.spool);
                    tokio::select! {
                        _ = ctl_changed(&mut self.ctl) => continue,
                        Ok(()) = self.target.changed() => {
                            if *self.target.borrow() != self.addr {
                                self.disconnected(&stream, "the destination's address changed", false);
                                return Served::Broken;
                            }
                            continue;
                        }
                        _ = slot.notify.notified() => continue,
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
                                let first = Some(Tagged::memory(frame));
                                if let Err(reason) = self.fill_batch(first, &mut wire) {
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
