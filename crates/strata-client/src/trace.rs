//! OpenTelemetry context propagation (W3C `traceparent`), through the
//! application's global tracer provider: with none installed, no span is
//! recorded and nothing is added to requests or records.
//!
//! - Produce ([`Client::produce_records`](crate::Client::produce_records)):
//!   a `send <topic>` span (kind producer) under the current context; its
//!   `traceparent` goes in the request's gRPC metadata (the broker's spans
//!   continue the trace) and in each record's `traceparent` header (so the
//!   records carry it to their consumers). [`Producer::send`](crate::Producer::send)
//!   puts the current context in the record's header.
//! - Consume ([`PartitionConsumer::poll`](crate::PartitionConsumer::poll)):
//!   a `receive <topic>` span (kind consumer) linked to the trace of every
//!   record that carries one; [`context_of`] gives a record's context to
//!   parent the application's processing span.

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Link, Span, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use strata_record::traceparent::{HEADER, TraceParent};

/// Most links one receive span carries (the OpenTelemetry SDK's default
/// limit).
const MAX_LINKS: usize = 128;

fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer("strata-client")
}

/// The trace context a record carries (its `traceparent` header), to
/// parent or link the application's own spans.
pub fn context_of(record: &strata_record::Record) -> Option<Context> {
    TraceParent::of_record(record).map(|t| Context::new().with_remote_span_context(t.span_context()))
}

/// The `traceparent` of the current context's span, if it is valid and
/// sampled.
pub(crate) fn current() -> Option<TraceParent> {
    TraceParent::of_span(Context::current().span().span_context()).filter(TraceParent::sampled)
}

/// Adds `traceparent` to headers that hold none.
pub(crate) fn inject_header(headers: &mut Vec<strata_record::Header>, t: &TraceParent) {
    if !headers.iter().any(|h| h.key == HEADER) {
        headers.push(strata_record::Header { key: HEADER.to_owned(), value: t.format().into() });
    }
}

/// The span of a produce request and the context it propagates (`None`:
/// no tracing in this application).
pub(crate) fn send_span(topic: &str, partition: Option<u32>, records: usize) -> Option<(BoxedSpan, TraceParent)> {
    let tracer = tracer();
    let mut attributes = vec![
        KeyValue::new("messaging.system", "strata"),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.batch.message_count", records as i64),
    ];
    if let Some(p) = partition {
        attributes.push(KeyValue::new("messaging.destination.partition.id", p.to_string()));
    }
    let span = tracer
        .span_builder(format!("send {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes(attributes)
        .start_with_context(&tracer, &Context::current());
    // Only a sampled trace is propagated: a record carries its header only
    // when the application records the trace.
    let t = TraceParent::of_span(span.span_context()).filter(TraceParent::sampled)?;
    Some((span, t))
}

/// Ends a span with a request's outcome.
pub(crate) fn end<T>(mut span: BoxedSpan, result: &Result<T, crate::ClientError>) {
    if let Err(e) = result {
        span.set_status(opentelemetry::trace::Status::error(e.to_string()));
    }
    span.end();
}

/// A `receive <topic>` span for records just fetched, linked to each
/// record's trace (when any record carries one and a tracer provider
/// records spans).
pub fn receive_span(topic: &str, partition: u32, records: &[strata_record::Record]) -> Option<BoxedSpan> {
    let links: Vec<Link> = records
        .iter()
        .filter_map(TraceParent::of_record)
        .take(MAX_LINKS)
        .map(|t| Link::with_context(t.span_context()))
        .collect();
    if links.is_empty() {
        return None;
    }
    let tracer = tracer();
    let span = tracer
        .span_builder(format!("receive {topic}"))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "strata"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.destination.partition.id", partition.to_string()),
            KeyValue::new("messaging.operation.type", "receive"),
            KeyValue::new("messaging.batch.message_count", records.len() as i64),
        ])
        .with_links(links)
        .start_with_context(&tracer, &Context::current());
    span.span_context().is_sampled().then_some(span)
}

/// Records [`receive_span`] for records a consumer just fetched.
pub(crate) fn received(topic: &str, partition: u32, records: &[strata_record::Record]) {
    if let Some(mut span) = receive_span(topic, partition, records) {
        span.end();
    }
}
