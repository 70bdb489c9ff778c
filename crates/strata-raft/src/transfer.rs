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

/// Entries staged on disk by the receiver of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedEntries {
    pub path: PathBuf,
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

/// Where the sender's entries begin: the entry before the first one it
/// holds, and the first one's offset.
pub fn start_of(log: &PartitionLog) -> (Option<EntryId>, u64) {
    (log.last_purged(), log.log_start_offset())
}

/// The chunks after the header: the sender's entries from its first held
/// one up to `last_index`, about [`CHUNK_BYTES`] per chunk.
pub fn entry_chunks(
    log: PartitionLog,
    last_index: u64,
) -> impl futures::Stream<Item = Result<pb::SnapshotChunk, TransferError>> {
    let first = log.last_purged().map_or(0, |p| p.index + 1);
    futures::stream::try_unfold((log, first), move |(log, next)| async move {
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
        Ok(Some((pb::SnapshotChunk { batches, ..Default::default() }, (log, next_index))))
    })
}

/// Stages a stream's entries in a new file under `dir` (checked as they
/// come: each follows the one before), fsynced once complete.
pub struct Stager {
    file: std::fs::File,
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
            file,
            staged: StagedEntries { path, prev, start_offset, count: 0 },
            next_index,
            next_offset: start_offset,
        })
    }

    /// Checks and appends one chunk's batches: each must verify, and follow
    /// the previous one (next index, contiguous offsets).
    pub fn push(&mut self, batches: &[Bytes]) -> Result<(), TransferError> {
        for batch in batches {
            let h = strata_record::verify(batch).map_err(|e| TransferError::Malformed(e.to_string()))?;
            if h.log_index != self.next_index || h.base_offset != self.next_offset {
                return Err(TransferError::Malformed(format!(
                    "entry {} at offset {} where entry {} at offset {} was due",
                    h.log_index, h.base_offset, self.next_index, self.next_offset
                )));
            }
            self.file.write_all(batch).map_err(io_at(&self.staged.path))?;
            self.next_index += 1;
            self.next_offset += if h.control { 0 } else { u64::from(h.record_count) };
            self.staged.count += 1;
        }
        Ok(())
    }

    /// The staged entries, durable, once the last one is `last`.
    pub fn finish(self, last: Option<EntryId>) -> Result<StagedEntries, TransferError> {
        let got = self.next_index.checked_sub(1);
        if self.staged.count > 0 && got != last.map(|l| l.index) {
            let _ = std::fs::remove_file(&self.staged.path);
            return Err(TransferError::Malformed(format!(
                "the stream ended at entry {got:?}, the snapshot's last is {:?}",
                last.map(|l| l.index)
            )));
        }
        self.file.sync_all().map_err(io_at(&self.staged.path))?;
        Ok(self.staged)
    }
}

/// Entries read back from a staging file per step.
const INSTALL_STEP: usize = 1024;

/// Replaces `log` with the staged entries: the log is reset to go on after
/// `prev` at the first staged offset, the entries are appended as they are
/// (the leader's bytes, ids and offsets) and awaited durable, and the
/// staging file is removed. A staging file without entries resets the log
/// to go on after `last` at `next_offset`.
pub async fn install(
    log: &PartitionLog,
    staged: &StagedEntries,
    last: EntryId,
    next_offset: u64,
) -> Result<(), TransferError> {
    let path = &staged.path;
    if staged.count == 0 {
        log.reset_to(last, next_offset).await?;
        let _ = std::fs::remove_file(path);
        return Ok(());
    }
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io_at(path))?);
    let mut pending = Vec::new();
    let mut tickets = Vec::new();
    let mut first = true;
    for _ in 0..staged.count {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(io_at(path))?;
        let size = u32::from_le_bytes(len) as usize;
        let mut buf = vec![0u8; size + 4];
        buf[..4].copy_from_slice(&len);
        reader.read_exact(&mut buf[4..]).map_err(io_at(path))?;
        let batch = Bytes::from(buf);
        let h =
            strata_record::verify(&batch).map_err(|e| TransferError::Malformed(format!("{}: {e}", path.display())))?;
        let id = EntryId { term: h.term, index: h.log_index };
        if first {
            // Everything this replica held goes; the log goes on where the
            // leader's retained entries begin.
            match staged.prev {
                Some(prev) => log.reset_to(prev, staged.start_offset).await?,
                None => log.reset_to_empty(staged.start_offset).await?,
            }
            first = false;
        }
        pending.push((batch, id));
        if pending.len() >= INSTALL_STEP {
            tickets.extend(log.submit_entries(std::mem::take(&mut pending)).await?);
        }
    }
    tickets.extend(log.submit_entries(pending).await?);
    for ticket in tickets {
        ticket.wait().await?;
    }
    match log.last_entry() {
        Some(l) if l == last => {}
        other => {
            return Err(TransferError::Malformed(format!(
                "the staged entries end at {other:?}, the snapshot's last is {last:?}"
            )));
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}
