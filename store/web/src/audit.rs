//! The web front's audit log: every login (and failed attempt), logout and download, as one
//! JSON object per line (FORMAT.md §Web audit log), appended to a root-only file that the
//! operator reads. Names and paths come from customers' hosts and from whoever types at the
//! login form, so they are data: made valid UTF-8 (U+FFFD), cut at [`MAX_TEXT`] bytes, and
//! escaped by JSON (control characters as `\u00XX`), so that no line can forge another.
//!
//! Each record is one `write` to a file opened `O_APPEND`, under a lock: lines never
//! interleave. Lines are not synced one by one: a crash of the machine may lose the last few.

use std::fs::File;

use std::net::IpAddr;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Longest text kept of a name or path, in bytes.
pub const MAX_TEXT: usize = 4096;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AuditEvent {
    /// A login: `ok` false for a wrong password, an unknown name or a rate-limited attempt
    /// (`reason` says which).
    Login {
        /// The name typed.
        user: String,
        /// Whether the user is now logged in.
        ok: bool,
        /// Why not, when not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A logout.
    Logout {
        /// The user.
        user: String,
    },
    /// A download: a file, or a directory as an archive.
    Download {
        /// The user.
        user: String,
        /// The host the snapshot is of.
        host: String,
        /// The snapshot's id.
        snapshot: String,
        /// The path in the snapshot.
        path: String,
        /// `file`, `tar.gz` or `zip`.
        format: String,
        /// Bytes sent.
        bytes: u64,
    },
}

/// One line of the log. Readers ignore fields they do not know (a newer writer's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (ns since the epoch).
    pub at_ns: i64,
    /// The client's address.
    pub address: IpAddr,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// The open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating it 0600) the log at `path` for appending, never through a symlink. A
    /// log that other users may read or write is refused: it names what customers downloaded.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(crate::jsonl::open_append(path, "who downloaded what")?),
        })
    }

    /// Appends `event` from `address` at `at_ns` as one line.
    pub fn record(&self, at_ns: i64, address: IpAddr, event: AuditEvent) -> std::io::Result<()> {
        let record = AuditRecord {
            at_ns,
            address,
            event: bounded(event),
        };
        let file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::jsonl::append(&file, &self.path, &record)
    }
}

/// The newest `at_most` records of the log at `path` from `since_ns` on, oldest first, and
/// how many lines could not be read (a torn last line after a crash, a damaged one): memory
/// stays bounded however long the log is.
pub fn read(
    path: &Path,
    since_ns: i64,
    at_most: usize,
) -> std::io::Result<(Vec<AuditRecord>, usize)> {
    crate::jsonl::read_newest(path, |r: &AuditRecord| r.at_ns >= since_ns, at_most)
}

/// Cuts every text of `event` to [`MAX_TEXT`] bytes (at a character boundary).
fn bounded(event: AuditEvent) -> AuditEvent {
    let cut = |s: String| -> String {
        if s.len() <= MAX_TEXT {
            return s;
        }
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", s.get(..end).unwrap_or_default())
    };
    match event {
        AuditEvent::Login { user, ok, reason } => AuditEvent::Login {
            user: cut(user),
            ok,
            reason: reason.map(cut),
        },
        AuditEvent::Logout { user } => AuditEvent::Logout { user: cut(user) },
        AuditEvent::Download {
            user,
            host,
            snapshot,
            path,
            format,
            bytes,
        } => AuditEvent::Download {
            user: cut(user),
            host: cut(host),
            snapshot: cut(snapshot),
            path: cut(path),
            format: cut(format),
            bytes,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hostile_texts_stay_inside_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let a: IpAddr = "192.0.2.4".parse().unwrap();
        let forged =
            "x\"}\n{\"at_ns\":0,\"address\":\"1.2.3.4\",\"event\":\"logout\",\"user\":\"root\"}";
        log.record(
            1,
            a,
            AuditEvent::Login {
                user: forged.into(),
                ok: false,
                reason: Some("wrong password".into()),
            },
        )
        .unwrap();
        log.record(
            2,
            a,
            AuditEvent::Download {
                user: "alice".into(),
                host: "web1".into(),
                snapshot: "3c1f9a2e".into(),
                path: String::from_utf8_lossy(b"/var/www/\xff\x1b[31m<script>.php").into_owned(),
                format: "file".into(),
                bytes: 1234,
            },
        )
        .unwrap();
        log.record(
            3,
            a,
            AuditEvent::Logout {
                user: "a".repeat(10_000),
            },
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let (records, unreadable) = read(&path, 0, 100).unwrap();
        assert_eq!(unreadable, 0);
        assert_eq!(records.len(), 3);
        assert!(
            matches!(&records[0].event, AuditEvent::Login { user, ok: false, .. } if user == forged)
        );
        match &records[1].event {
            AuditEvent::Download { path, bytes, .. } => {
                assert_eq!(path, "/var/www/\u{fffd}\u{1b}[31m<script>.php");
                assert_eq!(*bytes, 1234);
            }
            other => panic!("{other:?}"),
        }
        match &records[2].event {
            AuditEvent::Logout { user } => assert!(user.len() <= MAX_TEXT + 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(read(&path, 2, 100).unwrap().0.len(), 2);
        // The newest records when more match than are asked for.
        let newest = read(&path, 0, 2).unwrap().0;
        assert_eq!(newest.iter().map(|r| r.at_ns).collect::<Vec<_>>(), [2, 3]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_log_others_may_read_or_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AuditLog::open(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("has mode 0644: other users could read who downloaded what; chmod 600 it"),
            "{e}"
        );
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(AuditLog::open(&link).is_err());
    }

    #[test]
    fn torn_and_overlong_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let a: IpAddr = "::1".parse().unwrap();
        log.record(5, a, AuditEvent::Logout { user: "bob".into() })
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        // A damaged stretch far longer than any record, then a good line after it.
        f.write_all(&vec![b'x'; 3 * crate::jsonl::MAX_LINE])
            .unwrap();
        f.write_all(b"\n").unwrap();
        drop(f);
        log.record(
            7,
            a,
            AuditEvent::Logout {
                user: "carol".into(),
            },
        )
        .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"at_ns\":8,\"addr").unwrap();
        let (records, unreadable) = read(&path, 0, 100).unwrap();
        assert_eq!((records.len(), unreadable), (2, 2));
        assert_eq!(records[1].at_ns, 7);
    }
}
