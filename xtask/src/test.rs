//! `cargo xtask test`: setup, the lints (format, clippy on the host crates and on the eBPF
//! crate for its real target), the Debian package (`cargo xtask deb`, for
//! `tests/deb_package.rs`), then the whole test suite.

use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{cmd, setup};

/// Options of `cargo xtask test`.
#[derive(Args)]
pub struct TestArgs {
    /// Skip the format and clippy checks (for a quick run of one test while developing; CI
    /// never skips them).
    #[arg(long)]
    pub skip_lints: bool,
    /// Do not build the Debian package first (`tests/deb_package.rs` then uses the one
    /// already in target/debian, or skips).
    #[arg(long)]
    pub skip_deb: bool,
    /// Extra arguments for `cargo test` (e.g. a test name, or `-- --nocapture`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Setup, the lints, the Debian package (its path in `HEPFWD_DEB`), then `cargo test
/// --workspace --no-fail-fast ARGS`. Under CI (`CI=true`)
/// as root, exports `HEPFWD_REQUIRE_PRIVILEGED=1` so that a privileged test that would skip
/// fails.
pub fn run(args: &TestArgs) -> Result<()> {
    setup::run()?;
    let start = Instant::now();
    if !args.skip_lints {
        lints()?;
    }
    let deb = if args.skip_deb {
        None
    } else {
        Some(crate::deb::build().context("building the Debian package for its test")?)
    };
    let mut c = cmd::cargo();
    if let Some(deb) = &deb {
        c.env("HEPFWD_DEB", deb);
    }
    c.args(["test", "--workspace", "--no-fail-fast"])
        .args(&args.args)
        .current_dir(cmd::workspace_root())
        .env("PATH", cmd::path_with_cargo_bin());
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if ci && setup::is_root() {
        c.env("HEPFWD_REQUIRE_PRIVILEGED", "1");
        println!("[test] CI as root: HEPFWD_REQUIRE_PRIVILEGED=1 (privileged tests must run)");
    }
    println!("[test] {}", cmd::describe(&c));
    let result = cmd::run(&mut c).context("the test suite failed");
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!("[test] passed in {secs:.1} s"),
        Err(_) => println!("[test] FAILED after {secs:.1} s"),
    }
    result
}

/// `cargo fmt --check`, clippy with warnings denied on every host target, and clippy on the
/// eBPF crate built for `bpfel-unknown-none` with Debian's toolchain (the only one here
/// with the library source `-Z build-std` needs), in its own target directory.
fn lints() -> Result<()> {
    let root = cmd::workspace_root();
    let mut fmt = cmd::cargo();
    fmt.args(["fmt", "--all", "--check"]).current_dir(&root);
    println!("[test] {}", cmd::describe(&fmt));
    cmd::run(&mut fmt).context("`cargo fmt` would change files: run `cargo fmt --all`")?;

    let mut clippy = cmd::cargo();
    clippy
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root)
        .env("PATH", cmd::path_with_cargo_bin());
    println!("[test] {}", cmd::describe(&clippy));
    cmd::run(&mut clippy).context("clippy found warnings in the host crates")?;

    let mut ebpf = std::process::Command::new("cargo");
    ebpf.arg(format!("+{}", setup::TOOLCHAIN))
        .args([
            "clippy",
            "-p",
            "hep-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root.join("target").join("ebpf-clippy"))
        .env("PATH", cmd::path_with_cargo_bin());
    println!("[test] {}", cmd::describe(&ebpf));
    cmd::run(&mut ebpf).context("clippy found warnings in the eBPF crate")?;
    println!("[test] lints: clean");
    Ok(())
}
