//! One partition's log: segments on disk, the group-commit writer, reads,
//! recovery and retention.
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
use tracing::{info, warn};

use crate::config::LogConfig;
use crate::error::{IoContext, Result, StorageError};
use crate::index::{IndexEntry, LogIndex, SegmentMeta};
use crate::segment::{self, Segment};

mod entries;
use entries::{Recent, RecentEntry};

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

    /// [`PartitionLog::open`], choosing when appends become visible.
    pub fn open_with(
        topic: &str,
        partition: u32,
        dir: &Path,
        index: Arc<dyn LogIndex>,
        config: LogConfig,
        visibility: Visibility,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).at(dir)?;
        let (hw, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            topic: topic.to_owned(),
            partition,
            dir: dir.to_owned(),
            index,
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
        let limit = self.config().max_message_bytes;
        if batch.len() > limit as usize {
            return Err(StorageError::BatchTooLarge { topic: self.inner.topic.clone(), size: batch.len(), limit });
        }
        let header = match strata_record::BatchHeader::parse(batch)?.compression {
            // Uncompressed: a quick walk over the records, done here.
            strata_record::Compression::None => strata_record::validate(batch)?,
            // Decompression is CPU work that must not stall the async workers.
            _ => {
                let b = batch.clone();
                tokio::task::spawn_blocking(move || strata_record::validate(&b))
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
        let segments = self.inner.segments.read().map(|s| s.clone()).unwrap_or_default();
        PartitionStatus {
            partition: self.inner.partition,
            log_start_offset: self.log_start_offset(),
            high_watermark: self.high_watermark(),
            segments: segments.len() as u32,
            size_bytes: segments.iter().map(|s| s.len()).sum(),
            failure: self.inner.failure().map(|f| f.to_string()),
        }
    }

    /// Refuses every later request (used when the topic is deleted).
    pub fn close(&self, reason: &str) {
        self.inner.set_failure(reason.into());
    }

    /// The writer task, to await after the last handle is dropped (it ends
    /// once every queued append is done). `None` after the first call.
    pub fn take_writer(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.writer.lock().ok().and_then(|mut w| w.take())
    }
}

/// Writes groups of queued appends to the active segment (page cache only)
/// and hands them to the syncer. While the syncer fsyncs one group, the next
/// is being written: the disk is never idle waiting for the CPU, and
/// concurrent producers share each fsync. A group that finds nothing queued
/// behind it and the syncer idle is synced by the writer itself.
async fn writer_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Command>) {
    let syncer = tokio::spawn(syncer_loop(Arc::clone(&inner)));
    let mut held = None;
    loop {
        let command = match held.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => break,
            },
        };
        let first = match command {
            Command::Append(req) => req,
            Command::Rewrite { op, reply } => {
                let result = match inner.quiesce().await {
                    Ok(()) => {
                        let worker = Arc::clone(&inner);
                        tokio::task::spawn_blocking(move || match op {
                            Rewrite::Truncate(from) => worker.truncate_blocking(from),
                            Rewrite::Reset { last, next_offset } => worker.reset_blocking(last, next_offset),
                        })
                        .await
                        .unwrap_or_else(|e| Err(StorageError::Index(format!("log rewrite task failed: {e}"))))
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                continue;
            }
        };
        let mut bytes = first.batch.len();
        let mut group = vec![first];
        while bytes < GROUP_BYTES_MAX {
            match rx.try_recv() {
                Ok(Command::Append(req)) => {
                    bytes += req.batch.len();
                    group.push(req);
                }
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        // Bound what is written but not yet synced (memory held by waiters).
        let Ok(permit) = inner.unsynced_bytes.acquire_many(bytes as u32).await else { break };
        permit.forget();
        let batches: Vec<Queued> = group.iter().map(|r| (r.batch.clone(), r.header, r.id, r.base_offset)).collect();
        // Nothing else to write and the syncer idle: this group is written
        // and synced in one blocking call, saving the hand-off to the syncer
        // (two thread switches per group, the cost that matters below peak).
        // Under load, groups keep going to the syncer so that the next group
        // is written while this one syncs.
        let Ok(syncer_idle) = inner.sync_queue.lock().map(|q| q.idle()) else { break };
        if syncer_idle && rx.is_empty() {
            let worker = Arc::clone(&inner);
            let result = tokio::task::spawn_blocking(move || {
                let written = worker.write_group(&batches)?;
                worker.sync_written(&written)?;
                Ok(written)
            })
            .await
            .unwrap_or_else(|e| Err(StorageError::Index(format!("write task failed: {e}"))));
            match result {
                Ok(written) => {
                    let infos = written.iter().filter_map(|w| match w {
                        Written::Batch(b) => Some(b.info),
                        Written::Seal(_) => None,
                    });
                    for (req, info) in group.into_iter().zip(infos) {
                        let _ = req.reply.send(Ok(info));
                    }
                }
                Err(e) => fail_group(&inner, group, &e),
            }
            inner.unsynced_bytes.add_permits(bytes);
            continue;
        }
        let worker = Arc::clone(&inner);
        let result = tokio::task::spawn_blocking(move || worker.write_group(&batches))
            .await
            .unwrap_or_else(|e| Err(StorageError::Index(format!("write task failed: {e}"))));
        match result {
            Ok(written) => {
                let mut replies = group.into_iter().map(|r| r.reply);
                let items = written.into_iter().map(|w| match w {
                    Written::Batch(batch) => SyncItem::Batch(batch, replies.next()),
                    Written::Seal(seal) => SyncItem::Seal(seal),
                });
                match inner.sync_queue.lock() {
                    Ok(mut queue) => queue.items.extend(items),
                    Err(_) => break,
                }
                inner.sync_wakeup.notify_one();
            }
            Err(e) => {
                inner.unsynced_bytes.add_permits(bytes);
                fail_group(&inner, group, &e);
            }
        }
    }
    // Appends and truncations still queued when the loop ended get an answer.
    rx.close();
    while let Ok(command) = rx.try_recv() {
        match command {
            Command::Append(req) => drop(req.reply.send(Err(StorageError::ShuttingDown))),
            Command::Rewrite { reply, .. } => drop(reply.send(Err(StorageError::ShuttingDown))),
        }
    }
    inner.writer_done.store(true, Ordering::Release);
    inner.sync_wakeup.notify_one();
    let _ = syncer.await;
}

/// A group could not be written or synced: the partition stops taking
/// writes, and every append of the group hears why.
fn fail_group(inner: &Inner, group: Vec<AppendRequest>, error: &StorageError) {
    inner.write_failed(error);
    for req in group {
        let _ = req.reply.send(Err(error.clone()));
    }
}

/// Makes written groups durable: fdatasync of every segment they touched,
/// then index entries, then the high watermark moves and producers get
/// their acknowledgements.
async fn syncer_loop(inner: Arc<Inner>) {
    loop {
        inner.sync_wakeup.notified().await;
        loop {
            // Busy from taking items until their replies are sent.
            let items: Vec<SyncItem> = match inner.sync_queue.lock() {
                Ok(mut queue) => {
                    let items = std::mem::take(&mut queue.items);
                    queue.busy = !items.is_empty();
                    items
                }
                Err(_) => return,
            };
            if items.is_empty() {
                break;
            }
            let (work, replies): (Vec<Written>, Vec<_>) = items
                .into_iter()
                .map(|item| match item {
                    SyncItem::Batch(b, reply) => {
                        let reply = reply.map(|r| (b.info, r));
                        (Written::Batch(b), reply)
                    }
                    SyncItem::Seal(s) => (Written::Seal(s), None),
                })
                .unzip();
            let bytes: usize = work.iter().map(Written::bytes).sum();
            let worker = Arc::clone(&inner);
            let result = tokio::task::spawn_blocking(move || worker.sync_written(&work))
                .await
                .unwrap_or_else(|e| Err(StorageError::Index(format!("sync task failed: {e}"))));
            if let Err(e) = &result {
                inner.write_failed(e);
            }
            for (info, reply) in replies.into_iter().flatten() {
                let _ = reply.send(result.clone().map(|()| info));
            }
            inner.unsynced_bytes.add_permits(bytes);
        }
        if inner.writer_done.load(Ordering::Acquire) && inner.sync_queue.lock().map_or(true, |q| q.items.is_empty()) {
            return;
        }
    }
}

/// A queued batch as the writer takes it: stamped bytes, header, entry, base offset.
type Queued = (Bytes, BatchHeader, EntryId, u64);

/// A batch written to a segment, waiting for its fsync.
struct WrittenBatch {
    info: AppendInfo,
    entry: IndexEntry,
    /// Time-index point this batch adds (a new running maximum).
    point: Option<(i64, u64)>,
    segment: Arc<Segment>,
    max_ts: i64,
}

/// A segment that was rolled; its metadata is recorded once its batches are
/// durable and indexed.
struct Seal {
    segment: Arc<Segment>,
    meta: SegmentMeta,
}

enum Written {
    Batch(WrittenBatch),
    Seal(Seal),
}

impl Written {
    fn bytes(&self) -> usize {
        match self {
            Self::Batch(b) => b.entry.size as usize,
            Self::Seal(_) => 0,
        }
    }
}

enum SyncItem {
    Batch(WrittenBatch, Option<oneshot::Sender<Result<AppendInfo>>>),
    Seal(Seal),
}

/// What the writer hands the syncer.
#[derive(Default)]
struct SyncQueue {
    items: Vec<SyncItem>,
    /// The syncer holds items it took and has not yet answered.
    busy: bool,
}

impl SyncQueue {
    /// Everything written so far is synced and answered.
    fn idle(&self) -> bool {
        self.items.is_empty() && !self.busy
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

    fn fail(&self, error: &StorageError) {
        self.set_failure(error.to_string().into());
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

    // ----- recovery ------------------------------------------------------

    fn recover(&self) -> Result<()> {
        self.finish_pending_reset()?;
        let meta = self.index.meta()?;
        let mut bases = segment::list(&self.dir)?;
        // Segments wholly below the log start (the next one starts at or
        // before it) are left over from a retention pass or a purge that
        // crashed between recording the new start and unlinking.
        let first_kept = bases.iter().rposition(|b| *b <= meta.log_start_offset).unwrap_or(0);
        for base in bases.drain(..first_kept) {
            let path = self.dir.join(segment::file_name(base));
            info!(file = %path.display(), "removing segment below the log start offset");
            std::fs::remove_file(&path).at(&path)?;
            self.index.delete_segment_meta(base)?;
        }
        *self.purged.lock().map_err(|_| self.poisoned())? = self.load_purged()?;
        if bases.is_empty() {
            bases.push(meta.log_start_offset);
            drop(Segment::open(&self.dir, meta.log_start_offset, true)?);
            segment::sync_dir(&self.dir)?;
        }
        if bases[0] > meta.log_start_offset {
            return Err(self.corrupt(
                &self.dir.join(segment::file_name(bases[0])),
                0,
                format!(
                    "the log starts at offset {} but the first segment file starts at {}: segment files are missing",
                    meta.log_start_offset, bases[0]
                ),
            ));
        }
        self.log_start.store(meta.log_start_offset, Ordering::Release);
        // Entries below the log start outlive a retention pass that crashed.
        self.index.purge_before(meta.log_start_offset, bases[0])?;

        let last_indexed = self.index.last_entry()?;
        let mut segments = Vec::with_capacity(bases.len());
        let mut expected = bases[0];
        let mut rebuilding = false;
        let mut running_max_ts = i64::MIN;
        for (i, base) in bases.iter().copied().enumerate() {
            let is_active = i + 1 == bases.len();
            let seg = Segment::open(&self.dir, base, false)?;
            if base != expected {
                return Err(self.corrupt(
                    &seg.path,
                    0,
                    format!("segment starts at offset {base}, but the previous one ends at {expected}"),
                ));
            }
            let file_len = seg.file.metadata().at(&seg.path)?.len();
            let trusted = if is_active || rebuilding {
                None
            } else {
                self.index.segment_meta(base)?.filter(|m| m.size == file_len)
            };
            if let Some(m) = trusted {
                seg.durable_len.store(m.size, Ordering::Release);
                seg.next_offset.store(m.next_offset, Ordering::Release);
                seg.max_timestamp_ms.store(m.max_timestamp_ms, Ordering::Release);
                seg.sealed.store(true, Ordering::Release);
                expected = m.next_offset;
                segments.push(Arc::new(seg));
                continue;
            }
            // From the first segment that needs a scan on, the index is rebuilt.
            if !rebuilding {
                rebuilding = true;
                self.index.truncate_segments_from(base)?;
                running_max_ts = self.index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
            }
            let scan = segment::scan(&seg.path, base)?;
            let mut valid_len = scan.valid_len;
            if let Some(fault) = &scan.fault {
                let indexed_end =
                    last_indexed.filter(|e| e.segment_base == base).map_or(0, |e| e.position + u64::from(e.size));
                if !is_active || fault.position < indexed_end || fault.valid_batch_follows {
                    return Err(self.corrupt(&seg.path, fault.position, fault.error.clone()));
                }
                warn!(
                    topic = %self.topic, partition = self.partition, file = %seg.path.display(),
                    position = fault.position, dropped_bytes = file_len - fault.position, reason = %fault.error,
                    "truncating torn tail left by a crash (never acknowledged)"
                );
                seg.file.set_len(fault.position).at(&seg.path)?;
                valid_len = fault.position;
            }
            // What survived in the page cache is made durable before it is
            // served (a kill -9 can leave any recent segment's tail unsynced).
            seg.file.sync_all().at(&seg.path)?;
            let mut entries = Vec::with_capacity(scan.batches.len());
            let mut points = Vec::new();
            let mut seg_max = i64::MIN;
            // A purge may have moved the log start into this segment.
            for b in scan.batches.iter().filter(|b| b.header.base_offset >= meta.log_start_offset) {
                entries.push(IndexEntry {
                    base_offset: b.header.base_offset,
                    next_offset: b.header.next_offset(),
                    segment_base: base,
                    position: b.position,
                    size: b.header.size as u32,
                    log_index: b.header.log_index,
                    term: b.header.term,
                });
                if b.header.control {
                    continue; // no records: not in the time index
                }
                if b.header.max_timestamp_ms > running_max_ts {
                    running_max_ts = b.header.max_timestamp_ms;
                    points.push((running_max_ts, b.header.base_offset));
                }
                seg_max = seg_max.max(b.header.max_timestamp_ms);
            }
            self.index.put(&entries, &points)?;
            expected = scan.batches.last().map_or(base, |b| b.header.next_offset());
            seg.durable_len.store(valid_len, Ordering::Release);
            seg.next_offset.store(expected, Ordering::Release);
            seg.max_timestamp_ms.store(seg_max, Ordering::Release);
            if !is_active {
                self.index.put_segment_meta(
                    base,
                    &SegmentMeta { size: valid_len, next_offset: expected, max_timestamp_ms: seg_max },
                )?;
                seg.sealed.store(true, Ordering::Release);
            }
            segments.push(Arc::new(seg));
        }
        if !rebuilding {
            running_max_ts = self.index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
        }
        let active_len = segments.last().map_or(0, |s| s.len());
        {
            let mut w = self.writer.lock().map_err(|_| self.poisoned())?;
            let segment_max_ts = segments.last().map_or(i64::MIN, |s| s.max_timestamp_ms.load(Ordering::Acquire));
            let last = self.index.last_entry()?.map(|e| EntryId { term: e.term, index: e.log_index });
            *w = WriterState { next_offset: expected, last, running_max_ts, active_len, segment_max_ts };
            self.progress.send_replace(Progress { written: last, durable: last, durable_next_offset: expected });
        }
        *self.segments.write().map_err(|_| self.poisoned())? = segments;
        // Applied visibility: nothing is visible until the consensus layer
        // says what it applied.
        self.hw.send_replace(match self.visibility {
            Visibility::OnFlush => expected,
            Visibility::Applied => meta.log_start_offset,
        });
        info!(
            topic = %self.topic, partition = self.partition,
            log_start = meta.log_start_offset, high_watermark = expected, segments = bases.len(),
            "partition recovered"
        );
        Ok(())
    }

    // ----- writes --------------------------------------------------------

    /// Sets where the next submitted batch goes from what the writer holds
    /// (after recovery or a truncation).
    fn reset_submit_state(&self) -> Result<()> {
        let w = self.writer.lock().map_err(|_| self.poisoned())?;
        let state = SubmitState { next_offset: w.next_offset };
        drop(w);
        match self.submit.try_lock() {
            Ok(mut s) => {
                *s = state;
                Ok(())
            }
            Err(_) => Err(self.internal("appends raced with a truncation")),
        }
    }

    fn write_failed(&self, error: &StorageError) {
        // After a failed write or fsync the page cache can no longer be
        // trusted (fsyncgate): stop serving until recovery runs.
        if !matches!(error, StorageError::PartitionFailed { .. }) {
            tracing::error!(topic = %self.topic, partition = self.partition, %error, "write failed; partition stops serving");
            self.fail(error);
        }
    }

    /// Writes a group of (stamped) batches to the active segment, rolling
    /// segments as needed. Nothing is durable yet: see [`Inner::sync_written`].
    fn write_group(&self, group: &[Queued]) -> Result<Vec<Written>> {
        self.check_failed()?;
        let config = self.config.read().map(|c| *c).map_err(|_| self.poisoned())?;
        let mut w = self.writer.lock().map_err(|_| self.poisoned())?;
        let mut active =
            self.segments()?.last().cloned().ok_or_else(|| self.internal("the partition has no segment"))?;
        // The stamped batches, written with one writev per piece (no copy).
        let mut buf: Vec<Bytes> = Vec::with_capacity(group.len());
        let mut out = Vec::with_capacity(group.len());
        let now = crate::now_ms();
        for (batch, header, id, base_offset) in group {
            if *base_offset != w.next_offset {
                return Err(self.internal(&format!(
                    "entry {} was placed at offset {base_offset} but the log continues at {}",
                    id.index, w.next_offset
                )));
            }
            let size = batch.len() as u64;
            let too_big = w.active_len + size > config.segment_bytes;
            let too_old = now.saturating_sub(active.created_ms) >= config.segment_ms as i64;
            // A segment is named by its base offset: one that holds no
            // record yet (only control batches, which take no offset) does
            // not roll, or the next would take its name.
            let holds_records = w.next_offset > active.base;
            if w.active_len > 0 && holds_records && (too_big || too_old) {
                // The old segment is complete on disk before the next one
                // exists: recovery may then treat any fault in a sealed
                // segment as corruption, never as a torn tail.
                write_all(&active, &buf)?;
                buf.clear();
                active.file.sync_data().at(&active.path)?;
                out.push(Written::Seal(Seal {
                    segment: Arc::clone(&active),
                    meta: SegmentMeta {
                        size: w.active_len,
                        next_offset: w.next_offset,
                        max_timestamp_ms: w.segment_max_ts,
                    },
                }));
                active = Arc::new(Segment::open(&self.dir, w.next_offset, true)?);
                segment::sync_dir(&self.dir)?;
                self.segments.write().map_err(|_| self.poisoned())?.push(Arc::clone(&active));
                w.active_len = 0;
                w.segment_max_ts = i64::MIN;
            }
            let id = *id;
            buf.push(batch.clone());
            w.last = Some(id);
            // Control batches hold no records: they stay out of the time index.
            let point = (!header.control && header.max_timestamp_ms > w.running_max_ts).then(|| {
                w.running_max_ts = header.max_timestamp_ms;
                (header.max_timestamp_ms, w.next_offset)
            });
            if !header.control {
                w.segment_max_ts = w.segment_max_ts.max(header.max_timestamp_ms);
            }
            out.push(Written::Batch(WrittenBatch {
                info: AppendInfo { base_offset: w.next_offset, record_count: header.record_count },
                entry: IndexEntry {
                    base_offset: w.next_offset,
                    next_offset: w.next_offset + u64::from(header.offset_count()),
                    segment_base: active.base,
                    position: w.active_len,
                    size: size as u32,
                    log_index: id.index,
                    term: id.term,
                },
                point,
                segment: Arc::clone(&active),
                max_ts: if header.control { i64::MIN } else { header.max_timestamp_ms },
            }));
            w.next_offset += u64::from(header.offset_count());
            w.active_len += size;
        }
        write_all(&active, &buf)?;
        Ok(out)
    }

    /// fdatasyncs every segment the written batches touched, indexes them,
    /// records sealed segments, then publishes: segment lengths, then the high
    /// watermark. Blocking.
    fn sync_written(&self, written: &[Written]) -> Result<()> {
        self.check_failed()?;
        // Groups become durable in the order they were written (the writer
        // syncs a group itself only when the syncer holds none): publishing
        // one out of order would acknowledge batches whose fsync is pending.
        let first = written.iter().find_map(|w| match w {
            Written::Batch(b) => Some(b.entry.base_offset),
            Written::Seal(_) => None,
        });
        let durable_next = self.progress.borrow().durable_next_offset;
        if let Some(first) = first.filter(|first| *first != durable_next) {
            return Err(self.internal(&format!(
                "a group starting at offset {first} was synced while the log is durable only up to offset {durable_next}"
            )));
        }
        let mut synced: Vec<&Arc<Segment>> = Vec::new();
        let mut entries = Vec::with_capacity(written.len());
        let mut points = Vec::new();
        for item in written {
            if let Written::Batch(b) = item {
                if !synced.iter().any(|s| s.base == b.segment.base) {
                    b.segment.file.sync_data().at(&b.segment.path)?;
                    synced.push(&b.segment);
                }
                entries.push(b.entry);
                points.extend(b.point);
            }
        }
        self.index.put(&entries, &points)?;
        // Sealed segments get their metadata after their entries are indexed,
        // so metadata present implies a complete index for that segment.
        for item in written {
            if let Written::Seal(seal) = item {
                self.index.put_segment_meta(seal.segment.base, &seal.meta)?;
                seal.segment.sealed.store(true, Ordering::Release);
            }
        }
        let mut durable = None;
        for item in written {
            if let Written::Batch(b) = item {
                b.segment.max_timestamp_ms.fetch_max(b.max_ts, Ordering::AcqRel);
                b.segment.next_offset.store(b.entry.next_offset, Ordering::Release);
                b.segment.durable_len.store(b.entry.position + u64::from(b.entry.size), Ordering::Release);
                durable = Some(b.entry);
            }
        }
        if let Some(e) = durable {
            let id = EntryId { term: e.term, index: e.log_index };
            self.progress.send_modify(|p| {
                p.durable = Some(id);
                p.durable_next_offset = e.next_offset;
            });
            self.recent.lock().map_err(|_| self.poisoned())?.trim(Some(id), self.recent_budget());
            self.publish();
        }
        for segment in synced {
            segment.release_cache();
        }
        Ok(())
    }

    // ----- reads ---------------------------------------------------------

    fn out_of_range(&self, offset: u64) -> StorageError {
        StorageError::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            start: self.log_start.load(Ordering::Acquire),
            end: *self.hw.borrow(),
        }
    }

    fn read_blocking(&self, offset: u64, max_bytes: usize) -> Result<ReadResult> {
        self.check_failed()?;
        let hw = *self.hw.borrow();
        let log_start = self.log_start.load(Ordering::Acquire);
        let mut result =
            ReadResult { batches: Vec::new(), next_offset: offset, high_watermark: hw, log_start_offset: log_start };
        if offset > hw && offset <= self.applied_next_offset() {
            // Committed (a producer may have been answered with it) but not
            // yet durable here: nothing to read yet, not out of range.
            return Ok(result);
        }
        if offset < log_start || offset > hw {
            return Err(self.out_of_range(offset));
        }
        // Control batches are skipped: read on until data or the end.
        while result.batches.is_empty() && result.next_offset < hw {
            let from = result.next_offset;
            self.read_from(from, max_bytes, hw, &mut result)?;
            if result.next_offset == from {
                break; // nothing readable there yet
            }
        }
        Ok(result)
    }

    /// Reads batches from the one holding `offset` on, about `max_bytes`
    /// worth, appending data batches to `result` and advancing its
    /// `next_offset`. Reads at least one batch.
    fn read_from(&self, offset: u64, max_bytes: usize, hw: u64, result: &mut ReadResult) -> Result<()> {
        let entry = self.index.lookup(offset)?.filter(|e| e.next_offset > offset).ok_or_else(|| {
            StorageError::Index(format!(
                "no index entry for offset {offset} of topic '{}' partition {}",
                self.topic, self.partition
            ))
        })?;
        let segments = self.segments()?;
        let Ok(i) = segments.binary_search_by_key(&entry.segment_base, |s| s.base) else {
            // Deleted by retention since the checks above.
            return Err(self.out_of_range(offset));
        };
        let seg = &segments[i];
        let end = seg.len();
        let want = max_bytes.max(entry.size as usize) as u64;
        let len = want.min(end.saturating_sub(entry.position));
        let buf = Bytes::from(seg.read_at(entry.position, len as usize)?);
        let mut pos = 0usize;
        while pos < buf.len() {
            let file_pos = entry.position + pos as u64;
            let header = match strata_record::BatchHeader::parse(&buf[pos..]) {
                Ok(h) => h,
                Err(_) if pos > 0 && buf.len() - pos < strata_record::HEADER_LEN => break,
                Err(e) => return Err(self.read_corruption(seg, file_pos, e.to_string())),
            };
            if pos + header.size > buf.len() {
                if pos == 0 {
                    return Err(self.read_corruption(seg, file_pos, "batch runs past the durable end of the segment"));
                }
                break; // partial batch at the max_bytes limit
            }
            let batch = buf.slice(pos..pos + header.size);
            if let Err(e) = strata_record::verify(&batch) {
                return Err(self.read_corruption(seg, file_pos, e.to_string()));
            }
            if header.base_offset >= hw {
                break; // durable, but published after the high watermark we report
            }
            if !header.control {
                result.batches.push(batch);
            }
            result.next_offset = header.next_offset();
            pos += header.size;
        }
        Ok(())
    }

    fn read_corruption(&self, seg: &Segment, position: u64, detail: impl Into<String>) -> StorageError {
        let e = self.corrupt(&seg.path, position, detail);
        tracing::error!(error = %e, "corruption found on read; partition stops serving");
        self.fail(&e);
        e
    }

    fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>> {
        self.check_failed()?;
        let Some(base) = self.index.lookup_time(ts)? else { return Ok(None) };
        let mut offset = base.max(self.log_start.load(Ordering::Acquire));
        loop {
            let read = self.read_blocking(offset, 1 << 20)?;
            if read.batches.is_empty() {
                return Ok(None);
            }
            for batch in &read.batches {
                for record in strata_record::decode(batch)? {
                    if record.offset >= offset && record.timestamp_ms >= ts {
                        return Ok(Some((record.offset, record.timestamp_ms)));
                    }
                }
                offset = BatchHeader::parse(batch)?.next_offset();
            }
        }
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
        let segments = self.segments()?;
        let Some(kept) = segments.iter().find(|s| s.base == new_start) else { return Ok(None) };
        // The first entry kept is the first batch of that segment.
        let header = kept.read_at(0, strata_record::HEADER_LEN)?;
        let first = strata_record::BatchHeader::parse(&header)
            .map_err(|e| StorageError::Index(format!("{}: {e}", kept.path.display())))?;
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

/// Appends `bufs` to the segment with vectored writes, however many calls
/// that takes.
fn write_all(seg: &Segment, bufs: &[Bytes]) -> Result<()> {
    use std::io::{IoSlice, Write};
    /// At most this many slices per call (below Linux's IOV_MAX of 1024).
    const SLICES_MAX: usize = 512;
    let (mut i, mut skip) = (0usize, 0usize);
    while i < bufs.len() {
        let slices: Vec<IoSlice<'_>> = bufs[i..]
            .iter()
            .take(SLICES_MAX)
            .enumerate()
            .map(|(k, b)| IoSlice::new(if k == 0 { &b[skip..] } else { &b[..] }))
            .collect();
        let mut n = (&seg.file).write_vectored(&slices).at(&seg.path)?;
        if n == 0 {
            return Err(StorageError::io(&seg.path, std::io::ErrorKind::WriteZero.into()));
        }
        // Advance past what was written.
        while n > 0 && i < bufs.len() {
            let left = bufs[i].len() - skip;
            if n >= left {
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
        while i < bufs.len() && bufs[i].len() == skip {
            i += 1;
            skip = 0;
        }
    }
    Ok(())
}
