//! The broker's OpenTelemetry spans of a produce (see `strata_raft::trace`
//! for the replicas' ones): `send <topic>` (the request, continuing the
//! caller's trace from its `traceparent` gRPC metadata or the first
//! record's `traceparent` header) and, under it, `strata.commit` per
//! partition (proposal to commit). Names and attributes follow the
//! OpenTelemetry messaging conventions. Nothing is made while tracing is
//! off.

use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanContext, SpanKind, Status as SpanStatus, Tracer};
use strata_proto::v1 as pb;
use strata_raft::trace;
use strata_record::traceparent::{HEADER, TraceParent};
use strata_storage::PartitionLog;

/// The caller's trace context: gRPC metadata first, else the first
/// record's header.
fn caller(metadata: &tonic::metadata::MetadataMap, req: &pb::ProduceRequest) -> Option<TraceParent> {
    metadata.get(HEADER).and_then(|v| TraceParent::parse(v.as_bytes())).or_else(|| {
        let header = req.records.first()?.headers.iter().find(|h| h.key == HEADER)?;
        TraceParent::parse(&header.value)
    })
}

/// `send <topic>` for a produce request (`None` while tracing is off).
pub(crate) fn produce_span(metadata: &tonic::metadata::MetadataMap, req: &pb::ProduceRequest) -> Option<BoxedSpan> {
    if !trace::enabled() {
        return None;
    }
    // Decided first: a request not traced costs no span.
    let parent = trace::head_sample(caller(metadata, req).as_ref())?;
    // A name the client chose goes into the span name only once it is a
    // valid topic name (bounded, plain characters).
    let valid = strata_storage::validate_topic_name(&req.topic).is_ok();
    let name = if valid { format!("send {}", req.topic) } else { "send".to_owned() };
    let mut attributes = vec![
        KeyValue::new("messaging.system", "strata"),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.operation.name", "produce"),
        KeyValue::new("messaging.batch.message_count", req.records.len() as i64),
    ];
    if valid {
        attributes.push(KeyValue::new("messaging.destination.name", req.topic.clone()));
    }
    if let Some(p) = req.partition {
        attributes.push(KeyValue::new("messaging.destination.partition.id", p.to_string()));
    }
    let tracer = trace::tracer();
    Some(
        tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent),
    )
}

/// `strata.commit`: one partition's batch from its proposal to its commit.
pub(crate) fn commit_span(parent: &SpanContext, log: &PartitionLog) -> BoxedSpan {
    let tracer = trace::tracer();
    tracer
        .span_builder("strata.commit")
        .with_kind(SpanKind::Internal)
        .with_attributes(trace::partition_attributes(log.topic(), log.partition()))
        .start_with_context(tracer, &trace::parent(parent))
}

/// Ends a request span with its outcome.
pub(crate) fn end<T>(span: Option<&mut BoxedSpan>, result: &Result<T, tonic::Status>) {
    let Some(span) = span else { return };
    if let Err(status) = result {
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", status.code() as i64));
        span.set_status(SpanStatus::error(status.message().to_owned()));
    }
    span.end();
}
