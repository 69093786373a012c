//! HEP over TCP: where the next frame ends in a stream buffer.
//!
//! A stream is a plain concatenation of HEPv3 packets, each self-delimited by its u16 total
//! length at offset 4 (`../shared/HEP.md` §2.3). HEPv1/v2 do not exist on TCP. There is no
//! way to resynchronise after garbage, so [`FrameError`] means: close the connection.

use crate::chunk::{HEADER_LEN, MAGIC};

/// The largest frame a HEPv3 length field can describe.
pub const MAX_FRAME_LEN: usize = 65_535;

/// Why a stream cannot be framed (the connection should be closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The next bytes are not `HEP3`.
    #[error("stream does not start with HEP3 (found {found:02x?})")]
    BadMagic {
        /// The bytes found where the magic should be (zero-padded).
        found: [u8; 4],
    },
    /// A length field below the 6-byte header.
    #[error("frame length {len} is below the 6-byte header")]
    LengthTooSmall {
        /// The length field.
        len: usize,
    },
    /// A length field above the configured maximum.
    #[error("frame length {len} exceeds the maximum {max}")]
    TooLarge {
        /// The length field.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// The length of the frame at the start of `buf`: `Ok(Some(n))` when `buf` holds at least
/// one whole frame of `n` bytes, `Ok(None)` when more bytes are needed, `Err` on garbage.
///
/// Garbage is reported as soon as the bytes present prove it (a wrong first byte fails
/// immediately, without waiting for 6 bytes).
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        let mut found = [0u8; 4];
        found[..n].copy_from_slice(&buf[..n]);
        return Err(FrameError::BadMagic { found });
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if len < HEADER_LEN {
        return Err(FrameError::LengthTooSmall { len });
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(if buf.len() >= len { Some(len) } else { None })
}
