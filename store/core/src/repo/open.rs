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
use xstore_format::config::{
    ChunkerConfig, Config, InitOptions, ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION,
};

impl Repository {
    /// Creates a repository in `path` (which must be missing or empty) and opens it writable.
    /// The repository is not encrypted (format 1): [`Repository::init_encrypted`] makes
    /// encrypted ones.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<Repository> {
        refuse_non_empty(path)?;
        let config = new_config(opts, None)?;
        create_local(path, &config, None, opts, None)?;
        Repository::open(path)
    }

    /// Creates an encrypted repository (format 2) in `path`, which must be missing or empty:
    /// a random master key, wrapped in a key-file slot (the key file is `keys.key_file`, or
    /// the default key file of the new repository's id, created 0600 when missing) and in a
    /// passphrase slot when `keys` has a passphrase. Opens it writable.
    pub fn init_encrypted(
        path: &Path,
        opts: &InitOptions,
        keys: &super::keys::KeyAccess,
    ) -> Result<(Repository, NewKeyFile)> {
        refuse_non_empty(path)?;
        let (config, slots, key_file) = new_encrypted_config(opts, keys)?;
        create_local(path, &config, None, opts, Some(&slots))?;
        let opener = super::keys::KeyAccess {
            key_file: Some(key_file.path.clone()),
            ..super::keys::KeyAccess::default()
        };
        Ok((
            Repository::open_with(path, &opener, std::time::Duration::ZERO)?,
            key_file,
        ))
    }

    /// A writable handle from the parts `repair index` opened itself: the storage comes with
    /// the object store's writer lease (none for local packs).
    pub(crate) fn from_parts(
        path: &Path,
        config: Config,
        params: ChunkerParams,
        encryption: xstore_format::encryption::Encryption,
        index: Index,
        lock: Option<WriterLock>,
        (storage, lease): (
            std::sync::Arc<dyn crate::storage::PackStorage>,
            Option<crate::storage::lease::WriterLease>,
        ),
    ) -> Repository {
        Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            encryption,
            lock,
            storage,
            lease,
            write_state: Mutex::new(Default::default()),
            bundles: Default::default(),
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

    /// Opens writable: takes the writer lock and runs crash recovery. An encrypted
    /// repository is unlocked with the keys the environment names ([`KeyAccess::from_env`],
    /// else the default key file).
    ///
    /// [`KeyAccess::from_env`]: super::keys::KeyAccess::from_env
    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_waiting(path, std::time::Duration::ZERO)
    }

    /// Like [`Repository::open`], but waits up to `wait` for another writer to finish
    /// (cron jobs: a gc that starts while a pull runs waits instead of failing).
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Repository> {
        Self::open_with(path, &super::keys::KeyAccess::from_env()?, wait)
    }

    /// Like [`Repository::open_waiting`], unlocking an encrypted repository with `keys`.
    pub fn open_with(
        path: &Path,
        keys: &super::keys::KeyAccess,
        wait: std::time::Duration,
    ) -> Result<Repository> {
        let (config, params) = Self::load_config(path)?;
        let encryption = super::keys::encryption_for(path, &config, keys)?;
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
        let (storage, lease) =
            crate::storage::open_for_writing(path, lease_holder(path), &encryption)?;
        recovery::finish_index_swap(path)?;
        let index = Index::open(&crate::layout::index(path), false)?;
        check_config_matches(path, &config, &index, true)?;
        let repo = Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            encryption,
            lock: Some(lock),
            storage,
            lease,
            write_state: Mutex::new(Default::default()),
            bundles: Default::default(),
        };
        repo.recover()?;
        Ok(repo)
    }

    /// Opens read-only, without the writer lock. Sees the index as of opening. Keys as
    /// [`Repository::open`].
    pub fn open_read_only(path: &Path) -> Result<Repository> {
        Self::open_read_only_with(path, &super::keys::KeyAccess::from_env()?)
    }

    /// Like [`Repository::open_read_only`], unlocking an encrypted repository with `keys`.
    pub fn open_read_only_with(path: &Path, keys: &super::keys::KeyAccess) -> Result<Repository> {
        let (config, params) = Self::load_config(path)?;
        let encryption = super::keys::encryption_for(path, &config, keys)?;
        let index = Index::open(&recovery::readable_index_dir(path), true)?;
        check_config_matches(path, &config, &index, false)?;
        let storage = crate::storage::open(path, &encryption)?;
        Ok(Repository {
            root: path.to_path_buf(),
            config,
            params,
            index,
            encryption,
            lock: None,
            storage,
            lease: None,
            write_state: Mutex::new(Default::default()),
            bundles: Default::default(),
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

/// The key file of a new encrypted repository: where it is, and whether `init` created it
/// (then it must be copied somewhere safe: losing every key loses every backup).
#[derive(Debug, Clone)]
pub struct NewKeyFile {
    /// Its path.
    pub path: std::path::PathBuf,
    /// Whether it was created (not an existing key file reused).
    pub created: bool,
}

/// A new encrypted repository's config and key slots (FORMAT.md §Keys).
pub(crate) fn new_encrypted_config(
    opts: &InitOptions,
    keys: &super::keys::KeyAccess,
) -> Result<(Config, xstore_keys::KeySlots, NewKeyFile)> {
    let mut config = new_config(opts, None)?;
    // The default key file is named by the repository id, so the keys come after it.
    let (master, slots, path, created) =
        super::keys::new_keys(&config.repository_id, keys, now_ns())?;
    config.format_version = ENCRYPTED_FORMAT_VERSION;
    config.encryption = Some(xstore_format::config::EncryptionConfig {
        cipher: xstore_format::config::CIPHER.into(),
        key_id: master.key_id(),
    });
    Config::decode(&config.encode()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok((config, slots, NewKeyFile { path, created }))
}

fn random_id() -> Result<String> {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| Error::System {
        what: "random bytes for the repository id",
        reason: e.to_string(),
    })?;
    Ok(xstore_format::bytes::to_hex(&id))
}

/// A new repository's config: a random id, `opts`' chunker and packs, validated; encrypted
/// (format 2) when `encryption` is given.
pub(crate) fn new_config(
    opts: &InitOptions,
    encryption: Option<xstore_format::config::EncryptionConfig>,
) -> Result<Config> {
    let config = Config {
        format_version: if encryption.is_some() {
            ENCRYPTED_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        },
        repository_id: random_id()?,
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
        encryption,
    };
    Config::decode(&config.encode()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(config)
}

/// The repository directory: its folders, an empty index, `store.toml` when the packs are
/// in an object store, the key slots of an encrypted one, and `config` last.
pub(crate) fn create_local(
    path: &Path,
    config: &Config,
    location: Option<&S3Location>,
    opts: &InitOptions,
    slots: Option<&xstore_keys::KeySlots>,
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
    if let Some(slots) = slots {
        fsutil::write_atomic(&crate::layout::key_slots(path), &slots.encode())?;
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
