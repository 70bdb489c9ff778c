//! Snapshot transfer: a partition's state at entry N is its log up to N, so
//! the snapshot a leader sends to a replica that fell behind its retention
//! carries the leader's retained entries up to N (whole stored batches, as
//! in its segments), not only the position.
//!
//! The receiver stages the entries in a file (the batches back to back, as
//! in a segment; every batch carries its own ids, offsets and CRC), fsyncs
//! it, and hands it to openraft with the snapshot; installing it
//! ([`install`]) replaces the replica's log with exactly those entries.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use strata_proto::internal as pb;
use strata_storage::{EntryId, PartitionLog};

/// Bytes of entries per streamed chunk.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A staging file, removed when the last handle on it goes: when the
/// snapshot is installed, refused, or dropped unused (a cancelled call, a
/// snapshot openraft found stale), so none is left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct StagedFile(PathBuf);

impl StagedFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Entries staged on disk by the receiver of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedEntries {
    pub file: std::sync::Arc<StagedFile>,
    /// The entry before the first staged one (`None`: the first staged
    /// entry is the log's first).
    pub prev: Option<EntryId>,
    /// Offset of the first staged record.
    pub start_offset: u64,
    /// Entries staged.
    pub count: u64,
}

/// Why a snapshot could not be transferred.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("snapshot staging file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the snapshot stream is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Storage(#[from] strata_storage::StorageError),
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io { path: path.to_owned(), source }
}

/// What the sender streams: where its entries begin (the entry before the
/// first one it holds, and the first one's offset), then the chunks of its
/// entries from there up to `last_index`, about [`CHUNK_BYTES`] each.
/// Retention leaves the log start alone until the stream is dropped.
pub fn entry_chunks(
    log: PartitionLog,
    last_index: u64,
) -> (Option<EntryId>, u64, impl futures::Stream<Item = Result<pb::SnapshotChunk, TransferError>>) {
    let pin = log.pin_start();
    let (prev, start_offset) = (log.last_purged(), log.log_start_offset());
    let first = prev.map_or(0, |p| p.index + 1);
    let chunks = futures::stream::try_unfold((log, first, pin), move |(log, next, pin)| async move {
        if next > last_index {
            return Ok(None);
        }
        let chunk = log.entries(next, last_index + 1, CHUNK_BYTES).await?;
        let Some((last, _)) = chunk.last() else {
            return Err(TransferError::Malformed(format!(
                "the sender's log ends before entry {next} (the snapshot's last is {last_index})"
            )));
        };
        let next_index = last.index + 1;
        let batches = chunk.into_iter().map(|(_, b)| b).collect();
        Ok(Some((pb::SnapshotChunk { batches, ..Default::default() }, (log, next_index, pin))))
    });
    (prev, start_offset, chunks)
}

/// Stages a stream's entries in a new file under `dir` (checked as they
/// come: each follows the one before), fsynced once complete. The file is
/// removed when the stager is dropped before [`Stager::finish`] hands it on
/// (a refused, failed or cancelled transfer leaves nothing behind), and
/// otherwise with the last [`StagedEntries`] handle.
pub struct Stager {
    file: Option<std::fs::File>,
    staged: StagedEntries,
    next_index: u64,
    next_offset: u64,
}

impl Stager {
    pub fn create(dir: &Path, name: &str, prev: Option<EntryId>, start_offset: u64) -> Result<Self, TransferError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{name}.{}-{n}.staged", std::process::id()));
        let file = std::fs::File::create(&path).map_err(io_at(&path))?;
        let next_index = prev.map_or(0, |p| p.index + 1);
        Ok(Self {
            file: Some(file),
            staged: StagedEntries { file: std::sync::Arc::new(StagedFile(path)), prev, start_offset, count: 0 },
            next_index,
            next_offset: start_offset,
        })
    }

    /// Checks and appends one chunk's batches (at most a few MiB, to the
    /// page cache): each must verify, and follow the previous one (next
    /// index, contiguous offsets).
    pub fn push(&mut self, batches: &[Bytes]) -> Result<(), TransferError> {
        let Some(file) = self.file.as_mut() else { return Err(TransferError::Malformed("stager finished".into())) };
        for batch in batches {
            let h = strata_record::verify(batch).map_err(|e| TransferError::Malformed(e.to_string()))?;
            if h.log_index != self.next_index || h.base_offset != self.next_offset {
                return Err(TransferError::Malformed(format!(
                    "entry {} at offset {} where entry {} at offset {} was due",
                    h.log_index, h.base_offset, self.next_index, self.next_offset
                )));
            }
            file.write_all(batch).map_err(io_at(self.staged.file.path()))?;
            self.next_index += 1;
            self.next_offset += if h.control { 0 } else { u64::from(h.record_count) };
            self.staged.count += 1;
        }
        Ok(())
    }

    /// The staged entries, durable, once the stream ended exactly at the
    /// snapshot's last entry `last` (the entries before the first one sent,
    /// `prev`, count: a stream that stopped early is refused, never taken
    /// for a shorter log).
    pub async fn finish(mut self, last: Option<EntryId>) -> Result<StagedEntries, TransferError> {
        let got = self.next_index.checked_sub(1);
        if got != last.map(|l| l.index) {
            return Err(TransferError::Malformed(format!(
                "the stream ended at entry {got:?}, the snapshot's last is {:?}",
                last.map(|l| l.index)
            )));
        }
        let file = self.file.take().ok_or_else(|| TransferError::Malformed("stager finished".into()))?;
        // On failure the stager (and with it the file) goes.
        match tokio::task::spawn_blocking(move || file.sync_all()).await {
            Ok(Ok(())) => Ok(self.staged.clone()),
            Ok(Err(source)) => Err(TransferError::Io { path: self.staged.file.path().to_owned(), source }),
            Err(e) => Err(TransferError::Malformed(format!("staging sync task failed: {e}"))),
        }
    }
}

/// No stored batch is larger (produce batches are at most 32 MiB).
const MAX_STAGED_BATCH: usize = 64 * 1024 * 1024;

/// Bytes of staged entries read back and appended per step.
const INSTALL_STEP_BYTES: usize = 16 * 1024 * 1024;

/// First half of installing staged entries: drops everything `log` held and
/// makes it go on where the leader's retained entries begin (after `prev`,
/// at the first staged offset). With nothing staged (the leader holds no
/// entry up to the snapshot's last), the log goes on after `last`.
pub async fn reset_for(log: &PartitionLog, staged: &StagedEntries, last: EntryId) -> Result<(), TransferError> {
    match staged.prev {
        _ if staged.count == 0 => log.reset_to(last, staged.start_offset).await?,
        Some(prev) => log.reset_to(prev, staged.start_offset).await?,
        None => log.reset_to_empty(staged.start_offset).await?,
    }
    Ok(())
}

/// Reads up to about [`INSTALL_STEP_BYTES`] of batches (at most `left`).
fn read_step(
    reader: &mut std::io::BufReader<std::fs::File>,
    path: &Path,
    left: u64,
) -> Result<Vec<Bytes>, TransferError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while (out.len() as u64) < left && bytes < INSTALL_STEP_BYTES {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(io_at(path))?;
        let size = u32::from_le_bytes(len) as usize;
        if size + 4 > MAX_STAGED_BATCH {
            return Err(TransferError::Malformed(format!("{}: a batch of {size} bytes", path.display())));
        }
        let mut buf = vec![0u8; size + 4];
        buf[..4].copy_from_slice(&len);
        reader.read_exact(&mut buf[4..]).map_err(io_at(path))?;
        bytes += buf.len();
        out.push(Bytes::from(buf));
    }
    Ok(out)
}

/// Second half: appends the staged entries as they are (the leader's bytes,
/// ids and offsets), a step at a time (each step durable before the next is
/// read, so memory stays bounded), and checks the log ends at `last`.
pub async fn append_staged(log: &PartitionLog, staged: &StagedEntries, last: EntryId) -> Result<(), TransferError> {
    if staged.count == 0 {
        return Ok(());
    }
    let path = staged.file.path().to_owned();
    let mut reader = Some(std::io::BufReader::new(std::fs::File::open(&path).map_err(io_at(&path))?));
    let mut left = staged.count;
    while left > 0 {
        let (mut r, p) = (reader.take().ok_or_else(|| TransferError::Malformed("no reader".into()))?, path.clone());
        let (r, step) = tokio::task::spawn_blocking(move || {
            let step = read_step(&mut r, &p, left);
            (r, step)
        })
        .await
        .map_err(|e| TransferError::Malformed(format!("staging read task failed: {e}")))?;
        reader = Some(r);
        let mut entries = Vec::new();
        for batch in step? {
            // Its ids; the log checks the CRC as it takes the entry.
            let h = strata_record::BatchHeader::parse(&batch)
                .map_err(|e| TransferError::Malformed(format!("{}: {e}", path.display())))?;
            entries.push((batch, EntryId { term: h.term, index: h.log_index }));
        }
        left = left.saturating_sub(entries.len() as u64);
        for ticket in log.submit_entries(entries).await? {
            ticket.wait().await?;
        }
    }
    match log.last_entry() {
        Some(l) if l == last => Ok(()),
        other => Err(TransferError::Malformed(format!(
            "the staged entries end at {other:?}, the snapshot's last is {last:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, base_offset: u64) -> Bytes {
        let records = vec![strata_record::Record { value: Bytes::from_static(b"v"), ..Default::default() }; 2];
        let mut batch = strata_record::encode(&records, strata_record::Compression::None).to_vec();
        strata_record::stamp(&mut batch, strata_record::Placement { base_offset, term: 1, log_index: index });
        Bytes::from(batch)
    }

    #[tokio::test]
    async fn a_stream_that_stops_before_the_snapshots_last_entry_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prev = Some(EntryId { term: 1, index: 9 });
        let mut stager = Stager::create(dir.path(), "g", prev, 20).expect("create");
        stager.push(&[entry(10, 20), entry(11, 22)]).expect("in order");
        let err = stager.finish(Some(EntryId { term: 1, index: 12 })).await.expect_err("one entry short");
        assert!(err.to_string().contains("ended at entry Some(11)"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "the staged file is gone");

        // Nothing at all sent for a snapshot that needs entries: refused too.
        let stager = Stager::create(dir.path(), "g", prev, 20).expect("create");
        assert!(stager.finish(Some(EntryId { term: 1, index: 12 })).await.is_err());

        // Out of order, or a gap in offsets: refused as it arrives.
        let mut stager = Stager::create(dir.path(), "g", prev, 20).expect("create");
        assert!(stager.push(&[entry(11, 20)]).is_err());
        let mut stager2 = Stager::create(dir.path(), "g", prev, 20).expect("create");
        assert!(stager2.push(&[entry(10, 21)]).is_err());
        drop((stager, stager2));
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);

        // Complete: handed on, durable, and kept.
        let mut stager = Stager::create(dir.path(), "g", prev, 20).expect("create");
        stager.push(&[entry(10, 20), entry(11, 22), entry(12, 24)]).expect("in order");
        let staged = stager.finish(Some(EntryId { term: 1, index: 12 })).await.expect("complete");
        assert_eq!((staged.count, staged.start_offset, staged.prev), (3, 20, prev));
        let path = staged.file.path().to_owned();
        assert!(path.exists());
        let copy = staged.clone();
        drop(staged);
        assert!(path.exists(), "kept while a handle is left");
        drop(copy);
        assert!(!path.exists(), "removed with the last handle");
    }
}
