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
//! Needs root (CAP_BPF, CAP_NET_ADMIN); skips loudly otherwise, fails under
//! `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;
#[path = "common/lab.rs"]
mod lab;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use aya::{TestRun as _, TestRunOptions};
use hep_common::abi::{
    DEST_COUNTERS_MAP, DestCounter, MIRROR_META_MAGIC, ROUTE_COUNTERS_MAP, RouteCounter,
};
use hep_common::correlation::key_hash;
use hep_common::select::{rendezvous_pick, sample_keep};
use hep_common::v3::{Hep3Message, Payload};
use hep_user::xdp::compile::{HostNet, KernelTables, Slots, compile};
use hep_user::xdp::{LoadOptions, XdpProgram};
use lab::{IN_IFINDEX, IN_MAC, Lab, OUT_MAC, neighbour_mac};

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
name = "to-tcp"
match = { capture_id = [7001] }
forward = ["tcp"]
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

fn hep(h: Hep<'_>) -> Vec<u8> {
    let sip = format!(
        "INVITE sip:bob@198.18.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.9.1\r\nCall-ID: {}\r\nContent-Length: 0\r\n\r\n",
        h.call_id
    );
    let m = Hep3Message {
        ip_proto: 17,
        src_ip: Ipv4Addr::new(198, 18, 9, 1).into(),
        dst_ip: Ipv4Addr::new(198, 18, 9, 2).into(),
        src_port: 5060,
        dst_port: 5060,
        ts_sec: 1_700_000_000,
        ts_usec: 7,
        proto_type: h.proto,
        capture_id: h.capture,
        auth_key: h.auth,
        correlation_id: None,
        vlan_id: None,
        node_name: h.node,
        extra: &[],
        payload: Payload::Plain(sip.as_bytes()),
    };
    let mut buf = vec![0u8; 2048];
    let n = m.encode(&mut buf).expect("encode");
    buf.truncate(n);
    buf
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
            f[14 + 8] -= 1;
            f[14 + 12..14 + 16].copy_from_slice(&s.octets());
            f[14 + 16..14 + 20].copy_from_slice(&c.octets());
            let csum = ipv4_csum(&f[14..34]);
            f[14 + 10..14 + 12].copy_from_slice(&csum.to_be_bytes());
            f[34..36].copy_from_slice(&9060u16.to_be_bytes());
            f[36..38].copy_from_slice(&port.to_be_bytes());
            f[40..42].copy_from_slice(&[0, 0]);
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

/// Test-runs `frame` as received on `in0` (call from inside the lab); returns the action
/// and the frame as the program left it.
fn run(xdp: &mut XdpProgram, frame: &[u8]) -> (u32, Vec<u8>) {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex }.
    let mut ctx = Vec::new();
    for v in [0, frame.len() as u32, 0, IN_IFINDEX, 0, 0] {
        ctx.extend_from_slice(&v.to_ne_bytes());
    }
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
    const DC: [&str; DestCounter::COUNT] = ["sent", "fallback"];
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

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
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

/// Runs one case: action, output frame, counter changes.
#[track_caller]
fn check(
    xdp: &mut XdpProgram,
    slots: &Slots,
    name: &str,
    input: &[u8],
    want_action: u32,
    want_frame: &[u8],
    want_changes: &[&str],
) {
    let before = read(xdp, slots);
    let (action, out) = run(xdp, input);
    let after = read(xdp, slots);
    assert_eq!(action, want_action, "{name}: action");
    assert!(
        out == want_frame,
        "{name}: output frame\n got  {out:02x?}\n want {want_frame:02x?}"
    );
    assert_eq!(
        changes(&before, &after),
        sorted(want_changes),
        "{name}: counters"
    );
}

#[test]
fn xdp_decides_steers_and_drops_by_the_installed_routes() {
    let test = "xdp_decides_steers_and_drops_by_the_installed_routes";
    let Some(mut xdp) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let lab = Lab::new("routes");
    lab.within(|| {
        let xdp = &mut xdp;
        let mut slots = Slots::default();
        let t = install(xdp, &mut slots, false, true);
        let sender = v4("198.18.1.1");
        let me = v4("198.18.1.2");
        let out_src = v4("198.18.2.1");
        let a_mac = neighbour_mac("198.18.2.2");
        let common = |r: &str| {
            vec![
                "received=1".to_string(),
                "hep_candidate=1".into(),
                "hep_v3=1".into(),
                r.to_string(),
            ]
        };

        // Default route: steer to a, out of out0 → XDP_REDIRECT, rewritten exactly.
        let f = frame(sender, me, &hep(SIP), false);
        let want = steered(&f, out_src, v4("198.18.2.2"), 9061, OUT_MAC, a_mac);
        let mut c = common("steered=1");
        c.extend([
            "route/default/matched=1".into(),
            "route/default/steered=1".into(),
            "dest/a/sent=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "default steer",
            &f,
            XDP_REDIRECT,
            &want,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // Same interface: XDP_TX, source = in0's address.
        let near = Hep {
            capture: 4000,
            ..SIP
        };
        let f = frame(sender, me, &hep(near), false);
        let want = steered(
            &f,
            me,
            v4("198.18.1.5"),
            9063,
            IN_MAC,
            neighbour_mac("198.18.1.5"),
        );
        let mut c = common("steered=1");
        c.extend([
            "route/near/matched=1".into(),
            "route/near/steered=1".into(),
            "dest/nearby/sent=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "steer back out of in0",
            &f,
            XDP_TX,
            &want,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // IPv6 in, IPv6 collector: hop limit, addresses, UDP checksum over the new
        // pseudo-header.
        let s6: IpAddr = "fd00:18:1::1".parse().unwrap();
        let me6: IpAddr = "fd00:18:1::2".parse().unwrap();
        let f = frame(
            s6,
            me6,
            &hep(Hep {
                capture: 6000,
                ..SIP
            }),
            false,
        );
        let want = steered(
            &f,
            "fd00:18:2::1".parse().unwrap(),
            "fd00:18:2::2".parse().unwrap(),
            9065,
            OUT_MAC,
            neighbour_mac("fd00:18:2::2"),
        );
        let mut c = common("steered=1");
        c.extend([
            "route/v6/matched=1".into(),
            "route/v6/steered=1".into(),
            "dest/a6/sent=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "ipv6 steer",
            &f,
            XDP_REDIRECT,
            &want,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // Call-sticky hash: each call goes where rendezvous hashing of its key (the SIP
        // Call-ID here) says, and both collectors are used.
        let seeds: Vec<u64> = ["a", "b"]
            .iter()
            .map(|n| {
                let d =
                    hep_user::config::compile(Path::new("lab.toml"), &CONFIG.replace("OPAQUE", ""))
                        .unwrap();
                d.destinations
                    .iter()
                    .find(|x| x.name == *n)
                    .unwrap()
                    .hash_seed
            })
            .collect();
        let mut used = [0usize; 2];
        for i in 0..12 {
            let call = format!("call-{i}@lab");
            let f = frame(
                sender,
                me,
                &hep(Hep {
                    capture: 2500,
                    call_id: &call,
                    ..SIP
                }),
                false,
            );
            let k = rendezvous_pick(key_hash(call.as_bytes()), &seeds).unwrap();
            used[k] += 1;
            let (dst, port, name) = [("198.18.2.2", 9061, "a"), ("198.18.2.4", 9062, "b")][k];
            let want = steered(&f, out_src, v4(dst), port, OUT_MAC, neighbour_mac(dst));
            let mut c = common("steered=1");
            c.extend([
                "route/calls/matched=1".into(),
                "route/calls/steered=1".into(),
                format!("dest/{name}/sent=1"),
            ]);
            check(
                xdp,
                &slots,
                &format!("hash {call}"),
                &f,
                XDP_REDIRECT,
                &want,
                &c.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        assert!(
            used[0] > 0 && used[1] > 0,
            "both collectors must be used: {used:?}"
        );

        // Drop route.
        let f = frame(sender, me, &hep(Hep { proto: 100, ..SIP }), false);
        let mut c = common("route_drop=1");
        c.extend([
            "dropped=1".into(),
            "route/logs/matched=1".into(),
            "route/logs/dropped=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "drop route",
            &f,
            XDP_DROP,
            &f,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // Sampling: whole calls are kept or left out, by the shared sampling rule.
        let (mut kept, mut out) = (0, 0);
        for i in 0..16 {
            let call = format!("sampled-{i}@lab");
            let f = frame(
                sender,
                me,
                &hep(Hep {
                    capture: 3000,
                    call_id: &call,
                    ..SIP
                }),
                false,
            );
            if sample_keep(key_hash(call.as_bytes()), 500_000) {
                kept += 1;
                let want = steered(&f, out_src, v4("198.18.2.2"), 9061, OUT_MAC, a_mac);
                let mut c = common("steered=1");
                c.extend([
                    "route/sampled/matched=1".into(),
                    "route/sampled/steered=1".into(),
                    "dest/a/sent=1".into(),
                ]);
                check(
                    xdp,
                    &slots,
                    &call,
                    &f,
                    XDP_REDIRECT,
                    &want,
                    &c.iter().map(String::as_str).collect::<Vec<_>>(),
                );
            } else {
                out += 1;
                let mut c = common("sampled_out=1");
                c.extend([
                    "dropped=1".into(),
                    "route/sampled/matched=1".into(),
                    "route/sampled/sampled_out=1".into(),
                ]);
                check(
                    xdp,
                    &slots,
                    &call,
                    &f,
                    XDP_DROP,
                    &f,
                    &c.iter().map(String::as_str).collect::<Vec<_>>(),
                );
            }
        }
        assert!(
            kept > 0 && out > 0,
            "sampling must keep some calls and leave some out"
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
            let f = frame(sender, me, &hep(h), false);
            let mut c = common("auth_failed=1");
            c.push("dropped=1".into());
            check(
                xdp,
                &slots,
                what,
                &f,
                XDP_DROP,
                &f,
                &c.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        let f = frame(v4("198.18.7.7"), me, &hep(SIP), false);
        let mut c = common("not_allowed=1");
        c.push("dropped=1".into());
        check(
            xdp,
            &slots,
            "sender not allowed",
            &f,
            XDP_DROP,
            &f,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // Userspace actions pass untouched: a rewrite, a TCP destination.
        for (what, capture, route) in [
            ("rewrite", 7000, "rewrite"),
            ("tcp destination", 7001, "to-tcp"),
        ] {
            let f = frame(sender, me, &hep(Hep { capture, ..SIP }), false);
            let mut c = common("pass_action=1");
            c.extend(["passed=1".into(), format!("route/{route}/passed=1")]);
            check(
                xdp,
                &slots,
                what,
                &f,
                XDP_PASS,
                &f,
                &c.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }

        // Round robin: each packet to one of the targets, rotating (per CPU), so both are
        // used over a few packets.
        let mut used = [0usize; 2];
        for i in 0..8 {
            let f = frame(
                sender,
                me,
                &hep(Hep {
                    capture: 9000,
                    ..SIP
                }),
                false,
            );
            let before = read(xdp, &slots);
            let (action, out) = run(xdp, &f);
            let after = read(xdp, &slots);
            assert_eq!(action, XDP_REDIRECT, "rr {i}");
            let to_a = steered(&f, out_src, v4("198.18.2.2"), 9061, OUT_MAC, a_mac);
            let to_b = steered(
                &f,
                out_src,
                v4("198.18.2.4"),
                9062,
                OUT_MAC,
                neighbour_mac("198.18.2.4"),
            );
            let k = if out == to_a {
                0
            } else {
                assert!(
                    out == to_b,
                    "rr {i}: the frame must be steered to a or b exactly"
                );
                1
            };
            used[k] += 1;
            let dest = ["a", "b"][k];
            let mut c = common("steered=1");
            c.extend([
                "route/rr/matched=1".into(),
                "route/rr/steered=1".into(),
                format!("dest/{dest}/sent=1"),
            ]);
            assert_eq!(
                changes(&before, &after),
                sorted(&c.iter().map(String::as_str).collect::<Vec<_>>()),
                "rr {i}"
            );
        }
        assert!(
            used[0] > 0 && used[1] > 0,
            "round robin uses both: {used:?}"
        );

        // Node name: exact bytes (a prefix or a longer name is another node).
        let b_mac = neighbour_mac("198.18.2.4");
        for (node, to_b) in [
            (&b"edge-8"[..], true),
            (b"edge-", false),
            (b"edge-88", false),
        ] {
            let f = frame(
                sender,
                me,
                &hep(Hep {
                    node: Some(node),
                    ..SIP
                }),
                false,
            );
            let what = format!("node {}", String::from_utf8_lossy(node));
            if to_b {
                let want = steered(&f, out_src, v4("198.18.2.4"), 9062, OUT_MAC, b_mac);
                let mut c = common("steered=1");
                c.extend([
                    "route/by-node/matched=1".into(),
                    "route/by-node/steered=1".into(),
                    "dest/b/sent=1".into(),
                ]);
                check(
                    xdp,
                    &slots,
                    &what,
                    &f,
                    XDP_REDIRECT,
                    &want,
                    &c.iter().map(String::as_str).collect::<Vec<_>>(),
                );
            } else {
                let want = steered(&f, out_src, v4("198.18.2.2"), 9061, OUT_MAC, a_mac);
                let mut c = common("steered=1");
                c.extend([
                    "route/default/matched=1".into(),
                    "route/default/steered=1".into(),
                    "dest/a/sent=1".into(),
                ]);
                check(
                    xdp,
                    &slots,
                    &what,
                    &f,
                    XDP_REDIRECT,
                    &want,
                    &c.iter().map(String::as_str).collect::<Vec<_>>(),
                );
            }
        }

        // Mirror (the TC program copies it): passed unchanged, with the route in the XDP
        // metadata in front of the frame (BPF_PROG_TEST_RUN returns it with the data).
        let f = frame(
            sender,
            me,
            &hep(Hep {
                capture: 8000,
                ..SIP
            }),
            false,
        );
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
        want.extend_from_slice(&f);
        let mut c = common("mirrored=1");
        c.extend([
            "route/mirror/matched=1".into(),
            "route/mirror/mirrored=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "mirror",
            &f,
            XDP_PASS,
            &want,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // No neighbour entry for the collector yet: passed untouched (the daemon sends it).
        let f = frame(
            sender,
            me,
            &hep(Hep {
                capture: 5000,
                ..SIP
            }),
            false,
        );
        let mut c = common("steer_fallback=1");
        c.extend([
            "passed=1".into(),
            "route/unresolved/passed=1".into(),
            "dest/no-neighbour/fallback=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "no neighbour",
            &f,
            XDP_PASS,
            &f,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // A VLAN-tagged frame is not steered (headers would need resizing): passed untouched.
        let f = frame(sender, me, &hep(SIP), true);
        let mut c = common("steer_fallback=1");
        c.extend([
            "passed=1".into(),
            "route/default/passed=1".into(),
            "dest/a/fallback=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "vlan steer",
            &f,
            XDP_PASS,
            &f,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );

        // To the listener's port but another address of the node: no listener takes it
        // there, so the kernel leaves it alone.
        let f = frame(sender, v4("198.18.1.9"), &hep(SIP), false);
        check(
            xdp,
            &slots,
            "other address",
            &f,
            XDP_PASS,
            &f,
            &["received=1", "other_port=1", "passed=1"],
        );

        // Lying chunk length: invalid HEP, passed untouched, no decision.
        let mut bad = hep(SIP);
        let at = 6 + 4; // the first chunk's length field
        bad[at] = 0xff;
        let f = frame(sender, me, &bad, false);
        check(
            xdp,
            &slots,
            "chunk past the end",
            &f,
            XDP_PASS,
            &f,
            &["received=1", "hep_candidate=1", "hep_invalid=1", "passed=1"],
        );
        // Truncated: a chunk header cut short.
        let mut cut = hep(SIP);
        cut.truncate(cut.len() - 3);
        let n = cut.len() as u16;
        cut[4..6].copy_from_slice(&n.to_be_bytes());
        let f = frame(sender, me, &cut, false);
        check(
            xdp,
            &slots,
            "truncated chunk",
            &f,
            XDP_PASS,
            &f,
            &["received=1", "hep_candidate=1", "hep_invalid=1", "passed=1"],
        );

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
        let want = steered(&f, out_src, v4("198.18.2.2"), 9061, OUT_MAC, a_mac);
        let mut c = common("steered=1");
        c.extend([
            "route/default/matched=1".into(),
            "route/default/steered=1".into(),
            "dest/a/sent=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "64 chunks",
            &f,
            XDP_REDIRECT,
            &want,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let f = frame(sender, me, &chunky(65), false);
        check(
            xdp,
            &slots,
            "65 chunks",
            &f,
            XDP_PASS,
            &f,
            &["received=1", "hep_candidate=1", "hep_invalid=1", "passed=1"],
        );

        // With an opaque route (correlation: the kernel cannot match it) in front of the
        // default, packets reaching it go to userspace; earlier routes still decide.
        assert_eq!(t.routes.len(), 12);
        install(xdp, &mut slots, true, false);
        let f = frame(sender, me, &hep(SIP), false);
        let mut c = common("pass_opaque=1");
        c.extend(["passed=1".into(), "route/by-correlation/passed=1".into()]);
        check(
            xdp,
            &slots,
            "opaque route",
            &f,
            XDP_PASS,
            &f,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let f = frame(sender, me, &hep(Hep { proto: 100, ..SIP }), false);
        let mut c = common("route_drop=1");
        c.extend([
            "dropped=1".into(),
            "route/logs/matched=1".into(),
            "route/logs/dropped=1".into(),
        ]);
        check(
            xdp,
            &slots,
            "drop before the opaque route",
            &f,
            XDP_DROP,
            &f,
            &c.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    });
}
