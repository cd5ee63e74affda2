//! A file or directory of a snapshot as one stream (`xstore dump`): a file's bytes, or a tar
//! (POSIX pax) or zip archive that unpacks to what `restore` of the same path writes.
//!
//! tar entries carry what restore sets: numeric owners, mode, mtime to the nanosecond (pax
//! `mtime`/`atime`), extended attributes (`SCHILY.xattr.*`, as GNU tar and bsdtar read them),
//! hard links as link entries to the first path, devices, fifos and symlinks. Files whose
//! chunk list holds all-zero chunks are written in GNU's sparse format 1.0 (pax
//! `GNU.sparse.*`, the map before the data), so a 1 GiB image with a few blocks of data is a
//! small archive and unpacks sparse; the zero chunks are recognised by their ids, so no file
//! is read twice. zip holds files, directories and symlinks with their mode and mtime (to the
//! second); it has no place for owners, xattrs, devices or fifos, which are counted as
//! `skipped`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::repo::{Node, Repository};
use xstore_chunker::ChunkId;
use xstore_format::meta::EntryKind;
use xstore_format::snapshot::Snapshot;
use xstore_format::tree::{ChunkRef, Content, Entry};

/// Archive format of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// POSIX pax tar (module documentation).
    Tar,
    /// zip (streamed, with data descriptors; zip64 for files from 4 GiB).
    Zip,
}

/// What a dump wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DumpSummary {
    /// Regular files (first paths of hard links included).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, hard links, devices and fifos.
    pub others: u64,
    /// File content bytes (holes of sparse files included).
    pub bytes: u64,
    /// Entries the format cannot hold (zip: devices and fifos), by path.
    pub skipped: Vec<String>,
    /// Paths that are not UTF-8, which zip holds with U+FFFD in place of the other bytes.
    pub renamed: Vec<String>,
    /// Entries left out because the dump's reader may not take them
    /// ([`DumpRequest::may_take`]): files it may not read, and what is inside directories it
    /// may not list.
    #[serde(skip_serializing_if = "is_zero")]
    pub denied: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a dump of one reader takes: a path given as bytes (names need not be UTF-8) and a
/// rule for which entries the reader may take, as the kernel would let a `tar` run by that
/// reader take them.
pub struct DumpRequest<'a> {
    /// The path inside the snapshot, `/`-separated (`b"/"` or empty: the root).
    pub path: &'a [u8],
    /// `None`: the file's bytes when the path is a file, else a tar archive.
    pub format: Option<DumpFormat>,
    /// Whether the reader may take an entry: a file's content (read permission), a
    /// directory's listing (read and search permission). Entries of a directory it may not
    /// list and files it may not read are left out and counted in
    /// [`DumpSummary::denied`]; a directory it may not list is still written, empty, and
    /// other kinds (symlinks, devices, fifos) carry no content and are always written.
    /// `None`: everything (the repository's owner dumping).
    pub may_take: Option<&'a dyn Fn(&Entry) -> bool>,
}

fn output_error(source: std::io::Error) -> Error {
    Error::Io {
        path: PathBuf::from("<output>"),
        source,
    }
}

/// One entry to write, in archive order (a directory before what it holds).
struct Item {
    /// Path inside the archive, relative.
    path: Vec<u8>,
    entry: Entry,
    /// For a hard link after its first path: that path.
    link_to: Option<Vec<u8>>,
}

/// A dump under way: entries are written as the walk reaches them (a directory before what
/// it holds), so memory holds the directories on the current path, not the whole tree; only
/// the first paths of hard-linked files are remembered.
struct Walk<'a, 'w> {
    /// (device, inode) of hard-linked files → the first path written.
    first_of_inode: HashMap<(u64, u64), Vec<u8>>,
    may_take: Option<&'a dyn Fn(&Entry) -> bool>,
    denied: u64,
    sink: Sink<'w>,
    summary: DumpSummary,
}

/// Where a dump's entries go.
enum Sink<'w> {
    Tar(tar::Builder<&'w mut dyn Write>, ZeroIds),
    /// Boxed: the zip writer is large, and only one sink exists per dump.
    Zip(Box<zip::ZipWriter<zip::write::StreamWriter<&'w mut dyn Write>>>),
}

/// Whether a reader with `rule` ([`DumpRequest::may_take`]) may take the entry's content
/// (files, directories); other kinds have none.
fn may_take(rule: Option<&dyn Fn(&Entry) -> bool>, entry: &Entry) -> bool {
    match (rule, entry.kind) {
        (Some(may), EntryKind::File | EntryKind::Dir) => may(entry),
        _ => true,
    }
}

/// A stretch of a file: data at `offset`, or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    offset: u64,
    len: u64,
    hole: bool,
}

/// Reads a file's chunks as one stream; with `keep`, only the bytes of those data extents
/// (offset, length; sorted), and chunks that are holes are never read. A repository error is
/// kept for the caller (the archive writers see an I/O error).
struct ChunkReader<'a> {
    repo: &'a Repository,
    chunks: std::vec::IntoIter<(ChunkRef, bool)>,
    /// Logical offset of the next chunk.
    offset: u64,
    keep: Option<(Vec<(u64, u64)>, usize)>,
    current: Vec<u8>,
    at: usize,
    failed: &'a mut Option<Error>,
}

impl<'a> ChunkReader<'a> {
    fn new(
        repo: &'a Repository,
        chunks: Vec<(ChunkRef, bool)>,
        keep: Option<Vec<(u64, u64)>>,
        failed: &'a mut Option<Error>,
    ) -> Self {
        ChunkReader {
            repo,
            chunks: chunks.into_iter(),
            offset: 0,
            keep: keep.map(|k| (k, 0)),
            current: Vec::new(),
            at: 0,
            failed,
        }
    }

    /// The next chunk's bytes that the stream carries (maybe none).
    fn refill(&mut self) -> std::io::Result<bool> {
        let Some((chunk, hole)) = self.chunks.next() else {
            return Ok(false);
        };
        let start = self.offset;
        let end = start + u64::from(chunk.len);
        self.offset = end;
        self.current.clear();
        self.at = 0;
        if hole && self.keep.is_some() {
            return Ok(true);
        }
        let data = self
            .repo
            .read_file_chunk(&chunk)
            .map_err(|e| keep(self.failed, e))?;
        match &mut self.keep {
            None => self.current = data,
            Some((ranges, cursor)) => {
                while let Some(&(off, len)) = ranges.get(*cursor) {
                    if off >= end {
                        break;
                    }
                    let (from, to) = (off.max(start), (off + len).min(end));
                    if from < to {
                        let slice = data
                            .get((from - start) as usize..(to - start) as usize)
                            .unwrap_or_default();
                        self.current.extend_from_slice(slice);
                    }
                    if off + len > end {
                        break;
                    }
                    *cursor += 1;
                }
            }
        }
        Ok(true)
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let rest = self.current.get(self.at..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

/// Holes inside data chunks are found in blocks of this size (as restore writes holes).
const HOLE_BLOCK: usize = 4096;

/// Ids of all-zero chunks. A chunk inside a zero run always has the same length (the
/// chunker's first cut in zeros, or its maximum), so two ids cover every hole but a file's
/// last chunk, which is checked (and its id cached by length) only in files with holes.
struct ZeroIds {
    by_len: HashMap<u32, ChunkId>,
    /// The repository's ids (keyed when encrypted).
    encryption: xstore_format::encryption::Encryption,
}

impl ZeroIds {
    fn new(
        params: xstore_chunker::ChunkerParams,
        encryption: &xstore_format::encryption::Encryption,
    ) -> Self {
        let zeros = vec![0u8; params.max() as usize * 2];
        let in_run = params.next_cut(&zeros) as u32;
        let mut by_len = HashMap::new();
        for len in [in_run, params.max()] {
            by_len.insert(
                len,
                encryption.id_of(zeros.get(..len as usize).unwrap_or_default()),
            );
        }
        ZeroIds {
            by_len,
            encryption: encryption.clone(),
        }
    }
    fn is_zero(&self, c: &ChunkRef) -> bool {
        self.by_len.get(&c.len) == Some(&c.id)
    }
    /// Which chunks of a file are zeros.
    fn flags(&mut self, chunks: &[ChunkRef]) -> Vec<bool> {
        let mut flags: Vec<bool> = chunks.iter().map(|c| self.is_zero(c)).collect();
        if let (Some((last, _)), Some((last_flag, flags_before))) =
            (chunks.split_last(), flags.split_last_mut())
        {
            if !*last_flag && flags_before.iter().any(|&f| f) {
                let encryption = &self.encryption;
                let id = *self
                    .by_len
                    .entry(last.len)
                    .or_insert_with(|| encryption.id_of(&vec![0u8; last.len as usize]));
                *last_flag = id == last.id;
            }
        }
        flags
    }
}

/// Appends a stretch to `out`, merging it with the last one of the same kind.
fn push_extent(out: &mut Vec<Extent>, offset: u64, len: u64, hole: bool) {
    match out.last_mut() {
        Some(last) if last.hole == hole => last.len += len,
        _ => out.push(Extent { offset, len, hole }),
    }
}

/// A pax record's key for an xattr name, when the name is text (GNU tar writes no others).
fn xattr_key(name: &[u8]) -> Option<String> {
    std::str::from_utf8(name)
        .ok()
        .map(|n| format!("SCHILY.xattr.{n}"))
}

fn pax_time(ns: i64) -> Vec<u8> {
    format!(
        "{}.{:09}",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    )
    .into_bytes()
}

/// Largest value of an octal ustar number field of `digits` digits.
fn octal_max(digits: u32) -> u64 {
    (1u64 << (3 * digits)) - 1
}

impl Repository {
    /// Writes `path` of `snapshot` to `out`: a directory (or, with a format, anything) as an
    /// archive whose top entry is the path's last component (its children for `/`), as
    /// `restore --path` lays it out; a file without a format as its bytes.
    pub fn dump(
        &self,
        snapshot: &Snapshot,
        path: &str,
        format: Option<DumpFormat>,
        out: &mut dyn Write,
    ) -> Result<DumpSummary> {
        let request = DumpRequest {
            path: path.as_bytes(),
            format,
            may_take: None,
        };
        self.dump_request(snapshot, &request, out)
    }

    /// [`Repository::dump`] of what a [`DumpRequest`] says: its path as bytes, and only what
    /// its reader may take. A file the reader may not read, asked for by its own path, is
    /// [`Error::PermissionDenied`]; so is a directory it may not list. The caller checks the
    /// directories on the way (search permission), as a path walk does.
    pub fn dump_request(
        &self,
        snapshot: &Snapshot,
        request: &DumpRequest<'_>,
        out: &mut dyn Write,
    ) -> Result<DumpSummary> {
        let format = request.format;
        let node = self.lookup_bytes(snapshot, request.path)?;
        let denied = || Error::PermissionDenied(String::from_utf8_lossy(request.path).into_owned());
        if let Node::Entry(e) = &node {
            if !may_take(request.may_take, e) {
                return Err(denied());
            }
            if format.is_none() && e.kind == EntryKind::File {
                let bytes = self.cat(e, out)?;
                return Ok(DumpSummary {
                    files: 1,
                    bytes,
                    ..Default::default()
                });
            }
        }
        let sink = match format.unwrap_or(DumpFormat::Tar) {
            DumpFormat::Tar => Sink::Tar(
                tar::Builder::new(out),
                ZeroIds::new(self.chunker_params(), self.encryption()),
            ),
            DumpFormat::Zip => Sink::Zip(Box::new(zip::ZipWriter::new_stream(out))),
        };
        let mut walk = Walk {
            first_of_inode: HashMap::new(),
            may_take: request.may_take,
            denied: 0,
            sink,
            summary: DumpSummary::default(),
        };
        match node {
            Node::Root(id) => {
                for child in self.tree(&id)?.entries {
                    let name = child.name.clone();
                    self.dump_walk(name, child, &mut walk)?;
                }
            }
            Node::Entry(e) => self.dump_walk(e.name.clone(), e, &mut walk)?,
        }
        let Walk {
            sink,
            mut summary,
            denied,
            ..
        } = walk;
        match sink {
            Sink::Tar(tar, _) => tar
                .into_inner()
                .map_err(output_error)?
                .flush()
                .map_err(output_error)?,
            Sink::Zip(zip) => zip
                .finish()
                .map_err(zip_error)?
                .into_inner()
                .flush()
                .map_err(output_error)?,
        }
        summary.denied = denied;
        Ok(summary)
    }

    /// [`Repository::dump`] into a new file at `dest`. The directory is reached as a restore
    /// target is (from `/`, no symlink followed that another user could have planted), and
    /// everything after that goes through its descriptor: a temporary created `O_EXCL |
    /// O_NOFOLLOW` (mode 0600), written, fsynced, hard-linked to `dest` (which fails instead of
    /// overwriting), then the directory fsynced. `dest` never exists half-written, and an
    /// existing `dest` is an error (`AlreadyExists`).
    pub fn dump_to_file(
        &self,
        snapshot: &Snapshot,
        path: &str,
        format: Option<DumpFormat>,
        dest: &std::path::Path,
    ) -> Result<DumpSummary> {
        use rustix::fs::{AtFlags, Mode, OFlags};
        let at = |source: std::io::Error| Error::Io {
            path: dest.to_path_buf(),
            source,
        };
        let name = dest.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a file name", dest.display()))
        })?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        // Reached from `/` as a restore target is (a symlink on the way is followed only where
        // no other user could have planted it); the file is created through the descriptor.
        let dir = crate::commands::safe_fs::open_target(parent, false)?;
        if rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(at(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists; dump never overwrites a file",
            )));
        }
        let tmp = format!(".{}.tmp{}", name.to_string_lossy(), std::process::id());
        // A temporary of an earlier crashed run with this process id goes first.
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| at(e.into()))?;
        let written = (|| -> Result<DumpSummary> {
            let file = std::fs::File::from(fd);
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
            let summary = self.dump(snapshot, path, format, &mut out)?;
            out.flush().map_err(at)?;
            drop(out);
            file.sync_all().map_err(at)?;
            rustix::fs::linkat(&dir, tmp.as_str(), &dir, name, AtFlags::empty())
                .map_err(|e| at(e.into()))?;
            Ok(summary)
        })();
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        let summary = written?;
        rustix::fs::fsync(&dir).map_err(|e| at(e.into()))?;
        Ok(summary)
    }

    /// A file's data and holes: zero chunks are holes without being read; data chunks are
    /// read and their all-zero blocks are holes too. Only for files that have zero chunks.
    fn sparse_extents(&self, chunks: &[(ChunkRef, bool)]) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        for (c, hole) in chunks {
            if *hole {
                push_extent(&mut out, offset, u64::from(c.len), true);
            } else {
                let data = self.read_file_chunk(c)?;
                let mut at = offset;
                for block in data.chunks(HOLE_BLOCK) {
                    let zero = block.len() == HOLE_BLOCK && block.iter().all(|&b| b == 0);
                    push_extent(&mut out, at, block.len() as u64, zero);
                    at += block.len() as u64;
                }
            }
            offset += u64::from(c.len);
        }
        Ok(out)
    }

    /// Writes `entry` at `path`, then (a directory the reader may list) what it holds.
    fn dump_walk(&self, path: Vec<u8>, entry: Entry, walk: &mut Walk<'_, '_>) -> Result<()> {
        let sub = entry.subtree();
        let mut link_to = None;
        if entry.kind == EntryKind::File && entry.attrs.nlink > 1 {
            let key = (entry.attrs.dev, entry.attrs.inode);
            match walk.first_of_inode.get(&key) {
                Some(first) => link_to = Some(first.clone()),
                None => {
                    walk.first_of_inode.insert(key, path.clone());
                }
            }
        }
        // What the reader may not take is left out; a directory it may not list is kept
        // (its name was listed), without what it holds.
        let listable = may_take(walk.may_take, &entry);
        if !listable && entry.kind == EntryKind::File {
            walk.denied += 1;
            return Ok(());
        }
        let item = Item {
            path,
            entry,
            link_to,
        };
        self.write_item(walk, &item)?;
        if let Some(id) = sub {
            let children = self.tree(&id)?.entries;
            if !listable {
                walk.denied += children.len() as u64;
                return Ok(());
            }
            for child in children {
                let mut p = item.path.clone();
                p.push(b'/');
                p.extend_from_slice(&child.name);
                self.dump_walk(p, child, walk)?;
            }
        }
        Ok(())
    }

    /// One entry into the walk's archive.
    fn write_item(&self, walk: &mut Walk<'_, '_>, item: &Item) -> Result<()> {
        let mut failed: Option<Error> = None;
        match &mut walk.sink {
            Sink::Tar(tar, zeros) => self
                .tar_entry(tar, item, zeros, &mut walk.summary, &mut failed)
                .map_err(|e| failed.take().unwrap_or_else(|| output_error(e))),
            Sink::Zip(zip) => self
                .zip_entry(zip, item, &mut walk.summary, &mut failed)
                .map_err(|e| failed.take().unwrap_or_else(|| zip_error(e))),
        }
    }

    fn tar_entry(
        &self,
        tar: &mut tar::Builder<&mut dyn Write>,
        item: &Item,
        zeros: &mut ZeroIds,
        summary: &mut DumpSummary,
        failed: &mut Option<Error>,
    ) -> std::io::Result<()> {
        let e = &item.entry;
        let mut pax: Vec<(String, Vec<u8>)> = vec![
            ("mtime".into(), pax_time(e.attrs.mtime_ns)),
            ("atime".into(), pax_time(e.attrs.mtime_ns)),
        ];
        for (k, v) in &e.xattrs {
            if let Some(key) = xattr_key(k) {
                pax.push((key, v.clone()));
            }
        }
        let mut header = tar::Header::new_ustar();
        header.set_mode(e.attrs.mode & 0o7777);
        header.set_mtime(e.attrs.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        for (key, id) in [("uid", e.attrs.uid), ("gid", e.attrs.gid)] {
            if u64::from(id) > octal_max(7) {
                pax.push((key.into(), id.to_string().into_bytes()));
            }
        }
        header.set_uid(u64::from(e.attrs.uid).min(octal_max(7)));
        header.set_gid(u64::from(e.attrs.gid).min(octal_max(7)));
        let mut name = item.path.clone();
        let mut size = 0u64;
        let mut data: Option<SparseData> = None;
        match (&item.link_to, e.kind) {
            (Some(first), _) => {
                header.set_entry_type(tar::EntryType::Link);
                set_link(&mut header, &mut pax, first);
                summary.others += 1;
            }
            (None, EntryKind::Dir) => {
                header.set_entry_type(tar::EntryType::Directory);
                name.push(b'/');
                summary.dirs += 1;
            }
            (None, EntryKind::Symlink) => {
                header.set_entry_type(tar::EntryType::Symlink);
                if let Content::Target(t) = &e.content {
                    set_link(&mut header, &mut pax, t);
                }
                summary.others += 1;
            }
            (None, EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo) => {
                header.set_entry_type(match e.kind {
                    EntryKind::CharDevice => tar::EntryType::Char,
                    EntryKind::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                let (major, minor) = (
                    rustix::fs::major(e.attrs.rdev),
                    rustix::fs::minor(e.attrs.rdev),
                );
                header.set_device_major(major)?;
                header.set_device_minor(minor)?;
                summary.others += 1;
            }
            (None, EntryKind::File) => {
                header.set_entry_type(tar::EntryType::Regular);
                let chunks = self.file_chunks(e).map_err(|err| keep(failed, err))?;
                let flagged: Vec<(ChunkRef, bool)> =
                    chunks.iter().copied().zip(zeros.flags(&chunks)).collect();
                summary.files += 1;
                summary.bytes += e.attrs.size;
                let ext = if flagged.iter().any(|(_, hole)| *hole) {
                    self.sparse_extents(&flagged)
                        .map_err(|err| keep(failed, err))?
                } else {
                    Vec::new()
                };
                if ext.iter().any(|x| x.hole) {
                    let map = sparse_map(&ext, e.attrs.size);
                    let data_len: u64 = ext.iter().filter(|x| !x.hole).map(|x| x.len).sum();
                    pax.push(("GNU.sparse.major".into(), b"1".to_vec()));
                    pax.push(("GNU.sparse.minor".into(), b"0".to_vec()));
                    pax.push(("GNU.sparse.name".into(), item.path.clone()));
                    pax.push((
                        "GNU.sparse.realsize".into(),
                        e.attrs.size.to_string().into_bytes(),
                    ));
                    name = sparse_member_name(&item.path);
                    size = map.len() as u64 + data_len;
                    let keep: Vec<(u64, u64)> = ext
                        .iter()
                        .filter(|x| !x.hole)
                        .map(|x| (x.offset, x.len))
                        .collect();
                    data = Some((flagged, map, Some(keep)));
                } else {
                    size = e.attrs.size;
                    data = Some((flagged, Vec::new(), None));
                }
            }
        }
        if size > octal_max(11) {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        header.set_size(size.min(octal_max(11)));
        if header.set_path(OsStr::from_bytes(&name)).is_err() {
            // Too long for ustar's name and prefix fields: pax `path` holds it.
            pax.push(("path".into(), name.clone()));
            header.set_path(short_name(&name))?;
        }
        tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        header.set_size(size);
        header.set_cksum();
        match data {
            None => tar.append(&header, std::io::empty()),
            Some((chunks, map, keep)) => {
                let reader = ChunkReader::new(self, chunks, keep, failed);
                tar.append(&header, std::io::Cursor::new(map).chain(reader))
            }
        }
    }

    fn zip_entry(
        &self,
        zip: &mut zip::ZipWriter<zip::write::StreamWriter<&mut dyn Write>>,
        item: &Item,
        summary: &mut DumpSummary,
        failed: &mut Option<Error>,
    ) -> std::result::Result<(), zip::result::ZipError> {
        use zip::write::SimpleFileOptions;
        let e = &item.entry;
        let name = String::from_utf8_lossy(&item.path).into_owned();
        if std::str::from_utf8(&item.path).is_err() {
            summary.renamed.push(name.clone());
        }
        let secs = e.attrs.mtime_ns.div_euclid(1_000_000_000);
        // Extended timestamp (0x5455): the mtime in UTC seconds, which unzip applies.
        let mtime = u32::try_from(secs).ok();
        let opts = SimpleFileOptions::default()
            .unix_permissions(e.attrs.mode & 0o7777)
            .last_modified_time(dos_time(secs));
        match e.kind {
            EntryKind::Dir => {
                zip.add_directory(name, opts.with_extended_timestamp(mtime, None, None)?)?;
                summary.dirs += 1;
            }
            EntryKind::Symlink => {
                let target = match &e.content {
                    Content::Target(t) => String::from_utf8_lossy(t).into_owned(),
                    _ => String::new(),
                };
                zip.add_symlink(name, target, opts)?;
                summary.others += 1;
            }
            EntryKind::File => {
                let chunks = self
                    .file_chunks(e)
                    .map_err(|err| zip::result::ZipError::Io(keep(failed, err)))?;
                let opts = opts
                    .large_file(e.attrs.size >= u64::from(u32::MAX))
                    .compression_method(zip::CompressionMethod::Deflated)
                    .with_extended_timestamp(mtime, None, None)?;
                zip.start_file(name, opts)?;
                let chunks = chunks.into_iter().map(|c| (c, false)).collect();
                let mut reader = ChunkReader::new(self, chunks, None, failed);
                std::io::copy(&mut reader, zip)?;
                summary.files += 1;
                summary.bytes += e.attrs.size;
            }
            _ => summary.skipped.push(name),
        }
        Ok(())
    }
}

/// A file's chunks (flagged when zeros), its sparse map (empty when not sparse) and the data
/// extents the archive carries (all of it when `None`).
type SparseData = (Vec<(ChunkRef, bool)>, Vec<u8>, Option<Vec<(u64, u64)>>);

/// Keeps a repository error for the caller and hands the writer an I/O error.
fn keep(failed: &mut Option<Error>, err: Error) -> std::io::Error {
    let io = std::io::Error::other(err.to_string());
    *failed = Some(err);
    io
}

fn zip_error(e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(io) => output_error(io),
        other => output_error(std::io::Error::other(other.to_string())),
    }
}

/// A link target: in the header when it fits, else in pax `linkpath`.
fn set_link(header: &mut tar::Header, pax: &mut Vec<(String, Vec<u8>)>, target: &[u8]) {
    if target.len() > 100 || header.set_link_name(OsStr::from_bytes(target)).is_err() {
        pax.push(("linkpath".into(), target.to_vec()));
        let _ = header.set_link_name(short_name(target));
    }
}

/// A stand-in for a name that pax records in full: its last 90 bytes, so listings by tools
/// that ignore pax still show something recognisable.
fn short_name(name: &[u8]) -> &OsStr {
    let start = name.len().saturating_sub(90);
    let tail = name.get(start..).unwrap_or(name);
    let tail = match tail.iter().position(|&b| b == b'/') {
        Some(i) if i + 1 < tail.len() => tail.get(i + 1..).unwrap_or(tail),
        _ => tail,
    };
    OsStr::from_bytes(tail)
}

/// GNU's member name for sparse format 1.0: `DIR/GNUSparseFile.0/NAME`.
fn sparse_member_name(path: &[u8]) -> Vec<u8> {
    let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (
            path.get(..i).unwrap_or_default(),
            path.get(i + 1..).unwrap_or_default(),
        ),
        None => (&b""[..], path),
    };
    let mut out = Vec::new();
    if !dir.is_empty() {
        out.extend_from_slice(dir);
        out.push(b'/');
    }
    out.extend_from_slice(b"GNUSparseFile.0/");
    out.extend_from_slice(base);
    out
}

/// The sparse map of format 1.0: the number of data extents, then offset and length of each
/// (a final empty extent at the end when the file ends in a hole), in decimal lines, padded
/// with zeros to a 512-byte block.
fn sparse_map(ext: &[Extent], size: u64) -> Vec<u8> {
    let mut data: Vec<(u64, u64)> = ext
        .iter()
        .filter(|x| !x.hole)
        .map(|x| (x.offset, x.len))
        .collect();
    if ext.last().is_none_or(|x| x.hole) {
        data.push((size, 0));
    }
    let mut map = format!("{}\n", data.len());
    for (offset, len) in data {
        map.push_str(&format!("{offset}\n{len}\n"));
    }
    let mut bytes = map.into_bytes();
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes
}

/// zip's DOS time (local fields, read as UTC here; the extended timestamp is exact).
fn dos_time(secs: i64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    zip::DateTime::from_date_and_time(
        t.year().clamp(1980, 2107) as u16,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    )
    .unwrap_or_default()
}
