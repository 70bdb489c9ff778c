//! This node's connections to its peers ([`Peers`]: one channel per peer,
//! shared by every group, over mutual TLS unless the cluster is insecure)
//! and openraft's network over them ([`Network`], [`Connection`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use strata_tls::NodeTls;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::codec::{log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb};
use super::server::propose_local;
use super::{APPEND_TIMEOUT, GroupId, Identity, MAX_MESSAGE_BYTES, Written};
use crate::coalesce::Coalesce;
use crate::group::PartitionRaft;
use crate::liveness::{DEAD_AFTER, PING_EVERY};
use crate::state_machine::{PartitionSnapshot, Snapshot};
use crate::transfer;
use crate::types::{NodeId, NodeInfo, TypeConfig, Vote, entry_to_batch};

/// How long an entry-less request that only moves the follower's commit
/// index is held back in case a request with entries follows and carries the
/// commit instead (below peak this spares nearly a round trip per follower
/// and produce). Followers learn a commit at most this much later; producers
/// are acknowledged at the leader's commit, which this does not delay.
const COMMIT_UPDATE_WINDOW: Duration = Duration::from_millis(20);

/// One lazily connected channel per peer node, shared by every group.
#[derive(Clone)]
pub struct Peers {
    identity: Arc<Identity>,
    /// Addresses from this node's configuration: they win over the ones
    /// recorded in a group's membership (a node may move).
    addresses: Arc<BTreeMap<NodeId, String>>,
    /// This node's certificate and the cluster's CA (`None`: plaintext,
    /// `--insecure-cluster`).
    tls: Option<Arc<NodeTls>>,
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
    /// `addresses`: every member's cluster listener. `tls`: how to reach
    /// them (`None`: plaintext).
    pub fn new(identity: Arc<Identity>, addresses: BTreeMap<NodeId, String>, tls: Option<NodeTls>) -> Self {
        Self { identity, addresses: Arc::new(addresses), tls: tls.map(Arc::new), channels: Arc::default() }
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

    /// Calls every peer's `Liveness` every [`PING_EVERY`] until the
    /// returned task is aborted, recording each answer in this node's
    /// [`crate::liveness::Liveness`]. The calls run on a thread of their
    /// own, each peer over a connection of its own: a node whose runtime is
    /// saturated (thousands of elections after a peer died) or whose Raft
    /// connection is queued up still hears its peers, and is still heard,
    /// rather than finding them dead and disrupting their groups. One loop
    /// per peer: a slow peer delays only its own calls.
    pub fn keep_liveness(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let me = self.identity.node_id;
        let targets = self.addresses.keys().copied().filter(|id| *id != me).collect::<Vec<_>>();
        let (stop, mut stopped) = tokio::sync::watch::channel(());
        let peers = self.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("strata-liveness".into()).spawn(move || {
            runtime.block_on(async move {
                let calls = targets.into_iter().map(|target| peers.ping_forever(target));
                tokio::select! {
                    _ = futures::future::join_all(calls) => {}
                    _ = stopped.changed() => {}
                }
            });
        })?;
        // This task runs on the node's main runtime: its beat tells the
        // thread that the runtime serves. Aborting it drops `stop`, which
        // ends the thread.
        let identity = Arc::clone(&self.identity);
        Ok(tokio::spawn(async move {
            let _stop = stop;
            let mut every = tokio::time::interval(PING_EVERY);
            loop {
                every.tick().await;
                identity.liveness.beat();
            }
        }))
    }

    async fn ping_forever(&self, target: NodeId) {
        // Its own connection (created on the calling runtime, whose tasks
        // then drive it): never queued behind Raft's streams.
        let channel = match self.new_channel_to(target) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target, error = %e, "no liveness calls to this peer");
                return;
            }
        };
        let client = pb::raft_client::RaftClient::new(channel);
        let mut every = tokio::time::interval(PING_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if self.identity.liveness.runtime_stalled() {
                continue;
            }
            let mut request = Request::new(pb::LivenessRequest {
                from: self.identity.node_id,
                target,
                cluster_id: self.identity.cluster_id(),
                incarnation: self.identity.liveness.incarnation(),
                draining: self.identity.liveness.draining(),
            });
            request.set_timeout(DEAD_AFTER / 2);
            if let Ok(answer) = client.clone().liveness(request).await
                && answer.get_ref().node_id == target
            {
                let answer = answer.get_ref();
                self.identity.liveness.heard_call(target, answer.incarnation, answer.draining);
            }
        }
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
                let rejected = (!resp.rejected.is_empty()).then_some(resp.rejected);
                Ok(Written { log_id: log_id_from_pb(applied), base_offset: resp.base_offset, rejected })
            }
            _ => propose_local(raft, batch).await,
        }
    }

    /// A new channel (a connection of its own) to a configured peer's
    /// cluster listener, mutual TLS unless the cluster runs without: for
    /// traffic that must not queue behind Raft's, or Raft's behind it.
    pub fn new_channel_to(&self, target: NodeId) -> Result<Channel, String> {
        let addr = self.address(target).ok_or_else(|| format!("node {target} has no configured address"))?.to_owned();
        self.endpoint(target, &addr).map(|e| e.connect_lazy())
    }

    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().map_err(|_| "the peer table lock was poisoned".to_owned())?;
        if let Some(c) = channels.get(&(target, addr.to_owned())) {
            return Ok(c.clone());
        }
        let channel = self.endpoint(target, addr)?.connect_lazy();
        channels.insert((target, addr.to_owned()), channel.clone());
        Ok(channel)
    }

    fn endpoint(&self, target: NodeId, addr: &str) -> Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("node {target} has a bad address '{addr}': {e}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client_config(target))
                .map_err(|e| format!("TLS to node {target} at {addr}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .initial_stream_window_size(8 * 1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024);
        Ok(endpoint)
    }

    /// The network of one group, for openraft; `log` is the group's log a
    /// snapshot sends entries from (`None`: snapshots are self-contained).
    pub fn network(&self, group: GroupId, log: Option<PartitionLog>) -> Network {
        Network { peers: self.clone(), group, log, traced: Arc::default() }
    }
}

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
pub struct Network {
    peers: Peers,
    group: GroupId,
    log: Option<PartitionLog>,
    /// The group's traced entries (its log store notes them).
    traced: Arc<crate::trace::TracedEntries>,
}

impl Network {
    /// Shares the group's traced entries with its log store.
    pub fn with_traced(mut self, traced: Arc<crate::trace::TracedEntries>) -> Self {
        self.traced = traced;
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        let client = self.peers.raft_client(target, &node.addr);
        let identity = Arc::clone(&self.peers.identity);
        let partition = self.log.as_ref().map(|l| (Arc::from(l.topic()), l.partition()));
        let stamp = Addressing {
            group: self.group,
            target,
            identity,
            traced: Arc::clone(&self.traced),
            replicating: Replicating::default(),
            partition,
        };
        Connection { client, log: self.log.clone(), stamp }
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
    /// The group's traced entries, and the replication spans open to this
    /// peer (see [`crate::trace`]).
    traced: Arc<crate::trace::TracedEntries>,
    replicating: Replicating,
    /// The partition's topic and number (`None`: the controller).
    partition: Option<(Arc<str>, u32)>,
}

/// `strata.replicate` spans sent to a peer and not yet answered, by the
/// entry's index: each ends when the peer says it holds the entry, or with
/// an error status when the attempt fails (the entry is sent again, under
/// a new span). At most [`crate::trace::TRACED_MAX`] open.
#[derive(Clone, Default)]
struct Replicating(Arc<std::sync::Mutex<Vec<(u64, opentelemetry::global::BoxedSpan)>>>);

impl std::fmt::Debug for Replicating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replicating")
    }
}

impl Replicating {
    /// Records a span for entry `index`: a span still open for the same
    /// entry (an earlier attempt) ends first, as does the oldest beyond the
    /// bound.
    fn sent(&self, index: u64, span: opentelemetry::global::BoxedSpan) {
        use opentelemetry::trace::Span as _;
        let Ok(mut spans) = self.0.lock() else { return };
        if let Some(at) = spans.iter().position(|(i, _)| *i == index) {
            let (_, mut old) = spans.remove(at);
            old.set_status(opentelemetry::trace::Status::error("sent again"));
        }
        if spans.len() >= crate::trace::TRACED_MAX {
            let (_, mut old) = spans.remove(0);
            old.set_status(opentelemetry::trace::Status::error("no answer"));
        }
        spans.push((index, span));
    }

    /// The attempt failed: every open span ends with `why`.
    fn failed(&self, why: &str) {
        use opentelemetry::trace::Span as _;
        if !crate::trace::enabled() {
            return;
        }
        if let Ok(mut spans) = self.0.lock() {
            for (_, mut span) in spans.drain(..) {
                span.set_status(opentelemetry::trace::Status::error(why.to_owned()));
            }
        }
    }

    /// The peer holds every entry up to `index`.
    fn matched(&self, index: Option<u64>) {
        let Some(index) = index.filter(|_| crate::trace::enabled()) else { return };
        if let Ok(mut spans) = self.0.lock()
            && !spans.is_empty()
        {
            spans.retain(|(i, _)| *i > index);
        }
    }
}

impl Addressing {
    /// The traceparent to send with entry (`term`, `index`) (a new
    /// replication span's), if the entry is traced; empty otherwise.
    fn replicate_span(&self, term: u64, index: u64) -> Vec<u8> {
        use opentelemetry::trace::{Span as _, SpanKind, Tracer};
        if !crate::trace::enabled() || self.traced.is_empty() {
            return Vec::new();
        }
        let Some(parent) = self.traced.get(term, index) else { return Vec::new() };
        let mut attributes = match &self.partition {
            Some((topic, p)) => crate::trace::partition_attributes(topic, *p),
            None => Vec::new(),
        };
        attributes.push(opentelemetry::KeyValue::new("strata.raft.index", index as i64));
        attributes.push(opentelemetry::KeyValue::new("strata.replica.node_id", self.target as i64));
        let tracer = crate::trace::tracer();
        let span = tracer
            .span_builder(format!("strata.replicate to node {}", self.target))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &crate::trace::parent(&parent));
        let traceparent = strata_record::traceparent::TraceParent::of_span(span.span_context())
            .map(|t| t.format().into_bytes())
            .unwrap_or_default();
        self.replicating.sent(index, span);
        traceparent
    }

    fn append_request(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<pb::AppendEntriesRequest, TransportError> {
        let mut entries = Vec::with_capacity(rpc.entries.len());
        for e in &rpc.entries {
            let batch =
                entry_to_batch(e).map_err(|e| TransportError { target: self.target, message: e.to_string() })?;
            let traceparent = self.replicate_span(e.log_id.leader_id.term, e.log_id.index);
            entries.push(pb::Entry { id: Some(log_id_to_pb(&e.log_id)), batch, traceparent: traceparent.into() });
        }
        Ok(pb::AppendEntriesRequest {
            group: Some(self.group.into()),
            target: self.target,
            cluster_id: self.identity.cluster_id(),
            vote: Some(vote_to_pb(&rpc.vote)),
            prev_log_id: rpc.prev_log_id.as_ref().map(log_id_to_pb),
            entries,
            leader_commit: rpc.leader_commit.as_ref().map(log_id_to_pb),
            sender_incarnation: self.identity.liveness.incarnation(),
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
    /// The peer's client; a peer known to be down (heard from before, then
    /// silent for [`DEAD_AFTER`]) fails at once, as unreachable: a node
    /// that lost a peer does not queue a call per group on a connection
    /// that is reconnecting, each waiting out its deadline (openraft backs
    /// off; liveness says when the peer is back).
    fn client(&self) -> Result<pb::raft_client::RaftClient<Channel>, Failure> {
        let target = self.stamp.target;
        let view = self.stamp.identity.liveness.view(target);
        if view.incarnation != 0 && !view.live {
            let message = format!("node {target} is down: it has not answered liveness calls for {DEAD_AFTER:?}");
            return Err(Failure::Unreachable(TransportError { target, message }));
        }
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
        Ok(AppendAnswers {
            target: self.stamp.target,
            answers,
            sent,
            received: 0,
            replicating: self.stamp.replicating.clone(),
        })
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
        let resp = match self.client()?.append_entries(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.stamp.replicating.failed("replication failed");
                return Err(self.failed(s));
            }
        };
        use pb::append_entries_response::Outcome;
        let held = match Outcome::try_from(resp.outcome) {
            Ok(Outcome::Success) => rpc.entries.last().map(|e| e.log_id.index),
            Ok(Outcome::PartialSuccess) => resp.matching.as_ref().map(|m| m.index),
            _ => None,
        };
        self.stamp.replicating.matched(held);
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
        self.stamp.identity.transfers.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    replicating: Replicating,
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
            Ok(Outcome::Matched) => {
                self.replicating.matched(answer.log_id.as_ref().map(|l| l.index));
                Ok(answer.log_id.map(log_id_from_pb))
            }
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
                Ok(Err(refused)) => {
                    answers.replicating.failed("refused by the follower");
                    Some((Ok(Err(refused)), None))
                }
                Err(failure) => {
                    answers.replicating.failed("replication failed");
                    Some((Err(failure.rpc()), None))
                }
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

    async fn transfer_leader(
        &mut self,
        req: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let message = pb::TransferLeaderRequest {
            group: Some(self.stamp.group.into()),
            target: self.stamp.target,
            cluster_id: self.stamp.identity.cluster_id(),
            from_leader: Some(vote_to_pb(req.from_leader())),
            to: *req.to_node_id(),
            last_log_id: req.last_log_id().map(log_id_to_pb),
        };
        let request = self.request(message, &option);
        let resp =
            self.client().map_err(Failure::rpc)?.transfer_leader(request).await.map_err(|s| self.failed(s).rpc())?;
        // openraft only logs the answer: a refusal is reported as the
        // peer's, in words.
        match resp.into_inner().refused {
            refused if refused.is_empty() => Ok(Ok(())),
            refused => Err(Failure::Network(self.transport_error(&format!("handover refused: {refused}"))).rpc()),
        }
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
