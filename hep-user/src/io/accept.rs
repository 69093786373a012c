//! Accepting TCP connections without spinning when accept(2) keeps failing.
//!
//! When the process runs out of file descriptors (EMFILE, ENFILE) or the kernel of memory
//! (ENOBUFS, ENOMEM), the pending connection stays in the backlog and the listening socket
//! stays readable: retrying at once fails again at once, burning a core and flooding the
//! log. [`AcceptLoop`] backs off instead, as carrier software does (a sleep growing from
//! [`FIRST_DELAY`] to [`MAX_DELAY`] while the errors persist, back to nothing after a
//! success), and logs at most one line per [`LOG_EVERY`], with the count of the errors it
//! did not log. The HEP TCP listeners and the admin server both accept through it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// The sleep after the first failed accept.
pub const FIRST_DELAY: Duration = Duration::from_millis(5);
/// The longest sleep between failed accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// The backoff state of failed accepts: the next sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: FIRST_DELAY }
    }
}

impl AcceptBackoff {
    /// An accept failed: how long to sleep before the next one (doubling up to
    /// [`MAX_DELAY`]).
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }

    /// An accept succeeded: the next failure sleeps [`FIRST_DELAY`] again.
    pub fn succeeded(&mut self) {
        self.next = FIRST_DELAY;
    }
}

/// A log line limited to one per [`LOG_EVERY`], counting the ones it held back.
#[derive(Debug, Clone, Default)]
pub struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// An event happened at `now`: `Some(n)` when it is to be logged, with `n` events
    /// suppressed since the last line; `None` when it is to be suppressed (and counted).
    pub fn event(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// Accepts the connections of one listening socket, backing off on errors.
#[derive(Debug)]
pub struct AcceptLoop {
    listener: TcpListener,
    /// What accepts, for the log (`admin server`, `HEP TCP listener 127.0.0.1:9061`).
    what: String,
    backoff: AcceptBackoff,
    log: RateLimitedLog,
}

impl AcceptLoop {
    /// Accepts on `listener`; `what` names it in the log.
    pub fn new(listener: TcpListener, what: impl Into<String>) -> Self {
        AcceptLoop {
            listener,
            what: what.into(),
            backoff: AcceptBackoff::default(),
            log: RateLimitedLog::default(),
        }
    }

    /// The next connection. An error is logged (rate-limited) and followed by a growing
    /// sleep before the next attempt; it is never returned.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(connection) => {
                    self.backoff.succeeded();
                    return connection;
                }
                Err(error) => {
                    let delay = self.backoff.failed();
                    if let Some(suppressed) = self.log.event(Instant::now()) {
                        tracing::warn!(
                            listener = %self.what,
                            %error,
                            suppressed,
                            retry_in = ?delay,
                            "accept failed, backing off (suppressed: failures not logged since the last line)"
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Raises the soft limit of open files (RLIMIT_NOFILE) to the hard limit, so that many
/// agents' TCP connections do not run the daemon out of descriptors early; logs both.
pub fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reading RLIMIT_NOFILE failed");
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the hard
        // one is always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::warn!(
                soft = before,
                hard = limit.rlim_max,
                error = %std::io::Error::last_os_error(),
                "raising the open files limit (RLIMIT_NOFILE) failed"
            );
            return;
        }
        limit = raised;
    }
    tracing::info!(
        soft_before = before,
        soft = limit.rlim_cur,
        hard = limit.rlim_max,
        "open files limit (RLIMIT_NOFILE)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_5_ms_to_1_s_and_resets_after_a_success() {
        let mut backoff = AcceptBackoff::default();
        let delays: Vec<u128> = (0..10).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), FIRST_DELAY);
    }

    #[test]
    fn the_log_says_one_line_per_second_with_the_count_it_held_back() {
        let mut log = RateLimitedLog::default();
        let start = Instant::now();
        assert_eq!(log.event(start), Some(0));
        for ms in 1..=999 {
            assert_eq!(log.event(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.event(start + Duration::from_millis(1000)), Some(999));
        assert_eq!(log.event(start + Duration::from_millis(1001)), None);
        assert_eq!(log.event(start + Duration::from_millis(2500)), Some(1));
    }
}
