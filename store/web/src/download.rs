//! Downloads: a file's bytes (with single HTTP ranges), or a directory (or anything, when a
//! format is asked for) as a `.tar.gz` or `.zip` archive written by the dump code, which
//! takes only what the user may read ([`xstore::DumpRequest::may_take`]). Each download
//! streams through [`crate::stream`] in bounded memory, holds one of the server's download
//! permits (503 when none is left), is always `application/octet-stream` with a
//! `Content-Disposition` no file name can break, and is written to the audit log with the
//! bytes actually sent when it ends.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use xstore::{DumpFormat, DumpRequest};
use xstore_browse::access::{Caller, MAY_EXEC, MAY_READ};
use xstore_browse::fsview::NodeAttr;
use xstore_format::meta::EntryKind;
use xstore_format::tree::Entry;

use crate::audit::AuditEvent;
use crate::browsing::blocking;
use crate::disposition::attachment;
use crate::locate::{locate, Located};
use crate::state::{Answer, App, Failure, LoggedIn, Peer};
use crate::stream::{channel, parse_range, PieceWriter, RangeAnswer, PIECE_BYTES};

/// The `?format=` of a download.
#[derive(Deserialize)]
pub struct DownloadQuery {
    format: Option<String>,
}

/// How a download is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    File,
    TarGz,
    Zip,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::File => "file",
            Shape::TarGz => "tar.gz",
            Shape::Zip => "zip",
        }
    }
}

/// Whether `caller` may take an entry's content into an archive (read a file; read and
/// search a directory), by the snapshot's modes and owners.
fn may_take(caller: &Caller, entry: &Entry) -> bool {
    let attr = NodeAttr {
        ino: 0,
        kind: entry.kind,
        attrs: xstore::Attrs {
            mode: entry.attrs.mode & 0o7777,
            ..entry.attrs
        },
        immutable: true,
    };
    let want = if entry.kind == EntryKind::Dir {
        MAY_READ | MAY_EXEC
    } else {
        MAY_READ
    };
    caller.may(&attr, want)
}

/// What the audit log records of a download once it ends.
struct Record {
    app: Arc<App>,
    address: std::net::IpAddr,
    user: String,
    host: String,
    snapshot: String,
    path: String,
    shape: Shape,
}

impl Record {
    fn write(self, bytes: u64) {
        self.app.audit(
            self.address,
            AuditEvent::Download {
                user: self.user,
                host: self.host,
                snapshot: self.snapshot,
                path: self.path,
                format: self.shape.name().to_string(),
                bytes,
            },
        );
    }
}

/// `GET /download/{host}/{snapshot}/{names…}[?format=tar.gz|zip]`.
pub async fn download(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Query(query): Query<DownloadQuery>,
    LoggedIn(user): LoggedIn,
    headers: HeaderMap,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Answer {
    let head = method == axum::http::Method::HEAD;
    let asked = match query.format.as_deref() {
        None => None,
        Some("tar.gz") => Some(Shape::TarGz),
        Some("zip") => Some(Shape::Zip),
        Some(_) => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "format: tar.gz or zip",
            ))
        }
    };
    let Ok(permit) = app.downloads.clone().try_acquire_owned() else {
        let mut busy = Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many downloads are running: try again shortly",
        )
        .into_response();
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(busy);
    };
    let raw = uri
        .path()
        .strip_prefix("/download/")
        .unwrap_or("")
        .to_string();
    let a = app.clone();
    let u = user.clone();
    let located = blocking(move || locate(&a, &u, &raw)).await?;
    let shape = match (asked, located.attr.kind) {
        (Some(s), _) => s,
        (None, EntryKind::File) => Shape::File,
        (None, _) => Shape::TarGz,
    };
    let want = match located.attr.kind {
        EntryKind::Dir => MAY_READ | MAY_EXEC,
        EntryKind::File => MAY_READ,
        _ => 0,
    };
    if !located.caller.may(&located.attr, want) {
        return Err(Failure::new(StatusCode::FORBIDDEN, "permission denied"));
    }
    let record = Record {
        app: app.clone(),
        address: peer.address(&headers),
        user: user.name.clone(),
        host: located.host.clone(),
        snapshot: located.snapshot.snapshot.id.to_string(),
        path: String::from_utf8_lossy(&located.path_bytes()).into_owned(),
        shape,
    };
    // A HEAD gets the headers only: nothing is read, sent or audited.
    Ok(match (shape, head) {
        (Shape::File, _) => file(located, &headers, record, (!head).then_some(permit)),
        (_, true) => archive_headers(
            (StatusCode::OK, Body::empty()).into_response(),
            &download_name(&located),
            shape,
        ),
        (Shape::TarGz | Shape::Zip, false) => archive(located, shape, record, permit),
    })
}

fn download_name(located: &Located) -> Vec<u8> {
    match located.names.last() {
        Some(n) => n.clone(),
        None => format!("{}-{}", located.host, located.snapshot_segment).into_bytes(),
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// A file's bytes, or the part a `Range` asks for.
fn file(
    located: Located,
    headers: &HeaderMap,
    record: Record,
    permit: Option<OwnedSemaphorePermit>,
) -> Response {
    let size = located.attr.attrs.size;
    let etag = format!(
        "\"{}-{:016x}\"",
        located.snapshot.snapshot.id.short(),
        located.attr.ino
    );
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => parse_range(Some(r), size),
        _ => RangeAnswer::Full,
    };
    let (status, start, len) = match range {
        RangeAnswer::Full => (StatusCode::OK, 0, size),
        RangeAnswer::Part { start, len } => (StatusCode::PARTIAL_CONTENT, start, len),
        RangeAnswer::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            return r;
        }
    };
    let set_headers = |mut r: Response| {
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::ETAG, header_value(&etag));
        h.insert(
            header::CONTENT_DISPOSITION,
            header_value(&attachment(&download_name(&located), "")),
        );
        if status == StatusCode::PARTIAL_CONTENT {
            h.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{}/{size}", start + len - 1)),
            );
        }
        r
    };
    let Some(permit) = permit else {
        return set_headers((status, Body::empty()).into_response());
    };
    let (tx, body) = channel();
    let view = located.view.clone();
    let ino = located.attr.ino;
    let producer = move || {
        let _permit = permit;
        // Each piece the view reads goes to the client as it is (no second copy).
        let mut sent = 0u64;
        let mut at = start;
        let end = start + len;
        while at < end {
            let want = PIECE_BYTES.min((end - at) as usize);
            let piece = match view.read(ino, at, want) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!("download of {}: {e}", record.path);
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    record.write(sent);
                    return;
                }
            };
            at += piece.len() as u64;
            let n = piece.len() as u64;
            if tx.blocking_send(Ok(bytes::Bytes::from(piece))).is_err() {
                break; // the client went away
            }
            sent += n;
        }
        record.write(sent);
    };
    match std::thread::Builder::new()
        .name("web-download".into())
        .spawn(producer)
    {
        Err(e) => Failure::internal("starting a download", e).into_response(),
        Ok(_) => set_headers((status, body).into_response()),
    }
}

/// An archive's headers: octet-stream, and its name with the format's suffix.
fn archive_headers(mut r: Response, name: &[u8], shape: Shape) -> Response {
    let suffix = if shape == Shape::Zip {
        ".zip"
    } else {
        ".tar.gz"
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        header_value(&attachment(name, suffix)),
    );
    r
}

/// A directory (or file) as a streamed archive.
fn archive(
    located: Located,
    shape: Shape,
    record: Record,
    permit: OwnedSemaphorePermit,
) -> Response {
    let (tx, body) = channel();
    let fail_tx = tx.clone();
    let name = download_name(&located);
    let producer = move || {
        let _permit = permit;
        let repo = match located.view.repository() {
            Ok(r) => r,
            Err(e) => {
                let _ = fail_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        let caller = located.caller.clone();
        let take = move |e: &Entry| may_take(&caller, e);
        let path = located.path_bytes();
        let request = DumpRequest {
            path: &path,
            format: Some(if shape == Shape::Zip {
                DumpFormat::Zip
            } else {
                DumpFormat::Tar
            }),
            may_take: Some(&take),
        };
        let snapshot = &located.snapshot.snapshot;
        let mut out = PieceWriter::new(tx);
        let written = if shape == Shape::Zip {
            repo.dump_request(snapshot, &request, &mut out).map(|_| ())
        } else {
            let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
            repo.dump_request(snapshot, &request, &mut gz)
                .and_then(|_| {
                    gz.try_finish().map_err(|e| xstore::Error::Io {
                        path: "<download>".into(),
                        source: e,
                    })
                })
        };
        match written.and_then(|()| {
            out.flush().map_err(|e| xstore::Error::Io {
                path: "<download>".into(),
                source: e,
            })
        }) {
            Ok(()) => record.write(out.sent()),
            Err(e) => {
                // The body ends with an error (the connection is cut): no client takes a
                // cut archive for a whole one.
                tracing::warn!("download of {} as {}: {e}", record.path, shape.name());
                let _ = fail_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                record.write(out.sent());
            }
        }
    };
    match std::thread::Builder::new()
        .name("web-archive".into())
        .spawn(producer)
    {
        Err(e) => Failure::internal("starting a download", e).into_response(),
        Ok(_) => archive_headers((StatusCode::OK, body).into_response(), &name, shape),
    }
}
