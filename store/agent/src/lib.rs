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

pub mod cli;
mod config;
pub mod effort;
mod error;
mod serve;
mod session;
pub mod setup;
mod ssh;

pub use config::{AgentConfig, DEFAULT_AGENT_CONFIG};
pub use error::AgentError;
pub use serve::{serve, serve_with, ServeOptions, MAX_READ_REQUEST};
pub use session::run;
pub use ssh::{authorized_keys_line, check_ssh_command, default_forced_command};
