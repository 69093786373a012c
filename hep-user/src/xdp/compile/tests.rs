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

#[test]
fn set_rewrites_and_auth_keys_become_in_place_edits() {
    let src = r#"
[[listener]]
name = "l"
udp = "127.0.0.1:9060"
[[destination]]
name = "a"
address = "127.0.0.1:1"
[[destination]]
name = "a2"
address = "127.0.0.1:4"
[[destination]]
name = "keyed"
address = "127.0.0.1:2"
set_auth_key = "t0psec"
[[destination]]
name = "long-key"
address = "127.0.0.1:3"
set_auth_key = "0123456789012345678901234567890123456789"
[[route]]
name = "set"
match = { capture_id = [1] }
forward = ["a"]
rewrite = [ { set = "capture_id", value = 7 }, { set = "node_name", value = "x" }, { set = "capture_id", value = 9 } ]
[[route]]
name = "delete"
match = { capture_id = [2] }
forward = ["a"]
rewrite = [ { set = "capture_id", value = 7 }, { delete = "node_name" } ]
[[route]]
name = "five"
match = { capture_id = [3] }
forward = ["a"]
rewrite = [ { set = { vendor = 9, type = 1 }, value = "1" }, { set = { vendor = 9, type = 2 }, value = "2" }, { set = { vendor = 9, type = 3 }, value = "3" }, { set = { vendor = 9, type = 4 }, value = "4" }, { set = { vendor = 9, type = 5 }, value = "5" } ]
[[route]]
name = "long-value"
match = { capture_id = [4] }
forward = ["a"]
rewrite = [ { set = "node_name", value = "a-node-name-longer-than-32-bytes!" } ]
[[route]]
name = "mirror"
match = { capture_id = [5] }
forward = ["a", "keyed"]
mode = "all"
[[route]]
name = "mirror-set"
match = { capture_id = [8] }
forward = ["a", "a2"]
mode = "all"
rewrite = [ { set = "capture_id", value = 7 } ]
[[route]]
name = "keyed"
match = { capture_id = [6] }
forward = ["keyed"]
[[route]]
name = "long-key"
match = { capture_id = [7] }
forward = ["long-key"]
"#;
    let p = plan(src);
    let t = compile(&p, &mut Slots::default(), &Net, true);
    let got: Vec<(&str, Runs, &str)> = t
        .placements
        .iter()
        .map(|p| (p.route.as_str(), p.runs, p.why.as_str()))
        .collect();
    use Runs::*;
    assert_eq!(
        got,
        [
            ("set", Kernel, "steer to a, rewritten in place"),
            ("delete", UserspaceAction, "rewrite deletes a chunk"),
            ("five", UserspaceAction, "rewrite of more than 4 chunks"),
            (
                "long-value",
                UserspaceAction,
                "rewrite sets a value of 33 bytes (the kernel writes 1 to 32)"
            ),
            (
                "mirror",
                UserspaceAction,
                "mirror to a destination with an auth key"
            ),
            ("mirror-set", Kernel, "mirror to a, a2, rewritten in place"),
            ("keyed", Kernel, "steer to keyed, rewritten in place"),
            (
                "long-key",
                UserspaceAction,
                "long-key sets an auth key longer than 32 bytes"
            ),
        ]
    );
    // The last edit of a chunk decides; order kept by first decision.
    let r = &t.routes[0];
    assert_eq!(r.n_edits, 2);
    assert_eq!((r.edits[0].kind, r.edits[0].len), (0x0013, 1));
    assert_eq!(&r.edits[0].value[..1], b"x");
    assert_eq!((r.edits[1].kind, r.edits[1].len), (0x000c, 4));
    assert_eq!(&r.edits[1].value[..4], &9u32.to_be_bytes());
    // The destination's auth key: chunk 0x000e, its bytes.
    let keyed = t
        .destination_names
        .iter()
        .position(|n| n == "keyed")
        .expect("keyed");
    let auth = &t.destinations[keyed].auth;
    assert_eq!((auth.vendor, auth.kind, auth.len), (0, 0x000e, 6));
    assert_eq!(&auth.value[..6], b"t0psec");
    assert_eq!(t.destinations[0].auth.len, 0);
}
