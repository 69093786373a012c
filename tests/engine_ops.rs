//! Operations end to end: SIGHUP reloads under load without loss (and a rejected one),
//! malformed input counted by kind and forwarded raw to `[invalid]`, SIGTERM draining TCP
//! queues, `check-config` errors, and the `path` label on every metric.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hepfwd_tests::collector::{
    Agent, QUIET, TcpAgent, TcpCollector, UdpCollector, WAIT, expect_all_silent,
};
use hepfwd_tests::daemon::{
    Daemon, LO, ONE_WORKER, Ports, free_port_v4, tcp_destination, udp_destination, udp_listener,
};
use hepfwd_tests::hepfwd::hepfwd_bin;
use hepfwd_tests::hepgen::{Pkt, packet_of};
use hepfwd_tests::metrics::Metrics;
use hepfwd_tests::peers::{ProcessGuard, TestDir, read_tail};

/// The sequence number an RTCP test packet carries (payload bytes 4..8).
fn seq_of(p: &[u8]) -> u32 {
    let h = hep_common::Hep3::parse(p).expect("HEPv3");
    let payload = h.payload().expect("a payload");
    u32::from_be_bytes(payload[4..8].try_into().unwrap())
}

const LOAD: u32 = 20_000;

#[test]
fn reloads_under_load_lose_nothing_and_a_bad_one_is_rejected() {
    let u = UdpCollector::new("udp");
    let t = TcpCollector::new("tcp");
    let (uaddr, taddr) = (u.addr, t.addr);
    // Every version keeps the two destinations as they are; routes are renamed and added.
    let version = move |v: usize| {
        move |p: &Ports| {
            let mut c =
                udp_listener(p) + &udp_destination("u", uaddr) + &tcp_destination("t", taddr, None);
            if v >= 2 {
                c += &udp_destination("spare", SocketAddr::from((LO, 9)));
                c += "\n[[route]]\nname = \"logs\"\nmatch = { proto = [100] }\naction = \"drop\"\n";
            }
            if v >= 3 {
                c += "\n[[route]]\nname = \"sip-spare\"\nmatch = { proto = [\"sip\"] }\nforward = [\"spare\"]\n";
            }
            c + &format!("\n[[route]]\nname = \"load-v{v}\"\nforward = [\"u\", \"t\"]\n")
        }
    };
    let d = Daemon::start("reload", version(0));
    d.wait_counter(
        "hepfwd_destination_connected",
        &[("destination", "t")],
        1,
        WAIT,
    );
    let done = Arc::new(AtomicBool::new(false));
    let admin = d.admin;
    let to = d.listen();
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let agent = Agent::new();
            let received = || {
                Metrics::scrape(admin)
                    .map(|m| m.get("hepfwd_received_total", &[]))
                    .unwrap_or(0)
            };
            // About 10,000 packets a second, never more than 500 ahead of the daemon.
            let start = Instant::now();
            for chunk in 0..LOAD / 100 {
                let packets: Vec<Vec<u8>> = (chunk * 100..chunk * 100 + 100)
                    .map(|s| Pkt::rtcp("load", s).encode())
                    .collect();
                agent.send_paced(to, &packets, 500, received);
                let due = start + Duration::from_millis(10 * u64::from(chunk + 1));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            done.store(true, Relaxed);
        })
    };
    let mut reloads = 0;
    let mut v = 1;
    while !done.load(Relaxed) && v <= 5 {
        std::thread::sleep(Duration::from_millis(200));
        assert!(d.reload(version(v)), "reload {v} rejected");
        reloads += 1;
        v += 1;
    }
    // A file with an error is rejected; the running configuration stays.
    let bad = |p: &Ports| version(5)(p) + "\n[[route]]\nname = \"broken\"\nforward = [\"nope\"]\n";
    assert!(!d.reload(bad), "a bad configuration was accepted");
    sender.join().expect("the sender thread");
    assert!(
        reloads >= 3,
        "only {reloads} reloads happened during the load"
    );

    let mut useqs: Vec<u32> = u
        .take(LOAD as usize, WAIT)
        .iter()
        .map(|p| seq_of(p))
        .collect();
    let tseqs: Vec<u32> = t
        .take(LOAD as usize, WAIT)
        .iter()
        .map(|p| seq_of(p))
        .collect();
    expect_all_silent(&[&u.inbox, &t.inbox], QUIET);
    useqs.sort_unstable();
    assert!(
        useqs == (0..LOAD).collect::<Vec<_>>(),
        "UDP: a packet lost or twice"
    );
    let tset: BTreeSet<u32> = tseqs.iter().copied().collect();
    assert_eq!(tset.len(), LOAD as usize, "TCP: a packet twice");
    assert!(tset.iter().copied().eq(0..LOAD), "TCP: a packet lost");

    let m = d.metrics();
    assert_eq!(
        m.get("hepfwd_config_reloads_total", &[("result", "ok")]),
        reloads
    );
    assert_eq!(
        m.get("hepfwd_config_reloads_total", &[("result", "error")]),
        1
    );
    let t_dest = [("destination", "t")];
    assert_eq!(m.get("hepfwd_destination_reconnects_total", &t_dest), 0);
    assert_eq!(m.get("hepfwd_destination_dropped_total", &t_dest), 0);
    assert_eq!(t.accepted.load(Relaxed), 1, "the TCP connection was kept");
    // The destinations that stayed kept counting across the reloads; the routes renamed
    // away left /metrics with the reload that removed them.
    assert_eq!(
        m.get("hepfwd_destination_sent_total", &[("destination", "u")]),
        u64::from(LOAD)
    );
    for old in (0..v - 1).map(|v| format!("load-v{v}")) {
        assert!(
            m.matching("hepfwd_route_matches_total", &[("route", &old)])
                .next()
                .is_none(),
            "route {old} is still on /metrics after the reload that removed it"
        );
    }

    // The rejection names file, line, column and field.
    let cfg = d.config_path().display().to_string();
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("forward = [\"nope\"]"))
        .unwrap()
        + 1;
    let log = d.stderr();
    assert!(
        !log.contains('\u{1b}'),
        "terminal colour codes in a log that is not a terminal"
    );
    let want = format!("{cfg}:{line}:12: route[");
    assert!(
        log.contains(&want) && log.contains("unknown destination \"nope\""),
        "the log does not name {want}…: {log}"
    );

    // Still running, on the last good configuration.
    let p = Pkt::rtcp("after", LOAD + 1).encode();
    Agent::new().send(to, &p);
    assert!(u.take(1, WAIT) == vec![p.clone()]);
    assert!(t.take(1, WAIT) == vec![p]);
    assert_eq!(
        d.counter(
            "hepfwd_route_matches_total",
            &[("route", &format!("load-v{}", v - 1))]
        ),
        m.get(
            "hepfwd_route_matches_total",
            &[("route", &format!("load-v{}", v - 1))]
        ) + 1
    );
}

#[test]
fn malformed_input_is_counted_by_kind_and_forwarded_raw() {
    let good = UdpCollector::new("good");
    let raw_udp = UdpCollector::new("raw-udp");
    let raw_tcp = TcpCollector::new("raw-tcp");
    let d = Daemon::start("malformed", |p| {
        format!(
            "\n[[listener]]\nname = \"agents\"\nudp = \"127.0.0.1:{0}\"\ntcp = \"127.0.0.1:{0}\"\n",
            p.listen
        ) + &udp_destination("good", good.addr)
            + &udp_destination("raw-udp", raw_udp.addr)
            + &tcp_destination("raw-tcp", raw_tcp.addr, None)
            + "\n[default]\nforward = [\"good\"]\n"
            + "\n[invalid]\nforward = [\"raw-udp\", \"raw-tcp\"]\n"
            + ONE_WORKER
    });
    let valid = Pkt::sip("ok@x", 1).encode();
    let mut longer = valid.clone();
    let n = longer.len() as u16 + 10;
    longer[4..6].copy_from_slice(&n.to_be_bytes());
    let mut shorter = valid.clone();
    let n = shorter.len() as u16 - 1;
    shorter[4..6].copy_from_slice(&n.to_be_bytes());
    let bad_width = packet_of(&[
        (0, 0x000b, vec![1]),
        (0, 0x000c, vec![0, 7]),
        (0, 0x000f, b"x".to_vec()),
    ]);
    let mut past_end = packet_of(&[(0, 0x000b, vec![1]), (0, 0x000f, b"payload".to_vec())]);
    let last = past_end.len() - 7 - 6 + 4; // the payload chunk's length field
    past_end[last..last + 2].copy_from_slice(&40u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"HE".to_vec()),
        ("truncated", b"HEP3\x00".to_vec()),
        ("length_mismatch", longer),
        ("length_mismatch", shorter),
        ("bad_chunk_width", bad_width.clone()),
        ("chunk_past_end", past_end.clone()),
        ("unknown_version", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    let agent = Agent::new();
    for (_, bytes) in &cases {
        agent.send(d.listen(), bytes);
    }
    agent.send(d.listen(), &valid);
    // Raw and unchanged to the UDP destination of [invalid], in order.
    let raw: Vec<Vec<u8>> = cases.iter().map(|c| c.1.clone()).collect();
    assert!(
        raw_udp.take(raw.len(), WAIT) == raw,
        "[invalid] got other bytes"
    );
    assert!(good.take(1, WAIT) == vec![valid.clone()]);
    // A TCP destination takes only what is exactly one HEPv3 frame by its length field
    // (anything else would desynchronise the collector's stream), and counts the rest.
    assert!(raw_tcp.take(2, WAIT) == vec![bad_width, past_end]);

    // TCP: a good frame, then garbage: the frame goes through, the connection is closed.
    let mut a = TcpAgent::connect(d.listen());
    let mut stream = Pkt::sip("tcp-ok@x", 2).encode();
    let tcp_valid = stream.clone();
    stream.extend_from_slice(b"GARBAGE AFTER A FRAME");
    a.write(&stream);
    assert!(
        a.closed_by_peer(Duration::from_secs(5)),
        "the daemon kept a connection that sent garbage"
    );
    let mut b = TcpAgent::connect(d.listen());
    b.write(b"\x16\x03\x01 a TLS hello, say");
    assert!(b.closed_by_peer(Duration::from_secs(5)));
    assert!(good.take(1, WAIT) == vec![tcp_valid]);
    expect_all_silent(&[&good.inbox, &raw_udp.inbox, &raw_tcp.inbox], QUIET);

    let m = d.metrics();
    let kinds = [
        "truncated",
        "length_mismatch",
        "bad_chunk_width",
        "chunk_past_end",
        "unknown_version",
        "tcp_framing",
    ];
    for k in kinds {
        let want = if k == "tcp_framing" {
            2
        } else {
            cases.iter().filter(|c| c.0 == k).count() as u64
        };
        assert_eq!(
            m.get(
                "hepfwd_parse_errors_total",
                &[("listener", "agents"), ("kind", k)]
            ),
            want,
            "kind {k}"
        );
    }
    assert_eq!(m.get("hepfwd_parse_errors_total", &[]), 9);
    assert_eq!(
        m.get(
            "hepfwd_destination_dropped_total",
            &[("destination", "raw-tcp"), ("reason", "invalid_frame")]
        ),
        5
    );
    assert_eq!(
        m.get(
            "hepfwd_destination_sent_total",
            &[("destination", "raw-udp")]
        ),
        7
    );
}

#[test]
fn without_invalid_malformed_input_is_dropped_and_counted() {
    let good = UdpCollector::new("good");
    let d = Daemon::start("malformed-drop", |p| {
        udp_listener(p)
            + &udp_destination("good", good.addr)
            + "\n[default]\nforward = [\"good\"]\n"
    });
    let agent = Agent::new();
    for _ in 0..4 {
        agent.send(d.listen(), b"\xff\xfe garbage");
    }
    d.wait_counter(
        "hepfwd_parse_errors_total",
        &[("kind", "unknown_version")],
        4,
        WAIT,
    );
    good.expect_silent(QUIET);
    assert_eq!(d.counter("hepfwd_destination_sent_total", &[]), 0);
}

#[test]
fn sigterm_drains_tcp_queues_to_a_late_collector_and_exits_0() {
    let addr = SocketAddr::from((LO, free_port_v4()));
    let mut d = Daemon::start("sigterm", |p| {
        udp_listener(p)
            + &tcp_destination("late", addr, None)
            + "\n[default]\nforward = [\"late\"]\n"
            + "\n[engine]\nworkers = 1\ndrain_timeout = \"5s\"\n"
    });
    let agent = Agent::new();
    let sent: Vec<Vec<u8>> = (0..30).map(|i| Pkt::sip("drain@x", i).encode()).collect();
    for p in &sent {
        agent.send(d.listen(), p);
    }
    d.wait_counter(
        "hepfwd_destination_queue_depth",
        &[("destination", "late")],
        30,
        WAIT,
    );
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.running(), "hepfwd exited before its queue drained");
    let c = TcpCollector::bind("late", addr);
    let st = d
        .wait_exit(Duration::from_secs(8))
        .expect("hepfwd did not exit");
    let took = t0.elapsed();
    assert!(st.success(), "exit status {st}");
    assert!(took < Duration::from_secs(5), "the drain took {took:?}");
    assert!(
        c.expect(30, WAIT) == sent,
        "the queued frames, once, in order"
    );
    assert!(
        d.stderr().contains("all TCP queues drained"),
        "{}",
        d.stderr()
    );
}

#[test]
fn sigterm_gives_up_at_the_drain_timeout_and_exits_0() {
    let addr = SocketAddr::from((LO, free_port_v4()));
    let mut d = Daemon::start("sigterm-timeout", |p| {
        udp_listener(p)
            + &tcp_destination("never", addr, None)
            + "\n[default]\nforward = [\"never\"]\n"
            + "\n[engine]\ndrain_timeout = \"300ms\"\n"
    });
    let agent = Agent::new();
    for i in 0..5 {
        agent.send(d.listen(), &Pkt::sip("x@x", i).encode());
    }
    d.wait_counter(
        "hepfwd_destination_queue_depth",
        &[("destination", "never")],
        5,
        WAIT,
    );
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let st = d
        .wait_exit(Duration::from_secs(5))
        .expect("hepfwd did not exit");
    assert!(st.success(), "exit status {st}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let log = d.stderr();
    assert!(log.contains("did not drain in time"), "{log}");
}

/// `hepfwd check-config FILE`: (success, stdout, stderr).
fn check_config(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(hepfwd_bin().unwrap())
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_file_line_column_field_and_hint() {
    let dir = TestDir::new("check-config").unwrap();
    let base = "[[listener]]\nname = \"l\"\nudp = \"127.0.0.1:9060\"\n\n[[destination]]\nname = \"a\"\naddress = \"127.0.0.1:9061\"\n";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "unknown-destination.toml",
            "\n[[route]]\nname = \"r\"\nforward = [\"a\", \"homer-c\"]\n",
            ":11:17: route[0].forward[1]: unknown destination \"homer-c\"",
            "hint: defined destinations: a",
        ),
        (
            "typo.toml",
            "\n[[route]]\nname = \"r\"\nfoward = [\"a\"]\n",
            ":11:1: route[0].foward: unknown field `foward`",
            "hint: check the spelling",
        ),
        (
            "bad-sample.toml",
            "\n[[route]]\nname = \"r\"\nforward = [\"a\"]\nsample = 1.5\n",
            ":12:10: route[0].sample: 1.5 is not a fraction",
            "hint: use a number from 0.0 to 1.0",
        ),
        (
            "bad-address.toml",
            "\n[[destination]]\nname = \"b\"\naddress = \"collector\"\n",
            ":11:11: destination[1].address: \"collector\" is not an IP:port or host:port address",
            "hint: write e.g. \"198.18.2.2:9060\"",
        ),
    ];
    for (name, tail, error, hint) in cases {
        let path = dir.join(name);
        std::fs::write(&path, format!("{base}{tail}")).unwrap();
        let (ok, _, stderr) = check_config(&path);
        assert!(!ok, "{name}: accepted");
        let want = format!("{}{error}", path.display());
        assert!(
            stderr.lines().any(|l| l.contains(&want)),
            "{name}: no line with {want:?} in:\n{stderr}"
        );
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(hint)),
            "{name}: no {hint:?} in:\n{stderr}"
        );
    }
    // Every error of a file at once.
    let path = dir.join("several.toml");
    std::fs::write(
        &path,
        format!("{base}\n[[route]]\nname = \"r\"\nforward = [\"x\"]\nmode = \"sticky\"\n"),
    )
    .unwrap();
    let (ok, _, stderr) = check_config(&path);
    assert!(!ok);
    assert!(
        stderr.contains("route[0].forward[0]: unknown destination \"x\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("route[0].mode: unknown mode \"sticky\""),
        "{stderr}"
    );
    // A missing file.
    let (ok, _, stderr) = check_config(&dir.join("absent.toml"));
    assert!(!ok && stderr.contains("cannot read"), "{stderr}");
    // And a good one.
    let path = dir.join("good.toml");
    std::fs::write(
        &path,
        format!("{base}\n[[route]]\nname = \"r\"\nforward = [\"a\"]\n"),
    )
    .unwrap();
    let (ok, stdout, stderr) = check_config(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("route \"r\": forward all to a"), "{stdout}");
}

#[test]
fn every_metric_has_the_path_label() {
    let col = UdpCollector::new("c");
    let d = Daemon::start("path-label", |p| {
        udp_listener(p)
            + &udp_destination("c", col.addr)
            + "\n[[route]]\nname = \"r\"\nforward = [\"c\"]\n"
    });
    Agent::new().send(d.listen(), &Pkt::sip("p@x", 1).encode());
    col.take(1, WAIT);
    assert!(d.reload(|p| {
        udp_listener(p)
            + &udp_destination("c", col.addr)
            + "\n[[route]]\nname = \"r2\"\nforward = [\"c\"]\n"
    }));
    let m = d.metrics();
    // The process and build families describe the process, not a data path.
    let missing: BTreeSet<&str> = m
        .samples
        .iter()
        .filter(|s| !s.name.starts_with("process_") && s.name != "hepfwd_build_info")
        .filter(|s| s.labels.get("path").map(String::as_str) != Some("user"))
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "families without path=\"user\": {missing:?}"
    );
    for name in [
        "hepfwd_received_total",
        "hepfwd_rejected_total",
        "hepfwd_route_matches_total",
        "hepfwd_destination_sent_total",
        "hepfwd_unrouted_total",
        "hepfwd_config_reloads_total",
    ] {
        assert!(m.names().contains(&name), "{name} missing");
    }
    let (status, body) = hepfwd_tests::metrics::http_get(d.admin, "/healthz").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["destinations"]["c"]["up"], true);
}

#[test]
fn reload_moves_listeners_and_a_failed_bind_keeps_the_running_configuration() {
    let col = UdpCollector::new("c");
    let on = |port_of: fn(&Ports) -> u16| {
        let addr = col.addr;
        move |p: &Ports| {
            format!(
                "\n[[listener]]\nname = \"agents\"\nudp = \"127.0.0.1:{0}\"\ntcp = \"127.0.0.1:{0}\"\n",
                port_of(p)
            ) + &udp_destination("c", addr)
                + "\n[default]\nforward = [\"c\"]\n"
        }
    };
    let d = Daemon::start("reload-listeners", on(|p| p.listen));
    let agent = Agent::new();
    let first = SocketAddr::from((LO, d.ports.listen));
    let second = SocketAddr::from((LO, d.ports.listen2));
    let p1 = Pkt::sip("l@x", 1).encode();
    agent.send(first, &p1);
    assert!(col.take(1, WAIT) == vec![p1]);

    // Moved: the new port takes packets (UDP and TCP), the old one is closed.
    assert!(d.reload(on(|p| p.listen2)));
    let p2 = Pkt::sip("l@x", 2).encode();
    agent.send(second, &p2);
    assert!(col.take(1, WAIT) == vec![p2]);
    let p3 = Pkt::sip("l@x", 3).encode();
    TcpAgent::connect(second).write(&p3);
    assert!(col.take(1, WAIT) == vec![p3]);
    agent.send(first, &Pkt::sip("l@x", 4).encode());
    col.expect_silent(QUIET);
    assert!(
        std::net::TcpStream::connect_timeout(&first, Duration::from_secs(1)).is_err(),
        "the old TCP listener still accepts"
    );

    // Moving back onto a port someone else holds fails: the reload is an error, and the
    // running configuration keeps working.
    let squatter = std::net::UdpSocket::bind(first).expect("bind the old port");
    assert!(
        !d.reload(on(|p| p.listen)),
        "a reload that cannot bind was counted ok"
    );
    let p5 = Pkt::sip("l@x", 5).encode();
    agent.send(second, &p5);
    assert!(
        col.take(1, Duration::from_secs(3)) == vec![p5],
        "the running listener stopped forwarding after the failed reload"
    );
    drop(squatter);
}

// ---- Defects found by attacking the daemon (admin server, configuration file, reload) ----

/// User + system CPU time of process `pid` so far (from /proc/PID/stat).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').expect("the end of the command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_millis(ticks * 1000 / u64::try_from(hz).unwrap_or(100))
}

/// Opens up to `count` TCP connections to `to` and keeps them; gives up after 5 connects
/// in a row that time out (a full backlog drops SYNs) or at `deadline`.
fn hold_connections(to: SocketAddr, count: usize, deadline: Instant) -> Vec<std::net::TcpStream> {
    let mut held = Vec::new();
    let mut failures_in_a_row = 0;
    while held.len() < count && failures_in_a_row < 5 && Instant::now() < deadline {
        match std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)) {
            Ok(s) => {
                held.push(s);
                failures_in_a_row = 0;
            }
            Err(_) => failures_in_a_row += 1,
        }
    }
    held
}

#[test]
fn accept_errors_back_off_when_file_descriptors_run_out() {
    let options = hepfwd_tests::daemon::StartOptions {
        nofile: Some((256, 256)),
        ..Default::default()
    };
    let d = Daemon::start_with("emfile", &options, |p| {
        format!(
            "\n[[listener]]\nname = \"agents\"\ntcp = \"127.0.0.1:{}\"\n{ONE_WORKER}",
            p.listen
        )
    });
    let stderr_path = d.dir().path().join("hepfwd-0.stderr");
    // About 300 connections to each port: the descriptors run out, both accept loops fail.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held = hold_connections(d.listen(), 300, deadline);
    held.extend(hold_connections(d.admin, 300, deadline));
    assert!(
        held.len() >= 256,
        "only {} connections could be opened",
        held.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, log0) = (
        cpu_time(d.pid()),
        std::fs::metadata(&stderr_path).unwrap().len(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let (cpu1, log1) = (
        cpu_time(d.pid()),
        std::fs::metadata(&stderr_path).unwrap().len(),
    );
    let cpu = cpu1 - cpu0;
    let logged = log1 - log0;
    // Spinning is a whole core (3 s); backing off is next to nothing.
    assert!(
        cpu < Duration::from_millis(600),
        "the daemon used {cpu:?} of CPU in 3 s while out of descriptors"
    );
    assert!(
        logged < 16 * 1024,
        "the daemon logged {logged} bytes in 3 s while out of descriptors"
    );
    // Once the connections are gone, the admin server answers again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match d.try_metrics() {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "/metrics did not answer within 10 s of the connections closing: {e:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        log.contains("suppressed"),
        "no rate-limited accept line in the log:\n{log}"
    );
}

#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_limit_at_start() {
    let options = hepfwd_tests::daemon::StartOptions {
        nofile: Some((256, 4096)),
        ..Default::default()
    };
    let d = Daemon::start_with("nofile", &options, udp_listener);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    let log = d.stderr();
    assert!(
        log.contains("RLIMIT_NOFILE")
            && log.contains("soft_before=256")
            && log.contains("hard=4096"),
        "the limits are not logged:\n{log}"
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path `c` owns.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// `hepfwd check-config FILE` within 5 s: (success, stderr); kills it (by PID) and fails
/// the test if it takes longer.
fn check_config_bounded(dir: &TestDir, path: &std::path::Path) -> (bool, String) {
    let mut cmd = Command::new(hepfwd_bin().unwrap());
    cmd.arg("check-config").arg(path);
    let (out, err) = (dir.join("check.stdout"), dir.join("check.stderr"));
    let mut p = hepfwd_tests::peers::ProcessGuard::spawn("check-config", cmd, &out, &err).unwrap();
    let status = p.wait_timeout(Duration::from_secs(5)).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!(
            "check-config {} did not finish within 5 s; stderr: {stderr}",
            path.display()
        )
    });
    (status.success(), stderr)
}

#[test]
fn check_config_refuses_a_fifo_or_a_huge_file_at_once_naming_it() {
    let dir = TestDir::new("config-fifo").unwrap();
    let fifo = dir.join("fifo.toml");
    mkfifo(&fifo);
    let (ok, stderr) = check_config_bounded(&dir, &fifo);
    assert!(!ok, "a FIFO was accepted");
    assert!(
        stderr.contains(&fifo.display().to_string()) && stderr.contains("not a regular file"),
        "{stderr}"
    );
    let huge = dir.join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(5 << 20)
        .unwrap();
    let (ok, stderr) = check_config_bounded(&dir, &huge);
    assert!(!ok, "a 5 MiB file was accepted");
    assert!(
        stderr.contains(&huge.display().to_string()) && stderr.contains("larger than"),
        "{stderr}"
    );
}

#[test]
fn sighup_with_a_fifo_as_configuration_keeps_running_and_sigterm_still_stops_it() {
    let mut d = Daemon::start("reload-fifo", udp_listener);
    std::fs::remove_file(d.config_path()).unwrap();
    mkfifo(d.config_path());
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rejected = false;
    while !rejected && Instant::now() < deadline {
        rejected = d
            .try_metrics()
            .is_ok_and(|m| m.get("hepfwd_config_reloads_total", &[("result", "error")]) == 1);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.running(), "the daemon died on a FIFO");
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM after a reload from a FIFO: {status:?}\n{}",
        d.stderr()
    );
    assert!(
        rejected,
        "the reload from a FIFO was not counted as rejected"
    );
    assert!(d.stderr().contains("not a regular file"), "{}", d.stderr());
}

/// `HEAD path` on `admin`: the raw answer.
fn http_head(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    String::from_utf8(raw).unwrap()
}

#[test]
fn head_on_the_admin_paths_answers_like_get_without_a_body() {
    let d = Daemon::start("head", udp_listener);
    for (path, content_type) in [
        ("/metrics", "content-type: text/plain; version=0.0.4"),
        ("/healthz", "content-type: application/json"),
    ] {
        let answer = http_head(d.admin, path);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .expect("the end of the headers");
        assert!(head.starts_with("HTTP/1.1 200"), "HEAD {path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains(content_type),
            "HEAD {path}: {head}"
        );
        assert_eq!(body, "", "HEAD {path} has a body");
    }
}

#[test]
fn check_config_rejects_an_admin_address_equal_to_a_tcp_listener() {
    let dir = TestDir::new("admin-clash").unwrap();
    let path = dir.join("hepfwd.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"agents\"\ntcp = \"127.0.0.1:9061\"\n\n[admin]\nlisten = \"127.0.0.1:9061\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = check_config(&path);
    assert!(
        !ok,
        "an admin address equal to a TCP listener's was accepted"
    );
    let want = format!("{}:6:10: admin.listen:", path.display());
    assert!(stderr.contains(&want), "{want} not in:\n{stderr}");
    assert!(stderr.contains("listener[0].tcp"), "{stderr}");
}

#[test]
fn engine_listen_backlog_sets_the_backlog_of_hep_tcp_listeners() {
    let d = Daemon::start("backlog", |p| {
        format!(
            "\n[[listener]]\nname = \"agents\"\ntcp = \"127.0.0.1:{}\"\n\n[engine]\nlisten_backlog = 37\n",
            p.listen
        )
    });
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", d.ports.listen)])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, ["37"], "ss says:\n{text}");
}

#[test]
fn a_reload_warns_about_each_changed_setting_that_needs_a_restart() {
    let other_admin = free_port_v4();
    let base = |p: &Ports| udp_listener(p) + "\n[engine]\nworkers = 1\nbatch = 32\n";
    let d = Daemon::start("reload-restart", base);
    let changed = move |p: &Ports| {
        udp_listener(p)
            + "\n[engine]\nworkers = 2\nbatch = 16\ndrain_timeout = \"1s\"\n"
            + &format!("\n[admin]\nlisten = \"127.0.0.1:{other_admin}\"\n")
    };
    assert!(d.reload(changed), "the reload was rejected");
    let log = d.stderr();
    let warned = |setting: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("restart") && l.contains(setting))
    };
    for setting in ["admin.listen", "engine.workers", "engine.batch"] {
        assert!(warned(setting), "no warning names {setting}:\n{log}");
    }
    for setting in ["engine.recv_buffer", "engine.drain_timeout"] {
        assert!(!warned(setting), "a warning names {setting}:\n{log}");
    }
}

/// A second daemon started with the same UDP listener address refuses to start, naming the
/// address, instead of sharing the port through SO_REUSEPORT and taking part of the
/// traffic; the first one keeps receiving everything.
#[test]
fn a_second_daemon_on_the_same_udp_address_refuses_to_start() {
    let u = UdpCollector::new("udp");
    let d = Daemon::start("twin-first", |p| {
        udp_listener(p) + &udp_destination("u", u.addr) + "\n[default]\nforward = [\"u\"]\n"
    });
    // The same configuration, with its own admin port.
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let admin = format!("127.0.0.1:{}", d.ports.admin);
    assert!(text.contains(&admin));
    let text = text.replace(&admin, &format!("127.0.0.1:{}", free_port_v4()));
    let dir = TestDir::new("twin-second").unwrap();
    let config = dir.join("hepfwd.toml");
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(hepfwd_bin().unwrap());
    cmd.args(["--log", "info", "run", "--mode", "userspace", "--config"])
        .arg(&config);
    let stderr_path = dir.join("second.stderr");
    let mut second = ProcessGuard::spawn(
        "hepfwd-second",
        cmd,
        &dir.join("second.stdout"),
        &stderr_path,
    )
    .unwrap();
    let status = second.wait_timeout(Duration::from_secs(10)).unwrap();
    let packets: Vec<Vec<u8>> = (0..200).map(|i| Pkt::rtcp("twin", i).encode()).collect();
    Agent::new().send_all(d.listen(), &packets);
    let stderr = read_tail(&stderr_path, 64 * 1024);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second hepfwd did not refuse to start ({status:?}); its stderr:\n{stderr}"
    );
    let addr = d.listen().to_string();
    assert!(
        stderr.contains(&addr) && stderr.contains("already"),
        "the second hepfwd's error does not name {addr} as already bound:\n{stderr}"
    );
    assert_eq!(u.take(200, WAIT).len(), 200);
    d.wait_counter(
        "hepfwd_received_total",
        &[("listener", "agents")],
        200,
        WAIT,
    );
}

/// `hepfwd ARGS` with `env` added to the test's environment (and every `HEPFWD_*` and
/// `NOTIFY_SOCKET` of the test's own removed): (exit code, stdout, stderr).
fn hepfwd_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(hepfwd_bin().unwrap());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HEPFWD_") || k == "NOTIFY_SOCKET" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_help_lists_an_environment_variable_for_every_option() {
    let (code, help, stderr) = hepfwd_with_env(&["run", "--help"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for var in [
        "HEPFWD_CONFIG",
        "HEPFWD_MODE",
        "HEPFWD_LOG",
        "HEPFWD_LOG_FORMAT",
    ] {
        assert!(
            help.contains(&format!("[env: {var}=")),
            "{var} not in:\n{help}"
        );
    }
    // Every long option but --help names its variable.
    let options = help.lines().map(str::trim_start).filter(|l| {
        // `--long ...` or `-s, --long ...`; not the `- value: ...` of possible values.
        l.starts_with("--") || (l.starts_with('-') && l.get(2..5) == Some(", -"))
    });
    for line in options {
        if line.contains("--help") {
            continue;
        }
        let long = line
            .split("--")
            .nth(1)
            .and_then(|s| s.split([' ', '=', '<']).next())
            .unwrap();
        let var = format!("HEPFWD_{}", long.to_uppercase().replace('-', "_"));
        assert!(
            help.contains(&format!("[env: {var}=")),
            "--{long} has no {var}:\n{help}"
        );
    }
}

#[test]
fn hepfwd_config_from_the_environment_starts_the_daemon_and_the_command_line_wins() {
    let dir = TestDir::new("env-config").unwrap();
    let config = dir.join("hepfwd.toml");
    let (listen, admin) = (free_port_v4(), free_port_v4());
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"agents\"\nudp = \"127.0.0.1:{listen}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
        ),
    )
    .unwrap();
    let admin = SocketAddr::from((LO, admin));
    let config_s = config.to_str().unwrap();
    let bogus = dir.join("missing.toml");
    // From the environment only; then the command line over a missing file and a bad mode.
    for (i, (args, env)) in [
        (
            vec!["run"],
            vec![
                ("HEPFWD_CONFIG", config_s),
                ("HEPFWD_MODE", "userspace"),
                ("HEPFWD_LOG_FORMAT", "json"),
            ],
        ),
        (
            vec![
                "--log-format",
                "text",
                "run",
                "--config",
                config_s,
                "--mode",
                "userspace",
            ],
            vec![
                ("HEPFWD_CONFIG", bogus.to_str().unwrap()),
                ("HEPFWD_MODE", "nonsense"),
                ("HEPFWD_LOG_FORMAT", "json"),
                ("HEPFWD_LOG", "warn"),
            ],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = Command::new(hepfwd_bin().unwrap());
        cmd.env_remove("NOTIFY_SOCKET").args(&args).envs(env);
        let stderr = dir.join(&format!("run-{i}.stderr"));
        let mut p = ProcessGuard::spawn(
            "hepfwd",
            cmd,
            &dir.join(&format!("run-{i}.stdout")),
            &stderr,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = p.try_wait().unwrap() {
                panic!(
                    "hepfwd {args:?} exited: {st}\n{}",
                    read_tail(&stderr, 64 * 1024)
                );
            }
            if matches!(
                hepfwd_tests::metrics::http_get(admin, "/healthz"),
                Ok((200, _))
            ) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hepfwd {args:?} did not come up:\n{}",
                read_tail(&stderr, 64 * 1024)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = p.terminate(Duration::from_secs(10)).unwrap();
        assert!(st.success(), "hepfwd {args:?}: {st}");
        let log = read_tail(&stderr, 64 * 1024);
        let json_running = log
            .lines()
            .any(|l| l.starts_with('{') && l.contains("running"));
        if i == 0 {
            // HEPFWD_LOG_FORMAT=json was taken.
            assert!(json_running, "no JSON \"running\" line in:\n{log}");
        } else {
            // --log-format text won over HEPFWD_LOG_FORMAT; HEPFWD_LOG=warn was taken.
            assert!(!log.lines().any(|l| l.starts_with('{')), "{log}");
            assert!(!log.contains("running"), "HEPFWD_LOG=warn ignored:\n{log}");
        }
    }
}

#[test]
fn an_invalid_hepfwd_mode_fails_with_clap_naming_it() {
    let (code, _, stderr) = hepfwd_with_env(
        &["run", "--config", "/nonexistent.toml"],
        &[("HEPFWD_MODE", "kernel-only")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'kernel-only'") && stderr.contains("--mode"),
        "{stderr}"
    );
    // And where the value came from.
    assert!(stderr.contains("HEPFWD_MODE"), "{stderr}");
    // From the command line, no variable is named.
    let (code, _, stderr) = hepfwd_with_env(
        &[
            "run",
            "--config",
            "/nonexistent.toml",
            "--mode",
            "kernel-only",
        ],
        &[("HEPFWD_MODE", "kernel-only")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("HEPFWD_MODE"), "{stderr}");
}

/// CLOCK_MONOTONIC in microseconds (what `MONOTONIC_USEC=` carries).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(r, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The next datagram on the notify socket, as its lines.
fn notification(sock: &std::os::unix::net::UnixDatagram, d: &Daemon) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no notification within the timeout: {e}\nhepfwd stderr:\n{}",
            d.stderr()
        )
    });
    String::from_utf8(buf[..n].to_vec())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_systemd_notify_protocol_ready_reloading_ready_stopping() {
    let dir = TestDir::new("notify").unwrap();
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let options = hepfwd_tests::daemon::StartOptions {
        env: vec![("NOTIFY_SOCKET".into(), path.clone().into())],
        ..Default::default()
    };
    let mut d = Daemon::start_with("notify", &options, udp_listener);
    let ready = ["READY=1", "STATUS=userspace: 1 UDP listener"];
    assert_eq!(notification(&sock, &d), ready);

    // Accepted and rejected reloads alike: RELOADING=1 with the time, then READY=1.
    for good in [true, false] {
        let before = monotonic_usec();
        let accepted = if good {
            d.reload(udp_listener)
        } else {
            d.reload(|_| "[[listener]]\nname = 3\n".to_string())
        };
        assert_eq!(accepted, good);
        let after = monotonic_usec();
        let reloading = notification(&sock, &d);
        assert_eq!(reloading.len(), 2, "{reloading:?}");
        assert_eq!(reloading[0], "RELOADING=1");
        let usec: u64 = reloading[1]
            .strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("not MONOTONIC_USEC=<number>: {reloading:?}"));
        assert!(
            before <= usec && usec <= after,
            "MONOTONIC_USEC={usec} not within the test's [{before}, {after}]"
        );
        assert_eq!(notification(&sock, &d), ready);
    }

    d.signal(libc::SIGTERM);
    assert_eq!(notification(&sock, &d), ["STOPPING=1"]);
    let st = d
        .wait_exit(Duration::from_secs(10))
        .expect("hepfwd did not exit");
    assert!(st.success(), "exit status {st}");
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let extra = sock
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(extra.is_err(), "a notification after STOPPING=1: {extra:?}");
}

/// SIGTERM while the daemon is still starting (its first listener bound, 63 more to go)
/// stops it with exit 0, not killed by the signal: the handlers come before anything slow.
#[test]
fn sigterm_during_the_start_exits_0() {
    let dir = TestDir::new("early-term").unwrap();
    let config = dir.join("hepfwd.toml");
    let mut text = String::from("[engine]\nworkers = 4\n");
    for i in 0..64 {
        text += &format!(
            "\n[[listener]]\nname = \"l{i}\"\nudp = \"127.0.{}.{}:0\"\n",
            i / 200 + 1,
            i % 200 + 1
        );
    }
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(hepfwd_bin().unwrap());
    cmd.env_remove("NOTIFY_SOCKET")
        .args(["--log", "info", "run", "--mode", "userspace", "--config"])
        .arg(&config);
    let stderr = dir.join("hepfwd.stderr");
    let mut p = ProcessGuard::spawn("hepfwd", cmd, &dir.join("hepfwd.stdout"), &stderr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("listening on UDP")
    {
        assert!(
            p.try_wait().unwrap().is_none(),
            "{}",
            read_tail(&stderr, 64 * 1024)
        );
        assert!(
            Instant::now() < deadline,
            "{}",
            read_tail(&stderr, 64 * 1024)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on the PID of the child this guard spawned and has not reaped.
    let r = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    let st = p
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("hepfwd did not exit");
    assert!(
        st.success(),
        "SIGTERM during the start: {st}\n{}",
        read_tail(&stderr, 64 * 1024)
    );
}

// ---- Health, readiness, process metrics, and what a reload leaves on /metrics ----

#[test]
fn healthz_is_503_naming_a_tcp_destination_without_collector_and_200_once_it_listens() {
    let col = UdpCollector::new("u");
    let taddr = SocketAddr::from((LO, free_port_v4()));
    let d = Daemon::start("healthz-degraded", |p| {
        udp_listener(p)
            + &udp_destination("u", col.addr)
            + &tcp_destination("t", taddr, None)
            + "\n[default]\nforward = [\"u\", \"t\"]\n"
    });
    let (status, _) = d.admin_get("/readyz");
    assert_eq!(status, 200, "/readyz once listening");

    let (status, v) = d.health();
    assert_eq!(status, 503, "/healthz with a TCP destination down: {v}");
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["destinations"]["t"]["up"], false, "{v}");
    assert_eq!(v["destinations"]["u"]["up"], true, "{v}");

    // The collector comes up: within the reconnect backoff (at most 5 s) it is healthy.
    let t = TcpCollector::bind("t", taddr);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v) = d.health();
        if status == 200 {
            assert_eq!(v["status"], "ok", "{v}");
            assert_eq!(v["destinations"]["t"]["up"], true, "{v}");
            assert_eq!(v["destinations"]["u"]["up"], true, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still {status} 15 s after the collector started: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(t);
}

#[test]
fn build_info_and_process_metrics_have_plausible_values() {
    let d = Daemon::start("process-metrics", udp_listener);
    let m = d.metrics();
    let one = |name: &str| -> f64 {
        let found: Vec<_> = m.matching(name, &[]).collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}; names: {:?}", m.names());
        found[0].value
    };
    let info: Vec<_> = m.matching("hepfwd_build_info", &[]).collect();
    assert_eq!(info.len(), 1, "hepfwd_build_info: {:?}", m.names());
    assert_eq!(info[0].value, 1.0);
    let version = info[0].labels.get("version").cloned().unwrap_or_default();
    let cli = Command::new(hepfwd_bin().unwrap())
        .arg("--version")
        .output()
        .unwrap();
    let cli = String::from_utf8_lossy(&cli.stdout).to_string();
    assert!(
        !version.is_empty() && cli.contains(&version),
        "build_info version {version:?}, hepfwd --version {cli:?}"
    );

    let rss = one("process_resident_memory_bytes");
    let rss_now = (d.rss_kib() * 1024) as f64;
    assert!(
        rss > 1e6 && rss < rss_now * 2.0 && rss > rss_now / 2.0,
        "process_resident_memory_bytes {rss}, VmRSS {rss_now}"
    );
    let fds = one("process_open_fds");
    let fds_now = d.open_fds() as f64;
    assert!(
        fds >= 3.0 && (fds - fds_now).abs() <= 16.0,
        "process_open_fds {fds}, /proc/PID/fd has {fds_now}"
    );
    let cpu = one("process_cpu_seconds_total");
    assert!(
        (0.0..60.0).contains(&cpu),
        "process_cpu_seconds_total {cpu}"
    );
    let start = one("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now + 1.0 && start > now - 120.0,
        "process_start_time_seconds {start}, now {now}"
    );
}

/// The label values of `label` on /metrics.
fn label_values(m: &Metrics, label: &str) -> BTreeSet<String> {
    m.samples
        .iter()
        .filter_map(|s| s.labels.get(label).cloned())
        .collect()
}

#[test]
fn a_reload_prunes_the_series_of_removed_routes_listeners_and_destinations() {
    let cols: Vec<UdpCollector> = (1..=3)
        .map(|i| UdpCollector::new(&format!("d{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = cols.iter().map(|c| c.addr).collect();
    let many = |p: &Ports| {
        let mut c = udp_listener(p)
            + &format!(
                "\n[[listener]]\nname = \"second\"\nudp = \"127.0.0.1:{}\"\n",
                p.listen2
            );
        for (i, a) in addrs.iter().enumerate() {
            c += &udp_destination(&format!("d{}", i + 1), *a);
        }
        c += "\n[[route]]\nname = \"r1\"\nmatch = { proto = [\"sip\"] }\nforward = [\"d1\"]\n";
        for r in 2..=50 {
            c += &format!(
                "\n[[route]]\nname = \"r{r}\"\nmatch = {{ proto = [{}] }}\nforward = [\"d{}\"]\n",
                100 + r,
                r % 3 + 1
            );
        }
        c
    };
    let d = Daemon::start("reload-prune", many);
    let agent = Agent::new();
    agent.send(d.listen(), &Pkt::sip("prune@x", 1).encode());
    cols[0].take(1, WAIT);
    d.wait_counter("hepfwd_route_matches_total", &[("route", "r1")], 1, WAIT);
    let m = d.metrics();
    assert!(
        label_values(&m, "route").contains("r50"),
        "r50 before the reload"
    );
    assert!(label_values(&m, "listener").contains("second"));
    assert!(label_values(&m, "destination").contains("d3"));

    let d1 = addrs[0];
    assert!(d.reload(move |p| {
        udp_listener(p)
            + &udp_destination("d1", d1)
            + "\n[[route]]\nname = \"r1\"\nmatch = { proto = [\"sip\"] }\nforward = [\"d1\"]\n"
    }));
    let m = d.metrics();
    let routes = label_values(&m, "route");
    let listeners = label_values(&m, "listener");
    let dests = label_values(&m, "destination");
    assert_eq!(
        routes,
        BTreeSet::from(["r1".to_string()]),
        "routes on /metrics"
    );
    assert_eq!(
        listeners,
        BTreeSet::from(["agents".to_string()]),
        "listeners on /metrics"
    );
    assert_eq!(
        dests,
        BTreeSet::from(["d1".to_string()]),
        "destinations on /metrics"
    );
    // What stays keeps its counts.
    assert_eq!(m.get("hepfwd_route_matches_total", &[("route", "r1")]), 1);
    assert_eq!(
        m.get("hepfwd_destination_sent_total", &[("destination", "d1")]),
        1
    );
    assert_eq!(m.get("hepfwd_received_total", &[("listener", "agents")]), 1);

    let (status, v) = d.health();
    assert_eq!(status, 200, "{v}");
    let names: Vec<&String> = v["destinations"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["d1"], "/healthz destinations after the reload: {v}");
}

#[test]
fn healthz_names_a_udp_destination_in_its_icmp_holddown_and_clears_after_it() {
    let gone = SocketAddr::from((LO, free_port_v4()));
    let d = Daemon::start("healthz-udp", |p| {
        udp_listener(p)
            + &udp_destination("u", gone)
            + "\n[default]\nforward = [\"u\"]\n"
            + "\n[engine]\nworkers = 1\nudp_error_holddown = \"1500ms\"\n"
    });
    let (status, v) = d.health();
    assert_eq!(status, 200, "no ICMP error yet: {v}");
    assert_eq!(v["destinations"]["u"]["transport"], "udp", "{v}");

    // Nothing listens at the destination: its ICMP port unreachable puts it in hold-down.
    let agent = Agent::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    let v = loop {
        seq += 1;
        agent.send(d.listen(), &Pkt::sip("icmp@x", seq).encode());
        std::thread::sleep(Duration::from_millis(50));
        let (status, v) = d.health();
        if status == 503 {
            break v;
        }
        assert!(Instant::now() < deadline, "/healthz never degraded: {v}");
    };
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["destinations"]["u"]["up"], false, "{v}");
    assert!(
        v["destinations"]["u"]["ms_since_icmp_error"].is_u64(),
        "{v}"
    );

    // No more traffic, no more errors: up again once the hold-down has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = d.health();
        if status == 200 {
            assert_eq!(v["destinations"]["u"]["up"], true, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "/healthz still {status}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `hepfwd top --once` against a running daemon: one frame with the listener's, the
/// route's and the destination's rates while a steady load flows (200 packets a second
/// for 3 s: the rates read about 200/s), the drop of a route named, and exit code 0; an
/// admin address where nothing listens: exit code 1 naming it.
#[test]
fn top_once_shows_a_running_daemons_rates() {
    let u = UdpCollector::new("udp");
    let uaddr = u.addr;
    let d = Daemon::start("top", move |p: &Ports| {
        udp_listener(p)
            + &udp_destination("collector", uaddr)
            + "\n[[route]]\nname = \"logs\"\nmatch = { proto = [100] }\naction = \"drop\"\n"
            + "\n[[route]]\nname = \"calls\"\nforward = [\"collector\"]\n"
    });
    let to = d.listen();
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let agent = Agent::new();
            let start = Instant::now();
            // 3 s at 200 packets/s: 3 of every 4 RTCP (routed), 1 a log (dropped).
            for i in 0..600u32 {
                if done.load(Relaxed) {
                    break;
                }
                let p = if i % 4 == 3 {
                    Pkt::log("top", i)
                } else {
                    Pkt::rtcp("top", i)
                };
                agent.send(to, &p.encode());
                let due = start + Duration::from_millis(5 * u64::from(i + 1));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(hepfwd_bin().expect("the hepfwd binary"))
        .args(["top", "--once", "--interval", "1.5", "--admin"])
        .arg(d.admin.to_string())
        .output()
        .expect("run hepfwd top");
    done.store(true, Relaxed);
    sender.join().expect("the sender");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |name: &str| -> Vec<f64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{text}"))
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    // Rates over 1.5 s of a 200/s load: generous bounds for a shared machine.
    let within = |what: &str, v: f64, want: f64| {
        assert!(
            (want * 0.5..=want * 1.5).contains(&v),
            "{what}: {v}/s, want about {want}/s\n{text}"
        );
    };
    within("listener agents", row("agents")[0], 200.0);
    within("route calls", row("calls")[0], 150.0);
    within("route logs matched", row("logs")[0], 50.0);
    within("route logs dropped", row("logs")[2], 50.0);
    within("destination collector sent", row("collector")[0], 150.0);
    assert!(
        text.contains("route drop") && text.contains("kernel 0.0%, userspace 100.0%"),
        "{text}"
    );
    drop(u);

    let nobody = SocketAddr::from((LO, free_port_v4()));
    let out = Command::new(hepfwd_bin().expect("the hepfwd binary"))
        .args(["top", "--once", "--interval", "0.1", "--admin"])
        .arg(nobody.to_string())
        .output()
        .expect("run hepfwd top");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&nobody.to_string()), "{err}");
}

/// `hepfwd tap`: off unless `[admin] tap = true` (exit 1 saying so); on, it shows exactly
/// the packets one route forwards (not another route's), with the route, its destinations
/// and the bytes as forwarded (after the route's rewrite), stops at `--count`, and at
/// `--seconds` when nothing comes, with a last line saying why.
#[test]
fn tap_shows_what_one_route_forwards_bounded_and_off_by_default() {
    let u = UdpCollector::new("udp");
    let uaddr = u.addr;
    let config = move |tap: bool| {
        move |p: &Ports| {
            let admin_tap = format!(
                "\n[admin]\nlisten = \"127.0.0.1:{}\"\ntap = {tap}\n",
                p.admin
            );
            udp_listener(p)
                + &udp_destination("collector", uaddr)
                + "\n[[route]]\nname = \"logs\"\nmatch = { proto = [100] }\nforward = [\"collector\"]\n"
                + "\n[[route]]\nname = \"calls\"\nforward = [\"collector\"]\nrewrite = [ { set = \"capture_id\", value = 4242 } ]\n"
                + &admin_tap
        }
    };
    let d = Daemon::start("tap-off", config(false));
    let tap = |d: &Daemon, args: &[&str]| {
        Command::new(hepfwd_bin().expect("the hepfwd binary"))
            .arg("tap")
            .args(["--admin", &d.admin.to_string()])
            .args(args)
            .output()
            .expect("run hepfwd tap")
    };
    let out = tap(&d, &["--route", "calls", "--seconds", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the tap is off"));
    drop(d);

    let d = Daemon::start("tap-on", config(true));
    let to = d.listen();
    let unknown = tap(&d, &["--route", "nope", "--seconds", "1"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no route \"nope\""));

    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let agent = Agent::new();
            for i in 0..400u32 {
                if done.load(Relaxed) {
                    break;
                }
                let p = if i % 2 == 0 {
                    Pkt::log("tap", i)
                } else {
                    Pkt::sip(&format!("tap-{i}@lab"), i)
                };
                agent.send(to, &p.encode());
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let out = tap(&d, &["--route", "calls", "--count", "5", "--seconds", "20"]);
    done.store(true, Relaxed);
    sender.join().expect("the sender");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 6, "5 packets and the end: {lines:?}");
    for p in &lines[..5] {
        assert_eq!(p["route"], "calls", "{p}");
        assert_eq!(p["destinations"], serde_json::json!(["collector"]), "{p}");
        assert_eq!(p["proto_name"], "sip", "only the route's packets: {p}");
        assert_eq!(p["capture_id"], 4242, "as forwarded, rewritten: {p}");
        assert!(
            p["correlation_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("tap-")),
            "{p}"
        );
    }
    assert_eq!(
        lines[5],
        serde_json::json!({"end": "count", "shown": 5, "dropped": 0})
    );

    // Nothing arrives: the tap ends at --seconds.
    let t0 = Instant::now();
    let out = tap(&d, &["--route", "calls", "--seconds", "1"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"end":"seconds","shown":0,"dropped":0}"#
    );
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    drop(u);
}
