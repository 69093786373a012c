//! [`Outbox`]: the packets one batch produces, in one reusable arena (no allocation per
//! packet once warm).

use hep_common::HepError;

/// Largest HEP packet.
const MAX_PACKET: usize = 65_535;

/// One packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutItem {
    /// Destination index in the plan.
    pub dest: usize,
    start: usize,
    len: usize,
}

/// Packets to send, by destination, with their bytes in one arena.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    used: usize,
    items: Vec<OutItem>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a copy of `bytes` for `dest`.
    pub fn push(&mut self, dest: usize, bytes: &[u8]) {
        let start = self.reserve(bytes.len());
        self.buf[start..start + bytes.len()].copy_from_slice(bytes);
        self.commit(dest, start, bytes.len());
    }

    /// Queues the packet `encode` writes (into at most 65535 bytes) for `dest`.
    pub fn push_with(
        &mut self,
        dest: usize,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, HepError>,
    ) -> Result<(), HepError> {
        let start = self.reserve(MAX_PACKET);
        let n = encode(&mut self.buf[start..start + MAX_PACKET])?;
        self.commit(dest, start, n);
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> usize {
        let need = self.used + n;
        if self.buf.len() < need {
            let grow = need.max(self.buf.len() * 2).max(4 * MAX_PACKET);
            self.buf.resize(grow, 0);
        }
        self.used
    }

    fn commit(&mut self, dest: usize, start: usize, len: usize) {
        self.items.push(OutItem { dest, start, len });
        self.used = start + len;
    }

    /// The queued packets, in order.
    pub fn items(&self) -> &[OutItem] {
        &self.items
    }

    /// The bytes of a queued packet.
    pub fn bytes(&self, item: &OutItem) -> &[u8] {
        &self.buf[item.start..item.start + item.len]
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Forgets the queued packets, keeping the memory.
    pub fn clear(&mut self) {
        self.items.clear();
        self.used = 0;
    }
}
