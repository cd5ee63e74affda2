//! Packs in a bucket of an S3-compatible object store (FORMAT.md §Object store): the keys
//! are the local layout's names under the configured prefix (`<prefix>/packs/XX/<id>.pack`,
//! `<prefix>/config`).
//!
//! The client is `object_store` (the Arrow project's) over a private tokio runtime: calls
//! block the calling thread, as every other storage call does. Transient failures (5xx,
//! timeouts, refused connections) are retried with exponential backoff up to a bound; what
//! is left is one `Error::Storage` naming the endpoint, the key and the status.

use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::read_ahead::{self, RangeRead, ReadAhead, Served};
use super::{
    PackBytes, PackId, PackInfo, PackStorage, ReadAheadGuard, S3Location, UnfinishedUpload,
};
use crate::error::{Error, IoContext, Result};
use xstore_chunker::ChunkId;

/// Packs below this size go up in one PUT: a default 32 MiB pack is one request (as a
/// multipart upload it was four: create, two parts, complete; bench/s3.sh counted 74 PUTs
/// per GB against restic's 35).
const SINGLE_PUT_MAX: u64 = 64 << 20;
/// Larger packs are uploaded in parts of this size (S3's minimum part is 5 MiB).
const MULTIPART_PART: usize = 16 << 20;
/// Parts of one pack uploaded at the same time.
const MULTIPART_CONCURRENCY: usize = 4;
/// A range read fetches at least this much and keeps it: restores read a pack's blobs in
/// offset order, and a backup's walk of its parent's trees reads trees written next to each
/// other, so one GET serves many blobs (a GET to a Garage node cost ~20 ms here, a small
/// blob microseconds of transfer). Measured on a 664 MB system tree (bench/s3.sh): exact-range
/// reads made an unchanged re-backup 1,600 GETs and 34 s; 4 MiB windows 109 GETs and 2.8 s
/// while trees shared packs with data, 13 GETs and 0.5 s once they did not; 8 MiB windows
/// cut a restore's GETs from 190 to 117 per GB.
const READ_WINDOW: u64 = 8 << 20;
/// Windows kept, most recently used first: 96 MiB at most.
const WINDOWS_KEPT: usize = 12;

/// A restore's read-ahead (read_ahead.rs) fetches the announced ranges of a pack in requests
/// of up to `max_segment` bytes, fetching across gaps of up to `max_gap` (blobs of other
/// snapshots between the ones read) ...
const READ_AHEAD_SHAPE: read_ahead::Shape = read_ahead::Shape {
    max_segment: 32 << 20,
    max_gap: 1 << 20,
};
/// ... this many at a time ...
const READ_AHEAD_REQUESTS: usize = 4;
/// ... holding at most this many bytes fetched ahead or in flight.
const READ_AHEAD_BUDGET: u64 = 192 << 20;

/// Bytes `start..start + bytes.len()` of a pack.
struct Window {
    pack: PackId,
    start: u64,
    bytes: bytes::Bytes,
}

/// A bucket (and key prefix) of an S3-compatible store.
pub(crate) struct S3Storage {
    client: Arc<AmazonS3>,
    runtime: tokio::runtime::Runtime,
    /// `URL (bucket B)`, for messages.
    endpoint: String,
    bucket: String,
    prefix: String,
    windows: std::sync::Mutex<std::collections::VecDeque<Window>>,
    /// The running read-ahead, if any: reads are served from it first.
    read_ahead: std::sync::Mutex<Option<Arc<ReadAhead>>>,
    /// For the one request `object_store` has no call for (listing unfinished multipart
    /// uploads): the bucket's URL, the credential and region it is signed with, a client.
    bucket_url: url::Url,
    credential: object_store::aws::AwsCredential,
    region: String,
    http: object_store::client::HttpClient,
    /// The local copy of metadata packs, when opened for a repository directory.
    cache: Option<super::pack_cache::PackCache>,
}

impl S3Storage {
    /// A client for `location` with these credentials. Makes no request.
    pub(crate) fn new(
        location: &S3Location,
        credentials: &super::S3Credentials,
        cache: Option<super::pack_cache::PackCache>,
    ) -> Result<Self> {
        let endpoint = format!("{} (bucket {})", location.endpoint, location.bucket);
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: location.max_retries,
            retry_timeout: Duration::from_secs(location.retry_timeout_seconds),
        };
        // allow_http is a client option: set here, or with_client_options would reset it.
        let options = object_store::ClientOptions::new()
            .with_allow_http(location.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(location.request_timeout_seconds));
        let config_error = |reason: String| Error::Storage {
            endpoint: endpoint.clone(),
            key: String::new(),
            reason,
            not_found: false,
        };
        let bucket_url = bucket_url(location).map_err(config_error)?;
        let http = object_store::client::HttpConnector::connect(
            &object_store::client::ReqwestConnector::default(),
            &options,
        )
        .map_err(|e| config_error(one_line(&e)))?;
        let client = AmazonS3Builder::new()
            .with_endpoint(&location.endpoint)
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_virtual_hosted_style_request(!location.path_style)
            .with_retry(retry)
            .with_client_options(options)
            .build()
            .map_err(|e| Error::Storage {
                endpoint: endpoint.clone(),
                key: String::new(),
                reason: one_line(&e),
                not_found: false,
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xstore-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Storage {
                endpoint: endpoint.clone(),
                key: String::new(),
                reason: format!("cannot start the client's runtime: {e}"),
                not_found: false,
            })?;
        Ok(S3Storage {
            client: Arc::new(client),
            runtime,
            endpoint,
            bucket: location.bucket.clone(),
            prefix: location.prefix.trim_matches('/').to_string(),
            windows: std::sync::Mutex::new(std::collections::VecDeque::new()),
            read_ahead: std::sync::Mutex::new(None),
            bucket_url,
            credential: object_store::aws::AwsCredential {
                key_id: credentials.access_key_id.clone(),
                secret_key: credentials.secret_access_key.clone(),
                token: None,
            },
            region: location.region.clone(),
            http,
            cache,
        })
    }

    /// One page of ListMultipartUploads under `prefix`, after the markers of the page before.
    async fn list_uploads_page(
        &self,
        prefix: &str,
        after: Option<&(String, String)>,
    ) -> Result<UploadsPage> {
        let what = format!("{prefix} (unfinished uploads)");
        let failed = |reason: String| Error::Storage {
            endpoint: self.endpoint.clone(),
            key: what.clone(),
            reason,
            not_found: false,
        };
        let mut url = self.bucket_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("uploads", "");
            query.append_pair("prefix", prefix);
            if let Some((key, upload_id)) = after {
                query.append_pair("key-marker", key);
                query.append_pair("upload-id-marker", upload_id);
            }
        }
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| failed(format!("cannot build the request: {e}")))?;
        object_store::aws::AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| failed(one_line(&e)))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| failed(format!("GET: {}", one_line(&e))))?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| failed(format!("GET: {}", one_line(&e))))?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(failed(tidy(&format!("GET: {status} {text}"))));
        }
        tracing::trace!(%url, answer = %text, "unfinished uploads listed");
        parse_uploads_page(&text).map_err(|e| failed(format!("GET: an unreadable answer: {e}")))
    }

    /// The object key of a repository-relative name.
    fn key(&self, name: &str) -> ObjectPath {
        object_key(&self.prefix, name)
    }

    fn pack_key(&self, id: &PackId) -> ObjectPath {
        self.key(&pack_name(id))
    }

    /// Runs `f` to completion on the client's runtime. From inside another tokio runtime
    /// (the NFS server's blocking pool) it runs on a thread of its own: a runtime cannot be
    /// entered from inside another.
    fn block<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.runtime.block_on(f))
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        } else {
            self.runtime.block_on(f)
        }
    }

    /// A range read that returned fewer bytes than asked for: a truncated object.
    fn short_read(&self, key: &ObjectPath, offset: u64, want: usize, got: usize) -> Error {
        Error::Storage {
            endpoint: self.endpoint.clone(),
            key: key.to_string(),
            reason: format!(
                "asked for {want} bytes at {offset}, got {got} (the object is shorter)"
            ),
            not_found: false,
        }
    }

    fn error(&self, key: &ObjectPath, e: object_store::Error) -> Error {
        Error::Storage {
            endpoint: self.endpoint.clone(),
            key: key.to_string(),
            not_found: matches!(e, object_store::Error::NotFound { .. }),
            reason: tidy(&one_line(&e)),
        }
    }

    /// Stores `bytes` as the repository file `name` (`config`).
    pub(crate) fn put_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let key = self.key(name);
        let payload = PutPayload::from(bytes.to_vec());
        self.block(self.client.put(&key, payload))
            .map(|_| ())
            .map_err(|e| self.error(&key, e))
    }

    /// Stores `bytes` as the repository file `name` only if it is absent (`absent`), or else
    /// still the version `expected` (an ETag read before). A store that honours
    /// conditional writes (AWS S3, MinIO) refuses a writer that lost a race:
    /// [`Conditional::Lost`]. One that ignores the headers (Garage 2.5) writes whatever is
    /// there; one that rejects them (501) gets an unconditional put. Without an ETag to
    /// match, the put is unconditional too.
    pub(crate) fn put_file_if(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<&str>,
        absent: bool,
    ) -> Result<Conditional> {
        use object_store::{PutMode, PutOptions, UpdateVersion};
        let key = self.key(name);
        let mode = match (absent, expected) {
            (true, _) => PutMode::Create,
            (false, Some(e_tag)) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag.to_string()),
                version: None,
            }),
            (false, None) => PutMode::Overwrite,
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        match self.block(self.client.put_opts(&key, payload.clone(), opts)) {
            Ok(done) => Ok(Conditional::Written(done.e_tag)),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Conditional::Lost),
            Err(e) if one_line(&e).contains("501 Not Implemented") => {
                tracing::debug!(key = %key, "conditional writes not implemented by the store");
                self.block(self.client.put(&key, payload))
                    .map(|done| Conditional::Written(done.e_tag))
                    .map_err(|e| self.error(&key, e))
            }
            Err(e) => Err(self.error(&key, e)),
        }
    }

    /// The repository file `name` and its ETag, `None` when it does not exist.
    pub(crate) fn get_file_tagged(&self, name: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let key = self.key(name);
        let got = self.block(async {
            let r = self.client.get(&key).await?;
            let e_tag = r.meta.e_tag.clone();
            Ok::<_, object_store::Error>((r.bytes().await?, e_tag))
        });
        match got {
            Ok((b, e_tag)) => Ok(Some((b.to_vec(), e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&key, e)),
        }
    }

    /// Deletes the repository file `name` (absent: nothing to do).
    pub(crate) fn delete_file(&self, name: &str) -> Result<()> {
        let key = self.key(name);
        match self.block(self.client.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&key, e)),
        }
    }

    /// `URL (bucket B)`, as errors name the store.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The object key of the repository file `name`.
    pub(crate) fn key_string(&self, name: &str) -> String {
        self.key(name).to_string()
    }

    /// `s3://bucket/key` of the repository file `name`.
    pub(crate) fn url_of(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    /// What requests a read-ahead segment on the client's runtime (from any thread, without
    /// waiting); its answer goes to [`ReadAhead::fetched`].
    fn segment_requester(&self) -> impl Fn(&Arc<ReadAhead>, usize, read_ahead::Segment) + Send {
        let (client, runtime, prefix) = (
            self.client.clone(),
            self.runtime.handle().clone(),
            self.prefix.clone(),
        );
        move |ra, index, seg| {
            let key = object_key(&prefix, &pack_name(&seg.pack));
            let mut pending = PendingSegment {
                read_ahead: ra.clone(),
                index,
                answered: false,
            };
            let client = client.clone();
            runtime.spawn(async move {
                let got = client.get_range(&key, seg.start..seg.end).await.ok();
                pending.answered = true;
                pending.read_ahead.fetched(pending.index, got);
            });
        }
    }

    fn request_segment(&self, ra: &Arc<ReadAhead>, index: usize, seg: read_ahead::Segment) {
        (self.segment_requester())(ra, index, seg)
    }

    /// The repository file `name`, `None` when it does not exist.
    pub(crate) fn get_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_file_tagged(name)?.map(|(bytes, _)| bytes))
    }
}

/// What a conditional put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Conditional {
    /// Written; the new version's ETag when the store gave one.
    Written(Option<String>),
    /// The store refused: the object is no longer what the caller read.
    Lost,
}

/// `endpoint/bucket` (path style) or `scheme://bucket.host` (virtual-hosted style).
fn bucket_url(location: &S3Location) -> std::result::Result<url::Url, String> {
    let bad = |e: url::ParseError| format!("not a URL: {e}");
    let mut url = url::Url::parse(&location.endpoint).map_err(bad)?;
    if location.path_style {
        url.path_segments_mut()
            .map_err(|()| "not a URL with a path".to_string())?
            .pop_if_empty()
            .push(&location.bucket);
    } else {
        let host = url
            .host_str()
            .ok_or("the endpoint has no host")?
            .to_string();
        url.set_host(Some(&format!("{}.{host}", location.bucket)))
            .map_err(bad)?;
    }
    Ok(url)
}

/// One page of a ListMultipartUploads answer (the fields xstore reads).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadsPage {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadEntry {
    key: String,
    upload_id: String,
    #[serde(default)]
    initiated: Option<String>,
}

/// Decodes a ListMultipartUploads answer; what the store sent is untrusted text.
fn parse_uploads_page(xml: &str) -> std::result::Result<UploadsPage, String> {
    quick_xml::de::from_str::<UploadsPage>(xml).map_err(|e| e.to_string())
}

impl UploadEntry {
    fn into_upload(self) -> UnfinishedUpload {
        let initiated_ns = self
            .initiated
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| t.timestamp_nanos_opt());
        UnfinishedUpload {
            key: self.key,
            upload_id: self.upload_id,
            initiated_ns,
        }
    }
}

/// Pages of unfinished uploads a listing reads at most (1,000 uploads each): a store whose
/// markers never advance must not keep gc listing forever.
const MAX_UPLOAD_PAGES: usize = 10_000;

/// The object key of the repository-relative `name` under `prefix`.
fn object_key(prefix: &str, name: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(name)
    } else {
        ObjectPath::from(format!("{prefix}/{name}"))
    }
}

/// Reports a read-ahead request that ends without an answer (its task cancelled when the
/// runtime shuts down) as failed, so no reader waits for it.
struct PendingSegment {
    read_ahead: Arc<ReadAhead>,
    index: usize,
    answered: bool,
}

impl Drop for PendingSegment {
    fn drop(&mut self) {
        if !self.answered {
            self.read_ahead.fetched(self.index, None);
        }
    }
}

/// `packs/XX/<id>.pack`.
fn pack_name(id: &PackId) -> String {
    let hex = id.to_string();
    format!("packs/{}/{hex}.pack", hex.get(..2).unwrap_or("00"))
}

/// An error and its causes on one line (the CLI prints one line per error).
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The client's message without what the error line says already (the URL, which repeats
/// the endpoint and key; the "Generic S3 error" label) and with an XML error body reduced to
/// its code, the key a not-found message repeats and the request's duration dropped:
/// "GET: 403 Forbidden (AccessDenied)".
fn tidy(reason: &str) -> String {
    let code = reason
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string());
    let body_start = reason.find("<?xml").or_else(|| reason.find("<Error>"));
    let head = body_start.map_or(reason, |i| reason.get(..i).unwrap_or(reason));
    let mut out: Vec<&str> = head
        .split_whitespace()
        .filter(|w| !w.starts_with("http://") && !w.starts_with("https://"))
        .collect();
    if out.first() == Some(&"Generic") && out.get(1) == Some(&"S3") && out.get(2) == Some(&"error:")
    {
        out.drain(..3);
    }
    // "Object at location KEY not found:" repeats the key.
    if out.get(..3) == Some(&["Object", "at", "location"])
        && out.get(4..6) == Some(&["not", "found:"])
    {
        out.drain(..6);
    }
    let mut method = String::new();
    // "Error performing GET in 2ms - Server returned non-2xx status code: 416 …" → "GET: 416 …"
    // (the request's duration says nothing the status does not).
    if out.get(..2) == Some(&["Error", "performing"])
        && out.get(3) == Some(&"in")
        && out.get(5) == Some(&"-")
    {
        method = out.get(2).map(|m| format!("{m}: ")).unwrap_or_default();
        let status = ["Server", "returned", "non-2xx", "status", "code:"];
        let skip = if out.get(6..11) == Some(&status) {
            11
        } else {
            6
        };
        out.drain(..skip);
    }
    let mut s = method + out.join(" ").trim_end_matches([':', ' ']);
    if let Some(code) = code {
        s.push_str(&format!(" ({code})"));
    }
    s
}

impl PackStorage for S3Storage {
    fn keeps_the_local_file(&self) -> bool {
        false
    }

    fn put(&self, id: &PackId, sealed: &Path, metadata_only: bool) -> Result<()> {
        let key = self.pack_key(id);
        let mut file = std::fs::File::open(sealed).at(sealed)?;
        let size = file.metadata().at(sealed)?.len();
        if size < SINGLE_PUT_MAX {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).at(sealed)?;
            self.block(self.client.put(&key, PutPayload::from(bytes)))
                .map_err(|e| self.error(&key, e))?;
        } else {
            let uploaded = self.block(async {
                let upload = self.client.put_multipart(&key).await?;
                let mut parts = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
                let mut buf = vec![0u8; MULTIPART_PART];
                loop {
                    let n = match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => {
                            let _ = parts.abort().await;
                            return Ok(Err(e));
                        }
                    };
                    parts.wait_for_capacity(MULTIPART_CONCURRENCY).await?;
                    parts.write(buf.get(..n).unwrap_or_default());
                }
                // Crash tests: killed with every part stored and the upload not completed.
                if cfg!(feature = "failpoints") {
                    parts.wait_for_capacity(0).await?;
                    crate::failpoint::failpoint("s3-multipart-before-complete");
                }
                parts.finish().await?;
                Ok::<_, object_store::Error>(Ok(()))
            });
            uploaded.map_err(|e| self.error(&key, e))?.at(sealed)?;
        }
        // Acknowledged: the pack is durable in the store; the local file is a cache entry at
        // most.
        match &self.cache {
            Some(cache) if metadata_only => {
                cache.keep(id, sealed);
                Ok(())
            }
            _ => std::fs::remove_file(sealed).at(sealed),
        }
    }

    fn read_at(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let running = self.read_ahead.lock().ok().and_then(|mut slot| {
            // A finished read-ahead is dropped here: nothing of it is left to serve.
            if slot.as_ref().is_some_and(|ra| ra.is_cancelled()) {
                *slot = None;
            }
            slot.clone()
        });
        if let Some(ra) = running {
            loop {
                match ra.serve(id, offset, buf) {
                    Served::Copied => return Ok(()),
                    Served::Miss => break,
                    Served::Request(index, seg) => self.request_segment(&ra, index, seg),
                }
            }
        }
        if self
            .cache
            .as_ref()
            .is_some_and(|c| c.read_at(id, offset, buf))
        {
            return Ok(());
        }
        let want = buf.len() as u64;
        if let Ok(mut windows) = self.windows.lock() {
            let hit = windows.iter().position(|w| {
                w.pack == *id
                    && w.start <= offset
                    && offset + want <= w.start + w.bytes.len() as u64
            });
            if let Some(i) = hit {
                if let Some(w) = windows.remove(i) {
                    let from = (offset - w.start) as usize;
                    if let Some(bytes) = w.bytes.get(from..from + buf.len()) {
                        buf.copy_from_slice(bytes);
                    }
                    windows.push_front(w);
                    return Ok(());
                }
            }
        }
        let key = self.pack_key(id);
        // A read just below a window of the same pack walks down the pack's offsets (tree
        // nodes are stored children first and read parent first): its window reaches back
        // from it. Any other read's window reaches forward; a range past the end of the
        // object returns what there is (at least `want` bytes of an intact pack).
        let walking_down = self.windows.lock().is_ok_and(|windows| {
            windows
                .iter()
                .any(|w| w.pack == *id && w.start >= offset && w.start - offset <= READ_WINDOW)
        });
        let (start, end) = if walking_down {
            let end = offset.saturating_add(want);
            (end.saturating_sub(want.max(READ_WINDOW)), end)
        } else if offset < READ_WINDOW {
            // From the pack's start: a pack smaller than the window then comes whole, and a
            // whole metadata pack goes into the cache.
            (0, READ_WINDOW.max(offset.saturating_add(want)))
        } else {
            (offset, offset.saturating_add(want.max(READ_WINDOW)))
        };
        tracing::trace!(pack = %id, offset, len = want, "range read of a window");
        let got = self
            .block(self.client.get_range(&key, start..end))
            .map_err(|e| self.error(&key, e))?;
        let from = (offset - start) as usize;
        let Some(bytes) = got.get(from..from + buf.len()) else {
            let got = got.len().saturating_sub(from);
            return Err(self.short_read(&key, offset, buf.len(), got));
        };
        buf.copy_from_slice(bytes);
        let whole_pack = start == 0 && (got.len() as u64) < end;
        if let (true, Some(cache)) = (whole_pack, &self.cache) {
            cache.offer(id, &got);
        }
        if let Ok(mut windows) = self.windows.lock() {
            windows.push_front(Window {
                pack: *id,
                start,
                bytes: got,
            });
            windows.truncate(WINDOWS_KEPT);
        }
        Ok(())
    }

    fn read_exact(&self, id: &PackId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let key = self.pack_key(id);
        let end = offset.saturating_add(buf.len() as u64);
        let got = self
            .block(self.client.get_range(&key, offset..end))
            .map_err(|e| self.error(&key, e))?;
        if got.len() != buf.len() {
            return Err(self.short_read(&key, offset, buf.len(), got.len()));
        }
        buf.copy_from_slice(&got);
        Ok(())
    }

    fn read_whole(&self, id: &PackId) -> Result<PackBytes> {
        let key = self.pack_key(id);
        self.block(async {
            let r = self.client.get(&key).await?;
            r.bytes().await
        })
        .map(|b| PackBytes::Fetched(b.to_vec()))
        .map_err(|e| self.error(&key, e))
    }

    fn size(&self, id: &PackId) -> Result<Option<u64>> {
        let key = self.pack_key(id);
        match self.block(self.client.head(&key)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&key, e)),
        }
    }

    fn list(&self) -> Result<Vec<PackInfo>> {
        let prefix = self.key("packs");
        let metas: Vec<object_store::ObjectMeta> = self
            .block(self.client.list(Some(&prefix)).try_collect())
            .map_err(|e| self.error(&prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let id = name.strip_suffix(".pack")?.parse::<ChunkId>().ok()?;
                // Only keys this storage would write: `packs/XX/<id>.pack`.
                (m.location == self.pack_key(&id)).then_some(PackInfo {
                    id,
                    size: m.size,
                    modified_ns: m.last_modified.timestamp_nanos_opt(),
                })
            })
            .collect())
    }

    fn delete(&self, ids: &[PackId]) -> Result<()> {
        for id in ids {
            let key = self.pack_key(id);
            self.forget(id);
            match self.block(self.client.delete(&key)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(&key, e)),
            }
        }
        Ok(())
    }

    fn location(&self, id: &PackId) -> String {
        format!("s3://{}/{}", self.bucket, self.pack_key(id))
    }

    fn unfinished_uploads(&self) -> Result<Vec<UnfinishedUpload>> {
        // With the slash: `x/packs` would also match a sibling prefix `x/packs-old`.
        let prefix = if self.prefix.is_empty() {
            "packs/".to_string()
        } else {
            format!("{}/packs/", self.prefix)
        };
        let mut uploads = Vec::new();
        let mut after: Option<(String, String)> = None;
        for _ in 0..MAX_UPLOAD_PAGES {
            let page = self.block(self.list_uploads_page(&prefix, after.as_ref()))?;
            uploads.extend(
                page.uploads
                    .into_iter()
                    .filter(|u| u.key.starts_with(&prefix))
                    .map(UploadEntry::into_upload),
            );
            let next = match (page.next_key_marker, page.next_upload_id_marker) {
                (Some(k), Some(u)) if page.is_truncated => (k, u),
                _ => return Ok(uploads),
            };
            if after.as_ref() == Some(&next) {
                break;
            }
            after = Some(next);
        }
        Err(Error::Storage {
            endpoint: self.endpoint.clone(),
            key: format!("{prefix} (unfinished uploads)"),
            reason: "the listing does not end (its page markers do not advance)".into(),
            not_found: false,
        })
    }

    fn abort_upload(&self, upload: &UnfinishedUpload) -> Result<()> {
        use object_store::multipart::MultipartStore;
        let key = ObjectPath::from(upload.key.as_str());
        match self.block(self.client.abort_multipart(&key, &upload.upload_id)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&key, e)),
        }
    }

    fn forget(&self, id: &PackId) {
        if let Ok(mut windows) = self.windows.lock() {
            windows.retain(|w| w.pack != *id);
        }
        if let Some(cache) = &self.cache {
            cache.forget(id);
        }
    }

    fn read_ahead(&self, reads: &[RangeRead]) -> ReadAheadGuard {
        let segments = read_ahead::plan(reads, READ_AHEAD_SHAPE);
        if segments.is_empty() {
            return ReadAheadGuard::default();
        }
        let ra = ReadAhead::new(segments, READ_AHEAD_REQUESTS, READ_AHEAD_BUDGET);
        if let Ok(mut slot) = self.read_ahead.lock() {
            *slot = Some(ra.clone());
        }
        let request = self.segment_requester();
        let driver = ra.clone();
        // The driver waits for room and hands requests to the runtime; the runtime's tasks
        // answer them. Without a thread there is no read-ahead, and reads fetch as before.
        let spawned = std::thread::Builder::new()
            .name("xstore-read-ahead".into())
            .spawn(move || {
                while let Some((index, seg)) = driver.claim_next() {
                    request(&driver, index, seg);
                }
            });
        if spawned.is_err() {
            ra.cancel();
        }
        ReadAheadGuard { running: Some(ra) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{bucket_url, parse_uploads_page, tidy, S3Location};

    #[test]
    fn an_uploads_listing_decodes_its_uploads_and_markers_and_hostile_text_is_an_error() {
        let page = parse_uploads_page(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>r/packs/ab/x.pack</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <Prefix>r/packs/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>r/packs/aa/y.pack</Key><UploadId>u1</UploadId>
    <Initiated>2026-12-04T01:02:03.500Z</Initiated><StorageClass>STANDARD</StorageClass></Upload>
  <Upload><Key>r/packs/ab/x.pack</Key><UploadId>u2</UploadId></Upload>
</ListMultipartUploadsResult>"#,
        )
        .unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_key_marker.as_deref(), Some("r/packs/ab/x.pack"));
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("u2"));
        let uploads: Vec<_> = page.uploads.into_iter().map(|u| u.into_upload()).collect();
        assert_eq!(uploads.len(), 2);
        assert_eq!(uploads[0].key, "r/packs/aa/y.pack");
        assert_eq!(uploads[0].upload_id, "u1");
        assert_eq!(uploads[0].initiated_ns, Some(1_796_346_123_500_000_000));
        assert_eq!(uploads[1].initiated_ns, None);
        let empty = parse_uploads_page(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(!empty.is_truncated && empty.uploads.is_empty());
        for hostile in [
            "",
            "<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>",
            "<ListMultipartUploadsResult><IsTruncated>maybe</IsTruncated></ListMultipartUploadsResult>",
            "<ListMultipartUploadsResult><Upload>",
            "\u{0}\u{ffff}<<>>",
        ] {
            assert!(parse_uploads_page(hostile).is_err(), "{hostile:?} decoded");
        }
    }

    const LISTING: &str = "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated>\
        <NextKeyMarker>k</NextKeyMarker><NextUploadIdMarker>u</NextUploadIdMarker>\
        <Upload><Key>r/packs/aa/y.pack</Key><UploadId>u1</UploadId>\
        <Initiated>2026-12-04T01:02:03Z</Initiated></Upload></ListMultipartUploadsResult>";

    proptest::proptest! {
        /// What a store answers is untrusted: any text, and any damage to a valid answer,
        /// decodes or is an error, never a panic.
        #[test]
        fn an_uploads_listing_of_any_text_decodes_or_fails_without_panicking(
            text in ".{0,400}",
            cut in 0usize..400,
            flip in 0usize..400,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let _ = parse_uploads_page(&text);
            let mut damaged = LISTING.as_bytes().to_vec();
            damaged.truncate(cut.max(1).min(damaged.len()));
            if let Some(b) = damaged.get_mut(flip) {
                *b = byte;
            }
            if let Ok(page) = parse_uploads_page(&String::from_utf8_lossy(&damaged)) {
                for upload in page.uploads {
                    let _ = upload.into_upload();
                }
            }
        }
    }

    #[test]
    fn the_bucket_url_is_path_style_or_virtual_hosted() {
        let mut l = S3Location::parse("s3://backups/site1", "http://127.0.0.1:3900/").unwrap();
        assert_eq!(
            bucket_url(&l).unwrap().as_str(),
            "http://127.0.0.1:3900/backups"
        );
        l.path_style = false;
        l.endpoint = "https://s3.example.net".into();
        assert_eq!(
            bucket_url(&l).unwrap().as_str(),
            "https://backups.s3.example.net/"
        );
    }

    #[test]
    fn a_client_error_is_one_short_line_with_the_status_and_code() {
        let raw = "Generic S3 error: Error performing GET http://127.0.0.1:1/b/k in 2ms - Server \
                   returned non-2xx status code: 416 Range Not Satisfiable: <?xml version=\"1.0\"?>\
                   <Error><Code>InvalidRange</Code><Message>m</Message></Error>";
        assert_eq!(tidy(raw), "GET: 416 Range Not Satisfiable (InvalidRange)");
        let missing = "Object at location p/k.pack not found: Error performing GET \
                       http://127.0.0.1:1/b/p/k.pack in 632.51µs - Server returned non-2xx \
                       status code: 404 Not Found: <?xml version=\"1.0\"?><Error>\
                       <Code>NoSuchKey</Code></Error>";
        assert_eq!(tidy(missing), "GET: 404 Not Found (NoSuchKey)");
        assert_eq!(tidy("connection refused"), "connection refused");
    }
}
