//! Typed command-line values: clap runs these parsers, so a command receives a `Duration` or
//! a percentage, never the text. A value they refuse is one error line naming the flag, exit
//! 1, as these flags always did when the commands parsed them (`value_error_line`); other
//! parsers' refusals stay clap's usage errors (exit 2).

use std::time::Duration;

/// A value one of these parsers refused: what is wrong with it.
#[derive(Debug)]
pub(crate) struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(e: impl std::fmt::Display) -> Refused {
    Refused(e.to_string())
}

/// A duration such as `90s`, `36h` or `2d` (not negative).
pub(crate) fn period(text: &str) -> Result<Duration, Refused> {
    xstore::retention::parse_period(text).map_err(refused)
}

/// A duration such as `2d` or `36h`, in nanoseconds (retention's unit).
pub(crate) fn nanos(text: &str) -> Result<i64, Refused> {
    xstore::retention::parse_duration(text).map_err(refused)
}

/// A time, RFC 3339 (`2026-12-01T04:00:00Z`), in nanoseconds since the epoch.
pub(crate) fn instant(text: &str) -> Result<i64, Refused> {
    xstore::retention::parse_instant(text).map_err(refused)
}

/// A percentage: `10%`, `10` or `12.5%`, within 0..100.
pub(crate) fn percent(text: &str) -> Result<f64, Refused> {
    let v: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| refused(format!("{text:?}: expected a percentage such as 10%")))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(refused(format!("{text:?}: must be within 0%..100%")));
    }
    Ok(v)
}

/// A size: `50GiB`, `500MB`, `8G` or bytes (the inventory's units).
pub(crate) fn size(text: &str) -> Result<u64, Refused> {
    xstore_fleet::inventory::parse_size(text).map_err(refused)
}

/// A tier schedule, lowest tier first: `hourly=6,daily=7,weekly=4,monthly=6`.
pub(crate) fn schedule(text: &str) -> Result<xstore::retention::Schedule, Refused> {
    xstore::retention::Schedule::parse(text).map_err(refused)
}

/// A host name (`web1.example.net`): 1-253 characters of `A-Z a-z 0-9 . - _`.
pub(crate) fn host(text: &str) -> Result<xstore::HostName, Refused> {
    xstore::HostName::parse(text).map_err(refused)
}

/// The one error line for a value a parser above refused (`--grace: invalid duration …`),
/// or `None` for any other command-line error (clap reports those itself, exit 2).
pub(crate) fn value_error_line(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let flag = match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.split_whitespace().next()?.to_string(),
        _ => return None,
    };
    let why = std::error::Error::source(e)?.downcast_ref::<Refused>()?;
    Some(format!("{flag}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_their_errors() {
        assert_eq!(percent("10%").ok(), Some(10.0));
        assert_eq!(percent(" 12.5 ").ok(), Some(12.5));
        assert!(percent("150%").is_err_and(|e| e.0.contains("must be within 0%..100%")));
        assert!(percent("lots").is_err_and(|e| e.0.contains("expected a percentage")));
    }
}
