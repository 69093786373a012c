//! Operations: the counters ([`stats`]), the process metrics ([`process`]) and the HTTP
//! server for `GET /metrics` (Prometheus text format), `GET /healthz` (200 when every
//! destination is up, 503 naming the down ones), `GET /readyz` (200 once the daemon
//! listens, 503 before and while it stops) and, when `[admin] tap = true`, `GET
//! /tap?route=NAME[&count=N][&seconds=S]` (what the route forwards, one JSON object a line,
//! as it happens: [`tap`]); `HEAD` on each: the same headers, no body.

pub mod process;
pub mod stats;
pub mod tap;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::io::accept::AcceptLoop;
use stats::{Phase, Stats, StatsCollector};

/// The Prometheus registry of the daemon.
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(StatsCollector(stats)));
    r.register_collector(Box::new(process::ProcessCollector));
    r
}

/// The `/metrics` text.
pub fn metrics_text(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// `/healthz`: 200 and `"status": "ok"` when the daemon runs and every destination of the
/// running configuration is up; 503 and `"degraded"` when one is down (a TCP destination
/// disconnected or stalled, a UDP one in its ICMP hold-down) or spooling (new packets go to
/// its disk spool: `"spooling": true`), or `"starting"` /
/// `"stopping"` when the daemon is not ready. The body names each destination and its
/// state.
pub fn health(stats: &Stats) -> (StatusCode, String) {
    let dests = stats.health();
    let mut by_name = serde_json::Map::new();
    let mut reachable = serde_json::Map::new();
    for d in &dests {
        let mut v = serde_json::json!({
            "up": d.up,
            "transport": d.transport,
        });
        if d.transport != "udp" {
            v["queue_depth"] = d.stats.queue_depth.load(Relaxed).into();
            v["stalls"] = d.stats.stalls.load(Relaxed).into();
            v["reconnects"] = d.stats.reconnects.load(Relaxed).into();
            v["connect_failures"] = d.stats.connect_failures.load(Relaxed).into();
        }
        if d.stats.has_spool.load(Relaxed) {
            v["spooling"] = d.stats.spooling.load(Relaxed).into();
            v["spool_frames"] = d.stats.spool_frames.load(Relaxed).into();
        }
        if let Some(ms) = d.since_error_ms {
            v["ms_since_icmp_error"] = ms.into();
        }
        by_name.insert(d.name.clone(), v);
        reachable.insert(d.name.clone(), serde_json::Value::Bool(d.up));
    }
    let phase = stats.phase();
    let status = if phase != Phase::Ready {
        phase.name()
    } else if dests
        .iter()
        .all(|d| d.up && !d.stats.spooling.load(Relaxed))
    {
        "ok"
    } else {
        "degraded"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status,
        "destinations": by_name,
        // Before `destinations` was added; the same `up`, by name.
        "destinations_reachable": reachable,
    });
    (code, body.to_string())
}

/// `/readyz`: 200 once the daemon listens (with `--mode xdp`, once attached too), 503
/// before and while it stops.
pub fn ready(stats: &Stats) -> (StatusCode, String) {
    let phase = stats.phase();
    let code = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        serde_json::json!({ "status": phase.name() }).to_string(),
    )
}

/// Binds the admin server; the returned future serves until dropped.
pub async fn bind(
    addr: SocketAddr,
    stats: Arc<Stats>,
) -> Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin server on {addr}"))?;
    let local = listener.local_addr().context("reading the admin address")?;
    let registry = Arc::new(registry(stats.clone()));
    let mut accepts = AcceptLoop::new(listener, format!("admin server {local}"));
    let serve = async move {
        loop {
            let (stream, _) = accepts.accept().await;
            let registry = registry.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let registry = registry.clone();
                    let stats = stats.clone();
                    async move {
                        if req.method() == Method::GET && req.uri().path() == "/tap" {
                            return Ok::<_, Infallible>(tap_response(&req, &stats));
                        }
                        Ok::<_, Infallible>(respond(&req, &registry, &stats).map(|b| b.boxed()))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    };
    Ok((local, serve))
}

/// The answer to `req`. `HEAD` is answered as `GET` (hyper leaves the body out, keeping its
/// length); other methods get 405 with `Allow: GET, HEAD`.
fn respond(req: &Request<Incoming>, registry: &Registry, stats: &Stats) -> Response<Full<Bytes>> {
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    let (status, ctype, body) = match (readable, req.uri().path()) {
        (true, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(registry),
        ),
        (true, "/healthz") => {
            let (code, body) = health(stats);
            (code, "application/json", body)
        }
        (true, "/readyz") => {
            let (code, body) = ready(stats);
            (code, "application/json", body)
        }
        (true, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /tap?route=NAME\n".into(),
        ),
        (false, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD only\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
    }
    resp
}

/// A plain-text answer.
fn text(status: StatusCode, body: String) -> Response<BoxBody<Bytes, Infallible>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// The value of `key` in a query string (`%XX` and `+` decoded).
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /tap?route=NAME[&count=N][&seconds=S]`: the packets route NAME forwards, one JSON
/// object a line (the `hepfwd decode` object plus `route` and `destinations`), for at most
/// `count` packets (default 100, at most [`tap::MAX_COUNT`]) and `seconds` (default 60, at
/// most [`tap::MAX_SECONDS`]); a last line `{"end": why, "shown": n, "dropped": m}`.
fn tap_response(
    req: &Request<Incoming>,
    stats: &Arc<Stats>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let query = req.uri().query().unwrap_or("");
    let Some(route) = query_value(query, "route").filter(|r| !r.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: /tap?route=NAME[&count=N][&seconds=S]\n".into(),
        );
    };
    let number = |key: &str, default: u64, max: u64| -> Result<u64, String> {
        match query_value(query, key) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!("{key}={v}: a number from 1 to {max}\n")),
            },
        }
    };
    let (count, seconds) = match (
        number("count", 100, tap::MAX_COUNT),
        number("seconds", 60, tap::MAX_SECONDS),
    ) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(route_stats) = stats.existing_route(&route) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no route {route:?} in the running configuration\n"),
        );
    };
    let tap = match stats.tap.open(&route, route_stats) {
        Ok(t) => t,
        Err(e @ tap::TapError::Disabled) => return text(StatusCode::FORBIDDEN, format!("{e}\n")),
        Err(e @ tap::TapError::Busy) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
        }
    };
    tracing::info!(%route, count, seconds, "tap opened");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    struct State {
        tap: Option<tap::Tap>,
        route: String,
        shown: u64,
        count: u64,
        deadline: tokio::time::Instant,
    }
    let state = State {
        tap: Some(tap),
        route,
        shown: 0,
        count,
        deadline,
    };
    let lines = futures_util::stream::unfold(state, |mut st| async move {
        let tap = st.tap.as_mut()?;
        let why = if st.shown >= st.count {
            "count"
        } else {
            match tokio::time::timeout_at(st.deadline, tap.events.recv()).await {
                Ok(Some(ev)) => {
                    st.shown += 1;
                    let mut v = crate::decode::packet_json(
                        &ev.packet,
                        &crate::decode::Origin::default(),
                        (0, 0),
                    );
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert("route".into(), st.route.clone().into());
                        m.insert("destinations".into(), ev.destinations.into());
                    }
                    let line = Bytes::from(format!("{v}\n"));
                    return Some((Ok::<_, Infallible>(hyper::body::Frame::data(line)), st));
                }
                Ok(None) => "closed",
                Err(_) => "seconds",
            }
        };
        let dropped = tap.dropped.load(Relaxed);
        let end = serde_json::json!({ "end": why, "shown": st.shown, "dropped": dropped });
        tracing::info!(route = %st.route, shown = st.shown, dropped, why, "tap closed");
        // Closing the tap before the last line: the engine stops publishing at once.
        st.tap = None;
        Some((
            Ok(hyper::body::Frame::data(Bytes::from(format!("{end}\n")))),
            st,
        ))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(lines)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}
