//! Helpers shared by the integration tests: building a fixture tree with every kind of entry,
//! and comparing two trees byte for byte and metadata for metadata.
#![allow(clippy::unwrap_used, missing_docs)]

pub mod garage;
pub mod moto;
pub mod plaintext;
pub mod sshd;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use xstore::chunker::seeded_bytes;

/// The SHA-256 of `bytes` in hex, from `sha256sum` (what S3 requests signed by curl carry).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Plans and carries out a restore in one call, for tests that need no preview.
pub trait RestoreNow {
    /// [`xstore::Repository::plan_restore`], then [`xstore::Repository::restore`].
    fn restore_now(
        &self,
        snapshot: &xstore::Snapshot,
        target: &Path,
        opts: &xstore::RestoreOptions,
    ) -> Result<xstore::RestoreSummary, xstore::RestoreError>;
}

impl RestoreNow for xstore::Repository {
    fn restore_now(
        &self,
        snapshot: &xstore::Snapshot,
        target: &Path,
        opts: &xstore::RestoreOptions,
    ) -> Result<xstore::RestoreSummary, xstore::RestoreError> {
        self.restore(&self.plan_restore(snapshot, target, opts)?)
    }
}

/// Runs gc at a 0 % threshold: every dead byte is reclaimed.
pub fn gc_all_dead(repo: &xstore::Repository) -> xstore::GcReport {
    let plan = repo
        .plan_gc(&xstore::GcOptions {
            max_dead_percent: Some(0.0),
            grace: Some(std::time::Duration::ZERO),
            ..Default::default()
        })
        .unwrap();
    repo.gc(plan, None).unwrap()
}

/// Whether the pack journal records no uncommitted pack (every writer finished or cleaned up).
pub fn journal_is_empty(repo: &Path) -> bool {
    match std::fs::read_dir(repo.join("packs/uncommitted")) {
        Ok(mut items) => items.next().is_none(),
        Err(_) => true,
    }
}

/// `name` as a host name (a test's own names are valid).
pub fn host_name(name: &str) -> xstore::HostName {
    xstore::HostName::parse(name).expect("a valid host name")
}

/// A complete local backup of `paths` as a snapshot of `host` that enters no tier (so only
/// explicit plans expire it).
pub fn backup_untiered(repo: &xstore::Repository, host: &str, paths: &[&Path]) -> xstore::Snapshot {
    repo.backup(
        &xstore::LocalSource,
        &xstore::BackupOptions {
            tier: xstore::TierChoice::None,
            ..xstore::BackupOptions::new(
                host_name(host),
                paths.iter().map(|p| p.to_path_buf()).collect(),
            )
        },
    )
    .expect("backup")
}

/// A repository with small chunks (16/64/256 KiB) and 1 MiB packs: a few MiB of fixture data
/// spans many chunks and packs.
pub fn small_repo(path: &Path) -> xstore::Repository {
    xstore::Repository::init(
        path,
        &xstore::InitOptions {
            chunker: xstore::ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
            compression_level: 3,
            pack_size: 1 << 20,
            group: None,
        },
    )
    .unwrap()
}

/// Whether the filesystem under `dir` accepts `user.*` xattrs.
pub fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    fs::write(&probe, b"").unwrap();
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    fs::remove_file(&probe).unwrap();
    ok
}

fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: secs as i64,
            tv_nsec: nanos as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs as i64,
            tv_nsec: nanos as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Makes a fifo at `path` with `mode`.
pub fn make_fifo(path: &Path, mode: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(mode),
        0,
    )
    .unwrap();
}

/// Builds a tree with every kind of entry the format stores, at `root` (created).
/// `seed` varies the content.
pub fn make_fixture(root: &Path, seed: u64) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("small.txt"), format!("hello {seed}\n")).unwrap();
    fs::write(
        root.join("sub/random.bin"),
        seeded_bytes(seed, 3 * 1024 * 1024 + 123),
    )
    .unwrap();
    // Repeated content: deduplicates within the snapshot.
    fs::write(
        root.join("sub/deeper/copy.bin"),
        seeded_bytes(seed, 3 * 1024 * 1024 + 123),
    )
    .unwrap();
    let text: String = (0..20_000)
        .map(|i| format!("line {i} of a log file {seed}\n"))
        .collect();
    fs::write(root.join("sub/log.txt"), text).unwrap();
    // A sparse file: a hole between two data regions.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(root.join("sparse.img")).unwrap();
        f.write_all(b"start").unwrap();
        f.seek(SeekFrom::Start(8 * 1024 * 1024)).unwrap();
        f.write_all(b"end").unwrap();
        // One that ends in a hole: its length is past its last written byte.
        let f = fs::File::create(root.join("sparse-tail.img")).unwrap();
        (&f).write_all(b"head").unwrap();
        f.set_len(5 * 1024 * 1024 + 7).unwrap();
    }
    // Names that are not UTF-8 and names with spaces and newlines.
    fs::write(root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"bytes").unwrap();
    fs::write(root.join("with space\nand newline"), b"odd").unwrap();
    // Symlinks: relative, absolute, dangling, pointing outside the tree.
    std::os::unix::fs::symlink("small.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("link-dangling")).unwrap();
    std::os::unix::fs::symlink("../../../../outside", root.join("sub/link-up")).unwrap();
    // Hard links, one across directories.
    fs::write(root.join("hard-a"), b"linked content").unwrap();
    fs::hard_link(root.join("hard-a"), root.join("sub/hard-b")).unwrap();
    make_fifo(&root.join("fifo"), 0o640);
    // A character device (1:3, like /dev/null) where we may create one (root, CAP_MKNOD).
    let _ = rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null-dev"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    );
    // Modes, including setgid and sticky.
    fs::set_permissions(root.join("small.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o2750)).unwrap();
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root.join("sub/log.txt"), fs::Permissions::from_mode(0o444)).unwrap();
    if xattrs_supported(root) {
        xattr::set(root.join("small.txt"), "user.comment", b"an xattr value").unwrap();
        xattr::set(root.join("sub"), "user.dir", b"on a directory").unwrap();
        xattr::set(root.join("sub/random.bin"), "user.bin", &[0u8, 1, 2, 255]).unwrap();
    }
    // Nanosecond mtimes, set last (deepest first) so directory times stick.
    let mut all = Vec::new();
    walk(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as u64 * 977, 123_456_789 + i as u32);
    }
    set_mtime(root, 1_650_000_000, 999_999_999);
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

/// Relative path → description of everything restore must reproduce.
fn describe(root: &Path, check_owner: bool) -> (HashMap<PathBuf, String>, Vec<Vec<PathBuf>>) {
    let mut all = Vec::new();
    walk(root, &mut all);
    all.push(root.to_path_buf());
    let mut out = HashMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for p in all {
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
            continue; // never stored, by design
        }
        let mut d = format!(
            "mode={:o} mtime={}.{:09}",
            m.mode(),
            m.mtime(),
            m.mtime_nsec()
        );
        if check_owner {
            d += &format!(" owner={}:{}", m.uid(), m.gid());
        }
        if ft.is_file() {
            let data = fs::read(&p).unwrap();
            d += &format!(
                " file size={} blake3={}",
                data.len(),
                xstore::ChunkId::of(&data)
            );
            if m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
        } else if ft.is_symlink() {
            d += &format!(" symlink -> {:?}", fs::read_link(&p).unwrap());
        } else if ft.is_dir() {
            d += " dir";
        } else {
            d += &format!(" special rdev={}", m.rdev());
        }
        if !ft.is_symlink() {
            let mut xs: Vec<(String, Vec<u8>)> = xattr::list(&p)
                .map(|l| {
                    l.filter(|n| n.as_bytes().starts_with(b"user."))
                        .map(|n| {
                            (
                                n.to_string_lossy().into_owned(),
                                xattr::get(&p, &n).unwrap().unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            xs.sort();
            d += &format!(" xattrs={xs:?}");
        }
        out.insert(rel, d);
    }
    // Links whose partners are outside the compared tree are ordinary files here.
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (out, groups)
}

/// Asserts that `restored` reproduces `original`: names, kinds, content, modes, mtimes (ns),
/// symlink targets, user xattrs, hard-link groups, and owners when `check_owner`.
/// Sockets are skipped by design and ignored here.
pub fn assert_same_tree(original: &Path, restored: &Path, check_owner: bool) {
    let (a, ga) = describe(original, check_owner);
    let (b, gb) = describe(restored, check_owner);
    let mut missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    missing.sort();
    let mut extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    extra.sort();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (k, v) in &a {
        assert_eq!(v, &b[k], "metadata or content differs at {k:?}");
    }
    assert_eq!(ga, gb, "hard link groups differ");
}

/// The path under which a backed-up absolute path is restored inside `target`.
pub fn restored_path(target: &Path, source: &Path) -> PathBuf {
    target.join(source.canonicalize().unwrap().strip_prefix("/").unwrap())
}

/// Expires every snapshot of `host` but the newest `keep` (a `forget --keep-last` applied).
pub fn forget_keep_last(repo: &xstore::Repository, host: &str, keep: usize) -> xstore::Applied {
    let mut plan = repo
        .plan_forget(
            &xstore::retention::KeepPolicy {
                last: Some(keep),
                ..Default::default()
            },
            Some(&host_name(host)),
            xstore::now_ns(),
        )
        .unwrap();
    for d in &mut plan.decisions {
        if d.action == xstore::retention::Action::Expire {
            d.changed = true;
        }
    }
    repo.apply_plan(&plan).unwrap()
}

/// Xattrs as the local filesystem has them.
pub type Xattrs = std::io::Result<Vec<(Vec<u8>, Vec<u8>)>>;

/// The local filesystem with test hooks: `before_open` runs before every
/// [`xstore::Source::open`] (a test changes the file between the listing and the open there,
/// the race a hostile user wins), and `xattrs` answers for the xattrs (what a customer's host
/// may send).
pub struct Hooked<O, X> {
    /// Runs before each open; an error fails the open.
    pub before_open: O,
    /// The xattrs of a path.
    pub xattrs: X,
}

/// The local filesystem with only an open hook ([`Hooked`]).
pub fn open_hook<O: Fn(&Path) -> std::io::Result<()> + Send + Sync>(
    before_open: O,
) -> Hooked<O, fn(&Path) -> Xattrs> {
    Hooked {
        before_open,
        xattrs: |path| xstore::Source::xattrs(&xstore::LocalSource, path),
    }
}

impl<O, X> xstore::Source for Hooked<O, X>
where
    O: Fn(&Path) -> std::io::Result<()> + Send + Sync,
    X: Fn(&Path) -> Xattrs + Send + Sync,
{
    fn stat(&self, path: &Path) -> std::io::Result<xstore::EntryMeta> {
        xstore::LocalSource.stat(path)
    }
    fn list(
        &self,
        dir: &Path,
    ) -> std::io::Result<Vec<(Vec<u8>, std::io::Result<xstore::EntryMeta>)>> {
        xstore::LocalSource.list(dir)
    }
    fn read_link(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        xstore::LocalSource.read_link(path)
    }
    fn xattrs(&self, path: &Path) -> Xattrs {
        (self.xattrs)(path)
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn xstore::SourceFile>> {
        (self.before_open)(path)?;
        xstore::LocalSource.open(path)
    }
}

/// Restore options for a snapshot of the test's own tree, which is trusted: everything as it
/// was, devices and set-id bits included (`trusted_specials`).
pub fn exact_restore() -> xstore::RestoreOptions {
    xstore::RestoreOptions {
        trusted_specials: true,
        ..xstore::RestoreOptions::default()
    }
}
