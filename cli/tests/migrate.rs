//! `xstore import rsnapshot` against a real history made by Debian's rsnapshot: hourly runs
//! and daily/weekly rotations over changing trees with `link_dest 1`, then every backup point
//! compared with the restored snapshot at the same tier position (issue: adoption).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use common::{json, ok, stderr, xstore};
use xstore_tests::{assert_same_tree, make_fixture};

const HOSTS: [&str; 2] = ["web1.example.net", "db1.example.org"];

struct History {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    conf: PathBuf,
    snap: PathBuf,
    repo: PathBuf,
    /// The next run's time (seconds since the epoch): runs are 4 hours apart.
    clock: i64,
    round: u64,
}

impl History {
    fn new() -> Option<History> {
        if Command::new("rsnapshot").arg("-V").output().is_err() {
            eprintln!("skipping: rsnapshot is not installed (apt-get install rsnapshot)");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        // rsync's remote shell: runs the "remote" command here, so the configuration has the
        // service's `root@host:/path/  host/` lines while the data is local.
        let ssh = root.join("fake-ssh");
        fs::write(
            &ssh,
            "#!/bin/sh\n# fake-ssh [-l USER] [-p PORT] [-o OPT]... HOST COMMAND...\n\
             while [ $# -gt 0 ]; do case \"$1\" in -l|-p|-o|-i) shift 2;; -*) shift;; *) break;; esac; done\n\
             shift\nexec sh -c \"$*\"\n",
        )
        .unwrap();
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755)).unwrap();
        let snap = root.join("snapshots");
        let mut conf = format!(
            "config_version\t1.2\nsnapshot_root\t{}/\ncmd_rsync\t/usr/bin/rsync\n\
             cmd_ssh\t{}\nssh_args\t-p 22\nretain\thourly\t3\nretain\tdaily\t2\nretain\tweekly\t2\n\
             verbose\t1\nloglevel\t1\nlockfile\t{}/rsnapshot.pid\nlink_dest\t1\n",
            snap.display(),
            ssh.display(),
            root.display()
        );
        for host in HOSTS {
            let src = root.join("clients").join(host);
            for dir in ["etc", "home"] {
                fs::create_dir_all(src.join(dir)).unwrap();
                conf.push_str(&format!(
                    "backup\troot@{host}:{}/\t{host}/\n",
                    src.join(dir).display()
                ));
            }
            make_fixture(&src.join("etc"), 7);
            fs::write(src.join("home/log"), "line 0\n").unwrap();
        }
        let conf_path = root.join("rsnapshot.conf");
        fs::write(&conf_path, conf).unwrap();
        let repo = root.join("repo");
        ok(&repo, &["init"]);
        Some(History {
            _tmp: tmp,
            snap,
            conf: conf_path,
            repo,
            root,
            clock: 1_780_000_000,
            round: 0,
        })
    }

    /// Changes the clients' trees a little: edits, a growing log, a new file, a removal.
    fn change(&mut self) {
        self.round += 1;
        let r = self.round;
        for host in HOSTS {
            let src = self.root.join("clients").join(host);
            let log = src.join("home/log");
            let mut text = fs::read_to_string(&log).unwrap();
            text.push_str(&format!("line {r}\n").repeat(200));
            fs::write(&log, text).unwrap();
            fs::write(
                src.join(format!("home/new-{r}")),
                format!("{host} round {r}"),
            )
            .unwrap();
            let _ = fs::remove_file(src.join(format!("home/new-{}", r.saturating_sub(2))));
            fs::set_permissions(
                src.join("home/log"),
                fs::Permissions::from_mode(if r.is_multiple_of(2) { 0o640 } else { 0o600 }),
            )
            .unwrap();
        }
    }

    /// `rsnapshot TIER`, then the time of the run given to `<tier>.0` as rsnapshot records it.
    fn run(&mut self, tier: &str) {
        let out = Command::new("rsnapshot")
            .arg("-c")
            .arg(&self.conf)
            .arg(tier)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rsnapshot {tier}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if tier == "hourly" {
            let stamp = format!("@{}", self.clock);
            let dir = self.snap.join("hourly.0");
            let status = Command::new("touch")
                .args(["-d", &stamp])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
            self.clock += 4 * 3600;
        }
    }

    fn hourly(&mut self) {
        self.change();
        self.run("hourly");
    }

    /// Every backup point: "tier.n/host" → its directory.
    fn points(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for tier in fs::read_dir(&self.snap).unwrap() {
            let tier = tier.unwrap();
            let name = tier.file_name().into_string().unwrap();
            if !name.contains('.') {
                continue;
            }
            for host in fs::read_dir(tier.path()).unwrap() {
                let host = host.unwrap();
                let h = host.file_name().into_string().unwrap();
                out.insert(format!("{name}/{h}"), host.path());
            }
        }
        out
    }

    /// Everything about the rsnapshot tree but access times: what "untouched" means.
    fn fingerprint(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(
                "cd \"$0\" && find . -printf '%p %y %m %U %G %s %T@ %C@ %i %n %l\\n' | sort && \
                 find . -type f -print0 | sort -z | xargs -0 sha256sum",
            )
            .arg(&self.snap)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Restores `host@tier.n` for every backup point and compares it, metadata included.
    fn assert_every_point_restores(&self) {
        let points = self.points();
        assert!(points.len() >= 10, "{points:?}");
        for (name, dir) in &points {
            let (tier, host) = name.split_once('/').unwrap();
            let target = self.root.join("restore").join(name.replace('/', "_"));
            let _ = fs::remove_dir_all(&target);
            ok(
                &self.repo,
                &[
                    "restore",
                    "--trusted-specials",
                    &format!("{host}@{tier}"),
                    target.to_str().unwrap(),
                ],
            );
            // The snapshot's paths are the point's top directories (`/tmp` here); restore
            // gives the target directory itself no metadata of the snapshot's root.
            for top in fs::read_dir(dir).unwrap() {
                let name = top.unwrap().file_name();
                assert_same_tree(&dir.join(&name), &target.join(&name), true);
            }
            fs::remove_dir_all(&target).unwrap();
        }
        let snapshots = json(&self.repo, &["snapshots"]);
        assert_eq!(
            snapshots.as_array().unwrap().len(),
            points.len(),
            "one snapshot per backup point: {snapshots:#}"
        );
    }

    /// `xstore import rsnapshot --config CONF EXTRA…`.
    fn import_with(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "import",
            "rsnapshot",
            "--config",
            self.conf.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        xstore(&self.repo, &args)
    }

    fn import(&self) -> String {
        let out = self.import_with(&[]);
        assert!(out.status.success(), "import: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Every regular file under `dir` (relative path) and its inode.
fn file_inodes(dir: &std::path::Path) -> BTreeMap<PathBuf, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    meta.ino(),
                );
            }
        }
    }
    out
}

#[test]
fn rsnapshot_history_imports_with_every_tier_position() {
    let Some(mut h) = History::new() else { return };
    // Four days of the service's order: weekly, then daily, then the day's hourly runs.
    for day in 0..4 {
        if day == 3 {
            h.run("weekly");
        }
        if day > 0 {
            h.run("daily");
        }
        for _ in 0..3 {
            h.hourly();
        }
    }
    let before = h.fingerprint();

    // The dry run lists every point and changes nothing.
    let dry = String::from_utf8(h.import_with(&["--dry-run"]).stdout).unwrap();
    let points = h.points().len();
    assert!(
        dry.contains(&format!("{points} of {points} backup points to import")),
        "{dry}"
    );
    assert!(json(&h.repo, &["snapshots"]).as_array().unwrap().is_empty());

    let inventory = h.root.join("hosts.toml");
    let out = h.import_with(&["--inventory-out", inventory.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.contains(&format!("{points} backup points imported")),
        "{out}"
    );
    assert_eq!(h.fingerprint(), before, "the rsnapshot tree changed");
    h.assert_every_point_restores();

    // The inventory lists both hosts with their paths and the rsnapshot schedule.
    let inv = xstore_fleet::Inventory::load(&inventory).unwrap();
    let web1 = inv.host("web1.example.net").unwrap();
    assert_eq!(web1.paths.len(), 2);
    assert_eq!(
        web1.schedule.as_ref().unwrap().to_string(),
        "hourly=3,daily=2,weekly=2"
    );
    // It is never replaced.
    let again = h.import_with(&["--inventory-out", inventory.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("hosts.toml"), "{}", stderr(&again));

    // Files rsnapshot hard-linked from the previous point were not read again: each later
    // snapshot read exactly the files whose inode is not the one at the same path of the
    // previous point (what changed, and what rsync copied anew).
    let points = h.points();
    let snaps = json(&h.repo, &["snapshots"]);
    let mut previous: BTreeMap<String, BTreeMap<PathBuf, u64>> = BTreeMap::new();
    for s in snaps.as_array().unwrap() {
        let host = s["host"].as_str().unwrap().to_string();
        let pos = s["positions"][0].as_str().unwrap();
        let inodes = file_inodes(&points[&format!("{}/{host}", pos.replace('@', ""))]);
        let read = s["stats"]["files_read"].as_u64().unwrap();
        let expected = match previous.get(&host) {
            None => inodes.len() as u64,
            Some(before) => inodes
                .iter()
                .filter(|(path, ino)| before.get(*path) != Some(*ino))
                .count() as u64,
        };
        assert_eq!(read, expected, "files read for {pos}/{host}: {s:#}");
        if previous.contains_key(&host) {
            assert!(read < inodes.len() as u64 / 2, "{read} of {}", inodes.len());
        }
        previous.insert(host, inodes);
    }

    // A second run imports nothing.
    let out = h.import();
    assert!(out.contains("0 backup points imported"), "{out}");

    // rsnapshot keeps running during the switch-over: a new hourly (the oldest hourly is
    // dropped), then a daily rotation (the oldest hourly moves to daily.0, the oldest daily
    // goes). The next import follows both.
    h.hourly();
    h.import();
    h.assert_every_point_restores();
    h.run("daily");
    h.hourly();
    let out = h.import();
    assert!(out.contains("relabelled daily"), "{out}");
    h.assert_every_point_restores();
    // An hourly run and a daily rotation between two imports: the hourly point rsnapshot
    // deleted at the end of its tier is forgotten, as rsnapshot did, and the tiers hold
    // exactly rsnapshot's points.
    h.hourly();
    h.run("daily");
    let out = h.import();
    assert!(
        out.contains("rotated away by rsnapshot: forgotten"),
        "{out}"
    );
    h.assert_every_point_restores();
    ok(&h.repo, &["check"]);
}

#[test]
fn bad_rsnapshot_configs_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&repo, &["init"]);
    let conf = tmp.path().join("rsnapshot.conf");
    fs::write(&conf, "snapshot_root\t/nonexistent/\nretain\thourly\tx\n").unwrap();
    let out = xstore(
        &repo,
        &["import", "rsnapshot", "--config", conf.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "xstore: error: {}: line 2: retain hourly: bad count \"x\"\n",
            conf.display()
        )
    );
    // A snapshot root that does not exist is a mistyped one, not an empty history.
    fs::write(&conf, "snapshot_root\t/nonexistent/\nretain\thourly\t6\n").unwrap();
    let out = xstore(
        &repo,
        &["import", "rsnapshot", "--config", conf.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("xstore: error: /nonexistent/: No such file or directory"),
        "{}",
        stderr(&out)
    );
    let missing = xstore(
        &repo,
        &[
            "import",
            "rsnapshot",
            "--config",
            tmp.path().join("none").to_str().unwrap(),
        ],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("No such file"),
        "{}",
        stderr(&missing)
    );
}
