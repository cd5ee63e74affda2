//! Integrity: a full mark pass over every snapshot (structure and reference counts) and,
//! optionally, re-reading and re-hashing every blob. Also repository statistics.
//!
//! The mark pass walks a map of every blob record loaded by one scan (a RocksDB lookup per
//! DAG edge cost minutes in a fleet); it audits reference counts and finds file chunks that
//! are not data of the referenced length. `stats` counts live blobs per kind (where the stored
//! bytes go). The same walk validates the snapshots `repair` finds, each shared part once.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::index::BlobLoc;
use crate::progress::Progress;
use crate::repo::Repository;
use xstore_chunker::ChunkId;
use xstore_format::pack::{self, BlobKind, PackId};
use xstore_format::snapshot::Snapshot;
use xstore_format::tree::{decode_chunk_list, ChunkRef, Content};

/// What `check` should do beyond the structural pass.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Re-read, decompress and re-hash every blob of every pack.
    pub read_data: bool,
    /// Live counters of `read_data` (`total_bytes` is set first; `bytes` counts stored
    /// bytes verified).
    pub progress: Option<std::sync::Arc<crate::progress::Progress>>,
}

/// One problem found, with everything known about where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What is wrong.
    pub message: String,
    /// The blob concerned (hex in JSON).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "xstore_format::snapshot::opt_display_serde::serialize"
    )]
    pub blob: Option<ChunkId>,
    /// The pack concerned (hex in JSON).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "xstore_format::snapshot::opt_display_serde::serialize"
    )]
    pub pack: Option<PackId>,
    /// A snapshot affected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// A path affected in that snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Problem {
    /// A problem of the repository as a whole.
    fn general(message: String) -> Problem {
        Problem {
            message,
            blob: None,
            pack: None,
            snapshot: None,
            path: None,
        }
    }

    /// A problem of one pack.
    fn of_pack(pack: &PackId, message: String) -> Problem {
        Problem {
            pack: Some(*pack),
            ..Problem::general(message)
        }
    }
}

/// Packs whose recorded dead bytes differ from every blob byte of the pack that is not a
/// live blob located there.
fn dead_byte_problems(
    encryption: &xstore_format::encryption::Encryption,
    packs: &HashMap<PackId, crate::index::PackRecord>,
    live_bytes: &HashMap<PackId, u64>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (id, rec) in packs {
        let blob_bytes = rec
            .size
            .saturating_sub(pack::overhead(encryption, rec.blobs));
        let want = blob_bytes.saturating_sub(live_bytes.get(id).copied().unwrap_or(0));
        if want != rec.dead_bytes {
            problems.push(Problem::of_pack(
                id,
                format!(
                    "pack records {} dead bytes, the index implies {want}",
                    rec.dead_bytes
                ),
            ));
        }
    }
    problems
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(b) = &self.blob {
            write!(f, "; blob {b}")?;
        }
        if let Some(p) = &self.pack {
            write!(f, "; pack {p}")?;
        }
        if let Some(s) = &self.snapshot {
            write!(f, "; snapshot {s}")?;
        }
        if let Some(p) = &self.path {
            write!(f, "; path {p}")?;
        }
        Ok(())
    }
}

/// The result of `check`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots walked.
    pub snapshots: u64,
    /// Distinct tree and chunk-list blobs decoded.
    pub trees: u64,
    /// Blobs in the index.
    pub blobs: u64,
    /// Packs in the index.
    pub packs: u64,
    /// Blobs re-read and re-hashed (`read_data`).
    pub blobs_verified: u64,
    /// Everything wrong, empty when the repository is healthy.
    pub problems: Vec<Problem>,
}

/// Repository statistics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Snapshots.
    pub snapshots: u64,
    /// Hosts with snapshots.
    pub hosts: u64,
    /// Sum over snapshots of their file bytes (what the backups hold logically).
    pub logical_bytes: u64,
    /// Bytes of pack files.
    pub stored_bytes: u64,
    /// Uncompressed bytes of distinct live blobs.
    pub unique_bytes: u64,
    /// Blobs in the index.
    pub blobs: u64,
    /// Blobs no snapshot references (reclaimable).
    pub unreferenced_blobs: u64,
    /// Pack files.
    pub packs: u64,
    /// Pack bytes of dead blobs (what `gc` can reclaim).
    pub dead_bytes: u64,
    /// logical_bytes / stored_bytes.
    pub dedup_ratio: f64,
    /// How long packs retired by gc stay on disk before a later gc deletes them, seconds.
    pub gc_grace_seconds: u64,
    /// Pack files gc retired that are still on disk (waiting for the grace period).
    pub retired_packs: u64,
    /// Bytes of those files.
    pub retired_bytes: u64,
    /// Packs gc keeps because `repair index` held them.
    pub held_packs: u64,
    /// Live blobs (referenced at least once) per kind, in `BlobKind` order: where the stored
    /// bytes go (file data, trees, chunk lists, snapshot records).
    pub by_kind: Vec<KindStats>,
}

/// Live blobs of one kind.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KindStats {
    /// `data`, `tree`, `chunklist`, `snapshot` or `bundle` ([`BlobKind::name`]; the
    /// `bundle` row counts data blobs stored in bundles, by their shares).
    pub kind: &'static str,
    /// Live blobs of this kind.
    pub blobs: u64,
    /// Their uncompressed bytes.
    pub raw_bytes: u64,
    /// Their bytes in packs, headers included ([`BlobLoc::span`]).
    pub stored_bytes: u64,
}

/// Every blob record, from one scan of the index: the mark pass asks about every edge of the
/// DAG (tens of millions in a fleet), and a map answers in nanoseconds where an index lookup
/// of a present key reads a data block (500 hosts × 23 snapshots: 326 s of `check` before).
pub(crate) struct BlobTable(IdMap<BlobLoc>);

impl BlobTable {
    pub(crate) fn load(repo: &Repository) -> Result<Self> {
        let mut map = IdMap::default();
        repo.index.for_each_blob(|id, loc| {
            map.insert(id, loc);
            Ok(())
        })?;
        Ok(BlobTable(map))
    }

    fn get(&self, id: &ChunkId) -> Option<&BlobLoc> {
        self.0.get(id)
    }
}

/// The mark pass: expected reference counts and the problems found on the way.
pub(crate) struct Walk<'a> {
    repo: &'a Repository,
    blobs: &'a BlobTable,
    pub(crate) expected: IdMap<u64>,
    /// Trees and chunk lists walked, and whether everything below them was whole.
    visited: IdMap<bool>,
    pub(crate) problems: Vec<Problem>,
    pub(crate) trees: u64,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(repo: &'a Repository, blobs: &'a BlobTable) -> Self {
        Walk {
            repo,
            blobs,
            expected: IdMap::default(),
            visited: IdMap::default(),
            problems: Vec::new(),
            trees: 0,
        }
    }

    fn problem(
        &mut self,
        message: String,
        blob: Option<ChunkId>,
        loc: Option<&BlobLoc>,
        snap: &Snapshot,
        path: &str,
    ) {
        self.problems.push(Problem {
            message,
            blob,
            pack: loc.map(|l| l.pack),
            snapshot: Some(format!("{} ({})", snap.id.short(), snap.host)),
            path: Some(path.to_string()),
        });
    }

    fn count_children(&mut self, ids: &[ChunkId], snap: &Snapshot, path: &str) {
        for id in ids {
            *self.expected.entry(*id).or_insert(0) += 1;
            if self.blobs.get(id).is_none() {
                self.problem(
                    "referenced blob is not in the index".into(),
                    Some(*id),
                    None,
                    snap,
                    path,
                );
            }
        }
    }

    /// Marks one snapshot: its record blob and root, then everything below. A tree or chunk
    /// list is walked once per `Walk`; with `repeat_damage`, a snapshot that shares a part
    /// found broken under an earlier snapshot gets a problem of its own too (repair decides
    /// snapshot by snapshot), otherwise the damage is reported once.
    pub(crate) fn snapshot(&mut self, s: &Snapshot, repeat_damage: bool) {
        // A snapshot holds its root and the blob of its current record (if it has one:
        // records committed before record blobs existed do not).
        let record = s.record_id(self.repo.encryption());
        if self.blobs.get(&record).is_some() {
            *self.expected.entry(record).or_insert(0) += 1;
        }
        *self.expected.entry(s.root).or_insert(0) += 1;
        if self.blobs.get(&s.root).is_none() {
            self.problem(
                "root tree is not in the index".into(),
                Some(s.root),
                None,
                s,
                "/",
            );
            return;
        }
        self.walk_tree(s.root, s, "/", repeat_damage);
    }

    /// Whether a tree or chunk list was walked already; a broken one counts as a problem of
    /// this snapshot when `repeat_damage`.
    fn seen(&mut self, id: ChunkId, snap: &Snapshot, path: &str, repeat_damage: bool) -> bool {
        match self.visited.get(&id).copied() {
            None => false,
            Some(whole) => {
                if !whole && repeat_damage {
                    let loc = self.blobs.get(&id).copied();
                    self.problem(
                        "shares a damaged part with an earlier snapshot".into(),
                        Some(id),
                        loc.as_ref(),
                        snap,
                        path,
                    );
                }
                true
            }
        }
    }

    fn walk_tree(&mut self, id: ChunkId, snap: &Snapshot, path: &str, repeat_damage: bool) {
        if self.seen(id, snap, path, repeat_damage) {
            return;
        }
        let problems_before = self.problems.len();
        self.visited.insert(id, true);
        let loc = self.blobs.get(&id).copied();
        let tree = match loc.map_or(Err(Error::MissingBlob(id)), |l| {
            self.repo.tree_located(&id, &l)
        }) {
            Ok(t) => t,
            Err(e) => {
                self.problem(
                    format!("tree unreadable: {e}"),
                    Some(id),
                    loc.as_ref(),
                    snap,
                    path,
                );
                self.visited.insert(id, false);
                return;
            }
        };
        self.trees += 1;
        self.count_children(&tree.children(), snap, path);
        let child_path = |e: &xstore_format::tree::Entry| {
            format!("{}/{}", path.trim_end_matches('/'), e.name_lossy())
        };
        for e in &tree.entries {
            match &e.content {
                Content::Subtree(sub) => self.walk_tree(*sub, snap, &child_path(e), repeat_damage),
                Content::ChunkList(list) => {
                    self.walk_chunk_list(*list, snap, &child_path(e), repeat_damage)
                }
                Content::Chunks(chunks) => {
                    self.check_data_edges(chunks, snap, &child_path(e), repeat_damage)
                }
                _ => {}
            }
        }
        if self.problems.len() > problems_before {
            self.visited.insert(id, false);
        }
    }

    /// A file's chunks must be data blobs of exactly the referenced length. An edge to a
    /// tree or chunk list (a pull that deduplicated against one, before the server checked
    /// kinds) is reported with its snapshot and path, and the blob is walked as what it is:
    /// releasing it releases its children, so the expected counts (which `repair index`
    /// writes) must count them as the index does.
    fn check_data_edges(&mut self, chunks: &[ChunkRef], snap: &Snapshot, path: &str, repeat: bool) {
        for c in chunks {
            let Some(loc) = self.blobs.get(&c.id).copied() else {
                continue; // reported by count_children
            };
            if loc.kind == BlobKind::Data && loc.raw_len == c.len {
                continue;
            }
            self.problem(
                format!(
                    "file references a {} blob of {} bytes as {} bytes of data",
                    loc.kind.name(),
                    loc.raw_len,
                    c.len
                ),
                Some(c.id),
                Some(&loc),
                snap,
                path,
            );
            match loc.kind {
                BlobKind::Tree => self.walk_tree(c.id, snap, path, repeat),
                BlobKind::ChunkList => self.walk_chunk_list(c.id, snap, path, repeat),
                _ => {}
            }
        }
    }

    fn walk_chunk_list(&mut self, list: ChunkId, snap: &Snapshot, path: &str, repeat: bool) {
        if self.seen(list, snap, path, repeat) {
            return;
        }
        let loc = self.blobs.get(&list).copied();
        let read = loc.map_or(Err(Error::MissingBlob(list)), |l| {
            self.repo.read_located(&list, &l)
        });
        let problem = match read.map(|raw| decode_chunk_list(&raw)) {
            Ok(Ok(chunks)) => {
                self.trees += 1;
                let ids = xstore_format::tree::chunk_list_children(&chunks);
                let before = self.problems.len();
                self.count_children(&ids, snap, path);
                self.check_data_edges(&chunks, snap, path, repeat);
                self.visited.insert(list, self.problems.len() == before);
                return;
            }
            Ok(Err(e)) => format!("chunk list undecodable: {e}"),
            Err(e) => format!("chunk list unreadable: {e}"),
        };
        self.problem(problem, Some(list), loc.as_ref(), snap, path);
        self.visited.insert(list, false);
    }
}

/// Expected reference counts from a full mark pass over `snapshots` (check and repair).
pub(crate) fn mark(
    repo: &Repository,
    blobs: &BlobTable,
    snapshots: &[Snapshot],
) -> (IdMap<u64>, Vec<Problem>, u64) {
    let mut w = Walk::new(repo, blobs);
    for s in snapshots {
        w.snapshot(s, false);
    }
    (w.expected, w.problems, w.trees)
}

impl Repository {
    /// Verifies the repository; see [`CheckOptions`]. Problems are reported, not returned as
    /// errors; an `Err` means the check itself could not run.
    pub fn check(&self, opts: CheckOptions) -> Result<CheckReport> {
        let snapshots = self.snapshots()?;
        let blob_table = BlobTable::load(self)?;
        let (expected, mut problems, trees) = mark(self, &blob_table, &snapshots);
        drop(blob_table);
        let packs: HashMap<PackId, crate::index::PackRecord> =
            self.index.packs()?.into_iter().collect();
        problems.extend(self.pack_file_problems(&packs)?);
        let mut blobs = 0u64;
        let mut by_pack: HashMap<PackId, Vec<(ChunkId, BlobLoc)>> = HashMap::new();
        let mut live_bytes: HashMap<PackId, u64> = HashMap::new();
        self.index.for_each_blob(|id, loc| {
            blobs += 1;
            if loc.refcount > 0 {
                *live_bytes.entry(loc.pack).or_insert(0) += loc.span();
            }
            let want = expected.get(&id).copied().unwrap_or(0);
            let problem = |message: String| Problem {
                blob: Some(id),
                ..Problem::of_pack(&loc.pack, message)
            };
            if want != loc.refcount {
                problems.push(problem(format!(
                    "reference count is {}, mark pass counts {want}",
                    loc.refcount
                )));
            }
            match packs.get(&loc.pack) {
                None => problems.push(problem("blob's pack is not in the index".into())),
                Some(rec) if loc.offset.saturating_add(loc.span()) > rec.size => {
                    problems.push(problem("blob extends past the end of its pack".into()))
                }
                Some(_) => {}
            }
            if opts.read_data {
                by_pack.entry(loc.pack).or_default().push((id, loc));
            }
            Ok(())
        })?;
        problems.extend(self.host_record_problems(&snapshots)?);
        problems.extend(dead_byte_problems(self.encryption(), &packs, &live_bytes));
        let mut verified = 0u64;
        if opts.read_data {
            let progress = opts.progress.as_deref();
            if let Some(p) = progress {
                let total: u64 = by_pack.values().flatten().map(|(_, l)| l.span()).sum();
                p.total_bytes
                    .store(total, std::sync::atomic::Ordering::Relaxed);
            }
            let results: Vec<(u64, Vec<Problem>)> = by_pack
                .par_iter()
                .map(|(pack_id, blobs)| self.read_pack_data(pack_id, blobs, progress))
                .collect();
            for (ok, found) in results {
                verified += ok;
                problems.extend(found);
            }
        }
        self.name_damaged_paths(&mut problems)?;
        Ok(CheckReport {
            snapshots: snapshots.len() as u64,
            trees,
            blobs,
            packs: packs.len() as u64,
            blobs_verified: verified,
            problems,
        })
    }

    /// Packs whose file is missing or of another size than the index records: one listing
    /// of the storage, not a stat (or a request) per pack.
    fn pack_file_problems(
        &self,
        packs: &HashMap<PackId, crate::index::PackRecord>,
    ) -> Result<Vec<Problem>> {
        let stored: HashMap<PackId, u64> = self
            .storage()
            .list()?
            .into_iter()
            .map(|p| (p.id, p.size))
            .collect();
        let mut problems = Vec::new();
        for (id, rec) in packs {
            let message = match stored.get(id) {
                Some(size) if *size == rec.size => continue,
                Some(size) => format!("pack file is {size} bytes, index says {}", rec.size),
                None => format!(
                    "pack file unreadable: {} does not exist",
                    self.storage().location(id)
                ),
            };
            problems.push(Problem::of_pack(id, message));
        }
        Ok(problems)
    }

    /// Host records (newest, newest complete and count) and per-host snapshot keys that
    /// differ from what the snapshots (oldest first) say.
    fn host_record_problems(&self, snapshots: &[Snapshot]) -> Result<Vec<Problem>> {
        let mut by_host: HashMap<&str, Vec<&Snapshot>> = HashMap::new();
        for snap in snapshots {
            by_host.entry(snap.host.as_str()).or_default().push(snap);
        }
        let mut problems = Vec::new();
        for (host, list) in &by_host {
            let want = crate::index::HostRecord::of(list.iter().copied());
            let have = self.index.host(host)?;
            if have.as_ref() != Some(&want) {
                problems.push(Problem::general(format!(
                    "host record of {host} is {have:?}, the snapshots say {want:?}"
                )));
            }
        }
        for message in self.index.host_snapshot_keys_problems(snapshots)? {
            problems.push(Problem::general(message));
        }
        Ok(problems)
    }

    /// `--read-data` for one pack: the pack hashes to its name, its trailer decodes, each of
    /// `blobs` reads back (decompressed and hashed) and each tree decodes. Returns the blobs
    /// read whole and the problems.
    fn read_pack_data(
        &self,
        pack_id: &PackId,
        blobs: &[(ChunkId, BlobLoc)],
        progress: Option<&Progress>,
    ) -> (u64, Vec<Problem>) {
        let mut found = Vec::new();
        let mut ok = 0u64;
        let pack_problem = |message: String, blob: Option<ChunkId>| Problem {
            blob,
            ..Problem::of_pack(pack_id, message)
        };
        let map = match self.map_pack(pack_id) {
            Ok(m) => m,
            Err(e) => return (0, vec![pack_problem(format!("pack unreadable: {e}"), None)]),
        };
        if ChunkId::of(&map) != *pack_id {
            found.push(pack_problem(
                "pack content does not hash to its name".into(),
                None,
            ));
        }
        if let Err(e) = pack::read_trailer(self.encryption(), &map) {
            found.push(pack_problem(format!("pack trailer: {e}"), None));
        }
        // In pack order, so that a bundle's members follow each other: one bundle decoded
        // at a time.
        let mut blobs = blobs.to_vec();
        blobs.sort_by_key(|(_, loc)| (loc.offset, loc.bundled.map(|b| b.member_offset)));
        let decoded = std::sync::Mutex::new(std::collections::HashMap::new());
        for (id, loc) in &blobs {
            let entry = pack::PackEntry {
                id: *id,
                kind: loc.kind,
                compression: pack::Compression::None,
                raw_len: loc.raw_len,
                stored_len: loc.stored_len,
                offset: loc.offset,
            };
            if let Some(p) = progress {
                p.bytes
                    .fetch_add(loc.span(), std::sync::atomic::Ordering::Relaxed);
            }
            let read = match loc.bundled {
                Some(bundled) => {
                    if let Ok(mut d) = decoded.lock() {
                        d.retain(|at, _| *at == loc.offset);
                    }
                    let member = super::bundling::CandidateBlob {
                        entry,
                        bundled: Some(bundled),
                    };
                    super::bundling::member_raw(self, &map, &member, &decoded)
                }
                None => pack::read_blob(self.encryption(), &map, &entry),
            };
            match read {
                Ok(raw) => {
                    ok += 1;
                    if loc.kind == BlobKind::Tree {
                        if let Err(e) = xstore_format::tree::Tree::decode(&raw) {
                            found.push(pack_problem(format!("tree undecodable: {e}"), Some(*id)));
                        }
                    }
                }
                Err(e) => found.push(pack_problem(format!("blob unreadable: {e}"), Some(*id))),
            }
        }
        (ok, found)
    }

    /// Names the snapshot and path behind each damaged blob the data pass found.
    fn name_damaged_paths(&self, problems: &mut [Problem]) -> Result<()> {
        let damaged: HashSet<ChunkId> = problems
            .iter()
            .filter(|p| p.snapshot.is_none())
            .filter_map(|p| p.blob)
            .collect();
        if damaged.is_empty() {
            return Ok(());
        }
        let affected = self.broken_paths(&damaged)?;
        for p in problems.iter_mut().filter(|p| p.snapshot.is_none()) {
            let first = p.blob.and_then(|b| affected.get(&b)?.first());
            if let Some(b) = first {
                p.snapshot = Some(format!("{} ({})", b.snapshot.short(), b.host));
                p.path = Some(b.path.clone());
            }
        }
        Ok(())
    }

    /// Sizes and counts of the whole repository.
    pub fn stats(&self) -> Result<Stats> {
        let snapshots = self.snapshots()?;
        let hosts: HashSet<&str> = snapshots.iter().map(|s| s.host.as_str()).collect();
        let mut st = Stats {
            snapshots: snapshots.len() as u64,
            hosts: hosts.len() as u64,
            logical_bytes: snapshots.iter().map(|s| s.stats.logical_bytes).sum(),
            ..Stats::default()
        };
        for (_, rec) in self.index.packs()? {
            st.packs += 1;
            st.stored_bytes += rec.size;
            st.dead_bytes += rec.dead_bytes;
        }
        // One slot per kind, at its format code: every code `from_code` accepts.
        st.by_kind = (0..=u8::MAX)
            .map_while(|code| BlobKind::from_code(code, 0).ok())
            .map(|k| KindStats {
                kind: k.name(),
                ..KindStats::default()
            })
            .collect();
        self.index.for_each_blob(|_, loc| {
            st.blobs += 1;
            if loc.refcount == 0 {
                st.unreferenced_blobs += 1;
            } else {
                st.unique_bytes += u64::from(loc.raw_len);
                // Data blobs stored in bundles count in the `bundle` row.
                let kind = match loc.bundled {
                    Some(_) => BlobKind::Bundle,
                    None => loc.kind,
                };
                if let Some(ks) = st.by_kind.get_mut(usize::from(kind.code())) {
                    ks.blobs += 1;
                    ks.raw_bytes += u64::from(loc.raw_len);
                    ks.stored_bytes += loc.span();
                }
            }
            Ok(())
        })?;
        st.gc_grace_seconds = self.retention_settings()?.gc_grace_seconds;
        for id in crate::pack::journal::retired(&self.packs_dir(), crate::clock::now_ns())?.keys() {
            if let Some(size) = self.storage().size(id)? {
                st.retired_packs += 1;
                st.retired_bytes += size;
            }
        }
        st.held_packs = crate::repo::hold::held_packs(self.path())?.len() as u64;
        st.dedup_ratio = if st.stored_bytes > 0 {
            st.logical_bytes as f64 / st.stored_bytes as f64
        } else {
            0.0
        };
        Ok(st)
    }
}
