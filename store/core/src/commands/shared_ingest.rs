//! Backups that run at the same time and share what they store: the pulls of one account in
//! one run (`xstore_fleet::pull::pull_all` with more than one job). A chunk one of them is fetching
//! is not asked for by the others, and a chunk, tree or chunk list one of them stored is
//! stored once.
//!
//! Why it needs more than each backup's own claims: a backup's packs are committed with its
//! snapshot, and a backup that fails discards them. A chunk another backup relies on must
//! not go with the backup that happened to fetch it. So the shared data goes into packs of
//! their own ([`SharedIngest`]), and every backup, before its commit, *flushes* them: seals
//! what was written so far and commits those packs to the index as blobs nobody references
//! yet. Its snapshot commit then references them (a dead blob revives, txn/mod.rs), whatever
//! becomes of the backup that fetched them. What a failed backup wrote and nobody references
//! stays dead, and gc reclaims it; it is protected from reclaim while the run lasts.
//!
//! Waiting for another backup: a chunk another backup has *reserved* (it is asking its agent
//! for those bytes now), or a tree another backup has claimed (it is writing it now), is
//! waited for, at most [`SHARED_WAIT`] in all per backup (a [`WaitBudget`]); then it is fetched
//! or written here too (stored twice, the second copy dead). So a host of the account that
//! reserves chunks and then stalls (a compromised one, or one on a dying link) delays each of
//! its siblings by at most that, once. A thread waits only while it holds no unresolved reservation or
//! claim, and each is fulfilled or released by the thread that made it without waiting on
//! another: no cycle of waits. A backup that fails releases what it reserved or claimed.
//!
//! Reference counts: a flush commits its blobs unreferenced, so their children are not
//! counted; the first commit that references one revives it and counts its children then
//! (txn/mod.rs), from the children the committing backup knows when it built the blob.
//!
//! Trust: only backups of one account share one [`SharedIngest`] (the caller's rule, as for
//! [`crate::BackupOptions::reference`]); every shared chunk was verified against its id and
//! length when its bytes arrived, and a chunk is taken as known only with the length it was
//! stored with.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{BackupError, Error, Result};
use crate::pack::rolling::RollingPacks;
use crate::pack::NewBlob;
use crate::repo::sessions::SessionGuard;
use crate::repo::{poisoned, Repository};
use crate::txn::Mutation;
use xstore_chunker::ChunkId;
use xstore_format::pack::BlobKind;
use xstore_format::tree::ChunkRef;

/// Most files ([`SharedIngest::announce`]) one shared ingest remembers (about 50 MB): past
/// it, files are announced no more and travel as before.
pub const MAX_ANNOUNCED_FILES: usize = 2_000_000;

/// Longest one backup waits, in all, for chunks and trees other backups are fetching or
/// writing; past it, it fetches and writes them itself. One host's stalled or slow link must
/// not hold up the others for long.
pub const SHARED_WAIT: Duration = Duration::from_secs(30);

/// What one backup may still wait for the others ([`SHARED_WAIT`] to start with), shared by
/// its threads.
#[derive(Debug)]
pub(crate) struct WaitBudget(Mutex<Duration>);

impl WaitBudget {
    pub(crate) fn new() -> Self {
        WaitBudget(Mutex::new(SHARED_WAIT))
    }

    /// When waiting that starts now must end.
    fn deadline(&self) -> Result<Instant> {
        Ok(Instant::now() + *self.0.lock().map_err(poisoned)?)
    }

    /// Takes what a wait that began at `started` took.
    fn spend(&self, started: Instant) -> Result<()> {
        let mut left = self.0.lock().map_err(poisoned)?;
        *left = left.saturating_sub(started.elapsed());
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A backup is fetching it (a data chunk) or writing it (a tree or chunk list it built),
    /// under this reservation number.
    Busy(u64),
    /// Written to the shared packs: its kind and raw length.
    Stored(BlobKind, u32),
}

/// What [`SharedIngest::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Stored by a backup sharing this, as this kind.
    Stored(BlobKind),
    /// Claimed for the caller: it must write the blob or [`SharedIngest::release`] it.
    Mine,
    /// Another backup is still writing it and the caller's [`WaitBudget`] ran out: the
    /// caller writes its own copy, unclaimed.
    Unshared,
}

/// The data chunks that concurrent backups of one account share; see the module text.
/// Made by [`Repository::shared_ingest`], given to [`Repository::backup_shared`].
pub struct SharedIngest<'r> {
    repo: &'r Repository,
    /// Keeps what the flushes commit protected from reclaim until the run ends: they are dead
    /// until a snapshot references them.
    _session: SessionGuard<'r>,
    packs: RollingPacks,
    chunks: Mutex<HashMap<ChunkId, Slot>>,
    changed: Condvar,
    next_reservation: AtomicU64,
    /// One flush at a time.
    flushing: Mutex<()>,
    /// Why the shared packs can no longer be trusted (a seal or a flush commit failed).
    failure: Mutex<Option<String>>,
    /// Hashes of (path, size) of the files some backup sharing this is about to read.
    announced: Mutex<HashSet<u64>>,
}

impl std::fmt::Debug for SharedIngest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIngest")
            .field("repo", &self.repo.path())
            .finish_non_exhaustive()
    }
}

/// Chunks one thread reserved for fetching; released on drop unless stored meanwhile.
pub(crate) struct Reservation<'s, 'r> {
    shared: &'s SharedIngest<'r>,
    number: u64,
    reserved: Vec<ChunkId>,
    /// What this thread must fetch: the reserved chunks and those it gave up waiting for.
    pub(crate) to_fetch: Vec<ChunkRef>,
}

impl Drop for Reservation<'_, '_> {
    fn drop(&mut self) {
        if self.reserved.is_empty() {
            return;
        }
        if let Ok(mut chunks) = self.shared.chunks.lock() {
            for id in &self.reserved {
                if chunks.get(id) == Some(&Slot::Busy(self.number)) {
                    chunks.remove(id);
                }
            }
        }
        self.shared.changed.notify_all();
    }
}

impl Repository {
    /// Shared data for backups that run at the same time in this process (see
    /// [`SharedIngest`]). Give it only to backups of one account: they learn which chunks the
    /// others hold.
    pub fn shared_ingest(&self) -> Result<SharedIngest<'_>> {
        self.require_writable()?;
        Ok(SharedIngest {
            repo: self,
            _session: self.begin_session()?,
            packs: self.rolling_packs(),
            chunks: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            next_reservation: AtomicU64::new(1),
            flushing: Mutex::new(()),
            failure: Mutex::new(None),
            announced: Mutex::new(HashSet::new()),
        })
    }
}

impl<'r> SharedIngest<'r> {
    /// Whether `repo` is the repository these shared packs belong to.
    pub(crate) fn belongs_to(&self, repo: &Repository) -> bool {
        std::ptr::eq(self.repo, repo)
    }

    /// Announces that the caller is about to read the file at `path` of `size` bytes; true
    /// when another backup sharing this announced it first. Hosts with the same files walk
    /// them at once, and a source sends small files' bytes with their chunk list: only the
    /// first announcer should, the others ask for chunk ids alone
    /// ([`crate::OpenHint::probably_known`]) and then for the chunks nobody holds.
    pub(crate) fn announce(&self, path: &Path, size: u64) -> Result<bool> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        size.hash(&mut h);
        let key = h.finish();
        let mut announced = self.announced.lock().map_err(poisoned)?;
        if announced.contains(&key) {
            return Ok(true);
        }
        if announced.len() < MAX_ANNOUNCED_FILES {
            announced.insert(key);
        }
        Ok(false)
    }

    /// Whether `c` was stored here as a data chunk with exactly its length.
    pub(crate) fn holds(&self, c: &ChunkRef) -> Result<bool> {
        let chunks = self.chunks.lock().map_err(poisoned)?;
        Ok(chunks.get(&c.id) == Some(&Slot::Stored(BlobKind::Data, c.len)))
    }

    /// Claims a tree or chunk list the caller built and the index lacks, waiting (within
    /// `budget`) while another backup writes the same blob. The caller must hold no
    /// unresolved claim or reservation of its own while it calls this.
    pub(crate) fn claim(&self, id: ChunkId, budget: &WaitBudget) -> Result<Claim> {
        let mut chunks = self.wait_while(budget, |chunks| {
            matches!(chunks.get(&id), Some(Slot::Busy(_)))
        })?;
        match chunks.get(&id) {
            Some(Slot::Stored(kind, _)) => Ok(Claim::Stored(*kind)),
            Some(Slot::Busy(_)) => Ok(Claim::Unshared),
            None => {
                let number = self.next_reservation.fetch_add(1, Ordering::Relaxed);
                chunks.insert(id, Slot::Busy(number));
                Ok(Claim::Mine)
            }
        }
    }

    /// The registry, once `busy` is false or `budget` has run out (what the wait took is
    /// taken from it).
    fn wait_while(
        &self,
        budget: &WaitBudget,
        busy: impl Fn(&HashMap<ChunkId, Slot>) -> bool,
    ) -> Result<MutexGuard<'_, HashMap<ChunkId, Slot>>> {
        let deadline = budget.deadline()?;
        let mut chunks = self.chunks.lock().map_err(poisoned)?;
        loop {
            let now = Instant::now();
            if !busy(&chunks) || now >= deadline {
                return Ok(chunks);
            }
            chunks = self
                .changed
                .wait_timeout(chunks, deadline - now)
                .map_err(poisoned)?
                .0;
            budget.spend(now)?;
        }
    }

    /// Gives up a claim whose blob was not written (its backup failed): a backup waiting
    /// for it writes its own.
    pub(crate) fn release(&self, id: &ChunkId) {
        if let Ok(mut chunks) = self.chunks.lock() {
            if matches!(chunks.get(id), Some(Slot::Busy(_))) {
                chunks.remove(id);
            }
        }
        self.changed.notify_all();
    }

    /// Reserves the chunks of `wanted` that no backup holds or fetches, after waiting (within
    /// `budget`) for those another backup is fetching. The caller must hold no reservation
    /// of its own while it calls this.
    pub(crate) fn reserve(
        &self,
        wanted: &[ChunkRef],
        budget: &WaitBudget,
    ) -> Result<Reservation<'_, 'r>> {
        let mut chunks = self.wait_while(budget, |chunks| {
            wanted
                .iter()
                .any(|c| matches!(chunks.get(&c.id), Some(Slot::Busy(_))))
        })?;
        let number = self.next_reservation.fetch_add(1, Ordering::Relaxed);
        let mut reservation = Reservation {
            shared: self,
            number,
            reserved: Vec::new(),
            to_fetch: Vec::new(),
        };
        for c in wanted {
            match chunks.get(&c.id) {
                Some(Slot::Stored(BlobKind::Data, len)) if *len == c.len => {}
                // Fetched after waiting in vain, or named with another length or kind than
                // the stored one (its bytes will not match): asked for, not reserved.
                Some(_) => reservation.to_fetch.push(*c),
                None => {
                    chunks.insert(c.id, Slot::Busy(number));
                    reservation.reserved.push(c.id);
                    reservation.to_fetch.push(*c);
                }
            }
        }
        Ok(reservation)
    }

    /// Appends a blob's stored form to the shared packs (a data chunk verified against its
    /// id, or a tree or chunk list the caller built and checked); from then on every backup
    /// sharing this takes it as known.
    pub(crate) fn add(&self, blob: NewBlob<'_>) -> Result<()> {
        self.check_failure()?;
        self.packs.add(blob)?;
        self.chunks
            .lock()
            .map_err(poisoned)?
            .insert(blob.id, Slot::Stored(blob.kind, blob.raw_len));
        self.changed.notify_all();
        Ok(())
    }

    fn check_failure(&self) -> Result<()> {
        match &*self.failure.lock().map_err(poisoned)? {
            Some(reason) => Err(Error::from(BackupError::SharedIngest {
                reason: reason.clone(),
            })),
            None => Ok(()),
        }
    }

    fn fail(&self, e: Error) -> Error {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert_with(|| e.to_string());
        }
        e
    }

    /// Seals everything written to the shared packs so far and commits those packs to the
    /// index, their blobs unreferenced (dead) until a snapshot references them, and protected
    /// from reclaim while this lives. Every backup sharing this calls it before its own
    /// commit, so every shared chunk it relies on (stored before it looked) is in the index.
    pub(crate) fn flush(&self) -> Result<()> {
        let _one = self.flushing.lock().map_err(poisoned)?;
        self.check_failure()?;
        let sealed = self.packs.flush().map_err(|e| self.fail(e))?;
        if sealed.is_empty() {
            return Ok(());
        }
        let committed = (|| {
            let mut m = Mutation::begin(self.repo)?;
            m.insert_sealed(&sealed)?;
            m.protect_inserted();
            m.commit()
        })();
        // A failed commit deleted the packs: the chunks in them are gone for every backup.
        committed.map(|_| ()).map_err(|e| self.fail(e))
    }
}

impl Drop for SharedIngest<'_> {
    /// What was written after the last flush belongs to backups that failed: removed.
    fn drop(&mut self) {
        self.packs.discard();
    }
}
