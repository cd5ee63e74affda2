//! The pages, as maud templates: every text is HTML-escaped by the template (maud escapes
//! whatever it splices; nothing here is spliced unescaped; charts are separate SVG images
//! drawn by [`crate::chart`]), every name from a customer machine goes through
//! [`display_name`] first (control characters shown escaped), and every link to a name is
//! built by [`crate::paths::encode_path`]. Pages hold no script, no inline style and nothing
//! from another origin (the Content-Security-Policy forbids all three).
//!
//! Each page is a pure function of a plain value (`HostRow`, `Listing`, …), so what a page
//! shows is tested without a server.

use maud::{html, Markup, DOCTYPE};

use crate::paths::{display_name, encode_path, encode_segment};

/// The stylesheet every page links (served from the binary at [`STYLE_PATH`]).
pub const STYLE: &str = include_str!("style.css");
/// Where the stylesheet is served.
pub const STYLE_PATH: &str = "/static/style.css";

/// Who is logged in, for the page header.
pub struct Viewer<'a> {
    /// The user's name.
    pub name: &'a str,
    /// `customer of acme` or `operator`.
    pub role: String,
    /// The session's CSRF token, for the logout form.
    pub csrf: &'a str,
    /// Whether the operator's pages are linked.
    pub operator: bool,
}

/// A whole page: head, header with the user and logout, `body`.
pub fn layout(title: &str, viewer: Option<&Viewer<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · xstore" }
                link rel="stylesheet" href=(STYLE_PATH);
            }
            body {
                header {
                    a.brand href="/hosts" { "xstore" }
                    @if let Some(v) = viewer {
                        nav {
                            a href="/hosts" { "Hosts" }
                            a href="/usage" { "Usage" }
                            @if v.operator { a href="/operator" { "Operator" } a href="/audit" { "Audit log" } }
                        }
                        form.logout method="post" action="/logout" {
                            span.user { (v.name) " (" (v.role) ")" }
                            input type="hidden" name="csrf" value=(v.csrf);
                            button type="submit" id="logout" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login form; `message` says why the last attempt failed.
pub fn login(csrf: &str, message: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(m) = message { p.error id="login-error" { (m) } }
            form.login method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "User " input type="text" name="user" id="user" autocomplete="username" required; }
                label { "Password " input type="password" name="password" id="password" autocomplete="current-password" required; }
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

/// A page saying what went wrong, and nothing about what exists elsewhere.
pub fn error(viewer: Option<&Viewer<'_>>, status: u16, message: &str) -> Markup {
    layout(
        "Error",
        viewer,
        html! {
            h1 { "Error " (status) }
            p.error id="error" { (message) }
            p { a href="/hosts" { "Back to your hosts" } }
        },
    )
}

/// One host on the hosts page.
pub struct HostRow {
    /// Host name.
    pub host: String,
    /// Its account (shown to operators).
    pub account: Option<String>,
    /// `OK`, `WARNING`, `CRITICAL`, `UNKNOWN`.
    pub state: &'static str,
    /// When its newest complete backup ended, and how long ago.
    pub newest: Option<(String, String)>,
    /// Its last pull: outcome and when.
    pub last_pull: Option<(String, String)>,
    /// What is wrong, in words (empty when OK).
    pub problem: String,
}

/// The hosts a user may see, with their freshness.
pub fn hosts(viewer: &Viewer<'_>, rows: &[HostRow]) -> Markup {
    layout(
        "Hosts",
        Some(viewer),
        html! {
            h1 { "Hosts" }
            @if rows.is_empty() { p { "No hosts." } } @else {
                table.hosts {
                    thead { tr {
                        th { "Host" }
                        @if viewer.operator { th { "Account" } }
                        th { "State" } th { "Newest backup" } th { "Last pull" } th { "Problem" }
                    } }
                    tbody { @for r in rows { tr {
                        td { a.host href={ "/host/" (encode_segment(r.host.as_bytes())) } { (display_name(r.host.as_bytes())) } }
                        @if viewer.operator { td { (r.account.as_deref().map(|a| display_name(a.as_bytes())).unwrap_or_default()) } }
                        td { span class={ "state " (r.state.to_lowercase()) } { (r.state) } }
                        td { @if let Some((at, ago)) = &r.newest { (at) " (" (ago) " ago)" } @else { "never" } }
                        td { @if let Some((outcome, ago)) = &r.last_pull { (outcome) ", " (ago) " ago" } @else { "none recorded" } }
                        td.problem { (r.problem) }
                    } } }
                }
            }
        },
    )
}

/// One snapshot on a host's page.
pub struct SnapshotRow {
    /// The stable name (`2026-11-28T041500Z`).
    pub name: String,
    /// Tier positions naming it (`daily.1`).
    pub positions: Vec<String>,
    /// Short id.
    pub id: String,
    /// Start and end, UTC.
    pub start: String,
    /// End, UTC.
    pub end: String,
    /// `complete` or `partial`.
    pub status: &'static str,
    /// Files in it.
    pub files: u64,
    /// Bytes of its files.
    pub bytes: String,
}

/// A host's snapshots, newest first, under their tier names and stable names.
pub fn snapshots(viewer: &Viewer<'_>, host: &str, rows: &[SnapshotRow]) -> Markup {
    let h = encode_segment(host.as_bytes());
    layout(
        host,
        Some(viewer),
        html! {
            nav.crumbs { a href="/hosts" { "Hosts" } " / " span { (display_name(host.as_bytes())) } }
            h1 { "Snapshots of " (display_name(host.as_bytes())) }
            @if rows.is_empty() { p { "No snapshots." } } @else {
                table.snapshots {
                    thead { tr { th { "Tier names" } th { "Stable name" } th { "Id" } th { "Started" } th { "Ended" } th { "Status" } th.num { "Files" } th.num { "Size" } } }
                    tbody { @for r in rows { tr {
                        td { @for p in &r.positions { a.position href={ "/browse/" (h) "/" (encode_segment(p.as_bytes())) "/" } { (p) } " " } }
                        td { a.stable href={ "/browse/" (h) "/" (encode_segment(r.name.as_bytes())) "/" } { (r.name) } }
                        td.id { (r.id) }
                        td { (r.start) } td { (r.end) } td { (r.status) }
                        td.num { (r.files) } td.num { (r.bytes) }
                    } } }
                }
            }
        },
    )
}

/// Where a browse page is: host, snapshot name as typed (tier or stable), names below.
pub struct Place<'a> {
    /// Host name.
    pub host: &'a str,
    /// The snapshot's name in the URL (`daily.1`, a stable name or an id).
    pub snapshot: &'a str,
    /// The names from the snapshot's root.
    pub names: &'a [Vec<u8>],
}

impl Place<'_> {
    fn url(&self, kind: &str, depth: usize) -> String {
        let mut url = format!(
            "/{kind}/{}/{}/",
            encode_segment(self.host.as_bytes()),
            encode_segment(self.snapshot.as_bytes())
        );
        url.push_str(&encode_path(self.names[..depth].iter().map(Vec::as_slice)));
        url
    }

    /// This place under `/browse/`.
    pub fn browse_url(&self) -> String {
        self.url("browse", self.names.len())
    }

    /// This place under `/download/`.
    pub fn download_url(&self) -> String {
        self.url("download", self.names.len())
    }

    fn crumbs(&self) -> Markup {
        html! {
            nav.crumbs {
                a href="/hosts" { "Hosts" } " / "
                a href={ "/host/" (encode_segment(self.host.as_bytes())) } { (display_name(self.host.as_bytes())) } " / "
                a href=(self.url("browse", 0)) { (self.snapshot) }
                @for (i, name) in self.names.iter().enumerate() {
                    " / "
                    @if i + 1 == self.names.len() { span { (display_name(name)) } }
                    @else { a href=(self.url("browse", i + 1)) { (display_name(name)) } }
                }
            }
        }
    }
}

/// One entry of a directory listing, as shown.
pub struct ListRow {
    /// Name bytes.
    pub name: Vec<u8>,
    /// `drwxr-xr-x`.
    pub mode: String,
    /// Owner and group (numeric).
    pub owner: String,
    /// Size in bytes (files), or empty.
    pub size: String,
    /// Modification time, UTC.
    pub mtime: String,
    /// Whether it is a directory (linked for browsing) or a file (linked for download).
    pub dir: bool,
    /// A symlink's target, shown.
    pub target: Option<String>,
}

/// A directory page: one page of its entries, links to the others, archive downloads.
pub struct Listing<'a> {
    /// Where.
    pub place: Place<'a>,
    /// The entries of this page.
    pub rows: Vec<ListRow>,
    /// Entries in the whole directory.
    pub total: usize,
    /// This page (1-based) and how many there are.
    pub page: usize,
    /// Pages in all.
    pub pages: usize,
}

/// A directory's page.
pub fn listing(viewer: &Viewer<'_>, l: &Listing<'_>) -> Markup {
    let here = l.place.browse_url();
    let dir_url = if here.ends_with('/') {
        here.clone()
    } else {
        format!("{here}/")
    };
    let download = l.place.download_url();
    let title = l
        .place
        .names
        .last()
        .map_or_else(|| l.place.snapshot.to_string(), |n| display_name(n));
    layout(
        &title,
        Some(viewer),
        html! {
            (l.place.crumbs())
            p.actions {
                "Download this directory as "
                a id="download-tgz" href={ (download) "?format=tar.gz" } { ".tar.gz" } " or "
                a id="download-zip" href={ (download) "?format=zip" } { ".zip" }
            }
            p.count { (l.total) " entries" @if l.pages > 1 { ", page " (l.page) " of " (l.pages) } }
            table.listing {
                thead { tr { th { "Name" } th { "Mode" } th { "Owner" } th.num { "Size" } th { "Modified" } } }
                tbody { @for r in &l.rows { tr {
                    td.name {
                        @if r.dir { a.dir href={ (dir_url) (encode_segment(&r.name)) "/" } { (display_name(&r.name)) "/" } }
                        @else { a.entry href={ (dir_url) (encode_segment(&r.name)) } { (display_name(&r.name)) } }
                        @if let Some(t) = &r.target { " → " span.target { (t) } }
                    }
                    td.mode { (r.mode) } td { (r.owner) } td.num { (r.size) } td { (r.mtime) }
                } } }
            }
            @if l.pages > 1 { nav.pages {
                @if l.page > 1 { a id="prev" href={ (dir_url) "?page=" (l.page - 1) } { "← previous" } " " }
                @if l.page < l.pages { a id="next" href={ (dir_url) "?page=" (l.page + 1) } { "next →" } }
            } }
        },
    )
}

/// One version of a file across a host's snapshots.
pub struct VersionRow {
    /// The snapshot's stable name (linked) and tier names.
    pub snapshot: String,
    /// Its tier positions.
    pub positions: Vec<String>,
    /// Size, shown.
    pub size: String,
    /// Modification time, UTC.
    pub mtime: String,
    /// Whether its content differs from the next older snapshot's (or it is the oldest).
    pub changed: bool,
}

/// A file's page: its attributes, the download link, and its versions.
pub struct FilePage<'a> {
    /// Where.
    pub place: Place<'a>,
    /// The row the listing shows for it.
    pub row: ListRow,
    /// The same path in each of the host's snapshots that has it, newest first.
    pub versions: Vec<VersionRow>,
}

/// A file's page.
pub fn file(viewer: &Viewer<'_>, f: &FilePage<'_>) -> Markup {
    let name = f
        .place
        .names
        .last()
        .map(|n| display_name(n))
        .unwrap_or_default();
    let host = encode_segment(f.place.host.as_bytes());
    let tail = encode_path(f.place.names.iter().map(Vec::as_slice));
    layout(
        &name,
        Some(viewer),
        html! {
            (f.place.crumbs())
            h1 { (name) }
            table.attrs {
                tr { th { "Mode" } td { (f.row.mode) } }
                tr { th { "Owner" } td { (f.row.owner) } }
                tr { th { "Size" } td { (f.row.size) } }
                tr { th { "Modified" } td { (f.row.mtime) } }
                @if let Some(t) = &f.row.target { tr { th { "Target" } td.target { (t) } } }
            }
            @if !f.row.dir && f.row.target.is_none() {
                p.actions { a id="download" href=(f.place.download_url()) { "Download" } }
            }
            h2 { "Versions" }
            table.versions {
                thead { tr { th { "Snapshot" } th { "Tier names" } th.num { "Size" } th { "Modified" } th { "" } } }
                tbody { @for v in &f.versions { tr {
                    td { a href={ "/browse/" (host) "/" (encode_segment(v.snapshot.as_bytes())) "/" (tail) } { (v.snapshot) } }
                    td { (v.positions.join(" ")) }
                    td.num { (v.size) } td { (v.mtime) }
                    td { @if v.changed { "changed" } }
                } } }
            }
        },
    )
}

/// An account's usage against its allocation.
pub struct UsageRow {
    /// Account.
    pub account: String,
    /// Stored bytes it references, shown.
    pub used: String,
    /// Its allocation, shown.
    pub allocation: String,
    /// Percent of the allocation used.
    pub percent: f64,
    /// Hosts.
    pub hosts: usize,
}

fn usage_table(rows: &[UsageRow]) -> Markup {
    html! {
        table.usage {
            thead { tr { th { "Account" } th.num { "Hosts" } th.num { "Stored" } th.num { "Allocation" } th.num { "Used" } } }
            tbody { @for r in rows { tr class=[(r.percent > 100.0).then_some("over")] {
                td { (display_name(r.account.as_bytes())) } td.num { (r.hosts) }
                td.num { (r.used) } td.num { (r.allocation) } td.num { (format!("{:.0} %", r.percent)) }
            } } }
        }
    }
}

/// Usage of the user's account (an operator's: every account), with its chart over time.
pub fn usage(viewer: &Viewer<'_>, rows: &[UsageRow]) -> Markup {
    layout(
        "Usage",
        Some(viewer),
        html! {
            h1 { "Usage" }
            (usage_table(rows))
            h2 { "Stored bytes over time" }
            p.chart { img id="usage-chart" src="/chart/usage.svg" alt="stored bytes over time"; }
        },
    )
}

/// A host that is not OK, for the operator.
pub struct ProblemRow {
    /// Host.
    pub host: String,
    /// Account.
    pub account: String,
    /// State label.
    pub state: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// The operator's view of the fleet.
pub struct FleetView {
    /// Every account's usage.
    pub accounts: Vec<UsageRow>,
    /// Hosts not OK, worst first.
    pub problems: Vec<ProblemRow>,
    /// Hosts checked.
    pub hosts: usize,
    /// Last runs: what, when, how it went.
    pub runs: Vec<(String, String, String)>,
}

/// The operator's page: accounts against allocations, hosts stale or failing with their
/// causes, the last runs, and charts of stored bytes and pull durations.
pub fn operator(viewer: &Viewer<'_>, v: &FleetView) -> Markup {
    layout(
        "Operator",
        Some(viewer),
        html! {
            h1 { "Fleet" }
            h2 { "Hosts stale or failing (" (v.problems.len()) " of " (v.hosts) ")" }
            @if v.problems.is_empty() { p id="all-ok" { "Every host is OK." } } @else {
                table.problems {
                    thead { tr { th { "Host" } th { "Account" } th { "State" } th { "Cause" } } }
                    tbody { @for p in &v.problems { tr {
                        td { a href={ "/host/" (encode_segment(p.host.as_bytes())) } { (display_name(p.host.as_bytes())) } }
                        td { (display_name(p.account.as_bytes())) }
                        td { span class={ "state " (p.state.to_lowercase()) } { (p.state) } }
                        td.problem { (p.problem) }
                    } } }
                }
            }
            h2 { "Last runs" }
            table.runs {
                thead { tr { th { "Job" } th { "When" } th { "Outcome" } } }
                tbody { @for (what, when, how) in &v.runs { tr { td { (what) } td { (when) } td { (how) } } } }
            }
            h2 { "Accounts" }
            (usage_table(&v.accounts))
            h2 { "Charts" }
            p.chart { img id="usage-chart" src="/chart/usage.svg" alt="stored bytes over time"; }
            p.chart { img id="pulls-chart" src="/chart/pulls.svg" alt="pull durations over time"; }
        },
    )
}

/// One line of the audit log as the operator reads it.
pub struct AuditRow {
    /// When, UTC.
    pub at: String,
    /// Client address.
    pub address: String,
    /// `login`, `logout`, `download`.
    pub event: String,
    /// Who.
    pub user: String,
    /// The rest: outcome, or what was downloaded.
    pub detail: String,
}

/// The newest records of the audit log.
pub fn audit(viewer: &Viewer<'_>, rows: &[AuditRow], unreadable: usize) -> Markup {
    layout(
        "Audit log",
        Some(viewer),
        html! {
            h1 { "Audit log" }
            p { "The newest " (rows.len()) " records, newest first."
                @if unreadable > 0 { " " (unreadable) " lines could not be read." } }
            table.audit {
                thead { tr { th { "When" } th { "Address" } th { "Event" } th { "User" } th { "Detail" } } }
                tbody { @for r in rows { tr {
                    td { (r.at) } td { (r.address) } td { (r.event) }
                    td { (display_name(r.user.as_bytes())) } td.problem { (display_name(r.detail.as_bytes())) }
                } } }
            }
        },
    )
}

/// `drwxr-xr-x` for a kind letter and a mode.
pub fn mode_string(kind: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn viewer() -> Viewer<'static> {
        Viewer {
            name: "alice",
            role: "customer of acme".into(),
            csrf: "c5f",
            operator: false,
        }
    }

    #[test]
    fn hostile_names_render_as_text() {
        let names = vec![b"<script>alert(1)</script>\x1b[2J".to_vec()];
        let page = listing(
            &viewer(),
            &Listing {
                place: Place {
                    host: "web1",
                    snapshot: "daily.1",
                    names: &names,
                },
                rows: vec![ListRow {
                    name: b"\"><img src=x onerror=alert(1)>".to_vec(),
                    mode: mode_string('-', 0o644),
                    owner: "0:0".into(),
                    size: "1".into(),
                    mtime: "now".into(),
                    dir: false,
                    target: Some("<b>".into()),
                }],
                total: 1,
                page: 1,
                pages: 1,
            },
        )
        .into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains('\x1b'));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J"));
        assert!(page.contains("%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"));
    }

    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(mode_string('d', 0o755), "drwxr-xr-x");
        assert_eq!(mode_string('-', 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string('-', 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string('d', 0o1777), "drwxrwxrwt");
    }
}
