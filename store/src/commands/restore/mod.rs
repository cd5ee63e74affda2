//! Restore: a snapshot (or one path of it) into a target directory, bit-exact with metadata.
//!
//! Safety (ARCHITECTURE.md invariants 6 and 15): every name was validated when its tree was decoded (no `..`, `/`, NUL),
//! and every path operation is relative to a directory descriptor. The target is reached from
//! `/` without following a symlink another user could have planted (`open_target`) and
//! opened once;
//! each directory below it is reached with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! (a walk of `openat(O_NOFOLLOW | O_DIRECTORY)` where the kernel lacks openat2), so a
//! directory that another user swaps for a symlink fails that path instead of leading out of
//! the target. Entries are created with `*at` calls in their parent's descriptor (files with
//! `O_EXCL | O_NOFOLLOW`), metadata goes through descriptors of what was created (checked to be
//! the same inode), directories are created 0700 and get their real mode last, and symlinks
//! from the snapshot are created after everything else, so nothing is written through one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags};

use rayon::prelude::*;

mod beneath;

use crate::error::{Error, IoContext, Result};
use crate::index::BlobLoc;
use crate::repo::{poisoned, Node, Repository};
use crate::ChunkId;
use crate::Progress;
use beneath::{apply_meta, errno_at, make_dir, owner_ids, times, Beneath};
use xstore_format::snapshot::{PathError, Snapshot};
use xstore_format::tree::{Entry, EntryKind};

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

impl Repository {
    fn plan(&self, rel: &Path, entry: &Entry, plan: &mut Plan) -> Result<()> {
        match entry.kind {
            EntryKind::Dir => {
                plan.dirs.push((rel.to_path_buf(), entry.clone()));
                if let Some(id) = entry.subtree() {
                    let tree = self.tree(&id)?;
                    for child in &tree.entries {
                        self.plan(&rel.join(OsStr::from_bytes(&child.name)), child, plan)?;
                    }
                }
            }
            EntryKind::File => {
                if entry.attrs.nlink > 1 {
                    let key = (entry.attrs.dev, entry.attrs.inode);
                    if let Some(first) = plan.first_of_inode.get(&key) {
                        plan.links.push((first.clone(), rel.to_path_buf()));
                        return Ok(());
                    }
                    plan.first_of_inode.insert(key, rel.to_path_buf());
                }
                plan.files.push((rel.to_path_buf(), entry.clone()));
            }
            EntryKind::Symlink => plan.symlinks.push((rel.to_path_buf(), entry.clone())),
            _ => plan.specials.push((rel.to_path_buf(), entry.clone())),
        }
        Ok(())
    }

    /// Restores `snapshot` (or `opts.path` of it) into `target`, creating `target` if needed.
    /// Per-path failures are collected in the summary; repository errors abort. Nothing is
    /// created, changed or removed outside `target`, whatever another user does inside it
    /// meanwhile (module documentation).
    pub fn restore(
        &self,
        snapshot: &Snapshot,
        target: &Path,
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        let owners = opts
            .owners
            .unwrap_or_else(|| rustix::process::geteuid().is_root());
        let beneath = Beneath::open(target)?;
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
                    self.plan(Path::new(OsStr::from_bytes(&child.name)), child, &mut plan)?;
                }
            }
            Node::Entry(e) => self.plan(Path::new(OsStr::from_bytes(&e.name)), e, &mut plan)?,
        }
        let errors = Mutex::new(Vec::new());
        let shown = |rel: &Path| target.join(rel);
        let fail = |rel: &Path, e: &dyn std::fmt::Display| {
            let path = shown(rel).display().to_string();
            // The path is said once: errors that name it already lose that prefix.
            let text = e.to_string();
            let message = text
                .strip_prefix(&format!("{path}: "))
                .map(str::to_string)
                .or_else(|| {
                    text.strip_prefix(&format!("restore refused {path}: "))
                        .map(|r| format!("refused: {r}"))
                })
                .unwrap_or(text);
            if let Ok(mut v) = errors.lock() {
                v.push(PathError { path, message });
            }
        };
        // Directories, parents first. One that cannot be made (something else is in its
        // place) fails with everything below it.
        let mut made: HashMap<&Path, (u64, u64)> = HashMap::new();
        for (rel, _) in &plan.dirs {
            let made_dir = beneath
                .parent(rel)
                .at(shown(rel))
                .and_then(|(parent, name)| make_dir(&parent, name, &shown(rel)));
            match made_dir {
                Ok(id) => {
                    made.insert(rel.as_path(), id);
                }
                Err(e) => fail(rel, &e),
            }
        }
        if let Some(p) = &opts.progress {
            p.total_bytes.store(
                plan.files.iter().map(|(_, e)| e.attrs.size).sum(),
                Ordering::Relaxed,
            );
        }
        // Every chunk's location, one batched lookup per file (a missing blob fails the restore
        // before anything is written); then pack-ordered reads: files sorted by the location
        // of their first chunk.
        let mut keyed = Vec::with_capacity(plan.files.len());
        for (rel, entry) in plan.files {
            let ids: Vec<ChunkId> = self.file_chunks(&entry)?.iter().map(|c| c.id).collect();
            let mut located = Vec::with_capacity(ids.len());
            for (id, loc) in ids.iter().zip(self.index.blobs(&ids)?) {
                located.push((*id, loc.ok_or(Error::MissingBlob(*id))?));
            }
            let key = located.first().map(|(_, l)| (l.pack, l.offset));
            keyed.push((key, rel, entry, located));
        }
        keyed.sort_by_key(|k| k.0);
        let written: Vec<Result<Option<u64>>> = keyed
            .par_iter()
            .map(|(_, rel, entry, chunks)| {
                let progress = opts.progress.as_deref();
                match self.restore_file(&beneath, rel, &shown(rel), entry, chunks, owners, progress)
                {
                    Ok(n) => Ok(Some(n)),
                    Err(
                        e @ (Error::MissingBlob(_)
                        | Error::CorruptBlob { .. }
                        | Error::Index { .. }),
                    ) => Err(e),
                    Err(e) => {
                        fail(rel, &e);
                        Ok(None)
                    }
                }
            })
            .collect();
        let mut summary = RestoreSummary::default();
        for w in written {
            if let Some(n) = w? {
                summary.bytes += n;
                summary.files += 1;
            }
        }
        for (first, link) in &plan.links {
            let r = (|| -> Result<()> {
                let (from_dir, from_name) = beneath.parent(first).at(shown(first))?;
                let (to_dir, to_name) = beneath.make_room(link, &shown(link))?;
                // Flags 0: a symlink swapped in for `first` is linked itself, never followed.
                rustix::fs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())
                    .map_err(std::io::Error::from)
                    .at(shown(link))
            })();
            match r {
                Ok(()) => summary.others += 1,
                Err(e) => fail(link, &e),
            }
        }
        for (rel, entry) in &plan.specials {
            match restore_special(&beneath, rel, &shown(rel), entry, owners) {
                Ok(()) => summary.others += 1,
                Err(e) => fail(rel, &e),
            }
        }
        for (rel, entry) in &plan.symlinks {
            match restore_symlink(&beneath, rel, &shown(rel), entry, owners) {
                Ok(()) => summary.others += 1,
                Err(e) => fail(rel, &e),
            }
        }
        // Directory metadata last, deepest first, so creating children does not touch mtimes;
        // only on the directory this restore made or checked (same inode).
        for (rel, entry) in plan.dirs.iter().rev() {
            let Some(want) = made.get(rel.as_path()) else {
                continue;
            };
            let r = (|| -> Result<()> {
                let fd = beneath.dir(rel).at(shown(rel))?;
                let st = rustix::fs::fstat(&fd)
                    .map_err(std::io::Error::from)
                    .at(shown(rel))?;
                if (st.st_dev as u64, st.st_ino as u64) != *want {
                    return Err(Error::Unsafe {
                        path: shown(rel),
                        reason: "replaced by another directory during the restore; its metadata was not applied".into(),
                    });
                }
                apply_meta(&fd, &shown(rel), entry, owners)
            })();
            match r {
                Ok(()) => summary.dirs += 1,
                Err(e) => fail(rel, &e),
            }
        }
        summary.errors = errors.into_inner().map_err(poisoned)?;
        Ok(summary)
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_file(
        &self,
        beneath: &Beneath,
        rel: &Path,
        path: &Path,
        entry: &Entry,
        chunks: &[(ChunkId, BlobLoc)],
        owners: bool,
        progress: Option<&Progress>,
    ) -> Result<u64> {
        let (parent, name) = beneath.make_room(rel, path)?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(std::io::Error::from)
        .at(path)?;
        let mut f = File::from(fd);
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

/// An `O_PATH` descriptor of the entry just created at `name`, checked to be of `kind`: the
/// metadata of devices, fifos and symlinks goes through it (they must not be opened for
/// I/O), so an entry swapped in by another user is never the one changed.
fn open_created(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    kind: rustix::fs::FileType,
) -> Result<OwnedFd> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .at(path)?;
    let st = rustix::fs::fstat(&fd)
        .map_err(std::io::Error::from)
        .at(path)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != kind {
        return Err(Error::Unsafe {
            path: path.to_path_buf(),
            reason: "replaced during the restore; its metadata was not applied".into(),
        });
    }
    Ok(fd)
}

/// `/proc/self/fd/N`: names exactly the inode of an `O_PATH` descriptor, for the calls
/// (chmod, setxattr, utimensat) that take no such descriptor.
fn proc_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn restore_symlink(
    beneath: &Beneath,
    rel: &Path,
    path: &Path,
    entry: &Entry,
    owners: bool,
) -> Result<()> {
    let target = match &entry.content {
        xstore_format::tree::Content::Target(t) => t,
        _ => return Ok(()),
    };
    let (parent, name) = beneath.make_room(rel, path)?;
    let io = errno_at(path);
    rustix::fs::symlinkat(OsStr::from_bytes(target), &parent, name).map_err(io)?;
    if owners {
        let fd = open_created(&parent, name, path, rustix::fs::FileType::Symlink)?;
        let (u, g) = owner_ids(entry);
        rustix::fs::chownat(&fd, "", u, g, AtFlags::EMPTY_PATH).map_err(io)?;
    }
    // Symlinks have no mode of their own and, on Linux, no user xattrs. Their times are set
    // by name without following: at worst on an entry another user put there.
    rustix::fs::utimensat(&parent, name, &times(entry), AtFlags::SYMLINK_NOFOLLOW).map_err(io)
}

fn restore_special(
    beneath: &Beneath,
    rel: &Path,
    path: &Path,
    entry: &Entry,
    owners: bool,
) -> Result<()> {
    use rustix::fs::FileType;
    let (parent, name) = beneath.make_room(rel, path)?;
    let (ft, dev) = match entry.kind {
        EntryKind::Fifo => (FileType::Fifo, 0),
        EntryKind::CharDevice => (FileType::CharacterDevice, entry.attrs.rdev),
        EntryKind::BlockDevice => (FileType::BlockDevice, entry.attrs.rdev),
        _ => return Ok(()),
    };
    let io = errno_at(path);
    rustix::fs::mknodat(&parent, name, ft, Mode::from_raw_mode(0o600), dev).map_err(io)?;
    let fd = open_created(&parent, name, path, ft)?;
    if owners {
        let (u, g) = owner_ids(entry);
        rustix::fs::chownat(&fd, "", u, g, AtFlags::EMPTY_PATH).map_err(io)?;
    }
    let exact = proc_path(&fd);
    rustix::fs::chmod(&exact, Mode::from_raw_mode(entry.attrs.mode)).map_err(io)?;
    for (k, v) in &entry.xattrs {
        rustix::fs::setxattr(
            &exact,
            OsStr::from_bytes(k),
            v,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(io)?;
    }
    rustix::fs::utimensat(rustix::fs::CWD, &exact, &times(entry), AtFlags::empty()).map_err(io)
}
