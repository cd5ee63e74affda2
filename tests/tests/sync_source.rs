//! A sync source that lies in its records: the replica keeps its own invariants.
#![allow(clippy::unwrap_used)]

use xstore::{BlobKind, ChunkId, Repository, Snapshot, SyncOptions, SyncSource};

/// A real repository whose record list names one snapshot twice and gives labels that are
/// not tier names (one a path).
struct Lying<'a>(&'a Repository);

impl SyncSource for Lying<'_> {
    fn location(&self) -> String {
        "lying source".into()
    }
    fn repository_id(&self) -> String {
        SyncSource::repository_id(self.0)
    }
    fn probe_id(&self) -> ChunkId {
        self.0.probe_id()
    }
    fn plain_ids(&self) -> bool {
        self.0.plain_ids()
    }
    fn snapshots(&self) -> xstore::Result<Vec<Snapshot>> {
        let mut all = Repository::snapshots(self.0)?;
        for s in &mut all {
            s.tiers = vec!["hourly".into(), "../../etc".into(), "Daily/0".into()];
        }
        let again = all.clone();
        all.extend(again);
        Ok(all)
    }
    fn read_blob(&self, id: &ChunkId, kind: BlobKind) -> xstore::Result<Vec<u8>> {
        SyncSource::read_blob(self.0, id, kind)
    }
}

#[test]
fn duplicated_records_and_path_labels_from_a_source_change_nothing_here() {
    let w = tempfile::tempdir().unwrap();
    let data = w.path().join("data");
    xstore_tests::make_fixture(&data, 3);
    let src = xstore_tests::small_repo(&w.path().join("src"));
    xstore_tests::backup_untiered(&src, "h1", &[&data]);
    xstore_tests::backup_untiered(&src, "h2", &[&data]);
    let dst = xstore_tests::small_repo(&w.path().join("dst"));
    let source = Lying(&src);
    let opts = SyncOptions::default();
    let plan = dst.plan_sync(&source, &opts).unwrap();
    assert_eq!(plan.copy.len(), 2, "each snapshot once");
    let report = dst.sync(&source, &plan, &opts).unwrap();
    assert_eq!(report.snapshots, 2);
    for s in dst.snapshots().unwrap() {
        assert_eq!(
            s.tiers,
            vec!["hourly".to_string()],
            "only valid tier names are kept"
        );
    }
    let check = dst.check(Default::default()).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    // A second run copies nothing.
    let again = dst.plan_sync(&source, &opts).unwrap();
    assert!(again.copy.is_empty());
}
