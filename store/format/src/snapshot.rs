//! Snapshot records: JSON, kept in the index and as `snapshots/<id>.json`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::DecodeError;
use crate::host::HostName;
use xstore_chunker::ChunkId;

/// Snapshot record format version.
pub const SNAPSHOT_VERSION: u32 = 1;
/// At most this many per-path errors are kept in a record (the count is always exact).
pub const MAX_RECORDED_ERRORS: usize = 1000;

/// A snapshot's identity: 32 random bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub [u8; 32]);

impl SnapshotId {
    /// A new random id.
    pub fn random() -> std::io::Result<Self> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(SnapshotId(b))
    }
    /// The first 8 hex digits.
    pub fn short(&self) -> String {
        ChunkId(self.0).short(8)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ChunkId(self.0).fmt(f)
    }
}
impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.short())
    }
}
impl FromStr for SnapshotId {
    type Err = xstore_chunker::ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SnapshotId(s.parse::<ChunkId>()?.0))
    }
}

/// Serde adapter: a value as its `Display` text (hex ids in JSON).
pub mod hex_serde {
    use super::*;
    /// Writes `v` as its `Display` text.
    pub fn serialize<S: Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    /// Reads a value from its text.
    pub fn deserialize<'de, D: Deserializer<'de>, T: FromStr>(d: D) -> Result<T, D::Error>
    where
        T::Err: fmt::Display,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde adapter: an optional value as its `Display` text, or `null`.
pub mod opt_display_serde {
    use super::*;
    /// Writes `v` as its `Display` text, `None` as `null`.
    pub fn serialize<S: Serializer, T: fmt::Display>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&v.to_string()),
            None => s.serialize_none(),
        }
    }
}

/// Serde adapter: an optional [`SnapshotId`] as hex, or `null`.
pub mod opt_hex_serde {
    use super::*;
    /// Writes `v` as hex, `None` as `null`.
    pub fn serialize<S: Serializer>(v: &Option<SnapshotId>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(id) => s.serialize_some(&id.to_string()),
            None => s.serialize_none(),
        }
    }
    /// Reads hex or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SnapshotId>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Whether every file of the source made it into the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Everything was read.
    Complete,
    /// Some paths could not be read; they are listed in `errors`.
    Partial,
}

/// One path that could not be backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathError {
    /// The source path.
    pub path: String,
    /// What happened.
    pub message: String,
}

/// Counters of one backup run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotStats {
    /// Regular files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Symlinks, devices and fifos.
    pub other_entries: u64,
    /// Sum of file sizes in the snapshot.
    pub logical_bytes: u64,
    /// Files read (not taken unchanged from the parent).
    pub files_read: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Files taken unchanged from the parent without reading.
    pub files_unchanged: u64,
    /// Blobs this run added to the repository.
    pub new_blobs: u64,
    /// Uncompressed bytes of those blobs.
    pub new_bytes: u64,
    /// Bytes those blobs take in packs (compressed, with headers).
    pub new_stored_bytes: u64,
    /// Entries skipped by design (sockets).
    pub skipped: u64,
    /// Paths that failed (may exceed `errors.len()`).
    pub errors: u64,
    /// Bytes exchanged with a remote agent, both directions, frames included (pulls only).
    pub wire_bytes: u64,
}

/// A snapshot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Record format ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// Identity.
    #[serde(with = "hex_serde")]
    pub id: SnapshotId,
    /// The host the data came from.
    pub host: HostName,
    /// The source paths, as given.
    pub paths: Vec<String>,
    /// Start of the run, ns since the epoch.
    pub start_ns: i64,
    /// End of the run, ns since the epoch.
    pub end_ns: i64,
    /// Root tree blob.
    #[serde(with = "hex_serde")]
    pub root: ChunkId,
    /// The snapshot used as parent for change detection, if any.
    #[serde(with = "opt_hex_serde", default)]
    pub parent: Option<SnapshotId>,
    /// Tier labels (retention); empty until retention assigns them.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Kept regardless of retention.
    #[serde(default)]
    pub pinned: bool,
    /// Complete or partial.
    pub status: SnapshotStatus,
    /// Paths that failed (at most [`MAX_RECORDED_ERRORS`]).
    #[serde(default)]
    pub errors: Vec<PathError>,
    /// Counters.
    #[serde(default)]
    pub stats: SnapshotStats,
    /// The software that wrote it.
    #[serde(default)]
    pub client: String,
    /// How many times the record was replaced after its commit (relabelled, pinned…). The
    /// newest copy of a record found in packs is the one with the highest revision.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Snapshot {
    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Decodes and validates a record.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            what: "snapshot record",
            offset: 0,
            reason,
        };
        let s: Snapshot = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if s.version != SNAPSHOT_VERSION {
            return Err(DecodeError::BadMagic {
                what: "snapshot version",
                expected: SNAPSHOT_VERSION.to_string(),
                found: s.version.to_string(),
            });
        }
        Ok(s)
    }

    /// The id of this record's blob in the packs (FORMAT.md §Snapshots): the blob id
    /// (BLAKE3, keyed in an encrypted repository) of exactly what [`Snapshot::encode`]
    /// writes. A snapshot holds one reference to the blob of its current record.
    pub fn record_id(&self, encryption: &crate::encryption::Encryption) -> ChunkId {
        encryption.id_of(&self.encode())
    }

    /// True when every file was read.
    pub fn is_complete(&self) -> bool {
        self.status == SnapshotStatus::Complete
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let s = Snapshot {
            version: 1,
            id: SnapshotId([7; 32]),
            host: HostName::parse("web1.example.net").unwrap(),
            paths: vec!["/etc".into()],
            start_ns: 1,
            end_ns: 2,
            root: ChunkId([1; 32]),
            parent: None,
            tiers: vec![],
            pinned: false,
            status: SnapshotStatus::Partial,
            errors: vec![PathError {
                path: "/etc/shadow".into(),
                message: "Permission denied".into(),
            }],
            stats: SnapshotStats::default(),
            client: "xstore test".into(),
            revision: 0,
        };
        assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
        assert!(Snapshot::decode(b"{}").is_err());
        assert!(Snapshot::decode(b"\xff\xfe").is_err());
        let bad = String::from_utf8(s.encode())
            .unwrap()
            .replace("web1.example.net", "../x");
        let e = Snapshot::decode(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("invalid host name"), "{e}");
    }
}
