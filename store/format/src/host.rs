//! Host names. A name is parsed once where it enters (a command line, an inventory, a
//! record, a directory of an rsnapshot tree) into a [`HostName`]; code that holds one never
//! checks it again. Names become directory names of the repository (`layout`) and of
//! rsnapshot paths, so the rule keeps them single, safe path components.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest host name (a DNS name's limit).
pub const MAX_HOST_NAME: usize = 253;

/// A host name: 1–253 characters of `A-Z a-z 0-9 . - _`, not starting with `.` or `-`.
/// It reads as a `&str` (`Deref`); it serializes as a string and deserializing one checks it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

/// A text that is not a host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidHostName {
    /// The text refused.
    pub text: String,
}

impl fmt::Display for InvalidHostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid host name {:?}: use 1-{MAX_HOST_NAME} characters of A-Z a-z 0-9 . - _",
            self.text
        )
    }
}

impl std::error::Error for InvalidHostName {}

fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_HOST_NAME
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !text.starts_with('.')
        && !text.starts_with('-')
}

impl HostName {
    /// Checks `text` and takes it as a host name.
    pub fn parse(text: &str) -> Result<Self, InvalidHostName> {
        Self::try_from(text.to_string())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostName {
    type Error = InvalidHostName;
    fn try_from(text: String) -> Result<Self, InvalidHostName> {
        if is_host_name(&text) {
            Ok(Self(text))
        } else {
            Err(InvalidHostName { text })
        }
    }
}

impl FromStr for HostName {
    type Err = InvalidHostName;
    fn from_str(text: &str) -> Result<Self, InvalidHostName> {
        Self::parse(text)
    }
}

impl From<HostName> for String {
    fn from(host: HostName) -> String {
        host.0
    }
}

impl Deref for HostName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for HostName {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl Borrow<str> for HostName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for HostName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for HostName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for HostName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<HostName> for str {
    fn eq(&self, other: &HostName) -> bool {
        self == other.0
    }
}

impl PartialEq<HostName> for String {
    fn eq(&self, other: &HostName) -> bool {
        *self == other.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_refusals() {
        for good in ["web1", "web1.example.net", "a_b-c", "9", &"x".repeat(253)] {
            assert_eq!(HostName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".hidden",
            "-flag",
            "../evil",
            "a/b",
            "a b",
            "é",
            &"x".repeat(254),
        ] {
            let e = HostName::parse(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().starts_with("invalid host name"));
        }
    }

    #[test]
    fn deserializing_checks_the_name() {
        let ok: HostName = serde_json::from_str("\"web1\"").unwrap();
        assert_eq!(ok, "web1");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"web1\"");
        let err = serde_json::from_str::<HostName>("\"../x\"").unwrap_err();
        assert!(err.to_string().contains("invalid host name"), "{err}");
    }
}
