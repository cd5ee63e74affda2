//! A tree that would show in packs if they were not encrypted, and the search for it
//! (FORMAT.md §Encryption): its marker, its names and the plain BLAKE3 ids of its chunks.

use std::fs;
use std::path::{Path, PathBuf};

/// Bytes every file of [`marked_tree`] holds.
pub const MARKER: &[u8] = b"XSTORE-MARKER-6d1f0c-cleartext";

/// Names in [`marked_tree`].
const NAMES: [&[u8]; 3] = [b"secret-name-", b"customer-private-dir", b"large-database"];

/// Writes a tree under `dir` whose content carries [`MARKER`] and whose names are
/// distinctive: small configuration files and a file of several chunks. Returns its files.
pub fn marked_tree(dir: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dir.join("customer-private-dir")).unwrap();
    let mut files = Vec::new();
    for i in 0..20 {
        let path = dir.join(format!("customer-private-dir/secret-name-{i}.conf"));
        let mut body = MARKER.to_vec();
        body.extend_from_slice(format!(" password=hunter{i}\n").as_bytes());
        fs::write(&path, body).unwrap();
        files.push(path);
    }
    let mut big = xstore::chunker::seeded_bytes(11, 6 << 20);
    big[3 << 20..(3 << 20) + MARKER.len()].copy_from_slice(MARKER);
    let path = dir.join("large-database-file.db");
    fs::write(&path, &big).unwrap();
    files.push(path);
    files
}

/// Every plain BLAKE3 id of the chunks of `files`, cut with `params` (the repository's).
pub fn plain_chunk_ids(params: &xstore::ChunkerParams, files: &[PathBuf]) -> Vec<xstore::ChunkId> {
    files
        .iter()
        .flat_map(|f| {
            let bytes = fs::read(f).unwrap();
            xstore::chunker::chunk_slice(params, &bytes)
                .map(|c| c.id)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that `bytes` (named `what`) hold nothing of the marked tree: no marker, no name,
/// none of `ids`.
pub fn assert_nothing_readable(what: &str, bytes: &[u8], ids: &[xstore::ChunkId]) {
    assert!(!contains(bytes, MARKER), "{what} holds the marker");
    for name in NAMES {
        assert!(
            !contains(bytes, name),
            "{what} holds the name {}",
            String::from_utf8_lossy(name)
        );
    }
    for id in ids {
        assert!(!contains(bytes, &id.0), "{what} holds plain chunk id {id}");
    }
}
