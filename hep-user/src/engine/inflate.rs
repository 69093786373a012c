//! The head of a compressed payload (chunk 0x0010), for the correlation key's Call-ID
//! search (`hep_common::correlation`, rule 2): at most [`CALLID_SCAN_LIMIT`] bytes are ever
//! inflated, whatever the stream announces, so a zip bomb costs one small buffer and a
//! bounded amount of work.

use std::io::Read;

use flate2::read::{GzDecoder, ZlibDecoder};
use hep_common::correlation::{CALLID_SCAN_LIMIT, find_call_id};

/// The first bytes of a gzip member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The first [`CALLID_SCAN_LIMIT`] bytes of `compressed` inflated: a zlib stream (RFC 1950,
/// as captagent writes chunk 0x0010) or a gzip member (RFC 1952). `None` when the stream is
/// corrupt before that many bytes came out (a stream that ends cleanly sooner gives what
/// it holds).
pub fn inflated_head(compressed: &[u8]) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(CALLID_SCAN_LIMIT);
    let limit = CALLID_SCAN_LIMIT as u64;
    let read = if compressed.starts_with(&GZIP_MAGIC) {
        GzDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut head)
    } else {
        ZlibDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut head)
    };
    read.ok().map(|_| head)
}

/// The Call-ID of the SIP message compressed in `compressed`, if its inflated head has one.
pub fn compressed_call_id(compressed: &[u8]) -> Option<Vec<u8>> {
    let head = inflated_head(compressed)?;
    let (start, end) = find_call_id(&head[..], 0, head.len())?;
    head.get(start..end).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

    use std::io::Write;

    use flate2::Compression;
    use flate2::write::{GzEncoder, ZlibEncoder};

    use super::*;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zlib_and_gzip_give_the_call_id() {
        let sip = b"INVITE sip:b@x SIP/2.0\r\nVia: v\r\nCall-ID: zipped-1@h\r\n\r\n";
        assert_eq!(compressed_call_id(&zlib(sip)), Some(b"zipped-1@h".to_vec()));
        let mut g = GzEncoder::new(Vec::new(), Compression::fast());
        g.write_all(sip).unwrap();
        assert_eq!(
            compressed_call_id(&g.finish().unwrap()),
            Some(b"zipped-1@h".to_vec())
        );
    }

    /// 64 MiB of zeros in ~64 KiB of zlib: only the scan window is ever produced.
    #[test]
    fn a_zip_bomb_inflates_only_the_window() {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        let head = inflated_head(&bomb).unwrap();
        assert_eq!(head.len(), CALLID_SCAN_LIMIT);
        assert!(head.capacity() <= CALLID_SCAN_LIMIT * 2);
        assert_eq!(compressed_call_id(&bomb), None);
    }

    /// Past the window, a Call-ID is not seen (the definition's bound), and garbage or a
    /// stream cut short is no key, never a panic.
    #[test]
    fn the_window_and_broken_streams() {
        let mut sip = b"INVITE sip:b@x SIP/2.0\r\nX-Pad: ".to_vec();
        sip.resize(CALLID_SCAN_LIMIT + 10, b'a');
        sip.extend_from_slice(b"\r\nCall-ID: late@h\r\n\r\n");
        assert_eq!(compressed_call_id(&zlib(&sip)), None);
        assert_eq!(compressed_call_id(b""), None);
        assert_eq!(compressed_call_id(b"\x78\x9cgarbage"), None);
        let whole = zlib(b"OPTIONS sip:x SIP/2.0\r\ni: cut@h\r\n\r\n");
        assert_eq!(compressed_call_id(&whole[..whole.len() / 2]), None);
    }
}
