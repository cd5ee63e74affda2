//! Deterministic benchmark inputs. The criterion benches in this crate never depend on the
//! `xstore` store crate, so they build without RocksDB.

use std::path::Path;

pub use xstore_chunker::seeded_bytes;

/// Benchmark buffer size in bytes: `XSTORE_BENCH_MIB` (default 256) MiB.
pub fn bench_len() -> usize {
    std::env::var("XSTORE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(256)
        * 1024
        * 1024
}

/// Text input of `len` bytes: the files under `XSTORE_BENCH_TEXT_DIR` (for example an unpacked
/// Linux source tree) concatenated and repeated, or else deterministic source-like text.
pub fn text_bytes(len: usize) -> (Vec<u8>, &'static str) {
    if let Some(dir) = std::env::var_os("XSTORE_BENCH_TEXT_DIR") {
        let mut out = Vec::with_capacity(len);
        collect(Path::new(&dir), &mut out, len);
        if !out.is_empty() {
            let real = out.len();
            while out.len() < len {
                let take = (len - out.len()).min(real);
                out.extend_from_within(..take);
            }
            return (out, "real-text");
        }
    }
    const WORDS: &[&str] = &[
        "static",
        "int",
        "return",
        "struct",
        "if",
        "else",
        "for",
        "while",
        "unsigned",
        "long",
        "const",
        "char",
        "void",
        "#include",
        "<linux/kernel.h>",
        "->",
        "=",
        "==",
        "{",
        "}",
        "(",
        ")",
        ";",
        "NULL",
        "err",
        "dev",
        "buf",
        "len",
        "size",
        "goto",
        "out",
        "lock",
        "spin_lock",
        "kfree",
        "kmalloc",
        "GFP_KERNEL",
        "EINVAL",
        "ENOMEM",
        "u32",
        "u64",
    ];
    let mut out = Vec::with_capacity(len + 64);
    let mut state: u64 = 0x1234_5678_9abc_def1;
    let mut col = 0;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let w = WORDS[(state % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        col += w.len() + 1;
        if col > 70 || state.is_multiple_of(11) {
            out.push(b'\n');
            let indent = ((state >> 60) % 4) as usize;
            out.resize(out.len() + indent, b'\t');
            col = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
    (out, "generated-text")
}

fn collect(dir: &Path, out: &mut Vec<u8>, len: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if out.len() >= len {
            return;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            collect(&p, out, len);
        } else if m.is_file() {
            if let Ok(b) = std::fs::read(&p) {
                out.extend_from_slice(&b);
            }
        }
    }
}
