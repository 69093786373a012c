//! HEPv1 and HEPv2 (UDP only), with the layout real agents send (`../shared/HEP.md` §2.1),
//! and lossless conversion to HEPv3 (§8.5).
//!
//! ```text
//! 0  hp_v  version (1|2)      4  src port (BE)        8  src addr, dst addr (4+4 or 16+16)
//! 1  hp_l  header length      6  dst port (BE)        then, v2 only, 12 bytes:
//! 2  hp_f  family (2|10)                                 tv_sec LE, tv_usec LE, captid u16 LE,
//! 3  hp_p  IP protocol                                   2 bytes padding
//! ```
//! `hp_l` is the header length without the time block: 16 (IPv4) or 40 (IPv6). The payload
//! starts at `hp_l` (v1) or `hp_l + 12` (v2): 16/40 and 28/52.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::chunk::proto;
use crate::error::HepError;
use crate::v3::{Hep3, Hep3Message, Payload};

/// Size of the v2 time block (`hep_timehdr`, 10 bytes of fields + 2 of struct padding).
pub const TIME_BLOCK_LEN: usize = 12;
/// Address family byte for IPv4.
pub const AF_INET: u8 = 2;
/// Address family byte for IPv6 (Linux).
pub const AF_INET6: u8 = 10;

/// The v2 time block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyTime {
    /// Seconds (little endian on the wire).
    pub ts_sec: u32,
    /// Microseconds (little endian on the wire).
    pub ts_usec: u32,
    /// 16-bit capture id (little endian on the wire).
    pub capture_id: u16,
}

/// A HEPv1 or HEPv2 packet, borrowed from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HepLegacy<'a> {
    /// 1 or 2.
    pub version: u8,
    /// IP protocol of the captured packet.
    pub ip_proto: u8,
    /// Captured source address.
    pub src_ip: IpAddr,
    /// Captured destination address (same family).
    pub dst_ip: IpAddr,
    /// Captured source port.
    pub src_port: u16,
    /// Captured destination port.
    pub dst_port: u16,
    /// The v2 time block; `None` for v1.
    pub time: Option<LegacyTime>,
    /// The captured SIP message.
    pub payload: &'a [u8],
}

/// The header length (`hp_l`) for an address family byte.
pub const fn header_len_for(family: u8) -> Option<usize> {
    match family {
        AF_INET => Some(16),
        AF_INET6 => Some(40),
        _ => None,
    }
}

impl<'a> HepLegacy<'a> {
    /// Parses a HEPv1/v2 datagram. The whole datagram after the header is the payload.
    pub fn parse(buf: &'a [u8]) -> Result<Self, HepError> {
        if buf.len() < 8 {
            return Err(HepError::Truncated {
                needed: 8,
                have: buf.len(),
            });
        }
        let version = buf[0];
        if version != 1 && version != 2 {
            return Err(HepError::UnknownVersion);
        }
        let (hdr_len, family, ip_proto) = (buf[1], buf[2], buf[3]);
        let expected = header_len_for(family);
        if expected != Some(hdr_len as usize) {
            return Err(HepError::BadLegacyHeader {
                version,
                hdr_len,
                family,
            });
        }
        let hl = hdr_len as usize;
        let payload_off = if version == 2 {
            hl + TIME_BLOCK_LEN
        } else {
            hl
        };
        let Some(head) = buf.get(..payload_off) else {
            return Err(HepError::Truncated {
                needed: payload_off,
                have: buf.len(),
            });
        };
        let src_port = u16::from_be_bytes([head[4], head[5]]);
        let dst_port = u16::from_be_bytes([head[6], head[7]]);
        let (src_ip, dst_ip) = if family == AF_INET {
            let s: [u8; 4] = head[8..12]
                .try_into()
                .map_err(|_| HepError::UnknownVersion)?;
            let d: [u8; 4] = head[12..16]
                .try_into()
                .map_err(|_| HepError::UnknownVersion)?;
            (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))
        } else {
            let s: [u8; 16] = head[8..24]
                .try_into()
                .map_err(|_| HepError::UnknownVersion)?;
            let d: [u8; 16] = head[24..40]
                .try_into()
                .map_err(|_| HepError::UnknownVersion)?;
            (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)))
        };
        let time = if version == 2 {
            let t = &head[hl..hl + TIME_BLOCK_LEN];
            Some(LegacyTime {
                ts_sec: u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
                ts_usec: u32::from_le_bytes([t[4], t[5], t[6], t[7]]),
                capture_id: u16::from_le_bytes([t[8], t[9]]),
            })
        } else {
            None
        };
        Ok(HepLegacy {
            version,
            ip_proto,
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            time,
            payload: &buf[payload_off..],
        })
    }

    /// The encoded size.
    pub fn encoded_len(&self) -> usize {
        let hl = match self.src_ip {
            IpAddr::V4(_) => 16,
            IpAddr::V6(_) => 40,
        };
        hl + if self.version == 2 { TIME_BLOCK_LEN } else { 0 } + self.payload.len()
    }

    /// Encodes as HEPv1 or HEPv2 (by `version`; v2 without `time` writes zeros).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, HepError> {
        if self.version != 1 && self.version != 2 {
            return Err(HepError::UnknownVersion);
        }
        let needed = self.encoded_len();
        let Some(out) = out.get_mut(..needed) else {
            return Err(HepError::BufferTooSmall {
                needed,
                have: out.len(),
            });
        };
        let (family, hl) = match (self.src_ip, self.dst_ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out[8..12].copy_from_slice(&s.octets());
                out[12..16].copy_from_slice(&d.octets());
                (AF_INET, 16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                out[8..24].copy_from_slice(&s.octets());
                out[24..40].copy_from_slice(&d.octets());
                (AF_INET6, 40)
            }
            _ => return Err(HepError::MixedFamilies),
        };
        out[0] = self.version;
        out[1] = hl as u8;
        out[2] = family;
        out[3] = self.ip_proto;
        out[4..6].copy_from_slice(&self.src_port.to_be_bytes());
        out[6..8].copy_from_slice(&self.dst_port.to_be_bytes());
        let mut off = hl;
        if self.version == 2 {
            let t = self.time.unwrap_or(LegacyTime {
                ts_sec: 0,
                ts_usec: 0,
                capture_id: 0,
            });
            out[off..off + 4].copy_from_slice(&t.ts_sec.to_le_bytes());
            out[off + 4..off + 8].copy_from_slice(&t.ts_usec.to_le_bytes());
            out[off + 8..off + 10].copy_from_slice(&t.capture_id.to_le_bytes());
            out[off + 10..off + 12].copy_from_slice(&[0, 0]);
            off += TIME_BLOCK_LEN;
        }
        out[off..].copy_from_slice(self.payload);
        Ok(needed)
    }

    /// The same message as HEPv3 fields.
    ///
    /// Lossless: every v1/v2 field maps to a chunk (family, proto, addresses, ports, v2 time
    /// and capture id). v1 has no time, so `recv_time` (seconds, microseconds) is used, and
    /// its capture id is 0. v1/v2 carried SIP only, so the protocol type is 1.
    pub fn to_hep3(&self, recv_time: (u32, u32)) -> Hep3Message<'a> {
        let (ts_sec, ts_usec, capture_id) = match self.time {
            Some(t) => (t.ts_sec, t.ts_usec, u32::from(t.capture_id)),
            None => (recv_time.0, recv_time.1, 0),
        };
        Hep3Message {
            ip_proto: self.ip_proto,
            src_ip: self.src_ip,
            dst_ip: self.dst_ip,
            src_port: self.src_port,
            dst_port: self.dst_port,
            ts_sec,
            ts_usec,
            proto_type: proto::SIP,
            capture_id,
            auth_key: None,
            correlation_id: None,
            vlan_id: None,
            node_name: None,
            extra: &[],
            payload: Payload::Plain(self.payload),
        }
    }

    /// A HEPv2 message from a HEPv3 packet, for collectors that only take v2.
    ///
    /// Lossy by nature: v2 has no room for any chunk but the address, port, time, capture id
    /// and plain payload ones. A capture id above 65535 keeps its low 16 bits. Needs chunks
    /// 0x0002, both addresses, both ports and 0x000f; missing time is written as 0.
    pub fn from_hep3(p: &Hep3<'a>) -> Result<Self, HepError> {
        use crate::chunk::{DST_IPV4, DST_PORT, IP_PROTO, PAYLOAD, SRC_IPV4, SRC_PORT};
        let src_ip = p
            .src_ip()
            .ok_or(HepError::MissingChunk { kind: SRC_IPV4 })?;
        let dst_ip = p
            .dst_ip()
            .ok_or(HepError::MissingChunk { kind: DST_IPV4 })?;
        if core::mem::discriminant(&src_ip) != core::mem::discriminant(&dst_ip) {
            return Err(HepError::MixedFamilies);
        }
        Ok(HepLegacy {
            version: 2,
            ip_proto: p
                .ip_proto()
                .ok_or(HepError::MissingChunk { kind: IP_PROTO })?,
            src_ip,
            dst_ip,
            src_port: p
                .src_port()
                .ok_or(HepError::MissingChunk { kind: SRC_PORT })?,
            dst_port: p
                .dst_port()
                .ok_or(HepError::MissingChunk { kind: DST_PORT })?,
            time: Some(LegacyTime {
                ts_sec: p.ts_sec().unwrap_or(0),
                ts_usec: p.ts_usec().unwrap_or(0),
                capture_id: p.capture_id().unwrap_or(0) as u16,
            }),
            payload: p
                .payload()
                .ok_or(HepError::MissingChunk { kind: PAYLOAD })?,
        })
    }
}
