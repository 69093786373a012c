//! The route facts of a HEPv3 packet, with hep-common's definitions: the common agents'
//! chunk prefix (`prefix`), the walker's step (`walker::read_chunk`), `facts::FactsWalk`,
//! `correlation::CallIdScanner` (driven word-wise by `correlation::scan_word_step`) and the
//! `KeyHasher` of `facts::hash_range` — the same code the daemon runs. `bpf_loop` drives
//! the chunk walk after the prefix (one chunk per callback) and the Call-ID scan (sixteen
//! steps per callback); their state lives in the scratch entry (see [`crate::scratch`]).
//! All of them read the payload in place ([`Packet`]).

use core::ffi::c_void;
use core::ptr;

use aya_ebpf::helpers::bpf_loop;
use aya_ebpf::programs::XdpContext;
use hep_common::bytes::ByteSource;
use hep_common::chunk::{HEADER_LEN, MAX_CHUNKS};
use hep_common::correlation::{CALLID_SCAN_LIMIT, CallIdScanner, KeyHasher, scan_word_step};
use hep_common::facts::{FactsWalk, KeySpan, hash_range_blocks};
use hep_common::prefix;
use hep_common::walker::{ChunkHeader, check_header, read_chunk};

use crate::packet::Packet;
use crate::parse::HepDatagram;
use crate::scratch::{Entry, WALK_DONE, WALK_FAILED, WALKING};

/// Chunks read per callback. One: the walk reads the frame in place, and with more than
/// one chunk per callback the verifier's states multiply with each chunk's kind (2 chunks:
/// 517,426 instructions processed for `hep_xdp`; 4: over the 1,000,000 limit; 1: 256,855).
/// The common agents' first ten chunks are read before the loop (`prefix`), so one to
/// three callbacks remain for their packets (the walk ends in the callback that reads the
/// last chunk).
const WALK_CHUNKS: u64 = 1;

/// Up to `per_call` chunks of a chunk walk over `bytes`, callback `i` of a `bpf_loop`
/// (chunks `before + i * per_call ..`, `before` read already): the walker's step
/// (`read_chunk`) from `*offset` to `end`, the walker's 64-chunk rule, `visit` for each
/// chunk. `Some(WALK_DONE | WALK_FAILED)` when the walk ended, `None` to go on. The one
/// loop of both walks (the facts and the in-place edits' sites).
#[inline(always)]
pub fn walk_chunks<S: ByteSource + ?Sized>(
    bytes: &S,
    offset: &mut usize,
    end: usize,
    (before, i): (u64, u64),
    per_call: u64,
    mut visit: impl FnMut(&ChunkHeader),
) -> Option<u32> {
    let mut k = 0;
    while k < per_call {
        if *offset >= end {
            return Some(WALK_DONE);
        }
        // The walker's rule: at most MAX_CHUNKS chunks.
        if before + i * per_call + k >= MAX_CHUNKS as u64 {
            return Some(WALK_FAILED);
        }
        match read_chunk(bytes, *offset, end) {
            Ok(c) => {
                visit(&c);
                *offset = c.end();
                // Ended here: no callback more just to see it.
                if *offset >= end {
                    return Some(WALK_DONE);
                }
            }
            Err(_) => return Some(WALK_FAILED),
        }
        k += 1;
    }
    None
}

/// Up to [`WALK_CHUNKS`] chunks of the facts walk (`arg`: [`Packet::callback_arg`]).
unsafe extern "C" fn walk_step(i: u64, arg: *mut c_void) -> i64 {
    let Some(s) = Entry::get() else { return 1 };
    // SAFETY: `compute` passes `Packet::callback_arg`.
    let ctx = unsafe { Packet::in_callback(arg) };
    let (bytes, w) = (Packet::new(ctx, s.datagram()), s.walk());
    let facts = &mut w.facts;
    match walk_chunks(
        &bytes,
        &mut w.offset,
        w.end,
        (w.before, i),
        WALK_CHUNKS,
        |c| facts.on_chunk(&bytes, c),
    ) {
        Some(status) => {
            w.status = status;
            1
        }
        None => 0,
    }
}

/// Steps of the Call-ID scan per callback (fewer callbacks: each costs a call).
const SCAN_STEPS: usize = 16;

/// Up to [`SCAN_STEPS`] steps of the word-wise Call-ID scan (hep-common's
/// `scan_word_step`: a word of the payload per step while a line is skipped, a byte
/// elsewhere; `arg`: [`Packet::callback_arg`]).
unsafe extern "C" fn scan_step(_i: u64, arg: *mut c_void) -> i64 {
    let Some(s) = Entry::get() else { return 1 };
    // SAFETY: `key` passes `Packet::callback_arg`.
    let ctx = unsafe { Packet::in_callback(arg) };
    let (bytes, sc) = (Packet::new(ctx, s.datagram()), s.scan());
    let mut k = 0;
    while k < SCAN_STEPS {
        if !scan_word_step(&bytes, &mut sc.scanner, sc.base, &mut sc.pos, sc.window) {
            return 1;
        }
        k += 1;
    }
    0
}

/// Walks the payload of datagram `d` in place (validating it by the walker's rules) and
/// stores its facts in `s.facts`, all but the key hash ([`key`]); `false` when it is not
/// valid HEPv3. Not inlined: its locals stay out of `hep_xdp`'s frame. Each field is taken
/// from the entry where it is used and not held across a `bpf_loop` call, whose callbacks
/// take it themselves.
#[inline(never)]
pub fn compute(ctx: &XdpContext, s: Entry, d: &HepDatagram) -> bool {
    let bytes = Packet::new(ctx, d);
    let Ok(end) = check_header(&bytes) else {
        return false;
    };
    {
        let w = s.walk();
        w.end = end;
        w.status = WALKING;
        // SAFETY: a plain write of a `Copy` value into map memory (no drop of the old one).
        unsafe { ptr::write(&raw mut w.facts, FactsWalk::new(d.sender)) };
        // The common agents' first ten chunks at once (hep-common `prefix`), when the
        // packet starts with them; the walk goes on after them.
        let (offset, before) = prefix::apply(&bytes, end, &mut w.facts).unwrap_or((HEADER_LEN, 0));
        w.offset = offset;
        w.before = before as u64;
    }
    // Enough callbacks for MAX_CHUNKS chunks and one more step, to see the end (or one
    // chunk too many).
    // SAFETY: a static callback of the right signature; it takes its state from the map
    // and the frame from `ctx`, which outlives the loop.
    unsafe {
        bpf_loop(
            (MAX_CHUNKS as u64 / WALK_CHUNKS + 1) as u32,
            walk_step as *mut c_void,
            Packet::callback_arg(ctx),
            0,
        )
    };
    if s.walk().status != WALK_DONE {
        return false;
    }
    // The key hash is computed later, by `key`, only if the route found needs it.
    *s.facts() = s.walk().facts.finish(0);
    // The SIP first line: a dozen bytes at the payload's start (SIP packets only).
    let sip = s.walk().facts.sip_first_line(&bytes);
    s.facts().sip = sip;
    true
}

/// Computes the correlation key hash of the packet whose facts `compute` left in `s` and
/// stores it in `s.facts.key_hash`: the Call-ID scan (for SIP without a 0x0011 chunk) in
/// `bpf_loop` callbacks, then the hash inline. Called only when the route that matched needs the key
/// (`eval::needs_key`): most routes never read it. Not inlined: its locals stay out of
/// its caller's frame.
#[inline(never)]
pub fn key(ctx: &XdpContext, s: Entry) {
    // Where the key is: a 0x0011 value, or the Call-ID the scan finds in a SIP payload.
    let span = match s.walk().facts.key_source() {
        // No key here (a compressed one is userspace's: `route` does not call this then).
        KeySpan::None | KeySpan::Compressed { .. } => None,
        KeySpan::Bytes { offset, len } => Some((offset, len)),
        KeySpan::CallIdIn { offset, len } => {
            {
                let sc = s.scan();
                sc.base = offset;
                sc.window = if len < CALLID_SCAN_LIMIT {
                    len
                } else {
                    CALLID_SCAN_LIMIT
                };
                sc.pos = 0;
                sc.scanner = CallIdScanner::new();
            }
            // SAFETY: a static callback of the right signature; it takes its state from the
            // map and the frame from `ctx`, which outlives the loop. Every step advances at
            // least one byte of the window.
            unsafe {
                bpf_loop(
                    (CALLID_SCAN_LIMIT / SCAN_STEPS + 1) as u32,
                    scan_step as *mut c_void,
                    Packet::callback_arg(ctx),
                    0,
                )
            };
            s.scan()
                .scanner
                .result()
                .map(|(start, end)| (offset + start, end - start))
        }
    };
    // No correlation key: the flow key (inner endpoints), from the walk's facts.
    match span {
        Some((off, len)) => hash_key(ctx, s, off, len),
        None => hash_flow(s),
    }
}

/// The hash of the key at `[off, off + len)` of the payload, into `s.facts.key_hash`:
/// inline, bounded loops over at most KEY_HASH_LIMIT bytes, 8 at a time (hep-common's
/// `hash_range_blocks`, shown equal to `hash_range`), not a `bpf_loop` callback per 8
/// bytes (each ~8 ns of call/return here). Not inlined: its frame is not `key`'s.
#[inline(never)]
fn hash_key(ctx: &XdpContext, s: Entry, off: usize, len: usize) {
    let mut h = KeyHasher::new();
    hash_range_blocks(&Packet::new(ctx, s.datagram()), off, len, &mut h);
    s.facts().key_hash = h.finish();
}

/// The hash of the packet's flow key (no correlation key), into `s.facts.key_hash`. Not
/// inlined: the key's 36 bytes and their halves stay out of `key`'s frame.
#[inline(never)]
fn hash_flow(s: Entry) {
    s.facts().key_hash = s.walk().facts.flow_key_hash();
}
