//! openraft's state machine for a partition.
//!
//! A partition's state at entry N *is* its log up to N, so applying an entry
//! changes no data: it waits until the entry is durable on this replica,
//! then moves the high watermark, which makes the records visible to
//! consumers. The applied entry and membership are kept in RocksDB (not
//! synced: they never lead the segment log, because apply waits for the
//! fsync, and a lost update only means openraft applies a few entries again).
//!
//! Snapshots hold the applied entry, the membership and the offset after the
//! last applied entry; installing one on a replica that does not hold that
//! entry resets its log to go on after it, at the leader's offset. Sending
//! the retained segments with a snapshot (so a replica that fell behind the
//! leader's retention gets the data, not only the position) is the next
//! step; see docs/ARCHITECTURE.md.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use strata_storage::PartitionLog;

use crate::types::{NodeId, NodeInfo, Response, TypeConfig, entry_id};

const APPLIED: &str = "raft.applied";
const SNAPSHOT: &str = "raft.snapshot";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
}

/// What a snapshot's data says about the partition at its last entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// Offset after the last record of the last entry.
    pub next_offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data: Vec<u8>,
}

/// One partition's state machine.
#[derive(Debug)]
pub struct StateMachine {
    log: PartitionLog,
    state: AppliedState,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

fn sm_error(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

fn snapshot_error(e: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(e)).into()
}

fn poisoned() -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, AnyError::error("the snapshot lock was poisoned by a panic")).into()
}

impl StateMachine {
    /// Loads what was applied before, and makes it visible again.
    pub async fn open(log: PartitionLog) -> Result<Self, StorageError<NodeId>> {
        let state: AppliedState = match log.load_state(APPLIED).await.map_err(|e| sm_error(&e))? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| sm_error(&e))?,
            None => AppliedState::default(),
        };
        if let Some(applied) = state.applied {
            log.set_applied(applied.index).map_err(|e| sm_error(&e))?;
        }
        let snapshot = match log.load_state(SNAPSHOT).await.map_err(|e| sm_error(&e))? {
            Some(b) => Some(serde_json::from_slice(&b).map_err(|e| sm_error(&e))?),
            None => None,
        };
        Ok(Self { log, state, snapshot: Arc::new(Mutex::new(snapshot)) })
    }

    fn save_applied(&self) -> strata_storage::Result<()> {
        let bytes = serde_json::to_vec(&self.state)
            .map_err(|e| strata_storage::StorageError::Index(format!("cannot encode the applied state: {e}")))?;
        self.log.stash_state(APPLIED, &bytes)
    }
}

/// Builds snapshots of one partition (shares the state machine's current
/// snapshot slot).
#[derive(Debug)]
pub struct SnapshotBuilder {
    log: PartitionLog,
    state: AppliedState,
    slot: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = serde_json::to_vec(&PartitionSnapshot { next_offset: self.log.high_watermark() })
            .map_err(|e| snapshot_error(&e))?;
        let id = match &self.state.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, strata_record::now_ms()),
            None => format!("empty-{}", strata_record::now_ms()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.state.applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: id,
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let bytes = serde_json::to_vec(&stored).map_err(|e| snapshot_error(&e))?;
        self.log.save_state(SNAPSHOT, bytes, true).await.map_err(|e| snapshot_error(&e))?;
        *self.slot.lock().map_err(|_| poisoned())? = Some(stored);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>> {
        Ok((self.state.applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut last = None;
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Normal(req) => {
                    let h = strata_record::BatchHeader::parse(&req.batch).map_err(|e| sm_error(&e))?;
                    Response { base_offset: h.base_offset, record_count: h.record_count }
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Response::default()
                }
                EntryPayload::Blank => Response::default(),
            };
            last = Some(entry.log_id);
            responses.push(response);
        }
        if let Some(last) = last {
            // Visible only once durable here: what is applied never leads the log.
            self.log.wait_durable(last.index).await.map_err(|e| sm_error(&e))?;
            self.state.applied = Some(last);
            self.log.set_applied(last.index).map_err(|e| sm_error(&e))?;
            self.save_applied().map_err(|e| sm_error(&e))?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { log: self.log.clone(), state: self.state.clone(), slot: Arc::clone(&self.snapshot) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let partition: PartitionSnapshot = serde_json::from_slice(&data).map_err(|e| snapshot_error(&e))?;
        if let Some(last) = meta.last_log_id {
            // Unless this replica holds the snapshot's last entry itself (then
            // openraft purges up to it), the snapshot supersedes its whole log:
            // the log goes on after that entry, at the leader's offset.
            let id = entry_id(&last);
            let held = self.log.entries(id.index, id.index + 1, 1).await.map_err(|e| snapshot_error(&e))?;
            if held.first().is_none_or(|(e, _)| *e != id) {
                self.log.reset_to(id, partition.next_offset).await.map_err(|e| snapshot_error(&e))?;
            }
        }
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let bytes = serde_json::to_vec(&stored).map_err(|e| snapshot_error(&e))?;
        self.log.save_state(SNAPSHOT, bytes, true).await.map_err(|e| snapshot_error(&e))?;
        *self.snapshot.lock().map_err(|_| poisoned())? = Some(stored);
        self.state = AppliedState { applied: meta.last_log_id, membership: meta.last_membership.clone() };
        self.save_applied().map_err(|e| sm_error(&e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let slot = self.snapshot.lock().map_err(|_| poisoned())?;
        Ok(slot.as_ref().map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
    }
}
