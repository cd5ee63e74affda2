//! The master key of an encrypted repository, its recovery text, and the keys derived from it.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::error::KeyError;
use xstore_format::DecodeError;

/// Length of every key here, in bytes.
pub const KEY_LEN: usize = 32;

/// The repository's master key: 32 random bytes. Zeroed when dropped; `Debug` shows nothing
/// of it. Everything the repository seals uses a key derived from it ([`MasterKey::derive`]),
/// never the master key itself.
pub struct MasterKey([u8; KEY_LEN]);

/// What a derived key is for. Each purpose has its own BLAKE3 key-derivation context, so
/// the keys are independent: one leaking reveals nothing of another or of the master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// Keyed BLAKE3 of a blob's bytes: the blob ids of an encrypted repository.
    BlobId,
    /// The AEAD key blobs are sealed with.
    BlobSeal,
    /// The AEAD key pack trailers are sealed with.
    TrailerSeal,
    /// The key of the content-defined chunker's gear table.
    Chunker,
    /// Names the master key in the repository's `config` (its first 16 bytes, hex), so that
    /// slots wrapping another master key are refused before anything is sealed with it.
    KeyId,
}

impl Purpose {
    /// The BLAKE3 `derive_key` context (fixed forever: changing it changes every key).
    fn context(self) -> &'static str {
        match self {
            Purpose::BlobId => "xstore 2026-12-07 blob ids",
            Purpose::BlobSeal => "xstore 2026-12-07 blob sealing",
            Purpose::TrailerSeal => "xstore 2026-12-07 pack trailer sealing",
            Purpose::Chunker => "xstore 2026-12-07 chunker gear table",
            Purpose::KeyId => "xstore 2026-12-07 master key id",
        }
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(MasterKey(key))
    }

    /// The key for `purpose` (BLAKE3 key derivation from the master key).
    pub fn derive(&self, purpose: Purpose) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(blake3::derive_key(purpose.context(), &self.0))
    }

    /// The keys a repository identifies and seals its blobs with (FORMAT.md §Encryption):
    /// blob ids keyed with [`Purpose::BlobId`], blobs sealed with [`Purpose::BlobSeal`],
    /// blob headers and trailers with [`Purpose::TrailerSeal`].
    pub fn repository_keys(&self) -> xstore_format::encryption::RepositoryKeys {
        xstore_format::encryption::RepositoryKeys::new(
            &self.derive(Purpose::BlobId),
            &self.derive(Purpose::BlobSeal),
            &self.derive(Purpose::TrailerSeal),
        )
    }

    /// This key's name in `config`: 16 bytes of [`Purpose::KeyId`], 32 hex digits.
    pub fn key_id(&self) -> String {
        let derived = self.derive(Purpose::KeyId);
        crate::hex::encode(derived.get(..16).unwrap_or_default())
    }

    /// The bytes, for wrapping into a key slot.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key from unwrapped bytes.
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(bytes)
    }

    /// A copy for paper (`xstore key export`): `xk1-` and the key as sixteen groups of four
    /// hex digits, then a group of four that checks them, so a mistyped digit is caught.
    pub fn to_recovery_text(&self) -> Zeroizing<String> {
        let hex = Zeroizing::new(crate::hex::encode(&self.0));
        // Sized once: a String that grows leaves copies of the key behind, unzeroed.
        let mut text = Zeroizing::new(String::with_capacity(RECOVERY_PREFIX.len() + 17 * 5));
        text.push_str(RECOVERY_PREFIX);
        for (i, c) in hex.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                text.push('-');
            }
            text.push(c);
        }
        text.push('-');
        text.push_str(&recovery_check(&self.0));
        text
    }

    /// The key from its recovery text (spaces, line breaks and case do not matter).
    pub fn from_recovery_text(text: &str) -> Result<Self, KeyError> {
        let invalid = |reason: &str| DecodeError::Invalid {
            what: "recovery text",
            offset: 0,
            reason: reason.to_string(),
        };
        if !text.is_ascii() {
            return Err(
                invalid("it holds a character that is not a hex digit, `-` or space").into(),
            );
        }
        let mut flat = Zeroizing::new(String::with_capacity(text.len()));
        flat.extend(
            text.chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| c.to_ascii_lowercase()),
        );
        let body = flat
            .strip_prefix(RECOVERY_PREFIX)
            .ok_or_else(|| invalid("it does not start with xk1-"))?;
        let mut digits = Zeroizing::new(String::with_capacity(body.len()));
        digits.extend(body.chars().filter(|&c| c != '-'));
        if digits.len() != 2 * KEY_LEN + 4 {
            return Err(invalid("it needs 17 groups of 4 hex digits").into());
        }
        let (key_hex, check) = digits.split_at(2 * KEY_LEN);
        let key = MasterKey(crate::hex::decode(key_hex, "recovery text")?);
        if recovery_check(&key.0) != check {
            return Err(invalid("its last group does not match: a digit is mistyped").into());
        }
        Ok(key)
    }
}

const RECOVERY_PREFIX: &str = "xk1-";

/// Four hex digits of BLAKE3 of the key, to catch typing mistakes (not a secret check).
fn recovery_check(key: &[u8; KEY_LEN]) -> String {
    crate::hex::encode(blake3::hash(key).as_bytes().get(..2).unwrap_or_default())
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recovery_text_round_trips_and_catches_a_mistyped_digit() {
        let key = MasterKey::generate().unwrap();
        let text = key.to_recovery_text();
        assert!(text.starts_with("xk1-"));
        assert_eq!(text.len(), 4 + 17 * 5 - 1);
        let back = MasterKey::from_recovery_text(&text.to_uppercase().replace('-', " - ")).unwrap();
        assert_eq!(back.bytes(), key.bytes());
        // Change one digit of the key part.
        let mut typo: Vec<char> = text.chars().collect();
        typo[4] = if typo[4] == '0' { '1' } else { '0' };
        let typo: String = typo.into_iter().collect();
        let e = MasterKey::from_recovery_text(&typo).unwrap_err();
        assert!(e.to_string().contains("mistyped"), "{e}");
        assert!(MasterKey::from_recovery_text("xk1-00").is_err());
        // A character of two bytes where the key's digits end: refused, not split inside it.
        let straddling = format!("xk1-{}é{}", "a".repeat(63), "a".repeat(3));
        assert!(MasterKey::from_recovery_text(&straddling).is_err());
        assert!(MasterKey::from_recovery_text("").is_err());
    }

    #[test]
    fn purposes_give_independent_keys_and_debug_shows_nothing() {
        let key = MasterKey::from_bytes([7; KEY_LEN]);
        let all = [
            Purpose::BlobId,
            Purpose::BlobSeal,
            Purpose::TrailerSeal,
            Purpose::Chunker,
        ];
        for (i, a) in all.iter().enumerate() {
            assert_ne!(*key.derive(*a), [7; KEY_LEN]);
            for b in &all[i + 1..] {
                assert_ne!(*key.derive(*a), *key.derive(*b));
            }
        }
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
    }
}
