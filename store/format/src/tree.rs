//! Tree blobs (one directory's sorted entries) and chunk-list blobs. Byte layout: FORMAT.md §Trees.
//!
//! Decoding refuses names that could escape a restore target (empty, `.`, `..`, containing `/`
//! or NUL), unsorted or duplicate names, and lengths that do not add up.

use crate::bytes::{put_bytes, put_varint, Reader};
use crate::error::DecodeError;
use crate::meta::{Attrs, EntryKind};
use xstore_chunker::ChunkId;

const TREE_MAGIC: &[u8; 4] = b"XSTR";
const CHUNKLIST_MAGIC: &[u8; 4] = b"XSCL";
const VERSION: u8 = 1;
/// Longest entry name accepted.
pub const MAX_NAME_LEN: u64 = 4096;
/// Longest symlink target accepted.
pub const MAX_TARGET_LEN: u64 = 65536;
const MAX_XATTRS: u64 = 4096;
const MAX_XATTR_VALUE: u64 = 1 << 20;
/// Smallest encoded entry: name (1-byte length + 1 byte), kind, mode, uid, gid, seven 8-byte
/// fields, xattr count, content tag. Bounds the entry count a hostile blob can claim.
const MIN_ENTRY_LEN: usize = 2 + 1 + 4 * 3 + 8 * 7 + 1 + 1;
/// Files with more chunks than this keep their chunk list in a separate blob.
pub const INLINE_CHUNK_LIMIT: usize = 1024;

/// One chunk of a file: id and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// Blob id.
    pub id: ChunkId,
    /// Uncompressed length.
    pub len: u32,
}

/// What an entry holds besides metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing (devices, fifos).
    None,
    /// A file's chunks, in order.
    Chunks(Vec<ChunkRef>),
    /// A file whose chunk list is the chunk-list blob with this id.
    ChunkList(ChunkId),
    /// A directory's tree blob.
    Subtree(ChunkId),
    /// A symlink's target, raw bytes.
    Target(Vec<u8>),
}

/// One directory entry with everything restore needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name as raw bytes.
    pub name: Vec<u8>,
    /// Kind.
    pub kind: EntryKind,
    /// Mode, owner, size, times, inode… as the source reported them at backup time.
    pub attrs: Attrs,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Content.
    pub content: Content,
}

impl Entry {
    /// The name as text (lossy for non-UTF-8 names).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
    /// The source metadata this entry was recorded from (what `lstat` gave at backup time).
    pub fn meta(&self) -> crate::meta::EntryMeta {
        crate::meta::EntryMeta {
            kind: self.kind.into(),
            attrs: self.attrs,
        }
    }

    /// The subtree id of a directory entry.
    pub fn subtree(&self) -> Option<ChunkId> {
        match self.content {
            Content::Subtree(id) => Some(id),
            _ => None,
        }
    }
}

/// A decoded directory: entries sorted by name bytes, names unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// The entries.
    pub entries: Vec<Entry>,
}

/// Checks a name read from untrusted input.
pub fn validate_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.contains(&b'/') {
        return Err("name contains /");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    Ok(())
}

impl Tree {
    /// Looks an entry up by name (binary search).
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// Sorts entries by name; callers build trees in any order.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Ids this tree references, each once (for reference counting).
    pub fn children(&self) -> Vec<ChunkId> {
        let mut ids = Vec::new();
        for e in &self.entries {
            match &e.content {
                Content::Chunks(c) => ids.extend(c.iter().map(|c| c.id)),
                Content::ChunkList(id) | Content::Subtree(id) => ids.push(*id),
                Content::None | Content::Target(_) => {}
            }
        }
        distinct(ids)
    }

    /// Encodes to the tree blob byte layout. Entries must be sorted ([`Tree::sort`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 128);
        out.extend_from_slice(TREE_MAGIC);
        out.push(VERSION);
        put_varint(&mut out, self.entries.len() as u64);
        for e in &self.entries {
            put_bytes(&mut out, &e.name);
            out.push(e.kind.code());
            out.extend_from_slice(&e.attrs.mode.to_le_bytes());
            out.extend_from_slice(&e.attrs.uid.to_le_bytes());
            out.extend_from_slice(&e.attrs.gid.to_le_bytes());
            out.extend_from_slice(&e.attrs.mtime_ns.to_le_bytes());
            out.extend_from_slice(&e.attrs.ctime_ns.to_le_bytes());
            out.extend_from_slice(&e.attrs.size.to_le_bytes());
            out.extend_from_slice(&e.attrs.inode.to_le_bytes());
            out.extend_from_slice(&e.attrs.dev.to_le_bytes());
            out.extend_from_slice(&e.attrs.nlink.to_le_bytes());
            out.extend_from_slice(&e.attrs.rdev.to_le_bytes());
            put_varint(&mut out, e.xattrs.len() as u64);
            for (k, v) in &e.xattrs {
                put_bytes(&mut out, k);
                put_bytes(&mut out, v);
            }
            match &e.content {
                Content::None => out.push(0),
                Content::Chunks(chunks) => {
                    out.push(1);
                    put_varint(&mut out, chunks.len() as u64);
                    for c in chunks {
                        out.extend_from_slice(&c.id.0);
                        out.extend_from_slice(&c.len.to_le_bytes());
                    }
                }
                Content::ChunkList(id) => {
                    out.push(2);
                    out.extend_from_slice(&id.0);
                }
                Content::Subtree(id) => {
                    out.push(3);
                    out.extend_from_slice(&id.0);
                }
                Content::Target(t) => {
                    out.push(4);
                    put_bytes(&mut out, t);
                }
            }
        }
        out
    }

    /// Decodes and validates a tree blob.
    pub fn decode(bytes: &[u8]) -> Result<Tree, DecodeError> {
        let mut r = EntryReader::open(bytes)?;
        let mut entries = Vec::with_capacity(r.left);
        while let Some(e) = r.next_entry()? {
            entries.push(e.to_owned());
        }
        Ok(Tree { entries })
    }
}

/// Calls `each` with every blob id a tree blob references (subtrees, chunk lists and inline
/// chunks), in entry order, repeats included, validating the blob exactly as [`Tree::decode`]
/// does as it goes; allocates only for entries with xattrs. What walks of the Merkle DAG that
/// need only its edges (usage, reachability) read instead of decoding whole trees. On an
/// error, `each` may have seen ids of the entries before it.
pub fn for_each_tree_child(bytes: &[u8], mut each: impl FnMut(ChunkId)) -> Result<(), DecodeError> {
    let mut r = EntryReader::open(bytes)?;
    while let Some(e) = r.next_entry()? {
        match e.content {
            ContentRef::Chunks(raw) => chunk_refs(raw).for_each(|c| each(c.id)),
            ContentRef::ChunkList(id) | ContentRef::Subtree(id) => each(id),
            ContentRef::None | ContentRef::Target(_) => {}
        }
    }
    Ok(())
}

/// One decoded entry that borrows its bytes from the blob.
struct EntryRef<'a> {
    name: &'a [u8],
    kind: EntryKind,
    attrs: Attrs,
    xattrs: Vec<(&'a [u8], &'a [u8])>,
    content: ContentRef<'a>,
}

/// [`Content`] borrowed from the blob; `Chunks` holds the validated 36-byte records.
enum ContentRef<'a> {
    None,
    Chunks(&'a [u8]),
    ChunkList(ChunkId),
    Subtree(ChunkId),
    Target(&'a [u8]),
}

/// Inline chunk records (32-byte id, u32 length), as [`EntryReader`] validated them.
fn chunk_refs(raw: &[u8]) -> impl Iterator<Item = ChunkRef> + '_ {
    raw.chunks_exact(CHUNK_REF_LEN).filter_map(|rec| {
        let (id, len) = rec.split_first_chunk::<32>()?;
        let len: [u8; 4] = len.try_into().ok()?;
        Some(ChunkRef {
            id: ChunkId(*id),
            len: u32::from_le_bytes(len),
        })
    })
}

const CHUNK_REF_LEN: usize = 36;

impl EntryRef<'_> {
    fn to_owned(&self) -> Entry {
        Entry {
            name: self.name.to_vec(),
            kind: self.kind,
            attrs: self.attrs,
            xattrs: self
                .xattrs
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            content: match self.content {
                ContentRef::None => Content::None,
                ContentRef::Chunks(raw) => Content::Chunks(chunk_refs(raw).collect()),
                ContentRef::ChunkList(id) => Content::ChunkList(id),
                ContentRef::Subtree(id) => Content::Subtree(id),
                ContentRef::Target(t) => Content::Target(t.to_vec()),
            },
        }
    }
}

/// The one validating parser of tree blobs: header first, then entries one at a time, then
/// nothing after the last (FORMAT.md §Trees).
struct EntryReader<'a> {
    r: Reader<'a>,
    left: usize,
    previous_name: Option<&'a [u8]>,
}

impl<'a> EntryReader<'a> {
    fn open(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>("tree magic")?;
        if &magic != TREE_MAGIC {
            return Err(DecodeError::BadMagic {
                what: "tree magic",
                expected: "XSTR".into(),
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        let version = r.u8("tree version")?;
        if version != VERSION {
            return Err(DecodeError::BadMagic {
                what: "tree version",
                expected: VERSION.to_string(),
                found: version.to_string(),
            });
        }
        let left = r.length("entry count", u64::MAX, MIN_ENTRY_LEN)?;
        Ok(EntryReader {
            r,
            left,
            previous_name: None,
        })
    }

    /// The next entry, or `None` after the last one (once the blob is proven to end there).
    fn next_entry(&mut self) -> Result<Option<EntryRef<'a>>, DecodeError> {
        if self.left == 0 {
            self.r.finish("tree")?;
            return Ok(None);
        }
        self.left -= 1;
        let r = &mut self.r;
        let at = r.pos();
        let name = r.bytes("entry name", MAX_NAME_LEN)?;
        validate_name(name).map_err(|reason| DecodeError::Invalid {
            what: "entry name",
            offset: at,
            reason: reason.into(),
        })?;
        if self.previous_name.is_some_and(|prev| prev >= name) {
            return Err(DecodeError::Invalid {
                what: "entry name",
                offset: at,
                reason: "entries not strictly sorted".into(),
            });
        }
        self.previous_name = Some(name);
        let kind_at = r.pos();
        let kind = EntryKind::from_code(r.u8("entry kind")?, kind_at)?;
        let mode = r.u32("mode")?;
        if mode & !0o7777 != 0 {
            return Err(DecodeError::Invalid {
                what: "mode",
                offset: kind_at + 1,
                reason: format!("{mode:o} has bits outside 07777"),
            });
        }
        let uid = r.u32("uid")?;
        let gid = r.u32("gid")?;
        let mtime_ns = r.i64("mtime")?;
        let ctime_ns = r.i64("ctime")?;
        let size = r.u64("size")?;
        let inode = r.u64("inode")?;
        let dev = r.u64("dev")?;
        let nlink = r.u64("nlink")?;
        let rdev = r.u64("rdev")?;
        let nx = r.length("xattr count", MAX_XATTRS, 2)?;
        let mut xattrs = Vec::with_capacity(nx);
        for _ in 0..nx {
            let k = r.bytes("xattr name", 255)?;
            let v = r.bytes("xattr value", MAX_XATTR_VALUE)?;
            xattrs.push((k, v));
        }
        let tag_at = r.pos();
        let content = match r.u8("content tag")? {
            0 => ContentRef::None,
            1 => {
                let n = r.length("chunk count", INLINE_CHUNK_LIMIT as u64, CHUNK_REF_LEN)?;
                let raw = r.take(n * CHUNK_REF_LEN, "chunk id")?;
                let total: u64 = chunk_refs(raw).map(|c| u64::from(c.len)).sum();
                if total != size {
                    return Err(DecodeError::Invalid {
                        what: "file chunks",
                        offset: tag_at,
                        reason: format!("chunks hold {total} bytes, size is {size}"),
                    });
                }
                ContentRef::Chunks(raw)
            }
            2 => ContentRef::ChunkList(r.id("chunk list id")?),
            3 => ContentRef::Subtree(r.id("subtree id")?),
            4 => ContentRef::Target(r.bytes("symlink target", MAX_TARGET_LEN)?),
            t => {
                return Err(DecodeError::Invalid {
                    what: "content tag",
                    offset: tag_at,
                    reason: format!("unknown tag {t}"),
                })
            }
        };
        let consistent = matches!(
            (kind, &content),
            (
                EntryKind::File,
                ContentRef::Chunks(_) | ContentRef::ChunkList(_)
            ) | (EntryKind::Dir, ContentRef::Subtree(_))
                | (EntryKind::Symlink, ContentRef::Target(_))
                | (
                    EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo,
                    ContentRef::None
                )
        );
        if !consistent {
            return Err(DecodeError::Invalid {
                what: "content tag",
                offset: tag_at,
                reason: format!("content does not fit a {kind:?} entry"),
            });
        }
        Ok(Some(EntryRef {
            name,
            kind,
            attrs: Attrs {
                mode,
                uid,
                gid,
                mtime_ns,
                ctime_ns,
                size,
                inode,
                dev,
                nlink,
                rdev,
            },
            xattrs,
            content,
        }))
    }
}

/// Sorted, deduplicated ids: a parent counts once per distinct child (refcount rule).
pub fn distinct(mut ids: Vec<ChunkId>) -> Vec<ChunkId> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The distinct chunk ids of a chunk list.
pub fn chunk_list_children(chunks: &[ChunkRef]) -> Vec<ChunkId> {
    distinct(chunks.iter().map(|c| c.id).collect())
}

/// Whether `bytes` are a valid tree or chunk-list encoding. Such bytes are never stored as a
/// file's content: the blob id would then name both a data chunk and a tree (or chunk list),
/// and an edge of the wrong kind breaks reference counting (ARCHITECTURE.md, "Trust boundary").
/// Only bytes that start with one of the two magics are decoded.
pub fn is_structure_encoding(bytes: &[u8]) -> bool {
    (bytes.starts_with(TREE_MAGIC) && Tree::decode(bytes).is_ok())
        || (bytes.starts_with(CHUNKLIST_MAGIC) && decode_chunk_list(bytes).is_ok())
}

/// Encodes a chunk-list blob.
pub fn encode_chunk_list(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + chunks.len() * 36);
    out.extend_from_slice(CHUNKLIST_MAGIC);
    out.push(VERSION);
    put_varint(&mut out, chunks.len() as u64);
    for c in chunks {
        out.extend_from_slice(&c.id.0);
        out.extend_from_slice(&c.len.to_le_bytes());
    }
    out
}

/// Decodes a chunk-list blob.
pub fn decode_chunk_list(bytes: &[u8]) -> Result<Vec<ChunkRef>, DecodeError> {
    let mut r = Reader::new(bytes);
    let magic = r.array::<4>("chunk list magic")?;
    if &magic != CHUNKLIST_MAGIC || r.u8("chunk list version")? != VERSION {
        return Err(DecodeError::BadMagic {
            what: "chunk list magic",
            expected: "XSCL v1".into(),
            found: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    let n = r.length("chunk count", u64::MAX, 36)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.id("chunk id")?;
        let len = r.u32("chunk length")?;
        out.push(ChunkRef { id, len });
    }
    r.finish("chunk list")?;
    Ok(out)
}

/// The `ls -l` mode column: `-rw-r--r--`, `drwxr-sr-x`, `drwxrwxrwt` (setuid, setgid and
/// sticky bits included).
pub fn mode_string(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind.letter());
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        let set = mode & bit != 0;
        s.push(match (special, set, i) {
            (true, true, 8) => 't',
            (true, false, 8) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub fn entry(name: &[u8], kind: EntryKind, content: Content) -> Entry {
        let size = match &content {
            Content::Chunks(c) => c.iter().map(|c| u64::from(c.len)).sum(),
            Content::Target(t) => t.len() as u64,
            _ => 0,
        };
        Entry {
            name: name.to_vec(),
            kind,
            attrs: Attrs {
                mode: 0o644,
                uid: 1000,
                gid: 1000,
                mtime_ns: 1_700_000_000_123_456_789,
                ctime_ns: 1_700_000_000_000_000_001,
                size,
                inode: 42,
                dev: 7,
                nlink: 1,
                rdev: 0,
            },
            xattrs: vec![(b"user.a".to_vec(), b"v".to_vec())],
            content,
        }
    }

    #[test]
    fn round_trip() {
        let mut t = Tree {
            entries: vec![
                entry(
                    b"z\xff\xfe",
                    EntryKind::Symlink,
                    Content::Target(b"../x".to_vec()),
                ),
                entry(
                    b"a",
                    EntryKind::File,
                    Content::Chunks(vec![ChunkRef {
                        id: ChunkId::of(b"x"),
                        len: 10,
                    }]),
                ),
                entry(b"d", EntryKind::Dir, Content::Subtree(ChunkId::of(b"t"))),
                entry(b"f", EntryKind::Fifo, Content::None),
            ],
        };
        t.sort();
        let bytes = t.encode();
        assert_eq!(Tree::decode(&bytes).unwrap(), t);
        assert_eq!(t.get(b"d").unwrap().kind, EntryKind::Dir);
        assert!(t.get(b"q").is_none());
        for cut in 0..bytes.len() {
            assert!(Tree::decode(&bytes[..cut]).is_err());
        }
    }

    /// The smallest entries (an empty file, a fifo, no xattrs) must decode: the entry-count
    /// bound must not be larger than the smallest real entry.
    #[test]
    fn smallest_entries_decode() {
        for (kind, content) in [
            (EntryKind::File, Content::Chunks(vec![])),
            (EntryKind::Fifo, Content::None),
        ] {
            let mut e = entry(b"x", kind, content);
            e.xattrs.clear();
            let t = Tree { entries: vec![e] };
            let bytes = t.encode();
            assert!(bytes.len() - 6 <= MIN_ENTRY_LEN + 1, "{}", bytes.len());
            assert_eq!(Tree::decode(&bytes).unwrap(), t);
        }
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            let t = Tree {
                entries: vec![entry(bad, EntryKind::Fifo, Content::None)],
            };
            assert!(Tree::decode(&t.encode()).is_err(), "{bad:?} accepted");
        }
        let dup = Tree {
            entries: vec![
                entry(b"a", EntryKind::Fifo, Content::None),
                entry(b"a", EntryKind::Fifo, Content::None),
            ],
        };
        assert!(Tree::decode(&dup.encode()).is_err());
    }

    /// The edge-only walk sees exactly the ids `decode` + `children` see (repeats included, in
    /// entry order), and refuses exactly the blobs `decode` refuses: every truncation and every
    /// single-byte change of a tree holding each kind of content.
    #[test]
    fn tree_children_agree_with_decode() {
        let x = ChunkRef {
            id: ChunkId::of(b"x"),
            len: 3,
        };
        let y = ChunkRef {
            id: ChunkId::of(b"y"),
            len: 4,
        };
        let mut t = Tree {
            entries: vec![
                entry(b"a", EntryKind::File, Content::Chunks(vec![x, y, x])),
                entry(b"b", EntryKind::File, Content::ChunkList(ChunkId::of(b"l"))),
                entry(b"c", EntryKind::Dir, Content::Subtree(ChunkId::of(b"t"))),
                entry(b"d", EntryKind::Symlink, Content::Target(b"a".to_vec())),
                entry(b"e", EntryKind::Fifo, Content::None),
                entry(b"f", EntryKind::File, Content::Chunks(vec![y])),
            ],
        };
        t.sort();
        let bytes = t.encode();
        let walk = |b: &[u8]| {
            let mut ids = Vec::new();
            for_each_tree_child(b, |id| ids.push(id)).map(|()| ids)
        };
        let all = walk(&bytes).unwrap();
        let expected = [x.id, y.id, x.id, ChunkId::of(b"l"), ChunkId::of(b"t"), y.id];
        assert_eq!(all, expected);
        assert_eq!(distinct(all), t.children());
        let mut corrupt = bytes.clone();
        for at in 0..bytes.len() {
            assert!(walk(&bytes[..at]).is_err(), "truncation at {at} accepted");
            for flip in [0x01u8, 0x80, 0xff] {
                let original = bytes[at];
                corrupt[at] = original ^ flip;
                match (Tree::decode(&corrupt), walk(&corrupt)) {
                    (Ok(tree), Ok(ids)) => assert_eq!(distinct(ids), tree.children()),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!("byte {at} ^ {flip:#x}: decode {a:?}, walk {b:?}"),
                }
                corrupt[at] = original;
            }
        }
    }

    #[test]
    fn chunk_list_round_trip() {
        let c: Vec<ChunkRef> = (0..3u8)
            .map(|i| ChunkRef {
                id: ChunkId::of(&[i]),
                len: u32::from(i),
            })
            .collect();
        assert_eq!(decode_chunk_list(&encode_chunk_list(&c)).unwrap(), c);
        assert!(decode_chunk_list(b"XSCL\x01\xff").is_err());
    }
}
