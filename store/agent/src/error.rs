//! The agent's errors.

use std::io;
use std::path::PathBuf;

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
