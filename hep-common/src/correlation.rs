//! The correlation key: what makes packets "of the same call". Defined once here and used
//! by the kernel and userspace paths alike (route matching, call-sticky hashing, sampling,
//! dedup).
//!
//! # Definition
//! 1. If the packet has a generic chunk 0x0011 (correlation id) with a non-empty value, the
//!    key is that value, byte for byte (first occurrence).
//! 2. Otherwise, if the protocol type (0x000b) is 1 (SIP) and the packet has a plain payload
//!    chunk 0x000f, the key is the value of the payload's `Call-ID` header, found as follows:
//!    - only the first [`CALLID_SCAN_LIMIT`] bytes of the payload are looked at (the window);
//!    - lines end at LF (a CR before it is not part of the line); the first line (request or
//!      status line) is skipped; an empty line ends the header section and the search;
//!    - a header line matches when it starts with `Call-ID` or the compact form `i`, in any
//!      letter case, followed by optional spaces/tabs and `:`;
//!    - the value is what follows the colon up to the first CR or LF (or the end of the window), with
//!      leading and trailing spaces and tabs removed; an empty value does not match and the
//!      search goes on;
//!    - the first matching line wins.
//!    - if the SIP packet has no plain payload but a compressed one (chunk 0x0010, a zlib
//!      stream as captagent writes it, or gzip), the same search runs over the first
//!      [`CALLID_SCAN_LIMIT`] bytes of its inflated content (never more is inflated,
//!      whatever the stream announces). Only userspace inflates: the kernel hands such a
//!      packet to the daemon when the route that matched needs its key.
//! 3. Otherwise there is no key.
//!
//! The hash of a key ([`key_hash`]) is FNV-1a 64 over at most the first [`KEY_HASH_LIMIT`]
//! bytes of the key, finished with the MurmurHash3 64-bit mixer so every bit of the result
//! depends on every input bit (the consistent-hash tables index with its low bits).
//!
//! # The fallback key
//! A packet without a key (RTCP, logs, QoS reports without chunk 0x0011, SIP without a
//! Call-ID) is hashed, sampled and deduplicated by its *flow key* ([`flow_key`]): its two
//! inner endpoints (chunks 0x0003/0x0005 and 0x0007, 0x0004/0x0006 and 0x0008), each as the
//! 16-byte address (IPv4 as `::ffff:a.b.c.d`, all zero when absent) followed by the port
//! (big-endian, 0 when absent), the smaller endpoint (byte order) first, 36 bytes. So both
//! directions of a flow hash alike (an RTCP stream and its reverse land on one collector)
//! and different flows spread over the collectors. A packet with neither addresses nor
//! ports hashes as 36 zero bytes. The fallback key only feeds the hash; correlation
//! matches see no key.
//!
//! A leaf module: it reads chunk values and byte sources, never a parsed packet type
//! ([`crate::v3::Hep3::correlation_key`] calls into it, not the other way round).

use crate::bytes::ByteSource;
use crate::chunk::proto;

/// Bytes of a SIP payload searched for the `Call-ID` header.
pub const CALLID_SCAN_LIMIT: usize = 2048;
/// Bytes of a key that enter its hash.
pub const KEY_HASH_LIMIT: usize = 128;

/// Where a correlation key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Chunk 0x0011.
    CorrelationChunk,
    /// The SIP `Call-ID`/`i` header of the payload.
    SipCallId,
}

/// A packet's correlation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelationKey<'a> {
    /// Where it came from.
    pub source: KeySource,
    /// The key bytes.
    pub bytes: &'a [u8],
}

impl CorrelationKey<'_> {
    /// [`key_hash`] of the key.
    pub fn hash(&self) -> u64 {
        key_hash(self.bytes)
    }
}

/// The correlation key from the first chunk 0x0011, the protocol type and the first plain
/// payload chunk of a packet (for callers that already walked its chunks).
pub fn key_from_chunks<'a>(
    correlation_id: Option<&'a [u8]>,
    proto_type: Option<u8>,
    payload: Option<&'a [u8]>,
) -> Option<CorrelationKey<'a>> {
    if let Some(v) = correlation_id
        && !v.is_empty()
    {
        return Some(CorrelationKey {
            source: KeySource::CorrelationChunk,
            bytes: v,
        });
    }
    if proto_type != Some(proto::SIP) {
        return None;
    }
    let payload = payload?;
    let (start, end) = find_call_id(payload, 0, payload.len())?;
    Some(CorrelationKey {
        source: KeySource::SipCallId,
        bytes: payload.get(start..end)?,
    })
}

/// The hash of a correlation key (see the module documentation).
#[inline(always)]
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = KeyHasher::new();
    let n = if key.len() < KEY_HASH_LIMIT {
        key.len()
    } else {
        KEY_HASH_LIMIT
    };
    let mut i = 0;
    while i < n {
        h.write_byte(key[i]);
        i += 1;
    }
    h.finish()
}

/// Length of a [`flow_key`].
pub const FLOW_KEY_LEN: usize = 36;

/// Bytes of one endpoint of a [`flow_key`]: the 16-byte address, then the port.
const ENDPOINT_LEN: usize = 18;

/// The fallback key of a packet without a correlation key (see the module documentation):
/// the inner endpoints `(src, src_port)` and `(dst, dst_port)`, the smaller first.
#[inline(always)]
pub fn flow_key(
    src: Option<[u8; 16]>,
    src_port: Option<u16>,
    dst: Option<[u8; 16]>,
    dst_port: Option<u16>,
) -> [u8; FLOW_KEY_LEN] {
    let a = endpoint(src, src_port);
    let b = endpoint(dst, dst_port);
    // Byte-order comparison, spelled out (the kernel has no memcmp).
    let mut a_first = true;
    let mut i = 0;
    while i < ENDPOINT_LEN {
        if a[i] != b[i] {
            a_first = a[i] < b[i];
            break;
        }
        i += 1;
    }
    let (lo, hi) = if a_first { (a, b) } else { (b, a) };
    let mut key = [0u8; FLOW_KEY_LEN];
    let mut j = 0;
    while j < ENDPOINT_LEN {
        key[j] = lo[j];
        key[ENDPOINT_LEN + j] = hi[j];
        j += 1;
    }
    key
}

#[inline(always)]
fn endpoint(addr: Option<[u8; 16]>, port: Option<u16>) -> [u8; ENDPOINT_LEN] {
    let mut e = [0u8; ENDPOINT_LEN];
    if let Some(a) = addr {
        let mut i = 0;
        while i < 16 {
            e[i] = a[i];
            i += 1;
        }
    }
    let [p0, p1] = port.unwrap_or(0).to_be_bytes();
    e[16] = p0;
    e[17] = p1;
    e
}

/// Incremental form of [`key_hash`], for a key read piecewise (the kernel path). The caller
/// feeds at most [`KEY_HASH_LIMIT`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyHasher {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A hasher with no input yet.
    #[inline(always)]
    pub const fn new() -> Self {
        KeyHasher(Self::OFFSET)
    }

    /// Adds one byte.
    #[inline(always)]
    pub fn write_byte(&mut self, b: u8) {
        self.0 = (self.0 ^ b as u64).wrapping_mul(Self::PRIME);
    }

    /// The final hash.
    #[inline(always)]
    pub const fn finish(self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^= k >> 33;
        k
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a line that cannot be the Call-ID header (starts with the first line).
    SkipLine,
    /// At the first byte of a header line.
    LineStart,
    /// Saw CR at line start: an LF next ends the headers.
    BlankCr,
    /// Inside "call-id" (`CallIdScanner::matched` bytes matched). A separate counter, not
    /// a payload: an enum with a payload in some variants leaves undefined bytes that
    /// LLVM may store from an unset register, which the kernel's verifier rejects.
    Name,
    /// After the header name, before the colon.
    AfterName,
    /// After the colon, skipping leading whitespace.
    ValueLead,
    /// Inside the value.
    Value,
    /// Search over (headers ended, or found).
    Done,
}

/// Streaming `Call-ID` finder: feed payload bytes in order with their positions.
///
/// Holds no buffer, only positions, so the kernel can feed it block by block.
#[derive(Debug, Clone, Copy)]
pub struct CallIdScanner {
    state: State,
    matched: u8,
    start: usize,
    end: usize,
    found: bool,
}

impl Default for CallIdScanner {
    fn default() -> Self {
        Self::new()
    }
}

const CALL_ID: &[u8; 7] = b"call-id";

/// The bytes of `w` that are `\n`: 0x80 in each such byte, 0 elsewhere (exact: no carry
/// crosses bytes, unlike the classic `(x - 0x01…) & !x & 0x80…` test, which can also mark
/// the byte after a match).
#[inline(always)]
const fn line_feed_bytes(w: u64) -> u64 {
    const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (0x0101_0101_0101_0101 * b'\n' as u64);
    // A byte's high bit ends up set iff the byte is non-zero: its low 7 bits plus 0x7f
    // carry into bit 7 (never beyond), or bit 7 was set.
    !(((x & LOWS) + LOWS) | x | LOWS)
}

#[inline(always)]
fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl CallIdScanner {
    /// A scanner at the start of a SIP message.
    #[inline(always)]
    pub const fn new() -> Self {
        CallIdScanner {
            state: State::SkipLine,
            matched: 0,
            start: 0,
            end: 0,
            found: false,
        }
    }

    /// Whether the search is over; no further byte changes the result.
    #[inline(always)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the byte at payload position `pos`.
    #[inline(always)]
    pub fn feed(&mut self, b: u8, pos: usize) {
        self.state = match self.state {
            State::Done => State::Done,
            State::SkipLine => {
                if b == b'\n' {
                    State::LineStart
                } else {
                    State::SkipLine
                }
            }
            State::LineStart => match b {
                b'\n' => State::Done,
                b'\r' => State::BlankCr,
                b'c' | b'C' => {
                    self.matched = 1;
                    State::Name
                }
                b'i' | b'I' => State::AfterName,
                _ => State::SkipLine,
            },
            State::BlankCr => match b {
                b'\n' => State::Done,
                _ => State::SkipLine,
            },
            State::Name => {
                let n = self.matched;
                if b == b'\n' {
                    State::LineStart
                } else if (n as usize) < CALL_ID.len()
                    && b.to_ascii_lowercase() == CALL_ID[n as usize]
                {
                    if n as usize + 1 == CALL_ID.len() {
                        State::AfterName
                    } else {
                        self.matched = n + 1;
                        State::Name
                    }
                } else {
                    State::SkipLine
                }
            }
            State::AfterName => match b {
                b':' => State::ValueLead,
                b'\n' => State::LineStart,
                _ if is_wsp(b) => State::AfterName,
                _ => State::SkipLine,
            },
            State::ValueLead => match b {
                b'\n' => State::LineStart,
                // The value ends at the first CR: here it is empty, so no match; the search
                // goes on at the next line.
                b'\r' => State::SkipLine,
                _ if is_wsp(b) => State::ValueLead,
                _ => {
                    self.start = pos;
                    self.end = pos + 1;
                    State::Value
                }
            },
            State::Value => match b {
                b'\n' | b'\r' => {
                    self.found = true;
                    State::Done
                }
                _ if is_wsp(b) => State::Value,
                _ => {
                    self.end = pos + 1;
                    State::Value
                }
            },
        };
    }

    /// Feeds the 8 bytes at payload positions `pos .. pos + 8`: the same as eight
    /// [`CallIdScanner::feed`]s, faster. While the scanner skips a line, the bytes before
    /// the next line feed change nothing, so it jumps to that line feed (or past the
    /// block when there is none); after the search is over nothing changes at all.
    #[inline(always)]
    pub fn feed_block(&mut self, block: [u8; 8], pos: usize) {
        let line_feeds = line_feed_bytes(u64::from_le_bytes(block));
        let mut i = 0;
        while i < 8 {
            match self.state {
                State::Done => return,
                State::SkipLine => {
                    // The first line feed at or after `i`, by its high bit (byte j of the
                    // block is bits 8j .. 8j + 8: little endian).
                    let rest = line_feeds >> (8 * i);
                    if rest == 0 {
                        return;
                    }
                    i += (rest.trailing_zeros() / 8) as usize;
                    if i >= 8 {
                        return;
                    }
                }
                _ => {}
            }
            self.feed(block[i], pos + i);
            i += 1;
        }
    }

    /// The value's `[start, end)` positions, after the last byte was fed.
    #[inline(always)]
    pub fn result(&self) -> Option<(usize, usize)> {
        if self.found || self.state == State::Value {
            Some((self.start, self.end))
        } else {
            None
        }
    }
}

impl CallIdScanner {
    /// Whether the scanner is skipping a line: until the next line feed, no byte changes
    /// it.
    #[inline(always)]
    pub fn skipping_line(&self) -> bool {
        self.state == State::SkipLine
    }

    /// Ends the search without a result (the bytes could not be read).
    #[inline(always)]
    pub fn fail(&mut self) {
        self.state = State::Done;
        self.found = false;
    }
}

/// One step of the word-wise scan of the window `[base, base + window)` of `src`, at
/// window position `*pos`; `false` once the scan is over (done, or the window ended).
///
/// While the scanner skips a line it is handed only the next line feed: the aligned word
/// of `src` holding position `*pos` is loaded with [`ByteSource::load_word`] (one load in
/// the kernel) and searched with a mask, bytes before `*pos` masked off; a
/// word without one moves `*pos` to the next word. Otherwise (at a line start, in a header
/// name, in the value) the byte at `*pos` is fed. Skipped bytes are ones [`CallIdScanner::feed`]
/// would have ignored, so the scanner ends as [`find_call_id`]'s does (property-tested)
/// when the window lies inside `src`, as a payload chunk's does; a word that cannot be
/// loaded (the source's last bytes) is fed byte by byte, and a byte that cannot be read
/// ends the search without a result.
#[inline(always)]
pub fn scan_word_step<S: ByteSource + ?Sized>(
    src: &S,
    sc: &mut CallIdScanner,
    base: usize,
    pos: &mut usize,
    window: usize,
) -> bool {
    if *pos >= window || sc.is_done() {
        return false;
    }
    let Some(at) = base.checked_add(*pos) else {
        sc.fail();
        return false;
    };
    if sc.skipping_line()
        && let Some(word) = src.load_word(at / 8)
    {
        // Byte j of the word is bits 8j .. 8j + 8 once read as little endian.
        let word = u64::from_le_bytes(word.to_ne_bytes());
        let skip = at % 8;
        let line_feeds = line_feed_bytes(word) & (u64::MAX << (8 * skip));
        if line_feeds == 0 {
            *pos += 8 - skip;
            return true;
        }
        let lf = (line_feeds.trailing_zeros() / 8) as usize;
        let lf_pos = *pos + (lf - skip);
        if lf_pos >= window {
            *pos = window;
            return false;
        }
        sc.feed(b'\n', lf_pos);
        *pos = lf_pos + 1;
        return true;
    }
    let Some([b]) = src.load::<1>(at) else {
        sc.fail();
        return false;
    };
    sc.feed(b, *pos);
    *pos += 1;
    true
}

/// Finds the `Call-ID` value in the SIP payload at `[offset, offset + len)` of `src`;
/// returns `[start, end)` relative to `offset`.
#[inline(always)]
pub fn find_call_id<S: ByteSource + ?Sized>(
    src: &S,
    offset: usize,
    len: usize,
) -> Option<(usize, usize)> {
    let window = if len < CALLID_SCAN_LIMIT {
        len
    } else {
        CALLID_SCAN_LIMIT
    };
    let mut sc = CallIdScanner::new();
    let mut pos = 0;
    while pos + 8 <= window && !sc.is_done() {
        let block = src.load::<8>(offset + pos)?;
        sc.feed_block(block, pos);
        pos += 8;
    }
    while pos < window && !sc.is_done() {
        let [b] = src.load::<1>(offset + pos)?;
        sc.feed(b, pos);
        pos += 1;
    }
    sc.result()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_id(payload: &[u8]) -> Option<&[u8]> {
        let (s, e) = find_call_id(payload, 0, payload.len())?;
        payload.get(s..e)
    }

    #[test]
    fn the_word_scan_ends_without_a_result_where_it_cannot_read() {
        let src = b"INVITE x SIP/2.0\nCall-ID: a\n";
        for (base, pos) in [
            (usize::MAX, 0),
            (usize::MAX, 1),
            (usize::MAX - 3, 2),
            (src.len(), 0),
        ] {
            let mut sc = CallIdScanner::new();
            let mut at = pos;
            let mut steps = 0;
            while scan_word_step(&src[..], &mut sc, base, &mut at, 40) {
                steps += 1;
                assert!(steps <= 40);
            }
            assert_eq!(sc.result(), None, "base {base} pos {pos}");
        }
    }

    #[test]
    fn call_id_forms() {
        let m = b"INVITE sip:b@x SIP/2.0\r\nVia: v\r\nCall-ID: a84b4c76e66710@pc33\r\n\r\n";
        assert_eq!(call_id(m), Some(&b"a84b4c76e66710@pc33"[..]));
        let m = b"SIP/2.0 200 OK\nCALL-id\t :\t x y \t\nCSeq: 1\n";
        assert_eq!(
            call_id(m),
            Some(&b"x y"[..]),
            "LF-only lines, inner space kept, outer trimmed"
        );
        let m = b"BYE sip:b@x SIP/2.0\r\ni: compact@h\r\n\r\n";
        assert_eq!(call_id(m), Some(&b"compact@h"[..]));
        let m = b"BYE sip:b@x SIP/2.0\r\nI:c";
        assert_eq!(
            call_id(m),
            Some(&b"c"[..]),
            "value running to the end of the payload"
        );
    }

    #[test]
    fn what_is_not_a_call_id() {
        // Similar header names, the request line, an empty value, the body.
        let m = b"Call-ID: first-line\r\nCall-Info: x\r\nIdentity: y\r\ni:\r\n\r\ni: body\r\nCall-ID: body\r\n";
        assert_eq!(call_id(m), None);
        // An empty value does not stop the search.
        let m = b"INVITE x SIP/2.0\r\nCall-ID:   \r\ni: second\r\n";
        assert_eq!(call_id(m), Some(&b"second"[..]));
    }

    #[test]
    fn scan_window_is_bounded() {
        let mut m = [b'a'; CALLID_SCAN_LIMIT + 64];
        let head = b"INVITE x SIP/2.0\r\n";
        m[..head.len()].copy_from_slice(head);
        // A header line that starts just inside the window is cut at the window's end.
        let at = CALLID_SCAN_LIMIT - 12;
        m[at - 2..at].copy_from_slice(b"\r\n");
        m[at..at + 9].copy_from_slice(b"Call-ID: ");
        assert_eq!(call_id(&m).map(<[u8]>::len), Some(3));
        // One that starts past it is not seen.
        let mut m = [b'a'; CALLID_SCAN_LIMIT + 64];
        m[..head.len()].copy_from_slice(head);
        let at = CALLID_SCAN_LIMIT + 2;
        m[at - 2..at].copy_from_slice(b"\r\n");
        m[at..at + 9].copy_from_slice(b"Call-ID: ");
        assert_eq!(call_id(&m), None);
    }

    #[test]
    fn hash_is_bounded_and_incremental() {
        let long = [7u8; 300];
        assert_eq!(key_hash(&long), key_hash(&long[..KEY_HASH_LIMIT]));
        assert_ne!(
            key_hash(&long[..KEY_HASH_LIMIT - 1]),
            key_hash(&long[..KEY_HASH_LIMIT])
        );
        let mut h = KeyHasher::new();
        for b in b"abc@host" {
            h.write_byte(*b);
        }
        assert_eq!(h.finish(), key_hash(b"abc@host"));
        // Pinned so the kernel and userspace (and any future rewrite) keep the same hash.
        assert_eq!(key_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(key_hash(b"abc@host"), 0x2dad_3f1e_13ea_f860);
    }

    #[test]
    fn flow_key_is_the_sorted_endpoints() {
        let v4 = |a: [u8; 4]| {
            let mut m = [0u8; 16];
            m[10] = 0xff;
            m[11] = 0xff;
            m[12..].copy_from_slice(&a);
            m
        };
        let a = Some(v4([198, 18, 0, 1]));
        let b = Some(v4([198, 18, 0, 2]));
        // The definition, written out: ::ffff:198.18.0.1 port 5004, then ::ffff:198.18.0.2
        // port 5006.
        let mut want = [0u8; FLOW_KEY_LEN];
        want[10..16].copy_from_slice(&[0xff, 0xff, 198, 18, 0, 1]);
        want[16..18].copy_from_slice(&[0x13, 0x8c]);
        want[28..34].copy_from_slice(&[0xff, 0xff, 198, 18, 0, 2]);
        want[34..36].copy_from_slice(&[0x13, 0x8e]);
        assert_eq!(flow_key(a, Some(5004), b, Some(5006)), want);
        assert_eq!(
            flow_key(b, Some(5006), a, Some(5004)),
            want,
            "both directions"
        );
        // Same address, the ports decide.
        let k = flow_key(a, Some(9), a, Some(8));
        assert_eq!((k[17], k[35]), (8, 9));
        // Nothing known: all zero.
        assert_eq!(flow_key(None, None, None, None), [0u8; FLOW_KEY_LEN]);
        // Pinned (computed apart from this code, from the definition): the fallback hash
        // of that RTCP flow, for both paths and any rewrite.
        assert_eq!(key_hash(&want), 0x2082_3a27_816f_2b74);
    }
}
