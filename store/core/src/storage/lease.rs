//! The writer lease of a repository in an object store: `<prefix>/lease`, a JSON object
//! naming the server that writes (FORMAT.md §Object store). The local `flock` serialises the
//! writers of one machine; the lease keeps a second machine attached to the same prefix from
//! writing while the first one does.
//!
//! Guarantee: a writer that finds a live lease of another holder refuses with one line naming
//! it. The lease is written conditionally (`If-None-Match: *` when absent, `If-Match` the
//! ETag read or last written): on stores that honour that (AWS S3, MinIO) taking it is
//! atomic. Garage 2.5 ignores both headers, so there taking it is put-then-read-back: two
//! servers that open within the same fraction of a second can both believe they hold it;
//! each re-reads the lease at every heartbeat and logs an error when it finds another
//! holder's token. A holder that dies leaves its lease until it
//! expires (`LEASE_SECONDS` after its last heartbeat), except to its own successor on the
//! same machine and repository directory: that one holds the local writer lock, which proves
//! the previous holder gone, and takes the lease over at once (a backup that failed because
//! the store went away could not delete its lease).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::s3::{Conditional, S3Storage};
use crate::error::{Error, Result};

/// How long a lease lives after its last heartbeat.
pub(crate) const LEASE_SECONDS: i64 = 120;
/// Heartbeats per lease lifetime.
const HEARTBEATS_PER_LEASE: u32 = 4;
/// The pause between writing the lease and reading it back (another server's simultaneous
/// write lands in it).
const SETTLE: Duration = Duration::from_millis(200);
const LEASE_NAME: &str = "lease";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Lease {
    /// "pid N on host H (repository directory)".
    holder: String,
    /// The holder's machine (`/etc/machine-id`, else its host name) and repository
    /// directory: a later writer with both equal holds the local lock the holder held.
    machine: String,
    directory: String,
    /// Random, per open: tells this holder's lease from an earlier one of the same host.
    token: String,
    heartbeat_ns: i64,
    expires_ns: i64,
}

/// A held lease: renewed by a thread until dropped, then deleted.
pub(crate) struct WriterLease {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    store: Arc<S3Storage>,
    token: String,
    standing: Arc<Standing>,
}

/// What the heartbeats learnt, for [`WriterLease::still_held`].
#[derive(Debug)]
struct Standing {
    /// The expiry of the last version this holder wrote.
    expires_ns: AtomicI64,
    /// The holder found in the lease object instead of this one, once a heartbeat saw it.
    taken_by: Mutex<Option<String>>,
    /// The ETag of the last version this holder wrote, where the store gives one: what each
    /// renewal must match, and what the release checks. Its one copy.
    e_tag: Mutex<Option<String>>,
}

impl Standing {
    fn taken(&self, by: String) {
        if let Ok(mut t) = self.taken_by.lock() {
            t.get_or_insert(by);
        }
    }

    fn is_taken(&self) -> bool {
        self.taken_by.lock().map_or(true, |t| t.is_some())
    }

    fn wrote(&self, e_tag: Option<String>) {
        if let Ok(mut t) = self.e_tag.lock() {
            *t = e_tag;
        }
    }

    /// The ETag the next renewal must match.
    fn last_e_tag(&self) -> Option<String> {
        self.e_tag.lock().ok().and_then(|t| t.clone())
    }

    /// Whether the version of the lease found (with `found` as its ETag) is the last one this
    /// holder wrote, as far as the store's ETags tell.
    fn is_last_written(&self, found: Option<&str>) -> bool {
        match (self.last_e_tag(), found) {
            (Some(ours), Some(found)) => ours == found,
            _ => true,
        }
    }

    /// Why this holder may no longer commit at `now_ns`, if it may not.
    fn lost_at(&self, now_ns: i64) -> Option<String> {
        if let Some(by) = self.taken_by.lock().ok().and_then(|t| t.clone()) {
            return Some(format!(
                "{by} took the writer lease while this server wrote"
            ));
        }
        let expires_ns = self.expires_ns.load(Ordering::SeqCst);
        (now_ns >= expires_ns).then(|| {
            format!(
                "this server's writer lease ran out at {} without a renewal (the store did \
                 not take its heartbeats), so another server may have taken it",
                crate::text::format_utc(expires_ns / 1_000_000_000)
            )
        })
    }
}

/// How long a lease lives after its last heartbeat (`XSTORE_LEASE_MS` in test builds, to see
/// one run out in a test).
fn lease_life_ns() -> i64 {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = std::env::var("XSTORE_LEASE_MS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        return ms.saturating_mul(1_000_000);
    }
    LEASE_SECONDS * 1_000_000_000
}

/// How often the lease is renewed: a quarter of its life (`XSTORE_LEASE_HEARTBEAT_MS` in
/// test builds, to see a heartbeat in a test).
fn heartbeat_interval() -> Duration {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = std::env::var("XSTORE_LEASE_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    Duration::from_secs((LEASE_SECONDS as u64) / u64::from(HEARTBEATS_PER_LEASE))
}

impl std::fmt::Debug for WriterLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterLease")
            .field("token", &self.token)
            .finish()
    }
}

fn read(store: &S3Storage) -> Result<Option<Lease>> {
    Ok(read_tagged(store)?.map(|(lease, _)| lease))
}

/// The lease and its ETag (what a conditional write of the next version must match).
fn read_tagged(store: &S3Storage) -> Result<Option<(Lease, Option<String>)>> {
    let Some((bytes, e_tag)) = store.get_file_tagged(LEASE_NAME)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(|lease| Some((lease, e_tag)))
        .map_err(|e| Error::Storage {
            endpoint: store.endpoint().to_string(),
            key: store.key_string(LEASE_NAME),
            reason: format!(
                "the writer lease is unreadable ({e}); if no other server writes to this \
                 prefix, delete the object"
            ),
            not_found: false,
        })
}

/// Writes `lease` if the lease object is still absent (`absent`) or still the version
/// `expected`: on a store with conditional writes a racing server loses here
/// ([`Conditional::Lost`]); elsewhere the read-back after [`SETTLE`] decides.
fn write(
    store: &S3Storage,
    lease: &Lease,
    expected: Option<&str>,
    absent: bool,
) -> Result<Conditional> {
    let bytes = serde_json::to_vec(lease).map_err(|e| Error::Encode {
        what: "the lease",
        reason: e.to_string(),
    })?;
    store.put_file_if(LEASE_NAME, &bytes, expected, absent)
}

/// The refusal of a writer that lost the race for the lease to another server.
fn lost(store: &S3Storage) -> Error {
    match read(store) {
        Ok(Some(other)) => refusal(store, &other, crate::clock::now_ns()),
        _ => Error::Locked {
            holder: format!(
                "another server (it wrote the lease {} at the same moment)",
                store.url_of(LEASE_NAME)
            ),
        },
    }
}

fn refusal(store: &S3Storage, other: &Lease, now: i64) -> Error {
    Error::Locked {
        holder: format!(
            "{} (lease {}, renewed {} s ago, expires at {})",
            other.holder,
            store.url_of(LEASE_NAME),
            now.saturating_sub(other.heartbeat_ns) / 1_000_000_000,
            crate::text::format_utc(other.expires_ns / 1_000_000_000)
        ),
    }
}

impl WriterLease {
    /// Takes the lease for `holder` writing to the repository directory `directory` (whose
    /// writer lock the caller holds), or refuses when another machine's or directory's lease
    /// is live.
    pub(crate) fn acquire(
        store: Arc<S3Storage>,
        holder: String,
        directory: &std::path::Path,
    ) -> Result<WriterLease> {
        let now = crate::clock::now_ns();
        let machine = machine_id();
        let directory = directory.display().to_string();
        let found = read_tagged(&store)?;
        if let Some((other, _)) = &found {
            let ours = other.machine == machine && other.directory == directory;
            if other.expires_ns > now && !ours {
                return Err(refusal(&store, other, now));
            }
            tracing::warn!(holder = %other.holder, "taking over a writer lease left behind");
        }
        let (absent, found_tag) = match &found {
            None => (true, None),
            Some((_, e_tag)) => (false, e_tag.clone()),
        };
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| Error::System {
            what: "random bytes for the lease token",
            reason: e.to_string(),
        })?;
        let token = xstore_format::bytes::to_hex(&token);
        let mut lease = Lease {
            holder,
            machine,
            directory,
            token: token.clone(),
            heartbeat_ns: now,
            expires_ns: now + lease_life_ns(),
        };
        // Another server may write the lease between the read above and this write.
        crate::failpoint::pause("lease-before-write");
        let e_tag = match write(&store, &lease, found_tag.as_deref(), absent)? {
            Conditional::Written(e_tag) => e_tag,
            Conditional::Lost => return Err(lost(&store)),
        };
        // Stores that ignore conditional writes: another server's write in the same moment
        // lands within the pause, and the read-back shows whose token won.
        std::thread::sleep(SETTLE);
        match read(&store)? {
            Some(l) if l.token == token => {}
            Some(other) => return Err(refusal(&store, &other, crate::clock::now_ns())),
            None => {
                return Err(Error::Locked {
                    holder: format!(
                        "another server (the lease {} vanished right after it was written)",
                        store.url_of(LEASE_NAME)
                    ),
                })
            }
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let standing = Arc::new(Standing {
            expires_ns: AtomicI64::new(lease.expires_ns),
            taken_by: Mutex::new(None),
            e_tag: Mutex::new(e_tag),
        });
        let thread = {
            let (stop, store, token) = (stop.clone(), store.clone(), token.clone());
            let standing = standing.clone();
            let every = heartbeat_interval();
            std::thread::Builder::new()
                .name("xstore-lease".into())
                .spawn(move || loop {
                    let (lock, cv) = &*stop;
                    let Ok(guard) = lock.lock() else { return };
                    let Ok((guard, _)) = cv.wait_timeout_while(guard, every, |stopped| !*stopped)
                    else {
                        return;
                    };
                    if *guard {
                        return;
                    }
                    drop(guard);
                    // A lease another server took stays lost: this holder neither renews
                    // it nor commits again (`still_held`).
                    match read(&store) {
                        Ok(Some(l)) if l.token != token => {
                            tracing::error!(
                                holder = %l.holder,
                                "another server took this repository's writer lease"
                            );
                            standing.taken(l.holder);
                            return;
                        }
                        _ => {}
                    }
                    let now = crate::clock::now_ns();
                    lease.heartbeat_ns = now;
                    lease.expires_ns = now + lease_life_ns();
                    // Renewed only if still the version this holder wrote: a store with
                    // conditional writes never lets a heartbeat overwrite a successor.
                    let expected = standing.last_e_tag();
                    match write(&store, &lease, expected.as_deref(), false) {
                        Ok(Conditional::Written(next)) => {
                            standing.wrote(next);
                            standing
                                .expires_ns
                                .store(lease.expires_ns, Ordering::SeqCst);
                        }
                        Ok(Conditional::Lost) => {
                            tracing::error!(
                                "another server took this repository's writer lease; not renewed"
                            );
                            let by = match read(&store) {
                                Ok(Some(l)) => l.holder,
                                _ => "another server".to_string(),
                            };
                            standing.taken(by);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e,
                            "writer lease not renewed; retrying at the next heartbeat"),
                    }
                })
                .map_err(|e| Error::System {
                    what: "the lease's heartbeat thread",
                    reason: e.to_string(),
                })?
        };
        crate::failpoint::pause("lease-held");
        Ok(WriterLease {
            stop,
            thread: Some(thread),
            store,
            token,
            standing,
        })
    }

    /// Whether this server may still commit: no heartbeat found another holder in the lease,
    /// and its last renewal has not run out (a store that stopped answering for the lease's
    /// lifetime lets another server take it). Called right before a commit's index batch
    /// and before gc's deletions; `withheld` says what the caller then does not do.
    pub(crate) fn still_held(&self, withheld: &'static str) -> Result<()> {
        match self.standing.lost_at(crate::clock::now_ns()) {
            None => Ok(()),
            Some(reason) => Err(Error::LeaseLost {
                lease: self.store.url_of(LEASE_NAME),
                reason,
                withheld,
            }),
        }
    }
}

/// This machine: `/etc/machine-id` (unique per installation, also across cloned host
/// names), else the host name.
fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(crate::fsutil::local_hostname)
}

impl Drop for WriterLease {
    fn drop(&mut self) {
        if let Ok(mut stopped) = self.stop.0.lock() {
            *stopped = true;
            self.stop.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only our own lease is released: not one a heartbeat found taken, nor a version of
        // it this holder did not write (its ETag says so where the store gives ETags).
        if self.standing.is_taken() {
            return;
        }
        match read_tagged(&self.store) {
            Ok(Some((l, e_tag)))
                if l.token == self.token && self.standing.is_last_written(e_tag.as_deref()) =>
            {
                if let Err(e) = self.store.delete_file(LEASE_NAME) {
                    tracing::warn!(error = %e, "writer lease not released; it expires by itself");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_may_commit_until_its_lease_is_taken_or_runs_out_unrenewed() {
        let standing = Standing {
            expires_ns: AtomicI64::new(1_000_000_000_000),
            taken_by: Mutex::new(None),
            e_tag: Mutex::new(None),
        };
        assert_eq!(standing.lost_at(999_999_999_999), None);
        let ran_out = standing.lost_at(1_000_000_000_000).unwrap();
        assert!(
            ran_out.contains("ran out at 1970-01-01T00:16:40Z"),
            "{ran_out}"
        );
        // A renewal moves the expiry; a lease taken stays lost whatever the clock says.
        standing
            .expires_ns
            .store(2_000_000_000_000, Ordering::SeqCst);
        assert_eq!(standing.lost_at(1_000_000_000_000), None);
        standing.taken("pid 7 on host b (/r)".into());
        standing.taken("pid 8 on host c (/r)".into());
        assert_eq!(
            standing.lost_at(0).as_deref(),
            Some("pid 7 on host b (/r) took the writer lease while this server wrote")
        );
    }

    #[test]
    fn a_holder_releases_only_the_version_it_wrote_last_where_the_store_tells() {
        let standing = Standing {
            expires_ns: AtomicI64::new(0),
            taken_by: Mutex::new(None),
            e_tag: Mutex::new(None),
        };
        // No ETags (a store that gives none): the token alone decides.
        assert!(standing.is_last_written(Some("\"a\"")));
        standing.wrote(Some("\"a\"".into()));
        assert!(standing.is_last_written(Some("\"a\"")));
        assert!(!standing.is_last_written(Some("\"b\"")));
        assert!(standing.is_last_written(None));
        assert!(!standing.is_taken());
        standing.taken("pid 7 on host b (/r)".into());
        assert!(standing.is_taken());
    }
}
