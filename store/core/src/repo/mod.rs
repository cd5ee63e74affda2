//! The repository handle: its state and paths. Opening and creating is `open.rs`, reading
//! `read.rs`, crash recovery `recovery.rs`.
//!
//! The backup-session registry (`sessions.rs`) and the snapshot copies (`copies.rs`) live
//! here, not in `txn/`, because opening a repository resyncs the copies and the handle owns
//! the session state; `txn/` uses `repo/`, never the reverse.

pub(crate) mod access;
pub(crate) mod copies;
pub(crate) mod hold;
pub mod keys;
pub(crate) mod lock;
pub(crate) mod open;
mod read;
pub(crate) mod recovery;
pub(crate) mod sessions;
pub(crate) mod settings;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use xstore_chunker::ChunkerParams;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::repo::lock::WriterLock;
use crate::storage::PackStorage;
use xstore_format::config::Config;
use xstore_format::snapshot::SnapshotId;

/// An open repository. Open it writable ([`Repository::open`], one process at a time) or
/// read-only ([`Repository::open_read_only`], any number, also while a writer runs).
pub struct Repository {
    root: PathBuf,
    config: Config,
    params: ChunkerParams,
    pub(crate) index: Index,
    /// How blobs are identified and sealed: plain (format 1) or keyed and encrypted.
    encryption: xstore_format::encryption::Encryption,
    lock: Option<WriterLock>,
    /// Where the packs are (storage/).
    storage: Arc<dyn PackStorage>,
    /// The object store's writer lease, held as long as the writer lock.
    lease: Option<crate::storage::lease::WriterLease>,
    pub(crate) write_state: Mutex<sessions::WriteState>,
    /// Bundles read lately, decoded (read.rs): a restore reads a bundle's members one after
    /// another, and decompressing the whole bundle for each would multiply the work.
    pub(crate) bundles: Mutex<read::BundleCache>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.root)
            .field("writable", &self.lock.is_some())
            .finish()
    }
}

/// The free-space reserve of a repository's filesystem: 1 % of its size, at most 256 MiB.
/// Backups and pulls stop before they would eat into it, so that `forget`, `gc` and `repair`
/// (which write a little to free a lot) can always run on a full disk.
pub fn free_space_reserve(total_bytes: u64) -> u64 {
    (total_bytes / 100).min(256 << 20)
}

impl Repository {
    /// Fails with [`crate::error::Error::ReserveReached`] when less than the
    /// [`free_space_reserve`] is free on the repository's filesystem.
    pub fn check_reserve(&self) -> crate::error::Result<()> {
        let st = rustix::fs::statvfs(self.path()).map_err(|e| crate::error::Error::Io {
            path: self.path().to_path_buf(),
            source: e.into(),
        })?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let reserve = free_space_reserve(st.f_blocks.saturating_mul(st.f_frsize));
        if free < reserve {
            return Err(crate::error::Error::ReserveReached {
                path: self.path().to_path_buf(),
                free,
                reserve,
            });
        }
        Ok(())
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.root
    }
    /// The decoded `config`.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// How this repository identifies and seals blobs (FORMAT.md §Blob ids, §Encryption).
    pub fn encryption(&self) -> &xstore_format::encryption::Encryption {
        &self.encryption
    }
    /// Whether the repository is encrypted (format 2).
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_encrypted()
    }
    /// Chunker parameters of this repository.
    pub fn chunker_params(&self) -> ChunkerParams {
        self.params
    }
    /// The object store holding the packs, `None` when they are in the repository directory.
    pub fn store_location(&self) -> Option<crate::storage::S3Location> {
        crate::storage::s3_location(&self.root).ok().flatten()
    }
    /// `Ok` unless this handle's object-store writer lease was lost (taken by another
    /// server, or run out unrenewed): then nothing may be committed or deleted through it
    /// (`withheld` names what the caller leaves undone, for the error).
    pub(crate) fn lease_still_held(&self, withheld: &'static str) -> crate::error::Result<()> {
        self.lease
            .as_ref()
            .map_or(Ok(()), |lease| lease.still_held(withheld))
    }
    /// Whether this handle holds the writer lock.
    pub fn is_writable(&self) -> bool {
        self.lock.is_some()
    }
    /// The pack storage.
    pub(crate) fn storage(&self) -> &dyn PackStorage {
        self.storage.as_ref()
    }
    /// The pack storage, shared (pack writers keep it).
    pub(crate) fn storage_arc(&self) -> Arc<dyn PackStorage> {
        self.storage.clone()
    }
    /// `packs/`: local pack files and the pack journal.
    pub(crate) fn packs_dir(&self) -> PathBuf {
        crate::layout::packs(&self.root)
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        crate::layout::packs_tmp(&self.root)
    }
    /// New packs of this repository's target size, written through its storage (a backup's,
    /// gc's, concurrent backups' shared ones).
    pub(crate) fn rolling_packs(&self) -> crate::pack::rolling::RollingPacks {
        crate::pack::rolling::RollingPacks::new(
            self.tmp_dir(),
            self.packs_dir(),
            self.storage_arc(),
            self.config().pack_size,
            self.encryption.clone(),
        )
    }
    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        crate::layout::snapshots(&self.root)
    }
    /// `snapshots/<id>.json`, the durable copy of a snapshot record.
    pub(crate) fn snapshot_copy_path(&self, id: &SnapshotId) -> PathBuf {
        crate::layout::snapshot_copy(&self.root, id)
    }

    /// Fails with [`Error::ReadOnly`] unless this handle holds the writer lock.
    pub fn require_writable(&self) -> Result<()> {
        if self.lock.is_none() {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }
}

pub(crate) use crate::error::poisoned;
pub(crate) use open::{config_fingerprint, config_mismatch, lease_holder, CONFIG_KEY};
pub use read::Node;
pub(crate) use read::{check_file_chunk, is_live_data};
