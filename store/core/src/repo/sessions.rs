//! Backup sessions of one writable handle: while a backup runs, blobs that an expiry kills
//! stay protected from reclaim until the session ends (ARCHITECTURE.md, invariants).

use std::collections::{BTreeMap, HashSet};

use crate::error::Result;
use crate::repo::{poisoned, Repository};
use xstore_chunker::ChunkId;

/// In-process bookkeeping behind the write lock.
#[derive(Debug, Default)]
pub(crate) struct WriteState {
    /// Advances on every committed expiry.
    pub(crate) epoch: u64,
    next_session: u64,
    /// Active backup sessions and the epoch each started at.
    pub(crate) sessions: BTreeMap<u64, u64>,
    /// Blobs that died after some active session started, with the epoch of death.
    pub(crate) deaths: Vec<(u64, ChunkId)>,
}

impl WriteState {
    pub(crate) fn prune(&mut self) {
        match self.sessions.values().min().copied() {
            None => self.deaths.clear(),
            Some(oldest) => self.deaths.retain(|(e, _)| *e > oldest),
        }
    }
    /// Ids reclaim must not drop now.
    pub(crate) fn protected(&self) -> HashSet<ChunkId> {
        self.deaths.iter().map(|(_, id)| *id).collect()
    }
}

/// An active backup session; ends (and releases its protection) on drop.
pub(crate) struct SessionGuard<'r> {
    repo: &'r Repository,
    token: u64,
}

impl Repository {
    pub(crate) fn begin_session(&self) -> Result<SessionGuard<'_>> {
        let mut st = self.write_state.lock().map_err(poisoned)?;
        let token = st.next_session;
        st.next_session += 1;
        let epoch = st.epoch;
        st.sessions.insert(token, epoch);
        Ok(SessionGuard { repo: self, token })
    }
}

impl Repository {
    /// Keeps dead blobs that a running session is about to reference from reclaim, as if
    /// they died now: `sync` counts on blobs an interrupted run committed unreferenced.
    pub(crate) fn protect_from_reclaim(&self, ids: &[ChunkId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut st = self.write_state.lock().map_err(poisoned)?;
        st.epoch += 1;
        let epoch = st.epoch;
        st.deaths.extend(ids.iter().map(|id| (epoch, *id)));
        Ok(())
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.repo.write_state.lock() {
            st.sessions.remove(&self.token);
            st.prune();
        }
    }
}
