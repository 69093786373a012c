//! The `repr(C)` types of the kernel tables, as the maps store them. Plain data: what the
//! kernel does with them is in [`crate::eval`].

use bytemuck::{Pod, Zeroable};

use super::{
    MAX_AUTH_KEY, MAX_EDIT_VALUE, MAX_KERNEL_EDITS, MAX_MATCH_VALUES, MAX_NODE_NAME, MAX_TARGETS,
    SAMPLE_ALL,
};
use crate::chunk::ChunkId;

/// The one-entry configuration array.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct XdpConfig {
    /// The active bank, 0 or 1.
    pub bank: u32,
    /// Routes in each bank.
    pub route_count: [u32; 2],
    /// Listeners in each bank.
    pub listener_count: [u32; 2],
}

/// An address as 16 bytes: IPv6, or IPv4 mapped (`::ffff:a.b.c.d`).
pub type Addr16 = [u8; 16];

/// IPv4 mapped into [`Addr16`].
pub const fn map_v4(a: [u8; 4]) -> Addr16 {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// An address in the kernel's 16-byte form (an IPv4-mapped IPv6 address is IPv4 there).
pub fn addr16(ip: core::net::IpAddr) -> Addr16 {
    match ip.to_canonical() {
        core::net::IpAddr::V4(a) => map_v4(a.octets()),
        core::net::IpAddr::V6(a) => a.octets(),
    }
}

/// The address an [`Addr16`] holds, canonical: IPv4 when it is IPv4 mapped.
pub fn ip_of(a: Addr16) -> core::net::IpAddr {
    core::net::Ipv6Addr::from(a).to_canonical()
}

/// A prefix over [`Addr16`]: IPv4 prefixes of length `n` are stored as `96 + n`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelPrefix {
    /// Network address (host bits zero).
    pub addr: Addr16,
    /// Prefix length in bits, 0..=128.
    pub len: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// Whether the kernel can evaluate a route's match.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The match is evaluated in the kernel.
    Evaluable = 0,
    /// Only userspace can tell whether it matches: reaching it passes the packet.
    Opaque = 1,
}

/// What the kernel does with a packet a route took.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAction {
    /// Userspace runs the action (rewrite, TCP or v2 destination, dedup, failover, ...).
    Pass = 0,
    /// Drop (counted).
    Drop = 1,
    /// Send to one destination chosen by [`SteerMode`], headers rewritten in XDP.
    Steer = 2,
    /// A copy to every target, by the TC program.
    Mirror = 3,
}

/// How a steering route picks its destination.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerMode {
    /// The only target.
    Single = 0,
    /// Rendezvous hashing of the correlation key hash over the targets' seeds.
    Hash = 1,
    /// Per-CPU round robin.
    RoundRobin = 2,
}

/// Match flags of [`KernelRoute::flags`].
pub mod match_flags {
    /// `proto` given.
    pub const PROTO: u32 = 1 << 0;
    /// `capture_id` given.
    pub const CAPTURE_ID: u32 = 1 << 1;
    /// `source` given.
    pub const SOURCE: u32 = 1 << 2;
    /// `inner_src` given.
    pub const INNER_SRC: u32 = 1 << 3;
    /// `inner_dst` given.
    pub const INNER_DST: u32 = 1 << 4;
    /// `inner_port` given.
    pub const INNER_PORT: u32 = 1 << 5;
    /// `node_name` given.
    pub const NODE_NAME: u32 = 1 << 6;
    /// `sip_method` given.
    pub const SIP_METHOD: u32 = 1 << 7;
    /// `sip_status` given.
    pub const SIP_STATUS: u32 = 1 << 8;
}

/// One route as the kernel evaluates it. All values in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelRoute {
    /// [`RouteKind`] as u8.
    pub kind: u8,
    /// [`RouteAction`] as u8.
    pub action: u8,
    /// [`SteerMode`] as u8.
    pub mode: u8,
    /// Number of `targets`.
    pub n_targets: u8,
    /// [`match_flags`] of the keys given.
    pub flags: u32,
    /// Counter slot of the route.
    pub slot: u32,
    /// Calls kept, in millionths ([`super::SAMPLE_ALL`]: no sampling).
    pub sample_ppm: u32,
    /// Protocol types matched: bit `t` of `proto[t / 64]`.
    pub proto: [u64; 4],
    /// Capture id ranges (inclusive); `n_capture` used.
    pub capture: [[u32; 2]; MAX_MATCH_VALUES],
    /// Inner port ranges (inclusive; source or destination port); `n_ports` used.
    pub ports: [[u16; 2]; MAX_MATCH_VALUES],
    /// SIP status ranges (inclusive); `n_status` used.
    pub status: [[u16; 2]; MAX_MATCH_VALUES],
    /// Counts of the value lists: capture, ports, source, inner_src, inner_dst.
    pub n_capture: u8,
    /// See `n_capture`.
    pub n_ports: u8,
    /// See `n_capture`.
    pub n_source: u8,
    /// See `n_capture`.
    pub n_inner_src: u8,
    /// See `n_capture`.
    pub n_inner_dst: u8,
    /// Number of `node_names`.
    pub n_node_names: u8,
    /// Number of `status` ranges.
    pub n_status: u8,
    /// Padding.
    pub _pad: u8,
    /// SIP methods matched: bit `i` for [`crate::sip::METHODS`]`[i]`.
    pub sip_methods: u32,
    /// Sender prefixes.
    pub source: [KernelPrefix; MAX_MATCH_VALUES],
    /// Inner source prefixes.
    pub inner_src: [KernelPrefix; MAX_MATCH_VALUES],
    /// Inner destination prefixes.
    pub inner_dst: [KernelPrefix; MAX_MATCH_VALUES],
    /// Node names matched (exact bytes), `node_name_lens[i]` bytes of each.
    pub node_names: [[u8; MAX_NODE_NAME]; MAX_MATCH_VALUES],
    /// Lengths of `node_names`.
    pub node_name_lens: [u8; MAX_MATCH_VALUES],
    /// Destination indices (within the bank).
    pub targets: [u32; MAX_TARGETS],
    /// Rendezvous seeds of the targets.
    pub seeds: [u64; MAX_TARGETS],
    /// The route's `set` rewrites, written in place (`n_edits` used; see
    /// [`crate::inplace`]). A packet on which one cannot be written in place goes to
    /// userspace.
    pub edits: [KernelEdit; MAX_KERNEL_EDITS],
    /// Number of `edits`.
    pub n_edits: u8,
    /// Padding.
    pub _pad_end: [u8; 7],
}

/// One `set` rewrite the kernel writes in place: the chunk and its new value.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelEdit {
    /// Vendor id of the chunk.
    pub vendor: u16,
    /// Type id of the chunk.
    pub kind: u16,
    /// Length of the value (0: no edit).
    pub len: u8,
    /// Padding.
    pub _pad: [u8; 3],
    /// The new value, `len` bytes used.
    pub value: [u8; MAX_EDIT_VALUE],
}

impl KernelEdit {
    /// No edit.
    pub const NONE: KernelEdit = KernelEdit {
        vendor: 0,
        kind: 0,
        len: 0,
        _pad: [0; 3],
        value: [0; MAX_EDIT_VALUE],
    };

    /// Sets chunk `id` to `value`; `None` when the value is empty or longer than
    /// [`MAX_EDIT_VALUE`].
    pub fn set(id: ChunkId, value: &[u8]) -> Option<KernelEdit> {
        if value.is_empty() || value.len() > MAX_EDIT_VALUE {
            return None;
        }
        let mut e = KernelEdit {
            vendor: id.vendor,
            kind: id.kind,
            len: value.len() as u8,
            ..KernelEdit::NONE
        };
        e.value[..value.len()].copy_from_slice(value);
        Some(e)
    }

    /// The chunk it sets.
    pub const fn id(&self) -> ChunkId {
        ChunkId {
            vendor: self.vendor,
            kind: self.kind,
        }
    }
}

impl KernelRoute {
    /// A route that matches nothing and passes (to be filled in).
    pub const EMPTY: KernelRoute = KernelRoute {
        kind: RouteKind::Opaque as u8,
        action: RouteAction::Pass as u8,
        mode: SteerMode::Single as u8,
        n_targets: 0,
        flags: 0,
        slot: 0,
        sample_ppm: SAMPLE_ALL,
        proto: [0; 4],
        capture: [[0; 2]; MAX_MATCH_VALUES],
        ports: [[0; 2]; MAX_MATCH_VALUES],
        status: [[0; 2]; MAX_MATCH_VALUES],
        n_capture: 0,
        n_ports: 0,
        n_source: 0,
        n_inner_src: 0,
        n_inner_dst: 0,
        n_node_names: 0,
        n_status: 0,
        _pad: 0,
        sip_methods: 0,
        source: [KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        }; MAX_MATCH_VALUES],
        inner_src: [KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        }; MAX_MATCH_VALUES],
        inner_dst: [KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        }; MAX_MATCH_VALUES],
        node_names: [[0; MAX_NODE_NAME]; MAX_MATCH_VALUES],
        node_name_lens: [0; MAX_MATCH_VALUES],
        targets: [0; MAX_TARGETS],
        seeds: [0; MAX_TARGETS],
        edits: [KernelEdit::NONE; MAX_KERNEL_EDITS],
        n_edits: 0,
        _pad_end: [0; 7],
    };
}

/// What `hep_xdp` writes in front of a packet to be mirrored (XDP metadata), for the TC
/// program: the bank and the route whose targets get a copy, and where the route's in-place
/// edits go (XDP located them; TC writes them once it knows every copy can be sent).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct MirrorMeta {
    /// [`super::MIRROR_META_MAGIC`].
    pub magic: u32,
    /// The bank the route was read from.
    pub bank: u32,
    /// Route index within the bank.
    pub route: u32,
    /// Offset in the HEP packet of the value edit `i` of the route replaces (when bit `i`
    /// of `edits` is set).
    pub edit_offsets: [u16; super::MAX_KERNEL_EDITS],
    /// Bit `i`: the route's edit `i` is written.
    pub edits: u8,
    /// Padding (the metadata length is a multiple of 4).
    pub _pad: [u8; 3],
}

/// A destination the kernel can steer to: UDP, HEPv3, at most an auth key set in place.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelDestination {
    /// Collector address.
    pub addr: Addr16,
    /// Source address to write (the node's address on the egress interface). Right after
    /// `addr`: the kernel checksums the 32 bytes of both in one helper call.
    pub src_addr: Addr16,
    /// Collector UDP port.
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// Padding.
    pub _pad: u8,
    /// Counter slot of the destination.
    pub slot: u32,
    /// `set_auth_key`: chunk 0x000e written in place in every packet sent here (`len` 0:
    /// none). Applied after the route's edits.
    pub auth: KernelEdit,
    /// The checksum part of the header template a copy to this destination is written
    /// from: [`KernelDestination::address_sum`] of `src_addr` and `addr`, prepared by the
    /// daemon so that the mirror's copies fix their checksums with one addition.
    pub address_sum: u32,
}

impl KernelDestination {
    /// The one's complement sum (RFC 1071), folded to 16 bits, of the new addresses a
    /// packet to this destination carries, `src_addr` then `addr` (IPv4: their last four
    /// bytes; IPv6: all sixteen), taken as 16-bit words in memory order (native
    /// endianness, as the kernel's incremental checksum code and `bpf_csum_diff` take
    /// them: RFC 1071 §2(B)). Both the IPv4 header checksum and the UDP pseudo-header
    /// cover exactly these bytes.
    pub fn address_sum(family: u8, src_addr: &Addr16, addr: &Addr16) -> u32 {
        let from = if family == 6 { 0 } else { 12 };
        let mut sum = 0u32;
        for a in [src_addr, addr] {
            let mut i = from;
            while i + 1 < a.len() {
                sum += u32::from(u16::from_ne_bytes([a[i], a[i + 1]]));
                i += 2;
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum
    }
}

/// A listener as the kernel sees it: the UDP address it listens on, its auth key, whether
/// it has an allow list.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelListener {
    /// UDP port (host order).
    pub port: u16,
    /// Length of `auth_key` (0: no check).
    pub auth_key_len: u8,
    /// 1: senders are checked against [`super::ALLOW_MAP`] under this listener's id.
    pub has_allow: u8,
    /// Listener id in [`AllowKey`] (bank × [`super::MAX_LISTENERS`] + index).
    pub id: u32,
    /// Required chunk 0x000e.
    pub auth_key: [u8; MAX_AUTH_KEY],
    /// The address it is bound to (when `wildcard` is 0).
    pub addr: Addr16,
    /// 0: only `addr`; 4: any IPv4 address (`0.0.0.0`); 6: any address (`[::]`, which on
    /// Linux also receives IPv4).
    pub wildcard: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// Key of [`super::ALLOW_MAP`] (an LPM trie): the listener id (always fully matched) and the
/// sender address; the trie's prefix length counts 32 bits of `listener` plus the address
/// prefix over [`Addr16`].
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct AllowKey {
    /// Listener id, big endian (it is part of the matched prefix).
    pub listener: [u8; 4],
    /// Address.
    pub addr: Addr16,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 over big-endian words, folded: the textbook definition.
    fn be_sum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn the_address_sum_is_the_rfc_1071_sum_of_the_new_addresses() {
        // 198.18.2.1 → 198.18.2.2: c612 + 0201 + c612 + 0202 = 0x19027, folded 0x9028.
        let (src, dst) = (map_v4([198, 18, 2, 1]), map_v4([198, 18, 2, 2]));
        let sum = KernelDestination::address_sum(4, &src, &dst);
        assert_eq!((sum as u16).to_ne_bytes(), 0x9028u16.to_be_bytes());
        let v6 = |last: u8| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0xfd, 0x00, 0x00, 0x18]);
            a[4..6].copy_from_slice(&[0x00, 0x02]);
            a[15] = last;
            a
        };
        let (src6, dst6) = (v6(1), v6(2));
        let mut both = src6.to_vec();
        both.extend_from_slice(&dst6);
        let sum6 = KernelDestination::address_sum(6, &src6, &dst6);
        assert_eq!((sum6 as u16).to_ne_bytes(), be_sum(&both).to_be_bytes());
        // fd00*2 + 0018*2 + 0002*2 + 0001 + 0002 = 0x1fa37, folded 0xfa38.
        assert_eq!(be_sum(&both), 0xfa38);
    }
}
