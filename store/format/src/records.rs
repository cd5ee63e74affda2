//! Index value types: blob locations with reference counts, pack and host records.
//! Byte layouts: FORMAT.md §Index. No RocksDB here, so decoders build without it.

use serde::{Deserialize, Serialize};

use crate::bytes::Reader;
use crate::error::DecodeError;
use crate::pack::{BlobKind, PackId};

const BLOB_LOC_LEN: usize = 58;

/// Where a blob lives and how many parents reference it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLoc {
    /// The pack holding it.
    pub pack: PackId,
    /// Offset of its header in the pack.
    pub offset: u64,
    /// Stored (compressed) length, without the header.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Data, tree or chunk list.
    pub kind: BlobKind,
    /// Distinct parents (trees, chunk lists, snapshots) that reference it.
    pub refcount: u64,
}

impl BlobLoc {
    /// The location of a blob described by a pack's entry.
    pub fn at(pack: PackId, e: &crate::pack::PackEntry, refcount: u64) -> Self {
        BlobLoc {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            kind: e.kind,
            refcount,
        }
    }

    /// The fixed-size value stored under a blob id.
    pub fn encode(&self) -> [u8; BLOB_LOC_LEN] {
        let mut b = [0u8; BLOB_LOC_LEN];
        b[..32].copy_from_slice(&self.pack.0);
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.raw_len.to_le_bytes());
        b[48] = self.kind.code();
        b[50..58].copy_from_slice(&self.refcount.to_le_bytes());
        b
    }

    /// Bytes this blob takes in its pack (header and stored bytes): the unit of usage,
    /// dead bytes and what gc reclaims.
    pub fn span(&self) -> u64 {
        crate::pack::blob_span(self.stored_len)
    }

    /// The index value bytes (FORMAT.md §Index), for tools and tests.
    pub fn encode_for_tools(&self) -> Vec<u8> {
        self.encode().to_vec()
    }

    /// Decodes a value written by [`BlobLoc::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let pack = r.id("pack id")?;
        let offset = r.u64("offset")?;
        let stored_len = r.u32("stored length")?;
        let raw_len = r.u32("raw length")?;
        let kind = BlobKind::from_code(r.u8("kind")?, 48)?;
        let _reserved = r.u8("reserved")?;
        let refcount = r.u64("refcount")?;
        r.finish("blob location")?;
        Ok(BlobLoc {
            pack,
            offset,
            stored_len,
            raw_len,
            kind,
            refcount,
        })
    }
}

/// Per-pack bookkeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRecord {
    /// File size in bytes.
    pub size: u64,
    /// Blobs in the pack.
    pub blobs: u32,
    /// Bytes of blobs whose refcount reached zero (reclaimable).
    pub dead_bytes: u64,
}

/// Per-host bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Newest snapshot of the host, complete or not.
    pub latest: Option<[u8; 32]>,
    /// Newest complete snapshot.
    pub latest_complete: Option<[u8; 32]>,
    /// Snapshots of the host in the index.
    pub snapshots: u64,
}

impl HostRecord {
    /// The record of a host whose snapshots are `oldest_first` (sorted by start time, then id).
    pub fn of<'a>(
        oldest_first: impl DoubleEndedIterator<Item = &'a crate::snapshot::Snapshot> + Clone,
    ) -> Self {
        HostRecord {
            latest: oldest_first.clone().next_back().map(|s| s.id.0),
            latest_complete: oldest_first
                .clone()
                .rev()
                .find(|s| s.is_complete())
                .map(|s| s.id.0),
            snapshots: oldest_first.count() as u64,
        }
    }
}
