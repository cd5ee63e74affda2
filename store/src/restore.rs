//! Restore: a snapshot (or one path of it) into a target directory, bit-exact with metadata.
//!
//! Safety: every name was validated when its tree was decoded (no `..`, `/`, NUL); directories
//! are created by us and checked not to be symlinks; files are created with O_EXCL|O_NOFOLLOW;
//! symlinks from the snapshot are created last, so nothing is ever written through one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::index::BlobLoc;
use crate::repo::{poisoned, Node, Repository};
use crate::snapshot::{PathError, Snapshot};
use crate::tree::{Entry, EntryKind};
use crate::ChunkId;
use crate::Progress;

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only this path of the snapshot (e.g. `/etc/ssh`); its last component is
    /// created inside the target. `None` restores everything.
    pub path: Option<String>,
    /// Set numeric owners (needs root). `None`: when running as root.
    pub owners: Option<bool>,
    /// Live counters for a progress display (`total_bytes` is set first).
    pub progress: Option<Arc<Progress>>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks, devices, fifos and hard links created.
    pub others: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Paths that could not be restored.
    pub errors: Vec<PathError>,
}

struct Plan {
    dirs: Vec<(PathBuf, Entry)>,
    files: Vec<(PathBuf, Entry)>,
    links: Vec<(PathBuf, PathBuf)>,
    specials: Vec<(PathBuf, Entry)>,
    symlinks: Vec<(PathBuf, Entry)>,
    first_of_inode: HashMap<(u64, u64), PathBuf>,
}

fn to_time(ns: i64) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn timespec(ns: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

/// Creates a directory we own, refusing to reuse anything that is not a real directory.
fn make_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = fs::symlink_metadata(path).at(path)?;
            if m.file_type().is_dir() {
                Ok(())
            } else {
                Err(Error::Unsafe {
                    path: path.to_path_buf(),
                    reason: "exists and is not a directory (symlinks are never followed)".into(),
                })
            }
        }
        Err(e) => Err(e).at(path),
    }
}

/// Removes a non-directory that is in the way of a restored entry.
fn clear_path(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Err(Error::Unsafe {
            path: path.to_path_buf(),
            reason: "a directory is in the way".into(),
        }),
        Ok(_) => fs::remove_file(path).at(path),
        Err(_) => Ok(()),
    }
}

impl Repository {
    fn plan(&self, node_path: &Path, entry: &Entry, plan: &mut Plan) -> Result<()> {
        match entry.kind {
            EntryKind::Dir => {
                plan.dirs.push((node_path.to_path_buf(), entry.clone()));
                if let Some(id) = entry.subtree() {
                    let tree = self.tree(&id)?;
                    for child in &tree.entries {
                        self.plan(&node_path.join(OsStr::from_bytes(&child.name)), child, plan)?;
                    }
                }
            }
            EntryKind::File => {
                if entry.nlink > 1 {
                    let key = (entry.dev, entry.inode);
                    if let Some(first) = plan.first_of_inode.get(&key) {
                        plan.links.push((first.clone(), node_path.to_path_buf()));
                        return Ok(());
                    }
                    plan.first_of_inode.insert(key, node_path.to_path_buf());
                }
                plan.files.push((node_path.to_path_buf(), entry.clone()));
            }
            EntryKind::Symlink => plan.symlinks.push((node_path.to_path_buf(), entry.clone())),
            _ => plan.specials.push((node_path.to_path_buf(), entry.clone())),
        }
        Ok(())
    }

    /// Restores `snapshot` (or `opts.path` of it) into `target`, creating `target` if needed.
    /// Per-path failures are collected in the summary; repository errors abort.
    pub fn restore(
        &self,
        snapshot: &Snapshot,
        target: &Path,
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        let owners = opts
            .owners
            .unwrap_or_else(|| rustix::process::geteuid().is_root());
        fs::create_dir_all(target).at(target)?;
        let mut plan = Plan {
            dirs: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
            specials: Vec::new(),
            symlinks: Vec::new(),
            first_of_inode: HashMap::new(),
        };
        let node = self.lookup(snapshot, opts.path.as_deref().unwrap_or("/"))?;
        match &node {
            Node::Root(id) => {
                for child in &self.tree(id)?.entries {
                    self.plan(
                        &target.join(OsStr::from_bytes(&child.name)),
                        child,
                        &mut plan,
                    )?;
                }
            }
            Node::Entry(e) => self.plan(&target.join(OsStr::from_bytes(&e.name)), e, &mut plan)?,
        }
        let errors = Mutex::new(Vec::new());
        let fail = |path: &Path, e: &dyn std::fmt::Display| {
            if let Ok(mut v) = errors.lock() {
                v.push(PathError {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        for (path, _) in &plan.dirs {
            make_dir(path)?;
        }
        if let Some(p) = &opts.progress {
            p.total_bytes.store(
                plan.files.iter().map(|(_, e)| e.size).sum(),
                Ordering::Relaxed,
            );
        }
        // Every chunk's location, one batched lookup per file (a missing blob fails the restore
        // before anything is written); then pack-ordered reads: files sorted by the location
        // of their first chunk.
        let mut keyed = Vec::with_capacity(plan.files.len());
        for (path, entry) in plan.files {
            let ids: Vec<ChunkId> = self.file_chunks(&entry)?.iter().map(|c| c.id).collect();
            let mut located = Vec::with_capacity(ids.len());
            for (id, loc) in ids.iter().zip(self.index.blobs(&ids)?) {
                located.push((*id, loc.ok_or(Error::MissingBlob(*id))?));
            }
            let key = located.first().map(|(_, l)| (l.pack, l.offset));
            keyed.push((key, path, entry, located));
        }
        keyed.sort_by_key(|k| k.0);
        let written: Vec<Result<u64>> = keyed
            .par_iter()
            .map(|(_, path, entry, chunks)| {
                match self.restore_file(path, entry, chunks, owners, opts.progress.as_deref()) {
                    Ok(n) => Ok(n),
                    Err(
                        e @ (Error::MissingBlob(_)
                        | Error::CorruptBlob { .. }
                        | Error::Index { .. }),
                    ) => Err(e),
                    Err(e) => {
                        fail(path, &e);
                        Ok(0)
                    }
                }
            })
            .collect();
        let mut summary = RestoreSummary::default();
        for w in written {
            summary.bytes += w?;
        }
        summary.files = keyed.len() as u64;
        for (first, link) in &plan.links {
            let r = clear_path(link).and_then(|_| fs::hard_link(first, link).at(link));
            match r {
                Ok(()) => summary.others += 1,
                Err(e) => fail(link, &e),
            }
        }
        for (path, entry) in &plan.specials {
            match restore_special(path, entry, owners) {
                Ok(()) => summary.others += 1,
                Err(e) => fail(path, &e),
            }
        }
        for (path, entry) in &plan.symlinks {
            match restore_symlink(path, entry, owners) {
                Ok(()) => summary.others += 1,
                Err(e) => fail(path, &e),
            }
        }
        // Directory metadata last, deepest first, so creating children does not touch mtimes.
        for (path, entry) in plan.dirs.iter().rev() {
            match File::open(path)
                .at(path)
                .and_then(|f| apply_meta(&f, path, entry, owners))
            {
                Ok(()) => summary.dirs += 1,
                Err(e) => fail(path, &e),
            }
        }
        summary.errors = errors.into_inner().map_err(poisoned)?;
        Ok(summary)
    }

    fn restore_file(
        &self,
        path: &Path,
        entry: &Entry,
        chunks: &[(ChunkId, BlobLoc)],
        owners: bool,
        progress: Option<&Progress>,
    ) -> Result<u64> {
        clear_path(path)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .mode(0o600)
            .open(path)
            .at(path)?;
        let mut written = 0u64;
        for (id, loc) in chunks {
            let data = self.read_located(id, loc)?;
            write_sparse(&mut f, &data).at(path)?;
            written += data.len() as u64;
            if let Some(p) = progress {
                p.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        f.set_len(written).at(path)?;
        apply_meta(&f, path, entry, owners)?;
        if let Some(p) = progress {
            p.files.fetch_add(1, Ordering::Relaxed);
        }
        Ok(written)
    }
}

/// Writes `data` at the current position, seeking over all-zero 4 KiB blocks instead of
/// writing them, so sparse files stay sparse (as `cp --sparse=auto` does).
fn write_sparse(f: &mut File, data: &[u8]) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    let mut i = 0;
    while i < data.len() {
        let end = (i + BLOCK).min(data.len());
        if zero(&data[i..end]) {
            f.seek(SeekFrom::Current((end - i) as i64))?;
            i = end;
            continue;
        }
        let mut j = end;
        while j < data.len() {
            let next = (j + BLOCK).min(data.len());
            if zero(&data[j..next]) {
                break;
            }
            j = next;
        }
        f.write_all(&data[i..j])?;
        i = j;
    }
    Ok(())
}

/// Owner, mode, xattrs and times of an open file or directory, in that order (chown clears
/// setuid bits, so mode comes after it; times come last).
fn apply_meta(f: &File, path: &Path, entry: &Entry, owners: bool) -> Result<()> {
    if owners {
        std::os::unix::fs::fchown(f, Some(entry.uid), Some(entry.gid)).at(path)?;
    }
    f.set_permissions(fs::Permissions::from_mode(entry.mode))
        .at(path)?;
    for (k, v) in &entry.xattrs {
        rustix::fs::fsetxattr(f, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty())
            .map_err(std::io::Error::from)
            .at(path)?;
    }
    let t = to_time(entry.mtime_ns);
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .at(path)?;
    Ok(())
}

/// Owner, xattrs and times by path, never following a symlink (for symlinks, fifos and
/// devices, which must not be opened). Symlinks have no mode of their own and, on Linux, no
/// user xattrs; their xattrs are skipped.
fn apply_meta_by_path(path: &Path, entry: &Entry, owners: bool) -> Result<()> {
    if owners {
        std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid)).at(path)?;
    }
    if entry.kind != EntryKind::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(entry.mode)).at(path)?;
        for (k, v) in &entry.xattrs {
            rustix::fs::lsetxattr(
                path,
                OsStr::from_bytes(k),
                v,
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(std::io::Error::from)
            .at(path)?;
        }
    }
    let ts = rustix::fs::Timestamps {
        last_access: timespec(entry.mtime_ns),
        last_modification: timespec(entry.mtime_ns),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
    .at(path)
}

fn restore_symlink(path: &Path, entry: &Entry, owners: bool) -> Result<()> {
    let target = match &entry.content {
        crate::tree::Content::Target(t) => t,
        _ => return Ok(()),
    };
    clear_path(path)?;
    std::os::unix::fs::symlink(OsStr::from_bytes(target), path).at(path)?;
    apply_meta_by_path(path, entry, owners)
}

fn restore_special(path: &Path, entry: &Entry, owners: bool) -> Result<()> {
    use rustix::fs::{FileType, Mode};
    clear_path(path)?;
    let (ft, dev) = match entry.kind {
        EntryKind::Fifo => (FileType::Fifo, 0),
        EntryKind::CharDevice => (FileType::CharacterDevice, entry.rdev),
        EntryKind::BlockDevice => (FileType::BlockDevice, entry.rdev),
        _ => return Ok(()),
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        ft,
        Mode::from_raw_mode(entry.mode),
        dev,
    )
    .map_err(std::io::Error::from)
    .at(path)?;
    apply_meta_by_path(path, entry, owners)
}
