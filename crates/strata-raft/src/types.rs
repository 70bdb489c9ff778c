//! The openraft type configuration and the mapping between Raft entries and
//! record batches.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::impls::leader_id_std;
use openraft::{EntryPayload, Membership};
use serde::{Deserialize, Serialize};
use strata_record::FormatError;
use strata_storage::EntryId;
use tokio::sync::oneshot;

/// Node ids are assigned by the operator and never reused.
pub type NodeId = u64;

/// How to reach a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `HOST:PORT` of the node's gRPC listener.
    pub addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// What a client proposes to a partition group: one record batch, as the
/// producer encoded it (the log stamps offsets, term and index on append).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub batch: Bytes,
    /// `acks=leader`: told where the batch landed once it is durable in the
    /// leader's own log (before it is committed). Never leaves the leader:
    /// entries travel and are stored as their batches only.
    #[serde(skip)]
    pub on_local_flush: Option<LocalFlush>,
    /// The trace this entry's append is part of (see [`crate::trace`]): on
    /// the leader, the produce request's span; on a follower, the leader's
    /// replication span. In memory only.
    #[serde(skip)]
    pub trace: Option<crate::trace::EntryTrace>,
}

impl Request {
    /// A proposal acknowledged once committed (`acks=quorum`).
    pub fn new(batch: Bytes) -> Self {
        Self { batch, on_local_flush: None, trace: None }
    }
}

/// Where an entry landed in the leader's log, once fsync'd there, or why it
/// could not be written.
pub type LocalFlushResult = Result<strata_storage::AppendInfo, String>;

/// A one-time notice of an entry's local flush. Clones share it (openraft
/// may clone an entry); the first to fire wins.
#[derive(Clone, Default)]
pub struct LocalFlush(Arc<Mutex<Option<oneshot::Sender<LocalFlushResult>>>>);

impl LocalFlush {
    pub fn new() -> (Self, oneshot::Receiver<LocalFlushResult>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    /// Tells the waiter (once; later calls do nothing).
    pub fn fire(&self, result: LocalFlushResult) {
        let tx = self.0.lock().ok().and_then(|mut tx| tx.take());
        if let Some(tx) = tx {
            let _ = tx.send(result);
        }
    }
}

impl std::fmt::Debug for LocalFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalFlush")
    }
}

/// A notice is not part of what an entry is: entries compare by their batch.
impl PartialEq for LocalFlush {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LocalFlush {}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} bytes", self.batch.len())
    }
}

/// What applying an entry answers: where its records landed. Blank and
/// membership entries answer zeros.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub base_offset: u64,
    pub record_count: u32,
    /// A controller entry applied as a no-op: why (its command lost a race
    /// or failed its checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

openraft::declare_raft_types!(
    /// Strata's Raft types: one per partition group. Standard Raft: at most
    /// one leader per term, so a log id is (term, index).
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Term = u64,
        LeaderId = leader_id_std::LeaderId<u64, NodeId>,
);

/// A Raft entry of a partition group.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A log id: (term, index).
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote (term, candidate, committed).
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Cluster membership of a group.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records at offset {}", self.record_count, self.base_offset)
    }
}

/// Control batch kinds.
pub(crate) const BLANK: &str = "raft.blank";
pub(crate) const MEMBERSHIP: &str = "raft.membership";

/// Why stored bytes are not a Raft entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("invalid batch: {0}")]
    Format(#[from] FormatError),
    #[error("unknown control batch kind '{0}'")]
    UnknownControl(String),
    #[error("malformed membership entry: {0}")]
    Membership(#[from] serde_json::Error),
}

pub fn log_id(id: EntryId) -> LogId {
    LogId::new_term_index(id.term, id.index)
}

pub fn entry_id(log_id: &LogId) -> EntryId {
    EntryId { term: log_id.leader_id.term, index: log_id.index }
}

/// The batch an entry is stored as (data: the producer's batch; otherwise a
/// control batch). Control batches are built the same way on every replica
/// (timestamp 0, which also keeps them out of the time index), so that
/// replicas hold identical bytes.
pub fn entry_to_batch(entry: &Entry) -> Result<Bytes, EntryError> {
    Ok(match &entry.payload {
        EntryPayload::Normal(req) => req.batch.clone(),
        EntryPayload::Blank => strata_record::control_batch(BLANK, b"", 0),
        EntryPayload::Membership(m) => strata_record::control_batch(MEMBERSHIP, &serde_json::to_vec(m)?, 0),
    })
}

/// The entry a stored batch is (its checksum verified).
pub fn batch_to_entry(id: EntryId, batch: Bytes) -> Result<Entry, EntryError> {
    let header = strata_record::verify(&batch)?;
    let payload = if header.control {
        let (kind, value) = strata_record::decode_control(&batch)?;
        match kind.as_str() {
            BLANK => EntryPayload::Blank,
            MEMBERSHIP => EntryPayload::Membership(serde_json::from_slice::<Membership<NodeId, NodeInfo>>(&value)?),
            _ => return Err(EntryError::UnknownControl(kind)),
        }
    } else {
        EntryPayload::Normal(Request::new(batch))
    };
    Ok(Entry { log_id: log_id(id), payload })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn entries_survive_the_trip_through_a_batch() {
        let id = EntryId { term: 3, index: 9 };
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let membership = Membership::new_with_defaults(vec![members], []);
        let data = strata_record::encode(&[strata_record::Record::default()], strata_record::Compression::None);
        for payload in
            [EntryPayload::Blank, EntryPayload::Membership(membership), EntryPayload::Normal(Request::new(data))]
        {
            let entry = Entry { log_id: log_id(id), payload };
            let batch = entry_to_batch(&entry).expect("encode");
            let back = batch_to_entry(id, batch).expect("decode");
            assert_eq!(back.log_id, entry.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", entry.payload));
        }
        let unknown = strata_record::control_batch("raft.other", b"", 1);
        assert!(matches!(batch_to_entry(id, unknown), Err(EntryError::UnknownControl(_))));
    }
}
