//! Texts from clients shown to people: file names, agent messages, ssh's stderr. A client
//! decides these bytes, so every control character is shown escaped (`\x1b`, `\u{9b}`) and
//! none reaches a terminal raw: no cursor moves, erased lines, window titles or clipboard
//! writes (ARCHITECTURE.md, "Trust boundary"). Machine output (`--json`) stays exact.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0, DEL, C1) escaped; unchanged when it has none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`printable`] of raw bytes (a file name): invalid UTF-8 shown as U+FFFD.
pub fn printable_bytes(bytes: &[u8]) -> String {
    printable(&String::from_utf8_lossy(bytes)).into_owned()
}

/// `text` cut to at most `max` bytes (at a character boundary), saying how much was left out.
pub fn capped(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… ({} more bytes)",
        &text[..end],
        text.len() - end
    ))
}

/// `1.5 GiB`-style sizes (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration as every command prints it for people: `45s`, `12m`, `1h12m`, `3d`, `3d4h`
/// (the two largest units, whole; minutes under a day always shown, zero-padded).
pub fn short_duration(seconds: u64) -> String {
    let s = seconds;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ if s % 86400 < 3600 => format!("{}d", s / 86400),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_kept() {
        assert!(matches!(printable("web1 ok"), Cow::Borrowed("web1 ok")));
        assert_eq!(
            printable("\x1b[1A\x1b[2KOK: backed up\x07"),
            "\\x1b[1A\\x1b[2KOK: backed up\\x07"
        );
        assert_eq!(printable("a\nb\tc\x7f"), "a\\x0ab\\x09c\\x7f");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable_bytes(b"caf\xc3\xa9\x1b]52;c;"), "café\\x1b]52;c;");
    }

    #[test]
    fn long_texts_are_capped_at_a_character_boundary() {
        assert_eq!(capped("short", 10), "short");
        assert_eq!(capped("ééé", 3), "é… (4 more bytes)");
    }

    #[test]
    fn durations_have_one_compact_form() {
        let cases = [
            (45, "45s"),
            (720, "12m"),
            (4 * 3600 + 29 * 60 + 59, "4h29m"),
            (7200, "2h00m"),
            (86400, "1d"),
            (15 * 86400 + 2 * 3600 + 29 * 60 + 59, "15d2h"),
        ];
        for (seconds, text) in cases {
            assert_eq!(super::short_duration(seconds), text);
        }
    }
}
