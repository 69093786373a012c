use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use hep_common::abi::map_v4;

use super::*;
use crate::config::compile as compile_config;

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

// The kernel-vs-engine differential test runs over generated configurations: see
// `differential.rs`.
