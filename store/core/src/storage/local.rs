//! Packs in the repository directory: `packs/XX/<id>.pack`. Stored by rename and a directory
//! fsync; open files are cached; `will_need` advises ranges about to be read to the kernel
//! (`POSIX_FADV_WILLNEED`), nearby ones as one span.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{PackBytes, PackId, PackInfo, PackStorage};
use crate::error::{poisoned, IoContext, Result};
use xstore_chunker::ChunkId;

/// Open pack files kept for positioned reads; the cache is emptied when it reaches this.
const MAX_OPEN_PACKS: usize = 256;
/// Ranges of one pack closer than this are advised as one (a few pages read for nothing
/// cost less than another request to the disk).
const WILL_NEED_GAP: u64 = 256 << 10;

/// The local pack directory and a cache of open pack files.
pub(crate) struct LocalStorage {
    packs_dir: PathBuf,
    files: Mutex<HashMap<PackId, Arc<fs::File>>>,
}

impl LocalStorage {
    pub(crate) fn new(packs_dir: PathBuf) -> Self {
        LocalStorage {
            packs_dir,
            files: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, id: &PackId) -> PathBuf {
        crate::layout::pack_file(&self.packs_dir, id)
    }

    fn open_file(&self, id: &PackId) -> Result<Arc<fs::File>> {
        if let Some(f) = self.files.lock().map_err(poisoned)?.get(id) {
            return Ok(f.clone());
        }
        let path = self.path(id);
        let file = Arc::new(fs::File::open(&path).at(&path)?);
        let mut files = self.files.lock().map_err(poisoned)?;
        if files.len() >= MAX_OPEN_PACKS {
            files.clear();
        }
        files.insert(*id, file.clone());
        Ok(file)
    }
}

/// The spans (pack, start, end) to advise for `reads`: consecutive reads of one pack that
/// overlap or lie within [`WILL_NEED_GAP`] of each other become one span.
fn will_need_spans(reads: &[super::read_ahead::RangeRead]) -> Vec<(PackId, u64, u64)> {
    let mut spans: Vec<(PackId, u64, u64)> = Vec::new();
    for r in reads {
        let end = r.offset.saturating_add(r.len);
        match spans.last_mut() {
            Some((pack, start, to))
                if *pack == r.pack
                    && r.offset >= *start
                    && r.offset <= to.saturating_add(WILL_NEED_GAP) =>
            {
                *to = (*to).max(end);
            }
            _ => spans.push((r.pack, r.offset, end)),
        }
    }
    spans
}

impl PackStorage for LocalStorage {
    fn put(&self, id: &PackId, sealed: &Path, _metadata_only: bool) -> Result<()> {
        let final_path = self.path(id);
        let dir = final_path.parent().unwrap_or(&self.packs_dir);
        fs::create_dir_all(dir).at(dir)?;
        fs::rename(sealed, &final_path).at(&final_path)?;
        crate::fsutil::sync_dir(dir)
    }

    fn read_at(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let file = self.open_file(id)?;
        file.read_exact_at(buf, offset).at(self.path(id))
    }

    fn will_need(&self, reads: &[super::read_ahead::RangeRead]) {
        for (pack, start, end) in will_need_spans(reads) {
            // An empty span advises nothing (a length of none would mean the whole file).
            let Some(len) = std::num::NonZeroU64::new(end.saturating_sub(start)) else {
                continue;
            };
            // Only a hint: a pack that cannot be opened fails its read, with its error.
            if let Ok(file) = self.open_file(&pack) {
                let advice = rustix::fs::Advice::WillNeed;
                let _ = rustix::fs::fadvise(&*file, start, Some(len), advice);
            }
        }
    }

    fn read_whole(&self, id: &PackId) -> Result<PackBytes> {
        super::mmap::map_sealed_file(&self.path(id)).map(PackBytes::Mapped)
    }

    fn size(&self, id: &PackId) -> Result<Option<u64>> {
        let path = self.path(id);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(path),
        }
    }

    fn list(&self) -> Result<Vec<PackInfo>> {
        let packs = &self.packs_dir;
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
                let Some(id) = fname
                    .strip_suffix(".pack")
                    .and_then(|hex| hex.parse::<ChunkId>().ok())
                else {
                    continue;
                };
                let meta = match f.metadata() {
                    Ok(m) => m,
                    // Deleted by a gc between the listing and the stat.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).at(f.path()),
                };
                let modified_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos() as i64);
                out.push(PackInfo {
                    id,
                    size: meta.len(),
                    modified_ns,
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, ids: &[PackId]) -> Result<()> {
        let mut dirs = BTreeSet::new();
        for id in ids {
            let path = self.path(id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(path),
            }
            self.forget(id);
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            crate::fsutil::sync_dir(dir)?;
        }
        Ok(())
    }

    fn location(&self, id: &PackId) -> String {
        self.path(id).display().to_string()
    }

    fn forget(&self, id: &PackId) {
        if let Ok(mut files) = self.files.lock() {
            files.remove(id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::read_ahead::RangeRead;

    fn read(pack: u8, offset: u64, len: u64) -> RangeRead {
        RangeRead {
            pack: xstore_chunker::ChunkId([pack; 32]),
            offset,
            len,
        }
    }

    #[test]
    fn reads_of_one_pack_close_together_are_advised_as_one_span_and_others_apart() {
        let near = 100 + WILL_NEED_GAP;
        let spans = will_need_spans(&[
            read(1, 0, 100),
            read(1, near, 50),     // within the gap of the first: one span
            read(1, near + 10, 5), // inside it
            read(1, near + 50 + WILL_NEED_GAP + 1, 10), // past the gap: a new span
            read(2, 0, 10),        // another pack
            read(1, 0, 10),        // back to pack 1: not merged backwards
        ]);
        let p = |n: u8| xstore_chunker::ChunkId([n; 32]);
        assert_eq!(
            spans,
            vec![
                (p(1), 0, near + 50),
                (
                    p(1),
                    near + 50 + WILL_NEED_GAP + 1,
                    near + 50 + WILL_NEED_GAP + 11
                ),
                (p(2), 0, 10),
                (p(1), 0, 10),
            ]
        );
        assert_eq!(will_need_spans(&[]), Vec::new());
    }
}
