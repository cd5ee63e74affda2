//! Library-level tests with fault-injecting sources: unreadable and vanishing files, files that
//! change while read, other filesystems, very large chunk lists, exact reference counts.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xstore::{
    BackupOptions, CheckOptions, ChunkerParams, EntryMeta, InitOptions, LocalSource, ParentChoice,
    Repository, SnapshotStatus, Source, SourceFile,
};
use xstore_tests::RestoreNow;
use xstore_tests::{assert_same_tree, make_fixture, restored_path, seeded_bytes};

/// Wraps the local filesystem and injects faults by file name.
struct Faulty {
    /// Stats taken of the file named "changing" (each one sees a new ctime).
    changes: std::sync::Arc<AtomicU64>,
    other_fs_dir: Option<PathBuf>,
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct ShortRead {
    inner: Box<dyn SourceFile>,
    left: usize,
}
impl Read for ShortRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("injected I/O error"));
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}
impl SourceFile for ShortRead {
    fn current_meta(&mut self) -> io::Result<EntryMeta> {
        self.inner.current_meta()
    }
}

/// A file whose ctime moves on every stat: it never reads stably.
struct Changing {
    inner: Box<dyn SourceFile>,
    counter: std::sync::Arc<AtomicU64>,
}
impl Read for Changing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl SourceFile for Changing {
    fn current_meta(&mut self) -> io::Result<EntryMeta> {
        let mut m = self.inner.current_meta()?;
        m.attrs.ctime_ns += self.counter.fetch_add(1, Ordering::Relaxed) as i64 + 1;
        Ok(m)
    }
}

impl Source for Faulty {
    fn stat(&self, path: &Path) -> io::Result<EntryMeta> {
        LocalSource.stat(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        if name_of(dir) == "unlistable" {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        let mut v = LocalSource.list(dir)?;
        for (name, meta) in v.iter_mut() {
            if name == b"vanished" {
                *meta = Err(io::Error::from(io::ErrorKind::NotFound));
            }
            if let (Some(other), Ok(m)) = (&self.other_fs_dir, meta.as_mut()) {
                use std::os::unix::ffi::OsStrExt;
                if dir.join(std::ffi::OsStr::from_bytes(name)) == *other {
                    m.attrs.dev += 1;
                }
            }
        }
        Ok(v)
    }
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        LocalSource.read_link(path)
    }
    fn xattrs(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        LocalSource.xattrs(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        match name_of(path).as_str() {
            "unreadable" => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
            "short-read" => Ok(Box::new(ShortRead {
                inner: LocalSource.open(path)?,
                left: 1000,
            })),
            "changing" => Ok(Box::new(Changing {
                inner: LocalSource.open(path)?,
                counter: self.changes.clone(),
            })),
            _ => LocalSource.open(path),
        }
    }
}

fn opts(host: &str, path: &Path) -> BackupOptions {
    BackupOptions {
        ..xstore::BackupOptions::new(xstore_tests::host_name(host), vec![path.to_path_buf()])
    }
}

#[test]
fn failures_make_a_partial_snapshot_and_the_rest_is_kept() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_fixture(&src, 20);
    for name in ["unreadable", "short-read", "changing", "vanished"] {
        std::fs::write(src.join(name), seeded_bytes(7, 5000)).unwrap();
    }
    std::fs::create_dir(src.join("unlistable")).unwrap();
    std::fs::write(src.join("unlistable/inside"), b"x").unwrap();
    let repo = Repository::init(&work.path().join("repo"), &InitOptions::default()).unwrap();
    let source = Faulty {
        changes: Default::default(),
        other_fs_dir: None,
    };
    let snap = repo.backup(&source, &opts("h", &src)).unwrap();
    assert_eq!(snap.status, SnapshotStatus::Partial);
    let failed: Vec<String> = snap
        .errors
        .iter()
        .map(|e| name_of(Path::new(&e.path)))
        .collect();
    for name in [
        "unreadable",
        "short-read",
        "changing",
        "vanished",
        "unlistable",
    ] {
        assert!(
            failed.contains(&name.to_string()),
            "{name} not reported: {:?}",
            snap.errors
        );
    }
    assert_eq!(snap.stats.errors, 5);
    // Three attempts, each with a stat before and after reading.
    assert_eq!(source.changes.load(Ordering::Relaxed), 6);
    // The file that kept changing is stored (last read), flagged; the others are absent.
    let dst = work.path().join("dst");
    repo.restore_now(&snap, &dst, &xstore_tests::exact_restore())
        .unwrap();
    let restored = restored_path(&dst, &src);
    assert_eq!(
        std::fs::read(restored.join("changing")).unwrap(),
        seeded_bytes(7, 5000)
    );
    for gone in ["unreadable", "short-read", "vanished"] {
        assert!(!restored.join(gone).exists(), "{gone}");
        std::fs::remove_file(src.join(gone)).unwrap();
    }
    assert!(restored.join("unlistable").is_dir());
    std::fs::remove_file(src.join("unlistable/inside")).unwrap();
    // Everything else is exact (directory mtimes were changed by the removals above).
    let report = repo
        .check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        std::fs::read(restored.join("sub/random.bin")).unwrap(),
        std::fs::read(src.join("sub/random.bin")).unwrap()
    );
}

#[test]
fn one_file_system_keeps_the_mount_point_but_not_its_content() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_fixture(&src, 21);
    let mount = src.canonicalize().unwrap().join("sub");
    let repo = Repository::init(&work.path().join("repo"), &InitOptions::default()).unwrap();
    let source = Faulty {
        changes: Default::default(),
        other_fs_dir: Some(mount.clone()),
    };
    let mut o = opts("h", &src);
    o.one_file_system = true;
    let snap = repo.backup(&source, &o).unwrap();
    assert!(snap.is_complete());
    let sub = repo.list(&snap, mount.to_str().unwrap()).unwrap();
    assert!(sub.is_empty(), "descended into another filesystem");
    o.one_file_system = false;
    let snap = repo.backup(&source, &o).unwrap();
    assert!(!repo
        .list(&snap, mount.to_str().unwrap())
        .unwrap()
        .is_empty());
}

#[test]
fn huge_files_use_chunk_list_blobs_and_refcounts_stay_exact() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 1 KiB average chunks: 3 MiB gives well over the inline limit of 1024 chunks.
    let big = seeded_bytes(5, 3 << 20);
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("big-copy"), &big).unwrap();
    let init = InitOptions {
        chunker: ChunkerParams::new(256, 1024, 4096).unwrap(),
        ..InitOptions::default()
    };
    let repo = Repository::init(&work.path().join("repo"), &init).unwrap();
    let s1 = repo.backup(&LocalSource, &opts("h", &src)).unwrap();
    let entry = match repo
        .lookup(
            &s1,
            &format!("{}/big", src.canonicalize().unwrap().display()),
        )
        .unwrap()
    {
        xstore::Node::Entry(e) => e,
        _ => panic!("not an entry"),
    };
    assert!(matches!(entry.content, xstore::Content::ChunkList(_)));
    let mut out = Vec::new();
    repo.cat(&entry, &mut out).unwrap();
    assert_eq!(out, big);
    // Change the middle of the file: a new chunk list, most chunks shared.
    let mut changed = big.clone();
    changed[1 << 20] ^= 1;
    std::fs::write(src.join("big"), &changed).unwrap();
    let s2 = repo.backup(&LocalSource, &opts("h", &src)).unwrap();
    // One or two new data chunks plus the rewritten chunk list (3072 × 36 bytes).
    assert!(
        s2.stats.new_bytes < 3 * 1024 + 3072 * 36 + 4096,
        "{:?}",
        s2.stats
    );
    assert!(s2.stats.new_blobs <= 10, "{:?}", s2.stats);
    let report = repo
        .check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let dst = work.path().join("dst");
    repo.restore_now(&s2, &dst, &xstore_tests::exact_restore())
        .unwrap();
    assert_same_tree(&src, &restored_path(&dst, &src), false);
}

#[test]
fn identical_trees_from_two_hosts_are_stored_once() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_fixture(&src, 22);
    let repo = Repository::init(&work.path().join("repo"), &InitOptions::default()).unwrap();
    let a = repo.backup(&LocalSource, &opts("web1", &src)).unwrap();
    let mut o = opts("web2", &src);
    o.parent = ParentChoice::None;
    let b = repo.backup(&LocalSource, &o).unwrap();
    // The backed-up directory is the same blob for both hosts. Only the synthetic trees of
    // its ancestors (the system temp directory, whose mtime moves as other tests run) may
    // differ, so the comparison is made at the source path.
    let at_src = |s: &xstore::Snapshot| match repo
        .lookup(s, src.canonicalize().unwrap().to_str().unwrap())
        .unwrap()
    {
        xstore::Node::Entry(e) => e.subtree().unwrap(),
        xstore::Node::Root(_) => unreachable!(),
    };
    assert_eq!(at_src(&a), at_src(&b));
    let ancestors = src.canonicalize().unwrap().components().count() as u64 - 1;
    assert!(b.stats.new_blobs <= ancestors, "{:?}", b.stats);
    let root = repo.blob_location(&a.root).unwrap().unwrap();
    if a.root == b.root {
        assert_eq!(root.refcount, 2, "each snapshot holds its root once");
    } else {
        assert_eq!(root.refcount, 1, "each snapshot holds its root once");
    }
    assert!(repo
        .check(CheckOptions::default())
        .unwrap()
        .problems
        .is_empty());
}

#[test]
fn read_only_handle_refuses_to_write() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    drop(Repository::init(&work.path().join("repo"), &InitOptions::default()).unwrap());
    let ro = Repository::open_read_only(&work.path().join("repo")).unwrap();
    assert!(matches!(
        ro.backup(&LocalSource, &opts("h", &src)),
        Err(xstore::BackupError::Repository(xstore::Error::ReadOnly))
    ));
    assert!(matches!(
        ro.gc(ro.plan_gc(&Default::default()).unwrap(), None),
        Err(xstore::GcError::Repository(xstore::Error::ReadOnly))
    ));
}

/// A source that chunks on its side, like a remote agent: only missing chunks travel.
struct Remote {
    params: ChunkerParams,
    fetched: std::sync::Arc<AtomicU64>,
    lie: bool,
    stall: Option<std::sync::Arc<Stall>>,
}

struct RemoteFile {
    data: Vec<u8>,
    meta: EntryMeta,
    params: ChunkerParams,
    fetched: std::sync::Arc<AtomicU64>,
    lie: bool,
    stall: Option<std::sync::Arc<Stall>>,
}

/// A link that stops answering: a fetch blocks until released, then fails.
#[derive(Default)]
struct Stall {
    state: std::sync::Mutex<(bool, bool)>,
    changed: std::sync::Condvar,
}

impl Stall {
    fn block(&self) -> io::Error {
        let mut st = self.state.lock().unwrap();
        st.0 = true;
        self.changed.notify_all();
        while !st.1 {
            st = self.changed.wait(st).unwrap();
        }
        io::Error::other("the link stalled")
    }
    fn wait_entered(&self) {
        let mut st = self.state.lock().unwrap();
        while !st.0 {
            st = self.changed.wait(st).unwrap();
        }
    }
    fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
}

impl Read for RemoteFile {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        panic!("ingest must not read a file whose source sent chunk ids");
    }
}

impl SourceFile for RemoteFile {
    fn current_meta(&mut self) -> io::Result<EntryMeta> {
        Ok(self.meta)
    }
    fn remote_chunks(&mut self) -> Option<io::Result<Vec<xstore::ChunkRef>>> {
        Some(Ok(xstore::chunker::chunk_slice(&self.params, &self.data)
            .map(|c| xstore::ChunkRef {
                id: c.id,
                len: c.length,
            })
            .collect()))
    }
    fn fetch_chunks(&mut self, ids: &[xstore::ChunkRef]) -> io::Result<Vec<xstore::FetchedChunk>> {
        if let Some(stall) = &self.stall {
            return Err(stall.block());
        }
        let by_id: std::collections::HashMap<_, _> =
            xstore::chunker::chunk_slice(&self.params, &self.data)
                .map(|c| {
                    (
                        c.id,
                        self.data[c.offset as usize..c.offset as usize + c.length as usize]
                            .to_vec(),
                    )
                })
                .collect();
        let mut out = Vec::new();
        for c in ids {
            let mut bytes = by_id[&c.id].clone();
            if self.lie {
                bytes[0] ^= 1;
            }
            self.fetched
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            out.push(xstore::FetchedChunk {
                data: bytes,
                // The liar's bytes claim to need no compression: they are verified anyway.
                sent: match self.lie {
                    true => xstore::SentForm::Uncompressed,
                    false => xstore::SentForm::Plain,
                },
            });
        }
        Ok(out)
    }
}

impl Source for Remote {
    fn stat(&self, path: &Path) -> io::Result<EntryMeta> {
        LocalSource.stat(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, io::Result<EntryMeta>)>> {
        LocalSource.list(dir)
    }
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        LocalSource.read_link(path)
    }
    fn xattrs(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        LocalSource.xattrs(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        Ok(Box::new(RemoteFile {
            data: std::fs::read(path)?,
            meta: LocalSource.stat(path)?,
            params: self.params,
            fetched: self.fetched.clone(),
            lie: self.lie,
            stall: self.stall.clone(),
        }))
    }
}

#[test]
fn sources_that_chunk_remotely_send_only_missing_chunks_and_are_verified() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut big = seeded_bytes(11, 8 << 20);
    std::fs::write(src.join("big"), &big).unwrap();
    let repo = Repository::init(&work.path().join("repo"), &InitOptions::default()).unwrap();
    let fetched = std::sync::Arc::new(AtomicU64::new(0));
    let remote = Remote {
        params: repo.chunker_params(),
        fetched: fetched.clone(),
        lie: false,
        stall: None,
    };
    let mut o = opts("h", &src);
    o.parent = ParentChoice::None;
    let s1 = repo.backup(&remote, &o).unwrap();
    assert!(s1.is_complete());
    assert_eq!(fetched.load(Ordering::Relaxed), 8 << 20);
    // Change 1 byte: only the chunk around it travels.
    big[4 << 20] ^= 0xff;
    std::fs::write(src.join("big"), &big).unwrap();
    fetched.store(0, Ordering::Relaxed);
    let s2 = repo.backup(&remote, &o).unwrap();
    let sent = fetched.load(Ordering::Relaxed);
    assert!(
        sent > 0 && sent <= 2 * u64::from(repo.chunker_params().max()),
        "{sent} bytes sent"
    );
    let dst = work.path().join("dst");
    repo.restore_now(&s2, &dst, &xstore_tests::exact_restore())
        .unwrap();
    assert_eq!(
        std::fs::read(restored_path(&dst, &src).join("big")).unwrap(),
        big
    );
    // A source whose bytes do not match its ids gets the file refused, never stored.
    big[0] ^= 0xff;
    std::fs::write(src.join("big"), &big).unwrap();
    let liar = Remote {
        params: repo.chunker_params(),
        fetched,
        lie: true,
        stall: None,
    };
    let s3 = repo.backup(&liar, &o).unwrap();
    assert_eq!(s3.status, SnapshotStatus::Partial);
    assert!(
        s3.errors[0].message.contains("does not match its id"),
        "{:?}",
        s3.errors
    );
    assert!(repo
        .check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .unwrap()
        .problems
        .is_empty());
}

/// Backups sharing one [`xstore::SharedIngest`] (the pulls of one account in one run): one
/// fails after storing shared chunks (over its budget), the next relies on those chunks, and
/// its snapshot commits, checks, survives gc and restores exactly. What nobody references
/// stays dead and gc reclaims it; the shared packs are never discarded with the failed backup.
#[test]
fn a_failed_backup_leaves_its_shared_chunks_to_the_others() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_fixture(&src, 31);
    for i in 0..4u64 {
        std::fs::write(
            src.join(format!("big{i}")),
            seeded_bytes(500 + i, 3_000_000),
        )
        .unwrap();
    }
    let repo = Repository::init(&work.path().join("repo"), &InitOptions::default()).unwrap();
    {
        let shared = repo.shared_ingest().unwrap();
        let mut failing = opts("web1", &src);
        failing.budgets = vec![xstore::StoreBudget::new(
            "web1's pull cap of 5 MB",
            5_000_000,
            5_000_000,
        )];
        let err = repo
            .backup_shared(&LocalSource, &failing, &shared)
            .unwrap_err();
        assert!(err.to_string().contains("pull cap of 5 MB"), "{err}");
        assert!(repo.snapshots().unwrap().is_empty());

        let b = repo
            .backup_shared(&LocalSource, &opts("web2", &src), &shared)
            .unwrap();
        // web1 stored up to 5 MB before it failed: web2 stored only the rest.
        let alone = Repository::init(&work.path().join("alone"), &InitOptions::default())
            .unwrap()
            .backup(&LocalSource, &opts("web2", &src))
            .unwrap();
        assert!(
            b.stats.new_bytes + 1_000_000 < alone.stats.new_bytes,
            "{:?}\nalone: {:?}",
            b.stats,
            alone.stats
        );
        let report = repo.check(CheckOptions::default()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
    let plan = repo
        .plan_gc(&xstore::GcOptions {
            grace: Some(std::time::Duration::ZERO),
            ..xstore::GcOptions::default()
        })
        .unwrap();
    repo.gc(plan, None).unwrap();
    let report = repo.check(CheckOptions::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let snapshot = repo.snapshots().unwrap().pop().unwrap();
    let dst = work.path().join("restored");
    repo.restore_now(&snapshot, &dst, &xstore_tests::exact_restore())
        .unwrap();
    assert_same_tree(&src, &restored_path(&dst, &src), false);
}

/// A host of the account that reserves chunks and then stalls (a dying link, or a compromised
/// host that stops answering) delays a sibling sharing its run by the wait budget at most:
/// the sibling fetches the chunks itself and commits a complete snapshot while the stalled
/// one still hangs; the stalled one then fails its file alone.
#[test]
fn a_stalled_sibling_delays_a_shared_backup_by_the_wait_budget_at_most() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let big = seeded_bytes(12, 6 << 20);
    std::fs::write(src.join("big"), &big).unwrap();
    let repo = Repository::init(&work.path().join("repo"), &InitOptions::default()).unwrap();
    let shared = repo.shared_ingest().unwrap();
    let stall = std::sync::Arc::new(Stall::default());
    let remote = |stall: Option<std::sync::Arc<Stall>>| Remote {
        params: repo.chunker_params(),
        fetched: std::sync::Arc::new(AtomicU64::new(0)),
        lie: false,
        stall,
    };
    let stalled_source = remote(Some(stall.clone()));
    let honest = remote(None);
    std::thread::scope(|s| {
        let stalled = s.spawn(|| repo.backup_shared(&stalled_source, &opts("web1", &src), &shared));
        stall.wait_entered();
        // web1 holds the reservation of big's first chunks and does not answer.
        let web2 = repo
            .backup_shared(&honest, &opts("web2", &src), &shared)
            .unwrap();
        assert!(web2.is_complete(), "{:?}", web2.errors);
        assert_eq!(honest.fetched.load(Ordering::Relaxed), big.len() as u64);
        stall.release();
        let web1 = stalled.join().unwrap().unwrap();
        assert_eq!(web1.status, SnapshotStatus::Partial);
        assert!(
            web1.errors[0].message.contains("the link stalled"),
            "{:?}",
            web1.errors
        );
    });
    drop(shared);
    let report = repo.check(CheckOptions::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let web2 = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|s| s.host == "web2")
        .unwrap();
    let dst = work.path().join("restored");
    repo.restore_now(&web2, &dst, &xstore_tests::exact_restore())
        .unwrap();
    assert_eq!(
        std::fs::read(restored_path(&dst, &src).join("big")).unwrap(),
        big
    );
}
