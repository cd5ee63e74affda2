//! The one module that uses bincode: small fixed-shape index values (packs, hosts).

use serde::{de::DeserializeOwned, Serialize};

use crate::error::DecodeError;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 20 }>()
}

/// Encodes an index value with the fixed bincode configuration (FORMAT.md §Index).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).unwrap_or_default()
}

/// Decodes an index value; `what` names it in the error. Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| DecodeError::Invalid {
            what,
            offset: 0,
            reason: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(DecodeError::Trailing {
            what,
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}
