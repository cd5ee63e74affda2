//! Login sessions of the web front, kept in the server's memory: a session is a random
//! 32-byte token (the cookie's value) for one user, with a CSRF token of its own for every
//! form. Only the BLAKE3 hash of a session token is kept, so neither a look at the table nor a
//! timing of its lookup gives a cookie away.
//!
//! A session ends when it is idle for [`SessionRules::idle`], at [`SessionRules::lifetime`]
//! after login whatever the activity, at logout, and as soon as its user is removed, changes
//! role or account, or has their password set after the login (checked against the users
//! file at every request). The table holds at most [`SessionRules::max_sessions`]; a login
//! beyond that ends the session idle longest.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::users::{Role, WebUser, WebUsers};

/// Length of a session or CSRF token, in bytes (64 hex digits in a cookie or form).
pub const TOKEN_BYTES: usize = 32;

/// How long sessions last and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRules {
    /// Ends a session not used for this long, ns.
    pub idle_ns: i64,
    /// Ends a session this long after its login, ns.
    pub lifetime_ns: i64,
    /// The most sessions at once.
    pub max_sessions: usize,
}

impl SessionRules {
    /// 30 minutes idle, 12 hours in all, 10,000 sessions.
    pub const DEFAULT: SessionRules = SessionRules {
        idle_ns: 30 * 60 * 1_000_000_000,
        lifetime_ns: 12 * 3600 * 1_000_000_000,
        max_sessions: 10_000,
    };

    /// The idle limit.
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.idle_ns.max(0) as u64)
    }

    /// The absolute limit.
    pub fn lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.lifetime_ns.max(0) as u64)
    }
}

/// A new session's tokens, to set as the cookie and put in forms.
#[derive(Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The cookie's value: 64 lowercase hex digits.
    pub token: String,
    /// The CSRF token of the session's forms.
    pub csrf: String,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewSession(..)")
    }
}

/// Who a live session is for, as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    /// The login name.
    pub name: String,
    /// What the user may see.
    pub role: Role,
    /// A customer's account.
    pub account: Option<String>,
    /// The CSRF token every form of this session must carry.
    pub csrf: String,
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    role: Role,
    account: Option<String>,
    login_ns: i64,
    last_ns: i64,
    csrf: [u8; TOKEN_BYTES],
}

/// The live sessions of one server.
#[derive(Debug)]
pub struct Sessions {
    rules: SessionRules,
    by_token_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// No sessions yet.
    pub fn new(rules: SessionRules) -> Sessions {
        Sessions {
            rules,
            by_token_hash: Mutex::new(HashMap::new()),
        }
    }

    /// The rules these sessions live by.
    pub fn rules(&self) -> SessionRules {
        self.rules
    }

    /// Starts a session for `user` (whose password was just checked) at `now_ns`.
    pub fn create(&self, user: &WebUser, now_ns: i64) -> Result<NewSession, getrandom::Error> {
        let token = random_token()?;
        let csrf = random_token()?;
        let session = Session {
            user: user.name.clone(),
            role: user.role,
            account: user.account.clone(),
            login_ns: now_ns,
            last_ns: now_ns,
            csrf,
        };
        let mut table = self.table();
        table.retain(|_, s| self.alive(s, now_ns));
        while table.len() >= self.rules.max_sessions.max(1) {
            let oldest = table.iter().min_by_key(|(_, s)| s.last_ns).map(|(k, _)| *k);
            match oldest {
                Some(k) => table.remove(&k),
                None => break,
            };
        }
        table.insert(token_hash(&token), session);
        Ok(NewSession {
            token: hex(&token),
            csrf: hex(&csrf),
        })
    }

    /// The session of the cookie value `token` at `now_ns`, if it is live and its user is
    /// still in `users` as they were at login (same role and account, no password set since).
    /// A session found dead is removed. Using a session keeps it from idling out.
    pub fn get(&self, token: &str, users: &WebUsers, now_ns: i64) -> Option<SessionUser> {
        let key = token_hash(&parse_token(token)?);
        let mut table = self.table();
        let session = table.get_mut(&key)?;
        let current = users.get(&session.user);
        let still_valid = current.is_some_and(|u| {
            u.role == session.role
                && u.account == session.account
                && u.password_changed_ns <= session.login_ns
        });
        if !still_valid || !self.alive(session, now_ns) {
            table.remove(&key);
            return None;
        }
        session.last_ns = now_ns;
        Some(SessionUser {
            name: session.user.clone(),
            role: session.role,
            account: session.account.clone(),
            csrf: hex(&session.csrf),
        })
    }

    /// Ends the session of `token` (logout); nothing when there is none.
    pub fn end(&self, token: &str) {
        if let Some(t) = parse_token(token) {
            self.table().remove(&token_hash(&t));
        }
    }

    /// How many sessions are held (live or not yet found dead).
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn alive(&self, s: &Session, now_ns: i64) -> bool {
        now_ns.saturating_sub(s.last_ns) < self.rules.idle_ns
            && now_ns.saturating_sub(s.login_ns) < self.rules.lifetime_ns
            && now_ns >= s.login_ns
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while the table was held leaves it consistent (each change is one call).
        self.by_token_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a form's CSRF token is the session's, compared in constant time.
pub fn csrf_matches(session: &SessionUser, sent: &str) -> bool {
    match (parse_token(&session.csrf), parse_token(sent)) {
        (Some(want), Some(got)) => constant_time_eq::constant_time_eq_32(&want, &got),
        _ => false,
    }
}

fn random_token() -> Result<[u8; TOKEN_BYTES], getrandom::Error> {
    let mut t = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut t)?;
    Ok(t)
}

fn token_hash(token: &[u8; TOKEN_BYTES]) -> [u8; 32] {
    *blake3::hash(token).as_bytes()
}

fn hex(bytes: &[u8; TOKEN_BYTES]) -> String {
    xstore_keys::hex::encode(bytes)
}

/// A token from its 64 lowercase hex digits; anything else is no token.
fn parse_token(text: &str) -> Option<[u8; TOKEN_BYTES]> {
    xstore_keys::hex::decode::<TOKEN_BYTES>(text, "token").ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::users::{add_user, set_password, NewUser};

    const MIN: i64 = 60 * 1_000_000_000;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.toml");
        let alice = NewUser {
            name: "alice".into(),
            role: Role::Customer,
            account: Some("acme".into()),
        };
        add_user(&path, &alice, "long enough", &["acme"]).unwrap();
        (dir, path)
    }

    #[test]
    fn a_session_lives_until_idle_lifetime_or_logout() {
        let (_d, path) = setup();
        let users = WebUsers::load(&path).unwrap();
        let alice = users.get("alice").unwrap();
        let t0 = alice.password_changed_ns + 1;
        let s = Sessions::new(SessionRules::DEFAULT);
        let new = s.create(alice, t0).unwrap();
        assert_eq!(new.token.len(), 64);
        let seen = s.get(&new.token, &users, t0 + 29 * MIN).unwrap();
        assert_eq!(seen.name, "alice");
        assert_eq!(seen.account.as_deref(), Some("acme"));
        assert!(csrf_matches(&seen, &new.csrf));
        assert!(!csrf_matches(&seen, &new.token));
        assert!(!csrf_matches(&seen, ""));
        // Used at 29 min: alive at 58, idle-dead at 29 + 30.
        assert!(s.get(&new.token, &users, t0 + 58 * MIN).is_some());
        assert!(s.get(&new.token, &users, t0 + 88 * MIN + 1).is_none());
        assert!(s.is_empty());

        let other = s.create(alice, t0).unwrap();
        let mut t = t0;
        while t < t0 + 12 * 60 * MIN - 20 * MIN {
            t += 20 * MIN;
            assert!(s.get(&other.token, &users, t).is_some(), "at {t}");
        }
        assert!(s.get(&other.token, &users, t0 + 12 * 60 * MIN).is_none());

        let third = s.create(alice, t0).unwrap();
        s.end(&third.token);
        assert!(s.get(&third.token, &users, t0 + 1).is_none());
        assert!(s.get("not a token", &users, t0).is_none());
        assert!(s.get(&"0".repeat(64), &users, t0).is_none());
    }

    #[test]
    fn a_new_password_or_a_removed_user_ends_older_sessions() {
        let (_d, path) = setup();
        let users = WebUsers::load(&path).unwrap();
        let alice = users.get("alice").unwrap();
        let s = Sessions::new(SessionRules::DEFAULT);
        let now = alice.password_changed_ns + 1;
        let new = s.create(alice, now).unwrap();
        set_password(&path, "alice", "another password").unwrap();
        let users = WebUsers::load(&path).unwrap();
        let changed = users.get("alice").unwrap().password_changed_ns;
        assert!(s.get(&new.token, &users, changed + 1).is_none());
        let again = s.create(users.get("alice").unwrap(), changed + 1).unwrap();
        assert!(s.get(&again.token, &users, changed + 2).is_some());
        assert!(s
            .get(&again.token, &WebUsers::default(), changed + 3)
            .is_none());
    }

    #[test]
    fn the_table_is_bounded_by_evicting_the_longest_idle() {
        let (_d, path) = setup();
        let users = WebUsers::load(&path).unwrap();
        let alice = users.get("alice").unwrap();
        let s = Sessions::new(SessionRules {
            max_sessions: 3,
            ..SessionRules::DEFAULT
        });
        let t0 = alice.password_changed_ns + 1;
        let tokens: Vec<_> = (0..3).map(|i| s.create(alice, t0 + i).unwrap()).collect();
        assert!(s.get(&tokens[0].token, &users, t0 + 10).is_some());
        let fourth = s.create(alice, t0 + 11).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.get(&tokens[1].token, &users, t0 + 12).is_none());
        assert!(s.get(&tokens[0].token, &users, t0 + 12).is_some());
        assert!(s.get(&fourth.token, &users, t0 + 12).is_some());
    }
}
