//! How a repository's blobs are identified and sealed: in the clear (format 1), or keyed
//! and encrypted (format 2, FORMAT.md §Encryption). The keys come from the repository's
//! master key (`xstore-keys`); this module only uses them.
//!
//! Encryption is XChaCha20-Poly1305 from RustCrypto with a random 24-byte nonce per sealed
//! item. Keys live inside the cipher values, which zero them when dropped.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use xstore_chunker::ChunkId;
use zeroize::Zeroizing;

use crate::error::DecodeError;

/// Length of a nonce.
pub const NONCE_LEN: usize = 24;
/// Length of an authentication tag.
pub const TAG_LEN: usize = 16;

/// The three keys of an encrypted repository, derived from its master key.
pub struct RepositoryKeys {
    /// Keys blob ids: `BLAKE3-keyed(id key, BLAKE3(raw bytes))`.
    id_key: Zeroizing<[u8; 32]>,
    /// Seals blob bytes.
    blob: XChaCha20Poly1305,
    /// Seals blob headers and pack trailers: what names blobs.
    meta: XChaCha20Poly1305,
}

impl RepositoryKeys {
    /// The keys from their 32-byte values (each from its own derivation).
    pub fn new(id_key: &[u8; 32], blob_key: &[u8; 32], meta_key: &[u8; 32]) -> Self {
        RepositoryKeys {
            id_key: Zeroizing::new(*id_key),
            blob: XChaCha20Poly1305::new(blob_key.into()),
            meta: XChaCha20Poly1305::new(meta_key.into()),
        }
    }
}

impl std::fmt::Debug for RepositoryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepositoryKeys(..)")
    }
}

/// Which of the two sealed items a key seals: blob bytes, or what names blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealedPart {
    /// A blob's stored bytes.
    Blob,
    /// A blob header or a pack trailer.
    Meta,
}

/// How the blobs of one repository are identified and stored.
#[derive(Debug, Clone)]
pub enum Encryption {
    /// Format 1: ids are BLAKE3 of the raw bytes; packs hold the bytes compressed, in the clear.
    Plain,
    /// Format 2: ids are keyed; every blob, blob header and trailer is sealed.
    Encrypted(Arc<RepositoryKeys>),
}

impl Encryption {
    /// Whether packs are sealed.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Encryption::Encrypted(_))
    }

    /// The id of a blob whose raw bytes are `raw`.
    pub fn id_of(&self, raw: &[u8]) -> ChunkId {
        self.id_from_plain(ChunkId::of(raw))
    }

    /// The id of a blob whose plain BLAKE3 is `plain` (what agents send: they hold no key).
    pub fn id_from_plain(&self, plain: ChunkId) -> ChunkId {
        match self {
            Encryption::Plain => plain,
            Encryption::Encrypted(keys) => {
                ChunkId(*blake3::keyed_hash(&keys.id_key, &plain.0).as_bytes())
            }
        }
    }

    /// Seals `plain` under a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
    pub(crate) fn seal(
        &self,
        part: SealedPart,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, DecodeError> {
        self.cipher(part)?
            .encrypt(XNonce::from_slice(nonce), Payload { msg: plain, aad })
            .map_err(|_| DecodeError::Invalid {
                what: "sealing",
                offset: 0,
                reason: "the cipher refused the input".into(),
            })
    }

    /// Opens what [`Encryption::seal`] made (`sealed` = ciphertext ‖ tag) with `nonce` and `aad`.
    /// A wrong key, nonce, associated data or any changed byte is an `Unauthentic` error.
    pub(crate) fn open(
        &self,
        part: SealedPart,
        what: &'static str,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, DecodeError> {
        self.cipher(part)?
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| DecodeError::Unauthentic { what })
    }
}

impl Encryption {
    /// The cipher that seals `part`; an error for a plain repository.
    fn cipher(&self, part: SealedPart) -> Result<&XChaCha20Poly1305, DecodeError> {
        match (self, part) {
            (Encryption::Plain, _) => Err(DecodeError::Invalid {
                what: "sealing",
                offset: 0,
                reason: "the repository is not encrypted".into(),
            }),
            (Encryption::Encrypted(keys), SealedPart::Blob) => Ok(&keys.blob),
            (Encryption::Encrypted(keys), SealedPart::Meta) => Ok(&keys.meta),
        }
    }
}

/// A fresh random nonce.
pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN], DecodeError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| DecodeError::Invalid {
        what: "random nonce",
        offset: 0,
        reason: e.to_string(),
    })?;
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn keys(n: u8) -> Encryption {
        Encryption::Encrypted(Arc::new(RepositoryKeys::new(
            &[n; 32],
            &[n + 1; 32],
            &[n + 2; 32],
        )))
    }

    #[test]
    fn keyed_ids_differ_per_key_and_from_plain() {
        let raw = b"the same file";
        let plain = Encryption::Plain.id_of(raw);
        assert_eq!(plain, ChunkId::of(raw));
        let a = keys(1).id_of(raw);
        let b = keys(7).id_of(raw);
        assert_ne!(a, plain);
        assert_ne!(a, b);
        assert_eq!(keys(1).id_from_plain(plain), a);
    }

    #[test]
    fn seal_open_round_trip_and_refusals() {
        let s = keys(1);
        let nonce = random_nonce().unwrap();
        let sealed = s.seal(SealedPart::Blob, &nonce, b"aad", b"secret").unwrap();
        assert_eq!(sealed.len(), 6 + TAG_LEN);
        assert_eq!(
            s.open(SealedPart::Blob, "t", &nonce, b"aad", &sealed)
                .unwrap(),
            b"secret"
        );
        assert!(s
            .open(SealedPart::Meta, "t", &nonce, b"aad", &sealed)
            .is_err());
        assert!(s
            .open(SealedPart::Blob, "t", &nonce, b"aae", &sealed)
            .is_err());
        assert!(keys(2)
            .open(SealedPart::Blob, "t", &nonce, b"aad", &sealed)
            .is_err());
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert!(matches!(
            s.open(SealedPart::Blob, "t", &nonce, b"aad", &bad),
            Err(DecodeError::Unauthentic { what: "t" })
        ));
        assert!(Encryption::Plain
            .seal(SealedPart::Blob, &nonce, b"", b"x")
            .is_err());
    }
}
