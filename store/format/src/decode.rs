//! Decoders exposed for fuzzing and tools: each takes untrusted bytes and returns a typed error.

use crate::error::DecodeError;

/// Decodes a `config` file.
pub fn config(bytes: &[u8]) -> Result<crate::config::Config, DecodeError> {
    crate::config::Config::decode(bytes)
}
/// Decodes a tree blob.
pub fn tree(bytes: &[u8]) -> Result<crate::tree::Tree, DecodeError> {
    crate::tree::Tree::decode(bytes)
}
/// Decodes a chunk-list blob.
pub fn chunk_list(bytes: &[u8]) -> Result<Vec<crate::tree::ChunkRef>, DecodeError> {
    crate::tree::decode_chunk_list(bytes)
}
/// Decodes a bundle's raw bytes: its member table, checked against them.
pub fn bundle(bytes: &[u8]) -> Result<Vec<crate::bundle::BundleMember>, DecodeError> {
    crate::bundle::decode_bundle(bytes)
}
/// Decodes a snapshot record.
pub fn snapshot(bytes: &[u8]) -> Result<crate::snapshot::Snapshot, DecodeError> {
    crate::snapshot::Snapshot::decode(bytes)
}
/// Decodes a pack: its trailer, then every blob it lists (header and content).
/// Returns the number of blobs that verified.
pub fn pack(bytes: &[u8]) -> Result<usize, DecodeError> {
    pack_with(&crate::encryption::Encryption::Plain, bytes)
}
/// [`pack`] for a pack of an encrypted repository sealed with `enc`'s keys (fuzzing uses
/// fixed keys, so that sealed inputs it mutates still reach the parsers behind the seals).
pub fn pack_with(enc: &crate::encryption::Encryption, bytes: &[u8]) -> Result<usize, DecodeError> {
    let entries = crate::pack::read_trailer(enc, bytes)?;
    let mut ok = 0;
    for e in &entries {
        crate::pack::read_blob(enc, bytes, e)?;
        ok += 1;
    }
    Ok(ok)
}
/// Decodes the blob header at `offset` of a pack and returns the blob's id if it is valid.
pub fn blob_header(
    enc: &crate::encryption::Encryption,
    bytes: &[u8],
    offset: u64,
) -> Result<xstore_chunker::ChunkId, DecodeError> {
    crate::pack::decode_blob_header(enc, bytes, offset).map(|e| e.id)
}
/// Decodes a stream of agent → server frames (what a pull reads from a client).
/// Returns the number of messages.
pub fn agent_stream(bytes: &[u8]) -> Result<usize, DecodeError> {
    frames(bytes, |body| {
        crate::protocol::AgentMsg::decode(body).map(drop)
    })
}
/// Decodes a stream of server → agent frames (what an agent reads). Returns the number
/// of messages.
pub fn server_stream(bytes: &[u8]) -> Result<usize, DecodeError> {
    frames(bytes, |body| {
        crate::protocol::ServerMsg::decode(body).map(drop)
    })
}
/// Decodes an agent → server stream under the `zstd-segments` transport (plain frames
/// and pieces of one zstd stream). Returns the number of messages.
pub fn segmented_agent_stream(bytes: &[u8]) -> Result<usize, DecodeError> {
    let invalid = |e: std::io::Error| DecodeError::Invalid {
        what: "segmented stream",
        offset: 0,
        reason: e.to_string(),
    };
    let mut reader = crate::protocol::SegmentReader::new(bytes).map_err(invalid)?;
    let mut n = 0;
    while let Some(body) = crate::protocol::read_frame(&mut reader).map_err(invalid)? {
        crate::protocol::AgentMsg::decode(&body)?;
        n += 1;
    }
    Ok(n)
}
fn frames(
    mut bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<(), DecodeError>,
) -> Result<usize, DecodeError> {
    let mut n = 0;
    loop {
        let at = bytes.len();
        match crate::protocol::read_frame(&mut bytes) {
            Ok(Some(body)) => decode(&body)?,
            Ok(None) => return Ok(n),
            Err(e) => {
                return Err(DecodeError::Invalid {
                    what: "frame",
                    offset: at,
                    reason: e.to_string(),
                })
            }
        }
        n += 1;
    }
}
/// Decodes an index blob-location value.
pub fn blob_location(bytes: &[u8]) -> Result<crate::records::BlobLoc, DecodeError> {
    crate::records::BlobLoc::decode(bytes)
}

/// Decodes a sync frame body both ways: as a replica's request (what `serve --read-only`
/// decodes) and as the server's reply (what a replica decodes). Ok when either side accepts.
pub fn sync_message(bytes: &[u8]) -> Result<(), DecodeError> {
    let request = crate::protocol::SyncRequest::decode(bytes).map(|_| ());
    let reply = crate::protocol::SyncReply::decode(bytes).map(|_| ());
    request.or(reply)
}
