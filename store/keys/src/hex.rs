//! Lowercase hex of fixed-size byte strings, as the slot file writes them. Encoding is the
//! format crate's `to_hex`; decoding here is strict (lowercase only, exact length).

use xstore_format::DecodeError;

pub use xstore_format::bytes::to_hex as encode;

/// Exactly `N` bytes from `2N` lowercase hex digits.
pub fn decode<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], DecodeError> {
    let invalid = |reason: String| DecodeError::Invalid {
        what,
        offset: 0,
        reason,
    };
    if text.len() != 2 * N {
        return Err(invalid(format!(
            "{} hex digits, expected {}",
            text.len(),
            2 * N
        )));
    }
    let mut out = [0u8; N];
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(invalid(format!(
                "{:?} is not a lowercase hex digit",
                char::from(c)
            ))),
        };
        let (Some(&hi), Some(&lo), Some(slot)) = (pair.first(), pair.get(1), out.get_mut(i)) else {
            return Err(invalid("odd length".into()));
        };
        *slot = digit(hi)? << 4 | digit(lo)?;
    }
    Ok(out)
}

/// Serde for `[u8; N]` as lowercase hex (`#[serde(with = "xstore_keys::hex::serde_array")]`).
pub mod serde_array {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as lowercase hex.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(v))
    }

    /// Reads exactly `N` bytes of lowercase hex.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        super::decode(&text, "hex field").map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn round_trip_and_refusals() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::encode(&bytes), "0001abff");
        assert_eq!(super::decode::<4>("0001abff", "x").unwrap(), bytes);
        for bad in ["0001abf", "0001ABFF", "0001abfg", "0001abff00", ""] {
            assert!(super::decode::<4>(bad, "x").is_err(), "{bad}");
        }
    }
}
