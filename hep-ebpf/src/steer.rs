//! Steering: send the HEP packet to one collector from XDP. The outer IP and UDP headers
//! are rewritten (source = the node's address toward the collector, source port = the
//! listener port, destination = the collector), the TTL / hop limit decremented, the
//! checksums updated incrementally (RFC 1624; the IPv4 UDP checksum is set to 0), the MACs
//! taken from `bpf_fib_lookup`, then `XDP_TX` (same interface) or a redirect.
//!
//! The lookup happens before anything is written: when it cannot answer (no neighbour entry
//! yet, forwarding disabled on the ingress interface, no route, MTU) the packet is passed up
//! untouched and the daemon sends it, which also resolves the neighbour for the next ones.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_csum_diff, bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use hep_common::kernel_plan::KernelDestination;

use crate::parse::HepDatagram;
use crate::scratch::scratch;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_UDP: u8 = 17;

/// [`steer`]'s answer when the kernel cannot send the packet (nothing was written).
pub const FALLBACK: u32 = u32::MAX;

/// `N` bytes at frame offset `off`, bounds-checked against `data_end`.
#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let p = ctx.data() + off;
    if p + N > ctx.data_end() {
        return None;
    }
    // SAFETY: inside the frame (checked above); unaligned read of plain bytes.
    Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
}

/// Writes `v` at frame offset `off`, bounds-checked against `data_end`.
#[inline(always)]
fn store<const N: usize>(ctx: &XdpContext, off: usize, v: [u8; N]) {
    let p = ctx.data() + off;
    if p + N > ctx.data_end() {
        return;
    }
    // SAFETY: inside the frame (checked above); unaligned write of plain bytes.
    unsafe { core::ptr::write_unaligned(p as *mut [u8; N], v) };
}

/// A one's complement sum being updated word by word (RFC 1624: `HC' = ~(~HC + ~m + m')`).
/// Words are taken in memory order (native endianness), which one's complement arithmetic
/// allows (RFC 1071 §2(B)) and which matches what `bpf_csum_diff` returns.
struct Csum(u32);

impl Csum {
    #[inline(always)]
    fn of(stored: [u8; 2]) -> Self {
        Csum(u32::from(!u16::from_ne_bytes(stored)))
    }

    /// The 16-bit word `old` becomes `new`.
    #[inline(always)]
    fn replace(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.0 += u32::from(!u16::from_ne_bytes(old)) + u32::from(u16::from_ne_bytes(new));
        self.0 = (self.0 & 0xffff) + (self.0 >> 16);
    }

    /// Adds a partial sum (as `bpf_csum_diff` returns).
    #[inline(always)]
    fn add_partial(&mut self, partial: u32) {
        self.0 += (partial & 0xffff) + (partial >> 16);
        self.0 = (self.0 & 0xffff) + (self.0 >> 16);
    }

    #[inline(always)]
    fn done(self) -> [u8; 2] {
        let s = (self.0 & 0xffff) + (self.0 >> 16);
        (!(s as u16)).to_ne_bytes()
    }
}

/// Sends the datagram to `dest`; returns the XDP action, or [`FALLBACK`] (nothing written)
/// when the kernel cannot send it and userspace must.
///
/// Not inlined: its own stack frame keeps the program's deepest call chain (the entry
/// function plus one callee) within the verifier's 512 bytes.
#[inline(never)]
pub fn steer(ctx: &XdpContext, d: &HepDatagram, dest: &KernelDestination) -> u32 {
    // The offsets come through map memory (unknown to the verifier): the masks (no-ops:
    // the IP header starts at most 22 bytes in, UDP at most 82) bound them for it.
    let h = Headers {
        l3: d.l3 & 0x1f,
        l4: d.l4 & 0x7f,
        listener_port: d.dport,
    };
    // Tagged frames and a change of IP family need headers resized: userspace.
    if d.tagged || (dest.family == 6) != d.v6 {
        return FALLBACK;
    }
    let Some(s) = scratch() else {
        return FALLBACK;
    };
    // SAFETY: this CPU's scratch entry; only this field is borrowed (the caller holds the
    // datagram field).
    let p: &mut FibParams = unsafe { &mut (*s).fib };
    // Every field is set (no zeroed temporary: the stack is short).
    p.l4_protocol = IPPROTO_UDP;
    p.sport = d.dport.to_be();
    p.dport = dest.port.to_be();
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_2.flowinfo = 0;
    p.__bindgen_anon_5.tbid = 0;
    if d.v6 {
        let Some(ip) = load::<8>(ctx, h.l3) else {
            return FALLBACK;
        };
        if ip[7] <= 1 {
            return FALLBACK;
        }
        p.family = AF_INET6;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(40);
        // SAFETY: plain byte arrays of the same size (the union's IPv6 members).
        unsafe {
            p.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(dest.src_addr);
            p.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(dest.addr);
        }
    } else {
        let Some(ip) = load::<12>(ctx, h.l3) else {
            return FALLBACK;
        };
        if ip[8] <= 1 {
            return FALLBACK;
        }
        p.family = AF_INET;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes([ip[2], ip[3]]);
        p.__bindgen_anon_2.tos = ip[1];
        let (sa, da) = (&dest.src_addr, &dest.addr);
        p.__bindgen_anon_3.ipv6_src = [0; 4];
        p.__bindgen_anon_4.ipv6_dst = [0; 4];
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([sa[12], sa[13], sa[14], sa[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([da[12], da[13], da[14], da[15]]);
    }
    // SAFETY: `p` is an initialised lookup structure in map memory, of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return FALLBACK;
    }
    let (egress, dmac, smac) = (p.ifindex, p.dmac, p.smac);
    let done = if d.v6 {
        rewrite_v6(ctx, &h, dest)
    } else {
        rewrite_v4(ctx, &h, dest)
    };
    if !done {
        return FALLBACK;
    }
    store(ctx, 0, dmac);
    store(ctx, 6, smac);
    if egress == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call; it returns XDP_REDIRECT (XDP_ABORTED on a bad flag).
        unsafe { bpf_redirect(egress, 0) as u32 }
    }
}

/// Where the headers are (bounded offsets) and the listener port.
struct Headers {
    l3: usize,
    l4: usize,
    listener_port: u16,
}

/// The new UDP ports: from the listener port to the collector's.
#[inline(always)]
fn ports(d: &Headers, dest: &KernelDestination) -> [u8; 4] {
    let [a, b] = d.listener_port.to_be_bytes();
    let [c, e] = dest.port.to_be_bytes();
    [a, b, c, e]
}

/// IPv4: TTL, addresses and header checksum; UDP ports, checksum 0. `false`, with nothing
/// written, when the headers are not all in the frame.
#[inline(always)]
fn rewrite_v4(ctx: &XdpContext, d: &Headers, dest: &KernelDestination) -> bool {
    // ttl, proto, checksum, saddr, daddr.
    let Some(o) = load::<12>(ctx, d.l3 + 8) else {
        return false;
    };
    let Some(udp) = load::<6>(ctx, d.l4) else {
        return false;
    };
    let (sa, da) = (&dest.src_addr, &dest.addr);
    let mut c = Csum::of([o[2], o[3]]);
    c.replace([o[0], o[1]], [o[0] - 1, o[1]]);
    c.replace([o[4], o[5]], [sa[12], sa[13]]);
    c.replace([o[6], o[7]], [sa[14], sa[15]]);
    c.replace([o[8], o[9]], [da[12], da[13]]);
    c.replace([o[10], o[11]], [da[14], da[15]]);
    store(ctx, d.l3 + 8, [o[0] - 1]);
    store(ctx, d.l3 + 10, c.done());
    store(ctx, d.l3 + 12, [sa[12], sa[13], sa[14], sa[15]]);
    store(ctx, d.l3 + 16, [da[12], da[13], da[14], da[15]]);
    let p = ports(d, dest);
    store(ctx, d.l4, [p[0], p[1], p[2], p[3], udp[4], udp[5], 0, 0]);
    true
}

/// IPv6: hop limit and addresses; UDP ports and checksum (its pseudo-header holds the
/// addresses). `false`, with nothing written, when the headers are not all in the frame.
#[inline(always)]
fn rewrite_v6(ctx: &XdpContext, d: &Headers, dest: &KernelDestination) -> bool {
    // The whole header in one read (one bounds check the verifier can follow).
    let Some(mut ip) = load::<40>(ctx, d.l3) else {
        return false;
    };
    let hop = ip[7];
    let Some(udp) = load::<8>(ctx, d.l4) else {
        return false;
    };
    // The 32 address bytes, old to new (`addr` then `src_addr`, adjacent in the
    // destination: one's complement sums do not care about the order of 16-bit words).
    // SAFETY: both ranges are 32 readable bytes (bytes 8..40 of our copy of the header;
    // the two adjacent address fields of the destination); the helper only reads them.
    let partial = unsafe {
        bpf_csum_diff(
            ip.as_mut_ptr().add(8).cast(),
            32,
            dest.addr.as_ptr() as *mut u32,
            32,
            0,
        )
    };
    if partial < 0 {
        return false;
    }
    let mut c = Csum::of([udp[6], udp[7]]);
    c.add_partial(partial as u32);
    let p = ports(d, dest);
    c.replace([udp[0], udp[1]], [p[0], p[1]]);
    c.replace([udp[2], udp[3]], [p[2], p[3]]);
    let mut sum = c.done();
    if sum == [0, 0] {
        sum = [0xff, 0xff];
    }
    store(ctx, d.l3 + 7, [hop - 1]);
    store(ctx, d.l3 + 8, dest.src_addr);
    store(ctx, d.l3 + 24, dest.addr);
    store(
        ctx,
        d.l4,
        [p[0], p[1], p[2], p[3], udp[4], udp[5], sum[0], sum[1]],
    );
    true
}
