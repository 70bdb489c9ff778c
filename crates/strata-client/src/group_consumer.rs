//! A consumer-group member: joins a group, reads the partitions the
//! coordinator assigns it, and commits how far it got.
//!
//! - **Manual commit** ([`GroupConsumerConfig::auto_commit`] `None`): call
//!   [`GroupConsumer::commit`] after processing what [`GroupConsumer::poll`]
//!   returned. A consumer that dies before committing leaves its records to
//!   be read again by the partition's next owner: at-least-once.
//! - **Auto-commit** (`Some(interval)`): at the start of a poll, once the
//!   interval has passed, the records returned by earlier polls are
//!   committed (as Kafka's `enable.auto.commit`); also when partitions are
//!   taken away and on [`GroupConsumer::close`]. Records returned but not yet
//!   processed when the process dies may be lost to the group: for
//!   loss-tolerant uses.
//!
//! A partition the group never committed starts at
//! [`GroupConsumerConfig::start`]; a position the partition's log no longer
//! holds because retention deleted the records moves to the log start, as
//! Kafka's `auto.offset.reset`, with a warning in the log; a position beyond
//! the end of the node that answered (a stale leader) is kept.
//!
//! Rebalances are incremental: when the coordinator moves a partition away
//! from this member, the member stops reading it, commits it (auto-commit)
//! and reports it given up on its next heartbeat; the partitions it keeps
//! are read on without a pause.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::select_all;
use strata_proto::v1 as pb;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::retry::Backoff;
use crate::{Client, ClientError, Record, Result, StartOffset};

/// A topic and partition.
pub type TopicPartition = (String, u32);

/// How long a position beyond the end of a partition's log is taken for a
/// stale answer (a cut-off leader) before the error reaches the application.
const BEYOND_END_PATIENCE: Duration = Duration::from_secs(30);

/// How a member joins and reads.
#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// How the coordinator spreads partitions (every member of a group must
    /// use the same). Default: sticky (moves as few partitions as it can).
    pub assignor: pb::Assignor,
    /// A member not heard from for this long is removed (1 s to 300 s).
    pub session_timeout: Duration,
    /// `None`: manual commit; `Some(interval)`: auto-commit.
    pub auto_commit: Option<Duration>,
    /// Where to start a partition the group never committed.
    pub start: StartOffset,
    /// Longest a poll waits for a record.
    pub max_wait: Duration,
    /// Bytes asked for per partition and fetch.
    pub fetch_bytes: u32,
    /// Shown by `strata group describe`.
    pub client_id: String,
}

impl GroupConsumerConfig {
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            assignor: pb::Assignor::Sticky,
            session_timeout: Duration::from_secs(10),
            auto_commit: None,
            start: StartOffset::Earliest,
            max_wait: Duration::from_millis(500),
            fetch_bytes: 1024 * 1024,
            client_id: format!("strata-client-{}", std::process::id()),
        }
    }
}

/// A record and where it came from.
#[derive(Debug, Clone)]
pub struct GroupRecord {
    pub topic: String,
    pub partition: u32,
    pub record: Record,
}

/// What the session task and the consumer share.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    epoch: u64,
    /// What the coordinator says this member may read.
    assigned: BTreeSet<TopicPartition>,
    /// What the member reads now (reported in heartbeats).
    owned: BTreeSet<TopicPartition>,
    /// Set when the session failed for good.
    failed: Option<ClientError>,
    /// Bumped on every answer of the coordinator.
    answers: u64,
}

/// A member of a consumer group.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    config: GroupConsumerConfig,
    shared: Arc<Mutex<Membership>>,
    /// Wakes the session task to heartbeat at once (a partition given up).
    beat: Arc<Notify>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
    leave: mpsc::Sender<()>,
    /// Next offset to fetch, per partition read.
    positions: BTreeMap<TopicPartition, u64>,
    /// Offset after the last record returned, per partition read.
    returned: BTreeMap<TopicPartition, u64>,
    /// Partitions whose position is beyond the end of the node that
    /// answered, since when.
    beyond_end: BTreeMap<TopicPartition, Instant>,
    /// The member id under which the partitions read now were assigned
    /// (a member that was removed and joined again owns none of them).
    owner: String,
    last_commit: Instant,
}

fn lock(shared: &Mutex<Membership>) -> std::sync::MutexGuard<'_, Membership> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Per partition, the offset after the last of `records`: what
/// [`GroupConsumer::commit_through`] commits for them.
pub fn next_offsets(records: &[GroupRecord]) -> BTreeMap<TopicPartition, u64> {
    let mut upto: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    for r in records {
        let next = upto.entry((r.topic.clone(), r.partition)).or_default();
        *next = (*next).max(r.record.offset + 1);
    }
    upto
}

/// Topic-partitions as the API lists them (one entry per topic).
pub fn topic_partitions_to_proto(set: &BTreeSet<TopicPartition>) -> Vec<pb::TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in set {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| pb::TopicPartitions { topic: topic.to_owned(), partitions })
        .collect()
}

/// Topic-partitions from the API's per-topic lists.
pub fn topic_partitions_from_proto(list: &[pb::TopicPartitions]) -> BTreeSet<TopicPartition> {
    list.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p))).collect()
}

impl Client {
    /// Joins a consumer group; returns once the coordinator answered the
    /// join (the first assignment).
    pub async fn group_consumer(&self, config: GroupConsumerConfig) -> Result<GroupConsumer> {
        let shared = Arc::new(Mutex::new(Membership::default()));
        let beat = Arc::new(Notify::new());
        let changed = Arc::new(Notify::new());
        let (leave, left) = mpsc::channel(1);
        let task = tokio::spawn(session_task(
            self.clone(),
            config.clone(),
            Arc::clone(&shared),
            Arc::clone(&beat),
            Arc::clone(&changed),
            left,
        ));
        let consumer = GroupConsumer {
            client: self.clone(),
            config,
            shared,
            beat,
            changed,
            task,
            leave,
            positions: BTreeMap::new(),
            returned: BTreeMap::new(),
            beyond_end: BTreeMap::new(),
            owner: String::new(),
            last_commit: Instant::now(),
        };
        consumer.wait_answer(0, consumer.client.timeout).await?;
        Ok(consumer)
    }
}

/// Keeps the member's session: joins (again, after the coordinator moved),
/// heartbeats with what the member reads, and publishes every answer.
async fn session_task(
    client: Client,
    config: GroupConsumerConfig,
    shared: Arc<Mutex<Membership>>,
    beat: Arc<Notify>,
    changed: Arc<Notify>,
    mut left: mpsc::Receiver<()>,
) {
    // Jittered, so that the members of a group that lost its coordinator
    // do not all come back at once.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let (member_id, owned) = {
            let m = lock(&shared);
            (m.member_id.clone(), m.owned.clone())
        };
        let join = pb::GroupJoin {
            group: config.group.clone(),
            member_id,
            topics: config.topics.clone(),
            assignor: config.assignor as i32,
            session_timeout_ms: config.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            owned: topic_partitions_to_proto(&owned),
            client_id: config.client_id.clone(),
        };
        let (tx, rx) = mpsc::channel(4);
        let first = pb::GroupSessionRequest { kind: Some(pb::group_session_request::Kind::Join(join)) };
        if tx.send(first).await.is_err() {
            return;
        }
        let node = client.coordinator_node(&config.group).await;
        let opened = node.groups_rpc().session(ReceiverStream::new(rx)).await;
        let mut answers = match opened {
            Ok(a) => a.into_inner(),
            Err(status) => {
                let e = ClientError::from(status);
                client.forget_coordinator(&config.group);
                if !retry_session(&shared, &e) {
                    lock(&shared).failed = Some(e);
                    changed.notify_waiters();
                    return;
                }
                tokio::time::sleep(backoff.next_pause()).await;
                continue;
            }
        };
        let mut interval = Duration::from_secs(1);
        let mut next_beat = Instant::now() + interval;
        let ended: Option<ClientError> = loop {
            tokio::select! {
                answer = answers.message() => match answer {
                    Ok(Some(a)) => {
                        backoff.reset();
                        interval = Duration::from_millis(u64::from(a.heartbeat_interval_ms.max(50)));
                        let mut m = lock(&shared);
                        m.member_id = a.member_id.clone();
                        m.epoch = a.member_epoch;
                        m.assigned = topic_partitions_from_proto(&a.assignment);
                        m.answers += 1;
                        drop(m);
                        changed.notify_waiters();
                    }
                    Ok(None) => break None,
                    Err(status) => break Some(ClientError::from(status)),
                },
                () = tokio::time::sleep_until(next_beat.into()) => {
                    next_beat = Instant::now() + interval;
                    if !heartbeat(&tx, &shared).await { break None; }
                }
                () = beat.notified() => {
                    if !heartbeat(&tx, &shared).await { break None; }
                }
                _ = left.recv() => {
                    let leave = pb::GroupSessionRequest { kind: Some(pb::group_session_request::Kind::Leave(pb::GroupLeave {})) };
                    let _ = tx.send(leave).await;
                    // The coordinator ends the stream once the leave is recorded.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Ok(Some(_)) = answers.message().await {} }).await;
                    return;
                }
            }
        };
        client.forget_coordinator(&config.group);
        if let Some(e) = ended
            && !retry_session(&shared, &e)
        {
            lock(&shared).failed = Some(e);
            changed.notify_waiters();
            return;
        }
        tokio::time::sleep(backoff.next_pause()).await;
    }
}

/// Whether a session that ended with `e` is opened again. A member the
/// coordinator no longer knows joins afresh (its partitions were given to
/// others: it stops reading them).
fn retry_session(shared: &Mutex<Membership>, e: &ClientError) -> bool {
    if e.reason() == Some("UNKNOWN_MEMBER") || e.reason() == Some("FENCED_MEMBER") {
        let mut m = lock(shared);
        m.member_id.clear();
        m.epoch = 0;
        m.assigned.clear();
        return true;
    }
    e.is_retriable() || crate::groups::no_coordinator(e)
}

async fn heartbeat(tx: &mpsc::Sender<pb::GroupSessionRequest>, shared: &Mutex<Membership>) -> bool {
    let owned = topic_partitions_to_proto(&lock(shared).owned);
    let beat = pb::GroupSessionRequest {
        kind: Some(pb::group_session_request::Kind::Heartbeat(pb::GroupHeartbeat { owned })),
    };
    tx.send(beat).await.is_ok()
}

impl GroupConsumer {
    /// This member's id (empty until the coordinator answered).
    pub fn member_id(&self) -> String {
        lock(&self.shared).member_id.clone()
    }

    /// The partitions this member reads now.
    pub fn assignment(&self) -> BTreeSet<TopicPartition> {
        lock(&self.shared).owned.clone()
    }

    /// The offset of the next record to read, per partition read now (as
    /// Kafka's `position`).
    pub fn positions(&self) -> BTreeMap<TopicPartition, u64> {
        self.positions.clone()
    }

    /// Waits until the coordinator answered more than `seen` times.
    async fn wait_answer(&self, seen: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let m = lock(&self.shared);
                if let Some(e) = &m.failed {
                    return Err(e.clone());
                }
                if m.answers > seen {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                return Err(ClientError::Server {
                    code: tonic::Code::DeadlineExceeded,
                    reason: String::new(),
                    message: format!("group {}: no answer from its coordinator in {timeout:?}", self.config.group),
                    leader_addr: None,
                });
            }
        }
    }

    /// Takes up what the coordinator assigned, gives up what it took away.
    async fn reconcile(&mut self) -> Result<()> {
        let (assigned, mut owned, failed, member) = {
            let m = lock(&self.shared);
            (m.assigned.clone(), m.owned.clone(), m.failed.clone(), m.member_id.clone())
        };
        if let Some(e) = failed {
            return Err(e);
        }
        if member != self.owner {
            // Removed and joined again (or not yet a member): what was read
            // before belongs to others now; nothing of it may be committed.
            self.positions.clear();
            self.returned.clear();
            owned.clear();
            lock(&self.shared).owned.clear();
            self.owner = member;
        }
        let revoked: Vec<TopicPartition> = owned.difference(&assigned).cloned().collect();
        if !revoked.is_empty() {
            if self.config.auto_commit.is_some() {
                // Best effort: the partition's next owner reads from the
                // last commit that went through.
                let _ = self.commit_partitions(&revoked).await;
            }
            for tp in &revoked {
                self.positions.remove(tp);
                self.returned.remove(tp);
            }
        }
        let added: Vec<TopicPartition> = assigned.difference(&owned).cloned().collect();
        if !added.is_empty() {
            let wanted = topic_partitions_to_proto(&added.iter().cloned().collect());
            let committed = self.client.fetch_offsets(&self.config.group, &wanted).await?;
            for tp in &added {
                let offset = match committed.iter().find(|c| c.topic == tp.0 && c.partition == tp.1) {
                    Some(c) => c.offset,
                    None => self.client.resolve_offset(&tp.0, tp.1, self.config.start).await?,
                };
                self.positions.insert(tp.clone(), offset);
            }
        }
        if !revoked.is_empty() || !added.is_empty() {
            lock(&self.shared).owned = assigned;
            if !revoked.is_empty() {
                self.beat.notify_one();
            }
        }
        Ok(())
    }

    /// Records from the partitions this member reads, waiting up to
    /// `max_wait` when there are none. Empty when nothing came (or the
    /// member holds no partition yet).
    pub async fn poll(&mut self) -> Result<Vec<GroupRecord>> {
        self.reconcile().await?;
        if let Some(every) = self.config.auto_commit
            && self.last_commit.elapsed() >= every
        {
            self.commit().await?;
        }
        if self.positions.is_empty() {
            let seen = lock(&self.shared).answers;
            let _ = self.wait_answer(seen, self.config.max_wait).await;
            return Ok(Vec::new());
        }
        let mut out = self.fetch_all(Duration::ZERO).await?;
        if out.is_empty() {
            out = self.fetch_any(self.config.max_wait).await?;
        }
        for r in &out {
            let tp = (r.topic.clone(), r.partition);
            self.returned.insert(tp.clone(), r.record.offset + 1);
            let next = self.positions.entry(tp).or_default();
            *next = (*next).max(r.record.offset + 1);
        }
        Ok(out)
    }

    /// One fetch of every partition read, without waiting.
    async fn fetch_all(&mut self, wait: Duration) -> Result<Vec<GroupRecord>> {
        let fetches = self.positions.iter().map(|((topic, partition), offset)| {
            let client = self.client.clone();
            let topic = topic.clone();
            let (partition, offset, bytes) = (*partition, *offset, self.config.fetch_bytes);
            async move {
                let r = client.fetch(&topic, partition, offset, bytes, wait).await;
                (topic, partition, r)
            }
        });
        let mut out = Vec::new();
        for (topic, partition, r) in futures::future::join_all(fetches).await {
            if let Some(r) = self.out_of_range((topic.clone(), partition), r).await? {
                crate::trace::received(&topic, partition, &r.records);
                out.extend(r.records.into_iter().map(|record| GroupRecord { topic: topic.clone(), partition, record }));
            }
        }
        Ok(out)
    }

    /// Waits up to `wait` for the first partition that has records.
    async fn fetch_any(&mut self, wait: Duration) -> Result<Vec<GroupRecord>> {
        let assignment_changed = self.changed.notified();
        let fetches = self.positions.iter().map(|((topic, partition), offset)| {
            let client = self.client.clone();
            let topic = topic.clone();
            let (partition, offset, bytes) = (*partition, *offset, self.config.fetch_bytes);
            Box::pin(async move {
                let r = client.fetch(&topic, partition, offset, bytes, wait).await;
                (topic, partition, r)
            })
        });
        let (topic, partition, r) = tokio::select! {
            ((topic, partition, r), _, _) = select_all(fetches) => (topic, partition, r),
            () = assignment_changed => return Ok(Vec::new()),
        };
        let records = self.out_of_range((topic.clone(), partition), r).await?.map(|r| r.records).unwrap_or_default();
        crate::trace::received(&topic, partition, &records);
        Ok(records.into_iter().map(|record| GroupRecord { topic: topic.clone(), partition, record }).collect())
    }

    /// A fetch at an offset the partition does not hold. Below its log
    /// start (retention deleted the records) the member goes on from the
    /// log start, as Kafka's `auto.offset.reset=earliest`. Beyond its end,
    /// the node that answered is behind (a leader that was cut off and does
    /// not know it was replaced): the position stays, the leader is looked
    /// up again, and nothing is read this time (for up to
    /// [`BEYOND_END_PATIENCE`]; then the error is returned). Moving the position back to
    /// that node's end would read, and commit, offsets below what the group
    /// already committed. `Ok(None)`: nothing read.
    async fn out_of_range(
        &mut self,
        tp: TopicPartition,
        r: Result<crate::FetchResult>,
    ) -> Result<Option<crate::FetchResult>> {
        match r {
            Err(e) if e.reason() == Some("OFFSET_OUT_OF_RANGE") => {
                let at = self.positions.get(&tp).copied().unwrap_or(0);
                let start = self.client.resolve_offset(&tp.0, tp.1, StartOffset::Earliest).await?;
                if at < start {
                    tracing::warn!(group = %self.config.group, topic = %tp.0, partition = tp.1, from = at, to = start, "the group's position is below the partition's log start (retention deleted those records); reading on from the log start");
                    self.positions.insert(tp, start);
                    return Ok(None);
                }
                // A stale leader learns it was replaced within an election;
                // past that, the position really is beyond the log (the
                // topic was deleted and created again, or a tool committed
                // past its end): the application decides.
                let since = *self.beyond_end.entry(tp.clone()).or_insert_with(Instant::now);
                if since.elapsed() > BEYOND_END_PATIENCE {
                    self.beyond_end.remove(&tp);
                    return Err(e);
                }
                self.client.forget_leader(&tp.0, tp.1);
                tokio::time::sleep(self.config.max_wait.min(Duration::from_millis(200))).await;
                Ok(None)
            }
            other => {
                self.beyond_end.remove(&tp);
                other.map(Some)
            }
        }
    }

    /// Commits the offsets after every record returned so far (of the
    /// partitions this member reads).
    pub async fn commit(&mut self) -> Result<()> {
        let all: Vec<TopicPartition> = self.returned.keys().cloned().collect();
        self.commit_partitions(&all).await?;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Commits the offsets right after `records` (per partition, the
    /// highest), for a consumer that processed only part of a poll; what
    /// else was returned is not committed later (it is read again by the
    /// partition's next reader).
    pub async fn commit_through(&mut self, records: &[GroupRecord]) -> Result<()> {
        let upto = next_offsets(records);
        let offsets: Vec<(String, u32, u64)> = upto.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect();
        self.send_commit(offsets).await?;
        // What was returned after these records is not committed later
        // either (e.g. by auto-commit on close): it is read again.
        self.returned = upto;
        Ok(())
    }

    async fn commit_partitions(&self, tps: &[TopicPartition]) -> Result<()> {
        let offsets = tps.iter().filter_map(|tp| self.returned.get(tp).map(|o| (tp.0.clone(), tp.1, *o))).collect();
        self.send_commit(offsets).await
    }

    /// Commits `offsets` with this member's id and current epoch.
    async fn send_commit(&self, offsets: Vec<(String, u32, u64)>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (member, epoch) = {
            let m = lock(&self.shared);
            (m.member_id.clone(), m.epoch)
        };
        if member.is_empty() || member != self.owner {
            return Err(ClientError::Server {
                code: tonic::Code::FailedPrecondition,
                reason: "FENCED_MEMBER".to_owned(),
                message: format!(
                    "group {}: this consumer is no longer the member that read these records (it was removed and is joining again); they will be read again by their new owner",
                    self.config.group
                ),
                leader_addr: None,
            });
        }
        self.client.commit_offsets(&self.config.group, &member, epoch, &offsets).await
    }

    /// Leaves the group (committing first with auto-commit); its partitions
    /// go to the other members at once.
    pub async fn close(mut self) -> Result<()> {
        let committed = if self.config.auto_commit.is_some() { self.commit().await } else { Ok(()) };
        let _ = self.leave.send(()).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        committed
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
