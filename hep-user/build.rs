//! Builds the XDP program (`hep-ebpf`) for `bpfel-unknown-none` and leaves it in
//! `$OUT_DIR/hep-xdp`, where `src/xdp/loader.rs` embeds it.
//!
//! The eBPF build needs the toolchain `cargo xtask setup` installs (`../shared/TOOLCHAIN.md`):
//! Debian's rustc as the rustup toolchain `debian-web` (it has the library source that
//! `-Z build-std=core` needs; `RUSTC_BOOTSTRAP=1` unlocks `-Z` on it) and bpf-linker.
//!
//! `AYA_BUILD_SKIP=1` skips it and writes an empty object instead, so userspace builds,
//! clippy and the unprivileged tests work without that toolchain; the loader then reports
//! that the binary was built without the XDP program.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};

/// The eBPF binary's name (`[[bin]]` of hep-ebpf), also the file name in `$OUT_DIR`.
const BIN: &str = "hep-xdp";
/// The rustup toolchain of the eBPF build.
const TOOLCHAIN: &str = "debian-web";

fn main() {
    if let Err(e) = build() {
        println!("cargo::error={e:#}");
        std::process::exit(1);
    }
}

fn build() -> Result<()> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))?;
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let ebpf_dir = root.join("hep-ebpf");
    let common = root.join("hep-common");

    // aya-build watches hep-ebpf (its directory) itself; the program also compiles
    // hep-common, which hep-user only depends on for the host.
    for p in [common.join("src"), common.join("Cargo.toml")] {
        println!("cargo::rerun-if-changed={}", p.display());
    }
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");

    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let stub = out_dir.join(BIN);
        std::fs::write(&stub, [])
            .with_context(|| format!("writing the empty stub {}", stub.display()))?;
        println!(
            "cargo::warning=AYA_BUILD_SKIP is set: hepfwd is built WITHOUT the XDP program \
             (userspace only)"
        );
        return Ok(());
    }

    // SAFETY: a build script is single-threaded here; the variables are for the nested
    // `cargo build` that aya-build starts.
    unsafe {
        // `-Z build-std=core` on Debian's stable rustc; aya-build reads it too.
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        // bpf-linker lives in cargo's bin directory, which may not be on PATH.
        std::env::set_var("PATH", path_with_cargo_bin());
        // aya-build turns every stderr line of the nested cargo into a `cargo:warning`
        // (replayed on every build); keep only compiler diagnostics and errors.
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }
    let root_dir = path_str(&ebpf_dir)?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "hep-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(TOOLCHAIN),
    )
    .context(
        "building the XDP program (hep-ebpf for bpfel-unknown-none) failed; compiler \
         errors, if any, are above. A missing toolchain is installed by `cargo xtask setup` \
         (Debian's rustc as rustup toolchain `debian-web`, bpf-linker 0.13); userspace alone \
         builds with `AYA_BUILD_SKIP=1 cargo build`",
    )?;
    let obj = out_dir.join(BIN);
    if !obj.is_file() {
        return Err(anyhow!(
            "the eBPF build succeeded but produced no {}",
            obj.display()
        ));
    }
    Ok(())
}

fn env(key: &str) -> Result<String> {
    std::env::var(key).with_context(|| format!("{key} is not set"))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// `PATH` with `$CARGO_HOME/bin` (default `~/.cargo/bin`) in front.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let bin = std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"));
    let mut dirs: Vec<PathBuf> = bin.into_iter().collect();
    dirs.extend(std::env::split_paths(&old));
    std::env::join_paths(dirs).unwrap_or(old)
}
