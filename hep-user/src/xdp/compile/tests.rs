use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hep_common::abi::map_v4;
use hep_common::eval::{Verdict, evaluate};
use hep_common::facts::facts;
use hep_common::v3::{Hep3Message, Payload};

use super::*;
use crate::admin::stats::Stats;
use crate::config::compile as compile_config;
use crate::engine::{DestinationHandle, Engine, Outbox, WorkerCtx};

pub(super) struct Net;
impl NetEnv for Net {
    fn source_for(&self, dest: SocketAddr) -> Option<IpAddr> {
        Some(if dest.is_ipv4() {
            Ipv4Addr::new(198, 18, 0, 1).into()
        } else {
            "2001:db8::1".parse().ok()?
        })
    }
}

pub(super) fn plan(src: &str) -> Plan {
    compile_config(Path::new("t.toml"), src).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_example_is_placed_as_documented() {
    let p = plan(include_str!("../../../../config/example.toml"));
    let t = compile(&p, &mut Slots::default(), &Net, false);
    let got: Vec<(&str, Runs)> = t
        .placements
        .iter()
        .map(|p| (p.route.as_str(), p.runs))
        .collect();
    assert_eq!(
        got,
        [
            ("sip-calls", Runs::Userspace),
            ("rtcp-sampled", Runs::UserspaceAction),
            ("drop-logs", Runs::Kernel),
            ("default", Runs::Kernel),
        ]
    );
    assert_eq!(t.placements[0].why, "match on correlation");
    assert_eq!(t.placements[1].why, "homer-b is TCP");
    assert_eq!(t.placements[3].why, "steer to homer-a");
    assert_eq!(t.destination_names, ["homer-a"]);
    assert_eq!(t.destinations[0].port, 9061);
    assert_eq!(t.destinations[0].src_addr, map_v4([198, 18, 0, 1]));
    assert_eq!(t.listeners.len(), 1);
    assert_eq!(t.listeners[0].auth_key_len, 6);
    assert_eq!(t.allow.len(), 2);
    assert_eq!(t.allow[0].prefix_len, 32 + 96 + 15);
    assert!(describe(&t).contains("route \"drop-logs\": kernel: drop"));
}

#[test]
fn what_the_kernel_cannot_do_goes_to_userspace() {
    let src = r#"
[[listener]]
name = "l"
udp = "127.0.0.1:9060"
auth_key = "0123456789012345678901234567890123456789"
[[destination]]
name = "a"
address = "127.0.0.1:1"
[[destination]]
name = "b"
address = "127.0.0.1:2"
[[destination]]
name = "v2"
address = "127.0.0.1:3"
hep_version = 2
[[route]]
name = "node"
match = { node_name = ["a-node-name-longer-than-32-bytes!"] }
forward = ["a"]
[[route]]
name = "many"
match = { capture_id = [1, 2, 3, 4, 5] }
forward = ["a"]
[[route]]
name = "cont"
forward = ["a"]
continue = true
[[route]]
name = "dedup"
forward = ["a"]
dedup = "1s"
[[route]]
name = "fo"
forward = ["a", "b"]
mode = "failover"
[[route]]
name = "old"
forward = ["v2"]
[[route]]
name = "mirror"
forward = ["a", "b"]
[[route]]
name = "rr"
forward = ["a", "b"]
mode = "round-robin"
"#;
    let p = plan(src);
    let t = compile(&p, &mut Slots::default(), &Net, false);
    let runs: Vec<Runs> = t.placements.iter().map(|p| p.runs).collect();
    use Runs::*;
    assert_eq!(
        runs,
        [
            Userspace,
            Userspace,
            UserspaceAction,
            UserspaceAction,
            UserspaceAction,
            UserspaceAction,
            UserspaceAction,
            Kernel
        ]
    );
    assert_eq!(t.routes[0].kind, RouteKind::Opaque as u8);
    assert_eq!(t.placements[0].why, "a node_name longer than 32 bytes");
    assert_eq!(t.placements[5].why, "v2 takes HEPv2");
    assert_eq!(t.listeners[0].auth_key_len, AUTH_IN_USERSPACE);
    let t = compile(&p, &mut Slots::default(), &Net, true);
    assert_eq!(t.placements[6].runs, Kernel);
    assert_eq!(t.routes[6].action, RouteAction::Mirror as u8);
}

#[test]
fn slots_are_stable_by_name() {
    let mut s = Slots::default();
    assert_eq!(
        (s.route("a"), s.route("b"), s.route("a")),
        (Some(0), Some(1), Some(0))
    );
    assert_eq!(s.destination("x"), Some(0));
}

/// A tiny deterministic generator (xorshift), so the cross-check is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// For many packets, whatever the kernel decides over the compiled tables is exactly what
/// the userspace engine does with that packet (a pass is always allowed).
#[test]
fn the_kernel_never_contradicts_the_engine() {
    let src = r#"
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
[[route]]
name = "logs"
match = { proto = [100], capture_id = ["2000-2999"] }
action = "drop"
[[route]]
name = "rtcp"
match = { proto = ["rtcp"], inner_port = ["5000-5099"] }
forward = ["a", "b", "c"]
mode = "hash"
sample = 0.5
[[route]]
name = "from-net"
match = { source = ["127.0.0.2/32"], inner_src = ["198.18.0.0/16"] }
forward = ["b"]
[[route]]
name = "by-node"
match = { node_name = ["special", "x"] }
forward = ["b"]
[[route]]
name = "opaque"
match = { correlation = { suffix = "@opaque" } }
forward = ["t"]
[[route]]
name = "to-tcp"
match = { inner_dst = ["198.19.0.0/16"] }
forward = ["t"]
[[route]]
name = "sip"
match = { proto = [1] }
forward = ["a", "c"]
mode = "hash"
[default]
forward = ["c"]
"#;
    let p = plan(src);
    let t = compile(&p, &mut Slots::default(), &Net, false);
    let stats = Arc::new(Stats::default());
    let handles: Vec<DestinationHandle> = p
        .destinations
        .iter()
        .map(|d| DestinationHandle {
            plan: d.clone(),
            stats: stats.destination(&d.name),
            queue: None,
        })
        .collect();
    let engine = Engine::new(p.clone(), 1, handles, stats, Instant::now());
    let mut ctx = WorkerCtx::new();
    let mut out = Outbox::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 4096];
    let (mut kernel_decided, mut passed) = (0, 0);
    for i in 0..5_000u32 {
        let proto = rng.pick(&[1u8, 5, 100, 34]);
        let call = format!("{}@x", rng.next() % 300);
        let sip = format!("INVITE sip:b SIP/2.0\r\nCall-ID: {call}\r\n\r\n");
        let inner_src: Ipv4Addr = rng.pick(&[[198, 18, 1, 1], [10, 0, 0, 1]]).into();
        let inner_dst: Ipv4Addr = rng.pick(&[[198, 19, 0, 9], [10, 0, 0, 2]]).into();
        let corr = (proto != 1).then_some(call.as_bytes());
        let node = rng.pick(&[
            Some(&b"special"[..]),
            Some(&b"specia"[..]),
            Some(&b"special2"[..]),
            Some(&b"x"[..]),
            None,
            None,
        ]);
        let m = Hep3Message {
            ip_proto: 17,
            src_ip: inner_src.into(),
            dst_ip: inner_dst.into(),
            src_port: rng.pick(&[5060u16, 5001, 7000]),
            dst_port: 5060,
            ts_sec: i,
            ts_usec: 0,
            proto_type: proto,
            capture_id: rng.pick(&[2001u32, 2500, 3000]),
            auth_key: None,
            correlation_id: corr,
            vlan_id: None,
            node_name: node,
            extra: &[],
            payload: Payload::Plain(sip.as_bytes()),
        };
        let n = m.encode(&mut buf).expect("encode");
        let bytes = &buf[..n];
        let sender: SocketAddr = rng
            .pick(&["127.0.0.1:4000", "127.0.0.2:4000"])
            .parse()
            .expect("addr");
        let IpAddr::V4(s4) = sender.ip() else {
            unreachable!()
        };
        let f = facts(bytes, map_v4(s4.octets())).expect("facts");
        let verdict = evaluate(&t.routes, &f, 0);
        engine.process(&mut ctx, 0, sender, bytes, &mut out);
        let sent: Vec<(String, Vec<u8>)> = out
            .items()
            .iter()
            .map(|it| (p.destinations[it.dest].name.clone(), out.bytes(it).to_vec()))
            .collect();
        out.clear();
        match verdict {
            Verdict::Pass { .. } => passed += 1,
            Verdict::Drop { .. } | Verdict::SampledOut { .. } => {
                kernel_decided += 1;
                assert!(
                    sent.is_empty(),
                    "packet {i}: kernel drops, engine sent {sent:?}"
                );
            }
            Verdict::Steer { dest, .. } => {
                kernel_decided += 1;
                let name = &t.destination_names[dest as usize];
                assert_eq!(
                    sent,
                    vec![(name.clone(), bytes.to_vec())],
                    "packet {i}: {verdict:?}"
                );
            }
            Verdict::Mirror { .. } => panic!("no mirror route compiled"),
        }
    }
    assert!(
        kernel_decided > 1_500 && passed > 500,
        "kernel {kernel_decided}, passed {passed}"
    );
}
