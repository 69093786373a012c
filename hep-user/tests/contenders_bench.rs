//! `cargo xtask bench --all [--quick]` (ignored by `cargo test`; root): every contender on
//! the same namespace topology, generator and sink, one after another, in one table.
//!
//! ```text
//!   snd ns: hepfwd gen  ──veth──  fwd ns: the contender on in0  ──veth──  col ns: hepfwd sink
//!   198.18.1.1                    198.18.1.2:9060 / 198.18.2.1            198.18.2.2, 198.18.2.3 :9061
//! ```
//!
//! Contenders: `hep_steer_min` (the minimal steer of hep-ebpf `bench_min.rs`: no HEP
//! parsing), `hepfwd --mode xdp` with a single-destination route per proto type, a hash
//! route on SIP (no 0x0011 chunk: the Call-ID scan runs), a mirror to two (XDP + TC), a
//! drop route and sampling, `hepfwd --mode userspace`, and Kamailio's sipcapture as a HEP
//! switch (`bench/kamailio.cfg`). The load is `hepfwd gen`'s benchmark mix (SIP 60 / RTCP
//! 30 / logs 10), offered at stepped rates, each step bounded in count and time; the
//! result is the highest rate with at most 0.1% loss. A packet counts as delivered when the
//! sink received it (mirror: both copies) or the kernel program dropped it on purpose (drop
//! route, sampled out; from the daemon's `/metrics`).
//!
//! Also per contender: CPU per delivered packet (userspace contenders: the process group's
//! CPU from `/proc/PID/stat`; XDP contenders: the machine's softirq time from
//! `/proc/stat`, where veth runs XDP, which also holds the generator's and the sink's
//! packet path), the
//! programs' own ns per run live (`kernel.bpf_stats_enabled`), and a non-live
//! BPF_PROG_TEST_RUN of the program on the mix's SIP INVITE (one run per call, so that a
//! rewritten frame is never run twice; the kernel's time per call, averaged), which
//! separates program time from the transmit path.
//!
//! Environment: `HEPFWD_BENCH_QUICK=1` (fewer and shorter steps, 1e5 non-live runs instead
//! of 1e6), `HEPFWD_BIN` (the hepfwd binary to run; default: this build's).
//! Everything started is stopped by PID (process groups it created); namespaces are deleted
//! on drop, also on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

mod common;
#[path = "common/steer_min.rs"]
mod steer_min;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType, loaded_programs};
use aya::{TestRun as _, TestRunOptions};
use hep_user::xdp::LoadOptions;
use hep_user::xdp::compile::{HostNet, Slots, compile};
use hepfwd_harness::lab::{IN_IFINDEX, IN_MAC, Lab};
use hepfwd_harness::privileged;
use hepfwd_tests::daemon::{Daemon, Mode};
use hepfwd_tests::netns::{COL_A, FWD_IN, FWD_OUT, IF_IN, Ns, Topology};
use hepfwd_tests::peers::{ProcessGuard, TestDir, kamailio, read_tail};
use steer_min::{SteerMin, ipv4_udp_frame, xdp_ctx};

/// The collectors' UDP port (both addresses of col; one sink on 0.0.0.0 counts both).
const COL_PORT: u16 = 9061;
const LISTEN_PORT: u16 = 9060;
/// Loss above this fraction ends a contender's search.
const MAX_LOSS: f64 = 0.001;
/// The Kamailio template (the bench fills the @NAME@ placeholders).
const KAMAILIO_CFG: &str = include_str!("../../bench/kamailio.cfg");

struct Settings {
    quick: bool,
    rates: Vec<u64>,
    seconds: u64,
    non_live: u32,
}

fn settings() -> Settings {
    let quick = std::env::var("HEPFWD_BENCH_QUICK").is_ok_and(|v| v == "1");
    if quick {
        Settings {
            quick,
            rates: vec![25_000, 50_000, 100_000, 200_000, 300_000],
            seconds: 2,
            non_live: 100_000,
        }
    } else {
        Settings {
            quick,
            rates: vec![
                25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000, 250_000,
                300_000, 350_000, 400_000, 500_000, 600_000, 800_000,
            ],
            seconds: 5,
            non_live: 1_000_000,
        }
    }
}

/// What runs on the forwarder.
#[derive(Clone, Copy)]
enum Kind {
    /// `hep_steer_min`, loaded and attached by this test.
    SteerMin,
    /// `hepfwd run --mode MODE` with these routes (destinations `a` and `b`).
    Hepfwd { mode: Mode, routes: &'static str },
    /// Kamailio's sipcapture.
    Kamailio,
}

struct Contender {
    name: &'static str,
    kind: Kind,
    /// Copies the sink receives per packet.
    copies: u64,
}

const SINGLE: &str = "[[route]]\nname = \"sip\"\nmatch = { proto = [\"sip\"] }\nforward = [\"a\"]\n\n\
[[route]]\nname = \"rtcp\"\nmatch = { proto = [\"rtcp\"] }\nforward = [\"a\"]\n\n\
[[route]]\nname = \"logs\"\nmatch = { proto = [\"log\"] }\nforward = [\"a\"]\n\n\
[default]\nforward = [\"a\"]\n";
const HASH: &str = "[[route]]\nname = \"calls\"\nmatch = { proto = [\"sip\"] }\nforward = [\"a\", \"b\"]\nmode = \"hash\"\n\n\
[default]\nforward = [\"a\"]\n";
const MIRROR: &str = "[default]\nforward = [\"a\", \"b\"]\nmode = \"all\"\n";
const DROP: &str = "[[route]]\nname = \"drop\"\naction = \"drop\"\n";
const SAMPLE: &str = "[[route]]\nname = \"sampled\"\nforward = [\"a\"]\nsample = 0.5\n";

fn contenders() -> Vec<Contender> {
    let xdp = |name, routes, copies| Contender {
        name,
        kind: Kind::Hepfwd {
            mode: Mode::Xdp,
            routes,
        },
        copies,
    };
    vec![
        Contender {
            name: "hep_steer_min (minimal steer, no HEP parsing)",
            kind: Kind::SteerMin,
            copies: 1,
        },
        xdp(
            "hepfwd xdp: single destination (proto-type routes)",
            SINGLE,
            1,
        ),
        xdp("hepfwd xdp: hash on SIP (Call-ID scan)", HASH, 1),
        xdp("hepfwd xdp: mirror x2 (XDP + TC)", MIRROR, 2),
        xdp("hepfwd xdp: drop route", DROP, 1),
        xdp("hepfwd xdp: sampling 0.5", SAMPLE, 1),
        Contender {
            name: "hepfwd userspace (2 workers, proto-type routes)",
            kind: Kind::Hepfwd {
                mode: Mode::Userspace,
                routes: SINGLE,
            },
            copies: 1,
        },
        Contender {
            name: "Kamailio 5.6 sipcapture (2 children)",
            kind: Kind::Kamailio,
            copies: 1,
        },
    ]
}

/// The daemon's configuration in the topology (destination b on col's second address).
fn topology_config(mode: Mode, routes: &str) -> String {
    let xdp = if mode == Mode::Xdp {
        "[xdp]\ninterfaces = [\"in0\"]\nattach = \"native\"\n\n"
    } else {
        ""
    };
    format!(
        "[admin]\nlisten = \"127.0.0.1:9100\"\n\n[[listener]]\nname = \"agents\"\nudp = \"{FWD_IN}:{LISTEN_PORT}\"\n\n\
         {xdp}[engine]\nworkers = 2\n\n\
         [[destination]]\nname = \"a\"\naddress = \"198.18.2.2:{COL_PORT}\"\n\
         [[destination]]\nname = \"b\"\naddress = \"198.18.2.3:{COL_PORT}\"\n\n{routes}"
    )
}

/// The same routes in the lab of the non-live runs (its collectors: 198.18.2.2 and .4).
fn lab_config(routes: &str) -> String {
    format!(
        "[[listener]]\nname = \"agents\"\nudp = \"198.18.1.2:{LISTEN_PORT}\"\n\
         [[destination]]\nname = \"a\"\naddress = \"198.18.2.2:{COL_PORT}\"\n\
         [[destination]]\nname = \"b\"\naddress = \"198.18.2.4:{COL_PORT}\"\n{routes}"
    )
}

/// The hepfwd binary of the generator, the sink and the daemon.
fn hepfwd_bin() -> PathBuf {
    std::env::var_os("HEPFWD_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_hepfwd")),
            PathBuf::from,
        )
}

// ---------------------------------------------------------------------------------------
// Measurements.

/// utime + stime (clock ticks) of every process in process group `pgid`.
fn group_cpu_ticks(pgid: u32) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // Fields after the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12).
        if f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(pgid) {
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total += t(11) + t(12);
        }
    }
    total
}

/// softirq ticks of all CPUs (`/proc/stat`): where veth runs XDP (NAPI) and the kernel's
/// packet path. Not system time: on a shared machine that mostly counts other work
/// (compilers' page faults and I/O).
fn machine_softirq_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    f.get(6).copied().unwrap_or(0)
}

/// The kernel's run time and count of program `id` (bpf_stats).
fn prog_stats(id: u32) -> (Duration, u64) {
    loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map_or((Duration::ZERO, 0), |p: ProgramInfo| {
            (p.run_time(), p.run_count())
        })
}

/// The forwarder under test, running.
enum Forwarder {
    SteerMin(Box<SteerMin>),
    Hepfwd {
        daemon: Daemon,
        /// hep_xdp's and (mirror) hep_mirror's program ids.
        progs: Vec<u32>,
    },
    Kamailio {
        guard: ProcessGuard,
        _dir: TestDir,
    },
}

#[derive(Clone, Copy, Default)]
struct Snapshot {
    cpu_ticks: u64,
    progs: [(Duration, u64); 2],
    dropped: u64,
}

impl Forwarder {
    /// Whether its CPU is a process's (else the machine's kernel time).
    fn userspace(&self) -> bool {
        match self {
            Forwarder::SteerMin(_) => false,
            Forwarder::Hepfwd { progs, .. } => progs.is_empty(),
            Forwarder::Kamailio { .. } => true,
        }
    }

    fn snapshot(&mut self) -> Snapshot {
        let mut s = Snapshot::default();
        match self {
            Forwarder::SteerMin(p) => {
                let i = p.info();
                s.progs[0] = (i.run_time(), i.run_count());
                s.cpu_ticks = machine_softirq_ticks();
            }
            Forwarder::Hepfwd { daemon, progs } => {
                for (slot, id) in progs.iter().enumerate().take(2) {
                    s.progs[slot] = prog_stats(*id);
                }
                s.cpu_ticks = if progs.is_empty() {
                    group_cpu_ticks(daemon.pid())
                } else {
                    machine_softirq_ticks()
                };
                if !progs.is_empty() {
                    s.dropped = daemon
                        .metrics()
                        .get("hepfwd_xdp_packets_total", &[("counter", "dropped")]);
                }
            }
            Forwarder::Kamailio { guard, .. } => s.cpu_ticks = group_cpu_ticks(guard.pid()),
        }
        s
    }
}

/// The id of the XDP program attached to `in0` in the forwarder namespace.
fn attached_xdp_id(topo: &Topology) -> u32 {
    let shown = topo.ip(Ns::Fwd, &["-d", "link", "show", "dev", IF_IN]);
    let after = shown
        .split("prog/xdp id ")
        .nth(1)
        .unwrap_or_else(|| panic!("no XDP program on in0:\n{shown}"));
    after
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("prog id")
}

fn start(topo: &Topology, c: &Contender) -> Forwarder {
    match c.kind {
        Kind::SteerMin => {
            let p = topo.within(Ns::Fwd, || {
                let mut p =
                    SteerMin::load().expect("the XDP object (build without AYA_BUILD_SKIP)");
                p.set_dest(SocketAddrV4::new(COL_A, COL_PORT), FWD_OUT, LISTEN_PORT);
                p.attach(IF_IN);
                Box::new(p)
            });
            Forwarder::SteerMin(p)
        }
        Kind::Hepfwd { mode, routes } => {
            let daemon =
                Daemon::start_in_netns(topo.name(Ns::Fwd), mode, &topology_config(mode, routes))
                    .unwrap_or_else(|e| panic!("starting hepfwd --mode {mode}: {e:#}"));
            let mut progs = Vec::new();
            if mode == Mode::Xdp {
                progs.push(attached_xdp_id(topo));
                let tc = topo.within(Ns::Fwd, || {
                    SchedClassifier::query_tcx(IF_IN, TcAttachType::Ingress)
                        .map(|(_, p)| p)
                        .unwrap_or_default()
                });
                progs.extend(tc.iter().map(ProgramInfo::id));
            }
            Forwarder::Hepfwd { daemon, progs }
        }
        Kind::Kamailio => start_kamailio(topo),
    }
}

fn start_kamailio(topo: &Topology) -> Forwarder {
    let bin = kamailio().expect("kamailio (apt-get install kamailio)");
    let dir = TestDir::new("bench-kamailio").expect("temp dir");
    let (db, run) = (dir.join("db"), dir.join("run"));
    std::fs::create_dir_all(&db).expect("mkdir");
    std::fs::create_dir_all(&run).expect("mkdir");
    let cfg = KAMAILIO_CFG
        .replace("@LISTEN_IP@", &FWD_IN.to_string())
        .replace("@LISTEN_PORT@", &LISTEN_PORT.to_string())
        .replace("@COLLECTOR_IP@", &COL_A.to_string())
        .replace("@COLLECTOR_PORT@", &COL_PORT.to_string())
        .replace("@DB_DIR@", &db.display().to_string())
        .replace("@CHILDREN@", "2");
    let cfg_path = dir.join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).expect("write kamailio.cfg");
    let mut cmd = topo.namespace(Ns::Fwd).command(&bin.display().to_string());
    cmd.args(["-DD", "-E", "-f"])
        .arg(&cfg_path)
        .arg("-Y")
        .arg(&run)
        .arg("-P")
        .arg(run.join("kamailio.pid"))
        .arg("-w")
        .arg(&run)
        .args(["-m", "256", "-M", "16"])
        .current_dir(dir.path());
    let log = dir.join("kamailio.log");
    let mut guard = ProcessGuard::spawn("kamailio", cmd, &dir.join("kamailio.stdout"), &log)
        .expect("start kamailio");
    // Bound once its UDP socket holds the listener address.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = guard.try_wait().expect("wait") {
            panic!(
                "kamailio exited at start ({st}):\n{}",
                read_tail(&log, 8000)
            );
        }
        let bound = topo.within(Ns::Fwd, || UdpSocket::bind((FWD_IN, LISTEN_PORT)).is_err());
        if bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kamailio did not bind in time:\n{}",
            read_tail(&log, 8000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its children start after the bind.
    std::thread::sleep(Duration::from_millis(500));
    Forwarder::Kamailio { guard, _dir: dir }
}

/// A child killed by its PID on drop (only what this bench started).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_line(out: &str) -> serde_json::Value {
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

struct Step {
    rate: u64,
    sent: u64,
    delivered: u64,
    loss: f64,
    cpu_us: f64,
    /// Each program's ns per run of its own (XDP; TC, which runs on what XDP passed).
    prog_ns: [Option<f64>; 2],
    /// Both programs' time per packet the XDP program saw.
    pkt_ns: Option<f64>,
    /// The forwarder namespace's UDP receive buffer overflows during the step.
    fwd_rcvbuf_errors: u64,
}

/// `RcvbufErrors` of the forwarder namespace (`/proc/thread-self/net/snmp` from a thread
/// inside it: `/proc/self/net` would show the thread group leader's namespace).
fn fwd_rcvbuf_errors(topo: &Topology) -> u64 {
    let snmp = topo.within(Ns::Fwd, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default()
    });
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    head.split_whitespace()
        .position(|h| h == "RcvbufErrors")
        .and_then(|i| vals.split_whitespace().nth(i))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One step: a fresh sink in col, `rate * seconds` packets from snd.
fn step(topo: &Topology, fwd: &mut Forwarder, c: &Contender, rate: u64, seconds: u64) -> Step {
    let bin = hepfwd_bin();
    let mut sink = Guard(
        topo.namespace(Ns::Col)
            .command(&bin.display().to_string())
            .args([
                "sink",
                "--listen",
                &format!("0.0.0.0:{COL_PORT}"),
                "--idle",
                "1",
                "--duration",
                // The generator stops by seconds + 2; a sink that receives nothing (the drop
                // route) ends here instead of at its idle timeout.
                &(seconds + 4).to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hepfwd sink"),
    );
    if let Some(err) = sink.0.stderr.take() {
        let mut line = String::new();
        BufReader::new(err)
            .read_line(&mut line)
            .expect("sink start");
    }
    let before = fwd.snapshot();
    let rcvbuf0 = fwd_rcvbuf_errors(topo);
    let gen_out = topo
        .namespace(Ns::Snd)
        .command(&bin.display().to_string())
        .args([
            "gen",
            "--to",
            &format!("{FWD_IN}:{LISTEN_PORT}"),
            "--rate",
            &rate.to_string(),
            "--count",
            &(rate * seconds).to_string(),
            "--duration",
            &(seconds + 2).to_string(),
        ])
        .output()
        .expect("run hepfwd gen");
    let sent = json_line(&String::from_utf8_lossy(&gen_out.stdout))["sent"]
        .as_u64()
        .unwrap_or(0);
    // The sink ends 1 s after the last packet.
    let deadline = Instant::now() + Duration::from_secs(seconds + 15);
    let sink_out = loop {
        if sink.0.try_wait().expect("wait").is_some() {
            let mut s = String::new();
            if let Some(mut o) = sink.0.stdout.take() {
                o.read_to_string(&mut s).expect("sink output");
            }
            break s;
        }
        assert!(Instant::now() < deadline, "hepfwd sink did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = fwd.snapshot();
    let fwd_rcvbuf_errors = fwd_rcvbuf_errors(topo).saturating_sub(rcvbuf0);
    let received = json_line(&sink_out)["udp"].as_u64().unwrap_or(0);
    let delivered = received / c.copies + after.dropped.saturating_sub(before.dropped);
    let loss = 1.0 - delivered as f64 / sent.max(1) as f64;
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
    let prog_ns = [0, 1].map(|i| {
        let runs = after.progs[i].1.saturating_sub(before.progs[i].1);
        (runs > 0).then(|| {
            after.progs[i]
                .0
                .saturating_sub(before.progs[i].0)
                .as_nanos() as f64
                / runs as f64
        })
    });
    let xdp_runs = after.progs[0].1.saturating_sub(before.progs[0].1);
    let both_time: u128 = [0, 1]
        .iter()
        .map(|&i| {
            after.progs[i]
                .0
                .saturating_sub(before.progs[i].0)
                .as_nanos()
        })
        .sum();
    Step {
        rate,
        sent,
        delivered,
        loss,
        // USER_HZ is 100: a tick is 10 ms.
        cpu_us: ticks * 10_000.0 / delivered.max(1) as f64,
        prog_ns,
        pkt_ns: (xdp_runs > 0).then(|| both_time as f64 / xdp_runs as f64),
        fwd_rcvbuf_errors,
    }
}

// ---------------------------------------------------------------------------------------
// Non-live runs.

/// Packet 0 of the benchmark mix (a SIP INVITE with SDP, no 0x0011 chunk) from the sender
/// to the listener, as received on the lab's in0.
fn mix_frame() -> Vec<u8> {
    let hep = hep_user::cli::generate::build(0).expect("the mix");
    ipv4_udp_frame(
        IN_MAC,
        [0x02, 0, 0, 0, 0, 0xa1],
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5070),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), LISTEN_PORT),
        64,
        &hep,
        [0, 0],
    )
}

/// `runs` test runs of one repeat each on a fresh copy of `frame`: (mean ns per run by the
/// kernel's clock, the first run's action).
fn non_live(prog: &mut aya::programs::Xdp, frame: &[u8], runs: u32) -> (f64, u32) {
    let ctx = xdp_ctx(frame.len(), IN_IFINDEX);
    let mut out = vec![0u8; frame.len() + 256];
    let mut total = Duration::ZERO;
    let mut action = None;
    for _ in 0..runs {
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .expect("non-live run");
        total += r.duration;
        action.get_or_insert(r.return_value);
    }
    (
        total.as_nanos() as f64 / f64::from(runs.max(1)),
        action.unwrap_or(u32::MAX),
    )
}

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

/// The non-live figure of contender `c` (XDP contenders only).
fn non_live_of(c: &Contender, runs: u32) -> Option<(f64, u32)> {
    let frame = mix_frame();
    match c.kind {
        Kind::SteerMin => {
            let lab = Lab::new("cbnl");
            Some(lab.within(|| {
                let mut p = SteerMin::load().expect("the XDP object");
                p.set_dest(
                    SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 2), COL_PORT),
                    Ipv4Addr::new(198, 18, 2, 1),
                    LISTEN_PORT,
                );
                non_live(p.program(), &frame, runs)
            }))
        }
        Kind::Hepfwd {
            mode: Mode::Xdp,
            routes,
        } => {
            let mut xdp = common::load_or_skip("contenders_bench", &LoadOptions::default())?;
            let lab = Lab::new("cbnl");
            Some(lab.within(|| {
                let plan = hep_user::config::compile(Path::new("bench.toml"), &lab_config(routes))
                    .expect("config");
                let t = compile(&plan, &mut Slots::default(), &HostNet, true);
                xdp.install(&t).expect("install");
                non_live(xdp.program_mut().expect("program"), &frame, runs)
            }))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------

struct Row {
    name: &'static str,
    userspace: bool,
    best: Option<Step>,
    /// The step that ended the search (its figures are shown when no rate passed).
    last: Option<Step>,
    stopped: String,
    non_live: Option<(f64, u32)>,
}

/// The step whose figures a row shows: the best, else the one that ended the search.
fn shown(r: &Row) -> Option<&Step> {
    r.best.as_ref().or(r.last.as_ref())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn cmd_out(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "benchmark: cargo xtask bench --all [--quick]"]
fn contenders_bench() {
    if !privileged::available("contenders_bench") {
        return;
    }
    if std::env::var_os("HEPFWD_BIN").is_none_or(|v| v.is_empty()) {
        // The daemon helper runs $HEPFWD_BIN (else it builds a debug binary): this build's.
        // SAFETY: set before this test starts any thread of its own; the harness runs it
        // alone (--test-threads=1) and nothing else reads the environment meanwhile.
        unsafe { std::env::set_var("HEPFWD_BIN", env!("CARGO_BIN_EXE_hepfwd")) };
    }
    let s = settings();
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let header = format!(
        "date {} | commit {} | kernel {} | CPU {} x {} | {}",
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cmd_out("git", &["rev-parse", "--short", "HEAD"]),
        cmd_out("uname", &["-r"]),
        cpu,
        std::thread::available_parallelism().map_or(0, usize::from),
        if s.quick {
            "--quick (2 s steps, 1e5 non-live runs)"
        } else {
            "full (5 s steps, 1e6 non-live runs)"
        }
    );
    println!("[bench --all] {header}");
    let mut rows = Vec::new();
    // One topology for all: each contender detaches (its links close) or exits before the
    // next starts.
    let topo = Topology::new("cb");
    let t0 = Instant::now();
    for c in contenders() {
        topo.warm_neighbours();
        let mut fwd = start(&topo, &c);
        let userspace = fwd.userspace();
        let mut best = None;
        let mut last = None;
        let mut stopped = format!("passed every rate up to {}", s.rates.last().unwrap_or(&0));
        for &rate in &s.rates {
            let st = step(&topo, &mut fwd, &c, rate, s.seconds);
            println!(
                "[bench --all] {:<50} offered {:>7} sent {:>8} delivered {:>8} loss {:>7.3}% fwd rcvbuf errors {:>6} cpu {:>7.2} us/pkt prog ns {} + {} = {}/pkt",
                c.name,
                rate,
                st.sent,
                st.delivered,
                st.loss * 100.0,
                st.fwd_rcvbuf_errors,
                st.cpu_us,
                fmt_opt(st.prog_ns[0], 0),
                fmt_opt(st.prog_ns[1], 0),
                fmt_opt(st.pkt_ns, 0)
            );
            if st.sent < rate * s.seconds * 95 / 100 {
                stopped = format!("sender-bound at {rate} (sent {})", st.sent);
                last = Some(st);
                break;
            }
            if st.loss > MAX_LOSS {
                stopped = format!("{:.2}% loss at {rate}", st.loss * 100.0);
                last = Some(st);
                break;
            }
            best = Some(st);
        }
        drop(fwd);
        let non_live = non_live_of(&c, s.non_live);
        println!(
            "[bench --all] {}: done at {:.0} s",
            c.name,
            t0.elapsed().as_secs_f64()
        );
        rows.push(Row {
            name: c.name,
            userspace,
            best,
            last,
            stopped,
            non_live,
        });
    }
    drop(topo);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());

    let min_live = shown(&rows[0]).and_then(|b| b.pkt_ns);
    let min_nl = rows[0].non_live.map(|n| n.0);
    let kam_rate = rows
        .iter()
        .find(|r| r.name.starts_with("Kamailio"))
        .and_then(|r| r.best.as_ref().map(|b| b.rate));
    println!();
    println!("{header}");
    println!();
    println!(
        "| contender | max pps (≤0.1% loss) | search ended | CPU µs/pkt | CPU measured as | XDP ns/run live | TC ns/run live | programs ns/pkt live | non-live ns/run (action) | live ns/pkt ÷ min's | non-live ÷ min's | max pps ÷ Kamailio's |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    for r in &rows {
        let st = shown(r);
        let mark = if r.best.is_some() {
            ""
        } else {
            " (failed step)"
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.best
                .as_ref()
                .map_or(format!("< {}", s.rates[0]), |b| b.rate.to_string()),
            r.stopped,
            st.map_or("-".into(), |b| format!("{:.2}{mark}", b.cpu_us)),
            if r.userspace {
                "process group (/proc/PID/stat)"
            } else {
                "machine softirq (/proc/stat; also gen's and sink's packet path)"
            },
            fmt_opt(st.and_then(|b| b.prog_ns[0]), 0),
            fmt_opt(st.and_then(|b| b.prog_ns[1]), 0),
            fmt_opt(st.and_then(|b| b.pkt_ns), 0),
            r.non_live.map_or("-".into(), |(ns, a)| format!(
                "{ns:.0} ({})",
                action_name(a)
            )),
            ratio(st.and_then(|b| b.pkt_ns), min_live),
            ratio(r.non_live.map(|n| n.0), min_nl),
            ratio(
                r.best.as_ref().map(|b| b.rate as f64),
                kam_rate.map(|k| k as f64)
            ),
        );
    }
}
