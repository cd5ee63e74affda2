//! `generate`: manual pages and shell completions from the command-line definitions, for
//! packages (scripts/package.sh) and for users.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::{Cli, EXIT_OK};

#[derive(clap::Subcommand)]
pub(crate) enum GenerateWhat {
    /// Manual pages into a directory: xstore.1, xstore-SUBCOMMAND.1 for each subcommand, and
    /// xstore-agent.1 for the client agent.
    Man(ManArgs),
    /// A shell completion script for xstore (or, with --agent, xstore-agent) on stdout.
    Completions(CompletionsArgs),
}

/// `xstore generate man`.
#[derive(clap::Args)]
pub(crate) struct ManArgs {
    /// The directory (created).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
}

/// `xstore generate completions`.
#[derive(clap::Args)]
pub(crate) struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
    /// For the xstore-agent command.
    #[arg(long)]
    agent: bool,
}

fn render(cmd: clap::Command, dir: &Path, written: &mut usize) -> Result<()> {
    let path = dir.join(format!("{}.1", cmd.get_name()));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| path.display().to_string())?;
    *written += 1;
    Ok(())
}

pub(crate) fn generate(cli: &Cli, what: &GenerateWhat) -> Result<u8> {
    match what {
        GenerateWhat::Man(ManArgs { out_dir }) => {
            std::fs::create_dir_all(out_dir).with_context(|| out_dir.display().to_string())?;
            let mut written = 0;
            let mut xstore = Cli::command();
            xstore.build();
            for sub in xstore.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let name = format!("xstore-{}", sub.get_name());
                render(
                    sub.clone().name(name.clone()).bin_name(name),
                    out_dir,
                    &mut written,
                )?;
            }
            render(xstore, out_dir, &mut written)?;
            let mut agent = xstore_agent::cli::Cli::command();
            agent.build();
            render(agent, out_dir, &mut written)?;
            if !cli.quiet {
                outln!("{written} manual pages written to {}", out_dir.display());
            }
        }
        GenerateWhat::Completions(CompletionsArgs { shell, agent }) => {
            let (mut cmd, name) = match agent {
                true => (xstore_agent::cli::Cli::command(), "xstore-agent"),
                false => (Cli::command(), "xstore"),
            };
            clap_complete::generate(*shell, &mut cmd, name, &mut std::io::stdout());
        }
    }
    Ok(EXIT_OK)
}
