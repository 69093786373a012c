//! The userspace engine: route matching, actions (forward with a mode, drop, sample,
//! dedup), chunk rewriting and output conversion, for one compiled configuration.
//!
//! [`Engine::process`] takes one received packet and appends what must be sent to an
//! [`Outbox`]; the I/O layer (`crate::io`) moves the outbox to sockets and queues. An
//! [`Engine`] is immutable once built: a reload builds a new one and swaps it in, while
//! per-worker state lives in [`WorkerCtx`].

pub mod dedup;
pub mod facts;
pub mod inflate;
pub mod matcher;
pub mod outbox;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hep_common::chunk::{self, ChunkId};
use hep_common::legacy::HepLegacy;
use hep_common::rewrite::{ChunkEdit, rewrite};
use hep_common::select::{rendezvous_pick, sample_keep};
use hep_common::v3::Hep3;
use hep_common::{HepError, HepPacket};
use smallvec::SmallVec;

use crate::admin::stats::{DestinationStats, ListenerStats, RouteStats, Stats, parse_error_index};
use crate::config::plan::{Action, DestinationPlan, Edit, ForwardMode, Plan, RoutePlan, Transport};
use dedup::{DedupCache, Seen, dedup_key};
use facts::Facts;
pub use outbox::{OutItem, Outbox};

/// Where frames for a TCP destination go (implemented by the TCP sink).
pub trait FrameQueue: Send + Sync {
    /// Queues a frame without blocking; false when it was dropped (queue full).
    fn try_send(&self, frame: Bytes) -> bool;
}

/// A destination as the engine sees it: its plan, counters and (TCP) queue.
#[derive(Clone)]
pub struct DestinationHandle {
    /// The destination's configuration.
    pub plan: DestinationPlan,
    /// Its counters and health.
    pub stats: Arc<DestinationStats>,
    /// TCP: the sink's queue.
    pub queue: Option<Arc<dyn FrameQueue>>,
}

struct RouteRt {
    plan: RoutePlan,
    stats: Arc<RouteStats>,
    seeds: Vec<u64>,
    dedup: Option<DedupCache>,
}

struct ListenerRt {
    auth_key: Option<Vec<u8>>,
    allow: Option<Vec<ipnet::IpNet>>,
    stats: Arc<ListenerStats>,
}

/// One compiled configuration, ready to process packets.
pub struct Engine {
    /// The configuration it was built from.
    pub plan: Plan,
    /// Increases with every reload; workers rebuild their state when it changes.
    pub generation: u64,
    listeners: Vec<ListenerRt>,
    routes: Vec<RouteRt>,
    default: Option<RouteRt>,
    /// The destinations, indexed as in the plan.
    pub destinations: Vec<DestinationHandle>,
    stats: Arc<Stats>,
    epoch: Instant,
}

/// Per-worker state: scratch buffers and round-robin positions.
pub struct WorkerCtx {
    generation: u64,
    rr: Vec<usize>,
    norm: Vec<u8>,
    routed: Vec<u8>,
}

impl Default for WorkerCtx {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerCtx {
    /// Fresh state.
    pub fn new() -> Self {
        WorkerCtx {
            generation: u64::MAX,
            rr: Vec::new(),
            norm: vec![0; 65_535],
            routed: vec![0; 65_535],
        }
    }
}

fn now_unix() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (d.as_secs() as u32, d.subsec_micros())
}

fn edits(e: &[Edit]) -> SmallVec<[ChunkEdit<'_>; 8]> {
    e.iter()
        .map(|e| match &e.value {
            Some(v) => ChunkEdit::Set { id: e.id, value: v },
            None => ChunkEdit::Delete { id: e.id },
        })
        .collect()
}

impl Engine {
    /// Builds the engine of `plan` over long-lived `destinations` (same order as the plan).
    pub fn new(
        plan: Plan,
        generation: u64,
        destinations: Vec<DestinationHandle>,
        stats: Arc<Stats>,
        epoch: Instant,
    ) -> Self {
        let now = Instant::now();
        let route_rt = |r: &RoutePlan| {
            let seeds = match &r.action {
                Action::Forward { targets, .. } => targets
                    .iter()
                    .map(|t| plan.destinations[*t].hash_seed)
                    .collect(),
                Action::Drop => Vec::new(),
            };
            RouteRt {
                plan: r.clone(),
                stats: stats.route(&r.name),
                seeds,
                dedup: r
                    .dedup
                    .map(|w| DedupCache::new(w, plan.engine.dedup_entries, now)),
            }
        };
        let routes = plan.routes.iter().map(route_rt).collect();
        let default = plan.default.as_ref().map(route_rt);
        let listeners = plan
            .listeners
            .iter()
            .map(|l| ListenerRt {
                auth_key: l.auth_key.clone(),
                allow: l.allow.clone(),
                stats: stats.listener(&l.name),
            })
            .collect();
        Engine {
            plan,
            generation,
            listeners,
            routes,
            default,
            destinations,
            stats,
            epoch,
        }
    }

    /// The counters of listener `idx`.
    pub fn listener_stats(&self, idx: usize) -> Option<&Arc<ListenerStats>> {
        self.listeners.get(idx).map(|l| &l.stats)
    }

    /// Milliseconds since the daemon started (the clock of destination health).
    pub fn clock_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a destination can take traffic now: TCP connected; UDP resolved and without
    /// an ICMP error within the hold-down.
    pub fn healthy(&self, dest: usize) -> bool {
        let Some(d) = self.destinations.get(dest) else {
            return false;
        };
        match d.plan.transport {
            Transport::Tcp => d.stats.connected.load(Relaxed),
            Transport::Udp => {
                let last = d.stats.last_error_ms.load(Relaxed);
                d.plan.resolved()
                    && (last == 0
                        || self.clock_ms().saturating_sub(last)
                            >= self.plan.engine.udp_error_holddown.as_millis() as u64)
            }
        }
    }

    /// Processes one packet received on listener `listener` from `sender`.
    pub fn process(
        &self,
        ctx: &mut WorkerCtx,
        listener: usize,
        sender: SocketAddr,
        data: &[u8],
        out: &mut Outbox,
    ) {
        if ctx.generation != self.generation {
            ctx.generation = self.generation;
            ctx.rr = vec![0; self.routes.len() + 1];
        }
        let Some(l) = self.listeners.get(listener) else {
            return;
        };
        if let Some(allow) = &l.allow
            && !allow
                .iter()
                .any(|n| n.contains(&sender.ip().to_canonical()))
        {
            l.stats.rejected_allow.fetch_add(1, Relaxed);
            return;
        }
        let WorkerCtx {
            rr, norm, routed, ..
        } = ctx;
        let packet = match HepPacket::parse(data) {
            Ok(HepPacket::V3(p)) => p,
            Ok(HepPacket::Legacy(legacy)) => {
                let encoded = legacy.to_hep3(now_unix()).encode(norm);
                match encoded.and_then(|n| Hep3::parse(&norm[..n])) {
                    Ok(p) => p,
                    Err(e) => return self.invalid(l, &e, data, out),
                }
            }
            Err(e) => return self.invalid(l, &e, data, out),
        };
        if let Some(key) = &l.auth_key {
            let ok = packet.auth_key() == Some(key.as_slice());
            if !ok {
                l.stats.rejected_auth.fetch_add(1, Relaxed);
                return;
            }
        }
        let facts = Facts::new(packet, sender.ip());
        let mut taken = false;
        for (i, r) in self.routes.iter().enumerate() {
            if !matcher::matches(&r.plan.matcher, &facts) {
                continue;
            }
            taken = true;
            self.apply(r, &mut rr[i], &facts, routed, out);
            if !r.plan.continue_ {
                break;
            }
        }
        if !taken {
            match &self.default {
                Some(d) => {
                    let slot = rr.len() - 1;
                    self.apply(d, &mut rr[slot], &facts, routed, out);
                }
                None => {
                    self.stats.global.unrouted.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn invalid(&self, l: &ListenerRt, e: &HepError, data: &[u8], out: &mut Outbox) {
        l.stats.parse_errors[parse_error_index(e.kind())].fetch_add(1, Relaxed);
        for d in &self.plan.invalid {
            out.push(*d, data);
        }
    }

    /// Runs a route that matched.
    fn apply(
        &self,
        r: &RouteRt,
        rr: &mut usize,
        facts: &Facts<'_>,
        routed: &mut [u8],
        out: &mut Outbox,
    ) {
        r.stats.matched.fetch_add(1, Relaxed);
        if let Some(ppm) = r.plan.sample_ppm
            && !sample_keep(facts.key_hash(), ppm)
        {
            r.stats.sampled_out.fetch_add(1, Relaxed);
            return;
        }
        if let Some(cache) = &r.dedup {
            match cache.check(dedup_key(facts.key_hash(), facts.payload), Instant::now()) {
                Seen::Duplicate => {
                    r.stats.deduplicated.fetch_add(1, Relaxed);
                    return;
                }
                Seen::FreshOverflow => {
                    r.stats.dedup_overflow.fetch_add(1, Relaxed);
                }
                Seen::Fresh => {}
            }
        }
        let Action::Forward { targets, mode } = &r.plan.action else {
            r.stats.dropped.fetch_add(1, Relaxed);
            return;
        };
        // Route rewrite once, shared by every copy.
        let packet = if r.plan.rewrite.is_empty() {
            facts.packet
        } else {
            match rewrite(&facts.packet, &edits(&r.plan.rewrite), routed)
                .and_then(|n| Hep3::parse(&routed[..n]))
            {
                Ok(p) => p,
                Err(_) => {
                    r.stats.rewrite_errors.fetch_add(1, Relaxed);
                    return;
                }
            }
        };
        let chosen: SmallVec<[usize; 8]> = match mode {
            ForwardMode::All => targets.iter().copied().collect(),
            ForwardMode::Hash => rendezvous_pick(facts.key_hash(), &r.seeds)
                .map(|i| targets[i])
                .into_iter()
                .collect(),
            ForwardMode::RoundRobin => {
                let t = targets[*rr % targets.len()];
                *rr = rr.wrapping_add(1);
                std::iter::once(t).collect()
            }
            ForwardMode::Failover => std::iter::once(
                targets
                    .iter()
                    .copied()
                    .find(|t| self.healthy(*t))
                    .unwrap_or(targets[0]),
            )
            .collect(),
        };
        for t in &chosen {
            self.emit(*t, &packet, out);
        }
        if r.stats.taps.load(Relaxed) > 0 {
            let names: SmallVec<[&str; 8]> = chosen
                .iter()
                .filter_map(|t| self.destinations.get(*t))
                .map(|d| d.plan.name.as_str())
                .collect();
            self.stats
                .tap
                .publish(&r.plan.name, packet.as_bytes(), &names);
        }
    }

    /// Queues one copy for a destination, converted to what it takes.
    fn emit(&self, dest: usize, packet: &Hep3<'_>, out: &mut Outbox) {
        let Some(d) = self.destinations.get(dest) else {
            return;
        };
        let res = if d.plan.hep_version == 2 {
            HepLegacy::from_hep3(packet).and_then(|l| out.push_with(dest, |buf| l.encode(buf)))
        } else if let Some(key) = &d.plan.set_auth_key {
            let set = [ChunkEdit::Set {
                id: ChunkId::generic(chunk::AUTH_KEY),
                value: key,
            }];
            out.push_with(dest, |buf| rewrite(packet, &set, buf))
        } else {
            out.push(dest, packet.as_bytes());
            Ok(())
        };
        if res.is_err() {
            d.stats.dropped_conversion.fetch_add(1, Relaxed);
        }
    }
}
