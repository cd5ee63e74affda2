//! Typed command-line values: clap runs these parsers, so a command receives a `Duration` or
//! a percentage, never the text. A value they refuse is one error line naming the flag (exit
//! 1, like every other refused input: see `value_error_line`).

use std::time::Duration;

/// A duration such as `90s`, `36h` or `2d` (not negative).
pub(crate) fn period(text: &str) -> Result<Duration, String> {
    xstore::retention::parse_period(text)
}

/// A percentage: `10%`, `10` or `12.5%`, within 0..100.
pub(crate) fn percent(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?}: expected a percentage such as 10%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{text:?}: must be within 0%..100%"));
    }
    Ok(v)
}

/// The one error line for a value a parser above refused (`--grace: invalid duration …`),
/// or `None` for any other command-line error (clap reports those itself).
pub(crate) fn value_error_line(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let flag = match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.split_whitespace().next()?.to_string(),
        _ => return None,
    };
    let why = std::error::Error::source(e)?.to_string();
    Some(format!("{flag}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_their_errors() {
        assert_eq!(percent("10%"), Ok(10.0));
        assert_eq!(percent(" 12.5 "), Ok(12.5));
        assert!(percent("150%").is_err_and(|e| e.contains("must be within 0%..100%")));
        assert!(percent("lots").is_err_and(|e| e.contains("expected a percentage")));
    }
}
