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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xstore_chunker::ChunkId;
use xstore_format::host::HostName;
use xstore_format::pack::{self, BlobKind};
use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_format::tree::{
    chunk_list_children, decode_chunk_list, encode_chunk_list, ChunkRef, Content, Tree,
};
use xstore_retention::{plan_trim, Action, Plan};

use super::backup::RESERVE_CHECK_BYTES;
use super::retention::{candidates, TierChoice};
use crate::error::{Error, Result, SyncError};
use crate::pack::rolling::RollingPacks;
use crate::pack::NewBlob;
use crate::progress::Progress;
use crate::repo::{poisoned, Repository};
use crate::txn::Mutation;

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
    /// [`SyncSource::read_blob`] of many blobs, in order: a source over a network sends the
    /// requests together instead of waiting for each answer.
    fn read_blobs(&self, ids: &[(ChunkId, BlobKind)]) -> Result<Vec<Vec<u8>>> {
        ids.par_iter()
            .map(|(id, kind)| self.read_blob(id, *kind))
            .collect()
    }
}

/// Blobs asked of a source in one request, at most.
const READ_BATCH_BLOBS: usize = 256;
/// … and at most this many raw bytes.
const READ_BATCH_BYTES: u64 = 64 << 20;

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

/// What the last successful sync left for monitoring (`sync-status.json`, FORMAT.md §Sync
/// status): per host, how the source's newest snapshot compared with this repository's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The source, as given.
    pub source: String,
    /// The source's repository id.
    pub source_id: String,
    /// When the sync ended, ns since the epoch.
    pub finished_ns: i64,
    /// Snapshots it copied.
    pub snapshots_copied: u64,
    /// Raw bytes it read from the source.
    pub bytes_read: u64,
    /// Bytes it stored here.
    pub stored_bytes: u64,
    /// Each host the sync covered.
    pub hosts: Vec<HostSync>,
}

/// One host after a sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSync {
    /// The host.
    pub host: HostName,
    /// Start of the source's newest snapshot of the host (ns since the epoch).
    pub source_newest_ns: i64,
    /// Start of this repository's newest snapshot of it, if it has one.
    pub newest_ns: Option<i64>,
}

impl SyncStatus {
    /// How far behind the source `host` may be at `now_ns`: what the sync did not copy of
    /// it, plus the time since the sync (the source may have new snapshots since). `None`:
    /// this repository holds no snapshot of a host the source has.
    pub fn lag_ns(&self, host: &HostSync, now_ns: i64) -> Option<i64> {
        let since = now_ns.saturating_sub(self.finished_ns).max(0);
        let missing = host.source_newest_ns.saturating_sub(host.newest_ns?).max(0);
        Some(since.saturating_add(missing))
    }
}

/// The longest `sync-status.json` read back.
const MAX_STATUS_BYTES: u64 = 16 << 20;

fn ids_as_hex<S: serde::Serializer>(
    ids: &[SnapshotId],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(|id| id.to_string()))
}

/// `missing` cut into read requests of at most [`READ_BATCH_BLOBS`] blobs and about
/// [`READ_BATCH_BYTES`] bytes.
fn read_batches(missing: &[ChunkRef]) -> Vec<&[ChunkRef]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, c) in missing.iter().enumerate() {
        if i > start && (i - start >= READ_BATCH_BLOBS || bytes >= READ_BATCH_BYTES) {
            out.extend(missing.get(start..i));
            start = i;
            bytes = 0;
        }
        bytes += u64::from(c.len);
    }
    out.extend(missing.get(start..));
    out.retain(|b| !b.is_empty());
    out
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

    fn record_sync_status(&self, plan: &SyncPlan, report: &SyncReport) -> Result<()> {
        let mut hosts = Vec::new();
        for (host, newest) in &plan.source_newest {
            let here = self.index.host(host)?.and_then(|h| h.latest);
            let newest_ns = match here {
                Some(id) => self.index.snapshot(&SnapshotId(id))?.map(|s| s.start_ns),
                None => None,
            };
            hosts.push(HostSync {
                host: host.clone(),
                source_newest_ns: *newest,
                newest_ns,
            });
        }
        let status = SyncStatus {
            source: plan.source.clone(),
            source_id: plan.source_id.clone(),
            finished_ns: crate::clock::now_ns(),
            snapshots_copied: report.snapshots,
            bytes_read: report.bytes_read,
            stored_bytes: report.stored_bytes,
            hosts,
        };
        let mut json = serde_json::to_vec_pretty(&status).map_err(|e| Error::Encode {
            what: "sync status",
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        crate::fsutil::write_atomic(&crate::layout::sync_status(self.path()), &json)
    }

    /// The last successful sync's status (`None` before the first), for monitoring.
    pub fn sync_status(&self) -> Result<Option<SyncStatus>> {
        let path = crate::layout::sync_status(self.path());
        let md = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        if !md.is_file() || md.len() > MAX_STATUS_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{}: not a sync status file",
                path.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                source: xstore_format::DecodeError::Invalid {
                    what: "sync status",
                    offset: 0,
                    reason: e.to_string(),
                },
            })
    }
}

/// One run's copying state.
struct Copier<'a> {
    repo: &'a Repository,
    source: &'a dyn SyncSource,
    source_id: String,
    /// Both repositories name blobs alike: ids are taken over unchanged.
    same_ids: bool,
    level: i32,
    checkpoint_bytes: u64,
    packs: RollingPacks,
    /// Blobs written by this run (this repository's ids), with kind and raw length.
    written: Mutex<HashMap<ChunkId, (BlobKind, u32)>>,
    /// Source id → this repository's id, learnt in this run; persisted at each commit.
    learnt: Mutex<HashMap<ChunkId, ChunkId>>,
    /// What `learnt` holds that is not committed yet.
    unsaved: Mutex<Vec<(ChunkId, ChunkId)>>,
    /// Parent blobs (trees, chunk lists) written for the snapshot being copied.
    new_parents: Mutex<Vec<(ChunkId, Vec<ChunkId>)>>,
    /// The snapshot being copied, for messages.
    current: Mutex<String>,
    since_checkpoint: AtomicU64,
    /// Stored bytes written in all (the free-space reserve is checked as they grow).
    written_bytes: AtomicU64,
    counts: Counts,
    progress: Option<Arc<Progress>>,
}

#[derive(Default)]
struct Counts {
    blobs_read: AtomicU64,
    bytes_read: AtomicU64,
    blobs_written: AtomicU64,
    stored_bytes: AtomicU64,
    blobs_resumed: AtomicU64,
    checkpoints: AtomicU64,
}

/// What this repository holds under an id, as far as a copy is concerned.
enum Held {
    /// Nothing usable: write it.
    No,
    /// A usable blob (live, written by this run, or a dead data blob now protected).
    Yes,
}

/// Frames of the iterative tree walk: a source tree being rewritten, entry by entry.
struct Frame {
    source: ChunkId,
    tree: Tree,
    next: usize,
}

impl<'a> Copier<'a> {
    fn new(repo: &'a Repository, source: &'a dyn SyncSource, opts: &SyncOptions) -> Result<Self> {
        Ok(Copier {
            repo,
            source,
            source_id: source.repository_id(),
            same_ids: source.probe_id() == repo.encryption().id_of(SYNC_ID_PROBE),
            level: repo.config().compression_level,
            checkpoint_bytes: opts.checkpoint_bytes.max(1),
            packs: repo.rolling_packs(),
            written: Mutex::new(HashMap::new()),
            learnt: Mutex::new(HashMap::new()),
            unsaved: Mutex::new(Vec::new()),
            new_parents: Mutex::new(Vec::new()),
            current: Mutex::new(String::new()),
            since_checkpoint: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            counts: Counts::default(),
            progress: opts.progress.clone(),
        })
    }

    fn fill(&self, r: &mut SyncReport) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        r.blobs_read = get(&self.counts.blobs_read);
        r.bytes_read = get(&self.counts.bytes_read);
        r.blobs_written = get(&self.counts.blobs_written);
        r.stored_bytes = get(&self.counts.stored_bytes);
        r.blobs_resumed = get(&self.counts.blobs_resumed);
        r.checkpoints = get(&self.counts.checkpoints);
    }

    fn snapshot_name(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn source_error(&self, e: Error) -> Error {
        SyncError::Source {
            location: self.source.location(),
            source: Box::new(e),
        }
        .into()
    }

    fn clash(&self, id: ChunkId, have: BlobKind, want: BlobKind) -> Error {
        SyncError::KindClash {
            snapshot: self.snapshot_name(),
            id,
            have: have.name(),
            want: want.name(),
        }
        .into()
    }

    /// Whether this repository holds `id` as a blob of `kind` (and, for data, `len` bytes)
    /// that a copy may reference. A tree must be live (a dead one's children may be gone);
    /// a data blob may be dead (an interrupted sync's): it is then protected from reclaim.
    fn holds(&self, id: ChunkId, kind: BlobKind, len: Option<u32>) -> Result<Held> {
        if let Some(&(have, have_len)) = self.written.lock().map_err(poisoned)?.get(&id) {
            if have != kind {
                return Err(self.clash(id, have, kind));
            }
            return Ok(match len {
                Some(l) if l != have_len => Held::No,
                _ => Held::Yes,
            });
        }
        let Some(loc) = self.repo.index.blob(&id)? else {
            return Ok(Held::No);
        };
        if loc.kind != kind {
            return Err(self.clash(id, loc.kind, kind));
        }
        if len.is_some_and(|l| l != loc.raw_len) {
            // Same id, other length: the index disagrees with the bytes (check will say).
            return Ok(Held::No);
        }
        if self
            .repo
            .index
            .meta(&crate::index::damaged_key(&id))?
            .is_some()
        {
            return Ok(Held::No);
        }
        if loc.refcount > 0 {
            return Ok(Held::Yes);
        }
        if kind != BlobKind::Data {
            return Ok(Held::No);
        }
        self.repo.protect_from_reclaim(&[id])?;
        self.counts.blobs_resumed.fetch_add(1, Ordering::Relaxed);
        Ok(Held::Yes)
    }

    /// This repository's id for a source id already translated (this run, an earlier one,
    /// or computable: a plain source's data ids), if known.
    fn translated(&self, source_id: ChunkId, kind: BlobKind) -> Result<Option<ChunkId>> {
        if self.same_ids {
            return Ok(Some(source_id));
        }
        if kind == BlobKind::Data && self.source.plain_ids() {
            return Ok(Some(self.repo.encryption().id_from_plain(source_id)));
        }
        if let Some(d) = self.learnt.lock().map_err(poisoned)?.get(&source_id) {
            return Ok(Some(*d));
        }
        let Some(v) = self
            .repo
            .index
            .meta(&map_key(&self.source_id, &source_id))?
        else {
            return Ok(None);
        };
        // A damaged entry is only a missed shortcut: the blob is read again.
        Ok(<[u8; 32]>::try_from(v.as_slice()).ok().map(ChunkId))
    }

    /// The id here of a source blob this repository already holds, if it does.
    fn present(
        &self,
        source_id: ChunkId,
        kind: BlobKind,
        len: Option<u32>,
    ) -> Result<Option<ChunkId>> {
        match self.translated(source_id, kind)? {
            Some(d) => Ok(match self.holds(d, kind, len)? {
                Held::Yes => Some(d),
                Held::No => None,
            }),
            None => Ok(None),
        }
    }

    fn learn(&self, source_id: ChunkId, ours: ChunkId) -> Result<()> {
        if self.same_ids || source_id == ours {
            return Ok(());
        }
        if self
            .learnt
            .lock()
            .map_err(poisoned)?
            .insert(source_id, ours)
            .is_none()
        {
            self.unsaved
                .lock()
                .map_err(poisoned)?
                .push((source_id, ours));
        }
        Ok(())
    }

    fn read(&self, id: &ChunkId, kind: BlobKind) -> Result<Vec<u8>> {
        let raw = self
            .source
            .read_blob(id, kind)
            .map_err(|e| self.source_error(e))?;
        self.count_read(raw.len() as u64, 1);
        Ok(raw)
    }

    fn read_many(&self, ids: &[(ChunkId, BlobKind)]) -> Result<Vec<Vec<u8>>> {
        let raws = self
            .source
            .read_blobs(ids)
            .map_err(|e| self.source_error(e))?;
        if raws.len() != ids.len() {
            return Err(self.source_error(Error::Internal(
                "the source answered another number of blobs",
            )));
        }
        self.count_read(raws.iter().map(|r| r.len() as u64).sum(), raws.len() as u64);
        Ok(raws)
    }

    fn count_read(&self, bytes: u64, blobs: u64) {
        self.counts.blobs_read.fetch_add(blobs, Ordering::Relaxed);
        self.counts.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Writes a blob unless this run wrote it already. Returns whether it was new.
    fn write(&self, id: ChunkId, kind: BlobKind, raw: &[u8]) -> Result<bool> {
        {
            let mut written = self.written.lock().map_err(poisoned)?;
            if let Some(&(have, _)) = written.get(&id) {
                return if have == kind {
                    Ok(false)
                } else {
                    Err(self.clash(id, have, kind))
                };
            }
            written.insert(id, (kind, raw.len() as u32));
        }
        let (compression, stored) = pack::compress(raw, self.level);
        let span = pack::blob_span(pack::entry_stored_len(self.repo.encryption(), stored.len()));
        let before = self.written_bytes.fetch_add(span, Ordering::AcqRel);
        if before == 0 || before / RESERVE_CHECK_BYTES != (before + span) / RESERVE_CHECK_BYTES {
            self.repo.check_reserve()?;
        }
        self.since_checkpoint.fetch_add(span, Ordering::AcqRel);
        self.packs.add(NewBlob {
            id,
            kind,
            compression,
            raw_len: raw.len() as u32,
            stored: &stored,
        })?;
        self.counts.blobs_written.fetch_add(1, Ordering::Relaxed);
        self.counts.stored_bytes.fetch_add(span, Ordering::Relaxed);
        Ok(true)
    }

    /// Copies a file's chunks (or a directory's, [`Copier::copy_inline_chunks`]); returns
    /// them with this repository's ids. What is missing is read in batches.
    fn copy_chunks(&self, chunks: &[ChunkRef]) -> Result<Vec<ChunkRef>> {
        let held: Vec<Option<ChunkId>> = chunks
            .par_iter()
            .map(|c| self.present(c.id, BlobKind::Data, Some(c.len)))
            .collect::<Result<_>>()?;
        let mut missing: Vec<ChunkRef> = chunks
            .iter()
            .zip(&held)
            .filter(|(_, h)| h.is_none())
            .map(|(c, _)| *c)
            .collect();
        missing.sort_unstable_by_key(|c| (c.id, c.len));
        missing.dedup();
        let mut copied: HashMap<ChunkRef, ChunkId> = HashMap::new();
        for batch in read_batches(&missing) {
            let ask: Vec<(ChunkId, BlobKind)> =
                batch.iter().map(|c| (c.id, BlobKind::Data)).collect();
            let raws = self.read_many(&ask)?;
            let ours: Vec<ChunkId> = batch
                .par_iter()
                .zip(raws)
                .map(|(c, raw)| self.store_chunk(c, raw))
                .collect::<Result<_>>()?;
            copied.extend(batch.iter().copied().zip(ours));
        }
        chunks
            .iter()
            .zip(held)
            .map(|(c, h)| {
                let id = match h {
                    Some(id) => id,
                    None => *copied.get(c).ok_or(Error::Internal("sync's chunk batch"))?,
                };
                Ok(ChunkRef { id, len: c.len })
            })
            .collect()
    }

    /// Verifies and stores one chunk read from the source; returns its id here.
    fn store_chunk(&self, c: &ChunkRef, raw: Vec<u8>) -> Result<ChunkId> {
        if raw.len() != c.len as usize {
            return Err(SyncError::LengthMismatch {
                location: self.source.location(),
                snapshot: self.snapshot_name(),
                id: c.id,
                claimed: c.len,
                found: raw.len(),
            }
            .into());
        }
        let ours = self.repo.encryption().id_of(&raw);
        if xstore_format::tree::is_structure_encoding(&raw) {
            return Err(self.clash(ours, BlobKind::Tree, BlobKind::Data));
        }
        self.learn(c.id, ours)?;
        if matches!(self.holds(ours, BlobKind::Data, Some(c.len))?, Held::No) {
            self.write(ours, BlobKind::Data, &raw)?;
        }
        Ok(ours)
    }

    /// Writes a parent blob (tree or chunk list) built from `raw`, unless held here.
    fn write_parent(
        &self,
        source_id: ChunkId,
        kind: BlobKind,
        raw: &[u8],
        children: Vec<ChunkId>,
    ) -> Result<ChunkId> {
        let ours = self.repo.encryption().id_of(raw);
        if self.same_ids && ours != source_id {
            // Re-encoding a decoded tree gives its bytes back; anything else is a source
            // whose blob does not hash to its id.
            return Err(self.source_error(Error::CorruptBlob {
                id: source_id,
                pack: "(source)".into(),
                source: xstore_format::DecodeError::Invalid {
                    what: "tree",
                    offset: 0,
                    reason: "re-encoded, it does not hash to its id".into(),
                },
            }));
        }
        self.learn(source_id, ours)?;
        if matches!(self.holds(ours, kind, None)?, Held::Yes) {
            return Ok(ours);
        }
        if self.write(ours, kind, raw)? {
            self.new_parents
                .lock()
                .map_err(poisoned)?
                .push((ours, children));
        }
        Ok(ours)
    }

    fn copy_chunk_list(&self, source_id: ChunkId) -> Result<ChunkId> {
        if let Some(d) = self.present(source_id, BlobKind::ChunkList, None)? {
            return Ok(d);
        }
        let raw = self.read(&source_id, BlobKind::ChunkList)?;
        let list = decode_chunk_list(&raw).map_err(|source| {
            self.source_error(Error::CorruptBlob {
                id: source_id,
                pack: "(source)".into(),
                source,
            })
        })?;
        let ours = self.copy_chunks(&list)?;
        let bytes = encode_chunk_list(&ours);
        self.write_parent(
            source_id,
            BlobKind::ChunkList,
            &bytes,
            chunk_list_children(&ours),
        )
    }

    /// Copies the chunks of every file of `tree` that lists them inline, all in one
    /// parallel batch (a directory of small files is many small reads), and rewrites the
    /// entries with this repository's ids.
    fn copy_inline_chunks(&self, tree: &mut Tree) -> Result<()> {
        let all: Vec<ChunkRef> = tree
            .entries
            .iter()
            .filter_map(|e| match &e.content {
                Content::Chunks(c) => Some(c.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        if all.is_empty() {
            return Ok(());
        }
        let ours = self.copy_chunks(&all)?;
        let mut ours = ours.into_iter();
        for e in &mut tree.entries {
            if let Content::Chunks(c) = &mut e.content {
                for chunk in c.iter_mut() {
                    *chunk = ours.next().ok_or(Error::Internal("sync's chunk batch"))?;
                }
            }
        }
        self.checkpoint_if_due()
    }

    fn open_frame(&self, source_id: ChunkId) -> Result<Frame> {
        let raw = self.read(&source_id, BlobKind::Tree)?;
        let tree = Tree::decode(&raw).map_err(|source| {
            self.source_error(Error::CorruptBlob {
                id: source_id,
                pack: "(source)".into(),
                source,
            })
        })?;
        let mut frame = Frame {
            source: source_id,
            tree,
            next: 0,
        };
        self.copy_inline_chunks(&mut frame.tree)?;
        Ok(frame)
    }

    /// Copies the tree `root` and everything below it that this repository lacks, children
    /// before parents, without recursion (a source's depth is not ours to trust).
    fn copy_tree(&self, root: ChunkId) -> Result<ChunkId> {
        if let Some(d) = self.present(root, BlobKind::Tree, None)? {
            return Ok(d);
        }
        let mut stack = vec![self.open_frame(root)?];
        loop {
            let Some(top) = stack.last_mut() else {
                return Err(Error::Internal("sync's tree walk lost its root"));
            };
            let Some(entry) = top.tree.entries.get_mut(top.next) else {
                let done = stack.pop().ok_or(Error::Internal("sync's tree walk"))?;
                let bytes = done.tree.encode();
                let ours =
                    self.write_parent(done.source, BlobKind::Tree, &bytes, done.tree.children())?;
                self.checkpoint_if_due()?;
                match stack.last_mut() {
                    None => return Ok(ours),
                    Some(parent) => {
                        if let Some(e) = parent.tree.entries.get_mut(parent.next) {
                            e.content = Content::Subtree(ours);
                        }
                        parent.next += 1;
                    }
                }
                continue;
            };
            match &entry.content {
                Content::Subtree(id) => {
                    let id = *id;
                    match self.present(id, BlobKind::Tree, None)? {
                        Some(d) => {
                            entry.content = Content::Subtree(d);
                            top.next += 1;
                        }
                        None => {
                            let frame = self.open_frame(id)?;
                            stack.push(frame);
                        }
                    }
                }
                Content::ChunkList(id) => {
                    let ours = self.copy_chunk_list(*id)?;
                    entry.content = Content::ChunkList(ours);
                    top.next += 1;
                    self.checkpoint_if_due()?;
                }
                // Inline chunks were copied when the frame opened.
                Content::Chunks(_) | Content::None | Content::Target(_) => top.next += 1,
            }
        }
    }

    fn copy_snapshot(&self, s: &Snapshot) -> Result<ChunkId> {
        if let Ok(mut c) = self.current.lock() {
            *c = format!("{} of {}", s.id.short(), s.host);
        }
        match self.copy_tree(s.root) {
            Ok(root) => Ok(root),
            Err(e) => Err(self.packs.abandon(e)),
        }
    }

    /// Commits the packs written so far, their blobs unreferenced, once enough was written
    /// since the last commit: a killed run loses at most that much.
    fn checkpoint_if_due(&self) -> Result<()> {
        if self.since_checkpoint.load(Ordering::Relaxed) < self.checkpoint_bytes {
            return Ok(());
        }
        self.since_checkpoint.store(0, Ordering::Relaxed);
        let sealed = self.packs.flush()?;
        let mut m = Mutation::begin(self.repo)?;
        m.insert_sealed(&sealed)?;
        drop(sealed);
        m.protect_inserted();
        self.save_learnt(&mut m)?;
        m.commit()?;
        crate::failpoint::failpoint("sync-checkpoint");
        self.counts.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn save_learnt(&self, m: &mut Mutation<'_>) -> Result<()> {
        for (from, to) in std::mem::take(&mut *self.unsaved.lock().map_err(poisoned)?) {
            m.put_meta(map_key(&self.source_id, &from), to.0.to_vec());
        }
        Ok(())
    }

    /// The one commit that makes a copied snapshot visible: its packs, its references,
    /// its record (and its tier entry), the translations learnt, its `sync-seen/` key.
    fn commit_snapshot(
        &self,
        record: &Snapshot,
        entry: Option<&super::retention::TierEntry>,
    ) -> Result<()> {
        let committed = (|| {
            let sealed = self.packs.flush()?;
            let mut m = Mutation::begin(self.repo)?;
            m.insert_sealed(&sealed)?;
            drop(sealed);
            let parents = std::mem::take(&mut *self.new_parents.lock().map_err(poisoned)?);
            m.reference_new_blobs(parents, record.root)?;
            m.put_snapshot(record.clone());
            if let Some(entry) = entry {
                self.repo.enter_tier(&mut m, entry, record)?;
            }
            self.save_learnt(&mut m)?;
            m.put_meta(seen_key(&record.id), self.source_id.as_bytes().to_vec());
            m.commit()
        })();
        committed.map(|_| ()).map_err(|e| self.packs.abandon(e))
    }

    /// Ends the run's packs (none are open after the last commit).
    fn finish(&self) {
        if let Err(e) = self.packs.finish() {
            tracing::warn!(error = %e, "sync: closing the pack writers");
        }
    }
}
