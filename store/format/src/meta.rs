//! Metadata of one filesystem entry as `lstat` gives it: what a source reports, what the agent
//! sends (FORMAT.md §Agent protocol) and what a tree entry records.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The kind of a source entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket (never stored).
    Socket,
}

/// Metadata of one source entry (what `lstat` gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Kind.
    pub kind: SourceKind,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// mtime, ns.
    pub mtime_ns: i64,
    /// ctime, ns.
    pub ctime_ns: i64,
    /// Inode.
    pub inode: u64,
    /// Device.
    pub dev: u64,
    /// Link count.
    pub nlink: u64,
    /// Device number of a device node.
    pub rdev: u64,
}

impl EntryMeta {
    /// From std's metadata (of an `lstat` or `fstat`).
    pub fn from_metadata(m: &fs::Metadata) -> Self {
        let ft = m.file_type();
        let kind = if ft.is_file() {
            SourceKind::File
        } else if ft.is_dir() {
            SourceKind::Dir
        } else if ft.is_symlink() {
            SourceKind::Symlink
        } else if ft.is_char_device() {
            SourceKind::CharDevice
        } else if ft.is_block_device() {
            SourceKind::BlockDevice
        } else if ft.is_fifo() {
            SourceKind::Fifo
        } else {
            SourceKind::Socket
        };
        EntryMeta {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ctime_ns: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
            inode: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
            rdev: m.rdev(),
        }
    }

    /// True when content is certainly unchanged (size, mtime, ctime and inode all equal).
    pub fn same_content_stamp(&self, other: &EntryMeta) -> bool {
        self.content_stamp() == other.content_stamp()
    }

    /// (size, mtime, ctime, inode): what must all be equal for content to be unchanged.
    pub fn content_stamp(&self) -> (u64, i64, i64, u64) {
        (self.size, self.mtime_ns, self.ctime_ns, self.inode)
    }
}
