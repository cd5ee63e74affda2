//! The agent protocol (FORMAT.md §Agent protocol): length-framed binary messages between the
//! backup server and `xstore agent` on a client, over the stdin/stdout of an SSH session.
//!
//! Both directions are decoded as hostile input: every length is bounded by the frame, every
//! enum value checked, and nothing here panics. The server trusts no byte the agent sends (a
//! compromised client must not be able to harm the repository) and the agent trusts no request
//! (a stolen backup key must not be able to read outside the allow-list or write anything).

use std::io::{self, Read, Write};

use crate::bytes::{put_bytes, put_varint, Reader};
use crate::error::DecodeError;
use crate::source::{EntryMeta, SourceKind};
use crate::ChunkId;

/// Protocol versions this build speaks.
pub const PROTOCOL_VERSIONS: &[u64] = &[1];
/// Capability: after the two hellos, each direction is one zstd stream, flushed after every
/// batch of frames (listings and requests shrink ~5×; chunk data passes through zstd again).
pub const CAP_ZSTD_STREAM: &[u8] = b"zstd-stream";
/// Capability, preferred over [`CAP_ZSTD_STREAM`]: after the two hellos each direction is a
/// sequence of plain frames (bodies that are mostly compressed chunk bytes already) and
/// flushed pieces of one zstd stream (everything else), so chunk data is not compressed twice.
pub const CAP_ZSTD_SEGMENTS: &[u8] = b"zstd-segments";
/// zstd level of the session streams (cheap: what they carry is small and compresses well).
pub const WIRE_LEVEL: i32 = 1;
/// Largest zstd window a session stream may declare (16 MiB): a hostile peer must not make
/// the decoder allocate zstd's default maximum.
const WIRE_WINDOW_LOG_MAX: u32 = 24;
/// Bit 31 of a unit header under [`CAP_ZSTD_SEGMENTS`]: a piece of the zstd stream follows
/// (the low 31 bits are its length); clear, the header is a plain frame's length.
const SEGMENT_FLAG: u32 = 1 << 31;
/// A piece of the zstd stream is closed once about this many compressed bytes wait in it.
const SEGMENT_TARGET: usize = 1024 * 1024;
/// Magic at the start of the agent's hello.
pub const AGENT_MAGIC: &[u8; 8] = b"XSTAGENT";
/// Magic at the start of the server's hello.
pub const SERVER_MAGIC: &[u8; 8] = b"XSTSERVR";
/// Largest frame body either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Longest path or name accepted.
pub const MAX_PATH: u64 = 4096;
/// Largest extended-attribute value accepted.
pub const MAX_XATTR_VALUE: u64 = 64 * 1024;
/// Most extended attributes of one entry.
pub const MAX_XATTRS: u64 = 4096;
/// A listing is sent in frames of about this many bytes.
pub const LIST_BATCH_BYTES: usize = 1024 * 1024;

/// Reads one frame: a little-endian u32 length, then that many bytes (kind byte and body).
/// `Ok(None)` on a clean end of stream before the length.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} is outside 1..={MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Writes one frame (length, then `body`, which starts with the kind byte).
pub fn write_frame<W: Write + ?Sized>(w: &mut W, body: &[u8]) -> io::Result<()> {
    if body.is_empty() || body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes is outside 1..={MAX_FRAME}", body.len()),
        ));
    }
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(body)
}

/// Frame bytes [`write_batched`] gathers before it flushes while more frames are coming.
pub const BATCH_BYTES: usize = 128 * 1024;
/// Longest [`write_batched`] holds back a small batch waiting for frames that are coming.
pub const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Writes the frames arriving on `frames` until every sender is gone. It flushes when no
/// further frame is waiting, unless every frame of the batch may be held ([`Outgoing::hold`])
/// and `more_coming()` says frames are on their way (the agent: requests are being answered);
/// then it gathers up to [`BATCH_BYTES`] or waits at most [`BATCH_WAIT`]. Under load many
/// frames share one write and one SSH packet (each costs a wake-up and a MAC on both ends);
/// a listing, on the peer's critical path, leaves at once.
pub fn write_batched(
    sink: &mut FrameSink,
    frames: &crossbeam_channel::Receiver<Outgoing>,
    more_coming: &dyn Fn() -> bool,
) -> io::Result<()> {
    while let Ok(frame) = frames.recv() {
        sink.frame(&frame.body, frame.compress)?;
        let mut batched = frame.body.len();
        let mut hold = frame.hold;
        let deadline = std::time::Instant::now() + BATCH_WAIT;
        while batched < BATCH_BYTES {
            let next = match frames.try_recv() {
                Ok(f) => f,
                Err(_) if hold && more_coming() => match frames.recv_deadline(deadline) {
                    Ok(f) => f,
                    Err(_) => break,
                },
                Err(_) => break,
            };
            sink.frame(&next.body, next.compress)?;
            batched += next.body.len();
            hold &= next.hold;
        }
        sink.flush()?;
    }
    sink.flush()
}

/// A frame body on its way to the writer thread.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame body (kind byte first).
    pub body: Vec<u8>,
    /// Whether the session's zstd stream should carry it (false for bodies that are mostly
    /// compressed chunk bytes: compressing them again costs CPU and saves nothing).
    pub compress: bool,
    /// Whether the writer may hold it back briefly to send it with the frames that follow
    /// (chunk replies, of which the peer awaits many; not listings, on its critical path).
    pub hold: bool,
}

/// How frames travel after the hellos: the capability both sides turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain frames.
    Plain,
    /// One zstd stream per direction ([`CAP_ZSTD_STREAM`]).
    Stream,
    /// Plain frames and pieces of one zstd stream per direction ([`CAP_ZSTD_SEGMENTS`]).
    Segments,
}

impl Transport {
    /// What a side offers in its hello, best first.
    pub fn offered() -> Vec<Vec<u8>> {
        vec![CAP_ZSTD_SEGMENTS.to_vec(), CAP_ZSTD_STREAM.to_vec()]
    }

    /// The best transport named in `capabilities` (the agent's offer, or the server's choice).
    pub fn best_of(capabilities: &[Vec<u8>]) -> Transport {
        if capabilities.iter().any(|c| c == CAP_ZSTD_SEGMENTS) {
            Transport::Segments
        } else if capabilities.iter().any(|c| c == CAP_ZSTD_STREAM) {
            Transport::Stream
        } else {
            Transport::Plain
        }
    }

    /// The capabilities that turn this transport on (the server's hello).
    pub fn capabilities(self) -> Vec<Vec<u8>> {
        match self {
            Transport::Plain => Vec::new(),
            Transport::Stream => vec![CAP_ZSTD_STREAM.to_vec()],
            Transport::Segments => vec![CAP_ZSTD_SEGMENTS.to_vec()],
        }
    }

    /// The reading side of this transport over `inner`.
    pub fn reader<'a>(self, inner: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Transport::Plain => Box::new(inner),
            Transport::Stream => {
                let mut d = zstd::stream::read::Decoder::new(inner)?;
                d.window_log_max(WIRE_WINDOW_LOG_MAX)?;
                Box::new(d)
            }
            Transport::Segments => Box::new(SegmentReader::new(inner)?),
        })
    }

    /// The writing side of this transport over `inner`.
    pub fn sink(self, inner: Box<dyn Write + Send>) -> io::Result<FrameSink> {
        Ok(match self {
            Transport::Plain => FrameSink::Plain(inner),
            Transport::Stream => FrameSink::Stream(
                zstd::stream::write::Encoder::new(inner, WIRE_LEVEL)?.auto_finish(),
            ),
            Transport::Segments => FrameSink::Segments(SegmentWriter::new(inner)?),
        })
    }
}

/// The writing side of a [`Transport`].
pub enum FrameSink {
    /// Plain frames.
    Plain(Box<dyn Write + Send>),
    /// One zstd stream, finished when dropped.
    Stream(zstd::stream::write::AutoFinishEncoder<'static, Box<dyn Write + Send>>),
    /// Plain frames and pieces of one zstd stream.
    Segments(SegmentWriter<Box<dyn Write + Send>>),
}

impl FrameSink {
    /// Writes one frame; `compress` says whether the zstd stream should carry it.
    pub fn frame(&mut self, body: &[u8], compress: bool) -> io::Result<()> {
        match self {
            FrameSink::Plain(w) => write_frame(w, body),
            FrameSink::Stream(w) => write_frame(w, body),
            FrameSink::Segments(w) => w.frame(body, compress),
        }
    }

    /// Makes everything written so far readable by the peer.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            FrameSink::Plain(w) => w.flush(),
            FrameSink::Stream(w) => w.flush(),
            FrameSink::Segments(w) => w.flush(),
        }
    }
}

/// The writing side of [`CAP_ZSTD_SEGMENTS`]: frames to compress go into one zstd stream,
/// whose bytes leave as units `u32 LE (len | 1 << 31)` + `len` bytes, each ending at a zstd
/// flush (so the peer can decode every frame in it); other frames leave as plain frames
/// between those units.
pub struct SegmentWriter<W: Write> {
    out: W,
    stream: zstd::stream::write::Encoder<'static, Vec<u8>>,
    /// Whether frames went into the stream since its last flush.
    open: bool,
}

impl<W: Write> SegmentWriter<W> {
    /// A writer of units onto `out`.
    pub fn new(out: W) -> io::Result<Self> {
        Ok(SegmentWriter {
            out,
            stream: zstd::stream::write::Encoder::new(Vec::new(), WIRE_LEVEL)?,
            open: false,
        })
    }

    /// Writes one frame, through the zstd stream when `compress`.
    pub fn frame(&mut self, body: &[u8], compress: bool) -> io::Result<()> {
        if compress {
            write_frame(&mut self.stream, body)?;
            self.open = true;
            if self.stream.get_ref().len() >= SEGMENT_TARGET {
                self.close_piece()?;
            }
            Ok(())
        } else {
            // A plain frame may only stand between whole frames of the stream.
            self.close_piece()?;
            write_frame(&mut self.out, body)
        }
    }

    /// Ends the current piece of the zstd stream (a zstd flush) and writes it as a unit.
    fn close_piece(&mut self) -> io::Result<()> {
        if !self.open {
            return Ok(());
        }
        self.stream.flush()?;
        let piece = std::mem::take(self.stream.get_mut());
        let len = u32::try_from(piece.len())
            .ok()
            .filter(|l| l & SEGMENT_FLAG == 0 && *l > 0)
            .ok_or_else(|| io::Error::other("a zstd piece outside 1..2^31 bytes"))?;
        self.out.write_all(&(len | SEGMENT_FLAG).to_le_bytes())?;
        self.out.write_all(&piece)?;
        self.open = false;
        Ok(())
    }

    /// Ends the current piece and flushes `out`.
    pub fn flush(&mut self) -> io::Result<()> {
        self.close_piece()?;
        self.out.flush()
    }

    /// The underlying writer (call [`SegmentWriter::flush`] first).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Which unit a [`SegmentReader`] is in.
#[derive(Debug, Clone, Copy)]
enum Unit {
    /// Between units.
    Header,
    /// Handing out a plain frame's length (the header itself), `at` bytes given so far.
    FrameLength { at: usize, header: [u8; 4] },
    /// A plain frame's body, bytes left.
    FrameBody(u64),
    /// A piece of the zstd stream, bytes not yet read from the connection.
    Piece(u64),
}

/// The reading side of [`CAP_ZSTD_SEGMENTS`]: yields the byte stream of frames (plain units
/// passed through, zstd pieces decoded). Hostile input cannot make it allocate more than its
/// fixed buffers: output goes only into the caller's buffer, and the zstd window is bounded.
pub struct SegmentReader<R: Read> {
    inner: R,
    decoder: zstd::stream::raw::Decoder<'static>,
    unit: Unit,
    /// Compressed bytes read and not yet decoded: `input[pos..]`.
    input: Vec<u8>,
    pos: usize,
}

impl<R: Read> SegmentReader<R> {
    /// A reader of units from `inner`.
    pub fn new(inner: R) -> io::Result<Self> {
        let mut decoder = zstd::stream::raw::Decoder::new()?;
        decoder.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
            WIRE_WINDOW_LOG_MAX,
        ))?;
        Ok(SegmentReader {
            inner,
            decoder,
            unit: Unit::Header,
            input: Vec::new(),
            pos: 0,
        })
    }

    /// Reads the next unit header; false at a clean end of the stream.
    fn next_unit(&mut self) -> io::Result<bool> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let v = u32::from_le_bytes(header);
        self.unit = if v & SEGMENT_FLAG == 0 {
            Unit::FrameLength { at: 0, header }
        } else if v == SEGMENT_FLAG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an empty zstd piece",
            ));
        } else {
            Unit::Piece(u64::from(v & !SEGMENT_FLAG))
        };
        Ok(true)
    }
}

impl<R: Read> Read for SegmentReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.unit {
                Unit::Header => {
                    if !self.next_unit()? {
                        return Ok(0);
                    }
                }
                Unit::FrameLength { at, header } => {
                    let n = (4 - at).min(buf.len());
                    buf[..n].copy_from_slice(&header[at..at + n]);
                    self.unit = if at + n == 4 {
                        Unit::FrameBody(u64::from(u32::from_le_bytes(header)))
                    } else {
                        Unit::FrameLength { at: at + n, header }
                    };
                    return Ok(n);
                }
                Unit::FrameBody(0) => self.unit = Unit::Header,
                Unit::FrameBody(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.unit = Unit::FrameBody(left - n as u64);
                    return Ok(n);
                }
                Unit::Piece(left) => {
                    if self.pos == self.input.len() && left > 0 {
                        let want = usize::try_from(left).unwrap_or(usize::MAX).min(128 * 1024);
                        self.input.resize(want, 0);
                        let n = self.inner.read(&mut self.input)?;
                        if n == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        self.input.truncate(n);
                        self.pos = 0;
                        self.unit = Unit::Piece(left - n as u64);
                    }
                    let drained = matches!(self.unit, Unit::Piece(0));
                    let status = zstd::stream::raw::Operation::run_on_buffers(
                        &mut self.decoder,
                        &self.input[self.pos..],
                        buf,
                    )?;
                    self.pos += status.bytes_read;
                    // With all of the piece's input taken and room left in `buf`, zstd has
                    // handed out everything it could: the piece is done.
                    let done =
                        drained && self.pos == self.input.len() && status.bytes_written < buf.len();
                    if done {
                        self.unit = Unit::Header;
                    }
                    if status.bytes_written > 0 {
                        return Ok(status.bytes_written);
                    }
                }
            }
        }
    }
}

/// Why the agent could not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

/// Messages from the agent to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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

const K_SERVER_HELLO: u8 = 0x81;
const K_SERVER_STAT: u8 = 0x82;
const K_SERVER_LIST: u8 = 0x83;
const K_SERVER_CHUNK_FILE: u8 = 0x84;
const K_SERVER_READ_CHUNKS: u8 = 0x85;
const K_SERVER_BYE: u8 = 0x86;

fn invalid(what: &'static str, offset: usize, reason: String) -> DecodeError {
    DecodeError::Invalid {
        what,
        offset,
        reason,
    }
}

fn put_meta(out: &mut Vec<u8>, m: &EntryMeta) {
    out.push(match m.kind {
        SourceKind::File => 1,
        SourceKind::Dir => 2,
        SourceKind::Symlink => 3,
        SourceKind::CharDevice => 4,
        SourceKind::BlockDevice => 5,
        SourceKind::Fifo => 6,
        SourceKind::Socket => 7,
    });
    for v in [
        u64::from(m.mode),
        u64::from(m.uid),
        u64::from(m.gid),
        m.size,
    ] {
        put_varint(out, v);
    }
    out.extend_from_slice(&m.mtime_ns.to_le_bytes());
    out.extend_from_slice(&m.ctime_ns.to_le_bytes());
    for v in [m.inode, m.dev, m.nlink, m.rdev] {
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
        1 => SourceKind::File,
        2 => SourceKind::Dir,
        3 => SourceKind::Symlink,
        4 => SourceKind::CharDevice,
        5 => SourceKind::BlockDevice,
        6 => SourceKind::Fifo,
        7 => SourceKind::Socket,
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

fn put_entry(out: &mut Vec<u8>, e: &WireEntry) {
    put_entry_parts(
        out,
        &e.name,
        e.meta.as_ref().map_err(String::as_str),
        e.target.as_deref(),
        &e.xattrs,
    );
}

/// The `entry` encoding from its parts (shared by [`put_entry`] and [`tree_listing_digest`]).
fn put_entry_parts(
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

/// BLAKE3 over the entries' encodings, in name order (the caller sorts): two listings with
/// the same digest carry the same names, metadata, symlink targets and xattrs.
pub fn listing_digest<'a>(sorted: impl IntoIterator<Item = &'a WireEntry>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    for e in sorted {
        buf.clear();
        put_entry(&mut buf, e);
        hasher.update(&buf);
    }
    *hasher.finalize().as_bytes()
}

/// [`listing_digest`] of the listing an agent would send for a directory recorded as `tree`
/// (each entry's recorded metadata, symlink target and xattrs), computed from the tree's
/// entries without building that listing.
pub fn tree_listing_digest(tree: &crate::tree::Tree) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    for e in &tree.entries {
        buf.clear();
        let target = match &e.content {
            crate::tree::Content::Target(t) => Some(t.as_slice()),
            _ => None,
        };
        put_entry_parts(&mut buf, &e.name, Ok(&e.meta()), target, &e.xattrs);
        hasher.update(&buf);
    }
    *hasher.finalize().as_bytes()
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
            | AgentMsg::Error { req, .. } => Some(*req),
            AgentMsg::Hello { .. } | AgentMsg::Fatal { .. } => None,
        }
    }

    /// The frame for the writer thread: chunk bytes that zstd compressed already stay out of
    /// the session's zstd stream.
    pub fn outgoing(&self) -> Outgoing {
        let compressed_chunks = match self {
            AgentMsg::ChunkData { chunks, .. } => chunks.iter().any(|c| c.zstd),
            AgentMsg::FileChunks { inline, .. } => inline.as_ref().is_some_and(|c| c.zstd),
            _ => false,
        };
        Outgoing {
            body: self.encode(),
            compress: !compressed_chunks,
            hold: matches!(
                self,
                AgentMsg::FileChunks { .. } | AgentMsg::ChunkData { .. }
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
                out.push(K_AGENT_CHUNK_DATA);
                put_varint(&mut out, *req);
                put_varint(&mut out, chunks.len() as u64);
                for c in chunks {
                    put_chunk(&mut out, c);
                }
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
                let req = r.varint("request id")?;
                let n = r.length("chunk count", u64::MAX, 3)?;
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    chunks.push(get_chunk(&mut r)?);
                }
                AgentMsg::ChunkData { req, chunks }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: SourceKind) -> EntryMeta {
        EntryMeta {
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            size: 12345,
            mtime_ns: -5,
            ctime_ns: 1_700_000_000_000_000_000,
            inode: 77,
            dev: 2049,
            nlink: 1,
            rdev: 0,
        }
    }

    fn samples() -> (Vec<AgentMsg>, Vec<ServerMsg>) {
        let entry = WireEntry {
            name: b"a".to_vec(),
            meta: Ok(meta(SourceKind::Symlink)),
            target: Some(b"../b".to_vec()),
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        };
        let failed = WireEntry {
            name: b"gone".to_vec(),
            meta: Err("vanished".into()),
            target: None,
            xattrs: Vec::new(),
        };
        let agent = vec![
            AgentMsg::Hello {
                versions: vec![1, 2],
                capabilities: vec![b"x".to_vec()],
                roots: vec![b"/etc".to_vec()],
                software: b"xstore 0.1.0".to_vec(),
            },
            AgentMsg::Stat {
                req: 3,
                entry: entry.clone(),
            },
            AgentMsg::List {
                req: 300,
                more: true,
                entries: vec![entry, failed],
            },
            AgentMsg::FileChunks {
                req: 4,
                before: meta(SourceKind::File),
                after: meta(SourceKind::File),
                chunks: vec![(ChunkId::of(b"x"), 1), (ChunkId::of(b"y"), 70000)],
                inline: Some(WireChunk {
                    raw_len: 1,
                    zstd: false,
                    bytes: b"x".to_vec(),
                }),
            },
            AgentMsg::ChunkData {
                req: 5,
                chunks: vec![WireChunk {
                    raw_len: 3,
                    zstd: false,
                    bytes: b"abc".to_vec(),
                }],
            },
            AgentMsg::Error {
                req: 6,
                code: ErrorCode::Refused,
                message: b"outside".to_vec(),
            },
            AgentMsg::Fatal {
                message: b"bye".to_vec(),
            },
            AgentMsg::ListUnchanged { req: 9 },
        ];
        let server = vec![
            ServerMsg::Hello {
                version: 1,
                min: 256,
                avg: 1024,
                max: 4096,
                level: 3,
                capabilities: vec![CAP_ZSTD_STREAM.to_vec()],
            },
            ServerMsg::Stat {
                req: 1,
                path: b"/etc".to_vec(),
            },
            ServerMsg::List {
                req: 2,
                path: b"/etc".to_vec(),
                known: Some([7; 32]),
            },
            ServerMsg::List {
                req: 2,
                path: b"/etc".to_vec(),
                known: None,
            },
            ServerMsg::ChunkFile {
                req: 3,
                path: b"/etc/passwd".to_vec(),
                inline_max: 65536,
            },
            ServerMsg::ReadChunks {
                req: 4,
                path: b"/etc/passwd".to_vec(),
                ranges: vec![(0, 10), (1 << 40, 4)],
            },
            ServerMsg::Bye,
        ];
        (agent, server)
    }

    #[test]
    fn messages_round_trip() {
        let (agent, server) = samples();
        for m in agent {
            assert_eq!(AgentMsg::decode(&m.encode()), Ok(m));
        }
        for m in server {
            assert_eq!(ServerMsg::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn truncations_and_bit_flips_never_panic() {
        let (agent, server) = samples();
        let bodies: Vec<Vec<u8>> = agent
            .iter()
            .map(AgentMsg::encode)
            .chain(server.iter().map(ServerMsg::encode))
            .collect();
        for body in bodies {
            for cut in 0..body.len() {
                // No strict prefix of a message is a message of either direction.
                assert!(AgentMsg::decode(&body[..cut]).is_err(), "cut {cut}");
                assert!(ServerMsg::decode(&body[..cut]).is_err(), "cut {cut}");
            }
            for i in 0..body.len() {
                for bit in 0..8 {
                    let mut b = body.clone();
                    b[i] ^= 1 << bit;
                    let _ = AgentMsg::decode(&b);
                    let _ = ServerMsg::decode(&b);
                }
            }
            let mut extra = body.clone();
            extra.push(0);
            assert!(AgentMsg::decode(&extra).is_err());
            assert!(ServerMsg::decode(&extra).is_err());
        }
    }

    #[test]
    fn entry_errors_must_be_utf8() {
        // Found by the agent_stream fuzz target: a lossy decode re-encoded differently.
        let mut body = AgentMsg::Stat {
            req: 1,
            entry: WireEntry {
                name: b"x".to_vec(),
                meta: Err("ab".into()),
                target: None,
                xattrs: Vec::new(),
            },
        }
        .encode();
        let at = body.iter().rposition(|b| *b == b'a').expect("message byte");
        body[at] = 0xff;
        assert!(matches!(
            AgentMsg::decode(&body),
            Err(DecodeError::Invalid {
                what: "entry error",
                ..
            })
        ));
    }

    /// Hands out at most `n` bytes per read, to reach every partial state of a reader.
    struct Trickle<R>(R, usize);
    impl<R: Read> Read for Trickle<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    /// Frames of every kind a session sends: small and large, compressible and not.
    fn mixed_frames() -> Vec<(Vec<u8>, bool)> {
        let mut frames = Vec::new();
        for i in 0..60u32 {
            let len = [1usize, 7, 300, 5000, 70_000][i as usize % 5];
            let body: Vec<u8> = (0..len).map(|j| (j as u32 * (i + 1) / 3) as u8).collect();
            frames.push((body, i % 3 != 0));
        }
        // Larger than a piece: the stream is cut in the middle of it.
        frames.push((vec![b'x'; 3 * SEGMENT_TARGET + 11], true));
        frames.push((b"last".to_vec(), false));
        frames
    }

    fn read_all(r: &mut impl Read) -> (Vec<Vec<u8>>, io::Result<()>) {
        let mut got = Vec::new();
        loop {
            match read_frame(r) {
                Ok(Some(b)) => got.push(b),
                Ok(None) => return (got, Ok(())),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    #[test]
    fn every_transport_carries_frames_exactly() {
        let frames = mixed_frames();
        let bodies: Vec<Vec<u8>> = frames.iter().map(|(b, _)| b.clone()).collect();
        for transport in [Transport::Plain, Transport::Stream, Transport::Segments] {
            let (tx, rx) = crossbeam_channel::unbounded();
            for (body, compress) in &frames {
                tx.send(Outgoing {
                    body: body.clone(),
                    compress: *compress,
                    hold: false,
                })
                .expect("send");
            }
            drop(tx);
            let wire = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
            impl Write for Shared {
                fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                    self.0.lock().expect("lock").extend_from_slice(b);
                    Ok(b.len())
                }
                fn flush(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            let mut sink = transport
                .sink(Box::new(Shared(std::sync::Arc::clone(&wire))))
                .expect("sink");
            write_batched(&mut sink, &rx, &|| false).expect("write");
            drop(sink);
            let wire = wire.lock().expect("lock").clone();
            for (inner, outer) in [(usize::MAX, usize::MAX), (1, usize::MAX), (3, 2)] {
                let reader = transport.reader(Trickle(&wire[..], inner)).expect("reader");
                let (got, end) = read_all(&mut Trickle(reader, outer));
                end.expect("clean end");
                assert!(got == bodies, "{transport:?} with reads of {inner}/{outer}");
            }
        }
    }

    #[test]
    fn segments_leave_compressed_chunks_out_of_the_stream() {
        let chunk = AgentMsg::ChunkData {
            req: 1,
            chunks: vec![WireChunk {
                raw_len: 100_000,
                zstd: true,
                bytes: (0..40_000u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect(),
            }],
        };
        let out = chunk.outgoing();
        assert!(!out.compress);
        let mut w = SegmentWriter::new(Vec::new()).expect("writer");
        w.frame(&out.body, out.compress).expect("frame");
        w.flush().expect("flush");
        let wire = w.into_inner();
        // A plain frame: exactly its length and body on the wire.
        assert_eq!(wire.len(), out.body.len() + 4);
        assert_eq!(&wire[4..], &out.body[..]);
        let listing = AgentMsg::ListUnchanged { req: 2 }.outgoing();
        assert!(listing.compress);
    }

    #[test]
    fn segment_reader_refuses_hostile_units() {
        let mut w = SegmentWriter::new(Vec::new()).expect("writer");
        for (body, compress) in mixed_frames().into_iter().take(20) {
            w.frame(&body, compress).expect("frame");
        }
        w.flush().expect("flush");
        let wire = w.into_inner();
        let all = read_all(&mut SegmentReader::new(&wire[..]).expect("reader")).0;
        // Every cut: a prefix of the frames, then a clean end or an error; never a panic.
        for cut in 0..wire.len() {
            let (got, _) = read_all(&mut SegmentReader::new(&wire[..cut]).expect("reader"));
            assert!(
                got.len() <= all.len() && got[..] == all[..got.len()],
                "cut {cut}"
            );
        }
        // An empty piece.
        let empty = SEGMENT_FLAG.to_le_bytes();
        assert!(
            read_all(&mut SegmentReader::new(&empty[..]).expect("reader"))
                .1
                .is_err()
        );
        // A piece that is not zstd.
        let mut junk = (SEGMENT_FLAG | 8).to_le_bytes().to_vec();
        junk.extend_from_slice(b"notzstd!");
        assert!(
            read_all(&mut SegmentReader::new(&junk[..]).expect("reader"))
                .1
                .is_err()
        );
        // A zstd stream that declares a 1 GiB window (the decoder would allocate it).
        let mut big_window = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
        big_window
            .set_parameter(zstd::stream::raw::CParameter::WindowLog(30))
            .expect("window");
        big_window.include_contentsize(false).expect("no size");
        write_frame(&mut big_window, b"\x86").expect("frame");
        let z = big_window.finish().expect("finish");
        let mut bomb = (SEGMENT_FLAG | z.len() as u32).to_le_bytes().to_vec();
        bomb.extend_from_slice(&z);
        let (got, end) = read_all(&mut SegmentReader::new(&bomb[..]).expect("reader"));
        let e = end.expect_err("a 1 GiB window was accepted");
        assert!(got.is_empty() && e.to_string().contains("memory"), "{e}");
    }

    #[test]
    fn the_best_offered_transport_wins() {
        assert_eq!(
            Transport::best_of(&Transport::offered()),
            Transport::Segments
        );
        assert_eq!(
            Transport::best_of(&[b"other".to_vec(), CAP_ZSTD_STREAM.to_vec()]),
            Transport::Stream
        );
        assert_eq!(Transport::best_of(&[b"other".to_vec()]), Transport::Plain);
        for t in [Transport::Plain, Transport::Stream, Transport::Segments] {
            assert_eq!(Transport::best_of(&t.capabilities()), t);
        }
    }

    #[test]
    fn frames_refuse_hostile_lengths() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(read_frame(&mut &huge[..]).is_err());
        assert!(read_frame(&mut &[0u8, 0, 0, 0][..]).is_err());
        assert!(read_frame(&mut &[5u8, 0][..]).is_err());
        assert!(matches!(read_frame(&mut &[][..]), Ok(None)));
        let mut buf = Vec::new();
        write_frame(&mut buf, b"\x86").expect("write");
        assert_eq!(
            read_frame(&mut &buf[..]).expect("read"),
            Some(b"\x86".to_vec())
        );
    }
}
