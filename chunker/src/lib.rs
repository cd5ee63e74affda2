//! Content-defined chunking for xstore: FastCDC (the 2020 algorithm, normalization level 1,
//! default gear table) through the exactly pinned `fastcdc` crate, and BLAKE3 chunk ids.
//!
//! This crate does no I/O of its own and reads no clock. [`chunk_slice`] works on a byte slice
//! (a memory map of a file, typically); [`StreamChunker`] works on any [`std::io::Read`] with one
//! reusable buffer of twice the maximum chunk size, and yields the same chunks as the slice API.
//!
//! Chunk boundaries are part of the repository format: the same bytes and the same
//! [`ChunkerParams`] must always give the same cut points. The golden tests in this crate guard
//! that; a change that breaks them needs a new repository format version.
//!
//! ```
//! use xstore_chunker::{chunk_slice, ChunkerParams};
//! let params = ChunkerParams::new(16 * 1024, 64 * 1024, 256 * 1024).unwrap();
//! let data = vec![7u8; 1_000_000];
//! let chunks: Vec<_> = chunk_slice(&params, &data).collect();
//! assert_eq!(chunks.iter().map(|c| c.length as usize).sum::<usize>(), data.len());
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use fastcdc::v2020;

/// The algorithm name recorded in a repository's `config`.
pub const ALGORITHM: &str = "fastcdc-v2020-level1";

/// A BLAKE3 hash of a blob's uncompressed bytes: the blob's identity in a repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`: BLAKE3 of the bytes.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(ChunkId)
    }

    /// The first `n` hex digits (for short display), `n` at most 64.
    pub fn short(&self, n: usize) -> String {
        let mut s = self.to_string();
        s.truncate(n.min(64));
        s
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short(16))
    }
}

/// Why a string is not a chunk id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseIdError {
    /// Not exactly 64 characters.
    Length(usize),
    /// A character that is not a lowercase or uppercase hex digit.
    NotHex,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseIdError::Length(n) => write!(f, "expected 64 hex digits, got {n} characters"),
            ParseIdError::NotHex => write!(f, "not a hex digit in id"),
        }
    }
}

impl std::error::Error for ParseIdError {}

/// Decodes one hex digit.
pub fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for ChunkId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(ParseIdError::Length(s.chars().count()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(ParseIdError::NotHex)?;
            let lo = hex_value(pair[1]).ok_or(ParseIdError::NotHex)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(ChunkId(out))
    }
}

/// Why chunker parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamsError {
    /// A size outside what FastCDC v2020 supports.
    OutOfRange {
        /// "min", "avg" or "max".
        which: &'static str,
        /// The value given.
        value: u32,
        /// Smallest allowed.
        low: u32,
        /// Largest allowed.
        high: u32,
    },
    /// Sizes must be even (FastCDC's requirement).
    Odd(&'static str),
    /// min < avg < max does not hold.
    Order {
        /// min given.
        min: u32,
        /// avg given.
        avg: u32,
        /// max given.
        max: u32,
    },
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamsError::OutOfRange {
                which,
                value,
                low,
                high,
            } => write!(
                f,
                "chunker {which} size {value} is outside {low}..={high} bytes"
            ),
            ParamsError::Odd(which) => write!(f, "chunker {which} size must be even"),
            ParamsError::Order { min, avg, max } => write!(
                f,
                "chunker sizes must satisfy min < avg < max (got {min}, {avg}, {max})"
            ),
        }
    }
}

impl std::error::Error for ParamsError {}

/// Validated chunk size bounds. Construct with [`ChunkerParams::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    min: u32,
    avg: u32,
    max: u32,
    mask_s: u64,
    mask_l: u64,
}

impl ChunkerParams {
    /// The repository default (see the README's measurement table): 1 MiB average,
    /// 256 KiB minimum, 4 MiB maximum.
    pub fn default_params() -> Self {
        // The constants are valid by construction; the test `default_is_valid` checks it.
        match Self::new(256 * 1024, 1024 * 1024, 4 * 1024 * 1024) {
            Ok(p) => p,
            Err(_) => unreachable!("default chunker parameters are valid"),
        }
    }

    /// The parameters for average chunk size `avg` bytes: min = avg/4, max = avg×4 (the
    /// ratios of the defaults), validated as [`ChunkerParams::new`] does.
    pub fn from_average(avg: u32) -> Result<Self, ParamsError> {
        Self::new(avg / 4, avg, avg.saturating_mul(4))
    }

    /// Validates min/avg/max against FastCDC v2020's limits (all even, min < avg < max).
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self, ParamsError> {
        fn range(
            which: &'static str,
            value: u32,
            low: usize,
            high: usize,
        ) -> Result<(), ParamsError> {
            if (value as usize) < low || (value as usize) > high {
                return Err(ParamsError::OutOfRange {
                    which,
                    value,
                    low: low as u32,
                    high: high as u32,
                });
            }
            if !value.is_multiple_of(2) {
                return Err(ParamsError::Odd(which));
            }
            Ok(())
        }
        range("min", min, v2020::MINIMUM_MIN, v2020::MINIMUM_MAX)?;
        range("avg", avg, v2020::AVERAGE_MIN, v2020::AVERAGE_MAX)?;
        range("max", max, v2020::MAXIMUM_MIN, v2020::MAXIMUM_MAX)?;
        if !(min < avg && avg < max) {
            return Err(ParamsError::Order { min, avg, max });
        }
        let (mask_s, mask_l) = v2020::select_masks(avg as usize, v2020::Normalization::Level1);
        Ok(ChunkerParams {
            min,
            avg,
            max,
            mask_s,
            mask_l,
        })
    }

    /// Minimum chunk size in bytes (the last chunk of an input may be shorter).
    pub fn min(&self) -> u32 {
        self.min
    }
    /// Target average chunk size in bytes.
    pub fn avg(&self) -> u32 {
        self.avg
    }
    /// Maximum chunk size in bytes.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The length of the next chunk at the start of `data`, which must hold at least `max`
    /// bytes unless it is the end of the input. Returns 0 only for empty `data`.
    pub fn next_cut(&self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let (_, len) = v2020::cut(
            data,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        // Defensive: FastCDC always makes progress on non-empty input.
        len.clamp(1, data.len())
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::default_params()
    }
}

/// One chunk of an input: where it is and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the chunk in the input.
    pub offset: u64,
    /// Length in bytes (never 0, at most `max`).
    pub length: u32,
    /// BLAKE3 of the chunk's bytes.
    pub id: ChunkId,
}

/// Cut points of `data` without hashing: an iterator of (offset, length).
pub fn cut_points<'a>(
    params: &'a ChunkerParams,
    data: &'a [u8],
) -> impl Iterator<Item = (usize, usize)> + 'a {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = data.get(pos..)?;
        let len = params.next_cut(rest);
        if len == 0 {
            return None;
        }
        let start = pos;
        pos += len;
        Some((start, len))
    })
}

/// Chunks and hashes `data` (a whole input, e.g. a memory-mapped file).
pub fn chunk_slice<'a>(
    params: &'a ChunkerParams,
    data: &'a [u8],
) -> impl Iterator<Item = Chunk> + 'a {
    cut_points(params, data).map(move |(offset, len)| Chunk {
        offset: offset as u64,
        length: len as u32,
        id: ChunkId::of(&data[offset..offset + len]),
    })
}

/// Chunks and hashes `data` like [`chunk_slice`], on up to `threads` threads: the calling
/// thread finds cut points (inherently sequential) while the others hash the chunks already
/// cut, then helps hashing. With two threads this runs at about the speed of cutting alone.
/// Returns the chunks in input order.
pub fn chunk_slice_parallel(params: &ChunkerParams, data: &[u8], threads: usize) -> Vec<Chunk> {
    const BATCH: usize = 2;
    if threads <= 1 || data.len() < params.max as usize * 4 {
        return chunk_slice(params, data).collect();
    }
    let hash_batch = |cuts: &[(usize, usize)]| -> Vec<Chunk> {
        cuts.iter()
            .map(|&(offset, len)| Chunk {
                offset: offset as u64,
                length: len as u32,
                id: ChunkId::of(&data[offset..offset + len]),
            })
            .collect()
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<(usize, usize)>)>(threads);
    let rx = std::sync::Mutex::new(rx);
    let done: std::sync::Mutex<Vec<(usize, Vec<Chunk>)>> = std::sync::Mutex::new(Vec::new());
    let drain = || loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok((index, cuts)) = next else { return };
        let chunks = hash_batch(&cuts);
        if let Ok(mut d) = done.lock() {
            d.push((index, chunks));
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(drain);
        }
        let mut batch = Vec::with_capacity(BATCH);
        let mut index = 0;
        for cut in cut_points(params, data) {
            batch.push(cut);
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if tx.send((index, full)).is_err() {
                    break;
                }
                index += 1;
            }
        }
        if !batch.is_empty() {
            let _ = tx.send((index, batch));
        }
        drop(tx);
        drain();
    });
    let mut done = done.into_inner().unwrap_or_default();
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().flat_map(|(_, c)| c).collect()
}

/// Chunks a [`Read`] stream with one reusable buffer (2 × max bytes): no allocation per chunk.
///
/// ```
/// use xstore_chunker::{ChunkerParams, StreamChunker};
/// let params = ChunkerParams::new(1024, 4096, 16384).unwrap();
/// let data = vec![1u8; 100_000];
/// let mut stream = StreamChunker::new(params, &data[..]);
/// let mut total = 0;
/// while let Some((chunk, bytes)) = stream.next_chunk().unwrap() {
///     assert_eq!(bytes.len(), chunk.length as usize);
///     total += bytes.len();
/// }
/// assert_eq!(total, data.len());
/// ```
pub struct StreamChunker<R> {
    params: ChunkerParams,
    reader: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    offset: u64,
}

impl<R: Read> StreamChunker<R> {
    /// A chunker over `reader`.
    pub fn new(params: ChunkerParams, reader: R) -> Self {
        StreamChunker {
            params,
            reader,
            buf: vec![0u8; params.max as usize * 2].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
        }
    }

    /// Fills the buffer until it holds at least `max` bytes or the reader is exhausted.
    fn fill(&mut self) -> io::Result<()> {
        let max = self.params.max as usize;
        if self.end - self.start >= max || self.eof {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < max && !self.eof {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk and its bytes (borrowed from the internal buffer), or `None` at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<(Chunk, &[u8])>> {
        self.fill()?;
        let available = &self.buf[self.start..self.end];
        let len = self.params.next_cut(available);
        if len == 0 {
            return Ok(None);
        }
        let bytes = &self.buf[self.start..self.start + len];
        let chunk = Chunk {
            offset: self.offset,
            length: len as u32,
            id: ChunkId::of(bytes),
        };
        self.start += len;
        self.offset += len as u64;
        Ok(Some((chunk, bytes)))
    }

    /// Gives back the reader.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

/// A deterministic pseudo-random byte generator (xorshift64*) for tests and benchmarks.
/// Not for cryptography.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_is_valid() {
        let p = ChunkerParams::new(256 * 1024, 1024 * 1024, 4 * 1024 * 1024).unwrap();
        assert_eq!(p, ChunkerParams::default_params());
    }

    #[test]
    fn params_are_validated() {
        assert!(matches!(
            ChunkerParams::new(32, 4096, 16384),
            Err(ParamsError::OutOfRange { which: "min", .. })
        ));
        assert!(matches!(
            ChunkerParams::new(1024, 4097, 16384),
            Err(ParamsError::Odd("avg"))
        ));
        assert!(matches!(
            ChunkerParams::new(8192, 4096, 16384),
            Err(ParamsError::Order { .. })
        ));
        assert!(matches!(
            ChunkerParams::new(1024, 4096, 32 * 1024 * 1024),
            Err(ParamsError::OutOfRange { which: "max", .. })
        ));
    }

    #[test]
    fn id_hex_round_trip() {
        let id = ChunkId::of(b"hello");
        let s = id.to_string();
        assert_eq!(s, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(s.parse::<ChunkId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<ChunkId>().unwrap(), id);
        assert_eq!("abc".parse::<ChunkId>(), Err(ParseIdError::Length(3)));
        assert_eq!("g".repeat(64).parse::<ChunkId>(), Err(ParseIdError::NotHex));
        // Multi-byte characters must not be miscounted into a panic.
        assert!("é".repeat(32).parse::<ChunkId>().is_err());
    }

    /// Golden cut points: these pin the on-disk chunk boundaries (FORMAT.md, invariant 6).
    #[test]
    fn golden_cut_points() {
        let data = seeded_bytes(0x5eed, 4 * 1024 * 1024);
        let params = ChunkerParams::new(16 * 1024, 64 * 1024, 256 * 1024).unwrap();
        let lengths: Vec<usize> = cut_points(&params, &data).map(|(_, l)| l).collect();
        assert_eq!(lengths.len(), GOLDEN_LENGTHS_64K.len(), "{lengths:?}");
        assert_eq!(lengths, GOLDEN_LENGTHS_64K);
        let first = chunk_slice(&params, &data).next().unwrap();
        assert_eq!(first.id.to_string(), GOLDEN_FIRST_ID);

        let data = seeded_bytes(0x5eed, 24 * 1024 * 1024);
        let params = ChunkerParams::default_params();
        let lengths: Vec<usize> = cut_points(&params, &data).map(|(_, l)| l).collect();
        assert_eq!(lengths, GOLDEN_LENGTHS_DEFAULT, "{lengths:?}");
    }

    const GOLDEN_LENGTHS_64K: &[usize] = &[
        27352, 161916, 113978, 110331, 20282, 29653, 143950, 81179, 48663, 80189, 25081, 38954,
        71686, 82620, 251966, 68657, 90662, 86882, 183641, 71990, 36708, 66485, 24890, 47080,
        102087, 95193, 74262, 49514, 69477, 83104, 86381, 53972, 43925, 68861, 97829, 122379,
        29936, 71156, 23069, 35701, 107225, 124787, 72126, 106481, 103783, 78077, 81132, 42461,
        78952, 94760, 52066, 32635, 65593, 82585,
    ];
    const GOLDEN_LENGTHS_DEFAULT: &[usize] = &[
        1213558, 441531, 1380851, 1239929, 1081870, 1800154, 681113, 1388986, 1046745, 564872,
        2684956, 1256722, 1256474, 1401088, 1238013, 1113382, 1118517, 738299, 3518764,
    ];
    const GOLDEN_FIRST_ID: &str =
        "cf2bd5d240746f2d5811622cf06a9f7c639b26317db5acd3f741aaafe626baa5";

    /// Our cut loop must agree with fastcdc's own iterator (an independent code path).
    #[test]
    fn agrees_with_fastcdc_iterator() {
        let data = seeded_bytes(42, 3 * 1024 * 1024 + 17);
        for (min, avg, max) in [(1024, 4096, 16384), (65536, 262144, 1048576)] {
            let params = ChunkerParams::new(min, avg, max).unwrap();
            let ours: Vec<(usize, usize)> = cut_points(&params, &data).collect();
            let theirs: Vec<(usize, usize)> =
                v2020::FastCDC::new(&data, min as usize, avg as usize, max as usize)
                    .map(|c| (c.offset, c.length))
                    .collect();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn parallel_equals_sequential() {
        let data = seeded_bytes(9, 5 * 1024 * 1024 + 3);
        let params = ChunkerParams::new(1024, 4096, 16384).unwrap();
        let seq: Vec<Chunk> = chunk_slice(&params, &data).collect();
        for threads in [1, 2, 3, 8] {
            assert_eq!(chunk_slice_parallel(&params, &data, threads), seq);
        }
        assert!(chunk_slice_parallel(&params, &[], 2).is_empty());
    }

    #[test]
    fn empty_input_has_no_chunks() {
        let p = ChunkerParams::default_params();
        assert_eq!(chunk_slice(&p, &[]).count(), 0);
        let mut s = StreamChunker::new(p, &[][..]);
        assert!(s.next_chunk().unwrap().is_none());
    }

    /// A reader that returns at most `step` bytes per call, to exercise refills.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn slice_and_stream_agree_and_cover(
            seed in any::<u64>(),
            len in 0usize..300_000,
            step in 1usize..70_000,
            repeat in any::<bool>(),
        ) {
            let mut data = seeded_bytes(seed, len);
            if repeat && len > 10 {
                // Low-entropy regions exercise the max-size cut.
                let half = len / 2;
                data[..half].fill(0);
            }
            let params = ChunkerParams::new(1024, 4096, 16384).unwrap();
            let from_slice: Vec<Chunk> = chunk_slice(&params, &data).collect();
            let mut stream = StreamChunker::new(params, Trickle { data: &data, step });
            let mut from_stream = Vec::new();
            let mut rebuilt = Vec::new();
            while let Some((c, bytes)) = stream.next_chunk().unwrap() {
                rebuilt.extend_from_slice(bytes);
                from_stream.push(c);
            }
            prop_assert_eq!(&from_slice, &from_stream);
            prop_assert_eq!(&rebuilt, &data);
            let mut expected = 0u64;
            for (i, c) in from_slice.iter().enumerate() {
                prop_assert_eq!(c.offset, expected);
                prop_assert!(c.length <= params.max());
                if i + 1 < from_slice.len() {
                    prop_assert!(c.length >= params.min());
                }
                expected += c.length as u64;
            }
            prop_assert_eq!(expected, data.len() as u64);
        }
    }
}
