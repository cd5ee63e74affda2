//! A replica's sync from a primary over SSH: [`SshSource`] runs `ssh … xstore serve
//! --read-only` (which the primary pins to a forced command) and reads snapshot records and
//! blobs through it (FORMAT.md §Sync protocol).
//!
//! Trust: the primary's key on the replica side can only read (the forced command serves a
//! read-only handle, and the protocol has no write); the replica verifies every blob it gets
//! with the source's keys (authentication and hash, as a local read would) and decodes every
//! record and reply as untrusted input.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use xstore::{BlobKind, ChunkId, Encryption, Error, KeyAccess, Result, Snapshot, SyncSource};
use xstore_format::config::Config;
use xstore_format::pack::{read_record_in_place, PackEntry};
use xstore_format::protocol::{
    read_frame, write_frame, SyncReply, SyncRequest, MAX_BLOBS_PER_REQUEST,
};

/// Most snapshot records one source may send (a bound on the replica's memory).
pub const MAX_SOURCE_SNAPSHOTS: usize = 1_000_000;

/// Most record bytes one batch of blob requests may bring before they are verified (a sync
/// asks for at most 64 MiB of file data, or 256 trees, at a time).
pub const MAX_BATCH_RECORD_BYTES: u64 = 1 << 30;

/// The remote command a sync runs (the primary's forced command replaces it, naming the
/// repository; `xstore serve` compares it with the one it is forced to).
pub const SERVE_COMMAND: &str = "xstore serve --read-only";

/// A primary's repository read through `xstore serve --read-only` over SSH.
pub struct SshSource {
    location: String,
    config: Config,
    encryption: Encryption,
    conn: Mutex<Connection>,
}

struct Connection {
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    /// The last line ssh (or the remote command) wrote to stderr, said once in the error.
    stderr_last: Arc<Mutex<Option<String>>>,
    /// A reply went missing or could not be decoded: nothing more is asked.
    broken: bool,
}

impl Connection {
    /// ` (ssh: LINE)` for the last line ssh wrote, once it has ended (or after 2 s).
    fn ssh_detail(&mut self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The reader thread takes the last line after ssh closed its stderr.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let last = self.stderr_last.lock().ok().and_then(|l| l.clone());
        xstore::ssh_detail(last.as_deref())
    }
}

/// Keeps the last non-empty line of `stderr` (each at most 1 KiB, control characters made
/// printable), reading until it closes.
fn keep_last_line(stderr: impl std::io::Read + Send + 'static, last: Arc<Mutex<Option<String>>>) {
    use std::io::BufRead;
    let spawned = std::thread::Builder::new()
        .name("xstore-sync-ssh-stderr".into())
        .spawn(move || {
            let mut r = BufReader::new(stderr.take(16 << 20));
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                let text = xstore::text::printable(text.trim()).into_owned();
                if !text.is_empty() {
                    if let Ok(mut l) = last.lock() {
                        *l = Some(xstore::text::capped(&text, 1024).into_owned());
                    }
                }
                line.clear();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot read ssh's stderr");
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.input.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Errors name no location: the caller says which source once (`SyncError::Source`).
fn protocol_error(_location: &str, reason: String) -> Error {
    Error::SyncSession(reason)
}

impl SshSource {
    /// Starts `ssh` (a program and its arguments, the remote command left out: for example
    /// `["ssh", "-p", "22", "backup@primary.example.net"]`) with [`SERVE_COMMAND`] and reads
    /// the source's hello: its `config` and, when encrypted, its key slots, unlocked with
    /// `keys` (the replica needs the source's key to verify and re-seal what it copies).
    pub fn connect(ssh: &[String], keys: &KeyAccess) -> Result<SshSource> {
        let (program, args) = ssh
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("an empty ssh command".into()))?;
        let location = format!("ssh {}", args.last().map(String::as_str).unwrap_or(program));
        let mut child = Command::new(program)
            .args(args)
            .arg(SERVE_COMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Io {
                path: PathBuf::from(program),
                source: e,
            })?;
        let (Some(input), Some(output), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::Internal("ssh's pipes"));
        };
        let stderr_last = Arc::new(Mutex::new(None));
        keep_last_line(stderr, Arc::clone(&stderr_last));
        let mut conn = Connection {
            child,
            input: BufWriter::with_capacity(1 << 16, input),
            output: BufReader::with_capacity(1 << 20, output),
            stderr_last,
            broken: false,
        };
        send(&location, &mut conn, &SyncRequest::Hello)?;
        let (config, slots) = match receive(&location, &mut conn)? {
            SyncReply::Hello { config, key_slots } => (config, key_slots),
            other => return Err(unexpected(&location, &other)),
        };
        let (config, encryption) =
            xstore::keys::remote_encryption(Path::new(&location), &config, slots.as_deref(), keys)?;
        Ok(SshSource {
            location,
            config,
            encryption,
            conn: Mutex::new(conn),
        })
    }

    fn connection(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        let conn = self.conn.lock().map_err(|_| Error::Poisoned)?;
        if conn.broken {
            return Err(protocol_error(
                &self.location,
                "the session broke off earlier".into(),
            ));
        }
        Ok(conn)
    }
}

fn send(location: &str, conn: &mut Connection, req: &SyncRequest) -> Result<()> {
    let sent = write_frame(&mut conn.input, &req.encode()).and_then(|_| conn.input.flush());
    sent.map_err(|e| {
        conn.broken = true;
        let detail = conn.ssh_detail();
        protocol_error(location, format!("the connection failed: {e}{detail}"))
    })
}

fn receive(location: &str, conn: &mut Connection) -> Result<SyncReply> {
    let body = match read_frame(&mut conn.output) {
        Ok(Some(b)) => b,
        Ok(None) => {
            conn.broken = true;
            let detail = conn.ssh_detail();
            let reason = if detail.is_empty() {
                "the connection closed (is the key forced to `xstore serve --read-only REPO`?)"
                    .to_string()
            } else {
                format!("the connection closed{detail}")
            };
            return Err(protocol_error(location, reason));
        }
        Err(e) => {
            conn.broken = true;
            let detail = conn.ssh_detail();
            return Err(protocol_error(
                location,
                format!("the connection failed: {e}{detail}"),
            ));
        }
    };
    match SyncReply::decode(&body) {
        Ok(SyncReply::Error(message)) => {
            conn.broken = true;
            Err(protocol_error(
                location,
                format!("the source refused: {message}"),
            ))
        }
        Ok(reply) => Ok(reply),
        Err(e) => {
            conn.broken = true;
            Err(protocol_error(location, format!("not a sync reply: {e}")))
        }
    }
}

/// A blob's record as the server sent it, not yet opened.
struct Received {
    /// The blob's id, kind and length; the offset and stored length of its record (for a
    /// bundled blob, of its bundle's).
    entry: PackEntry,
    /// For a bundled blob: where its bytes are in the bundle.
    member_offset: Option<u32>,
    record: Vec<u8>,
}

impl Received {
    /// Opens, decompresses and verifies the record (for a bundled blob: the bundle, then the
    /// blob's bytes in it against its id).
    fn open(
        mut self,
        enc: &Encryption,
    ) -> std::result::Result<Vec<u8>, xstore_format::DecodeError> {
        let Some(member_offset) = self.member_offset else {
            return read_record_in_place(enc, &mut self.record, &self.entry);
        };
        xstore_format::pack::read_bundle_in_place(
            enc,
            &mut self.record,
            self.entry.offset,
            self.entry.stored_len,
        )?
        .member(enc, &self.entry.id, member_offset, self.entry.raw_len)
    }
}

fn unexpected(location: &str, reply: &SyncReply) -> Error {
    let what = match reply {
        SyncReply::Hello { .. } => "hello",
        SyncReply::Snapshot(_) => "snapshot record",
        SyncReply::SnapshotsEnd => "end of records",
        SyncReply::Blob { .. } => "blob",
        SyncReply::Bundled { .. } => "bundled blob",
        SyncReply::Missing { .. } => "missing blob",
        SyncReply::Error(_) => "error",
    };
    protocol_error(location, format!("unexpected {what} in the reply"))
}

impl SyncSource for SshSource {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn repository_id(&self) -> String {
        self.config.repository_id.clone()
    }
    fn probe_id(&self) -> ChunkId {
        self.encryption.id_of(xstore::SYNC_ID_PROBE)
    }
    fn plain_ids(&self) -> bool {
        !self.encryption.is_encrypted()
    }
    fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut conn = self.connection()?;
        send(&self.location, &mut conn, &SyncRequest::Snapshots)?;
        let mut out = Vec::new();
        loop {
            match receive(&self.location, &mut conn)? {
                SyncReply::Snapshot(json) => {
                    let s = Snapshot::decode(&json).map_err(|source| Error::Corrupt {
                        path: PathBuf::from(&self.location),
                        source,
                    })?;
                    if out.len() >= MAX_SOURCE_SNAPSHOTS {
                        conn.broken = true;
                        return Err(protocol_error(
                            &self.location,
                            format!("more than {MAX_SOURCE_SNAPSHOTS} snapshot records"),
                        ));
                    }
                    out.push(s);
                }
                SyncReply::SnapshotsEnd => return Ok(out),
                other => {
                    conn.broken = true;
                    return Err(unexpected(&self.location, &other));
                }
            }
        }
    }
    fn remote(&self) -> bool {
        true
    }
    fn read_blob(&self, id: &ChunkId, kind: BlobKind) -> Result<Vec<u8>> {
        let mut v = self.read_blobs(&[(*id, kind)])?;
        v.pop().ok_or(Error::Internal("one blob asked, none read"))
    }
    /// Sends the requests of up to [`MAX_BLOBS_PER_REQUEST`] blobs at once and reads the
    /// answers in order; then opens and verifies each with the source's keys, in parallel
    /// (the session is free again meanwhile).
    fn read_blobs(&self, ids: &[(ChunkId, BlobKind)]) -> Result<Vec<Vec<u8>>> {
        let mut records: Vec<Received> = Vec::with_capacity(ids.len());
        let mut received = 0u64;
        {
            let mut conn = self.connection()?;
            for batch in ids.chunks(MAX_BLOBS_PER_REQUEST) {
                send(
                    &self.location,
                    &mut conn,
                    &SyncRequest::Blobs(batch.to_vec()),
                )?;
                for (id, kind) in batch {
                    let got = match receive(&self.location, &mut conn)? {
                        SyncReply::Blob { entry, record }
                            if entry.id == *id && entry.kind == *kind =>
                        {
                            Received {
                                entry,
                                member_offset: None,
                                record,
                            }
                        }
                        // A data blob in a bundle: the bundle's record, opened below.
                        SyncReply::Bundled {
                            id: member,
                            member_offset,
                            len,
                            stored_len,
                            offset,
                            record,
                        } if member == *id && *kind == BlobKind::Data => Received {
                            entry: PackEntry {
                                id: member,
                                kind: BlobKind::Data,
                                compression: xstore_format::pack::Compression::None,
                                raw_len: len,
                                stored_len,
                                offset,
                            },
                            member_offset: Some(member_offset),
                            record,
                        },
                        SyncReply::Missing { id: gone, .. } if gone == *id => {
                            // The rest of this batch's answers are still on the way.
                            conn.broken = true;
                            return Err(Error::MissingBlob(*id));
                        }
                        other => {
                            conn.broken = true;
                            return Err(unexpected(&self.location, &other));
                        }
                    };
                    // What a call holds before verifying is bounded, and a record is
                    // exactly the span its header's lengths give.
                    received += got.record.len() as u64;
                    let span = xstore_format::pack::blob_span(got.entry.stored_len);
                    if got.record.len() as u64 != span || received > MAX_BATCH_RECORD_BYTES {
                        conn.broken = true;
                        return Err(protocol_error(
                            &self.location,
                            format!(
                                "blob {id}: a record of {} bytes ({} in this batch; at most {MAX_BATCH_RECORD_BYTES})",
                                got.record.len(),
                                received
                            ),
                        ));
                    }
                    records.push(got);
                }
            }
        }
        records
            .into_par_iter()
            .map(|got| {
                let id = got.entry.id;
                got.open(&self.encryption)
                    .map_err(|source| Error::CorruptBlob {
                        id,
                        pack: self.location.clone(),
                        source,
                    })
            })
            .collect()
    }
}
