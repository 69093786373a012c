//! `cargo xtask`: the project's own commands, so that a fresh Debian machine needs nothing
//! but rustup and this repository.
//!
//! - `setup`: install the eBPF toolchain idempotently (one line per step).
//! - `build`: setup, then `cargo build --workspace` (the XDP object is built by
//!   `hep-user/build.rs`).
//! - `run`: setup, build, then `hepfwd run --config config/hepfwd.toml`.
//! - `test`: setup, then `cargo test --workspace --no-fail-fast`.
//! - `deb`: setup, then the Debian package `target/debian/hepfwd_VERSION_amd64.deb`.
//! - `bench`: the userspace forwarding benchmark (gen → hepfwd → sink on loopback).

mod bench;
mod build;
mod cmd;
mod deb;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// hepfwd's developer commands.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "hepfwd developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain (apt packages, the `debian-web` rustup toolchain, bpf-linker,
    /// bpffs, npm packages of the interop tests); idempotent.
    Setup,
    /// Setup, then build the whole workspace (the XDP object included).
    Build(build::BuildArgs),
    /// Setup, build, then start `hepfwd run --config config/hepfwd.toml [ARGS...]`.
    Run(run::RunArgs),
    /// Setup, then run the whole test suite (`cargo test --workspace --no-fail-fast [ARGS...]`).
    Test(test::TestArgs),
    /// Setup, then build the Debian package `target/debian/hepfwd_VERSION_amd64.deb`
    /// (release binary, systemd unit, conffile, man pages, completions, monitoring assets).
    Deb,
    /// The forwarding benchmark: highest rate with at most 0.1% loss.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Deb => deb::run(),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
