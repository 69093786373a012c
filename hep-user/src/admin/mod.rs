//! Operations: the counters ([`stats`]), the process metrics ([`process`]) and the HTTP
//! server for `GET /metrics` (Prometheus text format), `GET /healthz` (200 when every
//! destination is up, 503 naming the down ones) and `GET /readyz` (200 once the daemon
//! listens, 503 before and while it stops); `HEAD` on each: the same headers, no body.

pub mod process;
pub mod stats;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
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
        if d.transport == "tcp" {
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
                    async move { Ok::<_, Infallible>(respond(&req, &registry, &stats)) }
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
            "not found: try /metrics, /healthz or /readyz\n".into(),
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
