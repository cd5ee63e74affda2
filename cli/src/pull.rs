//! `agent`, `pull` and `hosts`: the fleet side of the CLI (README §Set up a client,
//! §Set up the server).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use xstore::{Progress, Repository};
use xstore_agent::cli::AgentArgs;
use xstore_fleet::{pull_fleet, Inventory, PullOptions, PullOutcome, PullReport};

use crate::{human_bytes, open_ro, open_rw, print_json, time_of, Cli, EXIT_OK};
use xstore::text::printable;

/// Exit status of `pull`: at least one host failed (the others were pulled).
pub(crate) const EXIT_HOSTS_FAILED: u8 = 2;
/// Exit status of `pull`: no host failed, but some snapshots are partial.
const EXIT_SOME_PARTIAL: u8 = 3;
/// Default inventory location.
pub(crate) const DEFAULT_INVENTORY: &str = "/etc/xstore/hosts.toml";

pub(crate) fn agent(args: &AgentArgs) -> Result<u8> {
    xstore_agent::cli::main(args, "xstore agent")?;
    Ok(EXIT_OK)
}

#[derive(clap::Args)]
pub(crate) struct PullArgs {
    /// Hosts to pull, by inventory name.
    #[arg(conflicts_with_all = ["all", "account"])]
    hosts: Vec<String>,
    /// Every host of the inventory.
    #[arg(long)]
    all: bool,
    /// Every host of this account.
    #[arg(long)]
    account: Option<String>,
    /// The inventory file.
    #[arg(long, env = "XSTORE_INVENTORY", default_value = DEFAULT_INVENTORY)]
    inventory: PathBuf,
    /// Hosts pulled in parallel.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Time limit per host, replacing the inventory's (e.g. 30m).
    #[arg(long, value_name = "DURATION", value_parser = crate::values::period)]
    timeout: Option<std::time::Duration>,
    /// Read every file instead of trusting the previous snapshot's metadata.
    #[arg(long)]
    no_parent: bool,
    /// Requests in flight per host.
    #[arg(long, hide = true)]
    threads: Option<usize>,
}

fn load_inventory(path: &Path) -> Result<Inventory> {
    Ok(Inventory::load(path)?)
}

fn report_line(r: &PullReport) -> String {
    match r.outcome {
        PullOutcome::Failed => format!(
            "{:<24} FAILED   {:>7.1} s  {}",
            r.host,
            r.seconds,
            printable(r.error.as_deref().unwrap_or(""))
        ),
        outcome => {
            format!(
                "{:<24} {:<8} {:>7.1} s  {:>10} scanned  {:>10} over the wire  {:>10} new  {}{}",
                r.host,
                outcome.name(),
                r.seconds,
                human_bytes(r.bytes_scanned),
                human_bytes(r.wire_bytes),
                human_bytes(r.new_stored_bytes),
                r.snapshot.map(|s| s.short()).unwrap_or_default(),
                if r.errors > 0 {
                    format!(
                        "  ({} paths failed; see `xstore snapshots --json`)",
                        r.errors
                    )
                } else {
                    String::new()
                }
            ) + &r
                .mass_change
                .as_ref()
                .map(|m| format!("\n{:<24} WARNING  {}", r.host, printable(&m.message)))
                .unwrap_or_default()
        }
    }
}

pub(crate) fn pull(cli: &Cli, args: &PullArgs) -> Result<u8> {
    let inv = load_inventory(&args.inventory)?;
    let hosts = inv.select(&args.hosts, args.all, args.account.as_deref())?;
    let timeout = args.timeout;
    let progress = Arc::new(Progress::default());
    let opts = PullOptions {
        timeout,
        threads: args.threads.unwrap_or(0),
        no_parent: args.no_parent,
        progress: Some(progress.clone()),
        accounts: inv.accounts.clone(),
        ..PullOptions::default()
    };
    let print = |r: &PullReport| {
        let quiet_ok = cli.quiet && r.outcome != PullOutcome::Failed;
        if !cli.json && !quiet_ok {
            outln!("{}", report_line(r));
        }
    };
    let mut tracker = None;
    let open = || -> Result<Repository> {
        let repo = open_rw(cli)?;
        for h in xstore_fleet::pull::apply_inventory_schedules(&repo, &inv.hosts)? {
            tracing::info!(host = %h, "tier schedule set from the inventory");
        }
        tracker = Some(crate::Tracker::start(cli, "pull", progress.clone()));
        Ok(repo)
    };
    // The writer lock is taken before any host is contacted.
    let reports = pull_fleet(open, &hosts, args.jobs, &opts, &print)?.1;
    if let Some(t) = tracker {
        t.finish();
    }
    let count = |o: PullOutcome| reports.iter().filter(|r| r.outcome == o).count();
    let (ok, partial, failed) = (
        count(PullOutcome::Ok),
        count(PullOutcome::Partial),
        count(PullOutcome::Failed),
    );
    if cli.json {
        crate::print_summary(
            &serde_json::json!({
                "hosts": reports,
                "ok": ok,
                "partial": partial,
                "failed": failed,
            }),
            &[],
        )?;
    } else if !cli.quiet {
        outln!(
            "pulled {} hosts: {ok} ok, {partial} partial, {failed} failed",
            reports.len()
        );
    }
    Ok(if failed > 0 {
        EXIT_HOSTS_FAILED
    } else if partial > 0 {
        EXIT_SOME_PARTIAL
    } else {
        EXIT_OK
    })
}

#[derive(clap::Args)]
pub(crate) struct HostsArgs {
    /// The inventory file.
    #[arg(long, env = "XSTORE_INVENTORY", default_value = DEFAULT_INVENTORY)]
    inventory: PathBuf,
}

pub(crate) fn hosts(cli: &Cli, args: &HostsArgs) -> Result<u8> {
    let inv = load_inventory(&args.inventory)?;
    let repo: Repository = open_ro(cli)?;
    let now = xstore::now_ns();
    let mut rows = Vec::new();
    for h in &inv.hosts {
        let status = xstore_fleet::pull::host_status(&repo, &h.name)?;
        let allocation = inv.account(&h.account).map(|a| a.allocation);
        rows.push((
            h,
            status.record,
            status.newest,
            allocation,
            status.last_pull,
        ));
    }
    if cli.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(h, record, latest, allocation, last_pull)| {
                serde_json::json!({
                    "host": h.name,
                    "account": h.account,
                    "address": h.address,
                    "port": h.port,
                    "user": h.user,
                    "allocation": allocation,
                    "snapshots": record.as_ref().map_or(0, |r| r.snapshots),
                    "latest": latest.as_ref().map(|s| serde_json::json!({
                        "id": s.id.to_string(),
                        "time": time_of(s.start_ns),
                        "age_seconds": (now - s.start_ns).max(0) / 1_000_000_000,
                        "status": s.status,
                    })),
                    "last_pull": last_pull,
                })
            })
            .collect();
        print_json(&v)?;
        return Ok(EXIT_OK);
    }
    outln!(
        "{:<24}  {:<12}  {:<28}  {:>9}  {:<20}  {:>8}  status",
        "host",
        "account",
        "address",
        "snapshots",
        "newest",
        "age"
    );
    for (h, record, latest, _, last_pull) in &rows {
        let (time, age, status) = match latest {
            Some(s) => (
                time_of(s.start_ns),
                crate::short_age((now - s.start_ns).max(0)),
                if s.is_complete() {
                    "complete"
                } else {
                    "partial"
                },
            ),
            None => ("-".into(), "-".into(), "never backed up"),
        };
        let failed = last_pull
            .as_ref()
            .filter(|p| p.outcome == PullOutcome::Failed)
            .map(|p| {
                format!(
                    "; last pull failed {} ago",
                    crate::short_age(now - p.finished_ns)
                )
            })
            .unwrap_or_default();
        outln!(
            "{:<24}  {:<12}  {:<28}  {:>9}  {:<20}  {:>8}  {status}{failed}",
            h.name,
            h.account,
            format!("{}@{}:{}", h.user, h.address, h.port),
            record.as_ref().map_or(0, |r| r.snapshots),
            time,
            age
        );
    }
    Ok(EXIT_OK)
}
