//! The `Content-Disposition` of a download, from a file name that came from a customer's
//! host (and may be hostile: quotes, `;`, `/`, `..`, control bytes, bytes that are not
//! UTF-8). The header carries the name twice, as RFC 6266 advises: `filename=` in plain
//! ASCII where every character that could end the value or mean a path is replaced by `_`,
//! and `filename*=UTF-8''` with every byte outside RFC 8187's `attr-char` percent-encoded.
//! Nothing of the name can add a parameter, end the header or name a directory.

/// The name used when nothing of the original is left.
const FALLBACK: &str = "download";
/// The longest name kept, in characters (the rest is cut; the extension of `.tar.gz`
/// downloads is added after this).
const MAX_CHARS: usize = 200;

/// `attachment; filename="…"; filename*=UTF-8''…` for a file called `name` (bytes as the
/// host had them) with `suffix` appended (`""`, `".tar.gz"`, `".zip"`).
pub fn attachment(name: &[u8], suffix: &str) -> String {
    let text: String = String::from_utf8_lossy(name)
        .chars()
        .take(MAX_CHARS)
        .collect();
    let text = if text.chars().all(|c| c == '.' || c.is_whitespace()) {
        FALLBACK.to_string()
    } else {
        text
    };
    let full = format!("{text}{suffix}");
    let ascii: String = full
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '+' | ' ' | '(' | ')' | ',' => c,
            _ => '_',
        })
        .collect();
    let ascii = ascii.trim_start_matches('.');
    let ascii = if ascii.trim().is_empty() {
        FALLBACK
    } else {
        ascii
    };
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        percent_encode(full.as_bytes())
    )
}

/// RFC 8187 `value-chars`: `attr-char`s as they are, every other byte as `%XX`.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header has exactly the three parts, no control character and no quote inside
    /// the quoted name.
    fn well_formed(h: &str) {
        assert!(!h.chars().any(|c| c.is_control()), "{h:?}");
        assert!(h.is_ascii(), "{h:?}");
        let parts: Vec<&str> = h.split("; ").collect();
        assert_eq!(parts.len(), 3, "{h:?}");
        assert_eq!(parts[0], "attachment");
        let quoted = parts[1]
            .strip_prefix("filename=\"")
            .unwrap_or_else(|| panic!("{h:?}"));
        let inner = quoted.strip_suffix('"').unwrap_or_else(|| panic!("{h:?}"));
        assert!(!inner.contains(['"', '\\', '/', ';']), "{h:?}");
        assert!(!inner.starts_with('.'), "{h:?}");
        assert!(parts[2].starts_with("filename*=UTF-8''"), "{h:?}");
        let encoded = parts[2].trim_start_matches("filename*=UTF-8''");
        assert!(
            !encoded.contains(['"', ';', ' ', '/', '\\', '\'', '=']),
            "{h:?}"
        );
    }

    #[test]
    fn plain_names_stay_readable() {
        let h = attachment(b"config.php", "");
        assert_eq!(
            h,
            "attachment; filename=\"config.php\"; filename*=UTF-8''config.php"
        );
        let h = attachment("Übersicht 2026.pdf".as_bytes(), "");
        assert_eq!(
            h,
            "attachment; filename=\"_bersicht 2026.pdf\"; filename*=UTF-8''%C3%9Cbersicht%202026.pdf"
        );
        well_formed(&h);
        assert_eq!(
            attachment(b"www", ".tar.gz"),
            "attachment; filename=\"www.tar.gz\"; filename*=UTF-8''www.tar.gz"
        );
    }

    #[test]
    fn hostile_names_cannot_break_out() {
        for name in [
            &b"\"; filename=evil.exe"[..],
            b"a\r\nSet-Cookie: x=1",
            b"../../etc/passwd",
            b"..",
            b".",
            b"",
            b"<script>alert(1)</script>",
            b"back\\slash",
            b"\xff\xfe not utf-8",
            b"tab\there\x00nul\x1b[31m",
            b"name; filename*=UTF-8''evil",
        ] {
            let h = attachment(name, ".zip");
            well_formed(&h);
            assert_eq!(h.matches("filename=").count(), 1, "{h:?}");
            assert_eq!(h.matches("filename*=").count(), 1, "{h:?}");
        }
        assert_eq!(
            attachment(b"..", ""),
            "attachment; filename=\"download\"; filename*=UTF-8''download"
        );
        let long = "x".repeat(5000);
        assert!(attachment(long.as_bytes(), ".zip").len() < 700);
    }
}
