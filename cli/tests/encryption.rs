//! Encrypted repositories (FORMAT.md §Encryption): nothing readable in the packs, tampering
//! in every form an error naming what failed and never wrong bytes, and the key slots.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{ok, ok_with_env, stderr, xstore, xstore_with_env};
use xstore_tests::plaintext::{assert_nothing_readable, contains, marked_tree, plain_chunk_ids};

/// Every pack file of a local repository.
fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in fs::read_dir(repo.join("packs")).unwrap() {
        let sub = sub.unwrap().path();
        if !sub.is_dir() {
            continue;
        }
        for f in fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "pack") {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

fn restore_exactly(repo: &Path, work: &Path, src: &Path, name: &str) {
    let target = work.join(name);
    ok(repo, &["restore", "h@latest", target.to_str().unwrap()]);
    xstore_tests::assert_same_tree(src, &xstore_tests::restored_path(&target, src), true);
}

#[test]
fn packs_hold_no_marker_no_name_and_no_plain_chunk_id() {
    let w = tempfile::tempdir().unwrap();
    let (repo, src) = (w.path().join("repo"), w.path().join("src"));
    let files = marked_tree(&src);
    let created = ok(&repo, &["init"]);
    assert!(
        created.contains("created encrypted repository"),
        "{created}"
    );
    ok(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    let params = xstore::Repository::open_read_only(&repo)
        .unwrap()
        .chunker_params();
    let ids = plain_chunk_ids(&params, &files);
    assert!(ids.len() > 20, "{}", ids.len());
    let packs = pack_files(&repo);
    assert!(!packs.is_empty());
    for p in &packs {
        assert_nothing_readable(&p.display().to_string(), &fs::read(p).unwrap(), &ids);
    }
    // The same tree in an unencrypted repository shows all three, as the test expects.
    let plain = w.path().join("plain");
    ok(&plain, &["init", "--no-encryption"]);
    ok(
        &plain,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    let all: Vec<u8> = pack_files(&plain)
        .iter()
        .flat_map(|p| fs::read(p).unwrap())
        .collect();
    assert!(contains(&all, &ids[0].0));
    restore_exactly(&repo, w.path(), &src, "restored");
    ok(&repo, &["check", "--read-data"]);
}

/// A repository with two snapshots of `h` (two data packs), the id and pack of a chunk of
/// each backup's new file.
struct Tampered {
    w: tempfile::TempDir,
    repo: PathBuf,
    src: PathBuf,
    first: (xstore::ChunkId, PathBuf, xstore::BlobLoc),
    second: (xstore::ChunkId, PathBuf, xstore::BlobLoc),
}

fn two_packs() -> Tampered {
    let w = tempfile::tempdir().unwrap();
    let (repo, src) = (w.path().join("repo"), w.path().join("src"));
    fs::create_dir(&src).unwrap();
    fs::write(
        src.join("one.bin"),
        xstore::chunker::seeded_bytes(1, 300_000),
    )
    .unwrap();
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    fs::write(
        src.join("two.bin"),
        xstore::chunker::seeded_bytes(2, 300_000),
    )
    .unwrap();
    ok(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    let locate = |name: &str| {
        let id = common::file_chunk(&repo, "h@latest", &src.join(name), 0);
        let loc = xstore::Repository::open_read_only(&repo)
            .unwrap()
            .blob_location(&id)
            .unwrap()
            .unwrap();
        let hex = loc.pack.to_string();
        let path = repo
            .join("packs")
            .join(&hex[..2])
            .join(format!("{hex}.pack"));
        (id, path, loc)
    };
    let (first, second) = (locate("one.bin"), locate("two.bin"));
    assert_ne!(first.1, second.1, "two data packs");
    Tampered {
        w,
        repo,
        src,
        first,
        second,
    }
}

/// Replaces a (read-only) pack file's bytes, as damage or an attacker underneath would.
fn rewrite(path: &Path, bytes: &[u8]) {
    fs::remove_file(path).unwrap();
    fs::write(path, bytes).unwrap();
}

impl Tampered {
    /// A restore fails with exit 1 and one line naming `what`, and writes no file whose
    /// bytes differ from the source.
    fn restore_refuses(&self, what: &str) {
        let target = self.w.path().join(format!("restore-{}", rand_suffix()));
        let out = xstore(
            &self.repo,
            &["restore", "h@latest", target.to_str().unwrap()],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].starts_with("xstore: error: "), "{err}");
        assert!(lines[0].contains(what), "{what} in {err}");
        let restored = xstore_tests::restored_path(&target, &self.src);
        for name in ["one.bin", "two.bin"] {
            if let Ok(bytes) = fs::read(restored.join(name)) {
                assert_eq!(bytes, fs::read(self.src.join(name)).unwrap(), "{name}");
            }
        }
    }

    /// `check --read-data` exits 4 and names `what`.
    fn check_finds(&self, what: &str) {
        let out = xstore(&self.repo, &["check", "--read-data"]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(4), "{text}");
        assert!(text.contains(what), "{what} in {text}");
    }
}

/// A fresh restore target name per call.
fn rand_suffix() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_flipped_byte_in_a_blob_fails_restore_and_check() {
    let t = two_packs();
    let (id, path, loc) = &t.second;
    let mut bytes = fs::read(path).unwrap();
    bytes[loc.offset as usize + 48 + 200] ^= 0x01;
    rewrite(path, &bytes);
    t.restore_refuses(&format!("blob {id}"));
    t.restore_refuses("fails authentication");
    t.check_finds(&id.to_string());
}

#[test]
fn a_blob_copied_from_another_pack_is_refused() {
    let t = two_packs();
    let (a, b) = (&t.first, &t.second);
    let mut target = fs::read(&b.1).unwrap();
    let source = fs::read(&a.1).unwrap();
    // The first pack's record copied over the second's, at the second's offset.
    let len = (a.2.stored_len.min(b.2.stored_len) + 48) as usize;
    let (from, to) = (a.2.offset as usize, b.2.offset as usize);
    target[to..to + len].copy_from_slice(&source[from..from + len]);
    rewrite(&b.1, &target);
    t.restore_refuses(&format!("blob {}", b.0));
    t.check_finds(&b.0.to_string());
}

#[test]
fn two_packs_swapped_or_a_pack_replaced_by_an_older_one_are_refused() {
    let t = two_packs();
    let (a, b) = (
        fs::read(&t.first.1).unwrap(),
        fs::read(&t.second.1).unwrap(),
    );
    // The newer pack replaced by the older one's bytes.
    rewrite(&t.second.1, &a);
    t.restore_refuses(&format!("blob {}", t.second.0));
    t.check_finds("does not hash to its name");
    // And swapped: each name holds the other's bytes.
    rewrite(&t.first.1, &b);
    t.restore_refuses(" in pack ");
    t.check_finds(&t.first.0.to_string());
}

#[test]
fn a_truncated_trailer_is_found_by_check_and_restore_still_reads_only_authentic_bytes() {
    let t = two_packs();
    let bytes = fs::read(&t.second.1).unwrap();
    rewrite(&t.second.1, &bytes[..bytes.len() - 30]);
    t.check_finds("pack trailer");
    // The blobs themselves are whole and authenticated: restore still gives the exact tree.
    restore_exactly(&t.repo, t.w.path(), &t.src, "after-truncation");
}

#[test]
fn key_slots_add_list_passwd_remove_and_wrong_keys() {
    let w = tempfile::tempdir().unwrap();
    let (repo, src) = (w.path().join("repo"), w.path().join("src"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"content").unwrap();
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["backup", "-q", "--host", "h", src.to_str().unwrap()],
    );
    let list = common::json(&repo, &["key", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["kind"], "key-file");

    let (pw1, pw2) = (w.path().join("pw1"), w.path().join("pw2"));
    fs::write(&pw1, "correct horse battery\n").unwrap();
    fs::write(&pw2, "staple second\n").unwrap();
    let added = ok(
        &repo,
        &["key", "add", "--new-passphrase-file", pw1.to_str().unwrap()],
    );
    assert_eq!(added.trim(), "added key slot 2");
    let list = common::json(&repo, &["key", "list"]);
    assert_eq!(list[1]["kind"], "passphrase", "{list}");

    // With the passphrase alone (no key file where it would be looked for).
    let no_keys = w.path().join("no-keys");
    fs::create_dir(&no_keys).unwrap();
    let by_pass = |pw: &str| {
        vec![
            ("XSTORE_KEY_DIR", no_keys.to_str().unwrap().to_string()),
            ("XSTORE_PASSPHRASE", pw.to_string()),
        ]
    };
    ok_with_env(&repo, &by_pass("correct horse battery"), &["snapshots"]);
    let wrong = xstore_with_env(&repo, &by_pass("incorrect"), &["snapshots"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(
        stderr(&wrong).trim(),
        format!(
            "xstore: error: {}: wrong passphrase: no passphrase slot opens with it",
            repo.join("keys.json").display()
        )
    );
    // No key at all: one line naming the key file looked for.
    let none = xstore_with_env(
        &repo,
        &[("XSTORE_KEY_DIR", no_keys.to_str().unwrap().to_string())],
        &["snapshots"],
    );
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("encrypted, and the key file") && stderr(&none).lines().count() == 1,
        "{}",
        stderr(&none)
    );

    // passwd: the old passphrase's slot is replaced.
    let changed = ok_with_env(
        &repo,
        &by_pass("correct horse battery"),
        &[
            "key",
            "passwd",
            "--new-passphrase-file",
            pw2.to_str().unwrap(),
        ],
    );
    assert!(changed.contains("slot 2 replaced by slot 3"), "{changed}");
    assert!(
        !xstore_with_env(&repo, &by_pass("correct horse battery"), &["snapshots"])
            .status
            .success()
    );
    ok_with_env(&repo, &by_pass("staple second"), &["snapshots"]);

    // remove: the key-file slot goes; the last slot never does.
    ok(&repo, &["key", "remove", "1"]);
    let gone = xstore(&repo, &["snapshots"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("this key file opens no key slot"),
        "{}",
        stderr(&gone)
    );
    let last = xstore_with_env(&repo, &by_pass("staple second"), &["key", "remove", "3"]);
    assert_eq!(last.status.code(), Some(1));
    assert!(
        stderr(&last).contains("key slot 3 is the last one"),
        "{}",
        stderr(&last)
    );
    // The recovery text is printed on request. With it, a lost keys.json is made again.
    let text = ok_with_env(&repo, &by_pass("staple second"), &["key", "export"]);
    assert!(text.starts_with("xk1-"), "{text}");
    let paper = w.path().join("paper");
    fs::write(&paper, &text).unwrap();
    fs::remove_file(repo.join("keys.json")).unwrap();
    let lost = xstore_with_env(&repo, &by_pass("staple second"), &["snapshots"]);
    assert_eq!(lost.status.code(), Some(1));
    assert!(
        stderr(&lost).contains("keys.json is missing"),
        "{}",
        stderr(&lost)
    );
    let recovery = [
        ("XSTORE_KEY_DIR", no_keys.to_str().unwrap().to_string()),
        ("XSTORE_RECOVERY_FILE", paper.to_str().unwrap().to_string()),
    ];
    ok_with_env(&repo, &recovery, &["snapshots"]);
    let new_key = w.path().join("new.key");
    ok_with_env(
        &repo,
        &recovery,
        &["key", "add", "--new-key-file", new_key.to_str().unwrap()],
    );
    ok(
        &repo,
        &["--key-file", new_key.to_str().unwrap(), "snapshots"],
    );
    // The new key file is root-only, and no temporary it was written under is left beside it.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&new_key).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let beside: Vec<_> = fs::read_dir(w.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("new.key"))
        .collect();
    assert_eq!(beside, ["new.key"]);
    // A recovery text with a mistyped digit is refused, naming the mistake.
    let mut typo = text.trim().as_bytes().to_vec();
    typo[4] = if typo[4] == b'a' { b'b' } else { b'a' };
    fs::write(&paper, typo).unwrap();
    let refused = xstore_with_env(&repo, &recovery, &["snapshots"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("a digit is mistyped"),
        "{}",
        stderr(&refused)
    );
    let target = w.path().join("out");
    ok(
        &repo,
        &[
            "--key-file",
            new_key.to_str().unwrap(),
            "restore",
            "h@latest",
            target.to_str().unwrap(),
        ],
    );
    xstore_tests::assert_same_tree(&src, &xstore_tests::restored_path(&target, &src), true);
}

#[test]
fn an_unencrypted_repository_has_no_keys_and_keeps_format_1() {
    let w = tempfile::tempdir().unwrap();
    let repo = w.path().join("repo");
    let out = ok(&repo, &["init", "--no-encryption"]);
    assert!(out.contains("created unencrypted repository"), "{out}");
    assert!(!repo.join("keys.json").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["format_version"], 1);
    let refused = xstore(&repo, &["key", "list"]);
    assert_eq!(refused.status.code(), Some(1));
}
