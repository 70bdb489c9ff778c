//! Group coordination: consumer groups (membership, assignment, committed
//! offsets) and share groups (queues with per-record acknowledgement).
//!
//! Every group lives in one partition of the internal topic
//! `__strata_groups` (chosen by the hash of its name, as Kafka places groups
//! in `__consumer_offsets`); the leader of that partition is the group's
//! coordinator. Each change of a group (a member joining, an assignment
//! moving, an offset commit, a share-group acknowledgement) is a record in
//! that partition, proposed through its Raft group and applied to the
//! coordinator's memory only once committed (fsync'd on a majority). A new
//! coordinator (after a failover) rebuilds its groups by reading the
//! partition from the start. See docs/ARCHITECTURE.md, "Consumer groups".

pub mod assignor;
pub mod consumer;
pub mod limits;
mod load;
pub mod queue;
pub mod service;
pub mod share;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_client::{topic_partitions_from_proto, topic_partitions_to_proto};
use strata_proto::v1 as pb;
use strata_record::{BatchBuilder, Compression};
use strata_storage::{LogManager, StorageError, TopicOverrides};
use tokio::sync::{Mutex, MutexGuard, OnceCell, watch};
use tonic::{Code, Status};
use tracing::{info, warn};

use self::assignor::{Strategy, Tp};
use self::consumer::{ConsumerGroup, GroupError, JoinSpec};
use self::share::{ShareConfig, SharePartition};
use crate::replication::{Leadership, Replication};
use crate::status::{from_storage, invalid, status};

/// The internal topic holding every group's state.
pub const GROUPS_TOPIC: &str = "__strata_groups";
/// Topics whose names start with this are the cluster's own.
pub const RESERVED_PREFIX: &str = "__strata";
/// Partitions of the groups topic (a group never moves between them).
pub const GROUPS_PARTITIONS: u32 = 8;
/// Session timeout of a member that asks for none, and its bounds.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;
pub const MIN_SESSION_TIMEOUT_MS: u32 = 1_000;
pub const MAX_SESSION_TIMEOUT_MS: u32 = 300_000;
/// How long a new coordinator waits to have applied its partition.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often sessions are checked for expiry and topics for new partitions.
pub const TICK: Duration = Duration::from_millis(200);
/// How long a read waits for a majority to confirm the coordinator.
const READ_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// The heartbeat interval a member with this session timeout is told.
pub fn heartbeat_interval_ms(session_timeout_ms: u32) -> u32 {
    (session_timeout_ms / 5).clamp(100, 3_000)
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
    pub timestamp_ms: i64,
}

/// One change of one group: the value of a record in the groups topic
/// (JSON; the record's key is the group's name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A consumer group's membership and assignment, in full.
    Consumer { state: ConsumerGroup },
    /// Offsets committed by a consumer group.
    Offsets { offsets: Vec<(String, u32, u64, String)>, timestamp_ms: i64 },
    /// A share group's settings for a topic (written when first used).
    ShareConfig { topic: String, config: ShareConfig },
    /// A share-group partition's state after a change, in full.
    SharePartition { topic: String, partition: u32, state: SharePartition },
}

/// The share groups of one group name: per topic, the settings and the
/// partitions' delivery state.
#[derive(Debug, Clone, Default)]
pub struct ShareGroup {
    pub topics: BTreeMap<String, (ShareConfig, BTreeMap<u32, SharePartition>)>,
    /// Consumers seen recently (consumer id -> last fetch or ack).
    pub consumers: BTreeMap<String, Instant>,
    /// Records acquired now: (topic, partition, offset) -> (consumer, lock
    /// deadline). In memory only.
    pub locks: BTreeMap<(String, u32, u64), (String, Instant)>,
    /// Records rejected whose dead-letter write failed: the timer writes
    /// them again (in memory only; after a reload they are redelivered).
    pub rejected: BTreeSet<(String, u32, u64)>,
    /// Per topic: redeliveries and dead letters since this coordinator
    /// loaded the group (in memory only; for the metrics).
    pub stats: BTreeMap<String, ShareStats>,
}

/// What a share group did with a topic's records (see [`ShareGroup::stats`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShareStats {
    pub redeliveries: u64,
    pub dead_letters: u64,
}

/// A member's live session on this coordinator.
struct Session {
    token: u64,
    tx: watch::Sender<pb::GroupSessionResponse>,
}

/// What the coordinator of one partition of the groups topic holds.
#[derive(Default)]
pub struct ShardState {
    /// The Raft term in which this state was loaded; `None`: not loaded (or
    /// not trusted any more, after a failed write).
    term: Option<u64>,
    pub consumer: BTreeMap<String, ConsumerGroup>,
    pub offsets: BTreeMap<String, BTreeMap<Tp, Committed>>,
    pub share: BTreeMap<String, ShareGroup>,
    sessions: HashMap<(String, String), Session>,
    /// When each consumer-group member was last heard from.
    last_seen: HashMap<(String, String), Instant>,
}

/// Where a group's requests go.
#[derive(Debug)]
pub enum Route {
    /// This node coordinates it.
    Local,
    /// Forward to this node (the coordinator, or a replica that knows it).
    Remote(strata_raft::NodeId),
}

/// A group this node coordinates, as the metrics scrape sees it.
#[derive(Debug, Clone)]
pub struct GroupSample {
    pub group: String,
    /// A share group (else a consumer group).
    pub share: bool,
    pub members: usize,
    /// The consumer group's epoch: it grows with every rebalance.
    pub epoch: u64,
    /// Committed offsets: (topic, partition, offset).
    pub committed: Vec<(String, u32, u64)>,
    /// Topics the consumer group's members subscribe to, and those it
    /// committed offsets of.
    pub subscribed: Vec<String>,
    /// Share groups, per topic: records acquired now, and what the group
    /// did with its records.
    pub share_topics: Vec<(String, usize, ShareStats)>,
}

/// A live session, as the service holds it.
pub struct SessionHandle {
    pub group: String,
    pub member_id: String,
    token: u64,
    pub rx: watch::Receiver<pb::GroupSessionResponse>,
}

/// The group coordinator of a node (for the groups partitions it leads).
pub struct Coordinator {
    logs: Arc<LogManager>,
    replication: Arc<Replication>,
    /// How this node's own client reaches the cluster.
    dialer: Arc<crate::internal::NodeDialer>,
    shards: Vec<Mutex<ShardState>>,
    client: OnceCell<strata_client::Client>,
    tokens: AtomicU64,
    /// Woken whenever share-group records become available again.
    share_changed: tokio::sync::Notify,
    /// When each member's last heartbeat arrived, noted before it waits for
    /// its shard's lock (a long operation holding the lock must not make a
    /// live member look expired).
    heard: std::sync::Mutex<HashMap<(String, String), Instant>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

/// Maps a group error to its status.
pub fn group_status(e: GroupError) -> Status {
    let (code, reason) = match &e {
        GroupError::UnknownMember { .. } => (Code::NotFound, pb::ErrorReason::UnknownMember),
        GroupError::Fenced { .. } => (Code::FailedPrecondition, pb::ErrorReason::FencedMember),
        GroupError::NotEmpty { .. } => (Code::FailedPrecondition, pb::ErrorReason::GroupNotEmpty),
        GroupError::AssignorMismatch { .. } => (Code::InvalidArgument, pb::ErrorReason::InvalidRequest),
    };
    status(code, reason, e.to_string())
}

pub fn not_coordinator(group: &str, why: &str) -> Status {
    status(
        Code::Unavailable,
        pb::ErrorReason::NotCoordinator,
        format!("this node does not coordinate group '{group}' ({why}); retry"),
    )
}

fn unknown_group(group: &str, kind: &str) -> Status {
    status(Code::NotFound, pb::ErrorReason::UnknownGroup, format!("no {kind} group '{group}'"))
}

/// The groups-topic partition of a group.
pub fn shard_of(group: &str) -> u32 {
    strata_record::partition_for_key(group.as_bytes(), GROUPS_PARTITIONS)
}

fn validate_group_name(group: &str) -> Result<(), Status> {
    if group.is_empty() || group.len() > 249 {
        return Err(invalid("a group name must have 1 to 249 characters"));
    }
    if group.chars().any(char::is_control) {
        return Err(invalid("a group name must not contain control characters"));
    }
    Ok(())
}

impl Coordinator {
    /// `local`: an in-process channel to this node's services (its own
    /// client reaches this node through it, and its peers over their
    /// cluster listeners: see `internal.rs`).
    pub fn new(logs: Arc<LogManager>, replication: Arc<Replication>, local: tonic::transport::Channel) -> Arc<Self> {
        let shards = (0..GROUPS_PARTITIONS).map(|_| Mutex::new(ShardState::default())).collect();
        let dialer = Arc::new(crate::internal::NodeDialer::new(Arc::clone(&replication), local));
        Arc::new(Self {
            logs,
            replication,
            dialer,
            shards,
            client: OnceCell::new(),
            tokens: AtomicU64::new(1),
            share_changed: tokio::sync::Notify::new(),
            heard: std::sync::Mutex::default(),
        })
    }

    pub(crate) fn replication(&self) -> &Arc<Replication> {
        &self.replication
    }

    /// A client of the cluster (through this node), for reading other
    /// partitions' offsets and records and writing dead letters.
    pub async fn client(&self) -> Result<&strata_client::Client, Status> {
        self.client
            .get_or_try_init(|| async {
                let options = strata_client::ConnectOptions { dialer: Some(self.dialer.clone()), ..Default::default() };
                strata_client::Client::connect_with(&self.replication.advertised(), options)
                    .await
                    .map(|c| c.with_timeout(Duration::from_secs(10)))
            })
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the cluster from the coordinator: {e}")))
    }

    /// Creates the groups topic when it does not exist yet.
    async fn ensure_topic(&self) -> Result<(), Status> {
        if self.logs.partition_count(GROUPS_TOPIC).is_ok() {
            return Ok(());
        }
        let overrides =
            TopicOverrides { retention_ms: Some(-1), retention_bytes: Some(-1), ..TopicOverrides::default() };
        match self.replication.create_topic(GROUPS_TOPIC, GROUPS_PARTITIONS, None, overrides).await {
            Ok(()) => {
                info!(topic = GROUPS_TOPIC, "created the groups topic");
                Ok(())
            }
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => {
                Err(Status::new(s.code(), format!("cannot create the groups topic {GROUPS_TOPIC}: {}", s.message())))
            }
        }
    }

    /// Where requests for `group` go.
    pub async fn route(&self, group: &str) -> Result<Route, Status> {
        validate_group_name(group)?;
        self.ensure_topic().await?;
        let p = shard_of(group);
        let me = self.replication.node_id();
        let view = self
            .replication
            .leadership(GROUPS_TOPIC, p)
            .ok_or_else(|| not_coordinator(group, "the groups topic is not known here yet"))?;
        if view.leading {
            return Ok(Route::Local);
        }
        let next = match view.leader {
            Some(l) if l != me => Some(l),
            // No leader known here: a replica knows it (the preferred
            // leader usually is it).
            _ => view.replicas.iter().copied().find(|r| *r != me),
        };
        let node = next.ok_or_else(|| not_coordinator(group, "no leader of its partition is known yet"))?;
        Ok(Route::Remote(node))
    }

    /// Locks the shard of `group`, (re)loading it if this node became its
    /// leader since it was loaded.
    pub async fn lock(&self, group: &str) -> Result<(u32, Leadership, MutexGuard<'_, ShardState>), Status> {
        validate_group_name(group)?;
        let p = shard_of(group);
        let mut st = self.shards[p as usize].lock().await;
        // Read under the lock: the leadership seen while waiting for it may
        // have been lost (and won again, in a later term) meanwhile.
        let view = self.leading(group, p)?;
        if st.term != Some(view.term) {
            self.load(p, &view, &mut st).await?;
        }
        Ok((p, view, st))
    }

    /// As [`Self::lock`], for a read: a majority confirms first that this
    /// node still coordinates the group (a coordinator cut off from the
    /// others may have been replaced, and would answer with offsets older
    /// than those committed since).
    async fn lock_for_read(&self, group: &str) -> Result<(u32, Leadership, MutexGuard<'_, ShardState>), Status> {
        validate_group_name(group)?;
        let p = shard_of(group);
        // Confirmed before the lock is taken (a majority round must not
        // hold up the shard's heartbeats and commits); the state read under
        // the lock must then be of the term confirmed: a commit in a later
        // term would have made the confirmation fail.
        let confirmed = self.leading(group, p)?;
        self.replication
            .confirm_leading(confirmed.topic_id, p, confirmed.term, READ_CONFIRM_TIMEOUT)
            .await
            .map_err(|e| not_coordinator(group, e.message()))?;
        let (p, view, st) = self.lock(group).await?;
        if view.term != confirmed.term {
            return Err(not_coordinator(group, &format!("its lead moved on from term {}", confirmed.term)));
        }
        Ok((p, view, st))
    }

    /// This node's view of the group's partition, if it leads it.
    fn leading(&self, group: &str, p: u32) -> Result<Leadership, Status> {
        self.replication
            .leadership(GROUPS_TOPIC, p)
            .filter(|v| v.leading)
            .ok_or_else(|| not_coordinator(group, "it does not lead the group's partition"))
    }

    /// Rebuilds a shard from its partition of the groups topic.
    async fn load(&self, p: u32, view: &Leadership, st: &mut ShardState) -> Result<(), Status> {
        let started = Instant::now();
        // Everything up to the new term's first entry applied: all that was
        // committed before this node led is readable here.
        self.replication.wait_applied(view.topic_id, p, view.last_log_index, LOAD_TIMEOUT).await?;
        let log = self.logs.partition(GROUPS_TOPIC, p).map_err(from_storage)?;
        let (mut fresh, records) = load::read_shard(&log, p, view.last_log_index, LOAD_TIMEOUT).await?;
        let now = Instant::now();
        for (name, g) in &fresh.consumer {
            for id in g.members.keys() {
                fresh.last_seen.insert((name.clone(), id.clone()), now);
            }
        }
        // Which consumer holds a share-group record is not persisted: every
        // record not done may still be in a consumer's hands, so it is held
        // (by nobody) for a whole lock timeout before it is delivered again.
        for g in fresh.share.values_mut() {
            for (topic, (config, parts)) in &g.topics {
                let until = now + Duration::from_millis(u64::from(config.lock_timeout_ms));
                for (partition, state) in parts {
                    for offset in state.pending.keys() {
                        g.locks.insert((topic.clone(), *partition, *offset), (String::new(), until));
                    }
                }
            }
        }
        fresh.term = Some(view.term);
        *st = fresh;
        self.forget_heard_shard(p);
        info!(partition = p, term = view.term, records, groups = st.consumer.len() + st.share.len(), elapsed = ?started.elapsed(), "coordinating the groups of a partition");
        Ok(())
    }

    /// Appends group changes to the shard's partition and waits until they
    /// are committed. A failure leaves the shard untrusted (reloaded on next
    /// use): the change may or may not have been committed.
    async fn write(
        &self,
        p: u32,
        view: &Leadership,
        st: &mut ShardState,
        group: &str,
        entries: &[Entry],
    ) -> Result<(), Status> {
        let mut builder = BatchBuilder::new(Compression::None);
        let now = strata_storage::now_ms();
        for entry in entries {
            let value = serde_json::to_vec(entry)
                .map_err(|e| Status::internal(format!("cannot encode a group record: {e}")))?;
            builder.push_parts(now, Some(group.as_bytes()), &value, &[]);
        }
        // The state written was built in `view`'s term: a node that lost the
        // lead meanwhile (and may hold it again) must not write it over what
        // another coordinator wrote since.
        let now = self.replication.leadership(GROUPS_TOPIC, p);
        if !now.as_ref().is_some_and(|v| v.leading && v.term == view.term) {
            Self::untrust(st);
            return Err(not_coordinator(group, &format!("the lead of its partition changed since term {}", view.term)));
        }
        // Untrusted while the write is in flight: if this call is cancelled
        // (the client went away), the change may commit without being
        // applied here, so the shard is reloaded on its next use.
        let term = st.term.take();
        let result = async {
            let pending = self.replication.propose(view.topic_id, p, builder.build(), pb::Acks::Quorum, None).await?;
            pending.wait().await
        }
        .await;
        if let Err(e) = result {
            Self::untrust(st);
            let not_leader = tonic_types::StatusExt::get_details_error_info(&e)
                .is_some_and(|i| i.reason == pb::ErrorReason::NotLeader.as_str_name());
            if not_leader {
                // Refused before anything was written.
                return Err(not_coordinator(group, e.message()));
            }
            warn!(group, error = %e.message(), "a group change may not have been committed; the coordinator state will be reloaded");
            return Err(status(
                Code::Unavailable,
                pb::ErrorReason::OutcomeUnknown,
                format!(
                    "group '{group}': the change may or may not have been committed ({}); check, then retry",
                    e.message()
                ),
            ));
        }
        st.term = term;
        for entry in entries {
            st.apply(group, entry.clone());
        }
        Ok(())
    }

    /// Forgets the heartbeats of every group of a shard (its sessions ended).
    fn forget_heard_shard(&self, p: u32) {
        if let Ok(mut heard) = self.heard.lock() {
            heard.retain(|(group, _), _| shard_of(group) != p);
        }
    }

    fn forget_heard(&self, group: &str, member: &str) {
        if let Ok(mut heard) = self.heard.lock() {
            heard.remove(&(group.to_owned(), member.to_owned()));
        }
    }

    /// The shard is reloaded from its partition on next use; its sessions
    /// end (their members rejoin).
    fn untrust(st: &mut ShardState) {
        st.term = None;
        st.sessions.clear();
    }

    /// The partition counts of `topics` as this node knows them (topics
    /// that do not exist are left out).
    fn partition_counts(&self, topics: &BTreeSet<String>) -> BTreeMap<String, u32> {
        topics.iter().filter_map(|t| self.logs.partition_count(t).ok().map(|n| (t.clone(), n))).collect()
    }

    // ---- consumer groups ----------------------------------------------

    /// A member joins (or rejoins) and gets a session.
    pub async fn join(&self, join: pb::GroupJoin) -> Result<SessionHandle, Status> {
        if join.topics.is_empty() {
            return Err(invalid("a member must subscribe to at least one topic"));
        }
        let topics: BTreeSet<String> = join.topics.iter().cloned().collect();
        for t in &topics {
            if t.starts_with(RESERVED_PREFIX) {
                return Err(reserved(t));
            }
            self.logs.partition_count(t).map_err(from_storage)?;
        }
        let session_timeout_ms = match join.session_timeout_ms {
            0 => DEFAULT_SESSION_TIMEOUT_MS,
            n if (MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&n) => n,
            n => {
                return Err(invalid(format!(
                    "session_timeout_ms {n} is outside [{MIN_SESSION_TIMEOUT_MS}, {MAX_SESSION_TIMEOUT_MS}]"
                )));
            }
        };
        let strategy = strategy_from_proto(join.assignor)?;
        let (p, view, mut st) = self.lock(&join.group).await?;
        if st.share.contains_key(&join.group) {
            return Err(invalid(format!("'{}' is a share group; a consumer group needs another name", join.group)));
        }
        let mut g = st.consumer.get(&join.group).cloned().unwrap_or_else(|| ConsumerGroup::new(&join.group));
        let id = if join.member_id.is_empty() {
            crate::cluster::random_id()
        } else if g.members.contains_key(&join.member_id) {
            join.member_id.clone()
        } else {
            return Err(group_status(GroupError::UnknownMember { group: join.group.clone(), member: join.member_id }));
        };
        let spec = JoinSpec { client_id: join.client_id.clone(), topics, strategy, session_timeout_ms };
        let mut subscribed = g.subscribed();
        subscribed.extend(spec.topics.iter().cloned());
        g.join(&id, spec, self.partition_counts(&subscribed)).map_err(group_status)?;
        let owned = topic_partitions_from_proto(&join.owned);
        g.heartbeat(&id, &owned).map_err(group_status)?;
        let changed = st.consumer.get(&join.group) != Some(&g);
        if changed {
            self.write(p, &view, &mut st, &join.group, &[Entry::Consumer { state: g }]).await?;
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let initial = st.response(&join.group, &id);
        let (tx, rx) = watch::channel(initial);
        st.sessions.insert((join.group.clone(), id.clone()), Session { token, tx });
        st.last_seen.insert((join.group.clone(), id.clone()), Instant::now());
        st.push(&join.group);
        info!(group = %join.group, member = %id, "member joined");
        Ok(SessionHandle { group: join.group, member_id: id, token, rx })
    }

    /// A heartbeat: what the member holds now.
    pub async fn heartbeat(&self, h: &SessionHandle, owned: &[pb::TopicPartitions]) -> Result<(), Status> {
        if let Ok(mut heard) = self.heard.lock() {
            heard.insert((h.group.clone(), h.member_id.clone()), Instant::now());
        }
        let (p, view, mut st) = self.lock(&h.group).await?;
        st.check_session(h)?;
        let mut g = st.consumer.get(&h.group).cloned().ok_or_else(|| unknown_group(&h.group, "consumer"))?;
        st.last_seen.insert((h.group.clone(), h.member_id.clone()), Instant::now());
        if g.heartbeat(&h.member_id, &topic_partitions_from_proto(owned)).map_err(group_status)? {
            self.write(p, &view, &mut st, &h.group, &[Entry::Consumer { state: g }]).await?;
            st.push(&h.group);
        }
        Ok(())
    }

    /// The member leaves (or its session stream ended).
    pub async fn leave(&self, h: &SessionHandle, why: &str) {
        let Ok((p, view, mut st)) = self.lock(&h.group).await else { return };
        if st.check_session(h).is_err() {
            return;
        }
        st.sessions.remove(&(h.group.clone(), h.member_id.clone()));
        st.last_seen.remove(&(h.group.clone(), h.member_id.clone()));
        self.forget_heard(&h.group, &h.member_id);
        let Some(mut g) = st.consumer.get(&h.group).cloned() else { return };
        if g.remove(&h.member_id) {
            if let Err(e) = self.write(p, &view, &mut st, &h.group, &[Entry::Consumer { state: g }]).await {
                warn!(group = %h.group, member = %h.member_id, error = %e.message(), "could not record a member leaving");
                return;
            }
            info!(group = %h.group, member = %h.member_id, why, "member left");
            st.push(&h.group);
        }
    }

    /// Commits offsets for a member (or a tool, while the group is empty).
    pub async fn commit(&self, req: pb::CommitOffsetsRequest) -> Result<(), Status> {
        if req.offsets.is_empty() {
            return Err(invalid("the commit holds no offsets"));
        }
        let mut tps = BTreeSet::new();
        for o in &req.offsets {
            let count = self.logs.partition_count(&o.topic).map_err(from_storage)?;
            if o.partition >= count {
                return Err(from_storage(StorageError::UnknownPartition {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    count,
                }));
            }
            tps.insert((o.topic.clone(), o.partition));
        }
        let (p, view, mut st) = self.lock(&req.group).await?;
        if st.share.contains_key(&req.group) {
            return Err(invalid(format!(
                "'{}' is a share group: it acknowledges records, it does not commit offsets",
                req.group
            )));
        }
        let g = st.consumer.get(&req.group).cloned().unwrap_or_else(|| ConsumerGroup::new(&req.group));
        g.check_commit(&req.member_id, req.member_epoch, &tps).map_err(group_status)?;
        if !req.member_id.is_empty() {
            st.last_seen.insert((req.group.clone(), req.member_id.clone()), Instant::now());
        }
        let offsets = req.offsets.into_iter().map(|o| (o.topic, o.partition, o.offset, o.metadata)).collect();
        let entry = Entry::Offsets { offsets, timestamp_ms: strata_storage::now_ms() };
        self.write(p, &view, &mut st, &req.group, &[entry]).await
    }

    /// Committed offsets of a group.
    pub async fn fetch_offsets(&self, req: &pb::FetchOffsetsRequest) -> Result<Vec<pb::CommittedOffset>, Status> {
        let (_, _, st) = self.lock_for_read(&req.group).await?;
        let wanted = topic_partitions_from_proto(&req.partitions);
        let Some(offsets) = st.offsets.get(&req.group) else { return Ok(Vec::new()) };
        Ok(offsets
            .iter()
            .filter(|(tp, _)| wanted.is_empty() || wanted.contains(*tp))
            .map(|(tp, c)| committed_to_proto(tp, c))
            .collect())
    }

    /// Offsets of one partition, at its leader: (log start, log end).
    async fn bounds(&self, topic: &str, partition: u32) -> Result<(u64, u64), Status> {
        let client = self.client().await?;
        let leader = client.partition_leader(topic, partition).await.map_err(client_status)?;
        let earliest =
            leader.list_offsets(topic, &[partition], pb::OffsetSpec::Earliest, 0).await.map_err(client_status)?;
        let latest =
            leader.list_offsets(topic, &[partition], pb::OffsetSpec::Latest, 0).await.map_err(client_status)?;
        let first = |v: Vec<pb::PartitionOffset>| v.first().map(|o| o.offset).unwrap_or(0);
        Ok((first(earliest), first(latest)))
    }

    /// Resets a group's committed offsets.
    pub async fn reset(&self, req: pb::ResetOffsetsRequest) -> Result<Vec<pb::CommittedOffset>, Status> {
        use pb::reset_offsets_request::To;
        let count = self.logs.partition_count(&req.topic).map_err(from_storage)?;
        let partitions: Vec<u32> =
            if req.partitions.is_empty() { (0..count).collect() } else { req.partitions.clone() };
        if let Some(bad) = partitions.iter().find(|p| **p >= count) {
            return Err(from_storage(StorageError::UnknownPartition {
                topic: req.topic.clone(),
                partition: *bad,
                count,
            }));
        }
        let to = req
            .to
            .ok_or_else(|| invalid("say where to reset to: earliest, latest, an offset, a timestamp or a shift"))?;
        // Check first (cheap), compute the offsets without the lock, then
        // check again and commit under it.
        self.check_resettable(&req.group, req.force).await?;
        let committed: BTreeMap<Tp, Committed> = {
            let (_, _, st) = self.lock(&req.group).await?;
            st.offsets.get(&req.group).cloned().unwrap_or_default()
        };
        let client = self.client().await?;
        let mut out = Vec::with_capacity(partitions.len());
        for p in partitions {
            let (start, end) = self.bounds(&req.topic, p).await?;
            let offset = match to {
                To::Earliest(_) => start,
                To::Latest(_) => end,
                To::Offset(o) => {
                    if o < start || o > end {
                        return Err(from_storage(StorageError::OffsetOutOfRange {
                            topic: req.topic.clone(),
                            partition: p,
                            offset: o,
                            start,
                            end,
                        }));
                    }
                    o
                }
                To::TimestampMs(ts) => {
                    let leader = client.partition_leader(&req.topic, p).await.map_err(client_status)?;
                    let found = leader
                        .list_offsets(&req.topic, &[p], pb::OffsetSpec::Timestamp, ts)
                        .await
                        .map_err(client_status)?;
                    found.first().map_or(end, |o| if o.found { o.offset } else { end })
                }
                To::Shift(n) => {
                    let from = committed.get(&(req.topic.clone(), p)).map_or(start, |c| c.offset);
                    let moved =
                        if n >= 0 { from.saturating_add(n as u64) } else { from.saturating_sub(n.unsigned_abs()) };
                    moved.clamp(start, end)
                }
            };
            out.push(pb::CommittedOffset {
                topic: req.topic.clone(),
                partition: p,
                offset,
                metadata: String::new(),
                commit_timestamp_ms: strata_storage::now_ms(),
            });
        }
        if req.dry_run {
            return Ok(out);
        }
        let (shard, view, mut st) = self.lock(&req.group).await?;
        let members = st.consumer.get(&req.group).map_or(0, |g| g.members.len());
        if members > 0 && !req.force {
            return Err(not_empty(&req.group, members));
        }
        let offsets = out.iter().map(|o| (o.topic.clone(), o.partition, o.offset, String::new())).collect();
        let entry = Entry::Offsets { offsets, timestamp_ms: strata_storage::now_ms() };
        self.write(shard, &view, &mut st, &req.group, &[entry]).await?;
        info!(group = %req.group, topic = %req.topic, partitions = out.len(), "offsets reset");
        Ok(out)
    }

    async fn check_resettable(&self, group: &str, force: bool) -> Result<(), Status> {
        let (_, _, st) = self.lock(group).await?;
        if st.share.contains_key(group) {
            return Err(invalid(format!("'{group}' is a share group: its offsets cannot be reset")));
        }
        let members = st.consumer.get(group).map_or(0, |g| g.members.len());
        if members > 0 && !force {
            return Err(not_empty(group, members));
        }
        Ok(())
    }

    /// Shard `p`'s state if this node leads it, loaded (now, if it was not
    /// since this node took it over).
    async fn led_shard(&self, p: u32) -> Option<MutexGuard<'_, ShardState>> {
        let view = self.replication.leadership(GROUPS_TOPIC, p).filter(|v| v.leading)?;
        let mut st = self.shards[p as usize].lock().await;
        if st.term != Some(view.term) && self.load(p, &view, &mut st).await.is_err() {
            return None;
        }
        Some(st)
    }

    /// Groups coordinated here (this node's shards it leads).
    pub async fn list_local(&self) -> Vec<pb::GroupSummary> {
        let mut out = Vec::new();
        for p in 0..GROUPS_PARTITIONS {
            let Some(st) = self.led_shard(p).await else { continue };
            let mut names: BTreeSet<&String> = st.consumer.keys().collect();
            names.extend(st.offsets.keys());
            for name in names {
                let (members, state) =
                    st.consumer.get(name).map_or((0, "empty"), |g| (g.members.len() as u32, g.state()));
                out.push(pb::GroupSummary {
                    group: name.clone(),
                    kind: "consumer".into(),
                    members,
                    state: state.into(),
                });
            }
            for (name, g) in &st.share {
                let members = g.consumers.len() as u32;
                let state = if members == 0 { "empty" } else { "stable" };
                out.push(pb::GroupSummary { group: name.clone(), kind: "share".into(), members, state: state.into() });
            }
        }
        out
    }

    /// The groups this node coordinates, as the metrics scrape sees them.
    /// A shard led here but not loaded yet (after a failover, before any
    /// request for its groups) is loaded, as a request would: its groups'
    /// lag must show while their consumers are away.
    pub async fn sample(&self) -> Vec<GroupSample> {
        let mut out = Vec::new();
        for p in 0..GROUPS_PARTITIONS {
            let Some(st) = self.led_shard(p).await else { continue };
            let mut names: BTreeSet<&String> = st.consumer.keys().collect();
            names.extend(st.offsets.keys());
            for name in names {
                let g = st.consumer.get(name);
                let committed: Vec<(String, u32, u64)> = st
                    .offsets
                    .get(name)
                    .map(|o| o.iter().map(|((t, p), c)| (t.clone(), *p, c.offset)).collect())
                    .unwrap_or_default();
                // As `describe` counts lag: the members' topics and every
                // topic with a commit (a group whose consumers are all away
                // still lags on all of them).
                let mut subscribed = g.map(ConsumerGroup::subscribed).unwrap_or_default();
                subscribed.extend(committed.iter().map(|(t, _, _)| t.clone()));
                out.push(GroupSample {
                    group: name.clone(),
                    share: false,
                    members: g.map_or(0, |g| g.members.len()),
                    epoch: g.map_or(0, |g| g.epoch),
                    committed,
                    subscribed: subscribed.into_iter().collect(),
                    share_topics: Vec::new(),
                });
            }
            for (name, g) in &st.share {
                let mut topics: BTreeMap<String, (usize, ShareStats)> =
                    g.topics.keys().map(|t| (t.clone(), (0, g.stats.get(t).copied().unwrap_or_default()))).collect();
                for (topic, _, _) in g.locks.keys() {
                    topics.entry(topic.clone()).or_default().0 += 1;
                }
                out.push(GroupSample {
                    group: name.clone(),
                    share: true,
                    members: g.consumers.len(),
                    epoch: 0,
                    committed: Vec::new(),
                    subscribed: Vec::new(),
                    share_topics: topics.into_iter().map(|(t, (n, s))| (t, n, s)).collect(),
                });
            }
        }
        out
    }

    /// A group's members, partitions, offsets and lag.
    pub async fn describe(&self, group: &str) -> Result<pb::DescribeGroupResponse, Status> {
        let (snapshot, offsets, share) = {
            let (_, _, st) = self.lock_for_read(group).await?;
            (st.consumer.get(group).cloned(), st.offsets.get(group).cloned(), st.share.get(group).cloned())
        };
        let me = self.replication.node_id();
        if let Some(share) = share {
            return self.describe_share(group, &share).await;
        }
        if snapshot.is_none() && offsets.is_none() {
            return Err(unknown_group(group, "consumer"));
        }
        let g = snapshot.unwrap_or_else(|| ConsumerGroup::new(group));
        let offsets = offsets.unwrap_or_default();
        let owners = g.owners();
        let mut topics: BTreeSet<String> = g.subscribed();
        topics.extend(offsets.keys().map(|tp| tp.0.clone()));
        let mut partitions = Vec::new();
        for topic in topics {
            let Ok(count) = self.logs.partition_count(&topic) else { continue };
            for p in 0..count {
                let tp = (topic.clone(), p);
                let (start, end) = self.bounds(&topic, p).await?;
                let committed = offsets.get(&tp).map(|c| c.offset);
                partitions.push(pb::PartitionLag {
                    topic: topic.clone(),
                    partition: p,
                    committed,
                    log_end_offset: end,
                    lag: end.saturating_sub(committed.unwrap_or(start)),
                    member_id: owners.get(&tp).cloned().unwrap_or_default(),
                    in_flight: 0,
                });
            }
        }
        let members = g
            .members
            .iter()
            .map(|(id, m)| pb::GroupMember {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                member_epoch: m.epoch,
                topics: m.topics.iter().cloned().collect(),
                assignment: topic_partitions_to_proto(&m.assigned),
            })
            .collect();
        Ok(pb::DescribeGroupResponse {
            group: group.to_owned(),
            kind: "consumer".into(),
            state: g.state().into(),
            group_epoch: g.epoch,
            assignor: strategy_to_proto(g.strategy) as i32,
            members,
            partitions,
            coordinator: me,
        })
    }

    /// One pass of the coordinator's timer: members past their session
    /// timeout are removed, groups whose topics changed partition counts
    /// are rebalanced, share-group locks that expired are released.
    pub async fn tick(&self) {
        // Heartbeats of sessions that ended meanwhile are noted too: forget
        // what no session could still need.
        if let Ok(mut heard) = self.heard.lock() {
            let longest = Duration::from_millis(u64::from(MAX_SESSION_TIMEOUT_MS));
            heard.retain(|_, at| at.elapsed() <= longest);
        }
        for p in 0..GROUPS_PARTITIONS {
            let mut st = self.shards[p as usize].lock().await;
            let Some(view) = self.replication.leadership(GROUPS_TOPIC, p) else { continue };
            if !view.leading || st.term != Some(view.term) {
                if st.term.is_some() {
                    // Not (or no longer) the coordinator: let sessions go.
                    *st = ShardState::default();
                    self.forget_heard_shard(p);
                }
                continue;
            }
            let now = Instant::now();
            let names: Vec<String> = st.consumer.keys().cloned().collect();
            for name in names {
                let Some(g) = st.consumer.get(&name) else { continue };
                let mut next = g.clone();
                let mut expired = Vec::new();
                for (id, m) in &g.members {
                    let key = (name.clone(), id.clone());
                    let heard = self.heard.lock().ok().and_then(|h| h.get(&key).copied());
                    let seen = st.last_seen.get(&key).copied().max(heard).unwrap_or(now);
                    if now.duration_since(seen) > Duration::from_millis(u64::from(m.session_timeout_ms)) {
                        expired.push(id.clone());
                    }
                }
                for id in &expired {
                    next.remove(id);
                }
                let counts = self.partition_counts(&next.subscribed());
                next.set_partitions(counts);
                if next != *g {
                    if let Err(e) = self.write(p, &view, &mut st, &name, &[Entry::Consumer { state: next }]).await {
                        warn!(group = %name, error = %e.message(), "could not record a rebalance");
                        break;
                    }
                    for id in expired {
                        info!(group = %name, member = %id, "member removed: its session timed out");
                        st.sessions.remove(&(name.clone(), id.clone()));
                        self.forget_heard(&name, &id);
                        st.last_seen.remove(&(name.clone(), id));
                    }
                    st.push(&name);
                }
            }
            if st.term.is_some() {
                self.tick_share(p, &view, &mut st).await;
            }
        }
    }
}

/// Why a batch of the groups topic cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("a batch that does not decode: {0}")]
    Batch(#[from] strata_record::FormatError),
    #[error("offset {offset}: a group record that does not parse: {source}")]
    Entry { offset: u64, source: serde_json::Error },
}

/// The group changes a batch of the groups topic holds, from offset `from`
/// on, as (offset, group, change): what a coordinator reads when it loads
/// its partition.
pub fn decode_entries(batch: &bytes::Bytes, from: u64) -> Result<Vec<(u64, String, Entry)>, RecordError> {
    let mut out = Vec::new();
    for record in strata_record::decode(batch)?.into_iter().filter(|r| r.offset >= from) {
        let group = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        let entry = serde_json::from_slice(&record.value)
            .map_err(|source| RecordError::Entry { offset: record.offset, source })?;
        out.push((record.offset, group, entry));
    }
    Ok(out)
}

impl ShardState {
    /// Applies one committed entry.
    pub fn apply(&mut self, group: &str, entry: Entry) {
        match entry {
            Entry::Consumer { state } => {
                self.consumer.insert(group.to_owned(), state);
            }
            Entry::Offsets { offsets, timestamp_ms } => {
                let map = self.offsets.entry(group.to_owned()).or_default();
                for (topic, partition, offset, metadata) in offsets {
                    map.insert((topic, partition), Committed { offset, metadata, timestamp_ms });
                }
            }
            Entry::ShareConfig { topic, config } => {
                let g = self.share.entry(group.to_owned()).or_default();
                match g.topics.get_mut(&topic) {
                    Some(entry) => entry.0 = config,
                    None => {
                        g.topics.insert(topic, (config, BTreeMap::new()));
                    }
                }
            }
            Entry::SharePartition { topic, partition, state } => {
                let g = self.share.entry(group.to_owned()).or_default();
                if let Some((_, parts)) = g.topics.get_mut(&topic) {
                    parts.insert(partition, state);
                }
            }
        }
    }

    /// The session answer for a member, as the group stands.
    fn response(&self, group: &str, member: &str) -> pb::GroupSessionResponse {
        let g = self.consumer.get(group);
        let m = g.and_then(|g| g.members.get(member));
        pb::GroupSessionResponse {
            member_id: member.to_owned(),
            member_epoch: m.map_or(0, |m| m.epoch),
            assignment: m.map(|m| topic_partitions_to_proto(&m.assigned)).unwrap_or_default(),
            heartbeat_interval_ms: heartbeat_interval_ms(
                m.map_or(DEFAULT_SESSION_TIMEOUT_MS, |m| m.session_timeout_ms),
            ),
            group_epoch: g.map_or(0, |g| g.epoch),
            reconciled: g.is_some_and(|g| g.reconciled(member)),
        }
    }

    /// Tells every live session of `group` where it stands now.
    fn push(&self, group: &str) {
        for ((g, member), session) in &self.sessions {
            if g == group {
                let now = self.response(group, member);
                session.tx.send_if_modified(|current| {
                    let changed = *current != now;
                    *current = now;
                    changed
                });
            }
        }
    }

    fn check_session(&self, h: &SessionHandle) -> Result<(), Status> {
        match self.sessions.get(&(h.group.clone(), h.member_id.clone())) {
            Some(s) if s.token == h.token => Ok(()),
            _ => Err(group_status(GroupError::UnknownMember { group: h.group.clone(), member: h.member_id.clone() })),
        }
    }
}

fn not_empty(group: &str, members: usize) -> Status {
    group_status(GroupError::NotEmpty {
        group: group.to_owned(),
        members,
        what: "stop its consumers first, or force the reset (they may commit over it)".to_owned(),
    })
}

pub fn reserved(topic: &str) -> Status {
    status(
        Code::PermissionDenied,
        pb::ErrorReason::ReservedTopic,
        format!("topic '{topic}' is internal to the cluster (names starting with '{RESERVED_PREFIX}' are reserved)"),
    )
}

/// A client error as a status (the client already carries the server's).
pub(crate) fn client_status(e: strata_client::ClientError) -> Status {
    match e {
        strata_client::ClientError::Server { code, reason, message, .. } => {
            match pb::ErrorReason::from_str_name(&reason) {
                Some(r) => status(code, r, message),
                None => Status::new(code, message),
            }
        }
        // Another node could not be reached (retry) ...
        e @ (strata_client::ClientError::Connect { .. }
        | strata_client::ClientError::Unreachable { .. }
        | strata_client::ClientError::Closed) => Status::unavailable(e.to_string()),
        // ... or answered something this node cannot use: not a retry.
        e @ (strata_client::ClientError::Format(_)
        | strata_client::ClientError::Protocol(_)
        | strata_client::ClientError::Tls(_)
        | strata_client::ClientError::Auth(_)
        | strata_client::ClientError::InvalidAddress { .. }) => {
            Status::internal(format!("talking to another node: {e}"))
        }
    }
}

pub fn strategy_from_proto(value: i32) -> Result<Strategy, Status> {
    match pb::Assignor::try_from(value) {
        Ok(pb::Assignor::Range) => Ok(Strategy::Range),
        Ok(pb::Assignor::RoundRobin) => Ok(Strategy::RoundRobin),
        Ok(pb::Assignor::Sticky | pb::Assignor::Unspecified) => Ok(Strategy::Sticky),
        Err(_) => Err(invalid(format!("unknown assignor {value} (RANGE = 1, ROUND_ROBIN = 2, STICKY = 3)"))),
    }
}

fn strategy_to_proto(s: Strategy) -> pb::Assignor {
    match s {
        Strategy::Range => pb::Assignor::Range,
        Strategy::RoundRobin => pb::Assignor::RoundRobin,
        Strategy::Sticky => pb::Assignor::Sticky,
    }
}

fn committed_to_proto(tp: &Tp, c: &Committed) -> pb::CommittedOffset {
    pb::CommittedOffset {
        topic: tp.0.clone(),
        partition: tp.1,
        offset: c.offset,
        metadata: c.metadata.clone(),
        commit_timestamp_ms: c.timestamp_ms,
    }
}

/// Keeps the groups' timers running until the node stops.
pub async fn run_timer(coordinator: Arc<Coordinator>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        coordinator.tick().await;
    }
}
