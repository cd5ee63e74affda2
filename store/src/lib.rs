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
//! # #[cfg(not(feature = "index"))] fn main() {}
//! # #[cfg(feature = "index")]
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
// Without the index feature only the decoders are built (for fuzzing); writers go unused.
#![cfg_attr(not(feature = "index"), allow(dead_code, unused_imports))]

pub mod agent;
#[cfg(feature = "index")]
mod backup;
#[cfg(feature = "index")]
mod browse;
mod bytes;
#[cfg(feature = "index")]
mod check;
mod codec;
pub mod config;
mod error;
mod fsutil;
#[cfg(feature = "index")]
pub mod fsview;
#[cfg(feature = "index")]
mod gc;
#[cfg(feature = "index")]
mod index;
pub mod inventory;
mod journal;
#[cfg(feature = "index")]
mod lock;
#[cfg(feature = "index")]
pub mod metrics;
#[cfg(feature = "index")]
mod mmap;
#[cfg(feature = "index")]
pub mod monitor;
#[cfg(feature = "fuse")]
pub mod mount;
#[cfg(feature = "index")]
mod mutation;
#[cfg(feature = "nfs")]
pub mod nfs;
mod pack;
pub mod protocol;
#[cfg(feature = "index")]
mod pull;
mod records;
pub mod remote;
#[cfg(feature = "index")]
mod repair;
#[cfg(feature = "index")]
mod repo;
#[cfg(feature = "index")]
mod restore;
#[cfg(feature = "index")]
mod retain;
pub mod snapshot;
mod source;
pub mod tree;
#[cfg(feature = "index")]
mod usage;

use std::sync::atomic::AtomicU64;

pub use xstore_chunker::{self as chunker, ChunkId, ChunkerParams};

pub use agent::{AgentConfig, AgentError};
#[cfg(feature = "index")]
pub use backup::{BackupOptions, ParentChoice, TierChoice, MAX_INFLIGHT_CHUNKS};
#[cfg(feature = "index")]
pub use browse::{entry_os_name, Change, DiffItem};
pub use bytes::to_hex;
#[cfg(feature = "index")]
pub use check::{CheckOptions, CheckReport, Problem, Stats};
pub use config::{Config, InitOptions};
pub use error::{DecodeError, Error, Result};
#[cfg(feature = "index")]
pub use gc::{GcAction, GcOptions, GcPack, GcReport, MERGE_SMALL_PACKS, SMALL_PACK_BYTES};
pub use inventory::{Account, HostSpec, Inventory, InventoryError};
#[cfg(feature = "index")]
pub use lock::local_hostname;
#[cfg(feature = "index")]
pub use mutation::Released;
pub use pack::BlobKind;
#[cfg(feature = "index")]
pub use pull::{ssh_command, PullOptions, PullOutcome, PullReport, DEFAULT_PULL_THREADS};
pub use records::{BlobLoc, HostRecord, PackRecord};
pub use remote::{AgentInfo, RemoteError, RemoteSource};
#[cfg(feature = "index")]
pub use repair::{pack_files, RepairReport};
#[cfg(feature = "index")]
pub use repo::{now_ns, Node, Repository};
#[cfg(feature = "index")]
pub use restore::{RestoreOptions, RestoreSummary};
#[cfg(feature = "index")]
pub use retain::{
    Applied, RetentionSettings, DEFAULT_GC_GRACE_SECONDS, DEFAULT_GC_MAX_DEAD_PERCENT,
    RETENTION_VERSION,
};
pub use snapshot::{PathError, Snapshot, SnapshotId, SnapshotStats, SnapshotStatus};
pub use source::{EntryMeta, FetchedChunk, LocalSource, Source, SourceFile, SourceKind};
pub use tree::{ChunkRef, Content, Entry, EntryKind, Tree};
#[cfg(feature = "index")]
pub use usage::{SnapshotUsage, Usage};
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

/// Decoders exposed for fuzzing and tools: each takes untrusted bytes and returns a typed error.
pub mod decode {
    use crate::error::DecodeError;

    /// Decodes a `config` file.
    pub fn config(bytes: &[u8]) -> Result<crate::Config, DecodeError> {
        crate::Config::decode(bytes)
    }
    /// Decodes a tree blob.
    pub fn tree(bytes: &[u8]) -> Result<crate::Tree, DecodeError> {
        crate::Tree::decode(bytes)
    }
    /// Decodes a chunk-list blob.
    pub fn chunk_list(bytes: &[u8]) -> Result<Vec<crate::ChunkRef>, DecodeError> {
        crate::tree::decode_chunk_list(bytes)
    }
    /// Decodes a snapshot record.
    pub fn snapshot(bytes: &[u8]) -> Result<crate::Snapshot, DecodeError> {
        crate::Snapshot::decode(bytes)
    }
    /// Decodes a pack: its trailer, then every blob it lists (header and content).
    /// Returns the number of blobs that verified.
    pub fn pack(bytes: &[u8]) -> Result<usize, DecodeError> {
        let entries = crate::pack::read_trailer(bytes)?;
        let mut ok = 0;
        for e in &entries {
            crate::pack::read_blob(bytes, e)?;
            ok += 1;
        }
        Ok(ok)
    }
    /// Decodes the blob header at `offset` of a pack and returns the blob's id if it is valid.
    pub fn blob_header(bytes: &[u8], offset: u64) -> Result<crate::ChunkId, DecodeError> {
        crate::pack::decode_blob_header(bytes, offset).map(|e| e.id)
    }
    /// Decodes a stream of agent → server frames (what a pull reads from a client).
    /// Returns the number of messages.
    pub fn agent_stream(bytes: &[u8]) -> Result<usize, DecodeError> {
        frames(bytes, |body| {
            crate::protocol::AgentMsg::decode(body).map(drop)
        })
    }
    /// Decodes a stream of server → agent frames (what an agent reads). Returns the number
    /// of messages.
    pub fn server_stream(bytes: &[u8]) -> Result<usize, DecodeError> {
        frames(bytes, |body| {
            crate::protocol::ServerMsg::decode(body).map(drop)
        })
    }
    /// Decodes an agent → server stream under the `zstd-segments` transport (plain frames
    /// and pieces of one zstd stream). Returns the number of messages.
    pub fn segmented_agent_stream(bytes: &[u8]) -> Result<usize, DecodeError> {
        let invalid = |e: std::io::Error| DecodeError::Invalid {
            what: "segmented stream",
            offset: 0,
            reason: e.to_string(),
        };
        let mut reader = crate::protocol::SegmentReader::new(bytes).map_err(invalid)?;
        let mut n = 0;
        while let Some(body) = crate::protocol::read_frame(&mut reader).map_err(invalid)? {
            crate::protocol::AgentMsg::decode(&body)?;
            n += 1;
        }
        Ok(n)
    }
    fn frames(
        mut bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<(), DecodeError>,
    ) -> Result<usize, DecodeError> {
        let mut n = 0;
        loop {
            let at = bytes.len();
            match crate::protocol::read_frame(&mut bytes) {
                Ok(Some(body)) => decode(&body)?,
                Ok(None) => return Ok(n),
                Err(e) => {
                    return Err(DecodeError::Invalid {
                        what: "frame",
                        offset: at,
                        reason: e.to_string(),
                    })
                }
            }
            n += 1;
        }
    }
    /// Decodes an index blob-location value.
    pub fn blob_location(bytes: &[u8]) -> Result<crate::BlobLoc, DecodeError> {
        crate::BlobLoc::decode(bytes)
    }
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

#[cfg(feature = "index")]
/// Test hook: when the environment variable `XSTORE_FAILPOINT` equals `name`, the process
/// aborts here (as a crash would). Used by the crash-consistency tests.
pub(crate) fn failpoint(name: &str) {
    if std::env::var_os("XSTORE_FAILPOINT").is_some_and(|v| v == name) {
        std::process::abort();
    }
}
