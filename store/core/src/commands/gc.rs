//! Reclaim (`gc`): packs whose blobs are all dead are deleted; packs whose dead fraction
//! passes the threshold are rewritten with their live blobs. Plan first (read-only), then
//! copy live blobs into new sealed packs, then one atomic index batch that re-points moved
//! blobs and drops dead ones, and only then delete the old pack files (FORMAT.md §Crash
//! safety). The commit re-validates every pack under the write lock: a pack whose blobs were
//! revived or are protected for an in-flight backup since the plan is left alone.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use super::bundling::{self, CandidateBlob};
use crate::error::{Error, GcError, Result};
use crate::index::{BlobLoc, PackRecord};
use crate::pack::{NewBlob, SealedPack};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::txn::Mutation;
use xstore_chunker::ChunkId;
use xstore_format::pack::{self, PackId};

/// A pack smaller than this is small: a commit's snapshot records, the tree blobs of an
/// unchanged host. Larger packs hold the data of one backup, which usually dies together
/// (then the whole pack goes without copying), so they are not merged.
pub const SMALL_PACK_BYTES: u64 = 64 << 10;
/// Why a pack of a plan is left alone when the index no longer records it.
const STALE_PLAN: &str = "no longer in the index: another gc took it since the plan";

/// gc merges the small packs into one once there are this many.
pub const MERGE_SMALL_PACKS: usize = 16;

/// Options for [`Repository::plan_gc`].
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Rewrite packs whose dead bytes exceed this percentage; `None` uses the repository's
    /// setting (`retention.json`, default 10).
    pub max_dead_percent: Option<f64>,
    /// How long retired pack files stay before deletion; `None` uses the repository's
    /// setting (`retention.json`, default one day). Zero deletes them at once, which breaks
    /// readers that started before this gc.
    pub grace: Option<std::time::Duration>,
    /// Release the packs `repair index` held (blobs it could not attribute to a snapshot):
    /// gc may then reclaim them like any other.
    pub release_held: bool,
}

/// What gc does with one pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GcAction {
    /// No live blob: the file goes.
    Delete,
    /// Live blobs are copied to a new pack, then the file goes.
    Rewrite,
    /// Left alone this time (a blob revived or protected since the plan, or unreadable).
    Skip,
}

/// One pack in a gc plan or report.
#[derive(Debug, Clone, Serialize)]
pub struct GcPack {
    /// Pack id (hex in JSON).
    #[serde(serialize_with = "xstore_format::snapshot::hex_serde::serialize")]
    pub pack: PackId,
    /// File size.
    pub size: u64,
    /// Dead bytes recorded for it.
    pub dead_bytes: u64,
    /// Live blobs it holds.
    pub live_blobs: u64,
    /// Bytes those live blobs take.
    pub live_bytes: u64,
    /// What gc does (or did).
    pub action: GcAction,
    /// Why a pack was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The result of [`Repository::gc`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The threshold used, percent.
    pub max_dead_percent: f64,
    /// Packs in the repository.
    pub packs_total: u64,
    /// Packs deleted (no live blob).
    pub packs_deleted: u64,
    /// Packs rewritten.
    pub packs_rewritten: u64,
    /// Packs gc meant to handle but left alone.
    pub packs_skipped: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Blobs copied to new packs.
    pub blobs_moved: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Index entries of dead blobs removed.
    pub blobs_dropped: u64,
    /// Bytes freed on disk (old pack files minus new ones); an estimate when `dry_run`.
    pub bytes_freed: u64,
    /// Bytes of the new packs written.
    pub bytes_written: u64,
    /// Dead bytes left in packs below the threshold.
    pub dead_bytes_remaining: u64,
    /// Grace period of retired packs, seconds.
    pub grace_seconds: u64,
    /// Retired pack files deleted by this run (their grace period had passed).
    pub retired_deleted: u64,
    /// Bytes of those files.
    pub retired_bytes_deleted: u64,
    /// Retired pack files still waiting for their grace period to pass.
    pub retired_waiting: u64,
    /// Packs kept because `repair index` held them (see [`GcOptions::release_held`]).
    pub packs_held: u64,
    /// Indexes replaced by `repair index` deleted by this run (their grace period had passed).
    pub replaced_indexes_deleted: u64,
    /// Unfinished multipart uploads of packs (a writer killed mid-upload) aborted by this
    /// run: begun longer ago than the grace period. Not done by a dry run.
    pub uploads_aborted: u64,
    /// Unfinished uploads left alone: begun within the grace period, or at a time the store
    /// does not say.
    pub uploads_waiting: u64,
    /// Small packs rewritten only to merge them ([`MERGE_SMALL_PACKS`]).
    pub small_packs_merged: u64,
    /// Per pack.
    pub packs: Vec<GcPack>,
}

/// What a gc will do, decided without changing anything ([`Repository::plan_gc`]): its
/// report holds the threshold and grace it uses, every pack it looked at with the action it
/// plans, and estimates of what that frees. [`Repository::gc`] carries it out; a dry run
/// prints it.
#[derive(Debug)]
pub struct GcPlan {
    /// The plan as a report (`dry_run` set; bytes freed, blobs moved and bytes copied are
    /// estimates).
    pub report: GcReport,
    /// Whether the packs `repair index` held are released ([`GcOptions::release_held`]).
    pub release_held: bool,
    candidates: Vec<Candidate>,
}

/// Raw bytes of the live blobs [`Repository::copy_live`] prepares at a time.
const PREPARE_BATCH_BYTES: u64 = 16 << 20;

/// How [`Repository::copy_live`] moves a blob into a new pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyMode {
    /// Its stored bytes as they are (gc).
    Verbatim,
    /// Decompressed and compressed again at this level; the smaller of the two is kept
    /// (compact). The new packs are marked as compacted in the same commit.
    Recompress(i32),
}

/// Index keys (default column family) of packs compact wrote: `compacted/<pack id>` → the
/// zstd level (1 byte, two's complement). Removed with the pack.
const COMPACTED_PREFIX: &[u8] = b"compacted/";

pub(crate) fn compacted_key(pack: &PackId) -> Vec<u8> {
    [COMPACTED_PREFIX, pack.0.as_slice()].concat()
}

/// The packs marked as compacted (a key that is not a pack id is ignored).
pub(crate) fn compacted_packs(repo: &Repository) -> Result<HashSet<PackId>> {
    Ok(repo
        .index
        .meta_with_prefix(COMPACTED_PREFIX)?
        .into_iter()
        .filter_map(|(k, _)| Some(ChunkId(<[u8; 32]>::try_from(k.as_slice()).ok()?)))
        .collect())
}

/// What [`Repository::copy_live`] copied: the new packs, the blobs copied out of each
/// candidate, and the candidates whose copy stopped at a corrupt blob (why).
struct Copied {
    sealed: Vec<SealedPack>,
    /// The member tables of the bundles written, by bundle id.
    bundles: bundling::BundleTables,
    copied: HashMap<PackId, HashSet<ChunkId>>,
    unreadable: HashMap<PackId, String>,
}

/// A candidate pack, classified against the index.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) id: PackId,
    /// Its row in the report.
    pub(crate) row: usize,
    pub(crate) record: PackRecord,
    pub(crate) live: Vec<CandidateBlob>,
    pub(crate) dead: Vec<CandidateBlob>,
}

impl Repository {
    /// Classifies the blobs of one pack: live ones (the index points here with a reference)
    /// and dead ones (the index points here, refcount 0). Copies elsewhere are neither. A
    /// bundle's members are classified one by one (its record is read to list them).
    pub(crate) fn classify(&self, id: &PackId, record: PackRecord) -> Result<Candidate> {
        let map = self.map_pack(id)?;
        let trailer =
            pack::read_trailer(self.encryption(), &map).map_err(|source| Error::Corrupt {
                path: self.storage().location(id).into(),
                source,
            })?;
        let mut entries = Vec::with_capacity(trailer.len());
        for e in trailer {
            if e.kind == pack::BlobKind::Bundle {
                entries.extend(bundling::members_of(self, id, &map, &e)?);
            } else {
                entries.push(CandidateBlob::alone(e));
            }
        }
        let ids: Vec<ChunkId> = entries.iter().map(CandidateBlob::id).collect();
        let mut c = Candidate {
            id: *id,
            row: 0,
            record,
            live: Vec::new(),
            dead: Vec::new(),
        };
        for (e, loc) in entries.iter().zip(self.index.blobs(&ids)?) {
            match loc {
                Some(l) if e.is_at(id, &l) => {
                    if l.refcount > 0 {
                        c.live.push(*e);
                    } else {
                        c.dead.push(*e);
                    }
                }
                _ => {}
            }
        }
        Ok(c)
    }

    /// Plans a gc (read-only, so a dry run needs no writer lock): which packs to delete
    /// (no live blob), rewrite (dead bytes above the threshold, or small packs to merge) or
    /// skip (blobs a running backup may reference, or held by `repair index`).
    pub fn plan_gc(&self, opts: &GcOptions) -> Result<GcPlan, GcError> {
        let threshold = match opts.max_dead_percent {
            Some(p) if (0.0..=100.0).contains(&p) => p,
            Some(p) => return Err(GcError::MaxDead(p)),
            None => self.retention_settings()?.gc_max_dead_percent,
        };
        let grace = match opts.grace {
            Some(g) => g.as_secs(),
            None => self.retention_settings()?.gc_grace_seconds,
        };
        let mut report = GcReport {
            dry_run: true,
            max_dead_percent: threshold,
            grace_seconds: grace,
            ..Default::default()
        };
        let held = if opts.release_held {
            HashSet::new()
        } else {
            crate::repo::hold::held_packs(self.path())?
        };
        let protected = self
            .write_state
            .lock()
            .map_err(crate::repo::poisoned)?
            .protected();
        let mut candidates = Vec::new();
        let packs = self.index.packs()?;
        // Small packs are merged once there are enough of them, so that their number does
        // not grow with the commits.
        let small: HashSet<PackId> = packs
            .iter()
            .filter(|(_, r)| r.size < SMALL_PACK_BYTES)
            .map(|(id, _)| *id)
            .collect();
        let merge_small = small.len() >= MERGE_SMALL_PACKS;
        for (id, rec) in packs {
            report.packs_total += 1;
            let merging = merge_small && small.contains(&id);
            if rec.dead_bytes == 0 && !merging {
                continue;
            }
            let fraction = rec.dead_bytes as f64 * 100.0 / rec.size.max(1) as f64;
            let blob_bytes = rec
                .size
                .saturating_sub(pack::overhead(self.encryption(), rec.blobs));
            let maybe_all_dead = rec.dead_bytes >= blob_bytes;
            if merging && !(maybe_all_dead || fraction > threshold) {
                report.small_packs_merged += 1;
            }
            if !(maybe_all_dead || fraction > threshold || merging) {
                // Below the threshold: not even its trailer is read (gc cost follows what
                // it reclaims, not the repository's size).
                report.dead_bytes_remaining += rec.dead_bytes;
                continue;
            }
            let mut c = self.classify(&id, rec)?;
            c.row = report.packs.len();
            let live_bytes: u64 = c.live.iter().map(CandidateBlob::span).sum();
            let mut row = GcPack {
                pack: id,
                size: rec.size,
                dead_bytes: rec.dead_bytes,
                live_blobs: c.live.len() as u64,
                live_bytes,
                action: if c.live.is_empty() {
                    GcAction::Delete
                } else {
                    GcAction::Rewrite
                },
                note: None,
            };
            if c.dead.iter().any(|e| protected.contains(&e.id())) {
                row.action = GcAction::Skip;
                row.note = Some("holds blobs a running backup may reference".into());
            }
            if held.contains(&id) {
                row.action = GcAction::Skip;
                row.note = Some(
                    "held by repair index: blobs it could not attribute (gc --release-held reclaims them)"
                        .into(),
                );
                report.packs_held += 1;
            }
            if row.action != GcAction::Skip {
                candidates.push(c);
            }
            report.packs.push(row);
        }
        for row in report.packs.iter().filter(|r| r.action != GcAction::Skip) {
            // The copy costs its blobs plus a share of a new pack's header and trailer.
            report.bytes_freed += row.size.saturating_sub(row.live_bytes);
            report.blobs_moved += row.live_blobs;
            report.bytes_copied += row.live_bytes;
        }
        tally(&mut report);
        Ok(GcPlan {
            report,
            release_held: opts.release_held,
            candidates,
        })
    }

    /// Carries out `plan`: deletes packs without live blobs and rewrites the others it
    /// names, then deletes retired packs whose grace period has passed. Every pack is
    /// checked again under the write lock, so a plan made earlier (or by a read-only handle)
    /// is safe: a pack whose blobs were revived or protected since is left alone. Safe
    /// against a backup running in this process (see mutation.rs); other processes cannot
    /// write (writer lock). `progress` counts the bytes copied.
    pub fn gc(&self, plan: GcPlan, progress: Option<&Progress>) -> Result<GcReport, GcError> {
        self.require_writable()?;
        if plan.release_held {
            crate::pack::journal::remove_if_present(&crate::layout::gc_hold(self.path()))?;
        }
        let GcPlan {
            report: planned,
            candidates,
            ..
        } = plan;
        let grace = planned.grace_seconds;
        let mut report = GcReport {
            dry_run: false,
            max_dead_percent: planned.max_dead_percent,
            grace_seconds: grace,
            packs_total: planned.packs_total,
            packs_held: planned.packs_held,
            small_packs_merged: planned.small_packs_merged,
            dead_bytes_remaining: planned.dead_bytes_remaining,
            packs: planned.packs,
            ..Default::default()
        };
        self.reclaim(candidates, CopyMode::Verbatim, &mut report, progress)?;
        tally(&mut report);
        // After gc's commit: a failure to delete is a warning, the next gc deletes them; a
        // lost writer lease is an error (another server may be writing to this repository).
        match self.delete_retired(grace, &mut report) {
            Err(e @ Error::LeaseLost { .. }) => return Err(e.into()),
            Err(e) => tracing::warn!("retired pack files not deleted ({e}); the next gc retries"),
            Ok(()) => {}
        }
        match self.abort_unfinished_uploads(grace, &mut report) {
            Err(e @ Error::LeaseLost { .. }) => return Err(e.into()),
            Err(e) => tracing::warn!("unfinished uploads not aborted ({e}); the next gc retries"),
            Ok(()) => {}
        }
        Ok(report)
    }

    /// Aborts the multipart uploads of packs that a writer began and never completed (it was
    /// killed mid-upload), once begun longer ago than the grace period: no listing shows
    /// them, yet the store keeps their parts. Under the write lock and the lease no writer
    /// of this repository is uploading; the grace period covers one whose lease lapsed while
    /// it still ran. An upload whose start the store does not say is left alone.
    fn abort_unfinished_uploads(&self, grace_seconds: u64, report: &mut GcReport) -> Result<()> {
        let now = crate::clock::now_ns();
        let grace_ns = grace_ns(grace_seconds);
        for upload in self.storage().unfinished_uploads()? {
            match upload.initiated_ns {
                Some(t) if now.saturating_sub(t) >= grace_ns => {
                    self.lease_still_held("unfinished uploads left for a later gc")?;
                    self.storage().abort_upload(&upload)?;
                    tracing::debug!(key = %upload.key, "unfinished upload aborted");
                    report.uploads_aborted += 1;
                }
                _ => report.uploads_waiting += 1,
            }
        }
        Ok(())
    }

    /// Deletes retired pack files whose grace period has passed and that the index does not
    /// know (journal.rs), pack file first, marker second; then indexes replaced by
    /// `repair index` longer ago than the grace period.
    fn delete_retired(&self, grace_seconds: u64, report: &mut GcReport) -> Result<()> {
        let packs = self.packs_dir();
        let now = crate::clock::now_ns();
        let grace_ns = grace_ns(grace_seconds);
        let mut deleted = Vec::new();
        for (id, retired_ns) in crate::pack::journal::retired(&packs, now)? {
            if self.index.pack(&id)?.is_some() {
                continue;
            }
            if now.saturating_sub(retired_ns) < grace_ns {
                report.retired_waiting += 1;
                continue;
            }
            report.retired_bytes_deleted += self.storage().size(&id)?.unwrap_or(0);
            deleted.push(id);
        }
        if !deleted.is_empty() {
            crate::failpoint::fail_io("gc-delete")?;
            crate::failpoint::pause("gc-before-delete");
        }
        // Each batch is deleted only while this server still holds the object store's
        // writer lease: another server that took it may have attached with `repair index`
        // and found these packs. The first pack alone, then the rest in batches: a crash
        // between two deletions is a state the crash tests reach (`gc-mid-delete`).
        const WITHHELD: &str = "retired packs not yet deleted are left for a later gc";
        let (first, rest) = deleted.split_at(deleted.len().min(1));
        self.lease_still_held(WITHHELD)?;
        self.storage().delete(first)?;
        crate::failpoint::failpoint("gc-mid-delete");
        for batch in rest.chunks(256) {
            // Stopping here leaves markers of packs already gone: harmless (below).
            self.lease_still_held(WITHHELD)?;
            self.storage().delete(batch)?;
        }
        report.retired_deleted += deleted.len() as u64;
        // The deletions are durable before their markers go (journal.rs, the storage
        // contract): a marker without its pack is harmless, a pack without its marker would
        // look unattributed.
        crate::pack::journal::clear_retired(&packs, &deleted)?;
        // Indexes `repair index` replaced go by the same rule.
        let mut removed_index = false;
        for (dir, replaced_ns) in crate::repo::recovery::replaced_indexes(self.path())? {
            if now.saturating_sub(replaced_ns) >= grace_ns {
                std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                    path: dir.clone(),
                    source,
                })?;
                report.replaced_indexes_deleted += 1;
                removed_index = true;
            }
        }
        if removed_index {
            crate::fsutil::sync_dir(self.path())?;
        }
        Ok(())
    }
    /// Copies the live blobs of `candidates` into new packs, each verified first: a pack
    /// with a corrupt live blob stops being copied at it and is named in `unreadable`.
    fn copy_live(
        &self,
        candidates: &[Candidate],
        mode: CopyMode,
        progress: Option<&Progress>,
    ) -> Result<Copied> {
        let packs = self.rolling_packs();
        let mut copied: HashMap<PackId, HashSet<ChunkId>> = HashMap::new();
        let mut unreadable: HashMap<PackId, String> = HashMap::new();
        if let Some(p) = progress {
            let total: u64 = candidates
                .iter()
                .flat_map(|c| &c.live)
                .map(CandidateBlob::span)
                .sum();
            p.total_bytes
                .store(total, std::sync::atomic::Ordering::Relaxed);
        }
        // Compact puts small data blobs into bundles at its level; gc copies records as they
        // are, and the live members of a bundle into new bundles at the repository's level.
        let (bundling, bundle_level) = match mode {
            CopyMode::Recompress(level) => (true, level),
            CopyMode::Verbatim => (false, self.config().compression_level),
        };
        let copy = (|| -> Result<(Vec<SealedPack>, bundling::BundleTables)> {
            let mut bundler = bundling::Bundler::new(self, &packs, bundle_level);
            for c in candidates {
                if c.live.is_empty() {
                    continue;
                }
                let map = self.map_pack(&c.id)?;
                // Live blobs verified (and for compact compressed again) on all cores, a
                // batch of at most PREPARE_BATCH_BYTES at a time (level 19 costs about 60
                // times level 3; the batch bounds what is held).
                let mut ok = HashSet::new();
                'pack: for batch in prepare_batches(&c.live) {
                    // Bundles of this pack decoded for the batch's members (dropped with it).
                    let decoded = std::sync::Mutex::new(HashMap::new());
                    let prepared: Vec<_> = batch
                        .par_iter()
                        .map(|e| prepare(self, &map, e, mode, bundling, &decoded))
                        .collect();
                    for (e, prepared) in batch.iter().zip(prepared) {
                        // A corrupt blob is never copied: its pack stays, named in the report.
                        match prepared {
                            Ok(Prepared::Member(raw)) => bundler.add(e.id(), raw)?,
                            Ok(Prepared::Record(stored, again)) => {
                                let (compression, stored) = match &again {
                                    Some((compression, bytes)) => (*compression, bytes.as_slice()),
                                    None => (e.entry.compression, &stored[..]),
                                };
                                packs.add(NewBlob {
                                    id: e.entry.id,
                                    kind: e.entry.kind,
                                    compression,
                                    raw_len: e.entry.raw_len,
                                    stored,
                                })?;
                            }
                            Err(err) => {
                                unreadable.insert(c.id, format!("blob {}: {err}", e.id()));
                                break 'pack;
                            }
                        }
                        if let Some(p) = progress {
                            p.bytes
                                .fetch_add(e.span(), std::sync::atomic::Ordering::Relaxed);
                        }
                        ok.insert(e.id());
                    }
                }
                copied.insert(c.id, ok);
            }
            let bundles = bundler.finish()?;
            crate::failpoint::fail_io("gc-copy")?;
            Ok((packs.finish()?, bundles))
        })();
        match copy {
            Ok((sealed, bundles)) => Ok(Copied {
                sealed,
                bundles,
                copied,
                unreadable,
            }),
            Err(e) => Err(packs.abandon(e)),
        }
    }

    pub(crate) fn reclaim(
        &self,
        candidates: Vec<Candidate>,
        mode: CopyMode,
        report: &mut GcReport,
        progress: Option<&Progress>,
    ) -> Result<()> {
        // A plan made earlier (a read-only handle's, for example) may be stale: a pack that
        // another gc has taken out of the index since is not this gc's to copy or retire
        // (its file may be gone, or waiting out its grace period in the other's journal).
        let mut candidates = candidates;
        let mut current = Vec::with_capacity(candidates.len());
        for c in candidates.drain(..) {
            if self.index.pack(&c.id)?.is_some() {
                current.push(c);
            } else if let Some(row) = report.packs.get_mut(c.row) {
                row.action = GcAction::Skip;
                row.note = Some(STALE_PLAN.into());
            }
        }
        let candidates = current;
        if candidates.is_empty() {
            return Ok(());
        }
        // 1. Copy live blobs (verified: a corrupt blob is never copied) into new packs.
        let Copied {
            sealed,
            bundles,
            copied,
            unreadable,
        } = self.copy_live(&candidates, mode, progress)?;
        crate::failpoint::failpoint("gc-after-copy");
        // Where each copied blob now lives.
        let new_loc = bundling::sealed_locations(&sealed, &bundles);
        // 2. One atomic batch, re-validated under the write lock.
        let mut m = Mutation::begin(self)?;
        let protected = m.state.protected();
        let mut live_in_new: HashSet<ChunkId> = HashSet::new();
        let mut gone: Vec<(PackId, u64)> = Vec::new();
        for c in &candidates {
            let all: Vec<ChunkId> = c
                .live
                .iter()
                .chain(&c.dead)
                .map(CandidateBlob::id)
                .collect();
            m.prefetch(&all)?;
            let mine = copied.get(&c.id);
            let mut skip = unreadable.get(&c.id).cloned();
            if m.pack(&c.id)?.is_none() {
                skip = Some(STALE_PLAN.into());
            }
            let mut moves = Vec::new();
            let mut drops = Vec::new();
            for e in c.live.iter().chain(&c.dead) {
                let id = e.id();
                let Some(loc) = m.loc(&id)? else { continue };
                if !e.is_at(&c.id, &loc) {
                    continue;
                }
                let was_copied = mine.is_some_and(|s| s.contains(&id));
                if loc.refcount > 0 && !was_copied {
                    skip.get_or_insert_with(|| format!("blob {id} was revived since the plan"));
                } else if loc.refcount == 0 && protected.contains(&id) {
                    skip.get_or_insert_with(|| {
                        format!("blob {id} may be referenced by a running backup")
                    });
                } else if was_copied {
                    moves.push((id, loc.refcount));
                } else {
                    drops.push(id);
                }
            }
            let row = report.packs.iter_mut().find(|r| r.pack == c.id);
            if let Some(note) = skip {
                if let Some(row) = row {
                    row.action = GcAction::Skip;
                    row.note = Some(note);
                }
                continue;
            }
            for (id, refcount) in moves {
                if let Some(l) = new_loc.get(&id) {
                    m.set_loc(id, Some(BlobLoc { refcount, ..*l }));
                    if refcount > 0 {
                        live_in_new.insert(id);
                    }
                    report.blobs_moved += 1;
                    report.bytes_copied += l.span();
                }
            }
            report.blobs_dropped += drops.len() as u64;
            for id in drops {
                m.set_loc(id, None);
            }
            m.set_pack(c.id, None);
            m.delete_meta(compacted_key(&c.id));
            gone.push((c.id, c.record.size));
        }
        // New packs: every copy that did not end up live counts as dead there (one pass over
        // the copies, whatever the number of new packs).
        let mut dead_in: HashMap<PackId, u64> = HashMap::new();
        for (id, l) in &new_loc {
            if !live_in_new.contains(id) {
                *dead_in.entry(l.pack).or_default() += l.span();
            }
        }
        for p in &sealed {
            m.track_sealed(p.id);
            let dead = dead_in.get(&p.id).copied().unwrap_or(0);
            m.set_pack(
                p.id,
                Some(PackRecord {
                    size: p.size,
                    blobs: p.entries.len() as u32,
                    dead_bytes: dead,
                }),
            );
            if let CopyMode::Recompress(level) = mode {
                m.put_meta(compacted_key(&p.id), (level as i8).to_le_bytes().to_vec());
            }
        }
        // 3. The packs leaving the index are retired before the commit: their files stay
        // until the grace period has passed (readers that started before this gc may still
        // read them), then a later gc deletes them (`delete_retired`).
        let gone_ids: Vec<PackId> = gone.iter().map(|(id, _)| *id).collect();
        crate::failpoint::fail_io("gc-retire")?;
        crate::pack::journal::mark_retired(&self.packs_dir(), &gone_ids, crate::clock::now_ns())?;
        m.commit()?;
        report.packs_written = sealed.len() as u64;
        let old: u64 = gone.iter().map(|(_, s)| s).sum();
        let new: u64 = sealed.iter().map(|p| p.size).sum();
        report.bytes_freed = old.saturating_sub(new);
        report.bytes_written += new;
        Ok(())
    }
}

/// `live` in consecutive batches of at most [`PREPARE_BATCH_BYTES`] raw bytes (a larger blob
/// alone).
fn prepare_batches(live: &[CandidateBlob]) -> Vec<&[CandidateBlob]> {
    let mut batches = Vec::new();
    let mut rest = live;
    while !rest.is_empty() {
        let mut bytes = 0u64;
        let len = rest
            .iter()
            .take_while(|e| {
                bytes += u64::from(e.entry.raw_len);
                bytes <= PREPARE_BATCH_BYTES
            })
            .count()
            .max(1);
        let (batch, tail) = rest.split_at(len.min(rest.len()));
        batches.push(batch);
        rest = tail;
    }
    batches
}

/// A blob ready to be copied.
enum Prepared<'p> {
    /// Its stored bytes, verified; with [`CopyMode::Recompress`], also its raw bytes
    /// compressed at that level when that is smaller than what is stored.
    Record(
        std::borrow::Cow<'p, [u8]>,
        Option<(pack::Compression, Vec<u8>)>,
    ),
    /// Its raw bytes, verified, for a new bundle.
    Member(Vec<u8>),
}

fn prepare<'p>(
    repo: &Repository,
    pack_bytes: &'p [u8],
    blob: &CandidateBlob,
    mode: CopyMode,
    bundling: bool,
    decoded: &bundling::DecodedBundles,
) -> std::result::Result<Prepared<'p>, xstore_format::DecodeError> {
    if blob.bundled.is_some() {
        return bundling::member_raw(repo, pack_bytes, blob, decoded).map(Prepared::Member);
    }
    let e = &blob.entry;
    if bundling::goes_into_bundle(blob, bundling) {
        return pack::read_blob(repo.encryption(), pack_bytes, e).map(Prepared::Member);
    }
    let CopyMode::Recompress(level) = mode else {
        let stored = pack::verified_stored(repo.encryption(), pack_bytes, e)?;
        return Ok(Prepared::Record(stored, None));
    };
    let (stored, raw) = pack::verified_stored_and_raw(repo.encryption(), pack_bytes, e)?;
    // Stored as is: either level 3 found nothing to gain (a high level would spend its time
    // on the same incompressible bytes) or an agent sent it uncompressed on a fast link
    // (`raw-chunks`). A fast level tells which for a fraction of the high level's cost.
    if e.compression == pack::Compression::None && !worth_compressing(&raw) {
        return Ok(Prepared::Record(stored, None));
    }
    let (compression, again) = pack::compress(&raw, level);
    let smaller = again.len() < stored.len();
    Ok(Prepared::Record(
        stored,
        smaller.then_some((compression, again)),
    ))
}

/// Whether zstd at a fast level shrinks `raw` by at least [`PROBE_GAIN`] of its size.
fn worth_compressing(raw: &[u8]) -> bool {
    let (compression, probe) = pack::compress(raw, PROBE_LEVEL);
    compression == pack::Compression::Zstd
        && (probe.len() as f64) < raw.len() as f64 * (1.0 - PROBE_GAIN)
}

/// The level [`worth_compressing`] tries: on a Debian tree about 200 MB/s on one core,
/// against 5–10 MB/s at compact's level 19.
const PROBE_LEVEL: i32 = 1;
/// The share of its size a fast level must save on an uncompressed blob before compact
/// compresses it at its own level.
const PROBE_GAIN: f64 = 0.03;

/// The grace period in ns (saturating).
fn grace_ns(grace_seconds: u64) -> i64 {
    i64::try_from(grace_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000_000)
}

fn tally(report: &mut GcReport) {
    for row in &report.packs {
        match row.action {
            GcAction::Delete => report.packs_deleted += 1,
            GcAction::Rewrite => report.packs_rewritten += 1,
            GcAction::Skip => report.packs_skipped += 1,
        }
    }
}
