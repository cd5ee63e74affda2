//! What the web front's tests share: a small fleet (accounts `acme` with `web1` and `other`
//! with `db1`) backed up into a repository with tier names, users of both accounts and an
//! operator, a running `xstore serve-web`, and a plain HTTP/1.1 client over its Unix socket
//! that sends paths exactly as written (no normalising of `..` or percent-encodings).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{ok, xstore};

/// The password of every test user.
pub const PASSWORD: &str = "correct horse battery";

/// Names a compromised host could give its files.
pub const HOSTILE: [&[u8]; 4] = [
    b"<script>alert(1)<\\script>",
    b"\"; filename=evil.sh",
    b"bell\x07esc\x1b[2J",
    b"<img src=x onerror=alert(2)>",
];

/// The fleet of the tests.
pub struct Fleet {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub repo: PathBuf,
    /// The source tree of web1, as its last backup saw it.
    pub web1: PathBuf,
    /// Content of var/www/index.html in each of web1's three backups, oldest first.
    pub index_versions: Vec<String>,
}

impl Fleet {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Deterministic incompressible bytes (the chunker's own test data).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    xstore_tests::seeded_bytes(seed, len)
}

/// Builds the fleet: web1 backed up three times and rotated so that `daily.1` is its
/// first backup, `daily.0` its second and `hourly.0` its third; db1 once. `big_file`
/// bytes of pattern go into web1's `var/www/big.bin`.
pub fn fleet(big_file: usize) -> Fleet {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let repo = dir.join("repo");
    let web1 = dir.join("web1");
    let www = web1.join("var/www");
    fs::create_dir_all(&www).unwrap();
    fs::create_dir_all(web1.join("etc")).unwrap();
    fs::create_dir_all(web1.join("root")).unwrap();
    fs::write(web1.join("etc/hostname"), "web1\n").unwrap();
    fs::write(web1.join("root/secret.key"), "the customer's root key\n").unwrap();
    fs::set_permissions(
        web1.join("root/secret.key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(web1.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(www.join("big.bin"), pattern(big_file, 7)).unwrap();
    fs::create_dir_all(www.join("hostile")).unwrap();
    for name in HOSTILE {
        fs::write(
            www.join("hostile").join(std::ffi::OsStr::from_bytes(name)),
            b"hostile\n",
        )
        .unwrap();
    }
    fs::create_dir_all(www.join("shop/img")).unwrap();
    fs::write(www.join("shop/img/logo.png"), pattern(5000, 3)).unwrap();
    fs::write(www.join("shop/config.php"), "<?php $db = 'one';\n").unwrap();
    let db1 = dir.join("db1");
    fs::create_dir_all(db1.join("var/lib")).unwrap();
    fs::write(
        db1.join("var/lib/other-customer.sql"),
        "other customer's data\n",
    )
    .unwrap();

    fs::write(
        dir.join("hosts.toml"),
        "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\n\n\
         [[account.host]]\nname = \"web1\"\naddress = \"127.0.0.1\"\n\n\
         [[account.host]]\nname = \"web2\"\naddress = \"127.0.0.3\"\n\n\
         [[account]]\nname = \"other\"\nallocation = \"1 GiB\"\n\n\
         [[account.host]]\nname = \"db1\"\naddress = \"127.0.0.2\"\n",
    )
    .unwrap();
    ok(&repo, &["init", "--no-encryption"]);
    ok(
        &repo,
        &["tiers", "--set", "hourly=1,daily=7,weekly=4,monthly=6"],
    );
    let mut index_versions = Vec::new();
    for round in 0..3 {
        let index = format!("<h1>shop, version {round}</h1>\n");
        fs::write(www.join("index.html"), &index).unwrap();
        index_versions.push(index);
        ok(&repo, &["backup", "--host", "web1", web1.to_str().unwrap()]);
        if round < 2 {
            ok(&repo, &["rotate", "daily", "--all"]);
        }
    }
    ok(&repo, &["backup", "--host", "db1", db1.to_str().unwrap()]);

    fs::write(dir.join("pw"), format!("{PASSWORD}\n")).unwrap();
    let users = dir.join("users.toml");
    for (name, how) in [
        ("alice", ["--account", "acme"]),
        ("bob", ["--account", "other"]),
        ("olga", ["--operator", ""]),
    ] {
        let mut args = vec![
            "web-user",
            "add",
            name,
            "--password-file",
            dir.join("pw").to_str().unwrap(),
            "--users",
            users.to_str().unwrap(),
            "--inventory",
            dir.join("hosts.toml").to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(how.iter().filter(|a| !a.is_empty()).map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = xstore(&repo, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Fleet {
        _tmp: tmp,
        dir,
        repo,
        web1,
        index_versions,
    }
}

/// A running `xstore serve-web`.
pub struct Server {
    pub child: Child,
    /// `https://127.0.0.1:PORT/` or `unix:PATH`.
    pub at: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The Unix socket's path.
    pub fn socket(&self) -> PathBuf {
        PathBuf::from(self.at.strip_prefix("unix:").unwrap())
    }

    /// Peak resident memory of the server so far (VmHWM), bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }
}

/// Starts `xstore serve-web` for the fleet with `listen` (`--unix PATH`, or `--listen …
/// --tls-cert … --tls-key …`) and waits for its ready line.
pub fn serve(fleet: &Fleet, listen: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &fleet.repo)
        .arg("serve-web")
        .args(listen)
        .args(["--inventory", fleet.path("hosts.toml").to_str().unwrap()])
        .args(["--users", fleet.path("users.toml").to_str().unwrap()])
        .args(["--audit-log", fleet.path("audit.log").to_str().unwrap()])
        .args(["--history", fleet.path("history.jsonl").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let at = line
        .trim()
        .strip_prefix("xstore web front listening on ")
        .unwrap_or_else(|| panic!("no ready line: {line:?}"))
        .to_string();
    Server { child, at }
}

/// A self-signed certificate for 127.0.0.1: (cert, key).
pub fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (cert, key)
}

pub fn serve_https(f: &Fleet, extra: &[&str]) -> Server {
    let (cert, key) = certificate(&f.dir);
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve(f, &args)
}

/// Serves the fleet on a Unix socket in its directory.
pub fn serve_unix(fleet: &Fleet) -> Server {
    let socket = fleet.path("web.sock");
    serve(fleet, &["--unix", socket.to_str().unwrap()])
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value a `Set-Cookie` header gives cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Sends one request over the socket (`Connection: close`) and reads the whole answer.
pub fn request(
    socket: &Path,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut s = UnixStream::connect(socket).unwrap();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: backup.example\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// The data of a chunked body; panics when its last chunk is missing (a cut download).
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("cut chunked body");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// The value of the first hidden `csrf` input of a page.
pub fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("no csrf field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Percent-encodes a form value.
pub fn form_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A logged-in user's session over the socket.
pub struct Client {
    pub socket: PathBuf,
    /// `__Host-xstore=…`.
    pub cookie: String,
    pub csrf: String,
}

/// Tries to log in; the answer of the POST.
pub fn try_login(socket: &Path, user: &str, password: &str) -> Answer {
    let form = request(socket, "GET", "/login", &[], b"");
    assert_eq!(form.status, 200);
    let token = form.cookie("__Host-xstore-login").unwrap();
    let csrf = csrf_of(&form.text());
    let body = format!(
        "user={}&password={}&csrf={csrf}",
        form_value(user),
        form_value(password)
    );
    request(
        socket,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &format!("__Host-xstore-login={token}")),
        ],
        body.as_bytes(),
    )
}

/// Logs in as `user`.
pub fn login(socket: &Path, user: &str) -> Client {
    let answer = try_login(socket, user, PASSWORD);
    assert_eq!(answer.status, 303, "{}", answer.text());
    let cookie = format!("__Host-xstore={}", answer.cookie("__Host-xstore").unwrap());
    let hosts = request(socket, "GET", "/hosts", &[("Cookie", &cookie)], b"");
    assert_eq!(hosts.status, 200);
    Client {
        socket: socket.to_path_buf(),
        cookie,
        csrf: csrf_of(&hosts.text()),
    }
}

impl Client {
    pub fn get(&self, target: &str) -> Answer {
        request(
            &self.socket,
            "GET",
            target,
            &[("Cookie", &self.cookie)],
            b"",
        )
    }

    pub fn get_with(&self, target: &str, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("Cookie", self.cookie.as_str())];
        all.extend_from_slice(headers);
        request(&self.socket, "GET", target, &all, b"")
    }

    pub fn post(&self, target: &str, body: &str) -> Answer {
        request(
            &self.socket,
            "POST",
            target,
            &[
                ("Cookie", &self.cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        )
    }
}

/// The stable names of a host's snapshots in the repository, oldest first (as the pages
/// name them), with their ids.
pub fn snapshots_of(repo: &Path, host: &str) -> Vec<(String, String)> {
    let out = xstore(repo, &["--json", "snapshots", "--host", host]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut v: Vec<(i64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["start_ns"].as_i64().unwrap(),
                s["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v.into_iter()
        .map(|(ns, id)| {
            (
                xstore::format_utc(ns.div_euclid(1_000_000_000)).replace(':', ""),
                id,
            )
        })
        .collect()
}

/// Every file under `dir` with the hash of its bytes and its mode, by relative path.
pub fn tree(dir: &Path) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if meta.is_dir() {
                stack.push(e.path());
                out.push((rel, String::new(), meta.permissions().mode() & 0o7777));
            } else {
                let hash = blake3::hash(&fs::read(e.path()).unwrap())
                    .to_hex()
                    .to_string();
                out.push((rel, hash, meta.permissions().mode() & 0o7777));
            }
        }
    }
    out.sort();
    out
}

/// What `restore` writes of web1's `var/www` in `daily.1` (its first backup), as [`tree`].
pub fn restored_www(f: &Fleet) -> Vec<(String, String, u32)> {
    let restored = f.path("restored");
    let www = f.web1.join("var/www");
    ok(
        &f.repo,
        &[
            "restore",
            "web1@daily.1",
            restored.to_str().unwrap(),
            "--path",
            www.to_str().unwrap(),
        ],
    );
    tree(&restored.join("www"))
}
