//! Download bodies that stream in bounded memory: a blocking producer (a file read piece
//! by piece through the view, or an archive the dump code writes) hands pieces of at most
//! [`PIECE_BYTES`] to the response through a channel of [`PIECES_IN_FLIGHT`], so a download
//! holds a few hundred KiB whatever its size, and a slow client slows its producer instead
//! of filling memory. A client that goes away ends its producer at the next piece; a
//! producer that fails mid-way ends the body with an error, so the connection is cut and no
//! client takes a truncated file or archive for a whole one.

use std::io::Write;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes handed to the response at once.
pub const PIECE_BYTES: usize = 256 << 10;
/// Pieces waiting for the client at most, per download.
pub const PIECES_IN_FLIGHT: usize = 2;

/// What a download's producer sends: a piece, or the error that ends the body.
pub type Piece = Result<Bytes, std::io::Error>;

/// A channel for one download: the producer's end and the body made of the other.
pub fn channel() -> (mpsc::Sender<Piece>, axum::body::Body) {
    let (tx, rx) = mpsc::channel::<Piece>(PIECES_IN_FLIGHT);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    (tx, axum::body::Body::from_stream(stream))
}

/// A `Write` for blocking producers (the dump code, gzip) that sends full pieces into a
/// download's channel and counts what it sent. Writing fails with `BrokenPipe` once the
/// client has gone.
pub struct PieceWriter {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
    sent: u64,
}

impl PieceWriter {
    /// A writer into `tx`.
    pub fn new(tx: mpsc::Sender<Piece>) -> PieceWriter {
        PieceWriter {
            tx,
            buf: Vec::with_capacity(PIECE_BYTES),
            sent: 0,
        }
    }

    /// Bytes handed to the response so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(PIECE_BYTES),
        ));
        let len = piece.len() as u64;
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        self.sent += len;
        Ok(())
    }
}

impl Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = PIECE_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole file (no range, one this server ignores: several ranges, other units,
    /// or a malformed header, as RFC 9110 lets a server do).
    Full,
    /// Bytes `start..start + len` (206).
    Part {
        /// First byte.
        start: u64,
        /// How many.
        len: u64,
    },
    /// Nothing of the file (416, `Content-Range: bytes */size`).
    Unsatisfiable,
}

/// Reads a `Range` header (`bytes=0-99`, `bytes=100-`, `bytes=-100`).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if size == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Part {
                start: size - n.min(size),
                len: n.min(size),
            },
        },
        (start, end) => {
            let Some(start) = number(start) else {
                return RangeAnswer::Full;
            };
            let end = match end {
                "" => u64::MAX,
                e => match number(e) {
                    Some(e) if e >= start => e,
                    _ => return RangeAnswer::Full,
                },
            };
            if start >= size {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Part {
                start,
                len: end.min(size - 1) - start + 1,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_rfc_9110_says() {
        let part = |start, len| RangeAnswer::Part { start, len };
        assert_eq!(parse_range(None, 10), RangeAnswer::Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), part(0, 4));
        assert_eq!(parse_range(Some("bytes=4-"), 10), part(4, 6));
        assert_eq!(parse_range(Some("bytes=4-99"), 10), part(4, 6));
        assert_eq!(parse_range(Some("bytes=-3"), 10), part(7, 3));
        assert_eq!(parse_range(Some("bytes=-30"), 10), part(0, 10));
        assert_eq!(
            parse_range(Some("bytes=10-"), 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=-1"), 0), RangeAnswer::Unsatisfiable);
        for ignored in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=5-2",
            "bytes=a-",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(
                parse_range(Some(ignored), 10),
                RangeAnswer::Full,
                "{ignored}"
            );
        }
    }

    #[test]
    fn pieces_are_bounded_and_a_gone_client_stops_the_producer() {
        let (tx, body) = channel();
        let producer = std::thread::spawn(move || {
            let mut w = PieceWriter::new(tx);
            let mut result = Ok(());
            for _ in 0..64 {
                result = w.write_all(&[7u8; 100_000]);
                if result.is_err() {
                    break;
                }
            }
            (result.map_err(|e| e.kind()), w.sent())
        });
        // The client reads nothing and goes away: the producer ends, having sent no more
        // than the channel holds.
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(body);
        let (result, sent) = producer.join().unwrap();
        assert_eq!(result, Err(std::io::ErrorKind::BrokenPipe));
        assert!(sent <= (PIECES_IN_FLIGHT * PIECE_BYTES) as u64, "{sent}");
    }
}
