//! Ethernet / VLAN / IPv4 / IPv6 / UDP parsing with direct packet access.
//!
//! Every read goes through [`Frame::load`], which compares the end of the read with
//! `data_end` in a form the verifier follows. Offsets are small bounded scalars (at most
//! 14 + 2·4 + 60 + 8), never unbounded, so the pointer arithmetic verifies.

use aya_ebpf::programs::XdpContext;
use hep_common::abi::{Addr16, XdpCounter, map_v4};

use crate::net::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, Frame, IP_MF_OFFSET_MASK,
    IPPROTO_UDP, IPV4_HLEN, IPV6_EXT_HEADERS, IPV6_HLEN, UDP_HLEN, VLAN_HLEN, ipv4, ipv6, udp,
};

/// A UDP datagram: where its headers and payload are in the frame, and how long the payload
/// is (from the UDP length, so Ethernet padding is not counted).
#[derive(Clone, Copy)]
pub struct HepDatagram {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the UDP header.
    pub l4: usize,
    /// Offset of the UDP payload from the start of the frame.
    pub payload_offset: usize,
    /// UDP payload length.
    pub payload_len: usize,
    /// Whether the frame carries VLAN tags.
    pub tagged: bool,
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// UDP destination port (host order).
    pub dport: u16,
    /// The sender: the outer source address, IPv4 mapped.
    pub sender: Addr16,
    /// The outer destination address, IPv4 mapped.
    pub dst: Addr16,
}

/// Parses the headers up to UDP into `out`. `Ok` is a UDP datagram (the caller decides
/// whether a listener takes it); `Err` is the outcome counter for everything else. (`out`
/// rather than a return value: it lives in the scratch map, off the short stack.) Inlined:
/// packet pointers do not survive a call in a form the verifier accepts.
#[inline(always)]
pub fn parse(ctx: &XdpContext, out: &mut HepDatagram) -> Result<(), XdpCounter> {
    // Ethernet, then up to two VLAN tags (802.1Q / 802.1ad, in any order).
    let Some(mut proto) = ctx.load_be16(ETH_HLEN - 2) else {
        return Err(XdpCounter::Truncated);
    };
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(inner) = ctx.load_be16(l3 + 2) else {
            return Err(XdpCounter::Truncated);
        };
        proto = inner;
        l3 += VLAN_HLEN;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(inner) = ctx.load_be16(l3 + 2) else {
                return Err(XdpCounter::Truncated);
            };
            proto = inner;
            l3 += VLAN_HLEN;
        }
    }

    let tagged = l3 != ETH_HLEN;
    // The addresses come from the IP header as it is read (direct packet access, no
    // helper copies), IPv4 mapped.
    let (l4, v6) = match proto {
        ETH_P_IP => {
            let (l4, saddr, daddr) = ipv4(ctx, l3)?;
            out.sender = map_v4(saddr);
            out.dst = map_v4(daddr);
            (l4, false)
        }
        ETH_P_IPV6 => {
            let l4 = ipv6(ctx, l3)?;
            let (Some(saddr), Some(daddr)) = (
                ctx.load::<16>(l3 + ipv6::SADDR),
                ctx.load::<16>(l3 + ipv6::DADDR),
            ) else {
                return Err(XdpCounter::Truncated);
            };
            out.sender = saddr;
            out.dst = daddr;
            (l4, true)
        }
        _ => return Err(XdpCounter::NotIp),
    };

    // UDP.
    let Some(udp_header) = ctx.load::<UDP_HLEN>(l4) else {
        return Err(XdpCounter::Truncated);
    };
    let dport = u16::from_be_bytes([udp_header[udp::DEST], udp_header[udp::DEST + 1]]);
    let udp_len = u16::from_be_bytes([udp_header[udp::LEN], udp_header[udp::LEN + 1]]) as usize;
    if udp_len < UDP_HLEN {
        return Err(XdpCounter::Malformed);
    }
    let payload_offset = l4 + UDP_HLEN;
    let payload_len = udp_len - UDP_HLEN;
    let frame_len = ctx.data_end() - ctx.data();
    if payload_offset + payload_len > frame_len {
        return Err(XdpCounter::Truncated);
    }
    out.l3 = l3;
    out.l4 = l4;
    out.payload_offset = payload_offset;
    out.payload_len = payload_len;
    out.tagged = tagged;
    out.v6 = v6;
    out.dport = dport;
    Ok(())
}

/// IPv4 at `l3`: the offset of the UDP header and the source and destination addresses,
/// or the outcome.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<(usize, [u8; 4], [u8; 4]), XdpCounter> {
    let Some(h) = ctx.load::<IPV4_HLEN>(l3) else {
        return Err(XdpCounter::Truncated);
    };
    if h[0] >> 4 != 4 {
        return Err(XdpCounter::Malformed);
    }
    let ihl = (h[0] & 0x0f) as usize * 4;
    if ihl < IPV4_HLEN {
        return Err(XdpCounter::Malformed);
    }
    // Options (IHL > 5) must be present too.
    if ctx.load_u8(l3 + ihl - 1).is_none() {
        return Err(XdpCounter::Truncated);
    }
    if h[ipv4::PROTOCOL] != IPPROTO_UDP {
        return Err(XdpCounter::NotUdp);
    }
    if u16::from_be_bytes([h[ipv4::FRAG_OFF], h[ipv4::FRAG_OFF + 1]]) & IP_MF_OFFSET_MASK != 0 {
        return Err(XdpCounter::Fragment);
    }
    let at = |i: usize| [h[i], h[i + 1], h[i + 2], h[i + 3]];
    Ok((l3 + ihl, at(ipv4::SADDR), at(ipv4::DADDR)))
}

/// IPv6 at `l3`: the offset of the UDP header, or the outcome. Extension headers are not
/// walked: a packet whose first next-header is one goes to the daemon.
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<usize, XdpCounter> {
    let Some(h) = ctx.load::<8>(l3) else {
        return Err(XdpCounter::Truncated);
    };
    if h[0] >> 4 != 6 {
        return Err(XdpCounter::Malformed);
    }
    if ctx.load_u8(l3 + IPV6_HLEN - 1).is_none() {
        return Err(XdpCounter::Truncated);
    }
    let next = h[ipv6::NEXTHDR];
    if next == IPPROTO_UDP {
        return Ok(l3 + IPV6_HLEN);
    }
    let mut i = 0;
    while i < IPV6_EXT_HEADERS.len() {
        if next == IPV6_EXT_HEADERS[i] {
            return Err(XdpCounter::Ipv6ExtHeader);
        }
        i += 1;
    }
    Err(XdpCounter::NotUdp)
}
