//! Reading partitions: a polling consumer and a server-streaming subscription.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use strata_proto::v1 as pb;
use strata_record::Record;

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
    /// Resolves a start position to an offset of one partition.
    pub async fn resolve_offset(&self, topic: &str, partition: u32, start: StartOffset) -> Result<u64> {
        let (spec, ts) = match start {
            StartOffset::Offset(o) => return Ok(o),
            StartOffset::Earliest => (pb::OffsetSpec::Earliest, 0),
            StartOffset::Latest => (pb::OffsetSpec::Latest, 0),
            StartOffset::Timestamp(ts) => (pb::OffsetSpec::Timestamp, ts),
        };
        let leader = self.partition_leader(topic, partition).await?;
        let offsets = leader.list_offsets(topic, &[partition], spec, ts).await?;
        offsets.first().map(|o| o.offset).ok_or(ClientError::Protocol("ListOffsets response without the partition"))
    }

    /// Tails a partition from `start`: a stream of records that never ends
    /// on its own (the server pushes new records as they become durable).
    pub async fn subscribe(&self, topic: &str, partition: u32, start: StartOffset) -> Result<RecordStream> {
        let offset = self.resolve_offset(topic, partition, start).await?;
        let req = pb::SubscribeRequest { topic: topic.to_owned(), partition, offset, max_bytes: 0, decode: false };
        let leader = self.partition_leader(topic, partition).await?;
        let inbound = leader.consumer_rpc().subscribe(req).await?.into_inner();
        let stream = inbound
            .scan(offset, |next, item| {
                let out = item.map_err(ClientError::from).and_then(|resp| {
                    let chunk = decode_response(resp, *next)?;
                    *next = chunk.next_offset;
                    Ok(chunk.records)
                });
                futures::future::ready(Some(out))
            })
            .flat_map(|chunk| {
                let items: Vec<Result<Record>> = match chunk {
                    Ok(records) => records.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(items)
            });
        Ok(Box::pin(stream))
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
    }

    /// The next records (possibly none when the wait ran out).
    pub async fn poll(&mut self) -> Result<Vec<Record>> {
        let chunk = self.client.fetch(&self.topic, self.partition, self.next, self.max_bytes, self.max_wait).await?;
        self.next = chunk.next_offset;
        Ok(chunk.records)
    }
}
