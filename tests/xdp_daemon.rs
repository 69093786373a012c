//! `hepfwd run` with the kernel data plane, in the namespaces of `support::netns` (snd →
//! fwd: the daemon, XDP and the TC mirror on `in0` → col: two UDP collectors and a TCP
//! one). Addresses in 198.18.0.0/15. (`tests/xdp_netns.rs` checks exact bytes per route
//! against a model, `config/example.toml` included; this file compares the two modes over
//! more route kinds, and covers kill -9, reload and the mode choice.)
//!
//! - Parity: the same packet sequence through `--mode xdp` and `--mode userspace`
//!   delivers the same HEP bytes (as multisets) to the same collectors, for every route kind
//!   the kernel handles or hands up: drop, call sampling, call-sticky hash, mirror, steer,
//!   a rewrite written in place, a TCP destination and failover (userspace actions), an opaque match
//!   (correlation), the auth key. In XDP mode the counters prove the kernel steered, mirrored and dropped, and
//!   that the daemon's sockets received exactly the packets the kernel passed up.
//! - `kill -9` under load leaves no program attached, and traffic reaches the stack.
//! - `--mode xdp` refuses to start without interfaces; `--mode auto` says why it runs
//!   userspace-only (these two need no privileges).
//!
//! Privileged parts skip loudly unless root, and fail under `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use hepfwd_harness::message::TestMessage;
use hepfwd_tests::daemon::Mode;
use hepfwd_tests::hepfwd::hepfwd_bin;
use hepfwd_tests::metrics::Metrics;
use hepfwd_tests::netns::{COL_A, COL_B, IF_IN, LISTEN, Ns, SND, Topology, TopologyPeers};
use hepfwd_tests::peers::{ProcessGuard, TestDir, read_tail};
use hepfwd_tests::privileged;

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9100"

[[listener]]
name = "agents"
udp = "198.18.1.2:9060"
auth_key = "s3cret"
allow = ["198.18.1.0/24"]

[xdp]
interfaces = ["in0"]
attach = "native"

[[destination]]
name = "a"
address = "198.18.2.2:9061"
[[destination]]
name = "b"
address = "198.18.2.3:9062"
[[destination]]
name = "homer-tcp"
address = "198.18.2.3:9063"
transport = "tcp"

[[route]]
name = "drop-logs"
match = { proto = [100] }
action = "drop"

[[route]]
name = "rtcp-sampled"
match = { proto = ["rtcp"] }
forward = ["b"]
sample = 0.5

[[route]]
name = "calls"
match = { capture_id = ["2000-2999"] }
forward = ["a", "b"]
mode = "hash"

[[route]]
name = "mirror"
match = { capture_id = [3000] }
forward = ["a", "b"]
mode = "all"

[[route]]
name = "rewrite"
match = { capture_id = [4000] }
forward = ["a"]
rewrite = [ { set = "capture_id", value = 42 } ]

[[route]]
name = "to-tcp"
match = { capture_id = [5000] }
forward = ["homer-tcp"]

[[route]]
name = "failover"
match = { capture_id = [6000] }
forward = ["a", "b"]
mode = "failover"

[[route]]
name = "carrier"
match = { correlation = { suffix = "@carrier.example" } }
forward = ["b"]

[default]
forward = ["a"]
"#;

/// One packet of the sequence: proto type, capture id, call id, correlation chunk, auth.
fn hep(proto: u8, capture: u32, call: &str, corr: Option<&str>, auth: Option<&[u8]>) -> Vec<u8> {
    TestMessage::sip(call)
        .proto(proto)
        .capture_id(capture)
        .timestamp(1_700_000_000, capture)
        .auth_key(auth)
        .correlation(corr.map(str::as_bytes))
        .encode()
}

/// The test sequence (bounded): every route, several calls each.
fn sequence() -> Vec<Vec<u8>> {
    let k = Some(&b"s3cret"[..]);
    let mut v = Vec::new();
    for i in 0..8 {
        v.push(hep(100, 1000, &format!("log-{i}"), None, k));
        let rtcp_key = format!("rtcp-{i}@lab");
        v.push(hep(5, 1000, "x", Some(&rtcp_key), k));
        for _ in 0..2 {
            v.push(hep(1, 2000 + i, &format!("call-{i}@lab"), None, k));
        }
        v.push(hep(1, 3000, &format!("mirrored-{i}@lab"), None, k));
        v.push(hep(1, 4000, &format!("rewritten-{i}@lab"), None, k));
        v.push(hep(1, 5000, &format!("tcp-{i}@lab"), None, k));
        v.push(hep(1, 6000, &format!("failover-{i}@lab"), None, k));
        v.push(hep(1, 1000, &format!("c-{i}@carrier.example"), None, k));
        v.push(hep(1, 1000, &format!("other-{i}@lab"), None, k));
        v.push(hep(1, 1000, &format!("no-auth-{i}@lab"), None, None));
    }
    v
}

fn multiset(v: Vec<Vec<u8>>) -> BTreeMap<Vec<u8>, usize> {
    let mut m = BTreeMap::new();
    for p in v {
        *m.entry(p).or_insert(0) += 1;
    }
    m
}

/// What the collectors received.
#[derive(Debug, PartialEq)]
struct Delivered {
    a: BTreeMap<Vec<u8>, usize>,
    b: BTreeMap<Vec<u8>, usize>,
    tcp: BTreeMap<Vec<u8>, usize>,
}

/// Runs the sequence through a daemon in `mode`; returns what the collectors got and the
/// daemon's final metrics.
fn run_sequence(mode: Mode) -> (Delivered, Metrics) {
    let topo = Topology::new(&format!("par-{mode}"));
    let ca = topo.udp_collector("a", COL_A, 9061);
    let cb = topo.udp_collector("b", COL_B, 9062);
    let ct = topo.tcp_collector("homer-tcp", COL_B, 9063);
    let d = topo.hepfwd(mode, CONFIG);
    // The kernel passes a packet whose next hop is unresolved up; resolve them first.
    topo.warm_neighbours();
    if mode == Mode::Xdp {
        assert!(
            d.stderr().contains("data path: xdp"),
            "the daemon must say it runs XDP:\n{}",
            d.stderr()
        );
    }
    let seq = sequence();
    let sender = topo.udp_socket(Ns::Snd, (SND, 5070).into());
    for p in &seq {
        sender.send_to(p, LISTEN).expect("send");
        std::thread::sleep(Duration::from_millis(1));
    }
    let quiet = Duration::from_millis(700);
    let a = multiset(ca.inbox.drain(quiet));
    let b = multiset(cb.inbox.drain(quiet));
    std::thread::sleep(Duration::from_millis(300));
    let m = d.metrics();
    drop(d);
    let tcp = multiset(ct.stop());
    (Delivered { a, b, tcp }, m)
}

#[test]
fn xdp_and_userspace_deliver_the_same_bytes_to_the_same_collectors() {
    let test = "xdp_and_userspace_deliver_the_same_bytes_to_the_same_collectors";
    if !privileged::available(test) {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (user, um) = run_sequence(Mode::Userspace);
    let (xdp, xm) = run_sequence(Mode::Xdp);
    // The sequence reached every collector (so the comparison is not of empty sets).
    assert!(
        !user.a.is_empty() && !user.b.is_empty() && !user.tcp.is_empty(),
        "{user:?}"
    );
    assert_eq!(
        um.get("hepfwd_xdp_packets_total", &[]),
        0,
        "userspace mode has no XDP counters"
    );
    assert_eq!(
        xdp.a, user.a,
        "collector a: the two modes must deliver the same HEP bytes"
    );
    assert_eq!(xdp.b, user.b, "collector b");
    assert_eq!(xdp.tcp, user.tcp, "the TCP collector");
    // Call-sticky hashing: both packets of each call at one collector, both collectors used.
    let mut at = [0usize; 2];
    for i in 0..8 {
        let call = format!("call-{i}@lab");
        let k = Some(&b"s3cret"[..]);
        let p = hep(1, 2000 + i, &call, None, k);
        let (na, nb) = (
            xdp.a.get(&p).copied().unwrap_or(0),
            xdp.b.get(&p).copied().unwrap_or(0),
        );
        assert!(
            (na, nb) == (2, 0) || (na, nb) == (0, 2),
            "{call}: {na} at a, {nb} at b"
        );
        at[usize::from(nb > 0)] += 1;
    }
    assert!(at[0] > 0 && at[1] > 0, "both collectors take calls: {at:?}");

    // XDP mode: the kernel did the common cases...
    let x = |c: &str| {
        xm.require(
            "hepfwd_xdp_packets_total",
            &[("counter", c), ("path", "xdp")],
        )
    };
    assert!(
        x("sampled_out") > 0 && x("sampled_out") < 8,
        "sampled out {}",
        x("sampled_out")
    );
    assert_eq!(
        x("steered"),
        16 + (8 - x("sampled_out")) + 8,
        "calls, RTCP kept, and the capture id rewritten in place"
    );
    assert_eq!(x("mirrored"), 8);
    assert_eq!(x("route_drop"), 8);
    assert_eq!(x("auth_failed"), 8);
    // ...and handed up exactly the rest, which the daemon's socket received.
    let passed_up = x("pass_action") + x("pass_opaque") + x("pass_no_route") + x("steer_fallback");
    assert_eq!(x("pass_action"), 16, "TCP and failover routes");
    assert_eq!(
        x("pass_opaque"),
        16,
        "everything reaching the correlation route"
    );
    let user_received = xm.get("hepfwd_received_total", &[("path", "user")]);
    assert_eq!(
        user_received, passed_up,
        "the daemon's sockets saw exactly what the kernel passed up"
    );
    assert_eq!(
        xm.require(
            "hepfwd_route_matches_total",
            &[("route", "mirror"), ("path", "xdp")]
        ),
        8
    );
    assert!(
        xm.require(
            "hepfwd_destination_sent_total",
            &[("destination", "b"), ("path", "xdp")]
        ) > 0
    );
}

/// The ids of the loaded BPF programs named `hep_xdp` or `hep_mirror`.
fn our_programs() -> std::collections::BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool prog show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| matches!(p["name"].as_str(), Some("hep_xdp" | "hep_mirror")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// The privileged tests of this file run one at a time: the kill test tells the daemon's
/// programs by the ids that appear while it starts.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether a BPF program with this id is still loaded.
fn program_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn kill_9_under_load_leaves_no_program_and_traffic_flows_to_the_stack() {
    let test = "kill_9_under_load_leaves_no_program_and_traffic_flows_to_the_stack";
    if !privileged::available(test) {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let topo = Topology::new("kill9");
    let sink = topo.udp_collector("a", COL_A, 9061);
    let before = our_programs();
    let mut d = topo.hepfwd(Mode::Xdp, CONFIG);
    topo.warm_neighbours();
    assert!(topo.xdp_attached(Ns::Fwd, IF_IN), "XDP attached to in0");
    let progs: Vec<u64> = our_programs().difference(&before).copied().collect();
    assert_eq!(
        progs.len(),
        2,
        "the daemon holds hep_xdp and hep_mirror: {progs:?}"
    );

    // Load: a bounded stream (at most 20,000 packets, at most 5 s) while the daemon dies.
    let pkt = hep(1, 1000, "load@lab", None, Some(b"s3cret"));
    let sender = topo.udp_socket(Ns::Snd, (SND, 5071).into());
    let t0 = Instant::now();
    let mut killed = false;
    for i in 0..20_000u32 {
        let _ = sender.send_to(&pkt, LISTEN);
        // A quarter of the way in: load before and after the kill.
        if !killed && i == 5_000 {
            d.signal(libc::SIGKILL);
            killed = true;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        if i % 64 == 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    assert!(killed, "the daemon was killed during the load");
    assert!(
        d.wait_exit(Duration::from_secs(5)).is_some(),
        "the daemon did not die"
    );
    assert!(
        !sink.inbox.drain(Duration::from_millis(200)).is_empty(),
        "the kernel forwarded part of the load before the kill"
    );

    // The links died with the process: nothing attached, both programs unloaded (an
    // attachment would keep its program loaded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone = || !topo.xdp_attached(Ns::Fwd, IF_IN) && !progs.iter().any(|id| program_exists(*id));
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !topo.xdp_attached(Ns::Fwd, IF_IN),
        "XDP still attached after kill -9"
    );
    for id in &progs {
        assert!(
            !program_exists(*id),
            "program {id} still loaded after kill -9"
        );
    }

    // Traffic flows to the stack: a socket on the listener address gets the packets.
    let rx = topo.udp_socket(Ns::Fwd, LISTEN);
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sender.send_to(&pkt, LISTEN).expect("send");
    let mut buf = [0u8; 2048];
    let n = rx
        .recv(&mut buf)
        .expect("the packet reaches the stack's socket");
    assert_eq!(&buf[..n], &pkt[..]);
}

#[test]
fn reload_swaps_the_kernel_tables_without_losing_packets() {
    let test = "reload_swaps_the_kernel_tables_without_losing_packets";
    if !privileged::available(test) {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let topo = Topology::new("reload");
    let ca = topo.udp_collector("a", COL_A, 9061);
    let cb = topo.udp_collector("b", COL_B, 9062);
    // Without the opaque correlation route, the default route is the kernel's.
    let opaque = "[[route]]\nname = \"carrier\"\nmatch = { correlation = { suffix = \"@carrier.example\" } }\nforward = [\"b\"]\n";
    assert!(CONFIG.contains(opaque));
    let config = CONFIG.replace(opaque, "");
    let d = topo.hepfwd(Mode::Xdp, &config);
    topo.warm_neighbours();
    // The new configuration sends the default route to b instead of a.
    let to_b = config.replace(
        "[default]\nforward = [\"a\"]",
        "[default]\nforward = [\"b\"]",
    );
    assert_ne!(to_b, config);
    std::fs::write(d.config_path(), to_b).unwrap();
    let pkt = |i: u32| hep(1, 1000, &format!("reload-{i}@lab"), None, Some(b"s3cret"));
    const N: u32 = 3000;
    let sender = topo.udp_socket(Ns::Snd, (SND, 5073).into());
    for i in 0..N {
        if i == N / 2 {
            d.signal(libc::SIGHUP);
        }
        sender.send_to(&pkt(i), LISTEN).expect("send");
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    let at_a = ca.inbox.drain(Duration::from_millis(700));
    let at_b = cb.inbox.drain(Duration::from_millis(100));
    let m = d.metrics();
    assert_eq!(
        m.get("hepfwd_config_reloads_total", &[("result", "ok")]),
        1,
        "{}",
        d.stderr()
    );
    assert_eq!(
        at_a.len() + at_b.len(),
        N as usize,
        "every packet arrived once (a {}, b {})",
        at_a.len(),
        at_b.len()
    );
    assert!(
        !at_a.is_empty() && !at_b.is_empty(),
        "both configurations served"
    );
    // Before the swap everything went to a, after it to b: one cut, no interleaving.
    let index = |p: &Vec<u8>| (0..N).find(|i| pkt(*i) == *p).expect("a packet we sent");
    let last_a = at_a.iter().map(index).max().unwrap();
    let first_b = at_b.iter().map(index).min().unwrap();
    assert!(last_a < first_b, "a got up to {last_a}, b from {first_b}");
    assert!(
        m.get("hepfwd_xdp_packets_total", &[("counter", "steered")]) >= u64::from(N) - 5,
        "the kernel steered them"
    );
}

/// Starts `hepfwd run` on a loopback config (no privileges needed) and returns its exit
/// status (if it exited within `wait`) and stderr.
fn start_briefly(mode: &str, wait: Duration) -> (Option<std::process::ExitStatus>, String) {
    let dir = TestDir::new("hepfwd-mode").expect("dir");
    let cfg = dir.join("c.toml");
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"l\"\nudp = \"127.0.0.1:{port}\"\n[[destination]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n[default]\nforward = [\"a\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(hepfwd_bin().expect("hepfwd"));
    cmd.args(["run", "--mode", mode, "--config"]).arg(&cfg);
    let mut p = ProcessGuard::spawn("hepfwd", cmd, &dir.join("o"), &dir.join("e")).unwrap();
    let st = p.wait_timeout(wait).unwrap();
    let err = read_tail(p.stderr_path(), 10_000);
    let _ = p.terminate(Duration::from_secs(2));
    (st, err)
}

#[test]
fn mode_xdp_without_interfaces_refuses_and_auto_says_why_it_runs_userspace() {
    let (st, err) = start_briefly("xdp", Duration::from_secs(10));
    let st = st.expect("--mode xdp without interfaces must exit");
    assert!(!st.success(), "{err}");
    assert!(
        err.contains("--mode xdp: no [xdp] interfaces are configured"),
        "{err}"
    );
    let (st, err) = start_briefly("auto", Duration::from_millis(1500));
    assert!(st.is_none(), "--mode auto keeps running:\n{err}");
    assert!(
        err.contains("data path: userspace (no [xdp] interfaces are configured)"),
        "{err}"
    );
}
