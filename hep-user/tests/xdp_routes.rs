//! Every decision of `hep_xdp` with route tables installed, on crafted frames run with
//! `BPF_PROG_TEST_RUN` as if received on `in0` of a lab namespace (so `bpf_fib_lookup`
//! answers from real routes and permanent neighbours): steer (XDP_REDIRECT to another
//! interface, XDP_TX on the same one, IPv6), call-sticky hashing, drop, call sampling,
//! auth key, allow list, pass for userspace actions and opaque routes, fallback when no
//! neighbour is known, and the frames the kernel must not touch (VLAN steer, invalid HEP).
//!
//! Steered frames are checked byte by byte against a rewrite computed here from scratch
//! (checksums summed in full, not incrementally); passed and dropped frames must come back
//! unchanged. Global, per-route and per-destination counters are checked for each case.
//!
//! The cases are rows of a table ([`Case`]) run by one driver ([`run_cases`]): every row
//! runs, and the test fails at the end naming every failed row and why.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN); skips loudly otherwise, fails under
//! `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;
#[path = "common/steer_min.rs"]
mod steer_min;

use std::net::IpAddr;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use aya::{TestRun as _, TestRunOptions};
use hep_common::abi::{
    DEST_COUNTERS_MAP, DestCounter, MIRROR_META_MAGIC, ROUTE_COUNTERS_MAP, RouteCounter,
};
use hep_common::correlation::key_hash;
use hep_common::select::{rendezvous_pick, sample_keep};
use hep_user::xdp::compile::{HostNet, KernelTables, Slots, compile};
use hep_user::xdp::{LoadOptions, XdpProgram};
use hepfwd_harness::lab::{IN_IFINDEX, IN_MAC, Lab, OUT_MAC, neighbour_mac};
use hepfwd_harness::message::TestMessage;
use steer_min::xdp_ctx;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CONFIG: &str = r#"
[[listener]]
name = "agents"
udp = "198.18.1.2:9060"
auth_key = "s3cret"
allow = ["198.18.1.0/24", "fd00:18:1::/64"]
[[listener]]
name = "agents6"
udp = "[fd00:18:1::2]:9060"
auth_key = "s3cret"
allow = ["fd00:18:1::/64"]

[[destination]]
name = "a"
address = "198.18.2.2:9061"
[[destination]]
name = "b"
address = "198.18.2.4:9062"
[[destination]]
name = "nearby"
address = "198.18.1.5:9063"
[[destination]]
name = "no-neighbour"
address = "198.18.2.3:9064"
[[destination]]
name = "a6"
address = "[fd00:18:2::2]:9065"
[[destination]]
name = "tcp"
address = "198.18.2.2:9070"
transport = "tcp"
[[destination]]
name = "a6-keyed"
address = "[fd00:18:2::2]:9066"
set_auth_key = "t0psec"
[[destination]]
name = "a6-other"
address = "[fd00:18:2::2]:9067"

[[route]]
name = "logs"
match = { proto = [100] }
action = "drop"
[[route]]
name = "calls"
match = { capture_id = [2500] }
forward = ["a", "b"]
mode = "hash"
[[route]]
name = "sampled"
match = { capture_id = [3000] }
forward = ["a"]
sample = 0.5
[[route]]
name = "near"
match = { capture_id = [4000] }
forward = ["nearby"]
[[route]]
name = "unresolved"
match = { capture_id = [5000] }
forward = ["no-neighbour"]
[[route]]
name = "v6"
match = { capture_id = [6000] }
forward = ["a6"]
[[route]]
name = "rewrite"
match = { capture_id = [7000] }
forward = ["a"]
rewrite = [ { set = "capture_id", value = 1 } ]
[[route]]
name = "rewrite-v6"
match = { capture_id = [6001] }
forward = ["a6-keyed"]
rewrite = [ { set = "node_name", value = "edge-0" }, { set = "node_name", value = "edge-9" } ]
[[route]]
name = "strip"
match = { capture_id = [7002] }
forward = ["a"]
rewrite = [ { delete = "auth_key" } ]
[[route]]
name = "rr"
match = { capture_id = [9000] }
forward = ["a", "b"]
mode = "round-robin"
[[route]]
name = "by-node"
match = { node_name = ["edge-7", "edge-8"] }
forward = ["b"]
[[route]]
name = "mirror"
match = { capture_id = [8000] }
forward = ["a", "b"]
mode = "all"
[[route]]
name = "mirror6"
match = { capture_id = [8001] }
forward = ["a6", "a6-other"]
mode = "all"
[[route]]
name = "mirror-set"
match = { capture_id = [8002] }
forward = ["a", "b"]
mode = "all"
rewrite = [ { set = "capture_id", value = 1 } ]
[[route]]
name = "mirror6-set"
match = { capture_id = [8003] }
forward = ["a6", "a6-other"]
mode = "all"
rewrite = [ { set = "node_name", value = "edge-9" } ]
[[route]]
name = "to-tcp"
match = { capture_id = [7001] }
forward = ["tcp"]
[[route]]
name = "keepalives"
match = { sip_method = ["OPTIONS", "NOTIFY"] }
action = "drop"
[[route]]
name = "server-errors"
match = { sip_status = ["5xx", 486] }
forward = ["b"]
OPAQUE
[default]
forward = ["a"]
"#;

const OPAQUE_ROUTE: &str = r#"[[route]]
name = "by-correlation"
match = { correlation = { suffix = "@lab" } }
forward = ["b"]
"#;

/// One HEP packet's variable parts.
#[derive(Clone, Copy)]
struct Hep<'a> {
    proto: u8,
    capture: u32,
    call_id: &'a str,
    auth: Option<&'a [u8]>,
    node: Option<&'a [u8]>,
}

const SIP: Hep<'static> = Hep {
    proto: 1,
    capture: 2001,
    call_id: "call-1@lab",
    auth: Some(b"s3cret"),
    node: None,
};

/// The HEPv3 bytes of `h` (the shared test message: a SIP INVITE carrying the Call-ID).
fn hep(h: Hep<'_>) -> Vec<u8> {
    TestMessage::sip(h.call_id)
        .proto(h.proto)
        .capture_id(h.capture)
        .timestamp(1_700_000_000, 7)
        .auth_key(h.auth)
        .node_name(h.node)
        .encode()
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ipv4_csum(h: &[u8]) -> u16 {
    let mut h = h.to_vec();
    h[10] = 0;
    h[11] = 0;
    fold(sum16(&h))
}

fn udp6_csum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut u = udp.to_vec();
    u[6] = 0;
    u[7] = 0;
    let len = u.len() as u32;
    let c = fold(sum16(src) + sum16(dst) + (len >> 16) + (len & 0xffff) + 17 + sum16(&u));
    if c == 0 { 0xffff } else { c }
}

/// An Ethernet frame to `in0` carrying UDP from `src:5070` to `dst:9060` with `payload`;
/// `vlan` adds an 802.1Q tag. IPv4 or IPv6 by the addresses; all checksums valid.
fn frame(src: IpAddr, dst: IpAddr, payload: &[u8], vlan: bool) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&5070u16.to_be_bytes());
    udp.extend_from_slice(&9060u16.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut f = Vec::new();
    f.extend_from_slice(&IN_MAC);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xa1]);
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
            h[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = ipv4_csum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            // A sender's UDP checksum over IPv4 (the kernel's output sets 0).
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let c = udp6_csum(&s.octets(), &d.octets(), &udp);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            h.extend_from_slice(&[17, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            f.extend_from_slice(&h);
        }
        _ => unreachable!("mixed families"),
    }
    f.extend_from_slice(&udp);
    f
}

fn v4(a: &str) -> IpAddr {
    a.parse().expect("address")
}

fn ip6(a: &str) -> IpAddr {
    a.parse().expect("address")
}

/// What the kernel must make of `input` when it steers it to `collector:port` from
/// `source`, with next hop MAC `dmac` out of an interface with MAC `smac`: computed in
/// full here.
fn steered(
    input: &[u8],
    source: IpAddr,
    collector: IpAddr,
    port: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Vec<u8> {
    let mut f = input.to_vec();
    f[0..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&smac);
    match (source, collector) {
        (IpAddr::V4(s), IpAddr::V4(c)) => {
            // The header length from IHL: options stay as they are.
            let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
            f[14 + 8] -= 1;
            f[14 + 12..14 + 16].copy_from_slice(&s.octets());
            f[14 + 16..14 + 20].copy_from_slice(&c.octets());
            let csum = ipv4_csum(&f[14..l4]);
            f[14 + 10..14 + 12].copy_from_slice(&csum.to_be_bytes());
            f[l4..l4 + 2].copy_from_slice(&9060u16.to_be_bytes());
            f[l4 + 2..l4 + 4].copy_from_slice(&port.to_be_bytes());
            f[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        }
        (IpAddr::V6(s), IpAddr::V6(c)) => {
            f[14 + 7] -= 1;
            f[14 + 8..14 + 24].copy_from_slice(&s.octets());
            f[14 + 24..14 + 40].copy_from_slice(&c.octets());
            f[54..56].copy_from_slice(&9060u16.to_be_bytes());
            f[56..58].copy_from_slice(&port.to_be_bytes());
            let csum = udp6_csum(&s.octets(), &c.octets(), &f[54..]);
            f[60..62].copy_from_slice(&csum.to_be_bytes());
        }
        _ => unreachable!("mixed families"),
    }
    f
}

/// `input` (IPv6) steered out of `out0` to the lab's IPv6 collector `fd00:18:2::2` at
/// `port`, from `fd00:18:2::1`.
fn steered_out6(input: &[u8], port: u16) -> Vec<u8> {
    steered(
        input,
        "fd00:18:2::1".parse().expect("address"),
        "fd00:18:2::2".parse().expect("address"),
        port,
        OUT_MAC,
        neighbour_mac("fd00:18:2::2"),
    )
}

/// Test-runs `frame` as received on `in0` (call from inside the lab); returns the action
/// and the frame as the program left it.
fn run(xdp: &mut XdpProgram, frame: &[u8]) -> (u32, Vec<u8>) {
    let ctx = xdp_ctx(frame.len(), IN_IFINDEX);
    let mut out = vec![0u8; frame.len() + 256];
    let r = xdp
        .program_mut()
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn per_cpu_sum(xdp: &XdpProgram, map: &str, index: u32) -> u64 {
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(xdp.ebpf_for_tests().map(map).expect("map")).expect("per-cpu");
    m.get(&index, 0).expect("read").iter().sum()
}

/// Counter readings a case checks.
struct Reading {
    global: hep_user::xdp::XdpCounters,
    route: Vec<(String, [u64; RouteCounter::COUNT])>,
    dest: Vec<(String, [u64; DestCounter::COUNT])>,
}

fn read(xdp: &XdpProgram, slots: &Slots) -> Reading {
    let route = slots
        .routes()
        .map(|(name, slot)| {
            let mut v = [0u64; RouteCounter::COUNT];
            for (c, x) in v.iter_mut().enumerate() {
                *x = per_cpu_sum(
                    xdp,
                    ROUTE_COUNTERS_MAP,
                    slot * RouteCounter::COUNT as u32 + c as u32,
                );
            }
            (name.to_string(), v)
        })
        .collect();
    let dest = slots
        .destinations()
        .map(|(name, slot)| {
            let mut v = [0u64; DestCounter::COUNT];
            for (c, x) in v.iter_mut().enumerate() {
                *x = per_cpu_sum(
                    xdp,
                    DEST_COUNTERS_MAP,
                    slot * DestCounter::COUNT as u32 + c as u32,
                );
            }
            (name.to_string(), v)
        })
        .collect();
    Reading {
        global: xdp.counters().expect("counters"),
        route,
        dest,
    }
}

/// What changed between two readings: global counters by name, and
/// `route/<name>/<counter>` / `dest/<name>/<counter>` entries.
fn changes(before: &Reading, after: &Reading) -> Vec<String> {
    let mut v = Vec::new();
    let d = after.global.delta(&before.global);
    for (name, n) in d.iter() {
        if n != 0 {
            v.push(format!("{name}={n}"));
        }
    }
    const RC: [&str; RouteCounter::COUNT] = [
        "matched",
        "dropped",
        "sampled_out",
        "steered",
        "mirrored",
        "passed",
    ];
    for ((name, a), (_, b)) in after.route.iter().zip(&before.route) {
        for i in 0..RouteCounter::COUNT {
            if a[i] != b[i] {
                v.push(format!("route/{name}/{}={}", RC[i], a[i] - b[i]));
            }
        }
    }
    const DC: [&str; DestCounter::COUNT] = ["sent", "fallback", "failed"];
    for ((name, a), (_, b)) in after.dest.iter().zip(&before.dest) {
        for i in 0..DestCounter::COUNT {
            if a[i] != b[i] {
                v.push(format!("dest/{name}/{}={}", DC[i], a[i] - b[i]));
            }
        }
    }
    v.sort();
    v
}

/// Compiles CONFIG (with or without the opaque route) inside the lab (so the node's
/// source addresses come from the lab's routes) and installs it.
fn install(xdp: &mut XdpProgram, slots: &mut Slots, opaque: bool, mirrors: bool) -> KernelTables {
    let text = CONFIG.replace("OPAQUE", if opaque { OPAQUE_ROUTE } else { "" });
    let plan = hep_user::config::compile(Path::new("lab.toml"), &text).expect("config");
    let t = compile(&plan, slots, &HostNet, mirrors);
    xdp.install(&t).expect("install");
    t
}

/// The counter changes every HEPv3 frame that reaches a decision makes, plus `extra`.
fn hep3_counters(extra: &[&str]) -> Vec<String> {
    let mut counters = vec![
        "received=1".to_string(),
        "hep_candidate=1".into(),
        "hep_v3=1".into(),
    ];
    counters.extend(extra.iter().map(|c| c.to_string()));
    counters
}

/// The counter changes of a frame steered by route `route` to destination `destination`
/// (its next hop looked up: these tables run with the next-hop cache off, the loader's
/// initial generation).
fn steer_counters(route: &str, destination: &str) -> Vec<String> {
    hep3_counters(&[
        "steered=1",
        "next_hop_miss=1",
        &format!("route/{route}/matched=1"),
        &format!("route/{route}/steered=1"),
        &format!("dest/{destination}/sent=1"),
    ])
}

/// One accepted result of a row: the exact output frame (`None`: the input frame,
/// unchanged) and the exact counter changes.
struct Outcome {
    want_bytes: Option<Vec<u8>>,
    want_counters: Vec<String>,
}

/// One row of the table: `frame` test-run as received on `in0`, and what must come of it.
struct Case {
    /// Named in the failure report.
    name: String,
    /// The input frame.
    frame: Vec<u8>,
    /// The XDP action.
    want_action: u32,
    /// The exact output frame; `None`: the input must come back unchanged.
    want_bytes: Option<Vec<u8>>,
    /// The exact counter changes (global, `route/..`, `dest/..`), in any order.
    want_counters: Vec<String>,
    /// A second accepted result with the same action (round robin: either target), as
    /// a whole: its bytes and its counters.
    alternative: Option<Outcome>,
}

impl Case {
    /// A row with one accepted result.
    fn new(
        name: impl Into<String>,
        frame: Vec<u8>,
        want_action: u32,
        want_bytes: Option<Vec<u8>>,
        want_counters: Vec<String>,
    ) -> Case {
        Case {
            name: name.into(),
            frame,
            want_action,
            want_bytes,
            want_counters,
            alternative: None,
        }
    }

    /// A row for a frame that must come back unchanged.
    fn untouched(
        name: impl Into<String>,
        frame: Vec<u8>,
        want_action: u32,
        want_counters: Vec<String>,
    ) -> Case {
        Case::new(name, frame, want_action, None, want_counters)
    }
}

/// Which accepted result a passing row matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matched {
    /// `want_bytes` / `want_counters`.
    First,
    /// The alternative.
    Alternative,
}

/// Where the table's rows ended: each row's name and the result it matched, or why it
/// failed.
struct Report {
    rows: Vec<(String, Result<Matched, String>)>,
}

impl Report {
    fn new() -> Report {
        Report { rows: Vec::new() }
    }

    /// Records a check over the whole table (not a frame) as a row of its own.
    fn check(&mut self, name: &str, holds: bool, why: String) {
        let result = if holds { Ok(Matched::First) } else { Err(why) };
        self.rows.push((name.to_string(), result));
    }

    /// The rows whose names start with `prefix` that matched `matched`.
    fn count(&self, prefix: &str, matched: Matched) -> usize {
        self.rows
            .iter()
            .filter(|(name, result)| name.starts_with(prefix) && *result == Ok(matched))
            .count()
    }

    /// Panics naming every failed row (and why), after all of them ran.
    fn finish(self, test: &str) {
        let failed: Vec<&(String, Result<Matched, String>)> =
            self.rows.iter().filter(|(_, r)| r.is_err()).collect();
        eprintln!("{test}: {} rows, {} failed", self.rows.len(), failed.len());
        if failed.is_empty() {
            return;
        }
        let mut text = String::new();
        for (name, result) in &failed {
            if let Err(why) = result {
                text.push_str(&format!("\n--- {name}:\n{why}"));
            }
        }
        let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
        panic!(
            "{test}: {} of {} rows failed: {names:?}{text}",
            failed.len(),
            self.rows.len()
        );
    }
}

/// Compares what came out with one accepted result; every mismatch, not the first.
fn mismatches(
    input: &[u8],
    out: &[u8],
    counters: &[String],
    want_bytes: Option<&[u8]>,
    want_counters: &[String],
) -> Vec<String> {
    let mut why = Vec::new();
    let want_bytes = want_bytes.unwrap_or(input);
    if out != want_bytes {
        let first_difference = out
            .iter()
            .zip(want_bytes)
            .position(|(got, want)| got != want)
            .unwrap_or(out.len().min(want_bytes.len()));
        why.push(format!(
            "output frame (first difference at byte {first_difference}; {} bytes, want {})\n got  {out:02x?}\n want {want_bytes:02x?}",
            out.len(),
            want_bytes.len()
        ));
    }
    let mut want_counters = want_counters.to_vec();
    want_counters.sort();
    if counters != want_counters {
        why.push(format!(
            "counters\n got  {counters:?}\n want {want_counters:?}"
        ));
    }
    why
}

/// Runs every row (a failing row does not stop the others) and adds each to `report`.
fn run_cases(xdp: &mut XdpProgram, slots: &Slots, cases: &[Case], report: &mut Report) {
    for case in cases {
        let before = read(xdp, slots);
        let (action, out) = run(xdp, &case.frame);
        let after = read(xdp, slots);
        let counters = changes(&before, &after);
        let mut why = Vec::new();
        if action != case.want_action {
            why.push(format!("action: got {action}, want {}", case.want_action));
        }
        let first = mismatches(
            &case.frame,
            &out,
            &counters,
            case.want_bytes.as_deref(),
            &case.want_counters,
        );
        let result = match &case.alternative {
            _ if first.is_empty() => Ok(Matched::First),
            Some(other) => {
                let second = mismatches(
                    &case.frame,
                    &out,
                    &counters,
                    other.want_bytes.as_deref(),
                    &other.want_counters,
                );
                if second.is_empty() {
                    Ok(Matched::Alternative)
                } else {
                    why.push(format!("matches neither result:\n{}", first.join("\n")));
                    why.push(format!("(the alternative) {}", second.join("\n")));
                    Err(())
                }
            }
            None => {
                why.extend(first);
                Err(())
            }
        };
        let result = match result {
            Ok(matched) if why.is_empty() => Ok(matched),
            _ => Err(why.join("\n")),
        };
        report.rows.push((case.name.clone(), result));
    }
}

/// The frames and addresses the rows are made of.
struct Parts {
    sender: IpAddr,
    me: IpAddr,
    out_source: IpAddr,
}

impl Parts {
    /// A frame from the sender to the listener carrying `h`.
    fn frame(&self, h: Hep<'_>) -> Vec<u8> {
        frame(self.sender, self.me, &hep(h), false)
    }

    /// `input` steered out of `out0` to `collector:port` (a lab neighbour).
    fn steered_out(&self, input: &[u8], collector: &str, port: u16) -> Vec<u8> {
        steered(
            input,
            self.out_source,
            v4(collector),
            port,
            OUT_MAC,
            neighbour_mac(collector),
        )
    }
}

/// The rows run with CONFIG installed without the opaque route (mirrors on); table-wide
/// checks on what the rows expect go to `report`.
fn first_table(xdp: &mut XdpProgram, t: &KernelTables, report: &mut Report) -> Vec<Case> {
    let parts = Parts {
        sender: v4("198.18.1.1"),
        me: v4("198.18.1.2"),
        out_source: v4("198.18.2.1"),
    };
    let (sender, me) = (parts.sender, parts.me);
    let mut cases = Vec::new();

    // Default route: steer to a, out of out0 → XDP_REDIRECT, rewritten exactly.
    let f = parts.frame(SIP);
    let want = parts.steered_out(&f, "198.18.2.2", 9061);
    cases.push(Case::new(
        "default steer",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("default", "a"),
    ));

    // Same interface: XDP_TX, source = in0's address.
    let f = parts.frame(Hep {
        capture: 4000,
        ..SIP
    });
    let want = steered(
        &f,
        me,
        v4("198.18.1.5"),
        9063,
        IN_MAC,
        neighbour_mac("198.18.1.5"),
    );
    cases.push(Case::new(
        "steer back out of in0",
        f,
        XDP_TX,
        Some(want),
        steer_counters("near", "nearby"),
    ));

    // IPv6 in, IPv6 collector: hop limit, addresses, UDP checksum over the new
    // pseudo-header.
    let s6: IpAddr = "fd00:18:1::1".parse().expect("address");
    let me6: IpAddr = "fd00:18:1::2".parse().expect("address");
    let f = frame(
        s6,
        me6,
        &hep(Hep {
            capture: 6000,
            ..SIP
        }),
        false,
    );
    let want = steered_out6(&f, 9065);
    cases.push(Case::new(
        "ipv6 steer",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("v6", "a6"),
    ));

    // Call-sticky hash: each call goes where rendezvous hashing of its key (the SIP
    // Call-ID here) says, and both collectors are used.
    let plan = hep_user::config::compile(Path::new("lab.toml"), &CONFIG.replace("OPAQUE", ""))
        .expect("config");
    let seeds: Vec<u64> = ["a", "b"]
        .iter()
        .map(|n| {
            plan.destinations
                .iter()
                .find(|x| x.name == *n)
                .expect("destination")
                .hash_seed
        })
        .collect();
    let mut used = [0usize; 2];
    for i in 0..12 {
        let call = format!("call-{i}@lab");
        let f = parts.frame(Hep {
            capture: 2500,
            call_id: &call,
            ..SIP
        });
        let k = rendezvous_pick(key_hash(call.as_bytes()), &seeds).expect("a pick");
        used[k] += 1;
        let (dst, port, name) = [("198.18.2.2", 9061, "a"), ("198.18.2.4", 9062, "b")][k];
        let want = parts.steered_out(&f, dst, port);
        cases.push(Case::new(
            format!("hash {call}"),
            f,
            XDP_REDIRECT,
            Some(want),
            steer_counters("calls", name),
        ));
    }
    report.check(
        "hash uses both collectors",
        used[0] > 0 && used[1] > 0,
        format!("both collectors must be used: {used:?}"),
    );

    // Keys the kernel does not read. SIP whose payload is compressed (chunk 0x0010): the
    // hash route needs its key, which only userspace inflates, so the packet goes up
    // untouched; a route that needs no key steers it as any other.
    let zipped = {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&hepfwd_harness::message::sip_invite("zip-1@lab"))
            .expect("deflate");
        z.finish().expect("deflate")
    };
    let compressed = |capture: u32| {
        let bytes = TestMessage::with_payload(Vec::new())
            .compressed_payload(zipped.clone())
            .capture_id(capture)
            .timestamp(1_700_000_000, 7)
            .auth_key(Some(b"s3cret"))
            .encode();
        frame(parts.sender, parts.me, &bytes, false)
    };
    cases.push(Case::untouched(
        "hash, key in a compressed payload",
        compressed(2500),
        XDP_PASS,
        hep3_counters(&["pass_key=1", "passed=1", "route/calls/passed=1"]),
    ));
    let f = compressed(2001);
    let want = parts.steered_out(&f, "198.18.2.2", 9061);
    cases.push(Case::new(
        "default steer, compressed payload",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("default", "a"),
    ));
    // No key at all (RTCP without 0x0011): the flow key of the inner endpoints decides,
    // written out here from its definition (hep_common::correlation): ::ffff:198.18.9.1
    // port 5060, then ::ffff:198.18.9.2 port 5060.
    let mut flow = [0u8; 36];
    flow[10..16].copy_from_slice(&[0xff, 0xff, 198, 18, 9, 1]);
    flow[16..18].copy_from_slice(&5060u16.to_be_bytes());
    flow[28..34].copy_from_slice(&[0xff, 0xff, 198, 18, 9, 2]);
    flow[34..36].copy_from_slice(&5060u16.to_be_bytes());
    let k = rendezvous_pick(key_hash(&flow), &seeds).expect("a pick");
    let (dst, port, name) = [("198.18.2.2", 9061, "a"), ("198.18.2.4", 9062, "b")][k];
    let rtcp = TestMessage::with_payload(&b"\x81\xc9\x00\x07 an RTCP report"[..])
        .proto(5)
        .capture_id(2500)
        .timestamp(1_700_000_000, 7)
        .auth_key(Some(b"s3cret"))
        .encode();
    let f = frame(parts.sender, parts.me, &rtcp, false);
    let want = parts.steered_out(&f, dst, port);
    cases.push(Case::new(
        "hash, no key: the flow key",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("calls", name),
    ));

    // The SIP first line: keep-alive requests dropped, server errors (and 486) to b, other
    // responses on to the default route; the kernel reads 12 bytes of the payload.
    let sip_line = |first_line: &str| {
        let payload = format!("{first_line}\r\nCall-ID: line@lab\r\nContent-Length: 0\r\n\r\n");
        let bytes = TestMessage::with_payload(payload.into_bytes())
            .timestamp(1_700_000_000, 7)
            .auth_key(Some(b"s3cret"))
            .encode();
        frame(parts.sender, parts.me, &bytes, false)
    };
    for method in ["OPTIONS sip:probe@lab SIP/2.0", "NOTIFY sip:x@lab SIP/2.0"] {
        cases.push(Case::untouched(
            format!("sip_method {method}"),
            sip_line(method),
            XDP_DROP,
            hep3_counters(&[
                "route_drop=1",
                "dropped=1",
                "route/keepalives/matched=1",
                "route/keepalives/dropped=1",
            ]),
        ));
    }
    for status in [
        "SIP/2.0 503 Service Unavailable",
        "SIP/2.0 500 Oops",
        "SIP/2.0 486 Busy Here",
    ] {
        let f = sip_line(status);
        let want = parts.steered_out(&f, "198.18.2.4", 9062);
        cases.push(Case::new(
            format!("sip_status {status}"),
            f,
            XDP_REDIRECT,
            Some(want),
            steer_counters("server-errors", "b"),
        ));
    }
    for other in [
        "SIP/2.0 200 OK",
        "SIP/2.0 487 Request Terminated",
        "options sip:x SIP/2.0",
        "SUBSCRIBE sip:x SIP/2.0",
    ] {
        let f = sip_line(other);
        let want = parts.steered_out(&f, "198.18.2.2", 9061);
        cases.push(Case::new(
            format!("no SIP-line route: {other}"),
            f,
            XDP_REDIRECT,
            Some(want),
            steer_counters("default", "a"),
        ));
    }

    // Drop route.
    let f = parts.frame(Hep { proto: 100, ..SIP });
    cases.push(Case::untouched(
        "drop route",
        f,
        XDP_DROP,
        hep3_counters(&[
            "route_drop=1",
            "dropped=1",
            "route/logs/matched=1",
            "route/logs/dropped=1",
        ]),
    ));

    // Sampling: whole calls are kept or left out, by the shared sampling rule.
    let (mut kept, mut left_out) = (0, 0);
    for i in 0..16 {
        let call = format!("sampled-{i}@lab");
        let f = parts.frame(Hep {
            capture: 3000,
            call_id: &call,
            ..SIP
        });
        if sample_keep(key_hash(call.as_bytes()), 500_000) {
            kept += 1;
            let want = parts.steered_out(&f, "198.18.2.2", 9061);
            cases.push(Case::new(
                call,
                f,
                XDP_REDIRECT,
                Some(want),
                steer_counters("sampled", "a"),
            ));
        } else {
            left_out += 1;
            cases.push(Case::untouched(
                call,
                f,
                XDP_DROP,
                hep3_counters(&[
                    "sampled_out=1",
                    "dropped=1",
                    "route/sampled/matched=1",
                    "route/sampled/sampled_out=1",
                ]),
            ));
        }
    }
    report.check(
        "sampling keeps some calls and leaves some out",
        kept > 0 && left_out > 0,
        format!("sampling must keep some calls and leave some out: kept {kept}, out {left_out}"),
    );

    // Listener checks: auth key missing, wrong; sender outside the allow list.
    for (what, h) in [
        ("no auth key", Hep { auth: None, ..SIP }),
        (
            "wrong auth key",
            Hep {
                auth: Some(b"s3cres"),
                ..SIP
            },
        ),
        (
            "short auth key",
            Hep {
                auth: Some(b"s3cre"),
                ..SIP
            },
        ),
    ] {
        cases.push(Case::untouched(
            what,
            parts.frame(h),
            XDP_DROP,
            hep3_counters(&["auth_failed=1", "dropped=1"]),
        ));
    }
    cases.push(Case::untouched(
        "sender not allowed",
        frame(v4("198.18.7.7"), me, &hep(SIP), false),
        XDP_DROP,
        hep3_counters(&["not_allowed=1", "dropped=1"]),
    ));

    // A `set` of a chunk the packet carries once, at the same length: written in place
    // (the capture id, 7000 → 1), so the frame out is the steered frame of a packet
    // built with capture id 1.
    let f = parts.frame(Hep {
        capture: 7000,
        ..SIP
    });
    let want = parts.steered_out(&parts.frame(Hep { capture: 1, ..SIP }), "198.18.2.2", 9061);
    cases.push(Case::new(
        "rewrite in place",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("rewrite", "a"),
    ));

    // IPv6 (the UDP checksum is adjusted for the edited bytes): the route's node name
    // (the last of its two edits) and the destination's auth key, both in place.
    let node7 = Hep {
        capture: 6001,
        node: Some(b"edge-7"),
        ..SIP
    };
    let f = frame(s6, me6, &hep(node7), false);
    let rewritten = frame(
        s6,
        me6,
        &hep(Hep {
            node: Some(b"edge-9"),
            auth: Some(b"t0psec"),
            ..node7
        }),
        false,
    );
    let want = steered_out6(&rewritten, 9066);
    cases.push(Case::new(
        "ipv6 rewrite and auth key in place",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("rewrite-v6", "a6-keyed"),
    ));
    // The same route on packets where an edit does not fit in place: no node name (the
    // rewrite inserts it), a node name of another length. They go up untouched.
    for (what, node) in [
        ("rewrite inserts: up", None),
        ("rewrite changes a length: up", Some(&b"edge-10"[..])),
    ] {
        cases.push(Case::untouched(
            what,
            frame(s6, me6, &hep(Hep { node, ..node7 }), false),
            XDP_PASS,
            hep3_counters(&["pass_rewrite=1", "passed=1", "route/rewrite-v6/passed=1"]),
        ));
    }

    // Userspace actions pass untouched: a rewrite that deletes, a TCP destination.
    for (what, capture, route) in [
        ("rewrite deletes", 7002, "strip"),
        ("tcp destination", 7001, "to-tcp"),
    ] {
        cases.push(Case::untouched(
            what,
            parts.frame(Hep { capture, ..SIP }),
            XDP_PASS,
            hep3_counters(&[
                "pass_action=1",
                "passed=1",
                &format!("route/{route}/passed=1"),
            ]),
        ));
    }

    // Round robin: each packet to one of the targets, rotating (per CPU), so both are
    // used over a few packets (checked on the results: `ROUND_ROBIN` rows).
    for i in 0..8 {
        let f = parts.frame(Hep {
            capture: 9000,
            ..SIP
        });
        let to_a = parts.steered_out(&f, "198.18.2.2", 9061);
        let to_b = parts.steered_out(&f, "198.18.2.4", 9062);
        let mut case = Case::new(
            format!("{ROUND_ROBIN}{i}"),
            f,
            XDP_REDIRECT,
            Some(to_a),
            steer_counters("rr", "a"),
        );
        case.alternative = Some(Outcome {
            want_bytes: Some(to_b),
            want_counters: steer_counters("rr", "b"),
        });
        cases.push(case);
    }

    // Node name: exact bytes (a prefix or a longer name is another node).
    for (node, to_b) in [
        (&b"edge-8"[..], true),
        (b"edge-", false),
        (b"edge-88", false),
    ] {
        let f = parts.frame(Hep {
            node: Some(node),
            ..SIP
        });
        let what = format!("node {}", String::from_utf8_lossy(node));
        let (want, counters) = if to_b {
            (
                parts.steered_out(&f, "198.18.2.4", 9062),
                steer_counters("by-node", "b"),
            )
        } else {
            (
                parts.steered_out(&f, "198.18.2.2", 9061),
                steer_counters("default", "a"),
            )
        };
        cases.push(Case::new(what, f, XDP_REDIRECT, Some(want), counters));
    }

    // Mirror (the TC program copies it): passed unchanged, with the route in the XDP
    // metadata in front of the frame (BPF_PROG_TEST_RUN returns it with the data).
    let f = parts.frame(Hep {
        capture: 8000,
        ..SIP
    });
    let bank = xdp.config().expect("config").bank;
    let route = t
        .placements
        .iter()
        .position(|p| p.route == "mirror")
        .expect("mirror route") as u32;
    let mut want = Vec::new();
    for w in [MIRROR_META_MAGIC, bank, route] {
        want.extend_from_slice(&w.to_ne_bytes());
    }
    // No edits: four edit offsets, the edit bits and the padding, all 0.
    want.extend_from_slice(&[0u8; 12]);
    want.extend_from_slice(&f);
    cases.push(Case::new(
        "mirror",
        f,
        XDP_PASS,
        Some(want),
        hep3_counters(&[
            "mirrored=1",
            "route/mirror/matched=1",
            "route/mirror/mirrored=1",
        ]),
    ));
    // A mirror with a rewrite: the frame still unchanged (TC writes the edit once every
    // next hop is known), the capture id's value offset in the metadata: the chunk is at
    // HEP offset 83 in the common agents' IPv4 order (XDP-COST.md §4), its value 6 later.
    let f = parts.frame(Hep {
        capture: 8002,
        ..SIP
    });
    let route = t
        .placements
        .iter()
        .position(|p| p.route == "mirror-set")
        .expect("mirror-set route") as u32;
    let mut want = Vec::new();
    for w in [MIRROR_META_MAGIC, bank, route] {
        want.extend_from_slice(&w.to_ne_bytes());
    }
    for offset in [89u16, 0, 0, 0] {
        want.extend_from_slice(&offset.to_ne_bytes());
    }
    want.extend_from_slice(&[1, 0, 0, 0]);
    want.extend_from_slice(&f);
    cases.push(Case::new(
        "mirror with a rewrite",
        f,
        XDP_PASS,
        Some(want),
        hep3_counters(&[
            "mirrored=1",
            "route/mirror-set/matched=1",
            "route/mirror-set/mirrored=1",
        ]),
    ));

    // No neighbour entry for the collector yet: passed untouched (the daemon sends it).
    cases.push(Case::untouched(
        "no neighbour",
        parts.frame(Hep {
            capture: 5000,
            ..SIP
        }),
        XDP_PASS,
        hep3_counters(&[
            "steer_fallback=1",
            "next_hop_miss=1",
            "passed=1",
            "route/unresolved/passed=1",
            "dest/no-neighbour/fallback=1",
        ]),
    ));

    // A VLAN-tagged frame is not steered (headers would need resizing): passed untouched.
    cases.push(Case::untouched(
        "vlan steer",
        frame(sender, me, &hep(SIP), true),
        XDP_PASS,
        hep3_counters(&[
            "steer_fallback=1",
            "passed=1",
            "route/default/passed=1",
            "dest/a/fallback=1",
        ]),
    ));

    // To the listener's port but another address of the node: no listener takes it
    // there, so the kernel leaves it alone.
    let untouched_counters =
        |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    cases.push(Case::untouched(
        "other address",
        frame(sender, v4("198.18.1.9"), &hep(SIP), false),
        XDP_PASS,
        untouched_counters(&["received=1", "other_port=1", "passed=1"]),
    ));

    // Lying chunk length: invalid HEP, passed untouched, no decision.
    let invalid = ["received=1", "hep_candidate=1", "hep_invalid=1", "passed=1"];
    let mut bad = hep(SIP);
    let at = 6 + 4; // the first chunk's length field
    bad[at] = 0xff;
    cases.push(Case::untouched(
        "chunk past the end",
        frame(sender, me, &bad, false),
        XDP_PASS,
        untouched_counters(&invalid),
    ));
    // Truncated: a chunk header cut short.
    let mut cut = hep(SIP);
    cut.truncate(cut.len() - 3);
    let n = cut.len() as u16;
    cut[4..6].copy_from_slice(&n.to_be_bytes());
    cases.push(Case::untouched(
        "truncated chunk",
        frame(sender, me, &cut, false),
        XDP_PASS,
        untouched_counters(&invalid),
    ));

    // The payload is read in place: every read stops at the payload's end (the UDP
    // length), never at the frame's. Bytes after the payload in the frame (Ethernet
    // padding, or an attacker's trailer) must not complete a chunk or the version magic.
    // The HEP header still declares the whole packet: only a reader that took the frame's
    // end for the payload's would find the lengths agree and the last chunk complete.
    let whole = hep(SIP);
    let mut f = frame(sender, me, &whole[..whole.len() - 3], false);
    f.extend_from_slice(&whole[whole.len() - 3..]);
    cases.push(Case::untouched(
        "chunk completed only by the frame's trailer",
        f,
        XDP_PASS,
        untouched_counters(&invalid),
    ));
    // (A HEPv2 header's first four bytes: version 2, header length 16, AF_INET; read as
    // the magic they would be counted hep_legacy.)
    let mut f = frame(sender, me, &[2, 16], false);
    f.extend_from_slice(&[2, 17]);
    cases.push(Case::untouched(
        "version magic completed only by the frame's trailer",
        f,
        XDP_PASS,
        untouched_counters(&invalid),
    ));
    // Padding after a valid packet: steered, the padding carried along untouched.
    let mut f = frame(sender, me, &whole, false);
    f.extend_from_slice(&[0u8; 16]);
    let want = parts.steered_out(&f, "198.18.2.2", 9061);
    cases.push(Case::new(
        "steer with padding after the packet",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("default", "a"),
    ));

    // The walker's chunk limit: 64 chunks are valid (steered by the default route),
    // 65 are not (passed untouched).
    let chunky = |n: usize| {
        let mut p = b"HEP3\0\0".to_vec();
        p.extend_from_slice(&[0, 0, 0, 0x0e, 0, 12]);
        p.extend_from_slice(b"s3cret");
        for i in 1..n {
            p.extend_from_slice(&[0, 3, 1, 0, 0, 7, i as u8]);
        }
        let len = p.len() as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p
    };
    let f = frame(sender, me, &chunky(64), false);
    let want = parts.steered_out(&f, "198.18.2.2", 9061);
    cases.push(Case::new(
        "64 chunks",
        f,
        XDP_REDIRECT,
        Some(want),
        steer_counters("default", "a"),
    ));
    cases.push(Case::untouched(
        "65 chunks",
        frame(sender, me, &chunky(65), false),
        XDP_PASS,
        untouched_counters(&invalid),
    ));
    cases
}

/// The rows run with the opaque route (correlation: the kernel cannot match it) installed
/// in front of the default: packets reaching it go to userspace; earlier routes still
/// decide.
fn opaque_table() -> Vec<Case> {
    let (sender, me) = (v4("198.18.1.1"), v4("198.18.1.2"));
    vec![
        Case::untouched(
            "opaque route",
            frame(sender, me, &hep(SIP), false),
            XDP_PASS,
            hep3_counters(&["pass_opaque=1", "passed=1", "route/by-correlation/passed=1"]),
        ),
        Case::untouched(
            "drop before the opaque route",
            frame(sender, me, &hep(Hep { proto: 100, ..SIP }), false),
            XDP_DROP,
            hep3_counters(&[
                "route_drop=1",
                "dropped=1",
                "route/logs/matched=1",
                "route/logs/dropped=1",
            ]),
        ),
    ]
}

/// The name prefix of the round-robin rows.
const ROUND_ROBIN: &str = "rr ";

#[test]
fn xdp_decides_steers_and_drops_by_the_installed_routes() {
    let test = "xdp_decides_steers_and_drops_by_the_installed_routes";
    let Some(mut xdp) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let lab = Lab::new("routes");
    let report = lab.within(|| {
        let xdp = &mut xdp;
        let mut report = Report::new();
        let mut slots = Slots::default();
        let t = install(xdp, &mut slots, false, true);
        let cases = first_table(xdp, &t, &mut report);
        run_cases(xdp, &slots, &cases, &mut report);
        let (to_a, to_b) = (
            report.count(ROUND_ROBIN, Matched::First),
            report.count(ROUND_ROBIN, Matched::Alternative),
        );
        report.check(
            "round robin uses both",
            to_a > 0 && to_b > 0,
            format!("round robin uses both: a {to_a}, b {to_b}"),
        );
        report.check(
            "19 routes installed",
            t.routes.len() == 19,
            format!("{} routes installed, want 19", t.routes.len()),
        );
        install(xdp, &mut slots, true, false);
        run_cases(xdp, &slots, &opaque_table(), &mut report);
        report
    });
    report.finish(test);
}

/// `counters` with the next hop answered by the cache instead of looked up.
fn from_cache(counters: Vec<String>) -> Vec<String> {
    counters
        .into_iter()
        .map(|c| {
            if c == "next_hop_miss=1" {
                "next_hop_hit=1".to_string()
            } else {
                c
            }
        })
        .collect()
}

/// Pins the calling thread to the CPU it runs on now (BPF_PROG_TEST_RUN runs the program
/// on the caller's CPU).
fn pin_to_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; `set` is a zeroed cpu_set_t on our stack,
    // passed with its size, for this thread (pid 0).
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The next-hop cache, row by row (each row runs after the previous one, on the same
/// CPU's cache): a first packet looks its next hop up and fills the entry, the same packet
/// again is answered from it with byte-identical output; a longer packet than any the
/// lookup accepted looks up (and raises the bound); after the generation moves everything
/// looks up again. The rows in between show what the generation is for: a neighbour or
/// MTU change the daemon has not yet announced is not seen (the entry still answers), and
/// once the generation moves the new MAC is used and a packet over the new MTU falls back
/// to userspace untouched.
#[test]
fn xdp_caches_next_hops_until_the_generation_moves() {
    use hep_user::xdp::next_hop::Invalidation;
    let test = "xdp_caches_next_hops_until_the_generation_moves";
    let Some(mut xdp) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let lab = Lab::new("nexthop");
    let report = lab.within(|| {
        // The cache is per CPU: every test run of the rows must run on one CPU, or a row
        // expecting a hit can land on a CPU whose entry was never filled.
        pin_to_this_cpu();
        let xdp = &mut xdp;
        let mut report = Report::new();
        let mut slots = Slots::default();
        install(xdp, &mut slots, false, true);
        let next_hops = xdp.next_hops().expect("the generation map");
        assert_eq!(next_hops.generation(), 0, "the loader leaves the cache off");
        let g = next_hops.enable().expect("cache on");
        assert_ne!(g, 0);
        let parts = Parts {
            sender: v4("198.18.1.1"),
            me: v4("198.18.1.2"),
            out_source: v4("198.18.2.1"),
        };
        let long_id = format!("call-1-{}@lab", "x".repeat(400));
        let short = parts.frame(SIP);
        let long = parts.frame(Hep {
            call_id: &long_id,
            ..SIP
        });
        let ip_len = |f: &[u8]| f.len() - 14;
        assert!(ip_len(&long) > ip_len(&short) + 300);
        let short_out = parts.steered_out(&short, "198.18.2.2", 9061);
        let long_out = parts.steered_out(&long, "198.18.2.2", 9061);
        let looked_up = || steer_counters("default", "a");
        let steer = |name: &str, f: &[u8], out: &[u8], counters: Vec<String>| {
            Case::new(name, f.to_vec(), XDP_REDIRECT, Some(out.to_vec()), counters)
        };
        let run = |xdp: &mut XdpProgram, report: &mut Report, cases: Vec<Case>| {
            run_cases(xdp, &slots, &cases, report);
        };

        run(
            xdp,
            &mut report,
            vec![
                steer(
                    "first packet: lookup, fills",
                    &short,
                    &short_out,
                    looked_up(),
                ),
                steer(
                    "second packet: from the cache, the same bytes",
                    &short,
                    &short_out,
                    from_cache(looked_up()),
                ),
                steer(
                    "longer than any accepted: lookup",
                    &long,
                    &long_out,
                    looked_up(),
                ),
                steer(
                    "the longer one again: from the cache",
                    &long,
                    &long_out,
                    from_cache(looked_up()),
                ),
                steer(
                    "the short one: still from the cache",
                    &short,
                    &short_out,
                    from_cache(looked_up()),
                ),
            ],
        );
        next_hops
            .invalidate(Invalidation::Install)
            .expect("invalidate");
        run(
            xdp,
            &mut report,
            vec![
                steer(
                    "after the generation moved: lookup",
                    &short,
                    &short_out,
                    looked_up(),
                ),
                steer(
                    "then from the cache",
                    &short,
                    &short_out,
                    from_cache(looked_up()),
                ),
            ],
        );

        // The collector's MAC changes; until the generation moves the entry answers.
        let new_mac = [0x02, 0, 0, 0, 0x02, 0x99];
        lab.ip(&[
            "neigh",
            "replace",
            "198.18.2.2",
            "lladdr",
            "02:00:00:00:02:99",
            "dev",
            "out0",
            "nud",
            "permanent",
        ]);
        let new_mac_out = steered(
            &short,
            parts.out_source,
            v4("198.18.2.2"),
            9061,
            OUT_MAC,
            new_mac,
        );
        run(
            xdp,
            &mut report,
            vec![steer(
                "neighbour changed, not yet announced: the cached MAC",
                &short,
                &short_out,
                from_cache(looked_up()),
            )],
        );
        next_hops
            .invalidate(Invalidation::Netlink)
            .expect("invalidate");
        run(
            xdp,
            &mut report,
            vec![
                steer(
                    "after the generation moved: the new MAC",
                    &short,
                    &new_mac_out,
                    looked_up(),
                ),
                steer(
                    "the new MAC from the cache",
                    &short,
                    &new_mac_out,
                    from_cache(looked_up()),
                ),
            ],
        );
        let mac = neighbour_mac("198.18.2.2");
        let mac_text = mac.map(|b| format!("{b:02x}")).join(":");
        lab.ip(&[
            "neigh",
            "replace",
            "198.18.2.2",
            "lladdr",
            &mac_text,
            "dev",
            "out0",
            "nud",
            "permanent",
        ]);
        next_hops
            .invalidate(Invalidation::Netlink)
            .expect("invalidate");

        // The egress MTU drops between the two sizes: the long packet is too big.
        let fallback = hep3_counters(&[
            "steer_fallback=1",
            "next_hop_miss=1",
            "passed=1",
            "route/default/passed=1",
            "dest/a/fallback=1",
        ]);
        run(
            xdp,
            &mut report,
            vec![
                steer("the long one: lookup", &long, &long_out, looked_up()),
                steer(
                    "the short one: from the cache (shorter than accepted)",
                    &short,
                    &short_out,
                    from_cache(looked_up()),
                ),
            ],
        );
        let mtu = ((ip_len(&short) + ip_len(&long)) / 2).to_string();
        lab.ip(&["link", "set", "dev", "out0", "mtu", &mtu]);
        next_hops
            .invalidate(Invalidation::Netlink)
            .expect("invalidate");
        run(
            xdp,
            &mut report,
            vec![
                Case::untouched(
                    "over the new MTU: lookup fails, passed untouched",
                    long.clone(),
                    XDP_PASS,
                    fallback.clone(),
                ),
                steer(
                    "the short one: lookup (a failed lookup fills nothing)",
                    &short,
                    &short_out,
                    looked_up(),
                ),
                steer(
                    "the short one: from the cache",
                    &short,
                    &short_out,
                    from_cache(looked_up()),
                ),
                Case::untouched(
                    "longer than the entry accepted: lookup, fails again",
                    long.clone(),
                    XDP_PASS,
                    fallback.clone(),
                ),
            ],
        );
        next_hops.disable().expect("cache off");
        run(
            xdp,
            &mut report,
            vec![steer("cache off: lookup", &short, &short_out, looked_up())],
        );
        report
    });
    report.finish(test);
}

/// A raw packet socket on `out1` in the collector namespace: the frames the mirror's copies
/// arrive as, Ethernet header included.
struct Capture(std::os::fd::OwnedFd);

impl Capture {
    /// Opens it (from a thread inside the collector namespace: the socket belongs to it).
    fn open(lab: &Lab) -> Capture {
        use std::os::fd::FromRawFd as _;
        lab.in_collector(|| {
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the descriptor is owned right after the check.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new("out1").expect("name");
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(ifindex, 0, "out1 in the collector namespace");
            // SAFETY: a zeroed sockaddr_ll is valid; we fill family, protocol, ifindex.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = protocol;
            addr.sll_ifindex = ifindex as i32;
            use std::os::fd::AsRawFd as _;
            // SAFETY: `addr` is a sockaddr_ll of the size we pass.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, 0, "bind to out1: {}", std::io::Error::last_os_error());
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: a timeval of the size we pass.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            assert_eq!(r, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            Capture(fd)
        })
    }

    /// The UDP frames (IPv4 or IPv6) that arrived at `out1` within `window` (the
    /// collector's own frames and anything else, such as neighbour discovery, left out).
    fn udp_frames(&self, window: std::time::Duration) -> Vec<Vec<u8>> {
        use std::os::fd::AsRawFd as _;
        let end = std::time::Instant::now() + window;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 2048];
        while std::time::Instant::now() < end {
            // SAFETY: zeroed sockaddr_ll; recvfrom writes at most its size.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` is writable for its length; `from` as above.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                continue; // the timeout: look at the clock again
            }
            let f = &buf[..n as usize];
            let udp = match f.get(12..14) {
                Some([0x08, 0x00]) => f.get(14 + 9) == Some(&17),
                Some([0x86, 0xdd]) => f.get(14 + 6) == Some(&17),
                _ => false,
            };
            if from.sll_pkttype != libc::PACKET_OUTGOING && udp {
                frames.push(f.to_vec());
            }
        }
        frames
    }
}

/// `frame` with 4 bytes of IPv4 options (NOP, NOP, NOP, end of list): IHL 6, lengths and
/// header checksum made right.
fn with_ipv4_options(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    let c = ipv4_csum(&f[14..38]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// A row of the TC mirror table: name, input frame, the copies that must arrive at `out1`,
/// the counter changes.
type MirrorRow = (&'static str, Vec<u8>, Vec<Vec<u8>>, Vec<String>);

/// The TC half of mirroring, end to end, byte for byte: each row's frame is run by
/// `hep_xdp` as live frames received on `in0` (BPF_PROG_TEST_RUN, as `xdp_bench` does),
/// so the stack takes what it passes through `hep_mirror` at TCX ingress, which sends the
/// copies out of `out0`; a raw socket on `out1` in the collector namespace captures them.
/// Every copy must be exactly the steered frame computed from scratch here (MACs from the
/// lab's neighbours, TTL − 1, addresses, ports, checksums summed in full; IPv4 options kept),
/// no other frame may arrive, and the counters must move by exactly what the row says. The
/// last rows take `out0` down under cached next hops: what the program and the interface
/// count of the copies lost.
#[test]
fn tc_mirror_copies_are_steered_frames_byte_for_byte() {
    use aya::TestRunAttrs;
    use hepfwd_harness::lab::COLLECTOR_MAC;
    let test = "tc_mirror_copies_are_steered_frames_byte_for_byte";
    let Some(mut xdp) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let lab = Lab::with_ends("mirror-tc");
    let capture = Capture::open(&lab);
    let report = lab.within(|| {
        let xdp = &mut xdp;
        let _link = xdp.attach_mirror("in0").expect("attach hep_mirror at in0");
        let mut slots = Slots::default();
        install(xdp, &mut slots, false, true);
        let (sender, me) = (v4("198.18.1.1"), v4("198.18.1.2"));
        let (sender6, me6) = (ip6("fd00:18:1::1"), ip6("fd00:18:1::2"));
        let out_source = v4("198.18.2.1");
        let mirror_hep = hep(Hep {
            capture: 8000,
            ..SIP
        });
        let plain = frame(sender, me, &mirror_hep, false);
        let options = with_ipv4_options(&plain);
        let v6 = frame(
            sender6,
            me6,
            &hep(Hep {
                capture: 8001,
                ..SIP
            }),
            false,
        );
        let node0 = Hep {
            capture: 8003,
            node: Some(b"edge-0"),
            ..SIP
        };
        let node9 = frame(
            sender6,
            me6,
            &hep(Hep {
                node: Some(b"edge-9"),
                ..node0
            }),
            false,
        );
        let mut last_hop = plain.clone();
        last_hop[14 + 8] = 1;
        let c = ipv4_csum(&last_hop[14..34]);
        last_hop[24..26].copy_from_slice(&c.to_be_bytes());
        let to_ab = |f: &[u8]| {
            vec![
                steered(
                    f,
                    out_source,
                    v4("198.18.2.2"),
                    9061,
                    OUT_MAC,
                    COLLECTOR_MAC,
                ),
                steered(
                    f,
                    out_source,
                    v4("198.18.2.4"),
                    9062,
                    OUT_MAC,
                    COLLECTOR_MAC,
                ),
            ]
        };
        let mirrored = |route: &str, a: &str, b: &str| {
            hep3_counters(&[
                "mirrored=1",
                "next_hop_miss=2",
                &format!("route/{route}/matched=1"),
                &format!("route/{route}/mirrored=1"),
                &format!("dest/{a}/sent=1"),
                &format!("dest/{b}/sent=1"),
            ])
        };
        // (name, input, the copies at out1, the counter changes)
        let rows: Vec<MirrorRow> = vec![
            (
                "IPv4: a copy to a and to b",
                plain.clone(),
                to_ab(&plain),
                mirrored("mirror", "a", "b"),
            ),
            (
                "IPv4 with options: kept in each copy",
                options.clone(),
                to_ab(&options),
                mirrored("mirror", "a", "b"),
            ),
            (
                "IPv6: a copy to each port, the UDP checksum over the new pseudo-header",
                v6.clone(),
                vec![steered_out6(&v6, 9065), steered_out6(&v6, 9067)],
                mirrored("mirror6", "a6", "a6-other"),
            ),
            (
                "IPv4 mirror with a rewrite: every copy carries the new capture id",
                frame(sender, me, &hep(Hep { capture: 8002, ..SIP }), false),
                to_ab(&frame(sender, me, &hep(Hep { capture: 1, ..SIP }), false)),
                mirrored("mirror-set", "a", "b"),
            ),
            (
                "IPv6 mirror with a rewrite: the new node name, the UDP checksum adjusted",
                frame(sender6, me6, &hep(node0), false),
                vec![
                    steered_out6(&node9, 9065),
                    steered_out6(&node9, 9067),
                ],
                mirrored("mirror6-set", "a6", "a6-other"),
            ),
            (
                "IPv6 mirror with a rewrite that does not fit (another length): no copy, up untouched",
                frame(sender6, me6, &hep(Hep { node: Some(b"edge-10"), ..node0 }), false),
                vec![],
                hep3_counters(&["pass_rewrite=1", "passed=1", "route/mirror6-set/passed=1"]),
            ),
            (
                "TTL 1: no copy at all, the packet goes on to the daemon",
                last_hop,
                vec![],
                hep3_counters(&[
                    "mirrored=1",
                    "route/mirror/matched=1",
                    "route/mirror/mirrored=1",
                    "dest/a/fallback=1",
                ]),
            ),
        ];
        let mut report = Report::new();
        // Whatever the namespaces sent while coming up.
        capture.udp_frames(std::time::Duration::from_millis(200));
        let run_row = |xdp: &mut XdpProgram, row: MirrorRow, report: &mut Report| {
            let (name, input, want_copies, want_counters) = row;
            let before = read(xdp, &slots);
            xdp.program_mut()
                .expect("program")
                .test_run(TestRunOptions {
                    data_in: Some(&input),
                    ctx_in: Some(&xdp_ctx(input.len(), IN_IFINDEX)),
                    repeat: 1,
                    attrs: TestRunAttrs::new().xdp_live_frames(1),
                    ..TestRunOptions::default()
                })
                .expect("live frame");
            let mut got = capture.udp_frames(std::time::Duration::from_millis(300));
            let after = read(xdp, &slots);
            let counters = changes(&before, &after);
            let mut want = want_copies.clone();
            got.sort();
            want.sort();
            let mut why = Vec::new();
            if got != want {
                why.push(format!(
                    "copies at out1: got {} frames, want {}\n got  {got:02x?}\n want {want:02x?}",
                    got.len(),
                    want.len()
                ));
            }
            why.extend(mismatches(&input, &input, &counters, None, &want_counters));
            let result = if why.is_empty() {
                Ok(Matched::First)
            } else {
                Err(why.join("\n"))
            };
            report.rows.push((name.to_string(), result));
        };
        for row in rows {
            run_row(xdp, row, &mut report);
        }

        // The egress interface goes down after the next hops were cached (and before
        // anything invalidates them): the first copy's clone is refused at once and counted
        // `failed`; the last copy (the original, sent after the program returns) is counted
        // `sent` by the program and dropped by the interface. The interface counts both in
        // its transmit drops.
        pin_to_this_cpu();
        xdp.next_hops()
            .expect("the generation map")
            .enable()
            .expect("cache on");
        let fill = hep3_counters(&[
            "mirrored=1",
            "next_hop_miss=2",
            "route/mirror/matched=1",
            "route/mirror/mirrored=1",
            "dest/a/sent=1",
            "dest/b/sent=1",
        ]);
        run_row(
            xdp,
            ("cache on: looked up and cached", plain.clone(), to_ab(&plain), fill),
            &mut report,
        );
        let tx_dropped = || -> u64 {
            let json = lab.ip(&["-s", "-j", "link", "show", "out0"]);
            let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j");
            v[0]["stats64"]["tx"]["dropped"].as_u64().expect("tx dropped")
        };
        lab.ip(&["link", "set", "out0", "down"]);
        let dropped_before = tx_dropped();
        run_row(
            xdp,
            (
                "out0 down, next hops from the cache: no copy arrives, the refused clone counted failed",
                plain.clone(),
                vec![],
                hep3_counters(&[
                    "mirrored=1",
                    "next_hop_hit=2",
                    "route/mirror/matched=1",
                    "route/mirror/mirrored=1",
                    "dest/a/failed=1",
                    "dest/b/sent=1",
                ]),
            ),
            &mut report,
        );
        let dropped = tx_dropped() - dropped_before;
        report.check(
            "out0 down: the interface counts both copies it dropped",
            dropped == 2,
            format!("out0 tx dropped moved by {dropped}, want 2"),
        );
        report
    });
    report.finish(test);
}
