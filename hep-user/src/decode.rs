//! HEP packet → JSON object, the output format of `hepfwd decode` (our tshark for HEP, and
//! the oracle of later tests).
//!
//! One object per packet with: `version`, `proto_type`, `proto_name`, `capture_id`,
//! `node_name`, `correlation_id` (the correlation key of `hep_common::correlation`: chunk
//! 0x0011, else the SIP Call-ID, of a compressed payload too), `correlation_source`
//! (`chunk`, `sip_call_id`, `sip_call_id_compressed`, or `flow` when the packet has no key),
//! `correlation_hash` (what routes hash and sample: the key's, else the flow key's), `auth_key`,
//! `src_ip`, `dst_ip`, `src_port`, `dst_port`, `ip_family`, `ip_proto`, `ts_sec`, `ts_usec`,
//! `payload` (UTF-8 text) or `payload_b64`, `chunks` (every chunk in order as
//! `{vendor, type, len}`; empty for HEPv1/v2), plus where the packet came from
//! (`transport`, `sender`, `receiver`, `frame`, `line`) when known. Byte-string fields that
//! are not UTF-8 are given as `<name>_b64`. Invalid input gives `{"error", "kind", "offset"}`.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hep_common::chunk::{self, proto};
use hep_common::correlation::KeySource;
use hep_common::legacy::HepLegacy;
use hep_common::v3::Hep3;
use hep_common::{HepError, HepPacket};
use serde_json::{Map, Value, json};

use crate::engine::facts::Facts;

/// Where a packet came from, for the JSON object.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// `udp` or `tcp`.
    pub transport: Option<&'static str>,
    /// Sender socket address.
    pub sender: Option<SocketAddr>,
    /// Receiver socket address.
    pub receiver: Option<SocketAddr>,
    /// Capture record number (pcap).
    pub frame: Option<u64>,
    /// Input line number (hex).
    pub line: Option<u64>,
}

impl Origin {
    fn add_to(&self, m: &mut Map<String, Value>) {
        if let Some(t) = self.transport {
            m.insert("transport".into(), t.into());
        }
        if let Some(s) = self.sender {
            m.insert("sender".into(), s.to_string().into());
        }
        if let Some(r) = self.receiver {
            m.insert("receiver".into(), r.to_string().into());
        }
        if let Some(f) = self.frame {
            m.insert("frame".into(), f.into());
        }
        if let Some(l) = self.line {
            m.insert("line".into(), l.into());
        }
    }
}

/// Decodes one HEP message (datagram or TCP frame) into its JSON object, or the error object.
///
/// `recv_time` (seconds, microseconds) stands in for the timestamp of HEPv1, which has none.
pub fn packet_json(data: &[u8], origin: &Origin, recv_time: (u32, u32)) -> Value {
    match HepPacket::parse(data) {
        Ok(HepPacket::V3(p)) => v3_json(&p, origin),
        Ok(HepPacket::Legacy(l)) => {
            // What the daemon does first with a HEPv1/v2 packet: convert it to HEPv3. One
            // that does not fit (too large once it has the v3 chunks) is an error there,
            // so it is here too.
            let mut v3 = vec![0u8; hep_common::chunk::MAX_PACKET_LEN];
            let converted = l
                .to_hep3(recv_time)
                .encode(&mut v3)
                .and_then(|n| Hep3::parse(&v3[..n]));
            match converted {
                Ok(converted) => legacy_json(&l, converted, origin),
                Err(e) => hep_error_json(&e, origin),
            }
        }
        Err(e) => hep_error_json(&e, origin),
    }
}

/// The error object for a codec error.
pub fn hep_error_json(e: &HepError, origin: &Origin) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), e.to_string().into());
    m.insert("kind".into(), e.kind().into());
    m.insert("offset".into(), e.offset().into());
    origin.add_to(&mut m);
    Value::Object(m)
}

/// The error object for any other failure (bad hex, truncated stream, ...).
pub fn error_json(message: &str, kind: &str, offset: usize, origin: &Origin) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), message.into());
    m.insert("kind".into(), kind.into());
    m.insert("offset".into(), offset.into());
    origin.add_to(&mut m);
    Value::Object(m)
}

fn bytes_field(m: &mut Map<String, Value>, name: &str, v: Option<&[u8]>) {
    match v {
        None => {
            m.insert(name.into(), Value::Null);
        }
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => {
                m.insert(name.into(), s.into());
            }
            Err(_) => {
                m.insert(name.into(), Value::Null);
                m.insert(format!("{name}_b64"), B64.encode(b).into());
            }
        },
    }
}

fn ip(v: Option<IpAddr>) -> Value {
    v.map_or(Value::Null, |a| a.to_string().into())
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

fn payload_field(m: &mut Map<String, Value>, payload: Option<&[u8]>, compressed: Option<&[u8]>) {
    match (payload, compressed) {
        (Some(p), _) => match std::str::from_utf8(p) {
            Ok(s) => {
                m.insert("payload".into(), s.into());
            }
            Err(_) => {
                m.insert("payload_b64".into(), B64.encode(p).into());
            }
        },
        (None, Some(c)) => {
            m.insert("payload_b64".into(), B64.encode(c).into());
            m.insert("payload_compressed".into(), true.into());
        }
        (None, None) => {
            m.insert("payload".into(), Value::Null);
        }
    }
}

/// `correlation_id`, `correlation_source` and `correlation_hash`: the engine's key (its
/// [`Facts`], so a compressed payload is inflated as the daemon does), else the flow key.
fn key_fields(m: &mut Map<String, Value>, p: Hep3<'_>, origin: &Origin) {
    let sender = origin
        .sender
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |s| s.ip());
    let facts = Facts::new(p, sender);
    let key = facts.key();
    bytes_field(m, "correlation_id", key);
    let source = match (p.correlation_key(), key) {
        (Some(k), _) => match k.source {
            KeySource::CorrelationChunk => "chunk",
            KeySource::SipCallId => "sip_call_id",
        },
        (None, Some(_)) => "sip_call_id_compressed",
        (None, None) => "flow",
    };
    m.insert("correlation_source".into(), source.into());
    m.insert(
        "correlation_hash".into(),
        format!("{:016x}", facts.key_hash()).into(),
    );
}

fn v3_json(p: &Hep3<'_>, origin: &Origin) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), 3.into());
    let pt = p.proto_type();
    m.insert("proto_type".into(), opt(pt));
    m.insert("proto_name".into(), opt(pt.and_then(proto::name)));
    m.insert("capture_id".into(), opt(p.capture_id()));
    bytes_field(&mut m, "node_name", p.node_name());
    key_fields(&mut m, *p, origin);
    bytes_field(&mut m, "auth_key", p.auth_key());
    m.insert("src_ip".into(), ip(p.src_ip()));
    m.insert("dst_ip".into(), ip(p.dst_ip()));
    m.insert("src_port".into(), opt(p.src_port()));
    m.insert("dst_port".into(), opt(p.dst_port()));
    m.insert("ip_family".into(), opt(p.ip_family()));
    m.insert("ip_proto".into(), opt(p.ip_proto()));
    m.insert("ts_sec".into(), opt(p.ts_sec()));
    m.insert("ts_usec".into(), opt(p.ts_usec()));
    m.insert("vlan_id".into(), opt(p.vlan_id()));
    payload_field(&mut m, p.payload(), p.compressed_payload());
    let chunks: Vec<Value> = p
        .chunks()
        .map(|c| {
            let mut o =
                json!({ "vendor": c.header.vendor, "type": c.header.kind, "len": c.header.len });
            if c.header.vendor == chunk::VENDOR_GENERIC
                && let Some((_, name, _)) = chunk::GENERIC_CHUNKS
                    .iter()
                    .find(|(k, _, _)| *k == c.header.kind)
            {
                o["name"] = (*name).into();
            }
            o
        })
        .collect();
    m.insert("chunks".into(), chunks.into());
    m.insert("len".into(), p.as_bytes().len().into());
    origin.add_to(&mut m);
    Value::Object(m)
}

/// The object of HEPv1/v2 packet `l`, whose HEPv3 conversion (what the daemon routes) is
/// `converted`.
fn legacy_json(l: &HepLegacy<'_>, converted: Hep3<'_>, origin: &Origin) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), l.version.into());
    let pt = converted.proto_type();
    m.insert("proto_type".into(), opt(pt));
    m.insert("proto_name".into(), opt(pt.and_then(proto::name)));
    m.insert("capture_id".into(), opt(l.time.map(|t| t.capture_id)));
    m.insert("node_name".into(), Value::Null);
    // The key as routes see it: of the HEPv3 packet the daemon converts this one into.
    key_fields(&mut m, converted, origin);
    m.insert("auth_key".into(), Value::Null);
    m.insert("src_ip".into(), l.src_ip.to_string().into());
    m.insert("dst_ip".into(), l.dst_ip.to_string().into());
    m.insert("src_port".into(), l.src_port.into());
    m.insert("dst_port".into(), l.dst_port.into());
    m.insert(
        "ip_family".into(),
        hep_common::v3::family_of(&l.src_ip).into(),
    );
    m.insert("ip_proto".into(), l.ip_proto.into());
    m.insert("ts_sec".into(), opt(l.time.map(|t| t.ts_sec)));
    m.insert("ts_usec".into(), opt(l.time.map(|t| t.ts_usec)));
    m.insert("vlan_id".into(), Value::Null);
    payload_field(&mut m, Some(l.payload), None);
    m.insert("chunks".into(), Value::Array(Vec::new()));
    m.insert("len".into(), l.encoded_len().into());
    origin.add_to(&mut m);
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

    use super::*;

    /// A HEPv2 packet (IPv4) with `payload`.
    fn hep_v2(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![2, 16, hep_common::legacy::AF_INET, 17];
        p.extend_from_slice(&5060u16.to_be_bytes());
        p.extend_from_slice(&5060u16.to_be_bytes());
        p.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        p.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(&[0xd1, 0x07, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    /// `decode` says what the daemon does with a HEPv2 packet too large to become HEPv3
    /// (its payload plus the v3 chunks exceed 65,535 bytes): the daemon counts it as a
    /// parse error of the conversion's kind, so decode prints that error, not a packet.
    #[test]
    fn an_oversized_hepv2_packet_is_the_daemons_error_in_decode_too() {
        let big = hep_v2(&vec![b'x'; 65_470]);
        let origin = Origin::default();
        let v = packet_json(&big, &origin, (1, 2));
        // What the engine does with it: the v3 encoding fails with this error.
        let legacy = hep_common::legacy::HepLegacy::parse(&big).unwrap();
        let mut buf = vec![0u8; hep_common::chunk::MAX_PACKET_LEN];
        let engine_error = legacy.to_hep3((1, 2)).encode(&mut buf).unwrap_err();
        let brief = |v: &Value| v.to_string().chars().take(300).collect::<String>();
        assert_eq!(v["kind"], engine_error.kind(), "{}", brief(&v));
        assert!(
            v.get("version").is_none(),
            "decoded as a packet: {}",
            brief(&v)
        );
        // One that fits decodes as before.
        let small = hep_v2(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: v2@x\r\n\r\n");
        let v = packet_json(&small, &origin, (1, 2));
        assert_eq!(
            (v["version"].as_u64(), v["correlation_id"].as_str()),
            (Some(2), Some("v2@x")),
            "{v}"
        );
    }
}
