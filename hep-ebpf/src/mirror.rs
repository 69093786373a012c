//! `hep_mirror`: the TC (TCX ingress) half of mirroring, after `../shared/XDP.md` §4.3.
//!
//! `hep_xdp` marks a packet to mirror with a [`MirrorMeta`] in the XDP metadata and passes
//! it; here, for each target of that route, the outer headers are rewritten (as a steer
//! would: source = the node, source port = the listener port, destination = the collector,
//! TTL − 1, checksums updated from the *original* headers) with `bpf_skb_store_bytes`, and
//! `bpf_clone_redirect` sends a copy out of the egress interface `bpf_fib_lookup` names
//! (through the next-hop cache, `next_hop.rs`, shared with `hep_xdp`).
//! Then the original is dropped.
//!
//! All next hops are looked up before the first copy: if one cannot be resolved (no
//! neighbour yet, ...) no copy is made and the packet goes on to the daemon untouched (the
//! metadata is ignored by the stack), which mirrors it — never half a mirror.
//! A packet without the metadata is none of this program's business: `TC_ACT_OK`.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_clone_redirect, bpf_csum_diff},
    macros::classifier,
    programs::TcContext,
};
use hep_common::abi::{
    DestCounter, KernelDestination, KernelRoute, MAX_DESTINATIONS, MAX_ROUTES, MAX_TARGETS,
    MIRROR_META_MAGIC, MirrorMeta, RouteAction,
};

use crate::counters::count_dest;
use crate::fib::{NextHop, Query};
use crate::net::{
    Csum, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Frame, IPV4_HLEN, IPV6_HLEN, Skb, UDP_HLEN, ipv4, ipv6,
    udp,
};
use crate::next_hop;
use crate::scratch::Entry;
use crate::tables::{DESTINATIONS, ROUTES};

/// Target `i` of `route` (in `bank`).
#[inline(always)]
fn target(bank: u32, route: &KernelRoute, i: usize) -> Option<&'static KernelDestination> {
    DESTINATIONS.get(bank * MAX_DESTINATIONS as u32 + route.targets[i] % MAX_DESTINATIONS as u32)
}

/// What the copies need of the original headers, read before the first copy rewrites them.
struct Original {
    v6: bool,
    /// Offset of the UDP header.
    l4: usize,
    /// TTL (IPv4: with the protocol byte, the checksummed word; IPv6: hop limit, 0).
    ttl: [u8; 2],
    /// UDP destination port: the listener's, the copies' source port.
    dport: [u8; 2],
    tot_len: u16,
    tos: u8,
}

/// Copies the packet to every target of the marked route.
#[classifier]
pub fn hep_mirror(ctx: TcContext) -> i32 {
    match mirror(&ctx) {
        Some(action) => action,
        None => TC_ACT_OK,
    }
}

#[inline(always)]
fn mirror(ctx: &TcContext) -> Option<i32> {
    let skb = Skb(ctx.skb.skb);
    // SAFETY: the context pointer the kernel gave us.
    let (meta, data) = unsafe { ((*skb.0).data_meta as usize, (*skb.0).data as usize) };
    if meta + core::mem::size_of::<MirrorMeta>() > data {
        return None;
    }
    // SAFETY: `meta .. meta + size` lies before `data` (checked above): the metadata area.
    let m = unsafe { core::ptr::read_unaligned(meta as *const MirrorMeta) };
    if m.magic != MIRROR_META_MAGIC {
        return None;
    }
    let bank = m.bank & 1;
    let route = ROUTES.get(bank * MAX_ROUTES as u32 + m.route % MAX_ROUTES as u32)?;
    if route.action != RouteAction::Mirror as u8 {
        return None;
    }
    let o = original(skb)?;
    let s = Entry::get()?;
    let hops = s.hops();
    let n = (route.n_targets as usize).min(MAX_TARGETS);

    // Pass 1: every next hop, or no copy at all.
    let mut i = 0;
    while i < MAX_TARGETS {
        if i >= n {
            break;
        }
        let dest = target(bank, route, i)?;
        match lookup(skb, &o, dest, s) {
            Some(h) => hops[i] = h,
            None => {
                count_dest(dest.slot, DestCounter::Fallback);
                return None;
            }
        }
        i += 1;
    }
    // Pass 2: rewrite and clone, one copy per target.
    let mut i = 0;
    while i < MAX_TARGETS {
        if i >= n {
            break;
        }
        let dest = target(bank, route, i)?;
        let h = hops[i];
        if rewrite(skb, &o, dest, &h) {
            // SAFETY: plain helper call on our skb; 0 = egress of `h.ifindex`.
            if unsafe { bpf_clone_redirect(skb.0, h.ifindex, 0) } == 0 {
                count_dest(dest.slot, DestCounter::Sent);
            } else {
                count_dest(dest.slot, DestCounter::Fallback);
            }
        } else {
            count_dest(dest.slot, DestCounter::Fallback);
        }
        i += 1;
    }
    Some(TC_ACT_SHOT)
}

/// Reads the original headers (untagged Ethernet, IPv4 or IPv6, UDP).
#[inline(always)]
fn original(skb: Skb) -> Option<Original> {
    let eth = skb.load::<ETH_HLEN>(0)?;
    match u16::from_be_bytes([eth[ETH_HLEN - 2], eth[ETH_HLEN - 1]]) {
        ETH_P_IP => {
            let h = skb.load::<IPV4_HLEN>(ETH_HLEN)?;
            let l4 = ETH_HLEN + (h[0] & 0x0f) as usize * 4;
            let u = skb.load::<UDP_HLEN>(l4)?;
            Some(Original {
                v6: false,
                l4,
                ttl: [h[ipv4::TTL], h[ipv4::TTL + 1]],
                dport: [u[udp::DEST], u[udp::DEST + 1]],
                tot_len: u16::from_be_bytes([h[ipv4::TOT_LEN], h[ipv4::TOT_LEN + 1]]),
                tos: h[ipv4::TOS],
            })
        }
        ETH_P_IPV6 => {
            let h = skb.load::<8>(ETH_HLEN)?;
            let l4 = ETH_HLEN + IPV6_HLEN;
            let u = skb.load::<UDP_HLEN>(l4)?;
            Some(Original {
                v6: true,
                l4,
                ttl: [h[ipv6::HOP_LIMIT], 0],
                dport: [u[udp::DEST], u[udp::DEST + 1]],
                tot_len: u16::from_be_bytes([h[ipv6::PAYLOAD_LEN], h[ipv6::PAYLOAD_LEN + 1]])
                    .wrapping_add(IPV6_HLEN as u16),
                tos: 0,
            })
        }
        _ => None,
    }
}

/// The next hop toward `dest`, `None` when the kernel has no complete answer.
#[inline(always)]
fn lookup(skb: Skb, o: &Original, dest: &KernelDestination, s: Entry) -> Option<NextHop> {
    if (dest.family == 6) != o.v6 || o.ttl[0] <= 1 {
        return None;
    }
    let q = Query {
        v6: o.v6,
        // SAFETY: the context pointer the kernel gave us.
        ifindex: unsafe { (*skb.0).ingress_ifindex },
        tot_len: o.tot_len,
        tos: o.tos,
        sport: u16::from_be_bytes(o.dport),
    };
    next_hop::resolve(skb.0.cast(), s.fib(), &q, dest)
}

/// Rewrites the headers for `dest`. Checksums are updated incrementally from the headers
/// as they are now (the previous copy's), the TTL is the original's minus one.
#[inline(always)]
fn rewrite(skb: Skb, o: &Original, dest: &KernelDestination, h: &NextHop) -> bool {
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&h.dmac);
    eth[6..].copy_from_slice(&h.smac);
    let Some(u) = skb.load::<UDP_HLEN>(o.l4) else {
        return false;
    };
    // New ports: from the listener port (the original destination port) to the collector.
    let [p0, p1] = o.dport;
    let [q0, q1] = dest.port.to_be_bytes();
    if o.v6 {
        let Some(cur) = skb.load::<33>(ETH_HLEN + ipv6::HOP_LIMIT) else {
            return false;
        };
        let mut old = [0u8; 32];
        old.copy_from_slice(&cur[1..]);
        // SAFETY: 32 readable bytes each (our stack copy; the two adjacent address fields,
        // pinned by abi::layout); the helper only reads them.
        let partial = unsafe {
            bpf_csum_diff(
                old.as_mut_ptr().cast(),
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
        c.replace([u[0], u[1]], [p0, p1]);
        c.replace([u[2], u[3]], [q0, q1]);
        let sum = c.done_udp();
        skb.store(0, &eth)
            && skb.store(ETH_HLEN + ipv6::HOP_LIMIT, &[o.ttl[0] - 1])
            && skb.store(ETH_HLEN + ipv6::SADDR, &dest.src_addr)
            && skb.store(ETH_HLEN + ipv6::DADDR, &dest.addr)
            && skb.store(o.l4, &[p0, p1, q0, q1])
            && skb.store(o.l4 + udp::CHECK, &sum)
    } else {
        // ttl, proto, checksum, saddr, daddr as they are now.
        let Some(cur) = skb.load::<12>(ETH_HLEN + ipv4::TTL) else {
            return false;
        };
        let (sa, da) = (&dest.src_addr, &dest.addr);
        let new_ttl = [o.ttl[0] - 1, o.ttl[1]];
        let new_addrs = [
            sa[12], sa[13], sa[14], sa[15], da[12], da[13], da[14], da[15],
        ];
        let mut c = Csum::of([cur[2], cur[3]]);
        c.replace([cur[0], cur[1]], new_ttl);
        c.replace([cur[4], cur[5]], [new_addrs[0], new_addrs[1]]);
        c.replace([cur[6], cur[7]], [new_addrs[2], new_addrs[3]]);
        c.replace([cur[8], cur[9]], [new_addrs[4], new_addrs[5]]);
        c.replace([cur[10], cur[11]], [new_addrs[6], new_addrs[7]]);
        let csum = c.done();
        skb.store(0, &eth)
            && skb.store(ETH_HLEN + ipv4::TTL, &new_ttl)
            && skb.store(ETH_HLEN + ipv4::CHECK, &csum)
            && skb.store(ETH_HLEN + ipv4::SADDR, &new_addrs)
            && skb.store(o.l4, &[p0, p1, q0, q1])
            && skb.store(o.l4 + udp::CHECK, &[0u8, 0])
    }
}
