//! The repository `config` file: format version, id, chunker and compression parameters.
//! JSON, written once by `init` and never changed (chunk boundaries depend on it).

use serde::{Deserialize, Serialize};
use xstore_chunker::ChunkerParams;

use crate::error::DecodeError;

/// The repository format of unencrypted repositories (still written by `init --no-encryption`).
pub const FORMAT_VERSION: u32 = 1;
/// The repository format of encrypted repositories (FORMAT.md §Encryption).
pub const ENCRYPTED_FORMAT_VERSION: u32 = 2;
/// The one cipher of format 2.
pub const CIPHER: &str = "xchacha20-poly1305";

/// How an encrypted repository seals (format 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Always [`CIPHER`].
    pub cipher: String,
    /// 16 bytes of a key derived from the master key, hex: which master key this
    /// repository's packs are sealed with, so that key slots wrapping another key are refused.
    pub key_id: String,
}

/// Chunker settings as stored in `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    /// Always [`xstore_chunker::ALGORITHM`] in format 1.
    pub algorithm: String,
    /// Minimum chunk size.
    pub min: u32,
    /// Average chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

/// The decoded `config` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Repository format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// 32 random bytes, hex.
    pub repository_id: String,
    /// Chunking parameters, fixed for the life of the repository.
    pub chunker: ChunkerConfig,
    /// "zstd".
    pub compression: String,
    /// zstd level for new blobs (1..=19).
    pub compression_level: i32,
    /// Target size of a pack file in bytes.
    pub pack_size: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: i64,
    /// Present exactly when the repository is encrypted (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// zstd level.
    pub compression_level: i32,
    /// Pack size target.
    pub pack_size: u64,
    /// A group that may read the repository (`access.toml`); `None`: its owner only.
    pub group: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default_params(),
            compression_level: 3,
            pack_size: 32 * 1024 * 1024,
            group: None,
        }
    }
}

impl Config {
    /// Validated chunker parameters.
    pub fn chunker_params(&self) -> Result<ChunkerParams, DecodeError> {
        ChunkerParams::new(self.chunker.min, self.chunker.avg, self.chunker.max).map_err(|e| {
            DecodeError::Invalid {
                what: "chunker parameters",
                offset: 0,
                reason: e.to_string(),
            }
        })
    }

    /// Decodes and validates a `config` file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Config, DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            what: "config",
            offset: 0,
            reason,
        };
        let cfg: Config = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let want_version = match &cfg.encryption {
            None => FORMAT_VERSION,
            Some(_) => ENCRYPTED_FORMAT_VERSION,
        };
        if cfg.format_version != want_version {
            return Err(DecodeError::BadMagic {
                what: "format version",
                expected: want_version.to_string(),
                found: cfg.format_version.to_string(),
            });
        }
        if let Some(enc) = &cfg.encryption {
            if enc.cipher != CIPHER {
                return Err(invalid(format!("unknown cipher {:?}", enc.cipher)));
            }
            if enc.key_id.len() != 32
                || !enc
                    .key_id
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(invalid(
                    "encryption key id is not 32 lowercase hex digits".into(),
                ));
            }
        }
        if cfg.chunker.algorithm != xstore_chunker::ALGORITHM {
            return Err(invalid(format!(
                "unknown chunker algorithm {:?}",
                cfg.chunker.algorithm
            )));
        }
        cfg.chunker_params()?;
        if cfg.compression != "zstd" || !(1..=19).contains(&cfg.compression_level) {
            return Err(invalid(format!(
                "unsupported compression {} level {}",
                cfg.compression, cfg.compression_level
            )));
        }
        if !(1024 * 1024..=1024 * 1024 * 1024).contains(&cfg.pack_size) {
            return Err(invalid(format!("pack size {} out of range", cfg.pack_size)));
        }
        if cfg.repository_id.len() != 64
            || !cfg.repository_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid("repository id is not 64 hex digits".into()));
        }
        Ok(cfg)
    }

    /// Encodes as pretty JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            format_version: 1,
            repository_id: "ab".repeat(32),
            chunker: ChunkerConfig {
                algorithm: xstore_chunker::ALGORITHM.into(),
                min: 65536,
                avg: 262144,
                max: 1048576,
            },
            compression: "zstd".into(),
            compression_level: 3,
            pack_size: 32 << 20,
            created_ns: 0,
            encryption: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let c = sample();
        assert_eq!(Config::decode(&c.encode()).unwrap(), c);
        assert!(Config::decode(b"not json").is_err());
        let mut bad = sample();
        bad.format_version = 9;
        assert!(matches!(
            Config::decode(&bad.encode()),
            Err(DecodeError::BadMagic { .. })
        ));
        let mut bad = sample();
        bad.chunker.avg = 3;
        assert!(Config::decode(&bad.encode()).is_err());
        let mut enc = sample();
        enc.format_version = ENCRYPTED_FORMAT_VERSION;
        enc.encryption = Some(EncryptionConfig {
            cipher: CIPHER.into(),
            key_id: "0f".repeat(16),
        });
        assert_eq!(Config::decode(&enc.encode()).unwrap(), enc);
        // A version that does not match the encryption section is refused both ways.
        let mut bad = enc.clone();
        bad.format_version = FORMAT_VERSION;
        assert!(Config::decode(&bad.encode()).is_err());
        let mut bad = sample();
        bad.format_version = ENCRYPTED_FORMAT_VERSION;
        assert!(Config::decode(&bad.encode()).is_err());
        let mut bad = enc.clone();
        bad.encryption.as_mut().unwrap().cipher = "rot13".into();
        assert!(Config::decode(&bad.encode()).is_err());
    }
}
