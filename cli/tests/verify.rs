//! Rolling verification: runs resume where the last stopped, a flipped bit is found and named,
//! the next backup stores the damaged chunk again, and a kill leaves progress consistent.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{json, ok, stderr, xstore};
use xstore_tests::{make_fixture, seeded_bytes};

fn times(repo: &Path) -> BTreeMap<String, i64> {
    xstore::Repository::open_read_only(repo)
        .unwrap()
        .pack_verification_times()
        .unwrap()
        .into_iter()
        .map(|(p, t)| (p.to_string(), t))
        .collect()
}

/// A repository of many small packs.
fn many_packs(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (repo, src) = (work.join("repo"), work.join("src"));
    make_fixture(&src, 5);
    ok(
        &repo,
        &["init", "--pack-size-mib", "1", "--chunk-avg-kib", "64"],
    );
    for round in 0..3u64 {
        fs::write(src.join("churn.bin"), seeded_bytes(round, 2 << 20)).unwrap();
        ok(
            &repo,
            &["backup", "-q", "--host", "h", src.to_str().unwrap()],
        );
    }
    (repo, src)
}

#[test]
fn two_budgeted_runs_cover_every_pack_exactly_once() {
    let work = tempfile::tempdir().unwrap();
    let (repo, _) = many_packs(work.path());
    let before = times(&repo);
    let sizes: Vec<u64> = xstore::pack_files(&repo)
        .unwrap()
        .iter()
        .map(|p| {
            fs::metadata(
                repo.join("packs")
                    .join(&p.to_string()[..2])
                    .join(format!("{p}.pack")),
            )
            .unwrap()
            .len()
        })
        .collect();
    assert!(sizes.len() >= 8, "{} packs", sizes.len());
    let total: u64 = sizes.iter().sum();
    let budget = total / 2 + sizes.iter().max().unwrap();
    let budget = budget.to_string();
    let first = json(&repo, &["verify", "--max-bytes", &budget]);
    assert_eq!(first["stopped_by"], "max-bytes", "{first}");
    let after_first = times(&repo);
    let run1: BTreeSet<&String> = after_first
        .iter()
        .filter(|(p, t)| before[*p] != **t)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(run1.len() as u64, first["run"]["packs"].as_u64().unwrap());
    assert_eq!(first["cycle_complete"], false);
    // The second run finishes the cycle, then spends the rest of its budget on the next one
    // (the first run's packs, oldest first), verifying no pack twice.
    let second = json(&repo, &["verify", "--max-bytes", &budget]);
    let after_second = times(&repo);
    let run2: BTreeSet<&String> = after_second
        .iter()
        .filter(|(p, t)| after_first[*p] != **t)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(run2.len() as u64, second["run"]["packs"].as_u64().unwrap());
    let rest: BTreeSet<&String> = after_first.keys().filter(|p| !run1.contains(p)).collect();
    assert!(
        rest.is_subset(&run2),
        "the cycle was not finished: {second}"
    );
    assert!(
        run2.len() > rest.len(),
        "the budget left went unused: {second}"
    );
    assert_eq!(second["stopped_by"], "max-bytes", "{second}");
    assert!(
        second["cycle_started_ns"].as_i64().unwrap() > first["cycle_started_ns"].as_i64().unwrap()
    );
    assert!(second["run"]["bytes"].as_u64().unwrap() <= budget.parse::<u64>().unwrap());
    // Every pack verified by the two runs: the oldest verification is one of the first
    // run's packs that the second did not reach again.
    let oldest = *after_second.values().min().unwrap();
    assert_eq!(second["oldest_verified_ns"].as_i64().unwrap(), oldest);
    assert!(oldest >= *after_first.values().min().unwrap());
    // A run without a budget verifies every pack once, across the cycle's end.
    let whole = json(&repo, &["verify"]);
    assert_eq!(
        whole["run"]["packs"].as_u64().unwrap(),
        sizes.len() as u64,
        "{whole}"
    );
    assert_eq!(whole["cycle_complete"], true, "{whole}");
    let ok_check = xstore(
        &repo,
        &["check-verify", "--warning", "1h", "--critical", "2h"],
    );
    assert_eq!(
        ok_check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok_check.stdout)
    );
    // Bad thresholds are the plugin's UNKNOWN (3), one status line naming the flag, never
    // clap's usage exit (2, which a monitoring system reads as CRITICAL).
    for (args, want) in [
        (
            &["check-verify", "--warning", "soon"][..],
            "--warning: invalid",
        ),
        (
            &["check-verify", "--warning", "2d", "--critical", "1d"][..],
            "--warning 2d is longer than --critical 1d",
        ),
        (&["check-verify", "--bogus"][..], "--bogus"),
    ] {
        let out = xstore(&repo, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stdout}");
        assert!(stdout.starts_with("XSTORE VERIFY UNKNOWN - "), "{stdout}");
        assert!(stdout.contains(want), "{args:?}: {stdout}");
    }
    let text = ok(&repo, &["metrics"]);
    assert!(text.contains("xstore_verify_oldest_seconds "), "{text}");
    assert!(text.contains("xstore_verify_damaged_blobs 0"), "{text}");
}

#[test]
fn a_flipped_bit_is_named_and_the_next_backup_stores_the_chunk_again() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = many_packs(work.path());
    // Flip one bit inside the stored bytes of a chunk of churn.bin.
    let snap = json(&repo, &["snapshots"])
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let churn = src.canonicalize().unwrap().join("churn.bin");
    let chunk = common::file_chunk(&repo, &snap, &churn, 1);
    let damaged_pack = common::damage_blob(&repo, &chunk);

    let out = xstore(&repo, &["--json", "verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = common::last_json(&out.stdout);
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["blob"], chunk.to_string());
    assert_eq!(damaged[0]["pack"], damaged_pack.to_string());
    let paths = damaged[0]["paths"].as_array().unwrap();
    assert!(
        paths
            .iter()
            .any(|p| p["snapshot"] == snap && p["path"] == churn.to_str().unwrap()),
        "{report}"
    );
    let line = stderr(&out);
    assert!(
        line.contains(&chunk.to_string()) && line.contains("churn.bin"),
        "{line}"
    );
    let plugin = xstore(&repo, &["check-verify"]);
    assert_eq!(
        plugin.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&plugin.stdout)
    );
    assert!(ok(&repo, &["metrics"]).contains("xstore_verify_damaged_blobs 1"));
    // The restore of that file fails now.
    let dst = work.path().join("broken");
    let r = xstore(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            &snap,
            dst.to_str().unwrap(),
        ],
    );
    assert_ne!(r.status.code(), Some(0));

    // The file is unchanged on disk, but the next backup reads it again and stores the
    // damaged chunk anew; the blob moves to the new copy with its references.
    let next = json(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    assert!(next["stats"]["new_blobs"].as_u64().unwrap() >= 1, "{next}");
    let handle = xstore::Repository::open_read_only(&repo).unwrap();
    assert!(handle.damaged_blobs().unwrap().is_empty());
    let moved = handle.blob_location(&chunk).unwrap().unwrap();
    assert_ne!(moved.pack, damaged_pack);
    drop(handle);
    let dst = work.path().join("healed");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            &snap,
            dst.to_str().unwrap(),
        ],
    );
    assert_eq!(
        fs::read(xstore_tests::restored_path(&dst, &src).join("churn.bin")).unwrap(),
        fs::read(&churn).unwrap()
    );
    // The damaged pack holds only dead bytes of that blob now: gc rewrites it away, and the
    // whole repository checks clean.
    ok(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    ok(&repo, &["gc", "--grace", "0s"]);
    let check = json(&repo, &["check", "--read-data"]);
    assert!(check["problems"].as_array().unwrap().is_empty(), "{check}");
    assert_eq!(xstore(&repo, &["check-verify"]).status.code(), Some(0));
}

#[test]
fn a_kill_while_recording_keeps_the_previous_progress() {
    let work = tempfile::tempdir().unwrap();
    let (repo, _) = many_packs(work.path());
    let before = times(&repo);
    let out = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &repo)
        .env("XSTORE_FAILPOINT", "verify-record")
        .args(["verify"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(times(&repo), before, "a killed recording changed the index");
    ok(&repo, &["check"]);
    // Killed at any moment: what is recorded is a prefix of the order, never damage.
    for delay_ms in [5u64, 20, 60] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .args(["-q", "verify"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        ok(&repo, &["check"]);
    }
    let report = json(&repo, &["verify"]);
    assert!(report["damaged"].as_array().unwrap().is_empty());
    assert_eq!(report["cycle_complete"], true, "{report}");
}

/// A gc whose grace period is shorter than a running verify retires and deletes packs that
/// verify's view of the index still lists: verify skips them (exit 0, nothing damaged), it
/// does not report them as damage.
#[test]
fn packs_a_gc_deleted_during_a_verify_are_not_damage() {
    let work = tempfile::tempdir().unwrap();
    let (repo, _) = many_packs(work.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xstore"));
    cmd.arg("--repo").arg(&repo).args(["--json", "verify"]);
    let paused = common::Paused::start(cmd, "verify-opened", &work.path().join("pause"));
    ok(&repo, &["forget", "--host", "h", "--keep-last", "1"]);
    for _ in 0..2 {
        ok(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    }
    let out = paused.resume();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = common::last_json(&out.stdout);
    assert_eq!(report["damaged"], serde_json::json!([]), "{report}");
}
