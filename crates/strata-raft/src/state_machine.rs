//! openraft's state machine for a partition.
//!
//! A partition's state at entry N *is* its log up to N, so applying an entry
//! changes no data: it answers the producer (a committed entry is fsync'd on
//! a majority of the replicas, which need not include this one) and moves
//! the high watermark, which makes the records visible to consumers here once
//! they are durable here too. The applied entry and membership are kept in
//! RocksDB (not synced, and only once the entry is durable here: the saved
//! entry never leads the segment log, and a lost update only means openraft
//! applies a few entries again).
//!
//! Snapshots hold the applied entry, the membership and the offset after the
//! last applied entry; a partition's snapshot is sent with the leader's
//! retained entries up to it ([`crate::transfer`]), and installing it on a
//! replica that does not hold that entry replaces its log with them.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use strata_storage::PartitionLog;

use tokio::sync::watch;

use crate::controller::{self, Metadata};
use crate::log_store::{HintClock, io_err};
use crate::transfer::{self, StagedEntries};
use crate::types::{LogId, Response, SnapshotMeta, StoredMembership, TypeConfig, entry_id};

const APPLIED: &str = "raft.applied";
const SNAPSHOT: &str = "raft.snapshot";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// What a snapshot's data says about the group at its last entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// Offset after the last record of the last entry.
    pub next_offset: u64,
    /// The controller's metadata (the controller group only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// On the receiving replica: the leader's retained entries up to the
    /// snapshot's last one, staged on disk (see [`crate::transfer`]).
    #[serde(skip)]
    pub staged: Option<StagedEntries>,
}

/// A snapshot as openraft handles it.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, PartitionSnapshot>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: PartitionSnapshot,
}

impl StoredSnapshot {
    fn snapshot(&self) -> Snapshot {
        Snapshot { meta: self.meta.clone(), snapshot: self.data.clone() }
    }
}

/// What a group's entries mean.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A partition: its state is its log; applying makes records visible.
    Partition,
    /// The controller: applying commands changes the cluster's metadata,
    /// published on this channel.
    Controller(watch::Sender<Arc<Metadata>>),
}

/// The partition's current snapshot: in RocksDB (synced) and in memory,
/// shared by the state machine and its snapshot builders.
#[derive(Debug, Clone)]
struct Snapshots {
    log: PartitionLog,
    slot: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl Snapshots {
    async fn store(&self, stored: StoredSnapshot) -> Result<Snapshot, io::Error> {
        let bytes = serde_json::to_vec(&stored).map_err(io_err)?;
        self.log.save_state(SNAPSHOT, bytes, true).await.map_err(io_err)?;
        let snapshot = stored.snapshot();
        *self.slot.lock().map_err(|_| poisoned())? = Some(stored);
        Ok(snapshot)
    }

    fn current(&self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.slot.lock().map_err(|_| poisoned())?.as_ref().map(StoredSnapshot::snapshot))
    }
}

/// One partition's state machine.
#[derive(Debug)]
pub struct StateMachine {
    log: PartitionLog,
    state: AppliedState,
    snapshots: Snapshots,
    kind: Kind,
    /// Applied entries not yet durable here, oldest first (see
    /// [`StateMachine::save_durable_applied`]).
    unsaved: VecDeque<LogId>,
    applied_hint: HintClock,
}

fn poisoned() -> io::Error {
    io::Error::other("the snapshot lock was poisoned by a panic")
}

impl StateMachine {
    /// A partition's state machine: loads what was applied before, and makes
    /// it visible again.
    pub async fn open(log: PartitionLog) -> Result<Self, io::Error> {
        Self::open_kind(log, Kind::Partition).await
    }

    /// The controller's state machine over its log: the metadata as of the
    /// last applied entry is rebuilt (from the snapshot, then the log) and
    /// published on `metadata`.
    pub async fn open_controller(log: PartitionLog, metadata: watch::Sender<Arc<Metadata>>) -> Result<Self, io::Error> {
        let mut sm = Self::open_kind(log, Kind::Controller(metadata)).await?;
        sm.replay_controller().await?;
        Ok(sm)
    }

    async fn open_kind(log: PartitionLog, kind: Kind) -> Result<Self, io::Error> {
        let mut state: AppliedState = match log.load_state(APPLIED).await.map_err(io_err)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => AppliedState::default(),
        };
        // Entries the log no longer holds (purged after they were applied,
        // or replaced by a snapshot's) count as applied: only committed
        // entries are ever purged, and a snapshot install that a crash cut
        // short must not leave the applied entry below the log's start.
        if let Some(purged) = log.last_purged()
            && state.applied.is_none_or(|a| a.index < purged.index)
        {
            state.applied = Some(crate::types::log_id(purged));
        }
        if let Some(applied) = state.applied {
            log.set_applied(applied.index).map_err(io_err)?;
        }
        let snapshot = match log.load_state(SNAPSHOT).await.map_err(io_err)? {
            Some(b) => Some(serde_json::from_slice(&b).map_err(io_err)?),
            None => None,
        };
        let snapshots = Snapshots { log: log.clone(), slot: Arc::new(Mutex::new(snapshot)) };
        Ok(Self { log, state, snapshots, kind, unsaved: VecDeque::new(), applied_hint: HintClock::default() })
    }

    /// Rebuilds the controller's metadata up to the applied entry: the
    /// snapshot's, then every data entry after it, in order.
    async fn replay_controller(&mut self) -> Result<(), io::Error> {
        let Kind::Controller(tx) = &self.kind else { return Ok(()) };
        let snapshot = self.snapshots.current()?;
        let mut metadata = snapshot.as_ref().and_then(|s| s.snapshot.metadata.clone()).unwrap_or_default();
        let from = snapshot.and_then(|s| s.meta.last_log_id).map_or(0, |l| l.index + 1);
        if let Some(applied) = self.state.applied {
            let mut next = from;
            while next <= applied.index {
                let chunk = self.log.entries(next, applied.index + 1, 4 << 20).await.map_err(io_err)?;
                let Some((last, _)) = chunk.last() else { break };
                next = last.index + 1;
                for (_, batch) in chunk {
                    // Blank and membership entries are control batches.
                    if !strata_record::verify(&batch).map_err(io_err)?.control {
                        controller::apply_batch(&mut metadata, &batch);
                    }
                }
            }
        }
        tx.send_replace(Arc::new(metadata));
        Ok(())
    }

    fn save_applied(&mut self) -> Result<(), io::Error> {
        self.unsaved.clear();
        let bytes = serde_json::to_vec(&self.state).map_err(io_err)?;
        self.log.stash_state(APPLIED, &bytes).map_err(io_err)
    }

    /// Saves the last applied entry that is durable here: the saved entry
    /// never leads the log (after a crash openraft re-applies from it, and a
    /// lost or late update only means it applies a few entries again, so
    /// apply calls this at most every [`crate::log_store::HINT_INTERVAL`]). Applied entries not
    /// yet durable wait in `unsaved` for a later call.
    fn save_durable_applied(&mut self) -> Result<(), io::Error> {
        let durable = self.log.progress().durable.map_or(0, |d| d.index);
        let mut newest = None;
        while let Some(id) = self.unsaved.front().filter(|id| id.index <= durable) {
            newest = Some(*id);
            self.unsaved.pop_front();
        }
        let Some(applied) = newest else { return Ok(()) };
        let state = AppliedState { applied: Some(applied), membership: self.state.membership.clone() };
        let bytes = serde_json::to_vec(&state).map_err(io_err)?;
        self.log.stash_state(APPLIED, &bytes).map_err(io_err)
    }
}

/// Builds snapshots of one partition (shares the state machine's current
/// snapshot slot).
#[derive(Debug)]
pub struct SnapshotBuilder {
    state: AppliedState,
    snapshots: Snapshots,
    /// The controller's metadata as of the applied entry.
    metadata: Option<Metadata>,
    /// The offset after the applied entry.
    next_offset: u64,
    /// Why the applied entry did not become durable here, if it did not:
    /// the snapshot is then refused rather than built on an offset that
    /// may not hold.
    not_durable: Option<String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = PartitionSnapshot;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        if let Some(why) = &self.not_durable {
            return Err(io::Error::other(format!(
                "no snapshot: the applied entry did not become durable on this replica: {why}"
            )));
        }
        let data = PartitionSnapshot { next_offset: self.next_offset, metadata: self.metadata.clone(), staged: None };
        let meta = SnapshotMeta { last_log_id: self.state.applied, last_membership: self.state.membership.clone() };
        self.snapshots.store(StoredSnapshot { meta, data }).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = PartitionSnapshot;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.state.applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut answers = Vec::new();
        let mut last = None;
        let mut membership_changed = false;
        let mut metadata = match &self.kind {
            Kind::Controller(tx) => Some(Metadata::clone(&tx.borrow())),
            Kind::Partition => None,
        };
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = match &entry.payload {
                EntryPayload::Normal(req) => {
                    let rejected = metadata.as_mut().and_then(|m| controller::apply_batch(m, &req.batch));
                    // The log checked the batch when it took it: a header
                    // that does not parse here cannot happen, and answers
                    // zeros rather than stop the group.
                    let h = strata_record::BatchHeader::parse(&req.batch).ok();
                    Response {
                        base_offset: h.as_ref().map_or(0, |h| h.base_offset),
                        record_count: h.as_ref().map_or(0, |h| h.record_count),
                        rejected,
                    }
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    membership_changed = true;
                    Response::default()
                }
                EntryPayload::Blank => Response::default(),
            };
            last = Some(entry.log_id);
            if let Some(r) = responder {
                answers.push((r, response));
            }
        }
        if let Some(last) = last {
            // A partition's entries are answered at once: committed means
            // fsync'd on a majority, which need not include this replica
            // (readers here still see them only once durable here, and the
            // applied entry is saved only once it is). The controller's
            // metadata, and a membership, wait for this replica's fsync.
            let wait = membership_changed || matches!(self.kind, Kind::Controller(_));
            if wait {
                self.log.wait_durable(last.index).await.map_err(io_err)?;
            }
            self.state.applied = Some(last);
            self.log.set_applied(last.index).map_err(io_err)?;
            self.unsaved.push_back(last);
            if wait || self.applied_hint.due() {
                self.save_durable_applied()?;
            }
        }
        if let (Kind::Controller(tx), Some(m)) = (&self.kind, metadata) {
            tx.send_replace(Arc::new(m));
        }
        for (responder, response) in answers {
            responder.send(response);
        }
        Ok(())
    }

    /// A snapshot that openraft may defer (`force` false) is deferred when
    /// the applied entry cannot become durable here (the partition failed):
    /// a snapshot built then would name an offset that may not hold. One it
    /// needs (`force`) is refused by its builder, which stops this replica's
    /// group: its log cannot be trusted until a restart runs recovery.
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        let builder = self.get_snapshot_builder().await;
        (force || builder.not_durable.is_none()).then_some(builder)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let metadata = match &self.kind {
            Kind::Controller(tx) => Some(Metadata::clone(&tx.borrow())),
            Kind::Partition => None,
        };
        // The offset after the applied entry, taken now (once it is durable
        // here, so it is visible): entries applied while openraft builds the
        // snapshot elsewhere must not move it.
        let mut not_durable = None;
        if let Some(applied) = self.state.applied
            && let Err(e) = self.log.wait_durable(applied.index).await
        {
            tracing::warn!(log = ?self.log, error = %e, "the applied entry did not become durable before a snapshot");
            not_durable = Some(e.to_string());
        }
        let next_offset = self.log.high_watermark();
        SnapshotBuilder {
            state: self.state.clone(),
            snapshots: self.snapshots.clone(),
            metadata,
            next_offset,
            not_durable,
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: PartitionSnapshot) -> Result<(), io::Error> {
        if let Some(last) = meta.last_log_id {
            // Unless this replica holds the snapshot's last entry itself (then
            // openraft purges up to it), the snapshot supersedes its whole log:
            // the log goes on after that entry, at the leader's offset.
            let id = entry_id(&last);
            // No entry could follow one at the last index (found by fuzzing).
            let after = id.index.checked_add(1).ok_or_else(|| {
                io::Error::other(format!("a snapshot ending at entry {} leaves no index for another entry", id.index))
            })?;
            let held = self.log.entries(id.index, after, 1).await.map_err(io_err)?;
            match &snapshot.staged {
                Some(staged) if held.first().is_none_or(|(e, _)| *e != id) => {
                    // The leader's retained entries replace this log. A crash
                    // in between leaves a log that starts after `prev` with
                    // part of them: `open` takes the purge point as applied,
                    // and the leader sends the rest again.
                    transfer::reset_for(&self.log, staged, id).await.map_err(io_err)?;
                    transfer::append_staged(&self.log, staged, id).await.map_err(io_err)?;
                }
                None if held.first().is_none_or(|(e, _)| *e != id) => {
                    self.log.reset_to(id, snapshot.next_offset).await.map_err(io_err)?;
                }
                _ => {}
            }
            self.log.set_applied(id.index).map_err(io_err)?;
        }
        if let Kind::Controller(tx) = &self.kind {
            tx.send_replace(Arc::new(snapshot.metadata.clone().unwrap_or_default()));
        }
        let data = PartitionSnapshot { staged: None, ..snapshot };
        self.snapshots.store(StoredSnapshot { meta: meta.clone(), data }).await?;
        self.state = AppliedState { applied: meta.last_log_id, membership: meta.last_membership.clone() };
        self.save_applied()
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.snapshots.current()
    }
}
