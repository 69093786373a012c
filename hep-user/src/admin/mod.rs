//! Operations: the counters ([`stats`]) and the HTTP server for `GET /metrics`
//! (Prometheus text format) and `GET /healthz` (`HEAD` on both: the same headers, no body).

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
use stats::{Stats, StatsCollector};

/// The Prometheus registry of the daemon.
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(StatsCollector(stats)));
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

/// The `/healthz` body: the daemon is up; each destination and whether it is reachable.
pub fn health_json(stats: &Stats) -> String {
    let dests: serde_json::Map<String, serde_json::Value> = stats
        .destinations()
        .into_iter()
        .map(|(n, d)| (n, serde_json::Value::Bool(d.connected.load(Relaxed))))
        .collect();
    serde_json::json!({ "status": "ok", "destinations_reachable": dests }).to_string()
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
        (true, "/healthz") => (StatusCode::OK, "application/json", health_json(stats)),
        (true, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
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
