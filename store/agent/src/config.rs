//! The allow-list (`/etc/backup.conf`): the only trees the agent serves.

use std::io;
use std::path::{Path, PathBuf};

use crate::AgentError;

/// The agent's allow-list: canonical absolute directory (or file) paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Allowed roots, canonical, sorted, none inside another.
    pub roots: Vec<PathBuf>,
    /// Listed paths that do not exist on this host (not served; reported to stderr).
    pub missing: Vec<PathBuf>,
}

impl AgentConfig {
    /// Parses the allow-list text: one absolute path per line; `#` comments and blank lines
    /// are allowed. Paths are canonicalized (symlinks in the listed path itself resolved once,
    /// here); paths that do not exist are kept in `missing`.
    pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, AgentError> {
        let bad = |line: usize, reason: String| AgentError::Config {
            path: origin.to_path_buf(),
            reason: format!("line {line}: {reason}"),
        };
        let mut roots = Vec::new();
        let mut missing = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !line.starts_with('/') {
                return Err(bad(n + 1, format!("{line:?} is not an absolute path")));
            }
            let path = Path::new(line);
            if path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad(n + 1, format!("{line:?} contains '..'")));
            }
            if path == Path::new("/") {
                return Err(bad(
                    n + 1,
                    "'/' as a whole is not served; list its directories".into(),
                ));
            }
            match std::fs::canonicalize(path) {
                Ok(p) => roots.push(p),
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(path.to_path_buf()),
                Err(e) => return Err(bad(n + 1, format!("{line}: {e}"))),
            }
        }
        roots.sort();
        roots.dedup();
        let all = roots.clone();
        roots.retain(|r| !all.iter().any(|o| o != r && r.starts_with(o)));
        Ok(AgentConfig { roots, missing })
    }

    /// Reads and parses the allow-list file.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Whether `path` is an allowed root or inside one.
    pub fn allows(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r))
    }

    /// Whether `path` is a directory on the way to an allowed root (only its metadata is
    /// served, for the snapshot's directories above the roots).
    pub(crate) fn is_ancestor(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r.starts_with(path) && r != path)
    }
}
