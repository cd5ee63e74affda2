//! Crash consistency of rotate, forget, gc and compact: each is killed at every failpoint of its write
//! order and by SIGKILL at pseudo-random moments, 21 rounds each. After every round `check
//! --read-data` passes and the newest snapshot restores exactly; at the end one gc reclaims
//! every dead byte and leaves no stray file.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{json, ok, xstore};
use xstore_tests::{assert_same_tree, make_fixture, restored_path, seeded_bytes};

const ROUNDS: u64 = 21;

fn run_killed(repo: &Path, args: &[&str], failpoint: Option<&str>, delay: Duration) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xstore"));
    cmd.env("XSTORE_REPO", repo).arg("-q").args(args);
    match failpoint {
        Some(p) => cmd.env("XSTORE_FAILPOINT", p),
        None => cmd.env_remove("XSTORE_FAILPOINT"),
    };
    let mut child = cmd.spawn().unwrap();
    if failpoint.is_none() {
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
    }
    !child.wait().unwrap().success()
}

fn crash_rounds(op: &[&str], prepare: &[&str], failpoints: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 40);
    ok(
        &repo,
        &["init", "--pack-size-mib", "1", "--chunk-avg-kib", "64"],
    );
    ok(&repo, &["tiers", "--set", "hourly=3,daily=2"]);
    let s = src.to_str().unwrap().to_string();
    let backup = ["backup", "-q", "--host", "web1", s.as_str()];
    let churn = |round: u64| {
        std::fs::write(src.join("churn.bin"), seeded_bytes(round, 600_000)).unwrap();
        std::fs::write(
            src.join(format!("added-{round}.bin")),
            seeded_bytes(round + 500, 200_000),
        )
        .unwrap();
    };
    for r in 0..3 {
        churn(1000 + r);
        ok(&repo, &backup);
    }
    // Time one uninterrupted run to spread the SIGKILLs across it.
    churn(999);
    ok(&repo, &backup);
    if !prepare.is_empty() {
        ok(&repo, prepare);
    }
    let t = Instant::now();
    ok(&repo, op);
    let full = t.elapsed().max(Duration::from_millis(20));
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut crashed = 0;
    for round in 0..ROUNDS {
        churn(round);
        ok(&repo, &backup);
        if !prepare.is_empty() {
            ok(&repo, prepare);
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let slot = (round as usize) % (failpoints.len() + 1);
        let failpoint = failpoints.get(slot).copied();
        let delay = full.mul_f64((state % 1000) as f64 / 1000.0);
        if run_killed(&repo, op, failpoint, delay) {
            crashed += 1;
        }
        // Readers see a consistent repository at once; the next writer finishes recovery.
        let check = xstore(&repo, &["check", "--read-data"]);
        assert!(
            check.status.success(),
            "{op:?} round {round} ({failpoint:?}): {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let dst = work.path().join(format!("dst-{round}"));
        ok(
            &repo,
            &[
                "restore",
                "--trusted-specials",
                "web1@latest",
                dst.to_str().unwrap(),
            ],
        );
        assert_same_tree(&src, &restored_path(&dst, &src), false);
        std::fs::remove_dir_all(&dst).unwrap();
    }
    assert!(
        crashed >= ROUNDS * 2 / 3,
        "{op:?}: only {crashed} of {ROUNDS} runs crashed"
    );
    // The next runs complete; one gc then reclaims every dead byte.
    ok(&repo, op);
    ok(&repo, &["gc", "--max-dead", "0%", "--grace", "0s"]);
    let stats = json(&repo, &["stats"]);
    assert_eq!(stats["dead_bytes"], 0, "{stats}");
    assert_eq!(stats["unreferenced_blobs"], 0, "{stats}");
    let report = json(&repo, &["check", "--read-data"]);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    // No stray packs, snapshot copies equal to the index, no marker left.
    assert_eq!(
        xstore::pack_files(&repo).unwrap().len() as u64,
        report["packs"].as_u64().unwrap()
    );
    let ids: BTreeSet<String> = json(&repo, &["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}.json", s["id"].as_str().unwrap()))
        .collect();
    let copies: BTreeSet<String> = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids, copies);
    assert!(!repo.join("locks/snapshot-copies-stale").exists());
}

#[test]
fn sigkill_during_rotate() {
    crash_rounds(
        &["rotate", "daily", "--all"],
        &[],
        &["before-commit", "after-commit", "mid-copies"],
    );
}

#[test]
fn sigkill_during_forget() {
    crash_rounds(
        &["forget", "--keep-last", "2"],
        &[],
        &["before-commit", "after-commit", "mid-copies"],
    );
}

#[test]
fn sigkill_during_gc() {
    crash_rounds(
        &["gc", "--max-dead", "0%", "--grace", "0s"],
        &["forget", "--keep-last", "2"],
        &[
            "gc-after-copy",
            "before-commit",
            "after-commit",
            "gc-mid-delete",
        ],
    );
}

#[test]
fn sigkill_during_compact() {
    crash_rounds(
        &["compact", "--min-age", "0s", "--level", "9"],
        &[],
        &["gc-after-copy", "before-commit", "after-commit"],
    );
}
