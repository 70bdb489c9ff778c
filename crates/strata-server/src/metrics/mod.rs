//! Prometheus metrics of a node (`prometheus-client`), served over HTTP on
//! a listener of their own ([`http`]; `--metrics-listen`).
//!
//! Two kinds of metric:
//! - measured where things happen, on the hot path: request and error
//!   counters, latency histograms ([`Metrics`]; atomics and one short lock
//!   per histogram observation), the storage layer's fsync and group-commit
//!   histograms, each partition's traffic counters;
//! - read at scrape time from the state the node keeps anyway ([`collect`]):
//!   Raft groups, logs, consumer and share groups, connections, disk and
//!   process. Nothing runs between scrapes.
//!
//! Labels stay low-cardinality: per topic by default, per partition when
//! `[metrics] partition_labels` is set; error counters by operation, gRPC
//! code and Strata reason (never by a name a client chose).

pub mod collect;
pub mod http;
pub mod process;

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use strata_proto::v1 as pb;
use tonic::Status;

/// Warnings and errors the binary's log filter dropped (rate-limited per
/// call site); reported as `strata_log_events_suppressed_total`.
pub static LOG_EVENTS_SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Metrics settings of a node.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (`--metrics-listen`); `None`: not served.
    pub listen: Option<std::net::SocketAddr>,
    /// Label per-topic series with the partition too (one series per
    /// partition: for small clusters or debugging).
    pub partition_labels: bool,
    /// The node does not start when `listen` cannot be bound; otherwise
    /// (the embedded default address) it warns and runs without metrics.
    pub required: bool,
}

/// What a request did, for the request and error counters.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Operation {
    produce,
    fetch,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: Operation,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    operation: Operation,
    /// The gRPC status code, as gRPC names it (`UNAVAILABLE`).
    code: &'static str,
    /// Strata's reason (`NOT_LEADER`), or `UNSPECIFIED`.
    reason: String,
}

/// The node's hot-path metrics. Cheap to clone. A node without a metrics
/// listener measures nothing here ([`Metrics::off`]).
#[derive(Debug, Clone)]
pub struct Metrics {
    enabled: bool,
    requests: Family<OperationLabels, Counter>,
    produce_requests: Counter,
    fetch_requests: Counter,
    errors: Family<ErrorLabels, Counter>,
    /// Seconds from a produce request's arrival to its answer.
    pub produce_latency: Histogram,
    /// Seconds from a fetch's arrival to its answer (long-poll waits
    /// included).
    pub fetch_latency: Histogram,
    /// Seconds from a batch's proposal to its commit (replicated, fsync'd
    /// on a quorum and applied on the leader; `acks=quorum` only).
    pub commit_latency: Histogram,
}

/// Buckets of the request latency histograms: 250 µs to about 16 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_25, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<OperationLabels, Counter>::default();
        let produce_requests = requests.get_or_create_owned(&OperationLabels { operation: Operation::produce });
        let fetch_requests = requests.get_or_create_owned(&OperationLabels { operation: Operation::fetch });
        Self {
            enabled: true,
            requests,
            produce_requests,
            fetch_requests,
            errors: Family::default(),
            produce_latency: Histogram::new(latency_buckets()),
            fetch_latency: Histogram::new(latency_buckets()),
            commit_latency: Histogram::new(latency_buckets()),
        }
    }
}

/// The gRPC name of a status code (`UNAVAILABLE`), a label value.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Strata's reason of a status (`NOT_LEADER`), or `UNSPECIFIED`: one of
/// the proto's enum names, never free text.
pub fn reason_name(status: &Status) -> String {
    let reason = tonic_types::StatusExt::get_details_error_info(status).map(|i| i.reason).unwrap_or_default();
    match pb::ErrorReason::from_str_name(&reason) {
        Some(r) => r.as_str_name().to_owned(),
        None => "UNSPECIFIED".to_owned(),
    }
}

impl Metrics {
    /// Metrics that measure nothing (no listener would show them).
    pub fn off() -> Self {
        Self { enabled: false, ..Self::default() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A request arrived.
    fn request(&self, operation: Operation) {
        match operation {
            Operation::produce => self.produce_requests.inc(),
            Operation::fetch => self.fetch_requests.inc(),
        };
    }

    /// A request failed with `status`.
    pub fn error(&self, operation: Operation, status: &Status) {
        let labels = ErrorLabels { operation, code: code_name(status.code()), reason: reason_name(status) };
        self.errors.get_or_create(&labels).inc();
    }

    /// Errors counted so far for `operation` and `code` (tests).
    pub fn errors_of(&self, operation: Operation, code: tonic::Code, reason: &str) -> u64 {
        let labels = ErrorLabels { operation, code: code_name(code), reason: reason.to_owned() };
        self.errors.get(&labels).map_or(0, |c| c.get())
    }

    /// Requests counted so far for `operation` (tests).
    pub fn requests_of(&self, operation: Operation) -> u64 {
        match operation {
            Operation::produce => self.produce_requests.get(),
            Operation::fetch => self.fetch_requests.get(),
        }
    }

    /// Registers the hot-path metrics (prefix `strata_`).
    fn register(&self, registry: &mut Registry, storage: &strata_storage::StorageMetrics) {
        registry.register(
            "requests",
            "Produce and fetch requests received (streamed ones each count)",
            self.requests.clone(),
        );
        registry.register(
            "request_errors",
            "Produce and fetch requests that failed, by gRPC code and Strata reason",
            self.errors.clone(),
        );
        registry.register(
            "produce_latency_seconds",
            "Seconds from a produce request's arrival to its answer",
            self.produce_latency.clone(),
        );
        registry.register(
            "fetch_latency_seconds",
            "Seconds from a fetch's arrival to its answer, long-poll waits included",
            self.fetch_latency.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "Seconds from a batch's proposal to its commit: replicated, fsync'd on a quorum, applied on the leader (acks=quorum)",
            self.commit_latency.clone(),
        );
        registry.register(
            "storage_fsync_seconds",
            "Seconds per fdatasync of a segment file",
            storage.fsync_seconds.clone(),
        );
        registry.register(
            "storage_group_commit_batches",
            "Batches made durable by one group commit",
            storage.group_commit_batches.clone(),
        );
        registry.register(
            "storage_group_commit_bytes",
            "Bytes made durable by one group commit",
            storage.group_commit_bytes.clone(),
        );
    }
}

/// Times a request (counted when it starts) and counts how it ended.
#[derive(Debug)]
#[must_use]
pub struct RequestTimer {
    operation: Operation,
    started: Instant,
}

impl RequestTimer {
    pub fn start(metrics: &Metrics, operation: Operation) -> Self {
        if metrics.enabled {
            metrics.request(operation);
        }
        Self { operation, started: Instant::now() }
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The request ended with `result`: its latency is observed, an error
    /// counted.
    pub fn finish<T>(self, metrics: &Metrics, result: &Result<T, Status>) {
        if !metrics.enabled {
            return;
        }
        let histogram = match self.operation {
            Operation::produce => &metrics.produce_latency,
            Operation::fetch => &metrics.fetch_latency,
        };
        histogram.observe(self.started.elapsed().as_secs_f64());
        if let Err(status) = result {
            metrics.error(self.operation, status);
        }
    }
}

/// The node's registry: the hot-path metrics and the scrape-time collector
/// under `strata_`, process metrics under `process_` (the name every
/// Prometheus client library uses).
pub struct Exposition {
    strata: Registry,
    process: Registry,
    collector: Arc<collect::NodeCollector>,
    /// One scrape at a time (concurrent scrapes wait rather than multiply
    /// the cost), and the last one's text: a scrape within
    /// [`SCRAPE_REUSE`] of the last gets it again.
    scraping: tokio::sync::Mutex<Option<(Instant, Arc<str>)>>,
}

/// A scrape this soon after the last one answers the last one's text:
/// however often `/metrics` is asked, the node gathers at most once a
/// second.
pub const SCRAPE_REUSE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a scrape waits for what takes a query (the groups' shards and
/// their partitions' offsets); past it the last values found are used.
pub const REFRESH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

/// OpenMetrics text, what `/metrics` answers.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Exposition {
    pub fn new(metrics: &Metrics, storage: &strata_storage::StorageMetrics, collector: collect::NodeCollector) -> Self {
        let mut strata = Registry::with_prefix("strata");
        metrics.register(&mut strata, storage);
        let collector = Arc::new(collector);
        strata.register_collector(Box::new(Arc::clone(&collector)));
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
        Self { strata, process, collector, scraping: tokio::sync::Mutex::new(None) }
    }

    /// Every metric, as OpenMetrics text. Refreshes what needs a query
    /// first (groups, their partitions' offsets; at most
    /// [`REFRESH_TIMEOUT`]), then encodes on a blocking thread (a node with
    /// thousands of partitions takes milliseconds).
    pub async fn scrape(self: &Arc<Self>) -> Arc<str> {
        let mut last = self.scraping.lock().await;
        if let Some((at, text)) = &*last
            && at.elapsed() < SCRAPE_REUSE
        {
            return Arc::clone(text);
        }
        if tokio::time::timeout(REFRESH_TIMEOUT, self.collector.refresh()).await.is_err() {
            tracing::warn!(
                "the groups' metrics took over {REFRESH_TIMEOUT:?} to gather; the last values found are served"
            );
        }
        let me = Arc::clone(self);
        let text: Arc<str> = tokio::task::spawn_blocking(move || me.encode()).await.unwrap_or_default().into();
        *last = Some((Instant::now(), Arc::clone(&text)));
        text
    }

    fn encode(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        // Writing to a String cannot fail; an encoder error would be a bug
        // in a label value, logged and the rest still sent.
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &self.strata)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &self.process))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out))
        {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}
