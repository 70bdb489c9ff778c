//! gRPC handlers: produce, fetch/subscribe/list offsets, and admin.
//!
//! Handlers validate the request completely before anything is appended, so a
//! rejected request writes nothing.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use strata_proto::v1 as pb;
use strata_record::{BatchBuilder, Compression};
use strata_storage::{LogManager, PartitionLog, ReadResult};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, Identity, Resource, identity_of};
use crate::request_log::{self, RequestLog};
use strata_raft::security::Operation;

use crate::convert;
use crate::metrics::{Metrics, Operation as Op, RequestTimer};
use crate::replication::{Pending, Replication};
use crate::status::{from_storage, invalid};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::Span as _;

/// Default and upper bound of a fetch's `max_bytes`.
pub const FETCH_MAX_BYTES_DEFAULT: usize = 1024 * 1024;
pub const FETCH_MAX_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Upper bound of a long poll.
pub const MAX_WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Produce requests in flight on one ProduceStream before it stops reading.
const STREAM_IN_FLIGHT_MAX: usize = 1024;
/// Fetched chunks buffered per subscription before the server waits.
const SUBSCRIBE_BUFFER: usize = 4;

/// Shared state of every service on a node.
#[derive(Clone)]
pub struct Services {
    logs: Arc<LogManager>,
    replication: Arc<Replication>,
    auth: Arc<Auth>,
    round_robin: Arc<AtomicU32>,
    /// Becomes true when the node shuts down: streams and long polls end.
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    /// The request log, when the node keeps one.
    request_log: Option<Arc<RequestLog>>,
}

pub(crate) fn shutting_down() -> Status {
    crate::status::status(tonic::Code::Unavailable, pb::ErrorReason::ShuttingDown, "the server is shutting down")
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn until_shutdown(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

impl Services {
    pub fn new(
        logs: Arc<LogManager>,
        replication: Arc<Replication>,
        auth: Arc<Auth>,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let round_robin = Arc::new(AtomicU32::new(0));
        Self { logs, replication, auth, round_robin, shutdown, metrics, request_log: None }
    }

    /// Writes a line per produce, fetch and subscription chunk to `log`.
    pub fn with_request_log(mut self, log: Option<Arc<RequestLog>>) -> Self {
        self.request_log = log;
        self
    }
}

/// The request log's line for a produce request that ended with `result`.
fn log_produce(
    log: Option<&RequestLog>,
    identity: &Identity,
    req: &pb::ProduceRequest,
    latency: Duration,
    result: &Result<pb::ProduceResponse, Status>,
) {
    let Some(log) = log else { return };
    let mut line = request_log::line("produce", identity, &req.topic, latency);
    line.bytes = if req.batch.is_empty() {
        req.records.iter().map(|r| (r.value.len() + r.key.as_ref().map_or(0, |k| k.len())) as u64).sum()
    } else {
        req.batch.len() as u64
    };
    match result {
        Ok(r) => {
            for a in &r.appends {
                let records = u64::from(a.record_count);
                line.parts.push(request_log::Part { partition: a.partition, offset: a.base_offset, records });
                line.records += records;
            }
        }
        Err(s) => line = line.failed(s),
    }
    log.write(&line);
}

/// Writes the request log's line of a unary produce whose handler was
/// dropped before it answered (the client reset the call or its deadline
/// passed): the records may have been written all the same.
struct Unanswered<'a> {
    /// The request log and who called (only when the node keeps a log).
    log: Option<(&'a RequestLog, Identity)>,
    req: &'a pb::ProduceRequest,
    started: Instant,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let (false, Some((log, identity))) = (self.answered, &self.log) {
            let why = Status::cancelled("the client went away before its answer; the records may have been written");
            log_produce(Some(log), identity, self.req, self.started.elapsed(), &Err(why));
        }
    }
}

impl Services {
    fn partition(&self, topic: &str, partition: u32) -> Result<PartitionLog, Status> {
        self.logs.partition(topic, partition).map_err(from_storage)
    }

    /// A topic as this node knows it: local state of each partition, its
    /// replicas, and its leader as far as this node knows.
    fn describe(&self, name: &str) -> Result<pb::TopicDescription, Status> {
        let info = self.logs.describe_topic(name).map_err(from_storage)?;
        Ok(self.with_placement(convert::topic_to_proto(&info)))
    }

    fn with_placement(&self, mut topic: pb::TopicDescription) -> pb::TopicDescription {
        for p in &mut topic.partitions {
            (p.replicas, p.leader, p.in_sync) = self.replication.placement(&topic.name, p.partition);
        }
        topic
    }

    /// Validates a produce request and turns it into one batch per partition.
    fn prepare(&self, req: &pb::ProduceRequest) -> Result<Vec<(PartitionLog, Bytes)>, Status> {
        if req.topic.starts_with(crate::groups::RESERVED_PREFIX) {
            return Err(crate::groups::reserved(&req.topic));
        }
        let count = self.logs.partition_count(&req.topic).map_err(from_storage)?;
        match (req.records.is_empty(), req.batch.is_empty()) {
            (true, true) => return Err(invalid("the produce request holds no records")),
            (false, false) => return Err(invalid("set either `records` or `batch`, not both")),
            _ => {}
        }
        if !req.batch.is_empty() {
            let Some(p) = req.partition else {
                return Err(invalid("a pre-encoded `batch` needs an explicit `partition`"));
            };
            return Ok(vec![(self.partition(&req.topic, p)?, req.batch.clone())]);
        }
        let now = strata_storage::now_ms();
        let mut groups: BTreeMap<u32, BatchBuilder> = BTreeMap::new();
        let mut no_key_partition = None;
        for record in &req.records {
            let p = match (req.partition, &record.key) {
                (Some(p), _) => p,
                (None, Some(key)) => strata_record::partition_for_key(key, count),
                (None, None) => {
                    *no_key_partition.get_or_insert_with(|| self.round_robin.fetch_add(1, Ordering::Relaxed) % count)
                }
            };
            groups
                .entry(p)
                .or_insert_with(|| BatchBuilder::new(Compression::None))
                .push(&convert::record_from_proto(record, now));
        }
        let mut out = Vec::with_capacity(groups.len());
        for (p, builder) in groups {
            let log = self.partition(&req.topic, p)?;
            let batch = builder.build();
            let limit = log.config().max_message_bytes;
            if batch.len() > limit as usize {
                return Err(from_storage(strata_storage::StorageError::BatchTooLarge {
                    topic: req.topic.clone(),
                    size: batch.len(),
                    limit,
                }));
            }
            out.push((log, batch));
        }
        Ok(out)
    }

    /// Validates every batch of a request and proposes each to its
    /// partition's Raft group, in order.
    async fn submit(&self, req: &pb::ProduceRequest, span: Option<&BoxedSpan>) -> Result<Vec<Ticket>, Status> {
        // Within a sampled trace, every entry carries the request span's
        // context (replicas record their appends under it).
        let traced = span.map(|s| s.span_context().clone()).filter(|cx| cx.is_sampled());
        let acks = pb::Acks::try_from(req.acks)
            .map_err(|_| invalid(format!("unknown acks value {} (ACKS_QUORUM = 1, ACKS_LEADER = 2)", req.acks)))?;
        let prepared = self.prepare(req)?;
        let topic_id = self.logs.partition_with_id(&req.topic, 0).map_err(from_storage)?.0;
        let mut pending = Vec::with_capacity(prepared.len());
        for (log, batch) in prepared {
            log.validate(&batch).await.map_err(from_storage)?;
            let bytes = batch.len() as u64;
            let proposed = Instant::now();
            let commit_span = traced.as_ref().map(|cx| crate::tracing_spans::commit_span(cx, &log));
            let proposal = self.replication.propose(topic_id, log.partition(), batch, acks, traced.clone()).await?;
            let commit_latency =
                (acks != pb::Acks::Leader && self.metrics.enabled()).then(|| self.metrics.commit_latency.clone());
            pending.push(Ticket { log, bytes, proposed, commit_latency, pending: proposal, commit_span });
        }
        Ok(pending)
    }
}

/// A batch proposed, and what its answer is measured with.
struct Ticket {
    log: PartitionLog,
    bytes: u64,
    proposed: Instant,
    /// `acks=quorum`: the commit latency is observed here.
    commit_latency: Option<prometheus_client::metrics::histogram::Histogram>,
    pending: Pending,
    /// Within a sampled trace: `strata.commit`, ended with the answer.
    commit_span: Option<BoxedSpan>,
}

async fn await_tickets(request_id: u64, tickets: Vec<Ticket>) -> Result<pb::ProduceResponse, Status> {
    let mut appends = Vec::with_capacity(tickets.len());
    for mut t in tickets {
        let info = t.pending.wait().await;
        if let Some(span) = t.commit_span.as_mut() {
            match &info {
                Ok(info) => span.set_attribute(opentelemetry::KeyValue::new("strata.offset", info.base_offset as i64)),
                Err(s) => span.set_status(opentelemetry::trace::Status::error(s.message().to_owned())),
            }
        }
        let info = info?;
        if let Some(h) = &t.commit_latency {
            h.observe(t.proposed.elapsed().as_secs_f64());
        }
        t.log.traffic().produced(u64::from(info.record_count), t.bytes);
        appends.push(pb::PartitionAppend {
            partition: t.log.partition(),
            base_offset: info.base_offset,
            record_count: info.record_count,
        });
    }
    Ok(pb::ProduceResponse { request_id, appends, error: None })
}

fn error_response(request_id: u64, status: &Status) -> pb::ProduceResponse {
    let reason = tonic_types::StatusExt::get_details_error_info(status).map(|i| i.reason).unwrap_or_default();
    pb::ProduceResponse {
        request_id,
        appends: Vec::new(),
        error: Some(pb::ProduceError { code: status.code() as i32, message: status.message().to_owned(), reason }),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::producer_server::Producer for Services {
    async fn produce(&self, request: Request<pb::ProduceRequest>) -> Result<Response<pb::ProduceResponse>, Status> {
        let timer = RequestTimer::start(&self.metrics, Op::produce);
        let mut unanswered = Unanswered {
            log: self.request_log.as_deref().map(|log| (log, identity_of(&request))),
            req: request.get_ref(),
            started: Instant::now(),
            answered: false,
        };
        // Traced once allowed: a caller that may not write makes no span.
        let mut span = None;
        let result = async {
            self.auth.authorize(&request, Operation::Write, Resource::Topic(&request.get_ref().topic))?;
            span = crate::tracing_spans::produce_span(request.metadata(), request.get_ref());
            let req = request.get_ref();
            let tickets = self.submit(req, span.as_ref()).await?;
            await_tickets(req.request_id, tickets).await
        }
        .await;
        unanswered.answered = true;
        if let Some((log, identity)) = &unanswered.log {
            log_produce(Some(log), identity, request.get_ref(), timer.elapsed(), &result);
        }
        timer.finish(&self.metrics, &result);
        crate::tracing_spans::end(span.as_mut(), &result);
        Ok(Response::new(result?))
    }

    type ProduceStreamStream = BoxStream<pb::ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let identity = identity_of(&request);
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_IN_FLIGHT_MAX);
        let services = self.clone();
        let in_flight = Arc::new(Semaphore::new(STREAM_IN_FLIGHT_MAX));
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    () = until_shutdown(shutdown.clone()) => Err(shutting_down()),
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
                let timer = RequestTimer::start(&services.metrics, Op::produce);
                let mut span = None;
                // Submitting here, in arrival order, fixes the offset order.
                if tx.is_closed() {
                    break;
                }
                // A credential revoked or an ACL removed meanwhile stops
                // what follows.
                let allowed = services.auth.still_valid(&identity).and_then(|()| {
                    services.auth.authorize_identity(&identity, Operation::Write, Resource::Topic(&req.topic))
                });
                match async {
                    allowed?;
                    span = crate::tracing_spans::produce_span(&metadata, &req);
                    services.submit(&req, span.as_ref()).await
                }
                .await
                {
                    Ok(tickets) => {
                        let tx = tx.clone();
                        let metrics = Arc::clone(&services.metrics);
                        // Only what the request log needs is copied.
                        let log = services.request_log.clone().map(|log| (log, identity.clone()));
                        tokio::spawn(async move {
                            let result = await_tickets(req.request_id, tickets).await;
                            if let Some((log, identity)) = &log {
                                log_produce(Some(log), identity, &req, timer.elapsed(), &result);
                            }
                            timer.finish(&metrics, &result);
                            crate::tracing_spans::end(span.as_mut(), &result);
                            let response = result.unwrap_or_else(|s| error_response(req.request_id, &s));
                            let _ = tx.send(Ok(response)).await;
                            drop(permit);
                        });
                    }
                    Err(status) => {
                        let failed = Err(status.clone());
                        log_produce(services.request_log.as_deref(), &identity, &req, timer.elapsed(), &failed);
                        timer.finish(&services.metrics, &failed);
                        crate::tracing_spans::end(span.as_mut(), &failed);
                        if tx.send(Ok(error_response(req.request_id, &status))).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn fetch_max_bytes(requested: u32) -> usize {
    match requested {
        0 => FETCH_MAX_BYTES_DEFAULT,
        n => (n as usize).min(FETCH_MAX_BYTES_LIMIT),
    }
}

/// Fixed bytes a decoded record adds to a response besides its key, value
/// and headers (offset, timestamp, field tags and lengths).
const DECODED_RECORD_OVERHEAD: usize = 32;

/// Bytes a decoded record takes in a response, about.
fn decoded_len(r: &strata_record::Record) -> usize {
    let headers: usize = r.headers.iter().map(|h| h.key.len() + h.value.len() + 8).sum();
    r.key.as_ref().map_or(0, Bytes::len) + r.value.len() + headers + DECODED_RECORD_OVERHEAD
}

/// The records of `batches` from `offset` on, decoded, about `max_bytes`
/// of them (at least one): a batch decompresses to many times its stored
/// size, so the records, not the batches read, are what is bounded. Returns
/// the records and, when they stop before the last batch's end, the offset
/// after the last record returned (a fetch may start inside a batch).
fn decode_records(batches: &[Bytes], offset: u64, max_bytes: usize) -> Result<(Vec<pb::Record>, Option<u64>), Status> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for batch in batches {
        let records = strata_record::decode(batch).map_err(|e| Status::internal(e.to_string()))?;
        for r in records.into_iter().filter(|r| r.offset >= offset) {
            let len = decoded_len(&r);
            if !out.is_empty() && bytes + len > max_bytes {
                return Ok((out, Some(r.offset)));
            }
            if len > crate::GRPC_MESSAGE_LIMIT - DECODED_RECORD_OVERHEAD {
                return Err(crate::status::status(
                    tonic::Code::ResourceExhausted,
                    pb::ErrorReason::RecordTooLarge,
                    format!(
                        "the record at offset {} decodes to {len} bytes, above the gRPC message limit of {} bytes: fetch it encoded (decode = false)",
                        r.offset,
                        crate::GRPC_MESSAGE_LIMIT
                    ),
                ));
            }
            bytes += len;
            out.push(convert::record_to_proto(r));
        }
    }
    Ok((out, None))
}

/// A fetch's answer: the batches as stored, or their records decoded, about
/// `max_bytes` of them. Compressed batches are decoded on a blocking thread,
/// not on the async workers.
async fn fetch_response(
    read: ReadResult,
    offset: u64,
    decode: bool,
    max_bytes: usize,
) -> Result<pb::FetchResponse, Status> {
    let mut response = pb::FetchResponse {
        batches: Vec::new(),
        records: Vec::new(),
        high_watermark: read.high_watermark,
        log_start_offset: read.log_start_offset,
        next_offset: read.next_offset,
    };
    if !decode {
        response.batches = read.batches;
        return Ok(response);
    }
    let compressed = read
        .batches
        .iter()
        .any(|b| strata_record::BatchHeader::parse(b).is_ok_and(|h| h.compression != Compression::None));
    let batches = read.batches;
    let (records, cut) = if compressed {
        tokio::task::spawn_blocking(move || decode_records(&batches, offset, max_bytes))
            .await
            .map_err(|e| Status::internal(format!("decoding task failed: {e}")))??
    } else {
        decode_records(&batches, offset, max_bytes)?
    };
    response.records = records;
    if let Some(next) = cut {
        response.next_offset = next;
    }
    Ok(response)
}

/// Fetching the cluster's own topics (`__strata_groups` holds every
/// group's committed offsets and members) is refused.
fn check_readable(topic: &str) -> Result<(), Status> {
    if topic.starts_with(crate::groups::RESERVED_PREFIX) {
        return Err(crate::groups::reserved(topic));
    }
    Ok(())
}

impl Services {
    /// The request log's line for a fetch (or subscription chunk).
    fn log_fetch(
        &self,
        op: &'static str,
        identity: &Identity,
        topic: &str,
        (partition, offset): (u32, u64),
        latency: Duration,
        result: Result<&pb::FetchResponse, &Status>,
    ) {
        let Some(log) = &self.request_log else { return };
        let mut line = request_log::line(op, identity, topic, latency);
        match result {
            Ok(r) => {
                let (records, bytes) = fetched(r);
                line.parts.push(request_log::Part { partition, offset, records });
                (line.records, line.bytes) = (records, bytes);
            }
            Err(s) => line = line.failed(s),
        }
        log.write(&line);
    }
}

/// Counts a fetch's answer in its partition's traffic: records (from the
/// batch headers when the batches go as stored) and bytes.
fn count_fetched(log: &PartitionLog, response: &pb::FetchResponse) {
    let (records, bytes) = fetched(response);
    log.traffic().fetched(records, bytes);
}

/// Records and bytes a fetch's answer holds (records from the batch
/// headers when the batches go as stored).
fn fetched(response: &pb::FetchResponse) -> (u64, u64) {
    if response.records.is_empty() {
        let records = response
            .batches
            .iter()
            .filter_map(|b| strata_record::BatchHeader::parse(b).ok())
            .filter(|h| !h.control)
            .map(|h| u64::from(h.record_count))
            .sum();
        (records, response.batches.iter().map(|b| b.len() as u64).sum())
    } else {
        let bytes = response.records.iter().map(|r| (r.value.len() + r.key.as_ref().map_or(0, |k| k.len())) as u64);
        (response.records.len() as u64, bytes.sum())
    }
}

impl Services {
    async fn fetch_once(&self, request: Request<pb::FetchRequest>) -> Result<pb::FetchResponse, Status> {
        self.auth.authorize(&request, Operation::Read, Resource::Topic(&request.get_ref().topic))?;
        let req = request.into_inner();
        check_readable(&req.topic)?;
        let log = self.partition(&req.topic, req.partition)?;
        let max_bytes = fetch_max_bytes(req.max_bytes);
        let mut read = log.read(req.offset, max_bytes).await.map_err(from_storage)?;
        if read.batches.is_empty() && req.max_wait_ms > 0 {
            let wait = Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT_LIMIT);
            tokio::select! {
                _ = log.wait_beyond(req.offset, wait) => {}
                () = until_shutdown(self.shutdown.clone()) => return Err(shutting_down()),
            }
            read = log.read(req.offset, max_bytes).await.map_err(from_storage)?;
        }
        let response = fetch_response(read, req.offset, req.decode, max_bytes).await?;
        count_fetched(&log, &response);
        Ok(response)
    }
}

#[tonic::async_trait]
impl pb::consumer_server::Consumer for Services {
    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let timer = RequestTimer::start(&self.metrics, Op::fetch);
        let logged = self.request_log.as_ref().map(|_| {
            let req = request.get_ref();
            (identity_of(&request), req.topic.clone(), (req.partition, req.offset))
        });
        let result = self.fetch_once(request).await;
        if let Some((identity, topic, at)) = logged {
            self.log_fetch("fetch", &identity, &topic, at, timer.elapsed(), result.as_ref());
        }
        timer.finish(&self.metrics, &result);
        Ok(Response::new(result?))
    }

    type SubscribeStream = BoxStream<pb::FetchResponse>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.auth.authorize(&request, Operation::Read, Resource::Topic(&request.get_ref().topic))?;
        let identity = identity_of(&request);
        let auth = Arc::clone(&self.auth);
        let req = request.into_inner();
        check_readable(&req.topic)?;
        let log = self.partition(&req.topic, req.partition)?;
        let max_bytes = fetch_max_bytes(req.max_bytes);
        // Watch before the first read, so no append between the two is missed.
        let mut hw = log.watch_high_watermark();
        // Fail fast on a bad starting offset, before the stream opens.
        let first = log.read(req.offset, max_bytes).await.map_err(from_storage)?;
        let (tx, rx) = mpsc::channel(SUBSCRIBE_BUFFER);
        let shutdown = self.shutdown.clone();
        let services = self.clone();
        tokio::spawn(async move {
            let mut offset = req.offset;
            let mut read = Ok(first);
            loop {
                let chunk = match read {
                    Ok(r) if r.batches.is_empty() => None,
                    Ok(r) => Some(fetch_response(r, offset, req.decode, max_bytes).await),
                    Err(e) => Some(Err(from_storage(e))),
                };
                // An ACL removed meanwhile stops what follows.
                let chunk = match chunk {
                    Some(Ok(r)) => Some(
                        auth.still_valid(&identity)
                            .and_then(|()| {
                                auth.authorize_identity(&identity, Operation::Read, Resource::Topic(&req.topic))
                            })
                            .map(|()| r),
                    ),
                    other => other,
                };
                match chunk {
                    Some(Ok(response)) => {
                        count_fetched(&log, &response);
                        let at = (req.partition, offset);
                        services.log_fetch("subscribe", &identity, &req.topic, at, Duration::ZERO, Ok(&response));
                        offset = response.next_offset;
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    None => {
                        // Any change: new data, or the partition failing.
                        let stopping = tokio::select! {
                            changed = hw.changed() => if changed.is_err() { return } else { false },
                            () = tx.closed() => return,
                            () = until_shutdown(shutdown.clone()) => true,
                        };
                        if stopping {
                            let _ = tx.send(Err(shutting_down())).await;
                            return;
                        }
                    }
                }
                hw.borrow_and_update();
                read = log.read(offset, max_bytes).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        self.auth.authorize(&request, Operation::Describe, Resource::Topic(&request.get_ref().topic))?;
        let req = request.into_inner();
        let count = self.logs.partition_count(&req.topic).map_err(from_storage)?;
        let spec = pb::OffsetSpec::try_from(req.spec).unwrap_or(pb::OffsetSpec::Unspecified);
        if spec == pb::OffsetSpec::Unspecified {
            return Err(invalid("`spec` must be EARLIEST, LATEST or TIMESTAMP"));
        }
        let partitions = if req.partitions.is_empty() { (0..count).collect() } else { req.partitions };
        let mut offsets = Vec::with_capacity(partitions.len());
        for p in partitions {
            let log = self.partition(&req.topic, p)?;
            let (offset, timestamp_ms, found) = match spec {
                pb::OffsetSpec::Earliest => (log.log_start_offset(), -1, true),
                pb::OffsetSpec::Latest => (log.high_watermark(), -1, true),
                _ => match log.offset_for_timestamp(req.timestamp_ms).await.map_err(from_storage)? {
                    Some((offset, ts)) => (offset, ts, true),
                    None => (log.high_watermark(), -1, false),
                },
            };
            offsets.push(pb::PartitionOffset { partition: p, offset, timestamp_ms, found });
        }
        Ok(Response::new(pb::ListOffsetsResponse { offsets }))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        // Kafka: CREATE on the cluster, or on the topic.
        let identity = identity_of(&request);
        if !self.auth.may(&identity, Operation::Create, Resource::Cluster) {
            self.auth.authorize_identity(&identity, Operation::Create, Resource::Topic(&request.get_ref().name))?;
        }
        let req = request.into_inner();
        let overrides = convert::overrides_from_proto(req.config);
        if req.name.starts_with(crate::groups::RESERVED_PREFIX) {
            return Err(crate::groups::reserved(&req.name));
        }
        if req.replication_factor == Some(0) {
            return Err(crate::status::status(
                tonic::Code::InvalidArgument,
                pb::ErrorReason::InvalidReplicationFactor,
                "the replication factor must be at least 1",
            ));
        }
        self.replication.create_topic(&req.name, req.partitions, req.replication_factor, overrides).await?;
        Ok(Response::new(pb::CreateTopicResponse { topic: Some(self.describe(&req.name)?) }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        self.auth.authorize(&request, Operation::Delete, Resource::Topic(&request.get_ref().name))?;
        let name = request.into_inner().name;
        if name.starts_with(crate::groups::RESERVED_PREFIX) {
            return Err(crate::groups::reserved(&name));
        }
        self.replication.delete_topic(&name).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        // Only what the caller may describe.
        let identity = identity_of(&request);
        let topics = self.logs.list_topics().map_err(from_storage)?;
        let topics = topics
            .iter()
            .filter(|t| self.auth.may(&identity, Operation::Describe, Resource::Topic(&t.name)))
            .map(|t| self.with_placement(convert::topic_to_proto(t)))
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        self.auth.authorize(&request, Operation::Describe, Resource::Topic(&request.get_ref().name))?;
        Ok(Response::new(pb::DescribeTopicResponse { topic: Some(self.describe(&request.into_inner().name)?) }))
    }

    async fn alter_topic_config(
        &self,
        request: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::AlterTopicConfigResponse>, Status> {
        self.auth.authorize(&request, Operation::AlterConfigs, Resource::Topic(&request.get_ref().name))?;
        let req = request.into_inner();
        // Retention on the groups topic would erase committed offsets.
        if req.name.starts_with(crate::groups::RESERVED_PREFIX) {
            return Err(crate::groups::reserved(&req.name));
        }
        let changes = convert::overrides_from_proto(req.config);
        if changes == strata_storage::TopicOverrides::default() {
            return Err(invalid("`config` sets no field to change"));
        }
        self.replication.alter_topic(&req.name, changes).await?;
        Ok(Response::new(pb::AlterTopicConfigResponse { topic: Some(self.describe(&req.name)?) }))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        self.auth.authorize(&request, Operation::Alter, Resource::Topic(&request.get_ref().topic))?;
        let req = request.into_inner();
        if req.topic.starts_with(crate::groups::RESERVED_PREFIX) {
            return Err(crate::groups::reserved(&req.topic));
        }
        self.replication.add_partitions(&req.topic, req.count).await?;
        Ok(Response::new(pb::CreatePartitionsResponse { topic: Some(self.describe(&req.topic)?) }))
    }

    async fn metadata(&self, request: Request<pb::MetadataRequest>) -> Result<Response<pb::MetadataResponse>, Status> {
        let identity = identity_of(&request);
        let req = request.into_inner();
        let topics = if req.topics.is_empty() {
            // Only what the caller may describe.
            let all = self.logs.list_topics().map_err(from_storage)?;
            all.iter()
                .filter(|t| self.auth.may(&identity, Operation::Describe, Resource::Topic(&t.name)))
                .map(|t| self.with_placement(convert::topic_to_proto(t)))
                .collect()
        } else {
            for name in &req.topics {
                self.auth.authorize_identity(&identity, Operation::Describe, Resource::Topic(name))?;
            }
            req.topics.iter().map(|name| self.describe(name)).collect::<Result<Vec<_>, _>>()?
        };
        let brokers =
            self.replication.brokers().into_iter().map(|(node_id, addr)| pb::Broker { node_id, addr }).collect();
        Ok(Response::new(pb::MetadataResponse {
            brokers,
            topics,
            node_id: self.replication.node_id(),
            members: self.replication.members(),
            controller_id: self.replication.controller_leader().unwrap_or(0),
            controller_term: self.replication.controller_term(),
        }))
    }

    async fn partition_digest(
        &self,
        request: Request<pb::PartitionDigestRequest>,
    ) -> Result<Response<pb::PartitionDigestResponse>, Status> {
        self.auth.authorize(&request, Operation::Describe, Resource::Topic(&request.get_ref().topic))?;
        let req = request.into_inner();
        let log = self.partition(&req.topic, req.partition)?;
        let applied = self.replication.applied_index(&req.topic, req.partition).ok_or_else(|| {
            crate::status::status(
                tonic::Code::FailedPrecondition,
                pb::ErrorReason::NotLeader,
                format!(
                    "node {} holds no replica of {} partition {}",
                    self.replication.node_id(),
                    req.topic,
                    req.partition
                ),
            )
        })?;
        let upto = req.upto.unwrap_or(applied);
        let d = log.digest(upto).await.map_err(from_storage)?;
        Ok(Response::new(pb::PartitionDigestResponse {
            node_id: self.replication.node_id(),
            upto,
            entries: d.entries,
            first_index: d.first.map_or(0, |e| e.index),
            last_index: d.last.map_or(0, |e| e.index),
            crc32c: d.crc32c,
            applied_index: applied,
        }))
    }
}
