//! Clock safety (ARCHITECTURE.md, "Trust boundary"): a backup whose clock reads earlier than
//! the host's newest snapshot commits nothing, and a snapshot dated in the future is a
//! check-freshness problem that names itself.
#![allow(clippy::unwrap_used)]

use xstore::ops::monitor::{CheckState, FreshnessOptions, FreshnessTarget};

const DAY_NS: i64 = 86_400 * 1_000_000_000;

#[test]
fn a_clock_behind_the_newest_snapshot_commits_nothing_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"content").unwrap();
    let repo = xstore::Repository::init(&tmp.path().join("repo"), &Default::default()).unwrap();
    let opts = |time_ns| xstore::BackupOptions {
        host: "h".into(),
        paths: vec![src.clone()],
        time_ns,
        ..Default::default()
    };
    // The clock was a year ahead once.
    let ahead = xstore::now_ns() + 365 * DAY_NS;
    let future = repo
        .backup(&xstore::LocalSource, &opts(Some(ahead)))
        .unwrap();
    let err = repo.backup(&xstore::LocalSource, &opts(None)).unwrap_err();
    assert!(matches!(err, xstore::Error::ClockBehind { .. }), "{err}");
    assert!(err.to_string().starts_with("host h: the clock ("), "{err}");
    assert_eq!(repo.snapshots().unwrap().len(), 1);

    let target = FreshnessTarget {
        host: "h".into(),
        account: None,
        warning_age: None,
        critical_age: None,
    };
    let report = repo
        .freshness(std::slice::from_ref(&target), &FreshnessOptions::default())
        .unwrap();
    assert_eq!(report.state, CheckState::Critical);
    let problems = &report.hosts[0].problem;
    assert!(problems.contains("in the future"), "{problems}");

    // Once the operator forgets it, backups commit again and the host is OK.
    let plan = repo.plan_forget_snapshot(&future.id).unwrap();
    repo.apply_plan(&plan).unwrap();
    repo.backup(&xstore::LocalSource, &opts(None)).unwrap();
    let report = repo
        .freshness(std::slice::from_ref(&target), &FreshnessOptions::default())
        .unwrap();
    assert_eq!(report.state, CheckState::Ok, "{}", report.hosts[0].problem);
}
