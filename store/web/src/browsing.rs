//! The pages a logged-in user reads: their hosts with freshness, a host's snapshots, a
//! directory (one page of [`PAGE_ENTRIES`] at a time), and a file with its versions across
//! the host's snapshots. Every repository read runs on the blocking pool.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use xstore::text::{human_bytes, short_duration};
use xstore_browse::access::{MAY_EXEC, MAY_READ};
use xstore_browse::fsview::{NodeAttr, HOSTS_DIR};
use xstore_format::meta::EntryKind;
use xstore_format::tree::Content;

use crate::locate::{fs_failure, locate, Located};
use crate::pages::{self, mode_string, HostRow, ListRow, Place, SnapshotRow, VersionRow};
use crate::session::SessionUser;
use crate::state::{viewer, Answer, App, Failure, LoggedIn};

/// Entries on one page of a directory.
pub const PAGE_ENTRIES: usize = 1000;

fn utc(ns: i64) -> String {
    xstore::format_utc(ns.div_euclid(1_000_000_000))
}

/// Runs `f` on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::internal("a request's worker", e))?
}

fn page(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// `GET /`: the hosts, or the login form.
pub async fn root(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match app.session(&headers) {
        Ok(Some(_)) => Redirect::to("/hosts").into_response(),
        Ok(None) => Redirect::to("/login").into_response(),
        Err(f) => f.into_response(),
    }
}

/// `GET /hosts`: the user's hosts with their freshness.
pub async fn hosts(State(app): State<Arc<App>>, LoggedIn(user): LoggedIn) -> Answer {
    let a = app.clone();
    let u = user.clone();
    let rows = blocking(move || host_rows(&a, &u)).await?;
    Ok(page(pages::hosts(&viewer(&user), &rows)))
}

fn host_rows(app: &App, user: &SessionUser) -> Result<Vec<HostRow>, Failure> {
    use xstore_fleet::monitor::{freshness, freshness_targets, FreshnessOptions};
    let scope = App::scope(user);
    let view = app.view(&scope)?;
    let repo = view
        .repository()
        .map_err(|e| Failure::internal("opening the repository", e))?;
    let inventory = app.inventory()?;
    let account = match &scope {
        crate::state::Scope::Account(a) => Some(a.as_str()),
        crate::state::Scope::All => None,
    };
    if account.is_some_and(|a| inventory.account(a).is_none()) {
        return Ok(Vec::new());
    }
    let targets = freshness_targets(&repo, Some(&inventory), &[], account)
        .map_err(|e| Failure::internal("listing hosts", e))?;
    let opts = FreshnessOptions::default();
    let report = freshness(&repo, &targets, &opts)
        .map_err(|e| Failure::internal("checking freshness", e))?;
    let ago = |ns: i64| {
        short_duration(u64::try_from(opts.now_ns.saturating_sub(ns) / 1_000_000_000).unwrap_or(0))
    };
    Ok(report
        .hosts
        .into_iter()
        .map(|h| HostRow {
            host: h.host.to_string(),
            account: h.account,
            state: h.state.label(),
            newest: h.newest_complete_end_ns.map(|ns| (utc(ns), ago(ns))),
            last_pull: h
                .last_pull
                .as_ref()
                .map(|p| (p.outcome.name().to_string(), ago(p.finished_ns))),
            problem: h.problem,
        })
        .collect())
}

/// `GET /host/{host}`: a host's snapshots, newest first.
pub async fn host(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
    LoggedIn(user): LoggedIn,
) -> Answer {
    let a = app.clone();
    let u = user.clone();
    let h = host.clone();
    let rows = blocking(move || {
        let view = a.view(&App::scope(&u))?;
        let listed = a
            .scope_hosts(&App::scope(&u))?
            .is_none_or(|hosts| hosts.iter().any(|x| x.as_str() == h));
        let snapshots = view.host_snapshots(&h).map_err(|e| fs_failure(e, "host"))?;
        if snapshots.is_empty() && !listed {
            return Err(Failure::not_found("host"));
        }
        Ok(snapshots
            .iter()
            .rev()
            .map(|s| SnapshotRow {
                name: s.name.clone(),
                positions: s.positions.clone(),
                id: s.snapshot.id.short(),
                start: utc(s.snapshot.start_ns),
                end: utc(s.snapshot.end_ns),
                status: match s.snapshot.status {
                    xstore_format::snapshot::SnapshotStatus::Complete => "complete",
                    xstore_format::snapshot::SnapshotStatus::Partial => "partial",
                },
                files: s.snapshot.stats.files,
                bytes: human_bytes(s.snapshot.stats.logical_bytes),
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(page(pages::snapshots(&viewer(&user), &host, &rows)))
}

/// The `?page=` of a directory.
#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
}

fn row_of(name: Vec<u8>, attr: &NodeAttr, target: Option<String>) -> ListRow {
    let kind = match attr.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::CharDevice => 'c',
        EntryKind::BlockDevice => 'b',
        EntryKind::Fifo => 'p',
        EntryKind::File => '-',
    };
    ListRow {
        name,
        mode: mode_string(kind, attr.attrs.mode),
        owner: format!("{}:{}", attr.attrs.uid, attr.attrs.gid),
        size: if attr.kind == EntryKind::File {
            attr.attrs.size.to_string()
        } else {
            String::new()
        },
        mtime: utc(attr.attrs.mtime_ns),
        dir: attr.kind == EntryKind::Dir,
        target,
    }
}

/// A symlink's target as a page shows it (`None` for anything else).
fn target_of(located: &Located, attr: &NodeAttr) -> Option<String> {
    (attr.kind == EntryKind::Symlink)
        .then(|| located.view.readlink(attr.ino).ok())
        .flatten()
        .map(|t| crate::paths::display_name(&t))
}

/// `GET /browse/{host}/{snapshot}/{names…}`: a directory's page or a file's.
pub async fn browse(
    State(app): State<Arc<App>>,
    Path(tail): Path<String>,
    Query(query): Query<PageQuery>,
    LoggedIn(user): LoggedIn,
    uri: axum::http::Uri,
) -> Answer {
    // The raw tail, still percent-encoded: names are decoded once, by `locate`.
    let raw = uri
        .path()
        .strip_prefix("/browse/")
        .unwrap_or(&tail)
        .to_string();
    let a = app.clone();
    let u = user.clone();
    let markup = blocking(move || {
        let located = locate(&a, &u, &raw)?;
        let v = viewer(&u);
        if located.attr.kind == EntryKind::Dir {
            directory_page(&v, &located, query.page.unwrap_or(1))
        } else {
            file_page(&v, &located)
        }
    })
    .await?;
    Ok(page(markup))
}

fn directory_page(
    v: &pages::Viewer<'_>,
    located: &Located,
    page: usize,
) -> Result<maud::Markup, Failure> {
    if !located.caller.may(&located.attr, MAY_READ | MAY_EXEC) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "directory: permission denied",
        ));
    }
    let items = located
        .view
        .readdir(located.attr.ino)
        .map_err(|e| fs_failure(e, "directory"))?;
    let total = items.len();
    let pages = total.div_ceil(PAGE_ENTRIES).max(1);
    let page = page.clamp(1, pages);
    let rows = items
        .iter()
        .skip((page - 1) * PAGE_ENTRIES)
        .take(PAGE_ENTRIES)
        .map(|item| {
            row_of(
                item.name.clone(),
                &item.attr,
                target_of(located, &item.attr),
            )
        })
        .collect();
    Ok(pages::listing(
        v,
        &pages::Listing {
            place: place(located),
            rows,
            total,
            page,
            pages,
        },
    ))
}

fn place(located: &Located) -> Place<'_> {
    Place {
        host: &located.host,
        snapshot: &located.snapshot_segment,
        names: &located.names,
    }
}

fn file_page(v: &pages::Viewer<'_>, located: &Located) -> Result<maud::Markup, Failure> {
    let name = located.names.last().cloned().unwrap_or_default();
    let row = row_of(name, &located.attr, target_of(located, &located.attr));
    let versions = versions(located)?;
    Ok(pages::file(
        v,
        &pages::FilePage {
            place: place(located),
            row,
            versions,
        },
    ))
}

/// The same path in each of the host's snapshots where the user may reach it, newest first;
/// `changed` where its content differs from the next older one's.
fn versions(located: &Located) -> Result<Vec<VersionRow>, Failure> {
    let snapshots = located
        .view
        .host_snapshots(&located.host)
        .map_err(|e| fs_failure(e, "host"))?;
    let repo = located
        .view
        .repository()
        .map_err(|e| Failure::internal("opening the repository", e))?;
    let may_search = |a: &NodeAttr| located.caller.may(a, MAY_EXEC);
    let inner = located.path_bytes();
    let mut rows = Vec::new();
    let mut previous: Option<Content> = None;
    for s in &snapshots {
        let mut path = format!("{HOSTS_DIR}/{}/{}", located.host, s.name).into_bytes();
        path.extend_from_slice(&inner);
        let Ok(attr) = located.view.resolve_mount_path(&path, Some(&may_search)) else {
            previous = None;
            continue;
        };
        let content = match repo.lookup_bytes(&s.snapshot, &inner) {
            Ok(xstore::Node::Entry(e)) => Some(e.content),
            _ => None,
        };
        let changed = previous.is_none() || previous != content;
        previous = content;
        rows.push(VersionRow {
            snapshot: s.name.clone(),
            positions: s.positions.clone(),
            size: if attr.kind == EntryKind::File {
                human_bytes(attr.attrs.size)
            } else {
                String::new()
            },
            mtime: utc(attr.attrs.mtime_ns),
            changed,
        });
    }
    rows.reverse();
    Ok(rows)
}
