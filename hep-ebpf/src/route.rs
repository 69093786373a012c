//! The decision for a valid HEPv3 packet: the listener's checks (allow list, auth key),
//! then the routes of the active bank in order, with `KernelRoute::matches`, `needs_key`
//! and `decide` from hep-common's `eval` — the code the host-side tests and the differential
//! test (`hep-user/src/xdp/compile/differential.rs`) run. Routes are matched by `bpf_loop`,
//! one route per callback, up to the first match.

use core::ffi::c_void;
use core::ptr;

use aya_ebpf::{helpers::bpf_loop, maps::lpm_trie::Key, programs::XdpContext};
use hep_common::abi::{
    ALLOW_KEY_BITS, AUTH_IN_USERSPACE, Addr16, AllowKey, KernelListener, KernelRoute, MAX_AUTH_KEY,
    MAX_LISTENERS, MAX_ROUTES, MAX_SLOTS, RouteKind, SteerMode, XdpConfig,
};
use hep_common::bytes::ByteSource as _;
use hep_common::eval::{PassReason, Verdict, decide, needs_key};

use crate::packet::Packet;
use crate::scratch::{Entry, NO_MATCH, NO_ROUTE};
use crate::tables::{ALLOW, LISTENERS, ROUTES, RR, XDP_CONFIG};

/// The active configuration, `None` before the loader installed one.
#[inline(always)]
pub fn config() -> Option<&'static XdpConfig> {
    XDP_CONFIG.get(0)
}

/// [`listener`]: no listener takes the datagram.
pub const NOT_TAKEN: u32 = u32::MAX;
/// [`listener`]'s caller: no tables yet, the datagram is to `HEP_PORT` (no listener
/// checks). Past the end of `LISTENERS`, so a lookup finds nothing.
pub const NO_LISTENER: u32 = u32::MAX - 1;

/// The index in `LISTENERS` of the active bank's listener that takes datagrams to `dst`
/// port `port`, or [`NOT_TAKEN`].
#[inline(always)]
pub fn listener(cfg: &XdpConfig, dst: &Addr16, port: u16) -> u32 {
    let bank = cfg.bank & 1;
    let n = cfg.listener_count[bank as usize];
    let mut i = 0u32;
    while i < MAX_LISTENERS as u32 {
        if i >= n {
            break;
        }
        let at = bank * MAX_LISTENERS as u32 + i;
        if let Some(l) = LISTENERS.get(at)
            && l.takes(dst, port)
        {
            return at;
        }
        i += 1;
    }
    NOT_TAKEN
}

/// The listener's verdict on a packet before any route.
pub enum Gate {
    /// Go on.
    Open,
    /// The kernel cannot check this listener's auth key: pass.
    Userspace,
    /// Sender not in the allow list.
    NotAllowed,
    /// Auth key missing or different.
    AuthFailed,
}

/// The listener's checks, in userspace's order: allow list, then auth key (the first chunk
/// 0x000e must equal the key). Not inlined: its locals stay out of `hep_xdp`'s frame.
#[inline(never)]
pub fn gate(ctx: &XdpContext, l: &KernelListener, s: Entry) -> Gate {
    if l.auth_key_len == AUTH_IN_USERSPACE {
        return Gate::Userspace;
    }
    if l.has_allow != 0 {
        let key = Key::new(
            ALLOW_KEY_BITS,
            AllowKey {
                listener: l.id.to_be_bytes(),
                addr: s.facts().sender,
            },
        );
        if ALLOW.get(&key).is_none() {
            return Gate::NotAllowed;
        }
    }
    let want = l.auth_key_len as usize;
    if want > 0 {
        let Some((off, len)) = s.walk().facts.auth_span() else {
            return Gate::AuthFailed;
        };
        if len != want || want > MAX_AUTH_KEY {
            return Gate::AuthFailed;
        }
        let bytes = Packet::new(ctx, s.datagram());
        let mut i = 0;
        while i < MAX_AUTH_KEY {
            if i >= want {
                break;
            }
            match bytes.load::<1>(off + i) {
                Some([b]) if b == l.auth_key[i] => {}
                _ => return Gate::AuthFailed,
            }
            i += 1;
        }
    }
    Gate::Open
}

/// One route: the first that matches (or an opaque one) ends the loop (returns 1), else
/// on to the next (0). The decision is made after the loop, by [`evaluate`].
unsafe extern "C" fn route_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = Entry::get() else { return 1 };
    let (e, facts) = (s.eval(), &*s.facts());
    if i >= e.count as u64 || i >= MAX_ROUTES as u64 {
        return 1;
    }
    let idx = i as usize;
    let Some(r) = ROUTES.get(e.base + i as u32) else {
        return 1;
    };
    if r.kind != RouteKind::Evaluable as u8 {
        e.verdict = Verdict::Pass {
            reason: PassReason::OpaqueRoute,
            route: Some(idx),
        };
        return 1;
    }
    if !r.matches(facts) {
        return 0;
    }
    e.matched = idx as u32;
    1
}

/// Matches the routes of `cfg`'s active bank over `s.facts`: the first that matches is
/// left in `s.eval` (an opaque route first leaves its pass verdict). Returns whether that
/// route needs the correlation key hash, which the caller then computes (`facts::key`)
/// before [`conclude`]: not from here, so the key's frames are not stacked on this one
/// (the verifier's 512 bytes for the deepest call chain). Not inlined: its locals stay
/// out of `hep_xdp`'s frame.
#[inline(never)]
pub fn evaluate(cfg: &XdpConfig, s: Entry) -> bool {
    let bank = cfg.bank & 1;
    {
        let e = s.eval();
        e.base = bank * MAX_ROUTES as u32;
        e.count = cfg.route_count[bank as usize];
        e.verdict = NO_ROUTE;
        e.matched = NO_MATCH;
    }
    // SAFETY: a static callback of the right signature; its state is in the map.
    unsafe {
        bpf_loop(
            MAX_ROUTES as u32,
            route_step as *mut c_void,
            ptr::null_mut(),
            0,
        )
    };
    let Some(r) = matched_route(s) else {
        return false;
    };
    // Only if this route reads it: the Call-ID scan and the key hash. (A key in a
    // compressed payload is userspace's: `decide` passes the packet up.)
    needs_key(r) && !s.facts().key_in_userspace
}

/// The route [`evaluate`] found, if one matched.
#[inline(always)]
fn matched_route(s: Entry) -> Option<&'static KernelRoute> {
    let (base, matched) = {
        let e = s.eval();
        (e.base, e.matched)
    };
    if matched >= MAX_ROUTES as u32 {
        return None;
    }
    ROUTES.get(base + matched)
}

/// The decision of the route [`evaluate`] found (with the key hash, if it needs one,
/// computed in between), left in `s.eval.verdict`. Not inlined: its locals stay out of
/// `hep_xdp`'s frame.
#[inline(never)]
pub fn conclude(s: Entry) {
    let Some(r) = matched_route(s) else {
        return;
    };
    let matched = s.eval().matched;
    let mut rr = 0u32;
    if r.mode == SteerMode::RoundRobin as u8
        && let Some(p) = RR.get_ptr_mut(r.slot % MAX_SLOTS as u32)
    {
        // SAFETY: this CPU's slot of the per-CPU round-robin array.
        unsafe {
            rr = *p;
            *p = rr.wrapping_add(1);
        }
    }
    s.eval().verdict = decide(r, matched as usize, s.facts(), rr);
}
