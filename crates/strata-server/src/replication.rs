//! The node's Raft groups: one per partition.
//!
//! Every partition is replicated with Raft (`strata-raft`): a produce is a
//! proposal, acknowledged once committed and applied (durable on a majority
//! of the partition's replicas: on a single node, on this node's disk). The
//! node still runs as one: each group has this node as its only member
//! (multi-node clusters and the controller come with the cluster
//! configuration).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use openraft::{Raft, ServerState};
use strata_proto::v1 as pb;
use strata_raft::{GroupId, Groups, NodeId, NodeInfo, Peers, RaftService, Request, TypeConfig, group};
use strata_storage::{AppendInfo, PartitionLog};
use tonic::Status;
use tracing::info;

use crate::ServerError;
use crate::status::status;

/// How long startup waits for a partition's group to elect itself and
/// re-apply what it had committed.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's Raft groups.
#[derive(Debug)]
pub struct Replication {
    node_id: NodeId,
    me: NodeInfo,
    config: Arc<openraft::Config>,
    peers: Peers,
    groups: Groups,
}

fn raft_error(e: impl std::fmt::Display) -> ServerError {
    ServerError::Startup(format!("raft: {e}"))
}

fn no_group(group: GroupId) -> Status {
    status(tonic::Code::Unavailable, pb::ErrorReason::NotLeader, format!("{group} has no Raft group on this node yet"))
}

impl Replication {
    pub fn new(node_id: NodeId, addr: std::net::SocketAddr) -> Result<Self, ServerError> {
        Ok(Self {
            node_id,
            me: NodeInfo { addr: addr.to_string() },
            config: group::config("strata").map_err(raft_error)?,
            peers: Peers::default(),
            groups: Groups::default(),
        })
    }

    /// The gRPC service through which peers reach this node's groups.
    pub fn service(&self) -> strata_proto::internal::raft_server::RaftServer<RaftService> {
        RaftService::new(self.node_id, self.groups.clone()).into_server()
    }

    /// Starts (recovering) the group of a partition; a new one is created
    /// with this node as its only member. Returns once the group leads and
    /// has applied everything it had committed, so reads see it all.
    pub async fn start_partition(&self, topic_id: u64, log: PartitionLog) -> Result<(), ServerError> {
        let group = GroupId { topic_id, partition: log.partition() };
        let raft = group::start(self.node_id, group, log, Arc::clone(&self.config), &self.peers, &self.groups)
            .await
            .map_err(raft_error)?;
        if !raft.is_initialized().await.map_err(raft_error)? {
            let members = BTreeMap::from([(self.node_id, self.me.clone())]);
            raft.initialize(members).await.map_err(raft_error)?;
        }
        // The only voter need not wait an election timeout to lead.
        if raft.metrics().borrow().state != ServerState::Leader {
            raft.trigger().elect().await.map_err(raft_error)?;
        }
        let metrics = raft
            .wait(Some(READY_TIMEOUT))
            .metrics(|m| m.state == ServerState::Leader && m.last_applied.map(|l| l.index) >= m.last_log_index, "ready")
            .await
            .map_err(|e| raft_error(format!("{group} did not become ready: {e}")))?;
        info!(%group, last_applied = ?metrics.last_applied.map(|l| l.index), "partition group ready");
        Ok(())
    }

    /// Stops the groups of a topic (before its logs are closed and deleted).
    pub async fn stop_topic(&self, topic_id: u64, partitions: u32) {
        for partition in 0..partitions {
            if let Some(raft) = self.groups.remove(GroupId { topic_id, partition }) {
                let _ = raft.shutdown().await;
            }
        }
    }

    /// Stops every group (node shutdown).
    pub async fn shutdown(&self) {
        for raft in self.groups.drain() {
            let _ = raft.shutdown().await;
        }
    }

    /// Proposes a validated batch to its partition's group; the proposal
    /// resolves once the batch is committed and applied.
    pub async fn propose(&self, topic_id: u64, partition: u32, batch: bytes::Bytes) -> Result<Pending, Status> {
        let group = GroupId { topic_id, partition };
        let raft: Raft<TypeConfig> = self.groups.get(group).ok_or_else(|| no_group(group))?;
        let rx = raft.client_write_ff(Request { batch }).await.map_err(|e| shutting_down(&e))?;
        Ok(Pending { group, rx })
    }
}

fn shutting_down(e: &impl std::fmt::Display) -> Status {
    status(tonic::Code::Unavailable, pb::ErrorReason::ShuttingDown, format!("the partition's Raft group stopped: {e}"))
}

/// A proposal on its way through Raft (awaited apart from proposing, so a
/// pipelined producer proposes in order without waiting).
#[derive(Debug)]
pub struct Pending {
    group: GroupId,
    rx: tokio::sync::oneshot::Receiver<WriteResult>,
}

type WriteResult = Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, NodeInfo>>;

impl Pending {
    /// Where the batch landed, once committed and applied.
    pub async fn wait(self) -> Result<AppendInfo, Status> {
        let result: WriteResult = self.rx.await.map_err(|e| shutting_down(&e))?;
        match result {
            Ok(resp) => Ok(AppendInfo { base_offset: resp.data.base_offset, record_count: resp.data.record_count }),
            Err(ClientWriteError::ForwardToLeader(f)) => {
                let leader = match (f.leader_id, f.leader_node) {
                    (Some(id), Some(node)) => format!("node {id} at {}", node.addr),
                    (Some(id), None) => format!("node {id}"),
                    _ => "not elected yet".to_owned(),
                };
                Err(status(
                    tonic::Code::Unavailable,
                    pb::ErrorReason::NotLeader,
                    format!("this node does not lead {}; the leader is {leader}", self.group),
                ))
            }
            Err(e) => Err(status(
                tonic::Code::Unavailable,
                pb::ErrorReason::NotLeader,
                format!("{} could not commit the batch: {e}", self.group),
            )),
        }
    }
}
