//! Raft messages between nodes over gRPC (`strata.internal.v1.Raft`).
//!
//! Every group of a node pair shares one tonic channel (one HTTP/2
//! connection; its streams carry the concurrency); each message names its
//! group, and the receiving node routes it through its [`Groups`]. Calls
//! carry openraft's deadline; an unreachable peer or a group the peer does
//! not host (yet) is reported as unreachable, and openraft backs off
//! ([`Connection::backoff`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{CommittedLeaderId, LeaderId, LogId, Raft, Vote};
use strata_proto::internal as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::types::{NodeId, NodeInfo, TypeConfig, batch_to_entry, entry_id, entry_to_batch};

/// Which Raft group a message is for: a partition, or (topic id 0) the
/// cluster controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    pub topic_id: u64,
    pub partition: u32,
}

impl GroupId {
    pub const CONTROLLER: Self = Self { topic_id: 0, partition: 0 };
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Self::CONTROLLER {
            f.write_str("controller")
        } else {
            write!(f, "topic {} partition {}", self.topic_id, self.partition)
        }
    }
}

impl From<GroupId> for pb::GroupId {
    fn from(g: GroupId) -> Self {
        Self { topic_id: g.topic_id, partition: g.partition }
    }
}

impl From<pb::GroupId> for GroupId {
    fn from(g: pb::GroupId) -> Self {
        Self { topic_id: g.topic_id, partition: g.partition }
    }
}

/// The Raft groups this node runs, by group: where incoming messages go.
#[derive(Clone, Default)]
pub struct Groups {
    inner: Arc<RwLock<HashMap<GroupId, Raft<TypeConfig>>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().map(|g| g.len()).unwrap_or(0);
        f.debug_struct("Groups").field("groups", &n).finish()
    }
}

impl Groups {
    pub fn insert(&self, group: GroupId, raft: Raft<TypeConfig>) {
        if let Ok(mut g) = self.inner.write() {
            g.insert(group, raft);
        }
    }

    pub fn get(&self, group: GroupId) -> Option<Raft<TypeConfig>> {
        self.inner.read().ok().and_then(|g| g.get(&group).cloned())
    }
}

// ----- conversions ---------------------------------------------------------

fn log_id_to_pb(id: &LogId<NodeId>) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, index: id.index }
}

fn log_id_from_pb(id: pb::LogId) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(id.term, 0), id.index)
}

fn vote_to_pb(v: &Vote<NodeId>) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, voted_for: v.leader_id.voted_for, committed: v.committed }
}

fn vote_from_pb(v: Option<pb::Vote>) -> Result<Vote<NodeId>, Status> {
    let v = v.ok_or_else(|| Status::invalid_argument("the message has no vote"))?;
    Ok(Vote { leader_id: LeaderId { term: v.term, voted_for: v.voted_for }, committed: v.committed })
}

// ----- server side -----------------------------------------------------------

/// The gRPC service that hands incoming Raft messages to this node's groups.
#[derive(Debug, Clone)]
pub struct RaftService {
    node_id: NodeId,
    groups: Groups,
}

impl RaftService {
    pub fn new(node_id: NodeId, groups: Groups) -> Self {
        Self { node_id, groups }
    }

    pub fn into_server(self) -> pb::raft_server::RaftServer<Self> {
        // Appends carry up to a few MiB of batches.
        pb::raft_server::RaftServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn route(&self, group: Option<pb::GroupId>, target: NodeId) -> Result<Raft<TypeConfig>, Status> {
        if target != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target}: check the cluster's peer addresses",
                self.node_id
            )));
        }
        let group: GroupId = group.ok_or_else(|| Status::invalid_argument("the message names no group"))?.into();
        self.groups.get(group).ok_or_else(|| Status::not_found(format!("node {} does not run {group}", self.node_id)))
    }
}

/// Largest Raft message accepted or sent.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

fn raft_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group, req.target)?;
        let mut entries = Vec::with_capacity(req.entries.len());
        for e in req.entries {
            let id = entry_id(&log_id_from_pb(e.id.ok_or_else(|| Status::invalid_argument("an entry has no id"))?));
            entries.push(batch_to_entry(id, e.batch).map_err(|e| Status::invalid_argument(e.to_string()))?);
        }
        let rpc = AppendEntriesRequest {
            vote: vote_from_pb(req.vote)?,
            prev_log_id: req.prev_log_id.map(log_id_from_pb),
            entries,
            leader_commit: req.leader_commit.map(log_id_from_pb),
        };
        use pb::append_entries_response::Outcome;
        let response = match raft.append_entries(rpc).await.map_err(raft_failed)? {
            AppendEntriesResponse::Success => {
                pb::AppendEntriesResponse { outcome: Outcome::Success as i32, ..Default::default() }
            }
            AppendEntriesResponse::PartialSuccess(matching) => pb::AppendEntriesResponse {
                outcome: Outcome::PartialSuccess as i32,
                matching: matching.as_ref().map(log_id_to_pb),
                ..Default::default()
            },
            AppendEntriesResponse::Conflict => {
                pb::AppendEntriesResponse { outcome: Outcome::Conflict as i32, ..Default::default() }
            }
            AppendEntriesResponse::HigherVote(v) => pb::AppendEntriesResponse {
                outcome: Outcome::HigherVote as i32,
                higher_vote: Some(vote_to_pb(&v)),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group, req.target)?;
        let rpc = VoteRequest { vote: vote_from_pb(req.vote)?, last_log_id: req.last_log_id.map(log_id_from_pb) };
        let resp = raft.vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(pb::VoteResponse {
            vote: Some(vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: resp.last_log_id.as_ref().map(log_id_to_pb),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group, req.target)?;
        let meta = serde_json::from_slice(&req.meta_json)
            .map_err(|e| Status::invalid_argument(format!("malformed snapshot metadata: {e}")))?;
        let rpc = InstallSnapshotRequest {
            vote: vote_from_pb(req.vote)?,
            meta,
            offset: req.offset,
            data: req.data.to_vec(),
            done: req.done,
        };
        let resp = raft.install_snapshot(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(vote_to_pb(&resp.vote)) }))
    }
}

// ----- client side -----------------------------------------------------------

/// One lazily connected channel per peer node, shared by every group.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// Time allowed to open a connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Peers {
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().map_err(|_| "the peer table lock was poisoned".to_owned())?;
        if let Some(c) = channels.get(&(target, addr.to_owned())) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("node {target} has a bad address '{addr}': {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .initial_stream_window_size(8 * 1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024);
        let channel = endpoint.connect_lazy();
        channels.insert((target, addr.to_owned()), channel.clone());
        Ok(channel)
    }

    /// The network of one group, for openraft.
    pub fn network(&self, group: GroupId) -> Network {
        Network { peers: self.clone(), group }
    }
}

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
pub struct Network {
    peers: Peers,
    group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        let client = self.peers.channel(target, &node.addr).map(|c| {
            pb::raft_client::RaftClient::new(c)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        Connection { client, group: self.group, target }
    }
}

/// A group's link to one peer.
#[derive(Debug)]
pub struct Connection {
    client: Result<pb::raft_client::RaftClient<Channel>, String>,
    group: GroupId,
    target: NodeId,
}

/// Why a call did not reach the peer's Raft.
#[derive(Debug, thiserror::Error)]
#[error("node {target}: {message}")]
pub struct TransportError {
    target: NodeId,
    message: String,
}

impl Connection {
    fn client(&self) -> Result<pb::raft_client::RaftClient<Channel>, TransportError> {
        self.client.clone().map_err(|message| TransportError { target: self.target, message })
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }

    fn failed<E: std::error::Error>(&self, status: Status) -> RPCError<NodeId, NodeInfo, E> {
        let e = TransportError { target: self.target, message: format!("{}: {}", status.code(), status.message()) };
        match status.code() {
            // Down, not listening, or not running this group yet: retry later.
            tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

fn unreachable<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn malformed<E: std::error::Error>(target: NodeId, what: &str) -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Network(NetworkError::new(&TransportError { target, message: format!("malformed response: {what}") }))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let mut entries = Vec::with_capacity(rpc.entries.len());
        for e in &rpc.entries {
            let batch = entry_to_batch(e).map_err(|e| {
                RPCError::Network(NetworkError::new(&TransportError { target: self.target, message: e.to_string() }))
            })?;
            entries.push(pb::Entry { id: Some(log_id_to_pb(&e.log_id)), batch });
        }
        let message = pb::AppendEntriesRequest {
            group: Some(self.group.into()),
            target: self.target,
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: rpc.prev_log_id.as_ref().map(log_id_to_pb),
            entries,
            leader_commit: rpc.leader_commit.as_ref().map(log_id_to_pb),
        };
        let request = self.request(message, &option);
        let resp = self.client().map_err(unreachable)?.append_entries(request).await.map_err(|s| self.failed(s))?;
        let resp = resp.into_inner();
        use pb::append_entries_response::Outcome;
        Ok(match Outcome::try_from(resp.outcome).map_err(|_| malformed(self.target, "unknown outcome"))? {
            Outcome::Success => AppendEntriesResponse::Success,
            Outcome::PartialSuccess => AppendEntriesResponse::PartialSuccess(resp.matching.map(log_id_from_pb)),
            Outcome::Conflict => AppendEntriesResponse::Conflict,
            Outcome::HigherVote => AppendEntriesResponse::HigherVote(
                vote_from_pb(resp.higher_vote).map_err(|_| malformed(self.target, "no higher vote"))?,
            ),
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        let meta_json = serde_json::to_vec(&rpc.meta).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = pb::InstallSnapshotRequest {
            group: Some(self.group.into()),
            target: self.target,
            vote: Some(vote_to_pb(&rpc.vote)),
            meta_json: meta_json.into(),
            offset: rpc.offset,
            data: rpc.data.into(),
            done: rpc.done,
        };
        let request = self.request(message, &option);
        let resp = self.client().map_err(unreachable)?.install_snapshot(request).await.map_err(|s| self.failed(s))?;
        let vote = vote_from_pb(resp.into_inner().vote).map_err(|_| malformed(self.target, "no vote"))?;
        Ok(InstallSnapshotResponse { vote })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let message = pb::VoteRequest {
            group: Some(self.group.into()),
            target: self.target,
            vote: Some(vote_to_pb(&rpc.vote)),
            last_log_id: rpc.last_log_id.as_ref().map(log_id_to_pb),
        };
        let request = self.request(message, &option);
        let resp = self.client().map_err(unreachable)?.vote(request).await.map_err(|s| self.failed(s))?.into_inner();
        Ok(VoteResponse {
            vote: vote_from_pb(resp.vote).map_err(|_| malformed(self.target, "no vote"))?,
            vote_granted: resp.vote_granted,
            last_log_id: resp.last_log_id.map(log_id_from_pb),
        })
    }

    fn backoff(&self) -> Backoff {
        // 50 ms, doubling, at most 2 s between attempts to a peer that is down.
        Backoff::new(
            (0u32..).map(|i| Duration::from_millis(50u64.saturating_mul(1 << i.min(6))).min(Duration::from_secs(2))),
        )
    }
}
