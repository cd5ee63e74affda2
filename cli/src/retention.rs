//! Retention commands: tiers, rotate, forget, pin/unpin, gc, schedule.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use xstore::retention::{Action, KeepPolicy, Plan, Schedule};
use xstore::{GcAction, GcOptions, RetentionSettings};

use crate::{human_bytes, open_ro, open_rw, print_json, time_of, Cli, EXIT_OK};

/// `xstore rotate`.
#[derive(Args, Debug)]
pub(crate) struct RotateArgs {
    /// The tier (e.g. daily).
    pub(crate) tier: String,
    /// Only this host.
    #[arg(
        long,
        conflicts_with = "all",
        required_unless_present = "all",
        value_parser = crate::values::host
    )]
    pub(crate) host: Option<xstore::HostName>,
    /// Every host.
    #[arg(long)]
    pub(crate) all: bool,
    /// Print the plan with reasons, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// `xstore forget`.
#[derive(Args, Debug)]
pub(crate) struct ForgetArgs {
    #[command(flatten)]
    pub(crate) keep: KeepArgs,
    /// Only this host (default: every host, each planned on its own).
    #[arg(long, value_parser = crate::values::host)]
    pub(crate) host: Option<xstore::HostName>,
    /// Expire just this snapshot (id prefix, HOST@latest …), whatever policies say:
    /// for example one dated in the future by a clock that was ahead.
    #[arg(long, conflicts_with = "host")]
    pub(crate) snapshot: Option<String>,
    /// Print the plan with reasons, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Plan as if it were this time (RFC 3339; for tests).
    #[arg(long, hide = true, value_parser = crate::values::instant)]
    pub(crate) now: Option<i64>,
}

/// `xstore pin` and `xstore unpin`.
#[derive(Args, Debug)]
pub(crate) struct PinArgs {
    /// Snapshot: id prefix, HOST@latest, HOST@daily.0 …
    pub(crate) snapshot: String,
}

/// `xstore gc`.
#[derive(Args, Debug)]
pub(crate) struct GcArgs {
    /// Report what would be freed, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Rewrite packs with more dead bytes than this (default: the repository's, 10%).
    #[arg(long, value_name = "PERCENT", value_parser = crate::values::percent)]
    pub(crate) max_dead: Option<f64>,
    /// Keep retired pack files this long before deleting them (default: the
    /// repository's, 24h), so that readers started before this gc finish. `0s` deletes
    /// them at once.
    #[arg(long, value_name = "DURATION", value_parser = crate::values::period)]
    pub(crate) grace: Option<Duration>,
    /// Also reclaim the packs `repair index` held because it could not attribute
    /// their blobs to any snapshot.
    #[arg(long)]
    pub(crate) release_held: bool,
}

/// `xstore compact`.
#[derive(Args, Debug)]
pub(crate) struct CompactArgs {
    /// The zstd level data is compressed at again (1-22).
    #[arg(long, default_value_t = xstore::DEFAULT_COMPACT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    pub(crate) level: i32,
    /// Only packs stored at least this long ago (data that survived its first rotations).
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = crate::values::period)]
    pub(crate) min_age: Duration,
    /// At most this many bytes of packs per run.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = crate::values::size)]
    pub(crate) max_bytes: u64,
    /// Start no new group of packs after this long (a run scheduled between pulls ends
    /// before the next one).
    #[arg(long, value_name = "DURATION", value_parser = crate::values::period)]
    pub(crate) max_duration: Option<Duration>,
}

/// `xstore tiers`.
#[derive(Args, Debug)]
pub(crate) struct TiersArgs {
    /// The host whose override to show or set.
    #[arg(long, value_parser = crate::values::host)]
    pub(crate) host: Option<xstore::HostName>,
    /// New schedule, lowest tier first: hourly=6,daily=7,weekly=4,monthly=6.
    #[arg(
        long,
        value_name = "SCHEDULE",
        conflicts_with = "reset",
        value_parser = crate::values::schedule
    )]
    pub(crate) set: Option<Schedule>,
    /// Remove the host's override (or, without --host, restore the default schedule).
    #[arg(long)]
    pub(crate) reset: bool,
    /// New gc threshold (percent of a pack that is dead before it is rewritten).
    #[arg(long, value_name = "PERCENT", value_parser = crate::values::percent)]
    pub(crate) gc_max_dead: Option<f64>,
}

/// `xstore schedule`.
#[derive(Args, Debug)]
pub(crate) struct ScheduleArgs {
    /// A file for /etc/cron.d (the default).
    #[arg(long, conflicts_with = "systemd")]
    pub(crate) cron: bool,
    /// systemd service and timer units.
    #[arg(long)]
    pub(crate) systemd: bool,
    /// The xstore binary in the printed commands (default: this binary's own path).
    #[arg(long, value_name = "PATH")]
    pub(crate) xstore: Option<String>,
    /// The backup command run every 4 hours.
    #[arg(long, default_value = "pull --all --jobs 4")]
    pub(crate) pull: String,
    /// A replica's schedule: this sync command (for example `sync --from
    /// ssh://backup@primary.example.net`) every 4 hours, 45 minutes after the primary's
    /// pulls, instead of the pull job. Its copies keep the source's tiers, so no rotation
    /// runs unless the command places them itself (`--enter TIER`).
    #[arg(long, value_name = "COMMAND")]
    pub(crate) sync: Option<String>,
    /// The user the jobs run as.
    #[arg(long, default_value = "root")]
    pub(crate) user: String,
    /// Write the systemd units into this directory instead of printing them.
    #[arg(long, value_name = "DIR", requires = "systemd")]
    pub(crate) output_dir: Option<PathBuf>,
    /// Take the repository (XSTORE_REPO) and inventory from this environment file
    /// instead of naming the repository in each command (the packaged units).
    #[arg(long, value_name = "FILE")]
    pub(crate) env_file: Option<String>,
}

/// Calendar rules of `xstore forget`.
#[derive(Args, Debug, Default)]
pub(crate) struct KeepArgs {
    /// Keep the newest N snapshots (partial ones do not use up N).
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Keep every snapshot taken within this long before now (e.g. 2d, 36h).
    #[arg(long, value_name = "DURATION", value_parser = crate::values::nanos)]
    keep_within: Option<i64>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<usize>,
    /// … of each of the last N days (UTC).
    #[arg(long, value_name = "N")]
    keep_daily: Option<usize>,
    /// … of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<usize>,
    /// … of each of the last N months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<usize>,
    /// … of each of the last N years.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<usize>,
}

impl KeepArgs {
    /// No `--keep-*` option given.
    pub(crate) fn is_empty(&self) -> bool {
        self.keep_within.is_none()
            && [
                self.keep_last,
                self.keep_hourly,
                self.keep_daily,
                self.keep_weekly,
                self.keep_monthly,
                self.keep_yearly,
            ]
            .iter()
            .all(Option::is_none)
    }

    fn policy(&self) -> Result<KeepPolicy> {
        Ok(KeepPolicy {
            last: self.keep_last,
            within: self.keep_within,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
        })
    }
}

fn print_plan(plan: &Plan) {
    for d in &plan.decisions {
        let id = d.id.get(..8).unwrap_or(&d.id);
        let action = match d.action {
            Action::Keep => "keep",
            Action::Expire => "expire",
        };
        outln!(
            "{action:<6}  {id}  {:<20}  {:<20}  {}",
            time_of(d.time),
            d.host,
            d.reasons.join("; ")
        );
    }
}

/// Shows the plan, applies it unless `dry_run`, prints what it did.
pub(crate) fn run_plan(
    cli: &Cli,
    repo: &xstore::Repository,
    plan: Plan,
    dry_run: bool,
) -> Result<u8> {
    let applied = if dry_run {
        None
    } else {
        Some(repo.apply_plan(&plan)?)
    };
    if cli.json {
        print_json(&serde_json::json!({ "dry_run": dry_run, "plan": plan, "applied": applied }))?;
        return Ok(EXIT_OK);
    }
    if !cli.quiet {
        print_plan(&plan);
    }
    let expiring = plan.expired().count();
    match applied {
        None => {
            if !cli.quiet {
                outln!(
                    "dry run: would expire {expiring} of {} snapshots",
                    plan.decisions.len()
                );
            }
        }
        Some(a) => {
            if !cli.quiet {
                outln!(
                    "expired {} snapshots, relabelled {}; {} blobs ({}) are now unreferenced (`xstore gc` reclaims them)",
                    a.released.snapshots,
                    a.relabelled,
                    a.released.blobs,
                    human_bytes(a.released.stored_bytes)
                );
            }
        }
    }
    Ok(EXIT_OK)
}

pub(crate) fn rotate(cli: &Cli, args: &RotateArgs) -> Result<u8> {
    let repo = crate::open_rw_or_ro(cli, args.dry_run)?;
    let started_ns = xstore::now_ns();
    let planned = repo.plan_rotate(&args.tier, args.host.as_ref());
    let summary = planned.as_ref().ok().map(|plan| {
        let scope = args
            .host
            .as_ref()
            .map(|h| format!(" of {h}"))
            .unwrap_or_default();
        format!(
            "{} of {} snapshots{scope} expired",
            plan.expired().count(),
            plan.decisions.len()
        )
    });
    let result = planned
        .map_err(anyhow::Error::from)
        .and_then(|plan| run_plan(cli, &repo, plan, args.dry_run));
    if !args.dry_run {
        record_run(
            &repo,
            &format!("rotate-{}", args.tier),
            started_ns,
            &result,
            summary,
        );
    }
    result
}

/// Keeps how a maintenance run went as its job's last run (the web front's operator page
/// shows it); failing to keep it is a warning, never the run's failure.
pub(crate) fn record_run(
    repo: &xstore::Repository,
    job: &str,
    started_ns: i64,
    result: &Result<u8>,
    summary: Option<String>,
) {
    let record = xstore::RunRecord {
        job: job.to_string(),
        started_ns,
        finished_ns: xstore::now_ns(),
        ok: result.is_ok(),
        summary: match result {
            Ok(_) => summary.unwrap_or_default(),
            Err(e) => format!("{e:#}"),
        },
    };
    if let Err(e) = repo.record_run(&record) {
        tracing::warn!("the run record of {job} was not kept: {e}");
    }
}

pub(crate) fn forget(cli: &Cli, args: &ForgetArgs) -> Result<u8> {
    if args.snapshot.is_some() && !args.keep.is_empty() {
        bail!("--snapshot names the one snapshot to expire: give no --keep-* policy with it");
    }
    let plan_of = |repo: &xstore::Repository| -> Result<Plan> {
        match &args.snapshot {
            // `--snapshot REF` expires that one snapshot, whatever policies say.
            Some(snapshot) => Ok(repo.plan_forget_snapshot(&repo.resolve(snapshot)?.id)?),
            None => {
                let policy = args.keep.policy()?;
                let now_ns = args.now.unwrap_or_else(xstore::now_ns);
                Ok(repo.plan_forget(&policy, args.host.as_ref(), now_ns)?)
            }
        }
    };
    let repo = crate::open_rw_or_ro(cli, args.dry_run)?;
    let plan = plan_of(&repo)?;
    run_plan(cli, &repo, plan, args.dry_run)
}

pub(crate) fn pin(cli: &Cli, snapshot: &str, pinned: bool) -> Result<u8> {
    let repo = open_rw(cli)?;
    let s = repo.resolve(snapshot)?;
    let s = repo.set_pinned(&s.id, pinned)?;
    if cli.json {
        print_json(&s)?;
    } else if !cli.quiet {
        outln!(
            "{} snapshot {} of {}",
            if pinned { "pinned" } else { "unpinned" },
            s.id.short(),
            s.host
        );
    }
    Ok(EXIT_OK)
}

pub(crate) fn gc(cli: &Cli, args: &GcArgs) -> Result<u8> {
    let repo = crate::open_rw_or_ro(cli, args.dry_run)?;
    let started_ns = xstore::now_ns();
    let reclaimed = reclaim(cli, &repo, args);
    if !args.dry_run {
        let summary = reclaimed.as_ref().ok().map(|r| {
            format!(
                "{} packs deleted, {} rewritten; freed {}",
                r.packs_deleted,
                r.packs_rewritten,
                human_bytes(r.bytes_freed)
            )
        });
        let result = reclaimed
            .as_ref()
            .map(|_| EXIT_OK)
            .map_err(|e| anyhow::anyhow!("{e:#}"));
        record_run(&repo, "gc", started_ns, &result, summary);
    }
    print_gc(cli, args, reclaimed?)
}

pub(crate) fn compact(cli: &Cli, args: &CompactArgs) -> Result<u8> {
    let repo = open_rw(cli)?;
    let started_ns = xstore::now_ns();
    let compacted = repo.compact(&xstore::CompactOptions {
        level: args.level,
        min_age: args.min_age,
        max_bytes: args.max_bytes,
        max_duration: args.max_duration,
    });
    let summary = compacted.as_ref().ok().map(|r| {
        format!(
            "{} packs compacted at level {}: {} → {}",
            r.packs_compacted,
            r.level,
            human_bytes(r.bytes_before),
            human_bytes(r.bytes_after)
        )
    });
    let result = compacted
        .as_ref()
        .map(|_| EXIT_OK)
        .map_err(|e| anyhow::anyhow!("{e:#}"));
    record_run(&repo, "compact", started_ns, &result, summary.clone());
    let report = compacted?;
    for why in &report.skipped {
        eprintln!("xstore: skipped: {why}");
    }
    if let Some(why) = &report.stopped {
        eprintln!("xstore: compact stopped early: {why}");
    }
    if cli.json {
        print_json(&report)?;
    } else if !cli.quiet {
        outln!(
            "{} in {:.1} s; {} packs ({}) wait for a later run, {} are younger than --min-age; the old packs go at a gc after the grace period",
            summary.unwrap_or_default(),
            report.seconds,
            report.packs_remaining,
            human_bytes(report.bytes_remaining),
            report.packs_too_young
        );
    }
    Ok(EXIT_OK)
}

/// Plans and (unless a dry run) carries out gc.
fn reclaim(cli: &Cli, repo: &xstore::Repository, args: &GcArgs) -> Result<xstore::GcReport> {
    let plan = repo.plan_gc(&GcOptions {
        max_dead_percent: args.max_dead,
        grace: args.grace,
        release_held: args.release_held,
    })?;
    Ok(if args.dry_run {
        plan.report
    } else {
        let progress = std::sync::Arc::new(xstore::Progress::default());
        let tracker = crate::Tracker::start(cli, "gc", progress.clone());
        let result = repo.gc(plan, Some(&progress));
        tracker.finish();
        result?
    })
}

fn print_gc(cli: &Cli, args: &GcArgs, report: xstore::GcReport) -> Result<u8> {
    if cli.json {
        crate::print_summary(&report, &[])?;
        return Ok(EXIT_OK);
    }
    if cli.verbose > 0 {
        for p in &report.packs {
            let action = match p.action {
                GcAction::Delete => "delete",
                GcAction::Rewrite => "rewrite",
                GcAction::Skip => "skip",
            };
            outln!(
                "{action:<7}  {}  {} dead of {}{}",
                p.pack.short(16),
                human_bytes(p.dead_bytes),
                human_bytes(p.size),
                p.note
                    .as_deref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            );
        }
    }
    if !cli.quiet {
        outln!(
            "{}{} packs deleted, {} rewritten ({} blobs, {} copied), {} skipped; freed {} ({} bytes); {} dead below the {}% threshold remain",
            if args.dry_run { "dry run: " } else { "" },
            report.packs_deleted,
            report.packs_rewritten,
            report.blobs_moved,
            human_bytes(report.bytes_copied),
            report.packs_skipped,
            human_bytes(report.bytes_freed),
            report.bytes_freed,
            human_bytes(report.dead_bytes_remaining),
            report.max_dead_percent
        );
        if !args.dry_run {
            outln!(
                "retired pack files: {} deleted ({}) after the grace period of {}, {} waiting{}",
                report.retired_deleted,
                human_bytes(report.retired_bytes_deleted),
                xstore::text::short_duration(report.grace_seconds),
                report.retired_waiting,
                if report.packs_held > 0 {
                    format!(
                        "; {} packs held by repair index (gc --release-held)",
                        report.packs_held
                    )
                } else {
                    String::new()
                }
            );
            if report.uploads_aborted + report.uploads_waiting > 0 {
                outln!(
                    "unfinished uploads of crashed writers: {} aborted, {} waiting for the grace period",
                    report.uploads_aborted, report.uploads_waiting
                );
            }
        }
    }
    Ok(EXIT_OK)
}

pub(crate) fn tiers(cli: &Cli, args: &TiersArgs) -> Result<u8> {
    let TiersArgs {
        host,
        set,
        reset,
        gc_max_dead,
    } = args;
    let (host, reset, gc_max_dead) = (host.as_ref(), *reset, *gc_max_dead);
    let changing = set.is_some() || reset || gc_max_dead.is_some();
    let settings = if changing {
        let repo = open_rw(cli)?;
        let mut s = repo.retention_settings()?;
        if let Some(schedule) = set.clone() {
            match host {
                Some(h) => {
                    s.schedules.hosts.insert(h.to_string(), schedule);
                }
                None => s.schedules.default = schedule,
            }
        }
        if reset {
            match host {
                Some(h) => {
                    s.schedules.hosts.remove(h.as_str());
                }
                None => s.schedules = Default::default(),
            }
        }
        if let Some(p) = gc_max_dead {
            s.gc_max_dead_percent = p;
        }
        repo.set_retention_settings(&s)?;
        s
    } else {
        open_ro(cli)?.retention_settings()?
    };
    print_settings(cli, &settings, host.map(|h| h.as_str()))
}

fn print_settings(cli: &Cli, s: &RetentionSettings, host: Option<&str>) -> Result<u8> {
    if cli.json {
        print_json(s)?;
        return Ok(EXIT_OK);
    }
    if cli.quiet {
        return Ok(EXIT_OK);
    }
    match host {
        Some(h) => outln!("{h}: {}", s.schedules.for_host(h)),
        None => {
            outln!("default: {}", s.schedules.default);
            for (h, sch) in &s.schedules.hosts {
                outln!("{h}: {sch}");
            }
        }
    }
    outln!("gc rewrites packs over {}% dead", s.gc_max_dead_percent);
    Ok(EXIT_OK)
}

/// One job of the seed service's schedule.
#[derive(serde::Serialize)]
struct Job {
    name: &'static str,
    description: &'static str,
    /// cron fields (minute hour day-of-month month day-of-week).
    cron: &'static str,
    /// systemd OnCalendar expression.
    on_calendar: &'static str,
    command: String,
}

/// `repo`: `--repo DIR` for the commands, or empty when the environment names it.
fn jobs(xstore: &str, repo: &str, pull: &str, sync: Option<&str>) -> Vec<Job> {
    let wait = "--lock-wait 3h";
    let cmd = |args: &str| format!("{xstore}{repo} -q {wait} {args}");
    let mut jobs = primary_jobs(xstore, repo, pull);
    if let Some(sync) = sync {
        let places_itself = sync
            .split_whitespace()
            .any(|a| a == "--enter" || a.starts_with("--enter="));
        jobs.retain(|j| {
            j.name != "xstore-pull" && (places_itself || !j.name.starts_with("xstore-rotate"))
        });
        jobs.insert(
            0,
            Job {
                name: "xstore-sync",
                description: "copy the source's new snapshots (its deletions never travel)",
                cron: "45 */4 * * *",
                on_calendar: "*-*-* 00/4:45:00",
                command: cmd(sync),
            },
        );
    }
    jobs
}

/// The jobs of a server that pulls from its hosts.
fn primary_jobs(xstore: &str, repo: &str, pull: &str) -> Vec<Job> {
    let wait = "--lock-wait 3h";
    let cmd = |args: &str| format!("{xstore}{repo} -q {wait} {args}");
    // rsnapshot's documented order: higher tiers rotate before lower ones, and before the
    // pull that feeds the lowest tier, so a promotion never takes a snapshot just made.
    vec![
        Job {
            name: "xstore-rotate-monthly",
            description: "promote the oldest weekly snapshot to monthly",
            cron: "30 2 1 * *",
            on_calendar: "*-*-01 02:30:00",
            command: cmd("rotate monthly --all"),
        },
        Job {
            name: "xstore-rotate-weekly",
            description: "promote the oldest daily snapshot to weekly",
            cron: "0 3 * * 1",
            on_calendar: "Mon *-*-* 03:00:00",
            command: cmd("rotate weekly --all"),
        },
        Job {
            name: "xstore-rotate-daily",
            description: "promote the oldest hourly snapshot to daily",
            cron: "30 3 * * *",
            on_calendar: "*-*-* 03:30:00",
            command: cmd("rotate daily --all"),
        },
        Job {
            name: "xstore-pull",
            description: "back up every host (new snapshots enter the hourly tier)",
            cron: "0 */4 * * *",
            on_calendar: "*-*-* 00/4:00:00",
            command: format!("{xstore}{repo} -q {wait} {pull}"),
        },
        Job {
            name: "xstore-gc",
            description: "reclaim the space of expired snapshots",
            cron: "0 5 * * *",
            on_calendar: "*-*-* 05:00:00",
            command: cmd("gc"),
        },
        Job {
            name: "xstore-verify",
            description: "re-read and re-hash the packs verified longest ago (one hour a day)",
            cron: "30 5 * * *",
            on_calendar: "*-*-* 05:30:00",
            command: cmd("verify --max-duration 1h"),
        },
        Job {
            name: "xstore-compact",
            description: "store data older than a day again at zstd 19 (one hour a day, done before the 08:00 pull)",
            cron: "40 6 * * *",
            on_calendar: "*-*-* 06:40:00",
            command: cmd("compact --max-duration 1h"),
        },
    ]
}

pub(crate) fn schedule(cli: &Cli, args: &ScheduleArgs) -> Result<u8> {
    let repo = match args.env_file.as_deref() {
        Some(_) => String::new(),
        None => {
            let repo = crate::repo_path(cli)?.display().to_string();
            if repo.contains(char::is_whitespace) {
                bail!("repository path {repo:?} contains whitespace; use a path without it in schedules");
            }
            format!(" --repo {repo}")
        }
    };
    let user = args.user.as_str();
    let xstore = match args.xstore.as_deref() {
        Some(x) => x.to_string(),
        None => std::env::current_exe()
            .context("finding this binary's path (give --xstore PATH)")?
            .display()
            .to_string(),
    };
    if xstore.contains(char::is_whitespace) {
        bail!("xstore binary path {xstore:?} contains whitespace; give --xstore PATH");
    }
    let jobs = jobs(&xstore, &repo, &args.pull, args.sync.as_deref());
    if cli.json {
        print_json(&jobs)?;
        return Ok(EXIT_OK);
    }
    if !args.systemd {
        outln!("# xstore: the seed service's schedule, for /etc/cron.d/xstore");
        outln!("# Higher tiers rotate first (rsnapshot's order); --lock-wait makes overlapping jobs queue.");
        outln!("SHELL=/bin/sh");
        outln!("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        // cron reads no environment file: each job sources it itself (`set -a` exports
        // XSTORE_REPO and the rest), and fails visibly when it is missing.
        let prefix = match args.env_file.as_deref() {
            Some(env) => {
                outln!("# the repository: XSTORE_REPO from {env}, sourced by each job");
                format!("set -a && . {env} && set +a && exec ")
            }
            None => String::new(),
        };
        for j in &jobs {
            outln!("# {}: {}", j.name, j.description);
            outln!("{:<14} {user} {prefix}{}", j.cron, j.command);
        }
        return Ok(EXIT_OK);
    }
    let env = args
        .env_file
        .as_deref()
        .map(|f| format!("EnvironmentFile={f}\n"))
        .unwrap_or_default();
    let mut units = Vec::new();
    for j in &jobs {
        units.push((
            format!("{}.service", j.name),
            format!(
                "[Unit]\nDescription=xstore: {}\n\n[Service]\nType=oneshot\nUser={user}\n{env}Nice=10\nIOSchedulingClass=idle\nExecStart={}\n",
                j.description, j.command
            ),
        ));
        units.push((
            format!("{}.timer", j.name),
            format!(
                "[Unit]\nDescription=xstore: {} (timer)\n\n[Timer]\nOnCalendar={}\nPersistent=true\nRandomizedDelaySec=0\n\n[Install]\nWantedBy=timers.target\n",
                j.description, j.on_calendar
            ),
        ));
    }
    let timers = jobs
        .iter()
        .map(|j| format!("{}.timer", j.name))
        .collect::<Vec<_>>()
        .join(" ");
    match args.output_dir.as_deref() {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            for (name, text) in &units {
                let path = dir.join(name);
                std::fs::write(&path, text).with_context(|| path.display().to_string())?;
            }
            if !cli.quiet {
                outln!("{} units written to {}", units.len(), dir.display());
            }
        }
        None => {
            for (name, text) in &units {
                outln!("# /etc/systemd/system/{name}");
                outln!("{text}");
            }
            outln!("# enable with: systemctl daemon-reload && systemctl enable --now {timers}");
        }
    }
    Ok(EXIT_OK)
}
