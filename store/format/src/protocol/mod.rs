//! The agent protocol (FORMAT.md §Agent protocol): length-framed binary messages between the
//! backup server and `xstore agent` on a client, over the stdin/stdout of an SSH session.
//!
//! Both directions are decoded as hostile input: every length is bounded by the frame, every
//! enum value checked, and nothing here panics. The server trusts no byte the agent sends (a
//! compromised client must not be able to harm the repository) and the agent trusts no request
//! (a stolen backup key must not be able to read outside the allow-list or write anything).

/// Protocol versions this build speaks.
pub const PROTOCOL_VERSIONS: &[u64] = &[1];
/// Capability: after the two hellos, each direction is one zstd stream, flushed after every
/// batch of frames (listings and requests shrink ~5×; chunk data passes through zstd again).
pub const CAP_ZSTD_STREAM: &[u8] = b"zstd-stream";
/// Capability, preferred over [`CAP_ZSTD_STREAM`]: after the two hellos each direction is a
/// sequence of plain frames (bodies that are mostly compressed chunk bytes already) and
/// flushed pieces of one zstd stream (everything else), so chunk data is not compressed twice.
pub const CAP_ZSTD_SEGMENTS: &[u8] = b"zstd-segments";
/// Capability: listing digests leave extended attributes out ([`listing_digest_meta`]), so an
/// agent answers "unchanged" for a directory without reading every entry's xattrs. Sound
/// because setting or removing an xattr changes the entry's ctime, which the digest covers
/// (the same trust that unchanged file contents rest on); a changed directory's listing still
/// carries the xattrs.
pub const CAP_DIGEST_META: &[u8] = b"digest-meta";
/// Capability: the agent may compress chunks at any level from its own floor up to the
/// level in the server's hello, choosing by what bounds the pull (on a fast link the client's
/// CPU: compress faster; on a slow one the link: compress up to the server's level). The
/// server verifies and stores whatever valid zstd frame arrives, as always.
pub const CAP_ADAPTIVE_LEVEL: &[u8] = b"adaptive-level";
/// Capability: the server may ask for a changed chunk as a delta against bytes it holds
/// (`ReadDeltas`, [`delta`]).
pub const CAP_CHUNK_DELTAS: &[u8] = b"chunk-deltas";
/// Capability (with [`CAP_ADAPTIVE_LEVEL`]): the server stores a chunk that arrives
/// uncompressed as it is, so the agent may send chunks uncompressed when even its fastest
/// level bounds the pull (a fast link). Without it a server compresses such chunks at its
/// own level, which would make the server's CPU the bound instead; `xstore compact` later
/// compresses what survives.
pub const CAP_RAW_CHUNKS: &[u8] = b"raw-chunks";
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

pub mod delta;
mod digest;
mod frame;
mod messages;
pub mod paths;
mod sync;
mod transport;

pub use digest::{
    listing_digest, listing_digest_meta, tree_listing_digest, tree_listing_digest_meta,
};
pub use frame::{read_frame, write_frame};
pub use messages::{AgentMsg, DeltaRange, ErrorCode, ServerMsg, WireChunk, WireEntry};
pub use sync::{SyncReply, SyncRequest, MAX_BLOBS_PER_REQUEST, SYNC_MAGIC};
pub use transport::{
    write_batched, FrameSink, Outgoing, SegmentReader, SegmentWriter, Transport, BATCH_BYTES,
    BATCH_WAIT,
};

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};

    use super::*;

    use crate::error::DecodeError;
    use crate::meta::{EntryKind, EntryMeta, SourceKind};
    use xstore_chunker::ChunkId;

    fn meta(kind: SourceKind) -> EntryMeta {
        EntryMeta {
            kind,
            attrs: crate::meta::Attrs {
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
            },
        }
    }

    fn samples() -> (Vec<AgentMsg>, Vec<ServerMsg>) {
        let entry = WireEntry {
            name: b"a".to_vec(),
            meta: Ok(meta(SourceKind::Stored(EntryKind::Symlink))),
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
                before: meta(SourceKind::Stored(EntryKind::File)),
                after: meta(SourceKind::Stored(EntryKind::File)),
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
            AgentMsg::Deltas {
                req: 10,
                programs: vec![
                    WireChunk {
                        raw_len: 3,
                        zstd: false,
                        bytes: vec![0, 1, 2],
                    },
                    WireChunk {
                        raw_len: 64,
                        zstd: true,
                        bytes: zstd::bulk::compress(&[1u8; 64], 3).unwrap_or_default(),
                    },
                ],
            },
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
            ServerMsg::ReadDeltas {
                req: 5,
                path: b"/etc/passwd".to_vec(),
                ranges: vec![
                    DeltaRange {
                        offset: 7,
                        len: 4096,
                        base: vec![[1; 8], [2; 8]],
                    },
                    DeltaRange {
                        offset: 1 << 33,
                        len: 1,
                        base: Vec::new(),
                    },
                ],
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
        // Chunks sent uncompressed (incompressible, or `raw-chunks` on a fast link) are not
        // compressed by the stream either; a file's chunk list without bytes is.
        let raw = AgentMsg::ChunkData {
            req: 3,
            chunks: vec![WireChunk::raw(&[7u8; 4096])],
        };
        assert!(!raw.outgoing().compress);
        let ids_only = AgentMsg::FileChunks {
            req: 4,
            before: meta(SourceKind::Stored(EntryKind::File)),
            after: meta(SourceKind::Stored(EntryKind::File)),
            chunks: Vec::new(),
            inline: None,
        };
        assert!(ids_only.outgoing().compress);
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
