#![allow(dead_code, clippy::unwrap_used)]
use std::path::Path;
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
    serde_json::from_str(&ok(repo, &a)).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
