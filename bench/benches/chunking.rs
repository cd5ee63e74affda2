//! The chunking hot path: bare FastCDC cut points vs our chunk+hash on the same buffer,
//! BLAKE3 alone, and zstd levels 1 and 3. Throughput in bytes per second.
//!
//! `cargo bench -p xstore-bench --bench chunking` (or with `-- --warm-up-time 1 --measurement-time 3`).
//! `XSTORE_BENCH_MIB` sets the buffer size (default 256), `XSTORE_BENCH_TEXT_DIR` a real tree.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastcdc::v2020::FastCDC;
use xstore_bench::{bench_len, seeded_bytes, text_bytes};
use xstore_chunker::{chunk_slice, chunk_slice_parallel, ChunkerParams};

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let len = bench_len();
    let (text, text_name) = text_bytes(len);
    vec![("random", seeded_bytes(0xbe7c4, len)), (text_name, text)]
}

fn chunking(c: &mut Criterion) {
    let params = ChunkerParams::default_params();
    for (name, data) in inputs() {
        let mut g = c.benchmark_group(format!("chunking/{name}"));
        g.sample_size(10);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function("fastcdc-cut-only", |b| {
            b.iter(|| {
                let n = FastCDC::new(
                    black_box(&data),
                    params.min() as usize,
                    params.avg() as usize,
                    params.max() as usize,
                )
                .count();
                black_box(n)
            })
        });
        g.bench_function("xstore-chunk+blake3", |b| {
            b.iter(|| black_box(chunk_slice(&params, black_box(&data)).count()))
        });
        g.bench_function("xstore-chunk+blake3-2-threads", |b| {
            b.iter(|| black_box(chunk_slice_parallel(&params, black_box(&data), 2).len()))
        });
        g.bench_function("blake3-only", |b| {
            b.iter(|| black_box(blake3::hash(black_box(&data))))
        });
        g.finish();
    }
}

fn compression(c: &mut Criterion) {
    for (name, data) in inputs() {
        // zstd per chunk-sized blob, as the store does; 64 MiB keeps the run short.
        let data = &data[..data.len().min(64 << 20)];
        let mut g = c.benchmark_group(format!("zstd/{name}"));
        g.sample_size(10);
        g.throughput(Throughput::Bytes(data.len() as u64));
        for level in [1, 3] {
            g.bench_function(format!("level-{level}"), |b| {
                b.iter(|| {
                    let mut out = 0usize;
                    for blob in data.chunks(256 * 1024) {
                        out += zstd::bulk::compress(blob, level)
                            .map(|c| c.len())
                            .unwrap_or(0);
                    }
                    black_box(out)
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, chunking, compression);
criterion_main!(benches);
