//! Validation of a [`ConfigFile`] and its compilation into a [`Plan`].

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hep_common::chunk::{self, ChunkId, ValueType, proto};
use ipnet::IpNet;
use toml::Spanned;

use super::error::{ConfigErrors, Reporter, field_path};
use super::plan::*;
use super::schema::*;
use crate::io::spool::{OnFull, SpoolOptions};

/// Defaults that are not spelled out in the file.
pub mod defaults {
    /// TCP destination queue, packets.
    pub const TCP_QUEUE: usize = 10_000;
    /// TCP destination queue, bytes.
    pub const TCP_QUEUE_BYTES: usize = crate::io::tcp_sink::DEFAULT_QUEUE_BYTES;
    /// Smallest `queue_bytes`: one frame of the largest size.
    pub const MIN_QUEUE_BYTES: i64 = 65_536;
    /// Largest `queue_bytes`.
    pub const MAX_QUEUE_BYTES: i64 = 1 << 40;
    /// TCP stall timeout, milliseconds.
    pub const STALL_TIMEOUT_MS: u64 = 10_000;
    /// Datagrams per recvmmsg/sendmmsg.
    pub const BATCH: usize = 32;
    /// UDP receive buffer, bytes.
    pub const RECV_BUFFER: usize = 8 << 20;
    /// Dedup memory, packets.
    pub const DEDUP_ENTRIES: usize = 1 << 20;
    /// ICMP error hold-down, milliseconds.
    pub const UDP_ERROR_HOLDDOWN_MS: u64 = 5_000;
    /// SIGTERM drain bound, milliseconds.
    pub const DRAIN_TIMEOUT_MS: u64 = 5_000;
    /// listen(2) backlog of the HEP TCP listeners.
    pub const LISTEN_BACKLOG: usize = 1024;
    /// Longest dedup window, milliseconds.
    pub const MAX_DEDUP_MS: u64 = 60_000;
    /// TCP listener: connections open at once.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// TCP listener: idle connections are closed after this many milliseconds.
    pub const IDLE_TIMEOUT_MS: u64 = 300_000;
    /// TCP listener: a frame must arrive whole within this many milliseconds of its first
    /// byte (a slowloris client trickling one frame is closed).
    pub const FRAME_TIMEOUT_MS: u64 = 30_000;
    /// TLS listener: a handshake not finished after this many milliseconds fails.
    pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
}

/// Reads, validates and compiles a configuration file.
///
/// The file is read only if it is a regular file of at most
/// [`super::file::MAX_CONFIG_BYTES`], without blocking (see [`super::file`]).
pub fn load(path: &Path) -> Result<Plan, ConfigErrors> {
    match super::file::read_config_file(path) {
        Ok(src) => compile(path, &src),
        Err(e) => Err(ConfigErrors(vec![super::error::ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
            hint: None,
        }])),
    }
}

/// Validates and compiles configuration text; `path` is used in error messages.
pub fn compile(path: &Path, src: &str) -> Result<Plan, ConfigErrors> {
    let mut r = Reporter::new(path, src);
    // The parser knows where it was: the span of the value (from `toml`) and the field path
    // (from `serde_path_to_error`).
    let file: ConfigFile = match serde_path_to_error::deserialize(toml::Deserializer::new(src)) {
        Ok(f) => f,
        Err(e) => {
            let field = field_path(e.path());
            let e = e.into_inner();
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            let hint = if message.contains("unknown field") {
                Some("check the spelling; the fields this section takes are listed above".into())
            } else if message.contains("invalid type") {
                Some(
                    "check the value's type (quoted string, number, list [..] or table {..})"
                        .into(),
                )
            } else {
                None
            };
            r.error(span, field, message, hint);
            return Err(r.finish());
        }
    };
    let mut c = Compiler { r };
    let plan = c.file(path, file);
    if c.r.failed() {
        Err(c.r.finish())
    } else {
        Ok(plan)
    }
}

struct Compiler<'s> {
    r: Reporter<'s>,
}

fn span_of<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

/// Names for the hint of an unknown name.
fn name_list(names: &[&str]) -> String {
    if names.is_empty() {
        "(none defined)".into()
    } else {
        names.join(", ")
    }
}

/// Whether two TCP sockets bound to `a` and `b` would clash: the same port (not 0) and the
/// same address, or one of them the unspecified address of its family (`[::]` covers IPv4
/// too, as a dual-stack socket does).
fn tcp_addresses_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: IpAddr, other: IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || wild.is_ipv4() == other.is_ipv4())
    };
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// Stable seed of a destination in rendezvous hashing: the key hash of its name.
fn seed_of(name: &str) -> u64 {
    hep_common::correlation::key_hash(name.as_bytes())
}

impl Compiler<'_> {
    fn file(&mut self, path: &Path, f: ConfigFile) -> Plan {
        let admin_listen = f.admin.as_ref().and_then(|a| a.listen.as_ref());
        let admin = admin_listen.and_then(|l| self.socket_addr(l, "admin.listen"));
        if let (Some(address), Some(spanned)) = (admin, admin_listen) {
            self.admin_clashes(address, span_of(spanned), &f.listener);
        }
        if f.listener.is_empty() {
            self.r.error(
                0..0,
                "listener",
                "no [[listener]] is configured",
                Some("add [[listener]] with name = \"agents\" and udp = \"0.0.0.0:9060\"".into()),
            );
        }
        let listeners = self.listeners(&f.listener);
        let destinations = self.destinations(&f.destination);
        let names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut seen = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in f.route.iter().enumerate() {
            let field = format!("route[{i}]");
            let rs = r.get_ref();
            if !seen.insert(rs.name.get_ref().clone()) {
                self.r.error(
                    span_of(&rs.name),
                    format!("{field}.name"),
                    format!("route name {:?} is used twice", rs.name.get_ref()),
                    Some("give every route its own name".into()),
                );
            }
            let matcher = rs
                .matches
                .as_ref()
                .map(|m| self.matcher(m.get_ref(), &format!("{field}.match")))
                .unwrap_or_default();
            let action = self.action(
                rs.action.as_ref(),
                rs.forward.as_ref(),
                rs.mode.as_ref(),
                &names,
                &field,
                span_of(r),
            );
            let rewrite = rs
                .rewrite
                .as_ref()
                .map(|rw| self.rewrite(rw, &format!("{field}.rewrite")))
                .unwrap_or_default();
            if action == Action::Drop && !rewrite.is_empty() {
                self.r.error(
                    span_of(rs.rewrite.as_ref().map_or(&rs.name, |_| &rs.name)),
                    format!("{field}.rewrite"),
                    "a drop route rewrites nothing",
                    Some("remove rewrite, or forward the packets".into()),
                );
            }
            let sample_ppm = rs
                .sample
                .as_ref()
                .and_then(|s| self.sample(s, &format!("{field}.sample")));
            let dedup = rs.dedup.as_ref().and_then(|d| {
                self.duration(d, &format!("{field}.dedup"), 1, defaults::MAX_DEDUP_MS)
            });
            routes.push(RoutePlan {
                name: rs.name.get_ref().clone(),
                matcher,
                action,
                rewrite,
                sample_ppm,
                dedup,
                continue_: rs.continue_.unwrap_or(false),
            });
        }
        let default = f.default.as_ref().map(|d| {
            let ds = d.get_ref();
            let action = self.action(
                ds.action.as_ref(),
                ds.forward.as_ref(),
                ds.mode.as_ref(),
                &names,
                "default",
                span_of(d),
            );
            let rewrite = ds
                .rewrite
                .as_ref()
                .map(|rw| self.rewrite(rw, "default.rewrite"))
                .unwrap_or_default();
            RoutePlan {
                name: "default".into(),
                matcher: Matcher::default(),
                action,
                rewrite,
                sample_ppm: None,
                dedup: None,
                continue_: false,
            }
        });
        let invalid = f
            .invalid
            .as_ref()
            .map(|inv| self.targets(&inv.get_ref().forward, &names, "invalid.forward"))
            .unwrap_or_default();
        let engine = self.engine(f.engine.as_ref());
        let xdp = self.xdp(f.xdp.as_ref());
        let resolver = self.resolver(path, f.resolver.as_ref());
        let admin_tap = f
            .admin
            .as_ref()
            .and_then(|a| a.tap.as_ref())
            .is_some_and(|t| *t.get_ref());
        Plan {
            source: path.to_path_buf(),
            admin,
            admin_tap,
            listeners,
            destinations,
            routes,
            default,
            invalid,
            engine,
            xdp,
            resolver,
        }
    }

    /// Reports an `[admin] listen` address that a HEP TCP listener also binds (the second
    /// bind would fail, or one would take the other's connections).
    fn admin_clashes(
        &mut self,
        admin: SocketAddr,
        span: Range<usize>,
        listeners: &[Spanned<ListenerSection>],
    ) {
        for (index, listener) in listeners.iter().enumerate() {
            let listener = listener.get_ref();
            for (kind, address) in [("tcp", &listener.tcp), ("tls", &listener.tls)] {
                let Some(tcp) = address
                    .as_ref()
                    .and_then(|t| SocketAddr::from_str(t.get_ref()).ok())
                else {
                    continue;
                };
                if tcp_addresses_overlap(admin, tcp) {
                    self.r.error(
                        span.clone(),
                        "admin.listen",
                        format!(
                            "{admin} is also the address of listener[{index}].{kind} ({:?}: {tcp})",
                            listener.name.get_ref()
                        ),
                        Some("give the admin server a port of its own".into()),
                    );
                }
            }
        }
    }

    fn socket_addr(&mut self, s: &Spanned<String>, field: &str) -> Option<SocketAddr> {
        match SocketAddr::from_str(s.get_ref()) {
            Ok(a) => Some(a),
            Err(_) => {
                self.r.error(
                    span_of(s),
                    field,
                    format!("{:?} is not an IP:port address", s.get_ref()),
                    Some("write e.g. \"0.0.0.0:9060\" or \"[::1]:9060\" (no host names)".into()),
                );
                None
            }
        }
    }

    /// A destination's `IP:port` or `host:port` (its address unresolved for now: the
    /// unspecified address with the port).
    fn destination_address(
        &mut self,
        s: &Spanned<String>,
        field: &str,
    ) -> Option<(SocketAddr, Option<crate::resolve::HostName>)> {
        let text = s.get_ref().trim();
        if let Ok(a) = SocketAddr::from_str(text) {
            if a.ip().is_unspecified() || a.port() == 0 {
                self.r.error(
                    span_of(s),
                    field,
                    format!("{text:?} is not a collector's address"),
                    Some("give the collector's own address and port".into()),
                );
                return None;
            }
            return Some((a, None));
        }
        match crate::resolve::HostName::parse(text) {
            Some(h) if h.port != 0 => Some((
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), h.port),
                Some(h),
            )),
            _ => {
                self.r.error(
                    span_of(s),
                    field,
                    format!("{text:?} is not an IP:port or host:port address"),
                    Some(
                        "write e.g. \"198.18.2.2:9060\", \"[2001:db8::2]:9060\" or \"homer.example.net:9060\""
                            .into(),
                    ),
                );
                None
            }
        }
    }

    /// `[resolver]`; a relative `hosts_file` is relative to the configuration file's
    /// directory.
    fn resolver(&mut self, config: &Path, r: Option<&Spanned<ResolverSection>>) -> ResolverPlan {
        let mut plan = ResolverPlan::default();
        let Some(r) = r.map(Spanned::get_ref) else {
            return plan;
        };
        if let Some(f) = &r.hosts_file {
            let file = PathBuf::from(f.get_ref());
            let file = match config.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file,
            };
            plan.resolver = crate::resolve::Resolver::HostsFile(file);
        }
        if let Some(i) = &r.resolve_interval
            && let Some(d) = self.duration(i, "resolver.resolve_interval", 1_000, 3_600_000)
        {
            plan.interval = d;
        }
        plan
    }

    fn prefixes(&mut self, list: &SpannedStrings, field: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, p) in list.get_ref().iter().enumerate() {
            let s = p.get_ref().trim();
            let parsed = IpNet::from_str(s)
                .ok()
                .or_else(|| IpAddr::from_str(s).ok().map(IpNet::from));
            match parsed {
                Some(n) => out.push(n.trunc()),
                None => self.r.error(
                    span_of(p),
                    format!("{field}[{i}]"),
                    format!("{s:?} is not an IP prefix"),
                    Some("write e.g. \"198.18.0.0/15\", \"::1/128\" or a single address".into()),
                ),
            }
        }
        out
    }

    fn listeners(&mut self, list: &[Spanned<ListenerSection>]) -> Vec<ListenerPlan> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in list.iter().enumerate() {
            let field = format!("listener[{i}]");
            let ls = l.get_ref();
            if !names.insert(ls.name.get_ref().clone()) {
                self.r.error(
                    span_of(&ls.name),
                    format!("{field}.name"),
                    format!("listener name {:?} is used twice", ls.name.get_ref()),
                    None,
                );
            }
            let udp = ls
                .udp
                .as_ref()
                .and_then(|a| self.socket_addr(a, &format!("{field}.udp")));
            let tcp = ls
                .tcp
                .as_ref()
                .and_then(|a| self.socket_addr(a, &format!("{field}.tcp")));
            let tls = ls
                .tls
                .as_ref()
                .and_then(|a| self.socket_addr(a, &format!("{field}.tls")));
            if ls.udp.is_none() && ls.tcp.is_none() && ls.tls.is_none() {
                self.r.error(
                    span_of(l),
                    field.clone(),
                    "a listener needs udp, tcp or tls (or several)",
                    Some("add udp = \"0.0.0.0:9060\"".into()),
                );
            }
            for (kind, a, s) in [
                ("udp", udp, &ls.udp),
                ("tcp", tcp, &ls.tcp),
                ("tls", tls, &ls.tls),
            ] {
                // A TLS listener binds a TCP socket: it clashes with TCP addresses.
                let socket = if kind == "udp" { "udp" } else { "tcp" };
                if let (Some(a), Some(s)) = (a, s)
                    && !addrs.insert((socket, a))
                {
                    self.r.error(
                        span_of(s),
                        format!("{field}.{kind}"),
                        format!("{kind} {a} is already used by another listener"),
                        None,
                    );
                }
            }
            let allow = ls
                .allow
                .as_ref()
                .map(|a| self.prefixes(a, &format!("{field}.allow")));
            let max_connections = self.bounded(
                ls.max_connections.as_ref(),
                &format!("{field}.max_connections"),
                1..=1_000_000,
                defaults::MAX_CONNECTIONS,
            );
            let idle_timeout = ls
                .idle_timeout
                .as_ref()
                .and_then(|d| self.duration(d, &format!("{field}.idle_timeout"), 100, 86_400_000))
                .unwrap_or(Duration::from_millis(defaults::IDLE_TIMEOUT_MS));
            let frame_timeout = ls
                .frame_timeout
                .as_ref()
                .and_then(|d| self.duration(d, &format!("{field}.frame_timeout"), 100, 3_600_000))
                .unwrap_or(Duration::from_millis(defaults::FRAME_TIMEOUT_MS));
            if ls.tcp.is_none() && ls.tls.is_none() {
                for (key, span) in [
                    ("max_connections", ls.max_connections.as_ref().map(span_of)),
                    ("idle_timeout", ls.idle_timeout.as_ref().map(span_of)),
                    ("frame_timeout", ls.frame_timeout.as_ref().map(span_of)),
                ] {
                    if let Some(span) = span {
                        self.r.error(
                            span,
                            format!("{field}.{key}"),
                            format!("{key} applies to TCP listeners only"),
                            Some("add tcp = \"IP:port\" or remove it".into()),
                        );
                    }
                }
            }
            let tls_config = self.listener_tls(ls, &field);
            out.push(ListenerPlan {
                name: ls.name.get_ref().clone(),
                udp,
                tcp,
                auth_key: ls
                    .auth_key
                    .as_ref()
                    .map(|k| k.get_ref().as_bytes().to_vec()),
                allow,
                max_connections,
                idle_timeout,
                frame_timeout,
                tls,
                tls_config,
            });
        }
        out
    }

    fn destinations(&mut self, list: &[Spanned<DestinationSection>]) -> Vec<DestinationPlan> {
        let mut out = Vec::new();
        // The spool directories taken, resolved, so two destinations never share one.
        let mut spool_dirs: Vec<(PathBuf, String)> = Vec::new();
        let mut names = HashSet::new();
        for (i, d) in list.iter().enumerate() {
            let field = format!("destination[{i}]");
            let ds = d.get_ref();
            let name = ds.name.get_ref().clone();
            if !names.insert(name.clone()) {
                self.r.error(
                    span_of(&ds.name),
                    format!("{field}.name"),
                    format!("destination name {name:?} is used twice"),
                    None,
                );
            }
            let address = self.destination_address(&ds.address, &format!("{field}.address"));
            let transport = match ds.transport.as_ref().map(|t| t.get_ref().as_str()) {
                None | Some("udp") => Transport::Udp,
                Some("tcp" | "tls") => Transport::Tcp,
                Some(other) => {
                    let s = ds.transport.as_ref().map_or(0..0, span_of);
                    self.r.error(
                        s,
                        format!("{field}.transport"),
                        format!("unknown transport {other:?}"),
                        Some("use \"udp\", \"tcp\" or \"tls\"".into()),
                    );
                    Transport::Udp
                }
            };
            let hep_version = match ds.hep_version.as_ref() {
                None => 3,
                Some(v) if *v.get_ref() == 3 || *v.get_ref() == 2 => *v.get_ref() as u8,
                Some(v) => {
                    self.r.error(
                        span_of(v),
                        format!("{field}.hep_version"),
                        format!("HEP version {} cannot be sent", v.get_ref()),
                        Some("use 3, or 2 for old collectors".into()),
                    );
                    3
                }
            };
            if hep_version == 2 && transport == Transport::Tcp {
                let s = ds.hep_version.as_ref().map_or(0..0, span_of);
                self.r.error(
                    s,
                    format!("{field}.hep_version"),
                    "HEPv2 exists on UDP only",
                    Some("use transport = \"udp\" for a v2 collector, or hep_version = 3".into()),
                );
            }
            if hep_version == 2 && ds.set_auth_key.is_some() {
                let s = ds.set_auth_key.as_ref().map_or(0..0, span_of);
                self.r.error(
                    s,
                    format!("{field}.set_auth_key"),
                    "HEPv2 has no auth key chunk",
                    Some("remove set_auth_key or send HEPv3".into()),
                );
            }
            let queue = match ds.queue.as_ref() {
                None => defaults::TCP_QUEUE,
                Some(q) if (1..=10_000_000).contains(q.get_ref()) => *q.get_ref() as usize,
                Some(q) => {
                    self.r.error(
                        span_of(q),
                        format!("{field}.queue"),
                        format!("queue {} is out of range", q.get_ref()),
                        Some("use 1 to 10000000 packets".into()),
                    );
                    defaults::TCP_QUEUE
                }
            };
            let queue_bytes = match ds.queue_bytes.as_ref() {
                None => defaults::TCP_QUEUE_BYTES,
                Some(q) => match q.get_ref().bytes() {
                    Some(n)
                        if (defaults::MIN_QUEUE_BYTES..=defaults::MAX_QUEUE_BYTES).contains(&n) =>
                    {
                        n as usize
                    }
                    parsed => {
                        let what = match parsed {
                            Some(n) => format!("queue_bytes {n} is out of range"),
                            None => match q.get_ref() {
                                ByteSize::Text(t) => format!("{t:?} is not a size"),
                                ByteSize::Number(n) => format!("{n} is not a size"),
                            },
                        };
                        self.r.error(
                            span_of(q),
                            format!("{field}.queue_bytes"),
                            what,
                            Some(
                                "use \"64KiB\" to \"1024GiB\" (B, KiB, MiB, GiB, KB, MB, GB)"
                                    .into(),
                            ),
                        );
                        defaults::TCP_QUEUE_BYTES
                    }
                },
            };
            let stall_timeout = ds
                .stall_timeout
                .as_ref()
                .and_then(|d| self.duration(d, &format!("{field}.stall_timeout"), 100, 3_600_000))
                .unwrap_or(Duration::from_millis(defaults::STALL_TIMEOUT_MS));
            if transport == Transport::Udp {
                for (given, key) in [
                    (ds.queue_bytes.as_ref().map(span_of), "queue_bytes"),
                    (ds.stall_timeout.as_ref().map(span_of), "stall_timeout"),
                ] {
                    if let Some(s) = given {
                        self.r.error(
                            s,
                            format!("{field}.{key}"),
                            format!("{key} applies to TCP destinations only"),
                            Some("remove it, or use transport = \"tcp\"".into()),
                        );
                    }
                }
            }
            let spool = ds
                .spool
                .as_ref()
                .and_then(|sp| self.spool(sp, &name, transport, &field, &mut spool_dirs));
            let wants_tls = ds.transport.as_ref().is_some_and(|t| t.get_ref() == "tls");
            let tls = self.destination_tls(ds, &field, wants_tls, address.as_ref());
            if let Some((address, host)) = address {
                out.push(DestinationPlan {
                    hash_seed: seed_of(&name),
                    name,
                    address,
                    host,
                    transport,
                    hep_version,
                    set_auth_key: ds
                        .set_auth_key
                        .as_ref()
                        .map(|k| k.get_ref().as_bytes().to_vec()),
                    queue,
                    queue_bytes,
                    stall_timeout,
                    spool,
                    tls,
                });
            }
        }
        out
    }

    /// The spool of destination `name` (`field`): its keys checked, its directory
    /// (`<dir>/<name>`) created and written to once, so that `check-config` finds a
    /// directory the daemon could not use.
    fn spool(
        &mut self,
        sp: &Spanned<SpoolSection>,
        name: &str,
        transport: Transport,
        field: &str,
        taken: &mut Vec<(PathBuf, String)>,
    ) -> Option<SpoolOptions> {
        let section = sp.get_ref();
        let field = format!("{field}.spool");
        if !transport.is_stream() {
            self.r.error(
                span_of(sp),
                field,
                "a spool applies to stream destinations only",
                Some("remove it, or use transport = \"tcp\" or \"tls\"".into()),
            );
            return None;
        }
        let max_bytes = match section.max_bytes.as_ref() {
            None => crate::io::spool::DEFAULT_MAX_BYTES,
            Some(m) => match m.get_ref().bytes() {
                Some(n) if n >= crate::io::spool::MIN_MAX_BYTES as i64 => n as u64,
                parsed => {
                    let what = match parsed {
                        Some(n) => format!("max_bytes {n} is out of range"),
                        None => match m.get_ref() {
                            ByteSize::Text(t) => format!("{t:?} is not a size"),
                            ByteSize::Number(n) => format!("{n} is not a size"),
                        },
                    };
                    self.r.error(
                        span_of(m),
                        format!("{field}.max_bytes"),
                        what,
                        Some("use \"1MiB\" or more (B, KiB, MiB, GiB, KB, MB, GB)".into()),
                    );
                    return None;
                }
            },
        };
        let sync = match section.sync.as_ref() {
            None => crate::io::spool::DEFAULT_SYNC,
            Some(d) => self.duration(d, &format!("{field}.sync"), 10, 3_600_000)?,
        };
        let on_full = match section.on_full.as_ref().map(|o| o.get_ref().as_str()) {
            None | Some("drop-oldest") => OnFull::DropOldest,
            Some("drop-newest") => OnFull::DropNewest,
            Some(other) => {
                let s = section.on_full.as_ref().map_or(0..0, span_of);
                self.r.error(
                    s,
                    format!("{field}.on_full"),
                    format!("unknown policy {other:?}"),
                    Some("use \"drop-oldest\" or \"drop-newest\"".into()),
                );
                return None;
            }
        };
        let safe_name = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe_name {
            self.r.error(
                span_of(&section.dir),
                format!("{field}.dir"),
                format!("destination name {name:?} cannot name a spool directory"),
                Some("name the destination with letters, digits, '-', '_' and '.'".into()),
            );
            return None;
        }
        if section.dir.get_ref().is_empty() {
            self.r.error(
                span_of(&section.dir),
                format!("{field}.dir"),
                "the spool directory is empty",
                Some("write e.g. dir = \"/var/lib/hepfwd/spool\"".into()),
            );
            return None;
        }
        let dir = Path::new(section.dir.get_ref()).join(name);
        if let Err(reason) = crate::io::spool::probe_dir(&dir) {
            self.r.error(
                span_of(&section.dir),
                format!("{field}.dir"),
                reason,
                Some("create the directory, writable by hepfwd's user, or choose another".into()),
            );
            return None;
        }
        let resolved = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if let Some((_, other)) = taken.iter().find(|(d, _)| *d == resolved) {
            self.r.error(
                span_of(&section.dir),
                format!("{field}.dir"),
                format!(
                    "spool directory {} is also destination {other:?}'s",
                    resolved.display()
                ),
                Some("give each destination its own spool directory".into()),
            );
            return None;
        }
        taken.push((resolved, name.to_string()));
        Some(SpoolOptions::new(dir, max_bytes, sync, on_full))
    }

    /// Records a TLS file error at the field that names the file (the first field when
    /// none does).
    fn tls_error(
        &mut self,
        error: &crate::tls::TlsFileError,
        fields: &[(&Spanned<String>, String)],
    ) {
        let blamed = error
            .path()
            .and_then(|path| fields.iter().find(|(s, _)| Path::new(s.get_ref()) == path))
            .or_else(|| fields.first());
        let (span, field) = blamed.map_or((0..0, String::new()), |(s, f)| (span_of(s), f.clone()));
        let hint = error.hint();
        self.r
            .error(span, field, error.to_string(), Some(hint.into()));
    }

    /// The TLS side of a listener: `tls_cert` and `tls_key` read and checked (and
    /// `tls_client_ca`), when `tls` is given; the TLS keys are errors without it.
    fn listener_tls(&mut self, ls: &ListenerSection, field: &str) -> Option<ListenerTls> {
        let given = [
            ("tls_cert", ls.tls_cert.as_ref()),
            ("tls_key", ls.tls_key.as_ref()),
            ("tls_client_ca", ls.tls_client_ca.as_ref()),
            ("tls_handshake_timeout", ls.tls_handshake_timeout.as_ref()),
        ];
        let Some(tls) = ls.tls.as_ref() else {
            for (key, value) in given {
                if let Some(value) = value {
                    self.r.error(
                        span_of(value),
                        format!("{field}.{key}"),
                        format!("{key} applies to TLS listeners only"),
                        Some("add tls = \"IP:port\" or remove it".into()),
                    );
                }
            }
            return None;
        };
        let handshake_timeout = ls
            .tls_handshake_timeout
            .as_ref()
            .and_then(|d| self.duration(d, &format!("{field}.tls_handshake_timeout"), 100, 300_000))
            .unwrap_or(Duration::from_millis(defaults::TLS_HANDSHAKE_TIMEOUT_MS));
        let (Some(cert), Some(key)) = (ls.tls_cert.as_ref(), ls.tls_key.as_ref()) else {
            let missing = if ls.tls_cert.is_none() {
                "tls_cert"
            } else {
                "tls_key"
            };
            self.r.error(
                span_of(tls),
                format!("{field}.{missing}"),
                format!("a TLS listener needs tls_cert and tls_key; {missing} is missing"),
                Some(format!(
                    "add {missing} = \"/etc/hepfwd/{}.pem\"",
                    &missing[4..]
                )),
            );
            return None;
        };
        let client_ca = ls.tls_client_ca.as_ref();
        let mut fields = vec![
            (cert, format!("{field}.tls_cert")),
            (key, format!("{field}.tls_key")),
        ];
        if let Some(ca) = client_ca {
            fields.push((ca, format!("{field}.tls_client_ca")));
        }
        let files: Vec<std::path::PathBuf> = fields
            .iter()
            .map(|(s, _)| std::path::PathBuf::from(s.get_ref()))
            .collect();
        match crate::tls::server_config(
            Path::new(cert.get_ref()),
            Path::new(key.get_ref()),
            client_ca.map(|ca| Path::new(ca.get_ref())),
        ) {
            Ok(config) => Some(ListenerTls {
                config,
                client_auth: client_ca.is_some(),
                handshake_timeout,
                files,
            }),
            Err(e) => {
                self.tls_error(&e, &fields);
                None
            }
        }
    }

    /// The TLS side of a destination with `transport = "tls"`: its CA (or the system's),
    /// server name and client certificate; the TLS keys are errors on another transport.
    fn destination_tls(
        &mut self,
        ds: &DestinationSection,
        field: &str,
        wants_tls: bool,
        address: Option<&(SocketAddr, Option<crate::resolve::HostName>)>,
    ) -> Option<DestinationTls> {
        let given = [
            ("tls_ca", ds.tls_ca.as_ref()),
            ("tls_server_name", ds.tls_server_name.as_ref()),
            ("tls_cert", ds.tls_cert.as_ref()),
            ("tls_key", ds.tls_key.as_ref()),
        ];
        if !wants_tls {
            for (key, value) in given {
                if let Some(value) = value {
                    self.r.error(
                        span_of(value),
                        format!("{field}.{key}"),
                        format!("{key} applies to TLS destinations only"),
                        Some("remove it, or use transport = \"tls\"".into()),
                    );
                }
            }
            return None;
        }
        let server_name = match ds.tls_server_name.as_ref() {
            Some(name) => match rustls::pki_types::ServerName::try_from(name.get_ref().clone()) {
                Ok(server_name) => Some(server_name),
                Err(e) => {
                    self.r.error(
                        span_of(name),
                        format!("{field}.tls_server_name"),
                        format!("{:?} is not a server name: {e}", name.get_ref()),
                        Some("write a DNS name (\"homer.example.com\") or an IP address".into()),
                    );
                    None
                }
            },
            // The host of `address`: its name when it is one, else its IP address.
            None => address.and_then(|(a, host)| match host {
                Some(h) => rustls::pki_types::ServerName::try_from(h.name.clone()).ok(),
                None => Some(rustls::pki_types::ServerName::IpAddress(a.ip().into())),
            }),
        };
        let client = match (ds.tls_cert.as_ref(), ds.tls_key.as_ref()) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(given), None) | (None, Some(given)) => {
                let missing = if ds.tls_cert.is_none() {
                    "tls_cert"
                } else {
                    "tls_key"
                };
                self.r.error(
                    span_of(given),
                    format!("{field}.{missing}"),
                    format!(
                        "a client certificate needs tls_cert and tls_key; {missing} is missing"
                    ),
                    Some(format!(
                        "add {missing}, or remove both for no client certificate"
                    )),
                );
                return None;
            }
        };
        let mut fields = Vec::new();
        if let Some(ca) = ds.tls_ca.as_ref() {
            fields.push((ca, format!("{field}.tls_ca")));
        }
        if let Some((cert, key)) = client {
            fields.push((cert, format!("{field}.tls_cert")));
            fields.push((key, format!("{field}.tls_key")));
        }
        let files: Vec<std::path::PathBuf> = fields
            .iter()
            .map(|(s, _)| std::path::PathBuf::from(s.get_ref()))
            .collect();
        let config = crate::tls::client_config(
            ds.tls_ca.as_ref().map(|ca| Path::new(ca.get_ref())),
            client.map(|(cert, key)| (Path::new(cert.get_ref()), Path::new(key.get_ref()))),
        );
        match config {
            Ok(config) => server_name.map(|server_name| DestinationTls {
                config,
                server_name,
                files,
            }),
            Err(e) => {
                if fields.is_empty() {
                    let span = ds.transport.as_ref().map_or(0..0, span_of);
                    self.r.error(
                        span,
                        format!("{field}.transport"),
                        e.to_string(),
                        Some("give tls_ca = \"/etc/hepfwd/collector-ca.pem\"".into()),
                    );
                } else {
                    self.tls_error(&e, &fields);
                }
                None
            }
        }
    }

    fn targets(&mut self, list: &SpannedStrings, names: &[String], field: &str) -> Vec<usize> {
        let mut out = Vec::new();
        let known: Vec<&str> = names.iter().map(String::as_str).collect();
        for (i, n) in list.get_ref().iter().enumerate() {
            match names.iter().position(|d| d == n.get_ref()) {
                Some(idx) if out.contains(&idx) => self.r.error(
                    span_of(n),
                    format!("{field}[{i}]"),
                    format!("destination {:?} is listed twice", n.get_ref()),
                    None,
                ),
                Some(idx) => out.push(idx),
                None => self.r.error(
                    span_of(n),
                    format!("{field}[{i}]"),
                    format!("unknown destination {:?}", n.get_ref()),
                    Some(format!("defined destinations: {}", name_list(&known))),
                ),
            }
        }
        if list.get_ref().is_empty() {
            self.r.error(
                span_of(list),
                field,
                "the list is empty",
                Some("name at least one [[destination]]".into()),
            );
        }
        out
    }

    fn action(
        &mut self,
        action: Option<&Spanned<String>>,
        forward: Option<&SpannedStrings>,
        mode: Option<&Spanned<String>>,
        names: &[String],
        field: &str,
        whole: Range<usize>,
    ) -> Action {
        let is_drop = match action.map(|a| a.get_ref().as_str()) {
            None | Some("forward") => false,
            Some("drop") => true,
            Some(other) => {
                let s = action.map_or(whole.clone(), span_of);
                self.r.error(
                    s,
                    format!("{field}.action"),
                    format!("unknown action {other:?}"),
                    Some("use \"forward\" (the default when forward is given) or \"drop\"".into()),
                );
                false
            }
        };
        if is_drop {
            if let Some(f) = forward {
                self.r.error(
                    span_of(f),
                    format!("{field}.forward"),
                    "a drop route forwards nowhere",
                    Some("remove forward, or remove action = \"drop\"".into()),
                );
            }
            if let Some(m) = mode {
                self.r.error(
                    span_of(m),
                    format!("{field}.mode"),
                    "a drop route has no mode",
                    Some("remove mode".into()),
                );
            }
            return Action::Drop;
        }
        let Some(forward) = forward else {
            self.r.error(
                whole,
                field,
                "nothing to do: neither forward nor action = \"drop\"",
                Some("add forward = [\"<destination>\"] or action = \"drop\"".into()),
            );
            return Action::Drop;
        };
        let targets = self.targets(forward, names, &format!("{field}.forward"));
        let mode = match mode.map(|m| m.get_ref().as_str()) {
            None | Some("all") => ForwardMode::All,
            Some("hash") => ForwardMode::Hash,
            Some("round-robin") => ForwardMode::RoundRobin,
            Some("failover") => ForwardMode::Failover,
            Some(other) => {
                let s = mode.map_or(0..0, span_of);
                self.r.error(s, format!("{field}.mode"), format!("unknown mode {other:?}"), Some("use \"all\" (mirror), \"hash\" (call-sticky), \"round-robin\" or \"failover\"".into()));
                ForwardMode::All
            }
        };
        Action::Forward { targets, mode }
    }

    fn u32_ranges(
        &mut self,
        list: &SpannedScalars,
        field: &str,
        max: u64,
    ) -> Vec<RangeInclusive<u64>> {
        let mut out = Vec::new();
        for (i, v) in list.get_ref().iter().enumerate() {
            let f = format!("{field}[{i}]");
            let bad = |r: &mut Reporter<'_>, msg: String| {
                r.error(
                    span_of(v),
                    f.clone(),
                    msg,
                    Some(format!("write a number or a range \"A-B\" within 0-{max}")),
                );
            };
            match v.get_ref() {
                NumberOrString::Number(n) if *n >= 0 && (*n as u64) <= max => {
                    out.push(*n as u64..=*n as u64)
                }
                NumberOrString::String(s) => {
                    let parsed = s.split_once('-').and_then(|(a, b)| {
                        Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
                    });
                    match parsed {
                        Some((a, b)) if a <= b && b <= max => out.push(a..=b),
                        _ => bad(&mut self.r, format!("{s:?} is not a range")),
                    }
                }
                other => bad(&mut self.r, format!("{other} is not a number or a range")),
            }
        }
        out
    }

    fn matcher(&mut self, m: &MatchSection, field: &str) -> Matcher {
        let proto = m.proto.as_ref().map(|list| {
            let mut out = Vec::new();
            for (i, v) in list.get_ref().iter().enumerate() {
                let value = match v.get_ref() {
                    NumberOrString::Number(n) if (0..=255).contains(n) => Some(*n as u8),
                    NumberOrString::String(s) => proto::by_name(s),
                    NumberOrString::Number(_) => None,
                };
                match value {
                    Some(p) => out.push(p),
                    None => {
                        let names: Vec<&str> = proto::NAMES.iter().map(|(_, n)| *n).collect();
                        self.r.error(
                            span_of(v),
                            format!("{field}.proto[{i}]"),
                            format!("{} is not a protocol type", v.get_ref()),
                            Some(format!(
                                "use a number 0-255 or one of: {}",
                                names.join(", ")
                            )),
                        );
                    }
                }
            }
            out
        });
        let capture_id = m.capture_id.as_ref().map(|l| {
            self.u32_ranges(l, &format!("{field}.capture_id"), u32::MAX as u64)
                .into_iter()
                .map(|r| *r.start() as u32..=*r.end() as u32)
                .collect()
        });
        let inner_port = m.inner_port.as_ref().map(|l| {
            self.u32_ranges(l, &format!("{field}.inner_port"), u16::MAX as u64)
                .into_iter()
                .map(|r| *r.start() as u16..=*r.end() as u16)
                .collect()
        });
        let node_name = m.node_name.as_ref().map(|l| {
            l.get_ref()
                .iter()
                .map(|s| s.get_ref().as_bytes().to_vec())
                .collect()
        });
        let source = m
            .source
            .as_ref()
            .map(|l| self.prefixes(l, &format!("{field}.source")));
        let inner_src = m
            .inner_src
            .as_ref()
            .map(|l| self.prefixes(l, &format!("{field}.inner_src")));
        let inner_dst = m
            .inner_dst
            .as_ref()
            .map(|l| self.prefixes(l, &format!("{field}.inner_dst")));
        let correlation = m.correlation.as_ref().map(|c| {
            let c = c.get_ref();
            let mut strings = |v: &Option<Spanned<OneOrMany<String>>>, key: &str| -> Vec<Vec<u8>> {
                let Some(v) = v else { return Vec::new() };
                match v.get_ref().as_slice() {
                    [] => {
                        self.r.error(
                            span_of(v),
                            format!("{field}.correlation.{key}"),
                            "expected a string or a list of strings",
                            None,
                        );
                        Vec::new()
                    }
                    strings => strings.iter().map(|s| s.as_bytes().to_vec()).collect(),
                }
            };
            let none_given =
                c.exact.is_none() && c.prefix.is_none() && c.suffix.is_none() && c.domain.is_none();
            let cm = CorrelationMatcher {
                exact: strings(&c.exact, "exact"),
                prefix: strings(&c.prefix, "prefix"),
                suffix: strings(&c.suffix, "suffix"),
                domain: strings(&c.domain, "domain"),
            };
            if none_given {
                let s = m.correlation.as_ref().map_or(0..0, span_of);
                self.r.error(
                    s,
                    format!("{field}.correlation"),
                    "no test given",
                    Some("use exact, prefix, suffix or domain".into()),
                );
            }
            cm
        });
        let sip_method = m.sip_method.as_ref().map(|list| {
            let mut mask = 0u32;
            for (i, v) in list.get_ref().iter().enumerate() {
                match hep_common::sip::method_index(v.get_ref().as_bytes()) {
                    Some(b) => mask |= 1 << b,
                    None => self.r.error(
                        span_of(v),
                        format!("{field}.sip_method[{i}]"),
                        format!("{:?} is not a SIP method this route can match", v.get_ref()),
                        Some(format!(
                            "use one of (exact case): {}",
                            hep_common::sip::METHODS.join(", ")
                        )),
                    ),
                }
            }
            mask
        });
        let sip_status = m.sip_status.as_ref().map(|list| {
            let mut out = Vec::new();
            for (i, v) in list.get_ref().iter().enumerate() {
                let range = match v.get_ref() {
                    NumberOrString::Number(n) => u16::try_from(*n).ok().map(|n| n..=n),
                    NumberOrString::String(s) => status_class(s),
                };
                match range.filter(|r| *r.start() >= 100 && *r.end() <= 699) {
                    Some(r) => out.push(r),
                    None => self.r.error(
                        span_of(v),
                        format!("{field}.sip_status[{i}]"),
                        format!("{} is not a SIP status", v.get_ref()),
                        Some("use a code 100-699 (503 or \"503\") or a class (\"4xx\")".into()),
                    ),
                }
            }
            out
        });
        Matcher {
            proto,
            capture_id,
            node_name,
            source,
            inner_src,
            inner_dst,
            inner_port,
            correlation,
            sip_method,
            sip_status,
        }
    }

    /// Resolves a chunk named in a rewrite: a generic name, `"0xNNNN"`, or `{vendor, type}`.
    fn chunk_id(
        &mut self,
        v: &Spanned<ChunkRef>,
        field: &str,
    ) -> Option<(ChunkId, Option<ValueType>)> {
        let hint = || {
            let names: Vec<&str> = chunk::GENERIC_CHUNKS.iter().map(|(_, n, _)| *n).collect();
            Some(format!(
                "name a chunk ({}), a generic type \"0x0013\", or {{ vendor = 3, type = 0x0100 }}",
                names.join(", ")
            ))
        };
        match v.get_ref() {
            ChunkRef::Name(s) => {
                if let Some((kind, t)) = chunk::generic_by_name(s) {
                    return Some((ChunkId::generic(kind), Some(t)));
                }
                if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
                    && let Ok(kind) = u16::from_str_radix(hex, 16)
                {
                    return Some((ChunkId::generic(kind), chunk::generic_type(kind)));
                }
                self.r
                    .error(span_of(v), field, format!("unknown chunk {s:?}"), hint());
                None
            }
            ChunkRef::Number(n) if (0..=0xffff).contains(n) => {
                let kind = *n as u16;
                Some((ChunkId::generic(kind), chunk::generic_type(kind)))
            }
            ChunkRef::Table(table) => {
                let number = |n: i64| u16::try_from(n).ok();
                match (number(table.vendor), number(table.kind)) {
                    (Some(vendor), Some(kind)) => {
                        let vt = if vendor == chunk::VENDOR_GENERIC {
                            chunk::generic_type(kind)
                        } else {
                            None
                        };
                        Some((ChunkId { vendor, kind }, vt))
                    }
                    _ => {
                        self.r.error(
                            span_of(v),
                            field,
                            "a chunk table needs exactly vendor and type, each 0-65535",
                            hint(),
                        );
                        None
                    }
                }
            }
            ChunkRef::Number(_) => {
                self.r.error(span_of(v), field, "not a chunk name", hint());
                None
            }
        }
    }

    fn rewrite(&mut self, list: &Spanned<Vec<Spanned<RewriteEntry>>>, field: &str) -> Vec<Edit> {
        let mut out = Vec::new();
        for (i, e) in list.get_ref().iter().enumerate() {
            let f = format!("{field}[{i}]");
            let es = e.get_ref();
            match (&es.set, &es.delete) {
                (Some(target), None) => {
                    let Some((id, vt)) = self.chunk_id(target, &format!("{f}.set")) else {
                        continue;
                    };
                    let Some(value) = &es.value else {
                        self.r
                            .error(span_of(e), format!("{f}.value"), "set needs a value", None);
                        continue;
                    };
                    if let Some(v) =
                        self.encode_value(value, vt, es.width.as_ref(), &format!("{f}.value"))
                    {
                        out.push(Edit { id, value: Some(v) });
                    }
                }
                (None, Some(target)) => {
                    if es.value.is_some() {
                        self.r.error(
                            span_of(e),
                            format!("{f}.value"),
                            "delete takes no value",
                            None,
                        );
                    }
                    if let Some((id, _)) = self.chunk_id(target, &format!("{f}.delete")) {
                        out.push(Edit { id, value: None });
                    }
                }
                _ => self.r.error(
                    span_of(e),
                    f,
                    "a rewrite entry is { set = CHUNK, value = V } or { delete = CHUNK }",
                    None,
                ),
            }
        }
        out
    }

    fn encode_value(
        &mut self,
        v: &Spanned<NumberOrString>,
        vt: Option<ValueType>,
        width: Option<&Spanned<i64>>,
        field: &str,
    ) -> Option<Vec<u8>> {
        let int = |w: usize, n: i64| -> Option<Vec<u8>> {
            let max: u128 = if w == 8 {
                u64::MAX as u128
            } else {
                (1u128 << (8 * w)) - 1
            };
            if n < 0 || n as u128 > max {
                return None;
            }
            Some((n as u64).to_be_bytes()[8 - w..].to_vec())
        };
        let bad = |r: &mut Reporter<'_>, msg: String, hint: &str| {
            r.error(span_of(v), field, msg, Some(hint.to_string()));
            None
        };
        match (vt, v.get_ref()) {
            (Some(ValueType::Octets) | None, NumberOrString::String(s)) => {
                Some(s.as_bytes().to_vec())
            }
            (None, NumberOrString::Number(n)) => match width.map(|w| *w.get_ref()) {
                Some(w @ (1 | 2 | 4 | 8)) => int(w as usize, *n).or_else(|| {
                    bad(
                        &mut self.r,
                        format!("{n} does not fit in {w} bytes"),
                        "use a smaller number or a larger width",
                    )
                }),
                _ => bad(
                    &mut self.r,
                    "an integer for a chunk of unknown type needs a width".into(),
                    "add width = 1, 2, 4 or 8 (bytes), or give a string value",
                ),
            },
            (
                Some(t @ (ValueType::U8 | ValueType::U16 | ValueType::U32 | ValueType::U64)),
                NumberOrString::Number(n),
            ) => {
                let w = t.width().unwrap_or(8);
                int(w, *n).or_else(|| {
                    bad(
                        &mut self.r,
                        format!("{n} does not fit the chunk's {w} bytes"),
                        "use a value within the chunk's range",
                    )
                })
            }
            (Some(ValueType::U8), NumberOrString::String(s)) if proto::by_name(s).is_some() => {
                proto::by_name(s).map(|p| vec![p])
            }
            (Some(ValueType::Inet4), NumberOrString::String(s)) => {
                match std::net::Ipv4Addr::from_str(s) {
                    Ok(a) => Some(a.octets().to_vec()),
                    Err(_) => bad(
                        &mut self.r,
                        format!("{s:?} is not an IPv4 address"),
                        "write e.g. \"198.18.0.1\"",
                    ),
                }
            }
            (Some(ValueType::Inet6), NumberOrString::String(s)) => {
                match std::net::Ipv6Addr::from_str(s) {
                    Ok(a) => Some(a.octets().to_vec()),
                    Err(_) => bad(
                        &mut self.r,
                        format!("{s:?} is not an IPv6 address"),
                        "write e.g. \"2001:db8::1\"",
                    ),
                }
            }
            (Some(t), other) => bad(
                &mut self.r,
                format!("{other} does not fit a chunk of type {t:?}"),
                "numbers for integer chunks, strings for text, addresses as strings",
            ),
        }
    }

    fn sample(&mut self, s: &Spanned<f64>, field: &str) -> Option<u32> {
        match *s.get_ref() {
            f if (0.0..=1.0).contains(&f) => Some((f * 1_000_000.0).round() as u32),
            _ => {
                self.r.error(
                    span_of(s),
                    field,
                    format!("{} is not a fraction", s.get_ref()),
                    Some(
                        "use a number from 0.0 to 1.0, e.g. 0.25 to keep a quarter of the calls"
                            .into(),
                    ),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        s: &Spanned<String>,
        field: &str,
        min_ms: u64,
        max_ms: u64,
    ) -> Option<Duration> {
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d.as_millis() >= min_ms as u128 && d.as_millis() <= max_ms as u128 => Some(d),
            Ok(_) => {
                self.r.error(
                    span_of(s),
                    field,
                    format!("{:?} is out of range", s.get_ref()),
                    Some(format!("use {min_ms}ms to {max_ms}ms")),
                );
                None
            }
            Err(e) => {
                self.r.error(
                    span_of(s),
                    field,
                    format!("{:?} is not a duration: {e}", s.get_ref()),
                    Some("write e.g. \"500ms\" or \"2s\"".into()),
                );
                None
            }
        }
    }

    fn bounded(
        &mut self,
        v: Option<&Spanned<i64>>,
        field: &str,
        range: RangeInclusive<i64>,
        default: usize,
    ) -> usize {
        match v {
            None => default,
            Some(n) if range.contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.r.error(
                    span_of(n),
                    field,
                    format!("{} is out of range", n.get_ref()),
                    Some(format!("use {} to {}", range.start(), range.end())),
                );
                default
            }
        }
    }

    fn engine(&mut self, e: Option<&Spanned<EngineSection>>) -> EngineTuning {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let es = e.map(|e| e.get_ref());
        let workers = self.bounded(
            es.and_then(|e| e.workers.as_ref()),
            "engine.workers",
            1..=256,
            cores,
        );
        let batch = self.bounded(
            es.and_then(|e| e.batch.as_ref()),
            "engine.batch",
            1..=1024,
            defaults::BATCH,
        );
        let recv_buffer = self.bounded(
            es.and_then(|e| e.recv_buffer.as_ref()),
            "engine.recv_buffer",
            4096..=(1 << 30),
            defaults::RECV_BUFFER,
        );
        let dedup_entries = self.bounded(
            es.and_then(|e| e.dedup_entries.as_ref()),
            "engine.dedup_entries",
            1..=(1 << 26),
            defaults::DEDUP_ENTRIES,
        );
        let udp_error_holddown = es
            .and_then(|e| e.udp_error_holddown.as_ref())
            .and_then(|d| self.duration(d, "engine.udp_error_holddown", 1, 3_600_000))
            .unwrap_or(Duration::from_millis(defaults::UDP_ERROR_HOLDDOWN_MS));
        let drain_timeout = es
            .and_then(|e| e.drain_timeout.as_ref())
            .and_then(|d| self.duration(d, "engine.drain_timeout", 0, 600_000))
            .unwrap_or(Duration::from_millis(defaults::DRAIN_TIMEOUT_MS));
        let listen_backlog = self.bounded(
            es.and_then(|e| e.listen_backlog.as_ref()),
            "engine.listen_backlog",
            1..=65535,
            defaults::LISTEN_BACKLOG,
        );
        // At most 65535 (checked above).
        let listen_backlog = u32::try_from(listen_backlog).unwrap_or(u32::MAX);
        EngineTuning {
            listen_backlog,
            workers,
            batch,
            recv_buffer,
            dedup_entries,
            udp_error_holddown,
            drain_timeout,
        }
    }

    fn xdp(&mut self, x: Option<&Spanned<XdpSection>>) -> XdpPlan {
        let xs = x.map(|x| x.get_ref());
        let interfaces = xs
            .and_then(|x| x.interfaces.as_ref())
            .map(|l| l.get_ref().iter().map(|s| s.get_ref().clone()).collect())
            .unwrap_or_default();
        let attach = match xs.and_then(|x| x.attach.as_ref()) {
            None => AttachMode::Native,
            Some(a) if a.get_ref() == "native" => AttachMode::Native,
            Some(a) if a.get_ref() == "skb" => AttachMode::Skb,
            Some(a) => {
                self.r.error(
                    span_of(a),
                    "xdp.attach",
                    format!("unknown attach mode {:?}", a.get_ref()),
                    Some("use \"native\" or \"skb\"".into()),
                );
                AttachMode::Native
            }
        };
        XdpPlan { interfaces, attach }
    }
}

/// `"503"` → 503..=503, `"4xx"` (or `"4XX"`) → 400..=499.
fn status_class(s: &str) -> Option<RangeInclusive<u16>> {
    let s = s.trim();
    match s.as_bytes() {
        [d, b'x' | b'X', b'x' | b'X'] if d.is_ascii_digit() => {
            let base = u16::from(d - b'0') * 100;
            Some(base..=base + 99)
        }
        _ => s.parse::<u16>().ok().map(|n| n..=n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_str(src: &str) -> Result<Plan, ConfigErrors> {
        compile(Path::new("t.toml"), src)
    }

    fn one_error(src: &str) -> super::super::ConfigError {
        let errs = compile_str(src).expect_err("must be rejected").0;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs.into_iter().next().unwrap()
    }

    const BASE: &str = "[[listener]]\nname = \"l\"\nudp = \"127.0.0.1:9060\"\n[[destination]]\nname = \"a\"\naddress = \"127.0.0.1:9061\"\n[[destination]]\nname = \"b\"\naddress = \"127.0.0.1:9062\"\ntransport = \"tcp\"\n";

    /// `sip_method` and `sip_status`: known methods (exact case) to a mask, codes and
    /// classes to ranges; anything else an error at its line and field.
    #[test]
    fn sip_first_line_matches() {
        let route = |m: &str| {
            format!("{BASE}[[route]]\nname = \"r\"\nmatch = {{ {m} }}\nforward = [\"a\"]\n")
        };
        let p = compile_str(&route(
            r#"sip_method = ["OPTIONS", "NOTIFY"], sip_status = ["4xx", 503, "200"]"#,
        ))
        .unwrap();
        let m = &p.routes[0].matcher;
        assert_eq!(m.sip_method, Some((1 << 4) | (1 << 8)));
        assert_eq!(m.sip_status, Some(vec![400..=499, 503..=503, 200..=200]));
        for (m, field, message) in [
            (
                r#"sip_method = ["options"]"#,
                "route[0].match.sip_method[0]",
                "is not a SIP method",
            ),
            (
                r#"sip_method = ["INVITE", "FOO"]"#,
                "route[0].match.sip_method[1]",
                "is not a SIP method",
            ),
            (
                r#"sip_status = ["7xx"]"#,
                "route[0].match.sip_status[0]",
                "is not a SIP status",
            ),
            (
                r#"sip_status = [99]"#,
                "route[0].match.sip_status[0]",
                "is not a SIP status",
            ),
            (
                r#"sip_status = ["4x"]"#,
                "route[0].match.sip_status[0]",
                "is not a SIP status",
            ),
        ] {
            let e = one_error(&route(m));
            assert_eq!((e.line, e.field.as_str()), (13, field), "{m}");
            assert!(e.message.contains(message), "{m}: {}", e.message);
        }
    }

    /// Destination addresses: an IP or a host name with a port; not a wildcard, not port 0,
    /// not a name without a port. `[resolver]`: a hosts file relative to the configuration,
    /// an interval from 1 s to 1 h.
    #[test]
    fn destination_addresses_and_the_resolver() {
        let dest = |address: &str| {
            format!(
                "[[listener]]\nname = \"l\"\nudp = \"127.0.0.1:9060\"\n[[destination]]\nname = \"a\"\naddress = \"{address}\"\n"
            )
        };
        let p = compile(
            Path::new("/etc/hepfwd/x.toml"),
            &(dest("Homer.Lab:9060")
                + "[resolver]\nhosts_file = \"hosts\"\nresolve_interval = \"5s\"\n"),
        )
        .unwrap();
        let d = &p.destinations[0];
        assert_eq!(
            d.host.as_ref().map(ToString::to_string).as_deref(),
            Some("homer.lab:9060")
        );
        assert!(!d.resolved());
        assert_eq!(d.address.port(), 9060);
        assert_eq!(
            p.resolver.resolver,
            crate::resolve::Resolver::HostsFile("/etc/hepfwd/hosts".into())
        );
        assert_eq!(p.resolver.interval, Duration::from_secs(5));
        let p = compile_str(&dest("198.18.2.2:9060")).unwrap();
        assert!(p.destinations[0].resolved() && p.destinations[0].host.is_none());
        assert_eq!(p.resolver, ResolverPlan::default());
        assert_eq!(p.resolver.interval, Duration::from_secs(30));
        for (address, message) in [
            ("homer.lab", "is not an IP:port or host:port address"),
            ("0.0.0.0:9060", "is not a collector's address"),
            ("198.18.2.2:0", "is not a collector's address"),
            ("homer.lab:0", "is not an IP:port or host:port address"),
            ("10.0.0.300:9060", "is not an IP:port or host:port address"),
        ] {
            let e = one_error(&dest(address));
            assert_eq!(
                (e.line, e.field.as_str()),
                (6, "destination[0].address"),
                "{address}"
            );
            assert!(e.message.contains(message), "{address}: {}", e.message);
        }
        let e = one_error(&(dest("homer:1") + "[resolver]\nresolve_interval = \"100ms\"\n"));
        assert_eq!((e.line, e.field.as_str()), (8, "resolver.resolve_interval"));
    }

    #[test]
    fn tcp_addresses_overlap_on_the_same_port_and_address_or_a_wildcard() {
        let overlap =
            |a: &str, b: &str| tcp_addresses_overlap(a.parse().unwrap(), b.parse().unwrap());
        assert!(overlap("127.0.0.1:9061", "127.0.0.1:9061"));
        assert!(overlap("0.0.0.0:9061", "127.0.0.1:9061"));
        assert!(overlap("127.0.0.1:9061", "[::]:9061"));
        assert!(!overlap("127.0.0.1:9061", "127.0.0.1:9062"));
        assert!(!overlap("127.0.0.1:9061", "127.0.0.2:9061"));
        assert!(!overlap("0.0.0.0:9061", "[::1]:9061"));
        assert!(!overlap("127.0.0.1:0", "127.0.0.1:0"));
    }

    #[test]
    fn an_admin_address_equal_to_a_tcp_listener_is_an_error_at_its_line() {
        let e = one_error(
            "[[listener]]\nname = \"l\"\ntcp = \"127.0.0.1:9061\"\n[admin]\nlisten = \"0.0.0.0:9061\"\n",
        );
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (5, 10, "admin.listen")
        );
        assert!(e.message.contains("listener[0].tcp"), "{}", e.message);
    }

    #[test]
    fn listen_backlog_defaults_to_1024_and_is_bounded() {
        assert_eq!(compile_str(BASE).unwrap().engine.listen_backlog, 1024);
        let p = compile_str(&format!("{BASE}[engine]\nlisten_backlog = 37\n")).unwrap();
        assert_eq!(p.engine.listen_backlog, 37);
        let e = one_error(&format!("{BASE}[engine]\nlisten_backlog = 0\n"));
        assert_eq!(e.field, "engine.listen_backlog");
    }

    #[test]
    fn tcp_listener_guards_have_defaults_and_errors_name_the_field() {
        let tcp = "[[listener]]\nname = \"t\"\ntcp = \"127.0.0.1:9070\"\n";
        let p = compile_str(&format!("{BASE}{tcp}")).unwrap_or_else(|e| panic!("{e}"));
        let l = &p.listeners[1];
        assert_eq!(l.max_connections, defaults::MAX_CONNECTIONS);
        assert_eq!(
            l.idle_timeout,
            Duration::from_millis(defaults::IDLE_TIMEOUT_MS)
        );
        let p = compile_str(&format!(
            "{BASE}{tcp}max_connections = 10\nidle_timeout = \"2s\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.listeners[1].max_connections, 10);
        assert_eq!(p.listeners[1].idle_timeout, Duration::from_secs(2));
        let e = one_error(&format!("{BASE}{tcp}max_connections = 0\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (14, "listener[1].max_connections")
        );
        let e = one_error(&format!("{BASE}{tcp}idle_timeout = \"forever\"\n"));
        assert_eq!((e.line, e.field.as_str()), (14, "listener[1].idle_timeout"));
        let e = one_error(&format!(
            "{BASE}[[listener]]\nname = \"u\"\nudp = \"127.0.0.1:9071\"\nidle_timeout = \"5s\"\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (14, "listener[1].idle_timeout"));
        assert!(e.message.contains("TCP listeners only"), "{}", e.message);
    }

    #[test]
    fn the_reference_example_compiles_as_its_comments_say() {
        let src = include_str!("../../../config/example.toml");
        let p = compile(Path::new("config/example.toml"), src).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.admin, Some("127.0.0.1:9100".parse().unwrap()));
        let l = &p.listeners[0];
        assert_eq!(l.auth_key.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(l.allow.as_ref().unwrap().len(), 2);
        assert_eq!(p.destinations[1].transport, Transport::Tcp);
        assert_eq!(p.destinations[0].hep_version, 3);
        let r = &p.routes[0];
        assert_eq!(
            r.action,
            Action::Forward {
                targets: vec![0, 1],
                mode: ForwardMode::Hash
            }
        );
        assert_eq!(r.matcher.proto, Some(vec![1]));
        assert_eq!(
            r.matcher.correlation.as_ref().unwrap().suffix,
            vec![b"@carrier.example".to_vec()]
        );
        assert_eq!(
            r.rewrite,
            vec![
                Edit {
                    id: ChunkId::generic(0x000c),
                    value: Some(vec![0, 0, 0, 42])
                },
                Edit {
                    id: ChunkId::generic(0x0013),
                    value: Some(b"edge-1".to_vec())
                },
                Edit {
                    id: ChunkId::generic(0x000e),
                    value: None
                },
                Edit {
                    id: ChunkId {
                        vendor: 3,
                        kind: 0x0100
                    },
                    value: Some(b"x".to_vec())
                },
            ]
        );
        let r = &p.routes[1];
        assert_eq!(r.matcher.capture_id, Some(vec![2000..=2999]));
        assert_eq!(r.sample_ppm, Some(250_000));
        assert_eq!(
            r.matcher.source.as_ref().unwrap()[0].to_string(),
            "198.18.1.0/24"
        );
        assert_eq!(p.routes[2].action, Action::Drop);
        assert_eq!(p.routes[2].matcher.proto, Some(vec![100]));
        assert_eq!(
            p.default.as_ref().unwrap().action,
            Action::Forward {
                targets: vec![0],
                mode: ForwardMode::All
            }
        );
    }

    #[test]
    fn spool_parses_defaults_and_gets_a_directory_per_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().display().to_string();
        let p = compile_str(&format!("{BASE}spool = {{ dir = \"{base}\" }}\n")).unwrap();
        let spool = p.destinations[1].spool.clone().unwrap();
        assert_eq!(spool.dir, tmp.path().join("b"));
        assert_eq!(spool.max_bytes, 1 << 30);
        assert_eq!(spool.sync, Duration::from_secs(1));
        assert_eq!(spool.on_full, OnFull::DropOldest);
        assert!(tmp.path().join("b").is_dir(), "created by the check");
        assert_eq!(p.destinations[0].spool, None);

        let src = format!(
            "{BASE}spool = {{ dir = \"{base}\", max_bytes = \"64MiB\", sync = \"250ms\", on_full = \"drop-newest\" }}\n"
        );
        let spool = compile_str(&src).unwrap().destinations[1]
            .spool
            .clone()
            .unwrap();
        assert_eq!(spool.max_bytes, 64 << 20);
        assert_eq!(spool.sync, Duration::from_millis(250));
        assert_eq!(spool.on_full, OnFull::DropNewest);
    }

    #[test]
    fn spool_errors_name_line_field_and_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().display().to_string();
        // A directory under a regular file cannot be created: the OS says why.
        let file = tmp.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = one_error(&format!(
            "{BASE}spool = {{ dir = \"{}\" }}\n",
            file.display()
        ));
        assert_eq!((e.line, e.field.as_str()), (11, "destination[1].spool.dir"));
        assert!(e.message.contains("Not a directory"), "{}", e.message);

        let e = one_error(&format!(
            "{BASE}spool = {{ dir = \"{base}\", on_full = \"panic\" }}\n"
        ));
        assert_eq!(e.field, "destination[1].spool.on_full");
        let e = one_error(&format!(
            "{BASE}spool = {{ dir = \"{base}\", max_bytes = \"1KiB\" }}\n"
        ));
        assert_eq!(e.field, "destination[1].spool.max_bytes");
        assert!(e.message.contains("out of range"), "{}", e.message);
        let e = one_error(&format!(
            "{BASE}spool = {{ dir = \"{base}\", sync = \"soon\" }}\n"
        ));
        assert_eq!(e.field, "destination[1].spool.sync");
        let e = one_error(&format!("{BASE}spool = {{ dir = \"{base}\", size = 1 }}\n"));
        assert!(e.field.starts_with("destination[1].spool"), "{}", e.field);

        // A datagram destination has no spool.
        let src = BASE.replace(
            "address = \"127.0.0.1:9061\"\n",
            &format!("address = \"127.0.0.1:9061\"\nspool = {{ dir = \"{base}\" }}\n"),
        );
        let e = one_error(&src);
        assert_eq!(e.field, "destination[0].spool");
        assert!(
            e.message.contains("stream destinations only"),
            "{}",
            e.message
        );
    }

    #[test]
    fn two_destinations_never_share_a_spool_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        std::fs::create_dir_all(one.join("b")).unwrap();
        std::fs::create_dir_all(&two).unwrap();
        // two/c is one/b under another name.
        std::os::unix::fs::symlink(one.join("b"), two.join("c")).unwrap();
        let src = format!(
            "{BASE}spool = {{ dir = \"{}\" }}\n[[destination]]\nname = \"c\"\naddress = \"127.0.0.1:9063\"\ntransport = \"tcp\"\nspool = {{ dir = \"{}\" }}\n",
            one.display(),
            two.display()
        );
        let e = one_error(&src);
        assert_eq!(e.field, "destination[2].spool.dir");
        assert!(
            e.message.contains("also destination \"b\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn tcp_queue_bytes_and_stall_timeout_parse_default_and_name_their_errors() {
        let p = compile_str(BASE).unwrap();
        assert_eq!(p.destinations[1].queue_bytes, 64 << 20);
        assert_eq!(p.destinations[1].stall_timeout, Duration::from_secs(10));
        let src = format!("{BASE}queue_bytes = \"4MiB\"\nstall_timeout = \"1500ms\"\n");
        let p = compile_str(&src).unwrap();
        assert_eq!(p.destinations[1].queue_bytes, 4 << 20);
        assert_eq!(p.destinations[1].stall_timeout, Duration::from_millis(1500));
        let p = compile_str(&format!("{BASE}queue_bytes = 100000\n")).unwrap();
        assert_eq!(p.destinations[1].queue_bytes, 100_000);

        let e = one_error(&format!("{BASE}queue_bytes = \"4 parsecs\"\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (11, "destination[1].queue_bytes")
        );
        assert!(
            e.message.contains("\"4 parsecs\" is not a size"),
            "{}",
            e.message
        );
        let e = one_error(&format!("{BASE}queue_bytes = 1000\n"));
        assert!(e.message.contains("out of range"), "{}", e.message);
        let e = one_error(&format!("{BASE}stall_timeout = \"5ms\"\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (11, "destination[1].stall_timeout")
        );
        let src = BASE.replace(
            "address = \"127.0.0.1:9061\"\n",
            "address = \"127.0.0.1:9061\"\nstall_timeout = \"1s\"\n",
        );
        let e = one_error(&src);
        assert_eq!(e.field, "destination[0].stall_timeout");
        assert!(e.message.contains("TCP destinations only"), "{}", e.message);
    }

    #[test]
    fn errors_name_file_line_column_field_and_hint() {
        let src = format!("{BASE}[[route]]\nname = \"r\"\nforward = [\"a\", \"homer-c\"]\n");
        let e = one_error(&src);
        assert_eq!((e.line, e.column), (13, 17));
        assert_eq!(e.field, "route[0].forward[1]");
        assert!(e.message.contains("unknown destination \"homer-c\""));
        assert_eq!(e.hint.as_deref(), Some("defined destinations: a, b"));
        assert_eq!(
            e.to_string().lines().next().unwrap(),
            "t.toml:13:17: route[0].forward[1]: unknown destination \"homer-c\""
        );

        // Syntax and schema errors from the TOML parser carry a position and a path too.
        let e = one_error(&format!(
            "{BASE}[[route]]\nname = \"r\"\nfoward = [\"a\"]\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (13, "route[0].foward"));
        assert!(
            e.message.contains("unknown field `foward`"),
            "{}",
            e.message
        );
        let e = one_error(&format!(
            "{BASE}[[route]]\nname = \"r\"\nforward = [\"a\"\n"
        ));
        assert_eq!(e.line, 14);
    }

    /// A route whose `rewrite` list spans several lines: parser errors inside it name the
    /// route, the entry and the key, not the text before the first `=` on the line.
    #[test]
    fn parser_errors_inside_a_multi_line_rewrite_name_the_entry_and_key() {
        let routes = "[[route]]\nname = \"r0\"\nforward = [\"a\"]\n[[route]]\nname = \"r1\"\nforward = [\"b\"]\n[[route]]\nname = \"r2\"\nforward = [\"a\"]\nrewrite = [\n    { set = \"capture_id\", value = 42 },\n";
        let cases: &[(&str, &str)] = &[
            (
                "    { delete = \"auth_key\", width = \"two\" },\n]\n",
                "t.toml:22:36: route[2].rewrite[1].width: invalid type: string \"two\", expected i64",
            ),
            (
                "    { delete = \"auth_key\" },\n    \"node_name\",\n]\n",
                "t.toml:23:5: route[2].rewrite[2]: invalid type: string \"node_name\", expected a rewrite entry { set = CHUNK, value = V } or { delete = CHUNK }",
            ),
        ];
        for (tail, want) in cases {
            let e = one_error(&format!("{BASE}{routes}{tail}"));
            assert_eq!(e.to_string().lines().next(), Some(*want), "{tail}");
        }
    }

    /// Values of the wrong shape are rejected by the parser, which names the field by the path
    /// it was at and points at the value.
    #[test]
    fn parser_errors_name_the_path_of_the_value() {
        let cases: &[(&str, &str)] = &[
            (
                "forward = [\"a\"]\nrewrite = [\n    { set = \"capture_id\", value = 42 },\n    { delete = 1.5 },\n]",
                "t.toml:16:16: route[0].rewrite[1].delete: invalid type: floating point `1.5`, expected a chunk: a name, a generic type \"0x0013\", or { vendor = 3, type = 0x0100 }",
            ),
            (
                "forward = [\"a\"]\nrewrite = [\n    { delete = \"auth_key\", wdith = 2 },\n]",
                "t.toml:15:28: route[0].rewrite[0].wdith: unknown field `wdith`, expected one of `set`, `delete`, `value`, `width`",
            ),
            (
                "forward = [\"a\"]\nrewrite = [{ set = { vendor = 3, typ = 1 }, value = \"x\" }]",
                "t.toml:14:34: route[0].rewrite[0].set.typ: unknown field `typ`, expected `vendor` or `type`",
            ),
            (
                "forward = [\"a\"]\nrewrite = [{ set = \"node_name\", value = true }]",
                "t.toml:14:41: route[0].rewrite[0].value: invalid type: boolean `true`, expected a number or a string",
            ),
            (
                "forward = [\"a\"]\nmatch = { correlation = { suffix = [\"@a\", 3] } }",
                "t.toml:14:43: route[0].match.correlation.suffix[1]: invalid type: integer `3`, expected a string",
            ),
            (
                "forward = [\"a\"]\nmatch = { proto = [\"sip\", 1.5] }",
                "t.toml:14:27: route[0].match.proto[1]: invalid type: floating point `1.5`, expected a number or a string",
            ),
            (
                "forward = [\"a\"]\nsample = \"half\"",
                "t.toml:14:10: route[0].sample: invalid type: string \"half\", expected f64",
            ),
            ("forward = [\"a\"\n", "t.toml:15:1: (syntax): invalid array"),
        ];
        for (body, want) in cases {
            let e = one_error(&format!("{BASE}[[route]]\nname = \"r\"\n{body}\n"));
            assert_eq!(e.to_string().lines().next(), Some(*want), "{body}");
        }
    }

    /// A correlation test takes one string or a list of them; both compile alike, and an
    /// empty list is an error.
    #[test]
    fn correlation_tests_take_one_string_or_a_list() {
        let matcher = |tests: &str| {
            let src = format!(
                "{BASE}[[route]]\nname = \"r\"\nforward = [\"a\"]\nmatch = {{ correlation = {{ {tests} }} }}\n"
            );
            compile_str(&src).map(|plan| plan.routes[0].matcher.correlation.clone())
        };
        assert_eq!(
            matcher("exact = \"k\", domain = [\"a.example\", \"b.example\"]"),
            Ok(Some(CorrelationMatcher {
                exact: vec![b"k".to_vec()],
                domain: vec![b"a.example".to_vec(), b"b.example".to_vec()],
                ..CorrelationMatcher::default()
            }))
        );
        let e = one_error(&format!(
            "{BASE}[[route]]\nname = \"r\"\nforward = [\"a\"]\nmatch = {{ correlation = {{ prefix = [] }} }}\n"
        ));
        assert_eq!(
            e.to_string(),
            "t.toml:14:36: route[0].match.correlation.prefix: expected a string or a list of strings"
        );
    }

    /// config/hepfwd.toml, what `cargo xtask run` starts: one listener on UDP and TCP, two
    /// local collectors, everything mirrored to both.
    #[test]
    fn the_default_configuration_mirrors_to_two_local_collectors() {
        let src = include_str!("../../../config/hepfwd.toml");
        let p = compile(Path::new("config/hepfwd.toml"), src).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.admin, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(p.listeners.len(), 1);
        assert_eq!(p.listeners[0].udp, Some("0.0.0.0:9060".parse().unwrap()));
        assert_eq!(p.listeners[0].tcp, Some("0.0.0.0:9060".parse().unwrap()));
        let destinations: Vec<(&str, String, Transport)> = p
            .destinations
            .iter()
            .map(|d| (d.name.as_str(), d.address.to_string(), d.transport))
            .collect();
        assert_eq!(
            destinations,
            [
                ("local-udp", "127.0.0.1:9061".to_string(), Transport::Udp),
                ("local-tcp", "127.0.0.1:9062".to_string(), Transport::Tcp),
            ]
        );
        assert!(p.routes.is_empty());
        let default = p.default.as_ref().unwrap();
        assert_eq!(
            default.action,
            Action::Forward {
                targets: vec![0, 1],
                mode: ForwardMode::All
            }
        );
        assert!(default.rewrite.is_empty());
        assert!(p.invalid.is_empty());
    }

    #[test]
    fn each_field_is_checked() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "mode = \"sticky\"\nforward = [\"a\"]",
                "route[0].mode",
                "unknown mode",
            ),
            (
                "action = \"drop\"\nforward = [\"a\"]",
                "route[0].forward",
                "forwards nowhere",
            ),
            (
                "forward = [\"a\", \"a\"]",
                "route[0].forward[1]",
                "listed twice",
            ),
            ("forward = []", "route[0].forward", "empty"),
            (
                "forward = [\"a\"]\nsample = 1.5",
                "route[0].sample",
                "not a fraction",
            ),
            (
                "forward = [\"a\"]\ndedup = \"soon\"",
                "route[0].dedup",
                "not a duration",
            ),
            (
                "forward = [\"a\"]\ndedup = \"2h\"",
                "route[0].dedup",
                "out of range",
            ),
            (
                "forward = [\"a\"]\nmatch = { proto = [\"sipp\"] }",
                "route[0].match.proto[0]",
                "not a protocol type",
            ),
            (
                "forward = [\"a\"]\nmatch = { capture_id = [\"9-1\"] }",
                "route[0].match.capture_id[0]",
                "not a range",
            ),
            (
                "forward = [\"a\"]\nmatch = { source = [\"10.0.0.0/33\"] }",
                "route[0].match.source[0]",
                "not an IP prefix",
            ),
            (
                "forward = [\"a\"]\nmatch = { inner_port = [70000] }",
                "route[0].match.inner_port[0]",
                "not a number",
            ),
            (
                "forward = [\"a\"]\nmatch = { correlation = { suffix = 3 } }",
                "route[0].match.correlation.suffix",
                "string",
            ),
            (
                "forward = [\"a\"]\nrewrite = [{ set = \"capture_id\", value = 4294967296 }]",
                "route[0].rewrite[0].value",
                "does not fit",
            ),
            (
                "forward = [\"a\"]\nrewrite = [{ set = \"src_ipv4\", value = \"::1\" }]",
                "route[0].rewrite[0].value",
                "not an IPv4",
            ),
            (
                "forward = [\"a\"]\nrewrite = [{ set = \"nodename\", value = \"x\" }]",
                "route[0].rewrite[0].set",
                "unknown chunk",
            ),
            (
                "forward = [\"a\"]\nrewrite = [{ set = { vendor = 3, type = 1 }, value = 7 }]",
                "route[0].rewrite[0].value",
                "needs a width",
            ),
            (
                "forward = [\"a\"]\nrewrite = [{ delete = \"auth_key\", value = \"x\" }]",
                "route[0].rewrite[0].value",
                "takes no value",
            ),
            ("", "route[0]", "nothing to do"),
        ];
        for (body, field, msg) in cases {
            let src = format!("{BASE}[[route]]\nname = \"r\"\n{body}\n");
            let e = one_error(&src);
            assert_eq!(e.field, *field, "{body}: {e}");
            assert!(e.message.contains(msg), "{body}: {e}");
        }
        let e = one_error("[[listener]]\nname = \"l\"\n");
        assert!(e.message.contains("needs udp, tcp or tls"));
        let e = one_error(&format!(
            "{BASE}[[destination]]\nname = \"v2\"\naddress = \"127.0.0.1:1\"\ntransport = \"tcp\"\nhep_version = 2\n"
        ));
        assert_eq!(e.field, "destination[2].hep_version");
        let e = one_error(&format!(
            "{BASE}[[destination]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
        ));
        assert_eq!(e.field, "destination[2].name");
        let e = one_error(&format!(
            "{BASE}[[destination]]\nname = \"c\"\naddress = \"collector\"\n"
        ));
        assert!(e.hint.unwrap().contains("homer.example.net:9060"));
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let src = format!(
            "{BASE}[[route]]\nname = \"r\"\nforward = [\"x\"]\nmode = \"m\"\n[[route]]\nname = \"r\"\naction = \"drop\"\n"
        );
        let errs = compile_str(&src).unwrap_err().0;
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["route[0].forward[0]", "route[0].mode", "route[1].name"]
        );
    }

    /// A self-signed certificate and its key for `localhost`, valid until `until` (year),
    /// written in `dir` as `<name>.pem` and `<name>.key`.
    fn certificate(dir: &Path, name: &str, until: i32) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }

    #[test]
    fn tls_keys_compile_and_each_file_error_names_the_field_its_line_and_the_file() {
        let dir = std::env::temp_dir().join(format!("hepfwd-compile-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = certificate(&dir, "good", 2100);
        let (_, other_key) = certificate(&dir, "other", 2100);
        let (expired, expired_key) = certificate(&dir, "expired", 2020);
        let listener = |cert: &str, key: &str| {
            format!(
                "[[listener]]\nname = \"t\"\ntls = \"127.0.0.1:9070\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"
            )
        };
        // After BASE (10 lines): [[listener]] 11, name 12, tls 13, tls_cert 14, tls_key 15.
        let p = compile_str(&format!("{BASE}{}", listener(&cert, &key)))
            .unwrap_or_else(|e| panic!("{e}"));
        let l = &p.listeners[1];
        assert_eq!(l.tls, Some("127.0.0.1:9070".parse().unwrap()));
        let tls = l.tls_config.as_ref().unwrap();
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert!(!tls.client_auth);

        let missing = dir.join("missing.pem").display().to_string();
        let e = one_error(&format!("{BASE}{}", listener(&missing, &key)));
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (14, 12, "listener[1].tls_cert")
        );
        assert_eq!(
            e.message,
            format!("{missing}: cannot read: No such file or directory (os error 2)")
        );

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not PEM\n").unwrap();
        let garbage = garbage.display().to_string();
        let e = one_error(&format!("{BASE}{}", listener(&cert, &garbage)));
        assert_eq!((e.line, e.field.as_str()), (15, "listener[1].tls_key"));
        assert_eq!(
            e.message,
            format!("{garbage}: no private key in the PEM file")
        );

        let e = one_error(&format!("{BASE}{}", listener(&cert, &other_key)));
        assert_eq!((e.line, e.field.as_str()), (15, "listener[1].tls_key"));
        assert_eq!(
            e.message,
            format!("{other_key}: the private key does not match the certificate in {cert}")
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("give the key the certificate was issued for")
        );

        let e = one_error(&format!("{BASE}{}", listener(&expired, &expired_key)));
        assert_eq!((e.line, e.field.as_str()), (14, "listener[1].tls_cert"));
        assert_eq!(
            e.message,
            format!(
                "{expired}: certificate 0 (CN=rcgen self signed cert) expired on Jan  1 00:00:00 2020 +00:00"
            )
        );

        // The CA of mutual TLS, the handshake timeout, and keys without `tls`.
        let e = one_error(&format!(
            "{BASE}{}tls_client_ca = \"{expired}\"\n",
            listener(&cert, &key)
        ));
        assert_eq!(
            (e.line, e.field.as_str()),
            (16, "listener[1].tls_client_ca")
        );
        let e = one_error(&format!(
            "{BASE}{}tls_handshake_timeout = \"1ms\"\n",
            listener(&cert, &key)
        ));
        assert_eq!(e.field, "listener[1].tls_handshake_timeout");
        let e = one_error(&format!(
            "{BASE}[[listener]]\nname = \"u\"\nudp = \"127.0.0.1:9071\"\ntls_cert = \"{cert}\"\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (14, "listener[1].tls_cert"));
        assert_eq!(e.message, "tls_cert applies to TLS listeners only");

        // Destinations: transport = "tls" with a CA, a server name, a client certificate.
        let dest = format!(
            "[[destination]]\nname = \"s\"\naddress = \"127.0.0.1:9443\"\ntransport = \"tls\"\ntls_ca = \"{cert}\"\n"
        );
        let p = compile_str(&format!("{BASE}{dest}")).unwrap_or_else(|e| panic!("{e}"));
        let d = &p.destinations[2];
        assert_eq!(d.transport, Transport::Tcp);
        let tls = d.tls.as_ref().unwrap();
        assert_eq!(
            tls.server_name,
            rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
        );
        let p = compile_str(&format!(
            "{BASE}{dest}tls_server_name = \"homer.example\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.destinations[2].tls.as_ref().unwrap().server_name,
            rustls::pki_types::ServerName::try_from("homer.example").unwrap()
        );
        let e = one_error(&format!(
            "{BASE}{dest}tls_cert = \"{cert}\"\ntls_key = \"{other_key}\"\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (17, "destination[2].tls_key"));
        let e = one_error(&format!(
            "{BASE}[[destination]]\nname = \"s\"\naddress = \"127.0.0.1:9443\"\ntransport = \"tcp\"\ntls_ca = \"{cert}\"\n"
        ));
        assert_eq!(e.message, "tls_ca applies to TLS destinations only");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
