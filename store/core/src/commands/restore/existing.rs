//! Restoring into a tree that exists (restic's `--overwrite` semantics): what is already at a
//! file's place is compared with the snapshot's file before anything is written, and with
//! `--delete` what the snapshot does not have is removed. Every look and every removal goes
//! through descriptors beneath the target, never through a symlink.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use xstore_format::tree::{ChunkRef, Entry};

/// What restore does with an entry that already exists at a path it restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace it unless it is a regular file whose content already equals the snapshot's
    /// (checked by hashing it at the snapshot's chunk boundaries); metadata is reapplied.
    #[default]
    Always,
    /// As `Always`, but a regular file of the snapshot's size and mtime counts as equal
    /// without being read.
    IfChanged,
    /// Leave every existing entry as it is (content and metadata); create only what is missing.
    Never,
}

/// What stands at a file's place.
pub(super) enum Existing {
    /// Nothing.
    Missing,
    /// A regular file with the snapshot's size, mtime, mode and owner, and no xattrs to set,
    /// under `IfChanged`: nothing to do, and it was not even opened.
    Unchanged,
    /// A regular file with the snapshot's content, open read-only for its metadata.
    Same(OwnedFd),
    /// Something else: it is replaced.
    Differs,
    /// Something, left alone (`Overwrite::Never`).
    Kept,
}

/// Compares what is at `name` in `parent` with the snapshot file `entry` of `chunks`.
pub(super) fn existing_file(
    parent: &OwnedFd,
    name: &OsStr,
    entry: &Entry,
    chunks: &[ChunkRef],
    overwrite: Overwrite,
    owners: bool,
    encryption: &xstore_format::encryption::Encryption,
) -> std::io::Result<Existing> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(Existing::Missing),
        Err(e) => return Err(e.into()),
    };
    if overwrite == Overwrite::Never {
        return Ok(Existing::Kept);
    }
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_size as u64 != entry.attrs.size
    {
        return Ok(Existing::Differs);
    }
    if overwrite == Overwrite::IfChanged
        && same_mtime(&st, entry)
        && meta_matches(&st, entry, owners)
        && entry.xattrs.is_empty()
    {
        return Ok(Existing::Unchanged);
    }
    // Non-blocking and no-follow: a FIFO or symlink swapped in since the stat is refused.
    let fd = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOENT) => return Ok(Existing::Differs),
        Err(e) => return Err(e.into()),
    };
    let now = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
        || now.st_size as u64 != entry.attrs.size
    {
        return Ok(Existing::Differs);
    }
    if overwrite == Overwrite::IfChanged && same_mtime(&now, entry) {
        return Ok(Existing::Same(fd));
    }
    let mut file = std::fs::File::from(fd);
    let mut buf = Vec::new();
    for c in chunks {
        buf.resize(c.len as usize, 0);
        if file.read_exact(&mut buf).is_err() || encryption.id_of(&buf) != c.id {
            return Ok(Existing::Differs);
        }
    }
    Ok(Existing::Same(file.into()))
}

/// The names in the directory `dir`.
pub(super) fn names_in(dir: &OwnedFd) -> std::io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for item in rustix::fs::Dir::read_from(dir)? {
        let item = item?;
        let name = OsStr::from_bytes(item.file_name().to_bytes());
        if name != "." && name != ".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Removes extended attributes in the `user.` namespace that the snapshot's entry does not
/// have (others belong to the system: security labels, ACLs).
pub(super) fn drop_extra_xattrs(fd: &OwnedFd, entry: &Entry) -> std::io::Result<()> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::flistxattr(fd, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for name in names.get(..n).unwrap_or_default().split(|&b| b == 0) {
        if name.starts_with(b"user.") && !entry.xattrs.iter().any(|(k, _)| k == name) {
            rustix::fs::fremovexattr(fd, OsStr::from_bytes(name))?;
        }
    }
    Ok(())
}

/// Whether a file's mtime already is the entry's (atime is not compared).
pub(super) fn same_mtime(st: &rustix::fs::Stat, entry: &Entry) -> bool {
    i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec)
        == i128::from(entry.attrs.mtime_ns)
}

/// Whether mode (and, when restore sets owners, uid and gid) already are the snapshot's.
pub(super) fn meta_matches(st: &rustix::fs::Stat, entry: &Entry, owners: bool) -> bool {
    st.st_mode & 0o7777 == entry.attrs.mode & 0o7777
        && (!owners || (st.st_uid == entry.attrs.uid && st.st_gid == entry.attrs.gid))
}
