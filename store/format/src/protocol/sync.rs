//! The read-only sync protocol (FORMAT.md §Sync protocol): a replica's `xstore sync` asks a
//! primary's `xstore serve --read-only` for snapshot records and blobs, in frames of this
//! module's messages over the stdin/stdout of an SSH session.
//!
//! There is no message that changes anything: the server can only answer. Blobs travel as
//! their stored records (compressed, and sealed in an encrypted repository), which the replica
//! opens and verifies with the source's keys as a local read would; the server needs no key.

use crate::bytes::{put_bytes, put_varint, Reader};
use crate::error::DecodeError;
use crate::pack::{BlobKind, Compression, PackEntry};
use xstore_chunker::ChunkId;

/// Magic of both hellos.
pub const SYNC_MAGIC: &[u8; 8] = b"XSTSYNC1";
/// Most blobs one request names.
pub const MAX_BLOBS_PER_REQUEST: usize = 4096;
/// Largest `config` or key-slot file a hello carries.
const MAX_FILE: u64 = 1 << 20;
/// Longest error text.
const MAX_MESSAGE: u64 = 4096;

const REQ_HELLO: u8 = b'H';
const REQ_SNAPSHOTS: u8 = b'S';
const REQ_BLOBS: u8 = b'B';
const REP_HELLO: u8 = b'h';
const REP_SNAPSHOT: u8 = b's';
const REP_SNAPSHOTS_END: u8 = b'e';
const REP_BLOB: u8 = b'b';
const REP_BUNDLED: u8 = b'n';
const REP_MISSING: u8 = b'm';
const REP_ERROR: u8 = b'x';

/// Reads both hellos' magic.
fn read_magic(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let magic = r.array::<8>("sync hello magic")?;
    if &magic != SYNC_MAGIC {
        return Err(DecodeError::BadMagic {
            what: "sync hello",
            expected: String::from_utf8_lossy(SYNC_MAGIC).into_owned(),
            found: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    Ok(())
}

/// What a replica asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// The first message: the magic.
    Hello,
    /// Every snapshot record: answered by [`SyncReply::Snapshot`]s and one
    /// [`SyncReply::SnapshotsEnd`].
    Snapshots,
    /// Blobs by id and kind: answered by one [`SyncReply::Blob`] or [`SyncReply::Missing`]
    /// per blob, in this order.
    Blobs(Vec<(ChunkId, BlobKind)>),
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncReply {
    /// The source's `config` and, when it is encrypted, its key-slot file.
    Hello {
        /// `config` as stored.
        config: Vec<u8>,
        /// `keys.json` as stored (encrypted repositories).
        key_slots: Option<Vec<u8>>,
    },
    /// One snapshot record (its JSON).
    Snapshot(Vec<u8>),
    /// The end of the records.
    SnapshotsEnd,
    /// One blob's stored record, and where it sits (what opening it checks against).
    Blob {
        /// Its id, kind, lengths and offset; `compression` is read from the record.
        entry: PackEntry,
        /// The record: blob header and stored bytes.
        record: Vec<u8>,
    },
    /// A data blob stored in a bundle (FORMAT.md §Bundles): the bundle's record, which the
    /// replica opens, decompresses and finds the blob in (verified against its id).
    Bundled {
        /// The blob.
        id: ChunkId,
        /// Offset of its bytes in the bundle's raw bytes.
        member_offset: u32,
        /// Its length.
        len: u32,
        /// The bundle record's stored length (as in its header).
        stored_len: u32,
        /// The bundle record's offset in its pack (its header is sealed with it).
        offset: u64,
        /// The bundle's record: header and stored bytes.
        record: Vec<u8>,
    },
    /// A blob the source does not hold as asked (absent, or of another kind).
    Missing {
        /// The blob.
        id: ChunkId,
        /// Why.
        message: String,
    },
    /// The server stopped: the request was refused or the repository failed.
    Error(String),
}

impl SyncRequest {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            SyncRequest::Hello => [&[REQ_HELLO][..], SYNC_MAGIC].concat(),
            SyncRequest::Snapshots => vec![REQ_SNAPSHOTS],
            SyncRequest::Blobs(ids) => {
                let mut out = Vec::with_capacity(8 + ids.len() * 33);
                out.push(REQ_BLOBS);
                put_varint(&mut out, ids.len() as u64);
                for (id, kind) in ids {
                    out.extend_from_slice(&id.0);
                    out.push(kind.code());
                }
                out
            }
        }
    }

    /// Decodes a frame body from an untrusted peer.
    pub fn decode(body: &[u8]) -> Result<SyncRequest, DecodeError> {
        let mut r = Reader::new(body);
        let req = match r.u8("sync request kind")? {
            REQ_HELLO => {
                read_magic(&mut r)?;
                SyncRequest::Hello
            }
            REQ_SNAPSHOTS => SyncRequest::Snapshots,
            REQ_BLOBS => {
                let n = r.length("sync blob count", MAX_BLOBS_PER_REQUEST as u64, 33)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id("sync blob id")?;
                    let at = r.pos();
                    ids.push((id, BlobKind::from_code(r.u8("sync blob kind")?, at)?));
                }
                SyncRequest::Blobs(ids)
            }
            other => {
                return Err(DecodeError::Invalid {
                    what: "sync request kind",
                    offset: 0,
                    reason: format!("unknown request {other:#04x} (this server only answers)"),
                })
            }
        };
        r.finish("sync request")?;
        Ok(req)
    }
}

impl SyncReply {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            SyncReply::Hello { config, key_slots } => {
                out.push(REP_HELLO);
                out.extend_from_slice(SYNC_MAGIC);
                put_bytes(&mut out, config);
                put_bytes(&mut out, key_slots.as_deref().unwrap_or_default());
            }
            SyncReply::Snapshot(json) => {
                out.push(REP_SNAPSHOT);
                out.extend_from_slice(json);
            }
            SyncReply::SnapshotsEnd => out.push(REP_SNAPSHOTS_END),
            SyncReply::Blob { entry, record } => {
                out.reserve(64 + record.len());
                out.push(REP_BLOB);
                out.extend_from_slice(&entry.id.0);
                out.push(entry.kind.code());
                out.extend_from_slice(&entry.raw_len.to_le_bytes());
                out.extend_from_slice(&entry.stored_len.to_le_bytes());
                out.extend_from_slice(&entry.offset.to_le_bytes());
                out.extend_from_slice(record);
            }
            SyncReply::Bundled {
                id,
                member_offset,
                len,
                stored_len,
                offset,
                record,
            } => {
                out.reserve(64 + record.len());
                out.push(REP_BUNDLED);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&member_offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&stored_len.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(record);
            }
            SyncReply::Missing { id, message } => {
                out.push(REP_MISSING);
                out.extend_from_slice(&id.0);
                put_bytes(&mut out, message.as_bytes());
            }
            SyncReply::Error(message) => {
                out.push(REP_ERROR);
                out.extend_from_slice(message.as_bytes());
            }
        }
        out
    }

    /// Decodes a frame body from an untrusted peer.
    pub fn decode(body: &[u8]) -> Result<SyncReply, DecodeError> {
        let mut r = Reader::new(body);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let reply = match r.u8("sync reply kind")? {
            REP_HELLO => {
                read_magic(&mut r)?;
                let config = r.bytes("sync config", MAX_FILE)?.to_vec();
                let slots = r.bytes("sync key slots", MAX_FILE)?;
                SyncReply::Hello {
                    config,
                    key_slots: (!slots.is_empty()).then(|| slots.to_vec()),
                }
            }
            REP_SNAPSHOT => SyncReply::Snapshot(r.take(r.remaining(), "snapshot record")?.to_vec()),
            REP_SNAPSHOTS_END => SyncReply::SnapshotsEnd,
            REP_BLOB => {
                let id = r.id("sync blob id")?;
                let at = r.pos();
                let kind = BlobKind::from_code(r.u8("sync blob kind")?, at)?;
                let raw_len = r.u32("sync blob raw length")?;
                let stored_len = r.u32("sync blob stored length")?;
                let offset = r.u64("sync blob offset")?;
                let record = r.take(r.remaining(), "sync blob record")?.to_vec();
                SyncReply::Blob {
                    entry: PackEntry {
                        id,
                        kind,
                        compression: Compression::None,
                        raw_len,
                        stored_len,
                        offset,
                    },
                    record,
                }
            }
            REP_BUNDLED => SyncReply::Bundled {
                id: r.id("sync blob id")?,
                member_offset: r.u32("sync bundle member offset")?,
                len: r.u32("sync blob raw length")?,
                stored_len: r.u32("sync bundle stored length")?,
                offset: r.u64("sync bundle offset")?,
                record: r.take(r.remaining(), "sync bundle record")?.to_vec(),
            },
            REP_MISSING => {
                let id = r.id("sync blob id")?;
                let message = text(r.bytes("sync message", MAX_MESSAGE)?);
                SyncReply::Missing { id, message }
            }
            REP_ERROR => SyncReply::Error(text(r.take(r.remaining(), "sync error")?)),
            other => {
                return Err(DecodeError::Invalid {
                    what: "sync reply kind",
                    offset: 0,
                    reason: format!("unknown reply {other:#04x}"),
                })
            }
        };
        r.finish("sync reply")?;
        Ok(reply)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let reqs = [
            SyncRequest::Hello,
            SyncRequest::Snapshots,
            SyncRequest::Blobs(vec![
                (ChunkId([3; 32]), BlobKind::Tree),
                (ChunkId([4; 32]), BlobKind::Data),
            ]),
        ];
        for r in reqs {
            assert_eq!(SyncRequest::decode(&r.encode()).unwrap(), r);
        }
        let reps = [
            SyncReply::Hello {
                config: b"cfg".to_vec(),
                key_slots: None,
            },
            SyncReply::Hello {
                config: b"cfg".to_vec(),
                key_slots: Some(b"slots".to_vec()),
            },
            SyncReply::Snapshot(b"{}".to_vec()),
            SyncReply::SnapshotsEnd,
            SyncReply::Blob {
                entry: PackEntry {
                    id: ChunkId([9; 32]),
                    kind: BlobKind::ChunkList,
                    compression: Compression::None,
                    raw_len: 7,
                    stored_len: 70,
                    offset: 1 << 40,
                },
                record: vec![1, 2, 3],
            },
            SyncReply::Bundled {
                id: ChunkId([5; 32]),
                member_offset: 77,
                len: 9,
                stored_len: 120,
                offset: 1 << 33,
                record: vec![4, 5, 6],
            },
            SyncReply::Missing {
                id: ChunkId([1; 32]),
                message: "gone".into(),
            },
            SyncReply::Error("refused".into()),
        ];
        for r in reps {
            assert_eq!(SyncReply::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn hostile_bodies_are_errors() {
        for body in [
            &[][..],
            b"W",
            b"Hnotmagic",
            b"B\xff\xff\xff\xff\x0f",
            b"B\x02",
            b"S!",
            b"Zwrite",
        ] {
            assert!(SyncRequest::decode(body).is_err(), "{body:?}");
        }
        let mut blobs = SyncRequest::Blobs(vec![(ChunkId([3; 32]), BlobKind::Tree)]).encode();
        *blobs.last_mut().unwrap() = 9;
        assert!(SyncRequest::decode(&blobs).is_err());
        for body in [&[][..], b"b\x01", b"hXSTSYNC1\xff", b"m\x00", b"?"] {
            assert!(SyncReply::decode(body).is_err(), "{body:?}");
        }
    }
}
