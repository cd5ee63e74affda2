//! [`LocalSource`]: the filesystem of the host the store runs on, read without following any
//! path another user can swap (ARCHITECTURE.md, invariants).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use xstore_format::meta::EntryMeta;

use super::{Source, SourceFile};

/// The local filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalSource;

struct LocalFile {
    file: File,
    /// The `fstat` that `open` made to check the kind: the first `current_meta` (the
    /// "before" of a read) answers with it instead of a second `fstat`.
    opened: Option<EntryMeta>,
}

impl Read for LocalFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl SourceFile for LocalFile {
    fn current_meta(&mut self) -> io::Result<EntryMeta> {
        match self.opened.take() {
            Some(meta) => Ok(meta),
            None => Ok(EntryMeta::from_metadata(&self.file.metadata()?)),
        }
    }
}

impl Source for LocalSource {
    fn stat(&self, path: &Path) -> io::Result<EntryMeta> {
        Ok(EntryMeta::from_metadata(&fs::symlink_metadata(path)?))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        let mut out = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name().as_bytes().to_vec();
            let meta = fs::symlink_metadata(item.path()).map(|m| EntryMeta::from_metadata(&m));
            out.push((name, meta));
        }
        Ok(out)
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        Ok(fs::read_link(path)?.as_os_str().as_bytes().to_vec())
    }

    fn xattrs(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let names = match xattr::list(path) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
                return Ok(out)
            }
            Err(e) => return Err(e),
        };
        for name in names {
            if let Some(value) = xattr::get(path, &name)? {
                out.push((name.as_bytes().to_vec(), value));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Opens with O_NONBLOCK (a FIFO or device swapped in after the listing cannot block the
    /// backup, which holds the writer lock) and O_NOFOLLOW; the descriptor is then checked to
    /// be a regular file before O_NONBLOCK is cleared for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        use rustix::fs::OFlags;
        let base = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags((base | OFlags::NOATIME).bits() as i32)
            .open(path)
        {
            Ok(f) => f,
            // O_NOATIME needs ownership of the file (or CAP_FOWNER).
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => fs::OpenOptions::new()
                .read(true)
                .custom_flags(base.bits() as i32)
                .open(path)?,
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            let what = EntryMeta::from_metadata(&meta).kind;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a regular file any more (now {what:?}); not read"),
            ));
        }
        let flags = rustix::fs::fcntl_getfl(&file)?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
        Ok(Box::new(LocalFile {
            file,
            opened: Some(EntryMeta::from_metadata(&meta)),
        }))
    }
}
