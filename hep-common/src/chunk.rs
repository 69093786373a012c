//! HEPv3 chunk identifiers and value types (spec REV 37, `../shared/HEP.md` §1.4), capture
//! protocol types (§1.6) and vendor ids (§1.7).

/// The HEPv3 magic, `HEP3`.
pub const MAGIC: [u8; 4] = *b"HEP3";
/// Size of the HEPv3 packet header (magic + total length).
pub const HEADER_LEN: usize = 6;
/// Size of a chunk header (vendor, type, length).
pub const CHUNK_HEADER_LEN: usize = 6;
/// Largest HEPv3 packet (the u16 total length).
pub const MAX_PACKET_LEN: usize = 65_535;
/// Largest chunk value.
pub const MAX_VALUE_LEN: usize = MAX_PACKET_LEN - HEADER_LEN - CHUNK_HEADER_LEN;
/// Most chunks one packet may carry. Real agents send 10–20; a packet with more is treated
/// as invalid by every hepfwd path (kernel and userspace alike).
pub const MAX_CHUNKS: usize = 64;

/// The generic vendor (chunks defined by the spec).
pub const VENDOR_GENERIC: u16 = 0x0000;

/// A chunk's identity: vendor and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    /// Vendor id (0 = generic).
    pub vendor: u16,
    /// Type id.
    pub kind: u16,
}

impl ChunkId {
    /// A generic (vendor 0) chunk id.
    pub const fn generic(kind: u16) -> Self {
        ChunkId {
            vendor: VENDOR_GENERIC,
            kind,
        }
    }
}

/// IP protocol family (uint8; 2 = IPv4, 10 = IPv6).
pub const IP_FAMILY: u16 = 0x0001;
/// IP protocol id (uint8).
pub const IP_PROTO: u16 = 0x0002;
/// IPv4 source address.
pub const SRC_IPV4: u16 = 0x0003;
/// IPv4 destination address.
pub const DST_IPV4: u16 = 0x0004;
/// IPv6 source address.
pub const SRC_IPV6: u16 = 0x0005;
/// IPv6 destination address.
pub const DST_IPV6: u16 = 0x0006;
/// Source port (uint16).
pub const SRC_PORT: u16 = 0x0007;
/// Destination port (uint16).
pub const DST_PORT: u16 = 0x0008;
/// Timestamp seconds (uint32).
pub const TS_SEC: u16 = 0x0009;
/// Timestamp microseconds offset (uint32).
pub const TS_USEC: u16 = 0x000a;
/// Capture protocol type (uint8), see [`proto`].
pub const PROTO_TYPE: u16 = 0x000b;
/// Capture agent id (uint32).
pub const CAPTURE_ID: u16 = 0x000c;
/// Keep-alive timer (uint16).
pub const KEEPALIVE: u16 = 0x000d;
/// Authentication key (octet string).
pub const AUTH_KEY: u16 = 0x000e;
/// Captured payload (octet string).
pub const PAYLOAD: u16 = 0x000f;
/// Compressed captured payload (octet string).
pub const COMPRESSED_PAYLOAD: u16 = 0x0010;
/// Internal correlation id (octet string).
pub const CORRELATION_ID: u16 = 0x0011;
/// VLAN id (uint16).
pub const VLAN_ID: u16 = 0x0012;
/// Capture agent name, "node name" (string; REV ≥ 36).
pub const NODE_NAME: u16 = 0x0013;
/// Source MAC (uint64).
pub const SRC_MAC: u16 = 0x0014;
/// Destination MAC (uint64).
pub const DST_MAC: u16 = 0x0015;
/// Ethernet type (uint16).
pub const ETH_TYPE: u16 = 0x0016;
/// TCP flags (uint8).
pub const TCP_FLAGS: u16 = 0x0017;
/// IP TOS (uint8).
pub const IP_TOS: u16 = 0x0018;
/// MOS value (uint16).
pub const MOS: u16 = 0x0020;
/// R-Factor (uint16).
pub const R_FACTOR: u16 = 0x0021;
/// GEO location (octet string).
pub const GEO_LOCATION: u16 = 0x0022;
/// Jitter (uint32).
pub const JITTER: u16 = 0x0023;
/// Transaction type (octet string).
pub const TRANSACTION_TYPE: u16 = 0x0024;
/// Payload JSON keys (octet string).
pub const PAYLOAD_JSON_KEYS: u16 = 0x0025;
/// Tags' values (octet string).
pub const TAG_VALUES: u16 = 0x0026;
/// Type of tag (uint16).
pub const TAG_TYPE: u16 = 0x0027;
/// Event type (uint16).
pub const EVENT_TYPE: u16 = 0x0028;
/// Group id (octet string; REV ≥ 36).
pub const GROUP_ID: u16 = 0x0029;

/// How a chunk's value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// One byte.
    U8,
    /// Two bytes, big endian.
    U16,
    /// Four bytes, big endian.
    U32,
    /// Eight bytes, big endian.
    U64,
    /// Four address bytes.
    Inet4,
    /// Sixteen address bytes.
    Inet6,
    /// Any bytes (text or binary).
    Octets,
}

impl ValueType {
    /// The value size in bytes for fixed-width types.
    pub const fn width(self) -> Option<usize> {
        match self {
            ValueType::U8 => Some(1),
            ValueType::U16 => Some(2),
            ValueType::U32 | ValueType::Inet4 => Some(4),
            ValueType::U64 => Some(8),
            ValueType::Inet6 => Some(16),
            ValueType::Octets => None,
        }
    }
}

/// Name and value type of each generic chunk of spec REV 37.
pub const GENERIC_CHUNKS: &[(u16, &str, ValueType)] = &[
    (IP_FAMILY, "ip_family", ValueType::U8),
    (IP_PROTO, "ip_proto", ValueType::U8),
    (SRC_IPV4, "src_ipv4", ValueType::Inet4),
    (DST_IPV4, "dst_ipv4", ValueType::Inet4),
    (SRC_IPV6, "src_ipv6", ValueType::Inet6),
    (DST_IPV6, "dst_ipv6", ValueType::Inet6),
    (SRC_PORT, "src_port", ValueType::U16),
    (DST_PORT, "dst_port", ValueType::U16),
    (TS_SEC, "ts_sec", ValueType::U32),
    (TS_USEC, "ts_usec", ValueType::U32),
    (PROTO_TYPE, "proto_type", ValueType::U8),
    (CAPTURE_ID, "capture_id", ValueType::U32),
    (KEEPALIVE, "keepalive", ValueType::U16),
    (AUTH_KEY, "auth_key", ValueType::Octets),
    (PAYLOAD, "payload", ValueType::Octets),
    (COMPRESSED_PAYLOAD, "compressed_payload", ValueType::Octets),
    (CORRELATION_ID, "correlation_id", ValueType::Octets),
    (VLAN_ID, "vlan_id", ValueType::U16),
    (NODE_NAME, "node_name", ValueType::Octets),
    (SRC_MAC, "src_mac", ValueType::U64),
    (DST_MAC, "dst_mac", ValueType::U64),
    (ETH_TYPE, "eth_type", ValueType::U16),
    (TCP_FLAGS, "tcp_flags", ValueType::U8),
    (IP_TOS, "ip_tos", ValueType::U8),
    (MOS, "mos", ValueType::U16),
    (R_FACTOR, "r_factor", ValueType::U16),
    (GEO_LOCATION, "geo_location", ValueType::Octets),
    (JITTER, "jitter", ValueType::U32),
    (TRANSACTION_TYPE, "transaction_type", ValueType::Octets),
    (PAYLOAD_JSON_KEYS, "payload_json_keys", ValueType::Octets),
    (TAG_VALUES, "tag_values", ValueType::Octets),
    (TAG_TYPE, "tag_type", ValueType::U16),
    (EVENT_TYPE, "event_type", ValueType::U16),
    (GROUP_ID, "group_id", ValueType::Octets),
];

/// The value type of a generic chunk (vendor 0), `None` for unknown types.
pub fn generic_type(kind: u16) -> Option<ValueType> {
    GENERIC_CHUNKS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, _, t)| *t)
}

/// The generic chunk type with this name (as in [`GENERIC_CHUNKS`]).
pub fn generic_by_name(name: &str) -> Option<(u16, ValueType)> {
    GENERIC_CHUNKS
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|(k, _, t)| (*k, *t))
}

/// The value width every valid packet must use for `(vendor, kind)`, if fixed.
///
/// This is the strict-width rule of heplify-server (`../shared/HEP.md` §1.5): a fixed-width
/// generic chunk of any other size makes the whole packet invalid. It is written as a `match`
/// so the kernel can evaluate it without a table walk.
#[inline(always)]
pub const fn fixed_width(vendor: u16, kind: u16) -> Option<usize> {
    if vendor != VENDOR_GENERIC {
        return None;
    }
    match kind {
        IP_FAMILY | IP_PROTO | PROTO_TYPE | TCP_FLAGS | IP_TOS => Some(1),
        SRC_PORT | DST_PORT | KEEPALIVE | VLAN_ID | ETH_TYPE | MOS | R_FACTOR | TAG_TYPE
        | EVENT_TYPE => Some(2),
        SRC_IPV4 | DST_IPV4 | TS_SEC | TS_USEC | CAPTURE_ID | JITTER => Some(4),
        SRC_MAC | DST_MAC => Some(8),
        SRC_IPV6 | DST_IPV6 => Some(16),
        _ => None,
    }
}

/// Capture protocol types (chunk 0x000b), spec values and de-facto ones (§1.6).
pub mod proto {
    /// SIP.
    pub const SIP: u8 = 0x01;
    /// XMPP.
    pub const XMPP: u8 = 0x02;
    /// SDP.
    pub const SDP: u8 = 0x03;
    /// RTP.
    pub const RTP: u8 = 0x04;
    /// RTCP (JSON).
    pub const RTCP: u8 = 0x05;
    /// MGCP.
    pub const MGCP: u8 = 0x06;
    /// MEGACO (H.248).
    pub const MEGACO: u8 = 0x07;
    /// M2UA.
    pub const M2UA: u8 = 0x08;
    /// M3UA.
    pub const M3UA: u8 = 0x09;
    /// IAX.
    pub const IAX: u8 = 0x0a;
    /// H.322.
    pub const H322: u8 = 0x0b;
    /// H.321.
    pub const H321: u8 = 0x0c;
    /// M2PA.
    pub const M2PA: u8 = 0x0d;
    /// QoS report JSON (Kamailio, de facto).
    pub const QOS_REPORT: u8 = 0x20;
    /// MOS full report.
    pub const MOS_FULL: u8 = 0x22;
    /// MOS short report / RTCP-XR.
    pub const MOS_SHORT: u8 = 0x23;
    /// SIP JSON.
    pub const SIP_JSON: u8 = 0x32;
    /// DNS JSON.
    pub const DNS: u8 = 0x35;
    /// M3UA JSON (ISUP).
    pub const ISUP: u8 = 0x36;
    /// RTSP.
    pub const RTSP: u8 = 0x37;
    /// DIAMETER.
    pub const DIAMETER: u8 = 0x38;
    /// GSM MAP.
    pub const GSM_MAP: u8 = 0x39;
    /// RTCP PION.
    pub const RTCP_PION: u8 = 0x3a;
    /// CDR.
    pub const CDR: u8 = 0x3c;
    /// Verto.
    pub const VERTO: u8 = 0x3d;
    /// OpenSIPS xlog.
    pub const XLOG: u8 = 0x56;
    /// QoS report JSON (Kamailio 99).
    pub const QOS_99: u8 = 0x63;
    /// Log lines (Kamailio `hlog()`, heplify-server `log`).
    pub const LOG: u8 = 0x64;

    /// Names of protocol types, lower case, as used in configuration and `hepfwd decode`.
    pub const NAMES: &[(u8, &str)] = &[
        (SIP, "sip"),
        (XMPP, "xmpp"),
        (SDP, "sdp"),
        (RTP, "rtp"),
        (RTCP, "rtcp"),
        (MGCP, "mgcp"),
        (MEGACO, "megaco"),
        (M2UA, "m2ua"),
        (M3UA, "m3ua"),
        (IAX, "iax"),
        (H322, "h322"),
        (H321, "h321"),
        (M2PA, "m2pa"),
        (QOS_REPORT, "qos"),
        (MOS_FULL, "mos_full"),
        (MOS_SHORT, "mos_short"),
        (SIP_JSON, "sip_json"),
        (DNS, "dns"),
        (ISUP, "isup"),
        (RTSP, "rtsp"),
        (DIAMETER, "diameter"),
        (GSM_MAP, "gsm_map"),
        (RTCP_PION, "rtcp_pion"),
        (CDR, "cdr"),
        (VERTO, "verto"),
        (XLOG, "xlog"),
        (QOS_99, "qos99"),
        (LOG, "log"),
    ];

    /// The name of a protocol type, `None` for unassigned values.
    pub fn name(value: u8) -> Option<&'static str> {
        NAMES.iter().find(|(v, _)| *v == value).map(|(_, n)| *n)
    }

    /// The protocol type with this name (case-insensitive).
    pub fn by_name(name: &str) -> Option<u8> {
        NAMES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(v, _)| *v)
    }
}

/// Vendor ids of the chunk vendor field (§1.7).
pub mod vendor {
    /// Generic (spec) chunks.
    pub const GENERIC: u16 = 0x0000;
    /// FreeSWITCH.
    pub const FREESWITCH: u16 = 0x0001;
    /// Kamailio/SER.
    pub const KAMAILIO: u16 = 0x0002;
    /// OpenSIPS.
    pub const OPENSIPS: u16 = 0x0003;
    /// Asterisk.
    pub const ASTERISK: u16 = 0x0004;
    /// Homer Project.
    pub const HOMER: u16 = 0x0005;
    /// SipXecs.
    pub const SIPXECS: u16 = 0x0006;
    /// Yeti Switch.
    pub const YETI: u16 = 0x0007;
    /// Genesys.
    pub const GENESYS: u16 = 0x0008;
}
