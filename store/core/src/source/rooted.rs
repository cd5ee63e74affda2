//! [`RootedSource`]: a local directory seen as the root of another host's filesystem, for
//! imports of trees that another tool copied to this server (rsnapshot's backup points).

use std::io;
use std::path::{Path, PathBuf};

use xstore_format::meta::EntryMeta;

use super::{LocalSource, Source, SourceFile};

/// The directory `root` of this machine, seen as `/`: the snapshot path `/etc/hosts` is read
/// from `root/etc/hosts`. Every read goes through [`LocalSource`] (no symlink followed, FIFOs
/// and devices never opened for reading), and backup paths are normalized without the
/// filesystem, so no path resolves outside `root`.
#[derive(Debug, Clone)]
pub struct RootedSource {
    root: PathBuf,
}

impl RootedSource {
    /// A source that reads the snapshot path `/P` from `root/P`.
    pub fn new(root: impl Into<PathBuf>) -> RootedSource {
        RootedSource { root: root.into() }
    }

    /// Where the snapshot path `path` (absolute, normalized) lives on this machine.
    fn local(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("/") {
            Ok(rel) if rel.as_os_str().is_empty() => self.root.clone(),
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(path),
        }
    }
}

impl Source for RootedSource {
    fn stat(&self, path: &Path) -> io::Result<EntryMeta> {
        LocalSource.stat(&self.local(path))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        LocalSource.list(&self.local(dir))
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        LocalSource.read_link(&self.local(path))
    }

    fn xattrs(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        LocalSource.xattrs(&self.local(path))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        LocalSource.open(&self.local(path))
    }

    /// Lexical only: the directories of `root` belong to another host's tree, and a symlink
    /// among them points into that host's filesystem, not this one's.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        xstore_format::protocol::paths::normalize(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: paths of an imported tree must be absolute, without '..'",
                    path.display()
                ),
            )
        })
    }
}
