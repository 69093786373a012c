//! `cargo xtask bench`: the userspace forwarding benchmark.
//!
//! `hepfwd gen` → `hepfwd run --mode userspace` (N workers) → `hepfwd sink`, all on
//! loopback, with the benchmark mix of `hepfwd gen` (60% SIP INVITE+SDP, 30% RTCP JSON,
//! 10% logs). Rates step up; each step runs a bounded time and counts what reached the
//! sink. The result is the highest rate with at most 0.1% loss, and the CPU time hepfwd
//! spent per packet there (from `/proc/PID/stat`). Generator, forwarder and sink share the
//! machine's cores, as in `../shared/PEERS.md`'s baseline. Record results in
//! `docs/benchmarks.md` with the command, date and machine.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build, cmd, setup};

/// Options of `cargo xtask bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// UDP worker threads of hepfwd.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Offered rates to try, packets per second, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [50_000u64, 100_000, 125_000, 150_000, 175_000, 200_000, 225_000, 250_000, 300_000])]
    pub rates: Vec<u64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Loss above this fraction ends the search.
    #[arg(long, default_value_t = 0.001)]
    pub max_loss: f64,
    /// Skip setup and build (use the existing release binary).
    #[arg(long)]
    pub no_build: bool,
    /// Userspace mirroring: every packet to two destinations (`mode = "all"`); the sink
    /// must receive two copies of each.
    #[arg(long)]
    pub mirror: bool,
    /// The kernel data plane instead (root): `hep_xdp` steering, mirroring (with the TC
    /// program) and dropping frames injected with BPF_PROG_TEST_RUN live frames into a
    /// namespace topology; reports packets/s and ns/packet from `kernel.bpf_stats_enabled`.
    #[arg(long)]
    pub xdp: bool,
    /// Every contender, one after another, on the same namespace topology, generator
    /// (`hepfwd gen`'s mix) and sink (root): the minimal steer `hep_steer_min`, `hepfwd
    /// --mode xdp` (single destination, hash on SIP, mirror x2, drop, sampling), `hepfwd
    /// --mode userspace` and Kamailio's sipcapture (`bench/kamailio.cfg`); one table with
    /// max packets/s at ≤ 0.1% loss, CPU per packet, program ns per packet live and
    /// non-live, and the ratios to the minimal steer and to Kamailio.
    #[arg(long)]
    pub all: bool,
    /// With `--all`: 2 s steps, 5 rates (25k to 300k packets/s), 1e5 non-live runs (about 5 minutes).
    #[arg(long, requires = "all")]
    pub quick: bool,
}

/// Kills the child on drop (by its PID: only processes this benchmark started).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("picking a port")?;
    let t = std::net::TcpListener::bind(s.local_addr()?).context("picking a port")?;
    Ok(t.local_addr()?.port())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn json_line(out: &[u8]) -> Result<serde_json::Value> {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}

struct Step {
    rate: u64,
    sent: u64,
    received: u64,
    rcvbuf_errors: u64,
    cpu_us_per_pkt: f64,
}

fn step(
    bin: &Path,
    dir: &Path,
    workers: usize,
    rate: u64,
    seconds: u64,
    mirror: bool,
) -> Result<Step> {
    let (lp, sp) = (free_port()?, free_port()?);
    let cfg = dir.join("bench.toml");
    let routes = if mirror {
        // Two destinations on the same sink: it counts both copies.
        format!(
            "[[destination]]\nname = \"sink2\"\naddress = \"127.0.0.1:{sp}\"\n\n[default]\nforward = [\"sink\", \"sink2\"]\nmode = \"all\"\n"
        )
    } else {
        "[[route]]\nname = \"sip\"\nmatch = { proto = [\"sip\"] }\nforward = [\"sink\"]\nmode = \"hash\"\n\n[default]\nforward = [\"sink\"]\n".to_string()
    };
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"bench\"\nudp = \"127.0.0.1:{lp}\"\n\n[[destination]]\nname = \"sink\"\naddress = \"127.0.0.1:{sp}\"\n\n[engine]\nworkers = {workers}\n\n{routes}"
        ),
    )?;
    let mut sink = Guard(
        Command::new(bin)
            .args([
                "sink",
                "--listen",
                &format!("127.0.0.1:{sp}"),
                "--idle",
                "1",
                "--duration",
                &(seconds + 20).to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting hepfwd sink")?,
    );
    // Wait for the sink's "listening" line.
    if let Some(err) = sink.0.stderr.take() {
        let mut line = String::new();
        BufReader::new(err)
            .read_line(&mut line)
            .context("waiting for the sink")?;
    }
    let fwd = Guard(
        Command::new(bin)
            .args(["run", "--mode", "userspace", "--log", "warn", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hepfwd run")?,
    );
    // The daemon binds at start; give it a moment, then check it is alive.
    std::thread::sleep(Duration::from_millis(500));
    let pid = fwd.0.id();
    let t0 = cpu_ticks(pid).context("hepfwd run exited at start")?;
    let gen_out = Command::new(bin)
        .args([
            "gen",
            "--to",
            &format!("127.0.0.1:{lp}"),
            "--rate",
            &rate.to_string(),
            "--count",
            &(rate * seconds).to_string(),
            "--duration",
            &(seconds + 5).to_string(),
        ])
        .output()
        .context("running hepfwd gen")?;
    let t1 = cpu_ticks(pid).unwrap_or(t0);
    let generated = json_line(&gen_out.stdout)?;
    let deadline = Instant::now() + Duration::from_secs(seconds + 25);
    let sink_out = loop {
        if let Some(_status) = sink.0.try_wait()? {
            let mut s = String::new();
            if let Some(mut o) = sink.0.stdout.take() {
                use std::io::Read as _;
                o.read_to_string(&mut s)?;
            }
            break s;
        }
        if Instant::now() > deadline {
            bail!("hepfwd sink did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(fwd);
    let sink_v = json_line(sink_out.as_bytes())?;
    let sent = generated["sent"].as_u64().unwrap_or(0);
    // Mirroring: a packet counts as forwarded when both copies arrived.
    let copies = if mirror { 2 } else { 1 };
    let received = sink_v["udp"].as_u64().unwrap_or(0) / copies;
    let ticks = t1.saturating_sub(t0) as f64;
    Ok(Step {
        rate,
        sent,
        received,
        rcvbuf_errors: sink_v["rcvbuf_errors"].as_u64().unwrap_or(0),
        cpu_us_per_pkt: ticks * 10_000.0 / received.max(1) as f64,
    })
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.all {
        return run_ignored_test(args, "contenders_bench");
    }
    if args.xdp {
        return run_ignored_test(args, "xdp_bench");
    }
    if !args.no_build {
        setup::run()?;
        build::build_workspace(true)?;
    }
    let bin: PathBuf = cmd::workspace_root().join("target/release/hepfwd");
    if !bin.exists() {
        bail!("{} is missing: run without --no-build", bin.display());
    }
    let dir = std::env::temp_dir().join(format!("hepfwd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "[bench] userspace{}, {} worker(s), {} s per step, loss limit {:.2}%",
        if args.mirror { " mirror x2" } else { "" },
        args.workers,
        args.seconds,
        args.max_loss * 100.0
    );
    println!(
        "[bench] {:>9} {:>10} {:>10} {:>8} {:>10} {:>12}",
        "offered", "sent", "received", "loss %", "rcvbuf_err", "cpu us/pkt"
    );
    let mut best: Option<Step> = None;
    for &rate in &args.rates {
        let s = step(&bin, &dir, args.workers, rate, args.seconds, args.mirror)?;
        let loss = 1.0 - s.received as f64 / s.sent.max(1) as f64;
        println!(
            "[bench] {:>9} {:>10} {:>10} {:>8.3} {:>10} {:>12.2}",
            s.rate,
            s.sent,
            s.received,
            loss * 100.0,
            s.rcvbuf_errors,
            s.cpu_us_per_pkt
        );
        if loss > args.max_loss || s.sent < rate * args.seconds * 95 / 100 {
            break;
        }
        best = Some(s);
    }
    let _ = std::fs::remove_dir_all(&dir);
    match best {
        Some(b) => println!(
            "[bench] result: {} packets/s forwarded with at most {:.1}% loss by {} worker(s); hepfwd CPU {:.2} us/packet",
            b.rate,
            args.max_loss * 100.0,
            args.workers,
            b.cpu_us_per_pkt
        ),
        None => println!(
            "[bench] result: even the lowest rate lost more than {:.1}%",
            args.max_loss * 100.0
        ),
    }
    Ok(())
}

/// `cargo xtask bench --xdp` and `--all`: the kernel and contenders benchmarks, ignored
/// tests of hep-user (`tests/xdp_bench.rs`, `tests/contenders_bench.rs`) that build their
/// own namespaces; each prints its table. `--quick` reaches the test as
/// `HEPFWD_BENCH_QUICK=1`.
fn run_ignored_test(args: &BenchArgs, test: &str) -> Result<()> {
    if !args.no_build {
        setup::run()?;
    }
    cmd::run(
        Command::new("cargo")
            .current_dir(cmd::workspace_root())
            .env("HEPFWD_BENCH_QUICK", if args.quick { "1" } else { "0" })
            .args([
                "test",
                "--release",
                "-p",
                "hep-user",
                "--test",
                test,
                "--",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]),
    )
}
