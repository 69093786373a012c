//! hepfwd userspace: the daemon and its tools.
//!
//! - [`config`]: the TOML schema, validation, compilation into a plan.
//! - [`engine`]: route matching, actions, rewrite, output conversion.
//! - [`io`]: batched UDP workers, TCP in and out, the output flusher, capture files.
//! - [`daemon`]: start, reload (SIGHUP), drain and stop (SIGTERM).
//! - [`notify`]: the systemd notify protocol (`READY=1`, `RELOADING=1`, `STOPPING=1`).
//! - [`admin`]: counters, process metrics, `/metrics`, `/healthz` and `/readyz`.
//! - [`decode`]: HEP → JSON (`hepfwd decode`).
//! - [`cli`]: the `hepfwd` subcommands, one file each.
//! - [`tls`]: certificates, keys and CAs for TLS listeners and destinations.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod engine;
pub mod io;
pub mod notify;
pub mod resolve;
pub mod tls;
pub mod xdp;
