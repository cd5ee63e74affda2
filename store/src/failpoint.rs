//! Test hooks, compiled only with the `failpoints` feature (which the test crates turn on);
//! in other builds both are no-ops the optimiser removes.
//!
//! - `XSTORE_FAIL_IO=<step>`: the write step named `step` fails with ENOSPC, as a full disk
//!   would, to test what each step leaves behind;
//! - `XSTORE_FAILPOINT=<name>`: the process aborts at `name`, as a crash would.

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
