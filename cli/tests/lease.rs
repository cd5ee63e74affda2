//! The writer lease and the repository on a store with AWS S3's conditional writes
//! (moto's server on 127.0.0.1, tests/src/moto.rs): where `If-None-Match: *` and `If-Match`
//! are honoured, two servers racing for the lease cannot both take it — the one whose
//! conditional write comes second is refused, naming the other. The race is made
//! deterministic with the `XSTORE_PAUSE` test hook: the first server stops between reading
//! the lease and writing it while the second takes it. (Garage ignores both headers; there
//! the guarantee is the read-back's, ARCHITECTURE.md §Object store.)
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{last_json, stderr, Paused};
use xstore_tests::moto::Moto;
use xstore_tests::{assert_same_tree, make_fixture, restored_path};

fn xs_ok(m: &Moto, repo: &Path, args: &[&str]) -> String {
    common::ok_with_env(repo, &m.env(), args)
}

fn init(m: &Moto, repo: &Path, prefix: &str, extra: &[&str]) {
    let url = format!("s3://{}/{prefix}", m.bucket);
    let endpoint = m.endpoint();
    let mut args = vec![
        "init",
        "-q",
        "--store",
        &url,
        "--endpoint",
        &endpoint,
        "--region",
        &m.region,
    ];
    args.extend_from_slice(extra);
    xs_ok(m, repo, &args);
}

/// `args` started with the pause hook at `point` (and more environment); returns once the
/// command waits there.
fn paused(
    m: &Moto,
    repo: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    point: &str,
    file: &Path,
) -> Paused {
    let mut cmd = common::xstore_command(repo, &m.env(), args);
    cmd.envs(env.iter().copied());
    Paused::start(cmd, point, file)
}

/// Another server's lease as it writes one (FORMAT.md §Object store): pid 7 on `host`.
fn foreign_lease(host: &str, heartbeat_ns: i64, expires_ns: i64) -> serde_json::Value {
    serde_json::json!({
        "holder": format!("pid 7 on host {host} (/srv/old)"),
        "machine": host,
        "directory": "/srv/old",
        "token": format!("{:032x}", heartbeat_ns),
        "heartbeat_ns": heartbeat_ns,
        "expires_ns": expires_ns,
    })
}

fn lease_of(m: &Moto, prefix: &str) -> Option<serde_json::Value> {
    m.get(&format!("{prefix}/lease"))
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

/// Two directories attached to `prefix`; the first server stops between reading the lease
/// and writing it, the second takes the lease and stops holding it; then the first goes on.
/// Asserts that the first is refused naming the second, that the second's lease was not
/// overwritten, and that the second's backup commits and restores exactly.
fn race_for_the_lease(m: &Moto, w: &Path, prefix: &str) {
    let (first, second) = (w.join(format!("{prefix}-1")), w.join(format!("{prefix}-2")));
    let src = w.join(format!("{prefix}-src"));
    make_fixture(&src, 31);
    init(m, &first, prefix, &[]);
    init(m, &second, prefix, &[]);
    let s = src.to_str().unwrap();
    let backup = ["backup", "-q", "--host", "h", s];
    let slow = paused(
        m,
        &first,
        &backup,
        &[],
        "lease-before-write",
        &w.join(format!("{prefix}-1.pause")),
    );
    let fast = paused(
        m,
        &second,
        &backup,
        &[],
        "lease-held",
        &w.join(format!("{prefix}-2.pause")),
    );
    let held = lease_of(m, prefix).unwrap();
    let fast_pid = fast.pid();
    assert!(
        held["holder"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pid {fast_pid} ")),
        "{held}"
    );

    let out = slow.resume();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    assert!(
        lines[0].contains(&format!("pid {fast_pid} "))
            && lines[0].contains(&format!("s3://{}/{prefix}/lease", m.bucket)),
        "names the holder and its lease: {}",
        lines[0]
    );
    assert_eq!(
        lease_of(m, prefix).as_ref(),
        Some(&held),
        "the refused server wrote over the holder's lease"
    );

    let out = fast.resume();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lease_of(m, prefix), None, "released at the end");
    let snapshots = last_json(xs_ok(m, &second, &["--json", "snapshots"]).as_bytes());
    assert_eq!(snapshots.as_array().unwrap().len(), 1);
    let target = w.join(format!("{prefix}-restored"));
    xs_ok(
        m,
        &second,
        &[
            "restore",
            "--trusted-specials",
            "-q",
            "h@latest",
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src, &restored_path(&target, &src), false);
    xs_ok(m, &second, &["check", "--read-data"]);
}

#[test]
fn two_servers_taking_an_absent_lease_at_once_on_a_store_with_conditional_writes_one_is_refused() {
    let w = tempfile::tempdir().unwrap();
    let m = Moto::start(&w.path().join("moto"));
    // Both read "no lease"; the second's If-None-Match: * write lands first.
    race_for_the_lease(&m, w.path(), "absent");
}

#[test]
fn two_servers_taking_over_an_expired_lease_at_once_on_a_store_with_conditional_writes_one_is_refused(
) {
    let w = tempfile::tempdir().unwrap();
    let m = Moto::start(&w.path().join("moto"));
    // A server that died long ago: both read its lease and ETag; the second's If-Match
    // write replaces it first, so the first one's If-Match no longer matches.
    let dead = foreign_lease("gone", 1_000_000_000, 2_000_000_000);
    m.put("expired/lease", dead.to_string().as_bytes());
    race_for_the_lease(&m, w.path(), "expired");
}

/// A repository on `prefix` (1 MiB packs) whose only snapshot left is of `src`, made from
/// fixture `seed`, after a forget of the one that also held a 3 MiB file: gc has packs to
/// rewrite or delete.
fn with_a_forgotten_file(m: &Moto, repo: &Path, src: &Path, prefix: &str, seed: u64) {
    make_fixture(src, seed);
    init(m, repo, prefix, &["--pack-size-mib", "1"]);
    let s = src.to_str().unwrap();
    xs_ok(m, repo, &["backup", "-q", "--host", "h", s]);
    let doomed = src.join("doomed.bin");
    std::fs::write(&doomed, xstore_tests::seeded_bytes(seed, 3 << 20)).unwrap();
    xs_ok(m, repo, &["backup", "-q", "--host", "h", s]);
    std::fs::remove_file(&doomed).unwrap();
    xs_ok(m, repo, &["backup", "-q", "--host", "h", s]);
    xs_ok(m, repo, &["forget", "--host", "h", "--keep-last", "1"]);
}

/// Writes `other` over the lease of `prefix` and waits for a few of the holder's 100 ms
/// heartbeats to find it.
fn replace_lease(m: &Moto, prefix: &str, other: &serde_json::Value) {
    m.put(&format!("{prefix}/lease"), other.to_string().as_bytes());
    std::thread::sleep(Duration::from_millis(800));
}

/// `out` failed with exit 1 and one error line naming the lease of `prefix` and saying each
/// of `says`.
fn assert_refused_for_the_lost_lease(out: &Output, prefix: &str, says: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    let lease = format!("s3://xstore-test/{prefix}/lease");
    for needle in std::iter::once(lease.as_str()).chain(says.iter().copied()) {
        assert!(lines[0].contains(needle), "{needle:?} not in {}", lines[0]);
    }
}

/// What a lost lease's error says of the other holder, `foreign_lease("other", …)`.
const TAKEN_BY_OTHER: &str = "pid 7 on host other (/srv/old) took the writer lease";

#[test]
fn backup_forget_gc_restore_and_check_on_a_store_with_aws_semantics() {
    let w = tempfile::tempdir().unwrap();
    let m = Moto::start(&w.path().join("moto"));
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    with_a_forgotten_file(&m, &repo, &src, "aws", 32);
    let gc = |args: &[&str]| {
        let mut a = vec!["--json", "gc", "--max-dead", "0%"];
        a.extend_from_slice(args);
        last_json(xs_ok(&m, &repo, &a).as_bytes())
    };
    let first = gc(&[]);
    let retired =
        first["packs_rewritten"].as_u64().unwrap() + first["packs_deleted"].as_u64().unwrap();
    assert!(retired > 0, "the 3 MiB file's packs are dead: {first}");
    let second = gc(&["--grace", "0s"]);
    assert!(
        second["retired_deleted"].as_u64().unwrap() >= retired,
        "{second}"
    );
    assert_eq!(second["uploads_aborted"].as_u64(), Some(0), "{second}");
    let target = w.path().join("restored");
    xs_ok(
        &m,
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "-q",
            "h@latest",
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src, &restored_path(&target, &src), false);
    xs_ok(&m, &repo, &["check", "--read-data"]);
}

/// A backup holds its lease (heartbeats every 100 ms) while `replace` writes another version
/// of it, made from the holder's; then the backup goes on. Asserts that it commits nothing,
/// removes its packs, names the other holder in one line, and leaves the other's lease.
fn lease_replaced_while_held(
    prefix: &str,
    replace: impl Fn(&serde_json::Value) -> serde_json::Value,
) {
    let w = tempfile::tempdir().unwrap();
    let m = Moto::start(&w.path().join("moto"));
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 33);
    init(&m, &repo, prefix, &[]);
    let s = src.to_str().unwrap();
    // The backup stops right after taking the lease.
    let writer = paused(
        &m,
        &repo,
        &["backup", "-q", "--host", "h", s],
        &[("XSTORE_LEASE_HEARTBEAT_MS", "100")],
        "lease-held",
        &w.path().join("writer.pause"),
    );
    let other = replace(&lease_of(&m, prefix).unwrap());
    replace_lease(&m, prefix, &other);
    assert_eq!(
        lease_of(&m, prefix).as_ref(),
        Some(&other),
        "not renewed over"
    );

    let out = writer.resume();
    assert_refused_for_the_lost_lease(&out, prefix, &[TAKEN_BY_OTHER, "nothing was committed"]);
    assert_eq!(lease_of(&m, prefix).as_ref(), Some(&other), "left alone");
    assert_eq!(
        m.keys(&format!("{prefix}/packs/")),
        Vec::<String>::new(),
        "the failed backup's packs are removed"
    );
    let snapshots = last_json(xs_ok(&m, &repo, &["--json", "snapshots"]).as_bytes());
    assert_eq!(snapshots.as_array().unwrap().len(), 0);
}

/// Another server takes the lease (as one that judged it expired would): the next heartbeat
/// reads its token.
#[test]
fn a_writer_whose_lease_another_server_took_meanwhile_commits_nothing_and_leaves_that_lease() {
    lease_replaced_while_held("taken", |_| {
        foreign_lease(
            "other",
            xstore::now_ns(),
            xstore::now_ns() + 600_000_000_000,
        )
    });
}

/// The lease is replaced by a version that still carries this writer's token, as when
/// another server's write lands between a heartbeat's read and its renewal: the read cannot
/// tell, only the renewal's `If-Match` can, and the store refuses it. (With an
/// unconditional renewal the backup commits: the test can fail.)
#[test]
fn a_writer_whose_renewal_the_store_refuses_commits_nothing_and_leaves_the_other_lease() {
    lease_replaced_while_held("renewal", |held| {
        let mut other = foreign_lease(
            "other",
            xstore::now_ns(),
            xstore::now_ns() + 600_000_000_000,
        );
        other["token"] = held["token"].clone();
        other
    });
}

/// gc committed its rewrite under the lease, then another server takes the lease before gc
/// deletes the retired packs (the `gc-before-delete` pause): gc deletes none of them, fails
/// with one line naming the other holder, and leaves the other's lease. (Another server that
/// attached with `repair index` may have found those packs.)
#[test]
fn gc_whose_lease_another_server_took_deletes_no_retired_pack() {
    let w = tempfile::tempdir().unwrap();
    let m = Moto::start(&w.path().join("moto"));
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    with_a_forgotten_file(&m, &repo, &src, "gc-taken", 34);
    let before = m.keys("gc-taken/packs/");

    let gc = paused(
        &m,
        &repo,
        &["gc", "--max-dead", "0%", "--grace", "0s"],
        &[("XSTORE_LEASE_HEARTBEAT_MS", "100")],
        "gc-before-delete",
        &w.path().join("gc.pause"),
    );
    let other = foreign_lease(
        "other",
        xstore::now_ns(),
        xstore::now_ns() + 600_000_000_000,
    );
    replace_lease(&m, "gc-taken", &other);
    let out = gc.resume();
    assert_refused_for_the_lost_lease(
        &out,
        "gc-taken",
        &[
            TAKEN_BY_OTHER,
            "retired packs not yet deleted are left for a later gc",
        ],
    );
    let after = m.keys("gc-taken/packs/");
    for key in before.iter().filter(|k| k.ends_with(".pack")) {
        assert!(after.contains(key), "{key} was deleted");
    }
    assert_eq!(
        lease_of(&m, "gc-taken").as_ref(),
        Some(&other),
        "left alone"
    );
}

/// A backup whose lease ran out without a renewal (here: a 1 s lease and no heartbeat in
/// time, as when the store did not take them) commits nothing: another server may have
/// taken the lease meanwhile. One line says when it ran out; its packs are removed.
#[test]
fn a_writer_whose_lease_ran_out_unrenewed_commits_nothing() {
    let w = tempfile::tempdir().unwrap();
    let m = Moto::start(&w.path().join("moto"));
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 35);
    init(&m, &repo, "ran-out", &[]);
    let s = src.to_str().unwrap();
    let writer = paused(
        &m,
        &repo,
        &["backup", "-q", "--host", "h", s],
        &[
            ("XSTORE_LEASE_MS", "1000"),
            ("XSTORE_LEASE_HEARTBEAT_MS", "3600000"),
        ],
        "lease-held",
        &w.path().join("writer.pause"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = writer.resume();
    assert_refused_for_the_lost_lease(
        &out,
        "ran-out",
        &[
            "this server's writer lease ran out at",
            "without a renewal",
            "nothing was committed",
        ],
    );
    assert_eq!(
        m.keys("ran-out/packs/"),
        Vec::<String>::new(),
        "the failed backup's packs are removed"
    );
    let snapshots = last_json(xs_ok(&m, &repo, &["--json", "snapshots"]).as_bytes());
    assert_eq!(snapshots.as_array().unwrap().len(), 0);
    // The next backup takes the lease again and commits.
    xs_ok(&m, &repo, &["backup", "-q", "--host", "h", s]);
    let snapshots = last_json(xs_ok(&m, &repo, &["--json", "snapshots"]).as_bytes());
    assert_eq!(snapshots.as_array().unwrap().len(), 1);
}
