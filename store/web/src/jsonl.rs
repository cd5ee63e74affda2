//! Root-only JSON-lines files the web front appends to (the audit log, the history): opened
//! `O_APPEND` without following a symlink and refused unless private, one `write` per line,
//! read back in bounded memory (the newest N records; a torn or overlong line is skipped and
//! counted, never taken for a record).

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The longest line read back: records are bounded, so anything longer is damage.
pub const MAX_LINE: usize = 64 * 1024;

fn with_path(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Opens (creating it 0600) `path` for appending, never through a symlink; a file that other
/// users may read or write is refused, naming what it `holds`.
pub fn open_append(path: &Path, holds: &str) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(crate::private::open_flags())
        .open(path)
        .map_err(|e| with_path(path, e))?;
    if let Some(reason) = crate::private::refusal(&file, holds).map_err(|e| with_path(path, e))? {
        return Err(with_path(path, std::io::Error::other(reason)));
    }
    Ok(file)
}

/// Appends `record` as one line with one `write` (lines of concurrent writers never mix).
pub fn append(mut file: &File, path: &Path, record: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line).map_err(|e| with_path(path, e))
}

/// The newest `at_most` records of `path` that `keep` accepts, oldest first, and how many
/// lines could not be read.
pub fn read_newest<T: DeserializeOwned>(
    path: &Path,
    keep: impl Fn(&T) -> bool,
    at_most: usize,
) -> std::io::Result<(Vec<T>, usize)> {
    let file = crate::private::no_follow(std::fs::OpenOptions::new().read(true))
        .open(path)
        .map_err(|e| with_path(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut records = std::collections::VecDeque::new();
    let mut unreadable = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| with_path(path, e))?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            // Too long to be a record: counted, and the rest of it passed over unread.
            unreadable += 1;
            skip_line(&mut reader).map_err(|e| with_path(path, e))?;
            continue;
        }
        match serde_json::from_slice::<T>(&line) {
            Ok(r) if keep(&r) => {
                if records.len() == at_most {
                    records.pop_front();
                }
                if at_most > 0 {
                    records.push_back(r);
                }
            }
            Ok(_) => {}
            Err(_) => unreadable += 1,
        }
    }
    Ok((records.into(), unreadable))
}

/// Consumes `reader` up to and including the next newline, holding at most one buffer.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}
