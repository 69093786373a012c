//! Duplicate suppression: several agents often capture the same message. A packet is a
//! duplicate when one with the same correlation key and payload was seen within the window.
//!
//! Shared by every worker (duplicates from different agents arrive on different sockets):
//! 16 shards behind mutexes, each with two generations of entries rotated once per window,
//! so memory is bounded by the configured capacity and old entries go without a scan.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Outcome of [`DedupCache::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time within the window: forward it.
    Fresh,
    /// Seen within the window: drop it.
    Duplicate,
    /// Fresh, but the memory was full and older entries were forgotten early.
    FreshOverflow,
}

struct Shard {
    current: HashMap<u128, Instant>,
    previous: HashMap<u128, Instant>,
    rotated: Instant,
}

/// The memory of one route's dedup window.
pub struct DedupCache {
    window: Duration,
    per_shard: usize,
    shards: Vec<Mutex<Shard>>,
}

/// The dedup identity of a packet: its correlation key hash and a hash of its payload.
pub fn dedup_key(key_hash: u64, payload: &[u8]) -> u128 {
    let h = foldhash::fast::FixedState::with_seed(0x6865_7066_7764).hash_one(payload);
    (u128::from(key_hash) << 64) | u128::from(h)
}

impl DedupCache {
    /// A cache for `window`, remembering at most about `capacity` packets.
    pub fn new(window: Duration, capacity: usize, now: Instant) -> Self {
        let per_shard = (capacity / SHARDS / 2).max(1);
        DedupCache {
            window,
            per_shard,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                        rotated: now,
                    })
                })
                .collect(),
        }
    }

    /// Records the packet and says whether it is a duplicate.
    pub fn check(&self, key: u128, now: Instant) -> Seen {
        let idx = (key as usize) % SHARDS;
        let mut s = match self.shards[idx].lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if now.saturating_duration_since(s.rotated) >= self.window {
            let cur = std::mem::take(&mut s.current);
            s.previous = cur;
            s.rotated = now;
        }
        let recent = |t: &Instant| now.saturating_duration_since(*t) < self.window;
        let dup =
            s.current.get(&key).is_some_and(recent) || s.previous.get(&key).is_some_and(recent);
        let mut overflow = false;
        if !s.current.contains_key(&key) && s.current.len() >= self.per_shard {
            let cur = std::mem::take(&mut s.current);
            s.previous = cur;
            s.rotated = now;
            overflow = true;
        }
        s.current.insert(key, now);
        match (dup, overflow) {
            (true, _) => Seen::Duplicate,
            (false, false) => Seen::Fresh,
            (false, true) => Seen::FreshOverflow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_only() {
        let t0 = Instant::now();
        let c = DedupCache::new(Duration::from_millis(500), 1000, t0);
        let k = dedup_key(7, b"INVITE");
        assert_eq!(c.check(k, t0), Seen::Fresh);
        assert_eq!(c.check(k, t0 + Duration::from_millis(100)), Seen::Duplicate);
        assert_eq!(c.check(dedup_key(7, b"BYE"), t0), Seen::Fresh);
        assert_eq!(c.check(dedup_key(8, b"INVITE"), t0), Seen::Fresh);
        // Seen 100 ms ago, now 700 ms: outside the window (measured from the last sighting).
        assert_eq!(c.check(k, t0 + Duration::from_millis(700)), Seen::Fresh);
        assert_eq!(c.check(k, t0 + Duration::from_millis(1300)), Seen::Fresh);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let c = DedupCache::new(Duration::from_secs(10), 64, t0);
        let mut overflowed = 0;
        for i in 0..10_000u64 {
            if c.check(dedup_key(i, b"x"), t0) == Seen::FreshOverflow {
                overflowed += 1;
            }
        }
        assert!(overflowed > 0);
        let held: usize = c
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum();
        assert!(held <= 64 + 2 * SHARDS, "held {held}");
    }
}
