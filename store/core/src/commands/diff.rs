//! Read-side helpers: listing a directory of a snapshot and comparing two snapshots.

use std::ffi::OsStr;

use crate::error::Result;
use crate::repo::{Node, Repository};
use xstore_chunker::ChunkId;
use xstore_format::snapshot::Snapshot;
use xstore_format::tree::{Entry, Tree};

/// How a path differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the newer snapshot.
    Added,
    /// Only in the older snapshot.
    Removed,
    /// Content or metadata differ.
    Modified,
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiffItem {
    /// What happened.
    pub change: Change,
    /// Path inside the snapshot, starting with `/`.
    pub path: String,
}

fn same_meta(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind
        && a.attrs.mode == b.attrs.mode
        && a.attrs.uid == b.attrs.uid
        && a.attrs.gid == b.attrs.gid
        && a.attrs.mtime_ns == b.attrs.mtime_ns
        && a.attrs.size == b.attrs.size
        && a.xattrs == b.xattrs
        && a.attrs.rdev == b.attrs.rdev
}

impl Repository {
    /// Entries of the directory at `path` (or the single entry when `path` names a file).
    pub fn list(&self, snapshot: &Snapshot, path: &str) -> Result<Vec<Entry>> {
        match self.lookup(snapshot, path)? {
            Node::Root(id) => Ok(self.tree(&id)?.entries),
            Node::Entry(e) => match e.subtree() {
                Some(id) => Ok(self.tree(&id)?.entries),
                None => Ok(vec![e]),
            },
        }
    }

    /// Paths added, removed or modified from `old` to `new`. Identical subtrees (same id)
    /// are skipped without reading them, so the cost follows the size of the change.
    pub fn diff(&self, old: &Snapshot, new: &Snapshot) -> Result<Vec<DiffItem>> {
        let mut out = Vec::new();
        self.diff_trees(Some(old.root), Some(new.root), "", &mut out)?;
        Ok(out)
    }

    /// An entry only one side has: it and everything below it.
    fn one_side(
        &self,
        e: &Entry,
        prefix: &str,
        change: Change,
        out: &mut Vec<DiffItem>,
    ) -> Result<()> {
        let p = format!("{prefix}/{}", e.name_lossy());
        out.push(DiffItem {
            change,
            path: p.clone(),
        });
        match e.subtree() {
            Some(sub) => self.all_paths(sub, &p, change, out),
            None => Ok(()),
        }
    }

    fn all_paths(
        &self,
        id: ChunkId,
        prefix: &str,
        change: Change,
        out: &mut Vec<DiffItem>,
    ) -> Result<()> {
        for e in self.tree(&id)?.entries {
            self.one_side(&e, prefix, change, out)?;
        }
        Ok(())
    }

    fn diff_trees(
        &self,
        a: Option<ChunkId>,
        b: Option<ChunkId>,
        prefix: &str,
        out: &mut Vec<DiffItem>,
    ) -> Result<()> {
        if a == b {
            return Ok(());
        }
        let ta = match a {
            Some(id) => self.tree(&id)?,
            None => Tree::default(),
        };
        let tb = match b {
            Some(id) => self.tree(&id)?,
            None => Tree::default(),
        };
        let (mut i, mut j) = (0, 0);
        while i < ta.entries.len() || j < tb.entries.len() {
            let ea = ta.entries.get(i);
            let eb = tb.entries.get(j);
            let order = match (ea, eb) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match (order, ea, eb) {
                (std::cmp::Ordering::Less, Some(x), _) => {
                    self.one_side(x, prefix, Change::Removed, out)?;
                    i += 1;
                }
                (std::cmp::Ordering::Greater, _, Some(y)) => {
                    self.one_side(y, prefix, Change::Added, out)?;
                    j += 1;
                }
                (_, Some(x), Some(y)) => {
                    let p = format!("{prefix}/{}", x.name_lossy());
                    let content_same = match (x.subtree(), y.subtree()) {
                        (Some(_), Some(_)) => true,
                        _ => x.content == y.content,
                    };
                    if !same_meta(x, y) || !content_same {
                        out.push(DiffItem {
                            change: Change::Modified,
                            path: p.clone(),
                        });
                    }
                    if x.subtree().is_some() || y.subtree().is_some() {
                        self.diff_trees(x.subtree(), y.subtree(), &p, out)?;
                    }
                    i += 1;
                    j += 1;
                }
                _ => break,
            }
        }
        Ok(())
    }
}

/// The name of an entry as an OS string.
pub fn entry_os_name(e: &Entry) -> &OsStr {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(&e.name)
}
