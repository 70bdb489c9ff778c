//! Reading partitions: a polling consumer and a server-streaming subscription.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use strata_proto::v1 as pb;
use strata_record::Record;
use tokio::time::Instant;

use crate::retry::{Backoff, Retry};
use crate::{Client, ClientError, FetchResult, Result};

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    Offset(u64),
    /// First record whose timestamp (ms since the epoch) is at or after this.
    Timestamp(i64),
}

/// Decodes a fetch response's batches, dropping records below `offset`.
pub(crate) fn decode_response(resp: pb::FetchResponse, offset: u64) -> Result<FetchResult> {
    let mut records = Vec::new();
    for batch in &resp.batches {
        records.extend(strata_record::decode(batch)?.into_iter().filter(|r| r.offset >= offset));
    }
    Ok(FetchResult {
        records,
        high_watermark: resp.high_watermark,
        log_start_offset: resp.log_start_offset,
        next_offset: resp.next_offset.max(offset),
    })
}

impl Client {
    /// Resolves a start position to an offset of one partition (asked of
    /// its leader, riding through a failover until the client's timeout).
    pub async fn resolve_offset(&self, topic: &str, partition: u32, start: StartOffset) -> Result<u64> {
        self.resolve_offset_by(topic, partition, start, Instant::now() + self.timeout).await
    }

    async fn resolve_offset_by(
        &self,
        topic: &str,
        partition: u32,
        start: StartOffset,
        deadline: Instant,
    ) -> Result<u64> {
        let (spec, ts) = match start {
            StartOffset::Offset(o) => return Ok(o),
            StartOffset::Earliest => (pb::OffsetSpec::Earliest, 0),
            StartOffset::Latest => (pb::OffsetSpec::Latest, 0),
            StartOffset::Timestamp(ts) => (pb::OffsetSpec::Timestamp, ts),
        };
        let offsets = self.partition_offsets(topic, partition, spec, ts, deadline).await?;
        offsets.first().map(|o| o.offset).ok_or(ClientError::Protocol("ListOffsets response without the partition"))
    }

    /// Tails a partition from `start`: a stream of records that never ends
    /// on its own (the server pushes new records as they become durable).
    ///
    /// The subscription rides through a failover: when its stream breaks
    /// (the node died, lost its connection or shut down), it is opened
    /// again at the partition's leader, looked up again, from the offset
    /// after the last record delivered (no record twice, none skipped),
    /// backing off while no leader answers. After the client's timeout
    /// without one, the stream yields [`ClientError::Unreachable`] and ends;
    /// other errors end it at once.
    pub async fn subscribe(&self, topic: &str, partition: u32, start: StartOffset) -> Result<RecordStream> {
        let deadline = Instant::now() + self.timeout;
        let offset = self.resolve_offset_by(topic, partition, start, deadline).await?;
        let inbound = self.open_subscription(topic, partition, offset, Retry::Idempotent, deadline).await?;
        let sub = Subscription {
            client: self.clone(),
            topic: topic.to_owned(),
            partition,
            next: offset,
            inbound: Some(inbound),
            opened: Instant::now(),
            buffered: VecDeque::new(),
            broken: None,
            backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(250)),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(sub, |mut sub| async move {
            let item = sub.next_record().await?;
            Some((item, sub))
        })))
    }

    async fn open_subscription(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        retry: Retry,
        deadline: Instant,
    ) -> Result<tonic::Streaming<pb::FetchResponse>> {
        let req = pb::SubscribeRequest { topic: topic.to_owned(), partition, offset, max_bytes: 0, decode: false };
        self.routed(topic, partition, retry, deadline, |node| {
            let req = req.clone();
            async move { Ok(node.consumer_rpc().subscribe(req).await?.into_inner()) }
        })
        .await
    }
}

/// A stream open this long before it broke counts as having worked.
const STREAM_WORKED: Duration = Duration::from_secs(1);

/// A subscription's state: the stream open now, and where to resume.
struct Subscription {
    client: Client,
    topic: String,
    partition: u32,
    /// Offset after the last record received (those buffered included).
    next: u64,
    inbound: Option<tonic::Streaming<pb::FetchResponse>>,
    /// When `inbound` was opened.
    opened: Instant,
    /// Records received, not yet delivered.
    buffered: VecDeque<Record>,
    /// Set while the subscription has no working stream.
    broken: Option<Broken>,
    backoff: Backoff,
    done: bool,
}

/// A subscription without a working stream: since when (the client's
/// timeout counts from there), how often it broke since then, and how.
struct Broken {
    since: Instant,
    times: u32,
    last: ClientError,
}

impl Subscription {
    async fn next_record(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some(r) = self.buffered.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            let inbound = match &mut self.inbound {
                Some(s) => s,
                None => match self.reopen().await {
                    Ok(s) => {
                        self.opened = Instant::now();
                        self.inbound.insert(s)
                    }
                    Err(e) => return Some(self.fail(e)),
                },
            };
            let broke = match inbound.message().await {
                Ok(Some(resp)) => match decode_response(resp, self.next) {
                    Ok(chunk) => {
                        self.next = chunk.next_offset;
                        self.buffered.extend(chunk.records);
                        self.broken = None;
                        self.backoff.reset();
                        continue;
                    }
                    Err(e) => return Some(self.fail(e)),
                },
                // The server never ends a subscription on its own: its node
                // is going away.
                Ok(None) => ClientError::Protocol("the subscription's stream ended"),
                // A lost connection, a node shutting down or no longer
                // leading: resumed. Anything else (the topic was deleted,
                // a partition failed, retention deleted the records the
                // stream was at) ends the subscription.
                Err(status) => {
                    let e = ClientError::from(status);
                    if !Retry::Idempotent.retries(&e) {
                        return Some(self.fail(e));
                    }
                    e
                }
            };
            tracing::debug!(topic = %self.topic, partition = self.partition, next = self.next, error = %broke, "subscription broke; resuming at the partition's leader");
            self.inbound = None;
            self.client.forget_leader(&self.topic, self.partition);
            // A stream that worked a while (an idle tail delivers nothing)
            // starts a new episode; one that broke at once goes on with the
            // last, and its deadline.
            if self.opened.elapsed() >= STREAM_WORKED {
                self.broken = None;
            }
            let broken = self.broken.get_or_insert(Broken { since: Instant::now(), times: 0, last: broke.clone() });
            broken.times += 1;
            broken.last = broke;
        }
    }

    /// Opens the stream again at the partition's leader, from the offset
    /// after the last record received; gives up at the client's timeout
    /// counted from when the stream broke.
    async fn reopen(&mut self) -> Result<tonic::Streaming<pb::FetchResponse>> {
        let (since, times, last) = match &self.broken {
            Some(b) => (b.since, b.times, b.last.clone()),
            None => (Instant::now(), 0, ClientError::Protocol("the subscription has no stream")),
        };
        let deadline = since + self.client.timeout;
        // A stream that broke again soon after it was opened: back off.
        if times > 1 && !self.backoff.wait(deadline).await {
            return Err(ClientError::Unreachable {
                what: format!("the leader of {}/{}", self.topic, self.partition),
                waited: since.elapsed(),
                attempts: times,
                last: Box::new(last),
            });
        }
        self.client.open_subscription(&self.topic, self.partition, self.next, Retry::Resume, deadline).await
    }

    fn fail(&mut self, e: ClientError) -> Result<Record> {
        self.done = true;
        Err(e)
    }
}

/// Records of a subscription, in offset order.
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<Record>> + Send>>;

/// Reads one partition by polling (fetch with long poll).
#[derive(Debug)]
pub struct PartitionConsumer {
    client: Client,
    topic: String,
    partition: u32,
    next: u64,
    /// `next` was answered by a node (not given by the caller): a node that
    /// says it is out of range is behind (a failover), not the position.
    resuming: bool,
    max_bytes: u32,
    max_wait: Duration,
}

impl PartitionConsumer {
    pub async fn new(client: Client, topic: &str, partition: u32, start: StartOffset) -> Result<Self> {
        let next = client.resolve_offset(topic, partition, start).await?;
        Ok(Self {
            client,
            topic: topic.to_owned(),
            partition,
            next,
            resuming: false,
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(500),
        })
    }

    /// How long a poll waits for new records (default 500 ms).
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Offset of the next record to be returned.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Moves the position.
    pub fn seek(&mut self, offset: u64) {
        self.next = offset;
        self.resuming = false;
    }

    /// The next records (possibly none when the wait ran out). Rides
    /// through a failover of the partition's leader, until the client's
    /// timeout.
    pub async fn poll(&mut self) -> Result<Vec<Record>> {
        let retry = if self.resuming { Retry::Resume } else { Retry::Idempotent };
        let (topic, partition) = (&self.topic, self.partition);
        let chunk =
            self.client.fetch_retrying(topic, partition, self.next, self.max_bytes, self.max_wait, retry).await?;
        self.next = chunk.next_offset;
        self.resuming = true;
        crate::trace::received(topic, partition, &chunk.records);
        Ok(chunk.records)
    }
}
