//! The next-hop cache: what `bpf_fib_lookup` answered for a destination, kept per CPU so
//! that the next packet to it is sent without asking again.
//!
//! # Contract
//! - [`NEXT_HOP_MAP`](super::NEXT_HOP_MAP) is a per-CPU array of [`NextHopEntry`], indexed
//!   by destination slot (`KernelDestination::slot`, `< MAX_SLOTS`); only the kernel
//!   writes it.
//! - [`NEXT_HOP_GENERATION_MAP`](super::NEXT_HOP_GENERATION_MAP) is a one-entry array of
//!   `u64`, written only by the daemon: it moves on whenever a route, a neighbour or a link
//!   changed (its netlink listener), when a configuration is installed, and when the
//!   listener's socket overflowed. An entry is used only while its
//!   [`NextHopEntry::generation`] equals the current one, so one write invalidates every
//!   entry on every CPU.
//! - Generation [`NEXT_HOP_OFF`] (the map's initial value) means "nothing invalidates the
//!   cache": the kernel then looks every next hop up, as without a cache. The daemon writes
//!   a non-zero generation only while its listener runs.
//! - The kernel stores an entry with the generation it read *before* its lookup, so a
//!   change that races with the lookup leaves the entry stale, never wrongly fresh.
//! - An entry answers only the query it was made for (collector and source addresses,
//!   ports, ingress interface, TOS) and only packets no longer than
//!   [`NextHopEntry::max_tot_len_ok`] (`bpf_fib_lookup` checks the MTU but does not report
//!   it on success); anything else is looked up.

use bytemuck::{Pod, Zeroable};

use super::Addr16;

/// [`super::NEXT_HOP_GENERATION_MAP`]'s value while no invalidation source runs: no caching.
pub const NEXT_HOP_OFF: u64 = 0;

/// The generation after `g`: never [`NEXT_HOP_OFF`].
pub const fn next_generation(g: u64) -> u64 {
    match g.wrapping_add(1) {
        NEXT_HOP_OFF => 1,
        n => n,
    }
}

/// One cached next hop (per CPU, per destination slot). Ports in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHopEntry {
    /// The generation read before the lookup that filled it.
    pub generation: u64,
    /// The collector's address the lookup was for.
    pub addr: Addr16,
    /// The source address the lookup was for.
    pub src_addr: Addr16,
    /// Egress interface.
    pub ifindex: u32,
    /// Ingress interface of the packet the lookup was made for.
    pub in_ifindex: u32,
    /// The largest IP total length a lookup accepted with this answer (MTU not exceeded).
    pub max_tot_len_ok: u16,
    /// Source port of the lookup (the listener's).
    pub sport: u16,
    /// Destination port of the lookup (the collector's).
    pub dport: u16,
    /// IPv4 TOS of the lookup (0 for IPv6).
    pub tos: u8,
    /// 1 once filled.
    pub valid: u8,
    /// Next hop MAC.
    pub dmac: [u8; 6],
    /// Egress interface MAC.
    pub smac: [u8; 6],
    /// Padding.
    pub _pad: [u8; 4],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_generation_skips_off() {
        assert_eq!(next_generation(NEXT_HOP_OFF), 1);
        assert_eq!(next_generation(41), 42);
        assert_eq!(next_generation(u64::MAX), 1);
    }
}
