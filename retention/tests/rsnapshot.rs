//! Tier rotation against a literal model of rsnapshot's directory renames, over simulated
//! weeks of the seed service's schedule, plus the safety rules.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

use chrono::Datelike;

use xstore_retention::{plan_tiers, Action, Candidate, Plan, Schedule, Schedules, Step};

const HOUR: i64 = 3_600_000_000_000;
const DAY: i64 = 24 * HOUR;
/// 2026-01-01T00:00:00Z, a Thursday.
const START: i64 = 1_767_225_600 * 1_000_000_000;

/// rsnapshot's rotation (rsnapshot(1), "rotate_lowest_snapshots" / "rotate_higher_interval"):
/// `rm -rf TIER.(max-1)`, `mv TIER.(i-1) TIER.i` for i = max-1..1, then for the lowest tier
/// sync a new `TIER.0`, for a higher one `mv BELOW.(below_max-1) TIER.0` when it exists.
struct Rsnapshot {
    tiers: Vec<(String, Vec<Option<String>>)>,
}

impl Rsnapshot {
    fn new(schedule: &Schedule) -> Self {
        Rsnapshot {
            tiers: schedule
                .tiers()
                .iter()
                .map(|t| (t.name.clone(), vec![None; t.count]))
                .collect(),
        }
    }
    fn rotate(&mut self, level: usize, new: Option<String>) {
        let slots = &mut self.tiers[level].1;
        let max = slots.len();
        slots[max - 1] = None;
        for i in (1..max).rev() {
            slots[i] = slots[i - 1].take();
        }
        let entering = if level == 0 {
            new
        } else {
            let below = &mut self.tiers[level - 1].1;
            let last = below.len() - 1;
            below[last].take()
        };
        self.tiers[level].1[0] = entering;
    }
    /// `tier.N` → snapshot; asserts there are no gaps (the schedule never leaves any).
    fn positions(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (name, slots) in &self.tiers {
            let filled = slots.iter().take_while(|s| s.is_some()).count();
            assert!(
                slots[filled..].iter().all(Option::is_none),
                "gap in {name}: {slots:?}"
            );
            for (i, s) in slots.iter().enumerate() {
                if let Some(id) = s {
                    out.insert(format!("{name}.{i}"), id.clone());
                }
            }
        }
        out
    }
}

/// The planner's side: candidates, with plans applied as the store applies them.
struct Store {
    snaps: Vec<Candidate>,
    schedules: Schedules,
}

impl Store {
    fn apply(&mut self, plan: &Plan) {
        let by_id: HashMap<&str, _> = plan.decisions.iter().map(|d| (d.id.as_str(), d)).collect();
        self.snaps
            .retain(|c| by_id[c.id.as_str()].action == Action::Keep);
        for c in &mut self.snaps {
            c.tiers = by_id[c.id.as_str()].tiers.clone();
        }
    }
    fn backup(&mut self, id: &str, time: i64, complete: bool) {
        self.snaps.push(Candidate {
            id: id.into(),
            host: "web1".into(),
            time,
            complete,
            pinned: false,
            tiers: BTreeSet::new(),
        });
        let lowest = self.schedules.default.lowest().name.clone();
        let plan = plan_tiers(
            &self.snaps,
            &self.schedules,
            &Step::Enter {
                id: id.into(),
                tier: lowest,
            },
        )
        .unwrap();
        self.apply(&plan);
    }
    fn rotate(&mut self, tier: &str) {
        let plan = plan_tiers(
            &self.snaps,
            &self.schedules,
            &Step::Rotate { tier: tier.into() },
        )
        .unwrap();
        self.apply(&plan);
    }
    fn positions(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (id, ps) in xstore_retention::positions(&self.snaps) {
            for p in ps {
                out.insert(p, id.clone());
            }
        }
        out
    }
}

fn name(t: i64) -> String {
    chrono_like(t / 1_000_000_000)
}

/// `2026-01-05T08` without pulling a date crate into the test: days since START plus hour.
fn chrono_like(secs: i64) -> String {
    let start = START / 1_000_000_000;
    let day = (secs - start) / 86_400;
    let hour = (secs - start) % 86_400 / 3600;
    format!("d{day:03}h{hour:02}")
}

#[test]
fn seed_schedule_matches_rsnapshot_for_eight_months() {
    let schedule = Schedule::default();
    let mut model = Rsnapshot::new(&schedule);
    let mut store = Store {
        snaps: Vec::new(),
        schedules: Schedules::default(),
    };
    // cron order at midnight, as rsnapshot documents: monthly, weekly, daily, then the backup.
    for day in 0..250i64 {
        let midnight = START + day * DAY;
        let date = chrono::DateTime::from_timestamp(midnight / 1_000_000_000, 0).unwrap();
        let day_of_month_is_1 = date.day() == 1;
        let monday = date.weekday() == chrono::Weekday::Mon;
        if day_of_month_is_1 {
            model.rotate(3, None);
            store.rotate("monthly");
        }
        if monday {
            model.rotate(2, None);
            store.rotate("weekly");
        }
        model.rotate(1, None);
        store.rotate("daily");
        assert_eq!(
            store.positions(),
            model.positions(),
            "after rotations of day {day}"
        );
        for h in (0..24).step_by(4) {
            let t = midnight + h * HOUR;
            model.rotate(0, Some(name(t)));
            store.backup(&name(t), t, true);
            assert_eq!(
                store.positions(),
                model.positions(),
                "after backup {}",
                name(t)
            );
        }
        if day == 69 {
            exact_contents_on_day_69(&store.positions());
        }
    }
    let p = store.positions();
    // Seven monthly promotions happened (Mar 1 … Sep 1, 2026); monthly keeps 6.
    assert_eq!(p.len(), 6 + 7 + 4 + 6);
    assert!(p.contains_key("monthly.5") && !p.contains_key("monthly.6"));
    assert_eq!(store.snaps.len(), p.len());
}

/// Day 69 = 2026-03-11, after its 20:00 backup, worked out by hand from rsnapshot(1).
fn exact_contents_on_day_69(p: &HashMap<String, String>) {
    assert_eq!(p["hourly.0"], "d069h20");
    assert_eq!(p["hourly.5"], "d069h00");
    assert_eq!(p["daily.0"], "d068h00");
    assert_eq!(p["daily.6"], "d062h00");
    // Daily rotation on day D promotes hourly.5 = day D-1 00:00. Weekly rotations on Mondays
    // (days 4, 11, …, 67) take daily.6 once daily holds 7: first on day 11 (d003).
    assert_eq!(p["weekly.0"], "d059h00");
    assert_eq!(p["weekly.3"], "d038h00");
    // Feb 1 (day 31): weekly held only 3, nothing promoted; Mar 1 (day 59): weekly.3 = d024.
    assert_eq!(p["monthly.0"], "d024h00");
    assert_eq!(p.len(), 6 + 7 + 4 + 1);
}

#[test]
fn partial_snapshots_never_push_complete_ones_out() {
    let mut store = Store {
        snaps: Vec::new(),
        schedules: Schedules {
            default: Schedule::parse("hourly=3,daily=2").unwrap(),
            hosts: Default::default(),
        },
    };
    for i in 0..3 {
        store.backup(&format!("c{i}"), START + i * HOUR, true);
    }
    // Five failed-ish (partial) runs in a row.
    for i in 3..8 {
        store.backup(&format!("p{i}"), START + i * HOUR, false);
    }
    let p = store.positions();
    // The three newest runs are partial; the three complete ones stay behind them.
    assert_eq!(p["hourly.0"], "p7");
    assert_eq!(p["hourly.2"], "p5");
    assert_eq!(p["hourly.3"], "c2");
    assert_eq!(p["hourly.5"], "c0");
    assert!(!store.snaps.iter().any(|c| c.id == "p3" || c.id == "p4"));
    // A complete run: now the newest three complete ones are c2, c1 and the new one, so c0
    // leaves the tier and expires.
    store.backup("c8", START + 8 * HOUR, true);
    let p = store.positions();
    assert_eq!(p["hourly.0"], "c8");
    assert!(!store.snaps.iter().any(|c| c.id == "c0"));
    assert!(store.snaps.iter().any(|c| c.id == "c1"));
}

#[test]
fn newest_complete_snapshot_and_pins_are_kept_with_reasons() {
    let schedules = Schedules {
        default: Schedule::parse("hourly=1").unwrap(),
        hosts: Default::default(),
    };
    let mk = |id: &str, t: i64, complete, pinned| Candidate {
        id: id.into(),
        host: "db1".into(),
        time: t,
        complete,
        pinned,
        tiers: BTreeSet::from(["hourly".to_string()]),
    };
    let snaps = vec![
        mk("a", START, true, true),
        mk("b", START + HOUR, true, false),
        mk("c", START + 2 * HOUR, false, false),
    ];
    let plan = plan_tiers(
        &snaps,
        &schedules,
        &Step::Rotate {
            tier: "hourly".into(),
        },
    )
    .unwrap();
    let d: HashMap<&str, _> = plan.decisions.iter().map(|d| (d.id.as_str(), d)).collect();
    // hourly=1 keeps the newest (partial c) and the newest complete (b).
    assert_eq!(d["c"].positions, vec!["hourly.0"]);
    assert_eq!(d["b"].positions, vec!["hourly.1"]);
    // a left the tier but is pinned.
    assert_eq!(d["a"].action, Action::Keep);
    assert!(d["a"].reasons.iter().any(|r| r == "pinned"), "{:?}", d["a"]);
    assert!(d["a"]
        .reasons
        .iter()
        .any(|r| r.starts_with("trimmed from hourly")));
    // Round trip through JSON.
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);

    // Without labels the newest complete snapshot still stays, with its reason.
    let bare: Vec<Candidate> = snaps
        .iter()
        .map(|c| Candidate {
            tiers: BTreeSet::new(),
            pinned: false,
            ..c.clone()
        })
        .collect();
    let plan = plan_tiers(
        &bare,
        &schedules,
        &Step::Rotate {
            tier: "hourly".into(),
        },
    )
    .unwrap();
    let kept: Vec<&str> = plan.kept().map(|d| d.id.as_str()).collect();
    assert_eq!(kept, vec!["b"]);
    assert_eq!(
        plan.kept().next().unwrap().reasons,
        vec!["newest complete snapshot of host db1"]
    );
}

#[test]
fn unknown_tier_and_bad_schedules_are_errors() {
    let snaps = vec![Candidate {
        id: "a".into(),
        host: "h".into(),
        time: 0,
        complete: true,
        pinned: false,
        tiers: BTreeSet::new(),
    }];
    let err = plan_tiers(
        &snaps,
        &Schedules::default(),
        &Step::Rotate {
            tier: "yearly".into(),
        },
    )
    .unwrap_err();
    assert!(err
        .to_string()
        .contains("\"yearly\" is not in the schedule of host h"));
    for bad in [
        "",
        "hourly",
        "hourly=0",
        "hourly=2,hourly=3",
        "Hourly=1",
        "h=x",
    ] {
        assert!(Schedule::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        Schedule::parse("hourly=6, daily=7,weekly=4,monthly=6").unwrap(),
        Schedule::default()
    );
}
