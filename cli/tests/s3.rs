//! Repositories whose packs live in a real Garage cluster on 127.0.0.1 (tests/src/garage.rs):
//! backup and restore through the bucket, a second machine attaching after the first is
//! gone, a node killed during a backup, the whole store down, credentials handled safely.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{stderr, Paused};
use xstore_tests::garage::Garage;
use xstore_tests::{assert_same_tree, make_fixture, restored_path};

/// `xstore` with the cluster's key in the environment.
fn xs(g: &Garage, repo: &Path, args: &[&str]) -> Output {
    common::xstore_with_env(repo, &g.env(), args)
}

fn xs_ok(g: &Garage, repo: &Path, args: &[&str]) -> String {
    common::ok_with_env(repo, &g.env(), args)
}

fn xs_json(g: &Garage, repo: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    common::last_json(xs_ok(g, repo, &a).as_bytes())
}

fn init(g: &Garage, repo: &Path, prefix: &str, extra: &[&str]) -> String {
    let url = format!("s3://{}/{prefix}", g.bucket);
    let endpoint = g.endpoint();
    let mut args = vec!["init", "--store", &url, "--endpoint", &endpoint];
    args.extend_from_slice(extra);
    xs_ok(g, repo, &args)
}

/// Files under `dir` that are pack files (none may be local in an S3 repository).
fn local_pack_files(dir: &Path) -> usize {
    let packs = dir.join("packs");
    fs::read_dir(&packs)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name().len() == 2)
                .map(|e| fs::read_dir(e.path()).map(|d| d.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// A credentials file for the cluster's key with this mode.
fn credentials_file(g: &Garage, dir: &Path, mode: u32) -> std::path::PathBuf {
    let cred = dir.join("s3.credentials");
    fs::write(
        &cred,
        format!(
            "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            g.key_id, g.secret
        ),
    )
    .unwrap();
    fs::set_permissions(&cred, fs::Permissions::from_mode(mode)).unwrap();
    cred
}

/// Restores `host`'s latest snapshot into `target` and compares it with `src`.
fn assert_restores(g: &Garage, repo: &Path, host: &str, src: &Path, target: &Path) {
    let snapshot = format!("{host}@latest");
    xs_ok(
        g,
        repo,
        &[
            "restore",
            "--trusted-specials",
            &snapshot,
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(src, &restored_path(target, src), false);
}

/// `check --read-data` finds nothing.
fn assert_check_clean(g: &Garage, repo: &Path) {
    let report = xs_json(g, repo, &["check", "--read-data"]);
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
}

fn the_only_error_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{err}");
    lines[0].to_string()
}

#[test]
fn backup_restore_check_and_attach_from_a_second_machine() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 7);
    let s = src.to_str().unwrap();
    let created = init(&g, &repo, "fleet/one", &["--pack-size-mib", "1"]);
    assert!(
        created.contains("packs in s3://xstore-test/fleet/one"),
        "{created}"
    );
    let store = fs::read_to_string(repo.join("store.toml")).unwrap();
    assert!(store.contains("bucket = \"xstore-test\""), "{store}");
    assert!(
        !store.contains(&g.secret),
        "the secret must not be written: {store}"
    );
    xs_ok(&g, &repo, &["backup", "-q", "--host", "web1", s]);
    fs::write(src.join("second.txt"), b"a second snapshot\n").unwrap();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "web1", s]);
    assert_eq!(
        local_pack_files(&repo),
        0,
        "packs must be in the bucket only"
    );
    let packs = pack_keys(&g, "fleet/one/");
    assert!(packs.len() >= 2, "{packs:?}");

    let target = w.path().join("restored");
    assert_restores(&g, &repo, "web1", &src, &target);
    assert_check_clean(&g, &repo);

    // The first server is gone with its index, journal and snapshot copies: a new directory
    // attached to the same prefix rebuilds the index from the bucket alone.
    fs::remove_dir_all(&repo).unwrap();
    let again = w.path().join("repo-on-another-machine");
    let attached = init(&g, &again, "fleet/one", &[]);
    assert!(attached.contains("attached"), "{attached}");
    assert!(attached.contains("2 snapshots"), "{attached}");
    let target2 = w.path().join("restored-again");
    assert_restores(&g, &again, "web1", &src, &target2);
    assert_check_clean(&g, &again);
    // ... and keeps backing up, deduplicating against what the bucket holds.
    let before = pack_keys(&g, "fleet/one/").len();
    xs_ok(&g, &again, &["backup", "-q", "--host", "web1", s]);
    let snap = xs_json(&g, &again, &["snapshots"]);
    assert_eq!(snap.as_array().unwrap().len(), 3, "{snap}");
    // New trees of the source's ancestors (their times change) and the snapshot record.
    assert!(pack_keys(&g, "fleet/one/").len() <= before + 2);
}

#[test]
fn an_unreachable_store_fails_the_backup_cleanly_and_the_next_one_works() {
    let w = tempfile::tempdir().unwrap();
    let mut g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 8);
    let s = src.to_str().unwrap();
    init(&g, &repo, "", &["--pack-size-mib", "1"]);
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    fs::write(
        src.join("new.bin"),
        xstore::chunker::seeded_bytes(5, 300_000),
    )
    .unwrap();

    g.kill_node(0);
    let out = xs(&g, &repo, &["backup", "-q", "--host", "h", s]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = the_only_error_line(&out);
    assert!(line.contains(&g.endpoint()), "names the endpoint: {line}");
    assert!(line.contains("Connection refused"), "says why: {line}");
    g.start_node(0);
    // Nothing was committed.
    assert_eq!(
        xs_json(&g, &repo, &["snapshots"]).as_array().unwrap().len(),
        1
    );

    // The store goes away while the backup uploads packs: the backup fails (or completes, if
    // it was faster); either way what it reports is what the repository holds.
    for i in 0..16u64 {
        fs::write(
            src.join(format!("big{i}.bin")),
            xstore::chunker::seeded_bytes(200 + i, 1 << 20),
        )
        .unwrap();
    }
    let backup = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &repo)
        .envs(g.env())
        .args(["backup", "-q", "--host", "h", s])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    g.kill_node(0);
    let out = backup.wait_with_output().unwrap();
    g.start_node(0);
    let committed = out.status.success();
    if !committed {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        the_only_error_line(&out);
    }
    let snapshots = xs_json(&g, &repo, &["snapshots"]).as_array().unwrap().len();
    assert_eq!(snapshots, if committed { 2 } else { 1 }, "{}", stderr(&out));

    // The repository is consistent and the next backup works.
    assert_check_clean(&g, &repo);
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    let target = w.path().join("restored");
    assert_restores(&g, &repo, "h", &src, &target);
}

#[test]
fn a_node_killed_during_a_backup_of_a_three_node_cluster_loses_nothing() {
    let w = tempfile::tempdir().unwrap();
    let mut g = Garage::start(&w.path().join("garage"), 3);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 9);
    for i in 0..24u64 {
        fs::write(
            src.join(format!("big{i}.bin")),
            xstore::chunker::seeded_bytes(100 + i, 1 << 20),
        )
        .unwrap();
    }
    let s = src.to_str().unwrap();
    init(&g, &repo, "three", &["--pack-size-mib", "1"]);
    let mut backup = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &repo)
        .envs(g.env())
        .args(["backup", "-q", "--host", "h", s])
        .spawn()
        .unwrap();
    // The backup writes a pack per MiB: the kill lands while packs are being uploaded.
    std::thread::sleep(std::time::Duration::from_millis(400));
    g.kill_node(2);
    assert!(backup.wait().unwrap().success());
    let target = w.path().join("restored");
    assert_restores(&g, &repo, "h", &src, &target);
    assert_check_clean(&g, &repo);
}

#[test]
fn credentials_come_from_an_owner_only_file_and_are_never_written() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let cred = credentials_file(&g, w.path(), 0o644);
    let repo = w.path().join("repo");
    let url = format!("s3://{}/creds", g.bucket);
    let endpoint = g.endpoint();
    let args = [
        "init",
        "--store",
        &url,
        "--endpoint",
        &endpoint,
        "--credentials",
        cred.to_str().unwrap(),
    ];
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = the_only_error_line(&out);
    assert!(
        line.contains("s3.credentials") && line.contains("chmod 600"),
        "{line}"
    );
    assert!(!repo.exists(), "a refused init leaves nothing behind");

    fs::set_permissions(&cred, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let src = w.path().join("src");
    make_fixture(&src, 3);
    let out = run(&["backup", "-q", "--host", "h", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for entry in walk(&repo) {
        let bytes = fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(g.secret.len())
                .any(|w| w == g.secret.as_bytes()),
            "the secret is in {}",
            entry.display()
        );
    }
    // A wrong key: one line naming the endpoint and the refusal, exit non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", w.path().join("other"))
        .env("AWS_ACCESS_KEY_ID", &g.key_id)
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .args(["init", "--store", &url, "--endpoint", &endpoint])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let line = the_only_error_line(&out);
    assert!(line.contains(&endpoint) && line.contains("403"), "{line}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The pack objects under `prefix` with their sizes (ListObjectsV2; not the journal's
/// markers beside them).
fn pack_objects(g: &Garage, prefix: &str) -> Vec<(String, u64)> {
    g.object_sizes(&format!("{prefix}packs/"))
        .into_iter()
        .filter(|(key, _)| key.ends_with(".pack"))
        .collect()
}

/// The keys of the pack objects under `prefix`.
fn pack_keys(g: &Garage, prefix: &str) -> Vec<String> {
    pack_objects(g, prefix)
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// Replaces object `key` of the bucket with `bytes` (curl's SigV4 signing: a client other
/// than the one under test, as an attacker or a faulty store would write).
fn put_object(g: &Garage, key: &str, bytes: &[u8]) {
    let body = tempfile::NamedTempFile::new().unwrap();
    fs::write(body.path(), bytes).unwrap();
    let upload = body.path().to_str().unwrap();
    g.signed_request(&format!("/{key}"), &["-T", upload], bytes);
}

#[test]
fn a_truncated_or_replaced_pack_object_is_a_typed_error_never_wrong_data() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 11);
    init(&g, &repo, "hostile", &[]);
    xs_ok(
        &g,
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    let packs = pack_keys(&g, "hostile/");
    assert!(!packs.is_empty());
    for (round, body) in [b"short".to_vec(), vec![0x5a; 4 << 20]]
        .into_iter()
        .enumerate()
    {
        for key in &packs {
            put_object(&g, key, &body);
        }
        let target = w.path().join(format!("restored{round}"));
        let out = xs(
            &g,
            &repo,
            &[
                "restore",
                "--trusted-specials",
                "h@latest",
                target.to_str().unwrap(),
            ],
        );
        let code = out.status.code();
        assert!(
            code.is_some() && code != Some(0) && code != Some(101),
            "{code:?}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{err}");
        let out = xs(&g, &repo, &["check", "--read-data"]);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    }
}

#[test]
fn a_second_server_on_the_same_prefix_is_refused_while_the_first_holds_the_lease() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let cred = credentials_file(&g, w.path(), 0o600);
    let (first, second) = (w.path().join("first"), w.path().join("second"));
    let src = w.path().join("src");
    make_fixture(&src, 12);
    let s = src.to_str().unwrap();
    let c = cred.to_str().unwrap();
    init(&g, &first, "leased", &["--credentials", c]);
    xs_ok(&g, &first, &["backup", "-q", "--host", "h", s]);
    init(&g, &second, "leased", &["--credentials", c]);

    // The first server writes (in this process: the credentials come from the file).
    let holder = xstore::Repository::open(&first).unwrap();
    let out = xs(&g, &second, &["backup", "-q", "--host", "h", s]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = the_only_error_line(&out);
    assert!(
        line.contains(&format!("pid {}", std::process::id()))
            && line.contains("s3://xstore-test/leased/lease")
            && line.contains("expires at"),
        "names the holder and its lease: {line}"
    );
    assert_eq!(
        xs_json(&g, &second, &["snapshots"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Released with the handle: the second server writes now.
    drop(holder);
    xs_ok(&g, &second, &["backup", "-q", "--host", "h", s]);
    // The first one's index does not know the second's packs: it refuses to write rather
    // than deleting or overwriting anything, and names the way back.
    let out = xs(&g, &first, &["backup", "-q", "--host", "h", s]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        the_only_error_line(&out).contains("repair index"),
        "{}",
        stderr(&out)
    );
    xs_ok(&g, &first, &["repair", "index"]);
    assert_eq!(
        xs_json(&g, &first, &["snapshots"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn gc_in_the_bucket_deletes_what_it_reports_after_the_grace_period() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 13);
    let s = src.to_str().unwrap();
    init(&g, &repo, "gc", &["--pack-size-mib", "1"]);
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    fs::write(
        src.join("doomed.bin"),
        xstore::chunker::seeded_bytes(77, 3 << 20),
    )
    .unwrap();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    fs::remove_file(src.join("doomed.bin")).unwrap();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    xs_ok(&g, &repo, &["forget", "--host", "h", "--keep-last", "1"]);
    let before = pack_keys(&g, "gc/").len();
    let first = xs_json(&g, &repo, &["gc", "--max-dead", "0%"]);
    let retired =
        first["packs_rewritten"].as_u64().unwrap() + first["packs_deleted"].as_u64().unwrap();
    assert!(retired > 0, "{first}");
    // Within the grace period the retired objects stay: a reader that started before gc
    // still finds them.
    assert_eq!(first["retired_deleted"].as_u64().unwrap(), 0, "{first}");
    let written = first["packs_written"].as_u64().unwrap() as usize;
    assert_eq!(pack_keys(&g, "gc/").len(), before + written, "{first}");
    let second = xs_json(&g, &repo, &["gc", "--grace", "0s"]);
    let deleted = second["retired_deleted"].as_u64().unwrap();
    assert!(deleted >= retired, "{second}");
    let written_again = second["packs_written"].as_u64().unwrap() as usize;
    assert_eq!(
        pack_keys(&g, "gc/").len(),
        before + written + written_again - deleted as usize,
        "{second}"
    );
    let target = w.path().join("restored");
    assert_restores(&g, &repo, "h", &src, &target);
    assert_check_clean(&g, &repo);
}

#[test]
fn a_pack_too_large_for_one_put_goes_up_in_parts_and_restores_exactly() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // 72 MiB of incompressible data in one 80 MiB pack: above the single-PUT limit (64 MiB).
    for i in 0..9u64 {
        fs::write(
            src.join(format!("part{i}.bin")),
            xstore::chunker::seeded_bytes(300 + i, 8 << 20),
        )
        .unwrap();
    }
    init(&g, &repo, "large", &["--pack-size-mib", "80"]);
    xs_ok(
        &g,
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    // A multipart upload's ETag ends in "-<parts>".
    let etags: Vec<String> = pack_keys(&g, "large/")
        .iter()
        .map(|key| {
            let out = g.signed_request(&format!("/{key}"), &["-I"], b"");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("etag:"))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        etags
            .iter()
            .any(|e| e.trim_end().trim_end_matches('"').contains("-5")),
        "no pack went up in 5 parts: {etags:?}"
    );
    assert_restores(&g, &repo, "h", &src, &w.path().join("restored"));
    assert_check_clean(&g, &repo);
}

#[test]
fn packs_deleted_behind_a_restores_back_fail_the_files_they_hold_and_nothing_else() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 19);
    let s = src.to_str().unwrap();
    init(&g, &repo, "gone", &["--pack-size-mib", "1"]);
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    let before: Vec<String> = pack_keys(&g, "gone/");
    let big = xstore::chunker::seeded_bytes(91, 6 << 20);
    fs::write(src.join("big.bin"), &big).unwrap();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    // The second backup's data packs (~1 MiB each; its trees went to a small pack of their
    // own) vanish, as a gc on another machine or an operator's mistake would make them.
    let doomed: Vec<String> = g
        .object_sizes("gone/packs/")
        .into_iter()
        .filter(|(key, size)| !before.contains(key) && *size > 256 << 10)
        .map(|(key, _)| key)
        .collect();
    assert!(doomed.len() >= 4, "{doomed:?}");
    for key in &doomed {
        g.signed_request(&format!("/{key}"), &["-X", "DELETE"], b"");
    }
    // The restore announces its reads; the read-ahead's fetches of those packs fail, and
    // the reads that wanted them fail as they would without it: typed, named, no hang.
    let target = w.path().join("restored");
    let out = xs(
        &g,
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "h@latest",
            target.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    // Exit 3: a partial restore. One line for the one file, naming the key and the status.
    assert_eq!(out.status.code(), Some(3), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let line = lines[0];
    assert!(
        line.contains("not restored: ") && line.contains("big.bin"),
        "{line}"
    );
    assert!(
        doomed.iter().any(|key| line.contains(key.as_str())),
        "{line}"
    );
    assert!(line.ends_with(": GET: 404 Not Found (NoSuchKey)"), "{line}");
    assert_eq!(line.matches("gone/packs/").count(), 1, "{line}");
    // Everything else restored exactly; big.bin is not left half-written.
    let snapshot_mtime = fs::metadata(&src).unwrap().modified().unwrap();
    fs::remove_file(src.join("big.bin")).unwrap();
    fs::File::open(&src)
        .unwrap()
        .set_modified(snapshot_mtime)
        .unwrap();
    assert_same_tree(&src, &restored_path(&target, &src), false);
}

/// The keys of the unfinished multipart uploads under `prefix` (ListMultipartUploads).
fn unfinished_uploads(g: &Garage, prefix: &str) -> Vec<String> {
    // In sorted order: curl signs the query as written, S3 canonicalises it sorted.
    let query = format!("?prefix={}&uploads=", prefix.replace('/', "%2F"));
    let out = g.signed_request(&query, &[], b"");
    let xml = String::from_utf8(out.stdout).unwrap();
    xml.split("<Upload>")
        .skip(1)
        .map(|item| {
            let from = item.find("<Key>").unwrap() + "<Key>".len();
            item[from..].split("</Key>").next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn an_upload_a_dead_server_left_unfinished_is_aborted_by_gc_on_the_next_one_after_the_grace_period()
{
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let (dead, next) = (w.path().join("dead"), w.path().join("next"));
    let src = w.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..9u64 {
        fs::write(
            src.join(format!("part{i}.bin")),
            xstore::chunker::seeded_bytes(500 + i, 8 << 20),
        )
        .unwrap();
    }
    let s = src.to_str().unwrap();
    // One 72 MiB data pack: a multipart upload (above the 64 MiB single-PUT limit).
    init(&g, &dead, "crash", &["--pack-size-mib", "80"]);
    let small = w.path().join("small");
    make_fixture(&small, 23);
    xs_ok(
        &g,
        &dead,
        &["backup", "-q", "--host", "h", small.to_str().unwrap()],
    );
    let killed = Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", &dead)
        .env("XSTORE_FAILPOINT", "s3-multipart-before-complete")
        .envs(g.env())
        .args(["backup", "-q", "--host", "h2", s])
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "{}", stderr(&killed));
    // Every part stored, the upload never completed: no listing of objects shows it.
    assert_eq!(unfinished_uploads(&g, "crash/").len(), 1);
    // The server dies with its journal (which named the pack); its lease runs out (deleted
    // here rather than waited for), and a new server attaches to the prefix.
    g.signed_request("/crash/lease", &["-X", "DELETE"], b"");
    init(&g, &next, "crash", &[]);
    // Within the grace period (the default, 24 h) the upload is left alone: it could be a
    // writer whose lease lapsed while it still ran.
    let first = xs_json(&g, &next, &["gc"]);
    assert_eq!(first["uploads_aborted"].as_u64(), Some(0), "{first}");
    assert_eq!(first["uploads_waiting"].as_u64(), Some(1), "{first}");
    assert_eq!(unfinished_uploads(&g, "crash/").len(), 1);
    let text = xs_ok(&g, &next, &["gc", "--grace", "0s"]);
    assert!(
        text.contains("unfinished uploads of crashed writers: 1 aborted, 0 waiting"),
        "{text}"
    );
    assert_eq!(unfinished_uploads(&g, "crash/"), Vec::<String>::new());
    // Nothing else was touched: the first snapshot restores, the next backup stores
    // everything and restores exactly.
    assert_restores(&g, &next, "h", &small, &w.path().join("old"));
    xs_ok(&g, &next, &["backup", "-q", "--host", "h2", s]);
    assert_eq!(unfinished_uploads(&g, "crash/"), Vec::<String>::new());
    assert_restores(&g, &next, "h2", &src, &w.path().join("restored"));
    assert_check_clean(&g, &next);
}

/// The cached metadata packs of a repository directory (`cache/packs/`).
fn cached_packs(repo: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(repo.join("cache/packs"))
        .map(|it| it.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn an_unchanged_re_backup_reads_its_parents_trees_from_the_local_cache_and_survives_its_loss() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let src = w.path().join("src");
    make_fixture(&src, 37);
    for d in 0..30 {
        let dir = src.join(format!("tree{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    let s = src.to_str().unwrap();
    init(&g, &repo, "cached", &["--pack-size-mib", "1"]);
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    let first_cached = cached_packs(&repo);
    assert!(!first_cached.is_empty(), "the trees' pack was kept");
    let gets = || g.requests(0, "GetObject");
    let before = gets();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    let with_cache = gets() - before;
    // Without the cache the same backup reads the parent's trees from the bucket.
    fs::remove_dir_all(repo.join("cache")).unwrap();
    let before = gets();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    let without_cache = gets() - before;
    assert!(
        with_cache < without_cache,
        "GETs with the cache {with_cache}, without {without_cache}"
    );
    // That backup fetched the parent's small trees pack whole and kept it: the next one is
    // as cheap as with the cache (a machine that attached to the bucket refills it so).
    assert!(!cached_packs(&repo).is_empty(), "refilled from the bucket");
    assert!(
        first_cached.iter().any(|p| p.exists()),
        "the first backup's trees pack is cached again: {first_cached:?}"
    );
    let before = gets();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    assert_eq!(gets() - before, with_cache);
    // A damaged cache file (a bad disk, a torn write) is detected, dropped and read from
    // the bucket: the backup and a restore are exact, and the bucket's copy checks clean.
    fs::write(src.join("tree3/f3"), b"changed").unwrap();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    let cached = cached_packs(&repo);
    assert!(!cached.is_empty());
    for path in &cached {
        let mut bytes = fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        fs::write(path, &bytes).unwrap();
    }
    fs::write(src.join("tree4/f4"), b"changed again").unwrap();
    xs_ok(&g, &repo, &["backup", "-q", "--host", "h", s]);
    assert_restores(&g, &repo, "h", &src, &w.path().join("restored"));
    assert_check_clean(&g, &repo);
}

/// The bytes of the pack objects under `prefix`.
fn pack_bytes(g: &Garage, prefix: &str) -> u64 {
    pack_objects(g, prefix)
        .into_iter()
        .map(|(_, size)| size)
        .sum()
}

/// A restore that located every chunk before a gc rewrote the packs holding them reads them
/// after that gc from the retired objects, which stay for the grace period; past it they go,
/// and the bucket then holds exactly the bytes fewer that the first gc reported freed.
/// (With `--grace 0s` on the first gc the restore fails: the test can fail.)
#[test]
fn gc_in_the_bucket_frees_what_it_reports_and_a_restore_running_through_it_restores_exactly() {
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let repo = w.path().join("repo");
    let (src, junk) = (w.path().join("src"), w.path().join("junk"));
    make_fixture(&src, 41);
    fs::write(
        src.join("big.bin"),
        xstore::chunker::seeded_bytes(42, 3 << 20),
    )
    .unwrap();
    fs::create_dir_all(&junk).unwrap();
    for j in 0..6 {
        let bytes = xstore::chunker::seeded_bytes(4200 + j, 512 << 10);
        fs::write(junk.join(format!("j{j}")), bytes).unwrap();
    }
    init(
        &g,
        &repo,
        "live",
        &["--pack-size-mib", "1", "--chunk-avg-kib", "16"],
    );
    // The kept snapshot's files share packs with junk that only the forgotten one held.
    common::snapshot_mixed_with_garbage_with_env(&repo, &g.env(), "h", &src, &junk);

    let target = w.path().join("restored");
    let cmd = common::xstore_command(
        &repo,
        &g.env(),
        &[
            "restore",
            "--trusted-specials",
            "-q",
            "h@latest",
            target.to_str().unwrap(),
        ],
    );
    let restore = Paused::start(cmd, "restore-located", &w.path().join("restore.pause"));

    let before = pack_bytes(&g, "live/");
    let first = xs_json(&g, &repo, &["gc", "--max-dead", "0%"]);
    assert!(first["packs_rewritten"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["retired_deleted"].as_u64().unwrap(), 0, "{first}");
    let freed = first["bytes_freed"].as_u64().unwrap();
    assert!(freed > 1 << 20, "{first}");
    let during = pack_bytes(&g, "live/");
    assert!(
        during > before,
        "the retired objects stay: {before} -> {during}"
    );

    let out = restore.resume();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&src, &restored_path(&target, &src), false);

    let second = xs_json(&g, &repo, &["gc", "--grace", "0s"]);
    assert_eq!(second["packs_written"].as_u64().unwrap(), 0, "{second}");
    let retired =
        first["packs_rewritten"].as_u64().unwrap() + first["packs_deleted"].as_u64().unwrap();
    assert!(
        second["retired_deleted"].as_u64().unwrap() >= retired,
        "{second}"
    );
    let after = pack_bytes(&g, "live/");
    assert_eq!(
        during - after,
        second["retired_bytes_deleted"].as_u64().unwrap(),
        "{second}"
    );
    assert_eq!(after, before - freed, "{first}");
    fs::remove_dir_all(&target).unwrap();
    assert_restores(&g, &repo, "h", &src, &target);
    assert_check_clean(&g, &repo);
}

/// An encrypted repository's bucket holds no plaintext: no marker, no file name, no plain
/// chunk id in any object. A new server attaches with the passphrase alone (no key file)
/// and restores exactly; a wrong passphrase attaches nothing.
#[test]
fn an_encrypted_bucket_reveals_nothing_and_attaches_with_a_passphrase_alone() {
    use xstore_tests::plaintext::{assert_nothing_readable, marked_tree, plain_chunk_ids};
    let w = tempfile::tempdir().unwrap();
    let g = Garage::start(&w.path().join("garage"), 1);
    let (repo, src) = (w.path().join("repo"), w.path().join("src"));
    let files = marked_tree(&src);
    let passphrase = (
        "XSTORE_PASSPHRASE",
        "a long passphrase for the bucket".to_string(),
    );
    let url = format!("s3://{}/sealed", g.bucket);
    let endpoint = g.endpoint();
    let mut env = g.env().to_vec();
    env.push(passphrase.clone());
    // The key file and a passphrase slot, made at init.
    let created = common::ok_with_env(
        &repo,
        &env,
        &["init", "--store", &url, "--endpoint", &endpoint],
    );
    assert!(
        created.contains("created encrypted repository"),
        "{created}"
    );
    xs_ok(
        &g,
        &repo,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    let bound = |name: &str| config["chunker"][name].as_u64().unwrap() as u32;
    let params = xstore::ChunkerParams::new(bound("min"), bound("avg"), bound("max")).unwrap();
    let ids = plain_chunk_ids(&params, &files);
    let objects = g.object_sizes("sealed/");
    assert!(
        objects.iter().any(|(k, _)| k.ends_with(".pack")),
        "{objects:?}"
    );
    assert!(
        objects.iter().any(|(k, _)| k == "sealed/keys.json"),
        "{objects:?}"
    );
    for (key, _) in &objects {
        let bytes = g.signed_request(&format!("/{key}"), &[], b"").stdout;
        assert_nothing_readable(key, &bytes, &ids);
    }

    // Another machine, no key file anywhere it looks: the passphrase attaches.
    let no_keys = w.path().join("no-keys");
    fs::create_dir(&no_keys).unwrap();
    let again = w.path().join("again");
    let mut env = g.env().to_vec();
    env.push(("XSTORE_KEY_DIR", no_keys.to_str().unwrap().to_string()));
    let mut wrong = env.clone();
    wrong.push(("XSTORE_PASSPHRASE", "not it".to_string()));
    let refused = common::xstore_with_env(
        &again,
        &wrong,
        &["init", "--store", &url, "--endpoint", &endpoint],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        the_only_error_line(&refused).contains("wrong passphrase"),
        "{}",
        stderr(&refused)
    );
    assert!(!again.exists(), "a refused attach leaves no directory");
    env.push(passphrase);
    let attached = common::ok_with_env(
        &again,
        &env,
        &["init", "--store", &url, "--endpoint", &endpoint],
    );
    assert!(attached.contains("attached"), "{attached}");
    let target = w.path().join("restored");
    common::ok_with_env(
        &again,
        &env,
        &["restore", "web1@latest", target.to_str().unwrap()],
    );
    assert_same_tree(&src, &restored_path(&target, &src), true);
    let report = common::last_json(
        common::ok_with_env(&again, &env, &["--json", "check", "--read-data"]).as_bytes(),
    );
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
}
