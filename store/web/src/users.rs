//! Who may log in to the web front: the users file (default `/etc/xstore/web-users.toml`,
//! FORMAT.md §Web users). A user is an account's customer, who sees that account's hosts
//! only, or an operator, who sees every account. A password is kept as its Argon2id hash
//! (`xstore_keys::slots::passphrase_key`, the one place Argon2 runs) with its salt and costs.
//!
//! The file holds what lets anyone read every customer's files, so it is root-only: it is read
//! only when it is a regular file, owned by root or by the reader, that no other user may read
//! or write, opened without following a symlink. Changes are made under an exclusive lock on
//! `.<name>.lock` beside it and written whole (a 0600 temporary, fsync, rename, fsync of the
//! directory): a crash leaves the old file or the new one, and two `web-user` commands at once
//! never lose each other's change.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xstore_keys::slots::{passphrase_key, Argon2Params};
use zeroize::Zeroizing;

/// Where the users file is when none is named.
pub const DEFAULT_USERS_FILE: &str = "/etc/xstore/web-users.toml";
/// The largest users file read: a broken file must not exhaust memory.
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// The longest user name, in bytes.
pub const MAX_NAME: usize = 64;
/// The shortest password, in characters (NIST SP 800-63B's minimum).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Argon2id costs of new password hashes: 19 MiB, 2 passes, 1 lane (OWASP's first setting;
/// about 30 ms here). Lower than a key slot's because every login pays it and many may
/// come at once; logins are rate-limited besides.
pub const PASSWORD_COSTS: Argon2Params = Argon2Params {
    memory_kib: 19 * 1024,
    iterations: 2,
    parallelism: 1,
};

/// What went wrong with the users file or a change to it. Each names the file or the user.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Reading, writing or locking the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not one only its owner (root) can read and write.
    #[error("{path}: {reason}")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// Why it is refused, and what to do.
        reason: String,
    },
    /// The file does not parse, or holds a user that is not valid.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A user of that name exists already.
    #[error("web user {0} exists already")]
    Exists(String),
    /// No user has that name.
    #[error("no web user {0}")]
    NoSuchUser(String),
    /// A name, account or password that cannot be used.
    #[error("{0}")]
    Refused(String),
    /// Writing the new file failed (the error names it).
    #[error(transparent)]
    Write(#[from] xstore::Error),
    /// Deriving or drawing key material failed.
    #[error("password hash: {0}")]
    Hash(String),
}

/// What a user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// An account's customer: that account's hosts only.
    Customer,
    /// An operator: every account, and the fleet's state.
    Operator,
}

impl Role {
    /// `customer` or `operator`, as the file writes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Operator => "operator",
        }
    }
}

/// A stored password: Argon2id of the password with `salt` and `costs`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordHash {
    /// Always `argon2id`: named so that another function can follow without guessing.
    kdf: String,
    #[serde(with = "xstore_keys::hex::serde_array")]
    salt: [u8; 16],
    #[serde(with = "xstore_keys::hex::serde_array")]
    hash: [u8; 32],
    argon2: Argon2Params,
}

const KDF: &str = "argon2id";

impl PasswordHash {
    fn new(password: &str) -> Result<PasswordHash, UsersError> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| UsersError::Hash(e.to_string()))?;
        let hash = derive(password, &salt, &PASSWORD_COSTS)?;
        Ok(PasswordHash {
            kdf: KDF.into(),
            salt,
            hash: *hash,
            argon2: PASSWORD_COSTS,
        })
    }

    fn matches(&self, password: &str) -> bool {
        derive(password, &self.salt, &self.argon2)
            .is_ok_and(|h| constant_time_eq::constant_time_eq_32(&h, &self.hash))
    }
}

fn derive(
    password: &str,
    salt: &[u8; 16],
    costs: &Argon2Params,
) -> Result<Zeroizing<[u8; 32]>, UsersError> {
    passphrase_key(password.as_bytes(), salt, costs).map_err(|e| UsersError::Hash(e.to_string()))
}

/// One user who may log in.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebUser {
    /// The login name.
    pub name: String,
    /// What the user may see.
    pub role: Role,
    /// The account whose hosts a customer sees; `None` for an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// When the user was added (ns since the epoch).
    pub created_ns: i64,
    /// When the password was last set (ns since the epoch): sessions from before it end.
    pub password_changed_ns: i64,
    password: PasswordHash,
}

impl std::fmt::Debug for WebUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebUser")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl WebUser {
    /// Whether `password` is this user's.
    pub fn password_matches(&self, password: &str) -> bool {
        self.password.matches(password)
    }
}

/// A user to add.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The login name: 1 to [`MAX_NAME`] bytes of lowercase letters, digits and `.`, `_`,
    /// `-`, `@`, starting with a letter or digit.
    pub name: String,
    /// What the user may see.
    pub role: Role,
    /// A customer's account (which must be in the inventory); `None` for an operator.
    pub account: Option<String>,
}

/// The users file, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebUsers {
    #[serde(default, rename = "user")]
    users: Vec<WebUser>,
}

impl WebUsers {
    /// Reads the users file at `path`: no users when there is none. A file that others may
    /// read or write, that is not a regular file or is a symlink, or that does not parse is an
    /// error naming it.
    pub fn load(path: &Path) -> Result<WebUsers, UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match crate::private::no_follow(std::fs::OpenOptions::new().read(true))
            .open(path)
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WebUsers::default()),
            Err(e) if crate::private::is_symlink_error(&e) => {
                return Err(unsafe_file(path, "is a symlink; name the file itself"))
            }
            other => other.map_err(io)?,
        };
        check_private(&file, path)?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(invalid(path, format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        WebUsers::parse(&text, path)
    }

    /// Parses users-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<WebUsers, UsersError> {
        let users: WebUsers = toml::from_str(text).map_err(|e| {
            // Lines are counted from 1: the newlines before the error's first byte, plus one.
            let line = e
                .span()
                .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            invalid(
                origin,
                match line {
                    Some(l) => format!("line {l}: {message}"),
                    None => message,
                },
            )
        })?;
        let mut seen = std::collections::HashSet::new();
        for u in &users.users {
            let at = |reason: String| {
                invalid(
                    origin,
                    format!("user {}: {reason}", xstore::text::printable(&u.name)),
                )
            };
            check_name(&u.name).map_err(at)?;
            if !seen.insert(u.name.as_str()) {
                return Err(at("appears twice".into()));
            }
            check_role(u.role, u.account.as_deref()).map_err(at)?;
            if u.password.kdf != KDF {
                return Err(at(format!(
                    "password kdf {:?} is not {KDF}",
                    xstore::text::printable(&u.password.kdf)
                )));
            }
            u.password.argon2.check().map_err(at)?;
        }
        Ok(users)
    }

    /// Every user, by name.
    pub fn users(&self) -> &[WebUser] {
        &self.users
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&WebUser> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The user `name` if `password` is theirs. An unknown name costs the same Argon2id
    /// derivation as a known one, so the time taken does not tell which names exist.
    pub fn verify(&self, name: &str, password: &str) -> Option<&WebUser> {
        match self.get(name) {
            Some(user) => user.password_matches(password).then_some(user),
            None => {
                let _ = derive(password, &[0; 16], &PASSWORD_COSTS);
                None
            }
        }
    }

    /// Where the user `name` is in the list; no such user is an error naming them.
    fn position(&self, name: &str) -> Result<usize, UsersError> {
        self.users
            .iter()
            .position(|u| u.name == name)
            .ok_or_else(|| UsersError::NoSuchUser(xstore::text::printable(name).into_owned()))
    }

    fn to_text(&self) -> Result<String, UsersError> {
        let body = toml::to_string(self).map_err(|e| UsersError::Refused(e.to_string()))?;
        Ok(format!(
            "# xstore web users: change with `xstore web-user`, keep 0600 root (README, \"Web\").\n\
             # Passwords are Argon2id hashes; a customer sees only their account's hosts.\n\n{body}"
        ))
    }
}

/// Adds `user` with `password` to the users file at `path` (creating it 0600). A customer's
/// account must be one of `accounts` (the inventory's).
pub fn add_user(
    path: &Path,
    user: &NewUser,
    password: &str,
    accounts: &[&str],
) -> Result<WebUser, UsersError> {
    check_name(&user.name).map_err(UsersError::Refused)?;
    check_role(user.role, user.account.as_deref()).map_err(UsersError::Refused)?;
    if let Some(a) = &user.account {
        if !accounts.contains(&a.as_str()) {
            return Err(UsersError::Refused(format!(
                "account {} is not in the inventory",
                xstore::text::printable(a)
            )));
        }
    }
    check_password(password)?;
    edit(path, |users| {
        if users.get(&user.name).is_some() {
            return Err(UsersError::Exists(user.name.clone()));
        }
        let now = xstore::now_ns();
        let added = WebUser {
            name: user.name.clone(),
            role: user.role,
            account: user.account.clone(),
            created_ns: now,
            password_changed_ns: now,
            password: PasswordHash::new(password)?,
        };
        users.users.push(added.clone());
        users.users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(added)
    })
}

/// Removes the user `name` from the users file at `path`; their sessions end at once.
pub fn remove_user(path: &Path, name: &str) -> Result<WebUser, UsersError> {
    edit(path, |users| {
        let at = users.position(name)?;
        Ok(users.users.remove(at))
    })
}

/// Sets the password of the user `name`; their sessions from before end.
pub fn set_password(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
    check_password(password)?;
    edit(path, |users| {
        let at = users.position(name)?;
        let user = users
            .users
            .get_mut(at)
            .ok_or_else(|| UsersError::NoSuchUser(name.into()))?;
        user.password = PasswordHash::new(password)?;
        // Later than the old time even if the clock went back: older sessions must end.
        user.password_changed_ns = xstore::now_ns().max(user.password_changed_ns.saturating_add(1));
        Ok(())
    })
}

/// Reads the file under its lock, applies `change` and writes the result whole.
fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut WebUsers) -> Result<T, UsersError>,
) -> Result<T, UsersError> {
    let _lock = lock(path)?;
    let mut users = WebUsers::load(path)?;
    let out = change(&mut users)?;
    let text = users.to_text()?;
    xstore::fsutil::write_atomic_private(path, text.as_bytes())?;
    Ok(out)
}

/// An exclusive lock on `.<name>.lock` beside `path`, held until dropped.
fn lock(path: &Path) -> Result<File, UsersError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = path.with_file_name(format!(".{name}.lock"));
    let io = |source| UsersError::Io {
        path: lock_path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(crate::private::open_flags())
        .open(&lock_path)
        .map_err(io)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(e.into()))?;
    Ok(file)
}

/// Refuses a file another user could read or write, or one not owned by root or us.
fn check_private(file: &File, path: &Path) -> Result<(), UsersError> {
    match crate::private::refusal(file, "the password hashes") {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(unsafe_file(path, &reason)),
        Err(source) => Err(UsersError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn unsafe_file(path: &Path, reason: &str) -> UsersError {
    UsersError::Unsafe {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn invalid(path: &Path, reason: String) -> UsersError {
    UsersError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// A login name: safe in a URL, a cookie, a log line and a page without escaping.
fn check_name(name: &str) -> Result<(), String> {
    let shown = xstore::text::printable(name);
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@')
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "user name {shown:?} must have 1 to {MAX_NAME} bytes"
        ));
    }
    if !name.chars().all(ok_char)
        || !name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "user name {shown:?}: use lowercase letters, digits and . _ - @, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A customer has one account, named as the inventory names accounts; an operator none.
fn check_role(role: Role, account: Option<&str>) -> Result<(), String> {
    match (role, account) {
        (Role::Customer, Some(a)) => xstore_fleet::inventory::check_account_name(a),
        (Role::Customer, None) => Err("a customer needs an account".into()),
        (Role::Operator, Some(_)) => Err("an operator has no account (operators see all)".into()),
        (Role::Operator, None) => Ok(()),
    }
}

fn check_password(password: &str) -> Result<(), UsersError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(UsersError::Refused(format!(
            "the password has fewer than {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(UsersError::Refused(format!(
            "the password has more than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn customer(name: &str, account: &str) -> NewUser {
        NewUser {
            name: name.into(),
            role: Role::Customer,
            account: Some(account.into()),
        }
    }

    #[test]
    fn add_verify_change_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-users.toml");
        add_user(
            &path,
            &customer("alice", "acme"),
            "correct horse",
            &["acme"],
        )
        .unwrap();
        let op = NewUser {
            name: "ops".into(),
            role: Role::Operator,
            account: None,
        };
        add_user(&path, &op, "battery staple", &[]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let users = WebUsers::load(&path).unwrap();
        assert_eq!(
            users
                .users()
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>(),
            ["alice", "ops"]
        );
        let alice = users.verify("alice", "correct horse").unwrap();
        assert_eq!(alice.account.as_deref(), Some("acme"));
        assert!(users.verify("alice", "correct horsE").is_none());
        assert!(users.verify("nobody", "correct horse").is_none());
        let before = alice.password_changed_ns;

        set_password(&path, "alice", "new password!").unwrap();
        let users = WebUsers::load(&path).unwrap();
        assert!(users.verify("alice", "correct horse").is_none());
        let alice = users.verify("alice", "new password!").unwrap();
        assert!(alice.password_changed_ns > before);

        assert_eq!(remove_user(&path, "alice").unwrap().name, "alice");
        assert!(matches!(
            remove_user(&path, "alice"),
            Err(UsersError::NoSuchUser(_))
        ));
        assert!(WebUsers::load(&path).unwrap().get("alice").is_none());
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.toml");
        let refused = |user: NewUser, password: &str| {
            add_user(&path, &user, password, &["acme"])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(customer("bob", "other"), "long enough"),
            "account other is not in the inventory"
        );
        assert!(refused(customer("Bob", "acme"), "long enough").contains("lowercase"));
        assert!(refused(customer("../x", "acme"), "long enough").contains("starting with"));
        assert!(refused(customer("bob", "acme"), "short").contains("fewer than 8"));
        let op_with_account = NewUser {
            name: "ops".into(),
            role: Role::Operator,
            account: Some("acme".into()),
        };
        assert!(refused(op_with_account, "long enough").contains("operator has no account"));
        add_user(&path, &customer("bob", "acme"), "long enough", &["acme"]).unwrap();
        assert_eq!(
            refused(customer("bob", "acme"), "long enough"),
            "web user bob exists already"
        );
    }

    #[test]
    fn a_file_others_can_read_or_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.toml");
        add_user(&path, &customer("bob", "acme"), "long enough", &["acme"]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = WebUsers::load(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("has mode 0640: other users could read the password hashes; chmod 600 it"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = WebUsers::load(&link).unwrap_err().to_string();
        assert!(e.ends_with("is a symlink; name the file itself"), "{e}");
        assert!(WebUsers::load(&dir.path().join("none.toml"))
            .unwrap()
            .users()
            .is_empty());
    }

    #[test]
    fn a_broken_file_is_one_line_with_its_place() {
        let p = Path::new("/etc/xstore/web-users.toml");
        let e = WebUsers::parse("[[user]]\nname = \"a\"\nrole = \"king\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/xstore/web-users.toml: line 3: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // An error whose place starts a line is on that line, not the one before.
        let e = WebUsers::parse("[[user]]\nname = \"a\"\nbogus = 1\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/xstore/web-users.toml: line 3: "), "{e}");
        let dup = format!(
            "{0}{0}",
            "[[user]]\nname = \"a\"\nrole = \"operator\"\ncreated_ns = 1\npassword_changed_ns = 1\n\
             [user.password]\nkdf = \"argon2id\"\nsalt = \"00000000000000000000000000000000\"\n\
             hash = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
             argon2 = { memory_kib = 19456, iterations = 2, parallelism = 1 }\n"
        );
        let e = WebUsers::parse(&dup, p).unwrap_err().to_string();
        assert_eq!(e, "/etc/xstore/web-users.toml: user a: appears twice");
    }
}
