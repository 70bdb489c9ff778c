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
//!
//! Here: starting, joining and following the cluster, reconciling, handing
//! over and shutting down. `admin`: controller commands (topics, security,
//! retention). `leadership`: who leads what and which replicas are in sync,
//! as this node sees it. `propose`: a produce's proposal and its wait.

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

mod admin;
mod leadership;
mod propose;

use admin::check_topic_limits;
pub use leadership::Leadership;
pub use propose::Pending;

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
}

/// Groups stopped at once when the node shuts down.
const SHUTDOWN_AT_ONCE: usize = 64;
