//! `hepfwd run`: the daemon.
//!
//! The forwarding engine is not built yet: for now the daemon listens where the config
//! says, decodes and counts what arrives, logs it, and says plainly that it forwards
//! nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use futures_util::StreamExt as _;
use hep_common::{HepPacket, HepVersion};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::codec::FramedRead;

use crate::io::framer::HepFrameCodec;

/// Arguments of `hepfwd run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Data path: XDP in the kernel with userspace fallback (auto), XDP required, or
    /// userspace only.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
}

/// The data path to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// XDP where possible, else userspace.
    Auto,
    /// XDP or fail.
    Xdp,
    /// Userspace only.
    Userspace,
}

/// A listener of the configuration.
#[derive(Debug, Clone)]
struct Listener {
    name: String,
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
}

fn listeners(path: &PathBuf) -> Result<(Vec<Listener>, usize, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut out = Vec::new();
    let list = doc
        .get("listener")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    for (i, l) in list.iter().enumerate() {
        let name = l
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("listener")
            .to_string();
        let addr = |key: &str| -> Result<Option<SocketAddr>> {
            match l.get(key) {
                None => Ok(None),
                Some(v) => {
                    let s = v.as_str().with_context(|| {
                        format!("{}: listener[{i}].{key} must be a string", path.display())
                    })?;
                    s.parse().map(Some).with_context(|| {
                        format!(
                            "{}: listener[{i}].{key} = {s:?} is not an IP:port",
                            path.display()
                        )
                    })
                }
            }
        };
        out.push(Listener {
            name,
            udp: addr("udp")?,
            tcp: addr("tcp")?,
        });
    }
    if out.is_empty() {
        bail!("{}: no [[listener]] configured", path.display());
    }
    let count = |k: &str| doc.get(k).and_then(|v| v.as_array()).map_or(0, Vec::len);
    Ok((out, count("destination"), count("route")))
}

/// Counts of what arrived, by a short label.
type Tally = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(tally: &Tally, data: &[u8]) {
    let label = match HepPacket::parse(data) {
        Ok(p) => {
            let v = match p.version() {
                HepVersion::V1 => "v1",
                HepVersion::V2 => "v2",
                HepVersion::V3 => "v3",
            };
            let pt = match p {
                HepPacket::V3(h) => h.proto_type(),
                HepPacket::Legacy(_) => Some(hep_common::chunk::proto::SIP),
            };
            let name = pt.map_or_else(
                || "none".to_string(),
                |t| hep_common::chunk::proto::name(t).map_or_else(|| t.to_string(), str::to_string),
            );
            format!("{v}/{name}")
        }
        Err(e) => format!("invalid/{}", e.kind()),
    };
    tracing::debug!(%label, len = data.len(), "HEP packet");
    if let Ok(mut t) = tally.lock() {
        *t.entry(label).or_default() += 1;
    }
}

/// Runs `hepfwd run`.
pub fn run(args: RunArgs) -> Result<()> {
    let (listeners, destinations, routes) = listeners(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, listeners, destinations, routes))
}

async fn serve(
    args: RunArgs,
    listeners: Vec<Listener>,
    destinations: usize,
    routes: usize,
) -> Result<()> {
    tracing::warn!(
        destinations,
        routes,
        "forwarding is not built yet: this build only receives, decodes, counts and logs HEP; \
         nothing is sent to any destination"
    );
    if args.mode != Mode::Userspace {
        tracing::info!(mode = ?args.mode, "the XDP data plane is not built yet; running in userspace");
    }
    let tally: Tally = Arc::default();
    for l in &listeners {
        if let Some(addr) = l.udp {
            let sock = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("listener {}: binding UDP {addr}", l.name))?;
            tracing::info!(listener = %l.name, %addr, "listening on UDP");
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    match sock.recv_from(&mut buf).await {
                        Ok((n, _)) => count(&tally, &buf[..n]),
                        Err(e) => tracing::warn!(error = %e, "UDP receive failed"),
                    }
                }
            });
        }
        if let Some(addr) = l.tcp {
            let lis = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listener {}: binding TCP {addr}", l.name))?;
            tracing::info!(listener = %l.name, %addr, "listening on TCP");
            let tally = tally.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, from)) = lis.accept().await else {
                        continue;
                    };
                    let tally = tally.clone();
                    tokio::spawn(async move {
                        let mut frames = FramedRead::new(
                            stream,
                            HepFrameCodec::new(hep_common::framing::MAX_FRAME_LEN),
                        );
                        while let Some(item) = frames.next().await {
                            match item {
                                Ok(f) => count(&tally, &f),
                                Err(e) => {
                                    tracing::warn!(%from, error = %e, "closing TCP connection");
                                    if let Ok(mut t) = tally.lock() {
                                        *t.entry("invalid/tcp_framing".into()).or_default() += 1;
                                    }
                                    return;
                                }
                            }
                        }
                    });
                }
            });
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tick.tick() => log_tally(&tally),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    log_tally(&tally);
    tracing::info!("stopping");
    Ok(())
}

fn log_tally(tally: &Tally) {
    if let Ok(t) = tally.lock() {
        let summary: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::info!(received = %summary.join(" "), "HEP received so far");
    }
}
