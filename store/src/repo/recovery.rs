//! Opening after a crash: the index swap of an interrupted `repair index` is completed or
//! discarded, and replaced indexes are found for gc (FORMAT.md §Recovery).

use std::fs;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::fsutil;

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
        let old = crate::layout::index_replaced(root, crate::now_ns());
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
