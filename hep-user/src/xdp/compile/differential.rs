//! The differential test of the two paths: for generated configurations (routes, match
//! keys, modes, sampling, drop, mirror, opaque and TCP routes, `[default]`) and generated
//! packets, whatever the kernel decides over the compiled tables ([`evaluate`], the code
//! `hep_xdp` runs) is exactly what the userspace engine does with the same packet. A pass
//! is always allowed: userspace then decides, as in the daemon.
//!
//! The checker is shown to fail: deliberately broken tables (a sampling rule inverted, a
//! protocol bit flipped, two hash seeds swapped) are each caught.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hep_common::abi::{KernelRoute, RouteAction, SteerMode, map_v4};
use hep_common::eval::{Verdict, evaluate};
use hep_common::facts::facts;
use hep_common::v3::{Hep3Message, Payload};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;

use super::tests::{Net, plan};
use super::*;
use crate::admin::stats::Stats;
use crate::engine::{DestinationHandle, Engine, Outbox, WorkerCtx};

/// The destinations every generated configuration has: three UDP, one TCP.
const DESTINATIONS: &str = r#"
[[listener]]
name = "l"
udp = "127.0.0.1:9060"
[[destination]]
name = "a"
address = "127.0.0.1:1"
[[destination]]
name = "b"
address = "127.0.0.1:2"
[[destination]]
name = "c"
address = "127.0.0.1:3"
[[destination]]
name = "t"
address = "127.0.0.1:4"
transport = "tcp"
"#;

/// Value pools: the match keys are drawn from the same pools as the packets, so routes
/// match often and first-match order matters.
const PROTOS: [u8; 4] = [1, 5, 100, 34];
const CAPTURE_RANGES: [&str; 4] = ["\"2000-2999\"", "2500", "\"0-100\"", "\"3000-4000\""];
const NODES: [&str; 3] = ["special", "x", "edge-1"];
const SOURCES: [&str; 4] = [
    "127.0.0.1/32",
    "127.0.0.2/32",
    "127.0.0.0/8",
    "198.18.0.0/15",
];
const INNER_SRCS: [&str; 3] = ["198.18.0.0/16", "10.0.0.0/8", "198.18.1.1/32"];
const INNER_DSTS: [&str; 2] = ["198.19.0.0/16", "10.0.0.2/32"];
const PORT_RANGES: [&str; 3] = ["5060", "\"5000-5099\"", "7000"];
const TARGETS: [&str; 4] = ["a", "b", "c", "t"];
const MODES: [&str; 4] = ["all", "hash", "round-robin", "failover"];
const SAMPLES: [Option<&str>; 4] = [None, None, Some("0.5"), Some("0.25")];
const SIP_METHODS: [&str; 3] = ["OPTIONS", "INVITE", "BYE"];
const SIP_STATUSES: [&str; 3] = ["\"4xx\"", "200", "\"503\""];
/// The first lines of the generated SIP payloads.
const FIRST_LINES: [&str; 6] = [
    "INVITE sip:b SIP/2.0",
    "OPTIONS sip:b SIP/2.0",
    "BYE sip:b SIP/2.0",
    "SIP/2.0 200 OK",
    "SIP/2.0 503 Service Unavailable",
    "SIP/2.0 404 Not Found",
];

/// One generated route: indices into the pools (a list of indices for each key given).
#[derive(Debug, Clone)]
struct RouteSpec {
    proto: Option<Vec<usize>>,
    capture: Option<Vec<usize>>,
    node: Option<Vec<usize>>,
    source: Option<Vec<usize>>,
    inner_src: Option<Vec<usize>>,
    inner_dst: Option<Vec<usize>>,
    port: Option<Vec<usize>>,
    correlation: bool,
    sip_method: Option<Vec<usize>>,
    sip_status: Option<Vec<usize>>,
    /// `None`: drop; else target indices and a mode.
    forward: Option<(Vec<usize>, usize)>,
    sample: usize,
}

fn some_of(n: usize) -> impl Strategy<Value = Option<Vec<usize>>> {
    prop_oneof![
        3 => Just(None),
        1 => proptest::collection::vec(0..n, 1..=2).prop_map(Some),
    ]
}

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        (
            some_of(PROTOS.len()),
            some_of(CAPTURE_RANGES.len()),
            some_of(NODES.len()),
            some_of(SOURCES.len()),
        ),
        (
            some_of(INNER_SRCS.len()),
            some_of(INNER_DSTS.len()),
            some_of(PORT_RANGES.len()),
            proptest::bool::weighted(0.1),
        ),
        prop_oneof![
            1 => Just(None),
            4 => (proptest::collection::vec(0..TARGETS.len(), 1..=3), 0..MODES.len()).prop_map(Some),
        ],
        (0..SAMPLES.len(), some_of(SIP_METHODS.len()), some_of(SIP_STATUSES.len())),
    )
        .prop_map(
            |(
                (proto, capture, node, source),
                (inner_src, inner_dst, port, correlation),
                forward,
                (sample, sip_method, sip_status),
            )| {
                RouteSpec {
                    sip_method,
                    sip_status,
                    proto,
                    capture,
                    node,
                    source,
                    inner_src,
                    inner_dst,
                    port,
                    correlation,
                    forward,
                    sample,
                }
            },
        )
}

/// `key = ["v", ...]` for the chosen pool entries (deduplicated), or nothing.
fn list(out: &mut Vec<String>, key: &str, pick: &Option<Vec<usize>>, pool: &[&str]) {
    if let Some(ix) = pick {
        let mut v: Vec<&str> = ix.iter().map(|i| pool[*i]).collect();
        v.dedup();
        let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        out.push(format!("{key} = [{}]", quoted.join(", ")));
    }
}

/// `key = [v, ...]` with the pool entries written as they are (TOML numbers or strings).
fn raw_list(out: &mut Vec<String>, key: &str, pick: &Option<Vec<usize>>, pool: &[&str]) {
    if let Some(ix) = pick {
        let mut v: Vec<&str> = ix.iter().map(|i| pool[*i]).collect();
        v.dedup();
        out.push(format!("{key} = [{}]", v.join(", ")));
    }
}

/// The configuration text of the generated routes and default.
fn config_text(routes: &[RouteSpec], default: Option<usize>) -> String {
    let mut s = String::from(DESTINATIONS);
    for (i, r) in routes.iter().enumerate() {
        let mut keys = Vec::new();
        if let Some(p) = &r.proto {
            let v: Vec<String> = p.iter().map(|i| PROTOS[*i].to_string()).collect();
            keys.push(format!("proto = [{}]", v.join(", ")));
        }
        raw_list(&mut keys, "capture_id", &r.capture, &CAPTURE_RANGES);
        list(&mut keys, "node_name", &r.node, &NODES);
        list(&mut keys, "source", &r.source, &SOURCES);
        list(&mut keys, "inner_src", &r.inner_src, &INNER_SRCS);
        list(&mut keys, "inner_dst", &r.inner_dst, &INNER_DSTS);
        raw_list(&mut keys, "inner_port", &r.port, &PORT_RANGES);
        list(&mut keys, "sip_method", &r.sip_method, &SIP_METHODS);
        raw_list(&mut keys, "sip_status", &r.sip_status, &SIP_STATUSES);
        if r.correlation {
            keys.push(r#"correlation = { suffix = "@x" }"#.to_string());
        }
        let _ = writeln!(s, "[[route]]\nname = \"r{i}\"");
        if !keys.is_empty() {
            let _ = writeln!(s, "match = {{ {} }}", keys.join(", "));
        }
        match &r.forward {
            None => {
                let _ = writeln!(s, "action = \"drop\"");
            }
            Some((targets, mode)) => {
                let mut t: Vec<&str> = targets.iter().map(|i| TARGETS[*i]).collect();
                t.sort_unstable();
                t.dedup();
                let quoted: Vec<String> = t.iter().map(|s| format!("{s:?}")).collect();
                let _ = writeln!(s, "forward = [{}]", quoted.join(", "));
                let _ = writeln!(s, "mode = \"{}\"", MODES[*mode]);
                if let Some(f) = SAMPLES[r.sample] {
                    let _ = writeln!(s, "sample = {f}");
                }
            }
        }
    }
    if let Some(d) = default {
        let _ = writeln!(s, "[default]\nforward = [\"{}\"]", TARGETS[d]);
    }
    s
}

/// A generated packet: indices into the pools.
#[derive(Debug, Clone, Copy)]
struct PacketSpec {
    proto: usize,
    call: u32,
    capture: usize,
    node: usize,
    sender: usize,
    inner_src: usize,
    inner_dst: usize,
    src_port: usize,
    with_correlation_chunk: bool,
    /// 0: plain SIP with a Call-ID; 1: the same SIP zlib-compressed (chunk 0x0010: the
    /// kernel passes it up when the route needs the key); 2: plain without a Call-ID (the
    /// flow key is hashed).
    payload: usize,
    /// Index into [`FIRST_LINES`].
    first_line: usize,
}

fn packet_spec() -> impl Strategy<Value = PacketSpec> {
    (
        (0..PROTOS.len(), 0..300u32, 0..4usize, 0..5usize),
        (0..2usize, 0..2usize, 0..2usize, 0..3usize, any::<bool>()),
        (0..3usize, 0..FIRST_LINES.len()),
    )
        .prop_map(
            |(
                (proto, call, capture, node),
                (sender, inner_src, inner_dst, src_port, corr),
                (payload, first_line),
            )| {
                PacketSpec {
                    proto,
                    call,
                    capture,
                    node,
                    sender,
                    inner_src,
                    inner_dst,
                    src_port,
                    with_correlation_chunk: corr,
                    payload,
                    first_line,
                }
            },
        )
}

/// Encodes `p` into `buf`; returns its length and sender.
fn encode(p: &PacketSpec, i: u32, buf: &mut [u8]) -> (usize, SocketAddr) {
    let call = format!("{}@x", p.call);
    let line = FIRST_LINES[p.first_line];
    let sip = if p.payload == 2 {
        format!("{line}\r\nVia: v\r\n\r\n")
    } else {
        format!("{line}\r\nCall-ID: {call}\r\n\r\n")
    };
    let zipped = {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(sip.as_bytes()).expect("deflate into a Vec");
        z.finish().expect("deflate into a Vec")
    };
    let inner_src = [Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(10, 0, 0, 1)][p.inner_src];
    let inner_dst = [Ipv4Addr::new(198, 19, 0, 9), Ipv4Addr::new(10, 0, 0, 2)][p.inner_dst];
    let node = [
        Some(&b"special"[..]),
        Some(&b"specia"[..]),
        Some(&b"x"[..]),
        Some(&b"edge-1"[..]),
        None,
    ][p.node];
    let m = Hep3Message {
        ip_proto: 17,
        src_ip: inner_src.into(),
        dst_ip: inner_dst.into(),
        src_port: [5060u16, 5001, 7000][p.src_port],
        dst_port: 5060,
        ts_sec: i,
        ts_usec: 0,
        proto_type: PROTOS[p.proto],
        capture_id: [2001u32, 2500, 50, 3500][p.capture],
        auth_key: None,
        correlation_id: p.with_correlation_chunk.then_some(call.as_bytes()),
        vlan_id: None,
        node_name: node,
        extra: &[],
        payload: if p.payload == 1 {
            Payload::Compressed(&zipped)
        } else {
            Payload::Plain(sip.as_bytes())
        },
    };
    let n = m.encode(buf).expect("a generated packet encodes");
    let sender = ["127.0.0.1:4000", "127.0.0.2:4000"][p.sender]
        .parse()
        .expect("a literal address");
    (n, sender)
}

/// Runs `packets` through the kernel's evaluation of `tables` and through the engine of
/// `plan`; the first disagreement, described, as the error.
fn check(plan: &Plan, tables: &KernelTables, packets: &[PacketSpec]) -> Result<Seen, String> {
    let stats = Arc::new(Stats::default());
    let handles: Vec<DestinationHandle> = plan
        .destinations
        .iter()
        .map(|d| DestinationHandle {
            plan: d.clone(),
            stats: stats.destination(&d.name),
            queue: None,
        })
        .collect();
    let engine = Engine::new(plan.clone(), 1, handles, stats, Instant::now());
    let mut ctx = WorkerCtx::new();
    let mut out = Outbox::new();
    let mut buf = vec![0u8; 1024];
    let mut seen = Seen::default();
    for (i, p) in packets.iter().enumerate() {
        let (n, sender) = encode(p, i as u32, &mut buf);
        let bytes = &buf[..n];
        let IpAddr::V4(s4) = sender.ip() else {
            return Err("generated senders are IPv4".into());
        };
        let f = facts(bytes, map_v4(s4.octets())).map_err(|e| format!("facts: {e}"))?;
        let verdict = evaluate(&tables.routes, &f, 0);
        engine.process(&mut ctx, 0, sender, bytes, &mut out);
        let mut sent: Vec<(String, Vec<u8>)> = out
            .items()
            .iter()
            .map(|it| {
                (
                    plan.destinations[it.dest].name.clone(),
                    out.bytes(it).to_vec(),
                )
            })
            .collect();
        sent.sort();
        out.clear();
        let targets = |r: &KernelRoute| -> Vec<String> {
            let mut v: Vec<String> = r.targets[..usize::from(r.n_targets)]
                .iter()
                .map(|d| tables.destination_names[*d as usize].clone())
                .collect();
            v.sort();
            v
        };
        let fail = |what: &str| {
            Err(format!(
                "packet {i} {p:?}: {what}: kernel {verdict:?}, engine sent to {:?}",
                sent.iter().map(|s| &s.0).collect::<Vec<_>>()
            ))
        };
        let decided_by = match verdict {
            Verdict::Drop { route }
            | Verdict::SampledOut { route }
            | Verdict::Steer { route, .. }
            | Verdict::Mirror { route } => Some(route),
            Verdict::Pass { .. } => None,
        };
        let sip_flags =
            hep_common::abi::match_flags::SIP_METHOD | hep_common::abi::match_flags::SIP_STATUS;
        if decided_by.is_some_and(|r| tables.routes[r].flags & sip_flags != 0) {
            seen.sip_route += 1;
        }
        match verdict {
            Verdict::Pass { reason, .. } => {
                seen.pass += 1;
                if reason == hep_common::eval::PassReason::KeyInUserspace {
                    seen.pass_key += 1;
                }
            }
            Verdict::Drop { .. } | Verdict::SampledOut { .. } => {
                if matches!(verdict, Verdict::Drop { .. }) {
                    seen.drop += 1;
                } else {
                    seen.sampled_out += 1;
                }
                if !sent.is_empty() {
                    return fail("the kernel drops");
                }
            }
            Verdict::Steer { route, dest } => {
                let r = &tables.routes[route];
                match r.mode {
                    m if m == SteerMode::Hash as u8 => seen.steer_hash += 1,
                    m if m == SteerMode::RoundRobin as u8 => seen.steer_round_robin += 1,
                    _ => seen.steer_single += 1,
                }
                let name = tables.destination_names[dest as usize].clone();
                if r.mode == SteerMode::RoundRobin as u8 {
                    // Round-robin positions are per CPU in the kernel and per worker in
                    // userspace: one copy to one of the route's targets, unchanged.
                    let ok =
                        sent.len() == 1 && targets(r).contains(&sent[0].0) && sent[0].1 == bytes;
                    if !ok {
                        return fail("round robin");
                    }
                } else if sent != vec![(name, bytes.to_vec())] {
                    return fail("steer");
                }
            }
            Verdict::Mirror { route } => {
                seen.mirror += 1;
                let r = &tables.routes[route];
                let want: Vec<(String, Vec<u8>)> = targets(r)
                    .into_iter()
                    .map(|t| (t, bytes.to_vec()))
                    .collect();
                if r.action != RouteAction::Mirror as u8 || sent != want {
                    return fail("mirror");
                }
            }
        }
    }
    Ok(seen)
}

/// How many packets got each kind of kernel decision.
#[derive(Debug, Default)]
struct Seen {
    pass: usize,
    drop: usize,
    sampled_out: usize,
    steer_single: usize,
    steer_hash: usize,
    steer_round_robin: usize,
    mirror: usize,
    /// Passes because the key is in a compressed payload.
    pass_key: usize,
    /// Decided in the kernel by a route matching on the SIP first line.
    sip_route: usize,
}

impl Seen {
    fn add(&mut self, o: &Seen) {
        self.pass += o.pass;
        self.drop += o.drop;
        self.sampled_out += o.sampled_out;
        self.steer_single += o.steer_single;
        self.steer_hash += o.steer_hash;
        self.steer_round_robin += o.steer_round_robin;
        self.mirror += o.mirror;
        self.pass_key += o.pass_key;
        self.sip_route += o.sip_route;
    }

    fn decided(&self) -> usize {
        self.drop
            + self.sampled_out
            + self.steer_single
            + self.steer_hash
            + self.steer_round_robin
            + self.mirror
    }
}

/// Runs 96 generated configurations with 150 generated packets each through [`check`],
/// the compiled tables first passed through `break_it`; the decisions seen, or the first
/// disagreement with its configuration. Run by hand (not the `proptest!` macro) so a test
/// can also show the generated cases reach every kind of kernel decision.
///
/// `seed`: a fixed generator seed (the same cases every run, for assertions about what the
/// cases reach), or `None` for new cases each run (wider exploration over many runs).
fn generated_check(
    seed: Option<[u8; 32]>,
    break_it: impl Fn(&mut KernelTables),
) -> Result<Seen, String> {
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = match seed {
        Some(seed) => proptest::test_runner::TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::ChaCha,
                &seed,
            ),
        ),
        None => proptest::test_runner::TestRunner::new(config),
    };
    let seen = std::cell::RefCell::new(Seen::default());
    let strategy = (
        proptest::collection::vec(route_spec(), 1..=6),
        proptest::option::of(0..TARGETS.len()),
        any::<bool>(),
        proptest::collection::vec(packet_spec(), 150),
    );
    let result = runner.run(&strategy, |(routes, default, kernel_mirrors, packets)| {
        let text = config_text(&routes, default);
        let p = plan(&text);
        let mut t = compile(&p, &mut Slots::default(), &Net, kernel_mirrors);
        break_it(&mut t);
        match check(&p, &t, &packets) {
            Ok(s) => {
                seen.borrow_mut().add(&s);
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(format!("{e}\nconfiguration:\n{text}"))),
        }
    });
    result.map_err(|e| e.to_string())?;
    Ok(seen.into_inner())
}

/// The seed of the reproducible pass.
const SEED: [u8; 32] = *b"hepfwd differential test seed 01";

/// Generated configurations and packets, the same every run: the kernel never contradicts
/// the engine, and the cases reach every kind of kernel decision.
#[test]
fn kernel_and_engine_agree_on_generated_configurations() {
    let seen = generated_check(Some(SEED), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        seen.drop > 0
            && seen.sampled_out > 0
            && seen.steer_single > 0
            && seen.steer_hash > 0
            && seen.steer_round_robin > 0
            && seen.mirror > 0
            && seen.pass > 0
            && seen.pass_key > 0
            && seen.sip_route > 0,
        "the generated cases miss a kind of decision: {seen:?}"
    );
}

/// New generated cases every run (a failure prints its configuration): the kernel never
/// contradicts the engine.
#[test]
fn kernel_and_engine_agree_on_new_generated_configurations() {
    generated_check(None, |_| {}).unwrap_or_else(|e| panic!("{e}"));
}

/// The generated test fails when the compiler gets a rule wrong: every protocol match
/// also takes protocol 5 (RTCP).
#[test]
fn the_generated_test_catches_a_broken_protocol_rule() {
    let e = generated_check(Some(SEED), |t| {
        for r in &mut t.routes {
            r.proto[0] |= 1 << 5;
        }
    })
    .expect_err("a broken protocol rule must be caught");
    assert!(e.contains("configuration:"), "{e}");
}

/// A configuration where every kind of kernel decision occurs, for the broken-table tests.
const BROKEN_BASE: &str = r#"
[[route]]
name = "logs"
match = { proto = [100] }
action = "drop"
[[route]]
name = "sip"
match = { proto = [1] }
forward = ["a", "b", "c"]
mode = "hash"
sample = 0.25
[default]
forward = ["c"]
"#;

fn broken_check(break_it: impl Fn(&mut KernelTables)) -> Result<Seen, String> {
    let p = plan(&format!("{DESTINATIONS}{BROKEN_BASE}"));
    let mut t = compile(&p, &mut Slots::default(), &Net, false);
    break_it(&mut t);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let packets = proptest::collection::vec(packet_spec(), 400)
        .new_tree(&mut runner)
        .map_err(|e| e.to_string())?
        .current();
    check(&p, &t, &packets)
}

#[test]
fn the_checker_accepts_the_compiled_tables() {
    let seen = broken_check(|_| {}).expect("the compiled tables agree");
    assert!(seen.decided() > 100, "only {seen:?}");
}

#[test]
fn the_checker_catches_an_inverted_sampling_rule() {
    let e = broken_check(|t| t.routes[1].sample_ppm = 1_000_000 - t.routes[1].sample_ppm)
        .expect_err("an inverted sample rule must be caught");
    assert!(e.contains("packet"), "{e}");
}

#[test]
fn the_checker_catches_a_flipped_protocol_bit() {
    // The drop route now also takes protocol 5 (RTCP), which the engine forwards.
    let e = broken_check(|t| t.routes[0].proto[0] |= 1 << 5)
        .expect_err("a wrong protocol bit must be caught");
    assert!(e.contains("the kernel drops"), "{e}");
}

#[test]
fn the_checker_catches_swapped_hash_seeds() {
    let e =
        broken_check(|t| t.routes[1].seeds.swap(0, 1)).expect_err("swapped seeds must be caught");
    assert!(e.contains("steer"), "{e}");
}

/// Call-ID → collector pairs written down once (FNV-1a + fmix64 of the Call-ID, rendezvous
/// over the seeds of `a`, `b`, `c`, which are the key hashes of their names): a change to
/// the hash, the seeds or the pick moves them, and this test fails instead of moving with
/// the code.
#[test]
fn call_ids_go_to_pinned_collectors() {
    let p = plan(&format!(
        "{DESTINATIONS}[[route]]\nname = \"sip\"\nmatch = {{ proto = [1] }}\nforward = [\"a\", \"b\", \"c\"]\nmode = \"hash\"\n"
    ));
    let t = compile(&p, &mut Slots::default(), &Net, false);
    let mut got = BTreeMap::new();
    for (call, _) in PINNED {
        let mut buf = [0u8; 1024];
        let sip = format!("INVITE sip:b SIP/2.0\r\nCall-ID: {call}\r\n\r\n");
        let msg = Hep3Message {
            ip_proto: 17,
            src_ip: Ipv4Addr::new(198, 18, 1, 1).into(),
            dst_ip: Ipv4Addr::new(198, 19, 0, 9).into(),
            src_port: 5060,
            dst_port: 5060,
            ts_sec: 0,
            ts_usec: 0,
            proto_type: 1,
            capture_id: 1,
            auth_key: None,
            correlation_id: None,
            vlan_id: None,
            node_name: None,
            extra: &[],
            payload: Payload::Plain(sip.as_bytes()),
        };
        let n = msg.encode(&mut buf).expect("encode");
        let f = facts(&buf[..n], map_v4([127, 0, 0, 1])).expect("facts");
        let Verdict::Steer { dest, .. } = evaluate(&t.routes, &f, 0) else {
            panic!("{call}: not steered");
        };
        got.insert(*call, t.destination_names[dest as usize].clone());
    }
    let want: BTreeMap<&str, String> = PINNED.iter().map(|(c, d)| (*c, (*d).to_string())).collect();
    assert_eq!(got, want);
}

/// The pinned pairs of [`call_ids_go_to_pinned_collectors`].
const PINNED: &[(&str, &str)] = &[
    ("a84b4c76e66710@pc33.atlanta.example.com", "b"),
    ("3848276298220188511@atlanta.example.com", "a"),
    ("call-0001@carrier.example", "b"),
    ("call-0002@carrier.example", "c"),
    ("1-12345@198.18.0.1", "c"),
    ("f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "c"),
];
