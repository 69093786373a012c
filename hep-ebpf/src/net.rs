//! The network layer both programs share, in one place as Katran keeps
//! `balancer_consts.h`/`pckt_parsing.h`: protocol constants, bounds-checked frame access over
//! either context ([`Frame`]: XDP and skb), and the incremental checksum ([`Csum`]).

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_store_bytes, programs::XdpContext};

/// Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Offset of the destination MAC in the Ethernet header.
pub const ETH_DEST: usize = 0;
/// Offset of the source MAC in the Ethernet header.
pub const ETH_SOURCE: usize = 6;
/// One VLAN tag.
pub const VLAN_HLEN: usize = 4;
/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType 802.1ad (QinQ) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;
/// UDP header.
pub const UDP_HLEN: usize = 8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 flags/fragment offset: the MF bit and the 13-bit offset.
pub const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// IPv6 next-header values that are extension headers (hop-by-hop, routing, fragment, ESP,
/// AH, destination options, mobility, HIP, shim6, and the two experimental values).
pub const IPV6_EXT_HEADERS: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];
/// Address family of `bpf_fib_lookup`: IPv4.
pub const AF_INET: u8 = 2;
/// Address family of `bpf_fib_lookup`: IPv6.
pub const AF_INET6: u8 = 10;

/// IPv4 header offsets.
pub mod ipv4 {
    /// Type of service.
    pub const TOS: usize = 1;
    /// Total length.
    pub const TOT_LEN: usize = 2;
    /// Flags and fragment offset.
    pub const FRAG_OFF: usize = 6;
    /// Time to live (followed by the protocol: one checksummed word).
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECK: usize = 10;
    /// Source address.
    pub const SADDR: usize = 12;
    /// Destination address.
    pub const DADDR: usize = 16;
}

/// IPv6 header offsets.
pub mod ipv6 {
    /// Payload length.
    pub const PAYLOAD_LEN: usize = 4;
    /// Next header.
    pub const NEXTHDR: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address (the destination follows at +16).
    pub const SADDR: usize = 8;
    /// Destination address.
    pub const DADDR: usize = 24;
}

/// UDP header offsets.
pub mod udp {
    /// Header length (the payload starts here).
    pub const HEADER_LEN: usize = 8;
    /// Destination port.
    pub const DEST: usize = 2;
    /// Length.
    pub const LEN: usize = 4;
    /// Checksum.
    pub const CHECK: usize = 6;
}

/// A frame the program can read directly (after a bounds check the verifier follows) and
/// write. One implementation per program type; the parsing and rewriting code is the same.
pub trait Frame {
    /// Start of the packet data.
    fn data(&self) -> usize;
    /// End of the packet data (linear part, for an skb).
    fn data_end(&self) -> usize;
    /// Writes `v` at frame offset `off`; `false` when it is not inside the frame.
    fn store<const N: usize>(&self, off: usize, v: &[u8; N]) -> bool;

    /// `N` bytes at frame offset `off`, bounds-checked against [`Frame::data_end`].
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let p = self.data() + off;
        if p + N > self.data_end() {
            return None;
        }
        // SAFETY: `p .. p + N` is inside the packet (checked just above against data_end);
        // an unaligned read of plain bytes.
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }

    /// The byte at `off`.
    #[inline(always)]
    fn load_u8(&self, off: usize) -> Option<u8> {
        self.load::<1>(off).map(|b| b[0])
    }

    /// The big-endian 16-bit word at `off`.
    #[inline(always)]
    fn load_be16(&self, off: usize) -> Option<u16> {
        self.load::<2>(off).map(u16::from_be_bytes)
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    /// Direct packet access: XDP owns the frame.
    #[inline(always)]
    fn store<const N: usize>(&self, off: usize, v: &[u8; N]) -> bool {
        let p = self.data() + off;
        if p + N > self.data_end() {
            return false;
        }
        // SAFETY: inside the frame (checked above); an unaligned write of plain bytes.
        unsafe { core::ptr::write_unaligned(p as *mut [u8; N], *v) };
        true
    }
}

/// A socket buffer (the TC program's context).
#[derive(Clone, Copy)]
pub struct Skb(pub *mut __sk_buff);

impl Frame for Skb {
    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: the context pointer the kernel gave the program.
        unsafe { (*self.0).data as usize }
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: the context pointer the kernel gave the program.
        unsafe { (*self.0).data_end as usize }
    }

    /// Through `bpf_skb_store_bytes`, which un-clones the data first (the mirror clones the
    /// skb after each rewrite).
    #[inline(always)]
    fn store<const N: usize>(&self, off: usize, v: &[u8; N]) -> bool {
        // SAFETY: `v` is N readable bytes; the helper checks the range.
        unsafe { bpf_skb_store_bytes(self.0, off as u32, v.as_ptr().cast(), N as u32, 0) == 0 }
    }
}

/// A one's complement sum being updated word by word (RFC 1624: `HC' = ~(~HC + ~m + m')`).
/// Words are taken in memory order (native endianness), which one's complement arithmetic
/// allows (RFC 1071 §2(B)) and which matches what `bpf_csum_diff` returns.
#[derive(Clone, Copy)]
pub struct Csum(u32);

impl Csum {
    /// Starts from the checksum stored in a header.
    #[inline(always)]
    pub fn of(stored: [u8; 2]) -> Self {
        Csum(u32::from(!u16::from_ne_bytes(stored)))
    }

    /// The 16-bit word `old` becomes `new`.
    #[inline(always)]
    pub fn replace(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.0 += u32::from(!u16::from_ne_bytes(old)) + u32::from(u16::from_ne_bytes(new));
        self.0 = (self.0 & 0xffff) + (self.0 >> 16);
    }

    /// Adds a partial sum (as `bpf_csum_diff` returns).
    #[inline(always)]
    pub fn add_partial(&mut self, partial: u32) {
        self.0 += (partial & 0xffff) + (partial >> 16);
        self.0 = (self.0 & 0xffff) + (self.0 >> 16);
    }

    /// The checksum to store.
    #[inline(always)]
    pub fn done(self) -> [u8; 2] {
        let s = (self.0 & 0xffff) + (self.0 >> 16);
        (!(s as u16)).to_ne_bytes()
    }

    /// The checksum to store in a UDP header, where 0 means "none": 0 is sent as 0xffff.
    #[inline(always)]
    pub fn done_udp(self) -> [u8; 2] {
        match self.done() {
            [0, 0] => [0xff, 0xff],
            sum => sum,
        }
    }
}
