//! HEP classification of a UDP payload, with hep-common's walker: the kernel and the daemon
//! validate HEPv3 with the same code (`hep_common::walker`).
//!
//! The payload is read with `bpf_xdp_load_bytes` (constant length, any offset, bounds
//! checked by the kernel at run time), so the variable chunk offsets never become packet
//! pointer arithmetic the verifier would have to follow.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use hep_common::bytes::ByteSource;
use hep_common::maps::XdpCounter;
use hep_common::version::{HepVersion, detect_prefix};
use hep_common::walker;

use crate::parse::HepDatagram;

/// The UDP payload of an XDP frame as a [`ByteSource`]: offsets are relative to the payload.
pub struct XdpPayload<'a> {
    ctx: &'a XdpContext,
    base: usize,
    len: usize,
}

impl<'a> XdpPayload<'a> {
    /// The payload of `dgram` in the frame of `ctx`.
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext, dgram: &HepDatagram) -> Self {
        XdpPayload {
            ctx,
            base: dgram.payload_offset,
            len: dgram.payload_len,
        }
    }
}

impl ByteSource for XdpPayload<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        if end > self.len {
            return None;
        }
        let mut buf = [0u8; N];
        // SAFETY: `buf` is N writable bytes on our stack; the helper checks the packet range
        // itself and fails (non-zero) when it is out of bounds.
        let r = unsafe {
            bpf_xdp_load_bytes(
                self.ctx.ctx,
                (self.base + offset) as u32,
                buf.as_mut_ptr().cast(),
                N as u32,
            )
        };
        (r == 0).then_some(buf)
    }
}

// ---------------------------------------------------------------------------------------
// HEP classification: the plug-in point for HEPv3 steering. Today it only names the
// outcome; the rule lookup (capture id, proto type, correlation hash → destination) will
// read the chunks it needs here, with the same walker.
// ---------------------------------------------------------------------------------------

/// The outcome for a UDP datagram to the HEP port: HEPv3 (valid by the shared walker),
/// HEPv1/v2 (by its first 4 bytes), or invalid.
#[inline(always)]
pub fn classify(ctx: &XdpContext, dgram: &HepDatagram) -> XdpCounter {
    let payload = XdpPayload::new(ctx, dgram);
    let Some(prefix) = payload.load::<4>(0) else {
        return XdpCounter::HepInvalid;
    };
    match detect_prefix(prefix) {
        Some(HepVersion::V3) => match walker::validate(&payload) {
            Ok(_) => XdpCounter::HepV3,
            Err(_) => XdpCounter::HepInvalid,
        },
        Some(HepVersion::V1 | HepVersion::V2) => XdpCounter::HepLegacy,
        None => XdpCounter::HepInvalid,
    }
}
