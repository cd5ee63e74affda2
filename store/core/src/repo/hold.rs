//! `gc-hold.json`: packs that `repair index` could not attribute to any snapshot. gc keeps
//! them until an operator releases them (`gc --release-held`).

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use xstore_format::pack::PackId;

/// The packs gc must keep (written by `repair index`), or none.
pub(crate) fn held_packs(root: &Path) -> Result<HashSet<PackId>> {
    let path = crate::layout::gc_hold(root);
    let bytes = match fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        other => other.at(&path)?,
    };
    let hold: Hold = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.clone(),
        source: xstore_format::DecodeError::Invalid {
            what: "gc hold",
            offset: 0,
            reason: e.to_string(),
        },
    })?;
    hold.packs
        .iter()
        .map(|h| {
            h.parse::<PackId>().map_err(|_| Error::Corrupt {
                path: path.clone(),
                source: xstore_format::DecodeError::Invalid {
                    what: "gc hold",
                    offset: 0,
                    reason: format!("bad pack id {h:?}"),
                },
            })
        })
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Hold {
    pub(crate) reason: String,
    pub(crate) created_ns: i64,
    pub(crate) unattributed_blobs: u64,
    pub(crate) packs: Vec<String>,
}
