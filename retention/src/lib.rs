//! Retention plans for xstore: which snapshots to keep, and why.
//!
//! Two ways to decide, one output:
//! - **Tiers** (rsnapshot's model): an ordered list of named tiers with counts
//!   (`hourly=6,daily=7,weekly=4,monthly=6`). A new snapshot *enters* the lowest tier at `.0`;
//!   *rotating* a higher tier promotes the oldest snapshot of the tier below, when that tier is
//!   full, to `.0` of this tier. Every tier is trimmed to its count. Promotion moves a label,
//!   never data.
//! - **Calendar policies** (restic/borg users' model): keep-last, keep-within and keep
//!   hourly/daily/weekly/monthly/yearly, counting only periods that have a snapshot.
//!
//! Both produce a [`Plan`]: for every snapshot keep or expire, its new tier labels, and the
//! reasons. The store applies a plan in one atomic index batch.
//!
//! Safety rules, inside every plan:
//! - a partial snapshot never pushes a complete one out of a tier (a tier keeps its newest
//!   `count` snapshots *and* its newest `count` complete ones);
//! - the newest complete snapshot of every host is never expired;
//! - pinned snapshots are kept.
//!
//! This crate does no I/O and reads no clock: `now` is a parameter. Times are nanoseconds since
//! the Unix epoch; calendar periods are UTC.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch.
pub type Nanos = i64;

/// Why a request cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// A schedule text or value is malformed.
    #[error("invalid tier schedule {text:?}: {reason}")]
    Schedule {
        /// The offending text.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A tier name is not part of a host's schedule.
    #[error("tier {tier:?} is not in the schedule of host {host} ({schedule})")]
    UnknownTier {
        /// The tier asked for.
        tier: String,
        /// The host.
        host: String,
        /// That host's schedule.
        schedule: String,
    },
    /// The snapshot to enter a tier is not among the candidates.
    #[error("snapshot {0} is not among the snapshots to plan")]
    UnknownSnapshot(String),
    /// A calendar policy that keeps nothing would expire everything.
    #[error("empty keep policy: give at least one --keep-… option")]
    EmptyPolicy,
}

/// A duration or a time that does not parse ([`parse_duration`], [`parse_period`],
/// [`parse_instant`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {reason}")]
pub struct ParseError {
    /// `duration` or `time`.
    pub what: &'static str,
    /// The text given.
    pub text: String,
    /// What is wrong with it, and what would be right.
    pub reason: String,
}

impl ParseError {
    fn duration(text: &str, reason: impl Into<String>) -> ParseError {
        ParseError {
            what: "duration",
            text: text.to_string(),
            reason: reason.into(),
        }
    }

    fn time(text: &str, reason: impl Into<String>) -> ParseError {
        ParseError {
            what: "time",
            text: text.to_string(),
            reason: reason.into(),
        }
    }
}

/// One tier: a name and how many snapshots it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// `hourly`, `daily`, … (`[a-z0-9_]`, starting with a letter).
    pub name: String,
    /// Snapshots kept in this tier (≥ 1).
    pub count: usize,
}

/// Tiers, lowest (most frequent) first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Tier>", into = "Vec<Tier>")]
pub struct Schedule {
    tiers: Vec<Tier>,
}

impl Default for Schedule {
    /// The seed service's schedule: hourly 6 (every 4 h), daily 7, weekly 4, monthly 6.
    fn default() -> Self {
        let t = |name: &str, count| Tier {
            name: name.into(),
            count,
        };
        Schedule {
            tiers: vec![
                t("hourly", 6),
                t("daily", 7),
                t("weekly", 4),
                t("monthly", 6),
            ],
        }
    }
}

impl TryFrom<Vec<Tier>> for Schedule {
    type Error = RetentionError;
    fn try_from(tiers: Vec<Tier>) -> Result<Self, Self::Error> {
        Schedule::new(tiers)
    }
}
impl From<Schedule> for Vec<Tier> {
    fn from(s: Schedule) -> Self {
        s.tiers
    }
}

/// A text that is not a tier name ([`validate_tier_name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tier name {0:?}: use 1-32 characters of a-z 0-9 _, starting with a letter")]
pub struct InvalidTierName(pub String);

/// Checks a tier name: 1–32 characters of `a-z 0-9 _`, starting with a letter.
pub fn validate_tier_name(name: &str) -> Result<(), InvalidTierName> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidTierName(name.to_string()))
    }
}

impl Schedule {
    /// Validates: at least one tier, unique valid names, counts ≥ 1.
    pub fn new(tiers: Vec<Tier>) -> Result<Self, RetentionError> {
        let text = tiers
            .iter()
            .map(|t| format!("{}={}", t.name, t.count))
            .collect::<Vec<_>>()
            .join(",");
        let fail = |reason: String| RetentionError::Schedule {
            text: text.clone(),
            reason,
        };
        if tiers.is_empty() {
            return Err(fail("no tiers".into()));
        }
        let mut seen = BTreeSet::new();
        for t in &tiers {
            validate_tier_name(&t.name).map_err(|e| fail(e.to_string()))?;
            if t.count == 0 {
                return Err(fail(format!("tier {} keeps 0 snapshots", t.name)));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(fail(format!("tier {} appears twice", t.name)));
            }
        }
        Ok(Schedule { tiers })
    }

    /// Parses `hourly=6,daily=7,weekly=4,monthly=6` (lowest tier first).
    pub fn parse(text: &str) -> Result<Self, RetentionError> {
        let mut tiers = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, count) = part
                .split_once('=')
                .ok_or_else(|| RetentionError::Schedule {
                    text: text.into(),
                    reason: format!("{part:?} is not NAME=COUNT"),
                })?;
            let count = count
                .trim()
                .parse::<usize>()
                .map_err(|e| RetentionError::Schedule {
                    text: text.into(),
                    reason: format!("count of {}: {e}", name.trim()),
                })?;
            tiers.push(Tier {
                name: name.trim().into(),
                count,
            });
        }
        Schedule::new(tiers)
    }

    /// The tiers, lowest first.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The lowest tier, which new snapshots enter.
    pub fn lowest(&self) -> &Tier {
        &self.tiers[0]
    }

    /// Index of a tier by name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.tiers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={}", t.name, t.count)?;
        }
        Ok(())
    }
}

/// The repository's schedule and per-host overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedules {
    /// For every host without an override.
    #[serde(default)]
    pub default: Schedule,
    /// Per-host overrides.
    #[serde(default)]
    pub hosts: BTreeMap<String, Schedule>,
}

impl Schedules {
    /// The schedule that applies to `host`.
    pub fn for_host(&self, host: &str) -> &Schedule {
        self.hosts.get(host).unwrap_or(&self.default)
    }
}

/// What the planner knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Opaque, unique id (the store uses hex).
    pub id: String,
    /// The host it belongs to; hosts are planned independently.
    pub host: String,
    /// When it was taken.
    pub time: Nanos,
    /// Every file was read.
    pub complete: bool,
    /// Kept regardless of policy.
    pub pinned: bool,
    /// Tier labels it holds now.
    pub tiers: BTreeSet<String>,
}

/// Keep or expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The snapshot stays.
    Keep,
    /// The snapshot goes; its data is released.
    Expire,
}

/// The decision about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: String,
    /// Its host.
    pub host: String,
    /// When it was taken.
    pub time: Nanos,
    /// Keep or expire.
    pub action: Action,
    /// Tier labels after the plan (empty when expired).
    pub tiers: BTreeSet<String>,
    /// Tier positions after the plan (`daily.0`).
    pub positions: Vec<String>,
    /// Why (all reasons that apply).
    pub reasons: Vec<String>,
    /// The plan changes this snapshot: expires it or changes its labels. Applying a plan
    /// touches only these (its cost follows the change, not the number of snapshots).
    pub changed: bool,
}

/// A retention plan: one decision per candidate, by host, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The decisions.
    pub decisions: Vec<Decision>,
}

impl Plan {
    /// Decisions that expire a snapshot.
    pub fn expired(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Expire)
    }
    /// Decisions that keep a snapshot.
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Keep)
    }
}

/// Newest first; ties broken by id so the order never depends on input order.
fn newest_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id))
}

fn by_host(candidates: &[Candidate]) -> BTreeMap<&str, Vec<&Candidate>> {
    let mut m: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        m.entry(c.host.as_str()).or_default().push(c);
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| newest_first(a, b));
    }
    m
}

/// Tier positions (`daily.0` is the newest member of `daily`) of every candidate, per host.
pub fn positions(candidates: &[Candidate]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for list in by_host(candidates).values() {
        let mut next: BTreeMap<&str, usize> = BTreeMap::new();
        for c in list {
            for t in &c.tiers {
                let n = next.entry(t.as_str()).or_insert(0);
                out.entry(c.id.clone())
                    .or_default()
                    .push(format!("{t}.{n}"));
                *n += 1;
            }
        }
    }
    out
}

/// One tier operation, as `xstore backup` and `xstore rotate` request it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "step")]
pub enum Step {
    /// A snapshot enters a tier at `.0` (a new backup enters the lowest tier); the tier is
    /// then trimmed to its count.
    Enter {
        /// The snapshot.
        id: String,
        /// The tier.
        tier: String,
    },
    /// rsnapshot's `rotate TIER`: for a higher tier, the oldest snapshot of the tier below is
    /// promoted to `.0` when the tier below is full; then the tier is trimmed. For the lowest
    /// tier only the trim applies.
    Rotate {
        /// The tier.
        tier: String,
    },
}

/// Plans one tier step for every host among `candidates` (filter them to scope it).
pub fn plan_tiers(
    candidates: &[Candidate],
    schedules: &Schedules,
    step: &Step,
) -> Result<Plan, RetentionError> {
    let mut tiers: HashMap<&str, BTreeSet<String>> = candidates
        .iter()
        .map(|c| (c.id.as_str(), c.tiers.clone()))
        .collect();
    let mut notes: HashMap<&str, Vec<String>> = HashMap::new();
    let tier_name = match step {
        Step::Enter { tier, .. } | Step::Rotate { tier } => tier.as_str(),
    };
    if let Step::Enter { id, .. } = step {
        if !tiers.contains_key(id.as_str()) {
            return Err(RetentionError::UnknownSnapshot(id.clone()));
        }
    }
    for (host, list) in by_host(candidates) {
        let schedule = schedules.for_host(host);
        let level = schedule
            .position(tier_name)
            .ok_or_else(|| RetentionError::UnknownTier {
                tier: tier_name.into(),
                host: host.into(),
                schedule: schedule.to_string(),
            })?;
        let tier = &schedule.tiers()[level];
        let members = |tiers: &HashMap<&str, BTreeSet<String>>, name: &str| -> Vec<&Candidate> {
            list.iter()
                .copied()
                .filter(|c| tiers.get(c.id.as_str()).is_some_and(|t| t.contains(name)))
                .collect()
        };
        match step {
            Step::Enter { id, .. } => {
                if let Some(c) = list.iter().find(|c| &c.id == id) {
                    if let Some(t) = tiers.get_mut(c.id.as_str()) {
                        t.insert(tier.name.clone());
                    }
                    notes
                        .entry(c.id.as_str())
                        .or_default()
                        .push(format!("entered {}", tier.name));
                }
            }
            Step::Rotate { .. } if level > 0 => {
                let below = &schedule.tiers()[level - 1];
                let lower = members(&tiers, &below.name);
                if lower.len() >= below.count {
                    if let Some(oldest) = lower.last() {
                        if let Some(t) = tiers.get_mut(oldest.id.as_str()) {
                            t.remove(&below.name);
                            t.insert(tier.name.clone());
                        }
                        notes.entry(oldest.id.as_str()).or_default().push(format!(
                            "promoted from {}.{} to {}.0",
                            below.name,
                            lower.len() - 1,
                            tier.name
                        ));
                    }
                }
            }
            Step::Rotate { .. } => {}
        }
        trim(&list, tier, &mut tiers, &mut notes);
    }
    let keep_reasons = HashMap::new();
    Ok(finish(candidates, &tiers, &keep_reasons, &notes))
}

/// Trims one tier of one host's candidates (`list`, newest first) to its count: keeps the
/// newest `count` members and the newest `count` complete members, so partial snapshots
/// never push a complete one out.
fn trim<'c>(
    list: &[&'c Candidate],
    tier: &Tier,
    tiers: &mut HashMap<&'c str, BTreeSet<String>>,
    notes: &mut HashMap<&'c str, Vec<String>>,
) {
    let current: Vec<&Candidate> = list
        .iter()
        .copied()
        .filter(|c| {
            tiers
                .get(c.id.as_str())
                .is_some_and(|t| t.contains(&tier.name))
        })
        .collect();
    let mut complete_seen = 0usize;
    for (i, c) in current.iter().enumerate() {
        let keep_any = i < tier.count;
        let newer_complete = complete_seen;
        let keep_complete = c.complete && newer_complete < tier.count;
        if c.complete {
            complete_seen += 1;
        }
        if !(keep_any || keep_complete) {
            if let Some(t) = tiers.get_mut(c.id.as_str()) {
                t.remove(&tier.name);
            }
            notes.entry(c.id.as_str()).or_default().push(format!(
                "trimmed from {} ({} keeps {}; {} newer complete)",
                tier.name, tier.name, tier.count, newer_complete
            ));
        }
    }
}

/// Trims every tier of each host's schedule to its count, promoting nothing: what a replica
/// does after taking its source's tier labels (`xstore sync`), so that its own schedule
/// decides how many of each tier it keeps. Labels the host's schedule does not name are
/// left as they are.
pub fn plan_trim(candidates: &[Candidate], schedules: &Schedules) -> Plan {
    let mut tiers: HashMap<&str, BTreeSet<String>> = candidates
        .iter()
        .map(|c| (c.id.as_str(), c.tiers.clone()))
        .collect();
    let mut notes: HashMap<&str, Vec<String>> = HashMap::new();
    for (host, list) in by_host(candidates) {
        for tier in schedules.for_host(host).tiers() {
            trim(&list, tier, &mut tiers, &mut notes);
        }
    }
    finish(candidates, &tiers, &HashMap::new(), &notes)
}

/// A calendar policy, as restic and borg users know it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepPolicy {
    /// The newest n snapshots (partial ones do not use up the count).
    pub last: Option<usize>,
    /// Every snapshot taken within this many nanoseconds before `now`.
    pub within: Option<Nanos>,
    /// The newest snapshot of each of the last n hours that have one.
    pub hourly: Option<usize>,
    /// … days.
    pub daily: Option<usize>,
    /// … ISO weeks.
    pub weekly: Option<usize>,
    /// … months.
    pub monthly: Option<usize>,
    /// … years.
    pub yearly: Option<usize>,
}

impl KeepPolicy {
    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn label(self) -> &'static str {
        match self {
            Period::Hour => "keep-hourly",
            Period::Day => "keep-daily",
            Period::Week => "keep-weekly",
            Period::Month => "keep-monthly",
            Period::Year => "keep-yearly",
        }
    }
    /// The period containing `t`, as sortable text (UTC).
    fn key(self, t: Nanos) -> String {
        let secs = t.div_euclid(1_000_000_000);
        let Some(d) = DateTime::<Utc>::from_timestamp(secs, 0) else {
            return format!("t{secs}");
        };
        match self {
            Period::Hour => format!(
                "{:04}-{:02}-{:02}T{:02}",
                d.year(),
                d.month(),
                d.day(),
                d.hour()
            ),
            Period::Day => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
            Period::Week => {
                let w = d.iso_week();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            Period::Month => format!("{:04}-{:02}", d.year(), d.month()),
            Period::Year => format!("{:04}", d.year()),
        }
    }
}

/// Plans a calendar policy for every host among `candidates`. Tier labels do not keep a
/// snapshot here (the policy decides); kept snapshots keep their labels.
pub fn plan_keep(
    candidates: &[Candidate],
    policy: &KeepPolicy,
    now: Nanos,
) -> Result<Plan, RetentionError> {
    if policy.is_empty() {
        return Err(RetentionError::EmptyPolicy);
    }
    let mut reasons: HashMap<&str, Vec<String>> = HashMap::new();
    for list in by_host(candidates).values() {
        if let Some(n) = policy.last {
            let mut complete = 0usize;
            for (i, c) in list.iter().enumerate() {
                if complete >= n {
                    break;
                }
                reasons
                    .entry(c.id.as_str())
                    .or_default()
                    .push(format!("keep-last {}", i + 1));
                if c.complete {
                    complete += 1;
                }
            }
        }
        if let Some(within) = policy.within {
            for c in list.iter().filter(|c| c.time >= now.saturating_sub(within)) {
                reasons
                    .entry(c.id.as_str())
                    .or_default()
                    .push("keep-within".to_string());
            }
        }
        let periods = [
            (Period::Hour, policy.hourly),
            (Period::Day, policy.daily),
            (Period::Week, policy.weekly),
            (Period::Month, policy.monthly),
            (Period::Year, policy.yearly),
        ];
        for (period, count) in periods {
            let Some(count) = count else { continue };
            // Newest period first; in each, the newest complete snapshot, else the newest.
            let mut buckets: BTreeMap<String, Vec<&Candidate>> = BTreeMap::new();
            for c in list {
                buckets.entry(period.key(c.time)).or_default().push(c);
            }
            for (n, (key, members)) in buckets.iter().rev().take(count).enumerate() {
                let chosen = members
                    .iter()
                    .find(|c| c.complete)
                    .or_else(|| members.first());
                if let Some(c) = chosen {
                    reasons.entry(c.id.as_str()).or_default().push(format!(
                        "{} {} ({key})",
                        period.label(),
                        n + 1
                    ));
                }
            }
        }
    }
    let mut tiers: HashMap<&str, BTreeSet<String>> = HashMap::new();
    let mut notes: HashMap<&str, Vec<String>> = HashMap::new();
    for c in candidates {
        tiers.insert(c.id.as_str(), c.tiers.clone());
        if !reasons.contains_key(c.id.as_str()) {
            if !c.tiers.is_empty() {
                notes.entry(c.id.as_str()).or_default().push(format!(
                    "not kept by the policy (labels {} dropped)",
                    c.tiers.iter().cloned().collect::<Vec<_>>().join(",")
                ));
            }
            // Labels do not keep a snapshot under a calendar policy.
            tiers.insert(c.id.as_str(), BTreeSet::new());
        }
    }
    Ok(finish(candidates, &tiers, &reasons, &notes))
}

/// Turns new labels and keep reasons into decisions, applying the safety rules.
fn finish(
    candidates: &[Candidate],
    tiers: &HashMap<&str, BTreeSet<String>>,
    keep_reasons: &HashMap<&str, Vec<String>>,
    notes: &HashMap<&str, Vec<String>>,
) -> Plan {
    let after: Vec<Candidate> = candidates
        .iter()
        .map(|c| Candidate {
            tiers: tiers.get(c.id.as_str()).cloned().unwrap_or_default(),
            ..c.clone()
        })
        .collect();
    let pos = positions(&after);
    let before: HashMap<&str, &BTreeSet<String>> = candidates
        .iter()
        .map(|c| (c.id.as_str(), &c.tiers))
        .collect();
    let mut decisions = Vec::with_capacity(after.len());
    for list in by_host(&after).values() {
        let newest_complete = list.iter().find(|c| c.complete).map(|c| c.id.as_str());
        for c in list {
            let mut reasons: Vec<String> = notes.get(c.id.as_str()).cloned().unwrap_or_default();
            let positions = pos.get(&c.id).cloned().unwrap_or_default();
            let mut keep = false;
            if !positions.is_empty() {
                keep = true;
                reasons.extend(positions.iter().cloned());
            }
            if let Some(r) = keep_reasons.get(c.id.as_str()) {
                keep = true;
                reasons.extend(r.iter().cloned());
            }
            if c.pinned {
                keep = true;
                reasons.push("pinned".into());
            }
            if newest_complete == Some(c.id.as_str()) {
                if !keep {
                    reasons.push(format!("newest complete snapshot of host {}", c.host));
                }
                keep = true;
            }
            if !keep && reasons.is_empty() {
                reasons.push("no tier label, not pinned".into());
            }
            let changed = !keep || before.get(c.id.as_str()).is_none_or(|t| **t != c.tiers);
            decisions.push(Decision {
                changed,
                id: c.id.clone(),
                host: c.host.clone(),
                time: c.time,
                action: if keep { Action::Keep } else { Action::Expire },
                tiers: if keep {
                    c.tiers.clone()
                } else {
                    BTreeSet::new()
                },
                positions: if keep { positions } else { Vec::new() },
                reasons,
            });
        }
    }
    Plan { decisions }
}

/// Parses a duration as [`parse_duration`] does, as a `std` duration (for time limits and
/// grace periods). Durations are never negative: a sign is an unknown unit.
pub fn parse_period(text: &str) -> Result<std::time::Duration, ParseError> {
    let ns = parse_duration(text)?;
    u64::try_from(ns)
        .map(std::time::Duration::from_nanos)
        .map_err(|_| ParseError::duration(text, "negative"))
}

/// Parses an instant given as RFC 3339 (`2026-12-01T04:00:00Z`; also with a space and
/// without the `Z`, read as UTC) into nanoseconds since the epoch, for `--now`.
pub fn parse_instant(text: &str) -> Result<Nanos, ParseError> {
    let t = humantime::parse_rfc3339_weak(text.trim())
        .map_err(|e| ParseError::time(text, format!("{e} (use e.g. 2026-12-01T04:00:00Z)")))?;
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| ParseError::time(text, "before 1970"))?;
    i64::try_from(since.as_nanos()).map_err(|_| ParseError::time(text, "too far ahead"))
}

/// Parses a duration such as `4h`, `90m`, `7d`, `2w`, `1d12h` (also `10s`) into nanoseconds.
pub fn parse_duration(text: &str) -> Result<Nanos, ParseError> {
    let bad = |why: &str| ParseError::duration(text, format!("{why} (use e.g. 4h, 30m, 7d, 2w)"));
    let t = text.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: i64 = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad(&format!("unknown unit {ch:?}"))),
        };
        let n: i64 = digits
            .parse()
            .map_err(|_| bad("a number must precede each unit"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| s.checked_mul(1_000_000_000))
            .and_then(|ns| total.checked_add(ns))
            .ok_or_else(|| bad("too long"))?;
    }
    if !digits.is_empty() {
        return Err(bad("missing unit after the last number"));
    }
    Ok(total)
}
