//! The next-hop query both programs make before rewriting a packet toward a collector:
//! `bpf_fib_lookup` with the packet as it will leave (source = the node's address toward
//! the collector, destination = the collector, UDP from the listener port), answering the
//! egress interface and both MACs. Asked before anything is written, so a packet whose next
//! hop is unknown goes up untouched.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::bpf_fib_lookup,
};
use hep_common::abi::KernelDestination;

use crate::net::{AF_INET, AF_INET6, IPPROTO_UDP};

/// A resolved next hop.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Next hop MAC.
    pub dmac: [u8; 6],
    /// Egress interface MAC.
    pub smac: [u8; 6],
}

/// What the query needs of the packet as it arrived.
pub struct Query {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Ingress interface.
    pub ifindex: u32,
    /// IP total length (IPv6: payload length + 40).
    pub tot_len: u16,
    /// IPv4 type of service (0 for IPv6).
    pub tos: u8,
    /// The listener port (host order): the copy's source port.
    pub sport: u16,
}

/// Fills `p` (every field the lookup reads: no zeroed temporary, the stack is short) and
/// asks the kernel for the next hop toward `dest`; `None` when it has no complete answer
/// (no neighbour entry yet, forwarding off, no route, MTU).
#[inline(always)]
pub fn lookup(
    ctx: *mut c_void,
    p: &mut FibParams,
    q: &Query,
    dest: &KernelDestination,
) -> Option<NextHop> {
    p.l4_protocol = IPPROTO_UDP;
    p.sport = q.sport.to_be();
    p.dport = dest.port.to_be();
    p.ifindex = q.ifindex;
    p.__bindgen_anon_1.tot_len = q.tot_len;
    p.__bindgen_anon_2.flowinfo = 0;
    p.__bindgen_anon_5.tbid = 0;
    if q.v6 {
        p.family = AF_INET6;
        // SAFETY: plain byte arrays of the same size (the union's IPv6 members).
        unsafe {
            p.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(dest.src_addr);
            p.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(dest.addr);
        }
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = q.tos;
        let (sa, da) = (&dest.src_addr, &dest.addr);
        p.__bindgen_anon_3.ipv6_src = [0; 4];
        p.__bindgen_anon_4.ipv6_dst = [0; 4];
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([sa[12], sa[13], sa[14], sa[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([da[12], da[13], da[14], da[15]]);
    }
    // SAFETY: `p` is an initialised lookup structure (in map memory), of the size given;
    // `ctx` is the program's context.
    let rc = unsafe { bpf_fib_lookup(ctx, p, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(NextHop {
        ifindex: p.ifindex,
        dmac: p.dmac,
        smac: p.smac,
    })
}
