//! Monitoring checks in the Nagios plugin convention (also Icinga, Sensu, NRPE): one status
//! line `XSTORE <CHECK> <STATE> - <summary> | <perfdata>`, then one line per problem, and
//! the exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
//!
//! - Freshness ([`freshness`]): a host is fresh while its newest *complete*
//!   snapshot ended less than the warning age ago.
//! - Usage ([`usage_check`]): an account's referenced stored bytes against its soft
//!   allocation.
//!
//! Both read only: they work on a read-only handle while a backup, rotate or gc runs.

use std::fmt::Write as _;
use std::time::Duration;
use xstore_format::host::HostName;

use serde::Serialize;

use crate::inventory::{Account, HostSpec, Inventory};
use crate::pull::{PullOutcome, PullReport};
use xstore::Repository;
use xstore::{Error, Result};
use xstore::{FleetUsage, Usage};

/// How far ahead of the clock a snapshot may be dated before check-freshness calls it a
/// problem (clocks of the server's own runs differ by less).
const FUTURE_TOLERANCE_NS: i64 = 5 * 60 * 1_000_000_000;

/// Default age of the newest complete backup that makes a host WARNING.
pub const DEFAULT_WARNING_AGE: Duration = Duration::from_secs(4 * 3600);
/// Default age of the newest complete backup that makes a host CRITICAL.
pub const DEFAULT_CRITICAL_AGE: Duration = Duration::from_secs(8 * 3600);

/// A check's state, in the plugin convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    /// Exit 0.
    Ok,
    /// Exit 1.
    Warning,
    /// Exit 2.
    Critical,
    /// Exit 3: the check itself could not decide (unreadable repository, unknown host).
    Unknown,
}

impl CheckState {
    /// The plugin exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            CheckState::Ok => 0,
            CheckState::Warning => 1,
            CheckState::Critical => 2,
            CheckState::Unknown => 3,
        }
    }
    /// `OK`, `WARNING`, `CRITICAL` or `UNKNOWN`.
    pub fn label(self) -> &'static str {
        match self {
            CheckState::Ok => "OK",
            CheckState::Warning => "WARNING",
            CheckState::Critical => "CRITICAL",
            CheckState::Unknown => "UNKNOWN",
        }
    }
    /// Badness for combining: CRITICAL > UNKNOWN > WARNING > OK.
    fn rank(self) -> u8 {
        match self {
            CheckState::Ok => 0,
            CheckState::Warning => 1,
            CheckState::Unknown => 2,
            CheckState::Critical => 3,
        }
    }
    /// The worse of two states.
    pub fn worst(self, other: CheckState) -> CheckState {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// One performance-data value: `'label'=value[unit];warn;crit;min;max`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerfDatum {
    /// Label (quoted on output; a `'` in it is replaced).
    pub label: String,
    /// The value; `None` prints `U` (no value, e.g. a host never backed up).
    pub value: Option<u64>,
    /// `s` or `B`.
    pub unit: &'static str,
    /// Warning threshold.
    pub warning: Option<u64>,
    /// Critical threshold.
    pub critical: Option<u64>,
}

impl std::fmt::Display for PerfDatum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        write!(f, "'{}'=", self.label.replace(['\'', '='], "_"))?;
        match self.value {
            Some(v) => write!(f, "{v}{}", self.unit)?,
            None => f.write_str("U")?,
        }
        write!(f, ";{};{};0", opt(self.warning), opt(self.critical))
    }
}

/// A plugin's output: state, summary, detail lines and performance data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginReport {
    /// `FRESHNESS`, `USAGE`.
    pub check: &'static str,
    /// Overall state.
    pub state: CheckState,
    /// The status line's text.
    pub summary: String,
    /// One line per problem.
    pub details: Vec<String>,
    /// Performance data.
    pub perfdata: Vec<PerfDatum>,
}

impl PluginReport {
    /// The report of a check that could not run.
    pub fn unknown(check: &'static str, why: &str) -> PluginReport {
        PluginReport {
            check,
            state: CheckState::Unknown,
            summary: why.replace('\n', " "),
            details: Vec::new(),
            perfdata: Vec::new(),
        }
    }

    /// The plugin text: status line with performance data, then the detail lines.
    pub fn render(&self) -> String {
        let mut out = format!(
            "XSTORE {} {} - {}",
            self.check,
            self.state.label(),
            self.summary
        );
        if !self.perfdata.is_empty() {
            out.push_str(" |");
            for p in &self.perfdata {
                let _ = write!(out, " {p}");
            }
        }
        out.push('\n');
        for d in &self.details {
            out.push_str(d);
            out.push('\n');
        }
        out
    }
}

/// A host whose freshness to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshnessTarget {
    /// Host name.
    pub host: HostName,
    /// Its account, when the inventory lists it.
    pub account: Option<String>,
    /// Its own warning age (else the check's).
    pub warning_age: Option<Duration>,
    /// Its own critical age (else the check's).
    pub critical_age: Option<Duration>,
}

impl From<&HostSpec> for FreshnessTarget {
    fn from(h: &HostSpec) -> Self {
        FreshnessTarget {
            host: h.name.clone(),
            account: Some(h.account.clone()),
            warning_age: h.warning_age,
            critical_age: h.critical_age,
        }
    }
}

/// Thresholds and clock of a freshness check.
#[derive(Debug, Clone, Copy)]
pub struct FreshnessOptions {
    /// Age of the newest complete backup that makes a host WARNING.
    pub warning: Duration,
    /// Age that makes it CRITICAL.
    pub critical: Duration,
    /// The time to check at, ns since the epoch.
    pub now_ns: i64,
}

impl Default for FreshnessOptions {
    fn default() -> Self {
        FreshnessOptions {
            warning: DEFAULT_WARNING_AGE,
            critical: DEFAULT_CRITICAL_AGE,
            now_ns: xstore::now_ns(),
        }
    }
}

/// One host's freshness.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFreshness {
    /// Host name.
    pub host: HostName,
    /// Its account, when the inventory lists it.
    pub account: Option<String>,
    /// Its state.
    pub state: CheckState,
    /// Seconds since its newest complete snapshot ended (`None`: never backed up).
    pub age_seconds: Option<u64>,
    /// Warning threshold in seconds.
    pub warning_seconds: u64,
    /// Critical threshold in seconds.
    pub critical_seconds: u64,
    /// The newest complete snapshot.
    pub newest_complete: Option<String>,
    /// When it ended, ns since the epoch.
    pub newest_complete_end_ns: Option<i64>,
    /// The newest snapshot, when it is partial (newer than the newest complete one).
    pub newest_partial: Option<String>,
    /// The host's newest pull, when one is recorded.
    pub last_pull: Option<PullReport>,
    /// What is wrong, in words (empty when OK).
    pub problem: String,
}

/// The freshness of a set of hosts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FreshnessReport {
    /// The time checked at, ns since the epoch.
    pub now_ns: i64,
    /// Worst state of all hosts (OK for none).
    pub state: CheckState,
    /// Every host checked, in the order given.
    pub hosts: Vec<HostFreshness>,
}

/// `45s`, `12m`, `1h12m`, `3d4h`: the compact ages the plugin lines use
/// ([`xstore::text::short_duration`], the one form every command prints durations in).
pub fn short_age(seconds: u64) -> String {
    xstore::text::short_duration(seconds)
}

fn seconds_between(earlier_ns: i64, later_ns: i64) -> u64 {
    u64::try_from(later_ns.saturating_sub(earlier_ns).max(0) / 1_000_000_000).unwrap_or(0)
}

/// The hosts a freshness check covers: `hosts` when any are named (with their inventory
/// thresholds when the inventory lists them), else the hosts of `account`, else every host
/// of the inventory, else (without one) every host with snapshots.
pub fn freshness_targets(
    repo: &Repository,
    inventory: Option<&Inventory>,
    hosts: &[HostName],
    account: Option<&str>,
) -> Result<Vec<FreshnessTarget>> {
    let bare = |host: &HostName| FreshnessTarget {
        host: host.clone(),
        account: None,
        warning_age: None,
        critical_age: None,
    };
    if !hosts.is_empty() {
        return Ok(hosts
            .iter()
            .map(|h| match inventory.and_then(|i| i.host(h)) {
                Some(spec) => FreshnessTarget::from(spec),
                None => bare(h),
            })
            .collect());
    }
    match (inventory, selected_accounts(inventory, account)?) {
        (Some(inv), accounts) => Ok(inv
            .hosts
            .iter()
            .filter(|h| accounts.iter().any(|a| a.name == h.account))
            .map(FreshnessTarget::from)
            .collect()),
        (None, _) => Ok(repo.hosts()?.iter().map(bare).collect()),
    }
}

/// Checks how old each target host's newest complete snapshot is.
///
/// - never backed up (no complete snapshot): CRITICAL;
/// - age ≥ critical: CRITICAL; age ≥ warning: WARNING; else OK;
/// - a failed pull newer than the newest complete snapshot is shown and makes the host
///   at least WARNING (its data is still fresh, but the next run will not be);
/// - a host that the inventory does not list and that has no snapshots: UNKNOWN.
pub fn freshness(
    repo: &Repository,
    targets: &[FreshnessTarget],
    opts: &FreshnessOptions,
) -> Result<FreshnessReport> {
    let mut hosts = Vec::with_capacity(targets.len());
    let mut overall = CheckState::Ok;
    for t in targets {
        let warning = t.warning_age.unwrap_or(opts.warning).as_secs();
        let critical = t.critical_age.unwrap_or(opts.critical).as_secs();
        let status = crate::pull::host_status(repo, &t.host)?;
        let newest_partial = status.newest_partial().map(|s| s.id.to_string());
        let (record, last_pull, complete) =
            (status.record, status.last_pull, status.newest_complete);
        let age = complete
            .as_ref()
            .map(|s| seconds_between(s.end_ns, opts.now_ns));
        let mut problems = Vec::new();
        let mut state = match age {
            None if record.is_none() && t.account.is_none() && last_pull.is_none() => {
                problems.push("unknown host: not in the inventory and never backed up".into());
                CheckState::Unknown
            }
            None => {
                problems.push("never backed up completely".to_string());
                CheckState::Critical
            }
            Some(a) if a >= critical => CheckState::Critical,
            Some(a) if a >= warning => CheckState::Warning,
            Some(_) => CheckState::Ok,
        };
        if let (Some(a), Some(s)) = (age, &complete) {
            if state != CheckState::Ok {
                problems.push(format!(
                    "newest complete backup {} ago ({}, snapshot {})",
                    short_age(a),
                    xstore::format_utc(s.end_ns.div_euclid(1_000_000_000)),
                    s.id.short()
                ));
            }
        }
        // A snapshot dated ahead of the clock (a clock that was ahead once) hides every
        // later one from `latest` and blocks pulls until it is forgotten: say so.
        let newest_ns = status
            .newest
            .as_ref()
            .map_or(i64::MIN, |s| s.start_ns.max(s.end_ns));
        if newest_ns > opts.now_ns.saturating_add(FUTURE_TOLERANCE_NS) {
            state = state.worst(CheckState::Critical);
            problems.push(format!(
                "newest snapshot is dated {} in the future ({}): was the clock ahead? pulls are refused until it is forgotten",
                short_age(seconds_between(opts.now_ns, newest_ns)),
                xstore::format_utc(newest_ns.div_euclid(1_000_000_000)),
            ));
        }
        if let Some(p) = &newest_partial {
            problems.push(format!(
                "newest snapshot {} is partial",
                p.get(..8).unwrap_or(p)
            ));
        }
        let end_ns = complete.as_ref().map_or(i64::MIN, |s| s.end_ns);
        if let Some(pull) = last_pull
            .as_ref()
            .filter(|p| p.outcome == PullOutcome::Failed && p.finished_ns > end_ns)
        {
            state = state.worst(CheckState::Warning);
            problems.push(format!(
                "last pull failed {} ago: {}",
                short_age(seconds_between(pull.finished_ns, opts.now_ns)),
                xstore::text::printable(pull.error.as_deref().unwrap_or("no reason recorded"))
            ));
        }
        if let Some(alarm) = last_pull.as_ref().and_then(|p| p.mass_change.as_ref()) {
            state = state.worst(CheckState::Warning);
            problems.push(xstore::text::printable(&alarm.message).into_owned());
        }
        overall = overall.worst(state);
        hosts.push(HostFreshness {
            host: t.host.clone(),
            account: t.account.clone(),
            state,
            age_seconds: age,
            warning_seconds: warning,
            critical_seconds: critical,
            newest_complete: complete.as_ref().map(|s| s.id.to_string()),
            newest_complete_end_ns: complete.as_ref().map(|s| s.end_ns),
            newest_partial,
            last_pull,
            problem: if state == CheckState::Ok {
                String::new()
            } else {
                problems.join("; ")
            },
        });
    }
    Ok(FreshnessReport {
        now_ns: opts.now_ns,
        state: overall,
        hosts,
    })
}

impl FreshnessReport {
    /// The plugin output: `XSTORE FRESHNESS OK - 12 hosts, oldest newest-backup 1h12m
    /// (web3) | 'web3_age'=4332s;14400;28800;0 …`, then one line per host not OK.
    pub fn plugin(&self) -> PluginReport {
        let count = |s: CheckState| self.hosts.iter().filter(|h| h.state == s).count();
        let mut summary = format!(
            "{} host{}",
            self.hosts.len(),
            if self.hosts.len() == 1 { "" } else { "s" }
        );
        let problems: Vec<String> = [
            CheckState::Critical,
            CheckState::Unknown,
            CheckState::Warning,
        ]
        .iter()
        .filter(|s| count(**s) > 0)
        .map(|s| format!("{} {}", count(*s), s.label().to_lowercase()))
        .collect();
        if !problems.is_empty() {
            summary.push_str(&format!(" ({})", problems.join(", ")));
        }
        let never = self
            .hosts
            .iter()
            .filter(|h| h.age_seconds.is_none() && h.state == CheckState::Critical)
            .count();
        if never > 0 {
            summary.push_str(&format!(", {never} never backed up"));
        }
        if let Some(oldest) = self
            .hosts
            .iter()
            .filter(|h| h.age_seconds.is_some())
            .max_by_key(|h| h.age_seconds)
        {
            summary.push_str(&format!(
                ", oldest newest-backup {} ({})",
                short_age(oldest.age_seconds.unwrap_or(0)),
                oldest.host
            ));
        }
        PluginReport {
            check: "FRESHNESS",
            state: self.state,
            summary,
            details: self
                .hosts
                .iter()
                .filter(|h| h.state != CheckState::Ok)
                .map(|h| format!("{}: {}: {}", h.state.label(), h.host, h.problem))
                .collect(),
            perfdata: self
                .hosts
                .iter()
                .map(|h| PerfDatum {
                    label: format!("{}_age", h.host),
                    value: h.age_seconds,
                    unit: "s",
                    warning: Some(h.warning_seconds),
                    critical: Some(h.critical_seconds),
                })
                .collect(),
        }
    }
}

/// One account's usage against its allocation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountUsage {
    /// The account.
    pub account: String,
    /// Its package, if the allocation came from one.
    pub package: Option<String>,
    /// Soft allocation in bytes.
    pub allocation: u64,
    /// Usage of all its hosts' snapshots together.
    pub usage: Usage,
    /// `usage.referenced_bytes` as a percentage of the allocation.
    pub percent: f64,
    /// Whether it exceeds the allocation.
    pub over_allocation: bool,
    /// Its hosts whose newest snapshot names more file bytes than
    /// [`Account::logical_ratio`] times the distinct bytes they reference, with their ratio.
    pub inflated_hosts: Vec<(HostName, u64)>,
    /// Its state under the check's factors.
    pub state: CheckState,
}

/// The accounts a command covers: `account` alone when named, else every account of the
/// inventory (none without one). Naming an account needs an inventory that lists it.
pub fn selected_accounts<'a>(
    inventory: Option<&'a Inventory>,
    account: Option<&str>,
) -> Result<Vec<&'a Account>> {
    match (inventory, account) {
        (Some(inv), Some(a)) => match inv.account(a) {
            Some(found) => Ok(vec![found]),
            None => Err(Error::InvalidArgument(format!(
                "account {a} is not in the inventory"
            ))),
        },
        (None, Some(_)) => Err(Error::InvalidArgument(
            "--account needs an inventory (--inventory FILE)".into(),
        )),
        (Some(inv), None) => Ok(inv.accounts.iter().collect()),
        (None, None) => Ok(Vec::new()),
    }
}

/// The hosts a fleet-wide report covers: the inventory's, in its order, then every other
/// host that has snapshots (`backed_up`), in the order given, each once.
pub fn listed_and_backed_up(
    inventory: Option<&Inventory>,
    backed_up: impl IntoIterator<Item = HostName>,
) -> Vec<HostName> {
    let mut hosts: Vec<HostName> = inventory
        .map(|i| i.hosts.iter().map(|h| h.name.clone()).collect())
        .unwrap_or_default();
    let mut seen: std::collections::HashSet<HostName> = hosts.iter().cloned().collect();
    hosts.extend(backed_up.into_iter().filter(|h| seen.insert(h.clone())));
    hosts
}

/// One host's row of [`fleet_usage_report`].
#[derive(Debug, Clone, Serialize)]
pub struct HostUsage {
    /// The host.
    pub host: HostName,
    /// Its account (empty when no inventory lists it).
    pub account: String,
    /// Its account's [`Account::logical_ratio`] (the default without one).
    #[serde(skip)]
    pub logical_ratio_limit: u64,
    /// Usage of all its snapshots together.
    pub usage: Usage,
}

impl HostUsage {
    /// `host`'s row with `usage`, its account and ratio limit from `inventory`.
    pub fn of(inventory: Option<&Inventory>, host: HostName, usage: Usage) -> HostUsage {
        let spec = inventory.and_then(|i| i.host(&host));
        HostUsage {
            account: spec.map(|s| s.account.clone()).unwrap_or_default(),
            logical_ratio_limit: spec
                .and_then(|s| inventory?.account(&s.account))
                .map_or(crate::inventory::DEFAULT_LOGICAL_RATIO, |a| a.logical_ratio),
            usage,
            host,
        }
    }
}

/// Usage of a fleet's accounts and hosts, computed in one pass over the repository.
#[derive(Debug, Clone, Serialize)]
pub struct FleetUsageReport {
    /// The accounts covered ([`selected_accounts`]), each against its allocation.
    pub accounts: Vec<AccountUsage>,
    /// With `account`, that account's hosts; else the inventory's hosts, then every other
    /// host with snapshots.
    pub hosts: Vec<HostUsage>,
}

/// What `du` shows for a fleet: [`selected_accounts`] with their usage, and their hosts
/// (or, without an account, the inventory's hosts and every other host with snapshots).
pub fn fleet_usage_report(
    repo: &Repository,
    inventory: Option<&Inventory>,
    account: Option<&str>,
) -> Result<FleetUsageReport> {
    let accounts: Vec<Account> = selected_accounts(inventory, account)?
        .into_iter()
        .cloned()
        .collect();
    let groups: Vec<Vec<HostName>> = accounts.iter().map(|a| a.hosts.clone()).collect();
    let fleet = repo.fleet_usage(&groups)?;
    let hosts: Vec<HostName> = match account {
        Some(_) => accounts.iter().flat_map(|a| a.hosts.clone()).collect(),
        None => listed_and_backed_up(inventory, fleet.hosts.keys().cloned()),
    };
    let hosts = hosts
        .into_iter()
        .map(|host| {
            let usage = fleet.hosts.get(&host).cloned().unwrap_or_default();
            HostUsage::of(inventory, host, usage)
        })
        .collect();
    Ok(FleetUsageReport {
        accounts: account_states(&accounts, &fleet, 1.0, f64::INFINITY),
        hosts,
    })
}

/// Usage of each account (all snapshots of its hosts together), compared with its soft
/// allocation: WARNING above `warning_factor` × allocation, CRITICAL above
/// `critical_factor` × allocation. The compared number is the account's referenced
/// stored bytes: what its backups take, with blocks shared with other accounts counted
/// for each of them.
pub fn account_usage(
    repo: &Repository,
    accounts: &[Account],
    warning_factor: f64,
    critical_factor: f64,
) -> Result<Vec<AccountUsage>> {
    let groups: Vec<Vec<HostName>> = accounts.iter().map(|a| a.hosts.clone()).collect();
    let fleet = repo.fleet_usage(&groups)?;
    Ok(account_states(
        accounts,
        &fleet,
        warning_factor,
        critical_factor,
    ))
}

/// [`account_usage`] from a [`FleetUsage`] whose groups are `accounts`' hosts,
/// in order (so that `du` computes the fleet's usage once for its host and account rows).
pub fn account_states(
    accounts: &[Account],
    fleet: &FleetUsage,
    warning_factor: f64,
    critical_factor: f64,
) -> Vec<AccountUsage> {
    accounts
        .iter()
        .zip(
            fleet
                .groups
                .iter()
                .cloned()
                .chain(std::iter::repeat(Usage::default())),
        )
        .map(|(a, usage)| {
            let used = usage.referenced_bytes as f64;
            let allocation = a.allocation as f64;
            let inflated_hosts: Vec<(HostName, u64)> = a
                .hosts
                .iter()
                .filter_map(|h| {
                    let ratio = fleet.hosts.get(h)?.logical_ratio();
                    (ratio > a.logical_ratio as f64).then(|| (h.clone(), ratio as u64))
                })
                .collect();
            let state = if used > critical_factor * allocation {
                CheckState::Critical
            } else if used > warning_factor * allocation || !inflated_hosts.is_empty() {
                CheckState::Warning
            } else {
                CheckState::Ok
            };
            AccountUsage {
                account: a.name.clone(),
                package: a.package.clone(),
                allocation: a.allocation,
                percent: if a.allocation == 0 {
                    if used > 0.0 {
                        f64::INFINITY
                    } else {
                        0.0
                    }
                } else {
                    100.0 * used / allocation
                },
                over_allocation: usage.referenced_bytes > a.allocation,
                inflated_hosts,
                usage,
                state,
            }
        })
        .collect()
}

/// The usage check's plugin output: `XSTORE USAGE WARNING - 3 accounts, 1 over allocation,
/// highest acme 115% of 2.0 GiB | 'acme_usage'=2469606195B;2147483648;3221225472;0 …`.
pub fn usage_check(
    accounts: &[AccountUsage],
    warning_factor: f64,
    critical_factor: f64,
) -> PluginReport {
    let state = accounts
        .iter()
        .fold(CheckState::Ok, |s, a| s.worst(a.state));
    let over = accounts.iter().filter(|a| a.over_allocation).count();
    let mut summary = format!(
        "{} account{}, {over} over allocation",
        accounts.len(),
        if accounts.len() == 1 { "" } else { "s" }
    );
    if let Some(top) = accounts
        .iter()
        .max_by(|a, b| a.percent.total_cmp(&b.percent))
    {
        summary.push_str(&format!(
            ", highest {} {:.0}% of {}",
            top.account,
            top.percent,
            human_bytes(top.allocation)
        ));
    }
    let threshold = |a: &AccountUsage, f: f64| Some((a.allocation as f64 * f) as u64);
    PluginReport {
        check: "USAGE",
        state,
        summary,
        details: accounts
            .iter()
            .filter(|a| a.state != CheckState::Ok)
            .map(|a| {
                let mut line = format!(
                    "{}: {}: {} used of {} allocated ({:.0}%), {} exclusive",
                    a.state.label(),
                    a.account,
                    human_bytes(a.usage.referenced_bytes),
                    human_bytes(a.allocation),
                    a.percent,
                    human_bytes(a.usage.exclusive_bytes)
                );
                for (host, ratio) in &a.inflated_hosts {
                    line.push_str(&format!(
                        "; host {host}'s newest snapshot names {ratio}x the bytes it references \
                         (restoring it writes them all)"
                    ));
                }
                line
            })
            .collect(),
        perfdata: accounts
            .iter()
            .map(|a| PerfDatum {
                label: format!("{}_usage", a.account),
                value: Some(a.usage.referenced_bytes),
                unit: "B",
                warning: threshold(a, warning_factor),
                critical: threshold(a, critical_factor),
            })
            .collect(),
    }
}

pub use xstore::text::human_bytes;

/// Thresholds of the verification check.
#[derive(Debug, Clone, Copy)]
pub struct VerifyCheckOptions {
    /// WARNING when the oldest pack verification is older than this.
    pub warning: std::time::Duration,
    /// CRITICAL when it is older than this.
    pub critical: std::time::Duration,
    /// The time to check at, ns since the epoch.
    pub now_ns: i64,
}

/// The `check-verify` plugin over `status`: CRITICAL when a live blob is damaged (restores of
/// what it holds fail until a backup stores it again) or the oldest verification is older than
/// `critical`, WARNING when older than `warning`.
pub fn verify_check(status: &xstore::VerifyStatus, opts: &VerifyCheckOptions) -> PluginReport {
    let age = seconds_between(status.oldest_verified_ns, opts.now_ns);
    let (warning, critical) = (opts.warning.as_secs(), opts.critical.as_secs());
    let mut details = Vec::new();
    let state = if status.damaged_blobs > 0 {
        details.push(format!(
            "{} damaged blobs: `xstore verify` names their paths; the next backup of each \
             affected host stores them again",
            status.damaged_blobs
        ));
        CheckState::Critical
    } else if age > critical {
        CheckState::Critical
    } else if age > warning {
        CheckState::Warning
    } else {
        CheckState::Ok
    };
    PluginReport {
        check: "VERIFY",
        state,
        summary: format!(
            "{} packs, oldest verification {} ago, {} damaged blobs",
            status.packs,
            short_age(age),
            status.damaged_blobs
        ),
        details,
        perfdata: vec![
            PerfDatum {
                label: "oldest_verification".into(),
                value: Some(age),
                unit: "s",
                warning: Some(warning),
                critical: Some(critical),
            },
            PerfDatum {
                label: "damaged_blobs".into(),
                value: Some(status.damaged_blobs),
                unit: "",
                warning: None,
                critical: Some(1),
            },
        ],
    }
}

/// Thresholds of the replica's sync check.
#[derive(Debug, Clone, Copy)]
pub struct SyncCheckOptions {
    /// WARNING when a host is behind its source by more than this.
    pub warning: std::time::Duration,
    /// CRITICAL when more than this.
    pub critical: std::time::Duration,
    /// The time to check at, ns since the epoch.
    pub now_ns: i64,
}

/// The `check-sync` plugin of a replica: how far behind its source each host may be
/// ([`xstore::SyncStatus::lag_ns`]: the time since the last successful sync, plus what it
/// did not copy). CRITICAL without any successful sync, or for a host the replica holds
/// nothing of; then by the thresholds.
pub fn sync_check(status: Option<&xstore::SyncStatus>, opts: &SyncCheckOptions) -> PluginReport {
    let Some(status) = status else {
        return PluginReport {
            check: "SYNC",
            state: CheckState::Critical,
            summary: "no successful sync yet (`xstore sync --from SOURCE`)".into(),
            details: Vec::new(),
            perfdata: Vec::new(),
        };
    };
    let (warning, critical) = (opts.warning.as_secs(), opts.critical.as_secs());
    let mut state = CheckState::Ok;
    let mut details = Vec::new();
    let mut perfdata = Vec::new();
    let mut worst = 0u64;
    for h in &status.hosts {
        let lag = status
            .lag_ns(h, opts.now_ns)
            .map(|ns| (ns / 1_000_000_000) as u64);
        let host_state = match lag {
            None => CheckState::Critical,
            Some(l) if l > critical => CheckState::Critical,
            Some(l) if l > warning => CheckState::Warning,
            Some(_) => CheckState::Ok,
        };
        if host_state != CheckState::Ok {
            details.push(match lag {
                None => format!(
                    "{}: {} has snapshots of it, this replica none",
                    h.host, status.source
                ),
                Some(l) => format!(
                    "{}: up to {} behind {}",
                    h.host,
                    short_age(l),
                    status.source
                ),
            });
        }
        state = state.worst(host_state);
        worst = worst.max(lag.unwrap_or(u64::MAX));
        perfdata.push(PerfDatum {
            label: format!("{}_lag", h.host),
            value: lag,
            unit: "s",
            warning: Some(warning),
            critical: Some(critical),
        });
    }
    let since = seconds_between(status.finished_ns, opts.now_ns);
    if status.hosts.is_empty() {
        state = state.worst(if since > critical {
            CheckState::Critical
        } else if since > warning {
            CheckState::Warning
        } else {
            CheckState::Ok
        });
    }
    PluginReport {
        check: "SYNC",
        state,
        summary: format!(
            "{} hosts from {}, last sync {} ago, {} behind at most",
            status.hosts.len(),
            status.source,
            short_age(since),
            if worst == u64::MAX {
                "a host never copied".to_string()
            } else {
                short_age(worst)
            }
        ),
        details,
        perfdata,
    }
}
