//! A read-only filesystem view of a repository, shared by the FUSE mount and the NFS export
//! (ARCHITECTURE.md invariant 12):
//!
//! ```text
//! /                                  tier positions and `hosts`
//! /<tier>.<n>/<host>/…               rsnapshot's names (`daily.0/web1.example.net/etc/…`);
//!                                    they move to the new snapshot when tiers rotate
//! /hosts/<host>/<time>/…             stable names (`2026-11-28T041500Z`): never change
//! /hosts/<host>/latest               symlink to the newest snapshot's <time>
//! ```
//!
//! Directories load lazily (one tree blob each, cached). Files map offsets to chunks through
//! a per-file offset index (binary search); decoded trees and decompressed chunks are kept in
//! LRU caches bounded by bytes ([`ViewCaches`]), so small sequential reads decompress each
//! chunk once. Nodes keep entries without their xattrs. Inode numbers are hashes of
//! what a node is (route, snapshot id, path), so the same entry has the same number in every
//! session. The view reopens its read-only repository handle when the catalog is older than
//! [`ViewOptions::refresh`]; nodes already looked up keep serving the snapshot they belong
//! to (an open file survives a rotation).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use xstore::HostName;

use crate::cache::ByteLru;
use xstore::{Attrs, ChunkId, Error, Repository, Result};
use xstore_format::meta::EntryKind;
use xstore_format::snapshot::Snapshot;
use xstore_format::tree::{ChunkRef, Content, Entry};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Name of the stable-path directory at the root.
pub const HOSTS_DIR: &str = "hosts";
/// Name of the per-host symlink to its newest snapshot.
pub const LATEST: &str = "latest";

/// Why a view operation failed; [`FsError::errno`] maps it for the front ends.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such node or name.
    #[error("no such file or directory")]
    NotFound,
    /// A directory operation on something else.
    #[error("not a directory")]
    NotADirectory,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsADirectory,
    /// Not a symlink.
    #[error("not a symbolic link")]
    NotASymlink,
    /// The view is read-only.
    #[error("read-only file system")]
    ReadOnly,
    /// The caller's uid and groups do not permit it.
    #[error("permission denied")]
    PermissionDenied,
    /// The repository failed (I/O, corruption).
    #[error(transparent)]
    Repo(#[from] Error),
}

impl FsError {
    /// The errno a filesystem returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::NotASymlink => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::PermissionDenied => libc::EACCES,
            FsError::Repo(_) => libc::EIO,
        }
    }
}

/// Result of view operations.
pub type FsResult<T> = std::result::Result<T, FsError>;

/// How to build a view.
#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// Only these hosts are visible (an account's, for NFS); `None`: all.
    pub hosts: Option<Vec<HostName>>,
    /// Bytes of decompressed chunks kept in memory.
    pub cache_bytes: usize,
    /// Bytes of decoded trees kept in memory.
    pub tree_cache_bytes: usize,
    /// How old the catalog (snapshots, tier positions) may get before it is reloaded.
    pub refresh: Duration,
    /// The most nodes remembered (`None`: every node looked up, for front ends whose clients
    /// hold inode numbers, such as the kernel's FUSE). When bounded, nodes not used for a
    /// while are forgotten (two generations of half the bound each) and a forgotten inode
    /// number is [`FsError::NotFound`]: for front ends that resolve paths anew per request.
    pub max_nodes: Option<usize>,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            hosts: None,
            cache_bytes: 64 << 20,
            tree_cache_bytes: 32 << 20,
            refresh: Duration::from_secs(2),
            max_nodes: None,
        }
    }
}

/// Attributes of a node: for snapshot entries exactly as backed up (the format's [`Attrs`],
/// with the mode's file-type bits cleared, a symlink's size its target's length and at least
/// one link), for the directories above them made up here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAttr {
    /// The view's inode number (a hash of what the node is; not the backed-up inode, which
    /// is `attrs.inode`).
    pub ino: u64,
    /// File, directory, symlink, device or fifo.
    pub kind: EntryKind,
    /// Mode, owner, size, times, links and device number.
    pub attrs: Attrs,
    /// Whether the node and the name it was found under never change (an entry inside a
    /// snapshot): front ends may cache it long. Names above snapshots move on rotation.
    pub immutable: bool,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    /// Name bytes.
    pub name: Vec<u8>,
    /// Its attributes.
    pub attr: NodeAttr,
}

#[derive(Debug, Clone)]
enum Kind {
    Root,
    Tier(String),
    Hosts,
    Host(HostName),
    Latest(HostName),
    /// A snapshot's root directory.
    SnapRoot(Arc<Snapshot>),
    /// An entry inside a snapshot, without its xattrs ([`slim`]), and the tree holding it
    /// (where its xattrs are read when asked for).
    Entry(Arc<Snapshot>, Arc<Entry>, ChunkId),
}

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    /// What the node is, hashed into its inode number; children extend it.
    key: Vec<u8>,
    /// The key of the snapshot root this node is under (empty above snapshots): hard links
    /// of one snapshot share an inode number derived from it.
    snap_key: Vec<u8>,
    /// The directory it was found in (the root is its own parent).
    parent: u64,
}

struct Catalog {
    repo: Arc<Repository>,
    /// Visible snapshots per host, oldest first, with their names under `hosts/<host>/`.
    by_host: HashMap<HostName, Vec<(String, Arc<Snapshot>)>>,
    /// Tier position (`daily.0`) → host → snapshot.
    positions: HashMap<String, HashMap<HostName, Arc<Snapshot>>>,
    /// End of the newest visible snapshot: the time of the directories above snapshots.
    newest_ns: i64,
    loaded: Instant,
}

/// A snapshot of a host as the view names it.
#[derive(Debug, Clone)]
pub struct NamedSnapshot {
    /// Its stable directory name under `hosts/<host>/` ([`snapshot_dir_name`], with the
    /// short id added when two started in the same second).
    pub name: String,
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The tier positions naming it now (`daily.1`), in tier order.
    pub positions: Vec<String>,
}

/// Where a file's bytes are: its chunks and the offset each starts at.
struct FileIndex {
    chunks: Vec<ChunkRef>,
    starts: Vec<u64>,
    size: u64,
}

/// The nodes looked up: all of them, or (bounded) two generations, where a node found in the
/// older one moves to the newer, and the older is dropped when the newer is full.
struct NodeTable {
    current: HashMap<u64, Node>,
    previous: HashMap<u64, Node>,
    generation: Option<usize>,
}

impl NodeTable {
    fn get(&self, ino: u64) -> Option<&Node> {
        self.current.get(&ino).or_else(|| self.previous.get(&ino))
    }

    fn insert(&mut self, ino: u64, node: Node) {
        if let Some(max) = self.generation {
            if self.current.len() >= max && !self.current.contains_key(&ino) {
                // The root never goes: every path starts there.
                let root = self.current.get(&ROOT_INO).cloned();
                self.previous = std::mem::take(&mut self.current);
                if let Some(root) = root {
                    self.current.insert(ROOT_INO, root);
                }
            }
        }
        self.current.insert(ino, node);
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The read-only filesystem view (module documentation).
pub struct FsView {
    path: PathBuf,
    opts: ViewOptions,
    catalog: RwLock<Arc<Catalog>>,
    nodes: RwLock<NodeTable>,
    caches: Arc<ViewCaches>,
    /// This view's part of `caches`.
    cache_scope: u64,
    files: Mutex<lru::LruCache<u64, Arc<FileIndex>>>,
}

/// The byte-bounded caches of decoded trees and decompressed chunks. Views of one repository
/// may share them (an NFS server's views do: one memory budget). Entries are keyed by the
/// view's cache scope and the blob id: views of different scopes (accounts) never hit each
/// other's entries here; one scope's traffic only evicts another's. What stays shared below
/// these caches, as it is for any two readers of one repository, is the read-only index
/// handle (its block cache of blob locations) and the kernel's page cache of pack files: a
/// reader timing its own reads may still tell that a block was read recently.
pub struct ViewCaches {
    trees: Mutex<ByteLru<(u64, ChunkId), Vec<Entry>>>,
    chunks: Mutex<ByteLru<(u64, ChunkId), Vec<u8>>>,
    /// The read-only handle the views share: one index (and its block cache) open at a
    /// time however many views there are, reopened when older than the asking view's
    /// refresh interval (a read-only handle does not see later commits).
    repo: Mutex<Option<SharedRepo>>,
}

/// A read-only repository handle, where it is, and when it was opened.
struct SharedRepo {
    path: PathBuf,
    opened: Instant,
    repo: Arc<Repository>,
}

impl ViewCaches {
    /// Caches holding at most `tree_bytes` of decoded trees (estimated: names, xattrs,
    /// chunk lists) and `chunk_bytes` of decompressed chunks.
    pub fn new(tree_bytes: usize, chunk_bytes: usize) -> Arc<ViewCaches> {
        Arc::new(ViewCaches {
            trees: Mutex::new(ByteLru::new(tree_bytes)),
            chunks: Mutex::new(ByteLru::new(chunk_bytes)),
            repo: Mutex::new(None),
        })
    }

    /// The repository at `path`, read-only: the handle opened last, or a new one when that
    /// is older than `refresh` or of another path. Opening happens under the lock, so
    /// views that ask at once open it once.
    fn repository(&self, path: &Path, refresh: Duration) -> Result<Arc<Repository>> {
        let mut shared = self.repo.lock().map_err(|_| Error::Poisoned)?;
        if let Some(s) = shared.as_ref() {
            if s.path == path && s.opened.elapsed() < refresh {
                return Ok(s.repo.clone());
            }
        }
        let repo = Arc::new(Repository::open_read_only(path)?);
        *shared = Some(SharedRepo {
            path: path.to_path_buf(),
            opened: Instant::now(),
            repo: repo.clone(),
        });
        Ok(repo)
    }

    /// Bytes held: decoded trees (estimated) and chunks.
    pub fn held(&self) -> (usize, usize) {
        (
            self.trees.lock().map_or(0, |c| c.bytes()),
            self.chunks.lock().map_or(0, |c| c.bytes()),
        )
    }
}

/// The entry as a view node keeps it: without its xattrs, which can be large and are read
/// only by getxattr.
fn slim(e: &Entry) -> Arc<Entry> {
    Arc::new(Entry {
        name: e.name.clone(),
        kind: e.kind,
        attrs: e.attrs,
        xattrs: Vec::new(),
        content: e.content.clone(),
    })
}

/// Estimated bytes of a decoded tree in memory.
fn tree_bytes(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| {
            let content = match &e.content {
                Content::Chunks(c) => c.len() * std::mem::size_of::<ChunkRef>(),
                Content::Target(t) => t.len(),
                _ => 0,
            };
            let xattrs: usize = e.xattrs.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
            std::mem::size_of::<Entry>() + e.name.len() + content + xattrs
        })
        .sum()
}

/// Sort key of a tier position: by tier name, then by number (`daily.2` before `daily.10`).
fn position_order(position: &str) -> (String, u64) {
    let (tier, n) = position.rsplit_once('.').unwrap_or((position, "0"));
    (tier.to_string(), n.parse::<u64>().unwrap_or(u64::MAX))
}

fn ino_of(key: &[u8]) -> u64 {
    let h = blake3::hash(key);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    // 0 is invalid and 1 is the root.
    u64::from_le_bytes(b).max(2)
}

fn lock_err<T>(_: std::sync::PoisonError<T>) -> FsError {
    FsError::Repo(Error::Poisoned)
}

/// The stable directory name of a snapshot: its start time, `2026-11-28T041500Z`.
pub fn snapshot_dir_name(s: &Snapshot) -> String {
    xstore::format_utc(s.start_ns.div_euclid(1_000_000_000)).replace(':', "")
}

impl FsView {
    /// Opens `repo` read-only as a view, with its own caches.
    pub fn open(repo: &Path, opts: ViewOptions) -> Result<FsView> {
        let caches = ViewCaches::new(opts.tree_cache_bytes, opts.cache_bytes);
        Self::open_with_caches(repo, opts, caches, 0)
    }

    /// Opens `repo` read-only as a view that uses `caches` (shared with other views;
    /// `opts`' cache sizes are then not used). Views share cached entries only when they
    /// have the same `cache_scope` (the NFS export gives each account its own).
    pub fn open_with_caches(
        repo: &Path,
        opts: ViewOptions,
        caches: Arc<ViewCaches>,
        cache_scope: u64,
    ) -> Result<FsView> {
        let catalog = Self::load(repo, &opts, &caches)?;
        let mut nodes = NodeTable {
            current: HashMap::new(),
            previous: HashMap::new(),
            generation: opts.max_nodes.map(|m| (m / 2).max(1)),
        };
        nodes.insert(
            ROOT_INO,
            Node {
                kind: Kind::Root,
                key: b"/".to_vec(),
                snap_key: Vec::new(),
                parent: ROOT_INO,
            },
        );
        let cap = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ok(FsView {
            path: repo.to_path_buf(),
            caches,
            cache_scope,
            opts,
            catalog: RwLock::new(Arc::new(catalog)),
            nodes: RwLock::new(nodes),
            files: Mutex::new(lru::LruCache::new(cap(1024))),
        })
    }

    fn load(path: &Path, opts: &ViewOptions, caches: &ViewCaches) -> Result<Catalog> {
        let repo = caches.repository(path, opts.refresh)?;
        let snapshots = repo.snapshots()?;
        let positions_of = xstore::tier_positions(&snapshots);
        let mut by_host: HashMap<HostName, Vec<Arc<Snapshot>>> = HashMap::new();
        let mut positions: HashMap<String, HashMap<HostName, Arc<Snapshot>>> = HashMap::new();
        for s in snapshots {
            if opts.hosts.as_ref().is_some_and(|h| !h.contains(&s.host)) {
                continue;
            }
            let s = Arc::new(s);
            for p in positions_of.get(&s.id).into_iter().flatten() {
                positions
                    .entry(p.clone())
                    .or_default()
                    .insert(s.host.clone(), s.clone());
            }
            by_host.entry(s.host.clone()).or_default().push(s);
        }
        let newest_ns = by_host
            .values()
            .flatten()
            .map(|s| s.end_ns)
            .max()
            .unwrap_or(0);
        // Names: the start time, with the short id added when two snapshots of a host
        // started in the same second.
        let by_host = by_host
            .into_iter()
            .map(|(host, snaps)| {
                let mut count: HashMap<String, usize> = HashMap::new();
                for s in &snaps {
                    *count.entry(snapshot_dir_name(s)).or_default() += 1;
                }
                let named = snaps
                    .into_iter()
                    .map(|s| {
                        let name = snapshot_dir_name(&s);
                        let name = if count.get(&name).copied().unwrap_or(0) > 1 {
                            format!("{name}-{}", s.id.short())
                        } else {
                            name
                        };
                        (name, s)
                    })
                    .collect();
                (host, named)
            })
            .collect();
        Ok(Catalog {
            repo,
            newest_ns,
            by_host,
            positions,
            loaded: Instant::now(),
        })
    }

    /// The catalog, reloaded first when it is older than the refresh interval.
    fn catalog(&self) -> FsResult<Arc<Catalog>> {
        let current = self.catalog.read().map_err(lock_err)?.clone();
        if current.loaded.elapsed() < self.opts.refresh {
            return Ok(current);
        }
        let fresh = Arc::new(Self::load(&self.path, &self.opts, &self.caches)?);
        *self.catalog.write().map_err(lock_err)? = fresh.clone();
        Ok(fresh)
    }

    /// The hosts the view shows (those with snapshots), by name.
    pub fn hosts(&self) -> FsResult<Vec<HostName>> {
        let mut hosts: Vec<HostName> = self.catalog()?.by_host.keys().cloned().collect();
        hosts.sort();
        Ok(hosts)
    }

    /// The snapshots of `host` the view shows, oldest first (none for a host it does not
    /// show).
    pub fn host_snapshots(&self, host: &str) -> FsResult<Vec<NamedSnapshot>> {
        let cat = self.catalog()?;
        let mut named: Vec<NamedSnapshot> = cat
            .by_host
            .get(host)
            .into_iter()
            .flatten()
            .map(|(name, s)| NamedSnapshot {
                name: name.clone(),
                snapshot: s.clone(),
                positions: Vec::new(),
            })
            .collect();
        for (position, hosts) in &cat.positions {
            if let Some(s) = hosts.get(host) {
                if let Some(n) = named.iter_mut().find(|n| n.snapshot.id == s.id) {
                    n.positions.push(position.clone());
                }
            }
        }
        for n in &mut named {
            n.positions.sort_by_key(|p| position_order(p));
        }
        Ok(named)
    }

    /// The read-only repository handle the view reads (reopened on refresh).
    pub fn repository(&self) -> FsResult<Arc<Repository>> {
        Ok(self.catalog()?.repo.clone())
    }

    fn repo(&self) -> FsResult<Arc<Repository>> {
        Ok(self.catalog.read().map_err(lock_err)?.repo.clone())
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        let nodes = self.nodes.read().map_err(lock_err)?;
        if let Some(n) = nodes.current.get(&ino) {
            return Ok(n.clone());
        }
        let found = nodes.get(ino).cloned().ok_or(FsError::NotFound)?;
        drop(nodes);
        // In use again: into the newer generation, so it outlives the older one.
        self.nodes
            .write()
            .map_err(lock_err)?
            .insert(ino, found.clone());
        Ok(found)
    }

    /// How many nodes the view remembers now.
    pub fn nodes_held(&self) -> usize {
        self.nodes.read().map_or(0, |n| n.len())
    }

    fn remember(
        &self,
        parent_ino: u64,
        parent: &Node,
        name: &[u8],
        kind: Kind,
    ) -> FsResult<(u64, Node)> {
        let mut key = parent.key.clone();
        key.push(0);
        key.extend_from_slice(name);
        let mut snap_key = parent.snap_key.clone();
        if let Kind::SnapRoot(s) = &kind {
            // The same tier path names another snapshot after a rotation: another inode.
            key.push(0);
            key.extend_from_slice(&s.id.0);
            snap_key = key.clone();
        }
        let ino = match &kind {
            // Hard links: one inode per original (device, inode) within the snapshot.
            Kind::Entry(_, e, _) if e.kind != EntryKind::Dir && e.attrs.nlink > 1 => {
                let mut link = snap_key.clone();
                link.extend_from_slice(b"\0hardlink\0");
                link.extend_from_slice(&e.attrs.dev.to_le_bytes());
                link.extend_from_slice(&e.attrs.inode.to_le_bytes());
                ino_of(&link)
            }
            _ => ino_of(&key),
        };
        let node = Node {
            kind,
            key,
            snap_key,
            parent: parent_ino,
        };
        self.nodes
            .write()
            .map_err(lock_err)?
            .insert(ino, node.clone());
        Ok((ino, node))
    }

    fn virtual_dir(ino: u64, mtime_ns: i64) -> NodeAttr {
        NodeAttr {
            ino,
            kind: EntryKind::Dir,
            attrs: Attrs {
                mode: 0o555,
                mtime_ns,
                ctime_ns: mtime_ns,
                nlink: 2,
                ..Attrs::default()
            },
            immutable: false,
        }
    }

    fn attr_of(&self, ino: u64, node: &Node) -> FsResult<NodeAttr> {
        let cat = self.catalog.read().map_err(lock_err)?.clone();
        Ok(match &node.kind {
            Kind::Root | Kind::Tier(_) | Kind::Hosts => Self::virtual_dir(ino, cat.newest_ns),
            Kind::Host(h) => {
                let newest = cat
                    .by_host
                    .get(h)
                    .and_then(|v| v.last())
                    .map_or(0, |(_, s)| s.end_ns);
                Self::virtual_dir(ino, newest)
            }
            Kind::Latest(h) => {
                let target = self.latest_target(&cat, h)?;
                let dir = Self::virtual_dir(ino, cat.newest_ns);
                NodeAttr {
                    kind: EntryKind::Symlink,
                    attrs: Attrs {
                        mode: 0o777,
                        size: target.len() as u64,
                        nlink: 1,
                        ..dir.attrs
                    },
                    ..dir
                }
            }
            // Its content never changes, but a tier name moves to another snapshot root.
            Kind::SnapRoot(s) => Self::virtual_dir(ino, s.start_ns),
            Kind::Entry(_, e, _) => NodeAttr {
                ino,
                kind: e.kind,
                attrs: Attrs {
                    mode: e.attrs.mode & 0o7777,
                    size: match &e.content {
                        Content::Target(t) => t.len() as u64,
                        _ => e.attrs.size,
                    },
                    nlink: if e.kind == EntryKind::Dir {
                        2
                    } else {
                        e.attrs.nlink.max(1)
                    },
                    ..e.attrs
                },
                immutable: true,
            },
        })
    }

    fn latest_target(&self, cat: &Catalog, host: &str) -> FsResult<String> {
        cat.by_host
            .get(host)
            .and_then(|v| v.last())
            .map(|(name, _)| name.clone())
            .ok_or(FsError::NotFound)
    }

    /// Attributes of a node. Reads only memory (the node and the catalog), never the
    /// repository: front ends may call it where blocking would hurt.
    pub fn getattr(&self, ino: u64) -> FsResult<NodeAttr> {
        let node = self.node(ino)?;
        self.attr_of(ino, &node)
    }

    fn tree_entries(&self, id: &ChunkId) -> FsResult<Arc<Vec<Entry>>> {
        let key = (self.cache_scope, *id);
        if let Some(t) = self.caches.trees.lock().map_err(lock_err)?.get(&key) {
            return Ok(t);
        }
        let entries = Arc::new(self.repo()?.tree(id)?.entries);
        let size = tree_bytes(&entries);
        self.caches
            .trees
            .lock()
            .map_err(lock_err)?
            .put(key, entries.clone(), size);
        Ok(entries)
    }

    /// The children of a directory node, as (name, kind) before they are remembered.
    fn children(&self, node: &Node) -> FsResult<Vec<(Vec<u8>, Kind)>> {
        Ok(match &node.kind {
            Kind::Root => {
                let cat = self.catalog()?;
                let mut tiers: Vec<&String> = cat.positions.keys().collect();
                tiers.sort_by_key(|p| position_order(p));
                let mut v: Vec<(Vec<u8>, Kind)> = tiers
                    .into_iter()
                    .map(|p| (p.as_bytes().to_vec(), Kind::Tier(p.clone())))
                    .collect();
                v.push((HOSTS_DIR.as_bytes().to_vec(), Kind::Hosts));
                v
            }
            Kind::Tier(p) => {
                let cat = self.catalog()?;
                let mut v: Vec<(Vec<u8>, Kind)> = cat
                    .positions
                    .get(p)
                    .map(|m| {
                        m.iter()
                            .map(|(h, s)| (h.as_bytes().to_vec(), Kind::SnapRoot(s.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            }
            Kind::Hosts => {
                let cat = self.catalog()?;
                let mut v: Vec<(Vec<u8>, Kind)> = cat
                    .by_host
                    .keys()
                    .map(|h| (h.as_bytes().to_vec(), Kind::Host(h.clone())))
                    .collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            }
            Kind::Host(h) => {
                let cat = self.catalog()?;
                let mut v: Vec<(Vec<u8>, Kind)> = cat
                    .by_host
                    .get(h)
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| (name.clone().into_bytes(), Kind::SnapRoot(s.clone())))
                    .collect();
                if !v.is_empty() {
                    v.push((LATEST.as_bytes().to_vec(), Kind::Latest(h.clone())));
                }
                v
            }
            Kind::SnapRoot(s) => self
                .tree_entries(&s.root)?
                .iter()
                .map(|e| (e.name.clone(), Kind::Entry(s.clone(), slim(e), s.root)))
                .collect(),
            Kind::Entry(s, e, _) => match e.subtree() {
                Some(id) => self
                    .tree_entries(&id)?
                    .iter()
                    .map(|c| (c.name.clone(), Kind::Entry(s.clone(), slim(c), id)))
                    .collect(),
                None => return Err(FsError::NotADirectory),
            },
            Kind::Latest(_) => return Err(FsError::NotADirectory),
        })
    }

    /// The entries of a directory, in name order (`.` and `..` are the front end's).
    pub fn readdir(&self, ino: u64) -> FsResult<Vec<DirItem>> {
        let node = self.node(ino)?;
        let mut out = Vec::new();
        for (name, kind) in self.children(&node)? {
            let (child, n) = self.remember(ino, &node, &name, kind)?;
            out.push(DirItem {
                attr: self.attr_of(child, &n)?,
                name,
            });
        }
        Ok(out)
    }

    /// Looks `name` up in the directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<NodeAttr> {
        let node = self.node(parent)?;
        let kind = match &node.kind {
            // Snapshot directories: one tree, binary search by name.
            Kind::SnapRoot(s) => {
                let entries = self.tree_entries(&s.root)?;
                Self::find(&entries, name).map(|e| Kind::Entry(s.clone(), slim(e), s.root))
            }
            Kind::Entry(s, e, _) => {
                let id = e.subtree().ok_or(FsError::NotADirectory)?;
                let entries = self.tree_entries(&id)?;
                Self::find(&entries, name).map(|c| Kind::Entry(s.clone(), slim(c), id))
            }
            _ => self
                .children(&node)?
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, k)| k),
        }
        .ok_or(FsError::NotFound)?;
        let (ino, n) = self.remember(parent, &node, name, kind)?;
        self.attr_of(ino, &n)
    }

    fn find<'a>(entries: &'a [Entry], name: &[u8]) -> Option<&'a Entry> {
        entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &entries[i])
    }

    /// Resolves a mount path (`/hosts/web1/latest/etc`): like [`FsView::resolve`], but the
    /// view's own `latest` links are followed, so clients can mount the newest snapshot.
    /// With `may_search`, every directory on the way must pass it
    /// ([`FsError::PermissionDenied`]), as a path walk of the kernel checks search permission.
    pub fn resolve_mount_path(
        &self,
        path: &[u8],
        may_search: Option<&dyn Fn(&NodeAttr) -> bool>,
    ) -> FsResult<NodeAttr> {
        let mut attr = self.getattr(ROOT_INO)?;
        for part in path
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            if may_search.is_some_and(|may| !may(&attr)) {
                return Err(FsError::PermissionDenied);
            }
            let parent = attr.ino;
            attr = self.lookup(parent, part)?;
            if matches!(self.node(attr.ino)?.kind, Kind::Latest(_)) {
                let target = self.readlink(attr.ino)?;
                attr = self.lookup(parent, &target)?;
            }
        }
        Ok(attr)
    }

    /// The directory `ino` was found in (`..`).
    pub fn parent(&self, ino: u64) -> FsResult<u64> {
        Ok(self.node(ino)?.parent)
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match self.node(ino)?.kind {
            Kind::Latest(h) => {
                let cat = self.catalog()?;
                Ok(self.latest_target(&cat, &h)?.into_bytes())
            }
            Kind::Entry(_, e, _) => match &e.content {
                Content::Target(t) => Ok(t.clone()),
                _ => Err(FsError::NotASymlink),
            },
            _ => Err(FsError::NotASymlink),
        }
    }

    /// Extended attributes of a node, as backed up.
    pub fn xattrs(&self, ino: u64) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(match self.node(ino)?.kind {
            // Not kept with the node: read from its tree (cached by bytes).
            Kind::Entry(_, e, tree) => Self::find(&self.tree_entries(&tree)?, &e.name)
                .map(|found| found.xattrs.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        })
    }

    fn file_index(&self, ino: u64) -> FsResult<Arc<FileIndex>> {
        if let Some(f) = self.files.lock().map_err(lock_err)?.get(&ino) {
            return Ok(f.clone());
        }
        let entry = match self.node(ino)?.kind {
            Kind::Entry(_, e, _) if e.kind == EntryKind::File => e,
            Kind::Entry(_, e, _) if e.kind == EntryKind::Dir => return Err(FsError::IsADirectory),
            Kind::Root | Kind::Tier(_) | Kind::Hosts | Kind::Host(_) | Kind::SnapRoot(_) => {
                return Err(FsError::IsADirectory)
            }
            _ => return Err(FsError::NotFound),
        };
        let chunks = self.repo()?.file_chunks(&entry)?;
        let mut starts = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for c in &chunks {
            starts.push(at);
            at += u64::from(c.len);
        }
        let index = Arc::new(FileIndex {
            chunks,
            starts,
            size: at,
        });
        self.files.lock().map_err(lock_err)?.put(ino, index.clone());
        Ok(index)
    }

    /// One chunk of a file: data of exactly the length the file references
    /// (`read_file_chunk`), so a read never serves bytes the file's size does not cover.
    fn chunk(&self, chunk: &ChunkRef) -> FsResult<Arc<Vec<u8>>> {
        let key = (self.cache_scope, chunk.id);
        if let Some(c) = self.caches.chunks.lock().map_err(lock_err)?.get(&key) {
            // Cached by id: the same bytes, so their length is the blob's.
            if c.len() == chunk.len as usize {
                return Ok(c);
            }
        }
        let data = Arc::new(self.repo()?.read_file_chunk(chunk)?);
        let size = data.len();
        self.caches
            .chunks
            .lock()
            .map_err(lock_err)?
            .put(key, data.clone(), size);
        Ok(data)
    }

    /// Up to `size` bytes of a file from `offset` (fewer at its end).
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let file = self.file_index(ino)?;
        if offset >= file.size || size == 0 {
            return Ok(Vec::new());
        }
        let end = file.size.min(offset.saturating_add(size as u64));
        let mut out = Vec::with_capacity((end - offset) as usize);
        // The chunk holding `offset`: the last one starting at or before it.
        let mut i = file
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let mut at = offset;
        while at < end && i < file.chunks.len() {
            let data = self.chunk(&file.chunks[i])?;
            let start = file.starts[i];
            let from = (at - start) as usize;
            let to = ((end - start) as usize).min(data.len());
            if from >= to {
                break;
            }
            out.extend_from_slice(&data[from..to]);
            at = start + to as u64;
            i += 1;
        }
        Ok(out)
    }

    /// Checks that a node may be opened with `flags` (open(2)): writing fails with EROFS.
    pub fn check_open(&self, ino: u64, flags: i32) -> FsResult<()> {
        self.node(ino)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
        {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// Resolves a path (`/daily.0/web1/etc/hosts`) to attributes, following no symlink.
    pub fn resolve(&self, path: &str) -> FsResult<NodeAttr> {
        let mut attr = self.getattr(ROOT_INO)?;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            attr = self.lookup(attr.ino, part.as_bytes())?;
        }
        Ok(attr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(key: &[u8]) -> Node {
        Node {
            kind: Kind::Hosts,
            key: key.to_vec(),
            snap_key: Vec::new(),
            parent: ROOT_INO,
        }
    }

    #[test]
    fn a_bounded_node_table_keeps_the_root_and_what_is_in_use() {
        let mut t = NodeTable {
            current: HashMap::new(),
            previous: HashMap::new(),
            generation: Some(3),
        };
        t.insert(ROOT_INO, node(b"/"));
        for ino in 10..100 {
            t.insert(ino, node(b"x"));
            assert!(t.len() <= 2 * 3 + 1, "{}", t.len());
            assert!(t.get(ROOT_INO).is_some());
        }
        // The newest survive one generation; the oldest are gone.
        assert!(t.get(99).is_some() && t.get(98).is_some());
        assert!(t.get(10).is_none());
        // Unbounded: everything stays.
        let mut all = NodeTable {
            current: HashMap::new(),
            previous: HashMap::new(),
            generation: None,
        };
        for ino in 0..1000 {
            all.insert(ino, node(b"x"));
        }
        assert_eq!(all.len(), 1000);
    }
}
