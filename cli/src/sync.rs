//! `xstore sync`: copy snapshots from a source repository into this one.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use xstore::{
    BucketSource, HostName, KeyAccess, Repository, S3Location, SyncLabels, SyncOptions, SyncPlan,
    SyncReport, SyncSource, TierChoice,
};

use crate::ops::InventoryArg;
use crate::{human_bytes, Cli, EXIT_OK};

/// `xstore sync`.
#[derive(Args)]
pub(crate) struct SyncArgs {
    /// The source: a repository directory (its packs there or in its bucket), opened
    /// read-only; `ssh://[USER@]HOST[:PORT]`, a primary whose key for this replica is
    /// forced to `xstore serve --read-only REPO`; or `s3://BUCKET/PREFIX` (with
    /// --from-endpoint), a primary's bucket alone, read with credentials that may only read
    /// (its map is kept in this repository's `sources/`). Nothing there is ever written or
    /// deleted.
    #[arg(long, value_name = "DIR|ssh://[USER@]HOST[:PORT]|s3://BUCKET/PREFIX")]
    from: String,
    /// The object store's endpoint URL of an `s3://` source.
    #[arg(long, value_name = "URL")]
    from_endpoint: Option<String>,
    /// The region an `s3://` source's store signs for.
    #[arg(long, value_name = "REGION", default_value = "garage")]
    from_region: String,
    /// Virtual-hosted-style requests (BUCKET.ENDPOINT) to an `s3://` source.
    #[arg(long)]
    from_virtual_hosted: bool,
    /// The access key for an `s3://` source (TOML: access_key_id, secret_access_key; mode
    /// 0600) instead of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long, value_name = "FILE")]
    from_credentials: Option<PathBuf>,
    /// The ssh program for an `ssh://` source.
    #[arg(long, value_name = "PROGRAM", default_value = "ssh")]
    ssh: String,
    /// An ssh configuration file for an `ssh://` source (`ssh -F`).
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// An ssh option for an `ssh://` source (`ssh -o`; repeatable).
    #[arg(long = "ssh-option", value_name = "OPTION")]
    ssh_options: Vec<String>,
    /// The source's key file, when it is encrypted (default: its default key file).
    #[arg(long, value_name = "FILE")]
    from_key_file: Option<PathBuf>,
    /// A file whose first line is the source's passphrase.
    #[arg(long, value_name = "FILE")]
    from_passphrase_file: Option<PathBuf>,
    /// Only this host (repeatable).
    #[arg(long = "host", value_name = "HOST", value_parser = crate::values::host)]
    hosts: Vec<HostName>,
    /// Only this account's hosts, from the inventory (repeatable).
    #[arg(long = "account", value_name = "ACCOUNT")]
    accounts: Vec<String>,
    #[command(flatten)]
    inventory: InventoryArg,
    /// Only snapshots in this tier on the source (repeatable: `--tier daily --tier
    /// weekly`); copies keep only these labels.
    #[arg(long = "tier", value_name = "TIER")]
    tiers: Vec<String>,
    /// Let this repository's schedule place the copies: each enters TIER as a backup does
    /// (`none`: no label, for calendar policies run here). Default: the copies keep the
    /// source's tiers, trimmed to this repository's schedule.
    #[arg(long, value_name = "TIER")]
    enter: Option<String>,
    /// Commit what was written every SIZE, so an interrupted sync does not read it again.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = crate::values::size)]
    checkpoint: u64,
    /// Show what would be copied, relabelled and expired; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl SyncArgs {
    fn source_keys(&self) -> Result<KeyAccess> {
        let passphrase = match &self.from_passphrase_file {
            Some(p) => Some(xstore::keys::read_passphrase_file(p)?),
            None => None,
        };
        Ok(KeyAccess {
            key_file: self.from_key_file.clone(),
            passphrase,
            recovery: None,
        })
    }

    /// The ssh command line (without the remote command) of an `ssh://` source.
    fn ssh_command(&self, target: &str) -> Result<Vec<String>> {
        let (login, port) = match target.rsplit_once(':') {
            Some((l, p)) if !l.ends_with(']') || l.starts_with('[') => (
                l,
                Some(p.parse::<u16>().with_context(|| {
                    format!("--from ssh://{target}: the port {p} is not a number")
                })?),
            ),
            _ => (target, None),
        };
        anyhow::ensure!(
            !login.is_empty() && !login.starts_with('-') && !login.contains('/'),
            "--from ssh://{target}: give ssh://[USER@]HOST[:PORT]"
        );
        let mut cmd = vec![self.ssh.clone()];
        if let Some(config) = &self.ssh_config {
            cmd.extend(["-F".to_string(), config.display().to_string()]);
        }
        if let Some(port) = port {
            cmd.extend(["-p".to_string(), port.to_string()]);
        }
        // Never prompt (cron has no terminal); a silent primary is dropped within a minute.
        for o in [
            "BatchMode=yes",
            "ServerAliveInterval=15",
            "ServerAliveCountMax=4",
        ] {
            cmd.extend(["-o".to_string(), o.to_string()]);
        }
        for o in &self.ssh_options {
            cmd.extend(["-o".to_string(), o.clone()]);
        }
        if let Some(o) = xstore_fleet::pull::cipher_preference(&self.ssh_options) {
            cmd.extend(["-o".to_string(), o.to_string()]);
        }
        cmd.extend(["-T".to_string(), "--".to_string(), login.to_string()]);
        Ok(cmd)
    }

    /// The source, opened: a local repository read-only, a session with a primary, or a
    /// primary's bucket (its map beside `replica`).
    fn open_source(&self, replica: &std::path::Path) -> Result<Box<dyn SyncSource>> {
        let keys = self.source_keys()?;
        let from_bucket = self.from.starts_with("s3://");
        anyhow::ensure!(
            from_bucket || self.from_endpoint.is_none() && self.from_credentials.is_none(),
            "--from-endpoint and --from-credentials are for an s3:// source"
        );
        if from_bucket {
            let endpoint = self
                .from_endpoint
                .as_deref()
                .context("--from s3://…: give the store's --from-endpoint URL")?;
            let mut location = S3Location::parse(&self.from, endpoint)?;
            location.region = self.from_region.clone();
            location.path_style = !self.from_virtual_hosted;
            location.credentials_file = self
                .from_credentials
                .as_ref()
                .map(|c| std::path::absolute(c).unwrap_or_else(|_| c.clone()));
            let map = BucketSource::map_dir(replica, &location);
            let source = BucketSource::open(&map, &location, &keys)
                .with_context(|| format!("source {}", self.from))?;
            let r = source.refreshed();
            tracing::info!(
                packs = r.packs,
                read = r.packs_read,
                gone = r.packs_gone,
                snapshots = r.snapshots,
                "bucket map brought up to date"
            );
            for why in &r.skipped {
                tracing::warn!("source {}: {why}", self.from);
            }
            return Ok(Box::new(source));
        }
        if let Some(target) = self.from.strip_prefix("ssh://") {
            let cmd = self.ssh_command(target.trim_end_matches('/'))?;
            let source = xstore_fleet::replica::SshSource::connect(&cmd, &keys)
                .with_context(|| format!("source {}", self.from))?;
            return Ok(Box::new(source));
        }
        let repo = Repository::open_read_only_with(std::path::Path::new(&self.from), &keys)
            .with_context(|| format!("source {}", self.from))?;
        Ok(Box::new(repo))
    }

    fn hosts(&self) -> Result<Option<BTreeSet<HostName>>> {
        let mut hosts: BTreeSet<HostName> = self.hosts.iter().cloned().collect();
        if !self.accounts.is_empty() {
            let inventory = self
                .inventory
                .load()?
                .context("--account needs the inventory (--inventory FILE)")?;
            for name in &self.accounts {
                let account = inventory
                    .account(name)
                    .with_context(|| format!("account {name} is not in the inventory"))?;
                hosts.extend(account.hosts.iter().cloned());
            }
        }
        let named = !self.hosts.is_empty() || !self.accounts.is_empty();
        Ok(named.then_some(hosts))
    }

    fn options(&self) -> Result<SyncOptions> {
        let labels = match self.enter.as_deref() {
            None => SyncLabels::Source,
            Some("none") => SyncLabels::Own(TierChoice::None),
            Some(t) => SyncLabels::Own(TierChoice::Named(t.to_string())),
        };
        Ok(SyncOptions {
            hosts: self.hosts()?,
            tiers: (!self.tiers.is_empty()).then(|| self.tiers.iter().cloned().collect()),
            labels,
            checkpoint_bytes: self.checkpoint,
            progress: None,
        })
    }
}

pub(crate) fn sync(cli: &Cli, args: &SyncArgs) -> Result<u8> {
    let opts = args.options()?;
    let repo = crate::open_rw_or_ro(cli, args.dry_run)?;
    let source = args.open_source(repo.path())?;
    let source = source.as_ref();
    let plan = repo.plan_sync(source, &opts)?;
    if args.dry_run {
        return print_plan(cli, &plan);
    }
    let started_ns = xstore::now_ns();
    let result = repo.sync(source, &plan, &opts);
    let summary = result.as_ref().ok().map(|r| {
        format!(
            "{} snapshots copied from {}, {} read, {} stored",
            r.snapshots,
            plan.source,
            human_bytes(r.bytes_read),
            human_bytes(r.stored_bytes)
        )
    });
    let outcome = result
        .as_ref()
        .map(|_| EXIT_OK)
        .map_err(|e| anyhow::anyhow!("{e}"));
    crate::retention::record_run(&repo, "sync", started_ns, &outcome, summary);
    print_report(cli, &plan, &result?)
}

fn print_plan(cli: &Cli, plan: &SyncPlan) -> Result<u8> {
    if cli.json {
        crate::print_json(plan)?;
        return Ok(EXIT_OK);
    }
    for c in &plan.copy {
        outln!(
            "copy      {}  {}  {}  {}",
            c.snapshot.id.short(),
            c.snapshot.host,
            xstore::format_utc(c.snapshot.start_ns.div_euclid(1_000_000_000)),
            c.tiers.join(",")
        );
    }
    for d in &plan.retention.decisions {
        let what = match d.action {
            xstore::retention::Action::Expire => "expire",
            xstore::retention::Action::Keep => "relabel",
        };
        outln!(
            "{what:<8}  {}  {}  {}",
            &d.id[..8.min(d.id.len())],
            d.host,
            d.reasons.join("; ")
        );
    }
    print_counts(plan);
    Ok(EXIT_OK)
}

fn print_counts(plan: &SyncPlan) {
    outln!(
        "{} to copy from {}; {} here already, {} expired here before (not copied again), {} without a place in this schedule, {} kept here that the source no longer has",
        plan.copy.len(),
        plan.source,
        plan.present,
        plan.expired_here,
        plan.no_place,
        plan.kept_after_source
    );
}

fn print_report(cli: &Cli, plan: &SyncPlan, report: &SyncReport) -> Result<u8> {
    for why in &report.set_aside {
        eprintln!("xstore: warning: {why}");
    }
    if cli.json {
        crate::print_json(report)?;
        return Ok(EXIT_OK);
    }
    if cli.quiet {
        return Ok(EXIT_OK);
    }
    outln!(
        "copied {} snapshots from {}: read {} in {} blobs, stored {} in {} blobs{}",
        report.snapshots,
        plan.source,
        human_bytes(report.bytes_read),
        report.blobs_read,
        human_bytes(report.stored_bytes),
        report.blobs_written,
        if report.blobs_resumed > 0 {
            format!(
                " ({} blobs taken from an interrupted sync)",
                report.blobs_resumed
            )
        } else {
            String::new()
        }
    );
    if report.relabelled + report.expired > 0 {
        outln!(
            "this repository's schedule: {} relabelled, {} expired",
            report.relabelled,
            report.expired
        );
    }
    print_counts(plan);
    Ok(EXIT_OK)
}

/// `xstore serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Serve read-only, the only mode: a replica's `xstore sync` reads snapshot records and
    /// sealed blobs; nothing can be written, deleted or run.
    #[arg(long, required = true)]
    read_only: bool,
    /// The repository (default: --repo, XSTORE_REPO).
    #[arg(value_name = "REPO")]
    repo: Option<PathBuf>,
}

/// Serves one sync session on stdin/stdout, as sshd runs it for the replica's key
/// (`command="xstore serve --read-only REPO",restrict`). Any other command the key's user
/// asks for (`SSH_ORIGINAL_COMMAND`) is refused.
pub(crate) fn serve(cli: &Cli, args: &ServeArgs) -> Result<u8> {
    anyhow::ensure!(args.read_only, "xstore serve only serves --read-only");
    if let Some(asked) = std::env::var_os("SSH_ORIGINAL_COMMAND") {
        let asked = asked.to_string_lossy();
        anyhow::ensure!(
            asked.trim() == xstore_fleet::replica::SERVE_COMMAND,
            "refused: this key may only read this repository for a sync ({}); it asked to run: {}",
            xstore_fleet::replica::SERVE_COMMAND,
            xstore::text::printable(asked.trim())
        );
    }
    let path = match &args.repo {
        Some(p) => p.clone(),
        None => crate::repo_path(cli)?,
    };
    let repo = Repository::open_read_only_with(&path, &crate::key_access(cli)?)?;
    let summary =
        repo.serve_read_only(&mut std::io::stdin().lock(), &mut std::io::stdout().lock())?;
    tracing::info!(
        snapshots = summary.snapshots,
        blobs = summary.blobs,
        bytes = summary.bytes,
        missing = summary.missing,
        "sync session served"
    );
    Ok(EXIT_OK)
}
