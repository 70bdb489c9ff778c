//! Node liveness: whether each peer's process is up, and which run of it.
//!
//! Every node calls each peer's `Liveness` RPC every [`PING_EVERY`], from a
//! thread of its own over a connection of its own (a node busy with
//! thousands of elections must not starve them); the answers it gets, the
//! calls it receives and every Raft message a peer sends are evidence that
//! the peer is up. A peer is live while it was heard from within [`DEAD_AFTER`]
//! (counted from this process's start for a peer not heard from yet, so a
//! node that just started does not think everyone dead). Each process draws
//! a random *incarnation* when it starts: a peer heard with a new one has
//! restarted, even if it came back within [`DEAD_AFTER`].
//!
//! This is what lets idle partition groups stop their Raft timers
//! ([`crate::quiesce`]): one message per node pair and interval stands in for
//! one heartbeat per group, pair and interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::types::NodeId;

/// How often a node calls each peer.
pub const PING_EVERY: Duration = Duration::from_millis(100);
/// A peer not heard from for this long is not live. Matches the groups'
/// longest election timeout: a dead leader's followers start electing about
/// when they would have without quiescing.
pub const DEAD_AFTER: Duration = Duration::from_millis(1000);

/// A node whose main runtime has not run its beat for this long stops
/// calling its peers (see [`Liveness::runtime_stalled`]): twice the dead
/// time, so that a runtime only slowed by load keeps its node live.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// What this node knows of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    pub live: bool,
    /// The peer's incarnation as last heard (0: never heard).
    pub incarnation: u64,
    /// The peer said it is stopping (in its last liveness call or answer).
    pub draining: bool,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    heard: Option<Instant>,
    incarnation: u64,
    draining: bool,
}

/// This node's view of its peers' liveness.
#[derive(Debug)]
pub struct Liveness {
    started: Instant,
    incarnation: u64,
    peers: Mutex<HashMap<NodeId, Peer>>,
    /// When the main runtime last beat, in ms since `started`.
    main_beat: std::sync::atomic::AtomicU64,
    /// Woken when a peer restarts (a new incarnation) or is heard again
    /// after it was not live.
    changed: Notify,
    /// This node is stopping and hands its leaderships over
    /// ([`crate::handover`]): it stands for no election.
    draining: std::sync::atomic::AtomicBool,
    /// This node stopped handing over with groups it still leads: it makes
    /// and answers no liveness call, so that its peers find it gone and
    /// elect new leaders at once rather than when its process has exited.
    silent: std::sync::atomic::AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            incarnation: rand::random::<u64>().max(1),
            peers: Mutex::default(),
            main_beat: std::sync::atomic::AtomicU64::new(0),
            changed: Notify::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            silent: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This process's incarnation (never 0).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node is stopping: it hands its leaderships over and stands for
    /// no election from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Self::set_draining`] was called.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node stops making and answering liveness calls (see the
    /// field): its peers find it gone within [`DEAD_AFTER`].
    pub fn fall_silent(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Self::fall_silent`] was called.
    pub fn silent(&self) -> bool {
        self.silent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long this process has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records that `peer`, in `incarnation`, was heard from now.
    pub fn heard(&self, peer: NodeId, incarnation: u64) {
        if incarnation != 0 {
            self.record(peer, Some(incarnation), None);
        }
    }

    /// Records a liveness call or answer from `peer`, in `incarnation`,
    /// saying whether it is stopping.
    pub fn heard_call(&self, peer: NodeId, incarnation: u64, draining: bool) {
        if incarnation != 0 {
            self.record(peer, Some(incarnation), Some(draining));
        }
    }

    /// Records that `peer` was heard from now through a message that does
    /// not say which run of it sent it (a vote request): it is up, in the
    /// incarnation last heard. A peer never heard from is left alone (its
    /// first call or answer says its incarnation).
    pub fn touch(&self, peer: NodeId) {
        self.record(peer, None, None);
    }

    /// `draining`: what a liveness call or answer said (`None`: a message
    /// that does not say).
    fn record(&self, peer: NodeId, incarnation: Option<u64>, draining: Option<bool>) {
        let now = Instant::now();
        let Ok(mut peers) = self.peers.lock() else { return };
        let entry = peers.entry(peer).or_insert(Peer { heard: None, incarnation: 0, draining: false });
        let incarnation = match incarnation {
            Some(i) => i,
            None if entry.incarnation == 0 => return,
            None => entry.incarnation,
        };
        let was_live = entry.heard.is_some_and(|h| now.duration_since(h) < DEAD_AFTER);
        let restarted = entry.incarnation != 0 && entry.incarnation != incarnation;
        let first = entry.incarnation == 0;
        // A new run of the peer is not stopping (until it says so).
        let draining = draining.unwrap_or(entry.draining && !restarted);
        *entry = Peer { heard: Some(now), incarnation, draining };
        drop(peers);
        if restarted || (!was_live && !first) {
            self.changed.notify_waiters();
        }
    }

    /// Called every [`PING_EVERY`] from the node's main runtime: the
    /// liveness calls (made from a thread of their own) go out only while
    /// it is recent ([`Self::runtime_stalled`]).
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.main_beat.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node's main runtime has not beaten for [`STALL_AFTER`]: it
    /// serves no Raft messages, so this node must not look live to its
    /// peers (they would go on trusting its leaders, and refusing votes to
    /// replace them), and stops calling them.
    pub fn runtime_stalled(&self) -> bool {
        if self.silent() {
            return true;
        }
        let last = Duration::from_millis(self.main_beat.load(std::sync::atomic::Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) > STALL_AFTER
    }

    /// What is known of `peer` now.
    pub fn view(&self, peer: NodeId) -> PeerView {
        let now = Instant::now();
        let known = self.peers.lock().ok().and_then(|p| p.get(&peer).copied());
        let (heard, incarnation, draining) = known.map_or((None, 0, false), |p| (p.heard, p.incarnation, p.draining));
        let since = now.duration_since(heard.unwrap_or(self.started).max(self.started));
        PeerView { live: since < DEAD_AFTER, incarnation, draining }
    }

    /// Resolves the next time a peer restarts or comes back.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_is_live_until_it_is_silent_for_the_dead_time() {
        let l = Liveness::new();
        assert_eq!(
            l.view(2),
            PeerView { live: true, incarnation: 0, draining: false },
            "not dead before it could be heard"
        );
        tokio::time::advance(DEAD_AFTER).await;
        assert!(!l.view(2).live, "never heard since this node started");
        l.heard(2, 7);
        assert_eq!(l.view(2), PeerView { live: true, incarnation: 7, draining: false });
        tokio::time::advance(DEAD_AFTER - Duration::from_millis(1)).await;
        assert!(l.view(2).live);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.view(2), PeerView { live: false, incarnation: 7, draining: false });
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_or_a_return_wakes_the_watchers() {
        let l = std::sync::Arc::new(Liveness::new());
        l.heard(2, 7);
        let woken = |l: &std::sync::Arc<Liveness>| {
            let l = std::sync::Arc::clone(l);
            tokio::spawn(async move { l.changed().await })
        };
        let w = woken(&l);
        tokio::task::yield_now().await;
        l.heard(2, 7);
        tokio::task::yield_now().await;
        assert!(!w.is_finished(), "heard again, same run: nothing changed");
        l.heard(2, 8);
        w.await.expect("a restart wakes");
        let w = woken(&l);
        tokio::task::yield_now().await;
        tokio::time::advance(DEAD_AFTER * 2).await;
        l.heard(2, 8);
        w.await.expect("a return wakes");
        l.heard(3, 0);
        assert_eq!(l.view(3).incarnation, 0, "incarnation 0 is no evidence");
        tokio::time::advance(DEAD_AFTER).await;
        l.touch(3);
        assert!(!l.view(3).live, "a message from a peer never heard says nothing of its run");
        l.touch(2);
        assert_eq!(
            l.view(2),
            PeerView { live: true, incarnation: 8, draining: false },
            "a Raft message keeps a peer live"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_says_it_is_stopping_is_draining_until_it_restarts() {
        let l = Liveness::new();
        l.heard_call(2, 7, false);
        assert!(!l.view(2).draining);
        l.heard_call(2, 7, true);
        assert!(l.view(2).draining);
        l.heard(2, 7);
        assert!(l.view(2).draining, "a Raft message says nothing of it");
        l.heard(2, 8);
        assert!(!l.view(2).draining, "its next run is not stopping");
        assert!(!l.draining());
        l.set_draining();
        assert!(l.draining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_that_stops_beating_is_stalled() {
        let l = Liveness::new();
        l.beat();
        tokio::time::advance(STALL_AFTER).await;
        assert!(!l.runtime_stalled());
        l.beat();
        tokio::time::advance(STALL_AFTER + Duration::from_millis(1)).await;
        assert!(l.runtime_stalled(), "no beat for longer than STALL_AFTER");
        l.beat();
        assert!(!l.runtime_stalled());
    }
}
