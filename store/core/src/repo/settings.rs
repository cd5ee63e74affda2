//! The repository's settings file `retention.json`: tier schedules and gc settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xstore_retention::Schedules;

use super::Repository;
use crate::error::{DecodeError, Error, IoContext, Result};
use crate::fsutil;
use xstore_format::host::{HostName, InvalidHostName};

/// `retention.json` format version.
pub const RETENTION_VERSION: u32 = 1;
/// Default gc threshold: packs with more dead bytes than this percentage are rewritten.
pub const DEFAULT_GC_MAX_DEAD_PERCENT: f64 = 10.0;

/// Why [`RetentionSettings::validate`] refused settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidSettings {
    /// A per-host schedule names something that is not a host name.
    #[error(transparent)]
    Host(#[from] InvalidHostName),
    /// The gc threshold is not a percentage.
    #[error("gc_max_dead_percent {0} is not within 0..=100")]
    GcMaxDead(f64),
}

/// Retention settings of a repository (`REPO/retention.json`; defaults when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Always [`RETENTION_VERSION`].
    pub version: u32,
    /// Tier schedules: the repository default and per-host overrides.
    pub schedules: Schedules,
    /// gc rewrites packs whose dead bytes exceed this percentage of the pack.
    pub gc_max_dead_percent: f64,
    /// Seconds a pack retired by gc stays on disk before a later gc deletes it: longer than
    /// any reader that started before the gc (restore, mount, NFS, du, check) may use it.
    #[serde(
        default = "default_gc_grace_seconds",
        skip_serializing_if = "is_default_grace"
    )]
    pub gc_grace_seconds: u64,
}

/// Default grace period of retired packs: one day.
pub const DEFAULT_GC_GRACE_SECONDS: u64 = 24 * 3600;

fn default_gc_grace_seconds() -> u64 {
    DEFAULT_GC_GRACE_SECONDS
}

fn is_default_grace(v: &u64) -> bool {
    *v == DEFAULT_GC_GRACE_SECONDS
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            version: RETENTION_VERSION,
            schedules: Schedules::default(),
            gc_max_dead_percent: DEFAULT_GC_MAX_DEAD_PERCENT,
            gc_grace_seconds: DEFAULT_GC_GRACE_SECONDS,
        }
    }
}

impl RetentionSettings {
    /// Decodes and validates `retention.json`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            what: "retention settings",
            offset: 0,
            reason,
        };
        let s: RetentionSettings =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if s.version != RETENTION_VERSION {
            return Err(DecodeError::BadMagic {
                what: "retention settings version",
                expected: RETENTION_VERSION.to_string(),
                found: s.version.to_string(),
            });
        }
        s.validate().map_err(|e| invalid(e.to_string()))?;
        Ok(s)
    }

    /// Checks host names of overrides and the gc threshold.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        for host in self.schedules.hosts.keys() {
            HostName::parse(host)?;
        }
        if !(0.0..=100.0).contains(&self.gc_max_dead_percent) {
            return Err(InvalidSettings::GcMaxDead(self.gc_max_dead_percent));
        }
        Ok(())
    }

    /// Pretty JSON with a final newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

impl Repository {
    fn retention_path(&self) -> PathBuf {
        crate::layout::retention(self.path())
    }

    /// The repository's retention settings (defaults when never set).
    pub fn retention_settings(&self) -> Result<RetentionSettings> {
        let path = self.retention_path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                RetentionSettings::decode(&bytes).map_err(|source| Error::Corrupt { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RetentionSettings::default()),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Replaces the retention settings (atomically; writer only).
    pub fn set_retention_settings(&self, settings: &RetentionSettings) -> Result<()> {
        self.require_writable()?;
        settings
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        fsutil::write_atomic(&self.retention_path(), &settings.encode())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_hostile_input() {
        let mut s = RetentionSettings::default();
        s.schedules.hosts.insert(
            "db1.example.net".into(),
            xstore_retention::Schedule::parse("hourly=6,daily=14").unwrap(),
        );
        assert_eq!(RetentionSettings::decode(&s.encode()).unwrap(), s);
        let bad: [&[u8]; 7] = [
            b"",
            b"\xff\xfe",
            b"{}",
            br#"{"version":2,"schedules":{},"gc_max_dead_percent":10}"#,
            br#"{"version":1,"schedules":{"default":[]},"gc_max_dead_percent":10}"#,
            br#"{"version":1,"schedules":{"default":[{"name":"h","count":1}],"hosts":{"../x":[{"name":"h","count":1}]}},"gc_max_dead_percent":10}"#,
            br#"{"version":1,"schedules":{"default":[{"name":"h","count":1}]},"gc_max_dead_percent":101}"#,
        ];
        for b in bad {
            assert!(
                RetentionSettings::decode(b).is_err(),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
    }
}
