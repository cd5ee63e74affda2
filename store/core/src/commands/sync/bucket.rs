//! A sync source that is only a bucket: the packs, `config` and `keys.json` of a primary
//! whose repository directory (index, journal) this replica cannot see, read with
//! credentials that may only read.
//!
//! The replica keeps its own map of the bucket in a local directory (FORMAT.md §Bucket
//! sources): an index of every blob and pack (from the pack trailers) and of the newest
//! revision of every snapshot record found in the packs. Each open brings it up to date
//! incrementally: only packs not seen before are read (a trailer and the record blobs, by
//! range), packs gone from the bucket are dropped with the blobs located in them, and a
//! snapshot whose record blob is gone is dropped (the primary expired it and its gc
//! collected the record). Nothing is ever written to the bucket and no lease is taken.
//!
//! What the packs alone cannot say: whether the primary still keeps a snapshot. A snapshot
//! the primary expired is listed until its gc collects the record; if its data was partly
//! collected already, the sync sets it aside ([`SyncSource::set_aside`]) instead of failing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use xstore_chunker::ChunkId;
use xstore_format::encryption::Encryption;
use xstore_format::pack::{BlobKind, PackId};
use xstore_format::records::PackRecord;
use xstore_format::snapshot::{Snapshot, SnapshotId};

use super::values::SyncSource;
use crate::commands::repair::{for_each_pack_group, offer};
use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::repo::keys::KeyAccess;
use crate::repo::lock::WriterLock;
use crate::repo::Repository;
use crate::storage::{PackInfo, PackStorage, S3Location};

/// Index keys (default column family) of the bucket map: `set-aside/<snapshot id>` → why.
/// A snapshot set aside (it misses a blob) is not listed again.
const SET_ASIDE_PREFIX: &[u8] = b"set-aside/";

/// What bringing the bucket map up to date did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BucketRefresh {
    /// The map was started afresh (first use, or the bucket's `config` changed).
    pub rebuilt: bool,
    /// Pack objects in the bucket.
    pub packs: u64,
    /// Packs read (new since the last refresh).
    pub packs_read: u64,
    /// Packs gone from the bucket since the last refresh.
    pub packs_gone: u64,
    /// Snapshot records listed.
    pub snapshots: u64,
    /// Snapshots dropped from the map because their record blob left the bucket.
    pub snapshots_gone: u64,
    /// Record blobs that could not be read or decoded, with the reason.
    pub skipped: Vec<String>,
}

/// A primary's bucket, read-only, as a [`SyncSource`].
pub struct BucketSource {
    /// A handle without a writer lock (nothing can be written through it) over the map.
    repo: Repository,
    location: S3Location,
    refresh: BucketRefresh,
    /// Held while the map is in use: one sync per map.
    _lock: WriterLock,
}

impl std::fmt::Debug for BucketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketSource")
            .field("location", &self.location.url())
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl BucketSource {
    /// The directory of the map of `location` kept beside a replica at `replica_root`:
    /// `sources/<first 32 hex digits of BLAKE3 of the endpoint, bucket and prefix>`.
    pub fn map_dir(replica_root: &Path, location: &S3Location) -> PathBuf {
        let name = blake3::hash(
            format!(
                "{}\n{}\n{}",
                location.endpoint, location.bucket, location.prefix
            )
            .as_bytes(),
        )
        .to_hex();
        crate::layout::sync_sources(replica_root).join(&name[..32])
    }

    /// Opens the repository in the bucket of `location` as a sync source, its map kept in
    /// `map_dir` (created private if missing; see [`BucketSource::map_dir`]) and brought up
    /// to date. An encrypted repository is unlocked with `keys` against the bucket's
    /// `keys.json`. Refuses a prefix without a `config`, and a map another sync is using.
    pub fn open(map_dir: &Path, location: &S3Location, keys: &KeyAccess) -> Result<BucketSource> {
        crate::fsutil::create_private_dir_all(map_dir)?;
        let locks = crate::layout::locks(map_dir);
        crate::fsutil::create_private_dir_all(&locks)?;
        let lock = WriterLock::acquire(&locks)?;
        let origin = PathBuf::from(location.url());
        let plain = crate::storage::open_s3(location, None, &Encryption::Plain)?;
        let config_bytes = plain
            .get_file("config")?
            .ok_or_else(|| Error::NotARepository {
                path: origin.join("config"),
                reason: "no repository under this prefix (no config object)".into(),
            })?;
        let slots = plain.get_file(crate::layout::KEY_SLOTS)?;
        drop(plain);
        let (config, encryption) =
            crate::repo::keys::remote_encryption(&origin, &config_bytes, slots.as_deref(), keys)?;
        let params = config.chunker_params().map_err(|source| Error::Corrupt {
            path: origin.join("config"),
            source,
        })?;
        let storage: Arc<dyn PackStorage> = Arc::new(crate::storage::open_s3(
            location,
            Some(map_dir),
            &encryption,
        )?);
        let fingerprint = crate::repo::config_fingerprint(&config);
        let (index, rebuilt) = open_map_index(map_dir, &fingerprint)?;
        let mut refresh = BucketRefresh {
            rebuilt,
            ..Default::default()
        };
        refresh_map(&index, storage.as_ref(), &encryption, &mut refresh)?;
        let repo = Repository::from_parts(
            map_dir,
            config,
            params,
            encryption,
            index,
            None,
            (storage, None),
        );
        Ok(BucketSource {
            repo,
            location: location.clone(),
            refresh,
            _lock: lock,
        })
    }

    /// What the open's refresh of the map did.
    pub fn refreshed(&self) -> &BucketRefresh {
        &self.refresh
    }
}

/// The map's index, or a new one when there is none, it cannot be read, or it was made for
/// another `config` (`true`: started afresh).
fn open_map_index(map_dir: &Path, fingerprint: &[u8]) -> Result<(Index, bool)> {
    let path = crate::layout::index(map_dir);
    if path.exists() {
        match Index::open(&path, false) {
            Ok(index) => match index.meta(crate::repo::CONFIG_KEY) {
                Ok(Some(have)) if have == fingerprint => return Ok((index, false)),
                _ => drop(index),
            },
            Err(e) => tracing::warn!(error = %e, "the bucket map cannot be read; starting afresh"),
        }
        std::fs::remove_dir_all(&path).at(&path)?;
    }
    let index = Index::create(&path)?;
    index.set_meta(crate::repo::CONFIG_KEY, fingerprint)?;
    Ok((index, true))
}

fn set_aside_key(id: &SnapshotId) -> Vec<u8> {
    [SET_ASIDE_PREFIX, id.0.as_slice()].concat()
}

/// Brings the map up to date with the bucket's listing: new packs read and committed a
/// group at a time (with the snapshot records they hold, so a refresh killed midway goes on
/// from the packs it did not record), then packs gone dropped with their blobs, then
/// snapshots whose record blob is no longer in the bucket.
fn refresh_map(
    index: &Index,
    storage: &dyn PackStorage,
    enc: &Encryption,
    report: &mut BucketRefresh,
) -> Result<()> {
    let listed = storage.list()?;
    let known: HashSet<PackId> = index.packs()?.into_iter().map(|(id, _)| id).collect();
    let listed_ids: HashSet<PackId> = listed.iter().map(|p| p.id).collect();
    let gone: HashSet<PackId> = known.difference(&listed_ids).copied().collect();
    let new: Vec<PackInfo> = listed
        .into_iter()
        .filter(|p| !known.contains(&p.id))
        .collect();
    report.packs = listed_ids.len() as u64;
    report.packs_read = new.len() as u64;
    report.packs_gone = gone.len() as u64;
    // Committed a group at a time, with the records the group holds.
    for_each_pack_group(storage, enc, &new, |group| {
        let mut batch = index.batch();
        let mut records: HashMap<SnapshotId, Snapshot> = HashMap::new();
        for (info, contents) in group {
            let contents = contents?;
            let record = PackRecord {
                size: info.size,
                blobs: contents.entries.len() as u32,
                dead_bytes: 0,
            };
            batch.put_pack(&info.id, &record)?;
            let locatable = contents.locatable(info.id);
            let ids: Vec<ChunkId> = locatable.iter().map(|(id, _)| *id).collect();
            for ((id, loc), have) in locatable.iter().zip(index.blobs(&ids)?) {
                // A blob in several packs (gc rewrote its pack) stays where it is listed.
                if have.is_none_or(|l| gone.contains(&l.pack)) {
                    batch.put_blob(id, loc)?;
                }
            }
            for why in contents.bundles.into_iter().filter_map(|b| b.err()) {
                report.skipped.push(why);
            }
            for r in contents.records {
                match r {
                    Ok(s) => offer(&mut records, s),
                    Err(why) => report.skipped.push(why),
                }
            }
        }
        for s in records.into_values() {
            let newer = match index.snapshot(&s.id)? {
                Some(have) => s.revision > have.revision,
                None => index.meta(&set_aside_key(&s.id))?.is_none(),
            };
            if newer {
                batch.put_snapshot(&s)?;
            }
        }
        batch.commit()
    })?;
    let mut batch = index.batch();
    if !gone.is_empty() {
        index.for_each_blob(|id, loc| {
            if gone.contains(&loc.pack) {
                batch.delete_blob(&id)?;
            }
            Ok(())
        })?;
        for p in &gone {
            batch.delete_pack(p)?;
        }
    }
    batch.commit()?;
    // A snapshot's newest record blob is referenced while the primary keeps it: gone from
    // the bucket, the snapshot was expired there and collected.
    let mut batch = index.batch();
    let mut listed_snapshots = 0u64;
    for s in index.snapshots()? {
        if index.blob(&s.record_id(enc))?.is_some() {
            listed_snapshots += 1;
        } else {
            batch.delete_snapshot(s.host.as_str(), &s.id)?;
            report.snapshots_gone += 1;
        }
    }
    batch.commit()?;
    report.snapshots = listed_snapshots;
    Ok(())
}

impl SyncSource for BucketSource {
    fn location(&self) -> String {
        self.location.url()
    }
    fn repository_id(&self) -> String {
        SyncSource::repository_id(&self.repo)
    }
    fn probe_id(&self) -> ChunkId {
        SyncSource::probe_id(&self.repo)
    }
    fn plain_ids(&self) -> bool {
        SyncSource::plain_ids(&self.repo)
    }
    fn snapshots(&self) -> Result<Vec<Snapshot>> {
        Repository::snapshots(&self.repo)
    }
    fn read_blob(&self, id: &ChunkId, kind: BlobKind) -> Result<Vec<u8>> {
        SyncSource::read_blob(&self.repo, id, kind)
    }
    fn remote(&self) -> bool {
        true
    }
    fn lists_expired(&self) -> bool {
        true
    }
    fn set_aside(&self, s: &Snapshot, reason: &str) -> Result<()> {
        let mut batch = self.repo.index.batch();
        batch.delete_snapshot(s.host.as_str(), &s.id)?;
        batch.put_meta(&set_aside_key(&s.id), reason.as_bytes());
        batch.commit()
    }
}
