//! `hepfwd dist-docs --out DIR` (hidden): the man pages and shell completions of a
//! distribution package, generated from the one clap definition ([`super::Cli`]) so that
//! they never drift from `--help`. `cargo xtask deb` runs it on the release binary.
//!
//! Writes `DIR/man/man1/hepfwd.1` and one `DIR/man/man1/hepfwd-SUBCOMMAND.1` per visible
//! subcommand but `help` (`MANPATH=DIR/man` finds them), and `DIR/completions/hepfwd.bash`,
//! `_hepfwd` (zsh) and `hepfwd.fish`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

/// Arguments of `hepfwd dist-docs`.
#[derive(Debug, Args)]
pub struct DistDocsArgs {
    /// The directory to write `man/` and `completions/` into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// The completion scripts: the shell and the file name its packages install.
const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "hepfwd.bash"),
    (Shell::Zsh, "_hepfwd"),
    (Shell::Fish, "hepfwd.fish"),
];

/// Writes the man pages and completions; prints each file written.
pub fn run(args: DistDocsArgs) -> Result<()> {
    let mut command = super::Cli::command();
    command.build();
    let man = args.out.join("man").join("man1");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    write_man_page(&man, "hepfwd", command.clone())?;
    // Not clap's `help` subcommand: `hepfwd(1)` and `--help` say it.
    let pages = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in pages {
        let name = format!("hepfwd-{}", sub.get_name());
        // The page's title and synopsis name the full command line (`hepfwd run`).
        let sub = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("hepfwd {}", sub.get_name()));
        write_man_page(&man, &name, sub)?;
    }

    for (shell, file) in COMPLETIONS {
        let path = completions.join(file);
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "hepfwd", &mut out);
        write(&path, &out)?;
    }
    Ok(())
}

fn write_man_page(dir: &Path, name: &str, command: clap::Command) -> Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .title(name.to_uppercase())
        .section("1")
        .source(format!("hepfwd {}", env!("CARGO_PKG_VERSION")))
        .manual("hepfwd manual")
        .render(&mut out)
        .with_context(|| format!("rendering the man page {name}.1"))?;
    write(&dir.join(format!("{name}.1")), &out)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
