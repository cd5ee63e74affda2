//! Calendar policies: table tests at a fixed `now`, and properties.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use xstore_retention::{
    parse_duration, parse_instant, parse_period, plan_keep, Action, Candidate, KeepPolicy, Plan,
};

const HOUR: i64 = 3_600_000_000_000;
const DAY: i64 = 24 * HOUR;
/// 2026-11-28T00:00:00Z, a Saturday.
const NOW: i64 = 1_795_824_000 * 1_000_000_000;

fn snap(id: &str, time: i64, complete: bool) -> Candidate {
    Candidate {
        id: id.into(),
        host: "web1".into(),
        time,
        complete,
        pinned: false,
        tiers: BTreeSet::new(),
    }
}

fn kept(plan: &Plan) -> Vec<&str> {
    plan.kept().map(|d| d.id.as_str()).collect()
}

fn reasons<'a>(plan: &'a Plan, id: &str) -> &'a [String] {
    &plan.decisions.iter().find(|d| d.id == id).unwrap().reasons
}

#[test]
fn daily_weekly_monthly_pick_the_newest_of_each_period() {
    // Every 4 hours for 40 days before NOW.
    let snaps: Vec<Candidate> = (1..=240)
        .map(|i| snap(&format!("s{i:03}"), NOW - i * 4 * HOUR, true))
        .collect();
    let policy = KeepPolicy {
        daily: Some(3),
        weekly: Some(2),
        monthly: Some(2),
        ..Default::default()
    };
    let plan = plan_keep(&snaps, &policy, NOW).unwrap();
    // s001 = 2026-11-27T20:00 (newest of Nov 27, also of ISO week 48 and of November).
    // s007 = Nov 26 20:00, s013 = Nov 25 20:00. Week 47 ends Sunday Nov 22: s031 = Nov 22 20:00.
    // October's newest: Oct 31 20:00 = NOW - 652 h = s163.
    assert_eq!(kept(&plan), vec!["s001", "s007", "s013", "s031", "s163"]);
    assert_eq!(
        reasons(&plan, "s001"),
        [
            "keep-daily 1 (2026-11-27)",
            "keep-weekly 1 (2026-W48)",
            "keep-monthly 1 (2026-11)"
        ]
    );
    assert_eq!(reasons(&plan, "s031"), ["keep-weekly 2 (2026-W47)"]);
    assert_eq!(reasons(&plan, "s163"), ["keep-monthly 2 (2026-10)"]);
    assert_eq!(plan.expired().count(), 240 - 5);
}

#[test]
fn periods_without_snapshots_do_not_count() {
    // Days with a backup: 1, 5 and 9 days ago.
    let snaps = vec![
        snap("a", NOW - DAY - HOUR, true),
        snap("b", NOW - 5 * DAY, true),
        snap("c", NOW - 9 * DAY, true),
    ];
    let policy = KeepPolicy {
        daily: Some(3),
        ..Default::default()
    };
    let plan = plan_keep(&snaps, &policy, NOW).unwrap();
    assert_eq!(kept(&plan), vec!["a", "b", "c"]);
}

#[test]
fn within_last_and_partial_snapshots() {
    let snaps = vec![
        snap("p1", NOW - HOUR, false),
        snap("c1", NOW - 2 * HOUR, true),
        snap("p2", NOW - 26 * HOUR, false),
        snap("c2", NOW - 27 * HOUR, true),
        snap("c3", NOW - 50 * HOUR, true),
    ];
    // keep-within 1d: p1, c1.
    let within = KeepPolicy {
        within: Some(parse_duration("1d").unwrap()),
        ..Default::default()
    };
    assert_eq!(
        kept(&plan_keep(&snaps, &within, NOW).unwrap()),
        vec!["p1", "c1"]
    );
    // keep-last 2: partial snapshots do not use up the count.
    let last = KeepPolicy {
        last: Some(2),
        ..Default::default()
    };
    assert_eq!(
        kept(&plan_keep(&snaps, &last, NOW).unwrap()),
        vec!["p1", "c1", "p2", "c2"]
    );
    // keep-daily 1: the newest complete snapshot of the day, not the newer partial one.
    let daily = KeepPolicy {
        daily: Some(1),
        ..Default::default()
    };
    let plan = plan_keep(&snaps, &daily, NOW).unwrap();
    assert_eq!(kept(&plan), vec!["c1"]);
    // All of one host partial: the newest complete rule has nothing to keep, the policy rules.
    let all_partial: Vec<Candidate> = snaps.iter().filter(|c| !c.complete).cloned().collect();
    let plan = plan_keep(&all_partial, &daily, NOW).unwrap();
    assert_eq!(kept(&plan), vec!["p1"]);
    // The newest complete snapshot survives a policy that keeps nothing of it.
    let old = KeepPolicy {
        within: Some(HOUR / 2),
        ..Default::default()
    };
    let plan = plan_keep(&snaps, &old, NOW).unwrap();
    assert_eq!(kept(&plan), vec!["c1"]);
    assert_eq!(
        reasons(&plan, "c1"),
        ["newest complete snapshot of host web1"]
    );
    assert!(plan_keep(&snaps, &KeepPolicy::default(), NOW).is_err());
}

#[test]
fn durations_parse_and_reject_garbage() {
    assert_eq!(parse_duration("4h").unwrap(), 4 * HOUR);
    assert_eq!(parse_duration("1d12h").unwrap(), 36 * HOUR);
    assert_eq!(parse_duration("2w").unwrap(), 14 * DAY);
    for bad in ["", "4", "h", "4x", "99999999999999999w", "-1h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        assert!(parse_period(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        parse_period("90m").unwrap(),
        std::time::Duration::from_secs(90 * 60)
    );
    assert_eq!(parse_period("0s").unwrap(), std::time::Duration::ZERO);
}

#[test]
fn instants_parse_as_utc_and_reject_garbage() {
    assert_eq!(parse_instant("1970-01-02T00:00:00Z").unwrap(), DAY);
    assert_eq!(
        parse_instant("2026-12-01 04:00:00").unwrap(),
        parse_instant("2026-12-01T04:00:00Z").unwrap()
    );
    for bad in [
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "1969-12-31T00:00:00Z",
    ] {
        assert!(parse_instant(bad).is_err(), "{bad:?} accepted");
    }
}

fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (0i64..(400 * DAY), any::<bool>(), any::<bool>(), 0u8..3),
        0..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (age, complete, pinned, host))| Candidate {
                id: format!("s{i:03}"),
                host: format!("h{host}"),
                time: NOW - age,
                complete,
                pinned,
                tiers: BTreeSet::new(),
            })
            .collect()
    })
}

fn policy() -> impl Strategy<Value = KeepPolicy> {
    let n = || prop::option::of(0usize..8);
    (
        n(),
        prop::option::of(0i64..(30 * DAY)),
        n(),
        n(),
        n(),
        n(),
        n(),
    )
        .prop_map(
            |(last, within, hourly, daily, weekly, monthly, yearly)| KeepPolicy {
                last,
                within,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
            },
        )
        .prop_filter("non-empty", |p| !p.is_empty())
}

fn decisions(plan: &Plan) -> HashMap<String, (Action, Vec<String>)> {
    plan.decisions
        .iter()
        .map(|d| (d.id.clone(), (d.action, d.reasons.clone())))
        .collect()
}

/// Per host: (snapshots, snapshots kept by a keep-last reason).
fn keep_last_per_host(plan: &Plan) -> Vec<(usize, usize)> {
    let mut by_host: HashMap<&str, (usize, usize)> = HashMap::new();
    for d in &plan.decisions {
        let e = by_host.entry(d.host.as_str()).or_default();
        e.0 += 1;
        if d.reasons.iter().any(|r| r.starts_with("keep-last")) {
            e.1 += 1;
        }
    }
    by_host.into_values().collect()
}

proptest! {
    #[test]
    fn independent_of_input_order(snaps in candidates(), policy in policy(), seed in any::<u64>()) {
        let a = plan_keep(&snaps, &policy, NOW).unwrap();
        let mut shuffled = snaps.clone();
        // A deterministic shuffle from the seed.
        let len = shuffled.len();
        let mut s = seed | 1;
        for i in (1..len).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let b = plan_keep(&shuffled, &policy, NOW).unwrap();
        prop_assert_eq!(decisions(&a), decisions(&b));
    }

    #[test]
    fn idempotent(snaps in candidates(), policy in policy()) {
        let first = plan_keep(&snaps, &policy, NOW).unwrap();
        let kept_ids: BTreeSet<&str> = first.kept().map(|d| d.id.as_str()).collect();
        let survivors: Vec<Candidate> =
            snaps.iter().filter(|c| kept_ids.contains(c.id.as_str())).cloned().collect();
        let second = plan_keep(&survivors, &policy, NOW).unwrap();
        prop_assert_eq!(second.expired().count(), 0);
    }

    #[test]
    fn keep_last_keeps_min_n_len(snaps in candidates(), n in 0usize..10) {
        let policy = KeepPolicy { last: Some(n), ..Default::default() };
        let plan = plan_keep(&snaps, &policy, NOW).unwrap();
        for (total, by_rule) in keep_last_per_host(&plan) {
            prop_assert!(by_rule >= n.min(total));
        }
        // When all are complete it is exactly min(n, len) per host.
        let complete: Vec<Candidate> =
            snaps.iter().map(|c| Candidate { complete: true, ..c.clone() }).collect();
        let plan = plan_keep(&complete, &policy, NOW).unwrap();
        for (total, by_rule) in keep_last_per_host(&plan) {
            prop_assert_eq!(by_rule, n.min(total));
        }
    }

    #[test]
    fn safety_rules_hold(snaps in candidates(), policy in policy()) {
        let plan = plan_keep(&snaps, &policy, NOW).unwrap();
        let d = decisions(&plan);
        for c in &snaps {
            if c.pinned { prop_assert_eq!(d[&c.id].0, Action::Keep); }
        }
        let mut newest: HashMap<&str, &Candidate> = HashMap::new();
        for c in snaps.iter().filter(|c| c.complete) {
            let e = newest.entry(c.host.as_str()).or_insert(c);
            if (c.time, &c.id) > (e.time, &e.id) { *e = c; }
        }
        for c in newest.values() {
            prop_assert_eq!(d[&c.id].0, Action::Keep);
        }
    }
}
