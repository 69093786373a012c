//! The systemd notify protocol (`sd_notify(3)`), by hand: datagrams of `KEY=value` lines
//! to the unix socket `$NOTIFY_SOCKET` names (a path, or an abstract socket after `@`).
//!
//! The daemon sends `READY=1` (with `STATUS=`) once it listens, `RELOADING=1` with
//! `MONOTONIC_USEC=` when a SIGHUP reload starts and `READY=1` again when it is done,
//! and `STOPPING=1` when SIGTERM's drain starts. A failed send is logged, never fatal.

use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

/// Where notifications go: nowhere when `NOTIFY_SOCKET` was not set (or was unusable).
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, UnixAddr, String)>,
}

/// The address `NOTIFY_SOCKET` names: a path, or an abstract name after `@`.
fn address_of(value: &str) -> std::io::Result<UnixAddr> {
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        UnixAddr::from_abstract_name(name.as_bytes())
    } else if value.starts_with('/') {
        UnixAddr::from_pathname(value)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract socket (@name)",
        ))
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and removes it from the environment (so that no child
    /// inherits it).
    ///
    /// # Safety
    ///
    /// Changes the process environment: call it while the process has a single thread.
    pub unsafe fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        // SAFETY: the caller guarantees that no other thread reads or writes the
        // environment now.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let value = value.to_string_lossy().into_owned();
        Notifier::to(&value)
    }

    /// A notifier sending to the socket `value` names (`NOTIFY_SOCKET` syntax); one that
    /// sends nothing (after a warning) if it is unusable.
    pub fn to(value: &str) -> Notifier {
        let target = address_of(value).and_then(|addr| {
            let sock = UnixDatagram::unbound()?;
            // A full receive queue must not stall the daemon: the send fails instead.
            sock.set_nonblocking(true)?;
            Ok((sock, addr, value.to_string()))
        });
        match target {
            Ok(t) => Notifier { target: Some(t) },
            Err(e) => {
                tracing::warn!(notify_socket = %value, error = %e, "NOTIFY_SOCKET is unusable; no notifications will be sent");
                Notifier::default()
            }
        }
    }

    /// Sends `message` (newline-separated `KEY=value` lines); logs a failure.
    pub fn send(&self, message: &str) {
        let Some((sock, addr, name)) = &self.target else {
            return;
        };
        match sock.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => {
                tracing::debug!(notify_socket = %name, message, "notified the service manager")
            }
            Err(e) => {
                tracing::warn!(notify_socket = %name, error = %e, message, "notifying the service manager failed")
            }
        }
    }

    /// `READY=1` with `STATUS=status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` now.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// `s` with line breaks replaced (a `STATUS=` value is one line).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("hepfwd-notify-test-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::to(&format!("@{name}"));
        n.ready("userspace: 1 UDP listener\nsecond line");
        assert_eq!(
            recv(&sock),
            "READY=1\nSTATUS=userspace: 1 UDP listener second line"
        );
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn a_missing_or_unusable_socket_is_not_fatal() {
        // Nobody listens there: the send fails and is logged.
        Notifier::to("/nonexistent/hepfwd-notify.sock").ready("x");
        // Not an address at all: nothing is sent.
        Notifier::to("relative/path").stopping();
        Notifier::default().reloading();
    }
}
