//! hepfwd userspace: the daemon and its tools.
//!
//! - [`cli`]: the `hepfwd` subcommands, one file each.
//! - [`decode`]: HEP → JSON (`hepfwd decode`).
//! - [`io`]: TCP framing, capture files.

pub mod admin;
pub mod cli;
pub mod config;
pub mod decode;
pub mod engine;
pub mod io;
