//! The agent and the server's RemoteSource talking over in-process pipes: the allow-list,
//! symlink refusal, and a hostile agent on the other end.
#![allow(clippy::unwrap_used)]

use std::io::{self, Write};
use std::path::Path;

use xstore::{
    ChunkerParams, EntryKind, EntryMeta, InitOptions, RemoteSource, Repository, SessionTerms,
    Source, SourceKind,
};
use xstore_agent::{AgentConfig, ServeOptions};
use xstore_fleet::{HostSpec, PullOptions};
use xstore_format::protocol::{write_frame, AgentMsg, WireEntry, PROTOCOL_VERSIONS};
use xstore_tests::RestoreNow;
use xstore_tests::{assert_same_tree, make_fixture, restored_path};

/// Starts `serve` for `config` on a thread and connects a RemoteSource to it.
fn connect(config: AgentConfig) -> RemoteSource {
    connect_with(
        config,
        ServeOptions {
            workers: 2,
            pinned_level: None,
        },
    )
}

/// [`connect`] to an agent served with `options`.
fn connect_with(config: AgentConfig, options: ServeOptions) -> RemoteSource {
    let (from_agent, agent_out) = io::pipe().unwrap();
    let (agent_in, to_agent) = io::pipe().unwrap();
    std::thread::spawn(move || {
        let _ = xstore_agent::serve_with(&config, agent_in, agent_out, options);
    });
    RemoteSource::connect(
        from_agent,
        to_agent,
        SessionTerms::for_repository(ChunkerParams::default_params(), 3),
    )
    .unwrap()
}

/// A host of account `a` (never contacted: the tests hand its source in).
fn host_spec(name: &str) -> HostSpec {
    HostSpec {
        name: xstore_tests::host_name(name),
        account: "a".into(),
        address: "127.0.0.1".into(),
        port: 22344,
        user: "root".into(),
        identity: None,
        ssh: "ssh".into(),
        ssh_config: None,
        ssh_options: Vec::new(),
        agent_command: "xstore agent".into(),
        paths: Vec::new(),
        schedule: None,
        timeout: std::time::Duration::from_secs(60),
        pull_cap: u64::MAX,
        raw_chunks: true,
        mass_change: 0.5,
        warning_age: None,
        critical_age: None,
    }
}

fn config_for(root: &Path) -> AgentConfig {
    AgentConfig::parse(&format!("{}\n", root.display()), Path::new("backup.conf")).unwrap()
}

#[test]
fn the_agent_serves_its_list_only_and_never_follows_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let data = root.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/file"), b"inside").unwrap();
    std::fs::write(root.join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(&root, data.join("up")).unwrap();
    std::os::unix::fs::symlink(root.join("secret"), data.join("secret-link")).unwrap();
    let source = connect(config_for(&data));
    assert_eq!(source.agent().roots, vec![data.clone()]);

    let refused = |r: io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{what}: {e}");
    };
    refused(source.stat(&root.join("secret")).map(drop), "stat outside");
    refused(source.list(&root).map(drop), "list of an ancestor");
    refused(source.open(&root.join("secret")).map(drop), "open outside");
    refused(
        source.open(&data.join("up/secret")).map(drop),
        "open through a symlinked directory",
    );
    // Listing a symlink fails (ENOTDIR under O_NOFOLLOW) instead of listing its target.
    assert!(source.list(&data.join("up")).is_err());
    refused(
        source.open(&data.join("secret-link")).map(drop),
        "open of a symlink",
    );
    let e = source
        .stat(Path::new("relative/path"))
        .expect_err("relative");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    let e = source
        .open(&data.join("sub/../../secret"))
        .map(drop)
        .expect_err("dot-dot");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");

    // Ancestors of a root: metadata only.
    assert_eq!(
        source.stat(&root).unwrap().kind,
        SourceKind::Stored(EntryKind::Dir)
    );
    // Inside: served, symlinks reported as symlinks.
    let listing = source.list(&data).unwrap();
    let up = listing.iter().find(|(n, _)| n == b"up").unwrap();
    assert_eq!(
        up.1.as_ref().unwrap().kind,
        SourceKind::Stored(EntryKind::Symlink)
    );
    assert_eq!(
        source.read_link(&data.join("up")).unwrap(),
        root.as_os_str().as_encoded_bytes()
    );
    let mut f = source.open(&data.join("sub/file")).unwrap();
    let chunks = f.remote_chunks().unwrap().unwrap();
    let got = f.fetch_chunks(&chunks).unwrap();
    assert_eq!(got[0].data, b"inside");
    source.finish().unwrap();
    source.close();
}

#[test]
fn backup_through_the_agent_restores_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let data = root.join("data");
    make_fixture(&data, 9);
    let repo = Repository::init(&root.join("repo"), &InitOptions::default()).unwrap();
    let source = connect(config_for(&data));
    let host = host_spec("web1");
    let snap =
        xstore_fleet::pull::backup_remote(&repo, &host, &PullOptions::default(), &source).unwrap();
    source.close();
    assert!(snap.is_complete(), "{:?}", snap.errors);
    assert!(snap.stats.wire_bytes > 0 && snap.stats.files_read > 0);
    let target = root.join("restored");
    repo.restore_now(&snap, &target, &xstore_tests::exact_restore())
        .unwrap();
    assert_same_tree(&data, &restored_path(&target, &data), true);

    // With the previous snapshot's tree, an unchanged directory costs a digest, not a listing,
    // and the answer is the same listing.
    let tree = match repo.lookup(&snap, data.to_str().unwrap()).unwrap() {
        xstore::Node::Entry(e) => repo.tree(&e.subtree().unwrap()).unwrap(),
        _ => unreachable!(),
    };
    let source = connect(config_for(&data));
    let metas = |v: Vec<(Vec<u8>, io::Result<EntryMeta>)>| -> Vec<(Vec<u8>, EntryMeta)> {
        v.into_iter().map(|(n, m)| (n, m.unwrap())).collect()
    };
    let at = source.bytes_received();
    let known = metas(source.list_known(&data, &tree).unwrap());
    let known_cost = source.bytes_received() - at;
    let at = source.bytes_received();
    let fresh = metas(source.list(&data).unwrap());
    let list_cost = source.bytes_received() - at;
    assert_eq!(known, fresh);
    assert!(known_cost * 4 < list_cost, "{known_cost} vs {list_cost}");
    assert_eq!(
        source.read_link(&data.join("link-rel")).unwrap(),
        b"small.txt"
    );
    // A changed entry makes the agent send the listing.
    std::fs::write(data.join("small.txt"), b"changed").unwrap();
    let changed = metas(source.list_known(&data, &tree).unwrap());
    let small = |v: &[(Vec<u8>, EntryMeta)]| v.iter().find(|(n, _)| n == b"small.txt").unwrap().1;
    assert_eq!(small(&changed).attrs.size, 7);
    assert_ne!(small(&changed), small(&known));

    // Hinted listings (`will_list`) give the same answers: with the previous tree (the agent
    // answers from the digest or with the changed listing), without it, and when the hint
    // carried another tree's digest than the listing asks with (not used: asked again).
    source.will_list(&[(data.clone(), Some(&tree))]);
    assert_eq!(metas(source.list_known(&data, &tree).unwrap()), changed);
    source.will_list(&[(data.clone(), None)]);
    assert_eq!(metas(source.list(&data).unwrap()), changed);
    source.will_list(&[(data.clone(), None)]);
    assert_eq!(metas(source.list_known(&data, &tree).unwrap()), changed);
    std::fs::write(data.join("small.txt"), b"small").unwrap();
    let sub = data.join("sub");
    source.will_list(&[(data.clone(), Some(&tree)), (sub.clone(), None)]);
    let restored = metas(source.list_known(&data, &tree).unwrap());
    assert_eq!(restored.len(), known.len());
    let sorted = |mut v: Vec<(Vec<u8>, EntryMeta)>| {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(
        sorted(metas(source.list(&sub).unwrap())),
        sorted(metas(xstore::LocalSource.list(&sub).unwrap()))
    );
    source.finish().unwrap();
    source.close();
}

/// Text zstd shrinks about threefold, different in every file (no chunk repeats).
fn words(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "backup ",
        "server ",
        "pull ",
        "chunk ",
        "snapshot ",
        "host ",
        "daily ",
        "weekly ",
        "restore ",
        "verify ",
        "agent ",
        "link ",
        "index ",
        "pack ",
        "compact ",
        "tier ",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        if x.is_multiple_of(11) {
            out.extend_from_slice(format!("{}\n", x % 100_000).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// The `data` row of the repository's statistics: (raw, stored) bytes of live file data.
fn data_bytes(repo: &Repository) -> (u64, u64) {
    let stats = repo.stats().unwrap();
    let row = stats.by_kind.iter().find(|k| k.kind == "data").unwrap();
    (row.raw_bytes, row.stored_bytes)
}

/// An agent at its last step (its CPU the bound on a fast link) sends chunks uncompressed
/// (`raw-chunks`): the server verifies them as any chunk, stores them uncompressed while the
/// pull's budgets have room to spare, and `compact` compresses them later. An account near
/// its limit gets them compressed by the server instead.
#[test]
fn chunks_sent_uncompressed_are_stored_so_until_compact_unless_the_account_is_tight() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..24u64 {
        std::fs::write(data.join(format!("log-{i}.txt")), words(i, 300_000)).unwrap();
    }
    let uncompressed = ServeOptions {
        workers: 2,
        pinned_level: Some(xstore_agent::effort::UNCOMPRESSED),
    };
    let repo = Repository::init(&root.join("repo"), &InitOptions::default()).unwrap();
    let source = connect_with(config_for(&data), uncompressed);
    let snap = xstore_fleet::pull::backup_remote(
        &repo,
        &host_spec("web1"),
        &PullOptions::default(),
        &source,
    )
    .unwrap();
    source.close();
    assert!(snap.is_complete(), "{:?}", snap.errors);
    // On the wire and on disk as raw bytes (with record headers).
    assert!(
        snap.stats.wire_bytes >= 24 * 300_000,
        "{}",
        snap.stats.wire_bytes
    );
    let (raw, stored) = data_bytes(&repo);
    assert_eq!(raw, 24 * 300_000);
    assert!(
        stored >= raw && stored < raw + raw / 50,
        "{stored} for {raw}"
    );
    let restore = |repo: &Repository, snap: &xstore::Snapshot, to: &str| {
        let target = root.join(to);
        repo.restore_now(snap, &target, &xstore_tests::exact_restore())
            .unwrap();
        assert_same_tree(&data, &restored_path(&target, &data), true);
    };
    restore(&repo, &snap, "restored-raw");

    // Compact takes the pull's packs and stores the survivors compressed.
    let report = repo
        .compact(&xstore::CompactOptions {
            min_age: std::time::Duration::ZERO,
            ..xstore::CompactOptions::default()
        })
        .unwrap();
    assert!(report.packs_compacted >= 1, "{report:?}");
    let (raw, stored) = data_bytes(&repo);
    assert!(stored * 2 < raw, "{stored} for {raw}");
    restore(&repo, &snap, "restored-compacted");
    let check = repo
        .check(xstore::CheckOptions {
            read_data: true,
            progress: None,
        })
        .unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);

    // The account already uses 60 % of its hard limit: no room to spare, so the server
    // compresses what the agent sent uncompressed.
    let tight = Repository::init(&root.join("tight"), &InitOptions::default()).unwrap();
    let mut opts = PullOptions::default();
    opts.account_budgets.insert(
        "a".into(),
        xstore::StoreBudget::new("account a's hard limit", 100_000_000, 40_000_000),
    );
    let source = connect_with(config_for(&data), uncompressed);
    let snap =
        xstore_fleet::pull::backup_remote(&tight, &host_spec("web1"), &opts, &source).unwrap();
    source.close();
    assert!(snap.stats.wire_bytes >= 24 * 300_000);
    let (raw, stored) = data_bytes(&tight);
    assert!(stored * 2 < raw, "{stored} for {raw}");
    restore(&tight, &snap, "restored-tight");
}

/// Files hinted with `will_open` are requested at once; opening them (in any order) gives the
/// same answers as unhinted opens, and a refusal or a missing file arrives at its `open`.
#[test]
fn hinted_files_open_like_unhinted_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761).rotate_left(7) as u8)
        .collect();
    std::fs::write(data.join("big"), &big).unwrap();
    std::fs::write(data.join("small"), b"small file").unwrap();
    std::fs::write(root.join("outside"), b"secret").unwrap();
    let source = connect(config_for(&data));
    let hint = |path: std::path::PathBuf, size: u64| xstore::OpenHint {
        path,
        size,
        probably_known: false,
        has_previous: false,
    };
    let hints = vec![
        hint(data.join("small"), 10),
        hint(data.join("big"), big.len() as u64),
        hint(data.join("gone"), 5),
        hint(root.join("outside"), 6),
    ];
    source.will_open(&hints);
    // Opened in another order than hinted, and one path twice (the second goes on demand).
    let outside = source.open(&root.join("outside")).map(drop).unwrap_err();
    assert_eq!(outside.kind(), io::ErrorKind::PermissionDenied, "{outside}");
    let gone = source.open(&data.join("gone")).map(drop).unwrap_err();
    assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{gone}");
    let read_all = |path: &Path| -> Vec<u8> {
        let mut f = source.open(path).unwrap();
        let chunks = f.remote_chunks().unwrap().unwrap();
        let mut out = Vec::new();
        for c in f.fetch_chunks(&chunks).unwrap() {
            out.extend_from_slice(&c.data);
        }
        assert_eq!(f.current_meta().unwrap().attrs.size, out.len() as u64);
        out
    };
    assert_eq!(read_all(&data.join("big")), big);
    assert_eq!(read_all(&data.join("small")), b"small file");
    assert_eq!(read_all(&data.join("small")), b"small file");
    source.finish().unwrap();
    source.close();
}

/// A fake agent: sends `frames` (after a valid hello), then keeps the stream open.
fn hostile(frames: Vec<Vec<u8>>) -> RemoteSource {
    let (from_agent, mut agent_out) = io::pipe().unwrap();
    let (agent_in, to_agent) = io::pipe().unwrap();
    std::thread::spawn(move || {
        let hello = AgentMsg::Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            capabilities: Vec::new(),
            roots: vec![b"/data".to_vec()],
            software: b"evil".to_vec(),
        };
        write_frame(&mut agent_out, &hello.encode()).unwrap();
        agent_out.flush().unwrap();
        // Wait for the server's hello, then the first request, before answering.
        let mut input = agent_in;
        let _ = xstore_format::protocol::read_frame(&mut input);
        let _ = xstore_format::protocol::read_frame(&mut input);
        for f in frames {
            if agent_out.write_all(&f).is_err() {
                return;
            }
        }
        let _ = agent_out.flush();
        std::thread::sleep(std::time::Duration::from_secs(5));
    });
    RemoteSource::connect(
        from_agent,
        to_agent,
        SessionTerms::for_repository(ChunkerParams::default_params(), 3),
    )
    .unwrap()
}

fn frame(msg: &AgentMsg) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, &msg.encode()).unwrap();
    out
}

fn meta(kind: SourceKind) -> EntryMeta {
    EntryMeta {
        kind,
        attrs: xstore_format::meta::Attrs {
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 1,
            dev: 1,
            nlink: 1,
            rdev: 0,
        },
    }
}

#[test]
fn a_hostile_agent_breaks_only_its_own_session() {
    // Garbage instead of a reply: every call fails and finish() refuses the backup.
    let source = hostile(vec![b"\x05\x00\x00\x00\xffjunk".to_vec()]);
    let e = source.stat(Path::new("/data")).expect_err("garbage");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    assert!(e.to_string().contains("invalid message"), "{e}");
    assert!(source.finish().is_err());
    assert!(source.list(Path::new("/data")).is_err());

    // A reply to a request never made.
    let source = hostile(vec![frame(&AgentMsg::Stat {
        req: 999,
        entry: WireEntry {
            name: Vec::new(),
            meta: Ok(meta(SourceKind::Stored(EntryKind::Dir))),
            target: None,
            xattrs: Vec::new(),
        },
    })]);
    assert!(source.stat(Path::new("/data")).is_err());
    assert!(source.finish().is_err());

    // Names that would escape a restore target are dropped; duplicates too.
    let entry = |name: &[u8]| WireEntry {
        name: name.to_vec(),
        meta: Ok(meta(SourceKind::Stored(EntryKind::File))),
        target: None,
        xattrs: Vec::new(),
    };
    let source = hostile(vec![frame(&AgentMsg::List {
        req: 1,
        more: false,
        entries: vec![
            entry(b".."),
            entry(b"a/b"),
            entry(b""),
            entry(b"ok"),
            entry(b"ok"),
        ],
    })]);
    let names: Vec<Vec<u8>> = source
        .list(Path::new("/data"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![b"ok".to_vec()]);
    source.finish().unwrap();

    // A listing that never ends: refused once it passes the byte limit, not buffered forever.
    let big = frame(&AgentMsg::List {
        req: 1,
        more: true,
        entries: (0..15_000)
            .map(|i| entry(format!("{i:04000}").as_bytes()))
            .collect(),
    });
    let frames = xstore::MAX_LISTING_BYTES / big.len() + 2;
    let source = hostile(vec![big; frames]);
    let e = source
        .list(Path::new("/data"))
        .expect_err("endless listing");
    assert!(e.to_string().contains("a listing of more than"), "{e}");
    assert!(source.finish().is_err());
}
