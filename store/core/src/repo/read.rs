//! Reading a repository: snapshots, blob locations, blobs (positioned reads through the pack
//! storage, every blob re-hashed), trees, file contents and paths inside snapshots.

use std::path::PathBuf;
use xstore_format::host::HostName;

use super::Repository;
use crate::error::{DecodeError, Error, Result};
use crate::index::BlobLoc;
use crate::storage::PackBytes;
use xstore_chunker::ChunkId;
use xstore_format::bundle::Bundle;
use xstore_format::meta::EntryKind;
use xstore_format::pack::{self, BlobKind, PackEntry, PackId};
use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_format::tree::{decode_chunk_list, ChunkRef, Content, Entry, Tree};

/// Whether `loc` is a live data blob of exactly `chunk`'s length: what a file may reference.
pub(crate) fn is_live_data(loc: Option<&BlobLoc>, chunk: &ChunkRef) -> bool {
    loc.is_some_and(|l| l.refcount > 0 && l.kind == BlobKind::Data && l.raw_len == chunk.len)
}

/// `Ok` when the blob at `loc` can be a file's `chunk`: data of exactly the referenced
/// length (a read verifies the bytes against `loc`); else an error naming the blob.
pub(crate) fn check_file_chunk(chunk: &ChunkRef, loc: &BlobLoc) -> Result<()> {
    if loc.kind == BlobKind::Data && loc.raw_len == chunk.len {
        return Ok(());
    }
    Err(Error::CorruptBlob {
        id: chunk.id,
        pack: loc.pack.to_string(),
        source: DecodeError::Invalid {
            what: "file chunk",
            offset: 0,
            reason: format!(
                "a file references it as {} bytes of data; it is {} bytes of {}",
                chunk.len,
                loc.raw_len,
                loc.kind.name()
            ),
        },
    })
}

/// The few bundles read last, newest first: enough for the threads of a restore that read
/// neighbouring members, small enough that their bytes do not count in memory
/// (`BUNDLE_CACHE_ENTRIES` × [`xstore_format::bundle::MAX_BUNDLE_RAW`] at most).
#[derive(Debug, Default)]
pub(crate) struct BundleCache {
    entries: std::collections::VecDeque<((PackId, u64), std::sync::Arc<Bundle>)>,
}

const BUNDLE_CACHE_ENTRIES: usize = 8;

impl BundleCache {
    fn get(&self, key: &(PackId, u64)) -> Option<std::sync::Arc<Bundle>> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }

    fn put(&mut self, key: (PackId, u64), bundle: std::sync::Arc<Bundle>) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push_front((key, bundle));
        self.entries.truncate(BUNDLE_CACHE_ENTRIES);
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

impl Repository {
    /// A host's record: its newest (and newest complete) snapshot and snapshot count, without
    /// reading every snapshot. `None` for a host never backed up.
    pub fn host_record(&self, host: &str) -> Result<Option<xstore_format::records::HostRecord>> {
        self.index.host(host)
    }

    /// The hosts that have snapshots, in name order, from their host records (no snapshot
    /// record is decoded).
    pub fn hosts(&self) -> Result<Vec<HostName>> {
        Ok(self
            .index
            .host_records()?
            .into_iter()
            .filter(|(_, r)| r.snapshots > 0)
            .map(|(h, _)| h)
            .collect())
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut v = self.index.snapshots()?;
        v.sort_by_key(|s| (s.start_ns, s.id));
        Ok(v)
    }

    /// The snapshots of one host, oldest first. Reads that host's records only (FORMAT.md
    /// §Index, `host-snapshot/` keys), so its cost does not grow with other hosts' snapshots.
    pub fn host_snapshots(&self, host: &HostName) -> Result<Vec<Snapshot>> {
        let mut v = self.index.snapshots_of(host)?;
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

    /// Live blobs marked damaged by `verify` and not stored again since.
    pub fn damaged_blobs(&self) -> Result<std::collections::HashSet<ChunkId>> {
        self.index.damaged_blobs()
    }

    /// For each chunk, whether the repository holds it as a live data blob of exactly the
    /// claimed length that verify has not found damaged: the only blobs a pull may reference
    /// without receiving their bytes (ARCHITECTURE.md, "Trust boundary"). Trees, chunk lists,
    /// snapshot records and blobs waiting for gc never count.
    pub fn holds_data(&self, chunks: &[ChunkRef]) -> Result<Vec<bool>> {
        let damaged = self.index.damaged_blobs()?;
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        Ok(self
            .index
            .blobs(&ids)?
            .iter()
            .zip(chunks)
            .map(|(loc, c)| is_live_data(loc.as_ref(), c) && !damaged.contains(&c.id))
            .collect())
    }

    /// A whole pack (for scans that read every blob of it: `check --read-data`, gc, verify):
    /// mapped when local, fetched from an object store. Not cached: dropped as soon as the
    /// scan of that pack ends.
    pub(crate) fn map_pack(&self, id: &PackId) -> Result<PackBytes> {
        self.storage().read_whole(id)
    }

    /// Reads one blob with a positioned read. Random blob reads (restore, browsing, parent
    /// trees) use `pread` rather than a mapping: mapped pack pages count in the process's RSS
    /// and a copy of one blob costs nothing next to decompressing it.
    pub(crate) fn read_located(&self, id: &ChunkId, loc: &BlobLoc) -> Result<Vec<u8>> {
        if let Some(bundled) = loc.bundled {
            let corrupt = |source| Error::CorruptBlob {
                id: *id,
                pack: loc.pack.to_string(),
                source,
            };
            return self
                .bundle_at(id, loc)?
                .member(self.encryption(), id, bundled.member_offset, loc.raw_len)
                .map_err(corrupt);
        }
        let mut buf = vec![0u8; pack::blob_span(loc.stored_len) as usize];
        self.storage().read_at(&loc.pack, loc.offset, &mut buf)?;
        let entry = PackEntry {
            id: *id,
            kind: loc.kind,
            compression: pack::Compression::None,
            raw_len: loc.raw_len,
            stored_len: loc.stored_len,
            offset: loc.offset,
        };
        pack::read_record_in_place(self.encryption(), &mut buf, &entry).map_err(|source| {
            Error::CorruptBlob {
                id: *id,
                pack: loc.pack.to_string(),
                source,
            }
        })
    }

    /// The decoded bundle whose record `loc` (a bundled blob's location) points at: from the
    /// cache, or read, opened, decompressed, verified against the id its header names, and
    /// its table decoded.
    /// Errors name `id`, the member being read.
    fn bundle_at(&self, id: &ChunkId, loc: &BlobLoc) -> Result<std::sync::Arc<Bundle>> {
        let corrupt = |source| Error::CorruptBlob {
            id: *id,
            pack: loc.pack.to_string(),
            source,
        };
        let key = (loc.pack, loc.offset);
        if let Some(hit) = self.bundles.lock().ok().and_then(|c| c.get(&key)) {
            return Ok(hit);
        }
        let mut buf = vec![0u8; pack::blob_span(loc.stored_len) as usize];
        self.storage().read_at(&loc.pack, loc.offset, &mut buf)?;
        let bundle = std::sync::Arc::new(
            pack::read_bundle_in_place(self.encryption(), &mut buf, loc.offset, loc.stored_len)
                .map_err(corrupt)?,
        );
        if let Ok(mut cache) = self.bundles.lock() {
            cache.put(key, bundle.clone());
        }
        Ok(bundle)
    }

    /// Drops the bundles of `pack` read earlier, so that the next reads of its members read
    /// its bytes again (verify, which looks for damage, never trusts what was read before).
    pub(crate) fn forget_bundles_of(&self, pack: &PackId) {
        if let Ok(mut cache) = self.bundles.lock() {
            cache.entries.retain(|((p, _), _)| p != pack);
        }
    }

    /// Reads, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_current(id).map(|(_, raw)| raw)
    }

    /// Reads one chunk of a file: a data blob of exactly the length the file's entry records.
    /// Anything else is an error naming the blob (a tree named as file content, or a length
    /// that disagrees), so no reader writes bytes a file's size does not account for.
    pub fn read_file_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        let (loc, raw) = self.read_current(&chunk.id)?;
        check_file_chunk(chunk, &loc)?;
        Ok(raw)
    }

    /// Looks a blob up and reads it. When its pack file is gone, looks it up once more: gc in
    /// this process may have moved the blob between the lookup and the read.
    fn read_current(&self, id: &ChunkId) -> Result<(BlobLoc, Vec<u8>)> {
        let loc = self.index.blob(id)?.ok_or(Error::MissingBlob(*id))?;
        match self.read_located(id, &loc) {
            Ok(raw) => Ok((loc, raw)),
            Err(e) if e.is_not_found() => {
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
        let mut ids = Vec::new();
        self.for_each_blob_child(id, loc, |c| ids.push(c))?;
        Ok(xstore_format::tree::distinct(ids))
    }

    /// Calls `each` with every blob a tree or chunk list references, repeats included (none
    /// for data), without decoding the rest of its entries.
    pub(crate) fn for_each_blob_child(
        &self,
        id: &ChunkId,
        loc: &BlobLoc,
        mut each: impl FnMut(ChunkId),
    ) -> Result<()> {
        let corrupt = |source| Error::CorruptBlob {
            id: *id,
            pack: loc.pack.to_string(),
            source,
        };
        match loc.kind {
            // The index locates no bundle (its members are data).
            BlobKind::Data | BlobKind::SnapshotRecord | BlobKind::Bundle => Ok(()),
            BlobKind::Tree => {
                let raw = self.read_located(id, loc)?;
                xstore_format::tree::for_each_tree_child(&raw, each).map_err(corrupt)
            }
            BlobKind::ChunkList => {
                let raw = self.read_located(id, loc)?;
                for c in decode_chunk_list(&raw).map_err(corrupt)? {
                    each(c.id);
                }
                Ok(())
            }
        }
    }

    /// Reads and decodes a tree blob.
    pub fn tree(&self, id: &ChunkId) -> Result<Tree> {
        let (loc, raw) = self.read_current(id)?;
        Self::decode_tree(id, &loc, &raw)
    }

    /// Reads and decodes the tree blob at `loc` (a walk that has every location already).
    pub(crate) fn tree_located(&self, id: &ChunkId, loc: &BlobLoc) -> Result<Tree> {
        let raw = self.read_located(id, loc)?;
        Self::decode_tree(id, loc, &raw)
    }

    fn decode_tree(id: &ChunkId, loc: &BlobLoc, raw: &[u8]) -> Result<Tree> {
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
        Tree::decode(raw).map_err(|source| Error::CorruptBlob {
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
                if total != entry.attrs.size {
                    return Err(Error::CorruptBlob {
                        id: *id,
                        pack: String::new(),
                        source: DecodeError::Invalid {
                            what: "chunk list",
                            offset: 0,
                            reason: format!(
                                "holds {total} bytes, file size is {}",
                                entry.attrs.size
                            ),
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
        self.lookup_bytes(snapshot, path.as_bytes())
    }

    /// [`Repository::lookup`] of a path given as bytes (names need not be UTF-8). `.` parts
    /// are skipped; `..` is a name like any other (no entry has it).
    pub fn lookup_bytes(&self, snapshot: &Snapshot, path: &[u8]) -> Result<Node> {
        let mut node = Node::Root(snapshot.root);
        for part in path
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            let not_found = || Error::PathNotFound {
                path: String::from_utf8_lossy(path).into_owned(),
                snapshot: snapshot.id.short(),
            };
            let tree_id = node.tree_id().ok_or_else(not_found)?;
            let tree = self.tree(&tree_id)?;
            let entry = tree.get(part).ok_or_else(not_found)?;
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
            let data = self.read_file_chunk(&c)?;
            out.write_all(&data).map_err(|source| Error::Io {
                path: PathBuf::from("<output>"),
                source,
            })?;
            n += data.len() as u64;
        }
        Ok(n)
    }
}
