//! Prometheus text exposition (format 0.0.4) of a repository's state, for node_exporter's
//! textfile collector: per host freshness, last pull and tier counts; per account usage and
//! allocation; repository totals. Read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::inventory::Inventory;
use xstore::Repository;
use xstore::Result;

/// A metric family being written: `# HELP`, `# TYPE`, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }
}

fn family<'a>(out: &'a mut String, name: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    Family { out }
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

/// The metrics text at time `now_ns`. Hosts are the inventory's and every host with
/// snapshots; a host never backed up completely has an age of `+Inf` (so an
/// `age > 4h` alert fires for it too).
pub fn metrics(repo: &Repository, inventory: Option<&Inventory>, now_ns: i64) -> Result<String> {
    let snapshots = repo.snapshots()?;
    let positions = xstore::tier_positions(&snapshots);
    let mut account_of: BTreeMap<String, String> = BTreeMap::new();
    for h in inventory.map(|i| i.hosts.as_slice()).unwrap_or_default() {
        account_of.insert(h.name.clone(), h.account.clone());
    }
    let hosts: BTreeSet<String> = account_of
        .keys()
        .cloned()
        .chain(snapshots.iter().map(|s| s.host.clone()))
        .collect();
    let account = |h: &str| account_of.get(h).cloned().unwrap_or_default();

    let mut out = String::new();
    let mut newest_ts = Vec::new();
    let mut ages = Vec::new();
    let mut pulls = Vec::new();
    for h in &hosts {
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

    let mut f = family(
        &mut out,
        "xstore_host_newest_backup_timestamp_seconds",
        "End of the host's newest complete snapshot.",
    );
    for (h, v) in &newest_ts {
        f.sample(
            "xstore_host_newest_backup_timestamp_seconds",
            &[("host", h), ("account", &account(h))],
            *v,
        );
    }
    let mut f = family(
        &mut out,
        "xstore_host_newest_backup_age_seconds",
        "Age of the host's newest complete snapshot (+Inf: never backed up).",
    );
    for (h, v) in &ages {
        f.sample(
            "xstore_host_newest_backup_age_seconds",
            &[("host", h), ("account", &account(h))],
            *v,
        );
    }
    type PullField = fn(&crate::pull::PullReport) -> f64;
    let pull_fields: [(&str, &str, PullField); 7] = [
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
            |p| f64::from(u8::from(p.outcome != crate::pull::PullOutcome::Failed)),
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
        let mut f = family(&mut out, name, help);
        for (h, p) in &pulls {
            f.sample(name, &[("host", h), ("account", &account(h))], value(p));
        }
    }
    let mut f = family(
        &mut out,
        "xstore_host_last_pull_outcome",
        "1 for the outcome (ok, partial, failed) of the host's newest pull.",
    );
    for (h, p) in &pulls {
        for o in [
            crate::pull::PullOutcome::Ok,
            crate::pull::PullOutcome::Partial,
            crate::pull::PullOutcome::Failed,
        ] {
            f.sample(
                "xstore_host_last_pull_outcome",
                &[("host", h), ("account", &account(h)), ("outcome", o.name())],
                f64::from(u8::from(p.outcome == o)),
            );
        }
    }

    let mut per_tier: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut per_host: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &snapshots {
        *per_host.entry(s.host.as_str()).or_default() += 1;
        for p in positions.get(&s.id).map(Vec::as_slice).unwrap_or_default() {
            let tier = p.rsplit_once('.').map_or(p.as_str(), |(t, _)| t);
            *per_tier
                .entry((s.host.as_str(), tier.to_string()))
                .or_default() += 1;
        }
    }
    let mut f = family(&mut out, "xstore_host_snapshots", "Snapshots of the host.");
    for (h, n) in &per_host {
        f.sample(
            "xstore_host_snapshots",
            &[("host", h), ("account", &account(h))],
            *n as f64,
        );
    }
    let mut f = family(
        &mut out,
        "xstore_host_tier_snapshots",
        "Snapshots of the host holding a position in the tier.",
    );
    for ((h, tier), n) in &per_tier {
        f.sample(
            "xstore_host_tier_snapshots",
            &[("host", h), ("account", &account(h)), ("tier", tier)],
            *n as f64,
        );
    }

    if let Some(inv) = inventory {
        let groups: Vec<Vec<String>> = inv.accounts.iter().map(|a| a.hosts.clone()).collect();
        let fleet = repo.fleet_usage(&groups)?;
        let usage = crate::monitor::account_states(&inv.accounts, &fleet, 1.0, f64::INFINITY);
        type UsageField = fn(&crate::monitor::AccountUsage) -> f64;
        let fields: [(&str, &str, UsageField); 6] = [
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
            let mut f = family(&mut out, name, help);
            for a in &usage {
                f.sample(name, &[("account", &a.account)], value(a));
            }
        }
        let name = "xstore_host_logical_ratio";
        let mut f = family(
            &mut out,
            name,
            "File bytes of the host's newest snapshot over the raw bytes of the distinct blobs its snapshots reference.",
        );
        for (h, u) in &fleet.hosts {
            f.sample(
                name,
                &[("host", h), ("account", &account(h))],
                u.logical_ratio(),
            );
        }
    }

    let st = repo.stats()?;
    let verify = repo.verify_status()?;
    let last_run = verify.last_run.clone().unwrap_or_default();
    let totals: [(&str, &str, f64); 11] = [
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
        family(&mut out, name, help).sample(name, &[], value);
    }
    Ok(out)
}

/// Writes `text` to `path` atomically (temporary file in the same directory, fsync,
/// rename): the textfile collector never reads half a file. Its temporary name starts
/// with a dot and does not end in `.prom`, so the collector ignores it.
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    xstore::fsutil::write_atomic(path, text.as_bytes())
}
