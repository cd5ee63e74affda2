//! A sequence of packs of about one target size: blobs go into the current pack, a full pack
//! is sealed and a new one started. File data and metadata (trees, chunk lists) go into
//! packs of their own: walks of the Merkle DAG (a backup's parent trees, a restore's plan,
//! check, du) then read a few dense metadata packs instead of a blob in every pack, which
//! matters most on an object store, where each read is a request. Placement is policy, not
//! format: any pack may hold any kind. Backup (from many ingest threads) and gc (copying live
//! blobs) both write through it; whatever they abandon is discarded through the journal.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{poisoned, Error, Result};
use crate::pack::{Compression, PackId, PackWriter, SealedPack};
use crate::storage::PackStorage;
use crate::ChunkId;
use xstore_format::pack::BlobKind;

/// Packs being written under `packs/tmp/` and sealed into the pack storage (every sealed one
/// carries its uncommitted marker in `packs_dir` until a commit references it).
pub(crate) struct RollingPacks {
    tmp_dir: PathBuf,
    packs_dir: PathBuf,
    storage: Arc<dyn PackStorage>,
    pack_size: u64,
    /// The open data pack and the open metadata pack.
    current: [Mutex<Option<PackWriter>>; 2],
    sealed: Mutex<Vec<SealedPack>>,
}

/// Which of the open packs a blob of `kind` goes into.
fn stream_of(kind: BlobKind) -> usize {
    usize::from(kind != BlobKind::Data)
}

impl RollingPacks {
    /// Packs of about `pack_size` bytes, written in `tmp_dir` and sealed into `storage`, their
    /// journal in `packs_dir`.
    pub(crate) fn new(
        tmp_dir: PathBuf,
        packs_dir: PathBuf,
        storage: Arc<dyn PackStorage>,
        pack_size: u64,
    ) -> Self {
        RollingPacks {
            tmp_dir,
            packs_dir,
            storage,
            pack_size,
            current: [Mutex::new(None), Mutex::new(None)],
            sealed: Mutex::new(Vec::new()),
        }
    }

    /// Appends one blob's stored form. A pack that reaches the target size is sealed outside
    /// the lock, so other threads go on writing into the next pack meanwhile.
    pub(crate) fn add(
        &self,
        id: ChunkId,
        kind: BlobKind,
        compression: Compression,
        raw_len: u32,
        stored: &[u8],
    ) -> Result<()> {
        let slot = self
            .current
            .get(stream_of(kind))
            .ok_or(Error::Internal("no pack stream for a blob kind"))?;
        let full = {
            let mut current = slot.lock().map_err(poisoned)?;
            if current.is_none() {
                *current = Some(PackWriter::create(&self.tmp_dir)?);
            }
            let w = current
                .as_mut()
                .ok_or(Error::Internal("no pack writer after creating one"))?;
            w.add(id, kind, compression, raw_len, stored)?;
            if w.len() >= self.pack_size {
                current.take()
            } else {
                None
            }
        };
        if let Some(w) = full {
            let sealed = w.seal(self.storage.as_ref(), &self.packs_dir)?;
            self.sealed.lock().map_err(poisoned)?.push(sealed);
        }
        Ok(())
    }

    /// Seals the current pack and returns every sealed pack, in order. On an error the
    /// packs sealed so far stay with `self` for [`RollingPacks::discard`].
    pub(crate) fn finish(&self) -> Result<Vec<SealedPack>> {
        for slot in &self.current {
            let last = slot.lock().map_err(poisoned)?.take();
            if let Some(w) = last {
                let sealed = w.seal(self.storage.as_ref(), &self.packs_dir)?;
                self.sealed.lock().map_err(poisoned)?.push(sealed);
            }
        }
        Ok(std::mem::take(&mut *self.sealed.lock().map_err(poisoned)?))
    }

    /// Abandons everything: the open pack's temporary file is removed, the sealed packs are
    /// deleted through the journal (they are recorded uncommitted, so nothing committed can be
    /// among them). Failures are logged: the next writer's recovery removes what is left.
    pub(crate) fn discard(&self) {
        for slot in &self.current {
            if let Ok(mut current) = slot.lock() {
                if let Some(w) = current.take() {
                    w.discard();
                }
            }
        }
        if let Ok(mut sealed) = self.sealed.lock() {
            let ids: Vec<PackId> = sealed.drain(..).map(|p| p.id).collect();
            if let Err(e) =
                crate::pack::journal::discard_packs(self.storage.as_ref(), &self.packs_dir, &ids)
            {
                tracing::warn!(error = %e,
                    "could not remove uncommitted packs; the next writer's recovery will");
            }
        }
    }
}
