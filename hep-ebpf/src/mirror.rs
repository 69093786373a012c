//! `hep_mirror`: the TC (TCX ingress) half of mirroring, after `../shared/XDP.md` §4.3.
//!
//! `hep_xdp` marks a packet to mirror with a [`MirrorMeta`] in the XDP metadata and passes
//! it; here, for each target of that route, the outer headers are rewritten as a steer
//! would (source = the node, source port = the listener port, destination = the collector,
//! TTL − 1, checksums updated incrementally) and `bpf_clone_redirect` sends a copy out of
//! the egress interface `bpf_fib_lookup` names (through the next-hop cache, `next_hop.rs`,
//! shared with `hep_xdp`), except for the last target, which gets the original itself
//! (`bpf_redirect`: one clone fewer per packet).
//!
//! The rewrite is a header template: the original's headers are read once, with what every
//! copy shares already written and the checksum prepared; per copy the MACs, addresses and
//! port are filled in, the checksum gets one addition (the destination's `address_sum`,
//! prepared by the daemon), and the whole header goes out in one `bpf_skb_store_bytes`.
//!
//! All next hops are looked up before the first copy: if one cannot be resolved (no
//! neighbour yet, ...) no copy is made and the packet goes on to the daemon untouched (the
//! metadata is ignored by the stack), which mirrors it — never half a mirror.
//! A packet without the metadata is none of this program's business: `TC_ACT_OK`.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_clone_redirect, bpf_redirect, bpf_skb_load_bytes, bpf_skb_store_bytes},
    macros::classifier,
    programs::TcContext,
};
use hep_common::abi::{
    DestCounter, KernelDestination, KernelRoute, MAX_DESTINATIONS, MAX_EDIT_VALUE,
    MAX_KERNEL_EDITS, MAX_ROUTES, MAX_TARGETS, MIRROR_META_MAGIC, MirrorMeta, RouteAction,
    SCRATCH_LEN, XdpCounter,
};
use hep_common::inplace::UdpChecksum;

use crate::counters::{count, count_dest};
use crate::fib::{NextHop, Query};
use crate::net::{
    Csum, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Frame, IPV4_HLEN, IPV6_HLEN, Skb, UDP_HLEN, ipv4, ipv6,
    udp,
};
use crate::next_hop;
use crate::scratch::{Entry, Template};
use crate::tables::{DESTINATIONS, ROUTES};

/// Target `i` of `route` (in `bank`).
#[inline(always)]
fn target(bank: u32, route: &KernelRoute, i: usize) -> Option<&'static KernelDestination> {
    DESTINATIONS.get(bank * MAX_DESTINATIONS as u32 + route.targets[i] % MAX_DESTINATIONS as u32)
}

const _: () = assert!(
    SCRATCH_LEN.is_power_of_two(),
    "`write_edits` masks edit offsets with SCRATCH_LEN - 1"
);
/// Where UDP starts in an IPv4 template (the original's options are not in it).
const V4_UDP: usize = ETH_HLEN + IPV4_HLEN;
/// Where UDP starts in an IPv6 template.
const V6_UDP: usize = ETH_HLEN + IPV6_HLEN;

/// The original packet as every copy starts from it, read once before the first copy.
struct Original {
    v6: bool,
    /// Offset of the UDP header in the packet.
    l4: usize,
    /// The header template (`Template::head` in the scratch entry): the original's
    /// Ethernet, IP (IPv4 without its options, which stay in the packet as they are) and
    /// UDP headers, with what is the same in every copy already written (TTL − 1, source
    /// port = the listener port, IPv4 UDP checksum 0). A copy fills in the MACs, the
    /// addresses, the destination port and one checksum.
    t: &'static mut Template,
    /// That checksum (IPv4: the header's; IPv6: UDP's, over the pseudo-header) with the
    /// TTL change counted and the original's addresses (IPv6: and destination port) taken
    /// out: a copy adds its destination's `address_sum` (IPv6: and port). RFC 1624.
    sum: Csum,
    /// TTL or hop limit as received.
    ttl: u8,
    /// UDP destination port: the listener's, the copies' source port.
    dport: u16,
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
    let s = Entry::get()?;
    let o = original(skb, s.template())?;
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
    // Every copy can go: the route's in-place edits are written into the original now (not
    // before: a packet passed up must reach the daemon untouched), and the template read
    // again from the edited packet (its UDP checksum adjusted).
    let mut o = if m.edits == 0 {
        o
    } else {
        // `o` (and its template reference) is not used after this: the new reading
        // takes the template afresh.
        let written = write_edits(skb, &o, route, &m);
        match written.then(|| original(skb, s.template())).flatten() {
            Some(edited) => edited,
            None => {
                count(XdpCounter::RewriteFailed);
                return Some(TC_ACT_SHOT);
            }
        }
    };
    // Pass 2: rewrite and clone, one copy per target; the original itself becomes the last
    // copy (one clone fewer).
    let mut i = 0;
    while i < MAX_TARGETS {
        if i >= n {
            break;
        }
        let dest = target(bank, route, i)?;
        let h = hops[i];
        // A copy that cannot go out now is lost (the others may have gone): `Failed`.
        if !rewrite(skb, &mut o, dest, &h) {
            count_dest(dest.slot, DestCounter::Failed);
        } else if i + 1 == n {
            // SAFETY: plain helper call; 0 = egress of `h.ifindex`. It returns
            // TC_ACT_REDIRECT (TC_ACT_SHOT only for invalid flags). The copy is sent after
            // the program returns; the interface counts a refusal then.
            let action = unsafe { bpf_redirect(h.ifindex, 0) } as i32;
            if action == TC_ACT_REDIRECT {
                count_dest(dest.slot, DestCounter::Sent);
                return Some(action);
            }
            count_dest(dest.slot, DestCounter::Failed);
        // SAFETY: plain helper call on our skb; 0 = egress of `h.ifindex`.
        } else if unsafe { bpf_clone_redirect(skb.0, h.ifindex, 0) } == 0 {
            count_dest(dest.slot, DestCounter::Sent);
        } else {
            count_dest(dest.slot, DestCounter::Failed);
        }
        i += 1;
    }
    Some(TC_ACT_SHOT)
}

/// Writes the route's in-place edits at the sites `hep_xdp` located (`m`) and adjusts the
/// UDP checksum when there is one (`inplace::UdpChecksum`, as `edit::write` in XDP).
/// `false` when a read or write fails, which the sites rule out (they lie inside the
/// payload).
#[inline(always)]
fn write_edits(skb: Skb, o: &Original, route: &KernelRoute, m: &MirrorMeta) -> bool {
    // Bounds the verifier can see (no-ops: UDP starts at most 82 bytes in).
    let l4 = o.l4 & 0x7f;
    let payload = l4 + UDP_HLEN;
    let Some(stored) = skb.load::<2>(l4 + udp::CHECK) else {
        return false;
    };
    let checked = stored != [0, 0];
    let mut sum = UdpChecksum::of(stored);
    let mut old = [0u8; MAX_EDIT_VALUE];
    let mut i = 0;
    while i < MAX_KERNEL_EDITS {
        if m.edits & (1 << i) == 0 {
            i += 1;
            continue;
        }
        let e = &route.edits[i];
        // A no-op mask (offsets lie inside the payload) bounding the offset for the
        // verifier.
        let at = m.edit_offsets[i] as usize & (SCRATCH_LEN - 1);
        let len = e.len as usize;
        if len == 0 || len > MAX_EDIT_VALUE {
            return false;
        }
        if checked {
            // SAFETY: `len` ≤ MAX_EDIT_VALUE bytes into our stack buffer; the helper checks
            // the packet range (and reads a non-linear part too).
            let r = unsafe {
                bpf_skb_load_bytes(
                    skb.0.cast(),
                    (payload + at) as u32,
                    old.as_mut_ptr().cast(),
                    len as u32,
                )
            };
            if r != 0 {
                return false;
            }
            // Positions from the UDP header (which starts on an even byte of the sum).
            let mut k = 0;
            while k < MAX_EDIT_VALUE && k < len {
                sum.replace_byte(UDP_HLEN + at + k, old[k], e.value[k]);
                k += 1;
            }
        }
        // SAFETY: `e.value` is map memory of MAX_EDIT_VALUE bytes and `len` ≤ that; the
        // helper checks the packet range itself.
        let r = unsafe {
            bpf_skb_store_bytes(
                skb.0,
                (payload + at) as u32,
                e.value.as_ptr().cast(),
                len as u32,
                0,
            )
        };
        if r != 0 {
            return false;
        }
        i += 1;
    }
    !checked || skb.store(l4 + udp::CHECK, &sum.done())
}

/// Reads the original headers (untagged Ethernet, IPv4 or IPv6, UDP) into the template.
#[inline(always)]
fn original(skb: Skb, t: &'static mut Template) -> Option<Original> {
    let eth = skb.load::<ETH_HLEN>(0)?;
    let head = &mut t.head;
    head[..ETH_HLEN].copy_from_slice(&eth);
    match u16::from_be_bytes([eth[ETH_HLEN - 2], eth[ETH_HLEN - 1]]) {
        ETH_P_IP => {
            let h = skb.load::<IPV4_HLEN>(ETH_HLEN)?;
            let l4 = ETH_HLEN + (h[0] & 0x0f) as usize * 4;
            let u = skb.load::<UDP_HLEN>(l4)?;
            let ttl = h[ipv4::TTL];
            let new_ttl = [ttl.saturating_sub(1), h[ipv4::PROTOCOL]];
            let mut sum = Csum::of([h[ipv4::CHECK], h[ipv4::CHECK + 1]]);
            sum.replace([ttl, h[ipv4::PROTOCOL]], new_ttl);
            let mut i = ipv4::SADDR;
            while i < ipv4::DADDR + 4 {
                sum.replace([h[i], h[i + 1]], [0, 0]);
                i += 2;
            }
            head[ETH_HLEN..V4_UDP].copy_from_slice(&h);
            head[V4_UDP..V4_UDP + UDP_HLEN].copy_from_slice(&u);
            head[ETH_HLEN + ipv4::TTL] = new_ttl[0];
            head[V4_UDP] = u[udp::DEST];
            head[V4_UDP + 1] = u[udp::DEST + 1];
            head[V4_UDP + udp::CHECK] = 0;
            head[V4_UDP + udp::CHECK + 1] = 0;
            Some(Original {
                v6: false,
                l4,
                t,
                sum,
                ttl,
                dport: u16::from_be_bytes([u[udp::DEST], u[udp::DEST + 1]]),
                tot_len: u16::from_be_bytes([h[ipv4::TOT_LEN], h[ipv4::TOT_LEN + 1]]),
                tos: h[ipv4::TOS],
            })
        }
        ETH_P_IPV6 => {
            let h = skb.load::<IPV6_HLEN>(ETH_HLEN)?;
            let u = skb.load::<UDP_HLEN>(V6_UDP)?;
            let hop = h[ipv6::HOP_LIMIT];
            let dport = [u[udp::DEST], u[udp::DEST + 1]];
            let mut sum = Csum::of([u[udp::CHECK], u[udp::CHECK + 1]]);
            let mut i = ipv6::SADDR;
            while i < ipv6::DADDR + 16 {
                sum.replace([h[i], h[i + 1]], [0, 0]);
                i += 2;
            }
            // Source port: the listener's (the old destination port); the destination
            // port is the copy's.
            sum.replace([u[0], u[1]], dport);
            sum.replace(dport, [0, 0]);
            head[ETH_HLEN..V6_UDP].copy_from_slice(&h);
            head[V6_UDP..].copy_from_slice(&u);
            head[ETH_HLEN + ipv6::HOP_LIMIT] = hop.saturating_sub(1);
            head[V6_UDP] = dport[0];
            head[V6_UDP + 1] = dport[1];
            Some(Original {
                v6: true,
                l4: V6_UDP,
                t,
                sum,
                ttl: hop,
                dport: u16::from_be_bytes(dport),
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
    if (dest.family == 6) != o.v6 || o.ttl <= 1 {
        return None;
    }
    let q = Query {
        v6: o.v6,
        // SAFETY: the context pointer the kernel gave us.
        ifindex: unsafe { (*skb.0).ingress_ifindex },
        tot_len: o.tot_len,
        tos: o.tos,
        sport: o.dport,
    };
    next_hop::resolve(skb.0.cast(), s.fib(), &q, dest)
}

/// Writes the copy for `dest` from the template: the MACs, the addresses, the destination
/// port and the checksum filled in, then one `bpf_skb_store_bytes` of the whole header
/// (two when IPv4 options sit between the IP and UDP headers).
#[inline(always)]
fn rewrite(skb: Skb, o: &mut Original, dest: &KernelDestination, h: &NextHop) -> bool {
    let Template { head, copy: b } = &mut *o.t;
    b.copy_from_slice(head);
    b[..6].copy_from_slice(&h.dmac);
    b[6..12].copy_from_slice(&h.smac);
    let mut sum = o.sum;
    sum.add_partial(dest.address_sum);
    let port = dest.port.to_be_bytes();
    if o.v6 {
        b[ETH_HLEN + ipv6::SADDR..ETH_HLEN + ipv6::SADDR + 16].copy_from_slice(&dest.src_addr);
        b[ETH_HLEN + ipv6::DADDR..ETH_HLEN + ipv6::DADDR + 16].copy_from_slice(&dest.addr);
        b[V6_UDP + udp::DEST] = port[0];
        b[V6_UDP + udp::DEST + 1] = port[1];
        sum.replace([0, 0], port);
        let check = sum.done_udp();
        b[V6_UDP + udp::CHECK] = check[0];
        b[V6_UDP + udp::CHECK + 1] = check[1];
        skb.store(0, b)
    } else {
        let (sa, da) = (&dest.src_addr, &dest.addr);
        b[ETH_HLEN + ipv4::SADDR..ETH_HLEN + ipv4::SADDR + 4].copy_from_slice(&sa[12..]);
        b[ETH_HLEN + ipv4::DADDR..ETH_HLEN + ipv4::DADDR + 4].copy_from_slice(&da[12..]);
        let check = sum.done();
        b[ETH_HLEN + ipv4::CHECK] = check[0];
        b[ETH_HLEN + ipv4::CHECK + 1] = check[1];
        b[V4_UDP + udp::DEST] = port[0];
        b[V4_UDP + udp::DEST + 1] = port[1];
        let Some((whole, _)) = b.split_first_chunk::<{ V4_UDP + UDP_HLEN }>() else {
            return false;
        };
        if o.l4 == V4_UDP {
            return skb.store(0, whole);
        }
        // Options: the IP header up to them, then UDP where it is.
        let (Some((ip, _)), Some((udp, _))) = (
            b.split_first_chunk::<V4_UDP>(),
            b[V4_UDP..].split_first_chunk::<UDP_HLEN>(),
        ) else {
            return false;
        };
        skb.store(0, ip) && skb.store(o.l4, udp)
    }
}
