//! Bad input, locking, corruption detection, index repair: one clear line, the right exit code,
//! and nothing lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{json, ok, stderr, xstore};
use xstore_tests::{assert_same_tree, make_fixture, restored_path};

fn setup(seed: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let src = work.path().join("src");
    make_fixture(&src, seed);
    ok(&repo, &["init"]);
    ok(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    (work, repo, src)
}

fn one_error_line(out: &std::process::Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("xstore: error"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    lines[0].to_string()
}

#[test]
fn usage_errors_name_what_is_wrong() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("nothing-here");
    let out = xstore(&repo, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("not an xstore repository"));

    let (_w, repo, src) = setup(10);
    let out = xstore(&repo, &["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("already exists"));

    let out = xstore(
        &repo,
        &["restore", "--trusted-specials", "ffffffff", "/tmp/x"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("snapshot ffffffff: no such snapshot"));

    let out = xstore(&repo, &["cat", "latest", "/no/such/file"]);
    assert!(one_error_line(&out).contains("/no/such/file: not found in snapshot"));

    let out = xstore(
        &repo,
        &["backup", "--host", "../evil", src.to_str().unwrap()],
    );
    assert!(one_error_line(&out).contains("invalid host name"));

    let out = xstore(&repo, &["backup", "--host", "h", "/does/not/exist"]);
    assert!(one_error_line(&out).contains("/does/not/exist"));

    let out = xstore(
        &repo,
        &[
            "backup",
            "--host",
            "h",
            "--exclude",
            "a[",
            src.to_str().unwrap(),
        ],
    );
    assert!(one_error_line(&out).contains("exclude pattern"));

    // Failed commands left nothing behind.
    assert_eq!(json(&repo, &["snapshots"]).as_array().unwrap().len(), 1);
    ok(&repo, &["check"]);
}

#[test]
fn read_only_commands_write_nothing_into_the_repository() {
    let (_w, repo, _src) = setup(16);
    let listing = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = walkdir(dir);
        v.sort();
        v
    };
    let before = listing(&repo);
    for args in [
        &["snapshots"][..],
        &["check", "--read-data"],
        &["stats"],
        &["ls", "latest"],
        &["diff", "latest", "latest"],
    ] {
        ok(&repo, args);
    }
    assert_eq!(listing(&repo), before);
}

fn walkdir(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(walkdir(&e.path()));
        } else {
            out.push(format!("{} {}", e.path().display(), m.len()));
        }
    }
    out
}

#[test]
fn refused_init_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    for bad in [
        &["init", "--compression-level", "50"][..],
        &["init", "--pack-size-mib", "0"],
    ] {
        let out = xstore(&repo, bad);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(!repo.exists(), "{bad:?} left {repo:?} behind");
    }
    ok(&repo, &["init"]);
}

#[test]
fn damaged_config_is_refused_clearly() {
    let (_w, repo, _src) = setup(11);
    fs::write(repo.join("config"), b"{ not json").unwrap();
    let out = xstore(&repo, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(
        line.contains("config") && line.contains("invalid config"),
        "{line}"
    );
}

#[test]
fn second_writer_is_refused_and_readers_keep_working() {
    let (_w, repo, src) = setup(12);
    // Hold the writer lock from this process.
    let held = xstore::Repository::open(&repo).unwrap();
    let out = xstore(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(
        line.contains("locked by pid") && line.contains(" on host ") && line.contains(" since "),
        "{line}"
    );
    // Read-only commands work meanwhile.
    assert_eq!(json(&repo, &["snapshots"]).as_array().unwrap().len(), 1);
    ok(&repo, &["check"]);
    drop(held);
    ok(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
}

#[test]
fn check_names_damaged_pack_blob_and_path() {
    let (_w, repo, src) = setup(13);
    ok(&repo, &["check", "--read-data"]);
    let victim = flip_a_byte_in_the_largest_pack(&repo);
    // Structure alone is intact…
    ok(&repo, &["check"]);
    // …but reading the data finds it, naming pack, blob, snapshot and path.
    let out = xstore(&repo, &["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    let pack_name = victim.file_stem().unwrap().to_str().unwrap();
    assert!(err.contains(pack_name), "{err}");
    assert!(
        err.contains("; blob ") && err.contains("; snapshot ") && err.contains("; path "),
        "{err}"
    );
    let _ = src;
}

#[test]
fn a_restore_that_meets_a_damaged_chunk_leaves_no_half_written_file() {
    let (w, repo, src) = setup(16);
    let big = xstore::chunker::seeded_bytes(5, 8 << 20);
    fs::write(src.join("big.bin"), &big).unwrap();
    ok(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    flip_a_byte_in_the_largest_pack(&repo);
    let dst = w.path().join("dst");
    let out = xstore(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "h@latest",
            dst.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The repository is encrypted: a changed byte fails the blob's authentication.
    assert!(err.contains("fails authentication"), "{err}");
    // The file being written when the damage was met is not under its name; every file that
    // is equals its source byte for byte.
    let restored = restored_path(&dst, &src);
    assert!(!restored.join("big.bin").exists(), "{err}");
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let there = restored.join(path.file_name().unwrap());
        if path.is_file() && there.exists() {
            assert_eq!(
                fs::read(&there).unwrap(),
                fs::read(&path).unwrap(),
                "{there:?}"
            );
        }
    }
}

#[test]
fn missing_pack_is_reported_and_restore_fails_loudly() {
    let (w, repo, _src) = setup(14);
    for p in walk_packs(&repo) {
        fs::remove_file(p).unwrap();
    }
    let out = xstore(&repo, &["check"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("pack file unreadable"),
        "{}",
        stderr(&out)
    );
    let out = xstore(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "latest",
            w.path().join("dst").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn index_is_rebuilt_from_packs_and_snapshot_records() {
    let (w, repo, src) = setup(15);
    ok(&repo, &["backup", "--host", "other", src.to_str().unwrap()]);
    let before = json(&repo, &["snapshots"]);
    let stats_before = json(&repo, &["stats"]);
    fs::remove_dir_all(repo.join("index")).unwrap();
    fs::create_dir(repo.join("index")).unwrap();
    ok(&repo, &["repair", "index"]);
    assert_eq!(json(&repo, &["snapshots"]), before);
    let stats_after = json(&repo, &["stats"]);
    assert_eq!(stats_after["blobs"], stats_before["blobs"]);
    assert_eq!(stats_after["unique_bytes"], stats_before["unique_bytes"]);
    ok(&repo, &["check", "--read-data"]);
    let dst = w.path().join("dst");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "other@latest",
            dst.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src, &restored_path(&dst, &src), false);
}

/// Flips one byte in the middle of the largest pack (in a blob's stored bytes, for the
/// fixtures here); returns that pack's path.
fn flip_a_byte_in_the_largest_pack(repo: &std::path::Path) -> std::path::PathBuf {
    let mut packs: Vec<_> = walk_packs(repo);
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap().clone();
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&victim, &bytes).unwrap();
    victim
}

pub fn walk_packs(repo: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join("packs")).unwrap() {
        let d = d.unwrap().path();
        if d.file_name().unwrap() == "tmp" {
            continue;
        }
        for f in fs::read_dir(&d).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[test]
fn unreadable_file_gives_partial_snapshot_and_exit_3() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("secret"), b"no").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads everything: run the backup as an unprivileged user where we are root.
    let as_root = rustix::process::geteuid().is_root();
    let unprivileged = |args: &[&str]| {
        let mut c = if as_root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_xstore"),
            ]);
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_xstore"))
        };
        // Its key file where that user may write it.
        c.env("XSTORE_REPO", &repo)
            .env("XSTORE_KEY_DIR", work.path().join("keys"))
            .args(args)
            .output()
            .unwrap()
    };
    let init = unprivileged(&["init"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let out = unprivileged(&["backup", "--host", "h", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not backed up") && err.contains("secret") && err.contains("ermission denied"),
        "{err}"
    );
    // --json: one error event per failed path, then the summary, each a line of JSON.
    let out = unprivileged(&["--json", "backup", "--host", "h", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert!(errors[0]["path"].as_str().unwrap().ends_with("/secret"));
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("ermission denied"));
    let summary = events.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["status"], "partial");
    let snaps: serde_json::Value =
        serde_json::from_slice(&unprivileged(&["--json", "snapshots"]).stdout).unwrap();
    assert_eq!(snaps[0]["status"], "partial");
    assert_eq!(
        snaps[0]["errors"][0]["path"],
        src.canonicalize().unwrap().join("secret").to_str().unwrap()
    );
    let abs = src.canonicalize().unwrap();
    let cat = unprivileged(&["cat", "latest", &format!("{}/readable", abs.display())]);
    assert_eq!(cat.stdout, b"fine");
}
