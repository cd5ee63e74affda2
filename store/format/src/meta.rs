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
            attrs: Attrs {
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
            },
        }
    }

    /// True when content is certainly unchanged (size, mtime, ctime and inode all equal).
    pub fn same_content_stamp(&self, other: &EntryMeta) -> bool {
        self.attrs.content_stamp() == other.attrs.content_stamp()
    }
}
