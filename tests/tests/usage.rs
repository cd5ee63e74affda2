//! Usage: referenced, exclusive and shared bytes per host, account and snapshot, checked
//! against an independent set-based walk of the DAG and against what expiry and gc free.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use xstore::retention::{Action, KeepPolicy};
use xstore::{ChunkId, Content, Repository, Snapshot};
use xstore_fleet::Account;
use xstore_tests::backup_untiered as backup;
use xstore_tests::{gc_all_dead, seeded_bytes, small_repo};

/// Every blob reachable from the snapshots (their record blobs, trees, chunk lists, data),
/// found with the public browsing API: the oracle for the reference-count simulation.
fn reachable(repo: &Repository, snaps: &[&Snapshot]) -> HashSet<ChunkId> {
    let mut seen = HashSet::new();
    for s in snaps {
        let record = repo.snapshot(&s.id).unwrap().record_id(repo.encryption());
        assert_eq!(
            repo.blob_location(&record).unwrap().unwrap().kind,
            xstore::BlobKind::SnapshotRecord
        );
        seen.insert(record);
    }
    let mut trees: Vec<ChunkId> = snaps.iter().map(|s| s.root).collect();
    while let Some(t) = trees.pop() {
        if !seen.insert(t) {
            continue;
        }
        for e in &repo.tree(&t).unwrap().entries {
            match &e.content {
                Content::Subtree(id) => trees.push(*id),
                Content::ChunkList(id) => {
                    seen.insert(*id);
                }
                _ => {}
            }
            seen.extend(repo.file_chunks(e).unwrap().iter().map(|c| c.id));
        }
    }
    seen
}

/// Stored bytes (header and compressed bytes) of blobs.
fn span_of<'a>(repo: &Repository, ids: impl IntoIterator<Item = &'a ChunkId>) -> u64 {
    ids.into_iter()
        .map(|id| repo.blob_location(id).unwrap().unwrap().span())
        .sum()
}

#[test]
fn usage_matches_the_dag_and_expiry_frees_exactly_the_exclusive_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (shared, only_a, only_b) = (root.join("shared"), root.join("a"), root.join("b"));
    for (dir, seed) in [(&shared, 1u64), (&only_a, 2), (&only_b, 3)] {
        std::fs::create_dir(dir).unwrap();
        for i in 0..3 {
            std::fs::write(
                dir.join(format!("f{i}")),
                seeded_bytes(seed * 10 + i, 300_000),
            )
            .unwrap();
        }
    }
    let repo = small_repo(&root.join("repo"));
    let a1 = backup(&repo, "web-a", &[&shared, &only_a]);
    std::fs::write(only_a.join("f0"), seeded_bytes(99, 200_000)).unwrap();
    let a2 = backup(&repo, "web-a", &[&shared, &only_a]);
    let b1 = backup(&repo, "web-b", &[&shared, &only_b]);

    let all = [&a1, &a2, &b1];
    let of_a = reachable(&repo, &[&a1, &a2]);
    let of_b = reachable(&repo, &[&b1]);
    let usage_a = repo.usage_of(&[a1.clone(), a2.clone()]).unwrap();
    let usage_b = repo.usage_of(std::slice::from_ref(&b1)).unwrap();

    assert_eq!(usage_a.snapshots, 2);
    assert_eq!(usage_a.referenced_blobs, of_a.len() as u64);
    assert_eq!(usage_a.referenced_bytes, span_of(&repo, &of_a));
    let only_in_a: Vec<&ChunkId> = of_a.difference(&of_b).collect();
    assert_eq!(usage_a.exclusive_bytes, span_of(&repo, only_in_a.clone()));
    assert_eq!(usage_a.exclusive_blobs, only_in_a.len() as u64);
    let only_in_b: Vec<&ChunkId> = of_b.difference(&of_a).collect();
    assert_eq!(usage_b.exclusive_bytes, span_of(&repo, only_in_b));
    let both: Vec<&ChunkId> = of_a.intersection(&of_b).collect();
    assert!(
        !both.is_empty(),
        "the shared directory must be shared blobs"
    );
    assert_eq!(usage_b.shared_bytes, span_of(&repo, both.clone()));
    assert_eq!(usage_a.shared_bytes, span_of(&repo, both));
    assert_eq!(
        usage_a.newest_logical_bytes, a2.stats.logical_bytes,
        "newest snapshot of the host"
    );
    assert_eq!(a2.stats.logical_bytes, 5 * 300_000 + 200_000);

    // An account holding both hosts shares nothing with anyone.
    let account = Account {
        name: "acme".into(),
        package: None,
        allocation: 1 << 20,
        hard_limit: 3 << 20,
        logical_ratio: xstore_fleet::DEFAULT_LOGICAL_RATIO,
        nfs: xstore_fleet::NfsPolicy::default(),
        hosts: vec![
            xstore_tests::host_name("web-a"),
            xstore_tests::host_name("web-b"),
        ],
    };
    let acc = &xstore_fleet::monitor::account_usage(&repo, &[account], 1.0, 2.0).unwrap()[0];
    let everything: HashSet<ChunkId> = reachable(&repo, &all);
    assert_eq!(acc.usage.referenced_bytes, span_of(&repo, &everything));
    assert_eq!(acc.usage.exclusive_bytes, acc.usage.referenced_bytes);
    assert_eq!(acc.usage.shared_bytes, 0);
    let raw: u64 = everything
        .iter()
        .map(|id| u64::from(repo.blob_location(id).unwrap().unwrap().raw_len))
        .sum();
    assert_eq!(acc.usage.referenced_raw_bytes, raw);
    assert!(acc.inflated_hosts.is_empty(), "{acc:?}");
    assert!(acc.over_allocation, "{acc:?}");
    assert_eq!(
        acc.state,
        xstore_fleet::monitor::CheckState::Critical,
        "more than 2x 1 MiB"
    );

    // Per snapshot: the older snapshot of web-a alone holds the old f0 (and the trees above).
    let per_snapshot = repo
        .snapshot_usage(&xstore_tests::host_name("web-a"))
        .unwrap();
    assert_eq!(per_snapshot.len(), 2);
    let newer = reachable(&repo, &[&a2, &b1]);
    let only_a1: HashSet<ChunkId> = reachable(&repo, &[&a1])
        .difference(&newer)
        .copied()
        .collect();
    assert_eq!(per_snapshot[0].id, a1.id);
    assert_eq!(per_snapshot[0].exclusive_bytes, span_of(&repo, &only_a1));
    assert!(
        per_snapshot[0].exclusive_bytes > 300_000 / 2,
        "old f0 is incompressible"
    );
    assert_eq!(per_snapshot[1].new_stored_bytes, a2.stats.new_stored_bytes);

    // Deleting web-b releases exactly what du called exclusive, and gc frees it.
    let dead_before = repo.stats().unwrap().dead_bytes;
    let mut plan = repo
        .plan_forget(
            &KeepPolicy {
                last: Some(1),
                ..Default::default()
            },
            Some(&xstore_tests::host_name("web-b")),
            xstore::now_ns(),
        )
        .unwrap();
    for d in &mut plan.decisions {
        d.action = Action::Expire;
        d.changed = true;
        d.tiers.clear();
        d.positions.clear();
    }
    assert_eq!(repo.hosts().unwrap(), ["web-a", "web-b"]);
    let applied = repo.apply_plan(&plan).unwrap();
    assert_eq!(applied.released.snapshots, 1);
    // A host whose last snapshot expired is no longer listed.
    assert_eq!(repo.hosts().unwrap(), ["web-a"]);
    assert_eq!(applied.released.stored_bytes, usage_b.exclusive_bytes);
    let after = repo.stats().unwrap();
    assert_eq!(after.dead_bytes - dead_before, usage_b.exclusive_bytes);
    let live_before = after.stored_bytes - after.dead_bytes;
    let gc = gc_all_dead(&repo);
    let end = repo.stats().unwrap();
    assert_eq!(end.dead_bytes, 0);
    assert!(gc.bytes_freed >= usage_b.exclusive_bytes, "{gc:?}");
    // What remains is web-a's data: its referenced bytes, now all exclusive.
    let usage_a_after = repo.usage_of(&[a1, a2]).unwrap();
    assert_eq!(usage_a_after.referenced_bytes, usage_a.referenced_bytes);
    assert_eq!(usage_a_after.exclusive_bytes, usage_a.referenced_bytes);
    assert!(live_before >= usage_a.referenced_bytes);
}

#[test]
fn usage_of_nothing_is_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = small_repo(&tmp.path().join("repo"));
    assert_eq!(repo.usage_of(&[]).unwrap(), xstore::Usage::default());
    assert!(repo
        .snapshot_usage(&xstore_tests::host_name("web1"))
        .unwrap()
        .is_empty());
}

/// `fleet_usage` (one pass for the whole fleet, what `du` and the account checks use) gives
/// exactly what `usage_of` gives host by host and group by group: hosts sharing a directory,
/// a multi-chunk file (a chunk list) shared by two of them, a host's data changing between
/// its snapshots, and a group naming a host without snapshots.
#[test]
fn fleet_usage_equals_usage_of_for_every_host_and_group() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dirs: Vec<std::path::PathBuf> = ["shared", "ab", "a", "b", "c"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    for (k, dir) in dirs.iter().enumerate() {
        std::fs::create_dir(dir).unwrap();
        for i in 0..3u64 {
            std::fs::write(
                dir.join(format!("f{i}")),
                seeded_bytes(k as u64 * 10 + i, 40_000),
            )
            .unwrap();
        }
    }
    // Large enough for several chunks: a chunk list, referenced by hosts a and b.
    std::fs::write(dirs[1].join("big"), seeded_bytes(77, 900_000)).unwrap();
    let (shared, ab, a, b, c) = (&dirs[0], &dirs[1], &dirs[2], &dirs[3], &dirs[4]);
    // Tiny chunks, so that `big` has more chunks than a tree entry holds inline.
    let repo = Repository::init(
        &root.join("repo"),
        &xstore::InitOptions {
            chunker: xstore::ChunkerParams::new(64, 256, 1024).unwrap(),
            compression_level: 3,
            pack_size: 1 << 20,
            group: None,
        },
    )
    .unwrap();
    let a1 = backup(&repo, "web-a", &[shared, ab, a]);
    std::fs::write(a.join("f0"), seeded_bytes(99, 50_000)).unwrap();
    let a2 = backup(&repo, "web-a", &[shared, ab, a]);
    let b1 = backup(&repo, "web-b", &[shared, ab, b]);
    let c1 = backup(&repo, "web-c", &[shared, c]);
    let c2 = backup(&repo, "web-c", &[c]);
    let big = repo.lookup(&b1, &format!("{}/big", ab.display())).unwrap();
    assert!(
        matches!(big, xstore::Node::Entry(ref e) if matches!(e.content, Content::ChunkList(_))),
        "{big:?}"
    );

    let names = |names: &[&str]| {
        names
            .iter()
            .map(|n| xstore_tests::host_name(n))
            .collect::<Vec<_>>()
    };
    let groups = vec![
        names(&["web-a", "web-b"]),
        names(&["web-c"]),
        names(&["web-a", "web-b", "web-c"]),
        names(&["web-b", "never-backed-up"]),
        vec![],
    ];
    let fleet = repo.fleet_usage(&groups).unwrap();
    assert_eq!(
        fleet.hosts.keys().collect::<Vec<_>>(),
        ["web-a", "web-b", "web-c"]
    );
    for (host, snaps) in [
        ("web-a", vec![a1.clone(), a2.clone()]),
        ("web-b", vec![b1.clone()]),
        ("web-c", vec![c1.clone(), c2.clone()]),
    ] {
        let want = repo.usage_of(&snaps).unwrap();
        assert!(
            want.exclusive_bytes > 0 && want.shared_bytes > 0,
            "{host}: {want:?}"
        );
        assert_eq!(fleet.hosts[host], want, "host {host}");
    }
    let group_snaps = [
        vec![a1.clone(), a2.clone(), b1.clone()],
        vec![c1.clone(), c2.clone()],
        vec![a1, a2, b1.clone(), c1, c2],
        vec![b1],
        vec![],
    ];
    for (g, snaps) in group_snaps.iter().enumerate() {
        assert_eq!(
            fleet.groups[g],
            repo.usage_of(snaps).unwrap(),
            "group {:?}",
            groups[g]
        );
    }
    // The whole fleet shares nothing with anyone.
    assert_eq!(fleet.groups[2].shared_bytes, 0);
    assert!(fleet.groups[0].shared_bytes > 0, "a and b share with c");
}
