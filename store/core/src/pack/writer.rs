//! Writing packs: one blob at a time into a temporary file, sealed (trailer, fsync, read
//! back) and put into the pack storage (`storage/`). The byte layout is `xstore_format::pack` (FORMAT.md §Packs).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use xstore_format::pack::*;

use crate::error::{Error, IoContext, Result};
use crate::storage::PackStorage;
use xstore_chunker::ChunkId;
use xstore_format::bytes::to_hex;
use xstore_format::encryption::Encryption;

#[derive(Debug)]
pub(crate) struct SealedPack {
    pub id: PackId,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

/// One blob to append to a pack: its id and kind, how its stored bytes are compressed, its
/// raw length and the stored bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewBlob<'a> {
    pub(crate) id: ChunkId,
    pub(crate) kind: BlobKind,
    pub(crate) compression: Compression,
    pub(crate) raw_len: u32,
    pub(crate) stored: &'a [u8],
}

/// Writes one pack under a temporary name; [`PackWriter::seal`] makes it durable and visible.
pub(crate) struct PackWriter {
    tmp_path: PathBuf,
    enc: Encryption,
    header: [u8; PACK_HEADER_LEN],
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    /// Starts a pack in `tmp_dir` (same filesystem as the packs directory), plain or sealed
    /// as `enc` says.
    pub(crate) fn create(tmp_dir: &Path, enc: &Encryption) -> Result<Self> {
        let mut rnd = [0u8; 16];
        getrandom::fill(&mut rnd).map_err(|e| Error::System {
            what: "random bytes for a pack's name",
            reason: e.to_string(),
        })?;
        let tmp_path = tmp_dir.join(format!("{}.tmp", to_hex(&rnd)));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .at(&tmp_path)?;
        // The salt (FORMAT.md §Packs): two writers that seal the same blobs in the same order
        // (hosts with the same files, pulled at once) must not make one pack id, or the
        // discard of one would delete the other's pack.
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&rnd[..8]);
        let header = pack_header(enc, salt);
        let mut w = PackWriter {
            tmp_path,
            enc: enc.clone(),
            header,
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        };
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).at(&self.tmp_path)?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends one stored blob (sealed, in an encrypted repository).
    pub(crate) fn add(&mut self, blob: NewBlob<'_>) -> Result<()> {
        let prepared = prepare(&self.enc, &blob)?;
        self.add_prepared(&blob, &prepared)
    }

    /// Appends one stored blob whose body [`prepare`] made (a writer shared by threads seals
    /// bodies before it takes the pack's lock; only the small header is sealed here).
    pub(crate) fn add_prepared(
        &mut self,
        blob: &NewBlob<'_>,
        prepared: &PreparedBlob<'_>,
    ) -> Result<()> {
        let entry = PackEntry {
            id: blob.id,
            kind: blob.kind,
            compression: blob.compression,
            raw_len: blob.raw_len,
            stored_len: entry_stored_len(&self.enc, blob.stored.len()),
            offset: self.len,
        };
        let head = encode_blob_head(&self.enc, &entry, prepared).map_err(|e| Error::System {
            what: "sealing a blob header",
            reason: e.to_string(),
        })?;
        self.write(&head)?;
        self.write(prepared.body())?;
        self.entries.push(entry);
        Ok(())
    }

    /// Writes the trailer, fsyncs (when the storage keeps this file), reads it back and puts
    /// it into the storage (local: renamed to `packs/XX/<id>.pack`, the directory fsynced).
    /// On failure the temporary file is removed (a full disk leaves nothing behind).
    pub(crate) fn seal(self, storage: &dyn PackStorage, packs_dir: &Path) -> Result<SealedPack> {
        let tmp = self.tmp_path.clone();
        let sealed = self.seal_inner(storage, packs_dir);
        if sealed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        sealed
    }

    fn seal_inner(mut self, storage: &dyn PackStorage, packs_dir: &Path) -> Result<SealedPack> {
        crate::failpoint::fail_io("pack-seal")?;
        let entries_offset = self.len;
        let trailer = encode_trailer(&self.enc, &self.header, &self.entries, entries_offset)
            .map_err(|e| Error::System {
                what: "sealing a pack trailer",
                reason: e.to_string(),
            })?;
        self.write(&trailer)?;
        self.out.flush().at(&self.tmp_path)?;
        if storage.keeps_the_local_file() {
            self.out.get_ref().sync_all().at(&self.tmp_path)?;
        }
        let id = ChunkId(*self.hasher.finalize().as_bytes());
        self.read_back(&id)?;
        // Recorded as this writer's uncommitted pack before it becomes visible: recovery
        // deletes only packs so recorded (journal.rs).
        crate::pack::journal::mark_uncommitted(packs_dir, &id)?;
        let metadata_only = self.entries.iter().all(|e| !e.kind.is_file_data());
        storage.put(&id, &self.tmp_path, metadata_only)?;
        Ok(SealedPack {
            id,
            size: self.len,
            entries: self.entries,
        })
    }

    /// Reads the synced file back before the pack may become visible: its bytes must hash to
    /// the id computed while writing them (every stored byte of every blob as written), the
    /// trailer must decode to the entries written, and tree, chunk-list and snapshot-record
    /// blobs (what makes data findable) are decompressed and re-hashed. Data blobs are not
    /// decompressed here: that doubled the CPU of the read-back (a first backup 1.28× slower,
    /// against 1.0x for the hash); `verify` and `check --read-data` decompress them later.
    fn read_back(&self, id: &ChunkId) -> Result<()> {
        if crate::failpoint::fail_io("pack-readback").is_err() {
            // Test hook: damage the written bytes as a faulty disk or controller would.
            corrupt_first_blob(&self.tmp_path)?;
        }
        let map = crate::storage::mmap::map_sealed_file(&self.tmp_path)?;
        let invalid = |reason: String| Error::Corrupt {
            path: self.tmp_path.clone(),
            source: xstore_format::DecodeError::Invalid {
                what: "pack read back after writing",
                offset: 0,
                reason,
            },
        };
        if ChunkId::of(&map) != *id {
            return Err(invalid("the bytes differ from those written".into()));
        }
        let trailer = xstore_format::pack::read_trailer(&self.enc, &map)
            .map_err(|e| invalid(e.to_string()))?;
        if trailer != self.entries {
            return Err(invalid("the trailer differs from the blobs written".into()));
        }
        for e in self.entries.iter().filter(|e| !e.kind.is_file_data()) {
            xstore_format::pack::read_blob(&self.enc, &map, e).map_err(|source| {
                Error::CorruptBlob {
                    id: e.id,
                    pack: format!("{} (read back after writing)", self.tmp_path.display()),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Abandons the pack, removing the temporary file.
    pub(crate) fn discard(self) {
        let _ = fs::remove_file(&self.tmp_path);
    }
}

/// `blob`'s body as it goes into a pack of a repository sealed as `enc` says.
pub(crate) fn prepare<'s>(enc: &Encryption, blob: &NewBlob<'s>) -> Result<PreparedBlob<'s>> {
    prepare_blob(enc, &blob.id, blob.kind, blob.stored).map_err(|e| Error::System {
        what: "sealing a blob",
        reason: e.to_string(),
    })
}

/// Flips one bit in the first blob's stored bytes (the `pack-readback` test hook).
fn corrupt_first_blob(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    let at =
        xstore_format::pack::BLOB_HEADER_LEN as u64 + xstore_format::pack::PACK_HEADER_LEN as u64;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).at(path)?;
    f.write_all_at(&[b[0] ^ 0x10], at).at(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn encrypted() -> Encryption {
        let keys = xstore_format::encryption::RepositoryKeys::new(&[1; 32], &[2; 32], &[3; 32]);
        Encryption::Encrypted(std::sync::Arc::new(keys))
    }

    /// Both ways a repository stores packs.
    fn both() -> [Encryption; 2] {
        [Encryption::Plain, encrypted()]
    }

    fn build(enc: &Encryption, blobs: &[&[u8]]) -> (tempfile::TempDir, Vec<u8>, SealedPack) {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, sealed) = build_in(enc, dir.path(), BlobKind::Data, blobs);
        (dir, bytes, sealed)
    }

    /// A sealed pack of `blobs` (compressed, all of `kind`) in `dir`: its bytes and record.
    fn build_in(
        enc: &Encryption,
        dir: &Path,
        kind: BlobKind,
        blobs: &[&[u8]],
    ) -> (Vec<u8>, SealedPack) {
        let mut w = PackWriter::create(dir, enc).unwrap();
        for b in blobs {
            let (c, stored) = compress(b, 3);
            w.add(NewBlob {
                id: enc.id_of(b),
                kind,
                compression: c,
                raw_len: b.len() as u32,
                stored: &stored,
            })
            .unwrap();
        }
        let storage = crate::storage::local::LocalStorage::new(dir.to_path_buf());
        let sealed = w.seal(&storage, dir).unwrap();
        let bytes = fs::read(crate::layout::pack_file(dir, &sealed.id)).unwrap();
        (bytes, sealed)
    }

    /// A real sealed pack of one blob of `kind`: its id and bytes.
    fn real_pack(enc: &Encryption, dir: &Path, kind: BlobKind) -> (ChunkId, Vec<u8>) {
        let blob = xstore_chunker::seeded_bytes(kind.code().into(), 3_000);
        let (bytes, sealed) = build_in(enc, dir, kind, &[&blob]);
        (sealed.id, bytes)
    }

    #[test]
    fn offered_bytes_are_kept_only_when_they_are_a_whole_pack_of_metadata() {
        for enc in both() {
            let d = tempfile::tempdir().unwrap();
            let cache = crate::storage::pack_cache::PackCache::new(
                d.path().join("cache"),
                1 << 20,
                enc.clone(),
            );
            let cached = |id: &ChunkId| d.path().join(format!("cache/{id}.pack")).exists();
            let (trees, tree_bytes) = real_pack(&enc, d.path(), BlobKind::Tree);
            let (data, data_bytes) = real_pack(&enc, d.path(), BlobKind::Data);
            // Not the whole pack (a window that ended early): not kept.
            cache.offer(&trees, &tree_bytes[..tree_bytes.len() - 1]);
            assert!(!cached(&trees));
            // A pack of file data: not kept.
            cache.offer(&data, &data_bytes);
            assert!(!cached(&data));
            // The whole trees pack: kept, and read back.
            cache.offer(&trees, &tree_bytes);
            let mut buf = vec![0u8; 64];
            assert!(cache.read_at(&trees, 8, &mut buf));
            assert_eq!(&buf[..], &tree_bytes[8..72]);
            let leftovers: Vec<_> = fs::read_dir(d.path().join("cache"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        }
    }

    #[test]
    fn pack_round_trip() {
        for enc in both() {
            let a = vec![1u8; 10_000];
            let b = xstore_chunker::seeded_bytes(3, 5000);
            let (_d, bytes, sealed) = build(&enc, &[&a, &b, b""]);
            assert_eq!(ChunkId::of(&bytes), sealed.id);
            let entries = read_trailer(&enc, &bytes).unwrap();
            assert_eq!(entries, sealed.entries);
            assert_eq!(read_blob(&enc, &bytes, &entries[0]).unwrap(), a);
            assert_eq!(read_blob(&enc, &bytes, &entries[1]).unwrap(), b);
            assert_eq!(read_blob(&enc, &bytes, &entries[2]).unwrap(), b"");
            assert_eq!(scan_blobs(&enc, &bytes[..bytes.len() - 10]), entries);
            let overhead = overhead(&enc, entries.len() as u32);
            let spans: u64 = entries.iter().map(PackEntry::span).sum();
            assert_eq!(overhead + spans, bytes.len() as u64);
        }
    }

    #[test]
    fn a_trailer_read_from_the_header_and_a_tail_equals_the_whole_read() {
        for enc in both() {
            let blobs: Vec<Vec<u8>> = (0..40)
                .map(|i| xstore_chunker::seeded_bytes(i, 100 + i as usize * 37))
                .collect();
            let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
            let (_d, bytes, sealed) = build(&enc, &refs);
            let header = &bytes[..PACK_HEADER_LEN];
            let entries_offset = trailer_offset(&bytes[bytes.len() - FOOTER_LEN..]).unwrap();
            for cut in 0..=bytes.len() {
                let got = read_trailer_from_tail(&enc, header, &bytes[cut..], cut as u64);
                if cut as u64 <= entries_offset {
                    assert_eq!(got.unwrap(), sealed.entries, "tail from {cut}");
                } else {
                    assert!(got.is_err(), "a tail from {cut} misses the trailer's start");
                }
            }
            let mut bad = bytes.clone();
            let at = entries_offset as usize + 3;
            bad[at] ^= 1;
            let cut = entries_offset as usize;
            assert!(read_trailer_from_tail(&enc, header, &bad[cut..], cut as u64).is_err());
        }
    }

    #[test]
    fn damage_is_detected_not_panicked() {
        for enc in both() {
            let a = xstore_chunker::seeded_bytes(1, 3000);
            let (_d, bytes, sealed) = build(&enc, &[&a]);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x40;
                // The salt (header bytes 8..16) is any value: only the pack id covers it
                // (and, sealed, the trailer's associated data).
                assert_ne!(ChunkId::of(&bad), sealed.id, "flip at {i}");
                if (8..16).contains(&i) && !enc.is_encrypted() {
                    continue;
                }
                let trailer = read_trailer(&enc, &bad);
                let blob = read_blob(&enc, &bad, &sealed.entries[0]);
                assert!(trailer.is_err() || blob.is_err(), "flip at {i} undetected");
            }
            for cut in 0..bytes.len() {
                let _ = read_trailer(&enc, &bytes[..cut]);
                let _ = scan_blobs(&enc, &bytes[..cut]);
            }
        }
    }

    #[test]
    fn sealed_packs_hold_no_plaintext_plain_id_or_keyed_id() {
        let enc = encrypted();
        let marker = b"MARKER-7f3a-visible-only-when-decrypted ".repeat(50);
        let (_d, bytes, sealed) = build(&enc, &[&marker]);
        let hay = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!hay(b"MARKER-7f3a"));
        assert!(!hay(&ChunkId::of(&marker).0));
        assert!(!hay(&sealed.entries[0].id.0), "the keyed id is sealed too");
        // The plain form, for contrast, names its blob in the clear.
        let (_d2, plain, _) = build(&Encryption::Plain, &[&marker]);
        assert!(plain.windows(32).any(|w| w == ChunkId::of(&marker).0));
    }

    #[test]
    fn sealed_blobs_moved_swapped_or_under_another_key_never_read() {
        let enc = encrypted();
        let a = xstore_chunker::seeded_bytes(1, 3000);
        let b = xstore_chunker::seeded_bytes(2, 3000);
        let (_d1, pa, sa) = build(&enc, &[&a]);
        let (_d2, pb, sb) = build(&enc, &[&b]);
        let (ea, eb) = (sa.entries[0], sb.entries[0]);
        // Pack b read where pack a is expected (swapped or replaced packs): a's blob does
        // not open there, and b's trailer is not a's.
        assert!(read_blob(&enc, &pb, &ea).is_err());
        assert_ne!(read_trailer(&enc, &pb).unwrap(), sa.entries);
        // b's record copied over a's (same offset, same length): names b, refused as a.
        assert_eq!(ea.offset, eb.offset);
        let mut spliced = pa.clone();
        let (start, len) = (ea.offset as usize, eb.span() as usize);
        spliced[start..start + len].copy_from_slice(&pb[start..start + len]);
        assert!(read_blob(&enc, &spliced, &ea).is_err());
        // Another repository's key opens nothing; a plain reader refuses a sealed pack and
        // an encrypted one refuses a plain pack (no unsealed data slips into a sealed store).
        let other = Encryption::Encrypted(std::sync::Arc::new(
            xstore_format::encryption::RepositoryKeys::new(&[9; 32], &[2; 32], &[3; 32]),
        ));
        assert!(read_trailer(&other, &pa).is_err() || read_blob(&other, &pa, &ea).is_err());
        let other_seal = Encryption::Encrypted(std::sync::Arc::new(
            xstore_format::encryption::RepositoryKeys::new(&[1; 32], &[8; 32], &[7; 32]),
        ));
        assert!(read_trailer(&other_seal, &pa).is_err());
        assert!(read_blob(&other_seal, &pa, &ea).is_err());
        assert!(read_trailer(&Encryption::Plain, &pa).is_err());
        let (_d3, plain, _) = build(&Encryption::Plain, &[&a]);
        assert!(read_trailer(&enc, &plain).is_err());
        assert!(scan_blobs(&enc, &plain).is_empty());
        // A truncated trailer fails; the blobs are still found by a scan.
        let cut = &pa[..pa.len() - 20];
        assert!(read_trailer(&enc, cut).is_err());
        assert_eq!(scan_blobs(&enc, cut), sa.entries);
    }
}
