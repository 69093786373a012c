//! The kernel ABI: everything the XDP/TC programs (`hep-ebpf`) and their loader
//! (`hep-user/src/xdp`) must agree on, defined once: map and program names, table limits,
//! sentinels, and the `repr(C)` types stored in the maps.
//!
//! Every type that crosses the kernel boundary derives [`bytemuck::Pod`], whose derive
//! refuses to compile a type with hidden padding, and has its size and field offsets
//! pinned by `const` assertions in [`layout`]: a change of layout fails the build (and so
//! `cargo xtask test`) instead of reaching a map unnoticed.
//!
//! # Contract
//! - The loader writes the tables of one configuration into the *inactive* bank of
//!   [`ROUTES_MAP`] / [`DESTINATIONS_MAP`] / [`LISTENERS_MAP`], then flips
//!   [`XdpConfig::bank`] in [`CONFIG_MAP`] (one 4-byte store): a packet sees one whole
//!   configuration, old or new.
//! - Routes are evaluated in order, first match wins, exactly like userspace, over the
//!   routes of the bank (`XdpConfig::route_count[bank]`); the configuration's `[default]`
//!   is the last route, with no match keys. A route whose match the kernel cannot evaluate
//!   is [`RouteKind::Opaque`]: reaching it passes the packet to userspace (it might match).
//!   A route that matches but whose action needs userspace ([`RouteAction::Pass`]) passes
//!   it too. No route matching (and no default) also passes: userspace counts it.
//!   ([`crate::eval`] is that evaluation, [`crate::facts`] what it reads of a packet.)
//! - Everything the kernel does not do exactly as userspace would, it passes; so kernel and
//!   userspace together always implement the whole configuration.
//! - Counters are per-CPU `u64` arrays ([`counters`]): global by [`XdpCounter`], per route
//!   slot by [`RouteCounter`], per destination slot by [`DestCounter`].

mod counters;
pub mod layout;
mod next_hop;
mod tables;

pub use counters::{DestCounter, RouteCounter, XdpCounter};
pub use next_hop::{NEXT_HOP_OFF, NextHopEntry, next_generation};
pub use tables::{
    Addr16, AllowKey, KernelDestination, KernelEdit, KernelListener, KernelPrefix, KernelRoute,
    MirrorMeta, RouteAction, RouteKind, SteerMode, XdpConfig, addr16, ip_of, map_v4, match_flags,
};

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "hep_xdp";
/// Name of the TC (TCX ingress) mirror program in the object.
pub const MIRROR_PROGRAM: &str = "hep_mirror";

/// Name of the `Array<XdpConfig>` (one entry).
pub const CONFIG_MAP: &str = "XDP_CONFIG";
/// Name of the `Array<KernelRoute>` (2 × [`MAX_ROUTES`]: two banks).
pub const ROUTES_MAP: &str = "ROUTES";
/// Name of the `Array<KernelDestination>` (2 × [`MAX_DESTINATIONS`]).
pub const DESTINATIONS_MAP: &str = "DESTINATIONS";
/// Name of the `Array<KernelListener>` (2 × [`MAX_LISTENERS`]).
pub const LISTENERS_MAP: &str = "LISTENERS";
/// Name of the `LpmTrie<AllowKey, u8>` of listener allow lists.
pub const ALLOW_MAP: &str = "ALLOW";
/// Name of the `PerCpuArray<u64>` of global counters, indexed by [`XdpCounter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the `PerCpuArray<u64>` of per-route counters ([`RouteCounter`], by route slot).
pub const ROUTE_COUNTERS_MAP: &str = "ROUTE_COUNTERS";
/// Name of the `PerCpuArray<u64>` of per-destination counters ([`DestCounter`], by slot).
pub const DEST_COUNTERS_MAP: &str = "DEST_COUNTERS";
/// Name of the program's own per-CPU round-robin positions (`PerCpuArray<u32>`, by slot).
pub const RR_MAP: &str = "RR";
/// Name of the program's per-CPU scratch entry (`PerCpuArray`, one entry; kernel only).
pub const SCRATCH_MAP: &str = "SCRATCH";
/// Name of the per-CPU next-hop cache (`PerCpuArray<NextHopEntry>`, by destination slot;
/// kernel only).
pub const NEXT_HOP_MAP: &str = "NEXT_HOP";
/// Name of the `Array<u64>` (one entry) holding the next-hop cache's generation, written
/// by the daemon (see [`NextHopEntry`]).
pub const NEXT_HOP_GENERATION_MAP: &str = "NEXT_HOP_GENERATION";
/// Name of the `Global<u16>` holding the HEP UDP port (host byte order) in the XDP object.
pub const HEP_PORT_GLOBAL: &str = "HEP_PORT";

/// Every map the object declares for the loader (the aya-log map aside). The `#[map]`
/// statics in `hep-ebpf` take their names from their identifiers, so they cannot name these
/// constants; a privileged test loads the object and checks the two lists are equal.
pub const MAP_NAMES: [&str; 12] = [
    CONFIG_MAP,
    ROUTES_MAP,
    DESTINATIONS_MAP,
    LISTENERS_MAP,
    ALLOW_MAP,
    COUNTERS_MAP,
    ROUTE_COUNTERS_MAP,
    DEST_COUNTERS_MAP,
    RR_MAP,
    SCRATCH_MAP,
    NEXT_HOP_MAP,
    NEXT_HOP_GENERATION_MAP,
];

/// The one-entry collector map of `hep_steer_min`, the benchmark's minimal steer (hep-ebpf
/// `bench_min.rs`, in the same object; the daemon never loads it nor uses its maps).
pub const BENCH_DEST_MAP: &str = "MIN_DEST";
/// `hep_steer_min`'s per-CPU outcome counters.
pub const BENCH_COUNTERS_MAP: &str = "MIN_COUNTERS";
/// The maps of `hep_steer_min`, declared by the object beside [`MAP_NAMES`].
pub const BENCH_MAP_NAMES: [&str; 2] = [BENCH_DEST_MAP, BENCH_COUNTERS_MAP];

/// The default HEP port (`HEP_PORT` when userspace does not override it).
pub const DEFAULT_HEP_PORT: u16 = 9060;

/// Routes per bank.
pub const MAX_ROUTES: usize = 32;
/// Destinations per bank.
pub const MAX_DESTINATIONS: usize = 32;
/// Listeners per bank.
pub const MAX_LISTENERS: usize = 8;
/// Destinations one route can name and the kernel still handle.
pub const MAX_TARGETS: usize = 8;
/// Capture id ranges, port ranges and prefixes per match key the kernel handles.
pub const MAX_MATCH_VALUES: usize = 4;
/// Longest auth key the kernel compares.
pub const MAX_AUTH_KEY: usize = 32;
/// Longest node name (chunk 0x0013) a kernel route can match.
pub const MAX_NODE_NAME: usize = 32;
/// In-place chunk edits (`set` rewrites) one kernel route carries.
pub const MAX_KERNEL_EDITS: usize = 4;
/// Longest value an in-place edit writes.
pub const MAX_EDIT_VALUE: usize = 32;
/// Edits applied to one steered packet: the route's and its destination's auth key.
pub const MAX_EDIT_SITES: usize = MAX_KERNEL_EDITS + 1;
/// Counter slots (routes and destinations are given a stable slot by name).
pub const MAX_SLOTS: usize = 64;
/// Entries of [`ALLOW_MAP`] (all listeners of both banks).
pub const MAX_ALLOW_ENTRIES: u32 = 4096;
/// Largest HEP payload the kernel reads (in place, `hep-ebpf/src/packet.rs`); larger
/// packets go to userspace (counted `too_large`).
pub const SCRATCH_LEN: usize = 4096;

/// [`KernelListener::auth_key_len`] of a listener whose auth key only userspace can check
/// (longer than [`MAX_AUTH_KEY`]): the kernel passes its packets.
pub const AUTH_IN_USERSPACE: u8 = u8::MAX;
/// [`KernelRoute::sample_ppm`] of a route that keeps every call.
pub const SAMPLE_ALL: u32 = 1_000_000;
/// `MirrorMeta::magic`: "HEPM".
pub const MIRROR_META_MAGIC: u32 = u32::from_be_bytes(*b"HEPM");
/// Prefix length of an [`AllowKey`] lookup: the 32 bits of the listener id, then the whole
/// 128-bit address.
pub const ALLOW_KEY_BITS: u32 = 32 + 128;

/// `aya::Pod` for the map types, for the loader. Sound by construction: each type also
/// derives [`bytemuck::Pod`], whose derive proves there is no padding and no field with
/// invalid bit patterns; `aya::Pod` asks for exactly that.
#[cfg(feature = "user")]
mod aya_pod {
    // SAFETY: `XdpConfig: bytemuck::Pod` (no padding, every bit pattern valid).
    unsafe impl aya::Pod for super::XdpConfig {}
    // SAFETY: `KernelRoute: bytemuck::Pod` (no padding, every bit pattern valid).
    unsafe impl aya::Pod for super::KernelRoute {}
    // SAFETY: `KernelDestination: bytemuck::Pod` (no padding, every bit pattern valid).
    unsafe impl aya::Pod for super::KernelDestination {}
    // SAFETY: `KernelListener: bytemuck::Pod` (no padding, every bit pattern valid).
    unsafe impl aya::Pod for super::KernelListener {}
    // SAFETY: `AllowKey: bytemuck::Pod` (packed byte arrays, every bit pattern valid).
    unsafe impl aya::Pod for super::AllowKey {}
    // SAFETY: `MirrorMeta: bytemuck::Pod` (no padding, every bit pattern valid).
    unsafe impl aya::Pod for super::MirrorMeta {}
    // SAFETY: `NextHopEntry: bytemuck::Pod` (no padding, every bit pattern valid).
    unsafe impl aya::Pod for super::NextHopEntry {}
}
