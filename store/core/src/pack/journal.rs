//! The pack journal: which sealed pack files are not yet committed, and which ones gc has
//! retired. Nothing deletes a pack file unless this journal proves it dead (ARCHITECTURE.md invariant 13):
//!
//! - `packs/uncommitted/<pack id>` (empty) is created, and its directory fsynced, before a
//!   sealed pack is renamed into `packs/XX/`; it is removed after the index batch that
//!   records the pack (or after the pack was discarded). Recovery deletes a pack only when
//!   it has this marker and the index does not know the pack.
//! - `packs/retired/<pack id>` holds the time (ns since the epoch, decimal) of the gc commit
//!   that dropped the pack from the index. The file is deleted once the grace period has
//!   passed, so readers that started before that gc (restore, mount, NFS, du, check) finish.
//!
//! Markers are written before the change they describe and removed after it, so a crash
//! leaves at most a marker without its change, which recovery recognises and removes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::storage::PackStorage;
use xstore_chunker::ChunkId;
use xstore_format::pack::PackId;

fn uncommitted_dir(packs_dir: &Path) -> PathBuf {
    crate::layout::uncommitted(packs_dir)
}

fn retired_dir(packs_dir: &Path) -> PathBuf {
    crate::layout::retired(packs_dir)
}

fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).at(dir)?;
        if let Some(parent) = dir.parent() {
            fsutil::sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Records `id` as a pack of this writer that no commit references yet. Durable on return.
pub(crate) fn mark_uncommitted(packs_dir: &Path, id: &PackId) -> Result<()> {
    let dir = uncommitted_dir(packs_dir);
    ensure_dir(&dir)?;
    let path = dir.join(id.to_string());
    fs::File::create(&path).at(&path)?;
    fsutil::sync_dir(&dir)
}

/// Removes the uncommitted markers of `ids` (their packs were committed or deleted).
pub(crate) fn clear_uncommitted(packs_dir: &Path, ids: &[PackId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let dir = uncommitted_dir(packs_dir);
    for id in ids {
        remove_if_present(&dir.join(id.to_string()))?;
    }
    fsutil::sync_dir(&dir)
}

/// Deletes sealed packs that no commit references from the storage, then their uncommitted
/// markers. The deletions are durable (storage contract) before a marker goes: after a crash
/// a marker without its pack is harmless, a pack without its marker would look unattributed
/// and refuse the next writable open.
pub(crate) fn discard_packs(
    storage: &dyn PackStorage,
    packs_dir: &Path,
    ids: &[PackId],
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    storage.delete(ids)?;
    clear_uncommitted(packs_dir, ids)
}

/// Packs recorded as uncommitted.
pub(crate) fn uncommitted(packs_dir: &Path) -> Result<Vec<PackId>> {
    Ok(list(&uncommitted_dir(packs_dir))?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// Records that a gc commit is about to drop `ids` from the index at `now_ns`. Durable on
/// return; a marker whose pack the index still knows afterwards (gc crashed before its
/// commit) is stale and removed by recovery.
pub(crate) fn mark_retired(packs_dir: &Path, ids: &[PackId], now_ns: i64) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let dir = retired_dir(packs_dir);
    ensure_dir(&dir)?;
    for id in ids {
        let path = dir.join(id.to_string());
        let tmp = dir.join(format!(".{id}.tmp"));
        {
            use std::io::Write;
            let mut f = fs::File::create(&tmp).at(&tmp)?;
            f.write_all(format!("{now_ns}\n").as_bytes()).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        fs::rename(&tmp, &path).at(&path)?;
    }
    fsutil::sync_dir(&dir)
}

/// Retired packs and when they were retired (ns). A marker that does not parse counts as
/// retired now: its grace period starts over, which never deletes early.
pub(crate) fn retired(packs_dir: &Path, now_ns: i64) -> Result<HashMap<PackId, i64>> {
    let mut out = HashMap::new();
    for (id, path) in list(&retired_dir(packs_dir))? {
        let when = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(now_ns);
        out.insert(id, when);
    }
    Ok(out)
}

/// Removes the retired markers of `ids` (their pack files are gone, durably, or the index
/// still knows them).
pub(crate) fn clear_retired(packs_dir: &Path, ids: &[PackId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let dir = retired_dir(packs_dir);
    for id in ids {
        remove_if_present(&dir.join(id.to_string()))?;
    }
    fsutil::sync_dir(&dir)
}

/// Removes temporaries of interrupted marker writes.
pub(crate) fn remove_temporaries(packs_dir: &Path) -> Result<()> {
    let dir = retired_dir(packs_dir);
    let items = match fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.at(&dir)?,
    };
    for item in items {
        let item = item.at(&dir)?;
        if item.file_name().to_string_lossy().starts_with('.') {
            remove_if_present(&item.path())?;
        }
    }
    Ok(())
}

pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

fn list(dir: &Path) -> Result<Vec<(PackId, PathBuf)>> {
    let items = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.at(dir)?,
    };
    let mut out = Vec::new();
    for item in items {
        let item = item.at(dir)?;
        let name = item.file_name();
        if let Ok(id) = name.to_string_lossy().parse::<ChunkId>() {
            out.push((id, item.path()));
        }
    }
    Ok(out)
}
