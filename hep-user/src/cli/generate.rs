//! `hepfwd gen`: a bounded HEP load generator (for benchmarks and manual tests).
//!
//! Sends a realistic mix (by default 60% SIP INVITE with SDP, 30% RTCP JSON reports with a
//! correlation id, 10% log lines) over UDP (batched with `sendmmsg`) or TCP, at a target
//! rate or as fast as possible, for a bounded count and time, then prints a JSON summary.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hep_common::chunk::proto;
use hep_common::v3::{Hep3Message, Payload};

use crate::io::udp_batch::{connect_sender, send_batch};

/// Arguments of `hepfwd gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Where to send.
    #[arg(long)]
    pub to: SocketAddr,
    /// Transport.
    #[arg(long, value_enum, default_value_t = GenTransport::Udp)]
    pub transport: GenTransport,
    /// Packets per second (0: as fast as possible).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Stop after this many packets.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Stop after this many seconds, whatever was sent.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Distinct calls in the mix (each with its own Call-ID).
    #[arg(long, default_value_t = 1000)]
    pub calls: u32,
    /// Packets per system call (UDP).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

/// Transport of `hepfwd gen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenTransport {
    /// UDP datagrams.
    Udp,
    /// One TCP connection.
    Tcp,
}

/// Packet `i` of the benchmark mix: `i % 10` in 0..=5 a SIP INVITE with SDP (no
/// correlation chunk: the Call-ID is in the payload), 6..=8 RTCP JSON, 9 a log line (both
/// with a 0x0011 correlation chunk). Public for the benchmarks that test-run the XDP
/// program on the same packets (`hep-user/tests/contenders_bench.rs`).
pub fn build(i: u32) -> Result<Vec<u8>> {
    let call_id = format!("{i:08x}-bench@carrier.example");
    let (proto_type, payload, corr): (u8, Vec<u8>, Option<Vec<u8>>) = match i % 10 {
        0..=5 => {
            let sdp = "v=0\r\no=- 3890 3890 IN IP4 198.18.0.10\r\ns=-\r\nc=IN IP4 198.18.0.10\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
            let sip = format!(
                "INVITE sip:+15551230000@198.18.0.20:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.10:5060;branch=z9hG4bK{i:08x}\r\nMax-Forwards: 70\r\nFrom: <sip:+15559870000@198.18.0.10>;tag={i:x}\r\nTo: <sip:+15551230000@198.18.0.20>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:+15559870000@198.18.0.10:5060>\r\nUser-Agent: hepfwd-gen\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            );
            (proto::SIP, sip.into_bytes(), None)
        }
        6..=8 => {
            let json = format!(
                "{{\"type\":200,\"ssrc\":{i},\"report_count\":1,\"report_blocks\":[{{\"source_ssrc\":{},\"fraction_lost\":0,\"packets_lost\":0,\"highest_seq_no\":{},\"ia_jitter\":12,\"lsr\":0,\"dlsr\":0}}],\"sender_information\":{{\"ntp_timestamp_sec\":3890,\"ntp_timestamp_usec\":12,\"rtp_timestamp\":160,\"packets\":500,\"octets\":80000}}}}",
                i + 1,
                i * 3
            );
            (
                proto::RTCP,
                json.into_bytes(),
                Some(call_id.clone().into_bytes()),
            )
        }
        _ => (
            proto::LOG,
            format!("call {call_id} answered after 2 rings on trunk 7").into_bytes(),
            Some(call_id.clone().into_bytes()),
        ),
    };
    let m = Hep3Message {
        ip_proto: 17,
        src_ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20)),
        src_port: 5060,
        dst_port: 5060,
        ts_sec: 1_700_000_000 + i,
        ts_usec: i % 1_000_000,
        proto_type,
        capture_id: 2001,
        auth_key: None,
        correlation_id: corr.as_deref(),
        vlan_id: None,
        node_name: Some(b"gen"),
        extra: &[],
        payload: Payload::Plain(&payload),
    };
    let mut out = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut out).context("encoding a generated packet")?;
    out.truncate(n);
    Ok(out)
}

/// Runs `hepfwd gen`.
pub fn run(a: GenArgs) -> Result<()> {
    if a.batch == 0 || a.calls == 0 {
        bail!("--batch and --calls must be at least 1");
    }
    let pool: Vec<Vec<u8>> = (0..a.calls.max(10)).map(build).collect::<Result<_>>()?;
    let deadline = Duration::from_secs_f64(a.duration.max(0.0));
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut next = 0usize;
    let mut tcp = match a.transport {
        GenTransport::Tcp => Some(
            std::net::TcpStream::connect_timeout(&a.to, Duration::from_secs(2))
                .with_context(|| format!("connecting to {}", a.to))?,
        ),
        GenTransport::Udp => None,
    };
    let udp = match a.transport {
        GenTransport::Udp => Some(
            connect_sender(a.to, Duration::from_secs(1))
                .with_context(|| format!("opening a UDP socket to {}", a.to))?,
        ),
        GenTransport::Tcp => None,
    };
    while sent < a.count && start.elapsed() < deadline {
        let n = (a.batch as u64).min(a.count - sent) as usize;
        let batch: Vec<&[u8]> = (0..n)
            .map(|k| pool[(next + k) % pool.len()].as_slice())
            .collect();
        next = (next + n) % pool.len();
        if let Some(u) = &udp {
            let (k, err) = send_batch(u, &batch);
            sent += k as u64;
            if err.is_some() {
                errors += (n - k) as u64;
                sent += 0;
            }
        } else if let Some(t) = &mut tcp {
            let buf: Vec<u8> = batch.concat();
            t.write_all(&buf).context("writing to the TCP collector")?;
            sent += n as u64;
        }
        if a.rate > 0 {
            // Pace: the batch that ends at `sent` is due at sent / rate seconds.
            let due = Duration::from_secs_f64(sent as f64 / a.rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "sent": sent, "send_errors": errors, "seconds": secs, "pps": (sent as f64 / secs.max(1e-9)).round() })
    );
    Ok(())
}
