//! The log as a Raft log: entries by index (a cache of the newest ones, then
//! the segments), truncating a suffix, purging a prefix, and visibility
//! driven by what the consensus layer applied.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::info;

use super::{EntryId, HEADER_MIN_READ, Inner, Visibility};
use crate::error::{IoContext, Result, StorageError};
use crate::index::PartitionMeta;
use crate::segment::{self, Segment};

/// Bytes of recent entries a replicated log keeps in memory beyond those not
/// yet durable: followers that keep up read from here, not from disk. A log
/// without consensus keeps only what is not durable yet (nothing reads it).
const RECENT_BYTES_REPLICATED: usize = 4 * 1024 * 1024;

/// Name of the durable state entry holding the last purged entry.
const PURGED_STATE: &str = "purged";
/// Name of the durable state entry marking a reset in progress.
const RESET_STATE: &str = "reset";

/// The newest entries, stamped, in log order. Holds every entry that is not
/// yet durable (and indexed), so anything older is on disk.
#[derive(Default)]
pub(super) struct Recent {
    pub(super) entries: VecDeque<RecentEntry>,
    bytes: usize,
}

pub(super) struct RecentEntry {
    pub(super) id: EntryId,
    pub(super) next_offset: u64,
    pub(super) batch: Bytes,
}

impl Recent {
    pub(super) fn push(&mut self, entry: RecentEntry) {
        self.bytes += entry.batch.len();
        self.entries.push_back(entry);
    }

    /// Drops the oldest durable entries beyond `budget` bytes.
    pub(super) fn trim(&mut self, durable: Option<EntryId>, budget: usize) {
        let Some(durable) = durable else { return };
        while self.bytes > budget {
            match self.entries.front() {
                Some(e) if e.id.index <= durable.index => {
                    self.bytes -= e.batch.len();
                    self.entries.pop_front();
                }
                _ => break,
            }
        }
    }

    fn truncate(&mut self, from: u64) {
        while self.entries.back().is_some_and(|e| e.id.index >= from) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.batch.len();
            }
        }
    }

    fn next_offset_of(&self, index: u64) -> Option<u64> {
        let first = self.entries.front()?.id.index;
        let e = self.entries.get(usize::try_from(index.checked_sub(first)?).ok()?)?;
        (e.id.index == index).then_some(e.next_offset)
    }
}

fn encode_id(id: EntryId) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&id.term.to_le_bytes());
    b[8..].copy_from_slice(&id.index.to_le_bytes());
    b
}

fn decode_id(b: &[u8]) -> Option<EntryId> {
    let term = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let index = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some(EntryId { term, index })
}

impl Inner {
    /// How many durable bytes the recent-entry cache may keep.
    pub(super) fn recent_budget(&self) -> usize {
        match self.visibility {
            Visibility::Applied => RECENT_BYTES_REPLICATED,
            Visibility::OnFlush => 0,
        }
    }

    pub(super) fn last_purged(&self) -> Option<EntryId> {
        self.purged.lock().ok().and_then(|p| *p)
    }

    pub(super) fn load_purged(&self) -> Result<Option<EntryId>> {
        match self.index.state(PURGED_STATE)? {
            None => Ok(None),
            Some(b) if b.is_empty() => Ok(None),
            Some(b) => decode_id(&b)
                .map(Some)
                .ok_or_else(|| StorageError::Index(format!("malformed purged entry of {}", self.describe()))),
        }
    }

    fn describe(&self) -> String {
        format!("topic '{}' partition {}", self.topic, self.partition)
    }

    /// The entry appends follow: the last written, or the last purged when
    /// the log was purged beyond it.
    pub(super) fn tail(&self, last_written: Option<EntryId>) -> Option<EntryId> {
        match (last_written, self.last_purged()) {
            (Some(w), Some(p)) if p.index > w.index => Some(p),
            (None, p) => p,
            (w, _) => w,
        }
    }

    /// Moves the high watermark to what readers may now see.
    pub(super) fn publish(&self) {
        let progress = *self.progress.borrow();
        let visible = match self.visibility {
            Visibility::OnFlush => progress.durable_next_offset,
            Visibility::Applied => {
                let Ok(applied) = self.applied.lock() else { return };
                match *applied {
                    None => return,
                    // Visible: applied (committed) and durable here. A
                    // partition's entries are applied once committed, which
                    // can be before this replica's own fsync.
                    Some((index, next_offset)) => match progress.durable {
                        Some(d) if d.index <= index => progress.durable_next_offset,
                        Some(_) => next_offset,
                        None => return,
                    },
                }
            }
        };
        self.hw.send_if_modified(|hw| {
            let moved = visible > *hw;
            if moved {
                *hw = visible;
            }
            moved
        });
    }

    /// The offset after the last applied entry (0 before any, or without
    /// consensus).
    pub(super) fn applied_next_offset(&self) -> u64 {
        self.applied.lock().ok().and_then(|a| a.map(|(_, next)| next)).unwrap_or(0)
    }

    /// The offset after entry `index` (`None`: the log does not hold it).
    pub(super) fn next_offset_after(&self, index: u64) -> Result<Option<u64>> {
        let cached = self.recent.lock().map_err(|_| self.poisoned())?.next_offset_of(index);
        match cached {
            Some(n) => Ok(Some(n)),
            None => Ok(self.index.lookup_entry(index)?.map(|e| e.next_offset)),
        }
    }

    /// Records that the consensus layer applied entries up to `index`;
    /// readers see them once they are durable here. An entry this log does
    /// not hold is ignored.
    pub(super) fn set_applied(&self, index: u64) -> Result<()> {
        let cached = self.recent.lock().map_err(|_| self.poisoned())?.next_offset_of(index);
        let next_offset = match cached {
            Some(n) => n,
            None => match self.index.lookup_entry(index)? {
                Some(e) => e.next_offset,
                None => return Ok(()),
            },
        };
        {
            let mut applied = self.applied.lock().map_err(|_| self.poisoned())?;
            if applied.is_some_and(|(i, _)| i >= index) {
                return Ok(());
            }
            *applied = Some((index, next_offset));
        }
        self.publish();
        Ok(())
    }

    /// Waits until every entry written so far is durable (or the partition
    /// failed).
    pub(super) async fn quiesce(&self) -> Result<()> {
        let mut progress = self.progress.subscribe();
        loop {
            self.check_failed()?;
            if progress.borrow_and_update().is_quiet() {
                return Ok(());
            }
            if progress.changed().await.is_err() {
                return Err(StorageError::ShuttingDown);
            }
        }
    }

    /// Removes every entry from `from` on (Raft: a conflicting suffix the
    /// leader overrides). Entries below the high watermark are never
    /// truncated. Called by the writer with nothing in flight. Blocking.
    pub(super) fn truncate_blocking(&self, from: u64) -> Result<()> {
        self.check_failed()?;
        let mut w = self.writer.lock().map_err(|_| self.poisoned())?;
        match w.last {
            Some(last) if last.index >= from => {}
            _ => return Ok(()), // nothing at or after `from`
        }
        let first = self
            .index
            .lookup_entry(from)?
            .ok_or_else(|| self.internal(&format!("entry {from} to truncate from is not indexed")))?;
        let hw = *self.hw.borrow();
        if first.base_offset < hw {
            return Err(self.internal(&format!(
                "refusing to truncate entry {from} at offset {}: below the high watermark {hw}",
                first.base_offset
            )));
        }
        let mut segments = self.segments.write().map_err(|_| self.poisoned())?;
        let keep = segments
            .iter()
            .position(|s| s.base == first.segment_base)
            .ok_or_else(|| self.internal(&format!("segment {} of entry {from} is gone", first.segment_base)))?;
        // Order for crash safety: later segments go first, then the tail of
        // this one, then the index; a crash in between can only bring back
        // entries that were never acknowledged by this replica after the cut.
        for seg in segments.drain(keep + 1..) {
            seg.close();
            std::fs::remove_file(&seg.path).at(&seg.path)?;
            self.index.delete_segment_meta(seg.base)?;
        }
        segment::sync_dir(&self.dir)?;
        let seg: Arc<Segment> = Arc::clone(&segments[keep]);
        // It is the active segment now (it may have been sealed).
        let file = seg.reopen_writable()?;
        file.set_len(first.position).at(&seg.path)?;
        seg.cut_cache_mark(first.position);
        file.sync_all().at(&seg.path)?;
        self.index.truncate_from(first.base_offset, from)?;
        if seg.sealed.swap(false, Ordering::AcqRel) {
            self.index.delete_segment_meta(seg.base)?;
        }
        // The index must not lead the files after a power loss: a synced
        // write makes every index change above durable with it.
        self.index.put_meta(&PartitionMeta { log_start_offset: self.log_start.load(Ordering::Acquire) }, true)?;
        seg.durable_len.store(first.position, Ordering::Release);
        seg.next_offset.store(first.base_offset, Ordering::Release);
        drop(segments);
        let previous = match from.checked_sub(1) {
            None => None,
            Some(i) => match self.index.lookup_entry(i)? {
                Some(e) => Some(EntryId { term: e.term, index: e.log_index }),
                None => self.last_purged().filter(|p| p.index == i),
            },
        };
        w.last = previous;
        w.next_offset = first.base_offset;
        w.active_len = first.position;
        w.running_max_ts = self.index.last_time()?.map_or(i64::MIN, |(ts, _)| ts);
        self.recent.lock().map_err(|_| self.poisoned())?.truncate(from);
        self.progress.send_modify(|p| {
            p.written = previous;
            p.durable = previous;
            p.durable_next_offset = first.base_offset;
        });
        info!(topic = %self.topic, partition = self.partition, from, offset = first.base_offset, "truncated the log");
        Ok(())
    }

    /// Drops every entry and starts the log afresh after `last`, at
    /// `next_offset`. A durable marker written first lets recovery finish
    /// the job after a crash. Called by the writer with nothing in flight.
    /// `last`: `None` when the log goes on with its very first entry.
    pub(super) fn reset_blocking(&self, last: Option<EntryId>, next_offset: u64) -> Result<()> {
        self.check_failed()?;
        let mut marker = last.map(|l| encode_id(l).to_vec()).unwrap_or_default();
        marker.extend_from_slice(&next_offset.to_le_bytes());
        self.index.put_state(RESET_STATE, &marker, true)?;
        let mut w = self.writer.lock().map_err(|_| self.poisoned())?;
        let mut segments = self.segments.write().map_err(|_| self.poisoned())?;
        let fresh = self.rebuild_after_reset(last, next_offset)?;
        *segments = vec![Arc::new(fresh)];
        drop(segments);
        *w = super::WriterState {
            next_offset,
            last: None,
            running_max_ts: i64::MIN,
            active_len: 0,
            segment_max_ts: i64::MIN,
        };
        drop(w);
        self.log_start.store(next_offset, Ordering::Release);
        *self.purged.lock().map_err(|_| self.poisoned())? = last;
        *self.recent.lock().map_err(|_| self.poisoned())? = Recent::default();
        *self.applied.lock().map_err(|_| self.poisoned())? = last.map(|l| (l.index, next_offset));
        self.progress.send_modify(|p| {
            p.written = None;
            p.durable = None;
            p.durable_next_offset = next_offset;
        });
        self.hw.send_if_modified(|hw| {
            let moved = next_offset > *hw;
            if moved {
                *hw = next_offset;
            }
            moved
        });
        info!(topic = %self.topic, partition = self.partition, last = ?last.map(|l| l.index), next_offset, "log reset to a snapshot");
        Ok(())
    }

    /// Finishes a reset that a crash interrupted (recovery calls this first).
    pub(super) fn finish_pending_reset(&self) -> Result<()> {
        let Some(marker) = self.index.state(RESET_STATE)?.filter(|m| !m.is_empty()) else { return Ok(()) };
        // (last entry, next offset), or the next offset alone.
        let (last, next) = match marker.len() {
            24 => (decode_id(&marker), &marker[16..24]),
            8 => (None, &marker[..]),
            _ => return Err(StorageError::Index(format!("malformed reset marker of {}", self.describe()))),
        };
        let next_offset = u64::from_le_bytes(next.try_into().unwrap_or_default());
        info!(topic = %self.topic, partition = self.partition, "finishing a log reset interrupted by a crash");
        drop(self.rebuild_after_reset(last, next_offset)?);
        Ok(())
    }

    /// The durable part of a reset: every segment file and index entry goes,
    /// an empty segment starts at `next_offset`, the purge point and log
    /// start are recorded, then the marker is cleared. Idempotent.
    fn rebuild_after_reset(&self, last: Option<EntryId>, next_offset: u64) -> Result<Segment> {
        for base in segment::list(&self.dir)? {
            let path = self.dir.join(segment::file_name(base));
            std::fs::remove_file(&path).at(&path)?;
            self.index.delete_segment_meta(base)?;
        }
        let fresh = Segment::active(&self.dir, next_offset, true, &self.files)?;
        segment::sync_dir(&self.dir)?;
        self.index.truncate_from(0, 0)?;
        // No purged entry is recorded as an empty value.
        let purged = last.map(|l| encode_id(l).to_vec()).unwrap_or_default();
        self.index.put_state(PURGED_STATE, &purged, false)?;
        self.index.put_meta(&PartitionMeta { log_start_offset: next_offset }, true)?;
        self.index.put_state(RESET_STATE, b"", true)?;
        Ok(fresh)
    }

    /// Forgets every entry up to `upto` (Raft: covered by a snapshot). The
    /// log start moves past them; whole segments below it are deleted.
    /// `upto` may lie beyond the last entry: the log is then empty and the
    /// next entry is `upto.index + 1`. Blocking.
    pub(super) fn purge_blocking(&self, upto: EntryId) -> Result<()> {
        self.check_failed()?;
        if self.last_purged().is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        self.index.put_state(PURGED_STATE, &encode_id(upto), true)?;
        *self.purged.lock().map_err(|_| self.poisoned())? = Some(upto);
        let cached = self.recent.lock().map_err(|_| self.poisoned())?.next_offset_of(upto.index);
        let start = match cached {
            Some(n) => n,
            None => match self.index.lookup_entry(upto.index)? {
                Some(e) => e.next_offset,
                None => {
                    let w = self.writer.lock().map_err(|_| self.poisoned())?;
                    if w.last.is_some_and(|l| l.index >= upto.index) {
                        return Ok(()); // before the first entry held: nothing to forget
                    }
                    w.next_offset // beyond the last entry: everything goes
                }
            },
        };
        self.move_log_start(start)?;
        Ok(())
    }

    /// Moves the log start to `start` (never back) and deletes the sealed
    /// segments wholly below it. The durable log start moves first, so a
    /// crash leaves only files that recovery deletes.
    pub(super) fn move_log_start(&self, start: u64) -> Result<usize> {
        // Retention and purges may race: the start only ever moves forward.
        let _moving = self.log_start_moves.lock().map_err(|_| self.poisoned())?;
        if start <= self.log_start.load(Ordering::Acquire) {
            return Ok(0);
        }
        self.index.put_meta(&PartitionMeta { log_start_offset: start }, true)?;
        self.log_start.store(start, Ordering::Release);
        let (doomed, first_kept): (Vec<Arc<Segment>>, u64) = {
            let mut segments = self.segments.write().map_err(|_| self.poisoned())?;
            let n = segments
                .windows(2)
                .take_while(|pair| pair[1].base <= start && pair[0].sealed.load(Ordering::Acquire))
                .count();
            let doomed = segments.drain(..n).collect();
            (doomed, segments.first().map_or(start, |s| s.base))
        };
        self.index.purge_before(start, first_kept)?;
        for seg in &doomed {
            self.index.delete_segment_meta(seg.base)?;
            seg.close();
            std::fs::remove_file(&seg.path).at(&seg.path)?;
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// The entries of `[start, end)` when the cache holds where they begin
    /// (`None`: read the segments).
    pub(super) fn cached_entries(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<(EntryId, Bytes)>>> {
        self.check_failed()?;
        let start = self.first_unpurged(start);
        if start >= end {
            return Ok(Some(Vec::new()));
        }
        if self.recent.lock().map_err(|_| self.poisoned())?.entries.front().is_some_and(|e| e.id.index <= start) {
            return self.recent_entries(start, end, max_bytes).map(Some);
        }
        Ok(None)
    }

    /// Purged entries are gone even while their segment is still on disk.
    fn first_unpurged(&self, start: u64) -> u64 {
        match self.last_purged() {
            Some(p) if p.index >= start => p.index + 1,
            _ => start,
        }
    }

    pub(super) fn entries_blocking(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<(EntryId, Bytes)>> {
        if let Some(found) = self.cached_entries(start, end, max_bytes)? {
            return Ok(found);
        }
        let start = self.first_unpurged(start);
        let mut out = Vec::new();
        // Older than the cache: durable and indexed, on disk. Nothing indexed
        // from `start` on: whatever there is is not durable yet, so cached.
        let Some(first) = self.index.lookup_entry_from(start)? else {
            return self.recent_entries(start, end, max_bytes);
        };
        // The log may begin after `start` (a new log that started later);
        // a gap inside it is never skipped quietly.
        if first.log_index != start && self.index.lookup_entry(start.saturating_sub(1))?.is_some() {
            return Err(
                self.internal(&format!("entry {start} is missing from the log (the next is {})", first.log_index))
            );
        }
        let start = first.log_index;
        if start >= end {
            return Ok(out);
        }
        let segments = self.segments()?;
        let mut i = segments.binary_search_by_key(&first.segment_base, |s| s.base).map_err(|_| {
            self.internal(&format!("entry {start} is indexed in segment {} that is gone", first.segment_base))
        })?;
        // Each segment's file is opened under the list's lock (see
        // `open_segment`), when the read reaches it.
        let Some((_, mut file)) = self.open_segment(first.segment_base)? else {
            return Err(self.internal(&format!("segment {} of entry {start} is gone", first.segment_base)));
        };
        let mut position = first.position;
        let mut bytes = 0usize;
        let mut next = start;
        while next < end && i < segments.len() && (out.is_empty() || bytes < max_bytes) {
            let seg = &segments[i];
            let durable = seg.len();
            if position >= durable {
                // On to where the index says the next entry is: a segment's
                // length and the next one's are published one after the other,
                // so the next entry may not be durable yet.
                let Some(e) = self.index.lookup_entry(next)? else { break };
                match segments.binary_search_by_key(&e.segment_base, |s| s.base) {
                    Ok(j) if j > i => match self.open_segment(e.segment_base)? {
                        Some((_, next)) => {
                            (i, file, position) = (j, next, e.position);
                            continue;
                        }
                        None => break, // truncated meanwhile
                    },
                    _ => break,
                }
            }
            let want = max_bytes.saturating_sub(bytes).max(HEADER_MIN_READ) as u64;
            let buf = Bytes::from(segment::read_at(&file, &seg.path, position, want.min(durable - position) as usize)?);
            let mut pos = 0usize;
            while pos < buf.len() && next < end {
                let header = match strata_record::BatchHeader::parse(&buf[pos..]) {
                    Ok(h) => h,
                    Err(_) if pos > 0 => break, // a partial header: read on from here
                    Err(e) => return Err(self.read_corruption(seg, position, e.to_string())),
                };
                if pos + header.size > buf.len() {
                    if pos > 0 {
                        break;
                    }
                    // One batch larger than the read: read exactly it.
                    let whole = Bytes::from(segment::read_at(&file, &seg.path, position, header.size)?);
                    return self.push_entry(seg, position, whole, next, &mut out).map(|()| out);
                }
                let batch = buf.slice(pos..pos + header.size);
                self.push_entry(seg, position + pos as u64, batch, next, &mut out)?;
                next += 1;
                bytes += header.size;
                pos += header.size;
            }
            position += pos as u64;
        }
        Ok(out)
    }

    fn recent_entries(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<(EntryId, Bytes)>> {
        let recent = self.recent.lock().map_err(|_| self.poisoned())?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in recent.entries.iter().skip_while(|e| e.id.index < start) {
            if e.id.index >= end || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes += e.batch.len();
            out.push((e.id, e.batch.clone()));
        }
        Ok(out)
    }

    /// Verifies one batch read as entry `expected` and adds it to `out`.
    fn push_entry(
        &self,
        seg: &Segment,
        position: u64,
        batch: Bytes,
        expected: u64,
        out: &mut Vec<(EntryId, Bytes)>,
    ) -> Result<()> {
        let header = strata_record::verify(&batch).map_err(|e| self.read_corruption(seg, position, e.to_string()))?;
        if header.log_index != expected {
            return Err(self.read_corruption(
                seg,
                position,
                format!("expected entry {expected}, found entry {}", header.log_index),
            ));
        }
        out.push((EntryId { term: header.term, index: header.log_index }, batch));
        Ok(())
    }
}
