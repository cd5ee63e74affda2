//! WebDAV logins checked recently ([`crate::dav`]): a client sends its password with every
//! request, and Argon2 runs once per [`CREDENTIAL_TTL_NS`] instead. Kept under a BLAKE3 hash
//! keyed with a random key of this server, never as the password.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a checked password is remembered.
pub const CREDENTIAL_TTL_NS: i64 = 10 * 60 * 1_000_000_000;
/// Remembered logins at most.
pub const MAX_REMEMBERED: usize = 10_000;
/// Logins checked recently: keyed hash of (name, password) → who and until when.
pub struct DavLogins {
    key: [u8; 32],
    remembered: Mutex<HashMap<[u8; 32], (String, i64, i64)>>,
}

impl DavLogins {
    /// An empty table with a random key of its own.
    pub fn new() -> Result<DavLogins, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(DavLogins {
            key,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    /// The key a login is remembered under.
    pub fn id(&self, name: &str, password: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(password.as_bytes());
        *h.finalize().as_bytes()
    }

    /// The remembered logins: key → (user, until ns, the user's password_changed_ns).
    pub fn table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (String, i64, i64)>> {
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
