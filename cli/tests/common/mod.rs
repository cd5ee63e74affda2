#![allow(dead_code, clippy::unwrap_used)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn xstore(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xstore"))
        .env("XSTORE_REPO", repo)
        .env_remove("XSTORE_FAILPOINT")
        .args(args)
        .output()
        .unwrap()
}

pub fn ok(repo: &Path, args: &[&str]) -> String {
    let out = xstore(repo, args);
    assert!(
        out.status.success(),
        "xstore {args:?} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn json(repo: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    last_json(ok(repo, &a).as_bytes())
}

/// The JSON document of a command's stdout; for a long operation's event stream (one JSON
/// object per line, README §Scripting), its last line: the summary.
pub fn last_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(&text).unwrap_or_else(|_| {
        let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("no JSON summary ({e}) in:\n{text}"));
        assert_eq!(v["type"], "summary", "{text}");
        v
    })
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The ids of the repository's snapshots, oldest first.
pub fn snapshot_ids(repo: &Path) -> Vec<String> {
    json(repo, &["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// A repository with 1 MiB packs and 16 KiB chunks in a temporary directory, with empty
/// `src` and `junk` directories beside it: (work dir, repo, src, junk).
pub fn small_pack_repo() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let (repo, src, junk) = (
        work.path().join("repo"),
        work.path().join("src"),
        work.path().join("junk"),
    );
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&junk).unwrap();
    ok(
        &repo,
        &["init", "--pack-size-mib", "1", "--chunk-avg-kib", "16"],
    );
    (work, repo, src, junk)
}

/// Leaves `host`'s newest snapshot holding `src` in packs shared with garbage: a backup of
/// `src` and `junk` (its files written by the caller), then one without junk's files, then
/// forget of the first. gc must rewrite those packs to reclaim the junk.
pub fn snapshot_mixed_with_garbage(repo: &Path, host: &str, src: &Path, junk: &Path) {
    let (s, j) = (src.to_str().unwrap(), junk.to_str().unwrap());
    ok(repo, &["backup", "-q", "--host", host, "--no-tier", s, j]);
    std::fs::remove_dir_all(junk).unwrap();
    std::fs::create_dir_all(junk).unwrap();
    ok(repo, &["backup", "-q", "--host", host, "--no-tier", s, j]);
    ok(repo, &["forget", "--host", host, "--keep-last", "1"]);
}
