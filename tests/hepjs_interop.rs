//! Interop with an independent HEP decoder: sipcapture's hep-js (npm `hep-js`, pinned in
//! `interop/hepjs/package.json`).
//!
//! Packets made by `hep_common` (the encoder, the rewriter and the HEPv1/v2 → v3
//! conversion) are piped as hex lines to `node interop/hepjs/decode.js`, which prints what
//! hep-js' `decapsulate()` returns as one JSON object per line. Each object must equal,
//! key for key, what we encoded: no missing key, no extra key, no other value.
//!
//! hep-js 1.0.22 decodes only some chunks, so the expected objects follow its rules
//! (`node_modules/hep-js/index.js`, `hepDecode`):
//! - 0x0005/0x0006 (IPv6 addresses) are not decoded: an IPv6 packet has no srcIp/dstIp.
//! - 0x0012 (VLAN), 0x0010 (compressed payload), 0x0065 and unregistered vendor chunks are
//!   dropped; vendor chunks registered with `addVendorExtensions` are decoded.
//! - The chunk type is matched without the vendor, and a later chunk of a type overwrites an
//!   earlier one (hep_common takes the first occurrence of a generic chunk).
//! - 0x0024 (transaction type, an octet string in the spec) is read as a uint16; one of
//!   fewer than 2 bytes makes the whole decode fail.
//!
//! The quirks are asserted too, so a change of hep-js shows up here. If node or hep-js'
//! node_modules is missing the test fails, naming `cargo xtask setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};
use hep_common::chunk::{self, ChunkId, proto, vendor};
use hep_common::legacy::{HepLegacy, LegacyTime};
use hep_common::rewrite::{ChunkEdit, rewrite};
use hep_common::v3::{Payload, RawChunk};
use hep_common::{Hep3, Hep3Message};
use hepfwd_tests::peers::find_tool;
use serde_json::{Map, Value, json};

const SETUP: &str = "run `cargo xtask setup` (it runs `npm ci` in tests/interop/hepjs)";

fn hepjs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/hepjs")
}

/// `node`, and a check that hep-js is installed; the errors name `cargo xtask setup`.
fn node() -> Result<PathBuf> {
    let node =
        find_tool("node", "NODE_BIN").with_context(|| format!("node is missing: {SETUP}"))?;
    let index = hepjs_dir().join("node_modules/hep-js/index.js");
    ensure!(
        index.is_file(),
        "hep-js is not installed ({} is missing): {SETUP}",
        index.display()
    );
    Ok(node)
}

/// Decodes each packet with hep-js; one JSON object per packet, in order.
fn hepjs_decode(packets: &[Vec<u8>]) -> Result<Vec<Value>> {
    let node = node()?;
    let mut child = Command::new(node)
        .arg("decode.js")
        .current_dir(hepjs_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting node decode.js")?;
    {
        let mut stdin = child.stdin.take().context("node stdin")?;
        for p in packets {
            let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(stdin, "{hex}").context("writing to node")?;
        }
        // Dropping stdin closes it: decode.js ends at EOF.
    }
    let out = child.wait_with_output().context("waiting for node")?;
    if !out.status.success() {
        bail!(
            "node decode.js failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("decode.js output is not UTF-8")?;
    let values = text
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<Vec<Value>>>()?;
    ensure!(
        values.len() == packets.len(),
        "{} packets in, {} objects out",
        packets.len(),
        values.len()
    );
    Ok(values)
}

fn encode(m: &Hep3Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut out).expect("encodes");
    out.truncate(n);
    // Our own decoder accepts it first.
    Hep3::parse(&out).expect("hep_common parses what it encodes");
    out
}

/// What hep-js must return for a message encoded by `Hep3Message::encode` (see the module
/// docs for what it decodes); `extra` holds the keys of extra chunks.
fn expected(m: &Hep3Message<'_>, extra: &[(&str, Value)]) -> Value {
    let mut rc = Map::new();
    rc.insert(
        "protocolFamily".into(),
        json!(hep_common::v3::family_of(&m.src_ip)),
    );
    rc.insert("protocol".into(), json!(m.ip_proto));
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (m.src_ip, m.dst_ip) {
        rc.insert("srcIp".into(), json!(s.to_string()));
        rc.insert("dstIp".into(), json!(d.to_string()));
    }
    rc.insert("srcPort".into(), json!(m.src_port));
    rc.insert("dstPort".into(), json!(m.dst_port));
    rc.insert("timeSeconds".into(), json!(m.ts_sec));
    rc.insert("timeUseconds".into(), json!(m.ts_usec));
    rc.insert("payloadType".into(), json!(m.proto_type));
    rc.insert("captureId".into(), json!(m.capture_id));
    let text = |v: &[u8]| json!(std::str::from_utf8(v).expect("UTF-8 test data"));
    if let Some(v) = m.auth_key {
        rc.insert("capturePass".into(), text(v));
    }
    if let Some(v) = m.correlation_id {
        rc.insert("correlation_id".into(), text(v));
    }
    if let Some(v) = m.node_name {
        rc.insert("hepNodeName".into(), text(v));
    }
    for (k, v) in extra {
        rc.insert((*k).into(), v.clone());
    }
    let mut obj = Map::new();
    obj.insert("ok".into(), json!(true));
    obj.insert("rcinfo".into(), Value::Object(rc));
    if let Payload::Plain(p) = m.payload {
        obj.insert("payload".into(), text(p));
    }
    Value::Object(obj)
}

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
    Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
    Max-Forwards: 70\r\n\
    To: Bob <sip:bob@biloxi.example.com>\r\n\
    From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
    Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
    CSeq: 314159 INVITE\r\n\
    Content-Length: 0\r\n\r\n";

const V4_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const V4_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

fn base(payload: &'static str) -> Hep3Message<'static> {
    Hep3Message {
        ip_proto: 17,
        src_ip: IpAddr::V4(V4_A),
        dst_ip: IpAddr::V4(V4_B),
        src_port: 5060,
        dst_port: 5080,
        ts_sec: 1_763_800_000,
        ts_usec: 123_456,
        proto_type: proto::SIP,
        capture_id: 2001,
        auth_key: None,
        correlation_id: None,
        vlan_id: None,
        node_name: None,
        extra: &[],
        payload: Payload::Plain(payload.as_bytes()),
    }
}

/// A named packet and the object hep-js must return for it.
struct Case {
    name: &'static str,
    packet: Vec<u8>,
    want: Value,
}

fn case(name: &'static str, m: &Hep3Message<'_>, extra: &[(&str, Value)]) -> Case {
    Case {
        name,
        packet: encode(m),
        want: expected(m, extra),
    }
}

/// Packets from the encoder: IPv4/IPv6, SIP/RTCP/log, optional chunks, vendor chunks,
/// UTF-8 payloads, extreme values.
fn encoder_cases() -> Vec<Case> {
    let mut cases = Vec::new();

    cases.push(case("sip ipv4, required chunks only", &base(INVITE), &[]));

    let utf8 = "MESSAGE sip:zoë@example.com SIP/2.0\r\n\
        From: \"Zoë Ünïcödé 日本語\" <sip:zoe@example.com>;tag=1\r\n\
        Call-ID: ✓-utf8-call@example.com\r\n\r\n\
        Grüße 🎉";
    cases.push(case(
        "sip ipv4, auth key, correlation id, vlan, node name, UTF-8 payload",
        &Hep3Message {
            auth_key: Some(b"s3cr3t-t0ken"),
            correlation_id: Some("✓-utf8-call@example.com".as_bytes()),
            vlan_id: Some(100),
            node_name: Some("node-ü-1".as_bytes()),
            ..base(utf8)
        },
        &[],
    ));

    cases.push(case(
        "sip ipv6 over tcp (hep-js decodes no IPv6 address)",
        &Hep3Message {
            ip_proto: 6,
            src_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            dst_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xbeef, 2)),
            src_port: 5061,
            dst_port: 5061,
            node_name: Some(b"edge-v6"),
            ..base(INVITE)
        },
        &[],
    ));

    cases.push(case(
        "rtcp json with correlation id",
        &Hep3Message {
            src_port: 40_000,
            dst_port: 40_001,
            proto_type: proto::RTCP,
            correlation_id: Some(b"a84b4c76e66710@pc33.atlanta.example.com"),
            ..base(r#"{"type":200,"ssrc":305419896,"report_count":1,"report_blocks":[{"fraction_lost":0,"packets_lost":0,"ia_jitter":12}]}"#)
        },
        &[],
    ));

    cases.push(case(
        "log line (type 100) with correlation id and node name, ipv6",
        &Hep3Message {
            src_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            dst_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            proto_type: proto::LOG,
            correlation_id: Some(b"call-log-1@host"),
            node_name: Some(b"kamailio-01"),
            ..base("ERROR: <core> [core/tcp_main.c:4000]: connection refused — retrying")
        },
        &[],
    ));

    cases.push(case(
        "extreme values",
        &Hep3Message {
            ip_proto: 255,
            src_ip: IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
            dst_ip: IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            src_port: 65_535,
            dst_port: 0,
            ts_sec: u32::MAX,
            ts_usec: 999_999,
            proto_type: 255,
            capture_id: u32::MAX,
            ..base("x")
        },
        &[],
    ));

    cases.push(case(
        "empty payload",
        &Hep3Message {
            capture_id: 0,
            ..base("")
        },
        &[],
    ));

    let vendor_extra = [
        RawChunk {
            id: ChunkId {
                vendor: vendor::OPENSIPS,
                kind: 0x0101,
            },
            value: b"opensips extra: \xc3\xa9t\xc3\xa9",
        },
        RawChunk {
            id: ChunkId {
                vendor: vendor::OPENSIPS,
                kind: 0x0102,
            },
            value: &0xdead_beef_u32.to_be_bytes(),
        },
        RawChunk {
            id: ChunkId {
                vendor: vendor::GENESYS,
                kind: 0x0201,
            },
            value: b"conv-4f2a",
        },
        // Not registered in decode.js: dropped by hep-js.
        RawChunk {
            id: ChunkId {
                vendor: vendor::HOMER,
                kind: 0x0301,
            },
            value: b"\x00\x01binary\xff",
        },
        // OpenSIPS' extra correlation (generic 0x0065): not decoded by hep-js.
        RawChunk {
            id: ChunkId::generic(0x0065),
            value: br#"{"b2b":"other-call@x"}"#,
        },
        // MOS (0x0020, uint16): decoded.
        RawChunk {
            id: ChunkId::generic(chunk::MOS),
            value: &412u16.to_be_bytes(),
        },
    ];
    cases.push(case(
        "vendor chunks (registered, unregistered), 0x0065, mos",
        &Hep3Message {
            extra: &vendor_extra,
            ..base(INVITE)
        },
        &[
            ("opensipsExtra", json!("opensips extra: été")),
            ("opensipsCounter", json!(0xdead_beef_u32)),
            ("genesysConversationId", json!("conv-4f2a")),
            ("mos", json!(412)),
        ],
    ));
    cases
}

fn rewrite_case() -> Case {
    let auth_key = b"old-key";
    let original = Hep3Message {
        auth_key: Some(auth_key),
        node_name: Some(b"old-node"),
        ..base(INVITE)
    };
    let src = encode(&original);
    let p = Hep3::parse(&src).expect("parses");
    let new_payload = INVITE.replace("314159 INVITE", "314160 INVITE");
    let edits = [
        ChunkEdit::Delete {
            id: ChunkId::generic(chunk::AUTH_KEY),
        },
        ChunkEdit::Set {
            id: ChunkId::generic(chunk::NODE_NAME),
            value: b"relay-7",
        },
        ChunkEdit::Set {
            id: ChunkId::generic(chunk::CORRELATION_ID),
            value: b"set-by-rewrite@relay",
        },
        ChunkEdit::Set {
            id: ChunkId::generic(chunk::CAPTURE_ID),
            value: &7_000_001u32.to_be_bytes(),
        },
        ChunkEdit::Set {
            id: ChunkId::generic(chunk::PAYLOAD),
            value: new_payload.as_bytes(),
        },
    ];
    let mut out = vec![0u8; 65_535];
    let n = rewrite(&p, &edits, &mut out).expect("rewrite");
    out.truncate(n);
    let want = expected(
        &Hep3Message {
            auth_key: None,
            node_name: Some(b"relay-7"),
            correlation_id: Some(b"set-by-rewrite@relay"),
            capture_id: 7_000_001,
            payload: Payload::Plain(new_payload.as_bytes()),
            ..original
        },
        &[],
    );
    Case {
        name: "made by rewrite (delete auth key, set node name, insert correlation id, set capture id and payload)",
        packet: out,
        want,
    }
}

fn legacy_cases() -> Vec<Case> {
    let v2 = HepLegacy {
        version: 2,
        ip_proto: 17,
        src_ip: IpAddr::V4(V4_A),
        dst_ip: IpAddr::V4(V4_B),
        src_port: 5060,
        dst_port: 5062,
        time: Some(LegacyTime {
            ts_sec: 1_313_440_459,
            ts_usec: 120_000,
            capture_id: 4242,
        }),
        payload: INVITE.as_bytes(),
    };
    let v1 = HepLegacy {
        version: 1,
        time: None,
        src_port: 5070,
        ..v2
    };
    let recv = (1_763_800_123, 654_321);
    let mut cases = Vec::new();
    for (name, l, ts) in [
        (
            "HEPv2 converted to HEPv3",
            v2,
            (1_313_440_459u32, 120_000u32, 4242u32),
        ),
        (
            "HEPv1 converted to HEPv3 (receive time)",
            v1,
            (recv.0, recv.1, 0),
        ),
    ] {
        let mut wire = vec![0u8; l.encoded_len()];
        l.encode(&mut wire).expect("legacy encode");
        let parsed = HepLegacy::parse(&wire).expect("legacy parse");
        let m = parsed.to_hep3(recv);
        let packet = encode(&m);
        // Written from the legacy fields, not from `m`, so the conversion is checked too.
        let want = json!({
            "ok": true,
            "rcinfo": {
                "protocolFamily": 2,
                "protocol": 17,
                "srcIp": V4_A.to_string(),
                "dstIp": V4_B.to_string(),
                "srcPort": l.src_port,
                "dstPort": 5062,
                "timeSeconds": ts.0,
                "timeUseconds": ts.1,
                "payloadType": 1,
                "captureId": ts.2,
            },
            "payload": INVITE,
        });
        cases.push(Case { name, packet, want });
    }
    cases
}

/// hep-js quirks, asserted so a change in hep-js (or in our output) shows up.
fn quirk_cases() -> Vec<Case> {
    let mut cases = Vec::new();

    // Vendor is ignored and the last chunk of a type wins: a vendor chunk numbered like
    // 0x0013 overrides the node name, a second 0x0011 the correlation id. hep_common's
    // accessors and correlation key use the first generic occurrence.
    let extra = [
        RawChunk {
            id: ChunkId {
                vendor: vendor::OPENSIPS,
                kind: chunk::NODE_NAME,
            },
            value: b"vendor-3-chunk-0x13",
        },
        RawChunk {
            id: ChunkId::generic(chunk::CORRELATION_ID),
            value: b"second-correlation",
        },
    ];
    let m = Hep3Message {
        node_name: Some(b"real-node"),
        correlation_id: Some(b"first-correlation"),
        extra: &extra,
        ..base(INVITE)
    };
    let packet = encode(&m);
    let p = Hep3::parse(&packet).expect("parses");
    assert_eq!(p.node_name(), Some(&b"real-node"[..]));
    assert_eq!(
        p.correlation_key().map(|k| k.bytes),
        Some(&b"first-correlation"[..])
    );
    cases.push(Case {
        name: "quirk: vendor ignored, last occurrence wins",
        want: expected(
            &Hep3Message {
                node_name: Some(b"vendor-3-chunk-0x13"),
                correlation_id: Some(b"second-correlation"),
                ..m
            },
            &[],
        ),
        packet,
    });

    // 0x0024 is an octet string ("call", "registration") but hep-js reads a uint16.
    let tt = [RawChunk {
        id: ChunkId::generic(chunk::TRANSACTION_TYPE),
        value: b"call",
    }];
    cases.push(case(
        "quirk: 0x0024 read as uint16",
        &Hep3Message {
            extra: &tt,
            ..base(INVITE)
        },
        &[("transaction_type", json!(u16::from_be_bytes(*b"ca")))],
    ));

    // ... and one of fewer than 2 bytes makes the whole decode fail.
    let tt1 = [RawChunk {
        id: ChunkId::generic(chunk::TRANSACTION_TYPE),
        value: b"c",
    }];
    cases.push(Case {
        name: "quirk: 1-byte 0x0024 fails the whole decode",
        packet: encode(&Hep3Message {
            extra: &tt1,
            ..base(INVITE)
        }),
        want: json!({ "ok": false }),
    });

    // A compressed payload (0x0010) is not decoded: no payload at all.
    cases.push(case(
        "quirk: compressed payload not decoded",
        &Hep3Message {
            payload: Payload::Compressed(b"\x78\x9c\xcb\x48\xcd\xc9\xc9\x07\x00\x06\x2c\x02\x15"),
            ..base("")
        },
        &[],
    ));
    cases
}

#[test]
fn hepjs_decodes_what_hep_common_writes() -> Result<()> {
    let mut cases = encoder_cases();
    cases.push(rewrite_case());
    cases.extend(legacy_cases());
    cases.extend(quirk_cases());
    let packets: Vec<Vec<u8>> = cases.iter().map(|c| c.packet.clone()).collect();
    let got = hepjs_decode(&packets)?;
    let mut failures = Vec::new();
    for (c, g) in cases.iter().zip(&got) {
        if *g != c.want {
            failures.push(format!(
                "{}:\n  hep-js:   {g}\n  expected: {}",
                c.name, c.want
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} packets decoded differently by hep-js:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The harness itself: a wrong expectation and a broken packet are told apart from a
/// match, so the test above can fail.
#[test]
fn hepjs_harness_detects_differences() -> Result<()> {
    let m = base(INVITE);
    let good = encode(&m);
    let mut other_port = good.clone();
    // Byte 7 of the source port chunk value (offset 6 + 7 + 7 + 10 + 10 + 6 + 1).
    let at = 6 + 7 + 7 + 10 + 10 + 6 + 1;
    assert_eq!(other_port[at], (5060u16 & 0xff) as u8);
    other_port[at] ^= 1;
    let got = hepjs_decode(&[good, other_port, b"not hep".to_vec()])?;
    assert_eq!(got[0], expected(&m, &[]));
    assert_ne!(got[1], expected(&m, &[]));
    assert_eq!(got[1]["rcinfo"]["srcPort"], json!(5060 ^ 1));
    assert_eq!(got[2], json!({ "ok": false }));
    Ok(())
}
