//! Operations: `check-freshness`, `check-usage` (monitoring plugins), `du` and `metrics`
//! (README §Monitoring).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use xstore::{Repository, Usage};
use xstore_fleet::monitor::{usage_check, FreshnessOptions, HostUsage, PluginReport};
use xstore_fleet::Inventory;

use crate::pull::DEFAULT_INVENTORY;
use crate::{
    open_ro, print_json, print_summary, repo_path, size, time_of, Cli, Tracker, EXIT_OK,
    EXIT_PROBLEMS,
};
use std::sync::Arc;

#[derive(clap::Args)]
pub(crate) struct InventoryArg {
    /// The inventory file (default /etc/xstore/hosts.toml, when it exists).
    #[arg(long, env = "XSTORE_INVENTORY", value_name = "FILE")]
    inventory: Option<PathBuf>,
}

impl InventoryArg {
    /// The inventory named, or the default one unless no file is there (one that cannot be
    /// read is an error, [`Inventory::load_default`]).
    pub(crate) fn load(&self) -> Result<Option<Inventory>> {
        Ok(match &self.inventory {
            Some(p) => Some(Inventory::load(p)?),
            None => Inventory::load_default(std::path::Path::new(DEFAULT_INVENTORY))?,
        })
    }
}

#[derive(clap::Args)]
pub(crate) struct FreshnessArgs {
    /// Only this host (repeatable).
    #[arg(
        long = "host",
        value_name = "HOST",
        conflicts_with_all = ["account", "all"],
        value_parser = crate::values::host
    )]
    hosts: Vec<xstore::HostName>,
    /// Only this account's hosts.
    #[arg(long, conflicts_with = "all")]
    account: Option<String>,
    /// Every inventory host (the default; without an inventory, every host with snapshots).
    #[arg(long)]
    all: bool,
    /// WARNING when the newest complete backup is older than this (hosts may override it in
    /// the inventory).
    #[arg(long, default_value = "4h", value_name = "AGE", value_parser = crate::values::period)]
    warning: Duration,
    /// CRITICAL when the newest complete backup is older than this.
    #[arg(long, default_value = "8h", value_name = "AGE", value_parser = crate::values::period)]
    critical: Duration,
    #[command(flatten)]
    inventory: InventoryArg,
    /// Check as if it were this time (RFC 3339; for tests).
    #[arg(long, hide = true, value_parser = crate::values::instant)]
    now: Option<i64>,
}

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// Stop starting packs after this long (e.g. 1h).
    #[arg(long, value_name = "DURATION", value_parser = crate::values::period)]
    max_duration: Option<Duration>,
    /// Stop before a pack that would take the bytes read past this (e.g. 50GiB, or bytes).
    #[arg(long, value_name = "SIZE", value_parser = crate::values::size)]
    max_bytes: Option<u64>,
}

#[derive(clap::Args)]
pub(crate) struct VerifyCheckArgs {
    /// WARNING when the oldest pack verification is older than this.
    #[arg(long, default_value = "8d", value_name = "AGE", value_parser = crate::values::period)]
    warning: Duration,
    /// CRITICAL when it is older than this.
    #[arg(long, default_value = "16d", value_name = "AGE", value_parser = crate::values::period)]
    critical: Duration,
    /// Check as if it were this time (RFC 3339; for tests).
    #[arg(long, hide = true, value_parser = crate::values::instant)]
    now: Option<i64>,
}

#[derive(clap::Args)]
pub(crate) struct SyncCheckArgs {
    /// WARNING when a host may be this far behind the source (the time since the last
    /// successful sync, plus what it did not copy).
    #[arg(long, default_value = "8h", value_name = "AGE", value_parser = crate::values::period)]
    warning: Duration,
    /// CRITICAL when this far.
    #[arg(long, default_value = "24h", value_name = "AGE", value_parser = crate::values::period)]
    critical: Duration,
    /// Check as if it were this time (RFC 3339; for tests).
    #[arg(long, hide = true, value_parser = crate::values::instant)]
    now: Option<i64>,
}

#[derive(clap::Args)]
pub(crate) struct UsageCheckArgs {
    /// Only this account (repeatable).
    #[arg(long = "account", value_name = "ACCOUNT")]
    accounts: Vec<String>,
    /// WARNING above this multiple of the allocation.
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    warning_factor: f64,
    /// CRITICAL above this multiple of the allocation (the hard limit).
    #[arg(long, default_value_t = 1.5, value_name = "FACTOR")]
    critical_factor: f64,
    #[command(flatten)]
    inventory: InventoryArg,
}

#[derive(clap::Args)]
pub(crate) struct DuArgs {
    /// One host: its usage and each of its snapshots.
    #[arg(long, conflicts_with = "account", value_parser = crate::values::host)]
    host: Option<xstore::HostName>,
    /// One account: its usage and each of its hosts.
    #[arg(long)]
    account: Option<String>,
    #[command(flatten)]
    inventory: InventoryArg,
}

#[derive(clap::Args)]
pub(crate) struct MetricsArgs {
    /// Write to this file atomically (for node_exporter's textfile collector, e.g.
    /// /var/lib/prometheus/node-exporter/xstore.prom) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    inventory: InventoryArg,
}

/// A plugin's `--warning` and `--critical` ages (the first no longer than the second) and the
/// time to check at (`--now`, or now).
fn age_thresholds(
    warning: Duration,
    critical: Duration,
    now: Option<i64>,
) -> Result<(Duration, Duration, i64)> {
    // As given: whole days, hours, minutes or seconds.
    let shown = |d: Duration| match d.as_secs() {
        s if s > 0 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    anyhow::ensure!(
        warning <= critical,
        "--warning {} is longer than --critical {}",
        shown(warning),
        shown(critical)
    );
    Ok((warning, critical, now.unwrap_or_else(xstore::now_ns)))
}

/// Prints a plugin report (text or JSON) and returns its exit status.
fn emit(cli: &Cli, report: &PluginReport, json: Option<serde_json::Value>) -> Result<u8> {
    match json {
        Some(v) if cli.json => print_json(&v)?,
        _ => out!("{}", report.render()),
    }
    Ok(report.state.exit_code())
}

/// Runs a check; any error becomes UNKNOWN (exit 3) with the error on the status line.
fn plugin(cli: &Cli, check: &'static str, run: impl FnOnce() -> Result<u8>) -> Result<u8> {
    match run() {
        Ok(code) => Ok(code),
        Err(e) => {
            let report = PluginReport::unknown(check, &format!("{e:#}"));
            let json = serde_json::json!({ "state": "UNKNOWN", "error": report.summary });
            emit(cli, &report, Some(json))
        }
    }
}

pub(crate) fn check_freshness(cli: &Cli, args: &FreshnessArgs) -> Result<u8> {
    plugin(cli, "FRESHNESS", || {
        let (warning, critical, now_ns) = age_thresholds(args.warning, args.critical, args.now)?;
        let inventory = args.inventory.load()?;
        let repo = open_ro(cli)?;
        let targets = xstore_fleet::monitor::freshness_targets(
            &repo,
            inventory.as_ref(),
            &args.hosts,
            args.account.as_deref(),
        )?;
        let report = xstore_fleet::monitor::freshness(
            &repo,
            &targets,
            &FreshnessOptions {
                warning,
                critical,
                now_ns,
            },
        )?;
        emit(cli, &report.plugin(), Some(serde_json::to_value(&report)?))
    })
}

pub(crate) fn check_usage(cli: &Cli, args: &UsageCheckArgs) -> Result<u8> {
    plugin(cli, "USAGE", || {
        anyhow::ensure!(
            args.warning_factor > 0.0 && args.critical_factor >= args.warning_factor,
            "factors must satisfy 0 < --warning-factor <= --critical-factor"
        );
        let inv = args
            .inventory
            .load()?
            .context("no inventory (allocations come from it): use --inventory FILE")?;
        let mut accounts = Vec::new();
        for name in &args.accounts {
            accounts.push(
                inv.account(name)
                    .cloned()
                    .with_context(|| format!("account {name} is not in the inventory"))?,
            );
        }
        if args.accounts.is_empty() {
            accounts = inv.accounts.clone();
        }
        let repo = open_ro(cli)?;
        let usage = xstore_fleet::monitor::account_usage(
            &repo,
            &accounts,
            args.warning_factor,
            args.critical_factor,
        )?;
        let report = usage_check(&usage, args.warning_factor, args.critical_factor);
        let json = serde_json::json!({ "state": report.state, "accounts": usage });
        emit(cli, &report, Some(json))
    })
}

/// One table row; account rows also show their allocation, percentage used, OVER and
/// INFLATED (as [`xstore_fleet::monitor::AccountUsage`] computed them); host rows show
/// INFLATED when their logical ratio is above `ratio_limit`.
fn usage_row(
    cli: &Cli,
    name: &str,
    account: &str,
    u: &Usage,
    allocation: Option<&xstore_fleet::monitor::AccountUsage>,
    ratio_limit: u64,
) -> String {
    let mut alloc = match allocation {
        Some(a) => format!(
            "{:>10}  {:>5.0}%{}{}",
            size(cli, a.allocation),
            a.percent,
            if a.over_allocation { "  OVER" } else { "" },
            if a.inflated_hosts.is_empty() {
                ""
            } else {
                "  INFLATED"
            }
        ),
        None => format!("{:>10}  {:>6}", "-", "-"),
    };
    if allocation.is_none() && u.logical_ratio() > ratio_limit as f64 {
        alloc.push_str(&format!("  INFLATED {:.0}x", u.logical_ratio()));
    }
    format!(
        "{name:<24}  {account:<12}  {:>5}  {:>10}  {:>10}  {:>10}  {:>10}  {alloc}",
        u.snapshots,
        size(cli, u.newest_logical_bytes),
        size(cli, u.referenced_bytes),
        size(cli, u.exclusive_bytes),
        size(cli, u.shared_bytes),
    )
}

fn usage_header(first: &str, second: &str) -> String {
    format!(
        "{first:<24}  {second:<12}  {:>5}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>6}",
        "snaps", "newest", "stored", "exclusive", "shared", "allocation", "used"
    )
}

fn host_usage_row(cli: &Cli, h: &HostUsage) -> String {
    usage_row(
        cli,
        &h.host,
        &h.account,
        &h.usage,
        None,
        h.logical_ratio_limit,
    )
}

pub(crate) fn du(cli: &Cli, args: &DuArgs) -> Result<u8> {
    let inv = args.inventory.load()?;
    let repo = open_ro(cli)?;
    if let Some(h) = &args.host {
        let of_host = repo.host_snapshots(h)?;
        anyhow::ensure!(
            !of_host.is_empty(),
            "host {h} has no snapshots in this repository"
        );
        let row = HostUsage::of(inv.as_ref(), h.clone(), repo.usage_of(&of_host)?);
        let snaps = repo.snapshot_usage(h)?;
        if cli.json {
            print_json(&serde_json::json!({
                "host": h, "account": row.account, "usage": row.usage, "snapshots": snaps,
            }))?;
            return Ok(EXIT_OK);
        }
        outln!("{}", usage_header("host", "account"));
        outln!("{}", host_usage_row(cli, &row));
        outln!();
        outln!(
            "{:<8}  {:<20}  {:>10}  {:>10}  {:>10}",
            "snapshot",
            "time",
            "logical",
            "added",
            "only it"
        );
        for s in &snaps {
            outln!(
                "{:<8}  {:<20}  {:>10}  {:>10}  {:>10}",
                s.id.short(),
                time_of(s.start_ns),
                size(cli, s.logical_bytes),
                size(cli, s.new_stored_bytes),
                size(cli, s.exclusive_bytes)
            );
        }
        return Ok(EXIT_OK);
    }
    let report =
        xstore_fleet::monitor::fleet_usage_report(&repo, inv.as_ref(), args.account.as_deref())?;
    if cli.json {
        print_json(&serde_json::json!({ "accounts": report.accounts, "hosts": report.hosts }))?;
        return Ok(EXIT_OK);
    }
    let account_usage = &report.accounts;
    if !account_usage.is_empty() {
        outln!("{}", usage_header("account", "package"));
        for a in account_usage {
            outln!(
                "{}",
                usage_row(
                    cli,
                    &a.account,
                    a.package.as_deref().unwrap_or("-"),
                    &a.usage,
                    Some(a),
                    u64::MAX // account rows flag their inflated hosts themselves
                )
            );
        }
        outln!();
    }
    outln!("{}", usage_header("host", "account"));
    for h in &report.hosts {
        outln!("{}", host_usage_row(cli, h));
    }
    Ok(EXIT_OK)
}

pub(crate) fn metrics(cli: &Cli, args: &MetricsArgs) -> Result<u8> {
    let inv = args.inventory.load()?;
    let repo = open_ro(cli)?;
    let text = xstore_fleet::metrics::metrics(&repo, inv.as_ref(), xstore::now_ns())?;
    match &args.output {
        Some(path) => xstore_fleet::metrics::write_textfile(path, &text)?,
        None => out!("{text}"),
    }
    Ok(EXIT_OK)
}

/// The monitoring check the arguments name, if any (its usage errors exit UNKNOWN, 3).
pub(crate) fn check_named(args: &[std::ffi::OsString]) -> Option<&'static str> {
    args.iter().find_map(|a| match a.to_str() {
        Some("check-freshness") => Some("FRESHNESS"),
        Some("check-usage") => Some("USAGE"),
        Some("check-verify") => Some("VERIFY"),
        Some("check-sync") => Some("SYNC"),
        _ => None,
    })
}

pub(crate) fn verify(cli: &Cli, args: &VerifyArgs) -> Result<u8> {
    let record_wait = cli.lock_wait.unwrap_or(std::time::Duration::from_secs(600));
    let path = repo_path(cli)?;
    let progress = Arc::new(xstore::Progress::default());
    let tracker = Tracker::start(cli, "verify", progress.clone());
    let result = Repository::verify(
        &path,
        &xstore::VerifyOptions {
            max_duration: args.max_duration,
            max_bytes: args.max_bytes,
            record_wait,
            progress: Some(progress),
        },
    );
    tracker.finish();
    let report = result?;
    for d in &report.damaged {
        let paths: Vec<String> = d
            .paths
            .iter()
            .map(|p| format!("{}@{} {}", p.host, p.snapshot.short(), p.path))
            .collect();
        eprintln!(
            "xstore: damaged blob {} in pack {}: {}; breaks {}",
            d.blob,
            d.pack,
            d.message,
            if paths.is_empty() {
                "no snapshot path".to_string()
            } else {
                paths.join(", ")
            }
        );
    }
    if cli.json {
        print_summary(&report, &[])?;
    } else if !cli.quiet {
        outln!(
            "verified {} of {} packs ({}) in {:.1}s{}; oldest verification now {}",
            report.run.packs,
            report.packs_total,
            size(cli, report.run.bytes),
            report.run.seconds,
            report
                .stopped_by
                .as_deref()
                .map(|s| format!(", stopped by {s}"))
                .unwrap_or_default(),
            time_of(report.oldest_verified_ns)
        );
    }
    Ok(if report.damaged.is_empty() {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    })
}

pub(crate) fn check_sync(cli: &Cli, args: &SyncCheckArgs) -> Result<u8> {
    plugin(cli, "SYNC", || {
        let (warning, critical, now_ns) = age_thresholds(args.warning, args.critical, args.now)?;
        let status = open_ro(cli)?.sync_status()?;
        let report = xstore_fleet::monitor::sync_check(
            status.as_ref(),
            &xstore_fleet::monitor::SyncCheckOptions {
                warning,
                critical,
                now_ns,
            },
        );
        emit(cli, &report, Some(serde_json::to_value(&status)?))
    })
}

pub(crate) fn check_verify(cli: &Cli, args: &VerifyCheckArgs) -> Result<u8> {
    plugin(cli, "VERIFY", || {
        let (warning, critical, now_ns) = age_thresholds(args.warning, args.critical, args.now)?;
        let status = open_ro(cli)?.verify_status()?;
        let report = xstore_fleet::monitor::verify_check(
            &status,
            &xstore_fleet::monitor::VerifyCheckOptions {
                warning,
                critical,
                now_ns,
            },
        );
        emit(cli, &report, Some(serde_json::to_value(&status)?))
    })
}
