//! Clock safety (ARCHITECTURE.md, "Trust boundary"): a backup whose clock reads earlier than
//! the host's newest snapshot commits nothing, and a snapshot dated in the future is a
//! check-freshness problem that names itself.
#![allow(clippy::unwrap_used)]

use xstore_fleet::monitor::{CheckState, FreshnessOptions, FreshnessTarget};

const DAY_NS: i64 = 86_400 * 1_000_000_000;

#[test]
fn a_clock_behind_the_newest_snapshot_commits_nothing_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"content").unwrap();
    let repo = xstore::Repository::init(&tmp.path().join("repo"), &Default::default()).unwrap();
    let opts = |time_ns| xstore::BackupOptions {
        time_ns,
        ..xstore::BackupOptions::new(xstore_tests::host_name("h"), vec![src.clone()])
    };
    // The clock was a year ahead once.
    let ahead = xstore::now_ns() + 365 * DAY_NS;
    let future = repo
        .backup(&xstore::LocalSource, &opts(Some(ahead)))
        .unwrap();
    let err = repo.backup(&xstore::LocalSource, &opts(None)).unwrap_err();
    assert!(
        matches!(err, xstore::BackupError::ClockBehind { .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("host h: the clock ("), "{err}");
    assert_eq!(repo.snapshots().unwrap().len(), 1);

    let target = FreshnessTarget {
        host: xstore_tests::host_name("h"),
        account: None,
        warning_age: None,
        critical_age: None,
    };
    let report = xstore_fleet::monitor::freshness(
        &repo,
        std::slice::from_ref(&target),
        &FreshnessOptions::default(),
    )
    .unwrap();
    assert_eq!(report.state, CheckState::Critical);
    let problems = &report.hosts[0].problem;
    assert!(problems.contains("in the future"), "{problems}");

    // Once the operator forgets it, backups commit again and the host is OK.
    let plan = repo.plan_forget_snapshot(&future.id).unwrap();
    repo.apply_plan(&plan).unwrap();
    repo.backup(&xstore::LocalSource, &opts(None)).unwrap();
    let report = xstore_fleet::monitor::freshness(
        &repo,
        std::slice::from_ref(&target),
        &FreshnessOptions::default(),
    )
    .unwrap();
    assert_eq!(report.state, CheckState::Ok, "{}", report.hosts[0].problem);
}

/// A commit never removes the snapshot it adds: a backup dated before every snapshot of a
/// full tier (an import of an old point) would be trimmed by its own tier entry, so it
/// commits nothing and says why.
#[test]
fn a_commit_never_trims_the_snapshot_it_adds() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"content").unwrap();
    let repo = xstore::Repository::init(&tmp.path().join("repo"), &Default::default()).unwrap();
    let at = |time_ns| xstore::BackupOptions {
        time_ns: Some(time_ns),
        ..xstore::BackupOptions::new(xstore_tests::host_name("h"), vec![src.clone()])
    };
    let base = xstore::now_ns() - 10 * DAY_NS;
    // The default hourly tier keeps 6.
    for i in 0..6 {
        repo.backup(&xstore::LocalSource, &at(base + i * 3_600_000_000_000))
            .unwrap();
    }
    let err = repo
        .backup(&xstore::LocalSource, &at(base - DAY_NS))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("would be trimmed by its own tier entry"),
        "{err}"
    );
    assert_eq!(repo.snapshots().unwrap().len(), 6);
    // Its packs were sealed before the commit refused: the journal names them, and the next
    // writable open removes them.
    let path = repo.path().to_path_buf();
    drop(repo);
    let repo = xstore::Repository::open(&path).unwrap();
    assert!(xstore_tests::journal_is_empty(&path));
    assert!(repo.check(Default::default()).unwrap().problems.is_empty());
}
