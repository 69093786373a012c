//! `decode`: every decoder entry point on arbitrary bytes.
//!
//! `HepPacket::parse`, then every accessor, the chunk iterator, `get`, the correlation key
//! and its hash, v2 output; for HEPv1/v2 the conversion to HEPv3. Beyond "no panic" it
//! asserts the invariants of what parses (chunks tile the packet, the rewriter and the
//! writer rebuild it byte for byte, the key lies inside the packet) and that errors point
//! inside the buffer.
#![no_main]

use hep_common::chunk::{CHUNK_HEADER_LEN, HEADER_LEN, MAX_CHUNKS};
use hep_common::correlation::{KEY_HASH_LIMIT, KeyHasher, KeySource, find_call_id, key_hash};
use hep_common::framing::{MAX_FRAME_LEN, frame_len};
use hep_common::legacy::HepLegacy;
use hep_common::rewrite::rewrite;
use hep_common::v3::ChunkWriter;
use hep_common::{Hep3, HepPacket};
use libfuzzer_sys::fuzz_target;

fn accessors(p: &Hep3<'_>) -> usize {
    // Touch every accessor; the sum only keeps the calls from being optimised away.
    let mut n = 0usize;
    n += p.ip_family().is_some() as usize;
    n += p.ip_proto().is_some() as usize;
    n += p.src_ip().is_some() as usize;
    n += p.dst_ip().is_some() as usize;
    n += p.src_ipv4().is_some() as usize;
    n += p.dst_ipv4().is_some() as usize;
    n += p.src_ipv6().is_some() as usize;
    n += p.dst_ipv6().is_some() as usize;
    n += p.src_port().is_some() as usize;
    n += p.dst_port().is_some() as usize;
    n += p.ts_sec().is_some() as usize;
    n += p.ts_usec().is_some() as usize;
    n += p.proto_type().is_some() as usize;
    n += p.capture_id().is_some() as usize;
    n += p.keepalive().is_some() as usize;
    n += p.auth_key().map_or(0, <[u8]>::len);
    n += p.payload().map_or(0, <[u8]>::len);
    n += p.compressed_payload().map_or(0, <[u8]>::len);
    n += p.correlation_id().map_or(0, <[u8]>::len);
    n += p.vlan_id().is_some() as usize;
    n += p.node_name().map_or(0, <[u8]>::len);
    n += p.src_mac().is_some() as usize;
    n += p.dst_mac().is_some() as usize;
    n += p.eth_type().is_some() as usize;
    n += p.tcp_flags().is_some() as usize;
    n += p.ip_tos().is_some() as usize;
    n += p.mos().is_some() as usize;
    n += p.r_factor().is_some() as usize;
    n += p.geo_location().map_or(0, <[u8]>::len);
    n += p.jitter().is_some() as usize;
    n += p.transaction_type().map_or(0, <[u8]>::len);
    n += p.payload_json_keys().map_or(0, <[u8]>::len);
    n += p.tag_values().map_or(0, <[u8]>::len);
    n += p.tag_type().is_some() as usize;
    n += p.event_type().is_some() as usize;
    n += p.group_id().map_or(0, <[u8]>::len);
    n
}

fn check_v3(data: &[u8], p: &Hep3<'_>) {
    assert_eq!(p.as_bytes(), data);
    // The chunks tile the packet exactly.
    let mut off = HEADER_LEN;
    let mut count = 0;
    for c in p.chunks() {
        assert_eq!(c.header.offset, off);
        assert!(c.header.len as usize >= CHUNK_HEADER_LEN);
        assert_eq!(c.value.len(), c.header.len as usize - CHUNK_HEADER_LEN);
        assert_eq!(&data[c.header.value_offset()..c.header.end()], c.value);
        // `get` returns the first chunk with the id.
        let first = p.chunks().find(|f| f.id() == c.id()).map(|f| f.value);
        assert_eq!(p.get(c.id()), first);
        off = c.header.end();
        count += 1;
    }
    assert_eq!(off, data.len());
    assert_eq!(count, p.chunk_count());
    assert!(count <= MAX_CHUNKS);
    std::hint::black_box(accessors(p));

    // The correlation key lies inside the packet and hashes like the incremental hasher.
    if let Some(k) = p.correlation_key() {
        assert!(!k.bytes.is_empty());
        let base = data.as_ptr() as usize;
        let at = k.bytes.as_ptr() as usize;
        assert!(at >= base && at + k.bytes.len() <= base + data.len());
        match k.source {
            KeySource::CorrelationChunk => assert_eq!(p.correlation_id(), Some(k.bytes)),
            KeySource::SipCallId => {
                assert_eq!(p.proto_type(), Some(1));
                let payload = p.payload().expect("a Call-ID comes from the payload");
                let (s, e) = find_call_id(payload, 0, payload.len()).expect("found");
                assert_eq!(&payload[s..e], k.bytes);
                assert!(!k.bytes.starts_with(b" ") && !k.bytes.ends_with(b" "));
                assert!(!k.bytes.contains(&b'\n') && !k.bytes.contains(&b'\r'));
            }
        }
        let mut h = KeyHasher::new();
        for b in k.bytes.iter().take(KEY_HASH_LIMIT) {
            h.write_byte(*b);
        }
        assert_eq!(k.hash(), h.finish());
        assert_eq!(k.hash(), key_hash(k.bytes));
    }

    // The rewriter without edits, and the writer, rebuild the packet byte for byte.
    let mut out = vec![0u8; data.len()];
    assert_eq!(rewrite(p, &[], &mut out), Ok(data.len()));
    assert_eq!(&out[..], data);
    let mut out2 = vec![0u8; data.len()];
    let mut w = ChunkWriter::new(&mut out2).expect("6 bytes at least");
    for c in p.chunks() {
        w.push_chunk(&c)
            .expect("a valid packet's chunks are writable");
    }
    assert_eq!(w.finish(), Ok(data.len()));
    assert_eq!(&out2[..], data);

    // v2 output of what has the fields for it.
    if let Ok(l) = HepLegacy::from_hep3(p) {
        let mut v2 = vec![0u8; l.encoded_len()];
        let n = l.encode(&mut v2).expect("v2 encode");
        assert_eq!(HepLegacy::parse(&v2[..n]), Ok(l));
    }
}

fn check_legacy(data: &[u8], l: &HepLegacy<'_>) {
    let mut out = vec![0u8; l.encoded_len()];
    assert_eq!(l.encode(&mut out), Ok(data.len()));
    // Everything but the v2 struct padding (2 bytes before the payload) is reproduced.
    let pad = if l.version == 2 {
        let hl = data[1] as usize;
        hl + 10..hl + 12
    } else {
        0..0
    };
    for (i, (a, b)) in out.iter().zip(data).enumerate() {
        assert!(a == b || pad.contains(&i), "byte {i} differs");
    }
    let m = l.to_hep3((1_700_000_000, 123));
    let mut v3 = vec![0u8; m.encoded_len()];
    match m.encode(&mut v3) {
        Ok(n) => {
            let p = Hep3::parse(&v3[..n]).expect("converted packet parses");
            assert_eq!(p.payload(), Some(l.payload));
            assert_eq!(p.src_ip(), Some(l.src_ip));
            assert_eq!(p.dst_ip(), Some(l.dst_ip));
            check_v3(&v3[..n], &p);
        }
        // A legacy payload near 65535 bytes does not fit in HEPv3 with its chunks.
        Err(e) => assert_eq!(e.kind(), "too_large"),
    }
}

fuzz_target!(|data: &[u8]| {
    match HepPacket::parse(data) {
        Ok(HepPacket::V3(p)) => check_v3(data, &p),
        Ok(HepPacket::Legacy(l)) => check_legacy(data, &l),
        Err(e) => {
            assert!(e.offset() <= data.len(), "{e:?} points past the buffer");
            std::hint::black_box(e.kind());
        }
    }
    let _ = Hep3::parse(data);
    let _ = HepLegacy::parse(data);
    // The other entry points on the same bytes.
    if let Ok(Some(n)) = frame_len(data, MAX_FRAME_LEN) {
        assert!((HEADER_LEN..=data.len()).contains(&n));
    }
    if let Some((s, e)) = find_call_id(data, 0, data.len()) {
        assert!(s < e && e <= data.len());
    }
});
