//! `xstore serve --read-only`: answers a replica's sync over a byte stream (the stdin and
//! stdout of an SSH session whose key is forced to this command), FORMAT.md §Sync protocol.
//!
//! Read-only by construction: the handle is a read-only one (no lock, no lease, RocksDB opened
//! read-only), and the protocol has no request that changes anything. The replica gets the
//! snapshot records and, per blob asked for, its stored record (sealed in an encrypted
//! repository): nothing is decrypted here and no key leaves this host. A request that is not
//! a sync request ends the session with one error reply.

use std::io::{BufWriter, Read, Write};

use serde::Serialize;
use xstore_chunker::ChunkId;
use xstore_format::pack::{self, BlobKind, PackEntry};
use xstore_format::protocol::{read_frame, write_frame, SyncReply, SyncRequest};

use crate::error::{Error, IoContext, Result};
use crate::repo::Repository;

/// What one served session did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServeSummary {
    /// Snapshot records sent.
    pub snapshots: u64,
    /// Blobs sent.
    pub blobs: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Blobs asked for that this repository does not hold as asked.
    pub missing: u64,
}

impl Repository {
    /// Serves one replica's sync session on `input`/`output` until the replica closes its
    /// side. Refuses a handle that could write (serve a read-only one), and any request the
    /// sync protocol does not have: the session then ends with an error reply, and this
    /// returns the error.
    pub fn serve_read_only(
        &self,
        input: &mut dyn Read,
        output: &mut dyn Write,
    ) -> Result<ServeSummary> {
        if self.is_writable() {
            return Err(Error::InvalidArgument(
                "serve --read-only needs a read-only handle (Repository::open_read_only)".into(),
            ));
        }
        let mut out = BufWriter::with_capacity(1 << 20, output);
        let mut summary = ServeSummary::default();
        let mut greeted = false;
        let wire = |e: std::io::Error| Error::Io {
            path: "the sync session".into(),
            source: e,
        };
        let mut input = input;
        while let Some(body) = read_frame(&mut input).map_err(wire)? {
            let request = match SyncRequest::decode(&body) {
                Ok(r) if greeted || r == SyncRequest::Hello => r,
                Ok(_) => {
                    return self.refuse(&mut out, "the session must start with a hello".into())
                }
                Err(e) => return self.refuse(&mut out, format!("refused: {e}")),
            };
            match request {
                SyncRequest::Hello => {
                    greeted = true;
                    self.send(&mut out, &self.hello()?)?;
                }
                SyncRequest::Snapshots => {
                    for s in self.snapshots()? {
                        self.send(&mut out, &SyncReply::Snapshot(s.encode()))?;
                        summary.snapshots += 1;
                    }
                    self.send(&mut out, &SyncReply::SnapshotsEnd)?;
                }
                SyncRequest::Blobs(ids) => {
                    for (id, kind) in ids {
                        let reply = match self.stored_record(&id, kind) {
                            Ok(reply) => reply,
                            Err(e) if matches!(e, Error::MissingBlob(_)) => SyncReply::Missing {
                                id,
                                message: e.to_string(),
                            },
                            Err(e) => return Err(e),
                        };
                        match &reply {
                            SyncReply::Blob { record, .. } | SyncReply::Bundled { record, .. } => {
                                summary.blobs += 1;
                                summary.bytes += record.len() as u64;
                            }
                            _ => summary.missing += 1,
                        }
                        self.send(&mut out, &reply)?;
                    }
                }
            }
            out.flush().map_err(wire)?;
        }
        Ok(summary)
    }

    fn hello(&self) -> Result<SyncReply> {
        let config_path = crate::layout::config(self.path());
        let config = std::fs::read(&config_path).at(&config_path)?;
        let key_slots = if self.is_encrypted() {
            let p = crate::layout::key_slots(self.path());
            Some(std::fs::read(&p).at(&p)?)
        } else {
            None
        };
        Ok(SyncReply::Hello { config, key_slots })
    }

    fn send(&self, out: &mut dyn Write, reply: &SyncReply) -> Result<()> {
        write_frame(out, &reply.encode()).map_err(|e| Error::Io {
            path: "the sync session".into(),
            source: e,
        })
    }

    fn refuse(&self, out: &mut dyn Write, message: String) -> Result<ServeSummary> {
        let _ = self.send(out, &SyncReply::Error(message.clone()));
        let _ = out.flush();
        Err(Error::InvalidArgument(message))
    }

    /// A live blob's stored record as the replica opens it: its header and stored bytes,
    /// as in its pack. Looked up again once when its pack is gone (a gc here moved it).
    fn stored_record(&self, id: &ChunkId, kind: BlobKind) -> Result<SyncReply> {
        let mut again = false;
        loop {
            let loc = self
                .blob_location(id)?
                .filter(|l| l.refcount > 0 && l.kind == kind)
                .ok_or(Error::MissingBlob(*id))?;
            let mut record = vec![0u8; pack::blob_span(loc.stored_len) as usize];
            match self.storage().read_at(&loc.pack, loc.offset, &mut record) {
                Ok(()) if loc.bundled.is_some() => {
                    let member_offset = loc.bundled.map_or(0, |b| b.member_offset);
                    return Ok(SyncReply::Bundled {
                        id: *id,
                        member_offset,
                        len: loc.raw_len,
                        stored_len: loc.stored_len,
                        offset: loc.offset,
                        record,
                    });
                }
                Ok(()) => {
                    return Ok(SyncReply::Blob {
                        entry: PackEntry {
                            id: *id,
                            kind,
                            compression: pack::Compression::None,
                            raw_len: loc.raw_len,
                            stored_len: loc.stored_len,
                            offset: loc.offset,
                        },
                        record,
                    })
                }
                Err(e) if e.is_not_found() && !again => again = true,
                Err(e) => return Err(e),
            }
        }
    }
}
