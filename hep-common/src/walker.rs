//! [`ChunkWalker`]: the one HEPv3 chunk walker, used by the kernel and userspace paths.
//!
//! The walker validates as it goes, so both paths agree on what a valid packet is:
//! - the packet starts with `HEP3` and its total length field equals the bytes present
//!   (the UDP datagram, or the frame the TCP framer cut);
//! - every chunk has a complete 6-byte header, a length ≥ 6, and ends inside the packet;
//! - there are at most [`MAX_CHUNKS`] chunks;
//! - fixed-width generic chunks have exactly their width ([`fixed_width`]).
//!
//! When a type occurs more than once, accessors take the first occurrence.

use crate::bytes::{ByteSource, be16};
use crate::chunk::{CHUNK_HEADER_LEN, ChunkId, HEADER_LEN, MAGIC, MAX_CHUNKS, fixed_width};
use crate::error::HepError;

/// One chunk's header and where it sits in the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Offset of the chunk header from the start of the packet.
    pub offset: usize,
    /// Vendor id.
    pub vendor: u16,
    /// Type id.
    pub kind: u16,
    /// Length field (header included).
    pub len: u16,
}

impl ChunkHeader {
    /// The chunk's id.
    #[inline(always)]
    pub const fn id(&self) -> ChunkId {
        ChunkId {
            vendor: self.vendor,
            kind: self.kind,
        }
    }

    /// Offset of the value from the start of the packet.
    #[inline(always)]
    pub const fn value_offset(&self) -> usize {
        self.offset + CHUNK_HEADER_LEN
    }

    /// Length of the value.
    #[inline(always)]
    pub const fn value_len(&self) -> usize {
        self.len as usize - CHUNK_HEADER_LEN
    }

    /// Offset just past the chunk.
    #[inline(always)]
    pub const fn end(&self) -> usize {
        self.offset + self.len as usize
    }
}

/// Checks the HEPv3 packet header and returns the total length (= `src.len()`).
#[inline(always)]
pub fn check_header<S: ByteSource + ?Sized>(src: &S) -> Result<usize, HepError> {
    let have = src.len();
    let Some(hdr) = src.load::<6>(0) else {
        return Err(HepError::Truncated {
            needed: HEADER_LEN,
            have,
        });
    };
    if hdr[0] != MAGIC[0] || hdr[1] != MAGIC[1] || hdr[2] != MAGIC[2] || hdr[3] != MAGIC[3] {
        return Err(HepError::UnknownVersion);
    }
    let declared = be16([hdr[4], hdr[5]]) as usize;
    if declared != have {
        return Err(HepError::LengthMismatch {
            declared,
            actual: have,
        });
    }
    Ok(have)
}

/// Walks the chunks of a HEPv3 packet, validating each one.
pub struct ChunkWalker<'s, S: ?Sized> {
    src: &'s S,
    offset: usize,
    end: usize,
    count: usize,
    failed: bool,
}

impl<'s, S: ByteSource + ?Sized> ChunkWalker<'s, S> {
    /// Checks the packet header and positions the walker on the first chunk.
    #[inline(always)]
    pub fn new(src: &'s S) -> Result<Self, HepError> {
        let end = check_header(src)?;
        Ok(ChunkWalker {
            src,
            offset: HEADER_LEN,
            end,
            count: 0,
            failed: false,
        })
    }

    /// The next chunk, `Ok(None)` at the end of the packet.
    #[inline(always)]
    pub fn next_chunk(&mut self) -> Result<Option<ChunkHeader>, HepError> {
        if self.failed {
            return Ok(None);
        }
        let r = self.step();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    #[inline(always)]
    fn step(&mut self) -> Result<Option<ChunkHeader>, HepError> {
        let offset = self.offset;
        if offset >= self.end {
            return Ok(None);
        }
        if self.count >= MAX_CHUNKS {
            return Err(HepError::TooManyChunks {
                offset,
                max: MAX_CHUNKS,
            });
        }
        let c = read_chunk(self.src, offset, self.end)?;
        let len = c.len;
        self.offset = offset + len as usize;
        self.count += 1;
        Ok(Some(c))
    }
}

impl<S: ByteSource + ?Sized> Iterator for ChunkWalker<'_, S> {
    type Item = Result<ChunkHeader, HepError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// Reads and validates the chunk at `offset` of a packet that ends at `end` (every rule of
/// the module but the chunk count, which the caller bounds). The one step of
/// [`ChunkWalker`], public for walks driven from elsewhere (the kernel's `bpf_loop`).
#[inline(always)]
pub fn read_chunk<S: ByteSource + ?Sized>(
    src: &S,
    offset: usize,
    end: usize,
) -> Result<ChunkHeader, HepError> {
    if end - offset < CHUNK_HEADER_LEN {
        return Err(HepError::TruncatedChunkHeader { offset });
    }
    let Some(h) = src.load::<6>(offset) else {
        return Err(HepError::TruncatedChunkHeader { offset });
    };
    let vendor = be16([h[0], h[1]]);
    let kind = be16([h[2], h[3]]);
    let len = be16([h[4], h[5]]);
    if (len as usize) < CHUNK_HEADER_LEN {
        return Err(HepError::ChunkTooShort { offset, len });
    }
    if len as usize > end - offset {
        return Err(HepError::ChunkPastEnd { offset, len, end });
    }
    let value_len = len as usize - CHUNK_HEADER_LEN;
    if let Some(expected) = fixed_width(vendor, kind)
        && expected != value_len
    {
        return Err(HepError::BadChunkWidth {
            offset,
            kind,
            len: value_len,
            expected,
        });
    }
    Ok(ChunkHeader {
        offset,
        vendor,
        kind,
        len,
    })
}

/// Walks a whole packet and returns its chunk count, or the first error.
pub fn validate<S: ByteSource + ?Sized>(src: &S) -> Result<usize, HepError> {
    let mut w = ChunkWalker::new(src)?;
    let mut n = 0;
    while w.next_chunk()?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(vendor: u16, kind: u16, value: &[u8]) -> [u8; 64] {
        let mut c = [0u8; 64];
        c[0..2].copy_from_slice(&vendor.to_be_bytes());
        c[2..4].copy_from_slice(&kind.to_be_bytes());
        c[4..6].copy_from_slice(&((6 + value.len()) as u16).to_be_bytes());
        c[6..6 + value.len()].copy_from_slice(value);
        c
    }

    /// A packet from raw chunk bytes, with the header length set to the real length.
    fn packet(body: &[u8], out: &mut [u8; 512]) -> usize {
        let n = 6 + body.len();
        out[..4].copy_from_slice(b"HEP3");
        out[4..6].copy_from_slice(&(n as u16).to_be_bytes());
        out[6..n].copy_from_slice(body);
        n
    }

    #[test]
    fn every_structural_error_is_reported_with_its_offset() {
        let mut buf = [0u8; 512];
        // Header problems.
        assert_eq!(
            validate(&b"HEP"[..]),
            Err(HepError::Truncated { needed: 6, have: 3 })
        );
        assert_eq!(
            validate(&b"HEP2\x00\x06"[..]),
            Err(HepError::UnknownVersion)
        );
        assert_eq!(
            validate(&b"HEP3\x00\x07"[..]),
            Err(HepError::LengthMismatch {
                declared: 7,
                actual: 6
            })
        );
        // An empty packet (no chunks) is structurally valid.
        assert_eq!(validate(&b"HEP3\x00\x06"[..]), Ok(0));
        // Chunk header cut short.
        let n = packet(&[0, 0, 0, 1, 0], &mut buf);
        assert_eq!(
            validate(&buf[..n]),
            Err(HepError::TruncatedChunkHeader { offset: 6 })
        );
        // Length below 6.
        let n = packet(&[0, 0, 0, 1, 0, 5], &mut buf);
        assert_eq!(
            validate(&buf[..n]),
            Err(HepError::ChunkTooShort { offset: 6, len: 5 })
        );
        // Length past the end (a lying length).
        let n = packet(&[0, 0, 0, 0x0f, 0, 9, b'a', b'b'], &mut buf);
        assert_eq!(
            validate(&buf[..n]),
            Err(HepError::ChunkPastEnd {
                offset: 6,
                len: 9,
                end: 14
            })
        );
        // Wrong width of a fixed-width generic chunk; the same type under a vendor is free.
        let c = chunk(0, 0x000c, &[1, 2]);
        let n = packet(&c[..8], &mut buf);
        assert_eq!(
            validate(&buf[..n]),
            Err(HepError::BadChunkWidth {
                offset: 6,
                kind: 0x000c,
                len: 2,
                expected: 4
            })
        );
        let c = chunk(3, 0x000c, &[1, 2]);
        let n = packet(&c[..8], &mut buf);
        assert_eq!(validate(&buf[..n]), Ok(1));
    }

    #[test]
    fn chunk_count_is_bounded() {
        let mut buf = [0u8; 512];
        let empty = chunk(0, 0x0099, &[]);
        let mut body = [0u8; 6 * (MAX_CHUNKS + 1)];
        for i in 0..=MAX_CHUNKS {
            body[i * 6..i * 6 + 6].copy_from_slice(&empty[..6]);
        }
        let n = packet(&body[..6 * MAX_CHUNKS], &mut buf);
        assert_eq!(validate(&buf[..n]), Ok(MAX_CHUNKS));
        let n = packet(&body, &mut buf);
        assert_eq!(
            validate(&buf[..n]),
            Err(HepError::TooManyChunks {
                offset: 6 + 6 * MAX_CHUNKS,
                max: MAX_CHUNKS
            })
        );
    }

    #[test]
    fn walker_stops_after_an_error() {
        let mut buf = [0u8; 512];
        let n = packet(&[0, 0, 0, 1, 0, 7, 2, 0, 0, 0, 1, 0, 2], &mut buf);
        let mut w = ChunkWalker::new(&buf[..n]).unwrap();
        assert!(matches!(
            w.next_chunk(),
            Ok(Some(ChunkHeader {
                kind: 1,
                len: 7,
                ..
            }))
        ));
        assert!(w.next_chunk().is_err());
        assert_eq!(w.next_chunk(), Ok(None));
    }
}
