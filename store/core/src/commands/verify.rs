//! Rolling verification (`xstore verify`): packs are re-read and re-hashed, those verified
//! longest ago first, within a time or byte budget, and when each pack was verified is
//! recorded in the index, so a daily job covers the whole repository every few days and
//! resumes where the last run stopped.
//!
//! Runs work through cycles: a cycle starts when no pack is left that was verified before the
//! current one began, and a run verifies the packs due in its cycle (oldest verification
//! first), so budgeted runs cover every pack exactly once per cycle. A run whose cycle
//! completes with budget left starts the next cycle and goes on with it (never verifying a
//! pack twice in one run), so a daily budget is never left unused. Packs written during a
//! cycle wait for the next (they were read back before their commit).
//!
//! A pack's id is the BLAKE3 of its bytes, so one hash of the file proves every blob in it
//! unchanged; only a pack that fails is read blob by blob to find which blobs are damaged.
//! A damaged live blob is named with the snapshots and paths it breaks and marked in the
//! index (`damaged/<blob id>`): backups then store a fresh copy of that chunk instead of
//! deduplicating against the damaged one, and the commit that does so moves the blob to
//! the new copy (its reference count unchanged) and clears the mark.
//!
//! The packs are read through a read-only handle, so pulls and rotations run meanwhile; the
//! results are recorded by short writable opens at checkpoints (every 30 s and at the end),
//! each one synced batch, so a kill at any moment loses at most the unrecorded part.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xstore_format::host::HostName;

use crate::error::{Error, Result};
use crate::index::{damaged_key, verified_key, BlobLoc, CYCLE_KEY, LAST_RUN_KEY, VERIFIED_PREFIX};
use crate::progress::Progress;
use crate::repo::Repository;
use xstore_chunker::ChunkId;
use xstore_format::pack::PackId;
use xstore_format::snapshot::SnapshotId;
use xstore_format::tree::Content;

/// How long and how much one run may verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Stop before starting a pack once this much time has passed.
    pub max_duration: Option<Duration>,
    /// Stop before a pack that would take the bytes verified past this (a run verifies at
    /// least one pack).
    pub max_bytes: Option<u64>,
    /// How long the recording at the end waits for another writer (a pull) to finish.
    pub record_wait: Duration,
    /// Live counters (`bytes` counts pack bytes read).
    pub progress: Option<Arc<Progress>>,
}

/// A snapshot path that a damaged blob breaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokenPath {
    /// Snapshot id (hex in JSON).
    #[serde(serialize_with = "xstore_format::snapshot::hex_serde::serialize")]
    pub snapshot: SnapshotId,
    /// Its host.
    pub host: HostName,
    /// The path inside the snapshot.
    pub path: String,
}

/// A live blob whose stored copy is damaged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedBlob {
    /// Blob id (hex in JSON).
    #[serde(serialize_with = "xstore_format::snapshot::hex_serde::serialize")]
    pub blob: ChunkId,
    /// The pack holding the damaged copy (hex in JSON).
    #[serde(serialize_with = "xstore_format::snapshot::hex_serde::serialize")]
    pub pack: PackId,
    /// What is wrong.
    pub message: String,
    /// Paths it breaks (at most [`MAX_BROKEN_PATHS`] per blob).
    pub paths: Vec<BrokenPath>,
}

/// Paths listed per damaged blob, at most.
pub const MAX_BROKEN_PATHS: usize = 100;

/// What one run did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VerifyRun {
    /// When it started, ns since the epoch.
    pub started_ns: i64,
    /// Packs verified.
    pub packs: u64,
    /// Pack bytes read and hashed.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Damaged live blobs found.
    pub damaged: u64,
}

/// What `verify` did and where the repository stands.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// This run.
    pub run: VerifyRun,
    /// Packs in the repository.
    pub packs_total: u64,
    /// Damaged live blobs found by this run.
    pub damaged: Vec<DamagedBlob>,
    /// The oldest verification of any pack after this run, ns since the epoch.
    pub oldest_verified_ns: i64,
    /// Why the run stopped before its cycle was complete: `max-bytes` or `max-duration`.
    pub stopped_by: Option<String>,
    /// When the current cycle began, ns since the epoch.
    pub cycle_started_ns: i64,
    /// Whether every pack due in the cycle is verified now (the next run starts a new one).
    pub cycle_complete: bool,
}

/// Verification state, for monitoring.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyStatus {
    /// Packs in the repository.
    pub packs: u64,
    /// The oldest verification of any pack, ns since the epoch (a pack never verified by
    /// `verify` counts from when it was written: it was read back before its commit).
    pub oldest_verified_ns: i64,
    /// Live blobs marked damaged and not stored again since.
    pub damaged_blobs: u64,
    /// The last run, if any.
    pub last_run: Option<VerifyRun>,
}

/// Results not yet recorded in the index.
#[derive(Default)]
struct Unrecorded {
    verified: Vec<(PackId, i64)>,
    damaged: Vec<(ChunkId, PackId)>,
}

impl Repository {
    /// When each pack was last verified (ns since the epoch), oldest first; a pack never
    /// verified counts from its file's modification time (when it was written).
    pub fn pack_verification_times(&self) -> Result<Vec<(PackId, i64)>> {
        let recorded: HashMap<Vec<u8>, i64> = self
            .index
            .meta_with_prefix(VERIFIED_PREFIX)?
            .into_iter()
            .filter_map(|(k, v)| Some((k, i64::from_le_bytes(v.try_into().ok()?))))
            .collect();
        let mut written: Option<HashMap<PackId, i64>> = None;
        let mut out = Vec::new();
        for (id, _) in self.index.packs()? {
            let when = match recorded.get(id.0.as_slice()) {
                Some(t) => *t,
                None => {
                    // Listed once, only when some pack was never verified.
                    if written.is_none() {
                        written = Some(
                            self.storage()
                                .list()?
                                .into_iter()
                                .filter_map(|p| Some((p.id, p.modified_ns?)))
                                .collect(),
                        );
                    }
                    written
                        .as_ref()
                        .and_then(|w| w.get(&id))
                        .copied()
                        .unwrap_or(0)
                }
            };
            out.push((id, when));
        }
        out.sort_by_key(|(id, t)| (*t, *id));
        Ok(out)
    }

    /// Verification state for monitoring (`check-verify`, metrics).
    pub fn verify_status(&self) -> Result<VerifyStatus> {
        let times = self.pack_verification_times()?;
        let last_run = self
            .index
            .meta(LAST_RUN_KEY)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        Ok(VerifyStatus {
            packs: times.len() as u64,
            oldest_verified_ns: times.first().map_or_else(crate::clock::now_ns, |(_, t)| *t),
            damaged_blobs: self.damaged_blobs()?.len() as u64,
            last_run,
        })
    }

    /// One rolling verification run over the repository at `path` (module documentation).
    pub fn verify(path: &Path, opts: &VerifyOptions) -> Result<VerifyReport> {
        let started = Instant::now();
        let started_ns = crate::clock::now_ns();
        let repo = Repository::open_read_only(path)?;
        crate::failpoint::pause("verify-opened");
        let all = repo.pack_verification_times()?;
        let recorded_cycle = repo
            .index
            .meta(CYCLE_KEY)?
            .and_then(|v| Some(i64::from_le_bytes(v.try_into().ok()?)))
            .unwrap_or(0);
        let mut cycle = recorded_cycle;
        let mut order: Vec<(PackId, i64)> =
            all.iter().copied().filter(|(_, t)| *t < cycle).collect();
        if order.is_empty() {
            cycle = started_ns;
            order = all.clone();
        }
        let sizes: HashMap<PackId, u64> = repo
            .index
            .packs()?
            .into_iter()
            .map(|(id, rec)| (id, rec.size))
            .collect();
        let mut report = VerifyReport {
            packs_total: all.len() as u64,
            cycle_started_ns: cycle,
            ..Default::default()
        };
        let mut pending = Unrecorded::default();
        let mut last_checkpoint = Instant::now();
        let mut damaged_blobs: Vec<(ChunkId, PackId, String)> = Vec::new();
        let mut verified_now: HashSet<PackId> = HashSet::new();
        let mut next = 0;
        loop {
            let Some(&(pack_id, _)) = order.get(next) else {
                // The cycle is complete with budget left: the next one starts now, with the
                // packs this run has not verified (oldest verification first), so a budgeted
                // run never stops early and no pack is verified twice in one run.
                if cycle == started_ns {
                    break;
                }
                cycle = started_ns;
                order = all
                    .iter()
                    .copied()
                    .filter(|(p, _)| !verified_now.contains(p))
                    .collect();
                next = 0;
                report.cycle_started_ns = cycle;
                continue;
            };
            next += 1;
            let pack = &pack_id;
            let size = sizes.get(pack).copied().unwrap_or(0);
            if report.run.packs > 0 {
                if opts.max_duration.is_some_and(|d| started.elapsed() >= d) {
                    report.stopped_by = Some("max-duration".into());
                    break;
                }
                if opts.max_bytes.is_some_and(|b| report.run.bytes + size > b) {
                    report.stopped_by = Some("max-bytes".into());
                    break;
                }
            }
            verified_now.insert(*pack);
            let Some(found) = repo.verify_pack(pack)? else {
                continue; // retired by a gc meanwhile
            };
            report.run.packs += 1;
            report.run.bytes += size;
            if let Some(p) = &opts.progress {
                p.bytes
                    .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                p.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            pending.verified.push((*pack, crate::clock::now_ns()));
            for (blob, message) in found {
                pending.damaged.push((blob, *pack));
                damaged_blobs.push((blob, *pack, message));
            }
            if last_checkpoint.elapsed() >= Duration::from_secs(30) {
                // A writer busy now is no failure: the results wait for the next checkpoint.
                match record(path, &mut pending, None, cycle, Duration::ZERO) {
                    Ok(()) | Err(Error::Locked { .. }) => {}
                    Err(e) => return Err(e),
                }
                last_checkpoint = Instant::now();
            }
        }
        report.run.started_ns = started_ns;
        report.run.damaged = damaged_blobs.len() as u64;
        report.run.seconds = started.elapsed().as_secs_f64();
        let paths = repo.broken_paths(&damaged_blobs.iter().map(|d| d.0).collect())?;
        report.damaged = damaged_blobs
            .into_iter()
            .map(|(blob, pack, message)| DamagedBlob {
                blob,
                pack,
                message,
                paths: paths.get(&blob).cloned().unwrap_or_default(),
            })
            .collect();
        drop(repo);
        report.cycle_complete = report.stopped_by.is_none();
        record(
            path,
            &mut pending,
            Some(&report.run),
            cycle,
            opts.record_wait,
        )?;
        let after = Repository::open_read_only(path)?;
        report.oldest_verified_ns = after.verify_status()?.oldest_verified_ns;
        Ok(report)
    }

    /// Re-hashes one pack; `None` when it is gone because a gc retired it. Returns the live
    /// blobs located in it that are damaged, with what is wrong.
    fn verify_pack(&self, pack: &PackId) -> Result<Option<Vec<(ChunkId, String)>>> {
        let retired = || -> Result<bool> {
            Ok(
                crate::pack::journal::retired(&self.packs_dir(), crate::clock::now_ns())?
                    .contains_key(pack),
            )
        };
        // Gone because a gc retired it: still in the journal, or already deleted after a
        // grace period shorter than this run (then the current index no longer has it,
        // although this handle's view of the index, older than that gc, still does).
        let gone_by_gc = || -> Result<bool> {
            if retired()? {
                return Ok(true);
            }
            let now = Repository::open_read_only(self.path())?;
            Ok(now.index.pack(pack)?.is_none())
        };
        let whole = match self.map_pack(pack) {
            Ok(map) => ChunkId::of(&map) == *pack,
            Err(e) if e.is_not_found() && gone_by_gc()? => return Ok(None),
            Err(_) => false,
        };
        if whole {
            return Ok(Some(Vec::new()));
        }
        // Which live blobs located here are damaged: each is read on its own.
        let mut here: Vec<(ChunkId, BlobLoc)> = Vec::new();
        self.index.for_each_blob(|id, loc| {
            if loc.pack == *pack && loc.refcount > 0 {
                here.push((id, loc));
            }
            Ok(())
        })?;
        let mut damaged = Vec::new();
        self.forget_bundles_of(pack);
        for (id, loc) in here {
            match self.read_located(&id, &loc) {
                Ok(_) => {}
                Err(e) => damaged.push((id, e.to_string())),
            }
        }
        if damaged.is_empty() {
            tracing::warn!(pack = %pack, "pack bytes changed outside its live blobs (dead blobs or trailer)");
        }
        Ok(Some(damaged))
    }

    /// The snapshot paths that reference each of `blobs` (trees whose subtrees hold none of
    /// them are skipped by id after their first visit).
    pub(crate) fn broken_paths(
        &self,
        blobs: &HashSet<ChunkId>,
    ) -> Result<HashMap<ChunkId, Vec<BrokenPath>>> {
        let mut out: HashMap<ChunkId, Vec<BrokenPath>> = HashMap::new();
        if blobs.is_empty() {
            return Ok(out);
        }
        let mut clean: HashSet<ChunkId> = HashSet::new();
        for s in self.snapshots()? {
            let mut hit = |blob: ChunkId, path: &str| {
                let list = out.entry(blob).or_default();
                if list.len() < MAX_BROKEN_PATHS {
                    list.push(BrokenPath {
                        snapshot: s.id,
                        host: s.host.clone(),
                        path: path.to_string(),
                    });
                }
            };
            if blobs.contains(&s.root) {
                hit(s.root, "/");
                continue;
            }
            let mut stack = vec![(s.root, String::new())];
            while let Some((tree_id, path)) = stack.pop() {
                if clean.contains(&tree_id) {
                    continue;
                }
                let Ok(tree) = self.tree(&tree_id) else {
                    continue;
                };
                let mut any = false;
                for e in &tree.entries {
                    let p = format!("{path}/{}", e.name_lossy());
                    let mut ids: Vec<ChunkId> = Vec::new();
                    match &e.content {
                        Content::Subtree(id) => {
                            if blobs.contains(id) {
                                hit(*id, &p);
                                any = true;
                            } else if !clean.contains(id) {
                                stack.push((*id, p.clone()));
                                any = true; // not known clean yet: do not mark the parent
                            }
                        }
                        Content::ChunkList(id) => {
                            ids.push(*id);
                            if let Ok(chunks) = self.file_chunks(e) {
                                ids.extend(chunks.iter().map(|c| c.id));
                            }
                        }
                        Content::Chunks(c) => ids.extend(c.iter().map(|c| c.id)),
                        _ => {}
                    }
                    for id in ids {
                        if blobs.contains(&id) {
                            hit(id, &p);
                            any = true;
                        }
                    }
                }
                if !any {
                    clean.insert(tree_id);
                }
            }
        }
        Ok(out)
    }
}

/// Writes the pending results (and the run's summary) in one synced batch through a short
/// writable open, waiting up to `wait` for another writer.
fn record(
    path: &Path,
    pending: &mut Unrecorded,
    run: Option<&VerifyRun>,
    cycle_started_ns: i64,
    wait: Duration,
) -> Result<()> {
    if pending.verified.is_empty() && pending.damaged.is_empty() && run.is_none() {
        return Ok(());
    }
    let repo = Repository::open_waiting(path, wait)?;
    let packs: HashSet<PackId> = repo.index.packs()?.into_iter().map(|(id, _)| id).collect();
    let mut batch = repo.index.batch();
    for (pack, when) in &pending.verified {
        // A pack gc dropped since is not recorded again.
        if packs.contains(pack) {
            batch.put_meta(&verified_key(pack), &when.to_le_bytes());
        }
    }
    for (blob, pack) in &pending.damaged {
        // Only while the index still locates the blob in the damaged copy.
        if repo
            .index
            .blob(blob)?
            .is_some_and(|l| l.pack == *pack && l.refcount > 0)
        {
            batch.put_meta(&damaged_key(blob), &pack.0);
        }
    }
    batch.put_meta(CYCLE_KEY, &cycle_started_ns.to_le_bytes());
    if let Some(run) = run {
        batch.put_meta(LAST_RUN_KEY, &serde_json::to_vec(run).unwrap_or_default());
    }
    crate::failpoint::failpoint("verify-record");
    batch.commit()?;
    *pending = Unrecorded::default();
    Ok(())
}
