//! The `hep_xdp` program: parse → facts → decide → act → count, a straight line like
//! Katran's `balancer_kern.c`.

use aya_ebpf::{
    Global, bindings::xdp_action, helpers::bpf_xdp_adjust_meta, macros::xdp, programs::XdpContext,
};
use aya_log_ebpf::debug;
use hep_common::abi::{
    DEFAULT_HEP_PORT, DestCounter, KernelEdit, MAX_DESTINATIONS, MAX_KERNEL_EDITS, MAX_ROUTES,
    MIRROR_META_MAGIC, MirrorMeta, RouteCounter, SCRATCH_LEN, XdpCounter,
};
use hep_common::eval::{PassReason, Verdict};
use hep_common::version::{HepVersion, detect_prefix};

use crate::counters::{count, count_dest, count_route};
use crate::net::Frame as _;
use crate::parse::{self, HepDatagram};
use crate::route::{self, Gate};
use crate::scratch::Entry;
use crate::tables::{DESTINATIONS, LISTENERS, ROUTES};
use crate::{edit, facts, steer};

/// The HEP UDP destination port (host byte order) used before the loader installed
/// listeners. Set at load time (`override_global`); `.rodata` is frozen, so the verifier
/// sees it as a constant.
#[unsafe(no_mangle)]
static HEP_PORT: Global<u16> = Global::new(DEFAULT_HEP_PORT);

/// Counts `decision` and the action it implies, and returns the action.
#[inline(always)]
fn finish(decision: XdpCounter, action: u32) -> u32 {
    count(decision);
    let a = match action {
        xdp_action::XDP_DROP => XdpCounter::Dropped,
        xdp_action::XDP_PASS => XdpCounter::Passed,
        _ => XdpCounter::Steered,
    };
    // Steered is both a decision and an action: counted once.
    if a != decision {
        count(a);
    }
    action
}

/// Parses, decides and acts on every packet.
#[xdp]
pub fn hep_xdp(ctx: XdpContext) -> u32 {
    count(XdpCounter::Received);
    let cfg = route::config();
    // Parse: a UDP datagram to a listener's address and port (to HEP_PORT before tables
    // are loaded).
    // The datagram is parsed into the scratch map and read from there: off the stack, and
    // the verifier sees the header offsets and flags as unknown numbers rather than one
    // constant per parse path (VLAN tags × IP version × IHL), so it verifies the rest once
    // instead of once per combination.
    let Some(s) = Entry::get() else {
        count(XdpCounter::Passed);
        return xdp_action::XDP_PASS;
    };
    // The datagram field is written here and only read from here on; the steps below take
    // other fields of the entry (see `scratch::Entry`).
    let dgram: &HepDatagram = {
        let out = s.dgram();
        if let Err(outcome) = parse::parse(&ctx, out) {
            count(outcome);
            count(XdpCounter::Passed);
            return xdp_action::XDP_PASS;
        }
        out
    };
    // The listener's slot in LISTENERS, or NO_LISTENER (a plain number, not a reference:
    // fewer states for the verifier to tell apart).
    let listener = match cfg {
        Some(c) if c.listener_count[(c.bank & 1) as usize] > 0 => {
            route::listener(c, &dgram.dst, dgram.dport)
        }
        _ if dgram.dport == HEP_PORT.load() => route::NO_LISTENER,
        _ => route::NOT_TAKEN,
    };
    if listener == route::NOT_TAKEN {
        count(XdpCounter::OtherPort);
        count(XdpCounter::Passed);
        return xdp_action::XDP_PASS;
    }
    count(XdpCounter::HepCandidate);
    match classify(&ctx, dgram) {
        Ok(s) => {
            count(XdpCounter::HepV3);
            decide_and_act(&ctx, dgram, listener, s)
        }
        Err(outcome) => {
            if outcome == XdpCounter::HepInvalid {
                log_invalid(&ctx, dgram.payload_len);
            }
            count(outcome);
            count(XdpCounter::Passed);
            xdp_action::XDP_PASS
        }
    }
}

/// Logs an invalid HEP packet (a debug record; the loader's level removes it unless
/// asked for). A function of its own: the log record's stack stays out of `hep_xdp`'s frame.
#[inline(never)]
fn log_invalid(ctx: &XdpContext, len: usize) {
    debug!(ctx, "hep_xdp: invalid HEP, {} payload bytes", len);
}

/// The version of the HEP packet; for HEPv3, its facts computed in the scratch entry (an
/// oversized packet is HEPv3 by its header, decided later as too large). The payload is
/// read in place.
#[inline(always)]
fn classify(ctx: &XdpContext, d: &HepDatagram) -> Result<Option<Entry>, XdpCounter> {
    let Some(s) = Entry::get() else {
        return Err(XdpCounter::HepInvalid);
    };
    // The version magic (of an oversized packet too: only the header is checked then,
    // userspace validates the rest), from the payload only: never the frame's padding.
    // (The mask is a no-op: the payload starts at most 90 bytes in.)
    let magic = if d.payload_len >= 4 {
        ctx.load::<4>(d.payload_offset & 0xff)
    } else {
        None
    };
    let Some(magic) = magic else {
        return Err(XdpCounter::HepInvalid);
    };
    match detect_prefix(magic) {
        Some(HepVersion::V3) if d.payload_len > SCRATCH_LEN => Ok(None),
        Some(HepVersion::V3) => {
            if facts::compute(ctx, s, d) {
                Ok(Some(s))
            } else {
                Err(XdpCounter::HepInvalid)
            }
        }
        Some(HepVersion::V1 | HepVersion::V2) => Err(XdpCounter::HepLegacy),
        None => Err(XdpCounter::HepInvalid),
    }
}

/// The decision for a valid HEPv3 packet, and its action.
#[inline(always)]
fn decide_and_act(ctx: &XdpContext, d: &HepDatagram, listener: u32, s: Option<Entry>) -> u32 {
    let Some(s) = s else {
        return finish(XdpCounter::TooLarge, xdp_action::XDP_PASS);
    };
    let Some(cfg) = route::config() else {
        return finish(XdpCounter::PassNoRoute, xdp_action::XDP_PASS);
    };
    if let Some(l) = LISTENERS.get(listener) {
        match route::gate(ctx, l, s) {
            Gate::Open => {}
            Gate::Userspace => return finish(XdpCounter::PassListener, xdp_action::XDP_PASS),
            Gate::NotAllowed => return finish(XdpCounter::NotAllowed, xdp_action::XDP_DROP),
            Gate::AuthFailed => return finish(XdpCounter::AuthFailed, xdp_action::XDP_DROP),
        }
    }
    let bank = cfg.bank & 1;
    if route::evaluate(cfg, s) {
        facts::key(ctx, s);
    }
    route::conclude(s);
    let verdict = s.eval().verdict;
    let route_slot = |i: usize| {
        ROUTES
            .get(bank * MAX_ROUTES as u32 + (i % MAX_ROUTES) as u32)
            .map(|r| r.slot)
    };
    match verdict {
        Verdict::Pass { reason, route } => {
            if let Some(slot) = route.and_then(route_slot) {
                count_route(slot, RouteCounter::Passed);
            }
            let decision = match reason {
                PassReason::OpaqueRoute => XdpCounter::PassOpaque,
                PassReason::UserspaceAction => XdpCounter::PassAction,
                PassReason::NoRoute => XdpCounter::PassNoRoute,
                PassReason::KeyInUserspace => XdpCounter::PassKey,
            };
            finish(decision, xdp_action::XDP_PASS)
        }
        Verdict::Drop { route } => {
            if let Some(slot) = route_slot(route) {
                count_route(slot, RouteCounter::Matched);
                count_route(slot, RouteCounter::Dropped);
            }
            finish(XdpCounter::RouteDrop, xdp_action::XDP_DROP)
        }
        Verdict::SampledOut { route } => {
            if let Some(slot) = route_slot(route) {
                count_route(slot, RouteCounter::Matched);
                count_route(slot, RouteCounter::SampledOut);
            }
            finish(XdpCounter::SampledOut, xdp_action::XDP_DROP)
        }
        Verdict::Steer { route, dest } => {
            // The route's entry once: its counter slot and its in-place edits.
            let (Some(r), Some(dst)) = (
                ROUTES.get(bank * MAX_ROUTES as u32 + (route % MAX_ROUTES) as u32),
                DESTINATIONS.get(bank * MAX_DESTINATIONS as u32 + dest % MAX_DESTINATIONS as u32),
            ) else {
                return finish(XdpCounter::SteerFallback, xdp_action::XDP_PASS);
            };
            let slot = r.slot;
            // In-place edits: located before anything is written; a packet on which one
            // does not fit goes up untouched.
            let edited = r.n_edits != 0 || dst.auth.len != 0;
            if edited && !edit::locate(ctx, s, r, &dst.auth) {
                count_route(slot, RouteCounter::Passed);
                return finish(XdpCounter::PassRewrite, xdp_action::XDP_PASS);
            }
            match steer::steer(ctx, d, dst) {
                steer::FALLBACK => {
                    count_route(slot, RouteCounter::Passed);
                    count_dest(dst.slot, DestCounter::Fallback);
                    finish(XdpCounter::SteerFallback, xdp_action::XDP_PASS)
                }
                action => {
                    if edited && !edit::write(ctx, s, d.l4, d.payload_offset) {
                        return finish(XdpCounter::RewriteFailed, xdp_action::XDP_DROP);
                    }
                    count_route(slot, RouteCounter::Matched);
                    count_route(slot, RouteCounter::Steered);
                    count_dest(dst.slot, DestCounter::Sent);
                    finish(XdpCounter::Steered, action)
                }
            }
        }
        Verdict::Mirror { route } => {
            // The TC program (`hep_mirror`) copies it to every destination; it finds the
            // route in the metadata, with where its in-place edits go (located here, on the
            // payload; a packet on which one does not fit goes up untouched). Tagged
            // frames, and drivers without metadata support, leave it to userspace.
            let Some(r) = ROUTES.get(bank * MAX_ROUTES as u32 + (route % MAX_ROUTES) as u32) else {
                return finish(XdpCounter::PassAction, xdp_action::XDP_PASS);
            };
            if d.tagged {
                count_route(r.slot, RouteCounter::Passed);
                return finish(XdpCounter::PassAction, xdp_action::XDP_PASS);
            }
            let mut offsets = [0u16; MAX_KERNEL_EDITS];
            let mut edits = 0u8;
            if r.n_edits != 0 {
                if !edit::locate(ctx, s, r, &KernelEdit::NONE) {
                    count_route(r.slot, RouteCounter::Passed);
                    return finish(XdpCounter::PassRewrite, xdp_action::XDP_PASS);
                }
                let sites = &s.edit().sites;
                let mut i = 0;
                while i < MAX_KERNEL_EDITS {
                    if sites.active[i] != 0 {
                        offsets[i] = sites.value_offset[i] as u16;
                        edits |= 1 << i;
                    }
                    i += 1;
                }
            }
            if mark_mirror(ctx, bank, route as u32, offsets, edits) {
                count_route(r.slot, RouteCounter::Matched);
                count_route(r.slot, RouteCounter::Mirrored);
                // Both the decision and the action.
                count(XdpCounter::Mirrored);
                xdp_action::XDP_PASS
            } else {
                count_route(r.slot, RouteCounter::Passed);
                finish(XdpCounter::PassAction, xdp_action::XDP_PASS)
            }
        }
    }
}

/// Writes the mirror metadata (route, bank, edit sites) in front of the frame.
#[inline(always)]
fn mark_mirror(
    ctx: &XdpContext,
    bank: u32,
    route: u32,
    edit_offsets: [u16; MAX_KERNEL_EDITS],
    edits: u8,
) -> bool {
    let size = core::mem::size_of::<MirrorMeta>() as i32;
    // SAFETY: the helper moves data_meta; pointers are re-read after it.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -size) } != 0 {
        return false;
    }
    let meta = ctx.metadata();
    if meta + size as usize > ctx.data() {
        return false;
    }
    // SAFETY: `meta .. meta + size` is the metadata area (checked against data above).
    unsafe {
        core::ptr::write_unaligned(
            meta as *mut MirrorMeta,
            MirrorMeta {
                magic: MIRROR_META_MAGIC,
                bank,
                route,
                edit_offsets,
                edits,
                _pad: [0; 3],
            },
        )
    };
    true
}
