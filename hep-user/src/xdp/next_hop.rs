//! The next-hop cache's daemon half (`hep_common::abi::NextHopEntry` has the contract):
//! [`NextHops`] owns the generation the kernel compares its cached next hops against (one
//! map write invalidates every entry on every CPU), and [`NextHops::watch`] moves it on any
//! route, neighbour, link, policy-rule or forwarding change the kernel announces on
//! netlink.
//!
//! The listener does not parse what it reads: any message means "something the next hops
//! depend on may have changed", and so does an overflow of its socket (`ENOBUFS`: messages
//! were lost). The messages one wake-up finds are one invalidation. While no listener
//! runs, the generation stays at `NEXT_HOP_OFF` and the kernel caches nothing.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, Map, MapData};
use hep_common::abi::{NEXT_HOP_GENERATION_MAP, NEXT_HOP_OFF, next_generation};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::Instrument as _;

use super::XdpError;
use super::loader::XdpProgram;

/// Why the generation moved (the `reason` label of
/// `hepfwd_xdp_next_hop_invalidations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// A configuration was installed (destinations may have changed).
    Install,
    /// The kernel announced a change (route, neighbour, link, rule, forwarding).
    Netlink,
    /// The listener's socket overflowed: changes may have been missed.
    Overflow,
}

impl Invalidation {
    /// Every reason, in label order.
    pub const ALL: [Invalidation; 3] = [
        Invalidation::Install,
        Invalidation::Netlink,
        Invalidation::Overflow,
    ];

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Invalidation::Install => "install",
            Invalidation::Netlink => "netlink",
            Invalidation::Overflow => "overflow",
        }
    }
}

/// What can stop the netlink listener.
#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    /// The netlink socket could not be opened, bound or registered.
    #[error("opening a netlink socket for route and neighbour changes: {0}")]
    Socket(#[source] io::Error),
    /// Reading it failed (other than an overflow, which invalidates).
    #[error("reading route and neighbour changes from netlink: {0}")]
    Read(#[source] io::Error),
    /// The generation could not be written.
    #[error("writing the next-hop generation: {0}")]
    Generation(#[source] XdpError),
}

/// The generation map and its value (only this process writes it).
struct State {
    map: Array<MapData, u64>,
    generation: u64,
}

/// The next-hop generation, shared by the daemon's configuration installs and the netlink
/// listener; writes are serialised, so the generation only moves forward.
#[derive(Clone)]
pub struct NextHops {
    state: Arc<Mutex<State>>,
    /// Invalidations by [`Invalidation`] (index order of [`Invalidation::ALL`]).
    counts: Arc<[AtomicU64; 3]>,
}

impl std::fmt::Debug for NextHops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextHops")
            .field("invalidations", &self.invalidations())
            .finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// A handle on the program's next-hop generation (its own file descriptor of the map).
    /// The cache stays off until [`NextHops::watch`] (or [`NextHops::enable`]) turns it on.
    pub fn next_hops(&self) -> Result<NextHops, XdpError> {
        let missing = || XdpError::MissingItem(format!("map {NEXT_HOP_GENERATION_MAP}"));
        // A duplicate of the program's descriptor, not a lookup by id: getting a map's
        // descriptor by id needs CAP_SYS_ADMIN, which the unit does not grant
        // (tests/capabilities.rs).
        let fd = match self.ebpf().map(NEXT_HOP_GENERATION_MAP) {
            Some(Map::Array(data)) => data.fd().as_fd().try_clone_to_owned().map_err(|e| {
                XdpError::MissingItem(format!("map {NEXT_HOP_GENERATION_MAP}: {e}"))
            })?,
            _ => return Err(missing()),
        };
        let map = Array::try_from(Map::Array(MapData::from_fd(fd)?))?;
        let generation = map.get(&0, 0)?;
        Ok(NextHops {
            state: Arc::new(Mutex::new(State { map, generation })),
            counts: Arc::new(Default::default()),
        })
    }
}

impl NextHops {
    /// Turns the cache on (a first non-zero generation) unless it is on; returns the
    /// generation. Only for a caller that invalidates on every change itself (tests).
    pub fn enable(&self) -> Result<u64, XdpError> {
        let mut s = self.lock();
        if s.generation == NEXT_HOP_OFF {
            let g = next_generation(NEXT_HOP_OFF);
            s.map.set(0, g, 0)?;
            s.generation = g;
        }
        Ok(s.generation)
    }

    /// Turns the cache off: the kernel looks every next hop up again.
    pub fn disable(&self) -> Result<(), XdpError> {
        let mut s = self.lock();
        s.map.set(0, NEXT_HOP_OFF, 0)?;
        s.generation = NEXT_HOP_OFF;
        Ok(())
    }

    /// Moves the generation on (every cached next hop becomes stale), counted under `why`;
    /// returns the new generation. Nothing to do while the cache is off.
    pub fn invalidate(&self, why: Invalidation) -> Result<u64, XdpError> {
        let mut s = self.lock();
        if s.generation == NEXT_HOP_OFF {
            return Ok(NEXT_HOP_OFF);
        }
        let g = next_generation(s.generation);
        s.map.set(0, g, 0)?;
        s.generation = g;
        self.counts[why as usize].fetch_add(1, Relaxed);
        tracing::debug!(reason = why.name(), generation = g, "next hops invalidated");
        Ok(g)
    }

    /// The current generation (`NEXT_HOP_OFF`: the cache is off).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Invalidations so far, by reason.
    pub fn invalidations(&self) -> Vec<(&'static str, u64)> {
        Invalidation::ALL
            .iter()
            .map(|w| (w.name(), self.counts[*w as usize].load(Relaxed)))
            .collect()
    }

    /// Opens the netlink listener, turns the cache on, and spawns the task that
    /// invalidates on every change (in the calling thread's network namespace, inside a
    /// tokio runtime). The socket is subscribed before the cache is on, so no change is
    /// missed. If the listener later fails, it turns the cache off. Dropping the returned
    /// [`Watch`] stops it (the cache stays as it is: drop the program with it).
    pub fn watch(&self) -> Result<Watch, NextHopError> {
        let fd = open_socket().map_err(NextHopError::Socket)?;
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns it from here on: the
        // descriptor stays open and the same for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| NextHopError::Socket(e.into_parts().1))?;
        let g = self.enable().map_err(NextHopError::Generation)?;
        tracing::info!(
            generation = g,
            "next-hop cache on: invalidated on route, neighbour and link changes"
        );
        let me = self.clone();
        let task = tokio::spawn(
            async move {
                let Err(e) = listen(fd, |why| {
                    me.invalidate(why)
                        .map(drop)
                        .map_err(NextHopError::Generation)
                })
                .await;
                tracing::error!(error = %e, "the netlink listener stopped: the next-hop cache is off, every packet is looked up");
                if let Err(e) = me.disable() {
                    tracing::error!(error = %e, "turning the next-hop cache off failed");
                }
            }
            .instrument(tracing::info_span!("next_hop_watch")),
        );
        Ok(Watch(task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            // A panic while holding it cannot leave the state half-written (two plain
            // fields, the map written first).
            Err(p) => p.into_inner(),
        }
    }
}

/// Reads `fd` until it fails; calls `invalidate` once per wake-up that read anything (or
/// found the socket overflowed), after at most [`BATCH`] messages.
async fn listen(
    fd: AsyncFd<OwnedFd>,
    mut invalidate: impl FnMut(Invalidation) -> Result<(), NextHopError>,
) -> Result<std::convert::Infallible, NextHopError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut guard = fd.readable().await.map_err(NextHopError::Read)?;
        let mut why = None;
        for _ in 0..BATCH {
            match guard.try_io(|inner| recv(inner.get_ref(), &mut buf)) {
                Ok(Ok(_)) => {
                    why = why.or(Some(Invalidation::Netlink));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("the netlink socket overflowed: invalidating every next hop");
                    why = Some(Invalidation::Overflow);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(NextHopError::Read(e)),
                // Drained: readiness cleared.
                Err(_would_block) => break,
            }
        }
        if let Some(why) = why {
            invalidate(why)?;
        }
    }
}

/// Messages read per wake-up before the generation moves (a storm of changes still
/// invalidates as it goes).
const BATCH: usize = 256;

/// The running netlink listener; dropping it stops the task.
#[derive(Debug)]
pub struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `NETLINK_ADD_MEMBERSHIP` (`linux/netlink.h`).
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;

/// The rtnetlink groups whose messages can change a `bpf_fib_lookup` answer.
const GROUPS: [libc::c_uint; 8] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_NEIGH,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV4_RULE,
    libc::RTNLGRP_IPV6_ROUTE,
    libc::RTNLGRP_IPV6_RULE,
    libc::RTNLGRP_IPV4_NETCONF,
    libc::RTNLGRP_IPV6_NETCONF,
];

/// Receive buffer asked for (the kernel may cap it at `net.core.rmem_max`); an overflow
/// is handled anyway.
const RCVBUF: libc::c_int = 1 << 20;

/// A non-blocking `NETLINK_ROUTE` socket subscribed to [`GROUPS`].
fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid `sockaddr_nl` (the kernel picks the port id).
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `sa` is a valid `sockaddr_nl` of the size given, for the call's duration.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    for group in GROUPS {
        setsockopt(&fd, libc::SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)?;
    }
    // Best effort: the default suffices unless changes come in storms.
    let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    Ok(fd)
}

fn setsockopt<T: Copy>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: T,
) -> io::Result<()> {
    // SAFETY: `v` is a plain value of the size given, for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const v).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One message (its bytes are not needed).
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length for the call's duration.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_subscribes_without_privileges_and_reads_nothing_when_idle() {
        // Subscribing to rtnetlink multicast groups needs no capability.
        let fd = open_socket().expect("a netlink socket");
        let mut buf = [0u8; 256];
        match recv(&fd, &mut buf) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
            // A change on the host may have come in meanwhile: that is a message too.
            Ok(n) => assert!(n >= 16, "a netlink header at least, got {n} bytes"),
        }
    }

    /// Changes in a namespace of its own (routes added on `lo`) reach the listener as one
    /// `netlink` invalidation; a storm of them into a socket with the smallest receive
    /// buffer overflows it, and that is an `overflow` invalidation.
    #[test]
    fn changes_invalidate_and_an_overflow_does_too() {
        use hepfwd_harness::netns::Netns;
        let test = "changes_invalidate_and_an_overflow_does_too";
        if !hepfwd_harness::privileged::available(test) {
            return;
        }
        let ns = Netns::create(format!("hfnh-ovf-{}", std::process::id()));
        ns.set_up(&["lo"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let first = |fd: OwnedFd, routes: std::ops::Range<u32>| -> Invalidation {
            let batch: String = routes
                .map(|i| {
                    format!(
                        "route add 198.18.{}.{}/32 dev lo\n",
                        100 + i / 250,
                        i % 250 + 1
                    )
                })
                .collect();
            let file = std::env::temp_dir().join(format!("{}.batch", ns.name()));
            std::fs::write(&file, batch).expect("write the batch");
            ns.ip(&["-batch", &file.display().to_string()]);
            let _ = std::fs::remove_file(&file);
            rt.block_on(async {
                // SAFETY: `fd` is moved into the `AsyncFd`, which owns it from here on.
                let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .expect("register");
                let mut got = None;
                let r = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    listen(fd, |why| {
                        got = Some(why);
                        // Stop at the first invalidation.
                        Err(NextHopError::Read(io::Error::other("done")))
                    }),
                )
                .await;
                assert!(r.is_ok(), "no invalidation within 5 s");
                got.expect("an invalidation")
            })
        };
        let fd = ns.within(|| open_socket().expect("a netlink socket"));
        assert_eq!(first(fd, 0..3), Invalidation::Netlink);
        let fd = ns.within(|| open_socket().expect("a netlink socket"));
        // The kernel rounds up to its minimum (a few KiB): far less than the storm.
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 1 as libc::c_int).expect("rcvbuf");
        assert_eq!(first(fd, 3..2003), Invalidation::Overflow);
    }

    #[test]
    fn reasons_have_distinct_labels_in_index_order() {
        for (i, w) in Invalidation::ALL.iter().enumerate() {
            assert_eq!(*w as usize, i);
        }
        assert_eq!(
            Invalidation::ALL.map(Invalidation::name),
            ["install", "netlink", "overflow"]
        );
    }
}
