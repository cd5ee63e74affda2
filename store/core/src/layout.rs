//! Every path of a repository, written once (FORMAT.md §Repository layout). Nothing else in
//! the crate joins a repository-relative name; the object-store backend maps these names to
//! keys.
//!
//! ```text
//! config                     repository identity and chunker parameters
//! index/                     RocksDB: blob locations, packs, snapshots, hosts
//! index.new/                 an index being rebuilt by `repair index` (index.new/REBUILT
//!                            when complete)
//! index.old.<ns>/            an index `repair index` replaced, kept for the gc grace period
//! packs/XX/<id>.pack         sealed packs
//! packs/tmp/                 packs being written
//! packs/uncommitted/<id>     journal: sealed, not yet committed
//! packs/retired/<id>         journal: dead since gc's commit at the time inside
//! snapshots/<id>.json        copies of the snapshot records
//! locks/writer               the writer lock
//! locks/snapshot-copies-stale  the copies may lag the index
//! gc-hold.json               packs `repair index` could not attribute
//! retention.json             tier schedules and gc settings
//! pulls/<host>.json          the last pull of each host
//! store.toml                 an object store holding the packs and config (absent: local)
//! keys.json                  key slots of an encrypted repository (also in the bucket)
//! ```

use std::path::{Path, PathBuf};

use xstore_chunker::ChunkId;
use xstore_format::snapshot::SnapshotId;

/// `config`.
pub fn config(root: &Path) -> PathBuf {
    root.join("config")
}
/// `index/`.
pub fn index(root: &Path) -> PathBuf {
    root.join("index")
}
/// `index.new/`.
pub fn index_new(root: &Path) -> PathBuf {
    root.join("index.new")
}
/// `CURRENT` inside an index directory: RocksDB's pointer to its manifest, present once the
/// database exists.
pub fn index_current(index_dir: &Path) -> PathBuf {
    index_dir.join("CURRENT")
}
/// `REBUILT` inside `index.new/`: written last by `repair index`, so a rebuilt index is
/// swapped in only when complete.
pub fn rebuilt_marker(index_dir: &Path) -> PathBuf {
    index_dir.join("REBUILT")
}
/// Name prefix of `index.old.<ns>/`.
pub const REPLACED_INDEX_PREFIX: &str = "index.old.";
/// `index.old.<ns>/`.
pub fn index_replaced(root: &Path, ns: i64) -> PathBuf {
    root.join(format!("{REPLACED_INDEX_PREFIX}{ns}"))
}
/// `packs/`.
pub fn packs(root: &Path) -> PathBuf {
    root.join("packs")
}
/// `cache/packs/`: the local copy of an object store's metadata packs (storage/pack_cache.rs).
pub fn pack_cache(root: &Path) -> PathBuf {
    root.join("cache").join("packs")
}

/// `packs/tmp/`.
pub fn packs_tmp(root: &Path) -> PathBuf {
    packs(root).join("tmp")
}
/// `packs/XX/<hex>.pack`, under the packs directory `packs_dir`.
pub fn pack_file(packs_dir: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_string();
    packs_dir
        .join(hex.get(..2).unwrap_or("00"))
        .join(format!("{hex}.pack"))
}
/// `packs/uncommitted/`, under the packs directory.
pub fn uncommitted(packs_dir: &Path) -> PathBuf {
    packs_dir.join("uncommitted")
}
/// `packs/retired/`, under the packs directory.
pub fn retired(packs_dir: &Path) -> PathBuf {
    packs_dir.join("retired")
}
/// `snapshots/`.
pub fn snapshots(root: &Path) -> PathBuf {
    root.join("snapshots")
}
/// `snapshots/<id>.json`.
pub fn snapshot_copy(root: &Path, id: &SnapshotId) -> PathBuf {
    snapshots(root).join(format!("{id}.json"))
}
/// `locks/`.
pub fn locks(root: &Path) -> PathBuf {
    root.join("locks")
}
/// `locks/writer`, under the locks directory.
pub fn writer_lock(locks_dir: &Path) -> PathBuf {
    locks_dir.join("writer")
}
/// `locks/snapshot-copies-stale`.
pub fn copies_stale(root: &Path) -> PathBuf {
    locks(root).join("snapshot-copies-stale")
}
/// `gc-hold.json`.
pub fn gc_hold(root: &Path) -> PathBuf {
    root.join("gc-hold.json")
}
/// `retention.json`.
pub fn retention(root: &Path) -> PathBuf {
    root.join("retention.json")
}
/// `pulls/`.
pub fn pulls(root: &Path) -> PathBuf {
    root.join("pulls")
}
/// `pulls/<host>.json`.
pub fn pull_record(root: &Path, host: &str) -> PathBuf {
    pulls(root).join(format!("{host}.json"))
}
/// `runs/`: the last run of each maintenance job.
pub fn runs(root: &Path) -> PathBuf {
    root.join("runs")
}
/// `runs/<job>.json`.
pub fn run_record(root: &Path, job: &str) -> PathBuf {
    runs(root).join(format!("{job}.json"))
}
/// `sync-status.json`: the last successful sync's source and per-host lag (FORMAT.md §Sync
/// status).
pub fn sync_status(root: &Path) -> PathBuf {
    root.join("sync-status.json")
}
/// `sources/`: the maps of bucket sources a sync reads (FORMAT.md §Bucket sources).
pub fn sync_sources(root: &Path) -> PathBuf {
    root.join("sources")
}
/// `access.toml`.
pub fn access(root: &Path) -> PathBuf {
    root.join("access.toml")
}
/// `keys.json`'s name, here and in the bucket.
pub const KEY_SLOTS: &str = "keys.json";
/// `keys.json`: the key slots of an encrypted repository.
pub fn key_slots(root: &Path) -> PathBuf {
    root.join(KEY_SLOTS)
}
/// `store.toml`.
pub fn store_file(root: &Path) -> PathBuf {
    root.join("store.toml")
}
/// Directories `init` creates.
pub fn init_dirs(root: &Path) -> [PathBuf; 4] {
    [packs_tmp(root), snapshots(root), locks(root), index(root)]
}
