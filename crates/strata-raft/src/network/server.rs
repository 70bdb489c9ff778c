//! The Raft service peers call: routes each message to this node's group,
//! after checking who sent it and what it says ([`super::validate`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::{AppendEntriesResponse, StreamAppendError};
use strata_proto::internal as pb;
use strata_tls::PeerInfo;
use tonic::{Request, Response, Status};

use super::codec::{
    append_request_from_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_request_from_pb, vote_response_to_pb,
    vote_to_pb,
};
use super::validate::{Invalid, Sender};
use super::{GroupId, Groups, Identity, MAX_MESSAGE_BYTES};
use crate::controller;
use crate::group::PartitionRaft;
use crate::state_machine::{PartitionSnapshot, Snapshot};
use crate::transfer;
use crate::types::{LogId, NodeId, Request as Proposal, SnapshotMeta, Vote, entry_id};

/// The gRPC service that hands incoming Raft messages to this node's groups.
#[derive(Clone)]
pub struct RaftService {
    identity: Arc<Identity>,
    groups: Groups,
    /// Where received snapshot entries are staged before they are installed.
    staging: std::path::PathBuf,
    /// The node's own checks of a controller command (its topic limits),
    /// after the structural ones.
    command_check: CommandCheck,
}

/// A node's checks of a controller command: why it is refused, if it is.
pub type CommandCheck = Arc<dyn Fn(&controller::Command) -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// Metadata key of a "not the leader" status naming the leader's node id.
pub const LEADER_HEADER: &str = "x-strata-leader";

/// How long a message for a group this node does not run waits for it to
/// start before it is answered `NOT_FOUND`.
const GROUP_START_WAIT: Duration = Duration::from_millis(500);

/// A snapshot stream that sends nothing for this long is given up.
const SNAPSHOT_CHUNK_WAIT: Duration = Duration::from_secs(60);

fn refused(e: Invalid) -> Status {
    Status::invalid_argument(format!("refused: {e}"))
}

impl RaftService {
    /// Received snapshots are staged under the system's temporary directory
    /// unless [`RaftService::with_staging_dir`] says otherwise.
    pub fn new(identity: Arc<Identity>, groups: Groups) -> Self {
        Self {
            identity,
            groups,
            staging: std::env::temp_dir().join("strata-snapshots"),
            command_check: Arc::new(|_: &controller::Command| Ok(())),
        }
    }

    /// Forwarded controller commands must also pass `check` (the node's
    /// topic limits).
    pub fn with_command_check(mut self, check: CommandCheck) -> Self {
        self.command_check = check;
        self
    }

    /// Stages received snapshot entries under `dir` (a node's data
    /// directory: they can be as large as a partition).
    pub fn with_staging_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.staging = dir;
        self
    }

    pub fn into_server(self) -> pb::raft_server::RaftServer<Self> {
        // Appends carry up to a few MiB of batches.
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The node that sent `request`: the one its connection's certificate
    /// names (none on an insecure cluster).
    fn peer<T>(request: &Request<T>) -> Option<NodeId> {
        request.extensions().get::<PeerInfo>().and_then(|p| p.node)
    }

    /// Who sent a message to `raft`, as [`super::validate`] checks it.
    fn sender<'a>(&'a self, node: Option<NodeId>, raft: &PartitionRaft) -> Sender<'a> {
        let current_term = raft.metrics().borrow_watched().current_term;
        Sender { members: &self.identity.members, node, current_term }
    }

    /// The group a message is for. One this node does not run yet is
    /// waited for a moment: a new partition's replicas start on each node
    /// as it applies the topic, and its first leader's messages may come
    /// first (answered at once, they would make it back off). One this
    /// node stopped running is not waited for.
    async fn route(
        &self,
        group: Option<pb::GroupId>,
        target: NodeId,
        cluster: &str,
    ) -> Result<(GroupId, PartitionRaft), Status> {
        let me = self.identity.node_id;
        if target != me {
            return Err(Status::failed_precondition(format!(
                "this is node {me}, not node {target}: check the cluster's peer addresses"
            )));
        }
        self.identity.check_cluster(cluster)?;
        let group: GroupId = group.ok_or_else(|| Status::invalid_argument("the message names no group"))?.into();
        let raft = self
            .groups
            .wait_for(group, GROUP_START_WAIT)
            .await
            .ok_or_else(|| Status::not_found(format!("node {me} does not run {group}")))?;
        Ok((group, raft))
    }
}

impl RaftService {
    /// The answer to a (pre-)vote request from `candidate` that this
    /// replica refuses without asking openraft, if it does: a partition
    /// replica does not help unseat a leader it has reason to think is
    /// serving, as openraft's leader lease would do if quiescent groups
    /// heartbeat (their followers' leases run out while all is well):
    ///
    /// - it leads the group itself (and, asked for a pre-vote, heartbeats at
    ///   once, so that the candidate hears from it and goes quiet again; a
    ///   candidate of a real vote already holds a higher term, which a
    ///   heartbeat would only carry back to depose this leader);
    /// - it follows a leader it trusts ([`crate::quiesce::trusts`]: the
    ///   leader's node is live and an append from its current run was
    ///   heard in this term).
    ///
    /// A quiescent follower that wrongly found its leader's node dead (a
    /// lost liveness call) then disturbs nothing: partition groups run a
    /// pre-vote first, which these refusals fail without raising any term.
    /// Refusing a vote is always safe; only a group whose leader's node is
    /// live but whose leader cannot serve would wait (see ARCHITECTURE's
    /// known limits).
    ///
    /// A leadership-transfer election (in any group, the controller's too)
    /// passes every voter's lease in openraft, so it is let through only
    /// where the replica's leader handed the group over to that candidate
    /// in the replica's current term (a `TransferLeader` it received, or,
    /// on the leader, its own handover); every other one is refused.
    fn refuse_vote(
        &self,
        group: GroupId,
        raft: &PartitionRaft,
        candidate: NodeId,
        pre_vote: bool,
        transfer: bool,
    ) -> Option<pb::VoteResponse> {
        let me = self.identity.node_id;
        let (state, vote, leader) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            (m.state, m.vote, m.current_leader)
        };
        let refusal =
            || Some(pb::VoteResponse { vote: Some(vote_to_pb(&vote)), vote_granted: false, last_log_id: None });
        if transfer {
            let handed = self.groups.heard(group).is_some_and(|h| h.handed_over(vote.leader_id.term, candidate));
            if handed {
                return None;
            }
            tracing::debug!(%group, candidate, "leadership-transfer vote refused: no handover to this candidate");
            return refusal();
        }
        if group == GroupId::CONTROLLER {
            return None;
        }
        self.identity.liveness.touch(candidate);
        let refuse = if state == openraft::ServerState::Leader {
            if pre_vote {
                let raft = raft.clone();
                tokio::spawn(async move {
                    let _ = raft.trigger().heartbeat().await;
                });
            }
            true
        } else {
            let heard = self.groups.heard(group).map(|h| h.get()).unwrap_or_default();
            leader.is_some_and(|l| {
                l != candidate
                    && l != me
                    && crate::quiesce::trusts(&self.identity.liveness, heard, vote.leader_id.term, l)
            })
        };
        if !refuse {
            return None;
        }
        tracing::debug!(%group, candidate, ?leader, "vote refused: this replica's leader is serving");
        refusal()
    }
}

fn raft_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

/// A snapshot's metadata and data, decoded and checked: the controller's
/// data is its metadata (checked as a whole); a partition's carries none.
fn snapshot_parts(
    sender: &Sender<'_>,
    raft: &PartitionRaft,
    group: GroupId,
    vote: &Vote,
    meta_json: &[u8],
    data_json: &[u8],
) -> Result<(SnapshotMeta, PartitionSnapshot), Status> {
    // A leader sends a snapshot only after its appends found where this
    // replica's log stands, so this replica already holds the leader's vote:
    // a snapshot under any other vote (a forged higher one) is refused, and
    // a real leader that got here first sends it again after its next
    // heartbeat.
    let current = raft.metrics().borrow_watched().vote;
    if !vote.committed || *vote != current {
        return Err(refused(Invalid::Snapshot(format!(
            "a snapshot under vote {vote}, but this replica follows {current}"
        ))));
    }
    let meta: SnapshotMeta = serde_json::from_slice(meta_json)
        .map_err(|e| Status::invalid_argument(format!("malformed snapshot metadata: {e}")))?;
    let data: PartitionSnapshot = serde_json::from_slice(data_json)
        .map_err(|e| Status::invalid_argument(format!("malformed snapshot data: {e}")))?;
    sender.check_snapshot(vote, &meta).map_err(refused)?;
    match (&data.metadata, group == GroupId::CONTROLLER) {
        (Some(metadata), true) => {
            metadata.check(sender.members).map_err(|e| refused(Invalid::Snapshot(e.to_string())))?
        }
        (None, true) if meta.last_log_id.is_some() => {
            return Err(refused(Invalid::Snapshot("a controller snapshot without its metadata".into())));
        }
        (Some(_), false) => {
            return Err(refused(Invalid::Snapshot(format!("a snapshot of {group} with cluster metadata"))));
        }
        _ => {}
    }
    Ok((meta, data))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let node = Self::peer(&request);
        let req = request.into_inner();
        let (group, raft) = self.route(req.group, req.target, &req.cluster_id).await?;
        let incarnation = req.sender_incarnation;
        let rpc = append_request_from_pb(req)?;
        self.sender(node, &raft).check_append(&rpc).map_err(refused)?;
        self.identity.liveness.heard(rpc.vote.leader_id.voted_for, incarnation);
        if let Some(heard) = self.groups.heard(group) {
            heard.record(rpc.vote.leader_id.term, rpc.vote.leader_id.voted_for, incarnation);
        }
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
        let node = Self::peer(&request);
        let members = self.identity.members.clone();
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("an empty append stream"))?;
        let (group, raft) = self.route(first.group, first.target, &first.cluster_id).await?;
        let incarnation = first.sender_incarnation;
        let first = append_request_from_pb(first)?;
        self.sender(node, &raft).check_append(&first).map_err(refused)?;
        self.identity.liveness.heard(first.vote.leader_id.voted_for, incarnation);
        // Who the group hears from (one stream: one leader, one vote).
        let heard = self.groups.heard(group).unwrap_or_default();
        heard.record(first.vote.leader_id.term, first.vote.leader_id.voted_for, incarnation);
        let metrics = raft.metrics();
        // Later requests go to the same group. The stream ends at the first
        // one that is malformed or refused, names another group or does not
        // arrive, or once this node no longer runs the group (the sender sees
        // its answers stop, and opens a new stream, which is routed afresh).
        let groups = self.groups.clone();
        let identity = Arc::clone(&self.identity);
        let rest = inbound.scan((), move |(), next| {
            let next = match next {
                Ok(_) if !groups.contains(group) => {
                    tracing::debug!(%group, "append stream for a group this node no longer runs");
                    None
                }
                Ok(req) if req.group.map(GroupId::from) == Some(group) => {
                    let incarnation = req.sender_incarnation;
                    let checked = append_request_from_pb(req).and_then(|rpc| {
                        let current_term = metrics.borrow_watched().current_term;
                        Sender { members: &members, node, current_term }.check_append(&rpc).map_err(refused)?;
                        heard.record(rpc.vote.leader_id.term, rpc.vote.leader_id.voted_for, incarnation);
                        identity.liveness.heard(rpc.vote.leader_id.voted_for, incarnation);
                        Ok(rpc)
                    });
                    match checked {
                        Ok(rpc) => Some(rpc),
                        Err(e) => {
                            tracing::warn!(%group, ?node, error = %e.message(), "append stream refused a request");
                            None
                        }
                    }
                }
                Ok(req) => {
                    tracing::warn!(%group, other = ?req.group, "append stream request for another group");
                    None
                }
                Err(e) => {
                    tracing::debug!(%group, error = %e, "append stream broke");
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
        let node = Self::peer(&request);
        let req = request.into_inner();
        let (group, raft) = self.route(req.group, req.target, &req.cluster_id).await?;
        let rpc = vote_request_from_pb(req)?;
        self.sender(node, &raft).check_vote_request(&rpc).map_err(refused)?;
        if let Some(refusal) =
            self.refuse_vote(group, &raft, rpc.vote.leader_id.voted_for, false, rpc.leadership_transfer)
        {
            return Ok(Response::new(refusal));
        }
        let resp = raft.vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(vote_response_to_pb(&resp)))
    }

    async fn pre_vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let node = Self::peer(&request);
        let req = request.into_inner();
        let (group, raft) = self.route(req.group, req.target, &req.cluster_id).await?;
        let rpc = vote_request_from_pb(req)?;
        self.sender(node, &raft).check_vote_request(&rpc).map_err(refused)?;
        if rpc.leadership_transfer {
            // openraft's transfer election skips the pre-vote.
            return Err(refused(Invalid::Refused("a pre-vote for a leadership transfer")));
        }
        if let Some(refusal) = self.refuse_vote(group, &raft, rpc.vote.leader_id.voted_for, true, false) {
            return Ok(Response::new(refusal));
        }
        let resp = raft.pre_vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(vote_response_to_pb(&resp)))
    }

    /// The group's leader hands it over (see the proto): recorded, so that
    /// the one leadership-transfer election it names passes
    /// ([`Self::refuse_vote`]), and given to openraft, which lifts this
    /// replica's lease and, on the node it names, starts that election
    /// once the log holds the leader's last entry.
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let node = Self::peer(&request);
        let req = request.into_inner();
        let (group, raft) = self.route(req.group, req.target, &req.cluster_id).await?;
        let from = vote_from_pb(req.from_leader)?;
        let last = req.last_log_id.map(log_id_from_pb);
        self.sender(node, &raft).check_transfer(&from, req.to, last.as_ref()).map_err(refused)?;
        let (current, voter) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            (m.vote, m.membership_config.membership().voter_ids().any(|v| v == req.to))
        };
        let why = if !voter {
            Some(format!("node {} is not a voter of {group}", req.to))
        } else if current != from {
            Some(format!("this replica's vote is {current}, not the handing leader's {from}"))
        } else if req.to == self.identity.node_id && self.identity.liveness.draining() {
            // It would lead only to hand the group over again.
            Some(format!("node {} is stopping too", req.to))
        } else {
            None
        };
        if let Some(refused) = why {
            return Ok(Response::new(pb::TransferLeaderResponse { refused }));
        }
        if let Some(heard) = self.groups.heard(group) {
            heard.hand_over(from.leader_id.term, req.to);
        }
        let answer = raft
            .handle_transfer_leader(openraft::raft::TransferLeaderRequest::new(from, req.to, last))
            .await
            .map_err(raft_failed)?;
        Ok(Response::new(pb::TransferLeaderResponse {
            refused: answer.err().map(|e| e.to_string()).unwrap_or_default(),
        }))
    }

    /// A self-contained snapshot: the controller's (its metadata), or an
    /// empty one. A partition's snapshot of any entry carries the leader's
    /// entries and comes as a stream: a unary one would make the replica
    /// drop its log and keep nothing in its place.
    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let node = Self::peer(&request);
        let req = request.into_inner();
        let (group, raft) = self.route(req.group, req.target, &req.cluster_id).await?;
        let vote = vote_from_pb(req.vote)?;
        let (meta, data) =
            snapshot_parts(&self.sender(node, &raft), &raft, group, &vote, &req.meta_json, &req.data_json)?;
        if group != GroupId::CONTROLLER && meta.last_log_id.is_some() {
            return Err(refused(Invalid::Snapshot(format!(
                "a snapshot of {group} up to an entry must come with its entries (InstallSnapshotStream)"
            ))));
        }
        let resp = raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await.map_err(raft_failed)?;
        Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(vote_to_pb(&resp.vote)) }))
    }

    async fn install_snapshot_stream(
        &self,
        request: Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let node = Self::peer(&request);
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        let header = first.header.ok_or_else(|| Status::invalid_argument("the first chunk has no header"))?;
        let (group, raft) = self.route(header.group, header.target, &header.cluster_id).await?;
        let sender = self.sender(node, &raft);
        if group == GroupId::CONTROLLER {
            return Err(refused(Invalid::Snapshot("the controller's snapshots are not streamed".into())));
        }
        let vote = vote_from_pb(header.vote)?;
        let (meta, mut data) = snapshot_parts(&sender, &raft, group, &vote, &header.meta_json, &header.data_json)?;
        let prev = first.prev.map(log_id_from_pb);
        if let (Some(prev), Some(last)) = (prev, meta.last_log_id)
            && (prev.index > last.index || prev.leader_id.term > last.leader_id.term)
        {
            return Err(refused(Invalid::Snapshot(format!(
                "the entries sent start after {prev}, beyond the snapshot's last entry {last}"
            ))));
        }
        let prev = prev.map(|p| entry_id(&p));
        let malformed = |e: transfer::TransferError| Status::invalid_argument(format!("{group}: {e}"));
        let name = format!("{}-{}", group.topic_id, group.partition);
        // Dropped on any early return (or if the sender goes away): the
        // staged file goes with it.
        let mut stager = transfer::Stager::create(&self.staging, &name, prev, first.start_offset).map_err(malformed)?;
        stager.push(&first.batches).map_err(malformed)?;
        loop {
            let next = tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, chunks.message()).await.map_err(|_| {
                Status::deadline_exceeded(format!("{group}: no snapshot chunk for {SNAPSHOT_CHUNK_WAIT:?}"))
            })??;
            let Some(chunk) = next else { break };
            stager.push(&chunk.batches).map_err(malformed)?;
        }
        let staged = stager.finish(meta.last_log_id.as_ref().map(entry_id)).await.map_err(malformed)?;
        // The staging file goes with the snapshot's last handle (installed,
        // refused as stale, or this call cancelled).
        data.staged = Some(staged);
        let installed = raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await;
        let resp = installed.map_err(raft_failed)?;
        self.identity.transfers.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(vote_to_pb(&resp.vote)) }))
    }

    async fn identify(&self, _request: Request<pb::IdentifyRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        Ok(Response::new(pb::IdentifyResponse {
            node_id: self.identity.node_id,
            cluster_id: self.identity.cluster_id(),
            members: self.identity.members.clone(),
        }))
    }

    /// A peer says it is up (see [`crate::liveness`]). Heard only from a
    /// member, other than this node, that its certificate names (when the
    /// cluster has certificates) and of this cluster.
    async fn liveness(&self, request: Request<pb::LivenessRequest>) -> Result<Response<pb::LivenessResponse>, Status> {
        let peer = Self::peer(&request);
        let req = request.into_inner();
        let me = self.identity.node_id;
        if req.target != me {
            return Err(Status::failed_precondition(format!(
                "this is node {me}, not node {}: check the cluster's peer addresses",
                req.target
            )));
        }
        self.identity.check_cluster(&req.cluster_id)?;
        if req.from == me || !self.identity.members.contains(&req.from) {
            return Err(Status::invalid_argument(format!("refused: node {} is not a peer of node {me}", req.from)));
        }
        if peer.is_some_and(|p| p != req.from) {
            return Err(Status::permission_denied(format!(
                "refused: the sender's certificate does not name node {}",
                req.from
            )));
        }
        if req.incarnation == 0 {
            return Err(Status::invalid_argument("refused: incarnation 0"));
        }
        if self.identity.liveness.silent() {
            return Err(Status::unavailable("this node is stopping"));
        }
        self.identity.liveness.heard_call(req.from, req.incarnation, req.draining);
        Ok(Response::new(pb::LivenessResponse {
            node_id: me,
            incarnation: self.identity.liveness.incarnation(),
            draining: self.identity.liveness.draining(),
        }))
    }

    /// A controller command forwarded by a member to the controller's
    /// leader: checked as this node would check its own before proposing.
    /// Partitions take proposals only through the client API, which
    /// validates each batch first.
    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = request.into_inner();
        let (group, raft) = self.route(req.group, req.target, &req.cluster_id).await?;
        if group != GroupId::CONTROLLER {
            return Err(Status::invalid_argument(format!("refused: proposals to {group} go through the client API")));
        }
        let commands = controller::check_batch(&req.batch, &self.identity.members)
            .map_err(|e| Status::invalid_argument(format!("refused: {e}")))?;
        for c in &commands {
            (self.command_check)(c).map_err(|e| Status::invalid_argument(format!("refused: {e}")))?;
        }
        let written = propose_local(&raft, req.batch).await?;
        Ok(Response::new(pb::ProposeResponse {
            applied: Some(log_id_to_pb(&written.log_id)),
            base_offset: written.base_offset,
            rejected: written.rejected.unwrap_or_default(),
        }))
    }
}

/// Where a proposal landed.
#[derive(Debug, Clone)]
pub struct Written {
    pub log_id: LogId,
    pub base_offset: u64,
    /// Set when the entry was applied as a no-op: why its command changed
    /// nothing (a controller command that lost a race or failed its checks).
    pub rejected: Option<String>,
}

/// Proposes `batch` to a group of this node; not the leader: `Unavailable`
/// naming the leader (in [`LEADER_HEADER`] too).
pub(super) async fn propose_local(raft: &PartitionRaft, batch: bytes::Bytes) -> Result<Written, Status> {
    match raft.client_write(Proposal::new(batch)).await {
        Ok(resp) => {
            Ok(Written { log_id: resp.log_id, base_offset: resp.data.base_offset, rejected: resp.data.rejected })
        }
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
