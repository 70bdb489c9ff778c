//! openraft's own storage test suite against the segment log: every check
//! runs on a fresh data directory with a real RocksDB and real segment files.

use std::sync::Arc;
use std::time::Duration;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use strata_raft::{LogStore, StateMachine, TypeConfig};
use strata_storage::{IndexDb, LogConfig, PartitionLog, Visibility};

/// Keeps a test's directory and database alive while openraft uses them.
struct Guard {
    _dir: tempfile::TempDir,
    _db: Arc<IndexDb>,
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = IndexDb::open(&dir.path().join("index")).expect("index");
        let index = Arc::new(db.partition(1, 0));
        let log =
            PartitionLog::open_with("t", 0, &dir.path().join("p0"), index, LogConfig::default(), Visibility::Applied)
                .expect("open log");
        let sm = StateMachine::open(log.clone()).await.expect("open state machine");
        let store = LogStore::open(log).await.expect("open log store");
        Ok((Guard { _dir: dir, _db: db }, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(Builder).await {
        panic!("openraft's storage suite failed: {e}");
    }
}

/// openraft saves the commit point as soon as it learns it, which can be
/// before this replica's own copy of those entries is durable (entries still
/// queued for the writer die with a kill -9). Found by the jepsen-like suite:
/// a node restarted after `kill -9` of every node could not start the group
/// (openraft re-applies up to the saved commit point and found no entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_commit_point_is_trusted_only_when_the_log_holds_that_entry() {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::testing::{blank_ent, log_id};

    let dir = tempfile::tempdir().expect("tempdir");
    let db = IndexDb::open(&dir.path().join("index")).expect("index");
    let log = PartitionLog::open_with(
        "t",
        0,
        &dir.path().join("p0"),
        Arc::new(db.partition(1, 0)),
        LogConfig::default(),
        Visibility::Applied,
    )
    .expect("open log");
    // Every save is written (not one per 100 ms as in a running group).
    let mut store = LogStore::open(log.clone()).await.expect("open log store").with_hint_interval(Duration::ZERO);
    let entries = (0..3).map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect::<Vec<_>>();
    store.append(entries, IOFlushed::noop()).await.expect("append");
    log.wait_durable(2).await.expect("durable");

    let held = log_id::<TypeConfig>(1, 1, 2);
    store.save_committed(Some(held)).await.expect("save");
    assert_eq!(store.read_committed().await.expect("read"), Some(held));

    // Beyond the log's end: not trusted.
    store.save_committed(Some(log_id::<TypeConfig>(1, 1, 5))).await.expect("save");
    assert_eq!(store.read_committed().await.expect("read"), None);

    // Same index, another leader's entry: not trusted either.
    store.save_committed(Some(log_id::<TypeConfig>(2, 1, 2))).await.expect("save");
    assert_eq!(store.read_committed().await.expect("read"), None);
}

/// Found with the snapshot-metadata fuzz harness, on a hand-made input
/// (fuzz/corpus/snapshot/regression-last-index): installing a snapshot whose
/// last entry is at index u64::MAX panicked on the overflow of the next
/// index. It is refused, and the log is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_at_the_last_index_is_refused() {
    use openraft::storage::RaftStateMachine;
    use strata_raft::state_machine::PartitionSnapshot;
    use strata_raft::types::{SnapshotMeta, log_id};
    use strata_storage::EntryId;

    let dir = tempfile::tempdir().expect("tempdir");
    let db = IndexDb::open(&dir.path().join("index")).expect("index");
    let log = PartitionLog::open_with(
        "t",
        0,
        &dir.path().join("p0"),
        Arc::new(db.partition(1, 0)),
        LogConfig::default(),
        Visibility::Applied,
    )
    .expect("open log");
    let mut sm = StateMachine::open(log.clone()).await.expect("open state machine");
    let meta =
        SnapshotMeta { last_log_id: Some(log_id(EntryId { term: 3, index: u64::MAX })), ..SnapshotMeta::default() };
    let data = PartitionSnapshot { next_offset: 10, ..PartitionSnapshot::default() };
    let err = sm.install_snapshot(&meta, data).await.expect_err("no room after the last index");
    assert!(err.to_string().contains("leaves no index"), "{err}");
    assert_eq!((log.last_purged(), log.log_start_offset()), (None, 0), "the log was changed");
    assert!(sm.get_current_snapshot().await.expect("current").is_none(), "the snapshot was kept");
}
