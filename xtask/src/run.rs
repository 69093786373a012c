//! `cargo xtask run`: setup, build, then start `hepfwd` on the default configuration.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build, cmd, setup};

const CONFIG: &str = "config/hepfwd.toml";

/// A placeholder written only when the configuration does not exist yet; its content is
/// owned by the configuration schema, not by xtask.
const PLACEHOLDER_CONFIG: &str = "\
# hepfwd default configuration (placeholder written by `cargo xtask run`).
# See config/example.toml for every option.

[[listener]]
name = \"agents\"
udp = \"0.0.0.0:9060\"
";

/// Options of `cargo xtask run`.
#[derive(Args)]
pub struct RunArgs {
    /// Build and run the release profile.
    #[arg(long)]
    pub release: bool,
    /// Extra arguments for `hepfwd run`, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Setup, build, then exec `target/<profile>/hepfwd run --config config/hepfwd.toml ARGS`.
pub fn run(args: &RunArgs) -> Result<()> {
    setup::run()?;
    build::build_workspace(args.release)?;
    let root = cmd::workspace_root();
    let config = root.join(CONFIG);
    if !config.exists() {
        std::fs::write(&config, PLACEHOLDER_CONFIG)
            .with_context(|| format!("writing a placeholder {}", config.display()))?;
        println!("[run] wrote a placeholder {CONFIG}");
    }
    let profile = if args.release { "release" } else { "debug" };
    let bin = target_dir().join(profile).join("hepfwd");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    let mut c = Command::new(&bin);
    c.arg("run")
        .arg("--config")
        .arg(&config)
        .args(&args.args)
        .current_dir(&root);
    println!("[run] {}", cmd::describe(&c));
    // exec only returns on failure.
    let err = c.exec();
    Err(err).with_context(|| format!("cannot exec {}", bin.display()))
}

/// `$CARGO_TARGET_DIR` (relative to the workspace root) or `<workspace>/target`.
fn target_dir() -> PathBuf {
    let root = cmd::workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}
