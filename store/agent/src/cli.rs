//! The command line of the agent, shared by the small `xstore-agent` binary and the server's
//! `xstore agent`: it parses, calls [`crate::run`] or [`crate::authorized_keys_line`], and
//! prints.

use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::{authorized_keys_line, default_forced_command, AgentError, DEFAULT_AGENT_CONFIG};

/// Arguments of the agent.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The allow-list: one absolute path per line, # comments.
    #[arg(long, default_value = DEFAULT_AGENT_CONFIG)]
    pub config: PathBuf,
    /// Print the restricted authorized_keys line for the server's public key and exit.
    #[arg(long, requires_all = ["server_key", "from"])]
    pub print_authorized_keys: bool,
    /// The backup server's public key file (for --print-authorized-keys).
    #[arg(long, value_name = "FILE")]
    pub server_key: Option<PathBuf>,
    /// The backup server's address(es), as sshd's from="…" takes them.
    #[arg(long, value_name = "ADDR")]
    pub from: Option<String>,
    /// The forced command in the printed line (default: this binary — followed by `agent`
    /// when it is `xstore` — and --config when it is not the default).
    #[arg(long, value_name = "COMMAND")]
    pub command: Option<String>,
}

/// Runs the agent as `args` say; `name` is how the program calls itself in messages.
pub fn main(args: &AgentArgs, name: &str) -> Result<(), AgentError> {
    if args.print_authorized_keys {
        let usage = |m: &str| AgentError::InvalidArgument(m.to_string());
        let key_file = args
            .server_key
            .as_deref()
            .ok_or_else(|| usage("--server-key is required"))?;
        let key = std::fs::read_to_string(key_file)
            .map_err(|e| AgentError::InvalidArgument(format!("{}: {e}", key_file.display())))?;
        let command = match &args.command {
            Some(c) => c.clone(),
            None => default_forced_command(&std::env::current_exe()?, &args.config),
        };
        let from = args
            .from
            .as_deref()
            .ok_or_else(|| usage("--from is required"))?;
        println!("{}", authorized_keys_line(&command, &key, from)?);
        return Ok(());
    }
    // sshd sets SSH_ORIGINAL_COMMAND to what the client asked for.
    let original = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    // The frames go to fd 1 directly: std's stdout is line-buffered and not Send.
    let out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    crate::run(
        &args.config,
        original.as_deref(),
        std::io::stdin().lock(),
        out,
        &mut |m| {
            eprintln!(
                "{name}: {}: listed in {} but does not exist; skipped",
                m.display(),
                args.config.display()
            )
        },
    )
}

/// The error line a binary prints: the error, then each cause its text does not contain
/// (the library errors name their source: the cause is said once). Both `xstore` and
/// `xstore-agent` print errors through it.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
