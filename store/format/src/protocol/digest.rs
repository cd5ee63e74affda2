//! Listing digests: what lets the agent answer "unchanged" for a directory the server has.

use super::messages::{put_entry_parts, WireEntry};

/// BLAKE3 over the entries' encodings, in name order (the caller sorts): two listings with
/// the same digest carry the same names, metadata, symlink targets and xattrs.
pub fn listing_digest<'a>(sorted: impl IntoIterator<Item = &'a WireEntry>) -> [u8; 32] {
    wire_digest(sorted, true)
}

/// [`listing_digest`] with every entry's xattrs left out (capability
/// [`super::CAP_DIGEST_META`]): names, metadata (ctime included) and symlink targets.
pub fn listing_digest_meta<'a>(sorted: impl IntoIterator<Item = &'a WireEntry>) -> [u8; 32] {
    wire_digest(sorted, false)
}

fn wire_digest<'a>(sorted: impl IntoIterator<Item = &'a WireEntry>, with_xattrs: bool) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    for e in sorted {
        buf.clear();
        let xattrs: &[(Vec<u8>, Vec<u8>)] = if with_xattrs { &e.xattrs } else { &[] };
        put_entry_parts(
            &mut buf,
            &e.name,
            e.meta.as_ref().map_err(String::as_str),
            e.target.as_deref(),
            xattrs,
        );
        hasher.update(&buf);
    }
    *hasher.finalize().as_bytes()
}

/// [`listing_digest`] of the listing an agent would send for a directory recorded as `tree`
/// (each entry's recorded metadata, symlink target and xattrs), computed from the tree's
/// entries without building that listing.
pub fn tree_listing_digest(tree: &crate::tree::Tree) -> [u8; 32] {
    tree_digest(tree, true)
}

/// [`listing_digest_meta`] of the listing an agent would send for a directory recorded as
/// `tree`.
pub fn tree_listing_digest_meta(tree: &crate::tree::Tree) -> [u8; 32] {
    tree_digest(tree, false)
}

fn tree_digest(tree: &crate::tree::Tree, with_xattrs: bool) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    for e in &tree.entries {
        buf.clear();
        let target = match &e.content {
            crate::tree::Content::Target(t) => Some(t.as_slice()),
            _ => None,
        };
        let xattrs: &[(Vec<u8>, Vec<u8>)] = if with_xattrs { &e.xattrs } else { &[] };
        put_entry_parts(&mut buf, &e.name, Ok(&e.meta()), target, xattrs);
        hasher.update(&buf);
    }
    *hasher.finalize().as_bytes()
}
