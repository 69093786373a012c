//! `cargo xtask build`: setup, then build the whole workspace.
//!
//! The XDP object is built by `hep-user/build.rs` (aya-build, toolchain `debian-web`) and
//! embedded in the `hepfwd` binary.

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{cmd, setup};

/// Options of `cargo xtask build`.
#[derive(Args)]
pub struct BuildArgs {
    /// Build with the release profile (the eBPF object is always built in release).
    #[arg(long)]
    pub release: bool,
}

/// Setup, then `cargo build --workspace [--release]`.
pub fn run(args: &BuildArgs) -> Result<()> {
    setup::run()?;
    build_workspace(args.release)
}

/// `cargo build --workspace [--release]`, with cargo's bin directory (bpf-linker) on PATH.
pub fn build_workspace(release: bool) -> Result<()> {
    let mut c = cmd::cargo();
    c.args(["build", "--workspace"])
        .current_dir(cmd::workspace_root())
        .env("PATH", cmd::path_with_cargo_bin());
    if release {
        c.arg("--release");
    }
    println!("[build] {}", cmd::describe(&c));
    cmd::run(&mut c).context("building the workspace")
}
