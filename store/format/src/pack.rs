//! Pack files: append-only containers of self-describing, individually compressed blobs,
//! sealed by a checksummed trailer. Byte layout: FORMAT.md §Packs.

use std::borrow::Cow;

use crate::bytes::{to_hex, Reader};
use crate::encryption::{random_nonce, Encryption, SealedPart, NONCE_LEN, TAG_LEN};
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
    /// Several small data blobs compressed together (FORMAT.md §Bundles,
    /// [`crate::bundle`]). Never referenced by a tree: the index locates its members.
    Bundle,
}

impl BlobKind {
    /// The byte that stands for this kind in blob headers.
    pub fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
            BlobKind::ChunkList => 2,
            BlobKind::SnapshotRecord => 3,
            BlobKind::Bundle => 4,
        }
    }
    /// The kind of code `c` (read at `offset`).
    pub fn from_code(c: u8, offset: usize) -> Result<Self, DecodeError> {
        match c {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            2 => Ok(BlobKind::ChunkList),
            3 => Ok(BlobKind::SnapshotRecord),
            4 => Ok(BlobKind::Bundle),
            _ => Err(DecodeError::Invalid {
                what: "blob kind",
                offset,
                reason: format!("unknown kind {c}"),
            }),
        }
    }
    /// File content (data, or bundles of data): kept in data packs, apart from metadata.
    pub fn is_file_data(self) -> bool {
        matches!(self, BlobKind::Data | BlobKind::Bundle)
    }

    /// Name for humans and JSON.
    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
            BlobKind::ChunkList => "chunklist",
            BlobKind::SnapshotRecord => "snapshot",
            BlobKind::Bundle => "bundle",
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

/// First 8 bytes of every pack of an encrypted repository (format 2).
pub const SEALED_PACK_MAGIC: &[u8; 8] = b"XSTPACK\x02";
/// Last 8 bytes of every sealed pack of an encrypted repository.
pub const SEALED_PACK_END_MAGIC: &[u8; 8] = b"XSTPEND\x02";
/// Length of a blob header's fields before its check (and of a sealed header's plaintext).
const HEADER_FIELDS_LEN: usize = 44;
/// In a sealed pack a blob record is nonce (24) ‖ sealed header (44 + tag 16) ‖ sealed
/// bytes (stored + tag 16); its entry's `stored_len` counts the record's bytes after its
/// first [`BLOB_HEADER_LEN`], so [`blob_span`] is one rule for both formats. This is what
/// `stored_len` exceeds the stored bytes by.
pub const SEALED_STORED_EXTRA: u32 =
    (NONCE_LEN + HEADER_FIELDS_LEN + 2 * TAG_LEN - BLOB_HEADER_LEN) as u32;
/// Where a sealed record's stored bytes (their ciphertext) start.
const SEALED_BODY_AT: usize = NONCE_LEN + HEADER_FIELDS_LEN + TAG_LEN;
/// Associated data of a sealed blob header, before its offset in the pack.
const SEALED_HEADER_AAD: &[u8] = b"xstore blob header 2";
/// Associated data of a sealed trailer, before the pack header and the footer's first 48 bytes.
const SEALED_TRAILER_AAD: &[u8] = b"xstore pack trailer 2";

fn magics(enc: &Encryption) -> (&'static [u8; 8], &'static [u8; 8]) {
    if enc.is_encrypted() {
        (SEALED_PACK_MAGIC, SEALED_PACK_END_MAGIC)
    } else {
        (PACK_MAGIC, PACK_END_MAGIC)
    }
}

/// What an entry's `stored_len` exceeds its stored bytes by: 0 in plain packs.
fn stored_extra(enc: &Encryption) -> u32 {
    if enc.is_encrypted() {
        SEALED_STORED_EXTRA
    } else {
        0
    }
}

/// The `stored_len` of an entry whose stored (compressed) bytes are `stored` long.
pub fn entry_stored_len(enc: &Encryption, stored: usize) -> u32 {
    (stored as u32).saturating_add(stored_extra(enc))
}

/// The 16 bytes a pack starts with: its magic and `salt`.
pub fn pack_header(enc: &Encryption, salt: [u8; 8]) -> [u8; PACK_HEADER_LEN] {
    let mut header = [0u8; PACK_HEADER_LEN];
    header[..8].copy_from_slice(magics(enc).0);
    header[8..].copy_from_slice(&salt);
    header
}

/// Bytes a blob whose entry says `stored_len` takes in a pack: its header and its stored
/// bytes (sealed: its whole record). Dead-byte accounting (FORMAT.md §Index) counts in these
/// units everywhere.
pub fn blob_span(stored_len: u32) -> u64 {
    BLOB_HEADER_LEN as u64 + u64::from(stored_len)
}

/// One blob's place in a pack (from its header or the trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The blob id (FORMAT.md §Blob ids).
    pub id: ChunkId,
    /// What the blob is.
    pub kind: BlobKind,
    /// How its bytes are stored.
    pub compression: Compression,
    /// Length of the raw bytes.
    pub raw_len: u32,
    /// Length of the stored bytes; in a sealed pack, of the record after its first
    /// [`BLOB_HEADER_LEN`] bytes ([`SEALED_STORED_EXTRA`] more than the stored bytes).
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
pub fn overhead(enc: &Encryption, blobs: u32) -> u64 {
    let sealed = if enc.is_encrypted() {
        (NONCE_LEN + 4 + TAG_LEN) as u64
    } else {
        0
    };
    (PACK_HEADER_LEN + FOOTER_LEN) as u64 + u64::from(blobs) * TRAILER_ENTRY_LEN as u64 + sealed
}

/// A pack's identity: BLAKE3 of the whole sealed file.
pub type PackId = ChunkId;

fn header_check(first44: &[u8]) -> u32 {
    let h = blake3::hash(first44);
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The fields of a blob header (and a sealed header's plaintext): id, kind, compression,
/// reserved, raw and stored lengths.
fn header_fields(e: &PackEntry) -> [u8; HEADER_FIELDS_LEN] {
    let mut h = [0u8; HEADER_FIELDS_LEN];
    h[..32].copy_from_slice(&e.id.0);
    h[32] = e.kind.code();
    h[33] = e.compression.code();
    h[36..40].copy_from_slice(&e.raw_len.to_le_bytes());
    h[40..44].copy_from_slice(&e.stored_len.to_le_bytes());
    h
}

/// The 48-byte header that precedes a blob in a plain pack (FORMAT.md §Packs).
pub fn encode_blob_header(e: &PackEntry) -> [u8; BLOB_HEADER_LEN] {
    let mut h = [0u8; BLOB_HEADER_LEN];
    let fields = header_fields(e);
    h[..HEADER_FIELDS_LEN].copy_from_slice(&fields);
    h[44..48].copy_from_slice(&header_check(&fields).to_le_bytes());
    h
}

fn sealed_header_aad(offset: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEALED_HEADER_AAD.len() + 8);
    aad.extend_from_slice(SEALED_HEADER_AAD);
    aad.extend_from_slice(&offset.to_le_bytes());
    aad
}

fn sealed_body_aad(id: &ChunkId, kind: BlobKind) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[..32].copy_from_slice(&id.0);
    aad[32] = kind.code();
    aad
}

/// A blob's stored bytes as they go into a pack, made before its place in the pack is known
/// (so that a writer seals outside the lock of its pack): plain, the stored bytes
/// themselves; sealed, a random nonce and the bytes sealed with the blob's id and kind as
/// associated data (FORMAT.md §Encryption).
#[derive(Debug)]
pub struct PreparedBlob<'s> {
    nonce: [u8; NONCE_LEN],
    body: Cow<'s, [u8]>,
}

impl PreparedBlob<'_> {
    /// The bytes that follow the blob's header in the pack.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Prepares blob `id` of `kind` whose stored (compressed or raw) bytes are `stored`.
pub fn prepare_blob<'s>(
    enc: &Encryption,
    id: &ChunkId,
    kind: BlobKind,
    stored: &'s [u8],
) -> Result<PreparedBlob<'s>, DecodeError> {
    if !enc.is_encrypted() {
        return Ok(PreparedBlob {
            nonce: [0; NONCE_LEN],
            body: Cow::Borrowed(stored),
        });
    }
    let nonce = random_nonce()?;
    let body = enc.seal(SealedPart::Blob, &nonce, &sealed_body_aad(id, kind), stored)?;
    Ok(PreparedBlob {
        nonce,
        body: Cow::Owned(body),
    })
}

/// What precedes a prepared blob's body at `e.offset` (`e.stored_len` is [`entry_stored_len`]
/// of its stored bytes): plain, the 48-byte header; sealed, the nonce and the sealed header,
/// which binds the blob to that offset.
pub fn encode_blob_head(
    enc: &Encryption,
    e: &PackEntry,
    prepared: &PreparedBlob<'_>,
) -> Result<Vec<u8>, DecodeError> {
    if !enc.is_encrypted() {
        return Ok(encode_blob_header(e).to_vec());
    }
    let mut head = Vec::with_capacity(SEALED_BODY_AT);
    head.extend_from_slice(&prepared.nonce);
    head.extend_from_slice(&enc.seal(
        SealedPart::Meta,
        &prepared.nonce,
        &sealed_header_aad(e.offset),
        &header_fields(e),
    )?);
    Ok(head)
}

/// The trailer of a pack that starts with `header` and whose blobs are `entries`, the
/// trailer starting at `entries_offset`: an entry per blob, then the footer (offset, count,
/// the BLAKE3 of both, end magic) that [`read_trailer`] checks. Sealed: the count and entries
/// sealed under a random nonce, bound to the pack header and footer (FORMAT.md §Encryption).
pub fn encode_trailer(
    enc: &Encryption,
    header: &[u8; PACK_HEADER_LEN],
    entries: &[PackEntry],
    entries_offset: u64,
) -> Result<Vec<u8>, DecodeError> {
    let mut plain = Vec::with_capacity(4 + entries.len() * TRAILER_ENTRY_LEN + FOOTER_LEN);
    if enc.is_encrypted() {
        plain.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    }
    for e in entries {
        plain.extend_from_slice(&header_fields(e)[..40]);
        plain.extend_from_slice(&e.stored_len.to_le_bytes());
        plain.extend_from_slice(&e.offset.to_le_bytes());
    }
    if enc.is_encrypted() {
        let mut footer = [0u8; FOOTER_LEN];
        footer[..8].copy_from_slice(&entries_offset.to_le_bytes());
        footer[48..].copy_from_slice(SEALED_PACK_END_MAGIC);
        let nonce = random_nonce()?;
        let aad = sealed_trailer_aad(header, &footer);
        let mut trailer = nonce.to_vec();
        trailer.extend_from_slice(&enc.seal(SealedPart::Meta, &nonce, &aad, &plain)?);
        trailer.extend_from_slice(&footer);
        return Ok(trailer);
    }
    let mut footer_head = [0u8; 16];
    footer_head[..8].copy_from_slice(&entries_offset.to_le_bytes());
    footer_head[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&plain);
    h.update(&footer_head);
    plain.extend_from_slice(&footer_head);
    plain.extend_from_slice(h.finalize().as_bytes());
    plain.extend_from_slice(PACK_END_MAGIC);
    Ok(plain)
}

fn sealed_trailer_aad(header: &[u8], footer: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEALED_TRAILER_AAD.len() + PACK_HEADER_LEN + 48);
    aad.extend_from_slice(SEALED_TRAILER_AAD);
    aad.extend_from_slice(header);
    aad.extend_from_slice(footer.get(..48).unwrap_or_default());
    aad
}

/// The fields a blob header and a trailer entry share: id, kind, compression, reserved (zero),
/// raw and stored lengths; `at` is the offset of the id in the pack, for messages. `extra`
/// is what `stored_len` exceeds the stored bytes by ([`SEALED_STORED_EXTRA`] when sealed).
fn read_blob_fields(
    r: &mut Reader<'_>,
    at: usize,
    what: &'static str,
    extra: u32,
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
    if raw_len > MAX_BLOB_LEN || stored_len > MAX_BLOB_LEN.saturating_add(extra) {
        return Err(DecodeError::Invalid {
            what: "blob length",
            offset: at + 36,
            reason: format!("{raw_len}/{stored_len} exceeds {MAX_BLOB_LEN}"),
        });
    }
    if stored_len < extra || (compression == Compression::None && raw_len != stored_len - extra) {
        return Err(DecodeError::Invalid {
            what: "blob length",
            offset: at + 36,
            reason: "stored length does not fit the raw length".into(),
        });
    }
    Ok((id, kind, compression, raw_len, stored_len))
}

/// Decodes the blob header at `offset` of a pack.
pub fn decode_blob_header(
    enc: &Encryption,
    pack: &[u8],
    offset: u64,
) -> Result<PackEntry, DecodeError> {
    let start = usize::try_from(offset).map_err(|_| DecodeError::Invalid {
        what: "blob offset",
        offset: 0,
        reason: "does not fit in memory".into(),
    })?;
    let record = pack.get(start..).ok_or(DecodeError::Truncated {
        what: "blob header",
        offset: start,
        need: BLOB_HEADER_LEN,
        have: 0,
    })?;
    decode_record_header(enc, record, offset)
}

/// Decodes the header of the blob record `record` (the pack's bytes from `offset` on).
fn decode_record_header(
    enc: &Encryption,
    record: &[u8],
    offset: u64,
) -> Result<PackEntry, DecodeError> {
    let start = offset as usize;
    let mut r = Reader::new(record);
    let fields = if enc.is_encrypted() {
        let nonce = r.array::<NONCE_LEN>("blob nonce")?;
        let sealed = r.take(HEADER_FIELDS_LEN + TAG_LEN, "sealed blob header")?;
        enc.open(
            SealedPart::Meta,
            "blob header",
            &nonce,
            &sealed_header_aad(offset),
            sealed,
        )?
    } else {
        let head = r.take(HEADER_FIELDS_LEN, "blob header")?;
        let check = r.u32("blob header check")?;
        if check != header_check(head) {
            return Err(DecodeError::Checksum {
                what: "blob header",
            });
        }
        head.to_vec()
    };
    let (id, kind, compression, raw_len, stored_len) = read_blob_fields(
        &mut Reader::new(&fields),
        start,
        "blob header",
        stored_extra(enc),
    )?;
    Ok(PackEntry {
        id,
        kind,
        compression,
        raw_len,
        stored_len,
        offset,
    })
}

/// The header of the blob record `record` (checked against `want`, which names its offset)
/// and where its stored bytes lie in `record` (still sealed in an encrypted repository).
fn checked_header(
    enc: &Encryption,
    record: &[u8],
    want: &PackEntry,
) -> Result<(PackEntry, std::ops::Range<usize>), DecodeError> {
    let header = decode_record_header(enc, record, want.offset)?;
    if header.id != want.id || header.kind != want.kind || header.stored_len != want.stored_len {
        return Err(DecodeError::Invalid {
            what: "blob header",
            offset: want.offset as usize,
            reason: format!("header names blob {} not {}", header.id, want.id),
        });
    }
    let body_at = if enc.is_encrypted() {
        SEALED_BODY_AT
    } else {
        BLOB_HEADER_LEN
    };
    let end = BLOB_HEADER_LEN + header.stored_len as usize;
    if record.len() < end {
        return Err(DecodeError::Truncated {
            what: "blob data",
            offset: want.offset as usize + body_at,
            need: end.saturating_sub(body_at),
            have: record.len().saturating_sub(body_at),
        });
    }
    Ok((header, body_at..end))
}

/// The record's nonce: its first [`NONCE_LEN`] bytes (the header that opened proved them there).
fn record_nonce(record: &[u8]) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(record.get(..NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
    nonce
}

/// A record's stored bytes (`body`, where [`checked_header`] found them) opened in place
/// with the record's `nonce` when sealed, as they are when plain.
fn open_stored<'b>(
    enc: &Encryption,
    header: &PackEntry,
    nonce: &[u8; NONCE_LEN],
    body: &'b mut [u8],
) -> Result<&'b [u8], DecodeError> {
    if !enc.is_encrypted() {
        return Ok(body);
    }
    let aad = sealed_body_aad(&header.id, header.kind);
    let opened = enc.open_in_place(SealedPart::Blob, "blob content", nonce, &aad, body)?;
    Ok(opened)
}

/// The header of the blob record `record` (checked against `want`, which names its offset)
/// and its stored bytes, opened (in a copy) when sealed.
fn stored_part<'r>(
    enc: &Encryption,
    record: &'r [u8],
    want: &PackEntry,
) -> Result<(PackEntry, Cow<'r, [u8]>), DecodeError> {
    let (header, body) = checked_header(enc, record, want)?;
    let body_bytes = record.get(body).unwrap_or_default();
    if !enc.is_encrypted() {
        return Ok((header, Cow::Borrowed(body_bytes)));
    }
    let mut opened = body_bytes.to_vec();
    let len = open_stored(enc, &header, &record_nonce(record), &mut opened)?.len();
    opened.truncate(len);
    Ok((header, Cow::Owned(opened)))
}

/// As [`read_record`], opening a sealed record in `record`'s own bytes instead of a copy: for
/// a reader that owns the buffer it read (restore, repair). `record` is scratch afterwards.
pub fn read_record_in_place(
    enc: &Encryption,
    record: &mut [u8],
    want: &PackEntry,
) -> Result<Vec<u8>, DecodeError> {
    let (header, body) = checked_header(enc, record, want)?;
    let nonce = record_nonce(record);
    let stored = open_stored(
        enc,
        &header,
        &nonce,
        record.get_mut(body).unwrap_or_default(),
    )?;
    verify_stored(enc, &header, stored, want)
}

/// The header of the bundle record at the start of `record` (the pack's bytes from `offset`
/// on), refused unless it is a bundle of `stored_len` stored bytes (what the index gives) and at
/// most [`crate::bundle::MAX_BUNDLE_RAW`] raw: checked before anything is decompressed. Its id
/// is the one the header names (the index locates members, not bundles).
fn bundle_header(
    enc: &Encryption,
    record: &[u8],
    offset: u64,
    stored_len: u32,
) -> Result<PackEntry, DecodeError> {
    let header = decode_record_header(enc, record, offset)?;
    if header.kind != BlobKind::Bundle
        || header.stored_len != stored_len
        || header.raw_len > crate::bundle::MAX_BUNDLE_RAW
    {
        return Err(DecodeError::Invalid {
            what: "bundle header",
            offset: offset as usize,
            reason: format!(
                "a {} blob of {} stored bytes ({} raw) where a bundle of {stored_len} was expected",
                header.kind.name(),
                header.stored_len,
                header.raw_len
            ),
        });
    }
    Ok(header)
}

/// The bundle whose record is at `offset` in `record` (as [`read_record_in_place`]; the
/// record is scratch afterwards), `stored_len` as the index gives it: header checked, bytes
/// opened, decompressed, hashed to the header's id, table decoded.
pub fn read_bundle_in_place(
    enc: &Encryption,
    record: &mut [u8],
    offset: u64,
    stored_len: u32,
) -> Result<crate::bundle::Bundle, DecodeError> {
    let header = bundle_header(enc, record, offset, stored_len)?;
    crate::bundle::Bundle::decode(read_record_in_place(enc, record, &header)?)
}

/// [`read_bundle_in_place`] for a whole pack's bytes (gc, compact and check read mapped packs).
pub fn read_bundle(
    enc: &Encryption,
    pack: &[u8],
    offset: u64,
    stored_len: u32,
) -> Result<crate::bundle::Bundle, DecodeError> {
    read_bundle_record(enc, record_at(pack, offset)?, offset, stored_len)
}

/// [`read_bundle_in_place`] leaving `record` (the pack's bytes from `offset` on) as it is.
pub fn read_bundle_record(
    enc: &Encryption,
    record: &[u8],
    offset: u64,
    stored_len: u32,
) -> Result<crate::bundle::Bundle, DecodeError> {
    let header = bundle_header(enc, record, offset, stored_len)?;
    crate::bundle::Bundle::decode(read_record(enc, record, &header)?)
}

/// A blob's stored (compressed, opened) bytes, once they are known to decompress to its id.
/// gc copies these into new packs without recompressing.
pub fn verified_stored<'p>(
    enc: &Encryption,
    pack: &'p [u8],
    want: &PackEntry,
) -> Result<Cow<'p, [u8]>, DecodeError> {
    verified_stored_and_raw(enc, pack, want).map(|(stored, _)| stored)
}

/// [`verified_stored`] with the raw bytes the verification decompressed (compact
/// recompresses them): one opening, decompression and hash per blob.
pub fn verified_stored_and_raw<'p>(
    enc: &Encryption,
    pack: &'p [u8],
    want: &PackEntry,
) -> Result<(Cow<'p, [u8]>, Vec<u8>), DecodeError> {
    let record = record_at(pack, want.offset)?;
    let (header, stored) = stored_part(enc, record, want)?;
    let raw = verify_stored(enc, &header, &stored, want)?;
    Ok((stored, raw))
}

/// Reads, decompresses and verifies one blob of a pack.
pub fn read_blob(enc: &Encryption, pack: &[u8], want: &PackEntry) -> Result<Vec<u8>, DecodeError> {
    read_record(enc, record_at(pack, want.offset)?, want)
}

/// The pack's bytes from `offset` on.
fn record_at(pack: &[u8], offset: u64) -> Result<&[u8], DecodeError> {
    usize::try_from(offset)
        .ok()
        .and_then(|at| pack.get(at..))
        .ok_or(DecodeError::Truncated {
            what: "blob header",
            offset: offset as usize,
            need: BLOB_HEADER_LEN,
            have: 0,
        })
}

/// Reads, decompresses and verifies one blob from its record: `record` holds the pack's
/// bytes from `want.offset` on (at least [`blob_span`] of them), as a ranged read gets them.
pub fn read_record(
    enc: &Encryption,
    record: &[u8],
    want: &PackEntry,
) -> Result<Vec<u8>, DecodeError> {
    let (header, stored) = stored_part(enc, record, want)?;
    verify_stored(enc, &header, &stored, want)
}

/// Decompresses `stored` and checks the result is `header`'s blob.
fn verify_stored(
    enc: &Encryption,
    header: &PackEntry,
    stored: &[u8],
    want: &PackEntry,
) -> Result<Vec<u8>, DecodeError> {
    let start = want.offset as usize + BLOB_HEADER_LEN;
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
    if enc.id_of(&raw) != header.id {
        return Err(DecodeError::Checksum {
            what: "blob content",
        });
    }
    Ok(raw)
}

/// Decodes and verifies a sealed pack's trailer: the list of its blobs.
pub fn read_trailer(enc: &Encryption, pack: &[u8]) -> Result<Vec<PackEntry>, DecodeError> {
    read_trailer_from_tail(enc, pack.get(..PACK_HEADER_LEN).unwrap_or(pack), pack, 0)
}

/// Where the trailer of a pack starts, from its last [`FOOTER_LEN`] bytes (unverified: the
/// trailer is checked by [`read_trailer_from_tail`]).
pub fn trailer_offset(footer: &[u8]) -> Result<u64, DecodeError> {
    let mut f = Reader::new(footer);
    f.u64("trailer offset")
}

/// Like [`read_trailer`], from the pack's first [`PACK_HEADER_LEN`] bytes (`header`) and its
/// bytes from `tail_start` to the end (`tail`), so that a remote pack is listed with two
/// range reads instead of a download. The tail must reach back to the trailer's start.
pub fn read_trailer_from_tail(
    enc: &Encryption,
    header: &[u8],
    tail: &[u8],
    tail_start: u64,
) -> Result<Vec<PackEntry>, DecodeError> {
    let (magic_want, end_magic_want) = magics(enc);
    let mut r = Reader::new(header);
    let magic = r.array::<8>("pack magic")?;
    if &magic != magic_want {
        return Err(DecodeError::BadMagic {
            what: "pack magic",
            expected: to_hex(magic_want),
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
    let end_magic = footer.get(48..).unwrap_or_default();
    if end_magic != end_magic_want {
        return Err(DecodeError::BadMagic {
            what: "pack end magic",
            expected: to_hex(end_magic_want),
            found: to_hex(end_magic),
        });
    }
    let mut f = Reader::new(footer);
    let entries_offset = f.u64("trailer offset")?;
    let entries_start = usize::try_from(entries_offset)
        .ok()
        .filter(|&o| o >= PACK_HEADER_LEN && o <= footer_at)
        .ok_or_else(|| DecodeError::Invalid {
            what: "trailer offset",
            offset: footer_at,
            reason: format!("{entries_offset} is outside the pack"),
        })?;
    if entries_start < tail_start {
        return Err(DecodeError::Truncated {
            what: "pack trailer",
            offset: entries_start,
            need: pack_len - entries_start,
            have: tail.len(),
        });
    }
    let trailer = tail
        .get(entries_start - tail_start..footer_at - tail_start)
        .unwrap_or_default();
    let (opened, count);
    let entries: &[u8] = if enc.is_encrypted() {
        let mut t = Reader::new(trailer);
        let nonce = t.array::<NONCE_LEN>("trailer nonce")?;
        let sealed = t.take(t.remaining(), "sealed trailer")?;
        let aad = sealed_trailer_aad(header.get(..PACK_HEADER_LEN).unwrap_or(header), footer);
        opened = enc.open(SealedPart::Meta, "pack trailer", &nonce, &aad, sealed)?;
        let mut o = Reader::new(&opened);
        count = o.u32("trailer count")?;
        o.take(o.remaining(), "trailer entries")?
    } else {
        count = f.u32("trailer count")?;
        let _reserved = f.u32("reserved")?;
        let checksum = f.array::<32>("trailer checksum")?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(trailer);
        hasher.update(footer.get(..16).unwrap_or_default());
        if hasher.finalize().as_bytes() != &checksum {
            return Err(DecodeError::Checksum {
                what: "pack trailer",
            });
        }
        trailer
    };
    let expected_len = (count as u64).checked_mul(TRAILER_ENTRY_LEN as u64);
    if Some(entries.len() as u64) != expected_len {
        return Err(DecodeError::Invalid {
            what: "trailer offset",
            offset: footer_at,
            reason: format!("{count} entries at {entries_offset} do not end at the footer"),
        });
    }
    let mut r = Reader::new(entries);
    let mut out = Vec::with_capacity(count as usize);
    let mut next_free = PACK_HEADER_LEN as u64;
    for _ in 0..count {
        let at = entries_start + r.pos();
        let (id, kind, compression, raw_len, stored_len) =
            read_blob_fields(&mut r, at, "trailer entry", stored_extra(enc))?;
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
pub fn scan_blobs(enc: &Encryption, pack: &[u8]) -> Vec<PackEntry> {
    let mut out = Vec::new();
    if pack.get(..8) != Some(&magics(enc).0[..]) {
        return out;
    }
    let mut offset = PACK_HEADER_LEN as u64;
    while let Ok(entry) = decode_blob_header(enc, pack, offset) {
        if read_blob(enc, pack, &entry).is_err() {
            break;
        }
        offset += entry.span();
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
        // A new level on the same context: the agent moves its level while it runs.
        let reused = match slot.as_mut() {
            Some((l, _)) if *l == level => true,
            Some((l, c)) => {
                c.set_compression_level(level).is_ok() && {
                    *l = level;
                    true
                }
            }
            None => false,
        };
        if !reused {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::encryption::RepositoryKeys;
    use std::sync::Arc;

    /// A whole pack of `blobs` built from this module's encoders alone.
    fn pack_of(enc: &Encryption, blobs: &[&[u8]]) -> (Vec<u8>, Vec<PackEntry>) {
        let header = pack_header(enc, [7; 8]);
        let mut pack = header.to_vec();
        let mut entries = Vec::new();
        for (i, raw) in blobs.iter().enumerate() {
            let (compression, stored) = compress(raw, 3);
            let kind = if i % 2 == 0 {
                BlobKind::Data
            } else {
                BlobKind::Tree
            };
            let e = PackEntry {
                id: enc.id_of(raw),
                kind,
                compression,
                raw_len: raw.len() as u32,
                stored_len: entry_stored_len(enc, stored.len()),
                offset: pack.len() as u64,
            };
            let (head, body) = encode_blob_record(enc, &e, &stored).unwrap();
            pack.extend_from_slice(&head);
            pack.extend_from_slice(&body);
            assert_eq!(pack.len() as u64, e.offset + e.span());
            entries.push(e);
        }
        let at = pack.len() as u64;
        pack.extend_from_slice(&encode_trailer(enc, &header, &entries, at).unwrap());
        (pack, entries)
    }

    /// The bytes of one blob record for entry `e`: its head and its prepared body.
    fn encode_blob_record<'s>(
        enc: &Encryption,
        e: &PackEntry,
        stored: &'s [u8],
    ) -> Result<(Vec<u8>, Cow<'s, [u8]>), DecodeError> {
        let prepared = prepare_blob(enc, &e.id, e.kind, stored)?;
        let head = encode_blob_head(enc, e, &prepared)?;
        Ok((head, prepared.body))
    }

    fn fuzz_keys() -> Encryption {
        Encryption::Encrypted(Arc::new(RepositoryKeys::new(&[1; 32], &[2; 32], &[3; 32])))
    }

    #[test]
    fn sealed_pack_round_trip_and_its_sizes() {
        let enc = fuzz_keys();
        let blobs: [&[u8]; 3] = [b"", &[5u8; 9000], b"a small tree"];
        let (pack, entries) = pack_of(&enc, &blobs);
        assert_eq!(read_trailer(&enc, &pack).unwrap(), entries);
        for (e, raw) in entries.iter().zip(blobs) {
            assert_eq!(read_blob(&enc, &pack, e).unwrap(), raw);
            let stored = verified_stored(&enc, &pack, e).unwrap();
            assert_eq!(e.stored_len, stored.len() as u32 + SEALED_STORED_EXTRA);
        }
        let spans: u64 = entries.iter().map(PackEntry::span).sum();
        assert_eq!(overhead(&enc, 3) + spans, pack.len() as u64);
        // The fuzz target's seed: `XSTORE_WRITE_FUZZ_SEED=DIR cargo test` writes it.
        if let Some(dir) = std::env::var_os("XSTORE_WRITE_FUZZ_SEED") {
            std::fs::write(std::path::Path::new(&dir).join("sealed-3-blobs"), &pack).unwrap();
        }
    }

    #[test]
    fn a_sealed_record_opens_only_where_it_was_written() {
        let enc = fuzz_keys();
        let (pack, entries) = pack_of(&enc, &[b"first blob", b"second blob"]);
        // The second record's bytes presented as if at the first record's offset.
        let moved = PackEntry {
            offset: entries[0].offset,
            ..entries[1]
        };
        let record = &pack[entries[1].offset as usize..];
        assert!(matches!(
            read_record(&enc, record, &moved),
            Err(DecodeError::Unauthentic {
                what: "blob header"
            })
        ));
        // An entry that claims another kind for the right bytes: the header says otherwise.
        let relabelled = PackEntry {
            kind: BlobKind::ChunkList,
            ..entries[0]
        };
        assert!(read_blob(&enc, &pack, &relabelled).is_err());
    }

    /// Restore's path (opening in the read buffer) refuses what the copying path refuses.
    #[test]
    fn a_record_opened_in_place_is_refused_when_flipped_or_moved() {
        let enc = fuzz_keys();
        let (pack, entries) = pack_of(&enc, &[b"first blob", b"second blob"]);
        let record_of = |e: &PackEntry| pack[e.offset as usize..].to_vec();
        let mut good = record_of(&entries[1]);
        assert_eq!(
            read_record_in_place(&enc, &mut good, &entries[1]).unwrap(),
            b"second blob"
        );
        let mut flipped = record_of(&entries[1]);
        let last = entries[1].span() as usize - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            read_record_in_place(&enc, &mut flipped, &entries[1]),
            Err(DecodeError::Unauthentic {
                what: "blob content"
            })
        ));
        let moved = PackEntry {
            offset: entries[0].offset,
            ..entries[1]
        };
        assert!(matches!(
            read_record_in_place(&enc, &mut record_of(&entries[1]), &moved),
            Err(DecodeError::Unauthentic {
                what: "blob header"
            })
        ));
        let mut plain_reader = record_of(&entries[1]);
        assert!(read_record_in_place(&Encryption::Plain, &mut plain_reader, &entries[1]).is_err());
    }
}
