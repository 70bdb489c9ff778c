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
use strata_record::traceparent::TraceParent;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: std::sync::OnceLock<opentelemetry::global::BoxedTracer> = std::sync::OnceLock::new();
static HEAD: std::sync::OnceLock<HeadSampling> = std::sync::OnceLock::new();

/// Which requests start (or continue) a trace on this node, decided before
/// any span is made: an untraced request costs no span at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadSampling {
    /// The share of requests without a sampled caller that are traced.
    pub ratio: f64,
    /// A caller's decision (its `traceparent`'s sampled flag) is followed.
    pub follow_parent: bool,
}

impl HeadSampling {
    /// Whether a request whose caller sent `caller` is traced, and under
    /// which parent (the caller's, or none: a new trace).
    pub fn decide(&self, caller: Option<&TraceParent>) -> Option<Context> {
        match caller {
            Some(t) if self.follow_parent => t.sampled().then(|| parent(&t.span_context())),
            _ => (self.ratio > 0.0 && (self.ratio >= 1.0 || rand::random::<f64>() < self.ratio)).then(Context::new),
        }
    }
}

/// Turns span recording on for this process (the binary does, once it has
/// installed a tracer provider whose sampler records what `head` lets
/// through).
pub fn enable(head: HeadSampling) {
    tracer();
    let _ = HEAD.set(head);
    ENABLED.store(true, Ordering::Release);
}

/// The head-sampling decision for a request (`None`: not traced, or tracing
/// is off).
pub fn head_sample(caller: Option<&TraceParent>) -> Option<Context> {
    if !enabled() {
        return None;
    }
    HEAD.get()?.decide(caller)
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
    fn head_sampling_follows_a_sampled_caller_and_samples_the_ratio_of_the_rest() {
        let sampled = TraceParent { trace_id: [1; 16], span_id: [2; 8], flags: 1 };
        let unsampled = TraceParent { flags: 0, ..sampled };
        let parent_based = HeadSampling { ratio: 0.01, follow_parent: true };
        let cx = parent_based.decide(Some(&sampled)).expect("a sampled caller is followed");
        assert_eq!(TraceParent::of_span(&cx.span().span_context().clone()), Some(sampled));
        assert!(parent_based.decide(Some(&unsampled)).is_none(), "an unsampled caller is followed too");
        let roots = (0..100_000).filter(|_| parent_based.decide(None).is_some()).count();
        assert!((700..1300).contains(&roots), "{roots} of 100,000 new traces at 1%");
        let ignore_parent = HeadSampling { ratio: 0.0, follow_parent: false };
        assert!(ignore_parent.decide(Some(&sampled)).is_none());
        assert!(HeadSampling { ratio: 1.0, follow_parent: false }.decide(Some(&unsampled)).is_some());
    }

    #[test]
    fn traced_entries_are_bounded_and_found_by_index() {
        let t = TracedEntries::default();
        let tp = TraceParent { trace_id: [1; 16], span_id: [2; 8], flags: 1 };
        for i in 0..(TRACED_MAX as u64 + 10) {
            t.insert(2, i, tp.span_context());
        }
        assert!(t.get(2, 3).is_none(), "the oldest went");
        assert!(t.get(1, TRACED_MAX as u64 + 9).is_none(), "another term's entry at that index is not it");
        assert_eq!(t.get(2, TRACED_MAX as u64 + 9).and_then(|c| TraceParent::of_span(&c)), Some(tp));
    }
}
