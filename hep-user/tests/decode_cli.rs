//! `hepfwd decode` end to end: capture files (pcap and pcapng), hex on stdin, a live socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is its failure, with its message

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, PacketBuilder, UdpHeader,
};
use hepfwd_harness::message::TestMessage;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapPacket, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hepfwd");

fn sip(call_id: &str, body_len: usize) -> Vec<u8> {
    let mut m = format!(
        "INVITE sip:bob@198.18.9.9 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.9.1\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    m.extend(std::iter::repeat_n(b'v', body_len));
    m
}

fn hep(call_id: &str, body_len: usize, v6: bool) -> Vec<u8> {
    let (s, d): (IpAddr, IpAddr) = if v6 {
        (Ipv6Addr::LOCALHOST.into(), "2001:db8::9".parse().unwrap())
    } else {
        (
            Ipv4Addr::new(198, 18, 9, 1).into(),
            Ipv4Addr::new(198, 18, 9, 9).into(),
        )
    };
    TestMessage::with_payload(sip(call_id, body_len))
        .source(s, 5060)
        .destination(d, 5062)
        .timestamp(1_700_000_000, 42)
        .auth_key(Some(b"s3cret"))
        .node_name(Some(b"edge-1"))
        .chunk(3, 0x100, b"opaque")
        .encode()
}

fn udp_frame(payload: &[u8], vlan: bool, v6: bool, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut out = Vec::new();
    match (vlan, v6) {
        (false, false) => b
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(sport, dport)
            .write(&mut out, payload),
        (true, false) => b
            .single_vlan(etherparse::VlanId::try_new(10).unwrap())
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(sport, dport)
            .write(&mut out, payload),
        (_, true) => {
            let mut s = [0u8; 16];
            s[0] = 0xfd;
            s[15] = 1;
            let mut d = s;
            d[15] = 2;
            b.ipv6(s, d, 64).udp(sport, dport).write(&mut out, payload)
        }
    }
    .expect("build frame");
    out
}

/// The UDP datagram carrying `payload` as two IPv4 fragments.
fn fragmented(payload: &[u8]) -> Vec<Vec<u8>> {
    let udp = UdpHeader {
        source_port: 40000,
        destination_port: 9060,
        length: (8 + payload.len()) as u16,
        checksum: 0,
    };
    let mut whole = udp.to_bytes().to_vec();
    whole.extend_from_slice(payload);
    let cut = 1000; // a multiple of 8
    let mut frames = Vec::new();
    for (off, part, more) in [(0, &whole[..cut], true), (cut, &whole[cut..], false)] {
        let mut ip = Ipv4Header::new(
            part.len() as u16,
            64,
            IpNumber::UDP,
            [198, 18, 0, 1],
            [198, 18, 0, 2],
        )
        .unwrap();
        ip.identification = 0x4242;
        ip.more_fragments = more;
        ip.fragment_offset = IpFragOffset::try_new((off / 8) as u16).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let eth = Ethernet2Header {
            source: [2, 0, 0, 0, 0, 1],
            destination: [2, 0, 0, 0, 0, 2],
            ether_type: EtherType::IPV4,
        };
        let mut f = eth.to_bytes().to_vec();
        ip.write(&mut f).unwrap();
        f.extend_from_slice(part);
        frames.push(f);
    }
    frames
}

fn tcp_frame(seq: u32, payload: &[u8], syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .tcp(41000, 9060, seq, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build tcp frame");
    out
}

/// Every frame of the test capture, and what `decode` must say about each HEP message.
fn capture_frames() -> (Vec<Vec<u8>>, Vec<(&'static str, &'static str)>) {
    let mut frames = Vec::new();
    let mut expect = Vec::new();
    frames.push(udp_frame(
        &hep("plain@x", 10, false),
        false,
        false,
        40000,
        9060,
    ));
    expect.push(("udp", "plain@x"));
    frames.push(udp_frame(
        &hep("vlan@x", 10, false),
        true,
        false,
        40000,
        9060,
    ));
    expect.push(("udp", "vlan@x"));
    frames.push(udp_frame(&hep("six@x", 10, true), false, true, 40000, 9060));
    expect.push(("udp", "six@x"));
    frames.push(udp_frame(
        b"\x12\x34 not hep at all",
        false,
        false,
        5353,
        53,
    ));
    frames.extend(fragmented(&hep("frag@x", 1400, false)));
    expect.push(("udp", "frag@x"));
    // A TCP stream with three frames; segment boundaries fall inside frames, one segment is
    // retransmitted.
    let stream: Vec<u8> = [
        hep("t1@x", 5, false),
        hep("t2@x", 5, false),
        hep("t3@x", 5, false),
    ]
    .concat();
    frames.push(tcp_frame(999, &[], true));
    let cuts = [0, 100, stream.len() - 50, stream.len()];
    for w in cuts.windows(2) {
        frames.push(tcp_frame(1000 + w[0] as u32, &stream[w[0]..w[1]], false));
        if w[0] == 100 {
            frames.push(tcp_frame(1000 + w[0] as u32, &stream[w[0]..w[1]], false));
        }
    }
    expect.extend([("tcp", "t1@x"), ("tcp", "t2@x"), ("tcp", "t3@x")]);
    (frames, expect)
}

fn run_decode(args: &[&str], stdin: &[u8]) -> Vec<Value> {
    let mut child = Command::new(BIN)
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hepfwd");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "hepfwd decode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn check_capture_output(objs: &[Value], expect: &[(&str, &str)]) {
    assert_eq!(objs.len(), expect.len(), "objects: {objs:#?}");
    for (o, (transport, call_id)) in objs.iter().zip(expect) {
        assert_eq!(o["version"], 3, "{o}");
        assert_eq!(o["transport"], *transport, "{o}");
        assert_eq!(o["correlation_id"], *call_id, "{o}");
        assert_eq!(o["correlation_source"], "sip_call_id");
        assert_eq!(o["proto_name"], "sip");
        assert_eq!(o["capture_id"], 2001);
        assert_eq!(o["node_name"], "edge-1");
        assert_eq!(o["auth_key"], "s3cret");
        assert_eq!(o["src_port"], 5060);
        assert_eq!(o["ts_usec"], 42);
        let chunks = o["chunks"].as_array().unwrap();
        assert_eq!(chunks.last().unwrap()["type"], 15, "payload last");
        assert!(
            chunks
                .iter()
                .any(|c| c["vendor"] == 3 && c["type"] == 256 && c["len"] == 12)
        );
    }
    let frag = objs
        .iter()
        .find(|o| o["correlation_id"] == "frag@x")
        .unwrap();
    assert!(
        frag["payload"]
            .as_str()
            .unwrap()
            .ends_with(&"v".repeat(1400)),
        "reassembled whole"
    );
    assert_eq!(objs[2]["src_ip"], "::1");
}

#[test]
fn pcap_and_pcapng_give_the_same_messages() {
    let (frames, expect) = capture_frames();
    let dir = std::env::temp_dir().join(format!("hepfwd-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let pcap = dir.join("t.pcap");
    let mut w = PcapWriter::new(std::fs::File::create(&pcap).unwrap()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            Duration::from_millis(i as u64),
            f.len() as u32,
            f,
        ))
        .unwrap();
    }
    drop(w);
    let objs = run_decode(&["--pcap", pcap.to_str().unwrap()], b"");
    check_capture_output(&objs, &expect);

    let pcapng = dir.join("t.pcapng");
    let mut w = PcapNgWriter::new(std::fs::File::create(&pcapng).unwrap()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0,
        options: vec![],
    })
    .unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_millis(i as u64),
            original_len: f.len() as u32,
            data: Cow::Borrowed(f),
            options: vec![],
        })
        .unwrap();
    }
    drop(w);
    let objs_ng = run_decode(&["--pcap", pcapng.to_str().unwrap()], b"");
    check_capture_output(&objs_ng, &expect);

    // With --port, the non-HEP datagram on that port is reported, not skipped.
    let mut w = PcapWriter::new(std::fs::File::create(&pcap).unwrap()).unwrap();
    let junk = udp_frame(b"\x12\x34 not hep at all", false, false, 5353, 9060);
    w.write_packet(&PcapPacket::new(Duration::ZERO, junk.len() as u32, &junk))
        .unwrap();
    drop(w);
    let objs = run_decode(&["--pcap", pcap.to_str().unwrap(), "--port", "9060"], b"");
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["kind"], "unknown_version");
    assert_eq!(objs[0]["frame"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hex_lines_decode_and_errors_go_on() {
    let good = hep("hex@x", 3, false);
    let mut lying = good.clone();
    lying[5] = lying[5].wrapping_add(1);
    let input = format!(
        "{}\nnot-hex\n{}\n\n{}\n",
        hex(&good),
        hex(&lying),
        hex(&good[..good.len() - 3])
    );
    let objs = run_decode(&["--hex"], input.as_bytes());
    assert_eq!(objs.len(), 4);
    assert_eq!(objs[0]["correlation_id"], "hex@x");
    assert_eq!(objs[0]["line"], 1);
    assert_eq!(objs[1]["kind"], "hex");
    assert_eq!(objs[2]["kind"], "length_mismatch");
    assert_eq!(objs[2]["offset"], 4);
    assert_eq!(objs[3]["kind"], "length_mismatch");
    assert_eq!(objs[3]["line"], 5);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn listen_reads_udp_and_tcp() {
    let mut child = Command::new(BIN)
        .args(["decode", "--listen", "127.0.0.1:0", "--count", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hepfwd");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect(&line);

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&hep("udp@x", 3, false), addr).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    let stream = [hep("tcp1@x", 3, false), hep("tcp2@x", 3, true)].concat();
    tcp.write_all(&stream[..7]).unwrap();
    tcp.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    tcp.write_all(&stream[7..]).unwrap();
    // Garbage closes the connection with one error object.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();

    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let waiter = std::thread::spawn(move || {
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("hepfwd decode --listen did not exit after 4 objects");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let objs: Vec<Value> = waiter
        .join()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 4);
    let mut ids: Vec<String> = objs
        .iter()
        .map(|o| o["correlation_id"].as_str().unwrap_or("ERR").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ERR", "tcp1@x", "tcp2@x", "udp@x"]);
    let e = objs.iter().find(|o| o.get("error").is_some()).unwrap();
    assert_eq!(e["kind"], "framing");
    assert_eq!(e["transport"], "tcp");
}
