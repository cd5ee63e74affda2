//! Path patterns as backup's excludes and `find` read them: a glob without `/` matches an
//! entry's name, one with `/` the entry's full path inside the snapshot.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// A set of name globs and full-path globs.
pub(crate) struct PathGlobs {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl PathGlobs {
    /// Compiles `patterns`; `what` names them in errors ("exclude pattern").
    pub(crate) fn new(patterns: &[String], what: &str) -> Result<Self> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in patterns {
            let glob =
                Glob::new(p).map_err(|e| Error::InvalidArgument(format!("{what} {p:?}: {e}")))?;
            if p.contains('/') {
                by_path.add(glob);
            } else {
                by_name.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::InvalidArgument(format!("{what}s: {e}")))
        };
        Ok(PathGlobs {
            by_name: build(by_name)?,
            by_path: build(by_path)?,
        })
    }

    /// Whether the entry named `name` at `path` matches a pattern.
    pub(crate) fn is_match(&self, path: &Path, name: &[u8]) -> bool {
        self.by_name.is_match(OsStr::from_bytes(name)) || self.by_path.is_match(path)
    }
}
