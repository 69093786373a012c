//! TLS material and handshakes: certificates, keys and CAs read from PEM files, checked
//! (readable, PEM, a certificate and a key that match, every certificate valid now), and
//! turned into rustls configurations (the `ring` provider); and the reasons a handshake
//! failed, as the metrics count them.
//!
//! The files are read when a configuration is compiled (start, `check-config`, reload), so
//! a reload (SIGHUP) re-reads them: new connections use what it read, open ones keep the
//! session they have. A file that fails a check fails the configuration, with the file and
//! the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS file cannot be used. The text names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// Missing, unreadable, not a regular file, or too large.
    #[error("{}: cannot read: {reason}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not PEM, or a PEM section that does not decode.
    #[error("{}: not a valid PEM file: {reason}", .path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No `CERTIFICATE` section.
    #[error("{}: no certificate in the PEM file", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No private key section.
    #[error("{}: no private key in the PEM file", .path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate that does not parse.
    #[error("{}: certificate {index} does not parse: {reason}", .path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Its position in the file (0: the first).
        index: usize,
        /// Why.
        reason: String,
    },
    /// A certificate whose validity ended.
    #[error("{}: certificate {index} ({subject}) expired on {not_after}", .path.display())]
    Expired {
        /// The file.
        path: PathBuf,
        /// Its position in the file.
        index: usize,
        /// Its subject.
        subject: String,
        /// The end of its validity.
        not_after: String,
    },
    /// A certificate whose validity has not begun.
    #[error("{}: certificate {index} ({subject}) is not valid before {not_before}", .path.display())]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// Its position in the file.
        index: usize,
        /// Its subject.
        subject: String,
        /// The start of its validity.
        not_before: String,
    },
    /// A key rustls cannot sign with.
    #[error("{}: unusable private key: {reason}", .path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{}: the private key does not match the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A CA file whose certificates cannot be trust anchors.
    #[error("{}: unusable CA certificate: {reason}", .path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No system root certificate could be loaded (for a destination without `tls_ca`).
    #[error("no system root certificates: {reason}")]
    NoSystemRoots {
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {reason}")]
    Config {
        /// Why.
        reason: String,
    },
}

impl TlsFileError {
    /// The file the error is about (the key file for a mismatch).
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsFileError::Read { path, .. }
            | TlsFileError::BadPem { path, .. }
            | TlsFileError::NoCertificate { path }
            | TlsFileError::NoKey { path }
            | TlsFileError::BadCertificate { path, .. }
            | TlsFileError::Expired { path, .. }
            | TlsFileError::NotYetValid { path, .. }
            | TlsFileError::BadKey { path, .. }
            | TlsFileError::BadCa { path, .. } => Some(path),
            TlsFileError::KeyMismatch { key, .. } => Some(key),
            TlsFileError::NoSystemRoots { .. } | TlsFileError::Config { .. } => None,
        }
    }

    /// How to fix it.
    pub fn hint(&self) -> &'static str {
        match self {
            TlsFileError::Read { .. } => "check the path and that hepfwd may read the file",
            TlsFileError::BadPem { .. }
            | TlsFileError::NoCertificate { .. }
            | TlsFileError::BadCertificate { .. } => {
                "give a PEM file with -----BEGIN CERTIFICATE----- sections"
            }
            TlsFileError::NoKey { .. } | TlsFileError::BadKey { .. } => {
                "give a PEM file with a -----BEGIN PRIVATE KEY----- (or RSA/EC) section"
            }
            TlsFileError::Expired { .. } | TlsFileError::NotYetValid { .. } => {
                "renew the certificate (or check the clock)"
            }
            TlsFileError::KeyMismatch { .. } => "give the key the certificate was issued for",
            TlsFileError::BadCa { .. } => "give the CA's certificate(s) in PEM",
            TlsFileError::NoSystemRoots { .. } => "give tls_ca, or install the system's CA bundle",
            TlsFileError::Config { .. } => {
                "check the certificate and key types (RSA, ECDSA, Ed25519)"
            }
        }
    }
}

/// The crypto provider of every configuration (`ring`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file (a regular file of bounded size, opened without blocking).
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    crate::config::file::read_config_file(path)
        .map(String::into_bytes)
        .map_err(|e| TlsFileError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The certificates of a PEM file, each checked to be valid at `now` (seconds since the
/// epoch); at least one.
pub fn read_certificates(
    path: &Path,
    now: i64,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read_pem(path)?;
    let mut certificates = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        certificates.push(item.map_err(|e| TlsFileError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?);
    }
    if certificates.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for (index, der) in certificates.iter().enumerate() {
        check_validity(path, index, der, now)?;
    }
    Ok(certificates)
}

/// Checks that the certificate `der` (number `index` of `path`) is valid at `now`.
fn check_validity(
    path: &Path,
    index: usize,
    der: &CertificateDer<'_>,
    now: i64,
) -> Result<(), TlsFileError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        TlsFileError::BadCertificate {
            path: path.to_path_buf(),
            index,
            reason: e.to_string(),
        }
    })?;
    let validity = certificate.validity();
    let subject = certificate.subject().to_string();
    if validity.not_after.timestamp() < now {
        return Err(TlsFileError::Expired {
            path: path.to_path_buf(),
            index,
            subject,
            not_after: validity.not_after.to_string(),
        });
    }
    if validity.not_before.timestamp() > now {
        return Err(TlsFileError::NotYetValid {
            path: path.to_path_buf(),
            index,
            subject,
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

/// The first private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsFileError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsFileError::BadPem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// The trust anchors of a CA file.
fn read_roots(path: &Path, now: i64) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path, now)? {
        roots.add(certificate).map_err(|e| TlsFileError::BadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The system's trust anchors.
fn system_roots() -> Result<RootCertStore, TlsFileError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let reason = loaded
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(TlsFileError::NoSystemRoots { reason });
    }
    Ok(roots)
}

/// A certificate chain and its key, read and checked to match.
fn certified_key(
    cert: &Path,
    key: &Path,
    now: i64,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsFileError> {
    let chain = read_certificates(cert, now)?;
    let private_key = read_key(key)?;
    match CertifiedKey::from_der(chain.clone(), private_key.clone_key(), &provider()) {
        Ok(_) => Ok((chain, private_key)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsFileError::KeyMismatch {
            key: key.to_path_buf(),
            cert: cert.to_path_buf(),
        }),
        Err(e) => Err(TlsFileError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn refused(e: rustls::Error) -> TlsFileError {
    TlsFileError::Config {
        reason: e.to_string(),
    }
}

/// The configuration of a TLS listener: its certificate chain and key, and, for mutual
/// TLS, the CA a client's certificate must chain to (a client without one is refused).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    let now = now();
    let (chain, private_key) = certified_key(cert, key, now)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(read_roots(ca, now)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsFileError::BadCa {
                    path: ca.to_path_buf(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, private_key)
        .map_err(refused)?;
    Ok(Arc::new(config))
}

/// The configuration of a TLS destination: the CA its server's certificate must chain to
/// (`None`: the system's roots), and a client certificate and key for mutual TLS.
pub fn client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsFileError> {
    let now = now();
    let roots = match ca {
        Some(ca) => read_roots(ca, now)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, private_key) = certified_key(cert, key, now)?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(refused)?
        }
    };
    Ok(Arc::new(config))
}

/// Why a TLS handshake failed, as `reason` labels the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within the handshake timeout.
    Timeout,
    /// The client presented no certificate to a listener that requires one (or the
    /// server told the destination it requires one).
    NoClientCert,
    /// A certificate was refused (unknown issuer, expired, wrong name, bad signature), by
    /// this side or by the peer.
    BadCertificate,
    /// Anything else: not TLS, a broken or closed connection, no common protocol.
    Protocol,
}

/// The `reason` labels, in the order of [`HandshakeFailure::index`].
pub const HANDSHAKE_FAILURES: [&str; 4] =
    ["timeout", "no_client_cert", "bad_certificate", "protocol"];

impl HandshakeFailure {
    /// The position of its counter.
    pub fn index(self) -> usize {
        match self {
            HandshakeFailure::Timeout => 0,
            HandshakeFailure::NoClientCert => 1,
            HandshakeFailure::BadCertificate => 2,
            HandshakeFailure::Protocol => 3,
        }
    }

    /// The label.
    pub fn as_str(self) -> &'static str {
        HANDSHAKE_FAILURES[self.index()]
    }

    /// The reason of a failed handshake's error (tokio-rustls wraps rustls' error in an
    /// `io::Error`).
    pub fn of(error: &std::io::Error) -> Self {
        use rustls::AlertDescription as Alert;
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Protocol;
        };
        match tls {
            rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(Alert::CertificateRequired) => {
                HandshakeFailure::NoClientCert
            }
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::DecryptError,
            ) => HandshakeFailure::BadCertificate,
            _ => HandshakeFailure::Protocol,
        }
    }
}

#[cfg(test)]
mod tests;
