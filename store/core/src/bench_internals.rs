//! The index and its commit path for benchmarks (feature `bench-internals`): the real `Index`
//! (its RocksDB options, column families, caches) and synced `IndexBatch` commits, as backups
//! use them, without a repository around them; and the measuring helpers the bench binaries
//! share. Not a stable interface.

use std::path::Path;

use crate::error::Result;
use crate::index::{BlobLoc, Index};
use xstore_chunker::ChunkId;

/// An index opened for a benchmark.
pub struct BenchIndex(Index);

impl BenchIndex {
    /// Creates an empty index at `path`.
    pub fn create(path: &Path) -> Result<Self> {
        Index::create(path).map(BenchIndex)
    }

    /// Opens an existing index, writable or read-only.
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        Index::open(path, read_only).map(BenchIndex)
    }

    /// Commits blob records as one synced batch (a backup commit's write).
    pub fn commit_blobs(&self, blobs: &[(ChunkId, BlobLoc)]) -> Result<()> {
        let mut batch = self.0.batch();
        for (id, loc) in blobs {
            batch.put_blob(id, loc)?;
        }
        batch.commit()
    }

    /// One point lookup, as a backup asks "is this chunk new?".
    pub fn blob(&self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        self.0.blob(id)
    }

    /// A batched lookup, as a pull asks which of an agent's chunks are missing.
    pub fn blobs(&self, ids: &[ChunkId]) -> Result<Vec<Option<BlobLoc>>> {
        self.0.blobs(ids)
    }

    /// Visits every blob record (what `check`'s refcount audit and gc's scans do).
    pub fn for_each_blob(&self, mut f: impl FnMut(ChunkId, BlobLoc)) -> Result<u64> {
        let mut n = 0;
        self.0.for_each_blob(|id, loc| {
            n += 1;
            f(id, loc);
            Ok(())
        })?;
        Ok(n)
    }

    /// Compacts the blob records fully, as an index left idle ends up.
    pub fn compact(&self) -> Result<()> {
        self.0.compact_blobs()
    }

    /// Writes the memtables to table files (as a writer's close does).
    pub fn flush(&self) -> Result<()> {
        self.0.flush()
    }
}

/// Peak resident set size of this process so far (`VmHWM`), MiB; 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes of the files under `dir` (unreadable entries count 0).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|items| {
            items
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
