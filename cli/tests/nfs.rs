//! The NFS export (`xstore serve-nfs`) through a real NFS client that needs no kernel module:
//! libnfs-utils' `nfs-ls`, `nfs-cat` and `nfs-cp` against 127.0.0.1. Listings and contents
//! equal the source; an account's export refuses clients that are not its hosts; writes fail.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::ok;
use xstore_tests::make_fixture;

struct Server {
    child: Child,
    /// Account → address its export listens on.
    exports: BTreeMap<String, String>,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Server {
    /// Reads the next `n` export lines (the server prints all of them again after a reload).
    fn read_exports(&mut self, n: usize) {
        self.exports.clear();
        for _ in 0..n {
            let line = self.lines.next().unwrap().unwrap();
            let mut words = line.split(' ');
            let (name, addr) = (words.next().unwrap(), words.next().unwrap());
            self.exports.insert(name.to_string(), addr.to_string());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(repo: &Path, inventory: &Path) -> Server {
    serve_with_env(repo, inventory, &[])
}

fn serve_with_env(repo: &Path, inventory: &Path, env: &[(&'static str, String)]) -> Server {
    serve_accounts(repo, inventory, env, 2)
}

fn serve_accounts(
    repo: &Path,
    inventory: &Path,
    env: &[(&'static str, String)],
    accounts: usize,
) -> Server {
    serve_args(repo, inventory, env, accounts, &[])
}

fn serve_args(
    repo: &Path,
    inventory: &Path,
    env: &[(&'static str, String)],
    accounts: usize,
    extra: &[&str],
) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", repo)
        .envs(env.iter().cloned())
        .args(["serve-nfs", "--listen", "127.0.0.1:0", "--inventory"])
        .arg(inventory)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut server = Server {
        child,
        exports: BTreeMap::new(),
        lines,
    };
    server.read_exports(accounts);
    server
}

/// Two accounts: acme (web1 at 127.0.0.1, the test's client, whose root reads as root)
/// and other (db9 elsewhere).
fn write_inventory(path: &Path) {
    fs::write(
        path,
        "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\nno_root_squash = true\n[[account.host]]\nname = \"web1\"\naddress = \"127.0.0.1\"\n\
         [[account]]\nname = \"other\"\nallocation = \"1 GiB\"\n[[account.host]]\nname = \"db9\"\naddress = \"192.0.2.77\"\n",
    )
    .unwrap();
}

/// An nfs:// URL of `path` on the export at `addr` (MOUNT and NFS share its port).
fn url(addr: &str, path: &str) -> String {
    let (ip, port) = addr.rsplit_once(':').unwrap();
    format!("nfs://{ip}{path}?nfsport={port}&mountport={port}")
}

fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap()
}

fn mode_string(m: &fs::Metadata) -> String {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        xstore::EntryKind::Dir
    } else if ft.is_symlink() {
        xstore::EntryKind::Symlink
    } else {
        xstore::EntryKind::File
    };
    // nfs-ls prints rwx only (no setuid, setgid or sticky letters).
    xstore_format::tree::mode_string(kind, m.mode() & 0o777)
}

#[test]
fn nfs_clients_see_their_accounts_snapshots_exactly() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 71);
    let other = work.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("secret"), b"not for acme").unwrap();
    ok(&repo, &["init", "--chunk-avg-kib", "64"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    ok(
        &repo,
        &["backup", "-q", "--host", "db9", other.to_str().unwrap()],
    );
    let inventory = work.path().join("hosts.toml");
    write_inventory(&inventory);
    let server = serve(&repo, &inventory);
    let acme = &server.exports["acme"];

    // The account sees its own host only.
    let out = run("nfs-ls", &[&url(acme, "/hosts")]);
    assert!(out.status.success(), "{out:?}");
    let hosts = String::from_utf8(out.stdout).unwrap();
    assert!(hosts.trim_end().ends_with(" web1"), "{hosts}");
    assert!(!hosts.contains("db9"), "{hosts}");

    // A recursive listing of the snapshot equals the source: names, modes, owners, sizes.
    let canonical = src.canonicalize().unwrap();
    let snapshot_dir = format!("/hosts/web1/latest{}", canonical.display());
    let out = run("nfs-ls", &["-R", &url(acme, &snapshot_dir)]);
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let plain = walk_plain(&src);
    let files: Vec<&String> = plain
        .iter()
        .filter(|p| fs::symlink_metadata(src.join(p)).unwrap().is_file())
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    let mut seen = 0;
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let rel = f[5..].join(" ");
        if !plain.contains(&rel) {
            continue; // fifos, devices, and names a terminal tool prints lossily
        }
        let m = fs::symlink_metadata(src.join(&rel)).unwrap();
        let ft = m.file_type();
        assert_eq!(f[0], mode_string(&m), "mode of {rel}");
        assert_eq!(f[2], m.uid().to_string(), "uid of {rel}");
        assert_eq!(f[3], m.gid().to_string(), "gid of {rel}");
        if ft.is_file() {
            assert_eq!(f[4], m.len().to_string(), "size of {rel}");
        }
        seen += 1;
    }
    assert_eq!(
        seen,
        plain.len(),
        "listed {seen} of {}:\n{listing}",
        plain.len()
    );

    // Contents, through nfs-cat and nfs-cp, byte for byte.
    for rel in &files {
        let want = fs::read(src.join(rel)).unwrap();
        let got = run("nfs-cat", &[&url(acme, &format!("{snapshot_dir}/{rel}"))]);
        assert!(got.status.success(), "{rel}: {got:?}");
        assert_eq!(got.stdout, want, "content of {rel}");
    }
    let copy = work.path().join("copy.bin");
    let out = run(
        "nfs-cp",
        &[
            &url(acme, &format!("{snapshot_dir}/sub/random.bin")),
            copy.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::read(&copy).unwrap(),
        fs::read(src.join("sub/random.bin")).unwrap()
    );

    // Tier paths too.
    let tier = run(
        "nfs-cat",
        &[&url(
            acme,
            &format!("/hourly.0/web1{}/small.txt", canonical.display()),
        )],
    );
    assert_eq!(tier.stdout, b"hello 71\n");

    // Writing is refused.
    let out = run(
        "nfs-cp",
        &[
            copy.to_str().unwrap(),
            &url(acme, &format!("{snapshot_dir}/new.bin")),
        ],
    );
    assert!(!out.status.success(), "a write succeeded: {out:?}");
    // Refused as read-only by the server, not failing for some other reason.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("NFS3ERR_ROFS"), "{said}");

    // A new backup rotates hourly.0 to it while the export runs; the stable path of the first
    // snapshot keeps its content.
    let first = String::from_utf8(run("nfs-ls", &[&url(acme, "/hosts/web1")]).stdout).unwrap();
    let first_time = first
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .find(|n| n != "latest")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(src.join("small.txt"), b"changed\n").unwrap();
    ok(
        &repo,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    let tier_path = format!("/hourly.0/web1{}/small.txt", canonical.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while run("nfs-cat", &[&url(acme, &tier_path)]).stdout != b"changed\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "hourly.0 did not move"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let old = run(
        "nfs-cat",
        &[&url(
            acme,
            &format!("/hosts/web1/{first_time}{}/small.txt", canonical.display()),
        )],
    );
    assert_eq!(old.stdout, b"hello 71\n");
    let previous = format!("/hourly.1/web1{}/small.txt", canonical.display());
    assert_eq!(
        run("nfs-cat", &[&url(acme, &previous)]).stdout,
        b"hello 71\n"
    );

    // 127.0.0.1 is not one of the other account's hosts: refused at connect.
    let out = run("nfs-ls", &[&url(&server.exports["other"], "/hosts")]);
    assert!(
        !out.status.success(),
        "other account's export answered: {out:?}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("db9"));
}

/// Files, directories and symlinks below `root` with plain names (what a URL carries
/// without escaping and a listing prints unchanged).
fn walk_plain(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let plain = rel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
            if m.is_dir() {
                stack.push(p);
            }
            let ft = m.file_type();
            if plain && (ft.is_file() || ft.is_dir() || ft.is_symlink()) {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// gc while an NFS export serves a snapshot: reads right after gc rewrote the packs (while
/// the server still reads through the index it had before) return the exact bytes. (With
/// `--grace 0s` the read after gc fails: the test can fail.)
#[test]
fn nfs_reads_right_after_gc_are_exact() {
    let (work, repo, src, junk) = common::small_pack_repo();
    let inventory = work.path().join("hosts.toml");
    write_inventory(&inventory);
    let canonical = src.canonicalize().unwrap();
    let mut server: Option<Server> = None;
    for round in 0..5u64 {
        let data = xstore_tests::seeded_bytes(round, 200_000);
        fs::write(src.join("data.bin"), &data).unwrap();
        let later = xstore_tests::seeded_bytes(round + 50, 200_000);
        fs::write(src.join("later.bin"), &later).unwrap();
        fs::create_dir_all(&junk).unwrap();
        fs::write(
            junk.join("junk.bin"),
            xstore_tests::seeded_bytes(round + 100, 200_000),
        )
        .unwrap();
        common::snapshot_mixed_with_garbage(&repo, "web1", &src, &junk);
        // A fresh server sees the new snapshot at once; its index predates the gc below.
        drop(server.take());
        let srv = serve(&repo, &inventory);
        let file = url(
            &srv.exports["acme"],
            &format!("/hosts/web1/latest{}/data.bin", canonical.display()),
        );
        // Nothing is read before gc: the server's open pack files would keep a deleted
        // pack readable and hide the race.
        let gc = common::json(&repo, &["gc", "--max-dead", "0%"]);
        assert!(gc["packs_rewritten"].as_u64().unwrap() > 0, "{gc}");
        let after = run("nfs-cat", &[&file.replace("data.bin", "later.bin")]);
        assert!(after.status.success(), "round {round}: {after:?}");
        assert_eq!(after.stdout, later, "round {round}");
        let again = run("nfs-cat", &[&file]);
        assert!(again.status.success(), "round {round}: {again:?}");
        assert_eq!(again.stdout, data, "round {round}");
        server = Some(srv);
    }
}

/// An export of a repository whose packs are in a Garage bucket: the server reads through the
/// object store from inside its own async runtime. Every file reads back exactly, also after
/// a gc (run while the export is up) rewrote the packs that hold them.
#[test]
fn an_export_of_a_repository_in_a_garage_bucket_serves_exact_files_across_a_gc() {
    let work = tempfile::tempdir().unwrap();
    let g = xstore_tests::garage::Garage::start(&work.path().join("garage"), 1);
    let (repo, src, junk) = (
        work.path().join("repo"),
        work.path().join("src"),
        work.path().join("junk"),
    );
    make_fixture(&src, 74);
    fs::create_dir_all(&junk).unwrap();
    for i in 0..40u64 {
        fs::write(
            junk.join(format!("j{i}")),
            xstore_tests::seeded_bytes(7400 + i, 30_000),
        )
        .unwrap();
    }
    let xs = |args: &[&str]| common::ok_with_env(&repo, &g.env(), args);
    let store = format!("s3://{}/exported", g.bucket);
    let endpoint = g.endpoint();
    xs(&[
        "init",
        "--store",
        &store,
        "--endpoint",
        &endpoint,
        "--pack-size-mib",
        "1",
        "--chunk-avg-kib",
        "16",
    ]);
    // The snapshot's blobs share packs with garbage that a forget then leaves dead.
    let (s, j) = (src.to_str().unwrap(), junk.to_str().unwrap());
    xs(&["backup", "-q", "--host", "web1", "--no-tier", s, j]);
    fs::remove_dir_all(&junk).unwrap();
    fs::create_dir_all(&junk).unwrap();
    xs(&["backup", "-q", "--host", "web1", "--no-tier", s, j]);
    xs(&["forget", "--host", "web1", "--keep-last", "1"]);
    let inventory = work.path().join("hosts.toml");
    write_inventory(&inventory);
    let server = serve_with_env(&repo, &inventory, &g.env());
    let acme = &server.exports["acme"];
    let snapshot_dir = format!(
        "/hosts/web1/latest{}",
        src.canonicalize().unwrap().display()
    );
    let files: Vec<String> = walk_plain(&src)
        .into_iter()
        .filter(|p| fs::symlink_metadata(src.join(p)).unwrap().is_file())
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    let read_exact = |rel: &String| {
        let got = run("nfs-cat", &[&url(acme, &format!("{snapshot_dir}/{rel}"))]);
        assert!(got.status.success(), "{rel}: {got:?}");
        assert_eq!(
            got.stdout,
            fs::read(src.join(rel)).unwrap(),
            "content of {rel}"
        );
    };
    files.iter().take(2).for_each(read_exact);
    let gc: serde_json::Value =
        common::last_json(xs(&["--json", "gc", "--max-dead", "0%"]).as_bytes());
    assert!(gc["packs_rewritten"].as_u64().unwrap() > 0, "{gc}");
    files.iter().for_each(read_exact);
}

/// `nfs-cat` of `path` on `addr` as the AUTH_SYS `uid`/`gid` (URL parameters), from a
/// privileged port (the test runs as root): the bytes, or `None` when refused.
fn cat_as(addr: &str, path: &str, ids: Option<(u32, u32)>) -> Option<Vec<u8>> {
    let mut u = url(addr, path);
    if let Some((uid, gid)) = ids {
        u.push_str(&format!("&uid={uid}&gid={gid}"));
    }
    let out = run("nfs-cat", &[&u]);
    out.status.success().then_some(out.stdout)
}

/// A tree whose modes and owners say who may read what.
fn permission_tree(src: &Path) {
    use std::os::unix::fs::{chown, PermissionsExt};
    let put = |rel: &str, body: &str, mode: u32, uid: u32, gid: u32| {
        let p = src.join(rel);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        chown(&p, Some(uid), Some(gid)).unwrap();
    };
    fs::create_dir_all(src.join("locked")).unwrap();
    put("root_key", "ROOT SECRET\n", 0o600, 0, 0);
    put("user_key", "USER SECRET\n", 0o600, 1000, 1000);
    put("group_file", "GROUP ONLY\n", 0o640, 0, 4242);
    put("open.txt", "OPEN\n", 0o644, 0, 0);
    put("locked/inner.txt", "INNER\n", 0o644, 0, 0);
    fs::set_permissions(src.join("locked"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(src, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The export checks every read against the snapshot's owners and modes for the caller's
/// AUTH_SYS ids, squashes root, and refuses unprivileged ports unless the account is
/// `insecure`; nothing behind the gate answers a local user who connects past it.
#[test]
fn the_export_enforces_modes_owners_root_squash_and_secure_ports() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    fs::create_dir(&src).unwrap();
    permission_tree(&src);
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    let inventory = work.path().join("hosts.toml");
    fs::write(
        &inventory,
        "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\n\
         [[account.host]]\nname = \"web1\"\naddress = \"127.0.0.1\"\n\
         [[account]]\nname = \"lax\"\nallocation = \"1 GiB\"\ninsecure = true\nno_root_squash = true\n\
         [[account.host]]\nname = \"web1b\"\naddress = \"127.0.0.1\"\n",
    )
    .unwrap();
    // lax shows no snapshots of web1: give it its own.
    ok(
        &repo,
        &["backup", "-q", "--host", "web1b", src.to_str().unwrap()],
    );
    let server = serve(&repo, &inventory);
    let acme = &server.exports["acme"];
    let dir = format!(
        "/hosts/web1/latest{}",
        src.canonicalize().unwrap().display()
    );
    let at = |rel: &str| format!("{dir}/{rel}");

    // Root is squashed: it reads what others may read, nothing more.
    assert_eq!(
        cat_as(acme, &at("open.txt"), None).as_deref(),
        Some(&b"OPEN\n"[..])
    );
    assert_eq!(cat_as(acme, &at("root_key"), None), None);
    assert_eq!(cat_as(acme, &at("root_key"), Some((0, 0))), None);
    assert_eq!(cat_as(acme, &at("group_file"), Some((0, 0))), None);
    // A 0600 file of uid 1000: its owner only.
    let user = Some((1000, 1000));
    assert_eq!(
        cat_as(acme, &at("user_key"), user).as_deref(),
        Some(&b"USER SECRET\n"[..])
    );
    assert_eq!(cat_as(acme, &at("user_key"), Some((1001, 1000))), None);
    assert_eq!(cat_as(acme, &at("root_key"), user), None);
    // 0640 root:4242: a member of group 4242, no one else.
    assert_eq!(
        cat_as(acme, &at("group_file"), Some((1001, 4242))).as_deref(),
        Some(&b"GROUP ONLY\n"[..])
    );
    assert_eq!(cat_as(acme, &at("group_file"), user), None);
    // Search permission: a 0644 file in a 0700 root directory is out of reach.
    assert_eq!(cat_as(acme, &at("locked/inner.txt"), user), None);
    let listing = run(
        "nfs-ls",
        &[&format!("{}&uid=1000&gid=1000", url(acme, &at("locked")))],
    );
    assert!(!listing.status.success(), "{listing:?}");
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("inner.txt"));
    // Mounting below the locked directory is refused too.
    let mounted = run(
        "nfs-cat",
        &[&format!(
            "{}&uid=1000&gid=1000",
            url(acme, &at("locked/inner.txt"))
        )],
    );
    assert!(!mounted.status.success());

    // The account that keeps root's powers reads everything as root.
    let lax = &server.exports["lax"];
    let lax_dir = dir.replace("/web1/", "/web1b/");
    assert_eq!(
        cat_as(lax, &format!("{lax_dir}/root_key"), None).as_deref(),
        Some(&b"ROOT SECRET\n"[..])
    );

    // An unprivileged process on the client: its source port is above 1023. acme refuses
    // it even a world-readable file; the insecure account serves it what others may read.
    let nobody = |addr: &str, path: &str| {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "nfs-cat", &url(addr, path)])
            .output()
            .unwrap()
    };
    let refused = nobody(acme, &at("open.txt"));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stdout.is_empty());
    let served = nobody(lax, &format!("{lax_dir}/open.txt"));
    assert_eq!(served.stdout, b"OPEN\n", "{served:?}");
    assert!(nobody(lax, &format!("{lax_dir}/root_key"))
        .stdout
        .is_empty());

    // Every other port the server listens on is its NFS servers behind the gates: a local
    // user (or root) connecting to them directly gets no file handle and reads nothing.
    let ss = run("ss", &["-Hltnp"]);
    let pid = format!("pid={},", server.child.id());
    let public: Vec<&str> = server
        .exports
        .values()
        .map(|a| a.rsplit(':').next().unwrap())
        .collect();
    let inner: Vec<String> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains(&pid))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .filter(|a| !public.contains(&a.rsplit(':').next().unwrap()))
        .collect();
    assert!(!inner.is_empty(), "{ss:?}");
    for addr in &inner {
        for path in ["/", "/hosts", &at("open.txt"), &at("root_key")] {
            let as_nobody = nobody(addr, path);
            assert!(!as_nobody.status.success(), "{addr}{path}: {as_nobody:?}");
            let as_root = run("nfs-cat", &[&url(addr, path)]);
            assert!(!as_root.status.success(), "{addr}{path}: {as_root:?}");
            assert!(as_root.stdout.is_empty());
        }
    }
}

/// In `nfs_per_host` mode an address sees the snapshots of the hosts at that address only.
#[test]
fn a_per_host_export_shows_an_address_only_its_own_host() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 75);
    ok(&repo, &["init"]);
    for host in ["web1", "web2"] {
        ok(
            &repo,
            &["backup", "-q", "--host", host, src.to_str().unwrap()],
        );
    }
    let inventory = work.path().join("hosts.toml");
    let account = |per_host: bool| {
        format!(
            "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\nnfs_per_host = {per_host}\n\
             [[account.host]]\nname = \"web1\"\naddress = \"127.0.0.1\"\n\
             [[account.host]]\nname = \"web2\"\naddress = \"192.0.2.9\"\n"
        )
    };
    fs::write(&inventory, account(false)).unwrap();
    let server = serve_accounts(&repo, &inventory, &[], 1);
    let hosts = run("nfs-ls", &[&url(&server.exports["acme"], "/hosts")]);
    let hosts = String::from_utf8_lossy(&hosts.stdout).into_owned();
    assert!(hosts.contains("web1") && hosts.contains("web2"), "{hosts}");
    drop(server);
    fs::write(&inventory, account(true)).unwrap();
    let server = serve_accounts(&repo, &inventory, &[], 1);
    let hosts = run("nfs-ls", &[&url(&server.exports["acme"], "/hosts")]);
    assert!(hosts.status.success(), "{hosts:?}");
    let hosts = String::from_utf8_lossy(&hosts.stdout).into_owned();
    assert!(hosts.contains("web1") && !hosts.contains("web2"), "{hosts}");
    let tier = run("nfs-ls", &[&url(&server.exports["acme"], "/hourly.0")]);
    let tier = String::from_utf8_lossy(&tier.stdout).into_owned();
    assert!(tier.contains("web1") && !tier.contains("web2"), "{tier}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ports come from `nfs_port` and stay when an account is inserted before another;
/// SIGHUP adds the new account while a client of another account keeps reading.
#[test]
fn sighup_adds_an_account_without_disturbing_another_and_ports_stay() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 76);
    ok(&repo, &["init"]);
    for host in ["web1", "new1"] {
        ok(
            &repo,
            &["backup", "-q", "--host", host, src.to_str().unwrap()],
        );
    }
    let (acme_port, new_port) = (free_port(), free_port());
    let acme = format!(
        "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\nnfs_port = {acme_port}\nno_root_squash = true\n\
         [[account.host]]\nname = \"web1\"\naddress = \"127.0.0.1\"\n"
    );
    let inventory = work.path().join("hosts.toml");
    fs::write(&inventory, &acme).unwrap();
    let mut server = serve_accounts(&repo, &inventory, &[], 1);
    assert_eq!(server.exports["acme"], format!("127.0.0.1:{acme_port}"));
    let file = url(
        &server.exports["acme"],
        &format!(
            "/hosts/web1/latest{}/sub/random.bin",
            src.canonicalize().unwrap().display()
        ),
    );
    let want = fs::read(src.join("sub/random.bin")).unwrap();

    // A reader of acme reads in a loop across the reload.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, file, want) = (stop.clone(), file.clone(), want.clone());
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = run("nfs-cat", &[&file]);
                if got.stdout != want {
                    failures.push(format!("{got:?}"));
                }
                reads += 1;
            }
            (reads, failures)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A new account inserted before acme.
    let with_new = format!(
        "[[account]]\nname = \"fresh\"\nallocation = \"1 GiB\"\nnfs_port = {new_port}\nno_root_squash = true\n\
         [[account.host]]\nname = \"new1\"\naddress = \"127.0.0.1\"\n{acme}"
    );
    fs::write(&inventory, with_new).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    server.read_exports(2);
    assert_eq!(server.exports["acme"], format!("127.0.0.1:{acme_port}"));
    assert_eq!(server.exports["fresh"], format!("127.0.0.1:{new_port}"));
    let listing = run("nfs-ls", &[&url(&server.exports["fresh"], "/hosts")]);
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("new1"),
        "{listing:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, failures) = reader.join().unwrap();
    assert!(reads >= 3, "{reads} reads");
    assert!(failures.is_empty(), "{failures:?}");

    // Removing the account again stops its export; acme stays where it was.
    fs::write(&inventory, &acme).unwrap();
    Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    server.read_exports(1);
    assert_eq!(server.exports["acme"], format!("127.0.0.1:{acme_port}"));
    let gone = run(
        "nfs-ls",
        &[&url(&format!("127.0.0.1:{new_port}"), "/hosts")],
    );
    assert!(!gone.status.success(), "{gone:?}");
    assert_eq!(run("nfs-cat", &[&file]).stdout, want);
}

/// 16 xattrs of 64 KiB on every regular file: what a customer's host may send (1 MiB of
/// xattrs per file; they compress to almost nothing).
fn large_xattrs(path: &Path) -> xstore_tests::Xattrs {
    if !fs::symlink_metadata(path)?.is_file() {
        return Ok(Vec::new());
    }
    let seed = path.to_string_lossy().into_owned();
    Ok((0..16)
        .map(|i| {
            let value = format!("{seed}/{i}")
                .into_bytes()
                .repeat(65536 / (seed.len() + 4));
            (format!("user.big{i:02}").into_bytes(), value)
        })
        .collect())
}

/// Peak and current resident memory of a process, in MiB (VmHWM, VmRSS).
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|kb| kb.parse::<u64>().unwrap() / 1024)
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Listing directories whose entries carry 20 MiB of xattrs each through the export: the
/// server's memory stays within its cache budget plus what one directory takes while it is
/// decoded, instead of growing by every directory listed.
#[test]
fn listing_large_xattr_directories_keeps_the_export_within_its_budget() {
    let work = tempfile::tempdir().unwrap();
    let (repo_dir, src) = (work.path().join("repo"), work.path().join("src"));
    for d in 0..16 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            fs::write(dir.join(format!("f{f:02}")), format!("{d} {f}\n")).unwrap();
        }
    }
    {
        let repo = xstore::Repository::init(&repo_dir, &xstore::InitOptions::default()).unwrap();
        let opts = xstore::BackupOptions {
            ..xstore::BackupOptions::new(xstore_tests::host_name("web1"), vec![src.clone()])
        };
        let source = xstore_tests::Hooked {
            before_open: |_: &Path| Ok(()),
            xattrs: large_xattrs,
        };
        repo.backup(&source, &opts).unwrap();
    }
    let inventory = work.path().join("hosts.toml");
    write_inventory(&inventory);
    let budget_mib = 32;
    let server = serve_args(
        &repo_dir,
        &inventory,
        &[],
        2,
        &["--cache-mib", &budget_mib.to_string()],
    );
    let acme = &server.exports["acme"];
    let dir = format!(
        "/hosts/web1/latest{}",
        src.canonicalize().unwrap().display()
    );
    let listing = run("nfs-ls", &[&url(acme, &dir)]);
    assert!(listing.status.success(), "{listing:?}");
    let (_, before) = memory_mib(server.child.id());
    for round in 0..2 {
        for d in 0..16 {
            let out = run("nfs-ls", &[&url(acme, &format!("{dir}/d{d:02}"))]);
            assert!(out.status.success(), "{out:?}");
            let names = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                names.lines().filter(|l| l.contains(" f")).count(),
                20,
                "{names}"
            );
        }
        let got = run("nfs-cat", &[&url(acme, &format!("{dir}/d07/f03"))]);
        assert_eq!(got.stdout, b"7 3\n", "round {round}");
    }
    let (peak, now) = memory_mib(server.child.id());
    eprintln!("export memory: {before} MiB before listing, peak {peak} MiB, now {now} MiB (budget {budget_mib} MiB, 20 MiB of xattrs per directory, 16 directories)");
    // Without byte bounds the 16 directories stayed cached, twice over (trees and nodes):
    // over 600 MiB. Allowed: the baseline, the budget, and a few directories in decoding.
    assert!(
        peak < before + budget_mib + 160,
        "peak {peak} MiB from {before} MiB"
    );
}
