//! Little-endian field readers and writers shared by every hand-written decoder.
//! Every read is bounds-checked and returns a typed [`DecodeError`]; nothing here panics.

use crate::error::DecodeError;
use xstore_chunker::ChunkId;

/// A cursor over untrusted bytes.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// The next `n` bytes of field `what`, or [`DecodeError::Truncated`].
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        // The error is built only on failure: decoders call this for every field.
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| Some((end, self.data.get(self.pos..end)?)));
        match slice {
            Some((end, s)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                need: n,
                have: self.remaining(),
            }),
        }
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// A little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// A little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A little-endian i64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    /// A 32-byte id.
    pub fn id(&mut self, what: &'static str) -> Result<ChunkId, DecodeError> {
        Ok(ChunkId(self.array(what)?))
    }

    /// An unsigned LEB128 varint of at most 10 bytes that fits in u64.
    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(DecodeError::Invalid {
                    what,
                    offset: start,
                    reason: "varint overflows 64 bits".into(),
                });
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                // Only the shortest encoding is valid: blobs are content-addressed, so one
                // value must have exactly one byte form.
                if i > 0 && b == 0 {
                    return Err(DecodeError::Invalid {
                        what,
                        offset: start,
                        reason: "varint is not minimally encoded".into(),
                    });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid {
            what,
            offset: start,
            reason: "varint longer than 10 bytes".into(),
        })
    }

    /// A varint length, refused when larger than `limit` or than the bytes that remain
    /// divided by `min_item_size` (so hostile counts cannot force big allocations).
    pub fn length(
        &mut self,
        what: &'static str,
        limit: u64,
        min_item_size: usize,
    ) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.varint(what)?;
        let fits = (self.remaining() / min_item_size.max(1)) as u64;
        if n > limit || n > fits {
            return Err(DecodeError::Invalid {
                what,
                offset,
                reason: format!("length {n} exceeds limit or remaining input"),
            });
        }
        Ok(n as usize)
    }

    /// A varint-length-prefixed byte string of at most `limit` bytes.
    pub fn bytes(&mut self, what: &'static str, limit: u64) -> Result<&'a [u8], DecodeError> {
        let n = self.length(what, limit, 1)?;
        self.take(n, what)
    }

    /// Fails with [`DecodeError::Trailing`] unless every byte was read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::Trailing {
                what,
                extra: self.remaining(),
            });
        }
        Ok(())
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a varint length, then `b`.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Lowercase hex of arbitrary bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_overflow() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader::new(&b);
            assert_eq!(r.varint("v").unwrap(), v);
            r.finish("v").unwrap();
        }
        assert!(Reader::new(&[0xff; 11]).varint("v").is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint("v")
                .is_err()
        );
        assert!(Reader::new(&[0x80]).varint("v").is_err());
        assert!(Reader::new(&[0x80, 0x00]).varint("v").is_err());
    }

    #[test]
    fn hostile_length_is_refused() {
        let mut b = Vec::new();
        put_varint(&mut b, 1 << 40);
        assert!(Reader::new(&b).bytes("name", 4096).is_err());
        let mut b = Vec::new();
        put_varint(&mut b, 10);
        b.extend_from_slice(b"short");
        assert!(Reader::new(&b).bytes("name", 4096).is_err());
    }
}
