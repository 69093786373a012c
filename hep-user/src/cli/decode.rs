//! `hepfwd decode`: HEP as JSON lines from a capture file, hex on stdin, or a live socket.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{ArgGroup, Args};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::decode::{Origin, error_json, packet_json};
use crate::io::capture::{CaptureFilter, CaptureItem, read_capture};
use crate::io::framer::{FrameCodecError, HepFrameCodec};

/// Arguments of `hepfwd decode`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["pcap", "hex", "listen"])))]
pub struct DecodeArgs {
    /// Read a pcap or pcapng file (UDP datagrams, reassembled IP fragments and TCP streams).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Read hex from stdin, one packet per line (spaces, colons and a 0x prefix are ignored).
    #[arg(long)]
    pub hex: bool,
    /// Listen for HEP on this address, UDP and TCP.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// With --pcap: take every UDP/TCP packet to or from this port as HEP (default: only
    /// payloads that look like HEP).
    #[arg(long)]
    pub port: Option<u16>,
    /// Stop after printing this many objects.
    #[arg(long)]
    pub count: Option<u64>,
}

fn now() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (d.as_secs() as u32, d.subsec_micros())
}

/// Prints objects as JSON lines and tells when `--count` is reached.
struct Printer {
    out: std::io::Stdout,
    printed: u64,
    limit: Option<u64>,
}

impl Printer {
    fn new(limit: Option<u64>) -> Self {
        Printer {
            out: std::io::stdout(),
            printed: 0,
            limit,
        }
    }

    /// Prints one object; returns false when no more should be printed.
    fn print(&mut self, v: &Value) -> Result<bool> {
        if self.done() {
            return Ok(false);
        }
        let mut out = self.out.lock();
        serde_json::to_writer(&mut out, v).context("writing JSON")?;
        out.write_all(b"\n").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
        self.printed += 1;
        Ok(!self.done())
    }

    fn done(&self) -> bool {
        self.limit.is_some_and(|l| self.printed >= l)
    }
}

/// Runs `hepfwd decode`.
pub fn run(args: DecodeArgs) -> Result<()> {
    let mut printer = Printer::new(args.count);
    if let Some(path) = &args.pcap {
        return decode_pcap(path, args.port, &mut printer);
    }
    if args.hex {
        return decode_hex(std::io::stdin().lock(), &mut printer);
    }
    if let Some(addr) = args.listen {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return rt.block_on(listen(addr, printer));
    }
    anyhow::bail!("one of --pcap, --hex or --listen is required")
}

fn decode_pcap(path: &PathBuf, port: Option<u16>, printer: &mut Printer) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut result = Ok(());
    read_capture(file, CaptureFilter { port }, |item| {
        if result.is_err() || printer.done() {
            return;
        }
        let v = match item {
            CaptureItem::Message {
                frame,
                transport,
                src,
                dst,
                ts,
                data,
            } => {
                let origin = Origin {
                    transport: Some(transport.as_str()),
                    sender: Some(src),
                    receiver: Some(dst),
                    frame: Some(frame),
                    line: None,
                };
                packet_json(&data, &origin, (ts.as_secs() as u32, ts.subsec_micros()))
            }
            CaptureItem::Error {
                frame,
                message,
                offset,
            } => {
                let origin = Origin {
                    frame: (frame > 0).then_some(frame),
                    ..Origin::default()
                };
                error_json(&message, "capture", offset, &origin)
            }
        };
        if let Err(e) = printer.print(&v) {
            result = Err(e);
        }
    })
    .with_context(|| format!("reading {}", path.display()))?;
    result
}

/// Parses one line of hex; `Err(offset)` names the first bad character.
fn parse_hex(line: &str) -> std::result::Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(line.len() / 2);
    let mut hi: Option<u8> = None;
    let trimmed = line.trim_start();
    let lead = line.len() - trimmed.len();
    let (body, skip) = match trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
    {
        Some(rest) => (rest, lead + 2),
        None => (trimmed, lead),
    };
    for (i, c) in body.char_indices() {
        if c.is_ascii_whitespace() || c == ':' {
            continue;
        }
        let Some(d) = c.to_digit(16) else {
            return Err(skip + i);
        };
        match hi.take() {
            None => hi = Some(d as u8),
            Some(h) => out.push((h << 4) | d as u8),
        }
    }
    if hi.is_some() {
        return Err(line.len());
    }
    Ok(out)
}

fn decode_hex(input: impl BufRead, printer: &mut Printer) -> Result<()> {
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let origin = Origin {
            line: Some(n as u64 + 1),
            ..Origin::default()
        };
        let v = match parse_hex(&line) {
            Ok(bytes) => packet_json(&bytes, &origin, now()),
            Err(off) => error_json("invalid hex", "hex", off, &origin),
        };
        if !printer.print(&v)? {
            break;
        }
    }
    Ok(())
}

async fn listen(addr: SocketAddr, mut printer: Printer) -> Result<()> {
    let udp = UdpSocket::bind(addr)
        .await
        .with_context(|| format!("binding UDP {addr}"))?;
    let udp_addr = udp.local_addr().context("reading the UDP address")?;
    // With port 0, listen on TCP on the port UDP got.
    let tcp = TcpListener::bind(udp_addr)
        .await
        .with_context(|| format!("binding TCP {udp_addr}"))?;
    let local = tcp.local_addr().context("reading the TCP address")?;
    eprintln!("hepfwd decode: listening on udp {udp_addr} and tcp {local}");

    let (tx, mut rx) = mpsc::channel::<Value>(4096);
    let utx = tx.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = match udp.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "UDP receive failed");
                    continue;
                }
            };
            let origin = Origin {
                transport: Some("udp"),
                sender: Some(from),
                receiver: Some(udp_addr),
                ..Origin::default()
            };
            if utx
                .send(packet_json(&buf[..n], &origin, now()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let (stream, from) = match tcp.accept().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    continue;
                }
            };
            let ttx = tx.clone();
            tokio::spawn(async move {
                let mut frames = FramedRead::new(
                    stream,
                    HepFrameCodec::new(hep_common::framing::MAX_FRAME_LEN),
                );
                let mut offset = 0usize;
                while let Some(item) = frames.next().await {
                    let origin = Origin {
                        transport: Some("tcp"),
                        sender: Some(from),
                        receiver: Some(local),
                        ..Origin::default()
                    };
                    let v = match item {
                        Ok(frame) => {
                            offset += frame.len();
                            packet_json(&frame, &origin, now())
                        }
                        Err(FrameCodecError::Frame(e)) => {
                            let _ = ttx
                                .send(error_json(&e.to_string(), "framing", offset, &origin))
                                .await;
                            return;
                        }
                        Err(FrameCodecError::Io(e)) => {
                            tracing::debug!(error = %e, %from, "TCP connection failed");
                            return;
                        }
                    };
                    if ttx.send(v).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    while let Some(v) = rx.recv().await {
        if !printer.print(&v)? {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_hex;

    #[test]
    fn hex_lines() {
        assert_eq!(parse_hex("48455033"), Ok(b"HEP3".to_vec()));
        assert_eq!(parse_hex(" 0x48 45:50 33 "), Ok(b"HEP3".to_vec()));
        assert_eq!(parse_hex("4845zz"), Err(4));
        assert_eq!(parse_hex("484"), Err(3));
    }
}
