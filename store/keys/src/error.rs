//! The failures of unlocking a repository's master key and of changing its key slots.

use xstore_format::DecodeError;

/// What went wrong with a key or a key slot. Each says what failed once, without key
/// material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No passphrase slot opens with this passphrase.
    #[error("wrong passphrase: no passphrase slot opens with it")]
    WrongPassphrase,
    /// No key-file slot was made for this key file.
    #[error("this key file opens no key slot of the repository")]
    UnknownKeyFile,
    /// The slot made for this key file does not authenticate: it was changed or damaged.
    #[error(
        "key slot {0} does not authenticate with its key file: the slot was changed or damaged"
    )]
    TamperedSlot(u32),
    /// Removing this slot would leave no way to open the repository.
    #[error("key slot {0} is the last one: removing it would lose every backup")]
    LastSlot(u32),
    /// No slot has this id.
    #[error("no key slot {0}")]
    NoSuchSlot(u32),
    /// The repository already has the most slots allowed.
    #[error("the repository already has {0} key slots, the most allowed")]
    TooManySlots(usize),
    /// Argon2 refused its parameters or failed.
    #[error("deriving the passphrase key: {0}")]
    Kdf(String),
    /// The system gave no random bytes.
    #[error("random bytes for a key: {0}")]
    Random(String),
    /// A text or file that should hold a key does not.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}
