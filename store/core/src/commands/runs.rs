//! The last run of each maintenance job (FORMAT.md §Run records): `runs/<job>.json`, replaced
//! atomically at the end of every run, successful or not, so the web front's operator page
//! and monitoring can say when gc or a rotation last ran and how it went. A record is a
//! report, never an input of any operation: a missing or damaged one changes nothing else.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::Repository;

/// The longest run record read back, in bytes (a damaged file is skipped, not read whole).
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// How one run of a job went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The job: `gc`, `rotate-daily`, `verify`, … (`[a-z0-9-]`, at most 64 bytes).
    pub job: String,
    /// When it started, ns since the epoch.
    pub started_ns: i64,
    /// When it ended.
    pub finished_ns: i64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it did, or why it failed, in one line (at most 1,024 bytes).
    pub summary: String,
}

fn valid_job(job: &str) -> bool {
    !job.is_empty()
        && job.len() <= 64
        && job
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Repository {
    /// Keeps `record` as its job's last run (`runs/<job>.json`, replaced atomically).
    pub fn record_run(&self, record: &RunRecord) -> Result<()> {
        if !valid_job(&record.job) {
            return Err(Error::InvalidArgument(format!(
                "run record job {:?}: lowercase letters, digits and -",
                record.job
            )));
        }
        let mut record = record.clone();
        record.summary = crate::text::capped(&record.summary, 1024).into_owned();
        let dir = crate::layout::runs(self.path());
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            crate::fsutil::sync_dir(self.path())?;
        }
        let mut json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Encode {
            what: "run record",
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        crate::fsutil::write_atomic(&crate::layout::run_record(self.path(), &record.job), &json)
    }

    /// The last run of every job that recorded one, by job name. Records that do not read
    /// (damaged, too long, a name that is not a job's) are skipped with a warning.
    pub fn last_runs(&self) -> Result<Vec<RunRecord>> {
        let dir = crate::layout::runs(self.path());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Io { path: dir, source }),
        };
        let mut runs = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(job) = name.strip_suffix(".json").filter(|j| valid_job(j)) else {
                continue;
            };
            let path = entry.path();
            let read = std::fs::symlink_metadata(&path)
                .ok()
                .filter(|m| m.is_file() && m.len() <= MAX_RECORD_BYTES)
                .and_then(|_| std::fs::read(&path).ok())
                .and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok())
                .filter(|r| r.job == job);
            match read {
                Some(r) => runs.push(r),
                None => tracing::warn!("{}: not a run record; skipped", path.display()),
            }
        }
        runs.sort_by(|a, b| a.job.cmp(&b.job));
        Ok(runs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_kept_one_per_job_and_bad_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(&dir.path().join("r"), &Default::default()).unwrap();
        let run = |job: &str, ok| RunRecord {
            job: job.into(),
            started_ns: 1,
            finished_ns: 2,
            ok,
            summary: "x".repeat(5000),
        };
        repo.record_run(&run("gc", true)).unwrap();
        repo.record_run(&run("gc", false)).unwrap();
        repo.record_run(&run("rotate-daily", true)).unwrap();
        assert!(repo.record_run(&run("../x", true)).is_err());
        std::fs::write(crate::layout::runs(repo.path()).join("verify.json"), b"{").unwrap();
        let runs = repo.last_runs().unwrap();
        assert_eq!(
            runs.iter()
                .map(|r| (r.job.as_str(), r.ok))
                .collect::<Vec<_>>(),
            vec![("gc", false), ("rotate-daily", true)]
        );
        assert!(runs[0].summary.len() < 1100);
    }
}
