//! Read-ahead of announced pack ranges for a remote storage: a reader that knows which blobs
//! it will read, in which order (restore's pack-ordered write pass), announces them; the
//! storage fetches them ahead as large coalesced ranges, a few at a time, within a memory
//! bound, and serves the reads from them.
//!
//! Invariants:
//! - Read-ahead only ever changes where bytes come from, never which bytes: a segment holds
//!   exactly the bytes of `pack` at `start..end` (a short answer is discarded), and packs are
//!   immutable, so a fetched segment is never stale.
//! - It never makes a read fail or wait forever: a read of a segment not yet started, or one
//!   whose fetch failed (gc deleted the pack, the store is down), falls back to the storage's
//!   own read path and its error; a read waits only for a segment whose request is in flight,
//!   and requests have the client's time limit.
//! - Memory: the read-ahead requests a segment only while fetched and in-flight segments hold
//!   less than `budget` bytes (or nothing); a reader that finds its segment not yet requested
//!   requests it itself, so the bound is passed by at most one segment per reader. A segment
//!   is released once every read announced for it was served. When the budget is full, a
//!   segment the reads have left behind is released to make room (a file that failed midway
//!   never reads the rest of its announced ranges): its next announced read comes more than
//!   `LEFT_BEHIND` reads before the furthest read served. Any other segment is kept until
//!   its reads are done, however long that takes: a large file's chunks are read from
//!   segments that other files finish much later, and what is released is fetched again by
//!   smaller reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};

use super::PackId;

/// One announced read: `len` bytes of `pack` at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangeRead {
    pub pack: PackId,
    pub offset: u64,
    pub len: u64,
}

/// A coalesced range of one pack, fetched with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub pack: PackId,
    pub start: u64,
    pub end: u64,
    /// Bytes of announced reads inside it (repeats included).
    pub planned: u64,
    /// The positions of those reads in the announced order, ascending.
    pub reads: Vec<usize>,
}

/// How announced reads are grouped into requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// A segment's largest span.
    pub max_segment: u64,
    /// Reads closer than this to the segment's end join it (the gap is fetched and unused).
    pub max_gap: u64,
}

/// Groups `reads` (in the order they will be made) into segments: each pack's reads sorted
/// by offset and merged while the gaps and the span stay within `shape` (a pack's blobs may be
/// read in any order: a large file's chunks are not always stored in file order), then the
/// segments in the order of their first read.
pub(crate) fn plan(reads: &[RangeRead], shape: Shape) -> Vec<Segment> {
    let mut by_pack: HashMap<PackId, Vec<(u64, u64, usize)>> = HashMap::new();
    for (k, r) in reads.iter().enumerate() {
        let end = r.offset.saturating_add(r.len);
        by_pack.entry(r.pack).or_default().push((r.offset, end, k));
    }
    // (first read, segment)
    let mut segments: Vec<(usize, Segment)> = Vec::new();
    for (pack, mut ranges) in by_pack {
        ranges.sort_unstable();
        let mut current: Option<(usize, Segment)> = None;
        for (start, end, k) in ranges {
            let len = end - start;
            if let Some((first, seg)) = current.as_mut() {
                let joins = start <= seg.end.saturating_add(shape.max_gap)
                    && end.max(seg.end) - seg.start <= shape.max_segment;
                if joins {
                    seg.end = seg.end.max(end);
                    seg.planned += len;
                    seg.reads.push(k);
                    *first = (*first).min(k);
                    continue;
                }
            }
            segments.extend(current.take());
            current = Some((
                k,
                Segment {
                    pack,
                    start,
                    end,
                    planned: len,
                    reads: vec![k],
                },
            ));
        }
        segments.extend(current);
    }
    for (_, seg) in segments.iter_mut() {
        seg.reads.sort_unstable();
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    segments.into_iter().map(|(_, seg)| seg).collect()
}

enum Slot {
    /// Not requested yet.
    Waiting,
    /// Its request is in flight.
    Fetching,
    Ready(bytes::Bytes),
    /// Released, skipped or failed: reads go to the storage's own path.
    Gone,
}

struct State {
    segments: Vec<Segment>,
    slots: Vec<Slot>,
    served: Vec<u64>,
    by_pack: HashMap<PackId, Vec<usize>>,
    /// The next segment to request.
    next: usize,
    in_flight: usize,
    /// Bytes of segments fetching or ready.
    held: u64,
    /// The segments in `Slot::Ready` (a few: the budget's worth), so that looking for one to
    /// release does not scan every segment of a large restore on each read.
    ready: BTreeSet<usize>,
    /// Per segment, how many of its announced reads were served.
    consumed: Vec<usize>,
    /// The furthest position (in the announced order) of a read served so far, roughly:
    /// the position of a segment's next read once it is served.
    frontier: usize,
    /// `LEFT_BEHIND` (tests shorten it).
    left_behind: usize,
    cancelled: bool,
    /// Reads served, reads that went the usual way, segments fetched and failed: logged at
    /// the end (`-vv`).
    hits: u64,
    misses: u64,
    fetched: u64,
    failed: u64,
    claimed_by_readers: u64,
}

/// How far (in announced reads) the reads must have moved past a partly read segment's next
/// read before it counts as left behind. Evicting partly read segments by how recently they
/// were read from instead released ranges that a large file stored elsewhere read much
/// later: on a system tree that multiplied the misses and added requests.
const LEFT_BEHIND: usize = 4096;

impl State {
    /// Releases the ready segment the reads left furthest behind (module documentation);
    /// false when there is none.
    fn evict_one(&mut self) -> bool {
        let oldest = self
            .ready
            .iter()
            .copied()
            .filter_map(|i| {
                let consumed = *self.consumed.get(i)?;
                let next = self.segments.get(i)?.reads.get(consumed).copied();
                // Unread segments are what the reads need next.
                (consumed > 0).then_some((next.unwrap_or(0), i))
            })
            .filter(|&(next, _)| next.saturating_add(self.left_behind) < self.frontier)
            .min();
        match oldest {
            Some((_, i)) => {
                self.release(i);
                true
            }
            None => false,
        }
    }

    fn release(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            if let Slot::Ready(b) = std::mem::replace(slot, Slot::Gone) {
                self.held = self.held.saturating_sub(b.len() as u64);
                self.ready.remove(&i);
            }
        }
    }
}

/// A running read-ahead (module documentation).
pub(crate) struct ReadAhead {
    state: Mutex<State>,
    changed: Condvar,
    concurrency: usize,
    budget: u64,
}

/// What a read found in the read-ahead.
pub(crate) enum Served {
    /// The bytes were copied into the buffer.
    Copied,
    /// Not there: read it the usual way.
    Miss,
    /// The read's segment was not requested yet: the caller requests it now (answering with
    /// [`ReadAhead::fetched`]) and asks again.
    Request(usize, Segment),
}

impl ReadAhead {
    pub(crate) fn new(segments: Vec<Segment>, concurrency: usize, budget: u64) -> Arc<ReadAhead> {
        let mut by_pack: HashMap<PackId, Vec<usize>> = HashMap::new();
        for (i, s) in segments.iter().enumerate() {
            by_pack.entry(s.pack).or_default().push(i);
        }
        let n = segments.len();
        Arc::new(ReadAhead {
            state: Mutex::new(State {
                segments,
                slots: (0..n).map(|_| Slot::Waiting).collect(),
                served: vec![0; n],
                by_pack,
                next: 0,
                in_flight: 0,
                held: 0,
                ready: BTreeSet::new(),
                consumed: vec![0; n],
                frontier: 0,
                left_behind: LEFT_BEHIND,
                cancelled: false,
                hits: 0,
                misses: 0,
                fetched: 0,
                failed: 0,
                claimed_by_readers: 0,
            }),
            changed: Condvar::new(),
            concurrency: concurrency.max(1),
            budget,
        })
    }

    /// Blocks until the next segment may be requested and claims it; `None` once every
    /// segment was claimed or the read-ahead was cancelled.
    pub(crate) fn claim_next(&self) -> Option<(usize, Segment)> {
        let mut st = self.state.lock().ok()?;
        loop {
            if st.cancelled {
                return None;
            }
            // Segments a reader requested already are skipped.
            while st.next < st.segments.len()
                && !matches!(st.slots.get(st.next), Some(Slot::Waiting))
            {
                st.next += 1;
            }
            let i = st.next;
            let seg = st.segments.get(i)?.clone();
            let len = seg.end - seg.start;
            while st.held > 0 && st.held + len > self.budget && st.evict_one() {}
            let fits = st.held == 0 || st.held + len <= self.budget;
            if st.in_flight < self.concurrency && fits {
                st.next += 1;
                st.in_flight += 1;
                st.held += len;
                if let Some(slot) = st.slots.get_mut(i) {
                    *slot = Slot::Fetching;
                }
                return Some((i, seg));
            }
            st = self.changed.wait(st).ok()?;
        }
    }

    /// The answer to segment `i`'s request: its bytes, or `None` when it failed (or came back
    /// short: the reads then take the usual path, which reports why).
    pub(crate) fn fetched(&self, i: usize, bytes: Option<bytes::Bytes>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.in_flight = st.in_flight.saturating_sub(1);
        let want = st.segments.get(i).map_or(0, |s| s.end - s.start);
        st.held = st.held.saturating_sub(want);
        match bytes {
            Some(b) if b.len() as u64 == want && !st.cancelled => {
                st.fetched += 1;
                st.held += want;
                if let Some(slot) = st.slots.get_mut(i) {
                    *slot = Slot::Ready(b);
                    st.ready.insert(i);
                }
            }
            _ => {
                st.failed += u64::from(!st.cancelled);
                if let Some(slot) = st.slots.get_mut(i) {
                    *slot = Slot::Gone;
                }
            }
        }
        self.changed.notify_all();
    }

    /// Copies `buf.len()` bytes of `pack` at `offset` from a segment that holds them, waiting
    /// for one whose request is in flight.
    pub(crate) fn serve(&self, pack: &PackId, offset: u64, buf: &mut [u8]) -> Served {
        let Ok(mut st) = self.state.lock() else {
            return Served::Miss;
        };
        let end = offset.saturating_add(buf.len() as u64);
        let found = st.by_pack.get(pack).and_then(|ids| {
            ids.iter().copied().find(|&i| {
                st.segments
                    .get(i)
                    .is_some_and(|s| s.start <= offset && end <= s.end)
                    && !matches!(st.slots.get(i), Some(Slot::Gone))
            })
        });
        let Some(i) = found else {
            st.misses += 1;
            tracing::trace!(%pack, offset, len = buf.len(), "read not announced, or released");
            return Served::Miss;
        };
        loop {
            match st.slots.get(i) {
                Some(Slot::Fetching) => match self.changed.wait(st) {
                    Ok(s) => st = s,
                    Err(_) => return Served::Miss,
                },
                Some(Slot::Waiting) => {
                    // Reads got ahead of the read-ahead: the reader requests this segment
                    // itself (beyond the concurrency bound; the budget is then passed by at
                    // most one segment per reader) and waits for it as for any other.
                    let Some(seg) = st.segments.get(i).cloned() else {
                        return Served::Miss;
                    };
                    if let Some(slot) = st.slots.get_mut(i) {
                        *slot = Slot::Fetching;
                    }
                    st.in_flight += 1;
                    st.held += seg.end - seg.start;
                    st.claimed_by_readers += 1;
                    return Served::Request(i, seg);
                }
                Some(Slot::Ready(bytes)) => {
                    let start = st.segments.get(i).map_or(0, |s| s.start);
                    let from = (offset - start) as usize;
                    let Some(src) = bytes.get(from..from + buf.len()) else {
                        return Served::Miss;
                    };
                    buf.copy_from_slice(src);
                    if let Some(n) = st.served.get_mut(i) {
                        *n += buf.len() as u64;
                    }
                    let done = st
                        .segments
                        .get(i)
                        .zip(st.served.get(i))
                        .is_some_and(|(s, &n)| n >= s.planned);
                    if done {
                        st.release(i);
                    }
                    let consumed = st.consumed.get(i).map_or(0, |&c| c + 1);
                    if let Some(c) = st.consumed.get_mut(i) {
                        *c = consumed;
                    }
                    let position = st
                        .segments
                        .get(i)
                        .and_then(|s| s.reads.get(consumed - 1).copied());
                    st.frontier = st.frontier.max(position.unwrap_or(0));
                    st.hits += 1;
                    self.changed.notify_all();
                    return Served::Copied;
                }
                // Gone meanwhile.
                _ => {
                    st.misses += 1;
                    return Served::Miss;
                }
            }
        }
    }

    /// Stops requesting; what is held is freed when the last request returns.
    pub(crate) fn cancel(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.cancelled = true;
            for i in 0..st.slots.len() {
                st.release(i);
            }
            tracing::debug!(
                segments = st.segments.len(),
                fetched = st.fetched,
                failed = st.failed,
                hits = st.hits,
                misses = st.misses,
                requested_by_readers = st.claimed_by_readers,
                "read-ahead ended"
            );
        }
        self.changed.notify_all();
    }

    /// Whether it was cancelled (its guard dropped).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.lock().map_or(true, |s| s.cancelled)
    }

    /// Bytes of segments fetching or ready (tests).
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8) -> PackId {
        xstore_chunker::ChunkId([n; 32])
    }

    fn read(p: u8, offset: u64, len: u64) -> RangeRead {
        RangeRead {
            pack: pack(p),
            offset,
            len,
        }
    }

    const SHAPE: Shape = Shape {
        max_segment: 100,
        max_gap: 10,
    };

    #[test]
    fn each_packs_reads_coalesce_into_bounded_segments_in_the_order_of_first_use() {
        let reads = [
            read(1, 0, 30),
            read(1, 35, 30), // gap of 5: joins
            read(1, 80, 30), // would span 110 > 100: a new segment
            read(2, 0, 10),
            read(1, 40, 5),  // inside the first segment: counted there
            read(2, 50, 10), // gap of 40: a new segment
        ];
        let segs = plan(&reads, SHAPE);
        let spans: Vec<_> = segs
            .iter()
            .map(|s| (s.pack, s.start, s.end, s.planned))
            .collect();
        assert_eq!(
            spans,
            vec![
                (pack(1), 0, 65, 65),
                (pack(1), 80, 110, 30),
                (pack(2), 0, 10, 10),
                (pack(2), 50, 60, 10),
            ]
        );
    }

    fn bytes_of(seg: &Segment) -> bytes::Bytes {
        (seg.start..seg.end)
            .map(|b| b as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn a_served_read_is_the_segments_bytes_and_a_consumed_segment_is_released() {
        let segs = plan(&[read(1, 0, 30), read(1, 30, 20), read(2, 0, 40)], SHAPE);
        let ra = ReadAhead::new(segs, 1, 1000);
        let (i, seg) = ra.claim_next().expect("first");
        assert_eq!((i, seg.start, seg.end), (0, 0, 50));
        ra.fetched(i, Some(bytes_of(&seg)));
        let mut buf = [0u8; 20];
        assert!(matches!(ra.serve(&pack(1), 30, &mut buf), Served::Copied));
        assert_eq!(buf.to_vec(), (30..50).collect::<Vec<u8>>());
        assert_eq!(ra.held(), 50);
        let mut buf = [0u8; 30];
        assert!(matches!(ra.serve(&pack(1), 0, &mut buf), Served::Copied));
        assert_eq!(ra.held(), 0, "every planned byte served: released");
        assert!(matches!(ra.serve(&pack(1), 0, &mut buf), Served::Miss));
        // Segment 2 is not requested yet: the reader is told to request it (the read-ahead
        // then skips it), and is served once it arrives.
        let mut buf = [0u8; 40];
        let Served::Request(i, seg) = ra.serve(&pack(2), 0, &mut buf) else {
            panic!("a segment not requested yet is the reader's to request");
        };
        assert_eq!((i, seg.start, seg.end), (1, 0, 40));
        assert!(ra.claim_next().is_none());
        ra.fetched(i, Some(bytes_of(&seg)));
        assert!(matches!(ra.serve(&pack(2), 0, &mut buf), Served::Copied));
        assert_eq!(buf.to_vec(), (0..40).collect::<Vec<u8>>());
    }

    #[test]
    fn a_failed_or_short_fetch_is_a_miss_and_the_budget_bounds_what_is_held() {
        let segs = plan(&[read(1, 0, 60), read(2, 0, 60), read(3, 0, 60)], SHAPE);
        let ra = ReadAhead::new(segs, 4, 100);
        let (a, sa) = ra.claim_next().expect("first");
        // 60 held: a second 60 would pass the budget of 100; it waits for room.
        let ra2 = ra.clone();
        let waiter = std::thread::spawn(move || ra2.claim_next().map(|(i, _)| i));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "the budget holds the second request back"
        );
        ra.fetched(a, Some(bytes_of(&sa).slice(..10))); // short: discarded
        assert_eq!(waiter.join().expect("joined"), Some(1));
        let mut buf = [0u8; 10];
        assert!(matches!(ra.serve(&pack(1), 0, &mut buf), Served::Miss));
        ra.fetched(1, None);
        assert!(matches!(ra.serve(&pack(2), 0, &mut buf), Served::Miss));
        assert_eq!(ra.held(), 0);
        ra.cancel();
        assert!(ra.claim_next().is_none());
    }

    #[test]
    fn a_read_waits_for_a_segment_in_flight() {
        let segs = plan(&[read(1, 0, 50)], SHAPE);
        let ra = ReadAhead::new(segs, 1, 1000);
        let (i, seg) = ra.claim_next().expect("first");
        let ra2 = ra.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 5];
            let served = matches!(ra2.serve(&pack(1), 10, &mut buf), Served::Copied);
            (served, buf)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished());
        ra.fetched(i, Some(bytes_of(&seg)));
        assert_eq!(reader.join().expect("joined"), (true, [10, 11, 12, 13, 14]));
    }

    #[test]
    fn a_full_budget_releases_only_a_segment_the_reads_left_behind_never_an_unread_one() {
        // Five segments of 10 bytes, two reads each; room for three.
        let reads: Vec<_> = (0..5u8)
            .flat_map(|p| [read(p, 0, 5), read(p, 5, 5)])
            .collect();
        let ra = ReadAhead::new(plan(&reads, SHAPE), 8, 30);
        if let Ok(mut st) = ra.state.lock() {
            st.left_behind = 1;
        }
        for _ in 0..3 {
            let (i, seg) = ra.claim_next().expect("claimed");
            ra.fetched(i, Some(bytes_of(&seg)));
        }
        let mut buf = [0u8; 5];
        assert!(matches!(ra.serve(&pack(0), 0, &mut buf), Served::Copied));
        assert!(matches!(ra.serve(&pack(1), 0, &mut buf), Served::Copied));
        // Full, and segment 0's next read (position 1) is just behind the reads (at 2): the
        // read-ahead waits ...
        let ahead = {
            let ra = ra.clone();
            std::thread::spawn(move || ra.claim_next().map(|(i, _)| i))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!ahead.is_finished());
        // ... until segment 1 is read whole and released.
        assert!(matches!(ra.serve(&pack(1), 5, &mut buf), Served::Copied));
        assert_eq!(buf, [5, 6, 7, 8, 9]);
        assert_eq!(ahead.join().expect("joined"), Some(3));
        ra.fetched(3, Some(bytes_of(&plan(&reads, SHAPE)[3])));
        assert_eq!(ra.held(), 30);
        // The reads moved on (position 3) from segment 0's next read (position 1) by more than
        // one: it goes for the fifth; 2 (unread) stays.
        let (i, _) = ra.claim_next().expect("room made");
        assert_eq!(i, 4);
        assert!(matches!(ra.serve(&pack(0), 5, &mut buf), Served::Miss));
        assert!(matches!(ra.serve(&pack(2), 0, &mut buf), Served::Copied));
        assert!(matches!(ra.serve(&pack(3), 0, &mut buf), Served::Copied));
        // 2 and 3 half read, 4 in flight.
        assert_eq!(ra.held(), 30);
    }
}
