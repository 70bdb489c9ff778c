//! openraft's log storage over a partition's segment log.
//!
//! Entries are the log's batches; the vote (synced) and the committed entry
//! (not synced: after a crash openraft learns it again from the leader) are
//! named state in RocksDB beside the indices. `append` returns once the
//! entries are written (so replication can read them at once) and reports
//! the flush when the fsync is done: the leader replicates while it syncs.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use strata_storage::PartitionLog;

use crate::types::{Entry, LogId, TypeConfig, Vote, batch_to_entry, entry_id, entry_to_batch, log_id};

/// Bytes read from the segments per step when openraft asks for a range.
const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;

pub(crate) const VOTE: &str = "raft.vote";
const COMMITTED: &str = "raft.committed";
/// The last entry openraft purged: it no longer reads or replicates up to
/// there. The entries stay in the log until retention deletes them (a
/// partition's snapshot *is* its log, so what a snapshot covers is still
/// data consumers read).
const PURGED: &str = "raft.purged";

/// Hints for a restart (the commit point, the applied entry) are written to
/// RocksDB at most this often: each write is a RocksDB write with its WAL
/// append, and a stale hint only means openraft learns or applies a few
/// entries again after a restart.
pub(crate) const HINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Says when a restart hint is due again (at most every `interval`,
/// [`HINT_INTERVAL`] by default).
#[derive(Clone, Debug)]
pub(crate) struct HintClock {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
}

impl Default for HintClock {
    fn default() -> Self {
        Self { interval: HINT_INTERVAL, last: None }
    }
}

impl HintClock {
    pub(crate) fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.interval) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// One partition's Raft log; cheap to clone (openraft's log reader is one).
#[derive(Clone, Debug)]
pub struct LogStore {
    log: PartitionLog,
    purged: std::sync::Arc<std::sync::Mutex<Option<LogId>>>,
    committed_hint: HintClock,
    /// Entries appended within a sampled trace (see [`crate::trace`]).
    traced: std::sync::Arc<crate::trace::TracedEntries>,
}

impl LogStore {
    /// openraft's log over `log` (loading the purge point openraft set).
    pub async fn open(log: PartitionLog) -> Result<Self, io::Error> {
        let purged = match log.load_state(PURGED).await.map_err(io_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => None,
        };
        Ok(Self {
            log,
            purged: std::sync::Arc::new(std::sync::Mutex::new(purged)),
            committed_hint: HintClock::default(),
            traced: std::sync::Arc::default(),
        })
    }

    /// The group's traced entries, shared with its connections to peers.
    pub fn with_traced(mut self, traced: std::sync::Arc<crate::trace::TracedEntries>) -> Self {
        self.traced = traced;
        self
    }

    /// A `strata.fsync` span for a traced entry (noted for replication),
    /// ended when the entry is durable here.
    fn fsync_span(&self, req: &crate::Request, term: u64, index: u64) -> Option<opentelemetry::global::BoxedSpan> {
        use opentelemetry::trace::{SpanKind, Tracer};
        let trace = req.trace.as_ref()?;
        if !crate::trace::enabled() {
            return None;
        }
        self.traced.insert(term, index, trace.0.clone());
        let mut attributes = crate::trace::partition_attributes(self.log.topic(), self.log.partition());
        attributes.push(opentelemetry::KeyValue::new("strata.raft.index", index as i64));
        let tracer = crate::trace::tracer();
        let span = tracer
            .span_builder("strata.fsync")
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(tracer, &crate::trace::parent(&trace.0));
        Some(span)
    }

    /// Writes the commit point at most every `interval` (every time: zero).
    pub fn with_hint_interval(mut self, interval: std::time::Duration) -> Self {
        self.committed_hint.interval = interval;
        self
    }

    /// The last entry openraft no longer reads: its own purge point, or the
    /// log's (entries deleted by retention or a snapshot reset).
    fn last_purged(&self) -> Option<LogId> {
        let ours = self.purged.lock().ok().and_then(|p| *p);
        let log = self.log.last_purged().map(log_id);
        ours.max(log)
    }
}

/// openraft's storage traits report `io::Error`; the message keeps ours.
pub(crate) fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

fn range_of(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (mut next, end) = range_of(&range);
        next = next.max(self.last_purged().map_or(0, |p| p.index + 1));
        let mut out = Vec::new();
        while next < end {
            let chunk = self.log.entries(next, end, READ_CHUNK_BYTES).await.map_err(io_err)?;
            if chunk.is_empty() {
                break;
            }
            for (id, batch) in chunk {
                next = id.index + 1;
                out.push(batch_to_entry(id, batch).map_err(io_err)?);
            }
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.log.load_state(VOTE).await.map_err(io_err)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(io_err),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged = self.last_purged();
        let last = match (self.log.last_entry().map(log_id), purged) {
            (Some(l), Some(p)) if p.index > l.index => Some(p),
            (None, p) => p,
            (l, _) => l,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(vote).map_err(io_err)?;
        self.log.save_state(VOTE, bytes, true).await.map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // A hint (openraft learns the commit point again from the leader):
        // an older one is as safe, so it is written at most every 100 ms.
        if !self.committed_hint.due() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&committed).map_err(io_err)?;
        self.log.stash_state(COMMITTED, &bytes).map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let saved: Option<LogId> = match self.log.load_state(COMMITTED).await.map_err(io_err)? {
            None => return Ok(None),
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
        };
        let Some(committed) = saved else { return Ok(None) };
        if self.last_purged().is_some_and(|p| p.index >= committed.index) {
            return Ok(Some(committed));
        }
        // The commit point is saved as soon as openraft learns it, which can
        // be before this replica's own copy of those entries is durable (a
        // follower hears the leader's commit point with the entries, and a
        // crash loses entries still queued for the writer). openraft re-applies
        // up to it on startup, so it is trusted only if this log holds that very
        // entry; otherwise openraft starts from what the state machine applied
        // and learns the commit point again from the leader.
        let held = self.log.entries(committed.index, committed.index + 1, 1).await.map_err(io_err)?;
        if held.first().is_some_and(|(id, _)| log_id(*id) == committed) {
            return Ok(Some(committed));
        }
        tracing::info!(
            log = ?self.log,
            %committed,
            "the saved commit point is beyond this replica's durable log; it is learnt again from the leader"
        );
        Ok(None)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batches = Vec::new();
        let mut notices = Vec::new();
        // Spans of traced entries, by the entry's position (none untraced).
        let mut spans = Vec::new();
        for entry in entries {
            let batch = entry_to_batch(&entry).map_err(io_err)?;
            batches.push((batch, entry_id(&entry.log_id)));
            notices.push(match &entry.payload {
                EntryPayload::Normal(req) => {
                    if let Some(span) = self.fsync_span(req, entry.log_id.leader_id.term, entry.log_id.index) {
                        spans.push((notices.len(), span));
                    }
                    req.on_local_flush.clone()
                }
                _ => None,
            });
        }
        let tickets = match self.log.submit_entries(batches).await {
            Ok(t) => t,
            Err(e) => {
                for n in notices.iter().flatten() {
                    n.fire(Err(e.to_string()));
                }
                return Err(io_err(e));
            }
        };
        // The core goes on at once (the entries are readable now, so the
        // leader replicates them while this replica syncs); the flush is
        // reported when the last ticket's fsync is done, and each
        // `acks=leader` proposal hears of its own entry's.
        tokio::spawn(async move {
            let mut result = Ok(());
            let mut notices = notices.into_iter();
            // A traced entry's span ends once its fsync is done (or dropped,
            // ended, on an error).
            let mut spans = spans.into_iter().peekable();
            for (i, ticket) in tickets.into_iter().enumerate() {
                let notice = notices.next().flatten();
                let _span = spans.next_if(|(at, _)| *at == i);
                match ticket.wait().await {
                    Ok(info) => {
                        if let Some(n) = notice {
                            n.fire(Ok(info));
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        for n in notice.into_iter().chain(notices.by_ref().flatten()) {
                            n.fire(Err(why.clone()));
                        }
                        result = Err(io_err(e));
                        break;
                    }
                }
            }
            callback.io_completed(result);
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        self.log.truncate(from).await.map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        if self.log.last_entry().is_none_or(|l| l.index < log_id.index) {
            // Beyond every entry held (a snapshot was installed): the log
            // itself goes on after `log_id`.
            return self.log.purge(entry_id(&log_id)).await.map_err(io_err);
        }
        // Entries openraft is done with stay readable until retention
        // deletes them; only the purge point is recorded (synced).
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(io_err)?;
        self.log.save_state(PURGED, bytes, true).await.map_err(io_err)?;
        let mut purged = self.purged.lock().map_err(|_| io::Error::other("the purge lock was poisoned"))?;
        *purged = (*purged).max(Some(log_id));
        Ok(())
    }
}
