//! Rate limits of login attempts, per user name and per client address: each failed attempt
//! fills a bucket that drains at a fixed rate, and a full bucket refuses further attempts
//! (right or wrong) until it has drained one step. Guessing one user's password from many
//! addresses is slowed by the user's bucket; trying many names from one address by the
//! address's. IPv6 addresses count per /64, the smallest block a client usually holds.
//!
//! Memory is bounded: each table keeps at most [`LoginLimits::max_entries`] buckets, and
//! drained buckets are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// How many failures a bucket holds and how fast it drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures per user name before attempts are refused.
    pub per_user: u32,
    /// Failures per address (IPv6: per /64) before attempts are refused.
    pub per_address: u32,
    /// One failure drains from a bucket every this many ns.
    pub drain_ns: i64,
    /// Buckets kept per table at most.
    pub max_entries: usize,
}

impl LoginLimits {
    /// 5 failures per user, 20 per address, one drained per minute, 100,000 buckets.
    pub const DEFAULT: LoginLimits = LoginLimits {
        per_user: 5,
        per_address: 20,
        drain_ns: 60 * 1_000_000_000,
        max_entries: 100_000,
    };
}

/// A refused attempt: try again after this many ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub i64);

impl RetryAfter {
    /// Whole seconds to wait, at least 1 (for a `Retry-After` header).
    pub fn seconds(self) -> u64 {
        (self.0.max(0) as u64).div_ceil(1_000_000_000).max(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures held, in units of `drain_ns` (so draining is a subtraction).
    level_ns: i64,
    at_ns: i64,
}

/// The login attempt limits of one server.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    users: Mutex<HashMap<String, Bucket>>,
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
}

impl LoginLimiter {
    /// Empty buckets.
    pub fn new(limits: LoginLimits) -> LoginLimiter {
        LoginLimiter {
            limits,
            users: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an attempt for `user` from `address` may be checked now; when not, how long
    /// to wait. Ask before verifying the password, so a refused attempt costs no Argon2.
    pub fn check(&self, user: &str, address: IpAddr, now_ns: i64) -> Result<(), RetryAfter> {
        let l = &self.limits;
        let by_user = wait(
            lock(&self.users).get(user).copied(),
            l.per_user,
            l.drain_ns,
            now_ns,
        );
        let by_address = wait(
            lock(&self.addresses).get(&block(address)).copied(),
            l.per_address,
            l.drain_ns,
            now_ns,
        );
        match by_user.max(by_address) {
            0 => Ok(()),
            ns => Err(RetryAfter(ns)),
        }
    }

    /// Counts a failed attempt (a wrong password, or a name that does not exist).
    pub fn failed(&self, user: &str, address: IpAddr, now_ns: i64) {
        let l = &self.limits;
        fill(
            &mut lock(&self.users),
            user.to_string(),
            l.per_user,
            l,
            now_ns,
        );
        fill(
            &mut lock(&self.addresses),
            block(address),
            l.per_address,
            l,
            now_ns,
        );
    }

    /// A successful login clears the user's bucket (not the address's: one right password
    /// must not reset a scan of other names from there).
    pub fn succeeded(&self, user: &str) {
        lock(&self.users).remove(user);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each change is one call on a plain map: a panic elsewhere leaves it consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The key an address counts under: itself, or its /64 for IPv6 (an IPv4-mapped address
/// counts as the IPv4 one).
fn block(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A bucket's level at `now_ns`: one ns drains per ns, since levels count in ns.
fn drained(b: &Bucket, now_ns: i64) -> i64 {
    let elapsed = now_ns.saturating_sub(b.at_ns).max(0);
    b.level_ns.saturating_sub(elapsed).max(0)
}

/// ns until `bucket` has room for one more failure (0: it has room now).
fn wait(bucket: Option<Bucket>, capacity: u32, drain_ns: i64, now_ns: i64) -> i64 {
    let Some(b) = bucket else { return 0 };
    let full = i64::from(capacity).saturating_mul(drain_ns);
    // Room when at least one step below full.
    drained(&b, now_ns)
        .saturating_sub(full.saturating_sub(drain_ns))
        .max(0)
}

/// Adds one failure to the bucket of `key`, making room in a full table first: drained
/// buckets go, and if none has, the one nearest to drained.
fn fill<K: std::hash::Hash + Eq + Clone>(
    table: &mut HashMap<K, Bucket>,
    key: K,
    capacity: u32,
    limits: &LoginLimits,
    now_ns: i64,
) {
    if !table.contains_key(&key) && table.len() >= limits.max_entries {
        table.retain(|_, b| drained(b, now_ns) > 0);
        if table.len() >= limits.max_entries {
            let nearest = table
                .iter()
                .min_by_key(|(_, b)| drained(b, now_ns))
                .map(|(k, _)| k.clone());
            if let Some(k) = nearest {
                table.remove(&k);
            }
        }
    }
    let full = i64::from(capacity).saturating_mul(limits.drain_ns);
    let b = table.entry(key).or_insert(Bucket {
        level_ns: 0,
        at_ns: now_ns,
    });
    b.level_ns = drained(b, now_ns).saturating_add(limits.drain_ns).min(full);
    b.at_ns = now_ns;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_failures_lock_a_user_for_a_minute_per_step() {
        let l = LoginLimiter::new(LoginLimits::DEFAULT);
        let a = addr("192.0.2.1");
        for i in 0..5 {
            assert_eq!(l.check("alice", a, i * S), Ok(()), "attempt {i}");
            l.failed("alice", a, i * S);
        }
        let refused = l.check("alice", addr("198.51.100.7"), 5 * S).unwrap_err();
        assert_eq!(refused.seconds(), 55);
        assert_eq!(l.check("bob", a, 5 * S), Ok(()));
        assert_eq!(l.check("alice", a, 61 * S), Ok(()));
        l.failed("alice", a, 61 * S);
        assert!(l.check("alice", a, 62 * S).is_err());
        l.succeeded("alice");
        assert_eq!(l.check("alice", addr("198.51.100.7"), 62 * S), Ok(()));
    }

    #[test]
    fn many_names_from_one_address_or_its_ipv6_block_are_limited() {
        let l = LoginLimiter::new(LoginLimits::DEFAULT);
        for i in 0..20 {
            let a = addr(&format!("2001:db8:1:2::{:x}", i + 1));
            let user = format!("user{i}");
            assert_eq!(l.check(&user, a, 0), Ok(()));
            l.failed(&user, a, 0);
        }
        let r = l
            .check("someone", addr("2001:db8:1:2:ffff::9"), 0)
            .unwrap_err();
        assert_eq!(r.seconds(), 60);
        assert_eq!(l.check("someone", addr("2001:db8:1:3::1"), 0), Ok(()));
        // IPv4-mapped counts as the IPv4 address.
        for _ in 0..20 {
            l.failed("xxx", addr("::ffff:192.0.2.9"), 0);
            l.succeeded("xxx");
        }
        assert!(l.check("y", addr("192.0.2.9"), 0).is_err());
    }

    #[test]
    fn the_tables_stay_bounded() {
        let l = LoginLimiter::new(LoginLimits {
            max_entries: 100,
            ..LoginLimits::DEFAULT
        });
        for i in 0..1000 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.failed(&format!("u{i}"), a, i64::from(i));
        }
        assert!(lock(&l.users).len() <= 100);
        assert!(lock(&l.addresses).len() <= 100);
    }
}
