//! HEP version detection (`../shared/HEP.md` §2.2, the strict recommendation) and a parsed
//! packet of any version.

use crate::error::HepError;
use crate::legacy::{HepLegacy, header_len_for};
use crate::v3::Hep3;

/// A HEP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HepVersion {
    /// HEPv1 (no time block).
    V1 = 1,
    /// HEPv2 (time block, 16-bit capture id).
    V2 = 2,
    /// HEPv3 (chunks).
    V3 = 3,
}

/// The version of a packet from its first 4 bytes:
/// v3 when they are `HEP3`; v1/v2 when byte 0 is 1 or 2, byte 2 (family) is 2 or 10 and
/// byte 1 (header length) is 16 for family 2, 40 for family 10. `None` otherwise.
#[inline(always)]
pub const fn detect_prefix(b: [u8; 4]) -> Option<HepVersion> {
    if b[0] == b'H' && b[1] == b'E' && b[2] == b'P' && b[3] == b'3' {
        return Some(HepVersion::V3);
    }
    let v = match b[0] {
        1 => HepVersion::V1,
        2 => HepVersion::V2,
        _ => return None,
    };
    match header_len_for(b[2]) {
        Some(hl) if hl == b[1] as usize => Some(v),
        _ => None,
    }
}

/// The version of a packet, `None` when it is not HEP (or shorter than 4 bytes).
pub fn detect(buf: &[u8]) -> Option<HepVersion> {
    let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    detect_prefix(prefix)
}

/// A parsed HEP packet of any version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HepPacket<'a> {
    /// HEPv3.
    V3(Hep3<'a>),
    /// HEPv1 or HEPv2.
    Legacy(HepLegacy<'a>),
}

impl<'a> HepPacket<'a> {
    /// Detects the version and parses one datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Self, HepError> {
        match detect(buf) {
            Some(HepVersion::V3) => Hep3::parse(buf).map(HepPacket::V3),
            Some(_) => HepLegacy::parse(buf).map(HepPacket::Legacy),
            None if buf.len() < 4 => Err(HepError::Truncated {
                needed: 4,
                have: buf.len(),
            }),
            None => Err(HepError::UnknownVersion),
        }
    }

    /// The packet's version.
    pub fn version(&self) -> HepVersion {
        match self {
            HepPacket::V3(_) => HepVersion::V3,
            HepPacket::Legacy(l) if l.version == 1 => HepVersion::V1,
            HepPacket::Legacy(_) => HepVersion::V2,
        }
    }
}
