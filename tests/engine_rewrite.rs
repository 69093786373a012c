//! Chunk rewrites and output conversion end to end, checked byte for byte against a model
//! of the documented rewrite semantics and with `hepfwd decode`: set capture_id, set
//! node_name (insert and replace), delete auth_key, set a vendor chunk, a generic type by
//! number, a destination's set_auth_key; HEPv2 output; HEPv1/v2 input to a v3 collector.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hepfwd_tests::collector::{Agent, QUIET, UdpCollector, WAIT};
use hepfwd_tests::daemon::{Daemon, ONE_WORKER, udp_destination, udp_listener};
use hepfwd_tests::hepgen::{
    ChunkTuple, ModelEdit, Pkt, chunks_of, decode, decoded_chunks, model_rewrite, packet_of,
};
use serde_json::Value;

/// (route name, correlation prefix, rewrite as written, the same as model edits)
fn routes() -> Vec<(&'static str, &'static str, &'static str, Vec<ModelEdit>)> {
    vec![
        (
            "set-capture",
            "cap-",
            "[{ set = \"capture_id\", value = 4242 }]",
            vec![ModelEdit::Set(0, 0x000c, 4242u32.to_be_bytes().to_vec())],
        ),
        (
            "set-node",
            "node-",
            "[{ set = \"node_name\", value = \"edge-9\" }]",
            vec![ModelEdit::Set(0, 0x0013, b"edge-9".to_vec())],
        ),
        (
            "del-auth",
            "auth-",
            "[{ delete = \"auth_key\" }]",
            vec![ModelEdit::Delete(0, 0x000e)],
        ),
        (
            "set-vendor",
            "vend-",
            "[{ set = { vendor = 3, type = 0x0100 }, value = \"x\" }]",
            vec![ModelEdit::Set(3, 0x0100, b"x".to_vec())],
        ),
        (
            "set-hex",
            "hex-",
            "[{ set = \"0x0029\", value = \"group-7\" }, { set = \"vlan_id\", value = 42 }]",
            vec![
                ModelEdit::Set(0, 0x0029, b"group-7".to_vec()),
                ModelEdit::Set(0, 0x0012, 42u16.to_be_bytes().to_vec()),
            ],
        ),
        (
            "combined",
            "all-",
            "[{ set = \"capture_id\", value = 42 }, { set = \"node_name\", value = \"edge-1\" }, { delete = \"auth_key\" }, { set = { vendor = 3, type = 0x0100 }, value = \"x\" }]",
            vec![
                ModelEdit::Set(0, 0x000c, 42u32.to_be_bytes().to_vec()),
                ModelEdit::Set(0, 0x0013, b"edge-1".to_vec()),
                ModelEdit::Delete(0, 0x000e),
                ModelEdit::Set(3, 0x0100, b"x".to_vec()),
            ],
        ),
    ]
}

/// The packets of a prefix: without the touched chunks, with them, with duplicates, IPv6.
fn variants(prefix: &str) -> Vec<Vec<u8>> {
    let c = |n: &str| format!("{prefix}{n}@rw.test");
    vec![
        Pkt::sip(&c("plain"), 1).encode(),
        Pkt::sip(&c("full"), 2)
            .node("agent-node")
            .auth("s3cret")
            .chunk(3, 0x0100, b"old-vendor-value")
            .chunk(3, 0x0200, b"other vendor chunk")
            .chunk(0, 0x0029, b"group-0")
            .encode(),
        // Chunks given twice: the first occurrence is set, later ones go.
        Pkt::sip(&c("twice"), 3)
            .node("n1")
            .chunk(0, 0x0013, b"n2")
            .chunk(3, 0x0100, b"v1")
            .chunk(3, 0x0100, b"v2")
            .auth("k1")
            .chunk(0, 0x000e, b"k2")
            .encode(),
        Pkt::rtcp(&c("v6"), 4)
            .v6()
            .capture_id(99)
            .auth("s3cret")
            .node("agent-6")
            .encode(),
    ]
}

/// Checks one received packet: exact bytes, then what `hepfwd decode` says of it.
fn check(got: &[u8], want: &[ChunkTuple], decoded: &Value, what: &str) {
    assert!(
        got == packet_of(want).as_slice(),
        "{what}: bytes differ\n got chunks {:?}\nwant chunks {:?}",
        chunks_of(got)
            .iter()
            .map(|c| (c.0, c.1))
            .collect::<Vec<_>>(),
        want.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>()
    );
    assert_eq!(decoded["version"], 3, "{what}");
    let want_list: Vec<(u64, u64, u64)> = want
        .iter()
        .map(|(v, t, val)| (*v as u64, *t as u64, 6 + val.len() as u64))
        .collect();
    assert_eq!(decoded_chunks(decoded), want_list, "{what}: chunk list");
    assert_eq!(
        decoded_chunks(decoded).last().map(|c| (c.0, c.1)),
        Some((0, 0x000f)),
        "{what}: the payload is not last"
    );
    let first = |v: u16, t: u16| want.iter().find(|c| (c.0, c.1) == (v, t)).map(|c| &c.2);
    let text = |v: Option<&Vec<u8>>| {
        v.map_or(Value::Null, |b| {
            String::from_utf8(b.clone()).unwrap().into()
        })
    };
    assert_eq!(
        decoded["capture_id"],
        Value::from(u32::from_be_bytes(
            first(0, 0x000c).unwrap().as_slice().try_into().unwrap()
        )),
        "{what}: capture_id"
    );
    assert_eq!(
        decoded["node_name"],
        text(first(0, 0x0013)),
        "{what}: node_name"
    );
    assert_eq!(
        decoded["auth_key"],
        text(first(0, 0x000e)),
        "{what}: auth_key"
    );
}

#[test]
fn each_rewrite_gives_the_documented_chunks() {
    let routes = routes();
    let cols: BTreeMap<&str, UdpCollector> = routes
        .iter()
        .map(|(n, ..)| (*n, UdpCollector::new(n)))
        .collect();
    let sak = UdpCollector::new("sak");
    let d = Daemon::start("rewrite", |p| {
        let mut c = udp_listener(p);
        for (n, col) in &cols {
            c += &udp_destination(n, col.addr);
        }
        c += &format!(
            "\n[[destination]]\nname = \"sak\"\naddress = \"{}\"\nset_auth_key = \"other\"\n",
            sak.addr
        );
        for (n, prefix, rw, _) in &routes {
            c += &format!(
                "\n[[route]]\nname = \"{n}\"\nmatch = {{ correlation = {{ prefix = \"{prefix}\" }} }}\nforward = [\"{n}\"]\nrewrite = {rw}\n"
            );
        }
        // A destination's set_auth_key, alone and after a route rewrite that deleted it.
        c += "\n[[route]]\nname = \"dest-auth\"\nmatch = { correlation = { prefix = \"sak-\" } }\nforward = [\"sak\"]\n";
        c + ONE_WORKER
    });
    let agent = Agent::new();
    let set_key = [ModelEdit::Set(0, 0x000e, b"other".to_vec())];

    let mut sent: Vec<(Vec<u8>, Vec<ChunkTuple>, &UdpCollector, String)> = Vec::new();
    for (n, prefix, _, edits) in &routes {
        for (i, p) in variants(prefix).into_iter().enumerate() {
            let want = model_rewrite(&chunks_of(&p), edits);
            sent.push((p, want, &cols[n], format!("route {n}, packet {i}")));
        }
    }
    for (i, p) in variants("sak-").into_iter().enumerate() {
        let want = model_rewrite(&chunks_of(&p), &set_key);
        sent.push((p, want, &sak, format!("set_auth_key, packet {i}")));
    }
    for (p, ..) in &sent {
        agent.send(d.listen(), p);
    }
    // One worker, one socket per collector: each collector sees its packets in order.
    let mut received = Vec::new();
    for (_, want, col, what) in &sent {
        let got = col
            .recv(WAIT)
            .unwrap_or_else(|| panic!("{what}: nothing arrived"));
        received.push((got, want, what));
    }
    let decoded = decode(&received.iter().map(|r| r.0.clone()).collect::<Vec<_>>());
    for ((got, want, what), v) in received.iter().zip(&decoded) {
        check(got, want, v, what);
    }
    // Spot checks of the values through the decoder, independent of the model.
    let by_what = |w: &str| &decoded[received.iter().position(|r| r.2 == w).unwrap()];
    assert_eq!(by_what("route set-capture, packet 0")["capture_id"], 4242);
    assert_eq!(by_what("route set-node, packet 0")["node_name"], "edge-9");
    assert_eq!(by_what("route set-node, packet 1")["node_name"], "edge-9");
    assert_eq!(by_what("route del-auth, packet 1")["auth_key"], Value::Null);
    assert_eq!(by_what("route del-auth, packet 2")["auth_key"], Value::Null);
    assert_eq!(by_what("set_auth_key, packet 0")["auth_key"], "other");
    assert_eq!(by_what("set_auth_key, packet 1")["auth_key"], "other");
    assert_eq!(by_what("route set-hex, packet 0")["vlan_id"], 42);
    assert_eq!(by_what("route combined, packet 3")["src_ip"], "2001:db8::1");
    for c in cols.values().chain([&sak]) {
        c.expect_silent(std::time::Duration::ZERO);
    }
    sak.expect_silent(QUIET);
    assert_eq!(d.counter("hepfwd_rewrite_errors_total", &[]), 0);
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn hepv2_output_and_legacy_input_convert_losslessly() {
    let v2 = UdpCollector::new("v2");
    let v3 = UdpCollector::new("v3");
    let d = Daemon::start("v2", |p| {
        udp_listener(p)
            + &format!(
                "\n[[destination]]\nname = \"v2\"\naddress = \"{}\"\nhep_version = 2\n",
                v2.addr
            )
            + &udp_destination("v3", v3.addr)
            + "\n[[route]]\nname = \"to-v2\"\nmatch = { capture_id = [2] }\nforward = [\"v2\"]\n"
            + "\n[default]\nforward = [\"v3\"]\n"
            + ONE_WORKER
    });
    let agent = Agent::new();

    // HEPv3 in, HEPv2 out: addresses, ports, time, capture id and payload kept; the v3
    // chunks v2 has no room for (node name, auth key, ...) are left behind.
    let v3_in = [
        Pkt::sip("v2-a@x", 1)
            .capture_id(2)
            .ts(1_600_000_123, 654_321)
            .node("n")
            .auth("k"),
        Pkt::sip("v2-b@x", 2)
            .capture_id(2)
            .v6()
            .src("2001:db8::10", 5080)
            .dst("2001:db8::20", 5090),
    ];
    // HEPv2 in (capture id 2) to the v2 collector: the same bytes out.
    let v2_in = Pkt::sip("v2-c@x", 3).capture_id(2).ts(1_500_000_000, 1);
    for p in &v3_in {
        agent.send(d.listen(), &p.encode());
    }
    agent.send(d.listen(), &v2_in.encode_legacy(2));
    let got = v2.expect(3, WAIT);
    assert!(got[0] == v3_in[0].encode_legacy(2), "v4 packet as HEPv2");
    assert!(got[1] == v3_in[1].encode_legacy(2), "v6 packet as HEPv2");
    assert!(got[2] == v2_in.encode_legacy(2), "HEPv2 through unchanged");
    let dec = decode(&got);
    for (v, p) in dec.iter().zip([&v3_in[0], &v3_in[1], &v2_in]) {
        assert_eq!(v["version"], 2);
        assert_eq!(v["src_ip"], p.src.0.to_string());
        assert_eq!(v["dst_ip"], p.dst.0.to_string());
        assert_eq!(v["src_port"], p.src.1);
        assert_eq!(v["dst_port"], p.dst.1);
        assert_eq!(v["ts_sec"], p.ts.0);
        assert_eq!(v["ts_usec"], p.ts.1);
        assert_eq!(v["capture_id"], 2);
        assert_eq!(
            v["payload"].as_str().unwrap().as_bytes(),
            p.payload.as_slice()
        );
    }

    // A v3 packet without ports cannot become HEPv2: dropped and counted.
    let no_ports: Vec<ChunkTuple> = chunks_of(&Pkt::sip("v2-d@x", 4).capture_id(2).encode())
        .into_iter()
        .filter(|c| c.1 != 0x0007 && c.1 != 0x0008)
        .collect();
    agent.send(d.listen(), &packet_of(&no_ports));
    d.wait_counter(
        "hepfwd_destination_dropped_total",
        &[("destination", "v2"), ("reason", "conversion")],
        1,
        WAIT,
    );
    v2.expect_silent(QUIET);

    // HEPv1 and HEPv2 in, HEPv3 out: every field of the old header in its chunk.
    let legacy = [
        (
            2u8,
            Pkt::sip("l-a@x", 5).capture_id(777).ts(1_400_000_000, 42),
        ),
        (
            2,
            Pkt::sip("l-b@x", 6)
                .capture_id(65_535)
                .v6()
                .ts(1_400_000_001, 999_999),
        ),
        (1, Pkt::sip("l-c@x", 7)),
        (1, Pkt::sip("l-d@x", 8).v6()),
    ];
    let t0 = now_secs();
    for (ver, p) in &legacy {
        agent.send(d.listen(), &p.encode_legacy(*ver));
    }
    let got = v3.expect(4, WAIT);
    let t1 = now_secs();
    let dec = decode(&got);
    for ((ver, p), (bytes, v)) in legacy.iter().zip(got.iter().zip(&dec)) {
        let what = format!("HEPv{ver} {}", p.src.0);
        assert_eq!(v["version"], 3, "{what}");
        assert_eq!(v["proto_type"], 1, "{what}");
        assert_eq!(v["ip_proto"], 17, "{what}");
        assert_eq!(v["src_ip"], p.src.0.to_string(), "{what}");
        assert_eq!(v["dst_ip"], p.dst.0.to_string(), "{what}");
        assert_eq!(v["src_port"], p.src.1, "{what}");
        assert_eq!(v["dst_port"], p.dst.1, "{what}");
        assert_eq!(
            v["payload"].as_str().unwrap().as_bytes(),
            p.payload.as_slice(),
            "{what}"
        );
        let family = if p.src.0.is_ipv4() { 2 } else { 10 };
        assert_eq!(v["ip_family"], family, "{what}");
        let addr = if p.src.0.is_ipv4() { (3, 4) } else { (5, 6) };
        let types: Vec<u64> = decoded_chunks(v).iter().map(|c| c.1).collect();
        assert_eq!(
            types,
            [1, 2, addr.0, addr.1, 7, 8, 9, 10, 11, 12, 15],
            "{what}"
        );
        if *ver == 2 {
            // Everything is in the v2 packet: the v3 one is exactly the encoder's.
            assert!(*bytes == p.encode(), "{what}: bytes differ");
            assert_eq!(v["capture_id"], p.capture_id, "{what}");
        } else {
            // HEPv1 has no time and no capture id: the receive time and 0.
            let ts = v["ts_sec"].as_u64().unwrap();
            assert!(
                (t0..=t1).contains(&ts),
                "{what}: ts_sec {ts} not in {t0}..={t1}"
            );
            assert_eq!(v["capture_id"], 0, "{what}");
        }
    }
    let m = d.metrics();
    assert_eq!(
        m.get("hepfwd_route_matches_total", &[("route", "to-v2")]),
        4
    );
    assert_eq!(
        m.get("hepfwd_route_matches_total", &[("route", "default")]),
        4
    );
    assert_eq!(m.get("hepfwd_parse_errors_total", &[]), 0);
}
