//! A sequence of packs of about one target size: blobs go into the current pack, a full pack
//! is sealed and a new one started. File data and metadata (trees, chunk lists) go into
//! packs of their own: walks of the Merkle DAG (a backup's parent trees, a restore's plan,
//! check, du) then read a few dense metadata packs instead of a blob in every pack, which
//! matters most on an object store, where each read is a request. Placement is policy, not
//! format: any pack may hold any kind. Backup (from many ingest threads) and gc (copying live
//! blobs) both write through it; whatever they abandon is discarded through the journal.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{poisoned, Error, Result};
use crate::pack::{NewBlob, PackWriter, SealedPack};
use crate::storage::PackStorage;
use xstore_format::pack::{BlobKind, PackId};

/// Threads that seal full packs and put them into the storage, so the ingest threads go on
/// chunking and compressing while a pack is fsynced, read back and uploaded (on an object
/// store a 32 MiB PUT took ~0.3 s on a 3-node Garage, during which that ingest thread idled).
const SEALERS: usize = 2;
/// Full packs waiting for a sealer; an ingest thread that finds the queue full waits. With
/// the packs being sealed and the open ones, at most `SEALERS + QUEUED + 2` packs of
/// temporary disk.
const QUEUED: usize = 2;

/// What the sealer threads share with the writer.
struct Sealing {
    storage: Arc<dyn PackStorage>,
    packs_dir: PathBuf,
    /// Every pack sealed and put so far.
    sealed: Mutex<Vec<SealedPack>>,
    /// The first sealing error; once set, queued packs are dropped and `add` fails.
    failure: Mutex<Option<Error>>,
    failed: AtomicBool,
    /// Set by `discard`: queued packs are dropped, not sealed.
    cancelled: AtomicBool,
    /// Packs handed to the sealers and not yet sealed or dropped, by ticket: what
    /// [`RollingPacks::flush`] waits for.
    tickets: Mutex<Tickets>,
    settled: Condvar,
}

#[derive(Default)]
struct Tickets {
    next: u64,
    open: BTreeSet<u64>,
}

impl Sealing {
    fn run(&self, queue: Receiver<(u64, PackWriter)>) {
        for (ticket, w) in queue {
            self.seal_one(w);
            self.settle(ticket);
        }
    }

    /// The pack with `ticket` is sealed or dropped.
    fn settle(&self, ticket: u64) {
        if let Ok(mut t) = self.tickets.lock() {
            t.open.remove(&ticket);
        }
        self.settled.notify_all();
    }

    fn seal_one(&self, w: PackWriter) {
        if self.cancelled.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire) {
            w.discard();
            return;
        }
        let started = std::time::Instant::now();
        match w.seal(self.storage.as_ref(), &self.packs_dir) {
            Ok(sealed) => match self.sealed.lock() {
                Ok(mut all) => {
                    tracing::debug!(pack = %sealed.id, bytes = sealed.size,
                        ms = started.elapsed().as_millis() as u64, "pack sealed and stored");
                    all.push(sealed);
                }
                Err(_) => self.fail(Error::Poisoned),
            },
            Err(e) => self.fail(e),
        }
    }

    fn fail(&self, e: Error) {
        if let Ok(mut first) = self.failure.lock() {
            if first.is_none() && !self.failed.load(Ordering::Acquire) {
                *first = Some(e);
            } else {
                tracing::debug!(error = %e, "a further pack failed to seal");
            }
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// The placeholder `add` returns once a sealer failed; [`RollingPacks::abandon`] swaps it
/// for the sealer's own error.
const STOPPED_REASON: &str = "a pack could not be stored";
const STOPPED: Error = Error::Internal(STOPPED_REASON);

/// Packs being written under `packs/tmp/` and sealed into the pack storage (every sealed one
/// carries its uncommitted marker in `packs_dir` until a commit references it). Full packs
/// are sealed by background threads; [`RollingPacks::finish`] waits for them.
pub(crate) struct RollingPacks {
    tmp_dir: PathBuf,
    pack_size: u64,
    /// Plain or encrypted packs.
    encryption: xstore_format::encryption::Encryption,
    /// The open data pack and the open metadata pack.
    current: [Mutex<Option<PackWriter>>; 2],
    sealing: Arc<Sealing>,
    /// The sealers' queue; taken (closed) by `finish`, `discard` or drop.
    queue: Mutex<Option<Sender<(u64, PackWriter)>>>,
    sealers: Mutex<Vec<JoinHandle<()>>>,
}

/// Which of the open packs a blob of `kind` goes into.
fn stream_of(kind: BlobKind) -> usize {
    usize::from(!kind.is_file_data())
}

impl RollingPacks {
    /// Packs of about `pack_size` bytes, written in `tmp_dir` and sealed into `storage`, their
    /// journal in `packs_dir`.
    pub(crate) fn new(
        tmp_dir: PathBuf,
        packs_dir: PathBuf,
        storage: Arc<dyn PackStorage>,
        pack_size: u64,
        encryption: xstore_format::encryption::Encryption,
    ) -> Self {
        let sealing = Arc::new(Sealing {
            storage,
            packs_dir,
            sealed: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            tickets: Mutex::new(Tickets::default()),
            settled: Condvar::new(),
        });
        let (tx, rx) = crossbeam_channel::bounded(QUEUED);
        let mut sealers = Vec::with_capacity(SEALERS);
        for i in 0..SEALERS {
            let (sealing, rx) = (Arc::clone(&sealing), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("xstore-seal-{i}"))
                .spawn(move || sealing.run(rx));
            match spawned {
                Ok(h) => sealers.push(h),
                // Fewer sealers; with none, the first full pack fails the run.
                Err(e) => tracing::warn!(error = %e, "cannot start a pack sealer thread"),
            }
        }
        if sealers.is_empty() {
            sealing.fail(Error::Internal("no pack sealer thread could be started"));
        }
        RollingPacks {
            tmp_dir,
            pack_size,
            encryption,
            current: [Mutex::new(None), Mutex::new(None)],
            sealing,
            queue: Mutex::new((!sealers.is_empty()).then_some(tx)),
            sealers: Mutex::new(sealers),
        }
    }

    /// Appends one blob's stored form. A pack that reaches the target size goes to the
    /// sealers (this call waits while their queue is full), so other threads go on writing
    /// into the next pack meanwhile. Fails once a sealer failed ([`RollingPacks::abandon`]).
    pub(crate) fn add(&self, blob: NewBlob<'_>) -> Result<()> {
        if self.sealing.failed.load(Ordering::Acquire) {
            return Err(STOPPED);
        }
        let slot = self
            .current
            .get(stream_of(blob.kind))
            .ok_or(Error::Internal("no pack stream for a blob kind"))?;
        // Sealed before the lock: the pack's lock is held for a header and a copy only.
        let prepared = super::writer::prepare(&self.encryption, &blob)?;
        let full = {
            let mut current = slot.lock().map_err(poisoned)?;
            if current.is_none() {
                *current = Some(PackWriter::create(&self.tmp_dir, &self.encryption)?);
            }
            let w = current
                .as_mut()
                .ok_or(Error::Internal("no pack writer after creating one"))?;
            w.add_prepared(&blob, &prepared)?;
            if w.len() >= self.pack_size {
                current.take()
            } else {
                None
            }
        };
        match full {
            Some(w) => self.queue_for_sealing(w),
            None => Ok(()),
        }
    }

    fn queue_for_sealing(&self, w: PackWriter) -> Result<()> {
        // Cloned out of the lock: a send that waits for room must not block `finish`'s take.
        let queue = self.queue.lock().map_err(poisoned)?.clone();
        let Some(queue) = queue else {
            w.discard();
            return Err(Error::Internal(
                "a pack was added after the packs were finished",
            ));
        };
        let ticket = {
            let mut t = self.sealing.tickets.lock().map_err(poisoned)?;
            t.next += 1;
            let ticket = t.next;
            t.open.insert(ticket);
            ticket
        };
        queue.send((ticket, w)).map_err(|refused| {
            refused.into_inner().1.discard();
            self.sealing.settle(ticket);
            Error::Internal("the pack sealers stopped")
        })
    }

    /// Seals the open packs and waits until every pack queued before this call is sealed;
    /// returns the packs sealed since the last `flush` (their uncommitted markers stay until
    /// the caller's commit). Unlike [`RollingPacks::finish`], writing goes on afterwards: the
    /// shared packs of concurrent backups are flushed by each backup before its commit.
    pub(crate) fn flush(&self) -> Result<Vec<SealedPack>> {
        if self.sealing.cancelled.load(Ordering::Acquire) {
            return Err(Error::Internal("the packs were discarded"));
        }
        for slot in &self.current {
            let open = slot.lock().map_err(poisoned)?.take();
            if let Some(w) = open {
                self.sealing.seal_one(w);
            }
        }
        {
            let mut t = self.sealing.tickets.lock().map_err(poisoned)?;
            let upto = t.next;
            // Later tickets (other threads go on writing) are not waited for.
            while t.open.first().is_some_and(|first| *first <= upto) {
                t = self.sealing.settled.wait(t).map_err(poisoned)?;
            }
        }
        if self.sealing.failed.load(Ordering::Acquire) {
            return Err(self.failure_or(STOPPED));
        }
        Ok(std::mem::take(
            &mut *self.sealing.sealed.lock().map_err(poisoned)?,
        ))
    }

    /// Closes the queue and waits until every queued pack is sealed (or dropped).
    fn wait_for_sealers(&self) -> Result<()> {
        drop(self.queue.lock().map_err(poisoned)?.take());
        let sealers = std::mem::take(&mut *self.sealers.lock().map_err(poisoned)?);
        let mut panicked = false;
        for h in sealers {
            panicked |= h.join().is_err();
        }
        if panicked {
            return Err(Error::Internal("a pack sealer thread panicked"));
        }
        Ok(())
    }

    /// Ends a failed run: [`RollingPacks::discard`], then the error to report, which is
    /// `cause` unless it is the placeholder `add` returns once a sealer failed (then that
    /// sealer's own error).
    pub(crate) fn abandon(&self, cause: Error) -> Error {
        self.discard();
        self.failure_or(cause)
    }

    /// `e`, or the sealer's error for the placeholder.
    fn failure_or(&self, e: Error) -> Error {
        if !matches!(e, Error::Internal(reason) if reason == STOPPED_REASON) {
            return e;
        }
        self.sealing
            .failure
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or(e)
    }

    /// Seals the open packs, waits for the sealers and returns every sealed pack (in no
    /// particular order). On an error the packs sealed so far stay with `self` for
    /// [`RollingPacks::discard`].
    pub(crate) fn finish(&self) -> Result<Vec<SealedPack>> {
        if self.sealing.cancelled.load(Ordering::Acquire) {
            return Err(Error::Internal("the packs were discarded"));
        }
        let mut result = Ok(());
        for slot in &self.current {
            let last = slot.lock().map_err(poisoned)?.take();
            if let Some(w) = last {
                if result.is_ok() {
                    result = self.queue_for_sealing(w);
                } else {
                    w.discard();
                }
            }
        }
        let waited = self.wait_for_sealers();
        if self.sealing.failed.load(Ordering::Acquire) {
            return Err(self.failure_or(STOPPED));
        }
        result.and(waited)?;
        Ok(std::mem::take(
            &mut *self.sealing.sealed.lock().map_err(poisoned)?,
        ))
    }

    /// Abandons everything: the open packs' temporary files and the queued packs are
    /// removed, the sealers are waited for, and the sealed packs are deleted through the
    /// journal (they are recorded uncommitted, so nothing committed can be among them).
    /// Failures are logged: the next writer's recovery removes what is left.
    pub(crate) fn discard(&self) {
        self.sealing.cancelled.store(true, Ordering::Release);
        for slot in &self.current {
            if let Ok(mut current) = slot.lock() {
                if let Some(w) = current.take() {
                    w.discard();
                }
            }
        }
        if let Err(e) = self.wait_for_sealers() {
            tracing::warn!(error = %e, "while abandoning the packs of a failed run");
        }
        if let Ok(mut sealed) = self.sealing.sealed.lock() {
            let ids: Vec<PackId> = sealed.drain(..).map(|p| p.id).collect();
            if let Err(e) = crate::pack::journal::discard_packs(
                self.sealing.storage.as_ref(),
                &self.sealing.packs_dir,
                &ids,
            ) {
                tracing::warn!(error = %e,
                    "could not remove uncommitted packs; the next writer's recovery will");
            }
        }
    }
}

impl Drop for RollingPacks {
    /// Neither finished nor discarded (a panic unwinding): queued packs are dropped and the
    /// sealers waited for, so no pack is put after the run ended. Sealed packs keep their
    /// uncommitted markers for the next writer's recovery.
    fn drop(&mut self) {
        self.sealing.cancelled.store(true, Ordering::Release);
        if let Err(e) = self.wait_for_sealers() {
            tracing::warn!(error = %e, "while stopping the pack sealers");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;
    use crate::storage::{PackBytes, PackInfo};
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;
    use xstore_chunker::ChunkId;
    use xstore_format::pack::Compression;

    /// Local packs whose `put` fails from the `fail_from`-th call on, as an object store
    /// that went away would.
    struct FailingPuts {
        inner: LocalStorage,
        puts: AtomicUsize,
        fail_from: usize,
        /// Each put takes this long (an upload).
        delay: std::time::Duration,
    }

    impl PackStorage for FailingPuts {
        fn put(&self, id: &PackId, sealed: &Path, metadata_only: bool) -> Result<()> {
            std::thread::sleep(self.delay);
            if self.puts.fetch_add(1, Ordering::SeqCst) >= self.fail_from {
                return Err(Error::Storage {
                    endpoint: "http://127.0.0.1:9 (bucket test)".into(),
                    key: format!("packs/{id}.pack"),
                    reason: "PUT: 503 Service Unavailable".into(),
                    not_found: false,
                });
            }
            self.inner.put(id, sealed, metadata_only)
        }
        fn read_at(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.inner.read_at(id, offset, buf)
        }
        fn read_whole(&self, id: &PackId) -> Result<PackBytes> {
            self.inner.read_whole(id)
        }
        fn size(&self, id: &PackId) -> Result<Option<u64>> {
            self.inner.size(id)
        }
        fn list(&self) -> Result<Vec<PackInfo>> {
            self.inner.list()
        }
        fn delete(&self, ids: &[PackId]) -> Result<()> {
            self.inner.delete(ids)
        }
        fn location(&self, id: &PackId) -> String {
            self.inner.location(id)
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        storage: Arc<FailingPuts>,
    }

    fn fixture(fail_from: usize, delay_ms: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("packs")).unwrap();
        let storage = Arc::new(FailingPuts {
            inner: LocalStorage::new(dir.path().join("packs")),
            puts: AtomicUsize::new(0),
            fail_from,
            delay: std::time::Duration::from_millis(delay_ms),
        });
        Fixture { dir, storage }
    }

    impl Fixture {
        fn packs(&self) -> RollingPacks {
            RollingPacks::new(
                self.dir.path().join("tmp"),
                self.dir.path().join("packs"),
                self.storage.clone(),
                64 << 10,
                xstore_format::encryption::Encryption::Plain,
            )
        }
        fn stored(&self) -> Vec<PackId> {
            self.storage
                .list()
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect()
        }
        fn temporary_files(&self) -> usize {
            std::fs::read_dir(self.dir.path().join("tmp"))
                .unwrap()
                .count()
        }
    }

    /// Adds `n` distinct incompressible blobs of 10 kB (data and metadata alternating) from
    /// two threads; returns their ids and the first error.
    fn add_blobs(packs: &RollingPacks, n: u64) -> (Vec<ChunkId>, Result<()>) {
        let blobs: Vec<Vec<u8>> = (0..n)
            .map(|i| xstore_chunker::seeded_bytes(i, 10_000))
            .collect();
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = blobs
                .chunks(blobs.len().div_ceil(2))
                .map(|half| {
                    s.spawn(move || {
                        for (i, b) in half.iter().enumerate() {
                            let kind = if i % 2 == 0 {
                                BlobKind::Data
                            } else {
                                BlobKind::Tree
                            };
                            packs.add(NewBlob {
                                id: ChunkId::of(b),
                                kind,
                                compression: Compression::None,
                                raw_len: b.len() as u32,
                                stored: b,
                            })?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ids = blobs.iter().map(|b| ChunkId::of(b)).collect();
        (ids, results.into_iter().collect())
    }

    #[test]
    fn every_blob_added_is_in_a_sealed_stored_pack_after_finish() {
        let f = fixture(usize::MAX, 0);
        let packs = f.packs();
        let (ids, added) = add_blobs(&packs, 200);
        added.unwrap();
        let sealed = packs.finish().unwrap();
        assert!(
            sealed.len() >= 20,
            "2 MB in 64 kB packs: {} packs",
            sealed.len()
        );
        let mut in_packs: Vec<ChunkId> = sealed
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.id))
            .collect();
        in_packs.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(in_packs, want);
        let mut stored = f.stored();
        stored.sort();
        let mut sealed_ids: Vec<PackId> = sealed.iter().map(|p| p.id).collect();
        sealed_ids.sort();
        assert_eq!(stored, sealed_ids);
        for p in &sealed {
            let bytes = f.storage.read_whole(&p.id).unwrap();
            assert_eq!(ChunkId::of(&bytes), p.id);
        }
        assert_eq!(f.temporary_files(), 0);
    }

    /// A flush returns every blob added before it in sealed, stored packs, while writing goes
    /// on: each blob is returned by exactly one flush or the final finish.
    #[test]
    fn flush_seals_what_was_added_and_writing_goes_on() {
        let f = fixture(usize::MAX, 5);
        let packs = f.packs();
        let in_packs = |sealed: &[SealedPack]| -> Vec<ChunkId> {
            let mut ids: Vec<ChunkId> = sealed
                .iter()
                .flat_map(|p| p.entries.iter().map(|e| e.id))
                .collect();
            ids.sort();
            ids
        };
        let (mut first, added) = add_blobs(&packs, 50);
        added.unwrap();
        let flushed = packs.flush().unwrap();
        first.sort();
        assert_eq!(in_packs(&flushed), first);
        assert_eq!(f.temporary_files(), 0);
        let more: Vec<Vec<u8>> = (1000..1030)
            .map(|i| xstore_chunker::seeded_bytes(i, 10_000))
            .collect();
        for b in &more {
            packs
                .add(NewBlob {
                    id: ChunkId::of(b),
                    kind: BlobKind::Data,
                    compression: Compression::None,
                    raw_len: b.len() as u32,
                    stored: b,
                })
                .unwrap();
        }
        let rest = packs.finish().unwrap();
        let mut want: Vec<ChunkId> = more.iter().map(|b| ChunkId::of(b)).collect();
        want.sort();
        assert_eq!(in_packs(&rest), want);
        assert_eq!(f.stored().len(), flushed.len() + rest.len());
    }

    #[test]
    fn a_failed_put_stops_the_run_with_its_own_error_and_discard_leaves_no_pack() {
        let f = fixture(3, 0);
        let packs = f.packs();
        let (_, added) = add_blobs(&packs, 400);
        let failed = match added {
            Err(e) => e,
            Ok(()) => packs.finish().map(|_| ()).unwrap_err(),
        };
        let put_before = f.stored();
        let message = packs.abandon(failed).to_string();
        assert!(
            message.contains("503 Service Unavailable") && message.contains("packs/"),
            "{message}"
        );
        assert!(
            !put_before.is_empty(),
            "three packs were put before the failure"
        );
        assert_eq!(f.stored(), Vec::<PackId>::new());
        assert_eq!(f.temporary_files(), 0);
        let markers = crate::pack::journal::uncommitted(&f.dir.path().join("packs")).unwrap();
        // The packs whose put failed keep their markers (recovery deletes nothing for them:
        // their objects do not exist); every put one was deleted with its marker.
        assert!(
            markers.iter().all(|id| !put_before.contains(id)),
            "{markers:?}"
        );
        assert!(
            !markers.is_empty(),
            "the failed put's marker stays for recovery"
        );
    }

    #[test]
    fn discard_while_packs_wait_for_the_sealers_puts_none_of_them_afterwards() {
        // Slow puts: when the adding ends, sealers are mid-put and packs wait in the queue.
        let f = fixture(usize::MAX, 50);
        let packs = f.packs();
        let (_, added) = add_blobs(&packs, 100);
        added.unwrap();
        packs.discard();
        assert_eq!(f.stored(), Vec::<PackId>::new());
        assert_eq!(f.temporary_files(), 0);
        assert!(
            packs.finish().is_err(),
            "a discarded run cannot be finished"
        );
    }
}
