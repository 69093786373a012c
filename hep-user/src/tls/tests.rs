//! The checks of TLS files: each failure names the file and the reason.

use super::*;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, date_time_ymd};

/// A temporary directory for one test, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("hepfwd-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `name`, valid from `from` to `to` (years), and its key.
fn self_signed(name: &str, from: i32, to: i32) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.not_before = date_time_ymd(from, 1, 1);
    params.not_after = date_time_ymd(to, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn a_good_certificate_and_key_make_a_server_and_a_client_configuration() {
    let dir = Dir::new("good");
    let (cert, key) = self_signed("localhost", 2020, 2100);
    let cert = dir.write("cert.pem", &cert);
    let key = dir.write("key.pem", &key);
    server_config(&cert, &key, None).unwrap();
    server_config(&cert, &key, Some(&cert)).unwrap();
    client_config(Some(&cert), None).unwrap();
    client_config(Some(&cert), Some((&cert, &key))).unwrap();
}

#[test]
fn a_missing_file_is_named_with_the_reason() {
    let dir = Dir::new("missing");
    let (_, key) = self_signed("localhost", 2020, 2100);
    let key = dir.write("key.pem", &key);
    let missing = dir.0.join("nothing.pem");
    let e = server_config(&missing, &key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn garbage_is_no_certificate_and_no_key() {
    let dir = Dir::new("garbage");
    let (cert, key) = self_signed("localhost", 2020, 2100);
    let cert = dir.write("cert.pem", &cert);
    let key = dir.write("key.pem", &key);
    let garbage = dir.write("garbage.pem", "this is not PEM at all\n");
    let e = server_config(&garbage, &key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: no certificate in the PEM file", garbage.display())
    );
    let e = server_config(&cert, &garbage, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: no private key in the PEM file", garbage.display())
    );
    // A key file given as the certificate has no certificate either.
    let e = server_config(&key, &key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: no certificate in the PEM file", key.display())
    );
    let broken = dir.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    );
    let e = server_config(&broken, &key, None).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: not a valid PEM file: ", broken.display())),
        "{e}"
    );
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let dir = Dir::new("mismatch");
    let (cert, _) = self_signed("localhost", 2020, 2100);
    let (_, other_key) = self_signed("other", 2020, 2100);
    let cert = dir.write("cert.pem", &cert);
    let other_key = dir.write("other-key.pem", &other_key);
    let e = server_config(&cert, &other_key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the private key does not match the certificate in {}",
            other_key.display(),
            cert.display()
        )
    );
    let e = client_config(Some(&cert), Some((&cert, &other_key))).unwrap_err();
    assert!(matches!(e, TlsFileError::KeyMismatch { .. }), "{e}");
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused_with_its_dates() {
    let dir = Dir::new("dates");
    let (expired, key) = self_signed("old.example", 2018, 2020);
    let expired = dir.write("expired.pem", &expired);
    let key = dir.write("key.pem", &key);
    let e = server_config(&expired, &key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: certificate 0 (CN=old.example) expired on Jan  1 00:00:00 2020 +00:00",
            expired.display()
        )
    );
    // As a CA too.
    let (good, good_key) = self_signed("localhost", 2020, 2100);
    let good = dir.write("good.pem", &good);
    let good_key = dir.write("good-key.pem", &good_key);
    let e = server_config(&good, &good_key, Some(&expired)).unwrap_err();
    assert!(matches!(e, TlsFileError::Expired { .. }), "{e}");
    let e = client_config(Some(&expired), None).unwrap_err();
    assert!(matches!(e, TlsFileError::Expired { .. }), "{e}");
    let (future, future_key) = self_signed("new.example", 2090, 2100);
    let future = dir.write("future.pem", &future);
    let future_key = dir.write("future-key.pem", &future_key);
    let e = server_config(&future, &future_key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: certificate 0 (CN=new.example) is not valid before Jan  1 00:00:00 2090 +00:00",
            future.display()
        )
    );
}

#[test]
fn handshake_failure_reasons_come_from_rustls_errors() {
    let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    assert_eq!(
        HandshakeFailure::of(&wrap(rustls::Error::NoCertificatesPresented)),
        HandshakeFailure::NoClientCert
    );
    assert_eq!(
        HandshakeFailure::of(&wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        ))),
        HandshakeFailure::BadCertificate
    );
    assert_eq!(
        HandshakeFailure::of(&wrap(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA
        ))),
        HandshakeFailure::BadCertificate
    );
    assert_eq!(
        HandshakeFailure::of(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        HandshakeFailure::Protocol
    );
    assert_eq!(
        HANDSHAKE_FAILURES[HandshakeFailure::Timeout.index()],
        "timeout"
    );
}
