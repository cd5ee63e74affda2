//! Copying one run's snapshots: the source's trees walked children first without recursion,
//! ids translated, what is missing read in batches, verified, written to new packs, committed
//! snapshot by snapshot with checkpoints in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use xstore_chunker::ChunkId;
use xstore_format::pack::{self, BlobKind};
use xstore_format::snapshot::Snapshot;
use xstore_format::tree::{
    chunk_list_children, decode_chunk_list, encode_chunk_list, ChunkRef, Content, Entry, Tree,
};

use super::values::{
    map_key, missing_at_source, seen_key, SyncOptions, SyncReport, SyncSource, SYNC_ID_PROBE,
};
use crate::commands::backup::RESERVE_CHECK_BYTES;
use crate::error::{Error, Result, SyncError};
use crate::pack::rolling::RollingPacks;
use crate::pack::NewBlob;
use crate::progress::Progress;
use crate::repo::{poisoned, Repository};
use crate::txn::Mutation;

/// Subtrees of one directory read ahead in one request, at most.
const PREFETCH_TREES: usize = 256;

/// Blobs asked of a source in one request, at most.
const READ_BATCH_BLOBS: usize = 256;
/// … and at most this many raw bytes.
const READ_BATCH_BYTES: u64 = 64 << 20;

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

/// One run's copying state.
pub(super) struct Copier<'a> {
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
    /// Live blobs verify found damaged: never referenced, written again.
    damaged: std::collections::HashSet<ChunkId>,
    /// Source trees read ahead of the walk ([`Copier::prefetch`]), decoded.
    prefetched: Mutex<HashMap<ChunkId, Tree>>,
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

/// Frames of the iterative tree walk: a source tree being rewritten, entry by entry.
struct Frame {
    source: ChunkId,
    tree: Tree,
    next: usize,
}

impl<'a> Copier<'a> {
    pub(super) fn new(
        repo: &'a Repository,
        source: &'a dyn SyncSource,
        opts: &SyncOptions,
    ) -> Result<Self> {
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
            damaged: repo.damaged_blobs()?,
            prefetched: Mutex::new(HashMap::new()),
            current: Mutex::new(String::new()),
            since_checkpoint: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            counts: Counts::default(),
            progress: opts.progress.clone(),
        })
    }

    pub(super) fn fill(&self, r: &mut SyncReport) {
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
    /// that a copy may reference: live, written by this run, or a dead data blob (an
    /// interrupted sync's), which is then protected from reclaim. A dead tree does not count
    /// (its children may be gone); neither does a blob verify found damaged.
    fn holds(&self, id: ChunkId, kind: BlobKind, len: Option<u32>) -> Result<bool> {
        if let Some(&(have, have_len)) = self.written.lock().map_err(poisoned)?.get(&id) {
            if have != kind {
                return Err(self.clash(id, have, kind));
            }
            return Ok(len.is_none_or(|l| l == have_len));
        }
        let Some(loc) = self.repo.index.blob(&id)? else {
            return Ok(false);
        };
        if loc.kind != kind {
            return Err(self.clash(id, loc.kind, kind));
        }
        // Same id, other length: the source's claim is wrong (the bytes, read, will say).
        if len.is_some_and(|l| l != loc.raw_len) || self.damaged.contains(&id) {
            return Ok(false);
        }
        if loc.refcount > 0 {
            return Ok(true);
        }
        if kind != BlobKind::Data {
            return Ok(false);
        }
        self.repo.protect_from_reclaim(&[id])?;
        self.counts.blobs_resumed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
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
            Some(d) => Ok(self.holds(d, kind, len)?.then_some(d)),
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
        if self.same_ids && ours != c.id {
            return Err(self.source_error(Error::CorruptBlob {
                id: c.id,
                pack: "(source)".into(),
                source: xstore_format::DecodeError::Invalid {
                    what: "data blob",
                    offset: 0,
                    reason: "its bytes do not hash to its id".into(),
                },
            }));
        }
        if xstore_format::tree::is_structure_encoding(&raw) {
            return Err(self.clash(ours, BlobKind::Tree, BlobKind::Data));
        }
        self.learn(c.id, ours)?;
        if !self.holds(ours, BlobKind::Data, Some(c.len))? {
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
        if self.holds(ours, kind, None)? {
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

    /// Copies a file's chunk list; `size` is the file's entry's size, which its chunks
    /// must add up to (the tree decoder checks inline chunks; a list is a blob of its own).
    fn copy_chunk_list(&self, source_id: ChunkId, size: u64) -> Result<ChunkId> {
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
        let total: u64 = list.iter().map(|c| u64::from(c.len)).sum();
        if total != size {
            return Err(self.source_error(Error::CorruptBlob {
                id: source_id,
                pack: "(source)".into(),
                source: xstore_format::DecodeError::Invalid {
                    what: "chunk list",
                    offset: 0,
                    reason: format!("chunks hold {total} bytes, the file's size is {size}"),
                },
            }));
        }
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

    fn decode_tree(&self, source_id: ChunkId, raw: &[u8]) -> Result<Tree> {
        Tree::decode(raw).map_err(|source| {
            self.source_error(Error::CorruptBlob {
                id: source_id,
                pack: "(source)".into(),
                source,
            })
        })
    }

    /// The frame of a source tree: read ahead with its siblings ([`Copier::prefetch`]) or
    /// read now; its inline chunks copied.
    fn open_frame(&self, source_id: ChunkId) -> Result<Frame> {
        let ahead = self.prefetched.lock().map_err(poisoned)?.remove(&source_id);
        let tree = match ahead {
            Some(t) => t,
            None => {
                let raw = self.read(&source_id, BlobKind::Tree)?;
                self.decode_tree(source_id, &raw)?
            }
        };
        let mut frame = Frame {
            source: source_id,
            tree,
            next: 0,
        };
        self.copy_inline_chunks(&mut frame.tree)?;
        Ok(frame)
    }

    /// Reads the next [`PREFETCH_TREES`] subtrees of a directory that this repository lacks
    /// in one request, so a source over a network costs a round trip per that many
    /// directories, not per directory. They wait, decoded, until the walk gets to them.
    fn prefetch(&self, siblings: &[Entry]) -> Result<()> {
        let mut want = Vec::new();
        {
            let ahead = self.prefetched.lock().map_err(poisoned)?;
            for id in siblings.iter().filter_map(Entry::subtree) {
                if want.len() >= PREFETCH_TREES {
                    break;
                }
                if !ahead.contains_key(&id) && self.present(id, BlobKind::Tree, None)?.is_none() {
                    want.push((id, BlobKind::Tree));
                }
            }
        }
        want.sort_unstable_by_key(|(id, _)| *id);
        want.dedup();
        if want.len() < 2 {
            return Ok(());
        }
        let raws = self.read_many(&want)?;
        let trees: Vec<Tree> = want
            .par_iter()
            .zip(raws)
            .map(|((id, _), raw)| self.decode_tree(*id, &raw))
            .collect::<Result<_>>()?;
        let mut ahead = self.prefetched.lock().map_err(poisoned)?;
        ahead.extend(want.into_iter().map(|(id, _)| id).zip(trees));
        Ok(())
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
                            // An identical subtree copied meanwhile: what was read ahead goes.
                            self.prefetched.lock().map_err(poisoned)?.remove(&id);
                            entry.content = Content::Subtree(d);
                            top.next += 1;
                        }
                        None => {
                            if self.source.remote()
                                && !self.prefetched.lock().map_err(poisoned)?.contains_key(&id)
                            {
                                let rest = top.tree.entries.get(top.next..).unwrap_or_default();
                                self.prefetch(rest)?;
                            }
                            let frame = self.open_frame(id)?;
                            stack.push(frame);
                        }
                    }
                }
                Content::ChunkList(id) => {
                    let ours = self.copy_chunk_list(*id, entry.attrs.size)?;
                    entry.content = Content::ChunkList(ours);
                    top.next += 1;
                    self.checkpoint_if_due()?;
                }
                // Inline chunks were copied when the frame opened.
                Content::Chunks(_) | Content::None | Content::Target(_) => top.next += 1,
            }
        }
    }

    pub(super) fn copy_snapshot(&self, s: &Snapshot) -> Result<ChunkId> {
        if let Ok(mut c) = self.current.lock() {
            *c = format!("{} of {}", s.id.short(), s.host);
        }
        match self.copy_tree(s.root) {
            Ok(root) => Ok(root),
            // The packs stay sound (a read failed, not a write): the sync may set this
            // snapshot aside and go on ([`Copier::set_aside_snapshot`]).
            Err(e) if missing_at_source(self.source, &e).is_some() => Err(e),
            Err(e) => Err(self.packs.abandon(e)),
        }
    }

    /// After a copy that failed for a blob the source lacks: what was written for the
    /// snapshot is committed unreferenced, as at a checkpoint, and the run forgets it as a
    /// commit does. Later copies take its data blobs as an interrupted run's (protected from
    /// reclaim) and write its trees again (a dead tree's children are not referenced).
    pub(super) fn set_aside_snapshot(&self) -> Result<()> {
        self.checkpoint().map_err(|e| self.packs.abandon(e))?;
        self.new_parents.lock().map_err(poisoned)?.clear();
        self.written.lock().map_err(poisoned)?.clear();
        self.learnt.lock().map_err(poisoned)?.clear();
        Ok(())
    }

    /// Commits the packs written so far, their blobs unreferenced, once enough was written
    /// since the last commit: a killed run loses at most that much.
    fn checkpoint_if_due(&self) -> Result<()> {
        if self.since_checkpoint.load(Ordering::Relaxed) < self.checkpoint_bytes {
            return Ok(());
        }
        self.checkpoint()
    }

    /// Commits the packs written so far, their blobs unreferenced (kept from reclaim while
    /// this run goes on).
    fn checkpoint(&self) -> Result<()> {
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
    pub(super) fn commit_snapshot(
        &self,
        record: &Snapshot,
        entry: Option<&crate::commands::retention::TierEntry>,
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
        committed.map_err(|e| self.packs.abandon(e))?;
        // Everything written is live in the index now, and the translations are saved: the
        // run's memory does not grow with the number of snapshots it copies.
        self.written.lock().map_err(poisoned)?.clear();
        self.learnt.lock().map_err(poisoned)?.clear();
        Ok(())
    }

    /// Ends the run's packs (none are open after the last commit).
    pub(super) fn finish(&self) {
        if let Err(e) = self.packs.finish() {
            tracing::warn!(error = %e, "sync: closing the pack writers");
        }
    }
}
