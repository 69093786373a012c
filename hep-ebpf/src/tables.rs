//! The route tables of `hep_common::abi`, as maps the loader fills: two banks of
//! routes, destinations and listeners, the configuration word that names the active bank,
//! the listener allow lists, and the per-route and per-destination counters.
//!
//! Plus the program's own state: the per-CPU round-robin positions.
//!
//! Each static's identifier is its map name; `hep_common::abi::MAP_NAMES` lists them for
//! the loader, and a test checks the object declares exactly those.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray},
};
use hep_common::abi::{
    AllowKey, DestCounter, KernelDestination, KernelListener, KernelRoute, MAX_ALLOW_ENTRIES,
    MAX_DESTINATIONS, MAX_LISTENERS, MAX_ROUTES, MAX_SLOTS, RouteCounter, XdpConfig,
};

/// The active bank and the table sizes (one entry).
#[map]
pub static XDP_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

/// Routes: bank `b` holds entries `b * MAX_ROUTES ..`.
#[map]
pub static ROUTES: Array<KernelRoute> = Array::with_max_entries(2 * MAX_ROUTES as u32, 0);

/// Destinations, banked like the routes.
#[map]
pub static DESTINATIONS: Array<KernelDestination> =
    Array::with_max_entries(2 * MAX_DESTINATIONS as u32, 0);

/// Listeners, banked like the routes.
#[map]
pub static LISTENERS: Array<KernelListener> = Array::with_max_entries(2 * MAX_LISTENERS as u32, 0);

/// Allow lists of every listener of both banks.
#[map]
pub static ALLOW: LpmTrie<AllowKey, u8> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);

/// Per-route counters by slot.
#[map]
pub static ROUTE_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries((MAX_SLOTS * RouteCounter::COUNT) as u32, 0);

/// Per-destination counters by slot.
#[map]
pub static DEST_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries((MAX_SLOTS * DestCounter::COUNT) as u32, 0);

/// Round-robin position of each route slot, per CPU (no atomics: each CPU rotates on its
/// own, which spreads evenly over many packets).
#[map]
pub static RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SLOTS as u32, 0);
