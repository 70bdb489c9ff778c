//! Starting a Raft group for a partition on this node.

use std::sync::Arc;

use openraft::{Config, Raft, SnapshotPolicy};
use strata_storage::PartitionLog;

use crate::controller::Metadata;
use crate::log_store::LogStore;
use crate::network::{GroupId, Groups, Peers};
use crate::state_machine::StateMachine;
use crate::types::{NodeId, TypeConfig};

/// A partition group's Raft handle.
pub type PartitionRaft = Raft<TypeConfig, StateMachine>;

/// Why a group could not start.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("invalid Raft configuration: {0}")]
    Config(Box<openraft::ConfigError>),
    #[error("the state machine of {group} could not be opened: {source}")]
    Storage { group: GroupId, source: std::io::Error },
    #[error("the Raft group {group} could not start: {source}")]
    Start { group: GroupId, source: Box<openraft::error::Fatal<TypeConfig>> },
    #[error("the first entry of {group} could not be written: {reason}")]
    Bootstrap { group: GroupId, reason: String },
}

/// Timing of every group (milliseconds): heartbeats every 100 ms, an election
/// after 0.5-1 s without one, so a failed leader is replaced in about a
/// second.
pub fn config(cluster: &str) -> Result<Arc<Config>, GroupError> {
    let config = Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // A snapshot of a partition is its log; snapshots are taken when
        // retention needs them, not on a count of entries.
        snapshot_policy: SnapshotPolicy::Never,
        // openraft purges only when retention asks (a purged entry is no
        // longer replicated, only sent within a snapshot).
        max_in_snapshot_log_to_keep: u64::MAX,
        max_payload_entries: 256,
        // A restarted leader must win an election in a new term. openraft
        // would otherwise let it go on in its old term at once, but after a
        // kill -9 its log has lost the entries still queued for the writer,
        // which followers may already hold: it would then append different
        // entries under the same (term, index) and the replicas would never
        // see the conflict (found by the jepsen-like suite: a divergent
        // replica after the leader was killed).
        enable_leader_restore: Some(false),
        ..Config::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| GroupError::Config(Box::new(e)))?))
}

/// [`config`] for partition groups: their ticker starts parked, and the
/// node's [`crate::quiesce::Quiescer`] runs it only while the group needs
/// heartbeats or an election. An election starts with a pre-vote: a
/// replica that wrongly found its leader's node dead asks first, is refused
/// by the replicas that still trust the leader (they send no heartbeats
/// that would keep openraft's own leader lease alive), and raises no term
/// that would depose it.
pub fn partition_config(cluster: &str) -> Result<Arc<Config>, GroupError> {
    let mut config = Config::clone(&*config(cluster)?);
    config.enable_tick = false;
    config.enable_pre_vote = Some(true);
    Ok(Arc::new(config))
}

/// Writes a new partition group's first entry, its membership, to `log`
/// before the group starts: what openraft's `initialize` writes, without
/// the election `initialize` then starts at once. Every replica of a new
/// partition initialising at once used to race for term 1, and the node
/// that applied the topic first won most of them (one node led three
/// quarters of 3,000 new partitions); now the replicas start as followers
/// of no one, the preferred leader stands first, and the others stand only
/// if it has not won after a while ([`crate::quiesce`]). The entry is the
/// same on every replica (term 0, index 0, the same members). Returns
/// whether it wrote it: not to a log that holds an entry or a vote.
pub async fn bootstrap(
    group: GroupId,
    log: &PartitionLog,
    members: std::collections::BTreeMap<NodeId, crate::types::NodeInfo>,
) -> Result<bool, GroupError> {
    let failed = |e: &dyn std::fmt::Display| GroupError::Bootstrap { group, reason: e.to_string() };
    if log.last_entry().is_some() || log.last_purged().is_some() {
        return Ok(false);
    }
    if log.load_state(crate::log_store::VOTE).await.map_err(|e| failed(&e))?.is_some() {
        return Ok(false);
    }
    let id = strata_storage::EntryId { term: 0, index: 0 };
    let entry = crate::types::Entry {
        log_id: crate::types::log_id(id),
        payload: openraft::EntryPayload::Membership(openraft::Membership::from(members)),
    };
    let batch = crate::types::entry_to_batch(&entry).map_err(|e| failed(&e))?;
    for ticket in log.submit_entries(vec![(batch, id)]).await.map_err(|e| failed(&e))? {
        ticket.wait().await.map_err(|e| failed(&e))?;
    }
    Ok(true)
}

/// Starts the group `group` of this node on `log` (recovering its Raft state
/// from the log and RocksDB) and registers it for incoming messages.
pub async fn start(
    node_id: NodeId,
    group: GroupId,
    log: PartitionLog,
    config: Arc<Config>,
    peers: &Peers,
    groups: &Groups,
) -> Result<PartitionRaft, GroupError> {
    let sm = StateMachine::open(log.clone()).await.map_err(|source| GroupError::Storage { group, source })?;
    start_with(node_id, group, log, sm, config, peers, groups).await
}

/// Starts the cluster controller's group on this node; the metadata as of
/// each applied entry is published on `metadata`.
pub async fn start_controller(
    node_id: NodeId,
    log: PartitionLog,
    metadata: tokio::sync::watch::Sender<Arc<Metadata>>,
    config: Arc<Config>,
    peers: &Peers,
    groups: &Groups,
) -> Result<PartitionRaft, GroupError> {
    let group = GroupId::CONTROLLER;
    let sm = StateMachine::open_controller(log.clone(), metadata)
        .await
        .map_err(|source| GroupError::Storage { group, source })?;
    start_with(node_id, group, log, sm, config, peers, groups).await
}

async fn start_with(
    node_id: NodeId,
    group: GroupId,
    log: PartitionLog,
    sm: StateMachine,
    config: Arc<Config>,
    peers: &Peers,
    groups: &Groups,
) -> Result<PartitionRaft, GroupError> {
    let traced = Arc::new(crate::trace::TracedEntries::default());
    let store = LogStore::open(log.clone())
        .await
        .map_err(|source| GroupError::Storage { group, source })?
        .with_traced(Arc::clone(&traced));
    // A partition's snapshot carries its log (the controller's, its metadata).
    let source = (group != GroupId::CONTROLLER).then_some(log);
    let network = peers.network(group, source).with_traced(traced);
    let raft = Raft::new(node_id, config, network, store, sm)
        .await
        .map_err(|e| GroupError::Start { group, source: Box::new(e) })?;
    groups.insert(group, raft.clone());
    Ok(raft)
}
