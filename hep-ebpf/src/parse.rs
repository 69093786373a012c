//! Ethernet / VLAN / IPv4 / IPv6 / UDP parsing with direct packet access.
//!
//! Every read goes through [`load`], which compares the end of the read with `data_end` in
//! a form the verifier follows. Offsets are small bounded scalars (at most
//! 14 + 2·4 + 60 + 8), never unbounded, so the pointer arithmetic verifies.

use aya_ebpf::programs::XdpContext;
use hep_common::kernel_plan::{Addr16, map_v4};
use hep_common::maps::XdpCounter;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
/// IPv4 flags/fragment offset: MF bit and the 13-bit offset.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

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

/// `N` bytes at `off`, read directly from the packet after a bounds check against
/// `data_end`.
#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    let p = start + off;
    if p + N > end {
        return None;
    }
    // SAFETY: `p..p + N` is inside the packet (checked just above against data_end); the
    // read is unaligned-safe.
    Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
}

#[inline(always)]
fn load_u8(ctx: &XdpContext, off: usize) -> Option<u8> {
    load::<1>(ctx, off).map(|b| b[0])
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    load::<2>(ctx, off).map(u16::from_be_bytes)
}

/// Parses the headers up to UDP into `out`. `Ok` is a UDP datagram (the caller decides
/// whether a listener takes it); `Err` is the outcome counter for everything else. (`out`
/// rather than a return value: it lives in the scratch map, off the short stack.) Inlined:
/// packet pointers do not survive a call in a form the verifier accepts.
#[inline(always)]
pub fn parse(ctx: &XdpContext, out: &mut HepDatagram) -> Result<(), XdpCounter> {
    // Ethernet, then up to two VLAN tags (802.1Q / 802.1ad, in any order).
    let Some(mut proto) = load_be16(ctx, ETH_HLEN - 2) else {
        return Err(XdpCounter::Truncated);
    };
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(inner) = load_be16(ctx, l3 + 2) else {
            return Err(XdpCounter::Truncated);
        };
        proto = inner;
        l3 += VLAN_HLEN;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(inner) = load_be16(ctx, l3 + 2) else {
                return Err(XdpCounter::Truncated);
            };
            proto = inner;
            l3 += VLAN_HLEN;
        }
    }

    let tagged = l3 != ETH_HLEN;
    let (l4, v6) = match proto {
        ETH_P_IP => (ipv4(ctx, l3)?, false),
        ETH_P_IPV6 => (ipv6(ctx, l3)?, true),
        _ => return Err(XdpCounter::NotIp),
    };

    // UDP.
    let Some(udp) = load::<UDP_HLEN>(ctx, l4) else {
        return Err(XdpCounter::Truncated);
    };
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
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
    // The addresses straight from the frame into `out` (no stack copies; the header was
    // bounds-checked above, the helper checks again).
    let ok = if v6 {
        copy_out(ctx, l3 + 8, &mut out.sender) && copy_out(ctx, l3 + 24, &mut out.dst)
    } else {
        out.sender = map_v4([0; 4]);
        out.dst = map_v4([0; 4]);
        copy_out(ctx, l3 + 12, &mut out.sender[12..]) && copy_out(ctx, l3 + 16, &mut out.dst[12..])
    };
    if !ok {
        return Err(XdpCounter::Truncated);
    }
    Ok(())
}

/// Copies `to.len()` frame bytes at `off` into `to` (`bpf_xdp_load_bytes`).
#[inline(always)]
fn copy_out(ctx: &XdpContext, off: usize, to: &mut [u8]) -> bool {
    // SAFETY: `to` is `to.len()` writable bytes; the helper checks the frame range.
    unsafe {
        aya_ebpf::helpers::bpf_xdp_load_bytes(
            ctx.ctx,
            off as u32,
            to.as_mut_ptr().cast(),
            to.len() as u32,
        ) == 0
    }
}

/// IPv4 at `l3`: the offset of the UDP header, or the outcome.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<usize, XdpCounter> {
    let Some(h) = load::<20>(ctx, l3) else {
        return Err(XdpCounter::Truncated);
    };
    if h[0] >> 4 != 4 {
        return Err(XdpCounter::Malformed);
    }
    let ihl = (h[0] & 0x0f) as usize * 4;
    if ihl < 20 {
        return Err(XdpCounter::Malformed);
    }
    // Options (IHL > 5) must be present too.
    if load_u8(ctx, l3 + ihl - 1).is_none() {
        return Err(XdpCounter::Truncated);
    }
    if h[9] != IPPROTO_UDP {
        return Err(XdpCounter::NotUdp);
    }
    if u16::from_be_bytes([h[6], h[7]]) & IP_MF_OFFSET_MASK != 0 {
        return Err(XdpCounter::Fragment);
    }
    Ok(l3 + ihl)
}

/// IPv6 at `l3`: the offset of the UDP header, or the outcome. Extension headers are not
/// walked: a packet whose first next-header is one goes to the daemon.
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<usize, XdpCounter> {
    let Some(h) = load::<8>(ctx, l3) else {
        return Err(XdpCounter::Truncated);
    };
    if h[0] >> 4 != 6 {
        return Err(XdpCounter::Malformed);
    }
    if load_u8(ctx, l3 + IPV6_HLEN - 1).is_none() {
        return Err(XdpCounter::Truncated);
    }
    match h[6] {
        IPPROTO_UDP => Ok(l3 + IPV6_HLEN),
        // Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP,
        // shim6, and the two experimental values.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => Err(XdpCounter::Ipv6ExtHeader),
        _ => Err(XdpCounter::NotUdp),
    }
}
