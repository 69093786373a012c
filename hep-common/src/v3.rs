//! HEPv3: a validated zero-copy view ([`Hep3`]), a chunk writer ([`ChunkWriter`]) and an
//! encoder from typed fields ([`Hep3Message`]).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::chunk::{
    self, CHUNK_HEADER_LEN, ChunkId, HEADER_LEN, MAGIC, MAX_CHUNKS, MAX_PACKET_LEN,
};
use crate::correlation::{self, CorrelationKey};
use crate::error::HepError;
use crate::walker::ChunkHeader;

/// A chunk of a parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Header and position.
    pub header: ChunkHeader,
    /// The value bytes.
    pub value: &'a [u8],
}

impl Chunk<'_> {
    /// The chunk's id.
    pub const fn id(&self) -> ChunkId {
        self.header.id()
    }
}

/// A HEPv3 packet that passed [`crate::walker::ChunkWalker`] validation, borrowed from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hep3<'a> {
    buf: &'a [u8],
    chunk_count: usize,
}

/// Iterator over the chunks of a [`Hep3`], in wire order.
pub struct Chunks<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        // The packet was validated by `Hep3::parse`; the bounds checks below only make sure
        // no input can cause a panic.
        let h = self
            .buf
            .get(self.offset..self.offset.checked_add(CHUNK_HEADER_LEN)?)?;
        let header = ChunkHeader {
            offset: self.offset,
            vendor: u16::from_be_bytes([h[0], h[1]]),
            kind: u16::from_be_bytes([h[2], h[3]]),
            len: u16::from_be_bytes([h[4], h[5]]),
        };
        if (header.len as usize) < CHUNK_HEADER_LEN {
            return None;
        }
        let value = self.buf.get(header.value_offset()..header.end())?;
        self.offset = header.end();
        Some(Chunk { header, value })
    }
}

macro_rules! accessors {
    ($( $(#[$doc:meta])* $name:ident: $kind:expr => $conv:ident -> $ty:ty ;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> Option<$ty> {
                self.generic($kind).and_then($conv)
            }
        )*
    };
}

fn as_u8(v: &[u8]) -> Option<u8> {
    v.first().copied()
}
fn as_u16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.try_into().ok()?))
}
fn as_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}
fn as_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}
fn as_v4(v: &[u8]) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))
}
fn as_v6(v: &[u8]) -> Option<Ipv6Addr> {
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))
}
fn as_bytes(v: &[u8]) -> Option<&[u8]> {
    Some(v)
}

impl<'a> Hep3<'a> {
    /// Validates `buf` as exactly one HEPv3 packet (see [`crate::walker`] for the rules).
    pub fn parse(buf: &'a [u8]) -> Result<Self, HepError> {
        let chunk_count = crate::walker::validate(buf)?;
        Ok(Hep3 { buf, chunk_count })
    }

    /// The packet bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunk_count
    }

    /// The chunks in wire order.
    pub fn chunks(&self) -> Chunks<'a> {
        Chunks {
            buf: self.buf,
            offset: HEADER_LEN,
        }
    }

    /// The value of the first chunk with this id.
    pub fn get(&self, id: ChunkId) -> Option<&'a [u8]> {
        self.chunks().find(|c| c.id() == id).map(|c| c.value)
    }

    /// The value of the first generic chunk of this type.
    pub fn generic(&self, kind: u16) -> Option<&'a [u8]> {
        self.get(ChunkId::generic(kind))
    }

    /// The captured source address (chunk 0x0003, else 0x0005).
    pub fn src_ip(&self) -> Option<IpAddr> {
        self.src_ipv4()
            .map(IpAddr::V4)
            .or_else(|| self.src_ipv6().map(IpAddr::V6))
    }

    /// The captured destination address (chunk 0x0004, else 0x0006).
    pub fn dst_ip(&self) -> Option<IpAddr> {
        self.dst_ipv4()
            .map(IpAddr::V4)
            .or_else(|| self.dst_ipv6().map(IpAddr::V6))
    }

    /// The correlation key ([`crate::correlation`]): chunk 0x0011, else the SIP Call-ID.
    pub fn correlation_key(&self) -> Option<CorrelationKey<'a>> {
        correlation::key_from_chunks(
            self.correlation_id(),
            self.proto_type(),
            self.generic(chunk::PAYLOAD),
        )
    }

    accessors! {
        /// 0x0001 IP protocol family.
        ip_family: chunk::IP_FAMILY => as_u8 -> u8;
        /// 0x0002 IP protocol id.
        ip_proto: chunk::IP_PROTO => as_u8 -> u8;
        /// 0x0003 IPv4 source.
        src_ipv4: chunk::SRC_IPV4 => as_v4 -> Ipv4Addr;
        /// 0x0004 IPv4 destination.
        dst_ipv4: chunk::DST_IPV4 => as_v4 -> Ipv4Addr;
        /// 0x0005 IPv6 source.
        src_ipv6: chunk::SRC_IPV6 => as_v6 -> Ipv6Addr;
        /// 0x0006 IPv6 destination.
        dst_ipv6: chunk::DST_IPV6 => as_v6 -> Ipv6Addr;
        /// 0x0007 source port.
        src_port: chunk::SRC_PORT => as_u16 -> u16;
        /// 0x0008 destination port.
        dst_port: chunk::DST_PORT => as_u16 -> u16;
        /// 0x0009 timestamp seconds.
        ts_sec: chunk::TS_SEC => as_u32 -> u32;
        /// 0x000a timestamp microseconds.
        ts_usec: chunk::TS_USEC => as_u32 -> u32;
        /// 0x000b capture protocol type.
        proto_type: chunk::PROTO_TYPE => as_u8 -> u8;
        /// 0x000c capture agent id.
        capture_id: chunk::CAPTURE_ID => as_u32 -> u32;
        /// 0x000d keep-alive timer.
        keepalive: chunk::KEEPALIVE => as_u16 -> u16;
        /// 0x000e authentication key.
        auth_key: chunk::AUTH_KEY => as_bytes -> &'a [u8];
        /// 0x000f captured payload.
        payload: chunk::PAYLOAD => as_bytes -> &'a [u8];
        /// 0x0010 compressed payload.
        compressed_payload: chunk::COMPRESSED_PAYLOAD => as_bytes -> &'a [u8];
        /// 0x0011 correlation id.
        correlation_id: chunk::CORRELATION_ID => as_bytes -> &'a [u8];
        /// 0x0012 VLAN id.
        vlan_id: chunk::VLAN_ID => as_u16 -> u16;
        /// 0x0013 node name.
        node_name: chunk::NODE_NAME => as_bytes -> &'a [u8];
        /// 0x0014 source MAC.
        src_mac: chunk::SRC_MAC => as_u64 -> u64;
        /// 0x0015 destination MAC.
        dst_mac: chunk::DST_MAC => as_u64 -> u64;
        /// 0x0016 Ethernet type.
        eth_type: chunk::ETH_TYPE => as_u16 -> u16;
        /// 0x0017 TCP flags.
        tcp_flags: chunk::TCP_FLAGS => as_u8 -> u8;
        /// 0x0018 IP TOS.
        ip_tos: chunk::IP_TOS => as_u8 -> u8;
        /// 0x0020 MOS.
        mos: chunk::MOS => as_u16 -> u16;
        /// 0x0021 R-Factor.
        r_factor: chunk::R_FACTOR => as_u16 -> u16;
        /// 0x0022 GEO location.
        geo_location: chunk::GEO_LOCATION => as_bytes -> &'a [u8];
        /// 0x0023 jitter.
        jitter: chunk::JITTER => as_u32 -> u32;
        /// 0x0024 transaction type.
        transaction_type: chunk::TRANSACTION_TYPE => as_bytes -> &'a [u8];
        /// 0x0025 payload JSON keys.
        payload_json_keys: chunk::PAYLOAD_JSON_KEYS => as_bytes -> &'a [u8];
        /// 0x0026 tags' values.
        tag_values: chunk::TAG_VALUES => as_bytes -> &'a [u8];
        /// 0x0027 type of tag.
        tag_type: chunk::TAG_TYPE => as_u16 -> u16;
        /// 0x0028 event type.
        event_type: chunk::EVENT_TYPE => as_u16 -> u16;
        /// 0x0029 group id.
        group_id: chunk::GROUP_ID => as_bytes -> &'a [u8];
    }
}

/// Writes a HEPv3 packet chunk by chunk into a caller-provided buffer.
///
/// It writes only packets the walker accepts: at most [`MAX_CHUNKS`] chunks, at most
/// [`MAX_PACKET_LEN`] bytes, fixed-width generic types with their width.
pub struct ChunkWriter<'b> {
    out: &'b mut [u8],
    pos: usize,
    count: usize,
}

impl<'b> ChunkWriter<'b> {
    /// Starts a packet; the header is written by [`ChunkWriter::finish`].
    pub fn new(out: &'b mut [u8]) -> Result<Self, HepError> {
        if out.len() < HEADER_LEN {
            return Err(HepError::BufferTooSmall {
                needed: HEADER_LEN,
                have: out.len(),
            });
        }
        Ok(ChunkWriter {
            out,
            pos: HEADER_LEN,
            count: 0,
        })
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Whether no chunk was written yet.
    pub fn is_empty(&self) -> bool {
        self.pos == HEADER_LEN
    }

    /// Appends a chunk. Fixed-width generic types must have their exact width; a packet
    /// holds at most [`MAX_CHUNKS`] chunks.
    pub fn push(&mut self, id: ChunkId, value: &[u8]) -> Result<(), HepError> {
        if let Some(expected) = chunk::fixed_width(id.vendor, id.kind)
            && expected != value.len()
        {
            return Err(HepError::BadChunkWidth {
                offset: self.pos,
                kind: id.kind,
                len: value.len(),
                expected,
            });
        }
        if self.count >= MAX_CHUNKS {
            return Err(HepError::TooManyChunks {
                offset: self.pos,
                max: MAX_CHUNKS,
            });
        }
        let len = CHUNK_HEADER_LEN + value.len();
        let end = self.pos + len;
        if end > MAX_PACKET_LEN {
            return Err(HepError::TooLarge { len: end });
        }
        let Some(dst) = self.out.get_mut(self.pos..end) else {
            return Err(HepError::BufferTooSmall {
                needed: end,
                have: self.out.len(),
            });
        };
        dst[0..2].copy_from_slice(&id.vendor.to_be_bytes());
        dst[2..4].copy_from_slice(&id.kind.to_be_bytes());
        // `end <= MAX_PACKET_LEN` so `len` fits in u16.
        dst[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        dst[6..].copy_from_slice(value);
        self.pos = end;
        self.count += 1;
        Ok(())
    }

    /// Appends a generic chunk.
    pub fn push_generic(&mut self, kind: u16, value: &[u8]) -> Result<(), HepError> {
        self.push(ChunkId::generic(kind), value)
    }

    /// Appends a chunk header and value exactly as found in another packet.
    pub fn push_chunk(&mut self, c: &Chunk<'_>) -> Result<(), HepError> {
        self.push(c.id(), c.value)
    }

    /// Writes the packet header and returns the total length.
    pub fn finish(self) -> Result<usize, HepError> {
        let len = self.pos;
        self.out[0..4].copy_from_slice(&MAGIC);
        // `push` keeps `pos <= MAX_PACKET_LEN`.
        self.out[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(len)
    }
}

/// A chunk given by id and value, for [`Hep3Message::extra`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawChunk<'a> {
    /// Chunk id.
    pub id: ChunkId,
    /// Value bytes.
    pub value: &'a [u8],
}

/// The captured payload: plain (0x000f) or compressed (0x0010).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Chunk 0x000f.
    Plain(&'a [u8]),
    /// Chunk 0x0010 (passed through, never decompressed).
    Compressed(&'a [u8]),
}

/// A HEPv3 message from typed fields.
///
/// [`Hep3Message::encode`] obeys the interop rules of `../shared/HEP.md` §8.3: exact value
/// widths, every chunk Kamailio requires (family, proto, both addresses, both ports, both
/// timestamps, protocol type, capture id, payload), the standard chunk order, payload last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hep3Message<'a> {
    /// IP protocol of the captured packet (17 UDP, 6 TCP, 132 SCTP, ...).
    pub ip_proto: u8,
    /// Captured source address; the family chunk (0x0001) follows from it.
    pub src_ip: IpAddr,
    /// Captured destination address, same family as `src_ip`.
    pub dst_ip: IpAddr,
    /// Captured source port.
    pub src_port: u16,
    /// Captured destination port.
    pub dst_port: u16,
    /// Capture time, seconds.
    pub ts_sec: u32,
    /// Capture time, microseconds.
    pub ts_usec: u32,
    /// Capture protocol type (0x000b).
    pub proto_type: u8,
    /// Capture agent id (0x000c).
    pub capture_id: u32,
    /// Authentication key (0x000e).
    pub auth_key: Option<&'a [u8]>,
    /// Correlation id (0x0011).
    pub correlation_id: Option<&'a [u8]>,
    /// VLAN id (0x0012).
    pub vlan_id: Option<u16>,
    /// Node name (0x0013).
    pub node_name: Option<&'a [u8]>,
    /// Further chunks, written in order before the payload.
    pub extra: &'a [RawChunk<'a>],
    /// The payload, written last.
    pub payload: Payload<'a>,
}

impl Hep3Message<'_> {
    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        let ip = match self.src_ip {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 16,
        };
        let opt = |v: Option<&[u8]>| v.map_or(0, |v| CHUNK_HEADER_LEN + v.len());
        let payload = match self.payload {
            Payload::Plain(p) | Payload::Compressed(p) => p.len(),
        };
        HEADER_LEN
            + 7 * 2
            + (CHUNK_HEADER_LEN + ip) * 2
            + 8 * 2
            + 10 * 2
            + 7
            + 10
            + opt(self.auth_key)
            + opt(self.correlation_id)
            + self.vlan_id.map_or(0, |_| 8)
            + opt(self.node_name)
            + self
                .extra
                .iter()
                .map(|c| CHUNK_HEADER_LEN + c.value.len())
                .sum::<usize>()
            + CHUNK_HEADER_LEN
            + payload
    }

    /// Encodes into `out`, returning the packet length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, HepError> {
        let mut w = ChunkWriter::new(out)?;
        match (self.src_ip, self.dst_ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                w.push_generic(chunk::IP_FAMILY, &[2])?;
                w.push_generic(chunk::IP_PROTO, &[self.ip_proto])?;
                w.push_generic(chunk::SRC_IPV4, &s.octets())?;
                w.push_generic(chunk::DST_IPV4, &d.octets())?;
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                w.push_generic(chunk::IP_FAMILY, &[10])?;
                w.push_generic(chunk::IP_PROTO, &[self.ip_proto])?;
                w.push_generic(chunk::SRC_IPV6, &s.octets())?;
                w.push_generic(chunk::DST_IPV6, &d.octets())?;
            }
            _ => return Err(HepError::MixedFamilies),
        }
        w.push_generic(chunk::SRC_PORT, &self.src_port.to_be_bytes())?;
        w.push_generic(chunk::DST_PORT, &self.dst_port.to_be_bytes())?;
        w.push_generic(chunk::TS_SEC, &self.ts_sec.to_be_bytes())?;
        w.push_generic(chunk::TS_USEC, &self.ts_usec.to_be_bytes())?;
        w.push_generic(chunk::PROTO_TYPE, &[self.proto_type])?;
        w.push_generic(chunk::CAPTURE_ID, &self.capture_id.to_be_bytes())?;
        if let Some(v) = self.auth_key {
            w.push_generic(chunk::AUTH_KEY, v)?;
        }
        if let Some(v) = self.correlation_id {
            w.push_generic(chunk::CORRELATION_ID, v)?;
        }
        if let Some(v) = self.vlan_id {
            w.push_generic(chunk::VLAN_ID, &v.to_be_bytes())?;
        }
        if let Some(v) = self.node_name {
            w.push_generic(chunk::NODE_NAME, v)?;
        }
        for c in self.extra {
            w.push(c.id, c.value)?;
        }
        match self.payload {
            Payload::Plain(p) => w.push_generic(chunk::PAYLOAD, p)?,
            Payload::Compressed(p) => w.push_generic(chunk::COMPRESSED_PAYLOAD, p)?,
        }
        w.finish()
    }
}

/// The IP family byte for an address (2 = IPv4, 10 = IPv6, the Linux AF_* values).
pub const fn family_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 2,
        IpAddr::V6(_) => 10,
    }
}
