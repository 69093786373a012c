//! The SIP first line a route can match (`sip_method`, `sip_status`), defined once for
//! both paths.
//!
//! # Definition
//! Only a packet whose protocol type (0x000b) is SIP (1) and that has a plain payload
//! (0x000f, the first one) has a first line; its first [`FIRST_LINE_BYTES`] bytes decide:
//! - a **response** starts with `SIP/2.0 `, then three digits (100 – 699), then a space,
//!   CR, LF or the end of the payload: its status is that number;
//! - a **request** starts with one of the [`METHODS`] (exact letter case, as RFC 3261
//!   says methods are case-sensitive) followed by a space: its method is that one;
//! - anything else (an extension method, garbage, a compressed payload) has neither, and
//!   matches no `sip_method` or `sip_status` value.
//!
//! A leaf module: it reads a [`ByteSource`], nothing else.

use crate::bytes::ByteSource;

/// The methods a route can match, by index (bit `i` of a route's method mask).
pub const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
];

/// Bytes of the payload read: the longest method (`SUBSCRIBE`) and its space fit, and so
/// does `SIP/2.0 NNN` and the byte after it.
pub const FIRST_LINE_BYTES: usize = 12;

/// The longest method, in bytes.
const MAX_METHOD: usize = 9;

/// What a first line says. Plain integers with sentinels, no `Option`: the kernel keeps
/// it in map memory, where an `Option`'s unused payload would be an uninitialised store
/// the verifier refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstLine {
    /// A request's method: its index in [`METHODS`], or [`FirstLine::NO_METHOD`].
    pub method_index: u8,
    /// A response's status code, or 0.
    pub status_code: u16,
}

impl Default for FirstLine {
    fn default() -> Self {
        FirstLine::NONE
    }
}

impl FirstLine {
    /// `method_index` of a line that is not a known request.
    pub const NO_METHOD: u8 = u8::MAX;
    /// Neither a request nor a response.
    pub const NONE: FirstLine = FirstLine {
        method_index: FirstLine::NO_METHOD,
        status_code: 0,
    };

    /// A request's method (its index in [`METHODS`]).
    #[inline(always)]
    pub fn method(&self) -> Option<u8> {
        (self.method_index != Self::NO_METHOD).then_some(self.method_index)
    }

    /// A response's status code.
    #[inline(always)]
    pub fn status(&self) -> Option<u16> {
        (self.status_code != 0).then_some(self.status_code)
    }
}

/// A method name packed for comparison without `memcmp` (the kernel has none): its
/// first 8 bytes (little-endian), its ninth byte, its length.
#[derive(Clone, Copy)]
struct Packed {
    head: u64,
    ninth: u8,
    len: u8,
}

const fn pack(name: &[u8]) -> Packed {
    let mut head = 0u64;
    let mut i = 0;
    while i < name.len() && i < 8 {
        head |= (name[i] as u64) << (8 * i);
        i += 1;
    }
    Packed {
        head,
        ninth: if name.len() > 8 { name[8] } else { 0 },
        len: name.len() as u8,
    }
}

const PACKED: [Packed; METHODS.len()] = {
    let mut out = [Packed {
        head: 0,
        ninth: 0,
        len: 0,
    }; METHODS.len()];
    let mut i = 0;
    while i < METHODS.len() {
        out[i] = pack(METHODS[i].as_bytes());
        i += 1;
    }
    out
};

/// The index in [`METHODS`] of `name` (exact bytes).
pub fn method_index(name: &[u8]) -> Option<u8> {
    if name.len() > MAX_METHOD {
        return None;
    }
    let mut head = [0u8; FIRST_LINE_BYTES];
    let mut i = 0;
    while i < name.len() {
        head[i] = name[i];
        i += 1;
    }
    let m = packed_method(&head, name.len());
    (m != FirstLine::NO_METHOD).then_some(m)
}

/// The index of the method in `head[..len]` (`len` ≤ [`MAX_METHOD`]), or
/// [`FirstLine::NO_METHOD`].
#[inline(always)]
fn packed_method(head: &[u8; FIRST_LINE_BYTES], len: usize) -> u8 {
    let mut word = 0u64;
    let mut i = 0;
    while i < 8 {
        if i < len {
            word |= (head[i] as u64) << (8 * i);
        }
        i += 1;
    }
    let ninth = if len > 8 { head[8] } else { 0 };
    let mut k = 0;
    while k < PACKED.len() {
        let p = PACKED[k];
        if p.len as usize == len && p.head == word && p.ninth == ninth {
            return k as u8;
        }
        k += 1;
    }
    FirstLine::NO_METHOD
}

/// The first line of the SIP payload at `[offset, offset + len)` of `src` (see the module
/// documentation).
#[inline(always)]
pub fn first_line<S: ByteSource + ?Sized>(src: &S, offset: usize, len: usize) -> FirstLine {
    let mut head = [0u8; FIRST_LINE_BYTES];
    let n = if len < FIRST_LINE_BYTES {
        len
    } else {
        FIRST_LINE_BYTES
    };
    if n == FIRST_LINE_BYTES {
        match src.load::<FIRST_LINE_BYTES>(offset) {
            Some(h) => head = h,
            None => return FirstLine::NONE,
        }
    } else {
        let mut i = 0;
        while i < FIRST_LINE_BYTES {
            if i < n {
                match src.load::<1>(offset + i) {
                    Some([b]) => head[i] = b,
                    None => return FirstLine::NONE,
                }
            }
            i += 1;
        }
    }
    parse_head(&head, n)
}

/// [`first_line`] of the first `n` bytes of `head`.
#[inline(always)]
fn parse_head(head: &[u8; FIRST_LINE_BYTES], n: usize) -> FirstLine {
    const SIP_2_0: [u8; 8] = *b"SIP/2.0 ";
    let mut is_response = n >= 11;
    let mut i = 0;
    while i < 8 {
        if head[i] != SIP_2_0[i] {
            is_response = false;
        }
        i += 1;
    }
    if is_response {
        let (a, b, c) = (head[8], head[9], head[10]);
        let digits = a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit();
        let ends = n == 11 || matches!(head[11], b' ' | b'\r' | b'\n');
        let code = u16::from(a.wrapping_sub(b'0')) * 100
            + u16::from(b.wrapping_sub(b'0')) * 10
            + u16::from(c.wrapping_sub(b'0'));
        if digits && ends && (100..=699).contains(&code) {
            return FirstLine {
                method_index: FirstLine::NO_METHOD,
                status_code: code,
            };
        }
        return FirstLine::NONE;
    }
    // A request: the method, then a space within the first MAX_METHOD + 1 bytes.
    let mut space = FIRST_LINE_BYTES;
    let mut j = 0;
    while j <= MAX_METHOD {
        if j < n && head[j] == b' ' && space == FIRST_LINE_BYTES {
            space = j;
        }
        j += 1;
    }
    if space == 0 || space > MAX_METHOD {
        return FirstLine::NONE;
    }
    FirstLine {
        method_index: packed_method(head, space),
        status_code: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(payload: &[u8]) -> FirstLine {
        first_line(payload, 0, payload.len())
    }

    #[test]
    fn requests_and_responses() {
        let m = |name: &str| method_index(name.as_bytes());
        assert_eq!(line(b"OPTIONS sip:x SIP/2.0\r\n").method(), m("OPTIONS"));
        assert_eq!(
            line(b"SUBSCRIBE sip:x SIP/2.0\r\n").method(),
            m("SUBSCRIBE")
        );
        assert_eq!(line(b"ACK sip:x SIP/2.0\r\n").method(), Some(1));
        assert_eq!(line(b"BYE ").method(), Some(2), "shorter than the head");
        assert_eq!(
            line(b"SIP/2.0 503 Service Unavailable\r\n").status(),
            Some(503)
        );
        assert_eq!(line(b"SIP/2.0 180\r\n").status(), Some(180));
        assert_eq!(
            line(b"SIP/2.0 200").status(),
            Some(200),
            "the payload ends there"
        );
        assert_eq!(
            line(b"SIP/2.0 200 OK\r\n"),
            FirstLine {
                method_index: FirstLine::NO_METHOD,
                status_code: 200
            }
        );
    }

    #[test]
    fn every_method_is_found_by_its_exact_name_only() {
        for (i, name) in METHODS.iter().enumerate() {
            assert_eq!(method_index(name.as_bytes()), Some(i as u8), "{name}");
            let line = [name.as_bytes(), b" sip:x SIP/2.0"].concat();
            assert_eq!(first_line(&line[..], 0, line.len()).method(), Some(i as u8));
            assert_eq!(method_index(&name.as_bytes()[1..]), None, "{name}");
            assert_eq!(
                method_index(name.to_ascii_lowercase().as_bytes()),
                None,
                "{name}"
            );
        }
        assert_eq!(method_index(b""), None);
        assert_eq!(method_index(b"SUBSCRIBEX"), None);
    }

    #[test]
    fn what_has_neither() {
        for p in [
            &b""[..],
            b"options sip:x SIP/2.0",
            b"OPTIONSX sip:x",
            b"OPTIONS",
            b"FOO sip:x SIP/2.0",
            b" INVITE sip:x",
            b"SIP/2.0 2000 OK",
            b"SIP/2.0 099 x",
            b"SIP/2.0 700 x",
            b"SIP/2.0 20a OK",
            b"SIP/3.0 200 OK",
            b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c",
        ] {
            assert_eq!(
                line(p),
                FirstLine::default(),
                "{:?}",
                core::str::from_utf8(p)
            );
        }
    }

    #[test]
    fn only_the_window_is_read() {
        // The payload at an offset, and a source shorter than it claims: no answer, no
        // panic.
        let buf = b"xxxxINVITE sip:b SIP/2.0";
        assert_eq!(first_line(&buf[..], 4, 20).method(), Some(0));
        assert_eq!(first_line(&buf[..], 4, 40).method(), Some(0));
        assert_eq!(first_line(&buf[..8], 4, 40), FirstLine::default());
    }
}
