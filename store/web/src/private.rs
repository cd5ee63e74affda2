//! Files only root may touch (the users file, the audit log): opened without following a
//! symlink, and used only when they are regular files owned by root (or by this process's
//! user) with no group or other permission bits.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;

/// Flags every open of such a file adds: no symlink is followed, no descriptor leaks into a
/// child.
pub(crate) fn open_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32
}

/// `options` with [`open_flags`].
pub(crate) fn no_follow(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    options.custom_flags(open_flags())
}

/// Why `file` is not a root-only regular file (`holds`: what other users could read in it,
/// for the message), or `None` when it is. An `Err` is a failed `fstat`.
pub(crate) fn refusal(file: &File, holds: &str) -> std::io::Result<Option<String>> {
    let st = rustix::fs::fstat(file)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(Some("is not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != 0 && st.st_uid != me {
        return Ok(Some(format!(
            "is owned by uid {}, not root; chown root it",
            st.st_uid
        )));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Ok(Some(format!(
            "has mode {mode:04o}: other users could read {holds}; chmod 600 it"
        )));
    }
    Ok(None)
}

/// Whether an open failed because the last component is a symlink (`O_NOFOLLOW`'s `ELOOP`).
pub(crate) fn is_symlink_error(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}
