//! The controller group on a real segment log and RocksDB: commands proposed
//! through Raft change the published metadata, and a restart rebuilds the
//! same metadata from the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use strata_raft::controller::{Command, Metadata, NodeRecord, encode_command};
use strata_raft::{Groups, Identity, NodeInfo, Peers, Request, group};
use strata_storage::{IndexDb, LogConfig, PartitionLog, TopicOverrides, Visibility};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

fn open_log(dir: &std::path::Path, db: &Arc<IndexDb>) -> PartitionLog {
    let index = Arc::new(db.partition(0, 0));
    PartitionLog::open_with(
        "__controller",
        0,
        &dir.join("controller"),
        index,
        LogConfig::default(),
        Visibility::Applied,
    )
    .expect("open controller log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_commands_change_the_metadata_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = IndexDb::open(&dir.path().join("index")).expect("index");
    let config = group::config("test").expect("config");
    let (tx, mut rx) = watch::channel(Arc::new(Metadata::default()));
    let peers = Peers::new(Identity::new(1, vec![1], None), BTreeMap::new(), None);
    let groups = Groups::default();
    let log = open_log(dir.path(), &db);
    let raft = group::start_controller(1, log.clone(), tx, Arc::clone(&config), &peers, &groups).await.expect("start");
    raft.initialize(BTreeMap::from([(1, NodeInfo { addr: "127.0.0.1:1".into() })])).await.expect("initialize");
    raft.wait(Some(WAIT)).state(ServerState::Leader, "leader").await.expect("leads");

    let commands = [
        Command::Bootstrap { cluster_id: "c-1".into() },
        Command::RegisterNode(NodeRecord { id: 1, addr: "127.0.0.1:1".into(), incarnation: "i1".into() }),
        Command::CreateTopic {
            name: "t".into(),
            replicas: vec![vec![1], vec![1]],
            overrides: TopicOverrides::default(),
        },
        // Rejected when applied (the name is taken): changes nothing.
        Command::CreateTopic { name: "t".into(), replicas: vec![vec![1]], overrides: TopicOverrides::default() },
    ];
    for c in &commands {
        raft.client_write(Request::new(encode_command(c).expect("encode"))).await.expect("committed");
    }
    rx.wait_for(|m| m.topics.contains_key("t")).await.expect("published");
    let before = Metadata::clone(&rx.borrow());
    assert_eq!(before.cluster_id.as_deref(), Some("c-1"));
    assert_eq!(before.topics["t"].replicas.len(), 2, "the second creation was rejected");
    assert_eq!(before.next_topic_id, 2);

    // Stop as a process exit would: Raft first, then the log's writer.
    raft.shutdown().await.expect("shutdown");
    drop((raft, groups));
    let writer = log.take_writer().expect("writer");
    drop(log);
    tokio::time::timeout(WAIT, writer).await.expect("the writer ends").expect("writer");

    // Restart on the same directory: the metadata is rebuilt from the log.
    let (tx, rx) = watch::channel(Arc::new(Metadata::default()));
    let log = open_log(dir.path(), &db);
    let groups = Groups::default();
    let raft = group::start_controller(1, log.clone(), tx, config, &peers, &groups).await.expect("restart");
    assert_eq!(*rx.borrow().as_ref(), before, "the same metadata after a restart");
    raft.shutdown().await.expect("shutdown");
}
