//! The keys of an encrypted repository (FORMAT.md §Keys, §Encryption): where they are
//! looked for, unlocking the master key at open, creating them at `init`, and changing the
//! slots (`xstore key …`). The slots are `REPO/keys.json`, and for an object-store
//! repository also `keys.json` in the bucket, so that a new server attaches with a passphrase
//! or key file alone. Keys never leave this server: agents send plain ids.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xstore_format::config::Config;
use xstore_format::encryption::Encryption;
pub use xstore_keys::KeySlot;
use xstore_keys::{Argon2Params, KeyFileKey, KeySlots, MasterKey};
use zeroize::Zeroizing;

use crate::error::{Error, IoContext, Result};

/// Where the key file of a repository is when nothing names one: `$XSTORE_KEY_DIR`, else
/// `/etc/xstore/keys`.
pub const DEFAULT_KEY_DIR: &str = "/etc/xstore/keys";

/// How to open (or, at `init`, protect) an encrypted repository's master key: the
/// recovery text, a passphrase or a key file, tried in that order.
#[derive(Default)]
pub struct KeyAccess {
    /// A key file; `None`: the repository's default key file ([`default_key_file`]).
    pub key_file: Option<PathBuf>,
    /// A passphrase.
    pub passphrase: Option<Zeroizing<String>>,
    /// The master key's recovery text (`xstore key export`): opens the repository without
    /// any slot, so `key add` can make new slots when `keys.json` is lost.
    pub recovery: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for KeyAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAccess")
            .field("key_file", &self.key_file)
            .field("passphrase", &self.passphrase.as_ref().map(|_| ".."))
            .field("recovery", &self.recovery.as_ref().map(|_| ".."))
            .finish()
    }
}

impl KeyAccess {
    /// From the environment, as unattended jobs run: `XSTORE_KEY_FILE` (a path),
    /// `XSTORE_PASSPHRASE`, or `XSTORE_PASSPHRASE_FILE` (its first line), and
    /// `XSTORE_RECOVERY_FILE` (a file holding the recovery text).
    pub fn from_env() -> Result<KeyAccess> {
        let key_file = std::env::var_os("XSTORE_KEY_FILE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let passphrase = match (
            std::env::var("XSTORE_PASSPHRASE").ok(),
            std::env::var_os("XSTORE_PASSPHRASE_FILE"),
        ) {
            (Some(p), _) if !p.is_empty() => Some(Zeroizing::new(p)),
            (_, Some(file)) if !file.is_empty() => {
                let path = PathBuf::from(file);
                Some(read_passphrase_file(&path)?)
            }
            _ => None,
        };
        let recovery = match std::env::var_os("XSTORE_RECOVERY_FILE").filter(|f| !f.is_empty()) {
            Some(file) => {
                let path = PathBuf::from(file);
                Some(Zeroizing::new(std::fs::read_to_string(&path).at(&path)?))
            }
            None => None,
        };
        Ok(KeyAccess {
            key_file,
            passphrase,
            recovery,
        })
    }
}

/// The first line of a passphrase file (without its line break).
pub fn read_passphrase_file(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(std::fs::read_to_string(path).at(path)?);
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: the passphrase file is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_string()))
}

/// The key file of repository `repository_id` when none is named:
/// `$XSTORE_KEY_DIR/<id>.key`, else `/etc/xstore/keys/<id>.key`.
pub fn default_key_file(repository_id: &str) -> PathBuf {
    let dir = std::env::var_os("XSTORE_KEY_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_KEY_DIR), PathBuf::from);
    dir.join(format!("{repository_id}.key"))
}

/// The key slots of the repository at `root` (`keys.json`).
pub fn read_slots(root: &Path) -> Result<KeySlots> {
    let path = crate::layout::key_slots(root);
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository {
                path: root.to_path_buf(),
                reason: "encrypted, but keys.json is missing: copy it from the bucket or a \
                         backup of this directory, or open with the recovery text \
                         (XSTORE_RECOVERY_FILE) and `xstore key add` new slots"
                    .into(),
            })
        }
        other => other.at(&path)?,
    };
    KeySlots::decode(&bytes).map_err(|source| Error::Corrupt { path, source })
}

/// The sealing of the repository `config` describes: plain, or keyed and encrypted with the
/// master key `access` unlocks from the slots in `root`.
pub(crate) fn encryption_for(
    root: &Path,
    config: &Config,
    access: &KeyAccess,
) -> Result<Encryption> {
    if config.encryption.is_none() {
        return Ok(Encryption::Plain);
    }
    let master = unlock(root, config, access)?;
    Ok(Encryption::Encrypted(Arc::new(master.repository_keys())))
}

/// The `config` and sealing of a repository known only by its bytes (`config`, and the key
/// slots of an encrypted one), as a sync source sends them: both decoded as untrusted input,
/// and the master key unlocked with `access`. `origin` names where they came from, in errors.
pub fn remote_encryption(
    origin: &Path,
    config: &[u8],
    key_slots: Option<&[u8]>,
    access: &KeyAccess,
) -> Result<(Config, Encryption)> {
    let config = Config::decode(config).map_err(|source| Error::Corrupt {
        path: origin.join("config"),
        source,
    })?;
    if config.encryption.is_none() {
        return Ok((config, Encryption::Plain));
    }
    let slots_path = crate::layout::key_slots(origin);
    let bytes = key_slots.ok_or_else(|| Error::NotARepository {
        path: slots_path.clone(),
        reason: "the repository is encrypted but sent no key slots".into(),
    })?;
    let slots = KeySlots::decode(bytes).map_err(|source| Error::Corrupt {
        path: slots_path,
        source,
    })?;
    let master = unlock_slots(origin, &slots, &config, access)?;
    let enc = Encryption::Encrypted(Arc::new(master.repository_keys()));
    Ok((config, enc))
}

/// The master key of the encrypted repository at `root`, from a passphrase or key file,
/// checked against the key id in `config`.
pub fn unlock(root: &Path, config: &Config, access: &KeyAccess) -> Result<MasterKey> {
    if let Some(text) = &access.recovery {
        let master = MasterKey::from_recovery_text(text).map_err(|source| Error::Key {
            path: PathBuf::from("recovery text"),
            source,
        })?;
        check_key_id(&master, config, &PathBuf::from("recovery text"))?;
        return Ok(master);
    }
    unlock_slots(root, &read_slots(root)?, config, access)
}

/// `master` is the key `config` names.
fn check_key_id(master: &MasterKey, config: &Config, source: &Path) -> Result<()> {
    let want = config
        .encryption
        .as_ref()
        .map(|e| e.key_id.as_str())
        .unwrap_or_default();
    if master.key_id() != want {
        return Err(Error::ConfigMismatch {
            path: source.to_path_buf(),
            reason: format!(
                "opens master key {} but config names {want}: it is not this repository's key",
                master.key_id()
            ),
        });
    }
    Ok(())
}

/// [`unlock`] with the slots `slots` (the bucket's, when attaching).
pub(crate) fn unlock_slots(
    root: &Path,
    slots: &KeySlots,
    config: &Config,
    access: &KeyAccess,
) -> Result<MasterKey> {
    let slots_path = crate::layout::key_slots(root);
    let key_error = |source| Error::Key {
        path: slots_path.clone(),
        source,
    };
    let master = match (&access.passphrase, &access.key_file) {
        (Some(p), _) => slots
            .unlock_with_passphrase(p.as_bytes())
            .map_err(key_error)?,
        (None, file) => {
            let file = file
                .clone()
                .unwrap_or_else(|| default_key_file(&config.repository_id));
            let key = read_key_file(&file).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    Error::NoKey {
                        repo: root.to_path_buf(),
                        key_file: file.clone(),
                    }
                }
                other => other,
            })?;
            slots.unlock_with_key_file(&key).map_err(key_error)?
        }
    };
    check_key_id(&master, config, &slots_path)?;
    Ok(master)
}

/// Reads a key file.
pub fn read_key_file(path: &Path) -> Result<KeyFileKey> {
    let bytes = Zeroizing::new(std::fs::read(path).at(path)?);
    KeyFileKey::decode(&bytes).map_err(|source| Error::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// The key file at `path`: read when it exists (one key file may open many repositories),
/// else created with new random bytes, mode 0600, in a 0700 directory. Returns the key and
/// whether it was created.
pub fn ensure_key_file(path: &Path) -> Result<(KeyFileKey, bool)> {
    match read_key_file(path) {
        Ok(key) => return Ok((key, false)),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let key = KeyFileKey::generate().map_err(|source| Error::Key {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_private_dir_all(dir)?;
    }
    // Whole or absent after a crash (a temporary, then a hard link that never replaces a key
    // file another process made meanwhile): a half-written key file would refuse every open.
    crate::fsutil::write_new_private(path, key.encode().as_bytes())?;
    Ok((key, true))
}

/// The slots of a new encrypted repository: one key-file slot, and a passphrase slot when
/// `access` has a passphrase. Returns them with the master key, the key file's path and
/// whether that file was created.
pub(crate) fn new_keys(
    repository_id: &str,
    access: &KeyAccess,
    now_ns: i64,
) -> Result<(MasterKey, KeySlots, PathBuf, bool)> {
    let key_error = |source| Error::Key {
        path: PathBuf::from("keys.json"),
        source,
    };
    let master = MasterKey::generate().map_err(key_error)?;
    let file = access
        .key_file
        .clone()
        .unwrap_or_else(|| default_key_file(repository_id));
    let (key, created) = ensure_key_file(&file)?;
    let label = format!("key file {}", file.display());
    let mut slots = KeySlots::with_key_file(&master, &key, &label, now_ns).map_err(key_error)?;
    if let Some(p) = &access.passphrase {
        slots
            .add_passphrase(
                &master,
                p.as_bytes(),
                "passphrase",
                Argon2Params::DEFAULT,
                now_ns,
            )
            .map_err(key_error)?;
    }
    Ok((master, slots, file, created))
}

/// A change to the key slots (`xstore key add|remove|passwd`).
#[derive(Debug)]
pub enum SlotChange {
    /// A passphrase slot.
    AddPassphrase {
        /// The new passphrase.
        passphrase: Zeroizing<String>,
        /// Its label.
        label: String,
    },
    /// A key-file slot for the file at this path (created when missing).
    AddKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its label.
        label: String,
    },
    /// Removes a slot (never the last one).
    Remove(u32),
    /// Replaces the passphrase slot that `old` opens by one for `new`.
    ChangePassphrase {
        /// The current passphrase.
        old: Zeroizing<String>,
        /// The new one.
        new: Zeroizing<String>,
    },
}

/// What a [`SlotChange`] did.
#[derive(Debug)]
pub enum SlotChanged {
    /// The id of the slot added (and, for a key file, whether the file was created).
    Added {
        /// The new slot's id.
        id: u32,
        /// A key file created for it.
        created_key_file: Option<PathBuf>,
    },
    /// The slot removed.
    Removed(KeySlot),
    /// The passphrase slot replaced, and its successor.
    Replaced {
        /// The old slot's id.
        old: u32,
        /// The new slot's id.
        new: u32,
    },
}

impl crate::repo::Repository {
    /// The key slots (`xstore key list`); an unencrypted repository has none and is an error.
    pub fn key_slots(&self) -> Result<Vec<KeySlot>> {
        self.require_encrypted()?;
        Ok(read_slots(self.path())?.slots)
    }

    fn require_encrypted(&self) -> Result<()> {
        if self.config().encryption.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{}: the repository is not encrypted, so it has no keys",
                self.path().display()
            )));
        }
        Ok(())
    }

    /// Applies `change` to the key slots, unlocking with `access` (a slot can only be added
    /// by someone who holds a key). Writes `keys.json` atomically, and to the bucket first
    /// for an object-store repository (a bucket without the new slot cannot be attached
    /// with it). Needs the writer lock.
    pub fn change_key_slots(&self, access: &KeyAccess, change: SlotChange) -> Result<SlotChanged> {
        self.require_writable()?;
        self.require_encrypted()?;
        let root = self.path();
        let path = crate::layout::key_slots(root);
        let key_error = |source| Error::Key {
            path: path.clone(),
            source,
        };
        // A lost `keys.json` is made again from the recovery text's key.
        let mut slots = match read_slots(root) {
            Err(Error::NotARepository { .. }) if access.recovery.is_some() => KeySlots {
                version: xstore_keys::slots::SLOTS_VERSION,
                slots: Vec::new(),
            },
            other => other?,
        };
        let now = crate::clock::now_ns();
        let changed = match change {
            SlotChange::AddPassphrase { passphrase, label } => {
                let master = unlock(root, self.config(), access)?;
                let id = slots
                    .add_passphrase(
                        &master,
                        passphrase.as_bytes(),
                        &label,
                        Argon2Params::DEFAULT,
                        now,
                    )
                    .map_err(key_error)?;
                SlotChanged::Added {
                    id,
                    created_key_file: None,
                }
            }
            SlotChange::AddKeyFile { path: file, label } => {
                let master = unlock(root, self.config(), access)?;
                let (key, created) = ensure_key_file(&file)?;
                let id = slots
                    .add_key_file(&master, &key, &label, now)
                    .map_err(key_error)?;
                SlotChanged::Added {
                    id,
                    created_key_file: created.then_some(file),
                }
            }
            SlotChange::Remove(id) => {
                // Whoever removes a slot must hold a key: a slot file emptied by someone
                // without one would lose every backup.
                unlock(root, self.config(), access)?;
                SlotChanged::Removed(slots.remove(id).map_err(key_error)?)
            }
            SlotChange::ChangePassphrase { old, new } => {
                let opener = KeyAccess {
                    passphrase: Some(old.clone()),
                    ..KeyAccess::default()
                };
                let master = unlock(root, self.config(), &opener)?;
                let old_id = slots.passphrase_slot(old.as_bytes()).map_err(key_error)?;
                let label = slots
                    .slots
                    .iter()
                    .find(|s| s.id == old_id)
                    .map(|s| s.label.clone())
                    .unwrap_or_default();
                let new_id = slots
                    .add_passphrase(&master, new.as_bytes(), &label, Argon2Params::DEFAULT, now)
                    .map_err(key_error)?;
                slots.remove(old_id).map_err(key_error)?;
                SlotChanged::Replaced {
                    old: old_id,
                    new: new_id,
                }
            }
        };
        self.write_slots(&slots)?;
        Ok(changed)
    }

    /// Writes `keys.json`: to the bucket first (object-store repositories), then here.
    fn write_slots(&self, slots: &KeySlots) -> Result<()> {
        let bytes = slots.encode();
        if let Some(location) = self.store_location() {
            crate::storage::open_s3(&location, None, self.encryption())?
                .put_file(crate::layout::KEY_SLOTS, &bytes)?;
        }
        crate::fsutil::write_atomic(&crate::layout::key_slots(self.path()), &bytes)
    }

    /// The master key's recovery text (`xstore key export`), after unlocking with `access`.
    pub fn recovery_text(&self, access: &KeyAccess) -> Result<Zeroizing<String>> {
        self.require_encrypted()?;
        Ok(unlock(self.path(), self.config(), access)?.to_recovery_text())
    }
}
