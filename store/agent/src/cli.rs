//! The command line of the agent, shared by the small `xstore-agent` binary and the server's
//! `xstore agent`: it parses, calls [`crate::run`] or [`crate::authorized_keys_line`], and
//! prints.

use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::config::DEFAULT_AGENT_CONFIG;
use crate::error::AgentError;
use crate::setup::{SetupOptions, DEFAULT_BACKUP_PORT, DEFAULT_STATE};
use crate::ssh::{authorized_keys_line, default_forced_command};

/// Serve this host's backup list to the xstore backup server (run by sshd as the forced
/// command of the server's key), print that authorized_keys line, or set the host up.
///
/// (The `xstore-agent` binary's command line lives here, not in the binary, so that the
/// server's `xstore generate man` renders its manual page too.)
#[derive(Debug, clap::Parser)]
#[command(name = "xstore-agent", version)]
pub struct Cli {
    /// The agent's arguments.
    #[command(flatten)]
    pub args: AgentArgs,
}

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
    /// What to do instead of serving.
    #[command(subcommand)]
    pub action: Option<AgentAction>,
}

/// The agent's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AgentAction {
    /// Set this host up for backups: the restricted authorized_keys line for root, an sshd
    /// drop-in that adds the backup port, /etc/backup.conf; --undo removes exactly that.
    Setup(SetupArgs),
}

/// Arguments of `setup`.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The backup server's public key file.
    #[arg(long, value_name = "FILE", required_unless_present = "undo")]
    pub server_key: Option<PathBuf>,
    /// The backup server's address(es), as sshd's from="…" takes them.
    #[arg(long, value_name = "ADDR", required_unless_present = "undo")]
    pub from: Option<String>,
    /// The port sshd listens on for the backup server, besides its existing ports.
    #[arg(long, default_value_t = DEFAULT_BACKUP_PORT)]
    pub port: u16,
    /// A tree the server may back up (repeatable; written to a new allow-list only).
    #[arg(long = "path", value_name = "DIR")]
    pub paths: Vec<PathBuf>,
    /// Print every change as a diff, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove what an earlier setup added.
    #[arg(long, conflicts_with_all = ["server_key", "from", "paths"])]
    pub undo: bool,
    /// root's authorized_keys.
    #[arg(
        long,
        default_value = "/root/.ssh/authorized_keys",
        value_name = "FILE"
    )]
    pub authorized_keys: PathBuf,
    /// sshd's configuration (the drop-in goes into its sshd_config.d/).
    #[arg(long, default_value = "/etc/ssh/sshd_config", value_name = "FILE")]
    pub sshd_config: PathBuf,
    /// The sshd binary (for sshd -t and sshd -T).
    #[arg(long, default_value = "/usr/sbin/sshd", value_name = "FILE")]
    pub sshd: PathBuf,
    /// Where setup records what it changed, for --undo.
    #[arg(long, default_value = DEFAULT_STATE, value_name = "FILE")]
    pub state: PathBuf,
    /// Do not reload sshd afterwards (it is not running, or a chroot).
    #[arg(long)]
    pub no_reload: bool,
}

fn setup(args: &SetupArgs, config: &std::path::Path, name: &str) -> Result<(), AgentError> {
    let server_key = match &args.server_key {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| AgentError::InvalidArgument(format!("{}: {e}", f.display())))?,
        None => String::new(),
    };
    let opts = SetupOptions {
        server_key,
        from: args.from.clone().unwrap_or_default(),
        port: args.port,
        paths: args.paths.clone(),
        agent_command: default_forced_command(&std::env::current_exe()?, config),
        authorized_keys: args.authorized_keys.clone(),
        sshd_config: args.sshd_config.clone(),
        backup_conf: config.to_path_buf(),
        state: args.state.clone(),
        sshd: args.sshd.clone(),
    };
    let plan = if args.undo {
        crate::setup::plan_undo(&opts.state)?
    } else {
        crate::setup::plan_setup(&opts)?
    };
    for c in &plan.changes {
        if args.dry_run {
            print!("{}", c.diff());
        }
    }
    for n in &plan.notes {
        println!("{name}: {n}");
    }
    if args.dry_run {
        println!(
            "{} file(s) would change (dry run: nothing changed)",
            plan.changes.len()
        );
        return Ok(());
    }
    let port = (!args.undo).then_some(args.port);
    let applied = crate::setup::apply(&plan, &opts.state, &opts.sshd, &opts.sshd_config, port)?;
    for p in &applied.changed {
        println!("changed {}", p.display());
    }
    if applied.changed.is_empty() {
        println!("nothing to change");
    }
    if plan.sshd_changes && !args.no_reload {
        let status = std::process::Command::new("systemctl")
            .args(["reload", "ssh.service"])
            .status();
        match status {
            Ok(s) if s.success() => println!("reloaded sshd"),
            other => {
                let why = match other {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                // Every change is in place and checked: a warning, not a failure (exit 1
                // means nothing was changed).
                eprintln!(
                    "{name}: warning: the files are in place and sshd -t accepts them, but \
                     `systemctl reload ssh` failed ({why}): reload sshd yourself (--no-reload \
                     skips this step)"
                );
            }
        }
    }
    if !args.undo {
        print!("{}", crate::setup::firewall_hint(&opts.from, args.port));
    }
    Ok(())
}

/// Runs the agent as `args` say; `name` is how the program calls itself in messages.
pub fn main(args: &AgentArgs, name: &str) -> Result<(), AgentError> {
    if let Some(AgentAction::Setup(s)) = &args.action {
        return setup(s, &args.config, name);
    }
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
    // Every chunk leaves through this pipe to sshd: a larger one means fewer, larger writes
    // and fewer wake-ups on the client's core (best effort: sshd may hand a socket, or the
    // system's pipe limit may refuse).
    let _ = rustix::pipe::fcntl_setpipe_size(&out, 1 << 20);
    crate::session::run(
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
