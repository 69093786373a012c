//! `hep_mirror`: the TC (TCX ingress) half of mirroring, after `../shared/XDP.md` §4.3.
//!
//! `hep_xdp` marks a packet to mirror with a [`MirrorMeta`] in the XDP metadata and passes
//! it; here, for each target of that route, the outer headers are rewritten (as a steer
//! would: source = the node, source port = the listener port, destination = the collector,
//! TTL − 1, checksums updated from the *original* headers) with `bpf_skb_store_bytes`, and
//! `bpf_clone_redirect` sends a copy out of the egress interface `bpf_fib_lookup` names.
//! Then the original is dropped.
//!
//! All next hops are looked up before the first copy: if one cannot be resolved (no
//! neighbour yet, ...) no copy is made and the packet goes on to the daemon untouched (the
//! metadata is ignored by the stack), which mirrors it — never half a mirror.
//! A packet without the metadata is none of this program's business: `TC_ACT_OK`.

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_clone_redirect, bpf_csum_diff, bpf_fib_lookup, bpf_skb_store_bytes},
    macros::classifier,
    programs::TcContext,
};
use hep_common::kernel_plan::{
    DestCounter, KernelDestination, KernelRoute, MAX_DESTINATIONS, MAX_ROUTES, MAX_TARGETS,
    MIRROR_META_MAGIC, MirrorMeta, RouteAction,
};

use crate::counters::count_dest;
use crate::scratch::{Hop, scratch};
use crate::tables::{DESTINATIONS, ROUTES};

const ETH_HLEN: usize = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `N` bytes at offset `off` of the linear skb data, bounds-checked.
#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, off: usize) -> Option<[u8; N]> {
    // SAFETY: the context pointer the kernel gave us.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if data + off + N > end {
        return None;
    }
    // SAFETY: inside the linear data (checked above).
    Some(unsafe { core::ptr::read_unaligned((data + off) as *const [u8; N]) })
}

#[inline(always)]
fn store<const N: usize>(skb: *mut __sk_buff, off: usize, v: &[u8; N]) -> bool {
    // SAFETY: the helper checks the range and un-clones the data before writing.
    unsafe { bpf_skb_store_bytes(skb, off as u32, v.as_ptr().cast(), N as u32, 0) == 0 }
}

/// Target `i` of `route` (in `bank`).
#[inline(always)]
fn target(bank: u32, route: &KernelRoute, i: usize) -> Option<&'static KernelDestination> {
    DESTINATIONS.get(bank * MAX_DESTINATIONS as u32 + route.targets[i] % MAX_DESTINATIONS as u32)
}

/// One's complement update (memory-order words; see `steer::Csum`).
#[inline(always)]
fn fold(mut s: u32) -> u32 {
    s = (s & 0xffff) + (s >> 16);
    (s & 0xffff) + (s >> 16)
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
        None => TC_ACT_OK as i32,
    }
}

#[inline(always)]
fn mirror(ctx: &TcContext) -> Option<i32> {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer the kernel gave us.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
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
    let s = scratch()?;
    // SAFETY: this CPU's scratch entry (hep_xdp is done with it: same CPU, run to completion).
    let hops = unsafe { &mut (*s).hops };
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
            if unsafe { bpf_clone_redirect(skb, h.ifindex, 0) } == 0 {
                count_dest(dest.slot, DestCounter::Sent);
            } else {
                count_dest(dest.slot, DestCounter::Fallback);
            }
        } else {
            count_dest(dest.slot, DestCounter::Fallback);
        }
        i += 1;
    }
    Some(TC_ACT_SHOT as i32)
}

/// Reads the original headers (untagged Ethernet, IPv4 or IPv6, UDP).
#[inline(always)]
fn original(skb: *mut __sk_buff) -> Option<Original> {
    let eth = load::<14>(skb, 0)?;
    match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => {
            let h = load::<20>(skb, ETH_HLEN)?;
            let l4 = ETH_HLEN + (h[0] & 0x0f) as usize * 4;
            let u = load::<8>(skb, l4)?;
            Some(Original {
                v6: false,
                l4,
                ttl: [h[8], h[9]],
                dport: [u[2], u[3]],
                tot_len: u16::from_be_bytes([h[2], h[3]]),
                tos: h[1],
            })
        }
        0x86dd => {
            let h = load::<8>(skb, ETH_HLEN)?;
            let l4 = ETH_HLEN + 40;
            let u = load::<8>(skb, l4)?;
            Some(Original {
                v6: true,
                l4,
                ttl: [h[7], 0],
                dport: [u[2], u[3]],
                tot_len: u16::from_be_bytes([h[4], h[5]]).wrapping_add(40),
                tos: 0,
            })
        }
        _ => None,
    }
}

/// The next hop toward `dest`, `None` when the kernel has no complete answer.
#[inline(always)]
fn lookup(
    skb: *mut __sk_buff,
    o: &Original,
    dest: &KernelDestination,
    s: *mut crate::scratch::Scratch,
) -> Option<Hop> {
    if (dest.family == 6) != o.v6 || o.ttl[0] <= 1 {
        return None;
    }
    // SAFETY: this CPU's scratch entry.
    let p: &mut FibParams = unsafe { &mut (*s).fib };
    p.l4_protocol = 17;
    p.sport = u16::from_ne_bytes(o.dport);
    p.dport = dest.port.to_be();
    // SAFETY: the context pointer the kernel gave us.
    p.ifindex = unsafe { (*skb).ingress_ifindex };
    p.__bindgen_anon_1.tot_len = o.tot_len;
    p.__bindgen_anon_2.flowinfo = 0;
    p.__bindgen_anon_5.tbid = 0;
    if o.v6 {
        p.family = AF_INET6;
        // SAFETY: same-size plain arrays (the union's IPv6 members).
        unsafe {
            p.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(dest.src_addr);
            p.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(dest.addr);
        }
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = o.tos;
        let (sa, da) = (&dest.src_addr, &dest.addr);
        p.__bindgen_anon_3.ipv6_src = [0; 4];
        p.__bindgen_anon_4.ipv6_dst = [0; 4];
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([sa[12], sa[13], sa[14], sa[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([da[12], da[13], da[14], da[15]]);
    }
    // SAFETY: an initialised lookup structure in map memory, of the size given.
    let rc = unsafe { bpf_fib_lookup(skb.cast(), p, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(Hop {
        ifindex: p.ifindex,
        dmac: p.dmac,
        smac: p.smac,
    })
}

/// Rewrites the headers for `dest`. Checksums are updated incrementally from the headers
/// as they are now (the previous copy's), the TTL is the original's minus one.
#[inline(always)]
fn rewrite(skb: *mut __sk_buff, o: &Original, dest: &KernelDestination, h: &Hop) -> bool {
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&h.dmac);
    eth[6..].copy_from_slice(&h.smac);
    let Some(udp) = load::<8>(skb, o.l4) else {
        return false;
    };
    // New ports: from the listener port (the original destination port) to the collector.
    let [p0, p1] = o.dport;
    let [q0, q1] = dest.port.to_be_bytes();
    if o.v6 {
        let Some(cur) = load::<33>(skb, ETH_HLEN + 7) else {
            return false;
        };
        let mut old = [0u8; 32];
        old.copy_from_slice(&cur[1..]);
        // SAFETY: 32 readable bytes each (our stack copy; the two adjacent address fields).
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
        let mut c = u32::from(!u16::from_ne_bytes([udp[6], udp[7]]));
        c = fold(c + (partial as u32 & 0xffff) + ((partial as u32) >> 16));
        c = fold(c + word_change([udp[0], udp[1]], [p0, p1]));
        c = fold(c + word_change([udp[2], udp[3]], [q0, q1]));
        let mut sum = (!(c as u16)).to_ne_bytes();
        if sum == [0, 0] {
            sum = [0xff, 0xff];
        }
        store(skb, 0, &eth)
            && store(skb, ETH_HLEN + 7, &[o.ttl[0] - 1])
            && store(skb, ETH_HLEN + 8, &dest.src_addr)
            && store(skb, ETH_HLEN + 24, &dest.addr)
            && store(skb, o.l4, &[p0, p1, q0, q1])
            && store(skb, o.l4 + 6, &sum)
    } else {
        // ttl, proto, checksum, saddr, daddr as they are now.
        let Some(cur) = load::<12>(skb, ETH_HLEN + 8) else {
            return false;
        };
        let (sa, da) = (&dest.src_addr, &dest.addr);
        let new_ttl = [o.ttl[0] - 1, o.ttl[1]];
        let new_addrs = [
            sa[12], sa[13], sa[14], sa[15], da[12], da[13], da[14], da[15],
        ];
        let mut c = u32::from(!u16::from_ne_bytes([cur[2], cur[3]]));
        c = fold(c + word_change([cur[0], cur[1]], new_ttl));
        let mut k = 0;
        while k < 8 {
            c = fold(c + word_change([cur[4 + k], cur[5 + k]], [new_addrs[k], new_addrs[k + 1]]));
            k += 2;
        }
        let csum = (!(c as u16)).to_ne_bytes();
        store(skb, 0, &eth)
            && store(skb, ETH_HLEN + 8, &new_ttl)
            && store(skb, ETH_HLEN + 10, &csum)
            && store(skb, ETH_HLEN + 12, &new_addrs)
            && store(skb, o.l4, &[p0, p1, q0, q1])
            && store(skb, o.l4 + 6, &[0u8, 0])
    }
}

/// `~old + new` for one 16-bit word (memory order).
#[inline(always)]
fn word_change(old: [u8; 2], new: [u8; 2]) -> u32 {
    u32::from(!u16::from_ne_bytes(old)) + u32::from(u16::from_ne_bytes(new))
}
