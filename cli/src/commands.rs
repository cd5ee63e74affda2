//! The repository commands: init, backup, snapshots, ls, cat, restore, diff, check, stats,
//! repair. Each parses nothing itself (clap did), calls the library and prints.

use super::*;
use xstore::text::{printable, printable_bytes};

#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// Average chunk size in KiB (min = avg/4, max = avg*4).
    #[arg(long, default_value_t = 1024)]
    chunk_avg_kib: u32,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = 3)]
    compression_level: i32,
    /// Target pack file size in MiB.
    #[arg(long, default_value_t = 32)]
    pack_size_mib: u64,
    /// Keep the packs and config in an S3-compatible bucket, `s3://BUCKET/PREFIX` (the index,
    /// journal and locks stay in --repo). A prefix that holds a repository is attached to:
    /// its index is rebuilt from the bucket.
    #[arg(long, value_name = "URL", requires = "endpoint")]
    store: Option<String>,
    /// The object store's endpoint URL (with --store).
    #[arg(long, value_name = "URL", requires = "store")]
    endpoint: Option<String>,
    /// The region the store signs for (with --store).
    #[arg(long, requires = "store", default_value = "garage")]
    region: String,
    /// Virtual-hosted-style requests (BUCKET.ENDPOINT) instead of path style (with --store).
    #[arg(long, requires = "store")]
    virtual_hosted: bool,
    /// Read the access key from this file (TOML: access_key_id, secret_access_key; mode
    /// 0600) instead of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Its path is recorded in
    /// the repository, never its contents.
    #[arg(long, value_name = "FILE", requires = "store")]
    credentials: Option<PathBuf>,
    /// Let this group read the repository (for monitoring users running the read-only
    /// commands); without it only its owner can.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Store packs unencrypted (format 1). Without it the repository is encrypted: a key
    /// file is created (or --key-file's reused) and, with XSTORE_PASSPHRASE, a passphrase
    /// slot added.
    #[arg(long)]
    no_encryption: bool,
}

#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    /// Host name recorded in the snapshot (default: this machine's name).
    #[arg(long, value_parser = crate::values::host)]
    host: Option<xstore::HostName>,
    /// Exclude paths matching this glob (a pattern without / matches file names).
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Stay on the filesystem of each backup path.
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Read every file instead of trusting the parent snapshot's metadata.
    #[arg(long, conflicts_with = "parent")]
    no_parent: bool,
    /// Compare against this snapshot instead of the host's latest.
    #[arg(long)]
    parent: Option<String>,
    /// Enter this tier instead of the host schedule's lowest (e.g. daily).
    #[arg(long, value_name = "NAME", conflicts_with = "no_tier")]
    tier: Option<String>,
    /// Enter no tier (for repositories retained by `forget --keep-…` only).
    #[arg(long)]
    no_tier: bool,
    /// Paths to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct SnapshotsArgs {
    /// Only this host.
    #[arg(long, value_parser = crate::values::host)]
    host: Option<xstore::HostName>,
}

#[derive(clap::Args)]
pub(crate) struct LsArgs {
    /// Snapshot: id prefix, latest, HOST@latest, HOST@latest-complete or HOST@TIER.N (web1@daily.0).
    snapshot: String,
    /// Path inside the snapshot.
    #[arg(default_value = "/")]
    path: String,
}

#[derive(clap::Args)]
pub(crate) struct CatArgs {
    /// Snapshot: id prefix, latest, HOST@latest, HOST@latest-complete or HOST@TIER.N (web1@daily.0).
    snapshot: String,
    /// Path of the file inside the snapshot.
    path: String,
}

#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// Snapshot: id prefix, latest, HOST@latest, HOST@latest-complete or HOST@TIER.N (web1@daily.0).
    snapshot: String,
    /// Target directory (created if missing).
    target: PathBuf,
    /// Restore only this path of the snapshot; it is created inside the target.
    #[arg(long)]
    path: Option<String>,
    /// Do not set file owners even when running as root.
    #[arg(long)]
    no_owners: bool,
    /// Entries that already exist in the target: `always` replaces what differs (files are
    /// compared by content at the snapshot's chunk boundaries), `if-changed` trusts equal
    /// size and mtime without reading, `never` leaves every existing entry alone.
    #[arg(long, value_enum, default_value = "always")]
    overwrite: OverwriteArg,
    /// Remove what the restored directories hold that the snapshot does not have.
    #[arg(long)]
    delete: bool,
    /// List what would be written, skipped and deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also create device nodes, keep set-uid, set-gid and sticky bits and restore
    /// security.* and trusted.* xattrs (capabilities): only for a snapshot you trust, such
    /// as a host restored to itself. Without it they are left out and counted.
    #[arg(long)]
    trusted_specials: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum OverwriteArg {
    Always,
    IfChanged,
    Never,
}

#[derive(clap::Args)]
pub(crate) struct DiffArgs {
    /// Older snapshot.
    old: String,
    /// Newer snapshot.
    new: String,
}

#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    /// Re-read, decompress and re-hash every blob.
    #[arg(long)]
    read_data: bool,
}

pub(crate) fn init(cli: &Cli, args: &InitArgs) -> Result<u8> {
    let InitArgs {
        chunk_avg_kib,
        compression_level,
        pack_size_mib,
        store,
        endpoint,
        region,
        virtual_hosted,
        credentials,
        group,
        no_encryption,
    } = args;
    let path = repo_path(cli)?;
    crate::private_umask(&xstore::RepoAccess {
        group: group.clone(),
    });
    let chunker = ChunkerParams::from_average(chunk_avg_kib.saturating_mul(1024))
        .context("--chunk-avg-kib")?;
    let opts = InitOptions {
        chunker,
        compression_level: *compression_level,
        pack_size: pack_size_mib.saturating_mul(1024 * 1024),
        group: group.clone(),
    };
    let keys = crate::key_access(cli)?;
    let encryption = (!no_encryption).then_some(&keys);
    let mut key_file = None;
    let (repo, attached) = match (store, endpoint) {
        (Some(url), Some(endpoint)) => {
            let mut location = S3Location::parse(url, endpoint)?;
            location.region = region.clone();
            location.path_style = !virtual_hosted;
            location.credentials_file = credentials
                .as_ref()
                .map(|c| std::path::absolute(c).unwrap_or_else(|_| c.clone()));
            match Repository::init_s3(&path, &opts, &location, encryption)? {
                (repo, S3Init::Created) => (repo, None),
                (repo, S3Init::CreatedEncrypted(file)) => {
                    key_file = Some(file);
                    (repo, None)
                }
                (repo, S3Init::Attached(report)) => (repo, Some((location.url(), report))),
            }
        }
        _ if encryption.is_some() => {
            let (repo, file) = Repository::init_encrypted(&path, &opts, &keys)?;
            key_file = Some(file);
            (repo, None)
        }
        _ => (Repository::init(&path, &opts)?, None),
    };
    let short_id = repo
        .config()
        .repository_id
        .get(..8)
        .unwrap_or(&repo.config().repository_id);
    if cli.json {
        print_json(repo.config())?;
    } else if cli.quiet {
    } else if let Some((url, report)) = attached {
        outln!(
            "attached {} to repository {short_id} in {url}: index rebuilt from {} packs, {} \
             snapshots",
            path.display(),
            report.packs,
            report.snapshots
        );
        for skipped in &report.skipped {
            outln!("  skipped: {skipped}");
        }
    } else {
        let where_packs = repo
            .store_location()
            .map(|l| format!(" (packs in {})", l.url()))
            .unwrap_or_default();
        let encrypted = if repo.is_encrypted() {
            "encrypted "
        } else {
            "unencrypted "
        };
        outln!(
            "created {encrypted}repository {short_id} at {}{where_packs}",
            path.display()
        );
    }
    if let Some(file) = key_file.filter(|_| !cli.quiet) {
        // Said even with --json (on stderr): losing the key loses every backup.
        let made = if file.created { "created" } else { "reused" };
        eprintln!(
            "xstore: key file {} ({made}) opens this repository. Copy it somewhere safe, off \
             this server: without a key every backup is lost. `xstore key export` prints a \
             recovery copy for paper; `xstore key add` adds a passphrase.",
            file.path.display()
        );
    }
    Ok(EXIT_OK)
}

pub(crate) fn backup(cli: &Cli, args: &BackupArgs) -> Result<u8> {
    let BackupArgs {
        host,
        excludes,
        one_file_system,
        no_parent,
        parent,
        tier,
        no_tier,
        paths,
    } = args;
    let repo = open_rw(cli)?;
    let parent = if *no_parent {
        ParentChoice::None
    } else if let Some(p) = parent {
        ParentChoice::Snapshot(repo.resolve(p)?.id)
    } else {
        ParentChoice::Latest
    };
    let progress = Arc::new(Progress::default());
    let host = match host {
        Some(h) => h.clone(),
        None => xstore::HostName::parse(&xstore::local_hostname())
            .context("this machine's name is not a host name: give --host")?,
    };
    let opts = BackupOptions {
        excludes: excludes.clone(),
        one_file_system: *one_file_system,
        parent,
        progress: Some(progress.clone()),
        tier: match (tier, no_tier) {
            (_, true) => TierChoice::None,
            (Some(t), false) => TierChoice::Named(t.clone()),
            (None, false) => TierChoice::Lowest,
        },
        ..BackupOptions::new(host, paths.clone())
    };
    let tracker = Tracker::start(cli, "backup", progress);
    let result = repo.backup(&LocalSource, &opts);
    tracker.finish();
    let snap = result?;
    if cli.json {
        print_summary(&snap, &snap.errors)?;
    } else {
        for e in &snap.errors {
            eprintln!(
                "xstore: not backed up: {}: {}",
                printable(&e.path),
                printable(&e.message)
            );
        }
        if !cli.quiet {
            print_backup_summary(&snap);
        }
    }
    Ok(if snap.is_complete() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

pub(crate) fn snapshots(cli: &Cli, args: &SnapshotsArgs) -> Result<u8> {
    let SnapshotsArgs { host } = args;
    let repo = open_ro(cli)?;
    let positions = repo.tier_positions()?;
    let snaps: Vec<Snapshot> = repo
        .snapshots()?
        .into_iter()
        .filter(|s| host.as_ref().is_none_or(|h| &s.host == h))
        .collect();
    let tiers_of = |s: &Snapshot| positions.get(&s.id).cloned().unwrap_or_default();
    if cli.json {
        let v: Vec<serde_json::Value> = snaps
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["positions"] = serde_json::json!(tiers_of(s));
                v
            })
            .collect();
        print_json(&v)?;
    } else {
        outln!(
            "{:<8}  {:<20}  {:<20}  {:<8}  {:>9}  {:>10}  {:<16}  paths",
            "id",
            "time",
            "host",
            "status",
            "files",
            "size",
            "tiers"
        );
        for s in &snaps {
            let mut tiers = tiers_of(s).join(",");
            if s.pinned {
                tiers = if tiers.is_empty() {
                    "pinned".into()
                } else {
                    format!("{tiers},pinned")
                };
            }
            outln!(
                "{:<8}  {:<20}  {:<20}  {:<8}  {:>9}  {:>10}  {:<16}  {}",
                s.id.short(),
                time_of(s.start_ns),
                s.host,
                if s.is_complete() {
                    "complete"
                } else {
                    "partial"
                },
                s.stats.files,
                human_bytes(s.stats.logical_bytes),
                if tiers.is_empty() { "-".into() } else { tiers },
                s.paths.join(" ")
            );
        }
    }
    Ok(EXIT_OK)
}

pub(crate) fn ls(cli: &Cli, args: &LsArgs) -> Result<u8> {
    let LsArgs { snapshot, path } = args;
    let repo = open_ro(cli)?;
    let snap = repo.resolve(snapshot)?;
    let entries = repo.list(&snap, path)?;
    if cli.json {
        let v: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
        print_json(&v)?;
    } else {
        for e in &entries {
            outln!("{}", ls_line(e));
        }
    }
    Ok(EXIT_OK)
}

pub(crate) fn cat(cli: &Cli, args: &CatArgs) -> Result<u8> {
    let CatArgs { snapshot, path } = args;
    let repo = open_ro(cli)?;
    let snap = repo.resolve(snapshot)?;
    let entry = match repo.lookup(&snap, path)? {
        Node::Entry(e) => e,
        Node::Root(_) => anyhow::bail!("{path}: is a directory"),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    repo.cat(&entry, &mut out)?;
    out.flush()?;
    Ok(EXIT_OK)
}

pub(crate) fn restore(cli: &Cli, args: &RestoreArgs) -> Result<u8> {
    let RestoreArgs {
        snapshot,
        target,
        path,
        no_owners,
        overwrite,
        delete,
        dry_run,
        trusted_specials,
    } = args;
    let repo = open_ro(cli)?;
    let snap = repo.resolve(snapshot)?;
    let progress = Arc::new(Progress::default());
    let opts = RestoreOptions {
        path: path.clone(),
        owners: if *no_owners { Some(false) } else { None },
        overwrite: match overwrite {
            OverwriteArg::Always => xstore::Overwrite::Always,
            OverwriteArg::IfChanged => xstore::Overwrite::IfChanged,
            OverwriteArg::Never => xstore::Overwrite::Never,
        },
        delete: *delete,
        progress: Some(progress.clone()),
        trusted_specials: *trusted_specials,
    };
    let plan = repo.plan_restore(&snap, target, &opts)?;
    let summary = if *dry_run {
        repo.preview_restore(&plan)?
    } else {
        let tracker = Tracker::start(cli, "restore", progress);
        let result = repo.restore(&plan);
        tracker.finish();
        result?
    };
    if cli.json {
        print_summary(&summary, &summary.errors)?;
    } else {
        for e in &summary.errors {
            eprintln!(
                "xstore: not restored: {}: {}",
                printable(&e.path),
                printable(&e.message)
            );
        }
        for c in &summary.planned {
            let action = match c.action {
                xstore::PlannedAction::Write => "write",
                xstore::PlannedAction::Overwrite => "overwrite",
                xstore::PlannedAction::Create => "create",
                xstore::PlannedAction::Skip => "skip",
                xstore::PlannedAction::Delete => "delete",
            };
            outln!("{action:<6}  {}", c.path);
        }
        if !cli.quiet {
            outln!(
                "{} snapshot {} of {} to {}: {} files ({}), {} directories, {} other, {} unchanged or kept, {} deleted",
                if *dry_run { "would restore" } else { "restored" },
                snap.id.short(),
                snap.host,
                target.display(),
                summary.files,
                human_bytes(summary.bytes),
                summary.dirs,
                summary.others,
                summary.skipped,
                summary.deleted
            );
        }
        let w = summary.withheld;
        if w.any() {
            eprintln!(
                "xstore: {} not restored as the host had it: {} device nodes not created, {} set-uid/set-gid/sticky modes cleared, {} security./trusted. xattrs not set (--trusted-specials restores them)",
                target.display(),
                w.devices,
                w.mode_bits,
                w.xattrs
            );
        }
    }
    Ok(if summary.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

pub(crate) fn diff(cli: &Cli, args: &DiffArgs) -> Result<u8> {
    let DiffArgs { old, new } = args;
    let repo = open_ro(cli)?;
    let a = repo.resolve(old)?;
    let b = repo.resolve(new)?;
    let items = repo.diff(&a, &b)?;
    if cli.json {
        print_json(&items)?;
    } else {
        for i in &items {
            let sign = match i.change {
                xstore::Change::Added => '+',
                xstore::Change::Removed => '-',
                xstore::Change::Modified => 'M',
            };
            outln!("{sign} {}", printable(&i.path));
        }
    }
    Ok(EXIT_OK)
}

pub(crate) fn check(cli: &Cli, args: &CheckArgs) -> Result<u8> {
    let CheckArgs { read_data } = args;
    let repo = open_ro(cli)?;
    let progress = Arc::new(Progress::default());
    let tracker = Tracker::start(cli, "check", progress.clone());
    let result = repo.check(CheckOptions {
        read_data: *read_data,
        progress: Some(progress),
    });
    tracker.finish();
    let report = result?;
    if cli.json {
        print_summary(&report, &[])?;
    } else {
        for p in &report.problems {
            eprintln!("xstore: problem: {p}");
        }
        if !cli.quiet {
            outln!(
                "checked {} snapshots, {} trees, {} blobs in {} packs{}: {}",
                report.snapshots,
                report.trees,
                report.blobs,
                report.packs,
                if *read_data {
                    format!(", {} blobs re-hashed", report.blobs_verified)
                } else {
                    String::new()
                },
                if report.problems.is_empty() {
                    "no problems".to_string()
                } else {
                    format!("{} problems", report.problems.len())
                }
            );
        }
    }
    Ok(if report.problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    })
}

pub(crate) fn stats(cli: &Cli) -> Result<u8> {
    let repo = open_ro(cli)?;
    let st = repo.stats()?;
    if cli.json {
        print_json(&st)?;
    } else {
        outln!("snapshots        {} ({} hosts)", st.snapshots, st.hosts);
        outln!(
            "logical bytes    {} ({})",
            human_bytes(st.logical_bytes),
            st.logical_bytes
        );
        outln!(
            "stored bytes     {} ({})",
            human_bytes(st.stored_bytes),
            st.stored_bytes
        );
        outln!("unique bytes     {}", human_bytes(st.unique_bytes));
        outln!("dedup ratio      {:.2}", st.dedup_ratio);
        outln!(
            "blobs            {} ({} unreferenced)",
            st.blobs,
            st.unreferenced_blobs
        );
        outln!("packs            {}", st.packs);
        for k in &st.by_kind {
            if k.blobs > 0 {
                outln!(
                    "  {:<14} {} in {} blobs ({} uncompressed)",
                    k.kind,
                    human_bytes(k.stored_bytes),
                    k.blobs,
                    human_bytes(k.raw_bytes)
                );
            }
        }
        outln!(
            "dead bytes       {} ({}) reclaimable by gc",
            human_bytes(st.dead_bytes),
            st.dead_bytes
        );
        outln!(
            "retired packs    {} ({}) kept for the gc grace period of {}",
            st.retired_packs,
            human_bytes(st.retired_bytes),
            xstore::text::short_duration(st.gc_grace_seconds)
        );
        if st.held_packs > 0 {
            outln!(
                "held packs       {} (repair index could not attribute their blobs; gc --release-held reclaims them)",
                st.held_packs
            );
        }
    }
    Ok(EXIT_OK)
}

pub(crate) fn repair_index(cli: &Cli) -> Result<u8> {
    let path = repo_path(cli)?;
    let report = Repository::repair_index(&path)?;
    if cli.json {
        print_json(&report)?;
    } else {
        for s in &report.skipped {
            eprintln!("xstore: skipped: {s}");
        }
        for id in &report.recovered {
            eprintln!(
                "xstore: recovered snapshot {id}: not in the old index, its record and data are whole"
            );
        }
        if !cli.quiet {
            outln!(
                "rebuilt index: {} packs ({} scanned), {} blobs, {} snapshots ({} recovered, {} from records in packs){}",
                report.packs,
                report.packs_scanned,
                report.blobs,
                report.snapshots,
                report.recovered.len(),
                report.from_packs,
                if report.old_index { "" } else { "; the old index was unreadable" }
            );
            if report.uncommitted_packs > 0 {
                outln!(
                    "{} packs of a write that crashed before its commit were left out and removed",
                    report.uncommitted_packs
                );
            }
            if report.held_packs > 0 {
                outln!(
                    "{} blobs in {} packs are referenced by no snapshot and could not be attributed: gc keeps them until `xstore gc --release-held`",
                    report.unattributed_blobs, report.held_packs
                );
            }
        }
    }
    Ok(if report.skipped.is_empty() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

fn print_backup_summary(s: &Snapshot) {
    let secs = (s.end_ns - s.start_ns) as f64 / 1e9;
    outln!(
        "snapshot {} of {} {}: {} files ({} unchanged), {} dirs, {} read, {} new ({} stored) in {:.1}s",
        s.id.short(),
        s.host,
        if s.is_complete() { "saved" } else { "saved PARTIAL" },
        s.stats.files,
        s.stats.files_unchanged,
        s.stats.dirs,
        human_bytes(s.stats.bytes_read),
        human_bytes(s.stats.new_bytes),
        human_bytes(s.stats.new_stored_bytes),
        secs
    );
    if !s.is_complete() {
        outln!("{} paths could not be read (listed above)", s.stats.errors);
    }
}

fn ls_line(e: &xstore::Entry) -> String {
    let mut line = format!(
        "{} {:>5} {:>5} {:>12} {} {}",
        xstore_format::tree::mode_string(e.kind, e.attrs.mode),
        e.attrs.uid,
        e.attrs.gid,
        e.attrs.size,
        time_of(e.attrs.mtime_ns),
        printable_bytes(&e.name)
    );
    if let xstore::Content::Target(t) = &e.content {
        line.push_str(" -> ");
        line.push_str(&printable_bytes(t));
    }
    line
}

fn entry_json(e: &xstore::Entry) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": e.name_lossy(),
        "kind": e.kind,
        "mode": format!("{:04o}", e.attrs.mode),
        "uid": e.attrs.uid,
        "gid": e.attrs.gid,
        "size": e.attrs.size,
        "mtime_ns": e.attrs.mtime_ns,
        "nlink": e.attrs.nlink,
    });
    if let xstore::Content::Target(t) = &e.content {
        v["target"] = serde_json::Value::String(String::from_utf8_lossy(t).into_owned());
    }
    v
}

#[derive(clap::Args)]
pub(crate) struct FixPermissionsArgs {
    /// Let this group read the repository from now on (recorded, as `init --group`).
    #[arg(long, value_name = "NAME", conflicts_with = "private")]
    group: Option<String>,
    /// Its owner only again: forget the group.
    #[arg(long)]
    private: bool,
}

/// `fix-permissions`: everything in the repository gets the modes of its access rule.
pub(crate) fn fix_permissions(cli: &Cli, args: &FixPermissionsArgs) -> Result<u8> {
    let rule = match (&args.group, args.private) {
        (Some(g), _) => Some(xstore::RepoAccess {
            group: Some(g.clone()),
        }),
        (None, true) => Some(xstore::RepoAccess::default()),
        (None, false) => None,
    };
    let repo = open_rw(cli)?;
    let fix = repo.fix_permissions(rule.as_ref())?;
    if cli.json {
        print_json(&fix)?;
    } else if !cli.quiet {
        let rule = xstore::RepoAccess::load(repo.path())?;
        outln!(
            "{}: {} of {} entries changed; directories {:o}, files {:o}{}",
            repo.path().display(),
            fix.changed,
            fix.entries,
            rule.dir_mode(),
            rule.file_mode(),
            rule.group
                .map(|g| format!(", group {g}"))
                .unwrap_or_default()
        );
    }
    Ok(EXIT_OK)
}
