//! Route evaluation over the kernel tables ([`crate::abi`]): which route takes a packet
//! and what happens to it. The XDP program, the loader's cross-check and the host tests
//! run this code, so the kernel's decision is the one the tests see.
//!
//! First match wins; an [`RouteKind::Opaque`] route reached passes the packet to
//! userspace; see the contract in [`crate::abi`].

use crate::abi::{
    Addr16, KernelListener, KernelPrefix, KernelRoute, MAX_MATCH_VALUES, MAX_NODE_NAME, MAX_ROUTES,
    MAX_TARGETS, RouteAction, RouteKind, SAMPLE_ALL, SteerMode, match_flags,
};
use crate::facts::KernelFacts;
use crate::select::{rendezvous_pick, sample_keep};

/// An [`Addr16`] as two big-endian 64-bit halves: two loads, not sixteen bytes assembled
/// one by one (which, in the kernel program, also costs a stack slot per byte).
#[inline(always)]
pub fn addr_halves(a: &Addr16) -> (u64, u64) {
    let p = a.as_ptr().cast::<[u8; 8]>();
    // SAFETY: `a` is 16 readable bytes: two unaligned 8-byte reads at 0 and 8.
    let (hi, lo) = unsafe {
        (
            core::ptr::read_unaligned(p),
            core::ptr::read_unaligned(p.add(1)),
        )
    };
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

impl KernelPrefix {
    /// Whether `a` is inside the prefix. Two masked 64-bit compares with constant byte
    /// indices (the kernel's verifier rejects reading a stack array at a variable index).
    #[inline(always)]
    pub fn contains(&self, a: &Addr16) -> bool {
        let len = if self.len > 128 { 128 } else { self.len as u32 };
        let (ah, al) = addr_halves(a);
        let (ph, pl) = addr_halves(&self.addr);
        let mask_hi = match len {
            0 => 0,
            64.. => u64::MAX,
            n => u64::MAX << (64 - n),
        };
        let mask_lo = match len {
            0..=64 => 0,
            128.. => u64::MAX,
            n => u64::MAX << (128 - n),
        };
        (ah ^ ph) & mask_hi == 0 && (al ^ pl) & mask_lo == 0
    }
}

#[inline(always)]
fn any_prefix(list: &[KernelPrefix; MAX_MATCH_VALUES], n: u8, a: Option<Addr16>) -> bool {
    let Some(a) = a else { return false };
    let mut i = 0;
    while i < MAX_MATCH_VALUES {
        if i < n as usize && list[i].contains(&a) {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the packet's node name equals one of the route's.
#[inline(always)]
fn any_node_name(r: &KernelRoute, f: &KernelFacts) -> bool {
    let Some(len) = f.node_name_len else {
        return false;
    };
    let mut i = 0;
    while i < MAX_MATCH_VALUES {
        if i < r.n_node_names as usize && u16::from(r.node_name_lens[i]) == len {
            // Bytes past the length are zero on both sides.
            let mut same = true;
            let mut j = 0;
            while j < MAX_NODE_NAME {
                if r.node_names[i][j] != f.node_name[j] {
                    same = false;
                }
                j += 1;
            }
            if same {
                return true;
            }
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn any_port(r: &KernelRoute, p: Option<u16>) -> bool {
    let Some(p) = p else { return false };
    let mut i = 0;
    while i < MAX_MATCH_VALUES {
        if i < r.n_ports as usize && r.ports[i][0] <= p && p <= r.ports[i][1] {
            return true;
        }
        i += 1;
    }
    false
}

impl KernelRoute {
    /// Whether an [`RouteKind::Evaluable`] route's keys all match (within a key, any value).
    #[inline(always)]
    pub fn matches(&self, f: &KernelFacts) -> bool {
        use match_flags::*;
        if self.flags & PROTO != 0 {
            let Some(t) = f.proto_type else { return false };
            if self.proto[(t / 64) as usize & 3] & (1u64 << (t % 64)) == 0 {
                return false;
            }
        }
        if self.flags & CAPTURE_ID != 0 {
            let Some(c) = f.capture_id else { return false };
            let mut hit = false;
            let mut i = 0;
            while i < MAX_MATCH_VALUES {
                if i < self.n_capture as usize && self.capture[i][0] <= c && c <= self.capture[i][1]
                {
                    hit = true;
                }
                i += 1;
            }
            if !hit {
                return false;
            }
        }
        if self.flags & NODE_NAME != 0 && !any_node_name(self, f) {
            return false;
        }
        if self.flags & SOURCE != 0 && !any_prefix(&self.source, self.n_source, Some(f.sender)) {
            return false;
        }
        if self.flags & INNER_SRC != 0
            && !any_prefix(&self.inner_src, self.n_inner_src, f.inner_src)
        {
            return false;
        }
        if self.flags & INNER_DST != 0
            && !any_prefix(&self.inner_dst, self.n_inner_dst, f.inner_dst)
        {
            return false;
        }
        if self.flags & INNER_PORT != 0
            && !any_port(self, f.src_port)
            && !any_port(self, f.dst_port)
        {
            return false;
        }
        if self.flags & SIP_METHOD != 0 {
            let Some(m) = f.sip.method() else {
                return false;
            };
            if self.sip_methods & (1u32 << (m & 31)) == 0 {
                return false;
            }
        }
        if self.flags & SIP_STATUS != 0 {
            let Some(code) = f.sip.status() else {
                return false;
            };
            let mut hit = false;
            let mut i = 0;
            while i < MAX_MATCH_VALUES {
                if i < self.n_status as usize
                    && self.status[i][0] <= code
                    && code <= self.status[i][1]
                {
                    hit = true;
                }
                i += 1;
            }
            if !hit {
                return false;
            }
        }
        true
    }

    /// The destination (index within the bank) a steering route sends this packet to;
    /// `rr` is the round-robin position (per CPU in the kernel).
    #[inline(always)]
    pub fn pick(&self, f: &KernelFacts, rr: u32) -> Option<u32> {
        let n = (self.n_targets as usize).min(MAX_TARGETS);
        if n == 0 {
            return None;
        }
        let i = match self.mode {
            m if m == SteerMode::Hash as u8 => rendezvous_pick(f.key_hash, &self.seeds[..n])?,
            m if m == SteerMode::RoundRobin as u8 => rr as usize % n,
            _ => 0,
        };
        self.target(i)
    }

    /// Target `i`, read at a constant index per arm: the kernel's verifier cannot bound an
    /// index computed by `%` or by the rendezvous loop, but it follows these.
    #[inline(always)]
    fn target(&self, i: usize) -> Option<u32> {
        let t = &self.targets;
        Some(match i {
            0 => t[0],
            1 => t[1],
            2 => t[2],
            3 => t[3],
            4 => t[4],
            5 => t[5],
            6 => t[6],
            7 => t[7],
            _ => return None,
        })
    }
}

impl KernelListener {
    /// Whether a datagram to `dst` (IPv4 mapped) port `port` reaches this listener.
    #[inline(always)]
    pub fn takes(&self, dst: &Addr16, port: u16) -> bool {
        // Two 64-bit compares, few branches: the kernel's verifier walks every branch.
        let (dh, dl) = addr_halves(dst);
        let (ah, al) = addr_halves(&self.addr);
        let exact = (dh ^ ah) | (dl ^ al) == 0;
        let v4 = (dh == 0) & (dl >> 32 == 0xffff);
        let any = (self.wildcard == 6) | ((self.wildcard == 4) & v4);
        (self.port == port) & (any | exact)
    }
}

/// The kernel's decision for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To userspace: a route is opaque (index), or its action needs userspace, or nothing
    /// matched.
    Pass {
        /// Why.
        reason: PassReason,
        /// The route that decided, if any.
        route: Option<usize>,
    },
    /// Dropped by route `route`'s drop action.
    Drop {
        /// Route index.
        route: usize,
    },
    /// Left out by route `route`'s sampling.
    SampledOut {
        /// Route index.
        route: usize,
    },
    /// Sent to destination `dest` by route `route`.
    Steer {
        /// Route index.
        route: usize,
        /// Destination index within the bank.
        dest: u32,
    },
    /// Copied to every target of route `route` (by the TC program).
    Mirror {
        /// Route index.
        route: usize,
    },
}

/// Why a packet goes to userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// A route the kernel cannot evaluate came first.
    OpaqueRoute,
    /// The route that matched needs userspace for its action.
    UserspaceAction,
    /// No route matched.
    NoRoute,
    /// The route that matched needs the correlation key, which lies in a compressed
    /// payload only userspace inflates ([`KernelFacts::key_in_userspace`]).
    KeyInUserspace,
}

/// The route that takes a packet, before its action is decided: [`first_match`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstMatch {
    /// Route `i` matches: [`decide`] gives the verdict.
    Route(usize),
    /// No route decides in the kernel: pass (an opaque route came first, or none matched).
    Pass(Verdict),
}

/// The first route, in order, that matches `f` (see the module docs). Reads no correlation
/// key: the kernel computes the key only when the route found needs it ([`needs_key`]).
#[inline(always)]
pub fn first_match(routes: &[KernelRoute], f: &KernelFacts) -> FirstMatch {
    let mut i = 0;
    while i < routes.len() && i < MAX_ROUTES {
        let r = &routes[i];
        if r.kind != RouteKind::Evaluable as u8 {
            return FirstMatch::Pass(Verdict::Pass {
                reason: PassReason::OpaqueRoute,
                route: Some(i),
            });
        }
        if r.matches(f) {
            return FirstMatch::Route(i);
        }
        i += 1;
    }
    FirstMatch::Pass(Verdict::Pass {
        reason: PassReason::NoRoute,
        route: None,
    })
}

/// Whether [`decide`] reads the correlation key hash for route `r`: it samples calls, or
/// steers by hash. Matching never reads it (a correlation match makes a route opaque).
#[inline(always)]
pub fn needs_key(r: &KernelRoute) -> bool {
    r.action != RouteAction::Pass as u8
        && (r.sample_ppm < SAMPLE_ALL
            || (r.action == RouteAction::Steer as u8 && r.mode == SteerMode::Hash as u8))
}

/// Evaluates routes in order (see the module docs); `rr` as in [`KernelRoute::pick`].
#[inline(always)]
pub fn evaluate(routes: &[KernelRoute], f: &KernelFacts, rr: u32) -> Verdict {
    match first_match(routes, f) {
        FirstMatch::Route(i) => decide(&routes[i], i, f, rr),
        FirstMatch::Pass(v) => v,
    }
}

/// The verdict of route `i`, which matched. `f.key_hash` must be the packet's key hash
/// when [`needs_key`] says so; otherwise it is not read.
#[inline(always)]
pub fn decide(r: &KernelRoute, i: usize, f: &KernelFacts, rr: u32) -> Verdict {
    if r.action == RouteAction::Pass as u8 {
        return Verdict::Pass {
            reason: PassReason::UserspaceAction,
            route: Some(i),
        };
    }
    if f.key_in_userspace && needs_key(r) {
        return Verdict::Pass {
            reason: PassReason::KeyInUserspace,
            route: Some(i),
        };
    }
    if r.sample_ppm < SAMPLE_ALL && !sample_keep(f.key_hash, r.sample_ppm) {
        return Verdict::SampledOut { route: i };
    }
    match r.action {
        a if a == RouteAction::Drop as u8 => Verdict::Drop { route: i },
        a if a == RouteAction::Mirror as u8 => Verdict::Mirror { route: i },
        _ => match r.pick(f, rr) {
            Some(dest) => Verdict::Steer { route: i, dest },
            None => Verdict::Pass {
                reason: PassReason::UserspaceAction,
                route: Some(i),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{MAX_AUTH_KEY, map_v4};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr16 {
        map_v4([a, b, c, d])
    }

    #[test]
    fn listeners_take_their_address_and_port() {
        let mut l = KernelListener {
            port: 9060,
            auth_key_len: 0,
            has_allow: 0,
            id: 0,
            auth_key: [0; MAX_AUTH_KEY],
            addr: v4(198, 18, 1, 2),
            wildcard: 0,
            _pad: [0; 3],
        };
        let v6 = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert!(l.takes(&v4(198, 18, 1, 2), 9060));
        assert!(!l.takes(&v4(198, 18, 1, 3), 9060));
        assert!(!l.takes(&v4(198, 18, 1, 2), 9061));
        l.wildcard = 4;
        assert!(l.takes(&v4(10, 0, 0, 1), 9060));
        assert!(!l.takes(&v6, 9060));
        l.wildcard = 6;
        assert!(l.takes(&v6, 9060) && l.takes(&v4(10, 0, 0, 1), 9060));
        assert!(!l.takes(&v6, 9061));
    }

    #[test]
    fn prefixes() {
        let p = KernelPrefix {
            addr: v4(198, 18, 0, 0),
            len: 96 + 15,
            _pad: [0; 3],
        };
        assert!(p.contains(&v4(198, 19, 255, 1)));
        assert!(!p.contains(&v4(198, 20, 0, 1)));
        let all = KernelPrefix {
            addr: [0; 16],
            len: 0,
            _pad: [0; 3],
        };
        assert!(all.contains(&v4(1, 2, 3, 4)));
    }

    #[test]
    fn first_match_wins_opaque_passes_sampling_and_picks() {
        let mut sip = KernelRoute::EMPTY;
        sip.kind = RouteKind::Evaluable as u8;
        sip.flags = match_flags::PROTO;
        sip.proto[0] = 1 << 1;
        sip.action = RouteAction::Steer as u8;
        sip.mode = SteerMode::Hash as u8;
        sip.n_targets = 2;
        sip.targets = [3, 4, 0, 0, 0, 0, 0, 0];
        sip.seeds = [11, 22, 0, 0, 0, 0, 0, 0];
        let mut logs = KernelRoute::EMPTY;
        logs.kind = RouteKind::Evaluable as u8;
        logs.flags = match_flags::PROTO | match_flags::CAPTURE_ID;
        logs.proto[1] = 1 << (100 - 64);
        logs.n_capture = 1;
        logs.capture[0] = [2000, 2999];
        logs.action = RouteAction::Drop as u8;
        let opaque = KernelRoute::EMPTY;
        let routes = [sip, logs, opaque];
        let mut f = KernelFacts {
            proto_type: Some(1),
            key_hash: 7,
            ..Default::default()
        };
        let v = evaluate(&routes, &f, 0);
        let want = rendezvous_pick(7, &[11, 22]).map(|i| [3, 4][i]).unwrap();
        assert_eq!(
            v,
            Verdict::Steer {
                route: 0,
                dest: want
            }
        );
        f.proto_type = Some(100);
        f.capture_id = Some(2500);
        assert_eq!(evaluate(&routes, &f, 0), Verdict::Drop { route: 1 });
        f.capture_id = Some(3000);
        assert_eq!(
            evaluate(&routes, &f, 0),
            Verdict::Pass {
                reason: PassReason::OpaqueRoute,
                route: Some(2)
            }
        );
        assert_eq!(
            evaluate(&routes[..2], &f, 0),
            Verdict::Pass {
                reason: PassReason::NoRoute,
                route: None
            }
        );
        let mut sampled = logs;
        sampled.capture[0] = [0, u32::MAX];
        sampled.sample_ppm = 0;
        assert_eq!(
            evaluate(&[sampled], &f, 0),
            Verdict::SampledOut { route: 0 }
        );
    }

    #[test]
    fn only_sampling_and_hash_steering_need_the_key() {
        let mut r = KernelRoute::EMPTY;
        r.kind = RouteKind::Evaluable as u8;
        let cases = [
            (RouteAction::Pass, SteerMode::Hash, 1, false),
            (RouteAction::Drop, SteerMode::Single, SAMPLE_ALL, false),
            (RouteAction::Drop, SteerMode::Single, 10, true),
            (RouteAction::Steer, SteerMode::Single, SAMPLE_ALL, false),
            (RouteAction::Steer, SteerMode::RoundRobin, SAMPLE_ALL, false),
            (RouteAction::Steer, SteerMode::Hash, SAMPLE_ALL, true),
            (RouteAction::Mirror, SteerMode::Single, SAMPLE_ALL, false),
            (RouteAction::Mirror, SteerMode::Single, 500_000, true),
        ];
        for (action, mode, ppm, want) in cases {
            r.action = action as u8;
            r.mode = mode as u8;
            r.sample_ppm = ppm;
            assert_eq!(needs_key(&r), want, "{action:?} {mode:?} {ppm}");
        }
        // A decision that does not need the key is the same whatever the key.
        let f0 = KernelFacts::default();
        let f1 = KernelFacts {
            key_hash: 0xdead_beef,
            ..KernelFacts::default()
        };
        r.action = RouteAction::Steer as u8;
        r.mode = SteerMode::Single as u8;
        r.sample_ppm = SAMPLE_ALL;
        r.n_targets = 1;
        assert_eq!(decide(&r, 0, &f0, 0), decide(&r, 0, &f1, 0));
    }

    proptest::proptest! {
        /// Where [`needs_key`] says no, the decision is the same for every key hash: the
        /// kernel may skip the Call-ID scan and the hash.
        #[test]
        fn decisions_that_need_no_key_ignore_it(
            action in 0u8..4,
            mode in 0u8..3,
            ppm in proptest::prop_oneof![proptest::strategy::Just(SAMPLE_ALL), 0u32..SAMPLE_ALL],
            n_targets in 0u8..=8,
            seeds in proptest::array::uniform8(proptest::num::u64::ANY),
            h0 in proptest::num::u64::ANY,
            h1 in proptest::num::u64::ANY,
            rr in proptest::num::u32::ANY,
        ) {
            let mut r = KernelRoute::EMPTY;
            r.kind = RouteKind::Evaluable as u8;
            r.action = action;
            r.mode = mode;
            r.sample_ppm = ppm;
            r.n_targets = n_targets;
            r.targets = [0, 1, 2, 3, 4, 5, 6, 7];
            r.seeds = seeds;
            let f = |h| KernelFacts { key_hash: h, ..KernelFacts::default() };
            if !needs_key(&r) {
                proptest::prop_assert_eq!(decide(&r, 0, &f(h0), rr), decide(&r, 0, &f(h1), rr));
            }
        }
    }

    /// A key only userspace can read passes the packet up, but only from a route that
    /// needs the key; other routes decide in the kernel as before.
    #[test]
    fn a_key_in_userspace_passes_only_routes_that_need_it() {
        let mut hash = KernelRoute::EMPTY;
        hash.kind = RouteKind::Evaluable as u8;
        hash.action = RouteAction::Steer as u8;
        hash.mode = SteerMode::Hash as u8;
        hash.n_targets = 2;
        hash.targets = [3, 4, 0, 0, 0, 0, 0, 0];
        hash.seeds = [11, 22, 0, 0, 0, 0, 0, 0];
        let mut single = hash;
        single.mode = SteerMode::Single as u8;
        single.n_targets = 1;
        let f = KernelFacts {
            key_in_userspace: true,
            ..Default::default()
        };
        assert_eq!(
            evaluate(&[hash], &f, 0),
            Verdict::Pass {
                reason: PassReason::KeyInUserspace,
                route: Some(0)
            }
        );
        assert_eq!(
            evaluate(&[single], &f, 0),
            Verdict::Steer { route: 0, dest: 3 }
        );
        let mut sampled = single;
        sampled.sample_ppm = 500_000;
        assert!(matches!(
            evaluate(&[sampled], &f, 0),
            Verdict::Pass {
                reason: PassReason::KeyInUserspace,
                ..
            }
        ));
    }
}
