//! The filesystem view without a kernel: stable inode numbers, hard links, tier and stable
//! paths, reads at any offset, refusals.
#![allow(clippy::unwrap_used)]

use xstore::{BackupOptions, LocalSource};
use xstore_browse::fsview::{FsError, FsView, ViewOptions, ROOT_INO};
use xstore_tests::{make_fixture, seeded_bytes, small_repo};

#[test]
fn inode_numbers_are_stable_and_hard_links_share_one() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_fixture(&src, 5);
    let repo = small_repo(&tmp.path().join("repo"));
    let opts = BackupOptions {
        ..xstore::BackupOptions::new(xstore_tests::host_name("web1"), vec![src.clone()])
    };
    let first = repo.backup(&LocalSource, &opts).unwrap();
    // Stable names are start seconds: keep the two snapshots in different seconds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(src.join("small.txt"), b"second\n").unwrap();
    let second = repo.backup(&LocalSource, &opts).unwrap();
    drop(repo);
    let abs = src.canonicalize().unwrap();
    let dir = |snap: &xstore::Snapshot| {
        format!(
            "/hosts/web1/{}{}",
            xstore_browse::fsview::snapshot_dir_name(snap),
            abs.display()
        )
    };

    let a = FsView::open(&tmp.path().join("repo"), ViewOptions::default()).unwrap();
    let b = FsView::open(&tmp.path().join("repo"), ViewOptions::default()).unwrap();
    let path = format!("{}/sub/random.bin", dir(&first));
    let ino = a.resolve(&path).unwrap().ino;
    assert_eq!(
        b.resolve(&path).unwrap().ino,
        ino,
        "another session, same number"
    );
    let other = format!("{}/sub/random.bin", dir(&second));
    assert_ne!(
        a.resolve(&other).unwrap().ino,
        ino,
        "another snapshot, another number"
    );

    let hard_a = a.resolve(&format!("{}/hard-a", dir(&first))).unwrap();
    let hard_b = a.resolve(&format!("{}/sub/hard-b", dir(&first))).unwrap();
    assert_eq!(hard_a.ino, hard_b.ino);
    assert_eq!(hard_a.attrs.nlink, 2);

    // Tier paths: hourly.0 is the newer snapshot, hourly.1 the older.
    let tier0 = a
        .resolve(&format!("/hourly.0/web1{}/small.txt", abs.display()))
        .unwrap();
    assert_eq!(a.read(tier0.ino, 0, 100).unwrap(), b"second\n");
    let tier1 = a
        .resolve(&format!("/hourly.1/web1{}/small.txt", abs.display()))
        .unwrap();
    assert_eq!(a.read(tier1.ino, 0, 100).unwrap(), b"hello 5\n");
    assert_eq!(tier1.attrs.mode, 0o600);

    // Reads at any offset, across chunk boundaries (16-256 KiB chunks), and past the end.
    let data = seeded_bytes(5, 3 * 1024 * 1024 + 123);
    for (offset, len) in [
        (0usize, 10usize),
        (65_535, 300_000),
        (3_000_000, 500_000),
        (9_999_999, 5),
    ] {
        let got = a.read(ino, offset as u64, len).unwrap();
        let want = &data[offset.min(data.len())..(offset + len).min(data.len())];
        assert_eq!(got, want, "{len} at {offset}");
    }

    // Refusals.
    assert!(matches!(
        a.check_open(ino, libc::O_RDWR),
        Err(FsError::ReadOnly)
    ));
    assert!(a.check_open(ino, libc::O_RDONLY).is_ok());
    assert!(matches!(a.read(ROOT_INO, 0, 1), Err(FsError::IsADirectory)));
    assert!(matches!(a.resolve("/nope"), Err(FsError::NotFound)));
    assert!(matches!(a.readlink(ino), Err(FsError::NotASymlink)));
    assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);

    // A view limited to other hosts shows nothing of web1.
    let limited = FsView::open(
        &tmp.path().join("repo"),
        ViewOptions {
            hosts: Some(vec![xstore_tests::host_name("db1")]),
            ..ViewOptions::default()
        },
    )
    .unwrap();
    assert!(limited
        .readdir(ROOT_INO)
        .unwrap()
        .iter()
        .all(|i| i.name == b"hosts"));
    assert!(matches!(
        limited.resolve("/hosts/web1"),
        Err(FsError::NotFound)
    ));
}

/// Views that share caches under different scopes (accounts) never serve each other's
/// entries: a second scope reading the same file fills the cache again, the same scope does
/// not.
#[test]
fn shared_caches_are_never_hit_across_scopes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_fixture(&src, 6);
    let repo = small_repo(&tmp.path().join("repo"));
    let opts = BackupOptions {
        ..xstore::BackupOptions::new(xstore_tests::host_name("web1"), vec![src.clone()])
    };
    repo.backup(&LocalSource, &opts).unwrap();
    drop(repo);
    let caches = xstore_browse::fsview::ViewCaches::new(64 << 20, 64 << 20);
    let open = |scope| {
        FsView::open_with_caches(
            &tmp.path().join("repo"),
            ViewOptions::default(),
            caches.clone(),
            scope,
        )
        .unwrap()
    };
    let path = format!(
        "/hosts/web1/latest{}/small.txt",
        src.canonicalize().unwrap().display()
    );
    let read = |view: &FsView| {
        // The mount-path walk follows the view's own `latest` link.
        let ino = view.resolve_mount_path(path.as_bytes(), None).unwrap();
        view.read(ino.ino, 0, 1 << 20).unwrap()
    };
    let (a, a_again, b) = (open(1), open(1), open(2));
    assert_eq!(read(&a), b"hello 6\n");
    let after_a = caches.held();
    assert!(after_a.0 > 0 && after_a.1 > 0, "{after_a:?}");
    assert_eq!(read(&a_again), b"hello 6\n");
    assert_eq!(caches.held(), after_a, "the same scope hits");
    assert_eq!(read(&b), b"hello 6\n");
    let after_b = caches.held();
    assert_eq!(
        after_b.1,
        2 * after_a.1,
        "another scope fills its own entries"
    );
    assert!(after_b.0 > after_a.0);
}

#[test]
fn views_sharing_caches_share_one_repository_handle_and_see_new_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"a\n").unwrap();
    for i in 0..300 {
        std::fs::write(src.join(format!("f{i:03}")), b"").unwrap();
    }
    let path = tmp.path().join("repo");
    let repo = small_repo(&path);
    let backup = |host: &str| {
        let opts = BackupOptions::new(xstore_tests::host_name(host), vec![src.clone()]);
        repo.backup(&LocalSource, &opts).unwrap()
    };
    backup("web1");
    backup("db1");
    let caches = xstore_browse::fsview::ViewCaches::new(1 << 20, 1 << 20);
    let opts = |host: &str| ViewOptions {
        hosts: Some(vec![xstore_tests::host_name(host)]),
        refresh: std::time::Duration::from_millis(200),
        max_nodes: Some(100),
        ..ViewOptions::default()
    };
    let web = FsView::open_with_caches(&path, opts("web1"), caches.clone(), 1).unwrap();
    let db = FsView::open_with_caches(&path, opts("db1"), caches.clone(), 2).unwrap();
    // One index open for both accounts' views.
    assert!(std::sync::Arc::ptr_eq(
        &web.repository().unwrap(),
        &db.repository().unwrap()
    ));
    assert_eq!(web.hosts().unwrap(), vec![xstore_tests::host_name("web1")]);
    assert_eq!(web.host_snapshots("db1").unwrap().len(), 0);
    // After the refresh interval a new snapshot shows, through a new shared handle.
    let before = web.repository().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    backup("web1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(web.host_snapshots("web1").unwrap().len(), 2);
    let after = web.repository().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&before, &after));
    // A bounded view forgets nodes beyond its bound and still resolves every path.
    let abs = src.canonicalize().unwrap();
    let dir = web
        .resolve(&format!("/hourly.0/web1{}", abs.display()))
        .unwrap();
    assert_eq!(web.readdir(dir.ino).unwrap().len(), 301);
    assert!(web.nodes_held() <= 101, "{}", web.nodes_held());
    for _ in 0..3 {
        let tier0 = web
            .resolve(&format!("/hourly.0/web1{}/a", abs.display()))
            .unwrap();
        assert_eq!(web.read(tier0.ino, 0, 10).unwrap(), b"a\n");
    }
    assert!(web.nodes_held() <= 101, "{}", web.nodes_held());
}
