//! Live counters of long operations, for progress displays.

use std::sync::atomic::AtomicU64;

/// Live counters that long operations update, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files done.
    pub files: AtomicU64,
    /// Bytes done (read for backup, written for restore).
    pub bytes: AtomicU64,
    /// Bytes expected in total, when known (restore).
    pub total_bytes: AtomicU64,
    /// Paths that failed so far.
    pub errors: AtomicU64,
}
