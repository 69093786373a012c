//! `hepfwd run`: the daemon.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::daemon::{self, DataPath};
use crate::notify::Notifier;

/// Arguments of `hepfwd run`. Each option can also come from its `HEPFWD_*` environment
/// variable (for containers); the command line wins.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, short, value_name = "FILE", env = "HEPFWD_CONFIG")]
    pub config: PathBuf,
    /// Data path: XDP in the kernel with userspace fallback (auto), XDP required, or
    /// userspace only.
    #[arg(long, value_enum, default_value_t = DataPath::Auto, env = "HEPFWD_MODE")]
    pub mode: DataPath,
}

/// Runs `hepfwd run`.
pub fn run(args: RunArgs) -> Result<()> {
    // SAFETY: no thread has been started yet (the runtime is built below), so nothing
    // reads the environment while NOTIFY_SOCKET is removed from it.
    let notify = unsafe { Notifier::from_env() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hepfwd")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(daemon::run(args.config, args.mode, notify))
}
