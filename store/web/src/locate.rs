//! From a URL tail (`web1/daily.1/etc/hosts`) to a node of the user's view, checked as a
//! path walk of the kernel checks it: the host must be one the view shows, the snapshot one
//! of that host's (by tier name, stable name, or id of at least 8 hex digits), and every
//! directory on the way searchable by the user. A host, snapshot or id of another account
//! is not found, exactly as one that does not exist: nothing answers whether it does.

use std::sync::Arc;

use axum::http::StatusCode;
use xstore_browse::access::{Caller, MAY_EXEC};
use xstore_browse::fsview::{FsError, FsView, NamedSnapshot, NodeAttr, HOSTS_DIR};

use crate::paths::{decode_segment, parse_names};
use crate::session::SessionUser;
use crate::state::{App, Failure};

/// A node the user asked for and may reach.
pub struct Located {
    /// The user's view.
    pub view: Arc<FsView>,
    /// Who the user acts as.
    pub caller: Caller,
    /// The host.
    pub host: String,
    /// The snapshot's name as the URL gave it.
    pub snapshot_segment: String,
    /// The snapshot.
    pub snapshot: NamedSnapshot,
    /// The names from the snapshot's root.
    pub names: Vec<Vec<u8>>,
    /// The node.
    pub attr: NodeAttr,
}

impl Located {
    /// The path inside the snapshot, `/`-separated bytes.
    pub fn path_bytes(&self) -> Vec<u8> {
        let mut p = Vec::new();
        for n in &self.names {
            p.push(b'/');
            p.extend_from_slice(n);
        }
        if p.is_empty() {
            p.push(b'/');
        }
        p
    }
}

/// The answer for a view error on a user's path.
pub fn fs_failure(e: FsError, what: &str) -> Failure {
    match e {
        FsError::NotFound | FsError::NotADirectory => Failure::not_found(what),
        FsError::PermissionDenied => {
            Failure::new(StatusCode::FORBIDDEN, format!("{what}: permission denied"))
        }
        other => Failure::internal("reading the repository", other),
    }
}

/// Finds `segment` among a host's snapshots: a tier position, a stable name, or an id
/// prefix of 8 or more hex digits that only one of them has.
pub fn find_snapshot(snapshots: Vec<NamedSnapshot>, segment: &str) -> Option<NamedSnapshot> {
    if let Some(i) = snapshots
        .iter()
        .position(|s| s.name == segment || s.positions.iter().any(|p| p == segment))
    {
        return snapshots.into_iter().nth(i);
    }
    let hex =
        segment.len() >= 8 && segment.len() <= 64 && segment.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return None;
    }
    let prefix = segment.to_ascii_lowercase();
    let mut matching = snapshots
        .into_iter()
        .filter(|s| s.snapshot.id.to_string().starts_with(&prefix));
    match (matching.next(), matching.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// Resolves `tail` (`host/snapshot/names…`, percent-encoded) for `user`. Blocking.
pub fn locate(app: &App, user: &SessionUser, tail: &str) -> Result<Located, Failure> {
    let bad = |e: crate::paths::PathError| Failure::new(StatusCode::BAD_REQUEST, e.to_string());
    let mut parts = tail.splitn(3, '/');
    let host_part = parts.next().unwrap_or_default();
    let snapshot_part = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let host = String::from_utf8(decode_segment(host_part).map_err(bad)?)
        .map_err(|_| Failure::not_found("host"))?;
    let snapshot_segment = String::from_utf8(decode_segment(snapshot_part).map_err(bad)?)
        .map_err(|_| Failure::not_found("snapshot"))?;
    let names = parse_names(rest).map_err(bad)?;
    let view = app.view(&App::scope(user))?;
    let caller = app.caller(user)?;
    let snapshots = view
        .host_snapshots(&host)
        .map_err(|e| fs_failure(e, "host"))?;
    if snapshots.is_empty() {
        return Err(Failure::not_found("host"));
    }
    let snapshot = find_snapshot(snapshots, &snapshot_segment)
        .ok_or_else(|| Failure::not_found("snapshot"))?;
    let mut path = format!("{HOSTS_DIR}/{host}/{}", snapshot.name).into_bytes();
    for n in &names {
        path.push(b'/');
        path.extend_from_slice(n);
    }
    let may_search = |a: &NodeAttr| caller.may(a, MAY_EXEC);
    let attr = view
        .resolve_mount_path(&path, Some(&may_search))
        .map_err(|e| fs_failure(e, "path"))?;
    Ok(Located {
        view,
        caller,
        host,
        snapshot_segment,
        snapshot,
        names,
        attr,
    })
}
