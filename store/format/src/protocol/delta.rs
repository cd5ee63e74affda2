//! Chunk deltas (FORMAT.md §Agent protocol, capability `chunk-deltas`): a changed chunk sent
//! as copies of *sub-chunks* of bytes the server already holds (the previous version of the
//! file at the same offsets, its *base*) and literal bytes for the rest.
//!
//! Both sides cut with the same small content-defined chunker ([`sub_chunk_params`]), so an
//! edit disturbs only the sub-chunks around it. The server sends an 8-byte hash of each base
//! sub-chunk ([`base_signature`]); the agent cuts the new bytes, finds each sub-chunk's hash
//! among them and answers a program of copies and literals ([`encode_delta`]); the server runs
//! it against its own base ([`apply_delta`]) and verifies the result against the chunk's id
//! like any fetched chunk. A hash collision or a lying agent therefore yields bytes that fail
//! verification, never stored bytes that differ from the id.

use std::collections::HashMap;
use std::ops::Range;

use xstore_chunker::{chunk_slice, ChunkerParams};

use crate::bytes::{put_bytes, put_varint, Reader};
use crate::error::DecodeError;

/// Sub-chunk sizes: minimum, average, maximum (bytes).
pub const SUB_CHUNK_SIZES: (u32, u32, u32) = (256, 1024, 4096);
/// Bytes of a sub-chunk's hash (the first bytes of its BLAKE3).
pub const SUB_HASH_LEN: usize = 8;
/// A sub-chunk's hash.
pub type SubHash = [u8; SUB_HASH_LEN];

const OP_COPY: u8 = 0;
const OP_LITERAL: u8 = 1;

/// The chunker both sides cut sub-chunks with.
pub fn sub_chunk_params() -> ChunkerParams {
    let (min, avg, max) = SUB_CHUNK_SIZES;
    // Valid by construction; the test `sub_chunk_params_are_valid` checks it.
    ChunkerParams::new(min, avg, max).unwrap_or_default()
}

/// A base cut into sub-chunks: their hashes (sent to the agent) and their ranges in the base
/// (kept by the server to apply the answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseSignature {
    /// Each sub-chunk's hash, in base order.
    pub hashes: Vec<SubHash>,
    /// Each sub-chunk's bytes in the base.
    pub ranges: Vec<Range<usize>>,
}

fn sub_hash(id: &xstore_chunker::ChunkId) -> SubHash {
    let mut h = [0u8; SUB_HASH_LEN];
    h.copy_from_slice(&id.as_bytes()[..SUB_HASH_LEN]);
    h
}

/// Cuts `base` into sub-chunks and hashes them.
pub fn base_signature(base: &[u8]) -> BaseSignature {
    let params = sub_chunk_params();
    let mut sig = BaseSignature::default();
    for c in chunk_slice(&params, base) {
        let start = c.offset as usize;
        sig.hashes.push(sub_hash(&c.id));
        sig.ranges.push(start..start + c.length as usize);
    }
    sig
}

/// The program that rebuilds `new` from a base with sub-chunk hashes `base`: runs of base
/// sub-chunks copied (`0x00`, first index, count) and literal bytes (`0x01`, `bytes`).
pub fn encode_delta(new: &[u8], base: &[SubHash]) -> Vec<u8> {
    let mut index: HashMap<SubHash, u32> = HashMap::with_capacity(base.len());
    for (i, h) in base.iter().enumerate() {
        index.entry(*h).or_insert(i as u32);
    }
    let params = sub_chunk_params();
    let mut program = Vec::new();
    // The pending op: a run of copies (first, count) or a literal range of `new`.
    let mut copy: Option<(u32, u32)> = None;
    let mut literal: Option<Range<usize>> = None;
    let flush_copy = |program: &mut Vec<u8>, copy: &mut Option<(u32, u32)>| {
        if let Some((first, count)) = copy.take() {
            program.push(OP_COPY);
            put_varint(program, u64::from(first));
            put_varint(program, u64::from(count));
        }
    };
    let flush_literal = |program: &mut Vec<u8>, literal: &mut Option<Range<usize>>| {
        if let Some(r) = literal.take() {
            program.push(OP_LITERAL);
            // The range comes from cutting `new` itself.
            put_bytes(program, new.get(r).unwrap_or_default());
        }
    };
    for c in chunk_slice(&params, new) {
        let range = c.offset as usize..(c.offset as usize + c.length as usize);
        match index.get(&sub_hash(&c.id)) {
            Some(&i) => {
                flush_literal(&mut program, &mut literal);
                match &mut copy {
                    Some((first, count)) if *first + *count == i => *count += 1,
                    _ => {
                        flush_copy(&mut program, &mut copy);
                        copy = Some((i, 1));
                    }
                }
            }
            None => {
                flush_copy(&mut program, &mut copy);
                literal = Some(match literal.take() {
                    Some(r) => r.start..range.end,
                    None => range,
                });
            }
        }
    }
    flush_copy(&mut program, &mut copy);
    flush_literal(&mut program, &mut literal);
    program
}

/// Runs a delta `program` (from an untrusted agent) against `base`, cut as `sig.ranges`:
/// the rebuilt bytes, exactly `want` long, or what is wrong with the program.
pub fn apply_delta(
    program: &[u8],
    base: &[u8],
    sig: &BaseSignature,
    want: usize,
) -> Result<Vec<u8>, DecodeError> {
    let invalid = |offset: usize, reason: String| DecodeError::Invalid {
        what: "chunk delta",
        offset,
        reason,
    };
    let mut out = Vec::with_capacity(want);
    let mut r = Reader::new(program);
    while r.remaining() > 0 {
        let at = r.pos();
        match r.u8("delta op")? {
            OP_COPY => {
                let first = r.varint("copy index")?;
                let count = r.varint("copy count")?;
                let runs = first
                    .checked_add(count)
                    .filter(|_| count > 0)
                    .and_then(|end| sig.ranges.get(first as usize..end as usize));
                let Some(runs) = runs else {
                    return Err(invalid(
                        at,
                        format!(
                            "copy of sub-chunks {first}+{count} of a base of {}",
                            sig.ranges.len()
                        ),
                    ));
                };
                for range in runs {
                    let bytes = base
                        .get(range.clone())
                        .ok_or_else(|| invalid(at, "base range outside the base".into()))?;
                    if out.len() + bytes.len() > want {
                        return Err(invalid(at, format!("rebuilds more than {want} bytes")));
                    }
                    out.extend_from_slice(bytes);
                }
            }
            OP_LITERAL => {
                let bytes = r.bytes("literal", (want - out.len()) as u64)?;
                if bytes.is_empty() {
                    return Err(invalid(at, "an empty literal".into()));
                }
                out.extend_from_slice(bytes);
            }
            op => return Err(invalid(at, format!("unknown op {op}"))),
        }
    }
    if out.len() != want {
        return Err(invalid(
            program.len(),
            format!("rebuilds {} bytes, not {want}", out.len()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seed: u64) -> Vec<u8> {
        // Words from a small LCG: compressible, with content-defined cut points.
        let mut x = seed;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(format!("w{} ", (x >> 33) % 5000).as_bytes());
        }
        out.truncate(n);
        out
    }

    #[test]
    fn sub_chunk_params_are_valid() {
        let (min, avg, max) = SUB_CHUNK_SIZES;
        assert!(ChunkerParams::new(min, avg, max).is_ok());
        assert_eq!(sub_chunk_params().avg(), avg);
    }

    #[test]
    fn an_edit_costs_the_sub_chunks_around_it() {
        let base = text(200_000, 1);
        let mut new = base.clone();
        new[..64].copy_from_slice(&[b'0'; 64]);
        new.splice(100_000..100_000, b"inserted words".iter().copied());
        new.truncate(190_000);
        let sig = base_signature(&base);
        let program = encode_delta(&new, &sig.hashes);
        assert!(program.len() < 12_000, "{} bytes", program.len());
        assert_eq!(
            apply_delta(&program, &base, &sig, new.len()).expect("apply"),
            new
        );
        // Nothing in common: one literal.
        let other = text(5000, 2);
        let program = encode_delta(&other, &sig.hashes);
        assert_eq!(
            apply_delta(&program, &base, &sig, other.len()).expect("apply"),
            other
        );
        // An empty base.
        let empty = BaseSignature::default();
        let program = encode_delta(&new, &empty.hashes);
        assert_eq!(
            apply_delta(&program, &[], &empty, new.len()).expect("apply"),
            new
        );
    }

    #[test]
    fn hostile_programs_are_refused() {
        let base = text(20_000, 3);
        let sig = base_signature(&base);
        let n = sig.ranges.len() as u64;
        let copy = |first: u64, count: u64| {
            let mut p = vec![OP_COPY];
            put_varint(&mut p, first);
            put_varint(&mut p, count);
            p
        };
        let whole = copy(0, n);
        assert_eq!(
            apply_delta(&whole, &base, &sig, base.len()).expect("apply"),
            base
        );
        for (program, want) in [
            (copy(0, n + 1), base.len()),
            (copy(n, 1), base.len()),
            (copy(0, 0), base.len()),
            (copy(u64::MAX, 2), base.len()),
            (whole.clone(), base.len() - 1),
            (whole.clone(), base.len() + 1),
            (vec![OP_LITERAL, 0], 0),
            (vec![OP_LITERAL, 5, b'a'], 5),
            (vec![OP_LITERAL, 3, b'a', b'b', b'c'], 2),
            (vec![7], 0),
            (vec![OP_COPY], 1),
        ] {
            assert!(
                apply_delta(&program, &base, &sig, want).is_err(),
                "{program:?} {want}"
            );
        }
        // A signature whose ranges lie outside the base it came with.
        let bad = BaseSignature {
            hashes: vec![[0; SUB_HASH_LEN]],
            ranges: std::iter::once(0..10).collect(),
        };
        assert!(apply_delta(&copy(0, 1), &[1, 2, 3], &bad, 10).is_err());
    }
}
