//! `hepfwd top`: a live view of a running daemon, read from its `/metrics` (the admin
//! server): packets per second per listener, route and destination, the kernel's share of
//! the routing, drops by reason, TCP queues and whether each destination is up. Refreshed every
//! `--interval`; `--once` prints one frame (two samples one interval apart) and exits, for
//! scripts and tests.
//!
//! Read-only and bounded: one HTTP GET per interval with a timeout, a response of at most
//! [`MAX_RESPONSE`] bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

/// The most bytes of `/metrics` read (a daemon with 20,000 routes answers ~10 MB).
pub const MAX_RESPONSE: u64 = 64 << 20;
/// Connect, read and write timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments of `hepfwd top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The daemon's admin address (`[admin] listen`).
    #[arg(long, default_value = "127.0.0.1:9100", env = "HEPFWD_ADMIN")]
    pub admin: SocketAddr,
    /// Seconds between refreshes (and between the two samples of `--once`).
    #[arg(long, default_value_t = 1.0, env = "HEPFWD_TOP_INTERVAL")]
    pub interval: f64,
    /// Print one frame and exit (for scripts and tests).
    #[arg(long, env = "HEPFWD_TOP_ONCE")]
    pub once: bool,
    /// Rows per table at most (the busiest first).
    #[arg(long, default_value_t = 20, env = "HEPFWD_TOP_ROWS")]
    pub rows: usize,
}

/// Runs `hepfwd top`.
pub fn run(a: TopArgs) -> Result<()> {
    if !(0.05..=3600.0).contains(&a.interval) {
        bail!(
            "--interval {} is not between 0.05 and 3600 seconds",
            a.interval
        );
    }
    let interval = Duration::from_secs_f64(a.interval);
    let mut before = Snapshot::fetch(a.admin)?;
    loop {
        std::thread::sleep(interval);
        let now = Snapshot::fetch(a.admin)?;
        let frame = render(&before, &now, a.admin, a.rows);
        let mut out = std::io::stdout().lock();
        if a.once {
            out.write_all(frame.as_bytes())
                .context("writing to stdout")?;
            return Ok(());
        }
        // Home, clear, frame.
        write!(out, "\x1b[H\x1b[2J{frame}").context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
        before = now;
    }
}

/// One sample of `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Option<Instant>,
    /// Every sample: name, labels (sorted), value.
    pub samples: Vec<Sample>,
}

/// One line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Label pairs, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Snapshot {
    /// GETs `http://admin/metrics`.
    pub fn fetch(admin: SocketAddr) -> Result<Snapshot> {
        let body = http_get(admin, "/metrics")
            .with_context(|| format!("reading http://{admin}/metrics (is hepfwd running with [admin] listen = \"{admin}\"?)"))?;
        Ok(Snapshot {
            at: Some(Instant::now()),
            samples: parse_metrics(&body),
        })
    }

    /// Sum of `name` over the samples whose labels include every pair of `filter`, grouped
    /// by the value of label `by` (samples without it are left out).
    fn sum_by(&self, name: &str, by: &str, filter: &[(&str, &str)]) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for s in self.selected(name, filter) {
            if let Some(key) = s.labels.get(by) {
                *m.entry(key.clone()).or_insert(0.0) += s.value;
            }
        }
        m
    }

    /// Sum of `name` over the samples whose labels include every pair of `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.selected(name, filter).map(|s| s.value).sum()
    }

    /// The samples of `name` whose labels include every pair of `filter`.
    fn selected<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }
}

/// A plain HTTP/1.1 GET (`Connection: close`); the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).context("connecting")?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))
        .context("setting a read timeout")?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))
        .context("setting a write timeout")?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: text/plain\r\n\r\n"
    )
    .context("sending the request")?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .context("reading the answer")?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("not an HTTP answer");
    };
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("the admin server answered {status:?}");
    }
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// The body of a `Transfer-Encoding: chunked` answer (what is well formed of it).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        let Some(chunk) = rest.get(..n) else { break };
        out.push_str(chunk);
        body = rest.get(n..).unwrap_or("").trim_start_matches("\r\n");
    }
    out
}

/// The samples of a Prometheus text exposition; lines it cannot read are skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches([',', ' ']);
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (key, after) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            r = after.get(end + 1..)?;
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Per-second rates of the counters grouped by label `by`, from `a` to `b`, busiest first.
fn rates(
    a: &Snapshot,
    b: &Snapshot,
    name: &str,
    by: &str,
    filter: &[(&str, &str)],
    seconds: f64,
) -> Vec<(String, f64)> {
    let before = a.sum_by(name, by, filter);
    let mut v: Vec<(String, f64)> = b
        .sum_by(name, by, filter)
        .into_iter()
        .map(|(k, now)| {
            let then = before.get(&k).copied().unwrap_or(0.0);
            // A restarted daemon's counters go back to zero: count from zero.
            let delta = if now >= then { now - then } else { now };
            (k, delta / seconds)
        })
        .collect();
    v.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    v
}

/// [`rates`] by key, for looking a row's other columns up.
fn rate_map(
    a: &Snapshot,
    b: &Snapshot,
    name: &str,
    by: &str,
    filter: &[(&str, &str)],
    seconds: f64,
) -> BTreeMap<String, f64> {
    rates(a, b, name, by, filter, seconds).into_iter().collect()
}

fn delta(a: &Snapshot, b: &Snapshot, name: &str, filter: &[(&str, &str)]) -> f64 {
    let (then, now) = (a.sum(name, filter), b.sum(name, filter));
    if now >= then { now - then } else { now }
}

/// One frame of the view, from two snapshots (`a` earlier).
pub fn render(a: &Snapshot, b: &Snapshot, admin: SocketAddr, rows: usize) -> String {
    let seconds = match (a.at, b.at) {
        (Some(t0), Some(t1)) => t1.duration_since(t0).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    let mut f = String::new();
    let version = b
        .samples
        .iter()
        .find(|s| s.name == "hepfwd_build_info")
        .and_then(|s| s.labels.get("version").cloned())
        .unwrap_or_else(|| "?".into());
    let _ = writeln!(
        f,
        "hepfwd {version} at {admin} — rates over {seconds:.1} s, packets/s"
    );

    // The kernel's share: route matches decided in XDP against all.
    let xdp = delta(a, b, "hepfwd_route_matches_total", &[("path", "xdp")]);
    let all = delta(a, b, "hepfwd_route_matches_total", &[]);
    let share = if all > 0.0 { 100.0 * xdp / all } else { 0.0 };
    let passed_up = delta(a, b, "hepfwd_xdp_packets_total", &[("counter", "passed")]);
    let _ = writeln!(
        f,
        "routed {:.0}/s: kernel {share:.1}%, userspace {:.1}%; XDP passed up {:.0}/s",
        all / seconds,
        100.0 - share,
        passed_up / seconds,
    );

    let _ = writeln!(f, "\nLISTENER                          in/s");
    for (name, r) in rates(a, b, "hepfwd_received_total", "listener", &[], seconds)
        .into_iter()
        .take(rows)
    {
        let _ = writeln!(f, "{name:<28} {r:>10.1}");
    }

    let _ = writeln!(
        f,
        "\nROUTE                        matched/s    kernel/s   dropped/s"
    );
    let kernel = rate_map(
        a,
        b,
        "hepfwd_route_matches_total",
        "route",
        &[("path", "xdp")],
        seconds,
    );
    let dropped = rate_map(a, b, "hepfwd_route_dropped_total", "route", &[], seconds);
    for (name, r) in rates(a, b, "hepfwd_route_matches_total", "route", &[], seconds)
        .into_iter()
        .take(rows)
    {
        let k = kernel.get(&name).copied().unwrap_or(0.0);
        let d = dropped.get(&name).copied().unwrap_or(0.0);
        let _ = writeln!(f, "{name:<28} {r:>10.1} {k:>11.1} {d:>11.1}");
    }

    let _ = writeln!(
        f,
        "\nDESTINATION                     sent/s   dropped/s  queue  up"
    );
    let dest_dropped = rate_map(
        a,
        b,
        "hepfwd_destination_dropped_total",
        "destination",
        &[],
        seconds,
    );
    let queue = b.sum_by("hepfwd_destination_queue_depth", "destination", &[]);
    let connected = b.sum_by("hepfwd_destination_connected", "destination", &[]);
    for (name, r) in rates(
        a,
        b,
        "hepfwd_destination_sent_total",
        "destination",
        &[],
        seconds,
    )
    .into_iter()
    .take(rows)
    {
        let d = dest_dropped.get(&name).copied().unwrap_or(0.0);
        let q = queue.get(&name).copied().unwrap_or(0.0);
        // Up: TCP connected and not stalled; UDP no recent ICMP error (as /healthz).
        let c = match connected.get(&name) {
            Some(c) if *c > 0.0 => "yes",
            Some(_) => "no",
            None => "-",
        };
        let _ = writeln!(f, "{name:<28} {r:>10.1} {d:>11.1} {q:>6.0}  {c}");
    }

    // Every drop, by where and why (nothing lost silently).
    let mut drops: Vec<(String, f64)> = Vec::new();
    for (reason, r) in rates(
        a,
        b,
        "hepfwd_destination_dropped_total",
        "reason",
        &[],
        seconds,
    ) {
        drops.push((format!("destination {reason}"), r));
    }
    for (reason, r) in rates(a, b, "hepfwd_rejected_total", "reason", &[], seconds) {
        drops.push((format!("listener {reason}"), r));
    }
    for (kind, r) in rates(a, b, "hepfwd_parse_errors_total", "kind", &[], seconds) {
        drops.push((format!("parse {kind}"), r));
    }
    for (name, label) in [
        ("hepfwd_route_dropped_total", "route drop"),
        ("hepfwd_sampled_out_total", "sampled out"),
        ("hepfwd_deduplicated_total", "deduplicated"),
        ("hepfwd_unrouted_total", "unrouted"),
    ] {
        drops.push((label.to_string(), delta(a, b, name, &[]) / seconds));
    }
    drops.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    let _ = writeln!(f, "\nDROPS                                 /s");
    let mut any = false;
    for (what, r) in drops.iter().filter(|d| d.1 > 0.0).take(rows) {
        any = true;
        let _ = writeln!(f, "{what:<32} {r:>8.1}");
    }
    if !any {
        let _ = writeln!(f, "none");
    }
    f
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed unwrap is a failed assertion

    use super::*;

    const BEFORE: &str = r#"# HELP hepfwd_received_total Packets received.
# TYPE hepfwd_received_total counter
hepfwd_received_total{listener="agents",path="user",transport="udp"} 100
hepfwd_received_total{listener="agents",path="user",transport="tcp"} 0
hepfwd_route_matches_total{route="sip",path="user"} 40
hepfwd_route_matches_total{route="sip",path="xdp"} 60
hepfwd_destination_sent_total{destination="a",path="user"} 100
hepfwd_destination_dropped_total{destination="t",path="user",reason="queue_full"} 0
hepfwd_destination_queue_depth{destination="t",path="user"} 0
hepfwd_destination_connected{destination="t",path="user"} 1
hepfwd_build_info{version="9.9.9"} 1
"#;

    const AFTER: &str = r#"hepfwd_received_total{listener="agents",path="user",transport="udp"} 300
hepfwd_received_total{listener="agents",path="user",transport="tcp"} 100
hepfwd_route_matches_total{route="sip",path="user"} 90
hepfwd_route_matches_total{route="sip",path="xdp"} 210
hepfwd_destination_sent_total{destination="a",path="user"} 400
hepfwd_destination_dropped_total{destination="t",path="user",reason="queue_full"} 20
hepfwd_destination_queue_depth{destination="t",path="user"} 17
hepfwd_destination_connected{destination="t",path="user"} 0
hepfwd_build_info{version="9.9.9"} 1
weird{label="with \"quotes\", commas and \\ slashes"} 2.5
not a metric line
"#;

    fn snap(text: &str, at: Instant) -> Snapshot {
        Snapshot {
            at: Some(at),
            samples: parse_metrics(text),
        }
    }

    #[test]
    fn the_text_format_is_read() {
        let s = parse_metrics(AFTER);
        assert_eq!(s.len(), 10, "the comment-free lines but the broken one");
        let w = s.iter().find(|x| x.name == "weird").unwrap();
        assert_eq!(w.labels["label"], "with \"quotes\", commas and \\ slashes");
        assert_eq!(w.value, 2.5);
        assert_eq!(s[0].labels["transport"], "udp");
        assert_eq!(s[0].value, 300.0);
    }

    /// Two seconds apart: every rate is the counter's change over 2.
    #[test]
    fn a_frame_shows_rates_shares_queues_and_drops() {
        let t0 = Instant::now();
        let a = snap(BEFORE, t0);
        let b = snap(AFTER, t0 + Duration::from_secs(2));
        let f = render(&a, &b, "127.0.0.1:9100".parse().unwrap(), 20);
        let line = |start: &str| {
            f.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in\n{f}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(f.starts_with("hepfwd 9.9.9 at 127.0.0.1:9100"), "{f}");
        // (300 + 100 − 100) / 2; 200 routed, 150 of them in XDP.
        assert_eq!(line("agents"), "agents 150.0");
        assert_eq!(
            line("routed"),
            "routed 100/s: kernel 75.0%, userspace 25.0%; XDP passed up 0/s"
        );
        assert_eq!(line("sip"), "sip 100.0 75.0 0.0");
        assert_eq!(line("a "), "a 150.0 0.0 0 -", "no state exported: unknown");
        assert_eq!(
            line("destination queue_full"),
            "destination queue_full 10.0"
        );
        // A TCP destination: its queue and its state.
        let after = AFTER.replace(
            "hepfwd_destination_sent_total{destination=\"a\",path=\"user\"} 400",
            "hepfwd_destination_sent_total{destination=\"a\",path=\"user\"} 400\nhepfwd_destination_sent_total{destination=\"t\",path=\"user\"} 0",
        );
        let b = snap(&after, t0 + Duration::from_secs(2));
        let f = render(&a, &b, "127.0.0.1:9100".parse().unwrap(), 20);
        let t = f
            .lines()
            .find(|l| l.starts_with("t "))
            .expect("a row for t");
        assert_eq!(
            t.split_whitespace().collect::<Vec<_>>(),
            ["t", "0.0", "10.0", "17", "no"]
        );
    }

    /// A restarted daemon (counters lower than before) counts from zero, never negative.
    #[test]
    fn a_restart_never_gives_a_negative_rate() {
        let t0 = Instant::now();
        let a = snap(AFTER, t0);
        let b = snap(BEFORE, t0 + Duration::from_secs(1));
        let f = render(&a, &b, "127.0.0.1:9100".parse().unwrap(), 20);
        let row = |start: &str| {
            f.lines()
                .find(|l| l.starts_with(start))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        // BEFORE's values read as counts since the restart, over 1 s.
        assert_eq!(row("agents").as_deref(), Some("agents 100.0"), "{f}");
        assert_eq!(row("sip").as_deref(), Some("sip 100.0 60.0 0.0"), "{f}");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("zz\r\nbroken"), "");
    }
}
