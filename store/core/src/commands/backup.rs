//! Ingest: walk a [`Source`], chunk and hash files, store new blobs in packs, build the Merkle
//! tree of directories, and commit everything in one atomic index batch (ARCHITECTURE.md invariant 2).
//!
//! Parallelism: sibling entries of a directory are processed with rayon; inside a large file
//! the reading thread chunks and hashes while compression of new chunks runs on other workers
//! (at most [`MAX_INFLIGHT_CHUNKS`] per file in memory; beyond that the reader compresses inline,
//! so memory stays bounded and no worker ever blocks waiting for another).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use xstore_chunker::{ChunkId, StreamChunker};

use super::globs::PathGlobs;
use super::retention::TierChoice;
use crate::clock::now_ns;
use crate::commands::retention::TierEntry;
use crate::commands::shared_ingest::{Claim, SharedIngest, WaitBudget};
use crate::error::{BackupError, Error, Result};
use crate::pack::rolling::RollingPacks;
use crate::pack::{NewBlob, SealedPack};
use crate::progress::Progress;
use crate::repo::{poisoned, Repository};
use crate::source::{FetchedChunk, OpenHint, SentForm, Source};
use crate::txn::Mutation;
use xstore_format::host::HostName;
use xstore_format::meta::{EntryKind, EntryMeta, SourceKind};
use xstore_format::pack::{self, BlobKind};
use xstore_format::snapshot::{
    PathError, Snapshot, SnapshotId, SnapshotStats, SnapshotStatus, MAX_RECORDED_ERRORS,
    SNAPSHOT_VERSION,
};
use xstore_format::tree::{encode_chunk_list, ChunkRef, Content, Entry, Tree, INLINE_CHUNK_LIMIT};

/// Chunks of one file being compressed concurrently, at most.
pub const MAX_INFLIGHT_CHUNKS: usize = 8;
/// A backup checks the free-space reserve each time it has written this much more.
pub const RESERVE_CHECK_BYTES: u64 = 32 * 1024 * 1024;
/// Longest error text kept per failed path in a snapshot record (bytes).
pub const RECORDED_MESSAGE_BYTES: usize = 512;
/// Longest path kept per failed path in a snapshot record (bytes): every path a client can
/// name fits (the agent protocol carries at most 4096 bytes).
pub const RECORDED_PATH_BYTES: usize = MAX_PATH_BYTES;
/// A file that keeps changing is read at most this many times.
const READ_ATTEMPTS: usize = 3;
/// Directories nested deeper than this below a backup path are recorded as failed paths and
/// not descended: the walk recurses per level, and a client decides the depth (a pull's
/// threads get stacks sized for this, fleet/pull.rs).
pub const MAX_DEPTH: usize = 1024;
/// Paths longer than this (bytes) are recorded as failed and not descended (the agent
/// protocol carries paths of at most 4096 bytes).
pub const MAX_PATH_BYTES: usize = 4096;

/// Which snapshot to compare against for unchanged files.
#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The newest snapshot of the same host (the default).
    #[default]
    Latest,
    /// Read every file.
    None,
    /// A given snapshot.
    Snapshot(SnapshotId),
}

/// What to back up and how ([`BackupOptions::new`] for the defaults).
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Host name recorded in the snapshot.
    pub host: HostName,
    /// Absolute (or relative to the current directory) source paths.
    pub paths: Vec<PathBuf>,
    /// Glob patterns; a pattern without `/` matches a file name, one with `/` the full path.
    pub excludes: Vec<String>,
    /// Do not descend into directories on other filesystems than their backup root.
    pub one_file_system: bool,
    /// Parent snapshot for change detection.
    pub parent: ParentChoice,
    /// Live counters for a progress display.
    pub progress: Option<Arc<Progress>>,
    /// Which retention tier the new snapshot enters.
    pub tier: TierChoice,
    /// The snapshot's recorded time (ns since the epoch) instead of now: for imports of
    /// backups made earlier by another tool. Its start and end are both this time.
    pub time_ns: Option<i64>,
    /// Limits on the stored bytes this backup may add (a pull's cap, its account's room
    /// below the hard limit). Crossing one fails the backup before its commit.
    pub budgets: Vec<Arc<StoreBudget>>,
    /// A snapshot of another host to compare with when this backup has no parent (a host
    /// cloned from another of the same account; the caller keeps it within the account).
    /// Its files only suggest what a source may name by chunk id: a file at the same path
    /// with the same size is read as chunk ids first, and the reference's chunks may be
    /// named without their bytes. Nothing is taken from it unread: no file counts as
    /// unchanged by its metadata and no listing is rebuilt from it.
    pub reference: Option<SnapshotId>,
}

impl BackupOptions {
    /// A backup of `paths` as `host`: the parent found by host, paths and tier, the tier
    /// that retention enters first, no excludes, no limits.
    pub fn new(host: HostName, paths: Vec<PathBuf>) -> Self {
        BackupOptions {
            host,
            paths,
            excludes: Vec::new(),
            one_file_system: false,
            parent: ParentChoice::default(),
            progress: None,
            tier: TierChoice::default(),
            time_ns: None,
            budgets: Vec::new(),
            reference: None,
        }
    }
}

/// Stored bytes that backups may still add, shared by every backup that draws on it (the
/// pulls of one account in one run). A failed backup gives back what it took.
#[derive(Debug)]
pub struct StoreBudget {
    what: String,
    limit: u64,
    left: AtomicU64,
}

impl StoreBudget {
    /// A budget of `bytes`, described as `what` in the error of a backup that crosses it
    /// (`account acme's hard limit of 6.0 GiB`).
    pub fn new(what: impl Into<String>, limit: u64, bytes: u64) -> Arc<StoreBudget> {
        Arc::new(StoreBudget {
            what: what.into(),
            limit,
            left: AtomicU64::new(bytes),
        })
    }

    fn take(&self, n: u64) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }

    /// Whether taking `n` more bytes would still leave half the limit: room to store a
    /// chunk uncompressed, which may take about three times its compressed size.
    fn room_to_spare(&self, n: u64) -> bool {
        self.left.load(Ordering::Acquire) >= n.saturating_add(self.limit / 2)
    }
}

/// What a backup counts as it goes, from every thread; its snapshot's statistics at the end.
#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    others: AtomicU64,
    logical: AtomicU64,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    unchanged: AtomicU64,
    skipped: AtomicU64,
    /// Entries left out by an exclude pattern (not in the statistics).
    excluded: AtomicU64,
    new_blobs: AtomicU64,
    new_bytes: AtomicU64,
    new_stored: AtomicU64,
    error_count: AtomicU64,
}

impl Counters {
    fn stats(&self, wire_bytes: u64) -> SnapshotStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SnapshotStats {
            files: get(&self.files),
            dirs: get(&self.dirs),
            other_entries: get(&self.others),
            logical_bytes: get(&self.logical),
            files_read: get(&self.files_read),
            bytes_read: get(&self.bytes_read),
            files_unchanged: get(&self.unchanged),
            new_blobs: get(&self.new_blobs),
            new_bytes: get(&self.new_bytes),
            new_stored_bytes: get(&self.new_stored),
            skipped: get(&self.skipped),
            errors: get(&self.error_count),
            wire_bytes,
        }
    }
}

/// Where a file's chunks lie now and where its previous version's lay: for a chunk to fetch,
/// the previous bytes at the same offsets are the base of a delta
/// ([`crate::source::SourceFile::fetch_chunks_near`]).
struct DeltaLayout<'l> {
    /// Offset in the new file of each chunk id's first occurrence.
    new_offsets: HashMap<ChunkId, u64>,
    /// The previous version's chunks with their offsets, in file order.
    previous: Vec<(u64, &'l ChunkRef)>,
}

impl<'l> DeltaLayout<'l> {
    fn new(new: &[ChunkRef], previous: &'l [ChunkRef]) -> Self {
        let mut new_offsets = HashMap::with_capacity(new.len());
        let mut at = 0u64;
        for c in new {
            new_offsets.entry(c.id).or_insert(at);
            at += u64::from(c.len);
        }
        let mut at = 0u64;
        let previous = previous
            .iter()
            .map(|c| {
                let start = at;
                at += u64::from(c.len);
                (start, c)
            })
            .collect();
        DeltaLayout {
            new_offsets,
            previous,
        }
    }

    /// Per chunk of `batch`: the previous version's chunks that overlap its range,
    /// concatenated; `None` where there are none or one cannot be read (the chunk is then
    /// fetched whole: a base only saves bytes).
    fn bases(&self, repo: &Repository, batch: &[ChunkRef]) -> Vec<Option<Vec<u8>>> {
        batch
            .iter()
            .map(|c| {
                let start = *self.new_offsets.get(&c.id)?;
                let end = start + u64::from(c.len);
                let first = self
                    .previous
                    .partition_point(|(s, p)| s + u64::from(p.len) <= start);
                let mut base = Vec::new();
                for (s, p) in &self.previous[first..] {
                    if *s >= end {
                        break;
                    }
                    base.extend_from_slice(&repo.read_file_chunk(p).ok()?);
                }
                (!base.is_empty()).then_some(base)
            })
            .collect()
    }
}

struct Session<'a> {
    repo: &'a Repository,
    source: &'a dyn Source,
    excludes: PathGlobs,
    one_file_system: bool,
    level: i32,
    /// Blobs this session claimed for writing, with their kind and raw length. A data entry
    /// here holds bytes this session hashed itself.
    pending: Mutex<HashMap<ChunkId, (BlobKind, u32)>>,
    /// The data chunks (id → length) of this host's parent snapshot (or of the reference,
    /// another host of the same account), loaded on first need: the only chunks a source
    /// may name without sending their bytes (no existence oracle beyond the account).
    own_chunks: std::sync::OnceLock<HashMap<ChunkId, u32>>,
    /// The parent snapshot's root tree (or the reference's: [`BackupOptions::reference`]).
    parent_root: Option<ChunkId>,
    /// The previous trees are another host's ([`BackupOptions::reference`]): they suggest
    /// chunk ids, never content.
    previous_is_other_host: bool,
    /// Live blobs verify found damaged: never deduplicated against, and a parent entry that
    /// references one is read again, so this backup stores a fresh copy.
    damaged: HashSet<ChunkId>,
    packs: RollingPacks,
    /// Where new blobs go when backups of one account run together
    /// ([`Repository::backup_shared`]); else into `packs`.
    shared: Option<&'a SharedIngest<'a>>,
    /// How long this backup may still wait for the others sharing `shared`.
    shared_wait: WaitBudget,
    new_parents: Mutex<Vec<(ChunkId, Vec<ChunkId>)>>,
    errors: Mutex<Vec<PathError>>,
    /// What the backup counts as it goes.
    counts: Counters,
    progress: Option<Arc<Progress>>,
    budgets: Vec<Arc<StoreBudget>>,
    /// Stored bytes taken from the budgets so far.
    drawn: AtomicU64,
}

/// Whether a file with `meta` has the content of the parent snapshot's entry (same size,
/// mtime, ctime and inode): it is then not read again.
fn unchanged_file(parent: Option<&Entry>, meta: &EntryMeta) -> bool {
    parent.is_some_and(|p| {
        p.kind == EntryKind::File && p.attrs.content_stamp() == meta.attrs.content_stamp()
    })
}

/// A node of the synthetic root: the directories leading to each backup path.
#[derive(Default)]
struct Synth {
    children: BTreeMap<Vec<u8>, SynthNode>,
}
enum SynthNode {
    Between(Synth),
    Leaf,
}

impl<'a> Session<'a> {
    fn record_error(&self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        // Reported once, by the caller (the CLI prints the snapshot's errors).
        tracing::debug!(path = %path.display(), %message, "not backed up");
        self.counts.error_count.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < MAX_RECORDED_ERRORS {
                // A client chooses both texts: capped, so a snapshot record stays small.
                let path = path.display().to_string();
                e.push(PathError {
                    path: crate::text::capped(&path, RECORDED_PATH_BYTES).into_owned(),
                    message: crate::text::capped(&message, RECORDED_MESSAGE_BYTES).into_owned(),
                });
            }
        }
    }

    /// Whether a parent snapshot's file entry references no damaged blob (then its chunk
    /// list may be reused without reading the file).
    fn intact(&self, entry: &Entry) -> bool {
        if self.damaged.is_empty() {
            return true;
        }
        match &entry.content {
            Content::Chunks(c) => !c.iter().any(|c| self.damaged.contains(&c.id)),
            Content::ChunkList(id) => {
                !self.damaged.contains(id)
                    && self
                        .repo
                        .file_chunks(entry)
                        .is_ok_and(|c| !c.iter().any(|c| self.damaged.contains(&c.id)))
            }
            _ => true,
        }
    }

    /// Drops what a failed backup wrote: the open packs and the sealed ones (no index batch
    /// references them, and only this session knows them), and gives its budgets back.
    /// Returns the error to report.
    fn discard_uncommitted(&self, e: Error) -> Error {
        let drawn = self.drawn.swap(0, Ordering::AcqRel);
        for b in &self.budgets {
            b.give_back(drawn);
        }
        self.packs.abandon(e)
    }

    /// Takes `n` stored bytes from every budget, and checks the free-space reserve each
    /// time another [`RESERVE_CHECK_BYTES`] have been written.
    /// Whether every budget has room to spare for `n` more bytes
    /// ([`StoreBudget::room_to_spare`]): a chunk sent uncompressed may then be stored so.
    fn room_to_spare(&self, n: u64) -> bool {
        self.budgets.iter().all(|b| b.room_to_spare(n))
    }

    fn draw(&self, n: u64) -> Result<()> {
        for (i, b) in self.budgets.iter().enumerate() {
            if !b.take(n) {
                for taken in &self.budgets[..i] {
                    taken.give_back(n);
                }
                return Err(Error::from(BackupError::OverBudget {
                    what: b.what.clone(),
                    limit: b.limit,
                }));
            }
        }
        let before = self.drawn.fetch_add(n, Ordering::AcqRel);
        if before / RESERVE_CHECK_BYTES != (before + n) / RESERVE_CHECK_BYTES || before == 0 {
            // At most RESERVE_CHECK_BYTES more go into the reserve before the next check.
            self.repo.check_reserve()?;
        }
        Ok(())
    }

    /// Claims a blob id for writing: true when neither this session nor the repository has
    /// it, and from then on this caller must write it ([`Session::write_new`]) or fail the backup.
    /// A blob held as another kind is never deduplicated against ([`BackupError::KindClash`]).
    fn claim(&self, id: ChunkId, kind: BlobKind, raw_len: u32) -> Result<bool> {
        let clash = |have: BlobKind| {
            Error::from(BackupError::KindClash {
                id,
                have: have.name(),
                want: kind.name(),
            })
        };
        if let Some(&(have, _)) = self.pending.lock().map_err(poisoned)?.get(&id) {
            return if have == kind {
                Ok(false)
            } else {
                Err(clash(have))
            };
        }
        if let Some(shared) = self.shared.filter(|_| kind == BlobKind::Data) {
            // Data the other backups stored; what they fetch now was waited for already
            // (`fetch_remote`).
            if shared.holds(&ChunkRef { id, len: raw_len })? {
                return Ok(false);
            }
        }
        // A dead blob (refcount 0) counts as absent: gc may drop it at any moment, so this
        // session writes its own copy instead of deduplicating against it (mutation.rs).
        if let Some(live) = self.repo.index.blob(&id)?.filter(|l| l.refcount > 0) {
            if live.kind != kind {
                return Err(clash(live.kind));
            }
            if !self.damaged.contains(&id) {
                return Ok(false);
            }
        }
        if let Some(shared) = self.shared.filter(|_| kind != BlobKind::Data) {
            // Trees and chunk lists the other backups built: identical hosts build the same.
            match shared.claim(id, &self.shared_wait)? {
                Claim::Stored(have) if have == kind => return Ok(false),
                Claim::Stored(have) => return Err(clash(have)),
                Claim::Mine | Claim::Unshared => {}
            }
        }
        match self.pending.lock().map_err(poisoned)?.entry(id) {
            std::collections::hash_map::Entry::Occupied(o) if o.get().0 != kind => {
                Err(clash(o.get().0))
            }
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((kind, raw_len));
                Ok(true)
            }
        }
    }

    /// Claims a file chunk whose bytes this session holds and hashed. Bytes that encode a
    /// tree or chunk list are refused as file content (tree.rs, `is_structure_encoding`).
    fn claim_data(&self, id: ChunkId, raw: &[u8]) -> Result<bool> {
        if xstore_format::tree::is_structure_encoding(raw) {
            return Err(Error::from(BackupError::KindClash {
                id,
                have: "tree or chunk list encoding",
                want: "data",
            }));
        }
        self.claim(id, BlobKind::Data, raw.len() as u32)
    }

    /// Stores a blob unless the repository or this session already has it. Returns whether
    /// it was new.
    fn store(&self, id: ChunkId, kind: BlobKind, raw: &[u8]) -> Result<bool> {
        let new = match kind {
            BlobKind::Data => self.claim_data(id, raw)?,
            _ => self.claim(id, kind, raw.len() as u32)?,
        };
        if !new {
            return Ok(false);
        }
        if let Err(e) = self.write_new(id, kind, raw) {
            if let Some(shared) = self.shared.filter(|_| kind != BlobKind::Data) {
                shared.release(&id);
            }
            return Err(e);
        }
        Ok(true)
    }

    /// The parent snapshot's data chunks ([`Session::own_chunks`]), walked on first need.
    fn own_chunks(&self) -> &HashMap<ChunkId, u32> {
        self.own_chunks.get_or_init(|| {
            let mut out = HashMap::new();
            let Some(root) = self.parent_root else {
                return out;
            };
            let mut seen = HashSet::new();
            let mut stack = vec![root];
            while let Some(id) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                let tree = match self.repo.tree(&id) {
                    Ok(t) => t,
                    Err(e) => {
                        // Chunks under it are asked for again: safe, only slower.
                        tracing::warn!(tree = %id, error = %e, "parent tree unreadable");
                        continue;
                    }
                };
                for e in &tree.entries {
                    match &e.content {
                        Content::Subtree(sub) => stack.push(*sub),
                        Content::Chunks(_) | Content::ChunkList(_) if e.kind == EntryKind::File => {
                            if let Ok(chunks) = self.repo.file_chunks(e) {
                                out.extend(chunks.into_iter().map(|c| (c.id, c.len)));
                            }
                        }
                        _ => {}
                    }
                }
            }
            out
        })
    }

    /// Compresses and appends a claimed blob to the current pack, sealing it when full.
    fn write_new(&self, id: ChunkId, kind: BlobKind, raw: &[u8]) -> Result<()> {
        let (compression, stored) = pack::compress(raw, self.level);
        self.write_stored(id, kind, raw.len() as u32, compression, &stored)
    }

    /// Appends a claimed blob's stored form (already compressed, or raw) to the current pack.
    fn write_stored(
        &self,
        id: ChunkId,
        kind: BlobKind,
        raw_len: u32,
        compression: pack::Compression,
        stored: &[u8],
    ) -> Result<()> {
        let span = pack::blob_span(pack::entry_stored_len(self.repo.encryption(), stored.len()));
        self.draw(span)?;
        let blob = NewBlob {
            id,
            kind,
            compression,
            raw_len,
            stored,
        };
        match self.shared {
            Some(shared) => shared.add(blob)?,
            None => self.packs.add(blob)?,
        }
        self.counts.new_blobs.fetch_add(1, Ordering::Relaxed);
        self.counts
            .new_bytes
            .fetch_add(u64::from(raw_len), Ordering::Relaxed);
        self.counts.new_stored.fetch_add(span, Ordering::Relaxed);
        Ok(())
    }

    /// Stores a tree or chunk-list blob and remembers its children for reference counting.
    /// The bytes are decoded first: a snapshot whose trees we could not read back must never
    /// be committed (the cost is small next to hashing file content).
    fn store_parent(&self, kind: BlobKind, raw: &[u8], children: Vec<ChunkId>) -> Result<ChunkId> {
        self.store_parent_known(kind, raw, children, None)
    }

    /// [`Session::store_parent`] for bytes that may equal a blob this session already read
    /// back and decoded (`read_back`: an unchanged directory's previous tree): then the
    /// decode check is not repeated, since the bytes are those of that blob.
    fn store_parent_known(
        &self,
        kind: BlobKind,
        raw: &[u8],
        children: Vec<ChunkId>,
        read_back: Option<ChunkId>,
    ) -> Result<ChunkId> {
        let id = self.repo.encryption().id_of(raw);
        let verified = match kind {
            _ if read_back == Some(id) => Ok(()),
            BlobKind::Tree => Tree::decode(raw).map(|_| ()),
            _ => xstore_format::tree::decode_chunk_list(raw).map(|_| ()),
        };
        if let Err(source) = verified {
            return Err(Error::CorruptBlob {
                id,
                pack: "(not yet written)".into(),
                source,
            });
        }
        if self.store(id, kind, raw)? {
            self.new_parents
                .lock()
                .map_err(poisoned)?
                .push((id, children));
        }
        Ok(id)
    }

    fn entry_from_meta(
        name: Vec<u8>,
        meta: &EntryMeta,
        kind: EntryKind,
        content: Content,
    ) -> Entry {
        Entry {
            name,
            kind,
            attrs: meta.attrs,
            xattrs: Vec::new(),
            content,
        }
    }

    fn xattrs_of(&self, path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        match self.source.xattrs(path) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "xattrs not read");
                Vec::new()
            }
        }
    }

    /// The previous snapshot's tree of a directory entry, when it had one that still reads.
    fn previous_tree(&self, old: Option<&Entry>) -> Option<Tree> {
        old.and_then(|p| p.subtree())
            .and_then(|id| self.repo.tree(&id).ok())
    }

    /// One entry of a directory. `Ok(None)` when it is skipped or failed (recorded).
    /// `parent_tree` is the previous snapshot's tree of a directory entry (`parent`'s subtree).
    /// `depth` is the entry's nesting below its backup path (the path itself: 0).
    #[allow(clippy::too_many_arguments)]
    fn process_entry(
        &self,
        path: &Path,
        name: Vec<u8>,
        meta: EntryMeta,
        parent: Option<&Entry>,
        parent_tree: Option<Tree>,
        root_dev: u64,
        depth: usize,
    ) -> Result<Option<Entry>> {
        let allowed = match meta.kind {
            SourceKind::Stored(EntryKind::Dir) => self.dir_allowed(path, depth),
            _ => self.path_allowed(path),
        };
        if !allowed {
            return Ok(None);
        }
        let mut entry = match meta.kind {
            SourceKind::Socket => {
                tracing::info!(path = %path.display(), "socket skipped");
                self.counts.skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            SourceKind::Stored(EntryKind::Dir) => {
                self.counts.dirs.fetch_add(1, Ordering::Relaxed);
                let descend = !(self.one_file_system && meta.attrs.dev != root_dev);
                let id = if descend {
                    // The previous tree's id, when that tree was read back and decoded.
                    let read_back = parent_tree.as_ref().and(parent.and_then(|p| p.subtree()));
                    self.walk_dir(path, parent_tree, read_back, root_dev, depth)?
                } else {
                    self.store_parent(BlobKind::Tree, &Tree::default().encode(), Vec::new())?
                };
                Self::entry_from_meta(name, &meta, EntryKind::Dir, Content::Subtree(id))
            }
            SourceKind::Stored(EntryKind::File) => {
                match self.file_entry(path, name, meta, parent)? {
                    Some(e) => e,
                    None => return Ok(None),
                }
            }
            SourceKind::Stored(EntryKind::Symlink) => match self.source.read_link(path) {
                Ok(target) => {
                    self.counts.others.fetch_add(1, Ordering::Relaxed);
                    let mut m = meta;
                    m.attrs.size = target.len() as u64;
                    Self::entry_from_meta(name, &m, EntryKind::Symlink, Content::Target(target))
                }
                Err(e) => {
                    self.record_error(path, format!("reading symlink: {e}"));
                    return Ok(None);
                }
            },
            SourceKind::Stored(EntryKind::CharDevice)
            | SourceKind::Stored(EntryKind::BlockDevice)
            | SourceKind::Stored(EntryKind::Fifo) => {
                self.counts.others.fetch_add(1, Ordering::Relaxed);
                let kind = meta.kind.entry_kind().unwrap_or(EntryKind::Fifo);
                let mut m = meta;
                m.attrs.size = 0;
                Self::entry_from_meta(name, &m, kind, Content::None)
            }
        };
        entry.xattrs = self.xattrs_of(path);
        Ok(Some(entry))
    }

    fn file_entry(
        &self,
        path: &Path,
        name: Vec<u8>,
        meta: EntryMeta,
        parent: Option<&Entry>,
    ) -> Result<Option<Entry>> {
        if let Some(p) = parent.filter(|p| {
            !self.previous_is_other_host && unchanged_file(Some(p), &meta) && self.intact(p)
        }) {
            self.counts.unchanged.fetch_add(1, Ordering::Relaxed);
            self.counts.files.fetch_add(1, Ordering::Relaxed);
            self.counts
                .logical
                .fetch_add(meta.attrs.size, Ordering::Relaxed);
            if let Some(pr) = &self.progress {
                pr.files.fetch_add(1, Ordering::Relaxed);
                pr.bytes.fetch_add(meta.attrs.size, Ordering::Relaxed);
            }
            return Ok(Some(Self::entry_from_meta(
                name,
                &meta,
                EntryKind::File,
                p.content.clone(),
            )));
        }
        let mut file = match self.source.open(path) {
            Ok(f) => f,
            Err(e) => {
                self.record_error(path, format!("open: {e}"));
                return Ok(None);
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = match file.current_meta() {
                Ok(m) if m.kind == SourceKind::Stored(EntryKind::File) => m,
                Ok(_) => {
                    self.record_error(path, "replaced by a non-file while backing up");
                    return Ok(None);
                }
                Err(e) => {
                    self.record_error(path, format!("stat: {e}"));
                    return Ok(None);
                }
            };
            let read = match file.remote_chunks() {
                Some(list) => self.fetch_remote(&mut *file, list, parent),
                None => self.read_chunks(&mut *file, before.attrs.size),
            };
            let chunks = match read {
                Ok(c) => c,
                Err(ReadFailure::Source(e)) => {
                    self.record_error(path, format!("read: {e}"));
                    return Ok(None);
                }
                Err(ReadFailure::Repo(e)) => return Err(e),
            };
            let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
            let after = file.current_meta();
            let stable = matches!(&after, Ok(a) if a.same_content_stamp(&before))
                && total == before.attrs.size;
            if stable || attempt >= READ_ATTEMPTS {
                if !stable {
                    self.record_error(
                        path,
                        format!(
                            "changed while being read ({attempt} attempts); stored the last read"
                        ),
                    );
                }
                self.counts.files_read.fetch_add(1, Ordering::Relaxed);
                self.counts.files.fetch_add(1, Ordering::Relaxed);
                self.counts.logical.fetch_add(total, Ordering::Relaxed);
                if let Some(pr) = &self.progress {
                    pr.files.fetch_add(1, Ordering::Relaxed);
                }
                let mut m = before;
                m.attrs.size = total;
                let content = if chunks.len() > INLINE_CHUNK_LIMIT {
                    let id = self.store_parent(
                        BlobKind::ChunkList,
                        &encode_chunk_list(&chunks),
                        xstore_format::tree::chunk_list_children(&chunks),
                    )?;
                    Content::ChunkList(id)
                } else {
                    Content::Chunks(chunks)
                };
                return Ok(Some(Self::entry_from_meta(
                    name,
                    &m,
                    EntryKind::File,
                    content,
                )));
            }
            tracing::info!(path = %path.display(), "changed while being read, reading again");
            file = match self.source.open(path) {
                Ok(f) => f,
                Err(e) => {
                    self.record_error(path, format!("open: {e}"));
                    return Ok(None);
                }
            };
        }
    }

    /// A file the source chunked itself: ask for the bytes of every chunk the source may not
    /// name without them, verify each against its id and length, store the new ones.
    /// `parent` is the parent snapshot's entry at the same path.
    ///
    /// A chunk may go without its bytes only when this session hashed it already, or when
    /// the repository holds it as a live, undamaged data blob of exactly that length *and*
    /// this host references it itself (the parent entry at the same path, else anywhere in
    /// the parent snapshot). Nothing else counts, so what is asked for never depends on other
    /// accounts' data (ARCHITECTURE.md, "Trust boundary").
    fn fetch_remote(
        &self,
        file: &mut dyn crate::source::SourceFile,
        list: std::io::Result<Vec<ChunkRef>>,
        parent: Option<&Entry>,
    ) -> Result<Vec<ChunkRef>, ReadFailure> {
        let plain_list = list.map_err(ReadFailure::Source)?;
        let max = self.repo.chunker_params().max();
        if let Some(bad) = plain_list.iter().find(|c| c.len == 0 || c.len > max) {
            return Err(ReadFailure::Source(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "source sent chunk {} of {} bytes (max {max})",
                    bad.id, bad.len
                ),
            )));
        }
        let (list, plain_of) = self.repository_refs(&plain_list);
        // Per chunk: Some(known), or None while only the host's own references can tell.
        let mut known: Vec<Option<bool>> = Vec::with_capacity(list.len());
        {
            let ids: Vec<ChunkId> = list.iter().map(|c| c.id).collect();
            let locs = self.repo.index.blobs(&ids)?;
            // Held only for these lookups: the parent walk below may read many trees.
            let pending = self
                .pending
                .lock()
                .map_err(|e| ReadFailure::Repo(poisoned(e)))?;
            for (c, loc) in list.iter().zip(&locs) {
                known.push(match pending.get(&c.id) {
                    Some(&(kind, len)) => Some(kind == BlobKind::Data && len == c.len),
                    None if self.shared.map(|s| s.holds(c)).transpose()? == Some(true) => {
                        Some(true)
                    }
                    None if crate::repo::is_live_data(loc.as_ref(), c)
                        && !self.damaged.contains(&c.id) =>
                    {
                        None
                    }
                    None => Some(false),
                });
            }
        }
        // Deltas only against this host's own previous version (another host's bytes never
        // shape what is asked of this agent), and only when the source sends them.
        let deltas = file.wants_bases() && !self.previous_is_other_host;
        // The parent entry's chunks, when it is an intact file and they are needed: what this
        // host held at the path (ids it may name; bases for deltas).
        let parent_chunks = match deltas || known.contains(&None) {
            true => self.intact_file_chunks(parent),
            false => Vec::new(),
        };
        if known.contains(&None) {
            let same_path: HashMap<ChunkId, u32> =
                parent_chunks.iter().map(|c| (c.id, c.len)).collect();
            for (c, k) in list.iter().zip(known.iter_mut()) {
                if k.is_none() {
                    *k = Some(
                        same_path.get(&c.id) == Some(&c.len)
                            || self.own_chunks().get(&c.id) == Some(&c.len),
                    );
                }
            }
        }
        let mut asked = HashSet::new();
        let wanted: Vec<ChunkRef> = list
            .iter()
            .zip(known)
            .filter(|(c, known)| *known != Some(true) && asked.insert(**c))
            .map(|(c, _)| *c)
            .collect();
        let delta_layout =
            (deltas && !parent_chunks.is_empty()).then(|| DeltaLayout::new(&list, &parent_chunks));
        // In batches, so a large new file never sits in memory whole.
        let mut start = 0;
        while start < wanted.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < wanted.len() && (end == start || bytes < crate::source::FETCH_BATCH_BYTES) {
                bytes += u64::from(wanted[end].len);
                end += 1;
            }
            let mut batch = &wanted[start..end];
            start = end;
            // Chunks another backup of the account fetches are waited for, not asked for.
            let reservation = match self.shared {
                Some(shared) => Some(shared.reserve(batch, &self.shared_wait)?),
                None => None,
            };
            if let Some(r) = &reservation {
                batch = &r.to_fetch;
                if batch.is_empty() {
                    continue;
                }
            }
            let plain_batch: Vec<ChunkRef> = batch
                .iter()
                .map(|c| ChunkRef {
                    id: plain_of.get(&c.id).copied().unwrap_or(c.id),
                    len: c.len,
                })
                .collect();
            let bases = match &delta_layout {
                Some(layout) => layout.bases(self.repo, batch),
                None => Vec::new(),
            };
            let data = file
                .fetch_chunks_near(&plain_batch, &bases)
                .map_err(ReadFailure::Source)?;
            if data.len() != batch.len() {
                return Err(ReadFailure::Source(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "asked for {} chunks, source sent {}",
                        batch.len(),
                        data.len()
                    ),
                )));
            }
            for (c, fetched) in plain_batch.iter().zip(&data) {
                if fetched.data.len() != c.len as usize || ChunkId::of(&fetched.data) != c.id {
                    return Err(ReadFailure::Source(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("chunk {} does not match its id or length", c.id),
                    )));
                }
            }
            for (c, fetched) in batch.iter().zip(data) {
                self.counts
                    .bytes_read
                    .fetch_add(fetched.data.len() as u64, Ordering::Relaxed);
                if !self.claim_data(c.id, &fetched.data)? {
                    continue;
                }
                self.write_fetched(c, fetched)?;
            }
        }
        Ok(list)
    }

    /// Stores a fetched data chunk this session claimed (its bytes verified against `c`).
    fn write_fetched(&self, c: &ChunkRef, fetched: FetchedChunk) -> Result<()> {
        match fetched.sent {
            // The source's frame decompressed to bytes with the right id: store it as is
            // instead of compressing again.
            SentForm::Zstd(z) if z.len() < fetched.data.len() => {
                self.write_stored(c.id, BlobKind::Data, c.len, pack::Compression::Zstd, &z)
            }
            // Sent uncompressed because the source's CPU is the bound: compressing here would
            // make this side's the bound instead. Compact compresses it once it has survived.
            SentForm::Uncompressed if self.room_to_spare(fetched.data.len() as u64) => {
                let none = pack::Compression::None;
                self.write_stored(c.id, BlobKind::Data, c.len, none, &fetched.data)
            }
            _ => self.write_new(c.id, BlobKind::Data, &fetched.data),
        }
    }

    /// The chunks of `entry` when it is an intact file (none otherwise, or when its chunk
    /// list cannot be read).
    fn intact_file_chunks(&self, entry: Option<&Entry>) -> Vec<ChunkRef> {
        match entry {
            Some(e) if e.kind == EntryKind::File && self.intact(e) => {
                self.repo.file_chunks(e).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// The source names chunks by plain BLAKE3 (agents hold no key), the repository by its
    /// own ids (keyed when encrypted): `plain`'s chunks in repository ids, and the plain id of
    /// each, by which the source is asked for bytes and its bytes are verified.
    fn repository_refs(&self, plain: &[ChunkRef]) -> (Vec<ChunkRef>, HashMap<ChunkId, ChunkId>) {
        let encryption = self.repo.encryption();
        if !encryption.is_encrypted() {
            // The ids are the plain ones: nothing to map (lookups fall back to the id itself).
            return (plain.to_vec(), HashMap::new());
        }
        let mut plain_of = HashMap::with_capacity(plain.len());
        let refs = plain
            .iter()
            .map(|c| {
                let id = encryption.id_from_plain(c.id);
                plain_of.insert(id, c.id);
                ChunkRef { id, len: c.len }
            })
            .collect();
        (refs, plain_of)
    }

    /// Chunks, hashes and stores one open file.
    fn read_chunks(
        &self,
        file: &mut dyn crate::source::SourceFile,
        size_hint: u64,
    ) -> Result<Vec<ChunkRef>, ReadFailure> {
        use std::io::Read;
        let params = self.repo.chunker_params();
        let limit = u64::from(params.max()) * 2;
        let mut head = Vec::new();
        if size_hint < limit {
            // Small files (most of a typical tree): one read into a buffer of the file's size,
            // chunked in place; parallelism comes from processing sibling files concurrently.
            head.reserve(size_hint as usize + 1);
            (&mut *file)
                .take(limit)
                .read_to_end(&mut head)
                .map_err(ReadFailure::Source)?;
            if (head.len() as u64) < limit {
                self.counts
                    .bytes_read
                    .fetch_add(head.len() as u64, Ordering::Relaxed);
                if let Some(pr) = &self.progress {
                    pr.bytes.fetch_add(head.len() as u64, Ordering::Relaxed);
                }
                let mut chunks = Vec::new();
                for c in xstore_chunker::chunk_slice(&params, &head) {
                    let start = c.offset as usize;
                    let id = self.repo.encryption().id_from_plain(c.id);
                    self.store(id, BlobKind::Data, &head[start..start + c.length as usize])?;
                    chunks.push(ChunkRef { id, len: c.length });
                }
                return Ok(chunks);
            }
            // It grew past the limit while being read: stream the rest after what we have.
        }
        let inflight = AtomicUsize::new(0);
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let mut chunks = Vec::new();
        let mut stream = StreamChunker::new(params, std::io::Cursor::new(head).chain(file));
        rayon::scope(|scope| -> Result<(), ReadFailure> {
            loop {
                let (chunk, bytes) = match stream.next_chunk() {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => return Err(ReadFailure::Source(e)),
                };
                self.counts
                    .bytes_read
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if let Some(pr) = &self.progress {
                    pr.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                let id = self.repo.encryption().id_from_plain(chunk.id);
                chunks.push(ChunkRef {
                    id,
                    len: chunk.length,
                });
                // Claim before copying: chunks the repository already has (every chunk of
                // an unchanged file read again) cost one lookup, not a copy and a task.
                if !self.claim_data(id, bytes)? {
                    continue;
                }
                if inflight.load(Ordering::Acquire) < MAX_INFLIGHT_CHUNKS {
                    inflight.fetch_add(1, Ordering::AcqRel);
                    let data = bytes.to_vec();
                    let (inflight, failure) = (&inflight, &failure);
                    scope.spawn(move |_| {
                        if let Err(e) = self.write_new(id, BlobKind::Data, &data) {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                        }
                        inflight.fetch_sub(1, Ordering::AcqRel);
                    });
                } else {
                    self.write_new(id, BlobKind::Data, bytes)?;
                }
            }
            Ok(())
        })?;
        if let Some(e) = failure
            .into_inner()
            .map_err(|e| ReadFailure::Repo(poisoned(e)))?
        {
            return Err(ReadFailure::Repo(e));
        }
        Ok(chunks)
    }

    /// A directory and everything below it: its tree blob's id.
    ///
    /// The walk is iterative, never recursive: each directory is a job in one rayon scope
    /// that lists it, starts a job per subdirectory and per batch of other entries, and
    /// returns. Whichever job finishes a directory's last child stores its tree and hands
    /// the entry to the parent in a loop ([`Session::child_done`]), so no thread's stack
    /// grows with the depth a client controls (ARCHITECTURE.md, "Trust boundary").
    /// `depth` is the directory's nesting below its backup path.
    fn walk_dir(
        &self,
        path: &Path,
        previous: Option<Tree>,
        read_back: Option<ChunkId>,
        root_dev: u64,
        depth: usize,
    ) -> Result<ChunkId> {
        let walk = Walk::default();
        let top = Arc::new(DirState::new(path.to_path_buf(), None, read_back, None));
        rayon::scope(|s| self.start_dir(s, &walk, top, previous, root_dev, depth));
        if let Some(e) = walk.failure.into_inner().map_err(poisoned)? {
            return Err(e);
        }
        walk.top
            .into_inner()
            .map_err(poisoned)?
            .ok_or(Error::Internal(
                "the walk ended without the top directory's tree",
            ))
    }

    /// One directory's job: lists it and starts its children's jobs.
    fn start_dir<'s>(
        &'s self,
        s: &rayon::Scope<'s>,
        walk: &'s Walk,
        dir: Arc<DirState>,
        previous: Option<Tree>,
        root_dev: u64,
        depth: usize,
    ) {
        if walk.failed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.spawn_children(s, walk, &dir, previous, root_dev, depth) {
            walk.fail(e);
            return;
        }
        // The count started at one for this job, so no child could finish the directory
        // while its siblings were still being started.
        self.child_done(walk, dir);
    }

    /// Tells the source what this directory's walk will open and list (its hints), and
    /// returns, per child, whether it is a file to read (changed since the parent, or its
    /// parent entry damaged); how many files will be opened; and each subdirectory's
    /// previous tree (loaded once, here, for the hint and for its job).
    fn announce_children(
        &self,
        path: &Path,
        children: &[(Vec<u8>, std::io::Result<EntryMeta>)],
        previous: Option<&Tree>,
        root_dev: u64,
        depth: usize,
    ) -> Result<(Vec<bool>, usize, Vec<Option<Tree>>)> {
        use std::os::unix::ffi::OsStrExt;
        let before = |name: &[u8]| previous.and_then(|t| t.get(name));
        // The files to read that are not excluded are the ones `file_entry` will open.
        let mut to_read = vec![false; children.len()];
        let mut to_open: Vec<OpenHint> = Vec::new();
        for (i, (name, meta)) in children.iter().enumerate() {
            let Some(meta) = meta
                .as_ref()
                .ok()
                .filter(|m| m.kind == SourceKind::Stored(EntryKind::File))
            else {
                continue;
            };
            let old = before(name).filter(|p| p.kind == EntryKind::File && self.intact(p));
            if old.is_some() && !self.previous_is_other_host && unchanged_file(old, meta) {
                continue;
            }
            to_read[i] = true;
            let child = path.join(std::ffi::OsStr::from_bytes(name));
            if !self.excludes.is_match(&child, name) {
                // Another host of the account about to read a file of this path and size
                // (hosts with the same files, pulled at once) sends its bytes, if anyone does.
                let announced = match self.shared {
                    Some(shared) => shared.announce(&child, meta.attrs.size)?,
                    None => false,
                };
                to_open.push(OpenHint {
                    path: child,
                    size: meta.attrs.size,
                    probably_known: announced
                        || old.is_some_and(|p| p.attrs.size == meta.attrs.size),
                    has_previous: old.is_some() && !self.previous_is_other_host,
                });
            }
        }
        let to_open_count = to_open.len();
        if !to_open.is_empty() {
            self.source.will_open(&to_open);
        }
        // The subdirectories that will be listed, with their previous trees.
        let old_trees: Vec<Option<Tree>> = children
            .iter()
            .map(|(name, meta)| {
                let is_dir = matches!(meta, Ok(m) if m.kind == SourceKind::Stored(EntryKind::Dir));
                is_dir.then(|| self.previous_tree(before(name))).flatten()
            })
            .collect();
        let to_list: Vec<(PathBuf, Option<&Tree>)> = children
            .iter()
            .zip(&old_trees)
            .filter_map(|((name, meta), old_tree)| {
                let meta = meta
                    .as_ref()
                    .ok()
                    .filter(|m| m.kind == SourceKind::Stored(EntryKind::Dir))?;
                let descend = !(self.one_file_system && meta.attrs.dev != root_dev);
                let child = path.join(std::ffi::OsStr::from_bytes(name));
                // Another host's trees are never offered for listings known by digest.
                let known = old_tree.as_ref().filter(|_| !self.previous_is_other_host);
                (descend && depth < MAX_DEPTH && !self.excludes.is_match(&child, name))
                    .then_some((child, known))
            })
            .collect();
        if !to_list.is_empty() {
            self.source.will_list(&to_list);
        }

        Ok((to_read, to_open_count, old_trees))
    }

    /// Lists `dir`, sends the source its hints, and starts a job for each subdirectory and
    /// for each batch of other entries (entries that are skipped resolve at once).
    fn spawn_children<'s>(
        &'s self,
        s: &rayon::Scope<'s>,
        walk: &'s Walk,
        dir: &Arc<DirState>,
        previous: Option<Tree>,
        root_dev: u64,
        depth: usize,
    ) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = dir.path.as_path();
        let listed = match &previous {
            Some(previous) if !self.previous_is_other_host => {
                self.source.list_known(path, previous)
            }
            _ => self.source.list(path),
        };
        let children = match listed {
            Ok(c) => c,
            Err(e) => {
                self.record_error(path, format!("list directory: {e}"));
                Vec::new()
            }
        };
        let previous = previous.map(Arc::new);
        let before = |name: &[u8]| previous.as_deref().and_then(|t| t.get(name));
        let (to_read, to_open_count, old_trees) =
            self.announce_children(path, &children, previous.as_deref(), root_dev, depth)?;
        dir.slots
            .lock()
            .map_err(poisoned)?
            .resize_with(children.len(), || None);
        // Enough batches of files to read to keep every thread busy on a large directory, few
        // enough that a job costs little next to its files.
        let per_job = (to_open_count / (rayon::current_num_threads() * 4)).clamp(1, 64);
        let mut batch: Vec<(usize, PathBuf, Vec<u8>, EntryMeta)> = Vec::new();
        let spawn_batch = |batch: Vec<(usize, PathBuf, Vec<u8>, EntryMeta)>| {
            let (dir, previous) = (Arc::clone(dir), previous.clone());
            dir.left.fetch_add(1, Ordering::AcqRel);
            s.spawn(move |_| {
                if !walk.failed.load(Ordering::Acquire) {
                    if let Err(e) =
                        self.entries_job(&dir, previous.as_deref(), batch, root_dev, depth)
                    {
                        walk.fail(e);
                        return;
                    }
                }
                self.child_done(walk, dir);
            });
        };
        for (slot, ((name, meta), old_tree)) in children.into_iter().zip(old_trees).enumerate() {
            let child = path.join(std::ffi::OsStr::from_bytes(&name));
            if self.excludes.is_match(&child, &name) {
                self.counts.excluded.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    self.record_error(&child, format!("stat: {e}"));
                    continue;
                }
            };
            if meta.kind != SourceKind::Stored(EntryKind::Dir) {
                // What needs no read (an unchanged file, a symlink, a device) costs less than a
                // job: done here. Files to read go to jobs, to be read in parallel.
                if !to_read[slot] {
                    let old = before(&name);
                    if let Some(entry) =
                        self.process_entry(&child, name, meta, old, None, root_dev, depth + 1)?
                    {
                        dir.put(slot, entry)?;
                    }
                    continue;
                }
                batch.push((slot, child, name, meta));
                if batch.len() >= per_job {
                    spawn_batch(std::mem::take(&mut batch));
                }
                continue;
            }
            if !self.dir_allowed(&child, depth + 1) {
                continue;
            }
            self.counts.dirs.fetch_add(1, Ordering::Relaxed);
            let xattrs = self.xattrs_of(&child);
            if self.one_file_system && meta.attrs.dev != root_dev {
                let id =
                    self.store_parent(BlobKind::Tree, &Tree::default().encode(), Vec::new())?;
                let mut entry =
                    Self::entry_from_meta(name, &meta, EntryKind::Dir, Content::Subtree(id));
                entry.xattrs = xattrs;
                dir.put(slot, entry)?;
                continue;
            }
            // The previous tree's id, when that tree was read back and decoded.
            let read_back = old_tree
                .as_ref()
                .and(before(&name).and_then(|p| p.subtree()));
            let sub = Arc::new(DirState::new(
                child,
                Some((name, meta, xattrs)),
                read_back,
                Some((Arc::clone(dir), slot)),
            ));
            dir.left.fetch_add(1, Ordering::AcqRel);
            s.spawn(move |s| self.start_dir(s, walk, sub, old_tree, root_dev, depth + 1));
        }
        if !batch.is_empty() {
            spawn_batch(batch);
        }
        Ok(())
    }

    /// A batch of a directory's entries that are not directories, into their slots.
    fn entries_job(
        &self,
        dir: &DirState,
        previous: Option<&Tree>,
        batch: Vec<(usize, PathBuf, Vec<u8>, EntryMeta)>,
        root_dev: u64,
        depth: usize,
    ) -> Result<()> {
        for (slot, child, name, meta) in batch {
            let old = previous.and_then(|t| t.get(&name));
            if let Some(entry) =
                self.process_entry(&child, name, meta, old, None, root_dev, depth + 1)?
            {
                dir.put(slot, entry)?;
            }
        }
        Ok(())
    }

    /// One job or child of `dir` is done. Whoever finishes a directory's last one stores its
    /// tree, puts its entry into its parent's slot and goes on with the parent, in a loop.
    fn child_done(&self, walk: &Walk, dir: Arc<DirState>) {
        let mut dir = dir;
        loop {
            if dir.left.fetch_sub(1, Ordering::AcqRel) != 1 || walk.failed.load(Ordering::Acquire) {
                return;
            }
            let id = match self.finish_dir(&dir) {
                Ok(id) => id,
                Err(e) => return walk.fail(e),
            };
            let Some((parent, slot)) = &dir.up else {
                if let Ok(mut top) = walk.top.lock() {
                    *top = Some(id);
                }
                return;
            };
            let taken = dir.entry.lock().map_err(poisoned).map(|mut e| e.take());
            let (name, meta, xattrs) = match taken {
                Ok(Some(e)) => e,
                Ok(None) => return walk.fail(Error::Internal("a directory finished twice")),
                Err(e) => return walk.fail(e),
            };
            let mut entry =
                Self::entry_from_meta(name, &meta, EntryKind::Dir, Content::Subtree(id));
            entry.xattrs = xattrs;
            if let Err(e) = parent.put(*slot, entry) {
                return walk.fail(e);
            }
            dir = Arc::clone(parent);
        }
    }

    /// Stores the tree of a directory whose children are all done.
    fn finish_dir(&self, dir: &DirState) -> Result<ChunkId> {
        let slots = std::mem::take(&mut *dir.slots.lock().map_err(poisoned)?);
        let mut tree = Tree::default();
        tree.entries.extend(slots.into_iter().flatten());
        tree.sort();
        let children = tree.children();
        let id =
            self.store_parent_known(BlobKind::Tree, &tree.encode(), children, dir.read_back)?;
        self.source.listing_done(&dir.path);
        Ok(id)
    }

    /// Whether an entry at `path` may be backed up (its path is not too long); records it as
    /// failed when not.
    fn path_allowed(&self, path: &Path) -> bool {
        if path.as_os_str().len() > MAX_PATH_BYTES {
            self.record_error(
                path,
                format!("path longer than {MAX_PATH_BYTES} bytes; not backed up"),
            );
            return false;
        }
        true
    }

    /// Whether a directory at `path`, `depth` levels below its backup path, may be walked;
    /// records it as failed when not.
    fn dir_allowed(&self, path: &Path, depth: usize) -> bool {
        if !self.path_allowed(path) {
            return false;
        }
        if depth > MAX_DEPTH {
            self.record_error(
                path,
                format!(
                    "directory nested more than {MAX_DEPTH} levels below its backup path; \
                     not backed up"
                ),
            );
            return false;
        }
        true
    }

    /// A synthetic directory on the way to one or more backup paths.
    fn process_synth(&self, path: &Path, synth: &Synth, parent: Option<&Tree>) -> Result<ChunkId> {
        let mut tree = Tree::default();
        for (name, node) in &synth.children {
            use std::os::unix::ffi::OsStrExt;
            let child = path.join(std::ffi::OsStr::from_bytes(name));
            let meta = self.source.stat(&child).map_err(|source| {
                Error::from(BackupError::Source {
                    path: child.clone(),
                    source,
                })
            })?;
            let old = parent.and_then(|t| t.get(name));
            let entry = match node {
                SynthNode::Leaf => {
                    let old_tree = self.previous_tree(old);
                    let dev = meta.attrs.dev;
                    self.process_entry(&child, name.clone(), meta, old, old_tree, dev, 0)?
                }
                SynthNode::Between(inner) => {
                    if meta.kind != SourceKind::Stored(EntryKind::Dir) {
                        return Err(Error::InvalidArgument(format!(
                            "{}: not a directory",
                            child.display()
                        )));
                    }
                    let old_tree = self.previous_tree(old);
                    let id = self.process_synth(&child, inner, old_tree.as_ref())?;
                    let mut e = Self::entry_from_meta(
                        name.clone(),
                        &meta,
                        EntryKind::Dir,
                        Content::Subtree(id),
                    );
                    e.xattrs = self.xattrs_of(&child);
                    Some(e)
                }
            };
            if let Some(e) = entry {
                tree.entries.push(e);
            }
        }
        tree.sort();
        let children = tree.children();
        self.store_parent(BlobKind::Tree, &tree.encode(), children)
    }
}

/// One walk ([`Session::walk_dir`]): its first failure, and the top directory's tree.
#[derive(Default)]
struct Walk {
    failure: Mutex<Option<Error>>,
    /// Set with `failure`: jobs still queued return at once.
    failed: std::sync::atomic::AtomicBool,
    top: Mutex<Option<ChunkId>>,
}

impl Walk {
    fn fail(&self, e: Error) {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(e);
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// A subdirectory's own entry, waiting for its tree: name, metadata and xattrs.
type DirEntryParts = (Vec<u8>, EntryMeta, Vec<(Vec<u8>, Vec<u8>)>);

/// A directory of a walk, from its listing until its tree is stored.
struct DirState {
    path: PathBuf,
    /// Its entry's name, metadata and xattrs in its parent (`None` for the walk's top).
    entry: Mutex<Option<DirEntryParts>>,
    /// The previous tree's id when that tree was read back and decoded.
    read_back: Option<ChunkId>,
    /// Its children's entries, in listing order (`None`: skipped, failed or not yet done).
    slots: Mutex<Vec<Option<Entry>>>,
    /// Jobs and subdirectories not yet done, plus one while its own job runs.
    left: AtomicUsize,
    /// The parent and the slot this directory's entry goes into.
    up: Option<(Arc<DirState>, usize)>,
}

impl DirState {
    fn new(
        path: PathBuf,
        entry: Option<DirEntryParts>,
        read_back: Option<ChunkId>,
        up: Option<(Arc<DirState>, usize)>,
    ) -> Self {
        DirState {
            path,
            entry: Mutex::new(entry),
            read_back,
            slots: Mutex::new(Vec::new()),
            left: AtomicUsize::new(1),
            up,
        }
    }

    fn put(&self, slot: usize, entry: Entry) -> Result<()> {
        if let Some(s) = self.slots.lock().map_err(poisoned)?.get_mut(slot) {
            *s = Some(entry);
        }
        Ok(())
    }
}

enum ReadFailure {
    Source(std::io::Error),
    Repo(Error),
}

impl From<Error> for ReadFailure {
    /// A chunk that may not be stored as file content fails the file, not the backup.
    fn from(e: Error) -> Self {
        match e {
            Error::Backup(ref b) if matches!(**b, BackupError::KindClash { .. }) => {
                ReadFailure::Source(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            }
            e => ReadFailure::Repo(e),
        }
    }
}

/// Normalizes backup paths to absolute, symlink-free paths and builds the synthetic root.
/// Also returns the paths the source says do not exist (a client's listed path on a volume
/// that is not mounted): the backup records them as failed. When every path is missing the
/// backup fails: an empty snapshot would rotate good ones out.
fn synth_root(
    source: &dyn Source,
    paths: &[PathBuf],
) -> Result<(Synth, Vec<String>, Vec<PathBuf>)> {
    use std::os::unix::ffi::OsStrExt;
    let mut root = Synth::default();
    let mut shown = Vec::new();
    let mut abs: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    let mut first_missing = None;
    for p in paths {
        let a = source.canonicalize(p).map_err(|source| {
            Error::from(BackupError::Source {
                path: p.clone(),
                source,
            })
        })?;
        match source.stat(&a) {
            Ok(_) => abs.push(a),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                first_missing.get_or_insert((a.clone(), e));
                missing.push(a);
            }
            Err(source) => return Err(Error::from(BackupError::Source { path: a, source })),
        }
    }
    if abs.is_empty() {
        if let Some((path, source)) = first_missing {
            return Err(Error::from(BackupError::Source { path, source }));
        }
    }
    abs.sort();
    abs.dedup();
    for a in &abs {
        // A path inside another backup path is already covered.
        if abs.iter().any(|o| o != a && a.starts_with(o)) {
            continue;
        }
        shown.push(a.display().to_string());
        let parts: Vec<Vec<u8>> = a
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
                _ => None,
            })
            .collect();
        if parts.is_empty() {
            return Err(Error::InvalidArgument(
                "backing up / as a whole is not supported; list its directories".into(),
            ));
        }
        let mut node = &mut root;
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                node.children.insert(part.clone(), SynthNode::Leaf);
            } else {
                let next = node
                    .children
                    .entry(part.clone())
                    .or_insert_with(|| SynthNode::Between(Synth::default()));
                node = match next {
                    SynthNode::Between(s) => s,
                    SynthNode::Leaf => break,
                };
            }
        }
    }
    Ok((root, shown, missing))
}

/// The exclude patterns of a backup, refused when one matches a backup path itself (nothing
/// would be backed up).
fn excludes_sparing(patterns: &[String], shown_paths: &[String]) -> Result<PathGlobs> {
    let excludes = PathGlobs::new(patterns, "exclude pattern")?;
    for p in shown_paths {
        let path = Path::new(p);
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        if excludes.is_match(path, name) {
            return Err(Error::InvalidArgument(format!(
                "an exclude pattern matches the backup path {p} itself: nothing would be backed up"
            )));
        }
    }
    Ok(excludes)
}

impl Repository {
    /// Backs up `opts.paths` from `source` as a new snapshot of `opts.host`.
    ///
    /// Files that cannot be read are recorded in the snapshot's `errors` and make it
    /// [`SnapshotStatus::Partial`]; repository errors abort without committing anything.
    pub fn backup(
        &self,
        source: &dyn Source,
        opts: &BackupOptions,
    ) -> Result<Snapshot, BackupError> {
        Ok(self.backup_with(source, opts, None)?)
    }

    /// [`Repository::backup`] for backups that run at the same time as others of the same
    /// account and share their file data through `shared` (see [`SharedIngest`]): a chunk
    /// another of them fetched, or is fetching, is not asked for again and is stored once.
    /// Only backups of one account may share one [`SharedIngest`].
    pub fn backup_shared(
        &self,
        source: &dyn Source,
        opts: &BackupOptions,
        shared: &SharedIngest<'_>,
    ) -> Result<Snapshot, BackupError> {
        if !shared.belongs_to(self) {
            return Err(Error::InvalidArgument(
                "the shared ingest belongs to another repository handle".into(),
            )
            .into());
        }
        Ok(self.backup_with(source, opts, Some(shared))?)
    }

    fn backup_with(
        &self,
        source: &dyn Source,
        opts: &BackupOptions,
        shared: Option<&SharedIngest<'_>>,
    ) -> Result<Snapshot> {
        self.require_writable()?;
        if opts.paths.is_empty() {
            return Err(Error::InvalidArgument("no backup paths given".into()));
        }
        let start_ns = opts.time_ns.unwrap_or_else(now_ns);
        let entry = self.tier_entry(&opts.host, &opts.tier)?;
        // From here until commit, blobs this session may have deduplicated against are
        // protected from reclaim (mutation.rs).
        let _session = self.begin_session()?;
        let (parent, reference) = self.previous_snapshots(opts, start_ns)?;
        if let (Some(pr), Some(p)) = (&opts.progress, &parent) {
            // The parent's size estimates the total (pulls of many hosts add theirs up).
            pr.total_bytes
                .fetch_add(p.stats.logical_bytes, Ordering::Relaxed);
        }
        let previous_is_other_host = reference.is_some();
        let parent_root = match parent.as_ref().or(reference.as_ref()) {
            Some(p) => match self.tree(&p.root) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "parent snapshot unreadable; reading every file");
                    None
                }
            },
            None => None,
        };
        let (synth, shown_paths, missing_paths) = synth_root(source, &opts.paths)?;
        let excludes = excludes_sparing(&opts.excludes, &shown_paths)?;
        let session = Session {
            repo: self,
            source,
            excludes,
            one_file_system: opts.one_file_system,
            level: self.config().compression_level,
            pending: Mutex::new(HashMap::new()),
            own_chunks: std::sync::OnceLock::new(),
            parent_root: parent.as_ref().or(reference.as_ref()).map(|p| p.root),
            previous_is_other_host,
            damaged: self.damaged_blobs()?,
            packs: self.rolling_packs(),
            shared,
            shared_wait: WaitBudget::new(),
            new_parents: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            counts: Counters::default(),
            progress: opts.progress.clone(),
            budgets: opts.budgets.clone(),
            drawn: AtomicU64::new(0),
        };
        for m in &missing_paths {
            session.record_error(m, "listed for backup but does not exist; not backed up");
        }
        let result = session.process_synth(Path::new("/"), &synth, parent_root.as_ref());
        // A source that broke off (a lost agent connection) walked an incomplete tree.
        let result = result.and_then(|root| {
            source.finish().map_err(|e| {
                Error::from(BackupError::SourceBroken {
                    reason: e.to_string(),
                })
            })?;
            Ok(root)
        });
        let root = match result {
            Ok(r) => r,
            Err(e) => return Err(session.discard_uncommitted(e)),
        };
        let stored_nothing = session.counts.files.load(Ordering::Relaxed) == 0
            && session.counts.others.load(Ordering::Relaxed) == 0
            && session.counts.dirs.load(Ordering::Relaxed) <= shown_paths.len() as u64;
        if stored_nothing && session.counts.excluded.load(Ordering::Relaxed) > 0 {
            return Err(session.discard_uncommitted(Error::InvalidArgument(format!(
                "the exclude patterns left out every entry under {}: no snapshot was committed",
                shown_paths.join(" ")
            ))));
        }
        // The shared data this backup wrote or relies on goes into the index first.
        if let Some(shared) = shared {
            if let Err(e) = shared.flush() {
                return Err(session.discard_uncommitted(e));
            }
        }
        let sealed = match session.packs.finish() {
            Ok(sealed) => sealed,
            Err(e) => return Err(session.discard_uncommitted(e)),
        };
        let errors = session.errors.into_inner().map_err(poisoned)?;
        let stats = session
            .counts
            .stats(source.transferred_bytes().unwrap_or(0));
        let error_count = stats.errors;
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            id: SnapshotId::random().map_err(|e| Error::System {
                what: "random bytes for the snapshot id",
                reason: e.to_string(),
            })?,
            host: opts.host.clone(),
            paths: shown_paths,
            start_ns,
            end_ns: opts.time_ns.unwrap_or_else(now_ns),
            root,
            parent: parent.as_ref().map(|p| p.id),
            tiers: Vec::new(),
            pinned: false,
            status: if error_count == 0 {
                SnapshotStatus::Complete
            } else {
                SnapshotStatus::Partial
            },
            errors,
            stats,
            client: format!("xstore {}", env!("CARGO_PKG_VERSION")),
            revision: 0,
        };
        let new_parents = session.new_parents.into_inner().map_err(poisoned)?;
        self.commit(&snapshot, sealed, new_parents, entry.as_ref())?;
        Ok(snapshot)
    }

    /// The parent snapshot `opts` chooses and, without one, the reference of another host
    /// (its trees to compare with). Refuses a clock behind the host's newest snapshot: it
    /// would commit a snapshot that sorts before it (its own tier entry could trim it at
    /// once, and `latest` would stay on the older one). Imports give their time explicitly
    /// and are exempt.
    fn previous_snapshots(
        &self,
        opts: &BackupOptions,
        start_ns: i64,
    ) -> Result<(Option<Snapshot>, Option<Snapshot>)> {
        let parent = match &opts.parent {
            ParentChoice::None => None,
            ParentChoice::Snapshot(id) => Some(self.snapshot(id)?),
            // The host record names the newest snapshot: no scan of every record.
            ParentChoice::Latest => match self.index.host(&opts.host)?.and_then(|h| h.latest) {
                Some(id) => Some(self.snapshot(&SnapshotId(id))?),
                None => None,
            },
        };
        if opts.time_ns.is_none() {
            let newest = match (&opts.parent, &parent) {
                (ParentChoice::Latest, p) => p.clone(),
                _ => match self.index.host(&opts.host)?.and_then(|h| h.latest) {
                    Some(id) => Some(self.snapshot(&SnapshotId(id))?),
                    None => None,
                },
            };
            if let Some(newest) = newest.filter(|n| n.start_ns > start_ns) {
                return Err(Error::from(BackupError::ClockBehind {
                    host: opts.host.clone(),
                    newest: crate::text::format_utc(newest.start_ns.div_euclid(1_000_000_000)),
                    now: crate::text::format_utc(start_ns.div_euclid(1_000_000_000)),
                }));
            }
        }
        // Without a parent, a reference of another host gives the trees to compare with.
        let reference = match (&parent, &opts.reference) {
            (None, Some(id)) => Some(self.snapshot(id)?).filter(|r| r.host != opts.host),
            _ => None,
        };
        Ok((parent, reference))
    }

    /// The single atomic index write that makes a snapshot visible (with its tier entry and
    /// whatever that trims), then its durable copy.
    fn commit(
        &self,
        snapshot: &Snapshot,
        sealed: Vec<SealedPack>,
        new_parents: Vec<(ChunkId, Vec<ChunkId>)>,
        entry: Option<&TierEntry>,
    ) -> Result<()> {
        let mut m = Mutation::begin(self)?;
        m.insert_sealed(&sealed)?;
        drop(sealed);
        m.reference_new_blobs(new_parents, snapshot.root)?;
        m.put_snapshot(snapshot.clone());
        if let Some(entry) = entry {
            self.enter_tier(&mut m, entry, snapshot)?;
        }
        m.commit()?;
        Ok(())
    }
}
