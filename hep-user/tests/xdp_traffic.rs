//! The kernel data plane with real traffic, no daemon: sender namespace → lab (hep_xdp on
//! `in0`, native; hep_mirror at TCX ingress of `in0`) → collector namespace. Steered and
//! mirrored packets reach the collectors' sockets with their HEP bytes intact, and a socket
//! bound to the listener address in the lab (where the daemon would listen) sees none of
//! them; the counters agree.
//!
//! Needs root; skips loudly otherwise, fails under `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray};
use hep_common::abi::XdpCounter;
use hep_common::abi::{DEST_COUNTERS_MAP, DestCounter};
use hep_user::xdp::compile::{HostNet, Slots, compile};
use hep_user::xdp::{AttachMode, LoadOptions, XdpCounters};
use hepfwd_harness::lab::Lab;
use hepfwd_harness::message::TestMessage;

const CONFIG: &str = r#"
[[listener]]
name = "agents"
udp = "198.18.1.2:9060"

[[destination]]
name = "a"
address = "198.18.2.2:9061"
[[destination]]
name = "b"
address = "198.18.2.4:9062"

[[route]]
name = "both"
match = { capture_id = [2500] }
forward = ["a", "b"]
mode = "all"

[default]
forward = ["a"]
"#;

fn hep(capture: u32, i: u32) -> Vec<u8> {
    TestMessage::with_payload(format!(
        "OPTIONS sip:probe@198.18.2.9 SIP/2.0\r\nCall-ID: traffic-{capture}-{i}@lab\r\nContent-Length: 0\r\n\r\n"
    ))
    .capture_id(capture)
    .timestamp(1_700_000_000 + i, 1)
    .encode()
}

/// Receives datagrams on `sock` until `want` arrived or 3 s passed.
fn collect(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < want && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

fn dest_sent(xdp: &hep_user::xdp::XdpProgram, slots: &Slots, name: &str) -> u64 {
    let slot = slots
        .destinations()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| s)
        .expect("slot");
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(xdp.ebpf_for_tests().map(DEST_COUNTERS_MAP).expect("map"))
            .expect("per-cpu");
    m.get(
        &(slot * DestCounter::COUNT as u32 + DestCounter::Sent as u32),
        0,
    )
    .expect("read")
    .iter()
    .sum()
}

#[test]
fn xdp_steers_and_tc_mirrors_real_traffic_past_the_daemon_socket() {
    let test = "xdp_steers_and_tc_mirrors_real_traffic_past_the_daemon_socket";
    let Some(mut xdp) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let lab = Lab::with_ends("traffic");
    // Lab::with_ends turns GRO on in the collector namespace: a veth accepts
    // XDP_REDIRECTed frames when its peer has GRO on (or an XDP program); see ../shared/XDP.md.

    let mut slots = Slots::default();
    let (daemon_sock, _mirror_link) = lab.within(|| {
        xdp.attach("in0", AttachMode::Native)
            .expect("attach XDP to in0");
        let link = xdp
            .attach_mirror("in0")
            .expect("attach the mirror program to in0");
        let plan = hep_user::config::compile(Path::new("traffic.toml"), CONFIG).expect("config");
        let t = compile(&plan, &mut slots, &HostNet, true);
        assert_eq!(
            t.placements
                .iter()
                .map(|p| p.why.as_str())
                .collect::<Vec<_>>(),
            ["mirror to a, b", "steer to a"]
        );
        xdp.install(&t).expect("install");
        // Where the daemon would listen: it must see none of the kernel's packets.
        let s = UdpSocket::bind("198.18.1.2:9060").expect("bind the listener address");
        (s, link)
    });
    let (sock_a, sock_b) = lab.in_collector(|| {
        (
            UdpSocket::bind("198.18.2.2:9061").expect("bind a"),
            UdpSocket::bind("198.18.2.4:9062").expect("bind b"),
        )
    });
    let before = xdp.counters().expect("counters");

    let steered: Vec<Vec<u8>> = (0..10).map(|i| hep(2001, i)).collect();
    let mirrored: Vec<Vec<u8>> = (0..10).map(|i| hep(2500, i)).collect();
    lab.in_sender(|| {
        let s = UdpSocket::bind("198.18.1.1:5070").expect("bind the sender");
        for p in steered.iter().chain(&mirrored) {
            s.send_to(p, "198.18.1.2:9060").expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
    });

    let at_a = collect(&sock_a, 20);
    let at_b = collect(&sock_b, 10);
    daemon_sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    let leaked = daemon_sock.recv(&mut buf).ok();
    let delta: XdpCounters = xdp.counters().expect("counters").delta(&before);

    let count = |v: &[Vec<u8>]| {
        let mut m = BTreeMap::new();
        for p in v {
            *m.entry(p.clone()).or_insert(0) += 1;
        }
        m
    };
    let mut want_a = steered.clone();
    want_a.extend(mirrored.iter().cloned());
    assert_eq!(
        count(&at_a),
        count(&want_a),
        "collector a: the steered packets and one copy of each mirrored one, bytes intact"
    );
    assert_eq!(
        count(&at_b),
        count(&mirrored),
        "collector b: one copy of each mirrored packet"
    );
    assert_eq!(
        leaked, None,
        "the listener socket must see none of the kernel's packets"
    );
    assert_eq!(
        (
            delta.get(XdpCounter::Steered),
            delta.get(XdpCounter::Mirrored)
        ),
        (10, 10)
    );
    assert_eq!(dest_sent(&xdp, &slots, "a"), 20);
    assert_eq!(dest_sent(&xdp, &slots, "b"), 10);
}
