//! The `hep_xdp` program: parse → count → act, straight-line like Katran's
//! `balancer_kern.c`.

use aya_ebpf::{
    Global,
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use hep_common::maps::{DEFAULT_HEP_PORT, XdpCounter};

use crate::{hep, parse};

/// The HEP UDP destination port (host byte order). Set at load time by the loader
/// (`override_global`); `.rodata` is frozen, so the verifier sees it as a constant.
#[unsafe(no_mangle)]
static HEP_PORT: Global<u16> = Global::new(DEFAULT_HEP_PORT);

/// Per-CPU counters indexed by [`XdpCounter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpCounter::COUNT as u32, 0);

/// Adds one to `counter` on this CPU (per-CPU slot: no atomics needed).
#[inline(always)]
fn count(counter: XdpCounter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: the map returns a valid pointer to this CPU's u64 slot; XDP programs are
        // not preempted on their CPU while running.
        unsafe { *p += 1 };
    }
}

/// Classifies every packet, counts the outcome, and passes it to the stack.
#[xdp]
pub fn hep_xdp(ctx: XdpContext) -> u32 {
    count(XdpCounter::Received);

    // Parse.
    let outcome = match parse::parse(&ctx, HEP_PORT.load()) {
        Ok(dgram) => {
            count(XdpCounter::HepCandidate);
            let outcome = hep::classify(&ctx, &dgram);
            if outcome == XdpCounter::HepInvalid {
                debug!(
                    &ctx,
                    "hep_xdp: invalid HEP, {} payload bytes", dgram.payload_len
                );
            }
            outcome
        }
        Err(outcome) => outcome,
    };

    // Count.
    count(outcome);

    // Act. Steering and mirroring of HEPv3 will decide here; everything passes for now.
    count(XdpCounter::Passed);
    xdp_action::XDP_PASS
}
