//! Recovery of a partition when it is opened: the segments are checked
//! against the index (trusted when their metadata matches, scanned
//! otherwise), a torn tail is cut, corruption refuses to serve. See
//! "Recovery" in docs/ARCHITECTURE.md.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::{EntryId, Inner, Progress, Visibility, WriterState};
use crate::error::{IoContext, Result};
use crate::index::{IndexEntry, SegmentMeta};
use crate::segment::{self, Segment};

impl Inner {
    pub(super) fn recover(&self) -> Result<()> {
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
            segment::create_empty(&self.dir, meta.log_start_offset)?;
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
            // Only the active segment is opened here: sealed ones are opened
            // when read (or scanned), through the node's bounded cache.
            let seg = if is_active {
                Segment::active(&self.dir, base, false, &self.files)?
            } else {
                Segment::sealed(&self.dir, base, &self.files)
            };
            if base != expected {
                return Err(self.corrupt(
                    &seg.path,
                    0,
                    format!("segment starts at offset {base}, but the previous one ends at {expected}"),
                ));
            }
            let file_len = std::fs::metadata(&seg.path).at(&seg.path)?.len();
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
                seg.reopen_writable()?.set_len(fault.position).at(&seg.path)?;
                valid_len = fault.position;
            }
            // What survived in the page cache is made durable before it is
            // served (a kill -9 can leave any recent segment's tail unsynced).
            seg.file()?.sync_all().at(&seg.path)?;
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
}
