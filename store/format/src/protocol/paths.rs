//! Paths on the wire (FORMAT.md §Agent protocol): absolute, normalized (no empty, `.` or `..`
//! component, no trailing `/`), without NUL. The server sends only such paths; the agent
//! refuses any other.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The path in `bytes` if it is a wire path, else `None` (what the agent accepts).
pub fn wire_path(bytes: &[u8]) -> Option<&Path> {
    let rest = match bytes {
        [b'/'] => return Some(Path::new("/")),
        [b'/', rest @ ..] => rest,
        _ => return None,
    };
    let bad = bytes.contains(&0)
        || rest
            .split(|b| *b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    (!bad).then(|| Path::new(OsStr::from_bytes(bytes)))
}

/// `path` as a wire path: `.` components and repeated or trailing separators dropped. `None`
/// when it is relative, contains `..` (which would need the filesystem to resolve) or NUL.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() || path.as_os_str().as_bytes().contains(&0) {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_normalized_absolute_paths_are_wire_paths() {
        assert!(wire_path(b"/etc/passwd").is_some());
        assert!(wire_path(b"/").is_some());
        for bad in [
            &b"etc"[..],
            b"/etc/",
            b"/etc//x",
            b"/etc/../root",
            b"/./etc",
            b"",
            b"/a\0b",
        ] {
            assert!(wire_path(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn normalize_yields_wire_paths_or_refuses() {
        for (input, want) in [
            ("/", Some("/")),
            ("/etc/", Some("/etc")),
            ("//etc/./x//", Some("/etc/x")),
            ("/etc/../root", None),
            ("etc", None),
        ] {
            let got = normalize(Path::new(input));
            assert_eq!(got.as_deref(), want.map(Path::new), "{input}");
            if let Some(p) = got {
                assert!(wire_path(p.as_os_str().as_bytes()).is_some(), "{input}");
            }
        }
    }
}
