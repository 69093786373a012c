//! [`TestMessage`]: the HEPv3 packet the tests send, built from defaults plus what a test
//! cares about, instead of a full `Hep3Message { ip_proto: 17, .. }` literal at every site.
//!
//! ```
//! use hepfwd_harness::message::TestMessage;
//! let bytes = TestMessage::sip("call-1@lab").proto(5).capture_id(2001).encode();
//! assert!(bytes.starts_with(b"HEP3"));
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hep_common::chunk::ChunkId;
use hep_common::v3::{Hep3Message, Payload, RawChunk};

/// The default captured source: `198.18.9.1:5060`.
pub const SOURCE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 1)), 5060);
/// The default captured destination: `198.18.9.2:5060`.
pub const DESTINATION: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 2)), 5060);
/// The default capture time, seconds.
pub const TIMESTAMP_SECONDS: u32 = 1_700_000_000;
/// Protocol type SIP.
pub const PROTO_SIP: u8 = 1;
/// The default capture id.
pub const CAPTURE_ID: u32 = 2001;

/// A SIP INVITE carrying `call_id` (the Call-ID header is what call-sticky routing keys on).
pub fn sip_invite(call_id: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@198.18.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.9.1\r\nCall-ID: {call_id}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A HEPv3 message over UDP (`ip_proto` 17) to build: every field has a default
/// ([`SOURCE`] → [`DESTINATION`], [`TIMESTAMP_SECONDS`].0, SIP, capture id
/// [`CAPTURE_ID`], no optional chunks); setters change one field each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestMessage {
    /// Captured source address and port.
    source: SocketAddr,
    /// Captured destination address and port.
    destination: SocketAddr,
    /// Capture time: seconds, microseconds.
    timestamp: (u32, u32),
    /// Protocol type (0x000b).
    proto_type: u8,
    /// Capture id (0x000c).
    capture_id: u32,
    /// Authentication key (0x000e).
    auth_key: Option<Vec<u8>>,
    /// Correlation id (0x0011).
    correlation_id: Option<Vec<u8>>,
    /// Node name (0x0013).
    node_name: Option<Vec<u8>>,
    /// Further chunks before the payload, in order.
    extra: Vec<(ChunkId, Vec<u8>)>,
    /// The payload (0x000f, or 0x0010 when `compressed`).
    payload: Vec<u8>,
    /// The payload goes in chunk 0x0010 (its bytes as given: the caller compresses).
    compressed: bool,
}

impl TestMessage {
    /// SIP (type 1) whose payload is [`sip_invite`]`(call_id)`.
    pub fn sip(call_id: &str) -> TestMessage {
        TestMessage::with_payload(sip_invite(call_id))
    }

    /// A message with `payload` and the defaults.
    pub fn with_payload(payload: impl Into<Vec<u8>>) -> TestMessage {
        TestMessage {
            source: SOURCE,
            destination: DESTINATION,
            timestamp: (TIMESTAMP_SECONDS, 0),
            proto_type: PROTO_SIP,
            capture_id: CAPTURE_ID,
            auth_key: None,
            correlation_id: None,
            node_name: None,
            extra: Vec::new(),
            payload: payload.into(),
            compressed: false,
        }
    }

    /// Sets the protocol type.
    pub fn proto(mut self, proto_type: u8) -> TestMessage {
        self.proto_type = proto_type;
        self
    }

    /// Sets the capture id.
    pub fn capture_id(mut self, capture_id: u32) -> TestMessage {
        self.capture_id = capture_id;
        self
    }

    /// Sets the captured source.
    pub fn source(mut self, address: IpAddr, port: u16) -> TestMessage {
        self.source = SocketAddr::new(address, port);
        self
    }

    /// Sets the captured destination.
    pub fn destination(mut self, address: IpAddr, port: u16) -> TestMessage {
        self.destination = SocketAddr::new(address, port);
        self
    }

    /// Sets the capture time.
    pub fn timestamp(mut self, seconds: u32, microseconds: u32) -> TestMessage {
        self.timestamp = (seconds, microseconds);
        self
    }

    /// Sets (or, with `None`, removes) the authentication key.
    pub fn auth_key(mut self, key: Option<&[u8]>) -> TestMessage {
        self.auth_key = key.map(<[u8]>::to_vec);
        self
    }

    /// Sets (or removes) the correlation id.
    pub fn correlation(mut self, correlation_id: Option<&[u8]>) -> TestMessage {
        self.correlation_id = correlation_id.map(<[u8]>::to_vec);
        self
    }

    /// Sets (or removes) the node name.
    pub fn node_name(mut self, node_name: Option<&[u8]>) -> TestMessage {
        self.node_name = node_name.map(<[u8]>::to_vec);
        self
    }

    /// Adds a chunk (vendor, type, value) before the payload.
    pub fn chunk(mut self, vendor: u16, kind: u16, value: &[u8]) -> TestMessage {
        self.extra.push((ChunkId { vendor, kind }, value.to_vec()));
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> TestMessage {
        self.payload = payload.into();
        self
    }

    /// Sets the payload as a compressed one: `bytes` go in chunk 0x0010 as they are.
    pub fn compressed_payload(mut self, bytes: impl Into<Vec<u8>>) -> TestMessage {
        self.payload = bytes.into();
        self.compressed = true;
        self
    }

    /// The HEPv3 bytes. Panics when the message cannot be encoded (a test's mistake).
    pub fn encode(&self) -> Vec<u8> {
        let extra: Vec<RawChunk<'_>> = self
            .extra
            .iter()
            .map(|(id, value)| RawChunk { id: *id, value })
            .collect();
        let message = Hep3Message {
            ip_proto: 17,
            src_ip: self.source.ip(),
            dst_ip: self.destination.ip(),
            src_port: self.source.port(),
            dst_port: self.destination.port(),
            ts_sec: self.timestamp.0,
            ts_usec: self.timestamp.1,
            proto_type: self.proto_type,
            capture_id: self.capture_id,
            auth_key: self.auth_key.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            vlan_id: None,
            node_name: self.node_name.as_deref(),
            extra: &extra,
            payload: if self.compressed {
                Payload::Compressed(&self.payload)
            } else {
                Payload::Plain(&self.payload)
            },
        };
        let mut bytes = vec![0u8; message.encoded_len()];
        let length = message
            .encode(&mut bytes)
            .expect("the test message encodes as HEPv3");
        bytes.truncate(length);
        bytes
    }
}
