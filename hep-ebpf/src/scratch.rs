//! The per-CPU scratch area: the state of the `bpf_loop` walks over the payload (which
//! they read in place, `crate::packet`), the facts, the decision, and what the steer and the
//! mirror prepare.
//!
//! Why map memory: the chunk walk, the Call-ID scan and the route evaluation run in
//! `bpf_loop` callbacks, which the verifier checks once each instead of unrolling them.
//! Their state lives here, in map memory, whose contents the verifier does not track, so a
//! callback's state is the same at every iteration and verification converges at once
//! (inlined, the walk exceeds the verifier's one-million-instruction budget).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use hep_common::abi::MAX_TARGETS;
use hep_common::correlation::CallIdScanner;
use hep_common::eval::{PassReason, Verdict};
use hep_common::facts::{FactsWalk, KernelFacts};

use crate::edit::EditWalk;
use crate::fib::NextHop;
use crate::net::{ETH_HLEN, IPV6_HLEN, UDP_HLEN};
use crate::parse::HepDatagram;

/// The chunk walk's state.
#[repr(C)]
pub struct Walk {
    /// Offset of the next chunk.
    pub offset: usize,
    /// End of the packet (its length).
    pub end: usize,
    /// Chunks read before the `bpf_loop` walk (a recognised prefix), for the 64-chunk rule.
    pub before: u64,
    /// [`WALKING`], [`WALK_DONE`] or [`WALK_FAILED`].
    pub status: u32,
    /// What the facts need, chunk by chunk.
    pub facts: FactsWalk,
}

/// [`Walk::status`]: more chunks to read.
pub const WALKING: u32 = 0;
/// [`Walk::status`]: the walk reached the end of the packet.
pub const WALK_DONE: u32 = 1;
/// [`Walk::status`]: the packet broke a rule of the walker (invalid HEPv3).
pub const WALK_FAILED: u32 = 2;

/// The Call-ID scan's state.
#[repr(C)]
pub struct Scan {
    /// Offset of the SIP payload in the packet.
    pub base: usize,
    /// Bytes to scan (at most `CALLID_SCAN_LIMIT`).
    pub window: usize,
    /// Next position, relative to `base`.
    pub pos: usize,
    /// The shared scanner.
    pub scanner: CallIdScanner,
}

/// The route evaluation's state.
#[repr(C)]
pub struct Eval {
    /// First route of the active bank in `ROUTES`.
    pub base: u32,
    /// Routes in the active bank.
    pub count: u32,
    /// The route that matched, or [`NO_MATCH`].
    pub matched: u32,
    /// The decision, once a route decided (else "no route").
    pub verdict: Verdict,
}

/// The mirror's headers (Ethernet, IPv6 and UDP at most: 62 bytes), in map memory: two
/// copies would not fit the TC program's stack beside its loads.
#[repr(C)]
pub struct Template {
    /// What every copy starts from (`mirror::original`).
    pub head: [u8; TEMPLATE_LEN],
    /// The copy for one target, written to the packet with one helper call.
    pub copy: [u8; TEMPLATE_LEN],
}

/// The longest header template: Ethernet, IPv6 and UDP headers.
pub const TEMPLATE_LEN: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN;

/// [`Eval::matched`]: no route matched (yet).
pub const NO_MATCH: u32 = u32::MAX;

/// Everything in the per-CPU scratch entry.
#[repr(C)]
pub struct Scratch {
    /// Chunk walk.
    pub walk: Walk,
    /// Call-ID scan.
    pub scan: Scan,
    /// The packet's facts, once computed.
    pub facts: KernelFacts,
    /// Route evaluation.
    pub eval: Eval,
    /// The steer's `bpf_fib_lookup` parameters (64 bytes the stack cannot spare).
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// The mirror's next hops, one per target.
    pub hops: [NextHop; MAX_TARGETS],
    /// The mirror's header template and the copy being written from it.
    pub template: Template,
    /// The parsed datagram (see `hep_xdp`).
    pub dgram: HepDatagram,
    /// The in-place edits of a steered packet.
    pub edit: EditWalk,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch entry, reached field by field.
///
/// # Ownership of the fields
/// The entry is per CPU and a program runs to completion on its CPU, so only the current
/// packet's code reaches it. Within one packet the steps run one after another (parse,
/// walk, scan, gate, evaluate, steer or mirror), and each accessor below hands
/// out a reference to one field only, taken through the entry's raw pointer (`&mut (*p).field`): no
/// reference to the whole entry ever exists, so a step holding one field (`hep_xdp` keeps
/// the datagram for the whole packet) never aliases a callee's. Each field has one writer
/// at a time, named in its accessor; a `bpf_loop` callback takes its field afresh at each
/// iteration and drops it before returning.
#[derive(Clone, Copy)]
pub struct Entry(*mut Scratch);

impl Entry {
    /// This CPU's entry (`None` only if the map lookup fails, which it cannot for index 0).
    #[inline(always)]
    pub fn get() -> Option<Entry> {
        SCRATCH.get_ptr_mut(0).map(Entry)
    }

    /// The chunk walk's state: `facts::compute` sets it up, `facts::walk_step` advances it,
    /// `route::gate` reads the auth span it found.
    #[inline(always)]
    pub fn walk(self) -> &'static mut Walk {
        // SAFETY: a reference to the `walk` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).walk }
    }

    /// The Call-ID scan's state: `facts::compute` and `facts::scan_step`.
    #[inline(always)]
    pub fn scan(self) -> &'static mut Scan {
        // SAFETY: a reference to the `scan` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).scan }
    }

    /// The packet's facts: written by `facts::compute` (and the key hash by `facts::key`,
    /// when the route found needs it), read by the gate and the routes.
    #[inline(always)]
    pub fn facts(self) -> &'static mut KernelFacts {
        // SAFETY: a reference to the `facts` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).facts }
    }

    /// The route evaluation's state: `route::evaluate`, `route::route_step`, then `hep_xdp`
    /// reads the verdict.
    #[inline(always)]
    pub fn eval(self) -> &'static mut Eval {
        // SAFETY: a reference to the `eval` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).eval }
    }

    /// The `bpf_fib_lookup` parameters: `steer::steer` or the mirror's lookups.
    #[inline(always)]
    pub fn fib(self) -> &'static mut aya_ebpf::bindings::bpf_fib_lookup {
        // SAFETY: a reference to the `fib` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).fib }
    }

    /// The mirror's next hops (`hep_mirror` only, after `hep_xdp` finished on this CPU).
    #[inline(always)]
    pub fn hops(self) -> &'static mut [NextHop; MAX_TARGETS] {
        // SAFETY: a reference to the `hops` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).hops }
    }

    /// The mirror's header template (`hep_mirror` only, after `hep_xdp` finished on this
    /// CPU): `mirror::original` writes `head`, `mirror::rewrite` each copy.
    #[inline(always)]
    pub fn template(self) -> &'static mut Template {
        // SAFETY: a reference to the `template` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).template }
    }

    /// The in-place edits' walk: `edit::locate` and `edit::locate_step`, then `edit::write`.
    #[inline(always)]
    pub fn edit(self) -> &'static mut EditWalk {
        // SAFETY: a reference to the `edit` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).edit }
    }

    /// The parsed datagram: written by `parse::parse` (through this accessor, in `hep_xdp`
    /// only), then read for the rest of the packet ([`Entry::datagram`]).
    #[inline(always)]
    pub fn dgram(self) -> &'static mut HepDatagram {
        // SAFETY: a reference to the `dgram` field only; one user at a time (see the type).
        unsafe { &mut (*self.0).dgram }
    }

    /// The parsed datagram, read-only: for the `bpf_loop` callbacks that read the payload
    /// in place, after `parse::parse` wrote it.
    #[inline(always)]
    pub fn datagram(self) -> &'static HepDatagram {
        // SAFETY: a shared reference to the `dgram` field, which is no longer written once
        // `parse::parse` returned (`hep_xdp` holds only a shared reference from then on).
        unsafe { &(*self.0).dgram }
    }
}

/// No verdict yet.
pub const NO_ROUTE: Verdict = Verdict::Pass {
    reason: PassReason::NoRoute,
    route: None,
};
