//! Prometheus text exposition (format 0.0.4) of a repository's state, for node_exporter's
//! textfile collector: per host freshness, last pull and tier counts; per account usage and
//! allocation; repository totals. Read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use xstore_format::host::HostName;

use crate::inventory::Inventory;
use crate::pull::{PullOutcome, PullReport};
use xstore::{Repository, Result, Snapshot};

/// One metric family: its name (written once), help text and samples; every family is a
/// gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// The metric name (`xstore_…`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The samples, in the order they are written.
    pub samples: Vec<Sample>,
}

/// One sample of a family: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names and values (values escaped when rendered).
    pub labels: Vec<(&'static str, String)>,
    /// The value (`+Inf` for a host never backed up).
    pub value: f64,
}

/// The metrics of a repository at one time, gathered before they are rendered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// The families in the order they are written.
    pub families: Vec<MetricFamily>,
}

impl Metrics {
    fn family(&mut self, name: &'static str, help: &'static str) -> &mut MetricFamily {
        self.families.push(MetricFamily {
            name,
            help,
            samples: Vec::new(),
        });
        let last = self.families.len() - 1;
        &mut self.families[last]
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} gauge", f.name);
            for s in &f.samples {
                out.push_str(f.name);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(s.value));
            }
        }
        out
    }
}

impl MetricFamily {
    fn sample(&mut self, labels: &[(&'static str, &str)], value: f64) {
        self.samples.push(Sample {
            labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            value,
        });
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

fn seconds(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// The metrics text at time `now_ns` ([`gather`], rendered).
pub fn metrics(repo: &Repository, inventory: Option<&Inventory>, now_ns: i64) -> Result<String> {
    Ok(gather(repo, inventory, now_ns)?.render())
}

/// The metrics at time `now_ns`. Hosts are the inventory's and every host with snapshots; a
/// host never backed up completely has an age of `+Inf` (so an `age > 4h` alert fires for it
/// too). Account families need the inventory.
pub fn gather(repo: &Repository, inventory: Option<&Inventory>, now_ns: i64) -> Result<Metrics> {
    let snapshots = repo.snapshots()?;
    let mut account_of: BTreeMap<HostName, String> = BTreeMap::new();
    for h in inventory.map(|i| i.hosts.as_slice()).unwrap_or_default() {
        account_of.insert(h.name.clone(), h.account.clone());
    }
    // Metrics list hosts by name.
    let hosts: BTreeSet<HostName> =
        crate::monitor::listed_and_backed_up(inventory, snapshots.iter().map(|s| s.host.clone()))
            .into_iter()
            .collect();
    let labels = Labels { account_of };
    let mut m = Metrics::default();
    host_families(&mut m, repo, &hosts, &labels, now_ns)?;
    snapshot_families(&mut m, &snapshots, &labels);
    if let Some(inv) = inventory {
        account_families(&mut m, repo, inv, &labels)?;
    }
    total_families(&mut m, repo, now_ns)?;
    sync_families(&mut m, repo, now_ns)?;
    Ok(m)
}

/// A replica's last successful sync (none before the first, and on a primary).
fn sync_families(m: &mut Metrics, repo: &Repository, now_ns: i64) -> Result<()> {
    let Some(status) = repo.sync_status()? else {
        return Ok(());
    };
    let totals: [(&'static str, &'static str, f64); 4] = [
        (
            "xstore_sync_last_success_timestamp_seconds",
            "When the last successful sync from the source ended.",
            seconds(status.finished_ns),
        ),
        (
            "xstore_sync_snapshots_copied",
            "Snapshots the last successful sync copied.",
            status.snapshots_copied as f64,
        ),
        (
            "xstore_sync_read_bytes",
            "Raw bytes the last successful sync read from the source.",
            status.bytes_read as f64,
        ),
        (
            "xstore_sync_stored_bytes",
            "Bytes the last successful sync stored here.",
            status.stored_bytes as f64,
        ),
    ];
    for (name, help, value) in totals {
        m.family(name, help)
            .sample(&[("source", &status.source)], value);
    }
    for h in &status.hosts {
        let lag = status.lag_ns(h, now_ns).map_or(f64::INFINITY, seconds);
        m.family(
            "xstore_sync_lag_seconds",
            "How far behind the source a host may be: time since the last successful sync, plus what it did not copy (+Inf: nothing of the host here).",
        )
        .sample(&[("host", h.host.as_str()), ("source", &status.source)], lag);
    }
    Ok(())
}

/// The labels of a host: its name and account (empty when the inventory does not list it).
struct Labels {
    account_of: BTreeMap<HostName, String>,
}

impl Labels {
    fn account(&self, host: &str) -> &str {
        self.account_of.get(host).map_or("", String::as_str)
    }
}

/// Freshness and the newest pull of each host.
fn host_families(
    m: &mut Metrics,
    repo: &Repository,
    hosts: &BTreeSet<HostName>,
    labels: &Labels,
    now_ns: i64,
) -> Result<()> {
    let mut newest_ts = Vec::new();
    let mut ages = Vec::new();
    let mut pulls = Vec::new();
    for h in hosts {
        let status = crate::pull::host_status(repo, h)?;
        match &status.newest_complete {
            Some(s) => {
                newest_ts.push((h, seconds(s.end_ns)));
                ages.push((h, seconds(now_ns.saturating_sub(s.end_ns)).max(0.0)));
            }
            None => ages.push((h, f64::INFINITY)),
        }
        if let Some(p) = status.last_pull {
            pulls.push((h, p));
        }
    }
    let f = m.family(
        "xstore_host_newest_backup_timestamp_seconds",
        "End of the host's newest complete snapshot.",
    );
    for (h, v) in &newest_ts {
        f.sample(&[("host", h), ("account", labels.account(h))], *v);
    }
    let f = m.family(
        "xstore_host_newest_backup_age_seconds",
        "Age of the host's newest complete snapshot (+Inf: never backed up).",
    );
    for (h, v) in &ages {
        f.sample(&[("host", h), ("account", labels.account(h))], *v);
    }
    type PullField = fn(&PullReport) -> f64;
    let pull_fields: [(&'static str, &'static str, PullField); 7] = [
        (
            "xstore_host_mass_change_alarm",
            "1 while a pull's mass-change alarm stands (most files rewritten or removed; the parent snapshot pinned), else 0.",
            |p| f64::from(u8::from(p.mass_change.is_some())),
        ),
        (
            "xstore_host_last_pull_timestamp_seconds",
            "End of the host's newest pull, successful or not.",
            |p| seconds(p.finished_ns),
        ),
        (
            "xstore_host_last_pull_duration_seconds",
            "Wall time of the host's newest pull.",
            |p| p.seconds,
        ),
        (
            "xstore_host_last_pull_success",
            "1 if the host's newest pull committed a snapshot (complete or partial), else 0.",
            |p| f64::from(u8::from(p.outcome != PullOutcome::Failed)),
        ),
        (
            "xstore_host_last_pull_scanned_bytes",
            "Logical bytes of the snapshot the newest pull committed.",
            |p| p.bytes_scanned as f64,
        ),
        (
            "xstore_host_last_pull_wire_bytes",
            "Bytes the newest pull exchanged with the agent.",
            |p| p.wire_bytes as f64,
        ),
        (
            "xstore_host_last_pull_new_stored_bytes",
            "Stored bytes the newest pull added.",
            |p| p.new_stored_bytes as f64,
        ),
    ];
    for (name, help, value) in pull_fields {
        let f = m.family(name, help);
        for (h, p) in &pulls {
            f.sample(&[("host", h), ("account", labels.account(h))], value(p));
        }
    }
    let f = m.family(
        "xstore_host_last_pull_outcome",
        "1 for the outcome (ok, partial, failed) of the host's newest pull.",
    );
    for (h, p) in &pulls {
        for o in [PullOutcome::Ok, PullOutcome::Partial, PullOutcome::Failed] {
            f.sample(
                &[
                    ("host", h),
                    ("account", labels.account(h)),
                    ("outcome", o.name()),
                ],
                f64::from(u8::from(p.outcome == o)),
            );
        }
    }
    Ok(())
}

/// Snapshots of each host, in all and per tier.
fn snapshot_families(m: &mut Metrics, snapshots: &[Snapshot], labels: &Labels) {
    let positions = xstore::tier_positions(snapshots);
    let mut per_tier: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut per_host: BTreeMap<&str, u64> = BTreeMap::new();
    for s in snapshots {
        *per_host.entry(s.host.as_str()).or_default() += 1;
        for p in positions.get(&s.id).map(Vec::as_slice).unwrap_or_default() {
            let tier = p.rsplit_once('.').map_or(p.as_str(), |(t, _)| t);
            *per_tier
                .entry((s.host.as_str(), tier.to_string()))
                .or_default() += 1;
        }
    }
    let f = m.family("xstore_host_snapshots", "Snapshots of the host.");
    for (h, n) in &per_host {
        f.sample(&[("host", h), ("account", labels.account(h))], *n as f64);
    }
    let f = m.family(
        "xstore_host_tier_snapshots",
        "Snapshots of the host holding a position in the tier.",
    );
    for ((h, tier), n) in &per_tier {
        f.sample(
            &[("host", h), ("account", labels.account(h)), ("tier", tier)],
            *n as f64,
        );
    }
}

/// Usage of each account of the inventory against its allocation, and each host's logical
/// ratio.
fn account_families(
    m: &mut Metrics,
    repo: &Repository,
    inv: &Inventory,
    labels: &Labels,
) -> Result<()> {
    let groups: Vec<Vec<HostName>> = inv.accounts.iter().map(|a| a.hosts.clone()).collect();
    let fleet = repo.fleet_usage(&groups)?;
    let usage = crate::monitor::account_states(&inv.accounts, &fleet, 1.0, f64::INFINITY);
    type UsageField = fn(&crate::monitor::AccountUsage) -> f64;
    let fields: [(&'static str, &'static str, UsageField); 6] = [
        (
            "xstore_account_allocation_bytes",
            "The account's soft allocation.",
            |a| a.allocation as f64,
        ),
        (
            "xstore_account_referenced_bytes",
            "Stored bytes the account's snapshots reference (compared with the allocation).",
            |a| a.usage.referenced_bytes as f64,
        ),
        (
            "xstore_account_exclusive_bytes",
            "Stored bytes only the account references (freed if it were deleted).",
            |a| a.usage.exclusive_bytes as f64,
        ),
        (
            "xstore_account_shared_bytes",
            "Referenced bytes other accounts reference too.",
            |a| a.usage.shared_bytes as f64,
        ),
        (
            "xstore_account_newest_logical_bytes",
            "File bytes of the newest snapshot of each of the account's hosts.",
            |a| a.usage.newest_logical_bytes as f64,
        ),
        (
            "xstore_account_inflated_hosts",
            "Hosts of the account whose newest snapshot names more file bytes than its logical_ratio times what they reference.",
            |a| a.inflated_hosts.len() as f64,
        ),
    ];
    for (name, help, value) in fields {
        let f = m.family(name, help);
        for a in &usage {
            f.sample(&[("account", &a.account)], value(a));
        }
    }
    let f = m.family(
        "xstore_host_logical_ratio",
        "File bytes of the host's newest snapshot over the raw bytes of the distinct blobs its snapshots reference.",
    );
    for (h, u) in &fleet.hosts {
        f.sample(
            &[("host", h), ("account", labels.account(h))],
            u.logical_ratio(),
        );
    }
    Ok(())
}

/// Verification state and repository totals.
fn total_families(m: &mut Metrics, repo: &Repository, now_ns: i64) -> Result<()> {
    let st = repo.stats()?;
    let verify = repo.verify_status()?;
    let last_run = verify.last_run.clone().unwrap_or_default();
    let totals: [(&'static str, &'static str, f64); 11] = [
        (
            "xstore_verify_oldest_seconds",
            "Age of the oldest pack verification (a pack never verified counts from when it was written).",
            seconds(now_ns.saturating_sub(verify.oldest_verified_ns)).max(0.0),
        ),
        (
            "xstore_verify_damaged_blobs",
            "Live blobs verify found damaged that no backup has stored again yet.",
            verify.damaged_blobs as f64,
        ),
        (
            "xstore_verify_last_run_bytes",
            "Pack bytes the last verify run read and hashed.",
            last_run.bytes as f64,
        ),
        (
            "xstore_verify_last_run_timestamp_seconds",
            "When the last verify run started (0: never).",
            seconds(last_run.started_ns),
        ),
        (
            "xstore_repository_snapshots",
            "Snapshots in the repository.",
            st.snapshots as f64,
        ),
        (
            "xstore_repository_logical_bytes",
            "File bytes of all snapshots together.",
            st.logical_bytes as f64,
        ),
        (
            "xstore_repository_stored_bytes",
            "Bytes of pack files.",
            st.stored_bytes as f64,
        ),
        ("xstore_repository_packs", "Pack files.", st.packs as f64),
        (
            "xstore_repository_dead_bytes",
            "Pack bytes of dead blobs (what gc can reclaim).",
            st.dead_bytes as f64,
        ),
        (
            "xstore_repository_dedup_ratio",
            "Logical bytes / stored bytes.",
            st.dedup_ratio,
        ),
        (
            "xstore_metrics_timestamp_seconds",
            "When these metrics were computed.",
            seconds(now_ns),
        ),
    ];
    for (name, help, value) in totals {
        m.family(name, help).sample(&[], value);
    }
    Ok(())
}

/// Writes `text` to `path` atomically (temporary file in the same directory, fsync,
/// rename): the textfile collector never reads half a file. Its temporary name starts
/// with a dot and does not end in `.prom`, so the collector ignores it.
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    xstore::fsutil::write_atomic(path, text.as_bytes())
}
