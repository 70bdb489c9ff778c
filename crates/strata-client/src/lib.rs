//! Rust client for Strata.
//!
//! - [`Client`]: a connection to a node, with admin calls, offset lookups and
//!   raw produce/fetch.
//! - [`Producer`]: batches records per partition (linger, max batch bytes),
//!   compresses (lz4, zstd), retries transient failures, and resolves each
//!   record's future with its offset once the server has fsync'd it.
//! - [`PartitionConsumer`] and [`Client::subscribe`]: read a partition from an
//!   offset, the earliest/latest offset, or a timestamp.

mod consumer;
mod error;
mod producer;

use std::time::Duration;

use bytes::Bytes;
use strata_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

pub use consumer::{PartitionConsumer, RecordStream, StartOffset};
pub use error::ClientError;
pub use pb::{TopicConfig, TopicDescription};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, RecordMetadata};
pub use strata_proto::v1 as proto;
pub use strata_record::{Compression, Header, Record};

/// Default address of a local node.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7878";
/// Largest gRPC message the client sends or accepts.
pub const GRPC_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

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

/// A connection to one node. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    addr: String,
    timeout: Duration,
}

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

fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

impl Client {
    /// Connects to `addr` (`host:port` or `http://host:port`).
    pub async fn connect(addr: &str) -> Result<Self> {
        let uri = endpoint_uri(addr);
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| ClientError::InvalidAddress { addr: addr.to_owned(), reason: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(8 * 1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Connect { addr: addr.to_owned(), reason: error_chain(&e) })?;
        Ok(Self { channel, addr: addr.to_owned(), timeout: Duration::from_secs(30) })
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

    pub(crate) fn producer_rpc(&self) -> pb::producer_client::ProducerClient<Channel> {
        pb::producer_client::ProducerClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(GRPC_MESSAGE_LIMIT)
    }

    pub(crate) fn consumer_rpc(&self) -> pb::consumer_client::ConsumerClient<Channel> {
        pb::consumer_client::ConsumerClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(GRPC_MESSAGE_LIMIT)
    }

    fn admin_rpc(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel.clone())
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<pb::TopicDescription> {
        let req = pb::CreateTopicRequest { name: name.to_owned(), partitions, config: Some(config) };
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

    /// Produces plain records; the server picks partitions by key when
    /// `partition` is `None`. Returns the appends per partition.
    pub async fn produce_records(
        &self,
        topic: &str,
        partition: Option<u32>,
        records: Vec<pb::Record>,
    ) -> Result<Vec<pb::PartitionAppend>> {
        let req = pb::ProduceRequest { topic: topic.to_owned(), partition, records, ..Default::default() };
        Ok(self.producer_rpc().produce(self.request(req)).await?.into_inner().appends)
    }

    /// Produces one encoded batch to a partition; returns its base offset.
    pub async fn produce_batch(&self, topic: &str, partition: u32, batch: Bytes) -> Result<u64> {
        let req =
            pb::ProduceRequest { topic: topic.to_owned(), partition: Some(partition), batch, ..Default::default() };
        let resp = self.producer_rpc().produce(self.request(req)).await?.into_inner();
        resp.appends.first().map(|a| a.base_offset).ok_or(ClientError::Protocol("Produce response without an append"))
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
    /// data when there is none yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchResult> {
        let req = pb::FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes,
            max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            decode: false,
        };
        let mut request = tonic::Request::new(req);
        request.set_timeout(self.timeout + max_wait);
        let resp = self.consumer_rpc().fetch(request).await?.into_inner();
        consumer::decode_response(resp, offset)
    }

    /// Starts a producer on this connection.
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::new(self.clone(), config)
    }
}
