//! Old repositories keep reading and writing: a repository written by an earlier build
//! (tests/fixtures/format1-2026-11, see its README) is restored exactly, then written to
//! (backup, pin, forget, gc, repair) by this build, and checked.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use xstore::{BackupOptions, LocalSource, Repository, SnapshotId, TierChoice};
use xstore_tests::RestoreNow;

const FIRST: &str = "3b67511f19c6b8f11c080729148e80e0fd73e25fe1c9e06ebb9bed7061bf2071";
const SECOND: &str = "2bae9410b5199ba52025178c91f5054c5be395dfb792bd3697746f96d68d6433";
const OTHER_HOST: &str = "cc900ea338a8ba51e418e892a8019e6b82babdb10523596e084e0467f140d6b0";

fn ids_of(repo: &Repository) -> Vec<String> {
    repo.snapshots()
        .unwrap()
        .iter()
        .map(|s| s.id.to_string())
        .collect()
}

/// `host_snapshots` lists, host by host, exactly what filtering every record gives (the
/// per-host keys when the index has them, the fallback scan when it does not).
fn assert_host_listings(repo: &Repository) {
    let all = repo.snapshots().unwrap();
    let mut hosts: Vec<&str> = all.iter().map(|s| s.host.as_str()).collect();
    hosts.dedup();
    assert!(hosts.len() >= 2, "{hosts:?}");
    for h in hosts {
        let want: Vec<String> = all
            .iter()
            .filter(|s| s.host == h)
            .map(|s| s.id.to_string())
            .collect();
        let got: Vec<String> = repo
            .host_snapshots(&xstore_tests::host_name(h))
            .unwrap()
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        assert_eq!(got, want, "host {h}");
    }
    assert!(repo
        .host_snapshots(&xstore_tests::host_name("never-seen"))
        .unwrap()
        .is_empty());
    let mut names: Vec<String> = all.iter().map(|s| s.host.to_string()).collect();
    names.sort();
    names.dedup();
    assert_eq!(repo.hosts().unwrap(), names);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let dest = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &dest);
        } else {
            std::fs::copy(item.path(), &dest).unwrap();
        }
    }
}

fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format1-2026-11/repo");
    copy_dir(&from, &repo);
    std::fs::create_dir_all(repo.join("packs/tmp")).unwrap();
    (work, repo)
}

fn assert_restores_as_written(repo: &Repository, id: &str, version: u8, target: &Path) {
    let snap = repo.snapshot(&id.parse::<SnapshotId>().unwrap()).unwrap();
    let summary = repo
        .restore_now(&snap, target, &xstore_tests::exact_restore())
        .unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let data = target.join("tmp/fxdata/data");
    let a = std::fs::read(data.join("a.txt")).unwrap();
    assert_eq!(a, format!("old format v{version}\n").as_bytes());
    let mode = std::fs::metadata(data.join("a.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
    let big: Vec<u8> = (0..300_000u32).map(|i| ((i * 7) % 251) as u8).collect();
    assert_eq!(std::fs::read(data.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read(data.join("sub/empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read_link(data.join("sub/link")).unwrap(),
        Path::new("../a.txt")
    );
    assert_eq!(data.join("c.txt").exists(), version == 2);
    if version == 2 {
        assert_eq!(std::fs::read(data.join("c.txt")).unwrap(), b"added\n");
    }
}

#[test]
fn an_old_repository_reads_exactly() {
    let (work, path) = fixture();
    let repo = Repository::open_read_only(&path).unwrap();
    let ids = ids_of(&repo);
    assert_eq!(ids, vec![FIRST, SECOND, OTHER_HOST]);
    for (i, (id, version)) in [(FIRST, 1), (SECOND, 2), (OTHER_HOST, 2)]
        .iter()
        .enumerate()
    {
        assert_restores_as_written(&repo, id, *version, &work.path().join(format!("r{i}")));
    }
    let report = repo.check(Default::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Read-only, the old index has no per-host keys: the listing falls back to a scan.
    assert_host_listings(&repo);
}

#[test]
fn an_old_repository_takes_writes_gc_and_repair() {
    let (work, path) = fixture();
    let src = work.path().join("new");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("n.bin"), xstore_tests::seeded_bytes(3, 200_000)).unwrap();
    {
        let repo = Repository::open(&path).unwrap();
        // The writable open gave every old record its per-host key.
        assert_host_listings(&repo);
        repo.backup(
            &LocalSource,
            &BackupOptions {
                tier: TierChoice::None,
                ..xstore::BackupOptions::new(xstore_tests::host_name("new1"), vec![src.clone()])
            },
        )
        .unwrap();
        // Relabelling a record written before record blobs existed.
        repo.set_pinned(&SECOND.parse().unwrap(), true).unwrap();
        let applied = xstore_tests::forget_keep_last(&repo, "old1", 1);
        assert_eq!(applied.released.snapshots, 1);
        xstore_tests::gc_all_dead(&repo);
        let report = repo.check(Default::default()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_host_listings(&repo);
    }
    let report = Repository::repair_index(&path).unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");
    let repo = Repository::open(&path).unwrap();
    let ids = ids_of(&repo);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(!ids.contains(&FIRST.to_string()));
    assert!(repo.snapshot(&SECOND.parse().unwrap()).unwrap().pinned);
    assert_restores_as_written(&repo, SECOND, 2, &work.path().join("after"));
    assert!(repo.check(Default::default()).unwrap().problems.is_empty());
    assert_host_listings(&repo);
}

/// Where the kind-clash fixture's data stood when it was written (paths inside it).
const KIND_DATA: &str = "/tmp/fxkind";

/// Writes `tests/fixtures/kind-clash-2026-12` (see its README) with the CLI named by
/// `XSTORE_OLD_BIN`, a build from before the server checked blob kinds:
/// `XSTORE_OLD_BIN=… cargo test --release -p xstore-tests --test fixtures -- --ignored`.
#[test]
#[ignore]
fn make_kind_clash_fixture() {
    let bin = std::env::var("XSTORE_OLD_BIN").expect("XSTORE_OLD_BIN");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kind-clash-2026-12/repo");
    let data = Path::new(KIND_DATA);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data.join("data1/d")).unwrap();
    std::fs::create_dir_all(data.join("data2")).unwrap();
    std::fs::write(data.join("data1/a.txt"), b"the victim's file\n").unwrap();
    std::fs::write(data.join("data1/d/inner.txt"), b"under the tree\n").unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new(&bin)
            .arg("--repo")
            .arg(&out)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    };
    run(&["init", "--pack-size-mib", "1", "--chunk-avg-kib", "64"]);
    let data1 = format!("{KIND_DATA}/data1");
    run(&["backup", "-q", "--no-tier", "--host", "victim", &data1]);
    let tree = {
        let repo = Repository::open_read_only(&out).unwrap();
        let snap = repo.resolve("victim@latest").unwrap();
        let id = match repo.lookup(&snap, &format!("{data1}/d")).unwrap() {
            xstore::Node::Entry(e) => e.subtree().unwrap(),
            other => panic!("{other:?}"),
        };
        repo.read_blob(&id).unwrap()
    };
    // A file whose bytes are that tree's encoding: the old server deduplicated it against
    // the tree, so the file's data edge names a tree blob.
    std::fs::write(data.join("data2/copy"), tree).unwrap();
    let data2 = format!("{KIND_DATA}/data2");
    run(&["backup", "-q", "--no-tier", "--host", "evil", &data2]);
}

/// A repository in which a file's chunk is a tree blob (written before the kind checks):
/// `check` names the edge with its snapshot and path, `repair index` writes counts that
/// agree with what expiry releases (nothing else is reported after it), and expiring the
/// snapshot and gc leave the victim's snapshot whole.
#[test]
fn a_file_edge_to_a_tree_is_reported_and_repair_keeps_the_counts_consistent() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("repo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kind-clash-2026-12/repo"),
        &path,
    );
    std::fs::create_dir_all(path.join("packs/tmp")).unwrap();
    let only_the_edge = |repo: &Repository| {
        let problems = repo.check(Default::default()).unwrap().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(
            p.message.starts_with("file references a tree blob of "),
            "{p:?}"
        );
        assert_eq!(p.path.as_deref(), Some(&*format!("{KIND_DATA}/data2/copy")));
        assert!(p.snapshot.as_deref().unwrap().ends_with("(evil)"), "{p:?}");
    };
    only_the_edge(&Repository::open_read_only(&path).unwrap());
    Repository::repair_index(&path).unwrap();
    only_the_edge(&Repository::open_read_only(&path).unwrap());
    {
        let repo = Repository::open(&path).unwrap();
        let evil = repo.resolve("evil@latest").unwrap();
        let plan = repo.plan_forget_snapshot(&evil.id).unwrap();
        repo.apply_plan(&plan).unwrap();
        xstore_tests::gc_all_dead(&repo);
        let report = repo.check(Default::default()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let victim = repo.resolve("victim@latest").unwrap();
        let target = work.path().join("restored");
        repo.restore_now(&victim, &target, &Default::default())
            .unwrap();
        let restored = target.join(&KIND_DATA[1..]).join("data1");
        assert_eq!(
            std::fs::read(restored.join("a.txt")).unwrap(),
            b"the victim's file\n"
        );
        assert_eq!(
            std::fs::read(restored.join("d/inner.txt")).unwrap(),
            b"under the tree\n"
        );
    }
}

#[test]
fn an_old_repository_moves_into_an_encrypted_one_with_its_tiers_pins_and_times() {
    let (work, path) = fixture();
    {
        // Tier labels and a pin, written by this build into the old repository.
        let old = Repository::open(&path).unwrap();
        old.move_to_tier(&FIRST.parse().unwrap(), "daily").unwrap();
        old.move_to_tier(&SECOND.parse().unwrap(), "hourly")
            .unwrap();
        old.set_pinned(&OTHER_HOST.parse().unwrap(), true).unwrap();
    }
    let old = Repository::open_read_only(&path).unwrap();
    let keys = xstore::KeyAccess {
        key_file: Some(work.path().join("new.key")),
        ..Default::default()
    };
    let (new, _) =
        Repository::init_encrypted(&work.path().join("new"), &Default::default(), &keys).unwrap();
    let opts = xstore::SyncOptions::default();
    let plan = new.plan_sync(&old, &opts).unwrap();
    assert_eq!(plan.copy.len(), 3);
    let report = new.sync(&old, &plan, &opts).unwrap();
    assert_eq!(report.snapshots, 3);
    let (before, after) = (old.snapshots().unwrap(), new.snapshots().unwrap());
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        assert_ne!(a.root, b.root, "the new repository's ids are keyed");
        // The record starts a new revision history here.
        assert_eq!(b.revision, 0);
        let b = xstore::Snapshot {
            root: a.root,
            revision: a.revision,
            ..b.clone()
        };
        assert_eq!(*a, b, "every field but the root is kept");
    }
    assert_eq!(old.tier_positions().unwrap(), new.tier_positions().unwrap());
    assert!(after.iter().any(|s| s.pinned));
    for (i, (id, version)) in [(FIRST, 1), (SECOND, 2), (OTHER_HOST, 2)]
        .iter()
        .enumerate()
    {
        assert_restores_as_written(&new, id, *version, &work.path().join(format!("n{i}")));
    }
    let report = new.check(Default::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
