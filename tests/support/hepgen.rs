//! HEP packets for tests: SIP with Call-IDs, RTCP and logs with a correlation chunk, IPv4 or
//! IPv6, capture ids, node names, auth keys, vendor chunks; HEPv1/v2 too. Plus a model of
//! the chunk list, to state what a rewrite must produce.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hep_common::legacy::{HepLegacy, LegacyTime};
use hep_common::v3::Hep3;
use hepfwd_harness::message::TestMessage;

/// Protocol type SIP.
pub const SIP: u8 = 1;
/// Protocol type RTCP.
pub const RTCP: u8 = 5;
/// Protocol type LOG.
pub const LOG: u8 = 100;

/// A packet to build.
#[derive(Debug, Clone)]
pub struct Pkt {
    /// 0x000b.
    pub proto: u8,
    /// 0x000c.
    pub capture_id: u32,
    /// Captured addresses and ports.
    pub src: (IpAddr, u16),
    /// Captured destination.
    pub dst: (IpAddr, u16),
    /// 0x0009 / 0x000a.
    pub ts: (u32, u32),
    /// 0x000e.
    pub auth_key: Option<Vec<u8>>,
    /// 0x0011.
    pub correlation: Option<Vec<u8>>,
    /// 0x0013.
    pub node_name: Option<Vec<u8>>,
    /// Extra chunks before the payload: (vendor, type, value).
    pub extra: Vec<(u16, u16, Vec<u8>)>,
    /// 0x000f.
    pub payload: Vec<u8>,
}

/// A SIP request carrying `call_id`, made unique by `seq`.
pub fn sip_payload(call_id: &str, seq: u32) -> Vec<u8> {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{seq}\r\nFrom: <sip:alice@example.com>;tag={seq}\r\nTo: <sip:bob@example.com>\r\nCall-ID: {call_id}\r\nCSeq: {seq} INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

impl Pkt {
    fn base(proto: u8, payload: Vec<u8>) -> Self {
        Pkt {
            proto,
            capture_id: 1,
            src: (IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), 5060),
            dst: (IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)), 5060),
            ts: (1_700_000_000, 123_456),
            auth_key: None,
            correlation: None,
            node_name: None,
            extra: Vec::new(),
            payload,
        }
    }

    /// SIP (type 1) whose Call-ID is `call_id`; `seq` makes the payload unique.
    pub fn sip(call_id: &str, seq: u32) -> Self {
        Self::base(SIP, sip_payload(call_id, seq))
    }

    /// RTCP (type 5) with correlation chunk 0x0011 = `corr`; a binary payload holding `seq`.
    pub fn rtcp(corr: &str, seq: u32) -> Self {
        let mut payload = vec![0x81, 0xc8, 0x00, 0x0c];
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]);
        let mut p = Self::base(RTCP, payload);
        p.src.1 = 10_001;
        p.dst.1 = 20_001;
        p.correlation = Some(corr.as_bytes().to_vec());
        p
    }

    /// A log (type 100) with correlation chunk `corr`.
    pub fn log(corr: &str, seq: u32) -> Self {
        let mut p = Self::base(LOG, format!("log line {seq} of {corr}").into_bytes());
        p.correlation = Some(corr.as_bytes().to_vec());
        p
    }

    /// Sets the protocol type.
    pub fn proto(mut self, t: u8) -> Self {
        self.proto = t;
        self
    }

    /// Sets the capture id.
    pub fn capture_id(mut self, id: u32) -> Self {
        self.capture_id = id;
        self
    }

    /// Sets the node name.
    pub fn node(mut self, n: &str) -> Self {
        self.node_name = Some(n.as_bytes().to_vec());
        self
    }

    /// Sets the auth key.
    pub fn auth(mut self, k: &str) -> Self {
        self.auth_key = Some(k.as_bytes().to_vec());
        self
    }

    /// Sets the correlation chunk.
    pub fn corr(mut self, c: &str) -> Self {
        self.correlation = Some(c.as_bytes().to_vec());
        self
    }

    /// Sets the captured source.
    pub fn src(mut self, ip: &str, port: u16) -> Self {
        self.src = (ip.parse().expect("an IP"), port);
        self
    }

    /// Sets the captured destination.
    pub fn dst(mut self, ip: &str, port: u16) -> Self {
        self.dst = (ip.parse().expect("an IP"), port);
        self
    }

    /// IPv6 captured addresses (2001:db8::1 → 2001:db8::2).
    pub fn v6(mut self) -> Self {
        self.src.0 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        self.dst.0 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        self
    }

    /// Sets the timestamp.
    pub fn ts(mut self, sec: u32, usec: u32) -> Self {
        self.ts = (sec, usec);
        self
    }

    /// Adds a chunk (vendor, type, value) before the payload.
    pub fn chunk(mut self, vendor: u16, kind: u16, value: &[u8]) -> Self {
        self.extra.push((vendor, kind, value.to_vec()));
        self
    }

    /// HEPv3 bytes (through the shared [`TestMessage`] builder).
    pub fn encode(&self) -> Vec<u8> {
        let mut message = TestMessage::with_payload(self.payload.clone())
            .source(self.src.0, self.src.1)
            .destination(self.dst.0, self.dst.1)
            .timestamp(self.ts.0, self.ts.1)
            .proto(self.proto)
            .capture_id(self.capture_id)
            .auth_key(self.auth_key.as_deref())
            .correlation(self.correlation.as_deref())
            .node_name(self.node_name.as_deref());
        for (vendor, kind, value) in &self.extra {
            message = message.chunk(*vendor, *kind, value);
        }
        message.encode()
    }

    /// HEPv1 (`version` 1) or HEPv2 (2) bytes of the same packet (no chunks beyond the
    /// addresses, ports, v2 time and 16-bit capture id, and the payload).
    pub fn encode_legacy(&self, version: u8) -> Vec<u8> {
        let l = HepLegacy {
            version,
            ip_proto: 17,
            src_ip: self.src.0,
            dst_ip: self.dst.0,
            src_port: self.src.1,
            dst_port: self.dst.1,
            time: (version == 2).then_some(LegacyTime {
                ts_sec: self.ts.0,
                ts_usec: self.ts.1,
                capture_id: self.capture_id as u16,
            }),
            payload: &self.payload,
        };
        let mut out = vec![0u8; 65_535];
        let n = l.encode(&mut out).expect("encode HEP legacy");
        out.truncate(n);
        out
    }
}

/// A chunk as (vendor, type, value).
pub type ChunkTuple = (u16, u16, Vec<u8>);

/// The chunks of a HEPv3 packet, in order (panics if it does not parse).
pub fn chunks_of(packet: &[u8]) -> Vec<ChunkTuple> {
    let p = Hep3::parse(packet).unwrap_or_else(|e| panic!("not HEPv3 ({e}): {packet:02x?}"));
    p.chunks()
        .map(|c| (c.header.vendor, c.header.kind, c.value.to_vec()))
        .collect()
}

/// HEPv3 bytes of a chunk list (written independently of the daemon's encoder).
pub fn packet_of(chunks: &[ChunkTuple]) -> Vec<u8> {
    let mut body = Vec::new();
    for (v, t, val) in chunks {
        body.extend_from_slice(&v.to_be_bytes());
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&((6 + val.len()) as u16).to_be_bytes());
        body.extend_from_slice(val);
    }
    let mut out = b"HEP3".to_vec();
    out.extend_from_slice(&((6 + body.len()) as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// One edit of the rewrite model.
#[derive(Debug, Clone)]
pub enum ModelEdit {
    /// Replace the first occurrence in place (dropping later ones), or insert before the
    /// payload when absent.
    Set(u16, u16, Vec<u8>),
    /// Remove every occurrence.
    Delete(u16, u16),
}

/// What the documented rewrite semantics make of `chunks` (edits applied in order).
pub fn model_rewrite(chunks: &[ChunkTuple], edits: &[ModelEdit]) -> Vec<ChunkTuple> {
    let mut out: Vec<ChunkTuple> = chunks.to_vec();
    for e in edits {
        match e {
            ModelEdit::Delete(v, t) => out.retain(|(cv, ct, _)| (cv, ct) != (v, t)),
            ModelEdit::Set(v, t, val) => {
                match out.iter().position(|(cv, ct, _)| (cv, ct) == (v, t)) {
                    Some(i) => {
                        out[i].2 = val.clone();
                        let mut k = 0;
                        out.retain(|(cv, ct, _)| {
                            k += 1;
                            k - 1 == i || (cv, ct) != (v, t)
                        });
                    }
                    None => {
                        let at = out
                            .iter()
                            .position(|(cv, ct, _)| *cv == 0 && (*ct == 0x000f || *ct == 0x0010))
                            .unwrap_or(out.len());
                        out.insert(at, (*v, *t, val.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Hex of a packet, for `hepfwd decode --hex`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `hepfwd decode --hex` on the packets; one JSON object per packet.
pub fn decode(packets: &[Vec<u8>]) -> Vec<serde_json::Value> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let bin = crate::hepfwd::hepfwd_bin().expect("the hepfwd binary");
    let mut child = Command::new(bin)
        .args(["decode", "--hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hepfwd decode");
    let mut input = String::new();
    for p in packets {
        input.push_str(&hex(p));
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("hepfwd decode output");
    writer.join().unwrap().expect("write to hepfwd decode");
    assert!(
        out.status.success(),
        "hepfwd decode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(v.len(), packets.len(), "one JSON object per packet");
    v
}

/// The `chunks` of a decoded packet as (vendor, type, len).
pub fn decoded_chunks(v: &serde_json::Value) -> Vec<(u64, u64, u64)> {
    v["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| {
            (
                c["vendor"].as_u64().unwrap(),
                c["type"].as_u64().unwrap(),
                c["len"].as_u64().unwrap(),
            )
        })
        .collect()
}
