//! Bundles in gc and compact (FORMAT.md §Bundles): classifying a bundle's members, and
//! writing small data blobs into new bundles when packs are rewritten.
//!
//! A bundle record is live while any member the index locates in it is; its members are
//! classified, copied and accounted one by one, each by its share of the record's span, so
//! that dead bytes and gc's decisions follow the same rule as for blobs of their own.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::index::BlobLoc;
use crate::pack::rolling::RollingPacks;
use crate::pack::{NewBlob, SealedPack};
use crate::repo::Repository;
use xstore_chunker::ChunkId;
use xstore_format::bundle::{self, Bundle, BundleMember};
use xstore_format::pack::{self, BlobKind, Compression, PackEntry, PackId};
use xstore_format::records::Bundled;

/// Data blobs below this many raw bytes go into bundles when compact rewrites them. Larger
/// chunks compress about as well alone (measured on a Debian system tree's series: blobs under
/// 64 KiB, 13 % of the raw bytes, gave 11 of the 11.5 MiB that bundling saved).
pub const BUNDLE_MEMBER_MAX: u32 = 64 << 10;
/// A bundle is closed once its members reach this many raw bytes: a read of one member
/// decompresses at most about this much (plus one member).
pub const BUNDLE_TARGET: usize = 1 << 20;
/// Bundles compressed at once (on all cores) before they are written.
const BUNDLES_IN_FLIGHT: usize = 16;

/// Bundles of one pack decoded so far, by offset.
pub(crate) type DecodedBundles = std::sync::Mutex<HashMap<u64, std::sync::Arc<Bundle>>>;

/// The member tables of the bundles written, by bundle id.
pub(crate) type BundleTables = HashMap<ChunkId, Vec<BundleMember>>;

/// A blob of a pack gc or compact looks at: a record of its own, or a member of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CandidateBlob {
    /// Its record; for a member, the bundle's record with the member's id, kind and length.
    pub(crate) entry: PackEntry,
    /// For a member: where it is in the bundle, and its share of the bundle's span.
    pub(crate) bundled: Option<Bundled>,
}

impl CandidateBlob {
    /// A blob with a record of its own.
    pub(crate) fn alone(entry: PackEntry) -> CandidateBlob {
        CandidateBlob {
            entry,
            bundled: None,
        }
    }

    pub(crate) fn id(&self) -> ChunkId {
        self.entry.id
    }

    /// Bytes it takes in its pack: its record's span, or its share of the bundle's.
    pub(crate) fn span(&self) -> u64 {
        match self.bundled {
            Some(b) => u64::from(b.share),
            None => self.entry.span(),
        }
    }

    /// Whether the index location `loc` is this blob here.
    pub(crate) fn is_at(&self, pack: &PackId, loc: &BlobLoc) -> bool {
        loc.pack == *pack
            && loc.offset == self.entry.offset
            && loc.bundled.map(|b| b.member_offset) == self.bundled.map(|b| b.member_offset)
    }
}

/// The members of the bundle record `bundle` of the pack `pack_bytes`, as candidate blobs
/// with their shares (read, opened, decompressed and verified against the bundle's id).
pub(crate) fn members_of(
    repo: &Repository,
    pack_id: &PackId,
    pack_bytes: &[u8],
    bundle: &PackEntry,
) -> Result<Vec<CandidateBlob>> {
    let corrupt = |source| Error::CorruptBlob {
        id: bundle.id,
        pack: pack_id.to_string(),
        source,
    };
    let table = pack::read_bundle(
        repo.encryption(),
        pack_bytes,
        bundle.offset,
        bundle.stored_len,
    )
    .map_err(corrupt)?
    .table;
    Ok(BlobLoc::bundle_members(*pack_id, bundle, &table)
        .into_iter()
        .map(|(id, loc)| CandidateBlob {
            entry: PackEntry {
                id,
                kind: loc.kind,
                compression: bundle.compression,
                raw_len: loc.raw_len,
                stored_len: loc.stored_len,
                offset: loc.offset,
            },
            bundled: loc.bundled,
        })
        .collect())
}

/// The raw bytes of member `blob` (a [`CandidateBlob`] with `bundled`), verified, reading
/// its bundle from `pack_bytes` through `decoded` (bundles of this pack read so far).
pub(crate) fn member_raw(
    repo: &Repository,
    pack_bytes: &[u8],
    blob: &CandidateBlob,
    decoded: &DecodedBundles,
) -> std::result::Result<Vec<u8>, xstore_format::DecodeError> {
    let (at, stored_len) = (blob.entry.offset, blob.entry.stored_len);
    let cached = decoded.lock().ok().and_then(|d| d.get(&at).cloned());
    let bundle = match cached {
        Some(b) => b,
        None => {
            let b = std::sync::Arc::new(pack::read_bundle(
                repo.encryption(),
                pack_bytes,
                at,
                stored_len,
            )?);
            if let Ok(mut d) = decoded.lock() {
                d.insert(at, b.clone());
            }
            b
        }
    };
    let member_offset = blob.bundled.map_or(0, |b| b.member_offset);
    bundle.member(
        repo.encryption(),
        &blob.entry.id,
        member_offset,
        blob.entry.raw_len,
    )
}

/// Gathers small data blobs into bundles, compresses full ones on all cores and adds them to
/// the packs being written; remembers each bundle's table so that its members can be located
/// once the packs are sealed.
pub(crate) struct Bundler<'p> {
    packs: &'p RollingPacks,
    encryption: xstore_format::encryption::Encryption,
    level: i32,
    open: Vec<(ChunkId, Vec<u8>)>,
    open_bytes: usize,
    full: Vec<Vec<(ChunkId, Vec<u8>)>>,
    tables: BundleTables,
}

impl<'p> Bundler<'p> {
    /// Bundles compressed at `level`, written into `packs`.
    pub(crate) fn new(repo: &Repository, packs: &'p RollingPacks, level: i32) -> Bundler<'p> {
        Bundler {
            packs,
            encryption: repo.encryption().clone(),
            level,
            open: Vec::new(),
            open_bytes: 0,
            full: Vec::new(),
            tables: HashMap::new(),
        }
    }

    /// Takes one small data blob (`raw`, verified against `id` by the caller).
    pub(crate) fn add(&mut self, id: ChunkId, raw: Vec<u8>) -> Result<()> {
        self.open_bytes += raw.len();
        self.open.push((id, raw));
        if self.open_bytes >= BUNDLE_TARGET {
            self.full.push(std::mem::take(&mut self.open));
            self.open_bytes = 0;
            if self.full.len() >= BUNDLES_IN_FLIGHT {
                self.write_full()?;
            }
        }
        Ok(())
    }

    /// Writes what is gathered (a last bundle of one blob goes alone) and returns the tables
    /// of the bundles written, by bundle id.
    pub(crate) fn finish(mut self) -> Result<BundleTables> {
        if !self.open.is_empty() {
            self.full.push(std::mem::take(&mut self.open));
        }
        self.write_full()?;
        Ok(self.tables)
    }

    fn write_full(&mut self) -> Result<()> {
        let groups = std::mem::take(&mut self.full);
        let (enc, level) = (&self.encryption, self.level);
        let built: Vec<Built> = groups
            .into_par_iter()
            .map(|group| build(enc, level, group))
            .collect::<Result<_>>()?;
        for b in built {
            self.packs.add(NewBlob {
                id: b.id,
                kind: b.kind,
                compression: b.compression,
                raw_len: b.raw_len,
                stored: &b.stored,
            })?;
            if let Some(table) = b.table {
                self.tables.insert(b.id, table);
            }
        }
        Ok(())
    }
}

/// One bundle (or a lone blob) ready to be written.
struct Built {
    id: ChunkId,
    kind: BlobKind,
    compression: Compression,
    raw_len: u32,
    stored: Vec<u8>,
    table: Option<Vec<BundleMember>>,
}

fn build(
    enc: &xstore_format::encryption::Encryption,
    level: i32,
    group: Vec<(ChunkId, Vec<u8>)>,
) -> Result<Built> {
    let refs: Vec<(ChunkId, &[u8])> = group.iter().map(|(id, b)| (*id, &b[..])).collect();
    let encoded = match refs.as_slice() {
        [_, _, ..] => bundle::encode_bundle(&refs),
        _ => None,
    };
    let Some(raw) = encoded else {
        // One blob, or a group the format does not take (never for blobs under
        // BUNDLE_MEMBER_MAX up to BUNDLE_TARGET): alone.
        let (id, bytes) = group
            .into_iter()
            .next()
            .ok_or(Error::Internal("an empty bundle"))?;
        let (compression, stored) = pack::compress(&bytes, level);
        return Ok(Built {
            id,
            kind: BlobKind::Data,
            compression,
            raw_len: bytes.len() as u32,
            stored,
            table: None,
        });
    };
    let id = enc.id_of(&raw);
    let table = bundle::decode_bundle(&raw).map_err(|source| Error::CorruptBlob {
        id,
        pack: "(a bundle being written)".into(),
        source,
    })?;
    let (compression, stored) = pack::compress(&raw, level);
    Ok(Built {
        id,
        kind: BlobKind::Bundle,
        compression,
        raw_len: raw.len() as u32,
        stored,
        table: Some(table),
    })
}

/// The index locations (refcount 0) of every blob the sealed packs hold: records of their own
/// as they are, bundles' members by `tables`.
pub(crate) fn sealed_locations(
    sealed: &[SealedPack],
    tables: &BundleTables,
) -> HashMap<ChunkId, BlobLoc> {
    let mut locs = HashMap::new();
    for p in sealed {
        for e in &p.entries {
            match (e.kind, tables.get(&e.id)) {
                (BlobKind::Bundle, Some(table)) => {
                    locs.extend(BlobLoc::bundle_members(p.id, e, table));
                }
                _ => {
                    locs.insert(e.id, BlobLoc::at(p.id, e, 0));
                }
            }
        }
    }
    locs
}

/// Whether a rewrite puts `blob` into a bundle: a small data blob, when bundling.
pub(crate) fn goes_into_bundle(blob: &CandidateBlob, bundling: bool) -> bool {
    blob.bundled.is_some()
        || (bundling && blob.entry.kind == BlobKind::Data && blob.entry.raw_len < BUNDLE_MEMBER_MAX)
}
