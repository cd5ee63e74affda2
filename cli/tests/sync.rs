//! `xstore sync`: a replica copies snapshots from its source, exactly, with only what is
//! missing travelling, and keeps them whatever the source does afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{json, ok, stderr, xstore, xstore_command};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `xstore --json sync --from SOURCE ARGS…` on `repo`, which must succeed.
fn sync_json(repo: &Path, source: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json", "sync", "--from", s(source)];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(repo, &a)).unwrap()
}

/// Snapshot records of a repository (`snapshots --json`), by id.
fn records(repo: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&ok(repo, &["--json", "snapshots"])).unwrap();
    v.as_array().unwrap().clone()
}

fn ids(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = records(repo)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Restores snapshot `id` of both repositories and asserts the trees are equal, metadata
/// included.
fn assert_same_snapshot(a: &Path, b: &Path, id: &str, work: &Path) {
    let (ta, tb) = (work.join(format!("a-{id}")), work.join(format!("b-{id}")));
    ok(a, &["restore", id, s(&ta)]);
    ok(b, &["restore", id, s(&tb)]);
    // The targets themselves are this test's directories: what is inside them is compared.
    let mut n = 0;
    for e in fs::read_dir(&ta).unwrap() {
        let name = e.unwrap().file_name();
        xstore_tests::assert_same_tree(&ta.join(&name), &tb.join(&name), true);
        n += 1;
    }
    assert_eq!(n, fs::read_dir(&tb).unwrap().count());
    fs::remove_dir_all(&ta).unwrap();
    fs::remove_dir_all(&tb).unwrap();
}

/// Data blobs stored in bundles, from `stats --json` (FORMAT.md §Bundles).
fn bundled_blobs(stats: &serde_json::Value) -> u64 {
    let rows = stats["by_kind"].as_array().unwrap();
    let row = rows.iter().find(|k| k["kind"] == "bundle").unwrap();
    row["blobs"].as_u64().unwrap()
}

/// Every field of a record that a copy keeps, with the root and revision left out (a copy
/// into a repository with other keys has another root id).
fn kept_fields(r: &serde_json::Value) -> serde_json::Value {
    let mut r = r.clone();
    let m = r.as_object_mut().unwrap();
    for k in ["root", "revision", "positions"] {
        m.remove(k);
    }
    r
}

fn by_id(repo: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    records(repo)
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect()
}

/// A source with two hosts and three snapshots, tiers rotated once; unencrypted.
fn plain_source(w: &Path) -> (PathBuf, PathBuf) {
    let (src, data) = (w.join("source"), w.join("data"));
    xstore_tests::make_fixture(&data, 1);
    ok(&src, &["init", "--no-encryption"]);
    ok(
        &src,
        &["tiers", "--set", "hourly=1,daily=7,weekly=4,monthly=6"],
    );
    ok(&src, &["backup", "-q", "--host", "web1", s(&data)]);
    ok(
        &src,
        &["backup", "-q", "--host", "db1", s(&data.join("sub"))],
    );
    // web1's first backup becomes daily.0.
    ok(&src, &["rotate", "daily", "--all"]);
    fs::write(data.join("small.txt"), b"changed\n").unwrap();
    ok(&src, &["backup", "-q", "--host", "web1", s(&data)]);
    (src, data)
}

#[test]
fn migration_into_an_encrypted_repository_keeps_every_snapshot_tier_pin_and_time() {
    let w = tempfile::tempdir().unwrap();
    let (src, _) = plain_source(w.path());
    let first = ids(&src)[0].clone();
    ok(&src, &["pin", &first]);
    let dst = w.path().join("replica");
    ok(&dst, &["init"]);
    let report = sync_json(&dst, &src, &[]);
    assert_eq!(report["snapshots"], 3, "{report}");
    let (theirs, ours) = (by_id(&src), by_id(&dst));
    assert_eq!(
        theirs.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>()
    );
    for (id, r) in &theirs {
        assert_eq!(kept_fields(r), kept_fields(&ours[id]), "snapshot {id}");
        assert_ne!(r["root"], ours[id]["root"], "ids are keyed in the replica");
        assert_same_snapshot(&src, &dst, id, w.path());
    }
    // Tier positions (what /<tier>.<n>/<host>/ shows) are the source's.
    let positions = |repo: &Path| ok(repo, &["snapshots"]);
    assert_eq!(positions(&src), positions(&dst));
    let check = ok(&dst, &["check", "--read-data"]);
    assert!(check.contains("no problems"), "{check}");
    // A second run copies nothing and reads nothing.
    let again = sync_json(&dst, &src, &[]);
    assert_eq!(again["snapshots"], 0, "{again}");
    assert_eq!(again["blobs_read"], 0, "{again}");
}

#[test]
fn reencryption_between_keys_moves_only_what_changed() {
    let w = tempfile::tempdir().unwrap();
    let (plain, data) = plain_source(w.path());
    let src = w.path().join("primary");
    ok(&src, &["init"]);
    sync_json(&src, &plain, &[]);
    let dst = w.path().join("replica");
    ok(&dst, &["init"]);
    let first = sync_json(&dst, &src, &[]);
    assert_eq!(first["snapshots"], 3);
    // An unchanged host backed up again: the new record, and nothing else, travels.
    ok(
        &src,
        &["backup", "-q", "--host", "db1", s(&data.join("sub"))],
    );
    let unchanged = sync_json(&dst, &src, &[]);
    assert_eq!(unchanged["snapshots"], 1, "{unchanged}");
    // Only the trees of the directories above the backup path that this test's own
    // directories changed (the root and /tmp): no file data.
    assert!(
        unchanged["blobs_read"].as_u64().unwrap() <= 2,
        "{unchanged}"
    );
    assert!(
        unchanged["bytes_read"].as_u64().unwrap() < 2048,
        "{unchanged}"
    );
    // One changed file: its chunk and the trees above it.
    fs::write(data.join("sub/deeper/new.txt"), b"a new file\n").unwrap();
    ok(&src, &["backup", "-q", "--host", "web1", s(&data)]);
    let changed = sync_json(&dst, &src, &[]);
    assert_eq!(changed["snapshots"], 1, "{changed}");
    let read = changed["blobs_read"].as_u64().unwrap();
    assert!((2..=12).contains(&read), "{changed}");
    for id in ids(&src) {
        assert_same_snapshot(&src, &dst, &id, w.path());
    }
    let check = ok(&dst, &["check", "--read-data"]);
    assert!(check.contains("no problems"), "{check}");
}

#[test]
fn what_the_source_forgets_and_collects_stays_restorable_here() {
    let w = tempfile::tempdir().unwrap();
    let (src, _) = plain_source(w.path());
    let dst = w.path().join("replica");
    ok(&dst, &["init", "--no-encryption"]);
    sync_json(&dst, &src, &[]);
    let all = ids(&src);
    let records = by_id(&src);
    let newest_web1 = records
        .values()
        .filter(|r| r["host"] == "web1")
        .max_by_key(|r| r["start_ns"].as_i64().unwrap())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in all.iter().filter(|id| **id != newest_web1) {
        ok(&src, &["forget", "--snapshot", id]);
    }
    ok(&src, &["gc", "--grace", "0s"]);
    assert_eq!(ids(&src), vec![newest_web1.clone()]);
    let again = sync_json(&dst, &src, &[]);
    assert_eq!(again["snapshots"], 0, "{again}");
    assert_eq!(ids(&dst), all);
    for id in &all {
        let target = w.path().join(format!("r-{id}"));
        ok(&dst, &["restore", id, s(&target)]);
    }
    let check = ok(&dst, &["check", "--read-data"]);
    assert!(check.contains("no problems"), "{check}");
    // Expired here by hand while the source still has it: not copied again.
    let still = newest_web1;
    ok(&dst, &["forget", "--snapshot", &still]);
    let report = sync_json(&dst, &src, &[]);
    assert_eq!(report["snapshots"], 0, "{report}");
    assert!(!ids(&dst).contains(&still));
    let plan = ok(&dst, &["sync", "--from", s(&src), "--dry-run"]);
    assert!(plan.contains("1 expired here before"), "{plan}");
}

#[test]
fn a_replica_schedule_keeps_more_than_the_source() {
    let w = tempfile::tempdir().unwrap();
    let (src, dst, data) = (
        w.path().join("src"),
        w.path().join("dst"),
        w.path().join("data"),
    );
    fs::create_dir_all(&data).unwrap();
    ok(&src, &["init", "--no-encryption"]);
    ok(&dst, &["init", "--no-encryption"]);
    ok(&src, &["tiers", "--set", "hourly=2"]);
    ok(&dst, &["tiers", "--set", "hourly=4"]);
    let mut made = Vec::new();
    for round in 0..6 {
        fs::write(data.join("f"), format!("round {round}\n")).unwrap();
        ok(&src, &["backup", "-q", "--host", "h", s(&data)]);
        made.push(ids(&src));
        sync_json(&dst, &src, &[]);
    }
    assert_eq!(ids(&src).len(), 2);
    let listing = ok(&dst, &["snapshots"]);
    assert_eq!(ids(&dst).len(), 4, "{listing}");
    for n in 0..4 {
        assert!(listing.contains(&format!("hourly.{n}")), "{listing}");
    }
    // The replica's hourly.3 is round 2's backup, long gone on the source.
    let target = w.path().join("oldest");
    ok(&dst, &["restore", "h@hourly.3", s(&target)]);
    let restored = xstore_tests::restored_path(&target, &data);
    assert_eq!(fs::read(restored.join("f")).unwrap(), b"round 2\n");
}

#[test]
fn own_schedule_enters_a_tier_and_a_tier_filter_selects() {
    let w = tempfile::tempdir().unwrap();
    let (src, _) = plain_source(w.path());
    let dst = w.path().join("replica");
    ok(&dst, &["init", "--no-encryption"]);
    // Only what the source holds as daily: web1's and db1's first backups.
    let report = sync_json(&dst, &src, &["--tier", "daily", "--enter", "weekly"]);
    assert_eq!(report["snapshots"], 2, "{report}");
    let listing = ok(&dst, &["snapshots"]);
    assert!(listing.contains("weekly.0"), "{listing}");
    assert!(!listing.contains("daily"), "{listing}");
    // By host.
    let dst2 = w.path().join("replica2");
    ok(&dst2, &["init", "--no-encryption"]);
    let report = sync_json(&dst2, &src, &["--host", "db1"]);
    assert_eq!(report["snapshots"], 1, "{report}");
    assert!(!ok(&dst2, &["snapshots"]).contains("web1"));
    // By account, from the inventory; an account it does not list is one error line.
    let inventory = w.path().join("hosts.toml");
    fs::write(
        &inventory,
        "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\n\n[[account.host]]\nname = \"web1\"\n\n\
         [[account]]\nname = \"globex\"\nallocation = \"1 GiB\"\n\n[[account.host]]\nname = \"db1\"\n",
    )
    .unwrap();
    let dst3 = w.path().join("replica3");
    ok(&dst3, &["init", "--no-encryption"]);
    let inv = s(&inventory);
    let report = sync_json(&dst3, &src, &["--account", "acme", "--inventory", inv]);
    assert_eq!(report["snapshots"], 2, "{report}");
    let listing = ok(&dst3, &["snapshots"]);
    assert!(
        listing.contains("web1") && !listing.contains("db1"),
        "{listing}"
    );
    let out = xstore(
        &dst3,
        &[
            "sync",
            "--from",
            s(&src),
            "--account",
            "initech",
            "--inventory",
            inv,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("account initech is not in the inventory"));
}

#[test]
fn refusals_are_one_line_and_change_nothing() {
    let w = tempfile::tempdir().unwrap();
    let (src, data) = plain_source(w.path());
    // The same repository.
    let out = xstore(&src, &["sync", "--from", s(&src)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is this repository"), "{err}");
    // A damaged blob in the source: the copy stops, nothing of that snapshot is visible.
    let dst = w.path().join("replica");
    ok(&dst, &["init", "--no-encryption"]);
    let newest = ids(&src)
        .into_iter()
        .find(|id| by_id(&src)[id]["host"] == "web1")
        .unwrap();
    let chunk = common::file_chunk(&src, &newest, &data.join("sub/log.txt"), 0);
    common::damage_blob(&src, &chunk);
    let out = xstore(&dst, &["sync", "--from", s(&src)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("source "), "{err}");
    assert!(ids(&dst).len() < 3, "{err}");
    let check = ok(&dst, &["check"]);
    assert!(check.contains("no problems"), "{check}");
    // A source that does not exist.
    let out = xstore(&dst, &["sync", "--from", s(&w.path().join("nowhere"))]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// Files of seeded random content, `n` of `size` bytes each.
fn bulk(dir: &Path, n: usize, size: usize, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 7));
        fs::create_dir_all(&sub).unwrap();
        fs::write(
            sub.join(format!("f{i}")),
            xstore::chunker::seeded_bytes(seed + i as u64, size),
        )
        .unwrap();
    }
}

#[test]
fn sync_killed_at_any_point_resumes_and_restores_exactly() {
    let w = tempfile::tempdir().unwrap();
    let (src, dst, data) = (
        w.path().join("src"),
        w.path().join("dst"),
        w.path().join("data"),
    );
    ok(&src, &["init"]);
    ok(&dst, &["init"]);
    bulk(&data, 48, 1 << 20, 1);
    ok(&src, &["backup", "-q", "--host", "a", s(&data)]);
    bulk(&data.join("more"), 24, 1 << 20, 100);
    ok(&src, &["backup", "-q", "--host", "a", s(&data)]);
    ok(
        &src,
        &["backup", "-q", "--host", "b", s(&data.join("more"))],
    );
    // Whatever a killed run left visible is whole.
    let assert_whole = || {
        for id in ids(&dst) {
            assert_same_snapshot(&src, &dst, &id, w.path());
        }
    };
    let sync = || {
        xstore_command(
            &dst,
            &[],
            &["--json", "sync", "--from", s(&src), "--checkpoint", "2MiB"],
        )
    };
    // Crashes right after a checkpoint's commit (the process aborts there), three times.
    for _ in 0..3 {
        let out = sync()
            .env("XSTORE_FAILPOINT", "sync-checkpoint")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", stderr(&out));
        assert_whole();
    }
    // kill -9 at times spread over a run, until one finishes.
    let mut kills = 0;
    let mut delay_ms = 5u64;
    let started = Instant::now();
    let final_report = loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never finished"
        );
        let mut child = sync()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            assert_whole();
            delay_ms += 15;
            continue;
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    };
    assert!(
        kills >= 1,
        "no kill landed: the sync ran too fast to be interrupted"
    );
    // What the crashed runs committed was used, not read again.
    let total: u64 = 48 + 24;
    assert!(
        final_report["blobs_read"].as_u64().unwrap() < total,
        "{final_report}"
    );
    assert_eq!(ids(&dst), ids(&src));
    for id in ids(&src) {
        assert_same_snapshot(&src, &dst, &id, w.path());
    }
    let check = ok(&dst, &["check", "--read-data"]);
    assert!(check.contains("no problems"), "{check}");
    eprintln!("3 crashes and {kills} kills; last run: {final_report}");
}

mod over_ssh {
    //! Sync from a primary over a real sshd, through the read-only forced command.
    use super::*;
    use std::io::Write;
    use xstore_tests::sshd::Sshd;

    /// An sshd whose only key runs `xstore serve --read-only REPO`.
    fn primary(dir: &Path, repo: &Path) -> Sshd {
        // sshd passes no environment: the key directory the tests use (scripts/setup.sh)
        // is named in the forced command.
        let keys = std::env::var("XSTORE_KEY_DIR")
            .map(|d| format!("XSTORE_KEY_DIR={d} "))
            .unwrap_or_default();
        let serve = format!(
            "command=\"{keys}{} serve --read-only {}\",restrict",
            env!("CARGO_BIN_EXE_xstore"),
            repo.display()
        );
        Sshd::start(dir, |key| format!("{serve} {key}\n"))
    }

    fn from(sshd: &Sshd) -> String {
        format!("ssh://root@127.0.0.1:{}", sshd.port)
    }

    fn ssh_args(sshd: &Sshd) -> Vec<String> {
        vec!["--ssh-config".into(), sshd.ssh_config.display().to_string()]
    }

    #[test]
    fn a_replica_syncs_through_the_forced_command_and_the_key_can_do_nothing_else() {
        if xstore_tests::sshd::sshd_binary().is_none() {
            eprintln!("skipped: no sshd");
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let (plain, data) = plain_source(w.path());
        // The primary is encrypted; the replica holds its key file (the default place).
        let src = w.path().join("primary");
        ok(&src, &["init"]);
        sync_json(&src, &plain, &[]);
        // Compacted, its small files sit in bundles: they travel as their bundle's record.
        ok(&src, &["compact", "-q", "--min-age", "0s"]);
        let stats = json(&src, &["stats"]);
        assert!(bundled_blobs(&stats) > 2, "{stats}");
        let sshd = primary(&w.path().join("sshd"), &src);
        let dst = w.path().join("replica");
        ok(&dst, &["init"]);
        let mut args = vec!["--json", "sync", "--from"];
        let target = from(&sshd);
        args.push(&target);
        let extra = ssh_args(&sshd);
        args.extend(extra.iter().map(String::as_str));
        let report: serde_json::Value = serde_json::from_str(&ok(&dst, &args)).unwrap();
        assert_eq!(report["snapshots"], 3, "{report}");
        for id in ids(&src) {
            assert_same_snapshot(&src, &dst, &id, w.path());
        }
        let check = ok(&dst, &["check", "--read-data"]);
        assert!(check.contains("no problems"), "{check}");
        // Incremental: one changed file.
        fs::write(data.join("small.txt"), b"changed again\n").unwrap();
        ok(&src, &["backup", "-q", "--host", "web1", s(&data)]);
        let report: serde_json::Value = serde_json::from_str(&ok(&dst, &args)).unwrap();
        assert_eq!(report["snapshots"], 1, "{report}");
        assert!(report["blobs_read"].as_u64().unwrap() <= 8, "{report}");
        assert_eq!(ids(&dst), ids(&src));

        // The key can do nothing but serve: every other command is refused, the primary
        // unchanged.
        let before = ids(&src);
        let packs_before = walk_files(&src);
        for command in [
            "xstore backup --host evil /etc".to_string(),
            format!("xstore forget --snapshot {}", before[0]),
            "xstore gc --grace 0s".to_string(),
            format!(
                "xstore serve --read-only {}",
                w.path().join("other").display()
            ),
            format!("sh -c 'echo x > {}/packs/planted'", src.display()),
            "rm -rf /".to_string(),
        ] {
            let out = sshd.ssh(&[], &command);
            assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(&out));
            let err = stderr(&out);
            assert_eq!(err.lines().count(), 1, "{command}: {err}");
            assert!(
                err.contains("refused: this key may only read"),
                "{command}: {err}"
            );
        }
        assert_eq!(ids(&src), before);
        assert_eq!(walk_files(&src), packs_before);

        // A forced command whose repository is not there: the replica says why in one line.
        let nowhere = primary(&w.path().join("sshd-nowhere"), &w.path().join("gone"));
        let target = from(&nowhere);
        let mut args = vec!["sync", "--from", target.as_str()];
        let extra = ssh_args(&nowhere);
        args.extend(extra.iter().map(String::as_str));
        let out = xstore(&dst, &args);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("the connection closed (ssh: xstore: error:"),
            "{err}"
        );

        // A request the protocol does not have (a write, in any spelling) ends the session.
        let mut child = std::process::Command::new("ssh")
            .args(["-F", s(&sshd.ssh_config), "-p", &sshd.port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "root@127.0.0.1",
                "xstore serve --read-only",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut stdin = child.stdin.take().unwrap();
            let mut frame = |body: &[u8]| {
                stdin.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
                stdin.write_all(body).unwrap();
            };
            frame(b"HXSTSYNC1");
            frame(b"Wpacks/planted\0bytes");
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("unknown request"), "{}", stderr(&out));
        assert_eq!(walk_files(&src), packs_before);
    }

    #[test]
    fn a_damaged_blob_at_the_primary_is_refused_on_arrival() {
        if xstore_tests::sshd::sshd_binary().is_none() {
            eprintln!("skipped: no sshd");
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let (src, data) = plain_source(w.path());
        let first_web1 = by_id(&src)
            .values()
            .filter(|r| r["host"] == "web1")
            .min_by_key(|r| r["start_ns"].as_i64().unwrap())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let chunk = common::file_chunk(&src, &first_web1, &data.join("sub/log.txt"), 0);
        common::damage_blob(&src, &chunk);
        let sshd = primary(&w.path().join("sshd"), &src);
        let dst = w.path().join("replica");
        ok(&dst, &["init", "--no-encryption"]);
        let target = from(&sshd);
        let mut args = vec!["sync", "--from", target.as_str()];
        let extra = ssh_args(&sshd);
        args.extend(extra.iter().map(String::as_str));
        let out = xstore(&dst, &args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("source ssh root@127.0.0.1"), "{err}");
        assert!(err.contains(&chunk.to_string()), "names the blob: {err}");
        assert!(ids(&dst).is_empty(), "nothing of the snapshot is visible");
        let check = ok(&dst, &["check"]);
        assert!(check.contains("no problems"), "{check}");
    }

    /// Every file under `dir` with its length, sorted.
    fn walk_files(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else if !e.path().starts_with(dir.join("index"))
                    && !e.path().starts_with(dir.join("locks"))
                {
                    out.push((e.path(), md.len()));
                }
            }
        }
        out.sort();
        out
    }
}

mod object_store {
    //! Sync into and out of repositories whose packs are in a real 3-node Garage cluster.
    use super::*;
    use common::{ok_with_env, xstore_with_env};
    use xstore_tests::garage::Garage;

    #[test]
    fn local_to_garage_and_garage_to_local_with_a_read_only_key() {
        let w = tempfile::tempdir().unwrap();
        let g = Garage::start(&w.path().join("garage"), 3);
        let rw = g.env();
        let endpoint = g.endpoint();
        let (plain, data) = plain_source(w.path());

        // local → Garage: the replica's packs are in the bucket.
        let replica = w.path().join("replica-s3");
        let url = format!("s3://{}/replica", g.bucket);
        ok_with_env(
            &replica,
            &rw,
            &["init", "--store", &url, "--endpoint", &endpoint],
        );
        let out = ok_with_env(&replica, &rw, &["--json", "sync", "--from", s(&plain)]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["snapshots"], 3, "{report}");
        for id in ids(&plain) {
            let (a, b) = (
                w.path().join(format!("a-{id}")),
                w.path().join(format!("b-{id}")),
            );
            ok(&plain, &["restore", &id, s(&a)]);
            ok_with_env(&replica, &rw, &["restore", &id, s(&b)]);
            let src_root = xstore_tests::restored_path(&a, &data);
            if src_root.exists() {
                xstore_tests::assert_same_tree(
                    &src_root,
                    &xstore_tests::restored_path(&b, &data),
                    true,
                );
            } else {
                let sub = data.join("sub");
                xstore_tests::assert_same_tree(
                    &xstore_tests::restored_path(&a, &sub),
                    &xstore_tests::restored_path(&b, &sub),
                    true,
                );
            }
        }

        // Garage → local: the primary's packs are in the bucket, and the replica reads them
        // with a key that may only read.
        let (primary, _) = bucket_primary(&g, &w.path().join("primary-s3"), &plain);
        ok_with_env(
            &primary,
            &rw,
            &["backup", "-q", "--host", "db1", s(&data.join("sub"))],
        );
        let ro = g.read_only_env("xstore-replica-reader");
        // The key really cannot write.
        let denied = xstore_with_env(&primary, &ro, &["backup", "-q", "--host", "x", s(&data)]);
        assert!(!denied.status.success());
        let local = w.path().join("replica-local");
        ok(&local, &["init"]);
        let out = ok_with_env(&local, &ro, &["--json", "sync", "--from", s(&primary)]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["snapshots"], 4, "{report}");
        assert_eq!(ids(&local), {
            let v: serde_json::Value =
                serde_json::from_str(&ok_with_env(&primary, &rw, &["--json", "snapshots"]))
                    .unwrap();
            let mut ids: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        });
        let check = ok(&local, &["check", "--read-data"]);
        assert!(check.contains("no problems"), "{check}");
        let target = w.path().join("from-garage");
        ok(&local, &["restore", "db1@latest", s(&target)]);
        xstore_tests::assert_same_tree(
            &data.join("sub"),
            &xstore_tests::restored_path(&target, &data.join("sub")),
            true,
        );
    }

    /// A primary (at `dir`) whose packs are in the bucket under `primary/`, holding what
    /// `plain` holds; returns it and the bucket URL.
    fn bucket_primary(g: &Garage, dir: &Path, plain: &Path) -> (PathBuf, String) {
        let url = format!("s3://{}/primary", g.bucket);
        let rw = g.env();
        ok_with_env(
            dir,
            &rw,
            &["init", "--store", &url, "--endpoint", &g.endpoint()],
        );
        ok_with_env(dir, &rw, &["sync", "--from", s(plain)]);
        // Compacted: its small files are in bundles, which a replica reading the bucket
        // alone must find its blobs in (FORMAT.md §Bundles).
        ok_with_env(dir, &rw, &["compact", "-q", "--min-age", "0s"]);
        ok_with_env(dir, &rw, &["gc", "-q", "--grace", "0s"]);
        let stats: serde_json::Value =
            serde_json::from_str(&ok_with_env(dir, &rw, &["--json", "stats"])).unwrap();
        assert!(bundled_blobs(&stats) > 2, "{stats}");
        (dir.to_path_buf(), url)
    }

    /// Expires snapshot `id` on `primary` and collects it (a second gc deletes what the
    /// first retired).
    fn forget_and_collect(primary: &Path, env: &[(&str, String)], id: &str) {
        ok_with_env(primary, env, &["forget", "--snapshot", id]);
        for _ in 0..2 {
            ok_with_env(primary, env, &["gc", "--grace", "0s"]);
        }
    }

    /// The snapshots of `host` on `repo` (ids, oldest first).
    fn ids_of(repo: &Path, env: &[(&str, String)], host: &str) -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&ok_with_env(repo, env, &["--json", "snapshots"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["host"] == host)
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_primary_bucket_alone_is_a_source_and_what_its_gc_took_does_not_come_back() {
        let w = tempfile::tempdir().unwrap();
        let g = Garage::start(&w.path().join("garage"), 1);
        let rw = g.env();
        let endpoint = g.endpoint();
        let (plain, data) = plain_source(w.path());
        let (primary, url) = bucket_primary(&g, &w.path().join("primary"), &plain);
        // Expired and collected on the primary before the replica ever looked: its record
        // is gone from the bucket, so it is not listed.
        ok_with_env(
            &primary,
            &rw,
            &["backup", "-q", "--host", "collected", s(&data.join("sub"))],
        );
        let collected = ids_of(&primary, &rw, "collected").remove(0);
        forget_and_collect(&primary, &rw, &collected);
        // Expired but not collected: the packs cannot tell, and it is copied whole.
        ok_with_env(
            &primary,
            &rw,
            &["backup", "-q", "--host", "expired", s(&data.join("sub"))],
        );
        let expired = ids_of(&primary, &rw, "expired").remove(0);
        ok_with_env(&primary, &rw, &["forget", "--snapshot", &expired]);
        // Partly collected (a data pack of its own gone): set aside, not copied.
        let before: Vec<String> = g
            .object_sizes("primary/packs/")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let unique = w.path().join("unique");
        bulk(&unique, 4, 300 << 10, 4242);
        ok_with_env(
            &primary,
            &rw,
            &["backup", "-q", "--host", "partial", s(&unique)],
        );
        let partial = ids_of(&primary, &rw, "partial").remove(0);
        let doomed: Vec<String> = g
            .object_sizes("primary/packs/")
            .into_iter()
            .filter(|(k, size)| !before.contains(k) && *size > 1 << 20)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(doomed.len(), 1, "{doomed:?}");
        g.delete_object(&doomed[0]);

        // The replica sees only the bucket, through a key that may only read; the primary's
        // directory is out of reach.
        let away = w.path().join("primary-away");
        fs::rename(&primary, &away).unwrap();
        let ro = g.read_only_env("xstore-bucket-reader");
        let bucket_before = g.object_sizes("primary/");
        let replica = w.path().join("replica");
        ok(&replica, &["init"]);
        let args = [
            "--json",
            "sync",
            "--from",
            &url,
            "--from-endpoint",
            &endpoint,
        ];
        let out = xstore_with_env(&replica, &ro, &args);
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["snapshots"], 4, "{report}");
        let set_aside = report["set_aside"].as_array().unwrap();
        assert_eq!(set_aside.len(), 1, "{report}");
        let line = set_aside[0].as_str().unwrap();
        assert!(
            line.starts_with(&format!("snapshot {} of partial: blob ", &partial[..8])),
            "{line}"
        );
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
        assert_eq!(warnings, [format!("xstore: warning: {line}")], "{err}");
        let mut want = ids(&plain);
        want.push(expired.clone());
        want.sort();
        assert_eq!(ids(&replica), want);
        assert!(!ids(&replica).contains(&collected));
        // Every field the primary recorded, tiers included.
        let (theirs, ours) = (by_id(&plain), by_id(&replica));
        for id in ids(&plain) {
            assert_eq!(kept_fields(&theirs[&id]), kept_fields(&ours[&id]), "{id}");
            assert_same_snapshot(&plain, &replica, &id, w.path());
        }
        let check = ok(&replica, &["check", "--read-data"]);
        assert!(check.contains("no problems"), "{check}");
        // Nothing was written to the bucket.
        assert_eq!(g.object_sizes("primary/"), bucket_before);

        // Incremental: a new backup travels alone; the set-aside snapshot is not tried again.
        fs::rename(&away, &primary).unwrap();
        fs::write(data.join("small.txt"), b"changed in the bucket\n").unwrap();
        ok_with_env(&primary, &rw, &["backup", "-q", "--host", "web1", s(&data)]);
        let newest = ids_of(&primary, &rw, "web1").pop().unwrap();
        let packs = g.object_sizes("primary/packs/").len() as u64;
        let gets = g.requests(0, "GetObject");
        let out = xstore_with_env(&replica, &ro, &args);
        let gets = g.requests(0, "GetObject") - gets;
        // The map is kept: only the new packs' trailers and records, and the new blobs, are
        // read (every trailer again would be two reads per pack, and the blobs on top).
        assert!(gets < 2 * packs, "{gets} reads for {packs} packs");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["snapshots"], 1, "{report}");
        assert_eq!(report["set_aside"].as_array().unwrap().len(), 0, "{report}");
        assert!(report["blobs_read"].as_u64().unwrap() <= 8, "{report}");
        assert!(ids(&replica).contains(&newest));
        // Nothing new: `config` and `keys.json` are all that is read.
        let gets = g.requests(0, "GetObject");
        let report: serde_json::Value =
            serde_json::from_str(&ok_with_env(&replica, &ro, &args)).unwrap();
        assert_eq!(report["snapshots"], 0, "{report}");
        assert_eq!(g.requests(0, "GetObject") - gets, 2);

        // The primary forgets and collects it: the copy stays, restorable.
        forget_and_collect(&primary, &rw, &newest);
        let report: serde_json::Value =
            serde_json::from_str(&ok_with_env(&replica, &ro, &args)).unwrap();
        assert_eq!(report["snapshots"], 0, "{report}");
        let target = w.path().join("after-gc");
        ok(
            &replica,
            &["restore", "--trusted-specials", &newest, s(&target)],
        );
        xstore_tests::assert_same_tree(&data, &xstore_tests::restored_path(&target, &data), true);

        // A prefix without a repository, and a bucket source without its endpoint: one line.
        let empty = format!("s3://{}/nothing-here", g.bucket);
        for (argv, want) in [
            (
                vec![
                    "sync",
                    "--from",
                    empty.as_str(),
                    "--from-endpoint",
                    endpoint.as_str(),
                ],
                "no repository under this prefix (no config object)",
            ),
            (
                vec!["sync", "--from", url.as_str()],
                "give the store's --from-endpoint URL",
            ),
        ] {
            let out = xstore_with_env(&replica, &ro, &argv);
            assert_eq!(out.status.code(), Some(1), "{argv:?}");
            let err = stderr(&out);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(want), "{err}");
        }
    }
}

#[test]
fn a_replica_is_operated_like_the_primary() {
    let w = tempfile::tempdir().unwrap();
    let (src, data) = plain_source(w.path());
    let dst = w.path().join("replica");
    ok(&dst, &["init", "--no-encryption"]);
    let at = |hours: i64| xstore::format_utc(xstore::now_ns() / 1_000_000_000 + hours * 3600);
    // No sync yet: CRITICAL.
    let out = xstore(&dst, &["check-sync"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    sync_json(&dst, &src, &[]);
    let out = xstore(&dst, &["check-sync"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("XSTORE SYNC OK - 2 hosts from"), "{text}");
    let out = xstore(&dst, &["check-sync", "--now", &at(10)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = xstore(&dst, &["check-sync", "--now", &at(30)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("web1: up to"), "{text}");
    // A host the replica may not copy (a tier filter that leaves it out) is behind.
    ok(&src, &["backup", "-q", "--host", "web1", s(&data)]);
    sync_json(&dst, &src, &["--host", "db1"]);
    let out = xstore(&dst, &["check-sync"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "only db1 was synced, and it is current"
    );
    // Metrics, freshness and usage work on the replica as on the primary.
    let metrics = ok(&dst, &["metrics"]);
    assert!(
        metrics.contains("xstore_sync_lag_seconds{host=\"db1\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("xstore_sync_last_success_timestamp_seconds"),
        "{metrics}"
    );
    let fresh = xstore(&dst, &["check-freshness"]);
    assert_eq!(
        fresh.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fresh.stdout)
    );
    let du = ok(&dst, &["du"]);
    assert!(du.contains("web1") && du.contains("db1"), "{du}");
    // The schedule of a replica: the sync job instead of the pull, no rotations.
    let cron = ok(
        &dst,
        &["schedule", "--sync", "sync --from ssh://backup@primary"],
    );
    assert!(cron.contains("sync --from ssh://backup@primary"), "{cron}");
    assert!(!cron.contains(" pull "), "{cron}");
    assert!(!cron.contains("xstore-rotate"), "{cron}");
    let placed = ok(
        &dst,
        &[
            "schedule",
            "--sync",
            "sync --from /srv/primary --enter daily",
        ],
    );
    assert!(placed.contains("rotate weekly"), "{placed}");
}
