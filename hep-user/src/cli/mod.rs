//! The `hepfwd` command line: one file per subcommand.

use clap::{Parser, Subcommand, ValueEnum};

pub mod check_config;
pub mod decode;
pub mod dist_docs;
pub mod generate;
pub mod run;
pub mod sink;
pub mod tap;
pub mod top;

/// hepfwd: an eBPF/XDP-accelerated HEP forwarder.
#[derive(Debug, Parser)]
#[command(name = "hepfwd", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "HEPFWD_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info`, `hep_user=debug`).
    #[arg(long, default_value = "info", global = true, env = "HEPFWD_LOG")]
    pub log: String,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the forwarder.
    Run(run::RunArgs),
    /// Validate a configuration file.
    CheckConfig(check_config::CheckConfigArgs),
    /// Print HEP packets as JSON, one object per line.
    Decode(decode::DecodeArgs),
    /// Send a bounded HEP load (benchmarks, manual tests).
    #[command(name = "gen")]
    Gen(generate::GenArgs),
    /// Count HEP arriving on UDP and TCP (benchmarks, manual tests).
    Sink(sink::SinkArgs),
    /// A live view of a running daemon (rates per listener, route and destination, the
    /// kernel's share, drops, queues), read from its admin server.
    Top(top::TopArgs),
    /// What one route forwards, live, one JSON object a line (needs `[admin] tap = true`).
    Tap(tap::TapArgs),
    /// Write the man pages and shell completions (for packaging: `cargo xtask deb`).
    #[command(hide = true)]
    DistDocs(dist_docs::DistDocsArgs),
}

/// When `e` rejects a value that came from an environment variable (the option is not on
/// the command line `args`), that variable's name: clap's message names only the option.
pub fn env_source_of(e: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::InvalidValue {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // `--mode <MODE>` → `mode`.
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let flag = format!("--{long}");
    let on_command_line = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    if on_command_line {
        return None;
    }
    let cmd = <Cli as clap::CommandFactory>::command();
    let var = std::iter::once(&cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))?
        .get_env()?;
    Some(var.to_string_lossy().into_owned())
}

/// Sets up `tracing` on stderr.
pub fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}
