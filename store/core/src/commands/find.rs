//! Which snapshots hold a path (`xstore find`): every matching path of every selected snapshot,
//! listed per host and path as its versions, oldest first.
//!
//! A directory that is the same tree in many snapshots is searched once: the matches below a
//! tree at a given path are cached by (tree id, path), so searching a thousand snapshots of a
//! host reads about as many trees as the host has distinct ones. Whether a version changed is
//! decided from chunk ids (and subtree ids, link targets), never from file data.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use super::globs::PathGlobs;
use crate::error::{Error, Result};
use crate::repo::Repository;
use xstore_chunker::ChunkId;
use xstore_format::host::HostName;
use xstore_format::meta::EntryKind;
use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_format::tree::Entry;

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    /// Globs: one without `/` matches entry names (`config.php`, `*.php`), one with `/` the
    /// full path inside the snapshot (`/var/www/shop/config.php`, `/var/www/**/*.php`).
    pub patterns: Vec<String>,
    /// Only this host's snapshots.
    pub host: Option<HostName>,
    /// Only snapshots started at or after this time (ns since the epoch).
    pub since_ns: Option<i64>,
}

/// How a version compares with the previous version of the same path on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionChange {
    /// The oldest selected snapshot that holds the path.
    First,
    /// Kind or content differ from the previous version (chunk ids, subtree id, link target
    /// or device number).
    Changed,
    /// Same kind and content as the previous version (metadata may differ).
    Same,
}

/// One snapshot's version of a path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoundVersion {
    /// Snapshot id (hex in JSON).
    #[serde(serialize_with = "xstore_format::snapshot::hex_serde::serialize")]
    pub snapshot: SnapshotId,
    /// The snapshot's start time, ns since the epoch.
    pub time_ns: i64,
    /// The snapshot's tier positions (`daily.0`, …).
    pub positions: Vec<String>,
    /// Entry kind.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Compared with the previous version.
    pub change: VersionChange,
}

/// A matching path of one host with its versions, oldest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoundPath {
    /// Host name.
    pub host: HostName,
    /// Path inside the snapshots (lossy UTF-8).
    pub path: String,
    /// One per snapshot that holds the path.
    pub versions: Vec<FoundVersion>,
    /// When the host's newer snapshots no longer hold it (deleted or moved): the first
    /// selected snapshot of the host after its last version.
    pub absent_since: Option<AbsentSince>,
}

/// The first snapshot that no longer holds a path ([`FoundPath::absent_since`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AbsentSince {
    /// Snapshot id (hex in JSON).
    #[serde(serialize_with = "xstore_format::snapshot::hex_serde::serialize")]
    pub snapshot: SnapshotId,
    /// The snapshot's start time, ns since the epoch.
    pub time_ns: i64,
    /// The snapshot's tier positions.
    pub positions: Vec<String>,
}

/// What `find` found and what it cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FindReport {
    /// Matching paths, by host then path.
    pub paths: Vec<FoundPath>,
    /// Snapshots searched.
    pub snapshots: u64,
    /// Tree blobs read (distinct (tree, path) pairs): the cost of the search.
    pub trees_read: u64,
}

/// Matches at and below one tree at one path, shared by every snapshot holding that tree.
#[derive(Default)]
struct Matches {
    here: Vec<(Vec<u8>, Arc<Entry>)>,
    below: Vec<Arc<Matches>>,
}

impl Matches {
    fn each(&self, f: &mut dyn FnMut(&[u8], &Arc<Entry>)) {
        for (path, entry) in &self.here {
            f(path, entry);
        }
        for m in &self.below {
            m.each(f);
        }
    }
}

struct Search<'a> {
    repo: &'a Repository,
    globs: PathGlobs,
    /// `None`: nothing matches at or below that tree.
    seen: HashMap<(ChunkId, Vec<u8>), Option<Arc<Matches>>>,
    trees_read: u64,
}

impl Search<'_> {
    /// The matches below the directory at `prefix` (empty for the root) whose tree is `id`.
    fn tree(&mut self, id: ChunkId, prefix: &[u8]) -> Result<Option<Arc<Matches>>> {
        let key = (id, prefix.to_vec());
        if let Some(found) = self.seen.get(&key) {
            return Ok(found.clone());
        }
        self.trees_read += 1;
        let tree = self.repo.tree(&id)?;
        let mut found = Matches::default();
        for entry in tree.entries {
            let mut path = Vec::with_capacity(prefix.len() + 1 + entry.name.len());
            path.extend_from_slice(prefix);
            path.push(b'/');
            path.extend_from_slice(&entry.name);
            let sub = entry.subtree();
            if self
                .globs
                .is_match(Path::new(OsStr::from_bytes(&path)), &entry.name)
            {
                found.here.push((path.clone(), Arc::new(entry)));
            }
            if let Some(sub) = sub {
                if let Some(m) = self.tree(sub, &path)? {
                    found.below.push(m);
                }
            }
        }
        let found = (!found.here.is_empty() || !found.below.is_empty()).then(|| Arc::new(found));
        self.seen.insert(key, found.clone());
        Ok(found)
    }
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind && a.content == b.content && a.attrs.rdev == b.attrs.rdev
}

impl Repository {
    /// Every path matching `opts.patterns` in the selected snapshots, as versions per host and
    /// path (module documentation). An empty report means no selected snapshot holds one.
    pub fn find(&self, opts: &FindOptions) -> Result<FindReport> {
        if opts.patterns.is_empty() {
            return Err(Error::InvalidArgument("find needs a pattern".into()));
        }
        let all = self.snapshots()?;
        if let Some(h) = &opts.host {
            if !all.iter().any(|s| &s.host == h) {
                return Err(Error::InvalidArgument(format!(
                    "host {h} has no snapshots in this repository"
                )));
            }
        }
        let positions = super::retention::tier_positions(&all);
        let selected: Vec<&Snapshot> = all
            .iter()
            .filter(|s| opts.host.as_ref().is_none_or(|h| &s.host == h))
            .filter(|s| opts.since_ns.is_none_or(|t| s.start_ns >= t))
            .collect();
        let mut search = Search {
            repo: self,
            globs: PathGlobs::new(&opts.patterns, "find pattern")?,
            seen: HashMap::new(),
            trees_read: 0,
        };
        type Versions = Vec<(FoundVersion, Arc<Entry>)>;
        let mut by_path: BTreeMap<(HostName, Vec<u8>), Versions> = BTreeMap::new();
        for s in &selected {
            let Some(matches) = search.tree(s.root, b"")? else {
                continue;
            };
            matches.each(&mut |path, entry| {
                let versions = by_path.entry((s.host.clone(), path.to_vec())).or_default();
                let change = match versions.last() {
                    None => VersionChange::First,
                    Some((_, prev)) if same_content(prev, entry) => VersionChange::Same,
                    Some(_) => VersionChange::Changed,
                };
                let version = FoundVersion {
                    snapshot: s.id,
                    time_ns: s.start_ns,
                    positions: positions.get(&s.id).cloned().unwrap_or_default(),
                    kind: entry.kind,
                    size: entry.attrs.size,
                    mtime_ns: entry.attrs.mtime_ns,
                    change,
                };
                versions.push((version, entry.clone()));
            });
        }
        // Each host's selected snapshots, oldest first (as `snapshots()` lists them).
        let mut of_host: HashMap<&str, Vec<&Snapshot>> = HashMap::new();
        for s in &selected {
            of_host.entry(s.host.as_str()).or_default().push(s);
        }
        let absent_after = |host: &str, last: &SnapshotId| -> Option<AbsentSince> {
            let snaps = of_host.get(host)?;
            let at = snaps.iter().position(|s| s.id == *last)?;
            let next = snaps.get(at + 1)?;
            Some(AbsentSince {
                snapshot: next.id,
                time_ns: next.start_ns,
                positions: positions.get(&next.id).cloned().unwrap_or_default(),
            })
        };
        Ok(FindReport {
            paths: by_path
                .into_iter()
                .map(|((host, path), versions)| {
                    let absent_since = versions
                        .last()
                        .and_then(|(v, _)| absent_after(&host, &v.snapshot));
                    FoundPath {
                        path: String::from_utf8_lossy(&path).into_owned(),
                        versions: versions.into_iter().map(|(v, _)| v).collect(),
                        absent_since,
                        host,
                    }
                })
                .collect(),
            snapshots: selected.len() as u64,
            trees_read: search.trees_read,
        })
    }
}
