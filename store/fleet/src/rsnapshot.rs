//! Migrating an rsnapshot service: its configuration becomes an inventory, and every backup
//! point `<snapshot_root>/<tier>.<n>/<host>/` becomes a snapshot of that host with the time
//! rsnapshot recorded and its tier label, so that `daily.3` names the same day before and
//! after (README, "Migrating from rsnapshot").
//!
//! The rsnapshot tree is only read: files through [`RootedSource`] (no symlink followed,
//! `O_NOATIME`), directories by listing. An import is resumable: a backup point whose host
//! already has a snapshot with its exact time is not imported again (only relabelled when
//! rsnapshot has rotated it into another tier since).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xstore_format::host::HostName;
use xstore_format::snapshot::{Snapshot, SnapshotId};
use xstore_retention::Schedule;

use crate::inventory::{Inventory, DEFAULT_AGENT_PORT};
use xstore::Progress;
use xstore::Repository;
use xstore::RootedSource;
use xstore::{Applied, TierChoice};
use xstore::{BackupOptions, ParentChoice};
use xstore::{Error, Result};

/// A bad line in an rsnapshot configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: line {line}: {reason}", path.display())]
pub struct RsnapshotConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// Its line (1-based; 0 when the file as a whole is wrong).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Where one `backup` line copies from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsnapshotSource {
    /// `[user@]host:/path/`, over ssh: a host xstore can pull.
    Ssh {
        /// The remote user (rsnapshot's default: the local user's name; root here).
        user: String,
        /// The address rsync connected to.
        address: String,
        /// The remote path.
        path: PathBuf,
    },
    /// A local path or an `rsync://` module: its backup points import, but it is not a host
    /// of the inventory.
    Other(String),
}

/// One `backup SOURCE DEST` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsnapshotBackup {
    /// Its line in the configuration.
    pub line: usize,
    /// Where it copies from.
    pub source: RsnapshotSource,
    /// The host name: the first component of DEST (`web1.example.net/` → `web1.example.net`).
    pub host: HostName,
}

/// What xstore needs of an rsnapshot configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsnapshotConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// `snapshot_root`.
    pub snapshot_root: PathBuf,
    /// The `retain` (or old `interval`) lines in file order, lowest tier first.
    pub schedule: Schedule,
    /// The `backup` lines.
    pub backups: Vec<RsnapshotBackup>,
    /// `-p PORT` from `ssh_args`, when given.
    pub ssh_port: Option<u16>,
}

impl RsnapshotConfig {
    /// Parses rsnapshot.conf text (fields separated by tabs, as rsnapshot requires; runs of
    /// spaces are accepted too). `include_conf` is refused: the included file is not read.
    pub fn parse(text: &str, path: &Path) -> std::result::Result<Self, RsnapshotConfigError> {
        let fail = |line: usize, reason: String| RsnapshotConfigError {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut snapshot_root = None;
        let mut retain: Vec<(String, usize)> = Vec::new();
        let mut backups = Vec::new();
        let mut ssh_port = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = if line.contains('\t') {
                line.split('\t').filter(|f| !f.is_empty()).collect()
            } else {
                line.split_whitespace().collect()
            };
            let Some((&key, args)) = fields.split_first() else {
                continue;
            };
            match key {
                "snapshot_root" => {
                    let [dir] = args else {
                        return Err(fail(n, "snapshot_root takes one directory".into()));
                    };
                    if !dir.starts_with('/') {
                        return Err(fail(n, format!("snapshot_root {dir:?} is not absolute")));
                    }
                    snapshot_root = Some(PathBuf::from(dir));
                }
                "retain" | "interval" => {
                    let [name, count] = args else {
                        return Err(fail(n, format!("{key} takes a name and a count")));
                    };
                    let count: usize = count
                        .parse()
                        .ok()
                        .filter(|c| *c > 0)
                        .ok_or_else(|| fail(n, format!("{key} {name}: bad count {count:?}")))?;
                    if retain.iter().any(|(r, _)| r == name) {
                        return Err(fail(n, format!("{key} {name} is given twice")));
                    }
                    retain.push((name.to_string(), count));
                }
                "backup" => {
                    let (src, dest) = match args {
                        [src, dest] | [src, dest, _] => (*src, *dest),
                        _ => {
                            return Err(fail(
                                n,
                                "backup takes SOURCE DEST [OPTIONS], separated by tabs".into(),
                            ))
                        }
                    };
                    let host = dest_host(dest).map_err(|e| fail(n, e))?;
                    backups.push(RsnapshotBackup {
                        line: n,
                        source: parse_source(src),
                        host,
                    });
                }
                "ssh_args" => ssh_port = ssh_port_of(args).map_err(|e| fail(n, e))?,
                "include_conf" => {
                    return Err(fail(
                        n,
                        "include_conf is not supported: import the included file's lines into one configuration".into(),
                    ))
                }
                _ => {}
            }
        }
        let snapshot_root = snapshot_root.ok_or_else(|| fail(0, "no snapshot_root".into()))?;
        if retain.is_empty() {
            return Err(fail(0, "no retain (or interval) lines".into()));
        }
        let text: Vec<String> = retain.iter().map(|(t, c)| format!("{t}={c}")).collect();
        let schedule = Schedule::parse(&text.join(","))
            .map_err(|e| fail(0, format!("the retain lines: {e}")))?;
        Ok(RsnapshotConfig {
            path: path.to_path_buf(),
            snapshot_root,
            schedule,
            backups,
            ssh_port,
        })
    }

    /// Reads and parses an rsnapshot configuration file.
    pub fn load(path: &Path) -> std::result::Result<Self, RsnapshotConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| RsnapshotConfigError {
            path: path.to_path_buf(),
            line: 0,
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// The inventory of the hosts rsnapshot pulls over ssh (TOML, in the format of
    /// `examples/hosts.toml`): each host with its address, user and paths, the rsnapshot
    /// schedule, all in one account for the operator to split by customer. Sources that are
    /// not `host:path` are named in a comment. The text is checked to parse as an inventory.
    pub fn inventory_toml(&self) -> Result<String> {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut hosts: BTreeMap<&str, (&str, &str, Vec<&Path>)> = BTreeMap::new();
        let mut others = Vec::new();
        for b in &self.backups {
            match &b.source {
                RsnapshotSource::Ssh {
                    user,
                    address,
                    path,
                } => {
                    let entry = hosts.entry(b.host.as_str()).or_insert((
                        address.as_str(),
                        user.as_str(),
                        Vec::new(),
                    ));
                    if !entry.2.contains(&path.as_path()) {
                        entry.2.push(path.as_path());
                    }
                }
                RsnapshotSource::Other(src) => others.push((b.line, src.as_str(), &b.host)),
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Written by `xstore import rsnapshot` from {}.",
            self.path.display()
        );
        let _ = writeln!(
            out,
            "# rsnapshot has no accounts: move each host into its customer's [[account]] and set\n\
             # the allocations (examples/hosts.toml shows packages)."
        );
        for (line, src, host) in &others {
            let _ = writeln!(
                out,
                "# line {line}: {src} (into {host}/) is not a host:path source; not listed."
            );
        }
        let _ = writeln!(out, "\n[defaults]");
        let _ = writeln!(
            out,
            "port = {DEFAULT_AGENT_PORT}  # clients set up with `xstore-agent setup` listen here{}",
            match self.ssh_port {
                Some(p) => format!(" (rsnapshot used {p})"),
                None => String::new(),
            }
        );
        let _ = writeln!(out, "identity = \"/etc/xstore/id_ed25519\"");
        let _ = writeln!(
            out,
            "\n[[account]]\nname = \"rsnapshot\"\nallocation = \"1 TiB\"  # a placeholder"
        );
        for (host, (address, user, paths)) in &hosts {
            let _ = writeln!(out, "\n[[account.host]]\nname = {}", q(host));
            if address != host {
                let _ = writeln!(out, "address = {}", q(address));
            }
            if *user != "root" {
                let _ = writeln!(out, "user = {}", q(user));
            }
            let list: Vec<String> = paths.iter().map(|p| q(&p.to_string_lossy())).collect();
            let _ = writeln!(out, "paths = [{}]", list.join(", "));
            let _ = writeln!(out, "schedule = {}", q(&self.schedule.to_string()));
        }
        Inventory::parse(&out, Path::new("the generated inventory")).map_err(|e| {
            Error::Encode {
                what: "the inventory",
                reason: e.to_string(),
            }
        })?;
        Ok(out)
    }

    /// Writes [`RsnapshotConfig::inventory_toml`] to `path` durably; an existing file is
    /// never replaced (an error names it).
    pub fn write_inventory(&self, path: &Path) -> Result<()> {
        let text = self.inventory_toml()?;
        xstore::fsutil::write_new(path, text.as_bytes())
    }

    /// Every backup point under `snapshot_root`, oldest first: `<tier>.<n>/<host>/` for each
    /// tier of the retain lines and each host directory in it, with the time rsnapshot
    /// recorded (it sets the mtime of `<tier>.<n>` when the run that made it finishes).
    /// Directories that are not of that form (`.sync`, a `_delete.PID` left by a crash) are
    /// left out; names that cannot be host names are refused.
    pub fn backup_points(&self) -> Result<Vec<BackupPoint>> {
        let io = |path: &Path, source: std::io::Error| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::metadata(&self.snapshot_root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "snapshot_root {}: not a directory",
                    self.snapshot_root.display()
                )))
            }
            Err(e) => return Err(io(&self.snapshot_root, e)),
        }
        let mut points = Vec::new();
        let tiers = self.schedule.tiers();
        for (level, tier) in tiers.iter().enumerate() {
            for position in 0.. {
                let dir = self.snapshot_root.join(format!("{}.{position}", tier.name));
                let meta = match std::fs::symlink_metadata(&dir) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => return Err(io(&dir, e)),
                };
                if !meta.is_dir() {
                    return Err(Error::InvalidArgument(format!(
                        "{}: not a directory",
                        dir.display()
                    )));
                }
                let time_ns = meta_mtime_ns(&meta);
                let mut names: Vec<Vec<u8>> = Vec::new();
                for item in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
                    let item = item.map_err(|e| io(&dir, e))?;
                    if item.file_type().map_err(|e| io(&dir, e))?.is_dir() {
                        names.push(item.file_name().as_bytes().to_vec());
                    }
                }
                names.sort();
                for name in names {
                    let host = String::from_utf8(name).map_err(|n| {
                        Error::InvalidArgument(format!(
                            "{}: {:?} is not a UTF-8 host name",
                            dir.display(),
                            String::from_utf8_lossy(n.as_bytes())
                        ))
                    })?;
                    let host = HostName::parse(&host).map_err(|e| {
                        Error::InvalidArgument(format!("{}/{host}: {e}", dir.display()))
                    })?;
                    points.push(BackupPoint {
                        dir: dir.join(&host),
                        host,
                        tier: tier.name.clone(),
                        level,
                        position,
                        time_ns,
                    });
                }
            }
        }
        // Oldest first: by time, then (equal times) higher tiers and positions first.
        points.sort_by(|a, b| {
            (
                a.time_ns,
                std::cmp::Reverse(a.level),
                std::cmp::Reverse(a.position),
            )
                .cmp(&(
                    b.time_ns,
                    std::cmp::Reverse(b.level),
                    std::cmp::Reverse(b.position),
                ))
                .then_with(|| a.host.cmp(&b.host))
        });
        for pair in points.windows(2) {
            if let [a, b] = pair {
                if a.host == b.host && a.time_ns == b.time_ns {
                    return Err(Error::InvalidArgument(format!(
                        "{} and {} have the same time: a snapshot's time is its identity in the \
                         import, so give one of them its real time (touch -d)",
                        a.dir.display(),
                        b.dir.display()
                    )));
                }
            }
        }
        Ok(points)
    }
}

fn meta_mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// The host of a DEST: its first component.
fn dest_host(dest: &str) -> std::result::Result<HostName, String> {
    if dest.starts_with('/') {
        return Err(format!("backup destination {dest:?} must be relative"));
    }
    let host = dest.split('/').next().unwrap_or_default();
    HostName::parse(host).map_err(|e| format!("backup destination {dest:?}: {e}"))
}

fn parse_source(src: &str) -> RsnapshotSource {
    if src.starts_with('/') || src.starts_with("rsync://") {
        return RsnapshotSource::Other(src.to_string());
    }
    // `[user@]host:/path`; `host::module` is an rsync daemon.
    match src.split_once(':') {
        Some((login, path)) if path.starts_with('/') && !login.is_empty() => {
            let (user, address) = match login.rsplit_once('@') {
                Some((u, a)) => (u.to_string(), a.to_string()),
                None => ("root".to_string(), login.to_string()),
            };
            let trimmed = path.trim_end_matches('/');
            let path = if trimmed.is_empty() { "/" } else { trimmed };
            RsnapshotSource::Ssh {
                user,
                address,
                path: PathBuf::from(path),
            }
        }
        _ => RsnapshotSource::Other(src.to_string()),
    }
}

fn ssh_port_of(args: &[&str]) -> std::result::Result<Option<u16>, String> {
    let words: Vec<&str> = args.iter().flat_map(|a| a.split_whitespace()).collect();
    let mut port = None;
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let value = match *w {
            "-p" => it.next().copied(),
            w if w.starts_with("-p") => w.get(2..),
            _ => None,
        };
        if let Some(v) = value {
            port = Some(
                v.parse()
                    .map_err(|_| format!("ssh_args: bad port {v:?} after -p"))?,
            );
        }
    }
    Ok(port)
}

/// One rsnapshot backup point: `<snapshot_root>/<tier>.<position>/<host>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPoint {
    /// The host directory.
    pub dir: PathBuf,
    /// The host.
    pub host: HostName,
    /// The tier (`daily`).
    pub tier: String,
    /// The tier's place in the schedule (0 = lowest).
    pub level: usize,
    /// `n` of `<tier>.<n>`.
    pub position: usize,
    /// When rsnapshot finished it (the mtime of `<tier>.<n>`), ns since the epoch.
    pub time_ns: i64,
}

/// What an import does with one backup point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportAction {
    /// Not in the repository: imported.
    Import,
    /// Imported before, with the same tier.
    Present(SnapshotId),
    /// Imported before; rsnapshot has rotated it into another tier since: it moves there
    /// ([`Repository::move_to_tier`], which also trims that tier as rsnapshot did).
    Relabel(SnapshotId),
}

/// The plan of an import: every backup point, oldest first, and what happens to it.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    /// The rsnapshot schedule, which becomes the imported hosts' tier schedule.
    pub schedule: Schedule,
    /// Backup points and their actions, oldest first.
    pub items: Vec<(BackupPoint, ImportAction)>,
    /// Snapshots an earlier import made whose backup point rsnapshot has rotated away since
    /// (deleted at the end of its tier): [`apply_import`] expires them, as
    /// rsnapshot did. Pinned ones stay.
    pub rotated_away: Vec<SnapshotId>,
}

impl ImportPlan {
    /// How many backup points the plan imports.
    pub fn to_import(&self) -> usize {
        self.items
            .iter()
            .filter(|(_, a)| *a == ImportAction::Import)
            .count()
    }
}

/// What importing one backup point did.
#[derive(Debug, Clone)]
pub enum ImportOutcome {
    /// A new snapshot.
    Imported(Box<Snapshot>),
    /// An existing snapshot with the point's time (relabelled when `relabelled`).
    Present {
        /// The snapshot.
        id: SnapshotId,
        /// Its tier label changed to the point's.
        relabelled: bool,
    },
    /// The host directory was empty (a failed rsnapshot run): nothing to import.
    Empty,
}

/// Plans importing `config`'s backup points: reads the snapshot root and this
/// repository's snapshot records, changes nothing.
pub fn plan_import(repo: &Repository, config: &RsnapshotConfig) -> Result<ImportPlan> {
    let points = config.backup_points()?;
    let existing = repo.snapshots()?;
    // An imported snapshot (start = end = rsnapshot's time) older than its host's newest
    // backup point, whose point is gone, was deleted by an rsnapshot rotation.
    let mut newest: HashMap<&str, i64> = HashMap::new();
    for p in &points {
        let n = newest.entry(p.host.as_str()).or_insert(p.time_ns);
        *n = (*n).max(p.time_ns);
    }
    let rotated_away = existing
        .iter()
        .filter(|s| {
            s.start_ns == s.end_ns
                && !s.pinned
                && !s.tiers.is_empty()
                && newest.get(s.host.as_str()).is_some_and(|&n| s.start_ns < n)
                && !points
                    .iter()
                    .any(|p| p.host == s.host && p.time_ns == s.start_ns)
        })
        .map(|s| s.id)
        .collect();
    let items = points
        .into_iter()
        .map(|p| {
            let same = existing
                .iter()
                .find(|s| s.host == p.host && s.start_ns == p.time_ns);
            let action = match same {
                None => ImportAction::Import,
                Some(s) if s.tiers == [p.tier.clone()] => ImportAction::Present(s.id),
                Some(s) => ImportAction::Relabel(s.id),
            };
            (p, action)
        })
        .collect();
    Ok(ImportPlan {
        schedule: config.schedule.clone(),
        items,
        rotated_away,
    })
}

/// Expires the plan's snapshots whose backup points rsnapshot rotated away since an
/// earlier import (before the plan's items, so that tiers hold what rsnapshot's do).
fn forget_rotated_away(repo: &Repository, plan: &ImportPlan) -> Result<Applied> {
    let mut decisions = Vec::new();
    for id in &plan.rotated_away {
        let mut forget = repo.plan_forget_snapshot(id)?;
        for d in &mut forget.decisions {
            d.reasons = vec!["rsnapshot rotated its backup point away".into()];
        }
        decisions.extend(forget.decisions);
    }
    if decisions.is_empty() {
        return Ok(Applied::default());
    }
    repo.apply_plan(&xstore_retention::Plan { decisions })
}

/// Gives every host of `plan` the rsnapshot schedule (a per-host override where the
/// repository's default differs), so that imported tier labels keep their positions.
fn apply_import_schedule(repo: &Repository, plan: &ImportPlan) -> Result<()> {
    let mut settings = repo.retention_settings()?;
    let mut changed = false;
    for (p, _) in &plan.items {
        if settings.schedules.for_host(&p.host) != &plan.schedule {
            settings
                .schedules
                .hosts
                .insert(p.host.to_string(), plan.schedule.clone());
            changed = true;
        }
    }
    if changed {
        repo.set_retention_settings(&settings)?;
    }
    Ok(())
}

/// Carries out one item of an import plan (in plan order, after
/// giving the hosts the rsnapshot schedule): a new snapshot of the point's host with its
/// time and tier, whose parent is that host's newest older snapshot, so a file that
/// rsnapshot hard-linked from the previous backup point (same inode, size, mtime and
/// ctime) is not read again; or the tier label of the snapshot imported before.
fn import_backup_point(
    repo: &Repository,
    point: &BackupPoint,
    action: &ImportAction,
    progress: Option<Arc<Progress>>,
) -> Result<ImportOutcome> {
    match action {
        ImportAction::Present(id) => {
            return Ok(ImportOutcome::Present {
                id: *id,
                relabelled: false,
            })
        }
        ImportAction::Relabel(id) => {
            repo.move_to_tier(id, &point.tier)?;
            return Ok(ImportOutcome::Present {
                id: *id,
                relabelled: true,
            });
        }
        ImportAction::Import => {}
    }
    let mut paths = Vec::new();
    let io = |source| Error::Io {
        path: point.dir.clone(),
        source,
    };
    for item in std::fs::read_dir(&point.dir).map_err(io)? {
        let name = item.map_err(io)?.file_name();
        paths.push(Path::new("/").join(name));
    }
    paths.sort();
    if paths.is_empty() {
        return Ok(ImportOutcome::Empty);
    }
    let parent = repo
        .snapshots()?
        .into_iter()
        .filter(|s| s.host == point.host && s.start_ns < point.time_ns)
        .max_by_key(|s| (s.start_ns, s.id))
        .map_or(ParentChoice::None, |s| ParentChoice::Snapshot(s.id));
    let snapshot = repo.backup(
        &RootedSource::new(&point.dir),
        &BackupOptions {
            parent,
            progress,
            tier: TierChoice::Named(point.tier.clone()),
            time_ns: Some(point.time_ns),
            ..BackupOptions::new(point.host.clone(), paths)
        },
    )?;
    Ok(ImportOutcome::Imported(Box::new(snapshot)))
}

/// A failure of [`apply_import`]. The import stops at the first failing backup point: the
/// points before it stay imported, and running the import again resumes after them.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Setting the hosts' schedules or forgetting what rsnapshot rotated away failed.
    #[error(transparent)]
    Prepare(Box<Error>),
    /// Importing one backup point failed.
    #[error("importing {} (imported before it stay; run the import again to resume)", dir.display())]
    Point {
        /// The backup point's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<Error>,
    },
}

impl From<Error> for ImportError {
    fn from(e: Error) -> Self {
        ImportError::Prepare(Box::new(e))
    }
}

/// What [`apply_import`] reports as it goes, in order.
#[derive(Debug)]
pub enum ImportEvent<'p> {
    /// A snapshot of an earlier import that rsnapshot has rotated away since: forgotten.
    Forgotten(SnapshotId),
    /// A backup point done.
    Point(&'p BackupPoint, &'p ImportOutcome),
}

/// Applies `plan` (from [`plan_import`]): the hosts' tier schedules, then forgets what
/// rsnapshot rotated away, then imports every backup point oldest first, stopping at the
/// first failure. `on_event` sees each step as it happens. Returns each point with its
/// outcome.
pub fn apply_import(
    repo: &Repository,
    plan: &ImportPlan,
    progress: Option<Arc<Progress>>,
    on_event: &mut dyn FnMut(ImportEvent<'_>),
) -> std::result::Result<Vec<ImportOutcome>, ImportError> {
    apply_import_schedule(repo, plan)?;
    forget_rotated_away(repo, plan)?;
    for id in &plan.rotated_away {
        on_event(ImportEvent::Forgotten(*id));
    }
    let mut outcomes = Vec::with_capacity(plan.items.len());
    for (point, action) in &plan.items {
        let outcome =
            import_backup_point(repo, point, action, progress.clone()).map_err(|source| {
                ImportError::Point {
                    dir: point.dir.clone(),
                    source: Box::new(source),
                }
            })?;
        on_event(ImportEvent::Point(point, &outcome));
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONF: &str = "config_version\t1.2\nsnapshot_root\t/srv/rsnapshot/\n\
        cmd_rsync\t/usr/bin/rsync\nssh_args\t-p 2222 -i /root/.ssh/backup\n\
        retain\thourly\t6\nretain\tdaily\t7\ninterval\tweekly\t4\n\
        # a comment\n\
        backup\troot@192.0.2.10:/etc/\tweb1.example.net/\n\
        backup\troot@192.0.2.10:/home/\tweb1.example.net/\texclude=*.tmp\n\
        backup\tdb1.example.org:/var/lib/backup/\tdb1.example.org/\n\
        backup\t/srv/local/\tlocalhost/\n";

    #[test]
    fn parses_the_service_config() {
        let c = RsnapshotConfig::parse(CONF, Path::new("rsnapshot.conf")).unwrap();
        assert_eq!(c.snapshot_root, PathBuf::from("/srv/rsnapshot/"));
        assert_eq!(c.schedule.to_string(), "hourly=6,daily=7,weekly=4");
        assert_eq!(c.ssh_port, Some(2222));
        assert_eq!(c.backups.len(), 4);
        assert_eq!(
            c.backups[0].source,
            RsnapshotSource::Ssh {
                user: "root".into(),
                address: "192.0.2.10".into(),
                path: "/etc".into()
            }
        );
        assert_eq!(c.backups[2].host, "db1.example.org");
        assert_eq!(
            c.backups[3].source,
            RsnapshotSource::Other("/srv/local/".into())
        );
        let text = c.inventory_toml().unwrap();
        let inv = Inventory::parse(&text, Path::new("x")).unwrap();
        assert_eq!(inv.hosts.len(), 2, "{text}");
        let web1 = inv.host("web1.example.net").unwrap();
        assert_eq!(web1.address, "192.0.2.10");
        assert_eq!(
            web1.paths,
            vec![PathBuf::from("/etc"), PathBuf::from("/home")]
        );
        assert_eq!(web1.port, DEFAULT_AGENT_PORT);
        assert_eq!(
            web1.schedule.as_ref().unwrap().to_string(),
            "hourly=6,daily=7,weekly=4"
        );
        assert_eq!(
            inv.host("db1.example.org").unwrap().address,
            "db1.example.org"
        );
        assert!(text.contains("/srv/local/ (into localhost/) is not a host:path source"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = |text: &str| {
            RsnapshotConfig::parse(text, Path::new("r.conf"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("snapshot_root\t/s/\nretain\thourly\tsix\n"),
            "r.conf: line 2: retain hourly: bad count \"six\""
        );
        assert_eq!(e("retain\thourly\t6\n"), "r.conf: line 0: no snapshot_root");
        assert_eq!(
            e("snapshot_root\t/s/\nretain\thourly\t6\nbackup\t/etc/\t/abs/\n"),
            "r.conf: line 3: backup destination \"/abs/\" must be relative"
        );
        assert!(
            e("snapshot_root\t/s/\ninclude_conf\t/x\n").starts_with("r.conf: line 2: include_conf")
        );
        assert!(e("snapshot_root\t/s/\nretain\tHourly\t6\n").contains("the retain lines"));
    }
}
