//! Crash consistency: SIGKILL a backup at pseudo-random moments, then require that `check`
//! passes, that every committed snapshot restores exactly, and that the next backup works.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{json, ok, xstore};
use std::os::unix::fs::MetadataExt;

use xstore::ChunkId;
use xstore_tests::{assert_same_tree, make_fixture, restored_path, seeded_bytes};

fn set_mtime(p: &std::path::Path, secs: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
}

const ROUNDS: u64 = 24;

#[test]
fn sigkill_during_backup_never_corrupts() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    // Enough data for a backup to take a little while, in many packs.
    for i in 0..6 {
        make_fixture(&src.join(format!("tree{i}")), 100 + i);
    }
    ok(
        &repo,
        &["init", "--pack-size-mib", "1", "--chunk-avg-kib", "64"],
    );
    let full_backup = [
        "backup",
        "--host",
        "h",
        "--no-parent",
        src.to_str().unwrap(),
    ];
    ok(&repo, &full_backup);
    // Each round brings new content, so every run writes packs as well as reading.
    let churn = |round: u64| seeded_bytes(1000 + round, 6 << 20);
    std::fs::write(src.join("churn.bin"), churn(999)).unwrap();
    // Time one run like the ones we kill, to spread kill times across it.
    let t = Instant::now();
    ok(&repo, &full_backup);
    let mut full = t.elapsed().max(Duration::from_millis(50));
    let mut versions: Vec<ChunkId> = vec![ChunkId::of(&churn(999))];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut killed = 0;
    for round in 0..ROUNDS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Kill within the first 80 % of a run. The calibration run may have been slow (the
        // machine is shared): a run that finishes before its kill shortens the estimate.
        let delay = full.mul_f64(0.8 * (state % 1000) as f64 / 1000.0);
        let data = churn(round);
        versions.push(ChunkId::of(&data));
        std::fs::write(src.join("churn.bin"), data).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .arg("-q")
            .args(full_backup)
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        } else {
            full = full.min(delay.max(Duration::from_millis(50)));
        }
        child.wait().unwrap();
        // Recovery happens on the next writable open; readers must already see a consistent
        // repository (at most unreferenced pack bytes).
        let check = xstore(&repo, &["check"]);
        assert!(
            check.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    assert!(
        killed >= ROUNDS / 2,
        "only {killed} of {ROUNDS} runs were killed mid-way"
    );
    // Failpoints: crash exactly before and after the index commit.
    for point in ["before-commit", "after-commit"] {
        let status = Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .env("XSTORE_FAILPOINT", point)
            .arg("-q")
            .args(full_backup)
            .status()
            .unwrap();
        assert!(!status.success());
        ok(&repo, &["check"]);
    }
    // Every committed snapshot restores exactly (churn.bin as one of the versions written).
    std::fs::remove_file(src.join("churn.bin")).unwrap();
    let snaps = json(&repo, &["snapshots"]);
    for s in snaps.as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let dst = work.path().join(format!("dst-{id}"));
        ok(
            &repo,
            &["restore", "--trusted-specials", id, dst.to_str().unwrap()],
        );
        let restored = restored_path(&dst, &src);
        if let Ok(bytes) = std::fs::read(restored.join("churn.bin")) {
            assert!(
                versions.contains(&ChunkId::of(&bytes)),
                "snapshot {id}: churn.bin is not a version that was written"
            );
            std::fs::remove_file(restored.join("churn.bin")).unwrap();
        }
        // Removing churn.bin changed the directory mtimes on both sides differently.
        let m = std::fs::metadata(&src).unwrap();
        set_mtime(&restored, m.mtime(), m.mtime_nsec());
        assert_same_tree(&src, &restored, false);
        std::fs::remove_dir_all(&dst).unwrap();
    }
    // A snapshot copy interrupted mid-write leaves a temporary file; recovery removes it.
    std::fs::write(repo.join("snapshots/.deadbeef.json.tmp4242"), b"{ half").unwrap();
    // The next writer recovers: no leftover packs, a clean full check, and backups work.
    ok(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    let report = json(&repo, &["check", "--read-data"]);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let on_disk = xstore::pack_files(&repo).unwrap().len() as u64;
    let leftovers: Vec<_> = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        on_disk,
        report["packs"].as_u64().unwrap(),
        "uncommitted packs were not removed"
    );
}
