//! Rebuilding the index from packs and snapshot records (`xstore repair index`).
//!
//! The new index is built in `index.new`, marked complete with a `REBUILT` file, and swapped in
//! by renames. [`finish_index_swap`] completes an interrupted swap on the next writable open.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::index::{BlobLoc, HostRecord, Index, PackRecord};
use crate::lock::WriterLock;
use crate::pack::{self, PackId};
use crate::repo::{list_pack_files, Repository};
use crate::snapshot::Snapshot;
use crate::{fsutil, ChunkId};

/// What `repair index` found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairReport {
    /// Pack files read.
    pub packs: u64,
    /// Packs whose trailer was damaged and whose blobs were recovered by scanning headers.
    pub packs_scanned: u64,
    /// Blobs indexed.
    pub blobs: u64,
    /// Snapshots restored into the index.
    pub snapshots: u64,
    /// Snapshot records that were skipped, with the reason.
    pub skipped: Vec<String>,
}

const REBUILT_MARKER: &str = "REBUILT";

/// Completes (or discards) an index swap interrupted by a crash.
pub(crate) fn finish_index_swap(root: &Path) -> Result<()> {
    let new = root.join("index.new");
    if !new.exists() {
        return Ok(());
    }
    if !new.join(REBUILT_MARKER).exists() {
        fs::remove_dir_all(&new).at(&new)?;
        return Ok(());
    }
    let cur = root.join("index");
    let old = root.join("index.old");
    if old.exists() {
        fs::remove_dir_all(&old).at(&old)?;
    }
    if cur.exists() {
        fs::rename(&cur, &old).at(&cur)?;
    }
    fs::rename(&new, &cur).at(&new)?;
    fs::remove_file(cur.join(REBUILT_MARKER)).at(&cur)?;
    fsutil::sync_dir(root)?;
    if old.exists() {
        fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(())
}

impl Repository {
    /// Rebuilds the index of the repository at `path` from its packs and `snapshots/*.json`,
    /// recomputing every reference count with a full mark pass. Takes the writer lock.
    pub fn repair_index(path: &Path) -> Result<RepairReport> {
        let (config, params) = Repository::load_config(path)?;
        let lock = WriterLock::acquire(&path.join("locks"))?;
        finish_index_swap(path)?;
        let new_dir = path.join("index.new");
        if new_dir.exists() {
            fs::remove_dir_all(&new_dir).at(&new_dir)?;
        }
        let index = Index::open(&new_dir, false)?;
        let mut report = RepairReport::default();
        let mut batch = index.batch();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let mut pack_records: HashMap<PackId, PackRecord> = HashMap::new();
        for (pack_id, file) in list_pack_files(&path.join("packs"))? {
            let bytes = fs::read(&file).at(&file)?;
            let entries = match pack::read_trailer(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(pack = %pack_id, error = %e, "damaged trailer; scanning blob headers");
                    report.packs_scanned += 1;
                    pack::scan_blobs(&bytes)
                }
            };
            report.packs += 1;
            // Dead until a live blob located here is found (fixed after the mark pass).
            let record = PackRecord {
                size: bytes.len() as u64,
                blobs: entries.len() as u32,
                dead_bytes: entries.iter().map(pack::PackEntry::span).sum(),
            };
            batch.put_pack(&pack_id, &record)?;
            pack_records.insert(pack_id, record);
            for e in entries {
                if seen.insert(e.id) {
                    report.blobs += 1;
                    batch.put_blob(&e.id, &BlobLoc::at(pack_id, &e, 0))?;
                }
            }
        }
        batch.commit()?;
        let repo = Repository::from_parts(path, config, params, index, Some(lock));
        let mut snapshots = Vec::new();
        let snap_dir = path.join("snapshots");
        for item in fs::read_dir(&snap_dir).at(&snap_dir)? {
            let item = item.at(&snap_dir)?;
            let p = item.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = fs::read(&p).at(&p)?;
            match Snapshot::decode(&bytes) {
                Ok(s) if repo.index.blob(&s.root)?.is_some() => snapshots.push(s),
                Ok(s) => report.skipped.push(format!(
                    "{}: root tree {} missing from packs",
                    p.display(),
                    s.root
                )),
                Err(e) => report.skipped.push(format!("{}: {e}", p.display())),
            }
        }
        snapshots.sort_by_key(|s| (s.start_ns, s.id));
        let (expected, problems, _) = crate::check::mark(&repo, &snapshots)?;
        for p in problems {
            report.skipped.push(format!("{p}"));
        }
        let mut batch = repo.index.batch();
        let ids: Vec<ChunkId> = expected.keys().copied().collect();
        for (id, loc) in ids.iter().zip(repo.index.blobs(&ids)?) {
            if let Some(mut loc) = loc {
                loc.refcount = expected[id];
                batch.put_blob(id, &loc)?;
                if loc.refcount > 0 {
                    if let Some(rec) = pack_records.get_mut(&loc.pack) {
                        rec.dead_bytes = rec.dead_bytes.saturating_sub(loc.span());
                    }
                }
            }
        }
        for (id, rec) in &pack_records {
            batch.put_pack(id, rec)?;
        }
        let mut hosts: HashMap<&str, Vec<&Snapshot>> = HashMap::new();
        for s in &snapshots {
            batch.put_snapshot(s)?;
            hosts.entry(s.host.as_str()).or_default().push(s);
        }
        for (name, oldest_first) in &hosts {
            batch.put_host(name, &HostRecord::of(oldest_first.iter().copied()))?;
        }
        batch.commit()?;
        repo.index.flush()?;
        report.snapshots = snapshots.len() as u64;
        drop(repo);
        fsutil::write_atomic(&new_dir.join(REBUILT_MARKER), b"complete\n")?;
        finish_index_swap(path)?;
        Ok(report)
    }
}

/// Unused-pack check helper for tests and tools: ids of pack files on disk.
pub fn pack_files(path: &Path) -> Result<Vec<PackId>> {
    Ok(list_pack_files(&path.join("packs"))?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}
