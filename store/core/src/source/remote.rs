//! The server side of the agent protocol: [`RemoteSource`], a [`Source`] whose entries and
//! chunks come from `xstore agent` on a client (FORMAT.md §Agent protocol).
//!
//! Requests carry ids, so ingest's worker threads keep many in flight on one connection; a
//! reader thread routes each reply to its caller. Everything the agent sends is hostile input:
//! frames are bounded, names checked, chunk bytes decompressed into buffers of the announced
//! length only, and ingest verifies every chunk against its id. When the connection breaks,
//! every pending and later call fails at once and [`Source::finish`] reports it, so the backup
//! commits nothing.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::RemoteError;
use crate::source::{FetchedChunk, OpenHint, SentForm, Source, SourceFile};
use xstore_chunker::{ChunkId, ChunkerParams};
use xstore_format::meta::EntryMeta;
use xstore_format::protocol::{
    delta::{apply_delta, base_signature, BaseSignature},
    read_frame, tree_listing_digest, tree_listing_digest_meta, write_batched, write_frame,
    AgentMsg, DeltaRange, Outgoing, ServerMsg, Transport, WireChunk, WireEntry, CAP_ADAPTIVE_LEVEL,
    CAP_CHUNK_DELTAS, CAP_DIGEST_META, CAP_RAW_CHUNKS, MAX_FRAME, PROTOCOL_VERSIONS,
};
use xstore_format::tree::{ChunkRef, Content, Entry, Tree};

/// Most entries one directory listing may have.
pub const MAX_LISTING_ENTRIES: usize = 10_000_000;
/// Most frame bytes one directory listing may take: a hostile agent must not be able to
/// exhaust the memory of a server that pulls other hosts in the same process.
pub const MAX_LISTING_BYTES: usize = 256 * 1024 * 1024;
/// Files up to this size that are one chunk come back with their bytes in the chunk-list
/// reply: for them a second round trip (and a second read of the file on the client) costs
/// more than the bytes. With the default chunker (min 256 KiB) nearly every file up to 1 MiB
/// is one chunk: 2,353 files of the Linux tree between 64 KiB and 1 MiB no longer need a
/// `ReadChunks`. The price: such a file is sent even when another host already stored the
/// same bytes (an unchanged file is never asked for at all).
pub const INLINE_MAX: u32 = 1024 * 1024;

/// Most bytes that answers to prefetched `ChunkFile` requests ([`Source::will_open`]) may
/// hold before ingest takes them, estimated from the listed sizes (inline bytes, raw).
/// Hints past it are dropped; those files are asked for when opened.
pub const PREFETCH_BYTES: u64 = 16 * 1024 * 1024;

/// Most `List` requests sent ahead of ingest ([`Source::will_list`]) and not yet taken.
pub const PREFETCH_LISTS: usize = 256;
/// Most bytes of listings (by [`listing_cost`]) one pull may hold at once: arriving,
/// delivered and not yet taken, and taken by ingest until it has stored the directory's tree
/// ([`Source::listing_done`]). Past it the host's pull fails: a hostile agent answering
/// with huge, never-finished or ever-deeper listings must not exhaust the memory of a server
/// that pulls other hosts in the same process. An honest host reaches it only with about
/// 750,000 entries in the directories being walked at once (each counts its
/// [`listing_cost`] and [`WALK_ENTRY_BYTES`]; hints stop at [`PREFETCH_BYTES`]).
pub const MAX_HELD_LISTING_BYTES: u64 = 512 * 1024 * 1024;

/// What the walk holds per entry of a listing it took, besides the listing (estimated from
/// the types: the entry's slot for its tree entry, and for a subdirectory its state and queued
/// job; about 450 bytes for a directory, 200 for a file): added to a taken listing's
/// [`listing_cost`] against [`MAX_HELD_LISTING_BYTES`].
pub const WALK_ENTRY_BYTES: u64 = 384;

/// The memory a listing holds, about: what [`MAX_HELD_LISTING_BYTES`] counts. The reply
/// reader adds it when a listing arrives, and the walk's [`Source::listing_done`] subtracts
/// it. Per entry: the decoded entry (about 190 bytes and its name's allocation) with the slack
/// of the vector a multi-frame listing grows in (estimated at about 1.5 times that).
pub fn listing_cost(entries: &[WireEntry]) -> u64 {
    entries
        .iter()
        .map(|e| {
            let xattrs: usize = e.xattrs.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
            (288 + e.name.len() + e.target.as_ref().map_or(0, Vec::len) + xattrs) as u64
        })
        .sum()
}

/// What the agent said about itself in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's allow-list (canonical absolute paths).
    pub roots: Vec<PathBuf>,
    /// The agent's software version string.
    pub software: String,
    /// The protocol version in use.
    pub version: u64,
}

#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, crossbeam_channel::Sender<AgentMsg>>,
    broken: Option<String>,
}

/// `ChunkFile` requests sent ahead of `open`, by path, with their cost estimates.
#[derive(Default)]
struct Prefetched {
    replies: HashMap<PathBuf, (crossbeam_channel::Receiver<AgentMsg>, u64)>,
    /// The sum of the estimates in `replies`, bounded by [`PREFETCH_BYTES`].
    bytes: u64,
}

impl Prefetched {
    /// What the answer for a file of `size` bytes may hold: its inline bytes and a header.
    fn estimate(size: u64) -> u64 {
        size.min(u64::from(INLINE_MAX)) + 256
    }
}

#[derive(Default)]
struct Extra {
    target: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Counts the bytes that cross the connection (below the session's zstd stream).
struct Counting<T> {
    inner: T,
    count: Arc<AtomicU64>,
}

impl<T: Read> Read for Counting<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<T: Write> Write for Counting<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Inner {
    /// Requests for the writer thread ([`write_batched`]); `None` once closed.
    requests: Mutex<Option<crossbeam_channel::Sender<Outgoing>>>,
    calls: Mutex<Calls>,
    next_request: AtomicU64,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    /// [`listing_cost`] of the listings delivered and not yet done with (taken ones count
    /// until [`Source::listing_done`]).
    listings_held: AtomicU64,
    /// Symlink targets and xattrs that came with a listing, until ingest asks for them.
    extras: Mutex<HashMap<PathBuf, Extra>>,
    /// [`CAP_DIGEST_META`] is on: listing digests leave xattrs out.
    digest_meta: bool,
    /// [`CAP_CHUNK_DELTAS`] is on: changed chunks may be asked for as deltas.
    deltas: bool,
    /// [`CAP_RAW_CHUNKS`] is on: chunks that arrive uncompressed were sent so by choice.
    raw_chunks: bool,
}

/// Longest text of an agent's error or fatal message kept (bytes).
pub const AGENT_TEXT_BYTES: usize = 512;

/// An error text the agent sent: capped at [`AGENT_TEXT_BYTES`], control characters escaped.
fn agent_text(message: &[u8]) -> String {
    let text = crate::text::printable_bytes(message);
    crate::text::capped(&text, AGENT_TEXT_BYTES).into_owned()
}

fn broken_error(reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("agent connection lost: {reason}"),
    )
}

impl Inner {
    /// The digest the agent compares with its listing of a directory recorded as `tree`.
    fn known_digest(&self, tree: &Tree) -> [u8; 32] {
        match self.digest_meta {
            true => tree_listing_digest_meta(tree),
            false => tree_listing_digest(tree),
        }
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        // A poisoned lock means a thread panicked while holding it; the map is still usable.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection broken and fails every pending call (their senders drop).
    fn break_off(&self, reason: String) {
        let mut calls = self.lock_calls();
        if calls.broken.is_none() {
            tracing::warn!(%reason, "agent connection broken");
            calls.broken = Some(reason);
        }
        calls.waiting.clear();
    }

    /// Takes the request sender: once the caller drops it, the writer thread ends.
    fn stop_requests(&self) -> Option<crossbeam_channel::Sender<Outgoing>> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn broken(&self) -> Option<String> {
        self.lock_calls().broken.clone()
    }

    /// Sends a request and waits for its reply; an `Error` reply becomes the `io::Error`.
    fn call(&self, make: impl FnOnce(u64) -> ServerMsg) -> io::Result<AgentMsg> {
        let reply = self.submit(make)?;
        self.wait(&reply)
    }

    /// Sends a request; its reply arrives on the returned channel (see [`Inner::wait`]).
    fn submit(
        &self,
        make: impl FnOnce(u64) -> ServerMsg,
    ) -> io::Result<crossbeam_channel::Receiver<AgentMsg>> {
        let req = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let mut calls = self.lock_calls();
            if let Some(reason) = &calls.broken {
                return Err(broken_error(reason));
            }
            calls.waiting.insert(req, tx);
        }
        let body = Outgoing {
            body: make(req).encode(),
            compress: true,
            hold: false,
        };
        let queued = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(body).is_ok());
        if !queued {
            self.break_off("the request writer has stopped".into());
        }
        Ok(rx)
    }

    /// Waits for the reply of a submitted request; an `Error` reply becomes the `io::Error`.
    fn wait(&self, rx: &crossbeam_channel::Receiver<AgentMsg>) -> io::Result<AgentMsg> {
        match rx.recv() {
            Ok(AgentMsg::Error { code, message, .. }) => {
                Err(io::Error::new(code.io_kind(), agent_text(&message)))
            }
            Ok(reply) => Ok(reply),
            Err(_) => Err(broken_error(
                &self.broken().unwrap_or_else(|| "no reply".into()),
            )),
        }
    }

    fn deliver(&self, req: u64, reply: AgentMsg) -> Result<(), String> {
        let tx = self.lock_calls().waiting.remove(&req);
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
                Ok(())
            }
            None => Err(format!("reply to request {req}, which is not pending")),
        }
    }

    /// Routes replies until the stream ends or breaks the protocol.
    fn read_replies(&self, mut reader: impl Read) {
        // Listings arriving in several frames, with the frame bytes they took so far.
        let mut lists: HashMap<u64, (Vec<WireEntry>, usize)> = HashMap::new();
        // [`listing_cost`] of the unfinished listings in `lists`: counted with the delivered
        // ones against [`MAX_HELD_LISTING_BYTES`], so neither never-finished listings nor a
        // compressed bomb of small entries can grow the server's memory past it.
        let mut partial_cost = 0u64;
        let reason = loop {
            let body = match read_frame(&mut reader) {
                Ok(Some(b)) => b,
                Ok(None) => break "the agent closed the connection".to_string(),
                Err(e) => break format!("reading from the agent: {e}"),
            };
            let msg = match AgentMsg::decode(&body) {
                Ok(m) => m,
                Err(e) => break format!("the agent sent an invalid message: {e}"),
            };
            let delivered = match msg {
                AgentMsg::List { req, .. } if !self.lock_calls().waiting.contains_key(&req) => {
                    Err(format!("a listing for request {req}, which is not pending"))
                }
                AgentMsg::List { req, more, entries } => {
                    let (so_far, bytes) = lists.entry(req).or_default();
                    *bytes += body.len();
                    partial_cost += listing_cost(&entries);
                    let held = self.listings_held.load(Ordering::Acquire);
                    if so_far.len() + entries.len() > MAX_LISTING_ENTRIES
                        || *bytes > MAX_LISTING_BYTES
                    {
                        Err(format!(
                            "a listing of more than {MAX_LISTING_ENTRIES} entries or {MAX_LISTING_BYTES} bytes"
                        ))
                    } else if held + partial_cost > MAX_HELD_LISTING_BYTES {
                        Err(over_listing_budget())
                    } else {
                        so_far.extend(entries);
                        if more {
                            Ok(())
                        } else {
                            let (entries, _) = lists.remove(&req).unwrap_or_default();
                            let cost = listing_cost(&entries);
                            partial_cost -= cost;
                            self.listings_held.fetch_add(cost, Ordering::AcqRel);
                            self.deliver(
                                req,
                                AgentMsg::List {
                                    req,
                                    more: false,
                                    entries,
                                },
                            )
                        }
                    }
                }
                AgentMsg::Fatal { message } => {
                    Err(format!("the agent gave up: {}", agent_text(&message)))
                }
                other => match other.request_id() {
                    Some(req) => self.deliver(req, other),
                    None => Err("an unexpected hello".into()),
                },
            };
            if let Err(reason) = delivered {
                break format!("protocol violation: {reason}");
            }
        };
        self.break_off(reason);
    }
}

/// A [`Source`] served by `xstore agent` over a byte stream (usually an SSH session's
/// stdout/stdin). Cheap to share between ingest threads.
pub struct RemoteSource {
    inner: Arc<Inner>,
    info: AgentInfo,
    /// The request writer and the reply reader.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    prefetched: Mutex<Prefetched>,
    /// `List` requests sent ahead, by directory, with the digest they carried.
    prefetched_lists: Mutex<HashMap<PathBuf, ListAhead>>,
    /// The [`listing_cost`] of each listing ingest took and is not yet done with.
    taken_lists: Mutex<HashMap<PathBuf, u64>>,
    /// Files hinted as probably known ([`OpenHint::probably_known`]), or with a previous
    /// version that deltas fetch against ([`OpenHint::has_previous`]), not yet opened: asked
    /// for with their chunk ids alone.
    ids_only: Mutex<HashSet<PathBuf>>,
}

/// A `List` request sent ahead: its reply, and the listing digest it carried.
type ListAhead = (crossbeam_channel::Receiver<AgentMsg>, Option<[u8; 32]>);

impl std::fmt::Debug for RemoteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSource")
            .field("info", &self.info)
            .finish()
    }
}

/// What the server offers an agent in its hello.
#[derive(Debug, Clone, Copy)]
pub struct SessionTerms {
    /// The repository's chunker parameters: the agent cuts with them, so its chunk ids are
    /// the repository's.
    pub params: ChunkerParams,
    /// The repository's zstd level: the agent compresses at it, or faster under
    /// `adaptive-level` when its CPU bounds the pull.
    pub level: i32,
    /// Turn on `raw-chunks` (when the agent offers it with `adaptive-level`): an agent whose
    /// CPU bounds the pull even at its fastest level may send chunks uncompressed, and ingest
    /// stores them so while the pull's budgets have room to spare ([`SentForm::Uncompressed`]).
    /// A first pull over a fast link then runs at what the link and the agent's reading,
    /// cutting and hashing allow, and stores about the raw bytes until `xstore compact`.
    pub raw_chunks: bool,
}

impl SessionTerms {
    /// The terms for `repo`'s chunker and level, with `raw-chunks` on.
    pub fn for_repository(params: ChunkerParams, level: i32) -> SessionTerms {
        SessionTerms {
            params,
            level,
            raw_chunks: true,
        }
    }
}

impl RemoteSource {
    /// Runs the handshake on `reader`/`writer` (the agent speaks first) and starts the reply
    /// reader, on the [`SessionTerms`] given.
    pub fn connect(
        mut reader: impl Read + Send + 'static,
        mut writer: impl Write + Send + 'static,
        terms: SessionTerms,
    ) -> Result<RemoteSource, RemoteError> {
        let SessionTerms {
            params,
            level,
            raw_chunks,
        } = terms;
        let body = read_frame(&mut reader)?.ok_or(RemoteError::Closed)?;
        let received = body.len() as u64 + 4;
        let (versions, roots, software, offered) = match AgentMsg::decode(&body) {
            Ok(AgentMsg::Hello {
                versions,
                roots,
                software,
                capabilities,
            }) => (versions, roots, software, capabilities),
            Ok(AgentMsg::Fatal { message }) => {
                return Err(RemoteError::Refused(agent_text(&message)))
            }
            Ok(other) => {
                return Err(RemoteError::Protocol(format!(
                    "expected hello, got {other:?}"
                )))
            }
            Err(e) => return Err(RemoteError::Protocol(e.to_string())),
        };
        let Some(version) = PROTOCOL_VERSIONS
            .iter()
            .rev()
            .find(|v| versions.contains(v))
            .copied()
        else {
            return Err(RemoteError::Protocol(format!(
                "the agent speaks versions {versions:?}, this server {PROTOCOL_VERSIONS:?}"
            )));
        };
        let mut root_paths = Vec::new();
        for r in roots {
            match xstore_format::protocol::paths::normalize(Path::new(OsStr::from_bytes(&r))) {
                Some(p) if p != Path::new("/") => root_paths.push(p),
                _ => {
                    return Err(RemoteError::Protocol(format!(
                        "allowed root {:?} is not a normalized absolute path",
                        String::from_utf8_lossy(&r)
                    )))
                }
            }
        }
        let offers = |cap: &[u8]| offered.iter().any(|c| c == cap);
        let transport = Transport::best_of(&offered);
        let digest_meta = offers(CAP_DIGEST_META);
        let deltas = offers(CAP_CHUNK_DELTAS);
        let raw_chunks = raw_chunks && offers(CAP_ADAPTIVE_LEVEL) && offers(CAP_RAW_CHUNKS);
        let hello = ServerMsg::Hello {
            version,
            min: params.min(),
            avg: params.avg(),
            max: params.max(),
            level: level.clamp(1, 19) as u8,
            capabilities: {
                let mut c = transport.capabilities();
                if digest_meta {
                    c.push(CAP_DIGEST_META.to_vec());
                }
                // The agent may compress faster than `level` when its CPU bounds the pull;
                // every frame is verified and the smaller form stored, as always, and
                // `xstore compact` recompresses what survives.
                if offers(CAP_ADAPTIVE_LEVEL) {
                    c.push(CAP_ADAPTIVE_LEVEL.to_vec());
                }
                if deltas {
                    c.push(CAP_CHUNK_DELTAS.to_vec());
                }
                if raw_chunks {
                    c.push(CAP_RAW_CHUNKS.to_vec());
                }
                c
            },
        }
        .encode();
        write_frame(&mut writer, &hello)?;
        writer.flush()?;
        let received = Arc::new(AtomicU64::new(received));
        let sent = Arc::new(AtomicU64::new(hello.len() as u64 + 4));
        let reader = Counting {
            inner: reader,
            count: Arc::clone(&received),
        };
        let writer = Counting {
            inner: writer,
            count: Arc::clone(&sent),
        };
        // Whole frames per write to ssh, and large reads from it (not two syscalls a frame).
        let writer = io::BufWriter::with_capacity(64 * 1024, writer);
        let reader = io::BufReader::with_capacity(256 * 1024, reader);
        let mut sink = transport.sink(Box::new(writer))?;
        let (requests, frames) = crossbeam_channel::unbounded::<Outgoing>();
        let inner = Arc::new(Inner {
            requests: Mutex::new(Some(requests)),
            calls: Mutex::new(Calls::default()),
            next_request: AtomicU64::new(1),
            received,
            sent,
            listings_held: AtomicU64::new(0),
            extras: Mutex::new(HashMap::new()),
            digest_meta,
            deltas,
            raw_chunks,
        });
        let for_writer = Arc::clone(&inner);
        let writer_thread = std::thread::Builder::new()
            .name("agent-requests".into())
            .spawn(move || {
                // Requests leave at once: ingest threads wait on their answers.
                if let Err(e) = write_batched(&mut sink, &frames, &|| false) {
                    for_writer.break_off(format!("sending a request: {e}"));
                }
                // Dropping the sink ends the stream and closes the agent's stdin.
            })?;
        let for_reader = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("agent-replies".into())
            .spawn(move || match transport.reader(reader) {
                Ok(reader) => for_reader.read_replies(reader),
                Err(e) => for_reader.break_off(format!("starting the reply stream: {e}")),
            })?;
        Ok(RemoteSource {
            inner,
            info: AgentInfo {
                roots: root_paths,
                software: String::from_utf8_lossy(&software).into_owned(),
                version,
            },
            threads: Mutex::new(vec![writer_thread, handle]),
            prefetched: Mutex::new(Prefetched::default()),
            prefetched_lists: Mutex::new(HashMap::new()),
            taken_lists: Mutex::new(HashMap::new()),
            ids_only: Mutex::new(HashSet::new()),
        })
    }

    /// What the agent announced.
    pub fn agent(&self) -> &AgentInfo {
        &self.info
    }

    /// Bytes sent to the agent so far (frames included).
    pub fn bytes_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Bytes received from the agent so far (frames included).
    pub fn bytes_received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// Says goodbye (the agent exits) and waits for the reply reader to see the end of the
    /// stream. Call after the backup; the caller closes or kills the transport if the agent
    /// does not end it.
    pub fn close(&self) {
        {
            let mut calls = self.inner.lock_calls();
            if calls.broken.is_none() {
                calls.broken = Some("the session was closed".into());
            }
        }
        // Bye, then the writer thread ends and closes the agent's stdin even if Bye was lost.
        if let Some(tx) = self.inner.stop_requests() {
            let _ = tx.send(Outgoing {
                body: ServerMsg::Bye.encode(),
                compress: true,
                hold: false,
            });
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for h in threads {
            let _ = h.join();
        }
    }

    fn remember(&self, path: PathBuf, entry: &mut WireEntry) {
        if entry.target.is_some() || !entry.xattrs.is_empty() {
            let extra = Extra {
                target: entry.target.take(),
                xattrs: std::mem::take(&mut entry.xattrs),
            };
            self.inner
                .extras
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path, extra);
        }
    }
}

impl RemoteSource {
    /// Whether a hinted file is asked for with its chunk ids alone: its chunks are probably
    /// known, or the host's previous version of it is a base for deltas (an appended log
    /// then sends what was appended, not the whole file inline).
    fn ids_first(&self, hint: &OpenHint) -> bool {
        hint.probably_known || (self.inner.deltas && hint.has_previous)
    }

    /// Lists `dir`; with the previous snapshot's tree, only a digest travels when nothing in
    /// the directory changed, and the listing is rebuilt from that tree.
    fn listing(
        &self,
        dir: &Path,
        previous: Option<&Tree>,
    ) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        let path = dir.as_os_str().as_bytes().to_vec();
        let known = previous.map(|t| self.inner.known_digest(t));
        // A request sent ahead counts only if it carried this digest.
        let sent_ahead = self
            .prefetched_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dir)
            .filter(|(_, digest)| *digest == known);
        let reply = match sent_ahead {
            Some((reply, _)) => self.inner.wait(&reply)?,
            None => self
                .inner
                .call(|req| ServerMsg::List { req, path, known })?,
        };
        // What taking the listing adds to `listings_held`: the walk's state per entry, and
        // for a listing rebuilt from the previous tree the listing itself (a delivered one
        // is counted since it arrived).
        let (entries, added) = match reply {
            AgentMsg::List { entries, .. } => {
                let walk = WALK_ENTRY_BYTES * entries.len() as u64;
                (entries, walk)
            }
            AgentMsg::ListUnchanged { .. } => match previous {
                Some(tree) => {
                    let entries: Vec<WireEntry> = tree.entries.iter().map(wire_entry_of).collect();
                    let added = listing_cost(&entries) + WALK_ENTRY_BYTES * entries.len() as u64;
                    (entries, added)
                }
                None => return Err(unexpected("list")),
            },
            _ => return Err(unexpected("list")),
        };
        let held = self.inner.listings_held.fetch_add(added, Ordering::AcqRel);
        if held + added > MAX_HELD_LISTING_BYTES {
            let reason = over_listing_budget();
            self.inner.break_off(reason.clone());
            // Counted until the walk is done with the directory, as every taken listing.
        }
        *self
            .taken_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dir.to_path_buf())
            .or_default() += listing_cost(&entries) + WALK_ENTRY_BYTES * entries.len() as u64;
        if let Some(reason) = self.inner.broken() {
            return Err(broken_error(&reason));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            // A hostile agent could name an entry `..` or `a/b`: such a name must never reach
            // a tree (restore would write outside its target).
            if !valid_name(&e.name) || !seen.insert(e.name.clone()) {
                tracing::warn!(dir = %dir.display(), name = %String::from_utf8_lossy(&e.name),
                    "agent sent an invalid or duplicate name; skipped");
                continue;
            }
            self.remember(dir.join(OsStr::from_bytes(&e.name)), &mut e);
            out.push((e.name, e.meta.map_err(io::Error::other)));
        }
        Ok(out)
    }
}

/// Why a pull whose listings outgrew [`MAX_HELD_LISTING_BYTES`] failed.
fn over_listing_budget() -> String {
    format!(
        "listings of more than {} MiB in memory at once (the pull's listing budget)",
        MAX_HELD_LISTING_BYTES >> 20
    )
}

/// A tree entry as the agent would list it (a `ListUnchanged` answer is rebuilt from these).
fn wire_entry_of(e: &Entry) -> WireEntry {
    WireEntry {
        name: e.name.clone(),
        meta: Ok(e.meta()),
        target: match &e.content {
            Content::Target(t) => Some(t.clone()),
            _ => None,
        },
        xattrs: e.xattrs.clone(),
    }
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        self.inner.break_off("the session ended".into());
        // Ends the writer thread (it holds the other reference to `inner`).
        drop(self.inner.stop_requests());
    }
}

fn unexpected(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the agent answered {what} with the wrong kind of reply"),
    )
}

/// The names a tree may hold (the rule trees are decoded with).
fn valid_name(name: &[u8]) -> bool {
    xstore_format::tree::validate_name(name).is_ok()
}

impl Source for RemoteSource {
    fn stat(&self, path: &Path) -> io::Result<EntryMeta> {
        let path_bytes = path.as_os_str().as_bytes().to_vec();
        match self.inner.call(|req| ServerMsg::Stat {
            req,
            path: path_bytes,
        })? {
            AgentMsg::Stat { mut entry, .. } => {
                let meta = entry.meta.clone().map_err(io::Error::other)?;
                self.remember(path.to_path_buf(), &mut entry);
                Ok(meta)
            }
            _ => Err(unexpected("stat")),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        self.listing(dir, None)
    }

    fn list_known(
        &self,
        dir: &Path,
        previous: &Tree,
    ) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        self.listing(dir, Some(previous))
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner
            .extras
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .and_then(|x| x.target.clone())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the agent sent no symlink target")
            })
    }

    fn xattrs(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .inner
            .extras
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path)
            .map(|x| x.xattrs)
            .unwrap_or_default())
    }

    fn will_list(&self, dirs: &[(PathBuf, Option<&Tree>)]) {
        let mut lists = self
            .prefetched_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (dir, previous) in dirs {
            if lists.len() >= PREFETCH_LISTS
                || self.inner.listings_held.load(Ordering::Acquire) > PREFETCH_BYTES
            {
                break;
            }
            if lists.contains_key(dir) {
                continue;
            }
            let known = previous.map(|t| self.inner.known_digest(t));
            let path = dir.as_os_str().as_bytes().to_vec();
            let Ok(reply) = self
                .inner
                .submit(|req| ServerMsg::List { req, path, known })
            else {
                break; // the connection broke; the listing reports it
            };
            lists.insert(dir.clone(), (reply, known));
        }
    }

    fn listing_done(&self, dir: &Path) {
        let done = self
            .taken_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dir);
        if let Some(cost) = done {
            self.inner.listings_held.fetch_sub(cost, Ordering::AcqRel);
        }
    }

    fn will_open(&self, files: &[OpenHint]) {
        let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut ids_only = self.ids_only.lock().unwrap_or_else(|e| e.into_inner());
            for h in files.iter().filter(|h| self.ids_first(h)) {
                ids_only.insert(h.path.clone());
            }
        }
        for hint in files {
            let OpenHint { path, size, .. } = hint;
            // Probably known content, or a changed file that deltas will fetch: the chunk ids
            // alone, no inline bytes.
            let (cost, inline_max) = match self.ids_first(hint) {
                true => (Prefetched::estimate(0), 0),
                false => (Prefetched::estimate(*size), INLINE_MAX),
            };
            if prefetched.bytes + cost > PREFETCH_BYTES {
                break;
            }
            if prefetched.replies.contains_key(path) {
                continue;
            }
            let path_bytes = path.as_os_str().as_bytes().to_vec();
            let Ok(reply) = self.inner.submit(|req| ServerMsg::ChunkFile {
                req,
                path: path_bytes,
                inline_max,
            }) else {
                break; // the connection broke; `open` reports it
            };
            prefetched.replies.insert(path.clone(), (reply, cost));
            prefetched.bytes += cost;
        }
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        let path_bytes = path.as_os_str().as_bytes().to_vec();
        let sent_ahead = {
            let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
            let taken = prefetched.replies.remove(path);
            if let Some((_, cost)) = &taken {
                prefetched.bytes -= cost;
            }
            taken.map(|(reply, _)| reply)
        };
        let ids_only = self
            .ids_only
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
        let reply = match sent_ahead {
            Some(reply) => self.inner.wait(&reply)?,
            None => self.inner.call(|req| ServerMsg::ChunkFile {
                req,
                path: path_bytes.clone(),
                inline_max: if ids_only { 0 } else { INLINE_MAX },
            })?,
        };
        match reply {
            AgentMsg::FileChunks {
                before,
                after,
                chunks,
                inline,
                ..
            } => {
                if inline.is_some() && chunks.len() != 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the agent sent inline bytes for a file that is not one chunk",
                    ));
                }
                let mut offsets = HashMap::with_capacity(chunks.len());
                let mut offset = 0u64;
                for (id, len) in &chunks {
                    offsets.entry(*id).or_insert((offset, *len));
                    offset = offset.saturating_add(u64::from(*len));
                }
                Ok(Box::new(RemoteFile {
                    inner: Arc::clone(&self.inner),
                    path: path_bytes,
                    metas: [before, after],
                    meta_calls: 0,
                    chunks: chunks
                        .into_iter()
                        .map(|(id, len)| ChunkRef { id, len })
                        .collect(),
                    offsets,
                    inline,
                }))
            }
            _ => Err(unexpected("chunk-file")),
        }
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        xstore_format::protocol::paths::normalize(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: remote paths must be absolute, without '..'",
                    path.display()
                ),
            )
        })
    }

    fn finish(&self) -> io::Result<()> {
        match self.inner.broken() {
            Some(reason) => Err(broken_error(&reason)),
            None => Ok(()),
        }
    }

    fn transferred_bytes(&self) -> Option<u64> {
        Some(self.bytes_received() + self.bytes_sent())
    }
}

struct RemoteFile {
    inner: Arc<Inner>,
    path: Vec<u8>,
    metas: [EntryMeta; 2],
    meta_calls: usize,
    chunks: Vec<ChunkRef>,
    offsets: HashMap<ChunkId, (u64, u32)>,
    inline: Option<WireChunk>,
}

/// A chunk as the agent sent it, checked against the length asked for and decompressed
/// into a buffer of exactly that length (a bomb fails). Ingest then checks the id. An
/// uncompressed chunk counts as sent so by choice when the session has `raw-chunks` on.
fn unpack(c: WireChunk, want: u32, raw_chunks: bool) -> io::Result<FetchedChunk> {
    if c.raw_len != want || want as usize > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the agent sent {} bytes for a {want}-byte chunk", c.raw_len),
        ));
    }
    if c.zstd {
        let data = xstore_format::pack::decompress(&c.bytes, want as usize)?;
        if data.len() != want as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a compressed chunk decompressed to the wrong length",
            ));
        }
        Ok(FetchedChunk {
            data,
            sent: SentForm::Zstd(c.bytes),
        })
    } else if c.bytes.len() != want as usize {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a chunk arrived with the wrong length",
        ))
    } else {
        Ok(FetchedChunk {
            data: c.bytes,
            sent: match raw_chunks {
                true => SentForm::Uncompressed,
                false => SentForm::Plain,
            },
        })
    }
}

/// A reply must carry exactly as many `what` as were asked for.
fn check_count(what: &str, asked: usize, sent: usize) -> io::Result<()> {
    if asked != sent {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("asked for {asked} {what}, the agent sent {sent}"),
        ));
    }
    Ok(())
}

/// The longest delta program accepted for a chunk of `len` bytes: at most `len` literal
/// bytes, and per sub-chunk of the chunk at most one op of at most 17 bytes (every sub-chunk
/// but the last is at least 256 bytes: ops take at most 7 % of `len`).
fn max_program_len(len: u32) -> u32 {
    len.saturating_add(len / 4).saturating_add(1024)
}

impl RemoteFile {
    /// The file offsets and lengths of `ids` (chunks of this file's list).
    fn ranges_of(&self, ids: &[ChunkRef]) -> io::Result<Vec<(u64, u32)>> {
        ids.iter()
            .map(|c| match self.offsets.get(&c.id) {
                Some((offset, len)) if *len == c.len => Ok((*offset, *len)),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("chunk {} is not in this file's list", c.id),
                )),
            })
            .collect()
    }

    /// `ids` as deltas against `bases` (one each): the rebuilt bytes, in order, for ingest
    /// to verify against the ids as any fetched chunk.
    fn fetch_deltas(&mut self, ids: &[ChunkRef], bases: &[&[u8]]) -> io::Result<Vec<FetchedChunk>> {
        let signatures: Vec<BaseSignature> = bases.iter().map(|b| base_signature(b)).collect();
        let ranges: Vec<DeltaRange> = self
            .ranges_of(ids)?
            .into_iter()
            .zip(&signatures)
            .map(|((offset, len), sig)| DeltaRange {
                offset,
                len,
                base: sig.hashes.clone(),
            })
            .collect();
        let path = self.path.clone();
        let AgentMsg::Deltas { programs, .. } =
            self.inner
                .call(|req| ServerMsg::ReadDeltas { req, path, ranges })?
        else {
            return Err(unexpected("read-deltas"));
        };
        check_count("deltas", ids.len(), programs.len())?;
        let mut out = Vec::with_capacity(ids.len());
        for (((program, c), base), sig) in programs.into_iter().zip(ids).zip(bases).zip(&signatures)
        {
            if program.raw_len > max_program_len(c.len) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the agent sent a {}-byte delta for a {}-byte chunk",
                        program.raw_len, c.len
                    ),
                ));
            }
            let raw_len = program.raw_len;
            // Programs are never stored: the rebuilt chunk is compressed here.
            let program = unpack(program, raw_len, false)?;
            let data = apply_delta(&program.data, base, sig, c.len as usize)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            out.push(FetchedChunk {
                data,
                sent: SentForm::Plain,
            });
        }
        Ok(out)
    }
}

impl Read for RemoteFile {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "remote files are fetched by chunk id",
        ))
    }
}

impl SourceFile for RemoteFile {
    fn current_meta(&mut self) -> io::Result<EntryMeta> {
        // Ingest asks before and after reading; the agent measured both around its read.
        let m = self.metas[self.meta_calls.min(1)];
        self.meta_calls += 1;
        Ok(m)
    }

    fn remote_chunks(&mut self) -> Option<io::Result<Vec<ChunkRef>>> {
        Some(Ok(self.chunks.clone()))
    }

    fn wants_bases(&self) -> bool {
        // Inline bytes already came with the chunk list: nothing to save.
        self.inner.deltas && self.inline.is_none()
    }

    fn fetch_chunks_near(
        &mut self,
        ids: &[ChunkRef],
        bases: &[Option<Vec<u8>>],
    ) -> io::Result<Vec<FetchedChunk>> {
        if !self.wants_bases() || bases.iter().all(Option::is_none) {
            return self.fetch_chunks(ids);
        }
        let (mut near, mut plain) = (Vec::new(), Vec::new());
        for (i, c) in ids.iter().enumerate() {
            match bases.get(i).and_then(Option::as_deref) {
                Some(base) => near.push((i, *c, base)),
                None => plain.push((i, *c)),
            }
        }
        let mut out: Vec<Option<FetchedChunk>> = (0..ids.len()).map(|_| None).collect();
        if !plain.is_empty() {
            let asked: Vec<ChunkRef> = plain.iter().map(|(_, c)| *c).collect();
            for ((i, _), fetched) in plain.iter().zip(self.fetch_chunks(&asked)?) {
                out[*i] = Some(fetched);
            }
        }
        let asked: Vec<ChunkRef> = near.iter().map(|(_, c, _)| *c).collect();
        let near_bases: Vec<&[u8]> = near.iter().map(|(_, _, b)| *b).collect();
        for ((i, _, _), fetched) in near.iter().zip(self.fetch_deltas(&asked, &near_bases)?) {
            out[*i] = Some(fetched);
        }
        out.into_iter()
            .map(|f| f.ok_or_else(|| unexpected("read-deltas")))
            .collect()
    }

    fn fetch_chunks(&mut self, ids: &[ChunkRef]) -> io::Result<Vec<FetchedChunk>> {
        if let [only] = ids {
            if self.chunks.len() == 1 && self.chunks[0] == *only {
                // Taken, not cloned: a second fetch of the same chunk goes to the agent.
                if let Some(inline) = self.inline.take() {
                    return Ok(vec![unpack(inline, only.len, self.inner.raw_chunks)?]);
                }
            }
        }
        let ranges = self.ranges_of(ids)?;
        let expected: Vec<u32> = ranges.iter().map(|(_, l)| *l).collect();
        let path = self.path.clone();
        let AgentMsg::ChunkData { chunks, .. } =
            self.inner
                .call(|req| ServerMsg::ReadChunks { req, path, ranges })?
        else {
            return Err(unexpected("read-chunks"));
        };
        check_count("chunks", expected.len(), chunks.len())?;
        let mut out = Vec::with_capacity(chunks.len());
        for (c, want) in chunks.into_iter().zip(expected) {
            out.push(unpack(c, want, self.inner.raw_chunks)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xstore_format::meta::EntryKind;

    fn entry(name: &[u8], kind: EntryKind, content: Content, xattrs: usize) -> Entry {
        Entry {
            name: name.to_vec(),
            kind,
            attrs: xstore_format::meta::Attrs {
                mode: 0o640,
                uid: 1000,
                gid: 100,
                mtime_ns: 1_700_000_000_123_456_789,
                ctime_ns: -5,
                size: 42,
                inode: 77,
                dev: 2049,
                nlink: 2,
                rdev: 0,
            },
            xattrs: (0..xattrs)
                .map(|i| (format!("user.k{i}").into_bytes(), vec![i as u8; i * 3]))
                .collect(),
            content,
        }
    }

    #[test]
    fn tree_digest_equals_the_digest_of_the_listing_the_agent_would_send() {
        let tree = Tree {
            entries: vec![
                entry(
                    b"dir",
                    EntryKind::Dir,
                    Content::Subtree(ChunkId::of(b"t")),
                    0,
                ),
                entry(b"file", EntryKind::File, Content::Chunks(Vec::new()), 2),
                entry(
                    b"link",
                    EntryKind::Symlink,
                    Content::Target(b"../x".to_vec()),
                    1,
                ),
            ],
        };
        let listing: Vec<WireEntry> = tree.entries.iter().map(wire_entry_of).collect();
        assert_eq!(
            tree_listing_digest(&tree),
            xstore_format::protocol::listing_digest(&listing)
        );
        let mut other = tree.clone();
        other.entries[2].content = Content::Target(b"../y".to_vec());
        assert_ne!(tree_listing_digest(&other), tree_listing_digest(&tree));
    }
}
