//! Usage and the operator's pages: an account's usage against its allocation (a customer
//! sees its own account only), the operator's view of the fleet (hosts stale or failing with
//! their causes, the last runs, every account), the audit log, and the charts of the history
//! ([`crate::history`]). Operator pages answer a customer 404, as a page that is not there.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use xstore::text::{human_bytes, short_duration};

use crate::audit::AuditEvent;
use crate::browsing::blocking;
use crate::chart::{self, Series};
use crate::history::HistoryRecord;
use crate::pages::{self, AuditRow, FleetView, ProblemRow, UsageRow};
use crate::session::SessionUser;
use crate::state::{viewer, Answer, App, Failure, LoggedIn, Scope};
use crate::users::Role;

/// How far back the charts look.
const CHART_NS: i64 = 90 * 86_400 * 1_000_000_000;
/// Audit records the operator's page shows.
const AUDIT_ROWS: usize = 500;

fn utc(ns: i64) -> String {
    xstore::format_utc(ns.div_euclid(1_000_000_000))
}

fn operator_only(user: &SessionUser) -> Result<(), Failure> {
    if user.role == Role::Operator {
        Ok(())
    } else {
        Err(Failure::not_found("page"))
    }
}

fn usage_rows(app: &App, account: Option<&str>) -> Result<Vec<UsageRow>, Failure> {
    let view = app.view(&Scope::All)?;
    let repo = view
        .repository()
        .map_err(|e| Failure::internal("opening the repository", e))?;
    let inventory = app.inventory()?;
    if account.is_some_and(|a| inventory.account(a).is_none()) {
        return Ok(Vec::new());
    }
    let report = xstore_fleet::monitor::fleet_usage_report(&repo, Some(&inventory), account)
        .map_err(|e| Failure::internal("computing usage", e))?;
    Ok(report
        .accounts
        .iter()
        .map(|a| UsageRow {
            account: a.account.clone(),
            used: human_bytes(a.usage.referenced_bytes),
            allocation: human_bytes(a.allocation),
            percent: a.percent,
            hosts: inventory.account(&a.account).map_or(0, |x| x.hosts.len()),
        })
        .collect())
}

/// `GET /usage`: the user's account (an operator's: all) against its allocation.
pub async fn usage(State(app): State<Arc<App>>, LoggedIn(user): LoggedIn) -> Answer {
    let (a, u) = (app.clone(), user.clone());
    let rows = blocking(move || match App::scope(&u) {
        Scope::All => usage_rows(&a, None),
        Scope::Account(acct) => usage_rows(&a, Some(&acct)),
    })
    .await?;
    Ok(Html(pages::usage(&viewer(&user), &rows).into_string()).into_response())
}

fn fleet_view(app: &App) -> Result<FleetView, Failure> {
    use xstore_fleet::monitor::{freshness, freshness_targets, CheckState, FreshnessOptions};
    let view = app.view(&Scope::All)?;
    let repo = view
        .repository()
        .map_err(|e| Failure::internal("opening the repository", e))?;
    let inventory = app.inventory()?;
    let targets = freshness_targets(&repo, Some(&inventory), &[], None)
        .map_err(|e| Failure::internal("listing hosts", e))?;
    let opts = FreshnessOptions::default();
    let report = freshness(&repo, &targets, &opts)
        .map_err(|e| Failure::internal("checking freshness", e))?;
    let rank = |s: CheckState| match s {
        CheckState::Critical => 0,
        CheckState::Unknown => 1,
        CheckState::Warning => 2,
        CheckState::Ok => 3,
    };
    let mut problems: Vec<_> = report
        .hosts
        .iter()
        .filter(|h| h.state != CheckState::Ok)
        .collect();
    problems.sort_by_key(|h| (rank(h.state), h.host.to_string()));
    let ago = |ns: i64| {
        short_duration(u64::try_from(opts.now_ns.saturating_sub(ns) / 1_000_000_000).unwrap_or(0))
    };
    let mut runs = Vec::new();
    let pulls: Vec<_> = report
        .hosts
        .iter()
        .filter_map(|h| h.last_pull.as_ref())
        .collect();
    match pulls.iter().max_by_key(|p| p.finished_ns) {
        Some(newest) => {
            let failed = pulls
                .iter()
                .filter(|p| p.outcome.name() == "failed")
                .count();
            runs.push((
                "pulls".to_string(),
                format!(
                    "{} ({} ago)",
                    utc(newest.finished_ns),
                    ago(newest.finished_ns)
                ),
                format!("{} hosts' newest pulls: {failed} failed", pulls.len()),
            ));
        }
        None => runs.push(("pulls".into(), "never".into(), "no pull recorded".into())),
    }
    let verify = repo
        .verify_status()
        .map_err(|e| Failure::internal("reading verify status", e))?;
    runs.push(match verify.last_run {
        Some(r) => (
            "verify".to_string(),
            format!("{} ({} ago)", utc(r.started_ns), ago(r.started_ns)),
            format!(
                "{} packs, {} in {:.0} s, {} damaged",
                r.packs,
                human_bytes(r.bytes),
                r.seconds,
                r.damaged
            ),
        ),
        None => ("verify".into(), "never".into(), "no run recorded".into()),
    });
    let recorded = repo
        .last_runs()
        .map_err(|e| Failure::internal("reading run records", e))?;
    let mut jobs: Vec<String> = ["rotate-daily", "rotate-weekly", "rotate-monthly", "gc"]
        .map(String::from)
        .to_vec();
    for r in &recorded {
        if !jobs.contains(&r.job) {
            jobs.push(r.job.clone());
        }
    }
    for job in jobs {
        runs.push(match recorded.iter().find(|r| r.job == job) {
            Some(r) => (
                job,
                format!("{} ({} ago)", utc(r.finished_ns), ago(r.finished_ns)),
                format!(
                    "{}: {}",
                    if r.ok { "ok" } else { "failed" },
                    xstore::text::printable(&r.summary)
                ),
            ),
            None => (job, "never".into(), "no run recorded".into()),
        });
    }
    Ok(FleetView {
        accounts: usage_rows(app, None)?,
        hosts: report.hosts.len(),
        problems: problems
            .into_iter()
            .map(|h| ProblemRow {
                host: h.host.to_string(),
                account: h.account.clone().unwrap_or_default(),
                state: h.state.label(),
                problem: h.problem.clone(),
            })
            .collect(),
        runs,
    })
}

/// `GET /operator`: the fleet at a glance.
pub async fn operator(State(app): State<Arc<App>>, LoggedIn(user): LoggedIn) -> Answer {
    operator_only(&user)?;
    let a = app.clone();
    let v = blocking(move || fleet_view(&a)).await?;
    Ok(Html(pages::operator(&viewer(&user), &v).into_string()).into_response())
}

/// `GET /audit`: the newest records of the audit log.
pub async fn audit(State(app): State<Arc<App>>, LoggedIn(user): LoggedIn) -> Answer {
    operator_only(&user)?;
    let path = app.audit_path().to_path_buf();
    let (records, unreadable) = blocking(move || {
        crate::audit::read(&path, i64::MIN, AUDIT_ROWS)
            .map_err(|e| Failure::internal("reading the audit log", e))
    })
    .await?;
    let rows: Vec<AuditRow> = records
        .into_iter()
        .rev()
        .map(|r| {
            let (event, user, detail) = match r.event {
                AuditEvent::Login { user, ok, reason } => (
                    "login",
                    user,
                    if ok {
                        "ok".to_string()
                    } else {
                        reason.unwrap_or_default()
                    },
                ),
                AuditEvent::Logout { user } => ("logout", user, String::new()),
                AuditEvent::Download {
                    user,
                    host,
                    snapshot,
                    path,
                    format,
                    bytes,
                } => (
                    "download",
                    user,
                    format!(
                        "{host} {} {path} as {format}, {}",
                        snapshot.get(..8).unwrap_or(&snapshot),
                        human_bytes(bytes)
                    ),
                ),
            };
            AuditRow {
                at: utc(r.at_ns),
                address: r.address.to_string(),
                event: event.to_string(),
                user,
                detail,
            }
        })
        .collect();
    Ok(Html(pages::audit(&viewer(&user), &rows, unreadable).into_string()).into_response())
}

fn usage_series(records: &[HistoryRecord], scope: &Scope) -> Vec<Series> {
    match scope {
        Scope::All => vec![Series {
            name: "repository (pack bytes)".into(),
            points: records
                .iter()
                .filter_map(|r| match r {
                    HistoryRecord::Repository {
                        at_ns,
                        stored_bytes,
                        ..
                    } => Some((*at_ns, *stored_bytes as f64)),
                    _ => None,
                })
                .collect(),
            dots: false,
            dashed: false,
        }],
        Scope::Account(account) => {
            let mine: Vec<(i64, u64, u64)> = records
                .iter()
                .filter_map(|r| match r {
                    HistoryRecord::Account {
                        at_ns,
                        account: a,
                        referenced_bytes,
                        allocation,
                    } if a == account => Some((*at_ns, *referenced_bytes, *allocation)),
                    _ => None,
                })
                .collect();
            vec![
                Series {
                    name: format!("{account} stored"),
                    points: mine.iter().map(|(t, used, _)| (*t, *used as f64)).collect(),
                    dots: false,
                    dashed: false,
                },
                Series {
                    name: "allocation".into(),
                    points: mine
                        .iter()
                        .map(|(t, _, alloc)| (*t, *alloc as f64))
                        .collect(),
                    dots: false,
                    dashed: true,
                },
            ]
        }
    }
}

fn pull_series(records: &[HistoryRecord]) -> Vec<Series> {
    ["ok", "partial", "failed"]
        .into_iter()
        .map(|outcome| Series {
            name: format!("pulls {outcome}"),
            points: records
                .iter()
                .filter_map(|r| match r {
                    HistoryRecord::Pull {
                        at_ns,
                        outcome: o,
                        seconds,
                        ..
                    } if o == outcome => Some((*at_ns, *seconds)),
                    _ => None,
                })
                .collect(),
            dots: true,
            dashed: false,
        })
        .collect()
}

/// `GET /chart/{name}`: `usage.svg` (the user's account, or the repository for operators)
/// and `pulls.svg` (operators).
pub async fn chart(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    LoggedIn(user): LoggedIn,
) -> Answer {
    let scope = App::scope(&user);
    if name == "pulls.svg" {
        operator_only(&user)?;
    } else if name != "usage.svg" {
        return Err(Failure::not_found("chart"));
    }
    let a = app.clone();
    let since = xstore::now_ns().saturating_sub(CHART_NS);
    let svg = blocking(move || {
        let Some(history) = a.history() else {
            return Ok(chart::svg("no history kept", &[], &|_| String::new()));
        };
        Ok(if name == "pulls.svg" {
            let records = history.read(since, |r| matches!(r, HistoryRecord::Pull { .. }));
            chart::svg("Pull durations", &pull_series(&records), &|v| {
                short_duration(v as u64)
            })
        } else {
            let records = history.read(since, |r| !matches!(r, HistoryRecord::Pull { .. }));
            chart::svg("Stored bytes", &usage_series(&records, &scope), &|v| {
                human_bytes(v as u64)
            })
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}
