//! The `hepfwd` binary.

use clap::Parser as _;
use hep_user::cli::{self, Cli, Command};

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(var) = cli::env_source_of(&e, &args) {
                let _ = e.print();
                eprintln!("(the value comes from the environment variable {var})");
                return std::process::ExitCode::from(2);
            }
            e.exit()
        }
    };
    if let Err(e) = cli::init_logging(cli.log_format, &cli.log) {
        eprintln!("hepfwd: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let res = match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::CheckConfig(a) => cli::check_config::run(a),
        Command::Decode(a) => cli::decode::run(a),
        Command::Gen(a) => cli::generate::run(a),
        Command::Sink(a) => cli::sink::run(a),
        Command::Top(a) => cli::top::run(a),
        Command::Tap(a) => cli::tap::run(a),
        Command::DistDocs(a) => cli::dist_docs::run(a),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hepfwd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
