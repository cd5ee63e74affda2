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
use xstore_format::host::HostName;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::index::BlobLoc;
use crate::repo::Repository;
use crate::storage::read_ahead::RangeRead;
use xstore_chunker::ChunkId;
use xstore_format::pack::BlobKind;
use xstore_format::snapshot::{Snapshot, SnapshotId};

/// Usage of a group of snapshots (a host's or an account's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Snapshots in the group.
    pub snapshots: u64,
    /// Logical (file) bytes of the newest snapshot of each host in the group, summed.
    pub newest_logical_bytes: u64,
    /// Stored bytes of the distinct blobs the group's snapshots reference.
    pub referenced_bytes: u64,
    /// Raw (uncompressed) bytes of the same blobs: what the group's hosts sent, at least.
    pub referenced_raw_bytes: u64,
    /// Stored bytes only this group references: what expiring it (and then `gc`) frees.
    pub exclusive_bytes: u64,
    /// Referenced bytes that other snapshots reference too.
    pub shared_bytes: u64,
    /// Distinct blobs referenced.
    pub referenced_blobs: u64,
    /// Blobs only this group references.
    pub exclusive_blobs: u64,
}

impl Usage {
    /// How many times the distinct bytes the group references its newest snapshots' file
    /// bytes are. Duplicates, sparse zeros and unchanged files keep it low for honest hosts
    /// (a few times at most, hundreds for disks of zeros); a host that names one chunk a
    /// million times makes it enormous, and a restore or `dump` of that snapshot would write
    /// all of it. 0 when nothing is referenced.
    pub fn logical_ratio(&self) -> f64 {
        if self.referenced_raw_bytes == 0 {
            0.0
        } else {
            self.newest_logical_bytes as f64 / self.referenced_raw_bytes as f64
        }
    }
}

/// Usage of every host and of groups of hosts ([`Repository::fleet_usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetUsage {
    /// Every host with snapshots.
    pub hosts: BTreeMap<HostName, Usage>,
    /// The groups asked for, in order (a host without snapshots contributes nothing).
    pub groups: Vec<Usage>,
}

/// Usage of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotUsage {
    /// The snapshot's id (hex in JSON).
    #[serde(serialize_with = "xstore_format::snapshot::hex_serde::serialize")]
    pub id: SnapshotId,
    /// Its host.
    pub host: HostName,
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
        let (referenced_bytes, referenced_raw_bytes, referenced_blobs) = self.referenced(&roots)?;
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
            referenced_raw_bytes,
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
    pub fn fleet_usage(&self, groups: &[Vec<HostName>]) -> Result<FleetUsage> {
        let started = std::time::Instant::now();
        let phase = |what: &str| {
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "fleet_usage: {what}"
            )
        };
        let snapshots = self.snapshots()?;
        phase("snapshot records");
        let mut host_names: Vec<&HostName> = snapshots.iter().map(|s| &s.host).collect();
        host_names.sort_unstable();
        host_names.dedup();
        let host_index: HashMap<&str, u32> = host_names
            .iter()
            .enumerate()
            .map(|(i, h)| (h.as_str(), i as u32))
            .collect();

        // Every live blob, numbered, with its size; trees and chunk lists with their place.
        let mut graph = Graph::default();
        self.index.for_each_blob(|id, loc| {
            if loc.refcount > 0 {
                graph.add(id, loc);
            }
            Ok(())
        })?;
        phase("blob scan");

        let mut roots: Vec<Vec<u32>> = vec![Vec::new(); host_names.len()];
        let mut queued = vec![false; graph.len()];
        let mut frontier = Vec::new();
        for s in &snapshots {
            let h = host_index.get(s.host.as_str()).copied().unwrap_or(0) as usize;
            let root = graph.live(&s.root)?;
            let mut held = vec![root];
            if let Some(record) = graph.number(&s.record_id(self.encryption())) {
                held.push(record);
            }
            for &n in &held {
                if graph.expands(n) && !std::mem::replace(&mut queued[n as usize], true) {
                    frontier.push(n);
                }
            }
            if let Some(r) = roots.get_mut(h) {
                r.extend(held);
            }
        }
        self.read_dag(&mut graph, frontier, queued)?;
        phase("trees read");
        tracing::debug!(
            trees = graph.parents.len(),
            edges = graph.children.len(),
            "fleet_usage: the DAG"
        );
        let (sets, set_of) = host_sets(&graph, &roots, &phase);
        phase("host sets of leaves");
        let totals = totals_per_set(&graph, &set_of, sets.len());
        let (host_usage, group_usage) =
            usage_per_host_and_group(&sets, &totals, &snapshots, &host_index, groups);
        Ok(FleetUsage {
            hosts: host_names
                .iter()
                .map(|&h| h.clone())
                .zip(host_usage)
                .collect(),
            groups: group_usage,
        })
    }

    /// Reads the trees and chunk lists below `frontier` a DAG level at a time, each level in
    /// pack order (neighbours share a pack file and its pages) on every core, recording each
    /// one's children in `graph`. `queued` marks what was queued already.
    fn read_dag(
        &self,
        graph: &mut Graph,
        mut frontier: Vec<u32>,
        mut queued: Vec<bool>,
    ) -> Result<()> {
        while !frontier.is_empty() {
            frontier.sort_unstable_by_key(|&n| graph.place(n));
            let level: Vec<RangeRead> = frontier
                .iter()
                .filter_map(|&n| graph.located(n))
                .map(|(_, loc)| RangeRead {
                    pack: loc.pack,
                    offset: loc.offset,
                    len: loc.span(),
                })
                .collect();
            self.storage().will_need(&level);
            drop(level);
            // Each task returns its parents' children in one vector, ordered as
            // `Graph::set_children` keeps them (few allocations, few frees of another
            // thread's memory, and the main thread only queues the trees below).
            let read: Vec<Result<ReadBatch>> = frontier
                .par_chunks(READ_BATCH)
                .map(|batch| {
                    let (mut flat, mut counts) = (Vec::new(), Vec::with_capacity(batch.len()));
                    let (mut ids, mut keys) = (Vec::new(), Vec::new());
                    for &n in batch {
                        ids.clear();
                        if let Some((id, loc)) = graph.located(n) {
                            self.for_each_blob_child(&id, &loc, |child| ids.push(child))?;
                        }
                        // Looked up in a loop of their own, so that the cache misses of
                        // independent lookups overlap.
                        keys.clear();
                        for child in &ids {
                            let c = graph.live(child)?;
                            keys.push(u64::from(!graph.expands(c)) << 32 | u64::from(c));
                        }
                        keys.sort_unstable();
                        keys.dedup();
                        let nodes = keys.iter().take_while(|&&k| k >> 32 == 0).count();
                        flat.extend(keys.iter().map(|&k| k as u32));
                        counts.push((nodes as u32, (keys.len() - nodes) as u32));
                    }
                    Ok(ReadBatch { flat, counts })
                })
                .collect();
            let mut next = Vec::new();
            for (batch, read) in frontier.chunks(READ_BATCH).zip(read) {
                let ReadBatch { flat, counts } = read?;
                let mut rest = flat.as_slice();
                for (&n, &(nodes, leaves)) in batch.iter().zip(&counts) {
                    let (below, after) = rest
                        .split_at_checked((nodes + leaves) as usize)
                        .unwrap_or((rest, &[]));
                    rest = after;
                    for &c in below.get(..nodes as usize).unwrap_or_default() {
                        if !std::mem::replace(&mut queued[c as usize], true) {
                            next.push(c);
                        }
                    }
                    graph.set_children(n, below, nodes);
                }
            }
            frontier = next;
        }
        Ok(())
    }

    /// Usage of every snapshot of `host`, oldest first.
    pub fn snapshot_usage(&self, host: &HostName) -> Result<Vec<SnapshotUsage>> {
        let mut out = Vec::new();
        for s in self.host_snapshots(host)? {
            let (exclusive_bytes, _) = self.exclusive(&self.held_by(&s)?)?;
            out.push(SnapshotUsage {
                id: s.id,
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
        let record = s.record_id(self.encryption());
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

    /// Stored bytes, raw bytes and count of the distinct blobs reachable from `roots`.
    fn referenced(&self, roots: &[ChunkId]) -> Result<(u64, u64, u64)> {
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let mut stack: Vec<ChunkId> = roots.to_vec();
        let (mut bytes, mut raw, mut blobs) = (0u64, 0u64, 0u64);
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let loc = self.live_blob(&id)?;
            bytes += loc.span();
            raw += u64::from(loc.raw_len);
            blobs += 1;
            stack.extend(
                self.blob_children(&id, &loc)?
                    .into_iter()
                    .filter(|c| !seen.contains(c)),
            );
        }
        Ok((bytes, raw, blobs))
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

/// Which hosts reach each blob: a walk per host over the trees in memory, stopping where the
/// host is already recorded (everything below has it too); then each blob without children
/// takes the hosts of its parents. Returns the interned sets and each blob's set.
fn host_sets(graph: &Graph, roots: &[Vec<u32>], phase: &dyn Fn(&str)) -> (Sets, Vec<u32>) {
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
    // A blob without children is reached by every host that reaches one of its parents.
    // Parents with the most hosts go first: a leaf's later parents then mostly add hosts
    // it already has (no new set), instead of every order of unions making sets of its own.
    phase("host sets of trees");
    let mut parents = graph.parents();
    parents.sort_by_cached_key(|&n| {
        let set = set_of.get(n as usize).copied().unwrap_or(EMPTY_SET);
        std::cmp::Reverse(sets.members(set).len())
    });
    for n in parents {
        let parent = set_of.get(n as usize).copied().unwrap_or(EMPTY_SET);
        for &d in graph.leaves_below(n) {
            if let Some(slot) = set_of.get_mut(d as usize) {
                *slot = sets.union(*slot, parent);
            }
        }
    }
    phase("host sets of leaves");
    (sets, set_of)
}

/// Per set of hosts: stored bytes, blobs, raw bytes.
fn totals_per_set(graph: &Graph, set_of: &[u32], sets: usize) -> Vec<(u64, u64, u64)> {
    let mut totals = vec![(0u64, 0u64, 0u64); sets];
    for (n, &set) in set_of.iter().enumerate() {
        if let Some(t) = totals.get_mut(set as usize) {
            let (span, raw) = graph.sizes(n as u32);
            t.0 += span;
            t.1 += 1;
            t.2 += raw;
        }
    }

    totals
}

/// Each host's and each group's usage from the totals of the host sets, with snapshot counts
/// and newest logical bytes from `snapshots` (oldest first).
fn usage_per_host_and_group(
    sets: &Sets,
    totals: &[(u64, u64, u64)],
    snapshots: &[Snapshot],
    host_index: &HashMap<&str, u32>,
    groups: &[Vec<HostName>],
) -> (Vec<Usage>, Vec<Usage>) {
    let hosts = host_index.len();
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
    let mut groups_of_host: Vec<Vec<usize>> = vec![Vec::new(); hosts];
    for (g, members) in group_index.iter().enumerate() {
        for &h in members {
            if let Some(v) = groups_of_host.get_mut(h as usize) {
                v.push(g);
            }
        }
    }
    let mut host_usage = vec![Usage::default(); hosts];
    let mut group_usage = vec![Usage::default(); groups.len()];
    let mut touched = vec![0usize; groups.len()];
    // Live blobs no snapshot reaches (set 0: a running backup's, a held pack's) count
    // for nobody.
    for (set, &(bytes, blobs, raw)) in totals.iter().enumerate().skip(1) {
        let members = sets.members(set as u32);
        for &h in members {
            if let Some(u) = host_usage.get_mut(h as usize) {
                u.referenced_bytes += bytes;
                u.referenced_raw_bytes += raw;
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
                u.referenced_raw_bytes += raw;
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
    let mut newest: Vec<u64> = vec![0; hosts];
    for s in snapshots {
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
    (host_usage, group_usage)
}

/// The repository's live blobs for [`Repository::fleet_usage`], numbered densely (ids → numbers
/// in one map, everything else in vectors: ~60 bytes per live blob), each tree and chunk
/// list with its place in the packs and, once read, its children.
#[derive(Default)]
struct Graph {
    numbers: IdMap<u32>,
    ids: Vec<ChunkId>,
    /// Per blob: stored span (header and stored bytes, saturating) and raw length.
    sizes: Vec<[u32; 2]>,
    /// Per blob: its slot in `parents` if it is a tree or chunk list, else `NOT_A_PARENT`.
    parent_slot: Vec<u32>,
    /// Per tree or chunk list: (blob, location, start in `children`, trees and chunk lists
    /// below, leaves below).
    parents: Vec<(u32, BlobLoc, usize, u32, u32)>,
    children: Vec<u32>,
}

const NOT_A_PARENT: u32 = u32::MAX;

/// Trees and chunk lists one task reads in a row (neighbours in pack order).
const READ_BATCH: usize = 256;

/// What one task read of a batch of parents: their children, one parent after another, each
/// parent's run ordered as [`Graph::set_children`] keeps it, and per parent the run's
/// (trees, leaves) counts.
struct ReadBatch {
    flat: Vec<u32>,
    counts: Vec<(u32, u32)>,
}

impl Graph {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn add(&mut self, id: ChunkId, loc: BlobLoc) {
        let n = self.ids.len() as u32;
        self.numbers.insert(id, n);
        self.ids.push(id);
        self.sizes
            .push([u32::try_from(loc.span()).unwrap_or(u32::MAX), loc.raw_len]);
        if matches!(loc.kind, BlobKind::Tree | BlobKind::ChunkList) {
            self.parent_slot.push(self.parents.len() as u32);
            self.parents.push((n, loc, 0, 0, 0));
        } else {
            self.parent_slot.push(NOT_A_PARENT);
        }
    }

    fn number(&self, id: &ChunkId) -> Option<u32> {
        self.numbers.get(id).copied()
    }

    /// The number of a blob a snapshot or parent references: it must be live.
    fn live(&self, id: &ChunkId) -> Result<u32> {
        self.number(id).ok_or(Error::MissingBlob(*id))
    }

    /// Stored span and raw length of blob `n`.
    fn sizes(&self, n: u32) -> (u64, u64) {
        let [span, raw] = self.sizes.get(n as usize).copied().unwrap_or_default();
        (u64::from(span), u64::from(raw))
    }

    fn parent(&self, n: u32) -> Option<&(u32, BlobLoc, usize, u32, u32)> {
        let slot = *self.parent_slot.get(n as usize)?;
        self.parents.get(slot as usize)
    }

    /// Whether the blob has children to read (a tree or chunk list).
    fn expands(&self, n: u32) -> bool {
        self.parent(n).is_some()
    }

    /// Where a tree or chunk list is, for reading in pack order (data first, unread).
    fn place(&self, n: u32) -> Option<(xstore_format::pack::PackId, u64)> {
        self.parent(n).map(|p| (p.1.pack, p.1.offset))
    }

    /// A tree's or chunk list's id and location; `None` for data.
    fn located(&self, n: u32) -> Option<(ChunkId, BlobLoc)> {
        Some((*self.ids.get(n as usize)?, self.parent(n)?.1))
    }

    /// Records a parent's distinct children: its `nodes` trees and chunk lists first, then
    /// its leaves.
    fn set_children(&mut self, n: u32, below: &[u32], nodes: u32) {
        let start = self.children.len();
        self.children.extend_from_slice(below);
        let Some(&slot) = self.parent_slot.get(n as usize) else {
            return;
        };
        if let Some(p) = self.parents.get_mut(slot as usize) {
            p.2 = start;
            p.3 = nodes;
            p.4 = below.len() as u32 - nodes;
        }
    }

    /// The blobs that are trees or chunk lists.
    fn parents(&self) -> Vec<u32> {
        self.parents.iter().map(|p| p.0).collect()
    }

    fn nodes_below(&self, n: u32) -> &[u32] {
        let (start, nodes) = self.parent(n).map_or((0, 0), |p| (p.2, p.3 as usize));
        self.children.get(start..start + nodes).unwrap_or_default()
    }

    fn leaves_below(&self, n: u32) -> &[u32] {
        let (from, leaves) = self
            .parent(n)
            .map_or((0, 0), |p| (p.2 + p.3 as usize, p.4 as usize));
        self.children.get(from..from + leaves).unwrap_or_default()
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
        let (big, small) = if self.members(a).len() >= self.members(b).len() {
            (a, b)
        } else {
            (b, a)
        };
        if self
            .members(small)
            .iter()
            .all(|h| self.members(big).binary_search(h).is_ok())
        {
            self.union_memo.insert(key, big);
            return big;
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
