//! Test hooks, compiled only with the `failpoints` feature (which the test crates turn on);
//! in other builds both are no-ops the optimiser removes.
//!
//! - `XSTORE_FAIL_IO=<step>`: the write step named `step` fails with ENOSPC, as a full disk
//!   would, to test what each step leaves behind;
//! - `XSTORE_FAILPOINT=<name>`: the process aborts at `name`, as a crash would;
//! - `XSTORE_PAUSE=<name>` with `XSTORE_PAUSE_FILE=<path>`: the process waits at `name` while
//!   a test makes another process take a step in between (a race, made deterministic).

use crate::error::Result;

/// Fails with ENOSPC when `XSTORE_FAIL_IO` equals `name` (with the `failpoints` feature).
#[inline]
pub(crate) fn fail_io(name: &str) -> Result<()> {
    #[cfg(feature = "failpoints")]
    if std::env::var_os("XSTORE_FAIL_IO").is_some_and(|v| v == name) {
        return Err(crate::error::Error::Io {
            path: std::path::PathBuf::from(format!("<{name}>")),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
    }
    let _ = name;
    Ok(())
}

/// Aborts the process when `XSTORE_FAILPOINT` equals `name` (with the `failpoints` feature).
#[inline]
pub(crate) fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var_os("XSTORE_FAILPOINT").is_some_and(|v| v == name) {
        std::process::abort();
    }
    let _ = name;
}

/// Waits at `name` when `XSTORE_PAUSE` equals `name` (with the `failpoints` feature): writes
/// this process's id to `XSTORE_PAUSE_FILE`, then waits until a test deletes that file. A
/// pause nobody ends aborts after 120 s rather than hanging a test run.
#[inline]
pub(crate) fn pause(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var_os("XSTORE_PAUSE").is_some_and(|v| v == name) {
        let Some(file) = std::env::var_os("XSTORE_PAUSE_FILE").map(std::path::PathBuf::from) else {
            std::process::abort();
        };
        if std::fs::write(&file, std::process::id().to_string()).is_err() {
            std::process::abort();
        }
        let start = std::time::Instant::now();
        while file.exists() {
            if start.elapsed() > std::time::Duration::from_secs(120) {
                std::process::abort();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let _ = name;
}
