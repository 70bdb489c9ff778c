//! Metrics read at scrape time from what the node keeps anyway: Raft
//! groups, partition logs, consumer and share groups, connections, disk.
//!
//! Counts that only exist as state are turned into counters here: each
//! group's term is remembered between scrapes, and every increase adds to
//! `strata_raft_elections_total` (each election takes a new term), every
//! change of leader seen to `strata_raft_leader_changes_total` (sampled: a
//! leader that changes twice between two scrapes counts once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use strata_raft::{GroupId, NodeId};
use strata_storage::{LogManager, TrafficCounts};

use crate::groups::{Coordinator, GroupSample};
use crate::incoming::ConnectionStats;
use crate::replication::Replication;

/// How long a scrape waits for the end offsets of partitions with no
/// replica here (asked of their leaders, for consumer lag).
const END_OFFSETS_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer the controller's leader heard from within this is up.
const LIVE_WITHIN: Duration = Duration::from_secs(3);

/// `{topic}` or `{topic, partition}` (with `partition_labels`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TopicKey {
    topic: String,
    partition: Option<u32>,
}

impl EncodeLabelSet for TopicKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        prometheus_client::encoding::EncodeLabel::encode(&("topic", self.topic.as_str()), encoder.encode_label())?;
        if let Some(p) = self.partition {
            prometheus_client::encoding::EncodeLabel::encode(&("partition", p), encoder.encode_label())?;
        }
        Ok(())
    }
}

/// `{group, topic}` or `{group, topic, partition}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    group: String,
    key: TopicKey,
}

impl EncodeLabelSet for GroupKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        prometheus_client::encoding::EncodeLabel::encode(&("group", self.group.as_str()), encoder.encode_label())?;
        self.key.encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Labels(Vec<(&'static str, String)>);

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (k, v) in &self.0 {
            prometheus_client::encoding::EncodeLabel::encode(&(*k, v.as_str()), encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Per topic (or partition) sums over this node's replicas.
#[derive(Debug, Default, Clone)]
struct TopicAgg {
    replicas: u64,
    leaders: u64,
    leaderless: u64,
    under_replicated: u64,
    max_term: u64,
    size_bytes: u64,
    /// Led here only (each partition counted once across the cluster).
    high_watermark: u64,
    log_start: u64,
    lag_entries: u64,
    lag_bytes: u64,
    traffic: TrafficCounts,
}

/// What one scrape remembers for the next, and what `refresh` fetched.
#[derive(Debug, Default)]
struct ScrapeState {
    /// Each group's term and leader at the last scrape.
    seen: HashMap<GroupId, (u64, Option<NodeId>)>,
    elections: u64,
    leader_changes: u64,
    groups: Vec<GroupSample>,
    /// Per topic and partition: (log start, end offset) of the partitions
    /// groups subscribe to or committed offsets of.
    bounds: HashMap<String, BTreeMap<u32, (u64, u64)>>,
}

/// The scrape-time collector of a node.
pub struct NodeCollector {
    node_id: NodeId,
    logs: Arc<LogManager>,
    replication: Arc<Replication>,
    coordinator: Arc<Coordinator>,
    connections: ConnectionStats,
    data_dir: PathBuf,
    partition_labels: bool,
    state: Mutex<ScrapeState>,
    request_log: Option<Arc<crate::request_log::RequestLog>>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

fn gauge<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one<V>(value: V) -> [(Labels, V); 1] {
    [(Labels(Vec::new()), value)]
}

impl NodeCollector {
    pub fn new(
        logs: Arc<LogManager>,
        replication: Arc<Replication>,
        coordinator: Arc<Coordinator>,
        connections: ConnectionStats,
        partition_labels: bool,
    ) -> Self {
        Self {
            node_id: replication.node_id(),
            data_dir: logs.data_dir().to_owned(),
            logs,
            replication,
            coordinator,
            connections,
            partition_labels,
            state: Mutex::new(ScrapeState::default()),
            request_log: None,
        }
    }

    /// Reports the request log's dropped lines too.
    pub fn with_request_log(mut self, log: Option<Arc<crate::request_log::RequestLog>>) -> Self {
        self.request_log = log;
        self
    }

    fn key(&self, topic: &str, partition: u32) -> TopicKey {
        TopicKey { topic: topic.to_owned(), partition: self.partition_labels.then_some(partition) }
    }

    /// What the scrape needs that takes a query: the groups this node
    /// coordinates, and the log start and end offsets of the partitions
    /// they subscribe to or committed (this node's replica where it holds
    /// one, else the leader's).
    pub async fn refresh(&self) {
        let groups = self.coordinator.sample().await;
        let mut wanted: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for g in &groups {
            for (topic, p, _) in &g.committed {
                wanted.entry(topic.clone()).or_default().insert(*p);
            }
            for topic in &g.subscribed {
                if let Ok(count) = self.logs.partition_count(topic) {
                    wanted.entry(topic.clone()).or_default().extend(0..count);
                }
            }
        }
        let mut bounds: HashMap<String, BTreeMap<u32, (u64, u64)>> = HashMap::new();
        let mut remote: Vec<(String, u32)> = Vec::new();
        for (topic, partitions) in wanted {
            for p in partitions {
                let here = self.replication.leadership(&topic, p).is_some_and(|l| l.here);
                match self.logs.partition(&topic, p) {
                    Ok(log) if here => {
                        let b = (log.log_start_offset(), log.high_watermark());
                        bounds.entry(topic.clone()).or_default().insert(p, b);
                    }
                    _ => remote.push((topic.clone(), p)),
                }
            }
        }
        if !remote.is_empty() {
            let asked = tokio::time::timeout(END_OFFSETS_TIMEOUT, self.remote_bounds(&remote, &mut bounds)).await;
            if asked.is_err() {
                tracing::debug!("offsets for consumer lag took over {END_OFFSETS_TIMEOUT:?}; some lag left out");
            }
        }
        if let Ok(mut state) = self.state.lock() {
            state.groups = groups;
            state.bounds = bounds;
        }
    }

    /// Log start and end offsets of partitions held elsewhere, from their
    /// leaders (partitions whose leader cannot be asked are left out).
    async fn remote_bounds(&self, wanted: &[(String, u32)], out: &mut HashMap<String, BTreeMap<u32, (u64, u64)>>) {
        use strata_proto::v1::OffsetSpec;
        let Ok(client) = self.coordinator.client().await else { return };
        for (topic, p) in wanted {
            let Ok(leader) = client.partition_leader(topic, *p).await else { continue };
            let first = |v: Vec<strata_proto::v1::PartitionOffset>| v.first().map(|o| o.offset);
            let start = leader.list_offsets(topic, &[*p], OffsetSpec::Earliest, 0).await.ok().and_then(first);
            let end = leader.list_offsets(topic, &[*p], OffsetSpec::Latest, 0).await.ok().and_then(first);
            if let (Some(start), Some(end)) = (start, end) {
                out.entry(topic.clone()).or_default().insert(*p, (start, end));
            }
        }
    }

    fn encode_all(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metadata = self.replication.metadata_watch().borrow().clone();
        let names: HashMap<u64, &str> = metadata.topics.values().map(|t| (t.id, t.name.as_str())).collect();
        let samples = self.replication.sample_raft_groups();
        let mut state = self.state.lock().map_err(|_| std::fmt::Error)?;

        // Build and cluster.
        let build =
            Labels(vec![("version", env!("CARGO_PKG_VERSION").to_owned()), ("node_id", self.node_id.to_string())]);
        gauge(encoder, "build_info", "Strata's version on this node (value 1)", [(build, 1u64)])?;
        let members = self.replication.members();
        gauge(encoder, "cluster_nodes", "Nodes the cluster was configured with", one(members.len() as u64))?;
        let registered = metadata.nodes.len() as u64;
        gauge(encoder, "cluster_nodes_registered", "Nodes registered with the controller", one(registered))?;
        let live = self.replication.live_members(LIVE_WITHIN);
        let leads_controller = live.is_some();
        gauge(
            encoder,
            "cluster_nodes_live",
            "Nodes the controller's leader heard from in the last 3 s (only the controller's leader reports it)",
            live.map(|l| (Labels(Vec::new()), l.len() as u64)),
        )?;
        gauge(
            encoder,
            "controller_leader",
            "1 when this node leads the cluster controller",
            one(u64::from(leads_controller)),
        )?;
        gauge(
            encoder,
            "controller_term",
            "The cluster controller's Raft term",
            one(self.replication.controller_term()),
        )?;
        gauge(encoder, "topics", "Topics in the cluster", one(metadata.topics.len() as u64))?;
        let partitions: u64 = metadata.topics.values().map(|t| t.replicas.len() as u64).sum();
        gauge(encoder, "partitions", "Partitions in the cluster", one(partitions))?;

        // Raft groups and logs, per topic (or partition).
        let mut topics: BTreeMap<TopicKey, TopicAgg> = BTreeMap::new();
        let mut seen = HashMap::with_capacity(samples.len());
        for s in &samples {
            if s.group == GroupId::CONTROLLER {
                continue;
            }
            let before = state.seen.get(&s.group).copied();
            if let Some((term, leader)) = before {
                state.elections += s.term.saturating_sub(term);
                if s.leader.is_some() && s.leader != leader {
                    state.leader_changes += 1;
                }
            }
            // The last leader known: X, none, then X again is no change.
            seen.insert(s.group, (s.term, s.leader.or(before.and_then(|(_, l)| l))));
            let Some(name) = names.get(&s.group.topic_id) else { continue };
            let agg = topics.entry(self.key(name, s.group.partition)).or_default();
            agg.replicas += 1;
            agg.max_term = agg.max_term.max(s.term);
            if s.leader.is_none() {
                agg.leaderless += 1;
            }
            let Ok(log) = self.logs.partition(name, s.group.partition) else { continue };
            agg.size_bytes += log.size_bytes();
            agg.traffic += log.traffic().counts();
            if s.leading {
                agg.leaders += 1;
                agg.high_watermark += log.high_watermark();
                agg.log_start += log.log_start_offset();
                if s.in_sync < s.voters {
                    agg.under_replicated += 1;
                }
                for (_, matched) in &s.followers {
                    let behind = s.last_log_index.saturating_sub(*matched);
                    agg.lag_entries += behind;
                    if behind > 0 {
                        agg.lag_bytes += log.bytes_after_entry(*matched);
                    }
                }
            }
        }
        state.seen = seen;

        let total = |f: fn(&TopicAgg) -> u64| topics.values().map(f).sum::<u64>();
        gauge(encoder, "partition_replicas", "Partition replicas this node holds", one(total(|a| a.replicas)))?;
        gauge(encoder, "partitions_leader", "Partitions this node leads", one(total(|a| a.leaders)))?;
        gauge(
            encoder,
            "partitions_leaderless",
            "Partitions with a replica here that know no leader",
            one(total(|a| a.leaderless)),
        )?;
        gauge(
            encoder,
            "partitions_under_replicated",
            "Partitions this node leads with fewer replicas in sync than it has replicas",
            one(total(|a| a.under_replicated)),
        )?;
        counter(
            encoder,
            "raft_elections",
            "Elections the partition groups on this node went through (increases of their terms)",
            one(state.elections),
        )?;
        counter(
            encoder,
            "raft_leader_changes",
            "Changes of leader seen in the partition groups on this node (sampled at each scrape)",
            one(state.leader_changes),
        )?;
        let t = self.replication.transfers();
        counter(
            encoder,
            "raft_snapshot_transfers",
            "Partition snapshots (with their log) transferred to or from this node",
            [
                (Labels(vec![("direction", "sent".into())]), t.sent.load(Ordering::Relaxed)),
                (Labels(vec![("direction", "received".into())]), t.received.load(Ordering::Relaxed)),
            ],
        )?;
        let q = self.replication.quiesce_stats();
        gauge(
            encoder,
            "raft_groups_ticking",
            "Partition groups here whose Raft timers run (groups of one voter; leaders do not heartbeat)",
            one(q.ticking.load(Ordering::Relaxed)),
        )?;
        gauge(
            encoder,
            "raft_groups_quiescent",
            "Partition groups here that are idle: no heartbeats, no election timer",
            one(q.quiet.load(Ordering::Relaxed)),
        )?;
        counter(
            encoder,
            "raft_group_wakeups",
            "Times a quiescent partition group here started its Raft timers again",
            one(q.wakeups.load(Ordering::Relaxed)),
        )?;
        counter(
            encoder,
            "raft_candidacies",
            "Times a partition replica here stood for election (a pre-vote, then the vote if a quorum would grant it)",
            one(q.candidacies.load(Ordering::Relaxed)),
        )?;
        gauge(
            encoder,
            "raft_candidacies_pending",
            "Partition replicas here standing for election or queued to (at most 64 stand at once)",
            one(q.candidacies_pending.load(Ordering::Relaxed)),
        )?;
        let rows = |f: fn(&TopicAgg) -> u64| topics.iter().map(move |(k, a)| (k.clone(), f(a))).collect::<Vec<_>>();
        gauge(encoder, "raft_term", "Highest Raft term among the topic's replicas here", rows(|a| a.max_term))?;
        gauge(
            encoder,
            "raft_follower_lag_entries",
            "Entries the followers of the partitions led here have yet to acknowledge (sum over followers)",
            rows(|a| a.lag_entries),
        )?;
        gauge(
            encoder,
            "raft_follower_lag_bytes",
            "Bytes of durable log the followers of the partitions led here have yet to acknowledge",
            rows(|a| a.lag_bytes),
        )?;
        gauge(encoder, "log_size_bytes", "Bytes of durable log of the replicas here", rows(|a| a.size_bytes))?;
        gauge(
            encoder,
            "log_high_watermark",
            "High watermark of the partitions led here (summed per topic)",
            rows(|a| a.high_watermark),
        )?;
        gauge(
            encoder,
            "log_start_offset",
            "Log start offset of the partitions led here (summed per topic)",
            rows(|a| a.log_start),
        )?;
        gauge(encoder, "topic_partitions_leader", "Partitions of the topic led here", rows(|a| a.leaders))?;
        counter(encoder, "produce_requests", "Produce batches appended here", rows(|a| a.traffic.produce_requests))?;
        counter(encoder, "produce_records", "Records produced here", rows(|a| a.traffic.produce_records))?;
        counter(encoder, "produce_bytes", "Bytes of record batches produced here", rows(|a| a.traffic.produce_bytes))?;
        counter(
            encoder,
            "fetch_requests",
            "Fetches (and subscription chunks) answered here",
            rows(|a| a.traffic.fetch_requests),
        )?;
        counter(encoder, "fetch_records", "Records fetched from here", rows(|a| a.traffic.fetch_records))?;
        counter(encoder, "fetch_bytes", "Bytes of record batches fetched from here", rows(|a| a.traffic.fetch_bytes))?;

        self.encode_groups(encoder, &state)?;

        // Connections, disk.
        gauge(
            encoder,
            "grpc_connections",
            "Open client connections (the client listener)",
            one(self.connections.open() as u64),
        )?;
        counter(
            encoder,
            "grpc_connections_accepted",
            "Client connections accepted",
            one(self.connections.accepted.load(Ordering::Relaxed)),
        )?;
        counter(
            encoder,
            "grpc_connections_refused",
            "Client connections refused at a connection limit",
            one(self.connections.refused.load(Ordering::Relaxed)),
        )?;
        if let Some(log) = &self.request_log {
            counter(
                encoder,
                "request_log_dropped",
                "Request log lines dropped because the writer fell behind",
                one(log.dropped.load(Ordering::Relaxed)),
            )?;
        }
        counter(
            encoder,
            "log_events_suppressed",
            "Warnings and errors not logged because the same message was logged too often",
            one(super::LOG_EVENTS_SUPPRESSED.load(Ordering::Relaxed)),
        )?;
        if let Some((total, free)) = super::process::disk(&self.data_dir) {
            gauge(encoder, "disk_total_bytes", "Size of the data directory's file system", one(total))?;
            gauge(encoder, "disk_free_bytes", "Bytes free for Strata on the data directory's file system", one(free))?;
        }
        Ok(())
    }

    fn encode_groups(&self, encoder: &mut DescriptorEncoder, state: &ScrapeState) -> Result<(), std::fmt::Error> {
        let mut committed: BTreeMap<GroupKey, u64> = BTreeMap::new();
        let mut lag: BTreeMap<GroupKey, u64> = BTreeMap::new();
        let (mut members, mut rebalances) = (Vec::new(), Vec::new());
        let (mut in_flight, mut redeliveries, mut dead_letters) = (Vec::new(), Vec::new(), Vec::new());
        for g in &state.groups {
            let kind = if g.share { "share" } else { "consumer" };
            members.push((Labels(vec![("group", g.group.clone()), ("kind", kind.into())]), g.members as u64));
            for (topic, n, stats) in &g.share_topics {
                let labels = Labels(vec![("group", g.group.clone()), ("topic", topic.clone())]);
                in_flight.push((labels.clone(), *n as u64));
                redeliveries.push((labels.clone(), stats.redeliveries));
                dead_letters.push((labels, stats.dead_letters));
            }
            if g.share {
                continue;
            }
            rebalances.push((Labels(vec![("group", g.group.clone())]), g.epoch));
            let mut seen = BTreeSet::new();
            for (topic, p, offset) in &g.committed {
                let key = GroupKey { group: g.group.clone(), key: self.key(topic, *p) };
                *committed.entry(key.clone()).or_default() += offset;
                if let Some((_, end)) = state.bounds.get(topic.as_str()).and_then(|b| b.get(p)) {
                    *lag.entry(key).or_default() += end.saturating_sub(*offset);
                }
                seen.insert((topic.as_str(), *p));
            }
            // Subscribed partitions without a commit: all of their log.
            for topic in &g.subscribed {
                let Some(partitions) = state.bounds.get(topic.as_str()) else { continue };
                for (p, (start, end)) in partitions {
                    if !seen.contains(&(topic.as_str(), *p)) {
                        let key = GroupKey { group: g.group.clone(), key: self.key(topic, *p) };
                        *lag.entry(key).or_default() += end.saturating_sub(*start);
                    }
                }
            }
        }
        gauge(encoder, "group_members", "Members of the groups this node coordinates", members)?;
        counter(
            encoder,
            "consumer_group_rebalances",
            "Rebalances of the consumer groups this node coordinates (their epoch)",
            rebalances,
        )?;
        gauge(
            encoder,
            "consumer_group_committed_offset",
            "Offsets the consumer groups committed (summed per topic)",
            committed,
        )?;
        gauge(
            encoder,
            "consumer_group_lag",
            "Records the consumer groups have yet to commit: end offset minus the committed offset (the log start where none is)",
            lag,
        )?;
        gauge(encoder, "share_group_in_flight", "Share-group records acquired by a consumer now", in_flight)?;
        counter(
            encoder,
            "share_group_redeliveries",
            "Share-group records made available again after a delivery (since the coordinator loaded the group)",
            redeliveries,
        )?;
        counter(
            encoder,
            "share_group_dead_letters",
            "Share-group records written to their dead-letter topic (since the coordinator loaded the group)",
            dead_letters,
        )
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_all(&mut encoder)
    }
}
