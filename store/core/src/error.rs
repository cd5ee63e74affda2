//! Typed errors of the library. The CLI turns them into one line each.

use std::io;
use std::path::PathBuf;

use xstore_chunker::ChunkId;

pub use xstore_format::DecodeError;

/// Errors of connecting to an agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The stream ended before the agent's hello (ssh failed, or no agent at the other end).
    #[error("the connection closed before the agent's hello")]
    Closed,
    /// The agent refused the session.
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The agent's hello was not valid.
    #[error("not an xstore agent, or an incompatible one: {0}")]
    Protocol(String),
    /// Reading or writing the stream failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
}

/// The error of a lock that a panicking thread held ([`Error::Poisoned`]).
pub(crate) fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Poisoned
}

/// ` (ssh: LINE)` for the last line ssh wrote, without ssh's own `ssh: ` prefix (said once).
pub fn ssh_detail(line: Option<&str>) -> String {
    line.map(|l| format!(" (ssh: {})", l.strip_prefix("ssh: ").unwrap_or(l)))
        .unwrap_or_default()
}

/// Errors of repository operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The object store refused or failed a request (after its retries).
    #[error("{endpoint}: {key}: {reason}")]
    Storage {
        /// The store's endpoint and bucket, `URL (bucket B)`.
        endpoint: String,
        /// The object key.
        key: String,
        /// What failed: the status and the store's message, or the transport error.
        reason: String,
        /// Whether the object does not exist (a 404), as opposed to a failure.
        not_found: bool,
    },
    /// `store.toml` or a credentials file it names is invalid or unsafe to read.
    #[error("{path}: {reason}")]
    StoreConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file in the repository could not be decoded.
    #[error("{path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// A blob could not be decoded or did not hash to its id.
    #[error("blob {id} in pack {pack}: {source}")]
    CorruptBlob {
        /// The blob id.
        id: ChunkId,
        /// The pack holding it (hex).
        pack: String,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// The index has no entry for a blob that something references.
    #[error("blob {0} is not in the index")]
    MissingBlob(ChunkId),
    /// The index database reported an error.
    #[error("index {path}: {message}")]
    Index {
        /// The index directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// The index cannot be trusted for writing: it is missing, empty, or older than the packs.
    /// Writing through it could disown committed data, so only `repair index` may proceed.
    #[error("{path}: {reason}; run `xstore repair index` (nothing was changed)")]
    IndexNeedsRepair {
        /// The index directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `config` does not match what the repository was created with.
    #[error("{path}: {reason}")]
    ConfigMismatch {
        /// The config file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Not an xstore repository, or one of an unsupported version.
    #[error("{path}: {reason}")]
    NotARepository {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key slot did not open, or a key could not be made or read.
    #[error("{path}: {source}")]
    Key {
        /// The slot file (or key file).
        path: PathBuf,
        /// What failed.
        #[source]
        source: xstore_keys::KeyError,
    },
    /// An encrypted repository was opened without a key, and its default key file is missing.
    #[error("{repo}: encrypted, and the key file {key_file} does not exist (name one with --key-file or XSTORE_KEY_FILE, or give XSTORE_PASSPHRASE)")]
    NoKey {
        /// The repository.
        repo: PathBuf,
        /// The key file looked for.
        key_file: PathBuf,
    },
    /// `init` on a directory that already holds something.
    #[error("{0}: already exists and is not empty")]
    AlreadyExists(PathBuf),
    /// Another process holds the writer lock.
    #[error("repository is locked by {holder}")]
    Locked {
        /// "pid N on host H since T", as written by the holder.
        holder: String,
    },
    /// The object store's writer lease was taken by another server, or ran out unrenewed,
    /// while this one wrote: what was about to be written or deleted was not.
    #[error("{lease}: {reason}; {withheld}")]
    LeaseLost {
        /// `s3://bucket/prefix/lease`.
        lease: String,
        /// Who took it, or when it ran out.
        reason: String,
        /// What this server therefore did not do ("nothing was committed").
        withheld: &'static str,
    },
    /// A snapshot reference that matches nothing, or more than one snapshot.
    #[error("snapshot {reference}: {reason}")]
    SnapshotRef {
        /// What the user gave.
        reference: String,
        /// Why it does not resolve.
        reason: String,
    },
    /// A path that does not exist in a snapshot.
    #[error("{path}: not found in snapshot {snapshot}")]
    PathNotFound {
        /// The path asked for.
        path: String,
        /// The snapshot (short id).
        snapshot: String,
    },
    /// The reader a request acts for may not read what it asked for (a dump of a file it
    /// may not read, or of a directory it may not list).
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    /// An invalid argument (host name, exclude pattern, chunker parameters…).
    #[error("{0}")]
    InvalidArgument(String),
    /// The system refused what an operation needs (a thread, random bytes): nothing was
    /// committed.
    #[error("{what}: {reason}")]
    System {
        /// What was asked for.
        what: &'static str,
        /// The system's answer.
        reason: String,
    },
    /// A value of this program could not be encoded (a bug): nothing was written.
    #[error("encoding {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// A write was asked of a handle opened with [`crate::Repository::open_read_only`].
    #[error("repository was opened read-only")]
    ReadOnly,
    /// A thread panicked while holding an internal lock of this handle; the handle must
    /// be dropped (nothing uncommitted was written).
    #[error("internal lock poisoned by a panicking thread")]
    Poisoned,
    /// An internal invariant did not hold (a bug): the operation stopped before committing.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// `cat` or a read of file content was asked of an entry that is not a regular file.
    #[error("{0}: not a regular file")]
    NotAFile(String),
    /// A retention plan no longer fits the repository (a snapshot it names is gone, or it
    /// would expire a pinned one): plan again.
    #[error("retention plan {reason}")]
    StalePlan {
        /// What no longer fits.
        reason: String,
    },
    /// A pull could not start a session with its agent.
    #[error("pull {host}: {source}{}", ssh_detail(ssh.as_deref()))]
    Connect {
        /// The host.
        host: String,
        /// The last line ssh wrote to stderr, when there was one.
        ssh: Option<String>,
        /// What went wrong in the handshake.
        #[source]
        source: RemoteError,
    },
    /// A pull could not start or complete.
    #[error("pull {host}: {reason}")]
    Pull {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// A sync source's session failed or broke the protocol (what the source sent, or that
    /// it sent nothing).
    #[error("{0}")]
    SyncSession(String),
    /// Expiry would drop a reference count below zero: the index disagrees with the trees.
    #[error("blob {0}: reference count would drop below zero (the index is inconsistent; run `xstore check`, then `xstore repair index`)")]
    RefcountUnderflow(ChunkId),
    /// A failure only a backup has, met inside the core: [`Repository::backup`] returns it
    /// as a [`BackupError`].
    ///
    /// [`Repository::backup`]: crate::Repository::backup
    #[error(transparent)]
    Backup(Box<BackupError>),
    /// A failure only a sync has, met inside the core: [`Repository::sync`] returns it as a
    /// [`SyncError`].
    ///
    /// [`Repository::sync`]: crate::Repository::sync
    #[error(transparent)]
    Sync(Box<SyncError>),
    /// Writing would eat into the free-space reserve that only forget, gc and repair use.
    #[error("{path}: {free} bytes free, the reserve for forget, gc and repair is {reserve}; nothing was committed (free space with `xstore forget` and `xstore gc`)")]
    ReserveReached {
        /// The repository.
        path: PathBuf,
        /// Bytes free on its filesystem.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// A retention request that cannot be planned.
    #[error(transparent)]
    Retention(#[from] xstore_retention::RetentionError),
    /// Restore refused to write somewhere (outside the target, over a symlink…).
    #[error("restore refused {path}: {reason}")]
    Unsafe {
        /// The path inside the target.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Failures of a backup ([`Repository::backup`] and the pulls built on it). What every
/// repository operation can meet (I/O, corruption, the object store, locks) is
/// [`BackupError::Repository`].
///
/// [`Repository::backup`]: crate::Repository::backup
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// A backup source root that cannot be read at all.
    #[error("backup source {path}: {source}")]
    Source {
        /// The root path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The source broke off during a backup (a lost or timed-out agent connection); nothing
    /// was committed.
    #[error("the source broke off ({reason}); no snapshot was committed")]
    SourceBroken {
        /// What happened.
        reason: String,
    },
    /// The data shared by concurrent backups of one account was lost (a pack could not be
    /// stored or committed): no backup relying on it commits.
    #[error("the chunks shared with this account's other pulls were not stored: {reason}")]
    SharedIngest {
        /// The first failure.
        reason: String,
    },
    /// A blob would be referenced as another kind than the repository holds it as: a file's
    /// chunk whose bytes equal a tree or chunk list, or a tree whose bytes equal a file's
    /// chunk. Never deduplicated: an edge of the wrong kind would break reference counting.
    #[error("blob {id}: stored as {have}, referenced as {want}; not deduplicated")]
    KindClash {
        /// The blob.
        id: ChunkId,
        /// The kind the repository (or this backup) holds it as.
        have: &'static str,
        /// The kind the new reference needs.
        want: &'static str,
    },
    /// The clock reads earlier than the host's newest snapshot.
    #[error("host {host}: the clock ({now}) is earlier than its newest snapshot ({newest}); fix the clock: nothing was committed")]
    ClockBehind {
        /// The host.
        host: xstore_format::host::HostName,
        /// When its newest snapshot started (UTC).
        newest: String,
        /// The clock's time (UTC).
        now: String,
    },
    /// A backup would add more stored bytes than a limit allows (a pull's cap, an
    /// account's hard limit).
    #[error("{what} would be crossed; nothing was committed")]
    OverBudget {
        /// The limit, in words.
        what: String,
        /// Its size in bytes.
        limit: u64,
    },
    /// A failure of the repository, not of this backup's input.
    #[error(transparent)]
    Repository(Error),
}

impl From<Error> for BackupError {
    fn from(e: Error) -> Self {
        match e {
            Error::Backup(b) => *b,
            other => BackupError::Repository(other),
        }
    }
}

impl From<BackupError> for Error {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Repository(e) => e,
            other => Error::Backup(Box::new(other)),
        }
    }
}

/// Failures of a sync ([`Repository::sync`]): what the source sent does not hold together,
/// or the repository failed. Nothing of the snapshot being copied is committed.
///
/// [`Repository::sync`]: crate::Repository::sync
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Source and destination are one repository.
    #[error("the source {location} is this repository (same repository id); nothing to sync")]
    SameRepository {
        /// The source.
        location: String,
    },
    /// Reading from the source failed.
    #[error("source {location}: {source}")]
    Source {
        /// The source.
        location: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A file's chunk whose bytes have another length than the file's entry says.
    #[error("source {location}: blob {id} is {found} bytes, its file's entry says {claimed}; nothing of snapshot {snapshot} was committed")]
    LengthMismatch {
        /// The source.
        location: String,
        /// The snapshot being copied.
        snapshot: String,
        /// The blob, as the source names it.
        id: ChunkId,
        /// Length the entry claims.
        claimed: u32,
        /// Length of the bytes.
        found: usize,
    },
    /// A blob would be referenced as another kind than this repository holds it as (or the
    /// bytes of a file's chunk are a tree or chunk-list encoding): never deduplicated.
    #[error("blob {id}: held here as {have}, the source references it as {want}; nothing of snapshot {snapshot} was committed")]
    KindClash {
        /// The snapshot being copied.
        snapshot: String,
        /// The blob, as this repository names it.
        id: ChunkId,
        /// The kind held here.
        have: &'static str,
        /// The kind the source's reference needs.
        want: &'static str,
    },
    /// A failure of this repository.
    #[error(transparent)]
    Repository(Error),
}

impl From<Error> for SyncError {
    fn from(e: Error) -> Self {
        match e {
            Error::Sync(b) => *b,
            other => SyncError::Repository(other),
        }
    }
}

impl From<SyncError> for Error {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Repository(e) => e,
            other => Error::Sync(Box::new(other)),
        }
    }
}

/// Failures of a restore ([`Repository::restore`]): the target refused, or the repository.
///
/// [`Repository::restore`]: crate::Repository::restore
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A path in the target the restore will not write: outside the target, reached
    /// through a symlink, or in the way of a directory.
    #[error("restore refused {path}: {reason}")]
    Refused {
        /// The path inside the target.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A failure of the repository (a missing or damaged blob included) or of writing the
    /// target.
    #[error(transparent)]
    Repository(Error),
}

impl From<Error> for RestoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unsafe { path, reason } => RestoreError::Refused { path, reason },
            other => RestoreError::Repository(other),
        }
    }
}

impl From<RestoreError> for Error {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::Refused { path, reason } => Error::Unsafe { path, reason },
            RestoreError::Repository(e) => e,
        }
    }
}

/// Failures of planning or carrying out a gc ([`Repository::plan_gc`], [`Repository::gc`]).
///
/// [`Repository::plan_gc`]: crate::Repository::plan_gc
/// [`Repository::gc`]: crate::Repository::gc
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// The dead-bytes threshold asked for is not a percentage.
    #[error("--max-dead {0}% is not within 0..100%")]
    MaxDead(f64),
    /// Another writer took the repository's lease while gc ran: gc stopped at once.
    #[error(transparent)]
    LeaseLost(Error),
    /// A failure of the repository.
    #[error(transparent)]
    Repository(Error),
}

impl From<Error> for GcError {
    fn from(e: Error) -> Self {
        match e {
            e @ Error::LeaseLost { .. } => GcError::LeaseLost(e),
            other => GcError::Repository(other),
        }
    }
}

impl From<GcError> for Error {
    fn from(e: GcError) -> Self {
        match e {
            GcError::MaxDead(_) => Error::InvalidArgument(e.to_string()),
            GcError::LeaseLost(e) | GcError::Repository(e) => e,
        }
    }
}

impl Error {
    /// Whether this is a read of something that does not exist (a missing file or object),
    /// as opposed to a failure to read what exists.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            Error::Storage { not_found, .. } => *not_found,
            _ => false,
        }
    }
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ssh_detail;

    #[test]
    fn ssh_is_named_once_before_its_own_line() {
        assert_eq!(
            ssh_detail(Some("ssh: connect to host h port 22: Connection refused")),
            " (ssh: connect to host h port 22: Connection refused)"
        );
        assert_eq!(
            ssh_detail(Some("Permission denied (publickey).")),
            " (ssh: Permission denied (publickey).)"
        );
        assert_eq!(ssh_detail(None), "");
    }
}
