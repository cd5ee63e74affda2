//! `xstore web-user`: the users file of the web front (FORMAT.md §Web users) made, changed
//! and refused the way an operator (and a careless one) meets it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{stderr, xstore};

struct Setup {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::write(
            dir.join("hosts.toml"),
            "[[account]]\nname = \"acme\"\nallocation = \"1 GiB\"\n\n\
             [[account.host]]\nname = \"web1\"\naddress = \"127.0.0.1\"\n",
        )
        .unwrap();
        fs::write(dir.join("pw1"), "correct horse battery\n").unwrap();
        fs::write(dir.join("pw2"), "another long one\n").unwrap();
        fs::write(dir.join("short"), "abc\n").unwrap();
        Setup { _tmp: tmp, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `xstore web-user ARGS --users <dir>/users.toml` (and `--inventory` for `add`).
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = vec!["web-user".into()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--users".into(), self.path("users.toml")]);
        if args.first() == Some(&"add") {
            all.extend(["--inventory".into(), self.path("hosts.toml")]);
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        xstore(Path::new("/nonexistent-repo"), &all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The one error line of a refused command, which exits 1.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        err.trim_end().to_string()
    }

    fn listed(&self) -> serde_json::Value {
        let mut args = vec!["--json", "web-user", "list", "--users"];
        let users = self.path("users.toml");
        args.push(&users);
        let out = xstore(Path::new("/nonexistent-repo"), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn users_are_added_listed_changed_and_removed_in_a_root_only_file() {
    let s = Setup::new();
    let pw1 = s.path("pw1");
    assert_eq!(
        s.ok(&["add", "alice", "--account", "acme", "--password-file", &pw1]),
        "added web user alice (customer of acme)\n"
    );
    assert_eq!(
        s.ok(&["add", "ops", "--operator", "--password-file", &pw1]),
        "added web user ops (operator)\n"
    );
    let users_file = s.dir.join("users.toml");
    let mode = fs::metadata(&users_file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&users_file).unwrap();
    assert!(!text.contains("correct horse"), "{text}");
    assert!(text.contains("kdf = \"argon2id\""), "{text}");

    let listed = s.listed();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "alice");
    assert_eq!(rows[0]["role"], "customer");
    assert_eq!(rows[0]["account"], "acme");
    assert_eq!(rows[1]["name"], "ops");
    assert_eq!(rows[1]["role"], "operator");
    assert!(rows[1]["account"].is_null());
    assert!(!listed.to_string().contains("hash"), "{listed}");
    let table = s.ok(&["list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("alice") && table.contains("acme"), "{table}");

    let users = xstore_web::WebUsers::load(&users_file).unwrap();
    assert!(users.verify("alice", "correct horse battery").is_some());
    let changed_before = users.get("alice").unwrap().password_changed_ns;
    s.ok(&["passwd", "alice", "--password-file", &s.path("pw2")]);
    let users = xstore_web::WebUsers::load(&users_file).unwrap();
    assert!(users.verify("alice", "correct horse battery").is_none());
    assert!(users.verify("alice", "another long one").is_some());
    assert!(users.get("alice").unwrap().password_changed_ns > changed_before);
    assert!(users.verify("ops", "correct horse battery").is_some());

    assert_eq!(s.ok(&["remove", "alice"]), "removed web user alice\n");
    assert_eq!(s.listed().as_array().unwrap().len(), 1);
}

#[test]
fn mistakes_are_one_line_and_change_nothing() {
    let s = Setup::new();
    let pw1 = s.path("pw1");
    s.ok(&["add", "alice", "--account", "acme", "--password-file", &pw1]);
    let before = fs::read(s.dir.join("users.toml")).unwrap();
    assert_eq!(
        s.refused(&["add", "alice", "--account", "acme", "--password-file", &pw1]),
        "xstore: error: web user alice exists already"
    );
    assert_eq!(
        s.refused(&["add", "bob", "--account", "nobody", "--password-file", &pw1]),
        "xstore: error: account nobody is not in the inventory"
    );
    assert_eq!(
        s.refused(&[
            "add",
            "bob",
            "--account",
            "acme",
            "--password-file",
            &s.path("short")
        ]),
        "xstore: error: the password has fewer than 8 characters"
    );
    let odd = s.refused(&["add", "<script>", "--operator", "--password-file", &pw1]);
    assert!(odd.contains("lowercase letters, digits"), "{odd}");
    assert_eq!(
        s.refused(&["remove", "bob"]),
        "xstore: error: no web user bob"
    );
    assert_eq!(
        s.refused(&["passwd", "bob", "--password-file", &pw1]),
        "xstore: error: no web user bob"
    );
    assert_eq!(fs::read(s.dir.join("users.toml")).unwrap(), before);
}

#[test]
fn a_users_file_others_may_read_is_refused_not_used() {
    let s = Setup::new();
    let pw1 = s.path("pw1");
    s.ok(&["add", "alice", "--account", "acme", "--password-file", &pw1]);
    let users_file = s.dir.join("users.toml");
    fs::set_permissions(&users_file, fs::Permissions::from_mode(0o644)).unwrap();
    let err = s.refused(&["list"]);
    assert_eq!(
        err,
        format!(
            "xstore: error: {}: has mode 0644: other users could read the password hashes; chmod 600 it",
            users_file.display()
        )
    );
    let err = s.refused(&["add", "bob", "--operator", "--password-file", &pw1]);
    assert!(err.ends_with("chmod 600 it"), "{err}");
    assert_eq!(
        fs::metadata(&users_file).unwrap().permissions().mode() & 0o7777,
        0o644
    );
}
