//! The batching producer.
//!
//! One background task owns per-partition accumulators. A record joins its
//! partition's open batch; the batch is sealed when it reaches
//! `max_batch_bytes` or when `linger` has passed since its first record, then
//! sent as one pre-encoded (optionally compressed) batch. With the default of
//! one request in flight per partition, records of a partition are written in
//! the order they were sent; transient failures are retried with exponential
//! back-off. Every record's [`DeliveryFuture`] resolves once the server has
//! fsync'd its batch, with the record's offset.
//!
//! Retries can duplicate a batch whose acknowledgement was lost (at-least-once;
//! there is no idempotent producer yet).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use strata_record::{BatchBuilder, Compression, Record};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::partitioner::StickyPartitioner;
use crate::{Client, ClientError, Result};

/// How long a producer uses a topic's partition count before reading it
/// again (as Kafka's `metadata.max.age.ms`, 5 minutes there): partitions
/// added to a topic get records from producers within this time.
const PARTITION_COUNT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records after its first one.
    pub linger: Duration,
    /// A batch is sent once its encoded size reaches this.
    pub max_batch_bytes: usize,
    pub compression: Compression,
    /// Retries of a batch after a transient failure.
    pub retries: u32,
    /// First back-off; doubles per retry, capped at 5 s.
    pub retry_backoff: Duration,
    /// Requests in flight per partition. 1 keeps per-partition order.
    pub max_in_flight_per_partition: usize,
    /// Records accepted by `send` before it waits (back-pressure).
    pub buffer_records: usize,
    /// What an acknowledgement waits for: `Quorum` (default; fsync'd on a
    /// majority of the replicas) or `Leader` (fsync'd on the leader only:
    /// lost if the leader fails before a majority has it).
    pub acks: crate::Acks,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch_bytes: 512 * 1024,
            compression: Compression::None,
            retries: 10,
            retry_backoff: Duration::from_millis(100),
            max_in_flight_per_partition: 1,
            buffer_records: 65_536,
            acks: crate::Acks::Quorum,
        }
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
}

/// Resolves when the record is durable (or definitely failed).
#[derive(Debug)]
pub struct DeliveryFuture(oneshot::Receiver<Result<RecordMetadata>>);

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

enum Command {
    Send { topic: Arc<str>, partition: Option<u32>, record: Record, reply: oneshot::Sender<Result<RecordMetadata>> },
    Flush(oneshot::Sender<()>),
}

/// A batching, retrying producer. Clones share the background task, which
/// stops (after sending what it holds) when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Producer {
    tx: mpsc::Sender<Command>,
}

impl Producer {
    pub(crate) fn new(client: Client, config: ProducerConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.buffer_records.max(1));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let acc = Accumulator {
            client,
            config,
            queues: HashMap::new(),
            partition_counts: HashMap::new(),
            counts_read: HashMap::new(),
            sticky: StickyPartitioner::new(rand::random()),
            done_tx,
            flush_waiters: Vec::new(),
        };
        tokio::spawn(acc.run(rx, done_rx));
        Self { tx }
    }

    /// Queues a record for `topic`. `partition: None` picks one by key hash
    /// (murmur2, as Kafka), or a sticky partition for records without a key
    /// (random at first, moving on to another when a batch is sealed; see
    /// `partitioner.rs`).
    /// Returns once queued; await the future for the acknowledgement.
    /// Within an OpenTelemetry trace, the record carries the current
    /// context in its `traceparent` header (unless it has one).
    pub async fn send(&self, topic: &str, partition: Option<u32>, mut record: Record) -> Result<DeliveryFuture> {
        if let Some(t) = crate::trace::current() {
            crate::trace::inject_header(&mut record.headers, &t);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Send { topic: topic.into(), partition, record, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture(rx))
    }

    /// Sends everything queued so far and waits for every acknowledgement.
    pub async fn flush(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Flush(reply)).await.map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

struct Pending {
    reply: oneshot::Sender<Result<RecordMetadata>>,
    timestamp_ms: i64,
}

struct Open {
    builder: BatchBuilder,
    pending: Vec<Pending>,
    deadline: Instant,
}

struct Ready {
    batch: Bytes,
    pending: Vec<Pending>,
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<Open>,
    ready: VecDeque<Ready>,
    in_flight: usize,
}

type Key = (Arc<str>, u32);

struct Accumulator {
    client: Client,
    config: ProducerConfig,
    queues: HashMap<Key, PartitionQueue>,
    partition_counts: HashMap<Arc<str>, u32>,
    /// When each topic's partition count was read (it is read again after
    /// [`PARTITION_COUNT_MAX_AGE`]: topics may grow).
    counts_read: HashMap<Arc<str>, std::time::Instant>,
    /// Where records without a key go.
    sticky: StickyPartitioner,
    /// One message per finished request; bounded by the requests in flight.
    done_tx: mpsc::UnboundedSender<Key>,
    flush_waiters: Vec<oneshot::Sender<()>>,
}

impl Accumulator {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut done_rx: mpsc::UnboundedReceiver<Key>) {
        let mut closed = false;
        loop {
            let deadline = self.queues.values().filter_map(|q| q.open.as_ref().map(|o| o.deadline)).min();
            tokio::select! {
                cmd = rx.recv(), if !closed => match cmd {
                    Some(Command::Send { topic, partition, record, reply }) => self.add(topic, partition, record, reply).await,
                    Some(Command::Flush(reply)) => {
                        self.flush_waiters.push(reply);
                        self.seal_all();
                    }
                    None => {
                        closed = true;
                        self.seal_all();
                    }
                },
                Some(key) = done_rx.recv() => {
                    if let Some(q) = self.queues.get_mut(&key) {
                        q.in_flight -= 1;
                    }
                    self.dispatch(&key);
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => self.seal_expired(),
            }
            if self.idle() {
                for w in self.flush_waiters.drain(..) {
                    let _ = w.send(());
                }
                if closed {
                    return;
                }
            }
        }
    }

    fn idle(&self) -> bool {
        self.queues.values().all(|q| q.open.is_none() && q.ready.is_empty() && q.in_flight == 0)
    }

    async fn partition_count(&mut self, topic: &Arc<str>) -> Result<u32> {
        let fresh = self.counts_read.get(topic).is_some_and(|t| t.elapsed() < PARTITION_COUNT_MAX_AGE);
        if let Some(n) = self.partition_counts.get(topic)
            && fresh
        {
            return Ok(*n);
        }
        let n = match self.client.describe_topic(topic).await {
            Ok(d) => d.partition_count.max(1),
            // Keep using the count known while the topic cannot be
            // described; ask again after another max age, not on every send.
            Err(e) => {
                let known = self.partition_counts.get(topic).copied().ok_or(e)?;
                self.counts_read.insert(Arc::clone(topic), std::time::Instant::now());
                return Ok(known);
            }
        };
        self.partition_counts.insert(Arc::clone(topic), n);
        self.counts_read.insert(Arc::clone(topic), std::time::Instant::now());
        Ok(n)
    }

    async fn choose_partition(&mut self, topic: &Arc<str>, partition: Option<u32>, record: &Record) -> Result<u32> {
        if let Some(p) = partition {
            return Ok(p);
        }
        let count = self.partition_count(topic).await?;
        Ok(match &record.key {
            Some(key) => strata_record::partition_for_key(key, count),
            None => self.sticky.partition(topic, count),
        })
    }

    async fn add(
        &mut self,
        topic: Arc<str>,
        partition: Option<u32>,
        mut record: Record,
        reply: oneshot::Sender<Result<RecordMetadata>>,
    ) {
        let partition = match self.choose_partition(&topic, partition, &record).await {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if record.timestamp_ms == 0 {
            record.timestamp_ms = strata_record::now_ms();
        }
        self.sticky.added(&topic, partition, record.encoded_len_hint());
        let key = (topic, partition);
        let max = self.config.max_batch_bytes;
        let q = self.queues.entry(key.clone()).or_default();
        let full = q.open.as_ref().is_some_and(|o| o.builder.size() + record.encoded_len_hint() > max);
        if full {
            self.seal(&key);
        }
        let (linger, compression) = (self.config.linger, self.config.compression);
        let q = self.queues.entry(key.clone()).or_default();
        let open = q.open.get_or_insert_with(|| Open {
            builder: BatchBuilder::new(compression),
            pending: Vec::new(),
            deadline: Instant::now() + linger,
        });
        open.builder.push(&record);
        open.pending.push(Pending { reply, timestamp_ms: record.timestamp_ms });
        if open.builder.size() >= max {
            self.seal(&key);
        }
    }

    /// Closes the open batch of `key` and queues it for sending.
    fn seal(&mut self, key: &Key) {
        let Some(q) = self.queues.get_mut(key) else { return };
        let Some(open) = q.open.take() else { return };
        q.ready.push_back(Ready { batch: open.builder.build(), pending: open.pending });
        // Records without a key move on to another partition once a batch
        // of theirs is on its way.
        self.sticky.sealed(&key.0, key.1);
        self.dispatch(key);
    }

    fn seal_all(&mut self) {
        let keys: Vec<Key> = self.queues.keys().cloned().collect();
        for key in keys {
            self.seal(&key);
        }
    }

    fn seal_expired(&mut self) {
        let now = Instant::now();
        let keys: Vec<Key> = self
            .queues
            .iter()
            .filter(|(_, q)| q.open.as_ref().is_some_and(|o| o.deadline <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.seal(&key);
        }
    }

    fn dispatch(&mut self, key: &Key) {
        let max_in_flight = self.config.max_in_flight_per_partition.max(1);
        let Some(q) = self.queues.get_mut(key) else { return };
        while q.in_flight < max_in_flight {
            let Some(ready) = q.ready.pop_front() else { break };
            q.in_flight += 1;
            let client = self.client.clone();
            let config = self.config.clone();
            let done = self.done_tx.clone();
            let key = key.clone();
            tokio::spawn(async move {
                // Reports completion even if the send panics, so the partition's
                // in-flight slot (and every later record) is never stuck.
                let _done = DoneGuard { done, key: Some(key.clone()) };
                send_batch(&client, &config, &key, ready).await;
            });
        }
    }
}

struct DoneGuard {
    done: mpsc::UnboundedSender<Key>,
    key: Option<Key>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = self.done.send(key);
        }
    }
}

async fn send_batch(client: &Client, config: &ProducerConfig, key: &Key, ready: Ready) {
    let (topic, partition) = key;
    let mut attempt = 0u32;
    let result = loop {
        match client.produce_batch_with(topic, *partition, ready.batch.clone(), config.acks).await {
            Ok(base) => break Ok(base),
            Err(e) if e.is_retriable() && attempt < config.retries => {
                let backoff = config.retry_backoff.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(5));
                tracing::debug!(topic = %topic, partition, attempt, error = %e, "retrying produce");
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            Err(e) => break Err(e),
        }
    };
    match result {
        Ok(base) => {
            for (i, p) in ready.pending.into_iter().enumerate() {
                let _ = p.reply.send(Ok(RecordMetadata {
                    topic: Arc::clone(topic),
                    partition: *partition,
                    offset: base + i as u64,
                    timestamp_ms: p.timestamp_ms,
                }));
            }
        }
        Err(e) => {
            for p in ready.pending {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
