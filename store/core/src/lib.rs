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
//! use xstore::{BackupOptions, HostName, InitOptions, LocalSource, Repository, RestoreOptions};
//!
//! let work = tempfile::tempdir()?;
//! let data = work.path().join("data");
//! std::fs::create_dir(&data)?;
//! std::fs::write(data.join("hello.txt"), b"hello, world\n")?;
//!
//! let repo = Repository::init(&work.path().join("repo"), &InitOptions::default())?;
//! // A host name is checked once, here; the library takes it typed.
//! let opts = BackupOptions::new(HostName::parse("web1")?, vec![data.clone()]);
//! let snapshot = repo.backup(&LocalSource, &opts)?;
//! assert!(snapshot.is_complete());
//!
//! let target = work.path().join("restored");
//! let plan = repo.plan_restore(&snapshot, &target, &RestoreOptions::default())?;
//! let summary = repo.restore(&plan)?;
//! assert!(summary.errors.is_empty());
//! // Backups keep absolute paths: the directory comes back under its full path.
//! let restored = target.join(data.strip_prefix("/")?).join("hello.txt");
//! assert_eq!(std::fs::read(restored)?, b"hello, world\n");
//! # Ok(()) }
//! ```
//!
//! Read-only handles ([`Repository::open_read_only`]) work while a writer holds the lock.

#![warn(missing_docs)]

#[cfg(feature = "bench-internals")]
pub mod bench_internals;
mod clock;
mod commands;
mod error;
mod failpoint;
pub mod fsutil;
mod idmap;
mod index;
pub mod layout;
mod pack;
mod progress;
mod repo;
mod source;
mod storage;
pub mod text;
mod txn;

pub use xstore_chunker::{self as chunker, ChunkId, ChunkerParams};

pub use clock::now_ns;
pub use commands::attach::S3Init;
pub use commands::backup::{
    BackupOptions, ParentChoice, StoreBudget, MAX_DEPTH, MAX_INFLIGHT_CHUNKS, MAX_PATH_BYTES,
};
pub use commands::check::{CheckOptions, CheckReport, KindStats, Problem, Stats};
pub use commands::compact::{CompactOptions, CompactReport, DEFAULT_COMPACT_LEVEL};
pub use commands::diff::{entry_os_name, Change, DiffItem};
pub use commands::dump::{DumpFormat, DumpRequest, DumpSummary};
pub use commands::find::{
    AbsentSince, FindOptions, FindReport, FoundPath, FoundVersion, VersionChange,
};
pub use commands::gc::{
    GcAction, GcOptions, GcPack, GcPlan, GcReport, MERGE_SMALL_PACKS, SMALL_PACK_BYTES,
};
pub use commands::repair::{pack_files, RepairReport};
pub use commands::restore::{
    Overwrite, PlannedAction, PlannedChange, RestoreOptions, RestorePlan, RestoreSummary, Withheld,
};
pub use commands::retention::{tier_positions, Applied, TierChoice};
pub use commands::runs::RunRecord;
pub use commands::serve::ServeSummary;
pub use commands::shared_ingest::{SharedIngest, SHARED_WAIT};
pub use commands::sync::{
    BucketRefresh, BucketSource, HostSync, SyncCopy, SyncLabels, SyncOptions, SyncPlan, SyncReport,
    SyncSource, SyncStatus, DEFAULT_CHECKPOINT_BYTES, SYNC_ID_PROBE,
};
pub use commands::usage::{FleetUsage, SnapshotUsage, Usage};
pub use commands::verify::{
    BrokenPath, DamagedBlob, VerifyOptions, VerifyReport, VerifyRun, VerifyStatus, MAX_BROKEN_PATHS,
};
pub use error::RemoteError;
pub use error::{ssh_detail, BackupError, Error, GcError, RestoreError, Result, SyncError};
pub use fsutil::local_hostname;
pub use progress::Progress;
pub use repo::access::{PermissionFix, RepoAccess};
pub use repo::keys::{self, KeyAccess, SlotChange, SlotChanged};
pub use repo::open::NewKeyFile;
pub use repo::settings::{
    InvalidSettings, RetentionSettings, DEFAULT_GC_GRACE_SECONDS, DEFAULT_GC_MAX_DEAD_PERCENT,
    RETENTION_VERSION,
};
pub use repo::{free_space_reserve, Node, Repository};
pub use source::remote::{
    AgentInfo, RemoteSource, SessionTerms, MAX_HELD_LISTING_BYTES, MAX_LISTING_BYTES,
    WALK_ENTRY_BYTES,
};
pub use source::{FetchedChunk, LocalSource, OpenHint, RootedSource, SentForm, Source, SourceFile};
pub use storage::S3Location;
pub use text::format_utc;
pub use txn::Released;
pub use xstore_format::bytes::to_hex;
pub use xstore_format::config::{Config, InitOptions};
pub use xstore_format::encryption::Encryption;
pub use xstore_format::host::HostName;
pub use xstore_format::meta::EntryKind;
pub use xstore_format::meta::{Attrs, EntryMeta, SourceKind};
pub use xstore_format::pack::BlobKind;
pub use xstore_format::records::{BlobLoc, HostRecord, PackRecord};
pub use xstore_format::snapshot::{PathError, Snapshot, SnapshotId, SnapshotStats, SnapshotStatus};
pub use xstore_format::tree::{ChunkRef, Content, Entry, Tree};
pub use xstore_format::DecodeError;
pub use xstore_retention as retention;
