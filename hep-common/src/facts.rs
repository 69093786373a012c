//! A packet's route facts ([`KernelFacts`]): what the route tables match on, read with the
//! shared walker. One definition for both paths: the XDP program drives [`FactsWalk`] and
//! [`hash_range`] from `bpf_loop` callbacks, the daemon's engine through [`facts`] and
//! [`FactsWalk`] over a slice, so the two cannot disagree about a packet.

use crate::abi::{Addr16, MAX_NODE_NAME, map_v4};
use crate::bytes::ByteSource;
use crate::chunk;
use crate::correlation::{KEY_HASH_LIMIT, KeyHasher};
use crate::error::HepError;
use crate::walker::ChunkWalker;

/// What the kernel read from a packet for route evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelFacts {
    /// The HEP sender (outer source address).
    pub sender: Addr16,
    /// Chunk 0x000b.
    pub proto_type: Option<u8>,
    /// Chunk 0x000c.
    pub capture_id: Option<u32>,
    /// Chunks 0x0003/0x0005 (first IPv4, else IPv6).
    pub inner_src: Option<Addr16>,
    /// Chunks 0x0004/0x0006.
    pub inner_dst: Option<Addr16>,
    /// Chunk 0x0007.
    pub src_port: Option<u16>,
    /// Chunk 0x0008.
    pub dst_port: Option<u16>,
    /// Chunk 0x0013: its length (`None`: no such chunk) and first [`MAX_NODE_NAME`] bytes
    /// (a longer name equals no route's name).
    pub node_name_len: Option<u16>,
    /// See `node_name_len`; bytes past the length are zero.
    pub node_name: [u8; MAX_NODE_NAME],
    /// [`crate::correlation::key_hash`] of the correlation key, or of the
    /// [`crate::correlation::flow_key`] when the packet has none.
    pub key_hash: u64,
    /// The key lies in a compressed payload (SIP with chunk 0x0010 and no 0x000f): only
    /// userspace can read it, so a route that needs the key passes the packet up
    /// ([`crate::eval::decide`]); `key_hash` is then not the packet's.
    pub key_in_userspace: bool,
    /// The SIP first line ([`crate::sip`]): a request's method index, a response's status.
    pub sip: crate::sip::FirstLine,
}

/// Reads the [`KernelFacts`] of the HEPv3 packet in `src` (validated on the way, with the
/// shared walker), received from `sender`. Generic over [`ByteSource`] so the XDP program
/// (packet bytes) and host code (slices) compute the same facts, the correlation key hash
/// included ([`crate::correlation`]'s definition: first non-empty 0x0011, else for SIP the
/// Call-ID of the first plain payload, else the flow key; a key in a compressed payload is
/// left to userspace: [`KernelFacts::key_in_userspace`]).
///
/// The steps are public ([`FactsWalk`]) so the kernel can run the chunk walk and the
/// Call-ID scan in `bpf_loop` callbacks with the very same code.
#[inline(always)]
pub fn facts<S: ByteSource + ?Sized>(src: &S, sender: Addr16) -> Result<KernelFacts, HepError> {
    let mut walk = FactsWalk::new(sender);
    let mut w = ChunkWalker::new(src)?;
    let mut n = 0;
    while n < crate::chunk::MAX_CHUNKS + 1 {
        n += 1;
        let Some(c) = w.next_chunk()? else { break };
        walk.on_chunk(src, &c);
    }
    Ok(walk.conclude(src))
}

/// Where the correlation key's bytes are in `src`: `(offset, len)`, `None` when the packet
/// has none or it lies in a compressed payload ([`crate::correlation`]'s definition: a
/// non-empty 0x0011 value, else the SIP Call-ID the scan finds in the payload). The kernel
/// runs the same scan in `bpf_loop` callbacks ([`crate::correlation::CallIdScanner`]).
#[inline(always)]
pub fn key_span<S: ByteSource + ?Sized>(src: &S, key: KeySpan) -> Option<(usize, usize)> {
    match key {
        KeySpan::None | KeySpan::Compressed { .. } => None,
        KeySpan::Bytes { offset, len } => Some((offset, len)),
        KeySpan::CallIdIn { offset, len } => {
            crate::correlation::find_call_id(src, offset, len).map(|(s, e)| (offset + s, e - s))
        }
    }
}

/// Feeds the bytes `[off, off + min(len, KEY_HASH_LIMIT))` of `src` to `h`.
#[inline(always)]
pub fn hash_range<S: ByteSource + ?Sized>(src: &S, off: usize, len: usize, h: &mut KeyHasher) {
    let n = if len < KEY_HASH_LIMIT {
        len
    } else {
        KEY_HASH_LIMIT
    };
    let mut i = 0;
    while i < KEY_HASH_LIMIT {
        if i >= n {
            break;
        }
        if let Some([b]) = src.load::<1>(off + i) {
            h.write_byte(b);
        }
        i += 1;
    }
}

/// [`hash_range`] by 8-byte blocks (at most `KEY_HASH_LIMIT / 8`), then the last 0 – 7
/// bytes: the same bytes into the same hasher, in far fewer loop iterations (the kernel's
/// verifier walks each one).
#[inline(always)]
pub fn hash_range_blocks<S: ByteSource + ?Sized>(
    src: &S,
    off: usize,
    len: usize,
    h: &mut KeyHasher,
) {
    let n = if len < KEY_HASH_LIMIT {
        len
    } else {
        KEY_HASH_LIMIT
    };
    let mut done = 0;
    let mut b = 0;
    while b < KEY_HASH_LIMIT / 8 {
        if done + 8 > n {
            break;
        }
        let Some(block) = src.load::<8>(off + done) else {
            return;
        };
        let mut i = 0;
        while i < 8 {
            h.write_byte(block[i]);
            i += 1;
        }
        done += 8;
        b += 1;
    }
    let mut i = 0;
    while i < 7 {
        if done >= n {
            break;
        }
        let Some([byte]) = src.load::<1>(off + done) else {
            return;
        };
        h.write_byte(byte);
        done += 1;
        i += 1;
    }
}

/// Where a packet's correlation key is, after the chunk walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpan {
    /// No key: the flow key ([`FactsWalk::flow_key_hash`]) is hashed.
    None,
    /// The key is these bytes (a non-empty chunk 0x0011).
    Bytes {
        /// Offset in the packet.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// The key is the Call-ID found in this SIP payload, if any.
    CallIdIn {
        /// Offset of the payload in the packet.
        offset: usize,
        /// Payload length.
        len: usize,
    },
    /// The key is the Call-ID found in this compressed SIP payload (chunk 0x0010) once
    /// inflated, if any: userspace only.
    Compressed {
        /// Offset of the compressed payload in the packet.
        offset: usize,
        /// Its length.
        len: usize,
    },
}

/// The state of the facts walk: one [`FactsWalk::on_chunk`] per chunk, in wire order.
#[derive(Debug, Clone, Copy)]
pub struct FactsWalk {
    f: KernelFacts,
    corr: Option<(usize, usize)>,
    payload: Option<(usize, usize)>,
    compressed: Option<(usize, usize)>,
    src6: Option<Addr16>,
    dst6: Option<Addr16>,
    auth: Option<(usize, usize)>,
    node: Option<(usize, usize)>,
}

impl FactsWalk {
    /// Before the first chunk.
    #[inline(always)]
    pub fn new(sender: Addr16) -> Self {
        FactsWalk {
            f: KernelFacts {
                sender,
                ..KernelFacts::default()
            },
            corr: None,
            payload: None,
            compressed: None,
            src6: None,
            dst6: None,
            auth: None,
            node: None,
        }
    }

    /// Takes what the facts need from chunk `c` (first occurrences win).
    #[inline(always)]
    pub fn on_chunk<S: ByteSource + ?Sized>(&mut self, src: &S, c: &crate::walker::ChunkHeader) {
        if c.vendor != crate::chunk::VENDOR_GENERIC {
            return;
        }
        let off = c.value_offset();
        let f = &mut self.f;
        match c.kind {
            chunk::PROTO_TYPE if f.proto_type.is_none() => {
                f.proto_type = src.load::<1>(off).map(|b| b[0])
            }
            chunk::CAPTURE_ID if f.capture_id.is_none() => {
                f.capture_id = src.load::<4>(off).map(u32::from_be_bytes)
            }
            chunk::SRC_PORT if f.src_port.is_none() => {
                f.src_port = src.load::<2>(off).map(u16::from_be_bytes)
            }
            chunk::DST_PORT if f.dst_port.is_none() => {
                f.dst_port = src.load::<2>(off).map(u16::from_be_bytes)
            }
            chunk::SRC_IPV4 if f.inner_src.is_none() => {
                f.inner_src = src.load::<4>(off).map(map_v4)
            }
            chunk::DST_IPV4 if f.inner_dst.is_none() => {
                f.inner_dst = src.load::<4>(off).map(map_v4)
            }
            chunk::SRC_IPV6 if self.src6.is_none() => self.src6 = src.load::<16>(off),
            chunk::DST_IPV6 if self.dst6.is_none() => self.dst6 = src.load::<16>(off),
            chunk::CORRELATION_ID if self.corr.is_none() => self.corr = Some((off, c.value_len())),
            chunk::PAYLOAD if self.payload.is_none() => self.payload = Some((off, c.value_len())),
            chunk::COMPRESSED_PAYLOAD if self.compressed.is_none() => {
                self.compressed = Some((off, c.value_len()))
            }
            chunk::AUTH_KEY if self.auth.is_none() => self.auth = Some((off, c.value_len())),
            chunk::NODE_NAME if f.node_name_len.is_none() => {
                let len = c.value_len();
                f.node_name_len = Some(len as u16);
                self.node = Some((off, len));
                let mut j = 0;
                while j < MAX_NODE_NAME {
                    if j < len
                        && let Some([b]) = src.load::<1>(off + j)
                    {
                        f.node_name[j] = b;
                    }
                    j += 1;
                }
            }
            _ => {}
        }
    }

    /// Where the auth key (the first chunk 0x000e, as [`crate::v3::Hep3::auth_key`]) is:
    /// `(offset, len)`, after the last chunk.
    #[inline(always)]
    pub fn auth_span(&self) -> Option<(usize, usize)> {
        self.auth
    }

    /// Where the node name (the first chunk 0x0013) is: `(offset, len)`, whole (the
    /// kernel's [`KernelFacts::node_name`] keeps only its first [`MAX_NODE_NAME`] bytes).
    #[inline(always)]
    pub fn node_name_span(&self) -> Option<(usize, usize)> {
        self.node
    }

    /// Where the first plain payload (chunk 0x000f) is: `(offset, len)`.
    #[inline(always)]
    pub fn payload_span(&self) -> Option<(usize, usize)> {
        self.payload
    }

    /// The SIP first line of the packet ([`crate::sip`]'s definition: SIP with a plain
    /// payload), after the last chunk.
    #[inline(always)]
    pub fn sip_first_line<S: ByteSource + ?Sized>(&self, src: &S) -> crate::sip::FirstLine {
        match (self.f.proto_type, self.payload) {
            (Some(crate::chunk::proto::SIP), Some((offset, len))) => {
                crate::sip::first_line(src, offset, len)
            }
            _ => crate::sip::FirstLine::default(),
        }
    }

    /// Where the first compressed payload (chunk 0x0010) is: `(offset, len)`.
    #[inline(always)]
    pub fn compressed_span(&self) -> Option<(usize, usize)> {
        self.compressed
    }

    /// Where the correlation key is (after the last chunk).
    #[inline(always)]
    pub fn key_source(&self) -> KeySpan {
        match self.corr {
            Some((offset, len)) if len > 0 => KeySpan::Bytes { offset, len },
            _ if self.f.proto_type != Some(crate::chunk::proto::SIP) => KeySpan::None,
            _ => match (self.payload, self.compressed) {
                (Some((offset, len)), _) => KeySpan::CallIdIn { offset, len },
                (None, Some((offset, len))) => KeySpan::Compressed { offset, len },
                (None, None) => KeySpan::None,
            },
        }
    }

    /// The hash of the packet's flow key ([`crate::correlation::flow_key`]), its key when
    /// it has no correlation key: the inner addresses (IPv4 first, as in the facts) and
    /// ports, after the last chunk.
    #[inline(always)]
    pub fn flow_key_hash(&self) -> u64 {
        // A reference: a copy of the facts would take the kernel's stack.
        let f = &self.f;
        let key = crate::correlation::flow_key(
            f.inner_src.or(self.src6),
            f.src_port,
            f.inner_dst.or(self.dst6),
            f.dst_port,
        );
        crate::correlation::key_hash(&key)
    }

    /// The facts after the last chunk, host side: the SIP first line, the key hash
    /// (the key's bytes, else the flow key), then [`FactsWalk::finish`].
    #[inline(always)]
    pub fn conclude<S: ByteSource + ?Sized>(self, src: &S) -> KernelFacts {
        let sip = self.sip_first_line(src);
        let key_hash = match key_span(src, self.key_source()) {
            Some((off, len)) => {
                let mut h = KeyHasher::new();
                hash_range(src, off, len, &mut h);
                h.finish()
            }
            None => self.flow_key_hash(),
        };
        let mut f = self.finish(key_hash);
        f.sip = sip;
        f
    }

    /// The facts, with the key hash computed by the caller.
    #[inline(always)]
    pub fn finish(self, key_hash: u64) -> KernelFacts {
        let mut f = self.f;
        if f.inner_src.is_none() {
            f.inner_src = self.src6;
        }
        if f.inner_dst.is_none() {
            f.inner_dst = self.dst6;
        }
        f.key_hash = key_hash;
        f.key_in_userspace = matches!(self.key_source(), KeySpan::Compressed { .. });
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_follow_the_shared_definitions() {
        use crate::v3::{Hep3Message, Payload};
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let sip = b"INVITE sip:b@x SIP/2.0\r\nVia: v\r\ni: abc@host \r\n\r\n";
        let mut buf = [0u8; 512];
        for (corr, proto, v6) in [
            (None, 1u8, false),
            (Some(&b"corr-1"[..]), 5, true),
            (Some(&b""[..]), 1, false),
            (None, 100, false),
        ] {
            let (s, d): (IpAddr, IpAddr) = if v6 {
                (
                    Ipv6Addr::LOCALHOST.into(),
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).into(),
                )
            } else {
                (
                    Ipv4Addr::new(198, 18, 0, 1).into(),
                    Ipv4Addr::new(198, 18, 0, 2).into(),
                )
            };
            let m = Hep3Message {
                ip_proto: 17,
                src_ip: s,
                dst_ip: d,
                src_port: 5060,
                dst_port: 5062,
                ts_sec: 1,
                ts_usec: 2,
                proto_type: proto,
                capture_id: 2001,
                auth_key: None,
                correlation_id: corr,
                vlan_id: None,
                node_name: None,
                extra: &[],
                payload: Payload::Plain(sip),
            };
            let n = m.encode(&mut buf).unwrap();
            let p = crate::v3::Hep3::parse(&buf[..n]).unwrap();
            let f = facts(&buf[..n], map_v4([127, 0, 0, 1])).unwrap();
            let want = |ip: IpAddr| match ip {
                IpAddr::V4(a) => map_v4(a.octets()),
                IpAddr::V6(a) => a.octets(),
            };
            let want_hash = match p.correlation_key() {
                Some(k) => crate::correlation::key_hash(k.bytes),
                None => crate::correlation::key_hash(&crate::correlation::flow_key(
                    Some(want(s)),
                    Some(5060),
                    Some(want(d)),
                    Some(5062),
                )),
            };
            assert_eq!(f.key_hash, want_hash);
            assert!(!f.key_in_userspace);
            assert_eq!(f.proto_type, Some(proto));
            assert_eq!(f.capture_id, Some(2001));
            assert_eq!((f.src_port, f.dst_port), (Some(5060), Some(5062)));
            assert_eq!(f.inner_src, Some(want(s)));
            assert_eq!(f.inner_dst, Some(want(d)));
        }
        assert!(facts(&b"HEP3\x00\x07"[..], [0; 16]).is_err());
    }

    /// The block-wise hash is the byte-wise one, for every length and offset.
    #[test]
    fn the_block_hash_is_the_byte_hash() {
        let mut data = [0u8; 300];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        for off in [0usize, 1, 5, 17] {
            for len in 0..=KEY_HASH_LIMIT + 20 {
                let (mut a, mut b) = (KeyHasher::new(), KeyHasher::new());
                hash_range(&data[..], off, len, &mut a);
                hash_range_blocks(&data[..], off, len, &mut b);
                assert_eq!(a.finish(), b.finish(), "off {off} len {len}");
            }
        }
    }

    /// SIP whose only payload is compressed: the key is userspace's to find; other
    /// protocols with a compressed payload have no key (the flow key is hashed).
    #[test]
    fn a_compressed_sip_payload_leaves_the_key_to_userspace() {
        use crate::v3::{Hep3Message, Payload};
        use core::net::Ipv4Addr;
        let mut buf = [0u8; 256];
        for (proto, in_userspace) in [(1u8, true), (5, false)] {
            let m = Hep3Message {
                ip_proto: 17,
                src_ip: Ipv4Addr::new(198, 18, 0, 1).into(),
                dst_ip: Ipv4Addr::new(198, 18, 0, 2).into(),
                src_port: 5060,
                dst_port: 5062,
                ts_sec: 1,
                ts_usec: 2,
                proto_type: proto,
                capture_id: 1,
                auth_key: None,
                correlation_id: None,
                vlan_id: None,
                node_name: None,
                extra: &[],
                payload: Payload::Compressed(b"\x78\x9c..."),
            };
            let n = m.encode(&mut buf).unwrap();
            let f = facts(&buf[..n], [0; 16]).unwrap();
            assert_eq!(f.key_in_userspace, in_userspace, "proto {proto}");
            if !in_userspace {
                let flow = crate::correlation::flow_key(
                    Some(map_v4([198, 18, 0, 1])),
                    Some(5060),
                    Some(map_v4([198, 18, 0, 2])),
                    Some(5062),
                );
                assert_eq!(f.key_hash, crate::correlation::key_hash(&flow));
            }
        }
    }
}
