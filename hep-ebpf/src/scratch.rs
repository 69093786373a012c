//! The per-CPU scratch area: the HEP payload copied out of the frame, and the state of the
//! `bpf_loop` walks over it.
//!
//! Why a copy: the chunk walk, the Call-ID scan and the route evaluation run in `bpf_loop`
//! callbacks, which the verifier checks once each instead of unrolling them. Their state
//! lives here, in map memory, whose contents the verifier does not track, so a callback's
//! state is the same at every iteration and verification converges at once (inlined, the
//! walk exceeds the verifier's one-million-instruction budget). Reads from the copy are
//! masked into the buffer, so any offset verifies.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, macros::map, maps::PerCpuArray, programs::XdpContext};
use hep_common::bytes::ByteSource;
use hep_common::correlation::{CallIdScanner, KeyHasher};
use hep_common::kernel_plan::{FactsWalk, KernelFacts, MAX_TARGETS, PassReason, Verdict};

/// Largest HEP payload the kernel handles (a power of two); larger ones go to userspace.
pub const SCRATCH_LEN: usize = 4096;
const MASK: usize = SCRATCH_LEN - 1;
/// Slack after the buffer, so a masked read of up to this many bytes stays inside it.
const PAD: usize = 64;

/// The chunk walk's state.
#[repr(C)]
pub struct Walk {
    /// Offset of the next chunk.
    pub offset: usize,
    /// End of the packet (its length).
    pub end: usize,
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

/// The key hash's state.
#[repr(C)]
pub struct Hash {
    /// Next key byte.
    pub offset: usize,
    /// Key bytes left to hash (at most `KEY_HASH_LIMIT`).
    pub left: usize,
    /// The shared hasher.
    pub hasher: KeyHasher,
}

/// The route evaluation's state.
#[repr(C)]
pub struct Eval {
    /// First route of the active bank in `ROUTES`.
    pub base: u32,
    /// Routes in the active bank.
    pub count: u32,
    /// The decision, once a route decided (else "no route").
    pub verdict: Verdict,
}

/// Everything in the per-CPU scratch entry.
#[repr(C)]
pub struct Scratch {
    /// The HEP payload, `len` bytes.
    pub buf: [u8; SCRATCH_LEN + PAD],
    /// Payload length.
    pub len: usize,
    /// Chunk walk.
    pub walk: Walk,
    /// Call-ID scan.
    pub scan: Scan,
    /// Key hash.
    pub hash: Hash,
    /// The packet's facts, once computed.
    pub facts: KernelFacts,
    /// Route evaluation.
    pub eval: Eval,
    /// The steer's `bpf_fib_lookup` parameters (64 bytes the stack cannot spare).
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// The mirror's next hops, one per target.
    pub hops: [Hop; MAX_TARGETS],
    /// The parsed datagram (see `hep_xdp`).
    pub dgram: crate::parse::HepDatagram,
}

/// A resolved next hop.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hop {
    /// Egress interface.
    pub ifindex: u32,
    /// Next hop MAC.
    pub dmac: [u8; 6],
    /// Egress interface MAC.
    pub smac: [u8; 6],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch entry. A raw pointer: the `bpf_loop` callbacks reach the same entry,
/// so callers hold no reference across a `bpf_loop` call.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// No verdict yet.
pub const NO_ROUTE: Verdict = Verdict::Pass {
    reason: PassReason::NoRoute,
    route: None,
};

/// Copies the `len` payload bytes at frame offset `off` into the scratch buffer; `false`
/// when they do not fit (or the frame is shorter).
#[inline(always)]
pub fn copy_in(ctx: &XdpContext, s: *mut Scratch, off: usize, len: usize) -> bool {
    if len == 0 || len > SCRATCH_LEN {
        return false;
    }
    // The verifier needs the bound on the very register passed to the helper; LLVM would
    // check a register it derived from `len` instead. A volatile read hides `len` from
    // LLVM, and the mask (a no-op for 1..=SCRATCH_LEN) gives the verifier the bound.
    // SAFETY: reading a local.
    let n = unsafe { core::ptr::read_volatile(&len) };
    let n = ((n.wrapping_sub(1)) & MASK) + 1;
    // SAFETY: `s` is this CPU's scratch entry; `n` ≤ SCRATCH_LEN bytes fit in `buf`; the
    // helper checks the frame range itself.
    unsafe {
        (*s).len = n;
        bpf_xdp_load_bytes(ctx.ctx, off as u32, (*s).buf.as_mut_ptr().cast(), n as u32) == 0
    }
}

/// The copied payload as a [`ByteSource`] (offsets relative to the payload).
pub struct Bytes<'a> {
    buf: &'a [u8; SCRATCH_LEN + PAD],
    len: usize,
}

impl<'a> Bytes<'a> {
    /// The payload in `buf`, `len` bytes long.
    #[inline(always)]
    pub fn new(buf: &'a [u8; SCRATCH_LEN + PAD], len: usize) -> Self {
        Bytes { buf, len }
    }
}

impl ByteSource for Bytes<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if N > PAD {
            return None;
        }
        let end = offset.checked_add(N)?;
        if end > self.len {
            return None;
        }
        // The mask changes nothing (offset < len ≤ SCRATCH_LEN) but tells the verifier the
        // read stays inside `buf`. The volatile read keeps LLVM from proving it redundant
        // and dropping it.
        // SAFETY: reading a local.
        let at = unsafe { core::ptr::read_volatile(&offset) } & MASK;
        // SAFETY: at + N ≤ SCRATCH_LEN + PAD, inside `buf`; unaligned read of plain bytes.
        Some(unsafe { core::ptr::read_unaligned(self.buf.as_ptr().add(at).cast::<[u8; N]>()) })
    }
}
