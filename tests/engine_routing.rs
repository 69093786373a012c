//! Routing of the userspace engine, end to end through the `hepfwd` binary on loopback:
//! the reference example as its comments say, every match key, first match wins,
//! `continue`, `[default]` and unrouted packets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

use hep_common::correlation::key_hash;
use hep_common::select::{rendezvous_pick, sample_keep};
use hepfwd_tests::collector::{
    Agent, Inbox, QUIET, TcpCollector, UdpCollector, WAIT, expect_all_silent, sorted,
};
use hepfwd_tests::daemon::{Daemon, ONE_WORKER, Ports, udp_destination, udp_listener};
use hepfwd_tests::hepfwd::{hepfwd_bin, workspace_root};
use hepfwd_tests::hepgen::{ModelEdit, Pkt, chunks_of, model_rewrite, packet_of};

fn replace_once(src: &str, from: &str, to: &str) -> String {
    assert_eq!(
        src.matches(from).count(),
        1,
        "{from:?} must occur exactly once in config/example.toml"
    );
    src.replacen(from, to, 1)
}

/// config/example.toml with its addresses moved to loopback: the listener on
/// 127.0.0.1:listen, the allow list's 198.18.0.0/15 → 127.0.0.0/29 (127.0.0.9 is outside),
/// homer-a and homer-b → the test's collectors, the rtcp route's source
/// 198.18.1.0/24 → 127.0.0.2/32. Nothing else changes.
fn example_on_loopback(p: &Ports, a: SocketAddr, b: SocketAddr) -> String {
    let src = std::fs::read_to_string(workspace_root().join("config/example.toml"))
        .expect("read config/example.toml");
    let s = replace_once(
        &src,
        "listen = \"127.0.0.1:9100\"",
        &format!("listen = \"127.0.0.1:{}\"", p.admin),
    );
    let s = replace_once(
        &s,
        "udp = \"0.0.0.0:9060\"",
        &format!("udp = \"127.0.0.1:{}\"", p.listen),
    );
    let s = replace_once(&s, "\"198.18.0.0/15\"", "\"127.0.0.0/29\"");
    let s = replace_once(&s, "\"198.18.2.2:9061\"", &format!("\"{a}\""));
    let s = replace_once(&s, "\"198.18.2.3:9060\"", &format!("\"{b}\""));
    let s = replace_once(&s, "\"198.18.1.0/24\"", "\"127.0.0.2/32\"");
    assert!(!s.contains("198.18."), "an address was not moved: {s}");
    s
}

#[test]
fn reference_example_behaves_as_its_comments_say() {
    // `hepfwd check-config config/example.toml` validates it, as its header says.
    let out = Command::new(hepfwd_bin().unwrap())
        .args(["check-config", "config/example.toml"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("ok: 1 listener(s), 2 destination(s), 3 route(s)"),
        "{summary}"
    );

    let homer_a = UdpCollector::new("homer-a");
    let homer_b = TcpCollector::new("homer-b");
    let d = Daemon::start("example", |p| {
        example_on_loopback(p, homer_a.addr, homer_b.addr)
    });
    let agent = Agent::new();
    let agent2 = Agent::bind("127.0.0.2");
    let outsider = Agent::bind("127.0.0.9");
    let to = d.listen();

    let mut want_a: Vec<Vec<u8>> = Vec::new();
    let mut want_b: Vec<Vec<u8>> = Vec::new();
    let seeds = [key_hash(b"homer-a"), key_hash(b"homer-b")];
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

    // sip-calls: SIP whose Call-ID ends in @carrier.example, call-sticky over homer-a and
    // homer-b, rewritten. Some packets already carry a node name or the vendor chunk.
    let mut per_dest = [0u32; 2];
    let mut sip_calls = 0u64;
    for call in 0..40 {
        let call_id = format!("call-{call}@carrier.example");
        let dest = rendezvous_pick(key_hash(call_id.as_bytes()), &seeds).unwrap();
        per_dest[dest] += 1;
        for k in 0..3 {
            let mut p = Pkt::sip(&call_id, next()).auth("s3cret").capture_id(7);
            if k == 1 {
                p = p.node("agent-node");
            }
            if k == 2 {
                p = p.chunk(3, 0x0100, b"old").chunk(3, 0x0200, b"kept");
            }
            let bytes = p.encode();
            agent.send(to, &bytes);
            sip_calls += 1;
            let rewritten = packet_of(&model_rewrite(&chunks_of(&bytes), &edits));
            if dest == 0 {
                want_a.push(rewritten);
            } else {
                want_b.push(rewritten);
            }
        }
    }
    assert!(
        per_dest.iter().all(|n| *n >= 8),
        "the 40 calls do not use both collectors: {per_dest:?}"
    );

    // Not @carrier.example: the default pass-through to homer-a, unchanged (auth key kept).
    for i in 0..10 {
        let bytes = Pkt::sip(&format!("other-{i}@elsewhere.example"), next())
            .auth("s3cret")
            .encode();
        agent.send(to, &bytes);
        want_a.push(bytes);
    }

    // rtcp-sampled: RTCP, capture id 2000-2999, from 127.0.0.2; 25% of the calls kept whole.
    let mut sampled_out = 0u64;
    let mut kept_calls = 0;
    for call in 0..40u32 {
        let corr = format!("rtcp-call-{call}");
        let keep = sample_keep(key_hash(corr.as_bytes()), 250_000);
        kept_calls += usize::from(keep);
        for _ in 0..2 {
            let bytes = Pkt::rtcp(&corr, next())
                .capture_id(2000 + call * 20)
                .auth("s3cret")
                .encode();
            agent2.send(to, &bytes);
            if keep {
                want_b.push(bytes);
            } else {
                sampled_out += 1;
            }
        }
    }
    assert!((4..=18).contains(&kept_calls), "kept {kept_calls} of 40");
    // RTCP failing one of the three keys goes to the default.
    for (cap, from) in [(1999, &agent2), (3000, &agent2), (2500, &agent)] {
        let bytes = Pkt::rtcp("rtcp-unmatched", next())
            .capture_id(cap)
            .auth("s3cret")
            .encode();
        from.send(to, &bytes);
        want_a.push(bytes);
    }

    // drop-logs: protocol 100 is dropped and counted.
    for i in 0..7 {
        agent.send(
            to,
            &Pkt::log(&format!("log-{i}"), next())
                .auth("s3cret")
                .encode(),
        );
    }
    // The listener's auth key and allow list.
    for i in 0..3 {
        agent.send(to, &Pkt::sip(&format!("noauth-{i}"), next()).encode());
    }
    for i in 0..2 {
        outsider.send(
            to,
            &Pkt::sip(&format!("outside-{i}"), next())
                .auth("s3cret")
                .encode(),
        );
    }

    let got_a = homer_a.take(want_a.len(), WAIT);
    let got_b = homer_b.take(want_b.len(), WAIT);
    expect_all_silent(&[&homer_a.inbox, &homer_b.inbox], QUIET);
    assert!(sorted(got_a) == sorted(want_a), "homer-a got other bytes");
    assert!(sorted(got_b) == sorted(want_b), "homer-b got other bytes");

    let m = d.metrics();
    let route = |r: &str| m.get("hepfwd_route_matches_total", &[("route", r)]);
    assert_eq!(route("sip-calls"), sip_calls);
    assert_eq!(route("rtcp-sampled"), 80);
    assert_eq!(route("drop-logs"), 7);
    assert_eq!(route("default"), 13);
    assert_eq!(
        m.get("hepfwd_sampled_out_total", &[("route", "rtcp-sampled")]),
        sampled_out
    );
    assert_eq!(
        m.get("hepfwd_route_dropped_total", &[("route", "drop-logs")]),
        7
    );
    assert_eq!(
        m.get(
            "hepfwd_rejected_total",
            &[("listener", "agents"), ("reason", "auth")]
        ),
        3
    );
    assert_eq!(
        m.get(
            "hepfwd_rejected_total",
            &[("listener", "agents"), ("reason", "allow")]
        ),
        2
    );
    assert_eq!(m.get("hepfwd_unrouted_total", &[]), 0);
}

/// The routes of the match-key test: (name, match table), each forwarding to a collector
/// of its own.
const KEY_ROUTES: &[(&str, &str)] = &[
    ("proto-name", "proto = [\"rtcp\"]"),
    ("proto-number", "proto = [100]"),
    ("capture-id", "capture_id = [7, \"1000-1999\"]"),
    ("node-name", "node_name = [\"edge-7\"]"),
    ("source", "source = [\"127.0.0.2/32\", \"::1/128\"]"),
    (
        "inner-src",
        "inner_src = [\"10.1.0.0/16\", \"2001:db8:1::/48\"]",
    ),
    ("inner-dst", "inner_dst = [\"10.2.0.0/16\"]"),
    ("inner-port", "inner_port = [5070, \"6000-6010\"]"),
    ("corr-exact", "correlation = { exact = \"exact-call\" }"),
    (
        "corr-prefix",
        "correlation = { prefix = [\"pre-\", \"early-\"] }",
    ),
    ("corr-suffix", "correlation = { suffix = \"-suf\" }"),
    ("corr-domain", "correlation = { domain = \"dom.example\" }"),
];

#[test]
fn every_match_key_selects_exactly_its_packets() {
    let collectors: Vec<UdpCollector> = KEY_ROUTES
        .iter()
        .map(|(n, _)| UdpCollector::new(n))
        .collect();
    let fallback = UdpCollector::new("default");
    let d = Daemon::start("match-keys", |p| {
        let mut c = udp_listener(p);
        c += &format!(
            "\n[[listener]]\nname = \"agents6\"\nudp = \"[::1]:{}\"\n",
            p.listen6
        );
        for ((name, _), col) in KEY_ROUTES.iter().zip(&collectors) {
            c += &udp_destination(name, col.addr);
        }
        c += &udp_destination("fallback", fallback.addr);
        for (name, m) in KEY_ROUTES {
            c += &format!(
                "\n[[route]]\nname = \"{name}\"\nmatch = {{ {m} }}\nforward = [\"{name}\"]\n"
            );
        }
        c += "\n[default]\nforward = [\"fallback\"]\n";
        c + ONE_WORKER
    });
    let a1 = Agent::new();
    let a2 = Agent::bind("127.0.0.2");
    let a6 = Agent::bind("::1");
    let to4 = d.listen();
    let to6: SocketAddr = format!("[::1]:{}", d.ports.listen6).parse().unwrap();

    let mut n = 0u32;
    let mut seq = || {
        n += 1;
        n
    };
    let base = |s: u32| Pkt::sip(&format!("base-{s}@nowhere.test"), s);
    // (packet, sender, route that must take it; "default" for none)
    let mut cases: Vec<(Pkt, &Agent, &str)> = vec![
        (Pkt::rtcp("r-1", seq()), &a1, "proto-name"),
        (Pkt::log("l-1", seq()), &a1, "proto-number"),
        (base(seq()).proto(8), &a1, "default"),
        (base(seq()).capture_id(7), &a1, "capture-id"),
        (base(seq()).capture_id(1000), &a1, "capture-id"),
        (base(seq()).capture_id(1999), &a1, "capture-id"),
        (base(seq()).capture_id(2000), &a1, "default"),
        (base(seq()).capture_id(6), &a1, "default"),
        (base(seq()).node("edge-7"), &a1, "node-name"),
        (base(seq()).node("edge-70"), &a1, "default"),
        // First match wins: capture-id comes before node-name.
        (base(seq()).capture_id(7).node("edge-7"), &a1, "capture-id"),
        (base(seq()), &a2, "source"),
        (base(seq()), &a6, "source"),
        (base(seq()).src("10.1.2.3", 5060), &a1, "inner-src"),
        (
            base(seq())
                .src("2001:db8:1::9", 5060)
                .dst("2001:db8:2::1", 5060),
            &a1,
            "inner-src",
        ),
        (base(seq()).src("10.3.0.1", 5060), &a1, "default"),
        (base(seq()).dst("10.2.0.9", 5060), &a1, "inner-dst"),
        (base(seq()).src("10.9.0.1", 5070), &a1, "inner-port"),
        (base(seq()).dst("10.9.0.2", 6005), &a1, "inner-port"),
        (base(seq()).dst("10.9.0.2", 6010), &a1, "inner-port"),
        (base(seq()).dst("10.9.0.2", 6011), &a1, "default"),
        (Pkt::sip("exact-call", seq()), &a1, "corr-exact"),
        (Pkt::sip("exact-call-2", seq()), &a1, "default"),
        (Pkt::sip("pre-abc@x.test", seq()), &a1, "corr-prefix"),
        // Chunk 0x0011 is the key when present, not the Call-ID.
        (base(seq()).corr("early-1"), &a1, "corr-prefix"),
        (Pkt::sip("pr-abc@x.test", seq()), &a1, "default"),
        (Pkt::sip("abc-suf", seq()), &a1, "corr-suffix"),
        (Pkt::sip("abc-suffix", seq()), &a1, "default"),
        (Pkt::sip("a@b@dom.example", seq()), &a1, "corr-domain"),
        (Pkt::sip("a@sub.dom.example", seq()), &a1, "default"),
        (Pkt::sip("dom.example", seq()), &a1, "default"),
    ];
    // A few more of each, so a count cannot be right by accident.
    for _ in 0..2 {
        cases.push((Pkt::rtcp("r-2", seq()), &a2, "proto-name"));
        cases.push((base(seq()).capture_id(1500), &a2, "capture-id"));
    }

    let mut want: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, from, route) in &cases {
        let bytes = p.encode();
        let to = if std::ptr::eq(*from, &a6) { to6 } else { to4 };
        from.send(to, &bytes);
        want.entry(route).or_default().push(bytes);
    }
    for ((name, _), col) in KEY_ROUTES.iter().zip(&collectors) {
        let w = want.remove(name).unwrap_or_default();
        assert!(!w.is_empty(), "route {name} has no test packet");
        let got = col.take(w.len(), WAIT);
        assert!(sorted(got) == sorted(w), "route {name}: other bytes");
    }
    let w = want.remove("default").unwrap();
    let got = fallback.take(w.len(), WAIT);
    assert!(sorted(got) == sorted(w), "default: other bytes");
    let all: Vec<&Inbox> = collectors
        .iter()
        .chain([&fallback])
        .map(|c| &c.inbox)
        .collect();
    expect_all_silent(&all, QUIET);

    let m = d.metrics();
    for (name, _) in KEY_ROUTES {
        let expected = cases.iter().filter(|(_, _, r)| r == name).count() as u64;
        assert_eq!(
            m.get("hepfwd_route_matches_total", &[("route", name)]),
            expected,
            "route {name}"
        );
    }
    assert_eq!(
        m.get("hepfwd_route_matches_total", &[("route", "default")]),
        cases.iter().filter(|(_, _, r)| *r == "default").count() as u64
    );
    assert_eq!(
        m.get("hepfwd_received_total", &[("listener", "agents6")]),
        1
    );
}

#[test]
fn first_match_wins_and_continue_goes_on() {
    let names = ["a", "b", "c", "d", "fallback"];
    let cols: Vec<UdpCollector> = names.iter().map(|n| UdpCollector::new(n)).collect();
    let d = Daemon::start("continue", |p| {
        let mut c = udp_listener(p);
        for (n, col) in names.iter().zip(&cols) {
            c += &udp_destination(n, col.addr);
        }
        c += r#"
[[route]]
name = "all-sip"
match = { proto = ["sip"] }
forward = ["a"]
continue = true

[[route]]
name = "x-calls"
match = { correlation = { prefix = "x" } }
forward = ["b"]

[[route]]
name = "x-shadowed"
match = { correlation = { prefix = "x" } }
forward = ["c"]

[[route]]
name = "capture-5"
match = { capture_id = [5] }
forward = ["d"]

[default]
forward = ["fallback"]
"#;
        c + ONE_WORKER
    });
    let agent = Agent::new();
    let x_sip = Pkt::sip("x-1@t", 1).encode(); // all-sip (continue) then x-calls
    let y_sip_5 = Pkt::sip("y-1@t", 2).capture_id(5).encode(); // all-sip then capture-5
    let y_sip = Pkt::sip("y-2@t", 3).encode(); // all-sip only: taken, so not the default
    let x_rtcp = Pkt::rtcp("x-2", 4).encode(); // x-calls only
    let q_rtcp = Pkt::rtcp("q-1", 5).encode(); // nothing: the default
    for p in [&x_sip, &y_sip_5, &y_sip, &x_rtcp, &q_rtcp] {
        agent.send(d.listen(), p);
    }
    assert!(cols[0].take(3, WAIT) == vec![x_sip.clone(), y_sip_5.clone(), y_sip.clone()]);
    assert!(cols[1].take(2, WAIT) == vec![x_sip.clone(), x_rtcp.clone()]);
    assert!(cols[3].take(1, WAIT) == vec![y_sip_5.clone()]);
    assert!(cols[4].take(1, WAIT) == vec![q_rtcp.clone()]);
    let all: Vec<&Inbox> = cols.iter().map(|c| &c.inbox).collect();
    expect_all_silent(&all, QUIET);
    let m = d.metrics();
    let route = |r: &str| m.get("hepfwd_route_matches_total", &[("route", r)]);
    assert_eq!(
        [
            route("all-sip"),
            route("x-calls"),
            route("x-shadowed"),
            route("capture-5"),
            route("default")
        ],
        [3, 2, 0, 1, 1]
    );
}

#[test]
fn without_a_default_unrouted_packets_are_counted() {
    let col = UdpCollector::new("rtcp");
    let d = Daemon::start("unrouted", |p| {
        udp_listener(p)
            + &udp_destination("rtcp", col.addr)
            + "\n[[route]]\nname = \"rtcp-only\"\nmatch = { proto = [\"rtcp\"] }\nforward = [\"rtcp\"]\n"
    });
    let agent = Agent::new();
    for i in 0..5 {
        agent.send(d.listen(), &Pkt::sip(&format!("c{i}"), i).encode());
    }
    let rtcp: Vec<Vec<u8>> = (0..2).map(|i| Pkt::rtcp("r", i).encode()).collect();
    for p in &rtcp {
        agent.send(d.listen(), p);
    }
    assert!(sorted(col.expect(2, WAIT)) == sorted(rtcp));
    d.wait_counter("hepfwd_unrouted_total", &[("path", "user")], 5, WAIT);
    assert_eq!(
        d.counter("hepfwd_route_matches_total", &[("route", "rtcp-only")]),
        2
    );
}
