//! An S3 server with AWS S3's conditional-write semantics on 127.0.0.1: moto's standalone
//! server (PyPI `moto[server]`, which `scripts/setup.sh` installs into the tools cache). It
//! answers `If-None-Match: *` and `If-Match` on PutObject with 412 as AWS S3 does, which
//! Garage does not: the tests of what the writer lease guarantees on such stores use it.
//! State lives in the server's memory; the process is killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::sshd::free_port;

/// The `moto_server` program: `$XSTORE_MOTO`, the tools cache's virtualenv, or the PATH.
pub fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XSTORE_MOTO") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = Path::new(&home).join(".cache/xstore/tools/moto/bin/moto_server");
        if cached.exists() {
            return cached;
        }
    }
    PathBuf::from("moto_server")
}

/// A running server with one bucket.
pub struct Moto {
    /// The bucket every test writes to.
    pub bucket: String,
    /// The region requests are signed for.
    pub region: String,
    port: u16,
    child: Child,
}

impl Moto {
    /// Starts the server (its log in `dir`) and creates the bucket.
    pub fn start(dir: &Path) -> Moto {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (scripts/setup.sh installs moto's server)",
                    moto_binary().display()
                )
            });
        let moto = Moto {
            bucket: "xstore-test".into(),
            region: "us-east-1".into(),
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = moto.request("", &["-X", "PUT"], b"");
        assert!(out.status.success(), "bucket create: {out:?}");
        moto
    }

    /// The S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that gives a client its key (any key is accepted).
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID", "xstore-test-key".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "xstore-test-secret".to_string()),
        ]
    }

    /// A SigV4-signed request through curl (a client other than the one under test): `path`
    /// after the bucket (`/key`), extra curl arguments, the body whose hash is signed.
    pub fn request(&self, path: &str, extra: &[&str], body: &[u8]) -> Output {
        let [(_, key), (_, secret)] = self.env();
        Command::new("curl")
            .args(["-sS", "--fail", "--aws-sigv4"])
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{key}:{secret}"))
            .arg("-H")
            .arg(format!("x-amz-content-sha256: {}", crate::sha256_hex(body)))
            .args(extra)
            .arg(format!("{}/{}{path}", self.endpoint(), self.bucket))
            .output()
            .unwrap()
    }

    /// The object `key`'s bytes, `None` when it does not exist.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.request(&format!("/{key}"), &[], b"");
        out.status.success().then_some(out.stdout)
    }

    /// The keys under `prefix` (ListObjectsV2, one page: tests write few objects).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.request(&format!("?list-type=2&prefix={prefix}"), &[], b"");
        assert!(out.status.success(), "list {prefix}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains("<IsTruncated>true"), "{text}");
        text.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Writes object `key`.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let body = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(body.path(), bytes).unwrap();
        let out = self.request(
            &format!("/{key}"),
            &["-T", body.path().to_str().unwrap()],
            bytes,
        );
        assert!(out.status.success(), "put {key}: {out:?}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
