//! `compact`: stores data that has survived again, compressed at a high zstd level.
//!
//! Backups and pulls compress at the repository's level (3 by default), which keeps ingest
//! fast; most of what they store lives for weeks or months. Compact takes packs older than
//! a minimum age that it has not written itself, decompresses every live blob (verifying it
//! against its id), compresses it again at a high level and keeps whichever form is smaller,
//! and rewrites the pack through gc's path (`Repository::reclaim`): new packs sealed and
//! durable first, one commit that re-points the blobs (re-validated under the write lock, so
//! a blob revived or protected since is never lost), the old packs retired and deleted by a
//! gc once the grace period has passed. Its dead blobs go, as in a gc rewrite. The packs it
//! writes are marked (`compacted/` keys, FORMAT.md §Index) and never compacted again.
//!
//! The work is bounded: at most `max_bytes` of packs per run and no new group after
//! `max_duration`, committed a group at a time, so a run stopped (or killed) midway keeps
//! what it committed and the next run goes on with the rest.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::gc::{compacted_packs, CopyMode, GcReport};
use crate::error::Result;
use crate::repo::Repository;
use crate::storage::PackInfo;

/// Default [`CompactOptions::level`]: zstd's highest level without `--ultra` (its window
/// would exceed a blob anyway). On a Debian system tree it stores 0.86 of level 3's bytes.
pub const DEFAULT_COMPACT_LEVEL: i32 = 19;

/// Packs rewritten per commit (by their size).
const GROUP_BYTES: u64 = 256 << 20;

/// What [`Repository::compact`] does.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// The zstd level blobs are compressed at again (1-22).
    pub level: i32,
    /// Only packs stored at least this long ago: data that survived its first rotations
    /// (most of an hourly's new data is expired within a day and would be compacted for
    /// nothing).
    pub min_age: Duration,
    /// At most this many bytes of packs per run.
    pub max_bytes: u64,
    /// No group of packs is started after this much time.
    pub max_duration: Option<Duration>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            level: DEFAULT_COMPACT_LEVEL,
            min_age: Duration::from_secs(24 * 3600),
            max_bytes: 4 << 30,
            max_duration: None,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    /// The level used.
    pub level: i32,
    /// Packs rewritten.
    pub packs_compacted: u64,
    /// Their bytes before.
    pub bytes_before: u64,
    /// The bytes of the packs that replaced them.
    pub bytes_after: u64,
    /// Raw bytes of the live blobs compressed again.
    pub raw_bytes: u64,
    /// Packs left alone this time (a blob revived, protected or unreadable since they were
    /// chosen), with the reason.
    pub skipped: Vec<String>,
    /// Packs that qualify and wait for a later run (the byte or time budget ran out).
    pub packs_remaining: u64,
    /// Their bytes.
    pub bytes_remaining: u64,
    /// Packs too young to compact yet.
    pub packs_too_young: u64,
    /// Why the run stopped before its budget was spent (the free-space reserve reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl Repository {
    /// Compacts packs as [`CompactOptions`] say (module documentation). Needs a writable
    /// handle; the old packs are retired and removed by a later gc after the grace period.
    pub fn compact(&self, opts: &CompactOptions) -> Result<CompactReport> {
        self.require_writable()?;
        let started = Instant::now();
        let level = opts.level.clamp(1, 22);
        let mut report = CompactReport {
            level,
            ..Default::default()
        };
        let chosen = self.compactable(opts, &mut report)?;
        // Groups of about GROUP_BYTES, within the byte budget; the rest waits.
        let mut groups: Vec<Vec<PackInfo>> = Vec::new();
        let mut spent = 0u64;
        let mut group_bytes = 0u64;
        let mut left = Vec::new();
        for p in chosen {
            if !left.is_empty() || spent + p.size > opts.max_bytes {
                left.push(p);
                continue;
            }
            spent += p.size;
            if groups.is_empty() || group_bytes >= GROUP_BYTES {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes += p.size;
            if let Some(last) = groups.last_mut() {
                last.push(p);
            }
        }
        let mut groups = groups.into_iter();
        for group in groups.by_ref() {
            if opts.max_duration.is_some_and(|d| started.elapsed() >= d) {
                left.extend(group);
                break;
            }
            // Compaction is worth doing, not worth a full disk: the new packs take space
            // until a gc deletes the old ones, so it stops at the reserve backups keep.
            if let Err(e) = self.check_reserve() {
                report.stopped = Some(e.to_string());
                left.extend(group);
                break;
            }
            self.compact_group(&group, level, &mut report)?;
        }
        left.extend(groups.flatten());
        report.packs_remaining = left.len() as u64;
        report.bytes_remaining = left.iter().map(|p| p.size).sum();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The packs a compaction may take, oldest first: in the index, not compacted, not held
    /// by `repair index`, not empty, stored at least `min_age` ago (a pack whose time the storage does not say
    /// counts as old).
    fn compactable(
        &self,
        opts: &CompactOptions,
        report: &mut CompactReport,
    ) -> Result<Vec<PackInfo>> {
        let compacted = compacted_packs(self)?;
        // Packs `repair index` held keep blobs it could not attribute: not compact's to drop.
        let held = crate::repo::hold::held_packs(self.path())?;
        let indexed: std::collections::HashMap<_, _> = self.index.packs()?.into_iter().collect();
        let cutoff = crate::clock::now_ns()
            .saturating_sub(i64::try_from(opts.min_age.as_nanos()).unwrap_or(i64::MAX));
        let mut chosen: Vec<PackInfo> = Vec::new();
        for info in self.storage().list()? {
            let Some(record) = indexed.get(&info.id) else {
                continue;
            };
            if compacted.contains(&info.id) || held.contains(&info.id) || record.blobs == 0 {
                continue;
            }
            if info.modified_ns.is_some_and(|t| t > cutoff) {
                report.packs_too_young += 1;
                continue;
            }
            chosen.push(info);
        }
        chosen.sort_by_key(|p| (p.modified_ns.unwrap_or(i64::MIN), p.id));
        Ok(chosen)
    }

    /// Rewrites one group of packs at `level` in one commit.
    fn compact_group(
        &self,
        group: &[PackInfo],
        level: i32,
        report: &mut CompactReport,
    ) -> Result<()> {
        let mut candidates = Vec::with_capacity(group.len());
        let mut gc = GcReport::default();
        for info in group {
            let Some(record) = self.index.pack(&info.id)? else {
                continue;
            };
            let mut c = self.classify(&info.id, record)?;
            c.row = gc.packs.len();
            gc.packs.push(super::gc::GcPack {
                pack: info.id,
                size: record.size,
                dead_bytes: record.dead_bytes,
                live_blobs: c.live.len() as u64,
                live_bytes: c.live.iter().map(|e| e.span()).sum(),
                action: super::gc::GcAction::Rewrite,
                note: None,
            });
            report.raw_bytes += c
                .live
                .iter()
                .map(|e| u64::from(e.entry.raw_len))
                .sum::<u64>();
            candidates.push(c);
        }
        let sizes: std::collections::HashMap<_, _> = group.iter().map(|p| (p.id, p.size)).collect();
        self.reclaim(candidates, CopyMode::Recompress(level), &mut gc, None)?;
        for row in &gc.packs {
            if row.action == super::gc::GcAction::Skip {
                report.skipped.push(format!(
                    "pack {}: {}",
                    row.pack,
                    row.note.as_deref().unwrap_or("left alone")
                ));
            } else {
                report.packs_compacted += 1;
                report.bytes_before += sizes.get(&row.pack).copied().unwrap_or(0);
            }
        }
        report.bytes_after += gc.bytes_written;
        Ok(())
    }
}
