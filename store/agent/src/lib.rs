//! # xstore-agent
//!
//! The client side of a pull: the small `xstore-agent` binary (or the server binary's `xstore agent`), run by sshd as the forced command of the backup
//! server's key (ARCHITECTURE.md invariant 10, FORMAT.md §Agent protocol).
//!
//! Invariants of serving (the `setup` subcommand, run by an operator, is the only code that
//! writes: [`setup`]):
//! - it serves only the trees of its allow-list (`/etc/backup.conf`), read-only; it opens
//!   nothing for writing and creates no file;
//! - every path is resolved with `openat2(RESOLVE_NO_SYMLINKS)` (or, on kernels without it, a
//!   component-by-component walk with `O_NOFOLLOW`), so no symlink — planted before or during
//!   a pull — leads out of an allowed tree; symlinks are reported as symlinks, never followed;
//! - every request is checked against the allow-list before any file is touched;
//! - an unreadable file is an error reply for that request, never the end of the session.

#![warn(missing_docs)]

use std::io;
use std::path::PathBuf;

pub mod cli;
mod config;
mod serve;
mod session;
pub mod setup;
mod ssh;

pub use config::AgentConfig;
pub use serve::serve;
pub use session::run;
pub use ssh::{authorized_keys_line, check_ssh_command, default_forced_command};

/// Where the agent reads its allow-list by default.
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/backup.conf";
/// Most raw bytes one `ReadChunks` request may ask for.
pub const MAX_READ_REQUEST: u64 = 32 * 1024 * 1024;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The allow-list could not be read or has a bad line.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong (with the line number).
        reason: String,
    },
    /// SSH asked for a command other than the agent.
    #[error("refused command {command:?}: this key may only run the backup agent")]
    RefusedCommand {
        /// `SSH_ORIGINAL_COMMAND`.
        command: String,
    },
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// stdin/stdout failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// Bad input to [`authorized_keys_line`].
    #[error("{0}")]
    InvalidArgument(String),
    /// `setup` could not read, write or check a file (nothing is left half-changed).
    #[error("setup: {0}")]
    Setup(String),
}
