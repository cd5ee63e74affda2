//! Creating a repository in an object-store bucket, or attaching to the one already there
//! (its index rebuilt from the bucket's packs by `repair index`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::repo::open::{create_local, new_config, refuse_non_empty};
use crate::repo::Repository;
use crate::storage::{PackStorage, S3Location};
use xstore_format::config::{Config, InitOptions};

/// What [`Repository::init_s3`] did.
#[derive(Debug)]
pub enum S3Init {
    /// A new repository in an empty bucket prefix.
    Created,
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
    ) -> Result<(Repository, S3Init)> {
        refuse_non_empty(path)?;
        let store = crate::storage::open_s3(location, None)?;
        if let Some(bytes) = store.get_file("config")? {
            let config = Config::decode(&bytes).map_err(|source| Error::Corrupt {
                path: format!("{}/config", location.url()).into(),
                source,
            })?;
            create_local(path, &config, Some(location), opts)?;
            let report = Repository::repair_index(path)?;
            return Ok((Repository::open(path)?, S3Init::Attached(Box::new(report))));
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
        let config = new_config(opts)?;
        // The bucket's config first: a crash before the local one is written leaves a
        // prefix that the next init attaches to, never two repositories with one prefix.
        store.put_file("config", &config.encode())?;
        create_local(path, &config, Some(location), opts)?;
        Ok((Repository::open(path)?, S3Init::Created))
    }
}
