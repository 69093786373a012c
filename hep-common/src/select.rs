//! Decisions the kernel and userspace must take identically: which destination of a
//! call-sticky route gets a call, and whether a sampled route keeps a call.
//!
//! Both take the correlation key hash ([`crate::correlation::key_hash`]).
//!
//! **Call-sticky destination** (rendezvous / highest-random-weight hashing): every
//! destination has a seed (the key hash of its name, so it does not depend on the order of
//! the configuration); a call goes to the destination with the highest
//! [`rendezvous_score`]`(hash, seed)`, the first one on a tie. Removing a destination moves
//! exactly the calls it had; adding one takes calls only from the others.
//!
//! **Call sampling**: a call is kept when [`sample_point`]`(hash)` (uniform in
//! `0..1_000_000`) is below the route's rate in millionths. All packets of a call share the
//! hash, so a call is kept or dropped whole.

/// Mixes two 64-bit values into one (MurmurHash3's finaliser over their combination).
#[inline(always)]
const fn mix(a: u64, b: u64) -> u64 {
    let mut k = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The weight of destination `seed` for the call with key hash `hash`.
#[inline(always)]
pub const fn rendezvous_score(hash: u64, seed: u64) -> u64 {
    mix(hash, seed)
}

/// The index of the destination a call goes to, `None` when `seeds` is empty.
#[inline(always)]
pub fn rendezvous_pick(hash: u64, seeds: &[u64]) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (i, s) in seeds.iter().enumerate() {
        let score = rendezvous_score(hash, *s);
        match best {
            Some((_, b)) if b >= score => {}
            _ => best = Some((i, score)),
        }
    }
    best.map(|(i, _)| i)
}

/// Salt that makes sampling independent of destination choice.
const SAMPLE_SALT: u64 = 0x5a4d_504c_4548_4550;

/// Where a call falls in `0..1_000_000` for sampling.
#[inline(always)]
pub const fn sample_point(hash: u64) -> u32 {
    (mix(hash, SAMPLE_SALT) % 1_000_000) as u32
}

/// Whether a route keeping `rate_ppm` millionths of the calls keeps this call.
#[inline(always)]
pub const fn sample_keep(hash: u64, rate_ppm: u32) -> bool {
    sample_point(hash) < rate_ppm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlation::key_hash;

    fn key(i: u32) -> u64 {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b[4..15].copy_from_slice(b"@carrier.ex");
        key_hash(&b[..15])
    }

    #[test]
    fn removing_a_destination_moves_only_its_calls() {
        let seeds: [u64; 4] = [
            key_hash(b"a"),
            key_hash(b"b"),
            key_hash(b"c"),
            key_hash(b"d"),
        ];
        let without_c = [seeds[0], seeds[1], seeds[3]];
        let mut per = [0u32; 4];
        for i in 0..20_000 {
            let h = key(i);
            let before = rendezvous_pick(h, &seeds).unwrap();
            per[before] += 1;
            let after = rendezvous_pick(h, &without_c).unwrap();
            let after_name = [0, 1, 3][after];
            if before != 2 {
                assert_eq!(
                    before, after_name,
                    "call {i} moved although its destination stayed"
                );
            }
        }
        for n in per {
            assert!((4_000..6_000).contains(&n), "uneven spread {per:?}");
        }
        assert_eq!(rendezvous_pick(1, &[]), None);
    }

    #[test]
    fn sampling_keeps_the_rate_and_whole_calls() {
        let kept = (0..100_000)
            .filter(|i| sample_keep(key(*i), 250_000))
            .count();
        assert!((24_000..26_000).contains(&kept), "kept {kept}");
        assert!(!sample_keep(key(1), 0));
        assert!(sample_keep(key(1), 1_000_000));
        // Pinned: the kernel and userspace, and later versions, must keep agreeing.
        assert_eq!(sample_point(key_hash(b"abc@host")), 953_374);
        assert_eq!(
            rendezvous_score(key_hash(b"abc@host"), key_hash(b"homer-a")),
            0xb6d1_0686_193a_afe9
        );
    }
}
