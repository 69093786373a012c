//! The lab of the XDP tests that need the kernel's routing answers (`bpf_fib_lookup`): one
//! namespace with two veth pairs at fixed interface indices and MACs, forwarding on,
//! permanent neighbour entries for the collectors. The program is test-run on frames
//! "received" on `in0` from a thread inside the namespace; with [`Lab::with_ends`] the peers
//! live in a sender and a collector namespace, for real traffic. Every namespace is deleted
//! on drop, also when the test fails.

use std::net::{IpAddr, Ipv4Addr};

use crate::netns::{Netns, VethPair, unique_base};

/// `in0`'s interface index (frames arrive here).
pub const IN_IFINDEX: u32 = 50;
/// `out0`'s interface index (toward the collectors).
pub const OUT_IFINDEX: u32 = 52;
/// `in0`'s MAC.
pub const IN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa0];
/// `out0`'s MAC.
pub const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];
/// The collector namespace's MAC (on `out1`; both collector addresses are there).
pub const COLLECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

/// Neighbours with permanent entries: (address, MAC, device).
pub const NEIGHBOURS: &[(&str, [u8; 6], &str)] = &[
    ("198.18.2.2", [0x02, 0, 0, 0, 0x02, 0x02], "out0"),
    ("198.18.2.4", [0x02, 0, 0, 0, 0x02, 0x04], "out0"),
    ("198.18.1.5", [0x02, 0, 0, 0, 0x01, 0x05], "in0"),
    ("fd00:18:2::2", [0x02, 0, 0, 0, 0x02, 0x22], "out0"),
];

/// The MAC of lab neighbour `address`; panics for an address that is not one.
pub fn neighbour_mac(address: &str) -> [u8; 6] {
    NEIGHBOURS
        .iter()
        .find(|neighbour| neighbour.0 == address)
        .map(|neighbour| neighbour.1)
        .unwrap_or_else(|| panic!("{address} is not a lab neighbour"))
}

/// The sender and collector namespaces of [`Lab::with_ends`].
#[derive(Debug)]
struct Ends {
    /// Holds `in1` (198.18.1.1/24).
    sender: Netns,
    /// Holds `out1` (198.18.2.2/24 and 198.18.2.4/24).
    collector: Netns,
}

/// The lab namespace (and, with [`Lab::with_ends`], a sender and a collector namespace).
#[derive(Debug)]
pub struct Lab {
    /// Dropped first: the peers' namespaces.
    ends: Option<Ends>,
    /// The lab namespace itself.
    namespace: Netns,
}

impl Lab {
    /// Builds the namespace `hepfwd-<tag>-<pid>-<seq>`:
    /// `in0` (198.18.1.2/24, fd00:18:1::2/64) ↔ `in1`, `out0` (198.18.2.1/24,
    /// fd00:18:2::1/64) ↔ `out1`, forwarding on, [`NEIGHBOURS`] permanent.
    pub fn new(tag: &str) -> Lab {
        let namespace = Netns::create(unique_base(tag));
        namespace.add_veth(&VethPair::new("in0", "in1").indices(IN_IFINDEX, IN_IFINDEX + 1));
        namespace.add_veth(&VethPair::new("out0", "out1").indices(OUT_IFINDEX, OUT_IFINDEX + 1));
        namespace.set_mac("in0", IN_MAC);
        namespace.set_mac("out0", OUT_MAC);
        namespace.set_up(&["lo", "in0", "in1", "out0", "out1"]);
        namespace.add_address("in0", "198.18.1.2/24");
        namespace.add_address("out0", "198.18.2.1/24");
        namespace.add_address("in0", "fd00:18:1::2/64");
        namespace.add_address("out0", "fd00:18:2::1/64");
        for (address, mac, device) in NEIGHBOURS {
            namespace.permanent_neighbour(address, *mac, device);
        }
        for setting in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.conf.in0.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            namespace.sysctl(setting);
        }
        Lab {
            ends: None,
            namespace,
        }
    }

    /// [`Lab::new`], with `in1` moved to a sender namespace (`<name>-snd`, 198.18.1.1/24,
    /// default route via `in0`) and `out1` to a collector namespace (`<name>-col`,
    /// 198.18.2.2/24 and 198.18.2.4/24, MAC [`COLLECTOR_MAC`], GRO on so that it accepts
    /// XDP_REDIRECTed frames, route back via `out0`); the lab's neighbour entries for both
    /// collector addresses point at that MAC.
    pub fn with_ends(tag: &str) -> Lab {
        let mut lab = Lab::new(tag);
        let sender = Netns::create(format!("{}-snd", lab.namespace.name()));
        let collector = Netns::create(format!("{}-col", lab.namespace.name()));
        lab.namespace.move_link("in1", &sender);
        lab.namespace.move_link("out1", &collector);
        sender.add_address("in1", "198.18.1.1/24");
        collector.set_mac("out1", COLLECTOR_MAC);
        collector.add_address("out1", "198.18.2.2/24");
        collector.add_address("out1", "198.18.2.4/24");
        sender.set_up(&["in1", "lo"]);
        collector.set_up(&["out1", "lo"]);
        sender.default_route(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)));
        collector.default_route(IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1)));
        // A veth drops XDP_REDIRECTed frames unless its peer runs XDP or has GRO on.
        collector.exec("ethtool", &["-K", "out1", "gro", "on"]);
        for address in ["198.18.2.2", "198.18.2.4"] {
            lab.namespace
                .permanent_neighbour(address, COLLECTOR_MAC, "out0");
        }
        lab.ends = Some(Ends { sender, collector });
        lab
    }

    /// The lab namespace.
    pub fn namespace(&self) -> &Netns {
        &self.namespace
    }

    /// The sender namespace; panics unless built by [`Lab::with_ends`].
    pub fn sender(&self) -> &Netns {
        &self.ends().sender
    }

    /// The collector namespace; panics unless built by [`Lab::with_ends`].
    pub fn collector(&self) -> &Netns {
        &self.ends().collector
    }

    fn ends(&self) -> &Ends {
        self.ends
            .as_ref()
            .expect("the lab has no sender and collector namespaces (use Lab::with_ends)")
    }

    /// `ip -n LAB ARGS`, asserting success; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        self.namespace.ip(args)
    }

    /// Runs `work` on a thread inside the lab namespace.
    pub fn within<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.namespace.within(work)
    }

    /// Runs `work` on a thread inside the sender namespace ([`Lab::with_ends`]).
    pub fn in_sender<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.sender().within(work)
    }

    /// Runs `work` on a thread inside the collector namespace ([`Lab::with_ends`]).
    pub fn in_collector<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.collector().within(work)
    }
}
