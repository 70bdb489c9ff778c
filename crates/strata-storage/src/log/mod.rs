//! One partition's log: segments on disk, the group-commit writer, reads,
//! recovery and retention. This module holds the handle and its state;
//! `write` the writer and syncer, `read` reads, `recovery` the opening
//! checks, `entries` the Raft-log view (entries by index, truncation,
//! purges, resets).
//!
//! Invariants:
//! - Only fsync'd bytes are visible: the high watermark (`hw`) and each
//!   segment's `durable_len` move only after `fdatasync` returned and the
//!   batches were indexed. An append is acknowledged after the same point.
//! - Offsets are contiguous from the log start offset to the high watermark;
//!   batches in a segment are back to back, each with a valid CRC32C.
//! - A partition that met corruption or a failed write refuses reads and
//!   writes until restart (recovery then decides what is safe).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strata_record::BatchHeader;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::config::LogConfig;
use crate::error::{IoContext, Result, StorageError};
use crate::files::FileCache;
use crate::index::LogIndex;
use crate::segment::{self, Segment};

mod entries;
mod read;
mod recovery;
mod write;
use entries::{Recent, RecentEntry};
use write::{SyncQueue, writer_loop};

/// Appends waiting for the writer; a full queue makes producers wait.
const APPEND_QUEUE_CAPACITY: usize = 4096;
/// Smallest read when looking for entries: room for a header or more.
const HEADER_MIN_READ: usize = 64 * 1024;
/// Upper bound of one write group.
const GROUP_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Records may carry timestamps at most this far ahead of the server's clock
/// (as Kafka's `message.timestamp.after.max.ms` default): a timestamp far in
/// the future would pin time-based retention and the time index.
pub const MAX_FUTURE_TIMESTAMP_MS: i64 = 3600 * 1000;
/// Written but not yet fsync'd bytes per partition before the writer waits.
/// Must exceed the largest batch (`MAX_MESSAGE_BYTES_LIMIT`) plus a group.
const UNSYNCED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Result of an acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub record_count: u32,
}

/// Whole batches read from the log.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Data batches only: control batches (Raft blank and membership
    /// entries) are skipped, though they take an offset each.
    pub batches: Vec<Bytes>,
    /// Where the next read continues: after the last batch looked at, data or
    /// control; the requested offset when nothing was read.
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// What [`PartitionLog::digest`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogDigest {
    pub first: Option<EntryId>,
    pub last: Option<EntryId>,
    pub entries: u64,
    /// CRC32C of the entries' bytes, in log order.
    pub crc32c: u32,
}

/// Bytes read per step while computing a digest.
const DIGEST_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// When appended data becomes visible to readers (the high watermark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Visibility {
    /// Once fsync'd: a single node without consensus.
    #[default]
    OnFlush,
    /// Once the consensus layer applied it ([`PartitionLog::set_applied`])
    /// and it is fsync'd here.
    Applied,
}

/// How far the log got: the last entry written (page cache) and the last
/// entry fsync'd and indexed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub written: Option<EntryId>,
    pub durable: Option<EntryId>,
    /// Offset after the last durable entry.
    pub durable_next_offset: u64,
}

impl Progress {
    /// Nothing is written that is not durable yet.
    pub fn is_quiet(&self) -> bool {
        self.written == self.durable
    }
}

/// A Raft log entry's identity: the term of the leader that appended it and
/// its index in the log. Every batch in a segment is one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub term: u64,
    pub index: u64,
}

/// Point-in-time description of a partition.
#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub partition: u32,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub segments: u32,
    pub size_bytes: u64,
    pub failure: Option<String>,
}

/// An append queued for the writer; resolves once the batch is durable.
#[derive(Debug)]
pub struct AppendTicket(oneshot::Receiver<Result<AppendInfo>>);

impl AppendTicket {
    pub async fn wait(self) -> Result<AppendInfo> {
        self.0.await.map_err(|_| StorageError::ShuttingDown)?
    }
}

enum Command {
    Append(AppendRequest),
    /// Rewrites the log's tail or all of it, once everything queued before
    /// is durable.
    Rewrite {
        op: Rewrite,
        reply: oneshot::Sender<Result<()>>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Rewrite {
    /// Remove the entries from this index on.
    Truncate(u64),
    /// Drop every entry; the log goes on after `last`, at `next_offset`.
    Reset { last: Option<EntryId>, next_offset: u64 },
}

struct AppendRequest {
    /// Stamped with its place when it was submitted.
    batch: Bytes,
    header: BatchHeader,
    id: EntryId,
    base_offset: u64,
    reply: oneshot::Sender<Result<AppendInfo>>,
}

/// Where the next submitted batch goes. Batches are stamped (offsets, term,
/// index) and cached when submitted, in submission order, so that the
/// consensus layer can read an entry back (and replicate it) as soon as it
/// handed it over, while the writer and syncer make it durable.
///
/// The last entry submitted is `progress.written`, updated under the same lock.
#[derive(Debug, Clone, Copy, Default)]
struct SubmitState {
    next_offset: u64,
}

struct WriterState {
    next_offset: u64,
    /// The last entry written (durable or about to be).
    last: Option<EntryId>,
    running_max_ts: i64,
    /// Bytes written to the active segment (durable or about to be).
    active_len: u64,
    /// Newest timestamp in the active segment.
    segment_max_ts: i64,
}

pub(crate) struct Inner {
    topic: String,
    partition: u32,
    dir: PathBuf,
    index: Arc<dyn LogIndex>,
    /// Open files of sealed segments (node-wide).
    files: Arc<FileCache>,
    /// fsync and group-commit histograms (node-wide).
    metrics: crate::StorageMetrics,
    /// What this partition served (the server's handlers count it).
    traffic: crate::Traffic,
    config: RwLock<LogConfig>,
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<WriterState>,
    log_start: AtomicU64,
    hw: watch::Sender<u64>,
    failure: RwLock<Option<Arc<str>>>,
    /// Written batches (and seals) waiting for the syncer, in write order.
    sync_queue: Mutex<SyncQueue>,
    sync_wakeup: tokio::sync::Notify,
    /// Bytes written but not yet synced may not exceed this many.
    unsynced_bytes: tokio::sync::Semaphore,
    writer_done: std::sync::atomic::AtomicBool,
    visibility: Visibility,
    progress: watch::Sender<Progress>,
    /// Last entry the consensus layer applied, with the offset after it.
    applied: Mutex<Option<(u64, u64)>>,
    recent: Mutex<Recent>,
    purged: Mutex<Option<EntryId>>,
    submit: tokio::sync::Mutex<SubmitState>,
    /// Held while the log start moves (retention and purges).
    log_start_moves: Mutex<()>,
    /// Readers (snapshot transfers) that need the log start to stay put.
    start_pins: std::sync::atomic::AtomicUsize,
    /// Tells the writer to take no more appends: it finishes what is queued
    /// and ends, whoever still holds a handle (see [`PartitionLog::take_writer`]).
    pub(super) closing: tokio::sync::Notify,
}

/// What every partition of a node shares.
pub(crate) struct NodeShared {
    /// Open files of sealed segments.
    pub files: Arc<FileCache>,
    pub metrics: crate::StorageMetrics,
}

/// Handle to a partition log; cheap to clone.
#[derive(Clone)]
pub struct PartitionLog {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Command>,
    writer: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// Held by a reader that needs the log start to stay put; see
/// [`PartitionLog::pin_start`].
pub struct StartPin(Arc<Inner>);

impl Drop for StartPin {
    fn drop(&mut self) {
        self.0.start_pins.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for StartPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartPin")
    }
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("topic", &self.inner.topic)
            .field("partition", &self.inner.partition)
            .finish()
    }
}

impl PartitionLog {
    /// Opens (recovering) or creates the partition in `dir`. Must be called
    /// within a tokio runtime: it starts the partition's writer task.
    /// Corruption does not fail the call: the partition opens in the failed
    /// state and reports the corruption on every request.
    pub fn open(topic: &str, partition: u32, dir: &Path, index: Arc<dyn LogIndex>, config: LogConfig) -> Result<Self> {
        Self::open_with(topic, partition, dir, index, config, Visibility::OnFlush)
    }

    /// [`PartitionLog::open`], choosing when appends become visible. The
    /// log keeps its sealed segments' files in a cache of its own, of the
    /// default size ([`crate::StorageLimits::open_files`]).
    pub fn open_with(
        topic: &str,
        partition: u32,
        dir: &Path,
        index: Arc<dyn LogIndex>,
        config: LogConfig,
        visibility: Visibility,
    ) -> Result<Self> {
        let files = FileCache::new(crate::StorageLimits::default().open_files());
        Self::open_in(
            topic,
            partition,
            dir,
            index,
            config,
            visibility,
            NodeShared { files, metrics: crate::StorageMetrics::default() },
        )
    }

    /// [`PartitionLog::open_with`], sharing the node's cache of open segment
    /// files and its storage histograms.
    pub(crate) fn open_in(
        topic: &str,
        partition: u32,
        dir: &Path,
        index: Arc<dyn LogIndex>,
        config: LogConfig,
        visibility: Visibility,
        shared: NodeShared,
    ) -> Result<Self> {
        let NodeShared { files, metrics } = shared;
        std::fs::create_dir_all(dir).at(dir)?;
        let (hw, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            topic: topic.to_owned(),
            partition,
            dir: dir.to_owned(),
            index,
            files,
            metrics,
            traffic: crate::Traffic::default(),
            config: RwLock::new(config),
            segments: RwLock::new(Vec::new()),
            writer: Mutex::new(WriterState {
                next_offset: 0,
                last: None,
                running_max_ts: i64::MIN,
                active_len: 0,
                segment_max_ts: i64::MIN,
            }),
            log_start: AtomicU64::new(0),
            hw,
            failure: RwLock::new(None),
            sync_queue: Mutex::new(SyncQueue::default()),
            sync_wakeup: tokio::sync::Notify::new(),
            unsynced_bytes: tokio::sync::Semaphore::new(UNSYNCED_BYTES_MAX),
            writer_done: std::sync::atomic::AtomicBool::new(false),
            visibility,
            progress: watch::channel(Progress::default()).0,
            applied: Mutex::new(None),
            recent: Mutex::new(Recent::default()),
            purged: Mutex::new(None),
            submit: tokio::sync::Mutex::new(SubmitState::default()),
            log_start_moves: Mutex::new(()),
            start_pins: std::sync::atomic::AtomicUsize::new(0),
            closing: tokio::sync::Notify::new(),
        });
        match inner.recover() {
            Ok(()) => {}
            Err(e @ StorageError::Corrupt { .. }) => {
                tracing::error!(error = %e, "partition refuses to serve until the corruption is repaired");
                inner.fail(&e);
            }
            Err(e) => return Err(e),
        }
        inner.reset_submit_state()?;
        let (tx, rx) = mpsc::channel(APPEND_QUEUE_CAPACITY);
        let writer = tokio::spawn(writer_loop(Arc::clone(&inner), rx));
        Ok(Self { inner, tx, writer: Arc::new(Mutex::new(Some(writer))) })
    }

    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    pub fn partition(&self) -> u32 {
        self.inner.partition
    }

    /// What this partition served on this node.
    pub fn traffic(&self) -> &crate::Traffic {
        &self.inner.traffic
    }

    /// Bytes of the log's durable segments (its size on disk, about: the
    /// active segment's unsynced tail is not counted).
    pub fn size_bytes(&self) -> u64 {
        self.inner.segments.read().map(|s| s.iter().map(|seg| seg.len()).sum()).unwrap_or(0)
    }

    /// Bytes of the durable log after entry `index` (what a follower that
    /// holds up to `index` still has to receive, as far as it is durable
    /// here). 0 when nothing after it is durable or indexed yet.
    pub fn bytes_after_entry(&self, index: u64) -> u64 {
        let Ok(Some(next)) = self.inner.index.lookup_entry_from(index + 1) else { return 0 };
        let Ok(segments) = self.inner.segments.read() else { return 0 };
        segments
            .iter()
            .filter(|s| s.base >= next.segment_base)
            .map(|s| {
                let len = s.len();
                if s.base == next.segment_base { len.saturating_sub(next.position) } else { len }
            })
            .sum()
    }

    pub fn high_watermark(&self) -> u64 {
        *self.inner.hw.borrow()
    }

    pub fn log_start_offset(&self) -> u64 {
        self.inner.log_start.load(Ordering::Acquire)
    }

    pub fn config(&self) -> LogConfig {
        self.inner.config.read().map(|c| *c).unwrap_or_default()
    }

    pub fn set_config(&self, config: LogConfig) {
        if let Ok(mut c) = self.inner.config.write() {
            *c = config;
        }
    }

    /// Appends one encoded batch (validated here), and returns once it is
    /// fsync'd. Concurrent appends share fsyncs.
    pub async fn append(&self, batch: Bytes) -> Result<AppendInfo> {
        self.submit(batch).await?.wait().await
    }

    /// Validates a batch and queues it for the writer. Batches get offsets in
    /// the order they are submitted; the ticket resolves once the batch is
    /// fsync'd. Lets a pipelined producer keep order without waiting.
    pub async fn submit(&self, batch: Bytes) -> Result<AppendTicket> {
        let header = self.validate(&batch).await?;
        self.enqueue(batch, header, None).await
    }

    /// Queues a batch as Raft entry `id` (the consensus layer's append): a
    /// data batch from a producer, or a control batch. `id` must follow the
    /// last entry (index + 1, term not lower), unless the log holds none; an
    /// entry that does not is refused with [`StorageError::EntryOutOfOrder`]
    /// (the partition keeps serving). Once this returns the entry is
    /// readable by [`PartitionLog::entries`]; the ticket resolves once it is
    /// fsync'd.
    pub async fn submit_entry(&self, batch: Bytes, id: EntryId) -> Result<AppendTicket> {
        // Validated by the leader that accepted it (control batches come from
        // the log's own consensus layer): here its checksum is checked.
        self.inner.check_failed()?;
        let header = strata_record::verify(&batch)?;
        self.enqueue(batch, header, Some(id)).await
    }

    /// [`PartitionLog::submit_entry`] for several entries, in order.
    pub async fn submit_entries(&self, entries: Vec<(Bytes, EntryId)>) -> Result<Vec<AppendTicket>> {
        let mut tickets = Vec::with_capacity(entries.len());
        for (batch, id) in entries {
            tickets.push(self.submit_entry(batch, id).await?);
        }
        Ok(tickets)
    }

    /// Checks a producer's batch as an append would (size, checksum, every
    /// record, timestamps) without appending it; returns its header. The
    /// consensus layer calls this before proposing a batch.
    pub async fn validate(&self, batch: &Bytes) -> Result<BatchHeader> {
        self.inner.check_failed()?;
        let config = self.config();
        let limit = config.max_message_bytes;
        if batch.len() > limit as usize {
            return Err(StorageError::BatchTooLarge { topic: self.inner.topic.clone(), size: batch.len(), limit });
        }
        // Decompressed, a batch may grow to a multiple of the topic's limit,
        // with a bounded ratio (no decompression bombs).
        let inflated = config.max_uncompressed_bytes();
        let header = match strata_record::BatchHeader::parse(batch)?.compression {
            // Uncompressed: a quick walk over the records, done here.
            strata_record::Compression::None => strata_record::validate_within(batch, inflated)?,
            // Decompression is CPU work that must not stall the async workers.
            _ => {
                let b = batch.clone();
                tokio::task::spawn_blocking(move || strata_record::validate_within(&b, inflated))
                    .await
                    .map_err(|e| StorageError::Index(format!("validation task failed: {e}")))??
            }
        };
        let horizon = crate::now_ms().saturating_add(MAX_FUTURE_TIMESTAMP_MS);
        if header.max_timestamp_ms > horizon {
            return Err(StorageError::TimestampInFuture {
                topic: self.inner.topic.clone(),
                timestamp_ms: header.max_timestamp_ms,
                limit_ms: MAX_FUTURE_TIMESTAMP_MS,
            });
        }
        Ok(header)
    }

    /// Places, stamps and caches a checked batch, then queues it for the
    /// writer, all in submission order.
    async fn enqueue(&self, batch: Bytes, header: BatchHeader, id: Option<EntryId>) -> Result<AppendTicket> {
        let mut submit = self.inner.submit.lock().await;
        self.inner.check_failed()?;
        let submitted = self.inner.progress.borrow().written;
        let tail = self.inner.tail(submitted);
        // No entry follows one at index u64::MAX (a crafted segment file can
        // hold one; found by fuzzing): such an append is out of order.
        let out_of_order = |id: EntryId| StorageError::EntryOutOfOrder {
            topic: self.inner.topic.clone(),
            partition: self.inner.partition,
            term: id.term,
            index: id.index,
            last: tail.map_or("(none)".into(), |l| format!("(term {}, index {})", l.term, l.index)),
        };
        let id = match id {
            // Without consensus each batch is the next entry of the same term.
            None => match tail {
                None => EntryId { term: 0, index: 0 },
                Some(l) => {
                    let index = l.index.checked_add(1).ok_or_else(|| out_of_order(l))?;
                    EntryId { index, ..l }
                }
            },
            Some(id) => {
                // A log that holds no entry (new, or purged past its end by a
                // snapshot) may start at any entry.
                let follows = submitted.is_none()
                    || tail.is_none_or(|l| l.index.checked_add(1) == Some(id.index) && id.term >= l.term);
                if !follows {
                    return Err(out_of_order(id));
                }
                id
            }
        };
        let at = strata_record::Placement { base_offset: submit.next_offset, term: id.term, log_index: id.index };
        // The log's offsets end at u64::MAX (reached only through a crafted
        // segment file, found by fuzzing): a batch that does not fit is refused.
        let next_offset = at.base_offset.checked_add(u64::from(header.offset_count())).ok_or(
            StorageError::InvalidBatch(strata_record::FormatError::OffsetOverflow {
                base_offset: at.base_offset,
                record_count: header.record_count,
            }),
        )?;
        let stamped = strata_record::Placement::of(&header);
        let batch = if stamped == at {
            batch // a follower's copy of the leader's batch is stamped already
        } else if stamped.term == id.term && stamped.log_index == id.index && id.term > 0 {
            // The leader stamped this very entry at another offset: never
            // restamp it (the replicas would disagree on offsets).
            return Err(StorageError::OffsetMismatch {
                topic: self.inner.topic.clone(),
                partition: self.inner.partition,
                index: id.index,
                stamped: stamped.base_offset,
                local: at.base_offset,
            });
        } else {
            let mut b = BytesMut::from(&batch[..]);
            strata_record::stamp(&mut b, at);
            b.freeze()
        };
        // Room in the queue first: from here to the send nothing awaits, so
        // a cancelled submit leaves no trace.
        let permit = self.tx.reserve().await.map_err(|_| StorageError::ShuttingDown)?;
        self.inner.recent.lock().map_err(|_| self.inner.poisoned())?.push(RecentEntry {
            id,
            next_offset,
            batch: batch.clone(),
        });
        let (reply, rx) = oneshot::channel();
        permit.send(Command::Append(AppendRequest { batch, header, id, base_offset: at.base_offset, reply }));
        *submit = SubmitState { next_offset };
        self.inner.progress.send_modify(|p| p.written = Some(id));
        Ok(AppendTicket(rx))
    }

    /// Removes the entries from log index `from` on, after every append
    /// queued before it is durable. Entries below the high watermark are
    /// never removed (an error says so).
    /// Must not race with appends (the consensus layer orders them).
    pub async fn truncate(&self, from: u64) -> Result<()> {
        self.rewrite(Rewrite::Truncate(from)).await
    }

    /// Drops every entry and makes the log go on after entry `last`, at
    /// offset `next_offset` (a snapshot from the leader supersedes what this
    /// replica held). Crash-safe: recovery finishes an interrupted reset.
    /// Must not race with appends.
    pub async fn reset_to(&self, last: EntryId, next_offset: u64) -> Result<()> {
        self.rewrite(Rewrite::Reset { last: Some(last), next_offset }).await
    }

    /// Like [`PartitionLog::reset_to`], but the log goes on with its very
    /// first entry (index 0), at `next_offset`.
    pub async fn reset_to_empty(&self, next_offset: u64) -> Result<()> {
        self.rewrite(Rewrite::Reset { last: None, next_offset }).await
    }

    async fn rewrite(&self, op: Rewrite) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Rewrite { op, reply }).await.map_err(|_| StorageError::ShuttingDown)?;
        rx.await.map_err(|_| StorageError::ShuttingDown)??;
        self.inner.reset_submit_state()
    }

    /// Forgets the entries up to `upto` (they are covered by a snapshot);
    /// see the Raft section of docs/ARCHITECTURE.md.
    pub async fn purge(&self, upto: EntryId) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.purge_blocking(upto))
            .await
            .map_err(|e| StorageError::Index(format!("purge task failed: {e}")))?
    }

    /// Asks retention to leave the log start where it is while the pin
    /// lives (a snapshot transfer reading the log from its start).
    pub fn pin_start(&self) -> StartPin {
        self.inner.start_pins.fetch_add(1, Ordering::AcqRel);
        StartPin(Arc::clone(&self.inner))
    }

    /// Whether a [`StartPin`] is held.
    pub fn start_pinned(&self) -> bool {
        self.inner.start_pins.load(Ordering::Acquire) > 0
    }

    /// The last entry purged, if any.
    pub fn last_purged(&self) -> Option<EntryId> {
        self.inner.last_purged()
    }

    /// With [`Visibility::Applied`]: the consensus layer applied entries up
    /// to `index`; readers see them once they are durable here.
    pub fn set_applied(&self, index: u64) -> Result<()> {
        self.inner.set_applied(index)
    }

    /// Waits until entry `index` is durable here. Returns at once when the
    /// log does not hold that entry (not written, or truncated meanwhile).
    pub async fn wait_durable(&self, index: u64) -> Result<()> {
        let mut progress = self.inner.progress.subscribe();
        loop {
            self.inner.check_failed()?;
            let p = *progress.borrow_and_update();
            if p.durable.is_some_and(|d| d.index >= index) || p.written.is_none_or(|w| w.index < index) {
                return Ok(());
            }
            if progress.changed().await.is_err() {
                return Err(StorageError::ShuttingDown);
            }
        }
    }

    /// Waits until readers see entry `index` (the high watermark passed
    /// it: applied, and durable here), and returns the high watermark. A
    /// leader applies an entry once a majority holds it, which need not
    /// include itself, so its high watermark may be behind what it applied
    /// until its own fsync. Returns at once when the entry was purged; an
    /// entry this log does not hold is an error.
    pub async fn wait_visible(&self, index: u64) -> Result<u64> {
        let Some(next_offset) = self.inner.next_offset_after(index)? else {
            if self.last_purged().is_some_and(|p| p.index >= index) {
                return Ok(self.high_watermark());
            }
            return Err(self.inner.internal(&format!("entry {index} is not in the log")));
        };
        let mut hw = self.inner.hw.subscribe();
        loop {
            self.inner.check_failed()?;
            let now = *hw.borrow_and_update();
            if now >= next_offset {
                return Ok(now);
            }
            if hw.changed().await.is_err() {
                return Err(StorageError::ShuttingDown);
            }
        }
    }

    /// How far writing and syncing got.
    pub fn progress(&self) -> Progress {
        *self.inner.progress.borrow()
    }

    /// Small durable state of the consensus layer (vote, applied entry...).
    pub async fn load_state(&self, name: &'static str) -> Result<Option<Vec<u8>>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.state(name))
            .await
            .map_err(|e| StorageError::Index(format!("state task failed: {e}")))?
    }

    /// Stores `value` under `name` without a sync, on the calling thread: a
    /// memtable insert and a WAL append (no fsync), cheap enough for the
    /// consensus layer's hot path (the applied entry, the commit point).
    pub fn stash_state(&self, name: &'static str, value: &[u8]) -> Result<()> {
        self.inner.index.put_state(name, value, false)
    }

    /// Stores `value` under `name`; with `sync`, durable when this returns.
    pub async fn save_state(&self, name: &'static str, value: Vec<u8>, sync: bool) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.index.put_state(name, &value, sync))
            .await
            .map_err(|e| StorageError::Index(format!("state task failed: {e}")))?
    }

    /// Durable entries with log index in `[start, end)`, in order, about
    /// `max_bytes` worth (at least one entry when `start` is held).
    pub async fn entries(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<(EntryId, Bytes)>> {
        // Recent entries come from memory, without a hop to a blocking thread.
        if let Some(found) = self.inner.cached_entries(start, end, max_bytes)? {
            return Ok(found);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.entries_blocking(start, end, max_bytes))
            .await
            .map_err(|e| StorageError::Index(format!("read task failed: {e}")))?
    }

    /// A digest of the entries up to log index `upto` (inclusive) that this
    /// log holds: replicas whose digests agree hold the same entries, byte
    /// for byte (offsets, terms and indices are in the bytes). Reads every
    /// entry once: an administrative check, not a hot-path call.
    pub async fn digest(&self, upto: u64) -> Result<LogDigest> {
        let mut digest = LogDigest::default();
        let mut next = self.last_purged().map_or(0, |p| p.index + 1);
        while next <= upto {
            let chunk = self.entries(next, upto.saturating_add(1), DIGEST_CHUNK_BYTES).await?;
            let Some((last, _)) = chunk.last() else { break };
            next = last.index + 1;
            for (id, batch) in chunk {
                digest.first.get_or_insert(id);
                digest.last = Some(id);
                digest.entries += 1;
                digest.crc32c = crc32c::crc32c_append(digest.crc32c, &batch);
            }
        }
        Ok(digest)
    }

    /// The last entry written (durable or about to be).
    pub fn last_entry(&self) -> Option<EntryId> {
        self.inner.writer.lock().ok().and_then(|w| w.last)
    }

    /// Reads whole batches starting with the one holding `offset`, about
    /// `max_bytes` worth (at least one batch when data is available).
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.read_blocking(offset, max_bytes))
            .await
            .map_err(|e| StorageError::Index(format!("read task failed: {e}")))?
    }

    /// Waits until the high watermark passes `offset`, up to `timeout`.
    /// Returns the high watermark.
    pub async fn wait_beyond(&self, offset: u64, timeout: Duration) -> u64 {
        let mut rx = self.inner.hw.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|hw| *hw > offset)).await;
        self.high_watermark()
    }

    /// A receiver that sees every high watermark change, and is also woken
    /// when the partition fails or closes.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.inner.hw.subscribe()
    }

    /// First offset whose record timestamp is >= `ts`, with that timestamp.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.offset_for_timestamp(ts))
            .await
            .map_err(|e| StorageError::Index(format!("lookup task failed: {e}")))?
    }

    /// Deletes segments that fall outside the retention limits. Blocking.
    /// A replicated log ([`Visibility::Applied`]) is left alone: its
    /// consensus layer asks [`PartitionLog::retention_cut`] and purges.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        self.inner.apply_retention(now_ms)
    }

    /// With [`Visibility::Applied`]: the last entry of the sealed segments
    /// that fall outside the retention limits (`None`: none do). Purging up
    /// to it ([`PartitionLog::purge`]) deletes those segments. Blocking.
    pub fn retention_cut(&self, now_ms: i64) -> Result<Option<EntryId>> {
        self.inner.retention_cut(now_ms)
    }

    pub fn status(&self) -> PartitionStatus {
        let (segments, size_bytes) =
            self.inner.segments.read().map(|s| (s.len() as u32, s.iter().map(|s| s.len()).sum())).unwrap_or_default();
        PartitionStatus {
            partition: self.inner.partition,
            log_start_offset: self.log_start_offset(),
            high_watermark: self.high_watermark(),
            segments,
            size_bytes,
            failure: self.inner.failure().map(|f| f.to_string()),
        }
    }

    /// Refuses every later request (used when the topic is deleted).
    pub fn close(&self, reason: &str) {
        self.inner.set_failure(reason.into());
    }

    /// Closes the log to appends and returns the writer task, which ends
    /// once every append queued before is done: a handle still held
    /// elsewhere (a request or Raft stream that has not ended yet) cannot
    /// keep it waiting; later appends fail with `ShuttingDown`. `None` after
    /// the first call.
    pub fn take_writer(&self) -> Option<tokio::task::JoinHandle<()>> {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if writer.is_some() {
            // A permit if the writer is busy: it sees it at its next wait.
            self.inner.closing.notify_one();
        }
        writer
    }
}

impl Inner {
    fn failure(&self) -> Option<Arc<str>> {
        self.failure.read().ok().and_then(|f| f.clone())
    }

    fn set_failure(&self, reason: Arc<str>) {
        if let Ok(mut f) = self.failure.write()
            && f.is_none()
        {
            *f = Some(reason);
        }
        // Wake subscriptions, long polls and waiters so that they see the failure.
        self.hw.send_modify(|_| {});
        self.progress.send_modify(|_| {});
    }

    /// An internal invariant broke (a poisoned lock, a missing segment): the
    /// partition refuses to serve, and the error says which one.
    fn internal(&self, what: &str) -> StorageError {
        StorageError::PartitionFailed { topic: self.topic.clone(), partition: self.partition, reason: what.into() }
    }

    fn poisoned(&self) -> StorageError {
        self.internal("an internal lock was poisoned by a panic")
    }

    /// The partition stops serving. The reason clients see names no file
    /// (the error in full is logged where it happened).
    fn fail(&self, error: &StorageError) {
        self.set_failure(error.client_message().into());
    }

    fn check_failed(&self) -> Result<()> {
        match self.failure() {
            None => Ok(()),
            Some(reason) => {
                Err(StorageError::PartitionFailed { topic: self.topic.clone(), partition: self.partition, reason })
            }
        }
    }

    fn corrupt(&self, file: &Path, position: u64, detail: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            topic: self.topic.clone(),
            partition: self.partition,
            file: file.to_owned(),
            position,
            detail: detail.into(),
        }
    }

    fn segments(&self) -> Result<Vec<Arc<Segment>>> {
        self.segments.read().map(|s| s.clone()).map_err(|_| self.poisoned())
    }

    // ----- retention -----------------------------------------------------

    fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        // A replicated log is trimmed through consensus (snapshot, then
        // purge), never behind its back.
        if self.failure().is_some() || self.visibility == Visibility::Applied {
            return Ok(0);
        }
        let Some(new_start) = self.retention_start(now_ms)? else { return Ok(0) };
        let doomed = self.move_log_start(new_start)?;
        info!(topic = %self.topic, partition = self.partition, deleted_segments = doomed, log_start = new_start, "retention deleted segments");
        Ok(doomed)
    }

    /// With [`Visibility::Applied`]: the last entry of the segments that
    /// retention would delete (`None`: nothing to delete).
    fn retention_cut(&self, now_ms: i64) -> Result<Option<EntryId>> {
        if self.failure().is_some() || self.visibility != Visibility::Applied {
            return Ok(None);
        }
        let Some(new_start) = self.retention_start(now_ms)? else { return Ok(None) };
        let Some((kept, file)) = self.open_segment(new_start)? else { return Ok(None) };
        // The first entry kept is the first batch of that segment.
        let header = segment::read_at(&file, &kept.path, 0, strata_record::HEADER_LEN)?;
        let first = strata_record::BatchHeader::parse(&header)
            .map_err(|e| self.corrupt(&kept.path, 0, format!("the first batch's header: {e}")))?;
        let Some(last_doomed) = first.log_index.checked_sub(1) else { return Ok(None) };
        Ok(self.entries_blocking(last_doomed, last_doomed + 1, 1)?.first().map(|(id, _)| *id))
    }

    /// The log start retention wants: the base of the first sealed segment
    /// it keeps (`None`: it deletes nothing).
    fn retention_start(&self, now_ms: i64) -> Result<Option<u64>> {
        let config = self.config.read().map(|c| *c).map_err(|_| self.poisoned())?;
        let segments = self.segments()?;
        let Some((_, sealed)) = segments.split_last() else { return Ok(None) };
        let mut total: u64 = segments.iter().map(|s| s.len()).sum();
        let mut doomed = 0;
        for seg in sealed {
            if !seg.sealed.load(Ordering::Acquire) {
                break; // rolled, but its last batches are not fsync'd and indexed yet
            }
            let by_size = config.retention_bytes >= 0 && total - seg.len() >= config.retention_bytes as u64;
            let max_ts = seg.max_timestamp_ms.load(Ordering::Acquire);
            let by_time =
                config.retention_ms > 0 && max_ts != i64::MIN && max_ts < now_ms.saturating_sub(config.retention_ms);
            if !(by_size || by_time) {
                break;
            }
            total -= seg.len();
            doomed += 1;
        }
        Ok((doomed > 0).then(|| segments[doomed].base))
    }
}
