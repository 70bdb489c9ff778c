//! The write path: the group-commit writer and syncer of a partition.
//! The writer stamps and writes groups of queued appends to the active
//! segment (page cache only), rolling segments; the syncer fdatasyncs them,
//! indexes them, publishes the high watermark and answers the producers.
//! See "The write path" in docs/ARCHITECTURE.md.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use strata_record::BatchHeader;
use tokio::sync::{mpsc, oneshot};

use super::{AppendInfo, AppendRequest, Command, EntryId, GROUP_BYTES_MAX, Inner, Rewrite, SubmitState};
use crate::error::{IoContext, Result, StorageError};
use crate::index::{IndexEntry, SegmentMeta};
use crate::segment::{self, Segment};

/// Writes groups of queued appends to the active segment (page cache only)
/// and hands them to the syncer. While the syncer fsyncs one group, the next
/// is being written: the disk is never idle waiting for the CPU, and
/// concurrent producers share each fsync. A group that finds nothing queued
/// behind it and the syncer idle is synced by the writer itself.
pub(super) async fn writer_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Command>) {
    let syncer = tokio::spawn(syncer_loop(Arc::clone(&inner)));
    let mut held = None;
    loop {
        let command = match held.take() {
            Some(c) => c,
            None => {
                let next = tokio::select! {
                    c = rx.recv() => c,
                    // Closed: what is queued is still written, then the
                    // channel reports its end.
                    () = inner.closing.notified() => {
                        rx.close();
                        rx.recv().await
                    }
                };
                match next {
                    Some(c) => c,
                    None => break,
                }
            }
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
pub(super) struct SyncQueue {
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
    /// Sets where the next submitted batch goes from what the writer holds
    /// (after recovery or a truncation).
    pub(super) fn reset_submit_state(&self) -> Result<()> {
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
                self.timed_sync(&active)?;
                out.push(Written::Seal(Seal {
                    segment: Arc::clone(&active),
                    meta: SegmentMeta {
                        size: w.active_len,
                        next_offset: w.next_offset,
                        max_timestamp_ms: w.segment_max_ts,
                    },
                }));
                active = Arc::new(Segment::active(&self.dir, w.next_offset, true, &self.files)?);
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

    /// fdatasyncs a segment file, timed.
    fn timed_sync(&self, segment: &Segment) -> Result<()> {
        let started = std::time::Instant::now();
        segment.file()?.sync_data().at(&segment.path)?;
        self.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
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
                    self.timed_sync(&b.segment)?;
                    synced.push(&b.segment);
                }
                entries.push(b.entry);
                points.extend(b.point);
            }
        }
        if !entries.is_empty() {
            self.metrics.group_commit_batches.observe(entries.len() as f64);
            self.metrics.group_commit_bytes.observe(entries.iter().map(|e| f64::from(e.size)).sum());
        }
        self.index.put(&entries, &points)?;
        // Sealed segments get their metadata after their entries are indexed,
        // so metadata present implies a complete index for that segment.
        let mut sealed = Vec::new();
        for item in written {
            if let Written::Seal(seal) = item {
                self.index.put_segment_meta(seal.segment.base, &seal.meta)?;
                seal.segment.sealed.store(true, Ordering::Release);
                sealed.push(&seal.segment);
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
        // Written to no more: their files are left to the cache of open
        // files (closed now, opened again when read).
        for segment in sealed {
            segment.stop_writing();
        }
        Ok(())
    }
}

/// Appends `bufs` to the segment with vectored writes, however many calls
/// that takes.
fn write_all(seg: &Segment, bufs: &[Bytes]) -> Result<()> {
    use std::io::{IoSlice, Write};
    let file = seg.writable().ok_or_else(|| StorageError::Index(format!("segment {} is not written to", seg.base)))?;
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
        let mut n = (&*file).write_vectored(&slices).at(&seg.path)?;
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
