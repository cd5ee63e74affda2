//! Metadata of one filesystem entry as `lstat` gives it: what a source reports, what the agent
//! sends (FORMAT.md §Agent protocol) and what a tree entry records.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::error::DecodeError;

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file (a hard-linked file has `nlink > 1`).
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
}

impl EntryKind {
    /// Its code in tree blobs (FORMAT.md §Trees).
    pub(crate) fn code(self) -> u8 {
        match self {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
            EntryKind::CharDevice => 3,
            EntryKind::BlockDevice => 4,
            EntryKind::Fifo => 5,
        }
    }
    /// The kind of tree code `c` (at `offset`).
    pub(crate) fn from_code(c: u8, offset: usize) -> Result<Self, DecodeError> {
        Ok(match c {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::CharDevice,
            4 => EntryKind::BlockDevice,
            5 => EntryKind::Fifo,
            _ => {
                return Err(DecodeError::Invalid {
                    what: "entry kind",
                    offset,
                    reason: format!("unknown kind {c}"),
                })
            }
        })
    }
    /// One letter as in `ls -l`.
    pub fn letter(self) -> char {
        match self {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::CharDevice => 'c',
            EntryKind::BlockDevice => 'b',
            EntryKind::Fifo => 'p',
        }
    }
}

/// The kind of a source entry: what a tree can hold, or a socket (never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An entry a tree records as this kind.
    Stored(EntryKind),
    /// A Unix socket (never stored).
    Socket,
}

impl SourceKind {
    /// The tree entry kind this is stored as; `None` for sockets, which are never stored.
    pub fn entry_kind(self) -> Option<EntryKind> {
        match self {
            SourceKind::Stored(kind) => Some(kind),
            SourceKind::Socket => None,
        }
    }

    /// The kind of a `stat` mode (its `S_IFMT` bits).
    pub fn of_mode(mode: u32) -> SourceKind {
        match mode & S_IFMT {
            S_IFREG => SourceKind::Stored(EntryKind::File),
            S_IFDIR => SourceKind::Stored(EntryKind::Dir),
            S_IFLNK => SourceKind::Stored(EntryKind::Symlink),
            S_IFCHR => SourceKind::Stored(EntryKind::CharDevice),
            S_IFBLK => SourceKind::Stored(EntryKind::BlockDevice),
            S_IFIFO => SourceKind::Stored(EntryKind::Fifo),
            _ => SourceKind::Socket,
        }
    }
}

impl From<EntryKind> for SourceKind {
    fn from(kind: EntryKind) -> Self {
        SourceKind::Stored(kind)
    }
}

// The file type bits of `st_mode` (POSIX; the same on every Unix this runs on).
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

/// What `lstat` says of an entry besides its kind and name: what a source reports and a tree
/// entry records, the same fields for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Size in bytes (files: content length; symlinks: target length).
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch (for change detection only).
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device of the filesystem.
    pub dev: u64,
    /// Hard link count.
    pub nlink: u64,
    /// Device number of a device node.
    pub rdev: u64,
}

impl Attrs {
    /// (size, mtime, ctime, inode): what must all be equal for content to be unchanged.
    pub fn content_stamp(&self) -> (u64, i64, i64, u64) {
        (self.size, self.mtime_ns, self.ctime_ns, self.inode)
    }
}

/// The fields of a `stat` result as numbers ([`EntryMeta::from_stat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFields {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// `st_uid`.
    pub uid: u32,
    /// `st_gid`.
    pub gid: u32,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` and its nanoseconds.
    pub mtime: (i64, i64),
    /// `st_ctime` and its nanoseconds.
    pub ctime: (i64, i64),
    /// `st_ino`.
    pub inode: u64,
    /// `st_dev`.
    pub dev: u64,
    /// `st_nlink`.
    pub nlink: u64,
    /// `st_rdev`.
    pub rdev: u64,
}

/// Metadata of one source entry (what `lstat` gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Kind.
    pub kind: SourceKind,
    /// Everything else.
    pub attrs: Attrs,
}

impl EntryMeta {
    /// From std's metadata (of an `lstat` or `fstat`).
    pub fn from_metadata(m: &fs::Metadata) -> Self {
        Self::from_stat(&StatFields {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
            rdev: m.rdev(),
        })
    }

    /// From the fields of a `stat` result: the one place a stat becomes metadata, for
    /// std's [`fs::Metadata`] and for a raw `struct stat` alike.
    pub fn from_stat(st: &StatFields) -> Self {
        let ns = |(s, n): (i64, i64)| s.saturating_mul(1_000_000_000).saturating_add(n);
        EntryMeta {
            kind: SourceKind::of_mode(st.mode),
            attrs: Attrs {
                mode: st.mode & 0o7777,
                uid: st.uid,
                gid: st.gid,
                size: st.size,
                mtime_ns: ns(st.mtime),
                ctime_ns: ns(st.ctime),
                inode: st.inode,
                dev: st.dev,
                nlink: st.nlink,
                rdev: st.rdev,
            },
        }
    }

    /// True when content is certainly unchanged (size, mtime, ctime and inode all equal).
    pub fn same_content_stamp(&self, other: &EntryMeta) -> bool {
        self.attrs.content_stamp() == other.attrs.content_stamp()
    }
}
