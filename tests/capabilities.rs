//! The capabilities of the systemd unit (`deploy/systemd/hepfwd.service`), proved: the
//! daemon, run as an unprivileged uid (65534) holding only `CAP_BPF CAP_NET_ADMIN
//! CAP_PERFMON` (ambient, inheritable and bounding, no new privileges: what `User=`,
//! `AmbientCapabilities=`, `CapabilityBoundingSet=` and `NoNewPrivileges=` give it), attaches
//! XDP in `--mode xdp`, tells the notify socket `READY=1` with its data path, and forwards
//! (the bytes arrive at a collector, steered by the kernel). With any one of the three
//! removed it does not start, and its error names the missing capability.
//!
//! In the namespaces of `support::netns` (198.18.0.0/15), removed when the test ends, also on
//! failure. Privileged: skips loudly unless root, fails under `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use hepfwd_harness::message::TestMessage;
use hepfwd_tests::hepfwd::hepfwd_bin;
use hepfwd_tests::metrics::Metrics;
use hepfwd_tests::netns::{ADMIN, COL_A, IF_IN, LISTEN, Ns, SND, Topology, TopologyPeers};
use hepfwd_tests::peers::{ProcessGuard, TestDir, read_tail};
use hepfwd_tests::privileged;

/// The unit's capabilities, as `setpriv` names them and as the daemon's error does.
const CAPABILITIES: [(&str, &str); 3] = [
    ("bpf", "CAP_BPF"),
    ("net_admin", "CAP_NET_ADMIN"),
    ("perfmon", "CAP_PERFMON"),
];

/// nobody/nogroup.
const UNPRIVILEGED: &str = "65534";

fn config() -> String {
    format!(
        r#"
[admin]
listen = "{ADMIN}"

[[listener]]
name = "agents"
udp = "{LISTEN}"

[xdp]
interfaces = ["{IF_IN}"]
attach = "native"

[[destination]]
name = "a"
address = "{COL_A}:9061"

[[route]]
name = "sip"
match = {{ proto = ["sip"] }}
forward = ["a"]
"#
    )
}

/// The daemon in fwd as uid/gid 65534 holding exactly `caps` (setpriv names), with
/// `NOTIFY_SOCKET` at `notify`.
fn start(topo: &Topology, dir: &TestDir, tag: &str, caps: &[&str]) -> (ProcessGuard, UnixDatagram) {
    let notify_path = dir.join(&format!("{tag}.notify"));
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // The daemon, not root, must be able to send to it.
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", topo.name(Ns::Fwd), "setpriv"])
        .arg(format!("--reuid={UNPRIVILEGED}"))
        .arg(format!("--regid={UNPRIVILEGED}"))
        .arg("--clear-groups")
        .arg("--no-new-privs")
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg(hepfwd_bin().unwrap())
        .args(["--log", "info", "run", "--mode", "xdp", "--config"])
        .arg(dir.join("hepfwd.toml"))
        .env("NOTIFY_SOCKET", &notify_path);
    // `ip netns exec` and `setpriv` exec: the guard's PID is the daemon's.
    let guard = ProcessGuard::spawn(
        "hepfwd",
        cmd,
        &dir.join(&format!("{tag}.stdout")),
        &dir.join(&format!("{tag}.stderr")),
    )
    .unwrap();
    (guard, notify)
}

fn recv(sock: &UnixDatagram) -> std::io::Result<String> {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_units_capabilities_suffice_for_xdp_and_each_one_is_needed() {
    let test = "the_units_capabilities_suffice_for_xdp_and_each_one_is_needed";
    if !privileged::available(test) {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        privileged::skip(test, "setpriv is not installed (Debian: util-linux)");
        return;
    }
    let bin = hepfwd_bin().unwrap();
    let topo = Topology::new("caps");
    let collector = topo.udp_collector("a", COL_A, 9061);
    let dir = TestDir::new("caps").unwrap();
    // uid 65534 reads the configuration and reaches the notify sockets.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("hepfwd.toml"), config()).unwrap();
    let all: Vec<&str> = CAPABILITIES.iter().map(|(c, _)| *c).collect();

    // All three: attached, ready, forwarding in the kernel.
    {
        let (mut daemon, notify) = start(&topo, &dir, "all", &all);
        let stderr = || read_tail(daemon_stderr(&dir, "all").as_path(), 64 * 1024);
        let ready = recv(&notify)
            .unwrap_or_else(|e| panic!("no READY=1 from {} ({e}):\n{}", bin.display(), stderr()));
        assert!(
            ready.starts_with("READY=1\n") && ready.contains("STATUS=xdp on in0"),
            "{ready}\n{}",
            stderr()
        );
        assert!(topo.xdp_attached(Ns::Fwd, IF_IN), "XDP attached to in0");
        let owner = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        let uid = owner.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().skip(1).all(|u| u == UNPRIVILEGED),
            "the daemon runs as {UNPRIVILEGED}: {uid}"
        );
        topo.warm_neighbours();
        let packets: Vec<Vec<u8>> = (0..20)
            .map(|i| TestMessage::sip(&format!("caps-{i}@lab")).encode())
            .collect();
        let sender = topo.udp_socket(Ns::Snd, (SND, 5070).into());
        for p in &packets {
            sender.send_to(p, LISTEN).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut got = collector.inbox.take(packets.len(), Duration::from_secs(10));
        got.sort();
        let mut want = packets.clone();
        want.sort();
        assert_eq!(got, want, "the collector got every packet, unchanged");
        let metrics = topo.within(Ns::Fwd, || Metrics::scrape(ADMIN)).unwrap();
        let steered = metrics.get(
            "hepfwd_xdp_packets_total",
            &[("counter", "steered"), ("path", "xdp")],
        );
        assert_eq!(steered, 20, "the kernel steered them: {}", stderr());
        daemon.terminate(Duration::from_secs(10)).unwrap();
        assert_eq!(recv(&notify).unwrap(), "STOPPING=1");
        assert!(!topo.xdp_attached(Ns::Fwd, IF_IN), "detached on exit");
    }

    // Each one removed: no start, and the error names it.
    for (removed, name) in CAPABILITIES {
        let caps: Vec<&str> = all.iter().copied().filter(|c| *c != removed).collect();
        let (mut daemon, notify) = start(&topo, &dir, removed, &caps);
        let status = daemon.wait_timeout(Duration::from_secs(30)).unwrap();
        let stderr = read_tail(&daemon_stderr(&dir, removed), 64 * 1024);
        assert!(
            status.is_some_and(|s| !s.success()),
            "without {name} the daemon must fail ({status:?}):\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("missing {name} ")),
            "the error does not name {name}:\n{stderr}"
        );
        for other in CAPABILITIES.iter().map(|(_, n)| *n).filter(|n| *n != name) {
            assert!(
                !stderr.contains(&format!("missing {other}")),
                "the error names {other}, which it has:\n{stderr}"
            );
        }
        notify.set_nonblocking(true).unwrap();
        let early = recv(&notify);
        assert!(
            early.as_deref().map_or(true, |m| !m.contains("READY=1")),
            "READY=1 without {name}: {early:?}"
        );
        assert!(!topo.xdp_attached(Ns::Fwd, IF_IN), "nothing left attached");
    }
    drop(collector);
}

fn daemon_stderr(dir: &TestDir, tag: &str) -> std::path::PathBuf {
    dir.join(&format!("{tag}.stderr"))
}
