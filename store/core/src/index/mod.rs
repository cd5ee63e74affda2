//! The RocksDB index: blob locations and reference counts, packs, snapshot records, hosts.
//! Value layouts: FORMAT.md §Index. The index is the single authority on what is committed.
//!
//! Column families, batched lookups, one synced `IndexBatch` per commit; memtables flushed
//! after 1 MiB of commits and at close. Bloom filters and index blocks are partitioned with
//! their top level pinned in the block cache (whole blocks thrashed it beyond ~1 M records,
//! `bench/index-scale`), and the cache is sized at open to 1/32 of the blob tables, between 64
//! and 384 MiB. Also the key layout of verification state (damaged blobs, verified packs) and
//! of the per-host snapshot keys (`snapshots_of`: one host's records without decoding the
//! others', with a scan as the fallback whenever the keys are not provably complete).

use std::path::{Path, PathBuf};
use xstore_format::host::HostName;

use std::sync::atomic::{AtomicUsize, Ordering};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, FlushOptions, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};

use crate::error::{DecodeError, Error, Result};
use xstore_chunker::ChunkId;
use xstore_format::pack::PackId;
pub(crate) use xstore_format::records::{BlobLoc, HostRecord, PackRecord};
use xstore_format::snapshot::Snapshot;

pub(crate) const CF_BLOBS: &str = "blobs";
pub(crate) const CF_PACKS: &str = "packs";
pub(crate) const CF_SNAPSHOTS: &str = "snapshots";
pub(crate) const CF_HOSTS: &str = "hosts";
const CFS: [&str; 4] = [CF_BLOBS, CF_PACKS, CF_SNAPSHOTS, CF_HOSTS];
/// Default column family key prefix of a pack's last verification:
/// `verified/<pack id>` → i64 ns, little-endian (FORMAT.md §Index).
pub(crate) const VERIFIED_PREFIX: &[u8] = b"verified/";
/// Default column family key prefix of a damaged live blob: `damaged/<blob id>` → the pack
/// id of the damaged copy.
pub(crate) const DAMAGED_PREFIX: &[u8] = b"damaged/";
/// Default column family key of the last verify run's summary (JSON).
pub(crate) const LAST_RUN_KEY: &[u8] = b"verify/last-run";
/// Default column family key of when verify's current pass over all packs began (i64 ns, LE).
pub(crate) const CYCLE_KEY: &[u8] = b"verify/cycle-start";

/// Default column family key prefix of the per-host snapshot listing:
/// `host-snapshot/<host>/<snapshot id>` → empty, one key per snapshot record, written in the
/// same batch as the record (FORMAT.md §Index). Host names never contain `/`.
pub(crate) const HOST_SNAPSHOT_PREFIX: &[u8] = b"host-snapshot/";
/// Present once every snapshot record has its `host-snapshot/` key: an index written before
/// the keys existed gets them in one batch at its first writable open.
pub(crate) const HOST_SNAPSHOT_KEYS: &[u8] = b"index/host-snapshot-keys";

fn host_snapshot_prefix(host: &str) -> Vec<u8> {
    [HOST_SNAPSHOT_PREFIX, host.as_bytes(), b"/"].concat()
}

fn host_snapshot_key(host: &str, id: &xstore_format::snapshot::SnapshotId) -> Vec<u8> {
    [host_snapshot_prefix(host).as_slice(), id.0.as_slice()].concat()
}

pub(crate) fn verified_key(pack: &PackId) -> Vec<u8> {
    [VERIFIED_PREFIX, pack.0.as_slice()].concat()
}

pub(crate) fn damaged_key(blob: &ChunkId) -> Vec<u8> {
    [DAMAGED_PREFIX, blob.0.as_slice()].concat()
}

pub(crate) struct Index {
    db: DB,
    path: PathBuf,
    writable: bool,
    /// Bytes committed since the memtables were last written to table files.
    unflushed: AtomicUsize,
}

/// The block cache: at least this, which holds all the metadata of a 10 M-record index.
const MIN_CACHE_BYTES: usize = 64 << 20;
/// … and at most this, whatever the index's size (peak RSS stays under 1 GiB).
const MAX_CACHE_BYTES: usize = 384 << 20;

/// Block cache capacity for an index whose blob tables take `table_bytes`: 1/32 of them,
/// between the bounds. The filters and index partitions of a table are ~2 % of it; when
/// they do not fit, absent-id lookups (a backup asking "is this chunk new?") read filter
/// partitions instead of probing cached ones (bench/index-scale at 100 M records: 64 MiB
/// gave 125-270 k absent lookups/s, 256 MiB 620 k/s on two threads). The LRU cache only
/// takes what it caches: a small repository's process stays small.
fn cache_bytes(table_bytes: u64) -> usize {
    usize::try_from(table_bytes / 32)
        .unwrap_or(MAX_CACHE_BYTES)
        .clamp(MIN_CACHE_BYTES, MAX_CACHE_BYTES)
}

/// Commits smaller than this stay in the (synced) WAL until more accumulate or the handle
/// closes: flushing costs four table files and their fsyncs, which would dominate a rotate.
const FLUSH_AFTER_BYTES: usize = 1 << 20;

fn options(cache: &Cache) -> Options {
    let mut o = Options::default();
    o.create_missing_column_families(true);
    o.set_keep_log_file_num(3);
    o.set_max_open_files(512);
    o.set_max_total_wal_size(64 << 20);
    // Opening is on every command's path (rotate, forget, gc run in seconds-long cron jobs):
    // do not read every table file's properties at open.
    o.set_skip_stats_update_on_db_open(true);
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    t.set_bloom_filter(10.0, false);
    t.set_cache_index_and_filter_blocks(true);
    // Partitioned index and filters with their top level pinned: a table's metadata is read
    // in 4 KiB partitions as lookups need them, instead of whole multi-megabyte index and
    // filter blocks competing for the cache (bench/index-scale: point lookups of a compacted
    // 10 M-record index).
    t.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    t.set_partition_filters(true);
    t.set_metadata_block_size(4096);
    t.set_pin_top_level_index_and_filter(true);
    t.set_cache_index_and_filter_blocks_with_high_priority(true);
    o.set_block_based_table_factory(&t);
    o
}

impl Index {
    fn err(&self, e: rocksdb::Error) -> Error {
        Error::Index {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }

    /// Creates a new, empty index (init, and the index that `repair index` builds).
    pub(crate) fn create(path: &Path) -> Result<Self> {
        Self::open_with(path, false, true)
    }

    /// Opens an existing index for writing, or read-only. A missing index is an error, never
    /// silently replaced by an empty one (an empty index would disown every pack).
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Self> {
        if !crate::layout::index_current(path).is_file() {
            return Err(Error::IndexNeedsRepair {
                path: path.to_path_buf(),
                reason: "the index is missing or empty".into(),
            });
        }
        Self::open_with(path, read_only, false)
    }

    fn open_with(path: &Path, read_only: bool, create: bool) -> Result<Self> {
        let mut cache = Cache::new_lru_cache(MIN_CACHE_BYTES);
        let mut opts = options(&cache);
        opts.create_if_missing(create);
        opts.set_log_level(rocksdb::LogLevel::Warn);

        let cfs = CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, options(&cache)));
        let to_err = |e: rocksdb::Error| Error::Index {
            path: path.to_path_buf(),
            message: e.into_string(),
        };
        let db = if read_only {
            open_read_only_retrying(&opts, path, &cache).map_err(to_err)?
        } else {
            DB::open_cf_descriptors(&opts, path, cfs).map_err(to_err)?
        };
        let index = Index {
            db,
            path: path.to_path_buf(),
            writable: !read_only,
            unflushed: AtomicUsize::new(0),
        };
        cache.set_capacity(cache_bytes(index.blob_table_bytes()?));
        if !read_only && index.meta(HOST_SNAPSHOT_KEYS)?.is_none() {
            index.write_host_snapshot_keys()?;
        }
        Ok(index)
    }

    /// Gives every snapshot record its `host-snapshot/` key (an empty index: none) and sets
    /// the marker, in one synced batch. Writable opens only.
    fn write_host_snapshot_keys(&self) -> Result<()> {
        let mut batch = self.batch();
        for (k, _) in self.meta_with_prefix(HOST_SNAPSHOT_PREFIX)? {
            batch.delete_meta(&[HOST_SNAPSHOT_PREFIX, k.as_slice()].concat());
        }
        for s in self.snapshots()? {
            batch.put_meta(&host_snapshot_key(&s.host, &s.id), b"");
        }
        batch.put_meta(HOST_SNAPSHOT_KEYS, b"1");
        batch.commit()
    }

    /// Bytes of the blob column family's table files.
    fn blob_table_bytes(&self) -> Result<u64> {
        let cf = self.cf(CF_BLOBS)?;
        Ok(self
            .db
            .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
            .map_err(|e| self.err(e))?
            .unwrap_or(0))
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::Index {
            path: self.path.clone(),
            message: format!("column family {name} missing"),
        })
    }

    fn corrupt(&self, what: &str, source: DecodeError) -> Error {
        Error::Corrupt {
            path: self.path.join(what),
            source,
        }
    }

    /// A 32-byte key as an id; anything else is a corrupt index.
    fn key_id(&self, cf: &str, key: &[u8]) -> Result<ChunkId> {
        ChunkId::from_slice(key).ok_or_else(|| {
            self.corrupt(
                cf,
                DecodeError::Invalid {
                    what: "key",
                    offset: 0,
                    reason: format!("{} bytes, expected 32", key.len()),
                },
            )
        })
    }

    pub(crate) fn blob(&self, id: &ChunkId) -> Result<Option<BlobLoc>> {
        let cf = self.cf(CF_BLOBS)?;
        match self.db.get_pinned_cf(cf, id.0).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                BlobLoc::decode(&v).map_err(|e| self.corrupt(CF_BLOBS, e))?,
            )),
            None => Ok(None),
        }
    }

    /// Looks up many blobs at once (one batched RocksDB call).
    pub(crate) fn blobs(&self, ids: &[ChunkId]) -> Result<Vec<Option<BlobLoc>>> {
        let cf = self.cf(CF_BLOBS)?;
        let keys: Vec<&[u8]> = ids.iter().map(|i| &i.0[..]).collect();
        let mut out = Vec::with_capacity(ids.len());
        for r in self.db.batched_multi_get_cf(cf, keys, false) {
            match r.map_err(|e| self.err(e))? {
                Some(v) => out.push(Some(
                    BlobLoc::decode(&v).map_err(|e| self.corrupt(CF_BLOBS, e))?,
                )),
                None => out.push(None),
            }
        }
        Ok(out)
    }

    pub(crate) fn for_each_blob(
        &self,
        mut f: impl FnMut(ChunkId, BlobLoc) -> Result<()>,
    ) -> Result<()> {
        let cf = self.cf(CF_BLOBS)?;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let id = self.key_id(CF_BLOBS, &k)?;
            f(
                id,
                BlobLoc::decode(&v).map_err(|e| self.corrupt(CF_BLOBS, e))?,
            )?;
        }
        Ok(())
    }

    pub(crate) fn packs(&self) -> Result<Vec<(PackId, PackRecord)>> {
        let cf = self.cf(CF_PACKS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let id = self.key_id(CF_PACKS, &k)?;
            let rec = xstore_format::codec::decode("pack record", &v)
                .map_err(|e| self.corrupt(CF_PACKS, e))?;
            out.push((id, rec));
        }
        Ok(out)
    }

    pub(crate) fn pack(&self, id: &PackId) -> Result<Option<PackRecord>> {
        let cf = self.cf(CF_PACKS)?;
        match self.db.get_pinned_cf(cf, id.0).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                xstore_format::codec::decode("pack record", &v)
                    .map_err(|e| self.corrupt(CF_PACKS, e))?,
            )),
            None => Ok(None),
        }
    }

    pub(crate) fn snapshot(
        &self,
        id: &xstore_format::snapshot::SnapshotId,
    ) -> Result<Option<Snapshot>> {
        let cf = self.cf(CF_SNAPSHOTS)?;
        match self.db.get_pinned_cf(cf, id.0).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                Snapshot::decode(&v).map_err(|e| self.corrupt(CF_SNAPSHOTS, e))?,
            )),
            None => Ok(None),
        }
    }

    pub(crate) fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let cf = self.cf(CF_SNAPSHOTS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(Snapshot::decode(&v).map_err(|e| self.corrupt(CF_SNAPSHOTS, e))?);
        }
        Ok(out)
    }

    /// The snapshot records of one host (in no particular order), found through its
    /// `host-snapshot/` keys: the cost depends on that host's snapshots only. The listing is
    /// used when it is provably whole: the marker is set, every key names a record of this
    /// host, and their number is the host record's count (which every build maintains, so a
    /// snapshot an older build added or removed shows as a mismatch). Otherwise every record
    /// is decoded and filtered, as before the keys existed.
    pub(crate) fn snapshots_of(&self, host: &str) -> Result<Vec<Snapshot>> {
        if let Some(listed) = self.listed_snapshots_of(host)? {
            return Ok(listed);
        }
        Ok(self
            .snapshots()?
            .into_iter()
            .filter(|s| s.host == host)
            .collect())
    }

    fn listed_snapshots_of(&self, host: &str) -> Result<Option<Vec<Snapshot>>> {
        if self.meta(HOST_SNAPSHOT_KEYS)?.is_none() {
            return Ok(None);
        }
        let keys = self.meta_with_prefix(&host_snapshot_prefix(host))?;
        let count = self.host(host)?.map_or(0, |r| r.snapshots);
        if keys.len() as u64 != count || keys.iter().any(|(k, _)| k.len() != 32) {
            return Ok(None);
        }
        let cf = self.cf(CF_SNAPSHOTS)?;
        let ids: Vec<&[u8]> = keys.iter().map(|(k, _)| k.as_slice()).collect();
        let mut out = Vec::with_capacity(ids.len());
        for r in self.db.batched_multi_get_cf(cf, ids, false) {
            match r.map_err(|e| self.err(e))? {
                Some(v) => {
                    let s = Snapshot::decode(&v).map_err(|e| self.corrupt(CF_SNAPSHOTS, e))?;
                    if s.host != host {
                        return Ok(None);
                    }
                    out.push(s);
                }
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// Whether the `host-snapshot/` keys list exactly the snapshot records (check).
    pub(crate) fn host_snapshot_keys_problems(
        &self,
        snapshots: &[Snapshot],
    ) -> Result<Vec<String>> {
        if self.meta(HOST_SNAPSHOT_KEYS)?.is_none() {
            return Ok(Vec::new());
        }
        let mut want: std::collections::BTreeSet<Vec<u8>> = snapshots
            .iter()
            .map(|s| host_snapshot_key(&s.host, &s.id))
            .collect();
        let mut problems = Vec::new();
        for (k, _) in self.meta_with_prefix(HOST_SNAPSHOT_PREFIX)? {
            let key = [HOST_SNAPSHOT_PREFIX, k.as_slice()].concat();
            if !want.remove(&key) {
                problems.push(format!(
                    "per-host snapshot key {} names no snapshot record of that host",
                    String::from_utf8_lossy(&k[..k.len().saturating_sub(32)]).trim_end_matches('/')
                ));
            }
        }
        for key in want {
            let rest = key.get(HOST_SNAPSHOT_PREFIX.len()..).unwrap_or_default();
            problems.push(format!(
                "snapshot of host {} has no per-host snapshot key",
                String::from_utf8_lossy(&rest[..rest.len().saturating_sub(33)])
            ));
        }
        Ok(problems)
    }

    /// Every host record, in name order.
    pub(crate) fn host_records(&self) -> Result<Vec<(HostName, HostRecord)>> {
        let cf = self.cf(CF_HOSTS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let name = std::str::from_utf8(&k)
                .map_err(|e| (e.valid_up_to(), "not UTF-8".to_string()))
                .and_then(|text| HostName::parse(text).map_err(|e| (0, e.to_string())))
                .map_err(|(offset, reason)| {
                    self.corrupt(
                        CF_HOSTS,
                        DecodeError::Invalid {
                            what: "host name",
                            offset,
                            reason,
                        },
                    )
                })?;
            let rec = xstore_format::codec::decode("host record", &v)
                .map_err(|e| self.corrupt(CF_HOSTS, e))?;
            out.push((name, rec));
        }
        Ok(out)
    }

    pub(crate) fn host(&self, host: &str) -> Result<Option<HostRecord>> {
        let cf = self.cf(CF_HOSTS)?;
        match self
            .db
            .get_pinned_cf(cf, host.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(v) => Ok(Some(
                xstore_format::codec::decode("host record", &v)
                    .map_err(|e| self.corrupt(CF_HOSTS, e))?,
            )),
            None => Ok(None),
        }
    }

    /// Writes the memtables of every column family to table files. Not needed for durability
    /// (the WAL is synced at commit); it spares the next open the replay of the WAL (a first
    /// backup of 78 k files leaves ~8 MB: 300 ms of replay and re-flush on every open).
    pub(crate) fn flush(&self) -> Result<()> {
        let cfs = CFS.iter().map(|n| self.cf(n)).collect::<Result<Vec<_>>>()?;
        let mut opts = FlushOptions::default();
        opts.set_wait(true);
        self.db
            .flush_cfs_opt(&cfs, &opts)
            .map_err(|e| self.err(e))?;
        self.unflushed.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn committed(&self, bytes: usize) {
        let total = self.unflushed.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total >= FLUSH_AFTER_BYTES {
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "index flush after commit failed (the commit is durable)");
            }
        }
    }

    /// Compacts the blob column family fully and waits for it (benchmarks: a settled index).
    #[cfg(feature = "bench-internals")]
    pub(crate) fn compact_blobs(&self) -> Result<()> {
        let cf = self.cf(CF_BLOBS)?;
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// A value of the default column family (repository facts the index was built for).
    pub(crate) fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| self.err(e))
    }

    /// Sets a value of the default column family, synced.
    pub(crate) fn set_meta(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut b = WriteBatch::default();
        b.put(key, value);
        self.db.write_opt(b, &opts).map_err(|e| self.err(e))
    }

    /// Every value of the default column family whose key starts with `prefix`, as (key
    /// without the prefix, value).
    pub(crate) fn meta_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some(rest) = k.strip_prefix(prefix) else {
                break;
            };
            out.push((rest.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Live blobs marked damaged by `verify` and not stored again since.
    pub(crate) fn damaged_blobs(&self) -> Result<std::collections::HashSet<ChunkId>> {
        Ok(self
            .meta_with_prefix(DAMAGED_PREFIX)?
            .into_iter()
            .filter_map(|(k, _)| ChunkId::from_slice(&k))
            .collect())
    }

    pub(crate) fn batch(&self) -> IndexBatch<'_> {
        IndexBatch {
            index: self,
            batch: WriteBatch::default(),
        }
    }
}

/// One atomic, synced index write.
pub(crate) struct IndexBatch<'a> {
    index: &'a Index,
    batch: WriteBatch,
}

impl IndexBatch<'_> {
    pub(crate) fn put_blob(&mut self, id: &ChunkId, loc: &BlobLoc) -> Result<()> {
        let cf = self.index.cf(CF_BLOBS)?;
        self.batch.put_cf(cf, id.0, loc.encode());
        Ok(())
    }
    pub(crate) fn put_pack(&mut self, id: &PackId, rec: &PackRecord) -> Result<()> {
        let cf = self.index.cf(CF_PACKS)?;
        self.batch
            .put_cf(cf, id.0, xstore_format::codec::encode(rec));
        Ok(())
    }
    /// Puts a snapshot record and its `host-snapshot/` key.
    pub(crate) fn put_snapshot(&mut self, s: &Snapshot) -> Result<()> {
        let cf = self.index.cf(CF_SNAPSHOTS)?;
        self.batch.put_cf(cf, s.id.0, s.encode());
        self.batch.put(host_snapshot_key(&s.host, &s.id), b"");
        Ok(())
    }
    pub(crate) fn put_host(&mut self, host: &str, rec: &HostRecord) -> Result<()> {
        let cf = self.index.cf(CF_HOSTS)?;
        self.batch
            .put_cf(cf, host.as_bytes(), xstore_format::codec::encode(rec));
        Ok(())
    }
    pub(crate) fn delete_blob(&mut self, id: &ChunkId) -> Result<()> {
        let cf = self.index.cf(CF_BLOBS)?;
        self.batch.delete_cf(cf, id.0);
        Ok(())
    }
    pub(crate) fn delete_pack(&mut self, id: &PackId) -> Result<()> {
        let cf = self.index.cf(CF_PACKS)?;
        self.batch.delete_cf(cf, id.0);
        Ok(())
    }
    /// Deletes a snapshot record (`host`: the host it records) and its `host-snapshot/` key.
    pub(crate) fn delete_snapshot(
        &mut self,
        host: &str,
        id: &xstore_format::snapshot::SnapshotId,
    ) -> Result<()> {
        let cf = self.index.cf(CF_SNAPSHOTS)?;
        self.batch.delete_cf(cf, id.0);
        self.batch.delete(host_snapshot_key(host, id));
        Ok(())
    }
    pub(crate) fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put(key, value);
    }
    pub(crate) fn delete_meta(&mut self, key: &[u8]) {
        self.batch.delete(key);
    }
    /// Writes everything atomically with fsync of the WAL.
    pub(crate) fn commit(self) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let bytes = self.batch.size_in_bytes();
        self.index
            .db
            .write_opt(self.batch, &wo)
            .map_err(|e| self.index.err(e))?;
        self.index.committed(bytes);
        Ok(())
    }
}

impl Drop for Index {
    /// A writer leaves no WAL to replay behind it (readers and the next writer open faster).
    fn drop(&mut self) {
        if self.writable && self.unflushed.load(Ordering::Relaxed) > 0 {
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "index flush at close failed (commits are durable)");
            }
        }
    }
}

/// A read-only open that races a writer: RocksDB lists the index's files, then opens them,
/// and a writer that rotates its log or manifest in between deletes one (`IO error: No such
/// file or directory`, seen when a `cat` started while gc committed). The files it finds on
/// a retry are the writer's next consistent state; other errors are returned at once.
fn open_read_only_retrying(
    opts: &rocksdb::Options,
    path: &Path,
    cache: &Cache,
) -> std::result::Result<DB, rocksdb::Error> {
    const ATTEMPTS: u32 = 8;
    let mut attempt = 0;
    loop {
        let cfs = CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, options(cache)));
        match DB::open_cf_descriptors_read_only(opts, path, cfs, false) {
            Err(e)
                if attempt + 1 < ATTEMPTS && e.as_ref().contains("No such file or directory") =>
            {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "index changed while opening; again");
                std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
            }
            done => return done,
        }
    }
}
