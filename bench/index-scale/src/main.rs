//! The blob index at scale, through the real index code and commit path
//! (`xstore::bench_internals`): N synthetic blob records committed in backup-sized synced
//! batches, then insert rate, point lookups per second of absent ids (a backup of new data)
//! and of present ids with 1 and 2 threads, batched lookups (a pull's question), reopen time,
//! a full scan (what `check`'s refcount audit and gc iterate), peak RSS and on-disk size.
//!
//!   SCALE=1M   cargo run --release -p xstore-bench-index-scale   (also 10M, 100M, or a number)
//!   XSTORE_BENCH_DIR=/big/disk SCALE=100M …                       (where the index is built)
//!   INDEX_DIR=/big/disk/index100m SCALE=100M …   (build it there once, keep it, and measure
//!                                                 it again on later runs without the inserts)
//!
//! Prints numbers and asserts nothing about time.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use xstore::bench_internals::{dir_bytes, peak_rss_mib, BenchIndex};
use xstore::{BlobKind, BlobLoc, ChunkId};

/// Records per commit: about what one backup commit of new data writes.
const COMMIT: u64 = 10_000;
/// Blobs per synthetic pack.
const PER_PACK: u64 = 4_000;

fn scale() -> u64 {
    let text = std::env::var("SCALE").unwrap_or_else(|_| "1M".into());
    let t = text.trim().to_ascii_uppercase();
    let (num, mul) = match t.strip_suffix('M') {
        Some(n) => (n, 1_000_000),
        None => match t.strip_suffix('K') {
            Some(n) => (n, 1_000),
            None => (t.as_str(), 1),
        },
    };
    num.parse::<u64>().map(|n| n * mul).unwrap_or_else(|_| {
        eprintln!("SCALE={text}: expected a number, optionally with K or M");
        std::process::exit(2)
    })
}

fn present_id(i: u64) -> ChunkId {
    ChunkId::of(&i.to_le_bytes())
}

fn absent_id(i: u64) -> ChunkId {
    ChunkId::of(&[b"absent".as_slice(), &i.to_le_bytes()].concat())
}

fn loc(i: u64) -> BlobLoc {
    BlobLoc {
        pack: ChunkId::of(&(i / PER_PACK).to_le_bytes()),
        offset: (i % PER_PACK) * 1_000,
        stored_len: 900,
        raw_len: 1_000,
        kind: BlobKind::Data,
        refcount: 1,
        bundled: None,
    }
}

/// Lookups per second of `ids(k)` for `count` ids on `threads` threads.
fn rate(index: &BenchIndex, count: u64, threads: usize, ids: fn(u64) -> ChunkId) -> (f64, u64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("thread pool: {e}"));
    let t = Instant::now();
    let found: u64 = pool.install(|| {
        (0..count)
            .into_par_iter()
            .map(|k| u64::from(index.blob(&ids(k)).ok().flatten().is_some()))
            .sum()
    });
    (count as f64 / t.elapsed().as_secs_f64(), found)
}

fn row(what: &str, value: String) {
    println!("{what:<58} {value}");
}

fn main() {
    let n = scale();
    let base = std::env::var_os("XSTORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let kept = std::env::var_os("INDEX_DIR").map(std::path::PathBuf::from);
    let path = kept.clone().unwrap_or_else(|| work.path().join("index"));
    let reuse = path.join("CURRENT").is_file();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "index-scale: {n} blob records, commits of {COMMIT}, {cores} cores, in {}",
        base.display()
    );

    if reuse {
        println!(
            "reusing the index at {} (built with SCALE={n})",
            path.display()
        );
    } else {
        build(&path, n);
    }

    let t = Instant::now();
    let index = BenchIndex::open(&path, false).unwrap_or_else(|e| panic!("open: {e}"));
    row(
        "open (writable)",
        format!("{:.0} ms", t.elapsed().as_secs_f64() * 1e3),
    );

    // Enough lookups for a stable rate; at 10 M records and beyond a cold point lookup is
    // slow enough that more would only lengthen the run.
    let probes = n.clamp(10_000, 200_000);
    // Present ids in an order unrelated to their key order (ids are hashes).
    fn spread(k: u64) -> ChunkId {
        present_id(
            k.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                % SCALE_N.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
    SCALE_N.store(n, std::sync::atomic::Ordering::Relaxed);
    // First as the bulk commits left it (compactions still running in the background, as
    // after a large first backup), then fully compacted (an index left idle).
    // The first lookups after an open load filter and index partitions into the block
    // cache (a backup process starts this way); the rates below are with them loaded.
    // At 100 M records that takes several hundred thousand lookups.
    let (r, found) = rate(&index, probes, 1, |k| absent_id(k | 1 << 40));
    assert_eq!(found, 0);
    row(
        "absent-id lookups, 1 thread, first after the open",
        format!("{r:.0}/s"),
    );
    let (_, found) = rate(&index, 3 * probes, 2, |k| absent_id(k | 1 << 41));
    assert_eq!(found, 0);
    let states: &[&str] = if reuse {
        &["compacted"]
    } else {
        &["after the commits", "compacted"]
    };
    for &state in states {
        if state == "compacted" {
            let t = Instant::now();
            index.compact().unwrap_or_else(|e| panic!("compact: {e}"));
            row(
                "full compaction",
                format!("{:.1} s", t.elapsed().as_secs_f64()),
            );
        }
        for threads in [1, 2] {
            let (r, found) = rate(&index, probes, threads, absent_id);
            assert_eq!(found, 0);
            row(
                &format!("absent-id lookups, {threads} thread(s), {state}"),
                format!("{r:.0}/s"),
            );
        }
        for threads in [1, 2] {
            let (r, found) = rate(&index, probes.min(n), threads, spread);
            assert_eq!(found, probes.min(n));
            row(
                &format!("present-id lookups, {threads} thread(s), {state}"),
                format!("{r:.0}/s"),
            );
        }
    }
    let t = Instant::now();
    let mut missing = 0usize;
    let ids: Vec<ChunkId> = (0..probes).map(absent_id).collect();
    for chunk in ids.chunks(1_000) {
        missing += index
            .blobs(chunk)
            .unwrap_or_else(|e| panic!("lookup: {e}"))
            .iter()
            .filter(|l| l.is_none())
            .count();
    }
    assert_eq!(missing as u64, probes);
    row(
        "batched absent lookups (1,000 per call)",
        format!("{:.0}/s", probes as f64 / t.elapsed().as_secs_f64()),
    );
    let t = Instant::now();
    let mut referenced = 0u64;
    let scanned = index
        .for_each_blob(|_, l| referenced += u64::from(l.refcount > 0))
        .unwrap_or_else(|e| panic!("scan: {e}"));
    assert_eq!((scanned, referenced), (n, n));
    row(
        "full scan of the blob records (check, gc)",
        format!(
            "{:.1} s ({:.0} records/s)",
            t.elapsed().as_secs_f64(),
            n as f64 / t.elapsed().as_secs_f64().max(1e-9)
        ),
    );
    drop(index);
    row("peak RSS", format!("{:.0} MiB", peak_rss_mib()));
    row(
        "index on disk",
        format!(
            "{:.0} MiB ({:.1} bytes per record)",
            dir_bytes(&path) as f64 / 1048576.0,
            dir_bytes(&path) as f64 / n as f64
        ),
    );
}

/// Inserts `n` records in synced commits of [`COMMIT`].
fn build(path: &Path, n: u64) {
    let index = BenchIndex::create(path).unwrap_or_else(|e| panic!("create: {e}"));
    let t = Instant::now();
    let mut batch = Vec::with_capacity(COMMIT as usize);
    let mut i = 0;
    while i < n {
        batch.clear();
        let end = (i + COMMIT).min(n);
        batch.extend((i..end).map(|k| (present_id(k), loc(k))));
        index
            .commit_blobs(&batch)
            .unwrap_or_else(|e| panic!("commit: {e}"));
        i = end;
    }
    index.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    let insert = t.elapsed();
    row(
        "insert (synced commits)",
        format!(
            "{:.0} records/s ({:.1} s)",
            n as f64 / insert.as_secs_f64(),
            insert.as_secs_f64()
        ),
    );
}

static SCALE_N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
