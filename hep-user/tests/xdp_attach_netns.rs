//! Attaches the XDP program to a veth inside network namespaces this test creates (named
//! with the pid, addresses in 198.18.0.0/15), sends HEPv3 over the veth from the peer
//! namespace, checks the program saw and passed it (a socket receives it, the counters say
//! HEPv3), then detaches and checks the interface is free again. The namespaces are deleted
//! by the shared harness's guard ([`Netns`]), also when the test fails.
//!
//! Needs root; skips loudly otherwise, fails under `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use hep_common::abi::XdpCounter;
use hep_common::chunk::ChunkId;
use hep_common::v3::ChunkWriter;
use hep_user::xdp::{AttachMode, LoadOptions, XdpError};
use hepfwd_harness::netns::{Netns, VethPair, unique_base};

const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The XDP part of `ip -d link show dev IF`: the lines that mention xdp.
fn xdp_state(ns: &Netns, iface: &str) -> String {
    ns.ip(&["-d", "link", "show", "dev", iface])
        .lines()
        .filter(|l| l.contains("xdp"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn hep3(n: u32) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let mut w = ChunkWriter::new(&mut buf).expect("buffer");
    let g = |kind| ChunkId { vendor: 0, kind };
    w.push(g(0x0001), &[2]).expect("family");
    w.push(g(0x0002), &[17]).expect("proto");
    w.push(g(0x000b), &[1]).expect("proto type");
    w.push(g(0x000c), &n.to_be_bytes()).expect("capture id");
    w.push(g(0x000f), b"OPTIONS sip:xdp@198.18.0.1 SIP/2.0\r\n\r\n")
        .expect("payload");
    let len = w.finish().expect("finish");
    buf[..len].to_vec()
}

#[test]
fn xdp_attaches_to_a_veth_in_a_netns_sees_hep_and_detaches() {
    let test = "xdp_attaches_to_a_veth_in_a_netns_sees_hep_and_detaches";
    let Some(mut xdp) = common::load_or_skip(test, &LoadOptions::default()) else {
        return;
    };
    let id = xdp.program_id().expect("program id");

    let base = unique_base("xdp");
    let a = Netns::create(format!("{base}-a"));
    let b = Netns::create(format!("{base}-b"));
    a.add_veth(&VethPair::new("hep0", "hep1").peer_in(&b));
    a.add_address("hep0", "198.18.0.1/30");
    b.add_address("hep1", "198.18.0.2/30");
    a.set_up(&["hep0", "lo"]);
    b.set_up(&["hep1", "lo"]);

    // Attach natively to hep0 (in namespace A).
    a.within(|| {
        match xdp.attach("no-such-if0", AttachMode::Native) {
            Err(XdpError::InterfaceNotFound(name)) => assert_eq!(name, "no-such-if0"),
            other => panic!("attach to a missing interface: {:?}", other.err()),
        }
        xdp.attach("hep0", AttachMode::Native)
            .expect("attach to hep0");
        assert!(matches!(
            xdp.attach("hep0", AttachMode::Native),
            Err(XdpError::AlreadyAttached(_))
        ));
    });
    let state = xdp_state(&a, "hep0");
    assert!(
        state.contains(&format!("prog/xdp id {id}")) && !state.contains("xdpgeneric"),
        "hep0 must show our program in native mode, ip -d link says:\n{state}"
    );
    assert_eq!(
        xdp.attached().collect::<Vec<_>>(),
        vec![("hep0", AttachMode::Native)]
    );

    // HEP over the veth: B → A.
    let rx = a.within(|| UdpSocket::bind(SocketAddrV4::new(ADDR_A, 9060)).expect("bind in A"));
    rx.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let tx = b.within(|| UdpSocket::bind(SocketAddrV4::new(ADDR_B, 0)).expect("bind in B"));
    let before = xdp.counters().expect("counters");
    const N: u32 = 5;
    for i in 0..N {
        tx.send_to(&hep3(i), SocketAddrV4::new(ADDR_A, 9060))
            .expect("send");
    }
    tx.send_to(b"not for us", SocketAddrV4::new(ADDR_A, 9061))
        .expect("send");
    let mut buf = [0u8; 2048];
    for i in 0..N {
        let (n, from) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} did not arrive through XDP_PASS: {e}"));
        assert_eq!(from.ip(), std::net::IpAddr::V4(ADDR_B));
        assert!(buf[..n].starts_with(b"HEP3"));
    }
    let d = xdp.counters().expect("counters").delta(&before);
    let seen: Vec<_> = d.iter().filter(|(_, v)| *v != 0).collect();
    eprintln!("{test}: counter deltas over the veth: {seen:?}");
    assert_eq!(d.get(XdpCounter::HepV3), u64::from(N), "{seen:?}");
    assert_eq!(d.get(XdpCounter::HepCandidate), u64::from(N), "{seen:?}");
    assert_eq!(d.get(XdpCounter::HepInvalid), 0, "{seen:?}");
    assert!(d.get(XdpCounter::OtherPort) >= 1, "{seen:?}");
    // Other traffic (ARP, IPv6 neighbour discovery) is counted too; the invariants hold.
    let outcomes: u64 = XdpCounter::OUTCOMES.iter().map(|c| d.get(*c)).sum();
    assert_eq!(outcomes, d.get(XdpCounter::Received), "{seen:?}");
    assert_eq!(
        d.get(XdpCounter::Passed),
        d.get(XdpCounter::Received),
        "{seen:?}"
    );

    let info = xdp.program_info().expect("program info");
    eprintln!(
        "{test}: hep_xdp id {id}: {:?} instructions verified, {:?} bytes translated",
        info.verified_instruction_count(),
        info.size_translated()
    );
    if let Ok(o) = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
    {
        eprintln!(
            "{test}: bpftool: {}",
            String::from_utf8_lossy(&o.stdout).trim()
        );
    }

    // Skb (generic) mode on hep1, then detach() through the program.
    b.within(|| {
        xdp.attach("hep1", AttachMode::Skb)
            .expect("attach skb to hep1");
    });
    let state = xdp_state(&b, "hep1");
    assert!(
        state.contains("xdpgeneric") && state.contains(&format!("id {id}")),
        "hep1 must show our program in generic mode:\n{state}"
    );
    xdp.detach("hep1").expect("detach hep1");
    let state = xdp_state(&b, "hep1");
    assert!(!state.contains("prog/xdp"), "hep1 still has XDP:\n{state}");

    // Take hep0's link: still attached while held, gone once dropped.
    let link = xdp.take_link("hep0").expect("take link");
    assert!(xdp.attached().next().is_none());
    assert!(xdp_state(&a, "hep0").contains(&format!("prog/xdp id {id}")));
    drop(link);
    let state = xdp_state(&a, "hep0");
    assert!(
        !state.contains("prog/xdp"),
        "hep0 still has XDP after dropping the link:\n{state}"
    );
    assert!(matches!(xdp.detach("hep0"), Err(XdpError::NotAttached(_))));
}
