//! Retention in the store: expiry releases exactly what dies, gc reclaims it, and a backup
//! running while its deduplicated blobs die and gc runs loses nothing.
#![allow(clippy::unwrap_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;

use xstore::retention::{KeepPolicy, Schedule};
use xstore::{
    BackupOptions, CheckOptions, EntryMeta, GcOptions, LocalSource, ParentChoice, Repository,
    Snapshot, Source, SourceFile, TierChoice,
};
use xstore_tests::RestoreNow;
use xstore_tests::{
    assert_same_tree, gc_all_dead, make_fixture, restored_path, seeded_bytes, small_repo,
};

fn backup(repo: &Repository, host: &str, src: &Path, tier: TierChoice) -> Snapshot {
    repo.backup(
        &LocalSource,
        &BackupOptions {
            tier,
            ..xstore::BackupOptions::new(xstore_tests::host_name(host), vec![src.to_path_buf()])
        },
    )
    .unwrap()
}

/// The plan of `forget --keep-last N` now, for one host or all.
fn plan_keep_last(repo: &Repository, n: usize, host: Option<&str>) -> xstore::retention::Plan {
    repo.plan_forget(
        &KeepPolicy {
            last: Some(n),
            ..Default::default()
        },
        host.map(xstore_tests::host_name).as_ref(),
        xstore::now_ns(),
    )
    .unwrap()
}

fn assert_healthy(repo: &Repository) {
    let report = repo
        .check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

fn assert_restores(repo: &Repository, snap: &Snapshot, src: &Path, dir: &Path) {
    let target = dir.join(format!("restore-{}", snap.id.short()));
    repo.restore_now(snap, &target, &xstore_tests::exact_restore())
        .unwrap();
    assert_same_tree(src, &restored_path(&target, src), false);
    std::fs::remove_dir_all(&target).unwrap();
}

fn pack_bytes_on_disk(repo: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    walk(&e.path())
                } else if e.path().extension().is_some_and(|x| x == "pack") {
                    m.len()
                } else {
                    0
                }
            })
            .sum()
    }
    walk(&repo.join("packs"))
}

#[test]
fn expiry_releases_what_dies_and_gc_reclaims_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_fixture(&src, 7);
    let big = src.join("only-in-first.bin");
    std::fs::write(&big, seeded_bytes(1, 3 << 20)).unwrap();
    let repo = small_repo(&dir.path().join("repo"));
    let first = backup(&repo, "web1", &src, TierChoice::None);
    std::fs::remove_file(&big).unwrap();
    std::fs::write(src.join("new.bin"), seeded_bytes(2, 1 << 20)).unwrap();
    let second = backup(&repo, "web1", &src, TierChoice::None);
    let before = repo.stats().unwrap();
    assert_eq!(before.dead_bytes, 0);

    // keep-last 1 expires the first snapshot; only what it alone held dies.
    let plan = plan_keep_last(&repo, 1, None);
    let expired: Vec<&str> = plan.expired().map(|d| d.id.as_str()).collect();
    assert_eq!(expired, vec![first.id.to_string()]);
    let applied = repo.apply_plan(&plan).unwrap();
    assert_eq!(applied.released.snapshots, 1);
    // The 3 MiB file (random, incompressible) and the old root and chunk list died.
    assert!(applied.released.stored_bytes >= 3 << 20, "{applied:?}");
    assert!(
        applied.released.stored_bytes < (3 << 20) + (64 << 10),
        "{applied:?}"
    );
    let after = repo.stats().unwrap();
    assert_eq!(after.dead_bytes, applied.released.stored_bytes);
    assert_healthy(&repo);
    assert!(!repo
        .path()
        .join(format!("snapshots/{}.json", first.id))
        .exists());

    // gc at 0 %: every dead byte goes, the disk shrinks by what gc reports.
    let disk_before = pack_bytes_on_disk(repo.path());
    let report = gc_all_dead(&repo);
    let disk_after = pack_bytes_on_disk(repo.path());
    assert_eq!(disk_before - disk_after, report.bytes_freed, "{report:#?}");
    assert!(report.bytes_freed >= 3 << 20);
    let st = repo.stats().unwrap();
    assert_eq!(st.dead_bytes, 0);
    assert_eq!(st.unreferenced_blobs, 0);
    assert_eq!(st.stored_bytes, disk_after);
    assert_healthy(&repo);
    assert_restores(&repo, &second, &src, dir.path());
    // A second gc finds nothing.
    let again = repo
        .gc(repo.plan_gc(&GcOptions::default()).unwrap(), None)
        .unwrap();
    assert_eq!(again.bytes_freed, 0);
    assert!(again.packs.is_empty());
}

#[test]
fn backup_enters_lowest_tier_and_trims_it_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_fixture(&src, 3);
    let repo = small_repo(&dir.path().join("repo"));
    let mut settings = repo.retention_settings().unwrap();
    settings.schedules.default = Schedule::parse("hourly=2,daily=2").unwrap();
    repo.set_retention_settings(&settings).unwrap();
    let mut snaps = Vec::new();
    for i in 0..4u64 {
        std::fs::write(src.join("changing.bin"), seeded_bytes(100 + i, 200_000)).unwrap();
        snaps.push(backup(&repo, "db1", &src, TierChoice::Lowest));
    }
    // hourly keeps 2: the first two expired as the third and fourth entered.
    let ids: Vec<_> = repo.snapshots().unwrap().iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![snaps[2].id, snaps[3].id]);
    assert_eq!(repo.resolve("db1@hourly.0").unwrap().id, snaps[3].id);
    assert_eq!(repo.resolve("db1@hourly.1").unwrap().id, snaps[2].id);
    assert!(matches!(
        repo.resolve("db1@hourly.2"),
        Err(xstore::Error::SnapshotRef { .. })
    ));
    // rotate daily: hourly.1 becomes daily.0.
    let plan = repo
        .plan_rotate("daily", Some(&xstore_tests::host_name("db1")))
        .unwrap();
    repo.apply_plan(&plan).unwrap();
    assert_eq!(repo.resolve("db1@daily.0").unwrap().id, snaps[2].id);
    // Pinned snapshots survive leaving every tier.
    repo.set_pinned(&snaps[3].id, true).unwrap();
    std::fs::write(src.join("changing.bin"), b"x").unwrap();
    backup(&repo, "db1", &src, TierChoice::Lowest);
    backup(&repo, "db1", &src, TierChoice::Lowest);
    let s3 = repo.snapshot(&snaps[3].id).unwrap();
    assert!(s3.pinned && s3.tiers.is_empty());
    assert_healthy(&repo);
    assert_restores(
        &repo,
        &repo.resolve("db1@latest").unwrap(),
        &src,
        dir.path(),
    );
    // The copies on disk follow the index (labels included).
    for s in repo.snapshots().unwrap() {
        let copy = std::fs::read(repo.path().join(format!("snapshots/{}.json", s.id))).unwrap();
        assert_eq!(Snapshot::decode(&copy).unwrap(), s);
    }
    // Unknown tiers are refused before anything is written.
    let err = repo
        .backup(
            &LocalSource,
            &BackupOptions {
                tier: TierChoice::Named("yearly".into()),
                ..xstore::BackupOptions::new(xstore_tests::host_name("db1"), vec![src.clone()])
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            xstore::BackupError::Repository(xstore::Error::Retention(
                xstore::retention::RetentionError::UnknownTier { tier, .. }
            )) if tier == "yearly"
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("\"yearly\" is not in the schedule"));
}

/// Blocks the backup once, until told to go on: when it opens the file named "gate" (in the
/// middle of the walk), or when it lists the directory `list_gate` (before the walk).
struct Gated {
    reached: Mutex<Option<mpsc::Sender<()>>>,
    go: Mutex<mpsc::Receiver<()>>,
    list_gate: Option<PathBuf>,
}

impl Gated {
    fn wait(&self) {
        if let Some(tx) = self.reached.lock().unwrap().take() {
            tx.send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
        }
    }
}

impl Source for Gated {
    fn stat(&self, path: &Path) -> io::Result<EntryMeta> {
        LocalSource.stat(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        if self.list_gate.as_deref() == Some(dir) {
            self.wait();
        }
        LocalSource.list(dir)
    }
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        LocalSource.read_link(path)
    }
    fn xattrs(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        LocalSource.xattrs(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        if path.file_name().is_some_and(|n| n == "gate") {
            self.wait();
        }
        LocalSource.open(path)
    }
}

/// The race of ARCHITECTURE.md invariant 8: host `new` is backed up with host `old`'s snapshot
/// as parent, so it reuses `old`'s blobs (unchanged files without reading, a touched file by
/// deduplicating its chunks). While it runs, `old`'s snapshot expires and gc runs. The backup
/// must commit, restore exactly, and `check` must pass.
///
/// Gated mid-walk, some subtrees were already deduplicated against live blobs that then die
/// (the commit revives them and their children); gated before the walk, every shared blob is
/// dead before the backup looks (it writes fresh copies of content, and revives the parent's
/// chunk lists it reuses for unchanged files).
#[test]
fn backup_racing_expiry_and_gc_mid_walk() {
    race(false);
}

#[test]
fn backup_racing_expiry_and_gc_before_walk() {
    race(true);
}

fn race(gate_before_walk: bool) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_fixture(&src.join("tree"), 11);
    std::fs::write(src.join("unchanged.bin"), seeded_bytes(5, 2 << 20)).unwrap();
    std::fs::write(src.join("touched.bin"), seeded_bytes(6, 2 << 20)).unwrap();
    let repo = small_repo(&dir.path().join("repo"));
    let old = backup(&repo, "old", &src, TierChoice::None);
    // New since `old`, so the backup opens it (unchanged files are never opened).
    std::fs::write(src.join("gate"), b"the backup waits here").unwrap();
    // A newer snapshot of `old` without the shared files, so `old`'s first one may expire.
    let other: PathBuf = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), b"x").unwrap();
    backup(&repo, "old", &other, TierChoice::None);
    // Touch one file: same bytes, new mtime, so it is read and its chunks deduplicated.
    let f = std::fs::File::options()
        .write(true)
        .open(src.join("touched.bin"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);

    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let source = Gated {
        reached: Mutex::new(Some(reached_tx)),
        go: Mutex::new(go_rx),
        list_gate: gate_before_walk.then(|| src.clone()),
    };
    let (snapshot, gc_report) = std::thread::scope(|s| {
        let backup = s.spawn(|| {
            repo.backup(
                &source,
                &BackupOptions {
                    parent: ParentChoice::Snapshot(old.id),
                    tier: TierChoice::None,
                    ..xstore::BackupOptions::new(xstore_tests::host_name("new"), vec![src.clone()])
                },
            )
        });
        reached_rx.recv().unwrap();
        // The backup is in flight. Expire `old`'s first snapshot: the shared blobs die.
        let plan = plan_keep_last(&repo, 1, Some("old"));
        assert_eq!(plan.expired().count(), 1);
        let applied = repo.apply_plan(&plan).unwrap();
        assert!(applied.released.stored_bytes > 4 << 20, "{applied:?}");
        let gc = gc_all_dead(&repo);
        go_tx.send(()).unwrap();
        (backup.join().unwrap().unwrap(), gc)
    });
    // gc had to leave the packs holding the blobs the backup might use.
    assert!(gc_report.packs_skipped > 0, "{gc_report:#?}");
    assert_eq!(snapshot.stats.files_unchanged, snapshot.stats.files - 2);
    assert_healthy(&repo);
    assert_restores(&repo, &snapshot, &src, dir.path());
    // Once the backup is done, a gc reclaims whatever really is dead, and nothing else.
    gc_all_dead(&repo);
    assert_eq!(repo.stats().unwrap().dead_bytes, 0);
    assert_healthy(&repo);
    assert_restores(&repo, &snapshot, &src, dir.path());
}

/// A corrupt live blob is never copied: gc leaves its pack, says why, and does not panic.
#[test]
fn gc_leaves_a_pack_whose_live_blob_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let live = seeded_bytes(70, 10_000);
    std::fs::write(src.join("live.bin"), &live).unwrap();
    std::fs::write(src.join("dies.bin"), seeded_bytes(71, 300_000)).unwrap();
    let repo = small_repo(&dir.path().join("repo"));
    backup(&repo, "web1", &src, TierChoice::None);
    std::fs::remove_file(src.join("dies.bin")).unwrap();
    backup(&repo, "web1", &src, TierChoice::None);
    let plan = plan_keep_last(&repo, 1, None);
    repo.apply_plan(&plan).unwrap();
    // Flip one stored byte of the live file's chunk, in the pack that also holds dead data.
    let loc = repo
        .blob_location(&xstore::ChunkId::of(&live))
        .unwrap()
        .unwrap();
    let hex = loc.pack.to_string();
    let pack_path = repo.path().join(format!("packs/{}/{hex}.pack", &hex[..2]));
    let mut bytes = std::fs::read(&pack_path).unwrap();
    bytes[loc.offset as usize + 48 + 5] ^= 0xff;
    std::fs::write(&pack_path, &bytes).unwrap();
    let report = gc_all_dead(&repo);
    let row = report.packs.iter().find(|r| r.pack == loc.pack).unwrap();
    assert_eq!(row.action, xstore::GcAction::Skip, "{report:#?}");
    assert!(row.note.as_deref().unwrap().contains("blob"), "{row:?}");
    assert!(pack_path.exists());
    let still = repo.blob_location(&xstore::ChunkId::of(&live)).unwrap();
    assert_eq!(still.unwrap().pack, loc.pack);
}
