//! Every change to reference counts goes through a [`Mutation`]: an overlay of index changes
//! applied as one atomic, synced batch while the process-wide write state is locked, so
//! commits, expiries and reclaims of one process are serialized (ARCHITECTURE.md, invariants 4 and 8).
//!
//! The race between a backup and reclaim: a backup session may deduplicate against a blob
//! (find it live in the index, or reuse it from its parent snapshot) that an expiry then
//! kills before the backup commits. Such blobs are *protected*: while any session is active,
//! the ids that die are recorded with an epoch, and reclaim (gc) leaves every blob that died
//! after the oldest active session started. Blobs that were already dead when a session
//! started are never deduplicated against ([`crate::Repository`] treats refcount 0 as absent
//! when claiming), so they need no protection. A commit that references a dead blob revives
//! it (refcount 0 → n, its pack's dead bytes shrink).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::MutexGuard;
use xstore_format::host::HostName;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::index::{BlobLoc, HostRecord, PackRecord};
use crate::repo::copies::{clear_stale_marker, write_stale_marker};
use crate::repo::sessions::WriteState;
use crate::repo::{poisoned, Repository};
use xstore_chunker::ChunkId;
use xstore_format::pack::PackId;
use xstore_format::snapshot::{Snapshot, SnapshotId};

/// What a mutation released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Released {
    /// Snapshots expired.
    pub snapshots: u64,
    /// Blobs whose reference count reached zero.
    pub blobs: u64,
    /// Pack bytes those blobs take (reclaimed by the next gc).
    pub stored_bytes: u64,
}

/// An overlay of index changes, committed atomically.
pub(crate) struct Mutation<'r> {
    repo: &'r Repository,
    pub(crate) state: MutexGuard<'r, WriteState>,
    blobs: HashMap<ChunkId, Option<BlobLoc>>,
    packs: HashMap<PackId, Option<PackRecord>>,
    snapshots: BTreeMap<SnapshotId, Option<Snapshot>>,
    died: Vec<ChunkId>,
    /// Blobs this mutation inserted (their children are counted by the inserter).
    fresh: HashSet<ChunkId>,
    /// Sealed packs this mutation commits: their uncommitted markers go after the commit;
    /// a mutation dropped before its commit point deletes them.
    sealed: Vec<PackId>,
    /// Live blobs marked damaged by verify (loaded on first use).
    damaged: Option<HashSet<ChunkId>>,
    /// Damaged blobs this mutation moved to a fresh copy: their marks go in the batch.
    healed: Vec<ChunkId>,
    /// Children of blobs the caller built, used instead of reading them back when they revive.
    known_children: HashMap<ChunkId, Vec<ChunkId>>,
    /// Default column family keys written (or, `None`, deleted) in the batch.
    meta: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    committed: bool,
    pub(crate) released: Released,
}

impl<'r> Mutation<'r> {
    pub(crate) fn begin(repo: &'r Repository) -> Result<Self> {
        repo.require_writable()?;
        Ok(Mutation {
            repo,
            state: repo.write_state.lock().map_err(poisoned)?,
            blobs: HashMap::new(),
            packs: HashMap::new(),
            snapshots: BTreeMap::new(),
            died: Vec::new(),
            fresh: HashSet::new(),
            sealed: Vec::new(),
            damaged: None,
            healed: Vec::new(),
            known_children: HashMap::new(),
            meta: Vec::new(),
            committed: false,
            released: Released::default(),
        })
    }

    /// Loads the current locations of `ids` not yet in the overlay (one batched read).
    pub(crate) fn prefetch(&mut self, ids: &[ChunkId]) -> Result<()> {
        let mut want: Vec<ChunkId> = ids
            .iter()
            .filter(|id| !self.blobs.contains_key(id))
            .copied()
            .collect();
        want.sort_unstable();
        want.dedup();
        if want.is_empty() {
            return Ok(());
        }
        for (id, loc) in want.iter().zip(self.repo.index.blobs(&want)?) {
            self.blobs.insert(*id, loc);
        }
        Ok(())
    }

    pub(crate) fn loc(&mut self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        if let Some(l) = self.blobs.get(id) {
            return Ok(*l);
        }
        let l = self.repo.index.blob(id)?;
        self.blobs.insert(*id, l);
        Ok(l)
    }

    pub(crate) fn set_loc(&mut self, id: ChunkId, loc: Option<BlobLoc>) {
        self.blobs.insert(id, loc);
    }

    pub(crate) fn pack(&mut self, id: &PackId) -> Result<Option<PackRecord>> {
        if let Some(p) = self.packs.get(id) {
            return Ok(*p);
        }
        let p = self.repo.index.pack(id)?;
        self.packs.insert(*id, p);
        Ok(p)
    }

    pub(crate) fn set_pack(&mut self, id: PackId, rec: Option<PackRecord>) {
        self.packs.insert(id, rec);
    }

    /// Adds a pack sealed for this mutation (written, not yet referenced by the index).
    pub(crate) fn add_sealed_pack(&mut self, id: PackId, size: u64, blobs: u32) {
        self.set_pack(
            id,
            Some(PackRecord {
                size,
                blobs,
                dead_bytes: 0,
            }),
        );
        self.track_sealed(id);
    }

    /// Adds sealed packs and inserts every blob in them ([`Mutation::insert_new`]).
    pub(crate) fn insert_sealed(&mut self, sealed: &[crate::pack::SealedPack]) -> Result<()> {
        for p in sealed {
            self.add_sealed_pack(p.id, p.size, p.entries.len() as u32);
            let ids: Vec<ChunkId> = p.entries.iter().map(|e| e.id).collect();
            self.prefetch(&ids)?;
            for e in &p.entries {
                self.insert_new(&e.id, BlobLoc::at(p.id, e, 0))?;
            }
        }
        Ok(())
    }

    /// Makes this mutation responsible for a sealed pack whose record the caller sets.
    pub(crate) fn track_sealed(&mut self, id: PackId) {
        self.sealed.push(id);
    }

    /// Adds `add` to and takes `sub` from a pack's dead bytes.
    fn adjust_dead(&mut self, pack: &PackId, add: u64, sub: u64) -> Result<()> {
        let mut rec = self.pack(pack)?.ok_or_else(|| Error::Corrupt {
            path: crate::layout::index(self.repo.path()),
            source: xstore_format::DecodeError::Invalid {
                what: "pack record",
                offset: 0,
                reason: format!("pack {pack} holds indexed blobs but has no record"),
            },
        })?;
        rec.dead_bytes = rec.dead_bytes.saturating_add(add).saturating_sub(sub);
        self.packs.insert(*pack, Some(rec));
        Ok(())
    }

    /// Adds references to an existing blob. A dead blob revives (0 → n): its pack's dead
    /// bytes shrink and, unless this mutation inserted it (its children are counted by the
    /// caller), its children regain the reference it had dropped when it died, recursively
    /// down to the first child that is still alive. Revival happens when a backup commits a
    /// reference to a blob that died while the backup ran (mutation.rs, top).
    pub(crate) fn add_refs(&mut self, id: &ChunkId, n: u64) -> Result<()> {
        let mut stack = vec![(*id, n)];
        while let Some((id, n)) = stack.pop() {
            let mut loc = self.loc(&id)?.ok_or(Error::MissingBlob(id))?;
            let revived = loc.refcount == 0 && n > 0;
            loc.refcount += n;
            self.blobs.insert(id, Some(loc));
            if !revived {
                continue;
            }
            self.adjust_dead(&loc.pack, 0, loc.span())?;
            if self.fresh.contains(&id) {
                continue;
            }
            let children = match self.known_children.remove(&id) {
                Some(c) => c,
                None => self.repo.blob_children(&id, &loc)?,
            };
            self.prefetch(&children)?;
            stack.extend(children.into_iter().map(|c| (c, 1)));
        }
        Ok(())
    }

    /// Inserts a blob just written to a sealed pack. When the index already has a live copy
    /// (another session of this process committed it first) the existing copy wins, the new
    /// one counts as dead in its pack, and [`Mutation::inserted`] stays false: the caller must
    /// then not count the blob's children again.
    pub(crate) fn insert_new(&mut self, id: &ChunkId, loc: BlobLoc) -> Result<()> {
        // The new copy is dead until referenced: `add_refs` revives it and takes its bytes
        // back out of its pack's dead bytes.
        self.adjust_dead(&loc.pack, loc.span(), 0)?;
        if let Some(existing) = self.loc(id)?.filter(|existing| existing.refcount > 0) {
            if self.is_damaged(id)? && existing.pack != loc.pack {
                // The live copy is damaged (verify): the blob moves to this copy with its
                // references, the damaged copy's bytes become dead, and the mark goes. Same
                // id, same content: its children are already counted.
                self.adjust_dead(&existing.pack, existing.span(), 0)?;
                self.adjust_dead(&loc.pack, 0, loc.span())?;
                self.blobs.insert(
                    *id,
                    Some(BlobLoc {
                        refcount: existing.refcount,
                        ..loc
                    }),
                );
                self.healed.push(*id);
            }
            return Ok(());
        }
        // Absent, or dead (its old copy is already counted dead in its old pack).
        self.blobs.insert(*id, Some(BlobLoc { refcount: 0, ..loc }));
        self.fresh.insert(*id);
        Ok(())
    }

    /// Whether verify marked this blob's live copy damaged.
    fn is_damaged(&mut self, id: &ChunkId) -> Result<bool> {
        if self.damaged.is_none() {
            self.damaged = Some(self.repo.index.damaged_blobs()?);
        }
        Ok(self.damaged.as_ref().is_some_and(|d| d.contains(id)))
    }

    /// The distinct children of `parent`, a tree or chunk list the caller built: if it
    /// revives in this mutation, they are counted from here instead of read back.
    pub(crate) fn know_children(&mut self, parent: ChunkId, children: Vec<ChunkId>) {
        self.known_children.insert(parent, children);
    }

    /// Adds a new snapshot's references: each parent blob (tree, chunk list) the caller
    /// stored counts its children when this mutation inserts it; one committed before,
    /// unreferenced (shared packs a flush committed, a sync's checkpoint), counts them when
    /// it revives, from the children given here rather than read back. Then `root` gains the
    /// snapshot's reference.
    pub(crate) fn reference_new_blobs(
        &mut self,
        new_parents: Vec<(ChunkId, Vec<ChunkId>)>,
        root: ChunkId,
    ) -> Result<()> {
        let mut deltas: HashMap<ChunkId, u64> = HashMap::new();
        for (parent, children) in new_parents {
            if self.inserted(&parent) {
                for c in children {
                    *deltas.entry(c).or_insert(0) += 1;
                }
            } else {
                self.know_children(parent, children);
            }
        }
        *deltas.entry(root).or_insert(0) += 1;
        let ids: Vec<ChunkId> = deltas.keys().copied().collect();
        self.prefetch(&ids)?;
        drop(ids);
        for (id, n) in deltas {
            self.add_refs(&id, n)?;
        }
        Ok(())
    }

    /// Keeps the blobs this mutation inserted from reclaim while the backup sessions active
    /// now run, as if they died now: shared packs are committed before the snapshots that
    /// reference their blobs (commands/shared_ingest.rs).
    pub(crate) fn protect_inserted(&mut self) {
        self.died.extend(self.fresh.iter().copied());
    }

    /// Whether this mutation inserted `id` as the blob's live copy ([`Mutation::insert_new`]).
    pub(crate) fn inserted(&self, id: &ChunkId) -> bool {
        self.fresh.contains(id)
    }

    /// Drops one reference to `root`; every blob reaching zero drops its children in turn.
    /// Walks only what dies (iteratively: no recursion on hostile depth).
    pub(crate) fn release(&mut self, root: ChunkId) -> Result<()> {
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            let mut loc = self.loc(&id)?.ok_or(Error::MissingBlob(id))?;
            if loc.refcount == 0 {
                return Err(Error::RefcountUnderflow(id));
            }
            loc.refcount -= 1;
            self.blobs.insert(id, Some(loc));
            if loc.refcount > 0 {
                continue;
            }
            self.adjust_dead(&loc.pack, loc.span(), 0)?;
            self.died.push(id);
            self.released.blobs += 1;
            self.released.stored_bytes += loc.span();
            let children = self.repo.blob_children(&id, &loc)?;
            self.prefetch(&children)?;
            stack.extend(children);
        }
        Ok(())
    }

    /// Writes a default column family key in the batch (FORMAT.md §Index).
    pub(crate) fn put_meta(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.meta.push((key, Some(value)));
    }

    /// Removes a key of the default column family.
    pub(crate) fn delete_meta(&mut self, key: Vec<u8>) {
        self.meta.push((key, None));
    }

    /// Adds or replaces a snapshot record.
    pub(crate) fn put_snapshot(&mut self, s: Snapshot) {
        self.snapshots.insert(s.id, Some(s));
    }

    /// Expires a snapshot: removes its record and releases its root and its record blob.
    pub(crate) fn expire(&mut self, s: &Snapshot) -> Result<()> {
        self.snapshots.insert(s.id, None);
        self.released.snapshots += 1;
        // The committed record's blob, whatever copy of the record the caller holds.
        if let Some(committed) = self.repo.index.snapshot(&s.id)? {
            self.release_record_blob(&committed)?;
        }
        self.release(s.root)
    }

    /// Drops the reference a snapshot holds on the blob of its current record (records
    /// committed before record blobs existed have none).
    fn release_record_blob(&mut self, s: &Snapshot) -> Result<()> {
        let id = s.record_id(self.repo.encryption());
        if self.loc(&id)?.is_some_and(|l| l.refcount > 0) {
            self.release(id)?;
        }
        Ok(())
    }

    /// Writes the snapshot records this mutation adds or replaces as blobs of one new pack
    /// (before the commit), so that packs alone can rebuild every committed snapshot. A
    /// replaced record gets the next revision and its old blob loses its reference.
    fn write_record_blobs(&mut self) -> Result<()> {
        let mut records: Vec<Vec<u8>> = Vec::new();
        let ids: Vec<SnapshotId> = self.snapshots.keys().copied().collect();
        for id in ids {
            let old = self.repo.index.snapshot(&id)?;
            let Some(Some(new)) = self.snapshots.get(&id).cloned() else {
                continue;
            };
            let mut new = new;
            if let Some(old) = &old {
                if *old == new {
                    continue;
                }
                // A hostile record may carry u64::MAX: order is all a revision is for.
                new.revision = old.revision.saturating_add(1);
                self.release_record_blob(old)?;
            }
            records.push(new.encode());
            self.snapshots.insert(id, Some(new));
        }
        if records.is_empty() {
            return Ok(());
        }
        let repo = self.repo;
        let mut writer = crate::pack::PackWriter::create(&repo.tmp_dir(), repo.encryption())?;
        for bytes in &records {
            let (compression, stored) =
                xstore_format::pack::compress(bytes, repo.config().compression_level);
            let added = writer.add(crate::pack::NewBlob {
                id: repo.encryption().id_of(bytes),
                kind: xstore_format::pack::BlobKind::SnapshotRecord,
                compression,
                raw_len: bytes.len() as u32,
                stored: &stored,
            });
            if let Err(e) = added {
                writer.discard();
                return Err(e);
            }
        }
        let sealed = writer.seal(repo.storage(), &repo.packs_dir())?;
        self.add_sealed_pack(sealed.id, sealed.size, sealed.entries.len() as u32);
        let ids: Vec<ChunkId> = sealed.entries.iter().map(|e| e.id).collect();
        self.prefetch(&ids)?;
        for e in &sealed.entries {
            self.insert_new(&e.id, BlobLoc::at(sealed.id, e, 0))?;
            self.add_refs(&e.id, 1)?;
        }
        Ok(())
    }

    /// Deletes the packs this mutation sealed (it failed before its commit point).
    fn discard_sealed(&self) {
        if let Err(e) = crate::pack::journal::discard_packs(
            self.repo.storage(),
            &self.repo.packs_dir(),
            &self.sealed,
        ) {
            tracing::warn!(error = %e, "could not remove uncommitted packs; the next writer's recovery will");
        }
    }

    /// Host records after this mutation, for the hosts it touches. Updated incrementally (a
    /// point lookup per changed snapshot); a host is recounted from its snapshots only when
    /// its latest or latest complete snapshot goes.
    fn host_records(&self) -> Result<BTreeMap<HostName, HostRecord>> {
        let index = &self.repo.index;
        let mut added: BTreeMap<HostName, Vec<&Snapshot>> = BTreeMap::new();
        let mut removed: BTreeMap<HostName, Vec<SnapshotId>> = BTreeMap::new();
        for (id, s) in &self.snapshots {
            match (index.snapshot(id)?, s) {
                (None, Some(new)) => added.entry(new.host.clone()).or_default().push(new),
                (Some(old), None) => removed.entry(old.host).or_default().push(*id),
                _ => {}
            }
        }
        let hosts: BTreeSet<HostName> = added.keys().chain(removed.keys()).cloned().collect();
        let mut out = BTreeMap::new();
        for host in hosts {
            let gone = removed.remove(&host).unwrap_or_default();
            let new = added.remove(&host).unwrap_or_default();
            let mut rec = index.host(&host)?.unwrap_or_default();
            let loses_latest = gone
                .iter()
                .any(|id| rec.latest == Some(id.0) || rec.latest_complete == Some(id.0));
            if loses_latest {
                rec = self.recount_host(&host)?;
            } else {
                rec.snapshots =
                    (rec.snapshots + new.len() as u64).saturating_sub(gone.len() as u64);
                let time_of = |id: Option<[u8; 32]>| -> Result<Option<(i64, SnapshotId)>> {
                    Ok(match id {
                        Some(b) => index.snapshot(&SnapshotId(b))?.map(|s| (s.start_ns, s.id)),
                        None => None,
                    })
                };
                let mut latest = time_of(rec.latest)?;
                let mut latest_complete = time_of(rec.latest_complete)?;
                for s in new {
                    let key = Some((s.start_ns, s.id));
                    if key > latest {
                        latest = key;
                    }
                    if s.is_complete() && key > latest_complete {
                        latest_complete = key;
                    }
                }
                rec.latest = latest.map(|(_, id)| id.0);
                rec.latest_complete = latest_complete.map(|(_, id)| id.0);
            }
            out.insert(host, rec);
        }
        Ok(out)
    }

    /// A host's record from all its snapshots as they are after this mutation.
    fn recount_host(&self, host: &str) -> Result<HostRecord> {
        let mut after: HashMap<SnapshotId, Snapshot> = self
            .repo
            .index
            .snapshots_of(host)?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        for (id, s) in &self.snapshots {
            match s {
                Some(s) if s.host == host => {
                    after.insert(*id, s.clone());
                }
                Some(_) => {}
                None => {
                    after.remove(id);
                }
            }
        }
        let mut of_host: Vec<&Snapshot> = after.values().collect();
        of_host.sort_by_key(|s| (s.start_ns, s.id));
        Ok(HostRecord::of(of_host.into_iter()))
    }

    /// Writes everything in one synced batch, then brings the snapshot copies up to date.
    /// Order (FORMAT.md §Crash safety): stale marker, index batch, copies, marker removed.
    ///
    /// Everything before the batch either fails the mutation (nothing changed, the packs it
    /// sealed are deleted) or leads to the batch; everything after it is bookkeeping whose
    /// failure is a warning (the change is committed; recovery on the next open finishes it).
    pub(crate) fn commit(mut self) -> Result<Released> {
        self.commit_batch()?;
        self.committed = true;
        crate::failpoint::failpoint("after-commit");
        if !self.died.is_empty() {
            self.state.epoch += 1;
            if !self.state.sessions.is_empty() {
                let epoch = self.state.epoch;
                let died = std::mem::take(&mut self.died);
                self.state
                    .deaths
                    .extend(died.into_iter().map(|id| (epoch, id)));
            }
        }
        if let Err(e) =
            crate::pack::journal::clear_uncommitted(&self.repo.packs_dir(), &self.sealed)
        {
            tracing::warn!("committed, but {e}; the next writable open clears the markers");
        }
        if !self.snapshots.is_empty() {
            if let Err(e) = self.write_snapshot_copies() {
                tracing::warn!(
                    "committed, but the snapshot copies were not updated ({e}); the next writable open resyncs them"
                );
            }
        }
        Ok(self.released)
    }

    fn commit_batch(&mut self) -> Result<()> {
        if !self.snapshots.is_empty() {
            self.write_record_blobs()?;
        }
        // Last check before the batch: a writer whose object-store lease another server
        // took must not commit (its packs go with the failed mutation).
        self.repo.lease_still_held("nothing was committed")?;
        let mut batch = self.repo.index.batch();
        for (id, loc) in &self.blobs {
            match loc {
                Some(l) => batch.put_blob(id, l)?,
                None => batch.delete_blob(id)?,
            }
        }
        for (id, rec) in &self.packs {
            match rec {
                Some(r) => batch.put_pack(id, r)?,
                None => {
                    batch.delete_pack(id)?;
                    batch.delete_meta(&crate::index::verified_key(id));
                }
            }
        }
        for id in &self.healed {
            batch.delete_meta(&crate::index::damaged_key(id));
        }
        for (key, value) in &self.meta {
            match value {
                Some(v) => batch.put_meta(key, v),
                None => batch.delete_meta(key),
            }
        }
        if !self.snapshots.is_empty() {
            for (id, s) in &self.snapshots {
                match s {
                    Some(s) => batch.put_snapshot(s)?,
                    None => {
                        if let Some(old) = self.repo.index.snapshot(id)? {
                            batch.delete_snapshot(&old.host, id)?;
                        }
                    }
                }
            }
            for (host, rec) in self.host_records()? {
                batch.put_host(&host, &rec)?;
            }
            write_stale_marker(self.repo)?;
        }
        crate::failpoint::failpoint("before-commit");
        crate::failpoint::fail_io("before-commit")?;
        batch.commit()
    }

    /// `snapshots/` after a commit, then the stale marker goes.
    fn write_snapshot_copies(&self) -> Result<()> {
        crate::failpoint::fail_io("snapshot-copies")?;
        {
            let dir = self.repo.snapshots_dir();
            for (id, s) in &self.snapshots {
                let path = self.repo.snapshot_copy_path(id);
                match s {
                    Some(s) => {
                        fsutil::write_atomic(&path, &s.encode())?;
                        crate::failpoint::failpoint("mid-copies");
                    }
                    None => match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e).at(&path)
                        }
                        _ => {}
                    },
                }
            }
            fsutil::sync_dir(&dir)?;
            clear_stale_marker(self.repo)?;
        }
        Ok(())
    }
}

impl Drop for Mutation<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.sealed.is_empty() {
            self.discard_sealed();
        }
    }
}
