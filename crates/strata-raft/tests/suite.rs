//! openraft's own storage test suite against the segment log: every check
//! runs on a fresh data directory with a real RocksDB and real segment files.

use std::sync::Arc;

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
