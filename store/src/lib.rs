//! # xstore
//!
//! A content-addressed, deduplicating snapshot store for fleets of hosts.
//!
//! Files are cut into content-defined chunks ([`xstore_chunker`], FastCDC v2020), each chunk
//! is identified by the BLAKE3 hash of its bytes, compressed with zstd and appended to pack
//! files. Directories become tree blobs, forming a Merkle DAG: an unchanged directory is the
//! same blob in every snapshot. A RocksDB index maps blob ids to pack locations and reference
//! counts; a snapshot record names a host, its paths and its root tree. Everything a snapshot
//! references is made durable before the single atomic index write that makes it visible.
//!
//! The byte layout is specified in `FORMAT.md`, the code map and invariants in
//! `ARCHITECTURE.md` (both at the repository root).
//!
//! ## Example: back up a directory and restore it
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use xstore::{BackupOptions, InitOptions, LocalSource, Repository, RestoreOptions};
//!
//! let work = tempfile::tempdir()?;
//! let data = work.path().join("data");
//! std::fs::create_dir(&data)?;
//! std::fs::write(data.join("hello.txt"), b"hello, world\n")?;
//!
//! let repo = Repository::init(&work.path().join("repo"), &InitOptions::default())?;
//! let opts = BackupOptions {
//!     host: "web1".into(),
//!     paths: vec![data.clone()],
//!     ..BackupOptions::default()
//! };
//! let snapshot = repo.backup(&LocalSource, &opts)?;
//! assert!(snapshot.is_complete());
//!
//! let target = work.path().join("restored");
//! let summary = repo.restore(&snapshot, &target, &RestoreOptions::default())?;
//! assert!(summary.errors.is_empty());
//! // Backups keep absolute paths: the directory comes back under its full path.
//! let restored = target.join(data.strip_prefix("/")?).join("hello.txt");
//! assert_eq!(std::fs::read(restored)?, b"hello, world\n");
//! # Ok(()) }
//! ```
//!
//! Read-only handles ([`Repository::open_read_only`]) work while a writer holds the lock.

#![warn(missing_docs)]

mod backup;
mod browse;
mod check;
mod error;
mod fsutil;
pub mod fsview;
mod gc;
mod index;
pub mod inventory;
mod journal;
mod lock;
pub mod metrics;
mod mmap;
pub mod monitor;
#[cfg(feature = "fuse")]
pub mod mount;
mod mutation;
#[cfg(feature = "nfs")]
pub mod nfs;
mod pack;
mod pull;
pub mod remote;
mod repair;
mod repo;
mod restore;
mod retain;
mod source;
mod usage;

use std::sync::atomic::AtomicU64;

pub use xstore_chunker::{self as chunker, ChunkId, ChunkerParams};

pub use backup::{BackupOptions, ParentChoice, TierChoice, MAX_INFLIGHT_CHUNKS};
pub use browse::{entry_os_name, Change, DiffItem};
pub use check::{CheckOptions, CheckReport, Problem, Stats};
pub use error::{Error, Result};
pub use gc::{GcAction, GcOptions, GcPack, GcReport, MERGE_SMALL_PACKS, SMALL_PACK_BYTES};
pub use inventory::{Account, HostSpec, Inventory, InventoryError};
pub use lock::local_hostname;
pub use mutation::Released;
pub use pull::{ssh_command, PullOptions, PullOutcome, PullReport, DEFAULT_PULL_THREADS};
pub use remote::{AgentInfo, RemoteError, RemoteSource};
pub use repair::{pack_files, RepairReport};
pub use repo::{now_ns, Node, Repository};
pub use restore::{RestoreOptions, RestoreSummary};
pub use retain::{
    Applied, RetentionSettings, DEFAULT_GC_GRACE_SECONDS, DEFAULT_GC_MAX_DEAD_PERCENT,
    RETENTION_VERSION,
};
pub use source::{FetchedChunk, LocalSource, Source, SourceFile};
pub use usage::{SnapshotUsage, Usage};
pub use xstore_format::bytes::to_hex;
pub use xstore_format::config::{Config, InitOptions};
pub use xstore_format::meta::{EntryMeta, SourceKind};
pub use xstore_format::pack::BlobKind;
pub use xstore_format::records::{BlobLoc, HostRecord, PackRecord};
pub use xstore_format::snapshot::{PathError, Snapshot, SnapshotId, SnapshotStats, SnapshotStatus};
pub use xstore_format::tree::{ChunkRef, Content, Entry, EntryKind, Tree};
pub use xstore_format::DecodeError;
pub use xstore_retention as retention;

/// Live counters that long operations update, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files done.
    pub files: AtomicU64,
    /// Bytes done (read for backup, written for restore).
    pub bytes: AtomicU64,
    /// Bytes expected in total, when known (restore).
    pub total_bytes: AtomicU64,
    /// Paths that failed so far.
    pub errors: AtomicU64,
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Test hook: when the environment variable `XSTORE_FAIL_IO` equals `name`, the write step
/// named here fails with ENOSPC (as a full disk would), to test what each step leaves behind.
pub(crate) fn fail_io(name: &str) -> Result<()> {
    if std::env::var_os("XSTORE_FAIL_IO").is_some_and(|v| v == name) {
        return Err(Error::Io {
            path: std::path::PathBuf::from(format!("<{name}>")),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
    }
    Ok(())
}

/// Test hook: when the environment variable `XSTORE_FAILPOINT` equals `name`, the process
/// aborts here (as a crash would). Used by the crash-consistency tests.
pub(crate) fn failpoint(name: &str) {
    if std::env::var_os("XSTORE_FAILPOINT").is_some_and(|v| v == name) {
        std::process::abort();
    }
}
