//! Batched UDP system calls: `recvmmsg` and `sendmmsg` (Linux), so one system call moves
//! up to a batch of datagrams.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

/// The socket address the kernel wrote into a `sockaddr_storage`.
fn storage_to_addr(st: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match st.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is big enough.
            let sin = unsafe { &*(std::ptr::from_ref(st).cast::<libc::sockaddr_in>()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(std::ptr::from_ref(st).cast::<libc::sockaddr_in6>()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Buffers for receiving a batch of datagrams.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    addr_lens: Vec<libc::socklen_t>,
    truncated: Vec<bool>,
    filled: usize,
}

impl RecvBatch {
    /// Room for `n` datagrams of up to 64 KiB.
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        RecvBatch {
            bufs: (0..n)
                .map(|_| vec![0u8; MAX_DATAGRAM].into_boxed_slice())
                .collect(),
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            lens: vec![0; n],
            addr_lens: vec![0; n],
            truncated: vec![false; n],
            filled: 0,
        }
    }

    /// Most datagrams one receive can take.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Number of datagrams of the last receive.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Datagram `i` of the last receive: sender, bytes, and whether it was cut (too big).
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8], bool)> {
        if i >= self.filled {
            return None;
        }
        let addr = storage_to_addr(&self.addrs[i], self.addr_lens[i])?;
        Some((addr, &self.bufs[i][..self.lens[i]], self.truncated[i]))
    }

    /// Receives up to a batch: blocks (up to the socket's receive timeout) for the first
    /// datagram, then takes what is already queued.
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.recv_fd(sock.as_raw_fd())
    }

    fn recv_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..n)
            .map(|i| {
                // SAFETY: mmsghdr is plain data; all-zero is valid, then the fields are set.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &raw mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: every pointer in `msgs` points into buffers that outlive the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.filled = 0;
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for (i, m) in msgs.iter().enumerate().take(r) {
            self.lens[i] = (m.msg_len as usize).min(MAX_DATAGRAM);
            self.addr_lens[i] = m.msg_hdr.msg_namelen;
            self.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.filled = r;
        Ok(r)
    }
}

/// Sends datagrams on a connected socket with `sendmmsg`. Returns how many were sent
/// before the first error, and that error if there was one.
pub fn send_batch(sock: &impl AsRawFd, packets: &[&[u8]]) -> (usize, Option<io::Error>) {
    let fd = sock.as_raw_fd();
    let mut sent = 0;
    while sent < packets.len() {
        let rest = &packets[sent..];
        let chunk = rest.len().min(1024);
        let mut iovs: Vec<libc::iovec> = rest[..chunk]
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: plain data, then the iovec is set.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: the iovecs point into `packets`, alive for the call; the kernel only reads.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), chunk as libc::c_uint, 0) };
        if r < 0 {
            return (sent, Some(io::Error::last_os_error()));
        }
        if r == 0 {
            return (sent, Some(io::Error::from(io::ErrorKind::WriteZero)));
        }
        sent += r as usize;
    }
    (sent, None)
}

/// A UDP socket for receiving: SO_REUSEPORT (one per worker), a large receive buffer
/// (forced as root), and a receive timeout so workers notice shutdown and reloads.
pub fn bind_reuseport(
    addr: SocketAddr,
    recv_buffer: usize,
    timeout: std::time::Duration,
) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // Dual-stack on [::], as the operator would expect from "[::]:9060".
        let _ = s.set_only_v6(false);
    }
    if !force_recv_buffer(&s, recv_buffer) {
        let _ = s.set_recv_buffer_size(recv_buffer);
    }
    s.set_read_timeout(Some(timeout))?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// SO_RCVBUFFORCE (root): a receive buffer above `net.core.rmem_max`.
fn force_recv_buffer(s: &impl AsRawFd, bytes: usize) -> bool {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: a plain int option on a valid socket.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// A UDP socket connected to a destination, for sending (ICMP errors come back on it).
pub fn connect_sender(
    dest: SocketAddr,
    send_timeout: std::time::Duration,
) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_write_timeout(Some(send_timeout))?;
    s.connect(&dest.into())?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batches_round_trip_on_loopback() {
        let rx = bind_reuseport(
            "127.0.0.1:0".parse().unwrap(),
            1 << 20,
            Duration::from_millis(500),
        )
        .unwrap();
        let to = rx.local_addr().unwrap();
        let tx = connect_sender(to, Duration::from_millis(100)).unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let (n, err) = send_batch(&tx, &refs);
        assert_eq!((n, err.is_none()), (10, true));
        let mut b = RecvBatch::new(4);
        let mut got = Vec::new();
        while got.len() < 10 {
            let k = b.recv(&rx).unwrap();
            assert!((1..=4).contains(&k));
            for i in 0..k {
                let (from, data, cut) = b.get(i).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                assert!(!cut);
                got.push(data.to_vec());
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn icmp_unreachable_is_reported_on_the_connected_socket() {
        // A port with nobody listening: bind, learn the port, close.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let tx = connect_sender(port, Duration::from_millis(100)).unwrap();
        let (n, _) = send_batch(&tx, &[b"one"]);
        assert_eq!(n, 1);
        std::thread::sleep(Duration::from_millis(50));
        let (n2, err) = send_batch(&tx, &[b"two"]);
        assert_eq!(n2, 0);
        assert_eq!(err.unwrap().kind(), io::ErrorKind::ConnectionRefused);
    }
}
