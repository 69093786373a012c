//! The configuration file as written (TOML), before validation. Every field that can be
//! wrong carries its span, so errors can name the file, line and column.
//!
//! The types here say which shapes of value a key accepts (a string, a number, a list, a
//! table); a value of another shape is rejected by the parser, with its span and field path.
//! What the values mean (names, ranges, addresses) is checked by [`super::compile`].

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// A list of strings as written.
pub type SpannedStrings = Spanned<Vec<Spanned<String>>>;
/// A list of numbers and strings as written (names and numbers, `"A-B"` ranges, ...).
pub type SpannedScalars = Spanned<Vec<Spanned<NumberOrString>>>;

/// A value that is a number or a string: a protocol name or number, a capture id or an
/// `"A-B"` range, a chunk value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberOrString {
    /// An integer.
    Number(i64),
    /// A string.
    String(String),
}

impl fmt::Display for NumberOrString {
    /// As written in the file: `42`, `"sip"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberOrString::Number(number) => write!(f, "{number}"),
            NumberOrString::String(text) => write!(f, "{text:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for NumberOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberOrStringVisitor;

        impl Visitor<'_> for NumberOrStringVisitor {
            type Value = NumberOrString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }

            fn visit_i64<E: de::Error>(self, number: i64) -> Result<NumberOrString, E> {
                Ok(NumberOrString::Number(number))
            }

            fn visit_u64<E: de::Error>(self, number: u64) -> Result<NumberOrString, E> {
                i64::try_from(number)
                    .map(NumberOrString::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(number), &self))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<NumberOrString, E> {
                Ok(NumberOrString::String(text.to_owned()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<NumberOrString, E> {
                Ok(NumberOrString::String(text))
            }
        }

        deserializer.deserialize_any(NumberOrStringVisitor)
    }
}

/// A key that takes one value or a list of them (`suffix = "@a"` or `suffix = ["@a", "@b"]`).
///
/// A single value is read by `T` from the value alone, so `T` is a plain type (a string, a
/// number, a table), not a [`Spanned`]: put the span around the whole, `Spanned<OneOrMany<T>>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list (possibly empty).
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The values, one or many.
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(value) => std::slice::from_ref(value),
            OneOrMany::Many(values) => values,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    /// A list is read element by element (errors name the element); anything else is read as
    /// one `T`, so a value of the wrong type is reported with what `T` expects.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> OneOrManyVisitor<T> {
            fn one<E: de::Error>(value: impl IntoDeserializer<'de, E>) -> Result<OneOrMany<T>, E> {
                T::deserialize(value.into_deserializer()).map(OneOrMany::One)
            }
        }

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<OneOrMany<T>, E> {
                Self::one(value)
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<OneOrMany<T>, E> {
                Self::one(value)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<OneOrMany<T>, E> {
                Self::one(value)
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<OneOrMany<T>, E> {
                Self::one(value)
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<OneOrMany<T>, E> {
                T::deserialize(de::value::StrDeserializer::new(value)).map(OneOrMany::One)
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<OneOrMany<T>, E> {
                Self::one(value)
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<OneOrMany<T>, M::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }

            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<OneOrMany<T>, S::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(value) = seq.next_element()? {
                    values.push(value);
                }
                Ok(OneOrMany::Many(values))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

/// A chunk named in a rewrite: a generic name (`capture_id`), a generic type as a hex string
/// (`"0x0013"`) or a number, or `{ vendor = 3, type = 0x0100 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkRef {
    /// A name or a hex type string.
    Name(String),
    /// A generic chunk type.
    Number(i64),
    /// A vendor chunk.
    Table(ChunkTable),
}

/// `{ vendor = V, type = T }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkTable {
    /// Vendor id (0 = generic).
    pub vendor: i64,
    /// Chunk type.
    #[serde(rename = "type")]
    pub kind: i64,
}

impl<'de> Deserialize<'de> for ChunkRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChunkRefVisitor;

        impl<'de> Visitor<'de> for ChunkRefVisitor {
            type Value = ChunkRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a chunk: a name, a generic type \"0x0013\", or { vendor = 3, type = 0x0100 }",
                )
            }

            fn visit_i64<E: de::Error>(self, number: i64) -> Result<ChunkRef, E> {
                Ok(ChunkRef::Number(number))
            }

            fn visit_u64<E: de::Error>(self, number: u64) -> Result<ChunkRef, E> {
                i64::try_from(number)
                    .map(ChunkRef::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(number), &self))
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<ChunkRef, E> {
                Ok(ChunkRef::Name(name.to_owned()))
            }

            fn visit_string<E: de::Error>(self, name: String) -> Result<ChunkRef, E> {
                Ok(ChunkRef::Name(name))
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<ChunkRef, M::Error> {
                ChunkTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ChunkRef::Table)
            }
        }

        deserializer.deserialize_any(ChunkRefVisitor)
    }
}

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
    /// `[resolver]`: how destinations' host names are resolved.
    pub resolver: Option<Spanned<ResolverSection>>,
}

/// `[resolver]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSection {
    /// Names come from this `/etc/hosts`-format file only (default: the system resolver).
    pub hosts_file: Option<Spanned<String>>,
    /// How often host names are resolved again (`"30s"`).
    pub resolve_interval: Option<Spanned<String>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    pub listen: Option<Spanned<String>>,
    /// `GET /tap?route=NAME` (what a route forwards, live): off unless true.
    pub tap: Option<Spanned<bool>>,
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
    /// TCP: connections open at once.
    pub max_connections: Option<Spanned<i64>>,
    /// TCP: how long a connection may send nothing before it is closed.
    pub idle_timeout: Option<Spanned<String>>,
    /// TCP: how long one frame may take to arrive whole, from its first byte.
    pub frame_timeout: Option<Spanned<String>>,
    /// TLS address (HEPv3 over TLS over TCP).
    pub tls: Option<Spanned<String>>,
    /// TLS: the certificate chain file (PEM).
    pub tls_cert: Option<Spanned<String>>,
    /// TLS: the private key file (PEM).
    pub tls_key: Option<Spanned<String>>,
    /// TLS: the CA file client certificates must chain to (mutual TLS).
    pub tls_client_ca: Option<Spanned<String>>,
    /// TLS: how long a handshake may take (`"10s"`).
    pub tls_handshake_timeout: Option<Spanned<String>>,
}

/// `[[destination]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSection {
    /// Unique name.
    pub name: Spanned<String>,
    /// `IP:port` or `host:port`.
    pub address: Spanned<String>,
    /// `udp` (default), `tcp` or `tls`.
    pub transport: Option<Spanned<String>>,
    /// 3 (default) or 2.
    pub hep_version: Option<Spanned<i64>>,
    /// Written into chunk 0x000e on the way out.
    pub set_auth_key: Option<Spanned<String>>,
    /// TCP: packets held while the collector is slow or away.
    pub queue: Option<Spanned<i64>>,
    /// TCP: bytes held while the collector is slow or away (`"64MiB"` or a number).
    pub queue_bytes: Option<Spanned<ByteSize>>,
    /// TCP: how long written bytes may stay unacknowledged before the connection counts as
    /// stalled (`"10s"`).
    pub stall_timeout: Option<Spanned<String>>,
    /// TLS: the CA file the collector's certificate must chain to (default: system roots).
    pub tls_ca: Option<Spanned<String>>,
    /// TLS: the name the collector's certificate must carry (default: the address's host).
    pub tls_server_name: Option<Spanned<String>>,
    /// TLS: a client certificate chain file (PEM), for mutual TLS.
    pub tls_cert: Option<Spanned<String>>,
    /// TLS: the client certificate's private key file (PEM).
    pub tls_key: Option<Spanned<String>>,
    /// Stream transports: the disk spool (store and forward).
    pub spool: Option<Spanned<SpoolSection>>,
}

/// `spool = { dir = "...", max_bytes = "1GiB", sync = "1s", on_full = "drop-oldest" }` of a
/// `[[destination]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// The directory; the destination's spool is its subdirectory named after it.
    pub dir: Spanned<String>,
    /// The most bytes of segment files (`"1GiB"` or a number).
    pub max_bytes: Option<Spanned<ByteSize>>,
    /// `fdatasync` at most this often (`"1s"`).
    pub sync: Option<Spanned<String>>,
    /// `drop-oldest` (default) or `drop-newest`.
    pub on_full: Option<Spanned<String>>,
}

/// A size in bytes: a number, or a string with a unit (`"64MiB"`, `"512KiB"`, `"1GiB"`,
/// `"100000"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// Bytes.
    Number(i64),
    /// A number with an optional unit: B, KiB, MiB, GiB (powers of 1024) or KB, MB, GB.
    Text(String),
}

impl ByteSize {
    /// The size in bytes, or `None` when the text is not a size.
    pub fn bytes(&self) -> Option<i64> {
        match self {
            ByteSize::Number(n) => Some(*n),
            ByteSize::Text(t) => {
                let t = t.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let (digits, unit) = t.split_at(split);
                let n: i64 = digits.parse().ok()?;
                let unit_bytes: i64 = match unit.trim() {
                    "" | "B" => 1,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    "KB" | "kB" => 1_000,
                    "MB" => 1_000_000,
                    "GB" => 1_000_000_000,
                    _ => return None,
                };
                n.checked_mul(unit_bytes)
            }
        }
    }
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
    pub sample: Option<Spanned<f64>>,
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
    pub proto: Option<SpannedScalars>,
    /// Capture ids, numbers or `"A-B"` ranges.
    pub capture_id: Option<SpannedScalars>,
    /// Node names (chunk 0x0013), exact.
    pub node_name: Option<SpannedStrings>,
    /// Sender prefixes.
    pub source: Option<SpannedStrings>,
    /// Inner source address prefixes.
    pub inner_src: Option<SpannedStrings>,
    /// Inner destination address prefixes.
    pub inner_dst: Option<SpannedStrings>,
    /// Inner ports (source or destination), numbers or ranges.
    pub inner_port: Option<SpannedScalars>,
    /// Correlation key tests.
    pub correlation: Option<Spanned<CorrelationSection>>,
    /// SIP request methods (`"OPTIONS"`, ...).
    pub sip_method: Option<SpannedStrings>,
    /// SIP response statuses: numbers, `"503"` or a class `"4xx"`.
    pub sip_status: Option<SpannedScalars>,
}

/// `correlation = { ... }`: each a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationSection {
    /// Whole key.
    pub exact: Option<Spanned<OneOrMany<String>>>,
    /// Key starts with.
    pub prefix: Option<Spanned<OneOrMany<String>>>,
    /// Key ends with.
    pub suffix: Option<Spanned<OneOrMany<String>>>,
    /// The part after the last `@`.
    pub domain: Option<Spanned<OneOrMany<String>>>,
}

/// One `rewrite` entry: `{ set = CHUNK, value = V }` or `{ delete = CHUNK }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rewrite entry { set = CHUNK, value = V } or { delete = CHUNK }"
)]
pub struct RewriteEntry {
    /// Chunk to set: a name (`capture_id`), a hex type (`"0x0013"`), or `{vendor, type}`.
    pub set: Option<Spanned<ChunkRef>>,
    /// Chunk to delete, same forms.
    pub delete: Option<Spanned<ChunkRef>>,
    /// The value for `set`.
    pub value: Option<Spanned<NumberOrString>>,
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
    /// listen(2) backlog of the HEP TCP listeners.
    pub listen_backlog: Option<Spanned<i64>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        key: OneOrMany<i64>,
    }

    fn read(src: &str) -> Result<Vec<i64>, String> {
        toml::from_str::<Holder>(src)
            .map(|holder| holder.key.as_slice().to_vec())
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn one_or_many_reads_one_value_or_a_list_and_reports_what_the_item_expects() {
        assert_eq!(read("key = 7"), Ok(vec![7]));
        assert_eq!(read("key = [1, 2]"), Ok(vec![1, 2]));
        assert_eq!(read("key = []"), Ok(vec![]));
        assert_eq!(
            read("key = \"x\""),
            Err("invalid type: string \"x\", expected i64".to_string())
        );
        assert_eq!(
            read("key = [1, \"x\"]"),
            Err("invalid type: string \"x\", expected i64".to_string())
        );
    }
}
