//! `snapshots/<id>.json`: a copy of every snapshot record beside the index, for people and
//! for `repair index`. The index is the truth; while `locks/snapshot-copies-stale` exists the
//! copies may lag it, and recovery rewrites them (FORMAT.md §Snapshots).

use std::collections::HashSet;
use std::path::PathBuf;

use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::repo::Repository;

/// While this file exists the snapshot copies may lag the index; recovery resyncs them.
pub(crate) fn stale_marker(repo: &Repository) -> PathBuf {
    crate::layout::copies_stale(repo.path())
}

pub(crate) fn write_stale_marker(repo: &Repository) -> Result<()> {
    write_stale_marker_at(repo.path())
}

/// Creates the stale marker of the repository at `root` (durable), unless present.
pub(crate) fn write_stale_marker_at(root: &std::path::Path) -> Result<()> {
    let path = crate::layout::copies_stale(root);
    if path.exists() {
        return Ok(());
    }
    fsutil::write_atomic(&path, b"snapshot copies are being updated\n")
}

pub(crate) fn clear_stale_marker(repo: &Repository) -> Result<()> {
    let path = stale_marker(repo);
    std::fs::remove_file(&path).at(&path)?;
    fsutil::sync_dir(&crate::layout::locks(repo.path()))
}

/// Recovery: makes `snapshots/` equal the index's records (rewrites differing or missing
/// copies, removes copies of snapshots the index no longer has), then clears the marker.
pub(crate) fn resync_snapshot_copies(repo: &Repository) -> Result<()> {
    let dir = repo.snapshots_dir();
    // An operator may have removed the whole directory: it is only a copy.
    std::fs::create_dir_all(&dir).at(&dir)?;
    let records = repo.index.snapshots()?;
    let mut known: HashSet<PathBuf> = HashSet::new();
    for s in &records {
        let path = repo.snapshot_copy_path(&s.id);
        let want = s.encode();
        if std::fs::read(&path).ok().as_deref() != Some(&want[..]) {
            fsutil::write_atomic(&path, &want)?;
        }
        known.insert(path);
    }
    for item in std::fs::read_dir(&dir).at(&dir)? {
        let item = item.at(&dir)?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !name.starts_with('.') && !known.contains(&item.path()) {
            std::fs::remove_file(item.path()).at(item.path())?;
        }
    }
    fsutil::sync_dir(&dir)?;
    clear_stale_marker(repo)
}
