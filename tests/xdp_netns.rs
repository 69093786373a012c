//! The data plane end to end through network namespaces (issue 4):
//! `snd` ── veth ── `fwd` (hepfwd; XDP on `in0`) ── veth ── `col` (collectors), see
//! `harness/src/topology.rs` (the peers: `support/netns.rs`). Each test sends a bounded,
//! crafted HEPv3 sequence from `snd` and asserts the exact HEP bytes each collector
//! receives (a multiset per collector: steered and mirrored packets are byte-identical to
//! what was sent; rewritten ones equal the documented rewrite model), plus the daemon's
//! counters.
//!
//! - `routes_*`: steer, call-sticky hash over two collectors, drop, mirror and an unrouted
//!   packet; `--mode userspace` and `--mode xdp`.
//! - `example_*`: `config/example.toml` moved onto the topology (auth key, allow list,
//!   correlation match with hash and rewrite, call sampling to a TCP collector, drop,
//!   default); both modes.
//! - `parity_*`: the same sequence through `--mode xdp` and `--mode userspace` delivers the
//!   same HEP bytes to the same collectors.
//! - `scale_out_*`: the premise of several nodes behind ECMP (docs/deployment.md): two
//!   daemons started from the same configuration, each fed one half of every call's
//!   packets, place each call on the same collector; adding a collector moves only the
//!   calls the rendezvous hash gives it (about 1/N); both modes.
//!
//! In `--mode xdp` the counters must also show the kernel did the work: the `path="xdp"`
//! families count what XDP steered, mirrored and dropped, and the daemon's sockets
//! (`hepfwd_received_total{path="user"}`) saw exactly the packets the kernel passed up.
//!
//! Privileged: skips loudly unless root, fails under `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hep_common::correlation::key_hash;
use hep_common::select::{rendezvous_pick, sample_keep};
use hepfwd_tests::collector::{Inbox, TcpCollector, UdpCollector};
use hepfwd_tests::daemon::Mode;
use hepfwd_tests::hepfwd::workspace_root;
use hepfwd_tests::hepgen::{ModelEdit, Pkt, chunks_of, model_rewrite, packet_of};
use hepfwd_tests::metrics::Metrics;
use hepfwd_tests::netns::{COL_A, COL_B, IF_IN, LISTEN, Ns, SND, SND2, Topology, TopologyPeers};
use hepfwd_tests::privileged;

/// How long a collector must stay quiet before the test takes what it got as final.
const QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn topology_routes_udp_from_snd_through_fwd_to_col_and_is_deleted() {
    if !privileged::available("topology_routes_udp_from_snd_through_fwd_to_col_and_is_deleted") {
        return;
    }
    let topo = Topology::new("topo");
    let names: Vec<String> = [Ns::Snd, Ns::Fwd, Ns::Col]
        .iter()
        .map(|ns| topo.name(*ns).to_string())
        .collect();
    let a = topo.udp_collector("a", COL_A, 9061);
    let b = topo.udp_collector("b", COL_B, 9062);
    topo.warm_neighbours();
    assert!(topo.neighbour_valid(Ns::Fwd, COL_A) && topo.neighbour_valid(Ns::Fwd, COL_B));
    assert!(topo.neighbour_valid(Ns::Snd, hepfwd_tests::netns::FWD_IN));

    // Plain kernel forwarding, no daemon: snd → fwd → col, from both sender addresses.
    let agent = topo.agent(SND);
    let agent2 = topo.agent(SND2);
    agent.send_all((COL_A, 9061).into(), &[b"one".to_vec(), b"two".to_vec()]);
    agent2.send_all((COL_B, 9062).into(), &[b"three".to_vec()]);
    assert_eq!(a.expect(2, Duration::from_secs(5)), [b"one", b"two"]);
    assert_eq!(b.expect(1, Duration::from_secs(5)), [b"three"]);
    assert!(!topo.xdp_attached(Ns::Fwd, IF_IN));

    drop(topo);
    let list = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned();
    for n in names {
        assert!(!list.contains(&n), "{n} survived the drop:\n{list}");
    }
}

#[test]
fn routes_userspace() {
    if !privileged::available("routes_userspace") {
        return;
    }
    let s = routes_scenario();
    let run = deliver("rt-u", &s, Mode::Userspace);
    s.assert_delivered(&run);
    assert_call_sticky(&run, "homer-a", "homer-b", |p| p.starts_with("rtcp-call-"));
    assert_user_counters(&run.metrics, &s);
    let m = &run.metrics;
    let route = |name| m.require("hepfwd_route_matches_total", &[("route", name)]);
    assert_eq!(route("mirror"), s.count("mirror"));
    assert_eq!(
        route("mirror-rewrite"),
        s.count("mirror-rewrite") + s.count("mirror-rewrite-up")
    );
    assert_eq!(route("sip-to-a"), s.count("sip"));
    assert_eq!(route("rtcp-hash"), s.count("rtcp") + s.count("rtcp-flow"));
    assert_eq!(
        m.require("hepfwd_route_dropped_total", &[("route", "drop-logs")]),
        s.count("log")
    );
    assert_eq!(route("keepalives"), s.count("options"));
    assert_eq!(route("sip-errors"), s.count("sip-error"));
    assert_eq!(m.get("hepfwd_unrouted_total", &[]), s.count("unrouted"));
}

#[test]
fn routes_xdp() {
    if !privileged::available("routes_xdp") {
        return;
    }
    let s = routes_scenario();
    let run = deliver("rt-x", &s, Mode::Xdp);
    s.assert_delivered(&run);
    assert_call_sticky(&run, "homer-a", "homer-b", |p| p.starts_with("rtcp-call-"));
    let k = assert_kernel_accounting(&run, &s);
    // Everything but the unrouted packets and the rewrites that do not fit in place is
    // the kernel's.
    assert_eq!(
        k.get("steered"),
        s.count("sip")
            + s.count("rtcp")
            + s.count("rtcp-flow")
            + s.count("sip-error")
            + s.count("rewrite"),
        "{k:?}"
    );
    assert_eq!(k.get("mirrored"), mirrored_in_kernel(&s), "{k:?}");
    assert_eq!(
        k.get("route_drop"),
        s.count("log") + s.count("options"),
        "{k:?}"
    );
    assert_eq!(k.get("pass_no_route"), s.count("unrouted"), "{k:?}");
    assert_eq!(k.get("pass_rewrite"), rewrites_passed_up(&s), "{k:?}");
    assert_eq!(
        k.passed_up(),
        s.count("unrouted") + rewrites_passed_up(&s),
        "{k:?}"
    );
    let m = &run.metrics;
    let xroute = |name| {
        m.require(
            "hepfwd_route_matches_total",
            &[("route", name), ("path", "xdp")],
        )
    };
    assert_eq!(xroute("rtcp-hash"), s.count("rtcp") + s.count("rtcp-flow"));
    assert_eq!(xroute("sip-to-a"), s.count("sip"));
    assert_eq!(xroute("keepalives"), s.count("options"));
    assert_eq!(xroute("sip-errors"), s.count("sip-error"));
    assert_eq!(xroute("mirror"), s.count("mirror"));
    assert_eq!(xroute("mirror-rewrite"), s.count("mirror-rewrite"));
    // The daemon routed only what the kernel passed up.
    let uroute = |name| {
        m.get(
            "hepfwd_route_matches_total",
            &[("route", name), ("path", "user")],
        )
    };
    assert_eq!(
        uroute("rtcp-hash") + uroute("sip-to-a") + uroute("mirror"),
        0
    );
    assert_eq!(
        m.get("hepfwd_unrouted_total", &[("path", "user")]),
        s.count("unrouted")
    );
}

#[test]
fn example_userspace() {
    if !privileged::available("example_userspace") {
        return;
    }
    let s = example_scenario();
    let run = deliver("ex-u", &s, Mode::Userspace);
    s.assert_delivered(&run);
    assert_call_sticky(&run, "homer-a", "homer-b", |k| {
        k.ends_with("@carrier.example")
    });
    assert_user_counters(&run.metrics, &s);
    let m = &run.metrics;
    let rejected = |reason| m.require("hepfwd_rejected_total", &[("reason", reason)]);
    assert_eq!(rejected("auth"), s.count("no-auth"));
    assert_eq!(rejected("allow"), s.count("outsider"));
    assert_eq!(
        m.require("hepfwd_route_dropped_total", &[("route", "drop-logs")]),
        s.count("log")
    );
    assert_eq!(
        m.require("hepfwd_sampled_out_total", &[("route", "rtcp-sampled")]),
        s.count("rtcp-out")
    );
}

#[test]
fn example_xdp() {
    if !privileged::available("example_xdp") {
        return;
    }
    let s = example_scenario();
    let run = deliver("ex-x", &s, Mode::Xdp);
    s.assert_delivered(&run);
    assert_call_sticky(&run, "homer-a", "homer-b", |k| {
        k.ends_with("@carrier.example")
    });
    let k = assert_kernel_accounting(&run, &s);
    // The listener's checks run in the kernel.
    assert_eq!(k.get("auth_failed"), s.count("no-auth"), "{k:?}");
    assert_eq!(k.get("not_allowed"), s.count("outsider"), "{k:?}");
}

#[test]
fn parity_routes_xdp_vs_userspace() {
    if !privileged::available("parity_routes_xdp_vs_userspace") {
        return;
    }
    let s = routes_scenario();
    let (_, xdp) = assert_parity("rt", &s);
    let k = assert_kernel_accounting(&xdp, &s);
    // The in-place rewrites ran in the kernel (mirrored ones included); the others went up.
    assert_eq!(k.get("pass_rewrite"), rewrites_passed_up(&s), "{k:?}");
    assert_eq!(k.get("mirrored"), mirrored_in_kernel(&s), "{k:?}");
    let m = &xdp.metrics;
    let rewrite_route = |counter: &str| {
        m.require(
            "hepfwd_xdp_route_packets_total",
            &[
                ("route", "rewrite-node"),
                ("path", "xdp"),
                ("outcome", counter),
            ],
        )
    };
    assert_eq!(rewrite_route("steered"), s.count("rewrite"), "{k:?}");
}

#[test]
fn parity_example_xdp_vs_userspace() {
    if !privileged::available("parity_example_xdp_vs_userspace") {
        return;
    }
    let s = example_scenario();
    let (_, xdp) = assert_parity("ex", &s);
    assert_kernel_accounting(&xdp, &s);
}

#[test]
fn parity_example_kernel_routes_first_xdp_vs_userspace() {
    if !privileged::available("parity_example_kernel_routes_first_xdp_vs_userspace") {
        return;
    }
    // In example.toml the correlation route, which only userspace can evaluate, comes
    // first, so the kernel hands up everything its listener checks let through. With the
    // routes in reverse order (their matches are disjoint by protocol type, so routing is
    // the same) the kernel drops the logs itself and hands the RTCP calls up for their TCP
    // destination.
    let s = Scenario {
        config: kernel_routes_first(&example_config()),
        ..example_scenario()
    };
    let (_, xdp) = assert_parity("exr", &s);
    let k = assert_kernel_accounting(&xdp, &s);
    assert_eq!(k.get("route_drop"), s.count("log"), "{k:?}");
    assert_eq!(
        k.get("pass_opaque"),
        s.count("carrier") + s.count("other"),
        "{k:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The scenarios: a configuration, collectors, a packet sequence and what must arrive.

/// Which collector sockets a scenario listens on.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// A collector of a scenario, in col.
struct CollectorSpec {
    name: &'static str,
    ip: Ipv4Addr,
    port: u16,
    transport: Transport,
}

/// One packet sent from snd.
struct Packet {
    /// The sender address in snd.
    from: Ipv4Addr,
    /// What the packet stands for (`sip`, `rtcp`, ...; [`Scenario::count`] counts them).
    kind: &'static str,
    bytes: Vec<u8>,
}

type Multiset = BTreeMap<Vec<u8>, usize>;

struct Scenario {
    config: String,
    collectors: Vec<CollectorSpec>,
    sends: Vec<Packet>,
    /// What each collector must receive, by name (absent: nothing).
    expect: BTreeMap<&'static str, Multiset>,
}

impl Scenario {
    fn new(config: String, collectors: Vec<CollectorSpec>) -> Self {
        Scenario {
            config,
            collectors,
            sends: Vec::new(),
            expect: BTreeMap::new(),
        }
    }

    /// Sends `bytes` from `from`; it must arrive at each of `to`.
    fn send(&mut self, from: Ipv4Addr, kind: &'static str, bytes: Vec<u8>, to: &[&'static str]) {
        self.send_expecting(from, kind, bytes.clone(), to, &bytes);
    }

    /// Sends `bytes` from `from`; `arrives` must arrive at each of `to`.
    fn send_expecting(
        &mut self,
        from: Ipv4Addr,
        kind: &'static str,
        bytes: Vec<u8>,
        to: &[&'static str],
        arrives: &[u8],
    ) {
        for c in to {
            assert!(
                self.collectors.iter().any(|s| s.name == *c),
                "no collector {c}"
            );
            *self
                .expect
                .entry(c)
                .or_default()
                .entry(arrives.to_vec())
                .or_insert(0) += 1;
        }
        self.sends.push(Packet { from, kind, bytes });
    }

    /// How many packets of `kind` the sequence has.
    fn count(&self, kind: &str) -> u64 {
        self.sends.iter().filter(|s| s.kind == kind).count() as u64
    }

    /// Each collector got exactly its expected multiset.
    fn assert_delivered(&self, run: &Run) {
        for c in &self.collectors {
            let empty = Multiset::new();
            let want = self.expect.get(c.name).unwrap_or(&empty);
            assert_same(
                &format!("{} ({})", c.name, run.mode),
                &run.got[c.name],
                want,
            );
        }
    }
}

/// Destination seeds of a hash route over `names`, as the engine computes them.
fn seeds(names: &[&str]) -> Vec<u64> {
    names.iter().map(|n| key_hash(n.as_bytes())).collect()
}

const ROUTES_CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9100"

[[listener]]
name = "agents"
udp = "198.18.1.2:9060"

[xdp]
interfaces = ["in0"]
attach = "native"

[[destination]]
name = "homer-a"
address = "198.18.2.2:9061"

[[destination]]
name = "homer-b"
address = "198.18.2.3:9062"

[[destination]]
name = "homer-k"
address = "198.18.2.3:9063"
set_auth_key = "t0psec"

[[route]]
name = "mirror"
match = { capture_id = [3000] }
forward = ["homer-a", "homer-b"]
mode = "all"

[[route]]
name = "mirror-rewrite"
match = { capture_id = [3001] }
forward = ["homer-a", "homer-b"]
mode = "all"
rewrite = [ { set = "capture_id", value = 3002 }, { set = "node_name", value = "edge-9" } ]

[[route]]
name = "rewrite-node"
match = { capture_id = [4000] }
forward = ["homer-k"]
rewrite = [ { set = "capture_id", value = 4001 }, { set = "node_name", value = "edge-9" } ]

[[route]]
name = "drop-logs"
match = { proto = [100] }
action = "drop"

[[route]]
name = "keepalives"
match = { sip_method = ["OPTIONS"] }
action = "drop"

[[route]]
name = "sip-errors"
match = { sip_status = ["5xx"] }
forward = ["homer-b"]

[[route]]
name = "sip-to-a"
match = { proto = ["sip"] }
forward = ["homer-a"]

[[route]]
name = "rtcp-hash"
match = { proto = ["rtcp"] }
forward = ["homer-a", "homer-b"]
mode = "hash"
"#;

/// Steer (SIP → homer-a), hash (20 RTCP calls × 3 over homer-a and homer-b, and 8 RTCP
/// flows without a key × 2 directions by their flow key), drop (logs), mirror (capture id
/// 3000 → both), unrouted (protocol type 32), the SIP first line (4 OPTIONS dropped, 4
/// 5xx responses to homer-b, a 200 to homer-a), rewrites (to homer-k) and a mirror with a
/// rewrite (capture id 3001 → both): 124 packets, interleaved.
fn routes_scenario() -> Scenario {
    let mut s = Scenario::new(
        ROUTES_CONFIG.to_string(),
        vec![
            CollectorSpec {
                name: "homer-a",
                ip: COL_A,
                port: 9061,
                transport: Transport::Udp,
            },
            CollectorSpec {
                name: "homer-b",
                ip: COL_B,
                port: 9062,
                transport: Transport::Udp,
            },
            CollectorSpec {
                name: "homer-k",
                ip: COL_B,
                port: 9063,
                transport: Transport::Udp,
            },
        ],
    );
    let ab = ["homer-a", "homer-b"];
    let seeds = seeds(&ab);
    let mut seq = 0u32;
    let mut next = || {
        seq += 1;
        seq
    };
    for round in 0..3u32 {
        for call in 0..20 {
            let corr = format!("rtcp-call-{call}@lab");
            let at = rendezvous_pick(key_hash(corr.as_bytes()), &seeds).expect("two seeds");
            s.send(SND, "rtcp", Pkt::rtcp(&corr, next()).encode(), &[ab[at]]);
            if call % 2 == 0 && round < 2 {
                // 10 × 2 → 20; the first 10 are SIP, the other 10 logs.
                let i = call / 2 + 10 * round;
                if round == 0 {
                    let sip = Pkt::sip(&format!("sip-{i}@lab"), next()).encode();
                    s.send(SND, "sip", sip, &["homer-a"]);
                } else {
                    s.send(
                        SND,
                        "log",
                        Pkt::log(&format!("log-{i}"), next()).encode(),
                        &[],
                    );
                }
            }
        }
        if round == 1 {
            // RTCP without a key (no 0x0011): hashed by its flow key, both directions of a
            // flow to one collector. The key written out from its definition
            // (hep_common::correlation): ::ffff:10.9.0.1 port 10001+f, then ::ffff:10.9.0.2
            // port 20001.
            for flow in 0..8u16 {
                let mut key = [0u8; 36];
                key[10..16].copy_from_slice(&[0xff, 0xff, 10, 9, 0, 1]);
                key[16..18].copy_from_slice(&(10_001 + flow).to_be_bytes());
                key[28..34].copy_from_slice(&[0xff, 0xff, 10, 9, 0, 2]);
                key[34..36].copy_from_slice(&20_001u16.to_be_bytes());
                let at = rendezvous_pick(key_hash(&key), &seeds).expect("two seeds");
                let mut there = Pkt::rtcp("", next()).src("10.9.0.1", 10_001 + flow);
                there.correlation = None;
                let back = there
                    .clone()
                    .src("10.9.0.2", 20_001)
                    .dst("10.9.0.1", 10_001 + flow);
                s.send(SND, "rtcp-flow", there.encode(), &[ab[at]]);
                s.send(SND, "rtcp-flow", back.encode(), &[ab[at]]);
            }
        }
        if round == 2 {
            // The SIP first line: OPTIONS dropped, 5xx responses to homer-b, a 200 on to
            // sip-to-a.
            for i in 0..4u32 {
                let mut options = Pkt::sip(&format!("ka-{i}@lab"), next());
                options.payload = format!(
                    "OPTIONS sip:probe@lab SIP/2.0\r\nCall-ID: ka-{i}@lab\r\nCSeq: {i} OPTIONS\r\n\r\n"
                )
                .into_bytes();
                s.send(SND, "options", options.encode(), &[]);
                let mut error = Pkt::sip(&format!("err-{i}@lab"), next());
                error.payload = format!(
                    "SIP/2.0 50{i} Server Error\r\nCall-ID: err-{i}@lab\r\nCSeq: {i} INVITE\r\n\r\n"
                )
                .into_bytes();
                s.send(SND, "sip-error", error.encode(), &["homer-b"]);
            }
            let mut ok = Pkt::sip("ok@lab", next());
            ok.payload = b"SIP/2.0 200 OK\r\nCall-ID: ok@lab\r\nCSeq: 1 INVITE\r\n\r\n".to_vec();
            s.send(SND, "sip", ok.encode(), &["homer-a"]);
            for i in 0..5 {
                let m = Pkt::sip(&format!("mirror-{i}@lab"), next()).capture_id(3000);
                s.send(SND, "mirror", m.encode(), &ab);
            }
            for i in 0..4 {
                let u = Pkt::log(&format!("unrouted-{i}"), next()).proto(32);
                s.send(SND, "unrouted", u.encode(), &[]);
            }
            // Rewrites: capture id and node name by the route, the auth key by homer-k.
            // Each chunk carried once at the new length: written in place (4); a node
            // name of another length (2): rewritten by the daemon. Either way the bytes
            // are those of the packet built with the new values.
            for (i, node) in ["edge-7", "edge-8", "edge-7", "edge-10", "edge-8", "edge-11"]
                .into_iter()
                .enumerate()
            {
                let p = Pkt::sip(&format!("rw-{i}@lab"), next())
                    .capture_id(4000)
                    .node(node)
                    .auth("s3cret");
                let want = p.clone().capture_id(4001).node("edge-9").auth("t0psec");
                let kind = if node.len() == 6 {
                    "rewrite"
                } else {
                    "rewrite-up"
                };
                s.send_expecting(SND, kind, p.encode(), &["homer-k"], &want.encode());
            }
            // A mirror with a rewrite: every copy carries the new capture id and node
            // name; written in place by TC (3), or by the daemon when the node name has
            // another length (1).
            for (i, node) in ["edge-7", "edge-8", "edge-10", "edge-7"]
                .into_iter()
                .enumerate()
            {
                let p = Pkt::sip(&format!("mrw-{i}@lab"), next())
                    .capture_id(3001)
                    .node(node);
                let want = p.clone().capture_id(3002).node("edge-9");
                let kind = if node.len() == 6 {
                    "mirror-rewrite"
                } else {
                    "mirror-rewrite-up"
                };
                s.send_expecting(SND, kind, p.encode(), &ab, &want.encode());
            }
        }
    }
    assert_eq!(s.sends.len(), 124);
    s
}

/// The routes scenario's packets the kernel mirrors: the plain mirror's and the mirror
/// with a rewrite whose edits fit in place.
fn mirrored_in_kernel(s: &Scenario) -> u64 {
    s.count("mirror") + s.count("mirror-rewrite")
}

/// The routes scenario's packets whose in-place rewrite does not fit: passed up.
fn rewrites_passed_up(s: &Scenario) -> u64 {
    s.count("rewrite-up") + s.count("mirror-rewrite-up")
}

fn replace_once(src: &str, from: &str, to: &str) -> String {
    assert_eq!(
        src.matches(from).count(),
        1,
        "{from:?} must occur exactly once in config/example.toml"
    );
    src.replacen(from, to, 1)
}

/// `config/example.toml` on the topology. Its addresses already are the topology's
/// (homer-a 198.18.2.2:9061 UDP, homer-b 198.18.2.3:9060 TCP, the RTCP route's source
/// 198.18.1.0/24 holds both senders); the listener moves from 0.0.0.0 to fwd's `in0`
/// address, the allow list narrows from 198.18.0.0/15 to the sender 198.18.1.1/32 (so the
/// second sender 198.18.1.9 is refused), and `[xdp]` attaches to `in0`. The admin server
/// stays on 127.0.0.1:9100, inside fwd.
fn example_config() -> String {
    let src = std::fs::read_to_string(workspace_root().join("config/example.toml"))
        .expect("read config/example.toml");
    assert!(
        !src.contains("[xdp]"),
        "config/example.toml gained an [xdp] section"
    );
    for kept in [
        "listen = \"127.0.0.1:9100\"",
        "address = \"198.18.2.2:9061\"",
        "address = \"198.18.2.3:9060\"",
        "source = [\"198.18.1.0/24\"]",
    ] {
        assert!(
            src.contains(kept),
            "config/example.toml no longer has {kept}"
        );
    }
    let s = replace_once(&src, "udp = \"0.0.0.0:9060\"", "udp = \"198.18.1.2:9060\"");
    let s = replace_once(&s, "\"198.18.0.0/15\"", "\"198.18.1.1/32\"");
    format!("{s}\n[xdp]\ninterfaces = [\"in0\"]\nattach = \"native\"\n")
}

/// `config` with its `[[route]]`s in reverse order (`[default]` stays last).
fn kernel_routes_first(config: &str) -> String {
    let (head, rest) = config.split_once("\n[[route]]").expect("routes");
    let (routes, tail) = rest.split_once("\n[default]").expect("a [default] section");
    let mut blocks: Vec<&str> = routes.split("\n[[route]]").collect();
    assert_eq!(blocks.len(), 3, "config/example.toml has three routes");
    blocks.reverse();
    let mut out = head.to_string();
    for b in blocks {
        out.push_str("\n[[route]]");
        out.push_str(b);
    }
    out.push_str("\n[default]");
    out.push_str(tail);
    out
}

/// Every route and listener check of `config/example.toml`: SIP calls `@carrier.example`
/// (12 calls × 2, hashed over homer-a and homer-b, rewritten), RTCP (20 calls × 2, capture
/// ids 2000+, a quarter of the calls kept, to homer-b over TCP), logs (dropped), other SIP
/// (the default, homer-a, unchanged), SIP without the auth key and from outside the allow
/// list (refused): 88 packets.
fn example_scenario() -> Scenario {
    let mut s = Scenario::new(
        example_config(),
        vec![
            CollectorSpec {
                name: "homer-a",
                ip: COL_A,
                port: 9061,
                transport: Transport::Udp,
            },
            CollectorSpec {
                name: "homer-b",
                ip: COL_B,
                port: 9060,
                transport: Transport::Tcp,
            },
        ],
    );
    let ab = ["homer-a", "homer-b"];
    let seeds = seeds(&ab);
    // The sip-calls rewrite, as the example writes it.
    let edits = [
        ModelEdit::Set(0, 0x000c, 42u32.to_be_bytes().to_vec()),
        ModelEdit::Set(0, 0x0013, b"edge-1".to_vec()),
        ModelEdit::Delete(0, 0x000e),
        ModelEdit::Set(3, 0x0100, b"x".to_vec()),
    ];
    let mut seq = 0u32;
    let mut next = || {
        seq += 1;
        seq
    };
    for round in 0..2u32 {
        for call in 0..20u32 {
            let corr = format!("rtcp-call-{call}");
            let keep = sample_keep(key_hash(corr.as_bytes()), 250_000);
            let rtcp = Pkt::rtcp(&corr, next())
                .capture_id(2000 + call * 20)
                .auth("s3cret")
                .encode();
            let kind = if keep { "rtcp-kept" } else { "rtcp-out" };
            s.send(SND, kind, rtcp, if keep { &["homer-b"] } else { &[] });
            if call < 12 {
                let call_id = format!("call-{call}@carrier.example");
                let at = rendezvous_pick(key_hash(call_id.as_bytes()), &seeds).expect("seeds");
                let mut p = Pkt::sip(&call_id, next()).auth("s3cret").capture_id(7);
                if round == 1 {
                    p = p.node("agent-node").chunk(3, 0x0100, b"old");
                }
                let bytes = p.encode();
                let out = packet_of(&model_rewrite(&chunks_of(&bytes), &edits));
                s.send_expecting(SND, "carrier", bytes, &[ab[at]], &out);
            }
            if call % 5 == 0 {
                let log = Pkt::log(&format!("log-{call}-{round}"), next()).auth("s3cret");
                s.send(SND, "log", log.encode(), &[]);
            }
            if call % 5 == 1 {
                let other = Pkt::sip(&format!("other-{call}-{round}@lab"), next()).auth("s3cret");
                s.send(SND, "other", other.encode(), &["homer-a"]);
            }
            if call % 10 == 2 {
                let noauth = Pkt::sip(&format!("noauth-{call}-{round}@lab"), next());
                s.send(SND, "no-auth", noauth.encode(), &[]);
                let outsider = Pkt::sip(&format!("out-{call}-{round}@lab"), next()).auth("s3cret");
                s.send(SND2, "outsider", outsider.encode(), &[]);
            }
        }
    }
    assert_eq!(s.sends.len(), 88);
    assert!(s.count("rtcp-kept") > 0 && s.count("rtcp-out") > 0);
    s
}

// ---------------------------------------------------------------------------------------
// Scale out: several nodes with one configuration.

#[test]
fn scale_out_userspace() {
    if !privileged::available("scale_out_userspace") {
        return;
    }
    assert_scale_out("so-u", Mode::Userspace);
}

#[test]
fn scale_out_xdp() {
    if !privileged::available("scale_out_xdp") {
        return;
    }
    assert_scale_out("so-x", Mode::Xdp);
}

/// Calls in the scale-out test.
const SCALE_OUT_CALLS: u32 = 240;

/// Hash routing of SIP over `collectors` (names from [`scale_out_collectors`]).
fn scale_out_config(collectors: &[CollectorSpec]) -> String {
    let mut c = String::from(
        r#"
[admin]
listen = "127.0.0.1:9100"

[[listener]]
name = "agents"
udp = "198.18.1.2:9060"

[xdp]
interfaces = ["in0"]
attach = "native"
"#,
    );
    for d in collectors {
        c.push_str(&format!(
            "\n[[destination]]\nname = \"{}\"\naddress = \"{}:{}\"\n",
            d.name, d.ip, d.port
        ));
    }
    let names: Vec<String> = collectors
        .iter()
        .map(|d| format!("\"{}\"", d.name))
        .collect();
    c.push_str(&format!(
        "\n[[route]]\nname = \"calls\"\nmatch = {{ proto = [\"sip\"] }}\nforward = [{}]\nmode = \"hash\"\n",
        names.join(", ")
    ));
    c
}

fn scale_out_collectors(n: usize) -> Vec<CollectorSpec> {
    [
        ("homer-a", COL_A, 9061),
        ("homer-b", COL_B, 9062),
        ("homer-c", COL_A, 9063),
    ][..n]
        .iter()
        .map(|&(name, ip, port)| CollectorSpec {
            name,
            ip,
            port,
            transport: Transport::Udp,
        })
        .collect()
}

/// Packet `part` (0, 1 or 2) of every call, each expected where rendezvous hashing of its
/// Call-ID over the collectors' seeds puts it.
fn scale_out_scenario(collectors: usize, part: u32) -> Scenario {
    let specs = scale_out_collectors(collectors);
    let names: Vec<&'static str> = specs.iter().map(|c| c.name).collect();
    let seeds = seeds(&names);
    let mut s = Scenario::new(scale_out_config(&specs), specs);
    for call in 0..SCALE_OUT_CALLS {
        let id = format!("ecmp-{call}@lab");
        let at = rendezvous_pick(key_hash(id.as_bytes()), &seeds).expect("seeds");
        let p = Pkt::sip(&id, part * SCALE_OUT_CALLS + call).encode();
        s.send(SND, "sip", p, &[names[at]]);
    }
    s
}

/// Where each call's packets arrived: Call-ID → collectors.
fn placement(run: &Run) -> BTreeMap<String, Vec<&'static str>> {
    let mut m: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for (name, got) in &run.got {
        for p in got.keys() {
            m.entry(key_of(p)).or_default().push(name);
        }
    }
    m
}

/// Two daemons from one configuration (one after the other on the same topology: a node
/// each), fed disjoint halves of every call, agree on every call's collector; a daemon
/// with a third collector moves only the calls the hash gives the new one, about a third.
fn assert_scale_out(tag: &str, mode: Mode) {
    let first_half = scale_out_scenario(2, 0);
    let second_half = scale_out_scenario(2, 1);
    assert_eq!(first_half.config, second_half.config, "one configuration");
    let node1 = deliver(&format!("{tag}1"), &first_half, mode);
    let node2 = deliver(&format!("{tag}2"), &second_half, mode);
    first_half.assert_delivered(&node1);
    second_half.assert_delivered(&node2);
    let (p1, p2) = (placement(&node1), placement(&node2));
    assert_eq!(
        p1.len(),
        SCALE_OUT_CALLS as usize,
        "every call arrived once"
    );
    assert!(
        p1.values().all(|at| at.len() == 1),
        "a call on two collectors"
    );
    assert_eq!(p1, p2, "the two nodes place calls differently");
    let per_collector =
        |p: &BTreeMap<String, Vec<&str>>, c: &str| p.values().filter(|at| at[0] == c).count();
    assert!(
        per_collector(&p1, "homer-a") > 0 && per_collector(&p1, "homer-b") > 0,
        "both collectors take calls"
    );

    // A third collector: a call moves only to it, and about a third of them do.
    let grown = scale_out_scenario(3, 2);
    let node3 = deliver(&format!("{tag}3"), &grown, mode);
    grown.assert_delivered(&node3);
    let p3 = placement(&node3);
    let moved: Vec<&String> = p1.keys().filter(|k| p3[*k] != p1[*k]).collect();
    assert!(
        moved.iter().all(|k| p3[*k] == ["homer-c"]),
        "calls moved between the old collectors"
    );
    let share = moved.len() as f64 / f64::from(SCALE_OUT_CALLS);
    eprintln!(
        "{tag}: adding a third collector moved {} of {SCALE_OUT_CALLS} calls ({share:.3})",
        moved.len()
    );
    assert!(
        (0.25..=0.42).contains(&share),
        "adding a third collector moved {share:.3} of the calls, not about 1/3"
    );
}

// ---------------------------------------------------------------------------------------
// Running a scenario.

/// What one run delivered.
struct Run {
    mode: Mode,
    /// Per collector name.
    got: BTreeMap<&'static str, Multiset>,
    /// The daemon's counters once the collectors were quiet.
    metrics: Metrics,
    /// Whether an XDP program was attached to fwd's `in0` while the daemon ran.
    xdp_attached: bool,
}

enum Sink {
    Udp(UdpCollector),
    Tcp(TcpCollector),
}

impl Sink {
    fn inbox(&self) -> &Inbox {
        match self {
            Sink::Udp(c) => c,
            Sink::Tcp(c) => c,
        }
    }

    /// Everything still unread; a TCP collector closes its connections.
    fn finish(self) -> Vec<Vec<u8>> {
        match self {
            Sink::Udp(c) => c.close(),
            Sink::Tcp(c) => c.stop(),
        }
    }
}

/// Builds a topology, starts the collectors and `hepfwd --mode MODE` on the scenario's
/// configuration, sends its sequence from snd, and collects what arrived.
fn deliver(tag: &str, s: &Scenario, mode: Mode) -> Run {
    let t0 = Instant::now();
    let topo = Topology::new(tag);
    let sinks: Vec<(&'static str, Sink)> = s
        .collectors
        .iter()
        .map(|c| {
            let sink = match c.transport {
                Transport::Udp => Sink::Udp(topo.udp_collector(c.name, c.ip, c.port)),
                Transport::Tcp => Sink::Tcp(topo.tcp_collector(c.name, c.ip, c.port)),
            };
            (c.name, sink)
        })
        .collect();
    topo.warm_neighbours();
    let daemon = topo.hepfwd(mode, &s.config);
    let xdp_attached = topo.xdp_attached(Ns::Fwd, IF_IN);
    let (agent, agent2) = (topo.agent(SND), topo.agent(SND2));
    for p in &s.sends {
        let a = if p.from == SND { &agent } else { &agent2 };
        a.send_all(LISTEN, std::slice::from_ref(&p.bytes));
    }
    let mut got: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, sink) in &sinks {
        got.insert(name, sink.inbox().drain(QUIET));
    }
    let metrics = daemon.metrics();
    // Stopping the daemon drains its TCP queues; then the collectors give the rest.
    drop(daemon);
    for (name, sink) in sinks {
        got.get_mut(name)
            .expect("a collector")
            .extend(sink.finish());
    }
    eprintln!("{tag}: --mode {mode} took {:.1?}", t0.elapsed());
    Run {
        mode,
        got: got.into_iter().map(|(n, v)| (n, multiset(v))).collect(),
        metrics,
        xdp_attached,
    }
}

/// The scenario through `--mode userspace` and `--mode xdp`: the same HEP bytes at the
/// same collectors (and both are what the scenario expects). Returns both runs.
fn assert_parity(tag: &str, s: &Scenario) -> (Run, Run) {
    let user = deliver(&format!("{tag}-pu"), s, Mode::Userspace);
    let xdp = deliver(&format!("{tag}-px"), s, Mode::Xdp);
    assert!(xdp.xdp_attached, "--mode xdp attached nothing to {IF_IN}");
    assert!(
        user.got.values().all(|m| !m.is_empty()),
        "every collector receives something (else parity proves little)"
    );
    for c in &s.collectors {
        assert_same(
            &format!("{}: --mode xdp against --mode userspace", c.name),
            &xdp.got[c.name],
            &user.got[c.name],
        );
    }
    s.assert_delivered(&user);
    (user, xdp)
}

// ---------------------------------------------------------------------------------------
// Assertions.

fn multiset(v: Vec<Vec<u8>>) -> Multiset {
    let mut m = Multiset::new();
    for p in v {
        *m.entry(p).or_insert(0) += 1;
    }
    m
}

/// The correlation key of a HEPv3 packet as the tests write it: chunk 0x0011, else the
/// SIP Call-ID.
fn key_of(p: &[u8]) -> String {
    let chunks = chunks_of(p);
    if let Some((_, _, v)) = chunks.iter().find(|c| (c.0, c.1) == (0, 0x0011)) {
        return String::from_utf8_lossy(v).into_owned();
    }
    let payload = chunks
        .iter()
        .find(|c| (c.0, c.1) == (0, 0x000f))
        .map(|c| String::from_utf8_lossy(&c.2).into_owned())
        .unwrap_or_default();
    payload
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap_or("?")
        .to_string()
}

/// A packet in one line, for failure messages.
fn describe(p: &[u8]) -> String {
    let chunks = chunks_of(p);
    let u = |t: u16| {
        chunks
            .iter()
            .find(|c| (c.0, c.1) == (0, t))
            .map(|c| c.2.iter().fold(0u64, |a, b| a << 8 | u64::from(*b)))
    };
    format!(
        "proto {:?} capture {:?} key {:?} ({} bytes)",
        u(0x000b),
        u(0x000c),
        key_of(p),
        p.len()
    )
}

fn list(v: Vec<String>) -> String {
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join("\n  ")
    }
}

/// `got` equals `want` (multisets of HEP bytes); the message lists the differences.
fn assert_same(what: &str, got: &Multiset, want: &Multiset) {
    if got == want {
        return;
    }
    let diff = |x: &Multiset, y: &Multiset| -> Vec<String> {
        x.iter()
            .filter_map(|(p, n)| {
                let m = y.get(p).copied().unwrap_or(0);
                (*n > m).then(|| format!("{} × {}", n - m, describe(p)))
            })
            .collect()
    };
    panic!(
        "{what}: got {} packets, expected {}\nmissing:\n  {}\nunexpected:\n  {}",
        got.values().sum::<usize>(),
        want.values().sum::<usize>(),
        list(diff(want, got)),
        list(diff(got, want))
    );
}

/// Call stickiness, independently of the expected model: every key `is_call` accepts
/// arrived at one of `a` and `b` only, and both took calls.
fn assert_call_sticky(run: &Run, a: &str, b: &str, is_call: impl Fn(&str) -> bool) {
    let keys = |name: &str| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (p, n) in &run.got[name] {
            let k = key_of(p);
            if is_call(&k) {
                *m.entry(k).or_insert(0) += n;
            }
        }
        m
    };
    let (ka, kb) = (keys(a), keys(b));
    let both: Vec<&String> = ka.keys().filter(|k| kb.contains_key(*k)).collect();
    assert!(both.is_empty(), "calls split over {a} and {b}: {both:?}");
    assert!(
        !ka.is_empty() && !kb.is_empty(),
        "both collectors take calls: {} at {a}, {} at {b}",
        ka.len(),
        kb.len()
    );
}

/// `--mode userspace`: no XDP, no `path="xdp"` sample, and the daemon received every
/// packet sent.
fn assert_user_counters(m: &Metrics, s: &Scenario) {
    assert!(
        m.samples
            .iter()
            .all(|x| x.labels.get("path").map(String::as_str) != Some("xdp")),
        "--mode userspace reports path=\"xdp\" samples"
    );
    assert_eq!(
        m.require("hepfwd_received_total", &[("path", "user")]),
        s.sends.len() as u64,
        "the daemon's sockets receive everything in userspace mode"
    );
}

/// The kernel's decisions (`hepfwd_xdp_packets_total{path="xdp"}` by `counter`).
#[derive(Debug)]
struct Kernel(BTreeMap<String, u64>);

impl Kernel {
    fn get(&self, counter: &str) -> u64 {
        self.0.get(counter).copied().unwrap_or(0)
    }

    /// Packets handed up to the daemon by a decision (`pass_*`, a steer the kernel could
    /// not complete, too large for its scratch buffer).
    fn passed_up(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with("pass_") || *k == "steer_fallback" || *k == "too_large")
            .map(|(_, v)| v)
            .sum()
    }

    /// Packets the kernel finished with itself.
    fn handled(&self) -> u64 {
        [
            "steered",
            "mirrored",
            "route_drop",
            "sampled_out",
            "auth_failed",
            "not_allowed",
        ]
        .iter()
        .map(|c| self.get(c))
        .sum()
    }
}

/// `--mode xdp`: the program is attached, every packet sent was a HEPv3 packet to the
/// kernel, each got one decision, no steer fell back to the daemon (the neighbours were
/// warm), and the daemon's sockets received exactly the packets the kernel passed up,
/// none it steered, mirrored or dropped.
fn assert_kernel_accounting(run: &Run, s: &Scenario) -> Kernel {
    let m = &run.metrics;
    assert!(run.xdp_attached, "--mode xdp attached nothing to {IF_IN}");
    let k = Kernel(
        m.matching("hepfwd_xdp_packets_total", &[("path", "xdp")])
            .filter_map(|x| Some((x.labels.get("counter")?.clone(), x.value as u64)))
            .collect(),
    );
    assert!(
        !k.0.is_empty(),
        "no hepfwd_xdp_packets_total{{path=\"xdp\"}} in /metrics; names: {:?}",
        m.names()
    );
    eprintln!("kernel decisions: {:?}", k.0);
    let sent = s.sends.len() as u64;
    assert_eq!(
        k.get("hep_v3"),
        sent,
        "every packet reached XDP as HEPv3: {k:?}"
    );
    assert_eq!(
        k.get("steer_fallback"),
        0,
        "warm neighbours, no fallback: {k:?}"
    );
    assert_eq!(
        k.handled() + k.passed_up(),
        sent,
        "one decision per packet: {k:?}"
    );
    assert_eq!(
        m.get("hepfwd_received_total", &[("path", "user")]),
        k.passed_up(),
        "the daemon's sockets saw exactly what the kernel passed up: {k:?}"
    );
    k
}

// ---------------------------------------------------------------------------------------
// Host names in the kernel path.

/// `--mode xdp` with a destination by host name (`[resolver] hosts_file`): the kernel
/// steers to the address the name has; when the name moves (COL_A → COL_B) the daemon
/// re-installs the kernel tables and the kernel steers the rest to the new address,
/// every packet at one of the two and the later ones at the new one.
#[test]
fn a_host_name_that_moves_re_installs_the_kernel_tables() {
    if !privileged::available("a_host_name_that_moves_re_installs_the_kernel_tables") {
        return;
    }
    let topo = Topology::new("hn-x");
    let a = topo.udp_collector("homer@a", COL_A, 9061);
    let b = topo.udp_collector("homer@b", COL_B, 9061);
    topo.warm_neighbours();
    let dir = hepfwd_tests::peers::TestDir::new("hn-x-hosts").expect("a test dir");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("{COL_A} homer.lab\n")).expect("write hosts");
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:9100\"\n\n[[listener]]\nname = \"agents\"\nudp = \"{LISTEN}\"\n\n[xdp]\ninterfaces = [\"in0\"]\nattach = \"native\"\n\n[resolver]\nhosts_file = \"{}\"\nresolve_interval = \"1s\"\n\n[[destination]]\nname = \"homer\"\naddress = \"homer.lab:9061\"\n\n[default]\nforward = [\"homer\"]\n",
        hosts.display()
    );
    let d = topo.hepfwd(Mode::Xdp, &config);
    assert!(topo.xdp_attached(Ns::Fwd, IF_IN), "XDP is not attached");
    let agent = topo.agent(SND);
    let first: Vec<Vec<u8>> = (0..10).map(|i| Pkt::rtcp("hn", i).encode()).collect();
    agent.send_all(LISTEN, &first);
    assert_eq!(
        multiset(a.take(10, Duration::from_secs(5))),
        multiset(first)
    );
    let steered = |d: &hepfwd_tests::daemon::Daemon| {
        d.metrics()
            .get("hepfwd_xdp_packets_total", &[("counter", "steered")])
    };
    assert_eq!(steered(&d), 10, "the kernel steered the first packets");
    std::fs::write(&hosts, format!("{COL_B} homer.lab\n")).expect("write hosts");
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        let p = Pkt::rtcp("hn", 100 + sent.len() as u32).encode();
        agent.send_all(LISTEN, std::slice::from_ref(&p));
        sent.push(p);
        if let Some(p) = b.recv(Duration::from_millis(50)) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the name moved, the packets did not"
        );
    };
    let later: Vec<Vec<u8>> = (0..10)
        .map(|i| Pkt::rtcp("hn", 1000 + i).encode())
        .collect();
    agent.send_all(LISTEN, &later);
    let mut at_b = vec![moved];
    at_b.extend(b.drain(QUIET));
    let at_a = a.drain(QUIET);
    assert_eq!(
        at_a.len() + at_b.len(),
        sent.len() + later.len(),
        "one copy of each"
    );
    for p in &later {
        assert!(
            at_b.contains(p),
            "a packet after the move went to the old address"
        );
    }
    // The kernel did it: every packet steered in XDP, none passed up.
    assert_eq!(steered(&d), 10 + (sent.len() + later.len()) as u64);
    assert_eq!(
        d.metrics()
            .get("hepfwd_received_total", &[("path", "user")]),
        0,
        "packets reached the daemon's sockets"
    );
}
