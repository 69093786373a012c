//! Property tests of the HEP codec: HEPv3 encode/parse round trips, HEPv1/v2 and their
//! conversion, rewrite semantics, robustness on arbitrary and mutated input, TCP framing,
//! and the correlation key and its hash.
//!
//! Expected values are computed from the definitions in the module docs of `hep-common`
//! (written again here, independently of the code under test), never by calling the
//! function under test a second time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hep_common::chunk::{ChunkId, MAX_CHUNKS, MAX_PACKET_LEN, fixed_width, proto};
use hep_common::correlation::{
    CALLID_SCAN_LIMIT, CallIdScanner, KEY_HASH_LIMIT, KeyHasher, KeySource, find_call_id, key_hash,
};
use hep_common::framing::{FrameError, MAX_FRAME_LEN, frame_len};
use hep_common::legacy::{HepLegacy, LegacyTime};
use hep_common::rewrite::{ChunkEdit, rewrite};
use hep_common::v3::{ChunkWriter, Payload, RawChunk};
use hep_common::version::{HepPacket, HepVersion, detect};
use hep_common::walker::validate;
use hep_common::{Hep3, Hep3Message, HepError};
use proptest::prelude::*;
use proptest::sample::select;

/// A chunk as (id, value), the unit of every model below.
type ModelChunk = (ChunkId, Vec<u8>);

const fn g(kind: u16) -> ChunkId {
    ChunkId::generic(kind)
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn ip_pair() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(s, d)| (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))),
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(s, d)| (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)))),
    ]
}

fn proto_type() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => Just(proto::SIP),
        1 => Just(proto::RTCP),
        1 => Just(proto::LOG),
        2 => any::<u8>(),
    ]
}

/// Any chunk id: known and unknown generic types, OpenSIPS' 0x0065, vendor chunks (also
/// vendor chunks with the numbers of known generic types).
fn chunk_id() -> impl Strategy<Value = ChunkId> {
    prop_oneof![
        3 => (1u16..=0x29).prop_map(g),
        2 => any::<u16>().prop_map(g),
        1 => Just(g(0x0065)),
        2 => (1u16..=9, any::<u16>()).prop_map(|(vendor, kind)| ChunkId { vendor, kind }),
        1 => (any::<u16>(), 1u16..=0x29).prop_map(|(vendor, kind)| ChunkId { vendor, kind }),
    ]
}

/// A value for `id` that respects [`fixed_width`].
fn value_for(id: ChunkId, free: Vec<u8>, fixed: [u8; 16]) -> Vec<u8> {
    match fixed_width(id.vendor, id.kind) {
        Some(w) => fixed[..w].to_vec(),
        None => free,
    }
}

/// A chunk whose value respects [`fixed_width`] (so the encoder must accept it).
fn raw_chunk(max: usize) -> impl Strategy<Value = ModelChunk> {
    (chunk_id(), bytes(max), any::<[u8; 16]>()).prop_map(|(id, v, f)| (id, value_for(id, v, f)))
}

/// The typed fields of a [`Hep3Message`], owned.
#[derive(Debug, Clone)]
struct MsgSpec {
    ip_proto: u8,
    ips: (IpAddr, IpAddr),
    ports: (u16, u16),
    ts: (u32, u32),
    proto_type: u8,
    capture_id: u32,
    auth_key: Option<Vec<u8>>,
    correlation_id: Option<Vec<u8>>,
    vlan_id: Option<u16>,
    node_name: Option<Vec<u8>>,
    extra: Vec<ModelChunk>,
    compressed: bool,
    payload: Vec<u8>,
}

impl MsgSpec {
    fn encode(&self) -> Result<Vec<u8>, HepError> {
        let extra: Vec<RawChunk<'_>> = self
            .extra
            .iter()
            .map(|(id, value)| RawChunk { id: *id, value })
            .collect();
        let msg = self.message(&extra);
        let mut out = vec![0u8; msg.encoded_len()];
        let n = msg.encode(&mut out)?;
        out.truncate(n);
        Ok(out)
    }

    fn message<'a>(&'a self, extra: &'a [RawChunk<'a>]) -> Hep3Message<'a> {
        Hep3Message {
            ip_proto: self.ip_proto,
            src_ip: self.ips.0,
            dst_ip: self.ips.1,
            src_port: self.ports.0,
            dst_port: self.ports.1,
            ts_sec: self.ts.0,
            ts_usec: self.ts.1,
            proto_type: self.proto_type,
            capture_id: self.capture_id,
            auth_key: self.auth_key.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            vlan_id: self.vlan_id,
            node_name: self.node_name.as_deref(),
            extra,
            payload: if self.compressed {
                Payload::Compressed(&self.payload)
            } else {
                Payload::Plain(&self.payload)
            },
        }
    }

    /// The chunks the encoder must write, in order (`Hep3Message` docs, HEP.md §8.3).
    fn model(&self) -> Vec<ModelChunk> {
        let mut m: Vec<ModelChunk> = Vec::new();
        match self.ips {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                m.push((g(0x0001), vec![2]));
                m.push((g(0x0002), vec![self.ip_proto]));
                m.push((g(0x0003), s.octets().to_vec()));
                m.push((g(0x0004), d.octets().to_vec()));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                m.push((g(0x0001), vec![10]));
                m.push((g(0x0002), vec![self.ip_proto]));
                m.push((g(0x0005), s.octets().to_vec()));
                m.push((g(0x0006), d.octets().to_vec()));
            }
            _ => unreachable!("the generators pair addresses of one family"),
        }
        m.push((g(0x0007), self.ports.0.to_be_bytes().to_vec()));
        m.push((g(0x0008), self.ports.1.to_be_bytes().to_vec()));
        m.push((g(0x0009), self.ts.0.to_be_bytes().to_vec()));
        m.push((g(0x000a), self.ts.1.to_be_bytes().to_vec()));
        m.push((g(0x000b), vec![self.proto_type]));
        m.push((g(0x000c), self.capture_id.to_be_bytes().to_vec()));
        if let Some(v) = &self.auth_key {
            m.push((g(0x000e), v.clone()));
        }
        if let Some(v) = &self.correlation_id {
            m.push((g(0x0011), v.clone()));
        }
        if let Some(v) = self.vlan_id {
            m.push((g(0x0012), v.to_be_bytes().to_vec()));
        }
        if let Some(v) = &self.node_name {
            m.push((g(0x0013), v.clone()));
        }
        m.extend(self.extra.iter().cloned());
        let payload_kind = if self.compressed { 0x0010 } else { 0x000f };
        m.push((g(payload_kind), self.payload.clone()));
        m
    }
}

prop_compose! {
    fn msg_spec_with(extra: BoxedStrategy<Vec<ModelChunk>>, payload: BoxedStrategy<Vec<u8>>)(
        ip_proto in prop_oneof![Just(17u8), Just(6), Just(132), Just(22), any::<u8>()],
        ips in ip_pair(),
        ports in any::<(u16, u16)>(),
        ts in any::<(u32, u32)>(),
        proto_type in proto_type(),
        capture_id in any::<u32>(),
        auth_key in prop::option::of(bytes(24)),
        correlation_id in prop::option::of(bytes(48)),
        vlan_id in prop::option::of(any::<u16>()),
        node_name in prop::option::of(bytes(24)),
        extra in extra,
        compressed in prop::bool::weighted(0.2),
        payload in payload,
    ) -> MsgSpec {
        MsgSpec {
            ip_proto, ips, ports, ts, proto_type, capture_id, auth_key, correlation_id,
            vlan_id, node_name, extra, compressed, payload,
        }
    }
}

fn payload_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => sip_case().prop_map(|c| c.payload),
        1 => bytes(300),
    ]
    .boxed()
}

/// A message with up to 8 extra chunks (well below the chunk and size limits).
fn msg_spec() -> impl Strategy<Value = MsgSpec> {
    msg_spec_with(
        prop::collection::vec(raw_chunk(40), 0..=8).boxed(),
        payload_bytes(),
    )
}

/// Builds a packet from chunks with [`ChunkWriter`].
fn build(chunks: &[ModelChunk]) -> Vec<u8> {
    let mut out = vec![0u8; MAX_PACKET_LEN];
    let mut w = ChunkWriter::new(&mut out).expect("65535-byte buffer");
    for (id, v) in chunks {
        w.push(*id, v)
            .expect("the generators stay inside the limits");
    }
    let n = w.finish().expect("finish");
    out.truncate(n);
    out
}

fn encoded_size(chunks: &[ModelChunk]) -> usize {
    6 + chunks.iter().map(|(_, v)| 6 + v.len()).sum::<usize>()
}

// ---------------------------------------------------------------------------------------
// HEPv3 model checks
// ---------------------------------------------------------------------------------------

/// First occurrence of a generic chunk in a model.
fn first(model: &[ModelChunk], kind: u16) -> Option<&[u8]> {
    model
        .iter()
        .find(|(id, _)| *id == g(kind))
        .map(|(_, v)| v.as_slice())
}

fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    v.try_into().expect("fixed-width value")
}

/// Every accessor of [`Hep3`] against the first occurrence in the model.
fn check_accessors(p: &Hep3<'_>, model: &[ModelChunk]) -> Result<(), TestCaseError> {
    let f = |k| first(model, k);
    let u8_ = |k| f(k).map(|v: &[u8]| v[0]);
    let u16_ = |k| f(k).map(|v| u16::from_be_bytes(arr(v)));
    let u32_ = |k| f(k).map(|v| u32::from_be_bytes(arr(v)));
    let u64_ = |k| f(k).map(|v| u64::from_be_bytes(arr(v)));
    let v4 = |k| f(k).map(|v| Ipv4Addr::from(arr::<4>(v)));
    let v6 = |k| f(k).map(|v| Ipv6Addr::from(arr::<16>(v)));
    prop_assert_eq!(p.ip_family(), u8_(0x0001));
    prop_assert_eq!(p.ip_proto(), u8_(0x0002));
    prop_assert_eq!(p.src_ipv4(), v4(0x0003));
    prop_assert_eq!(p.dst_ipv4(), v4(0x0004));
    prop_assert_eq!(p.src_ipv6(), v6(0x0005));
    prop_assert_eq!(p.dst_ipv6(), v6(0x0006));
    prop_assert_eq!(
        p.src_ip(),
        v4(0x0003).map(IpAddr::V4).or(v6(0x0005).map(IpAddr::V6))
    );
    prop_assert_eq!(
        p.dst_ip(),
        v4(0x0004).map(IpAddr::V4).or(v6(0x0006).map(IpAddr::V6))
    );
    prop_assert_eq!(p.src_port(), u16_(0x0007));
    prop_assert_eq!(p.dst_port(), u16_(0x0008));
    prop_assert_eq!(p.ts_sec(), u32_(0x0009));
    prop_assert_eq!(p.ts_usec(), u32_(0x000a));
    prop_assert_eq!(p.proto_type(), u8_(0x000b));
    prop_assert_eq!(p.capture_id(), u32_(0x000c));
    prop_assert_eq!(p.keepalive(), u16_(0x000d));
    prop_assert_eq!(p.auth_key(), f(0x000e));
    prop_assert_eq!(p.payload(), f(0x000f));
    prop_assert_eq!(p.compressed_payload(), f(0x0010));
    prop_assert_eq!(p.correlation_id(), f(0x0011));
    prop_assert_eq!(p.vlan_id(), u16_(0x0012));
    prop_assert_eq!(p.node_name(), f(0x0013));
    prop_assert_eq!(p.src_mac(), u64_(0x0014));
    prop_assert_eq!(p.dst_mac(), u64_(0x0015));
    prop_assert_eq!(p.eth_type(), u16_(0x0016));
    prop_assert_eq!(p.tcp_flags(), u8_(0x0017));
    prop_assert_eq!(p.ip_tos(), u8_(0x0018));
    prop_assert_eq!(p.mos(), u16_(0x0020));
    prop_assert_eq!(p.r_factor(), u16_(0x0021));
    prop_assert_eq!(p.geo_location(), f(0x0022));
    prop_assert_eq!(p.jitter(), u32_(0x0023));
    prop_assert_eq!(p.transaction_type(), f(0x0024));
    prop_assert_eq!(p.payload_json_keys(), f(0x0025));
    prop_assert_eq!(p.tag_values(), f(0x0026));
    prop_assert_eq!(p.tag_type(), u16_(0x0027));
    prop_assert_eq!(p.event_type(), u16_(0x0028));
    prop_assert_eq!(p.group_id(), f(0x0029));
    for (id, _) in model {
        let want = model
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, v)| v.as_slice());
        prop_assert_eq!(p.get(*id), want, "get({:?})", id);
    }
    prop_assert_eq!(
        p.get(ChunkId {
            vendor: 0xfffe,
            kind: 0xfffe
        })
        .is_some(),
        model.iter().any(|(i, _)| *i
            == ChunkId {
                vendor: 0xfffe,
                kind: 0xfffe
            })
    );
    Ok(())
}

/// `chunks()` lists exactly the model, contiguously, covering the packet.
fn check_chunks(p: &Hep3<'_>, bytes: &[u8], model: &[ModelChunk]) -> Result<(), TestCaseError> {
    let got: Vec<ModelChunk> = p.chunks().map(|c| (c.id(), c.value.to_vec())).collect();
    prop_assert_eq!(&got, model);
    prop_assert_eq!(p.chunk_count(), model.len());
    let mut off = 6;
    for c in p.chunks() {
        prop_assert_eq!(c.header.offset, off);
        prop_assert_eq!(c.header.len as usize, 6 + c.value.len());
        prop_assert_eq!(&bytes[c.header.value_offset()..c.header.end()], c.value);
        off = c.header.end();
    }
    prop_assert_eq!(off, bytes.len());
    Ok(())
}

/// The correlation key by its definition (`correlation` module docs), from the model.
fn expected_key(model: &[ModelChunk]) -> Option<(KeySource, Vec<u8>)> {
    if let Some(c) = first(model, 0x0011)
        && !c.is_empty()
    {
        return Some((KeySource::CorrelationChunk, c.to_vec()));
    }
    if first(model, 0x000b) != Some(&[proto::SIP][..]) {
        return None;
    }
    let payload = first(model, 0x000f)?;
    let (s, e) = ref_call_id(payload)?;
    Some((KeySource::SipCallId, payload[s..e].to_vec()))
}

// ---------------------------------------------------------------------------------------
// Reference Call-ID finder, written from the definition in the `correlation` module docs
// ---------------------------------------------------------------------------------------

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `[start, end)` of the Call-ID value in `payload`, straight from the definition.
fn ref_call_id(payload: &[u8]) -> Option<(usize, usize)> {
    let w = &payload[..payload.len().min(CALLID_SCAN_LIMIT)];
    let mut start = 0;
    let mut first_line = true;
    while start < w.len() {
        let lf = w[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| start + p);
        let raw_end = lf.unwrap_or(w.len());
        let next = lf.map_or(w.len(), |p| p + 1);
        // The line without its LF, and without a CR just before that LF.
        let mut line_end = raw_end;
        if lf.is_some() && line_end > start && w[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line = &w[start..line_end];
        if first_line {
            first_line = false;
            start = next;
            continue;
        }
        if line.is_empty() {
            // An empty line ends the header section (a line always ends at an LF here,
            // since `start < w.len()`).
            return None;
        }
        let name_len = if line.len() >= 7 && line[..7].eq_ignore_ascii_case(b"call-id") {
            Some(7)
        } else if line[0] == b'i' || line[0] == b'I' {
            Some(1)
        } else {
            None
        };
        if let Some(n) = name_len {
            let mut i = start + n;
            while i < raw_end && is_wsp(w[i]) {
                i += 1;
            }
            if i < raw_end && w[i] == b':' {
                // The value: after the colon up to the first CR or LF or the window's end.
                let v0 = i + 1;
                let v1 = w[v0..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .map_or(w.len(), |p| v0 + p);
                let mut s = v0;
                let mut e = v1;
                while s < e && is_wsp(w[s]) {
                    s += 1;
                }
                while e > s && is_wsp(w[e - 1]) {
                    e -= 1;
                }
                if s < e {
                    return Some((s, e));
                }
            }
        }
        start = next;
    }
    None
}

/// A generated SIP message with the Call-ID it carries.
#[derive(Debug, Clone)]
struct SipCase {
    payload: Vec<u8>,
    call_id: Vec<u8>,
}

fn random_case(word: &str, upper: &[bool]) -> String {
    word.chars()
        .zip(upper.iter().chain(std::iter::repeat(&false)))
        .map(|(c, u)| {
            if *u {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

const FILLER_NAMES: &[&str] = &[
    "Via",
    "From",
    "To",
    "CSeq",
    "Contact",
    "Call-Info",
    "Identity",
    "If-Match",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "User-Agent",
    "Allow",
    "Supported",
    "X-Call-ID",
    "Record-Route",
    "f",
    "t",
    "v",
    "m",
];

fn filler_header() -> impl Strategy<Value = String> {
    (select(FILLER_NAMES), "[ -~]{0,60}").prop_map(|(n, v)| format!("{n}: {v}"))
}

prop_compose! {
    fn sip_case()(
        first_line in select(&[
            "INVITE sip:bob@biloxi.example.com SIP/2.0",
            "SIP/2.0 200 OK",
            "BYE sip:alice@192.0.2.4 SIP/2.0",
            "Call-ID: the-first-line-is-skipped",
            "i: also-skipped",
        ][..]),
        before in prop::collection::vec(filler_header(), 0..6),
        after in prop::collection::vec(filler_header(), 0..6),
        compact in any::<bool>(),
        upper in prop::collection::vec(any::<bool>(), 7),
        ws_name in "[ \t]{0,3}",
        ws_lead in "[ \t]{0,3}",
        ws_trail in "[ \t]{0,3}",
        value in "[A-Za-z0-9@.!%*_+`'~-]([A-Za-z0-9@.!%*_+`'~ \t-]{0,40}[A-Za-z0-9@.!%*_+`'~-])?",
        empty_first in prop::bool::weighted(0.2),
        crlf in any::<bool>(),
        body in prop::bool::weighted(0.3),
    ) -> SipCase {
        let eol = if crlf { "\r\n" } else { "\n" };
        let name = if compact { random_case("i", &upper) } else { random_case("Call-ID", &upper) };
        let mut s = String::new();
        s.push_str(first_line);
        s.push_str(eol);
        for h in &before {
            s.push_str(h);
            s.push_str(eol);
        }
        if empty_first {
            // An empty value does not match; the search goes on.
            s.push_str("Call-ID: \t");
            s.push_str(eol);
        }
        s.push_str(&format!("{name}{ws_name}:{ws_lead}{value}{ws_trail}{eol}"));
        for h in &after {
            s.push_str(h);
            s.push_str(eol);
        }
        s.push_str(eol);
        if body {
            s.push_str("v=0");
            s.push_str(eol);
            s.push_str("Call-ID: body-is-not-searched");
            s.push_str(eol);
        }
        SipCase { payload: s.into_bytes(), call_id: value.into_bytes() }
    }
}

/// Payloads made of Call-ID-like fragments, to compare the scanner with the definition on
/// inputs that hit every corner (CR without LF, whitespace, colons, compact form, ...).
fn noisy_payload() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&[u8]] = &[
        b"Call-ID",
        b"call-id",
        b"CALL-ID",
        b"Call-Id",
        b"Call-",
        b"Call-Info",
        b"i",
        b"I",
        b"c",
        b":",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n",
        b"x",
        b"abc@host",
        b"INVITE sip:x SIP/2.0",
    ];
    let token = select(TOKENS);
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// `feed_block` (which jumps over the bytes of a skipped line) leaves the scanner as
    /// eight `feed`s do, from any state a payload prefix leads to, at any position, with
    /// any suffix after it.
    #[test]
    fn feed_block_equals_eight_feeds(
        payload in noisy_payload(),
        cut in any::<prop::sample::Index>(),
        any_block in any::<[u8; 8]>(),
        from_payload in any::<bool>(),
    ) {
        let mut padded = payload.clone();
        padded.extend_from_slice(&any_block);
        let at = if payload.is_empty() { 0 } else { cut.index(payload.len()) };
        let block: [u8; 8] = if from_payload {
            padded[at..at + 8].try_into().expect("8 bytes")
        } else {
            any_block
        };
        let mut by_block = CallIdScanner::new();
        for (i, b) in payload[..at].iter().enumerate() {
            by_block.feed(*b, i);
        }
        let mut by_byte = by_block;
        by_block.feed_block(block, at);
        for (i, b) in block.iter().enumerate() {
            by_byte.feed(*b, at + i);
        }
        prop_assert_eq!(by_block.result(), by_byte.result());
        prop_assert_eq!(by_block.is_done(), by_byte.is_done());
        // And the same from there on.
        let rest = padded.get(at + 8..).unwrap_or(&[]);
        for (i, b) in rest.iter().enumerate() {
            by_block.feed(*b, at + 8 + i);
            by_byte.feed(*b, at + 8 + i);
        }
        prop_assert_eq!(by_block.result(), by_byte.result());
        prop_assert_eq!(by_block.is_done(), by_byte.is_done());
    }

    /// The word-wise scan (`scan_word_step`, the kernel's: aligned words of the whole
    /// packet while a line is skipped, bytes elsewhere) finds what `find_call_id` finds,
    /// for a payload at any alignment in its packet, any window inside it, any bytes
    /// around it.
    #[test]
    fn the_word_scan_finds_what_find_call_id_finds(
        payload in noisy_payload(),
        before in bytes(23),
        after in bytes(23),
        cut in any::<prop::sample::Index>(),
        whole in any::<bool>(),
    ) {
        use hep_common::correlation::scan_word_step;
        let mut packet = before.clone();
        packet.extend_from_slice(&payload);
        packet.extend_from_slice(&after);
        let base = before.len();
        let len = if whole || payload.is_empty() { payload.len() } else { cut.index(payload.len() + 1) };
        let mut sc = CallIdScanner::new();
        let mut pos = 0;
        let window = len.min(CALLID_SCAN_LIMIT);
        let mut steps = 0;
        while scan_word_step(&packet[..], &mut sc, base, &mut pos, window) {
            steps += 1;
            prop_assert!(steps <= window, "a step advances at least one byte");
        }
        prop_assert_eq!(sc.result(), find_call_id(&packet[..], base, len));
    }
}

// ---------------------------------------------------------------------------------------
// HEPv3 round trip
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hep3_message_round_trip(spec in msg_spec()) {
        let bytes = spec.encode().expect("a message inside the limits encodes");
        let model = spec.model();
        prop_assert_eq!(bytes.len(), encoded_size(&model));
        let extra: Vec<RawChunk<'_>> = spec.extra.iter().map(|(id, value)| RawChunk { id: *id, value }).collect();
        prop_assert_eq!(bytes.len(), spec.message(&extra).encoded_len());
        prop_assert_eq!(&bytes[..4], b"HEP3");
        prop_assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]) as usize, bytes.len());

        let p = Hep3::parse(&bytes).expect("what we encode parses");
        check_chunks(&p, &bytes, &model)?;
        check_accessors(&p, &model)?;
        prop_assert_eq!(validate(&bytes[..]), Ok(model.len()));
        // The payload is last.
        let last = p.chunks().last().expect("at least the payload");
        let payload_kind = if spec.compressed { 0x0010 } else { 0x000f };
        prop_assert_eq!(last.id(), g(payload_kind));
        prop_assert_eq!(last.value, &spec.payload[..]);
        // The typed fields come back when no extra chunk shadows them.
        if spec.extra.iter().all(|(id, _)| id.vendor != 0 || !(1..=0x13).contains(&id.kind)) {
            prop_assert_eq!(p.src_ip(), Some(spec.ips.0));
            prop_assert_eq!(p.dst_ip(), Some(spec.ips.1));
            prop_assert_eq!(p.src_port(), Some(spec.ports.0));
            prop_assert_eq!(p.dst_port(), Some(spec.ports.1));
            prop_assert_eq!(p.ts_sec(), Some(spec.ts.0));
            prop_assert_eq!(p.ts_usec(), Some(spec.ts.1));
            prop_assert_eq!(p.ip_proto(), Some(spec.ip_proto));
            prop_assert_eq!(p.proto_type(), Some(spec.proto_type));
            prop_assert_eq!(p.capture_id(), Some(spec.capture_id));
            prop_assert_eq!(p.auth_key(), spec.auth_key.as_deref());
            prop_assert_eq!(p.correlation_id(), spec.correlation_id.as_deref());
            prop_assert_eq!(p.vlan_id(), spec.vlan_id);
            prop_assert_eq!(p.node_name(), spec.node_name.as_deref());
        }
        // The correlation key, by its definition.
        let key = p.correlation_key().map(|k| (k.source, k.bytes.to_vec()));
        prop_assert_eq!(key, expected_key(&model));
        // Through version detection too.
        prop_assert_eq!(detect(&bytes), Some(HepVersion::V3));
        let any = HepPacket::parse(&bytes).expect("parses as any version");
        prop_assert_eq!(any.version(), HepVersion::V3);
        prop_assert_eq!(any, HepPacket::V3(p));
        // Encoding into a buffer one byte short fails with a typed error, never a panic.
        let mut short = vec![0u8; bytes.len() - 1];
        prop_assert_eq!(
            spec.message(&extra).encode(&mut short),
            Err(HepError::BufferTooSmall { needed: bytes.len(), have: bytes.len() - 1 })
        );
    }

    /// An extra chunk of a fixed-width generic type with any other width is refused.
    #[test]
    fn encoder_refuses_wrong_widths(
        spec in msg_spec(),
        kind in select(&[1u16, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 18, 20, 21, 22, 23, 24, 32, 33, 35, 39, 40][..]),
        len in 0usize..24,
        at in any::<prop::sample::Index>(),
    ) {
        let expected = fixed_width(0, kind).expect("fixed-width kind");
        prop_assume!(len != expected);
        let mut spec = spec;
        let i = at.index(spec.extra.len() + 1);
        spec.extra.insert(i, (g(kind), vec![0xa5; len]));
        let offset = encoded_size(&spec.model()[..spec.model().len() - spec.extra.len() - 1 + i]);
        prop_assert_eq!(
            spec.encode(),
            Err(HepError::BadChunkWidth { offset, kind, len, expected })
        );
        // The same type under a vendor id has no fixed width.
        spec.extra[i].0.vendor = 3;
        prop_assert!(spec.encode().is_ok());
    }

    /// Near the chunk limit: the encoder either writes a packet its own parser accepts or
    /// refuses with `TooManyChunks`; it never writes a packet the walker rejects.
    #[test]
    fn encoder_respects_the_chunk_limit(
        spec in msg_spec_with(prop::collection::vec(raw_chunk(4), 40..60).boxed(), bytes(16).boxed()),
    ) {
        let model = spec.model();
        match spec.encode() {
            Ok(bytes) => {
                prop_assert!(model.len() <= MAX_CHUNKS);
                let p = Hep3::parse(&bytes).expect("what we encode parses");
                check_chunks(&p, &bytes, &model)?;
            }
            Err(e) => {
                prop_assert!(model.len() > MAX_CHUNKS, "refused {} chunks: {:?}", model.len(), e);
                prop_assert!(matches!(e, HepError::TooManyChunks { max: MAX_CHUNKS, .. }), "{:?}", e);
            }
        }
    }

    /// Near the size limit: a packet of at most 65535 bytes encodes, a larger one is
    /// refused with `TooLarge`.
    #[test]
    fn encoder_respects_the_size_limit(spec in msg_spec(), target in 65_400usize..65_700) {
        let mut spec = spec;
        let base = encoded_size(&spec.model()) - spec.payload.len();
        prop_assume!(target >= base);
        spec.payload = vec![b'x'; target - base];
        let model = spec.model();
        let size = encoded_size(&model);
        prop_assert_eq!(size, target);
        match spec.encode() {
            Ok(bytes) => {
                prop_assert!(size <= MAX_PACKET_LEN);
                prop_assert_eq!(bytes.len(), size);
                let p = Hep3::parse(&bytes).expect("parses");
                check_chunks(&p, &bytes, &model)?;
            }
            Err(e) => {
                prop_assert!(size > MAX_PACKET_LEN, "refused {} bytes: {:?}", size, e);
                prop_assert_eq!(e, HepError::TooLarge { len: size });
            }
        }
    }

    #[test]
    fn mixed_families_are_refused(spec in msg_spec(), v6 in any::<[u8; 16]>(), swap in any::<bool>()) {
        let mut spec = spec;
        let v6 = IpAddr::V6(Ipv6Addr::from(v6));
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        spec.ips = if swap { (v4, v6) } else { (v6, v4) };
        prop_assert_eq!(spec.encode(), Err(HepError::MixedFamilies));
    }
}

// ---------------------------------------------------------------------------------------
// HEPv1 / HEPv2
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct LegacySpec {
    version: u8,
    ip_proto: u8,
    ips: (IpAddr, IpAddr),
    ports: (u16, u16),
    time: Option<LegacyTime>,
    payload: Vec<u8>,
}

impl LegacySpec {
    fn legacy(&self) -> HepLegacy<'_> {
        HepLegacy {
            version: self.version,
            ip_proto: self.ip_proto,
            src_ip: self.ips.0,
            dst_ip: self.ips.1,
            src_port: self.ports.0,
            dst_port: self.ports.1,
            time: self.time,
            payload: &self.payload,
        }
    }
}

fn legacy_spec(version: u8) -> impl Strategy<Value = LegacySpec> {
    (
        any::<u8>(),
        ip_pair(),
        any::<(u16, u16)>(),
        any::<(u32, u32, u16)>(),
        payload_bytes(),
    )
        .prop_map(move |(ip_proto, ips, ports, t, payload)| LegacySpec {
            version,
            ip_proto,
            ips,
            ports,
            time: (version == 2).then_some(LegacyTime {
                ts_sec: t.0,
                ts_usec: t.1,
                capture_id: t.2,
            }),
            payload,
        })
}

fn encode_legacy(l: &HepLegacy<'_>) -> Vec<u8> {
    let mut out = vec![0u8; l.encoded_len()];
    let n = l.encode(&mut out).expect("legacy encode");
    assert_eq!(n, out.len());
    out
}

fn encode_msg(m: &Hep3Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut out).expect("v3 encode");
    assert_eq!(n, out.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn legacy_round_trip(spec in prop_oneof![legacy_spec(1), legacy_spec(2)]) {
        let l = spec.legacy();
        let bytes = encode_legacy(&l);
        // The layout of HEP.md §2.1.
        let v6 = matches!(spec.ips.0, IpAddr::V6(_));
        let hl = if v6 { 40 } else { 16 };
        let off = hl + if spec.version == 2 { 12 } else { 0 };
        prop_assert_eq!(bytes.len(), off + spec.payload.len());
        prop_assert_eq!(&bytes[..4], &[spec.version, hl as u8, if v6 { 10 } else { 2 }, spec.ip_proto][..]);
        prop_assert_eq!(&bytes[4..8], &[spec.ports.0.to_be_bytes(), spec.ports.1.to_be_bytes()].concat()[..]);
        if let Some(t) = spec.time {
            prop_assert_eq!(&bytes[hl..hl + 4], &t.ts_sec.to_le_bytes()[..]);
            prop_assert_eq!(&bytes[hl + 4..hl + 8], &t.ts_usec.to_le_bytes()[..]);
            prop_assert_eq!(&bytes[hl + 8..hl + 10], &t.capture_id.to_le_bytes()[..]);
            prop_assert_eq!(&bytes[hl + 10..hl + 12], &[0, 0][..]);
        }
        prop_assert_eq!(&bytes[off..], &spec.payload[..]);

        prop_assert_eq!(HepLegacy::parse(&bytes), Ok(l));
        let want = if spec.version == 1 { HepVersion::V1 } else { HepVersion::V2 };
        prop_assert_eq!(detect(&bytes), Some(want));
        let any = HepPacket::parse(&bytes).expect("parses");
        prop_assert_eq!(any.version(), want);
        prop_assert_eq!(any, HepPacket::Legacy(l));
        // Every cut inside the header is a typed truncation error.
        for cut in [0, 3, 4, 7, 8, off - 1] {
            prop_assert!(HepPacket::parse(&bytes[..cut]).is_err());
        }
    }

    /// v2 → v3 → v2 gives back the same bytes: the conversion loses nothing.
    #[test]
    fn v2_to_v3_is_lossless(spec in legacy_spec(2), recv in any::<(u32, u32)>()) {
        let original = encode_legacy(&spec.legacy());
        let parsed = HepLegacy::parse(&original).expect("parses");
        let m = parsed.to_hep3(recv);
        let t = spec.time.expect("v2 has a time block");
        // The receive time is not used when the packet has its own.
        prop_assert_eq!((m.ts_sec, m.ts_usec, m.capture_id), (t.ts_sec, t.ts_usec, u32::from(t.capture_id)));
        let v3 = encode_msg(&m);
        let p = Hep3::parse(&v3).expect("v3 parses");
        prop_assert_eq!(p.proto_type(), Some(proto::SIP));
        let back = HepLegacy::from_hep3(&p).expect("v3 converts back");
        prop_assert_eq!(encode_legacy(&back), original);
    }

    /// v1 → v3 keeps every v1 field and takes the time from the receive time.
    #[test]
    fn v1_to_v3_uses_the_receive_time(spec in legacy_spec(1), recv in any::<(u32, u32)>()) {
        let original = encode_legacy(&spec.legacy());
        let parsed = HepLegacy::parse(&original).expect("parses");
        let v3 = encode_msg(&parsed.to_hep3(recv));
        let p = Hep3::parse(&v3).expect("v3 parses");
        let family = if matches!(spec.ips.0, IpAddr::V4(_)) { 2 } else { 10 };
        prop_assert_eq!(p.ip_family(), Some(family));
        prop_assert_eq!(p.ip_proto(), Some(spec.ip_proto));
        prop_assert_eq!(p.src_ip(), Some(spec.ips.0));
        prop_assert_eq!(p.dst_ip(), Some(spec.ips.1));
        prop_assert_eq!(p.src_port(), Some(spec.ports.0));
        prop_assert_eq!(p.dst_port(), Some(spec.ports.1));
        prop_assert_eq!(p.ts_sec(), Some(recv.0));
        prop_assert_eq!(p.ts_usec(), Some(recv.1));
        prop_assert_eq!(p.capture_id(), Some(0));
        prop_assert_eq!(p.proto_type(), Some(proto::SIP));
        prop_assert_eq!(p.payload(), Some(&spec.payload[..]));
        prop_assert_eq!(p.chunk_count(), 11);
    }
}

// ---------------------------------------------------------------------------------------
// Rewrite
// ---------------------------------------------------------------------------------------

/// Ids of the rewrite tests: a small pool so packets and edits often name the same ids.
const POOL: &[ChunkId] = &[
    g(0x0001),
    g(0x0007),
    g(0x000b),
    g(0x000c),
    g(0x000e),
    g(0x000f),
    g(0x0010),
    g(0x0011),
    g(0x0013),
    g(0x0065),
    g(0x7fff),
    ChunkId {
        vendor: 3,
        kind: 0x000f,
    },
    ChunkId {
        vendor: 3,
        kind: 0x0001,
    },
    ChunkId {
        vendor: 9,
        kind: 0x0011,
    },
];

fn pool_chunk() -> impl Strategy<Value = ModelChunk> {
    (select(POOL), bytes(40), any::<[u8; 16]>()).prop_map(|(id, v, f)| (id, value_for(id, v, f)))
}

/// Chunk lists: encoder-made packets, or any order of pool chunks (duplicates, no payload,
/// payload in the middle, nothing at all).
fn packet_chunks() -> impl Strategy<Value = Vec<ModelChunk>> {
    prop_oneof![
        msg_spec().prop_map(|s| s.model()),
        prop::collection::vec(pool_chunk(), 0..20),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Set(ChunkId, Vec<u8>),
    Delete(ChunkId),
}

impl Edit {
    fn id(&self) -> ChunkId {
        match self {
            Edit::Set(id, _) | Edit::Delete(id) => *id,
        }
    }
    fn as_edit(&self) -> ChunkEdit<'_> {
        match self {
            Edit::Set(id, value) => ChunkEdit::Set { id: *id, value },
            Edit::Delete(id) => ChunkEdit::Delete { id: *id },
        }
    }
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        (pool_chunk(), prop::bool::weighted(0.35)).prop_map(|((id, v), del)| {
            if del {
                Edit::Delete(id)
            } else {
                Edit::Set(id, v)
            }
        }),
        0..6,
    )
}

/// Where an output chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Copied from this input index.
    Copied(usize),
    /// The first occurrence (at this input index) replaced by a `Set`.
    Replaced(usize),
    /// Inserted by a `Set` of an absent id.
    Inserted,
}

fn is_payload(id: ChunkId) -> bool {
    id == g(0x000f) || id == g(0x0010)
}

/// The output of a rewrite by the definition in the `rewrite` module docs.
fn expected_rewrite(input: &[ModelChunk], edits: &[Edit]) -> Vec<(ModelChunk, Origin)> {
    let last = |id: ChunkId| edits.iter().rev().find(|e| e.id() == id);
    let inserted: Vec<(ModelChunk, Origin)> = edits
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Edit::Set(id, v)
                if !edits[i + 1..].iter().any(|l| l.id() == *id)
                    && !input.iter().any(|(c, _)| c == id) =>
            {
                Some(((*id, v.clone()), Origin::Inserted))
            }
            _ => None,
        })
        .collect();
    let at = input
        .iter()
        .position(|(id, _)| is_payload(*id))
        .unwrap_or(input.len());
    let mut out = Vec::new();
    for (i, (id, v)) in input.iter().enumerate() {
        if i == at {
            out.extend(inserted.iter().cloned());
        }
        match last(*id) {
            None => out.push(((*id, v.clone()), Origin::Copied(i))),
            Some(Edit::Delete(_)) => {}
            Some(Edit::Set(_, nv)) => {
                if !input[..i].iter().any(|(p, _)| p == id) {
                    out.push(((*id, nv.clone()), Origin::Replaced(i)));
                }
            }
        }
    }
    if at == input.len() {
        out.extend(inserted);
    }
    out
}

/// The raw bytes (header and value) of every chunk of a packet.
fn raw_chunks(bytes: &[u8]) -> Vec<&[u8]> {
    Hep3::parse(bytes)
        .expect("valid packet")
        .chunks()
        .map(|c| &bytes[c.header.offset..c.header.end()])
        .collect()
}

fn run_rewrite(input: &[u8], edits: &[Edit]) -> Result<Vec<u8>, HepError> {
    let p = Hep3::parse(input).expect("valid input");
    let e: Vec<ChunkEdit<'_>> = edits.iter().map(Edit::as_edit).collect();
    let mut out = vec![0u8; MAX_PACKET_LEN];
    let n = rewrite(&p, &e, &mut out)?;
    out.truncate(n);
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rewrite_follows_its_definition(input in packet_chunks(), edits in edits()) {
        let bytes = build(&input);
        let want = expected_rewrite(&input, &edits);
        let want_chunks: Vec<ModelChunk> = want.iter().map(|(c, _)| c.clone()).collect();
        let out = run_rewrite(&bytes, &edits).expect("inside the limits");

        // It parses, its length is the sum of its chunks, and it is the expected list.
        let p = Hep3::parse(&out).expect("rewrite output parses");
        prop_assert_eq!(out.len(), encoded_size(&want_chunks));
        check_chunks(&p, &out, &want_chunks)?;

        // The same, said property by property.
        for e in &edits {
            let fate = edits.iter().rev().find(|l| l.id() == e.id()).expect("e itself");
            let n = p.chunks().filter(|c| c.id() == e.id()).count();
            match fate {
                Edit::Delete(id) => prop_assert_eq!(n, 0, "deleted {:?} is gone", id),
                Edit::Set(id, v) => {
                    prop_assert_eq!(n, 1, "set {:?} occurs once", id);
                    prop_assert_eq!(p.get(*id), Some(&v[..]));
                }
            }
        }
        // Untouched chunks are byte-identical, in the same order.
        let in_raw = raw_chunks(&bytes);
        let out_raw = raw_chunks(&out);
        let copied: Vec<usize> = want.iter().filter_map(|(_, o)| match o { Origin::Copied(i) => Some(*i), _ => None }).collect();
        let kept: Vec<&[u8]> = want.iter().zip(&out_raw).filter(|((_, o), _)| matches!(o, Origin::Copied(_))).map(|(_, r)| *r).collect();
        prop_assert_eq!(kept, copied.iter().map(|i| in_raw[*i]).collect::<Vec<_>>());
        prop_assert!(copied.windows(2).all(|w| w[0] < w[1]));

        // Applying the same edits again changes nothing.
        prop_assert_eq!(run_rewrite(&out, &edits).expect("again"), out.clone());

        // One byte short of the output is a typed error.
        if out.len() > 6 {
            let p = Hep3::parse(&bytes).expect("valid input");
            let e: Vec<ChunkEdit<'_>> = edits.iter().map(Edit::as_edit).collect();
            let mut short = vec![0u8; out.len() - 1];
            let r = rewrite(&p, &e, &mut short);
            prop_assert!(matches!(r, Err(HepError::BufferTooSmall { .. })), "{:?}", r);
        }
    }

    #[test]
    fn rewrite_without_edits_is_the_identity(input in packet_chunks()) {
        let bytes = build(&input);
        prop_assert_eq!(run_rewrite(&bytes, &[]).expect("rewrite"), bytes);
    }

    #[test]
    fn rewrite_refuses_wrong_widths(input in packet_chunks(), mut edits in edits(), kind in select(&[1u16, 7, 11, 12, 18][..]), len in 0usize..8) {
        let expected = fixed_width(0, kind).expect("fixed");
        prop_assume!(len != expected);
        edits.push(Edit::Set(g(kind), vec![1; len]));
        let bytes = build(&input);
        prop_assert_eq!(run_rewrite(&bytes, &edits), Err(HepError::BadChunkWidth { offset: 0, kind, len, expected }));
    }

    /// Near the chunk and size limits the rewrite either writes a valid packet or refuses
    /// with `TooManyChunks`/`TooLarge`; it never writes a packet the walker rejects.
    #[test]
    fn rewrite_respects_the_limits(
        input in prop::collection::vec(pool_chunk(), 58..=64),
        edits in edits(),
        inserts in 0u16..3,
        big in prop::option::of(65_000usize..65_500),
    ) {
        let mut input = input;
        let mut edits = edits;
        // Sets of ids no pool packet carries: each adds a chunk.
        for i in 0..inserts {
            edits.push(Edit::Set(g(0x7f00 + i), vec![2; 3]));
        }
        if let Some(big) = big {
            let room = MAX_PACKET_LEN - encoded_size(&input);
            input[0] = (g(0x7ffe), vec![0; room.min(big) - 6]);
            edits.push(Edit::Set(g(0x7ffd), vec![1; 40]));
        }
        let bytes = build(&input);
        let want: Vec<ModelChunk> = expected_rewrite(&input, &edits).into_iter().map(|(c, _)| c).collect();
        match run_rewrite(&bytes, &edits) {
            Ok(out) => {
                prop_assert!(want.len() <= MAX_CHUNKS && encoded_size(&want) <= MAX_PACKET_LEN);
                let p = Hep3::parse(&out).expect("rewrite output parses");
                check_chunks(&p, &out, &want)?;
            }
            Err(e) => {
                prop_assert!(want.len() > MAX_CHUNKS || encoded_size(&want) > MAX_PACKET_LEN,
                    "refused {} chunks, {} bytes: {:?}", want.len(), encoded_size(&want), e);
                prop_assert!(matches!(e, HepError::TooManyChunks { .. } | HepError::TooLarge { .. }), "{:?}", e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// In-place edits (the kernel's form of `set`)
// ---------------------------------------------------------------------------------------

/// The route's `set` edits (distinct chunks, up to 4) and the destination's auth key: a
/// value is either random or, more often, as long as the packet's first occurrence of the
/// chunk, so that writing in place is often possible.
/// A packet's chunks, the route's `set` edits, the destination's auth key.
type InPlaceCase = (Vec<ModelChunk>, Vec<ModelChunk>, Option<Vec<u8>>);

fn in_place_case() -> impl Strategy<Value = InPlaceCase> {
    (
        packet_chunks(),
        prop::collection::vec(
            (
                select(POOL),
                any::<prop::sample::Index>(),
                bytes(32),
                prop::bool::weighted(0.8),
                prop::bool::weighted(0.9),
                any::<u8>(),
            ),
            0..=4,
        ),
        prop::option::of((bytes(32), prop::bool::weighted(0.9), any::<u8>())),
    )
        .prop_map(|(input, raw, auth)| {
            let same_len = |id: ChunkId, v: Vec<u8>, same: bool, fill: u8| match input
                .iter()
                .find(|(c, _)| *c == id)
            {
                Some((_, old)) if same && old.len() <= 32 && !old.is_empty() => {
                    vec![fill; old.len()]
                }
                _ => match fixed_width(id.vendor, id.kind) {
                    Some(w) => vec![fill; w],
                    None if v.is_empty() => vec![fill],
                    None => v,
                },
            };
            let mut edits: Vec<ModelChunk> = Vec::new();
            for (pool_id, pick, v, carried, same, fill) in raw {
                // Mostly a chunk the packet carries.
                let id = if carried && !input.is_empty() {
                    input[pick.index(input.len())].0
                } else {
                    pool_id
                };
                if !edits.iter().any(|(e, _)| *e == id) {
                    let value = same_len(id, v, same, fill);
                    edits.push((id, value));
                }
            }
            let auth = auth.map(|(v, same, fill)| same_len(g(0x000e), v, same, fill));
            (input, edits, auth)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Where `EditSites` says the edits fit in place, writing each value at its site gives
    /// byte for byte what the rewrite gives for the same `set` edits (the route's, then the
    /// destination's auth key); where it says they do not, nothing is written.
    #[test]
    fn in_place_edits_equal_the_rewrite((input, edits, auth) in in_place_case()) {
        use hep_common::abi::{KernelEdit, MAX_KERNEL_EDITS};
        use hep_common::inplace::EditSites;
        use hep_common::walker::ChunkWalker;
        let bytes = build(&input);
        let mut route = [KernelEdit::NONE; MAX_KERNEL_EDITS];
        for (k, (id, v)) in edits.iter().enumerate() {
            route[k] = KernelEdit::set(*id, v).expect("1 to 32 bytes");
        }
        let auth_edit = auth.as_ref().map_or(KernelEdit::NONE, |v| KernelEdit::set(g(0x000e), v).expect("1 to 32 bytes"));
        let mut sites = EditSites::EMPTY;
        sites.reset(&route, edits.len() as u8, &auth_edit);
        let mut walker = ChunkWalker::new(bytes.as_slice()).expect("valid packet");
        while let Some(c) = walker.next_chunk().expect("valid packet") {
            sites.on_chunk(&c);
        }
        // In place exactly when every edited chunk occurs once with a value of that length.
        let mut all: Vec<ModelChunk> = edits.iter().filter(|(id, _)| auth.is_none() || *id != g(0x000e)).cloned().collect();
        if let Some(a) = &auth {
            all.push((g(0x000e), a.clone()));
        }
        let fits = all.iter().all(|(id, v)| {
            let found: Vec<&Vec<u8>> = input.iter().filter(|(c, _)| c == id).map(|(_, o)| o).collect();
            found.len() == 1 && found[0].len() == v.len()
        });
        prop_assert_eq!(sites.in_place(), fits);
        let mut out = bytes.clone();
        let applied = sites.apply(&mut out);
        prop_assert_eq!(applied, fits);
        if fits {
            let mut set: Vec<Edit> = edits.iter().map(|(id, v)| Edit::Set(*id, v.clone())).collect();
            if let Some(a) = &auth {
                set.push(Edit::Set(g(0x000e), a.clone()));
            }
            prop_assert_eq!(out, run_rewrite(&bytes, &set).expect("same length: inside the limits"));
        } else {
            prop_assert_eq!(out, bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Robustness: arbitrary bytes and mutations
// ---------------------------------------------------------------------------------------

/// Runs every decoder entry point and accessor on `buf`; checks the invariants of what
/// parses and that errors are typed and point inside the buffer.
fn exercise(buf: &[u8]) -> Result<(), TestCaseError> {
    let _ = detect(buf);
    let _ = HepLegacy::parse(buf);
    for max in [0, 6, 100, MAX_FRAME_LEN] {
        match frame_len(buf, max) {
            Ok(Some(n)) => prop_assert!((6..=buf.len().min(max)).contains(&n)),
            Ok(None) => prop_assert!(
                buf.len() < 6 || usize::from(u16::from_be_bytes([buf[4], buf[5]])) > buf.len()
            ),
            Err(_) => {}
        }
    }
    let _ = find_call_id(buf, 0, buf.len());
    let _ = find_call_id(buf, 3, buf.len());
    let _ = find_call_id(buf, usize::MAX - 4, 100);
    let _ = find_call_id(buf, 1, usize::MAX);
    match HepPacket::parse(buf) {
        Ok(HepPacket::V3(p)) => {
            prop_assert_eq!(Hep3::parse(buf), Ok(p));
            let model: Vec<ModelChunk> = p.chunks().map(|c| (c.id(), c.value.to_vec())).collect();
            prop_assert!(model.len() <= MAX_CHUNKS);
            check_chunks(&p, buf, &model)?;
            check_accessors(&p, &model)?;
            let key = p.correlation_key().map(|k| (k.source, k.bytes.to_vec()));
            prop_assert_eq!(key, expected_key(&model));
            // A valid packet is rebuilt byte for byte by the rewriter and the writer.
            let mut out = vec![0u8; buf.len()];
            prop_assert_eq!(rewrite(&p, &[], &mut out), Ok(buf.len()));
            prop_assert_eq!(&out[..], buf);
            prop_assert_eq!(build(&model), buf);
            let _ = HepLegacy::from_hep3(&p);
        }
        Ok(HepPacket::Legacy(l)) => {
            let _ = encode_msg(&l.to_hep3((1, 2)));
            let mut out = vec![0u8; l.encoded_len()];
            prop_assert_eq!(l.encode(&mut out), Ok(buf.len()));
            // Only the v2 padding bytes may differ.
            if l.version == 1 {
                prop_assert_eq!(&out[..], buf);
            }
        }
        Err(e) => {
            prop_assert!(
                e.offset() <= buf.len(),
                "{:?} points past {} bytes",
                e,
                buf.len()
            );
            prop_assert!(!e.kind().is_empty());
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Xor(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    /// Make the header's length field match the buffer again (reaches the chunk checks).
    FixLength,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), 1u8..).prop_map(|(i, x)| Mutation::Xor(i, x)),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        2 => Just(Mutation::FixLength),
    ]
}

fn mutate(buf: &mut Vec<u8>, m: &Mutation) {
    if buf.is_empty() {
        return;
    }
    match m {
        Mutation::Xor(i, x) => {
            let i = i.index(buf.len());
            buf[i] ^= x;
        }
        Mutation::Set(i, x) => {
            let i = i.index(buf.len());
            buf[i] = *x;
        }
        Mutation::Truncate(i) => buf.truncate(i.index(buf.len())),
        Mutation::Insert(i, x) => buf.insert(i.index(buf.len() + 1), *x),
        Mutation::Remove(i) => {
            buf.remove(i.index(buf.len()));
        }
        Mutation::FixLength => {
            if buf.len() >= 6 && buf.len() <= 65_535 {
                let n = (buf.len() as u16).to_be_bytes();
                buf[4] = n[0];
                buf[5] = n[1];
            }
        }
    }
}

/// Bytes that start like a HEPv3 packet with a correct length field, then random chunk
/// bytes: these reach the chunk walker rather than stopping at the header.
fn hep3_shaped() -> impl Strategy<Value = Vec<u8>> {
    bytes(200).prop_map(|body| {
        let mut b = b"HEP3\0\0".to_vec();
        b.extend(body);
        let n = (b.len() as u16).to_be_bytes();
        b[4] = n[0];
        b[5] = n[1];
        b
    })
}

/// Bytes that look like a HEPv1/v2 header.
fn legacy_shaped() -> impl Strategy<Value = Vec<u8>> {
    (1u8..=2, any::<bool>(), bytes(80)).prop_map(|(v, v6, rest)| {
        let mut b = vec![v, if v6 { 40 } else { 16 }, if v6 { 10 } else { 2 }];
        b.extend(rest);
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(
        buf in prop_oneof![bytes(300), hep3_shaped(), legacy_shaped()],
    ) {
        exercise(&buf)?;
    }

    #[test]
    fn mutated_packets_parse_or_fail_typed(
        spec in msg_spec(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut buf = spec.encode().expect("encodes");
        for m in &mutations {
            mutate(&mut buf, m);
        }
        exercise(&buf)?;
    }

    #[test]
    fn mutated_legacy_packets_parse_or_fail_typed(
        spec in prop_oneof![legacy_spec(1), legacy_spec(2)],
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut buf = encode_legacy(&spec.legacy());
        for m in &mutations {
            mutate(&mut buf, m);
        }
        exercise(&buf)?;
    }

    /// A lying chunk length is reported at that chunk (or, when the lie still lands on a
    /// chunk boundary, at a later chunk or not at all).
    #[test]
    fn a_corrupt_chunk_length_is_reported_at_or_after_its_chunk(
        spec in msg_spec(),
        which in any::<prop::sample::Index>(),
        len in any::<u16>(),
    ) {
        let mut buf = spec.encode().expect("encodes");
        let offsets: Vec<usize> = Hep3::parse(&buf).expect("valid").chunks().map(|c| c.header.offset).collect();
        let at = offsets[which.index(offsets.len())];
        buf[at + 4..at + 6].copy_from_slice(&len.to_be_bytes());
        let remaining = buf.len() - at;
        match Hep3::parse(&buf) {
            Ok(_) => prop_assert!(len >= 6 && usize::from(len) <= remaining),
            Err(e) => {
                prop_assert!(e.offset() >= at, "{:?} before the corrupt chunk at {}", e, at);
                if len < 6 {
                    prop_assert_eq!(e, HepError::ChunkTooShort { offset: at, len });
                } else if usize::from(len) > remaining {
                    prop_assert_eq!(e, HepError::ChunkPastEnd { offset: at, len, end: buf.len() });
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The kernel's shortcut over the common agents' first ten chunks
    /// (`prefix::facts_with_prefix`) gives the facts (or the error) of the chunk-by-chunk
    /// walk (`facts::facts`) on every input: encoded packets (which start with a prefix:
    /// checked), the same with a few mutations (near misses, broken lengths, truncation),
    /// and arbitrary HEPv3-shaped bytes.
    #[test]
    fn the_prefix_shortcut_gives_the_facts_of_the_walk(
        spec in msg_spec(),
        mutations in prop::collection::vec(mutation(), 0..4),
        shaped in hep3_shaped(),
        use_shaped in prop::bool::weighted(0.1),
        short_length in prop::option::weighted(0.2, any::<prop::sample::Index>()),
        sender in any::<[u8; 16]>(),
    ) {
        use hep_common::facts::{FactsWalk, facts};
        use hep_common::prefix::{apply, facts_with_prefix};
        let mut buf = if use_shaped { shaped } else { spec.encode().expect("encodes") };
        if !use_shaped && mutations.is_empty() {
            // What the agents send starts with a prefix, and the shortcut takes it.
            let end = buf.len();
            prop_assert!(apply(&buf[..], end, &mut FactsWalk::new(sender)).is_some());
        }
        for m in &mutations {
            mutate(&mut buf, m);
        }
        // A header length short of the bytes: the chunks must end where it says.
        if let Some(at) = short_length
            && buf.len() > 6
        {
            let n = (6 + at.index(buf.len() - 6)) as u16;
            buf[4..6].copy_from_slice(&n.to_be_bytes());
        }
        prop_assert_eq!(facts_with_prefix(&buf[..], sender), facts(&buf[..], sender));
    }
}

// ---------------------------------------------------------------------------------------
// TCP framing
// ---------------------------------------------------------------------------------------

/// The simplest stream reader: append each piece, cut every whole frame.
fn reframe(pieces: &[&[u8]], max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut acc: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    for piece in pieces {
        acc.extend_from_slice(piece);
        while let Some(n) = frame_len(&acc, max)? {
            frames.push(acc.drain(..n).collect());
        }
    }
    Ok(frames)
}

fn split_at_points<'a>(stream: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

fn stream_packets() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            3 => msg_spec().prop_map(|s| s.encode().expect("encodes")),
            1 => prop::collection::vec(pool_chunk(), 0..6).prop_map(|c| build(&c)),
            1 => (0usize..3000).prop_map(|n| build(&[(g(0x000f), vec![b'p'; n])])),
        ],
        0..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn tcp_stream_reframes_to_the_original_packets(
        packets in stream_packets(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        one_byte_at_a_time in prop::bool::weighted(0.1),
    ) {
        let stream = packets.concat();
        let pieces: Vec<&[u8]> = if one_byte_at_a_time {
            stream.chunks(1).collect()
        } else {
            split_at_points(&stream, &cuts)
        };
        prop_assert_eq!(pieces.concat(), stream.clone());
        prop_assert_eq!(reframe(&pieces, MAX_FRAME_LEN), Ok(packets.clone()));
        // Every frame is a valid HEPv3 packet on its own.
        for f in &packets {
            prop_assert!(Hep3::parse(f).is_ok());
        }
        // A maximum below the largest frame closes the stream at that frame.
        if let Some(big) = packets.iter().map(Vec::len).max().filter(|n| *n > 6) {
            let max = big - 1;
            let r = reframe(&pieces, max);
            prop_assert_eq!(r, Err(FrameError::TooLarge { len: big, max }));
        }
    }

    #[test]
    fn garbage_in_a_tcp_stream_is_an_error(
        packets in stream_packets(),
        at in any::<prop::sample::Index>(),
        garbage in prop_oneof![
            (any::<u8>().prop_filter("not H", |b| *b != b'H'), bytes(20)).prop_map(|(b, rest)| [vec![b], rest].concat()),
            (0u16..6, bytes(10)).prop_map(|(l, rest)| [b"HEP3".to_vec(), l.to_be_bytes().to_vec(), rest].concat()),
            Just(b"HEP2".to_vec()),
            Just(b"EEP1\x00\x10".to_vec()),
        ],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let k = at.index(packets.len() + 1);
        let stream = [packets[..k].concat(), garbage.clone(), packets[k..].concat()].concat();
        let pieces = split_at_points(&stream, &cuts);
        let r = reframe(&pieces, MAX_FRAME_LEN);
        prop_assert!(r.is_err(), "garbage {:?} after {} packets was framed: {:?}", garbage, k, r);
        // And every packet before the garbage was delivered first.
        let mut acc = Vec::new();
        let mut delivered = 0;
        'feed: for piece in &pieces {
            acc.extend_from_slice(piece);
            loop {
                match frame_len(&acc, MAX_FRAME_LEN) {
                    Ok(Some(n)) => {
                        prop_assert!(delivered < k, "a frame was cut from the garbage");
                        prop_assert_eq!(&acc[..n], &packets[delivered][..]);
                        acc.drain(..n);
                        delivered += 1;
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        prop_assert_eq!(delivered, k);
    }

    #[test]
    fn frame_len_reports_bad_magic_as_soon_as_it_shows(prefix in bytes(8)) {
        let r = frame_len(&prefix, MAX_FRAME_LEN);
        let n = prefix.len().min(4);
        if prefix[..n] != b"HEP3"[..n] {
            let mut found = [0u8; 4];
            found[..n].copy_from_slice(&prefix[..n]);
            prop_assert_eq!(r, Err(FrameError::BadMagic { found }));
        } else {
            prop_assert!(r.is_ok() || matches!(r, Err(FrameError::LengthTooSmall { .. })), "{:?}", r);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Correlation key and hash
// ---------------------------------------------------------------------------------------

fn sip_packet(payload: &[u8], proto_type: u8, corr: Option<&[u8]>, compressed: bool) -> Vec<u8> {
    let m = Hep3Message {
        ip_proto: 17,
        src_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        src_port: 5060,
        dst_port: 5060,
        ts_sec: 1,
        ts_usec: 2,
        proto_type,
        capture_id: 3,
        auth_key: None,
        correlation_id: corr,
        vlan_id: None,
        node_name: None,
        extra: &[],
        payload: if compressed {
            Payload::Compressed(payload)
        } else {
            Payload::Plain(payload)
        },
    };
    encode_msg(&m)
}

fn key_of(packet: &[u8]) -> Option<(KeySource, Vec<u8>)> {
    Hep3::parse(packet)
        .expect("valid")
        .correlation_key()
        .map(|k| (k.source, k.bytes.to_vec()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sip_call_id_is_found(case in sip_case()) {
        prop_assert!(case.payload.len() < CALLID_SCAN_LIMIT);
        let pkt = sip_packet(&case.payload, proto::SIP, None, false);
        prop_assert_eq!(key_of(&pkt), Some((KeySource::SipCallId, case.call_id.clone())));
        // An empty 0x0011 does not count.
        let pkt = sip_packet(&case.payload, proto::SIP, Some(b""), false);
        prop_assert_eq!(key_of(&pkt), Some((KeySource::SipCallId, case.call_id.clone())));
        // The reference finder agrees.
        let (s, e) = ref_call_id(&case.payload).expect("reference finds it");
        prop_assert_eq!(&case.payload[s..e], &case.call_id[..]);
    }

    #[test]
    fn correlation_chunk_wins_over_the_payload(case in sip_case(), corr in bytes(64), pt in proto_type()) {
        prop_assume!(!corr.is_empty());
        let pkt = sip_packet(&case.payload, pt, Some(&corr), false);
        prop_assert_eq!(key_of(&pkt), Some((KeySource::CorrelationChunk, corr)));
    }

    #[test]
    fn only_plain_sip_payloads_are_searched(case in sip_case(), pt in any::<u8>(), compressed in any::<bool>()) {
        prop_assume!(pt != proto::SIP || compressed);
        let pkt = sip_packet(&case.payload, pt, None, compressed);
        prop_assert_eq!(key_of(&pkt), None);
    }

    /// The window: a Call-ID line that starts at `start` (around the window's end).
    #[test]
    fn the_scan_window_is_respected(
        case in sip_case(),
        start in (CALLID_SCAN_LIMIT - 48)..(CALLID_SCAN_LIMIT + 8),
    ) {
        let head = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nX-Pad: ";
        prop_assume!(start >= head.len() + 2);
        let value = b"w1ndow-test@host.example";
        let mut m = head.to_vec();
        m.resize(start - 2, b'a');
        m.extend_from_slice(b"\r\nCall-ID: ");
        m.extend_from_slice(value);
        m.extend_from_slice(b"\r\n\r\n");
        m.extend_from_slice(&case.payload);
        prop_assert_eq!(m.len() > CALLID_SCAN_LIMIT, true);
        let got = find_call_id(&m[..], 0, m.len());
        prop_assert_eq!(got, ref_call_id(&m));
        let value_start = start + b"Call-ID: ".len();
        let value_end = value_start + value.len();
        if value_end < CALLID_SCAN_LIMIT {
            prop_assert_eq!(got, Some((value_start, value_end)));
        } else if value_start < CALLID_SCAN_LIMIT {
            prop_assert_eq!(got, Some((value_start, CALLID_SCAN_LIMIT)), "cut at the window's end");
        } else {
            prop_assert_eq!(got, None);
        }
        let pkt = sip_packet(&m, proto::SIP, None, false);
        prop_assert_eq!(key_of(&pkt), got.map(|(s, e)| (KeySource::SipCallId, m[s..e].to_vec())));
    }

    /// The scanner against the definition on adversarial fragment soup, whole, at an
    /// offset inside a larger buffer, and fed block by block.
    #[test]
    fn call_id_scanner_matches_the_definition(
        payload in prop_oneof![noisy_payload(), sip_case().prop_map(|c| c.payload)],
        pre in bytes(16),
        post in bytes(16),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let want = ref_call_id(&payload);
        prop_assert_eq!(find_call_id(&payload[..], 0, payload.len()), want, "payload {:?}", String::from_utf8_lossy(&payload));
        let mut big = pre.clone();
        big.extend_from_slice(&payload);
        big.extend_from_slice(&post);
        prop_assert_eq!(find_call_id(&big[..], pre.len(), payload.len()), want);
        let mut sc = CallIdScanner::new();
        let mut pos = 0;
        for piece in split_at_points(&payload, &cuts) {
            for b in piece {
                if !sc.is_done() {
                    sc.feed(*b, pos);
                }
                pos += 1;
            }
        }
        prop_assert_eq!(sc.result(), want);
    }

    #[test]
    fn key_hash_is_the_incremental_hash_of_at_most_128_bytes(key in bytes(300)) {
        let mut h = KeyHasher::new();
        for b in key.iter().take(KEY_HASH_LIMIT) {
            h.write_byte(*b);
        }
        prop_assert_eq!(key_hash(&key), h.finish());
        if key.len() > KEY_HASH_LIMIT {
            prop_assert_eq!(key_hash(&key), key_hash(&key[..KEY_HASH_LIMIT]));
        }
    }
}

/// A fixed-seed xorshift generator, so the distribution test is reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Bucket counts of `hash & 15` and of the top 4 bits: each within ±15% of the mean, and a
/// chi-square (15 degrees of freedom) below 37.7 (p = 0.001).
fn assert_spread(what: &str, hashes: &[u64]) {
    for (name, bucket) in [
        ("low bits", (|h: u64| (h & 15) as usize) as fn(u64) -> usize),
        ("high bits", |h: u64| (h >> 60) as usize),
    ] {
        let mut n = [0u32; 16];
        for h in hashes {
            n[bucket(*h)] += 1;
        }
        let mean = hashes.len() as f64 / 16.0;
        let chi2: f64 = n.iter().map(|c| (*c as f64 - mean).powi(2) / mean).sum();
        for c in n {
            assert!(
                (c as f64 - mean).abs() < mean * 0.15,
                "{what}, {name}: uneven buckets {n:?}"
            );
        }
        assert!(
            chi2 < 37.7,
            "{what}, {name}: chi-square {chi2:.1} for {n:?}"
        );
    }
}

#[test]
fn key_hash_spreads_keys_over_16_buckets() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let random: Vec<u64> = (0..10_000)
        .map(|_| {
            let len = 1 + (rng.next() % 64) as usize;
            let key: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            key_hash(&key)
        })
        .collect();
    assert_spread("random keys", &random);
    // Realistic Call-IDs differ in a few characters only.
    let sequential: Vec<u64> = (0..10_000)
        .map(|i| key_hash(format!("a84b4c76e66710-{i}@pc33.atlanta.example.com").as_bytes()))
        .collect();
    assert_spread("sequential Call-IDs", &sequential);
    // The hash must be able to fail this test: a constant hash does.
    let constant = std::panic::catch_unwind(|| assert_spread("constant", &[7u64; 10_000]));
    assert!(constant.is_err());
}
