//! The HEP payload read in place: a [`ByteSource`] over the frame (direct packet access),
//! so the walker, the prefix, the Call-ID scan, the hash and the edit walk read the
//! packet's own bytes, with no copy into the scratch map (a `bpf_xdp_load_bytes` of the
//! whole payload cost 70–80 ns a packet here, XDP-COST.md §1 and §3 lever 3).
//!
//! Every read is bounds-checked twice: against the payload's length (the source's rule, as
//! for a slice) and against the frame's end (the verifier's rule). The frame offset is
//! masked to [`FRAME_MASK`] first (a no-op: a payload the kernel handles starts at most 90
//! bytes in, after Ethernet, two VLAN tags, IPv4 with options and UDP, and is at most
//! `SCRATCH_LEN` bytes long), which bounds the variable offset the verifier adds to the
//! packet pointer.
//!
//! A `bpf_loop` callback reaches the frame through its context argument: the caller passes
//! a pointer to its [`XdpContext`] ([`Packet::callback_arg`]), and the callback takes it
//! back ([`Packet::in_callback`]); the verifier follows the context pointer kept on the
//! caller's stack as it does for any subprogram given `&XdpContext`.

use core::ffi::c_void;

use aya_ebpf::programs::XdpContext;
use hep_common::abi::SCRATCH_LEN;
use hep_common::bytes::ByteSource;

use crate::parse::HepDatagram;

/// Frame offsets are masked into `0..=FRAME_MASK` before they are added to the packet
/// pointer (the verifier needs a bound on the variable part).
const FRAME_MASK: usize = 0x1fff;
const _: () = assert!(
    FRAME_MASK >= 128 + SCRATCH_LEN,
    "the mask is a no-op for every payload the kernel handles"
);

/// The HEP payload of the frame, in place.
pub struct Packet {
    /// Start of the frame (a packet pointer).
    data: usize,
    /// End of the frame (the verifier's `data_end`).
    data_end: usize,
    /// Frame offset of the payload.
    payload: usize,
    /// Payload length (at most `SCRATCH_LEN`: `hep_xdp` passes longer ones up).
    len: usize,
}

impl Packet {
    /// The payload of datagram `d` in the frame of `ctx`.
    ///
    /// The context's fields are read with volatile loads: LLVM would otherwise hoist the
    /// loads of a non-inlined callee into its callers and pass the (32-bit) values as
    /// arguments, which the callee then widens with shifts, and the verifier forbids
    /// arithmetic on the frame's end pointer.
    #[inline(always)]
    pub fn new(ctx: &XdpContext, d: &HepDatagram) -> Self {
        // SAFETY: `ctx.ctx` is the program's context, valid for the whole run; two reads
        // of its fields.
        let (data, data_end) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*ctx.ctx).data),
                core::ptr::read_volatile(&raw const (*ctx.ctx).data_end),
            )
        };
        Packet {
            data: data as usize,
            data_end: data_end as usize,
            payload: d.payload_offset,
            len: d.payload_len,
        }
    }

    /// The context argument of a `bpf_loop` whose callback reads the frame.
    #[inline(always)]
    pub fn callback_arg(ctx: &XdpContext) -> *mut c_void {
        core::ptr::from_ref(ctx).cast_mut().cast()
    }

    /// The frame's context inside a callback given [`Packet::callback_arg`].
    ///
    /// # Safety
    /// `arg` is the `callback_ctx` of a `bpf_loop` called with [`Packet::callback_arg`]:
    /// it points to the caller's `XdpContext`, which outlives the loop.
    #[inline(always)]
    pub unsafe fn in_callback(arg: *mut c_void) -> &'static XdpContext {
        // SAFETY: see the function's contract.
        unsafe { &*arg.cast::<XdpContext>() }
    }

    /// The packet pointer to `N` bytes at payload offset `offset`, checked against the
    /// payload's length and the frame's end.
    #[inline(always)]
    fn at<const N: usize>(&self, offset: usize) -> Option<usize> {
        let end = offset.checked_add(N)?;
        if end > self.len {
            return None;
        }
        // The mask is a no-op that LLVM must not see as one: it bounds the variable offset
        // for the verifier.
        let at = opaque(self.payload + offset) & FRAME_MASK;
        let p = self.data + at;
        // Compared as `p + N > data_end`, the form the verifier draws a range from: LLVM
        // would turn `p + 1 > data_end` into `p >= data_end`, which gives none.
        if opaque(p + N) > self.data_end {
            return None;
        }
        Some(p)
    }
}

/// `v`, hidden from LLVM's reasoning: one register move onto itself that LLVM cannot see
/// through (no stack slot; an empty `asm!` would leave two line records on one
/// instruction, which the kernel rejects).
#[inline(always)]
fn opaque(mut v: usize) -> usize {
    // SAFETY: `r = r`: the register keeps its value; no memory is touched.
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack, preserves_flags));
    }
    v
}

impl ByteSource for Packet {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let p = self.at::<N>(offset)?;
        // SAFETY: `p .. p + N` lies inside the frame (checked by `at`); an unaligned read
        // of plain bytes.
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }

    /// One 8-byte load (`ldxdw`). The payload is rarely 8-byte aligned in the frame (an
    /// IPv4 payload starts 42 bytes in) and the generic BPF instruction set would assemble
    /// an unaligned read from eight byte loads; the verifier allows a misaligned packet
    /// read on this architecture (no `BPF_F_STRICT_ALIGNMENT`), so the load is written out.
    #[inline(always)]
    fn load_word(&self, index: usize) -> Option<u64> {
        let p = self.at::<8>(index.checked_mul(8)?)?;
        let word: u64;
        // SAFETY: `p .. p + 8` lies inside the frame (checked by `at`); the instruction
        // only reads it.
        unsafe {
            core::arch::asm!(
                "{w} = *(u64 *)({p} + 0)",
                p = in(reg) p,
                w = lateout(reg) word,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        Some(word)
    }
}
