//! The kernel's next-hop cache under real traffic (`--mode xdp`), and the same input
//! through `--mode userspace` (parity):
//!
//! ```text
//!   snd                  fwd (hepfwd, XDP on in0)            col
//!   eth0 198.18.1.1 ── in0 198.18.1.2
//!                        outA 198.18.2.1  ────────────  ethA 198.18.2.2 (MAC A)
//!                        outB 198.18.3.1  ────────────  ethB 198.18.3.2 (MAC B)
//!                                                        lo   198.18.4.2 (the collector)
//! ```
//!
//! The collector's address is reachable over both links; fwd routes it via link A. Every
//! neighbour entry is permanent and IPv6 is off, so nothing but the test's traffic crosses
//! the links and their packet counters count only it.
//!
//! - A route move (`ip route replace` to link B) in the middle of a stream: nothing is lost,
//!   and once the daemon has invalidated the cache (its counter moved) link A sees no more
//!   packets while the stream goes on; the cache answered most packets.
//! - A neighbour change (the collector's MAC on link A changes, fwd's entry is replaced):
//!   a packet sent between the two changes is lost in both modes (it goes to the old MAC,
//!   which no longer answers: what a stale cache entry would do to every later packet);
//!   after fwd's entry changed every packet arrives, through the cache.
//!
//! Namespaces are named `hfnh-<tag>-<pid>-<seq>-<role>` and deleted on drop, also when the
//! test fails. Privileged: skips loudly unless root, fails under
//! `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hepfwd_harness::netns::{Netns, VethPair};
use hepfwd_tests::collector::{Agent, UdpCollector};
use hepfwd_tests::daemon::{Daemon, Mode};
use hepfwd_tests::hepgen::Pkt;
use hepfwd_tests::metrics::Metrics;
use hepfwd_tests::privileged;

/// Where hepfwd listens (fwd's `in0`).
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)), 9060);
/// The collector (on col's loopback).
const COLLECTOR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 4, 2)), 9061);
const IN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x02];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x02];
/// The collector's new MAC on link A (the neighbour change).
const MAC_A2: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x22];
/// How long the collector must stay quiet before what it got is final.
const QUIET: Duration = Duration::from_millis(500);

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The three namespaces; all deleted on drop.
struct Lab {
    snd: Netns,
    fwd: Netns,
    col: Netns,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let base = format!(
            "hfnh-{tag}-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        // Each namespace is owned as soon as it exists, so a failing step cleans up.
        let lab = Lab {
            snd: Netns::create(format!("{base}-snd")),
            fwd: Netns::create(format!("{base}-fwd")),
            col: Netns::create(format!("{base}-col")),
        };
        let (snd, fwd, col) = (&lab.snd, &lab.fwd, &lab.col);
        for ns in [snd, fwd, col] {
            // No IPv6 (router solicitations, MLD reports): the links carry only the test's
            // packets.
            ns.sysctl("net.ipv6.conf.all.disable_ipv6=1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6=1");
        }
        fwd.add_veth(&VethPair::new("in0", "eth0").peer_in(snd));
        fwd.add_veth(&VethPair::new("outA", "ethA").peer_in(col));
        fwd.add_veth(&VethPair::new("outB", "ethB").peer_in(col));
        fwd.set_mac("in0", IN_MAC);
        col.set_mac("ethA", MAC_A);
        col.set_mac("ethB", MAC_B);
        snd.add_address("eth0", "198.18.1.1/24");
        fwd.add_address("in0", "198.18.1.2/24");
        fwd.add_address("outA", "198.18.2.1/24");
        fwd.add_address("outB", "198.18.3.1/24");
        col.add_address("ethA", "198.18.2.2/24");
        col.add_address("ethB", "198.18.3.2/24");
        col.add_address("lo", "198.18.4.2/32");
        snd.set_up(&["lo", "eth0"]);
        fwd.set_up(&["lo", "in0", "outA", "outB"]);
        col.set_up(&["lo", "ethA", "ethB"]);
        snd.default_route(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)));
        col.default_route(IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1)));
        fwd.ip(&[
            "route",
            "add",
            "198.18.4.2/32",
            "via",
            "198.18.2.2",
            "dev",
            "outA",
        ]);
        snd.permanent_neighbour("198.18.1.2", IN_MAC, "eth0");
        fwd.permanent_neighbour("198.18.2.2", MAC_A, "outA");
        fwd.permanent_neighbour("198.18.3.2", MAC_B, "outB");
        for key in ["all", "default", "in0", "outA", "outB"] {
            fwd.sysctl(&format!("net.ipv4.conf.{key}.forwarding=1"));
        }
        // The kernel path keeps the source address of link A after the move (the tables
        // are compiled at start); the collector takes it on either link.
        for key in ["all", "default", "ethA", "ethB"] {
            col.sysctl(&format!("net.ipv4.conf.{key}.rp_filter=0"));
        }
        // A veth drops XDP_REDIRECTed frames unless its peer runs XDP or has GRO on.
        for dev in ["ethA", "ethB"] {
            col.exec("ethtool", &["-K", dev, "gro", "on"]);
        }
        lab
    }

    /// Packets col received on `dev`.
    fn rx_packets(&self, dev: &str) -> u64 {
        let json = self.col.ip(&["-j", "-s", "link", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no rx packets for {dev} in {json}"))
    }

    fn hepfwd(&self, mode: Mode) -> Daemon {
        let config = format!(
            "[[listener]]\nname = \"agents\"\nudp = \"{LISTEN}\"\n\n[xdp]\ninterfaces = [\"in0\"]\nattach = \"native\"\n\n[[destination]]\nname = \"homer\"\naddress = \"{COLLECTOR}\"\n\n[default]\nforward = [\"homer\"]\n"
        );
        let d = Daemon::start_in_netns(self.fwd.name(), mode, &config)
            .unwrap_or_else(|e| panic!("starting hepfwd --mode {}: {e:#}", mode.as_str()));
        assert_eq!(
            self.fwd.xdp_attached("in0"),
            mode == Mode::Xdp,
            "XDP attached to in0 in --mode {}",
            mode.as_str()
        );
        d
    }
}

fn invalidations(m: &Metrics) -> u64 {
    m.get("hepfwd_xdp_next_hop_invalidations_total", &[])
}

fn xdp(m: &Metrics, counter: &str) -> u64 {
    m.get("hepfwd_xdp_packets_total", &[("counter", counter)])
}

/// Waits until the daemon's invalidations exceed `before` (`--mode xdp`), then lets the
/// packets already past the program land.
fn wait_invalidated(d: &Daemon, mode: Mode, before: u64) {
    if mode == Mode::Xdp {
        d.wait_for(
            "the daemon to invalidate the next-hop cache",
            Duration::from_secs(5),
            |m| invalidations(m) > before,
        );
    }
    std::thread::sleep(Duration::from_millis(50));
}

type Multiset = BTreeMap<Vec<u8>, usize>;

fn multiset(v: &[Vec<u8>]) -> Multiset {
    let mut m = Multiset::new();
    for p in v {
        *m.entry(p.clone()).or_insert(0) += 1;
    }
    m
}

/// Packets of the route move.
const MOVE_PACKETS: usize = 1500;
/// Between two of them.
const MOVE_GAP: Duration = Duration::from_micros(700);

/// The route to the collector moves from link A to link B a third into a stream of
/// [`MOVE_PACKETS`]; returns what the collector received.
fn route_move(mode: Mode) -> Vec<Vec<u8>> {
    let tag = match mode {
        Mode::Xdp => "mv-x",
        _ => "mv-u",
    };
    let lab = Lab::new(tag);
    let col = lab.col.within(|| UdpCollector::bind("homer", COLLECTOR));
    let d = lab.hepfwd(mode);
    let agent = lab.snd.within(|| Agent::bind("198.18.1.1"));
    let packets: Vec<Vec<u8>> = (0..MOVE_PACKETS as u32)
        .map(|i| Pkt::rtcp("nh-move", i).encode())
        .collect();
    let sent = AtomicUsize::new(0);
    let before = invalidations(&d.metrics());
    let (rx_a_after_change, sent_at_change) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            for p in &packets {
                agent.send(LISTEN, p);
                sent.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(MOVE_GAP);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.load(Ordering::SeqCst) < MOVE_PACKETS / 3 {
            assert!(Instant::now() < deadline, "the sender stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        let moved_at = sent.load(Ordering::SeqCst);
        lab.fwd.ip(&[
            "route",
            "replace",
            "198.18.4.2/32",
            "via",
            "198.18.3.2",
            "dev",
            "outB",
        ]);
        wait_invalidated(&d, mode, before);
        let rx_a = lab.rx_packets("ethA");
        let at = sent.load(Ordering::SeqCst);
        eprintln!(
            "--mode {}: route moved after {moved_at} packets; invalidated and settled after {at}",
            mode.as_str()
        );
        sender.join().expect("the sender");
        (rx_a, at)
    });
    let got = col.take(MOVE_PACKETS, Duration::from_secs(10));
    col.expect_silent(QUIET);
    assert_eq!(
        multiset(&got),
        multiset(&packets),
        "--mode {}: every packet, once",
        mode.as_str()
    );
    assert!(
        sent_at_change + 100 < MOVE_PACKETS,
        "the stream went on after the change ({sent_at_change} of {MOVE_PACKETS} sent by then)"
    );
    assert_eq!(
        lab.rx_packets("ethA"),
        rx_a_after_change,
        "--mode {}: link A received packets after the change was applied",
        mode.as_str()
    );
    let rx_b = lab.rx_packets("ethB");
    assert!(
        rx_b >= (MOVE_PACKETS - sent_at_change) as u64,
        "link B carried the rest: {rx_b}"
    );
    if mode == Mode::Xdp {
        let m = d.metrics();
        let (hit, miss) = (xdp(&m, "next_hop_hit"), xdp(&m, "next_hop_miss"));
        eprintln!(
            "--mode xdp: next_hop_hit {hit}, next_hop_miss {miss}, invalidations {}",
            invalidations(&m)
        );
        assert_eq!(
            xdp(&m, "steered"),
            MOVE_PACKETS as u64,
            "the kernel steered every packet"
        );
        assert_eq!(hit + miss, MOVE_PACKETS as u64, "one next hop per packet");
        assert!(
            hit > MOVE_PACKETS as u64 / 2,
            "the cache answered most ({hit})"
        );
        assert!(miss >= 2, "a miss before and after the change ({miss})");
        let reason = |r| m.get("hepfwd_xdp_next_hop_invalidations_total", &[("reason", r)]);
        assert_eq!(reason("install"), 1, "the start's install");
        assert!(reason("netlink") >= 1, "the route change");
        assert_eq!(
            m.get("hepfwd_received_total", &[("path", "user")]),
            0,
            "packets reached the daemon's sockets"
        );
    }
    got
}

/// Packets before and after the neighbour change.
const MAC_PACKETS: u32 = 100;

/// The collector's MAC on link A changes (sender paused), then fwd's neighbour entry; a
/// probe sent in between goes to the old MAC and is lost. Returns what the collector
/// received.
fn neighbour_change(mode: Mode) -> Vec<Vec<u8>> {
    let tag = match mode {
        Mode::Xdp => "mac-x",
        _ => "mac-u",
    };
    let lab = Lab::new(tag);
    let col = lab.col.within(|| UdpCollector::bind("homer", COLLECTOR));
    let d = lab.hepfwd(mode);
    let agent = lab.snd.within(|| Agent::bind("198.18.1.1"));
    let first: Vec<Vec<u8>> = (0..MAC_PACKETS)
        .map(|i| Pkt::rtcp("nh-mac", i).encode())
        .collect();
    agent.send_all(LISTEN, &first);
    let mut got = col.take(first.len(), Duration::from_secs(5));
    // The collector's MAC changes: fwd's entry (and a cached next hop) is now wrong.
    lab.col
        .ip(&["link", "set", "dev", "ethA", "address", &mac_text(MAC_A2)]);
    let probe = Pkt::rtcp("nh-mac-probe", 0).encode();
    agent.send(LISTEN, &probe);
    col.expect_silent(QUIET);
    let before = invalidations(&d.metrics());
    let hits_before = xdp(&d.metrics(), "next_hop_hit");
    lab.fwd.permanent_neighbour("198.18.2.2", MAC_A2, "outA");
    wait_invalidated(&d, mode, before);
    let later: Vec<Vec<u8>> = (0..MAC_PACKETS)
        .map(|i| Pkt::rtcp("nh-mac", 1000 + i).encode())
        .collect();
    agent.send_all(LISTEN, &later);
    got.extend(col.take(later.len(), Duration::from_secs(5)));
    col.expect_silent(QUIET);
    let mut want = first.clone();
    want.extend(later.iter().cloned());
    assert_eq!(
        multiset(&got),
        multiset(&want),
        "every packet but the probe"
    );
    if mode == Mode::Xdp {
        let m = d.metrics();
        let all = u64::from(2 * MAC_PACKETS + 1);
        assert_eq!(xdp(&m, "steered"), all, "the kernel steered every packet");
        assert!(
            xdp(&m, "next_hop_hit") > hits_before + u64::from(MAC_PACKETS) / 2,
            "after the change the cache answered (with the new MAC)"
        );
        assert!(
            hits_before > u64::from(MAC_PACKETS) / 2,
            "the cache answered before the change too ({hits_before})"
        );
    }
    got
}

#[test]
fn a_route_move_under_traffic_loses_nothing_and_leaves_the_old_link() {
    if !privileged::available("a_route_move_under_traffic_loses_nothing_and_leaves_the_old_link") {
        return;
    }
    let xdp = route_move(Mode::Xdp);
    let user = route_move(Mode::Userspace);
    assert_eq!(
        multiset(&xdp),
        multiset(&user),
        "--mode xdp and --mode userspace deliver the same bytes"
    );
}

#[test]
fn a_neighbour_change_reaches_the_new_mac_through_the_cache() {
    if !privileged::available("a_neighbour_change_reaches_the_new_mac_through_the_cache") {
        return;
    }
    let xdp = neighbour_change(Mode::Xdp);
    let user = neighbour_change(Mode::Userspace);
    assert_eq!(
        multiset(&xdp),
        multiset(&user),
        "--mode xdp and --mode userspace deliver the same bytes"
    );
}
