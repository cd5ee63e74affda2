//! The allow-list (`/etc/backup.conf`): the only trees the agent serves.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// Where the agent reads its allow-list by default.
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/backup.conf";

/// The agent's allow-list: canonical absolute directory (or file) paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Allowed roots, canonical, sorted, none inside another.
    pub roots: Vec<PathBuf>,
    /// Listed paths that do not exist on this host: announced to the server with the roots,
    /// so that its snapshot names them as failed (partial), and reported to stderr.
    pub missing: Vec<PathBuf>,
    /// Paths listed as optional (`?/path`) that do not exist: skipped without a word.
    pub optional_missing: Vec<PathBuf>,
}

impl AgentConfig {
    /// Parses the allow-list text: one absolute path per line; `#` comments and blank lines
    /// are allowed; a path after `?` (`?/var/www`) is optional: it may be missing. Paths are
    /// canonicalized (symlinks in the listed path itself resolved once, here); paths that do
    /// not exist are kept in `missing` (or `optional_missing`).
    pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, AgentError> {
        let bad = |line: usize, reason: String| AgentError::Config {
            path: origin.to_path_buf(),
            reason: format!("line {line}: {reason}"),
        };
        let mut roots = Vec::new();
        let mut missing = Vec::new();
        let mut optional_missing = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (line, optional) = match line.strip_prefix('?') {
                Some(rest) => (rest.trim_start(), true),
                None => (line, false),
            };
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
                Err(e) if e.kind() == io::ErrorKind::NotFound => match optional {
                    true => optional_missing.push(path.to_path_buf()),
                    false => missing.push(path.to_path_buf()),
                },
                Err(e) => return Err(bad(n + 1, format!("{line}: {e}"))),
            }
        }
        roots.sort();
        roots.dedup();
        let all = roots.clone();
        roots.retain(|r| !all.iter().any(|o| o != r && r.starts_with(o)));
        missing.sort();
        missing.dedup();
        Ok(AgentConfig {
            roots,
            missing,
            optional_missing,
        })
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

    /// The paths the hello announces: the roots and the listed paths that are missing (the
    /// server's stat of one fails as not found, and its snapshot names it).
    pub fn announced(&self) -> Vec<&Path> {
        let mut all: Vec<&Path> = self
            .roots
            .iter()
            .chain(&self.missing)
            .map(PathBuf::as_path)
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Whether only the metadata of `path` may be served: a directory on the way to an
    /// announced path (for the snapshot's directories above the roots), or a missing listed
    /// path itself (its `lstat` says it does not exist).
    pub(crate) fn may_stat(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r.starts_with(path) && r != path)
            || self.missing.iter().any(|m| m.starts_with(path))
    }
}
