//! Creating and opening a repository: the writer lock, the config and its fingerprint in
//! the index, then recovery (writable) or the readable index (read-only).

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use xstore_chunker::ChunkerParams;

use super::lock::WriterLock;
use super::{recovery, Repository};
use crate::clock::now_ns;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::index::Index;
use crate::storage::S3Location;
use xstore_format::config::{ChunkerConfig, Config, InitOptions, FORMAT_VERSION};

impl Repository {
    /// Creates a repository in `path` (which must be missing or empty) and opens it writable.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<Repository> {
        refuse_non_empty(path)?;
        let config = new_config(opts)?;
        create_local(path, &config, None, opts)?;
        Repository::open(path)
    }

    pub(crate) fn from_parts(
        path: &Path,
        config: Config,
        params: ChunkerParams,
        index: Index,
        lock: Option<WriterLock>,
        storage: std::sync::Arc<dyn crate::storage::PackStorage>,
        lease: Option<crate::storage::lease::WriterLease>,
    ) -> Repository {
        Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            lock,
            storage,
            lease,
            write_state: Mutex::new(Default::default()),
        }
    }

    pub(crate) fn load_config(path: &Path) -> Result<(Config, ChunkerParams)> {
        let cfg_path = crate::layout::config(path);
        let bytes = match fs::read(&cfg_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotARepository {
                    path: path.to_path_buf(),
                    reason: "not an xstore repository (no config file)".into(),
                })
            }
            Err(e) => return Err(e).at(&cfg_path),
        };
        let config = Config::decode(&bytes).map_err(|source| Error::Corrupt {
            path: cfg_path.clone(),
            source,
        })?;
        let params = config.chunker_params().map_err(|source| Error::Corrupt {
            path: cfg_path,
            source,
        })?;
        Ok((config, params))
    }

    /// Opens writable: takes the writer lock and runs crash recovery.
    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_waiting(path, std::time::Duration::ZERO)
    }

    /// Like [`Repository::open`], but waits up to `wait` for another writer to finish
    /// (cron jobs: a gc that starts while a pull runs waits instead of failing).
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Repository> {
        let (config, params) = Self::load_config(path)?;
        // A repository made before it was private becomes private at its next write.
        super::access::RepoAccess::load(path)?.apply_to_root(path)?;
        let deadline = std::time::Instant::now() + wait;
        let lock = loop {
            match WriterLock::acquire(&crate::layout::locks(path)) {
                Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                other => break other?,
            }
        };
        let (storage, lease) = crate::storage::open_for_writing(path, lease_holder(path))?;
        recovery::finish_index_swap(path)?;
        let index = Index::open(&crate::layout::index(path), false)?;
        check_config_matches(path, &config, &index, true)?;
        let repo = Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            lock: Some(lock),
            storage,
            lease,
            write_state: Mutex::new(Default::default()),
        };
        repo.recover()?;
        Ok(repo)
    }

    /// Opens read-only, without the writer lock. Sees the index as of opening.
    pub fn open_read_only(path: &Path) -> Result<Repository> {
        let (config, params) = Self::load_config(path)?;
        let index = Index::open(&recovery::readable_index_dir(path), true)?;
        check_config_matches(path, &config, &index, false)?;
        Ok(Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            lock: None,
            storage: crate::storage::open(path)?,
            lease: None,
            write_state: Mutex::new(Default::default()),
        })
    }
}

/// Who holds a writer lease: this process, host and repository directory.
pub(crate) fn lease_holder(path: &Path) -> String {
    format!(
        "pid {} on host {} ({})",
        std::process::id(),
        crate::fsutil::local_hostname(),
        path.display()
    )
}

pub(crate) fn refuse_non_empty(path: &Path) -> Result<()> {
    if path.exists() {
        let mut it = fs::read_dir(path).at(path)?;
        if it.next().is_some() {
            return Err(Error::AlreadyExists(path.to_path_buf()));
        }
    }
    Ok(())
}

/// A new repository's config: a random id, `opts`' chunker and packs, validated.
pub(crate) fn new_config(opts: &InitOptions) -> Result<Config> {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| Error::System {
        what: "random bytes for the repository id",
        reason: e.to_string(),
    })?;
    let config = Config {
        format_version: FORMAT_VERSION,
        repository_id: xstore_format::bytes::to_hex(&id),
        chunker: ChunkerConfig {
            algorithm: xstore_chunker::ALGORITHM.into(),
            min: opts.chunker.min(),
            avg: opts.chunker.avg(),
            max: opts.chunker.max(),
        },
        compression: "zstd".into(),
        compression_level: opts.compression_level,
        pack_size: opts.pack_size,
        created_ns: now_ns(),
    };
    Config::decode(&config.encode()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(config)
}

/// The repository directory: its folders, an empty index, `store.toml` when the packs are
/// in an object store, and `config` last.
pub(crate) fn create_local(
    path: &Path,
    config: &Config,
    location: Option<&S3Location>,
    opts: &InitOptions,
) -> Result<()> {
    let access = super::access::RepoAccess {
        group: opts.group.clone(),
    };
    // An unknown group fails before anything is created.
    access.gid()?;
    // Validated before anything is created: a refused init leaves no directory behind.
    // Private from the first moment: the repository directory gets its mode before
    // anything is put in it.
    fs::create_dir_all(path).at(path)?;
    access.apply_to_root(path)?;
    access.record(path)?;
    for dir in crate::layout::init_dirs(path) {
        fs::create_dir_all(&dir).at(&dir)?;
    }
    if let Some(location) = location {
        crate::storage::write_s3_location(path, location)?;
    }
    // The index is created before `config` is written: `config` is the marker that makes
    // the directory a repository, so a crash during init leaves no half repository.
    drop(Index::create(&crate::layout::index(path))?);
    fsutil::write_atomic(&crate::layout::config(path), &config.encode())
}

/// The chunker and identity the index was built for, as stored in its default column family.
pub(crate) fn config_fingerprint(config: &Config) -> Vec<u8> {
    format!(
        "repository {} chunker {} min {} avg {} max {}",
        config.repository_id,
        config.chunker.algorithm,
        config.chunker.min,
        config.chunker.avg,
        config.chunker.max
    )
    .into_bytes()
}

/// The error for a `config` whose fingerprint `want` differs from the index's `have`.
pub(crate) fn config_mismatch(path: &Path, want: &[u8], have: &[u8]) -> Error {
    Error::ConfigMismatch {
        path: crate::layout::config(path),
        reason: format!(
            "says \"{}\" but the repository was created with \"{}\"; restore the original config",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(have)
        ),
    }
}

pub(crate) const CONFIG_KEY: &[u8] = b"config";

/// Chunk boundaries are part of the format: a `config` whose chunker parameters (or id) differ
/// from those the index was built with would cut new files differently and is refused. A
/// writable open records the fingerprint when an older index has none.
fn check_config_matches(path: &Path, config: &Config, index: &Index, writable: bool) -> Result<()> {
    let want = config_fingerprint(config);
    match index.meta(CONFIG_KEY)? {
        Some(have) if have == want => Ok(()),
        Some(have) => Err(config_mismatch(path, &want, &have)),
        None if writable => index.set_meta(CONFIG_KEY, &want),
        None => Ok(()),
    }
}
