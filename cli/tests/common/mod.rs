#![allow(dead_code, clippy::unwrap_used)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn xstore(repo: &Path, args: &[&str]) -> Output {
    xstore_with_env(repo, &[], args)
}

/// `xstore` with more environment (an object store's key: `Garage::env`).
pub fn xstore_with_env(repo: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    xstore_command(repo, env, args).output().unwrap()
}

/// The command [`xstore_with_env`] runs, for a caller that spawns it (with no test hook of
/// the caller's environment armed).
pub fn xstore_command(repo: &Path, env: &[(&str, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xstore"));
    cmd.env("XSTORE_REPO", repo)
        .env_remove("XSTORE_FAILPOINT")
        .env_remove("XSTORE_PAUSE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args);
    cmd
}

pub fn ok(repo: &Path, args: &[&str]) -> String {
    ok_with_env(repo, &[], args)
}

/// [`ok`] with more environment.
pub fn ok_with_env(repo: &Path, env: &[(&str, String)], args: &[&str]) -> String {
    let out = xstore_with_env(repo, env, args);
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
    snapshot_mixed_with_garbage_with_env(repo, &[], host, src, junk);
}

/// [`snapshot_mixed_with_garbage`] with more environment (an object store's key).
pub fn snapshot_mixed_with_garbage_with_env(
    repo: &Path,
    env: &[(&str, String)],
    host: &str,
    src: &Path,
    junk: &Path,
) {
    let (s, j) = (src.to_str().unwrap(), junk.to_str().unwrap());
    ok_with_env(
        repo,
        env,
        &["backup", "-q", "--host", host, "--no-tier", s, j],
    );
    std::fs::remove_dir_all(junk).unwrap();
    std::fs::create_dir_all(junk).unwrap();
    ok_with_env(
        repo,
        env,
        &["backup", "-q", "--host", host, "--no-tier", s, j],
    );
    ok_with_env(repo, env, &["forget", "--host", host, "--keep-last", "1"]);
}

/// The id of chunk `n` of the file at `path` in `snapshot` (an id prefix or `HOST@latest`).
pub fn file_chunk(repo: &Path, snapshot: &str, path: &Path, n: usize) -> xstore::ChunkId {
    let handle = xstore::Repository::open_read_only(repo).unwrap();
    let snapshot = handle.resolve(snapshot).unwrap();
    let entry = match handle.lookup(&snapshot, path.to_str().unwrap()).unwrap() {
        xstore::Node::Entry(e) => e,
        xstore::Node::Root(_) => panic!("{} is the root", path.display()),
    };
    handle.file_chunks(&entry).unwrap()[n].id
}

/// Flips one bit in the stored bytes of `blob`, as a failing disk would; returns its pack.
pub fn damage_blob(repo: &Path, blob: &xstore::ChunkId) -> xstore::ChunkId {
    let handle = xstore::Repository::open_read_only(repo).unwrap();
    let loc = handle.blob_location(blob).unwrap().unwrap();
    drop(handle);
    let hex = loc.pack.to_string();
    let pack = repo
        .join("packs")
        .join(&hex[..2])
        .join(format!("{hex}.pack"));
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[loc.offset as usize + 48 + 10] ^= 0x04;
    // Sealed packs are read-only: replace the file, as damage underneath would.
    std::fs::remove_file(&pack).unwrap();
    std::fs::write(&pack, &bytes).unwrap();
    loc.pack
}

/// A command stopped by the `XSTORE_PAUSE` test hook at `point` (the `failpoints` feature;
/// `file` is the hook's `XSTORE_PAUSE_FILE`).
pub struct Paused {
    child: Option<Child>,
    file: PathBuf,
}

impl Paused {
    /// Starts `cmd` with the hook at `point`; returns once it waits there.
    pub fn start(mut cmd: Command, point: &str, file: &Path) -> Paused {
        let child = cmd
            .env("XSTORE_PAUSE", point)
            .env("XSTORE_PAUSE_FILE", file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut paused = Paused {
            child: Some(child),
            file: file.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !file.exists() {
            if let Some(status) = paused.child.as_mut().unwrap().try_wait().unwrap() {
                let out = paused.child_output();
                panic!("{cmd:?} ended ({status}) before {point}:\n{}", stderr(&out));
            }
            assert!(Instant::now() < deadline, "{cmd:?} never reached {point}");
            std::thread::sleep(Duration::from_millis(10));
        }
        paused
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Lets the command go on and waits for its end.
    pub fn resume(mut self) -> Output {
        std::fs::remove_file(&self.file).unwrap();
        self.child_output()
    }

    fn child_output(&mut self) -> Output {
        self.child.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Paused {
    /// A test that fails while the command waits does not leave it waiting.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `xstore --json pull --inventory INVENTORY ARGS…` on `repo`.
pub fn pull_json(repo: &Path, inventory: &Path, args: &[&str]) -> Output {
    let mut a = vec!["--json", "pull", "--inventory", inventory.to_str().unwrap()];
    a.extend_from_slice(args);
    xstore(repo, &a)
}
