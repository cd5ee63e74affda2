//! A compromised client for the tenant-boundary tests: it runs the real agent and stands
//! between it and the server, speaking the real protocol (xstore-format), and lies as its
//! scenario file says. sshd runs it as the forced command, so its bytes reach the same
//! server code as a real agent's.
//!
//! Usage: `hostile-agent SCENARIO AGENT [ARG…]`. Scenario lines (`#` comments):
//! - `claim PATH ID LEN`: the chunk-file reply for PATH names the one chunk ID of LEN bytes
//!   (and no inline bytes), whatever the file holds; repeated lines for one PATH add chunks.
//!   `claim PATH ID LEN xN` names the chunk N times in a row.
//! - `log FILE`: every byte range the server asks for is appended as `PATH OFFSET LEN`
//!   (`delta PATH OFFSET LEN` for a range asked for as a delta).
//! - `deltas`: offers `chunk-deltas`, so the server may ask for changed chunks as deltas.
//! - `forge-deltas`: offers `chunk-deltas` and answers every delta range with one literal of
//!   the range's length whose bytes are all `X`.
//! - `stderr BYTES`: writes an escape sequence and BYTES bytes without a newline to stderr
//!   before anything else.
//! - `quit`: closes the connection after the hellos (the pull fails).
//! - `list-bomb`: answers every directory listing with frames of tiny entries that never
//!   end (`more` set on each), as fast as the server takes them.
//! - `wide-dirs N`: answers every directory listing, at every depth, with a complete listing
//!   of N subdirectories (so every listing the server takes leads to N more).
//!
//! The transport is plain frames: the proxy offers no other capability in the agent's hello.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use xstore::ChunkId;
use xstore_format::protocol::{
    read_frame, write_frame, AgentMsg, ServerMsg, WireChunk, CAP_CHUNK_DELTAS,
};

#[derive(Default)]
struct Scenario {
    claims: HashMap<Vec<u8>, Vec<(ChunkId, u32)>>,
    log: Option<std::path::PathBuf>,
    stderr: usize,
    quit: bool,
    list_bomb: bool,
    wide_dirs: Option<u32>,
    deltas: bool,
    forge_deltas: bool,
}

fn parse_id(hex: &str) -> ChunkId {
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex id");
    }
    ChunkId(id)
}

fn scenario(path: &str) -> Scenario {
    let mut s = Scenario::default();
    for line in std::fs::read_to_string(path).expect("scenario").lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [w, ..] if w.starts_with('#') => {}
            ["claim", path, id, len] => s
                .claims
                .entry(path.as_bytes().to_vec())
                .or_default()
                .push((parse_id(id), len.parse().expect("length"))),
            ["claim", path, id, len, times] => {
                let n: usize = times
                    .strip_prefix('x')
                    .and_then(|n| n.parse().ok())
                    .expect("xN");
                let chunk = (parse_id(id), len.parse().expect("length"));
                s.claims
                    .entry(path.as_bytes().to_vec())
                    .or_default()
                    .extend(std::iter::repeat_n(chunk, n));
            }
            ["log", file] => s.log = Some(file.into()),
            ["stderr", n] => s.stderr = n.parse().expect("byte count"),
            ["quit"] => s.quit = true,
            ["list-bomb"] => s.list_bomb = true,
            ["deltas"] => s.deltas = true,
            ["forge-deltas"] => {
                s.deltas = true;
                s.forge_deltas = true;
            }
            ["wide-dirs", n] => s.wide_dirs = Some(n.parse().expect("entry count")),
            other => panic!("scenario line {other:?}"),
        }
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let s = scenario(&args[1]);
    if s.stderr > 0 {
        let mut err = std::io::stderr().lock();
        err.write_all(b"\x1b[1A\x1b[2KOK: all backed up\x1b]52;c;Y2xpcGJvYXJk\x07")
            .unwrap();
        let block = vec![b'A'; 64 * 1024];
        let mut left = s.stderr;
        while left > 0 {
            let n = left.min(block.len());
            err.write_all(&block[..n]).unwrap();
            left -= n;
        }
        err.flush().unwrap();
    }
    let mut agent = Command::new(&args[2])
        .args(&args[3..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the real agent");
    let mut to_agent = agent.stdin.take().unwrap();
    let mut from_agent = agent.stdout.take().unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut input = std::io::stdin();

    // The agent's hello, offering no transport capability: plain frames both ways.
    let deltas = s.deltas;
    let hello = read_frame(&mut from_agent).unwrap().expect("agent hello");
    let hello = match AgentMsg::decode(&hello).unwrap() {
        AgentMsg::Hello {
            versions,
            roots,
            software,
            ..
        } => AgentMsg::Hello {
            versions,
            capabilities: match deltas {
                true => vec![CAP_CHUNK_DELTAS.to_vec()],
                false => Vec::new(),
            },
            roots,
            software,
        },
        other => other,
    };
    {
        let mut out = out.lock().unwrap();
        write_frame(&mut *out, &hello.encode()).unwrap();
        out.flush().unwrap();
    }
    if s.quit {
        let _ = agent.kill();
        let _ = agent.wait();
        return;
    }

    // Server to agent, on a thread: remembers which path each chunk-file request names and
    // logs the ranges asked for.
    let paths: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::default();
    let log = s.log.clone();
    let requests = Arc::clone(&paths);
    // The lengths of each delta request's ranges, to forge answers of the right length.
    let delta_lens: Arc<Mutex<HashMap<u64, Vec<u32>>>> = Arc::default();
    let delta_requests = Arc::clone(&delta_lens);
    let bomb = (s.list_bomb || s.wide_dirs.is_some()).then(|| Arc::clone(&out));
    let wide_dirs = s.wide_dirs;
    let forward = std::thread::spawn(move || {
        while let Ok(Some(frame)) = read_frame(&mut input) {
            match ServerMsg::decode(&frame) {
                Ok(ServerMsg::List { req, .. }) if bomb.is_some() => {
                    let out = Arc::clone(bomb.as_ref().unwrap());
                    std::thread::spawn(move || list_bomb(req, &out, wide_dirs));
                    continue;
                }
                Ok(ServerMsg::ChunkFile { req, path, .. }) => {
                    requests.lock().unwrap().insert(req, path);
                }
                Ok(ServerMsg::ReadDeltas { req, path, ranges }) => {
                    delta_requests
                        .lock()
                        .unwrap()
                        .insert(req, ranges.iter().map(|r| r.len).collect());
                    let asked = ranges.iter().map(|r| (r.offset, r.len));
                    log_ranges(log.as_deref(), "delta ", &path, asked);
                }
                Ok(ServerMsg::ReadChunks { path, ranges, .. }) => {
                    log_ranges(log.as_deref(), "", &path, ranges.into_iter());
                }
                _ => {}
            }
            if write_frame(&mut to_agent, &frame).is_err() || to_agent.flush().is_err() {
                break;
            }
        }
    });

    // Agent to server: the lies.
    while let Ok(Some(frame)) = read_frame(&mut from_agent) {
        let frame = match AgentMsg::decode(&frame) {
            Ok(AgentMsg::Deltas { req, .. }) if s.forge_deltas => {
                let lens = delta_lens.lock().unwrap().remove(&req).unwrap_or_default();
                let programs = lens
                    .into_iter()
                    .map(|len| {
                        let mut program = vec![1u8];
                        let mut n = u64::from(len);
                        while n >= 0x80 {
                            program.push((n as u8) | 0x80);
                            n >>= 7;
                        }
                        program.push(n as u8);
                        program.extend(std::iter::repeat_n(b'X', len as usize));
                        WireChunk {
                            raw_len: program.len() as u32,
                            zstd: false,
                            bytes: program,
                        }
                    })
                    .collect();
                AgentMsg::Deltas { req, programs }.encode()
            }
            Ok(AgentMsg::FileChunks {
                req,
                mut before,
                mut after,
                ..
            }) if paths
                .lock()
                .unwrap()
                .get(&req)
                .is_some_and(|p| s.claims.contains_key(p)) =>
            {
                let path = paths.lock().unwrap()[&req].clone();
                let chunks = s.claims[&path].clone();
                let size = chunks.iter().map(|(_, l)| u64::from(*l)).sum();
                before.attrs.size = size;
                after.attrs.size = size;
                AgentMsg::FileChunks {
                    req,
                    before,
                    after,
                    chunks,
                    inline: None,
                }
                .encode()
            }
            _ => frame,
        };
        let mut out = out.lock().unwrap();
        if write_frame(&mut *out, &frame).is_err() || out.flush().is_err() {
            break;
        }
    }
    let _ = forward.join();
    let _ = agent.wait();
}

/// Appends `PREFIXPATH OFFSET LEN` per range to the scenario's log, if it names one.
fn log_ranges(
    log: Option<&std::path::Path>,
    prefix: &str,
    path: &[u8],
    ranges: impl Iterator<Item = (u64, u32)>,
) {
    let Some(log) = log else { return };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let path = String::from_utf8_lossy(path);
    for (offset, len) in ranges {
        writeln!(f, "{prefix}{path} {offset} {len}").unwrap();
    }
}

/// Listing frames of 20,000 short-named entries each: files without end (`more` always set)
/// until the server stops reading, or with `dirs`, that many subdirectories and an end.
fn list_bomb(req: u64, out: &Mutex<std::io::Stdout>, dirs: Option<u32>) {
    use xstore_format::meta::{Attrs, EntryKind, EntryMeta, SourceKind};
    use xstore_format::protocol::WireEntry;
    let meta = EntryMeta {
        kind: if dirs.is_some() {
            SourceKind::Stored(EntryKind::Dir)
        } else {
            SourceKind::Stored(EntryKind::File)
        },
        attrs: Attrs {
            mode: if dirs.is_some() { 0o755 } else { 0o644 },
            inode: 1,
            dev: 1,
            nlink: 1,
            ..Attrs::default()
        },
    };
    let mut name = 0u32;
    loop {
        let end = dirs.map_or(u32::MAX, |n| n.min(name.saturating_add(20_000)));
        let entries = (name..end)
            .map(|n| WireEntry {
                name: (n + 1).to_string().into_bytes(),
                meta: Ok(meta),
                target: None,
                xattrs: Vec::new(),
            })
            .take(20_000)
            .collect::<Vec<_>>();
        name += entries.len() as u32;
        let more = dirs.is_none_or(|n| name < n);
        let frame = AgentMsg::List { req, more, entries }.encode();
        let mut out = out.lock().unwrap();
        if write_frame(&mut *out, &frame).is_err() || out.flush().is_err() || !more {
            return;
        }
    }
}
