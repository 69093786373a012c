//! The daemon's counters: plain atomics updated on the hot path, read by one Prometheus
//! collector at scrape time.
//!
//! Counters are keyed by name, so a configuration reload keeps them (a route that keeps
//! its name keeps counting); after a reload the daemon [prunes](Stats::retain) the
//! listeners, routes and destinations the new configuration no longer names, so their
//! series leave `/metrics`. Every family carries a `path` label: `user` here; the XDP data
//! plane reports the same names with `path="xdp"`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use hep_common::abi::{DestCounter, RouteCounter};

/// Kinds of unparseable input, the `kind` label of `hepfwd_parse_errors_total`.
pub const PARSE_ERROR_KINDS: &[&str] = &[
    "truncated",
    "unknown_version",
    "length_mismatch",
    "truncated_chunk_header",
    "chunk_too_short",
    "chunk_past_end",
    "too_many_chunks",
    "bad_chunk_width",
    "bad_legacy_header",
    "missing_chunk",
    "mixed_families",
    "too_large",
    "buffer_too_small",
    "tcp_framing",
];

/// Index of a parse error kind in [`PARSE_ERROR_KINDS`].
pub fn parse_error_index(kind: &str) -> usize {
    PARSE_ERROR_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0)
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Datagrams received on UDP.
    pub received_udp: AtomicU64,
    /// Frames received on TCP.
    pub received_tcp: AtomicU64,
    /// Dropped: auth key missing or wrong.
    pub rejected_auth: AtomicU64,
    /// Dropped: sender not in `allow`.
    pub rejected_allow: AtomicU64,
    /// Unparseable, by kind.
    pub parse_errors: [AtomicU64; 14],
    /// TCP connections accepted.
    pub tcp_connections: AtomicU64,
    /// TCP connections open now (a gauge).
    pub tcp_open: AtomicU64,
    /// TCP connections refused at accept: `max_connections` were open.
    pub tcp_refused_max_connections: AtomicU64,
    /// TCP connections refused at accept: the sender is not in `allow`.
    pub tcp_refused_allow: AtomicU64,
    /// TCP connections closed because they sent nothing for `idle_timeout`.
    pub tcp_closed_idle: AtomicU64,
    /// TCP connections closed because a frame did not arrive whole within `frame_timeout`.
    pub tcp_closed_frame_timeout: AtomicU64,
    /// TLS handshakes completed on the `tls` address.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed, by reason ([`crate::tls::HANDSHAKE_FAILURES`]).
    pub tls_handshakes_failed: [AtomicU64; 4],
}

/// Counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Packets the route took.
    pub matched: AtomicU64,
    /// Packets dropped by `action = "drop"`.
    pub dropped: AtomicU64,
    /// Packets of calls the sampling left out.
    pub sampled_out: AtomicU64,
    /// Duplicates suppressed.
    pub deduplicated: AtomicU64,
    /// Duplicates the dedup memory could not remember (it was full).
    pub dedup_overflow: AtomicU64,
    /// Rewrites that failed (the packet would exceed 65535 bytes); the packet is dropped.
    pub rewrite_errors: AtomicU64,
    /// Taps open on the route (`super::tap`): the engine publishes only while > 0.
    pub taps: std::sync::atomic::AtomicU32,
}

/// Counters and state of one destination.
#[derive(Debug, Default)]
pub struct DestinationStats {
    /// Packets handed to the socket (UDP) or written (TCP, updated by the sink).
    pub sent: AtomicU64,
    /// Dropped: the TCP queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Dropped: the UDP send failed.
    pub dropped_send_error: AtomicU64,
    /// Dropped: the destination's host name has not resolved yet (UDP; a TCP sink keeps
    /// its queue and counts failed connection attempts).
    pub dropped_unresolved: AtomicU64,
    /// Host name lookups that failed (the last address, if any, is kept).
    pub resolve_failures: AtomicU64,
    /// Dropped: the packet could not be converted to HEPv2 (missing chunks).
    pub dropped_conversion: AtomicU64,
    /// Dropped: still queued when the shutdown drain timed out (or offered after it).
    pub dropped_shutdown: AtomicU64,
    /// TCP: refused because it was not exactly one HEPv3 frame (it would desynchronise the
    /// collector's stream), e.g. a raw unparseable packet sent to `[invalid]`.
    pub dropped_invalid: AtomicU64,
    /// TCP: given up because the connection ended and the kernel could not tell which of
    /// its written bytes the collector acknowledged.
    pub dropped_connection_lost: AtomicU64,
    /// Packets held by the TCP sink: queued, being written, or written and not yet
    /// acknowledged by the collector's TCP.
    pub queue_depth: AtomicU64,
    /// The bytes of those packets.
    pub queue_bytes: AtomicU64,
    /// TCP connections replaced because they stalled (no acknowledgement for
    /// `stall_timeout` with bytes outstanding).
    pub stalls: AtomicU64,
    /// TCP: connected. UDP: no ICMP error within the hold-down.
    pub connected: AtomicBool,
    /// TCP connections made after the first.
    pub reconnects: AtomicU64,
    /// TCP connection attempts that failed (TLS handshake failures included).
    pub connect_failures: AtomicU64,
    /// TLS: handshakes that failed, by reason ([`crate::tls::HANDSHAKE_FAILURES`]).
    pub tls_handshakes_failed: [AtomicU64; 4],
    /// UDP: milliseconds since daemon start of the last ICMP error (0: none).
    pub last_error_ms: AtomicU64,
    /// Spool: frames written to it (from the producers, or moved from the memory queue).
    pub spooled: AtomicU64,
    /// Spool: the bytes of those frames (payloads).
    pub spooled_bytes: AtomicU64,
    /// Spool: frames replayed and acknowledged by the collector's TCP (also in `sent`).
    pub replayed: AtomicU64,
    /// Spool: frames dropped because it was full (`max_bytes` or the disk): the oldest
    /// segment's (`drop-oldest`) or the new frame (`drop-newest`).
    pub dropped_spool_full: AtomicU64,
    /// Spool: frames refused because it could not be written (an I/O error other than a
    /// full disk).
    pub dropped_spool_error: AtomicU64,
    /// Spool: runs of corrupt bytes skipped when it was opened.
    pub spool_corrupt: AtomicU64,
    /// Spool: frames found in it when it was opened (spooled by an earlier run).
    pub spool_recovered: AtomicU64,
    /// Spool: frames in it not yet replayed and acknowledged (a gauge).
    pub spool_frames: AtomicU64,
    /// Spool: bytes of its segment files (a gauge).
    pub spool_bytes: AtomicU64,
    /// Spool: when its oldest frame was spooled, ms since the Unix epoch (0: empty).
    pub spool_oldest_ms: AtomicU64,
    /// Spool: new frames go to the spool (the destination is unreachable, its memory
    /// queue filled, or the spool is being replayed).
    pub spooling: AtomicBool,
    /// Whether the destination has a spool.
    pub has_spool: AtomicBool,
    /// The spool's `max_bytes`.
    pub spool_max_bytes: AtomicU64,
}

/// Daemon-wide counters.
#[derive(Debug, Default)]
pub struct GlobalStats {
    /// Packets no route took, with no `[default]`.
    pub unrouted: AtomicU64,
    /// Successful configuration reloads.
    pub reloads_ok: AtomicU64,
    /// Rejected configuration reloads.
    pub reloads_failed: AtomicU64,
}

/// All counters, by name.
#[derive(Debug, Default)]
pub struct Stats {
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    routes: Mutex<BTreeMap<String, Arc<RouteStats>>>,
    destinations: Mutex<BTreeMap<String, Arc<DestinationStats>>>,
    /// Daemon-wide counters.
    pub global: GlobalStats,
    /// The kernel data plane's counters, when it runs: read at each scrape and written into
    /// the same families with `path="xdp"`.
    xdp: Mutex<Option<Arc<dyn XdpSource>>>,
    /// The destinations of the running configuration and their health, for `/healthz`.
    health: Mutex<Option<Arc<dyn HealthSource>>>,
    /// Where the daemon is in its life ([`Phase`] as a number), for `/readyz`.
    phase: AtomicU8,
    /// The open taps (`GET /tap`).
    pub tap: Arc<super::tap::TapHub>,
}

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not yet listening (or, with the XDP data plane, not yet attached).
    Starting = 0,
    /// Listening (and attached).
    Ready = 1,
    /// Stopping: draining, then exiting.
    Stopping = 2,
}

impl Phase {
    /// The word `/healthz` and `/readyz` use.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
        }
    }
}

/// One destination of the running configuration and whether it can take traffic now.
#[derive(Debug, Clone)]
pub struct DestinationHealth {
    /// Its name.
    pub name: String,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// TCP: connected and not stalled. UDP: no ICMP error within the hold-down.
    pub up: bool,
    /// UDP: milliseconds since the last ICMP error, if there was one.
    pub since_error_ms: Option<u64>,
    /// Its counters.
    pub stats: Arc<DestinationStats>,
}

/// Where `/healthz` learns the running destinations (the current engine).
pub trait HealthSource: std::fmt::Debug + Send + Sync {
    /// Every destination of the running configuration, in configuration order.
    fn destinations(&self) -> Vec<DestinationHealth>;
}

/// One reading of the kernel data plane's counters (sums over CPUs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpReading {
    /// Every `hep_common::abi::XdpCounter`, by name, in index order.
    pub global: Vec<(&'static str, u64)>,
    /// Per route (current configuration): `hep_common::abi::RouteCounter` values.
    pub routes: Vec<(String, [u64; RouteCounter::COUNT])>,
    /// Per kernel destination: `hep_common::abi::DestCounter` values.
    pub destinations: Vec<(String, [u64; DestCounter::COUNT])>,
    /// The daemon's invalidations of the kernel's next-hop cache, by reason.
    pub next_hop_invalidations: Vec<(&'static str, u64)>,
}

/// Where [`XdpReading`]s come from (the running data plane).
pub trait XdpSource: std::fmt::Debug + Send + Sync {
    /// The counters now, `None` if they cannot be read.
    fn read(&self) -> Option<XdpReading>;
}

fn entry<T: Default>(map: &Mutex<BTreeMap<String, Arc<T>>>, name: &str) -> Arc<T> {
    let mut m = match map.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    m.entry(name.to_string()).or_default().clone()
}

fn snapshot<T>(map: &Mutex<BTreeMap<String, Arc<T>>>) -> Vec<(String, Arc<T>)> {
    let m = match map.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Stats {
    /// The counters of a listener (created on first use).
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        entry(&self.listeners, name)
    }

    /// The counters of a route (created on first use).
    pub fn route(&self, name: &str) -> Arc<RouteStats> {
        entry(&self.routes, name)
    }

    /// The counters of route `name` if the running configuration has it (a tap opens only
    /// on an existing route).
    pub fn existing_route(&self, name: &str) -> Option<Arc<RouteStats>> {
        match self.routes.lock() {
            Ok(m) => m.get(name).cloned(),
            Err(p) => p.into_inner().get(name).cloned(),
        }
    }

    /// The counters of a destination (created on first use).
    pub fn destination(&self, name: &str) -> Arc<DestinationStats> {
        entry(&self.destinations, name)
    }

    /// Every destination's state, for `/healthz`.
    pub fn destinations(&self) -> Vec<(String, Arc<DestinationStats>)> {
        snapshot(&self.destinations)
    }

    /// Drops the counters of every listener, route and destination not named here (the
    /// ones a reload removed), so their series leave `/metrics`; the others keep theirs.
    pub fn retain(&self, listeners: &[&str], routes: &[&str], destinations: &[&str]) {
        fn keep<T>(map: &Mutex<BTreeMap<String, Arc<T>>>, names: &[&str]) {
            let mut m = match map.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            m.retain(|k, _| names.contains(&k.as_str()));
        }
        keep(&self.listeners, listeners);
        keep(&self.routes, routes);
        keep(&self.destinations, destinations);
    }

    /// Sets the source of `/healthz`'s destinations (the running engine).
    pub fn set_health(&self, src: Option<Arc<dyn HealthSource>>) {
        match self.health.lock() {
            Ok(mut g) => *g = src,
            Err(p) => *p.into_inner() = src,
        }
    }

    /// The running destinations and their health (none before the daemon started).
    pub fn health(&self) -> Vec<DestinationHealth> {
        let src = match self.health.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        src.map(|s| s.destinations()).unwrap_or_default()
    }

    /// Records where the daemon is in its life.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
    }

    /// Where the daemon is in its life.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            1 => Phase::Ready,
            2 => Phase::Stopping,
            _ => Phase::Starting,
        }
    }

    /// Sets (or clears) the kernel data plane whose counters `/metrics` shows.
    pub fn set_xdp(&self, src: Option<Arc<dyn XdpSource>>) {
        match self.xdp.lock() {
            Ok(mut g) => *g = src,
            Err(p) => *p.into_inner() = src,
        }
    }

    fn xdp_reading(&self) -> Option<XdpReading> {
        let src = match self.xdp.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        src?.read()
    }
}

/// Names of [`RouteCounter`]s, in order (the `outcome` label).
const ROUTE_OUTCOMES: [&str; RouteCounter::COUNT] = [
    "matched",
    "dropped",
    "sampled_out",
    "steered",
    "mirrored",
    "passed",
];
/// Names of [`DestCounter`]s, in order.
const DEST_OUTCOMES: [&str; DestCounter::COUNT] = ["sent", "fallback", "failed"];

/// One metric family being written: its samples as (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, v: u64) {
        self.samples.push((labels, v));
    }

    fn encode(self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut me = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in &self.samples {
            let fe = me.encode_family(labels)?;
            match self.kind {
                MetricType::Gauge => ConstGauge::new(*v as i64).encode(fe)?,
                _ => ConstCounter::new(*v).encode(fe)?,
            }
        }
        Ok(())
    }
}

fn path() -> (&'static str, String) {
    ("path", "user".to_string())
}

fn xdp_path() -> (&'static str, String) {
    ("path", "xdp".to_string())
}

/// Writes every counter of [`Stats`] on each scrape.
#[derive(Debug)]
pub struct StatsCollector(pub Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        let mut received = Family::new("hepfwd_received", "HEP packets received", Counter);
        let mut parse = Family::new(
            "hepfwd_parse_errors",
            "Unparseable packets, by kind (dropped, or sent raw to [invalid])",
            Counter,
        );
        let mut rejected = Family::new(
            "hepfwd_rejected",
            "Packets rejected by a listener's auth_key or allow list",
            Counter,
        );
        let mut conns = Family::new(
            "hepfwd_tcp_connections",
            "TCP connections accepted",
            Counter,
        );
        let mut conns_open = Family::new(
            "hepfwd_tcp_connections_open",
            "TCP connections open now",
            Gauge,
        );
        let mut conns_refused = Family::new(
            "hepfwd_tcp_connections_refused",
            "TCP connections refused at accept, by reason",
            Counter,
        );
        let mut conns_closed = Family::new(
            "hepfwd_tcp_connections_closed",
            "TCP connections the daemon closed, by reason",
            Counter,
        );
        let mut tls_ok = Family::new(
            "hepfwd_tls_handshakes",
            "TLS handshakes completed by a listener",
            Counter,
        );
        let mut tls_failed = Family::new(
            "hepfwd_tls_handshakes_failed",
            "TLS handshakes a listener saw fail, by reason",
            Counter,
        );
        for (name, l) in snapshot(&s.listeners) {
            let base = || vec![("listener", name.clone()), path()];
            tls_ok.add(base(), l.tls_handshakes.load(Relaxed));
            for (reason, v) in crate::tls::HANDSHAKE_FAILURES
                .iter()
                .zip(&l.tls_handshakes_failed)
            {
                let mut lb = base();
                lb.push(("reason", reason.to_string()));
                tls_failed.add(lb, v.load(Relaxed));
            }
            for (t, v) in [("udp", &l.received_udp), ("tcp", &l.received_tcp)] {
                let mut lb = base();
                lb.push(("transport", t.to_string()));
                received.add(lb, v.load(Relaxed));
            }
            for (kind, v) in PARSE_ERROR_KINDS.iter().zip(&l.parse_errors) {
                let n = v.load(Relaxed);
                if n > 0 {
                    let mut lb = base();
                    lb.push(("kind", kind.to_string()));
                    parse.add(lb, n);
                }
            }
            for (reason, v) in [("auth", &l.rejected_auth), ("allow", &l.rejected_allow)] {
                let mut lb = base();
                lb.push(("reason", reason.to_string()));
                rejected.add(lb, v.load(Relaxed));
            }
            conns.add(base(), l.tcp_connections.load(Relaxed));
            conns_open.add(base(), l.tcp_open.load(Relaxed));
            for (reason, v) in [
                ("max_connections", &l.tcp_refused_max_connections),
                ("allow", &l.tcp_refused_allow),
            ] {
                let mut lb = base();
                lb.push(("reason", reason.to_string()));
                conns_refused.add(lb, v.load(Relaxed));
            }
            for (reason, v) in [
                ("idle_timeout", &l.tcp_closed_idle),
                ("frame_timeout", &l.tcp_closed_frame_timeout),
            ] {
                let mut lb = base();
                lb.push(("reason", reason.to_string()));
                conns_closed.add(lb, v.load(Relaxed));
            }
        }
        let mut matched = Family::new("hepfwd_route_matches", "Packets a route took", Counter);
        let mut dropped = Family::new(
            "hepfwd_route_dropped",
            "Packets dropped by a drop route",
            Counter,
        );
        let mut sampled = Family::new(
            "hepfwd_sampled_out",
            "Packets of calls left out by sampling",
            Counter,
        );
        let mut dedup = Family::new(
            "hepfwd_deduplicated",
            "Duplicate packets suppressed",
            Counter,
        );
        let mut dedup_of = Family::new(
            "hepfwd_dedup_overflow",
            "Packets the full dedup memory could not remember",
            Counter,
        );
        let mut rw = Family::new(
            "hepfwd_rewrite_errors",
            "Packets dropped because a rewrite failed",
            Counter,
        );
        for (name, r) in snapshot(&s.routes) {
            let lb = || vec![("route", name.clone()), path()];
            matched.add(lb(), r.matched.load(Relaxed));
            dropped.add(lb(), r.dropped.load(Relaxed));
            sampled.add(lb(), r.sampled_out.load(Relaxed));
            dedup.add(lb(), r.deduplicated.load(Relaxed));
            dedup_of.add(lb(), r.dedup_overflow.load(Relaxed));
            rw.add(lb(), r.rewrite_errors.load(Relaxed));
        }
        let mut sent = Family::new(
            "hepfwd_destination_sent",
            "Packets sent to a destination",
            Counter,
        );
        let mut ddrop = Family::new(
            "hepfwd_destination_dropped",
            "Packets for a destination that were dropped, by reason",
            Counter,
        );
        let mut depth = Family::new(
            "hepfwd_destination_queue_depth",
            "Packets held by a TCP destination: queued or not yet acknowledged",
            Gauge,
        );
        let mut depth_bytes = Family::new(
            "hepfwd_destination_queue_bytes",
            "Bytes of the packets held by a TCP destination",
            Gauge,
        );
        let mut stalls = Family::new(
            "hepfwd_destination_stalls",
            "TCP connections replaced because the collector stopped acknowledging",
            Counter,
        );
        let mut up = Family::new(
            "hepfwd_destination_connected",
            "1 when a TCP destination is connected or a UDP one saw no recent ICMP error",
            Gauge,
        );
        let mut reconn = Family::new(
            "hepfwd_destination_reconnects",
            "TCP reconnections",
            Counter,
        );
        let mut cfail = Family::new(
            "hepfwd_destination_connect_failures",
            "Failed TCP connection attempts",
            Counter,
        );
        let mut spooled = Family::new(
            "hepfwd_destination_spooled",
            "Packets written to a destination's disk spool",
            Counter,
        );
        let mut spooled_bytes = Family::new(
            "hepfwd_destination_spooled_bytes",
            "Bytes of the packets written to a destination's disk spool",
            Counter,
        );
        let mut replayed = Family::new(
            "hepfwd_destination_spool_replayed",
            "Packets replayed from a destination's spool and acknowledged by the collector",
            Counter,
        );
        let mut corrupt = Family::new(
            "hepfwd_destination_spool_corrupt_records",
            "Runs of corrupt bytes skipped in a destination's spool when it was opened",
            Counter,
        );
        let mut recovered = Family::new(
            "hepfwd_destination_spool_recovered",
            "Packets found in a destination's spool when it was opened",
            Counter,
        );
        let mut spool_frames = Family::new(
            "hepfwd_destination_spool_frames",
            "Packets in a destination's spool not yet replayed and acknowledged",
            Gauge,
        );
        let mut spool_bytes = Family::new(
            "hepfwd_destination_spool_bytes",
            "Bytes of a destination's spool segment files",
            Gauge,
        );
        let mut spool_age = Family::new(
            "hepfwd_destination_spool_oldest_age_seconds",
            "Age of the oldest packet in a destination's spool (0 when empty)",
            Gauge,
        );
        let mut spooling = Family::new(
            "hepfwd_destination_spooling",
            "1 while new packets for a destination go to its spool",
            Gauge,
        );
        let mut spool_max = Family::new(
            "hepfwd_destination_spool_max_bytes",
            "A destination's spool `max_bytes`",
            Gauge,
        );
        let mut rfail = Family::new(
            "hepfwd_destination_resolve_failures",
            "Failed lookups of a destination's host name (the last address stays)",
            Counter,
        );
        let mut dtls_failed = Family::new(
            "hepfwd_destination_tls_handshakes_failed",
            "TLS handshakes with a destination that failed, by reason",
            Counter,
        );
        for (name, d) in snapshot(&s.destinations) {
            let lb = || vec![("destination", name.clone()), path()];
            for (reason, v) in crate::tls::HANDSHAKE_FAILURES
                .iter()
                .zip(&d.tls_handshakes_failed)
            {
                let mut l = lb();
                l.push(("reason", reason.to_string()));
                dtls_failed.add(l, v.load(Relaxed));
            }
            sent.add(lb(), d.sent.load(Relaxed));
            for (reason, v) in [
                ("queue_full", &d.dropped_queue_full),
                ("send_error", &d.dropped_send_error),
                ("unresolved", &d.dropped_unresolved),
                ("conversion", &d.dropped_conversion),
                ("shutdown", &d.dropped_shutdown),
                ("invalid_frame", &d.dropped_invalid),
                ("connection_lost", &d.dropped_connection_lost),
            ]
            .into_iter()
            .chain(
                [
                    ("spool_full", &d.dropped_spool_full),
                    ("spool_error", &d.dropped_spool_error),
                ]
                .into_iter()
                .filter(|_| d.has_spool.load(Relaxed)),
            ) {
                let mut l = lb();
                l.push(("reason", reason.to_string()));
                ddrop.add(l, v.load(Relaxed));
            }
            depth.add(lb(), d.queue_depth.load(Relaxed));
            depth_bytes.add(lb(), d.queue_bytes.load(Relaxed));
            stalls.add(lb(), d.stalls.load(Relaxed));
            up.add(lb(), u64::from(d.connected.load(Relaxed)));
            reconn.add(lb(), d.reconnects.load(Relaxed));
            cfail.add(lb(), d.connect_failures.load(Relaxed));
            if d.has_spool.load(Relaxed) {
                spooled.add(lb(), d.spooled.load(Relaxed));
                spooled_bytes.add(lb(), d.spooled_bytes.load(Relaxed));
                replayed.add(lb(), d.replayed.load(Relaxed));
                corrupt.add(lb(), d.spool_corrupt.load(Relaxed));
                recovered.add(lb(), d.spool_recovered.load(Relaxed));
                spool_frames.add(lb(), d.spool_frames.load(Relaxed));
                spool_bytes.add(lb(), d.spool_bytes.load(Relaxed));
                let oldest = d.spool_oldest_ms.load(Relaxed);
                let age = if oldest == 0 {
                    0
                } else {
                    crate::io::spool::now_ms().saturating_sub(oldest) / 1000
                };
                spool_age.add(lb(), age);
                spooling.add(lb(), u64::from(d.spooling.load(Relaxed)));
                spool_max.add(lb(), d.spool_max_bytes.load(Relaxed));
            }
            rfail.add(lb(), d.resolve_failures.load(Relaxed));
        }
        let mut unrouted = Family::new(
            "hepfwd_unrouted",
            "Packets no route took, with no [default]",
            Counter,
        );
        unrouted.add(vec![path()], s.global.unrouted.load(Relaxed));
        let mut reloads = Family::new(
            "hepfwd_config_reloads",
            "Configuration reloads, by result",
            Counter,
        );
        reloads.add(
            vec![("result", "ok".into()), path()],
            s.global.reloads_ok.load(Relaxed),
        );
        reloads.add(
            vec![("result", "error".into()), path()],
            s.global.reloads_failed.load(Relaxed),
        );
        let mut xdp_packets = Family::new(
            "hepfwd_xdp_packets",
            "Packets the XDP program saw, by outcome, decision and action",
            Counter,
        );
        let mut xdp_routes = Family::new(
            "hepfwd_xdp_route_packets",
            "Packets a route decided in the kernel, by outcome",
            Counter,
        );
        let mut xdp_dests = Family::new(
            "hepfwd_xdp_destination_packets",
            "Packets the kernel sent to a destination, or passed up because it could not",
            Counter,
        );
        let mut xdp_invalidations = Family::new(
            "hepfwd_xdp_next_hop_invalidations",
            "Invalidations of the kernel's next-hop cache, by reason (install, netlink, overflow)",
            Counter,
        );
        if let Some(x) = s.xdp_reading() {
            for (reason, v) in &x.next_hop_invalidations {
                xdp_invalidations.add(vec![("reason", reason.to_string()), xdp_path()], *v);
            }
            for (name, v) in &x.global {
                xdp_packets.add(vec![("counter", name.to_string()), xdp_path()], *v);
            }
            for (name, v) in &x.routes {
                let lb = || vec![("route", name.clone()), xdp_path()];
                // The kernel counts a match only where it acted; a route it passed up is
                // counted by userspace, so the two paths add up without counting twice.
                matched.add(lb(), v[RouteCounter::Matched as usize]);
                dropped.add(lb(), v[RouteCounter::Dropped as usize]);
                sampled.add(lb(), v[RouteCounter::SampledOut as usize]);
                for (i, outcome) in ROUTE_OUTCOMES.iter().enumerate() {
                    let mut l = lb();
                    l.push(("outcome", outcome.to_string()));
                    xdp_routes.add(l, v[i]);
                }
            }
            for (name, v) in &x.destinations {
                let lb = || vec![("destination", name.clone()), xdp_path()];
                sent.add(lb(), v[DestCounter::Sent as usize]);
                for (i, outcome) in DEST_OUTCOMES.iter().enumerate() {
                    let mut l = lb();
                    l.push(("outcome", outcome.to_string()));
                    xdp_dests.add(l, v[i]);
                }
            }
        }
        for f in [
            received,
            parse,
            rejected,
            conns,
            conns_open,
            conns_refused,
            conns_closed,
            tls_ok,
            tls_failed,
            matched,
            dropped,
            sampled,
            dedup,
            dedup_of,
            rw,
            sent,
            ddrop,
            depth,
            depth_bytes,
            stalls,
            up,
            reconn,
            cfail,
            spooled,
            spooled_bytes,
            replayed,
            corrupt,
            recovered,
            spool_frames,
            spool_bytes,
            spool_age,
            spooling,
            spool_max,
            rfail,
            dtls_failed,
            unrouted,
            reloads,
            xdp_packets,
            xdp_routes,
            xdp_dests,
            xdp_invalidations,
        ] {
            if !f.samples.is_empty() || !f.name.starts_with("hepfwd_xdp_") {
                f.encode(&mut encoder)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fake(XdpReading);

    impl XdpSource for Fake {
        fn read(&self) -> Option<XdpReading> {
            Some(self.0.clone())
        }
    }

    fn render(stats: Arc<Stats>) -> String {
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(StatsCollector(stats)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn xdp_counters_join_the_user_families_with_path_xdp() {
        let stats = Arc::new(Stats::default());
        stats.route("calls").matched.fetch_add(3, Relaxed);
        stats.destination("a").sent.fetch_add(5, Relaxed);
        let without = render(stats.clone());
        assert!(!without.contains("path=\"xdp\""), "{without}");
        assert!(!without.contains("hepfwd_xdp_"), "{without}");

        let mut routes = [0u64; RouteCounter::COUNT];
        routes[RouteCounter::Matched as usize] = 7;
        routes[RouteCounter::Steered as usize] = 6;
        routes[RouteCounter::SampledOut as usize] = 1;
        let mut dests = [0u64; DestCounter::COUNT];
        dests[DestCounter::Sent as usize] = 6;
        dests[DestCounter::Fallback as usize] = 2;
        dests[DestCounter::Failed as usize] = 1;
        stats.set_xdp(Some(Arc::new(Fake(XdpReading {
            global: vec![("received", 11), ("steered", 6)],
            routes: vec![("calls".into(), routes)],
            destinations: vec![("a".into(), dests)],
            next_hop_invalidations: vec![("install", 1), ("netlink", 3), ("overflow", 0)],
        }))));
        let text = render(stats.clone());
        for line in [
            "hepfwd_route_matches_total{route=\"calls\",path=\"user\"} 3",
            "hepfwd_route_matches_total{route=\"calls\",path=\"xdp\"} 7",
            "hepfwd_sampled_out_total{route=\"calls\",path=\"xdp\"} 1",
            "hepfwd_destination_sent_total{destination=\"a\",path=\"user\"} 5",
            "hepfwd_destination_sent_total{destination=\"a\",path=\"xdp\"} 6",
            "hepfwd_xdp_packets_total{counter=\"steered\",path=\"xdp\"} 6",
            "hepfwd_xdp_route_packets_total{route=\"calls\",path=\"xdp\",outcome=\"steered\"} 6",
            "hepfwd_xdp_destination_packets_total{destination=\"a\",path=\"xdp\",outcome=\"fallback\"} 2",
            "hepfwd_xdp_destination_packets_total{destination=\"a\",path=\"xdp\",outcome=\"failed\"} 1",
            "hepfwd_xdp_next_hop_invalidations_total{reason=\"netlink\",path=\"xdp\"} 3",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        // One descriptor per family, whatever the paths.
        assert_eq!(
            text.matches("# TYPE hepfwd_route_matches counter").count(),
            1
        );
        stats.set_xdp(None);
        assert!(!render(stats).contains("path=\"xdp\""));
    }

    #[test]
    fn retain_drops_the_series_of_removed_names_and_keeps_the_others_counts() {
        let stats = Arc::new(Stats::default());
        stats.listener("l1").received_udp.fetch_add(1, Relaxed);
        stats.listener("l2").received_udp.fetch_add(1, Relaxed);
        stats.route("r1").matched.fetch_add(4, Relaxed);
        stats.route("r2").matched.fetch_add(1, Relaxed);
        stats.destination("d1").sent.fetch_add(4, Relaxed);
        stats.destination("d2").sent.fetch_add(1, Relaxed);
        stats.retain(&["l1"], &["r1"], &["d1"]);
        let text = render(stats.clone());
        for gone in ["\"l2\"", "\"r2\"", "\"d2\""] {
            assert!(!text.contains(gone), "{gone} still in:\n{text}");
        }
        for line in [
            "hepfwd_route_matches_total{route=\"r1\",path=\"user\"} 4",
            "hepfwd_destination_sent_total{destination=\"d1\",path=\"user\"} 4",
            "hepfwd_received_total{listener=\"l1\",path=\"user\",transport=\"udp\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
