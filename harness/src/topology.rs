//! The namespace topology of the end-to-end tests of the data plane:
//!
//! ```text
//!   snd ns                     fwd ns (hepfwd)                       col ns
//!   eth0 198.18.1.1/24  ──  in0 198.18.1.2/24   out0 198.18.2.1/24 ── eth0 198.18.2.2/24
//!        198.18.1.9/24      (XDP attaches here)                           198.18.2.3/24
//! ```
//!
//! Every test builds its own three namespaces (names carry the test's tag, the pid and a
//! sequence number, so parallel tests and test processes never collide), deleted when the
//! [`Topology`] is dropped, also when the test fails. Interface names are fixed: they live
//! inside the namespaces. Test traffic stays inside them (198.18.0.0/15).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::netns::{Netns, VethPair, unique_base};

/// The sender's address (snd's `eth0`).
pub const SND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// A second sender address on snd's `eth0` (for allow lists that leave it out).
pub const SND2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);
/// fwd's address toward the sender (`in0`): where hepfwd listens.
pub const FWD_IN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// fwd's address toward the collectors (`out0`).
pub const FWD_OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// Collector address A (col's `eth0`).
pub const COL_A: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// Collector address B (col's `eth0` too).
pub const COL_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);
/// The HEP listener of the tests: `198.18.1.2:9060` in fwd.
pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(FWD_IN), 9060);
/// fwd's interface toward snd (the one XDP attaches to).
pub const IF_IN: &str = "in0";
/// fwd's interface toward col (the XDP redirect target).
pub const IF_OUT: &str = "out0";
/// The interface of snd and of col (each the peer of one of fwd's).
pub const IF_PEER: &str = "eth0";
/// The admin server of a daemon started in fwd.
pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

/// How long [`Topology::warm_neighbours`] waits for ARP.
const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(5);

/// One of the three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// The HEP agent's side.
    Snd,
    /// The forwarder's (hepfwd's).
    Fwd,
    /// The collectors'.
    Col,
}

/// The three namespaces and their links; all deleted on drop.
#[derive(Debug)]
pub struct Topology {
    /// `[snd, fwd, col]`.
    namespaces: [Netns; 3],
}

impl Topology {
    /// Builds the topology for the test tagged `tag` (keep it short: it is part of the
    /// namespace names). Panics (after deleting what it made) when a step fails.
    pub fn new(tag: &str) -> Topology {
        let base = unique_base(tag);
        // Each namespace is owned as soon as it exists, so a failing step cleans up.
        let topology = Topology {
            namespaces: ["snd", "fwd", "col"].map(|role| Netns::create(format!("{base}-{role}"))),
        };
        let (snd, fwd, col) = (
            topology.namespace(Ns::Snd),
            topology.namespace(Ns::Fwd),
            topology.namespace(Ns::Col),
        );
        fwd.add_veth(&VethPair::new(IF_IN, IF_PEER).peer_in(snd));
        fwd.add_veth(&VethPair::new(IF_OUT, IF_PEER).peer_in(col));
        snd.add_address(IF_PEER, &format!("{SND}/24"));
        snd.add_address(IF_PEER, &format!("{SND2}/24"));
        fwd.add_address(IF_IN, &format!("{FWD_IN}/24"));
        fwd.add_address(IF_OUT, &format!("{FWD_OUT}/24"));
        col.add_address(IF_PEER, &format!("{COL_A}/24"));
        col.add_address(IF_PEER, &format!("{COL_B}/24"));
        snd.set_up(&["lo", IF_PEER]);
        fwd.set_up(&["lo", IF_IN, IF_OUT]);
        col.set_up(&["lo", IF_PEER]);
        snd.default_route(IpAddr::V4(FWD_IN));
        col.default_route(IpAddr::V4(FWD_OUT));
        // bpf_fib_lookup answers FWD_DISABLED unless the ingress device forwards.
        for key in ["all", "default", IF_IN, IF_OUT] {
            fwd.sysctl(&format!("net.ipv4.conf.{key}.forwarding=1"));
        }
        // A veth drops XDP_REDIRECTed / XDP_TXed frames unless its peer runs XDP or has
        // GRO on (XDP.md, "a minimal steer, verified").
        for peer in [snd, col] {
            peer.exec("ethtool", &["-K", IF_PEER, "gro", "on"]);
        }
        topology
    }

    /// The namespace `ns`.
    pub fn namespace(&self, ns: Ns) -> &Netns {
        &self.namespaces[ns as usize]
    }

    /// The `ip netns` name of `ns`.
    pub fn name(&self, ns: Ns) -> &str {
        self.namespace(ns).name()
    }

    /// Runs `work` on a thread that entered `ns` and returns its result. Sockets it opens
    /// stay in `ns` wherever they are used later.
    pub fn within<R: Send>(&self, ns: Ns, work: impl FnOnce() -> R + Send) -> R {
        self.namespace(ns).within(work)
    }

    /// `ip -n <ns> ARGS`, asserting success; its stdout.
    pub fn ip(&self, ns: Ns, args: &[&str]) -> String {
        self.namespace(ns).ip(args)
    }

    /// `ip netns exec <ns> PROGRAM ARGS`, asserting success; its stdout.
    pub fn exec(&self, ns: Ns, program: &str, args: &[&str]) -> String {
        self.namespace(ns).exec(program, args)
    }

    /// A UDP socket bound to `address` in `ns`.
    pub fn udp_socket(&self, ns: Ns, address: SocketAddr) -> UdpSocket {
        self.within(ns, || {
            UdpSocket::bind(address)
                .unwrap_or_else(|error| panic!("bind UDP {address} in {ns:?}: {error}"))
        })
    }

    /// Resolves the neighbours the data plane needs before anything is measured: snd →
    /// fwd (`in0`), and fwd → both collector addresses (the kernel passes a packet whose next
    /// hop has no neighbour entry up to the daemon instead of steering it). One UDP datagram
    /// to the discard port each (the collectors' ports see nothing), then waits until the
    /// entries are valid. Panics after [`NEIGHBOUR_TIMEOUT`].
    pub fn warm_neighbours(&self) {
        let deadline = Instant::now() + NEIGHBOUR_TIMEOUT;
        self.namespace(Ns::Snd)
            .warm_neighbours(IpAddr::V4(SND), &[IpAddr::V4(FWD_IN)], deadline);
        self.namespace(Ns::Fwd).warm_neighbours(
            IpAddr::V4(FWD_OUT),
            &[IpAddr::V4(COL_A), IpAddr::V4(COL_B)],
            deadline,
        );
    }

    /// Whether `ns` has a usable (reachable, stale, delay, probe or permanent) neighbour
    /// entry for `address`.
    pub fn neighbour_valid(&self, ns: Ns, address: Ipv4Addr) -> bool {
        self.namespace(ns).neighbour_valid(IpAddr::V4(address))
    }

    /// Whether an XDP program is attached to `device` in `ns` (`ip -d link` shows
    /// `prog/xdp`).
    pub fn xdp_attached(&self, ns: Ns, device: &str) -> bool {
        self.namespace(ns).xdp_attached(device)
    }
}
