//! # xstore-keys
//!
//! The keys of an encrypted repository (FORMAT.md §Keys): a random master key that exists
//! only on the backup server, stored only wrapped in key slots — a passphrase slot (Argon2id,
//! its parameters recorded) or a key-file slot (a root-only file of random bytes, for
//! unattended jobs) — and the purpose keys derived from it. Wrapping is XChaCha20-Poly1305
//! from RustCrypto; nothing here is hand-rolled cryptography. Key material is zeroed when
//! dropped and never printed by `Debug`.
//!
//! The slot file is read from disk or a bucket, so its decoder treats it as hostile: every
//! field is bounded (an Argon2 cost cannot be raised to exhaust memory or time) and a slot
//! whose parameters were changed fails to unwrap rather than yielding another key.
//!
//! | module | role |
//! |---|---|
//! | [`error`] | `KeyError`, the failures of unlocking and changing slots |
//! | [`master`] | the master key, its recovery text and the keys derived from it |
//! | [`key_file`] | the key file: random bytes, its text form |
//! | [`slots`] | the key-slot file: encoding, decoding, unlocking, adding and removing slots |

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod error;
pub mod hex;
pub mod key_file;
pub mod master;
pub mod slots;

pub use error::KeyError;
pub use key_file::KeyFileKey;
pub use master::{MasterKey, Purpose};
pub use slots::{Argon2Params, KeySlot, KeySlots, SlotKind};
