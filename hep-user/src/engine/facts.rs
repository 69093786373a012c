//! [`Facts`]: what routes match on, read from a packet in one pass over its chunks with
//! hep-common's [`FactsWalk`], the very code the XDP program runs (protocol type, capture
//! id, node name, inner addresses and ports, auth key, the correlation key's place). The
//! engine adds only what the kernel never needs: whole values as slices, the compressed
//! payload for dedup, the correlation key's bytes for correlation matches, and the key of a
//! compressed SIP payload (inflated, bounded: [`super::inflate`]).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;

use hep_common::abi::{addr16, ip_of};
use hep_common::chunk;
use hep_common::correlation::{flow_key, key_hash};
use hep_common::facts::{FactsWalk, KeySpan, key_span};
use hep_common::v3::Hep3;

/// The matchable facts of one HEPv3 packet.
pub struct Facts<'a> {
    /// The packet.
    pub packet: Hep3<'a>,
    /// The HEP sender (socket address), canonical (IPv4-mapped IPv6 unmapped).
    pub sender: IpAddr,
    /// Chunk 0x000b.
    pub proto_type: Option<u8>,
    /// Chunk 0x000c.
    pub capture_id: Option<u32>,
    /// Chunk 0x0013.
    pub node_name: Option<&'a [u8]>,
    /// Chunk 0x0003, else 0x0005; canonical (an IPv4-mapped IPv6 address is IPv4, as the
    /// kernel's 16-byte form makes it).
    pub inner_src: Option<IpAddr>,
    /// Chunk 0x0004, else 0x0006; canonical.
    pub inner_dst: Option<IpAddr>,
    /// Chunk 0x0007.
    pub src_port: Option<u16>,
    /// Chunk 0x0008.
    pub dst_port: Option<u16>,
    /// Chunk 0x000e.
    pub auth_key: Option<&'a [u8]>,
    /// The captured payload (0x000f, else 0x0010), for dedup.
    pub payload: &'a [u8],
    /// The SIP first line (`hep_common::sip`): method or status.
    pub sip: hep_common::sip::FirstLine,
    key_source: KeySpan,
    key: OnceCell<Option<Cow<'a, [u8]>>>,
    key_hash: OnceCell<u64>,
}

impl<'a> Facts<'a> {
    /// Reads the facts of `packet`, received from `sender`.
    pub fn new(packet: Hep3<'a>, sender: IpAddr) -> Self {
        let bytes = packet.as_bytes();
        let span = |s: Option<(usize, usize)>| s.and_then(|(off, len)| bytes.get(off..off + len));
        let mut walk = FactsWalk::new(addr16(sender));
        for c in packet.chunks() {
            walk.on_chunk(bytes, &c.header);
        }
        // The key hash is computed on first use (`key_hash`), not here.
        let f = walk.finish(0);
        let plain = span(walk.payload_span());
        Facts {
            packet,
            sender: sender.to_canonical(),
            proto_type: f.proto_type,
            capture_id: f.capture_id,
            node_name: span(walk.node_name_span()),
            inner_src: f.inner_src.map(ip_of),
            inner_dst: f.inner_dst.map(ip_of),
            src_port: f.src_port,
            dst_port: f.dst_port,
            auth_key: span(walk.auth_span()),
            payload: plain
                .or_else(|| packet.generic(chunk::COMPRESSED_PAYLOAD))
                .unwrap_or(&[]),
            sip: walk.sip_first_line(bytes),
            key_source: walk.key_source(),
            key: OnceCell::new(),
            key_hash: OnceCell::new(),
        }
    }

    /// The correlation key (computed on first use; a compressed SIP payload is inflated,
    /// its first 2 KiB at most).
    pub fn key(&self) -> Option<&[u8]> {
        self.key
            .get_or_init(|| {
                let bytes = self.packet.as_bytes();
                match self.key_source {
                    KeySpan::Compressed { offset, len } => bytes
                        .get(offset..offset + len)
                        .and_then(super::inflate::compressed_call_id)
                        .map(Cow::Owned),
                    span => key_span(bytes, span)
                        .and_then(|(off, len)| bytes.get(off..off + len))
                        .map(Cow::Borrowed),
                }
            })
            .as_deref()
    }

    /// The correlation key hash (computed on first use: sampling, dedup and hash mode
    /// share it); a packet without a key hashes as its flow key (the inner endpoints,
    /// `hep_common::correlation::flow_key`).
    pub fn key_hash(&self) -> u64 {
        *self.key_hash.get_or_init(|| match self.key() {
            Some(k) => key_hash(k),
            None => key_hash(&flow_key(
                self.inner_src.map(addr16),
                self.src_port,
                self.inner_dst.map(addr16),
                self.dst_port,
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hep_common::chunk::ChunkId;
    use hep_common::v3::{Hep3Message, Payload, RawChunk};

    use super::*;

    /// The engine's facts equal the codec's accessors (first occurrence wins, IPv4 before
    /// IPv6, the correlation key of `Hep3::correlation_key`), value for value.
    #[test]
    fn facts_equal_the_codec_accessors() {
        let sip = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: k-1@h\r\n\r\n";
        let extra = [
            RawChunk {
                id: ChunkId::generic(chunk::NODE_NAME),
                value: b"edge-1",
            },
            RawChunk {
                id: ChunkId::generic(chunk::PROTO_TYPE),
                value: &[5],
            },
            RawChunk {
                id: ChunkId::generic(chunk::DST_IPV6),
                value: &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            },
        ];
        let m = Hep3Message {
            ip_proto: 17,
            src_ip: Ipv4Addr::new(198, 18, 0, 1).into(),
            dst_ip: Ipv4Addr::new(198, 18, 0, 2).into(),
            src_port: 5060,
            dst_port: 5080,
            ts_sec: 1,
            ts_usec: 2,
            proto_type: 1,
            capture_id: 77,
            auth_key: Some(b"secret"),
            correlation_id: None,
            vlan_id: None,
            node_name: None,
            extra: &extra,
            payload: Payload::Plain(sip),
        };
        let mut buf = [0u8; 512];
        let n = m.encode(&mut buf).expect("encode");
        let p = Hep3::parse(&buf[..n]).expect("parse");
        let f = Facts::new(p, "::ffff:127.0.0.1".parse().expect("addr"));
        assert_eq!(f.sender, IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(f.proto_type, Some(1));
        assert_eq!(f.capture_id, Some(77));
        assert_eq!(f.node_name, Some(&b"edge-1"[..]));
        assert_eq!(f.inner_src, Some(Ipv4Addr::new(198, 18, 0, 1).into()));
        // IPv4 chunks win over IPv6 ones.
        assert_eq!(f.inner_dst, Some(Ipv4Addr::new(198, 18, 0, 2).into()));
        assert_eq!((f.src_port, f.dst_port), (Some(5060), Some(5080)));
        assert_eq!(f.auth_key, Some(&b"secret"[..]));
        assert_eq!(f.payload, &sip[..]);
        assert_eq!(f.key(), Some(&b"k-1@h"[..]));
        assert_eq!(f.key(), p.correlation_key().map(|k| k.bytes));
        assert_eq!(f.key_hash(), key_hash(b"k-1@h"));

        // IPv6 inner addresses; an IPv4-mapped one is IPv4, as in the kernel.
        let m = Hep3Message {
            src_ip: "::ffff:198.18.0.9"
                .parse::<Ipv6Addr>()
                .expect("addr")
                .into(),
            dst_ip: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(),
            extra: &[],
            auth_key: None,
            payload: Payload::Compressed(b"zz"),
            ..m
        };
        let n = m.encode(&mut buf).expect("encode");
        let p = Hep3::parse(&buf[..n]).expect("parse");
        let f = Facts::new(p, Ipv6Addr::LOCALHOST.into());
        assert_eq!(f.inner_src, Some(Ipv4Addr::new(198, 18, 0, 9).into()));
        assert_eq!(
            f.inner_dst,
            Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into())
        );
        assert_eq!(f.payload, b"zz");
        assert_eq!((f.auth_key, f.node_name), (None, None));
        // No key: the flow key of the inner endpoints (the IPv4-mapped source as IPv4,
        // whichever chunk carried it, as in the kernel).
        let mut flow = [0u8; 36];
        flow[10..16].copy_from_slice(&[0xff, 0xff, 198, 18, 0, 9]);
        flow[16..18].copy_from_slice(&5060u16.to_be_bytes());
        flow[18..34].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        flow[34..36].copy_from_slice(&5080u16.to_be_bytes());
        assert_eq!((f.key(), f.key_hash()), (None, key_hash(&flow)));
    }

    /// A SIP packet whose payload is compressed: the engine inflates it and finds the
    /// Call-ID (the kernel passes such packets up when the route needs the key).
    #[test]
    fn a_compressed_sip_payload_has_its_call_id() {
        use std::io::Write;
        let sip = b"INVITE sip:b@x SIP/2.0\r\nCall-ID: zipped-7@h\r\n\r\n";
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(sip).expect("deflate");
        let z = e.finish().expect("deflate");
        let m = Hep3Message {
            ip_proto: 17,
            src_ip: Ipv4Addr::new(198, 18, 0, 1).into(),
            dst_ip: Ipv4Addr::new(198, 18, 0, 2).into(),
            src_port: 5060,
            dst_port: 5080,
            ts_sec: 1,
            ts_usec: 2,
            proto_type: 1,
            capture_id: 77,
            auth_key: None,
            correlation_id: None,
            vlan_id: None,
            node_name: None,
            extra: &[],
            payload: Payload::Compressed(&z),
        };
        let mut buf = [0u8; 512];
        let n = m.encode(&mut buf).expect("encode");
        let p = Hep3::parse(&buf[..n]).expect("parse");
        let f = Facts::new(p, Ipv4Addr::LOCALHOST.into());
        assert_eq!(f.key(), Some(&b"zipped-7@h"[..]));
        assert_eq!(f.key_hash(), key_hash(b"zipped-7@h"));
    }
}
