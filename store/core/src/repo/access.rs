//! Who may read a repository. It holds every customer's files, so it is private: the
//! repository directory is 0700 and what the tool writes in it is 0600 (directories 0700).
//! `init --group NAME` records one group (`access.toml`) that may read it, for monitoring
//! users running the read-only commands: directories are then 2750 (set-gid, so that what is
//! created inside inherits the group) and files 0640, all of that group.
//!
//! The repository directory's own mode is the guarantee (nothing below it is reachable
//! without passing it): every writable open sets it again; [`Repository::fix_permissions`]
//! sets every mode below it too (for repositories made before this rule).

use std::fs;
use std::path::Path;

use super::Repository;
use crate::error::{Error, IoContext, Result};

/// The repository's access rule (`access.toml`; missing: private).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoAccess {
    /// A group whose members may read the repository.
    pub group: Option<String>,
}

impl RepoAccess {
    /// The rule recorded in the repository at `root`.
    pub fn load(root: &Path) -> Result<RepoAccess> {
        let path = crate::layout::access(root);
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.message()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RepoAccess::default()),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Mode of the repository's directories.
    pub fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            0o2750
        } else {
            0o700
        }
    }

    /// Mode of the files the tool writes.
    pub fn file_mode(&self) -> u32 {
        if self.group.is_some() {
            0o640
        } else {
            0o600
        }
    }

    /// The umask under which a process writing the repository creates files with these
    /// modes (the index's database creates its own files).
    pub fn umask(&self) -> u32 {
        if self.group.is_some() {
            0o027
        } else {
            0o077
        }
    }

    /// The group's id: a name from the system's group database, or a number.
    pub fn gid(&self) -> Result<Option<u32>> {
        let Some(name) = &self.group else {
            return Ok(None);
        };
        if let Ok(n) = name.parse::<u32>() {
            return Ok(Some(n));
        }
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
            Ok(None) => Err(Error::InvalidArgument(format!(
                "group {name} does not exist"
            ))),
            Err(e) => Err(Error::InvalidArgument(format!("group {name}: {e}"))),
        }
    }

    /// Records this rule in the repository at `root`: `access.toml`, or none when private.
    pub(crate) fn record(&self, root: &Path) -> Result<()> {
        let path = crate::layout::access(root);
        if self.group.is_none() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(&path),
                _ => crate::fsutil::sync_dir(root),
            };
        }
        self.gid()?;
        let text = toml::to_string(self).map_err(|e| Error::Encode {
            what: "access.toml",
            reason: e.to_string(),
        })?;
        crate::fsutil::write_atomic(&path, text.as_bytes())
    }

    /// Sets the repository directory's mode and group.
    pub(crate) fn apply_to_root(&self, root: &Path) -> Result<()> {
        apply(root, self.dir_mode(), self.gid()?, true).map(drop)
    }
}

/// Sets the mode and group of `path` through a descriptor of it: what is changed is what
/// was opened, never the target of a symlink swapped in meanwhile (`follow` only for the
/// repository path the user gave, which may be a symlink).
fn apply(path: &Path, mode: u32, gid: Option<u32>, follow: bool) -> Result<bool> {
    use rustix::fs::{Mode, OFlags};
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let io = |e: rustix::io::Errno| Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(io)?;
    let st = rustix::fs::fstat(&fd).map_err(io)?;
    let mut changed = false;
    if let Some(gid) = gid {
        if st.st_gid != gid {
            rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(io)?;
            changed = true;
        }
    }
    // chown may clear set-id bits: the mode after it.
    if changed || st.st_mode & 0o7777 != mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io)?;
        changed = true;
    }
    Ok(changed)
}

/// What [`Repository::fix_permissions`] found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PermissionFix {
    /// Directories and files looked at.
    pub entries: u64,
    /// Those whose mode or group was changed.
    pub changed: u64,
}

impl Repository {
    /// Sets the mode (and group) of everything in the repository directory to its access
    /// rule ([`RepoAccess`]): directories 0700 (2750), files 0600 (0640). With `rule`, that
    /// rule is recorded first (a group for an existing repository, or private again).
    /// Symlinks are neither followed nor changed. Needs the writer lock (a writable open).
    pub fn fix_permissions(&self, rule: Option<&RepoAccess>) -> Result<PermissionFix> {
        if let Some(rule) = rule {
            rule.record(&self.root)?;
        }
        let access = RepoAccess::load(&self.root)?;
        let gid = access.gid()?;
        let mut fix = PermissionFix::default();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            fix.entries += 1;
            fix.changed += u64::from(apply(&dir, access.dir_mode(), gid, dir == self.root)?);
            for entry in fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                let path = entry.path();
                let kind = entry.file_type().at(&path)?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    fix.entries += 1;
                    fix.changed += u64::from(apply(&path, access.file_mode(), gid, false)?);
                }
            }
        }
        Ok(fix)
    }
}
