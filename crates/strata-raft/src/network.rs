//! Raft messages between nodes over gRPC (`strata.internal.v1.Raft`).
//!
//! Every group of a node pair shares one tonic channel (one HTTP/2
//! connection; its streams carry the concurrency); each message names its
//! group, and the receiving node routes it through its [`Groups`]. Calls
//! carry openraft's deadline; an unreachable peer or a group the peer does
//! not host (yet) is reported as unreachable, and openraft backs off
//! ([`Connection::backoff`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use strata_proto::internal as pb;
use strata_storage::PartitionLog;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::coalesce::Coalesce;
use crate::group::PartitionRaft;
use crate::state_machine::{PartitionSnapshot, Snapshot};
use crate::transfer;
use crate::types::{
    LogId, NodeId, NodeInfo, Request as Proposal, TypeConfig, Vote, batch_to_entry, entry_id, entry_to_batch,
};

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
    inner: Arc<RwLock<HashMap<GroupId, PartitionRaft>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().map(|g| g.len()).unwrap_or(0);
        f.debug_struct("Groups").field("groups", &n).finish()
    }
}

impl Groups {
    pub fn insert(&self, group: GroupId, raft: PartitionRaft) {
        if let Ok(mut g) = self.inner.write() {
            g.insert(group, raft);
        }
    }

    /// This node runs `group` (without cloning its handle).
    pub fn contains(&self, group: GroupId) -> bool {
        self.inner.read().is_ok_and(|g| g.contains_key(&group))
    }

    pub fn get(&self, group: GroupId) -> Option<PartitionRaft> {
        self.inner.read().ok().and_then(|g| g.get(&group).cloned())
    }

    pub fn remove(&self, group: GroupId) -> Option<PartitionRaft> {
        self.inner.write().ok().and_then(|mut g| g.remove(&group))
    }

    /// Every group.
    pub fn all(&self) -> Vec<PartitionRaft> {
        self.inner.read().map(|g| g.values().cloned().collect()).unwrap_or_default()
    }

    /// Removes and returns every group.
    pub fn drain(&self) -> Vec<PartitionRaft> {
        self.inner.write().map(|mut g| g.drain().map(|(_, r)| r).collect()).unwrap_or_default()
    }
}

// ----- conversions ---------------------------------------------------------

fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, index: id.index }
}

fn log_id_from_pb(id: pb::LogId) -> LogId {
    LogId::new_term_index(id.term, id.index)
}

fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, voted_for: v.leader_id.voted_for, committed: v.committed }
}

fn vote_from_pb(v: Option<pb::Vote>) -> Result<Vote, Status> {
    let v = v.ok_or_else(|| Status::invalid_argument("the message has no vote"))?;
    Ok(if v.committed { Vote::new_committed(v.term, v.voted_for) } else { Vote::new(v.term, v.voted_for) })
}

fn vote_request_from_pb(req: pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, Status> {
    let mut rpc = VoteRequest::new(vote_from_pb(req.vote)?, req.last_log_id.map(log_id_from_pb));
    rpc.leadership_transfer = req.leadership_transfer;
    Ok(rpc)
}

fn vote_response_to_pb(resp: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: resp.last_log_id.as_ref().map(log_id_to_pb),
    }
}

fn append_request_from_pb(req: pb::AppendEntriesRequest) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    let mut entries = Vec::with_capacity(req.entries.len());
    for e in req.entries {
        let id = entry_id(&log_id_from_pb(e.id.ok_or_else(|| Status::invalid_argument("an entry has no id"))?));
        entries.push(batch_to_entry(id, e.batch).map_err(|e| Status::invalid_argument(e.to_string()))?);
    }
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(req.vote)?,
        prev_log_id: req.prev_log_id.map(log_id_from_pb),
        entries,
        leader_commit: req.leader_commit.map(log_id_from_pb),
    })
}

// ----- identity ----------------------------------------------------------------

/// Who this node is, shared by its Raft service and its connections: its
/// id, the members it was configured with, and its cluster's id once known.
#[derive(Debug)]
pub struct Identity {
    pub node_id: NodeId,
    pub members: Vec<NodeId>,
    cluster_id: RwLock<String>,
}

impl Identity {
    pub fn new(node_id: NodeId, members: Vec<NodeId>, cluster_id: Option<String>) -> Arc<Self> {
        Arc::new(Self { node_id, members, cluster_id: RwLock::new(cluster_id.unwrap_or_default()) })
    }

    /// Empty while this node does not know its cluster.
    pub fn cluster_id(&self) -> String {
        self.cluster_id.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn set_cluster_id(&self, id: &str) {
        if let Ok(mut c) = self.cluster_id.write() {
            id.clone_into(&mut c);
        }
    }

    /// Refuses a message from a node of another cluster. A side that does
    /// not know its cluster yet (a new node, or one that has not applied
    /// the cluster's first entry) is let through: Raft itself keeps it
    /// consistent, and refusing it could stall an election.
    fn check_cluster(&self, sender: &str) -> Result<(), Status> {
        let mine = self.cluster_id();
        if !mine.is_empty() && !sender.is_empty() && mine != sender {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {mine}, the sender to cluster {sender}: \
                 a node was started with another cluster's data directory or peer list",
                self.node_id
            )));
        }
        Ok(())
    }
}

// ----- server side -----------------------------------------------------------

/// The gRPC service that hands incoming Raft messages to this node's groups.
#[derive(Debug, Clone)]
pub struct RaftService {
    identity: Arc<Identity>,
    groups: Groups,
    /// Where received snapshot entries are staged before they are installed.
    staging: std::path::PathBuf,
}

/// Metadata key of a "not the leader" status naming the leader's node id.
pub const LEADER_HEADER: &str = "x-strata-leader";

impl RaftService {
    /// Received snapshots are staged under the system's temporary directory
    /// unless [`RaftService::with_staging_dir`] says otherwise.
    pub fn new(identity: Arc<Identity>, groups: Groups) -> Self {
        Self { identity, groups, staging: std::env::temp_dir().join("strata-snapshots") }
    }

    /// Stages received snapshot entries under `dir` (a node's data
    /// directory: they can be as large as a partition).
    pub fn with_staging_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.staging = dir;
        self
    }

    pub fn into_server(self) -> pb::raft_server::RaftServer<Self> {
        // Appends carry up to a few MiB of batches.
        pb::raft_server::RaftServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn route(&self, group: Option<pb::GroupId>, target: NodeId, cluster: &str) -> Result<PartitionRaft, Status> {
        let me = self.identity.node_id;
        if target != me {
            return Err(Status::failed_precondition(format!(
                "this is node {me}, not node {target}: check the cluster's peer addresses"
            )));
        }
        self.identity.check_cluster(cluster)?;
        let group: GroupId = group.ok_or_else(|| Status::invalid_argument("the message names no group"))?.into();
        self.groups.get(group).ok_or_else(|| Status::not_found(format!("node {me} does not run {group}")))
    }
}

/// Largest Raft message accepted or sent.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Deadline of an AppendEntries call that carries entries (the follower
/// fsyncs them before it answers). A follower that is down fails at once
/// (connection refused) or through the keep-alive; one that is slow only
/// slows its own replication stream.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an entry-less request that only moves the follower's commit
/// index is held back in case a request with entries follows and carries the
/// commit instead (below peak this spares nearly a round trip per follower
/// and produce). Followers learn a commit at most this much later; producers
/// are acknowledged at the leader's commit, which this does not delay.
const COMMIT_UPDATE_WINDOW: Duration = Duration::from_millis(20);
/// A snapshot stream that sends nothing for this long is given up.
const SNAPSHOT_CHUNK_WAIT: Duration = Duration::from_secs(60);

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
        let raft = self.route(req.group, req.target, &req.cluster_id)?;
        let rpc = append_request_from_pb(req)?;
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

    type AppendStreamStream = BoxStream<'static, Result<pb::AppendStreamResponse, Status>>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("an empty append stream"))?;
        let raft = self.route(first.group, first.target, &first.cluster_id)?;
        let group = first.group.map(GroupId::from);
        let first = append_request_from_pb(first)?;
        // Later requests go to the same group. The stream ends at the first
        // one that is malformed, names another group or does not arrive, or
        // once this node no longer runs the group (the sender sees its answers
        // stop, and opens a new stream, which is routed afresh).
        let groups = self.groups.clone();
        let rest = inbound.scan((), move |(), next| {
            let next = match next {
                Ok(_) if group.is_none_or(|g| !groups.contains(g)) => {
                    tracing::debug!(?group, "append stream for a group this node no longer runs");
                    None
                }
                Ok(req) if req.group.map(GroupId::from) == group => match append_request_from_pb(req) {
                    Ok(rpc) => Some(rpc),
                    Err(e) => {
                        tracing::warn!(?group, error = %e.message(), "append stream refused a request");
                        None
                    }
                },
                Ok(req) => {
                    tracing::warn!(?group, other = ?req.group, "append stream request for another group");
                    None
                }
                Err(e) => {
                    tracing::debug!(?group, error = %e, "append stream broke");
                    None
                }
            };
            futures::future::ready(next)
        });
        let requests = futures::stream::once(futures::future::ready(first)).chain(rest);
        use pb::append_stream_response::Outcome;
        let responses = raft.stream_append(requests).map(|answer| match answer {
            Ok(Ok(matching)) => Ok(pb::AppendStreamResponse {
                outcome: Outcome::Matched as i32,
                log_id: matching.as_ref().map(log_id_to_pb),
                higher_vote: None,
            }),
            Ok(Err(StreamAppendError::Conflict(prev))) => Ok(pb::AppendStreamResponse {
                outcome: Outcome::Conflict as i32,
                log_id: Some(log_id_to_pb(&prev)),
                higher_vote: None,
            }),
            Ok(Err(StreamAppendError::HigherVote(vote))) => Ok(pb::AppendStreamResponse {
                outcome: Outcome::HigherVote as i32,
                log_id: None,
                higher_vote: Some(vote_to_pb(&vote)),
            }),
            Err(fatal) => Err(raft_failed(fatal)),
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group, req.target, &req.cluster_id)?;
        let resp = raft.vote(vote_request_from_pb(req)?).await.map_err(raft_failed)?;
        Ok(Response::new(vote_response_to_pb(&resp)))
    }

    async fn pre_vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group, req.target, &req.cluster_id)?;
        let resp = raft.pre_vote(vote_request_from_pb(req)?).await.map_err(raft_failed)?;
        Ok(Response::new(vote_response_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group, req.target, &req.cluster_id)?;
        let meta = serde_json::from_slice(&req.meta_json)
            .map_err(|e| Status::invalid_argument(format!("malformed snapshot metadata: {e}")))?;
        let data: PartitionSnapshot = serde_json::from_slice(&req.data_json)
            .map_err(|e| Status::invalid_argument(format!("malformed snapshot data: {e}")))?;
        let resp = raft
            .install_full_snapshot(vote_from_pb(req.vote)?, Snapshot { meta, snapshot: data })
            .await
            .map_err(raft_failed)?;
        Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(vote_to_pb(&resp.vote)) }))
    }

    async fn install_snapshot_stream(
        &self,
        request: Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        let header = first.header.ok_or_else(|| Status::invalid_argument("the first chunk has no header"))?;
        let group = header.group.map(GroupId::from).ok_or_else(|| Status::invalid_argument("no group"))?;
        let raft = self.route(header.group, header.target, &header.cluster_id)?;
        let meta: crate::types::SnapshotMeta = serde_json::from_slice(&header.meta_json)
            .map_err(|e| Status::invalid_argument(format!("malformed snapshot metadata: {e}")))?;
        let mut data: PartitionSnapshot = serde_json::from_slice(&header.data_json)
            .map_err(|e| Status::invalid_argument(format!("malformed snapshot data: {e}")))?;
        let vote = vote_from_pb(header.vote)?;
        let prev = first.prev.map(|p| entry_id(&log_id_from_pb(p)));
        let refused = |e: transfer::TransferError| Status::invalid_argument(format!("{group}: {e}"));
        let name = format!("{}-{}", group.topic_id, group.partition);
        // Dropped on any early return (or if the sender goes away): the
        // staged file goes with it.
        let mut stager = transfer::Stager::create(&self.staging, &name, prev, first.start_offset).map_err(refused)?;
        stager.push(&first.batches).map_err(refused)?;
        loop {
            let next = tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, chunks.message()).await.map_err(|_| {
                Status::deadline_exceeded(format!("{group}: no snapshot chunk for {SNAPSHOT_CHUNK_WAIT:?}"))
            })??;
            let Some(chunk) = next else { break };
            stager.push(&chunk.batches).map_err(refused)?;
        }
        let staged = stager.finish(meta.last_log_id.as_ref().map(entry_id)).await.map_err(refused)?;
        // The staging file goes with the snapshot's last handle (installed,
        // refused as stale, or this call cancelled).
        data.staged = Some(staged);
        let installed = raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await;
        let resp = installed.map_err(raft_failed)?;
        Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(vote_to_pb(&resp.vote)) }))
    }

    async fn identify(&self, _request: Request<pb::IdentifyRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        Ok(Response::new(pb::IdentifyResponse {
            node_id: self.identity.node_id,
            cluster_id: self.identity.cluster_id(),
            members: self.identity.members.clone(),
        }))
    }

    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group, req.target, &req.cluster_id)?;
        let written = propose_local(&raft, req.batch).await?;
        Ok(Response::new(pb::ProposeResponse {
            applied: Some(log_id_to_pb(&written.log_id)),
            base_offset: written.base_offset,
        }))
    }
}

/// Where a proposal landed.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub log_id: LogId,
    pub base_offset: u64,
}

/// Proposes `batch` to a group of this node; not the leader: `Unavailable`
/// naming the leader (in [`LEADER_HEADER`] too).
async fn propose_local(raft: &PartitionRaft, batch: bytes::Bytes) -> Result<Written, Status> {
    match raft.client_write(Proposal::new(batch)).await {
        Ok(resp) => Ok(Written { log_id: resp.log_id, base_offset: resp.data.base_offset }),
        Err(e) => match e.forward_to_leader() {
            Some(f) => {
                let mut status = Status::unavailable(format!(
                    "not the leader ({:?}); the leader is {}",
                    f.reason,
                    f.leader_id.map_or_else(|| "not known".to_owned(), |l| format!("node {l}"))
                ));
                if let Some(l) = f.leader_id
                    && let Ok(v) = l.to_string().parse()
                {
                    status.metadata_mut().insert(LEADER_HEADER, v);
                }
                Err(status)
            }
            None => Err(raft_failed(e)),
        },
    }
}

// ----- client side -----------------------------------------------------------

/// One lazily connected channel per peer node, shared by every group.
#[derive(Clone)]
pub struct Peers {
    identity: Arc<Identity>,
    /// Addresses from this node's configuration: they win over the ones
    /// recorded in a group's membership (a node may move).
    addresses: Arc<BTreeMap<NodeId, String>>,
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// Time allowed to open a connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time a forwarded proposal may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

impl Peers {
    pub fn new(identity: Arc<Identity>, addresses: BTreeMap<NodeId, String>) -> Self {
        Self { identity, addresses: Arc::new(addresses), channels: Arc::default() }
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The configured address of a node, if it has one.
    pub fn address(&self, node: NodeId) -> Option<&str> {
        self.addresses.get(&node).map(String::as_str)
    }

    fn raft_client(&self, target: NodeId, addr: &str) -> Result<pb::raft_client::RaftClient<Channel>, String> {
        let addr = self.address(target).unwrap_or(addr);
        Ok(pb::raft_client::RaftClient::new(self.channel(target, addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Asks a configured peer who it is.
    pub async fn identify(&self, target: NodeId, timeout: Duration) -> Result<pb::IdentifyResponse, String> {
        let addr = self.address(target).ok_or_else(|| format!("node {target} has no configured address"))?.to_owned();
        let mut request = Request::new(pb::IdentifyRequest {});
        request.set_timeout(timeout);
        let resp = self.raft_client(target, &addr)?.identify(request).await.map_err(|s| s.message().to_owned())?;
        Ok(resp.into_inner())
    }

    /// Proposes `batch` to `group`: on this node if it leads the group,
    /// otherwise at the leader this node knows of.
    pub async fn propose(&self, raft: &PartitionRaft, group: GroupId, batch: bytes::Bytes) -> Result<Written, Status> {
        let leader = raft.current_leader().await;
        let me = self.identity.node_id;
        match leader {
            Some(l) if l != me => {
                let addr = self.address(l).map(str::to_owned).or_else(|| {
                    raft.metrics().borrow_watched().membership_config.membership().get_node(&l).map(|n| n.addr.clone())
                });
                let addr = addr.ok_or_else(|| Status::unavailable(format!("the address of node {l} is not known")))?;
                let client = self.raft_client(l, &addr).map_err(Status::unavailable)?;
                let mut request = Request::new(pb::ProposeRequest {
                    group: Some(group.into()),
                    target: l,
                    cluster_id: self.identity.cluster_id(),
                    batch,
                });
                request.set_timeout(PROPOSE_TIMEOUT);
                let resp = client.clone().propose(request).await?.into_inner();
                let applied = resp.applied.ok_or_else(|| Status::internal("the leader answered no log id"))?;
                Ok(Written { log_id: log_id_from_pb(applied), base_offset: resp.base_offset })
            }
            _ => propose_local(raft, batch).await,
        }
    }

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

    /// The network of one group, for openraft; `log` is the group's log a
    /// snapshot sends entries from (`None`: snapshots are self-contained).
    pub fn network(&self, group: GroupId, log: Option<PartitionLog>) -> Network {
        Network { peers: self.clone(), group, log }
    }
}

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
pub struct Network {
    peers: Peers,
    group: GroupId,
    log: Option<PartitionLog>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        let client = self.peers.raft_client(target, &node.addr);
        let identity = Arc::clone(&self.peers.identity);
        Connection { client, log: self.log.clone(), stamp: Addressing { group: self.group, target, identity } }
    }
}

/// A group's link to one peer.
#[derive(Debug)]
pub struct Connection {
    client: Result<pb::raft_client::RaftClient<Channel>, String>,
    log: Option<PartitionLog>,
    stamp: Addressing,
}

/// What every request of a group to one peer carries: the group, the node
/// meant, and the sender's cluster.
#[derive(Debug, Clone)]
struct Addressing {
    group: GroupId,
    target: NodeId,
    identity: Arc<Identity>,
}

impl Addressing {
    fn append_request(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<pb::AppendEntriesRequest, TransportError> {
        let mut entries = Vec::with_capacity(rpc.entries.len());
        for e in &rpc.entries {
            let batch =
                entry_to_batch(e).map_err(|e| TransportError { target: self.target, message: e.to_string() })?;
            entries.push(pb::Entry { id: Some(log_id_to_pb(&e.log_id)), batch });
        }
        Ok(pb::AppendEntriesRequest {
            group: Some(self.group.into()),
            target: self.target,
            cluster_id: self.identity.cluster_id(),
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: rpc.prev_log_id.as_ref().map(log_id_to_pb),
            entries,
            leader_commit: rpc.leader_commit.as_ref().map(log_id_to_pb),
        })
    }
}

/// Why a call did not reach the peer's Raft.
#[derive(Debug, thiserror::Error)]
#[error("node {target}: {message}")]
pub struct TransportError {
    target: NodeId,
    message: String,
}

/// Whether a failed call should be retried at once (`Network`) or after a
/// back-off (`Unreachable`).
enum Failure {
    Unreachable(TransportError),
    Network(TransportError),
}

impl Failure {
    fn of_status(target: NodeId, status: &Status) -> Self {
        let e = TransportError { target, message: format!("{}: {}", status.code(), status.message()) };
        match status.code() {
            // Down, not listening, or not running this group yet: retry later.
            tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::FailedPrecondition => Self::Unreachable(e),
            _ => Self::Network(e),
        }
    }

    fn malformed(target: NodeId, what: &str) -> Self {
        Self::Network(TransportError { target, message: format!("malformed response: {what}") })
    }

    fn rpc(self) -> RPCError<TypeConfig> {
        match self {
            Self::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            Self::Network(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn streaming(self) -> StreamingError<TypeConfig> {
        match self {
            Self::Unreachable(e) => StreamingError::Unreachable(Unreachable::new(&e)),
            Self::Network(e) => StreamingError::Network(NetworkError::new(&e)),
        }
    }
}

impl Connection {
    fn client(&self) -> Result<pb::raft_client::RaftClient<Channel>, Failure> {
        self.client
            .clone()
            .map_err(|message| Failure::Unreachable(TransportError { target: self.stamp.target, message }))
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }

    fn failed(&self, status: Status) -> Failure {
        Failure::of_status(self.stamp.target, &status)
    }

    fn malformed(&self, what: &str) -> Failure {
        Failure::malformed(self.stamp.target, what)
    }

    /// Opens the group's append stream to the peer with `requests`.
    async fn open_stream(
        &mut self,
        requests: impl futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static,
    ) -> Result<AppendAnswers, Failure> {
        let stamp = self.stamp.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&sent);
        // Commit updates that a following request makes redundant are not
        // sent (see `coalesce`). A request that cannot be encoded ends the
        // stream (and is logged): openraft sees the answers stop and starts
        // a new session.
        let requests = Coalesce::new(Box::pin(requests), COMMIT_UPDATE_WINDOW);
        let outbound = requests.scan((), move |(), rpc| {
            let message = match stamp.append_request(&rpc) {
                Ok(m) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                    Some(m)
                }
                Err(e) => {
                    tracing::error!(group = %stamp.group, error = %e, "an entry could not be encoded for replication");
                    None
                }
            };
            futures::future::ready(message)
        });
        // No deadline on the call: it lives as long as the session. Opening it
        // and each answer owed have their own below.
        let mut client = self.client()?;
        let opened = tokio::time::timeout(APPEND_TIMEOUT, client.append_stream(Request::new(outbound))).await;
        let answers = match opened {
            Err(_) => return Err(Failure::Network(self.transport_error("opening the append stream timed out"))),
            Ok(r) => r.map_err(|s| self.failed(s))?.into_inner(),
        };
        Ok(AppendAnswers { target: self.stamp.target, answers, sent, received: 0 })
    }

    fn transport_error(&self, message: &str) -> TransportError {
        TransportError { target: self.stamp.target, message: message.to_owned() }
    }

    fn vote_request(&self, rpc: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
        pb::VoteRequest {
            group: Some(self.stamp.group.into()),
            target: self.stamp.target,
            cluster_id: self.stamp.identity.cluster_id(),
            vote: Some(vote_to_pb(&rpc.vote)),
            last_log_id: rpc.last_log_id.as_ref().map(log_id_to_pb),
            leadership_transfer: rpc.leadership_transfer,
        }
    }

    fn vote_response(&self, resp: pb::VoteResponse) -> Result<VoteResponse<TypeConfig>, Failure> {
        let vote = vote_from_pb(resp.vote).map_err(|_| self.malformed("no vote"))?;
        Ok(VoteResponse::new(vote, resp.last_log_id.map(log_id_from_pb), resp.vote_granted))
    }

    async fn append(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, Failure> {
        let message = self.stamp.append_request(&rpc).map_err(Failure::Network)?;
        let mut request = self.request(message, &option);
        if !rpc.entries.is_empty() {
            // The follower answers once the entries are fsync'd there; on a
            // busy disk that takes longer than openraft's budget (one
            // heartbeat interval), and a timeout throws the round trip away
            // and backs the stream off. Heartbeats keep the short deadline.
            request.set_timeout(option.hard_ttl().max(APPEND_TIMEOUT));
        }
        let resp = self.client()?.append_entries(request).await.map_err(|s| self.failed(s))?.into_inner();
        use pb::append_entries_response::Outcome;
        Ok(match Outcome::try_from(resp.outcome).map_err(|_| self.malformed("unknown outcome"))? {
            Outcome::Success => AppendEntriesResponse::Success,
            Outcome::PartialSuccess => AppendEntriesResponse::PartialSuccess(resp.matching.map(log_id_from_pb)),
            Outcome::Conflict => AppendEntriesResponse::Conflict,
            Outcome::HigherVote => AppendEntriesResponse::HigherVote(
                vote_from_pb(resp.higher_vote).map_err(|_| self.malformed("no higher vote"))?,
            ),
        })
    }

    async fn snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, Failure> {
        let encode = |e: serde_json::Error| Failure::Network(self.transport_error(&e.to_string()));
        let message = pb::InstallSnapshotRequest {
            group: Some(self.stamp.group.into()),
            target: self.stamp.target,
            cluster_id: self.stamp.identity.cluster_id(),
            vote: Some(vote_to_pb(&vote)),
            meta_json: serde_json::to_vec(&snapshot.meta).map_err(encode)?.into(),
            data_json: serde_json::to_vec(&snapshot.snapshot).map_err(encode)?.into(),
        };
        let (Some(log), Some(last)) = (self.log.clone(), snapshot.meta.last_log_id) else {
            let request = self.request(message, &option);
            let resp = self.client()?.install_snapshot(request).await.map_err(|s| self.failed(s))?;
            let vote = vote_from_pb(resp.into_inner().vote).map_err(|_| self.malformed("no vote"))?;
            return Ok(SnapshotResponse::new(vote));
        };
        // The partition's retained entries up to the snapshot's last go with
        // it. No overall deadline: a large log takes what it takes; a dead
        // peer is noticed by the connection's keep-alive, and openraft
        // cancels a replication it gave up on.
        let (prev, start_offset, entries) = transfer::entry_chunks(log, last.index);
        let header = pb::SnapshotChunk {
            header: Some(message),
            prev: prev.map(|p| log_id_to_pb(&crate::types::log_id(p))),
            start_offset,
            batches: Vec::new(),
        };
        let (group, target) = (self.stamp.group, self.stamp.target);
        let entries = entries.filter_map(move |chunk| async move {
            match chunk {
                Ok(c) => Some(c),
                Err(e) => {
                    // The receiver sees the stream end early and refuses it.
                    tracing::warn!(%group, target, error = %e, "snapshot transfer stopped");
                    None
                }
            }
        });
        let chunks = futures::stream::once(async { header }).chain(entries);
        let resp = self.client()?.install_snapshot_stream(chunks).await.map_err(|s| self.failed(s))?;
        let vote = vote_from_pb(resp.into_inner().vote).map_err(|_| self.malformed("no vote"))?;
        Ok(SnapshotResponse::new(vote))
    }
}

/// The answers of an open append stream, in the order of its requests.
struct AppendAnswers {
    target: NodeId,
    answers: tonic::Streaming<pb::AppendStreamResponse>,
    /// Requests handed to the stream, and answers read: while some are owed,
    /// each must come within [`APPEND_TIMEOUT`] of the one before.
    sent: Arc<AtomicU64>,
    received: u64,
}

type AppendResults<'s> = BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

impl AppendAnswers {
    /// The next answer; `None` once the stream ends or after an error.
    async fn next(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, Failure>> {
        let message = loop {
            // Only an answer owed since before this wait began has waited
            // the whole deadline; requests sent during it (after an idle
            // spell) get a wait of their own.
            let owed_before = self.sent.load(Ordering::Relaxed) > self.received;
            match tokio::time::timeout(APPEND_TIMEOUT, self.answers.message()).await {
                Ok(m) => break m,
                Err(_) if owed_before => {
                    let message = format!("no answer to an append within {APPEND_TIMEOUT:?}");
                    return Some(Err(Failure::Network(TransportError { target: self.target, message })));
                }
                // Nothing owed when the wait began: an idle stream.
                Err(_) => {}
            }
        };
        let answer = match message {
            Ok(Some(answer)) => answer,
            Ok(None) => return None,
            Err(status) => return Some(Err(Failure::of_status(self.target, &status))),
        };
        self.received += 1;
        use pb::append_stream_response::Outcome;
        let malformed = |what| Some(Err(Failure::malformed(self.target, what)));
        Some(Ok(match Outcome::try_from(answer.outcome) {
            Ok(Outcome::Matched) => Ok(answer.log_id.map(log_id_from_pb)),
            Ok(Outcome::Conflict) => match answer.log_id {
                Some(prev) => Err(StreamAppendError::Conflict(log_id_from_pb(prev))),
                None => return malformed("a conflict without its entry"),
            },
            Ok(Outcome::HigherVote) => match vote_from_pb(answer.higher_vote) {
                Ok(v) => Err(StreamAppendError::HigherVote(v)),
                Err(_) => return malformed("no higher vote"),
            },
            Err(_) => return malformed("unknown outcome"),
        }))
    }

    /// As openraft reads them: ends after the first error or refusal.
    fn into_stream(self) -> AppendResults<'static> {
        futures::stream::unfold(Some(self), |state| async move {
            let mut answers = state?;
            match answers.next().await? {
                Ok(Ok(matching)) => Some((Ok(Ok(matching)), Some(answers))),
                Ok(Err(refused)) => Some((Ok(Err(refused)), None)),
                Err(failure) => Some((Err(failure.rpc()), None)),
            }
        })
        .boxed()
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = PartitionSnapshot;

    /// Replication to the peer: a gRPC stream whose requests go out as
    /// openraft makes them, without waiting for earlier answers (the peer
    /// answers each once fsync'd, in order). A stream of one request (a
    /// heartbeat) is one unary call instead.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<AppendResults<'s>, RPCError<TypeConfig>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(futures::stream::empty().boxed());
            };
            // Polled once without waiting: the unfolding stream keeps its
            // place, so nothing is lost if it has no request ready.
            match input.next().now_or_never() {
                Some(None) => {
                    openraft::network::stream_append_sequential(self, futures::stream::iter([first]), option).await
                }
                second => {
                    let ready: Vec<_> = std::iter::once(first).chain(second.flatten()).collect();
                    let requests = futures::stream::iter(ready).chain(input);
                    Ok(self.open_stream(requests).await.map_err(Failure::rpc)?.into_stream())
                }
            }
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.append(rpc, option).await.map_err(Failure::rpc)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(self.vote_request(&rpc), &option);
        let resp = self.client().map_err(Failure::rpc)?.vote(request).await.map_err(|s| self.failed(s).rpc())?;
        self.vote_response(resp.into_inner()).map_err(Failure::rpc)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(self.vote_request(&rpc), &option);
        let resp = self.client().map_err(Failure::rpc)?.pre_vote(request).await.map_err(|s| self.failed(s).rpc())?;
        self.vote_response(resp.into_inner()).map_err(Failure::rpc)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = self.snapshot(vote, snapshot, option) => resp.map_err(Failure::streaming),
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        // 50 ms, doubling, at most 2 s between attempts to a peer that is down.
        Some(Backoff::new(
            (0u32..).map(|i| Duration::from_millis(50u64.saturating_mul(1 << i.min(6))).min(Duration::from_secs(2))),
        ))
    }
}
