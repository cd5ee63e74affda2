//! Pulls through a real sshd on 127.0.0.1 whose authorized_keys carries the forced-command
//! line `xstore agent --print-authorized-keys` prints (issue: pull over SSH).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{json, ok, stderr, xstore};
use xstore_tests::sshd::Sshd;
use xstore_tests::{assert_same_tree, make_fixture, restored_path};

struct Fleet {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    data: PathBuf,
    inventory: PathBuf,
    sshd: Sshd,
}

const BIN: &str = env!("CARGO_BIN_EXE_xstore");

/// The small client binary, built beside `xstore` by the workspace build: the clients of
/// these tests run it as their forced command, as README's client setup installs it.
fn agent_bin() -> std::path::PathBuf {
    let path = Path::new(BIN).with_file_name("xstore-agent");
    assert!(
        path.is_file(),
        "{} missing: build the workspace",
        path.display()
    );
    path
}

/// A client whose backup.conf lists `data/`, an sshd with the agent's forced command, a
/// repository, and an inventory naming the client `client1` (plus `hosts_toml`).
fn fleet(hosts_toml: &str) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let data = root.join("data");
    make_fixture(&data, 1);
    // Symlinks that point out of the allowed tree.
    std::os::unix::fs::symlink("/etc", data.join("escape-dir")).unwrap();
    std::os::unix::fs::symlink(root.join("secret"), data.join("escape-file")).unwrap();
    fs::write(root.join("secret"), b"not in the backup list\n").unwrap();
    let conf = root.join("backup.conf");
    fs::write(
        &conf,
        format!("# what the server may read\n\n{}\n", data.display()),
    )
    .unwrap();
    let sshd_dir = root.join("sshd");
    let sshd = Sshd::start(&sshd_dir, |_| {
        let out = Command::new(agent_bin())
            .args(["--print-authorized-keys", "--from", "127.0.0.1"])
            .arg("--server-key")
            .arg(sshd_dir.join("client_key.pub"))
            .arg("--config")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    });
    let repo = root.join("repo");
    ok(&repo, &["init"]);
    let inventory = root.join("hosts.toml");
    fs::write(
        &inventory,
        format!(
            "[defaults]\nport = {}\nuser = \"root\"\nssh_config = \"{}\"\ntimeout = \"120s\"\n\n\
             [packages]\nsmall = \"2 GiB\"\n\n[[account]]\nname = \"acme\"\npackage = \"small\"\n\n\
             [[account.host]]\nname = \"client1\"\naddress = \"127.0.0.1\"\n{hosts_toml}",
            sshd.port,
            sshd.ssh_config.display()
        ),
    )
    .unwrap();
    Fleet {
        _tmp: tmp,
        root,
        repo,
        data,
        inventory,
        sshd,
    }
}

impl Fleet {
    fn pull(&self, args: &[&str]) -> Output {
        common::pull_json(&self.repo, &self.inventory, args)
    }

    fn pull_ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.pull(args);
        assert!(
            out.status.success(),
            "pull {args:?} failed ({:?}):\n{}\n{}\nsshd log:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            stderr(&out),
            self.sshd.log()
        );
        common::last_json(&out.stdout)
    }

    fn restore_and_compare(&self, snapshot: &str) {
        let target = self
            .root
            .join(format!("restore-{}", snapshot.replace('@', "-")));
        ok(
            &self.repo,
            &[
                "restore",
                "--trusted-specials",
                snapshot,
                target.to_str().unwrap(),
            ],
        );
        assert_same_tree(&self.data, &restored_path(&target, &self.data), true);
        fs::remove_dir_all(&target).unwrap();
    }

    fn snapshots_of(&self, host: &str) -> Vec<serde_json::Value> {
        json(&self.repo, &["snapshots", "--host", host])
            .as_array()
            .unwrap()
            .clone()
    }
}

fn host_report<'a>(v: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .unwrap()
}

#[test]
fn pull_restores_exactly_and_an_unchanged_repull_sends_almost_nothing() {
    let f = fleet("");
    let first = f.pull_ok(&["client1"]);
    let r1 = host_report(&first, "client1");
    assert_eq!(r1["outcome"], "ok", "{first}");
    f.restore_and_compare("client1@latest");
    // Symlinks out of the tree are stored as symlinks, never followed.
    let listing = ok(&f.repo, &["ls", "client1@latest", f.data.to_str().unwrap()]);
    let line = listing.lines().find(|l| l.contains("escape-file")).unwrap();
    assert!(line.starts_with('l'), "{line}");
    let out = xstore(
        &f.repo,
        &[
            "cat",
            "client1@latest",
            f.data.join("escape-file").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let snaps = f.snapshots_of("client1");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["paths"][0], f.data.to_str().unwrap());
    assert_eq!(snaps[0]["tiers"][0], "hourly");
    let stats = &snaps[0]["stats"];
    let logical = stats["logical_bytes"].as_u64().unwrap();
    let wire1 = stats["wire_bytes"].as_u64().unwrap();
    // The fixture's big files are random: nearly all of them crosses the wire once (the
    // copy deduplicates and is not sent again).
    assert!(wire1 > 3 * 1024 * 1024 && wire1 < logical, "{stats}");

    let second = f.pull_ok(&["client1"]);
    let r2 = host_report(&second, "client1");
    assert_eq!(r2["outcome"], "ok");
    let snaps = f.snapshots_of("client1");
    assert_eq!(snaps.len(), 2);
    let stats = &snaps[1]["stats"];
    assert_eq!(stats["files_read"], 0, "{stats}");
    assert_eq!(stats["bytes_read"], 0, "{stats}");
    let wire2 = stats["wire_bytes"].as_u64().unwrap();
    assert_eq!(r2["wire_bytes"].as_u64().unwrap(), wire2);
    // Metadata only: a few hundred bytes per entry at most.
    assert!(
        wire2 < 64 * 1024 && wire2 * 100 < wire1,
        "{wire2} vs {wire1}"
    );
    f.restore_and_compare("client1@latest");

    // A changed file is sent again; only it.
    fs::write(f.data.join("small.txt"), b"changed content\n").unwrap();
    f.pull_ok(&["client1"]);
    let snaps = f.snapshots_of("client1");
    assert_eq!(snaps[2]["stats"]["files_read"], 1);
    f.restore_and_compare("client1@latest");

    // Only xattrs change (content, size and mtime stay): listing digests leave xattrs out,
    // and the ctime they change is what makes the agent send the directory again.
    if xstore_tests::xattrs_supported(&f.data) {
        let file = f.data.join("sub/deeper/copy.bin");
        let before = fs::symlink_metadata(&file).unwrap();
        xattr::set(&file, "user.backup-test", b"set after the first pulls").unwrap();
        xattr::set(f.data.join("sub"), "user.dir-note", b"on a directory").unwrap();
        let after = fs::symlink_metadata(&file).unwrap();
        assert_eq!(
            (before.len(), before.modified().unwrap()),
            (after.len(), after.modified().unwrap())
        );
        f.pull_ok(&["client1"]);
        f.restore_and_compare("client1@latest");
        xattr::remove(&file, "user.backup-test").unwrap();
        f.pull_ok(&["client1"]);
        f.restore_and_compare("client1@latest");
    }
    ok(&f.repo, &["check", "--read-data"]);

    // hosts lists the inventory with the newest snapshot.
    let hosts = json(
        &f.repo,
        &["hosts", "--inventory", f.inventory.to_str().unwrap()],
    );
    assert_eq!(hosts[0]["host"], "client1");
    let expected = if xstore_tests::xattrs_supported(&f.data) {
        5
    } else {
        3
    };
    assert_eq!(hosts[0]["snapshots"], expected);
    assert_eq!(hosts[0]["allocation"], 2u64 << 30);
    assert_eq!(hosts[0]["latest"]["status"], "complete");
}

/// A chunk damaged in the repository is stored again by the next pull of the host that still
/// has it, although the file did not change there: the agent is asked for it.
#[test]
fn the_next_pull_stores_a_damaged_chunk_again() {
    let f = fleet("");
    f.pull_ok(&["client1"]);
    let file = f.data.join("sub/random.bin");
    let chunk = common::file_chunk(&f.repo, "client1@latest", &file, 0);
    let damaged = common::damage_blob(&f.repo, &chunk);
    let out = xstore(&f.repo, &["--json", "verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let again = f.pull_ok(&["client1"]);
    assert_eq!(host_report(&again, "client1")["outcome"], "ok", "{again}");
    let snaps = f.snapshots_of("client1");
    // random.bin and its copy share the chunk: both are read again, the chunk is stored
    // once. Besides it only directory trees of the backup path's ancestors may be new
    // (other processes change the times of /tmp): a few hundred bytes, no second copy.
    let stats = &snaps[1]["stats"];
    assert_eq!(stats["files_read"], 2, "{}", snaps[1]);
    let handle = xstore::Repository::open_read_only(&f.repo).unwrap();
    assert!(handle.damaged_blobs().unwrap().is_empty());
    let stored = handle.blob_location(&chunk).unwrap().unwrap();
    assert_ne!(stored.pack, damaged);
    drop(handle);
    let ancestors = f.data.ancestors().count() as u64 - 1;
    let new_blobs = stats["new_blobs"].as_u64().unwrap();
    let new_bytes = stats["new_bytes"].as_u64().unwrap();
    let chunk_len = u64::from(stored.raw_len);
    assert!(
        (1..=1 + ancestors).contains(&new_blobs)
            && (chunk_len..chunk_len + 512 * ancestors).contains(&new_bytes),
        "{}",
        snaps[1]
    );
    f.restore_and_compare("client1@latest");
    // The first snapshot shares the chunk: it restores again too.
    let first = snaps[0]["id"].as_str().unwrap();
    let target = f.root.join("restore-first");
    ok(
        &f.repo,
        &[
            "restore",
            "--trusted-specials",
            first,
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(&f.data, &restored_path(&target, &f.data), true);
}

#[test]
fn the_key_runs_nothing_but_the_agent() {
    let f = fleet("");
    let planted = f.root.join("pwned");
    let out = f.sshd.ssh(&[], &format!("touch {}", planted.display()));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("refused command"), "{}", stderr(&out));
    assert!(!planted.exists());
    // Port forwarding is refused by the key's options: a remote forward is asked for at
    // once, and ExitOnForwardFailure makes ssh fail when sshd refuses it.
    let forward = [
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:9",
    ];
    let out = f.sshd.ssh(&forward, "xstore agent");
    assert!(!out.status.success(), "forwarding was allowed");
    assert!(
        stderr(&out).contains("forwarding failed"),
        "{}",
        stderr(&out)
    );
    // Control: the same request with an unrestricted key is granted, so the refusal above
    // comes from the key's options.
    let open = Sshd::start(&f.root.join("sshd-open"), |key| format!("{key}\n"));
    let out = open.ssh(&forward, "true");
    assert!(out.status.success(), "{}", stderr(&out));
    // A pull with a path outside the client's list is refused by the agent.
    let outside = f.root.join("secret");
    let bad = format!(
        "[[account.host]]\nname = \"client2\"\naddress = \"127.0.0.1\"\npaths = [\"{}\"]\n",
        outside.display()
    );
    let text = fs::read_to_string(&f.inventory).unwrap() + &bad;
    fs::write(&f.inventory, text).unwrap();
    let out = f.pull(&["client2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v: serde_json::Value = common::last_json(&out.stdout);
    let r = host_report(&v, "client2");
    assert_eq!(r["outcome"], "failed");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("outside this host's backup list"),
        "{r}"
    );
    assert!(f.snapshots_of("client2").is_empty());
}

/// (pid, command line) of every running process that mentions `marker`.
fn processes_mentioning(marker: &Path) -> Vec<(i32, String)> {
    let marker = marker.to_str().unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .filter(|(_, c)| c.contains(marker))
        .collect()
}

fn agent_pids(marker: &Path) -> Vec<i32> {
    processes_mentioning(marker)
        .into_iter()
        .filter(|(_, c)| c.contains("xstore-agent ") || c.contains(" agent "))
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn a_killed_connection_commits_nothing_and_the_next_pull_is_clean() {
    let f = fleet("");
    // Enough data that the pull is still moving when the agent dies.
    fs::write(
        f.data.join("big.bin"),
        xstore::chunker::seeded_bytes(7, 96 * 1024 * 1024),
    )
    .unwrap();
    let conf = f.root.join("backup.conf");
    let child = Command::new(BIN)
        .env("XSTORE_REPO", &f.repo)
        .args(["--json", "pull", "client1", "--inventory"])
        .arg(&f.inventory)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut killed = false;
    while Instant::now() < deadline && !killed {
        let pids = agent_pids(&conf);
        if !pids.is_empty() {
            std::thread::sleep(Duration::from_millis(150));
            for pid in agent_pids(&conf) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid).unwrap(),
                    rustix::process::Signal::KILL,
                );
                killed = true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(killed, "the agent was never seen running");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v: serde_json::Value = common::last_json(&out.stdout);
    let r = host_report(&v, "client1");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert!(f.snapshots_of("client1").is_empty());
    ok(&f.repo, &["check", "--read-data"]);
    let stats = json(&f.repo, &["stats"]);
    assert_eq!(stats["packs"], 0, "uncommitted packs were left: {stats}");

    // The next pull starts cleanly and is exact.
    let v = f.pull_ok(&["client1"]);
    assert_eq!(host_report(&v, "client1")["outcome"], "ok");
    f.restore_and_compare("client1@latest");
    ok(&f.repo, &["check", "--read-data"]);
}

#[test]
fn several_hosts_in_parallel_and_failures_stay_with_their_host() {
    // A host that accepts TCP and never speaks: only the per-host timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp_hosts = |name: &str, sub: &str| {
        format!("[[account.host]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\npaths = [\"DATA/{sub}\"]\n")
    };
    let mut extra = String::from("\n[[account]]\nname = \"other\"\nallocation = \"1 GiB\"\n\n");
    extra += &tmp_hosts("client2", "sub");
    extra += &tmp_hosts("client3", "empty-dir");
    extra += &format!(
        "[[account.host]]\nname = \"hangs\"\naddress = \"127.0.0.1\"\nport = {silent_port}\ntimeout = \"3s\"\n"
    );
    extra += &format!(
        "[[account.host]]\nname = \"refuses\"\naddress = \"127.0.0.1\"\nport = {closed_port}\n"
    );
    let f = fleet(&extra);
    let text = fs::read_to_string(&f.inventory)
        .unwrap()
        .replace("DATA", f.data.to_str().unwrap());
    fs::write(&f.inventory, text).unwrap();

    let out = f.pull(&["--all", "--jobs", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v: serde_json::Value = common::last_json(&out.stdout);
    assert_eq!(v["ok"], 3, "{v}");
    assert_eq!(v["failed"], 2, "{v}");
    let hangs = host_report(&v, "hangs");
    assert!(
        hangs["error"].as_str().unwrap().contains("timed out"),
        "{hangs}"
    );
    let refuses = host_report(&v, "refuses");
    assert!(
        refuses["error"].as_str().unwrap().contains("ssh"),
        "{refuses}"
    );
    f.restore_and_compare("client1@latest");
    let target = f.root.join("r2");
    ok(
        &f.repo,
        &[
            "restore",
            "--trusted-specials",
            "client2@latest",
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(
        &f.data.join("sub"),
        &restored_path(&target, &f.data.join("sub")),
        true,
    );
    assert_eq!(f.snapshots_of("client3").len(), 1);
    assert!(f.snapshots_of("hangs").is_empty());
    ok(&f.repo, &["check", "--read-data"]);
}

/// Processes of this fleet's agent or ssh still running after `deadline` (polled).
fn left_running(f: &Fleet, deadline: Duration) -> Vec<String> {
    let deadline = Instant::now() + deadline;
    loop {
        let mut left: Vec<String> = agent_pids(&f.root.join("backup.conf"))
            .iter()
            .map(|p| format!("agent pid {p}"))
            .collect();
        left.extend(
            processes_mentioning(&f.sshd.ssh_config)
                .into_iter()
                .map(|(_, c)| c),
        );
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pull` takes the repository's writer lock before it opens any SSH session. When the open
/// is refused (another writer holds the lock), no host is contacted: exit 1, one error line
/// naming the holder, no snapshot, no pull record, no ssh or agent started. With
/// `--lock-wait` it pulls once the lock is free.
#[test]
fn a_refused_open_contacts_no_host() {
    let f = fleet("");
    let held = xstore::Repository::open(&f.repo).unwrap();
    // sshd logs every connection it accepts (LogLevel VERBOSE), before any authentication;
    // its start-up probe made the first.
    let connections = || f.sshd.log().matches("Connection from").count();
    let before = connections();
    let out = f.pull(&["client1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("locked by pid"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        connections(),
        before,
        "a locked-out pull connected to a host:\n{}",
        f.sshd.log()
    );

    // Through the library, with an open that lasts a while: no agent starts during it.
    let inventory = xstore_fleet::Inventory::load(&f.inventory).unwrap();
    let hosts = inventory
        .select(&["client1".to_string()], false, None)
        .unwrap();
    let conf = f.root.join("backup.conf");
    let opened = xstore_fleet::pull_fleet(
        || {
            std::thread::sleep(Duration::from_millis(1500));
            Err(agent_pids(&conf).len())
        },
        &hosts,
        1,
        &xstore_fleet::PullOptions::default(),
        &|_| panic!("nothing may be pulled"),
    );
    assert!(
        matches!(opened, Err(0)),
        "an agent started before the repository was open"
    );
    let left = left_running(&f, Duration::from_secs(10));
    assert!(left.is_empty(), "still running: {left:?}");
    drop(held);
    assert!(f.snapshots_of("client1").is_empty());
    assert!(!f.repo.join("pulls").join("client1.json").exists());

    // An ssh that cannot start is that host's failed pull, reported with the reason.
    let mut broken = hosts[0].clone();
    broken.ssh = f.root.join("no-such-ssh").display().to_string();
    let (_, reports) = xstore_fleet::pull_fleet(
        || xstore::Repository::open(&f.repo),
        &[broken],
        1,
        &xstore_fleet::PullOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(reports[0].outcome, xstore_fleet::PullOutcome::Failed);
    let error = reports[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("starting ") && error.contains("no-such-ssh"),
        "{error}"
    );

    let out = xstore(
        &f.repo,
        &[
            "--lock-wait",
            "10s",
            "--json",
            "pull",
            "--inventory",
            f.inventory.to_str().unwrap(),
            "client1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = common::last_json(&out.stdout);
    assert_eq!(host_report(&v, "client1")["outcome"], "ok", "{v}");
    f.restore_and_compare("client1@latest");
}

/// A path listed in backup.conf that does not exist (a volume that is not mounted) makes the
/// pull partial, exit 3, naming the path; listed as optional (`?PATH`) it is skipped quietly.
#[test]
fn a_missing_listed_path_makes_the_pull_partial_unless_optional() {
    let f = fleet("");
    let conf = f.root.join("backup.conf");
    let www = f.root.join("www");
    fs::write(&conf, format!("{}\n{}\n", f.data.display(), www.display())).unwrap();
    let out = f.pull(&["client1"]);
    let v = common::last_json(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{v}\n{}", stderr(&out));
    assert_eq!(host_report(&v, "client1")["outcome"], "partial", "{v}");
    let snaps = f.snapshots_of("client1");
    assert_eq!(snaps[0]["status"], "partial", "{}", snaps[0]);
    let errors = snaps[0]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", snaps[0]);
    assert_eq!(errors[0]["path"], www.to_str().unwrap());
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{}",
        errors[0]
    );
    f.restore_and_compare("client1@latest");

    fs::write(
        &conf,
        format!("{}\n? {}\n", f.data.display(), www.display()),
    )
    .unwrap();
    let v = f.pull_ok(&["client1"]);
    assert_eq!(host_report(&v, "client1")["outcome"], "ok", "{v}");
    assert_eq!(f.snapshots_of("client1")[1]["status"], "complete");
}

/// Files whose metadata changed but whose content is the parent's (touched, copied back, or
/// the first pull after `import rsnapshot`, where every inode differs) travel as chunk ids
/// only: the server asks for no inline bytes when the parent holds a file of the same size
/// at the same path.
#[test]
fn touched_files_travel_as_chunk_ids_only() {
    let f = fleet("");
    let small = f.data.join("small-files");
    fs::create_dir(&small).unwrap();
    for i in 0..200u64 {
        fs::write(
            small.join(format!("f{i}")),
            xstore_tests::seeded_bytes(1000 + i, 50_000),
        )
        .unwrap();
    }
    f.pull_ok(&["client1"]);
    let first = f.snapshots_of("client1")[0]["stats"]["wire_bytes"]
        .as_u64()
        .unwrap();
    assert!(first > 10_000_000, "{first}");
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    for i in 0..200u64 {
        let file = fs::File::options()
            .write(true)
            .open(small.join(format!("f{i}")))
            .unwrap();
        file.set_modified(later).unwrap();
    }
    f.pull_ok(&["client1"]);
    let stats = &f.snapshots_of("client1")[1]["stats"];
    assert_eq!(stats["files_read"], 200, "{stats}");
    let touched = stats["wire_bytes"].as_u64().unwrap();
    assert!(
        touched < 200 * 1024,
        "{touched} bytes on the wire for 200 touched files"
    );
    f.restore_and_compare("client1@latest");
}

/// Files edited in place travel as deltas against the host's previous version (#44): a
/// 64-byte overwrite at the head of 200 small files, 2 KiB appended to 50 logs and a 100-byte
/// insertion into a large file cost a small fraction of the changed chunks, and every byte
/// restores exactly.
#[test]
fn edited_files_travel_as_deltas_against_the_previous_version() {
    let f = fleet("");
    let small = f.data.join("edited");
    fs::create_dir(&small).unwrap();
    for i in 0..200u64 {
        fs::write(
            small.join(format!("f{i}")),
            xstore_tests::seeded_bytes(3000 + i, 50_000),
        )
        .unwrap();
    }
    let logs = f.data.join("log");
    fs::create_dir(&logs).unwrap();
    for i in 0..50u64 {
        fs::write(
            logs.join(format!("l{i}")),
            xstore_tests::seeded_bytes(5000 + i, 200_000),
        )
        .unwrap();
    }
    let large = f.data.join("large.bin");
    fs::write(&large, xstore_tests::seeded_bytes(77, 6_000_000)).unwrap();
    f.pull_ok(&["client1"]);
    for i in 0..50u64 {
        let mut log = fs::File::options()
            .append(true)
            .open(logs.join(format!("l{i}")))
            .unwrap();
        std::io::Write::write_all(&mut log, &xstore_tests::seeded_bytes(6000 + i, 2048)).unwrap();
    }
    for i in 0..200u64 {
        let path = small.join(format!("f{i}"));
        let mut bytes = fs::read(&path).unwrap();
        bytes[..64].copy_from_slice(&[b'e'; 64]);
        fs::write(&path, bytes).unwrap();
    }
    let mut bytes = fs::read(&large).unwrap();
    bytes.splice(3_000_000..3_000_000, [b'i'; 100]);
    fs::write(&large, &bytes).unwrap();
    f.pull_ok(&["client1"]);
    let stats = &f.snapshots_of("client1")[1]["stats"];
    assert_eq!(stats["files_read"], 251, "{stats}");
    // Whole chunks: 10 MB of incompressible small files, 10 MB of logs (their size changed:
    // before deltas they came inline, whole) and at least one of the large file's chunks
    // (256 KiB or more). As deltas: per file a sub-chunk or two of literal (and what was
    // appended) and its base's hashes.
    let wire = stats["wire_bytes"].as_u64().unwrap();
    assert!(
        wire < 1_500_000,
        "{wire} bytes on the wire for 251 edited files"
    );
    f.restore_and_compare("client1@latest");
    ok(&f.repo, &["check", "--read-data"]);
}

/// Deltas are taken only against the host's own previous version: a host's first pull,
/// compared with another host of its account, sends an edited file whole, while the host
/// that holds the previous version sends the same edit as a delta.
#[test]
fn another_hosts_files_are_never_delta_bases() {
    let f = fleet("[[account.host]]\nname = \"clone1\"\naddress = \"127.0.0.1\"\n");
    let files = f.data.join("files");
    fs::create_dir(&files).unwrap();
    for i in 0..100u64 {
        fs::write(
            files.join(format!("f{i}")),
            xstore_tests::seeded_bytes(7000 + i, 50_000),
        )
        .unwrap();
    }
    f.pull_ok(&["client1"]);
    for i in 0..100u64 {
        let path = files.join(format!("f{i}"));
        let mut bytes = fs::read(&path).unwrap();
        bytes[..64].copy_from_slice(&[b'e'; 64]);
        fs::write(&path, bytes).unwrap();
    }
    let wire = |host: &str| {
        let s = f.snapshots_of(host);
        s.last().unwrap()["stats"]["wire_bytes"].as_u64().unwrap()
    };
    f.pull_ok(&["clone1"]);
    let clone = wire("clone1");
    assert!(
        clone > 100 * 50_000 * 9 / 10,
        "the clone's first pull sent {clone} bytes for 5 MB of edited files"
    );
    f.pull_ok(&["client1"]);
    let own = wire("client1");
    assert!(own < 500_000, "the host's own pull sent {own} bytes");
    f.restore_and_compare("clone1@latest");
    f.restore_and_compare("client1@latest");
}

/// A host of the account pulled for the first time with the same files as another host of
/// it (a clone) sends chunk ids, not bytes, for what the account holds, and restores
/// exactly; a host of another account with the same files sends everything.
#[test]
fn a_clone_of_another_host_of_the_account_sends_chunk_ids_only() {
    let f = fleet(
        "[[account.host]]\nname = \"clone1\"\naddress = \"127.0.0.1\"\n\n\
         [[account]]\nname = \"other\"\npackage = \"small\"\n\n\
         [[account.host]]\nname = \"stranger\"\naddress = \"127.0.0.1\"\n",
    );
    let files = f.data.join("files");
    fs::create_dir(&files).unwrap();
    for i in 0..200u64 {
        fs::write(
            files.join(format!("f{i}")),
            xstore_tests::seeded_bytes(2000 + i, 50_000),
        )
        .unwrap();
    }
    let wire = |host: &str| {
        let s = &f.snapshots_of(host)[0];
        (s["stats"]["wire_bytes"].as_u64().unwrap(), s.clone())
    };
    f.pull_ok(&["client1"]);
    let (original, _) = wire("client1");
    assert!(original > 10_000_000, "{original}");
    f.pull_ok(&["clone1"]);
    let (clone, snapshot) = wire("clone1");
    assert!(
        clone < original / 10,
        "the clone's first pull sent {clone} bytes (the original {original})"
    );
    // Read, not taken as unchanged from the other host, and its own first snapshot.
    assert_eq!(snapshot["parent"], serde_json::Value::Null, "{snapshot}");
    assert!(
        snapshot["stats"]["files_read"].as_u64().unwrap() >= 200,
        "{snapshot}"
    );
    f.restore_and_compare("clone1@latest");
    f.pull_ok(&["stranger"]);
    let (stranger, _) = wire("stranger");
    eprintln!("first pulls on the wire: original {original} B, its clone {clone} B, another account's host {stranger} B");
    assert!(
        stranger > original * 9 / 10,
        "another account's host sent {stranger} bytes (the original {original})"
    );
    f.restore_and_compare("stranger@latest");
}

/// The first night of an account whose hosts hold the same files (#39 item 8): pulled three
/// at a time, they share what they fetch. Each data chunk is stored once (the data stored
/// equals `--jobs 1`'s, where the later hosts compare with the first one's snapshot), no
/// chunk of a large file is asked for twice, the refcounts check out, gc keeps everything
/// referenced, and every host restores exactly.
#[test]
fn concurrent_first_pulls_of_an_account_store_each_chunk_once() {
    let f = fleet(
        "[[account.host]]\nname = \"clone1\"\naddress = \"127.0.0.1\"\n\n\
         [[account.host]]\nname = \"clone2\"\naddress = \"127.0.0.1\"\n",
    );
    let large = f.data.join("large");
    fs::create_dir(&large).unwrap();
    let mut large_bytes = 0u64;
    for i in 0..8u64 {
        let bytes = xstore_tests::seeded_bytes(3000 + i, 2_500_000 + i as usize * 100_000);
        large_bytes += bytes.len() as u64;
        fs::write(large.join(format!("f{i}")), bytes).unwrap();
    }
    let one_at_a_time = f.repo.clone();
    let together = f.root.join("repo-together");
    ok(&together, &["init"]);
    let run = |repo: &Path, jobs: &str| {
        let out = common::pull_json(repo, &f.inventory, &["--all", "--jobs", jobs]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v = common::last_json(&out.stdout);
        assert_eq!(v["ok"], 3, "{v}");
        let stats = json(repo, &["stats"]);
        let data = stats["by_kind"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == "data")
            .unwrap()
            .clone();
        let (read, wire): (Vec<u64>, Vec<u64>) = ["client1", "clone1", "clone2"]
            .iter()
            .map(|h| {
                let s = &json(repo, &["snapshots", "--host", h])[0];
                (
                    s["stats"]["bytes_read"].as_u64().unwrap(),
                    s["stats"]["wire_bytes"].as_u64().unwrap(),
                )
            })
            .unzip();
        (stats, data, read, wire)
    };
    let (stats1, data1, read1, wire1) = run(&one_at_a_time, "1");
    let (stats3, data3, read3, wire3) = run(&together, "3");
    eprintln!(
        "--jobs 1: stored {} B (data {} B), read {read1:?}, wire {wire1:?}; \
         --jobs 3: stored {} B (data {} B), read {read3:?}, wire {wire3:?}",
        stats1["stored_bytes"],
        data1["stored_bytes"],
        stats3["stored_bytes"],
        data3["stored_bytes"]
    );
    // Every blob once: the same file data as `--jobs 1`, and no second copy of anything (a
    // copy that loses to another is dead bytes). Trees are compared by that alone: the
    // synthetic trees above the backup path hold the temporary directory's mtime, which moves
    // as other tests run, so a run may hold one more or fewer of them.
    assert_eq!(data3, data1, "{stats3}\n{stats1}");
    assert_eq!(stats3["dead_bytes"], 0, "{stats3}");
    assert_eq!(stats3["unreferenced_blobs"], 0, "{stats3}");
    // Large files' chunks are fetched by request: each asked for once among the three.
    // Small files come with their chunk list from the first host that announced them; the
    // others ask for ids (in a race, a file's bytes may travel twice, never three times).
    let (w1, w3): (u64, u64) = (wire1.iter().sum(), wire3.iter().sum());
    assert!(
        w3 < w1 * 2,
        "on the wire: {wire3:?} with --jobs 3, {wire1:?} with --jobs 1"
    );
    let total3: u64 = read3.iter().sum();
    assert!(
        total3 < read1[0] + large_bytes / 10,
        "the three hosts read {read3:?} bytes; alone the first read {}",
        read1[0]
    );
    ok(&together, &["check"]);
    ok(&together, &["gc", "--grace", "0s"]);
    ok(&together, &["check"]);
    assert_eq!(json(&together, &["stats"])["blobs"], stats3["blobs"]);
    for host in ["client1", "clone1", "clone2"] {
        let target = f.root.join(format!("restore-together-{host}"));
        ok(
            &together,
            &[
                "restore",
                "--trusted-specials",
                &format!("{host}@latest"),
                target.to_str().unwrap(),
            ],
        );
        assert_same_tree(&f.data, &restored_path(&target, &f.data), true);
        fs::remove_dir_all(&target).unwrap();
    }
}
