//! [`Facts`]: what routes match on, read from a packet in one pass over its chunks.

use std::cell::OnceCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hep_common::chunk::{self, VENDOR_GENERIC};
use hep_common::correlation::{CorrelationKey, key_from_chunks, key_hash};
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
    /// Chunk 0x0003 or 0x0005.
    pub inner_src: Option<IpAddr>,
    /// Chunk 0x0004 or 0x0006.
    pub inner_dst: Option<IpAddr>,
    /// Chunk 0x0007.
    pub src_port: Option<u16>,
    /// Chunk 0x0008.
    pub dst_port: Option<u16>,
    /// Chunk 0x000e.
    pub auth_key: Option<&'a [u8]>,
    /// The captured payload (0x000f, else 0x0010), for dedup.
    pub payload: &'a [u8],
    correlation_id: Option<&'a [u8]>,
    plain_payload: Option<&'a [u8]>,
    key: OnceCell<Option<CorrelationKey<'a>>>,
}

impl<'a> Facts<'a> {
    /// Reads the facts of `packet`, received from `sender`.
    pub fn new(packet: Hep3<'a>, sender: IpAddr) -> Self {
        let mut f = Facts {
            packet,
            sender: sender.to_canonical(),
            proto_type: None,
            capture_id: None,
            node_name: None,
            inner_src: None,
            inner_dst: None,
            src_port: None,
            dst_port: None,
            auth_key: None,
            payload: &[],
            correlation_id: None,
            plain_payload: None,
            key: OnceCell::new(),
        };
        let mut compressed: Option<&[u8]> = None;
        let mut plain: Option<&[u8]> = None;
        for c in packet.chunks() {
            if c.header.vendor != VENDOR_GENERIC {
                continue;
            }
            let v = c.value;
            // First occurrence wins, as in the codec's accessors.
            match c.header.kind {
                chunk::PROTO_TYPE if f.proto_type.is_none() => f.proto_type = v.first().copied(),
                chunk::CAPTURE_ID if f.capture_id.is_none() => {
                    f.capture_id = v.try_into().ok().map(u32::from_be_bytes)
                }
                chunk::NODE_NAME if f.node_name.is_none() => f.node_name = Some(v),
                chunk::AUTH_KEY if f.auth_key.is_none() => f.auth_key = Some(v),
                chunk::SRC_PORT if f.src_port.is_none() => {
                    f.src_port = v.try_into().ok().map(u16::from_be_bytes)
                }
                chunk::DST_PORT if f.dst_port.is_none() => {
                    f.dst_port = v.try_into().ok().map(u16::from_be_bytes)
                }
                chunk::SRC_IPV4 if f.inner_src.is_none() => {
                    f.inner_src = <[u8; 4]>::try_from(v)
                        .ok()
                        .map(|a| Ipv4Addr::from(a).into())
                }
                chunk::DST_IPV4 if f.inner_dst.is_none() => {
                    f.inner_dst = <[u8; 4]>::try_from(v)
                        .ok()
                        .map(|a| Ipv4Addr::from(a).into())
                }
                chunk::PAYLOAD if plain.is_none() => plain = Some(v),
                chunk::CORRELATION_ID if f.correlation_id.is_none() => f.correlation_id = Some(v),
                chunk::COMPRESSED_PAYLOAD if compressed.is_none() => compressed = Some(v),
                _ => {}
            }
        }
        // IPv6 addresses count only when there is no IPv4 one, as in `Hep3::src_ip`.
        if f.inner_src.is_none() {
            f.inner_src = packet.src_ipv6().map(|a: Ipv6Addr| a.into());
        }
        if f.inner_dst.is_none() {
            f.inner_dst = packet.dst_ipv6().map(|a: Ipv6Addr| a.into());
        }
        f.payload = plain.or(compressed).unwrap_or(&[]);
        f.plain_payload = plain;
        f
    }

    /// The correlation key (computed on first use).
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
            .get_or_init(|| {
                key_from_chunks(self.correlation_id, self.proto_type, self.plain_payload)
            })
            .map(|k| k.bytes)
    }

    /// The correlation key hash; a packet without a key hashes as the empty key.
    pub fn key_hash(&self) -> u64 {
        key_hash(self.key().unwrap_or(&[]))
    }
}
