//! `sync`: copies snapshots from a source repository into this one (a replica that pulls
//! from its primary), keeping each snapshot's id, host, times, status, statistics and pin.
//!
//! What a sync guarantees:
//! - **Only what is missing travels.** A blob this repository holds (live, or committed by an
//!   interrupted sync and not reclaimed yet) is not read from the source. When both
//!   repositories name blobs alike (both plain, or one key), a tree held here stands for
//!   everything below it; otherwise each source id is translated once (plain → keyed ids
//!   are computed; encrypted sources are remembered in the index, `sync-map/`, FORMAT.md
//!   §Index) and trees are rewritten with this repository's ids.
//! - **Every blob is verified on arrival** by the source's reader (its hash, and its
//!   authentication when sealed) and again here: a file's chunk must have the length its
//!   entry records and must not be a tree encoding; every tree is decoded before it is
//!   re-encoded; blobs are compressed and sealed anew with this repository's keys.
//! - **Deletions never travel.** A snapshot the source expired stays here until this
//!   repository's own retention expires it; one this repository expired (`sync-seen/`) is
//!   not copied again.
//! - **Crash-safe and resumable.** A snapshot becomes visible in one commit, after all its
//!   blobs are durable, as a backup does. Every [`SyncOptions::checkpoint_bytes`] the packs
//!   written so far are committed unreferenced (as shared pulls commit theirs): a run killed
//!   at any point leaves no half snapshot, and the next run finds those blobs and does not
//!   read them again (until a gc reclaims them). The data blobs an interrupted run left are
//!   kept from reclaim while this run uses them; its trees are read again (they are small,
//!   and a dead tree's children may be gone).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use xstore_chunker::ChunkId;
use xstore_format::host::HostName;
use xstore_format::pack::BlobKind;
use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_retention::{plan_trim, Action, Plan};

use super::retention::{candidates, TierChoice};
use crate::error::{Error, Result, SyncError};
use crate::progress::Progress;
use crate::repo::Repository;

mod copier;
mod status;

use copier::Copier;
pub use status::{HostSync, SyncStatus};

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
}

fn ids_as_hex<S: serde::Serializer>(
    ids: &[SnapshotId],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(|id| id.to_string()))
}

fn seen_key(id: &SnapshotId) -> Vec<u8> {
    [SEEN_PREFIX, id.0.as_slice()].concat()
}

fn map_key(source_id: &str, id: &ChunkId) -> Vec<u8> {
    [MAP_PREFIX, source_id.as_bytes(), b"/", id.0.as_slice()].concat()
}

fn in_scope(s: &Snapshot, opts: &SyncOptions) -> bool {
    opts.hosts.as_ref().is_none_or(|h| h.contains(&s.host))
}

/// The source's labels of `s` that a copy keeps.
fn kept_labels(s: &Snapshot, opts: &SyncOptions) -> Vec<String> {
    s.tiers
        .iter()
        .filter(|t| opts.tiers.as_ref().is_none_or(|f| f.contains(*t)))
        .cloned()
        .collect()
}

impl Repository {
    /// Plans a sync from `source`: which snapshots to copy (oldest first) and, with
    /// [`SyncLabels::Source`], the label changes and expiries here. Reads only records.
    pub fn plan_sync(&self, source: &dyn SyncSource, opts: &SyncOptions) -> Result<SyncPlan> {
        let source_id = source.repository_id();
        if source_id == self.config().repository_id {
            return Err(SyncError::SameRepository {
                location: source.location(),
            }
            .into());
        }
        let source_err = |e: Error| -> Error {
            SyncError::Source {
                location: source.location(),
                source: Box::new(e),
            }
            .into()
        };
        let mut theirs: Vec<Snapshot> = source
            .snapshots()
            .map_err(source_err)?
            .into_iter()
            .filter(|s| in_scope(s, opts))
            .filter(|s| {
                opts.tiers
                    .as_ref()
                    .is_none_or(|f| s.tiers.iter().any(|t| f.contains(t)))
            })
            .collect();
        theirs.sort_by_key(|s| (s.start_ns, s.id));
        let ours: Vec<Snapshot> = self
            .snapshots()?
            .into_iter()
            .filter(|s| in_scope(s, opts))
            .collect();
        let our_ids: HashSet<SnapshotId> = ours.iter().map(|s| s.id).collect();
        let their_ids: HashSet<SnapshotId> = theirs.iter().map(|s| s.id).collect();
        let mut plan = SyncPlan {
            source: source.location(),
            source_id,
            copy: Vec::new(),
            retention: Plan::default(),
            present: 0,
            expired_here: 0,
            no_place: 0,
            kept_after_source: ours.iter().filter(|s| !their_ids.contains(&s.id)).count() as u64,
            source_newest: BTreeMap::new(),
        };
        for s in &theirs {
            let newest = plan
                .source_newest
                .entry(s.host.clone())
                .or_insert(s.start_ns);
            *newest = (*newest).max(s.start_ns);
        }
        let mut new = Vec::new();
        for s in &theirs {
            if our_ids.contains(&s.id) {
                plan.present += 1;
            } else if self.index.meta(&seen_key(&s.id))?.is_some() {
                plan.expired_here += 1;
            } else {
                new.push(s.clone());
            }
        }
        if opts.labels != SyncLabels::Source {
            plan.copy = new
                .into_iter()
                .map(|snapshot| SyncCopy {
                    snapshot,
                    tiers: Vec::new(),
                })
                .collect();
            return Ok(plan);
        }
        // The source's labels, for the snapshots both have and the new ones; then this
        // repository's schedule trims. Unlabelled snapshots are for calendar policies and
        // stay out of the trim (it would expire them).
        let their_labels: HashMap<SnapshotId, Vec<String>> = theirs
            .iter()
            .map(|s| (s.id, kept_labels(s, opts)))
            .collect();
        let mut after: Vec<Snapshot> = ours
            .iter()
            .map(|s| match their_labels.get(&s.id) {
                Some(t) => Snapshot {
                    tiers: t.clone(),
                    ..s.clone()
                },
                None => s.clone(),
            })
            .collect();
        after.extend(new.iter().map(|s| Snapshot {
            tiers: kept_labels(s, opts),
            ..s.clone()
        }));
        let labelled: Vec<Snapshot> = after.into_iter().filter(|s| !s.tiers.is_empty()).collect();
        let schedules = self.retention_settings()?.schedules;
        let trimmed = plan_trim(&candidates(&labelled), &schedules);
        let decided: HashMap<String, &xstore_retention::Decision> = trimmed
            .decisions
            .iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        for s in new {
            let tiers = match decided.get(&s.id.to_string()) {
                Some(d) if d.action == Action::Expire => {
                    plan.no_place += 1;
                    continue;
                }
                Some(d) => d.tiers.iter().cloned().collect(),
                None => Vec::new(),
            };
            plan.copy.push(SyncCopy { snapshot: s, tiers });
        }
        // Decisions about snapshots here: compared with their labels as they are now.
        let current: HashMap<String, &Snapshot> =
            ours.iter().map(|s| (s.id.to_string(), s)).collect();
        plan.retention.decisions = trimmed
            .decisions
            .iter()
            .filter_map(|d| {
                let s = current.get(&d.id)?;
                let tiers: Vec<String> = d.tiers.iter().cloned().collect();
                let changed = d.action == Action::Expire || tiers != s.tiers;
                (changed && !(d.action == Action::Expire && s.pinned)).then(|| {
                    xstore_retention::Decision {
                        changed: true,
                        ..(*d).clone()
                    }
                })
            })
            .collect();
        Ok(plan)
    }

    /// Carries out a sync plan: copies each snapshot (committed one by one, oldest first),
    /// then applies the plan's label changes and expiries here in one commit.
    pub fn sync(
        &self,
        source: &dyn SyncSource,
        plan: &SyncPlan,
        opts: &SyncOptions,
    ) -> std::result::Result<SyncReport, SyncError> {
        self.require_writable()?;
        if source.repository_id() != plan.source_id {
            return Err(Error::StalePlan {
                reason: format!(
                    "the plan is for source {}, not {}",
                    plan.source_id,
                    source.repository_id()
                ),
            }
            .into());
        }
        // Blobs dead when the run starts (an interrupted sync's) are protected as they are
        // taken; the rest as any backup's.
        let _session = self.begin_session()?;
        let copier = Copier::new(self, source, opts)?;
        let mut report = SyncReport::default();
        for c in &plan.copy {
            let entry = match &opts.labels {
                SyncLabels::Own(choice) => self.tier_entry(&c.snapshot.host, choice)?,
                SyncLabels::Source => None,
            };
            let root = copier.copy_snapshot(&c.snapshot)?;
            let record = Snapshot {
                root,
                tiers: c.tiers.clone(),
                parent: c
                    .snapshot
                    .parent
                    .filter(|p| self.index.snapshot(p).ok().flatten().is_some()),
                revision: 0,
                ..c.snapshot.clone()
            };
            copier.commit_snapshot(&record, entry.as_ref())?;
            report.snapshots += 1;
            report.copied.push(record.id);
        }
        copier.finish();
        if !plan.retention.decisions.is_empty() {
            let applied = self.apply_plan(&plan.retention)?;
            report.relabelled = applied.relabelled;
            report.expired = applied.released.snapshots;
        }
        copier.fill(&mut report);
        if let Err(e) = self.record_sync_status(plan, &report) {
            tracing::warn!("synced, but the sync status for monitoring was not kept: {e}");
        }
        Ok(report)
    }
}
