//! `hep_steer_min`: the benchmark's yardstick, a minimal steer with no HEP parsing
//! (`cargo xtask bench --all`). Never loaded by the daemon (its loader loads `hep_xdp` and
//! `hep_mirror` by name only).
//!
//! For an IPv4 UDP datagram (no IP options, not a fragment) to the listener port of
//! [`MIN_DEST`]: rewrite the source to the node's address toward the collector and the
//! listener port, the destination to the collector, decrement the TTL, update the IPv4
//! checksum incrementally, set the UDP checksum to 0, take the MACs from `bpf_fib_lookup`,
//! then `XDP_TX` or `bpf_redirect`. Everything else, and a packet whose next hop the kernel
//! cannot answer, is `XDP_PASS`ed untouched.
//!
//! The map names are `hep_common::abi::BENCH_MAP_NAMES` (a `#[map]` static's name is its
//! identifier, so it cannot name the constant; `hep-user/tests/xdp_tables.rs` checks them).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

use crate::net::{
    AF_INET, Csum, ETH_DEST, ETH_HLEN, ETH_P_IP, ETH_SOURCE, Frame as _, IP_MF_OFFSET_MASK,
    IPPROTO_UDP, IPV4_HLEN, ipv4,
};

/// The one collector (entry 0), 12 bytes: collector IPv4 address (4), the node's source
/// address toward it (4), collector UDP port (2, big-endian), listener UDP port (2,
/// big-endian). All zero (the default): nothing matches, everything passes.
#[map]
static MIN_DEST: Array<[u8; 12]> = Array::with_max_entries(1, 0);

/// Per-CPU outcome counters: 0 steered (redirect or TX), 1 passed (not for the listener),
/// 2 fallback (for the listener, but TTL or next hop: passed untouched).
#[map]
static MIN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

const STEERED: u32 = 0;
const PASSED: u32 = 1;
const FALLBACK: u32 = 2;

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = MIN_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the map's pointer to this CPU's slot; the program is not preempted on it.
        unsafe { *p += 1 };
    }
}

/// The minimal steer.
#[xdp]
pub fn hep_steer_min(ctx: XdpContext) -> u32 {
    match steer(&ctx) {
        Ok(action) => {
            count(STEERED);
            action
        }
        Err(outcome) => {
            count(outcome);
            xdp_action::XDP_PASS
        }
    }
}

/// The action for a steered packet, or the counter of why it passes (nothing written).
#[inline(always)]
fn steer(ctx: &XdpContext) -> Result<u32, u32> {
    let Some(d) = MIN_DEST.get(0) else {
        return Err(PASSED);
    };
    let eth = ctx.load::<ETH_HLEN>(0).ok_or(PASSED)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP {
        return Err(PASSED);
    }
    let ip = ctx.load::<IPV4_HLEN>(ETH_HLEN).ok_or(PASSED)?;
    if ip[0] != 0x45
        || ip[ipv4::PROTOCOL] != IPPROTO_UDP
        || u16::from_be_bytes([ip[ipv4::FRAG_OFF], ip[ipv4::FRAG_OFF + 1]]) & IP_MF_OFFSET_MASK != 0
    {
        return Err(PASSED);
    }
    let l4 = ETH_HLEN + IPV4_HLEN;
    let udp = ctx.load::<8>(l4).ok_or(PASSED)?;
    if [udp[2], udp[3]] != [d[10], d[11]] {
        return Err(PASSED);
    }
    if ip[ipv4::TTL] <= 1 {
        return Err(FALLBACK);
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: a plain C structure of integers and arrays: all zeroes is a valid value.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = IPPROTO_UDP;
    p.sport = u16::from_ne_bytes([d[10], d[11]]);
    p.dport = u16::from_ne_bytes([d[8], d[9]]);
    p.ifindex = ifindex;
    p.__bindgen_anon_1.tot_len = u16::from_be_bytes([ip[ipv4::TOT_LEN], ip[ipv4::TOT_LEN + 1]]);
    p.__bindgen_anon_2.tos = ip[ipv4::TOS];
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([d[4], d[5], d[6], d[7]]);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
    // SAFETY: `p` is an initialised lookup structure on the stack, of the size given; `ctx`
    // is the program's context.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(FALLBACK);
    }
    // IPv4: TTL, addresses, checksum (incremental, RFC 1624).
    let ttl = ip[ipv4::TTL].wrapping_sub(1);
    let mut c = Csum::of([ip[ipv4::CHECK], ip[ipv4::CHECK + 1]]);
    c.replace(
        [ip[ipv4::TTL], ip[ipv4::PROTOCOL]],
        [ttl, ip[ipv4::PROTOCOL]],
    );
    c.replace([ip[12], ip[13]], [d[4], d[5]]);
    c.replace([ip[14], ip[15]], [d[6], d[7]]);
    c.replace([ip[16], ip[17]], [d[0], d[1]]);
    c.replace([ip[18], ip[19]], [d[2], d[3]]);
    ctx.store(ETH_HLEN + ipv4::TTL, &[ttl]);
    ctx.store(ETH_HLEN + ipv4::CHECK, &c.done());
    ctx.store(
        ETH_HLEN + ipv4::SADDR,
        &[d[4], d[5], d[6], d[7], d[0], d[1], d[2], d[3]],
    );
    // UDP: from the listener port to the collector's, checksum 0 (none, IPv4).
    ctx.store(l4, &[d[10], d[11], d[8], d[9], udp[4], udp[5], 0, 0]);
    ctx.store(ETH_DEST, &p.dmac);
    ctx.store(ETH_SOURCE, &p.smac);
    if p.ifindex == ifindex {
        Ok(xdp_action::XDP_TX)
    } else {
        // SAFETY: plain helper call; it returns XDP_REDIRECT (XDP_ABORTED on a bad flag).
        Ok(unsafe { bpf_redirect(p.ifindex, 0) } as u32)
    }
}
