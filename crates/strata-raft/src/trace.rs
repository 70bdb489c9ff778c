//! OpenTelemetry spans of replication: a produce's trace continues through
//! every replica's append and fsync.
//!
//! Off unless the node was started with an OTLP endpoint ([`enable`]):
//! then each entry proposed within a sampled trace carries that trace's
//! context ([`crate::Request::trace`], in memory only). The leader's log
//! store notes it ([`TracedEntries`]) and records a `strata.fsync` span;
//! the leader's connection to each follower records a `strata.replicate`
//! span from sending the entry to the follower's answer, and passes that
//! span's context along with the entry (`Entry.traceparent` on the wire);
//! the follower's log store records its own `strata.fsync` under it.
//! With tracing off, an entry costs one relaxed atomic load; with it on,
//! an entry sent to a follower costs a look-up in its group's table (at
//! most 256 entries, and only while the table holds any).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::{Context, KeyValue};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: std::sync::OnceLock<opentelemetry::global::BoxedTracer> = std::sync::OnceLock::new();

/// Turns span recording on for this process (the binary does, once it has
/// installed a tracer provider).
pub fn enable() {
    tracer();
    ENABLED.store(true, Ordering::Release);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The process's tracer (the global provider's, looked up once).
pub fn tracer() -> &'static opentelemetry::global::BoxedTracer {
    TRACER.get_or_init(|| opentelemetry::global::tracer("strata"))
}

/// A context whose parent is `cx`.
pub fn parent(cx: &SpanContext) -> Context {
    Context::new().with_remote_span_context(cx.clone())
}

/// The attributes every span of a partition carries (OpenTelemetry
/// messaging conventions).
pub fn partition_attributes(topic: &str, partition: u32) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", "strata"),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
        KeyValue::new("messaging.destination.partition.id", partition.to_string()),
    ]
}

/// A trace context travelling with an entry inside this node. Entries
/// compare by their batch: the context is not part of what an entry is.
#[derive(Debug, Clone)]
pub struct EntryTrace(pub SpanContext);

impl PartialEq for EntryTrace {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for EntryTrace {}

/// Entries of one group being traced: log id (term, index) and the context
/// their spans go under, so that replication (which reads entries back from the
/// log, without it) finds it. Bounded: the newest [`TRACED_MAX`], none
/// older than [`TRACED_AGE`].
#[derive(Debug, Default)]
pub struct TracedEntries(Mutex<VecDeque<Traced>>);

/// A traced entry: (term, index), its context, when it was noted.
type Traced = ((u64, u64), SpanContext, Instant);

/// Most traced entries remembered per group.
pub const TRACED_MAX: usize = 256;
/// How long a traced entry is remembered (its replication is done by then).
pub const TRACED_AGE: Duration = Duration::from_secs(60);

impl TracedEntries {
    pub fn insert(&self, term: u64, index: u64, cx: SpanContext) {
        let Ok(mut q) = self.0.lock() else { return };
        let now = Instant::now();
        while q.front().is_some_and(|(_, _, at)| now.duration_since(*at) > TRACED_AGE) || q.len() >= TRACED_MAX {
            q.pop_front();
        }
        q.push_back(((term, index), cx, now));
    }

    /// The context entry (`term`, `index`) is traced under, if it is.
    pub fn get(&self, term: u64, index: u64) -> Option<SpanContext> {
        let q = self.0.lock().ok()?;
        q.iter().rev().find(|(id, _, _)| *id == (term, index)).map(|(_, cx, _)| cx.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().map_or(true, |q| q.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traced_entries_are_bounded_and_found_by_index() {
        let t = TracedEntries::default();
        let tp = strata_record::traceparent::TraceParent { trace_id: [1; 16], span_id: [2; 8], flags: 1 };
        for i in 0..(TRACED_MAX as u64 + 10) {
            t.insert(2, i, tp.span_context());
        }
        assert!(t.get(2, 3).is_none(), "the oldest went");
        assert!(t.get(1, TRACED_MAX as u64 + 9).is_none(), "another term's entry at that index is not it");
        assert_eq!(
            t.get(2, TRACED_MAX as u64 + 9).and_then(|c| strata_record::traceparent::TraceParent::of_span(&c)),
            Some(tp)
        );
    }
}
