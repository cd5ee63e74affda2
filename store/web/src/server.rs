//! `serve_web`: the routes, the headers every answer carries, and the listeners: HTTPS with
//! rustls on a TCP address, or plain HTTP/1.1 on a Unix socket for a reverse proxy that
//! terminates TLS. Connections are bounded in number and in how long a request's header may
//! take; TLS handshakes run per connection, never in the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

use crate::limit::LoginLimits;
use crate::pages::{STYLE, STYLE_PATH};
use crate::session::SessionRules;
use crate::state::{App, Failure, Peer, StateConfig};
use crate::{browsing, dav, download, fleetview, login};

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// HTTPS on a TCP address, with a certificate chain and its private key (PEM files).
    Https {
        /// Address and port (port 0: any free one, reported to `on_ready`).
        addr: SocketAddr,
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// Plain HTTP on a Unix socket, for a reverse proxy that terminates TLS and sets
    /// `X-Forwarded-For`. The socket is created 0660; the directory it is in decides who
    /// can reach it.
    Unix(PathBuf),
}

/// Everything `serve_web` needs.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The repository (opened read-only).
    pub repo: PathBuf,
    /// The fleet inventory: accounts and their hosts.
    pub inventory: PathBuf,
    /// The users file.
    pub users: PathBuf,
    /// The audit log.
    pub audit: PathBuf,
    /// The history behind the charts (sampled every `sample_every`).
    pub history: PathBuf,
    /// How often the repository is sampled into the history.
    pub sample_every: Duration,
    /// Where to listen.
    pub listen: Listen,
    /// Session lifetimes.
    pub sessions: SessionRules,
    /// Login attempt limits.
    pub login_limits: LoginLimits,
    /// Downloads at once (more are answered 503).
    pub max_downloads: usize,
    /// Connections at once (more are closed at accept).
    pub max_connections: usize,
}

impl WebConfig {
    /// Defaults for everything but the files and the listener: 256 downloads, 1,024
    /// connections, the default session and login rules, the history sampled hourly.
    pub fn new(
        repo: PathBuf,
        inventory: PathBuf,
        users: PathBuf,
        audit: PathBuf,
        history: PathBuf,
        listen: Listen,
    ) -> WebConfig {
        WebConfig {
            repo,
            inventory,
            users,
            audit,
            history,
            sample_every: Duration::from_secs(3600),
            listen,
            sessions: SessionRules::DEFAULT,
            login_limits: LoginLimits::DEFAULT,
            max_downloads: 256,
            max_connections: 1024,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A file the server needs (users, inventory, repository, audit log) did not open.
    #[error("{0}")]
    Setup(String),
    /// The certificate or key did not load.
    #[error("TLS {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The listener could not be created.
    #[error("listen on {what}: {source}")]
    Listen {
        /// The address or socket path.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime did not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Headers on every answer: a Content-Security-Policy that allows only this origin's
/// stylesheet and images (no script at all), no framing, no sniffing, no referrer, HSTS.
/// Pages and downloads are never cached by anyone.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

async fn not_found() -> Response {
    Failure::not_found("page").into_response()
}

/// The routes of the web front over `app`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(browsing::root))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/hosts", get(browsing::hosts))
        .route("/host/{host}", get(browsing::host))
        .route("/browse/{*tail}", get(browsing::browse))
        .route("/download/{*tail}", get(download::download))
        .route("/dav", any(dav::dav))
        .route("/dav/", any(dav::dav))
        .route("/dav/{*path}", any(dav::dav))
        .route("/usage", get(fleetview::usage))
        .route("/operator", get(fleetview::operator))
        .route("/audit", get(fleetview::audit))
        .route("/chart/{name}", get(fleetview::chart))
        .route(STYLE_PATH, get(stylesheet))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |path: &Path, reason: String| ServeError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls(cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls(key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves one connection: HTTP/1.1, a request's header within 30 s.
async fn serve_connection<I>(io: I, peer: Peer, routes: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer);
        let mut routes = routes.clone();
        async move {
            use tower_service::Service;
            routes.call(request.map(axum::body::Body::new)).await
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("connection: {e}");
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn run(
    listen: Listen,
    routes: Router,
    max_connections: usize,
    tls: Option<rustls::ServerConfig>,
    on_ready: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ServeError> {
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let listen_error = |what: String| move |source| ServeError::Listen { what, source };
    match listen {
        Listen::Https { addr, .. } => {
            let acceptor =
                tokio_rustls::TlsAcceptor::from(Arc::new(tls.ok_or_else(|| {
                    ServeError::Setup("HTTPS without a TLS configuration".into())
                })?));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_error(addr.to_string()))?;
            let local = listener
                .local_addr()
                .map_err(listen_error(addr.to_string()))?;
            on_ready(&format!("https://{local}/"));
            loop {
                let Ok((tcp, from)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let routes = routes.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = tcp.set_nodelay(true);
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let peer = Peer {
                        tcp: Some(from.ip().to_canonical()),
                    };
                    serve_connection(tls, peer, routes).await;
                });
            }
        }
        Listen::Unix(path) => {
            let listener = bind_unix(&path).map_err(listen_error(path.display().to_string()))?;
            on_ready(&format!("unix:{}", path.display()));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    continue;
                };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_connection(stream, Peer { tcp: None }, routes).await;
                });
            }
        }
    }
}

/// Binds the Unix socket at `path`: a socket left there by an earlier run is replaced;
/// anything else there is an error (nothing but a socket is ever removed).
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Samples the repository into the history now and then every `every`, on a thread of its
/// own (a sample reads the whole index once; pages never wait for it).
fn start_sampler(app: Arc<App>, every: Duration) -> Result<(), ServeError> {
    std::thread::Builder::new()
        .name("web-history".into())
        .spawn(move || loop {
            if let Err(e) = app.sample_history() {
                tracing::error!("sampling the history: {e}");
            }
            std::thread::sleep(every.max(Duration::from_secs(1)));
        })
        .map(|_| ())
        .map_err(ServeError::Runtime)
}

/// Runs the web front until the process ends: checks that the users file, inventory,
/// repository, audit log and TLS files all load, listens, calls `on_ready` with where
/// (`https://127.0.0.1:8443/` or `unix:/run/xstore/web.sock`), and serves.
pub fn serve_web(
    config: &WebConfig,
    on_ready: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ServeError> {
    let tls = match &config.listen {
        Listen::Https { cert, key, .. } => Some(tls_config(cert, key)?),
        Listen::Unix(_) => None,
    };
    let app = App::open(&StateConfig {
        repo: config.repo.clone(),
        inventory: config.inventory.clone(),
        users: config.users.clone(),
        audit: config.audit.clone(),
        history: config.history.clone(),
        sessions: config.sessions,
        login_limits: config.login_limits,
        cache_bytes: (64 << 20, 128 << 20),
        max_downloads: config.max_downloads,
    })
    .map_err(ServeError::Setup)?;
    let app = Arc::new(app);
    start_sampler(app.clone(), config.sample_every)?;
    let routes = router(app);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xstore-web")
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(run(
        config.listen.clone(),
        routes,
        config.max_connections,
        tls,
        on_ready,
    ))
}
