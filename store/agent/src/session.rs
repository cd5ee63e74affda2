//! One run of the agent as sshd starts it: the forced-command check, the allow-list, then
//! the session on stdin/stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use xstore_format::protocol::{write_frame, AgentMsg};

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::serve::serve;
use crate::ssh::check_ssh_command;

/// Runs one agent session: refuses any `original_command` but the agent's own (what sshd puts
/// in `SSH_ORIGINAL_COMMAND`), loads the allow-list at `config` — telling the server why in a
/// `Fatal` frame when it cannot, so that the pull's error names the cause — reports each
/// listed path that does not exist through `missing`, and serves `input`/`output`.
pub fn run<W: Write + Send + 'static>(
    config: &Path,
    original_command: Option<&str>,
    input: impl Read,
    mut output: W,
    missing: &mut dyn FnMut(&PathBuf),
) -> Result<(), AgentError> {
    check_ssh_command(original_command)?;
    let allow = match AgentConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            let msg = AgentMsg::Fatal {
                message: e.to_string().into_bytes(),
            };
            // Best effort: the server may be gone already; the error is returned either way.
            let _ = write_frame(&mut output, &msg.encode());
            let _ = output.flush();
            return Err(e);
        }
    };
    allow.missing.iter().for_each(&mut *missing);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4);
    serve(&allow, input, output, workers)
}
