//! Types shared by the XDP program (`hep-ebpf`) and its loader (`hep-user/src/xdp`).
//!
//! The program counts into the per-CPU array [`COUNTERS_MAP`], indexed by [`XdpCounter`];
//! the loader sums the per-CPU slots. Invariants, for every packet the program sees:
//!
//! - [`XdpCounter::Received`] is incremented once;
//! - exactly one *outcome* is incremented ([`XdpCounter::OUTCOMES`]): why the packet is not
//!   HEP, or which kind of HEP it is;
//! - exactly one *action* is incremented ([`XdpCounter::ACTIONS`]; today only
//!   [`XdpCounter::Passed`]);
//! - [`XdpCounter::HepCandidate`] is incremented for every UDP datagram to the HEP port
//!   (then one of `HepV3`, `HepLegacy`, `HepInvalid` is its outcome).
//!
//! So `Received == Σ OUTCOMES == Σ ACTIONS` and `HepCandidate == HepV3 + HepLegacy + HepInvalid`.

/// Name of the `PerCpuArray<u64>` of counters in the XDP object.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the `Global<u16>` holding the HEP UDP port (host byte order) in the XDP object.
pub const HEP_PORT_GLOBAL: &str = "HEP_PORT";
/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "hep_xdp";
/// The default HEP port (`HEP_PORT` when userspace does not override it).
pub const DEFAULT_HEP_PORT: u16 = 9060;

/// Index of one counter in [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdpCounter {
    /// Every packet the program ran on.
    Received = 0,
    /// Outcome: not IPv4/IPv6 (after up to two VLAN tags), e.g. ARP, or three VLAN tags.
    NotIp = 1,
    /// Outcome: IP, but not UDP (TCP, ICMP, ...).
    NotUdp = 2,
    /// Outcome: UDP to a port other than the HEP port.
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
}

impl XdpCounter {
    /// Number of counters, the size of [`COUNTERS_MAP`].
    pub const COUNT: usize = 13;

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
    pub const ACTIONS: [XdpCounter; 1] = [XdpCounter::Passed];

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
        }
    }
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
