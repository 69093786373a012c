//! Collectors owned by the test: a UDP socket and a TCP listener, each drained by a thread
//! into a channel (so a burst never overflows a socket buffer while the test is busy),
//! and an agent-side sender.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hep_common::framing::{MAX_FRAME_LEN, frame_len};

/// How long a collector waits before declaring that nothing more arrives.
pub const QUIET: Duration = Duration::from_millis(300);
/// Default bound on waiting for expected packets.
pub const WAIT: Duration = Duration::from_secs(10);

/// The pause between two datagrams of [`Agent::send_all`].
pub const SEND_GAP: Duration = Duration::from_micros(200);
/// The most packets [`Agent::send_all`] sends.
pub const SEND_BOUND: usize = 10_000;

/// Receive buffer of the collector sockets.
const RCVBUF: usize = 4 << 20;

fn set_rcvbuf(fd: &impl std::os::fd::AsRawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: an int socket option on a valid socket.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const v).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// What arrived, in arrival order, with a blocking wait.
pub struct Inbox {
    rx: Receiver<Vec<u8>>,
    name: String,
}

impl Inbox {
    /// The next packet within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Exactly `n` packets within `timeout` (panics with how many came), then nothing
    /// more for [`QUIET`] (panics on an extra packet).
    pub fn expect(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let got = self.take(n, timeout);
        self.expect_silent(QUIET);
        got
    }

    /// `n` packets within `timeout` (panics with how many came); later ones stay queued.
    pub fn take(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(p) => got.push(p),
                None => panic!(
                    "collector {}: {} of {n} packets within {timeout:?}",
                    self.name,
                    got.len()
                ),
            }
        }
        got
    }

    /// Panics if anything arrives within `d`.
    pub fn expect_silent(&self, d: Duration) {
        if let Some(p) = self.recv(d) {
            panic!(
                "collector {}: unexpected packet of {} bytes: {:02x?}",
                self.name,
                p.len(),
                &p[..p.len().min(64)]
            );
        }
    }

    /// Everything that arrives until nothing came for `quiet`.
    pub fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(p) = self.recv(quiet) {
            v.push(p);
        }
        v
    }
}

/// A UDP collector on a loopback address.
pub struct UdpCollector {
    /// Its address.
    pub addr: SocketAddr,
    /// What it received.
    pub inbox: Inbox,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpCollector {
    /// Binds `127.0.0.1:0`.
    pub fn new(name: &str) -> Self {
        Self::bind(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Binds `addr` (port 0: any).
    pub fn bind(name: &str, addr: SocketAddr) -> Self {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP {addr}: {e}"));
        set_rcvbuf(&sock, RCVBUF);
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("udp-collector-{name}"))
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !st.load(Relaxed) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => {}
                    }
                }
            })
            .unwrap();
        UdpCollector {
            addr,
            inbox: Inbox {
                rx,
                name: name.to_string(),
            },
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the socket (later datagrams get ICMP port unreachable); returns what was
    /// received and not yet read.
    pub fn close(mut self) -> Vec<Vec<u8>> {
        self.shutdown();
        self.inbox.drain(Duration::ZERO)
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::ops::Deref for UdpCollector {
    type Target = Inbox;
    fn deref(&self) -> &Inbox {
        &self.inbox
    }
}

impl Drop for UdpCollector {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A TCP collector: accepts connections and cuts each stream into HEPv3 frames.
pub struct TcpCollector {
    /// Its address.
    pub addr: SocketAddr,
    /// Frames received (every connection, in arrival order).
    pub inbox: Inbox,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    /// Framing errors seen (garbage in a stream).
    pub framing_errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

fn read_frames(
    mut s: TcpStream,
    tx: Sender<Vec<u8>>,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    while !stop.load(Relaxed) {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    if buf.is_empty() {
                        break;
                    }
                    match frame_len(&buf, MAX_FRAME_LEN) {
                        Ok(Some(len)) => {
                            let f: Vec<u8> = buf.drain(..len).collect();
                            if tx.send(f).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            errors.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl TcpCollector {
    /// Listens on `127.0.0.1:0`.
    pub fn new(name: &str) -> Self {
        Self::bind(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Listens on `addr` (e.g. the port of a collector that was stopped).
    pub fn bind(name: &str, addr: SocketAddr) -> Self {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind TCP {addr}: {e}"));
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let framing_errors = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (st, acc, errs, cs) = (
            stop.clone(),
            accepted.clone(),
            framing_errors.clone(),
            conns.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("tcp-collector-{name}"))
            .spawn(move || {
                let mut readers = Vec::new();
                while !st.load(Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_nonblocking(false);
                            acc.fetch_add(1, Relaxed);
                            if let Ok(c) = s.try_clone() {
                                cs.lock().unwrap().push(c);
                            }
                            let (tx, st, errs) = (tx.clone(), st.clone(), errs.clone());
                            readers.push(std::thread::spawn(move || read_frames(s, tx, st, errs)));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                drop(l);
                for r in readers {
                    let _ = r.join();
                }
            })
            .unwrap();
        TcpCollector {
            addr,
            inbox: Inbox {
                rx,
                name: name.to_string(),
            },
            accepted,
            framing_errors,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Stops: closes the listener and every connection (the daemon sees a FIN). Returns the
    /// frames received and not yet read.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.shutdown();
        self.inbox.drain(Duration::ZERO)
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl std::ops::Deref for TcpCollector {
    type Target = Inbox;
    fn deref(&self) -> &Inbox {
        &self.inbox
    }
}

impl Drop for TcpCollector {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A HEP agent sending UDP from a chosen local address.
pub struct Agent {
    /// The socket.
    pub sock: UdpSocket,
}

impl Agent {
    /// Binds `ip:0` (e.g. 127.0.0.2 to be a different sender than 127.0.0.1).
    pub fn bind(ip: &str) -> Self {
        let a: std::net::IpAddr = ip.parse().expect("an IP address");
        let sock = UdpSocket::bind((a, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        Agent { sock }
    }

    /// An agent on 127.0.0.1.
    pub fn new() -> Self {
        Self::bind("127.0.0.1")
    }

    /// Sends one datagram.
    pub fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.sock
            .send_to(bytes, to)
            .unwrap_or_else(|e| panic!("send to {to}: {e}"));
    }

    /// Sends every packet in order, [`SEND_GAP`] apart (a bounded sequence: at most
    /// [`SEND_BOUND`] packets, and it must finish within 30 s).
    pub fn send_all(&self, to: SocketAddr, packets: &[Vec<u8>]) {
        assert!(
            packets.len() <= SEND_BOUND,
            "{} packets: send_all is for bounded test sequences (at most {SEND_BOUND})",
            packets.len()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in packets {
            assert!(Instant::now() < deadline, "send_all took over 30 s");
            self.send(to, p);
            std::thread::sleep(SEND_GAP);
        }
    }

    /// Sends every packet, never more than `window` ahead of what the daemon counted as
    /// received (`received` reads that counter), so no socket buffer overflows.
    pub fn send_paced(
        &self,
        to: SocketAddr,
        packets: &[Vec<u8>],
        window: usize,
        received: impl Fn() -> u64,
    ) {
        let base = received();
        let mut sent = 0usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent < packets.len() {
            let done = received().saturating_sub(base) as usize;
            let room = (done + window).saturating_sub(sent);
            if room == 0 {
                assert!(Instant::now() < deadline, "the daemon stopped receiving");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for p in &packets[sent..(sent + room).min(packets.len())] {
                self.send(to, p);
            }
            sent = (sent + room).min(packets.len());
        }
    }
}

impl Default for Agent {
    fn default() -> Self {
        Self::new()
    }
}

/// A HEP agent over TCP.
pub struct TcpAgent {
    /// The connection.
    pub stream: TcpStream,
}

impl TcpAgent {
    /// Connects to `to`.
    pub fn connect(to: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        stream.set_nodelay(true).unwrap();
        TcpAgent { stream }
    }

    /// Writes bytes in one `write_all`.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the daemon");
        self.stream.flush().unwrap();
    }

    /// Whether the daemon closed the connection within `timeout` (read returns 0 or a
    /// reset).
    pub fn closed_by_peer(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 64];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

/// Waits `quiet` once, then panics if any of the collectors received anything.
pub fn expect_all_silent(inboxes: &[&Inbox], quiet: Duration) {
    std::thread::sleep(quiet);
    for i in inboxes {
        i.expect_silent(Duration::ZERO);
    }
}

/// The packets sorted (to compare multisets).
pub fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// A collector that misbehaves on purpose: its listener has a tiny receive buffer (so
/// what it does not read stays unacknowledged in the sender's socket), and the test decides
/// what each accepted connection does (read some, stop reading, reset).
pub struct RawCollector {
    /// Its address.
    pub addr: SocketAddr,
    listener: TcpListener,
}

impl RawCollector {
    /// Listens on `addr` with a receive buffer of about `rcvbuf` bytes (the kernel doubles
    /// it and enforces a minimum).
    pub fn bind(addr: SocketAddr, rcvbuf: usize) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind TCP {addr}: {e}"));
        let v = rcvbuf as libc::c_int;
        // SAFETY: an int socket option on a valid socket.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const v).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_RCVBUF");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        RawCollector { addr, listener }
    }

    /// The next connection, within `timeout` (panics otherwise).
    pub fn accept(&self, timeout: Duration) -> TcpStream {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    return s;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "no connection within {timeout:?}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// Accepts every pending connection without reading from it; returns them.
    pub fn accept_pending(&self) -> Vec<TcpStream> {
        let mut out = Vec::new();
        while let Ok((s, _)) = self.listener.accept() {
            out.push(s);
        }
        out
    }
}

impl RawCollector {
    /// From now on, accepts every connection and reads (and discards) everything, until the
    /// returned flag is set or `bound` passed. Returns the flag and how many bytes were read.
    pub fn read_everything(self, bound: Duration) -> (Arc<AtomicBool>, Arc<AtomicU64>) {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (st, count) = (stop.clone(), bytes.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + bound;
            while !st.load(Relaxed) && Instant::now() < deadline {
                for mut s in self.accept_pending() {
                    let (st, count) = (st.clone(), count.clone());
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
                        let mut buf = vec![0u8; 64 * 1024];
                        while !st.load(Relaxed) && Instant::now() < deadline {
                            match s.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    count.fetch_add(n as u64, Relaxed);
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        (stop, bytes)
    }
}

/// Bytes received on `s` and not read yet (`FIONREAD`).
pub fn unread_bytes(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer on a valid socket.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::FIONREAD,
            &raw mut n,
        )
    };
    assert_eq!(r, 0, "FIONREAD");
    n as usize
}

/// Closes `s` with a RST (`SO_LINGER` 0): unread bytes are discarded.
pub fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a struct linger socket option on a valid socket.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER");
    drop(s);
}
