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
//!
//! [`Repository::fleet_usage`] computes the same numbers for every host and any number of
//! groups (accounts) at once, from one pass: each distinct tree is read once however many
//! hosts share it, each blob gets the set of hosts whose snapshots reach it (sets are
//! interned: a fleet has few distinct ones), and sizes come from one scan of the blob
//! records. Exclusive is then "reached only from the group's snapshots", which is what the
//! simulated expiry kills while reference counts are consistent (`check` verifies that).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::BlobLoc;
use crate::repo::Repository;
use crate::ChunkId;
use xstore_format::snapshot::Snapshot;
use xstore_format::tree::{decode_chunk_list, Content};

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

/// Usage of every host and of groups of hosts ([`Repository::fleet_usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetUsage {
    /// Every host with snapshots.
    pub hosts: BTreeMap<String, Usage>,
    /// The groups asked for, in order (a host without snapshots contributes nothing).
    pub groups: Vec<Usage>,
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

    /// [`Repository::usage_of`] of every host's snapshots and of the snapshots of each group
    /// of host names, computed together in one pass (module documentation): what `du` and
    /// the account checks report for a whole fleet, without one walk per host and per
    /// account. Works on read-only handles.
    pub fn fleet_usage(&self, groups: &[Vec<String>]) -> Result<FleetUsage> {
        let snapshots = self.snapshots()?;
        let mut host_names: Vec<&str> = snapshots.iter().map(|s| s.host.as_str()).collect();
        host_names.sort_unstable();
        host_names.dedup();
        let host_index: HashMap<&str, u32> = host_names
            .iter()
            .enumerate()
            .map(|(i, h)| (*h, i as u32))
            .collect();

        let mut graph = Graph::default();
        let mut roots: Vec<Vec<u32>> = vec![Vec::new(); host_names.len()];
        let mut frontier = Vec::new();
        for s in &snapshots {
            let h = host_index.get(s.host.as_str()).copied().unwrap_or(0) as usize;
            let (root, fresh) = graph.intern(s.root, Kind::Tree);
            if fresh {
                frontier.push(root);
            }
            let mut held = vec![root];
            let record = s.record_id();
            if self.index.blob(&record)?.is_some_and(|l| l.refcount > 0) {
                held.push(graph.intern(record, Kind::Leaf).0);
            }
            if let Some(r) = roots.get_mut(h) {
                r.extend(held);
            }
        }
        // Discover the DAG a level at a time, reading each level's trees in parallel.
        while !frontier.is_empty() {
            let read: Vec<Result<Vec<(ChunkId, Kind)>>> = frontier
                .par_iter()
                .map(|&n| self.usage_children(graph.id(n), graph.kind(n)))
                .collect();
            let mut next = Vec::new();
            for (&n, children) in frontier.iter().zip(read) {
                let (mut nodes, mut data) = (Vec::new(), Vec::new());
                for (id, kind) in children? {
                    let (c, fresh) = graph.intern(id, kind);
                    if kind == Kind::Leaf {
                        data.push(c);
                    } else {
                        nodes.push(c);
                        if fresh {
                            next.push(c);
                        }
                    }
                }
                graph.set_children(n, nodes, data);
            }
            frontier = next;
        }

        // Which hosts reach each tree: a walk per host over the trees in memory, stopping
        // where the host is already recorded (everything below has it too).
        let mut sets = Sets::new();
        let mut set_of = vec![EMPTY_SET; graph.len()];
        for (h, host_roots) in roots.iter().enumerate() {
            let h = h as u32;
            let mut stack = host_roots.clone();
            while let Some(n) = stack.pop() {
                let Some(current) = set_of.get(n as usize).copied() else {
                    continue;
                };
                if sets.contains(current, h) {
                    continue;
                }
                let with = sets.with(current, h);
                if let Some(slot) = set_of.get_mut(n as usize) {
                    *slot = with;
                }
                stack.extend_from_slice(graph.nodes_below(n));
            }
        }
        // A data chunk is reached by every host that reaches one of its parents.
        for n in 0..graph.len() as u32 {
            let parent = set_of.get(n as usize).copied().unwrap_or(EMPTY_SET);
            for &d in graph.data_below(n) {
                if let Some(slot) = set_of.get_mut(d as usize) {
                    *slot = sets.union(*slot, parent);
                }
            }
        }
        // Sizes from one scan of the blob records.
        let mut totals = vec![(0u64, 0u64); sets.len()];
        let mut live = vec![false; graph.len()];
        self.index.for_each_blob(|id, loc| {
            if loc.refcount == 0 {
                return Ok(());
            }
            if let Some(&i) = graph.ids.get(&id) {
                let set = set_of.get(i as usize).copied().unwrap_or(EMPTY_SET);
                if let (Some(t), Some(l)) = (totals.get_mut(set as usize), live.get_mut(i as usize))
                {
                    t.0 += loc.span();
                    t.1 += 1;
                    *l = true;
                }
            }
            Ok(())
        })?;
        if let Some(i) = live.iter().position(|l| !l) {
            return Err(Error::MissingBlob(graph.id(i as u32)));
        }

        let group_index: Vec<Vec<u32>> = groups
            .iter()
            .map(|g| {
                let mut v: Vec<u32> = g
                    .iter()
                    .filter_map(|h| host_index.get(h.as_str()).copied())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let mut groups_of_host: Vec<Vec<usize>> = vec![Vec::new(); host_names.len()];
        for (g, members) in group_index.iter().enumerate() {
            for &h in members {
                if let Some(v) = groups_of_host.get_mut(h as usize) {
                    v.push(g);
                }
            }
        }
        let mut host_usage = vec![Usage::default(); host_names.len()];
        let mut group_usage = vec![Usage::default(); groups.len()];
        let mut touched = vec![0usize; groups.len()];
        for (set, &(bytes, blobs)) in totals.iter().enumerate() {
            let members = sets.members(set as u32);
            for &h in members {
                if let Some(u) = host_usage.get_mut(h as usize) {
                    u.referenced_bytes += bytes;
                    u.referenced_blobs += blobs;
                    if members.len() == 1 {
                        u.exclusive_bytes += bytes;
                        u.exclusive_blobs += blobs;
                    }
                }
                for &g in groups_of_host
                    .get(h as usize)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if let Some(t) = touched.get_mut(g) {
                        *t += 1;
                    }
                }
            }
            for (g, t) in touched.iter_mut().enumerate() {
                if *t == 0 {
                    continue;
                }
                if let Some(u) = group_usage.get_mut(g) {
                    u.referenced_bytes += bytes;
                    u.referenced_blobs += blobs;
                    if *t == members.len() {
                        u.exclusive_bytes += bytes;
                        u.exclusive_blobs += blobs;
                    }
                }
                *t = 0;
            }
        }
        // Snapshot counts and the newest snapshot's logical bytes (`snapshots` is oldest first).
        let mut newest: Vec<u64> = vec![0; host_names.len()];
        for s in &snapshots {
            if let Some(&h) = host_index.get(s.host.as_str()) {
                if let Some(u) = host_usage.get_mut(h as usize) {
                    u.snapshots += 1;
                }
                if let Some(n) = newest.get_mut(h as usize) {
                    *n = s.stats.logical_bytes;
                }
            }
        }
        for (u, n) in host_usage.iter_mut().zip(&newest) {
            u.newest_logical_bytes = *n;
            u.shared_bytes = u.referenced_bytes - u.exclusive_bytes;
        }
        for (u, members) in group_usage.iter_mut().zip(&group_index) {
            for &h in members {
                if let Some(hu) = host_usage.get(h as usize) {
                    u.snapshots += hu.snapshots;
                    u.newest_logical_bytes += hu.newest_logical_bytes;
                }
            }
            u.shared_bytes = u.referenced_bytes - u.exclusive_bytes;
        }
        Ok(FleetUsage {
            hosts: host_names
                .iter()
                .map(|h| h.to_string())
                .zip(host_usage)
                .collect(),
            groups: group_usage,
        })
    }

    /// The children of a tree or chunk list, each with how it is referenced.
    fn usage_children(&self, id: ChunkId, kind: Kind) -> Result<Vec<(ChunkId, Kind)>> {
        let mut out = Vec::new();
        match kind {
            Kind::Tree => {
                for e in self.tree(&id)?.entries {
                    match e.content {
                        Content::Subtree(t) => out.push((t, Kind::Tree)),
                        Content::ChunkList(l) => out.push((l, Kind::ChunkList)),
                        Content::Chunks(c) => out.extend(c.iter().map(|c| (c.id, Kind::Leaf))),
                        Content::None | Content::Target(_) => {}
                    }
                }
            }
            Kind::ChunkList => {
                let raw = self.read_blob(&id)?;
                let loc = self.live_blob(&id)?;
                let chunks = decode_chunk_list(&raw).map_err(|source| Error::CorruptBlob {
                    id,
                    pack: loc.pack.to_string(),
                    source,
                })?;
                out.extend(chunks.iter().map(|c| (c.id, Kind::Leaf)));
            }
            Kind::Leaf => {}
        }
        Ok(out)
    }

    /// Usage of every snapshot of `host`, oldest first.
    pub fn snapshot_usage(&self, host: &str) -> Result<Vec<SnapshotUsage>> {
        let mut out = Vec::new();
        for s in self.host_snapshots(host)? {
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

/// How a blob is referenced: a tree, a chunk list, or a blob without children (data, a
/// snapshot record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tree,
    ChunkList,
    Leaf,
}

/// The repository's DAG in memory for [`Repository::fleet_usage`]: blobs numbered densely,
/// each tree and chunk list with its children.
#[derive(Default)]
struct Graph {
    ids: HashMap<ChunkId, u32>,
    blobs: Vec<(ChunkId, Kind)>,
    /// Per blob: (start, trees and chunk lists below, data below) in `children`.
    spans: Vec<(usize, u32, u32)>,
    children: Vec<u32>,
}

impl Graph {
    fn len(&self) -> usize {
        self.blobs.len()
    }

    /// The blob's number, and whether it is new and (as a tree or chunk list) to be read.
    /// A blob referenced both as data and as a tree (same bytes) is read as a tree.
    fn intern(&mut self, id: ChunkId, kind: Kind) -> (u32, bool) {
        match self.ids.entry(id) {
            Entry::Occupied(o) => {
                let n = *o.get();
                let upgraded = match self.blobs.get_mut(n as usize) {
                    Some(b) if b.1 == Kind::Leaf && kind != Kind::Leaf => {
                        b.1 = kind;
                        true
                    }
                    _ => false,
                };
                (n, upgraded)
            }
            Entry::Vacant(v) => {
                let n = self.blobs.len() as u32;
                v.insert(n);
                self.blobs.push((id, kind));
                self.spans.push((0, 0, 0));
                (n, kind != Kind::Leaf)
            }
        }
    }

    fn id(&self, n: u32) -> ChunkId {
        self.blobs.get(n as usize).map_or(ChunkId([0; 32]), |b| b.0)
    }

    fn kind(&self, n: u32) -> Kind {
        self.blobs.get(n as usize).map_or(Kind::Leaf, |b| b.1)
    }

    fn set_children(&mut self, n: u32, mut nodes: Vec<u32>, mut data: Vec<u32>) {
        nodes.sort_unstable();
        nodes.dedup();
        data.sort_unstable();
        data.dedup();
        let start = self.children.len();
        self.children.extend_from_slice(&nodes);
        self.children.extend_from_slice(&data);
        if let Some(s) = self.spans.get_mut(n as usize) {
            *s = (start, nodes.len() as u32, data.len() as u32);
        }
    }

    fn nodes_below(&self, n: u32) -> &[u32] {
        let (start, nodes, _) = self.spans.get(n as usize).copied().unwrap_or_default();
        self.children
            .get(start..start + nodes as usize)
            .unwrap_or_default()
    }

    fn data_below(&self, n: u32) -> &[u32] {
        let (start, nodes, data) = self.spans.get(n as usize).copied().unwrap_or_default();
        let from = start + nodes as usize;
        self.children
            .get(from..from + data as usize)
            .unwrap_or_default()
    }
}

const EMPTY_SET: u32 = 0;

/// Interned sets of host numbers (sorted), with memoised insertion and union.
struct Sets {
    members: Vec<Vec<u32>>,
    by_members: HashMap<Vec<u32>, u32>,
    with_memo: HashMap<(u32, u32), u32>,
    union_memo: HashMap<(u32, u32), u32>,
}

impl Sets {
    fn new() -> Self {
        let mut by_members = HashMap::new();
        by_members.insert(Vec::new(), EMPTY_SET);
        Sets {
            members: vec![Vec::new()],
            by_members,
            with_memo: HashMap::new(),
            union_memo: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    fn members(&self, set: u32) -> &[u32] {
        self.members
            .get(set as usize)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn contains(&self, set: u32, host: u32) -> bool {
        self.members(set).binary_search(&host).is_ok()
    }

    fn intern(&mut self, members: Vec<u32>) -> u32 {
        if let Some(&s) = self.by_members.get(&members) {
            return s;
        }
        let s = self.members.len() as u32;
        self.members.push(members.clone());
        self.by_members.insert(members, s);
        s
    }

    fn with(&mut self, set: u32, host: u32) -> u32 {
        if let Some(&s) = self.with_memo.get(&(set, host)) {
            return s;
        }
        let mut m = self.members(set).to_vec();
        if let Err(at) = m.binary_search(&host) {
            m.insert(at, host);
        }
        let s = self.intern(m);
        self.with_memo.insert((set, host), s);
        s
    }

    fn union(&mut self, a: u32, b: u32) -> u32 {
        if a == b || b == EMPTY_SET {
            return a;
        }
        if a == EMPTY_SET {
            return b;
        }
        let key = (a.min(b), a.max(b));
        if let Some(&s) = self.union_memo.get(&key) {
            return s;
        }
        let mut m: Vec<u32> = self.members(a).to_vec();
        m.extend_from_slice(self.members(b));
        m.sort_unstable();
        m.dedup();
        let s = self.intern(m);
        self.union_memo.insert(key, s);
        s
    }
}
