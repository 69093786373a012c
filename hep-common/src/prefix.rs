//! The fixed chunk prefixes of the common agents, recognised by one masked comparison
//! instead of a chunk-by-chunk walk.
//!
//! Kamailio's `siptrace`, heplify and hepfwd's own encoder start every HEPv3 packet with
//! the same ten generic chunks in the same order, with fixed widths (`../shared/XDP-COST.md`
//! §4): IP family, IP protocol, source and destination address (IPv4 or IPv6), source and
//! destination port, timestamp seconds and microseconds, protocol type, capture id. Their
//! headers (vendor 0, type, length) are then the same bytes in every packet; only the values
//! differ. [`Prefix`] holds those header bytes as 8-byte words with a mask over them, so a
//! packet is recognised with one load, mask and compare per word (12 for IPv4, 15 for
//! IPv6), and the chunks are handed to [`FactsWalk::on_chunk`] at their known offsets:
//! exactly what the walk would have done, since each header is the one `read_chunk` would
//! have read and accepted (fixed widths as the walker wants them, inside the packet).
//! The walk resumes after the prefix ([`apply`]). A packet that does not match walks from
//! the first chunk, as before.
//!
//! [`facts_with_prefix`] is the host form of what the kernel does; a property test shows it
//! equal to [`crate::facts::facts`] on every input.

use crate::bytes::ByteSource;
use crate::chunk::{
    CAPTURE_ID, CHUNK_HEADER_LEN, DST_IPV4, DST_IPV6, DST_PORT, HEADER_LEN, IP_FAMILY, IP_PROTO,
    PROTO_TYPE, SRC_IPV4, SRC_IPV6, SRC_PORT, TS_SEC, TS_USEC, VENDOR_GENERIC,
};
use crate::facts::FactsWalk;
use crate::walker::ChunkHeader;

/// Chunks in a prefix.
pub const PREFIX_CHUNKS: usize = 10;
/// Words compared for the longest prefix (IPv6: 117 bytes).
pub const PREFIX_WORDS: usize = 15;

/// One prefix: its chunks (type, value length) in order, where it ends, and its header
/// bytes as native-endian 8-byte words from the start of the packet, with their mask
/// (value bytes and the HEP header's length are masked out).
pub struct Prefix {
    /// Type and value length of each chunk, in wire order.
    pub chunks: [(u16, usize); PREFIX_CHUNKS],
    /// Offset right after the last chunk.
    pub end: usize,
    /// Words to compare (`end` rounded up to 8 bytes).
    pub words: usize,
    /// The header bytes, masked.
    pub pattern: [u64; PREFIX_WORDS],
    /// Which bits of each word are header bytes.
    pub mask: [u64; PREFIX_WORDS],
}

/// The agents' order, with the address chunks of one family (types, value length).
const fn agents_order(src: u16, dst: u16, address_len: usize) -> [(u16, usize); PREFIX_CHUNKS] {
    [
        (IP_FAMILY, 1),
        (IP_PROTO, 1),
        (src, address_len),
        (dst, address_len),
        (SRC_PORT, 2),
        (DST_PORT, 2),
        (TS_SEC, 4),
        (TS_USEC, 4),
        (PROTO_TYPE, 1),
        (CAPTURE_ID, 4),
    ]
}

/// The IPv4 prefix: chunks end at byte 93.
pub const IPV4: Prefix = Prefix::of(agents_order(SRC_IPV4, DST_IPV4, 4));

/// The IPv6 prefix: chunks end at byte 117.
pub const IPV6: Prefix = Prefix::of(agents_order(SRC_IPV6, DST_IPV6, 16));

impl Prefix {
    /// Builds the pattern and mask of `chunks` (at compile time).
    const fn of(chunks: [(u16, usize); PREFIX_CHUNKS]) -> Prefix {
        let mut bytes = [0u8; PREFIX_WORDS * 8];
        let mut masked = [0u8; PREFIX_WORDS * 8];
        // The HEP header: "HEP3" (its length varies; check_header has validated it).
        let magic = *b"HEP3";
        let mut i = 0;
        while i < 4 {
            bytes[i] = magic[i];
            masked[i] = 0xff;
            i += 1;
        }
        let mut at = HEADER_LEN;
        let mut c = 0;
        while c < PREFIX_CHUNKS {
            let (kind, value_len) = chunks[c];
            let header = [
                (VENDOR_GENERIC >> 8) as u8,
                VENDOR_GENERIC as u8,
                (kind >> 8) as u8,
                kind as u8,
                0,
                0,
            ];
            let len = (CHUNK_HEADER_LEN + value_len) as u16;
            let mut k = 0;
            while k < CHUNK_HEADER_LEN {
                bytes[at + k] = match k {
                    4 => (len >> 8) as u8,
                    5 => len as u8,
                    _ => header[k],
                };
                masked[at + k] = 0xff;
                k += 1;
            }
            at += CHUNK_HEADER_LEN + value_len;
            c += 1;
        }
        let mut pattern = [0u64; PREFIX_WORDS];
        let mut mask = [0u64; PREFIX_WORDS];
        let mut w = 0;
        while w < PREFIX_WORDS {
            let mut b = [0u8; 8];
            let mut m = [0u8; 8];
            let mut k = 0;
            while k < 8 {
                b[k] = bytes[w * 8 + k];
                m[k] = masked[w * 8 + k];
                k += 1;
            }
            pattern[w] = u64::from_ne_bytes(b);
            mask[w] = u64::from_ne_bytes(m);
            w += 1;
        }
        Prefix {
            chunks,
            end: at,
            words: at.div_ceil(8),
            pattern,
            mask,
        }
    }

    /// Whether the packet in `src` (`hep_end` long, by its header) starts with this prefix.
    #[inline(always)]
    pub fn matches<S: ByteSource + ?Sized>(&self, src: &S, hep_end: usize) -> bool {
        if self.end > hep_end {
            return false;
        }
        let mut w = 0;
        while w < PREFIX_WORDS {
            if w >= self.words {
                break;
            }
            match src.load_word(w) {
                Some(word) if word & self.mask[w] == self.pattern[w] => {}
                _ => return false,
            }
            w += 1;
        }
        true
    }

    /// Hands the prefix's chunks to `walk`, at their offsets, as the walk would.
    #[inline(always)]
    pub fn visit<S: ByteSource + ?Sized>(&self, src: &S, walk: &mut FactsWalk) {
        let mut offset = HEADER_LEN;
        let mut c = 0;
        while c < PREFIX_CHUNKS {
            let (kind, value_len) = self.chunks[c];
            let len = (CHUNK_HEADER_LEN + value_len) as u16;
            walk.on_chunk(
                src,
                &ChunkHeader {
                    offset,
                    vendor: VENDOR_GENERIC,
                    kind,
                    len,
                },
            );
            offset += len as usize;
            c += 1;
        }
    }
}

/// The prefixes tried, in order.
pub const PREFIXES: [&Prefix; 2] = [&IPV4, &IPV6];

/// If the packet in `src` (validated header, `hep_end` long) starts with one of the
/// [`PREFIXES`], feeds its chunks to `walk` and returns where the walk goes on: `(offset
/// of the next chunk, chunks read)`. `None`: no prefix; walk from the first chunk.
#[inline(always)]
pub fn apply<S: ByteSource + ?Sized>(
    src: &S,
    hep_end: usize,
    walk: &mut FactsWalk,
) -> Option<(usize, usize)> {
    if IPV4.matches(src, hep_end) {
        IPV4.visit(src, walk);
        return Some((IPV4.end, PREFIX_CHUNKS));
    }
    if IPV6.matches(src, hep_end) {
        IPV6.visit(src, walk);
        return Some((IPV6.end, PREFIX_CHUNKS));
    }
    None
}

/// [`crate::facts::facts`] as the kernel computes it: the prefix, if any, then the walk
/// from where it ended (the walker's step and its 64-chunk rule), then the same
/// [`FactsWalk::conclude`]. Shown equal to `facts` by property test.
pub fn facts_with_prefix<S: ByteSource + ?Sized>(
    src: &S,
    sender: crate::abi::Addr16,
) -> Result<crate::facts::KernelFacts, crate::HepError> {
    use crate::chunk::MAX_CHUNKS;
    let end = crate::walker::check_header(src)?;
    let mut walk = FactsWalk::new(sender);
    let (mut offset, mut count) = apply(src, end, &mut walk).unwrap_or((HEADER_LEN, 0));
    while offset < end {
        if count >= MAX_CHUNKS {
            return Err(crate::HepError::TooManyChunks {
                offset,
                max: MAX_CHUNKS,
            });
        }
        let c = crate::walker::read_chunk(src, offset, end)?;
        walk.on_chunk(src, &c);
        offset = c.end();
        count += 1;
    }
    Ok(walk.conclude(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefixes_end_where_the_agents_tables_say() {
        // XDP-COST.md §4: protocol type and capture id at 76 / 83, the prefix ends at 93
        // (IPv4) or 117 (IPv6).
        assert_eq!(IPV4.end, 93);
        assert_eq!(IPV6.end, 117);
        assert_eq!(IPV4.words, 12);
        assert_eq!(IPV6.words, PREFIX_WORDS);
        let mut at = HEADER_LEN;
        for (kind, len) in IPV4.chunks {
            if kind == PROTO_TYPE {
                assert_eq!(at, 76);
            }
            if kind == CAPTURE_ID {
                assert_eq!(at, 83);
            }
            at += CHUNK_HEADER_LEN + len;
        }
        // The first chunk header, pinned: vendor 0, type 1, length 7, right after "HEP3"
        // and the total length.
        let first: [u8; 8] = IPV4.pattern[0].to_ne_bytes();
        assert_eq!(first, [b'H', b'E', b'P', b'3', 0, 0, 0, 0]);
        let second: [u8; 8] = IPV4.pattern[1].to_ne_bytes();
        assert_eq!(second, [0, 1, 0, 7, 0, 0, 0, 0]);
        let second_mask: [u8; 8] = IPV4.mask[1].to_ne_bytes();
        assert_eq!(second_mask, [0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0xff]);
    }
}
