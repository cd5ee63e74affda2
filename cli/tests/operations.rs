//! Operations: the freshness and usage plugins at fixed clocks, `du`, and the metrics text
//! parsed by a Prometheus parser. Everything also while a writer holds the repository.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ok, stderr, xstore};
use xstore_tests::seeded_bytes;

const HOUR: i64 = 3600;

struct Fleet {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    inventory: PathBuf,
    /// End of the newest snapshot or pull record, ns.
    newest_end_ns: i64,
}

impl Fleet {
    fn run(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(&["--inventory", self.inventory.to_str().unwrap()]);
        xstore(&self.repo, &a)
    }
    /// `--now` this many seconds after the newest snapshot ended (whole seconds).
    fn now_after(&self, secs: i64) -> (String, i64) {
        let now_s = self.newest_end_ns.div_euclid(1_000_000_000) + 1 + secs;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now_s as u64);
        (
            humantime::format_rfc3339_seconds(t).to_string(),
            now_s * 1_000_000_000,
        )
    }
    fn end_ns(&self, host: &str) -> i64 {
        let v = common::json(&self.repo, &["snapshots", "--host", host]);
        v.as_array().unwrap().last().unwrap()["end_ns"]
            .as_i64()
            .unwrap()
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Accounts `acme` (1 MiB; hosts fresh, stale, gone, never, flaky) and `globex` (1 GiB; big).
/// fresh, stale, gone, flaky and big are backed up now; flaky's pull then fails (closed port).
fn fleet() -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let repo = root.join("repo");
    ok(&repo, &["init"]);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let inventory = root.join("hosts.toml");
    std::fs::write(
        &inventory,
        format!(
            r#"
[[account]]
name = "acme"
allocation = "1 MiB"
[[account.host]]
name = "fresh"
warning_age = "6h"
critical_age = "12h"
[[account.host]]
name = "stale"
[[account.host]]
name = "gone"
warning_age = "1h"
critical_age = "2h"
[[account.host]]
name = "never"
[[account.host]]
name = "flaky"
address = "127.0.0.1"
port = {closed_port}
warning_age = "6h"
critical_age = "12h"

[[account]]
name = "globex"
allocation = "1 GiB"
[[account.host]]
name = "big"
"#
        ),
    )
    .unwrap();
    for (i, host) in ["fresh", "stale", "gone", "flaky", "big"]
        .iter()
        .enumerate()
    {
        let dir = root.join(format!("data-{host}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("file"), seeded_bytes(i as u64, 300_000)).unwrap();
        ok(
            &repo,
            &["backup", "-q", "--host", host, dir.to_str().unwrap()],
        );
    }
    let mut f = Fleet {
        _tmp: tmp,
        repo,
        inventory,
        newest_end_ns: 0,
    };
    let out = f.run(&["pull", "flaky"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The failed pull is the newest event: on a loaded machine its record can end seconds
    // after big's snapshot, and "--now" must be 5 h after both for the ages to read 5h00m.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.repo.join("pulls/flaky.json")).unwrap()).unwrap();
    f.newest_end_ns = f.end_ns("big").max(record["finished_ns"].as_i64().unwrap());
    f
}

#[test]
fn freshness_states_at_a_fixed_clock() {
    let f = fleet();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.repo.join("pulls/flaky.json")).unwrap()).unwrap();
    assert_eq!(record["outcome"], "failed", "{record}");
    assert!(
        record["error"].as_str().unwrap().contains("flaky"),
        "{record}"
    );

    let (now, now_ns) = f.now_after(5 * HOUR);
    let out = f.run(&["check-freshness", "--now", &now]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}{}", stderr(&out));
    let mut lines = t.lines();
    let status = lines.next().unwrap();
    assert!(
        status.starts_with(
            "XSTORE FRESHNESS CRITICAL - 6 hosts (2 critical, 3 warning), 1 never backed up, oldest newest-backup 5h00m ("
        ),
        "{status}"
    );
    let age = |host: &str| (now_ns - f.end_ns(host)) / 1_000_000_000;
    for (host, warn, crit) in [
        ("fresh", 6, 12),
        ("stale", 4, 8),
        ("gone", 1, 2),
        ("flaky", 6, 12),
    ] {
        let perf = format!(
            "'{host}_age'={}s;{};{};0",
            age(host),
            warn * HOUR,
            crit * HOUR
        );
        assert!(status.contains(&perf), "{perf} in {status}");
    }
    assert!(status.contains("'never_age'=U;14400;28800;0"), "{status}");
    let details: Vec<&str> = lines.collect();
    assert_eq!(details.len(), 5, "{t}");
    assert!(details[0].starts_with("WARNING: stale: newest complete backup 5h00m ago ("));
    assert!(details[1].starts_with("CRITICAL: gone: newest complete backup 5h00m ago ("));
    assert_eq!(details[2], "CRITICAL: never: never backed up completely");
    assert!(
        details[3].starts_with("WARNING: flaky: last pull failed 5h00m ago: "),
        "{}",
        details[3]
    );
    assert!(details[4].starts_with("WARNING: big: newest complete backup 5h00m ago ("));

    // One host, OK.
    let out = f.run(&["check-freshness", "--host", "fresh", "--now", &now]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        text(&out),
        format!(
            "XSTORE FRESHNESS OK - 1 host, oldest newest-backup 5h00m (fresh) | 'fresh_age'={}s;21600;43200;0\n",
            age("fresh")
        )
    );
    // Thresholds from the command line, for hosts without their own.
    let out = f.run(&[
        "check-freshness",
        "--host",
        "stale",
        "--warning",
        "6h",
        "--critical",
        "7h",
        "--now",
        &now,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = f.run(&[
        "check-freshness",
        "--account",
        "globex",
        "--warning",
        "1h",
        "--critical",
        "5h",
        "--now",
        &now,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("CRITICAL: big: newest complete backup 5h00m ago"));

    // JSON: the same decisions.
    let out = f.run(&["--json", "check-freshness", "--now", &now]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = |h: &str| {
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["host"] == h)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state("fresh"), "OK");
    assert_eq!(state("stale"), "WARNING");
    assert_eq!(state("gone"), "CRITICAL");
    assert_eq!(state("never"), "CRITICAL");
    assert_eq!(state("flaky"), "WARNING");
    assert_eq!(state("big"), "WARNING");
    assert_eq!(v["state"], "CRITICAL");

    // Before any threshold: everything but `never` and the failed pull is OK.
    let (early, _) = f.now_after(60);
    let out = f.run(&["check-freshness", "--now", &early]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out).lines().count(), 3, "{}", text(&out));
}

#[test]
fn freshness_unknowns() {
    let f = fleet();
    let cases: [(&[&str], &str); 4] = [
        (
            &["check-freshness", "--host", "ghost"],
            "UNKNOWN: ghost: unknown host",
        ),
        (
            &["check-freshness", "--account", "nobody"],
            "account nobody is not in the inventory",
        ),
        (
            &["check-freshness", "--warning", "9h", "--critical", "8h"],
            "--warning 9h is longer",
        ),
        (&["check-freshness", "--warning", "soon"], "--warning"),
    ];
    for (args, want) in cases {
        let out = f.run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(
            text(&out).starts_with("XSTORE FRESHNESS UNKNOWN - "),
            "{}",
            text(&out)
        );
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
    }
    let missing = xstore(
        Path::new("/nonexistent/repo"),
        &["check-freshness", "--host", "web1"],
    );
    assert_eq!(missing.status.code(), Some(3));
    assert!(
        text(&missing).contains("not an xstore repository"),
        "{}",
        text(&missing)
    );
    let bad_flag = xstore(&f.repo, &["check-freshness", "--bogus"]);
    assert_eq!(bad_flag.status.code(), Some(3), "{}", text(&bad_flag));
    assert!(text(&bad_flag).starts_with("XSTORE FRESHNESS UNKNOWN - "));
}

#[test]
fn usage_plugin_du_and_metrics() {
    let f = fleet();
    let du = {
        let out = f.run(&["--json", "du"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let account = |name: &str| {
        du["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["account"] == name)
            .unwrap()
            .clone()
    };
    let host_usage = |name: &str| {
        du["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == name)
            .unwrap()["usage"]
            .clone()
    };
    let acme = account("acme");
    let used = acme["usage"]["referenced_bytes"].as_u64().unwrap();
    // Four hosts of distinct random data: nothing shared, everything exclusive.
    let per_host: u64 = ["fresh", "stale", "gone", "flaky"]
        .iter()
        .map(|h| host_usage(h)["referenced_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(used, per_host);
    assert_eq!(acme["usage"]["exclusive_bytes"].as_u64(), Some(used));
    assert_eq!(acme["usage"]["shared_bytes"].as_u64(), Some(0));
    assert!(used > 1 << 20 && used < 3 << 19, "1–1.5 MiB: {used}");
    assert_eq!(acme["over_allocation"], true);
    assert_eq!(host_usage("never")["referenced_bytes"], 0);

    let out = f.run(&["check-usage"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.starts_with("XSTORE USAGE WARNING - 2 accounts, 1 over allocation, highest acme "),
        "{t}"
    );
    assert!(
        t.contains(&format!("'acme_usage'={used}B;1048576;1572864;0")),
        "{t}"
    );
    assert!(
        t.lines().nth(1).unwrap().starts_with("WARNING: acme: "),
        "{t}"
    );
    let out = f.run(&["check-usage", "--critical-factor", "1.01"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = f.run(&["check-usage", "--account", "globex"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = f.run(&["check-usage", "--account", "nobody"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // Human table, and exact numbers with --bytes.
    let human = text(&f.run(&["du"]));
    assert!(human.contains("OVER"), "{human}");
    let exact = text(&f.run(&["du", "--bytes"]));
    assert!(exact.contains(&used.to_string()), "{exact}");
    let one = text(&f.run(&["du", "--host", "fresh"]));
    assert_eq!(one.lines().count(), 5, "{one}");

    // Metrics: a real parser reads every sample line.
    let metrics = text(&f.run(&["metrics"]));
    let samples = parse_metrics(&metrics);
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{metrics}"))
    };
    assert_eq!(
        get(
            "xstore_host_newest_backup_age_seconds",
            &[("host", "never")]
        ),
        f64::INFINITY
    );
    assert!(
        get(
            "xstore_host_newest_backup_age_seconds",
            &[("host", "fresh")]
        ) < 3600.0
    );
    assert_eq!(
        get(
            "xstore_host_newest_backup_timestamp_seconds",
            &[("host", "fresh"), ("account", "acme")]
        ),
        (f.end_ns("fresh") as f64 / 1e9)
    );
    assert_eq!(
        get("xstore_host_last_pull_success", &[("host", "flaky")]),
        0.0
    );
    assert_eq!(
        get(
            "xstore_host_last_pull_outcome",
            &[("host", "flaky"), ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "xstore_host_tier_snapshots",
            &[("host", "big"), ("tier", "hourly")]
        ),
        1.0
    );
    assert_eq!(
        get("xstore_account_allocation_bytes", &[("account", "acme")]),
        1048576.0
    );
    assert_eq!(
        get("xstore_account_referenced_bytes", &[("account", "acme")]),
        used as f64
    );
    assert_eq!(get("xstore_repository_snapshots", &[]), 5.0);

    // --output writes the file atomically, leaving nothing else behind.
    let dir = f.repo.parent().unwrap().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("xstore.prom");
    ok(
        &f.repo,
        &[
            "metrics",
            "--inventory",
            f.inventory.to_str().unwrap(),
            "--output",
            file.to_str().unwrap(),
        ],
    );
    let written = parse_metrics(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(written.len(), samples.len());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

/// Parses metrics text; every non-comment line must come back as a sample.
fn parse_metrics(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert_eq!(scrape.samples.len(), sample_lines, "{text}");
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(l.ends_with(" gauge"), "{l}");
    }
    scrape.samples
}

#[test]
fn checks_work_while_a_writer_holds_the_repository() {
    let f = fleet();
    let writer = xstore::Repository::open(&f.repo).unwrap();
    let dir = f.repo.parent().unwrap().join("data-fresh");
    std::fs::write(dir.join("more"), seeded_bytes(42, 100_000)).unwrap();
    writer
        .backup(
            &xstore::LocalSource,
            &xstore::BackupOptions {
                ..xstore::BackupOptions::new(xstore_tests::host_name("fresh"), vec![dir])
            },
        )
        .unwrap();
    let (now, _) = f.now_after(5 * HOUR);
    let out = f.run(&["check-freshness", "--host", "fresh", "--now", &now]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), stderr(&out));
    // check-usage: WARNING (acme is over its allocation); du and metrics: success. An error
    // (a lock, an index that cannot be opened) would be exit 1 for du and metrics, 3 for
    // check-usage.
    for (args, want) in [(&["check-usage"][..], 1), (&["du"], 0), (&["metrics"], 0)] {
        let out = f.run(args);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{args:?}: {}{}",
            text(&out),
            stderr(&out)
        );
        assert!(!text(&out).is_empty(), "{args:?} printed nothing");
    }
    assert!(text(&f.run(&["check-usage"])).starts_with("XSTORE USAGE WARNING - "));
    drop(writer);
}

/// `xstore … | head -1`: when standard output's reader has gone, every printing command ends
/// quietly with 141 (128 + SIGPIPE, what a shell reports for a command SIGPIPE ended) and
/// changes nothing. The pipe's read end is closed before the command starts, so its first
/// write fails whatever the pipe's buffer.
#[test]
fn a_closed_pipe_ends_printing_commands_quietly() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    xstore_tests::make_fixture(&src, 5);
    ok(&repo, &["init"]);
    ok(&repo, &["tiers", "--set", "hourly=3,daily=2"]);
    let s = src.to_str().unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join("churn.bin"), seeded_bytes(i, 100_000)).unwrap();
        ok(&repo, &["backup", "-q", "--host", "web1", s]);
    }
    let ids = common::snapshot_ids(&repo);
    let file = src.join("churn.bin");
    let before = ok(&repo, &["snapshots"]);
    let commands: Vec<Vec<&str>> = vec![
        vec!["snapshots"],
        vec!["--json", "snapshots"],
        vec!["find", "churn.bin"],
        vec!["du", "--host", "web1"],
        vec!["diff", &ids[0], &ids[2]],
        vec!["rotate", "daily", "--all", "--dry-run"],
        vec!["ls", "web1@latest", s],
        vec!["cat", "web1@latest", file.to_str().unwrap()],
        vec!["dump", "web1@latest", s],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = common::xstore_command(&repo, &[], &args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            (out.status.code(), stderr(&out)),
            (Some(141), String::new()),
            "{args:?}"
        );
    }
    assert_eq!(ok(&repo, &["snapshots"]), before);
}

/// The nagios user cannot read `/etc/xstore/hosts.toml` (the directory is 0700): the checks
/// that take the default inventory say UNKNOWN naming it, instead of judging hosts without
/// their thresholds. Run as uid 65534 in a mount namespace whose /etc is the test's own
/// (bind-mounted; the system's /etc is never touched). Needs root, unshare and setpriv.
#[test]
fn an_unreadable_default_inventory_makes_every_check_unknown() {
    use std::os::unix::fs::PermissionsExt;
    let tools = ["unshare", "setpriv"]
        .iter()
        .all(|t| std::process::Command::new(t).arg("--help").output().is_ok());
    if !rustix::process::geteuid().is_root() || !tools {
        eprintln!("skipped: needs root, unshare and setpriv");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (repo, src) = (root.join("repo"), root.join("src"));
    xstore_tests::make_fixture(&src, 3);
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(status.success());
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("xstore")).unwrap();
    if std::path::Path::new("/etc/ld.so.cache").exists() {
        std::fs::copy("/etc/ld.so.cache", etc.join("ld.so.cache")).unwrap();
    }
    std::fs::write(
        etc.join("xstore/hosts.toml"),
        "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\n\n\
         [[account.host]]\nname = \"web1\"\n\n[[account.host]]\nname = \"never\"\n",
    )
    .unwrap();
    std::fs::set_permissions(etc.join("xstore"), std::fs::Permissions::from_mode(0o700)).unwrap();
    for check in ["check-freshness", "check-usage"] {
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc && exec setpriv --reuid=65534 --regid=65534 \
                 --clear-groups \"$2\" --repo \"$3\" \"$4\"",
            )
            .arg("sh")
            .arg(&etc)
            .arg(env!("CARGO_BIN_EXE_xstore"))
            .arg(&repo)
            .arg(check)
            .env_remove("XSTORE_INVENTORY")
            .env_remove("XSTORE_REPO")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{check}: {text}{}",
            stderr(&out)
        );
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.contains(" UNKNOWN - ")
                && first.contains("/etc/xstore/hosts.toml")
                && first.contains("Permission denied"),
            "{check}: {text}"
        );
    }
}

/// Every directory and file below `root`: (path, mode, gid).
fn modes_below(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        if m.is_dir() || m.is_file() {
            out.push((p, m.mode() & 0o7777, m.gid()));
        }
    }
    out
}

fn as_user(uid: &str, gid: &str, repo: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid", uid, "--regid", gid, "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_xstore"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

/// A new repository is private (0700 directories, 0600 files, also after a backup); with
/// `init --group` its group reads it and no one else; an old world-readable repository is
/// tightened by its next write and by `fix-permissions`.
#[test]
fn repositories_are_private_or_readable_by_their_group_only() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    // The test's temporary directory must be passable for the unprivileged users below.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = work.path().join("src");
    xstore_tests::make_fixture(&src, 81);
    let private = work.path().join("private");
    ok(&private, &["init"]);
    ok(
        &private,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    let all = modes_below(&private);
    assert!(all.len() > 10, "{all:?}");
    for (p, mode, _) in &all {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{}", p.display());
    }
    let denied = as_user("65534", "65534", &private, &["snapshots"]);
    assert!(!denied.status.success(), "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("ermission denied"),
        "{denied:?}"
    );

    // A group (adm, gid 4 on Debian) reads; others do not.
    let shared = work.path().join("shared");
    ok(&shared, &["init", "--group", "adm"]);
    ok(
        &shared,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    for (p, mode, gid) in modes_below(&shared) {
        assert_eq!(gid, 4, "{}", p.display());
        if p.is_dir() {
            assert_eq!(mode, 0o2750, "{}", p.display());
        } else {
            assert_eq!(mode & 0o7027, 0, "{}: {mode:o}", p.display());
            assert_eq!(mode & 0o040, 0o040, "{}: {mode:o}", p.display());
        }
    }
    // The repository is encrypted: a reader needs a key too, here a key file of the group.
    let group_key = work.path().join("adm.key");
    ok(
        &shared,
        &["key", "add", "--new-key-file", group_key.to_str().unwrap()],
    );
    std::os::unix::fs::chown(&group_key, None, Some(4)).unwrap();
    std::fs::set_permissions(&group_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let member = as_user(
        "65534",
        "4",
        &shared,
        &["--key-file", group_key.to_str().unwrap(), "snapshots"],
    );
    assert!(member.status.success(), "{member:?}");
    assert!(String::from_utf8_lossy(&member.stdout).contains("web1"));
    let outsider = as_user("65534", "65534", &shared, &["snapshots"]);
    assert!(!outsider.status.success(), "{outsider:?}");
    let bad = xstore(
        &work.path().join("nogroup"),
        &["init", "--group", "no-such-group-x"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("group no-such-group-x does not exist"),
        "{}",
        stderr(&bad)
    );
    assert!(!work.path().join("nogroup").exists());

    // A repository from before: world-readable. The next write closes the directory;
    // fix-permissions every mode below it.
    for (p, _, _) in modes_below(&private) {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    ok(
        &private,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    assert_eq!(modes_below(&private)[0].1, 0o700);
    let fixed = common::json(&private, &["fix-permissions"]);
    assert!(fixed["changed"].as_u64().unwrap() > 10, "{fixed}");
    for (p, mode, _) in modes_below(&private) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}", p.display());
    }
    assert!(!as_user("65534", "4", &private, &["snapshots"])
        .status
        .success());
    // An existing repository gets a group, and it reads from then on.
    ok(&private, &["fix-permissions", "--group", "adm"]);
    for (p, mode, gid) in modes_below(&private) {
        assert_eq!(gid, 4, "{}", p.display());
        let want = if p.is_dir() { 0o2750 } else { 0o640 };
        assert_eq!(mode, want, "{}", p.display());
    }
    ok(
        &private,
        &["key", "add", "--new-key-file", group_key.to_str().unwrap()],
    );
    let member = as_user(
        "65534",
        "4",
        &private,
        &["--key-file", group_key.to_str().unwrap(), "snapshots"],
    );
    assert!(member.status.success(), "{member:?}");
}
