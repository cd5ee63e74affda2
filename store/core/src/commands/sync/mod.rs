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

use std::collections::{BTreeMap, HashMap, HashSet};

use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_retention::{plan_trim, Action, Plan};

use super::retention::candidates;
use crate::error::{Error, Result, SyncError};
use crate::repo::Repository;

mod bucket;
mod copier;
mod status;
mod values;

pub use bucket::{BucketRefresh, BucketSource};
use copier::Copier;
pub use status::{HostSync, SyncStatus};
use values::{missing_at_source, seen_key};
pub use values::{
    SyncCopy, SyncLabels, SyncOptions, SyncPlan, SyncReport, SyncSource, DEFAULT_CHECKPOINT_BYTES,
    SYNC_ID_PROBE,
};

fn in_scope(s: &Snapshot, opts: &SyncOptions) -> bool {
    opts.hosts.as_ref().is_none_or(|h| h.contains(&s.host))
}

/// The source's labels of `s` that a copy keeps: those the tier filter selects, and only
/// valid tier names (a label becomes a path component, `/<tier>.<n>/<host>/`; the source's
/// records are not this repository's to trust).
fn kept_labels(s: &Snapshot, opts: &SyncOptions) -> Vec<String> {
    s.tiers
        .iter()
        .filter(|t| xstore_retention::validate_tier_name(t).is_ok())
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
        // One record per snapshot (the newest revision): a source that names one twice must
        // not make this repository commit it twice.
        theirs.sort_by_key(|s| (s.id, std::cmp::Reverse(s.revision)));
        theirs.dedup_by_key(|s| s.id);
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
            let root = match copier.copy_snapshot(&c.snapshot) {
                Ok(root) => root,
                Err(e) => match missing_at_source(source, &e) {
                    Some(blob) => {
                        let reason = format!(
                            "snapshot {} of {}: blob {blob} is not in the source (expired there and partly collected?); not copied",
                            c.snapshot.id.short(),
                            c.snapshot.host
                        );
                        copier.set_aside_snapshot()?;
                        source.set_aside(&c.snapshot, &reason)?;
                        tracing::warn!("{reason}");
                        report.set_aside.push(reason);
                        continue;
                    }
                    None => return Err(e.into()),
                },
            };
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
