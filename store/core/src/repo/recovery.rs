//! Opening after a crash: the index swap of an interrupted `repair index` is completed or
//! discarded, and replaced indexes are found for gc (FORMAT.md §Recovery).

use std::fs;
use std::path::Path;

use super::{copies, Repository};
use crate::clock::now_ns;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use xstore_format::pack::PackId;

/// The index a reader should open: `index`, or during a swap interrupted between its two
/// renames (only the next writer completes it) the complete rebuilt one in `index.new`.
pub(crate) fn readable_index_dir(root: &Path) -> std::path::PathBuf {
    let cur = crate::layout::index(root);
    let new = crate::layout::index_new(root);
    if !crate::layout::index_current(&cur).is_file()
        && crate::layout::rebuilt_marker(&new).is_file()
    {
        return new;
    }
    cur
}

/// Completes (or discards) an index swap interrupted by a crash.
pub(crate) fn finish_index_swap(root: &Path) -> Result<()> {
    let new = crate::layout::index_new(root);
    if !new.exists() {
        return Ok(());
    }
    if !crate::layout::rebuilt_marker(&new).exists() {
        fs::remove_dir_all(&new).at(&new)?;
        return Ok(());
    }
    let cur = crate::layout::index(root);
    if cur.exists() {
        // Kept for the gc grace period, not deleted: a reader that opened it before the swap
        // opens its table files lazily. gc deletes it later (`replaced_indexes`).
        let old = crate::layout::index_replaced(root, crate::clock::now_ns());
        fs::rename(&cur, &old).at(&cur)?;
    }
    fs::rename(&new, &cur).at(&new)?;
    fs::remove_file(crate::layout::rebuilt_marker(&cur)).at(&cur)?;
    fsutil::sync_dir(root)
}

/// Indexes replaced by `repair index` and when (ns); `index.old` of earlier builds, which
/// deleted it at once, counts as replaced long ago.
pub(crate) fn replaced_indexes(root: &Path) -> Result<Vec<(std::path::PathBuf, i64)>> {
    let mut out = Vec::new();
    for item in fs::read_dir(root).at(root)? {
        let item = item.at(root)?;
        let name = item.file_name().to_string_lossy().into_owned();
        let when = if name == "index.old" {
            Some(0)
        } else {
            name.strip_prefix(crate::layout::REPLACED_INDEX_PREFIX)
                .and_then(|t| t.parse::<i64>().ok())
        };
        if let Some(when) = when {
            out.push((item.path(), when));
        }
    }
    Ok(out)
}

impl Repository {
    /// Crash recovery (writer only), deleting only what is proven dead (journal.rs):
    /// temporary pack files, and sealed packs this or an earlier writer recorded as its own
    /// uncommitted ones that the index does not know. A pack file that neither the index
    /// nor the journal accounts for means the index is older than the packs (lost, emptied,
    /// restored from a copy): the open is refused and nothing is touched.
    pub(super) fn recover(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).at(&tmp)?;
        for item in fs::read_dir(&tmp).at(&tmp)? {
            let item = item.at(&tmp)?;
            let _ = fs::remove_file(item.path());
        }
        let packs = self.packs_dir();
        let known: std::collections::HashSet<PackId> =
            self.index.packs()?.into_iter().map(|(id, _)| id).collect();
        let uncommitted: std::collections::HashSet<PackId> =
            crate::pack::journal::uncommitted(&packs)?
                .into_iter()
                .collect();
        let retired = crate::pack::journal::retired(&packs, now_ns())?;
        let on_disk = self.storage().list()?;
        let unattributed: Vec<&PackId> = on_disk
            .iter()
            .map(|p| &p.id)
            .filter(|id| {
                !known.contains(id) && !uncommitted.contains(id) && !retired.contains_key(id)
            })
            .collect();
        if let Some(first) = unattributed.first() {
            return Err(Error::IndexNeedsRepair {
                path: crate::layout::index(&self.root),
                reason: format!(
                    "the index does not know {} of {} pack files (for example {first}): it is \
                     missing, empty or older than the packs",
                    unattributed.len(),
                    on_disk.len()
                ),
            });
        }
        let (committed, leftovers): (Vec<PackId>, Vec<PackId>) =
            uncommitted.iter().partition(|id| known.contains(id));
        crate::pack::journal::discard_packs(self.storage(), &packs, &leftovers)?;
        // Committed: only the marker's removal was lost.
        crate::pack::journal::clear_uncommitted(&packs, &committed)?;
        if !leftovers.is_empty() {
            tracing::info!(
                removed = leftovers.len(),
                "recovery removed uncommitted pack files"
            );
        }
        // A retired marker of a pack the index still records: gc crashed before its commit.
        let stale: Vec<PackId> = retired
            .keys()
            .filter(|id| known.contains(id))
            .copied()
            .collect();
        crate::pack::journal::clear_retired(&packs, &stale)?;
        crate::pack::journal::remove_temporaries(&packs)?;
        // Temporary files of a snapshot copy or pull record interrupted by a crash
        // (fsutil::write_atomic).
        for dir in [self.snapshots_dir(), crate::layout::pulls(&self.root)] {
            let items = match fs::read_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.at(&dir)?,
            };
            for item in items {
                let item = item.at(&dir)?;
                let name = item.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp") {
                    fs::remove_file(item.path()).at(item.path())?;
                }
            }
        }
        if copies::stale_marker(self).exists() {
            copies::resync_snapshot_copies(self)?;
        }
        Ok(())
    }
}
