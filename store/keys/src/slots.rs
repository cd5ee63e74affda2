//! The key-slot file (FORMAT.md §Keys): JSON listing the slots that each hold the master key
//! wrapped with XChaCha20-Poly1305 under a key-encryption key — from a passphrase through
//! Argon2id, or from a key file. The slot's id and kind are the AEAD's associated data, so a
//! slot's wrapped key cannot be moved to another slot; its Argon2 parameters and salt are
//! inputs of the key-encryption key, so changing them makes the slot fail, never open weaker.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::key_file::KeyFileKey;
use crate::master::{MasterKey, KEY_LEN};
use xstore_format::DecodeError;

/// Version of the slot file.
pub const SLOTS_VERSION: u32 = 1;
/// The most slots a repository may have.
pub const MAX_SLOTS: usize = 32;
/// The longest slot label, in bytes.
pub const MAX_LABEL: usize = 128;
/// Length of a wrapped master key: the key and the AEAD's 16-byte tag.
const WRAPPED_LEN: usize = KEY_LEN + 16;

/// Argon2id's costs, recorded in each passphrase slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Argon2Params {
    /// The default for new passphrase slots: 64 MiB, 3 passes, 1 lane (about 0.2 s on the
    /// 2-core machine; OWASP's second recommended setting has 46 MiB).
    pub const DEFAULT: Argon2Params = Argon2Params {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };
    /// The most memory a slot may ask for (a hostile slot file must not exhaust the server).
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    /// The most passes a slot may ask for.
    pub const MAX_ITERATIONS: u32 = 64;
    /// The most lanes a slot may ask for.
    pub const MAX_PARALLELISM: u32 = 16;

    /// Whether these costs are within the bounds above: an error text naming them when not.
    pub fn check(&self) -> Result<(), String> {
        if !(8 * self.parallelism.max(1)..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib)
            || !(1..=Self::MAX_ITERATIONS).contains(&self.iterations)
            || !(1..=Self::MAX_PARALLELISM).contains(&self.parallelism)
        {
            return Err(format!(
                "Argon2 costs {} KiB, {} passes, {} lanes are outside 8 KiB..4 GiB, 1..64, 1..16",
                self.memory_kib, self.iterations, self.parallelism
            ));
        }
        Ok(())
    }
}

/// How a slot's key-encryption key is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SlotKind {
    /// Argon2id of a passphrase with this salt and these costs.
    Passphrase {
        /// Random salt, 16 bytes.
        #[serde(with = "crate::hex::serde_array")]
        salt: [u8; 16],
        /// The costs.
        argon2: Argon2Params,
    },
    /// Derived from a key file's random bytes.
    KeyFile {
        /// Which key file opens the slot (derived from it; reveals nothing of it).
        #[serde(with = "crate::hex::serde_array")]
        key_id: [u8; 16],
    },
}

impl SlotKind {
    /// `passphrase` or `key-file`, as the slot file names it.
    pub fn name(&self) -> &'static str {
        match self {
            SlotKind::Passphrase { .. } => "passphrase",
            SlotKind::KeyFile { .. } => "key-file",
        }
    }

    fn tag(&self) -> u8 {
        match self {
            SlotKind::Passphrase { .. } => 1,
            SlotKind::KeyFile { .. } => 2,
        }
    }
}

/// One key slot: the master key wrapped under one passphrase or key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySlot {
    /// The slot's number, unique in the file (`xstore key remove ID`).
    pub id: u32,
    /// A name for people (`backup-server-1 key file`, `alice`).
    pub label: String,
    /// When it was added, ns since the epoch.
    pub created_ns: i64,
    /// How its key-encryption key is made.
    pub kek: SlotKind,
    /// The AEAD nonce, random.
    #[serde(with = "crate::hex::serde_array")]
    nonce: [u8; 24],
    /// The master key sealed under the key-encryption key.
    #[serde(with = "crate::hex::serde_array")]
    wrapped: [u8; WRAPPED_LEN],
}

/// The key slots of a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySlots {
    /// [`SLOTS_VERSION`].
    pub version: u32,
    /// The slots, in the order they were added.
    pub slots: Vec<KeySlot>,
}

impl KeySlots {
    /// Slots for `master`, with one passphrase slot.
    pub fn with_passphrase(
        master: &MasterKey,
        passphrase: &[u8],
        label: &str,
        argon2: Argon2Params,
        created_ns: i64,
    ) -> Result<Self, KeyError> {
        let mut slots = KeySlots {
            version: SLOTS_VERSION,
            slots: Vec::new(),
        };
        slots.add_passphrase(master, passphrase, label, argon2, created_ns)?;
        Ok(slots)
    }

    /// Slots for `master`, with one key-file slot.
    pub fn with_key_file(
        master: &MasterKey,
        key_file: &KeyFileKey,
        label: &str,
        created_ns: i64,
    ) -> Result<Self, KeyError> {
        let mut slots = KeySlots {
            version: SLOTS_VERSION,
            slots: Vec::new(),
        };
        slots.add_key_file(master, key_file, label, created_ns)?;
        Ok(slots)
    }

    /// Pretty JSON with a final newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Decodes and checks a slot file: its version, at least one and at most [`MAX_SLOTS`]
    /// slots with distinct ids, labels of printable text within [`MAX_LABEL`] bytes, Argon2
    /// costs within the bounds of [`Argon2Params`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            what: "key slots",
            offset: 0,
            reason,
        };
        let s: KeySlots = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if s.version != SLOTS_VERSION {
            return Err(DecodeError::BadMagic {
                what: "key slots version",
                expected: SLOTS_VERSION.to_string(),
                found: s.version.to_string(),
            });
        }
        if s.slots.is_empty() || s.slots.len() > MAX_SLOTS {
            return Err(invalid(format!(
                "{} slots: a repository has 1 to {MAX_SLOTS}",
                s.slots.len()
            )));
        }
        for (i, slot) in s.slots.iter().enumerate() {
            if s.slots.iter().skip(i + 1).any(|o| o.id == slot.id) {
                return Err(invalid(format!("slot id {} appears twice", slot.id)));
            }
            check_label(&slot.label).map_err(|e| invalid(format!("slot {}: {e}", slot.id)))?;
            if let SlotKind::Passphrase { argon2, .. } = &slot.kek {
                argon2
                    .check()
                    .map_err(|e| invalid(format!("slot {}: {e}", slot.id)))?;
            }
        }
        Ok(s)
    }

    /// The master key, from the first passphrase slot this passphrase opens. Each passphrase
    /// slot costs one Argon2id derivation.
    pub fn unlock_with_passphrase(&self, passphrase: &[u8]) -> Result<MasterKey, KeyError> {
        for slot in &self.slots {
            if let SlotKind::Passphrase { salt, argon2 } = &slot.kek {
                let kek = passphrase_key(passphrase, salt, argon2)?;
                if let Ok(master) = slot.unwrap_with(&kek) {
                    return Ok(master);
                }
            }
        }
        Err(KeyError::WrongPassphrase)
    }

    /// The id of the first passphrase slot this passphrase opens (`key passwd` replaces it).
    pub fn passphrase_slot(&self, passphrase: &[u8]) -> Result<u32, KeyError> {
        for slot in &self.slots {
            if let SlotKind::Passphrase { salt, argon2 } = &slot.kek {
                let kek = passphrase_key(passphrase, salt, argon2)?;
                if slot.unwrap_with(&kek).is_ok() {
                    return Ok(slot.id);
                }
            }
        }
        Err(KeyError::WrongPassphrase)
    }

    /// The master key, from the slot made for this key file.
    pub fn unlock_with_key_file(&self, key_file: &KeyFileKey) -> Result<MasterKey, KeyError> {
        let id = key_file.id();
        let slot = self
            .slots
            .iter()
            .find(|s| matches!(&s.kek, SlotKind::KeyFile { key_id } if *key_id == id))
            .ok_or(KeyError::UnknownKeyFile)?;
        slot.unwrap_with(&key_file.wrapping_key())
            .map_err(|()| KeyError::TamperedSlot(slot.id))
    }

    /// Adds a passphrase slot for `master` (opened already, so the caller proved it holds a
    /// key); returns its id.
    pub fn add_passphrase(
        &mut self,
        master: &MasterKey,
        passphrase: &[u8],
        label: &str,
        argon2: Argon2Params,
        created_ns: i64,
    ) -> Result<u32, KeyError> {
        argon2.check().map_err(KeyError::Kdf)?;
        let salt: [u8; 16] = random()?;
        let kek = passphrase_key(passphrase, &salt, &argon2)?;
        self.add(
            master,
            SlotKind::Passphrase { salt, argon2 },
            &kek,
            label,
            created_ns,
        )
    }

    /// Adds a key-file slot for `master`; returns its id.
    pub fn add_key_file(
        &mut self,
        master: &MasterKey,
        key_file: &KeyFileKey,
        label: &str,
        created_ns: i64,
    ) -> Result<u32, KeyError> {
        let kind = SlotKind::KeyFile {
            key_id: key_file.id(),
        };
        self.add(master, kind, &key_file.wrapping_key(), label, created_ns)
    }

    /// Removes slot `id`, refusing to remove the last one.
    pub fn remove(&mut self, id: u32) -> Result<KeySlot, KeyError> {
        let at = self
            .slots
            .iter()
            .position(|s| s.id == id)
            .ok_or(KeyError::NoSuchSlot(id))?;
        if self.slots.len() == 1 {
            return Err(KeyError::LastSlot(id));
        }
        Ok(self.slots.remove(at))
    }

    fn add(
        &mut self,
        master: &MasterKey,
        kek_kind: SlotKind,
        kek: &[u8; KEY_LEN],
        label: &str,
        created_ns: i64,
    ) -> Result<u32, KeyError> {
        if self.slots.len() >= MAX_SLOTS {
            return Err(KeyError::TooManySlots(self.slots.len()));
        }
        check_label(label).map_err(|e| {
            KeyError::Decode(DecodeError::Invalid {
                what: "slot label",
                offset: 0,
                reason: e,
            })
        })?;
        let id = self.slots.iter().map(|s| s.id).max().map_or(1, |m| m + 1);
        let nonce: [u8; 24] = random()?;
        let sealed = cipher(kek)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: master.bytes(),
                    aad: &associated_data(id, &kek_kind),
                },
            )
            .map_err(|_| KeyError::Kdf("sealing the master key failed".into()))?;
        let wrapped: [u8; WRAPPED_LEN] = sealed
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Kdf("sealed key of an unexpected length".into()))?;
        self.slots.push(KeySlot {
            id,
            label: label.to_string(),
            created_ns,
            kek: kek_kind,
            nonce,
            wrapped,
        });
        Ok(id)
    }
}

impl KeySlot {
    /// The master key, if `kek` opens this slot.
    fn unwrap_with(&self, kek: &[u8; KEY_LEN]) -> Result<MasterKey, ()> {
        let plain = Zeroizing::new(
            cipher(kek)
                .decrypt(
                    XNonce::from_slice(&self.nonce),
                    Payload {
                        msg: &self.wrapped,
                        aad: &associated_data(self.id, &self.kek),
                    },
                )
                .map_err(|_| ())?,
        );
        let bytes: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| ())?;
        Ok(MasterKey::from_bytes(bytes))
    }
}

fn cipher(kek: &[u8; KEY_LEN]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(kek))
}

/// What binds a wrapped key to its slot: the format, the slot id and its kind.
fn associated_data(id: u32, kind: &SlotKind) -> Vec<u8> {
    let mut aad = b"xstore key slot 1".to_vec();
    aad.extend_from_slice(&id.to_le_bytes());
    aad.push(kind.tag());
    aad
}

/// Argon2id (version 0x13) of `passphrase` with `salt` and `costs`, 32 bytes: the key of a
/// passphrase slot, and the password hash of a web user (`xstore-web`), so that Argon2 is
/// called in this one place. Costs outside [`Argon2Params`]'s bounds are refused first.
pub fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    costs: &Argon2Params,
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    costs.check().map_err(KeyError::Kdf)?;
    let params = argon2::Params::new(
        costs.memory_kib,
        costs.iterations,
        costs.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(key)
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

fn check_label(label: &str) -> Result<(), String> {
    if label.len() > MAX_LABEL || label.chars().any(char::is_control) {
        return Err(format!(
            "label {label:?}: at most {MAX_LABEL} bytes of printable text"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Cheap costs: the tests exercise the logic, not Argon2's strength.
    const FAST: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn a_passphrase_and_a_key_file_open_the_same_master_key() {
        let master = MasterKey::generate().unwrap();
        let mut slots =
            KeySlots::with_passphrase(&master, b"correct horse", "alice", FAST, 1).unwrap();
        let file = KeyFileKey::generate().unwrap();
        let id = slots.add_key_file(&master, &file, "cron", 2).unwrap();
        assert_eq!(id, 2);
        let decoded = KeySlots::decode(&slots.encode()).unwrap();
        assert_eq!(decoded, slots);
        let a = decoded.unlock_with_passphrase(b"correct horse").unwrap();
        let b = decoded.unlock_with_key_file(&file).unwrap();
        assert_eq!(a.bytes(), master.bytes());
        assert_eq!(b.bytes(), master.bytes());
        assert!(matches!(
            decoded.unlock_with_passphrase(b"wrong horse"),
            Err(KeyError::WrongPassphrase)
        ));
        let other = KeyFileKey::generate().unwrap();
        assert!(matches!(
            decoded.unlock_with_key_file(&other),
            Err(KeyError::UnknownKeyFile)
        ));
        // The file never holds the master key or the passphrase in the clear.
        let text = String::from_utf8(slots.encode()).unwrap();
        assert!(!text.contains(&crate::hex::encode(master.bytes())));
        assert!(!text.contains("correct horse"));
    }

    #[test]
    fn removing_the_last_slot_is_refused_and_a_changed_passphrase_replaces_the_old() {
        let master = MasterKey::generate().unwrap();
        let mut slots = KeySlots::with_passphrase(&master, b"old", "p", FAST, 1).unwrap();
        assert!(matches!(slots.remove(1), Err(KeyError::LastSlot(1))));
        assert!(matches!(slots.remove(9), Err(KeyError::NoSuchSlot(9))));
        // passwd: add the new passphrase, then remove the old slot.
        let opened = slots.unlock_with_passphrase(b"old").unwrap();
        slots.add_passphrase(&opened, b"new", "p", FAST, 2).unwrap();
        slots.remove(1).unwrap();
        assert!(slots.unlock_with_passphrase(b"old").is_err());
        assert_eq!(
            slots.unlock_with_passphrase(b"new").unwrap().bytes(),
            master.bytes()
        );
        // Ids are never reused while a higher one stands.
        let file = KeyFileKey::generate().unwrap();
        assert_eq!(slots.add_key_file(&master, &file, "f", 3).unwrap(), 3);
    }

    #[test]
    fn a_changed_slot_fails_to_open_and_never_yields_another_key() {
        let master = MasterKey::generate().unwrap();
        let file = KeyFileKey::generate().unwrap();
        let mut slots = KeySlots::with_key_file(&master, &file, "cron", 1).unwrap();
        slots.add_passphrase(&master, b"pw", "p", FAST, 2).unwrap();
        // A flipped bit of the wrapped key.
        let mut bad = slots.clone();
        bad.slots[0].wrapped[3] ^= 1;
        assert!(matches!(
            bad.unlock_with_key_file(&file),
            Err(KeyError::TamperedSlot(1))
        ));
        // The wrapped key moved to another slot id.
        let mut moved = slots.clone();
        moved.slots[0].id = 7;
        assert!(moved.unlock_with_key_file(&file).is_err());
        // Weaker Argon2 costs written into the slot: it no longer opens.
        let mut weaker = slots.clone();
        if let SlotKind::Passphrase { argon2, .. } = &mut weaker.slots[1].kek {
            argon2.iterations = 2;
        }
        assert!(matches!(
            weaker.unlock_with_passphrase(b"pw"),
            Err(KeyError::WrongPassphrase)
        ));
    }

    #[test]
    fn the_fuzz_seed_is_a_slot_file_that_decodes() {
        let seed = include_bytes!("../../../fuzz/corpus/key_slots/seed-valid");
        let slots = KeySlots::decode(seed).unwrap();
        assert_eq!(slots.slots.len(), 2);
        assert!(matches!(slots.slots[1].kek, SlotKind::KeyFile { .. }));
    }

    #[test]
    fn hostile_slot_files_are_refused_with_a_reason() {
        let master = MasterKey::generate().unwrap();
        let slots = KeySlots::with_passphrase(&master, b"pw", "p", FAST, 1).unwrap();
        let good = String::from_utf8(slots.encode()).unwrap();
        let cases = [
            good.replace("\"version\": 1", "\"version\": 2"),
            good.replace("\"memory_kib\": 64", "\"memory_kib\": 4294967295"),
            good.replace("\"iterations\": 1", "\"iterations\": 100000"),
            good.replace("\"label\": \"p\"", "\"label\": \"\\u001b[2J\""),
            good.replace("\"label\"", "\"extra\": 1, \"label\""),
            good.replace("passphrase", "token"),
            r#"{"version":1,"slots":[]}"#.to_string(),
            "{".to_string(),
            String::new(),
        ];
        for bad in cases {
            assert!(KeySlots::decode(bad.as_bytes()).is_err(), "{bad}");
        }
        let mut twice = slots.clone();
        twice.slots.push(twice.slots[0].clone());
        assert!(KeySlots::decode(&twice.encode()).is_err());
    }
}
