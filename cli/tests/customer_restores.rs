//! The restores an operator reaches for when a customer writes in: `find` (which snapshots hold
//! a path), `dump` (a file or directory as a stream), and restores into a live tree.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{json, ok, stderr, xstore};

/// Snapshot times are seconds apart at least: the tests order versions by them.
fn backup(repo: &Path, host: &str, src: &Path) -> String {
    let out = json(
        repo,
        &["backup", "-q", "--host", host, src.to_str().unwrap()],
    );
    out["id"].as_str().unwrap().to_string()
}

fn versions(found: &serde_json::Value, host: &str, path: &str) -> Vec<(String, String)> {
    let p = found["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["host"] == host && p["path"] == path)
        .unwrap_or_else(|| panic!("{host} {path} not found in {found}"));
    p["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["snapshot"].as_str().unwrap().to_string(),
                v["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The time of the `n`th version of the first path found.
fn found_time(found: &serde_json::Value, n: usize) -> i64 {
    found["paths"][0]["versions"][n]["time_ns"]
        .as_i64()
        .unwrap()
}

#[test]
fn find_lists_each_path_with_its_versions_across_snapshots_and_hosts() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    let shop = src.join("var/www/shop");
    fs::create_dir_all(&shop).unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("etc/conf{i}")), format!("setting {i}\n")).unwrap();
    }
    ok(&repo, &["init"]);
    let config = shop.join("config.php");
    // h1: v1, v1 (same), v2 (changed), deleted, v2 back.
    let mut h1 = Vec::new();
    fs::write(&config, b"<?php $db = 'one';").unwrap();
    h1.push(backup(&repo, "h1", &src));
    fs::write(shop.join("index.php"), b"<?php echo 1;").unwrap();
    h1.push(backup(&repo, "h1", &src));
    fs::write(&config, b"<?php $db = 'two';").unwrap();
    h1.push(backup(&repo, "h1", &src));
    fs::remove_file(&config).unwrap();
    let gap = backup(&repo, "h1", &src);
    fs::write(&config, b"<?php $db = 'two';").unwrap();
    h1.push(backup(&repo, "h1", &src));
    let h2 = backup(&repo, "h2", &src);

    let path = format!("{}/config.php", shop.display());
    let found = json(&repo, &["find", "config.php"]);
    let want: Vec<(String, String)> = h1
        .iter()
        .cloned()
        .zip(["first", "same", "changed", "same"].map(String::from))
        .collect();
    assert_eq!(versions(&found, "h1", &path), want);
    assert_eq!(
        versions(&found, "h2", &path),
        vec![(h2.clone(), "first".into())]
    );
    assert_eq!(found["paths"].as_array().unwrap().len(), 2, "{found}");
    assert!(!versions(&found, "h1", &path).iter().any(|(s, _)| *s == gap));
    // Sizes and tier positions come with each version.
    let v = &found["paths"][0]["versions"][0];
    assert_eq!(v["size"], 18);
    assert_eq!(v["kind"], "file");
    assert!(!v["positions"].as_array().unwrap().is_empty(), "{v}");

    // A full-path glob, one host, a time window.
    let found = json(&repo, &["find", "/**/www/shop/*.php", "--host", "h2"]);
    let paths: Vec<&str> = found["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec![path.as_str(), &*format!("{}/index.php", shop.display())]
    );
    // --since the third snapshot of h1: it and the three after it.
    let third = found_time(&json(&repo, &["find", "config.php"]), 2);
    let since = humantime::format_rfc3339_nanos(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(third as u64),
    )
    .to_string();
    let recent = json(&repo, &["find", "config.php", "--since", &since]);
    assert_eq!(recent["snapshots"], 4, "{since}");
    assert_eq!(
        versions(&recent, "h1", &path),
        vec![
            (h1[2].clone(), "first".into()),
            (h1[3].clone(), "same".into())
        ]
    );
    let all = json(
        &repo,
        &["find", "config.php", "--since", "2000-01-01T00:00:00Z"],
    );
    assert_eq!(all["snapshots"], 6);
    let out = xstore(&repo, &["find", "config.php", "--since", "yesterday-ish"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Nothing matches: exit 1, one line naming the pattern.
    let out = xstore(&repo, &["find", "wp-config.php"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wp-config.php"), "{err}");
    let out = xstore(&repo, &["find", "config.php", "--host", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1);

    // config.php is in h1's newest snapshot: not absent. A file deleted since shows the
    // first snapshot without it.
    let found = json(&repo, &["find", "config.php", "--host", "h1"]);
    assert!(found["paths"][0]["absent_since"].is_null(), "{found}");
    fs::remove_file(shop.join("index.php")).unwrap();
    let deleted = backup(&repo, "h1", &src);
    let found = json(&repo, &["find", "index.php", "--host", "h1"]);
    assert_eq!(
        found["paths"][0]["absent_since"]["snapshot"], deleted,
        "{found}"
    );
    let text = ok(&repo, &["find", "index.php", "--host", "h1"]);
    let last = text.lines().nth_back(1).unwrap();
    assert!(
        last.contains(&deleted[..8]) && last.ends_with("absent from this snapshot on"),
        "{text}"
    );
}

#[test]
fn find_reads_each_distinct_tree_once() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    for d in 0..10 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(dir.join("inner")).unwrap();
        for f in 0..10 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    ok(&repo, &["init"]);
    ok(&repo, &["tiers", "--set", "hourly=100"]);
    let rounds = 30;
    for r in 0..rounds {
        fs::write(src.join("d0/changing"), format!("round {r}")).unwrap();
        backup(&repo, "h", &src);
    }
    let found = json(&repo, &["find", "f3"]);
    assert_eq!(found["paths"].as_array().unwrap().len(), 10);
    for p in found["paths"].as_array().unwrap() {
        let v = p["versions"].as_array().unwrap();
        assert_eq!(v.len(), rounds);
        assert!(v.iter().skip(1).all(|v| v["change"] == "same"), "{p}");
    }
    // A snapshot has the directories from / down to src (its path), src, d0…d9 and their
    // inner directories; a later one only new trees on the way to d0.
    let depth = src.components().count() as u64;
    let first = depth + 20;
    let most = first + (rounds as u64 - 1) * (depth + 1);
    let read = found["trees_read"].as_u64().unwrap();
    assert!(
        read <= most,
        "{read} trees read, at most {most} are distinct"
    );
}

/// `tar -xf` of a dump equals a restore of the same path, metadata included (owners, ns
/// mtimes, modes, xattrs, hard links, devices, fifos, sparse files); zip holds the files,
/// directories and symlinks with their bytes, modes and mtimes.
#[test]
fn dump_archives_unpack_to_what_restore_writes() {
    use std::os::unix::fs::MetadataExt;
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    xstore_tests::make_fixture(&src, 7);
    ok(&repo, &["init"]);
    let id = backup(&repo, "h", &src);
    let src_path = src.canonicalize().unwrap();
    let in_snapshot = src_path.to_str().unwrap();
    let name = src_path.file_name().unwrap();

    let restored = work.path().join("restored");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            &id,
            restored.to_str().unwrap(),
            "--path",
            in_snapshot,
        ],
    );
    let archive = work.path().join("src.tar");
    let summary = json(
        &repo,
        &["dump", &id, in_snapshot, "-o", archive.to_str().unwrap()],
    );
    assert!(summary["files"].as_u64().unwrap() >= 8, "{summary}");
    let unpacked = work.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    xstore_tests::assert_same_tree(&restored.join(name), &unpacked.join(name), true);
    // The sparse file stayed sparse on the way.
    let sparse = fs::metadata(unpacked.join(name).join("sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < sparse.len() / 2,
        "{} blocks",
        sparse.blocks()
    );

    // The same to stdout, byte for byte; one file as its bytes.
    let out = xstore(&repo, &["dump", &id, in_snapshot]);
    assert!(out.status.success());
    assert_eq!(out.stdout, fs::read(&archive).unwrap());
    let small = format!("{in_snapshot}/small.txt");
    let out = xstore(&repo, &["dump", &id, &small]);
    assert_eq!(out.stdout, fs::read(src.join("small.txt")).unwrap());

    // An existing output file is refused and left as it was.
    let before = fs::read(&archive).unwrap();
    let out = xstore(
        &repo,
        &["dump", &id, in_snapshot, "-o", archive.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(fs::read(&archive).unwrap(), before);

    // zip: every file, directory and symlink, with bytes, mode and mtime (seconds).
    let zipped = work.path().join("src.zip");
    let summary = json(
        &repo,
        &[
            "dump",
            &id,
            in_snapshot,
            "--format",
            "zip",
            "-o",
            zipped.to_str().unwrap(),
        ],
    );
    let unzipped = work.path().join("unzipped");
    let unzip = std::process::Command::new("unzip")
        .args(["-q", "-K"])
        .arg(&zipped)
        .arg("-d")
        .arg(&unzipped)
        .output()
        .unwrap();
    assert!(
        unzip.status.success(),
        "{}",
        String::from_utf8_lossy(&unzip.stderr)
    );
    let mut skipped = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        // Names that are not UTF-8 are stored lossily (and reported); unzip drops control
        // characters from the names it writes (the archive holds them).
        let lossy: String = rel
            .to_string_lossy()
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        let lossy = PathBuf::from(lossy);
        let (a, b) = (
            restored.join(name).join(&rel),
            unzipped.join(name).join(&lossy),
        );
        let (ma, mb) = (fs::symlink_metadata(&a).unwrap(), fs::symlink_metadata(&b));
        let ft = ma.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            assert!(mb.is_err(), "{rel:?}: a device or fifo in the zip");
            skipped += 1;
            continue;
        }
        let mb = mb.unwrap_or_else(|e| panic!("{rel:?}: {e}"));
        if ft.is_symlink() {
            assert_eq!(
                fs::read_link(&a).unwrap(),
                fs::read_link(&b).unwrap(),
                "{rel:?}"
            );
            continue;
        }
        // unzip -K restores setuid, setgid and sticky bits on files only.
        let bits = if ft.is_file() { 0o7777 } else { 0o777 };
        assert_eq!(ma.mode() & bits, mb.mode() & bits, "{rel:?}");
        assert_eq!(ma.mtime(), mb.mtime(), "{rel:?}");
        if ft.is_file() {
            assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{rel:?}");
        } else {
            for e in fs::read_dir(&a).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    assert_eq!(
        summary["skipped"].as_array().unwrap().len(),
        skipped,
        "{summary}"
    );
    assert!(skipped >= 1, "{summary}");
    assert_eq!(summary["renamed"].as_array().unwrap().len(), 1, "{summary}");
}

/// A 1 GiB file that is mostly holes: the tar holds only its data and unpacks sparse and exact.
#[test]
fn dump_of_a_large_sparse_file_is_small_and_exact() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    fs::create_dir(&src).unwrap();
    let image = src.join("disk.img");
    {
        let mut f = fs::File::create(&image).unwrap();
        for (at, seed) in [(0u64, 1u64), (300 << 20, 2), ((1 << 30) - 70_000, 3)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&xstore_tests::seeded_bytes(seed, 65_000))
                .unwrap();
        }
        f.set_len(1 << 30).unwrap();
    }
    ok(&repo, &["init"]);
    let id = backup(&repo, "h", &src);
    let path = format!("{}/disk.img", src.canonicalize().unwrap().display());
    let archive = work.path().join("disk.tar");
    ok(
        &repo,
        &[
            "dump",
            &id,
            &path,
            "--format",
            "tar",
            "-o",
            archive.to_str().unwrap(),
        ],
    );
    let size = fs::metadata(&archive).unwrap().len();
    assert!(size < 64 << 20, "archive of {size} bytes");
    let unpacked = work.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-xpf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let out = unpacked.join("disk.img");
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(meta.blocks() * 512 < 64 << 20, "{} blocks", meta.blocks());
    assert_eq!(
        xstore::ChunkId::of(&fs::read(&out).unwrap()),
        xstore::ChunkId::of(&fs::read(&image).unwrap())
    );
    assert_eq!(meta.mtime(), fs::metadata(&image).unwrap().mtime());
}

fn set_mtime_of(p: &Path, from: &Path) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(from).unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: m.mtime(),
        tv_nsec: m.mtime_nsec() as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A restore into a modified copy of the snapshot rewrites only what differs, `--delete`
/// removes what the snapshot lacks without following a symlink, `if-changed` trusts size and
/// mtime, `never` keeps what exists, and `--dry-run` lists it all and changes nothing.
#[test]
fn restore_in_place_rewrites_only_what_differs() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    xstore_tests::make_fixture(&src, 11);
    fs::create_dir(src.join("www")).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("www/page{i}.html")), format!("<p>{i}</p>")).unwrap();
    }
    set_mtime_of(&src.join("www"), &src.join("small.txt"));
    ok(&repo, &["init"]);
    let id = backup(&repo, "h", &src);
    let dst = work.path().join("dst");
    let restore = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["restore", "--trusted-specials", &id, dst.to_str().unwrap()];
        args.extend_from_slice(extra);
        json(&repo, &args)
    };
    let first = restore(&[]);
    let files = first["files"].as_u64().unwrap();
    let live = xstore_tests::restored_path(&dst, &src);
    xstore_tests::assert_same_tree(&src, &live, true);

    // Unchanged: nothing is written.
    let again = restore(&[]);
    assert_eq!(again["files"], 0, "{again}");
    // Every file and the hard link are left; symlinks, devices and fifos are made again.
    assert_eq!(again["skipped"].as_u64().unwrap(), files + 1, "{again}");
    assert_eq!(again["bytes"], 0, "{again}");

    // The customer's changes: two files' content (one keeping size and mtime), a mode, a
    // deleted file, extra files, an extra directory with a symlink out of the tree, and a
    // file where the snapshot has a directory.
    let victim = work.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep.txt"), b"not the customer's").unwrap();
    fs::write(live.join("www/page3.html"), b"<p>hacked, longer</p>").unwrap();
    fs::write(live.join("www/page4.html"), b"<p>X</p>").unwrap();
    set_mtime_of(&live.join("www/page4.html"), &src.join("www/page4.html"));
    fs::set_permissions(
        live.join("www/page5.html"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    fs::remove_file(live.join("www/page6.html")).unwrap();
    fs::write(live.join("www/new.php"), b"<?php evil();").unwrap();
    fs::create_dir_all(live.join("www/uploads/deep")).unwrap();
    fs::write(live.join("www/uploads/deep/x"), b"x").unwrap();
    std::os::unix::fs::symlink(&victim, live.join("www/uploads/out")).unwrap();
    fs::remove_dir_all(live.join("empty-dir")).unwrap();
    fs::write(live.join("empty-dir"), b"a file in a directory's place").unwrap();

    // Dry run: the plan, and not one byte changed.
    let before = fs::read(live.join("www/page3.html")).unwrap();
    let plan = restore(&["--delete", "--dry-run"]);
    let planned = |action: &str| -> Vec<String> {
        plan["planned"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["action"] == action)
            .map(|c| {
                let p = c["path"].as_str().unwrap();
                p.rsplit('/').next().unwrap().to_string()
            })
            .collect()
    };
    // A missing file is written, an existing one that differs overwritten.
    assert_eq!(planned("write"), ["page6.html"], "{plan}");
    let mut overwrites = planned("overwrite");
    overwrites.sort();
    assert_eq!(overwrites, ["page3.html", "page4.html"], "{plan}");
    let mut deletes = planned("delete");
    deletes.sort();
    assert_eq!(deletes, ["new.php", "uploads"], "{plan}");
    assert!(
        planned("create").contains(&"empty-dir".to_string()),
        "{plan}"
    );
    assert_eq!(fs::read(live.join("www/page3.html")).unwrap(), before);
    assert!(live.join("www/new.php").exists());

    // if-changed trusts page4's size and mtime: it stays as the customer left it.
    let fast = restore(&["--overwrite", "if-changed", "--delete"]);
    assert_eq!(fast["files"], 2, "{fast}");
    assert_eq!(fs::read(live.join("www/page4.html")).unwrap(), b"<p>X</p>");
    assert_eq!(
        fs::read(victim.join("keep.txt")).unwrap(),
        b"not the customer's"
    );
    assert!(!live.join("www/uploads").exists() && !live.join("www/new.php").exists());
    // always reads it and rewrites it: now the tree is exactly the snapshot.
    let exact = restore(&["--overwrite", "always", "--delete"]);
    assert_eq!(exact["files"], 1, "{exact}");
    assert_eq!(exact["deleted"], 0, "{exact}");
    xstore_tests::assert_same_tree(&src, &live, true);
    assert_eq!(
        fs::read(victim.join("keep.txt")).unwrap(),
        b"not the customer's"
    );

    // never: what exists stays, what is missing comes back.
    fs::write(live.join("www/page7.html"), b"customer's own").unwrap();
    fs::remove_file(live.join("www/page8.html")).unwrap();
    let kept = restore(&["--overwrite", "never"]);
    assert_eq!(kept["files"], 1, "{kept}");
    assert_eq!(
        fs::read(live.join("www/page7.html")).unwrap(),
        b"customer's own"
    );
    assert_eq!(
        fs::read(live.join("www/page8.html")).unwrap(),
        fs::read(src.join("www/page8.html")).unwrap()
    );
}

/// `dump -o` into a directory another user can change: a symlink planted there is not
/// followed, so the archive cannot be led into a directory of the planter's choosing.
#[test]
fn dump_never_follows_a_symlink_another_user_could_plant() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    ok(&repo, &["init"]);
    let id = backup(&repo, "h", &src);
    let shared = work.path().join("shared");
    let victim = work.path().join("victim");
    fs::create_dir(&shared).unwrap();
    fs::create_dir(&victim).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(&victim, shared.join("out")).unwrap();
    let source = src.canonicalize().unwrap();
    let dump_to = |dest: &Path| {
        let args = [
            "dump",
            id.as_str(),
            source.to_str().unwrap(),
            "-o",
            dest.to_str().unwrap(),
        ];
        xstore(&repo, &args)
    };
    let out = dump_to(&shared.join("out/archive.tar"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(
        fs::read_dir(&victim).unwrap().count(),
        0,
        "wrote through the planted symlink"
    );
    // The same directory reached without the symlink works, and leaves no temporary.
    let out = dump_to(&victim.join("archive.tar"));
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<_> = fs::read_dir(&victim)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("archive.tar")]);
}

/// A tree a compromised customer host could send: raw-disk devices, set-uid root, a
/// set-gid directory on top, file capabilities and a trusted xattr.
fn weapon_tree(src: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(src.join("shared")).unwrap();
    let dev = |name: &str, kind, major, minor| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join(name),
            kind,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .unwrap();
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(0o666)).unwrap();
    };
    dev("sda", rustix::fs::FileType::BlockDevice, 8, 0);
    dev("mem", rustix::fs::FileType::CharacterDevice, 1, 1);
    fs::write(src.join("su-copy"), b"#!/bin/sh\nid\n").unwrap();
    fs::write(src.join("sg"), b"sg\n").unwrap();
    fs::write(src.join("capped"), b"capped\n").unwrap();
    fs::set_permissions(src.join("su-copy"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("sg"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::set_permissions(src.join("shared"), fs::Permissions::from_mode(0o2777)).unwrap();
    fs::set_permissions(src, fs::Permissions::from_mode(0o3755)).unwrap();
    // cap_setuid=ep: VFS_CAP_REVISION_2 with the effective flag, permitted bit 7.
    let mut cap = vec![1, 0, 0, 2, 0x80, 0, 0, 0];
    cap.extend_from_slice(&[0; 12]);
    xattr::set(src.join("capped"), "security.capability", &cap).is_ok()
        && xattr::set(src.join("capped"), "trusted.note", b"t").is_ok()
}

/// A restore as root of what a customer's host sent creates no device, no set-uid or
/// set-gid file and no capability, and says what it left out; `--trusted-specials`
/// restores all of it exactly.
#[test]
fn restoring_a_hostile_tree_as_root_creates_no_weapons_unless_trusted() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    fs::create_dir(&src).unwrap();
    let caps = weapon_tree(&src);
    ok(&repo, &["init"]);
    let id = backup(&repo, "web1", &src);
    let path = src.canonicalize().unwrap().display().to_string();
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;

    let safe = work.path().join("safe");
    let out = xstore(
        &repo,
        &[
            "--json",
            "restore",
            &id,
            safe.to_str().unwrap(),
            "--path",
            &path,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = common::last_json(&out.stdout);
    let xattrs_left = if caps { 2 } else { 0 };
    assert_eq!(
        summary["withheld"],
        serde_json::json!({"devices": 2, "mode_bits": 3, "xattrs": xattrs_left}),
        "{summary}"
    );
    let top = safe.join("src");
    assert!(!top.join("sda").exists() && fs::symlink_metadata(top.join("sda")).is_err());
    assert!(fs::symlink_metadata(top.join("mem")).is_err());
    assert_eq!(mode(&top.join("su-copy")), 0o755);
    assert_eq!(mode(&top.join("sg")), 0o755);
    assert_eq!(fs::read(top.join("su-copy")).unwrap(), b"#!/bin/sh\nid\n");
    // The restore's top directory loses set-gid and sticky; one below it keeps set-gid.
    assert_eq!(mode(&top), 0o755);
    assert_eq!(mode(&top.join("shared")), 0o2777);
    assert_eq!(
        xattr::get(top.join("capped"), "security.capability").unwrap(),
        None
    );
    assert_eq!(
        xattr::get(top.join("capped"), "trusted.note").unwrap(),
        None
    );
    // The text summary says it once, naming the flag.
    let text = xstore(
        &repo,
        &[
            "restore",
            &id,
            work.path().join("safe2").to_str().unwrap(),
            "--path",
            &path,
        ],
    );
    assert!(text.status.success());
    let said = stderr(&text);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("2 device nodes not created") && said.contains("--trusted-specials"),
        "{said}"
    );

    // Trusted: exactly as the host had it.
    let exact = work.path().join("exact");
    let out = xstore(
        &repo,
        &[
            "--json",
            "restore",
            &id,
            exact.to_str().unwrap(),
            "--path",
            &path,
            "--trusted-specials",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        common::last_json(&out.stdout)["withheld"],
        serde_json::json!({"devices": 0, "mode_bits": 0, "xattrs": 0})
    );
    let top = exact.join("src");
    let sda = fs::symlink_metadata(top.join("sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), rustix::fs::makedev(8, 0));
    assert!(fs::symlink_metadata(top.join("mem"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(mode(&top.join("su-copy")), 0o4755);
    assert_eq!(mode(&top.join("sg")), 0o2755);
    assert_eq!(mode(&top), 0o3755);
    if caps {
        assert_eq!(
            xattr::get(top.join("capped"), "security.capability")
                .unwrap()
                .unwrap()[4],
            0x80
        );
        assert_eq!(
            xattr::get(top.join("capped"), "trusted.note")
                .unwrap()
                .unwrap(),
            b"t"
        );
    }
}
