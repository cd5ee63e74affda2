//! What a sync reads from and the values that describe it: the source seam and its
//! implementation for a read-only [`Repository`], the options, the plan, the report, and the
//! index keys a sync keeps (FORMAT.md §Index).

use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use xstore_chunker::ChunkId;
use xstore_format::host::HostName;
use xstore_format::pack::BlobKind;
use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_retention::Plan;

use crate::commands::retention::TierChoice;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::Repository;

/// Bytes hashed into a blob id to compare how two repositories name blobs: equal ids mean
/// the same naming (both plain, or the same id key), so ids can be taken over unchanged.
pub const SYNC_ID_PROBE: &[u8] = b"xstore sync: do these repositories name blobs alike?";

/// Index keys (default column family) of source blob ids translated to this repository's
/// ids: `sync-map/<source repository id>/<source blob id>` → 32-byte blob id. A cache: lost
/// with the index, a later sync reads those blobs again.
const MAP_PREFIX: &[u8] = b"sync-map/";
/// Index keys of every snapshot a sync copied: `sync-seen/<snapshot id>` → the source's
/// repository id. A snapshot this repository expired since is not copied again.
const SEEN_PREFIX: &[u8] = b"sync-seen/";

/// Default [`SyncOptions::checkpoint_bytes`].
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 256 << 20;

/// Where a sync reads from: a repository it may only read. Implemented by a read-only
/// [`Repository`] handle (a local repository, or one whose packs are in a bucket).
pub trait SyncSource: Sync {
    /// Where the source is, for messages.
    fn location(&self) -> String;
    /// The source's repository id (its `config`).
    fn repository_id(&self) -> String;
    /// How the source names blobs: its id of a fixed probe text.
    fn probe_id(&self) -> ChunkId;
    /// Whether the source's blob ids are plain BLAKE3 (an unencrypted repository).
    fn plain_ids(&self) -> bool;
    /// Every snapshot record of the source.
    fn snapshots(&self) -> Result<Vec<Snapshot>>;
    /// A blob's raw bytes, verified against `id` as the source names it, and known there
    /// as a blob of `kind`.
    fn read_blob(&self, id: &ChunkId, kind: BlobKind) -> Result<Vec<u8>>;
    /// Whether each read costs a round trip (a source over a network): then the subtrees of
    /// a directory are read ahead together. A local source says no (reading ahead only adds
    /// lookups there).
    fn remote(&self) -> bool {
        false
    }
    /// Whether the source may list snapshots whose data is partly gone already: a bucket
    /// read without its primary's index lists the record of a snapshot the primary expired
    /// until the primary's gc collects it. A snapshot of such a source that misses a blob
    /// is set aside ([`SyncSource::set_aside`]) and reported instead of failing the sync.
    fn lists_expired(&self) -> bool {
        false
    }
    /// Stops listing snapshot `s`, which misses a blob (`reason`), in this run and later
    /// ones: for sources that [`SyncSource::lists_expired`].
    fn set_aside(&self, _s: &Snapshot, _reason: &str) -> Result<()> {
        Ok(())
    }
    /// [`SyncSource::read_blob`] of many blobs, in order: a source over a network sends the
    /// requests together instead of waiting for each answer.
    fn read_blobs(&self, ids: &[(ChunkId, BlobKind)]) -> Result<Vec<Vec<u8>>> {
        ids.par_iter()
            .map(|(id, kind)| self.read_blob(id, *kind))
            .collect()
    }
}

impl SyncSource for Repository {
    fn location(&self) -> String {
        match self.store_location() {
            Some(s) => s.url(),
            None => self.path().display().to_string(),
        }
    }
    fn repository_id(&self) -> String {
        self.config().repository_id.clone()
    }
    fn probe_id(&self) -> ChunkId {
        self.encryption().id_of(SYNC_ID_PROBE)
    }
    fn plain_ids(&self) -> bool {
        !self.is_encrypted()
    }
    fn snapshots(&self) -> Result<Vec<Snapshot>> {
        Repository::snapshots(self)
    }
    fn read_blob(&self, id: &ChunkId, kind: BlobKind) -> Result<Vec<u8>> {
        let loc = self.blob_location(id)?.ok_or(Error::MissingBlob(*id))?;
        if loc.kind != kind {
            return Err(Error::Corrupt {
                path: self.path().to_path_buf(),
                source: xstore_format::DecodeError::Invalid {
                    what: "blob kind",
                    offset: 0,
                    reason: format!(
                        "blob {id} is a {}, referenced as a {}",
                        loc.kind.name(),
                        kind.name()
                    ),
                },
            });
        }
        // Reads re-hash (and open sealed bytes) against the id: a damaged blob is an error.
        self.read_blob(id)
    }
}

/// How copied snapshots get their tier labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncLabels {
    /// The source's labels (so its tier positions), kept up to date for snapshots the
    /// source still has; then every tier is trimmed to this repository's schedule, so a
    /// replica whose schedule keeps more keeps more (its snapshots the source expired stay
    /// in their tiers until this trim takes them).
    Source,
    /// This repository's own schedule: each copied snapshot enters a tier as a backup does
    /// ([`TierChoice::None`]: no label, for calendar policies run here).
    Own(TierChoice),
}

/// What to copy, and how.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Only these hosts (`None`: all).
    pub hosts: Option<BTreeSet<HostName>>,
    /// Only snapshots that carry one of these tier labels on the source (`None`: all);
    /// with [`SyncLabels::Source`], copies keep only these labels.
    pub tiers: Option<BTreeSet<String>>,
    /// How copies are labelled.
    pub labels: SyncLabels,
    /// Commit what was written every this many stored bytes, so a killed sync resumes
    /// without reading it again.
    pub checkpoint_bytes: u64,
    /// Counters for a progress display.
    pub progress: Option<Arc<Progress>>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            hosts: None,
            tiers: None,
            labels: SyncLabels::Source,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            progress: None,
        }
    }
}

/// One snapshot a sync copies.
#[derive(Debug, Clone, Serialize)]
pub struct SyncCopy {
    /// The source's record (its root in the source's ids).
    pub snapshot: Snapshot,
    /// The tier labels the copy gets ([`SyncLabels::Source`]; empty for [`SyncLabels::Own`],
    /// whose entry is planned at the copy's commit).
    pub tiers: Vec<String>,
}

/// A sync as a value: what [`Repository::sync`] will do.
#[derive(Debug, Clone, Serialize)]
pub struct SyncPlan {
    /// The source, for messages.
    pub source: String,
    /// The source's repository id.
    pub source_id: String,
    /// Snapshots to copy, oldest first.
    pub copy: Vec<SyncCopy>,
    /// Label changes and expiries of snapshots here ([`SyncLabels::Source`]): only the
    /// decisions that change something.
    pub retention: Plan,
    /// Selected source snapshots this repository has already.
    pub present: u64,
    /// Selected source snapshots copied before and expired here since (not copied again).
    pub expired_here: u64,
    /// Selected source snapshots this repository's schedule has no place for.
    pub no_place: u64,
    /// Snapshots of the selected hosts here that the source no longer has (kept).
    pub kept_after_source: u64,
    /// The start of the source's newest snapshot of each selected host.
    pub source_newest: BTreeMap<HostName, i64>,
}

/// What a sync did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Snapshots copied (committed here).
    pub snapshots: u64,
    /// Their ids.
    #[serde(serialize_with = "ids_as_hex")]
    pub copied: Vec<SnapshotId>,
    /// Snapshots here whose labels changed.
    pub relabelled: u64,
    /// Snapshots here expired by this repository's schedule.
    pub expired: u64,
    /// Blobs read from the source.
    pub blobs_read: u64,
    /// Their raw bytes.
    pub bytes_read: u64,
    /// Blobs written here.
    pub blobs_written: u64,
    /// Bytes they take in packs.
    pub stored_bytes: u64,
    /// Blobs an interrupted sync had written and this one used without reading them again.
    pub blobs_resumed: u64,
    /// Checkpoint commits.
    pub checkpoints: u64,
    /// Snapshots not copied because the source misses a blob of theirs (a source that
    /// [`SyncSource::lists_expired`]): what and why, one line each.
    pub set_aside: Vec<String>,
}

fn ids_as_hex<S: serde::Serializer>(
    ids: &[SnapshotId],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(|id| id.to_string()))
}

/// The blob a copy failed for when `source` may list snapshots whose data is partly gone
/// and did not have it: the snapshot is set aside, not the sync failed.
pub(super) fn missing_at_source(
    source: &dyn SyncSource,
    e: &Error,
) -> Option<xstore_chunker::ChunkId> {
    if !source.lists_expired() {
        return None;
    }
    match e {
        Error::Sync(b) => match &**b {
            crate::error::SyncError::Source { source, .. } => match &**source {
                Error::MissingBlob(id) => Some(*id),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn seen_key(id: &SnapshotId) -> Vec<u8> {
    [SEEN_PREFIX, id.0.as_slice()].concat()
}

pub(super) fn map_key(source_id: &str, id: &ChunkId) -> Vec<u8> {
    [MAP_PREFIX, source_id.as_bytes(), b"/", id.0.as_slice()].concat()
}
