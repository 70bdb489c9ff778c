//! openraft's log storage over a partition's segment log.
//!
//! Entries are the log's batches; the vote (synced) and the committed entry
//! (not synced: after a crash openraft learns it again from the leader) are
//! named state in RocksDB beside the indices. `append` returns once the
//! entries are written (so replication can read them at once) and reports
//! the flush when the fsync is done: the leader replicates while it syncs.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use strata_storage::PartitionLog;

use crate::types::{NodeId, TypeConfig, batch_to_entry, entry_id, entry_to_batch, log_id};

/// Bytes read from the segments per step when openraft asks for a range.
const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;

const VOTE: &str = "raft.vote";
const COMMITTED: &str = "raft.committed";

/// One partition's Raft log; cheap to clone (openraft's log reader is one).
#[derive(Clone, Debug)]
pub struct LogStore {
    log: PartitionLog,
}

impl LogStore {
    pub fn new(log: PartitionLog) -> Self {
        Self { log }
    }
}

fn io(make: fn(AnyError) -> StorageIOError<NodeId>, e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    make(AnyError::new(e)).into()
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
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (mut next, end) = range_of(&range);
        let mut out = Vec::new();
        while next < end {
            let chunk =
                self.log.entries(next, end, READ_CHUNK_BYTES).await.map_err(|e| io(StorageIOError::read_logs, &e))?;
            if chunk.is_empty() {
                break;
            }
            for (id, batch) in chunk {
                next = id.index + 1;
                out.push(batch_to_entry(id, batch).map_err(|e| io(StorageIOError::read_logs, &e))?);
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged = self.log.last_purged();
        let last = match (self.log.last_entry(), purged) {
            (Some(l), Some(p)) if p.index > l.index => Some(p),
            (None, p) => p,
            (l, _) => l,
        };
        Ok(LogState { last_purged_log_id: purged.map(log_id), last_log_id: last.map(log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(vote).map_err(|e| io(StorageIOError::write_vote, &e))?;
        self.log.save_state(VOTE, bytes, true).await.map_err(|e| io(StorageIOError::write_vote, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        match self.log.load_state(VOTE).await.map_err(|e| io(StorageIOError::read_vote, &e))? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| io(StorageIOError::read_vote, &e)),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&committed).map_err(|e| io(StorageIOError::write, &e))?;
        self.log.stash_state(COMMITTED, &bytes).map_err(|e| io(StorageIOError::write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        match self.log.load_state(COMMITTED).await.map_err(|e| io(StorageIOError::read, &e))? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map_err(|e| io(StorageIOError::read, &e)),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batches = Vec::new();
        for entry in entries {
            let batch = entry_to_batch(&entry).map_err(|e| io(StorageIOError::write_logs, &e))?;
            batches.push((batch, entry_id(&entry.log_id)));
        }
        let tickets = self.log.submit_entries(batches).await.map_err(|e| io(StorageIOError::write_logs, &e))?;
        tokio::spawn(async move {
            let mut result = Ok(());
            for ticket in tickets {
                if let Err(e) = ticket.wait().await {
                    result = Err(std::io::Error::other(e));
                    break;
                }
            }
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.log.truncate(log_id.index).await.map_err(|e| io(StorageIOError::write_logs, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.log.purge(entry_id(&log_id)).await.map_err(|e| io(StorageIOError::write_logs, &e))
    }
}
