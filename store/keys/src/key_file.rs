//! The key file: 32 random bytes that open a key-file slot, for jobs that run without a
//! person (cron, systemd). Its text form is one line after a header line:
//! `xstore key file 1` then 64 lowercase hex digits.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::error::KeyError;
use crate::master::KEY_LEN;
use xstore_format::DecodeError;

const HEADER: &str = "xstore key file 1";

/// The secret of a key file. Zeroed when dropped; `Debug` shows nothing of it.
pub struct KeyFileKey([u8; KEY_LEN]);

impl KeyFileKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(KeyFileKey(key))
    }

    /// The file's text (header line, hex line).
    pub fn encode(&self) -> Zeroizing<String> {
        let hex = Zeroizing::new(crate::hex::encode(&self.0));
        // Sized once: a String that grows leaves copies of the key behind, unzeroed.
        let mut text = Zeroizing::new(String::with_capacity(HEADER.len() + hex.len() + 2));
        text.push_str(HEADER);
        text.push('\n');
        text.push_str(&hex);
        text.push('\n');
        text
    }

    /// The key from a file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |reason: &str| DecodeError::Invalid {
            what: "key file",
            offset: 0,
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not text"))?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(invalid("its first line is not `xstore key file 1`"));
        }
        let key = lines.next().ok_or_else(|| invalid("no key line"))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(invalid("text after the key line"));
        }
        Ok(KeyFileKey(crate::hex::decode(key.trim(), "key file")?))
    }

    /// The key that wraps the master key in this file's slot.
    pub(crate) fn wrapping_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(blake3::derive_key(
            "xstore 2026-12-07 key file wrapping",
            &self.0,
        ))
    }

    /// Which slot this file opens: derived from the key, revealing nothing of it.
    pub(crate) fn id(&self) -> [u8; 16] {
        let full = blake3::derive_key("xstore 2026-12-07 key file id", &self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(full.get(..16).unwrap_or(&[0; 16]));
        id
    }
}

impl Drop for KeyFileKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for KeyFileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFileKey(..)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_text_round_trips_and_garbage_is_refused() {
        let key = KeyFileKey::generate().unwrap();
        let text = key.encode();
        let back = KeyFileKey::decode(text.as_bytes()).unwrap();
        assert_eq!(back.0, key.0);
        assert_eq!(back.id(), key.id());
        for bad in [
            &b""[..],
            b"xstore key file 1\n",
            b"xstore key file 2\n00\n",
            b"\xff\xfe",
            b"xstore key file 1\nzz\n",
        ] {
            assert!(KeyFileKey::decode(bad).is_err(), "{bad:?}");
        }
        let mut extra = text.to_string();
        extra.push_str("more\n");
        assert!(KeyFileKey::decode(extra.as_bytes()).is_err());
    }
}
