//! `cargo xtask deb`: the Debian package, `target/debian/hepfwd_VERSION_amd64.deb`.
//!
//! 1. `cargo build --release -p hep-user --bin hepfwd` (the XDP programs embedded; it reuses
//!    `target/release`, so after `cargo xtask build --release` it is a no-op);
//! 2. `hepfwd dist-docs --out target/release/dist-docs`: the man pages (then gzipped) and
//!    the bash, zsh and fish completions, generated from the one clap definition;
//! 3. `cargo deb -p hep-user --no-build` (cargo-deb, installed by `cargo xtask setup`),
//!    from `[package.metadata.deb]` in `hep-user/Cargo.toml`: the binary, the systemd unit,
//!    `/etc/hepfwd/hepfwd.toml` (a conffile), the docs, the monitoring assets and the
//!    maintainer scripts of `deploy/debian/`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

/// The package's version: the workspace's (`hep-user` shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the package is written.
pub fn package_path() -> PathBuf {
    cmd::workspace_root()
        .join("target")
        .join("debian")
        .join(format!("hepfwd_{VERSION}_amd64.deb"))
}

/// Setup, then [`build`]; prints the package's path.
pub fn run() -> Result<()> {
    setup::run()?;
    let deb = build()?;
    println!("[deb] {}", deb.display());
    Ok(())
}

/// Builds the release binary, generates the man pages and completions, and packages
/// them; returns the package's path.
pub fn build() -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let release = root.join("target").join("release");

    let mut build = cmd::cargo();
    build
        .args(["build", "--release", "-p", "hep-user", "--bin", "hepfwd"])
        .current_dir(&root)
        .env("PATH", cmd::path_with_cargo_bin());
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        bail!("AYA_BUILD_SKIP is set: the package must embed the XDP programs; unset it");
    }
    println!("[deb] {}", cmd::describe(&build));
    cmd::run(&mut build).context("building the release binary")?;

    let docs = release.join("dist-docs");
    if docs.exists() {
        std::fs::remove_dir_all(&docs).with_context(|| format!("removing {}", docs.display()))?;
    }
    let mut generate = Command::new(release.join("hepfwd"));
    generate.arg("dist-docs").arg("--out").arg(&docs);
    println!("[deb] {}", cmd::describe(&generate));
    let out = generate
        .output()
        .with_context(|| format!("starting {}", cmd::describe(&generate)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::describe(&generate),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Debian installs man pages gzip-compressed (policy 12.1); -n: no name or time stamp
    // inside, so the same page gives the same bytes.
    let man = docs.join("man").join("man1");
    let pages: Vec<PathBuf> = std::fs::read_dir(&man)
        .with_context(|| format!("reading {}", man.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    if pages.is_empty() {
        bail!(
            "`hepfwd dist-docs` wrote no man page into {}",
            man.display()
        );
    }
    cmd::run(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))
        .context("compressing the man pages")?;

    let deb = package_path();
    if let Some(dir) = deb.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut package = cmd::cargo();
    package
        .args(["deb", "-p", "hep-user", "--no-build", "--output"])
        .arg(&deb)
        .current_dir(&root)
        .env("PATH", cmd::path_with_cargo_bin());
    println!("[deb] {}", cmd::describe(&package));
    cmd::run(&mut package).context(
        "packaging with cargo-deb (installed by `cargo xtask setup`: `cargo install --locked \
         cargo-deb@3.8.0`)",
    )?;
    if !deb.is_file() {
        bail!("cargo deb succeeded but {} is missing", deb.display());
    }
    Ok(deb)
}
