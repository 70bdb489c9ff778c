//! Raft messages between nodes over gRPC (`strata.internal.v1.Raft`), on
//! the cluster listener (never the client one), with mutual TLS between
//! nodes unless the cluster runs `--insecure-cluster`.
//!
//! Every group of a node pair shares one tonic channel (one HTTP/2
//! connection; its streams carry the concurrency); each message names its
//! group, and the receiving node routes it through its [`Groups`]. Calls
//! carry openraft's deadline; an unreachable peer or a group the peer does
//! not host (yet) is reported as unreachable, and openraft backs off
//! ([`Connection::backoff`]).
//!
//! - [`codec`]: protobuf messages to openraft's and back;
//! - [`validate`]: what an incoming message must satisfy before openraft
//!   sees it (terms and indices in range, the sender is who it says, entries
//!   contiguous, members only);
//! - [`server`]: the service peers call ([`RaftService`]);
//! - [`client`]: this node's connections to its peers ([`Peers`]) and
//!   openraft's network over them.

mod client;
mod codec;
mod server;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use strata_proto::internal as pb;
use tonic::Status;

use crate::group::PartitionRaft;
use crate::types::NodeId;

pub use client::{Connection, Network, Peers, TransportError};
pub use server::{CommandCheck, LEADER_HEADER, RaftService, Written};

/// Largest Raft message accepted or sent.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Deadline of an AppendEntries call that carries entries (the follower
/// fsyncs them before it answers). A follower that is down fails at once
/// (connection refused) or through the keep-alive; one that is slow only
/// slows its own replication stream.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Which Raft group a message is for: a partition, or (topic id 0) the
/// cluster controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    pub topic_id: u64,
    pub partition: u32,
}

impl GroupId {
    pub const CONTROLLER: Self = Self { topic_id: 0, partition: 0 };
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Self::CONTROLLER {
            f.write_str("controller")
        } else {
            write!(f, "topic {} partition {}", self.topic_id, self.partition)
        }
    }
}

impl From<GroupId> for pb::GroupId {
    fn from(g: GroupId) -> Self {
        Self { topic_id: g.topic_id, partition: g.partition }
    }
}

impl From<pb::GroupId> for GroupId {
    fn from(g: pb::GroupId) -> Self {
        Self { topic_id: g.topic_id, partition: g.partition }
    }
}

/// A group this node runs, and the leader it last heard an append from.
struct Registered {
    raft: PartitionRaft,
    heard: Arc<HeardFrom>,
}

/// The leader a group last heard an append from here: its term, its node
/// and that node's process incarnation (as the append said). A quiescent
/// follower trusts a leader only while this names it in the current term
/// and its node still runs in that incarnation ([`crate::quiesce`]).
/// Also the handover its leader asked for, if any.
#[derive(Debug, Default)]
pub struct HeardFrom {
    last: std::sync::Mutex<(u64, NodeId, u64)>,
    /// (term, node): the leader of `term` hands the group over to `node`
    /// (a `TransferLeader` it sent, or, on the leader, its own request).
    handover: std::sync::Mutex<Option<(u64, NodeId)>>,
}

impl HeardFrom {
    /// Records an append of `term` from `leader` in `incarnation`; an
    /// older term (a deposed leader's late append) changes nothing.
    pub fn record(&self, term: u64, leader: NodeId, incarnation: u64) {
        if let Ok(mut h) = self.last.lock()
            && term >= h.0
        {
            *h = (term, leader, incarnation);
        }
    }

    /// (term, leader, incarnation); zeros when nothing was heard.
    pub fn get(&self) -> (u64, NodeId, u64) {
        self.last.lock().map(|h| *h).unwrap_or_default()
    }

    /// Records that the leader of `term` hands the group over to `to`.
    pub fn hand_over(&self, term: u64, to: NodeId) {
        if let Ok(mut h) = self.handover.lock() {
            *h = Some((term, to));
        }
    }

    /// Whether the leader of `term` handed the group over to `candidate`:
    /// the one leadership-transfer election a replica lets through.
    pub fn handed_over(&self, term: u64, candidate: NodeId) -> bool {
        self.handover.lock().is_ok_and(|h| *h == Some((term, candidate)))
    }
}

/// The Raft groups this node runs, by group: where incoming messages go.
#[derive(Clone, Default)]
pub struct Groups {
    inner: Arc<RwLock<HashMap<GroupId, Registered>>>,
    /// Woken whenever a group is added.
    added: Arc<tokio::sync::Notify>,
    /// Groups this node stopped running (at most [`REMOVED_REMEMBERED`]):
    /// a message for one is not waited for ([`Groups::wait_for`]).
    removed: Arc<std::sync::Mutex<std::collections::HashSet<GroupId>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().map(|g| g.len()).unwrap_or(0);
        f.debug_struct("Groups").field("groups", &n).finish()
    }
}

/// Removed groups remembered; past this many the memory is cleared (a
/// message for a forgotten one then only waits, as for a group not started).
const REMOVED_REMEMBERED: usize = 65_536;

impl Groups {
    pub fn insert(&self, group: GroupId, raft: PartitionRaft) {
        if let Ok(mut g) = self.inner.write() {
            g.insert(group, Registered { raft, heard: Arc::default() });
        }
        if let Ok(mut r) = self.removed.lock() {
            r.remove(&group);
        }
        self.added.notify_waiters();
    }

    /// `group`, waiting up to `wait` for it to be added: a group about to
    /// start (a new partition), not one this node stopped running.
    pub async fn wait_for(&self, group: GroupId, wait: std::time::Duration) -> Option<PartitionRaft> {
        if self.removed.lock().is_ok_and(|r| r.contains(&group)) {
            return self.get(group);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(raft) = self.get(group) {
                return Some(raft);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return None;
            }
        }
    }

    /// This node runs `group` (without cloning its handle).
    pub fn contains(&self, group: GroupId) -> bool {
        self.inner.read().is_ok_and(|g| g.contains_key(&group))
    }

    pub fn get(&self, group: GroupId) -> Option<PartitionRaft> {
        self.inner.read().ok().and_then(|g| g.get(&group).map(|r| r.raft.clone()))
    }

    pub fn remove(&self, group: GroupId) -> Option<PartitionRaft> {
        let removed = self.inner.write().ok().and_then(|mut g| g.remove(&group)).map(|r| r.raft);
        if removed.is_some()
            && let Ok(mut r) = self.removed.lock()
        {
            if r.len() >= REMOVED_REMEMBERED {
                r.clear();
            }
            r.insert(group);
        }
        removed
    }

    /// Who `group` last heard an append from (`None`: not run here).
    pub fn heard(&self, group: GroupId) -> Option<Arc<HeardFrom>> {
        self.inner.read().ok().and_then(|g| g.get(&group).map(|r| Arc::clone(&r.heard)))
    }

    /// Every group, with who it last heard an append from.
    pub fn all_heard(&self) -> Vec<(GroupId, PartitionRaft, Arc<HeardFrom>)> {
        self.inner
            .read()
            .map(|g| g.iter().map(|(id, r)| (*id, r.raft.clone(), Arc::clone(&r.heard))).collect())
            .unwrap_or_default()
    }

    /// Every group.
    pub fn all(&self) -> Vec<PartitionRaft> {
        self.inner.read().map(|g| g.values().map(|r| r.raft.clone()).collect()).unwrap_or_default()
    }

    /// Removes and returns every group.
    pub fn drain(&self) -> Vec<PartitionRaft> {
        self.inner.write().map(|mut g| g.drain().map(|(_, r)| r.raft).collect()).unwrap_or_default()
    }
}

// ----- identity ----------------------------------------------------------------

/// Who this node is, shared by its Raft service and its connections: its
/// id, the members it was configured with, and its cluster's id once known.
#[derive(Debug)]
pub struct Identity {
    pub node_id: NodeId,
    pub members: Vec<NodeId>,
    cluster_id: RwLock<String>,
    /// Snapshot transfers this node's connections and service completed.
    pub transfers: Transfers,
    /// Which peers are up, and which run of each (see [`crate::liveness`]).
    pub liveness: crate::liveness::Liveness,
}

/// Snapshot transfers completed (partition snapshots, with their log).
#[derive(Debug, Default)]
pub struct Transfers {
    pub sent: std::sync::atomic::AtomicU64,
    pub received: std::sync::atomic::AtomicU64,
}

impl Identity {
    pub fn new(node_id: NodeId, members: Vec<NodeId>, cluster_id: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            members,
            cluster_id: RwLock::new(cluster_id.unwrap_or_default()),
            transfers: Transfers::default(),
            liveness: crate::liveness::Liveness::new(),
        })
    }

    /// Empty while this node does not know its cluster.
    pub fn cluster_id(&self) -> String {
        self.cluster_id.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn set_cluster_id(&self, id: &str) {
        if let Ok(mut c) = self.cluster_id.write() {
            id.clone_into(&mut c);
        }
    }

    /// Refuses a message from a node of another cluster. A side that does
    /// not know its cluster yet (a new node, or one that has not applied
    /// the cluster's first entry) is let through: Raft itself keeps it
    /// consistent, and refusing it could stall an election.
    fn check_cluster(&self, sender: &str) -> Result<(), Status> {
        let mine = self.cluster_id();
        if !mine.is_empty() && !sender.is_empty() && mine != sender {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {mine}, the sender to cluster {sender}: \
                 a node was started with another cluster's data directory or peer list",
                self.node_id
            )));
        }
        Ok(())
    }
}
