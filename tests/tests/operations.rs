//! The operations through the library's public API, plans included: what the command line
//! prints as JSON is not the only contract under test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use xstore::{
    BackupOptions, CheckOptions, GcAction, GcOptions, LocalSource, Overwrite, PlannedAction,
    Repository, RestoreOptions,
};
use xstore_tests::{
    assert_same_tree, forget_keep_last, restored_path, seeded_bytes, small_repo, RestoreNow,
};

/// `check` finds no problem, and the newest snapshot restores into `dst` exactly as `src`.
fn checks_clean_and_the_newest_restores_exactly(repo: &Repository, dst: &Path, src: &Path) {
    let check = repo.check(CheckOptions::default()).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    let newest = repo.snapshots().unwrap().pop().unwrap();
    repo.restore_now(&newest, dst, &xstore_tests::exact_restore())
        .unwrap();
    assert_same_tree(src, &restored_path(dst, src), false);
}

fn backup(repo: &Repository, host: &str, path: &Path) -> xstore::Snapshot {
    let opts = BackupOptions {
        tier: xstore::TierChoice::None,
        ..xstore::BackupOptions::new(xstore_tests::host_name(host), vec![path.to_path_buf()])
    };
    repo.backup(&LocalSource, &opts).unwrap()
}

/// A restore plan previews exactly what carrying it out then does: the changed file is
/// overwritten, the missing one written, the unchanged one skipped, the extra one deleted;
/// and a preview changes nothing.
#[test]
fn a_restore_preview_names_what_the_restore_then_does() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("same"), b"unchanged\n").unwrap();
    fs::write(src.join("changed"), seeded_bytes(1, 50_000)).unwrap();
    fs::write(src.join("missing"), b"comes back\n").unwrap();
    let repo = small_repo(&work.path().join("repo"));
    let snap = backup(&repo, "h", &src);

    let target = work.path().join("target");
    repo.restore(
        &repo
            .plan_restore(&snap, &target, &xstore_tests::exact_restore())
            .unwrap(),
    )
    .unwrap();
    let at = restored_path(&target, &src);
    fs::write(at.join("changed"), b"edited since\n").unwrap();
    fs::remove_file(at.join("missing")).unwrap();
    fs::write(at.join("extra"), b"not in the snapshot\n").unwrap();

    let opts = RestoreOptions {
        overwrite: Overwrite::IfChanged,
        delete: true,
        ..xstore_tests::exact_restore()
    };
    let plan = repo.plan_restore(&snap, &target, &opts).unwrap();
    let preview = repo.preview_restore(&plan).unwrap();
    let action_of = |name: &str| {
        let path = at.join(name).display().to_string();
        preview
            .planned
            .iter()
            .find(|c| c.path == path)
            .map(|c| c.action)
    };
    assert_eq!(action_of("same"), Some(PlannedAction::Skip));
    assert_eq!(action_of("changed"), Some(PlannedAction::Overwrite));
    assert_eq!(action_of("missing"), Some(PlannedAction::Write));
    assert_eq!(action_of("extra"), Some(PlannedAction::Delete));
    // The preview changed nothing.
    assert_eq!(fs::read(at.join("changed")).unwrap(), b"edited since\n");
    assert!(at.join("extra").exists() && !at.join("missing").exists());

    let done = repo.restore(&plan).unwrap();
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    assert_eq!(
        (done.files, done.deleted, done.bytes),
        (preview.files, preview.deleted, preview.bytes)
    );
    assert_eq!((done.files, done.deleted), (2, 1));
    assert!(done.planned.is_empty());
    assert_same_tree(&src, &at, false);
}

/// A gc plan made through a read-only handle (a dry run needs no writer lock) is carried out
/// by the writer: it deletes what the plan named, and the repository checks clean.
#[test]
fn a_gc_plan_from_a_read_only_handle_is_carried_out_by_the_writer() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let repo_path = work.path().join("repo");
    let repo = small_repo(&repo_path);
    for round in 0..3 {
        fs::write(src.join("data"), seeded_bytes(round, 300_000)).unwrap();
        backup(&repo, "h", &src);
    }
    forget_keep_last(&repo, "h", 1);

    let reader = Repository::open_read_only(&repo_path).unwrap();
    let opts = GcOptions {
        max_dead_percent: Some(0.0),
        grace: Some(std::time::Duration::ZERO),
        ..GcOptions::default()
    };
    let plan = reader.plan_gc(&opts).unwrap();
    drop(reader);
    assert!(plan.report.dry_run);
    let planned: Vec<_> = plan
        .report
        .packs
        .iter()
        .filter(|p| p.action != GcAction::Skip)
        .map(|p| p.pack)
        .collect();
    assert!(!planned.is_empty(), "{:#?}", plan.report);
    assert!(plan.report.bytes_freed > 0);

    let done = repo.gc(plan, None).unwrap();
    assert!(!done.dry_run);
    assert_eq!(
        done.packs_deleted + done.packs_rewritten,
        planned.len() as u64
    );
    let packs_left = xstore::pack_files(&repo_path).unwrap();
    for id in &planned {
        assert!(!packs_left.contains(id), "pack {id} outlived the gc");
    }
    checks_clean_and_the_newest_restores_exactly(&repo, &work.path().join("dst"), &src);
}

/// `repair_index` rebuilds a lost index from the packs: every snapshot comes back, the report
/// counts them, and check and usage agree with the rebuilt index.
#[test]
fn a_lost_index_is_rebuilt_with_every_snapshot_and_usage_is_unchanged() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let repo_path = work.path().join("repo");
    let (before, usage_before) = {
        let repo = small_repo(&repo_path);
        for round in 0..2 {
            fs::write(src.join("data"), seeded_bytes(round, 100_000)).unwrap();
            backup(&repo, "a", &src);
            backup(&repo, "b", &src);
        }
        let usage = repo
            .fleet_usage(&[
                vec![xstore_tests::host_name("a")],
                vec![xstore_tests::host_name("a"), xstore_tests::host_name("b")],
            ])
            .unwrap();
        (repo.snapshots().unwrap(), usage)
    };
    fs::remove_dir_all(repo_path.join("index")).unwrap();

    let report = Repository::repair_index(&repo_path).unwrap();
    assert_eq!(report.snapshots, before.len() as u64);
    assert_eq!(report.skipped, Vec::<String>::new());
    let repo = Repository::open(&repo_path).unwrap();
    let ids = |v: &[xstore::Snapshot]| {
        let mut ids: Vec<_> = v.iter().map(|s| s.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&repo.snapshots().unwrap()), ids(&before));
    let check = repo.check(CheckOptions::default()).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    let usage = repo
        .fleet_usage(&[
            vec![xstore_tests::host_name("a")],
            vec![xstore_tests::host_name("a"), xstore_tests::host_name("b")],
        ])
        .unwrap();
    assert_eq!(usage.hosts, usage_before.hosts);
    assert_eq!(usage.groups, usage_before.groups);
}

/// A stale plan — made before another gc took its packs — changes nothing when carried out:
/// it neither copies from nor retires a pack the index no longer records, and says why.
#[test]
fn a_gc_plan_made_stale_by_another_gc_leaves_those_packs_alone() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let repo_path = work.path().join("repo");
    let repo = small_repo(&repo_path);
    for round in 0..3 {
        fs::write(src.join("data"), seeded_bytes(round, 300_000)).unwrap();
        backup(&repo, "h", &src);
    }
    forget_keep_last(&repo, "h", 1);
    let opts = GcOptions {
        max_dead_percent: Some(0.0),
        grace: Some(std::time::Duration::ZERO),
        ..GcOptions::default()
    };
    let stale = repo.plan_gc(&opts).unwrap();
    let planned = stale
        .report
        .packs
        .iter()
        .filter(|p| p.action != GcAction::Skip)
        .count();
    assert!(planned > 0, "{:#?}", stale.report);
    // Another gc takes those packs first (grace zero: their files are deleted at once).
    let first = repo.gc(repo.plan_gc(&opts).unwrap(), None).unwrap();
    assert_eq!(first.packs_deleted + first.packs_rewritten, planned as u64);

    let done = repo.gc(stale, None).unwrap();
    assert_eq!(done.packs_deleted + done.packs_rewritten, 0, "{done:#?}");
    assert_eq!(done.packs_skipped, planned as u64);
    assert!(done
        .packs
        .iter()
        .all(|p| p.note.as_deref().is_some_and(|n| n.contains("another gc"))));
    // Nothing waits in the journal to be deleted: the stale plan retired nothing.
    let retired = fs::read_dir(repo_path.join("packs/retired")).map_or(0, |d| d.count());
    assert_eq!(retired, 0);
    checks_clean_and_the_newest_restores_exactly(&repo, &work.path().join("dst"), &src);
}

/// `check` with `read_data` names a damaged blob exactly: its id, the pack that holds it,
/// and a snapshot and path that lose it, and the pack whose hash no longer matches; the
/// structural check (without `read_data`) does not read blob bytes and finds nothing.
#[test]
fn check_reading_data_names_the_damaged_blob_its_pack_and_a_path_that_holds_it() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("intact"), seeded_bytes(1, 50_000)).unwrap();
    fs::write(src.join("damaged"), seeded_bytes(2, 50_000)).unwrap();
    let repo = small_repo(&work.path().join("repo"));
    let snap = backup(&repo, "web1", &src);
    let path = format!("{}/damaged", src.canonicalize().unwrap().display());
    let xstore::Node::Entry(entry) = repo.lookup(&snap, &path).unwrap() else {
        panic!("{path} is not an entry");
    };
    let chunk = repo.file_chunks(&entry).unwrap()[0];
    let loc = repo.blob_location(&chunk.id).unwrap().unwrap();
    // Flip one byte in the middle of the blob's stored (compressed) bytes.
    let pack_path = xstore::layout::pack_file(&xstore::layout::packs(repo.path()), &loc.pack);
    let mut bytes = fs::read(&pack_path).unwrap();
    let at =
        loc.offset as usize + xstore_format::pack::BLOB_HEADER_LEN + loc.stored_len as usize / 2;
    bytes[at] ^= 0x55;
    fs::write(&pack_path, &bytes).unwrap();

    let structure = repo.check(CheckOptions::default()).unwrap();
    assert!(structure.problems.is_empty(), "{:?}", structure.problems);
    let report = repo
        .check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .unwrap();
    // Two problems: the pack no longer hashes to its name, and the blob fails its checksum.
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let pack_problem = report.problems.iter().find(|p| p.blob.is_none()).unwrap();
    assert_eq!(pack_problem.pack, Some(loc.pack));
    assert!(
        pack_problem.message.contains("does not hash to its name"),
        "{pack_problem}"
    );
    let problem = report.problems.iter().find(|p| p.blob.is_some()).unwrap();
    assert_eq!(problem.blob, Some(chunk.id));
    assert_eq!(problem.pack, Some(loc.pack));
    assert_eq!(problem.path.as_deref(), Some(path.as_str()));
    assert!(
        problem
            .snapshot
            .as_deref()
            .unwrap()
            .starts_with(&snap.id.short()),
        "{problem}"
    );
    // The JSON keeps the ids as hex.
    let json = serde_json::to_value(problem).unwrap();
    assert_eq!(json["blob"], chunk.id.to_string());
    assert_eq!(json["pack"], loc.pack.to_string());
}
