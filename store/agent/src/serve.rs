//! Serving one session: requests from the server answered by worker threads, replies batched
//! onto stdout (FORMAT.md §Agent protocol).

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use xstore_chunker::ChunkerParams;
use xstore_format::meta::{EntryKind, EntryMeta, SourceKind, StatFields};
use xstore_format::protocol::{
    listing_digest, listing_digest_meta, read_frame, write_batched, write_frame, AgentMsg,
    DeltaRange, ErrorCode, Outgoing, ServerMsg, Transport, WireChunk, WireEntry,
    CAP_ADAPTIVE_LEVEL, CAP_CHUNK_DELTAS, CAP_DIGEST_META, CAP_RAW_CHUNKS, LIST_BATCH_BYTES,
    PROTOCOL_VERSIONS,
};

use crate::config::AgentConfig;
use crate::effort::{lowest_level, wire_chunk, Effort, TimeSpent};
use crate::error::AgentError;

/// Most raw bytes one `ReadChunks` request may ask for.
pub const MAX_READ_REQUEST: u64 = 32 * 1024 * 1024;

/// What the hellos settled: the chunker, the chunk compression level (whether the agent
/// may go below it, `adaptive-level`, down to sending chunks uncompressed, `raw-chunks`), the
/// transport and whether listings may come without xattrs (`digest-meta`).
struct Agreed {
    params: ChunkerParams,
    level: i32,
    adaptive: bool,
    uncompressed: bool,
    transport: Transport,
    digest_meta: bool,
}

/// The agent's hello, then the server's: `None` when the server left before saying hello.
/// A bad hello is answered with a `Fatal` frame naming what is wrong.
fn handshake(
    config: &AgentConfig,
    input: &mut impl Read,
    out: &mut Box<dyn Write + Send>,
) -> Result<Option<Agreed>, AgentError> {
    let send_now = |out: &mut Box<dyn Write + Send>, msg: AgentMsg| -> io::Result<()> {
        write_frame(out, &msg.encode())?;
        out.flush()
    };
    let fatal_now = |out: &mut Box<dyn Write + Send>, reason: String| -> AgentError {
        let _ = send_now(
            out,
            AgentMsg::Fatal {
                message: reason.clone().into_bytes(),
            },
        );
        AgentError::Protocol(reason)
    };
    send_now(
        out,
        AgentMsg::Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            capabilities: {
                let mut c = Transport::offered();
                c.push(CAP_DIGEST_META.to_vec());
                c.push(CAP_ADAPTIVE_LEVEL.to_vec());
                c.push(CAP_CHUNK_DELTAS.to_vec());
                c.push(CAP_RAW_CHUNKS.to_vec());
                c
            },
            roots: config
                .announced()
                .iter()
                .map(|r| r.as_os_str().as_bytes().to_vec())
                .collect(),
            software: format!("xstore {}", env!("CARGO_PKG_VERSION")).into_bytes(),
        },
    )?;
    let hello = match read_frame(input)? {
        Some(body) => {
            ServerMsg::decode(&body).map_err(|e| fatal_now(out, format!("server hello: {e}")))?
        }
        None => return Ok(None),
    };
    match hello {
        ServerMsg::Hello {
            version,
            min,
            avg,
            max,
            level,
            capabilities,
        } => {
            if !PROTOCOL_VERSIONS.contains(&version) {
                return Err(fatal_now(
                    out,
                    format!(
                        "protocol version {version} is not supported (agent speaks {PROTOCOL_VERSIONS:?})"
                    ),
                ));
            }
            let params = ChunkerParams::new(min, avg, max)
                .map_err(|e| fatal_now(out, format!("chunker parameters: {e}")))?;
            Ok(Some(Agreed {
                params,
                level: i32::from(level),
                adaptive: capabilities.iter().any(|c| c == CAP_ADAPTIVE_LEVEL),
                uncompressed: capabilities.iter().any(|c| c == CAP_RAW_CHUNKS),
                transport: Transport::best_of(&capabilities),
                digest_meta: capabilities.iter().any(|c| c == CAP_DIGEST_META),
            }))
        }
        other => Err(fatal_now(
            out,
            format!("expected the server's hello, got {other:?}"),
        )),
    }
}

/// How [`serve_with`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Threads answering requests (at least one).
    pub workers: usize,
    /// Hold chunk compression at this step instead of adapting it ([`crate::effort`]):
    /// a zstd level, or [`crate::effort::UNCOMPRESSED`]. It is kept within what the hellos
    /// allow (the server's level at most; below it only with `adaptive-level`, uncompressed
    /// only with `raw-chunks`). For an embedding that wants a predictable CPU cost, and tests.
    pub pinned_level: Option<i32>,
}

/// Serves one session on `input`/`output` (the SSH channel) until the server says goodbye or
/// closes the stream. Requests are answered by `workers` threads; replies carry request ids
/// and may arrive in any order.
pub fn serve<'a, W: Write + Send + 'static>(
    config: &AgentConfig,
    input: impl Read + 'a,
    output: W,
    workers: usize,
) -> Result<(), AgentError> {
    let options = ServeOptions {
        workers,
        pinned_level: None,
    };
    serve_with(config, input, output, options)
}

/// [`serve`] with [`ServeOptions`].
pub fn serve_with<'a, W: Write + Send + 'static>(
    config: &AgentConfig,
    input: impl Read + 'a,
    output: W,
    options: ServeOptions,
) -> Result<(), AgentError> {
    let workers = options.workers;
    // Large enough for a batch of replies to leave in one write (`write_batched`).
    let mut out: Box<dyn Write + Send> = Box::new(io::BufWriter::with_capacity(
        xstore_format::protocol::BATCH_BYTES * 2,
        output,
    ));
    let mut input: Box<dyn Read + 'a> = Box::new(input);
    let Some(Agreed {
        params,
        level,
        adaptive,
        uncompressed,
        transport,
        digest_meta,
    }) = handshake(config, &mut input, &mut out)?
    else {
        return Ok(());
    };
    // From here on both directions use the transport the server turned on (FORMAT.md).
    let mut input = transport.reader(input)?;
    let mut sink = transport.sink(out)?;
    let ctx = Ctx {
        config,
        params,
        effort: {
            let floor = lowest_level(level, adaptive, uncompressed);
            match options.pinned_level {
                Some(pinned) => Effort::pinned(pinned.clamp(floor, level)),
                None => Effort::new(level, floor, workers.max(1)),
            }
        },
        digest_meta,
    };
    // Two queues: `ChunkFile` requests, which a server sends ahead by the thousand, and the
    // rest (listings, stats, chunk reads), for which a server thread is waiting: workers take
    // those first. The ahead queue is deep so that the reader keeps reading past a backlog.
    let (urgent_tx, urgent_rx) = crossbeam_channel::bounded::<ServerMsg>(workers.max(1) * 4);
    let (ahead_tx, ahead_rx) = crossbeam_channel::bounded::<ServerMsg>(AHEAD_QUEUE);
    // Replies go through one writer thread that batches them (`write_batched`): while
    // requests are being answered it gathers replies into larger writes (fewer SSH packets);
    // when none is, it flushes at once, so a server waiting on one answer is not delayed.
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Outgoing>(workers.max(1) * 16);
    // Requests read and not yet fully answered (the last reply is counted out before it is
    // queued, so the writer never waits for a reply that is already in its channel).
    let unanswered = AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<(), AgentError> {
        let unanswered = &unanswered;
        scope.spawn(move || {
            // A write error means the server is gone; the reader sees the end of input too.
            let _ = write_batched(&mut sink, &out_rx, &|| {
                unanswered.load(Ordering::Acquire) > 0
            });
        });
        for _ in 0..workers.max(1) {
            let (urgent_rx, ahead_rx) = (urgent_rx.clone(), ahead_rx.clone());
            let out_tx = out_tx.clone();
            let ctx = &ctx;
            scope.spawn(move || loop {
                let waiting = std::time::Instant::now();
                let Some(request) = next_request(&urgent_rx, &ahead_rx) else {
                    return;
                };
                let answering = std::time::Instant::now();
                let replies = ctx.answer(request);
                let queueing = std::time::Instant::now();
                let last = replies.len().saturating_sub(1);
                if replies.is_empty() {
                    unanswered.fetch_sub(1, Ordering::AcqRel);
                }
                for (i, reply) in replies.into_iter().enumerate() {
                    let frame = reply.outgoing();
                    if i == last {
                        unanswered.fetch_sub(1, Ordering::AcqRel);
                    }
                    if out_tx.send(frame).is_err() {
                        return;
                    }
                }
                ctx.effort.record(TimeSpent {
                    idle: answering - waiting,
                    busy: queueing - answering,
                    blocked: queueing.elapsed(),
                });
            });
        }
        drop((urgent_rx, ahead_rx));
        let fatal = |reason: String| -> AgentError {
            let message = reason.clone().into_bytes();
            let _ = out_tx.send(AgentMsg::Fatal { message }.outgoing());
            AgentError::Protocol(reason)
        };
        let result = (|| {
            while let Some(body) = read_frame(&mut input)? {
                let msg = ServerMsg::decode(&body).map_err(|e| fatal(format!("request: {e}")))?;
                match msg {
                    ServerMsg::Bye => break,
                    ServerMsg::Hello { .. } => return Err(fatal("second hello".into())),
                    request => {
                        unanswered.fetch_add(1, Ordering::AcqRel);
                        let queue = match request {
                            ServerMsg::ChunkFile { .. } => &ahead_tx,
                            _ => &urgent_tx,
                        };
                        if queue.send(request).is_err() {
                            break;
                        }
                    }
                }
            }
            Ok(())
        })();
        // The workers end when the requests end, the writer when every reply sender is gone;
        // the scope waits for both, so the last replies are written before the agent exits.
        drop((urgent_tx, ahead_tx));
        drop(out_tx);
        result
    })
}

/// Most `ChunkFile` requests queued in the agent (a server sends them ahead of need).
const AHEAD_QUEUE: usize = 65_536;

/// The next request for a worker: urgent ones first. `None` once both queues are closed and
/// empty.
fn next_request(
    urgent: &crossbeam_channel::Receiver<ServerMsg>,
    ahead: &crossbeam_channel::Receiver<ServerMsg>,
) -> Option<ServerMsg> {
    if let Ok(m) = urgent.try_recv() {
        return Some(m);
    }
    // A closed queue is always ready (with an error): fall back to the other one.
    crossbeam_channel::select_biased! {
        recv(urgent) -> m => m.ok().or_else(|| ahead.recv().ok()),
        recv(ahead) -> m => m.ok().or_else(|| urgent.recv().ok()),
    }
}

struct Ctx<'a> {
    config: &'a AgentConfig,
    params: ChunkerParams,
    /// The level chunks are compressed at.
    effort: Effort,
    /// The server turned on [`CAP_DIGEST_META`]: listing digests leave xattrs out.
    digest_meta: bool,
}

fn error_reply(req: u64, code: ErrorCode, message: impl Into<String>) -> AgentMsg {
    AgentMsg::Error {
        req,
        code,
        message: message.into().into_bytes(),
    }
}

fn io_reply(req: u64, path: &Path, e: &io::Error) -> AgentMsg {
    let (code, message) = io_refusal(path, e);
    error_reply(req, code, message)
}

/// The error code and message for an I/O error at `path`.
fn io_refusal(path: &Path, e: &io::Error) -> (ErrorCode, String) {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
        || e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error())
    {
        return (
            ErrorCode::Refused,
            format!("{}: refused, a path component is a symlink", path.display()),
        );
    }
    (ErrorCode::of(e), format!("{}: {e}", path.display()))
}

/// A request's path: a wire path (`xstore_format::protocol::paths`), else the request is
/// refused.
fn request_path(bytes: &[u8]) -> Option<&Path> {
    xstore_format::protocol::paths::wire_path(bytes)
}

impl Ctx<'_> {
    fn answer(&self, request: ServerMsg) -> Vec<AgentMsg> {
        let (req, path_bytes) = match &request {
            ServerMsg::Stat { req, path }
            | ServerMsg::List { req, path, .. }
            | ServerMsg::ChunkFile { req, path, .. }
            | ServerMsg::ReadChunks { req, path, .. }
            | ServerMsg::ReadDeltas { req, path, .. } => (*req, path.clone()),
            _ => return Vec::new(),
        };
        let Some(path) = request_path(&path_bytes) else {
            return vec![error_reply(
                req,
                ErrorCode::BadRequest,
                format!(
                    "{:?} is not a normalized absolute path",
                    String::from_utf8_lossy(&path_bytes)
                ),
            )];
        };
        let allowed = self.config.allows(path)
            || (matches!(request, ServerMsg::Stat { .. }) && self.config.may_stat(path));
        if !allowed {
            return vec![error_reply(
                req,
                ErrorCode::Refused,
                format!("{}: outside this host's backup list", path.display()),
            )];
        }
        match request {
            ServerMsg::Stat { .. } => vec![match stat_entry(path) {
                Ok(entry) => AgentMsg::Stat { req, entry },
                Err(e) => io_reply(req, path, &e),
            }],
            // With a digest that leaves xattrs out, they are read only when the directory
            // changed (a change of xattrs changes ctime, which the digest covers).
            ServerMsg::List {
                known: Some(known), ..
            } if self.digest_meta => match list(path, false) {
                Ok((_, entries)) if known == listing_digest_meta(&entries) => {
                    vec![AgentMsg::ListUnchanged { req }]
                }
                Ok((dir, mut entries)) => {
                    for e in entries.iter_mut().filter(|e| e.meta.is_ok()) {
                        e.xattrs = read_xattrs(&via_proc(&dir, OsStr::from_bytes(&e.name)));
                    }
                    list_replies(req, entries)
                }
                Err(e) => vec![io_reply(req, path, &e)],
            },
            ServerMsg::List { known, .. } => match list(path, true) {
                Ok((_, entries)) if known == Some(listing_digest(&entries)) => {
                    vec![AgentMsg::ListUnchanged { req }]
                }
                Ok((_, entries)) => list_replies(req, entries),
                Err(e) => vec![io_reply(req, path, &e)],
            },
            ServerMsg::ChunkFile { inline_max, .. } => {
                vec![match self.chunk_file(req, path, inline_max) {
                    Ok(m) => m,
                    Err(e) => io_reply(req, path, &e),
                }]
            }
            ServerMsg::ReadChunks { ranges, .. } => vec![self.read_chunks(req, path, &ranges)],
            ServerMsg::ReadDeltas { ranges, .. } => vec![self.read_deltas(req, path, &ranges)],
            _ => Vec::new(),
        }
    }

    fn chunk_file(&self, req: u64, path: &Path, inline_max: u32) -> io::Result<AgentMsg> {
        let file = std::fs::File::from(open_file(path)?);
        let before = EntryMeta::from_metadata(&file.metadata()?);
        if before.kind != SourceKind::Stored(EntryKind::File) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut chunks = Vec::new();
        let mut inline = None;
        if before.attrs.size <= u64::from(self.params.max()) * 4 {
            let mut data = Vec::with_capacity(before.attrs.size as usize);
            (&file).take(before.attrs.size + 1).read_to_end(&mut data)?;
            chunks
                .extend(xstore_chunker::chunk_slice(&self.params, &data).map(|c| (c.id, c.length)));
            if chunks.len() == 1 && data.len() <= inline_max as usize {
                inline = Some(wire_chunk(&data, self.effort.level()));
            }
        } else {
            let mut chunker = xstore_chunker::StreamChunker::new(self.params, &file);
            while let Some((c, _)) = chunker.next_chunk()? {
                chunks.push((c.id, c.length));
            }
        }
        let after = EntryMeta::from_metadata(&file.metadata()?);
        Ok(AgentMsg::FileChunks {
            req,
            before,
            after,
            chunks,
            inline,
        })
    }

    fn read_chunks(&self, req: u64, path: &Path, ranges: &[(u64, u32)]) -> AgentMsg {
        // One level for the whole reply: the chunks of one answer compress alike.
        let level = self.effort.level();
        let read = self.read_ranges(path, ranges, |_, bytes| wire_chunk(bytes, level));
        match read {
            Ok(chunks) => AgentMsg::ChunkData { req, chunks },
            Err((code, message)) => error_reply(req, code, message),
        }
    }

    /// Each range as a delta program against the base whose sub-chunk hashes the server sent
    /// (`xstore_format::protocol::delta`), compressed like a chunk.
    fn read_deltas(&self, req: u64, path: &Path, ranges: &[DeltaRange]) -> AgentMsg {
        let level = self.effort.level();
        let plain: Vec<(u64, u32)> = ranges.iter().map(|r| (r.offset, r.len)).collect();
        let read = self.read_ranges(path, &plain, |i, bytes| {
            let program = xstore_format::protocol::delta::encode_delta(bytes, &ranges[i].base);
            wire_chunk(&program, level)
        });
        match read {
            Ok(programs) => AgentMsg::Deltas { req, programs },
            Err((code, message)) => error_reply(req, code, message),
        }
    }

    /// Reads each of `ranges` of the file at `path` (bounded by [`MAX_READ_REQUEST`] and the
    /// chunk maximum) and turns it into a reply item with `each(index, bytes)`; on failure,
    /// the error code and message to answer with.
    fn read_ranges(
        &self,
        path: &Path,
        ranges: &[(u64, u32)],
        mut each: impl FnMut(usize, &[u8]) -> WireChunk,
    ) -> Result<Vec<WireChunk>, (ErrorCode, String)> {
        let total: u64 = ranges.iter().map(|(_, l)| u64::from(*l)).sum();
        if total > MAX_READ_REQUEST || ranges.iter().any(|(_, l)| *l > self.params.max()) {
            return Err((
                ErrorCode::BadRequest,
                format!("read of {total} bytes or a range over the chunk maximum"),
            ));
        }
        let file = std::fs::File::from(open_file(path).map_err(|e| io_refusal(path, &e))?);
        let mut items = Vec::with_capacity(ranges.len());
        let mut buf = Vec::new();
        for (i, (offset, len)) in ranges.iter().enumerate() {
            buf.resize(*len as usize, 0);
            if let Err(e) = file.read_exact_at(&mut buf, *offset) {
                return Err((
                    ErrorCode::Io,
                    format!(
                        "{}: reading {len} bytes at {offset}: {e} (file changed?)",
                        path.display()
                    ),
                ));
            }
            items.push(each(i, &buf));
        }
        Ok(items)
    }
}

fn list_replies(req: u64, entries: Vec<WireEntry>) -> Vec<AgentMsg> {
    let mut replies = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0usize;
    for e in entries {
        size += 64
            + e.name.len()
            + e.target.as_ref().map_or(0, Vec::len)
            + e.xattrs
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>();
        batch.push(e);
        if size >= LIST_BATCH_BYTES {
            replies.push(AgentMsg::List {
                req,
                more: true,
                entries: std::mem::take(&mut batch),
            });
            size = 0;
        }
    }
    replies.push(AgentMsg::List {
        req,
        more: false,
        entries: batch,
    });
    replies
}

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `path` (absolute, normalized) without following any symlink in any component.
fn open_nofollow(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(
            rustix::fs::CWD,
            path,
            flags,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            other => return other.map_err(io::Error::from),
        }
    }
    // Kernels before 5.6: walk the components, refusing a symlink at each step.
    let mut dir = rustix::fs::open(
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let parts: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, between)) = parts.split_last() else {
        return Ok(dir);
    };
    for part in between {
        dir = rustix::fs::openat(
            &dir,
            *part,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
    }
    Ok(rustix::fs::openat(&dir, *last, flags, Mode::empty())?)
}

/// Opens a regular file for reading, without following symlinks, not touching its atime
/// when the agent may (it runs as root on clients).
fn open_file(path: &Path) -> io::Result<OwnedFd> {
    match open_nofollow(path, OFlags::RDONLY | OFlags::NOATIME | OFlags::NONBLOCK) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_nofollow(path, OFlags::RDONLY | OFlags::NONBLOCK)
        }
        other => other,
    }
}

// The stat field types differ between targets and rustix backends; the casts are the portable form.
#[allow(clippy::unnecessary_cast)]
fn meta_of(st: &rustix::fs::Stat) -> EntryMeta {
    EntryMeta::from_stat(&StatFields {
        mode: st.st_mode as u32,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        size: st.st_size as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        inode: st.st_ino as u64,
        dev: st.st_dev as u64,
        nlink: st.st_nlink as u64,
        rdev: st.st_rdev as u64,
    })
}

/// `name` in the open directory `dir` as a path for the l*xattr calls: the directory is
/// already open without symlinks, /proc/self/fd/N names exactly it, and the l*xattr calls do
/// not follow `name` itself.
fn via_proc(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd())).join(name)
}

/// The entry `name` of the open directory `dir`: lstat, symlink target, and xattrs when
/// `with_xattrs`.
fn lstat_at(dir: &OwnedFd, name: &OsStr, with_xattrs: bool) -> io::Result<WireEntry> {
    let meta = meta_of(&rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?);
    let target = if meta.kind == SourceKind::Stored(EntryKind::Symlink) {
        Some(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
    } else {
        None
    };
    Ok(WireEntry {
        name: name.as_bytes().to_vec(),
        meta: Ok(meta),
        target,
        xattrs: match with_xattrs {
            true => read_xattrs(&via_proc(dir, name)),
            false => Vec::new(),
        },
    })
}

/// [`lstat_at`] for a directory listing: a failure is reported in the entry.
fn entry_at(dir: &OwnedFd, name: &OsStr, with_xattrs: bool) -> WireEntry {
    lstat_at(dir, name, with_xattrs).unwrap_or_else(|e| WireEntry {
        name: name.as_bytes().to_vec(),
        meta: Err(format!("stat: {e}")),
        target: None,
        xattrs: Vec::new(),
    })
}

fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for name in names {
        if let Ok(Some(value)) = xattr::get(path, &name) {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    out
}

fn stat_entry(path: &Path) -> io::Result<WireEntry> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => {
            let dir = open_nofollow(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
            let st = rustix::fs::fstat(&dir)?;
            return Ok(WireEntry {
                name: Vec::new(),
                meta: Ok(meta_of(&st)),
                target: None,
                xattrs: Vec::new(),
            });
        }
    };
    let dir = open_nofollow(parent, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let mut entry = lstat_at(&dir, name, true)?;
    entry.name.clear();
    Ok(entry)
}

/// The entries of the directory `path` in name order (with their xattrs when `with_xattrs`),
/// and the directory, opened without following a symlink.
fn list(path: &Path, with_xattrs: bool) -> io::Result<(OwnedFd, Vec<WireEntry>)> {
    let dir = open_nofollow(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let mut entries = Vec::new();
    for item in rustix::fs::Dir::read_from(&dir)? {
        let item = item?;
        let name = OsStr::from_bytes(item.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        entries.push(entry_at(&dir, name, with_xattrs));
    }
    // In name order, as trees hold them: the listing digest depends on it.
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((dir, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::{authorized_keys_line, check_ssh_command};

    #[test]
    fn config_parses_comments_and_refuses_relative_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        std::fs::create_dir(&a).expect("mkdir");
        let text = format!(
            "# backup list\n\n  {}  \n{}/inner\n/does/not/exist\n? /may/not/exist\n",
            a.display(),
            a.display()
        );
        let c = AgentConfig::parse(&text, Path::new("backup.conf")).expect("parse");
        assert_eq!(c.roots, vec![std::fs::canonicalize(&a).expect("canon")]);
        assert_eq!(c.missing.len(), 2);
        assert_eq!(c.optional_missing, [PathBuf::from("/may/not/exist")]);
        assert!(c.announced().contains(&Path::new("/does/not/exist")));
        assert!(!c.announced().contains(&Path::new("/may/not/exist")));
        assert!(c.may_stat(Path::new("/does")) && c.may_stat(Path::new("/does/not/exist")));
        assert!(!c.may_stat(Path::new("/may")));
        let e = AgentConfig::parse("etc\n", Path::new("backup.conf")).expect_err("relative");
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(AgentConfig::parse("/\n", Path::new("c")).is_err());
        assert!(AgentConfig::parse("/etc/../root\n", Path::new("c")).is_err());
    }

    #[test]
    fn only_the_agent_command_is_allowed() {
        assert!(check_ssh_command(None).is_ok());
        assert!(check_ssh_command(Some("xstore agent")).is_ok());
        assert!(check_ssh_command(Some("/usr/local/bin/xstore agent")).is_ok());
        assert!(check_ssh_command(Some("xstore-agent")).is_ok());
        assert!(check_ssh_command(Some("/usr/bin/xstore-agent")).is_ok());
        for bad in [
            "xstore-agent --config /tmp/x",
            "xstore-agent agent",
            "xstore",
            "rm -rf /",
            "xstore agent --config /tmp/x",
            "xstore backup",
            "sh -c 'xstore agent'",
            "notxstore agent",
        ] {
            assert!(check_ssh_command(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn waiting_requests_go_before_requests_sent_ahead() {
        let (urgent_tx, urgent) = crossbeam_channel::unbounded();
        let (ahead_tx, ahead) = crossbeam_channel::unbounded();
        let chunk_file = |req| ServerMsg::ChunkFile {
            req,
            path: b"/f".to_vec(),
            inline_max: 0,
        };
        let stat = |req| ServerMsg::Stat {
            req,
            path: b"/f".to_vec(),
        };
        for req in 1..=3 {
            ahead_tx.send(chunk_file(req)).expect("queue");
        }
        urgent_tx.send(stat(10)).expect("queue");
        assert_eq!(next_request(&urgent, &ahead), Some(stat(10)));
        assert_eq!(next_request(&urgent, &ahead), Some(chunk_file(1)));
        urgent_tx.send(stat(11)).expect("queue");
        assert_eq!(next_request(&urgent, &ahead), Some(stat(11)));
        // Closed queues still hand out what they hold, then end.
        drop((urgent_tx, ahead_tx));
        assert_eq!(next_request(&urgent, &ahead), Some(chunk_file(2)));
        assert_eq!(next_request(&urgent, &ahead), Some(chunk_file(3)));
        assert_eq!(next_request(&urgent, &ahead), None);
    }

    #[test]
    fn authorized_keys_line_is_restricted() {
        let line = authorized_keys_line(
            "/usr/local/bin/xstore agent",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI backup@server\n",
            "192.0.2.5",
        )
        .expect("line");
        assert_eq!(
            line,
            "command=\"/usr/local/bin/xstore agent\",from=\"192.0.2.5\",no-pty,no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-user-rc ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI backup@server"
        );
        assert!(authorized_keys_line("x agent", "not a key", "1.2.3.4").is_err());
        assert!(authorized_keys_line("x agent", "ssh-ed25519 AAAA", "1.2.3.4\" ,x").is_err());
    }
}
