//! Quiescing idle partition groups: an idle group costs no CPU.
//!
//! openraft drives each group with a ticker (every ~20 ms for a 100 ms
//! heartbeat interval): the leader heartbeats its followers, a follower
//! checks its election timer. With thousands of groups per node those
//! wake-ups and messages were the whole cost of an idle cluster. Here every
//! partition group starts with its ticker parked (`enable_tick = false`,
//! [`crate::group::partition_config`]) and one task per node, the
//! [`Quiescer`], decides every [`SWEEP_EVERY`] what each group needs:
//!
//! - **A leader** never ticks: entries, commits and catching a follower up
//!   do not need the ticker (openraft replicates them as they come), and
//!   its followers need no heartbeats (below). Heartbeats from thousands of
//!   new leaders at once were what overloaded the survivors of a dead node.
//!   openraft retries a failed replication stream only at the group's next
//!   event, so a leader whose live follower lags and made no progress since
//!   the last sweep sends it one heartbeat and resets its backoff, at most
//!   every [`NUDGE_EVERY`].
//! - **A follower** does not tick while it *trusts* its leader: the leader's
//!   vote is committed here, the leader's node is live by node liveness
//!   ([`crate::liveness`]: one message per node pair every 100 ms instead of
//!   one per group), and this replica heard an append from that leader in
//!   this term, sent by the process its node runs now (each append carries
//!   its sender's incarnation; a restarted node starts as a follower, so an
//!   append from its previous run vouches for nothing). Otherwise (no leader known, a candidate, the
//!   leader's node silent for [`crate::liveness::DEAD_AFTER`] or restarted)
//!   it stands for election: the quiescer queues one attempt at a time
//!   ([`elections`]: a pre-vote, then the vote, at most
//!   [`elections::MAX_ELECTIONS`] groups at once), not openraft's election
//!   timer. One replica (chosen by the group's id among the live voters
//!   other than the leader it stopped trusting, so that the survivors of a
//!   dead node share its groups) stands after [`FIRST_CANDIDATE_WAIT`], the
//!   others after [`OTHER_CANDIDATES_WAIT`], so that they rarely split the
//!   vote. A group that never had a leader (a new partition, whose
//!   preferred leader stands at once) waits [`NEW_GROUP_WAIT`] (its first
//!   replica) or [`NEW_GROUP_WAIT`] + [`OTHER_CANDIDATES_WAIT`] (the
//!   others). No replica stands while fewer than a quorum of the voters are
//!   live.
//! - A replica that leads a group, or follows a leader it trusts, refuses
//!   a (pre-)vote to anyone else ([`crate::network::RaftService`]): a
//!   replica that wrongly found the leader dead does not unseat it.
//! - A group whose only voter is this node ticks (openraft elects it).
//! - A quiescent leader's lease (openraft takes writes only from a leader a
//!   quorum acknowledged within the last second) has run out: a write first
//!   renews it with one heartbeat round ([`renew_lease`]).
//! - No group of a process that has just started starts an election within
//!   [`STARTUP_GRACE`]: its peers learn of the restart first and send a
//!   heartbeat to every group they lead with it, so a follower that
//!   restarted learns its leader instead of disrupting it.
//!
//! Quiescing only ever withholds heartbeats and elections, which Raft's
//! safety does not rest on: votes, terms, log matching and commit rules are
//! openraft's, unchanged. What it changes is liveness, and the rules above
//! are there to keep it: a group whose leader's node dies elects a new
//! leader about [`crate::liveness::DEAD_AFTER`] + [`FIRST_CANDIDATE_WAIT`]
//! later, as it would have with heartbeats. The controller's group is not
//! quiesced.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;

mod elections;

pub use elections::{ELECTION_WAIT, MAX_ELECTIONS};

use crate::group::PartitionRaft;
use crate::liveness::{Liveness, PeerView};
use crate::network::{GroupId, Groups, HeardFrom, Identity};
use crate::types::NodeId;

/// How often the quiescer looks at every group (and at once when a peer
/// restarts or comes back).
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// A leader nudges a follower that lags without progress at most this
/// often.
pub const NUDGE_EVERY: Duration = Duration::from_secs(1);
/// How long a group without a trusted leader waits before the replica
/// chosen to stand first may start an election: long enough for the
/// replica asked to lead a new partition to win first.
pub const FIRST_CANDIDATE_WAIT: Duration = Duration::from_millis(300);
/// ... and before the other replicas may (only if the first has not won
/// by then: when it stands for many groups at once, that takes a while).
pub const OTHER_CANDIDATES_WAIT: Duration = Duration::from_secs(3);
/// After an attempt to be elected ended without a leader, a group stands
/// again after up to this much more (random: two replicas that stood at
/// once do not keep meeting).
const RETRY_JITTER_MS: u64 = 500;
/// ... and before any replica of a group that never had a leader may (a
/// new partition: its preferred leader stands at once and again until it
/// wins, and should not have to compete).
pub const NEW_GROUP_WAIT: Duration = Duration::from_secs(2);
/// No election in a process younger than this (see the module's notes).
pub const STARTUP_GRACE: Duration = Duration::from_millis(1200);

/// A leader whose last quorum acknowledgement is older than this renews
/// its lease before a write (openraft's lease is the longest election
/// timeout, 1 s).
const LEASE_RENEW_AFTER: Duration = Duration::from_millis(700);
/// How long a write waits for the renewal.
const LEASE_RENEW_WAIT: Duration = Duration::from_secs(2);

/// Renews a quiescent leader's lease before a write. openraft takes writes
/// only from a leader that a quorum acknowledged within its lease, and a
/// quiescent leader sends nothing that would be acknowledged: the first
/// write to an idle partition would be refused. One heartbeat round (a
/// round trip to the followers) renews it. Does nothing for a busy leader
/// or a node that does not lead.
pub async fn renew_lease(raft: &PartitionRaft) {
    // A group whose only voter is its leader needs no acknowledgement
    // (openraft's lease check passes at once; its clock never moves).
    let stale = |m: &openraft::RaftMetrics<crate::types::TypeConfig>| {
        m.state == ServerState::Leader
            && m.membership_config.membership().voter_ids().nth(1).is_some()
            && m.last_quorum_acked.as_ref().is_none_or(|t| openraft::Instant::elapsed(&**t) > LEASE_RENEW_AFTER)
    };
    if !stale(&raft.metrics().borrow_watched()) {
        return;
    }
    if raft.trigger().heartbeat().await.is_err() {
        return;
    }
    // A leader that lost its place answers the write with NOT_LEADER.
    let _ = raft.wait(Some(LEASE_RENEW_WAIT)).metrics(|m| !stale(m), "a renewed lease").await;
}

/// What the quiescer has done, for metrics.
#[derive(Debug, Default)]
pub struct QuiesceStats {
    /// Partition groups whose ticker runs, and whose ticker is parked, as
    /// of the last sweep.
    pub ticking: AtomicU64,
    pub quiet: AtomicU64,
    /// Times a group's ticker was started again.
    pub wakeups: AtomicU64,
    /// Candidacies this node queued (one attempt to be elected each).
    pub candidacies: AtomicU64,
    /// Candidacies queued or running, as of the last sweep.
    pub candidacies_pending: AtomicU64,
}

/// The quiescer's memory of one group.
#[derive(Debug)]
struct Pace {
    ticking: bool,
    /// Leader: its lagging followers and what they held at the last sweep,
    /// and when it last nudged them.
    lagging: Vec<(NodeId, Option<u64>)>,
    nudged: Option<Instant>,
    /// Since when the group has had no trusted leader.
    leaderless_since: Option<Instant>,
    /// A leader (any, this node too) was known at some sweep: the group is
    /// not a new one whose first leader is still being elected.
    had_leader: bool,
    /// The next attempt to be elected not before this.
    next_stand: Instant,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Self {
            ticking: false,
            lagging: Vec::new(),
            nudged: None,
            leaderless_since: None,
            had_leader: false,
            next_stand: now,
        }
    }
}

/// What a group should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Ticker parked.
    Quiet,
    /// Ticker running: a group of one voter (openraft elects it).
    Tick,
    /// Ticker parked, and this replica stands for election.
    Stand,
}

/// What the sweep needs of a group's metrics.
#[derive(Debug, Clone)]
struct Seen {
    state: ServerState,
    term: u64,
    leader: Option<NodeId>,
    /// Leader: the followers that do not hold its last entry, and the
    /// last entry each holds.
    lagging: Vec<(NodeId, Option<u64>)>,
    /// Follower: (term, leader, incarnation) of the last append heard.
    heard: (u64, NodeId, u64),
}

fn seen(raft: &PartitionRaft, heard: &HeardFrom) -> Seen {
    let m = raft.metrics();
    let m = m.borrow_watched();
    let lagging = m.replication.as_ref().map_or_else(Vec::new, |r| {
        r.iter()
            .map(|(id, matched)| (*id, matched.as_ref().map(|l| l.index)))
            .filter(|(_, matched)| *matched < m.last_log_index)
            .collect()
    });
    Seen { state: m.state, term: m.current_term, leader: m.current_leader, lagging, heard: heard.get() }
}

/// The group's voters (read only when the sweep needs them: rarely).
fn voters(raft: &PartitionRaft) -> Vec<NodeId> {
    raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect()
}

/// Decides which partition groups of this node tick (see the module).
pub struct Quiescer {
    me: NodeId,
    groups: Groups,
    identity: Arc<Identity>,
    paces: HashMap<GroupId, Pace>,
    /// Each peer as the previous sweep saw it.
    peers_seen: HashMap<NodeId, PeerView>,
    elections: elections::Elections,
    stats: Arc<QuiesceStats>,
}

impl Quiescer {
    pub fn new(identity: Arc<Identity>, groups: Groups) -> Self {
        Self {
            me: identity.node_id,
            groups,
            identity: Arc::clone(&identity),
            paces: HashMap::new(),
            peers_seen: HashMap::new(),
            elections: elections::Elections::new(Arc::clone(&identity)),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<QuiesceStats> {
        Arc::clone(&self.stats)
    }

    /// Sweeps until the task is aborted.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let identity = Arc::clone(&self.identity);
            loop {
                self.sweep(Instant::now());
                tokio::select! {
                    () = tokio::time::sleep(SWEEP_EVERY) => {}
                    () = identity.liveness.changed() => {}
                }
            }
        })
    }

    fn liveness(&self) -> &Liveness {
        &self.identity.liveness
    }

    /// One look at every group: starts or parks its ticker, queues its
    /// election, and sends a heartbeat from every group led here to a peer
    /// that just restarted or came back.
    fn sweep(&mut self, now: Instant) {
        let returned = self.returned_peers();
        let mut all = self.groups.all_heard();
        all.retain(|(id, _, _)| *id != GroupId::CONTROLLER);
        let (mut ticking, mut quiet) = (0, 0);
        let mut live = std::collections::HashSet::with_capacity(all.len());
        for (id, raft, heard) in all {
            live.insert(id);
            let mut seen = seen(&raft, &heard);
            // A follower whose node is down is not nudged (it is caught up
            // when it returns; see `returned_peers`).
            seen.lagging.retain(|(f, _)| *f != self.me && self.identity.liveness.view(*f).live);
            let pace = self.paces.entry(id).or_insert_with(|| Pace::new(now));
            let want = decide(self.me, &self.identity.liveness, pace, &seen, now, turn(id), || voters(&raft));
            let tick = want == Want::Tick;
            if tick != pace.ticking {
                raft.runtime_config().tick(tick);
                pace.ticking = tick;
                if tick {
                    self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
                }
            }
            if tick {
                ticking += 1;
            } else {
                quiet += 1;
            }
            // A stopping node stands for nothing: it is handing its
            // leaderships over ([`crate::handover`]).
            if want == Want::Stand && now >= pace.next_stand && !self.identity.liveness.draining() {
                if self.elections.stand(id, raft.clone(), Arc::clone(&heard)) {
                    self.stats.candidacies.fetch_add(1, Ordering::Relaxed);
                }
                // Asked again once this attempt has had its time.
                let jitter = Duration::from_millis(rand::random::<u64>() % RETRY_JITTER_MS);
                pace.next_stand = now + ELECTION_WAIT + jitter;
            }
            if seen.state != ServerState::Leader {
                continue;
            }
            // Replication to a live follower that failed (its node did not
            // run the group yet, or was away) is retried now rather than at
            // the group's next event.
            let retry = stuck(pace, &seen.lagging, now);
            if !returned.is_empty() || !retry.is_empty() {
                tokio::spawn(async move {
                    if !retry.is_empty() {
                        let _ = raft.trigger().reset_backoff(retry).await;
                    }
                    let _ = raft.trigger().heartbeat().await;
                });
            }
        }
        self.paces.retain(|id, _| live.contains(id));
        self.stats.ticking.store(ticking, Ordering::Relaxed);
        self.stats.quiet.store(quiet, Ordering::Relaxed);
        self.stats.candidacies_pending.store(self.elections.pending() as u64, Ordering::Relaxed);
    }

    /// Peers that restarted, or became live again, since the last sweep.
    fn returned_peers(&mut self) -> Vec<NodeId> {
        let mut returned = Vec::new();
        for &peer in &self.identity.members {
            if peer == self.me {
                continue;
            }
            let now = self.liveness().view(peer);
            let before = self.peers_seen.insert(peer, now);
            let back = match before {
                Some(b) => now.live && (!b.live || (b.incarnation != 0 && b.incarnation != now.incarnation)),
                None => false,
            };
            if back {
                returned.push(peer);
            }
        }
        returned
    }
}

/// A leader's live followers (`lagging`: those that do not hold its last
/// entry) that held the same entry at the previous sweep, when it is time
/// to nudge them (at most every [`NUDGE_EVERY`]).
fn stuck(pace: &mut Pace, lagging: &[(NodeId, Option<u64>)], now: Instant) -> Vec<NodeId> {
    let stuck: Vec<NodeId> = lagging.iter().filter(|f| pace.lagging.contains(f)).map(|(id, _)| *id).collect();
    pace.lagging = lagging.to_vec();
    if stuck.is_empty() || pace.nudged.is_some_and(|at| now < at + NUDGE_EVERY) {
        return Vec::new();
    }
    pace.nudged = Some(now);
    stuck
}

/// A number of the group's own, the same on every node: which live voter
/// stands first.
fn turn(id: GroupId) -> u64 {
    id.topic_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(id.partition)
}

/// What a group should do now (see the module), updating what is
/// remembered of it. `turn`: the group's number, which picks the replica
/// that stands first.
fn decide(
    me: NodeId,
    liveness: &Liveness,
    pace: &mut Pace,
    seen: &Seen,
    now: Instant,
    turn: u64,
    voters: impl FnOnce() -> Vec<NodeId>,
) -> Want {
    if seen.state == ServerState::Leader {
        pace.leaderless_since = None;
        return Want::Quiet;
    }
    pace.lagging.clear();
    // Term 0 is no leader's: openraft's initialize gives every replica a
    // vote for itself in it.
    pace.had_leader |= seen.leader.is_some() && seen.term > 0;
    let suspect = seen.leader.filter(|l| *l != me);
    if let Some(leader) = suspect
        && trusts(liveness, seen.heard, seen.term, leader)
    {
        pace.leaderless_since = None;
        return Want::Quiet;
    }
    let voters = voters();
    if voters == [me] {
        // Its only voter: no one to wait for or to disrupt.
        return Want::Tick;
    }
    if liveness.uptime() < STARTUP_GRACE {
        pace.leaderless_since = None;
        return Want::Quiet;
    }
    let live = |v: NodeId| v == me || liveness.view(v).live;
    if voters.iter().filter(|v| live(**v)).count() <= voters.len() / 2 {
        // No quorum of live voters: no election can be won (the wait
        // starts once there is one).
        pace.leaderless_since = None;
        return Want::Quiet;
    }
    let since = *pace.leaderless_since.get_or_insert(now);
    let mut standing: Vec<NodeId> = voters.iter().copied().filter(|v| Some(*v) != suspect && live(*v)).collect();
    standing.sort_unstable();
    let first = (!standing.is_empty()).then(|| standing[(turn % standing.len() as u64) as usize]);
    let wait = match (pace.had_leader, first == Some(me)) {
        (true, true) => FIRST_CANDIDATE_WAIT,
        (true, false) => OTHER_CANDIDATES_WAIT,
        // A new group: its preferred leader stands at once (it is not
        // known here); if it has not won, one replica after the other.
        (false, true) => NEW_GROUP_WAIT,
        (false, false) => NEW_GROUP_WAIT + OTHER_CANDIDATES_WAIT,
    };
    if now.duration_since(since) >= wait { Want::Stand } else { Want::Quiet }
}

/// Whether a follower in `term` may trust `leader` without heartbeats:
/// its node is live, and this replica heard an append from it in this term
/// from the process that node runs now.
pub fn trusts(liveness: &Liveness, heard: (u64, NodeId, u64), term: u64, leader: NodeId) -> bool {
    let view = liveness.view(leader);
    view.live && view.incarnation != 0 && heard == (term, leader, view.incarnation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::DEAD_AFTER;

    const ME: NodeId = 1;

    /// The ticker runs or the replica stands: not quiet.
    fn on(w: Want) -> bool {
        w != Want::Quiet
    }

    fn three() -> Vec<NodeId> {
        vec![1, 2, 3]
    }

    fn leader() -> Seen {
        Seen { state: ServerState::Leader, term: 2, leader: Some(ME), lagging: Vec::new(), heard: (0, 0, 0) }
    }

    /// A follower that heard an append from `leader` (node N runs as
    /// incarnation N * 10) in `term`.
    fn follower(term: u64, leader: Option<NodeId>) -> Seen {
        let heard = leader.map_or((0, 0, 0), |l| (term, l, l * 10));
        Seen { state: ServerState::Follower, term, leader, lagging: Vec::new(), heard }
    }

    async fn past_startup() -> Liveness {
        let l = Liveness::new();
        tokio::time::advance(STARTUP_GRACE).await;
        l.heard(2, 20);
        l.heard(3, 30);
        l
    }

    /// Advances paused time, keeping `alive` heard from.
    async fn advance(l: &Liveness, by: Duration, alive: &[(NodeId, u64)]) {
        let step = Duration::from_millis(100);
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            tokio::time::advance(d).await;
            left -= d;
            for (peer, incarnation) in alive {
                l.heard(*peer, *incarnation);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_never_ticks_and_nudges_a_follower_that_stopped_progressing() {
        let l = past_startup().await;
        let mut pace = Pace::new(Instant::now());
        assert_eq!(decide(ME, &l, &mut pace, &leader(), Instant::now(), 0, three), Want::Quiet);
        let now = Instant::now();
        assert!(stuck(&mut pace, &[(2, Some(4))], now).is_empty(), "first seen behind: maybe on its way");
        assert!(stuck(&mut pace, &[(2, Some(5))], now + SWEEP_EVERY).is_empty(), "progressing");
        assert_eq!(stuck(&mut pace, &[(2, Some(5)), (3, None)], now + SWEEP_EVERY * 2), [2], "no progress");
        assert!(stuck(&mut pace, &[(2, Some(5)), (3, None)], now + SWEEP_EVERY * 3).is_empty(), "nudged just now");
        assert_eq!(stuck(&mut pace, &[(2, Some(5)), (3, None)], now + SWEEP_EVERY * 2 + NUDGE_EVERY), [2, 3]);
        assert!(stuck(&mut pace, &[], now + NUDGE_EVERY * 5).is_empty(), "caught up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_is_quiet_while_its_leaders_node_lives_and_stands_when_it_dies() {
        let l = past_startup().await;
        let mut pace = Pace::new(Instant::now());
        let seen = follower(2, Some(3));
        for _ in 0..20 {
            assert!(!on(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three)));
            advance(&l, Duration::from_millis(500), &[(2, 20), (3, 30)]).await;
        }
        // Node 3 stops answering: the group ticks once it is found dead,
        // and, this node being the lowest live voter, after the first wait.
        advance(&l, DEAD_AFTER - Duration::from_millis(100), &[(2, 20)]).await;
        assert!(!on(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three)), "not dead yet");
        advance(&l, Duration::from_millis(100), &[(2, 20)]).await;
        assert!(!on(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three)), "dead, waiting its turn");
        advance(&l, FIRST_CANDIDATE_WAIT, &[(2, 20)]).await;
        assert_eq!(
            decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three),
            Want::Stand,
            "the first candidate stands"
        );
        // Node 2 (as seen with node 1 live), not the lowest, waits longer.
        l.heard(1, 10);
        let mut pace2 = Pace::new(Instant::now());
        let seen2 = follower(2, Some(3));
        assert!(!on(decide(2, &l, &mut pace2, &seen2, Instant::now(), 0, three)));
        advance(&l, FIRST_CANDIDATE_WAIT, &[(1, 10), (2, 20)]).await;
        assert!(!on(decide(2, &l, &mut pace2, &seen2, Instant::now(), 0, three)));
        advance(&l, OTHER_CANDIDATES_WAIT - FIRST_CANDIDATE_WAIT, &[(1, 10), (2, 20)]).await;
        assert!(on(decide(2, &l, &mut pace2, &seen2, Instant::now(), 0, three)));
        // A new leader, live: quiet again.
        assert!(!on(decide(ME, &l, &mut pace, &follower(3, Some(2)), Instant::now(), 0, three)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_restarted_is_not_trusted_in_its_old_term() {
        let l = past_startup().await;
        let mut pace = Pace::new(Instant::now());
        assert!(!on(decide(ME, &l, &mut pace, &follower(2, Some(3)), Instant::now(), 0, three)));
        // Node 3 comes back within the dead time, as a new process.
        advance(&l, Duration::from_millis(300), &[(2, 20), (3, 31)]).await;
        assert!(!on(decide(ME, &l, &mut pace, &follower(2, Some(3)), Instant::now(), 0, three)), "waiting its turn");
        advance(&l, FIRST_CANDIDATE_WAIT, &[(2, 20), (3, 31)]).await;
        assert!(
            on(decide(ME, &l, &mut pace, &follower(2, Some(3)), Instant::now(), 0, three)),
            "term 2's leader is gone"
        );
        // The restarted node's append of a later term: trusted.
        let new_run = Seen { heard: (3, 3, 31), ..follower(3, Some(3)) };
        assert!(!on(decide(ME, &l, &mut pace, &new_run, Instant::now(), 0, three)));
        // A leader named by a stored vote but not heard from in this run of
        // its node (after every node restarted) is not trusted.
        let mut stored = Pace::new(Instant::now());
        stored.had_leader = true;
        let unheard = Seen { heard: (0, 0, 0), ..follower(3, Some(3)) };
        assert!(!on(decide(ME, &l, &mut stored, &unheard, Instant::now(), 0, three)));
        advance(&l, FIRST_CANDIDATE_WAIT, &[(2, 20), (3, 31)]).await;
        assert!(on(decide(ME, &l, &mut stored, &unheard, Instant::now(), 0, three)), "it stands");
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_of_one_voter_ticks_until_it_leads() {
        let l = Liveness::new();
        let mut pace = Pace::new(Instant::now());
        let alone = follower(2, Some(ME));
        assert_eq!(
            decide(ME, &l, &mut pace, &alone, Instant::now(), 0, || vec![ME]),
            Want::Tick,
            "even right after a start"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_election_without_a_leader_right_after_a_start() {
        let l = Liveness::new();
        let mut pace = Pace::new(Instant::now());
        let seen = follower(2, None);
        advance(&l, STARTUP_GRACE - Duration::from_millis(100), &[(2, 20), (3, 30)]).await;
        assert!(!on(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three)), "within the grace");
        advance(&l, Duration::from_millis(100), &[(2, 20), (3, 30)]).await;
        assert!(!on(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three)), "the wait starts after the grace");
        advance(&l, FIRST_CANDIDATE_WAIT, &[(2, 20), (3, 30)]).await;
        assert!(!on(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three)), "never had a leader: a new group");
        advance(&l, NEW_GROUP_WAIT - FIRST_CANDIDATE_WAIT, &[(2, 20), (3, 30)]).await;
        assert!(on(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three)));
        let mut candidate = Pace::new(Instant::now());
        candidate.had_leader = true;
        let seen = Seen { state: ServerState::Candidate, ..follower(3, None) };
        assert!(!on(decide(ME, &l, &mut candidate, &seen, Instant::now(), 0, three)));
        advance(&l, FIRST_CANDIDATE_WAIT, &[(2, 20), (3, 30)]).await;
        assert!(on(decide(ME, &l, &mut candidate, &seen, Instant::now(), 0, three)), "a candidate stands again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_survivors_of_a_dead_leader_share_its_groups() {
        let l = past_startup().await;
        // Node 3 leads and dies; nodes 1 and 2 are live (as node 1 sees them).
        advance(&l, DEAD_AFTER, &[(1, 10), (2, 20)]).await;
        let seen = follower(2, Some(3));
        let mut first = Vec::new();
        for turn in 0..4 {
            let mut paces = [Pace::new(Instant::now()), Pace::new(Instant::now())];
            for pace in &mut paces {
                pace.had_leader = true;
            }
            let now = Instant::now() + FIRST_CANDIDATE_WAIT;
            for (me, pace) in [1, 2].into_iter().zip(&mut paces) {
                assert_eq!(decide(me, &l, pace, &seen, Instant::now(), turn, three), Want::Quiet);
            }
            let mut standing = Vec::new();
            for (me, pace) in [1, 2].into_iter().zip(&mut paces) {
                if decide(me, &l, pace, &seen, now, turn, three) == Want::Stand {
                    standing.push(me);
                }
            }
            assert_eq!(standing.len(), 1, "one replica stands first: {standing:?}");
            first.push(standing[0]);
        }
        assert_eq!(first, [1, 2, 1, 2], "by the group's turn");
    }

    #[tokio::test(start_paused = true)]
    async fn no_replica_stands_without_a_quorum_of_live_voters() {
        let l = past_startup().await;
        let mut pace = Pace::new(Instant::now());
        pace.had_leader = true;
        let seen = follower(2, Some(3));
        // Nodes 2 and 3 fall silent: node 1 alone cannot win.
        advance(&l, DEAD_AFTER + OTHER_CANDIDATES_WAIT * 2, &[]).await;
        assert_eq!(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three), Want::Quiet);
        // Node 2 answers again: a quorum (1 and 2) can elect.
        l.heard(2, 20);
        assert_eq!(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three), Want::Quiet, "its wait starts");
        advance(&l, FIRST_CANDIDATE_WAIT, &[(2, 20)]).await;
        assert_eq!(decide(ME, &l, &mut pace, &seen, Instant::now(), 0, three), Want::Stand);
    }
}
