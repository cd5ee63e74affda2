//! Usage (ARCHITECTURE.md invariant 11): what a host, an account or one snapshot holds in the repository,
//! computed from reference counts and the Merkle DAG. Data chunks are looked up in the index
//! (their size is in their location), never read; only trees and chunk lists are read.
//!
//! Sizes are *stored* bytes: what blobs take in packs (header and compressed bytes), the
//! unit of [`crate::PackRecord::dead_bytes`] and of what `gc` reclaims.
//!
//! - *referenced*: the distinct blobs reachable from the group's snapshots.
//! - *exclusive*: what expiring every snapshot of the group would kill. It is computed by
//!   simulating that expiry on an in-memory overlay of reference counts (exactly what
//!   [`crate::Repository::apply_plan`] would do, without writing): a blob dies when every
//!   parent that references it has died.
//! - *shared*: referenced − exclusive.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::BlobLoc;
use crate::repo::Repository;
use crate::ChunkId;
use xstore_format::snapshot::Snapshot;

/// Usage of a group of snapshots (a host's or an account's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Snapshots in the group.
    pub snapshots: u64,
    /// Logical (file) bytes of the newest snapshot of each host in the group, summed.
    pub newest_logical_bytes: u64,
    /// Stored bytes of the distinct blobs the group's snapshots reference.
    pub referenced_bytes: u64,
    /// Stored bytes only this group references: what expiring it (and then `gc`) frees.
    pub exclusive_bytes: u64,
    /// Referenced bytes that other snapshots reference too.
    pub shared_bytes: u64,
    /// Distinct blobs referenced.
    pub referenced_blobs: u64,
    /// Blobs only this group references.
    pub exclusive_blobs: u64,
}

/// Usage of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotUsage {
    /// The snapshot's id (hex).
    pub id: String,
    /// Its host.
    pub host: String,
    /// Start of its backup, ns since the epoch.
    pub start_ns: i64,
    /// Its logical (file) bytes.
    pub logical_bytes: u64,
    /// Stored bytes its backup added to the repository (when it was taken).
    pub new_stored_bytes: u64,
    /// Stored bytes no other snapshot references: what expiring only it frees.
    pub exclusive_bytes: u64,
}

impl Repository {
    /// Usage of a group of snapshots: see the module documentation for the definitions.
    /// Works on read-only handles.
    pub fn usage_of(&self, snapshots: &[Snapshot]) -> Result<Usage> {
        let mut roots = Vec::with_capacity(snapshots.len() * 2);
        for s in snapshots {
            roots.extend(self.held_by(s)?);
        }
        let (referenced_bytes, referenced_blobs) = self.referenced(&roots)?;
        let (exclusive_bytes, exclusive_blobs) = self.exclusive(&roots)?;
        let mut newest: HashMap<&str, &Snapshot> = HashMap::new();
        for s in snapshots {
            let e = newest.entry(s.host.as_str()).or_insert(s);
            if (s.start_ns, s.id) > (e.start_ns, e.id) {
                *e = s;
            }
        }
        Ok(Usage {
            snapshots: snapshots.len() as u64,
            newest_logical_bytes: newest.values().map(|s| s.stats.logical_bytes).sum(),
            referenced_bytes,
            exclusive_bytes,
            shared_bytes: referenced_bytes.saturating_sub(exclusive_bytes),
            referenced_blobs,
            exclusive_blobs,
        })
    }

    /// Usage of every snapshot of `host`, oldest first.
    pub fn snapshot_usage(&self, host: &str) -> Result<Vec<SnapshotUsage>> {
        let mut out = Vec::new();
        for s in self.snapshots()?.into_iter().filter(|s| s.host == host) {
            let (exclusive_bytes, _) = self.exclusive(&self.held_by(&s)?)?;
            out.push(SnapshotUsage {
                id: s.id.to_string(),
                host: s.host.clone(),
                start_ns: s.start_ns,
                logical_bytes: s.stats.logical_bytes,
                new_stored_bytes: s.stats.new_stored_bytes,
                exclusive_bytes,
            });
        }
        Ok(out)
    }

    /// The blobs a snapshot references directly, as its expiry releases them: its root tree
    /// and the blob of its current record (when it has one).
    fn held_by(&self, s: &Snapshot) -> Result<Vec<ChunkId>> {
        let record = s.record_id();
        let mut held = vec![s.root];
        if self.index.blob(&record)?.is_some_and(|l| l.refcount > 0) {
            held.push(record);
        }
        Ok(held)
    }

    fn live_blob(&self, id: &ChunkId) -> Result<BlobLoc> {
        match self.index.blob(id)? {
            Some(loc) if loc.refcount > 0 => Ok(loc),
            _ => Err(Error::MissingBlob(*id)),
        }
    }

    /// Stored bytes and count of the distinct blobs reachable from `roots`.
    fn referenced(&self, roots: &[ChunkId]) -> Result<(u64, u64)> {
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let mut stack: Vec<ChunkId> = roots.to_vec();
        let (mut bytes, mut blobs) = (0u64, 0u64);
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let loc = self.live_blob(&id)?;
            bytes += loc.span();
            blobs += 1;
            stack.extend(
                self.blob_children(&id, &loc)?
                    .into_iter()
                    .filter(|c| !seen.contains(c)),
            );
        }
        Ok((bytes, blobs))
    }

    /// Stored bytes and count of the blobs that releasing one reference to each root (an
    /// expiry of the snapshots with these roots) would kill. Walks only what dies.
    fn exclusive(&self, roots: &[ChunkId]) -> Result<(u64, u64)> {
        let mut remaining: HashMap<ChunkId, BlobLoc> = HashMap::new();
        let mut stack: Vec<ChunkId> = roots.to_vec();
        let (mut bytes, mut blobs) = (0u64, 0u64);
        while let Some(id) = stack.pop() {
            let loc = match remaining.entry(id) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(self.live_blob(&id)?),
            };
            if loc.refcount == 0 {
                return Err(Error::RefcountUnderflow(id));
            }
            loc.refcount -= 1;
            if loc.refcount > 0 {
                continue;
            }
            let loc = *loc;
            bytes += loc.span();
            blobs += 1;
            stack.extend(self.blob_children(&id, &loc)?);
        }
        Ok((bytes, blobs))
    }
}
