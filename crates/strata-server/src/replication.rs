//! The node's Raft groups: the cluster controller (every member) and one
//! group per partition replica this node holds.
//!
//! The controller's metadata says which topics exist and where their
//! replicas live; [`Replication::reconcile`] makes this node match it:
//! topics are created (under the controller's topic id) or deleted in the
//! local catalog, and a Raft group is started for every partition this node
//! holds a replica of. Every node materialises every topic's catalog entry
//! (so any node can describe any topic); only replicas hold data.
//!
//! A produce is a proposal to the partition's group, acknowledged once
//! committed (durable on a majority of its replicas) and applied on the
//! leader (so the records are readable there when the producer hears back).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader};
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;
use strata_proto::v1 as pb;
use strata_raft::controller::{Command, Metadata, NodeRecord, Rejected, encode_command};
use strata_raft::group::PartitionRaft;
use strata_raft::quiesce::{QuiesceStats, Quiescer};
use strata_raft::types::{LocalFlush, LocalFlushResult};
use strata_raft::{GroupId, Groups, Identity, NodeId, NodeInfo, Peers, RaftService, Request, TypeConfig, group};
use strata_storage::{AppendInfo, LogManager, PartitionLog, StorageError, TopicOverrides};
use tokio::sync::watch;
use tonic::Status;
use tracing::{error, info, warn};

use crate::ServerError;
use crate::cluster::{ClusterConfig, NodeIdentity, random_id};
use crate::status::{from_storage, status, status_with};

/// How long startup waits for a single-node cluster's groups to lead and
/// re-apply what they had committed.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an admin request waits for the controller to apply its change.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a new topic's creation waits for its local replicas to elect.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long topic creation waits for enough nodes to have registered.
const REGISTRATION_WAIT: Duration = Duration::from_secs(10);
/// How often topics that could not be reconciled are tried again.
const RECONCILE_RETRY: Duration = Duration::from_secs(5);
/// A peer that does not answer within this is not live (for placement).
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);
/// A new partition's preferred leader asks for an election this often
/// until a leader is known (its peers may not run the group yet: their
/// nodes start it when they apply the topic), at most [`STAND_FIRST_TRIES`]
/// times; then the quiescer's elections take over (see `stand_first`).
const STAND_FIRST_EVERY: Duration = Duration::from_millis(600);
const STAND_FIRST_TRIES: u32 = 10;
const STAND_FIRST_DELAY: Duration = Duration::from_millis(250);
/// Partition replicas of a topic started at once.
const PARALLEL_STARTS: usize = 32;
/// Default replicas per partition (at most the cluster's size).
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// Where clients reach each node: this node at the address it advertises,
/// the others at the address they registered with the controller.
#[derive(Debug, Clone)]
pub(crate) struct Directory {
    me: NodeId,
    advertised: Arc<str>,
    metadata: watch::Receiver<Arc<Metadata>>,
}

impl Directory {
    fn client_address(&self, id: NodeId) -> Option<String> {
        if id == self.me {
            return Some(self.advertised.to_string());
        }
        self.metadata.borrow().nodes.get(&id).map(|n| n.addr.clone())
    }
}

/// The node's Raft groups.
#[derive(Debug)]
pub struct Replication {
    cluster: ClusterConfig,
    directory: Directory,
    identity: Mutex<NodeIdentity>,
    data_dir: PathBuf,
    config: Arc<openraft::Config>,
    peers: Peers,
    /// Connections to peers for the public services (see [`Self::peer_channel`]).
    public_channels: std::sync::Mutex<std::collections::HashMap<NodeId, tonic::transport::Channel>>,
    groups: Groups,
    logs: Arc<LogManager>,
    controller: PartitionRaft,
    metadata: watch::Receiver<Arc<Metadata>>,
    /// Serialises reconciliations (the background loop and admin requests).
    reconciling: tokio::sync::Mutex<()>,
    /// Set when this node must stop (it found it must not take part).
    fatal: watch::Sender<Option<String>>,
    /// The liveness calls to peers and the quiescer (stopped at shutdown).
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    quiesce: Arc<QuiesceStats>,
}

/// A new partition's preferred leader: stands for election (a pre-vote,
/// then the vote) a moment after it starts, and again every
/// [`STAND_FIRST_EVERY`] while its attempt went nowhere (no leader known,
/// no term raised: a peer that did not run the group yet answers nothing).
/// Once its term moved, the quiescer's rules take over.
async fn stand_first(raft: PartitionRaft) {
    // The other replicas' nodes start the group as they apply the topic,
    // about when this one does: standing a moment later finds them running
    // it, rather than leading with one of them and replicating to the
    // other only after openraft's backoff.
    tokio::time::sleep(STAND_FIRST_DELAY).await;
    let term = raft.metrics().borrow_watched().current_term;
    for _ in 0..STAND_FIRST_TRIES {
        if raft.trigger().elect(true).await.is_err() {
            return;
        }
        let moved = raft
            .wait(Some(STAND_FIRST_EVERY))
            .metrics(|m| m.current_leader.is_some() || m.current_term > term, "a leader or a new term")
            .await;
        if moved.is_ok() {
            return;
        }
    }
}

fn raft_error(e: impl std::fmt::Display) -> ServerError {
    ServerError::Startup(format!("raft: {e}"))
}

fn controller_unavailable(message: impl Into<String>) -> Status {
    status(tonic::Code::Unavailable, pb::ErrorReason::ControllerUnavailable, message)
}

impl Replication {
    /// Starts the controller group on this node (recovering its log and
    /// metadata). A member that has never run one initialises it with every
    /// configured member: identical on every node, so safe to do on each.
    pub async fn start(
        cluster: ClusterConfig,
        identity: NodeIdentity,
        data_dir: PathBuf,
        logs: Arc<LogManager>,
        advertised: String,
        tls: Option<strata_tls::NodeTls>,
    ) -> Result<Arc<Self>, ServerError> {
        // Snapshot entries staged by a run that stopped mid-transfer: the
        // leader sends them again.
        let staging = data_dir.join("snapshots");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| {
                ServerError::Startup(format!("cannot clear the snapshot staging folder {}: {e}", staging.display()))
            })?;
        }
        let raft_identity = Identity::new(cluster.node_id, cluster.members(), identity.cluster_id.clone());
        let peers = Peers::new(raft_identity, cluster.peers.clone(), tls);
        let groups = Groups::default();
        let controller_config = group::config("strata").map_err(raft_error)?;
        let config = group::partition_config("strata").map_err(raft_error)?;
        let (tx, metadata) = watch::channel(Arc::new(Metadata::default()));
        let log = logs.open_controller_log()?;
        let controller = group::start_controller(cluster.node_id, log, tx, controller_config, &peers, &groups)
            .await
            .map_err(raft_error)?;
        let quiescer = Quiescer::new(Arc::clone(peers.identity()), groups.clone());
        let quiesce = quiescer.stats();
        let liveness = peers
            .keep_liveness()
            .map_err(|e| ServerError::Startup(format!("cannot start the liveness thread: {e}")))?;
        let background = vec![liveness, quiescer.spawn()];
        if !controller.is_initialized().await.map_err(raft_error)? {
            controller.initialize(Self::members_of(&cluster, &cluster.members())).await.map_err(raft_error)?;
        }
        let (fatal, _) = watch::channel(None);
        let directory = Directory { me: cluster.node_id, advertised: advertised.into(), metadata: metadata.clone() };
        Ok(Arc::new(Self {
            cluster,
            directory,
            identity: Mutex::new(identity),
            data_dir,
            config,
            peers,
            public_channels: std::sync::Mutex::default(),
            groups,
            logs,
            controller,
            metadata,
            reconciling: tokio::sync::Mutex::new(()),
            fatal,
            background: Mutex::new(background),
            quiesce,
        }))
    }

    fn members_of(cluster: &ClusterConfig, ids: &[NodeId]) -> BTreeMap<NodeId, NodeInfo> {
        ids.iter().map(|id| (*id, NodeInfo { addr: cluster.peers.get(id).cloned().unwrap_or_default() })).collect()
    }

    pub fn node_id(&self) -> NodeId {
        self.cluster.node_id
    }

    /// Resolves with the reason when this node must stop.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    fn die(&self, reason: String) {
        error!("{reason}");
        self.fatal.send_replace(Some(reason));
    }

    /// A channel to node `id`'s cluster listener (where the public services
    /// are served to peers too), or `None` for a node not in the cluster.
    /// A connection of its own, not Raft's: forwarded group sessions and
    /// coordinator reads never hold up replication between the two nodes.
    pub fn peer_channel(&self, id: NodeId) -> Option<tonic::transport::Channel> {
        let mut channels = self.public_channels.lock().ok()?;
        if let Some(c) = channels.get(&id) {
            return Some(c.clone());
        }
        let channel = self.peers.new_channel_to(id).ok()?;
        channels.insert(id, channel.clone());
        Some(channel)
    }

    /// The node whose client listener is at `addr`, as the metadata says.
    pub fn node_at(&self, addr: &str) -> Option<NodeId> {
        if *addr == *self.directory.advertised {
            return Some(self.node_id());
        }
        self.directory.metadata.borrow().nodes.values().find(|n| n.addr == addr).map(|n| n.id)
    }

    /// The gRPC service through which peers reach this node's groups (on
    /// the cluster listener only).
    pub fn service(&self) -> strata_proto::internal::raft_server::RaftServer<RaftService> {
        let logs = Arc::clone(&self.logs);
        RaftService::new(Arc::clone(self.peers.identity()), self.groups.clone())
            .with_staging_dir(self.data_dir.join("snapshots"))
            .with_command_check(Arc::new(move |c: &Command| check_topic_limits(&logs, c)))
            .into_server()
    }

    /// Runs the node's part of the cluster: checks its peers, bootstraps
    /// and registers itself with the controller, and follows the metadata.
    /// In a cluster of one, returns once every partition leads and has
    /// re-applied what it had committed.
    pub async fn run(self: &Arc<Self>) -> Result<(), ServerError> {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.check_peers().await });
        let me = Arc::clone(self);
        tokio::spawn(async move { me.join().await });
        let me = Arc::clone(self);
        tokio::spawn(async move { me.follow_metadata().await });
        if self.cluster.peers.len() == 1 {
            // Alone, this node can join at once: it serves registered.
            let me = self.node_id();
            let mut rx = self.metadata.clone();
            let registered = rx.wait_for(|m| m.nodes.contains_key(&me));
            tokio::time::timeout(READY_TIMEOUT, registered)
                .await
                .map_err(|_| raft_error("this node did not register with its own controller"))?
                .map_err(raft_error)?;
            // A topic that cannot be opened holds back no other: it is
            // logged, and tried again by `follow_metadata`.
            for (topic, e) in self.reconcile().await {
                warn!(topic, error = %e.message(), "could not open this topic yet; retrying");
            }
            for raft in self.groups.all() {
                raft.wait(Some(READY_TIMEOUT))
                    .metrics(
                        |m| m.state == ServerState::Leader && m.last_applied.map(|l| l.index) >= m.last_log_index,
                        "ready",
                    )
                    .await
                    .map_err(|e| raft_error(format!("a partition did not become ready: {e}")))?;
            }
        }
        Ok(())
    }

    /// Asks every peer who it is, until each has answered once: a peer of
    /// another cluster, with another id at its address, or configured with
    /// other members stops this node with a clear error.
    async fn check_peers(self: Arc<Self>) {
        let mine = self.cluster.members();
        let mut pending: Vec<NodeId> = mine.iter().copied().filter(|id| *id != self.node_id()).collect();
        let mut delay = Duration::from_millis(100);
        while !pending.is_empty() {
            let mut still = Vec::new();
            for id in pending {
                let answer = match self.peers.identify(id, LIVENESS_TIMEOUT).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        still.push(id);
                        continue;
                    }
                };
                let ours = self.peers.identity().cluster_id();
                let problem = if answer.node_id != id {
                    Some(format!(
                        "the peer at {} says it is node {}, but --peers lists it as node {id}",
                        self.cluster.peers[&id], answer.node_id
                    ))
                } else if answer.members != mine {
                    Some(format!(
                        "node {id} was configured with members {:?}, this node with {mine:?}: \
                         every node needs the same --peers",
                        answer.members
                    ))
                } else if !ours.is_empty() && !answer.cluster_id.is_empty() && ours != answer.cluster_id {
                    Some(format!(
                        "this node's data directory {} belongs to cluster {ours}, but node {id} belongs to \
                         cluster {}: a data directory of another cluster",
                        self.data_dir.display(),
                        answer.cluster_id
                    ))
                } else {
                    None
                };
                if let Some(p) = problem {
                    return self.die(p);
                }
                // Known to this node but not yet to the peer: ask again
                // until the peer can say which cluster it is of.
                if !ours.is_empty() && answer.cluster_id.is_empty() {
                    still.push(id);
                }
            }
            pending = still;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Bootstraps the cluster's id (the first controller leader does) and
    /// registers this node (id, address, incarnation) with the controller.
    async fn join(self: Arc<Self>) {
        let me = self.node_id();
        let (incarnation, addr) = {
            let identity = self.identity.lock().map(|i| i.incarnation.clone()).unwrap_or_default();
            (identity, self.directory.advertised.to_string())
        };
        let record = NodeRecord { id: me, addr, incarnation };
        let mut delay = Duration::from_millis(100);
        loop {
            let metadata = Arc::clone(&self.metadata.borrow());
            let command = if metadata.cluster_id.is_none() {
                // Whoever leads first picks the id; a second pick is
                // rejected when applied, so every node learns the first.
                (self.controller.current_leader().await == Some(me))
                    .then(|| Command::Bootstrap { cluster_id: random_id() })
            } else if metadata.nodes.get(&me) != Some(&record) {
                Some(Command::RegisterNode(record.clone()))
            } else {
                return;
            };
            if let Some(command) = command
                && let Err(e) = self.propose_controller(&command).await
            {
                // Refused: another node bootstrapped first, or this node's
                // id is taken (`adopt` stops the node); otherwise retry.
                if e.code() == tonic::Code::FailedPrecondition {
                    info!(reason = %e.message(), "the controller did not take this node's change");
                } else {
                    warn!(error = %e.message(), "cannot reach the controller yet; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Follows the controller's metadata: learns the cluster id, checks
    /// this node's registration, and reconciles topics and replicas. A
    /// topic that cannot be reconciled holds back no other, and is tried
    /// again every [`RECONCILE_RETRY`] until it is.
    async fn follow_metadata(self: Arc<Self>) {
        let mut rx = self.metadata.clone();
        loop {
            let metadata = Arc::clone(&rx.borrow_and_update());
            if let Err(reason) = self.adopt(&metadata) {
                return self.die(reason);
            }
            let failed = self.reconcile().await;
            for (topic, e) in &failed {
                warn!(topic, error = %e.message(), "could not apply the cluster metadata to this topic yet; retrying");
            }
            let changed = rx.changed();
            if failed.is_empty() {
                if changed.await.is_err() {
                    return;
                }
            } else if let Ok(Err(_)) = tokio::time::timeout(RECONCILE_RETRY, changed).await {
                return;
            }
        }
    }

    /// Records the cluster's id (once known) and checks that this node's
    /// registration is its own.
    fn adopt(&self, metadata: &Metadata) -> Result<(), String> {
        let me = self.node_id();
        let mut identity = self.identity.lock().map_err(|_| "the identity lock was poisoned".to_owned())?;
        if let Some(known) = metadata.nodes.get(&me)
            && known.incarnation != identity.incarnation
        {
            return Err(format!(
                "node id {me} is registered with another data directory (incarnation {}, this one {}): \
                 node ids are never reused; start this node with a new id",
                known.incarnation, identity.incarnation
            ));
        }
        if let Some(cluster_id) = &metadata.cluster_id {
            match &identity.cluster_id {
                Some(mine) if mine != cluster_id => {
                    return Err(format!(
                        "the data directory {} belongs to cluster {mine}, but the controller is of cluster {cluster_id}",
                        self.data_dir.display()
                    ));
                }
                Some(_) => {}
                None => {
                    identity.cluster_id = Some(cluster_id.clone());
                    identity.save(&self.data_dir).map_err(|e| e.to_string())?;
                    self.peers.identity().set_cluster_id(cluster_id);
                    info!(cluster_id, "joined the cluster");
                }
            }
        }
        Ok(())
    }

    /// Makes the local catalog and the running groups match the metadata,
    /// topic by topic (idempotent). Returns the topics that could not be
    /// reconciled, and why: one that fails holds back no other.
    pub async fn reconcile(&self) -> Vec<(String, Status)> {
        let _guard = self.reconciling.lock().await;
        let metadata = Arc::clone(&self.metadata.borrow());
        let mut failed = Vec::new();
        for topic in metadata.topics.values() {
            if let Err(e) = self.reconcile_topic(topic).await {
                failed.push((topic.name.clone(), e));
            }
        }
        let local = match self.logs.list_topics() {
            Ok(l) => l,
            Err(e) => {
                failed.push((String::new(), from_storage(e)));
                return failed;
            }
        };
        for local in local {
            // Deleted only if the metadata has seen the topic created (ids
            // are handed out in order): metadata that is behind (the
            // controller re-applying after a restart) deletes nothing.
            if !metadata.topics.contains_key(&local.name) && local.id < metadata.next_topic_id {
                self.stop_topic(local.id, local.partitions.len() as u32).await;
                if let Err(e) = self.logs.delete_topic(&local.name).await {
                    failed.push((local.name.clone(), from_storage(e)));
                }
            }
        }
        failed
    }

    /// [`Replication::reconcile`], then whether `topic` itself is in order.
    async fn reconcile_for(&self, topic: &str) -> Result<(), Status> {
        let failed = self.reconcile().await;
        match failed.into_iter().find(|(t, _)| t == topic || t.is_empty()) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Makes one topic's catalog entry and replicas here match `topic`.
    async fn reconcile_topic(&self, topic: &strata_raft::controller::TopicRecord) -> Result<(), Status> {
        let me = self.node_id();
        let partitions = topic.replicas.len() as u32;
        match self.logs.describe_topic(&topic.name) {
            Ok(local) if local.id == topic.id => {
                if self.logs.topic_overrides(&topic.name).map_err(from_storage)? != topic.overrides {
                    self.logs.set_topic_overrides(&topic.name, topic.overrides).await.map_err(from_storage)?;
                }
                if (local.partitions.len() as u32) < partitions {
                    self.logs.add_partitions(&topic.name, partitions).await.map_err(from_storage)?;
                }
            }
            Ok(old) => {
                // Deleted and created again while this node was away.
                self.stop_topic(old.id, old.partitions.len() as u32).await;
                self.logs.delete_topic(&topic.name).await.map_err(from_storage)?;
                self.logs
                    .create_topic_with_id(&topic.name, topic.id, partitions, topic.overrides)
                    .await
                    .map_err(from_storage)?;
            }
            Err(StorageError::UnknownTopic(_)) => {
                self.logs
                    .create_topic_with_id(&topic.name, topic.id, partitions, topic.overrides)
                    .await
                    .map_err(from_storage)?;
            }
            Err(e) => return Err(from_storage(e)),
        }
        // Started a few at a time: each start waits on its own fsyncs (the
        // first entry, the vote), which overlap.
        let mut starts = Vec::new();
        for (p, replicas) in topic.replicas.iter().enumerate() {
            let group = GroupId { topic_id: topic.id, partition: p as u32 };
            if replicas.contains(&me) && !self.groups.contains(group) {
                let log = self.logs.partition(&topic.name, p as u32).map_err(from_storage)?;
                starts.push(self.start_partition(group, log, replicas));
            }
        }
        let mut started = futures::stream::iter(starts).buffer_unordered(PARALLEL_STARTS);
        let mut first_error = None;
        while let Some(result) = started.next().await {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts (recovering) a partition's group; a new one is given its
    /// membership ([`group::bootstrap`]), and its preferred leader asks for
    /// an election at once instead of waiting for a timeout.
    async fn start_partition(&self, group: GroupId, log: PartitionLog, replicas: &[NodeId]) -> Result<(), Status> {
        let internal = |e: &dyn std::fmt::Display| Status::internal(format!("{group}: {e}"));
        let members = Self::members_of(&self.cluster, replicas);
        let new = group::bootstrap(group, &log, members.clone()).await.map_err(|e| internal(&e))?;
        let raft = group::start(self.node_id(), group, log, Arc::clone(&self.config), &self.peers, &self.groups)
            .await
            .map_err(|e| internal(&e))?;
        let preferred = replicas.first() == Some(&self.node_id());
        if new && preferred {
            tokio::spawn(stand_first(raft.clone()));
        }
        // A replica that voted before it held any entry (a version that
        // initialised every replica): initialised as it was then.
        if !raft.is_initialized().await.map_err(|e| internal(&e))? {
            match raft.initialize(members).await {
                Ok(()) => {
                    if preferred {
                        tokio::spawn(stand_first(raft.clone()));
                    }
                }
                // Another replica initialised the group first and this one
                // has heard from it already (it holds entries or a vote):
                // it is a member, with the same membership.
                Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(internal(&e)),
            }
        }
        info!(%group, ?replicas, "partition replica started");
        Ok(())
    }

    /// Stops the groups of a topic (before its logs are closed and deleted).
    async fn stop_topic(&self, topic_id: u64, partitions: u32) {
        for partition in 0..partitions {
            if let Some(raft) = self.groups.remove(GroupId { topic_id, partition }) {
                let _ = raft.shutdown().await;
            }
        }
    }

    /// What the quiescer did (for metrics).
    pub fn quiesce_stats(&self) -> &QuiesceStats {
        &self.quiesce
    }

    /// Hands every group this node leads over to a follower (a graceful
    /// stop; see `strata_raft::handover`).
    pub async fn hand_over(&self, within: Duration, progress: impl FnMut(usize)) -> strata_raft::handover::Handover {
        strata_raft::handover::hand_over_all(self.peers.identity(), &self.groups, within, progress).await
    }

    /// Stops every group (node shutdown).
    pub async fn shutdown(&self) {
        if let Ok(mut tasks) = self.background.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        // Many at a time (a node may hold thousands).
        futures::stream::iter(self.groups.drain())
            .for_each_concurrent(SHUTDOWN_AT_ONCE, |raft| async move {
                let _ = raft.shutdown().await;
            })
            .await;
    }

    /// Proposes a command to the controller (at its leader, wherever it is)
    /// and returns once it is applied on this node. The command is checked
    /// first as the controller's leader checks it; one that the controller
    /// applied as a no-op (it lost a race) is answered with the reason.
    async fn propose_controller(&self, command: &Command) -> Result<Arc<Metadata>, Status> {
        let batch = encode_command(command).map_err(|e| Status::internal(e.to_string()))?;
        strata_raft::controller::check_batch(&batch, &self.cluster.members())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        check_topic_limits(&self.logs, command).map_err(Status::invalid_argument)?;
        let written = self.peers.propose(&self.controller, GroupId::CONTROLLER, batch).await.map_err(|s| {
            if s.code() == tonic::Code::InvalidArgument {
                Status::invalid_argument(format!("the controller refused the change: {}", s.message()))
            } else {
                controller_unavailable(format!("the controller cannot take the change: {}", s.message()))
            }
        })?;
        let applied = self
            .controller
            .wait(Some(CONTROLLER_TIMEOUT))
            .applied_index_at_least(Some(written.log_id.index), "controller change applied")
            .await;
        applied.map_err(|e| controller_unavailable(format!("the controller change was not applied here: {e}")))?;
        if let Some(reason) = written.rejected {
            // The typed answer (exists, unknown, changed meanwhile) when the
            // metadata now says why; otherwise the controller's reason.
            self.check_command(command)?;
            return Err(Status::failed_precondition(format!("the controller did not apply the change: {reason}")));
        }
        Ok(Arc::clone(&self.metadata.borrow()))
    }

    /// Nodes that answer now (this one always does).
    async fn live_nodes(&self) -> Vec<NodeId> {
        let checks = self.cluster.members().into_iter().map(|id| async move {
            let live = id == self.node_id() || self.peers.identify(id, LIVENESS_TIMEOUT).await.is_ok();
            live.then_some(id)
        });
        futures::future::join_all(checks).await.into_iter().flatten().collect()
    }

    /// Creates a topic across the cluster: places its replicas on live
    /// nodes, has the controller record it, and waits until this node holds
    /// it (and its local replicas have a leader).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        overrides: TopicOverrides,
    ) -> Result<(), Status> {
        self.logs.validate_new_topic(name, partitions, &overrides).map_err(from_storage)?;
        let members = self.cluster.peers.len() as u32;
        let rf = replication_factor.unwrap_or(DEFAULT_REPLICATION_FACTOR.min(members));
        // Live: answering now and registered with the controller. Right
        // after the cluster starts, nodes are still registering: give them
        // a moment when there are enough members.
        if rf as usize > self.cluster.peers.len() {
            return Err(status(
                tonic::Code::InvalidArgument,
                pb::ErrorReason::InvalidReplicationFactor,
                format!("replication factor {rf} is larger than the number of nodes in the cluster ({members})"),
            ));
        }
        if rf > 0 {
            let mut rx = self.metadata.clone();
            let _ = tokio::time::timeout(REGISTRATION_WAIT, rx.wait_for(|m| m.nodes.len() >= rf as usize)).await;
        }
        let registered = self.metadata.borrow().nodes.keys().copied().collect::<Vec<_>>();
        let live: Vec<_> = self.live_nodes().await.into_iter().filter(|id| registered.contains(id)).collect();
        let replicas = self.metadata.borrow().assign(partitions, rf, &live).map_err(|e| {
            status(tonic::Code::InvalidArgument, pb::ErrorReason::InvalidReplicationFactor, e.to_string())
        })?;
        let command = Command::CreateTopic { name: name.to_owned(), replicas: replicas.clone(), overrides };
        self.check_command(&command)?;
        let metadata = self.propose_controller(&command).await?;
        match metadata.topics.get(name) {
            Some(t) if t.replicas == replicas => {}
            _ => return Err(from_storage(StorageError::TopicExists(name.to_owned()))),
        }
        self.reconcile_for(name).await?;
        let topic_id = metadata.topics[name].id;
        self.wait_leaders(topic_id, 0..partitions).await;
        info!(topic = name, partitions, replication_factor = rf, "topic created");
        Ok(())
    }

    /// Waits (up to a timeout each) until this node's replicas of
    /// `partitions` have a leader and applied their first entry: they take
    /// records once this returns.
    async fn wait_leaders(&self, topic_id: u64, partitions: std::ops::Range<u32>) {
        for p in partitions {
            if let Some(raft) = self.groups.get(GroupId { topic_id, partition: p }) {
                let ready = |m: &openraft::RaftMetrics<TypeConfig>| {
                    m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.last_log_index
                };
                let _ = raft.wait(Some(LEADER_TIMEOUT)).metrics(ready, "a leader").await;
            }
        }
    }

    /// Grows a topic to `count` partitions across the cluster: the new
    /// partitions' replicas are placed on live nodes (as many as the
    /// topic's first partition has), recorded by the controller, and
    /// started. Consumer groups reading the topic are rebalanced onto them.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<(), Status> {
        let (current, rf) = {
            let metadata = self.metadata.borrow();
            let topic =
                metadata.topics.get(name).ok_or_else(|| from_storage(StorageError::UnknownTopic(name.to_owned())))?;
            (topic.replicas.len() as u32, topic.replicas.first().map_or(1, Vec::len) as u32)
        };
        if count <= current {
            return Err(from_storage(StorageError::PartitionCountNotIncreasing {
                topic: name.to_owned(),
                current,
                requested: count,
            }));
        }
        if count > strata_storage::MAX_PARTITIONS {
            return Err(from_storage(StorageError::InvalidPartitionCount {
                count,
                max: strata_storage::MAX_PARTITIONS,
            }));
        }
        let registered = self.metadata.borrow().nodes.keys().copied().collect::<Vec<_>>();
        let live: Vec<_> = self.live_nodes().await.into_iter().filter(|id| registered.contains(id)).collect();
        let replicas = self.metadata.borrow().assign(count - current, rf, &live).map_err(|e| {
            status(
                tonic::Code::Unavailable,
                pb::ErrorReason::InvalidReplicationFactor,
                format!("cannot place the new partitions' {rf} replicas: {e}"),
            )
        })?;
        let command = Command::AddPartitions { name: name.to_owned(), from: current, replicas: replicas.clone() };
        self.check_command(&command)?;
        let metadata = self.propose_controller(&command).await?;
        let topic =
            metadata.topics.get(name).ok_or_else(|| from_storage(StorageError::UnknownTopic(name.to_owned())))?;
        if topic.replicas.get(current as usize..) != Some(&replicas[..]) {
            return Err(Status::aborted(format!(
                "topic '{name}' changed while its partitions were being added (it has {} now); check, then retry",
                topic.replicas.len()
            )));
        }
        let topic_id = topic.id;
        self.reconcile_for(name).await?;
        self.wait_leaders(topic_id, current..count).await;
        info!(topic = name, from = current, to = count, "partitions added");
        Ok(())
    }

    /// Whether the current metadata takes `command` (it is checked again
    /// when applied: a concurrent change may still win).
    fn check_command(&self, command: &Command) -> Result<(), Status> {
        let mut metadata = Metadata::clone(&self.metadata.borrow());
        metadata.apply(command).map_err(|rejected| match rejected {
            Rejected::TopicExists(name) => from_storage(StorageError::TopicExists(name)),
            Rejected::UnknownTopic(name) => from_storage(StorageError::UnknownTopic(name)),
            changed @ Rejected::PartitionCountChanged { .. } => {
                Status::aborted(format!("{changed}; check, then retry"))
            }
            Rejected::Invalid(e) => Status::invalid_argument(e.to_string()),
            refused @ (Rejected::AlreadyBootstrapped(_) | Rejected::NodeIdReused { .. }) => {
                Status::failed_precondition(refused.to_string())
            }
            Rejected::Security(e) => {
                status(tonic::Code::FailedPrecondition, pb::ErrorReason::SecurityConflict, e.to_string())
            }
            other => controller_unavailable(other.to_string()),
        })
    }

    /// Applies a change of users, tokens or ACLs across the cluster and
    /// returns the metadata with it.
    pub async fn propose_security(
        &self,
        command: strata_raft::security::SecurityCommand,
    ) -> Result<Arc<Metadata>, Status> {
        let command = Command::Security(command);
        self.check_command(&command)?;
        self.propose_controller(&command).await
    }

    /// The controller's metadata as this node applied it, and its changes.
    pub fn metadata_watch(&self) -> watch::Receiver<Arc<Metadata>> {
        self.metadata.clone()
    }

    /// Deletes a topic across the cluster.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Status> {
        let command = Command::DeleteTopic { name: name.to_owned() };
        self.check_command(&command)?;
        self.propose_controller(&command).await?;
        self.reconcile_for(name).await
    }

    /// Changes a topic's configuration across the cluster.
    pub async fn alter_topic(&self, name: &str, changes: TopicOverrides) -> Result<(), Status> {
        let current = self.logs.topic_overrides(name).map_err(from_storage)?;
        self.logs.validate_new_topic(name, 1, &current.merge(&changes)).map_err(from_storage)?;
        let command = Command::AlterTopic { name: name.to_owned(), overrides: changes };
        self.check_command(&command)?;
        self.propose_controller(&command).await?;
        self.reconcile_for(name).await
    }

    /// One retention pass over every replica this node holds; returns the
    /// segments deleted.
    pub async fn apply_retention(&self, now_ms: i64) -> usize {
        let metadata = Arc::clone(&self.metadata.borrow());
        let mut deleted = 0;
        for topic in metadata.topics.values() {
            for partition in 0..topic.replicas.len() as u32 {
                let Some(raft) = self.groups.get(GroupId { topic_id: topic.id, partition }) else { continue };
                let Ok(log) = self.logs.partition(&topic.name, partition) else { continue };
                match strata_raft::retention::apply(&raft, &log, now_ms).await {
                    Ok(n) => deleted += n,
                    Err(e) => warn!(topic = %topic.name, partition, error = %e, "retention pass failed"),
                }
            }
        }
        deleted
    }

    /// The last entry applied on this node's replica of a partition (`None`:
    /// no replica here).
    pub fn applied_index(&self, topic: &str, partition: u32) -> Option<u64> {
        let topic_id = self.metadata.borrow().topics.get(topic)?.id;
        let raft = self.groups.get(GroupId { topic_id, partition })?;
        let applied = raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
        Some(applied)
    }

    /// This node's view of a partition's Raft group (`None`: it holds no
    /// replica of it).
    pub fn leadership(&self, topic: &str, partition: u32) -> Option<Leadership> {
        let (topic_id, replicas) = {
            let metadata = self.metadata.borrow();
            let t = metadata.topics.get(topic)?;
            (t.id, t.replicas.get(partition as usize).cloned().unwrap_or_default())
        };
        let Some(raft) = self.groups.get(GroupId { topic_id, partition }) else {
            return Some(Leadership {
                topic_id,
                leading: false,
                term: 0,
                last_log_index: 0,
                leader: None,
                replicas,
                here: false,
            });
        };
        let m = raft.metrics().borrow_watched().clone();
        Some(Leadership {
            topic_id,
            leading: m.state == ServerState::Leader && m.current_leader == Some(self.node_id()),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            leader: self.known_leader(GroupId { topic_id, partition }, &m),
            replicas,
            here: true,
        })
    }

    /// Waits until this node's replica of a partition applied `index`.
    pub async fn wait_applied(
        &self,
        topic_id: u64,
        partition: u32,
        index: u64,
        timeout: Duration,
    ) -> Result<(), Status> {
        let group = GroupId { topic_id, partition };
        let raft = self.groups.get(group).ok_or_else(|| self.not_leader(group, None, "this node holds no replica"))?;
        raft.wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(format!("{group} did not apply entry {index} in {timeout:?}: {e}")))
    }

    /// Confirms, with a round of heartbeats answered by a majority, that
    /// this node still leads a partition in `term` (a read index): state it
    /// built from its own commits in that term is then no staler than the
    /// cluster's (a node cut off from the others may not know it was
    /// replaced). `NOT_LEADER` when it does not.
    pub async fn confirm_leading(
        &self,
        topic_id: u64,
        partition: u32,
        term: u64,
        timeout: Duration,
    ) -> Result<(), Status> {
        let group = GroupId { topic_id, partition };
        let raft = self.groups.get(group).ok_or_else(|| self.not_leader(group, None, "this node holds no replica"))?;
        let confirmed = tokio::time::timeout(timeout, raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)).await;
        let leader = || raft.metrics().borrow_watched().current_leader;
        match confirmed {
            Err(_) => Err(self.not_leader(group, leader(), &format!("no majority confirmed its lead in {timeout:?}"))),
            Ok(Err(e)) => Err(self.not_leader(group, leader(), &format!("its lead was not confirmed: {e}"))),
            Ok(Ok(_)) => {
                let m = raft.metrics().borrow_watched().clone();
                if m.state == ServerState::Leader && m.current_term == term {
                    Ok(())
                } else {
                    Err(self.not_leader(group, m.current_leader, &format!("the term moved on from {term}")))
                }
            }
        }
    }

    /// The address clients reach a node at (`None`: a node that has not
    /// registered yet).
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.directory.client_address(id)
    }

    /// The address clients reach this node at.
    pub fn advertised(&self) -> String {
        self.directory.advertised.to_string()
    }

    /// `NOT_LEADER` for a partition, naming its leader when known.
    pub fn not_leader_status(&self, topic_id: u64, partition: u32, leader: Option<NodeId>, why: &str) -> Status {
        self.not_leader(GroupId { topic_id, partition }, leader, why)
    }

    /// Every registered node and the address clients reach it at (this
    /// node's own address even before it registered).
    pub fn brokers(&self) -> Vec<(NodeId, String)> {
        let metadata = self.metadata.borrow();
        let mut out: BTreeMap<NodeId, String> =
            metadata.nodes.iter().map(|(id, node)| (*id, node.addr.clone())).collect();
        out.insert(self.node_id(), self.advertised());
        out.into_iter().collect()
    }

    /// Whether `node` answers this node's liveness calls.
    fn peer_live(&self, node: NodeId) -> bool {
        self.peers.identity().liveness.view(node).live
    }

    /// A partition group's leader as far as this node can tell: itself when
    /// it leads, otherwise the leader this replica trusts
    /// ([`strata_raft::quiesce::trusts`]: its node is live and this replica
    /// heard an append from its current run in this term), else none. A
    /// quiescent follower keeps naming the leader whose vote it holds after
    /// that leader's node died or restarted, and with no quorum left to
    /// elect another it would name it forever.
    fn known_leader(&self, group: GroupId, m: &openraft::RaftMetrics<TypeConfig>) -> Option<NodeId> {
        let me = self.node_id();
        let leader = m.current_leader?;
        if group == GroupId::CONTROLLER || (leader == me && m.state == ServerState::Leader) {
            return Some(leader);
        }
        let heard = self.groups.heard(group).map(|h| h.get()).unwrap_or_default();
        strata_raft::quiesce::trusts(&self.peers.identity().liveness, heard, m.current_term, leader).then_some(leader)
    }

    /// Replicas, the leader (as this node knows it; 0 when not) and, when
    /// this node leads it, the replicas in sync of a partition.
    pub fn placement(&self, topic: &str, partition: u32) -> (Vec<NodeId>, NodeId, Vec<NodeId>) {
        let metadata = self.metadata.borrow();
        let Some(t) = metadata.topics.get(topic) else { return (Vec::new(), 0, Vec::new()) };
        let replicas = t.replicas.get(partition as usize).cloned().unwrap_or_default();
        let group = GroupId { topic_id: t.id, partition };
        let Some(raft) = self.groups.get(group) else { return (replicas, 0, Vec::new()) };
        let watch = raft.metrics();
        let m = watch.borrow_watched();
        (replicas, self.known_leader(group, &m).unwrap_or(0), in_sync(&m, self.node_id(), |n| self.peer_live(n)))
    }

    /// Proposes a validated batch to its partition's group; the proposal
    /// resolves once the batch is committed and applied.
    pub async fn propose(
        &self,
        topic_id: u64,
        partition: u32,
        batch: bytes::Bytes,
        acks: pb::Acks,
        trace: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<Pending, Status> {
        let group = GroupId { topic_id, partition };
        let Some(raft) = self.groups.get(group) else {
            let replicas = self
                .metadata
                .borrow()
                .topics
                .values()
                .find(|t| t.id == topic_id)
                .and_then(|t| t.replicas.get(partition as usize).cloned())
                .unwrap_or_default();
            return Err(self.not_leader(group, None, &format!("this node holds no replica (replicas: {replicas:?})")));
        };
        let (responder, rx) = ProgressResponder::complete_only();
        let mut request = Request::new(batch);
        request.trace = trace.map(strata_raft::trace::EntryTrace);
        let local = match acks {
            pb::Acks::Leader => {
                let (notice, local) = LocalFlush::new();
                request.on_local_flush = Some(notice);
                Some(local)
            }
            pb::Acks::Quorum | pb::Acks::Unspecified => None,
        };
        strata_raft::quiesce::renew_lease(&raft).await;
        raft.client_write_ff(request, Some(responder)).await.map_err(|e| shutting_down(&e))?;
        Ok(Pending { group, rx, local, directory: self.directory.clone() })
    }

    fn not_leader(&self, group: GroupId, leader: Option<NodeId>, why: &str) -> Status {
        not_leader(&self.directory, group, leader, why)
    }

    /// The state of every Raft group on this node, as its metrics say now
    /// (what the metrics scrape reads; no message is sent).
    pub fn sample_groups(&self) -> Vec<GroupSample> {
        let me = self.node_id();
        let mut out = Vec::new();
        // Not under the group table's lock: `known_leader` reads it too.
        for (group, raft, _) in self.groups.all_heard() {
            let watch = raft.metrics();
            let m = watch.borrow_watched();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(me);
            let last_log_index = m.last_log_index.unwrap_or(0);
            let (followers, in_sync) = if leading {
                let followers = m
                    .replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| **id != me)
                    .map(|(id, matched)| (*id, matched.map_or(0, |l| l.index)))
                    .collect();
                (followers, in_sync(&m, me, |n| self.peer_live(n)).len())
            } else {
                (Vec::new(), 0)
            };
            let voters = m.membership_config.membership().voter_ids().count();
            out.push(GroupSample {
                group,
                term: m.current_term,
                leader: self.known_leader(group, &m),
                leading,
                voters,
                in_sync,
                last_log_index,
                followers,
            });
        }
        out
    }

    /// Snapshot transfers this node completed.
    pub fn transfers(&self) -> &strata_raft::network::Transfers {
        &self.peers.identity().transfers
    }

    /// The members this node was configured with.
    pub fn members(&self) -> Vec<NodeId> {
        self.cluster.members()
    }

    /// Members the controller's leader heard from within `within` (this
    /// node included); `None` when this node does not lead the controller.
    pub fn live_members(&self, within: Duration) -> Option<Vec<NodeId>> {
        use openraft::Instant as _;
        let m = self.controller.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return None;
        }
        let mut live = vec![self.node_id()];
        if let Some(acked) = &m.heartbeat {
            for (id, at) in acked {
                if *id != self.node_id() && at.as_ref().is_some_and(|t| t.elapsed() <= within) {
                    live.push(*id);
                }
            }
        }
        live.sort_unstable();
        Some(live)
    }

    /// The controller's current term.
    pub fn controller_term(&self) -> u64 {
        self.controller.metrics().borrow_watched().current_term
    }
}

/// One Raft group on this node, as the metrics scrape sees it.
#[derive(Debug, Clone)]
pub struct GroupSample {
    pub group: GroupId,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// This node leads it.
    pub leading: bool,
    /// Voters of the group.
    pub voters: usize,
    /// Replicas in sync, this one included (0 when not leading).
    pub in_sync: usize,
    pub last_log_index: u64,
    /// When leading: each follower and the last entry it holds.
    pub followers: Vec<(NodeId, u64)>,
}

/// This node's limits on a controller command's topic (name, partition
/// count, settings and their floors), as the public API checks them: what a
/// forwarded command must pass too.
fn check_topic_limits(logs: &LogManager, command: &Command) -> Result<(), String> {
    let checked = match command {
        Command::CreateTopic { name, replicas, overrides } => {
            logs.validate_new_topic(name, replicas.len() as u32, overrides)
        }
        Command::AlterTopic { name, overrides } => match logs.topic_overrides(name) {
            Ok(current) => logs.validate_new_topic(name, 1, &current.merge(overrides)),
            // Not known here yet: its settings alone.
            Err(_) => logs.validate_new_topic(name, 1, overrides),
        },
        _ => Ok(()),
    };
    checked.map_err(|e| e.client_message())
}

/// A node's view of one partition's Raft group.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub topic_id: u64,
    /// This node leads the group.
    pub leading: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub leader: Option<NodeId>,
    /// Replicas of the partition, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// This node holds a replica.
    pub here: bool,
}

/// A follower that has not acknowledged the leader for this long is out of
/// sync (Kafka's `replica.lag.time.max.ms` is 30 s; Raft heartbeats come
/// every 100 ms here).
const IN_SYNC_LAG_TIME: Duration = Duration::from_secs(10);
/// ... or that is more entries than this behind the leader's commit point.
const IN_SYNC_LAG_ENTRIES: u64 = 1000;

/// The replicas in sync with this node, if it leads (see the proto's
/// `PartitionDescription.in_sync`). A quiescent leader hears nothing from
/// its followers while the partition is idle: a follower that holds its
/// last entry and whose node is `live` (node liveness) is in sync too.
fn in_sync(metrics: &openraft::RaftMetrics<TypeConfig>, me: NodeId, live: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    use openraft::Instant as _;
    if metrics.state != ServerState::Leader {
        return Vec::new();
    }
    let committed = metrics.cluster_committed.as_ref().map_or(0, |c| c.index);
    let last = metrics.last_log_index;
    let mut out = vec![me];
    if let (Some(matched), Some(acked)) = (&metrics.replication, &metrics.heartbeat) {
        for (id, m) in matched {
            let recent = acked.get(id).and_then(Option::as_ref).is_some_and(|t| t.elapsed() <= IN_SYNC_LAG_TIME);
            let close = m.map_or(0, |l| l.index).saturating_add(IN_SYNC_LAG_ENTRIES) >= committed;
            let holds_all = m.map(|l| l.index) == last;
            if *id != me && close && (recent || (holds_all && live(*id))) {
                out.push(*id);
            }
        }
    }
    out.sort_unstable();
    out
}

/// `NOT_LEADER`, naming the leader (id and address in the error's metadata
/// as `leader_id` and `leader_addr`) when it is known.
fn not_leader(directory: &Directory, group: GroupId, leader: Option<NodeId>, why: &str) -> Status {
    let mut meta = BTreeMap::new();
    let named = match leader {
        Some(id) => {
            meta.insert("leader_id".to_owned(), id.to_string());
            match directory.client_address(id) {
                Some(addr) => {
                    meta.insert("leader_addr".to_owned(), addr.clone());
                    format!("node {id} at {addr}")
                }
                None => format!("node {id}"),
            }
        }
        None => "not known here".to_owned(),
    };
    status_with(
        tonic::Code::Unavailable,
        pb::ErrorReason::NotLeader,
        format!("this node does not lead {group} ({why}); the leader is {named}"),
        meta,
    )
}

fn shutting_down(e: &impl std::fmt::Display) -> Status {
    status(tonic::Code::Unavailable, pb::ErrorReason::ShuttingDown, format!("the partition's Raft group stopped: {e}"))
}

/// Groups stopped at once when the node shuts down.
const SHUTDOWN_AT_ONCE: usize = 64;

/// A proposal on its way through Raft (awaited apart from proposing, so a
/// pipelined producer proposes in order without waiting).
#[derive(Debug)]
pub struct Pending {
    group: GroupId,
    rx: tokio::sync::oneshot::Receiver<ClientWriteResult<TypeConfig>>,
    /// `acks=leader`: the leader's own flush of the entry.
    local: Option<tokio::sync::oneshot::Receiver<LocalFlushResult>>,
    directory: Directory,
}

fn reason(f: &ForwardToLeader<TypeConfig>) -> &'static str {
    match f.reason {
        openraft::error::ForwardReason::NotLeader => "not the leader",
        openraft::error::ForwardReason::LeadershipTransfer => "handing leadership over",
        openraft::error::ForwardReason::LeaseExpired => "a new leader not yet confirmed by a quorum",
    }
}

impl Pending {
    /// Where the batch landed, once committed and applied (`acks=quorum`),
    /// or once fsync'd in the leader's log (`acks=leader`; whichever of
    /// that and a refusal comes first).
    pub async fn wait(self) -> Result<AppendInfo, Status> {
        let Self { group, mut rx, local, directory } = self;
        let result = match local {
            None => rx.await,
            Some(local) => tokio::select! {
                biased;
                done = &mut rx => done,
                flushed = local => match flushed {
                    Ok(Ok(info)) => {
                        // Answered now; the commit's answer comes later and
                        // is taken (openraft warns about a dropped receiver).
                        tokio::spawn(async move {
                            let _ = rx.await;
                        });
                        return Ok(info);
                    }
                    Ok(Err(why)) => {
                        return Err(status(
                            tonic::Code::Internal,
                            pb::ErrorReason::StorageError,
                            format!("{group} could not write the batch: {why}"),
                        ));
                    }
                    // Dropped unfired: the entry never reached the log;
                    // the proposal's own answer says why.
                    Err(_) => rx.await,
                },
            },
        };
        Pending::answer(group, &directory, result.map_err(|e| shutting_down(&e))?)
    }

    fn answer(
        group: GroupId,
        directory: &Directory,
        result: ClientWriteResult<TypeConfig>,
    ) -> Result<AppendInfo, Status> {
        match result {
            Ok(resp) => Ok(AppendInfo { base_offset: resp.data.base_offset, record_count: resp.data.record_count }),
            Err(ClientWriteError::ForwardToLeader(f)) => Err(not_leader(directory, group, f.leader_id, reason(&f))),
            Err(ClientWriteError::LogEntryDiscarded(f)) => {
                let leader = not_leader(directory, group, f.leader_id, "leadership changed");
                Err(status(
                    tonic::Code::Unavailable,
                    pb::ErrorReason::OutcomeUnknown,
                    format!(
                        "{group} changed leader while the batch was in flight: it may or may not be committed; {}",
                        leader.message()
                    ),
                ))
            }
            Err(e) => Err(status(
                tonic::Code::Internal,
                pb::ErrorReason::StorageError,
                format!("{group} could not commit the batch: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_raft::types::LogId;

    /// A leader (node 1) at entry 9 whose followers acknowledged nothing
    /// lately (a quiescent leader sends nothing): node 2 holds entry 9,
    /// node 3 entry 7.
    fn quiescent_leader() -> openraft::RaftMetrics<TypeConfig> {
        let mut m = openraft::RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.last_log_index = Some(9);
        m.cluster_committed = Some(LogId::new_term_index(2, 9));
        m.replication = Some(
            [
                (1, Some(LogId::new_term_index(2, 9))),
                (2, Some(LogId::new_term_index(2, 9))),
                (3, Some(LogId::new_term_index(2, 7))),
            ]
            .into(),
        );
        m.heartbeat = Some([(2, None), (3, None)].into());
        m
    }

    #[test]
    fn an_idle_follower_that_holds_every_entry_on_a_live_node_is_in_sync() {
        let m = quiescent_leader();
        assert_eq!(in_sync(&m, 1, |_| true), [1, 2], "node 3 lacks entries 8 and 9");
        assert_eq!(in_sync(&m, 1, |n| n != 2), [1], "node 2's node is down");
        let mut follower = m.clone();
        follower.state = ServerState::Follower;
        assert!(in_sync(&follower, 1, |_| true).is_empty(), "only a leader knows");
    }
}
