//! The FUSE front end of [`crate::fsview::FsView`]: a read-only mount (`fuser`, without
//! libfuse; mounting uses the `fusermount3` helper). Every write or metadata change fails
//! with EROFS, both because the mount is `ro` and because every such request is refused here.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};

use crate::fsview::{DirItem, FsError, FsView, NodeAttr};
use xstore_format::meta::EntryKind;

/// Snapshot contents never change: the kernel may cache them for long.
const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);
/// Tier and host directories change when tiers rotate.
const CATALOG_TTL: Duration = Duration::from_secs(1);

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Let other users than the one mounting read the mount (needs `user_allow_other` in
    /// /etc/fuse.conf unless root).
    pub allow_other: bool,
}

/// A running mount; dropping it unmounts.
pub struct Mount {
    session: fuser::BackgroundSession,
    at: std::path::PathBuf,
}

impl Mount {
    /// Whether the filesystem is still mounted (false once someone ran `fusermount -u`).
    pub fn is_mounted(&self) -> bool {
        !self.session.guard.is_finished()
    }

    /// Unmounts, as libfuse does on SIGINT: a lazy unmount (`fusermount3 -u -z`) detaches
    /// the mount even while files in it are open. The session ends when the last of them
    /// closes, or when this process exits (which aborts the connection: open files then
    /// fail with ENOTCONN). Waits up to `grace` for the session to end.
    pub fn unmount(self, grace: Duration) {
        if !self.is_mounted() {
            // Unmounted from outside (`fusermount3 -u`): nothing is left to unmount, and
            // fuser's own unmount would fail (EINVAL) and log it as an error. What remains
            // is one /dev/fuse descriptor, closed when the process exits.
            std::mem::forget(self.session);
            return;
        }
        let detached = self.is_mounted()
            && ["fusermount3", "fusermount"].iter().any(|helper| {
                std::process::Command::new(helper)
                    .args(["-u", "-z", "-q", "--"])
                    .arg(&self.at)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
        if !detached {
            // Already gone, or no helper: fuser's own unmount (root: umount2).
            self.session.join();
            return;
        }
        let deadline = std::time::Instant::now() + grace;
        while self.is_mounted() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.is_mounted() {
            tracing::warn!(
                "{}: files are still open; they fail once this process exits",
                self.at.display()
            );
        }
        // Detached already: joining would unmount a second time (and wait for open files).
        // What remains is one /dev/fuse descriptor, closed when the process exits.
        std::mem::forget(self.session);
    }
}

/// Mounts `view` at `mountpoint` in a background thread.
pub fn mount(view: FsView, mountpoint: &Path, opts: &MountOptions) -> xstore::Result<Mount> {
    let mut options = vec![
        MountOption::RO,
        MountOption::FSName("xstore".into()),
        MountOption::Subtype("xstore".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.allow_other {
        options.push(MountOption::AllowOther);
    }
    let fs = Fuse {
        view,
        open_dirs: std::collections::HashMap::new(),
        next_fh: 1,
    };
    let session = fuser::spawn_mount2(fs, mountpoint, &options).map_err(|e| xstore::Error::Io {
        path: mountpoint.to_path_buf(),
        source: e,
    })?;
    Ok(Mount {
        session,
        at: mountpoint.to_path_buf(),
    })
}

struct Fuse {
    view: FsView,
    /// Listings of open directories, taken at opendir: a large directory is listed once,
    /// not once per readdir call (the kernel reads a few KiB of entries per call).
    open_dirs: std::collections::HashMap<u64, Vec<DirItem>>,
    next_fh: u64,
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
    }
}

fn attr(a: &NodeAttr) -> (Duration, FileAttr) {
    let ttl = if a.immutable {
        IMMUTABLE_TTL
    } else {
        CATALOG_TTL
    };
    (
        ttl,
        FileAttr {
            ino: a.ino,
            size: a.attrs.size,
            blocks: a.attrs.size.div_ceil(512),
            atime: time(a.attrs.mtime_ns),
            mtime: time(a.attrs.mtime_ns),
            ctime: time(a.attrs.ctime_ns),
            crtime: time(a.attrs.mtime_ns),
            kind: file_type(a.kind),
            perm: (a.attrs.mode & 0o7777) as u16,
            nlink: u32::try_from(a.attrs.nlink).unwrap_or(u32::MAX),
            uid: a.attrs.uid,
            gid: a.attrs.gid,
            // The kernel's old 32-bit encoding: major in bits 8-19, minor in 0-7 and 20-31.
            rdev: u32::try_from(a.attrs.rdev).unwrap_or(0),
            blksize: 4096,
            flags: 0,
        },
    )
}

fn name_bytes(name: &OsStr) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes()
}

fn errno(e: &FsError) -> i32 {
    if let FsError::Repo(err) = e {
        tracing::warn!("mount: {err}");
    }
    e.errno()
}

impl Filesystem for Fuse {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.view.lookup(parent, name_bytes(name)) {
            Ok(a) => {
                let (ttl, fa) = attr(&a);
                reply.entry(&ttl, &fa, 0);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.view.getattr(ino) {
            Ok(a) => {
                let (ttl, fa) = attr(&a);
                reply.attr(&ttl, &fa);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.view.readlink(ino) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match self.view.check_open(ino, flags) {
            // Snapshot files never change: let the page cache keep them across opens.
            Ok(()) => reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(libc::EINVAL);
            return;
        };
        match self.view.read(ino, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.view.readdir(ino) {
            Ok(items) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.open_dirs.insert(fh, items);
                reply.opened(fh, 0);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.open_dirs.remove(&fh);
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(items) = self.open_dirs.get(&fh) else {
            reply.error(libc::EBADF);
            return;
        };
        let parent = self.view.parent(ino).unwrap_or(ino);
        let dots = [
            (ino, FileType::Directory, OsStr::new(".")),
            (parent, FileType::Directory, OsStr::new("..")),
        ];
        use std::os::unix::ffi::OsStrExt;
        let all = dots.into_iter().chain(items.iter().map(|i| {
            (
                i.attr.ino,
                file_type(i.attr.kind),
                OsStr::from_bytes(&i.name),
            )
        }));
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, (child, kind, name)) in all.enumerate().skip(skip) {
            // The offset of an entry is the position of the next one.
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let xattrs = match self.view.xattrs(ino) {
            Ok(x) => x,
            Err(e) => {
                reply.error(errno(&e));
                return;
            }
        };
        match xattrs
            .iter()
            .find(|(n, _)| n.as_slice() == name_bytes(name))
        {
            None => reply.error(libc::ENODATA),
            Some((_, v)) if size == 0 => reply.size(v.len() as u32),
            Some((_, v)) if v.len() > size as usize => reply.error(libc::ERANGE),
            Some((_, v)) => reply.data(v),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let xattrs = match self.view.xattrs(ino) {
            Ok(x) => x,
            Err(e) => {
                reply.error(errno(&e));
                return;
            }
        };
        let mut list = Vec::new();
        for (n, _) in &xattrs {
            list.extend_from_slice(n);
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32);
        } else if list.len() > size as usize {
            reply.error(libc::ERANGE);
        } else {
            reply.data(&list);
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, mask: i32, reply: ReplyEmpty) {
        if mask & libc::W_OK != 0 {
            reply.error(libc::EROFS);
            return;
        }
        match self.view.getattr(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Everything that would change the filesystem: EROFS.

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        reply.error(libc::EROFS);
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(libc::EROFS);
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(libc::EROFS);
    }

    fn unlink(&mut self, _req: &Request<'_>, _parent: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }

    fn rmdir(&mut self, _req: &Request<'_>, _parent: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(libc::EROFS);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _newparent: u64,
        _newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::EROFS);
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _newparent: u64,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(libc::EROFS);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        reply.error(libc::EROFS);
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(libc::EROFS);
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::EROFS);
    }

    fn removexattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }
}
