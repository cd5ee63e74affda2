//! Writing into a directory other users may control, as restore and dump do: the target,
//! reached from `/` without following a symlink another user could have planted, descriptors
//! of directories beneath it (never through a symlink), and metadata applied through
//! descriptors of what was created or checked.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::error::{Error, IoContext, Result};
use xstore_format::tree::Entry;

pub(crate) fn timespec(ns: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

/// The restore target and descriptors of directories beneath it.
pub(crate) struct Beneath {
    root: OwnedFd,
    /// Whether a directory in the way of a restored non-directory is removed with all it
    /// holds (`--delete`) instead of failing that path.
    pub(crate) remove_dirs_in_way: bool,
    /// Whether `openat2` works here (Linux ≥ 5.6; probed on first use).
    openat2: std::sync::atomic::AtomicBool,
}

pub(crate) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Beneath {
    /// Opens (creating what is missing) the target directory with [`open_target`].
    pub(crate) fn open(target: &Path) -> Result<Self> {
        Ok(Beneath {
            root: open_target(target, true)?,
            remove_dirs_in_way: false,
            openat2: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// As [`Beneath::open`] for a target that exists, creating nothing (a dry run): `None`
    /// when it is missing.
    pub(crate) fn open_existing(target: &Path) -> Result<Option<Self>> {
        match open_target(target, false) {
            Ok(root) => Ok(Some(Beneath {
                root,
                remove_dirs_in_way: false,
                openat2: std::sync::atomic::AtomicBool::new(true),
            })),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The directory at `rel` (relative to the target), never through a symlink.
    pub(crate) fn dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(rustix::fs::openat(
                &self.root,
                ".",
                dir_flags(),
                Mode::empty(),
            )?);
        }
        if self.openat2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root, rel, dir_flags(), Mode::empty(), resolve) {
                Err(rustix::io::Errno::NOSYS) => self.openat2.store(false, Ordering::Relaxed),
                other => return Ok(other?),
            }
        }
        let mut fd = rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty())?;
        for part in rel.components() {
            fd = rustix::fs::openat(&fd, part.as_os_str(), dir_flags(), Mode::empty())?;
        }
        Ok(fd)
    }

    /// The parent directory of `rel` and its last name, with whatever non-directory stood
    /// there removed: the place where restore creates `rel` next.
    pub(crate) fn make_room<'p>(
        &self,
        rel: &'p Path,
        shown: &Path,
    ) -> Result<(OwnedFd, &'p OsStr)> {
        let (parent, name) = self.parent(rel).at(shown)?;
        clear_name(&parent, name, shown, self.remove_dirs_in_way)?;
        Ok((parent, name))
    }

    /// The parent directory of `rel` and `rel`'s last name.
    pub(crate) fn parent<'p>(&self, rel: &'p Path) -> std::io::Result<(OwnedFd, &'p OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| std::io::Error::other("empty name"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent)?, name))
    }
}

/// Symlinks followed on the way to a target, at most (as the kernel's `MAXSYMLINKS`).
const MAX_TARGET_SYMLINKS: usize = 40;

/// Walks to the restore target from `/` one component at a time (`O_NOFOLLOW`), creating
/// missing directories. A symlink on the way is followed only when it stands in a directory
/// that no other user can write (owned by root or by us, not group- or world-writable): a
/// customer who owns a directory on the target's path can swap an entry there for a symlink
/// to `/etc`, and the restore must then refuse instead of following it.
pub(crate) fn open_target(target: &Path, create: bool) -> Result<OwnedFd> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;
    let unsafe_path = |reason: String| Error::Unsafe {
        path: target.to_path_buf(),
        reason,
    };
    let io = errno_at(target);
    let absolute = if target.is_absolute() {
        target.to_path_buf()
    } else {
        std::env::current_dir().at(target)?.join(target)
    };
    let root = || rustix::fs::open("/", dir_flags(), Mode::empty());
    let mut fd = root().map_err(io)?;
    let mut queue: VecDeque<OsString> = absolute
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let me = rustix::process::geteuid().as_raw();
    let mut followed = 0usize;
    while let Some(name) = queue.pop_front() {
        match rustix::fs::openat(&fd, name.as_os_str(), dir_flags(), Mode::empty()) {
            Ok(next) => {
                fd = next;
                continue;
            }
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&fd, name.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(io(e)),
                }
                fd = rustix::fs::openat(&fd, name.as_os_str(), dir_flags(), Mode::empty())
                    .map_err(io)?;
                continue;
            }
            Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {}
            Err(e) => return Err(io(e)),
        }
        let st =
            rustix::fs::statat(&fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Symlink {
            return Err(unsafe_path(format!(
                "{} is not a directory",
                name.to_string_lossy()
            )));
        }
        let dir = rustix::fs::fstat(&fd).map_err(io)?;
        let trusted = (dir.st_uid == 0 || dir.st_uid == me) && dir.st_mode & 0o022 == 0;
        if !trusted {
            return Err(unsafe_path(format!(
                "{} is a symlink in a directory that other users can change; give the target \
                 without it",
                name.to_string_lossy()
            )));
        }
        followed += 1;
        if followed > MAX_TARGET_SYMLINKS {
            return Err(unsafe_path("too many symlinks on the way".into()));
        }
        let link = rustix::fs::readlinkat(&fd, name.as_os_str(), Vec::new()).map_err(io)?;
        let link = PathBuf::from(OsStr::from_bytes(link.as_bytes()));
        if link.is_absolute() {
            fd = root().map_err(io)?;
        }
        for part in link
            .components()
            .rev()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        {
            queue.push_front(part.as_os_str().to_os_string());
        }
    }
    Ok(fd)
}

pub(crate) fn is_dir(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
}

/// A directory [`make_dir`] made or found.
pub(crate) struct MadeDir {
    /// Its (device, inode), to recognise it when its metadata is applied.
    pub(crate) id: (u64, u64),
    /// This call created it (nothing stood there).
    pub(crate) created: bool,
    /// Its group. A file created in it takes this group (set-group-ID directory, `grpid`
    /// mount) or ours; when the two are equal the new file's group is known without a stat.
    pub(crate) gid: u32,
}

/// Creates directory `name` in `parent` (0700 until its metadata is applied last), or
/// reuses a real directory there; a non-directory in its place is removed first when
/// `replace`, else the path fails. Returns its (dev, inode) for the metadata pass and whether
/// this call created it.
pub(crate) fn make_dir(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    replace: bool,
) -> Result<MadeDir> {
    let mut created = false;
    for attempt in 0..2 {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => created = true,
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(std::io::Error::from(e)).at(path),
        }
        match rustix::fs::openat(parent, name, dir_flags(), Mode::empty()) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)
                    .map_err(std::io::Error::from)
                    .at(path)?;
                return Ok(MadeDir {
                    id: (st.st_dev as u64, st.st_ino as u64),
                    created,
                    gid: st.st_gid,
                });
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) if replace && attempt == 0 => {
                clear_name(parent, name, path, false)?;
            }
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(Error::Unsafe {
                    path: path.to_path_buf(),
                    reason: "exists and is not a directory (symlinks are never followed)".into(),
                })
            }
            Err(e) => return Err(std::io::Error::from(e)).at(path),
        }
    }
    Err(Error::Unsafe {
        path: path.to_path_buf(),
        reason: "replaced by something else during the restore".into(),
    })
}

/// Removes a non-directory that is in the way of a restored entry (never following it); a
/// directory, with everything in it, only when `remove_dirs`.
pub(crate) fn clear_name(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    remove_dirs: bool,
) -> Result<()> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if is_dir(&st) && remove_dirs => remove_tree(parent, name).map(|_| ()).at(path),
        Ok(st) if is_dir(&st) => Err(Error::Unsafe {
            path: path.to_path_buf(),
            reason: "a directory is in the way".into(),
        }),
        // unlinkat without AT_REMOVEDIR refuses a directory swapped in meanwhile.
        Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
            .map_err(std::io::Error::from)
            .at(path),
        Err(_) => Ok(()),
    }
}

/// Maps a failed `*at` call to the library's error for `path`.
pub(crate) fn errno_at(path: &Path) -> impl Fn(rustix::io::Errno) -> Error + Copy + '_ {
    move |e| Error::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

pub(crate) fn owner_ids(entry: &Entry) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        Some(rustix::fs::Uid::from_raw(entry.attrs.uid)),
        Some(rustix::fs::Gid::from_raw(entry.attrs.gid)),
    )
}

pub(crate) fn times(entry: &Entry) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: timespec(entry.attrs.mtime_ns),
        last_modification: timespec(entry.attrs.mtime_ns),
    }
}

/// Owner (when `chown`), mode, xattrs and times of an open file or directory, in that order
/// (chown clears setuid bits, so mode comes after it; times come last).
pub(crate) fn apply_meta(fd: &impl AsFd, path: &Path, entry: &Entry, chown: bool) -> Result<()> {
    let io = errno_at(path);
    if chown {
        let (u, g) = owner_ids(entry);
        rustix::fs::fchown(fd, u, g).map_err(io)?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(entry.attrs.mode)).map_err(io)?;
    for (k, v) in &entry.xattrs {
        rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty())
            .map_err(io)?;
    }
    rustix::fs::futimens(fd, &times(entry)).map_err(io)
}

/// Removes `name` from `parent`, and for a directory everything in it, never following a
/// symlink (one is removed itself). Iterative, so a deep tree cannot exhaust the stack.
/// Returns the number of entries removed.
pub(crate) fn remove_tree(parent: &OwnedFd, name: &OsStr) -> std::io::Result<u64> {
    let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if !is_dir(&st) {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
        return Ok(1);
    }
    let mut removed = 0u64;
    // Directories being emptied, outermost first, with their names in their parents.
    let mut stack: Vec<(OwnedFd, OsString)> = vec![(open_dir(parent, name)?, name.to_owned())];
    while let Some((dir, _)) = stack.last() {
        let mut subdir = None;
        for item in rustix::fs::Dir::read_from(dir)? {
            let item = item?;
            let child = OsStr::from_bytes(item.file_name().to_bytes());
            if child == "." || child == ".." {
                continue;
            }
            let child_is_dir = match item.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(dir, child, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| is_dir(&st)),
                _ => false,
            };
            if child_is_dir {
                subdir = Some(child.to_owned());
                break;
            }
            rustix::fs::unlinkat(dir, child, AtFlags::empty())?;
            removed += 1;
        }
        match subdir {
            Some(child) => match open_dir(dir, &child) {
                Ok(fd) => stack.push((fd, child)),
                // Swapped for something else since the listing: removed as it is now.
                Err(e) if is_not_dir(&e) => {
                    rustix::fs::unlinkat(dir, &child, AtFlags::empty())?;
                    removed += 1;
                }
                Err(e) => return Err(e),
            },
            None => {
                let (emptied, child) = stack.pop().ok_or_else(|| std::io::Error::other("empty"))?;
                drop(emptied);
                let holder = stack.last().map_or(parent, |(fd, _)| fd);
                rustix::fs::unlinkat(holder, &child, AtFlags::REMOVEDIR)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn open_dir(parent: &OwnedFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        dir_flags(),
        Mode::empty(),
    )?)
}

fn is_not_dir(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP))
}
