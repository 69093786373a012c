//! TLS end to end with peers that are not ours: `openssl s_server` (Debian's
//! /usr/bin/openssl) as the collector of a `transport = "tls"` destination, Python's `ssl`
//! module as an agent sending HEPv3 into a `tls` listener. Mutual TLS both ways, the
//! handshake timeout, and a reload that swaps the certificate (and one that is refused
//! because the new certificate expired). Certificates are made here (rcgen) in a temp dir;
//! everything runs on loopback, bounded in time; every process started is killed by its
//! guard.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hepfwd_tests::collector::{Agent, UdpCollector, WAIT};
use hepfwd_tests::daemon::{Daemon, LO, free_port_v4, udp_destination};
use hepfwd_tests::hepgen::Pkt;
use hepfwd_tests::peers::{ProcessGuard, TestDir};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes the CA certificate as `<name>.pem` in `dir`.
    fn write(&self, dir: &TestDir, name: &str) -> PathBuf {
        let path = dir.join(&format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A leaf for localhost and 127.0.0.1 with common name `cn`, valid until `until`
    /// (year), written as `<name>.pem` and `<name>.key`; returns both paths.
    fn leaf(&self, dir: &TestDir, name: &str, cn: &str, until: i32) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(until, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(&format!("{name}.pem"));
        let key_path = dir.join(&format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// Distinct HEPv3 frames.
fn frames(tag: &str, n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| Pkt::sip(&format!("{tag}-{i}@tls"), i).encode())
        .collect()
}

/// The Python agent: connects with TLS (trusting `ca`, checking the name `localhost`,
/// presenting `client` when given), prints `subject=<CN> serial=<hex>` of the server's
/// certificate, sends the file `payload`, then waits up to 1 s for the server's answer
/// (an alert when it refused us, or its close) and prints `closed` or `alert: ...`.
const AGENT: &str = r#"
import socket, ssl, sys
host, port, ca, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
if len(sys.argv) > 6:
    ctx.load_cert_chain(sys.argv[5], sys.argv[6])
raw = socket.create_connection((host, port), timeout=5)
try:
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
except (ssl.SSLError, OSError) as e:
    print("handshake failed:", e)
    sys.exit(0)
cert = tls.getpeercert()
cn = dict(x[0] for x in cert["subject"])["commonName"]
print("subject=%s serial=%s" % (cn, cert["serialNumber"]))
sys.stdout.flush()
try:
    tls.sendall(open(payload, "rb").read())
    tls.settimeout(1.0)
    data = tls.recv(1)
    print("closed" if not data else "data")
except socket.timeout:
    print("open")
except (ssl.SSLError, OSError) as e:
    print("alert:", e)
"#;

/// Runs the Python agent against `to`, sending `payload`; returns what it printed.
fn python_agent(
    dir: &TestDir,
    to: SocketAddr,
    ca: &Path,
    payload: &[u8],
    client: Option<(&Path, &Path)>,
) -> String {
    let script = dir.join("agent.py");
    std::fs::write(&script, AGENT).unwrap();
    let data = dir.join("payload.bin");
    std::fs::write(&data, payload).unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "python3"])
        .arg(&script)
        .arg(to.ip().to_string())
        .arg(to.port().to_string())
        .arg(ca)
        .arg(&data);
    if let Some((cert, key)) = client {
        cmd.arg(cert).arg(key);
    }
    let out = cmd.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python agent failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `subject=... serial=...` line the agent printed.
fn served_certificate(agent_output: &str) -> String {
    agent_output
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no certificate in the agent's output: {agent_output}"))
        .to_string()
}

/// A listener with `tls` on `ports.listen` and a UDP destination `col`, plus `extra` keys
/// on the listener.
fn tls_listener_config(port: u16, cert: &Path, key: &Path, extra: &str, col: SocketAddr) -> String {
    format!(
        "\n[[listener]]\nname = \"secure\"\ntls = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    ) + &udp_destination("collector", col)
        + "\n[default]\nforward = [\"collector\"]\n"
}

fn failed(d: &Daemon, reason: &str) -> u64 {
    d.counter(
        "hepfwd_tls_handshakes_failed_total",
        &[("listener", "secure"), ("reason", reason)],
    )
}

#[test]
fn a_python_tls_agent_reaches_a_udp_collector_through_the_tls_listener() {
    let dir = TestDir::new("tls-listener").unwrap();
    let ca = Ca::new("test CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.leaf(&dir, "server", "hepfwd-listener", 2100);
    let col = UdpCollector::new("tls-in");
    let d = Daemon::start("tls-listener", |p| {
        tls_listener_config(p.listen, &cert, &key, "", col.addr)
    });
    let to = SocketAddr::from((LO, d.ports.listen));
    let sent = frames("agent", 5);
    let out = python_agent(&dir, to, &ca_path, &sent.concat(), None);
    assert!(
        served_certificate(&out).starts_with("subject=hepfwd-listener "),
        "{out}"
    );
    let got = col.inbox.expect(5, WAIT);
    assert_eq!(got, sent, "the frames arrive unchanged and in order");
    d.wait_counter(
        "hepfwd_tls_handshakes_total",
        &[("listener", "secure")],
        1,
        WAIT,
    );
    assert_eq!(
        d.counter(
            "hepfwd_received_total",
            &[("listener", "secure"), ("transport", "tcp")]
        ),
        5
    );
    for reason in ["timeout", "no_client_cert", "bad_certificate", "protocol"] {
        assert_eq!(failed(&d, reason), 0, "{reason}");
    }
    // A plain TCP client speaking HEP to the TLS port is a protocol failure, and sends
    // nothing through.
    let mut plain = TcpStream::connect(to).unwrap();
    std::io::Write::write_all(&mut plain, &frames("plain", 1).concat()).unwrap();
    d.wait_counter(
        "hepfwd_tls_handshakes_failed_total",
        &[("listener", "secure"), ("reason", "protocol")],
        1,
        WAIT,
    );
    col.inbox.expect_silent(Duration::from_millis(300));
}

#[test]
fn mutual_tls_lets_in_a_client_of_the_right_ca_only_and_counts_each_refusal() {
    let dir = TestDir::new("tls-mutual").unwrap();
    let server_ca = Ca::new("server CA");
    let server_ca_path = server_ca.write(&dir, "server-ca");
    let (cert, key) = server_ca.leaf(&dir, "server", "hepfwd-listener", 2100);
    let client_ca = Ca::new("agents CA");
    let client_ca_path = client_ca.write(&dir, "agents-ca");
    let (good_cert, good_key) = client_ca.leaf(&dir, "good-agent", "agent-1", 2100);
    let stranger_ca = Ca::new("stranger CA");
    let (bad_cert, bad_key) = stranger_ca.leaf(&dir, "bad-agent", "agent-2", 2100);
    let col = UdpCollector::new("mtls-in");
    let d = Daemon::start("tls-mutual", |p| {
        tls_listener_config(
            p.listen,
            &cert,
            &key,
            &format!("tls_client_ca = \"{}\"", client_ca_path.display()),
            col.addr,
        )
    });
    let to = SocketAddr::from((LO, d.ports.listen));

    let good = frames("good", 3);
    python_agent(
        &dir,
        to,
        &server_ca_path,
        &good.concat(),
        Some((&good_cert, &good_key)),
    );
    assert_eq!(col.inbox.expect(3, WAIT), good);
    d.wait_counter(
        "hepfwd_tls_handshakes_total",
        &[("listener", "secure")],
        1,
        WAIT,
    );

    let out = python_agent(&dir, to, &server_ca_path, &frames("none", 2).concat(), None);
    d.wait_counter(
        "hepfwd_tls_handshakes_failed_total",
        &[("listener", "secure"), ("reason", "no_client_cert")],
        1,
        WAIT,
    );
    assert!(!out.contains("open"), "the server must close on it: {out}");

    let out = python_agent(
        &dir,
        to,
        &server_ca_path,
        &frames("stranger", 2).concat(),
        Some((&bad_cert, &bad_key)),
    );
    d.wait_counter(
        "hepfwd_tls_handshakes_failed_total",
        &[("listener", "secure"), ("reason", "bad_certificate")],
        1,
        WAIT,
    );
    assert!(!out.contains("open"), "the server must close on it: {out}");
    col.inbox.expect_silent(Duration::from_millis(300));
    assert_eq!(
        d.counter("hepfwd_tls_handshakes_total", &[("listener", "secure")]),
        1
    );
    assert_eq!(failed(&d, "timeout") + failed(&d, "protocol"), 0);
}

#[test]
fn a_silent_client_times_out_its_handshake_and_frees_its_slot() {
    let dir = TestDir::new("tls-timeout").unwrap();
    let ca = Ca::new("test CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.leaf(&dir, "server", "hepfwd-listener", 2100);
    let col = UdpCollector::new("timeout-in");
    let d = Daemon::start("tls-timeout", |p| {
        tls_listener_config(
            p.listen,
            &cert,
            &key,
            "max_connections = 1\ntls_handshake_timeout = \"300ms\"",
            col.addr,
        )
    });
    let to = SocketAddr::from((LO, d.ports.listen));
    let started = Instant::now();
    let silent = TcpStream::connect(to).unwrap();
    d.wait_counter(
        "hepfwd_tcp_connections_open",
        &[("listener", "secure")],
        1,
        WAIT,
    );
    d.wait_counter(
        "hepfwd_tls_handshakes_failed_total",
        &[("listener", "secure"), ("reason", "timeout")],
        1,
        WAIT,
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "timed out before the configured 300 ms"
    );
    d.wait_counter(
        "hepfwd_tcp_connections_open",
        &[("listener", "secure")],
        0,
        WAIT,
    );
    drop(silent);
    // The only slot is free again: a real agent gets through.
    let sent = frames("after", 2);
    python_agent(&dir, to, &ca_path, &sent.concat(), None);
    assert_eq!(col.inbox.expect(2, WAIT), sent);
    assert_eq!(
        d.counter(
            "hepfwd_tcp_connections_refused_total",
            &[("listener", "secure"), ("reason", "max_connections")]
        ),
        0
    );
}

#[test]
fn a_reload_serves_the_new_certificate_and_refuses_an_expired_one() {
    let dir = TestDir::new("tls-reload").unwrap();
    let ca = Ca::new("test CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.leaf(&dir, "server", "first-cert", 2100);
    let col = UdpCollector::new("reload-in");
    let config =
        |p: &hepfwd_tests::daemon::Ports| tls_listener_config(p.listen, &cert, &key, "", col.addr);
    let d = Daemon::start("tls-reload", config);
    let to = SocketAddr::from((LO, d.ports.listen));
    let first = served_certificate(&python_agent(
        &dir,
        to,
        &ca_path,
        &frames("a", 1).concat(),
        None,
    ));
    assert!(first.starts_with("subject=first-cert "), "{first}");
    col.inbox.expect(1, WAIT);

    // New files in place (same paths), SIGHUP: new connections see the new certificate.
    let (new_cert, new_key) = ca.leaf(&dir, "next", "second-cert", 2100);
    std::fs::rename(&new_cert, &cert).unwrap();
    std::fs::rename(&new_key, &key).unwrap();
    assert!(
        d.reload(config),
        "the reload with a good certificate is accepted"
    );
    let second = served_certificate(&python_agent(
        &dir,
        to,
        &ca_path,
        &frames("b", 1).concat(),
        None,
    ));
    assert!(second.starts_with("subject=second-cert "), "{second}");
    assert_ne!(first, second);
    col.inbox.expect(1, WAIT);

    // An expired certificate: the reload is refused, naming the file and why, and the
    // listener keeps serving the second certificate.
    let (old_cert, old_key) = ca.leaf(&dir, "old", "expired-cert", 2020);
    std::fs::rename(&old_cert, &cert).unwrap();
    std::fs::rename(&old_key, &key).unwrap();
    assert!(
        !d.reload(config),
        "a reload with an expired certificate is refused"
    );
    let log = d.stderr();
    let expected = format!(
        "listener[0].tls_cert: {}: certificate 0 (CN=expired-cert) expired on Jan  1 00:00:00 2020 +00:00",
        cert.display()
    );
    assert!(log.contains(&expected), "{expected}\nnot in:\n{log}");
    let third = served_certificate(&python_agent(
        &dir,
        to,
        &ca_path,
        &frames("c", 1).concat(),
        None,
    ));
    assert_eq!(third, second, "the running configuration stays");
    col.inbox.expect(1, WAIT);
}

/// `openssl s_server` as a TLS collector: what it receives goes to its stdout (`-quiet`).
struct OpensslServer {
    _guard: ProcessGuard,
    /// Holds s_server's stdin open (it would act on its end).
    _stdin: std::io::PipeWriter,
    stdout: PathBuf,
    stderr: PathBuf,
    addr: SocketAddr,
}

impl OpensslServer {
    fn start(dir: &TestDir, cert: &Path, key: &Path, client_ca: Option<&Path>) -> OpensslServer {
        let port = free_port_v4();
        let addr = SocketAddr::from((LO, port));
        let mut cmd = Command::new("/usr/bin/openssl");
        cmd.args(["s_server", "-quiet", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key);
        if let Some(ca) = client_ca {
            cmd.args(["-Verify", "1", "-CAfile"]).arg(ca);
        }
        let (reader, writer) = std::io::pipe().unwrap();
        let stdout = dir.join("s_server.out");
        let stderr = dir.join("s_server.err");
        let guard = ProcessGuard::spawn_with_stdin("openssl", cmd, reader, &stdout, &stderr)
            .expect("start openssl s_server");
        // Ready when it accepts.
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        OpensslServer {
            _guard: guard,
            _stdin: writer,
            stdout,
            stderr,
            addr,
        }
    }

    fn received(&self) -> Vec<u8> {
        std::fs::read(&self.stdout).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn tls_destination(addr: SocketAddr, ca: &Path, extra: &str) -> String {
    format!(
        "\n[[listener]]\nname = \"agents\"\nudp = \"127.0.0.1:{{listen}}\"\n\n[[destination]]\nname = \"homer\"\naddress = \"{addr}\"\ntransport = \"tls\"\ntls_ca = \"{}\"\n{extra}\n\n[default]\nforward = [\"homer\"]\n",
        ca.display()
    )
}

/// Sends `sent` over UDP to the daemon and waits until the collector printed all of it
/// and the daemon counted it sent (acknowledged).
fn deliver_and_check(d: &Daemon, server: &OpensslServer, sent: &[Vec<u8>]) {
    let agent = Agent::new();
    agent.send_all(SocketAddr::from((LO, d.ports.listen)), sent);
    let want = sent.concat();
    let deadline = Instant::now() + WAIT;
    while server.received().len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "s_server received {} of {} bytes\ns_server stderr:\n{}\nhepfwd stderr:\n{}",
            server.received().len(),
            want.len(),
            server.log(),
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.received(),
        want,
        "the HEP bytes, unchanged and in order"
    );
    d.wait_counter(
        "hepfwd_destination_sent_total",
        &[("destination", "homer")],
        sent.len() as u64,
        WAIT,
    );
    d.wait_counter(
        "hepfwd_destination_queue_depth",
        &[("destination", "homer")],
        0,
        WAIT,
    );
}

#[test]
fn a_tls_destination_delivers_to_openssl_s_server() {
    let dir = TestDir::new("tls-destination").unwrap();
    let ca = Ca::new("collector CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.leaf(&dir, "collector", "homer", 2100);
    let server = OpensslServer::start(&dir, &cert, &key, None);
    let d = Daemon::start("tls-destination", |p| {
        tls_destination(server.addr, &ca_path, "").replace("{listen}", &p.listen.to_string())
    });
    let sent = frames("dest", 20);
    deliver_and_check(&d, &server, &sent);
    let (_, health) = d.health();
    assert_eq!(
        health["destinations"]["homer"]["transport"], "tls",
        "{health}"
    );
    for reason in ["timeout", "no_client_cert", "bad_certificate", "protocol"] {
        assert_eq!(
            d.counter(
                "hepfwd_destination_tls_handshakes_failed_total",
                &[("destination", "homer"), ("reason", reason)]
            ),
            0,
            "{reason}"
        );
    }
}

#[test]
fn a_tls_destination_presents_its_client_certificate_to_openssl_s_server_verify() {
    let dir = TestDir::new("tls-destination-mutual").unwrap();
    let ca = Ca::new("collector CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.leaf(&dir, "collector", "homer", 2100);
    let agents_ca = Ca::new("forwarders CA");
    let agents_ca_path = agents_ca.write(&dir, "forwarders-ca");
    let (client_cert, client_key) = agents_ca.leaf(&dir, "forwarder", "hepfwd-1", 2100);
    let server = OpensslServer::start(&dir, &cert, &key, Some(&agents_ca_path));
    let d = Daemon::start("tls-destination-mutual", |p| {
        tls_destination(
            server.addr,
            &ca_path,
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                client_cert.display(),
                client_key.display()
            ),
        )
        .replace("{listen}", &p.listen.to_string())
    });
    let sent = frames("mutual", 10);
    deliver_and_check(&d, &server, &sent);
}

#[test]
fn a_destination_that_does_not_trust_the_collector_counts_a_bad_certificate_until_a_reload_gives_the_ca()
 {
    let dir = TestDir::new("tls-destination-untrusted").unwrap();
    let ca = Ca::new("collector CA");
    let (cert, key) = ca.leaf(&dir, "collector", "homer", 2100);
    let other = Ca::new("another CA");
    let ca_path = other.write(&dir, "trusted-ca");
    let server = OpensslServer::start(&dir, &cert, &key, None);
    let config = |p: &hepfwd_tests::daemon::Ports| {
        tls_destination(server.addr, &ca_path, "").replace("{listen}", &p.listen.to_string())
    };
    let d = Daemon::start("tls-destination-untrusted", config);
    let sent = frames("x", 3);
    let agent = Agent::new();
    agent.send_all(SocketAddr::from((LO, d.ports.listen)), &sent);
    d.wait_for("a bad_certificate handshake failure", WAIT, |m| {
        m.get(
            "hepfwd_destination_tls_handshakes_failed_total",
            &[("destination", "homer"), ("reason", "bad_certificate")],
        ) >= 1
            && m.get(
                "hepfwd_destination_connect_failures_total",
                &[("destination", "homer")],
            ) >= 1
    });
    assert_eq!(
        d.counter("hepfwd_destination_sent_total", &[("destination", "homer")]),
        0
    );
    // The frames wait in the queue.
    d.wait_counter(
        "hepfwd_destination_queue_depth",
        &[("destination", "homer")],
        3,
        WAIT,
    );
    assert!(server.received().is_empty());
    assert_eq!(
        d.counter("hepfwd_destination_connected", &[("destination", "homer")]),
        0
    );
    // The right CA in the same file, SIGHUP: the same sink (its queue kept) connects.
    ca.write(&dir, "trusted-ca");
    assert!(d.reload(config));
    let deadline = Instant::now() + WAIT;
    while server.received().len() < sent.concat().len() {
        assert!(Instant::now() < deadline, "hepfwd stderr:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.received(), sent.concat());
    d.wait_counter(
        "hepfwd_destination_sent_total",
        &[("destination", "homer")],
        3,
        WAIT,
    );
    d.wait_counter(
        "hepfwd_destination_connected",
        &[("destination", "homer")],
        1,
        WAIT,
    );
}

/// `hepfwd check-config FILE`: (success, stderr).
fn check_config(path: &Path) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(hepfwd_tests::hepfwd::hepfwd_bin().unwrap())
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_and_start_name_the_field_line_file_and_reason_of_a_bad_tls_file() {
    let dir = TestDir::new("tls-check-config").unwrap();
    let ca = Ca::new("test CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.leaf(&dir, "server", "hepfwd", 2100);
    let (_, other_key) = ca.leaf(&dir, "other", "other", 2100);
    let (expired, expired_key) = ca.leaf(&dir, "expired", "old", 2020);
    let config = |cert: &Path, key: &Path| {
        format!(
            "[[listener]]\nname = \"secure\"\ntls = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[[destination]]\nname = \"homer\"\naddress = \"127.0.0.1:9443\"\ntransport = \"tls\"\ntls_ca = \"{}\"\n",
            free_port_v4(),
            cert.display(),
            key.display(),
            ca_path.display()
        )
    };
    let file = dir.join("hepfwd.toml");
    std::fs::write(&file, config(&cert, &key)).unwrap();
    let (ok, stderr) = check_config(&file);
    assert!(ok, "{stderr}");

    std::fs::write(&file, config(&cert, &other_key)).unwrap();
    let (ok, stderr) = check_config(&file);
    assert!(!ok);
    let expected = format!(
        "{}:5:11: listener[0].tls_key: {}: the private key does not match the certificate in {}\n  hint: give the key the certificate was issued for",
        file.display(),
        other_key.display(),
        cert.display()
    );
    assert!(stderr.contains(&expected), "{expected}\nnot in:\n{stderr}");

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    std::fs::write(&file, config(&garbage, &key)).unwrap();
    let (ok, stderr) = check_config(&file);
    assert!(!ok);
    let expected = format!(
        "{}:4:12: listener[0].tls_cert: {}: no certificate in the PEM file",
        file.display(),
        garbage.display()
    );
    assert!(stderr.contains(&expected), "{expected}\nnot in:\n{stderr}");

    // The start refuses the same way.
    let error = match Daemon::try_start("tls-expired-start", |p| {
        format!(
            "[[listener]]\nname = \"secure\"\ntls = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.listen,
            expired.display(),
            expired_key.display()
        )
    }) {
        Ok(_) => panic!("hepfwd started with an expired certificate"),
        Err(e) => format!("{e:#}"),
    };
    let expected = format!(
        "listener[0].tls_cert: {}: certificate 0 (CN=old) expired on Jan  1 00:00:00 2020 +00:00",
        expired.display()
    );
    assert!(error.contains(&expected), "{expected}\nnot in:\n{error}");
}

#[test]
fn the_tls_listener_keeps_the_tcp_guards_allow_at_accept_and_idle_timeout() {
    let dir = TestDir::new("tls-guards").unwrap();
    let ca = Ca::new("test CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.leaf(&dir, "server", "hepfwd-listener", 2100);
    let col = UdpCollector::new("guards-in");
    let d = Daemon::start("tls-guards", |p| {
        tls_listener_config(p.listen, &cert, &key, "idle_timeout = \"300ms\"", col.addr)
            + &format!(
                "\n[[listener]]\nname = \"outsiders-only\"\ntls = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nallow = [\"192.0.2.0/24\"]\n",
                p.listen2,
                cert.display(),
                key.display()
            )
    });
    // An agent that sends one frame and then nothing: closed after idle_timeout (the
    // agent sees the close within its 1 s wait), counted.
    let sent = frames("idle", 1);
    let out = python_agent(
        &dir,
        SocketAddr::from((LO, d.ports.listen)),
        &ca_path,
        &sent.concat(),
        None,
    );
    assert!(
        out.lines()
            .any(|l| l == "closed" || l.starts_with("alert:")),
        "the daemon closes an idle TLS connection: {out}"
    );
    assert_eq!(col.inbox.expect(1, WAIT), sent);
    d.wait_counter(
        "hepfwd_tcp_connections_closed_total",
        &[("listener", "secure"), ("reason", "idle_timeout")],
        1,
        WAIT,
    );
    // A sender outside `allow` is refused at accept: no handshake is even tried.
    let out = python_agent(
        &dir,
        SocketAddr::from((LO, d.ports.listen2)),
        &ca_path,
        &frames("outsider", 1).concat(),
        None,
    );
    assert!(out.starts_with("handshake failed"), "{out}");
    d.wait_counter(
        "hepfwd_tcp_connections_refused_total",
        &[("listener", "outsiders-only"), ("reason", "allow")],
        1,
        WAIT,
    );
    for reason in ["timeout", "no_client_cert", "bad_certificate", "protocol"] {
        assert_eq!(
            d.counter(
                "hepfwd_tls_handshakes_failed_total",
                &[("listener", "outsiders-only"), ("reason", reason)]
            ),
            0,
            "{reason}"
        );
    }
    assert_eq!(
        d.counter(
            "hepfwd_tls_handshakes_total",
            &[("listener", "outsiders-only")]
        ),
        0
    );
    col.inbox.expect_silent(Duration::from_millis(300));
}
