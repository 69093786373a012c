//! The route tables of the XDP data plane, shared by the kernel program (which reads them
//! from maps and evaluates them) and the loader (which compiles the configuration into
//! them). Evaluation ([`evaluate`]) lives here so the kernel and host tests run the same
//! code.
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
//! - Everything the kernel does not do exactly as userspace would, it passes; so kernel and
//!   userspace together always implement the whole configuration.

use crate::bytes::ByteSource;
use crate::chunk;
use crate::correlation::{KEY_HASH_LIMIT, KeyHasher};
use crate::error::HepError;
use crate::select::{rendezvous_pick, sample_keep};
use crate::walker::ChunkWalker;

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
/// Name of the `PerCpuArray<u64>` of per-route counters ([`RouteCounter`], by route slot).
pub const ROUTE_COUNTERS_MAP: &str = "ROUTE_COUNTERS";
/// Name of the `PerCpuArray<u64>` of per-destination counters ([`DestCounter`], by slot).
pub const DEST_COUNTERS_MAP: &str = "DEST_COUNTERS";

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
/// Counter slots (routes and destinations are given a stable slot by name).
pub const MAX_SLOTS: usize = 64;

/// The one-entry configuration array.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// The active bank, 0 or 1.
    pub bank: u32,
    /// Routes in each bank.
    pub route_count: [u32; 2],
    /// Listeners in each bank.
    pub listener_count: [u32; 2],
}

/// An address as 16 bytes: IPv6, or IPv4 mapped (`::ffff:a.b.c.d`).
pub type Addr16 = [u8; 16];

/// An [`Addr16`] as two big-endian 64-bit halves: two loads, not sixteen bytes assembled
/// one by one (which, in the kernel program, also costs a stack slot per byte).
#[inline(always)]
pub fn addr_halves(a: &Addr16) -> (u64, u64) {
    let p = a.as_ptr().cast::<[u8; 8]>();
    // SAFETY: `a` is 16 readable bytes: two unaligned 8-byte reads at 0 and 8.
    let (hi, lo) = unsafe {
        (
            core::ptr::read_unaligned(p),
            core::ptr::read_unaligned(p.add(1)),
        )
    };
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// IPv4 mapped into [`Addr16`].
pub const fn map_v4(a: [u8; 4]) -> Addr16 {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// A prefix over [`Addr16`]: IPv4 prefixes of length `n` are stored as `96 + n`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelPrefix {
    /// Network address (host bits zero).
    pub addr: Addr16,
    /// Prefix length in bits, 0..=128.
    pub len: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

impl KernelPrefix {
    /// Whether `a` is inside the prefix. Two masked 64-bit compares with constant byte
    /// indices (the kernel's verifier rejects reading a stack array at a variable index).
    #[inline(always)]
    pub fn contains(&self, a: &Addr16) -> bool {
        let len = if self.len > 128 { 128 } else { self.len as u32 };
        let (ah, al) = addr_halves(a);
        let (ph, pl) = addr_halves(&self.addr);
        let mask_hi = match len {
            0 => 0,
            64.. => u64::MAX,
            n => u64::MAX << (64 - n),
        };
        let mask_lo = match len {
            0..=64 => 0,
            128.. => u64::MAX,
            n => u64::MAX << (128 - n),
        };
        (ah ^ ph) & mask_hi == 0 && (al ^ pl) & mask_lo == 0
    }
}

/// Whether the kernel can evaluate a route's match.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The match is evaluated in the kernel.
    Evaluable = 0,
    /// Only userspace can tell whether it matches: reaching it passes the packet.
    Opaque = 1,
}

/// What the kernel does with a packet a route took.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAction {
    /// Userspace runs the action (rewrite, TCP or v2 destination, dedup, failover, ...).
    Pass = 0,
    /// Drop (counted).
    Drop = 1,
    /// Send to one destination chosen by [`SteerMode`], headers rewritten in XDP.
    Steer = 2,
    /// A copy to every target, by the TC program.
    Mirror = 3,
}

/// How a steering route picks its destination.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerMode {
    /// The only target.
    Single = 0,
    /// Rendezvous hashing of the correlation key hash over the targets' seeds.
    Hash = 1,
    /// Per-CPU round robin.
    RoundRobin = 2,
}

/// Match flags of [`KernelRoute::flags`].
pub mod match_flags {
    /// `proto` given.
    pub const PROTO: u32 = 1 << 0;
    /// `capture_id` given.
    pub const CAPTURE_ID: u32 = 1 << 1;
    /// `source` given.
    pub const SOURCE: u32 = 1 << 2;
    /// `inner_src` given.
    pub const INNER_SRC: u32 = 1 << 3;
    /// `inner_dst` given.
    pub const INNER_DST: u32 = 1 << 4;
    /// `inner_port` given.
    pub const INNER_PORT: u32 = 1 << 5;
    /// `node_name` given.
    pub const NODE_NAME: u32 = 1 << 6;
}

/// One route as the kernel evaluates it. All values in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRoute {
    /// [`RouteKind`] as u8.
    pub kind: u8,
    /// [`RouteAction`] as u8.
    pub action: u8,
    /// [`SteerMode`] as u8.
    pub mode: u8,
    /// Number of `targets`.
    pub n_targets: u8,
    /// [`match_flags`] of the keys given.
    pub flags: u32,
    /// Counter slot of the route.
    pub slot: u32,
    /// Calls kept, in millionths (1_000_000: no sampling).
    pub sample_ppm: u32,
    /// Protocol types matched: bit `t` of `proto[t / 64]`.
    pub proto: [u64; 4],
    /// Capture id ranges (inclusive); `n_capture` used.
    pub capture: [[u32; 2]; MAX_MATCH_VALUES],
    /// Inner port ranges (inclusive; source or destination port); `n_ports` used.
    pub ports: [[u16; 2]; MAX_MATCH_VALUES],
    /// Counts of the value lists: capture, ports, source, inner_src, inner_dst.
    pub n_capture: u8,
    /// See `n_capture`.
    pub n_ports: u8,
    /// See `n_capture`.
    pub n_source: u8,
    /// See `n_capture`.
    pub n_inner_src: u8,
    /// See `n_capture`.
    pub n_inner_dst: u8,
    /// Number of `node_names`.
    pub n_node_names: u8,
    /// Padding.
    pub _pad: [u8; 2],
    /// Sender prefixes.
    pub source: [KernelPrefix; MAX_MATCH_VALUES],
    /// Inner source prefixes.
    pub inner_src: [KernelPrefix; MAX_MATCH_VALUES],
    /// Inner destination prefixes.
    pub inner_dst: [KernelPrefix; MAX_MATCH_VALUES],
    /// Node names matched (exact bytes), `node_name_lens[i]` bytes of each.
    pub node_names: [[u8; MAX_NODE_NAME]; MAX_MATCH_VALUES],
    /// Lengths of `node_names`.
    pub node_name_lens: [u8; MAX_MATCH_VALUES],
    /// Destination indices (within the bank).
    pub targets: [u32; MAX_TARGETS],
    /// Rendezvous seeds of the targets.
    pub seeds: [u64; MAX_TARGETS],
}

impl KernelRoute {
    /// A route that matches nothing and passes (to be filled in).
    pub const EMPTY: KernelRoute = KernelRoute {
        kind: RouteKind::Opaque as u8,
        action: RouteAction::Pass as u8,
        mode: SteerMode::Single as u8,
        n_targets: 0,
        flags: 0,
        slot: 0,
        sample_ppm: 1_000_000,
        proto: [0; 4],
        capture: [[0; 2]; MAX_MATCH_VALUES],
        ports: [[0; 2]; MAX_MATCH_VALUES],
        n_capture: 0,
        n_ports: 0,
        n_source: 0,
        n_inner_src: 0,
        n_inner_dst: 0,
        n_node_names: 0,
        _pad: [0; 2],
        source: [KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        }; MAX_MATCH_VALUES],
        inner_src: [KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        }; MAX_MATCH_VALUES],
        inner_dst: [KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        }; MAX_MATCH_VALUES],
        node_names: [[0; MAX_NODE_NAME]; MAX_MATCH_VALUES],
        node_name_lens: [0; MAX_MATCH_VALUES],
        targets: [0; MAX_TARGETS],
        seeds: [0; MAX_TARGETS],
    };
}

/// What the kernel read from a packet for route evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelFacts {
    /// The HEP sender (outer source address).
    pub sender: Addr16,
    /// Chunk 0x000b.
    pub proto_type: Option<u8>,
    /// Chunk 0x000c.
    pub capture_id: Option<u32>,
    /// Chunks 0x0003/0x0005 (first IPv4, else IPv6).
    pub inner_src: Option<Addr16>,
    /// Chunks 0x0004/0x0006.
    pub inner_dst: Option<Addr16>,
    /// Chunk 0x0007.
    pub src_port: Option<u16>,
    /// Chunk 0x0008.
    pub dst_port: Option<u16>,
    /// Chunk 0x0013: its length (`None`: no such chunk) and first [`MAX_NODE_NAME`] bytes
    /// (a longer name equals no route's name).
    pub node_name_len: Option<u16>,
    /// See `node_name_len`; bytes past the length are zero.
    pub node_name: [u8; MAX_NODE_NAME],
    /// [`crate::correlation::key_hash`] of the correlation key (empty key when none).
    pub key_hash: u64,
}

#[inline(always)]
fn any_prefix(list: &[KernelPrefix; MAX_MATCH_VALUES], n: u8, a: Option<Addr16>) -> bool {
    let Some(a) = a else { return false };
    let mut i = 0;
    while i < MAX_MATCH_VALUES {
        if i < n as usize && list[i].contains(&a) {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the packet's node name equals one of the route's.
#[inline(always)]
fn any_node_name(r: &KernelRoute, f: &KernelFacts) -> bool {
    let Some(len) = f.node_name_len else {
        return false;
    };
    let mut i = 0;
    while i < MAX_MATCH_VALUES {
        if i < r.n_node_names as usize && u16::from(r.node_name_lens[i]) == len {
            // Bytes past the length are zero on both sides.
            let mut same = true;
            let mut j = 0;
            while j < MAX_NODE_NAME {
                if r.node_names[i][j] != f.node_name[j] {
                    same = false;
                }
                j += 1;
            }
            if same {
                return true;
            }
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn any_port(r: &KernelRoute, p: Option<u16>) -> bool {
    let Some(p) = p else { return false };
    let mut i = 0;
    while i < MAX_MATCH_VALUES {
        if i < r.n_ports as usize && r.ports[i][0] <= p && p <= r.ports[i][1] {
            return true;
        }
        i += 1;
    }
    false
}

impl KernelRoute {
    /// Whether an [`RouteKind::Evaluable`] route's keys all match (within a key, any value).
    #[inline(always)]
    pub fn matches(&self, f: &KernelFacts) -> bool {
        use match_flags::*;
        if self.flags & PROTO != 0 {
            let Some(t) = f.proto_type else { return false };
            if self.proto[(t / 64) as usize & 3] & (1u64 << (t % 64)) == 0 {
                return false;
            }
        }
        if self.flags & CAPTURE_ID != 0 {
            let Some(c) = f.capture_id else { return false };
            let mut hit = false;
            let mut i = 0;
            while i < MAX_MATCH_VALUES {
                if i < self.n_capture as usize && self.capture[i][0] <= c && c <= self.capture[i][1]
                {
                    hit = true;
                }
                i += 1;
            }
            if !hit {
                return false;
            }
        }
        if self.flags & NODE_NAME != 0 && !any_node_name(self, f) {
            return false;
        }
        if self.flags & SOURCE != 0 && !any_prefix(&self.source, self.n_source, Some(f.sender)) {
            return false;
        }
        if self.flags & INNER_SRC != 0
            && !any_prefix(&self.inner_src, self.n_inner_src, f.inner_src)
        {
            return false;
        }
        if self.flags & INNER_DST != 0
            && !any_prefix(&self.inner_dst, self.n_inner_dst, f.inner_dst)
        {
            return false;
        }
        if self.flags & INNER_PORT != 0
            && !any_port(self, f.src_port)
            && !any_port(self, f.dst_port)
        {
            return false;
        }
        true
    }

    /// The destination (index within the bank) a steering route sends this packet to;
    /// `rr` is the round-robin position (per CPU in the kernel).
    #[inline(always)]
    pub fn pick(&self, f: &KernelFacts, rr: u32) -> Option<u32> {
        let n = (self.n_targets as usize).min(MAX_TARGETS);
        if n == 0 {
            return None;
        }
        let i = match self.mode {
            m if m == SteerMode::Hash as u8 => rendezvous_pick(f.key_hash, &self.seeds[..n])?,
            m if m == SteerMode::RoundRobin as u8 => rr as usize % n,
            _ => 0,
        };
        self.target(i)
    }

    /// Target `i`, read at a constant index per arm: the kernel's verifier cannot bound an
    /// index computed by `%` or by the rendezvous loop, but it follows these.
    #[inline(always)]
    fn target(&self, i: usize) -> Option<u32> {
        let t = &self.targets;
        Some(match i {
            0 => t[0],
            1 => t[1],
            2 => t[2],
            3 => t[3],
            4 => t[4],
            5 => t[5],
            6 => t[6],
            7 => t[7],
            _ => return None,
        })
    }
}

/// The kernel's decision for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To userspace: a route is opaque (index), or its action needs userspace, or nothing
    /// matched.
    Pass {
        /// Why.
        reason: PassReason,
        /// The route that decided, if any.
        route: Option<usize>,
    },
    /// Dropped by route `route`'s drop action.
    Drop {
        /// Route index.
        route: usize,
    },
    /// Left out by route `route`'s sampling.
    SampledOut {
        /// Route index.
        route: usize,
    },
    /// Sent to destination `dest` by route `route`.
    Steer {
        /// Route index.
        route: usize,
        /// Destination index within the bank.
        dest: u32,
    },
    /// Copied to every target of route `route` (by the TC program).
    Mirror {
        /// Route index.
        route: usize,
    },
}

/// Why a packet goes to userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// A route the kernel cannot evaluate came first.
    OpaqueRoute,
    /// The route that matched needs userspace for its action.
    UserspaceAction,
    /// No route matched.
    NoRoute,
}

/// Evaluates routes in order (see the module docs); `rr` as in [`KernelRoute::pick`].
#[inline(always)]
pub fn evaluate(routes: &[KernelRoute], f: &KernelFacts, rr: u32) -> Verdict {
    let mut i = 0;
    while i < routes.len() && i < MAX_ROUTES {
        let r = &routes[i];
        if r.kind != RouteKind::Evaluable as u8 {
            return Verdict::Pass {
                reason: PassReason::OpaqueRoute,
                route: Some(i),
            };
        }
        if r.matches(f) {
            return decide(r, i, f, rr);
        }
        i += 1;
    }
    Verdict::Pass {
        reason: PassReason::NoRoute,
        route: None,
    }
}

/// The verdict of route `i`, which matched.
#[inline(always)]
pub fn decide(r: &KernelRoute, i: usize, f: &KernelFacts, rr: u32) -> Verdict {
    if r.action == RouteAction::Pass as u8 {
        return Verdict::Pass {
            reason: PassReason::UserspaceAction,
            route: Some(i),
        };
    }
    if r.sample_ppm < 1_000_000 && !sample_keep(f.key_hash, r.sample_ppm) {
        return Verdict::SampledOut { route: i };
    }
    match r.action {
        a if a == RouteAction::Drop as u8 => Verdict::Drop { route: i },
        a if a == RouteAction::Mirror as u8 => Verdict::Mirror { route: i },
        _ => match r.pick(f, rr) {
            Some(dest) => Verdict::Steer { route: i, dest },
            None => Verdict::Pass {
                reason: PassReason::UserspaceAction,
                route: Some(i),
            },
        },
    }
}

/// `MirrorMeta::magic`: "HEPM".
pub const MIRROR_META_MAGIC: u32 = u32::from_be_bytes(*b"HEPM");

/// What `hep_xdp` writes in front of a packet to be mirrored (XDP metadata), for the TC
/// program: the bank and the route whose targets get a copy.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorMeta {
    /// [`MIRROR_META_MAGIC`].
    pub magic: u32,
    /// The bank the route was read from.
    pub bank: u32,
    /// Route index within the bank.
    pub route: u32,
}

/// A destination the kernel can steer to: UDP, HEPv3, no chunk rewriting.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelDestination {
    /// Collector address.
    pub addr: Addr16,
    /// Source address to write (the node's address on the egress interface). Right after
    /// `addr`: the kernel checksums the 32 bytes of both in one helper call.
    pub src_addr: Addr16,
    /// Collector UDP port.
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// Padding.
    pub _pad: u8,
    /// Counter slot of the destination.
    pub slot: u32,
}

/// A listener as the kernel sees it: the UDP address it listens on, its auth key, whether
/// it has an allow list.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelListener {
    /// UDP port (host order).
    pub port: u16,
    /// Length of `auth_key` (0: no check).
    pub auth_key_len: u8,
    /// 1: senders are checked against [`ALLOW_MAP`] under this listener's id.
    pub has_allow: u8,
    /// Listener id in [`AllowKey`] (bank × [`MAX_LISTENERS`] + index).
    pub id: u32,
    /// Required chunk 0x000e.
    pub auth_key: [u8; MAX_AUTH_KEY],
    /// The address it is bound to (when `wildcard` is 0).
    pub addr: Addr16,
    /// 0: only `addr`; 4: any IPv4 address (`0.0.0.0`); 6: any address (`[::]`, which on
    /// Linux also receives IPv4).
    pub wildcard: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

impl KernelListener {
    /// Whether a datagram to `dst` (IPv4 mapped) port `port` reaches this listener.
    #[inline(always)]
    pub fn takes(&self, dst: &Addr16, port: u16) -> bool {
        // Two 64-bit compares, few branches: the kernel's verifier walks every branch.
        let (dh, dl) = addr_halves(dst);
        let (ah, al) = addr_halves(&self.addr);
        let exact = (dh ^ ah) | (dl ^ al) == 0;
        let v4 = (dh == 0) & (dl >> 32 == 0xffff);
        let any = (self.wildcard == 6) | ((self.wildcard == 4) & v4);
        (self.port == port) & (any | exact)
    }
}

/// Key of [`ALLOW_MAP`] (an LPM trie): the listener id (always fully matched) and the
/// sender address; the trie's prefix length counts 32 bits of `listener` plus the address
/// prefix over [`Addr16`].
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowKey {
    /// Listener id, big endian (it is part of the matched prefix).
    pub listener: [u8; 4],
    /// Address.
    pub addr: Addr16,
}

/// Per-route counters, `ROUTE_COUNTERS[slot * RouteCounter::COUNT + counter]`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCounter {
    /// Packets the route took in the kernel.
    Matched = 0,
    /// Dropped by its drop action.
    Dropped = 1,
    /// Left out by sampling.
    SampledOut = 2,
    /// Steered.
    Steered = 3,
    /// Mirrored.
    Mirrored = 4,
    /// Passed to userspace by this route.
    Passed = 5,
}

impl RouteCounter {
    /// Counters per route slot.
    pub const COUNT: usize = 6;
}

/// Per-destination counters, `DEST_COUNTERS[slot * DestCounter::COUNT + counter]`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestCounter {
    /// Packets sent by XDP (steer) or TC (mirror).
    Sent = 0,
    /// Packets that could not be sent from the kernel (no neighbour yet...), passed instead.
    Fallback = 1,
}

impl DestCounter {
    /// Counters per destination slot.
    pub const COUNT: usize = 2;
}

/// Reads the [`KernelFacts`] of the HEPv3 packet in `src` (validated on the way, with the
/// shared walker), received from `sender`. Generic over [`ByteSource`] so the XDP program
/// (packet bytes) and host code (slices) compute the same facts, the correlation key hash
/// included ([`crate::correlation`]'s definition: first non-empty 0x0011, else for SIP the
/// Call-ID of the first plain payload).
///
/// The steps are public ([`FactsWalk`]) so the kernel can run the chunk walk and the
/// Call-ID scan in `bpf_loop` callbacks with the very same code.
#[inline(always)]
pub fn facts<S: ByteSource + ?Sized>(src: &S, sender: Addr16) -> Result<KernelFacts, HepError> {
    let mut walk = FactsWalk::new(sender);
    let mut w = ChunkWalker::new(src)?;
    let mut n = 0;
    while n < crate::chunk::MAX_CHUNKS + 1 {
        n += 1;
        let Some(c) = w.next_chunk()? else { break };
        walk.on_chunk(src, &c);
    }
    let key = match walk.key_source() {
        KeySpan::None => None,
        KeySpan::Bytes { offset, len } => Some((offset, len)),
        KeySpan::CallIdIn { offset, len } => {
            crate::correlation::find_call_id(src, offset, len).map(|(s, e)| (offset + s, e - s))
        }
    };
    let mut h = KeyHasher::new();
    if let Some((off, len)) = key {
        hash_range(src, off, len, &mut h);
    }
    Ok(walk.finish(h.finish()))
}

/// Feeds the bytes `[off, off + min(len, KEY_HASH_LIMIT))` of `src` to `h`.
#[inline(always)]
pub fn hash_range<S: ByteSource + ?Sized>(src: &S, off: usize, len: usize, h: &mut KeyHasher) {
    let n = if len < KEY_HASH_LIMIT {
        len
    } else {
        KEY_HASH_LIMIT
    };
    let mut i = 0;
    while i < KEY_HASH_LIMIT {
        if i >= n {
            break;
        }
        if let Some([b]) = src.load::<1>(off + i) {
            h.write_byte(b);
        }
        i += 1;
    }
}

/// Where a packet's correlation key is, after the chunk walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpan {
    /// No key: the empty key is hashed.
    None,
    /// The key is these bytes (a non-empty chunk 0x0011).
    Bytes {
        /// Offset in the packet.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// The key is the Call-ID found in this SIP payload, if any.
    CallIdIn {
        /// Offset of the payload in the packet.
        offset: usize,
        /// Payload length.
        len: usize,
    },
}

/// The state of the facts walk: one [`FactsWalk::on_chunk`] per chunk, in wire order.
#[derive(Debug, Clone, Copy)]
pub struct FactsWalk {
    f: KernelFacts,
    corr: Option<(usize, usize)>,
    payload: Option<(usize, usize)>,
    src6: Option<Addr16>,
    dst6: Option<Addr16>,
    auth: Option<(usize, usize)>,
}

impl FactsWalk {
    /// Before the first chunk.
    #[inline(always)]
    pub fn new(sender: Addr16) -> Self {
        FactsWalk {
            f: KernelFacts {
                sender,
                ..KernelFacts::default()
            },
            corr: None,
            payload: None,
            src6: None,
            dst6: None,
            auth: None,
        }
    }

    /// Takes what the facts need from chunk `c` (first occurrences win).
    #[inline(always)]
    pub fn on_chunk<S: ByteSource + ?Sized>(&mut self, src: &S, c: &crate::walker::ChunkHeader) {
        if c.vendor != crate::chunk::VENDOR_GENERIC {
            return;
        }
        let off = c.value_offset();
        let f = &mut self.f;
        match c.kind {
            chunk::PROTO_TYPE if f.proto_type.is_none() => {
                f.proto_type = src.load::<1>(off).map(|b| b[0])
            }
            chunk::CAPTURE_ID if f.capture_id.is_none() => {
                f.capture_id = src.load::<4>(off).map(u32::from_be_bytes)
            }
            chunk::SRC_PORT if f.src_port.is_none() => {
                f.src_port = src.load::<2>(off).map(u16::from_be_bytes)
            }
            chunk::DST_PORT if f.dst_port.is_none() => {
                f.dst_port = src.load::<2>(off).map(u16::from_be_bytes)
            }
            chunk::SRC_IPV4 if f.inner_src.is_none() => {
                f.inner_src = src.load::<4>(off).map(map_v4)
            }
            chunk::DST_IPV4 if f.inner_dst.is_none() => {
                f.inner_dst = src.load::<4>(off).map(map_v4)
            }
            chunk::SRC_IPV6 if self.src6.is_none() => self.src6 = src.load::<16>(off),
            chunk::DST_IPV6 if self.dst6.is_none() => self.dst6 = src.load::<16>(off),
            chunk::CORRELATION_ID if self.corr.is_none() => self.corr = Some((off, c.value_len())),
            chunk::PAYLOAD if self.payload.is_none() => self.payload = Some((off, c.value_len())),
            chunk::AUTH_KEY if self.auth.is_none() => self.auth = Some((off, c.value_len())),
            chunk::NODE_NAME if f.node_name_len.is_none() => {
                let len = c.value_len();
                f.node_name_len = Some(len as u16);
                let mut j = 0;
                while j < MAX_NODE_NAME {
                    if j < len
                        && let Some([b]) = src.load::<1>(off + j)
                    {
                        f.node_name[j] = b;
                    }
                    j += 1;
                }
            }
            _ => {}
        }
    }

    /// Where the auth key (the first chunk 0x000e, as [`crate::v3::Hep3::auth_key`]) is:
    /// `(offset, len)`, after the last chunk.
    #[inline(always)]
    pub fn auth_span(&self) -> Option<(usize, usize)> {
        self.auth
    }

    /// Where the correlation key is (after the last chunk).
    #[inline(always)]
    pub fn key_source(&self) -> KeySpan {
        match self.corr {
            Some((offset, len)) if len > 0 => KeySpan::Bytes { offset, len },
            _ => match (self.f.proto_type, self.payload) {
                (Some(p), Some((offset, len))) if p == crate::chunk::proto::SIP => {
                    KeySpan::CallIdIn { offset, len }
                }
                _ => KeySpan::None,
            },
        }
    }

    /// The facts, with the key hash computed by the caller.
    #[inline(always)]
    pub fn finish(self, key_hash: u64) -> KernelFacts {
        let mut f = self.f;
        if f.inner_src.is_none() {
            f.inner_src = self.src6;
        }
        if f.inner_dst.is_none() {
            f.inner_dst = self.dst6;
        }
        f.key_hash = key_hash;
        f
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::XdpConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelRoute {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelDestination {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelListener {}
    // SAFETY: as above (packed, byte arrays only).
    unsafe impl aya::Pod for super::AllowKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr16 {
        map_v4([a, b, c, d])
    }

    #[test]
    fn facts_follow_the_shared_definitions() {
        use crate::v3::{Hep3Message, Payload};
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let sip = b"INVITE sip:b@x SIP/2.0\r\nVia: v\r\ni: abc@host \r\n\r\n";
        let mut buf = [0u8; 512];
        for (corr, proto, v6) in [
            (None, 1u8, false),
            (Some(&b"corr-1"[..]), 5, true),
            (Some(&b""[..]), 1, false),
            (None, 100, false),
        ] {
            let (s, d): (IpAddr, IpAddr) = if v6 {
                (
                    Ipv6Addr::LOCALHOST.into(),
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).into(),
                )
            } else {
                (
                    Ipv4Addr::new(198, 18, 0, 1).into(),
                    Ipv4Addr::new(198, 18, 0, 2).into(),
                )
            };
            let m = Hep3Message {
                ip_proto: 17,
                src_ip: s,
                dst_ip: d,
                src_port: 5060,
                dst_port: 5062,
                ts_sec: 1,
                ts_usec: 2,
                proto_type: proto,
                capture_id: 2001,
                auth_key: None,
                correlation_id: corr,
                vlan_id: None,
                node_name: None,
                extra: &[],
                payload: Payload::Plain(sip),
            };
            let n = m.encode(&mut buf).unwrap();
            let p = crate::v3::Hep3::parse(&buf[..n]).unwrap();
            let f = facts(&buf[..n], map_v4([127, 0, 0, 1])).unwrap();
            let key = p.correlation_key().map_or(&[][..], |k| k.bytes);
            assert_eq!(f.key_hash, crate::correlation::key_hash(key));
            assert_eq!(f.proto_type, Some(proto));
            assert_eq!(f.capture_id, Some(2001));
            assert_eq!((f.src_port, f.dst_port), (Some(5060), Some(5062)));
            let want = |ip: IpAddr| match ip {
                IpAddr::V4(a) => map_v4(a.octets()),
                IpAddr::V6(a) => a.octets(),
            };
            assert_eq!(f.inner_src, Some(want(s)));
            assert_eq!(f.inner_dst, Some(want(d)));
        }
        assert!(facts(&b"HEP3\x00\x07"[..], [0; 16]).is_err());
    }

    #[test]
    fn listeners_take_their_address_and_port() {
        let mut l = KernelListener {
            port: 9060,
            auth_key_len: 0,
            has_allow: 0,
            id: 0,
            auth_key: [0; MAX_AUTH_KEY],
            addr: v4(198, 18, 1, 2),
            wildcard: 0,
            _pad: [0; 3],
        };
        let v6 = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert!(l.takes(&v4(198, 18, 1, 2), 9060));
        assert!(!l.takes(&v4(198, 18, 1, 3), 9060));
        assert!(!l.takes(&v4(198, 18, 1, 2), 9061));
        l.wildcard = 4;
        assert!(l.takes(&v4(10, 0, 0, 1), 9060));
        assert!(!l.takes(&v6, 9060));
        l.wildcard = 6;
        assert!(l.takes(&v6, 9060) && l.takes(&v4(10, 0, 0, 1), 9060));
        assert!(!l.takes(&v6, 9061));
    }

    #[test]
    fn prefixes() {
        let p = KernelPrefix {
            addr: v4(198, 18, 0, 0),
            len: 96 + 15,
            _pad: [0; 3],
        };
        assert!(p.contains(&v4(198, 19, 255, 1)));
        assert!(!p.contains(&v4(198, 20, 0, 1)));
        let all = KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        };
        assert!(all.contains(&v4(1, 2, 3, 4)));
    }

    #[test]
    fn first_match_wins_opaque_passes_sampling_and_picks() {
        let mut sip = KernelRoute::EMPTY;
        sip.kind = RouteKind::Evaluable as u8;
        sip.flags = match_flags::PROTO;
        sip.proto[0] = 1 << 1;
        sip.action = RouteAction::Steer as u8;
        sip.mode = SteerMode::Hash as u8;
        sip.n_targets = 2;
        sip.targets = [3, 4, 0, 0, 0, 0, 0, 0];
        sip.seeds = [11, 22, 0, 0, 0, 0, 0, 0];
        let mut logs = KernelRoute::EMPTY;
        logs.kind = RouteKind::Evaluable as u8;
        logs.flags = match_flags::PROTO | match_flags::CAPTURE_ID;
        logs.proto[1] = 1 << (100 - 64);
        logs.n_capture = 1;
        logs.capture[0] = [2000, 2999];
        logs.action = RouteAction::Drop as u8;
        let opaque = KernelRoute::EMPTY;
        let routes = [sip, logs, opaque];
        let mut f = KernelFacts {
            proto_type: Some(1),
            key_hash: 7,
            ..Default::default()
        };
        let v = evaluate(&routes, &f, 0);
        let want = rendezvous_pick(7, &[11, 22]).map(|i| [3, 4][i]).unwrap();
        assert_eq!(
            v,
            Verdict::Steer {
                route: 0,
                dest: want
            }
        );
        f.proto_type = Some(100);
        f.capture_id = Some(2500);
        assert_eq!(evaluate(&routes, &f, 0), Verdict::Drop { route: 1 });
        f.capture_id = Some(3000);
        assert_eq!(
            evaluate(&routes, &f, 0),
            Verdict::Pass {
                reason: PassReason::OpaqueRoute,
                route: Some(2)
            }
        );
        assert_eq!(
            evaluate(&routes[..2], &f, 0),
            Verdict::Pass {
                reason: PassReason::NoRoute,
                route: None
            }
        );
        let mut sampled = logs;
        sampled.capture[0] = [0, u32::MAX];
        sampled.sample_ppm = 0;
        assert_eq!(
            evaluate(&[sampled], &f, 0),
            Verdict::SampledOut { route: 0 }
        );
    }
}
