//! The one error type of decoding: every decoder returns it for hostile input, never panics.

/// What went wrong while decoding bytes read from disk or the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error("truncated: {what} needs {need} bytes at offset {offset}, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A magic number or version did not match.
    #[error("bad {what}: expected {expected}, found {found}")]
    BadMagic {
        /// The field.
        what: &'static str,
        /// What we accept.
        expected: String,
        /// What we found.
        found: String,
    },
    /// A value that is out of range or otherwise invalid.
    #[error("invalid {what} at offset {offset}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Why it is refused.
        reason: String,
    },
    /// A checksum or content hash did not match.
    #[error("checksum mismatch in {what}")]
    Checksum {
        /// What was checked.
        what: &'static str,
    },
    /// Sealed bytes that do not open with the repository's key: changed, moved, or sealed
    /// under another key (FORMAT.md §Encryption).
    #[error("{what} fails authentication (changed, moved, or sealed with another key)")]
    Unauthentic {
        /// What was opened.
        what: &'static str,
    },
    /// Bytes left over after a complete value.
    #[error("{extra} trailing bytes after {what}")]
    Trailing {
        /// The value.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}
