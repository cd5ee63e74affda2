//! The web front's URLs of snapshot paths: `/browse/<host>/<snapshot>/<name>/<name>…`, each
//! name percent-encoded byte for byte (names are bytes from customer machines, not always
//! UTF-8). Parsing decodes each segment once and refuses what a path walk must never see:
//! `.`, `..`, empty names, and names that decode to a `/` or NUL, so no encoding (`%2e%2e`,
//! `%252e`, `..%2f`) reaches above the snapshot. A double-encoded name decodes once to a
//! literal `%2e%2e`, which is a name like any other.

use std::fmt::Write;

/// Why a URL path was refused: the request is answered 400 and nothing is looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding in the path")]
    BadEncoding,
    /// `.`, `..` or an empty name where a name belongs.
    #[error("the path has a . or .. or empty name")]
    DotName,
    /// A name that decodes to one holding `/` or NUL.
    #[error("a name in the path holds / or NUL")]
    BadName,
    /// Too many names, or too long.
    #[error("the path is too long")]
    TooLong,
}

/// The longest URL path taken, in bytes.
pub const MAX_PATH_BYTES: usize = 16 << 10;

/// Percent-encodes a name for a URL path segment: everything but `A–Z a–z 0–9 - . _ ~`.
pub fn encode_segment(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for &b in name {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Encodes names into a URL path tail: `a/b%20c`.
pub fn encode_path<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> String {
    names
        .into_iter()
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one segment's percent-encoding (once).
pub fn decode_segment(segment: &str) -> Result<Vec<u8>, PathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(PathError::BadEncoding),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The names of a URL path tail (after `/browse/`), decoded and checked (module
/// documentation). A trailing `/` is allowed; no other empty name is.
pub fn parse_names(tail: &str) -> Result<Vec<Vec<u8>>, PathError> {
    if tail.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let tail = tail.strip_suffix('/').unwrap_or(tail);
    if tail.is_empty() {
        return Ok(Vec::new());
    }
    tail.split('/')
        .map(|segment| {
            let name = decode_segment(segment)?;
            if name.is_empty() || name == b"." || name == b".." {
                return Err(PathError::DotName);
            }
            if name.contains(&b'/') || name.contains(&0) {
                return Err(PathError::BadName);
            }
            Ok(name)
        })
        .collect()
}

/// A name as a page shows it: invalid UTF-8 as U+FFFD and control characters escaped
/// (`\x1b`), so no name can move a line or hide what follows; HTML escaping is the
/// template's.
pub fn display_name(name: &[u8]) -> String {
    xstore::text::printable_bytes(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_byte_for_byte() {
        for name in [
            &b"plain.txt"[..],
            b"sp ace",
            b"<script>alert(1)<\\script>",
            b"\"; filename=evil",
            b"%2e%2e",
            b"\xff\xfe\x1b[2J",
            b"caf\xc3\xa9",
        ] {
            let encoded = encode_segment(name);
            assert!(encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            assert_eq!(parse_names(&encoded).unwrap(), vec![name.to_vec()]);
        }
        assert_eq!(
            parse_names(&encode_path([&b"etc"[..], b"a b"])).unwrap(),
            vec![b"etc".to_vec(), b"a b".to_vec()]
        );
    }

    #[test]
    fn no_encoding_of_dot_dot_or_slash_gets_through() {
        for bad in ["..", ".", "a/../b", "%2e%2e", "%2E%2e/x", "a//b", "./a"] {
            assert_eq!(parse_names(bad), Err(PathError::DotName), "{bad}");
        }
        for bad in ["..%2f..", "a%2fb", "a%00b", "%2F"] {
            assert_eq!(parse_names(bad), Err(PathError::BadName), "{bad}");
        }
        for bad in ["%", "%2", "%zz", "a%g0"] {
            assert_eq!(parse_names(bad), Err(PathError::BadEncoding), "{bad}");
        }
        // Double encoding decodes once: a literal name, never a step up.
        assert_eq!(parse_names("%252e%252e").unwrap(), vec![b"%2e%2e".to_vec()]);
        assert_eq!(parse_names("").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(parse_names("etc/").unwrap(), vec![b"etc".to_vec()]);
        assert_eq!(
            parse_names(&"a/".repeat(MAX_PATH_BYTES)),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn shown_names_carry_no_control_bytes() {
        assert_eq!(display_name(b"a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(display_name(b"\xffx"), "\u{fffd}x");
    }
}
