//! Where backup data comes from. [`LocalSource`] reads the local filesystem; a remote agent
//! stream implements the same trait.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use xstore_format::meta::EntryMeta;
use xstore_format::tree::{ChunkRef, Tree};

mod local;
pub(crate) mod remote;
mod rooted;

pub use local::LocalSource;
pub use rooted::RootedSource;

/// Most raw bytes ingest asks of [`SourceFile::fetch_chunks`] in one call (one `ReadChunks`
/// request of a remote source), so a large new file never sits in memory whole.
pub const FETCH_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// One chunk served by [`SourceFile::fetch_chunks`]: its bytes and the form the source sent
/// them in, which may spare ingest compressing them (once `data` has verified against the
/// chunk id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedChunk {
    /// The chunk's bytes.
    pub data: Vec<u8>,
    /// How the source sent them.
    pub sent: SentForm,
}

/// The form a [`FetchedChunk`] travelled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentForm {
    /// A zstd frame that decompresses to the chunk: stored as it is when smaller.
    Zstd(Vec<u8>),
    /// Uncompressed by choice, from a source whose CPU bounds the transfer (an agent under
    /// `raw-chunks`): stored uncompressed while the backup's budgets have room to spare
    /// (`xstore compact` compresses what survives), else compressed like [`SentForm::Plain`].
    Uncompressed,
    /// Anything else (bytes rebuilt from a delta, a source that leaves compression to the
    /// repository): compressed at the repository's level.
    Plain,
}

/// An open file of a source.
pub trait SourceFile: Read + Send {
    /// Metadata of the open file now (`fstat`), to detect change while reading.
    fn current_meta(&mut self) -> io::Result<EntryMeta>;

    /// For sources that chunk and hash on their side (a remote agent): the file's chunk list,
    /// cut with the repository's chunker parameters. When this returns `Some`, ingest never
    /// calls `read`; it asks [`SourceFile::fetch_chunks`] for the ids the repository lacks only.
    /// Local files return `None` (the default) and are read.
    fn remote_chunks(&mut self) -> Option<io::Result<Vec<ChunkRef>>> {
        None
    }

    /// The bytes of the given chunks, in the order asked. Ingest verifies every chunk against
    /// its id and length: a source is untrusted.
    fn fetch_chunks(&mut self, ids: &[ChunkRef]) -> io::Result<Vec<FetchedChunk>> {
        let _ = ids;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this source does not serve chunks by id",
        ))
    }

    /// Whether [`SourceFile::fetch_chunks_near`] would use bases: ingest reads them from the
    /// repository only then. The default: no.
    fn wants_bases(&self) -> bool {
        false
    }

    /// [`SourceFile::fetch_chunks`] when ingest holds, for some of `ids`, bytes the chunk
    /// probably resembles (`bases[i]`: the previous version of the file at the chunk's
    /// offsets). A source across a link may send those chunks as deltas against their bases;
    /// ingest verifies the result like any fetched chunk. The default ignores the bases.
    fn fetch_chunks_near(
        &mut self,
        ids: &[ChunkRef],
        bases: &[Option<Vec<u8>>],
    ) -> io::Result<Vec<FetchedChunk>> {
        let _ = bases;
        self.fetch_chunks(ids)
    }
}

/// A regular file ingest is about to open ([`Source::will_open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenHint {
    /// The file.
    pub path: PathBuf,
    /// Its listed size.
    pub size: u64,
    /// The parent snapshot holds a file of this size at this path whose metadata differs
    /// (touched, copied back, or the first pull after an import): its chunks are probably
    /// known, so a source that can answer with chunk ids alone should (ingest asks for the
    /// bytes of any chunk that is not).
    pub probably_known: bool,
    /// This host's own parent snapshot holds a file at this path (of any size): a source that
    /// fetches changed chunks as deltas against it
    /// ([`SourceFile::fetch_chunks_near`]) should answer with chunk ids first, not bytes.
    pub has_previous: bool,
}

/// A tree of entries to back up, addressed by absolute path.
pub trait Source: Send + Sync {
    /// `lstat` of one path.
    fn stat(&self, path: &Path) -> io::Result<EntryMeta>;
    /// The children of a directory: name and `lstat` result (an error when it vanished).
    fn list(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>>;
    /// [`Source::list`] for a directory the previous snapshot recorded as `previous`. A source
    /// that can tell cheaply that nothing in the directory changed (the remote agent compares a
    /// digest of the listing) answers from `previous`; the default lists.
    fn list_known(
        &self,
        dir: &Path,
        previous: &Tree,
    ) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        let _ = previous;
        self.list(dir)
    }
    /// A symlink's target.
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Extended attributes (not following symlinks), sorted by name.
    fn xattrs(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Opens a regular file for reading without following a symlink.
    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>>;

    /// A hint: ingest is about to [`Source::open`] these regular files (with their listed
    /// sizes), the changed files of one directory. A source with round trips starts them
    /// now so that `open` finds the answer waiting (the remote agent: one request per file,
    /// sent together, instead of one round trip per file); the default does nothing. `open`
    /// works the same for hinted and unhinted paths, and a hinted path need not be opened.
    fn will_open(&self, files: &[OpenHint]) {
        let _ = files;
    }

    /// A hint: ingest is about to list these directories, each with the previous snapshot's
    /// tree when it has one (then with [`Source::list_known`]). A source with round trips
    /// starts the listings now; the default does nothing. Listing works the same for hinted
    /// and unhinted directories.
    fn will_list(&self, dirs: &[(PathBuf, Option<&Tree>)]) {
        let _ = dirs;
    }

    /// Ingest has built and stored the tree of `dir`: the listing it took for it is no longer
    /// held. A source that budgets the memory of listings (the remote agent's, whose sizes a
    /// client controls) stops counting it; the default does nothing.
    fn listing_done(&self, dir: &Path) {
        let _ = dir;
    }

    /// The absolute, symlink-free form of a backup path given by the user. Local sources
    /// resolve it on this machine; a remote source only normalizes it (the agent resolves
    /// and checks it on its side).
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }

    /// Called after the walk, before anything is committed: an error means the source
    /// broke off (a lost connection), so the walk's result is incomplete in ways the
    /// per-path errors do not describe, and the backup must not be committed.
    fn finish(&self) -> io::Result<()> {
        Ok(())
    }

    /// Bytes moved over a network to read this source so far, for sources that have one.
    fn transferred_bytes(&self) -> Option<u64> {
        None
    }
}
