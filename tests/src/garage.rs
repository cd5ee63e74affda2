//! A real Garage cluster (an S3-compatible object store) on 127.0.0.1 for the object-store
//! tests: N nodes with one RPC secret, each with its own metadata and data directories and
//! ports, a layout over all of them (`replication_factor` = N), one bucket and one key
//! allowed on it. Nodes can be killed and started again; everything is killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::sshd::free_port;

/// The `garage` binary: `$XSTORE_GARAGE`, the tools cache that `scripts/setup.sh` installs
/// into, or `garage` on the PATH.
pub fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XSTORE_GARAGE") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = Path::new(&home).join(".cache/xstore/tools/bin/garage");
        if cached.exists() {
            return cached;
        }
    }
    PathBuf::from("garage")
}

struct Node {
    config: PathBuf,
    log: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    admin_port: u16,
    child: Option<Child>,
}

/// A running cluster.
pub struct Garage {
    /// Holds every node's configuration, data and log.
    pub dir: PathBuf,
    /// The bucket the key may read and write.
    pub bucket: String,
    /// The access key's id and secret.
    pub key_id: String,
    /// The secret of `key_id`.
    pub secret: String,
    nodes: Vec<Node>,
}

impl Garage {
    /// Starts `nodes` nodes in `dir` (created) and sets up the layout, bucket and key.
    pub fn start(dir: &Path, nodes: usize) -> Garage {
        fs::create_dir_all(dir).unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        let mut list = Vec::new();
        for i in 0..nodes {
            let node_dir = dir.join(format!("node{i}"));
            fs::create_dir_all(node_dir.join("meta")).unwrap();
            fs::create_dir_all(node_dir.join("data")).unwrap();
            let rpc_port = free_port();
            let s3_port = free_port();
            let admin_port = free_port();
            let config = node_dir.join("garage.toml");
            fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\n\
                     data_dir = \"{data}\"\n\
                     db_engine = \"sqlite\"\n\
                     replication_factor = {nodes}\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_secret = \"{secret}\"\n\
                     [s3_api]\n\
                     s3_region = \"garage\"\n\
                     api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\
                     [admin]\n\
                     api_bind_addr = \"127.0.0.1:{admin_port}\"\n",
                    meta = node_dir.join("meta").display(),
                    data = node_dir.join("data").display(),
                ),
            )
            .unwrap();
            list.push(Node {
                config,
                log: node_dir.join("log"),
                rpc_port,
                s3_port,
                admin_port,
                child: None,
            });
        }
        let mut g = Garage {
            dir: dir.to_path_buf(),
            bucket: "xstore-test".into(),
            key_id: String::new(),
            secret: String::new(),
            nodes: list,
        };
        for i in 0..nodes {
            g.start_node(i);
        }
        g.wait_until(|g| g.cli(0, &["status"]).status.success(), "garage status");
        let ids: Vec<String> = (0..nodes)
            .map(|i| {
                let out = g.cli_ok(i, &["node", "id", "-q"]);
                String::from_utf8(out.stdout).unwrap().trim().to_string()
            })
            .collect();
        for id in ids.iter().skip(1) {
            g.wait_until(
                |g| g.cli(0, &["node", "connect", id]).status.success(),
                "garage node connect",
            );
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            g.cli_ok(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        g.cli_ok(0, &["layout", "apply", "--version", "1"]);
        let bucket = g.bucket.clone();
        g.wait_until(
            |g| g.cli(0, &["bucket", "create", &bucket]).status.success(),
            "garage bucket create",
        );
        let out = g.cli_ok(0, &["key", "create", "xstore-test-key"]);
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in `garage key create`'s output:\n{text}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.cli_ok(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &bucket,
                "--key",
                "xstore-test-key",
            ],
        );
        g
    }

    /// Creates another key that may only read the bucket; returns its environment.
    pub fn read_only_env(&self, name: &str) -> [(&'static str, String); 2] {
        let out = self.cli_ok(0, &["key", "create", name]);
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |label: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {label} in `garage key create`'s output:\n{text}"))
        };
        let (id, secret) = (field("Key ID:"), field("Secret key:"));
        self.cli_ok(
            0,
            &["bucket", "allow", "--read", &self.bucket, "--key", name],
        );
        [("AWS_ACCESS_KEY_ID", id), ("AWS_SECRET_ACCESS_KEY", secret)]
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint_of(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// The S3 endpoint of the first node.
    pub fn endpoint(&self) -> String {
        self.endpoint_of(0)
    }

    /// How many S3 requests of `endpoint` (`GetObject`, `PutObject`, …) node `i` has served,
    /// from its Prometheus counters.
    pub fn requests(&self, i: usize, endpoint: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", "--fail"])
            .arg(format!(
                "http://127.0.0.1:{}/metrics",
                self.nodes[i].admin_port
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "garage metrics: {out:?}");
        let wanted = format!("api_endpoint=\"{endpoint}\"");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("api_s3_request_counter{") && l.contains(&wanted))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// A request to the bucket (`path`: `/KEY` or `?QUERY`) signed with this cluster's key by
    /// curl's SigV4: a client other than the one under test, as an operator, an attacker or
    /// a faulty store would make. `extra`: curl's arguments (`-X DELETE`, `-T FILE`);
    /// `body`: the bytes sent, for the payload hash. Panics unless it succeeds.
    pub fn signed_request(&self, path: &str, extra: &[&str], body: &[u8]) -> Output {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--aws-sigv4",
                "aws:amz:garage:s3",
                "--user",
            ])
            .arg(format!("{}:{}", self.key_id, self.secret))
            .arg("-H")
            .arg(format!("x-amz-content-sha256: {}", crate::sha256_hex(body)))
            .args(extra)
            .arg(format!("{}/{}{path}", self.endpoint(), self.bucket))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {extra:?} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The objects under `prefix` with their sizes (ListObjectsV2, first page).
    pub fn object_sizes(&self, prefix: &str) -> Vec<(String, u64)> {
        let query = format!("?list-type=2&prefix={}", prefix.replace('/', "%2F"));
        let out = self.signed_request(&query, &[], b"");
        let xml = String::from_utf8(out.stdout).unwrap();
        let field = |item: &str, name: &str| {
            let open = format!("<{name}>");
            let from = item.find(&open).unwrap() + open.len();
            item[from..]
                .split(&format!("</{name}>"))
                .next()
                .unwrap()
                .to_string()
        };
        xml.split("<Contents>")
            .skip(1)
            .map(|item| (field(item, "Key"), field(item, "Size").parse().unwrap()))
            .collect()
    }

    /// Deletes object `key` of the bucket.
    pub fn delete_object(&self, key: &str) {
        self.signed_request(&format!("/{key}"), &["-X", "DELETE"], b"");
    }

    /// The environment that gives a client this cluster's key.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }

    /// Kills node `i` (SIGKILL) and waits for it.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again (its data kept) and waits for its S3 port.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(garage_binary())
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("garage is not installed (scripts/setup.sh installs it)");
        node.child = Some(child);
        let (s3, rpc) = (node.s3_port, node.rpc_port);
        self.wait_until(
            |_| {
                std::net::TcpStream::connect(("127.0.0.1", s3)).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", rpc)).is_ok()
            },
            "garage's ports",
        );
    }

    fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(garage_binary())
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    }

    fn cli_ok(&self, i: usize, args: &[&str]) -> Output {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn wait_until(&self, ready: impl Fn(&Garage) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(self) {
            if Instant::now() > deadline {
                let logs: String = self
                    .nodes
                    .iter()
                    .map(|n| fs::read_to_string(&n.log).unwrap_or_default())
                    .collect();
                panic!("{what} not ready after 60 s; logs:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
