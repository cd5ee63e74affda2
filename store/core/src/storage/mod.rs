//! Where sealed packs live: the one seam between the repository and the bytes it keeps
//! outside its local index. Nothing else in the crate reads, lists or deletes a pack file.
//!
//! Two implementations: [`local::LocalStorage`], the repository directory's `packs/XX/`
//! (temporary name, fsync, rename, directory fsync), and `s3::S3Storage`, a bucket of an
//! S3-compatible object store. The choice is the repository's `store.toml` (FORMAT.md
//! §Repository layout); without one the packs are local.
//!
//! Contract of every implementation:
//! - `put` returns only once the pack is durable (renamed and its directory synced; or the
//!   object store acknowledged the whole upload). The commit order relies on it: packs
//!   durable, then the one synced index batch that references them.
//! - A pack is immutable once put: the same id always reads the same bytes.
//! - `delete` of an absent pack succeeds; deletions are durable on return.
//! - Errors name where: a path, or the endpoint and object key with the status.

pub(crate) mod lease;
pub(crate) mod local;
pub(crate) mod mmap;
pub(crate) mod pack_cache;
pub(crate) mod read_ahead;
pub(crate) mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use xstore_chunker::ChunkId;
use xstore_format::encryption::Encryption;

/// A sealed pack's id: the BLAKE3 hash of its bytes.
pub(crate) type PackId = ChunkId;

/// One stored pack, as a listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackInfo {
    pub id: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// When it was stored (ns since the epoch), when the storage says.
    pub modified_ns: Option<i64>,
}

/// A whole pack's bytes: a read-only mapping of a local file, or bytes fetched from an
/// object store.
pub(crate) enum PackBytes {
    Mapped(Mmap),
    Fetched(Vec<u8>),
}

impl std::ops::Deref for PackBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            PackBytes::Mapped(m) => m,
            PackBytes::Fetched(v) => v,
        }
    }
}

/// The operations a repository needs of its pack storage (module documentation: the
/// contract).
pub(crate) trait PackStorage: Send + Sync {
    /// Makes the sealed pack file `sealed` (in `packs/tmp/`) durable as pack `id`. The file
    /// is consumed: renamed into place, or removed after its upload (or kept in the local
    /// pack cache when `metadata_only`: no file data, only what walks read). It was synced
    /// before when [`PackStorage::keeps_the_local_file`] says so.
    fn put(&self, id: &PackId, sealed: &Path, metadata_only: bool) -> Result<()>;
    /// Whether `put` keeps the sealed local file as the pack (then it must be synced before
    /// it is renamed into place); a remote storage uploads the bytes and removes the file,
    /// so syncing it would only write to disk what is deleted a moment later.
    fn keeps_the_local_file(&self) -> bool {
        true
    }
    /// Reads `buf.len()` bytes of pack `id` at `offset` (a remote storage may fetch more
    /// around them and keep it for the reads that follow).
    fn read_at(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Reads exactly `buf.len()` bytes of pack `id` at `offset`, fetching and keeping nothing
    /// more (one read per pack, as `repair index` does).
    fn read_exact(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(id, offset, buf)
    }
    /// The whole pack (scans: check, verify, gc, repair).
    fn read_whole(&self, id: &PackId) -> Result<PackBytes>;
    /// The pack's size, `None` when it is absent.
    fn size(&self, id: &PackId) -> Result<Option<u64>>;
    /// Every stored pack, in no particular order.
    fn list(&self) -> Result<Vec<PackInfo>>;
    /// Deletes these packs (absent ones are skipped); durable on return.
    fn delete(&self, ids: &[PackId]) -> Result<()>;
    /// Where pack `id` is, for messages: a path, or `s3://bucket/key`.
    fn location(&self, id: &PackId) -> String;
    /// Multipart uploads of packs that were begun and neither completed nor aborted (their
    /// writer was killed mid-upload): listings do not show them, yet the store keeps their
    /// parts. A local storage has none (its leftovers are temporary files recovery removes).
    fn unfinished_uploads(&self) -> Result<Vec<UnfinishedUpload>> {
        Ok(Vec::new())
    }
    /// Aborts one unfinished upload, freeing its parts (an upload gone already succeeds).
    fn abort_upload(&self, _upload: &UnfinishedUpload) -> Result<()> {
        Ok(())
    }
    /// Drops whatever the storage keeps open for `id` (gc deleted it elsewhere).
    fn forget(&self, _id: &PackId) {}
    /// Announces the `read_at` calls about to be made, in the order they will be made
    /// (restore's pack-ordered writes). A remote storage fetches them ahead in large ranges
    /// (read_ahead.rs) until the guard is dropped; a local one needs nothing.
    fn read_ahead(&self, _reads: &[read_ahead::RangeRead]) -> ReadAheadGuard {
        ReadAheadGuard::default()
    }
    /// A hint that these ranges (in pack order) are read soon, by any thread in any order:
    /// a local storage has the kernel read them into the page cache ahead of those reads
    /// (walks of many trees from a cold cache wait on one small read at a time otherwise);
    /// a remote one ignores it (its metadata pack cache and windows serve walks).
    fn will_need(&self, _reads: &[read_ahead::RangeRead]) {}
}

/// A multipart upload under the repository's `packs/` that was never completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnfinishedUpload {
    /// The object key it would have created.
    pub key: String,
    /// The store's id of the upload.
    pub upload_id: String,
    /// When it was begun (ns since the epoch), when the store says.
    pub initiated_ns: Option<i64>,
}

/// Ends a read-ahead when dropped: nothing more is requested and what was fetched is freed.
#[derive(Default)]
pub(crate) struct ReadAheadGuard {
    running: Option<Arc<read_ahead::ReadAhead>>,
}

impl Drop for ReadAheadGuard {
    fn drop(&mut self) {
        if let Some(ra) = self.running.take() {
            ra.cancel();
        }
    }
}

/// A bucket of an S3-compatible object store that holds a repository's packs and its
/// `config` (the repository directory keeps the index, the journal and the locks). Written
/// to the repository's `store.toml`; credentials are never written there, only where they
/// are read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Location {
    /// The endpoint URL, `http://127.0.0.1:3900` or `https://s3.example.net`.
    pub endpoint: String,
    /// The bucket (3 to 63 characters).
    pub bucket: String,
    /// The key prefix inside the bucket (empty: the bucket's root).
    #[serde(default)]
    pub prefix: String,
    /// The region the store expects in signatures (Garage's default is `garage`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`, what self-hosted stores serve) rather than
    /// virtual-hosted style (`bucket.endpoint/key`).
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// A file holding the access key (TOML: `access_key_id`, `secret_access_key`), readable
    /// by its owner only. Without one, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Retries of a failed request (5xx, timeouts, connection errors) before it fails.
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout_seconds: u64,
    /// One request's time limit (a 32 MiB part on a slow link included).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
}

fn default_region() -> String {
    "garage".into()
}
fn default_true() -> bool {
    true
}
fn default_retries() -> usize {
    5
}
fn default_retry_timeout() -> u64 {
    60
}
fn default_request_timeout() -> u64 {
    120
}

impl S3Location {
    /// A location from `s3://BUCKET[/PREFIX]` and an endpoint URL, with the defaults.
    pub fn parse(url: &str, endpoint: &str) -> Result<S3Location> {
        let bad = |why: &str| Error::InvalidArgument(format!("--store {url}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(
                "a bucket name is 3 to 63 characters: lower-case letters, digits, '-' and '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|p| p == "." || p == ".." || (p.is_empty() && !prefix.is_empty()))
        {
            return Err(bad("the prefix has an empty, '.' or '..' part"));
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "--endpoint {endpoint}: expected an http:// or https:// URL"
            )));
        }
        Ok(S3Location {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: default_region(),
            path_style: true,
            credentials_file: None,
            max_retries: default_retries(),
            retry_timeout_seconds: default_retry_timeout(),
            request_timeout_seconds: default_request_timeout(),
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// An access key, read when a repository opens; never written anywhere.
pub(crate) struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// From the location's credentials file, else from the environment.
    pub(crate) fn resolve(location: &S3Location) -> Result<S3Credentials> {
        match &location.credentials_file {
            Some(path) => Self::from_file(path),
            None => {
                let id = std::env::var("AWS_ACCESS_KEY_ID").ok();
                let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
                match (id, secret) {
                    (Some(access_key_id), Some(secret_access_key))
                        if !access_key_id.is_empty() && !secret_access_key.is_empty() =>
                    {
                        Ok(S3Credentials {
                            access_key_id,
                            secret_access_key,
                        })
                    }
                    _ => Err(Error::InvalidArgument(format!(
                        "no credentials for {}: set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, or name a credentials file",
                        location.url()
                    ))),
                }
            }
        }
    }

    /// A credentials file: a regular file (not followed through a symlink), owned by this
    /// user or root, readable by its owner only.
    fn from_file(path: &Path) -> Result<S3Credentials> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let refuse = |reason: String| Error::StoreConfig {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .at(path)?;
        let meta = file.metadata().at(path)?;
        if !meta.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(refuse(format!(
                "owned by uid {}, not by this user or root",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "readable or writable by others (mode {:04o}); chmod 600 it",
                meta.mode() & 0o7777
            )));
        }
        let mut text = String::new();
        file.take(64 * 1024).read_to_string(&mut text).at(path)?;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            access_key_id: String,
            secret_access_key: String,
        }
        // The parser's message could quote the secret: only say where.
        let f: File = toml::from_str(&text).map_err(|e| {
            refuse(format!(
                "expected access_key_id = \"...\" and secret_access_key = \"...\" ({})",
                e.span()
                    .map_or("unreadable".into(), |s| format!("near byte {}", s.start))
            ))
        })?;
        Ok(S3Credentials {
            access_key_id: f.access_key_id,
            secret_access_key: f.secret_access_key,
        })
    }
}

/// `store.toml`: where the packs of a repository are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    s3: S3Location,
}

/// The object-store location of the repository at `root`, `None` for local packs.
pub(crate) fn s3_location(root: &Path) -> Result<Option<S3Location>> {
    let path = crate::layout::store_file(root);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(&path),
    };
    let file: StoreFile = toml::from_str(&text).map_err(|e| Error::StoreConfig {
        path: path.clone(),
        reason: e.message().to_string(),
    })?;
    Ok(Some(file.s3))
}

/// Writes `store.toml` durably.
pub(crate) fn write_s3_location(root: &Path, location: &S3Location) -> Result<()> {
    let text = toml::to_string(&StoreFile {
        s3: location.clone(),
    })
    .map_err(|e| Error::Encode {
        what: "store.toml",
        reason: e.to_string(),
    })?;
    let header = "# Where this repository's packs and config are (FORMAT.md, store.toml).\n";
    crate::fsutil::write_atomic(
        &crate::layout::store_file(root),
        format!("{header}{text}").as_bytes(),
    )
}

/// The client of an object-store location; with the repository directory `root`, its
/// local cache of metadata packs (pack_cache.rs), which reads trailers as `encryption` says.
pub(crate) fn open_s3(
    location: &S3Location,
    root: Option<&Path>,
    encryption: &Encryption,
) -> Result<s3::S3Storage> {
    let cache = root.map(|r| {
        pack_cache::PackCache::new(
            crate::layout::pack_cache(r),
            pack_cache::PACK_CACHE_MAX_BYTES,
            encryption.clone(),
        )
    });
    s3::S3Storage::new(location, &S3Credentials::resolve(location)?, cache)
}

/// The storage of the repository at `root` for a writer that holds the local writer lock,
/// and, for an object store, the writer lease taken for `holder` (lease.rs): a live lease of
/// another server refuses the open.
pub(crate) fn open_for_writing(
    root: &Path,
    holder: String,
    encryption: &Encryption,
) -> Result<(Arc<dyn PackStorage>, Option<lease::WriterLease>)> {
    Ok(match s3_location(root)? {
        Some(location) => {
            let store = Arc::new(open_s3(&location, Some(root), encryption)?);
            let lease = lease::WriterLease::acquire(store.clone(), holder, root)?;
            (store, Some(lease))
        }
        None => (
            Arc::new(local::LocalStorage::new(crate::layout::packs(root))),
            None,
        ),
    })
}

/// The storage of the repository at `root`: `store.toml`'s object store when the file
/// exists, else the local `packs/` directory.
pub(crate) fn open(root: &Path, encryption: &Encryption) -> Result<Arc<dyn PackStorage>> {
    Ok(match s3_location(root)? {
        Some(location) => Arc::new(open_s3(&location, Some(root), encryption)?),
        None => Arc::new(local::LocalStorage::new(crate::layout::packs(root))),
    })
}
