//! `hepfwd check-config`: validate a configuration file without running it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::plan::{Action, Plan};

/// Arguments of `hepfwd check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The configuration file (TOML).
    pub file: PathBuf,
    /// Also print, for each route, whether it runs in the kernel (XDP) or in userspace, and
    /// why (source addresses are resolved with this host's routing table).
    #[arg(long)]
    pub plan: bool,
}

fn summary(p: &Plan) -> String {
    let mut s = format!(
        "{}: ok: {} listener(s), {} destination(s), {} route(s)",
        p.source.display(),
        p.listeners.len(),
        p.destinations.len(),
        p.routes.len()
    );
    for r in p.routes.iter().chain(p.default.iter()) {
        let what = match &r.action {
            Action::Drop => "drop".to_string(),
            Action::Forward { targets, mode } => {
                let names: Vec<&str> = targets
                    .iter()
                    .map(|t| p.destinations[*t].name.as_str())
                    .collect();
                format!("forward {} to {}", mode.as_str(), names.join(", "))
            }
        };
        s.push_str(&format!("\n  route {:?}: {what}", r.name));
    }
    s
}

/// Runs `hepfwd check-config`; a bad file is an error naming file, line, column and field.
pub fn run(args: CheckConfigArgs) -> Result<()> {
    match crate::config::load(&args.file) {
        Ok(plan) => {
            println!("{}", summary(&plan));
            if args.plan {
                // As the daemon runs it: with the TC mirror program attached.
                let tables = crate::xdp::compile::compile(
                    &plan,
                    &mut crate::xdp::compile::Slots::default(),
                    &crate::xdp::compile::HostNet,
                    true,
                );
                println!("where each route runs with XDP attached:");
                print!("{}", crate::xdp::compile::describe(&tables));
            }
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
