//! Hostile input for every decoder: real samples from a repository, truncated at every length
//! and with bits flipped everywhere, plus every file of the fuzz corpora. Nothing may panic;
//! damaged data must never decode to something else silently.
//!
//! `XSTORE_WRITE_FUZZ_SEEDS=1 cargo test -p xstore-tests --test decoders` refreshes the seed
//! corpora under `fuzz/corpus/` from the samples.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use xstore::{BackupOptions, InitOptions, LocalSource, Repository, Source};
use xstore_format::decode;
use xstore_tests::make_fixture;

struct Samples {
    config: Vec<u8>,
    pack: Vec<u8>,
    tree: Vec<u8>,
    snapshot: Vec<u8>,
    blob_location: Vec<u8>,
    bundled_location: Vec<u8>,
    bundle: Vec<u8>,
    chunk_list: Vec<u8>,
    agent_stream: Vec<u8>,
    server_requests: Vec<u8>,
    segmented_agent_stream: Vec<u8>,
}

/// A session's frames in each direction, as an agent and a server exchange them, and the
/// agent's frames after its hello under the `zstd-segments` transport.
fn protocol_samples(root: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use xstore_format::protocol::{write_frame, AgentMsg, ServerMsg, WireChunk, WireEntry};
    let meta = xstore::LocalSource.stat(root).unwrap();
    let agent = [
        AgentMsg::Hello {
            versions: vec![1],
            capabilities: Vec::new(),
            roots: vec![b"/etc".to_vec()],
            software: b"xstore 0.1.0".to_vec(),
        },
        AgentMsg::List {
            req: 1,
            more: false,
            entries: vec![WireEntry {
                name: b"hosts".to_vec(),
                meta: Ok(meta),
                target: Some(b"../x".to_vec()),
                xattrs: vec![(b"user.a".to_vec(), b"b".to_vec())],
            }],
        },
        AgentMsg::FileChunks {
            req: 2,
            before: meta,
            after: meta,
            chunks: vec![(xstore::ChunkId::of(b"abc"), 3)],
            inline: None,
        },
        AgentMsg::ChunkData {
            req: 3,
            chunks: vec![WireChunk {
                raw_len: 3,
                zstd: false,
                bytes: b"abc".to_vec(),
            }],
        },
        AgentMsg::ChunkData {
            req: 4,
            chunks: vec![WireChunk {
                raw_len: 64,
                zstd: true,
                bytes: zstd::bulk::compress(&[7u8; 64], 3).unwrap(),
            }],
        },
        AgentMsg::Deltas {
            req: 5,
            programs: vec![WireChunk {
                raw_len: 4,
                zstd: false,
                bytes: vec![1, 2, b'h', b'i'],
            }],
        },
    ];
    let server = [
        ServerMsg::Hello {
            version: 1,
            min: 256,
            avg: 1024,
            max: 4096,
            level: 3,
            capabilities: Vec::new(),
        },
        ServerMsg::List {
            req: 1,
            path: b"/etc".to_vec(),
            known: Some([3; 32]),
        },
        ServerMsg::ChunkFile {
            req: 2,
            path: b"/etc/hosts".to_vec(),
            inline_max: 65536,
        },
        ServerMsg::ReadChunks {
            req: 3,
            path: b"/etc/hosts".to_vec(),
            ranges: vec![(0, 3)],
        },
        ServerMsg::ReadDeltas {
            req: 4,
            path: b"/etc/hosts".to_vec(),
            ranges: vec![xstore_format::protocol::DeltaRange {
                offset: 0,
                len: 3,
                base: vec![[9; 8]],
            }],
        },
        ServerMsg::Bye,
    ];
    let (mut a, mut s) = (Vec::new(), Vec::new());
    for m in &agent {
        write_frame(&mut a, &m.encode()).unwrap();
    }
    for m in &server {
        write_frame(&mut s, &m.encode()).unwrap();
    }
    let mut segmented = xstore_format::protocol::SegmentWriter::new(Vec::new()).unwrap();
    for m in &agent[1..] {
        let out = m.outgoing();
        segmented.frame(&out.body, out.compress).unwrap();
    }
    segmented.flush().unwrap();
    (a, s, segmented.into_inner())
}

fn samples() -> Samples {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_fixture(&src, 30);
    let repo_dir = work.path().join("repo");
    let init = InitOptions {
        chunker: xstore::ChunkerParams::new(256, 1024, 4096).unwrap(),
        ..InitOptions::default()
    };
    let repo = Repository::init(&repo_dir, &init).unwrap();
    // A small tree so that the pack sample stays small.
    std::fs::create_dir(work.path().join("small")).unwrap();
    std::fs::write(work.path().join("small/a"), b"tiny").unwrap();
    let snap = repo
        .backup(
            &LocalSource,
            &BackupOptions {
                ..xstore::BackupOptions::new(
                    xstore_tests::host_name("h"),
                    vec![work.path().join("small")],
                )
            },
        )
        .unwrap();
    let pack_id = repo.blob_location(&snap.root).unwrap().unwrap().pack;
    let hex = pack_id.to_string();
    let pack = std::fs::read(
        repo_dir
            .join("packs")
            .join(&hex[..2])
            .join(format!("{hex}.pack")),
    )
    .unwrap();
    // A bigger tree (the fixture) for the tree sample.
    let big = repo
        .backup(
            &LocalSource,
            &BackupOptions {
                ..xstore::BackupOptions::new(xstore_tests::host_name("h2"), vec![src.clone()])
            },
        )
        .unwrap();
    let sub = format!("{}/sub", src.canonicalize().unwrap().display());
    let tree_id = match repo.lookup(&big, &sub).unwrap() {
        xstore::Node::Entry(e) => e.subtree().unwrap(),
        _ => unreachable!(),
    };
    let (agent_stream, server_requests, segmented_agent_stream) = protocol_samples(&src);
    Samples {
        agent_stream,
        server_requests,
        segmented_agent_stream,
        config: std::fs::read(repo_dir.join("config")).unwrap(),
        pack,
        tree: repo.read_blob(&tree_id).unwrap(),
        snapshot: big.encode(),
        blob_location: repo
            .blob_location(&tree_id)
            .unwrap()
            .unwrap()
            .encode_for_tools(),
        bundled_location: bundled_location(),
        bundle: bundle_sample(),
        chunk_list: xstore_format::tree::encode_chunk_list(&[
            xstore::ChunkRef {
                id: xstore::ChunkId::of(b"a"),
                len: 1,
            },
            xstore::ChunkRef {
                id: xstore::ChunkId::of(b"bc"),
                len: 2,
            },
        ]),
    }
}

/// A bundle of three small members (FORMAT.md §Bundles).
fn bundle_sample() -> Vec<u8> {
    let members: Vec<Vec<u8>> = (0..3u8)
        .map(|i| vec![b'a' + i; 40 + usize::from(i)])
        .collect();
    let refs: Vec<(xstore::ChunkId, &[u8])> = members
        .iter()
        .map(|m| (xstore::ChunkId::of(m), &m[..]))
        .collect();
    xstore_format::bundle::encode_bundle(&refs).unwrap()
}

/// The 66-byte index value of a blob inside a bundle.
fn bundled_location() -> Vec<u8> {
    let raw = bundle_sample();
    let table = xstore_format::bundle::decode_bundle(&raw).unwrap();
    let bundle = xstore_format::pack::PackEntry {
        id: xstore::ChunkId::of(&raw),
        kind: xstore_format::pack::BlobKind::Bundle,
        compression: xstore_format::pack::Compression::Zstd,
        raw_len: raw.len() as u32,
        stored_len: 90,
        offset: 16,
    };
    let shares = xstore_format::bundle::member_shares(bundle.span(), &table);
    xstore_format::records::BlobLoc::in_bundle(
        xstore::ChunkId::of(b"pack"),
        &bundle,
        &table[1],
        shares[1],
        2,
    )
    .encode_for_tools()
}

type Decoder = fn(&[u8]) -> bool;

fn decoders() -> Vec<(&'static str, Decoder)> {
    vec![
        ("config", |b| decode::config(b).is_ok()),
        ("pack", |b| decode::pack(b).is_ok()),
        ("tree", |b| decode::tree(b).is_ok()),
        ("chunk_list", |b| decode::chunk_list(b).is_ok()),
        ("snapshot", |b| decode::snapshot(b).is_ok()),
        ("blob_location", |b| decode::blob_location(b).is_ok()),
        ("bundle", |b| decode::bundle(b).is_ok()),
        ("agent_stream", |b| decode::agent_stream(b).is_ok()),
        ("server_requests", |b| decode::server_stream(b).is_ok()),
        ("segmented_agent_stream", |b| {
            decode::segmented_agent_stream(b).is_ok()
        }),
        ("sync_message", |b| decode::sync_message(b).is_ok()),
    ]
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn samples_survive_truncation_and_bit_flips() {
    let s = samples();
    let all: Vec<(&str, &Vec<u8>)> = vec![
        ("config", &s.config),
        ("pack", &s.pack),
        ("tree", &s.tree),
        ("snapshot", &s.snapshot),
        ("blob_location", &s.blob_location),
        ("blob_location", &s.bundled_location),
        ("bundle", &s.bundle),
        ("chunk_list", &s.chunk_list),
        ("agent_stream", &s.agent_stream),
        ("server_requests", &s.server_requests),
        ("segmented_agent_stream", &s.segmented_agent_stream),
    ];
    let table = decoders();
    for (name, bytes) in &all {
        let dec = table.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(dec(bytes), "{name}: the valid sample does not decode");
        if std::env::var_os("XSTORE_WRITE_FUZZ_SEEDS").is_some() {
            let dir = corpus_dir(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("seed-valid"), bytes).unwrap();
        }
        // Every decoder sees every sample (cross-feeding finds confused parsers).
        for (_, other) in &table {
            for cut in (0..bytes.len()).step_by((bytes.len() / 400).max(1)) {
                other(&bytes[..cut]);
            }
        }
        // Binary formats are checksummed or validated so tightly that a flipped bit never
        // decodes; JSON may legitimately stay valid (e.g. a digit in a counter), so only
        // no-panic is required there.
        let step = (bytes.len() / 2000).max(1);
        for i in (0..bytes.len()).step_by(step) {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.to_vec();
                bad[i] ^= bit;
                let ok = dec(&bad);
                // A pack that still decodes after a flip must yield the same blobs: every blob is
                // re-hashed against its id, so only bytes that do not change content (e.g. zstd
                // frame flags) can flip unnoticed here; the pack's own hash catches those.
                if *name == "pack" && ok {
                    assert_eq!(
                        decode::pack(&bad).unwrap(),
                        decode::pack(bytes).unwrap(),
                        "flip at {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn fuzz_corpora_replay_without_panics() {
    let mut replayed = 0;
    for (name, dec) in decoders() {
        let Ok(rd) = std::fs::read_dir(corpus_dir(name)) else {
            continue;
        };
        for f in rd {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            dec(&bytes);
            replayed += 1;
        }
    }
    assert!(
        replayed >= 6,
        "seed corpora missing under fuzz/corpus ({replayed} files)"
    );
}
