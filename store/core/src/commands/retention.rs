//! Retention in the store: settings (`retention.json`), tier positions, and applying the
//! plans of `xstore-retention` (rotate, forget, pin) in one atomic index batch each.

use std::collections::HashMap;
use xstore_format::host::HostName;

use serde::Serialize;
use xstore_retention::{
    plan_keep, plan_tiers, Action, Candidate, KeepPolicy, Plan, Schedules, Step,
};

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::txn::{Mutation, Released};
use xstore_format::snapshot::{Snapshot, SnapshotId};

/// The tier a new snapshot enters (ARCHITECTURE.md, retention). Entering trims the tier to its count in the
/// same atomic commit; snapshots that leave their last tier expire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TierChoice {
    /// The lowest tier of the host's schedule (`hourly`).
    #[default]
    Lowest,
    /// A named tier of the host's schedule.
    Named(String),
    /// No tier: the snapshot is kept until a plan (rotate, forget) decides about it. For
    /// repositories that use calendar policies (`forget --keep-…`) only.
    None,
}

/// What applying a plan did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    /// Snapshots whose tier labels changed and that stay.
    pub relabelled: u64,
    /// What expiry released (reclaimed by the next gc).
    pub released: Released,
}

/// The tier positions (`daily.0`, …) of each of these snapshots, as `/<tier>.<n>/<host>/`
/// shows them; a snapshot in no tier has none.
pub fn tier_positions(snaps: &[Snapshot]) -> HashMap<SnapshotId, Vec<String>> {
    let pos = xstore_retention::positions(&candidates(snaps));
    snaps
        .iter()
        .filter_map(|s| pos.get(&s.id.to_string()).map(|p| (s.id, p.clone())))
        .collect()
}

/// The planner's view of snapshots.
pub(crate) fn candidates(snapshots: &[Snapshot]) -> Vec<Candidate> {
    snapshots
        .iter()
        .map(|s| Candidate {
            id: s.id.to_string(),
            host: s.host.to_string(),
            time: s.start_ns,
            complete: s.is_complete(),
            pinned: s.pinned,
            tiers: s.tiers.iter().cloned().collect(),
        })
        .collect()
}

/// Puts a plan's changing decisions into a mutation, looking up only the snapshots they name
/// (`known` may hold records already loaded, such as a backup's new snapshot).
pub(crate) fn apply_decisions(
    m: &mut Mutation<'_>,
    repo: &Repository,
    known: &[Snapshot],
    plan: &Plan,
) -> Result<u64> {
    let mut relabelled = 0;
    let mut expire = Vec::new();
    for d in plan.decisions.iter().filter(|d| d.changed) {
        let stale = || Error::StalePlan {
            reason: format!(
                "names snapshot {} which no longer exists (plan again)",
                d.id
            ),
        };
        let id: SnapshotId = d.id.parse().map_err(|_| stale())?;
        let s = match known.iter().find(|s| s.id == id) {
            Some(s) => s.clone(),
            None => repo.index.snapshot(&id)?.ok_or_else(stale)?,
        };
        match d.action {
            Action::Expire if s.pinned => {
                return Err(Error::StalePlan {
                    reason: format!("would expire pinned snapshot {}", d.id),
                })
            }
            Action::Expire => expire.push(s),
            Action::Keep => {
                let tiers: Vec<String> = d.tiers.iter().cloned().collect();
                if tiers != s.tiers {
                    relabelled += 1;
                    m.put_snapshot(Snapshot { tiers, ..s });
                }
            }
        }
    }
    for s in &expire {
        m.expire(s)?;
    }
    Ok(relabelled)
}

/// The tier a new snapshot enters, with the schedules read once at the start of its backup.
pub(crate) struct TierEntry {
    tier: String,
    schedules: Schedules,
}

impl Repository {
    /// Resolves a backup's tier choice against the host's schedule (an unknown tier is an
    /// error before anything is read or written).
    pub(crate) fn tier_entry(&self, host: &str, choice: &TierChoice) -> Result<Option<TierEntry>> {
        let schedules = match choice {
            TierChoice::None => return Ok(None),
            _ => self.retention_settings()?.schedules,
        };
        let schedule = schedules.for_host(host);
        let tier = match choice {
            TierChoice::Named(t) if schedule.position(t).is_none() => {
                return Err(xstore_retention::RetentionError::UnknownTier {
                    tier: t.clone(),
                    host: host.to_string(),
                    schedule: schedule.to_string(),
                }
                .into())
            }
            TierChoice::Named(t) => t.clone(),
            _ => schedule.lowest().name.clone(),
        };
        Ok(Some(TierEntry { tier, schedules }))
    }

    /// The plan of `snapshot` (not yet committed, or a committed one as it is to become)
    /// entering its tier: the entry and the trim.
    pub(crate) fn plan_entry(&self, entry: &TierEntry, snapshot: &Snapshot) -> Result<Plan> {
        let mut of_host: Vec<Snapshot> = self
            .index
            .snapshots_of(&snapshot.host)?
            .into_iter()
            .filter(|s| s.id != snapshot.id)
            .collect();
        of_host.push(snapshot.clone());
        let step = Step::Enter {
            id: snapshot.id.to_string(),
            tier: entry.tier.clone(),
        };
        Ok(plan_tiers(&candidates(&of_host), &entry.schedules, &step)?)
    }

    /// Puts `snapshot`'s entry into its tier (and the trim that follows) into `m`, which
    /// also commits the snapshot. Refuses a plan that would trim the new snapshot itself.
    pub(crate) fn enter_tier(
        &self,
        m: &mut Mutation<'_>,
        entry: &TierEntry,
        snapshot: &Snapshot,
    ) -> Result<()> {
        let plan = self.plan_entry(entry, snapshot)?;
        // Never commit a snapshot and expire it in the same batch.
        let own = snapshot.id.to_string();
        if plan.expired().any(|d| d.id == own) {
            return Err(Error::StalePlan {
                reason: format!(
                    "snapshot {} would be trimmed by its own tier entry (is the clock wrong?); nothing was committed",
                    snapshot.id.short()
                ),
            });
        }
        apply_decisions(m, self, std::slice::from_ref(snapshot), &plan)?;
        Ok(())
    }

    /// Tier positions (`daily.0`) of every snapshot that has any.
    pub fn tier_positions(&self) -> Result<HashMap<SnapshotId, Vec<String>>> {
        Ok(tier_positions(&self.snapshots()?))
    }

    fn scoped(&self, host: Option<&HostName>) -> Result<Vec<Snapshot>> {
        let Some(h) = host else {
            return self.snapshots();
        };
        let of_host = self.host_snapshots(h)?;
        if of_host.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "host {h} has no snapshots in this repository"
            )));
        }
        Ok(of_host)
    }

    /// Plans rsnapshot's `rotate TIER` for one host or all.
    pub fn plan_rotate(&self, tier: &str, host: Option<&HostName>) -> Result<Plan> {
        let snaps = self.scoped(host)?;
        let settings = self.retention_settings()?;
        Ok(plan_tiers(
            &candidates(&snaps),
            &settings.schedules,
            &Step::Rotate { tier: tier.into() },
        )?)
    }

    /// Plans a calendar policy for one host or all, at time `now` (ns since the epoch).
    pub fn plan_forget(
        &self,
        policy: &KeepPolicy,
        host: Option<&HostName>,
        now: i64,
    ) -> Result<Plan> {
        let snaps = self.scoped(host)?;
        Ok(plan_keep(&candidates(&snaps), policy, now)?)
    }

    /// Plans the expiry of one snapshot the operator names (`xstore forget --snapshot`): for
    /// what no policy would drop, such as a snapshot dated in the future by a clock that
    /// was ahead once. A pinned snapshot is refused when the plan is applied.
    pub fn plan_forget_snapshot(&self, id: &SnapshotId) -> Result<Plan> {
        let s = self.snapshot(id)?;
        Ok(Plan {
            decisions: vec![xstore_retention::Decision {
                id: s.id.to_string(),
                host: s.host.to_string(),
                time: s.start_ns,
                action: xstore_retention::Action::Expire,
                tiers: Default::default(),
                positions: Vec::new(),
                reasons: vec!["named by the operator".into()],
                changed: true,
            }],
        })
    }

    /// Applies a plan in one atomic index batch: new tier labels, and expiry of every
    /// snapshot it expires (their blobs' reference counts drop; space returns at the next gc).
    pub fn apply_plan(&self, plan: &Plan) -> Result<Applied> {
        let mut m = Mutation::begin(self)?;
        let relabelled = apply_decisions(&mut m, self, &[], plan)?;
        let released = m.commit()?;
        Ok(Applied {
            relabelled,
            released,
        })
    }

    /// Moves a committed snapshot into `tier` of its host's schedule, dropping its other tier
    /// labels, and trims that tier to its count as a new snapshot's entry does (what an
    /// rsnapshot rotation did to a backup point that was imported before it).
    pub fn move_to_tier(&self, id: &SnapshotId, tier: &str) -> Result<Applied> {
        let mut m = Mutation::begin(self)?;
        let moved = Snapshot {
            tiers: Vec::new(),
            ..self.snapshot(id)?
        };
        let entry = self
            .tier_entry(&moved.host, &TierChoice::Named(tier.to_string()))?
            .ok_or(Error::Internal("a named tier has an entry"))?;
        let plan = self.plan_entry(&entry, &moved)?;
        let relabelled = apply_decisions(&mut m, self, std::slice::from_ref(&moved), &plan)?;
        let released = m.commit()?;
        Ok(Applied {
            relabelled,
            released,
        })
    }

    /// Pins (keeps regardless of retention) or unpins a snapshot.
    pub fn set_pinned(&self, id: &SnapshotId, pinned: bool) -> Result<Snapshot> {
        let mut m = Mutation::begin(self)?;
        let s = self.snapshot(id)?;
        let updated = Snapshot { pinned, ..s };
        m.put_snapshot(updated.clone());
        m.commit()?;
        Ok(updated)
    }
}
