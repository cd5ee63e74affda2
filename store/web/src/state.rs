//! What the server holds between requests, and who a request is for: the users file and
//! inventory (reread when they change on disk), sessions, login limits, the audit log, and
//! one filesystem view per account, each showing only the account's hosts (operators: one
//! view of all), all sharing one byte-bounded cache in which no account hits another's
//! entries ([`xstore_browse::fsview::ViewCaches`]).
//!
//! A customer acts on its hosts' files as those hosts' root would over the account's NFS
//! export: root, squashed to `nobody` unless the account has `no_root_squash`, with the
//! snapshot's modes and owners checked as the kernel checks them
//! ([`xstore_browse::access::Caller::may`]). An operator acts as root of every host.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use xstore::HostName;
use xstore_browse::access::Caller;
use xstore_browse::fsview::{FsView, ViewCaches, ViewOptions};
use xstore_fleet::Inventory;

use crate::audit::{AuditEvent, AuditLog};
use crate::dav_logins::DavLogins;
use crate::history::History;
use crate::limit::{LoginLimiter, LoginLimits};
use crate::pages;
use crate::session::{SessionRules, SessionUser, Sessions};
use crate::users::{Role, WebUsers};

/// The session cookie's name. `__Host-`: browsers take it only when `Secure`, without
/// `Domain`, with `Path=/`, so no other host or path can set or shadow it.
pub const SESSION_COOKIE: &str = "__Host-xstore";
/// The login form's CSRF cookie (double submit: the form must carry the same value).
pub const LOGIN_COOKIE: &str = "__Host-xstore-login";

/// The client's address as the server sees it: the TCP peer, or behind a reverse proxy on
/// the Unix socket, the last address of its `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The TCP peer (`None` on the Unix socket).
    pub tcp: Option<IpAddr>,
}

impl Peer {
    /// The address to rate-limit and audit for this request.
    pub fn address(&self, headers: &HeaderMap) -> IpAddr {
        if let Some(a) = self.tcp {
            return a;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
    }
}

/// What identifies a version of a file: modification time (s, ns), size, inode.
type FileStamp = (i64, i64, u64, u64);

/// A file read again when its modification time, size or inode changes.
struct Reloaded<T> {
    path: PathBuf,
    load: fn(&Path) -> Result<T, String>,
    current: Mutex<Option<(FileStamp, Arc<T>)>>,
}

impl<T> Reloaded<T> {
    fn new(path: &Path, load: fn(&Path) -> Result<T, String>) -> Reloaded<T> {
        Reloaded {
            path: path.to_path_buf(),
            load,
            current: Mutex::new(None),
        }
    }

    /// The file's content as of now; an error names the file and its cause once.
    fn get(&self) -> Result<Arc<T>, String> {
        let meta = std::fs::symlink_metadata(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let stamp = (meta.mtime(), meta.mtime_nsec(), meta.size(), meta.ino());
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((s, value)) = current.as_ref() {
            if *s == stamp {
                return Ok(value.clone());
            }
        }
        let value = Arc::new((self.load)(&self.path)?);
        *current = Some((stamp, value.clone()));
        Ok(value)
    }
}

/// Which hosts a view shows: one account's, or all (operators).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A customer's account.
    Account(String),
    /// Every host (operators).
    All,
}

/// Settings of the server's state.
pub struct StateConfig {
    /// The repository.
    pub repo: PathBuf,
    /// The fleet inventory (accounts and their hosts).
    pub inventory: PathBuf,
    /// The users file.
    pub users: PathBuf,
    /// The audit log.
    pub audit: PathBuf,
    /// The history behind the charts.
    pub history: PathBuf,
    /// Session lifetimes.
    pub sessions: SessionRules,
    /// Login limits.
    pub login_limits: LoginLimits,
    /// Bytes of decoded trees and of decompressed chunks kept for all views together.
    pub cache_bytes: (usize, usize),
    /// Downloads running at once; more are answered 503.
    pub max_downloads: usize,
}

/// Nodes one view keeps at most (a 100,000-entry directory fits twice).
pub const MAX_VIEW_NODES: usize = 400_000;

/// A scope's view and the hosts it was opened for (`None`: all).
type ScopeView = (Option<Vec<HostName>>, Arc<FsView>);

/// The server's state (module documentation).
pub struct App {
    repo: PathBuf,
    inventory: Reloaded<Inventory>,
    users: Reloaded<WebUsers>,
    /// Live sessions.
    pub sessions: Sessions,
    /// Login attempt limits.
    pub limiter: LoginLimiter,
    audit: AuditLog,
    audit_path: PathBuf,
    history: Option<Arc<History>>,
    caches: Arc<ViewCaches>,
    /// Each scope's view, with the hosts it was opened for.
    views: Mutex<HashMap<Scope, ScopeView>>,
    /// Permits of running downloads.
    pub downloads: Arc<tokio::sync::Semaphore>,
    dav_logins: DavLogins,
}

/// A request's failure, answered with an error page (and logged when it is the server's).
#[derive(Debug)]
pub struct Failure {
    /// HTTP status.
    pub status: StatusCode,
    /// What the page says: nothing about what exists outside the user's hosts.
    pub message: String,
}

impl Failure {
    /// 404 with a message.
    pub fn not_found(what: &str) -> Failure {
        Failure {
            status: StatusCode::NOT_FOUND,
            message: format!("{what}: not found"),
        }
    }

    /// `status` with a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A failure of the server's own (repository, files): logged in full, shown briefly.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Failure {
        tracing::error!("{context}: {error}");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context} failed; the operator's log has the cause"),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let page = pages::error(None, self.status.as_u16(), &self.message);
        (self.status, axum::response::Html(page.into_string())).into_response()
    }
}

/// A result of a handler: a response, or an error page.
pub type Answer = Result<Response, Failure>;

fn load_users(path: &Path) -> Result<WebUsers, String> {
    WebUsers::load(path).map_err(|e| e.to_string())
}

fn load_inventory(path: &Path) -> Result<Inventory, String> {
    Inventory::load(path).map_err(|e| e.to_string())
}

impl App {
    /// The state for `config`: the users file, inventory, repository and audit log must all
    /// open now, so a mistake is reported at start, not at the first login.
    pub fn open(config: &StateConfig) -> Result<App, String> {
        let audit = AuditLog::open(&config.audit).map_err(|e| format!("audit log {e}"))?;
        let history = History::open(&config.history).map_err(|e| format!("history {e}"))?;
        let app = App {
            repo: config.repo.clone(),
            inventory: Reloaded::new(&config.inventory, load_inventory),
            users: Reloaded::new(&config.users, load_users),
            sessions: Sessions::new(config.sessions),
            limiter: LoginLimiter::new(config.login_limits),
            audit,
            audit_path: config.audit.clone(),
            history: Some(Arc::new(history)),
            caches: ViewCaches::new(config.cache_bytes.0, config.cache_bytes.1),
            views: Mutex::new(HashMap::new()),
            downloads: Arc::new(tokio::sync::Semaphore::new(config.max_downloads.max(1))),
            dav_logins: DavLogins::new().map_err(|e| format!("random bytes: {e}"))?,
        };
        app.users.get()?;
        app.inventory.get()?;
        app.view(&Scope::All).map_err(|f| f.message)?;
        Ok(app)
    }

    /// The users file as of now.
    pub fn users(&self) -> Result<Arc<WebUsers>, Failure> {
        self.users
            .get()
            .map_err(|e| Failure::internal("reading the users file", e))
    }

    /// The inventory as of now.
    pub fn inventory(&self) -> Result<Arc<Inventory>, Failure> {
        self.inventory
            .get()
            .map_err(|e| Failure::internal("reading the inventory", e))
    }

    /// WebDAV logins checked recently.
    pub fn dav_logins(&self) -> &DavLogins {
        &self.dav_logins
    }

    /// Where the audit log is.
    pub fn audit_path(&self) -> &Path {
        &self.audit_path
    }

    /// The history behind the charts.
    pub fn history(&self) -> Option<Arc<History>> {
        self.history.clone()
    }

    /// Samples the repository into the history now (the server does every interval).
    pub fn sample_history(&self) -> Result<usize, String> {
        let Some(history) = &self.history else {
            return Ok(0);
        };
        let inventory = self.inventory.get()?;
        // The views' shared read-only handle: no second index opened for the sample.
        let repo = self
            .view(&Scope::All)
            .and_then(|v| {
                v.repository()
                    .map_err(|e| Failure::internal("opening the repository", e))
            })
            .map_err(|f| f.message)?;
        history.sample(&repo, &inventory, xstore::now_ns())
    }

    /// Appends to the audit log; a failure is logged (the request it records went on).
    pub fn audit(&self, address: IpAddr, event: AuditEvent) {
        if let Err(e) = self.audit.record(xstore::now_ns(), address, event) {
            tracing::error!("audit log: {e}");
        }
    }

    /// The session of a request's cookie, if live.
    pub fn session(&self, headers: &HeaderMap) -> Result<Option<SessionUser>, Failure> {
        let Some(token) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let users = self.users()?;
        Ok(self.sessions.get(&token, &users, xstore::now_ns()))
    }

    /// The scope of a user's views.
    pub fn scope(user: &SessionUser) -> Scope {
        match (user.role, &user.account) {
            (Role::Operator, _) => Scope::All,
            (Role::Customer, Some(a)) => Scope::Account(a.clone()),
            // A customer without an account sees nothing (the users file forbids it).
            (Role::Customer, None) => Scope::Account(String::new()),
        }
    }

    /// The hosts a scope may see, from the inventory (`None`: all).
    pub fn scope_hosts(&self, scope: &Scope) -> Result<Option<Vec<HostName>>, Failure> {
        Ok(match scope {
            Scope::All => None,
            Scope::Account(a) => Some(
                self.inventory()?
                    .account(a)
                    .map(|acct| acct.hosts.clone())
                    .unwrap_or_default(),
            ),
        })
    }

    /// Who a user acts as on its hosts' files (module documentation).
    pub fn caller(&self, user: &SessionUser) -> Result<Caller, Failure> {
        let root = Caller {
            uid: 0,
            gid: 0,
            gids: Vec::new(),
        };
        Ok(match App::scope(user) {
            Scope::All => root,
            Scope::Account(a) => {
                let inventory = self.inventory()?;
                match inventory.account(&a) {
                    Some(acct) if acct.nfs.no_root_squash => root,
                    _ => root.squashed(),
                }
            }
        })
    }

    /// The view of a scope, opened when first asked for and again when the scope's hosts
    /// change in the inventory.
    pub fn view(&self, scope: &Scope) -> Result<Arc<FsView>, Failure> {
        let hosts = self.scope_hosts(scope)?;
        let mut views = self
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((h, v)) = views.get(scope) {
            if *h == hosts {
                return Ok(v.clone());
            }
        }
        // Pages and WebDAV resolve paths from the root per request: the nodes a view keeps
        // are a cache, bounded so that browsing many snapshots never grows the server.
        let opts = ViewOptions {
            hosts: hosts.clone(),
            max_nodes: Some(MAX_VIEW_NODES),
            ..ViewOptions::default()
        };
        let cache_scope = match scope {
            Scope::All => 0,
            Scope::Account(a) => {
                let h = blake3::hash(a.as_bytes());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default()).max(1)
            }
        };
        let view = FsView::open_with_caches(&self.repo, opts, self.caches.clone(), cache_scope)
            .map(Arc::new)
            .map_err(|e| Failure::internal("opening the repository", e))?;
        views.insert(scope.clone(), (hosts, view.clone()));
        Ok(view)
    }
}

/// The user of a request's live session. A handler taking it answers a request without one
/// with a redirect to the login form (and a users file that does not read with an error
/// page), before it runs.
pub struct LoggedIn(pub SessionUser);

impl axum::extract::FromRequestParts<Arc<App>> for LoggedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, Response> {
        match app.session(&parts.headers) {
            Ok(Some(user)) => Ok(LoggedIn(user)),
            Ok(None) => Err(axum::response::Redirect::to("/login").into_response()),
            Err(f) => Err(f.into_response()),
        }
    }
}

/// The value of cookie `name` in a request (the first one sent).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value for a cookie of this server: `Secure; HttpOnly; SameSite=Strict;
/// Path=/`, living `max_age` seconds (0: deleted now).
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}")
}

/// What a page's header shows of its user.
pub fn viewer(user: &SessionUser) -> pages::Viewer<'_> {
    pages::Viewer {
        name: &user.name,
        role: match (&user.role, &user.account) {
            (Role::Operator, _) => "operator".to_string(),
            (Role::Customer, Some(a)) => format!("customer of {a}"),
            (Role::Customer, None) => "customer".to_string(),
        },
        csrf: &user.csrf,
        operator: user.role == Role::Operator,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "__Host-xstore-login=abc; x=1".parse().unwrap(),
        );
        h.append(
            axum::http::header::COOKIE,
            "__Host-xstore=tok".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, LOGIN_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "y"), None);
    }

    #[test]
    fn behind_a_proxy_the_last_forwarded_address_counts() {
        let mut h = HeaderMap::new();
        let unix = Peer { tcp: None };
        assert_eq!(
            unix.address(&h),
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        );
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        assert_eq!(unix.address(&h), "198.51.100.7".parse::<IpAddr>().unwrap());
        let tcp = Peer {
            tcp: Some("192.0.2.1".parse().unwrap()),
        };
        assert_eq!(tcp.address(&h), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
