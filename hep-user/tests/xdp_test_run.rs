//! Runs the real XDP object on crafted frames with `BPF_PROG_TEST_RUN` (no interface):
//! with no route tables installed every frame must come back `XDP_PASS` and unchanged, with
//! exactly the expected counter deltas (one outcome, `received`, `passed`, `hep_candidate`
//! for datagrams to the HEP port, and `pass_no_route` for valid HEPv3). The route outcomes
//! are tested in `xdp_routes.rs`.
//!
//! Needs root (CAP_BPF); skips loudly otherwise, fails under `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;

use aya::{TestRun as _, TestRunOptions};
use hep_common::abi::XdpCounter;
use hep_common::chunk::ChunkId;
use hep_common::v3::ChunkWriter;
use hep_user::xdp::{LoadOptions, XdpProgram};

const XDP_PASS: u32 = 2;
const HEP_PORT: u16 = 9060;

/// Loads the program, or skips (loudly) / fails as the privileged-test rules say.
fn load(test: &str, hep_port: u16) -> Option<XdpProgram> {
    let opts = LoadOptions {
        hep_port,
        ..LoadOptions::default()
    };
    common::load_or_skip(test, &opts)
}

// ----- frame building --------------------------------------------------------------------

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Ethernet header with `tags` (TPID) VLAN tags, then `ethertype`, then `payload`.
fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes()); // TCI: VLAN 100, 101
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header (IHL `ihl_words`, options zero-filled, flags/offset `frag`) + `payload`.
fn ipv4(proto: u8, frag: u16, ihl_words: u8, payload: &[u8]) -> Vec<u8> {
    let hl = usize::from(ihl_words.max(5)) * 4;
    let mut h = vec![0u8; hl];
    h[0] = 0x40 | ihl_words;
    h[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[198, 18, 0, 2]);
    h[16..20].copy_from_slice(&[198, 18, 0, 1]);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    h[24..40].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    h.extend_from_slice(payload);
    h
}

/// UDP header (checksum 0) + payload.
fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&5060u16.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn tcp(dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&5060u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = 0x02; // SYN
    h
}

/// A valid HEPv3 packet carrying a SIP INVITE (checked with the host parser too).
fn hep3() -> Vec<u8> {
    let mut buf = [0u8; 1024];
    let mut w = ChunkWriter::new(&mut buf).expect("buffer");
    let g = |kind| ChunkId { vendor: 0, kind };
    w.push(g(0x0001), &[2]).expect("family");
    w.push(g(0x0002), &[17]).expect("proto");
    w.push(g(0x0003), &[198, 18, 0, 2]).expect("src ip");
    w.push(g(0x0004), &[198, 18, 0, 1]).expect("dst ip");
    w.push(g(0x0007), &5060u16.to_be_bytes()).expect("src port");
    w.push(g(0x0008), &5060u16.to_be_bytes()).expect("dst port");
    w.push(g(0x0009), &1_700_000_000u32.to_be_bytes())
        .expect("ts");
    w.push(g(0x000a), &0u32.to_be_bytes()).expect("usec");
    w.push(g(0x000b), &[1]).expect("proto type");
    w.push(g(0x000c), &2001u32.to_be_bytes())
        .expect("capture id");
    w.push(
        g(0x000f),
        b"INVITE sip:bob@198.18.0.1 SIP/2.0\r\nCall-ID: xdp-test-1\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("payload");
    let n = w.finish().expect("finish");
    let pkt = buf[..n].to_vec();
    hep_common::walker::validate(&pkt[..]).expect("the test packet is valid HEPv3");
    pkt
}

/// HEPv3 magic, but the length field does not match the datagram.
fn hep3_bad_length() -> Vec<u8> {
    let mut p = hep3();
    p[5] = p[5].wrapping_add(1);
    p
}

/// A HEPv2 (IPv4) header and a SIP payload.
fn hep2() -> Vec<u8> {
    let mut p = vec![2u8, 16, 2, 17];
    p.extend_from_slice(&5060u16.to_be_bytes());
    p.extend_from_slice(&5060u16.to_be_bytes());
    p.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
    p.extend_from_slice(&[0u8; 12]); // time block (v2)
    p.extend_from_slice(b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    assert_eq!(
        hep_common::version::detect(&p),
        Some(hep_common::HepVersion::V2)
    );
    p
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    outcome: XdpCounter,
}

fn case(name: &'static str, frame: Vec<u8>, outcome: XdpCounter) -> Case {
    Case {
        name,
        frame,
        outcome,
    }
}

fn cases() -> Vec<Case> {
    use XdpCounter::*;
    let v3 = hep3();
    let v4 = |p: &[u8]| eth(&[], ETH_P_IP, &ipv4(17, 0, 5, &udp(HEP_PORT, p)));
    let mut padded = eth(
        &[],
        ETH_P_IP,
        &ipv4(17, 0, 5, &udp(HEP_PORT, b"HEP3\x00\x06")),
    );
    padded.resize(60, 0); // Ethernet minimum: the UDP length, not the frame, bounds HEP
    let mut udp_len_past_frame = v4(&v3);
    udp_len_past_frame.truncate(udp_len_past_frame.len() - 10);
    let full = v4(&v3);
    vec![
        case("ipv4 udp 9060 hepv3", v4(&v3), HepV3),
        case(
            "802.1Q vlan, ipv4 hepv3",
            eth(
                &[ETH_P_8021Q],
                ETH_P_IP,
                &ipv4(17, 0, 5, &udp(HEP_PORT, &v3)),
            ),
            HepV3,
        ),
        case(
            "802.1ad+802.1Q double tag, ipv4 hepv3",
            eth(
                &[ETH_P_8021AD, ETH_P_8021Q],
                ETH_P_IP,
                &ipv4(17, 0, 5, &udp(HEP_PORT, &v3)),
            ),
            HepV3,
        ),
        case(
            "ipv4 with options (IHL 7) hepv3",
            eth(&[], ETH_P_IP, &ipv4(17, 0, 7, &udp(HEP_PORT, &v3))),
            HepV3,
        ),
        case(
            "ipv6 udp 9060 hepv3",
            eth(&[], ETH_P_IPV6, &ipv6(17, &udp(HEP_PORT, &v3))),
            HepV3,
        ),
        case(
            "vlan + ipv6 hepv3",
            eth(&[ETH_P_8021Q], ETH_P_IPV6, &ipv6(17, &udp(HEP_PORT, &v3))),
            HepV3,
        ),
        case("empty hepv3 in a padded 60-byte frame", padded, HepV3),
        case("hepv2", v4(&hep2()), HepLegacy),
        case(
            "hepv3 with a wrong length",
            v4(&hep3_bad_length()),
            HepInvalid,
        ),
        case("not hep to 9060", v4(b"hello, world"), HepInvalid),
        case("empty udp to 9060", v4(b""), HepInvalid),
        case(
            "ipv4 first fragment (MF)",
            eth(&[], ETH_P_IP, &ipv4(17, 0x2000, 5, &udp(HEP_PORT, &v3))),
            Fragment,
        ),
        case(
            "ipv4 later fragment (offset)",
            eth(&[], ETH_P_IP, &ipv4(17, 0x00b9, 5, &v3)),
            Fragment,
        ),
        case(
            "tcp to 9060",
            eth(&[], ETH_P_IP, &ipv4(6, 0, 5, &tcp(HEP_PORT))),
            NotUdp,
        ),
        case(
            "ipv6 tcp",
            eth(&[], ETH_P_IPV6, &ipv6(6, &tcp(HEP_PORT))),
            NotUdp,
        ),
        case(
            "ipv6 hop-by-hop first",
            eth(&[], ETH_P_IPV6, &ipv6(0, &[17, 0, 1, 4, 0, 0, 0, 0])),
            Ipv6ExtHeader,
        ),
        case(
            "ipv6 fragment header",
            eth(&[], ETH_P_IPV6, &ipv6(44, &[17, 0, 0, 1, 0, 0, 0, 1])),
            Ipv6ExtHeader,
        ),
        case(
            "udp to 5060",
            eth(&[], ETH_P_IP, &ipv4(17, 0, 5, &udp(5060, &v3))),
            OtherPort,
        ),
        case("arp", eth(&[], ETH_P_ARP, &[0u8; 28]), NotIp),
        case(
            "three vlan tags",
            eth(
                &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
                ETH_P_IP,
                &ipv4(17, 0, 5, &udp(HEP_PORT, &v3)),
            ),
            NotIp,
        ),
        case("truncated ipv4 header", full[..14 + 12].to_vec(), Truncated),
        case(
            "truncated udp header",
            full[..14 + 20 + 4].to_vec(),
            Truncated,
        ),
        case(
            "truncated vlan tag",
            eth(&[ETH_P_8021Q], ETH_P_IP, &[])[..16].to_vec(),
            Truncated,
        ),
        case("udp length past the frame", udp_len_past_frame, Truncated),
        case(
            "ipv4 options past the frame",
            eth(&[], ETH_P_IP, &ipv4(17, 0, 15, &[]))[..14 + 40].to_vec(),
            Truncated,
        ),
        case(
            "ipv4 IHL 4",
            eth(&[], ETH_P_IP, &ipv4(17, 0, 4, &udp(HEP_PORT, &v3))),
            Malformed,
        ),
        case(
            "udp length 7",
            {
                let mut f = v4(&v3);
                f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes());
                f
            },
            Malformed,
        ),
        case("ethernet header only", eth(&[], ETH_P_IP, &[]), Truncated),
    ]
}

/// The deltas one packet with `outcome` must cause.
fn expected(outcome: XdpCounter) -> [u64; XdpCounter::COUNT] {
    let mut e = [0u64; XdpCounter::COUNT];
    e[XdpCounter::Received as usize] = 1;
    e[XdpCounter::Passed as usize] = 1;
    e[outcome as usize] = 1;
    if matches!(
        outcome,
        XdpCounter::HepV3 | XdpCounter::HepLegacy | XdpCounter::HepInvalid
    ) {
        e[XdpCounter::HepCandidate as usize] = 1;
    }
    // No route tables are installed in these tests: a valid HEPv3 packet finds no route.
    if outcome == XdpCounter::HepV3 {
        e[XdpCounter::PassNoRoute as usize] = 1;
    }
    e
}

fn named(v: &[u64; XdpCounter::COUNT]) -> Vec<(&'static str, u64)> {
    XdpCounter::ALL
        .iter()
        .map(|c| (c.name(), v[*c as usize]))
        .filter(|(_, n)| *n != 0)
        .collect()
}

/// Runs `frame` once; asserts XDP_PASS, unchanged bytes, and the exact counter deltas.
fn run_case(xdp: &mut XdpProgram, name: &str, frame: &[u8], outcome: XdpCounter) {
    let before = xdp.counters().expect("read counters");
    let mut out = vec![0u8; frame.len() + 512];
    let r = xdp
        .program_mut()
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN failed: {e}"));
    assert_eq!(r.return_value, XDP_PASS, "{name}: action");
    assert_eq!(
        &out[..r.data_size_out as usize],
        frame,
        "{name}: the frame must come back unchanged"
    );
    let delta = xdp.counters().expect("read counters").delta(&before);
    assert_eq!(
        named(&delta.values),
        named(&expected(outcome)),
        "{name}: counter deltas"
    );
}

#[test]
fn xdp_classifies_crafted_frames_and_passes_them_unchanged() {
    let test = "xdp_classifies_crafted_frames_and_passes_them_unchanged";
    let Some(mut xdp) = load(test, HEP_PORT) else {
        return;
    };
    let cases = cases();
    for c in &cases {
        run_case(&mut xdp, c.name, &c.frame, c.outcome);
    }
    // The invariants over the whole run: every packet has one outcome and one action.
    let total = xdp.counters().expect("read counters");
    let n = cases.len() as u64;
    assert_eq!(total.get(XdpCounter::Received), n);
    assert_eq!(total.get(XdpCounter::Passed), n);
    let outcomes: u64 = XdpCounter::OUTCOMES.iter().map(|c| total.get(*c)).sum();
    assert_eq!(outcomes, n);
    eprintln!(
        "{test}: {n} frames; totals {:?}",
        total.iter().collect::<Vec<_>>()
    );
}

#[test]
fn xdp_hep_port_is_set_at_load_time() {
    let test = "xdp_hep_port_is_set_at_load_time";
    let Some(mut xdp) = load(test, 9999) else {
        return;
    };
    assert_eq!(xdp.hep_port(), 9999);
    let v3 = hep3();
    let to = |port| eth(&[], ETH_P_IP, &ipv4(17, 0, 5, &udp(port, &v3)));
    run_case(&mut xdp, "hepv3 to 9999", &to(9999), XdpCounter::HepV3);
    run_case(&mut xdp, "hepv3 to 9060", &to(9060), XdpCounter::OtherPort);
}

#[test]
fn xdp_counts_repeated_runs_per_packet() {
    let test = "xdp_counts_repeated_runs_per_packet";
    let Some(mut xdp) = load(test, HEP_PORT) else {
        return;
    };
    let frame = eth(&[], ETH_P_IP, &ipv4(17, 0, 5, &udp(HEP_PORT, &hep3())));
    let mut out = vec![0u8; frame.len() + 512];
    let r = xdp
        .program_mut()
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat: 1000,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, XDP_PASS);
    let c = xdp.counters().expect("counters");
    assert_eq!(c.get(XdpCounter::Received), 1000);
    assert_eq!(c.get(XdpCounter::HepV3), 1000);
    assert_eq!(c.get(XdpCounter::Passed), 1000);
    eprintln!(
        "{test}: {:?} per run of a {}-byte HEPv3 frame (BPF_PROG_TEST_RUN average)",
        r.duration,
        frame.len()
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

#[test]
fn xdp_kernel_debug_logs_reach_tracing_through_the_drain_task() {
    let test = "xdp_kernel_debug_logs_reach_tracing_through_the_drain_task";
    let opts = LoadOptions {
        hep_port: HEP_PORT,
        log_level: tracing::Level::DEBUG,
    };
    let Some(mut xdp) = common::load_or_skip(test, &opts) else {
        return;
    };
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The drain task runs on this thread (current-thread runtime), under this subscriber.
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let drain = xdp.spawn_log_drain().expect("drain").expect("a log ring");
            assert!(xdp.spawn_log_drain().expect("second call").is_none());
            let frame = eth(
                &[],
                ETH_P_IP,
                &ipv4(17, 0, 5, &udp(HEP_PORT, b"not hep at all")),
            );
            run_case(
                &mut xdp,
                "invalid hep with debug logs",
                &frame,
                XdpCounter::HepInvalid,
            );
            for _ in 0..100 {
                if out.text().contains("invalid HEP") {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            drain.abort();
        });
    });
    let text = out.text();
    assert!(
        text.contains("invalid HEP, 14 payload bytes") && text.contains("hepfwd::xdp::kernel"),
        "the kernel's debug record did not reach tracing; captured:\n{text}"
    );
}
