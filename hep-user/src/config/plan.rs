//! The compiled configuration: names resolved to indices, addresses and prefixes parsed,
//! values encoded. This is what the engine (and the XDP loader) run from.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hep_common::chunk::ChunkId;
use ipnet::IpNet;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file it came from.
    pub source: PathBuf,
    /// HTTP address for `/metrics`, `/healthz` and `/readyz`.
    pub admin: Option<SocketAddr>,
    /// `[admin] tap`: the admin server answers `GET /tap` (off by default).
    pub admin_tap: bool,
    /// Where HEP is received.
    pub listeners: Vec<ListenerPlan>,
    /// Where HEP is sent.
    pub destinations: Vec<DestinationPlan>,
    /// Routes, in order.
    pub routes: Vec<RoutePlan>,
    /// What happens to packets no route took (`None`: dropped and counted as unrouted).
    pub default: Option<RoutePlan>,
    /// Destinations that receive unparseable packets unchanged (empty: dropped, counted).
    pub invalid: Vec<usize>,
    /// Engine tuning.
    pub engine: EngineTuning,
    /// The kernel data plane.
    pub xdp: XdpPlan,
    /// How destinations' host names are resolved.
    pub resolver: ResolverPlan,
}

/// `[resolver]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverPlan {
    /// Where names are looked up.
    pub resolver: crate::resolve::Resolver,
    /// How often names are resolved again (and, while a named destination is down, every
    /// second).
    pub interval: Duration,
}

/// The default of `resolve_interval`.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

impl Default for ResolverPlan {
    fn default() -> Self {
        ResolverPlan {
            resolver: crate::resolve::Resolver::System,
            interval: DEFAULT_RESOLVE_INTERVAL,
        }
    }
}

/// A listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPlan {
    /// Name (metrics label).
    pub name: String,
    /// UDP address.
    pub udp: Option<SocketAddr>,
    /// TCP address.
    pub tcp: Option<SocketAddr>,
    /// Packets without exactly this chunk 0x000e are dropped and counted.
    pub auth_key: Option<Vec<u8>>,
    /// Only senders inside these prefixes are accepted (`None`: everyone); on TCP,
    /// checked when a connection is accepted too.
    pub allow: Option<Vec<IpNet>>,
    /// TCP: connections open at once; more are refused (closed at accept) and counted.
    pub max_connections: usize,
    /// TCP: a connection that sends nothing for this long is closed and counted.
    pub idle_timeout: Duration,
    /// TCP: how long one frame may take to arrive whole (slowloris), from its first byte.
    pub frame_timeout: Duration,
    /// TLS address: the same guards as `tcp`, behind a TLS handshake.
    pub tls: Option<SocketAddr>,
    /// The TLS configuration of `tls` (present exactly when `tls` is).
    pub tls_config: Option<ListenerTls>,
}

/// The TLS side of a listener: what its files held when the configuration was compiled.
#[derive(Clone)]
pub struct ListenerTls {
    /// The rustls configuration (certificate, key, client verifier).
    pub config: Arc<rustls::ServerConfig>,
    /// Whether a client certificate is required (`tls_client_ca`).
    pub client_auth: bool,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// The files it was read from (certificate, key, client CA).
    pub files: Vec<PathBuf>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("client_auth", &self.client_auth)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Equal when configured alike (the same files, not necessarily the same contents).
impl PartialEq for ListenerTls {
    fn eq(&self, other: &Self) -> bool {
        self.client_auth == other.client_auth
            && self.handshake_timeout == other.handshake_timeout
            && self.files == other.files
    }
}

impl Eq for ListenerTls {}

/// The TLS side of a destination (`transport = "tls"`): what its files held when the
/// configuration was compiled.
#[derive(Clone)]
pub struct DestinationTls {
    /// The rustls configuration (trust anchors, client certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the collector's certificate must carry.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// The files it was read from (CA, certificate, key).
    pub files: Vec<PathBuf>,
}

impl fmt::Debug for DestinationTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DestinationTls")
            .field("server_name", &self.server_name)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Equal when configured alike (the same files, not necessarily the same contents).
impl PartialEq for DestinationTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name && self.files == other.files
    }
}

impl Eq for DestinationTls {}

/// Transport of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One HEP packet per datagram.
    Udp,
    /// A stream of HEPv3 packets (over TLS when the destination has `tls`).
    Tcp,
}

impl Transport {
    /// Whether frames go over a byte stream (a TCP connection, with or without TLS):
    /// the transports a spool can serve.
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp)
    }
}

/// A destination (collector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPlan {
    /// Name (metrics label).
    pub name: String,
    /// Collector address: the configured one, or what `host` resolved to; unresolved, the
    /// unspecified address with the port ([`DestinationPlan::resolved`] is false).
    pub address: SocketAddr,
    /// The host name of `address = "host:port"` (`None`: an IP address was given).
    pub host: Option<crate::resolve::HostName>,
    /// UDP or TCP.
    pub transport: Transport,
    /// 3, or 2 for old collectors (UDP only).
    pub hep_version: u8,
    /// Written into chunk 0x000e on the way out (HEPv3 only).
    pub set_auth_key: Option<Vec<u8>>,
    /// TCP: packets queued while the collector is slow or away; more are dropped, counted.
    pub queue: usize,
    /// TCP: bytes queued at most; a packet that does not fit is dropped, counted.
    pub queue_bytes: usize,
    /// TCP: a connection whose written bytes see no acknowledgement this long is stalled:
    /// reported down and replaced.
    pub stall_timeout: Duration,
    /// Stream transports: the disk spool, if configured (its `dir` is the destination's
    /// own subdirectory).
    pub spool: Option<crate::io::spool::SpoolOptions>,
    /// Stable seed of this destination in call-sticky hashing (from its name).
    pub hash_seed: u64,
    /// `transport = "tls"`: a TCP destination whose stream is TLS.
    pub tls: Option<DestinationTls>,
}

/// How a route spreads packets over its destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    /// A copy to every destination (mirror).
    All,
    /// One destination per call: rendezvous hashing of the correlation key.
    Hash,
    /// Destinations in turn.
    RoundRobin,
    /// The first healthy destination.
    Failover,
}

impl ForwardMode {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMode::All => "all",
            ForwardMode::Hash => "hash",
            ForwardMode::RoundRobin => "round-robin",
            ForwardMode::Failover => "failover",
        }
    }
}

/// What a route does with the packets it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Drop them (counted).
    Drop,
    /// Send them on.
    Forward {
        /// Destination indices, in configuration order.
        targets: Vec<usize>,
        /// How to choose among them.
        mode: ForwardMode,
    },
}

/// One chunk edit: set to a value, or delete (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The chunk.
    pub id: ChunkId,
    /// The new value, encoded; `None` deletes.
    pub value: Option<Vec<u8>>,
}

/// Tests on the correlation key; every list given must have a match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorrelationMatcher {
    /// Whole key equals one of these.
    pub exact: Vec<Vec<u8>>,
    /// Key starts with one of these.
    pub prefix: Vec<Vec<u8>>,
    /// Key ends with one of these.
    pub suffix: Vec<Vec<u8>>,
    /// The part after the last `@` equals one of these.
    pub domain: Vec<Vec<u8>>,
}

/// A route's match keys; every key given must match, and within a key any value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    /// Protocol types.
    pub proto: Option<Vec<u8>>,
    /// Capture id ranges.
    pub capture_id: Option<Vec<RangeInclusive<u32>>>,
    /// Node names.
    pub node_name: Option<Vec<Vec<u8>>>,
    /// Sender prefixes.
    pub source: Option<Vec<IpNet>>,
    /// Inner source prefixes.
    pub inner_src: Option<Vec<IpNet>>,
    /// Inner destination prefixes.
    pub inner_dst: Option<Vec<IpNet>>,
    /// Inner port ranges (source or destination port).
    pub inner_port: Option<Vec<RangeInclusive<u16>>>,
    /// Correlation key tests.
    pub correlation: Option<CorrelationMatcher>,
    /// SIP request methods: bit `i` for `hep_common::sip::METHODS[i]`.
    pub sip_method: Option<u32>,
    /// SIP response status ranges.
    pub sip_status: Option<Vec<RangeInclusive<u16>>>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Name (metrics label).
    pub name: String,
    /// What it takes.
    pub matcher: Matcher,
    /// What it does.
    pub action: Action,
    /// Chunk edits applied to what it forwards.
    pub rewrite: Vec<Edit>,
    /// Keep only calls whose correlation hash falls below this, in millionths.
    pub sample_ppm: Option<u32>,
    /// Drop packets identical to one seen this recently.
    pub dedup: Option<Duration>,
    /// Go on with the next routes.
    pub continue_: bool,
}

/// Engine tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTuning {
    /// UDP worker threads.
    pub workers: usize,
    /// Datagrams per system call.
    pub batch: usize,
    /// Receive buffer per UDP socket.
    pub recv_buffer: usize,
    /// Capacity of the dedup memory.
    pub dedup_entries: usize,
    /// How long an ICMP error keeps a UDP destination unhealthy.
    pub udp_error_holddown: Duration,
    /// How long SIGTERM waits for TCP queues to drain.
    pub drain_timeout: Duration,
    /// listen(2) backlog of the HEP TCP listeners: connections the kernel completes before
    /// the daemon accepts them.
    pub listen_backlog: u32,
}

/// How XDP attaches to an interface (`[xdp] attach`, and [`crate::xdp::XdpProgram::attach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) XDP, veth and most NICs: the fast one; fails if the driver has no
    /// XDP support.
    #[default]
    Native,
    /// Generic (skb) XDP, in the stack: works on any interface, after the skb is allocated
    /// (slower).
    Skb,
}

impl AttachMode {
    /// The name used in configuration and messages (`native`, `skb`).
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" | "driver" | "drv" => Ok(AttachMode::Native),
            "skb" | "generic" => Ok(AttachMode::Skb),
            other => Err(format!(
                "unknown XDP mode {other:?}: expected \"native\" or \"skb\""
            )),
        }
    }
}

/// The kernel data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpPlan {
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub attach: AttachMode,
}

impl DestinationPlan {
    /// Whether `address` is a collector's address (an IP given, or a host name resolved).
    pub fn resolved(&self) -> bool {
        !self.address.ip().is_unspecified()
    }

    /// The address as configured (`host:port` or `IP:port`), for logs and errors.
    pub fn configured_address(&self) -> String {
        match &self.host {
            Some(h) => h.to_string(),
            None => self.address.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_mode_parses_and_prints() {
        assert_eq!("native".parse(), Ok(AttachMode::Native));
        assert_eq!("driver".parse(), Ok(AttachMode::Native));
        assert_eq!("skb".parse(), Ok(AttachMode::Skb));
        assert_eq!("generic".parse(), Ok(AttachMode::Skb));
        assert!("offload".parse::<AttachMode>().is_err());
        assert_eq!(AttachMode::default(), AttachMode::Native);
        assert_eq!(AttachMode::Skb.to_string(), "skb");
    }
}
