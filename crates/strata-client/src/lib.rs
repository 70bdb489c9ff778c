//! Rust client for Strata.
//!
//! - [`Client`]: connections to a cluster's nodes, with admin calls, offset
//!   lookups and raw produce/fetch. Partition requests go to the partition's
//!   leader (learnt from the cluster's metadata, refreshed on `NOT_LEADER`
//!   or when the leader cannot be reached); reads ride through a failover,
//!   retrying until the client's timeout.
//! - [`Producer`]: batches records per partition (linger, max batch bytes),
//!   compresses (lz4, zstd), retries transient failures, and resolves each
//!   record's future with its offset once the server has fsync'd it.
//! - [`PartitionConsumer`] and [`Client::subscribe`]: read a partition from an
//!   offset, the earliest/latest offset, or a timestamp.
//! - Group calls on [`Client`]: committed offsets, resets, list/describe,
//!   share-group fetch and acknowledgement; [`GroupConsumer`]: a member of a
//!   consumer group (assignment, manual or auto-commit).

mod connect;
mod consumer;
mod credentials;
mod error;
mod group_consumer;
mod groups;
mod partitioner;
mod producer;
mod retry;
pub mod trace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::v1 as pb;
use tokio::time::Instant;
use tonic::transport::Channel;

use connect::open_channel;

use retry::{Backoff, Retry};

pub use connect::{ConnectOptions, Dialer, TlsOptions};
pub use consumer::{PartitionConsumer, RecordStream, StartOffset};
pub use credentials::Credentials;
pub use error::ClientError;
pub use group_consumer::{
    GroupConsumer, GroupConsumerConfig, GroupRecord, TopicPartition, next_offsets, topic_partitions_from_proto,
    topic_partitions_to_proto,
};
pub use groups::{ResetTo, record_from_proto};
pub use pb::{Acks, TopicConfig, TopicDescription};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, RecordMetadata};
pub use strata_proto::v1 as proto;
pub use strata_record::{Compression, Header, Record};

/// Default address of a local node.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7878";
/// Largest gRPC message the client sends or accepts.
pub const GRPC_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A channel whose calls carry the client's credentials.
pub type Rpc = tonic::service::interceptor::InterceptedService<Channel, credentials::Bearer>;

/// Records fetched from one partition.
#[derive(Debug, Clone, Default)]
pub struct FetchResult {
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<Record>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// Offset to fetch next.
    pub next_offset: u64,
}

/// A connection to a cluster. Cheap to clone; clones share connections
/// (one per node) and what is known of partition leaders.
#[derive(Debug, Clone)]
pub struct Client {
    /// The node this handle talks to.
    channel: Channel,
    addr: String,
    timeout: Duration,
    router: Arc<Router>,
}

/// Where partition requests go.
#[derive(Debug, Default)]
struct Router {
    /// Addresses to ask for metadata, the bootstrap list first.
    known: Mutex<Vec<String>>,
    /// One connection per node address.
    channels: Mutex<HashMap<String, Channel>>,
    /// How connections are made.
    options: ConnectOptions,
    /// The credentials sent with every call.
    bearer: credentials::Bearer,
    /// Dropped with the last handle: the session renewal task ends.
    alive: Arc<()>,
    /// The leader's address per (topic, partition), as last learnt.
    leaders: Mutex<HashMap<(String, u32), String>>,
    /// Per topic: when its leaders were last learnt. Held while they are
    /// asked for, so that the requests of every partition whose leader
    /// moved share one metadata request.
    refreshed: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    /// Nodes that refused a connection, and when: asked for metadata only
    /// after the others, until one answers again.
    down: Mutex<HashMap<String, Instant>>,
}

impl Router {
    fn mark_down(&self, addr: &str) {
        if let Ok(mut down) = self.down.lock() {
            down.insert(addr.to_owned(), Instant::now());
        }
    }

    fn mark_up(&self, addr: &str) {
        if let Ok(mut down) = self.down.lock()
            && !down.is_empty()
        {
            down.remove(addr);
        }
    }
}

/// Back-off between attempts at a partition request that finds no leader
/// (or a stale one): from 20 ms, doubling up to [`ROUTING_BACKOFF_MAX`],
/// jittered; short enough to find a new leader soon after an election
/// (0.5-2 s).
const ROUTING_BACKOFF_FIRST: Duration = Duration::from_millis(20);
const ROUTING_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// How long a write looks for its partition's leader before the error is
/// returned (the producer then retries it on its own schedule); reads look
/// until the client's timeout.
const WRITE_ROUTING_PATIENCE: Duration = Duration::from_secs(10);
/// How long one node may take to answer a metadata request before the
/// next known node is asked.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn poisoned() -> ClientError {
    ClientError::Protocol("a client lock was poisoned by a panic")
}

impl Client {
    /// Connects to a node of a cluster: `addr` is `host:port` (or
    /// `http://host:port`), or several separated by commas (the first that
    /// answers is used; the others are asked for metadata when it is down).
    pub async fn connect(addr: &str) -> Result<Self> {
        Self::connect_with(addr, ConnectOptions::default()).await
    }

    /// As [`Client::connect`], with TLS (and, later, credentials) as
    /// `options` say.
    pub async fn connect_with(addr: &str, mut options: ConnectOptions) -> Result<Self> {
        let list: Vec<String> = addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
        // An https:// address means TLS towards every node (the addresses
        // learnt from metadata carry no scheme).
        if options.tls.is_none() && list.iter().any(|a| a.starts_with("https://")) {
            options.tls = Some(TlsOptions::default());
        }
        let router = Arc::new(Router { known: Mutex::new(list.clone()), options, ..Router::default() });
        let mut last = ClientError::InvalidAddress { addr: addr.to_owned(), reason: "no address given".into() };
        for a in &list {
            match open_channel(a, &router.options).await {
                Ok(channel) => {
                    let alive = Arc::downgrade(&router.alive);
                    credentials::start(&router.options.credentials, &router.bearer, channel.clone(), alive).await?;
                    router.channels.lock().map_err(|_| poisoned())?.insert(a.clone(), channel.clone());
                    return Ok(Self { channel, addr: a.clone(), timeout: Duration::from_secs(30), router });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A handle on the node at `addr` (connecting once per address).
    async fn to(&self, addr: &str) -> Result<Client> {
        let cached = self.router.channels.lock().map_err(|_| poisoned())?.get(addr).cloned();
        let channel = match cached {
            Some(c) => c,
            None => {
                let c = open_channel(addr, &self.router.options).await.inspect_err(|_| self.router.mark_down(addr))?;
                self.router.channels.lock().map_err(|_| poisoned())?.insert(addr.to_owned(), c.clone());
                c
            }
        };
        Ok(Self { channel, addr: addr.to_owned(), timeout: self.timeout, router: Arc::clone(&self.router) })
    }

    /// The cluster's metadata, from the first known node that answers
    /// (nodes that refused a connection lately are asked last).
    pub async fn metadata(&self, topics: &[&str]) -> Result<pb::MetadataResponse> {
        let req = pb::MetadataRequest { topics: topics.iter().map(|t| (*t).to_owned()).collect() };
        let mut candidates = vec![self.addr.clone()];
        for a in self.router.known.lock().map_err(|_| poisoned())?.iter() {
            if !candidates.contains(a) {
                candidates.push(a.clone());
            }
        }
        {
            let down = self.router.down.lock().map_err(|_| poisoned())?;
            // Stable: in the bootstrap order otherwise; of those that
            // refused, the one that did so longest ago first.
            candidates.sort_by_key(|a| down.get(a).copied());
        }
        let mut last = None;
        for addr in candidates {
            // A node that does not answer soon is skipped for the next.
            let answer = match self.to(&addr).await {
                Ok(node) => {
                    let mut request = node.request(req.clone());
                    request.set_timeout(node.timeout.min(METADATA_TIMEOUT));
                    node.admin_rpc().metadata(request).await.map_err(ClientError::from)
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(resp) => {
                    self.router.mark_up(&addr);
                    let resp = resp.into_inner();
                    let mut known = self.router.known.lock().map_err(|_| poisoned())?;
                    for b in &resp.brokers {
                        if !known.contains(&b.addr) {
                            known.push(b.addr.clone());
                        }
                    }
                    return Ok(resp);
                }
                // The topic is unknown everywhere alike: no use asking on.
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => {
                    if matches!(e, ClientError::Connect { .. }) {
                        self.router.mark_down(&addr);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Protocol("no node to ask for metadata")))
    }

    /// A digest of this node's replica of a partition up to a Raft log index
    /// (`None`: the last entry applied there).
    pub async fn partition_digest(
        &self,
        topic: &str,
        partition: u32,
        upto: Option<u64>,
    ) -> Result<pb::PartitionDigestResponse> {
        let req = pb::PartitionDigestRequest { topic: topic.to_owned(), partition, upto };
        Ok(self.admin_rpc().partition_digest(self.request(req)).await?.into_inner())
    }

    /// Whether the node this client is connected to serves clients, as its
    /// standard health service (`grpc.health.v1.Health/Check`, the whole
    /// server) says: false from the moment it starts to stop.
    pub async fn serving(&self) -> Result<bool> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.rpc_channel());
        let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
        let status = health.check(self.request(req)).await?.into_inner().status;
        Ok(status == ServingStatus::Serving as i32)
    }

    /// A handle on the node at `addr` of the same cluster (sharing this
    /// client's connections).
    pub async fn node(&self, addr: &str) -> Result<Client> {
        self.to(addr).await
    }

    /// Learns the leaders of `topic`'s partitions (a partition whose leader
    /// the answering node does not know goes to its first replica, which
    /// names the leader if it is not).
    ///
    /// Callers that ask while a refresh is in flight wait for it and use its
    /// answer: after a leader dies, the requests of all its partitions
    /// would otherwise each ask for the whole topic, again at every retry.
    async fn refresh(&self, topic: &str) -> Result<()> {
        let asked = Instant::now();
        let gate = {
            let mut gates = self.router.refreshed.lock().map_err(|_| poisoned())?;
            Arc::clone(gates.entry(topic.to_owned()).or_default())
        };
        let mut last = gate.lock().await;
        if last.is_some_and(|at| at >= asked) {
            return Ok(());
        }
        // Whatever the answer: the callers that waited retry after their
        // backoff, rather than each ask again in turn.
        let meta = self.metadata(&[topic]).await;
        *last = Some(Instant::now());
        let meta = meta?;
        let addr_of: HashMap<u64, String> = meta.brokers.into_iter().map(|b| (b.node_id, b.addr)).collect();
        let mut leaders = self.router.leaders.lock().map_err(|_| poisoned())?;
        for t in meta.topics {
            for p in t.partitions {
                let target = if p.leader != 0 { Some(p.leader) } else { p.replicas.first().copied() };
                match target.and_then(|id| addr_of.get(&id)) {
                    Some(addr) => leaders.insert((t.name.clone(), p.partition), addr.clone()),
                    None => leaders.remove(&(t.name.clone(), p.partition)),
                };
            }
        }
        Ok(())
    }

    /// A handle on the leader of a partition, as far as it is known.
    pub async fn partition_leader(&self, topic: &str, partition: u32) -> Result<Client> {
        let key = (topic.to_owned(), partition);
        let cached = self.router.leaders.lock().map_err(|_| poisoned())?.get(&key).cloned();
        let addr = match cached {
            Some(a) => a,
            None => {
                self.refresh(topic).await?;
                let learnt = self.router.leaders.lock().map_err(|_| poisoned())?.get(&key).cloned();
                learnt.unwrap_or_else(|| self.addr.clone())
            }
        };
        self.to(&addr).await
    }

    /// Forgets where a partition's leader is (the next request asks the
    /// cluster again).
    pub(crate) fn forget_leader(&self, topic: &str, partition: u32) {
        if let Ok(mut leaders) = self.router.leaders.lock() {
            leaders.remove(&(topic.to_owned(), partition));
        }
    }

    /// Runs a partition request at the partition's leader; on a failure
    /// that `retry` allows (`NOT_LEADER`, a node that cannot be reached,
    /// and for reads a connection lost mid-call), learns where the leader
    /// is, from the other nodes, and tries again, backing off (jittered),
    /// until `deadline`. Other errors are returned at once. Past the
    /// deadline, reads answer [`ClientError::Unreachable`]; writes the last
    /// error (the producer tells unsent requests from ambiguous ones by it).
    async fn routed<T, F, Fut>(&self, topic: &str, partition: u32, retry: Retry, deadline: Instant, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let key = (topic.to_owned(), partition);
        let started = Instant::now();
        let mut backoff = Backoff::new(ROUTING_BACKOFF_FIRST, ROUTING_BACKOFF_MAX);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (node_addr, result) = match self.partition_leader(topic, partition).await {
                Ok(node) => (Some(node.addr.clone()), op(node).await),
                Err(e) => (None, Err(e)),
            };
            let err = match (result, node_addr) {
                (Ok(v), node_addr) => {
                    if let Some(a) = node_addr {
                        self.router.mark_up(&a);
                    }
                    return Ok(v);
                }
                // A cached channel's refused reconnection does not say
                // where; this does.
                (Err(ClientError::Connect { addr, reason, closed }), Some(node_addr)) if addr.is_empty() => {
                    ClientError::Connect { addr: node_addr, reason, closed }
                }
                (Err(e), _) => e,
            };
            if let ClientError::Connect { addr, .. } = &err {
                self.router.mark_down(addr);
            }
            let again = retry.retries(&err);
            // A node that is unreachable, restarting or not answering in
            // time may no longer lead: ask again next time.
            let stale = matches!(err.code(), Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded));
            if again || stale {
                let mut leaders = self.router.leaders.lock().map_err(|_| poisoned())?;
                match err.leader_addr() {
                    Some(addr) => leaders.insert(key.clone(), addr.to_owned()),
                    None => leaders.remove(&key),
                };
            }
            if !again {
                return Err(err);
            }
            if !backoff.wait(deadline).await {
                if retry == Retry::Unsent {
                    return Err(err);
                }
                return Err(ClientError::Unreachable {
                    what: format!("the leader of {topic}/{partition}"),
                    waited: started.elapsed(),
                    attempts,
                    last: Box::new(err),
                });
            }
        }
    }

    /// Deadline applied to every unary call (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.timeout);
        req
    }

    /// The channel with the client's credentials on every call.
    pub(crate) fn rpc_channel(&self) -> Rpc {
        tonic::service::interceptor::InterceptedService::new(self.channel.clone(), self.router.bearer.clone())
    }

    pub(crate) fn producer_rpc(&self) -> pb::producer_client::ProducerClient<Rpc> {
        pb::producer_client::ProducerClient::new(self.rpc_channel())
            .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(GRPC_MESSAGE_LIMIT)
    }

    pub(crate) fn consumer_rpc(&self) -> pb::consumer_client::ConsumerClient<Rpc> {
        pb::consumer_client::ConsumerClient::new(self.rpc_channel())
            .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(GRPC_MESSAGE_LIMIT)
    }

    fn admin_rpc(&self) -> pb::admin_client::AdminClient<Rpc> {
        pb::admin_client::AdminClient::new(self.rpc_channel())
    }

    /// The `Security` service (users, tokens, ACLs) at this node.
    pub fn security_rpc(&self) -> pb::security_client::SecurityClient<Rpc> {
        pb::security_client::SecurityClient::new(self.rpc_channel())
    }

    /// Creates a topic with the server's default replication factor.
    pub async fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<pb::TopicDescription> {
        self.create_topic_replicated(name, partitions, None, config).await
    }

    /// Creates a topic with `replication_factor` replicas per partition.
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        config: TopicConfig,
    ) -> Result<pb::TopicDescription> {
        let req =
            pb::CreateTopicRequest { name: name.to_owned(), partitions, config: Some(config), replication_factor };
        let resp = self.admin_rpc().create_topic(self.request(req)).await?.into_inner();
        resp.topic.ok_or(ClientError::Protocol("CreateTopic response without a topic"))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = pb::DeleteTopicRequest { name: name.to_owned() };
        self.admin_rpc().delete_topic(self.request(req)).await?;
        Ok(())
    }

    pub async fn list_topics(&self) -> Result<Vec<pb::TopicDescription>> {
        let resp = self.admin_rpc().list_topics(self.request(pb::ListTopicsRequest {})).await?;
        Ok(resp.into_inner().topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription> {
        let req = pb::DescribeTopicRequest { name: name.to_owned() };
        let resp = self.admin_rpc().describe_topic(self.request(req)).await?.into_inner();
        resp.topic.ok_or(ClientError::Protocol("DescribeTopic response without a topic"))
    }

    pub async fn alter_topic_config(&self, name: &str, config: TopicConfig) -> Result<pb::TopicDescription> {
        let req = pb::AlterTopicConfigRequest { name: name.to_owned(), config: Some(config) };
        let resp = self.admin_rpc().alter_topic_config(self.request(req)).await?.into_inner();
        resp.topic.ok_or(ClientError::Protocol("AlterTopicConfig response without a topic"))
    }

    /// Grows `topic` to `count` partitions (the new total; partitions are
    /// never removed).
    pub async fn create_partitions(&self, topic: &str, count: u32) -> Result<pb::TopicDescription> {
        let req = pb::CreatePartitionsRequest { topic: topic.to_owned(), count };
        let resp = self.admin_rpc().create_partitions(self.request(req)).await?.into_inner();
        resp.topic.ok_or(ClientError::Protocol("CreatePartitions response without a topic"))
    }

    /// Offsets per partition (all partitions when `partitions` is empty).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[u32],
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<pb::PartitionOffset>> {
        let req = pb::ListOffsetsRequest {
            topic: topic.to_owned(),
            partitions: partitions.to_vec(),
            spec: spec as i32,
            timestamp_ms,
        };
        Ok(self.consumer_rpc().list_offsets(self.request(req)).await?.into_inner().offsets)
    }

    /// Offsets of one partition, asked of its leader (riding through a
    /// failover until `deadline`).
    pub(crate) async fn partition_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
        deadline: Instant,
    ) -> Result<Vec<pb::PartitionOffset>> {
        self.routed(topic, partition, Retry::Idempotent, deadline, |node| async move {
            node.list_offsets(topic, &[partition], spec, timestamp_ms).await
        })
        .await
    }

    /// Produces plain records; the server picks partitions by key when
    /// `partition` is `None`. Returns the appends per partition.
    pub async fn produce_records(
        &self,
        topic: &str,
        partition: Option<u32>,
        mut records: Vec<pb::Record>,
    ) -> Result<Vec<pb::PartitionAppend>> {
        let span = trace::send_span(topic, partition, records.len());
        if let Some((_, t)) = &span {
            for r in &mut records {
                if !r.headers.iter().any(|h| h.key == strata_record::traceparent::HEADER) {
                    let value = t.format().into_bytes().into();
                    r.headers.push(pb::Header { key: strata_record::traceparent::HEADER.to_owned(), value });
                }
            }
        }
        let req = pb::ProduceRequest { topic: topic.to_owned(), partition, records, ..Default::default() };
        let mut request = self.request(req);
        if let Some((_, t)) = &span
            && let Ok(value) = t.format().parse()
        {
            request.metadata_mut().insert(strata_record::traceparent::HEADER, value);
        }
        let result = self.producer_rpc().produce(request).await.map(|r| r.into_inner().appends).map_err(Into::into);
        if let Some((span, _)) = span {
            trace::end(span, &result);
        }
        result
    }

    /// Produces one encoded batch to a partition (at its leader), with
    /// `acks=quorum`; returns its base offset.
    pub async fn produce_batch(&self, topic: &str, partition: u32, batch: Bytes) -> Result<u64> {
        self.produce_batch_with(topic, partition, batch, Acks::Quorum).await
    }

    /// Produces one encoded batch to a partition (at its leader),
    /// acknowledged as `acks` says; returns its base offset.
    pub async fn produce_batch_with(&self, topic: &str, partition: u32, batch: Bytes, acks: Acks) -> Result<u64> {
        let req = pb::ProduceRequest {
            topic: topic.to_owned(),
            partition: Some(partition),
            batch,
            acks: acks as i32,
            ..Default::default()
        };
        let deadline = Instant::now() + WRITE_ROUTING_PATIENCE.min(self.timeout);
        self.routed(topic, partition, Retry::Unsent, deadline, |node| {
            let req = req.clone();
            async move {
                let resp = node.producer_rpc().produce(node.request(req)).await?.into_inner();
                resp.appends
                    .first()
                    .map(|a| a.base_offset)
                    .ok_or(ClientError::Protocol("Produce response without an append"))
            }
        })
        .await
    }

    /// Opens a pipelined produce stream (`Producer.ProduceStream`): requests
    /// sent on the returned sender are appended in the order sent; responses
    /// carry each request's `request_id`. Errors of single requests arrive
    /// in-band (`ProduceResponse.error`) and leave the stream open.
    pub async fn produce_stream(
        &self,
        buffer: usize,
    ) -> Result<(tokio::sync::mpsc::Sender<pb::ProduceRequest>, tonic::Streaming<pb::ProduceResponse>)> {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        let responses = self.producer_rpc().produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
        Ok((tx, responses.into_inner()))
    }

    /// One fetch: records at or after `offset`, waiting up to `max_wait` for
    /// data when there is none yet. While the partition's leader cannot be
    /// reached (a failover), tries again until the client's timeout.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchResult> {
        self.fetch_retrying(topic, partition, offset, max_bytes, max_wait, Retry::Idempotent).await
    }

    /// [`Client::fetch`], retrying the failures `retry` allows.
    pub(crate) async fn fetch_retrying(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
        retry: Retry,
    ) -> Result<FetchResult> {
        let req = pb::FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes,
            max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            decode: false,
        };
        let deadline = Instant::now() + self.timeout;
        self.routed(topic, partition, retry, deadline, |node| {
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(node.timeout + max_wait);
            async move {
                let resp = node.consumer_rpc().fetch(request).await?.into_inner();
                consumer::decode_response(resp, offset)
            }
        })
        .await
    }

    /// Starts a producer on this connection.
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::new(self.clone(), config)
    }
}
