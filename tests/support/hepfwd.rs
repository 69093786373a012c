//! Locating (and if needed building) the `hepfwd` binary under test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of this `tests` crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root if
/// relative) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

static BUILD: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The `hepfwd` binary: `$HEPFWD_BIN` if set (it must exist), else
/// `<target>/debug/hepfwd`, brought up to date once per test process with
/// `cargo build -p hep-user --bin hepfwd` (a no-op when fresh). The build also runs when
/// the binary exists because `cargo test -p hepfwd-tests` alone does not rebuild it (this
/// crate does not depend on hep-user), and a stale binary would test old code. Set
/// `HEPFWD_NO_BUILD=1` to use an existing binary as is (the build then only runs if it is
/// missing).
pub fn hepfwd_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HEPFWD_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("$HEPFWD_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    // One build per test process, however many tests ask concurrently.
    let mut done = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = done.as_ref() {
        return Ok(p.clone());
    }
    let bin = target_dir().join("debug").join("hepfwd");
    let no_build = std::env::var_os("HEPFWD_NO_BUILD").is_some_and(|v| v != "0");
    if !no_build || !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(&cargo)
            .args(["build", "-p", "hep-user", "--bin", "hepfwd"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("run {} build -p hep-user", cargo.to_string_lossy()))?;
        if !status.success() {
            bail!("`cargo build -p hep-user --bin hepfwd` failed: {status}");
        }
        if !bin.is_file() {
            bail!("cargo build succeeded but {} is missing", bin.display());
        }
    }
    *done = Some(bin.clone());
    Ok(bin)
}
