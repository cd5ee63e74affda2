//! Pack files: append-only containers of self-describing, individually compressed blobs,
//! sealed by a checksummed trailer. Byte layout: FORMAT.md §Packs.

use crate::bytes::{to_hex, Reader};
use crate::error::DecodeError;
use xstore_chunker::ChunkId;

/// First 8 bytes of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"XSTPACK\x01";
/// Last 8 bytes of every sealed pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"XSTPEND\x01";
/// Pack header length.
pub const PACK_HEADER_LEN: usize = 16;
/// Blob header length.
pub const BLOB_HEADER_LEN: usize = 48;
/// Trailer entry length.
pub const TRAILER_ENTRY_LEN: usize = 52;
/// Footer length (the last bytes of a pack).
pub const FOOTER_LEN: usize = 56;
/// Largest uncompressed blob accepted by decoders (tree blobs of huge directories included).
pub const MAX_BLOB_LEN: u32 = 512 * 1024 * 1024;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A directory: an encoded [`crate::Tree`].
    Tree,
    /// The chunk list of a very large file.
    ChunkList,
    /// A snapshot record (the JSON of [`crate::Snapshot`]), so that packs alone can rebuild
    /// every committed snapshot.
    SnapshotRecord,
}

impl BlobKind {
    /// The byte that stands for this kind in blob headers.
    pub fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
            BlobKind::ChunkList => 2,
            BlobKind::SnapshotRecord => 3,
        }
    }
    /// The kind of code `c` (read at `offset`).
    pub fn from_code(c: u8, offset: usize) -> Result<Self, DecodeError> {
        match c {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            2 => Ok(BlobKind::ChunkList),
            3 => Ok(BlobKind::SnapshotRecord),
            _ => Err(DecodeError::Invalid {
                what: "blob kind",
                offset,
                reason: format!("unknown kind {c}"),
            }),
        }
    }
    /// Name for humans and JSON.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
            BlobKind::ChunkList => "chunklist",
            BlobKind::SnapshotRecord => "snapshot",
        }
    }
}

/// How a blob's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// One zstd frame.
    Zstd,
}

impl Compression {
    /// The byte that stands for this compression in blob headers.
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }
    fn from_code(c: u8, offset: usize) -> Result<Self, DecodeError> {
        match c {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Zstd),
            _ => Err(DecodeError::Invalid {
                what: "compression",
                offset,
                reason: format!("unknown compression {c}"),
            }),
        }
    }
}

/// Bytes a blob of `stored_len` takes in a pack: its header and its stored bytes. Dead-byte
/// accounting (FORMAT.md §Index) counts in these units everywhere.
pub fn blob_span(stored_len: u32) -> u64 {
    BLOB_HEADER_LEN as u64 + u64::from(stored_len)
}

/// One blob's place in a pack (from its header or the trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The blob id: BLAKE3 of its raw bytes.
    pub id: ChunkId,
    /// What the blob is.
    pub kind: BlobKind,
    /// How its bytes are stored.
    pub compression: Compression,
    /// Length of the raw bytes.
    pub raw_len: u32,
    /// Length of the stored bytes.
    pub stored_len: u32,
    /// Offset of the blob header in the pack.
    pub offset: u64,
}

impl PackEntry {
    /// Bytes this blob takes in its pack ([`blob_span`]).
    pub fn span(&self) -> u64 {
        blob_span(self.stored_len)
    }
}

/// Bytes of a pack with `blobs` blobs that are not blobs: its header and trailer.
pub fn overhead(blobs: u32) -> u64 {
    (PACK_HEADER_LEN + FOOTER_LEN) as u64 + u64::from(blobs) * TRAILER_ENTRY_LEN as u64
}

/// A pack's identity: BLAKE3 of the whole sealed file.
pub type PackId = ChunkId;

fn header_check(first44: &[u8]) -> u32 {
    let h = blake3::hash(first44);
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The 48-byte header that precedes a blob in its pack (FORMAT.md §Packs).
pub fn encode_blob_header(e: &PackEntry) -> [u8; BLOB_HEADER_LEN] {
    let mut h = [0u8; BLOB_HEADER_LEN];
    h[..32].copy_from_slice(&e.id.0);
    h[32] = e.kind.code();
    h[33] = e.compression.code();
    h[36..40].copy_from_slice(&e.raw_len.to_le_bytes());
    h[40..44].copy_from_slice(&e.stored_len.to_le_bytes());
    let check = header_check(&h[..44]);
    h[44..48].copy_from_slice(&check.to_le_bytes());
    h
}

/// The trailer of a pack whose blobs are `entries` and whose trailer starts at
/// `entries_offset`: an entry per blob, then the footer (offset, count, the BLAKE3 of both,
/// end magic) that [`read_trailer`] checks (FORMAT.md §Packs).
pub fn encode_trailer(entries: &[PackEntry], entries_offset: u64) -> Vec<u8> {
    let mut trailer = Vec::with_capacity(entries.len() * TRAILER_ENTRY_LEN + FOOTER_LEN);
    for e in entries {
        trailer.extend_from_slice(&e.id.0);
        trailer.push(e.kind.code());
        trailer.push(e.compression.code());
        trailer.extend_from_slice(&[0, 0]);
        trailer.extend_from_slice(&e.raw_len.to_le_bytes());
        trailer.extend_from_slice(&e.stored_len.to_le_bytes());
        trailer.extend_from_slice(&e.offset.to_le_bytes());
    }
    let mut footer_head = [0u8; 16];
    footer_head[..8].copy_from_slice(&entries_offset.to_le_bytes());
    footer_head[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&trailer);
    h.update(&footer_head);
    trailer.extend_from_slice(&footer_head);
    trailer.extend_from_slice(h.finalize().as_bytes());
    trailer.extend_from_slice(PACK_END_MAGIC);
    trailer
}

/// The fields a blob header and a trailer entry share: id, kind, compression, reserved (zero),
/// raw and stored lengths; `at` is the offset of the id in the pack, for messages.
fn read_blob_fields(
    r: &mut Reader<'_>,
    at: usize,
    what: &'static str,
) -> Result<(ChunkId, BlobKind, Compression, u32, u32), DecodeError> {
    let id = r.id("blob id")?;
    let kind = BlobKind::from_code(r.u8("blob kind")?, at + 32)?;
    let compression = Compression::from_code(r.u8("compression")?, at + 33)?;
    if r.u16("reserved")? != 0 {
        return Err(DecodeError::Invalid {
            what,
            offset: at + 34,
            reason: "reserved bytes are not zero".into(),
        });
    }
    let raw_len = r.u32("raw length")?;
    let stored_len = r.u32("stored length")?;
    if raw_len > MAX_BLOB_LEN || stored_len > MAX_BLOB_LEN {
        return Err(DecodeError::Invalid {
            what: "blob length",
            offset: at + 36,
            reason: format!("{raw_len}/{stored_len} exceeds {MAX_BLOB_LEN}"),
        });
    }
    if compression == Compression::None && raw_len != stored_len {
        return Err(DecodeError::Invalid {
            what: "blob length",
            offset: at + 36,
            reason: "uncompressed blob with different lengths".into(),
        });
    }
    Ok((id, kind, compression, raw_len, stored_len))
}

/// Decodes the blob header at `offset` of a pack.
pub fn decode_blob_header(pack: &[u8], offset: u64) -> Result<PackEntry, DecodeError> {
    let start = usize::try_from(offset).map_err(|_| DecodeError::Invalid {
        what: "blob offset",
        offset: 0,
        reason: "does not fit in memory".into(),
    })?;
    let bytes = pack.get(start..).ok_or(DecodeError::Truncated {
        what: "blob header",
        offset: start,
        need: BLOB_HEADER_LEN,
        have: 0,
    })?;
    let mut r = Reader::new(bytes);
    let head = r.take(44, "blob header")?;
    let check = r.u32("blob header check")?;
    if check != header_check(head) {
        return Err(DecodeError::Checksum {
            what: "blob header",
        });
    }
    let (id, kind, compression, raw_len, stored_len) =
        read_blob_fields(&mut Reader::new(head), start, "blob header")?;
    Ok(PackEntry {
        id,
        kind,
        compression,
        raw_len,
        stored_len,
        offset,
    })
}

/// The header of the blob at `want.offset` (checked against `want`), where its stored bytes
/// start, and those bytes.
fn stored_part<'p>(
    pack: &'p [u8],
    want: &PackEntry,
) -> Result<(PackEntry, usize, &'p [u8]), DecodeError> {
    let header = decode_blob_header(pack, want.offset)?;
    if header.id != want.id || header.kind != want.kind || header.stored_len != want.stored_len {
        return Err(DecodeError::Invalid {
            what: "blob header",
            offset: want.offset as usize,
            reason: format!("header names blob {} not {}", header.id, want.id),
        });
    }
    let start = want.offset as usize + BLOB_HEADER_LEN;
    let stored =
        pack.get(start..start + header.stored_len as usize)
            .ok_or(DecodeError::Truncated {
                what: "blob data",
                offset: start,
                need: header.stored_len as usize,
                have: pack.len().saturating_sub(start),
            })?;
    Ok((header, start, stored))
}

/// A blob's stored (compressed) bytes, once they are known to decompress to its id. gc
/// copies these into new packs without recompressing.
pub fn verified_stored<'p>(pack: &'p [u8], want: &PackEntry) -> Result<&'p [u8], DecodeError> {
    read_blob(pack, want)?;
    stored_part(pack, want).map(|(_, _, stored)| stored)
}

/// Reads, decompresses and verifies one blob of a pack.
pub fn read_blob(pack: &[u8], want: &PackEntry) -> Result<Vec<u8>, DecodeError> {
    let (header, start, stored) = stored_part(pack, want)?;
    let raw = match header.compression {
        Compression::None => stored.to_vec(),
        Compression::Zstd => {
            let raw =
                decompress(stored, header.raw_len as usize).map_err(|e| DecodeError::Invalid {
                    what: "zstd data",
                    offset: start,
                    reason: e.to_string(),
                })?;
            if raw.len() != header.raw_len as usize {
                return Err(DecodeError::Invalid {
                    what: "zstd data",
                    offset: start,
                    reason: format!("{} bytes, header says {}", raw.len(), header.raw_len),
                });
            }
            raw
        }
    };
    if ChunkId::of(&raw) != header.id {
        return Err(DecodeError::Checksum {
            what: "blob content",
        });
    }
    Ok(raw)
}

/// Decodes and verifies a sealed pack's trailer: the list of its blobs.
pub fn read_trailer(pack: &[u8]) -> Result<Vec<PackEntry>, DecodeError> {
    read_trailer_from_tail(pack.get(..PACK_HEADER_LEN).unwrap_or(pack), pack, 0)
}

/// Where the trailer of a pack starts, from its last [`FOOTER_LEN`] bytes (unverified: the
/// trailer's checksum is checked by [`read_trailer_from_tail`]).
pub fn trailer_offset(footer: &[u8]) -> Result<u64, DecodeError> {
    let mut f = Reader::new(footer);
    f.u64("trailer offset")
}

/// Like [`read_trailer`], from the pack's first [`PACK_HEADER_LEN`] bytes (`header`) and its
/// bytes from `tail_start` to the end (`tail`), so that a remote pack is listed with two
/// range reads instead of a download. The tail must reach back to the trailer's start.
pub fn read_trailer_from_tail(
    header: &[u8],
    tail: &[u8],
    tail_start: u64,
) -> Result<Vec<PackEntry>, DecodeError> {
    let mut r = Reader::new(header);
    let magic = r.array::<8>("pack magic")?;
    if &magic != PACK_MAGIC {
        return Err(DecodeError::BadMagic {
            what: "pack magic",
            expected: to_hex(PACK_MAGIC),
            found: to_hex(&magic),
        });
    }
    // The salt: any value (zero in packs written before 2026-12).
    let _salt = r.array::<8>("pack header")?;
    let pack_len = usize::try_from(tail_start)
        .ok()
        .and_then(|t| t.checked_add(tail.len()))
        .ok_or(DecodeError::Invalid {
            what: "pack tail",
            offset: 0,
            reason: "the tail ends beyond the address space".into(),
        })?;
    let tail_start = pack_len - tail.len();
    if pack_len < PACK_HEADER_LEN + FOOTER_LEN || tail.len() < FOOTER_LEN {
        return Err(DecodeError::Truncated {
            what: "pack footer",
            offset: pack_len,
            need: PACK_HEADER_LEN + FOOTER_LEN,
            have: pack_len.min(tail.len()),
        });
    }
    let footer_at = pack_len - FOOTER_LEN;
    let footer = tail.get(footer_at - tail_start..).unwrap_or_default();
    let mut f = Reader::new(footer);
    let entries_offset = f.u64("trailer offset")?;
    let count = f.u32("trailer count")?;
    let _reserved = f.u32("reserved")?;
    let checksum = f.array::<32>("trailer checksum")?;
    let end_magic = f.array::<8>("pack end magic")?;
    if &end_magic != PACK_END_MAGIC {
        return Err(DecodeError::BadMagic {
            what: "pack end magic",
            expected: to_hex(PACK_END_MAGIC),
            found: to_hex(&end_magic),
        });
    }
    let expected_len = (count as u64).checked_mul(TRAILER_ENTRY_LEN as u64);
    let entries_offset_ok = usize::try_from(entries_offset).ok().filter(|&o| {
        o >= PACK_HEADER_LEN
            && Some((footer_at - o.min(footer_at)) as u64) == expected_len
            && o <= footer_at
    });
    let Some(entries_start) = entries_offset_ok else {
        return Err(DecodeError::Invalid {
            what: "trailer offset",
            offset: footer_at,
            reason: format!("{count} entries at {entries_offset} do not end at the footer"),
        });
    };
    if entries_start < tail_start {
        return Err(DecodeError::Truncated {
            what: "pack trailer",
            offset: entries_start,
            need: pack_len - entries_start,
            have: tail.len(),
        });
    }
    let entries = tail
        .get(entries_start - tail_start..footer_at - tail_start)
        .unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(entries);
    hasher.update(footer.get(..16).unwrap_or_default());
    if hasher.finalize().as_bytes() != &checksum {
        return Err(DecodeError::Checksum {
            what: "pack trailer",
        });
    }
    let mut r = Reader::new(entries);
    let mut out = Vec::with_capacity(count as usize);
    let mut next_free = PACK_HEADER_LEN as u64;
    for _ in 0..count {
        let at = entries_start + r.pos();
        let (id, kind, compression, raw_len, stored_len) =
            read_blob_fields(&mut r, at, "trailer entry")?;
        let offset = r.u64("entry offset")?;
        let end = offset.saturating_add(blob_span(stored_len));
        if offset < next_free || end > entries_offset {
            return Err(DecodeError::Invalid {
                what: "trailer entry",
                offset: at,
                reason: format!("blob at {offset}+{stored_len} overlaps or leaves the data area"),
            });
        }
        next_free = end;
        out.push(PackEntry {
            id,
            kind,
            compression,
            raw_len,
            stored_len,
            offset,
        });
    }
    r.finish("pack trailer")?;
    Ok(out)
}

/// Walks blob headers from the start of a pack whose trailer is missing or damaged, and returns
/// the blobs that decode and verify. Used by index repair.
pub fn scan_blobs(pack: &[u8]) -> Vec<PackEntry> {
    let mut out = Vec::new();
    if pack.get(..8) != Some(&PACK_MAGIC[..]) {
        return out;
    }
    let mut offset = PACK_HEADER_LEN as u64;
    while let Ok(entry) = decode_blob_header(pack, offset) {
        if read_blob(pack, &entry).is_err() {
            break;
        }
        offset += (BLOB_HEADER_LEN + entry.stored_len as usize) as u64;
        out.push(entry);
    }
    out
}

thread_local! {
    // One zstd context per thread, reused: creating a context per blob cost ~7 % of a
    // first backup (context allocation and its memset) in profiles.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `raw` with zstd at `level`, keeping it raw when that is not smaller.
pub fn compress(raw: &[u8], level: i32) -> (Compression, Vec<u8>) {
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(raw).ok(),
            None => None,
        }
    });
    match compressed {
        Some(c) if c.len() < raw.len() => (Compression::Zstd, c),
        _ => (Compression::None, raw.to_vec()),
    }
}

/// Decompresses a zstd blob of exactly `raw_len` bytes with this thread's context.
pub fn decompress(stored: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(stored, raw_len),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}
