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
