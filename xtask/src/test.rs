//! `cargo xtask test`: setup, then the whole test suite.

use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{cmd, setup};

/// Options of `cargo xtask test`.
#[derive(Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (e.g. a test name, or `-- --nocapture`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Setup, then `cargo test --workspace --no-fail-fast ARGS`. Under CI (`CI=true`) as root,
/// exports `HEPFWD_REQUIRE_PRIVILEGED=1` so that a privileged test that would skip fails.
pub fn run(args: &TestArgs) -> Result<()> {
    setup::run()?;
    let start = Instant::now();
    let mut c = cmd::cargo();
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
