//! The configuration file as written (TOML), before validation. Every field that can be
//! wrong carries its span, so errors can name the file, line and column.

use serde::Deserialize;
use toml::Spanned;

/// A list of strings as written.
pub type SpannedStrings = Spanned<Vec<Spanned<String>>>;
/// A list of mixed values (names and numbers, ranges, ...) as written.
pub type SpannedValues = Spanned<Vec<Spanned<toml::Value>>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[admin]`.
    pub admin: Option<AdminSection>,
    /// `[[listener]]`.
    #[serde(default)]
    pub listener: Vec<Spanned<ListenerSection>>,
    /// `[[destination]]`.
    #[serde(default)]
    pub destination: Vec<Spanned<DestinationSection>>,
    /// `[[route]]`.
    #[serde(default)]
    pub route: Vec<Spanned<RouteSection>>,
    /// `[default]`: what happens to packets no route took.
    pub default: Option<Spanned<DefaultSection>>,
    /// `[invalid]`: where unparseable packets go (raw), instead of being dropped.
    pub invalid: Option<Spanned<InvalidSection>>,
    /// `[engine]`: tuning.
    pub engine: Option<Spanned<EngineSection>>,
    /// `[xdp]`: the kernel data plane.
    pub xdp: Option<Spanned<XdpSection>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the HTTP server for `/metrics` and `/healthz`.
    pub listen: Option<Spanned<String>>,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Unique name.
    pub name: Spanned<String>,
    /// UDP address.
    pub udp: Option<Spanned<String>>,
    /// TCP address.
    pub tcp: Option<Spanned<String>>,
    /// Required value of chunk 0x000e.
    pub auth_key: Option<Spanned<String>>,
    /// Sender prefixes accepted.
    pub allow: Option<SpannedStrings>,
}

/// `[[destination]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSection {
    /// Unique name.
    pub name: Spanned<String>,
    /// `IP:port`.
    pub address: Spanned<String>,
    /// `udp` (default) or `tcp`.
    pub transport: Option<Spanned<String>>,
    /// 3 (default) or 2.
    pub hep_version: Option<Spanned<i64>>,
    /// Written into chunk 0x000e on the way out.
    pub set_auth_key: Option<Spanned<String>>,
    /// TCP: packets held while the collector is slow or away.
    pub queue: Option<Spanned<i64>>,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Unique name.
    pub name: Spanned<String>,
    /// Match keys (all must match); absent = every packet.
    #[serde(rename = "match")]
    pub matches: Option<Spanned<MatchSection>>,
    /// `forward` (default) or `drop`.
    pub action: Option<Spanned<String>>,
    /// Destination names.
    pub forward: Option<SpannedStrings>,
    /// `all`, `hash`, `round-robin`, `failover`.
    pub mode: Option<Spanned<String>>,
    /// Chunk edits.
    pub rewrite: Option<Spanned<Vec<Spanned<RewriteEntry>>>>,
    /// Fraction of calls kept.
    pub sample: Option<Spanned<toml::Value>>,
    /// Duplicate suppression window, e.g. `"500ms"`.
    pub dedup: Option<Spanned<String>>,
    /// Go on with the next routes after this one.
    #[serde(rename = "continue")]
    pub continue_: Option<bool>,
}

/// `match = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    /// Protocol types, names or numbers.
    pub proto: Option<SpannedValues>,
    /// Capture ids, numbers or `"A-B"` ranges.
    pub capture_id: Option<SpannedValues>,
    /// Node names (chunk 0x0013), exact.
    pub node_name: Option<SpannedStrings>,
    /// Sender prefixes.
    pub source: Option<SpannedStrings>,
    /// Inner source address prefixes.
    pub inner_src: Option<SpannedStrings>,
    /// Inner destination address prefixes.
    pub inner_dst: Option<SpannedStrings>,
    /// Inner ports (source or destination), numbers or ranges.
    pub inner_port: Option<SpannedValues>,
    /// Correlation key tests.
    pub correlation: Option<Spanned<CorrelationSection>>,
}

/// `correlation = { ... }`: each a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationSection {
    /// Whole key.
    pub exact: Option<Spanned<toml::Value>>,
    /// Key starts with.
    pub prefix: Option<Spanned<toml::Value>>,
    /// Key ends with.
    pub suffix: Option<Spanned<toml::Value>>,
    /// The part after the last `@`.
    pub domain: Option<Spanned<toml::Value>>,
}

/// One `rewrite` entry: `{ set = CHUNK, value = V }` or `{ delete = CHUNK }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteEntry {
    /// Chunk to set: a name (`capture_id`), a hex type (`"0x0013"`), or `{vendor, type}`.
    pub set: Option<Spanned<toml::Value>>,
    /// Chunk to delete, same forms.
    pub delete: Option<Spanned<toml::Value>>,
    /// The value for `set`.
    pub value: Option<Spanned<toml::Value>>,
    /// Width in bytes of an integer value for a chunk of unknown type (1, 2, 4 or 8).
    pub width: Option<Spanned<i64>>,
}

/// `[default]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSection {
    /// `forward` (default) or `drop`.
    pub action: Option<Spanned<String>>,
    /// Destination names.
    pub forward: Option<SpannedStrings>,
    /// Forwarding mode.
    pub mode: Option<Spanned<String>>,
    /// Chunk edits.
    pub rewrite: Option<Spanned<Vec<Spanned<RewriteEntry>>>>,
}

/// `[invalid]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidSection {
    /// Destinations that receive unparseable packets unchanged.
    pub forward: SpannedStrings,
}

/// `[engine]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// UDP worker threads (default: one per core).
    pub workers: Option<Spanned<i64>>,
    /// Datagrams per recvmmsg/sendmmsg call.
    pub batch: Option<Spanned<i64>>,
    /// Receive buffer per UDP socket, bytes.
    pub recv_buffer: Option<Spanned<i64>>,
    /// Most packets the dedup window remembers.
    pub dedup_entries: Option<Spanned<i64>>,
    /// A UDP destination is unhealthy for this long after an ICMP error.
    pub udp_error_holddown: Option<Spanned<String>>,
    /// Bounded time SIGTERM waits for TCP queues to drain.
    pub drain_timeout: Option<Spanned<String>>,
}

/// `[xdp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    /// Interfaces to attach to.
    pub interfaces: Option<SpannedStrings>,
    /// `native` (default) or `skb`.
    pub attach: Option<Spanned<String>>,
}
