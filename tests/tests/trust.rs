//! Trust at library level: a backup cannot be hung by a FIFO swapped in for a file, and a
//! read-only handle opened before gc keeps restoring exactly after gc rewrote its packs.
#![allow(clippy::unwrap_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use xstore::{BackupOptions, LocalSource, ParentChoice, Repository, SnapshotStatus, TierChoice};
use xstore_tests::RestoreNow;
use xstore_tests::{
    assert_same_tree, forget_keep_last, gc_all_dead, make_fixture, open_hook, restored_path,
    seeded_bytes,
};

/// Every file whose name ends in `7` turns into a FIFO between the listing and the open.
fn swap_for_fifo(path: &Path) -> io::Result<()> {
    if path.to_string_lossy().ends_with('7') {
        std::fs::remove_file(path)?;
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )?;
    }
    Ok(())
}

#[test]
fn a_fifo_swapped_in_mid_backup_is_a_failed_path_not_a_hang() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..600 {
        std::fs::write(src.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let repo_path = work.path().join("repo");
    let (tx, rx) = mpsc::channel();
    let src2 = src.clone();
    std::thread::spawn(move || {
        let repo = Repository::init(&repo_path, &Default::default()).unwrap();
        let opts = BackupOptions {
            parent: ParentChoice::None,
            tier: TierChoice::None,
            ..xstore::BackupOptions::new(xstore_tests::host_name("h"), vec![src2])
        };
        let _ = tx.send(
            repo.backup(&open_hook(swap_for_fifo), &opts)
                .map(|s| (s, repo)),
        );
    });
    // A hang is the failure this test exists for: give up after a minute instead of never.
    let (snap, repo) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the backup blocked on a FIFO")
        .unwrap();
    assert_eq!(snap.status, SnapshotStatus::Partial);
    let mut failed: Vec<String> = snap.errors.iter().map(|e| e.path.clone()).collect();
    failed.sort();
    let mut want: Vec<String> = (0..600)
        .filter(|i| i % 10 == 7)
        .map(|i| {
            src.canonicalize()
                .unwrap()
                .join(format!("f{i}"))
                .display()
                .to_string()
        })
        .collect();
    want.sort();
    assert_eq!(failed, want);
    assert!(
        snap.errors
            .iter()
            .all(|e| e.message.contains("not a regular file")),
        "{:?}",
        snap.errors[0]
    );
    assert_eq!(snap.stats.files, 600 - want.len() as u64);
    // The writer is free again: the lock was released when the backup returned.
    drop(repo);
}

#[test]
fn a_reader_opened_before_gc_restores_exactly_after_it_twenty_rounds() {
    let work = tempfile::tempdir().unwrap();
    let (src, keep_src) = (work.path().join("src"), work.path().join("keep"));
    make_fixture(&keep_src, 20);
    std::fs::create_dir(&src).unwrap();
    let repo_path = work.path().join("repo");
    let repo = xstore_tests::small_repo(&repo_path);
    let backup = |host: &str, path: &PathBuf| {
        repo.backup(
            &LocalSource,
            &BackupOptions {
                tier: TierChoice::None,
                ..xstore::BackupOptions::new(
                    xstore_tests::host_name(host),
                    vec![path.clone(), keep_src.clone()],
                )
            },
        )
        .unwrap()
    };
    let kept = backup("keep", &src);
    for round in 0..20u64 {
        std::fs::write(src.join("churn.bin"), seeded_bytes(round, 700_000)).unwrap();
        backup("churn", &src);
        forget_keep_last(&repo, "churn", 1);
        let reader = Repository::open_read_only(&repo_path).unwrap();
        let plan = repo
            .plan_gc(&xstore::GcOptions {
                max_dead_percent: Some(0.0),
                ..Default::default()
            })
            .unwrap();
        let report = repo.gc(plan, None).unwrap();
        assert_eq!(report.retired_deleted, 0, "{report:#?}");
        let dst = work.path().join(format!("dst{round}"));
        let summary = reader
            .restore_now(&kept, &dst, &xstore_tests::exact_restore())
            .unwrap();
        assert!(
            summary.errors.is_empty(),
            "round {round}: {:?}",
            summary.errors
        );
        assert_same_tree(&keep_src, &restored_path(&dst, &keep_src), false);
        std::fs::remove_dir_all(&dst).unwrap();
        // check and du through the same old handle also still work.
        let report = reader
            .check(xstore::CheckOptions {
                read_data: true,
                progress: None,
            })
            .unwrap();
        assert!(
            report.problems.is_empty(),
            "round {round}: {:?}",
            report.problems
        );
        reader.usage_of(std::slice::from_ref(&kept)).unwrap();
    }
    // Past the grace period the files go, and a fresh reader restores from the new packs.
    let report = gc_all_dead(&repo);
    assert!(report.retired_deleted > 0, "{report:#?}");
    let reader = Repository::open_read_only(&repo_path).unwrap();
    let dst = work.path().join("final");
    let summary = reader
        .restore_now(&kept, &dst, &xstore_tests::exact_restore())
        .unwrap();
    assert!(summary.errors.is_empty());
    assert_same_tree(&keep_src, &restored_path(&dst, &keep_src), false);
    assert!(repo.check(Default::default()).unwrap().problems.is_empty());
}

#[test]
fn gc_merges_small_packs_so_their_number_does_not_grow_with_commits() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_fixture(&src, 1);
    let repo = xstore_tests::small_repo(&work.path().join("repo"));
    let mut snaps = Vec::new();
    for round in 0..40u64 {
        std::fs::write(src.join("small.txt"), format!("round {round}\n")).unwrap();
        snaps.push(xstore_tests::backup_untiered(&repo, "h", &[&src]));
    }
    let before = xstore::pack_files(repo.path()).unwrap().len();
    assert!(before > 2 * xstore::MERGE_SMALL_PACKS, "{before}");
    let report = gc_all_dead(&repo);
    assert!(
        report.small_packs_merged as usize >= xstore::MERGE_SMALL_PACKS,
        "{report:#?}"
    );
    let after = xstore::pack_files(repo.path()).unwrap().len();
    assert!(after < before / 4, "{before} -> {after}");
    // Merging again with nothing new changes nothing.
    let again = gc_all_dead(&repo);
    assert_eq!(again.packs_written, 0, "{again:#?}");
    assert!(repo
        .check(xstore::CheckOptions {
            read_data: true,
            progress: None
        })
        .unwrap()
        .problems
        .is_empty());
    let last = snaps.last().unwrap();
    let dst = work.path().join("dst");
    let summary = repo
        .restore_now(last, &dst, &xstore_tests::exact_restore())
        .unwrap();
    assert!(summary.errors.is_empty());
    assert_same_tree(&src, &restored_path(&dst, &src), false);
}

#[test]
fn the_index_repair_replaces_is_kept_for_the_grace_period() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_fixture(&src, 3);
    let repo_path = work.path().join("repo");
    let snap = {
        let repo = xstore_tests::small_repo(&repo_path);
        xstore_tests::backup_untiered(&repo, "h", &[&src])
    };
    let replaced = |path: &Path| -> Vec<String> {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("index.old"))
            .collect()
    };
    // A reader of the old index: RocksDB opens table files lazily (on a large index, past
    // the ones it preloads at open), so the replaced index must outlive it.
    let reader = Repository::open_read_only(&repo_path).unwrap();
    let report = Repository::repair_index(&repo_path).unwrap();
    assert_eq!(report.snapshots, 1);
    assert_eq!(replaced(&repo_path).len(), 1, "{:?}", replaced(&repo_path));
    let dst = work.path().join("dst");
    let summary = reader
        .restore_now(
            &reader.snapshot(&snap.id).unwrap(),
            &dst,
            &xstore_tests::exact_restore(),
        )
        .unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_same_tree(&src, &restored_path(&dst, &src), false);
    drop(reader);
    // A gc within the grace period keeps it; past it (here: none) it goes.
    let repo = Repository::open(&repo_path).unwrap();
    let report = repo
        .gc(repo.plan_gc(&Default::default()).unwrap(), None)
        .unwrap();
    assert_eq!(report.replaced_indexes_deleted, 0);
    assert_eq!(replaced(&repo_path).len(), 1);
    let report = gc_all_dead(&repo);
    assert_eq!(report.replaced_indexes_deleted, 1);
    assert!(replaced(&repo_path).is_empty());
    assert!(repo.check(Default::default()).unwrap().problems.is_empty());
}

/// `repair index` brings a snapshot back only whole, and a part shared by several snapshots
/// (walked once) counts against each of them: with a pack of a shared file's data gone, the
/// newer snapshot that merely reuses that directory is left out as well, not rebuilt with a
/// hole.
#[test]
fn repair_leaves_out_every_snapshot_that_shares_a_lost_part() {
    let work = tempfile::tempdir().unwrap();
    let shared = work.path().join("shared");
    let other = work.path().join("other");
    for d in [&shared, &other] {
        std::fs::create_dir(d).unwrap();
    }
    // Several packs of 1 MiB: the middle of this file is in a pack of data only.
    std::fs::write(shared.join("big.bin"), seeded_bytes(5, 4 << 20)).unwrap();
    std::fs::write(other.join("a"), b"first").unwrap();
    let path = work.path().join("repo");
    let repo = xstore_tests::small_repo(&path);
    let first = xstore_tests::backup_untiered(&repo, "h", &[&shared, &other]);
    std::fs::write(other.join("a"), b"second").unwrap();
    let second = xstore_tests::backup_untiered(&repo, "h", &[&shared, &other]);
    let untouched_dir = work.path().join("untouched");
    std::fs::create_dir(&untouched_dir).unwrap();
    std::fs::write(untouched_dir.join("f"), b"intact").unwrap();
    let intact = xstore_tests::backup_untiered(&repo, "other-host", &[&untouched_dir]);

    let node = repo
        .lookup(&second, &format!("{}/big.bin", shared.display()))
        .unwrap();
    let xstore::Node::Entry(entry) = node else {
        panic!("not a file")
    };
    let chunks = repo.file_chunks(&entry).unwrap();
    let middle = chunks[chunks.len() / 2].id;
    let pack = repo.blob_location(&middle).unwrap().unwrap().pack;
    for s in [&first, &second, &intact] {
        assert_ne!(repo.blob_location(&s.root).unwrap().unwrap().pack, pack);
    }
    drop(repo);
    let hex = pack.to_string();
    std::fs::remove_file(path.join(format!("packs/{}/{hex}.pack", &hex[..2]))).unwrap();
    std::fs::remove_dir_all(path.join("index")).unwrap();

    let report = Repository::repair_index(&path).unwrap();
    assert_eq!(report.snapshots, 1, "{report:?}");
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    let named = |s: &xstore::Snapshot| {
        report
            .skipped
            .iter()
            .find(|line| line.contains(&s.id.short()))
            .cloned()
            .unwrap_or_default()
    };
    assert!(named(&first).contains("not whole"), "{report:?}");
    assert!(
        named(&second).contains("shares a damaged part"),
        "{report:?}"
    );
    let repo = Repository::open(&path).unwrap();
    let ids: Vec<_> = repo.snapshots().unwrap().iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![intact.id]);
    assert!(repo.check(Default::default()).unwrap().problems.is_empty());
}
