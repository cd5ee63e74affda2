//! The history behind the charts (FORMAT.md §Web history): what the server samples of the
//! repository every interval — its stored bytes, each account's referenced bytes against its
//! allocation — and every pull it has not seen yet (from the hosts' pull records), appended
//! as JSON lines to a root-only file. The file is bounded: past [`MAX_FILE_BYTES`] it is
//! rewritten with its newer half (a temporary, then a rename), so reading it stays cheap.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use xstore::Repository;
use xstore_fleet::Inventory;

/// Past this size the file keeps only its newer half.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The most records a chart reads.
pub const MAX_READ: usize = 200_000;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HistoryRecord {
    /// The repository at a sample.
    Repository {
        /// When, ns since the epoch.
        at_ns: i64,
        /// Bytes of pack files.
        stored_bytes: u64,
        /// File bytes of all snapshots.
        logical_bytes: u64,
    },
    /// One account at a sample.
    Account {
        /// When.
        at_ns: i64,
        /// The account.
        account: String,
        /// Stored bytes its snapshots reference (as `du` and `check-usage` count them).
        referenced_bytes: u64,
        /// Its soft allocation.
        allocation: u64,
    },
    /// A pull, once, when a sample first sees its record.
    Pull {
        /// When it finished.
        at_ns: i64,
        /// The host.
        host: String,
        /// Its account.
        account: String,
        /// `ok`, `partial` or `failed`.
        outcome: String,
        /// How long it took.
        seconds: f64,
        /// New bytes it stored.
        new_stored_bytes: u64,
    },
}

impl HistoryRecord {
    /// When the record was taken.
    pub fn at_ns(&self) -> i64 {
        match self {
            HistoryRecord::Repository { at_ns, .. }
            | HistoryRecord::Account { at_ns, .. }
            | HistoryRecord::Pull { at_ns, .. } => *at_ns,
        }
    }
}

/// The open history file.
pub struct History {
    path: PathBuf,
    file: Mutex<File>,
    /// The newest pull of each host already written.
    seen: Mutex<HashMap<String, i64>>,
}

impl History {
    /// Opens (creating it 0600) the history at `path`; the pulls it already holds are not
    /// written again.
    pub fn open(path: &Path) -> std::io::Result<History> {
        let file = crate::jsonl::open_append(path, "the fleet's history")?;
        let (records, _) = crate::jsonl::read_newest(
            path,
            |r: &HistoryRecord| matches!(r, HistoryRecord::Pull { .. }),
            MAX_READ,
        )?;
        let mut seen = HashMap::new();
        for r in records {
            if let HistoryRecord::Pull { host, at_ns, .. } = r {
                let newest = seen.entry(host).or_insert(at_ns);
                *newest = (*newest).max(at_ns);
            }
        }
        Ok(History {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            seen: Mutex::new(seen),
        })
    }

    /// Samples `repo` now; returns how many records were written.
    pub fn sample(
        &self,
        repo: &Repository,
        inventory: &Inventory,
        now_ns: i64,
    ) -> Result<usize, String> {
        let stats = repo.stats().map_err(|e| e.to_string())?;
        let mut records = vec![HistoryRecord::Repository {
            at_ns: now_ns,
            stored_bytes: stats.stored_bytes,
            logical_bytes: stats.logical_bytes,
        }];
        let usage = xstore_fleet::monitor::fleet_usage_report(repo, Some(inventory), None)
            .map_err(|e| e.to_string())?;
        records.extend(usage.accounts.iter().map(|a| HistoryRecord::Account {
            at_ns: now_ns,
            account: a.account.clone(),
            referenced_bytes: a.usage.referenced_bytes,
            allocation: a.allocation,
        }));
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for host in &inventory.hosts {
                let Ok(Some(p)) = xstore_fleet::pull::last_pull(repo, &host.name) else {
                    continue;
                };
                let newest = seen.entry(host.name.to_string()).or_insert(i64::MIN);
                if p.finished_ns > *newest {
                    *newest = p.finished_ns;
                    records.push(HistoryRecord::Pull {
                        at_ns: p.finished_ns,
                        host: host.name.to_string(),
                        account: host.account.clone(),
                        outcome: p.outcome.name().to_string(),
                        seconds: p.seconds,
                        new_stored_bytes: p.new_stored_bytes,
                    });
                }
            }
        }
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in &records {
            crate::jsonl::append(&file, &self.path, r).map_err(|e| e.to_string())?;
        }
        if file.metadata().map(|m| m.len()).unwrap_or(0) > MAX_FILE_BYTES {
            *file = self.keep_newer_half().map_err(|e| e.to_string())?;
        }
        Ok(records.len())
    }

    /// Rewrites the file with the newer half of its records; the new file, open to append.
    fn keep_newer_half(&self) -> std::io::Result<File> {
        let (records, _) =
            crate::jsonl::read_newest(&self.path, |_: &HistoryRecord| true, MAX_READ)?;
        let keep = &records[records.len() / 2..];
        let mut text = Vec::new();
        for r in keep {
            serde_json::to_writer(&mut text, r).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        xstore::fsutil::write_atomic_private(&self.path, &text)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        crate::jsonl::open_append(&self.path, "the fleet's history")
    }

    /// The records from `since_ns` on that `keep` accepts, oldest first.
    pub fn read(&self, since_ns: i64, keep: impl Fn(&HistoryRecord) -> bool) -> Vec<HistoryRecord> {
        crate::jsonl::read_newest(
            &self.path,
            |r: &HistoryRecord| r.at_ns() >= since_ns && keep(r),
            MAX_READ,
        )
        .map(|(records, _)| records)
        .unwrap_or_else(|e| {
            tracing::error!("history: {e}");
            Vec::new()
        })
    }
}
