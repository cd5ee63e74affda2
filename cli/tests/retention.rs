//! The retention commands end to end: tiers, rotate, forget, pin, gc, schedule, snapshot
//! references by tier position, and their bad inputs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{json, ok, stderr, xstore};
use xstore_tests::{assert_same_tree, make_fixture, restored_path, seeded_bytes};

use common::snapshot_ids as ids;

fn positions(repo: &std::path::Path) -> Vec<(String, Vec<String>)> {
    json(repo, &["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["positions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn tiers_rotate_pin_forget_gc() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 21);
    ok(
        &repo,
        &["init", "--pack-size-mib", "1", "--chunk-avg-kib", "64"],
    );
    ok(&repo, &["tiers", "--set", "hourly=3,daily=2,weekly=1"]);
    let s = src.to_str().unwrap();
    for i in 0..4u64 {
        std::fs::write(src.join("churn.bin"), seeded_bytes(i, 400_000)).unwrap();
        ok(&repo, &["backup", "-q", "--host", "web1", s]);
    }
    // hourly=3: the first backup left when the fourth entered.
    let all = ids(&repo);
    assert_eq!(all.len(), 3);
    let p = positions(&repo);
    assert_eq!(p[2].1, vec!["hourly.0"]);
    assert_eq!(p[0].1, vec!["hourly.2"]);

    // A dry run prints the plan with reasons and changes nothing.
    let dry = ok(&repo, &["rotate", "daily", "--all", "--dry-run"]);
    assert!(dry.contains("promoted from hourly.2 to daily.0"), "{dry}");
    assert_eq!(positions(&repo), p);
    let out = json(&repo, &["rotate", "daily", "--host", "web1"]);
    assert_eq!(out["applied"]["released"]["snapshots"], 0);
    assert_eq!(positions(&repo)[0].1, vec!["daily.0"]);
    // HOST@TIER.N works wherever a snapshot is named.
    let listed = ok(&repo, &["ls", "web1@daily.0", "/"]);
    assert!(!listed.is_empty());
    // daily.0 is the second backup (the first expired): its churn.bin is version 1.
    let target = work.path().join("restore-daily");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "web1@daily.0",
            target.to_str().unwrap(),
        ],
    );
    let churn = std::fs::read(restored_path(&target, &src).join("churn.bin")).unwrap();
    assert!(
        churn == seeded_bytes(1, 400_000),
        "daily.0 restored the wrong version"
    );

    // Pin the daily one; three more backups push hourly along; rotate daily twice more
    // (daily=2) so the pinned one leaves daily but stays.
    ok(&repo, &["pin", "web1@daily.0"]);
    let pinned = all[0].clone();
    for i in 10..13u64 {
        std::fs::write(src.join("churn.bin"), seeded_bytes(i, 400_000)).unwrap();
        ok(&repo, &["backup", "-q", "--host", "web1", s]);
        ok(&repo, &["rotate", "daily", "--all"]);
    }
    let now = ids(&repo);
    assert!(now.contains(&pinned), "pinned snapshot expired");
    let listing = ok(&repo, &["snapshots"]);
    assert!(listing.contains("pinned"), "{listing}");
    ok(&repo, &["unpin", &pinned[..12]]);
    let out = json(&repo, &["rotate", "daily", "--all"]);
    let expired: Vec<&str> = out["plan"]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "expire")
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(expired, vec![pinned.as_str()]);

    // forget: calendar policy; --dry-run first, then for real.
    let before = ids(&repo);
    let dry = ok(&repo, &["forget", "--keep-last", "1", "--dry-run"]);
    assert!(dry.contains("keep-last 1"), "{dry}");
    assert_eq!(ids(&repo), before);
    ok(&repo, &["forget", "--keep-last", "1"]);
    let left = ids(&repo);
    assert_eq!(left, vec![before.last().unwrap().clone()]);

    // gc frees what the expired snapshots held; check passes; the survivor restores.
    let stats_before = json(&repo, &["stats"]);
    assert!(stats_before["dead_bytes"].as_u64().unwrap() > 0);
    let dry = json(&repo, &["gc", "--dry-run", "--max-dead", "0%"]);
    assert!(dry["bytes_freed"].as_u64().unwrap() > 0);
    assert_eq!(
        json(&repo, &["stats"])["stored_bytes"],
        stats_before["stored_bytes"]
    );
    let gc = json(&repo, &["gc", "--max-dead", "0%"]);
    let freed = gc["bytes_freed"].as_u64().unwrap();
    let stats_after = json(&repo, &["stats"]);
    assert_eq!(
        stats_before["stored_bytes"].as_u64().unwrap() - freed,
        stats_after["stored_bytes"].as_u64().unwrap()
    );
    assert_eq!(stats_after["dead_bytes"], 0);
    ok(&repo, &["check", "--read-data"]);
    let target = work.path().join("restore-last");
    ok(
        &repo,
        &[
            "restore",
            "--trusted-specials",
            "web1@latest",
            target.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src, &restored_path(&target, &src), false);
    let human = ok(&repo, &["gc"]);
    assert!(human.contains("freed 0 B"), "{human}");
}

#[test]
fn per_host_schedules_and_calendar_backups() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 22);
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["tiers", "--host", "db1", "--set", "hourly=1,daily=1"],
    );
    let shown = ok(&repo, &["tiers"]);
    assert!(
        shown.contains("default: hourly=6,daily=7,weekly=4,monthly=6"),
        "{shown}"
    );
    assert!(shown.contains("db1: hourly=1,daily=1"), "{shown}");
    let s = src.to_str().unwrap();
    ok(&repo, &["backup", "-q", "--host", "db1", s]);
    ok(&repo, &["backup", "-q", "--host", "db1", s]);
    ok(&repo, &["backup", "-q", "--host", "web1", s]);
    ok(&repo, &["backup", "-q", "--host", "web1", s]);
    let by_host = |h: &str| {
        json(&repo, &["snapshots", "--host", h])
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(by_host("db1"), 1);
    assert_eq!(by_host("web1"), 2);
    // --tier enters another tier; --no-tier none (calendar-only repositories).
    ok(
        &repo,
        &["backup", "-q", "--host", "db1", "--tier", "daily", s],
    );
    let p = ok(&repo, &["snapshots", "--host", "db1"]);
    assert!(p.contains("daily.0") && p.contains("hourly.0"), "{p}");
    ok(&repo, &["backup", "-q", "--host", "web1", "--no-tier", s]);
    assert_eq!(by_host("web1"), 3);
    ok(&repo, &["tiers", "--host", "db1", "--reset"]);
    assert!(!ok(&repo, &["tiers"]).contains("db1"));
    ok(&repo, &["check"]);
}

#[test]
fn bad_retention_input_is_one_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let (repo, src) = (work.path().join("repo"), work.path().join("src"));
    make_fixture(&src, 23);
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "web1", src.to_str().unwrap()],
    );
    let snapshot_copies = || std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    let before = snapshot_copies();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["rotate", "yearly", "--all"],
            1,
            "tier \"yearly\" is not in the schedule of host web1",
        ),
        (&["rotate", "daily"], 2, "--host"),
        (
            &["rotate", "daily", "--host", "nosuch"],
            1,
            "host nosuch has no snapshots",
        ),
        (&["forget"], 1, "empty keep policy"),
        (
            &["forget", "--keep-within", "3x"],
            1,
            "invalid duration \"3x\"",
        ),
        (&["gc", "--max-dead", "150%"], 1, "must be within 0%..100%"),
        (&["gc", "--max-dead", "lots"], 1, "expected a percentage"),
        (
            &["tiers", "--set", "hourly=0"],
            1,
            "tier hourly keeps 0 snapshots",
        ),
        (&["tiers", "--set", "hourly=2,hourly=3"], 1, "appears twice"),
        (
            &["tiers", "--host", "../x", "--set", "hourly=2"],
            1,
            "invalid host name",
        ),
        (&["ls", "web1@daily.0"], 1, "no snapshot at daily.0"),
        (&["ls", "web1@fortnightly"], 1, "unknown selector"),
        (&["pin", "ffffffff"], 1, "no such snapshot"),
        (
            &[
                "backup",
                "--host",
                "web1",
                "--tier",
                "yearly",
                "/nonexistent",
            ],
            1,
            "\"yearly\" is not in the schedule",
        ),
        (&["--lock-wait", "soon", "gc"], 1, "invalid duration"),
        // A negative duration is an error wherever a duration is taken.
        (
            &["--lock-wait=-5s", "gc"],
            1,
            "--lock-wait: invalid duration",
        ),
        (&["gc", "--grace=-1h"], 1, "--grace: invalid duration"),
        (&["gc", "--grace", "1 day"], 1, "--grace: invalid duration"),
        (
            &[
                "forget",
                "--keep-last",
                "1",
                "--now",
                "1969-12-31T00:00:00Z",
            ],
            1,
            "--now: invalid time",
        ),
        (
            &["verify", "--max-bytes", "lots"],
            1,
            "--max-bytes: \"lots\": expected a size",
        ),
        (
            &["verify", "--max-bytes", "5 parsecs"],
            1,
            "unknown unit \"parsecs\"",
        ),
        (
            &["verify", "--max-duration", "soon"],
            1,
            "--max-duration: invalid duration",
        ),
        (
            &["backup", "--host=-x", "/tmp"],
            1,
            "--host: invalid host name \"-x\"",
        ),
        (&["du", "--host", "a/b"], 1, "--host: invalid host name"),
    ];
    for (args, code, needle) in cases {
        let out = xstore(&repo, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if *code == 1 {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
    }
    // Nothing changed: same snapshots, default settings, healthy.
    assert_eq!(snapshot_copies(), before);
    assert!(!repo.join("retention.json").exists());
    ok(&repo, &["check"]);
    // A damaged retention.json is named, not ignored.
    std::fs::write(repo.join("retention.json"), b"{ nope").unwrap();
    let out = xstore(&repo, &["rotate", "daily", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("retention.json"), "{}", stderr(&out));
}

#[test]
fn schedule_prints_cron_and_systemd() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let cron = ok(&repo, &["schedule", "--cron"]);
    let lines: Vec<&str> = cron
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("xstore"))
        .collect();
    assert_eq!(lines.len(), 7, "{cron}");
    // Every job line: 5 cron fields, the user, then the command.
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f.len() > 7, "{l}");
        assert_eq!(f[5], "root", "{l}");
        // By default the jobs run this very binary (the package's /usr/bin/xstore, a
        // build's target/…/xstore), never a path that may not exist.
        assert_eq!(f[6], env!("CARGO_BIN_EXE_xstore"), "{l}");
    }
    // The printed gc job runs as printed (cron runs the command after the five fields and
    // the user with sh).
    ok(&repo, &["init"]);
    let run_job = |line: &str| {
        let command = line
            .split_whitespace()
            .skip(6)
            .collect::<Vec<_>>()
            .join(" ");
        let status = std::process::Command::new("sh")
            .args(["-c", &command])
            .env_remove("XSTORE_REPO")
            .status()
            .unwrap();
        assert!(status.success(), "{command}");
        command
    };
    run_job(lines[4]);
    // With an environment file (the package's cron file), each job sources it itself.
    let env_file = work.path().join("default");
    std::fs::write(&env_file, format!("XSTORE_REPO={}\n", repo.display())).unwrap();
    let sourced = ok(
        &repo,
        &[
            "schedule",
            "--cron",
            "--env-file",
            env_file.to_str().unwrap(),
        ],
    );
    let gc = run_job(sourced.lines().find(|l| l.ends_with(" gc")).unwrap());
    assert!(!gc.contains("--repo"), "{gc}");
    assert!(lines[0].starts_with("30 2 1 * *") && lines[0].contains("rotate monthly --all"));
    assert!(lines[1].starts_with("0 3 * * 1") && lines[1].contains("rotate weekly --all"));
    assert!(lines[2].starts_with("30 3 * * *") && lines[2].contains("rotate daily --all"));
    assert!(lines[3].starts_with("0 */4 * * *") && lines[3].contains("pull --all"));
    assert!(lines[4].contains(" gc"));
    assert!(lines[5].starts_with("30 5 * * *") && lines[5].contains("verify --max-duration 1h"));
    assert!(lines[6].starts_with("40 6 * * *") && lines[6].contains("compact --max-duration 1h"));
    assert!(cron.contains(&format!("--repo {}", repo.display())));
    let units = ok(&repo, &["schedule", "--systemd"]);
    assert_eq!(units.matches("[Timer]").count(), 7);
    assert_eq!(units.matches("[Service]").count(), 7);
    assert!(units.contains("OnCalendar=*-*-* 00/4:00:00"));
    assert!(units.contains("OnCalendar=Mon *-*-* 03:00:00"));
    let js = json(&repo, &["schedule"]);
    assert_eq!(js.as_array().unwrap().len(), 7);
    // systemd-analyze validates calendar expressions where it exists.
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args([
            "calendar",
            "*-*-* 00/4:00:00",
            "Mon *-*-* 03:00:00",
            "*-*-01 02:30:00",
        ])
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Text-like bytes (words of a small vocabulary, seeded): zstd 19 stores them in less than
/// zstd 3 does.
fn prose(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "backup", "server", "config", "listen", "port", "host", "user", "allow", "deny", "include",
        "log", "level", "path", "/var/lib", "timeout", "enable",
    ];
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(WORDS[(state % 16) as usize].as_bytes());
        out.push(if state.is_multiple_of(7) { b'\n' } else { b' ' });
        if state.is_multiple_of(11) {
            out.extend_from_slice(format!("{}", state % 100_000).as_bytes());
        }
    }
    out.truncate(len);
    out
}

#[test]
fn compact_stores_survivors_smaller_and_restores_them_exactly() {
    let w = tempfile::tempdir().unwrap();
    let (repo, src) = (w.path().join("repo"), w.path().join("src"));
    make_fixture(&src, 7);
    for i in 0..12u64 {
        std::fs::write(
            src.join(format!("conf-{i}.txt")),
            prose(i, 40_000 + 9_000 * i as usize),
        )
        .unwrap();
    }
    std::fs::write(src.join("big.log"), prose(99, 3 << 20)).unwrap();
    ok(&repo, &["init"]);
    let s = src.to_str().unwrap();
    ok(&repo, &["backup", "-q", "--host", "web1", s]);
    std::fs::write(src.join("conf-0.txt"), prose(1000, 50_000)).unwrap();
    ok(&repo, &["backup", "-q", "--host", "web1", s]);
    let stored = |repo: &std::path::Path| json(repo, &["stats"])["stored_bytes"].as_u64().unwrap();
    let before = stored(&repo);

    // Packs written just now are too young by default: nothing happens.
    let young = json(&repo, &["compact"]);
    assert_eq!(young["packs_compacted"], 0, "{young}");
    assert!(young["packs_too_young"].as_u64().unwrap() > 0, "{young}");
    // A budget smaller than any pack: nothing, everything waits for a later run.
    let none = json(&repo, &["compact", "--min-age", "0s", "--max-bytes", "1"]);
    assert_eq!(none["packs_compacted"], 0, "{none}");
    assert!(none["packs_remaining"].as_u64().unwrap() > 0, "{none}");

    let report = json(&repo, &["compact", "--min-age", "0s"]);
    let (b, a) = (
        report["bytes_before"].as_u64().unwrap(),
        report["bytes_after"].as_u64().unwrap(),
    );
    assert!(report["packs_compacted"].as_u64().unwrap() > 0, "{report}");
    assert!(a * 100 < b * 95, "{report}");
    assert_eq!(report["packs_remaining"], 0, "{report}");
    let after = stored(&repo);
    assert!(after < before, "{before} → {after}");
    // What compact wrote is not compacted again.
    let again = json(&repo, &["compact", "--min-age", "0s"]);
    assert_eq!(again["packs_compacted"], 0, "{again}");
    // Everything restores exactly, every blob verifies.
    for (k, id) in ids(&repo).iter().enumerate() {
        let dst = w.path().join(format!("dst-{k}"));
        ok(
            &repo,
            &["restore", "--trusted-specials", id, dst.to_str().unwrap()],
        );
        if k == 1 {
            assert_same_tree(&src, &restored_path(&dst, &src), true);
        }
    }
    let check = json(&repo, &["check", "--read-data"]);
    assert!(check["problems"].as_array().unwrap().is_empty(), "{check}");
    // The old packs wait out the grace period; a gc after it takes them.
    fn packs_dir(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    packs_dir(&e.path())
                } else if e.file_name().to_string_lossy().ends_with(".pack") {
                    e.metadata().unwrap().len()
                } else {
                    0
                }
            })
            .sum()
    }
    let packs_dir = |repo: &std::path::Path| packs_dir(&repo.join("packs"));
    let on_disk = packs_dir(&repo);
    ok(&repo, &["gc", "--grace", "0s"]);
    assert!(packs_dir(&repo) < on_disk);
    assert!(packs_dir(&repo) * 100 < before * 97);
    // The job's last run is kept for the operator page.
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("runs/compact.json")).unwrap()).unwrap();
    assert_eq!(run["ok"], true, "{run}");
}

/// Compact puts small files into bundles (FORMAT.md §Bundles); everything else keeps working
/// on them: restore, check --read-data, a gc that drops some members and keeps others,
/// repair index, verify, and a flipped byte in a bundle is damage named per file.
#[test]
fn bundled_small_files_survive_gc_repair_and_verify() {
    let w = tempfile::tempdir().unwrap();
    let (repo, src) = (w.path().join("repo"), w.path().join("src"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..80u64 {
        let len = 2_000 + 700 * i as usize;
        std::fs::write(src.join(format!("small-{i:02}.conf")), prose(i, len)).unwrap();
    }
    std::fs::write(src.join("big.log"), prose(500, 2 << 20)).unwrap();
    ok(&repo, &["init"]);
    let s = src.to_str().unwrap();
    ok(&repo, &["backup", "-q", "--host", "web1", s]);
    let first = w.path().join("first");
    std::fs::rename(&src, &first).unwrap();
    std::fs::create_dir_all(&src).unwrap();
    // The second snapshot keeps half the small files and adds others.
    for i in (0..80u64).step_by(2) {
        std::fs::copy(
            first.join(format!("small-{i:02}.conf")),
            src.join(format!("small-{i:02}.conf")),
        )
        .unwrap();
    }
    for i in 100..120u64 {
        std::fs::write(
            src.join(format!("new-{i}.conf")),
            prose(i, 3_000 + 500 * i as usize),
        )
        .unwrap();
    }
    std::fs::copy(first.join("big.log"), src.join("big.log")).unwrap();
    ok(&repo, &["backup", "-q", "--host", "web1", s]);
    let before = json(&repo, &["stats"]);

    let report = json(&repo, &["compact", "--min-age", "0s"]);
    assert!(report["packs_compacted"].as_u64().unwrap() > 0, "{report}");
    ok(&repo, &["gc", "--grace", "0s"]);
    let bundled = |repo: &std::path::Path| {
        let st = json(repo, &["stats"]);
        let row = st["by_kind"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == "bundle")
            .cloned()
            .unwrap();
        (row["blobs"].as_u64().unwrap(), st)
    };
    let (in_bundles, after) = bundled(&repo);
    // 100 distinct small files, every one in a bundle; the big file's chunks alone.
    assert_eq!(in_bundles, 100, "{after}");
    assert!(
        after["stored_bytes"].as_u64().unwrap() < before["stored_bytes"].as_u64().unwrap(),
        "{before} → {after}"
    );
    let restore_both = |tag: &str| {
        let [old, new] = [0, 1].map(|k| {
            let dst = w.path().join(format!("{tag}-{k}"));
            ok(&repo, &["restore", &ids(&repo)[k], dst.to_str().unwrap()]);
            dst
        });
        assert_same_tree(&first, &restored_path(&old, &src), false);
        assert_same_tree(&src, &restored_path(&new, &src), false);
    };
    restore_both("compacted");
    let check = json(&repo, &["check", "--read-data"]);
    assert!(check["problems"].as_array().unwrap().is_empty(), "{check}");

    // The first snapshot goes: its 40 small files die inside bundles that keep the others.
    ok(&repo, &["forget", "--keep-last", "1"]);
    let gc = json(&repo, &["gc", "--grace", "0s", "--max-dead", "0"]);
    assert!(gc["packs_rewritten"].as_u64().unwrap() > 0, "{gc}");
    let (in_bundles, st) = bundled(&repo);
    assert_eq!(in_bundles, 60, "{st}");
    let check = json(&repo, &["check", "--read-data"]);
    assert!(check["problems"].as_array().unwrap().is_empty(), "{check}");
    let dst = w.path().join("after-gc");
    ok(&repo, &["restore", "web1@latest", dst.to_str().unwrap()]);
    assert_same_tree(&src, &restored_path(&dst, &src), false);

    // Rebuilt from the packs alone, the index locates every bundled blob again.
    std::fs::remove_dir_all(repo.join("index")).unwrap();
    ok(&repo, &["repair", "index"]);
    assert_eq!(bundled(&repo).0, 60);
    let check = json(&repo, &["check", "--read-data"]);
    assert!(check["problems"].as_array().unwrap().is_empty(), "{check}");
    let dst = w.path().join("after-repair");
    ok(&repo, &["restore", "web1@latest", dst.to_str().unwrap()]);
    assert_same_tree(&src, &restored_path(&dst, &src), false);
    let verify = xstore(&repo, &["--json", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));

    // A flipped byte inside a bundle: its files are named damaged; the big file restores.
    let file = src.join("small-10.conf");
    let chunk = common::file_chunk(&repo, "web1@latest", &file, 0);
    common::damage_blob(&repo, &chunk);
    let verify = xstore(&repo, &["--json", "verify"]);
    assert_eq!(verify.status.code(), Some(4), "{}", stderr(&verify));
    assert!(
        stderr(&verify).contains("small-10.conf"),
        "{}",
        stderr(&verify)
    );
    let dst = w.path().join("big-only");
    ok(
        &repo,
        &[
            "restore",
            "--path",
            &format!("{s}/big.log"),
            "web1@latest",
            dst.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(dst.join("big.log")).unwrap(),
        std::fs::read(src.join("big.log")).unwrap()
    );
}
