//! A hosting fleet at scale, built through the library: H hosts × S snapshots of F-file trees
//! (defaults 500 × 23 × 50,000: the service's steady state of 6 monthly, 4 weekly, 7 daily
//! and 6 hourly snapshots per host), then the time of every fleet report, of a rotation, of
//! gc and of one more backup commit in that repository.
//!
//!   cargo run --release -p xstore-bench-fleet-scale                       (500 × 23 × 50,000)
//!   HOSTS=50 SNAPSHOTS=23 FILES=5000 CHANGED=20 …                         (CI's short mode)
//!   FLEET_REPO=/big/disk/fleet …       (keep the built repository there and reuse it on the
//!                                       next run; the timed writes run on a copy of it)
//!
//! The trees come from a synthetic [`Source`] (no files on disk) through the real
//! [`Repository::backup`]: every host has the same F files (4 KiB on average, in directories
//! of 100, 20 directories per group) and each snapshot changes CHANGED of them (default 200,
//! nine in ten among the host's "hot" 2 %: logs and state), which stay changed afterwards, so
//! hosts drift apart as a fleet does. Each host gets its snapshots oldest first with the
//! tier and time it would hold in the steady state. Last, `check` and `repair index` of the
//! whole repository. Prints numbers and asserts nothing about time.

use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use xstore::bench_internals::{dir_bytes, peak_rss_mib};
use xstore::retention::KeepPolicy;
use xstore::{
    BackupOptions, CheckOptions, EntryKind, EntryMeta, GcOptions, InitOptions, Repository,
    Snapshot, Source, SourceFile, SourceKind, TierChoice,
};
use xstore_chunker::seeded_bytes;
use xstore_fleet::monitor::{account_states, FreshnessOptions, FreshnessTarget};
use xstore_fleet::Inventory;

const FILES_PER_DIR: usize = 100;
const DIRS_PER_GROUP: usize = 20;
const HOSTS_PER_ACCOUNT: usize = 5;
const ROOT: &str = "/fleet";
const BASE_NS: i64 = 1_700_000_000_000_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().replace('_', "").parse().unwrap_or_else(|_| {
            eprintln!("{name}={v}: expected a number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.rotate_left(21) ^ c.rotate_left(42);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 29)
}

fn host_name(h: usize) -> String {
    format!("host{h:04}")
}

/// What one host's tree looks like at one snapshot: per file, the snapshot that last changed
/// it (0: the fleet-wide base version).
struct HostTree {
    host: u64,
    versions: Vec<u32>,
}

/// A path inside the synthetic tree.
enum Node {
    Root,
    Group(usize),
    Dir(usize),
    File(usize),
}

struct FleetSource {
    tree: Arc<HostTree>,
}

impl FleetSource {
    fn files(&self) -> usize {
        self.tree.versions.len()
    }
    fn dirs(&self) -> usize {
        self.files().div_ceil(FILES_PER_DIR)
    }
    fn groups(&self) -> usize {
        self.dirs().div_ceil(DIRS_PER_GROUP)
    }

    fn parse(&self, path: &Path) -> io::Result<Node> {
        let not_found = || io::Error::new(io::ErrorKind::NotFound, path.display().to_string());
        let text = path.to_str().ok_or_else(not_found)?;
        let rest = text.strip_prefix(ROOT).ok_or_else(not_found)?;
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let number = |p: &str, prefix: char| -> io::Result<usize> {
            p.strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .ok_or_else(not_found)
        };
        let node = match parts.as_slice() {
            [] => Node::Root,
            [g] => Node::Group(number(g, 'g')?),
            [g, d] => {
                let (g, d) = (number(g, 'g')?, number(d, 'd')?);
                if d / DIRS_PER_GROUP != g {
                    return Err(not_found());
                }
                Node::Dir(d)
            }
            [g, d, f] => {
                let (g, d, f) = (number(g, 'g')?, number(d, 'd')?, number(f, 'f')?);
                if d / DIRS_PER_GROUP != g || f / FILES_PER_DIR != d {
                    return Err(not_found());
                }
                Node::File(f)
            }
            _ => return Err(not_found()),
        };
        let in_range = match node {
            Node::Root => true,
            Node::Group(g) => g < self.groups(),
            Node::Dir(d) => d < self.dirs(),
            Node::File(f) => f < self.files(),
        };
        if in_range {
            Ok(node)
        } else {
            Err(not_found())
        }
    }

    fn dir_meta() -> EntryMeta {
        meta(SourceKind::Stored(EntryKind::Dir), 0o755, 4096, BASE_NS, 1)
    }

    /// (seed, length, mtime) of file `i`'s current version.
    fn version(&self, i: usize) -> (u64, usize, i64) {
        match self.tree.versions.get(i).copied().unwrap_or(0) {
            0 => (i as u64, 512 + (i * 7_919) % 7_680, BASE_NS),
            v => {
                let seed = mix(self.tree.host, u64::from(v), i as u64);
                (
                    seed,
                    100 + (seed % 400) as usize,
                    BASE_NS + i64::from(v) * HOUR_NS,
                )
            }
        }
    }

    fn file_meta(&self, i: usize) -> EntryMeta {
        let (_, len, mtime) = self.version(i);
        let mut m = meta(
            SourceKind::Stored(EntryKind::File),
            0o644,
            len as u64,
            mtime,
            1,
        );
        m.attrs.inode = 1_000 + i as u64;
        m
    }

    fn meta_of(&self, node: &Node) -> EntryMeta {
        match node {
            Node::File(i) => self.file_meta(*i),
            _ => Self::dir_meta(),
        }
    }
}

fn meta(kind: SourceKind, mode: u32, size: u64, mtime_ns: i64, nlink: u64) -> EntryMeta {
    EntryMeta {
        kind,
        attrs: attrs(mode, size, mtime_ns, nlink),
    }
}

fn attrs(mode: u32, size: u64, mtime_ns: i64, nlink: u64) -> xstore::Attrs {
    xstore::Attrs {
        mode,
        uid: 0,
        gid: 0,
        size,
        mtime_ns,
        ctime_ns: mtime_ns,
        inode: 2,
        dev: 1,
        nlink,
        rdev: 0,
    }
}

type Listing = Vec<(Vec<u8>, io::Result<EntryMeta>)>;

impl Source for FleetSource {
    fn stat(&self, path: &Path) -> io::Result<EntryMeta> {
        if path == Path::new("/") {
            return Ok(Self::dir_meta());
        }
        Ok(self.meta_of(&self.parse(path)?))
    }

    fn list(&self, dir: &Path) -> io::Result<Listing> {
        let dirs = |range: std::ops::Range<usize>, prefix: char| -> Listing {
            range
                .map(|k| (format!("{prefix}{k:05}").into_bytes(), Ok(Self::dir_meta())))
                .collect()
        };
        match self.parse(dir)? {
            Node::Root => Ok((0..self.groups())
                .map(|g| (format!("g{g:03}").into_bytes(), Ok(Self::dir_meta())))
                .collect()),
            Node::Group(g) => {
                let first = g * DIRS_PER_GROUP;
                Ok(dirs(first..(first + DIRS_PER_GROUP).min(self.dirs()), 'd'))
            }
            Node::Dir(d) => {
                let first = d * FILES_PER_DIR;
                Ok((first..(first + FILES_PER_DIR).min(self.files()))
                    .map(|i| (format!("f{i:07}").into_bytes(), Ok(self.file_meta(i))))
                    .collect())
            }
            Node::File(_) => Err(io::Error::other("not a directory")),
        }
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        Err(io::Error::other(format!(
            "{}: not a symlink",
            path.display()
        )))
    }

    fn xattrs(&self, _: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SourceFile>> {
        match self.parse(path)? {
            Node::File(i) => {
                let (seed, len, _) = self.version(i);
                Ok(Box::new(FleetFile {
                    data: Cursor::new(seeded_bytes(seed, len)),
                    meta: self.file_meta(i),
                }))
            }
            _ => Err(io::Error::other("not a file")),
        }
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }
}

struct FleetFile {
    data: Cursor<Vec<u8>>,
    meta: EntryMeta,
}

impl Read for FleetFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.data.read(buf)
    }
}

impl SourceFile for FleetFile {
    fn current_meta(&mut self) -> io::Result<EntryMeta> {
        Ok(self.meta)
    }
}

/// The tier and age of snapshot `r` of `s` in the steady state, oldest first: 6 monthly,
/// 4 weekly, 7 daily, then hourly.
fn slot(r: usize, s: usize) -> (&'static str, i64) {
    let from_newest = s - 1 - r;
    let hourly = s.saturating_sub(17).min(6);
    let day = 24 * HOUR_NS;
    if from_newest < hourly {
        ("hourly", (1 + 4 * from_newest as i64) * HOUR_NS)
    } else if from_newest < hourly + 7 {
        ("daily", (1 + (from_newest - hourly) as i64) * day + HOUR_NS)
    } else if from_newest < hourly + 11 {
        ("weekly", (2 + (from_newest - hourly - 7) as i64) * 7 * day)
    } else {
        (
            "monthly",
            (2 + (from_newest - hourly - 11) as i64) * 30 * day,
        )
    }
}

struct Params {
    hosts: usize,
    snapshots: usize,
    files: usize,
    changed: usize,
}

impl Params {
    fn change(&self, tree: &mut HostTree, round: u32) {
        let hot = (self.files / 50).max(1);
        for k in 0..self.changed {
            let x = mix(tree.host, u64::from(round), k as u64);
            let i = if k % 10 < 9 {
                (x % hot as u64) as usize
            } else {
                (x % self.files as u64) as usize
            };
            if let Some(v) = tree.versions.get_mut(i) {
                *v = round;
            }
        }
    }
}

fn backup(
    repo: &Repository,
    tree: HostTree,
    host: &str,
    tier: &str,
    time_ns: i64,
) -> Res<Snapshot> {
    let source = FleetSource {
        tree: Arc::new(tree),
    };
    let snap = repo.backup(
        &source,
        &BackupOptions {
            tier: TierChoice::Named(tier.to_string()),
            time_ns: Some(time_ns),
            ..BackupOptions::new(xstore::HostName::parse(host)?, vec![PathBuf::from(ROOT)])
        },
    )?;
    if !snap.is_complete() {
        return Err(format!("{host}: snapshot {} is partial: {:?}", snap.id, snap.errors).into());
    }
    Ok(snap)
}

/// Builds the fleet; returns (seconds per backup of the first and of the last tenth of the
/// hosts, excluding each host's first snapshot).
fn build(repo: &Repository, p: &Params, now: i64) -> Res<(f64, f64)> {
    let tenth = (p.hosts / 10).max(1);
    let (mut early, mut late) = (Vec::new(), Vec::new());
    let t = Instant::now();
    for h in 0..p.hosts {
        let name = host_name(h);
        let mut tree = HostTree {
            host: h as u64,
            versions: vec![0; p.files],
        };
        for r in 0..p.snapshots {
            if r > 0 {
                p.change(&mut tree, r as u32);
            }
            let (tier, age) = slot(r, p.snapshots);
            let copy = HostTree {
                host: tree.host,
                versions: tree.versions.clone(),
            };
            let started = Instant::now();
            backup(repo, copy, &name, tier, now - age)?;
            let took = started.elapsed().as_secs_f64();
            if r > 0 && h < tenth {
                early.push(took);
            }
            if r > 0 && h >= p.hosts - tenth {
                late.push(took);
            }
        }
        if (h + 1) % (p.hosts / 20).max(1) == 0 {
            eprintln!(
                "  built {}/{} hosts in {:.0} s",
                h + 1,
                p.hosts,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok((mean(&early), mean(&late)))
}

fn inventory(p: &Params) -> Res<Inventory> {
    let mut text = String::new();
    for a in 0..p.hosts.div_ceil(HOSTS_PER_ACCOUNT) {
        text.push_str(&format!(
            "[[account]]\nname = \"acct{a:03}\"\nallocation = \"10 GiB\"\n"
        ));
        for h in a * HOSTS_PER_ACCOUNT..((a + 1) * HOSTS_PER_ACCOUNT).min(p.hosts) {
            text.push_str(&format!("[[account.host]]\nname = \"{}\"\n", host_name(h)));
        }
    }
    Ok(Inventory::parse(&text, Path::new("fleet-scale inventory"))?)
}

fn row(what: &str, value: String) {
    println!("{what:<52} {value}");
}

fn timed<T>(what: &str, f: impl FnOnce() -> Res<T>, note: impl FnOnce(&T) -> String) -> Res<T> {
    let t = Instant::now();
    let v = f()?;
    let secs = t.elapsed().as_secs_f64();
    let n = note(&v);
    row(
        what,
        if n.is_empty() {
            format!("{secs:.3} s")
        } else {
            format!("{secs:.3} s  ({n})")
        },
    );
    Ok(v)
}

/// A backup of a one-file host: the fixed cost of a backup and its commit.
fn probe_backup(repo: &Repository, work: &Path, now: i64) -> Res<f64> {
    let dir = work.join("probe");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hostname"), format!("probe {now}\n"))?;
    let t = Instant::now();
    repo.backup(
        &xstore::LocalSource,
        &BackupOptions::new(xstore::HostName::parse("probe")?, vec![dir]),
    )?;
    Ok(t.elapsed().as_secs_f64())
}

fn main() -> Res<()> {
    let p = Params {
        hosts: env_usize("HOSTS", 500).max(1),
        snapshots: env_usize("SNAPSHOTS", 23).max(1),
        files: env_usize("FILES", 50_000).max(1),
        changed: env_usize("CHANGED", 200),
    };
    let now = xstore::now_ns();
    let work = tempfile::tempdir_in(
        std::env::var_os("XSTORE_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )?;
    let keep = std::env::var_os("FLEET_REPO").map(PathBuf::from);
    let built_path = keep.clone().unwrap_or_else(|| work.path().join("repo"));
    println!(
        "fleet-scale: {} hosts x {} snapshots x {} files, {} changed per snapshot; {} cores",
        p.hosts,
        p.snapshots,
        p.files,
        p.changed,
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    let reuse = built_path.join("config").exists();
    if reuse {
        println!("reusing the repository at {}", built_path.display());
    } else {
        let repo = Repository::init(&built_path, &InitOptions::default())?;
        let empty_probe = probe_backup(&repo, work.path(), now)?;
        let t = Instant::now();
        let (early, late) = build(&repo, &p, now)?;
        row(
            "build (backups through the library)",
            format!(
                "{:.0} s; one backup {:.1} ms (first tenth of hosts) -> {:.1} ms (last tenth)",
                t.elapsed().as_secs_f64(),
                early * 1e3,
                late * 1e3
            ),
        );
        row(
            "backup of a 1-file host, empty repository",
            format!("{:.1} ms", empty_probe * 1e3),
        );
    }
    row(
        "repository on disk",
        format!("{:.0} MiB", dir_bytes(&built_path) as f64 / 1048576.0),
    );

    let inv = inventory(&p)?;
    let open = || -> Res<Repository> { Ok(Repository::open_read_only(&built_path)?) };
    timed("open read-only", open, |_| String::new())?;
    timed(
        "snapshots (records and tier positions)",
        || {
            let repo = open()?;
            let positions = repo.tier_positions()?;
            Ok((repo.snapshots()?.len(), positions.len()))
        },
        |(n, _)| format!("{n} snapshots"),
    )?;
    timed(
        "hosts --inventory",
        || {
            let repo = open()?;
            let mut n = 0;
            for h in &inv.hosts {
                n += xstore_fleet::pull::host_status(&repo, &h.name)?
                    .record
                    .map_or(0, |r| r.snapshots);
            }
            Ok(n)
        },
        |n| format!("{n} snapshots counted"),
    )?;
    timed(
        "check-freshness --inventory (all hosts)",
        || {
            let repo = open()?;
            let targets: Vec<FreshnessTarget> =
                inv.hosts.iter().map(FreshnessTarget::from).collect();
            let report = xstore_fleet::monitor::freshness(
                &repo,
                &targets,
                &FreshnessOptions {
                    now_ns: now,
                    ..FreshnessOptions::default()
                },
            )?;
            Ok(report.state)
        },
        |s| s.label().to_string(),
    )?;
    timed(
        "du --host (one host and its snapshots)",
        || {
            let repo = open()?;
            let host = xstore::HostName::parse(&host_name(0))?;
            let of_host = repo.host_snapshots(&host)?;
            let usage = repo.usage_of(&of_host)?;
            let per = repo.snapshot_usage(&host)?;
            Ok((usage, per.len()))
        },
        |(u, n)| format!("{} referenced blobs, {n} snapshots", u.referenced_blobs),
    )?;
    timed(
        "du --inventory (every account and host)",
        || {
            // As `xstore du` does: one pass for every host and account.
            let repo = open()?;
            let groups: Vec<Vec<xstore::HostName>> =
                inv.accounts.iter().map(|a| a.hosts.clone()).collect();
            let fleet = repo.fleet_usage(&groups)?;
            let accounts = account_states(&inv.accounts, &fleet, 1.0, f64::INFINITY);
            Ok((accounts.len(), fleet.hosts.len()))
        },
        |(a, h)| format!("{a} accounts, {h} hosts"),
    )?;
    timed(
        "metrics --inventory",
        || Ok(xstore_fleet::metrics::metrics(&open()?, Some(&inv), now)?.len()),
        |n| format!("{n} bytes of text"),
    )?;
    timed(
        "forget --keep-daily 7 --keep-weekly 4 --dry-run",
        || {
            let policy = KeepPolicy {
                hourly: Some(6),
                daily: Some(7),
                weekly: Some(4),
                monthly: Some(6),
                ..KeepPolicy::default()
            };
            Ok(open()?.plan_forget(&policy, None, now)?.decisions.len())
        },
        |n| format!("{n} decisions"),
    )?;

    // The writes, on a copy when the built repository is kept for the next run.
    let write_path = if keep.is_some() {
        let copy = work.path().join("copy");
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&built_path)
            .arg(&copy)
            .status()?;
        if !status.success() {
            return Err(format!("cp -a {} failed", built_path.display()).into());
        }
        copy
    } else {
        built_path.clone()
    };
    let repo = timed(
        "open writable",
        || Ok(Repository::open(&write_path)?),
        |_| String::new(),
    )?;
    let plan = timed(
        "rotate daily --all --dry-run (plan)",
        || Ok(repo.plan_rotate("daily", None)?),
        |plan| format!("{} expire", plan.expired().count()),
    )?;
    timed(
        "rotate daily --all (apply that plan)",
        || Ok(repo.apply_plan(&plan)?),
        |a| format!("{} relabelled", a.relabelled),
    )?;
    timed(
        "gc",
        || Ok(repo.gc(repo.plan_gc(&GcOptions::default())?, None)?),
        |r| {
            format!(
                "{} packs rewritten, {} deleted, {:.1} MiB freed",
                r.packs_rewritten,
                r.packs_deleted,
                r.bytes_freed as f64 / 1048576.0
            )
        },
    )?;
    let mut tree = HostTree {
        host: 0,
        versions: vec![0; p.files],
    };
    for r in 1..=p.snapshots {
        p.change(&mut tree, r as u32);
    }
    timed(
        "one more backup of a host (its next snapshot)",
        || backup(&repo, tree, &host_name(0), "hourly", now),
        |s| format!("{} files, {} new blobs", s.stats.files, s.stats.new_blobs),
    )?;
    let probe = probe_backup(&repo, work.path(), now + 1)?;
    row(
        "backup of a 1-file host in this repository",
        format!("{:.1} ms", probe * 1e3),
    );
    let report = timed(
        "check (mark pass and refcount audit, no data read)",
        || Ok(repo.check(CheckOptions::default())?),
        |r| {
            format!(
                "{} blobs, {} trees and chunk lists, {} problems",
                r.blobs,
                r.trees,
                r.problems.len()
            )
        },
    )?;
    if let Some(p) = report.problems.first() {
        return Err(format!("check found {} problems, first: {p}", report.problems.len()).into());
    }
    drop(repo);
    timed(
        "repair index (rebuilt from the packs and the old index)",
        || Ok(Repository::repair_index(&write_path)?),
        |r| {
            format!(
                "{} packs, {} blobs, {} snapshots",
                r.packs, r.blobs, r.snapshots
            )
        },
    )?;
    row("peak RSS", format!("{:.0} MiB", peak_rss_mib()));
    Ok(())
}
