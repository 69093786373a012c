//! Route actions end to end: mirror, call-sticky hashing (and what moves when a collector
//! is removed), round-robin, failover (UDP on ICMP errors, TCP on a closed connection),
//! drop, call sampling, dedup.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hep_common::Hep3;
use hep_common::correlation::key_hash;
use hep_common::select::{rendezvous_pick, sample_keep};
use hepfwd_tests::collector::{
    Agent, Inbox, QUIET, TcpCollector, UdpCollector, WAIT, expect_all_silent, sorted,
};
use hepfwd_tests::daemon::{Daemon, ONE_WORKER, tcp_destination, udp_destination, udp_listener};
use hepfwd_tests::hepgen::Pkt;

/// The correlation key of a HEPv3 packet.
fn key_of(p: &[u8]) -> String {
    let h = Hep3::parse(p).expect("HEPv3");
    String::from_utf8(h.correlation_key().expect("a key").bytes.to_vec()).unwrap()
}

#[test]
fn mirror_gives_every_collector_identical_bytes() {
    let a = UdpCollector::new("a");
    let b = UdpCollector::new("b");
    let t = TcpCollector::new("t");
    // Over IPv6 too.
    let a6 = UdpCollector::bind("a6", "[::1]:0".parse().unwrap());
    let t6 = TcpCollector::bind("t6", "[::1]:0".parse().unwrap());
    let d = Daemon::start("mirror", |p| {
        udp_listener(p)
            + &udp_destination("a", a.addr)
            + &udp_destination("b", b.addr)
            + &tcp_destination("t", t.addr, None)
            + &udp_destination("a6", a6.addr)
            + &tcp_destination("t6", t6.addr, None)
            + "\n[[route]]\nname = \"mirror\"\nforward = [\"a\", \"b\", \"t\", \"a6\", \"t6\"]\nmode = \"all\"\n"
            + ONE_WORKER
    });
    let agent = Agent::new();
    let sent: Vec<Vec<u8>> = (0..20)
        .map(|i| Pkt::sip(&format!("m-{i}@x"), i).encode())
        .collect();
    for p in &sent {
        agent.send(d.listen(), p);
    }
    // One worker: each collector sees the packets in the order sent.
    assert!(a.take(20, WAIT) == sent, "a: other bytes or order");
    assert!(b.take(20, WAIT) == sent, "b: other bytes or order");
    assert!(t.take(20, WAIT) == sent, "t: other bytes or order");
    assert!(a6.take(20, WAIT) == sent, "a6: other bytes or order");
    assert!(t6.take(20, WAIT) == sent, "t6: other bytes or order");
    expect_all_silent(&[&a.inbox, &b.inbox, &t.inbox, &a6.inbox, &t6.inbox], QUIET);
    let m = d.metrics();
    for n in ["a", "b", "t", "a6", "t6"] {
        assert_eq!(
            m.get("hepfwd_destination_sent_total", &[("destination", n)]),
            20,
            "{n}"
        );
    }
}

const CALLS: usize = 300;

/// Sends `per_call` packets for each of the calls (interleaved, so stickiness is not an
/// accident of timing) and returns, per collector, call → packets.
fn send_calls(
    d: &Daemon,
    agent: &Agent,
    cols: &[&UdpCollector],
    per_call: u32,
    round: u32,
) -> Vec<BTreeMap<String, usize>> {
    let mut packets = Vec::new();
    for k in 0..per_call {
        for c in 0..CALLS {
            packets.push(Pkt::sip(&format!("call-{c}@sticky.test"), round * 100 + k).encode());
        }
    }
    agent.send_paced(d.listen(), &packets, 200, || d.received());
    let total = packets.len();
    let mut got: Vec<Vec<Vec<u8>>> = cols.iter().map(|_| Vec::new()).collect();
    let deadline = Instant::now() + WAIT;
    while got.iter().map(Vec::len).sum::<usize>() < total {
        assert!(Instant::now() < deadline, "packets missing");
        for (i, c) in cols.iter().enumerate() {
            while let Some(p) = c.recv(Duration::from_millis(1)) {
                got[i].push(p);
            }
        }
    }
    let inboxes: Vec<&Inbox> = cols.iter().map(|c| &c.inbox).collect();
    expect_all_silent(&inboxes, QUIET);
    let mut all_got: Vec<Vec<u8>> = got.iter().flatten().cloned().collect();
    all_got.sort();
    assert!(all_got == sorted(packets), "lost or altered packets");
    got.iter()
        .map(|ps| {
            let mut m = BTreeMap::new();
            for p in ps {
                *m.entry(key_of(p)).or_insert(0) += 1;
            }
            m
        })
        .collect()
}

/// Which collector (index) has each call; panics if a call is split.
fn owner_of_calls(per_col: &[BTreeMap<String, usize>], per_call: usize) -> BTreeMap<String, usize> {
    let mut owner = BTreeMap::new();
    for (i, m) in per_col.iter().enumerate() {
        for (call, n) in m {
            assert_eq!(*n, per_call, "call {call}: {n} packets at collector {i}");
            assert!(
                owner.insert(call.clone(), i).is_none(),
                "call {call} reached two collectors"
            );
        }
    }
    assert_eq!(owner.len(), CALLS);
    owner
}

#[test]
fn hash_is_call_sticky_and_removing_a_collector_moves_only_its_calls() {
    let cols = [
        UdpCollector::new("a"),
        UdpCollector::new("b"),
        UdpCollector::new("c"),
    ];
    let config = |names: &[&str]| {
        let cols = &cols;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        move |p: &hepfwd_tests::daemon::Ports| {
            let mut c = udp_listener(p);
            for n in &names {
                let i = (n.as_bytes()[0] - b'a') as usize;
                c += &udp_destination(n, cols[i].addr);
            }
            let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            c + &format!(
                "\n[[route]]\nname = \"calls\"\nforward = [{}]\nmode = \"hash\"\n",
                list.join(", ")
            )
        }
    };
    let d = Daemon::start("hash", config(&["a", "b", "c"]));
    let agent = Agent::new();
    let refs: Vec<&UdpCollector> = cols.iter().collect();

    let before = owner_of_calls(&send_calls(&d, &agent, &refs, 4, 0), 4);
    let seeds3 = [key_hash(b"a"), key_hash(b"b"), key_hash(b"c")];
    let mut spread = [0usize; 3];
    for (call, i) in &before {
        spread[*i] += 1;
        assert_eq!(
            rendezvous_pick(key_hash(call.as_bytes()), &seeds3),
            Some(*i),
            "call {call} is not where rendezvous hashing puts it"
        );
    }
    assert!(
        spread.iter().all(|n| (60..=140).contains(n)),
        "uneven spread over 3 collectors: {spread:?}"
    );

    // Without b: b's calls move to a or c, every other call stays where it was.
    assert!(d.reload(config(&["a", "c"])));
    let after = owner_of_calls(&send_calls(&d, &agent, &refs, 2, 1), 2);
    let seeds2 = [key_hash(b"a"), key_hash(b"c")];
    let mut moved = 0;
    for (call, was) in &before {
        let now = after[call];
        if *was == 1 {
            moved += 1;
            let want = [0, 2][rendezvous_pick(key_hash(call.as_bytes()), &seeds2).unwrap()];
            assert_eq!(now, want, "call {call} of b went to the wrong collector");
        } else {
            assert_eq!(now, *was, "call {call} moved although its collector stayed");
        }
    }
    assert_eq!(moved, spread[1]);
}

#[test]
fn round_robin_alternates_exactly() {
    let cols = [
        UdpCollector::new("r0"),
        UdpCollector::new("r1"),
        UdpCollector::new("r2"),
    ];
    let d = Daemon::start("rr", |p| {
        udp_listener(p)
            + &udp_destination("r0", cols[0].addr)
            + &udp_destination("r1", cols[1].addr)
            + &udp_destination("r2", cols[2].addr)
            + "\n[[route]]\nname = \"rr\"\nforward = [\"r0\", \"r1\", \"r2\"]\nmode = \"round-robin\"\n"
            + ONE_WORKER
    });
    let agent = Agent::new();
    let sent: Vec<Vec<u8>> = (0..30)
        .map(|i| Pkt::sip("same-call@rr", i).encode())
        .collect();
    for p in &sent {
        agent.send(d.listen(), p);
    }
    for (i, c) in cols.iter().enumerate() {
        let want: Vec<Vec<u8>> = sent.iter().skip(i).step_by(3).cloned().collect();
        assert!(
            c.take(10, WAIT) == want,
            "r{i}: not every third packet in order"
        );
    }
    expect_all_silent(&[&cols[0].inbox, &cols[1].inbox, &cols[2].inbox], QUIET);
}

/// The next packet at `a` (0) or `b` (1) within `timeout`.
fn wait_either(a: &Inbox, b: &Inbox, timeout: Duration) -> Option<(usize, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for (i, c) in [a, b].iter().enumerate() {
            if let Some(p) = c.recv(Duration::from_millis(2)) {
                return Some((i, p));
            }
        }
    }
    None
}

/// `udp_error_holddown` of the UDP failover test.
const HOLDDOWN: Duration = Duration::from_millis(1000);

#[test]
fn udp_failover_on_icmp_errors_and_back_after_the_holddown() {
    let primary = UdpCollector::new("primary");
    let paddr = primary.addr;
    let secondary = UdpCollector::new("secondary");
    let d = Daemon::start("failover-udp", |p| {
        udp_listener(p)
            + &udp_destination("primary", paddr)
            + &udp_destination("secondary", secondary.addr)
            + "\n[[route]]\nname = \"fo\"\nforward = [\"primary\", \"secondary\"]\nmode = \"failover\"\n"
            + &format!(
                "\n[engine]\nworkers = 1\nudp_error_holddown = \"{}ms\"\n",
                HOLDDOWN.as_millis()
            )
    });
    let agent = Agent::new();
    let mut seq = 0u32;
    let mut pkt = || {
        seq += 1;
        Pkt::sip("fo-call@x", seq).encode()
    };
    let first: Vec<Vec<u8>> = (0..5).map(|_| pkt()).collect();
    for p in &first {
        agent.send(d.listen(), p);
    }
    assert!(primary.take(5, WAIT) == first);
    secondary.expect_silent(Duration::from_millis(100));

    // The primary goes away: its port answers with ICMP port unreachable.
    assert!(primary.close().is_empty());
    let mut lost = Vec::new();
    let mut last_lost_at = Instant::now();
    let switched = loop {
        let p = pkt();
        let at = Instant::now();
        agent.send(d.listen(), &p);
        if let Some(got) = secondary.recv(Duration::from_millis(150)) {
            assert!(got == p, "secondary got another packet");
            break p;
        }
        lost.push(p);
        last_lost_at = at;
        assert!(lost.len() < 10, "no failover after {} packets", lost.len());
    };
    // The datagram that drew the ICMP error, and the one whose send reported it (sent
    // again to the primary, the socket error being consumed): both lost.
    assert!(
        !lost.is_empty() && lost.len() <= 2,
        "{} packets lost before the failover",
        lost.len()
    );
    assert_eq!(
        d.counter(
            "hepfwd_destination_connected",
            &[("destination", "primary")]
        ),
        0
    );
    let _ = switched;

    // The primary comes back at once; traffic returns only after the hold-down.
    let primary = UdpCollector::bind("primary-again", paddr);
    let mut on_secondary = 1;
    let returned_at = loop {
        let p = pkt();
        let at = Instant::now();
        agent.send(d.listen(), &p);
        match wait_either(&primary, &secondary, Duration::from_millis(500)) {
            Some((0, got)) => {
                assert!(got == p, "primary got another packet");
                break at;
            }
            Some((_, got)) => assert!(got == p, "secondary got another packet"),
            None => panic!("packet lost during the hold-down"),
        }
        on_secondary += 1;
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            at.duration_since(last_lost_at) < HOLDDOWN + Duration::from_secs(2),
            "traffic did not return to the primary"
        );
    };
    let waited = returned_at.duration_since(last_lost_at);
    assert!(
        waited + Duration::from_millis(50) >= HOLDDOWN
            && waited <= HOLDDOWN + Duration::from_millis(500),
        "traffic returned {waited:?} after the last ICMP error (hold-down {HOLDDOWN:?})"
    );
    let rest: Vec<Vec<u8>> = (0..5).map(|_| pkt()).collect();
    for p in &rest {
        agent.send(d.listen(), p);
    }
    assert!(primary.take(5, WAIT) == rest);
    expect_all_silent(&[&primary.inbox, &secondary.inbox], QUIET);

    let m = d.metrics();
    let sent = |n: &str| m.get("hepfwd_destination_sent_total", &[("destination", n)]);
    assert_eq!(sent("secondary"), on_secondary);
    assert_eq!(sent("primary"), 5 + lost.len() as u64 + 1 + 5);
    assert_eq!(
        m.get(
            "hepfwd_destination_connected",
            &[("destination", "primary")]
        ),
        1
    );
    assert_eq!(
        m.get("hepfwd_route_matches_total", &[("route", "fo")]),
        seq as u64
    );
}

#[test]
fn tcp_failover_when_the_collector_stops_and_back_when_it_returns() {
    let primary = TcpCollector::new("primary");
    let paddr = primary.addr;
    let secondary = UdpCollector::new("secondary");
    let d = Daemon::start("failover-tcp", |p| {
        udp_listener(p)
            + &tcp_destination("primary", paddr, None)
            + &udp_destination("secondary", secondary.addr)
            + "\n[[route]]\nname = \"fo\"\nforward = [\"primary\", \"secondary\"]\nmode = \"failover\"\n"
            + ONE_WORKER
    });
    let connected = [("destination", "primary")];
    d.wait_counter("hepfwd_destination_connected", &connected, 1, WAIT);
    let agent = Agent::new();
    let batch = |from: u32| -> Vec<Vec<u8>> {
        (from..from + 5)
            .map(|i| Pkt::sip("tcp-fo@x", i).encode())
            .collect()
    };
    let one = batch(0);
    for p in &one {
        agent.send(d.listen(), p);
    }
    assert!(primary.take(5, WAIT) == one);

    assert!(primary.stop().is_empty());
    d.wait_counter("hepfwd_destination_connected", &connected, 0, WAIT);
    let two = batch(10);
    for p in &two {
        agent.send(d.listen(), p);
    }
    assert!(secondary.take(5, WAIT) == two);

    let primary = TcpCollector::bind("primary-again", paddr);
    d.wait_counter("hepfwd_destination_reconnects_total", &connected, 1, WAIT);
    d.wait_counter("hepfwd_destination_connected", &connected, 1, WAIT);
    let three = batch(20);
    for p in &three {
        agent.send(d.listen(), p);
    }
    assert!(primary.take(5, WAIT) == three);
    expect_all_silent(&[&primary.inbox, &secondary.inbox], QUIET);
    let m = d.metrics();
    assert_eq!(
        m.get(
            "hepfwd_destination_sent_total",
            &[("destination", "primary")]
        ),
        10
    );
    assert_eq!(
        m.get(
            "hepfwd_destination_sent_total",
            &[("destination", "secondary")]
        ),
        5
    );
    assert_eq!(
        primary.accepted.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn drop_route_drops_and_counts() {
    let col = UdpCollector::new("rest");
    let d = Daemon::start("drop", |p| {
        udp_listener(p)
            + &udp_destination("rest", col.addr)
            + "\n[[route]]\nname = \"no-logs\"\nmatch = { proto = [100] }\naction = \"drop\"\n"
            + "\n[default]\nforward = [\"rest\"]\n"
    });
    let agent = Agent::new();
    for i in 0..10 {
        agent.send(d.listen(), &Pkt::log("l", i).encode());
    }
    let kept: Vec<Vec<u8>> = (0..2).map(|i| Pkt::sip("s@x", i).encode()).collect();
    for p in &kept {
        agent.send(d.listen(), p);
    }
    assert!(sorted(col.expect(2, WAIT)) == sorted(kept));
    let m = d.metrics();
    assert_eq!(
        m.get("hepfwd_route_dropped_total", &[("route", "no-logs")]),
        10
    );
    assert_eq!(
        m.get("hepfwd_route_matches_total", &[("route", "no-logs")]),
        10
    );
    assert_eq!(
        m.get("hepfwd_route_matches_total", &[("route", "default")]),
        2
    );
}

#[test]
fn sampling_keeps_or_leaves_out_whole_calls() {
    let col = UdpCollector::new("sampled");
    let d = Daemon::start("sample", |p| {
        udp_listener(p)
            + &udp_destination("sampled", col.addr)
            + "\n[[route]]\nname = \"half\"\nforward = [\"sampled\"]\nsample = 0.5\n"
    });
    let agent = Agent::new();
    let (calls, per_call) = (200, 5);
    let mut packets = Vec::new();
    for k in 0..per_call {
        for c in 0..calls {
            // Odd calls are keyed by chunk 0x0011 (RTCP), even ones by the SIP Call-ID.
            let p = if c % 2 == 0 {
                Pkt::sip(&format!("s-{c}@sample.test"), k)
            } else {
                Pkt::rtcp(&format!("s-{c}@sample.test"), k)
            };
            packets.push(p.encode());
        }
    }
    agent.send_paced(d.listen(), &packets, 200, || d.received());
    d.wait_counter(
        "hepfwd_route_matches_total",
        &[("route", "half")],
        packets.len() as u64,
        WAIT,
    );
    let got = col.drain(QUIET);
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for p in &got {
        *per.entry(key_of(p)).or_default() += 1;
    }
    for (call, n) in &per {
        assert_eq!(*n, per_call as usize, "call {call} delivered in part");
    }
    let kept: BTreeSet<String> = per.keys().cloned().collect();
    let expected: BTreeSet<String> = (0..calls)
        .map(|c| format!("s-{c}@sample.test"))
        .filter(|k| sample_keep(key_hash(k.as_bytes()), 500_000))
        .collect();
    assert_eq!(kept, expected, "kept calls differ from the sampling hash");
    let fraction = kept.len() as f64 / calls as f64;
    assert!(
        (0.4..=0.6).contains(&fraction),
        "kept {fraction} of the calls"
    );
    let want: Vec<Vec<u8>> = packets
        .iter()
        .filter(|p| kept.contains(&key_of(p)))
        .cloned()
        .collect();
    assert!(
        sorted(got.clone()) == sorted(want),
        "delivered bytes differ"
    );
    assert_eq!(
        d.counter("hepfwd_sampled_out_total", &[("route", "half")]),
        (packets.len() - got.len()) as u64
    );
}

#[test]
fn dedup_drops_copies_within_the_window_only() {
    let col = UdpCollector::new("dedup");
    let d = Daemon::start("dedup", |p| {
        udp_listener(p)
            + &udp_destination("dedup", col.addr)
            + "\n[[route]]\nname = \"dd\"\nforward = [\"dedup\"]\ndedup = \"500ms\"\n"
    });
    let a1 = Agent::new();
    let a2 = Agent::bind("127.0.0.2");
    let dd = [("route", "dd")];
    // The same message captured by two agents: other capture id and node name, same
    // Call-ID and payload.
    let p1 = Pkt::sip("dup@x", 1).capture_id(1).node("agent-1").encode();
    let p2 = Pkt::sip("dup@x", 1).capture_id(2).node("agent-2").encode();
    a1.send(d.listen(), &p1);
    assert!(col.take(1, WAIT) == vec![p1.clone()]);
    let last_seen = Instant::now();
    a2.send(d.listen(), &p2);
    d.wait_counter("hepfwd_deduplicated_total", &dd, 1, WAIT);
    col.expect_silent(Duration::from_millis(50));

    // Same Call-ID, another payload; and the same payload under other correlation keys.
    let other_payload = Pkt::sip("dup@x", 2).encode();
    let r1 = Pkt::rtcp("key-1", 7).encode();
    let r2 = Pkt::rtcp("key-2", 7).encode();
    for p in [&other_payload, &r1] {
        a1.send(d.listen(), p);
    }
    a2.send(d.listen(), &r2);
    assert!(sorted(col.take(3, WAIT)) == sorted(vec![other_payload, r1, r2]));
    assert_eq!(d.counter("hepfwd_deduplicated_total", &dd), 1);

    // After the window, the same packet is new again.
    let wait = Duration::from_millis(800).saturating_sub(last_seen.elapsed());
    std::thread::sleep(wait);
    a2.send(d.listen(), &p2);
    assert!(col.take(1, WAIT) == vec![p2]);
    col.expect_silent(QUIET);
    assert_eq!(d.counter("hepfwd_deduplicated_total", &dd), 1);
    assert_eq!(d.counter("hepfwd_route_matches_total", &dd), 6);
}
