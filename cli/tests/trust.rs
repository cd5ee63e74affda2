//! The trust fault suite (issue "no operator mistake, full disk, crash or hostile local user
//! loses a committed snapshot"): each reproduction as a test with its exact outcome — exit
//! code, the one error line, the snapshot ids present, pack files on disk, and restored bytes
//! equal to the backed-up bytes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, ok, stderr, xstore};
use xstore_tests::{assert_same_tree, make_fixture, restored_path, seeded_bytes};

/// A repository with several snapshots of two hosts (small packs, so there are many).
fn healthy(work: &Path) -> (PathBuf, PathBuf) {
    let (repo, src) = (work.join("repo"), work.join("src"));
    make_fixture(&src, 30);
    ok(
        &repo,
        &["init", "--pack-size-mib", "1", "--chunk-avg-kib", "64"],
    );
    for round in 0..4u64 {
        fs::write(src.join("churn.bin"), seeded_bytes(round, 400_000)).unwrap();
        for host in ["h1", "h2"] {
            ok(
                &repo,
                &["backup", "-q", "--host", host, src.to_str().unwrap()],
            );
        }
    }
    (repo, src)
}

fn snapshot_ids(repo: &Path) -> BTreeSet<String> {
    common::snapshot_ids(repo).into_iter().collect()
}

fn pack_count(repo: &Path) -> usize {
    xstore::pack_files(repo).unwrap().len()
}

/// Every snapshot restores, and the newest of `host` equals `src` exactly.
fn assert_restores(repo: &Path, work: &Path, host: &str, src: &Path) {
    let dst = work.join(format!("restore-{host}-{}", rand_suffix()));
    ok(
        repo,
        &[
            "restore",
            "--trusted-specials",
            &format!("{host}@latest"),
            dst.to_str().unwrap(),
        ],
    );
    assert_same_tree(src, &restored_path(&dst, src), false);
    fs::remove_dir_all(&dst).unwrap();
    let check = xstore(repo, &["check", "--read-data"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn one_error_line(out: &std::process::Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    lines[0].to_string()
}

#[test]
fn a_missing_or_emptied_index_is_refused_and_repair_brings_every_snapshot_back() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let ids = snapshot_ids(&repo);
    let packs = pack_count(&repo);
    assert!(packs > 4, "{packs}");

    fs::remove_dir_all(repo.join("index")).unwrap();
    let out = xstore(&repo, &["backup", "--host", "h1", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(
        line.contains("missing or empty") && line.contains("xstore repair index"),
        "{line}"
    );
    assert_eq!(pack_count(&repo), packs, "a refused open deleted packs");

    fs::create_dir(repo.join("index")).unwrap();
    let out = xstore(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("xstore repair index"));
    assert_eq!(pack_count(&repo), packs);

    // Restore still reads? No index at all: read-only opens are refused the same way.
    let out = xstore(&repo, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1));

    fs::remove_dir_all(repo.join("index")).unwrap();
    let report = json(&repo, &["repair", "index"]);
    assert_eq!(report["old_index"], false, "{report}");
    assert_eq!(snapshot_ids(&repo), ids);
    for host in ["h1", "h2"] {
        assert_restores(&repo, work.path(), host, &src);
    }
    // The repaired repository is writable again.
    ok(
        &repo,
        &["backup", "-q", "--host", "h1", src.to_str().unwrap()],
    );
}

#[test]
fn an_index_older_than_the_packs_is_refused_for_writing() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    // An index restored from an older copy: it does not know the newest packs.
    let old_index = work.path().join("index-copy");
    Command::new("cp")
        .args(["-a"])
        .arg(repo.join("index"))
        .arg(&old_index)
        .status()
        .unwrap();
    fs::write(src.join("new.bin"), seeded_bytes(77, 300_000)).unwrap();
    ok(
        &repo,
        &["backup", "-q", "--host", "h1", src.to_str().unwrap()],
    );
    let ids = snapshot_ids(&repo);
    let packs = pack_count(&repo);
    fs::remove_dir_all(repo.join("index")).unwrap();
    fs::rename(&old_index, repo.join("index")).unwrap();
    let out = xstore(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(
        line.contains("does not know") && line.contains("repair index"),
        "{line}"
    );
    assert_eq!(pack_count(&repo), packs);
    // repair merges the old index with the newer records found in copies and packs.
    let report = json(&repo, &["repair", "index"]);
    assert_eq!(report["recovered"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(snapshot_ids(&repo), ids);
    assert_restores(&repo, work.path(), "h1", &src);
}

#[test]
fn repair_after_a_crash_past_the_commit_keeps_the_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let out = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &repo)
        .env("XSTORE_FAILPOINT", "after-commit")
        .args(["backup", "-q", "--host", "crashed", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let ids = snapshot_ids(&repo);
    let report = json(&repo, &["repair", "index"]);
    assert_eq!(report["snapshots"], ids.len() as u64, "{report}");
    assert_eq!(snapshot_ids(&repo), ids);
    let crashed: Vec<_> = json(&repo, &["snapshots", "--host", "crashed"])
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(crashed.len(), 1);
    assert_restores(&repo, work.path(), "crashed", &src);
}

/// A backup killed after its packs (record blob included) were sealed but before the index
/// commit failed: `repair index` run next, before any other writer recovered, must not bring
/// that snapshot back while the index proves it was never committed. Without an index the
/// commit cannot be disproven, and the whole snapshot comes back.
#[test]
fn repair_after_a_crash_before_the_commit_does_not_resurrect_the_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let ids = snapshot_ids(&repo);
    let packs = pack_count(&repo);
    let crash = || {
        let out = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .env("XSTORE_FAILPOINT", "before-commit")
            .args([
                "backup",
                "-q",
                "--host",
                "crashed",
                "--no-parent",
                src.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            pack_count(&repo) > packs,
            "the crashed backup sealed no pack"
        );
    };
    crash();
    let report = json(&repo, &["repair", "index"]);
    assert_eq!(report["snapshots"], ids.len() as u64, "{report}");
    assert!(
        report["recovered"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(snapshot_ids(&repo), ids);
    assert_eq!(
        pack_count(&repo),
        packs,
        "the crashed backup's packs remain"
    );
    ok(&repo, &["check", "--read-data"]);
    // Index lost too: the packs alone cannot tell, so the whole snapshot is kept.
    crash();
    fs::remove_dir_all(repo.join("index")).unwrap();
    json(&repo, &["repair", "index"]);
    let after = snapshot_ids(&repo);
    assert_eq!(after.len(), ids.len() + 1);
    assert!(ids.is_subset(&after));
    assert_restores(&repo, work.path(), "crashed", &src);
}

/// Bytes that read back differently from what was written (a faulty disk or controller):
/// the backup fails with one line before its commit, and nothing of it stays.
#[test]
fn a_pack_that_reads_back_wrong_is_never_committed() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let ids = snapshot_ids(&repo);
    let packs = pack_count(&repo);
    fs::write(src.join("new.bin"), seeded_bytes(99, 300_000)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &repo)
        .env("XSTORE_FAIL_IO", "pack-readback")
        .args(["backup", "-q", "--host", "h1", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = one_error_line(&out);
    assert!(line.contains("read back after writing"), "{line}");
    assert_eq!(snapshot_ids(&repo), ids);
    assert_eq!(pack_count(&repo), packs);
    ok(&repo, &["check", "--read-data"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "h1", src.to_str().unwrap()],
    );
    assert_restores(&repo, work.path(), "h1", &src);
}

#[test]
fn repair_without_snapshot_copies_rebuilds_from_packs_and_gc_keeps_the_data() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    // Labels changed after the commit (a pin) must survive too: records in packs are
    // rewritten with each change.
    let pinned = json(&repo, &["snapshots", "--host", "h2"])
        .as_array()
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&repo, &["pin", &pinned]);
    let before = json(&repo, &["snapshots"]);
    let ids = snapshot_ids(&repo);
    for item in fs::read_dir(repo.join("snapshots")).unwrap() {
        fs::remove_file(item.unwrap().path()).unwrap();
    }
    let report = json(&repo, &["repair", "index"]);
    assert_eq!(report["snapshots"], ids.len() as u64, "{report}");
    assert_eq!(snapshot_ids(&repo), ids);
    // Both sources gone, the copies' directory too: packs alone.
    fs::remove_dir_all(repo.join("index")).unwrap();
    fs::remove_dir_all(repo.join("snapshots")).unwrap();
    let report = json(&repo, &["repair", "index"]);
    assert_eq!(report["from_packs"], ids.len() as u64, "{report}");
    let after = json(&repo, &["snapshots"]);
    let strip = |v: &serde_json::Value| -> Vec<(String, bool, serde_json::Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["pinned"].as_bool().unwrap(),
                    s["tiers"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&after), strip(&before));
    // The copies are back, one per snapshot.
    assert_eq!(
        fs::read_dir(repo.join("snapshots")).unwrap().count(),
        ids.len()
    );
    ok(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    for host in ["h1", "h2"] {
        assert_restores(&repo, work.path(), host, &src);
    }
}

#[test]
fn repair_holds_blobs_it_cannot_attribute_until_released() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    // A snapshot whose record is lost everywhere (index, copy, record blob): the packs of
    // its data hold blobs that no snapshot references.
    let lost = work.path().join("lost");
    fs::create_dir(&lost).unwrap();
    fs::write(lost.join("only-here.bin"), seeded_bytes(4242, 900_000)).unwrap();
    ok(
        &repo,
        &["backup", "-q", "--host", "lost", lost.to_str().unwrap()],
    );
    let id = json(&repo, &["snapshots", "--host", "lost"])
        .as_array()
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let record = fs::read(repo.join(format!("snapshots/{id}.json"))).unwrap();
    let record_pack = {
        let r = xstore::Repository::open_read_only(&repo).unwrap();
        r.blob_location(&r.encryption().id_of(&record))
            .unwrap()
            .unwrap()
            .pack
    };
    fs::remove_dir_all(repo.join("index")).unwrap();
    fs::remove_file(repo.join(format!("snapshots/{id}.json"))).unwrap();
    let hex = record_pack.to_string();
    fs::remove_file(repo.join(format!("packs/{}/{hex}.pack", &hex[..2]))).unwrap();
    let ids = snapshot_ids_after_repair(&repo);
    assert!(!ids.contains(&id));
    let report = json(&repo, &["stats"]);
    let held = report["held_packs"].as_u64().unwrap();
    assert!(held > 0, "{report}");
    let packs = pack_count(&repo);
    let gc = json(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    assert_eq!(gc["packs_held"], held, "{gc}");
    assert_eq!(json(&repo, &["stats"])["held_packs"], held);
    assert!(pack_count(&repo) as u64 >= held && packs > 0);
    // Compact leaves them too (it drops dead blobs as a gc rewrite does): their files stay.
    ok(&repo, &["compact", "--min-age", "0s"]);
    ok(&repo, &["gc", "--grace", "0s"]);
    let hold: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("gc-hold.json")).unwrap()).unwrap();
    let held_files = hold["packs"].as_array().unwrap();
    assert_eq!(held_files.len() as u64, held);
    for hex in held_files {
        let hex = hex.as_str().unwrap();
        assert!(
            repo.join(format!("packs/{}/{hex}.pack", &hex[..2]))
                .exists(),
            "{hex}"
        );
    }
    // The operator releases them: now they are reclaimed, and the rest is intact.
    let gc = json(
        &repo,
        &["gc", "--max-dead", "0%", "--grace", "0s", "--release-held"],
    );
    assert_eq!(gc["packs_held"], 0, "{gc}");
    assert!(gc["retired_deleted"].as_u64().unwrap() >= held, "{gc}");
    assert_eq!(json(&repo, &["stats"])["held_packs"], 0);
    for host in ["h1", "h2"] {
        assert_restores(&repo, work.path(), host, &src);
    }
}

fn snapshot_ids_after_repair(repo: &Path) -> BTreeSet<String> {
    let report = json(repo, &["repair", "index"]);
    assert!(
        report["unattributed_blobs"].as_u64().unwrap() > 0,
        "{report}"
    );
    snapshot_ids(repo)
}

#[test]
fn enospc_after_the_commit_is_a_warning_and_the_snapshot_exists() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let before = snapshot_ids(&repo);
    let out = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &repo)
        .env("XSTORE_FAIL_IO", "snapshot-copies")
        .args(["backup", "--host", "h1", src.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("committed, but") && err.contains("No space left"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "ANSI colours on a pipe: {err:?}");
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    let after = snapshot_ids(&repo);
    assert_eq!(after.len(), before.len() + 1);
    // The next writable open resyncs the copies and removes the marker.
    assert!(repo.join("locks/snapshot-copies-stale").exists());
    ok(&repo, &["gc", "--dry-run"]);
    ok(&repo, &["pin", after.difference(&before).next().unwrap()]);
    assert!(!repo.join("locks/snapshot-copies-stale").exists());
    for id in &after {
        assert!(repo.join(format!("snapshots/{id}.json")).exists(), "{id}");
    }
    assert_restores(&repo, work.path(), "h1", &src);
}

/// ENOSPC injected at each write step of backup, pin (a relabel), forget, rotate, gc and
/// repair:
/// before the commit point the command fails with one line and changes nothing; after it the
/// command succeeds with one warning line and the change is there.
#[test]
fn enospc_at_every_write_step() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    // A full hourly tier of two: every `rotate daily` below has a snapshot to promote.
    ok(&repo, &["tiers", "--set", "hourly=2,daily=7"]);
    let s = src.to_str().unwrap().to_string();
    // Resolved when each step runs (hourly trimming replaces h1's snapshots).
    let some_id = "h1@latest".to_string();
    let steps: Vec<(Vec<&str>, &str, bool)> = vec![
        (vec!["backup", "--host", "h1", &s], "pack-seal", false),
        (vec!["backup", "--host", "h1", &s], "before-commit", false),
        (vec!["backup", "--host", "h1", &s], "snapshot-copies", true),
        (vec!["pin", &some_id], "pack-seal", false),
        (vec!["pin", &some_id], "before-commit", false),
        (vec!["pin", &some_id], "snapshot-copies", true),
        (
            vec!["forget", "--host", "h2", "--keep-last", "1"],
            "before-commit",
            false,
        ),
        (
            vec!["forget", "--host", "h2", "--keep-last", "1"],
            "snapshot-copies",
            true,
        ),
        (vec!["rotate", "daily", "--all"], "pack-seal", false),
        (vec!["rotate", "daily", "--all"], "before-commit", false),
        (vec!["rotate", "daily", "--all"], "snapshot-copies", true),
        (
            vec!["gc", "--max-dead", "0%", "--grace", "0s"],
            "gc-copy",
            false,
        ),
        (
            vec!["gc", "--max-dead", "0%", "--grace", "0s"],
            "pack-seal",
            false,
        ),
        (
            vec!["gc", "--max-dead", "0%", "--grace", "0s"],
            "gc-retire",
            false,
        ),
        (
            vec!["gc", "--max-dead", "0%", "--grace", "0s"],
            "gc-delete",
            true,
        ),
        (vec!["repair", "index"], "repair-build", false),
        (vec!["repair", "index"], "repair-swap", false),
    ];
    for (args, step, committed) in steps {
        // Fresh garbage for every step, in packs that also hold live blobs (gc rewrites
        // them), and two snapshots of h2 (forget has one to expire).
        let seed = rand_suffix();
        fs::write(
            src.join(format!("keep-{seed}.bin")),
            seeded_bytes(seed, 100_000),
        )
        .unwrap();
        fs::write(src.join("drop.bin"), seeded_bytes(seed + 1, 100_000)).unwrap();
        ok(&repo, &["backup", "-q", "--host", "h2", &s]);
        fs::remove_file(src.join("drop.bin")).unwrap();
        ok(&repo, &["backup", "-q", "--host", "h2", &s]);
        ok(&repo, &["forget", "--host", "h2", "--keep-last", "1"]);
        fs::write(src.join("churn.bin"), seeded_bytes(seed + 2, 100_000)).unwrap();
        ok(&repo, &["backup", "-q", "--host", "h2", &s]);
        let plan = json(&repo, &["gc", "--dry-run", "--max-dead", "0%"]);
        assert!(plan["packs_rewritten"].as_u64().unwrap() > 0, "{plan}");
        let ids = snapshot_ids(&repo);
        let packs = pack_count(&repo);
        let stats = json(&repo, &["stats"]);
        let out = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .env("XSTORE_FAIL_IO", step)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap();
        let what = format!("{args:?} at {step}");
        let line = one_error_line(&out);
        assert_eq!(
            line.matches("No space left on device").count(),
            1,
            "{what}: {line}"
        );
        assert!(!line.contains('\u{1b}'), "{what}: ANSI colours on a pipe");
        if committed {
            assert_eq!(out.status.code(), Some(0), "{what}: {line}");
            assert!(line.contains("WARN"), "{what}: {line}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{what}: {line}");
            assert!(line.starts_with("xstore: error: "), "{what}: {line}");
            assert_eq!(snapshot_ids(&repo), ids, "{what}");
            assert_eq!(pack_count(&repo), packs, "{what} left packs behind");
            assert!(xstore_tests::journal_is_empty(&repo), "{what}");
            let now = json(&repo, &["stats"]);
            for key in ["dead_bytes", "blobs", "packs", "snapshots"] {
                assert_eq!(now[key], stats[key], "{what}: {key}");
            }
        }
        let check = xstore(&repo, &["check", "--read-data"]);
        assert_eq!(check.status.code(), Some(0), "{what}: {}", stderr(&check));
    }
    ok(&repo, &["backup", "-q", "--host", "h1", &s]);
    assert_restores(&repo, work.path(), "h1", &src);
}

/// Unmounts a test's tmpfs when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` (`24m`) mounted at `work/small` (needs root), unmounted with the guard.
fn small_tmpfs(work: &Path, size: &str) -> (PathBuf, Unmount) {
    let mnt = work.join("small");
    fs::create_dir(&mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    let guard = Unmount(mnt.clone());
    (mnt, guard)
}

/// A real full disk: a 24 MiB tmpfs holding the repository, backups until it is full.
/// Every exit 0 is a snapshot that exists and restores; every exit 1 changed nothing.
#[test]
fn a_real_full_disk_never_reports_a_committed_snapshot_as_failed() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("needs root to mount a small tmpfs");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (mnt, _guard) = small_tmpfs(work.path(), "24m");
    let repo = mnt.join("repo");
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    ok(&repo, &["init", "--pack-size-mib", "1"]);
    let mut committed = 0;
    let mut refused = 0;
    for round in 0..12u64 {
        // Incompressible data: each round adds ~3 MiB until the disk is full.
        fs::write(
            src.join(format!("f{round}.bin")),
            seeded_bytes(round, 3 << 20),
        )
        .unwrap();
        let ids = snapshot_ids(&repo);
        let out = xstore(
            &repo,
            &["backup", "-q", "--host", "h", src.to_str().unwrap()],
        );
        match out.status.code() {
            Some(0) => {
                committed += 1;
                assert_eq!(snapshot_ids(&repo).len(), ids.len() + 1);
            }
            Some(1) => {
                refused += 1;
                // Either the disk filled, or the backup stopped at the free-space reserve.
                let line = one_error_line(&out);
                assert!(
                    line.contains("No space left on device")
                        || line.contains("the reserve for forget, gc and repair is"),
                    "{line}"
                );
                assert_eq!(
                    snapshot_ids(&repo),
                    ids,
                    "a failed backup changed the snapshots"
                );
                // Not in any snapshot: the source goes back to what the newest one holds.
                fs::remove_file(src.join(format!("f{round}.bin"))).unwrap();
            }
            other => panic!("exit {other:?}: {}", stderr(&out)),
        }
        // Nothing half-written stays: no temporaries in packs/tmp or snapshots/.
        let tmp: Vec<_> = fs::read_dir(repo.join("packs/tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "{tmp:?}");
    }
    assert!(committed > 0 && refused > 0, "{committed} / {refused}");
    // Now the disk is full to the last byte: every writing command either works or fails
    // with one line and changes nothing.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).unwrap();
        let block = vec![0x5au8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&block[..1]);
        let _ = f.sync_all();
    }
    let newest = json(&repo, &["snapshots"])
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for args in [
        vec!["pin", newest.as_str()],
        vec!["forget", "--host", "h", "--keep-last", "2"],
        vec!["gc", "--max-dead", "0%", "--grace", "0s"],
        vec!["repair", "index"],
    ] {
        let ids = snapshot_ids(&repo);
        let out = xstore(&repo, &args);
        match out.status.code() {
            Some(0) => {}
            Some(1) => {
                let line = one_error_line(&out);
                assert!(line.contains("No space left on device"), "{args:?}: {line}");
                assert_eq!(
                    snapshot_ids(&repo),
                    ids,
                    "{args:?} failed and changed snapshots"
                );
            }
            other => panic!("{args:?}: exit {other:?}: {}", stderr(&out)),
        }
        let check = xstore(&repo, &["check"]);
        assert_eq!(check.status.code(), Some(0), "{args:?}: {}", stderr(&check));
    }
    fs::remove_file(&filler).unwrap();
    ok(&repo, &["gc", "--dry-run"]);
    let check = xstore(&repo, &["check", "--read-data"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    // The newest snapshot holds exactly the files of the rounds that committed.
    let dst = work.path().join("restored");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            &newest,
            dst.to_str().unwrap(),
        ],
    );
    let restored = restored_path(&dst, &src);
    let mut names: Vec<String> = fs::read_dir(&restored)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    want.sort();
    assert_eq!(names, want);
    for name in names {
        assert_eq!(
            fs::read(restored.join(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap()
        );
    }
}

/// The free-space reserve: with less than it free, a backup commits nothing (exit 1, one line
/// naming the reserve), and forget, gc and check still run in it and free space.
#[test]
fn backups_stop_at_the_free_space_reserve_and_forget_and_gc_still_run() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("needs root to mount a small tmpfs");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (mnt, _guard) = small_tmpfs(work.path(), "64m");
    let repo = mnt.join("repo");
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    ok(&repo, &["init", "--pack-size-mib", "1"]);
    for round in 0..3u64 {
        fs::write(src.join("data.bin"), seeded_bytes(round, 4 << 20)).unwrap();
        ok(
            &repo,
            &["backup", "-q", "--host", "h", src.to_str().unwrap()],
        );
    }
    // Fill the disk until half the reserve is left.
    let st = rustix::fs::statvfs(&mnt).unwrap();
    let reserve = xstore::free_space_reserve(st.f_blocks * st.f_frsize);
    let free = st.f_bavail * st.f_frsize;
    fs::write(
        mnt.join("filler"),
        vec![0x5a; (free - reserve / 2) as usize],
    )
    .unwrap();
    let ids = common::snapshot_ids(&repo);
    fs::write(src.join("data.bin"), seeded_bytes(9, 1 << 20)).unwrap();
    let out = xstore(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = one_error_line(&out);
    assert!(
        line.contains("the reserve for forget, gc and repair is")
            && line.contains("nothing was committed"),
        "{line}"
    );
    assert_eq!(common::snapshot_ids(&repo), ids);
    ok(&repo, &["forget", "--host", "h", "--keep-last", "1"]);
    ok(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    ok(&repo, &["check", "--read-data"]);
    let after = rustix::fs::statvfs(&mnt).unwrap();
    assert!(
        after.f_bavail * after.f_frsize > reserve,
        "gc freed nothing"
    );
    ok(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
}

/// Readers that started before gc: `xstore cat` held back by a full pipe after its first
/// bytes (so its index predates gc's commit for certain) and a restore racing the gc, 20
/// rounds. The file's packs are shared with garbage, so gc rewrites them. (With
/// `--grace 0s` the cat fails: the test can fail.)
#[test]
fn gc_waits_out_readers_that_started_before_it() {
    use std::io::Read;
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let junk = work.path().join("junk");
    let kept = json(&repo, &["snapshots", "--host", "h1"])
        .as_array()
        .unwrap()[3]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let big_path = format!("{}/big.bin", src.canonicalize().unwrap().display());
    for round in 0..20u64 {
        let big = seeded_bytes(900 + round, 4 << 20);
        fs::write(src.join("big.bin"), &big).unwrap();
        fs::create_dir_all(&junk).unwrap();
        for j in 0..4 {
            fs::write(
                junk.join(format!("j{j}")),
                seeded_bytes(5000 + round * 10 + j, 1 << 20),
            )
            .unwrap();
        }
        let (s, j) = (src.to_str().unwrap(), junk.to_str().unwrap());
        ok(&repo, &["backup", "-q", "--host", "h2", s, j]);
        fs::remove_dir_all(&junk).unwrap();
        fs::create_dir_all(&junk).unwrap();
        ok(&repo, &["backup", "-q", "--host", "h2", s, j]);
        ok(&repo, &["forget", "--host", "h2", "--keep-last", "1"]);
        let mut cat = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .args(["cat", "h2@latest", &big_path])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = cat.stdout.take().unwrap();
        let mut got = vec![0u8; 64 << 10];
        out.read_exact(&mut got).unwrap();
        let dst = work.path().join(format!("r{round}"));
        let restore = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .args([
                "restore",
                "--trusted-specials",
                &kept,
                dst.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let gc = json(&repo, &["gc", "--max-dead", "0%"]);
        assert!(gc["packs_rewritten"].as_u64().unwrap() > 0, "{gc}");
        out.read_to_end(&mut got).unwrap();
        let status = cat.wait_with_output().unwrap();
        assert_eq!(
            status.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&status)
        );
        assert!(got == big, "round {round}: cat returned other bytes");
        let restored = restore.wait_with_output().unwrap();
        assert_eq!(
            restored.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&restored)
        );
        fs::remove_dir_all(&dst).unwrap();
    }
    fs::remove_file(src.join("big.bin")).unwrap();
    ok(
        &repo,
        &["backup", "-q", "--host", "h2", src.to_str().unwrap()],
    );
    let st = json(&repo, &["stats"]);
    assert!(st["retired_packs"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["gc_grace_seconds"], 86400);
    // Past the grace period (here: none) the retired files go and nothing breaks.
    ok(&repo, &["gc", "--grace", "0s"]);
    assert_eq!(json(&repo, &["stats"])["retired_packs"], 0);
    let report = json(&repo, &["check", "--read-data"]);
    assert_eq!(
        report["packs"].as_u64().unwrap() as usize,
        pack_count(&repo)
    );
    assert_restores(&repo, work.path(), "h2", &src);
}

#[test]
fn restore_counts_only_files_it_wrote_and_names_each_failure_once() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let dst = work.path().join("dst");
    let inside = restored_path(&dst, &src);
    fs::create_dir_all(inside.parent().unwrap()).unwrap();
    // A file where the backup's top directory goes, kept by `--overwrite never`: everything
    // under it fails.
    fs::write(&inside, b"in the way").unwrap();
    let out = xstore(
        &repo,
        &[
            "--json",
            "restore",
            "--trusted-specials",
            "h1@latest",
            dst.to_str().unwrap(),
            "--overwrite",
            "never",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let summary = common::last_json(&out.stdout);
    assert_eq!(summary["files"], 0, "{summary}");
    let errors = summary["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    for e in errors {
        let (path, message) = (e["path"].as_str().unwrap(), e["message"].as_str().unwrap());
        assert!(
            !message.contains(path),
            "path said twice: {path}: {message}"
        );
    }
    assert_eq!(fs::read(&inside).unwrap(), b"in the way");
}

#[test]
fn excludes_that_match_everything_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let ids = snapshot_ids(&repo);
    for pattern in ["*", "src", src.to_str().unwrap()] {
        let out = xstore(
            &repo,
            &[
                "backup",
                "--host",
                "h1",
                "--exclude",
                pattern,
                src.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{pattern}: {}", stderr(&out));
        assert!(one_error_line(&out).contains("exclude"), "{pattern}");
    }
    assert_eq!(snapshot_ids(&repo), ids);
}

#[test]
fn a_config_with_other_chunker_parameters_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = healthy(work.path());
    let config = fs::read_to_string(repo.join("config")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["chunker"]["avg"] = serde_json::json!(131072);
    fs::write(repo.join("config"), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    for args in [
        vec!["backup", "--host", "h1", src.to_str().unwrap()],
        vec!["snapshots"],
        vec!["repair", "index"],
    ] {
        let out = xstore(&repo, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let line = one_error_line(&out);
        assert!(
            line.contains("created with") && line.contains("config"),
            "{line}"
        );
    }
    fs::write(repo.join("config"), config).unwrap();
    assert_restores(&repo, work.path(), "h1", &src);
}

/// Root restores into a target whose intermediate directory an unprivileged user owns; the
/// user swaps the directories restore creates for symlinks to a root-only directory, as fast
/// as it can. Nothing may be created, changed or removed in the root-only directory.
#[test]
fn a_root_restore_never_escapes_a_target_another_user_controls() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("needs root (restore as root, attacker as uid 65534)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    for d in 0..20 {
        let dir = src.join("d").join(format!("s{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    let secret = work.path().join("secret");
    fs::create_dir(&secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(secret.join("keep.txt"), b"root only").unwrap();
    let attacker_py = r#"
import os, sys
d, secret = sys.argv[1], sys.argv[2]
names = ["s%02d" % i for i in range(20)]
swaps = 0
while not os.path.exists(os.path.join(d, "stop")):
    for n in names:
        p = os.path.join(d, n)
        try:
            if os.path.islink(p):
                # Swap the real directory back, so the restore keeps going and races again.
                os.unlink(p)
                os.rename(p + ".moved", p)
            else:
                os.rename(p, p + ".moved")
                os.symlink(secret, p)
                swaps += 1
        except OSError:
            pass
print(swaps)
"#;
    for round in 0..3 {
        let target = work.path().join(format!("target{round}"));
        let owned = target.join("d");
        fs::create_dir_all(&owned).unwrap();
        for p in [&target, &owned] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        }
        let attacker = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c"])
            .arg(attacker_py)
            .arg(&owned)
            .arg(&secret)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let out = xstore(
            &repo,
            &[
                "restore",
                "--trusted-specials",
                "h@latest",
                target.to_str().unwrap(),
                "--path",
                &format!("{}/d", src.display()),
            ],
        );
        fs::write(owned.join("stop"), b"").unwrap();
        let swaps = attacker.wait_with_output().unwrap();
        let swaps: u64 = String::from_utf8_lossy(&swaps.stdout)
            .trim()
            .parse()
            .unwrap();
        eprintln!(
            "round {round}: {swaps} swaps, exit {:?}, {} paths refused",
            out.status.code(),
            stderr(&out).lines().count()
        );
        // The attacker must have raced for real, or this test proves nothing.
        assert!(
            swaps > 0,
            "round {round}: the attacker never swapped a directory"
        );
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "round {round}: {}",
            stderr(&out)
        );
        let listing: Vec<String> = fs::read_dir(&secret)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(listing, vec!["keep.txt".to_string()], "round {round}");
        assert_eq!(fs::read(secret.join("keep.txt")).unwrap(), b"root only");
        let m = fs::metadata(&secret).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700), "round {round}");
        // Whatever was restored holds the snapshot's bytes.
        for entry in walk(&owned) {
            if let Some(name) = entry.file_name().and_then(|n| n.to_str()) {
                if name.starts_with('f') && entry.is_file() {
                    let dir = entry
                        .parent()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy();
                    let d: usize = dir.trim_start_matches('s')[..2].parse().unwrap();
                    assert_eq!(
                        fs::read_to_string(&entry).unwrap(),
                        format!("{d}/{}", &name[1..])
                    );
                }
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(items) = fs::read_dir(&d) else {
            continue;
        };
        for item in items.flatten() {
            let p = item.path();
            let ft = item.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// kill -9 at pseudo-random moments of backup, forget, gc, rotate, repair and restore, 12 rounds;
/// after each round `check` passes, every snapshot ever reported committed and not expired
/// by a forget that reported success is present, and each restores to exactly the bytes it
/// was taken from.
#[test]
fn kill_9_anywhere_loses_no_committed_snapshot() {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};
    let work = tempfile::tempdir().unwrap();
    let (repo, tree, churn) = (
        work.path().join("repo"),
        work.path().join("tree"),
        work.path().join("churn"),
    );
    make_fixture(&tree, 5);
    fs::create_dir(&churn).unwrap();
    ok(
        &repo,
        &["init", "--pack-size-mib", "1", "--chunk-avg-kib", "64"],
    );
    // Backups enter hourly (3 kept) and rotate promotes to daily: expiry happens in
    // backups, rotations and forgets alike.
    ok(&repo, &["tiers", "--set", "hourly=3,daily=2"]);
    let paths = [
        tree.to_str().unwrap().to_string(),
        churn.to_str().unwrap().to_string(),
    ];
    // Snapshot id -> BLAKE3 of the churn file it must hold.
    let mut committed: BTreeMap<String, xstore::ChunkId> = BTreeMap::new();
    let mut expired: BTreeSet<String> = BTreeSet::new();
    // Committed ids, oldest first.
    let mut order: Vec<String> = Vec::new();
    let mut state: u64 = 0x853c_49e6_748f_ea9b;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 1000) as f64 / 1000.0
    };
    // Runs a command, killing it after `fraction` of `typical` unless it finished first.
    let killed_run = |args: &[&str], fraction: f64, typical: Duration| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + typical.mul_f64(fraction);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        child.wait_with_output().unwrap()
    };
    let timed = |args: &[&str]| {
        let t = Instant::now();
        ok(&repo, args);
        t.elapsed().max(Duration::from_millis(30))
    };
    let mut kills = 0;
    let mut typical: BTreeMap<&str, Duration> = BTreeMap::new();
    for round in 0..12u64 {
        let data = seeded_bytes(round, 3 << 20);
        fs::write(churn.join("churn.bin"), &data).unwrap();
        let mut backup = vec!["--json", "backup", "--host", "h"];
        backup.extend(paths.iter().map(String::as_str));
        if round == 0 {
            // Uninterrupted runs first: the kills below land within 80 % of these times.
            typical.insert("backup", timed(&backup[1..]));
            let id = json(&repo, &["snapshots"]).as_array().unwrap()[0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            order.push(id.clone());
            committed.insert(id, xstore::ChunkId::of(&data));
            typical.insert(
                "forget",
                timed(&["forget", "--host", "h", "--keep-last", "3"]),
            );
            typical.insert("gc", timed(&["gc", "--max-dead", "0%", "--grace", "0s"]));
            typical.insert("rotate", timed(&["rotate", "daily", "--all"]));
            typical.insert("repair", timed(&["repair", "index"]));
            let dst = work.path().join("calibrate");
            typical.insert(
                "restore",
                timed(&[
                    "restore",
                    "--trusted-specials",
                    &order[0].clone(),
                    dst.to_str().unwrap(),
                ]),
            );
            fs::remove_dir_all(&dst).unwrap();
        }
        let t_backup = typical["backup"];
        let out = killed_run(&backup, 0.8 * next(), t_backup);
        if out.status.success() {
            let id = common::last_json(&out.stdout)["id"]
                .as_str()
                .unwrap()
                .to_string();
            order.push(id.clone());
            committed.insert(id, xstore::ChunkId::of(&data));
        } else {
            kills += 1;
            // Killed after its commit point: the snapshot exists (never reported, but whole).
            for id in snapshot_ids(&repo) {
                if let std::collections::btree_map::Entry::Vacant(slot) = committed.entry(id) {
                    order.push(slot.key().clone());
                    slot.insert(xstore::ChunkId::of(&data));
                }
            }
        }
        let out = killed_run(
            &["forget", "--host", "h", "--keep-last", "3"],
            0.8 * next(),
            typical["forget"],
        );
        if out.status.success() {
            // Everything but the newest three present snapshots went.
            let present = snapshot_ids(&repo);
            for id in committed.keys() {
                if !present.contains(id) {
                    expired.insert(id.clone());
                }
            }
        } else {
            kills += 1;
        }
        for (op, args) in [
            ("gc", &["gc", "--max-dead", "0%", "--grace", "0s"][..]),
            ("rotate", &["rotate", "daily", "--all"][..]),
            ("repair", &["repair", "index"][..]),
        ] {
            if !killed_run(args, 0.8 * next(), typical[op]).status.success() {
                kills += 1;
            }
        }
        // A writer finishes whatever the kills interrupted.
        ok(&repo, &["gc", "--dry-run", "--max-dead", "0%"]);
        ok(&repo, &["pin", &order[order.len() - 1].clone()]);
        let check = xstore(&repo, &["check", "--read-data"]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&check)
        );
        let present = snapshot_ids(&repo);
        for id in &present {
            assert!(
                committed.contains_key(id),
                "round {round}: {id} was never committed"
            );
        }
        // forget (keep 3), rotation and the hourly tier (3) all keep the newest three,
        // killed or not: those are always present, and whatever is gone was expired.

        for id in order.iter().rev().take(3) {
            assert!(
                present.contains(id),
                "round {round}: committed {id} is gone"
            );
        }
        for id in committed.keys().filter(|id| !present.contains(*id)) {
            assert!(!order.iter().rev().take(3).any(|n| n == id));
        }
        // repair never brings back what a forget that reported success expired.
        for id in &expired {
            assert!(
                !present.contains(id),
                "round {round}: expired {id} came back"
            );
        }
        ok(&repo, &["unpin", &order[order.len() - 1].clone()]);
        // Restore killed mid-way, then again into the same target: exact.
        let newest = order[order.len() - 1].clone();
        let dst = work.path().join(format!("dst{round}"));
        if !killed_run(
            &[
                "restore",
                "--trusted-specials",
                &newest,
                dst.to_str().unwrap(),
            ],
            0.8 * next(),
            typical["restore"],
        )
        .status
        .success()
        {
            kills += 1;
        }
        ok(
            &repo,
            &[
                "restore",
                "--trusted-specials",
                &newest,
                dst.to_str().unwrap(),
            ],
        );
        assert_same_tree(&tree, &restored_path(&dst, &tree), false);
        let got = fs::read(restored_path(&dst, &churn).join("churn.bin")).unwrap();
        assert_eq!(
            xstore::ChunkId::of(&got),
            committed[&newest],
            "round {round}"
        );
        fs::remove_dir_all(&dst).unwrap();
    }
    // 72 runs, each killed within 80 % of its typical time: most must really be killed.
    assert!(kills >= 30, "only {kills} of 72 runs were killed");
    // Every surviving snapshot restores exactly.
    for id in snapshot_ids(&repo) {
        let dst = work.path().join(format!("final-{id}"));
        ok(
            &repo,
            &["restore", "--trusted-specials", &id, dst.to_str().unwrap()],
        );
        assert_same_tree(&tree, &restored_path(&dst, &tree), false);
        let got = fs::read(restored_path(&dst, &churn).join("churn.bin")).unwrap();
        assert_eq!(xstore::ChunkId::of(&got), committed[&id]);
    }
}

/// The issue's reproduction: files of a 6000-file directory are replaced by FIFOs while
/// `xstore backup --no-parent` runs. The backup finishes (a FIFO is a failed path, never a
/// blocking open), and the writer lock is free afterwards.
#[test]
fn fifos_swapped_in_during_a_backup_never_hang_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    for d in 0..20 {
        let dir = src.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..300 {
            fs::write(
                dir.join(format!("f{f:03}")),
                seeded_bytes(d * 1000 + f, 2_000),
            )
            .unwrap();
        }
    }
    ok(&repo, &["init"]);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (src, stop, tmp) = (src.clone(), stop.clone(), repo.join("packs/tmp"));
        std::thread::spawn(move || {
            // Start once the backup writes its first pack: it has listed directories whose
            // files it has not opened yet.
            while !stop.load(Ordering::Relaxed)
                && fs::read_dir(&tmp)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(true)
            {
                std::thread::yield_now();
            }
            let mut swapped = 0u64;
            // Newest names last: most are still unread when they turn into FIFOs.
            'outer: for d in (0..20).rev() {
                for f in (0..300).rev().step_by(7) {
                    if stop.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                    let p = src.join(format!("d{d:02}")).join(format!("f{f:03}"));
                    if fs::remove_file(&p).is_ok()
                        && rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &p,
                            rustix::fs::FileType::Fifo,
                            rustix::fs::Mode::from_raw_mode(0o644),
                            0,
                        )
                        .is_ok()
                    {
                        swapped += 1;
                    }
                }
            }
            swapped
        })
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &repo)
        .args([
            "backup",
            "--no-parent",
            "--host",
            "h",
            src.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A hang is what this test is for: fail after two minutes rather than never.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the backup blocked");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let swapped = swapper.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(swapped > 0);
    let err = stderr(&out);
    eprintln!(
        "{swapped} swapped, exit {:?}, {} failed paths",
        out.status.code(),
        err.lines().count()
    );
    match out.status.code() {
        Some(0) => assert!(err.is_empty(), "{err}"),
        Some(3) => {
            for line in err
                .lines()
                .filter(|l| l.starts_with("xstore: not backed up"))
            {
                // Opened as a FIFO, or caught between the swap's unlink and mknod.
                assert!(
                    line.contains("not a regular file") || line.contains("No such file"),
                    "{line}"
                );
            }
        }
        other => panic!("exit {other:?}: {err}"),
    }
    // The writer lock went with the process: the next writer gets it at once.
    ok(&repo, &["gc", "--dry-run"]);
    ok(&repo, &["pin", "h@latest"]);
}

/// A backup of a file it cannot read (as an unprivileged user) names that path once: one
/// `not backed up` line, no log line repeating it.
#[test]
fn a_failed_path_is_reported_once() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("needs root to run the backup as another user");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The build directory may not be reachable by other users: a copy of the binary is.
    let bin = work.path().join("xstore");
    fs::copy(env!("CARGO_BIN_EXE_xstore"), &bin).unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("readable"), b"yes").unwrap();
    fs::write(src.join("secret"), b"no").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(&repo).unwrap();
    std::os::unix::fs::chown(&repo, Some(65534), Some(65534)).unwrap();
    // Its key file where that user may write it.
    let keys = work.path().join("keys");
    fs::create_dir(&keys).unwrap();
    std::os::unix::fs::chown(&keys, Some(65534), Some(65534)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .env("XSTORE_KEY_DIR", &keys)
            .arg(&bin)
            .arg("-r")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = as_nobody(&["backup", "--host", "h", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let secret = src.canonicalize().unwrap().join("secret");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        vec![format!(
            "xstore: not backed up: {}: open: Permission denied (os error 13)",
            secret.display()
        )],
        "{err}"
    );
}

/// The target's own path: a symlink that a customer planted in a directory they own (or in a
/// world-writable one) is refused; an operator's symlink in a root-only directory is followed.
#[test]
fn a_restore_target_behind_a_planted_symlink_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("needs root (the customer's directory belongs to uid 65534)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (repo, src) = healthy(work.path());
    let secret = work.path().join("secret");
    fs::create_dir(&secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    // A customer's directory, and a world-writable one.
    let customer = work.path().join("customer");
    fs::create_dir(&customer).unwrap();
    std::os::unix::fs::chown(&customer, Some(65534), Some(65534)).unwrap();
    let shared = work.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    for dir in [&customer, &shared] {
        std::os::unix::fs::symlink(&secret, dir.join("restore")).unwrap();
        let target = dir.join("restore").join("here");
        let out = xstore(
            &repo,
            &[
                "restore",
                "--trusted-specials",
                "h1@latest",
                target.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let line = one_error_line(&out);
        assert!(line.contains("other users can change"), "{line}");
        assert_eq!(
            fs::read_dir(&secret).unwrap().count(),
            0,
            "wrote through {dir:?}"
        );
    }
    // The operator's own symlink (root-owned directory, 0755) is followed as given.
    let real = work.path().join("real");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, work.path().join("link")).unwrap();
    let target = work.path().join("link/restored");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "h1@latest",
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src, &restored_path(&real.join("restored"), &src), false);
}
