//! The kernel data plane benchmark (`cargo xtask bench --xdp`; ignored by `cargo test`):
//! frames are injected at `in0` of a lab namespace with BPF_PROG_TEST_RUN live frames
//! (the xdp-trafficgen technique: the kernel runs `hep_xdp` on each frame as if received,
//! and really transmits what it steers, or passes it up to TC), for three routes: steer to
//! one collector, mirror to two (TC clones), drop. Reported per scenario: frames, wall
//! time, frames per second end to end on this machine (injection syscalls, program, the
//! veth transmit and the collector namespace's stack all share its cores), and the
//! programs' own cost per run from `kernel.bpf_stats_enabled` (run_time_ns / run_cnt).
//! No timing is asserted: it prints.
//!
//! Bounded: a fixed number of frames per scenario. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;
#[path = "common/steer_min.rs"]
mod steer_min;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::programs::{ProgramInfo, SchedClassifier};
use aya::{TestRun as _, TestRunAttrs, TestRunOptions};
use hep_common::abi::{MIRROR_PROGRAM, XdpCounter};
use hep_user::xdp::compile::{HostNet, Slots, compile};
use hep_user::xdp::{AttachMode, LoadOptions, XdpProgram};
use hepfwd_harness::lab::{IN_IFINDEX, IN_MAC, Lab};
use hepfwd_harness::message::TestMessage;
use steer_min::{ipv4_udp_frame, xdp_ctx};

const FRAMES: u32 = 1_000_192;
/// Frames per BPF_PROG_TEST_RUN call (the kernel's largest live-frames batch).
const BATCH: u32 = 256;
/// Repeats of the non-live run of each scenario.
const NON_LIVE: u32 = 1_000_000;

fn config(route: &str) -> String {
    format!(
        "[[listener]]\nname = \"agents\"\nudp = \"198.18.1.2:9060\"\n\
         [[destination]]\nname = \"a\"\naddress = \"198.18.2.2:9061\"\n\
         [[destination]]\nname = \"b\"\naddress = \"198.18.2.4:9062\"\n{route}"
    )
}

/// A SIP INVITE with SDP in HEPv3 (about the size of the benchmark mix's largest kind),
/// in an Ethernet/IPv4/UDP frame from the sender to the listener.
fn frame() -> Vec<u8> {
    let sip = "INVITE sip:bob@198.18.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.9.1:5060;branch=z9hG4bK-bench\r\n\
               Max-Forwards: 70\r\nFrom: <sip:alice@198.18.9.1>;tag=1\r\nTo: <sip:bob@198.18.2.9>\r\n\
               Call-ID: bench-call-1@198.18.9.1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@198.18.9.1:5060>\r\n\
               Content-Type: application/sdp\r\nContent-Length: 130\r\n\r\n\
               v=0\r\no=- 1 1 IN IP4 198.18.9.1\r\ns=-\r\nc=IN IP4 198.18.9.1\r\nt=0 0\r\n\
               m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
    let hep = TestMessage::with_payload(sip)
        .timestamp(1_700_000_000, 1)
        .encode();
    ipv4_udp_frame(
        IN_MAC,
        [0x02, 0, 0, 0, 0, 0xa1],
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5070),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 9060),
        64,
        &hep,
        [0, 0],
    )
}

fn stats(info: &ProgramInfo) -> (Duration, u64) {
    (info.run_time(), info.run_count())
}

fn per_run(before: (Duration, u64), after: (Duration, u64)) -> f64 {
    let runs = after.1.saturating_sub(before.1).max(1);
    after.0.saturating_sub(before.0).as_nanos() as f64 / runs as f64
}

fn mirror_info(xdp: &XdpProgram) -> Option<ProgramInfo> {
    let p: &SchedClassifier = xdp
        .ebpf_for_tests()
        .program(MIRROR_PROGRAM)?
        .try_into()
        .ok()?;
    p.info().ok()
}

/// One scenario: a fresh lab, the programs attached, `route` installed, FRAMES frames.
/// `HEPFWD_BENCH_SCENARIO=<text>` runs only the scenarios whose name starts with it (for
/// A/B runs of one change: `drop` is the drop route alone, `sampled out` the other).
fn scenario(name: &str, route: &str) {
    if let Ok(only) = std::env::var("HEPFWD_BENCH_SCENARIO")
        && !name.starts_with(only.as_str())
    {
        return;
    }
    let Some(mut xdp) = common::load_or_skip("xdp_bench", &LoadOptions::default()) else {
        return;
    };
    let lab = Lab::with_ends("bench");
    // Lab::with_ends turns GRO on in the collector namespace (XDP_REDIRECT into a veth).
    // Sockets for the copies (no ICMP port-unreachable storm); they overflow, which is
    // fine: the benchmark measures the forwarder.
    let _sinks = lab.in_collector(|| {
        (
            UdpSocket::bind("198.18.2.2:9061").expect("bind a"),
            UdpSocket::bind("198.18.2.4:9062").expect("bind b"),
        )
    });
    let frame = frame();
    let row = lab.within(|| {
        xdp.attach("in0", AttachMode::Native).expect("attach");
        let _link = xdp.attach_mirror("in0").expect("mirror");
        let plan = hep_user::config::compile(Path::new("bench.toml"), &config(route))
            .expect("config");
        let t = compile(&plan, &mut Slots::default(), &HostNet, true);
        xdp.install(&t).expect("install");
        // The next-hop cache on, as the daemon runs it (nothing changes routes here);
        // `HEPFWD_BENCH_NEXT_HOP_CACHE=off` measures every packet looked up instead.
        if std::env::var("HEPFWD_BENCH_NEXT_HOP_CACHE").as_deref() != Ok("off") {
            xdp.next_hops()
                .expect("next hops")
                .enable()
                .expect("cache on");
        }
        // Warm up: the neighbour entries are permanent; one frame loads the caches.
        let c0 = xdp.counters().expect("counters");
        let x0 = stats(&xdp.program_info().expect("info"));
        let m0 = mirror_info(&xdp).map(|i| stats(&i));
        let ctx = xdp_ctx(frame.len(), IN_IFINDEX);
        let t0 = Instant::now();
        // The kernel initialises each live frame's page once per call and the programs
        // rewrite frames in place, so every call sends one batch: each page once.
        for _ in 0..FRAMES / BATCH {
            xdp.program_mut()
                .expect("program")
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&ctx),
                    repeat: BATCH,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..TestRunOptions::default()
                })
                .expect("live frames");
        }
        let wall = t0.elapsed();
        let c = xdp.counters().expect("counters").delta(&c0);
        let info = xdp.program_info().expect("info");
        let verified = info
            .verified_instruction_count()
            .map_or("?".to_string(), |n| n.to_string());
        let jited = info
            .size_translated()
            .map_or("?".to_string(), |n| n.to_string());
        let x1 = stats(&xdp.program_info().expect("info"));
        let m1 = mirror_info(&xdp).map(|i| stats(&i));
        // The program alone: a non-live run (nothing transmitted), NON_LIVE repeats, the
        // kernel's average per run; separates program time from the transmit path.
        let mut out = vec![0u8; frame.len() + 256];
        let c1 = xdp.counters().expect("counters");
        let non_live = xdp
            .program_mut()
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                // As received on in0 (the listener and the next hop depend on it).
                ctx_in: Some(&ctx),
                repeat: NON_LIVE,
                ..TestRunOptions::default()
            })
            .expect("non-live run")
            .duration;
        // A non-live run repeats on one buffer: a program that rewrites the frame in place
        // (steer, mirror mark) sees, from the second repeat on, a frame that is no longer
        // HEP to the listener. Its time counts only when every repeat decided as the live
        // frames did (drop); otherwise the row says what the repeats did.
        let cn = xdp.counters().expect("counters").delta(&c1);
        let same = [XdpCounter::Steered, XdpCounter::Mirrored, XdpCounter::Dropped]
            .iter()
            .any(|k| cn.get(*k) == u64::from(NON_LIVE) && c.get(*k) == u64::from(FRAMES));
        let non_live = if same {
            format!("{}", non_live.as_nanos())
        } else {
            format!(
                "n/a ({} ns; repeats saw the rewritten frame: steered {} mirrored {} passed {})",
                non_live.as_nanos(),
                cn.get(XdpCounter::Steered),
                cn.get(XdpCounter::Mirrored),
                cn.get(XdpCounter::Passed)
            )
        };
        let mirror_ns = match (m0, m1) {
            (Some(a), Some(b)) if b.1 > a.1 + 1000 => format!("{:.0}", per_run(a, b)),
            _ => "-".into(),
        };
        format!(
            "| {name} | {} | {} B | {:.2} s | {:.0} | {:.0} | {non_live} | {mirror_ns} | steered {} mirrored {} dropped {} passed {} next_hop_hit {} next_hop_miss {} | {verified} / {jited} |",
            FRAMES,
            frame.len(),
            wall.as_secs_f64(),
            f64::from(FRAMES) / wall.as_secs_f64(),
            per_run(x0, x1),
            c.get(XdpCounter::Steered),
            c.get(XdpCounter::Mirrored),
            c.get(XdpCounter::Dropped),
            c.get(XdpCounter::Passed),
            c.get(XdpCounter::NextHopHit),
            c.get(XdpCounter::NextHopMiss),
        )
    });
    println!("{row}");
}

#[test]
#[ignore = "benchmark: cargo xtask bench --xdp"]
fn xdp_bench() {
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    println!(
        "| scenario | frames | frame | wall | frames/s | hep_xdp ns/run | hep_xdp ns/run non-live | hep_mirror ns/run | counters | verifier insns / xlated bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    scenario(
        "steer (XDP_REDIRECT to a)",
        "[default]\nforward = [\"a\"]\n",
    );
    scenario(
        "hash over 2 (SIP without 0x0011: Call-ID scan + hash)",
        "[default]\nforward = [\"a\", \"b\"]\nmode = \"hash\"\n",
    );
    scenario(
        "sampled 0.5 (Call-ID scan + hash)",
        "[[route]]\nname = \"sampled\"\nforward = [\"a\"]\nsample = 0.5\n",
    );
    scenario(
        "mirror x2 (XDP mark + TC clone)",
        "[default]\nforward = [\"a\", \"b\"]\nmode = \"all\"\n",
    );
    scenario(
        "sampled out (Call-ID scan + hash, then drop: the non-live figure is clean)",
        "[[route]]\nname = \"sampled\"\nforward = [\"a\"]\nsample = 0.000001\n",
    );
    scenario(
        "drop",
        "[[route]]\nname = \"drop\"\nmatch = { proto = [\"sip\"] }\naction = \"drop\"\n",
    );
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
}

/// Steer with and without the next-hop cache, the program alone: non-live
/// `BPF_PROG_TEST_RUN` with one repeat per call (a steer rewrites its frame, so each call
/// starts from the original), the kernel's time per run averaged over [`AB_CALLS`] calls,
/// on and off interleaved in blocks so both see the same machine. Prints ns per run.
#[test]
#[ignore = "benchmark: cargo test --release -p hep-user --test xdp_bench -- --ignored"]
fn next_hop_cache_on_against_off() {
    const AB_CALLS: u32 = 20_000;
    const BLOCKS: u32 = 10;
    let Some(mut xdp) = common::load_or_skip("xdp_bench", &LoadOptions::default()) else {
        return;
    };
    let lab = Lab::new("bench-nh");
    let frame = frame();
    let (on, off) = lab.within(|| {
        let plan = hep_user::config::compile(
            Path::new("bench.toml"),
            &config("[default]\nforward = [\"a\"]\n"),
        )
        .expect("config");
        let t = compile(&plan, &mut Slots::default(), &HostNet, false);
        xdp.install(&t).expect("install");
        let next_hops = xdp.next_hops().expect("next hops");
        let mut ctx = Vec::new();
        for v in [0, frame.len() as u32, 0, IN_IFINDEX, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let mut out = vec![0u8; frame.len() + 256];
        let mut block = |xdp: &mut XdpProgram| -> u128 {
            let c0 = xdp.counters().expect("counters");
            let mut total = 0u128;
            for _ in 0..AB_CALLS {
                total += xdp
                    .program_mut()
                    .expect("program")
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        data_out: Some(&mut out),
                        ctx_in: Some(&ctx),
                        ..TestRunOptions::default()
                    })
                    .expect("test run")
                    .duration
                    .as_nanos();
            }
            let c = xdp.counters().expect("counters").delta(&c0);
            assert_eq!(c.get(XdpCounter::Steered), u64::from(AB_CALLS));
            total
        };
        let (mut on, mut off) = (0u128, 0u128);
        for _ in 0..BLOCKS {
            next_hops.enable().expect("cache on");
            on += block(&mut xdp);
            next_hops.disable().expect("cache off");
            off += block(&mut xdp);
        }
        let runs = u128::from(AB_CALLS * BLOCKS);
        (on as f64 / runs as f64, off as f64 / runs as f64)
    });
    println!(
        "steer, non-live, one run per call, {} runs each: cache on {on:.0} ns, off {off:.0} ns, saved {:.0} ns",
        AB_CALLS * BLOCKS,
        off - on
    );
}
