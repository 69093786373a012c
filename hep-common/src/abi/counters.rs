//! The per-CPU counters of both programs, as the loader reads them.
//!
//! The program counts into the per-CPU array [`super::COUNTERS_MAP`], indexed by [`XdpCounter`];
//! the loader sums the per-CPU slots. Invariants, for every packet the program sees:
//!
//! - [`XdpCounter::Received`] is incremented once;
//! - exactly one *outcome* is incremented ([`XdpCounter::OUTCOMES`]): why the packet is not
//!   HEP, or which kind of HEP it is;
//! - exactly one *action* is incremented ([`XdpCounter::ACTIONS`]: passed to the stack,
//!   dropped, steered by XDP, or handed to the TC mirror);
//! - [`XdpCounter::HepCandidate`] is incremented for every UDP datagram to a listener port
//!   (then one of `HepV3`, `HepLegacy`, `HepInvalid` is its outcome);
//! - every `HepV3` packet gets exactly one *decision* ([`XdpCounter::DECISIONS`]).
//!
//! So `Received == Σ OUTCOMES == Σ ACTIONS`, `HepCandidate == HepV3 + HepLegacy + HepInvalid`
//! and `HepV3 == Σ DECISIONS`.

/// Index of one counter in [`super::COUNTERS_MAP`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdpCounter {
    /// Every packet the program ran on.
    Received = 0,
    /// Outcome: not IPv4/IPv6 (after up to two VLAN tags), e.g. ARP, or three VLAN tags.
    NotIp = 1,
    /// Outcome: IP, but not UDP (TCP, ICMP, ...).
    NotUdp = 2,
    /// Outcome: UDP to an address and port no listener takes (before tables are
    /// installed: to a port other than the HEP port).
    OtherPort = 3,
    /// Outcome: an IPv4 UDP fragment (MF set or offset ≠ 0): only the daemon can reassemble.
    Fragment = 4,
    /// Outcome: IPv6 with an extension header (hop-by-hop, routing, fragment, ...) first.
    Ipv6ExtHeader = 5,
    /// Outcome: the frame ends before the headers it announces (Ethernet, VLAN, IP, UDP).
    Truncated = 6,
    /// Outcome: a header is inconsistent (IPv4 IHL < 5, UDP length < 8).
    Malformed = 7,
    /// UDP to the HEP port (not an outcome: followed by `HepV3`, `HepLegacy` or `HepInvalid`).
    HepCandidate = 8,
    /// Outcome: a valid HEPv3 packet (the same walker as userspace: `walker::validate`).
    HepV3 = 9,
    /// Outcome: a HEPv1/v2 packet (by its first 4 bytes).
    HepLegacy = 10,
    /// Outcome: to the HEP port, but not valid HEP.
    HepInvalid = 11,
    /// Action: `XDP_PASS` (the packet goes on to the kernel stack and the daemon).
    Passed = 12,
    /// Action: `XDP_DROP` (a decision below says why).
    Dropped = 13,
    /// Action and decision: rewritten and sent by XDP (`XDP_TX` or a redirect).
    Steered = 14,
    /// Action and decision: passed with the route in the packet metadata, for the TC
    /// program to copy to every destination (without TC, the daemon mirrors it).
    Mirrored = 15,
    /// Decision (pass): the HEP packet is larger than the kernel's scratch buffer.
    TooLarge = 16,
    /// Decision (drop): the listener's auth key (chunk 0x000e) is missing or different.
    AuthFailed = 17,
    /// Decision (drop): the sender is not in the listener's allow list.
    NotAllowed = 18,
    /// Decision (pass): a route only userspace can evaluate came first.
    PassOpaque = 19,
    /// Decision (pass): the route that matched needs userspace for its action.
    PassAction = 20,
    /// Decision (pass): no route matched (userspace counts it as unrouted).
    PassNoRoute = 21,
    /// Decision (drop): a route with `action = "drop"`.
    RouteDrop = 22,
    /// Decision (drop): left out by a route's call sampling.
    SampledOut = 23,
    /// Decision (pass, unmodified): a steer the kernel could not complete (no neighbour
    /// entry yet, no route, packet too big for the egress MTU); the daemon sends it.
    SteerFallback = 24,
    /// Decision (pass): the kernel cannot evaluate this listener's checks (an auth key
    /// longer than it compares), so userspace does.
    PassListener = 25,
    /// Decision (pass): the route that matched needs the correlation key, which lies in a
    /// compressed payload (chunk 0x0010) that only userspace inflates.
    PassKey = 26,
    /// A next hop answered by the next-hop cache (no `bpf_fib_lookup`); per steered packet
    /// or mirror copy, not an outcome, action or decision.
    NextHopHit = 27,
    /// A next hop looked up with `bpf_fib_lookup` (the cache had no fresh entry for it, or
    /// is off); per steered packet or mirror copy, whatever the lookup answered.
    NextHopMiss = 28,
    /// Decision (pass, unmodified): the route (or its destination) rewrites chunks, and
    /// one of them cannot be written in place in this packet (absent, repeated, or of
    /// another length); the daemon rewrites and sends it.
    PassRewrite = 29,
    /// Decision (drop): writing an in-place edit into the frame failed after its headers
    /// were rewritten (not expected: the walk found every chunk inside the payload).
    RewriteFailed = 30,
}

impl XdpCounter {
    /// Number of counters, the size of [`super::COUNTERS_MAP`].
    pub const COUNT: usize = 31;

    /// Every counter, in index order.
    pub const ALL: [XdpCounter; Self::COUNT] = [
        XdpCounter::Received,
        XdpCounter::NotIp,
        XdpCounter::NotUdp,
        XdpCounter::OtherPort,
        XdpCounter::Fragment,
        XdpCounter::Ipv6ExtHeader,
        XdpCounter::Truncated,
        XdpCounter::Malformed,
        XdpCounter::HepCandidate,
        XdpCounter::HepV3,
        XdpCounter::HepLegacy,
        XdpCounter::HepInvalid,
        XdpCounter::Passed,
        XdpCounter::Dropped,
        XdpCounter::Steered,
        XdpCounter::Mirrored,
        XdpCounter::TooLarge,
        XdpCounter::AuthFailed,
        XdpCounter::NotAllowed,
        XdpCounter::PassOpaque,
        XdpCounter::PassAction,
        XdpCounter::PassNoRoute,
        XdpCounter::RouteDrop,
        XdpCounter::SampledOut,
        XdpCounter::SteerFallback,
        XdpCounter::PassListener,
        XdpCounter::PassKey,
        XdpCounter::NextHopHit,
        XdpCounter::NextHopMiss,
        XdpCounter::PassRewrite,
        XdpCounter::RewriteFailed,
    ];

    /// The outcomes: exactly one of them per packet.
    pub const OUTCOMES: [XdpCounter; 10] = [
        XdpCounter::NotIp,
        XdpCounter::NotUdp,
        XdpCounter::OtherPort,
        XdpCounter::Fragment,
        XdpCounter::Ipv6ExtHeader,
        XdpCounter::Truncated,
        XdpCounter::Malformed,
        XdpCounter::HepV3,
        XdpCounter::HepLegacy,
        XdpCounter::HepInvalid,
    ];

    /// The actions: exactly one of them per packet.
    pub const ACTIONS: [XdpCounter; 4] = [
        XdpCounter::Passed,
        XdpCounter::Dropped,
        XdpCounter::Steered,
        XdpCounter::Mirrored,
    ];

    /// The decisions: exactly one per valid HEPv3 packet.
    pub const DECISIONS: [XdpCounter; 15] = [
        XdpCounter::TooLarge,
        XdpCounter::PassListener,
        XdpCounter::AuthFailed,
        XdpCounter::NotAllowed,
        XdpCounter::PassOpaque,
        XdpCounter::PassAction,
        XdpCounter::PassKey,
        XdpCounter::PassNoRoute,
        XdpCounter::RouteDrop,
        XdpCounter::SampledOut,
        XdpCounter::SteerFallback,
        XdpCounter::PassRewrite,
        XdpCounter::RewriteFailed,
        XdpCounter::Steered,
        XdpCounter::Mirrored,
    ];

    /// The map index.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The counter at `index`, `None` past the end.
    pub const fn from_index(index: usize) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }

    /// A stable snake_case name, for metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            XdpCounter::Received => "received",
            XdpCounter::NotIp => "not_ip",
            XdpCounter::NotUdp => "not_udp",
            XdpCounter::OtherPort => "other_port",
            XdpCounter::Fragment => "fragment",
            XdpCounter::Ipv6ExtHeader => "ipv6_ext",
            XdpCounter::Truncated => "truncated",
            XdpCounter::Malformed => "malformed",
            XdpCounter::HepCandidate => "hep_candidate",
            XdpCounter::HepV3 => "hep_v3",
            XdpCounter::HepLegacy => "hep_legacy",
            XdpCounter::HepInvalid => "hep_invalid",
            XdpCounter::Passed => "passed",
            XdpCounter::Dropped => "dropped",
            XdpCounter::Steered => "steered",
            XdpCounter::Mirrored => "mirrored",
            XdpCounter::TooLarge => "too_large",
            XdpCounter::AuthFailed => "auth_failed",
            XdpCounter::NotAllowed => "not_allowed",
            XdpCounter::PassOpaque => "pass_opaque",
            XdpCounter::PassAction => "pass_action",
            XdpCounter::PassNoRoute => "pass_no_route",
            XdpCounter::RouteDrop => "route_drop",
            XdpCounter::SampledOut => "sampled_out",
            XdpCounter::SteerFallback => "steer_fallback",
            XdpCounter::PassListener => "pass_listener",
            XdpCounter::PassRewrite => "pass_rewrite",
            XdpCounter::RewriteFailed => "rewrite_failed",
            XdpCounter::PassKey => "pass_key",
            XdpCounter::NextHopHit => "next_hop_hit",
            XdpCounter::NextHopMiss => "next_hop_miss",
        }
    }
}

/// Per-route counters, `ROUTE_COUNTERS_MAP[slot * RouteCounter::COUNT + counter]`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCounter {
    /// Packets the route took in the kernel.
    Matched = 0,
    /// Dropped by its drop action.
    Dropped = 1,
    /// Left out by sampling.
    SampledOut = 2,
    /// Steered.
    Steered = 3,
    /// Mirrored.
    Mirrored = 4,
    /// Passed to userspace by this route.
    Passed = 5,
}

impl RouteCounter {
    /// Counters per route slot.
    pub const COUNT: usize = 6;
}

/// Per-destination counters, `DEST_COUNTERS_MAP[slot * DestCounter::COUNT + counter]`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestCounter {
    /// Packets sent by XDP (steer) or TC (mirror).
    Sent = 0,
    /// Packets that could not be sent from the kernel (no neighbour yet...), passed instead.
    Fallback = 1,
    /// Mirror copies the kernel could not send once others had gone out (the egress
    /// interface refused the clone, or its headers could not be written): lost, not passed.
    Failed = 2,
}

impl DestCounter {
    /// Counters per destination slot.
    pub const COUNT: usize = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, c) in XdpCounter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            assert_eq!(XdpCounter::from_index(i), Some(*c));
        }
        assert_eq!(XdpCounter::from_index(XdpCounter::COUNT), None);
        for a in XdpCounter::ALL {
            for b in XdpCounter::ALL {
                assert!(a == b || a.name() != b.name());
            }
        }
    }

    #[test]
    fn outcomes_and_actions_are_disjoint() {
        for o in XdpCounter::OUTCOMES {
            assert!(!XdpCounter::ACTIONS.contains(&o));
            assert_ne!(o, XdpCounter::Received);
            assert_ne!(o, XdpCounter::HepCandidate);
        }
    }
}
