//! The per-CPU counters both programs add to: global ([`XdpCounter`]), per route slot and
//! per destination slot (`hep_common::abi`'s layouts). One CPU's slots are only
//! touched by programs running on that CPU, to completion: no atomics.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use hep_common::abi::{DestCounter, MAX_SLOTS, RouteCounter, XdpCounter};

use crate::tables::{DEST_COUNTERS, ROUTE_COUNTERS};

/// Per-CPU counters indexed by [`XdpCounter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpCounter::COUNT as u32, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(p) = map.get_ptr_mut(index) {
        // SAFETY: the map returns a valid pointer to this CPU's u64 slot; the program is
        // not preempted on its CPU while running.
        unsafe { *p += 1 };
    }
}

/// Adds one to `counter`.
#[inline(always)]
pub fn count(counter: XdpCounter) {
    bump(&COUNTERS, counter.index());
}

/// Adds one to counter `c` of the route in slot `slot`.
#[inline(always)]
pub fn count_route(slot: u32, c: RouteCounter) {
    bump(
        &ROUTE_COUNTERS,
        (slot % MAX_SLOTS as u32) * RouteCounter::COUNT as u32 + c as u32,
    );
}

/// Adds one to counter `c` of the destination in slot `slot`.
#[inline(always)]
pub fn count_dest(slot: u32, c: DestCounter) {
    bump(
        &DEST_COUNTERS,
        (slot % MAX_SLOTS as u32) * DestCounter::COUNT as u32 + c as u32,
    );
}
