//! How a repository's blobs are identified and sealed: in the clear (format 1), or keyed
//! and encrypted (format 2, FORMAT.md §Encryption). The keys come from the repository's
//! master key (`xstore-keys`); this module only uses them.
//!
//! Encryption is XChaCha20-Poly1305 with a random 24-byte nonce per sealed item, built as
//! its specification (draft-irtf-cfrg-xchacha) defines it from two well-kept parts:
//! RustCrypto's HChaCha20 derives a subkey from the key and the nonce's first 16 bytes, and
//! aws-lc's ChaCha20-Poly1305 (RFC 8439) seals with that subkey and the nonce's last 8 bytes.
//! aws-lc's assembly runs about twice as fast here as RustCrypto's `XChaCha20Poly1305`, whose
//! output it equals byte for byte (tested). Keys are zeroed when dropped: ours by `Zeroizing`,
//! aws-lc's copy in its context when that is freed.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use xstore_chunker::ChunkId;
use zeroize::{Zeroize, Zeroizing};

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
    blob: Zeroizing<[u8; 32]>,
    /// Seals blob headers and pack trailers: what names blobs.
    meta: Zeroizing<[u8; 32]>,
}

impl RepositoryKeys {
    /// The keys from their 32-byte values (each from its own derivation).
    pub fn new(id_key: &[u8; 32], blob_key: &[u8; 32], meta_key: &[u8; 32]) -> Self {
        RepositoryKeys {
            id_key: Zeroizing::new(*id_key),
            blob: Zeroizing::new(*blob_key),
            meta: Zeroizing::new(*meta_key),
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

    /// Seals `plain` with `nonce`: `ciphertext ‖ tag`.
    pub(crate) fn seal(
        &self,
        part: SealedPart,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, DecodeError> {
        let (key, nonce) = self.item_key(part, nonce)?;
        let mut sealed = Vec::with_capacity(plain.len() + TAG_LEN);
        sealed.extend_from_slice(plain);
        key.seal_in_place_append_tag(nonce, Aad::from(aad), &mut sealed)
            .map_err(|_| sealing_refused("the cipher refused the input"))?;
        Ok(sealed)
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
        let mut opened = sealed.to_vec();
        let len = self
            .open_in_place(part, what, nonce, aad, &mut opened)?
            .len();
        opened.truncate(len);
        Ok(opened)
    }

    /// As [`Encryption::open`], in `sealed`'s own bytes: the opened bytes are the returned
    /// prefix of it (the tag's place is left over). On failure `sealed` holds no plaintext.
    pub(crate) fn open_in_place<'b>(
        &self,
        part: SealedPart,
        what: &'static str,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &'b mut [u8],
    ) -> Result<&'b mut [u8], DecodeError> {
        let (key, nonce) = self.item_key(part, nonce)?;
        key.open_in_place(nonce, Aad::from(aad), sealed)
            .map_err(|_| DecodeError::Unauthentic { what })
    }

    /// The ChaCha20-Poly1305 key and 12-byte nonce that seal one item of `part` under the
    /// XChaCha20 `nonce`: the HChaCha20 subkey of the part's key and the nonce's first 16
    /// bytes, and `0⁴ ‖ nonce[16..24]`. An error for a plain repository.
    fn item_key(
        &self,
        part: SealedPart,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<(LessSafeKey, Nonce), DecodeError> {
        let key = match (self, part) {
            (Encryption::Plain, _) => {
                return Err(sealing_refused("the repository is not encrypted"))
            }
            (Encryption::Encrypted(keys), SealedPart::Blob) => &keys.blob,
            (Encryption::Encrypted(keys), SealedPart::Meta) => &keys.meta,
        };
        let (prefix, suffix) = nonce.split_at(16);
        let mut subkey = chacha20::hchacha::<chacha20::cipher::consts::U10>(
            key.as_slice().into(),
            prefix.into(),
        );
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice());
        subkey.as_mut_slice().zeroize();
        let unbound = unbound.map_err(|_| sealing_refused("the cipher refused the key"))?;
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(suffix);
        Ok((
            LessSafeKey::new(unbound),
            Nonce::assume_unique_for_key(short),
        ))
    }
}

fn sealing_refused(reason: &str) -> DecodeError {
    DecodeError::Invalid {
        what: "sealing",
        offset: 0,
        reason: reason.into(),
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

    /// The format names XChaCha20-Poly1305: what is sealed here must be exactly what the
    /// reference implementation seals, and open what it sealed, at every length.
    #[test]
    fn sealing_equals_the_reference_xchacha20_poly1305() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let ours = keys(4);
        let reference = XChaCha20Poly1305::new((&[5u8; 32]).into());
        for len in [0usize, 1, 15, 16, 63, 64, 65, 255, 4096, 100_003] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let nonce = random_nonce().unwrap();
            let aad = format!("aad {len}");
            let want = reference
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &plain,
                        aad: aad.as_bytes(),
                    },
                )
                .unwrap();
            let got = ours
                .seal(SealedPart::Blob, &nonce, aad.as_bytes(), &plain)
                .unwrap();
            assert_eq!(got, want, "length {len}");
            let mut in_place = want.clone();
            let opened = ours
                .open_in_place(SealedPart::Blob, "t", &nonce, aad.as_bytes(), &mut in_place)
                .unwrap();
            assert_eq!(opened, &plain[..]);
        }
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
