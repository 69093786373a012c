//! In-place chunk edits: the kernel's form of a `set` rewrite.
//!
//! A `set` edit ([`crate::rewrite`]) replaces the first occurrence of a chunk and removes
//! the others, or inserts the chunk when absent. When the packet carries the chunk exactly
//! once and the new value has the old one's length, that is the same as overwriting the
//! value's bytes where they are: no byte moves, the lengths stay. This module defines that
//! case once, for the kernel and for the tests that show it equal to [`crate::rewrite`]:
//!
//! - [`EditSites`] finds, during a chunk walk, where each edited chunk's value is and how
//!   many times the chunk occurs;
//! - [`EditSites::in_place`] says whether every edit can be written in place (otherwise the
//!   whole packet goes to userspace, which runs the full rewrite);
//! - [`UdpChecksum`] adjusts a UDP checksum for bytes that changed at any offset (RFC 1624,
//!   byte by byte, so odd offsets and lengths are exact).

use crate::abi::{KernelEdit, MAX_EDIT_SITES, MAX_EDIT_VALUE, MAX_KERNEL_EDITS};
use crate::walker::ChunkHeader;

/// The edits of one packet (the route's, then its destination's auth key) and where their
/// chunks sit in it: for edit `i`, the offset and length of the first occurrence's value,
/// and how many occurrences there are (saturating at 2). Slot `i < MAX_KERNEL_EDITS` holds
/// the route's edit `i`, the last slot the destination's auth key; `active` says which
/// apply (fixed slots: the kernel indexes them with constants only).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditSites {
    /// The edits; the active ones name different chunks.
    pub edits: [KernelEdit; MAX_EDIT_SITES],
    /// Offset of the first occurrence's value in the packet.
    pub value_offset: [u32; MAX_EDIT_SITES],
    /// Length of the first occurrence's value.
    pub value_len: [u16; MAX_EDIT_SITES],
    /// Occurrences seen (0, 1, or 2 for "more than one").
    pub count: [u8; MAX_EDIT_SITES],
    /// 1: the slot's edit applies.
    pub active: [u8; MAX_EDIT_SITES],
}

impl EditSites {
    /// No edits.
    pub const EMPTY: EditSites = EditSites {
        edits: [KernelEdit::NONE; MAX_EDIT_SITES],
        value_offset: [0; MAX_EDIT_SITES],
        value_len: [0; MAX_EDIT_SITES],
        count: [0; MAX_EDIT_SITES],
        active: [0; MAX_EDIT_SITES],
    };

    /// The edits of a packet steered by `route` to a destination with auth key edit
    /// `auth` (`len` 0: none): the route's first `n_edits` edits, then `auth`, which is
    /// applied last and so replaces a route edit of the same chunk.
    #[inline(always)]
    pub fn reset(
        &mut self,
        route: &[KernelEdit; MAX_KERNEL_EDITS],
        n_edits: u8,
        auth: &KernelEdit,
    ) {
        let mut i = 0;
        while i < MAX_KERNEL_EDITS {
            let e = &route[i];
            let replaced = auth.len != 0 && auth.vendor == e.vendor && auth.kind == e.kind;
            self.edits[i] = *e;
            self.active[i] = u8::from(i < n_edits as usize && e.len != 0 && !replaced);
            self.count[i] = 0;
            i += 1;
        }
        self.edits[MAX_KERNEL_EDITS] = *auth;
        self.active[MAX_KERNEL_EDITS] = u8::from(auth.len != 0);
        self.count[MAX_KERNEL_EDITS] = 0;
    }

    /// Takes one chunk of the walk into account (chunks in packet order).
    #[inline(always)]
    pub fn on_chunk(&mut self, c: &ChunkHeader) {
        let mut i = 0;
        while i < MAX_EDIT_SITES {
            let e = &self.edits[i];
            if self.active[i] != 0 && e.vendor == c.vendor && e.kind == c.kind {
                if self.count[i] == 0 {
                    self.value_offset[i] = c.value_offset() as u32;
                    self.value_len[i] = c.value_len() as u16;
                    self.count[i] = 1;
                } else {
                    self.count[i] = 2;
                }
            }
            i += 1;
        }
    }

    /// Whether slot `i` applies and can be written in place: its chunk occurs exactly
    /// once, with a value of the new value's length.
    #[inline(always)]
    pub fn fits(&self, i: usize) -> bool {
        i < MAX_EDIT_SITES
            && self.active[i] != 0
            && self.count[i] == 1
            && self.value_len[i] == u16::from(self.edits[i].len)
            && (self.edits[i].len as usize) <= MAX_EDIT_VALUE
    }

    /// Whether every edit that applies can be written in place (then writing each value at
    /// its offset gives exactly what [`crate::rewrite::rewrite`] gives).
    #[inline(always)]
    pub fn in_place(&self) -> bool {
        let mut i = 0;
        while i < MAX_EDIT_SITES {
            if self.active[i] != 0 && !self.fits(i) {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Writes the edits into `packet` (which the walk was over); `false`, with nothing
    /// written, unless [`EditSites::in_place`] holds and every site is inside `packet`.
    pub fn apply(&self, packet: &mut [u8]) -> bool {
        if !self.in_place() {
            return false;
        }
        let active = |i: &usize| self.active[*i] != 0;
        let inside = (0..MAX_EDIT_SITES).filter(active).all(|i| {
            packet
                .get(self.value_offset[i] as usize..)
                .is_some_and(|rest| rest.len() >= self.edits[i].len as usize)
        });
        if !inside {
            return false;
        }
        for i in (0..MAX_EDIT_SITES).filter(active) {
            let (at, len) = (self.value_offset[i] as usize, self.edits[i].len as usize);
            packet[at..at + len].copy_from_slice(&self.edits[i].value[..len]);
        }
        true
    }
}

/// A UDP (or any Internet) checksum adjusted incrementally as bytes change (RFC 1624:
/// `HC' = ~(~HC + ~m + m')`), one byte at a time so that a change at an odd offset counts
/// in the low half of its 16-bit word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpChecksum(u32);

impl UdpChecksum {
    /// Starts from the checksum stored in the header (network order bytes).
    #[inline(always)]
    pub fn of(stored: [u8; 2]) -> Self {
        UdpChecksum(u32::from(!u16::from_be_bytes(stored)))
    }

    /// The byte at `position` (counted from the start of the UDP header, or any even
    /// point) changes from `old` to `new`.
    #[inline(always)]
    pub fn replace_byte(&mut self, position: usize, old: u8, new: u8) {
        let shift = if position & 1 == 0 { 8 } else { 0 };
        let (old, new) = (u32::from(old) << shift, u32::from(new) << shift);
        self.0 += (!old & 0xffff) + new;
        self.0 = (self.0 & 0xffff) + (self.0 >> 16);
    }

    /// The checksum to store; 0 ("no checksum" in UDP) is written as 0xffff.
    #[inline(always)]
    pub fn done(self) -> [u8; 2] {
        let s = (self.0 & 0xffff) + (self.0 >> 16);
        match !(s as u16) {
            0 => [0xff, 0xff],
            c => c.to_be_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure

    use super::*;
    use crate::chunk::ChunkId;

    /// The Internet checksum of `bytes`, computed from scratch (RFC 1071), 0 as 0xffff.
    fn full(bytes: &[u8]) -> [u8; 2] {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            sum += word;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        match !(sum as u16) {
            0 => [0xff, 0xff],
            c => c.to_be_bytes(),
        }
    }

    #[test]
    fn incremental_equals_full_at_every_alignment() {
        // A UDP-like buffer whose checksum field (bytes 6..8) covers the rest; the sum
        // over the whole buffer with the field filled in is 0xffff.
        let mut buf = [0u8; 61];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        buf[6] = 0;
        buf[7] = 0;
        let c = full(&buf);
        buf[6..8].copy_from_slice(&c);
        for start in 8..buf.len() {
            for len in 1..=(buf.len() - start).min(9) {
                let mut new = buf;
                for (k, b) in new[start..start + len].iter_mut().enumerate() {
                    *b = b.wrapping_add(0x5a).wrapping_add(k as u8);
                }
                let mut sum = UdpChecksum::of([buf[6], buf[7]]);
                for k in 0..len {
                    sum.replace_byte(start + k, buf[start + k], new[start + k]);
                }
                new[6] = 0;
                new[7] = 0;
                assert_eq!(sum.done(), full(&new), "start {start} len {len}");
            }
        }
    }

    #[test]
    fn sites_count_occurrences_and_take_the_first() {
        let capture = KernelEdit::set(ChunkId::generic(0x000c), &[0, 0, 0, 9]).unwrap();
        let mut route = [KernelEdit::NONE; MAX_KERNEL_EDITS];
        route[0] = capture;
        let mut s = EditSites::EMPTY;
        s.reset(&route, 1, &KernelEdit::NONE);
        assert_eq!(s.active, [1, 0, 0, 0, 0]);
        let c = |offset, len| ChunkHeader {
            offset,
            vendor: 0,
            kind: 0x000c,
            len,
        };
        s.on_chunk(&ChunkHeader {
            offset: 6,
            vendor: 0,
            kind: 0x0001,
            len: 7,
        });
        assert!(!s.in_place(), "absent");
        s.on_chunk(&c(13, 10));
        assert!(s.in_place());
        assert_eq!(s.value_offset[0], 19);
        s.on_chunk(&c(23, 10));
        assert!(!s.in_place(), "twice");
        assert_eq!(s.value_offset[0], 19, "the first stays");
    }

    #[test]
    fn the_destination_auth_key_comes_last_and_replaces_the_route_one() {
        let mut route = [KernelEdit::NONE; MAX_KERNEL_EDITS];
        route[0] = KernelEdit::set(ChunkId::generic(0x000e), b"route").unwrap();
        route[1] = KernelEdit::set(ChunkId::generic(0x0013), b"edge").unwrap();
        let auth = KernelEdit::set(ChunkId::generic(0x000e), b"dest!").unwrap();
        let mut s = EditSites::EMPTY;
        s.reset(&route, 2, &auth);
        assert_eq!(s.active, [0, 1, 0, 0, 1]);
        assert_eq!(&s.edits[1].value[..4], b"edge");
        assert_eq!(&s.edits[4].value[..5], b"dest!");
        s.reset(&route, 1, &KernelEdit::NONE);
        assert_eq!(s.active, [1, 0, 0, 0, 0]);
        assert_eq!(&s.edits[0].value[..5], b"route");
    }
}
