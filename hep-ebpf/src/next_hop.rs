//! The next-hop cache in front of `fib::lookup` (`hep_common::abi::NextHopEntry` has the
//! contract): per CPU and destination slot, the last answer `bpf_fib_lookup` gave, used
//! while the daemon's generation has not moved and the packet is no longer than one the
//! lookup accepted. A miss looks up exactly as without the cache; a failed lookup leaves
//! the entry as it was and the caller passes the packet up untouched.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    macros::map,
    maps::{Array, PerCpuArray},
};
use hep_common::abi::{KernelDestination, MAX_SLOTS, NEXT_HOP_OFF, NextHopEntry, XdpCounter};

use crate::counters::count;
use crate::fib::{self, NextHop, Query};

/// The cache: per CPU, one entry per destination slot.
#[map]
static NEXT_HOP: PerCpuArray<NextHopEntry> = PerCpuArray::with_max_entries(MAX_SLOTS as u32, 0);

/// The current generation (one entry), written by the daemon; [`NEXT_HOP_OFF`]: no caching.
#[map]
static NEXT_HOP_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// The next hop toward `dest` for the packet `q` describes: from the cache when it has a
/// fresh entry for exactly this query, else from `fib::lookup` (then stored). Counts a
/// hit or a miss. `None` when the lookup has no complete answer.
#[inline(always)]
pub fn resolve(
    ctx: *mut c_void,
    p: &mut FibParams,
    q: &Query,
    dest: &KernelDestination,
) -> Option<NextHop> {
    // Read before the lookup: an invalidation racing with it leaves the entry stale.
    let generation = match NEXT_HOP_GENERATION.get_ptr(0) {
        // SAFETY: the map's pointer to its one u64; read once (the daemon may write it
        // concurrently: an 8-byte aligned value).
        Some(g) => unsafe { core::ptr::read_volatile(g) },
        None => NEXT_HOP_OFF,
    };
    let slot = dest.slot % MAX_SLOTS as u32;
    let entry = match NEXT_HOP.get_ptr_mut(slot) {
        Some(e) if generation != NEXT_HOP_OFF => e,
        _ => {
            count(XdpCounter::NextHopMiss);
            return fib::lookup(ctx, p, q, dest);
        }
    };
    // SAFETY: this CPU's entry of the slot; a program runs to completion on its CPU, and
    // both programs (the only writers) take it here only, one packet at a time.
    let e = unsafe { &mut *entry };
    let (addr, src) = words(dest);
    let same_query = e.valid == 1
        && e.generation == generation
        && e.in_ifindex == q.ifindex
        && e.sport == q.sport
        && e.dport == dest.port
        && e.tos == q.tos
        && same(&e.addr, addr)
        && same(&e.src_addr, src);
    if same_query && q.tot_len <= e.max_tot_len_ok {
        count(XdpCounter::NextHopHit);
        return Some(NextHop {
            ifindex: e.ifindex,
            dmac: e.dmac,
            smac: e.smac,
        });
    }
    count(XdpCounter::NextHopMiss);
    let hop = fib::lookup(ctx, p, q, dest)?;
    // The same answer for a longer packet raises the bound; any other answer starts over.
    let max = if same_query
        && e.ifindex == hop.ifindex
        && same_mac(&e.dmac, &hop.dmac)
        && same_mac(&e.smac, &hop.smac)
    {
        e.max_tot_len_ok.max(q.tot_len)
    } else {
        q.tot_len
    };
    e.valid = 0;
    e.generation = generation;
    e.addr = dest.addr;
    e.src_addr = dest.src_addr;
    e.ifindex = hop.ifindex;
    e.in_ifindex = q.ifindex;
    e.max_tot_len_ok = max;
    e.sport = q.sport;
    e.dport = dest.port;
    e.tos = q.tos;
    e.dmac = hop.dmac;
    e.smac = hop.smac;
    e.valid = 1;
    Some(hop)
}

/// The collector and source addresses of `dest` as 32-bit words (one load each instead of
/// 16 byte loads).
#[inline(always)]
fn words(dest: &KernelDestination) -> ([u32; 4], [u32; 4]) {
    // SAFETY: `KernelDestination` is 4-byte aligned with `addr` at 0 and `src_addr` at 16
    // (pinned by abi::layout): each is 16 readable bytes at a 4-byte aligned address.
    unsafe {
        (
            core::ptr::read(dest.addr.as_ptr().cast::<[u32; 4]>()),
            core::ptr::read(dest.src_addr.as_ptr().cast::<[u32; 4]>()),
        )
    }
}

/// Whether the cached address `cached` is `w` (no `memcmp`: the target has none).
#[inline(always)]
fn same(cached: &[u8; 16], w: [u32; 4]) -> bool {
    // SAFETY: `NextHopEntry` is 8-byte aligned with its addresses at 8 and 24 (pinned by
    // abi::layout): 16 readable bytes at a 4-byte aligned address.
    let c = unsafe { core::ptr::read(cached.as_ptr().cast::<[u32; 4]>()) };
    ((c[0] ^ w[0]) | (c[1] ^ w[1]) | (c[2] ^ w[2]) | (c[3] ^ w[3])) == 0
}

/// Whether two MACs are equal (byte by byte: no `memcmp` on the target).
#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]))
        == 0
}
