//! The two S3 client crates xstore could use, side by side against one endpoint, on the
//! requests xstore makes: 32 MiB pack PUTs (two at a time, as the pack sealers do), 8 MiB range
//! GETs (four at a time, as a restore's read-ahead does) and 4 KiB range GETs one after another
//! (a walk's window misses). Prints MB/s or requests/s and the client's CPU seconds per step,
//! for `ROUNDS` rounds alternating which client goes first; the median is not printed on
//! purpose: read the rounds.
//!
//!   EP=http://127.0.0.1:3900 AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… BUCKET=bench \
//!     cargo run --release -p xstore-bench-s3-clients
//!
//! `UNSIGNED=1` makes object_store send `UNSIGNED-PAYLOAD` as opendal does (xstore signs the
//! body's SHA-256, so the store rejects a body damaged on the way).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

type Failure = Box<dyn std::error::Error + Send + Sync>;
type Done<'a, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 'a>>;

const PACK: usize = 32 << 20;
const WINDOW: u64 = 8 << 20;
const SMALL: u64 = 4 << 10;

/// What a client must do for the bench.
trait Client: Sync {
    fn name(&self) -> &'static str;
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> Done<'a, ()>;
    fn get_range<'a>(&'a self, key: &'a str, from: u64, to: u64) -> Done<'a, Bytes>;
    fn delete<'a>(&'a self, key: &'a str) -> Done<'a, ()>;
}

struct Arrow(object_store::aws::AmazonS3);

impl Client for Arrow {
    fn name(&self) -> &'static str {
        "object_store 0.14"
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> Done<'a, ()> {
        Box::pin(async move {
            self.0.put(&key.into(), bytes.into()).await?;
            Ok(())
        })
    }
    fn get_range<'a>(&'a self, key: &'a str, from: u64, to: u64) -> Done<'a, Bytes> {
        Box::pin(async move { Ok(self.0.get_range(&key.into(), from..to).await?) })
    }
    fn delete<'a>(&'a self, key: &'a str) -> Done<'a, ()> {
        Box::pin(async move { Ok(self.0.delete(&key.into()).await?) })
    }
}

struct Dal(opendal::Operator);

impl Client for Dal {
    fn name(&self) -> &'static str {
        "opendal 0.55"
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> Done<'a, ()> {
        Box::pin(async move {
            self.0.write(key, bytes).await?;
            Ok(())
        })
    }
    fn get_range<'a>(&'a self, key: &'a str, from: u64, to: u64) -> Done<'a, Bytes> {
        Box::pin(async move { Ok(self.0.read_with(key).range(from..to).await?.to_bytes()) })
    }
    fn delete<'a>(&'a self, key: &'a str) -> Done<'a, ()> {
        Box::pin(async move { Ok(self.0.delete(key).await?) })
    }
}

/// User + system CPU seconds of this process so far.
#[allow(unsafe_code)]
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn run(client: &dyn Client, round: usize, objects: usize) -> Result<(), Failure> {
    let keys: Vec<String> = (0..objects)
        .map(|i| format!("s3-clients/{round}/{i}.pack"))
        .collect();
    let bodies: Vec<Bytes> = (0..objects)
        .map(|i| Bytes::from(xstore_chunker::seeded_bytes((round * 100 + i) as u64, PACK)))
        .collect();
    let report = |step: &str, started: Instant, cpu: f64, amount: f64, unit: &str| {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{:<18} round {round}  {step:<22} {:>8.1} {unit:<6} {:>6.2} s  client CPU {:>5.2} s",
            client.name(),
            amount / secs,
            secs,
            cpu_seconds() - cpu
        );
    };
    let (t, c) = (Instant::now(), cpu_seconds());
    stream::iter(keys.iter().zip(&bodies))
        .map(|(k, b)| client.put(k, b.clone()))
        .buffer_unordered(2)
        .try_collect::<Vec<()>>()
        .await?;
    report("PUT 32 MiB ×2", t, c, (objects * PACK) as f64 / 1e6, "MB/s");
    let ranges: Vec<(usize, u64)> = (0..objects)
        .flat_map(|i| (0..PACK as u64 / WINDOW).map(move |w| (i, w * WINDOW)))
        .collect();
    let (t, c) = (Instant::now(), cpu_seconds());
    let keys_ref = &keys;
    let got: Vec<(usize, u64, Bytes)> = stream::iter(&ranges)
        .map(|&(i, from)| async move {
            let keys = keys_ref;
            let key = keys.get(i).ok_or("no such key")?;
            let b = client.get_range(key, from, from + WINDOW).await?;
            Ok::<_, Failure>((i, from, b))
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    report(
        "GET 8 MiB ranges ×4",
        t,
        c,
        (ranges.len() as u64 * WINDOW) as f64 / 1e6,
        "MB/s",
    );
    for (i, from, b) in &got {
        let want = bodies
            .get(*i)
            .and_then(|body| body.get(*from as usize..(*from + WINDOW) as usize));
        if want != Some(&b[..]) {
            return Err(format!("{}: range {from} of object {i} differs", client.name()).into());
        }
    }
    let (t, c) = (Instant::now(), cpu_seconds());
    let small = 200usize;
    for n in 0..small {
        let key = keys.get(n % objects).ok_or("no such key")?;
        let from = (n as u64 * 7919 * SMALL) % (PACK as u64 - SMALL);
        client.get_range(key, from, from + SMALL).await?;
    }
    report("GET 4 KiB ×1", t, c, small as f64, "req/s");
    for k in &keys {
        client.delete(k).await?;
    }
    Ok(())
}

fn main() -> Result<(), Failure> {
    let endpoint = env("EP", "http://127.0.0.1:3900");
    let bucket = env("BUCKET", "bench");
    let region = env("REGION", "garage");
    let key_id = std::env::var("AWS_ACCESS_KEY_ID")?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY")?;
    let rounds: usize = env("ROUNDS", "3").parse()?;
    let objects: usize = env("OBJECTS", "8").parse()?;
    let arrow = Arrow(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_access_key_id(&key_id)
            .with_secret_access_key(&secret)
            .with_virtual_hosted_style_request(false)
            // xstore signs payloads (x-amz-content-sha256 of the body); `UNSIGNED=1` shows
            // what that costs (opendal sends UNSIGNED-PAYLOAD).
            .with_unsigned_payload(std::env::var_os("UNSIGNED").is_some())
            .with_client_options(
                object_store::ClientOptions::new().with_allow_http(endpoint.starts_with("http:")),
            )
            .build()?,
    );
    let dal = Dal(opendal::Operator::new(
        opendal::services::S3::default()
            .endpoint(&endpoint)
            .bucket(&bucket)
            .region(&region)
            .access_key_id(&key_id)
            .secret_access_key(&secret),
    )?
    .finish());
    // One runtime of two workers for both, as xstore's storage has.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "s3-clients: {endpoint} bucket {bucket}, {objects} objects of 32 MiB, {rounds} rounds, {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for round in 0..rounds {
        let order: [&dyn Client; 2] = if round % 2 == 0 {
            [&arrow, &dal]
        } else {
            [&dal, &arrow]
        };
        for client in order {
            runtime.block_on(run(client, round, objects))?;
        }
    }
    Ok(())
}
