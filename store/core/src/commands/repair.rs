//! Rebuilding the index from packs and snapshot records (`xstore repair index`).
//!
//! The new index is built in `index.new`, marked complete with a `REBUILT` file, and swapped in
//! by renames. [`finish_index_swap`] completes an interrupted swap on the next writable open.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use rayon::prelude::*;

use crate::commands::check::{mark, BlobTable, Walk};
use crate::error::{DecodeError, Error, IoContext, Result};
use crate::fsutil;
use crate::idmap::IdMap;
use crate::index::{BlobLoc, HostRecord, Index, PackRecord};
use crate::repo::hold::Hold;
use crate::repo::lock::WriterLock;
use crate::repo::recovery::finish_index_swap;
use crate::repo::Repository;
use crate::storage::{PackInfo, PackStorage};
use xstore_chunker::ChunkId;
use xstore_format::bundle::BundleMember;
use xstore_format::pack::{self, PackId};
use xstore_format::snapshot::{Snapshot, SnapshotId};

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
    /// Whether the old index could be read (its snapshot records take precedence).
    pub old_index: bool,
    /// Snapshots the old index did not hold that were rebuilt from snapshot copies or from
    /// record blobs in packs (ids): forgotten or expired snapshots whose data is still whole.
    pub recovered: Vec<String>,
    /// Snapshot records found only in packs whose newest revision came from there.
    pub from_packs: u64,
    /// Blobs that no snapshot references and that the old index did not know as dead: they
    /// could not be attributed, so gc keeps their packs until `gc --release-held`.
    pub unattributed_blobs: u64,
    /// Packs gc keeps because they hold unattributed blobs.
    pub held_packs: u64,
    /// Snapshot records that were skipped, with the reason.
    pub skipped: Vec<String>,
    /// Packs of a write that crashed before its commit (journal: uncommitted; a current old
    /// index: unknown): not indexed, so their snapshot records do not come back, and removed
    /// as crash recovery removes them.
    pub uncommitted_packs: u64,
}

/// What the old index still says, when it can be read.
struct OldIndex {
    snapshots: HashMap<SnapshotId, Snapshot>,
    /// Blobs it held at refcount 0 (known garbage, not unattributed).
    dead: HashSet<ChunkId>,
    /// Packs it records.
    packs: HashSet<PackId>,
    config: Option<Vec<u8>>,
}

fn read_old_index(root: &Path) -> Option<OldIndex> {
    let index = match Index::open(&crate::layout::index(root), true) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "the old index cannot be read; rebuilding from packs and snapshot copies alone");
            return None;
        }
    };
    let read = || -> Result<OldIndex> {
        let snapshots = index.snapshots()?.into_iter().map(|s| (s.id, s)).collect();
        let mut dead = HashSet::new();
        index.for_each_blob(|id, loc| {
            if loc.refcount == 0 {
                dead.insert(id);
            }
            Ok(())
        })?;
        Ok(OldIndex {
            snapshots,
            dead,
            packs: index.packs()?.into_iter().map(|(id, _)| id).collect(),
            config: index.meta(crate::repo::CONFIG_KEY)?,
        })
    };
    match read() {
        Ok(old) => Some(old),
        Err(e) => {
            tracing::warn!(error = %e, "the old index is damaged; rebuilding from packs and snapshot copies alone");
            None
        }
    }
}

/// Keeps the newest revision of each snapshot record.
pub(crate) fn offer(found: &mut HashMap<SnapshotId, Snapshot>, s: Snapshot) {
    match found.get(&s.id) {
        Some(have) if have.revision >= s.revision => {}
        _ => {
            found.insert(s.id, s);
        }
    }
}

impl Repository {
    /// Rebuilds the index of the repository at `path` from its packs, merging what the old
    /// index still holds, `snapshots/*.json` and the snapshot records stored as blobs in the
    /// packs, and recomputing every reference count with a full mark pass. A committed
    /// snapshot is never dropped: every record the old index holds is kept, and records found
    /// only in copies or packs come back when their data is whole (reported). Blobs that no
    /// snapshot references and that the old index did not know as dead are held: gc keeps
    /// their packs until the operator releases them. Takes the writer lock.
    /// An encrypted repository is unlocked as [`Repository::open`] does.
    pub fn repair_index(path: &Path) -> Result<RepairReport> {
        Self::repair_index_with(path, &crate::repo::keys::KeyAccess::from_env()?)
    }

    /// [`Repository::repair_index`], unlocking an encrypted repository with `keys`.
    pub fn repair_index_with(
        path: &Path,
        keys: &crate::repo::keys::KeyAccess,
    ) -> Result<RepairReport> {
        let (config, params) = Repository::load_config(path)?;
        let encryption = crate::repo::keys::encryption_for(path, &config, keys)?;
        let lock = WriterLock::acquire(&crate::layout::locks(path))?;
        finish_index_swap(path)?;
        let old = read_old_index(path);
        let fingerprint = crate::repo::config_fingerprint(&config);
        if let Some(have) = old.as_ref().and_then(|o| o.config.as_ref()) {
            if *have != fingerprint {
                return Err(crate::repo::config_mismatch(path, &fingerprint, have));
            }
        }
        let new_dir = crate::layout::index_new(path);
        if new_dir.exists() {
            fs::remove_dir_all(&new_dir).at(&new_dir)?;
        }
        crate::failpoint::fail_io("repair-build")?;
        let index = Index::create(&new_dir)?;
        index.set_meta(crate::repo::CONFIG_KEY, &fingerprint)?;
        let mut report = RepairReport {
            old_index: old.is_some(),
            ..Default::default()
        };
        let packs_dir = crate::layout::packs(path);
        let retired = crate::pack::journal::retired(&packs_dir, crate::clock::now_ns())?;
        let (storage, lease) =
            crate::storage::open_for_writing(path, crate::repo::lease_holder(path), &encryption)?;
        let mut files = storage.list()?;
        let leftovers = uncommitted_leftovers(&packs_dir, old.as_ref(), &files, &retired)?;
        files.retain(|p| !leftovers.contains(&p.id));
        report.uncommitted_packs = leftovers.len() as u64;
        let found = index_packs(
            &index,
            storage.as_ref(),
            &encryption,
            files,
            &retired,
            old.as_ref(),
            &mut report,
        )?;
        let repo = Repository::from_parts(
            path,
            config,
            params,
            encryption,
            index,
            Some(lock),
            (storage, lease),
        );
        // One scan of the blob records serves the validation of candidates and the mark pass.
        let blobs = BlobTable::load(&repo)?;
        let snapshots =
            snapshots_to_keep(&repo, &blobs, old.as_ref(), &found.in_packs, &mut report)?;
        let expected = commit_snapshots(&repo, blobs, &snapshots, found.pack_records, &mut report)?;
        let held = unattributed_packs(&repo, &expected, old.as_ref(), &mut report)?;
        drop(repo);
        drop(old);
        write_hold(path, &held, report.unattributed_blobs)?;
        crate::failpoint::fail_io("repair-swap")?;
        // The copies in snapshots/ may differ from the new index: the next writable open
        // (below) resyncs them while this marker exists.
        crate::repo::copies::write_stale_marker_at(path)?;
        fsutil::write_atomic(&crate::layout::rebuilt_marker(&new_dir), b"complete\n")?;
        finish_index_swap(path)?;
        // Every other pack is in the new index now: their markers are settled. The leftovers
        // keep theirs, so the writable open below removes them as crash recovery.
        let mut settled = crate::pack::journal::uncommitted(&packs_dir)?;
        settled.retain(|id| !leftovers.contains(id));
        crate::pack::journal::clear_uncommitted(&packs_dir, &settled)?;
        crate::pack::journal::clear_retired(&packs_dir, &found.unretired)?;
        if let Err(e) = Repository::open(path) {
            tracing::warn!(error = %e, "snapshot copies not resynced; the next writable open will");
        }
        Ok(report)
    }
}

/// What [`index_packs`] found in the packs.
struct FoundInPacks {
    /// Every pack indexed, all its bytes dead until the mark pass finds live blobs in it.
    pack_records: HashMap<PackId, PackRecord>,
    /// The newest revision of each snapshot record blob.
    in_packs: HashMap<SnapshotId, Snapshot>,
    /// Retired packs taken back (they hold blobs no other pack has).
    unretired: Vec<PackId>,
}

/// Indexes every blob of `files` (each at the first pack that holds it) and every pack, in
/// one committed batch of `index`.
fn index_packs(
    index: &Index,
    storage: &dyn PackStorage,
    enc: &xstore_format::encryption::Encryption,
    mut files: Vec<PackInfo>,
    retired: &HashMap<PackId, i64>,
    old: Option<&OldIndex>,
    report: &mut RepairReport,
) -> Result<FoundInPacks> {
    let mut batch = index.batch();
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut found = FoundInPacks {
        pack_records: HashMap::new(),
        in_packs: HashMap::new(),
        unretired: Vec::new(),
    };
    // Retired packs last: a blob is located in a live pack when one holds it, and a
    // retired pack is taken back only when it holds a blob no other pack has.
    files.sort_by_key(|p| retired.contains_key(&p.id));
    // Applied in order, so which pack locates a blob does not change.
    for_each_pack_group(storage, enc, &files, |group| {
        for (info, contents) in group {
            let pack_id = info.id;
            let contents = contents?;
            let locatable = contents.locatable(pack_id);
            let PackContents {
                entries,
                records,
                scanned,
                bundles,
            } = contents;
            for skipped in bundles.into_iter().filter_map(|b| b.err()) {
                report.skipped.push(skipped);
            }
            if scanned {
                report.packs_scanned += 1;
            }
            if retired.contains_key(&pack_id) {
                // Retired for real when a readable old index no longer records it (the
                // gc commit happened); without one, taken back only for blobs no other
                // pack has.
                let gone = match old {
                    Some(o) => !o.packs.contains(&pack_id),
                    None => locatable.iter().all(|(id, _)| seen.contains(id)),
                };
                if gone {
                    continue;
                }
                found.unretired.push(pack_id);
            }
            report.packs += 1;
            // Dead until a live blob located here is found (fixed after the mark pass).
            let record = PackRecord {
                size: info.size,
                blobs: entries.len() as u32,
                dead_bytes: entries.iter().map(pack::PackEntry::span).sum(),
            };
            batch.put_pack(&pack_id, &record)?;
            found.pack_records.insert(pack_id, record);
            for record in records {
                match record {
                    Ok(s) => offer(&mut found.in_packs, s),
                    Err(skipped) => report.skipped.push(skipped),
                }
            }
            for (id, loc) in locatable {
                if seen.insert(id) {
                    report.blobs += 1;
                    batch.put_blob(&id, &loc)?;
                }
            }
        }
        Ok(())
    })?;
    batch.commit()?;
    Ok(found)
}

/// The snapshots the new index keeps, oldest first: every snapshot of the old index whose
/// root is in the packs, and the records found only in copies or packs when their data is
/// whole (reported as recovered).
fn snapshots_to_keep(
    repo: &Repository,
    blob_table: &BlobTable,
    old: Option<&OldIndex>,
    in_packs: &HashMap<SnapshotId, Snapshot>,
    report: &mut RepairReport,
) -> Result<Vec<Snapshot>> {
    let root_missing = |s: &Snapshot| {
        format!(
            "snapshot {} of {}: root tree {} missing from packs",
            s.id.short(),
            s.host,
            s.root
        )
    };
    // Candidates: the snapshot copies and the record blobs (newest revision of each).
    let mut found = in_packs.clone();
    let snap_dir = crate::layout::snapshots(repo.path());
    let items = match fs::read_dir(&snap_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other.at(&snap_dir)?.collect::<Vec<_>>(),
    };
    for item in items {
        let item = item.at(&snap_dir)?;
        let p = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let bytes = fs::read(&p).at(&p)?;
        match Snapshot::decode(&bytes) {
            Ok(s) => offer(&mut found, s),
            Err(e) => report.skipped.push(format!("{}: {e}", p.display())),
        }
    }
    let mut snapshots: Vec<Snapshot> = Vec::new();
    // The old index is the record of what was committed: all of its snapshots stay, with
    // its labels (a copy or blob may lag it).
    for s in old.iter().flat_map(|o| o.snapshots.values()) {
        if repo.index.blob(&s.root)?.is_some() {
            snapshots.push(s.clone());
        } else {
            report.skipped.push(root_missing(s));
        }
        found.remove(&s.id);
    }
    // The rest come back only whole: a record whose data gc already took is garbage. One
    // walk validates them all (a part shared with an earlier snapshot is walked once, and
    // if it was broken it counts against every snapshot that shares it).
    let mut validate = Walk::new(repo, blob_table);
    let mut rest: Vec<Snapshot> = found.into_values().collect();
    rest.sort_by_key(|s| (s.start_ns, s.id));
    for s in rest {
        // The old index knew this record's blob as dead: the snapshot was expired (or
        // the record superseded) on purpose.
        if old.is_some_and(|o| o.dead.contains(&s.record_id(repo.encryption()))) {
            continue;
        }
        if repo.index.blob(&s.root)?.is_none() {
            report.skipped.push(root_missing(&s));
            continue;
        }
        let before = validate.problems.len();
        validate.snapshot(&s, true);
        let problems = validate.problems.get(before..).unwrap_or_default();
        if let Some(p) = problems.first() {
            report.skipped.push(format!(
                "snapshot {} of {}: not whole ({} problems, first: {p})",
                s.id.short(),
                s.host,
                problems.len()
            ));
            continue;
        }
        if old.is_some() {
            report.recovered.push(s.id.to_string());
        }
        if in_packs.get(&s.id).is_some_and(|p| *p == s) {
            report.from_packs += 1;
        }
        snapshots.push(s);
    }
    snapshots.sort_by_key(|s| (s.start_ns, s.id));
    Ok(snapshots)
}

/// Commits `snapshots`, their host records and the reference counts a full mark pass over
/// them gives (packs' dead bytes with them). Returns those counts.
fn commit_snapshots(
    repo: &Repository,
    blob_table: BlobTable,
    snapshots: &[Snapshot],
    mut pack_records: HashMap<PackId, PackRecord>,
    report: &mut RepairReport,
) -> Result<IdMap<u64>> {
    let (expected, problems, _) = mark(repo, &blob_table, snapshots);
    drop(blob_table);
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
    for s in snapshots {
        batch.put_snapshot(s)?;
        hosts.entry(s.host.as_str()).or_default().push(s);
    }
    for (name, oldest_first) in &hosts {
        batch.put_host(name, &HostRecord::of(oldest_first.iter().copied()))?;
    }
    batch.commit()?;
    repo.index.flush()?;
    report.snapshots = snapshots.len() as u64;
    Ok(expected)
}

/// The packs holding blobs that nothing references and that the old index did not know as
/// garbage: gc keeps them until the operator releases them.
fn unattributed_packs(
    repo: &Repository,
    expected: &IdMap<u64>,
    old: Option<&OldIndex>,
    report: &mut RepairReport,
) -> Result<HashSet<PackId>> {
    let mut held: HashSet<PackId> = HashSet::new();
    let known_dead = old.map(|o| &o.dead);
    repo.index.for_each_blob(|id, loc| {
        let referenced = expected.get(&id).is_some_and(|n| *n > 0);
        if !referenced && !known_dead.is_some_and(|d| d.contains(&id)) {
            report.unattributed_blobs += 1;
            held.insert(loc.pack);
        }
        Ok(())
    })?;
    report.held_packs = held.len() as u64;
    Ok(held)
}

/// Writes `gc-hold.json` naming `held` (or removes it when nothing is held).
fn write_hold(path: &Path, held: &HashSet<PackId>, unattributed_blobs: u64) -> Result<()> {
    let hold_path = crate::layout::gc_hold(path);
    if held.is_empty() {
        return crate::pack::journal::remove_if_present(&hold_path);
    }
    let mut packs: Vec<String> = held.iter().map(|p| p.to_string()).collect();
    packs.sort();
    let hold = Hold {
        reason: "repair index found blobs no snapshot references".into(),
        created_ns: crate::clock::now_ns(),
        unattributed_blobs,
        packs,
    };
    fsutil::write_atomic(
        &hold_path,
        &serde_json::to_vec_pretty(&hold).unwrap_or_default(),
    )
}

/// Packs whose trailers are read at the same time ([`for_each_pack_group`]).
const PACK_READERS: usize = 16;
/// The last bytes of a pack read first: its footer and, for packs of up to ~1,200 blobs, its
/// whole trailer.
const TAIL_GUESS: u64 = 64 * 1024;
/// A trailer longer than this (about 1.3 M blobs) is not believed: the pack is scanned.
const MAX_TRAILER: u64 = 64 << 20;

/// What `repair index` takes from one pack.
pub(crate) struct PackContents {
    pub(crate) entries: Vec<pack::PackEntry>,
    /// Its snapshot record blobs, decoded, or why one was skipped.
    pub(crate) records: Vec<std::result::Result<Snapshot, String>>,
    /// The trailer was damaged: the entries come from a scan of the blob headers.
    pub(crate) scanned: bool,
    /// The member tables of its bundles, by the bundle's offset, or why one was skipped.
    pub(crate) bundles: Vec<std::result::Result<(u64, Vec<BundleMember>), String>>,
}

impl PackContents {
    /// The blobs an index locates in this pack: records of their own, and the members of
    /// its readable bundles (with their shares).
    pub(crate) fn locatable(&self, pack_id: PackId) -> Vec<(ChunkId, BlobLoc)> {
        let tables: HashMap<u64, &Vec<BundleMember>> = self
            .bundles
            .iter()
            .filter_map(|b| b.as_ref().ok())
            .map(|(at, table)| (*at, table))
            .collect();
        let mut out = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            if e.kind != pack::BlobKind::Bundle {
                out.push((e.id, BlobLoc::at(pack_id, e, 0)));
                continue;
            }
            if let Some(table) = tables.get(&e.offset) {
                out.extend(BlobLoc::bundle_members(pack_id, e, table));
            }
        }
        out
    }
}

/// Reads the contents of `packs` ([`pack_contents`]) a group at a time, many packs at once
/// (on an object store each read is a request whose latency dominates; locally the threads
/// cost nothing), and hands each group to `f` in the order of `packs`.
pub(crate) fn for_each_pack_group(
    storage: &dyn PackStorage,
    enc: &xstore_format::encryption::Encryption,
    packs: &[PackInfo],
    mut f: impl FnMut(Vec<(&PackInfo, Result<PackContents>)>) -> Result<()>,
) -> Result<()> {
    let readers = rayon::ThreadPoolBuilder::new()
        .num_threads(PACK_READERS)
        .thread_name(|i| format!("xstore-pack-reader-{i}"))
        .build()
        .map_err(|e| Error::System {
            what: "the pack reader threads",
            reason: e.to_string(),
        })?;
    for group in packs.chunks(PACK_READERS * 4) {
        let contents: Vec<Result<PackContents>> = readers.install(|| {
            group
                .par_iter()
                .map(|info| pack_contents(storage, enc, info))
                .collect()
        });
        f(group.iter().zip(contents).collect())?;
    }
    Ok(())
}

/// The blobs of one pack from its trailer, read by range (header, last bytes, and the rest
/// of the trailer when it is longer), and its snapshot records, each read by range. A
/// damaged trailer falls back to reading the whole pack and scanning its blob headers.
fn pack_contents(
    storage: &dyn PackStorage,
    enc: &xstore_format::encryption::Encryption,
    info: &PackInfo,
) -> Result<PackContents> {
    let (id, size) = (info.id, info.size);
    let trailer = (|| -> Result<std::result::Result<Vec<pack::PackEntry>, DecodeError>> {
        let mut header = vec![0u8; pack::PACK_HEADER_LEN.min(size as usize)];
        storage.read_exact(&id, 0, &mut header)?;
        let guess = size.min(TAIL_GUESS);
        let mut tail_start = size - guess;
        let mut tail = vec![0u8; guess as usize];
        storage.read_exact(&id, tail_start, &mut tail)?;
        let footer = tail
            .get(tail.len().saturating_sub(pack::FOOTER_LEN)..)
            .unwrap_or_default();
        if let Ok(start) = pack::trailer_offset(footer) {
            if start < tail_start && size - start <= MAX_TRAILER {
                tail_start = start;
                tail = vec![0u8; (size - start) as usize];
                storage.read_exact(&id, tail_start, &mut tail)?;
            }
        }
        Ok(pack::read_trailer_from_tail(
            enc, &header, &tail, tail_start,
        ))
    })()?;
    let (entries, scanned, whole) = match trailer {
        Ok(entries) => (entries, false, None),
        Err(e) => {
            tracing::warn!(pack = %id, error = %e, "damaged trailer; scanning blob headers");
            let bytes = storage.read_whole(&id)?;
            (pack::scan_blobs(enc, &bytes), true, Some(bytes))
        }
    };
    // A blob's record: from the whole pack when its trailer was damaged, else read by range.
    let record = |e: &pack::PackEntry| -> Result<std::borrow::Cow<'_, [u8]>> {
        Ok(match &whole {
            Some(bytes) => {
                let at = usize::try_from(e.offset).unwrap_or(usize::MAX);
                std::borrow::Cow::Borrowed(bytes.get(at..).unwrap_or_default())
            }
            None => {
                let mut buf = vec![0u8; e.span() as usize];
                storage.read_exact(&id, e.offset, &mut buf)?;
                std::borrow::Cow::Owned(buf)
            }
        })
    };
    let mut records = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.kind == pack::BlobKind::SnapshotRecord)
    {
        let raw = pack::read_record(enc, &record(e)?, e);
        records.push(match raw.map(|raw| Snapshot::decode(&raw)) {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(err)) | Err(err) => {
                Err(format!("snapshot record blob {} in pack {id}: {err}", e.id))
            }
        });
    }
    let mut bundles = Vec::new();
    for e in entries.iter().filter(|e| e.kind == pack::BlobKind::Bundle) {
        // Header checked (a bundle of at most MAX_BUNDLE_RAW) before anything is decompressed.
        bundles.push(
            pack::read_bundle_record(enc, &record(e)?, e.offset, e.stored_len)
                .map(|bundle| (e.offset, bundle.table))
                .map_err(|err| {
                    format!(
                        "bundle {} in pack {id}: {err} (its blobs are not indexed)",
                        e.id
                    )
                }),
        );
    }
    Ok(PackContents {
        entries,
        records,
        scanned,
        bundles,
    })
}

/// Packs proven to be leftovers of a write that crashed before its index commit: the journal
/// marks them uncommitted and a readable old index does not record them, while it records
/// every other pack file (an index older than the packs proves nothing, as in recovery).
/// Without such an index a marked pack may have been committed (only its marker's removal
/// lost), so it is rebuilt like any other.
fn uncommitted_leftovers(
    packs_dir: &Path,
    old: Option<&OldIndex>,
    files: &[PackInfo],
    retired: &HashMap<PackId, i64>,
) -> Result<HashSet<PackId>> {
    let Some(old) = old else {
        return Ok(HashSet::new());
    };
    let uncommitted: HashSet<PackId> = crate::pack::journal::uncommitted(packs_dir)?
        .into_iter()
        .collect();
    let index_is_current = files.iter().all(|p| {
        old.packs.contains(&p.id) || uncommitted.contains(&p.id) || retired.contains_key(&p.id)
    });
    if !index_is_current {
        return Ok(HashSet::new());
    }
    Ok(uncommitted
        .into_iter()
        .filter(|id| !old.packs.contains(id))
        .collect())
}

/// The ids of every pack the repository at `path` stores (its pack files, or its objects in
/// the object store), whether the index knows them or not: for tests and tools.
pub fn pack_files(path: &Path) -> Result<Vec<PackId>> {
    Ok(
        crate::storage::open(path, &xstore_format::encryption::Encryption::Plain)?
            .list()?
            .into_iter()
            .map(|p| p.id)
            .collect(),
    )
}
