//! `hepfwd run`: the daemon.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::daemon::{self, DataPath};

/// Arguments of `hepfwd run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Data path: XDP in the kernel with userspace fallback (auto), XDP required, or
    /// userspace only.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
}

/// The data path to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// XDP where possible, else userspace.
    Auto,
    /// XDP or fail.
    Xdp,
    /// Userspace only.
    Userspace,
}

/// Runs `hepfwd run`.
pub fn run(args: RunArgs) -> Result<()> {
    let path = match args.mode {
        Mode::Auto => DataPath::Auto,
        Mode::Xdp => DataPath::Xdp,
        Mode::Userspace => DataPath::Userspace,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hepfwd")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(daemon::run(args.config, path))
}
