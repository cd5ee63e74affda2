//! Bundles: several small data blobs stored as one blob of kind
//! [`crate::pack::BlobKind::Bundle`], so that one zstd frame compresses them together
//! (FORMAT.md §Bundles). Small files compress poorly one by one: a frame starts with no
//! history, and each record pays its header, seal and trailer entry. `xstore compact` writes
//! bundles of the small data blobs that survived; ingest never does.
//!
//! A bundle's raw bytes are a member table followed by the members' bytes in table order:
//!
//! ```text
//! magic "XSBN" | version u8 = 1 | count varint (2..=MAX_BUNDLE_MEMBERS)
//! count × (id [32] | len varint (1..=MAX_BUNDLE_RAW))
//! the members' bytes, back to back (their lengths sum to what follows the table)
//! ```
//!
//! Members are data blobs; ids are unique and, in a repository, each member's bytes hash to
//! its id (readers verify that on every read, as for any blob).

use crate::bytes::{put_varint, Reader};
use crate::error::DecodeError;
use xstore_chunker::ChunkId;

/// First bytes of a bundle's raw bytes.
pub const BUNDLE_MAGIC: &[u8; 4] = b"XSBN";
/// The version this build writes and reads.
pub const BUNDLE_VERSION: u8 = 1;
/// Largest raw bundle (table and members): what a reader decompresses to read one member.
pub const MAX_BUNDLE_RAW: u32 = 4 << 20;
/// Most members of one bundle.
pub const MAX_BUNDLE_MEMBERS: usize = 4096;

/// One member of a bundle: its id, and where its bytes are in the bundle's raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleMember {
    /// The member's blob id.
    pub id: ChunkId,
    /// Offset of its bytes in the bundle's raw bytes.
    pub offset: u32,
    /// Its length.
    pub len: u32,
}

impl BundleMember {
    /// This member's bytes in `raw`, the raw bytes of the bundle its table came from.
    pub fn bytes<'r>(&self, raw: &'r [u8]) -> Result<&'r [u8], DecodeError> {
        let start = self.offset as usize;
        raw.get(start..start + self.len as usize)
            .ok_or_else(|| DecodeError::Invalid {
                what: "bundle member",
                offset: start,
                reason: format!("{} bytes past the bundle's {}", self.len, raw.len()),
            })
    }
}

/// The raw bytes of a bundle of `members` (id and bytes each), in the order given.
/// `None` when they break a bound of the format (count, total length, an empty member).
pub fn encode_bundle(members: &[(ChunkId, &[u8])]) -> Option<Vec<u8>> {
    if members.len() < 2 || members.len() > MAX_BUNDLE_MEMBERS {
        return None;
    }
    if members.iter().any(|(_, b)| b.is_empty()) {
        return None;
    }
    let body: usize = members.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(16 + members.len() * 35 + body);
    out.extend_from_slice(BUNDLE_MAGIC);
    out.push(BUNDLE_VERSION);
    put_varint(&mut out, members.len() as u64);
    for (id, bytes) in members {
        out.extend_from_slice(id.as_bytes());
        put_varint(&mut out, bytes.len() as u64);
    }
    for (_, bytes) in members {
        out.extend_from_slice(bytes);
    }
    (out.len() <= MAX_BUNDLE_RAW as usize).then_some(out)
}

/// The member table of a bundle's raw bytes, checked against them: the lengths sum to the
/// bytes after the table exactly, ids are unique, counts and lengths within the bounds.
/// Member bytes are not hashed here (a reader verifies the member it reads).
pub fn decode_bundle(raw: &[u8]) -> Result<Vec<BundleMember>, DecodeError> {
    if raw.len() > MAX_BUNDLE_RAW as usize {
        return Err(DecodeError::Invalid {
            what: "bundle",
            offset: 0,
            reason: format!("{} bytes, over {MAX_BUNDLE_RAW}", raw.len()),
        });
    }
    let mut r = Reader::new(raw);
    if r.array::<4>("bundle magic")? != *BUNDLE_MAGIC {
        return Err(DecodeError::Invalid {
            what: "bundle magic",
            offset: 0,
            reason: "not XSBN".into(),
        });
    }
    let version = r.u8("bundle version")?;
    if version != BUNDLE_VERSION {
        return Err(DecodeError::Invalid {
            what: "bundle version",
            offset: 4,
            reason: format!("version {version}, this build reads {BUNDLE_VERSION}"),
        });
    }
    let count_at = r.pos();
    // Each table entry takes at least 33 bytes and its member at least one more.
    let count = r.length("bundle member count", MAX_BUNDLE_MEMBERS as u64, 34)?;
    if count < 2 {
        return Err(DecodeError::Invalid {
            what: "bundle member count",
            offset: count_at,
            reason: format!("{count} members (a bundle holds at least 2)"),
        });
    }
    let mut table = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.id("bundle member id")?;
        let len_at = r.pos();
        let len = r.varint("bundle member length")?;
        if len == 0 || len > u64::from(MAX_BUNDLE_RAW) {
            return Err(DecodeError::Invalid {
                what: "bundle member length",
                offset: len_at,
                reason: format!("{len} bytes"),
            });
        }
        table.push((id, len as u32));
    }
    let body_start = r.pos();
    let body: u64 = table.iter().map(|(_, len)| u64::from(*len)).sum();
    if body != r.remaining() as u64 {
        return Err(DecodeError::Invalid {
            what: "bundle member lengths",
            offset: body_start,
            reason: format!(
                "they sum to {body} bytes; {} follow the table",
                r.remaining()
            ),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut members = Vec::with_capacity(count);
    let mut offset = body_start as u32;
    for (id, len) in table {
        if !seen.insert(id) {
            return Err(DecodeError::Invalid {
                what: "bundle member id",
                offset: body_start,
                reason: format!("{id} listed twice"),
            });
        }
        members.push(BundleMember { id, offset, len });
        // Bounded: the lengths sum to at most MAX_BUNDLE_RAW.
        offset += len;
    }
    Ok(members)
}

/// A bundle's raw bytes with its decoded member table: what readers keep to take several
/// members out of one decompression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The raw bytes (table and members).
    pub raw: Vec<u8>,
    /// The member table, checked against `raw` ([`decode_bundle`]).
    pub table: Vec<BundleMember>,
}

impl Bundle {
    /// Decodes the table of a bundle's raw bytes ([`decode_bundle`]).
    pub fn decode(raw: Vec<u8>) -> Result<Bundle, DecodeError> {
        let table = decode_bundle(&raw)?;
        Ok(Bundle { raw, table })
    }

    /// The bytes of member `id`: the table must list `id` at `member_offset` with `len`
    /// bytes, and the bytes must hash to `id` (with `enc`'s ids: keyed in an encrypted
    /// repository).
    pub fn member(
        &self,
        enc: &crate::encryption::Encryption,
        id: &ChunkId,
        member_offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, DecodeError> {
        let member = self
            .table
            .iter()
            .find(|m| m.offset == member_offset)
            .filter(|m| m.id == *id && m.len == len)
            .ok_or_else(|| DecodeError::Invalid {
                what: "bundle member",
                offset: member_offset as usize,
                reason: format!("the bundle holds no member {id} of {len} bytes there"),
            })?;
        let bytes = member.bytes(&self.raw)?;
        if enc.id_of(bytes) != *id {
            return Err(DecodeError::Checksum {
                what: "bundle member content",
            });
        }
        Ok(bytes.to_vec())
    }
}

/// Each member's part of its bundle record's `span` (header and stored bytes), in table
/// order: ⌊span × len / total⌋ for every member but the first, the first takes the rest, so
/// the parts sum to `span` exactly. Dead bytes, usage and gc count a bundled blob by its part.
pub fn member_shares(span: u64, members: &[BundleMember]) -> Vec<u32> {
    let total: u64 = members.iter().map(|m| u64::from(m.len)).sum::<u64>().max(1);
    let mut shares: Vec<u32> = members
        .iter()
        // Below `span` (u32 stored length plus the header): fits a u32 but for the largest
        // records, whose first member then takes what the cast loses.
        .map(|m| {
            u32::try_from(u128::from(span) * u128::from(m.len) / u128::from(total)).unwrap_or(0)
        })
        .collect();
    let rest: u64 = shares.iter().skip(1).map(|s| u64::from(*s)).sum();
    if let Some(first) = shares.first_mut() {
        *first = u32::try_from(span.saturating_sub(rest)).unwrap_or(u32::MAX);
    }
    shares
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<(ChunkId, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let bytes = format!("member {i} ").repeat(i + 1).into_bytes();
                (ChunkId::of(&bytes), bytes)
            })
            .collect()
    }

    fn encode(m: &[(ChunkId, Vec<u8>)]) -> Option<Vec<u8>> {
        let refs: Vec<(ChunkId, &[u8])> = m.iter().map(|(i, b)| (*i, &b[..])).collect();
        encode_bundle(&refs)
    }

    #[test]
    fn members_come_back_at_their_offsets() {
        let m = members(5);
        let raw = encode(&m).unwrap();
        let table = decode_bundle(&raw).unwrap();
        assert_eq!(table.len(), 5);
        for ((id, bytes), member) in m.iter().zip(&table) {
            assert_eq!(member.id, *id);
            assert_eq!(member.bytes(&raw).unwrap(), &bytes[..]);
        }
        assert_eq!(
            table.last().map(|t| (t.offset + t.len) as usize),
            Some(raw.len())
        );
    }

    #[test]
    fn shares_sum_to_the_span() {
        let raw = encode(&members(7)).unwrap();
        let table = decode_bundle(&raw).unwrap();
        for span in [0u64, 1, 48 + 100, 48 + 4096, 48 + (4 << 20)] {
            let shares = member_shares(span, &table);
            assert_eq!(shares.iter().map(|s| u64::from(*s)).sum::<u64>(), span);
            // Larger members take larger parts (but for the first, which takes the rest).
            assert!(
                shares.windows(2).skip(1).all(|w| w[0] <= w[1]),
                "{shares:?}"
            );
        }
    }

    #[test]
    fn bounds_are_kept_when_encoding() {
        assert_eq!(encode(&members(1)), None);
        let mut m = members(2);
        m[1].1.clear();
        assert_eq!(encode(&m), None);
        let big = vec![7u8; MAX_BUNDLE_RAW as usize];
        let over = [
            (ChunkId::of(&big), &big[..]),
            (ChunkId::of(b"x"), &b"x"[..]),
        ];
        assert_eq!(encode_bundle(&over), None);
    }

    #[test]
    fn hostile_bundles_are_refused() {
        let raw = encode(&members(3)).unwrap();
        let table_end = 4 + 1 + 1 + 3 * (32 + 1);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("magic", [b"XSBX", &raw[4..]].concat()),
            ("version", [&raw[..4], &[2], &raw[5..]].concat()),
            ("one member", [&raw[..5], &[1], &raw[6..]].concat()),
            (
                "count past the input",
                [&raw[..5], &[100], &raw[6..]].concat(),
            ),
            ("short body", raw[..raw.len() - 1].to_vec()),
            ("long body", [&raw[..], &[0]].concat()),
            ("cut table", raw[..table_end - 3].to_vec()),
        ];
        // A member of length 0 (the first member's length byte).
        let mut zero = raw.clone();
        zero[6 + 32] = 0;
        cases.push(("zero length", zero));
        // The same id twice, lengths still summing right.
        let m = members(2);
        let twice = [(m[0].0, &m[0].1[..]), (m[0].0, &m[1].1[..])];
        cases.push(("id twice", encode_bundle(&twice).unwrap()));
        for (name, bytes) in cases {
            assert!(decode_bundle(&bytes).is_err(), "{name} accepted");
        }
        // Every cut and every flipped byte of the table decodes or errs, never panics.
        for cut in 0..raw.len() {
            let _ = decode_bundle(&raw[..cut]);
        }
        for i in 0..table_end {
            let mut bad = raw.clone();
            bad[i] ^= 0x55;
            let _ = decode_bundle(&bad);
        }
        let member = BundleMember {
            id: ChunkId::of(b""),
            offset: raw.len() as u32 - 1,
            len: 2,
        };
        assert!(member.bytes(&raw).is_err());
    }

    #[test]
    fn a_member_is_served_only_as_the_table_and_its_id_say() {
        let enc = crate::encryption::Encryption::Plain;
        let m = members(3);
        let bundle = Bundle::decode(encode(&m).unwrap()).unwrap();
        let t = bundle.table[1];
        assert_eq!(bundle.member(&enc, &t.id, t.offset, t.len).unwrap(), m[1].1);
        // Another id, offset or length than the table's: refused.
        assert!(bundle.member(&enc, &m[0].0, t.offset, t.len).is_err());
        assert!(bundle.member(&enc, &t.id, t.offset + 1, t.len).is_err());
        assert!(bundle.member(&enc, &t.id, t.offset, t.len - 1).is_err());
        // The table names the id, but the bytes were changed: the hash refuses them.
        let mut raw = bundle.raw.clone();
        raw[t.offset as usize] ^= 1;
        let forged = Bundle::decode(raw).unwrap();
        assert!(matches!(
            forged.member(&enc, &t.id, t.offset, t.len),
            Err(DecodeError::Checksum { .. })
        ));
    }
}
