//! The spec's example packet as a golden vector, and pinned regressions for bugs found by
//! the property tests (`tests/proptest_codec.rs`) and the fuzz targets (`fuzz/`).

use core::net::{IpAddr, Ipv4Addr};

use crate::chunk::{ChunkId, MAX_CHUNKS, proto};
use crate::correlation::find_call_id;
use crate::error::HepError;
use crate::rewrite::{ChunkEdit, rewrite};
use crate::v3::{ChunkWriter, Hep3, Hep3Message, Payload, RawChunk};
use crate::version::{HepPacket, HepVersion};

/// The example packet of spec REV 37 (`../shared/HEP.md` §1.9), byte by byte.
#[rustfmt::skip]
const SPEC_EXAMPLE: [u8; 113] = [
    b'H', b'E', b'P', b'3', 0x00, 0x71,                 // magic, total length 113
    0x00, 0x00, 0x00, 0x01, 0x00, 0x07, 0x02,           // IP family: 2 (IPv4)
    0x00, 0x00, 0x00, 0x02, 0x00, 0x07, 0x11,           // IP protocol: 17 (UDP)
    0x00, 0x00, 0x00, 0x03, 0x00, 0x0a, 212, 202, 0, 1, // IPv4 source 212.202.0.1
    0x00, 0x00, 0x00, 0x04, 0x00, 0x0a, 82, 116, 0, 211,// IPv4 destination 82.116.0.211
    0x00, 0x00, 0x00, 0x07, 0x00, 0x08, 0x2e, 0xea,     // source port 12010
    0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x13, 0xc4,     // destination port 5060
    0x00, 0x00, 0x00, 0x09, 0x00, 0x0a, 0x4e, 0x49, 0x82, 0xcb, // seconds 1313440459
    0x00, 0x00, 0x00, 0x0a, 0x00, 0x0a, 0x00, 0x01, 0xd4, 0xc0, // microseconds 120000
    0x00, 0x00, 0x00, 0x0b, 0x00, 0x07, 0x01,           // protocol type 1 (SIP)
    0x00, 0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x00, 0x00, 0xe4, // capture id 228
    0x00, 0x00, 0x00, 0x0f, 0x00, 0x14,                 // payload, chunk length 20
    b'I', b'N', b'V', b'I', b'T', b'E', b' ', b's', b'i', b'p', b':', b'b', b'o', b'b',
];

#[test]
fn spec_example_packet_decodes_field_by_field() {
    let p = match HepPacket::parse(&SPEC_EXAMPLE) {
        Ok(HepPacket::V3(p)) => p,
        other => panic!("not parsed as HEPv3: {other:?}"),
    };
    assert_eq!(HepPacket::V3(p).version(), HepVersion::V3);
    assert_eq!(p.as_bytes().len(), 113);
    assert_eq!(p.chunk_count(), 11);
    assert_eq!(p.ip_family(), Some(2));
    assert_eq!(p.ip_proto(), Some(17));
    assert_eq!(p.src_ipv4(), Some(Ipv4Addr::new(212, 202, 0, 1)));
    assert_eq!(p.dst_ipv4(), Some(Ipv4Addr::new(82, 116, 0, 211)));
    assert_eq!(p.src_ip(), Some(IpAddr::V4(Ipv4Addr::new(212, 202, 0, 1))));
    assert_eq!(p.dst_ip(), Some(IpAddr::V4(Ipv4Addr::new(82, 116, 0, 211))));
    assert_eq!(p.src_ipv6(), None);
    assert_eq!(p.dst_ipv6(), None);
    assert_eq!(p.src_port(), Some(12010));
    assert_eq!(p.dst_port(), Some(5060));
    assert_eq!(p.ts_sec(), Some(1_313_440_459));
    assert_eq!(p.ts_usec(), Some(120_000));
    assert_eq!(p.proto_type(), Some(proto::SIP));
    assert_eq!(p.capture_id(), Some(228));
    assert_eq!(p.payload(), Some(&b"INVITE sip:bob"[..]));
    // Nothing else is there.
    assert_eq!(p.keepalive(), None);
    assert_eq!(p.auth_key(), None);
    assert_eq!(p.compressed_payload(), None);
    assert_eq!(p.correlation_id(), None);
    assert_eq!(p.vlan_id(), None);
    assert_eq!(p.node_name(), None);
    // A 14-byte request line with no header: no Call-ID, so no correlation key.
    assert_eq!(p.correlation_key(), None);
    // Chunk ids, offsets and lengths in wire order.
    let mut expected = [
        (0x0001, 6, 7),
        (0x0002, 13, 7),
        (0x0003, 20, 10),
        (0x0004, 30, 10),
        (0x0007, 40, 8),
        (0x0008, 48, 8),
        (0x0009, 56, 10),
        (0x000a, 66, 10),
        (0x000b, 76, 7),
        (0x000c, 83, 10),
        (0x000f, 93, 20),
    ]
    .into_iter();
    for c in p.chunks() {
        let (kind, offset, len) = expected.next().expect("no more chunks than expected");
        assert_eq!(c.id(), ChunkId::generic(kind));
        assert_eq!(c.header.offset, offset, "offset of 0x{kind:04x}");
        assert_eq!(c.header.len, len, "length of 0x{kind:04x}");
    }
    assert_eq!(expected.next(), None);
}

#[test]
fn spec_example_packet_is_what_the_encoder_writes() {
    let m = Hep3Message {
        ip_proto: 17,
        src_ip: IpAddr::V4(Ipv4Addr::new(212, 202, 0, 1)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(82, 116, 0, 211)),
        src_port: 12010,
        dst_port: 5060,
        ts_sec: 1_313_440_459,
        ts_usec: 120_000,
        proto_type: proto::SIP,
        capture_id: 228,
        auth_key: None,
        correlation_id: None,
        vlan_id: None,
        node_name: None,
        extra: &[],
        payload: Payload::Plain(b"INVITE sip:bob"),
    };
    assert_eq!(m.encoded_len(), 113);
    let mut out = [0u8; 128];
    assert_eq!(m.encode(&mut out), Ok(113));
    assert_eq!(out[..113], SPEC_EXAMPLE);
    // The rewriter without edits reproduces it too.
    let p = Hep3::parse(&SPEC_EXAMPLE).expect("valid");
    let mut again = [0u8; 128];
    assert_eq!(rewrite(&p, &[], &mut again), Ok(113));
    assert_eq!(again[..113], SPEC_EXAMPLE);
}

/// Regression (found by `proptest_codec::call_id_scanner_matches_the_definition`): a CR
/// right after the colon ends the value there, so the value is empty and the line does not
/// match. The scanner used to skip the CR as if it were leading whitespace and return the
/// rest of the line.
#[test]
fn regression_cr_after_the_colon_is_an_empty_call_id() {
    let call_id = |m: &'static [u8]| find_call_id(m, 0, m.len()).map(|(s, e)| &m[s..e]);
    assert_eq!(call_id(b"\nCall-ID:\rCall-ID"), None);
    assert_eq!(call_id(b"INVITE x SIP/2.0\r\ni: \t\rnot-it\r\n\r\n"), None);
    // The search goes on at the next line.
    assert_eq!(
        call_id(b"INVITE x SIP/2.0\r\nCall-ID: \rnot-it\r\nCall-ID: it\r\n\r\n"),
        Some(&b"it"[..])
    );
    // A CRLF right after the colon is unchanged: an empty value, the search goes on.
    assert_eq!(
        call_id(b"INVITE x SIP/2.0\r\nCall-ID:\r\ni: it\r\n"),
        Some(&b"it"[..])
    );
    // Through the packet view.
    let payload = b"INVITE x SIP/2.0\r\nCall-ID:\rnot-it\r\n\r\n";
    let m = Hep3Message {
        payload: Payload::Plain(payload),
        ..minimal_message()
    };
    let mut out = [0u8; 256];
    let n = m.encode(&mut out).expect("encodes");
    let p = Hep3::parse(&out[..n]).expect("parses");
    assert_eq!(p.correlation_key(), None);
}

fn minimal_message() -> Hep3Message<'static> {
    Hep3Message {
        ip_proto: 17,
        src_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        dst_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        src_port: 5060,
        dst_port: 5060,
        ts_sec: 1,
        ts_usec: 2,
        proto_type: proto::SIP,
        capture_id: 3,
        auth_key: None,
        correlation_id: None,
        vlan_id: None,
        node_name: None,
        extra: &[],
        payload: Payload::Plain(b""),
    }
}

/// Regression (found by `proptest_codec::encoder_respects_the_chunk_limit`): the writer,
/// and so the encoder and the rewriter, wrote packets of more than [`MAX_CHUNKS`] chunks,
/// which the walker (and so every hepfwd path) rejects. They now refuse them.
#[test]
fn regression_writers_refuse_more_than_max_chunks() {
    // 10 core chunks + extras + payload.
    let empty = RawChunk {
        id: ChunkId::generic(0x7fff),
        value: &[],
    };
    let extra = [empty; MAX_CHUNKS];
    let mut out = [0u8; 1024];
    let fits = Hep3Message {
        extra: &extra[..MAX_CHUNKS - 11],
        ..minimal_message()
    };
    let n = fits.encode(&mut out).expect("64 chunks encode");
    assert_eq!(
        Hep3::parse(&out[..n]).map(|p| p.chunk_count()),
        Ok(MAX_CHUNKS)
    );
    let over = Hep3Message {
        extra: &extra[..MAX_CHUNKS - 10],
        ..minimal_message()
    };
    assert_eq!(
        over.encode(&mut out),
        Err(HepError::TooManyChunks {
            offset: 6 + 7 + 7 + 10 + 10 + 8 + 8 + 10 + 10 + 7 + 10 + 6 * (MAX_CHUNKS - 10),
            max: MAX_CHUNKS
        })
    );

    // The writer itself.
    let mut w = ChunkWriter::new(&mut out).expect("buffer");
    for _ in 0..MAX_CHUNKS {
        w.push(empty.id, &[]).expect("up to MAX_CHUNKS");
    }
    assert_eq!(
        w.push(empty.id, &[]),
        Err(HepError::TooManyChunks {
            offset: 6 + 6 * MAX_CHUNKS,
            max: MAX_CHUNKS
        })
    );
    assert_eq!(w.finish(), Ok(6 + 6 * MAX_CHUNKS));

    // The rewriter: a full packet plus an inserted chunk.
    let full = Hep3Message {
        extra: &extra[..MAX_CHUNKS - 11],
        ..minimal_message()
    };
    let mut src = [0u8; 1024];
    let n = full.encode(&mut src).expect("encodes");
    let p = Hep3::parse(&src[..n]).expect("parses");
    let insert = [ChunkEdit::Set {
        id: ChunkId::generic(0x0011),
        value: b"call",
    }];
    assert!(matches!(
        rewrite(&p, &insert, &mut out),
        Err(HepError::TooManyChunks {
            max: MAX_CHUNKS,
            ..
        })
    ));
    // Replacing one chunk while adding another stays at the limit and works.
    let swap = [
        ChunkEdit::Delete {
            id: ChunkId::generic(0x000c),
        },
        insert[0],
    ];
    let n = rewrite(&p, &swap, &mut out).expect("64 chunks");
    assert_eq!(
        Hep3::parse(&out[..n]).map(|p| p.chunk_count()),
        Ok(MAX_CHUNKS)
    );
}
