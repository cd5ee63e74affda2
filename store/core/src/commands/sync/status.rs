//! What the last successful sync leaves for monitoring: `sync-status.json` (FORMAT.md §Sync
//! status), read by `check-sync` and the `xstore_sync_*` metrics.

use serde::{Deserialize, Serialize};
use xstore_format::host::HostName;
use xstore_format::snapshot::SnapshotId;

use super::values::{SyncPlan, SyncReport};
use crate::error::{Error, Result};
use crate::repo::Repository;

/// What the last successful sync left for monitoring (`sync-status.json`, FORMAT.md §Sync
/// status): per host, how the source's newest snapshot compared with this repository's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The source, as given.
    pub source: String,
    /// The source's repository id.
    pub source_id: String,
    /// When the sync ended, ns since the epoch.
    pub finished_ns: i64,
    /// Snapshots it copied.
    pub snapshots_copied: u64,
    /// Raw bytes it read from the source.
    pub bytes_read: u64,
    /// Bytes it stored here.
    pub stored_bytes: u64,
    /// Each host the sync covered.
    pub hosts: Vec<HostSync>,
}

/// One host after a sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSync {
    /// The host.
    pub host: HostName,
    /// Start of the source's newest snapshot of the host (ns since the epoch).
    pub source_newest_ns: i64,
    /// Start of this repository's newest snapshot of it, if it has one.
    pub newest_ns: Option<i64>,
}

impl SyncStatus {
    /// How far behind the source `host` may be at `now_ns`: what the sync did not copy of
    /// it, plus the time since the sync (the source may have new snapshots since). `None`:
    /// this repository holds no snapshot of a host the source has.
    pub fn lag_ns(&self, host: &HostSync, now_ns: i64) -> Option<i64> {
        let since = now_ns.saturating_sub(self.finished_ns).max(0);
        let missing = host.source_newest_ns.saturating_sub(host.newest_ns?).max(0);
        Some(since.saturating_add(missing))
    }
}

/// The longest `sync-status.json` read back.
const MAX_STATUS_BYTES: u64 = 16 << 20;

impl Repository {
    pub(super) fn record_sync_status(&self, plan: &SyncPlan, report: &SyncReport) -> Result<()> {
        let mut hosts = Vec::new();
        for (host, newest) in &plan.source_newest {
            let here = self.index.host(host)?.and_then(|h| h.latest);
            let newest_ns = match here {
                Some(id) => self.index.snapshot(&SnapshotId(id))?.map(|s| s.start_ns),
                None => None,
            };
            hosts.push(HostSync {
                host: host.clone(),
                source_newest_ns: *newest,
                newest_ns,
            });
        }
        let status = SyncStatus {
            source: plan.source.clone(),
            source_id: plan.source_id.clone(),
            finished_ns: crate::clock::now_ns(),
            snapshots_copied: report.snapshots,
            bytes_read: report.bytes_read,
            stored_bytes: report.stored_bytes,
            hosts,
        };
        let mut json = serde_json::to_vec_pretty(&status).map_err(|e| Error::Encode {
            what: "sync status",
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        crate::fsutil::write_atomic(&crate::layout::sync_status(self.path()), &json)
    }

    /// The last successful sync's status (`None` before the first), for monitoring.
    pub fn sync_status(&self) -> Result<Option<SyncStatus>> {
        let path = crate::layout::sync_status(self.path());
        let md = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        if !md.is_file() || md.len() > MAX_STATUS_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{}: not a sync status file",
                path.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                source: xstore_format::DecodeError::Invalid {
                    what: "sync status",
                    offset: 0,
                    reason: e.to_string(),
                },
            })
    }
}
