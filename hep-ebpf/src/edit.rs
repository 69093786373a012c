//! In-place rewrites of a steered packet: the route's `set` edits and the destination's
//! auth key, with hep-common's definition (`inplace::EditSites`, shown equal to the
//! daemon's rewrite by a property test).
//!
//! Two steps around `steer`: [`locate`] walks the payload (in place) for the edited chunks
//! before anything is written (a packet on which an edit does not fit in place goes up
//! untouched, and the daemon rewrites it); [`write`], after `steer` rewrote the headers,
//! writes each value where its chunk's value is and adjusts the UDP checksum (IPv6; the
//! IPv4 one `steer` set to 0).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_loop, bpf_xdp_store_bytes};
use aya_ebpf::programs::XdpContext;
use hep_common::abi::{KernelEdit, KernelRoute, MAX_EDIT_SITES, MAX_EDIT_VALUE};
use hep_common::bytes::ByteSource as _;
use hep_common::chunk::{HEADER_LEN, MAX_CHUNKS};
use hep_common::inplace::{EditSites, UdpChecksum};

use crate::facts::walk_chunks;
use crate::net::{Frame as _, udp};
use crate::packet::Packet;
use crate::scratch::{Entry, WALK_DONE, WALKING};

/// The edit walk's state.
#[repr(C)]
pub struct EditWalk {
    /// Offset of the next chunk.
    pub offset: usize,
    /// End of the packet.
    pub end: usize,
    /// `WALKING`, `WALK_DONE` or `WALK_FAILED`.
    pub status: u32,
    /// The edits and where their chunks are.
    pub sites: EditSites,
}

/// Chunks read per callback.
const EDIT_WALK_CHUNKS: u64 = 4;

/// Up to [`EDIT_WALK_CHUNKS`] chunks of the edit walk (`arg`: [`Packet::callback_arg`]).
unsafe extern "C" fn locate_step(i: u64, arg: *mut c_void) -> i64 {
    let Some(s) = Entry::get() else { return 1 };
    // SAFETY: `locate` passes `Packet::callback_arg`.
    let ctx = unsafe { Packet::in_callback(arg) };
    let (bytes, w) = (Packet::new(ctx, s.datagram()), s.edit());
    let sites = &mut w.sites;
    match walk_chunks(
        &bytes,
        &mut w.offset,
        w.end,
        (0, i),
        EDIT_WALK_CHUNKS,
        |c| sites.on_chunk(c),
    ) {
        Some(status) => {
            w.status = status;
            1
        }
        None => 0,
    }
}

/// Finds the chunks the edits of `route` and the destination's `auth` name in the
/// payload; `true` when every edit can be written in place. Not inlined: its frame is not
/// the caller's.
#[inline(never)]
pub fn locate(ctx: &XdpContext, s: Entry, route: &KernelRoute, auth: &KernelEdit) -> bool {
    {
        let w = s.edit();
        w.sites.reset(&route.edits, route.n_edits, auth);
        w.offset = HEADER_LEN;
        w.end = s.datagram().payload_len;
        w.status = WALKING;
    }
    // SAFETY: a static callback of the right signature; it takes its state from the map
    // and the frame from `ctx`, which outlives the loop.
    unsafe {
        bpf_loop(
            (MAX_CHUNKS as u64 / EDIT_WALK_CHUNKS + 1) as u32,
            locate_step as *mut c_void,
            Packet::callback_arg(ctx),
            0,
        )
    };
    let w = s.edit();
    w.status == WALK_DONE && w.sites.in_place()
}

/// Writes the edits [`locate`] found into the frame, whose UDP header is at `l4` and HEP
/// payload at `payload`, and adjusts the UDP checksum when there is one. `false` when a
/// write fails, which the walk rules out (every site lies inside the payload). Not inlined:
/// its frame is not the caller's.
#[inline(never)]
pub fn write(ctx: &XdpContext, s: Entry, l4: usize, payload: usize) -> bool {
    // Bounds the verifier can see (no-ops: UDP starts at most 82 bytes in, the payload
    // 8 bytes after it).
    let (l4, payload) = (l4 & 0x7f, payload & 0xff);
    let Some(stored) = ctx.load::<2>(l4 + udp::CHECK) else {
        return false;
    };
    let checked = stored != [0, 0];
    let mut sum = UdpChecksum::of(stored);
    // The old values, read before each is overwritten (the sites do not overlap).
    let bytes = Packet::new(ctx, s.datagram());
    let sites = &s.edit().sites;
    let mut i = 0;
    while i < MAX_EDIT_SITES {
        if sites.active[i] == 0 {
            i += 1;
            continue;
        }
        let e = &sites.edits[i];
        let at = sites.value_offset[i] as usize & 0xffff;
        let len = e.len as usize;
        if len == 0 || len > MAX_EDIT_VALUE {
            return false;
        }
        if checked {
            // Positions from the UDP header (which starts on an even byte of the sum).
            let mut k = 0;
            while k < MAX_EDIT_VALUE && k < len {
                let Some([old]) = bytes.load::<1>(at + k) else {
                    return false;
                };
                sum.replace_byte(udp::HEADER_LEN + at + k, old, e.value[k]);
                k += 1;
            }
        }
        // SAFETY: `e.value` is map memory of MAX_EDIT_VALUE bytes and `len` ≤ that; the
        // helper checks the frame range itself.
        let r = unsafe {
            bpf_xdp_store_bytes(
                ctx.ctx,
                (payload + at) as u32,
                e.value.as_ptr() as *mut c_void,
                len as u32,
            )
        };
        if r != 0 {
            return false;
        }
        i += 1;
    }
    !checked || ctx.store(l4 + udp::CHECK, &sum.done())
}
