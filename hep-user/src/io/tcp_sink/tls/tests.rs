//! TLS on the wire of a TCP sink: a frame's recorded wire length ends exactly where the
//! collector can decrypt it whole; after a reset the frames not acknowledged arrive, in
//! order, on the next TLS session.

use std::io::Read as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hep_common::framing::{MAX_FRAME_LEN, frame_len};
use rustls::ServerConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use socket2::SockRef;
use tokio::io::AsyncReadExt as _;

use super::*;
use crate::io::tcp_sink::{SinkOptions, SinkStats, TcpSink};

const WAIT: Duration = Duration::from_secs(10);

/// A server configuration for `localhost` and a sink configuration that trusts it.
fn configs() -> (Arc<rustls::ServerConfig>, SinkTls) {
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], private)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sink = SinkTls {
        config: Arc::new(client),
        server_name: ServerName::try_from("localhost").unwrap(),
    };
    (Arc::new(server), sink)
}

/// A HEPv3 frame: header, one payload chunk holding `seq` and `extra` filler bytes.
fn frame(seq: u32, extra: usize) -> Bytes {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.extend((0..extra).map(|i| (i as u32 ^ seq) as u8));
    let len = 6 + 6 + payload.len();
    let mut v = b"HEP3".to_vec();
    v.extend_from_slice(&(len as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0x0f]);
    v.extend_from_slice(&((6 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&payload);
    Bytes::from(v)
}

fn seq(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[12], f[13], f[14], f[15]])
}

/// Moves what `from` has to send into `to`.
fn pump(from: &mut dyn FnMut(&mut Vec<u8>) -> bool, to: &mut dyn FnMut(&[u8])) {
    let mut bytes = Vec::new();
    while from(&mut bytes) {}
    if !bytes.is_empty() {
        to(&bytes);
    }
}

/// Feeds `bytes` to the server session and returns the plaintext it can give now.
fn feed(server: &mut ServerConnection, bytes: &[u8]) -> Vec<u8> {
    let mut rest = bytes;
    let mut plain = Vec::new();
    loop {
        // Read what is decrypted (the session holds only so much), before feeding more.
        match server.reader().read_to_end(&mut plain) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading plaintext: {e}"),
        }
        if rest.is_empty() {
            return plain;
        }
        server.read_tls(&mut rest).unwrap();
        server.process_new_packets().unwrap();
    }
}

#[test]
fn a_frame_is_decryptable_exactly_at_the_end_of_its_wire_bytes() {
    let (server_config, sink) = configs();
    let mut client =
        rustls::ClientConnection::new(sink.config.clone(), sink.server_name.clone()).unwrap();
    let mut server = ServerConnection::new(server_config).unwrap();
    // The handshake in memory.
    for _ in 0..10 {
        pump(
            &mut |out| client.wants_write() && client.write_tls(out).unwrap() > 0,
            &mut |bytes| {
                feed(&mut server, bytes);
            },
        );
        pump(
            &mut |out| server.wants_write() && server.write_tls(out).unwrap() > 0,
            &mut |bytes| {
                let mut rest = bytes;
                while !rest.is_empty() {
                    client.read_tls(&mut rest).unwrap();
                    client.process_new_packets().unwrap();
                }
            },
        );
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    // The client's last handshake flight, if any, reaches the server first.
    pump(
        &mut |out| client.wants_write() && client.write_tls(out).unwrap() > 0,
        &mut |bytes| {
            feed(&mut server, bytes);
        },
    );
    let mut wire = Wire::Tls(Box::new(client));
    let mut out = Vec::new();
    for (i, extra) in [0usize, 1, 500, 16_400, 40_000, 3].into_iter().enumerate() {
        let f = frame(i as u32, extra);
        let start = out.len();
        let n = wire.encode(&f, &mut out).unwrap();
        assert_eq!(
            out.len() - start,
            n,
            "the length returned is what was appended"
        );
        assert!(n > f.len(), "TLS records are longer than their plaintext");
        let chunk = &out[start..];
        // One byte short of the recorded end: the frame is not whole on the other side.
        let before = feed(&mut server, &chunk[..n - 1]);
        assert!(before.len() < f.len(), "frame {i} readable before its end");
        let after = feed(&mut server, &chunk[n - 1..]);
        let mut whole = before;
        whole.extend_from_slice(&after);
        assert_eq!(
            whole,
            f.to_vec(),
            "frame {i} whole at its end, nothing more"
        );
    }
    let mut plain = Wire::Plain;
    let mut out = Vec::new();
    assert_eq!(plain.encode(b"HEP3", &mut out).unwrap(), 4);
    assert_eq!(out, b"HEP3");
}

/// Reads `n` frames from a TLS server stream.
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    n: usize,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    let work = async {
        while out.len() < n {
            if let Some(len) = frame_len(buf, MAX_FRAME_LEN).unwrap() {
                out.push(buf.split_to(len).freeze());
                continue;
            }
            let got = s.read_buf(buf).await.unwrap();
            assert!(got > 0, "EOF after {} of {n} frames", out.len());
        }
    };
    tokio::time::timeout(WAIT, work)
        .await
        .expect("timed out reading frames");
    out
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_not_acknowledged_before_a_reset_arrive_on_the_next_tls_session() {
    let (server_config, sink_tls) = configs();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    // A small receive buffer: the first collector's TCP cannot acknowledge everything.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let l = socket.listen(16).unwrap();
    let stats = Arc::new(SinkStats::default());
    let s = TcpSink::spawn_tls(
        "tls".into(),
        addr,
        SinkOptions::with_queue(10_000),
        Some(sink_tls),
        Arc::clone(&stats),
        &tokio::runtime::Handle::current(),
    );
    let total = 2_000u32;
    for i in 0..total {
        assert!(s.try_send(frame(i, 300)));
    }
    let (tcp, _) = tokio::time::timeout(WAIT, l.accept())
        .await
        .unwrap()
        .unwrap();
    let mut first = acceptor.accept(tcp).await.unwrap();
    let mut buf = BytesMut::new();
    let read = read_frames(&mut first, &mut buf, 100).await;
    assert_eq!(seq(&read[99]), 99);
    // The sink stalls on the full window; then the collector resets.
    let sent = || stats.sent.load(Relaxed);
    let mut last = sent();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if sent() == last {
            break;
        }
        last = sent();
    }
    SockRef::from(first.get_ref().0)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(first);
    wait_until("the sink to notice", || !stats.connected.load(Relaxed)).await;
    let (tcp, _) = tokio::time::timeout(WAIT, l.accept())
        .await
        .unwrap()
        .unwrap();
    // Nothing can be written on the new connection before its handshake: what the sink
    // counts sent now is what the first collector's TCP acknowledged.
    let sent_before = sent();
    assert!(
        (100..u64::from(total)).contains(&sent_before),
        "{sent_before} counted sent by the first connection"
    );
    let mut second = acceptor.accept(tcp).await.unwrap();
    let mut buf = BytesMut::new();
    let head = read_frames(&mut second, &mut buf, 1).await;
    let start = seq(&head[0]);
    assert_eq!(
        u64::from(start),
        sent_before,
        "the next session starts with the first frame not counted sent"
    );
    let rest = read_frames(&mut second, &mut buf, (total - start - 1) as usize).await;
    for (k, f) in rest.iter().enumerate() {
        assert_eq!(seq(f), start + 1 + k as u32, "gap or reordering");
    }
    wait_until("everything acknowledged", || {
        sent() == u64::from(total) && stats.queue_depth.load(Relaxed) == 0
    })
    .await;
    assert_eq!(stats.dropped_connection_lost.load(Relaxed), 0);
    assert_eq!(stats.reconnects.load(Relaxed), 1);
    assert!(s.drain(WAIT).await);
}

/// A TLS destination with a spool: the collector is down, the frames go to the spool;
/// when it comes up, they arrive over TLS, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_frames_are_replayed_over_tls_in_order() {
    let (server_config, sink_tls) = configs();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let stats = Arc::new(SinkStats::default());
    let options = SinkOptions {
        spool: Some(crate::io::spool::SpoolOptions::new(
            tmp.path().join("tls"),
            1 << 30,
            Duration::from_secs(1),
            crate::io::spool::OnFull::DropOldest,
        )),
        ..SinkOptions::with_queue(100)
    };
    let s = TcpSink::spawn_tls(
        "tls".into(),
        addr,
        options,
        Some(sink_tls),
        Arc::clone(&stats),
        &tokio::runtime::Handle::current(),
    );
    wait_until("a failed attempt", || {
        stats.connect_failures.load(Relaxed) > 0
    })
    .await;
    let total = 1_000u32;
    for i in 0..total {
        assert!(s.try_send(frame(i, 300)));
    }
    assert_eq!(stats.spooled.load(Relaxed), u64::from(total));
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (tcp, _) = tokio::time::timeout(WAIT, l.accept())
        .await
        .unwrap()
        .unwrap();
    let mut collector = acceptor.accept(tcp).await.unwrap();
    let got = read_frames(&mut collector, &mut BytesMut::new(), total as usize).await;
    for (k, f) in got.iter().enumerate() {
        assert_eq!(seq(f), k as u32, "gap or reordering");
    }
    wait_until("the spool is replayed", || {
        stats.sent.load(Relaxed) == u64::from(total) && stats.spool_frames.load(Relaxed) == 0
    })
    .await;
    assert_eq!(stats.replayed.load(Relaxed), u64::from(total));
    assert!(!stats.spooling.load(Relaxed));
}
