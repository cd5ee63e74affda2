//! Expiring one snapshot and reclaiming its space, in repositories holding 10, 100 and 1000
//! snapshots of a slowly changing tree; and rsnapshot's cost of dropping one snapshot of the
//! same tree (`rm -rf` of the hard-linked copy it keeps). Prints a table and the ratios.
//!
//! ```text
//! DATA=~/.cache/xstore/bench/linux-source-6.1 cargo run --release -p xstore-bench-retention
//! XSTORE_BENCH_FILES=2000 XSTORE_BENCH_SNAPSHOTS=10,30 cargo run --release -p xstore-bench-retention
//! ```
//!
//! The tree: a copy of `DATA` when set, else `XSTORE_BENCH_FILES` generated files (default
//! 20000) in directories of 100, 1 KiB to 64 KiB with every 50th file 512 KiB. A `var/log`
//! with 20 files is added. Between snapshots the 20 logs and 5 other files change (a host's
//! logs and a little configuration). `XSTORE_BENCH_DIR` chooses where the work happens.
//! The timed operation is what a rotation does to the oldest snapshot: open the repository,
//! plan and apply its expiry, then `gc` at the default threshold (10 %). The first, full
//! snapshot is expired before timing (untimed, reported separately): from then on every expiry
//! is a steady-state one. Each measurement runs on a fresh copy of the repository, three
//! times, each after the disk has gone idle (`settle`); the median is printed. rsnapshot's
//! drop is measured the same way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xstore::retention::KeepPolicy;
use xstore::{BackupOptions, GcOptions, InitOptions, LocalSource, Repository, TierChoice};
use xstore_chunker::seeded_bytes;

const HOT_FILES: usize = 20;
const OTHER_CHANGES: usize = 5;
const REPEATS: usize = 3;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn file_len(i: usize) -> usize {
    if i.is_multiple_of(50) {
        512 << 10
    } else {
        1024 + (i * 7919) % (63 << 10)
    }
}

fn file_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("d{:03}", i / 100))
        .join(format!("f{i:05}"))
}

/// Regular files under `dir`, sorted (the change targets of a `DATA` tree).
fn list_files(dir: &Path, out: &mut Vec<(PathBuf, usize)>) -> Res<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let t = e.file_type()?;
        if t.is_dir() {
            list_files(&e.path(), out)?;
        } else if t.is_file() {
            out.push((e.path(), e.metadata()?.len() as usize));
        }
    }
    Ok(())
}

/// Builds the tree: a copy of `data` when given, else generated. Returns the files other
/// than the logs (path, length) and the total bytes.
fn make_tree(root: &Path, files: usize, data: Option<&Path>) -> Res<(Vec<(PathBuf, usize)>, u64)> {
    let mut list = Vec::new();
    if let Some(data) = data {
        let status = Command::new("cp").arg("-a").arg(data).arg(root).status()?;
        if !status.success() {
            return Err(format!("cp -a {} failed", data.display()).into());
        }
        list_files(root, &mut list)?;
    } else {
        for i in 0..files {
            let p = file_path(root, i);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&p, seeded_bytes(i as u64, file_len(i)))?;
            list.push((p, file_len(i)));
        }
    }
    let total = list.iter().map(|(_, l)| *l as u64).sum();
    std::fs::create_dir_all(root.join("var/log"))?;
    for h in 0..HOT_FILES {
        std::fs::write(
            root.join(format!("var/log/app{h}.log")),
            seeded_bytes(1_000_000 + h as u64, 16 << 10),
        )?;
    }
    Ok((list, total))
}

/// The change between snapshot `n` and `n + 1`.
fn change_tree(root: &Path, files: &[(PathBuf, usize)], n: u64) -> Res<()> {
    for h in 0..HOT_FILES {
        let seed = 2_000_000 + n * 100 + h as u64;
        std::fs::write(
            root.join(format!("var/log/app{h}.log")),
            seeded_bytes(seed, 16 << 10),
        )?;
    }
    for k in 0..OTHER_CHANGES as u64 {
        let (path, len) = &files[((n * 31 + k * 7_777) % files.len() as u64) as usize];
        std::fs::write(path, seeded_bytes(3_000_000 + n * 10 + k, *len))?;
    }
    Ok(())
}

fn backup(repo: &Repository, src: &Path) -> Res<()> {
    repo.backup(
        &LocalSource,
        &BackupOptions {
            tier: TierChoice::None,
            ..BackupOptions::new(xstore::HostName::parse("web1")?, vec![src.to_path_buf()])
        },
    )?;
    Ok(())
}

/// Expires the oldest snapshot: keep-last (count − 1).
fn expire_oldest(repo: &Repository) -> Res<u64> {
    let n = repo.snapshots()?.len();
    let plan = repo.plan_forget(
        &KeepPolicy {
            last: Some(n - 1),
            ..Default::default()
        },
        None,
        xstore::now_ns(),
    )?;
    Ok(repo.apply_plan(&plan)?.released.stored_bytes)
}

fn copy_dir(from: &Path, to: &Path) -> Res<()> {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !status.success() {
        return Err(format!("cp -a {} {} failed", from.display(), to.display()).into());
    }
    Ok(())
}

struct Sample {
    open: Duration,
    expire: Duration,
    gc: Duration,
    released: u64,
    freed: u64,
}

/// Waits until the disk is idle: after gigabytes of copying, the device keeps writing back for
/// seconds after `sync` returns, and every fsync of a timed run would wait behind it. Idle
/// means three fsyncs of a small probe file in a row under 5 ms (at most 60 s of waiting).
fn settle(dir: &Path) -> Res<()> {
    use std::io::Write;
    Command::new("sync").status()?;
    let probe = dir.join(".settle-probe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        let t = Instant::now();
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(b"probe")?;
        f.sync_all()?;
        if t.elapsed() < Duration::from_millis(5) {
            quiet += 1;
        } else {
            quiet = 0;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    std::fs::remove_file(&probe)?;
    Ok(())
}

/// One timed run on a fresh copy. Copies are kept until the end: deleting gigabytes between
/// runs makes the filesystem's background work slow the next run's fsyncs.
fn measure(repo_dir: &Path, copy: &Path) -> Res<Sample> {
    copy_dir(repo_dir, copy)?;
    settle(copy)?;
    let t = Instant::now();
    let repo = Repository::open(copy)?;
    let open = t.elapsed();
    let released = expire_oldest(&repo)?;
    let expire = t.elapsed() - open;
    let report = repo.gc(repo.plan_gc(&GcOptions::default())?, None)?;
    drop(repo);
    let gc = t.elapsed() - open - expire;
    eprintln!("  sample: open {open:?}, expire {expire:?}, gc {gc:?}");
    Ok(Sample {
        open,
        expire,
        gc,
        released,
        freed: report.bytes_freed,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// rsnapshot: one real run makes `alpha.0`; each drop is `rm -rf` of a hard-linked copy as
/// rsnapshot's rotation makes (`cp -al`) and removes it.
fn rsnapshot_drop(src: &Path, work: &Path) -> Res<Option<Duration>> {
    if Command::new("rsnapshot").arg("-V").output().is_err() {
        return Ok(None);
    }
    let root = work.join("rsnapshot");
    std::fs::create_dir_all(&root)?;
    let conf = work.join("rsnapshot.conf");
    std::fs::write(
        &conf,
        format!(
            "config_version\t1.2\nsnapshot_root\t{}/\ncmd_cp\t/bin/cp\ncmd_rm\t/bin/rm\n\
             cmd_rsync\t/usr/bin/rsync\nretain\talpha\t2\nlockfile\t{}/rsnapshot.pid\n\
             backup\t{}/\tlocalhost/\n",
            root.display(),
            work.display(),
            src.display()
        ),
    )?;
    let status = Command::new("rsnapshot")
        .arg("-c")
        .arg(&conf)
        .arg("alpha")
        .status()?;
    if !status.success() {
        return Err("rsnapshot alpha failed".into());
    }
    let mut times = Vec::new();
    for k in 0..REPEATS {
        let copy = root.join(format!("alpha.drop{k}"));
        let status = Command::new("cp")
            .arg("-al")
            .arg(root.join("alpha.0"))
            .arg(&copy)
            .status()?;
        if !status.success() {
            return Err("cp -al failed".into());
        }
        settle(&root)?;
        let t = Instant::now();
        let status = Command::new("rm").arg("-rf").arg(&copy).status()?;
        times.push(t.elapsed());
        if !status.success() {
            return Err("rm -rf failed".into());
        }
    }
    Ok(Some(median(times)))
}

fn main() -> Res<()> {
    let files: usize = env_or("XSTORE_BENCH_FILES", "20000").parse()?;
    let mut checkpoints: Vec<usize> = env_or("XSTORE_BENCH_SNAPSHOTS", "10,100,1000")
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    checkpoints.sort_unstable();
    let base = PathBuf::from(env_or(
        "XSTORE_BENCH_DIR",
        &std::env::temp_dir().display().to_string(),
    ));
    std::fs::create_dir_all(&base)?;
    let work = tempfile::tempdir_in(&base)?;
    if std::env::var_os("XSTORE_BENCH_KEEP").is_some() {
        eprintln!("keeping {}", work.path().display());
    }
    let src = work.path().join("tree");
    let data = std::env::var_os("DATA").map(PathBuf::from);
    let (list, bytes) = make_tree(&src, files, data.as_deref())?;
    let files = list.len();
    println!(
        "tree: {} ({files} files + {HOT_FILES} logs, {} MB); each snapshot changes the {HOT_FILES} logs and {OTHER_CHANGES} other files",
        data.as_deref().map(|d| d.display().to_string()).unwrap_or_else(|| "generated".into()),
        bytes / 1_000_000
    );
    let rsnap = rsnapshot_drop(&src, work.path())?;

    let repo_dir = work.path().join("repo");
    let mut repo = Repository::init(&repo_dir, &InitOptions::default())?;
    // The full first snapshot, then N steady-state ones; the first is expired untimed.
    backup(&repo, &src)?;
    let mut made = 0usize;
    let mut first_expiry = None;
    let mut rows = Vec::new();
    for &n in &checkpoints {
        while made < n {
            change_tree(&src, &list, made as u64)?;
            backup(&repo, &src)?;
            made += 1;
            // The service's cron runs gc daily, after every sixth 4-hourly backup: small
            // packs (each commit's snapshot records) are merged then, not in the timed gc.
            if made.is_multiple_of(6) {
                repo.gc(repo.plan_gc(&GcOptions::default())?, None)?;
            }
            if made.is_multiple_of(100) {
                eprintln!("  {made} snapshots");
            }
        }
        if first_expiry.is_none() {
            let t = Instant::now();
            expire_oldest(&repo)?;
            repo.gc(repo.plan_gc(&GcOptions::default())?, None)?;
            first_expiry = Some(t.elapsed());
        }
        let count = repo.snapshots()?.len();
        let scratch = work.path().join(format!("copies-{n}"));
        std::fs::create_dir_all(&scratch)?;
        // Copies are taken of a closed repository.
        drop(repo);
        let mut samples = Vec::new();
        for k in 0..REPEATS {
            samples.push(measure(&repo_dir, &scratch.join(format!("copy-{k}")))?);
        }
        repo = Repository::open(&repo_dir)?;
        let open = median(samples.iter().map(|s| s.open).collect());
        let expire = median(samples.iter().map(|s| s.expire).collect());
        let gc = median(samples.iter().map(|s| s.gc).collect());
        let total = median(samples.iter().map(|s| s.open + s.expire + s.gc).collect());
        rows.push((
            count,
            open,
            expire,
            gc,
            total,
            samples[0].released,
            samples[0].freed,
        ));
    }
    drop(repo);
    if std::env::var_os("XSTORE_BENCH_KEEP").is_some() {
        let _ = work.keep();
    }

    println!(
        "xstore: open, expire the oldest snapshot, gc (10 %), close; median of {REPEATS} runs on fresh copies"
    );
    println!(
        "{:>10}  {:>8}  {:>10}  {:>8}  {:>9}  {:>14}  {:>12}",
        "snapshots", "open ms", "expire ms", "gc ms", "total ms", "released bytes", "freed bytes"
    );
    for (count, open, expire, gc, total, released, freed) in &rows {
        println!(
            "{count:>10}  {:>8.1}  {:>10.1}  {:>8.1}  {:>9.1}  {released:>14}  {freed:>12}",
            ms(*open),
            ms(*expire),
            ms(*gc),
            ms(*total)
        );
    }
    if let Some(t) = first_expiry {
        println!(
            "one-off: expiring the first (full) snapshot + gc took {:.1} ms (untimed above)",
            ms(t)
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "ratio {} / {} snapshots: {:.2} (target <= 1.5)",
            last.0,
            first.0,
            last.4.as_secs_f64() / first.4.as_secs_f64()
        );
        match rsnap {
            Some(r) => println!(
                "rsnapshot: rm -rf of one hard-linked snapshot ({} files): {:.1} ms; speedup of xstore at {} snapshots: {:.1}x (target >= 10)",
                files + HOT_FILES,
                ms(r),
                last.0,
                r.as_secs_f64() / last.4.as_secs_f64()
            ),
            None => println!("rsnapshot: not installed (apt-get install rsnapshot), no comparison"),
        }
    }
    Ok(())
}
