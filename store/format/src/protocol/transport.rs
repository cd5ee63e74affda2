//! How frames travel after the hellos: plain, one zstd stream, or zstd segments, and the
//! batching writer both sides use.

use std::io::{self, Read, Write};

use super::frame::write_frame;
use super::{
    CAP_ZSTD_SEGMENTS, CAP_ZSTD_STREAM, SEGMENT_FLAG, SEGMENT_TARGET, WIRE_LEVEL,
    WIRE_WINDOW_LOG_MAX,
};

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
            let Some(rest) = header.get_mut(got..) else {
                break;
            };
            match self.inner.read(rest) {
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
                    let n = 4usize.saturating_sub(at).min(buf.len());
                    let (Some(to), Some(from)) = (buf.get_mut(..n), header.get(at..at + n)) else {
                        return Err(io::ErrorKind::InvalidData.into());
                    };
                    to.copy_from_slice(from);
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
                    let n = self.inner.read(buf.get_mut(..want).unwrap_or_default())?;
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
                        self.input.get(self.pos..).unwrap_or_default(),
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
