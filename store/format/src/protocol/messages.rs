//! The messages of both directions and their codecs.

use std::io;

use crate::bytes::{put_bytes, put_varint, Reader};
use crate::error::DecodeError;
use crate::meta::{Attrs, EntryKind, EntryMeta, SourceKind};
use xstore_chunker::ChunkId;

use super::delta::{SubHash, SUB_HASH_LEN};

use super::*;

/// Why the agent could not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The path does not exist (any more).
    NotFound = 1,
    /// The agent may not read it.
    PermissionDenied = 2,
    /// Outside the allow-list, or through a symlink: refused by policy.
    Refused = 3,
    /// A malformed or unexpected request.
    BadRequest = 4,
    /// Any other I/O error.
    Io = 5,
}

impl ErrorCode {
    fn from_u8(v: u8, offset: usize) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::PermissionDenied,
            3 => ErrorCode::Refused,
            4 => ErrorCode::BadRequest,
            5 => ErrorCode::Io,
            _ => return Err(invalid("error code", offset, format!("unknown code {v}"))),
        })
    }

    /// The closest `io::ErrorKind`.
    pub fn io_kind(self) -> io::ErrorKind {
        match self {
            ErrorCode::NotFound => io::ErrorKind::NotFound,
            ErrorCode::PermissionDenied | ErrorCode::Refused => io::ErrorKind::PermissionDenied,
            ErrorCode::BadRequest => io::ErrorKind::InvalidInput,
            ErrorCode::Io => io::ErrorKind::Other,
        }
    }

    /// The code for a local I/O error.
    pub fn of(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            _ => ErrorCode::Io,
        }
    }
}

/// One directory entry (or a stat result) as the agent sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    /// File name (for a stat reply: empty).
    pub name: Vec<u8>,
    /// `lstat` result, or why it failed.
    pub meta: Result<EntryMeta, String>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One chunk's bytes in a [`AgentMsg::ChunkData`] reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireChunk {
    /// Uncompressed length.
    pub raw_len: u32,
    /// True when `bytes` is a zstd frame of the chunk, false when it is the chunk itself.
    pub zstd: bool,
    /// The bytes as sent.
    pub bytes: Vec<u8>,
}

/// One range of a [`ServerMsg::ReadDeltas`] request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRange {
    /// Offset in the file.
    pub offset: u64,
    /// Length (at most the chunk maximum).
    pub len: u32,
    /// The base's sub-chunk hashes, in base order ([`super::delta::base_signature`]).
    pub base: Vec<SubHash>,
}

impl WireChunk {
    /// `raw` as it is, uncompressed.
    pub fn raw(raw: &[u8]) -> WireChunk {
        WireChunk {
            raw_len: raw.len() as u32,
            zstd: false,
            bytes: raw.to_vec(),
        }
    }

    /// `raw` compressed with zstd at `level`, or `raw` itself when that is not smaller.
    pub fn compressed(raw: &[u8], level: i32) -> WireChunk {
        let (compression, bytes) = crate::pack::compress(raw, level);
        WireChunk {
            raw_len: raw.len() as u32,
            zstd: compression == crate::pack::Compression::Zstd,
            bytes,
        }
    }
}

/// Messages from the agent to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMsg {
    /// First message: versions, capabilities, the allowed roots (canonical absolute paths).
    Hello {
        /// Protocol versions the agent speaks.
        versions: Vec<u64>,
        /// Optional features (none defined in version 1).
        capabilities: Vec<Vec<u8>>,
        /// The allow-list.
        roots: Vec<Vec<u8>>,
        /// `xstore X.Y.Z`.
        software: Vec<u8>,
    },
    /// Reply to [`ServerMsg::Stat`].
    Stat {
        /// Request id.
        req: u64,
        /// The entry (name empty).
        entry: WireEntry,
    },
    /// Reply to [`ServerMsg::List`], possibly in several frames (`more` on all but the last).
    List {
        /// Request id.
        req: u64,
        /// More frames of this listing follow.
        more: bool,
        /// Entries.
        entries: Vec<WireEntry>,
    },
    /// Reply to [`ServerMsg::List`] whose `known` digest matched: the listing is the one the
    /// server already has.
    ListUnchanged {
        /// Request id.
        req: u64,
    },
    /// Reply to [`ServerMsg::ChunkFile`]: the file's chunk ids, cut with the server's
    /// parameters, and its metadata before and after reading.
    FileChunks {
        /// Request id.
        req: u64,
        /// `fstat` before reading.
        before: EntryMeta,
        /// `fstat` after reading.
        after: EntryMeta,
        /// Chunk ids and lengths in file order.
        chunks: Vec<(ChunkId, u32)>,
        /// The bytes of the only chunk, when the server allowed it (`inline_max`).
        inline: Option<WireChunk>,
    },
    /// Reply to [`ServerMsg::ReadChunks`]: the ranges asked for, in order.
    ChunkData {
        /// Request id.
        req: u64,
        /// One per range.
        chunks: Vec<WireChunk>,
    },
    /// Reply to [`ServerMsg::ReadDeltas`]: per range, in order, a delta program
    /// ([`super::delta::encode_delta`]) carried like a chunk (`raw_len` is the program's).
    Deltas {
        /// Request id.
        req: u64,
        /// One per range.
        programs: Vec<WireChunk>,
    },
    /// The request failed.
    Error {
        /// Request id.
        req: u64,
        /// Why.
        code: ErrorCode,
        /// Details, for the operator.
        message: Vec<u8>,
    },
    /// The agent gives up (bad hello, unsupported version); it exits after sending this.
    Fatal {
        /// Why.
        message: Vec<u8>,
    },
}

/// Messages from the server to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// Reply to the agent's hello: the version chosen and how to chunk.
    Hello {
        /// Chosen protocol version.
        version: u64,
        /// Chunker minimum size.
        min: u32,
        /// Chunker average size.
        avg: u32,
        /// Chunker maximum size.
        max: u32,
        /// zstd level for chunk data (1..=19).
        level: u8,
        /// Optional features the server turns on (a subset of the agent's).
        capabilities: Vec<Vec<u8>>,
    },
    /// `lstat` of a path (an allowed root, inside one, or an ancestor of one).
    Stat {
        /// Request id.
        req: u64,
        /// Absolute path.
        path: Vec<u8>,
    },
    /// List a directory inside the allow-list.
    List {
        /// Request id.
        req: u64,
        /// Absolute path.
        path: Vec<u8>,
        /// [`listing_digest`] of the listing the server has from the previous snapshot: the
        /// agent answers `ListUnchanged` when its listing has the same digest.
        known: Option<[u8; 32]>,
    },
    /// Chunk and hash a regular file.
    ChunkFile {
        /// Request id.
        req: u64,
        /// Absolute path.
        path: Vec<u8>,
        /// A file of at most this many bytes that is one chunk comes back with its bytes
        /// (a round trip costs more than a small file); 0 asks for ids only.
        inline_max: u32,
    },
    /// Send these byte ranges of a file, compressed.
    ReadChunks {
        /// Request id.
        req: u64,
        /// Absolute path.
        path: Vec<u8>,
        /// (offset, length) pairs.
        ranges: Vec<(u64, u32)>,
    },
    /// Send these byte ranges of a file as deltas against bases the server holds
    /// (capability `chunk-deltas`).
    ReadDeltas {
        /// Request id.
        req: u64,
        /// Absolute path.
        path: Vec<u8>,
        /// The ranges, each with its base's sub-chunk hashes.
        ranges: Vec<DeltaRange>,
    },
    /// The session is over; the agent exits.
    Bye,
}

const K_AGENT_HELLO: u8 = 0x01;
const K_AGENT_STAT: u8 = 0x02;
const K_AGENT_LIST: u8 = 0x03;
const K_AGENT_FILE_CHUNKS: u8 = 0x04;
const K_AGENT_CHUNK_DATA: u8 = 0x05;
const K_AGENT_ERROR: u8 = 0x06;
const K_AGENT_FATAL: u8 = 0x07;
const K_AGENT_LIST_UNCHANGED: u8 = 0x08;
const K_AGENT_DELTAS: u8 = 0x09;

const K_SERVER_HELLO: u8 = 0x81;
const K_SERVER_STAT: u8 = 0x82;
const K_SERVER_LIST: u8 = 0x83;
const K_SERVER_CHUNK_FILE: u8 = 0x84;
const K_SERVER_READ_CHUNKS: u8 = 0x85;
const K_SERVER_BYE: u8 = 0x86;
const K_SERVER_READ_DELTAS: u8 = 0x87;

fn invalid(what: &'static str, offset: usize, reason: String) -> DecodeError {
    DecodeError::Invalid {
        what,
        offset,
        reason,
    }
}

fn put_meta(out: &mut Vec<u8>, m: &EntryMeta) {
    // The wire's kind codes are the tree's plus one, and 7 for a socket.
    out.push(match m.kind {
        SourceKind::Stored(kind) => kind.code() + 1,
        SourceKind::Socket => 7,
    });
    for v in [
        u64::from(m.attrs.mode),
        u64::from(m.attrs.uid),
        u64::from(m.attrs.gid),
        m.attrs.size,
    ] {
        put_varint(out, v);
    }
    out.extend_from_slice(&m.attrs.mtime_ns.to_le_bytes());
    out.extend_from_slice(&m.attrs.ctime_ns.to_le_bytes());
    for v in [m.attrs.inode, m.attrs.dev, m.attrs.nlink, m.attrs.rdev] {
        put_varint(out, v);
    }
}

fn u32_field(r: &mut Reader<'_>, what: &'static str) -> Result<u32, DecodeError> {
    let at = r.pos();
    let v = r.varint(what)?;
    u32::try_from(v).map_err(|_| invalid(what, at, format!("{v} does not fit 32 bits")))
}

fn get_meta(r: &mut Reader<'_>) -> Result<EntryMeta, DecodeError> {
    let at = r.pos();
    let kind = match r.u8("entry kind")? {
        7 => SourceKind::Socket,
        k @ 1..=6 => SourceKind::Stored(EntryKind::from_code(k - 1, at)?),
        k => return Err(invalid("entry kind", at, format!("unknown kind {k}"))),
    };
    let mode_at = r.pos();
    let mode = u32_field(r, "mode")?;
    if mode > 0o7777 {
        return Err(invalid(
            "mode",
            mode_at,
            format!("{mode:o} has bits above 0o7777"),
        ));
    }
    Ok(EntryMeta {
        kind,
        attrs: Attrs {
            mode,
            uid: u32_field(r, "uid")?,
            gid: u32_field(r, "gid")?,
            size: r.varint("size")?,
            mtime_ns: r.i64("mtime")?,
            ctime_ns: r.i64("ctime")?,
            inode: r.varint("inode")?,
            dev: r.varint("dev")?,
            nlink: r.varint("nlink")?,
            rdev: r.varint("rdev")?,
        },
    })
}

fn put_list(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    put_varint(out, items.len() as u64);
    for i in items {
        put_bytes(out, i);
    }
}

fn get_list(
    r: &mut Reader<'_>,
    what: &'static str,
    limit: u64,
) -> Result<Vec<Vec<u8>>, DecodeError> {
    let n = r.length(what, 1 << 16, 1)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.bytes(what, limit)?.to_vec());
    }
    Ok(v)
}

pub(super) fn put_entry(out: &mut Vec<u8>, e: &WireEntry) {
    put_entry_parts(
        out,
        &e.name,
        e.meta.as_ref().map_err(String::as_str),
        e.target.as_deref(),
        &e.xattrs,
    );
}

/// The `entry` encoding from its parts (shared by [`put_entry`] and [`tree_listing_digest`]).
pub(super) fn put_entry_parts(
    out: &mut Vec<u8>,
    name: &[u8],
    meta: Result<&EntryMeta, &str>,
    target: Option<&[u8]>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) {
    put_bytes(out, name);
    match meta {
        Ok(m) => {
            out.push(0);
            put_meta(out, m);
        }
        Err(msg) => {
            out.push(1);
            put_bytes(out, msg.as_bytes());
        }
    }
    match target {
        Some(t) => {
            out.push(1);
            put_bytes(out, t);
        }
        None => out.push(0),
    }
    put_varint(out, xattrs.len() as u64);
    for (k, v) in xattrs {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

fn get_entry(r: &mut Reader<'_>) -> Result<WireEntry, DecodeError> {
    let name = r.bytes("entry name", MAX_PATH)?.to_vec();
    let at = r.pos();
    let meta = match r.u8("entry status")? {
        0 => Ok(get_meta(r)?),
        1 => {
            let at = r.pos();
            // UTF-8 only (io::Error texts are): a lossy decode would not re-encode to the
            // same bytes.
            let text = r.bytes("entry error", MAX_PATH)?;
            Err(String::from_utf8(text.to_vec())
                .map_err(|_| invalid("entry error", at, "not UTF-8".into()))?)
        }
        s => return Err(invalid("entry status", at, format!("unknown status {s}"))),
    };
    let at = r.pos();
    let target = match r.u8("target flag")? {
        0 => None,
        1 => Some(r.bytes("symlink target", MAX_PATH)?.to_vec()),
        s => return Err(invalid("target flag", at, format!("unknown flag {s}"))),
    };
    let n = r.length("xattr count", MAX_XATTRS, 2)?;
    let mut xattrs = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.bytes("xattr name", 255)?.to_vec();
        let v = r.bytes("xattr value", MAX_XATTR_VALUE)?.to_vec();
        xattrs.push((k, v));
    }
    Ok(WireEntry {
        name,
        meta,
        target,
        xattrs,
    })
}

fn put_chunk(out: &mut Vec<u8>, c: &WireChunk) {
    put_varint(out, u64::from(c.raw_len));
    out.push(u8::from(c.zstd));
    put_bytes(out, &c.bytes);
}

fn get_chunk(r: &mut Reader<'_>) -> Result<WireChunk, DecodeError> {
    let raw_len = u32_field(r, "chunk length")?;
    let zstd = bool_field(r, "chunk encoding")?;
    let bytes = r.bytes("chunk bytes", MAX_FRAME as u64)?.to_vec();
    Ok(WireChunk {
        raw_len,
        zstd,
        bytes,
    })
}

/// A reply of chunks (`ChunkData`, `Deltas`): kind, request id, count, each chunk.
fn put_chunk_reply(out: &mut Vec<u8>, kind: u8, req: u64, chunks: &[WireChunk]) {
    out.push(kind);
    put_varint(out, req);
    put_varint(out, chunks.len() as u64);
    for c in chunks {
        put_chunk(out, c);
    }
}

/// The request id and chunks of a reply [`put_chunk_reply`] wrote (after its kind byte).
fn get_chunk_reply(
    r: &mut Reader<'_>,
    count: &'static str,
) -> Result<(u64, Vec<WireChunk>), DecodeError> {
    let req = r.varint("request id")?;
    let n = r.length(count, u64::MAX, 3)?;
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        chunks.push(get_chunk(r)?);
    }
    Ok((req, chunks))
}

fn expect_magic(
    r: &mut Reader<'_>,
    magic: &[u8; 8],
    what: &'static str,
) -> Result<(), DecodeError> {
    let found: [u8; 8] = r.array(what)?;
    if &found != magic {
        return Err(DecodeError::BadMagic {
            what,
            expected: String::from_utf8_lossy(magic).into_owned(),
            found: String::from_utf8_lossy(&found).into_owned(),
        });
    }
    Ok(())
}

fn bool_field(r: &mut Reader<'_>, what: &'static str) -> Result<bool, DecodeError> {
    let at = r.pos();
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(invalid(what, at, format!("{v} is not 0 or 1"))),
    }
}

impl AgentMsg {
    /// The request this message answers (none for hello and fatal).
    pub fn request_id(&self) -> Option<u64> {
        match self {
            AgentMsg::Stat { req, .. }
            | AgentMsg::List { req, .. }
            | AgentMsg::ListUnchanged { req }
            | AgentMsg::FileChunks { req, .. }
            | AgentMsg::ChunkData { req, .. }
            | AgentMsg::Deltas { req, .. }
            | AgentMsg::Error { req, .. } => Some(*req),
            AgentMsg::Hello { .. } | AgentMsg::Fatal { .. } => None,
        }
    }

    /// The frame for the writer thread: chunk bytes stay out of the session's zstd stream.
    /// Compressed ones would not shrink again; uncompressed ones are either incompressible
    /// (zstd did not shrink them) or sent so on purpose because the agent's CPU is the bound
    /// (`raw-chunks`), where the stream's compression would cost what was saved.
    pub fn outgoing(&self) -> Outgoing {
        let chunk_bytes = match self {
            AgentMsg::ChunkData { chunks, .. } => !chunks.is_empty(),
            AgentMsg::Deltas { programs, .. } => !programs.is_empty(),
            AgentMsg::FileChunks { inline, .. } => inline.is_some(),
            _ => false,
        };
        Outgoing {
            body: self.encode(),
            compress: !chunk_bytes,
            hold: matches!(
                self,
                AgentMsg::FileChunks { .. } | AgentMsg::ChunkData { .. } | AgentMsg::Deltas { .. }
            ),
        }
    }

    /// The frame body (kind byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            AgentMsg::Hello {
                versions,
                capabilities,
                roots,
                software,
            } => {
                out.push(K_AGENT_HELLO);
                out.extend_from_slice(AGENT_MAGIC);
                put_varint(&mut out, versions.len() as u64);
                for v in versions {
                    put_varint(&mut out, *v);
                }
                put_list(&mut out, capabilities);
                put_list(&mut out, roots);
                put_bytes(&mut out, software);
            }
            AgentMsg::Stat { req, entry } => {
                out.push(K_AGENT_STAT);
                put_varint(&mut out, *req);
                put_entry(&mut out, entry);
            }
            AgentMsg::List { req, more, entries } => {
                out.push(K_AGENT_LIST);
                put_varint(&mut out, *req);
                out.push(u8::from(*more));
                put_varint(&mut out, entries.len() as u64);
                for e in entries {
                    put_entry(&mut out, e);
                }
            }
            AgentMsg::ListUnchanged { req } => {
                out.push(K_AGENT_LIST_UNCHANGED);
                put_varint(&mut out, *req);
            }
            AgentMsg::FileChunks {
                req,
                before,
                after,
                chunks,
                inline,
            } => {
                out.push(K_AGENT_FILE_CHUNKS);
                put_varint(&mut out, *req);
                put_meta(&mut out, before);
                put_meta(&mut out, after);
                put_varint(&mut out, chunks.len() as u64);
                for (id, len) in chunks {
                    out.extend_from_slice(id.as_bytes());
                    put_varint(&mut out, u64::from(*len));
                }
                match inline {
                    Some(c) => {
                        out.push(1);
                        put_chunk(&mut out, c);
                    }
                    None => out.push(0),
                }
            }
            AgentMsg::ChunkData { req, chunks } => {
                put_chunk_reply(&mut out, K_AGENT_CHUNK_DATA, *req, chunks)
            }
            AgentMsg::Deltas { req, programs } => {
                put_chunk_reply(&mut out, K_AGENT_DELTAS, *req, programs)
            }
            AgentMsg::Error { req, code, message } => {
                out.push(K_AGENT_ERROR);
                put_varint(&mut out, *req);
                out.push(*code as u8);
                put_bytes(&mut out, message);
            }
            AgentMsg::Fatal { message } => {
                out.push(K_AGENT_FATAL);
                put_bytes(&mut out, message);
            }
        }
        out
    }

    /// Decodes a frame body from an untrusted agent.
    pub fn decode(body: &[u8]) -> Result<AgentMsg, DecodeError> {
        let mut r = Reader::new(body);
        let kind = r.u8("message kind")?;
        let msg = match kind {
            K_AGENT_HELLO => {
                expect_magic(&mut r, AGENT_MAGIC, "agent hello")?;
                let n = r.length("version count", 64, 1)?;
                let mut versions = Vec::with_capacity(n);
                for _ in 0..n {
                    versions.push(r.varint("version")?);
                }
                AgentMsg::Hello {
                    versions,
                    capabilities: get_list(&mut r, "capability", 256)?,
                    roots: get_list(&mut r, "root", MAX_PATH)?,
                    software: r.bytes("software", 256)?.to_vec(),
                }
            }
            K_AGENT_STAT => AgentMsg::Stat {
                req: r.varint("request id")?,
                entry: get_entry(&mut r)?,
            },
            K_AGENT_LIST => {
                let req = r.varint("request id")?;
                let more = bool_field(&mut r, "more flag")?;
                // An entry is at least 5 bytes (name length, status, kind… target flag, count).
                let n = r.length("entry count", u64::MAX, 5)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(get_entry(&mut r)?);
                }
                AgentMsg::List { req, more, entries }
            }
            K_AGENT_LIST_UNCHANGED => AgentMsg::ListUnchanged {
                req: r.varint("request id")?,
            },
            K_AGENT_FILE_CHUNKS => {
                let req = r.varint("request id")?;
                let before = get_meta(&mut r)?;
                let after = get_meta(&mut r)?;
                let n = r.length("chunk count", u64::MAX, 33)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id("chunk id")?;
                    chunks.push((id, u32_field(&mut r, "chunk length")?));
                }
                let inline = if bool_field(&mut r, "inline flag")? {
                    Some(get_chunk(&mut r)?)
                } else {
                    None
                };
                AgentMsg::FileChunks {
                    req,
                    before,
                    after,
                    chunks,
                    inline,
                }
            }
            K_AGENT_CHUNK_DATA => {
                let (req, chunks) = get_chunk_reply(&mut r, "chunk count")?;
                AgentMsg::ChunkData { req, chunks }
            }
            K_AGENT_DELTAS => {
                let (req, programs) = get_chunk_reply(&mut r, "delta count")?;
                AgentMsg::Deltas { req, programs }
            }
            K_AGENT_ERROR => {
                let req = r.varint("request id")?;
                let at = r.pos();
                let code = ErrorCode::from_u8(r.u8("error code")?, at)?;
                AgentMsg::Error {
                    req,
                    code,
                    message: r.bytes("error message", 64 * 1024)?.to_vec(),
                }
            }
            K_AGENT_FATAL => AgentMsg::Fatal {
                message: r.bytes("fatal message", 64 * 1024)?.to_vec(),
            },
            k => {
                return Err(invalid(
                    "message kind",
                    0,
                    format!("unknown agent message {k:#04x}"),
                ))
            }
        };
        r.finish("agent message")?;
        Ok(msg)
    }
}

impl ServerMsg {
    /// The frame body (kind byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            ServerMsg::Hello {
                version,
                min,
                avg,
                max,
                level,
                capabilities,
            } => {
                out.push(K_SERVER_HELLO);
                out.extend_from_slice(SERVER_MAGIC);
                put_varint(&mut out, *version);
                for v in [min, avg, max] {
                    put_varint(&mut out, u64::from(*v));
                }
                out.push(*level);
                put_list(&mut out, capabilities);
            }
            ServerMsg::Stat { req, path } => {
                out.push(K_SERVER_STAT);
                put_varint(&mut out, *req);
                put_bytes(&mut out, path);
            }
            ServerMsg::List { req, path, known } => {
                out.push(K_SERVER_LIST);
                put_varint(&mut out, *req);
                put_bytes(&mut out, path);
                match known {
                    Some(d) => {
                        out.push(1);
                        out.extend_from_slice(d);
                    }
                    None => out.push(0),
                }
            }
            ServerMsg::ChunkFile {
                req,
                path,
                inline_max,
            } => {
                out.push(K_SERVER_CHUNK_FILE);
                put_varint(&mut out, *req);
                put_bytes(&mut out, path);
                put_varint(&mut out, u64::from(*inline_max));
            }
            ServerMsg::ReadChunks { req, path, ranges } => {
                out.push(K_SERVER_READ_CHUNKS);
                put_varint(&mut out, *req);
                put_bytes(&mut out, path);
                put_varint(&mut out, ranges.len() as u64);
                for (offset, len) in ranges {
                    put_varint(&mut out, *offset);
                    put_varint(&mut out, u64::from(*len));
                }
            }
            ServerMsg::ReadDeltas { req, path, ranges } => {
                out.push(K_SERVER_READ_DELTAS);
                put_varint(&mut out, *req);
                put_bytes(&mut out, path);
                put_varint(&mut out, ranges.len() as u64);
                for r in ranges {
                    put_varint(&mut out, r.offset);
                    put_varint(&mut out, u64::from(r.len));
                    put_varint(&mut out, r.base.len() as u64);
                    for h in &r.base {
                        out.extend_from_slice(h);
                    }
                }
            }
            ServerMsg::Bye => out.push(K_SERVER_BYE),
        }
        out
    }

    /// Decodes a frame body from an untrusted server.
    pub fn decode(body: &[u8]) -> Result<ServerMsg, DecodeError> {
        let mut r = Reader::new(body);
        let kind = r.u8("message kind")?;
        let msg = match kind {
            K_SERVER_HELLO => {
                expect_magic(&mut r, SERVER_MAGIC, "server hello")?;
                let version = r.varint("version")?;
                let min = u32_field(&mut r, "chunker min")?;
                let avg = u32_field(&mut r, "chunker avg")?;
                let max = u32_field(&mut r, "chunker max")?;
                let at = r.pos();
                let level = r.u8("zstd level")?;
                if !(1..=19).contains(&level) {
                    return Err(invalid(
                        "zstd level",
                        at,
                        format!("{level} is outside 1..=19"),
                    ));
                }
                ServerMsg::Hello {
                    version,
                    min,
                    avg,
                    max,
                    level,
                    capabilities: get_list(&mut r, "capability", 256)?,
                }
            }
            K_SERVER_STAT | K_SERVER_LIST | K_SERVER_CHUNK_FILE => {
                let req = r.varint("request id")?;
                let path = r.bytes("path", MAX_PATH)?.to_vec();
                match kind {
                    K_SERVER_STAT => ServerMsg::Stat { req, path },
                    K_SERVER_LIST => ServerMsg::List {
                        req,
                        path,
                        known: if bool_field(&mut r, "known flag")? {
                            Some(r.array("known digest")?)
                        } else {
                            None
                        },
                    },
                    _ => ServerMsg::ChunkFile {
                        req,
                        path,
                        inline_max: u32_field(&mut r, "inline maximum")?,
                    },
                }
            }
            K_SERVER_READ_CHUNKS => {
                let req = r.varint("request id")?;
                let path = r.bytes("path", MAX_PATH)?.to_vec();
                let n = r.length("range count", 1 << 20, 2)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let offset = r.varint("range offset")?;
                    ranges.push((offset, u32_field(&mut r, "range length")?));
                }
                ServerMsg::ReadChunks { req, path, ranges }
            }
            K_SERVER_READ_DELTAS => {
                let req = r.varint("request id")?;
                let path = r.bytes("path", MAX_PATH)?.to_vec();
                let n = r.length("range count", 1 << 20, 3)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let offset = r.varint("range offset")?;
                    let len = u32_field(&mut r, "range length")?;
                    let count = r.length("base hash count", 1 << 24, SUB_HASH_LEN)?;
                    let mut base = Vec::with_capacity(count);
                    for _ in 0..count {
                        base.push(r.array("base hash")?);
                    }
                    ranges.push(DeltaRange { offset, len, base });
                }
                ServerMsg::ReadDeltas { req, path, ranges }
            }
            K_SERVER_BYE => ServerMsg::Bye,
            k => {
                return Err(invalid(
                    "message kind",
                    0,
                    format!("unknown server message {k:#04x}"),
                ))
            }
        };
        r.finish("server message")?;
        Ok(msg)
    }
}
