//! Durable file writes: temporary name, fsync, rename, fsync of the directory.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{IoContext, Result};

/// fsyncs a directory so that renames and creations inside it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes a file durably under a temporary name beside `path` with `fill` (removed again on
/// failure) and returns that name, the directory and what `fill` returned. The temporary is
/// created exclusively (`O_EXCL`), so nothing planted under its name is followed.
fn write_temp<T>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File, &Path) -> Result<T>,
) -> Result<(std::path::PathBuf, &Path, T)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // A temporary of an earlier run with this process id (a crash) goes first.
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .at(&tmp)?;
        let out = fill(&mut f, &tmp)?;
        f.sync_all().at(&tmp)?;
        Ok(out)
    })();
    if written.is_err() {
        // A full disk must not leave a temporary behind (recovery would remove it too).
        let _ = fs::remove_file(&tmp);
    }
    written.map(|out| (tmp, dir, out))
}

fn bytes_filler(bytes: &[u8]) -> impl FnOnce(&mut File, &Path) -> Result<()> + '_ {
    move |f, tmp| f.write_all(bytes).at(tmp)
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o666)
}

/// As [`write_atomic`], for a secret: the new file is created 0600 (before the umask), so no
/// other user can open it at any moment, whatever the old file's mode was.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (tmp, dir, ()) = write_temp(path, mode, bytes_filler(bytes))?;
    if let Err(e) = fs::rename(&tmp, path).at(path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Creates `dir` and its missing parents, each new one private (0700 before the umask).
pub fn create_private_dir_all(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at(dir)
}

/// Creates `path` with `bytes` durably, never replacing a file that exists (which is an
/// `AlreadyExists` error): written under a temporary name, then hard-linked into place,
/// which fails instead of overwriting.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    write_new_mode(path, bytes, 0o666)
}

/// As [`write_new`], for a secret: created 0600 (before the umask), and a crash leaves either
/// no file at `path` or the whole one, never a part of it.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_new_mode(path, bytes, 0o600)
}

fn write_new_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (tmp, dir, ()) = write_temp(path, mode, bytes_filler(bytes))?;
    let linked = fs::hard_link(&tmp, path).at(path);
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_dir(dir)
}

/// This machine's host name, for lock notes and the default backup host.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
