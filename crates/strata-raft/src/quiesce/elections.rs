//! Elections of partition groups, run by the quiescer rather than by
//! openraft's election timers, at most [`MAX_ELECTIONS`] at a time.
//!
//! A node whose peer died may have to elect a leader for thousands of
//! groups at once. Left to their timers, every one of those groups would
//! ask for votes every 0.5-1 s until it won: far more requests than two
//! cores answer in time, so votes time out, timed-out calls are reset,
//! the peer closes the connection for too many resets, and nothing is
//! elected (seen at 1,700 groups). Here each group stands once, with a
//! pre-vote, and is asked again only after its attempt ended: the work in
//! flight is bounded, and the node gets through the queue at the speed its
//! disks and peers answer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::Semaphore;

use crate::group::PartitionRaft;
use crate::network::{GroupId, HeardFrom, Identity};

/// Elections this node runs at once.
pub const MAX_ELECTIONS: usize = 64;
/// How long one attempt waits for a leader before it gives its place up (a
/// pre-vote refused because the leader still serves ends only this way).
pub const ELECTION_WAIT: Duration = Duration::from_secs(1);

/// This node's elections in flight or waiting for a place.
#[derive(Debug)]
pub(super) struct Elections {
    identity: Arc<Identity>,
    pending: Arc<Mutex<HashSet<GroupId>>>,
    places: Arc<Semaphore>,
}

impl Elections {
    pub(super) fn new(identity: Arc<Identity>) -> Self {
        Self { identity, pending: Arc::default(), places: Arc::new(Semaphore::new(MAX_ELECTIONS)) }
    }

    /// Groups standing or waiting to.
    pub(super) fn pending(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Queues an election of `group` unless one is queued already; returns
    /// whether it queued one.
    pub(super) fn stand(&self, group: GroupId, raft: PartitionRaft, heard: Arc<HeardFrom>) -> bool {
        let Ok(mut pending) = self.pending.lock() else { return false };
        if !pending.insert(group) {
            return false;
        }
        drop(pending);
        let (identity, pending, places) =
            (Arc::clone(&self.identity), Arc::clone(&self.pending), Arc::clone(&self.places));
        tokio::spawn(async move {
            if let Ok(_place) = places.acquire_owned().await {
                stand(&identity, &raft, &heard).await;
            }
            if let Ok(mut p) = pending.lock() {
                p.remove(&group);
            }
        });
        true
    }
}

/// One attempt: a pre-vote, then (if a quorum would grant it) the election,
/// waiting up to [`ELECTION_WAIT`] for a leader. Skipped when the group
/// found a leader while it waited for its place.
async fn stand(identity: &Identity, raft: &PartitionRaft, heard: &HeardFrom) {
    let (term, settled) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let trusted = m.current_leader.is_some_and(|l| {
            l == identity.node_id || super::trusts(&identity.liveness, heard.get(), m.current_term, l)
        });
        (m.current_term, m.state == ServerState::Leader || trusted)
    };
    // A node that started stopping while this waited stands for nothing.
    if settled || identity.liveness.draining() || raft.trigger().elect(true).await.is_err() {
        return;
    }
    let _ = raft
        .wait(Some(ELECTION_WAIT))
        .metrics(|m| m.current_term > term && m.current_leader.is_some(), "a new leader")
        .await;
}
