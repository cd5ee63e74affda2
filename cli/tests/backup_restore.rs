//! End-to-end through the `xstore` binary: exact round trips, incremental backups, browsing.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{json, ok, stderr, xstore};
use xstore_tests::{assert_same_tree, make_fixture, restored_path};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn backup_and_restore_are_exact() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src, dst) = (
        work.path().join("repo"),
        work.path().join("src"),
        work.path().join("dst"),
    );
    make_fixture(&src, 1);
    // A socket is skipped with a note, not an error.
    let _sock = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    ok(&repo, &["init"]);
    let snap = json(&repo, &["backup", "--host", "web1", src.to_str().unwrap()]);
    assert_eq!(snap["status"], "complete", "{snap}");
    assert_eq!(snap["stats"]["skipped"], 1);
    let out = ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "web1@latest",
            dst.to_str().unwrap(),
        ],
    );
    assert!(out.contains("restored snapshot"), "{out}");
    // Removing the socket changes the directory's mtime; put back the one that was backed up.
    let m = fs::metadata(&src).unwrap();
    fs::remove_file(src.join("socket")).unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: m.mtime(),
        tv_nsec: m.mtime_nsec() as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &src,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    assert_same_tree(&src, &restored_path(&dst, &src), is_root());
    // Sparse files come back sparse.
    let sparse = fs::metadata(restored_path(&dst, &src).join("sparse.img")).unwrap();
    assert!(sparse.blocks() * 512 < sparse.len() / 2, "hole was filled");
    assert!(ok(&repo, &["check", "--read-data"]).contains("no problems"));
}

#[test]
fn incremental_backup_reads_only_changed_files() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 2);
    ok(&repo, &["init"]);
    let first = json(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    let second = json(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    assert_eq!(second["stats"]["bytes_read"], 0, "{second}");
    // Only the synthetic root can change (the system temp directory above the source has a
    // new mtime as other tests run); every tree below it is the same blob.
    assert!(
        second["stats"]["new_blobs"].as_u64().unwrap() <= 1,
        "{second}"
    );
    assert_eq!(second["parent"], first["id"]);

    // Same size and same mtime, different content: only ctime and the inode tell.
    let p = src.join("small.txt");
    let before = fs::metadata(&p).unwrap();
    let replacement = src.join("small.new");
    fs::write(&replacement, b"HELLO 2\n").unwrap();
    assert_eq!(before.len(), 8);
    fs::rename(&replacement, &p).unwrap();
    let mtime = rustix::fs::Timespec {
        tv_sec: before.mtime(),
        tv_nsec: before.mtime_nsec() as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &p,
        &rustix::fs::Timestamps {
            last_access: mtime,
            last_modification: mtime,
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let third = json(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    assert_eq!(third["stats"]["files_read"], 1, "{third}");
    assert_eq!(third["stats"]["bytes_read"], 8);
    let id = third["id"].as_str().unwrap();
    let cat = xstore(
        &repo,
        &[
            "cat",
            &id[..12],
            &format!("{}/small.txt", src.canonicalize().unwrap().display()),
        ],
    );
    assert_eq!(cat.stdout, b"HELLO 2\n");

    let diff = ok(&repo, &["diff", first["id"].as_str().unwrap(), id]);
    assert!(
        diff.lines()
            .any(|l| l.starts_with("M ") && l.ends_with("/small.txt")),
        "{diff}"
    );
    assert!(!diff.contains("random.bin"), "{diff}");
    let dst = work.path().join("dst");
    ok(
        &repo,
        &["restore", "--trusted-specials", id, dst.to_str().unwrap()],
    );
    assert_same_tree(&src, &restored_path(&dst, &src), is_root());
    ok(&repo, &["check"]);
}

#[test]
fn listing_and_subpath_restore() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 3);
    ok(&repo, &["init"]);
    ok(
        &repo,
        &[
            "backup",
            "--host",
            "web1.example.net",
            src.to_str().unwrap(),
        ],
    );
    let abs = src.canonicalize().unwrap();
    let sub = format!("{}/sub", abs.display());
    let ls = ok(&repo, &["ls", "web1.example.net@latest", &sub]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("d") && l.ends_with(" deeper")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.contains("link-up -> ../../../../outside")),
        "{ls}"
    );
    let ls_json = json(&repo, &["ls", "latest", &sub]);
    assert!(ls_json
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "random.bin" && e["size"] == 3 * 1024 * 1024 + 123));
    let snaps = json(&repo, &["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["host"], "web1.example.net");

    let dst = work.path().join("dst");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "latest",
            dst.to_str().unwrap(),
            "--path",
            &sub,
        ],
    );
    assert_same_tree(&src.join("sub"), &dst.join("sub"), is_root());
    let stats = json(&repo, &["stats"]);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.0, "{stats}");
    // Where the bytes go, per kind of live blob: their raw bytes add up to the unique bytes,
    // their stored bytes to no more than the packs hold; one snapshot record, trees for the
    // directories, no chunk list (no file has that many chunks), no bundle (only compact
    // writes them), and the file data (random.bin's 3 MiB stored once) dominating.
    let kinds = stats["by_kind"].as_array().unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["data", "tree", "chunklist", "snapshot", "bundle"],
        "{stats}"
    );
    let sum = |field: &str| {
        kinds
            .iter()
            .map(|k| k[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        sum("raw_bytes"),
        stats["unique_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    assert_eq!(sum("blobs"), stats["blobs"].as_u64().unwrap(), "{stats}");
    assert!(
        sum("stored_bytes") <= stats["stored_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    let kind = |name: &str| kinds.iter().find(|k| k["kind"] == name).unwrap();
    assert_eq!(kind("snapshot")["blobs"], 1, "{stats}");
    assert_eq!(kind("bundle")["blobs"], 0, "{stats}");
    assert!(kind("tree")["blobs"].as_u64().unwrap() >= 4, "{stats}");
    let stored = |name: &str| kind(name)["stored_bytes"].as_u64().unwrap();
    assert!(stored("data") > 3 * 1024 * 1024, "{stats}");
    assert!(stored("data") > 100 * stored("tree"), "{stats}");
    assert_eq!(kind("chunklist")["blobs"], 0, "{stats}");
    let text = ok(&repo, &["stats"]);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("data ")),
        "{text}"
    );
}

#[test]
fn excludes_are_applied() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 4);
    ok(&repo, &["init"]);
    let abs = src.canonicalize().unwrap();
    let snap = json(
        &repo,
        &[
            "backup",
            "--host",
            "h",
            "--exclude",
            "*.bin",
            "--exclude",
            &format!("{}/sub/deeper", abs.display()),
            src.to_str().unwrap(),
        ],
    );
    let id = snap["id"].as_str().unwrap();
    let ls = ok(&repo, &["ls", id, &format!("{}/sub", abs.display())]);
    assert!(!ls.contains("random.bin") && !ls.contains("deeper"), "{ls}");
    assert!(ls.contains("log.txt"), "{ls}");
}

#[test]
fn restore_never_writes_through_planted_symlinks() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src, dst, outside) = (
        work.path().join("repo"),
        work.path().join("src"),
        work.path().join("dst"),
        work.path().join("outside"),
    );
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/file"), b"payload").unwrap();
    fs::create_dir_all(&outside).unwrap();
    ok(&repo, &["init"]);
    ok(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    // An attacker (or an earlier restore) left a symlink where a directory will be restored.
    let restored_src = restored_path(&dst, &src);
    fs::create_dir_all(&restored_src).unwrap();
    std::os::unix::fs::symlink(&outside, restored_src.join("dir")).unwrap();
    // With --overwrite never the symlink stays: the directory and everything below it fail
    // (exit 3, each path named once); the rest of the snapshot is restored.
    let dst_arg = dst.to_str().unwrap();
    let out = xstore(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "latest",
            dst_arg,
            "--overwrite",
            "never",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the target"
    );
    // By default the symlink itself is replaced by the real directory, never followed.
    let out = xstore(&repo, &["restore", "--trusted-specials", "latest", dst_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dir = fs::symlink_metadata(restored_src.join("dir")).unwrap();
    assert!(dir.is_dir());
    assert_eq!(fs::read(restored_src.join("dir/file")).unwrap(), b"payload");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the target"
    );
}

#[test]
fn json_event_stream_reports_status_then_summary() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    std::fs::create_dir(&src).unwrap();
    for i in 0..4 {
        std::fs::write(
            src.join(format!("f{i}")),
            xstore_tests::seeded_bytes(i, 8 << 20),
        )
        .unwrap();
    }
    ok(&repo, &["init"]);
    let run_every = |interval_ms: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xstore"))
            .env("XSTORE_REPO", &repo)
            .env("XSTORE_STATUS_INTERVAL_MS", interval_ms)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        events
    };
    let run = |args: &[&str]| run_every("1", args);
    for (args, operation) in [
        (
            vec!["--json", "backup", "--host", "h", src.to_str().unwrap()],
            "backup",
        ),
        (vec!["--json", "check", "--read-data"], "check"),
    ] {
        let events = run(&args);
        let (last, statuses) = events.split_last().unwrap();
        assert_eq!(last["type"], "summary", "{events:?}");
        assert!(!statuses.is_empty(), "no status event: {events:?}");
        for s in statuses {
            assert_eq!(s["type"], "status");
            assert_eq!(s["operation"], operation);
            let limit = s["total_bytes"].as_u64().unwrap_or(32 << 20);
            assert!(s["bytes"].as_u64().unwrap() <= limit, "{s}");
            assert!(s["elapsed_seconds"].as_f64().unwrap() > 0.0);
        }
    }
    // The second backup knows its total from the first: status events carry it.
    let events = run(&["--json", "backup", "--host", "h", src.to_str().unwrap()]);
    assert_eq!(events.last().unwrap()["stats"]["files_unchanged"], 4);
    for s in &events[..events.len() - 1] {
        assert_eq!(s["total_bytes"], 32 << 20, "{s}");
    }
    // An operation shorter than the interval still reports once, with its final counts.
    let events = run_every("600000", &["--json", "check", "--read-data"]);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (
            &events[0]["type"],
            &events[0]["operation"],
            &events[1]["type"]
        ),
        (&"status".into(), &"check".into(), &"summary".into()),
        "{events:?}"
    );
    assert!(events[0]["bytes"].as_u64().unwrap() > 0, "{events:?}");
}

/// Into a target that exists, each file's name is created with `O_EXCL` first and cleared
/// only when something stands there: a symlink (never followed), a fifo (never opened) and
/// a file are replaced; a directory in a file's place fails that path unless `--delete`.
#[test]
fn restore_replaces_what_stands_in_a_files_place_without_following_it() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src, dst, victim) = (
        work.path().join("repo"),
        work.path().join("src"),
        work.path().join("dst"),
        work.path().join("victim"),
    );
    fs::create_dir_all(&src).unwrap();
    for name in ["was-symlink", "was-fifo", "was-file", "was-dir"] {
        fs::write(src.join(name), format!("content of {name}")).unwrap();
    }
    fs::write(&victim, b"not the customer's").unwrap();
    ok(&repo, &["init"]);
    ok(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    let live = restored_path(&dst, &src);
    fs::create_dir_all(live.join("was-dir/inside")).unwrap();
    std::os::unix::fs::symlink(&victim, live.join("was-symlink")).unwrap();
    xstore_tests::make_fifo(&live.join("was-fifo"), 0o600);
    fs::write(
        live.join("was-file"),
        b"longer stale content than the snapshot's",
    )
    .unwrap();
    let dst_arg = dst.to_str().unwrap();
    let out = xstore(&repo, &["restore", "--trusted-specials", "latest", dst_arg]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let was_dir = live.join("was-dir").display().to_string();
    assert!(
        err.contains(&format!("{was_dir}: refused: a directory is in the way")),
        "{err}"
    );
    assert!(
        live.join("was-dir/inside").is_dir(),
        "kept without --delete"
    );
    for name in ["was-symlink", "was-fifo", "was-file"] {
        let m = fs::symlink_metadata(live.join(name)).unwrap();
        assert!(m.is_file(), "{name} is not a regular file");
        assert_eq!(
            fs::read(live.join(name)).unwrap(),
            format!("content of {name}").as_bytes()
        );
    }
    assert_eq!(fs::read(&victim).unwrap(), b"not the customer's");
    let out = xstore(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "latest",
            dst_arg,
            "--delete",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&src, &live, is_root());
}

/// As root, a file created in a directory this restore made is owned by us and that
/// directory's group; the chown is left out only when that is the entry's owner. Below a
/// set-group-ID directory of another group the new files would take its group: they are
/// chowned back to the snapshot's.
#[test]
fn restore_below_a_setgid_directory_keeps_the_snapshots_groups() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        eprintln!("skipped: needs root to own files as other users");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (repo, src, dst) = (
        work.path().join("repo"),
        work.path().join("src"),
        work.path().join("dst"),
    );
    fs::create_dir_all(src.join("www/css")).unwrap();
    fs::write(src.join("www/index.html"), b"<p>root's</p>").unwrap();
    fs::write(src.join("www/css/site.css"), b"p {}").unwrap();
    fs::write(src.join("www/customer.txt"), b"customer's").unwrap();
    let chown = |p: &Path, u: u32, g: u32| {
        rustix::fs::chownat(
            rustix::fs::CWD,
            p,
            Some(rustix::fs::Uid::from_raw(u)),
            Some(rustix::fs::Gid::from_raw(g)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap()
    };
    chown(&src.join("www/customer.txt"), 1234, 1234);
    ok(&repo, &["init"]);
    ok(&repo, &["backup", "--host", "h", src.to_str().unwrap()]);
    fs::create_dir_all(&dst).unwrap();
    chown(&dst, 0, 4321);
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o2775)).unwrap();
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "latest",
            dst.to_str().unwrap(),
        ],
    );
    let live = restored_path(&dst, &src);
    let owner = |rel: &str| {
        let m = fs::symlink_metadata(live.join(rel)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("www/index.html"), (0, 0));
    assert_eq!(owner("www/css/site.css"), (0, 0));
    assert_eq!(owner("www/customer.txt"), (1234, 1234));
    assert_same_tree(&src, &live, true);
}
