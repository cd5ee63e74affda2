//! Opening, creating and reading a repository.

pub(crate) mod copies;
pub(crate) mod hold;
pub(crate) mod lock;
pub(crate) mod recovery;
pub(crate) mod sessions;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;
use xstore_chunker::ChunkerParams;

use crate::error::{DecodeError, Error, IoContext, Result};
use crate::index::{BlobLoc, Index};
use crate::pack::{self, BlobKind, PackEntry, PackId};
use crate::repo::lock::WriterLock;
use crate::{fsutil, ChunkId};
use xstore_format::config::{ChunkerConfig, Config, InitOptions, FORMAT_VERSION};
use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_format::tree::{decode_chunk_list, ChunkRef, Content, Entry, EntryKind, Tree};

const MAX_OPEN_PACKS: usize = 256;

/// An open repository. Open it writable ([`Repository::open`], one process at a time) or
/// read-only ([`Repository::open_read_only`], any number, also while a writer runs).
pub struct Repository {
    root: PathBuf,
    config: Config,
    params: ChunkerParams,
    pub(crate) index: Index,
    lock: Option<WriterLock>,
    files: Mutex<HashMap<PackId, Arc<fs::File>>>,
    pub(crate) write_state: Mutex<sessions::WriteState>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.root)
            .field("writable", &self.lock.is_some())
            .finish()
    }
}

/// A node of a snapshot: the root directory or an entry inside it.
#[derive(Debug, Clone)]
pub enum Node {
    /// The snapshot's root directory.
    Root(ChunkId),
    /// An entry found by path.
    Entry(Entry),
}

impl Node {
    /// The tree id when the node is a directory.
    pub fn tree_id(&self) -> Option<ChunkId> {
        match self {
            Node::Root(id) => Some(*id),
            Node::Entry(e) => e.subtree(),
        }
    }
}

/// The current time in nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Repository {
    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.root
    }
    /// The decoded `config`.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Chunker parameters of this repository.
    pub fn chunker_params(&self) -> ChunkerParams {
        self.params
    }
    /// Whether this handle holds the writer lock.
    pub fn is_writable(&self) -> bool {
        self.lock.is_some()
    }
    pub(crate) fn packs_dir(&self) -> PathBuf {
        crate::layout::packs(&self.root)
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        crate::layout::packs_tmp(&self.root)
    }
    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        crate::layout::snapshots(&self.root)
    }
    /// `snapshots/<id>.json`, the durable copy of a snapshot record.
    pub(crate) fn snapshot_copy_path(&self, id: &SnapshotId) -> PathBuf {
        crate::layout::snapshot_copy(&self.root, id)
    }

    /// Creates a repository in `path` (which must be missing or empty) and opens it writable.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<Repository> {
        if path.exists() {
            let mut it = fs::read_dir(path).at(path)?;
            if it.next().is_some() {
                return Err(Error::AlreadyExists(path.to_path_buf()));
            }
        }
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let config = Config {
            format_version: FORMAT_VERSION,
            repository_id: xstore_format::bytes::to_hex(&id),
            chunker: ChunkerConfig {
                algorithm: xstore_chunker::ALGORITHM.into(),
                min: opts.chunker.min(),
                avg: opts.chunker.avg(),
                max: opts.chunker.max(),
            },
            compression: "zstd".into(),
            compression_level: opts.compression_level,
            pack_size: opts.pack_size,
            created_ns: now_ns(),
        };
        Config::decode(&config.encode()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Validated before anything is created: a refused init leaves no directory behind.
        for dir in crate::layout::init_dirs(path) {
            fs::create_dir_all(&dir).at(&dir)?;
        }
        // The index is created before `config` is written: `config` is the marker that makes
        // the directory a repository, so a crash during init leaves no half repository.
        drop(Index::create(&crate::layout::index(path))?);
        fsutil::write_atomic(&crate::layout::config(path), &config.encode())?;
        Repository::open(path)
    }

    pub(crate) fn from_parts(
        path: &Path,
        config: Config,
        params: ChunkerParams,
        index: Index,
        lock: Option<WriterLock>,
    ) -> Repository {
        Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            lock,
            files: Mutex::new(HashMap::new()),
            write_state: Mutex::new(Default::default()),
        }
    }

    pub(crate) fn load_config(path: &Path) -> Result<(Config, ChunkerParams)> {
        let cfg_path = crate::layout::config(path);
        let bytes = match fs::read(&cfg_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotARepository {
                    path: path.to_path_buf(),
                    reason: "not an xstore repository (no config file)".into(),
                })
            }
            Err(e) => return Err(e).at(&cfg_path),
        };
        let config = Config::decode(&bytes).map_err(|source| Error::Corrupt {
            path: cfg_path.clone(),
            source,
        })?;
        let params = config.chunker_params().map_err(|source| Error::Corrupt {
            path: cfg_path,
            source,
        })?;
        Ok((config, params))
    }

    /// Opens writable: takes the writer lock and runs crash recovery.
    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_waiting(path, std::time::Duration::ZERO)
    }

    /// Like [`Repository::open`], but waits up to `wait` for another writer to finish
    /// (cron jobs: a gc that starts while a pull runs waits instead of failing).
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Repository> {
        let (config, params) = Self::load_config(path)?;
        let deadline = std::time::Instant::now() + wait;
        let lock = loop {
            match WriterLock::acquire(&crate::layout::locks(path)) {
                Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                other => break other?,
            }
        };
        recovery::finish_index_swap(path)?;
        let index = Index::open(&crate::layout::index(path), false)?;
        check_config_matches(path, &config, &index, true)?;
        let repo = Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            lock: Some(lock),
            files: Mutex::new(HashMap::new()),
            write_state: Mutex::new(Default::default()),
        };
        repo.recover()?;
        Ok(repo)
    }

    /// Opens read-only, without the writer lock. Sees the index as of opening.
    pub fn open_read_only(path: &Path) -> Result<Repository> {
        let (config, params) = Self::load_config(path)?;
        let index = Index::open(&recovery::readable_index_dir(path), true)?;
        check_config_matches(path, &config, &index, false)?;
        Ok(Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            lock: None,
            files: Mutex::new(HashMap::new()),
            write_state: Mutex::new(Default::default()),
        })
    }

    pub(crate) fn require_writable(&self) -> Result<()> {
        if self.lock.is_none() {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// Crash recovery (writer only), deleting only what is proven dead (journal.rs):
    /// temporary pack files, and sealed packs this or an earlier writer recorded as its own
    /// uncommitted ones that the index does not know. A pack file that neither the index
    /// nor the journal accounts for means the index is older than the packs (lost, emptied,
    /// restored from a copy): the open is refused and nothing is touched.
    fn recover(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).at(&tmp)?;
        for item in fs::read_dir(&tmp).at(&tmp)? {
            let item = item.at(&tmp)?;
            let _ = fs::remove_file(item.path());
        }
        let packs = self.packs_dir();
        let known: std::collections::HashSet<PackId> =
            self.index.packs()?.into_iter().map(|(id, _)| id).collect();
        let uncommitted: std::collections::HashSet<PackId> =
            crate::pack::journal::uncommitted(&packs)?
                .into_iter()
                .collect();
        let retired = crate::pack::journal::retired(&packs, now_ns())?;
        let on_disk = list_pack_files(&packs)?;
        let unattributed: Vec<&PackId> = on_disk
            .iter()
            .map(|(id, _)| id)
            .filter(|id| {
                !known.contains(id) && !uncommitted.contains(id) && !retired.contains_key(id)
            })
            .collect();
        if let Some(first) = unattributed.first() {
            return Err(Error::IndexNeedsRepair {
                path: crate::layout::index(&self.root),
                reason: format!(
                    "the index does not know {} of {} pack files (for example {first}): it is \
                     missing, empty or older than the packs",
                    unattributed.len(),
                    on_disk.len()
                ),
            });
        }
        let (committed, leftovers): (Vec<PackId>, Vec<PackId>) =
            uncommitted.iter().partition(|id| known.contains(id));
        crate::pack::journal::discard_packs(&packs, &leftovers)?;
        // Committed: only the marker's removal was lost.
        crate::pack::journal::clear_uncommitted(&packs, &committed)?;
        if !leftovers.is_empty() {
            tracing::info!(
                removed = leftovers.len(),
                "recovery removed uncommitted pack files"
            );
        }
        // A retired marker of a pack the index still records: gc crashed before its commit.
        let stale: Vec<PackId> = retired
            .keys()
            .filter(|id| known.contains(id))
            .copied()
            .collect();
        crate::pack::journal::clear_retired(&packs, &stale)?;
        crate::pack::journal::remove_temporaries(&packs)?;
        // Temporary files of a snapshot copy or pull record interrupted by a crash
        // (fsutil::write_atomic).
        for dir in [self.snapshots_dir(), crate::layout::pulls(&self.root)] {
            let items = match fs::read_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.at(&dir)?,
            };
            for item in items {
                let item = item.at(&dir)?;
                let name = item.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp") {
                    fs::remove_file(item.path()).at(item.path())?;
                }
            }
        }
        if copies::stale_marker(self).exists() {
            copies::resync_snapshot_copies(self)?;
        }
        Ok(())
    }

    /// A host's record: its newest (and newest complete) snapshot and snapshot count, without
    /// reading every snapshot. `None` for a host never backed up.
    pub fn host_record(&self, host: &str) -> Result<Option<crate::HostRecord>> {
        self.index.host(host)
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut v = self.index.snapshots()?;
        v.sort_by_key(|s| (s.start_ns, s.id));
        Ok(v)
    }

    /// The snapshot with this id.
    pub fn snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.index.snapshot(id)?.ok_or_else(|| Error::SnapshotRef {
            reference: id.to_string(),
            reason: "no such snapshot".into(),
        })
    }

    /// Index entry of a blob.
    pub fn blob_location(&self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        self.index.blob(id)
    }

    /// For each id, whether the repository lacks it (the pull protocol's question).
    pub fn missing_blobs(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        Ok(self
            .index
            .blobs(ids)?
            .into_iter()
            .map(|l| l.is_none())
            .collect())
    }

    /// Maps a whole pack (for scans that read every blob of it: `check --read-data`). Not
    /// cached: the mapping is dropped as soon as the scan of that pack ends.
    pub(crate) fn map_pack(&self, id: &PackId) -> Result<Mmap> {
        crate::pack::mmap::map_sealed_file(&crate::layout::pack_file(&self.packs_dir(), id))
    }

    /// Closes a cached pack file (gc deleted it).
    pub(crate) fn forget_pack_file(&self, id: &PackId) {
        if let Ok(mut files) = self.files.lock() {
            files.remove(id);
        }
    }

    fn pack_file(&self, id: &PackId) -> Result<Arc<fs::File>> {
        if let Some(f) = self.files.lock().map_err(poisoned)?.get(id) {
            return Ok(f.clone());
        }
        let path = crate::layout::pack_file(&self.packs_dir(), id);
        let file = Arc::new(fs::File::open(&path).at(&path)?);
        let mut files = self.files.lock().map_err(poisoned)?;
        if files.len() >= MAX_OPEN_PACKS {
            files.clear();
        }
        files.insert(*id, file.clone());
        Ok(file)
    }

    /// Reads one blob with a positioned read. Random blob reads (restore, browsing, parent
    /// trees) use `pread` rather than a mapping: mapped pack pages count in the process's RSS
    /// and a copy of one blob costs nothing next to decompressing it.
    pub(crate) fn read_located(&self, id: &ChunkId, loc: &BlobLoc) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = self.pack_file(&loc.pack)?;
        let mut buf = vec![0u8; pack::BLOB_HEADER_LEN + loc.stored_len as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .at(crate::layout::pack_file(&self.packs_dir(), &loc.pack))?;
        let entry = PackEntry {
            id: *id,
            kind: loc.kind,
            compression: pack::Compression::None,
            raw_len: loc.raw_len,
            stored_len: loc.stored_len,
            offset: 0,
        };
        pack::read_blob(&buf, &entry).map_err(|source| Error::CorruptBlob {
            id: *id,
            pack: loc.pack.to_string(),
            source,
        })
    }

    /// Reads, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_current(id).map(|(_, raw)| raw)
    }

    /// Looks a blob up and reads it. When its pack file is gone, looks it up once more: gc in
    /// this process may have moved the blob between the lookup and the read.
    fn read_current(&self, id: &ChunkId) -> Result<(BlobLoc, Vec<u8>)> {
        let loc = self.index.blob(id)?.ok_or(Error::MissingBlob(*id))?;
        match self.read_located(id, &loc) {
            Ok(raw) => Ok((loc, raw)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let again = self.index.blob(id)?.ok_or(Error::MissingBlob(*id))?;
                let raw = self.read_located(id, &again)?;
                Ok((again, raw))
            }
            Err(e) => Err(e),
        }
    }

    /// The distinct blobs a tree or chunk list references (none for data): the edges of the
    /// Merkle DAG that reference counts count.
    pub(crate) fn blob_children(&self, id: &ChunkId, loc: &BlobLoc) -> Result<Vec<ChunkId>> {
        let corrupt = |source| Error::CorruptBlob {
            id: *id,
            pack: loc.pack.to_string(),
            source,
        };
        Ok(match loc.kind {
            BlobKind::Data | BlobKind::SnapshotRecord => Vec::new(),
            BlobKind::Tree => {
                let raw = self.read_located(id, loc)?;
                Tree::decode(&raw).map_err(corrupt)?.children()
            }
            BlobKind::ChunkList => {
                let raw = self.read_located(id, loc)?;
                xstore_format::tree::chunk_list_children(&decode_chunk_list(&raw).map_err(corrupt)?)
            }
        })
    }

    /// Reads and decodes a tree blob.
    pub fn tree(&self, id: &ChunkId) -> Result<Tree> {
        let (loc, raw) = self.read_current(id)?;
        if loc.kind != BlobKind::Tree {
            return Err(Error::CorruptBlob {
                id: *id,
                pack: loc.pack.to_string(),
                source: DecodeError::Invalid {
                    what: "blob kind",
                    offset: 0,
                    reason: format!("expected tree, index says {}", loc.kind.name()),
                },
            });
        }
        Tree::decode(&raw).map_err(|source| Error::CorruptBlob {
            id: *id,
            pack: loc.pack.to_string(),
            source,
        })
    }

    /// A file entry's chunk list (loading a chunk-list blob when needed).
    pub fn file_chunks(&self, entry: &Entry) -> Result<Vec<ChunkRef>> {
        match &entry.content {
            Content::Chunks(c) => Ok(c.clone()),
            Content::ChunkList(id) => {
                let raw = self.read_blob(id)?;
                let list = decode_chunk_list(&raw).map_err(|source| Error::CorruptBlob {
                    id: *id,
                    pack: String::new(),
                    source,
                })?;
                let total: u64 = list.iter().map(|c| u64::from(c.len)).sum();
                if total != entry.size {
                    return Err(Error::CorruptBlob {
                        id: *id,
                        pack: String::new(),
                        source: DecodeError::Invalid {
                            what: "chunk list",
                            offset: 0,
                            reason: format!("holds {total} bytes, file size is {}", entry.size),
                        },
                    });
                }
                Ok(list)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Finds the node at `path` ("/", "", "/etc/passwd", "etc/passwd") in a snapshot.
    pub fn lookup(&self, snapshot: &Snapshot, path: &str) -> Result<Node> {
        let mut node = Node::Root(snapshot.root);
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            let not_found = || Error::PathNotFound {
                path: path.to_string(),
                snapshot: snapshot.id.short(),
            };
            let tree_id = node.tree_id().ok_or_else(not_found)?;
            let tree = self.tree(&tree_id)?;
            let entry = tree.get(part.as_bytes()).ok_or_else(not_found)?;
            node = Node::Entry(entry.clone());
        }
        Ok(node)
    }

    /// Writes a file's content to `out`.
    pub fn cat(&self, entry: &Entry, out: &mut dyn std::io::Write) -> Result<u64> {
        if entry.kind != EntryKind::File {
            return Err(Error::NotAFile(entry.name_lossy()));
        }
        let mut n = 0u64;
        for c in self.file_chunks(entry)? {
            let data = self.read_blob(&c.id)?;
            out.write_all(&data).map_err(|source| Error::Io {
                path: PathBuf::from("<output>"),
                source,
            })?;
            n += data.len() as u64;
        }
        Ok(n)
    }
}

/// The chunker and identity the index was built for, as stored in its default column family.
pub(crate) fn config_fingerprint(config: &Config) -> Vec<u8> {
    format!(
        "repository {} chunker {} min {} avg {} max {}",
        config.repository_id,
        config.chunker.algorithm,
        config.chunker.min,
        config.chunker.avg,
        config.chunker.max
    )
    .into_bytes()
}

/// The error for a `config` whose fingerprint `want` differs from the index's `have`.
pub(crate) fn config_mismatch(path: &Path, want: &[u8], have: &[u8]) -> Error {
    Error::ConfigMismatch {
        path: crate::layout::config(path),
        reason: format!(
            "says \"{}\" but the repository was created with \"{}\"; restore the original config",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(have)
        ),
    }
}

pub(crate) const CONFIG_KEY: &[u8] = b"config";

/// Chunk boundaries are part of the format: a `config` whose chunker parameters (or id) differ
/// from those the index was built with would cut new files differently and is refused. A
/// writable open records the fingerprint when an older index has none.
fn check_config_matches(path: &Path, config: &Config, index: &Index, writable: bool) -> Result<()> {
    let want = config_fingerprint(config);
    match index.meta(CONFIG_KEY)? {
        Some(have) if have == want => Ok(()),
        Some(have) => Err(config_mismatch(path, &want, &have)),
        None if writable => index.set_meta(CONFIG_KEY, &want),
        None => Ok(()),
    }
}

pub(crate) use crate::error::poisoned;

/// Every `packs/XX/<id>.pack` file.
pub(crate) fn list_pack_files(packs: &Path) -> Result<Vec<(PackId, PathBuf)>> {
    let mut out = Vec::new();
    for sub in fs::read_dir(packs).at(packs)? {
        let sub = sub.at(packs)?;
        let name = sub.file_name();
        let name = name.to_string_lossy();
        if name.len() != 2 || !sub.file_type().at(sub.path())?.is_dir() {
            continue;
        }
        for f in fs::read_dir(sub.path()).at(sub.path())? {
            let f = f.at(sub.path())?;
            let fname = f.file_name();
            let fname = fname.to_string_lossy();
            if let Some(hex) = fname.strip_suffix(".pack") {
                if let Ok(id) = hex.parse::<ChunkId>() {
                    out.push((id, f.path()));
                }
            }
        }
    }
    Ok(out)
}
