//! `hepfwd tap`: what one route forwards, live — one JSON object a line (the `hepfwd decode`
//! object plus `route` and `destinations`) — read from a running daemon's admin server
//! (`GET /tap`, which `[admin] tap = true` turns on). Bounded by `--count` and
//! `--seconds`; the last line says why it ended and how many packets the tap missed.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

/// Arguments of `hepfwd tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The daemon's admin address (`[admin] listen`).
    #[arg(long, default_value = "127.0.0.1:9100", env = "HEPFWD_ADMIN")]
    pub admin: SocketAddr,
    /// The route to watch (its `name`).
    #[arg(long, env = "HEPFWD_TAP_ROUTE")]
    pub route: String,
    /// Stop after this many packets (1 – 10000).
    #[arg(long, default_value_t = 100, env = "HEPFWD_TAP_COUNT")]
    pub count: u64,
    /// Stop after this many seconds (1 – 3600).
    #[arg(long, default_value_t = 60, env = "HEPFWD_TAP_SECONDS")]
    pub seconds: u64,
}

/// `s` with every byte but the unreserved ones (RFC 3986) as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `hepfwd tap`.
pub fn run(a: TapArgs) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&a.admin, Duration::from_secs(3))
        .with_context(|| format!("connecting to the admin server {}", a.admin))?;
    // The daemon ends the stream itself after `seconds`; a margin for a silent peer.
    s.set_read_timeout(Some(Duration::from_secs(a.seconds.saturating_add(10))))
        .context("setting a read timeout")?;
    // HTTP/1.0: the answer's body runs to the end of the connection (no chunks to undo).
    write!(
        s,
        "GET /tap?route={}&count={}&seconds={} HTTP/1.0\r\nHost: {}\r\n\r\n",
        percent_encode(&a.route),
        a.count,
        a.seconds,
        a.admin
    )
    .context("sending the request")?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).context("reading the answer")?;
    loop {
        let mut header = String::new();
        let n = r.read_line(&mut header).context("reading the answer")?;
        if n == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    if status.split_whitespace().nth(1) != Some("200") {
        let mut why = String::new();
        for line in r.lines().take(20) {
            why.push_str(&line.unwrap_or_default());
        }
        bail!(
            "{}: {} {}",
            a.admin,
            status
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" "),
            why.trim()
        );
    }
    let mut out = std::io::stdout().lock();
    for line in r.lines() {
        let line = line.context("reading the tap")?;
        writeln!(out, "{line}").context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_encoded() {
        assert_eq!(percent_encode("sip-to-a_1.x~"), "sip-to-a_1.x~");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
