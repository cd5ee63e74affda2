//! Creating a repository in an object-store bucket, or attaching to the one already there
//! (its index rebuilt from the bucket's packs by `repair index`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::repo::keys::KeyAccess;
use crate::repo::open::{create_local, new_config, new_encrypted_config, refuse_non_empty};
use crate::repo::Repository;
use crate::storage::{PackStorage, S3Location};
use xstore_format::config::{Config, InitOptions};
use xstore_keys::KeySlots;

/// What [`Repository::init_s3`] did.
#[derive(Debug)]
pub enum S3Init {
    /// A new unencrypted repository in an empty bucket prefix.
    Created,
    /// A new encrypted repository in an empty bucket prefix, and its key file.
    CreatedEncrypted(crate::repo::open::NewKeyFile),
    /// The prefix held a repository: attached, its index rebuilt from the bucket.
    Attached(Box<super::repair::RepairReport>),
}

impl Repository {
    /// Creates a repository whose packs and `config` live in the bucket of `location`, with
    /// its index, journal and locks in `path` (missing or empty). When the bucket (under the
    /// prefix) already holds a repository, attaches to it instead: its `config` is taken from
    /// the bucket and the index is rebuilt from the packs there (`repair_index`), so a second
    /// machine can take over from one that is gone. A prefix that holds packs but no
    /// `config` is refused.
    pub fn init_s3(
        path: &Path,
        opts: &InitOptions,
        location: &S3Location,
        encryption: Option<&KeyAccess>,
    ) -> Result<(Repository, S3Init)> {
        refuse_non_empty(path)?;
        let store = crate::storage::open_s3(
            location,
            None,
            &xstore_format::encryption::Encryption::Plain,
        )?;
        if let Some(bytes) = store.get_file("config")? {
            let config = Config::decode(&bytes).map_err(|source| Error::Corrupt {
                path: format!("{}/config", location.url()).into(),
                source,
            })?;
            // An encrypted bucket carries its key slots: a passphrase or key file attaches.
            let slots = match config.encryption {
                None => None,
                Some(_) => {
                    let key_path = format!("{}/{}", location.url(), crate::layout::KEY_SLOTS);
                    let bytes = store.get_file(crate::layout::KEY_SLOTS)?.ok_or_else(|| {
                        Error::NotARepository {
                            path: key_path.clone().into(),
                            reason: "the bucket's repository is encrypted but holds no key slots"
                                .into(),
                        }
                    })?;
                    Some(KeySlots::decode(&bytes).map_err(|source| Error::Corrupt {
                        path: key_path.into(),
                        source,
                    })?)
                }
            };
            let keys = match encryption {
                Some(keys) => keys,
                None => &KeyAccess::from_env()?,
            };
            // Unlocked before anything is created: a wrong passphrase leaves no directory.
            if let Some(slots) = &slots {
                crate::repo::keys::unlock_slots(path, slots, &config, keys)?;
            }
            create_local(path, &config, Some(location), opts, slots.as_ref())?;
            let report = Repository::repair_index_with(path, keys)?;
            let repo = Repository::open_with(path, keys, std::time::Duration::ZERO)?;
            return Ok((repo, S3Init::Attached(Box::new(report))));
        }
        let packs = store.list()?;
        if let Some(first) = packs.first() {
            return Err(Error::NotARepository {
                path: location.url().into(),
                reason: format!(
                    "holds {} pack objects (for example {}) but no config: not a repository \
                     this tool can attach to; choose another prefix",
                    packs.len(),
                    store.location(&first.id)
                ),
            });
        }
        // The bucket's config first: a crash before the local one is written leaves a
        // prefix that the next init attaches to, never two repositories with one prefix.
        let Some(keys) = encryption else {
            let config = new_config(opts, None)?;
            store.put_file("config", &config.encode())?;
            create_local(path, &config, Some(location), opts, None)?;
            return Ok((Repository::open(path)?, S3Init::Created));
        };
        let (config, slots, key_file) = new_encrypted_config(opts, keys)?;
        // The slots reach the bucket before its config: a bucket with a config always has
        // the slots that open it.
        store.put_file(crate::layout::KEY_SLOTS, &slots.encode())?;
        store.put_file("config", &config.encode())?;
        create_local(path, &config, Some(location), opts, Some(&slots))?;
        let opener = KeyAccess {
            key_file: Some(key_file.path.clone()),
            ..KeyAccess::default()
        };
        let repo = Repository::open_with(path, &opener, std::time::Duration::ZERO)?;
        Ok((repo, S3Init::CreatedEncrypted(key_file)))
    }
}
