//! The `xstore` command: parses arguments, calls the `xstore` library, prints results.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// `println!` that ends the command quietly when stdout's reader went away
/// ([`output::write_out`]).
macro_rules! outln {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends the command quietly when stdout's reader went away.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

mod browse;
mod commands;
mod find;
mod generate;
mod keys;
mod memory;
mod migrate;
mod ops;
mod output;
mod pull;
mod retention;
mod sync;
mod values;
mod web;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xstore::{
    BackupOptions, CheckOptions, ChunkerParams, InitOptions, LocalSource, Node, ParentChoice,
    Progress, Repository, RestoreOptions, S3Init, S3Location, Snapshot, TierChoice,
};

/// Exit status: success.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: an error stopped the command.
pub(crate) const EXIT_ERROR: u8 = 1;
/// Exit status: the backup or restore finished, but some paths failed (listed on stderr).
const EXIT_PARTIAL: u8 = 3;
/// Exit status: `check` found problems.
pub(crate) const EXIT_PROBLEMS: u8 = 4;

#[derive(Parser)]
#[command(
    name = "xstore",
    version,
    about = "Deduplicating snapshot store for fleets of hosts"
)]
pub(crate) struct Cli {
    /// Repository directory (default: XSTORE_REPO in /etc/default/xstore, as the scheduled
    /// jobs use).
    #[arg(short = 'r', long, env = "XSTORE_REPO", global = true)]
    repo: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Print only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Exact byte counts instead of human-readable sizes.
    #[arg(long, global = true)]
    bytes: bool,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Wait this long for another writer to release the repository (e.g. 3h) instead of
    /// failing at once.
    #[arg(long, global = true, value_name = "DURATION", value_parser = values::period)]
    lock_wait: Option<Duration>,
    /// The key file of an encrypted repository (default: /etc/xstore/keys/<repository
    /// id>.key, or XSTORE_KEY_DIR's). XSTORE_PASSPHRASE or XSTORE_PASSPHRASE_FILE give a
    /// passphrase instead.
    #[arg(long, env = "XSTORE_KEY_FILE", global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository (encrypted unless --no-encryption).
    Init(commands::InitArgs),
    /// The keys of an encrypted repository: list, add and remove key slots, change a
    /// passphrase, print a recovery copy of the master key.
    Key {
        #[command(subcommand)]
        what: keys::KeyWhat,
    },
    /// Who may log in to the web front: add, remove and list users (customers of an
    /// account, operators), set a password.
    WebUser {
        #[command(subcommand)]
        what: web::WebUserWhat,
    },
    /// Give everything in the repository the modes of its access rule: directories 0700
    /// and files 0600, or 2750 and 0640 of the group given to `init --group`.
    FixPermissions(commands::FixPermissionsArgs),
    /// Back up paths as a new snapshot of a host.
    Backup(commands::BackupArgs),
    /// List snapshots.
    Snapshots(commands::SnapshotsArgs),
    /// List a directory of a snapshot (long format).
    Ls(commands::LsArgs),
    /// Write one file of a snapshot to stdout.
    Cat(commands::CatArgs),
    /// Restore a snapshot, or one path of it, into a directory.
    Restore(commands::RestoreArgs),
    /// Show paths added, removed and modified between two snapshots.
    Diff(commands::DiffArgs),
    /// List every snapshot that holds a matching path, as versions per host and path.
    Find(find::FindArgs),
    /// Write a file of a snapshot, or a directory as a tar or zip archive, to stdout or a file.
    Dump(find::DumpArgs),
    /// Verify structure and reference counts (and with --read-data, every blob).
    Check(commands::CheckArgs),
    /// Repository sizes and deduplication.
    Stats,
    /// Rotate a tier as rsnapshot does: promote the oldest snapshot of the tier below (when
    /// that tier is full) to TIER.0, trim TIER to its count, expire what no label keeps.
    Rotate(retention::RotateArgs),
    /// Expire snapshots a calendar policy does not keep (restic/borg style).
    Forget(retention::ForgetArgs),
    /// Keep a snapshot regardless of retention.
    Pin(retention::PinArgs),
    /// Let retention decide about a pinned snapshot again.
    Unpin(retention::PinArgs),
    /// Reclaim space: delete packs without live blobs, rewrite packs over the dead threshold.
    Gc(retention::GcArgs),
    /// Compress data that has survived again at a high zstd level (packs older than
    /// --min-age, within a byte and time budget); the old packs go at a later gc.
    Compact(retention::CompactArgs),
    /// Copy snapshots from another repository into this one (a replica pulling from its
    /// primary): only what is missing travels, verified and sealed with this repository's
    /// keys; what the source expires stays here until this repository's retention expires it.
    Sync(sync::SyncArgs),
    /// Serve this repository read-only to a replica's `xstore sync` on stdin/stdout (the
    /// forced command of the replica's SSH key); refuses every other command.
    Serve(sync::ServeArgs),
    /// Show or set tier schedules (default and per host) and the gc threshold.
    Tiers(retention::TiersArgs),
    /// Print the service's schedule (pulls every 4 h, tier rotations, gc) for cron or systemd.
    Schedule(retention::ScheduleArgs),
    /// Serve this host's backup list to the backup server (run by sshd as the forced
    /// command of the server's key), or print that authorized_keys line.
    Agent(xstore_agent::cli::AgentArgs),
    /// Back up hosts over SSH through their agents (inventory hosts by name, --account or --all).
    Pull(pull::PullArgs),
    /// List the inventory's hosts with their newest snapshot.
    Hosts(pull::HostsArgs),
    /// Monitoring plugin: is each host's newest complete backup recent enough?
    /// Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    CheckFreshness(ops::FreshnessArgs),
    /// Monitoring plugin: is every pack verified recently enough, and no blob damaged?
    /// Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    CheckVerify(ops::VerifyCheckArgs),
    /// Monitoring plugin of a replica: may any host be further behind its sync source
    /// than the thresholds? Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    CheckSync(ops::SyncCheckArgs),
    /// Re-read and re-hash the packs verified longest ago (rolling: resumes where the last
    /// run stopped); name what a damaged blob breaks. Exit 4 when damage is found.
    Verify(ops::VerifyArgs),
    /// Monitoring plugin: is each account within its soft allocation?
    /// Exit 0 OK, 1 WARNING (over), 2 CRITICAL (over the hard factor), 3 UNKNOWN.
    CheckUsage(ops::UsageCheckArgs),
    /// Usage per account, host and snapshot: stored, exclusive and shared bytes.
    Du(ops::DuArgs),
    /// Print metrics in Prometheus text format (or write them for the textfile collector).
    Metrics(ops::MetricsArgs),
    /// Mount the repository read-only (FUSE): /<tier>.<n>/<host>/… and
    /// /hosts/<host>/<time>/…; runs until unmounted or interrupted.
    Mount(browse::MountArgs),
    /// Export the repository read-only over NFSv3: one export per account, each open only to
    /// its hosts' addresses; runs until interrupted.
    ServeNfs(browse::NfsArgs),
    /// Serve the web front: customers browse and download from their hosts' snapshots,
    /// operators see the fleet; HTTPS, or HTTP on a Unix socket behind a proxy. Runs until
    /// stopped.
    ServeWeb(web::ServeWebArgs),
    /// Generate manual pages or shell completions.
    Generate {
        #[command(subcommand)]
        what: generate::GenerateWhat,
    },
    /// Import another tool's backups, with their history.
    Import {
        #[command(subcommand)]
        what: migrate::ImportWhat,
    },
    /// Repair repository structures.
    Repair {
        #[command(subcommand)]
        what: RepairWhat,
    },
}

#[derive(Subcommand)]
enum RepairWhat {
    /// Rebuild the index from pack files and snapshot records.
    Index,
}

fn main() -> ExitCode {
    memory::cap_malloc_arenas();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // A monitoring check's usage error is UNKNOWN (3), not clap's 2 (CRITICAL).
        Err(e) if e.use_stderr() && ops::check_named(&args).is_some() => {
            let check = ops::check_named(&args).unwrap_or("CHECK");
            // A refused value is said as the other commands say it (`--warning: …`).
            let why = values::value_error_line(&e).unwrap_or_else(|| e.to_string());
            let report = xstore_fleet::monitor::PluginReport::unknown(
                check,
                why.lines().next().unwrap_or("bad arguments"),
            );
            out!("{}", report.render());
            return ExitCode::from(report.state.exit_code());
        }
        Err(e) => match values::value_error_line(&e) {
            Some(line) => {
                if args.iter().any(|a| a == "--json") {
                    let line = serde_json::json!({"type": "error", "message": line});
                    outln!("{line}");
                }
                eprintln!("xstore: error: {}", xstore::text::printable(&line));
                return ExitCode::from(EXIT_ERROR);
            }
            None => e.exit(),
        },
    };
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XSTORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into logs and pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(output::EXIT_BROKEN_PIPE),
        Err(e) => {
            // The same line the agent binary prints: the error, then each cause once.
            let message = xstore_agent::cli::error_line(e.as_ref());
            if cli.json {
                let line = serde_json::json!({"type": "error", "message": message});
                outln!("{line}");
            }
            eprintln!("xstore: error: {}", xstore::text::printable(&message));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The file the packaged units take the repository from; interactive commands read it too.
const DEFAULTS_FILE: &str = "/etc/default/xstore";

/// The repository: `--repo`, else `XSTORE_REPO`, else `XSTORE_REPO=` in [`DEFAULTS_FILE`]
/// (so that an operator's commands act on the repository the scheduled jobs use).
pub(crate) fn repo_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(repo) = &cli.repo {
        return Ok(repo.clone());
    }
    let text = match std::fs::read_to_string(DEFAULTS_FILE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("no repository given, and {DEFAULTS_FILE}: {e}"),
    };
    defaults_repo(&text).with_context(|| {
        format!(
            "no repository given: use --repo DIR, set XSTORE_REPO, or set it in {DEFAULTS_FILE}"
        )
    })
}

/// `XSTORE_REPO` of a shell-style defaults file (`KEY=value`, optionally `export` and quotes).
fn defaults_repo(text: &str) -> Option<PathBuf> {
    text.lines().rev().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let value = line.strip_prefix("XSTORE_REPO=")?.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        (!value.is_empty()).then(|| PathBuf::from(value))
    })
}

pub(crate) fn open_rw(cli: &Cli) -> Result<Repository> {
    let p = repo_path(cli)?;
    let wait = cli.lock_wait.unwrap_or(Duration::ZERO);
    private_umask(&xstore::RepoAccess::load(&p)?);
    Ok(Repository::open_with(&p, &key_access(cli)?, wait)?)
}

/// How to unlock an encrypted repository: `--key-file` (or XSTORE_KEY_FILE), and a
/// passphrase from XSTORE_PASSPHRASE or XSTORE_PASSPHRASE_FILE.
pub(crate) fn key_access(cli: &Cli) -> Result<xstore::KeyAccess> {
    let mut access = xstore::KeyAccess::from_env()?;
    if cli.key_file.is_some() {
        access.key_file.clone_from(&cli.key_file);
    }
    Ok(access)
}

/// What this process creates while writing a repository is as private as the repository
/// (the index database makes its files under the umask).
pub(crate) fn private_umask(access: &xstore::RepoAccess) {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(access.umask()));
}

/// Writable, or read-only for commands that only plan (`--dry-run` works during a backup).
pub(crate) fn open_rw_or_ro(cli: &Cli, read_only: bool) -> Result<Repository> {
    if read_only {
        open_ro(cli)
    } else {
        open_rw(cli)
    }
}

pub(crate) fn open_ro(cli: &Cli) -> Result<Repository> {
    let p = repo_path(cli)?;
    Ok(Repository::open_read_only_with(&p, &key_access(cli)?)?)
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub(crate) use xstore_fleet::monitor::human_bytes;

/// A size as the user asked: human-readable, or exact with `--bytes`.
pub(crate) fn size(cli: &Cli, n: u64) -> String {
    if cli.bytes {
        n.to_string()
    } else {
        human_bytes(n)
    }
}

/// A compact age: `45s`, `12m`, `1h12m`, `3d4h`.
pub(crate) fn short_age(ns: i64) -> String {
    xstore_fleet::monitor::short_age(u64::try_from(ns.max(0) / 1_000_000_000).unwrap_or(0))
}

pub(crate) fn time_of(ns: i64) -> String {
    xstore::format_utc(ns.div_euclid(1_000_000_000))
}

/// Shows a long operation's progress: a bar with bytes, rate and ETA on a TTY; with
/// `--json`, a `{"type":"status",…}` line on stdout every second and one with the final
/// counts at the end; nothing otherwise (cron,
/// pipes, `-q`). Ends with [`Tracker::finish`].
pub(crate) struct Tracker {
    /// Dropped to stop the thread: it wakes at once instead of finishing a sleep, so a
    /// command's end is not delayed by its progress display.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Waits up to `d`; `false` once the tracker has finished.
fn still_running(stop: &std::sync::mpsc::Receiver<()>, d: Duration) -> bool {
    matches!(
        stop.recv_timeout(d),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
    )
}

impl Tracker {
    pub(crate) fn start(cli: &Cli, operation: &'static str, progress: Arc<Progress>) -> Tracker {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = if cli.json {
            // XSTORE_STATUS_INTERVAL_MS: how often status events are printed (default 1000).
            let interval = std::env::var("XSTORE_STATUS_INTERVAL_MS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::from_secs(1), Duration::from_millis)
                .max(Duration::from_millis(1));
            Some(std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let mut next = interval;
                // One event per interval, and one with the final counts when the operation
                // ends: a stream always holds at least one status before its summary, however
                // short the operation.
                loop {
                    let running = still_running(&stopped, next.saturating_sub(started.elapsed()));
                    next = started.elapsed() + interval;
                    print_status(operation, &progress, started);
                    if !running {
                        break;
                    }
                }
            }))
        } else if !cli.quiet && std::io::stderr().is_terminal() {
            Some(std::thread::spawn(move || {
                draw_bar(operation, &progress, &stopped)
            }))
        } else {
            None
        };
        Tracker {
            stop: Some(stop),
            thread,
        }
    }

    pub(crate) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `{"type":"status",…}` line on stdout.
fn print_status(operation: &str, progress: &Progress, started: std::time::Instant) {
    let total = progress.total_bytes.load(Ordering::Relaxed);
    let line = serde_json::json!({
        "type": "status",
        "operation": operation,
        "elapsed_seconds": started.elapsed().as_secs_f64(),
        "files": progress.files.load(Ordering::Relaxed),
        "bytes": progress.bytes.load(Ordering::Relaxed),
        "total_bytes": (total > 0).then_some(total),
        "errors": progress.errors.load(Ordering::Relaxed),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The TTY bar: a spinner until a total is known, then a bar with ETA.
fn draw_bar(operation: &str, progress: &Progress, stopped: &std::sync::mpsc::Receiver<()>) {
    let bar = indicatif::ProgressBar::new_spinner();
    let spinner = indicatif::ProgressStyle::with_template(
        "{prefix} {spinner} {bytes} {bytes_per_sec} {elapsed} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let with_total = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(spinner);
    bar.set_prefix(operation.to_string());
    let mut has_total = false;
    loop {
        let total = progress.total_bytes.load(Ordering::Relaxed);
        if total > 0 {
            if !has_total {
                bar.set_style(with_total.clone());
                has_total = true;
            }
            bar.set_length(total.max(progress.bytes.load(Ordering::Relaxed)));
        }
        bar.set_position(progress.bytes.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{} files, {} errors",
            progress.files.load(Ordering::Relaxed),
            progress.errors.load(Ordering::Relaxed)
        ));
        bar.tick();
        if !still_running(stopped, Duration::from_millis(100)) {
            break;
        }
    }
    bar.finish_and_clear();
}

/// Prints an operation's result: with `--json` one `{"type":"summary",…}` line (the result's
/// fields plus `type`), preceded by one `{"type":"error",…}` line per failed path.
pub(crate) fn print_summary<T: serde::Serialize>(
    value: &T,
    errors: &[xstore::PathError],
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for e in errors {
        let line = serde_json::json!({"type": "error", "path": e.path, "message": e.message});
        writeln!(out, "{line}")?;
    }
    let mut v = serde_json::to_value(value)?;
    if let Some(map) = v.as_object_mut() {
        map.insert("type".into(), "summary".into());
    }
    writeln!(out, "{v}")?;
    Ok(())
}

fn run(cli: &Cli) -> Result<u8> {
    match &cli.command {
        Command::Agent(args) => pull::agent(args),
        Command::Pull(args) => pull::pull(cli, args),
        Command::Hosts(args) => pull::hosts(cli, args),
        Command::CheckFreshness(args) => ops::check_freshness(cli, args),
        Command::CheckVerify(args) => ops::check_verify(cli, args),
        Command::CheckSync(args) => ops::check_sync(cli, args),
        Command::Verify(args) => ops::verify(cli, args),
        Command::CheckUsage(args) => ops::check_usage(cli, args),
        Command::Du(args) => ops::du(cli, args),
        Command::Metrics(args) => ops::metrics(cli, args),
        Command::Mount(args) => browse::mount(cli, args),
        Command::ServeNfs(args) => browse::serve_nfs(cli, args),
        Command::Init(args) => commands::init(cli, args),
        Command::Key { what } => keys::key(cli, what),
        Command::WebUser { what } => web::web_user(cli, what),
        Command::ServeWeb(args) => web::serve_web(cli, args),
        Command::FixPermissions(args) => commands::fix_permissions(cli, args),
        Command::Backup(args) => commands::backup(cli, args),
        Command::Snapshots(args) => commands::snapshots(cli, args),
        Command::Ls(args) => commands::ls(cli, args),
        Command::Cat(args) => commands::cat(cli, args),
        Command::Restore(args) => commands::restore(cli, args),
        Command::Diff(args) => commands::diff(cli, args),
        Command::Find(args) => find::find(cli, args),
        Command::Dump(args) => find::dump(cli, args),
        Command::Check(args) => commands::check(cli, args),
        Command::Rotate(args) => retention::rotate(cli, args),
        Command::Forget(args) => retention::forget(cli, args),
        Command::Pin(args) => retention::pin(cli, &args.snapshot, true),
        Command::Unpin(args) => retention::pin(cli, &args.snapshot, false),
        Command::Gc(args) => retention::gc(cli, args),
        Command::Compact(args) => retention::compact(cli, args),
        Command::Sync(args) => sync::sync(cli, args),
        Command::Serve(args) => sync::serve(cli, args),
        Command::Tiers(args) => retention::tiers(cli, args),
        Command::Schedule(args) => retention::schedule(cli, args),
        Command::Stats => commands::stats(cli),
        Command::Import { what } => migrate::import(cli, what),
        Command::Generate { what } => generate::generate(cli, what),
        Command::Repair {
            what: RepairWhat::Index,
        } => commands::repair_index(cli),
    }
}

#[cfg(test)]
mod tests {
    use super::defaults_repo;
    use std::path::PathBuf;

    #[test]
    fn the_defaults_file_names_the_repository() {
        let packaged = include_str!("../../packaging/xstore.default");
        assert_eq!(defaults_repo(packaged), Some(PathBuf::from("/srv/xstore")));
        assert_eq!(
            defaults_repo("# comment\nexport XSTORE_REPO=\"/data/x s\"\n"),
            Some(PathBuf::from("/data/x s"))
        );
        assert_eq!(
            defaults_repo("XSTORE_REPO='/a'\nXSTORE_REPO=/b\n"),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(defaults_repo("#XSTORE_REPO=/c\nXSTORE_REPO=\n"), None);
    }
}
