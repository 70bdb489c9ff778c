//! Reads of whole batches by offset, and offset lookups by time. A
//! segment's file is taken under the segment list's lock (see
//! [`Inner::open_segment`]). See "Reads" in docs/ARCHITECTURE.md.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use strata_record::BatchHeader;

use super::{Inner, ReadResult};
use crate::error::{Result, StorageError};
use crate::segment::{self, Segment};

impl Inner {
    /// The segment starting at `base`, with its file open (`None`: it is
    /// gone). Opened under the segment list's lock: a segment is deleted
    /// only once it left the list, so the file opened here is the one
    /// read, even if the segment is deleted during the read.
    pub(super) fn open_segment(&self, base: u64) -> Result<Option<(Arc<Segment>, Arc<std::fs::File>)>> {
        let segments = self.segments.read().map_err(|_| self.poisoned())?;
        let Ok(i) = segments.binary_search_by_key(&base, |s| s.base) else { return Ok(None) };
        let seg = Arc::clone(&segments[i]);
        let file = seg.file()?;
        Ok(Some((seg, file)))
    }

    pub(super) fn out_of_range(&self, offset: u64) -> StorageError {
        StorageError::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            start: self.log_start.load(Ordering::Acquire),
            end: *self.hw.borrow(),
        }
    }

    pub(super) fn read_blocking(&self, offset: u64, max_bytes: usize) -> Result<ReadResult> {
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
    pub(super) fn read_from(&self, offset: u64, max_bytes: usize, hw: u64, result: &mut ReadResult) -> Result<()> {
        let Some(entry) = self.index.lookup(offset)?.filter(|e| e.next_offset > offset) else {
            // Retention moved the log start past `offset` (and removed its
            // index entries) since the caller's check: out of range, as a
            // read after it would be. Otherwise the index lacks an entry
            // the log holds.
            if offset < self.log_start.load(Ordering::Acquire) {
                return Err(self.out_of_range(offset));
            }
            return Err(StorageError::Index(format!(
                "no index entry for offset {offset} of topic '{}' partition {}",
                self.topic, self.partition
            )));
        };
        let Some((seg, file)) = self.open_segment(entry.segment_base)? else {
            // Deleted by retention since the checks above.
            return Err(self.out_of_range(offset));
        };
        let seg = &*seg;
        let end = seg.len();
        let want = max_bytes.max(entry.size as usize) as u64;
        let len = want.min(end.saturating_sub(entry.position));
        let buf = Bytes::from(segment::read_at(&file, &seg.path, entry.position, len as usize)?);
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

    pub(super) fn read_corruption(&self, seg: &Segment, position: u64, detail: impl Into<String>) -> StorageError {
        let e = self.corrupt(&seg.path, position, detail);
        tracing::error!(error = %e, "corruption found on read; partition stops serving");
        self.fail(&e);
        e
    }

    pub(super) fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(u64, i64)>> {
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
}
