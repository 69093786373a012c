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

/// What a first line says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirstLine {
    /// A request's method: its index in [`METHODS`].
    pub method: Option<u8>,
    /// A response's status code.
    pub status: Option<u16>,
}

/// The index in [`METHODS`] of `name` (exact bytes).
pub fn method_index(name: &[u8]) -> Option<u8> {
    let mut i = 0;
    while i < METHODS.len() {
        if METHODS[i].as_bytes() == name {
            return Some(i as u8);
        }
        i += 1;
    }
    None
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
            None => return FirstLine::default(),
        }
    } else {
        let mut i = 0;
        while i < FIRST_LINE_BYTES {
            if i < n {
                match src.load::<1>(offset + i) {
                    Some([b]) => head[i] = b,
                    None => return FirstLine::default(),
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
                method: None,
                status: Some(code),
            };
        }
        return FirstLine::default();
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
        return FirstLine::default();
    }
    FirstLine {
        method: head.get(..space).and_then(method_index),
        status: None,
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
        assert_eq!(line(b"OPTIONS sip:x SIP/2.0\r\n").method, m("OPTIONS"));
        assert_eq!(line(b"SUBSCRIBE sip:x SIP/2.0\r\n").method, m("SUBSCRIBE"));
        assert_eq!(line(b"ACK sip:x SIP/2.0\r\n").method, Some(1));
        assert_eq!(line(b"BYE ").method, Some(2), "shorter than the head");
        assert_eq!(
            line(b"SIP/2.0 503 Service Unavailable\r\n").status,
            Some(503)
        );
        assert_eq!(line(b"SIP/2.0 180\r\n").status, Some(180));
        assert_eq!(
            line(b"SIP/2.0 200").status,
            Some(200),
            "the payload ends there"
        );
        assert_eq!(
            line(b"SIP/2.0 200 OK\r\n"),
            FirstLine {
                method: None,
                status: Some(200)
            }
        );
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
        assert_eq!(first_line(&buf[..], 4, 20).method, Some(0));
        assert_eq!(first_line(&buf[..], 4, 40).method, Some(0));
        assert_eq!(first_line(&buf[..8], 4, 40), FirstLine::default());
    }
}
