//! `/metrics` and `/healthz` of a running daemon: a minimal HTTP GET over a std
//! `TcpStream`, and a parser of the Prometheus text format.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// `GET path` on `addr`: (status code, body). One connection per request.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect to the admin server {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read the answer to GET {path}"))?;
    let text = String::from_utf8(raw).context("the HTTP answer is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no end of HTTP headers in {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked answers are not handled by this test client");
    }
    Ok((status, body.to_string()))
}

/// One sample of the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as written (`hepfwd_received_total`).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A scrape of `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .with_context(|| format!("bad labels {s:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("bad escape in {s:?}"),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.with_context(|| format!("unterminated label value in {s:?}"))?;
        out.insert(key.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',').trim_start();
    }
    Ok(out)
}

impl Metrics {
    /// Parses the text format.
    pub fn parse(text: &str) -> Result<Self> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("bad sample line {line:?}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("bad value in {line:?}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => {
                    let l = l
                        .strip_suffix('}')
                        .with_context(|| format!("bad labels in {line:?}"))?;
                    (n.to_string(), parse_labels(l)?)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Ok(Metrics { samples })
    }

    /// Scrapes `http://addr/metrics`.
    pub fn scrape(addr: SocketAddr) -> Result<Self> {
        let (status, body) = http_get(addr, "/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {body}");
        }
        Self::parse(&body)
    }

    /// The samples named `name` whose labels include every `(key, value)` of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the matching samples (0 when none match: some families only show
    /// non-zero samples, e.g. parse errors by kind).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(name, labels).map(|s| s.value as u64).sum()
    }

    /// Like [`Metrics::get`], but the series must exist.
    pub fn require(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            !found.is_empty(),
            "no sample {name}{labels:?} in /metrics; names present: {:?}",
            self.names()
        );
        found.iter().map(|s| s.value as u64).sum()
    }

    /// The distinct metric names.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.samples.iter().map(|s| s.name.as_str()).collect();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE hepfwd_received counter\nhepfwd_received_total{listener=\"a\",path=\"user\",transport=\"udp\"} 12\nplain 3\nq{v=\"a\\\"b,c\"} 1\n# EOF\n",
        )
        .unwrap();
        assert_eq!(m.get("hepfwd_received_total", &[("listener", "a")]), 12);
        assert_eq!(m.get("hepfwd_received_total", &[("listener", "b")]), 0);
        assert_eq!(m.get("plain", &[]), 3);
        assert_eq!(m.samples[2].labels["v"], "a\"b,c");
    }
}
