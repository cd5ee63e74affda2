//! What sshd hands the agent: the forced-command check, and the `authorized_keys` line that
//! pins the backup server's key to the agent.

use std::ffi::OsStr;
use std::path::Path;

use crate::config::DEFAULT_AGENT_CONFIG;
use crate::error::AgentError;

/// Checks `SSH_ORIGINAL_COMMAND`: the key may run the agent and nothing else. `None` (run
/// directly, or a client that sent no command) is allowed; otherwise the command must be
/// `xstore agent` (any path to a program named `xstore`) or `xstore-agent` (any path to a
/// program of that name), with no further arguments.
pub fn check_ssh_command(original: Option<&str>) -> Result<(), AgentError> {
    let Some(command) = original else {
        return Ok(());
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    let program = |w: &str| {
        Path::new(w)
            .file_name()
            .and_then(OsStr::to_str)
            .map(str::to_owned)
    };
    let ok = match words.as_slice() {
        [] => true,
        [prog] => program(prog).as_deref() == Some("xstore-agent"),
        [prog, "agent"] => program(prog).as_deref() == Some("xstore"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(AgentError::RefusedCommand {
            command: command.to_string(),
        })
    }
}

/// The forced command that runs the agent at `exe`: `EXE agent` for the server's `xstore`
/// binary, `EXE` for the small `xstore-agent`, with `--config` when `config` is not
/// [`DEFAULT_AGENT_CONFIG`].
pub fn default_forced_command(exe: &Path, config: &Path) -> String {
    let mut command = exe.display().to_string();
    if exe.file_name() == Some(OsStr::new("xstore")) {
        command.push_str(" agent");
    }
    if config != Path::new(DEFAULT_AGENT_CONFIG) {
        command.push_str(&format!(" --config {}", config.display()));
    }
    command
}

/// The restricted `authorized_keys` line for the backup server's public key: the forced
/// command, the source-address restriction and every forwarding disabled.
pub fn authorized_keys_line(
    agent_command: &str,
    server_key: &str,
    from: &str,
) -> Result<String, AgentError> {
    let bad = |m: String| Err(AgentError::InvalidArgument(m));
    let key = server_key.trim();
    let fields: Vec<&str> = key.split_whitespace().collect();
    let looks_like_key = fields.len() >= 2
        && (fields[0].starts_with("ssh-")
            || fields[0].starts_with("ecdsa-")
            || fields[0].starts_with("sk-"))
        && fields[1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if !looks_like_key || key.contains('\n') {
        return bad(
            "server key: not a single OpenSSH public key line (TYPE BASE64 [COMMENT])".into(),
        );
    }
    if from.is_empty()
        || !from
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:/*?,!-_".contains(&b))
    {
        return bad(format!(
            "--from {from:?}: expected addresses, CIDR blocks or host patterns separated by commas"
        ));
    }
    if agent_command.contains('"') || agent_command.contains('\n') || agent_command.is_empty() {
        return bad(format!(
            "agent command {agent_command:?} must not contain quotes"
        ));
    }
    Ok(format!(
        "command=\"{agent_command}\",from=\"{from}\",no-pty,no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-user-rc {key}"
    ))
}
