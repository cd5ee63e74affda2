//! A bounded local copy of the metadata packs (trees, chunk lists, snapshot records) of a
//! repository whose packs live in an object store: `cache/packs/<id>.pack` in the repository
//! directory. A backup walks its parent's trees and a browse lists directories; from the
//! cache they cost no request (restic and PBS keep such a cache for the same reason).
//!
//! It is a cache, never a source of truth: the bucket holds every pack. Files enter it only
//! as a pack this process just uploaded (its bytes read back and verified before the upload)
//! or as a small pack a read fetched whole from the bucket (its bytes hash to its id and its
//! trailer lists no file data: how a machine that attached to the bucket fills it), are
//! verified again (their bytes hash to the pack id) the first time a process opens them,
//! and anything unreadable, short or different is a miss that the caller serves from the
//! bucket. Whole-pack scans (`check --read-data`, gc, verify) never read it, so they check the
//! bucket's copy. Deleting the directory at any time loses nothing.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use xstore_format::encryption::Encryption;

use super::PackId;

/// The cache holds at most this many bytes; the least recently used packs go first (a pack's
/// modification time is set when it is stored and when a process first reads it: the trees
/// of a host's first backup stay in use as long as later backups walk them).
pub(crate) const PACK_CACHE_MAX_BYTES: u64 = 1 << 30;
/// Open cache files kept for positioned reads; the table is emptied when it reaches this.
const MAX_OPEN: usize = 256;

pub(crate) struct PackCache {
    dir: PathBuf,
    max_bytes: u64,
    /// How the repository's trailers are read (which packs are metadata only).
    encryption: Encryption,
    /// Files verified by this process, kept open.
    open: Mutex<HashMap<PackId, Arc<fs::File>>>,
}

impl PackCache {
    /// The cache in `dir` (created when the first pack is stored), at most `max_bytes`.
    pub(crate) fn new(dir: PathBuf, max_bytes: u64, encryption: Encryption) -> PackCache {
        PackCache {
            dir,
            max_bytes,
            encryption,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, id: &PackId) -> PathBuf {
        self.dir.join(format!("{id}.pack"))
    }

    /// Reads `buf.len()` bytes of pack `id` at `offset` from the cache; false when the cache
    /// cannot serve them (absent, unreadable, not the pack's bytes, too short).
    pub(crate) fn read_at(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(file) = self.open_verified(id) else {
            return false;
        };
        match file.read_exact_at(buf, offset) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(pack = %id, error = %e, "cached pack not read; reading the bucket");
                false
            }
        }
    }

    /// The cache file of `id`, opened and verified once per process.
    fn open_verified(&self, id: &PackId) -> Option<Arc<fs::File>> {
        if let Some(f) = self.open.lock().ok()?.get(id) {
            return Some(f.clone());
        }
        let path = self.path(id);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cached pack not opened");
                return None;
            }
        };
        let mut hasher = blake3::Hasher::new();
        let verified = hasher
            .update_reader(&file)
            .map(|h| xstore_chunker::ChunkId(*h.finalize().as_bytes()) == *id);
        if !matches!(verified, Ok(true)) {
            // A torn write after a power loss, a damaged disk: drop it, read the bucket.
            tracing::warn!(path = %path.display(),
                "a cached pack is not the pack's bytes; removed, reading the bucket instead");
            let _ = fs::remove_file(&path);
            return None;
        }
        // Marks it used for the eviction order (a reader without the right to is no matter).
        let _ = file.set_modified(std::time::SystemTime::now());
        let file = Arc::new(file);
        if let Ok(mut open) = self.open.lock() {
            if open.len() >= MAX_OPEN {
                open.clear();
            }
            open.insert(*id, file.clone());
        }
        Some(file)
    }

    /// Moves the uploaded pack file `sealed` into the cache as pack `id`, then removes the
    /// least recently used cached packs beyond the bound. Failures are logged: a cache that cannot be
    /// written costs requests, never data.
    pub(crate) fn keep(&self, id: &PackId, sealed: &Path) {
        let stored = fs::create_dir_all(&self.dir).and_then(|()| fs::rename(sealed, self.path(id)));
        if let Err(e) = stored {
            tracing::debug!(pack = %id, error = %e, "pack not cached");
            let _ = fs::remove_file(sealed);
            return;
        }
        if let Err(e) = self.evict_beyond_bound() {
            tracing::debug!(dir = %self.dir.display(), error = %e, "pack cache not trimmed");
        }
    }

    /// Stores `bytes`, fetched from the bucket, as pack `id` if they are that whole pack (they
    /// hash to `id`) and it holds no file data: a reader that met a small metadata pack the
    /// cache lacks (another machine wrote it, or it was evicted) keeps it for the next walk.
    /// Anything else is ignored.
    pub(crate) fn offer(&self, id: &PackId, bytes: &[u8]) {
        // Cheapest first: most whole small packs a window brings are data (a backup's last
        // pack), which the trailer tells without hashing the bytes.
        if self.path(id).exists() {
            return;
        }
        let metadata_only =
            xstore_format::pack::read_trailer(&self.encryption, bytes).is_ok_and(|entries| {
                !entries.is_empty() && entries.iter().all(|e| !e.kind.is_file_data())
            });
        if !metadata_only || xstore_chunker::ChunkId::of(bytes) != *id {
            return;
        }
        let mut rnd = [0u8; 8];
        if getrandom::fill(&mut rnd).is_err() {
            return;
        }
        let tmp = self
            .dir
            .join(format!(".{}.tmp", xstore_format::bytes::to_hex(&rnd)));
        let written = fs::create_dir_all(&self.dir)
            .and_then(|()| fs::write(&tmp, bytes))
            .and_then(|()| fs::rename(&tmp, self.path(id)));
        if let Err(e) = written {
            tracing::debug!(pack = %id, error = %e, "fetched pack not cached");
            let _ = fs::remove_file(&tmp);
            return;
        }
        if let Err(e) = self.evict_beyond_bound() {
            tracing::debug!(dir = %self.dir.display(), error = %e, "pack cache not trimmed");
        }
    }

    fn evict_beyond_bound(&self) -> std::io::Result<()> {
        let mut files = Vec::new();
        let mut total = 0u64;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            // Only cached packs: a `.tmp` being written by another process is not ours.
            let is_pack = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".pack"));
            if !meta.is_file() || !is_pack {
                continue;
            }
            total += meta.len();
            files.push((meta.modified()?, meta.len(), entry.path()));
        }
        if total <= self.max_bytes {
            return Ok(());
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            fs::remove_file(&path)?;
            total = total.saturating_sub(len);
        }
        // Handles of removed files would still read (the inode lives on while open); drop
        // them so the table does not pin evicted files.
        if let Ok(mut open) = self.open.lock() {
            open.clear();
        }
        Ok(())
    }

    /// Removes pack `id` from the cache (gc deleted it from the bucket).
    pub(crate) fn forget(&self, id: &PackId) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(id);
        }
        match fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(pack = %id, error = %e, "cached pack not removed"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sealed(dir: &Path, seed: u64, len: usize) -> (PackId, PathBuf, Vec<u8>) {
        let bytes = xstore_chunker::seeded_bytes(seed, len);
        let id = PackId::of(&bytes);
        let path = dir.join(format!("{seed}.tmp"));
        fs::write(&path, &bytes).unwrap();
        (id, path, bytes)
    }

    #[test]
    fn a_kept_pack_reads_back_and_a_damaged_or_short_one_is_a_miss() {
        let d = tempfile::tempdir().unwrap();
        let cache = PackCache::new(d.path().join("cache"), 1 << 20, Encryption::Plain);
        let (id, tmp, bytes) = sealed(d.path(), 1, 10_000);
        let mut buf = [0u8; 100];
        assert!(!cache.read_at(&id, 0, &mut buf), "nothing cached yet");
        cache.keep(&id, &tmp);
        assert!(!tmp.exists(), "the sealed file moved into the cache");
        assert!(cache.read_at(&id, 500, &mut buf));
        assert_eq!(&buf[..], &bytes[500..600]);
        assert!(!cache.read_at(&id, 9_950, &mut buf), "beyond its end");

        // Damaged on disk before a process opens it: a miss, and the file is removed.
        let (id2, tmp2, _) = sealed(d.path(), 2, 10_000);
        cache.keep(&id2, &tmp2);
        let path2 = cache.path(&id2);
        let mut damaged = fs::read(&path2).unwrap();
        damaged[7] ^= 1;
        fs::write(&path2, &damaged).unwrap();
        let fresh = PackCache::new(d.path().join("cache"), 1 << 20, Encryption::Plain);
        assert!(!fresh.read_at(&id2, 0, &mut buf));
        assert!(!path2.exists());
        // Truncated (a torn write): a miss too.
        let (id3, tmp3, bytes3) = sealed(d.path(), 3, 10_000);
        cache.keep(&id3, &tmp3);
        fs::write(cache.path(&id3), &bytes3[..5_000]).unwrap();
        assert!(!fresh.read_at(&id3, 0, &mut buf));
        // The intact one still reads in the fresh process.
        assert!(fresh.read_at(&id, 0, &mut buf));
        assert_eq!(&buf[..], &bytes[..100]);
        fresh.forget(&id);
        assert!(!fresh.read_at(&id, 0, &mut buf));
    }

    #[test]
    fn the_oldest_packs_go_once_the_bound_is_passed() {
        let d = tempfile::tempdir().unwrap();
        let cache = PackCache::new(d.path().join("cache"), 25_000, Encryption::Plain);
        let mut ids = Vec::new();
        for seed in 0..4u64 {
            let (id, tmp, _) = sealed(d.path(), 10 + seed, 10_000);
            cache.keep(&id, &tmp);
            ids.push(id);
            // Distinct modification times, oldest first.
            let t =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + seed);
            fs::File::options()
                .write(true)
                .open(cache.path(&id))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let mut buf = [0u8; 10];
        let present: Vec<bool> = ids
            .iter()
            .map(|id| cache.read_at(id, 0, &mut buf))
            .collect();
        // Each keep trimmed to 25 kB: two packs of 10 kB remain, the newest two.
        assert_eq!(present, [false, false, true, true]);
    }

    #[test]
    fn a_pack_read_again_outlives_one_stored_later_but_not_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let cache = PackCache::new(dir.clone(), 25_000, Encryption::Plain);
        let long_ago = |seed: u64| {
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + seed)
        };
        let (old, tmp, _) = sealed(d.path(), 20, 10_000);
        cache.keep(&old, &tmp);
        let (newer, tmp, _) = sealed(d.path(), 21, 10_000);
        cache.keep(&newer, &tmp);
        for (id, seed) in [(&old, 0), (&newer, 1)] {
            fs::File::options()
                .write(true)
                .open(cache.path(id))
                .unwrap()
                .set_modified(long_ago(seed))
                .unwrap();
        }
        // Another process reads the old one (a backup walking its host's first trees).
        let mut buf = [0u8; 10];
        assert!(PackCache::new(dir, 25_000, Encryption::Plain).read_at(&old, 0, &mut buf));
        let (third, tmp, _) = sealed(d.path(), 22, 10_000);
        cache.keep(&third, &tmp);
        let present: Vec<bool> = [&old, &newer, &third]
            .iter()
            .map(|id| cache.path(id).exists())
            .collect();
        assert_eq!(present, [true, false, true]);
    }
}
