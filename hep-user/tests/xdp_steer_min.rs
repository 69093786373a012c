//! `hep_steer_min`, the benchmark's minimal steer (hep-ebpf `bench_min.rs`), run with
//! BPF_PROG_TEST_RUN in the lab namespace (fixed interface indices, permanent neighbours):
//! the exact bytes of a steered frame, and the frames it must pass untouched. Privileged:
//! skips loudly without root or without the XDP build, fails then under
//! `HEPFWD_REQUIRE_PRIVILEGED=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

#[path = "common/steer_min.rs"]
mod steer_min;

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{TestRun as _, TestRunOptions};
use hepfwd_harness::lab::{IN_IFINDEX, IN_MAC, Lab, OUT_MAC, neighbour_mac};
use hepfwd_harness::privileged;
use steer_min::{SteerMin, ipv4_udp_frame, xdp_ctx};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const SENDER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5070);
const LISTENER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 9060);
const COLLECTOR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 2), 9061);
const NODE_OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];

/// Runs the program once on `frame` received on `in0`: (action, frame out).
fn run(p: &mut SteerMin, frame: &[u8]) -> (u32, Vec<u8>) {
    let ctx = xdp_ctx(frame.len(), IN_IFINDEX);
    let mut out = vec![0u8; frame.len() + 64];
    let r = p
        .program()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .expect("test run");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

#[test]
fn steer_min_rewrites_exactly_and_passes_the_rest() {
    if !privileged::available("xdp_steer_min") {
        return;
    }
    let lab = Lab::new("smin");
    lab.within(|| {
        let Some(mut p) = SteerMin::load() else {
            privileged::skip(
                "xdp_steer_min",
                "hepfwd was built with AYA_BUILD_SKIP=1 (no XDP program)",
            );
            return;
        };
        let payload = b"HEP3 any payload: the program does not parse it";
        let frame = ipv4_udp_frame(
            IN_MAC,
            SENDER_MAC,
            SENDER,
            LISTENER,
            64,
            payload,
            [0x12, 0x34],
        );

        // No collector configured yet: everything passes untouched.
        assert_eq!(run(&mut p, &frame), (XDP_PASS, frame.clone()));

        p.set_dest(COLLECTOR, NODE_OUT, LISTENER.port());
        let (action, out) = run(&mut p, &frame);
        assert_eq!(action, XDP_REDIRECT, "steered out of out0");
        // The reference: the same frame built afresh (full IPv4 checksum, not incremental).
        let expected = ipv4_udp_frame(
            neighbour_mac("198.18.2.2"),
            OUT_MAC,
            SocketAddrV4::new(NODE_OUT, LISTENER.port()),
            COLLECTOR,
            63,
            payload,
            [0, 0],
        );
        assert_eq!(out, expected);
        // The same bytes spelled out: MACs, IPv4 header (TTL 63, checksum 0xab7a), UDP
        // header (9060 -> 9061, length 55, checksum 0).
        let head: &[u8] = &[
            0x02, 0, 0, 0, 0x02, 0x02, 0x02, 0, 0, 0, 0, 0xb0, 0x08, 0x00, // Ethernet
            0x45, 0, 0, 75, 0, 0, 0x40, 0, 63, 17, 0xab, 0x7a, 198, 18, 2, 1, 198, 18, 2,
            2, // IPv4
            0x23, 0x64, 0x23, 0x65, 0, 55, 0, 0, // UDP
        ];
        assert_eq!(&out[..42], head);
        assert_eq!(&out[42..], payload);

        // Not to the listener port, TTL 1, not UDP, IPv4 options: passed untouched.
        let other_port = ipv4_udp_frame(
            IN_MAC,
            SENDER_MAC,
            SENDER,
            SocketAddrV4::new(*LISTENER.ip(), 5060),
            64,
            payload,
            [0, 0],
        );
        let ttl1 = ipv4_udp_frame(IN_MAC, SENDER_MAC, SENDER, LISTENER, 1, payload, [0, 0]);
        let mut tcp = frame.clone();
        tcp[14 + 9] = 6;
        let mut options = frame.clone();
        options[14] = 0x46;
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        for f in [
            &other_port,
            &ttl1,
            &tcp,
            &options,
            &arp,
            &frame[..40].to_vec(),
        ] {
            assert_eq!(run(&mut p, f), (XDP_PASS, f.clone()));
        }
        // Counters: 1 steered; passed: the unconfigured run and 5 others; fallback: TTL 1.
        assert_eq!(p.counters(), [1, 6, 1]);
    });
}
