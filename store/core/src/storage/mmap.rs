//! The one place that maps files into memory (the only `unsafe` in the workspace).

#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{IoContext, Result};

/// Maps a sealed pack file read-only.
///
/// Callers only pass pack files: they are written under a temporary name, fsynced and then
/// renamed into place, and are never modified or truncated afterwards (reclaim writes a new pack
/// and deletes the old file, which keeps existing mappings valid on POSIX systems). Source files
/// being backed up are never mapped: a concurrent truncate (logrotate's copytruncate) would turn
/// a read of the mapping into SIGBUS.
pub(crate) fn map_sealed_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).at(path)?;
    // SAFETY: the file is an immutable, sealed pack (see above), so the mapped bytes cannot
    // change or shrink underneath the returned slice for as long as the mapping lives.
    let map = unsafe { Mmap::map(&file) }.at(path)?;
    Ok(map)
}
