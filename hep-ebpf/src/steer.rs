//! Steering: send the HEP packet to one collector from XDP. The outer IP and UDP headers
//! are rewritten (source = the node's address toward the collector, source port = the
//! listener port, destination = the collector), the TTL / hop limit decremented, the
//! checksums updated incrementally (RFC 1624; the IPv4 UDP checksum is set to 0), the MACs
//! taken from the next-hop cache or `bpf_fib_lookup` (`next_hop.rs`), then `XDP_TX` (same
//! interface) or a redirect.
//!
//! The lookup happens before anything is written: when it cannot answer (no neighbour entry
//! yet, forwarding disabled on the ingress interface, no route, MTU) the packet is passed up
//! untouched and the daemon sends it, which also resolves the neighbour for the next ones.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_redirect},
    programs::XdpContext,
};
use hep_common::abi::KernelDestination;

use crate::fib::Query;
use crate::net::{Csum, ETH_DEST, ETH_SOURCE, Frame, IPV6_HLEN, ipv4, ipv6, udp};
use crate::next_hop;
use crate::parse::HepDatagram;
use crate::scratch::Entry;

/// [`steer`]'s answer when the kernel cannot send the packet (nothing was written).
pub const FALLBACK: u32 = u32::MAX;

/// Sends the datagram to `dest`; returns the XDP action, or [`FALLBACK`] (nothing written)
/// when the kernel cannot send it and userspace must.
///
/// Not inlined: its own stack frame keeps the program's deepest call chain (the entry
/// function plus one callee) within the verifier's 512 bytes.
#[inline(never)]
pub fn steer(ctx: &XdpContext, d: &HepDatagram, dest: &KernelDestination) -> u32 {
    // The offsets come through map memory (unknown to the verifier): the masks (no-ops:
    // the IP header starts at most 22 bytes in, UDP at most 82) bound them for it.
    let h = Headers {
        l3: d.l3 & 0x1f,
        l4: d.l4 & 0x7f,
        listener_port: d.dport,
    };
    // Tagged frames and a change of IP family need headers resized: userspace.
    if d.tagged || (dest.family == 6) != d.v6 {
        return FALLBACK;
    }
    let Some(s) = Entry::get() else {
        return FALLBACK;
    };
    let q = if d.v6 {
        let Some(ip) = ctx.load::<8>(h.l3) else {
            return FALLBACK;
        };
        if ip[ipv6::HOP_LIMIT] <= 1 {
            return FALLBACK;
        }
        Query {
            v6: true,
            ifindex: ctx.ingress_ifindex() as u32,
            tot_len: u16::from_be_bytes([ip[ipv6::PAYLOAD_LEN], ip[ipv6::PAYLOAD_LEN + 1]])
                .wrapping_add(IPV6_HLEN as u16),
            tos: 0,
            sport: d.dport,
        }
    } else {
        let Some(ip) = ctx.load::<12>(h.l3) else {
            return FALLBACK;
        };
        if ip[ipv4::TTL] <= 1 {
            return FALLBACK;
        }
        Query {
            v6: false,
            ifindex: ctx.ingress_ifindex() as u32,
            tot_len: u16::from_be_bytes([ip[ipv4::TOT_LEN], ip[ipv4::TOT_LEN + 1]]),
            tos: ip[ipv4::TOS],
            sport: d.dport,
        }
    };
    let Some(hop) = next_hop::resolve(ctx.ctx.cast(), s.fib(), &q, dest) else {
        return FALLBACK;
    };
    let done = if d.v6 {
        rewrite_v6(ctx, &h, dest)
    } else {
        rewrite_v4(ctx, &h, dest)
    };
    if !done {
        return FALLBACK;
    }
    ctx.store(ETH_DEST, &hop.dmac);
    ctx.store(ETH_SOURCE, &hop.smac);
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call; it returns XDP_REDIRECT (XDP_ABORTED on a bad flag).
        unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
    }
}

/// Where the headers are (bounded offsets) and the listener port.
struct Headers {
    l3: usize,
    l4: usize,
    listener_port: u16,
}

/// The new UDP ports: from the listener port to the collector's.
#[inline(always)]
fn ports(d: &Headers, dest: &KernelDestination) -> [u8; 4] {
    let [a, b] = d.listener_port.to_be_bytes();
    let [c, e] = dest.port.to_be_bytes();
    [a, b, c, e]
}

/// IPv4: TTL, addresses and header checksum; UDP ports, checksum 0. `false`, with nothing
/// written, when the headers are not all in the frame.
#[inline(always)]
fn rewrite_v4(ctx: &XdpContext, d: &Headers, dest: &KernelDestination) -> bool {
    // ttl, proto, checksum, saddr, daddr.
    let Some(o) = ctx.load::<12>(d.l3 + ipv4::TTL) else {
        return false;
    };
    let Some(u) = ctx.load::<6>(d.l4) else {
        return false;
    };
    let (sa, da) = (&dest.src_addr, &dest.addr);
    let mut c = Csum::of([o[2], o[3]]);
    c.replace([o[0], o[1]], [o[0] - 1, o[1]]);
    c.replace([o[4], o[5]], [sa[12], sa[13]]);
    c.replace([o[6], o[7]], [sa[14], sa[15]]);
    c.replace([o[8], o[9]], [da[12], da[13]]);
    c.replace([o[10], o[11]], [da[14], da[15]]);
    ctx.store(d.l3 + ipv4::TTL, &[o[0] - 1]);
    ctx.store(d.l3 + ipv4::CHECK, &c.done());
    ctx.store(d.l3 + ipv4::SADDR, &[sa[12], sa[13], sa[14], sa[15]]);
    ctx.store(d.l3 + ipv4::DADDR, &[da[12], da[13], da[14], da[15]]);
    let p = ports(d, dest);
    ctx.store(
        d.l4,
        &[p[0], p[1], p[2], p[3], u[udp::LEN], u[udp::LEN + 1], 0, 0],
    );
    true
}

/// IPv6: hop limit and addresses; UDP ports and checksum (its pseudo-header holds the
/// addresses). `false`, with nothing written, when the headers are not all in the frame.
#[inline(always)]
fn rewrite_v6(ctx: &XdpContext, d: &Headers, dest: &KernelDestination) -> bool {
    // The whole header in one read (one bounds check the verifier can follow).
    let Some(mut ip) = ctx.load::<IPV6_HLEN>(d.l3) else {
        return false;
    };
    let hop = ip[ipv6::HOP_LIMIT];
    let Some(u) = ctx.load::<8>(d.l4) else {
        return false;
    };
    // The 32 address bytes, old to new (`addr` then `src_addr`, adjacent in the
    // destination: one's complement sums do not care about the order of 16-bit words).
    // SAFETY: both ranges are 32 readable bytes (bytes 8..40 of our copy of the header;
    // the two adjacent address fields of the destination, pinned by abi::layout); the
    // helper only reads them.
    let partial = unsafe {
        bpf_csum_diff(
            ip.as_mut_ptr().add(ipv6::SADDR).cast(),
            32,
            dest.addr.as_ptr() as *mut u32,
            32,
            0,
        )
    };
    if partial < 0 {
        return false;
    }
    let mut c = Csum::of([u[udp::CHECK], u[udp::CHECK + 1]]);
    c.add_partial(partial as u32);
    let p = ports(d, dest);
    c.replace([u[0], u[1]], [p[0], p[1]]);
    c.replace([u[2], u[3]], [p[2], p[3]]);
    let sum = c.done_udp();
    ctx.store(d.l3 + ipv6::HOP_LIMIT, &[hop - 1]);
    ctx.store(d.l3 + ipv6::SADDR, &dest.src_addr);
    ctx.store(d.l3 + ipv6::DADDR, &dest.addr);
    ctx.store(
        d.l4,
        &[
            p[0],
            p[1],
            p[2],
            p[3],
            u[udp::LEN],
            u[udp::LEN + 1],
            sum[0],
            sum[1],
        ],
    );
    true
}
