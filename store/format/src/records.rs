//! Index value types: blob locations with reference counts, pack and host records.
//! Byte layouts: FORMAT.md §Index. No RocksDB here, so decoders build without it.

use serde::{Deserialize, Serialize};

use crate::bytes::Reader;
use crate::error::DecodeError;
use crate::pack::{BlobKind, PackId};

const BLOB_LOC_LEN: usize = 58;
/// A bundled blob's value: [`BLOB_LOC_LEN`] bytes, then its offset in the bundle and share.
const BUNDLED_LOC_LEN: usize = BLOB_LOC_LEN + 8;

/// Where a bundled blob's bytes are in its bundle, and its part of the bundle's span
/// (FORMAT.md §Bundles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundled {
    /// Offset of the blob's bytes in the bundle's raw bytes.
    pub member_offset: u32,
    /// The blob's part of the bundle record's span ([`crate::bundle::member_shares`]).
    pub share: u32,
}

/// The bytes of a [`BlobLoc`] as the index stores them.
#[derive(Debug, Clone, Copy)]
pub struct BlobLocValue {
    bytes: [u8; BUNDLED_LOC_LEN],
    len: usize,
}

impl AsRef<[u8]> for BlobLocValue {
    fn as_ref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&self.bytes)
    }
}

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
    /// For a blob stored inside a bundle: where (then `offset` and `stored_len` are the
    /// bundle record's, `raw_len` and `kind` the blob's own).
    pub bundled: Option<Bundled>,
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
            bundled: None,
        }
    }

    /// The location of `member` of the bundle at `bundle` (a pack entry of kind
    /// [`BlobKind::Bundle`]), whose part of the bundle's span is `share`.
    pub fn in_bundle(
        pack: PackId,
        bundle: &crate::pack::PackEntry,
        member: &crate::bundle::BundleMember,
        share: u32,
        refcount: u64,
    ) -> Self {
        BlobLoc {
            pack,
            offset: bundle.offset,
            stored_len: bundle.stored_len,
            raw_len: member.len,
            kind: BlobKind::Data,
            refcount,
            bundled: Some(Bundled {
                member_offset: member.offset,
                share,
            }),
        }
    }

    /// The locations (refcount 0) of the members `table` lists of the bundle at `bundle` (a
    /// pack entry of kind [`BlobKind::Bundle`]), each with its share of the bundle's span.
    pub fn bundle_members(
        pack: PackId,
        bundle: &crate::pack::PackEntry,
        table: &[crate::bundle::BundleMember],
    ) -> Vec<(xstore_chunker::ChunkId, BlobLoc)> {
        let shares = crate::bundle::member_shares(bundle.span(), table);
        table
            .iter()
            .zip(shares)
            .map(|(m, share)| (m.id, BlobLoc::in_bundle(pack, bundle, m, share, 0)))
            .collect()
    }

    /// The value stored under a blob id: 58 bytes, 66 for a bundled blob.
    pub fn encode(&self) -> BlobLocValue {
        let mut b = [0u8; BUNDLED_LOC_LEN];
        b[..32].copy_from_slice(&self.pack.0);
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.raw_len.to_le_bytes());
        b[48] = self.kind.code();
        b[50..58].copy_from_slice(&self.refcount.to_le_bytes());
        let len = match self.bundled {
            None => BLOB_LOC_LEN,
            Some(m) => {
                b[49] = 1;
                b[58..62].copy_from_slice(&m.member_offset.to_le_bytes());
                b[62..66].copy_from_slice(&m.share.to_le_bytes());
                BUNDLED_LOC_LEN
            }
        };
        BlobLocValue { bytes: b, len }
    }

    /// Bytes this blob takes in its pack (header and stored bytes; for a bundled blob its
    /// share of the bundle's): the unit of usage, dead bytes and what gc reclaims.
    pub fn span(&self) -> u64 {
        match self.bundled {
            Some(m) => u64::from(m.share),
            None => crate::pack::blob_span(self.stored_len),
        }
    }

    /// The index value bytes (FORMAT.md §Index), for tools and tests.
    pub fn encode_for_tools(&self) -> Vec<u8> {
        self.encode().as_ref().to_vec()
    }

    /// Decodes a value written by [`BlobLoc::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let pack = r.id("pack id")?;
        let offset = r.u64("offset")?;
        let stored_len = r.u32("stored length")?;
        let raw_len = r.u32("raw length")?;
        let kind = BlobKind::from_code(r.u8("kind")?, 48)?;
        let flags = r.u8("blob location flags")?;
        let refcount = r.u64("refcount")?;
        let bundled = match flags {
            0 => None,
            1 => Some(Bundled {
                member_offset: r.u32("bundle member offset")?,
                share: r.u32("bundle member share")?,
            }),
            _ => {
                return Err(DecodeError::Invalid {
                    what: "blob location flags",
                    offset: 49,
                    reason: format!("unknown flags {flags}"),
                })
            }
        };
        r.finish("blob location")?;
        if (bundled.is_some() && kind != BlobKind::Data) || kind == BlobKind::Bundle {
            return Err(DecodeError::Invalid {
                what: "kind",
                offset: 48,
                reason: format!("a {} blob cannot be located here", kind.name()),
            });
        }
        Ok(BlobLoc {
            pack,
            offset,
            stored_len,
            raw_len,
            kind,
            refcount,
            bundled,
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
