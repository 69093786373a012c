//! Host names of destinations (`address = "homer.example.net:9060"`): what a name means
//! now. With `[resolver] hosts_file` the names come from that file only (the `/etc/hosts`
//! format: an address, then names; `#` starts a comment), which tests and closed
//! networks use; otherwise from the system's resolver (`getaddrinfo`: `/etc/hosts`, then
//! DNS, as `/etc/nsswitch.conf` says), with a timeout.
//!
//! The daemon resolves at start, on reload, every `resolve_interval`, and every second
//! while a named destination is down; a name that stops resolving keeps its last address
//! (a DNS hiccup does not take a collector away), one that never resolved leaves its
//! destination down.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest hosts file read.
pub const MAX_HOSTS_FILE: u64 = 4 << 20;
/// How long one system lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A destination's host name and port, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName {
    /// The name (checked: letters, digits, `-`, `_` and dots, at most 253 bytes).
    pub name: String,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.port)
    }
}

impl HostName {
    /// `name:port` when `text` is one (not an IP address: those are parsed before); `None`
    /// otherwise.
    pub fn parse(text: &str) -> Option<HostName> {
        let (name, port) = text.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        let ok = !trimmed.is_empty()
            && trimmed.len() <= 253
            && trimmed.split('.').all(valid_label)
            // Not something that looks like a mistyped address ("10.0.0.300").
            && !trimmed.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| HostName {
            name: trimmed.to_ascii_lowercase(),
            port,
        })
    }
}

/// Why a name has no address now.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The hosts file could not be read.
    #[error("reading the hosts file {path}: {source}")]
    HostsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The hosts file is larger than [`MAX_HOSTS_FILE`].
    #[error("the hosts file {path} is larger than {MAX_HOSTS_FILE} bytes")]
    HostsFileTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The name is not in the hosts file.
    #[error("{name} is not in the hosts file {path}")]
    NotInHostsFile {
        /// The name.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// The system's resolver failed or found nothing.
    #[error("{name} does not resolve: {reason}")]
    Lookup {
        /// The name.
        name: String,
        /// What the resolver said.
        reason: String,
    },
}

/// Where names are looked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resolver {
    /// The system's resolver.
    #[default]
    System,
    /// Only this hosts file, read anew at each lookup.
    HostsFile(PathBuf),
}

impl Resolver {
    /// The address of `host` now: the first address the hosts file gives it, or the first
    /// the system's resolver returns.
    pub async fn resolve(&self, host: &HostName) -> Result<SocketAddr, ResolveError> {
        match self {
            Resolver::HostsFile(path) => {
                let path = path.clone();
                let host = host.clone();
                tokio::task::spawn_blocking(move || lookup_in_hosts_file(&path, &host))
                    .await
                    .map_err(|e| ResolveError::Lookup {
                        name: String::new(),
                        reason: e.to_string(),
                    })?
            }
            Resolver::System => {
                let lookup = tokio::net::lookup_host((host.name.as_str(), host.port));
                match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Err(_) => Err(ResolveError::Lookup {
                        name: host.name.clone(),
                        reason: format!("no answer within {LOOKUP_TIMEOUT:?}"),
                    }),
                    Ok(Err(e)) => Err(ResolveError::Lookup {
                        name: host.name.clone(),
                        reason: e.to_string(),
                    }),
                    Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| ResolveError::Lookup {
                        name: host.name.clone(),
                        reason: "no address".into(),
                    }),
                }
            }
        }
    }
}

/// The first address `path` (hosts format) gives `host`.
pub fn lookup_in_hosts_file(path: &Path, host: &HostName) -> Result<SocketAddr, ResolveError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|source| ResolveError::HostsFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_HOSTS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|source| ResolveError::HostsFile {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > MAX_HOSTS_FILE {
        return Err(ResolveError::HostsFileTooLarge {
            path: path.to_path_buf(),
        });
    }
    hosts_lookup(&text, &host.name)
        .map(|ip| SocketAddr::new(ip, host.port))
        .ok_or_else(|| ResolveError::NotInHostsFile {
            name: host.name.clone(),
            path: path.to_path_buf(),
        })
}

/// The first address of `name` (any letter case) in hosts-format `text`.
pub fn hosts_lookup(text: &str, name: &str) -> Option<IpAddr> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let ip: IpAddr = words.next()?.parse().ok()?;
        words
            .any(|w| w.trim_end_matches('.').eq_ignore_ascii_case(name))
            .then_some(ip)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

    use super::*;

    #[test]
    fn host_names_are_parsed_strictly() {
        assert_eq!(
            HostName::parse("Homer.Example.NET.:9060"),
            Some(HostName {
                name: "homer.example.net".into(),
                port: 9060
            })
        );
        assert_eq!(HostName::parse("collector_1:9").unwrap().port, 9);
        for bad in [
            "homer.example.net",
            "homer:99999",
            "-bad.example:1",
            "a..b:1",
            "10.0.0.300:9060",
            ":9060",
            "spa ce:1",
            "é.example:1",
        ] {
            assert_eq!(HostName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_hosts_format() {
        let text = "# comment\n127.0.0.1 localhost\n198.18.2.2\thomer homer.lab # the first\n198.18.2.3 homer\n2001:db8::9 six.lab\nnot-an-ip homer\n";
        assert_eq!(hosts_lookup(text, "homer"), "198.18.2.2".parse().ok());
        assert_eq!(hosts_lookup(text, "HOMER.LAB"), "198.18.2.2".parse().ok());
        assert_eq!(hosts_lookup(text, "six.lab"), "2001:db8::9".parse().ok());
        assert_eq!(hosts_lookup(text, "the"), None, "comments are not names");
        assert_eq!(hosts_lookup(text, "missing"), None);
    }

    #[tokio::test]
    async fn a_hosts_file_and_its_errors() {
        let dir = std::env::temp_dir().join(format!("hepfwd-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "198.18.2.2 homer\n").unwrap();
        let r = Resolver::HostsFile(path.clone());
        let homer = HostName::parse("homer:9060").unwrap();
        assert_eq!(
            r.resolve(&homer).await.unwrap(),
            "198.18.2.2:9060".parse().unwrap()
        );
        std::fs::write(&path, "198.18.2.3 homer\n").unwrap();
        assert_eq!(
            r.resolve(&homer).await.unwrap(),
            "198.18.2.3:9060".parse().unwrap(),
            "read anew at each lookup"
        );
        let other = HostName::parse("other:1").unwrap();
        let e = r.resolve(&other).await.unwrap_err().to_string();
        assert!(e.contains("other is not in the hosts file"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = r.resolve(&homer).await.unwrap_err().to_string();
        assert!(e.contains("reading the hosts file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_system_resolver_knows_localhost() {
        let a = Resolver::System
            .resolve(&HostName::parse("localhost:9060").unwrap())
            .await
            .unwrap();
        assert!(a.ip().is_loopback() && a.port() == 9060, "{a}");
    }
}
