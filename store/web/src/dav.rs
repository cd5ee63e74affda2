//! Read-only WebDAV at `/dav/` (the `dav-server` crate), for davfs2, GNOME Files and Windows
//! Explorer: the tree the FUSE mount and NFS export show (`/<tier>.<n>/<host>/…`,
//! `/hosts/<host>/<time>/…`) of the user's hosts only, with the same logins (HTTP Basic
//! over TLS, since WebDAV clients send no forms) and the same permission checks as the pages.
//!
//! A password is checked with Argon2 once and then remembered for [`CREDENTIAL_TTL_NS`] under
//! a keyed hash (a client sends it with every request); a remembered login ends with the
//! user's removal or a new password, as sessions do. Failed attempts count against the same
//! limits as the login form. Only GET, HEAD, OPTIONS and PROPFIND are served; symlinks in
//! snapshots are hidden (never followed); every file GET is in the audit log.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Extension, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, FsError, FsFuture, FsResult, FsStream,
    OpenOptions, ReadDirMeta,
};
use dav_server::{DavHandler, DavMethodSet};
use xstore_browse::access::{Caller, MAY_EXEC, MAY_READ};
use xstore_browse::fsview::{FsError as ViewError, FsView, NodeAttr, HOSTS_DIR};
use xstore_format::meta::EntryKind;

use crate::audit::AuditEvent;
use crate::dav_logins::{CREDENTIAL_TTL_NS, MAX_REMEMBERED};
use crate::session::SessionUser;
use crate::state::{App, Peer};
use crate::users::{MAX_NAME, MAX_PASSWORD_BYTES};

/// Bytes one read of a file hands the client at most.
const READ_PIECE: usize = 256 << 10;

fn unauthorized() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "log in with your web front user\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"xstore\", charset=\"UTF-8\""),
    );
    r
}

fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?.trim();
    if encoded.len() > 4 * (MAX_NAME + MAX_PASSWORD_BYTES + 2) / 3 + 4 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

/// Who the request's Basic credentials log in, or the answer (401, 429).
async fn authenticate(
    app: &Arc<App>,
    peer: Peer,
    headers: &axum::http::HeaderMap,
) -> Result<SessionUser, Response> {
    let Some((name, password)) = basic_credentials(headers) else {
        return Err(unauthorized());
    };
    let now = xstore::now_ns();
    let users = app.users().map_err(IntoResponse::into_response)?;
    let logins = app.dav_logins();
    let id = logins.id(&name, &password);
    let current = |user: &crate::users::WebUser| SessionUser {
        name: user.name.clone(),
        role: user.role,
        account: user.account.clone(),
        csrf: String::new(),
    };
    if let Some((user, until, changed)) = logins.table().get(&id).cloned() {
        if until > now {
            if let Some(u) = users
                .get(&user)
                .filter(|u| u.password_changed_ns == changed)
            {
                return Ok(current(u));
            }
        }
    }
    let address = peer.address(headers);
    if let Err(wait) = app.limiter.check(&name, address, now) {
        app.audit(
            address,
            AuditEvent::Login {
                user: name,
                ok: false,
                reason: Some("webdav: rate limited".into()),
            },
        );
        let mut r = (StatusCode::TOO_MANY_REQUESTS, "too many attempts\n").into_response();
        if let Ok(v) = wait.seconds().to_string().parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(r);
    }
    let (u, n, p) = (users.clone(), name.clone(), password);
    let verified = tokio::task::spawn_blocking(move || u.verify(&n, &p).cloned())
        .await
        .ok()
        .flatten();
    let Some(user) = verified else {
        app.limiter.failed(&name, address, now);
        app.audit(
            address,
            AuditEvent::Login {
                user: name,
                ok: false,
                reason: Some("webdav: wrong user name or password".into()),
            },
        );
        return Err(unauthorized());
    };
    app.limiter.succeeded(&user.name);
    app.audit(
        address,
        AuditEvent::Login {
            user: user.name.clone(),
            ok: true,
            reason: Some("webdav".into()),
        },
    );
    let mut table = logins.table();
    table.retain(|_, (_, until, _)| *until > now);
    if table.len() < MAX_REMEMBERED {
        table.insert(
            id,
            (
                user.name.clone(),
                now + CREDENTIAL_TTL_NS,
                user.password_changed_ns,
            ),
        );
    }
    Ok(current(&user))
}

/// `/dav/…`: read-only WebDAV of the user's hosts.
pub async fn dav(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    request: Request,
) -> Response {
    let user = match authenticate(&app, peer, request.headers()).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (view, caller) = match (app.view(&App::scope(&user)), app.caller(&user)) {
        (Ok(v), Ok(c)) => (v, c),
        (Err(f), _) | (_, Err(f)) => return f.into_response(),
    };
    let is_get = request.method() == Method::GET;
    let path = DavPath::from_uri(request.uri()).ok();
    let address = peer.address(request.headers());
    let fs = DavView {
        view: view.clone(),
        caller,
    };
    let handler = DavHandler::builder()
        .filesystem(Box::new(fs))
        .strip_prefix("/dav")
        .methods(DavMethodSet::WEBDAV_RO)
        .hide_symlinks(true)
        .autoindex(false)
        .build_handler();
    let response = handler.handle(request).await.map(Body::new);
    if is_get && response.status().is_success() {
        if let Some(path) = path {
            record_download(&app, &view, address, &user.name, path.as_bytes(), &response);
        }
    }
    response
}

/// Writes a file GET to the audit log: host, snapshot id and the path inside it.
fn record_download(
    app: &App,
    view: &FsView,
    address: std::net::IpAddr,
    user: &str,
    path: &[u8],
    response: &Response,
) {
    let path = path.strip_prefix(b"/dav").unwrap_or(path);
    let parts: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let (host, snapshot, rest) = match parts.as_slice() {
        [dir, h, name, rest @ ..] if *dir == HOSTS_DIR.as_bytes() => (*h, *name, rest),
        [position, h, rest @ ..] => (*h, *position, rest),
        _ => return,
    };
    let host = String::from_utf8_lossy(host).into_owned();
    let named = String::from_utf8_lossy(snapshot).into_owned();
    let id = view
        .host_snapshots(&host)
        .ok()
        .and_then(|all| {
            all.into_iter()
                .find(|s| s.name == named || s.positions.contains(&named))
        })
        .map_or(named, |s| s.snapshot.id.to_string());
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let inner: Vec<String> = rest
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    app.audit(
        address,
        AuditEvent::Download {
            user: user.to_string(),
            host,
            snapshot: id,
            path: format!("/{}", inner.join("/")),
            format: "webdav".to_string(),
            bytes,
        },
    );
}

/// The user's view as a WebDAV filesystem.
#[derive(Clone)]
struct DavView {
    view: Arc<FsView>,
    caller: Caller,
}

fn dav_error(e: ViewError) -> FsError {
    match e {
        ViewError::NotFound | ViewError::NotADirectory | ViewError::NotASymlink => {
            FsError::NotFound
        }
        ViewError::PermissionDenied | ViewError::ReadOnly | ViewError::IsADirectory => {
            FsError::Forbidden
        }
        ViewError::Repo(e) => {
            tracing::error!("webdav: {e}");
            FsError::GeneralFailure
        }
    }
}

impl DavView {
    fn resolve(&self, path: &[u8]) -> FsResult<NodeAttr> {
        let may_search = |a: &NodeAttr| self.caller.may(a, MAY_EXEC);
        self.view
            .resolve_mount_path(path, Some(&may_search))
            .map_err(dav_error)
    }

    /// Runs `f` on the blocking pool (the view reads the repository).
    fn blocking<'a, T: Send + 'static>(
        &self,
        f: impl FnOnce(DavView) -> FsResult<T> + Send + 'static,
    ) -> FsFuture<'a, T> {
        let me = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(me))
                .await
                .map_err(|_| FsError::GeneralFailure)?
        })
    }
}

#[derive(Debug, Clone)]
struct Meta {
    len: u64,
    modified_ns: i64,
    kind: EntryKind,
    ino: u64,
}

impl Meta {
    fn of(attr: &NodeAttr) -> Meta {
        Meta {
            len: if attr.kind == EntryKind::File {
                attr.attrs.size
            } else {
                0
            },
            modified_ns: attr.attrs.mtime_ns,
            kind: attr.kind,
            ino: attr.ino,
        }
    }
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.len
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(UNIX_EPOCH + Duration::from_nanos(self.modified_ns.max(0) as u64))
    }
    fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
    fn is_symlink(&self) -> bool {
        self.kind == EntryKind::Symlink
    }
    fn is_file(&self) -> bool {
        self.kind == EntryKind::File
    }
    fn etag(&self) -> Option<String> {
        Some(format!("{:016x}-{:x}", self.ino, self.len))
    }
}

struct Entry {
    name: Vec<u8>,
    meta: Meta,
}

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.name.clone()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        Box::pin(std::future::ready(Ok(meta)))
    }
}

struct Reader {
    view: Arc<FsView>,
    meta: Meta,
    at: u64,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("meta", &self.meta)
            .field("at", &self.at)
            .finish()
    }
}

impl DavFile for Reader {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        Box::pin(std::future::ready(Ok(meta)))
    }
    fn write_buf(&mut self, _: Box<dyn bytes::Buf + Send>) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Err(FsError::Forbidden)))
    }
    fn write_bytes(&mut self, _: bytes::Bytes) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Err(FsError::Forbidden)))
    }
    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, bytes::Bytes> {
        let (view, ino, at) = (self.view.clone(), self.meta.ino, self.at);
        let want = count.min(READ_PIECE);
        Box::pin(async move {
            let data = tokio::task::spawn_blocking(move || view.read(ino, at, want))
                .await
                .map_err(|_| FsError::GeneralFailure)?
                .map_err(dav_error)?;
            self.at += data.len() as u64;
            Ok(bytes::Bytes::from(data))
        })
    }
    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.at.checked_add_signed(d),
            SeekFrom::End(d) => self.meta.len.checked_add_signed(d),
        };
        let result = match to {
            Some(n) => {
                self.at = n;
                Ok(n)
            }
            None => Err(FsError::GeneralFailure),
        };
        Box::pin(std::future::ready(result))
    }
    fn flush(&mut self) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl DavFileSystem for DavView {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        if options.write
            || options.append
            || options.truncate
            || options.create
            || options.create_new
        {
            return Box::pin(std::future::ready(Err(FsError::Forbidden)));
        }
        let path = path.as_bytes().to_vec();
        self.blocking(move |me| {
            let attr = me.resolve(&path)?;
            if attr.kind != EntryKind::File {
                return Err(FsError::Forbidden);
            }
            if !me.caller.may(&attr, MAY_READ) {
                return Err(FsError::Forbidden);
            }
            let file: Box<dyn DavFile> = Box::new(Reader {
                view: me.view.clone(),
                meta: Meta::of(&attr),
                at: 0,
            });
            Ok(file)
        })
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        let path = path.as_bytes().to_vec();
        self.blocking(move |me| {
            let attr = me.resolve(&path)?;
            if attr.kind != EntryKind::Dir {
                return Err(FsError::Forbidden);
            }
            if !me.caller.may(&attr, MAY_READ | MAY_EXEC) {
                return Err(FsError::Forbidden);
            }
            let items = me.view.readdir(attr.ino).map_err(dav_error)?;
            let entries: Vec<FsResult<Box<dyn DavDirEntry>>> = items
                .into_iter()
                .map(|item| {
                    let entry: Box<dyn DavDirEntry> = Box::new(Entry {
                        meta: Meta::of(&item.attr),
                        name: item.name,
                    });
                    Ok(entry)
                })
                .collect();
            let stream: FsStream<Box<dyn DavDirEntry>> =
                Box::pin(futures_util::stream::iter(entries));
            Ok(stream)
        })
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        let path = path.as_bytes().to_vec();
        self.blocking(move |me| {
            let meta: Box<dyn DavMetaData> = Box::new(Meta::of(&me.resolve(&path)?));
            Ok(meta)
        })
    }
}
