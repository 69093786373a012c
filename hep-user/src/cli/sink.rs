//! `hepfwd sink`: counts HEP arriving on UDP and TCP (a collector for benchmarks and manual
//! tests), and prints a JSON summary when traffic stops or time is up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::io::framer::StreamFramer;
use crate::io::udp_batch::{RecvBatch, bind_reuseport};

/// Arguments of `hepfwd sink`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to listen on (UDP and TCP).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Stop this many seconds after the last packet (once something arrived).
    #[arg(long, default_value_t = 2.0)]
    pub idle: f64,
    /// Stop after this many seconds in any case.
    #[arg(long, default_value_t = 120.0)]
    pub duration: f64,
    /// UDP receive buffer in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub recv_buffer: usize,
}

#[derive(Default)]
struct Counts {
    udp: AtomicU64,
    tcp: AtomicU64,
    invalid: AtomicU64,
    bytes: AtomicU64,
    last_ns: AtomicU64,
}

/// The `RcvbufErrors` counter of `/proc/net/snmp` (UDP receive buffer overflows).
pub fn rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let head: Vec<&str> = lines.next()?.split_whitespace().collect();
    let vals: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = head.iter().position(|h| *h == "RcvbufErrors")?;
    vals.get(i)?.parse().ok()
}

/// Runs `hepfwd sink`.
pub fn run(a: SinkArgs) -> Result<()> {
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let rcvbuf0 = rcvbuf_errors();
    let udp = bind_reuseport(a.listen, a.recv_buffer, Duration::from_millis(100))
        .with_context(|| format!("binding UDP {}", a.listen))?;
    let bound = udp.local_addr().context("reading the UDP address")?;
    let tcp = std::net::TcpListener::bind(bound).with_context(|| format!("binding TCP {bound}"))?;
    eprintln!("hepfwd sink: listening on udp and tcp {bound}");
    {
        let counts = counts.clone();
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut s) = stream else { continue };
                let counts = counts.clone();
                std::thread::spawn(move || {
                    use std::io::Read as _;
                    let mut fr = StreamFramer::new(65_535);
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        fr.push(&buf[..n]);
                        loop {
                            match fr.next_frame() {
                                Ok(Some(f)) => {
                                    counts.tcp.fetch_add(1, Relaxed);
                                    counts.bytes.fetch_add(f.len() as u64, Relaxed);
                                    counts
                                        .last_ns
                                        .store(start.elapsed().as_nanos() as u64, Relaxed);
                                }
                                Ok(None) => break,
                                Err(_) => {
                                    counts.invalid.fetch_add(1, Relaxed);
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
    }
    let mut rb = RecvBatch::new(64);
    let idle = Duration::from_secs_f64(a.idle);
    let total = Duration::from_secs_f64(a.duration);
    loop {
        if let Ok(n) = rb.recv(&udp) {
            for i in 0..n {
                if let Some((_, data, _)) = rb.get(i) {
                    if hep_common::HepPacket::parse(data).is_ok() {
                        counts.udp.fetch_add(1, Relaxed);
                    } else {
                        counts.invalid.fetch_add(1, Relaxed);
                    }
                    counts.bytes.fetch_add(data.len() as u64, Relaxed);
                }
            }
            if n > 0 {
                counts
                    .last_ns
                    .store(start.elapsed().as_nanos() as u64, Relaxed);
            }
            if n < rb.capacity() {
                // Let datagrams accumulate: fewer wake-ups, a cheaper collector.
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        let last = Duration::from_nanos(counts.last_ns.load(Relaxed));
        let got =
            counts.udp.load(Relaxed) + counts.tcp.load(Relaxed) + counts.invalid.load(Relaxed);
        if start.elapsed() >= total || (got > 0 && start.elapsed().saturating_sub(last) >= idle) {
            break;
        }
    }
    let rcvbuf = match (rcvbuf0, rcvbuf_errors()) {
        (Some(a), Some(b)) => serde_json::json!(b.saturating_sub(a)),
        _ => serde_json::Value::Null,
    };
    println!(
        "{}",
        serde_json::json!({
            "udp": counts.udp.load(Relaxed),
            "tcp": counts.tcp.load(Relaxed),
            "invalid": counts.invalid.load(Relaxed),
            "bytes": counts.bytes.load(Relaxed),
            "rcvbuf_errors": rcvbuf,
            "seconds": start.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
