//! Partition Raft groups across three nodes in one process, each node with
//! its own data directory, RocksDB and gRPC server on a real loopback socket:
//! replication, identical logs on every replica, what consumers see on a
//! follower, failover when the leader goes away, and several groups sharing
//! one connection per node pair.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::ProgressResponder;
use strata_raft::group::PartitionRaft;
use strata_raft::types::LocalFlush;
use strata_raft::{GroupId, Groups, Identity, NodeId, NodeInfo, Peers, RaftService, Request, group};
use strata_record::{Compression, Record};
use strata_storage::{EntryId, IndexDb, LogConfig, PartitionLog, Visibility};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const GROUP: GroupId = GroupId { topic_id: 7, partition: 0 };
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    id: NodeId,
    /// One log and Raft per group started, in the order given.
    groups: Vec<(PartitionLog, PartitionRaft)>,
    /// The groups this node's Raft service answers for.
    registry: Groups,
    identity: Arc<Identity>,
    server: JoinHandle<()>,
    /// The node's liveness calls to its peers (quiescent nodes only).
    _liveness: Option<JoinHandle<()>>,
    _db: Arc<IndexDb>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn log(&self) -> &PartitionLog {
        &self.groups[0].0
    }

    fn raft(&self) -> &PartitionRaft {
        &self.groups[0].1
    }
}

async fn start_nodes(n: u64) -> (Vec<Node>, BTreeMap<NodeId, NodeInfo>) {
    start_nodes_with(n, &[GROUP]).await
}

/// `n` nodes, each running every group of `groups` behind one gRPC server
/// and one peer table (one channel per node pair, shared by the groups).
async fn start_nodes_with(n: u64, group_ids: &[GroupId]) -> (Vec<Node>, BTreeMap<NodeId, NodeInfo>) {
    start_nodes_configured(n, group_ids, LogConfig::default()).await
}

async fn start_nodes_configured(
    n: u64,
    group_ids: &[GroupId],
    log_config: LogConfig,
) -> (Vec<Node>, BTreeMap<NodeId, NodeInfo>) {
    start_nodes_as(n, group_ids, log_config, false).await
}

/// Nodes whose groups run as a server's partition groups do: no ticker
/// ([`group::partition_config`]), pre-votes, and node liveness calls
/// between the nodes (no quiescer: the test drives elections).
async fn start_quiescent_nodes(n: u64) -> (Vec<Node>, BTreeMap<NodeId, NodeInfo>) {
    start_nodes_as(n, &[GROUP], LogConfig::default(), true).await
}

async fn start_nodes_as(
    n: u64,
    group_ids: &[GroupId],
    log_config: LogConfig,
    quiescent: bool,
) -> (Vec<Node>, BTreeMap<NodeId, NodeInfo>) {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=n {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        members.insert(id, NodeInfo { addr: addr.to_string() });
        listeners.push((id, listener));
    }
    let config = if quiescent { group::partition_config("test") } else { group::config("test") }.expect("config");
    // Liveness calls go to configured addresses only.
    let addresses: BTreeMap<NodeId, String> =
        if quiescent { members.iter().map(|(id, m)| (*id, m.addr.clone())).collect() } else { BTreeMap::new() };
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = IndexDb::open(&dir.path().join("index")).expect("index");
        let identity = Identity::new(id, members.keys().copied().collect(), Some("test-cluster".into()));
        let (groups, peers) = (Groups::default(), Peers::new(Arc::clone(&identity), addresses.clone(), None));
        let liveness = quiescent.then(|| peers.keep_liveness().expect("liveness thread"));
        let mut started = Vec::new();
        for g in group_ids {
            let index = Arc::new(db.partition(g.topic_id, g.partition));
            let path = dir.path().join(format!("{}-{}", g.topic_id, g.partition));
            let log =
                PartitionLog::open_with("t", g.partition, &path, index, log_config, Visibility::Applied).expect("log");
            let raft = group::start(id, *g, log.clone(), Arc::clone(&config), &peers, &groups).await.expect("start");
            started.push((log, raft));
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let service = RaftService::new(Arc::clone(&identity), groups.clone())
            .with_staging_dir(dir.path().join("snapshots"))
            .into_server();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        nodes.push(Node {
            id,
            groups: started,
            registry: groups,
            identity,
            server,
            _liveness: liveness,
            _db: db,
            _dir: dir,
        });
    }
    (nodes, members)
}

/// Waits until `node` knows a leader other than `not`, and returns it.
async fn leader_seen_by(node: &Node, not: Option<NodeId>) -> NodeId {
    let metrics = node
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some_and(|l| Some(l) != not), "a new leader")
        .await
        .expect("a leader is elected");
    metrics.current_leader.expect("leader")
}

/// Waits until every node but node 1 follows node 1 and holds its entries
/// up to `last`.
async fn followers_hold_node_1s_entries(nodes: &[Node], last: Option<u64>) {
    for n in &nodes[1..] {
        n.raft()
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader == Some(1) && m.last_log_index == last, "following node 1")
            .await
            .expect("the followers hold node 1's entries");
    }
}

/// Waits until `raft` leads with a quorum's acknowledgement (a new leader
/// takes writes only then).
async fn writable(raft: &PartitionRaft) {
    raft.wait(Some(WAIT))
        .metrics(|m| m.state == ServerState::Leader && m.last_quorum_acked.is_some(), "a writable leader")
        .await
        .expect("leader takes writes");
}

fn batch(i: u64) -> Bytes {
    let records: Vec<Record> = (0..4)
        .map(|j| Record { value: Bytes::from(format!("r{i}-{j}")), timestamp_ms: 1, ..Record::default() })
        .collect();
    strata_record::encode(&records, Compression::None)
}

/// Writes batches `range` at `node`, which leads. A leader whose lease ran
/// out (a quorum did not answer in time: a busy disk) refuses a write
/// without writing it; it is sent again once the leader takes writes.
async fn write(node: &Node, range: std::ops::Range<u64>) -> Vec<(u64, u64)> {
    let deadline = std::time::Instant::now() + WAIT;
    writable(node.raft()).await;
    let mut out = Vec::new();
    for i in range {
        let resp = loop {
            match node.raft().client_write(Request::new(batch(i))).await {
                Ok(resp) => break resp,
                Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f)))
                    if f.reason == openraft::error::ForwardReason::LeaseExpired
                        && std::time::Instant::now() < deadline =>
                {
                    // Back off a little; the lease returns with a quorum's answer.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("batch {i} not committed: {e}"),
            }
        };
        out.push((resp.log_id.index, resp.data.base_offset));
    }
    out
}

async fn all_entries(log: &PartitionLog, upto: u64) -> Vec<(EntryId, Bytes)> {
    log.entries(0, upto + 1, 256 << 20).await.expect("entries")
}

async fn records_visible(log: &PartitionLog) -> usize {
    let mut offset = log.log_start_offset();
    let mut n = 0;
    loop {
        let read = log.read(offset, 1 << 20).await.expect("read");
        if read.batches.is_empty() {
            return n;
        }
        for b in &read.batches {
            n += strata_record::decode(b).expect("decode").len();
        }
        offset = read.next_offset;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_group_replicates_identical_logs_and_survives_losing_its_leader() {
    let (mut nodes, members) = start_nodes(3).await;
    nodes[0].raft().initialize(members).await.expect("initialize");
    let leader_id = leader_seen_by(&nodes[0], None).await;
    let leader = nodes.iter().position(|n| n.id == leader_id).expect("leader is a member");

    let written = write(&nodes[leader], 0..50).await;
    for pair in written.windows(2) {
        assert_eq!(pair[1], (pair[0].0 + 1, pair[0].1 + 4), "one entry and four offsets per batch");
    }
    let (last_index, last_offset) = *written.last().expect("written");
    for n in &nodes {
        n.raft()
            .wait(Some(WAIT))
            .applied_index_at_least(Some(last_index), "applied everywhere")
            .await
            .expect("applied");
        n.log().wait_durable(last_index).await.expect("durable");
        assert_eq!(n.log().high_watermark(), last_offset + 4, "node {} exposes every committed record", n.id);
    }
    // Every replica holds the same entries, byte for byte (offsets, terms
    // and indices included: they are in the batch headers).
    let reference = all_entries(nodes[0].log(), last_index).await;
    assert_eq!(reference.len() as u64, last_index + 1);
    for n in &nodes[1..] {
        let theirs = all_entries(n.log(), last_index).await;
        for (a, b) in reference.iter().zip(&theirs) {
            assert_eq!(a.0, b.0, "node {} holds a different entry id", n.id);
            assert!(a.1 == b.1, "node {} holds different bytes for entry {:?}", n.id, a.0);
        }
        assert_eq!(theirs.len(), reference.len());
        // The digest an operator compares says the same.
        let (ours, theirs) = (nodes[0].log().digest(last_index).await, n.log().digest(last_index).await);
        assert_eq!(ours.expect("digest"), theirs.expect("digest"), "node {} digest", n.id);
    }
    let follower = (leader + 1) % nodes.len();
    assert_eq!(records_visible(nodes[follower].log()).await, 200, "a follower serves every committed record");

    // The leader goes away (process and socket): the others elect a new one
    // and go on, with offsets after the last acknowledged ones.
    let old = nodes.remove(leader);
    old.server.abort();
    old.raft().shutdown().await.expect("shutdown");
    drop(old);
    let new_leader_id = leader_seen_by(&nodes[0], Some(leader_id)).await;
    let new_leader = nodes.iter().position(|n| n.id == new_leader_id).expect("a surviving leader");
    let more = write(&nodes[new_leader], 50..70).await;
    assert!(more[0].1 > last_offset, "offsets go on after the failover");
    let (last_index, last_offset) = *more.last().expect("written");
    for n in &nodes {
        n.raft().wait(Some(WAIT)).applied_index_at_least(Some(last_index), "applied").await.expect("applied");
        n.log().wait_durable(last_index).await.expect("durable");
        assert_eq!(n.log().high_watermark(), last_offset + 4);
        assert_eq!(records_visible(n.log()).await, 280, "node {}: every acknowledged record, once", n.id);
    }
    let reference = all_entries(nodes[0].log(), last_index).await;
    assert!(all_entries(nodes[1].log(), last_index).await == reference, "the survivors hold the same log");
    for n in nodes {
        n.server.abort();
        n.raft().shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_of_one_node_pair_share_a_connection_and_stay_apart() {
    let ids = [
        GroupId { topic_id: 7, partition: 0 },
        GroupId { topic_id: 7, partition: 1 },
        GroupId { topic_id: 9, partition: 0 },
    ];
    let (nodes, members) = start_nodes_with(3, &ids).await;
    for k in 0..ids.len() {
        // Each group is created on another node: leaders spread.
        nodes[k % nodes.len()].groups[k].1.initialize(members.clone()).await.expect("initialize");
    }
    let mut last = Vec::new();
    for (k, g) in ids.iter().enumerate() {
        let metrics = nodes[0].groups[k]
            .1
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .expect("leader");
        let leader = nodes.iter().find(|n| Some(n.id) == metrics.current_leader).expect("leader node");
        writable(&leader.groups[k].1).await;
        let mut index = 0;
        // A different number of batches per group: the logs must not mix.
        for i in 0..(5 + 3 * k as u64) {
            let resp = leader.groups[k].1.client_write(Request::new(batch(i))).await.expect("committed");
            index = resp.log_id.index;
        }
        last.push((g, index));
    }
    for (k, (g, index)) in last.iter().enumerate() {
        let mut digests = Vec::new();
        for n in &nodes {
            let (log, raft) = &n.groups[k];
            raft.wait(Some(WAIT)).applied_index_at_least(Some(*index), "applied").await.expect("applied");
            log.wait_durable(*index).await.expect("durable");
            assert_eq!(records_visible(log).await, 4 * (5 + 3 * k), "{g} on node {}", n.id);
            digests.push(log.digest(*index).await.expect("digest"));
        }
        assert!(digests.windows(2).all(|d| d[0] == d[1]), "{g}: replicas differ");
    }
    for n in nodes {
        n.server.abort();
        for (_, raft) in &n.groups {
            raft.shutdown().await.expect("shutdown");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_leader_answers_after_the_leaders_fsync_before_the_commit() {
    let (nodes, members) = start_nodes(3).await;
    nodes[0].raft().initialize(members).await.expect("initialize");
    let leader_id = leader_seen_by(&nodes[0], None).await;
    let leader = nodes.iter().find(|n| n.id == leader_id).expect("leader");
    let written = write(leader, 0..3).await;
    let committed_end = written.last().expect("written").1 + 4;
    // The followers stop answering for the group: nothing can commit.
    let followers: Vec<&Node> = nodes.iter().filter(|n| n.id != leader_id).collect();
    let mut cut = Vec::new();
    for f in &followers {
        cut.push(f.registry.remove(GROUP).expect("registered"));
    }
    let (notice, flushed) = LocalFlush::new();
    let mut request = Request::new(batch(3));
    request.on_local_flush = Some(notice);
    let (responder, committed) = ProgressResponder::complete_only();
    leader.raft().client_write_ff(request, Some(responder)).await.expect("proposed");
    let info = tokio::time::timeout(WAIT, flushed).await.expect("flushed in time").expect("notice").expect("written");
    assert_eq!(info.base_offset, committed_end, "the batch goes after the committed ones");
    assert_eq!(info.record_count, 4);
    // Durable on the leader, not committed: not visible to consumers.
    assert_eq!(leader.log().high_watermark(), committed_end, "an uncommitted batch is not visible");
    assert_eq!(records_visible(leader.log()).await, 12);
    // The followers come back: the batch commits where it was acknowledged.
    for (f, raft) in followers.iter().zip(cut) {
        f.registry.insert(GROUP, raft);
    }
    let result = tokio::time::timeout(WAIT, committed).await.expect("committed in time").expect("answer");
    assert_eq!(result.expect("committed").data.base_offset, info.base_offset);
    for n in nodes {
        n.server.abort();
        n.raft().shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_behind_the_leaders_retention_catches_up_from_a_snapshot_carrying_the_retained_entries() {
    // Small segments and a small size limit: retention deletes segments.
    let config = LogConfig { segment_bytes: 4096, retention_bytes: 12 * 1024, ..LogConfig::default() };
    let (nodes, members) = start_nodes_configured(3, &[GROUP], config).await;
    nodes[0].raft().initialize(members).await.expect("initialize");
    let leader_id = leader_seen_by(&nodes[0], None).await;
    let leader = nodes.iter().find(|n| n.id == leader_id).expect("leader");
    let others: Vec<&Node> = nodes.iter().filter(|n| n.id != leader_id).collect();
    let (lagging, live) = (others[0], others[1]);
    write(leader, 0..5).await;
    // One replica goes away; the other keeps the quorum.
    let cut_off = lagging.registry.remove(GROUP).expect("registered");
    let written = write(leader, 5..400).await;
    let (last_index, _) = *written.last().expect("written");
    live.raft().wait(Some(WAIT)).applied_index_at_least(Some(last_index), "applied").await.expect("applied");

    // Retention on the leader: a snapshot, openraft's purge, then the
    // segments go. The lagging replica's next entries are gone with them.
    // (A pass deletes nothing while openraft postpones the purge, e.g. an
    // append to the lagging replica is in flight: a later pass does.)
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = strata_record::now_ms();
        let deleted = strata_raft::retention::apply(leader.raft(), leader.log(), now).await.expect("retention");
        if deleted > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention deleted nothing in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await; // the retention timer's next tick
    }
    let start = leader.log().log_start_offset();
    assert!(start > 0, "the log start moved");
    assert!(leader.log().status().size_bytes <= 12 * 1024 + 4096, "{:?}", leader.log().status());
    let purged = leader.raft().metrics().borrow_watched().purged.expect("purged").index;
    assert!(purged > 5, "openraft purged past what the lagging replica holds");

    // It comes back: the leader sends a snapshot with its retained entries.
    lagging.registry.insert(GROUP, cut_off);
    lagging.raft().wait(Some(WAIT)).applied_index_at_least(Some(last_index), "caught up").await.expect("caught up");
    lagging.log().wait_durable(last_index).await.expect("durable");
    assert!(lagging.raft().metrics().borrow_watched().snapshot.is_some(), "it installed a snapshot");
    assert_eq!(lagging.log().log_start_offset(), start, "the replica starts where the leader's log does");
    assert_eq!(lagging.log().high_watermark(), leader.log().high_watermark());
    assert_eq!(records_visible(lagging.log()).await, records_visible(leader.log()).await);
    let (ours, theirs) = (leader.log().digest(last_index).await, lagging.log().digest(last_index).await);
    assert_eq!(ours.expect("digest"), theirs.expect("digest"), "the replica holds the leader's retained entries");

    // Replication goes on with entries.
    let more = write(leader, 400..410).await;
    let (last_index, _) = *more.last().expect("written");
    lagging.raft().wait(Some(WAIT)).applied_index_at_least(Some(last_index), "applied").await.expect("applied");
    lagging.log().wait_durable(last_index).await.expect("durable");
    let (ours, theirs) = (leader.log().digest(last_index).await, lagging.log().digest(last_index).await);
    assert_eq!(ours.expect("digest"), theirs.expect("digest"));
    // A transfer openraft started again meanwhile (on a busy machine its
    // first try can time out) may still be staging: wait for it to end; a
    // file left behind for good fails the test.
    let staged = || std::fs::read_dir(lagging._dir.path().join("snapshots")).map(|d| d.count()).unwrap_or(0);
    let deadline = std::time::Instant::now() + WAIT;
    while staged() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(staged(), 0, "no staged snapshot file is left behind");
    for n in nodes {
        n.server.abort();
        n.raft().shutdown().await.expect("shutdown");
    }
}

/// A leader that restarts comes back as a follower and leadership moves to a
/// new term: after a kill -9 its log may have lost entries (queued for the
/// writer) that followers hold, and re-using their indexes in the same term
/// would make replicas diverge unseen (found by the jepsen-like suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_leader_does_not_resume_its_old_term() {
    let (nodes, members) = start_nodes(3).await;
    nodes[0].raft().initialize(members).await.expect("initialize");
    let leader_id = leader_seen_by(&nodes[0], None).await;
    let leader = nodes.iter().find(|n| n.id == leader_id).expect("leader");
    write(leader, 0..5).await;
    let before = leader.raft().metrics().borrow_watched().clone();
    let (term, last) = (before.current_term, before.last_log_index);
    assert!(term > 0 && last.is_some(), "the leader has a term and entries: {before:?}");
    leader.raft().shutdown().await.expect("shutdown");
    leader.registry.remove(GROUP);

    let (config, peers) = (
        group::config("test").expect("config"),
        Peers::new(Identity::new(leader_id, Vec::new(), None), BTreeMap::new(), None),
    );
    let restarted =
        group::start(leader_id, GROUP, leader.log().clone(), config, &peers, &leader.registry).await.expect("restart");
    // The metrics say nothing until the Raft core has loaded the node's
    // state (term 0, no entries): wait for its vote and log, then look.
    let m = restarted
        .wait(Some(WAIT))
        .metrics(|m| m.current_term >= term && m.last_log_index >= last, "the restarted node's state loaded")
        .await
        .expect("the restarted node loads its term and log");
    assert!(
        !(m.state == openraft::ServerState::Leader && m.current_term == term),
        "the restarted leader resumed term {term} without an election"
    );
    restarted.shutdown().await.expect("shutdown");
    for n in nodes {
        n.server.abort();
        let _ = n.raft().shutdown().await;
    }
}

/// A stopping node hands its group over (openraft's leadership transfer,
/// through the `TransferLeader` RPC): a follower that holds every entry
/// becomes leader, the other follower follows it, offsets go on.
#[tokio::test]
async fn a_stopping_leader_hands_its_group_over_and_the_new_leader_goes_on() {
    let (nodes, members) = start_quiescent_nodes(3).await;
    nodes[0].raft().initialize(members).await.expect("initialize");
    nodes[0].raft().trigger().elect(false).await.expect("elect");
    let before = write(&nodes[0], 0..3).await;
    let led = nodes[0].raft().metrics().borrow_watched().clone();
    followers_hold_node_1s_entries(&nodes, led.last_log_index).await;
    let report = strata_raft::handover::hand_over_all(&nodes[0].identity, &nodes[0].registry, WAIT, |_| {}).await;
    assert_eq!(report.led, 1, "{report:?}");
    assert!(report.left.is_empty(), "the group was not handed over: {report:?}");
    assert!(report.asked >= 1, "{report:?}");
    let new = leader_seen_by(&nodes[2], Some(1)).await;
    assert_ne!(new, 1);
    assert_eq!(leader_seen_by(&nodes[1], Some(1)).await, new, "both followers follow the new leader");
    let next = nodes.iter().find(|n| n.id == new).expect("the new leader is a node");
    strata_raft::quiesce::renew_lease(next.raft()).await;
    let after = write(next, 3..4).await;
    let last = before.last().expect("written");
    assert!(after[0].1 > last.1, "offsets go on after the handover: {before:?} then {after:?}");
    // The node that handed over stands for nothing now.
    assert!(nodes[0].identity.liveness.draining());
    for n in nodes {
        n.server.abort();
        n.raft().shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiescent_groups_leader_is_not_unseated_while_it_serves() {
    let (nodes, members) = start_quiescent_nodes(3).await;
    nodes[0].raft().initialize(members).await.expect("initialize");
    // No ticker: node 1 stands by hand.
    nodes[0].raft().trigger().elect(false).await.expect("elect");
    write(&nodes[0], 0..3).await;
    let led = nodes[0].raft().metrics().borrow_watched().clone();
    assert_eq!(led.state, ServerState::Leader);
    followers_hold_node_1s_entries(&nodes, led.last_log_index).await;
    // Node 2 stands again and again, for three times openraft's lease.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        nodes[1].raft().trigger().elect(true).await.expect("pre-vote");
        let term = |n: &Node| n.raft().metrics().borrow_watched().current_term;
        for n in &nodes {
            assert_eq!(term(n), led.current_term, "node {}'s term rose: node 1 was unseated", n.id);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(nodes[0].raft().metrics().borrow_watched().state, ServerState::Leader, "node 1 still leads");
    // And takes writes (its lease renewed first, as a server does).
    strata_raft::quiesce::renew_lease(nodes[0].raft()).await;
    write(&nodes[0], 3..4).await;
    for n in nodes {
        n.server.abort();
        n.raft().shutdown().await.expect("shutdown");
    }
}
