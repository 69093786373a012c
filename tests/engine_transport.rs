//! Transports end to end: listener auth key and allow list, HEP over TCP from agents
//! (several frames per write, frames split across writes), TCP collectors (restart without
//! loss inside the queue bound, queue overflow counted exactly).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hepfwd_tests::collector::{
    Agent, QUIET, RawCollector, TcpAgent, TcpCollector, UdpCollector, WAIT, expect_all_silent,
    reset, sorted, unread_bytes,
};
use hepfwd_tests::daemon::{
    Daemon, LO, ONE_WORKER, free_port_v4, raise_nofile_limit, tcp_destination, udp_destination,
    udp_listener,
};
use hepfwd_tests::hepgen::Pkt;

#[test]
fn listener_auth_key_and_allow_list_reject_and_count() {
    let col = UdpCollector::new("ok");
    let d = Daemon::start("auth", |p| {
        format!(
            "\n[[listener]]\nname = \"guarded\"\nudp = \"127.0.0.1:{0}\"\ntcp = \"127.0.0.1:{0}\"\nauth_key = \"k1\"\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n",
            p.listen
        ) + &udp_destination("ok", col.addr)
            + "\n[default]\nforward = [\"ok\"]\n"
            + ONE_WORKER
    });
    let inside = Agent::new();
    let outside = Agent::bind("127.0.0.2");
    let to = d.listen();
    let good: Vec<Vec<u8>> = (0..2)
        .map(|i| Pkt::sip("a@x", i).auth("k1").encode())
        .collect();
    for p in &good {
        inside.send(to, p);
    }
    inside.send(to, &Pkt::sip("a@x", 10).encode()); // no key
    inside.send(to, &Pkt::sip("a@x", 11).auth("k2").encode()); // wrong key
    inside.send(to, &Pkt::sip("a@x", 12).auth("k1x").encode()); // not exactly the key
    inside.send(to, &Pkt::sip("a@x", 13).encode_legacy(2)); // HEPv2 has no key
    outside.send(to, &Pkt::sip("a@x", 14).auth("k1").encode()); // right key, wrong sender
    outside.send(to, b"not even HEP"); // the allow list comes first
    let mut tcp = TcpAgent::connect(to);
    let tcp_good = Pkt::sip("t@x", 20).auth("k1").encode();
    let mut both = tcp_good.clone();
    both.extend_from_slice(&Pkt::sip("t@x", 21).auth("nope").encode());
    tcp.write(&both);

    // UDP and TCP are processed apart: no order between them.
    let got = col.expect(3, WAIT);
    let mut want = good.clone();
    want.push(tcp_good);
    assert!(
        sorted(got) == sorted(want),
        "the good packets (2 UDP, 1 TCP)"
    );
    let m = d.metrics();
    let rejected = |r: &str| {
        m.get(
            "hepfwd_rejected_total",
            &[("listener", "guarded"), ("reason", r)],
        )
    };
    assert_eq!(rejected("auth"), 5);
    assert_eq!(rejected("allow"), 2);
    assert_eq!(m.get("hepfwd_parse_errors_total", &[]), 0);
    assert_eq!(
        m.get(
            "hepfwd_received_total",
            &[("listener", "guarded"), ("transport", "udp")]
        ),
        8
    );
    assert_eq!(
        m.get(
            "hepfwd_received_total",
            &[("listener", "guarded"), ("transport", "tcp")]
        ),
        2
    );
}

#[test]
fn tcp_agents_coalesced_and_split_frames_reach_tcp_and_udp_collectors() {
    let t = TcpCollector::new("tcp");
    let u = UdpCollector::new("udp");
    let d = Daemon::start("tcp-in", |p| {
        format!(
            "\n[[listener]]\nname = \"tcp-agents\"\ntcp = \"127.0.0.1:{}\"\n",
            p.listen
        ) + &tcp_destination("t", t.addr, None)
            + &udp_destination("u", u.addr)
            + "\n[default]\nforward = [\"t\", \"u\"]\n"
    });
    let frames: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let mut p = Pkt::sip(&format!("tcp-{i}@x"), i);
            if i == 15 {
                // A frame near the largest a HEPv3 length can say.
                p.payload.extend(std::iter::repeat_n(b'x', 60_000));
            }
            p.encode()
        })
        .collect();
    let cat = |r: std::ops::Range<usize>| -> Vec<u8> { frames[r].concat() };
    let pause = || std::thread::sleep(Duration::from_millis(30));
    let mut a = TcpAgent::connect(SocketAddr::from((LO, d.ports.listen)));
    a.write(&cat(0..10)); // ten frames in one write
    pause();
    let f = &frames[10]; // one frame in three writes
    a.write(&f[..3]);
    pause();
    a.write(&f[3..20]);
    pause();
    a.write(&f[20..]);
    pause();
    let mut mixed = cat(11..13);
    let half = frames[13].len() / 2;
    mixed.extend_from_slice(&frames[13][..half]);
    a.write(&mixed); // two frames and a half
    pause();
    let mut rest = frames[13][half..].to_vec();
    rest.extend_from_slice(&frames[14]);
    a.write(&rest); // the other half and one more
    pause();
    let big = &frames[15];
    for piece in big.chunks(7_000) {
        a.write(piece);
    }
    assert!(
        t.take(16, WAIT) == frames,
        "TCP collector: other frames or order"
    );
    assert!(
        u.take(16, WAIT) == frames,
        "UDP collector: other datagrams or order"
    );

    // A second agent connection.
    let more: Vec<Vec<u8>> = (100..103)
        .map(|i| Pkt::rtcp("second-conn", i).encode())
        .collect();
    let mut b = TcpAgent::connect(SocketAddr::from((LO, d.ports.listen)));
    b.write(&more.concat());
    assert!(t.take(3, WAIT) == more);
    assert!(u.take(3, WAIT) == more);
    expect_all_silent(&[&t.inbox, &u.inbox], QUIET);
    let m = d.metrics();
    assert_eq!(
        m.get(
            "hepfwd_received_total",
            &[("listener", "tcp-agents"), ("transport", "tcp")]
        ),
        19
    );
    assert_eq!(
        m.get(
            "hepfwd_tcp_connections_total",
            &[("listener", "tcp-agents")]
        ),
        2
    );
    assert_eq!(
        m.get("hepfwd_destination_sent_total", &[("destination", "t")]),
        19
    );
    assert_eq!(
        t.accepted.load(Relaxed),
        1,
        "one connection to the collector"
    );
    drop(a);
}

#[test]
fn tcp_collector_restart_loses_nothing_inside_the_queue_bound() {
    let t = TcpCollector::new("collector");
    let addr = t.addr;
    let d = Daemon::start("tcp-restart", |p| {
        udp_listener(p)
            + &tcp_destination("t", addr, Some(100))
            + "\n[default]\nforward = [\"t\"]\n"
            + ONE_WORKER
    });
    let dest = [("destination", "t")];
    d.wait_counter("hepfwd_destination_connected", &dest, 1, WAIT);
    let agent = Agent::new();
    let before: Vec<Vec<u8>> = (0..10).map(|i| Pkt::sip("r@x", i).encode()).collect();
    for p in &before {
        agent.send(d.listen(), p);
    }
    assert!(t.take(10, WAIT) == before);

    assert!(t.stop().is_empty());
    d.wait_counter("hepfwd_destination_connected", &dest, 0, WAIT);
    let held: Vec<Vec<u8>> = (10..60).map(|i| Pkt::sip("r@x", i).encode()).collect();
    for p in &held {
        agent.send(d.listen(), p);
    }
    d.wait_counter("hepfwd_destination_queue_depth", &dest, 50, WAIT);

    let t = TcpCollector::bind("collector-again", addr);
    assert!(
        t.expect(50, WAIT) == held,
        "the queued frames, once, in order"
    );
    let m = d.metrics();
    assert_eq!(m.get("hepfwd_destination_reconnects_total", &dest), 1);
    assert_eq!(m.get("hepfwd_destination_sent_total", &dest), 60);
    assert_eq!(m.get("hepfwd_destination_queue_depth", &dest), 0);
    assert_eq!(m.get("hepfwd_destination_dropped_total", &dest), 0);
    assert_eq!(t.accepted.load(Relaxed), 1);
}

#[test]
fn tcp_queue_overflow_is_counted_exactly() {
    let addr = SocketAddr::from((LO, free_port_v4()));
    let d = Daemon::start("tcp-overflow", |p| {
        udp_listener(p)
            + &tcp_destination("t", addr, Some(20))
            + "\n[default]\nforward = [\"t\"]\n"
            + ONE_WORKER
    });
    let dest = [("destination", "t")];
    let agent = Agent::new();
    let sent: Vec<Vec<u8>> = (0..50).map(|i| Pkt::sip("o@x", i).encode()).collect();
    for p in &sent {
        agent.send(d.listen(), p);
    }
    d.wait_counter(
        "hepfwd_destination_dropped_total",
        &[("destination", "t"), ("reason", "queue_full")],
        30,
        WAIT,
    );
    assert_eq!(d.counter("hepfwd_destination_queue_depth", &dest), 20);
    assert!(d.counter("hepfwd_destination_connect_failures_total", &dest) >= 1);

    let t = TcpCollector::bind("late", addr);
    assert!(t.expect(20, WAIT) == sent[..20], "the first 20, in order");
    let m = d.metrics();
    assert_eq!(
        m.get(
            "hepfwd_destination_dropped_total",
            &[("destination", "t"), ("reason", "queue_full")]
        ),
        30
    );
    assert_eq!(m.get("hepfwd_destination_dropped_total", &dest), 30);
    assert_eq!(m.get("hepfwd_destination_sent_total", &dest), 20);
    assert_eq!(m.get("hepfwd_destination_queue_depth", &dest), 0);
}

/// Frames already received are sent on while the next frame is still incomplete: an agent
/// that pauses in the middle of a frame does not hold back the ones before it.
#[test]
fn tcp_frames_before_an_incomplete_one_are_not_held_back() {
    let u = UdpCollector::new("udp");
    let d = Daemon::start("tcp-partial", |p| {
        format!(
            "\n[[listener]]\nname = \"tcp-agents\"\ntcp = \"127.0.0.1:{}\"\n",
            p.listen
        ) + &udp_destination("u", u.addr)
            + "\n[default]\nforward = [\"u\"]\n"
    });
    let frames: Vec<Vec<u8>> = (0..3).map(|i| Pkt::sip("partial@x", i).encode()).collect();
    let mut a = TcpAgent::connect(SocketAddr::from((LO, d.ports.listen)));
    let mut first = frames[..2].concat();
    first.extend_from_slice(&frames[2][..10]);
    a.write(&first);
    // The third frame is incomplete: the first two must arrive without it.
    assert!(
        u.take(2, Duration::from_secs(2)) == frames[..2],
        "whole frames held while the next one is incomplete"
    );
    a.write(&frames[2][10..]);
    assert!(u.expect(1, WAIT) == frames[2..]);
}

/// A packet too big for one UDP datagram (65507 bytes over IPv4; a rewrite can grow a
/// packet past it) is dropped and counted alone: the packets sent in the same batch to the
/// same destination go through.
#[test]
fn a_packet_too_big_for_udp_is_dropped_alone() {
    let u = UdpCollector::new("udp");
    let value = "v".repeat(120);
    let d = Daemon::start("too-big", |p| {
        udp_listener(p)
            + &udp_destination("u", u.addr)
            // One packet in, two copies out in one flush: the first grown past 65507 bytes.
            + &format!(
                "\n[[route]]\nname = \"grow\"\nforward = [\"u\"]\ncontinue = true\nrewrite = [{{ set = {{ vendor = 3, type = 7 }}, value = \"{value}\" }}]\n"
            )
            + "\n[[route]]\nname = \"plain\"\nforward = [\"u\"]\n"
            + ONE_WORKER
    });
    let mut p = Pkt::sip("big@x", 1);
    let room = 65_400 - p.encode().len();
    p.payload.extend(std::iter::repeat_n(b'x', room));
    let p = p.encode();
    assert_eq!(p.len(), 65_400);
    Agent::new().send(d.listen(), &p);
    assert!(u.expect(1, WAIT) == vec![p], "the copy that fits");
    let m = d.metrics();
    assert_eq!(
        m.get(
            "hepfwd_destination_dropped_total",
            &[("destination", "u"), ("reason", "send_error")]
        ),
        1
    );
    assert_eq!(
        m.get("hepfwd_destination_sent_total", &[("destination", "u")]),
        1
    );
}

/// Connects `n` TCP agents to `to`, each writing `frame(i)` once, and keeps them open.
fn connect_agents(to: SocketAddr, n: u32, frame: impl Fn(u32) -> Vec<u8>) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("agent {i}: connect to {to}: {e}"));
        s.write_all(&frame(i))
            .unwrap_or_else(|e| panic!("agent {i}: write: {e}"));
        conns.push(s);
    }
    conns
}

/// Polls `value` until it is at most `bound`; returns the last value.
fn settle(timeout: Duration, bound: u64, mut value: impl FnMut() -> u64) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = value();
        if v <= bound || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 2,000 TCP agents (two waves of 1,000 open at once), each sending one frame and closing:
/// every frame reaches the collector, a connection costs one descriptor and little
/// memory while open (the outputs' UDP sockets are shared, not opened per connection), and
/// both come back when the agents close.
#[test]
fn two_thousand_tcp_agents_cost_one_descriptor_each_and_give_everything_back() {
    raise_nofile_limit(8192);
    let u = UdpCollector::new("udp");
    let d = Daemon::start("tcp-many", |p| {
        format!(
            "\n[[listener]]\nname = \"tcp-agents\"\ntcp = \"127.0.0.1:{}\"\n",
            p.listen
        ) + &udp_destination("u", u.addr)
            + "\n[default]\nforward = [\"u\"]\n"
    });
    let to = d.listen();
    // Warm up: one connection's frame, so that what the first frame allocates once (the
    // shared outputs) is in the baseline.
    let warm = Pkt::sip("warm@x", 0).encode();
    drop(connect_agents(to, 1, |_| warm.clone()));
    assert!(u.take(1, WAIT) == [warm]);
    let base_fds = d.open_fds() as u64;
    let base_rss = d.rss_kib();
    const WAVE: u32 = 1_000;
    // Per connection while open: its socket, a task and at most a few KiB of buffer
    // (measured: about 3 MiB for 1,000).
    const RSS_GROWTH_OPEN_KIB: u64 = 16 * 1024;
    const RSS_GROWTH_CLOSED_KIB: u64 = 16 * 1024;
    let mut peak_fds = 0;
    let mut peak_rss = 0;
    let mut got = Vec::new();
    for wave in 0..2 {
        let frame = |i: u32| Pkt::sip(&format!("agent-{wave}-{i}@x"), i).encode();
        let conns = connect_agents(to, WAVE, frame);
        got.extend(u.take(WAVE as usize, Duration::from_secs(20)));
        let fds = d.open_fds() as u64;
        let rss = d.rss_kib();
        peak_fds = peak_fds.max(fds);
        peak_rss = peak_rss.max(rss);
        eprintln!(
            "wave {wave}: {WAVE} agents open: {fds} descriptors (baseline {base_fds}), RSS {rss} KiB (baseline {base_rss} KiB)"
        );
        assert!(
            fds <= base_fds + u64::from(WAVE) + 16,
            "{fds} descriptors with {WAVE} agents open (baseline {base_fds}): more than one per connection"
        );
        assert!(
            rss <= base_rss + RSS_GROWTH_OPEN_KIB,
            "RSS {rss} KiB with {WAVE} agents open (baseline {base_rss} KiB)"
        );
        drop(conns);
        let fds = settle(Duration::from_secs(10), base_fds + 8, || {
            d.open_fds() as u64
        });
        assert!(
            fds <= base_fds + 8,
            "{fds} descriptors after the agents closed (baseline {base_fds})"
        );
    }
    let rss = d.rss_kib();
    eprintln!(
        "after: {} descriptors, RSS {rss} KiB; peaks {peak_fds} descriptors, {peak_rss} KiB",
        d.open_fds()
    );
    assert!(
        rss <= base_rss + RSS_GROWTH_CLOSED_KIB,
        "RSS {rss} KiB after every agent closed (baseline {base_rss} KiB)"
    );
    let want: BTreeSet<Vec<u8>> = (0..2)
        .flat_map(|wave| {
            (0..WAVE).map(move |i| Pkt::sip(&format!("agent-{wave}-{i}@x"), i).encode())
        })
        .collect();
    let got: BTreeSet<Vec<u8>> = got.into_iter().collect();
    assert_eq!(got.len(), 2 * WAVE as usize, "duplicates at the collector");
    assert!(got == want, "other frames at the collector");
    expect_all_silent(&[&u.inbox], QUIET);
    assert_eq!(
        d.counter(
            "hepfwd_tcp_connections_total",
            &[("listener", "tcp-agents")]
        ),
        2 * u64::from(WAVE) + 1
    );
}

/// A TCP agent bound to `source` (a loopback address), connected to `to`.
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect from {source} to {to}: {e}"));
    sock.into()
}

/// A guarded TCP listener under attack: 2,000 idle connections and a slowloris client (a
/// frame header, then one byte a second) while an agent's traffic flows. The agent's
/// frames all arrive; connections beyond `max_connections` are refused and counted; a
/// sender outside `allow` is refused at accept; the daemon's descriptors and memory stay
/// bounded; a connection that sends nothing is closed after `idle_timeout`.
#[test]
fn guarded_tcp_listener_survives_idle_floods_and_slowloris() {
    raise_nofile_limit(8192);
    let u = UdpCollector::new("udp");
    const MAX: u64 = 1_000;
    const FLOOD: u64 = 2_000;
    let d = Daemon::start("tcp-guarded", |p| {
        format!(
            "\n[[listener]]\nname = \"guarded\"\ntcp = \"127.0.0.1:{}\"\nmax_connections = {MAX}\nidle_timeout = \"60s\"\nallow = [\"127.0.0.1/32\"]\n",
            p.listen
        ) + &format!(
            "\n[[listener]]\nname = \"short\"\ntcp = \"127.0.0.1:{}\"\nidle_timeout = \"1s\"\n",
            p.listen2
        ) + &udp_destination("u", u.addr)
            + "\n[default]\nforward = [\"u\"]\n"
    });
    let guarded = d.listen();
    let base_fds = d.open_fds() as u64;
    let base_rss = d.rss_kib();

    // A sender outside the allow list is refused at accept, before it sends anything.
    let mut outsider = TcpAgent {
        stream: connect_from("127.0.0.2", guarded),
    };
    assert!(
        outsider.closed_by_peer(Duration::from_secs(5)),
        "a connection from outside the allow list was kept open"
    );
    d.wait_counter(
        "hepfwd_tcp_connections_refused_total",
        &[("listener", "guarded"), ("reason", "allow")],
        1,
        WAIT,
    );

    // The agent and the slowloris client connect first.
    let mut agent = TcpAgent::connect(guarded);
    let mut slow = TcpAgent::connect(guarded);
    d.wait_counter(
        "hepfwd_tcp_connections_total",
        &[("listener", "guarded")],
        2,
        WAIT,
    );
    let slow_thread = std::thread::spawn(move || {
        // A header announcing 60,000 bytes, then one byte a second, for a bounded time.
        let mut header = b"HEP3".to_vec();
        header.extend_from_slice(&60_000u16.to_be_bytes());
        slow.write(&header);
        for _ in 0..8 {
            std::thread::sleep(Duration::from_secs(1));
            if slow.stream.write_all(b"x").is_err() {
                break;
            }
        }
        slow
    });
    let frames: Vec<Vec<u8>> = (0..200)
        .map(|i| Pkt::sip(&format!("flowing-{i}@x"), i).encode())
        .collect();
    let agent_frames = frames.clone();
    let agent_thread = std::thread::spawn(move || {
        for f in &agent_frames {
            agent.write(f);
            std::thread::sleep(Duration::from_millis(25));
        }
        agent
    });

    // The flood: idle connections, held open.
    let mut flood = Vec::with_capacity(FLOOD as usize);
    for i in 0..FLOOD {
        flood.push(
            TcpStream::connect_timeout(&guarded, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("flood connection {i}: {e}")),
        );
    }
    let refused = FLOOD + 2 - MAX;
    d.wait_counter(
        "hepfwd_tcp_connections_refused_total",
        &[("listener", "guarded"), ("reason", "max_connections")],
        refused,
        Duration::from_secs(20),
    );
    assert_eq!(
        d.counter("hepfwd_tcp_connections_total", &[("listener", "guarded")]),
        MAX
    );
    let fds = d.open_fds() as u64;
    let rss = d.rss_kib();
    eprintln!(
        "under the flood: {fds} descriptors (baseline {base_fds}), RSS {rss} KiB (baseline {base_rss} KiB)"
    );
    assert!(
        fds <= base_fds + MAX + 16,
        "{fds} descriptors under the flood (baseline {base_fds})"
    );
    assert!(
        rss <= base_rss + 48 * 1024,
        "RSS {rss} KiB under the flood (baseline {base_rss} KiB)"
    );
    // The refused ones were closed by the daemon.
    let closed = flood
        .iter_mut()
        .rev()
        .take(20)
        .filter(|s| {
            let mut a = TcpAgent {
                stream: s.try_clone().unwrap(),
            };
            a.closed_by_peer(Duration::from_secs(2))
        })
        .count();
    assert_eq!(
        closed, 20,
        "the last connections of the flood were not refused"
    );

    // The agent's traffic went through.
    let agent = agent_thread.join().unwrap();
    let got: BTreeSet<Vec<u8>> = u.take(frames.len(), WAIT).into_iter().collect();
    assert!(
        got == frames.iter().cloned().collect::<BTreeSet<_>>(),
        "other frames at the collector"
    );
    expect_all_silent(&[&u.inbox], QUIET);
    drop(agent);
    drop(slow_thread.join().unwrap());
    drop(flood);
    let fds = settle(Duration::from_secs(10), base_fds + 8, || {
        d.open_fds() as u64
    });
    assert!(
        fds <= base_fds + 8,
        "{fds} descriptors after the flood closed (baseline {base_fds})"
    );

    // A connection that sends nothing is closed after the idle timeout (1 s).
    let mut idle = TcpAgent::connect(SocketAddr::from((LO, d.ports.listen2)));
    let opened = Instant::now();
    assert!(
        idle.closed_by_peer(Duration::from_secs(5)),
        "an idle connection was not closed"
    );
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}, before the idle timeout"
    );
    d.wait_counter(
        "hepfwd_tcp_connections_closed_total",
        &[("listener", "short"), ("reason", "idle_timeout")],
        1,
        WAIT,
    );
}

/// A frame cut off by the agent's close (a partial frame at end of stream) is counted as a
/// truncated packet; the whole frame before it is forwarded.
#[test]
fn a_frame_cut_off_by_the_agents_close_is_counted_as_truncated() {
    let u = UdpCollector::new("udp");
    let d = Daemon::start("tcp-truncated", |p| {
        format!(
            "\n[[listener]]\nname = \"tcp-agents\"\ntcp = \"127.0.0.1:{}\"\n",
            p.listen
        ) + &udp_destination("u", u.addr)
            + "\n[default]\nforward = [\"u\"]\n"
    });
    let whole = Pkt::sip("cut@x", 1).encode();
    let cut = Pkt::sip("cut@x", 2).encode();
    let mut a = TcpAgent::connect(d.listen());
    let mut bytes = whole.clone();
    bytes.extend_from_slice(&cut[..cut.len() / 2]);
    a.write(&bytes);
    a.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(u.expect(1, WAIT) == [whole]);
    d.wait_counter(
        "hepfwd_parse_errors_total",
        &[("listener", "tcp-agents"), ("kind", "truncated")],
        1,
        WAIT,
    );
    assert_eq!(
        d.counter(
            "hepfwd_received_total",
            &[("listener", "tcp-agents"), ("transport", "tcp")]
        ),
        1
    );
}

/// A collector that accepts, reads `read_frames` frames and a half (none with `None`) and
/// resets the connection: the frames its TCP never acknowledged are written again, first,
/// to the next collector on the same address; only frames its TCP acknowledged count as
/// sent, and every frame is accounted for: sent + lost + queued = accepted.
fn resetting_collector_then_a_good_one(name: &str, read_frames: Option<usize>) {
    let bad = RawCollector::bind(SocketAddr::from((LO, 0)), 4096);
    let addr = bad.addr;
    let d = Daemon::start(name, |p| {
        udp_listener(p)
            + &tcp_destination("t", addr, Some(1000))
            + "\n[default]\nforward = [\"t\"]\n"
            + ONE_WORKER
    });
    let dest = [("destination", "t")];
    let mut conn = bad.accept(WAIT);
    d.wait_counter("hepfwd_destination_connected", &dest, 1, WAIT);

    let frames: Vec<Vec<u8>> = (1000..1400)
        .map(|i| Pkt::sip("reset@x", i).encode())
        .collect();
    let len = frames[0].len();
    assert!(frames.iter().all(|f| f.len() == len));
    Agent::new().send_all(d.listen(), &frames);
    d.wait_counter("hepfwd_received_total", &[], 400, WAIT);
    std::thread::sleep(QUIET);

    // Read some frames and a half (or nothing), let the receive buffer fill, then reset.
    let read_len = read_frames.map_or(0, |n| n * len + len / 2);
    let mut read = vec![0u8; read_len];
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.read_exact(&mut read).unwrap();
    std::thread::sleep(QUIET);
    let unread = unread_bytes(&conn);
    reset(conn);
    drop(bad);
    assert!(
        read == frames.concat()[..read_len],
        "the stream starts with the frames"
    );
    // Frames wholly inside what the bad collector's TCP took were acknowledged: sent, gone.
    let acknowledged = (read_len + unread) / len;
    assert!(
        acknowledged < 100,
        "the tiny receive buffer took {acknowledged} frames"
    );

    let good = TcpCollector::bind("good", addr);
    assert!(
        good.expect(400 - acknowledged, WAIT) == frames[acknowledged..],
        "every frame the bad collector did not acknowledge, once, in order"
    );
    d.wait_counter("hepfwd_destination_queue_depth", &dest, 0, WAIT);
    let m = d.metrics();
    let lost = m.get(
        "hepfwd_destination_dropped_total",
        &[("destination", "t"), ("reason", "connection_lost")],
    );
    assert_eq!(lost, 0, "nothing needed to be given up");
    assert_eq!(m.get("hepfwd_destination_sent_total", &dest), 400);
    assert_eq!(m.get("hepfwd_destination_dropped_total", &dest), 0);
}

#[test]
fn tcp_frames_a_resetting_collector_never_acknowledged_go_to_the_next_one() {
    resetting_collector_then_a_good_one("tcp-reset-unacked", Some(10));
}

#[test]
fn tcp_frames_a_collector_that_read_nothing_before_its_reset_go_to_the_next_one() {
    resetting_collector_then_a_good_one("tcp-reset-unread", None);
}

/// Frames of about `extra` bytes more than a SIP packet, all of one length.
fn padded(corr: &str, from: u32, n: u32, extra: usize) -> Vec<Vec<u8>> {
    let pad = vec![b'x'; extra];
    (from..from + n)
        .map(|i| Pkt::sip(corr, i).chunk(9, 1, &pad).encode())
        .collect()
}

/// A primary that accepts and stops reading makes no progress: after its `stall_timeout`
/// it is down (so a failover route moves to the backup) and stays down while reconnected
/// to the same stalled collector.
#[test]
fn tcp_failover_leaves_a_primary_that_stopped_reading() {
    let primary = RawCollector::bind(SocketAddr::from((LO, 0)), 4096);
    let backup = TcpCollector::new("backup");
    let (paddr, baddr) = (primary.addr, backup.addr);
    let d = Daemon::start("tcp-stall-failover", |p| {
        udp_listener(p)
            + &tcp_destination("p", paddr, None)
            + "stall_timeout = \"1s\"\n"
            + &tcp_destination("b", baddr, None)
            + "\n[default]\nforward = [\"p\", \"b\"]\nmode = \"failover\"\n"
            + ONE_WORKER
    });
    let primary_dest = [("destination", "p")];
    let never_read = primary.accept(WAIT);
    d.wait_counter("hepfwd_destination_connected", &primary_dest, 1, WAIT);
    d.wait_counter(
        "hepfwd_destination_connected",
        &[("destination", "b")],
        1,
        WAIT,
    );

    let stuck = padded("stall@x", 1000, 300, 4000);
    Agent::new().send_all(d.listen(), &stuck);
    d.wait_counter("hepfwd_received_total", &[], 300, WAIT);
    d.wait_counter("hepfwd_destination_connected", &primary_dest, 0, WAIT);

    let after: Vec<Vec<u8>> = (0..50).map(|i| Pkt::sip("after@x", i).encode()).collect();
    Agent::new().send_all(d.listen(), &after);
    assert!(
        backup.expect(50, WAIT) == after,
        "the backup takes the traffic"
    );
    assert_eq!(d.counter("hepfwd_destination_connected", &primary_dest), 0);
    assert!(d.counter("hepfwd_destination_stalls_total", &primary_dest) >= 1);
    assert_eq!(
        d.counter("hepfwd_destination_sent_total", &[("destination", "b")]),
        50
    );

    // The primary reads again: once its connection caught up it is up and takes the
    // traffic back; the stalled frames were all delivered or acknowledged, none lost.
    drop(never_read);
    let (stop, _read) = primary.read_everything(Duration::from_secs(30));
    d.wait_counter("hepfwd_destination_connected", &primary_dest, 1, WAIT);
    let back: Vec<Vec<u8>> = (0..20).map(|i| Pkt::sip("back@x", i).encode()).collect();
    Agent::new().send_all(d.listen(), &back);
    d.wait_counter("hepfwd_destination_sent_total", &primary_dest, 320, WAIT);
    backup.expect_silent(QUIET);
    let m = d.metrics();
    assert_eq!(m.get("hepfwd_destination_dropped_total", &primary_dest), 0);
    assert_eq!(m.get("hepfwd_destination_queue_depth", &primary_dest), 0);
    stop.store(true, Relaxed);
}

/// The peak resident memory of process `pid`, bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// 2,000 frames of 60 KB (120 MB) to a stalled collector: `queue_bytes` bounds what waits,
/// the rest is dropped and counted as `queue_full`, and the daemon's memory stays bounded.
#[test]
fn tcp_queue_is_bounded_in_bytes() {
    let stalled = RawCollector::bind(SocketAddr::from((LO, 0)), 4096);
    let addr = stalled.addr;
    let d = Daemon::start("tcp-queue-bytes", |p| {
        udp_listener(p)
            + &tcp_destination("t", addr, None)
            + "queue_bytes = \"4MiB\"\nstall_timeout = \"60s\"\n"
            + "\n[default]\nforward = [\"t\"]\n"
            + ONE_WORKER
    });
    let dest = [("destination", "t")];
    let _never_read = stalled.accept(WAIT);
    d.wait_counter("hepfwd_destination_connected", &dest, 1, WAIT);

    let big = padded("big@x", 10_000, 2000, 60_000);
    Agent::new().send_paced(d.listen(), &big, 32, || d.received());
    d.wait_counter("hepfwd_received_total", &[], 2000, WAIT);
    let m = d.metrics();
    let full = m.get(
        "hepfwd_destination_dropped_total",
        &[("destination", "t"), ("reason", "queue_full")],
    );
    let depth = m.get("hepfwd_destination_queue_depth", &dest);
    let sent = m.get("hepfwd_destination_sent_total", &dest);
    assert!(full >= 1800, "{full} dropped as queue_full");
    assert_eq!(sent + full + depth, 2000, "every frame accounted for");
    assert!(depth * 60_000 <= 4 << 20, "{depth} frames queued");
    let peak = peak_rss(d.pid());
    eprintln!("hepfwd peak RSS {} MiB, {depth} frames held", peak >> 20);
    assert!(peak < 64 << 20, "peak RSS {} MiB", peak >> 20);
}

/// A destination by host name (`[resolver] hosts_file` the test controls): traffic goes
/// where the name points; the name moves mid-stream (127.0.0.1 → 127.0.0.2, same port)
/// and, within the resolve interval, the rest goes to the new address, none lost; a name
/// missing at start leaves the daemon up, the destination down in /healthz, its packets
/// counted as `unresolved` and the lookups as failures, until the name appears.
#[test]
fn a_destination_by_host_name_follows_the_name() {
    let a = UdpCollector::new("homer@127.0.0.1");
    let port = a.addr.port();
    let b = UdpCollector::bind("homer@127.0.0.2", SocketAddr::from(([127, 0, 0, 2], port)));
    let hosts = hepfwd_tests::peers::TestDir::new("hosts").unwrap();
    let hosts_file = hosts.join("hosts");
    std::fs::write(&hosts_file, "127.0.0.1 homer.lab\n").unwrap();
    let hf = hosts_file.display().to_string();
    let d = Daemon::start("by-name", move |p| {
        udp_listener(p)
            + &format!(
                "\n[[destination]]\nname = \"homer\"\naddress = \"homer.lab:{port}\"\n\n[resolver]\nhosts_file = \"{hf}\"\nresolve_interval = \"1s\"\n"
            )
            + "\n[default]\nforward = [\"homer\"]\n"
            + ONE_WORKER
    });
    let (to, agent) = (d.listen(), Agent::new());
    let first: Vec<Vec<u8>> = (0..20).map(|i| Pkt::rtcp("n", i).encode()).collect();
    for p in &first {
        agent.send(to, p);
    }
    assert_eq!(sorted(a.take(20, WAIT)), sorted(first));
    // The name moves; packets keep flowing (one every 20 ms) until the new address gets
    // them, then 20 more.
    std::fs::write(&hosts_file, "127.0.0.2 homer.lab\n").unwrap();
    let mut sent = 0u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        agent.send(to, &Pkt::rtcp("n", 100 + sent).encode());
        sent += 1;
        if let Some(p) = b.recv(Duration::from_millis(20)) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the name moved, the packets did not"
        );
    };
    let later: Vec<Vec<u8>> = (0..20).map(|i| Pkt::rtcp("n", 1000 + i).encode()).collect();
    for p in &later {
        agent.send(to, p);
    }
    let mut at_b = vec![moved];
    at_b.extend(b.drain(QUIET));
    let at_a = a.drain(QUIET);
    assert_eq!(
        at_a.len() + at_b.len(),
        sent as usize + 20,
        "every packet at one of the two addresses"
    );
    for p in &later {
        assert!(
            at_b.contains(p),
            "packets after the move go to the new address"
        );
    }
    assert_eq!(
        d.counter("hepfwd_destination_resolve_failures_total", &[]),
        0
    );
    drop(d);

    // A name the hosts file does not have (yet).
    std::fs::write(&hosts_file, "127.0.0.9 someone.else\n").unwrap();
    let hf = hosts_file.display().to_string();
    let d = Daemon::start("by-name-missing", move |p| {
        udp_listener(p)
            + &format!(
                "\n[[destination]]\nname = \"homer\"\naddress = \"homer.lab:{port}\"\n\n[resolver]\nhosts_file = \"{hf}\"\n"
            )
            + "\n[default]\nforward = [\"homer\"]\n"
            + ONE_WORKER
    });
    let to = d.listen();
    for i in 0..5 {
        agent.send(to, &Pkt::rtcp("n", 2000 + i).encode());
    }
    d.wait_counter(
        "hepfwd_destination_dropped_total",
        &[("destination", "homer"), ("reason", "unresolved")],
        5,
        WAIT,
    );
    let (code, health) = d.health();
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["destinations"]["homer"]["up"], false, "{health}");
    assert!(
        d.counter(
            "hepfwd_destination_resolve_failures_total",
            &[("destination", "homer")]
        ) >= 1
    );
    a.expect_silent(QUIET);
    b.expect_silent(Duration::ZERO);
    // The name appears: a down destination is looked up every second.
    std::fs::write(&hosts_file, "127.0.0.1 homer.lab\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        agent.send(to, &Pkt::rtcp("n", 3000 + i).encode());
        i += 1;
        if a.recv(Duration::from_millis(50)).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the name appeared, nothing arrived"
        );
    }
    let (code, health) = d.health();
    assert_eq!(code, 200, "{health}");
}

/// A slowloris client that is never idle (a frame header, then a byte every 200 ms) is
/// closed once its frame has taken `frame_timeout` (1 s here, idle 60 s), counted as
/// `reason="frame_timeout"`; an agent whose frames each arrive whole in time, slowly and
/// split across writes, stays connected and loses nothing.
#[test]
fn a_frame_that_does_not_arrive_in_time_closes_its_connection() {
    let u = UdpCollector::new("udp");
    let d = Daemon::start("frame-timeout", |p| {
        format!(
            "\n[[listener]]\nname = \"l\"\ntcp = \"127.0.0.1:{}\"\nidle_timeout = \"60s\"\nframe_timeout = \"1s\"\n",
            p.listen
        ) + &udp_destination("u", u.addr)
            + "\n[default]\nforward = [\"u\"]\n"
    });
    let to = d.listen();
    let mut slow = TcpAgent::connect(to);
    let mut agent = TcpAgent::connect(to);
    let slow_thread = std::thread::spawn(move || {
        let mut header = b"HEP3".to_vec();
        header.extend_from_slice(&1_000u16.to_be_bytes());
        slow.write(&header);
        let t0 = Instant::now();
        // Never idle; bounded at 10 s.
        while t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            if slow.stream.write_all(b"x").is_err() {
                break;
            }
        }
        (slow, t0.elapsed())
    });
    // The agent: 8 frames over ~2.4 s, each in two writes 300 ms apart.
    let frames: Vec<Vec<u8>> = (0..8)
        .map(|i| Pkt::sip(&format!("whole-{i}@x"), i).encode())
        .collect();
    for f in &frames {
        let (a, b) = f.split_at(f.len() / 2);
        agent.write(a);
        std::thread::sleep(Duration::from_millis(300));
        agent.write(b);
    }
    let (mut slow, _) = slow_thread.join().expect("the slowloris thread");
    assert!(
        slow.closed_by_peer(Duration::from_secs(1)),
        "the slowloris connection was kept open"
    );
    assert_eq!(
        d.counter(
            "hepfwd_tcp_connections_closed_total",
            &[("listener", "l"), ("reason", "frame_timeout")]
        ),
        1
    );
    assert_eq!(
        sorted(u.take(8, WAIT)),
        sorted(frames),
        "the agent's frames"
    );
    assert!(
        !agent.closed_by_peer(Duration::from_millis(100)),
        "the agent was closed"
    );
    assert_eq!(
        d.counter(
            "hepfwd_tcp_connections_closed_total",
            &[("listener", "l"), ("reason", "idle_timeout")]
        ),
        0
    );
}

/// A TCP destination by host name: while the name does not resolve its frames wait in the
/// queue (none dropped, the daemon never tries 0.0.0.0: a collector on this host's port
/// gets nothing); once the name appears they are all delivered; when the name moves to
/// another address mid-stream, the sink (its queue kept) reconnects there and the rest
/// arrives at the new collector, nothing lost.
#[test]
fn a_tcp_destination_by_host_name_keeps_its_queue_across_resolution() {
    let a = TcpCollector::new("homer@127.0.0.1");
    let port = a.addr.port();
    let b = TcpCollector::bind("homer@127.0.0.2", SocketAddr::from(([127, 0, 0, 2], port)));
    let hosts = hepfwd_tests::peers::TestDir::new("hosts-tcp").unwrap();
    let hosts_file = hosts.join("hosts");
    std::fs::write(&hosts_file, "127.0.0.9 someone.else\n").unwrap();
    let hf = hosts_file.display().to_string();
    let d = Daemon::start("by-name-tcp", move |p| {
        udp_listener(p)
            + &format!(
                "\n[[destination]]\nname = \"homer\"\naddress = \"homer.lab:{port}\"\ntransport = \"tcp\"\n\n[resolver]\nhosts_file = \"{hf}\"\nresolve_interval = \"1s\"\n"
            )
            + "\n[default]\nforward = [\"homer\"]\n"
            + ONE_WORKER
    });
    let (to, agent) = (d.listen(), Agent::new());
    let waiting: Vec<Vec<u8>> = (0..50).map(|i| Pkt::rtcp("w", i).encode()).collect();
    for p in &waiting {
        agent.send(to, p);
    }
    d.wait_counter(
        "hepfwd_destination_queue_depth",
        &[("destination", "homer")],
        50,
        WAIT,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        a.accepted.load(Relaxed),
        0,
        "the daemon connected while the name did not resolve"
    );
    assert_eq!(
        d.counter(
            "hepfwd_destination_dropped_total",
            &[("destination", "homer")]
        ),
        0
    );
    // The name appears: everything waiting arrives.
    std::fs::write(&hosts_file, "127.0.0.1 homer.lab\n").unwrap();
    assert_eq!(sorted(a.take(50, Duration::from_secs(10))), sorted(waiting));
    // The name moves while packets flow (one every 20 ms).
    std::fs::write(&hosts_file, "127.0.0.2 homer.lab\n").unwrap();
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let first_at_b = loop {
        let p = Pkt::rtcp("m", 1000 + sent.len() as u32).encode();
        agent.send(to, &p);
        sent.push(p);
        if let Some(p) = b.recv(Duration::from_millis(20)) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the name moved, the frames did not"
        );
    };
    let mut at_b = vec![first_at_b];
    at_b.extend(b.drain(QUIET));
    let at_a = a.drain(QUIET);
    for p in &sent {
        assert!(
            at_a.contains(p) || at_b.contains(p),
            "a frame sent around the move was lost"
        );
    }
    assert_eq!(
        d.counter(
            "hepfwd_destination_dropped_total",
            &[("destination", "homer")]
        ),
        0
    );
}
