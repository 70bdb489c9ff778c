//! Handing a stopping node's leaderships over (a graceful stop).
//!
//! A node told to stop first makes another replica lead every group it
//! leads, so that its clients' next requests find a leader at once instead
//! of waiting for its peers to find it dead and elect one. For each group
//! it asks openraft to transfer leadership to a follower that holds the
//! leader's last entry on a live node: openraft stops taking writes for the
//! group (they are answered `NOT_LEADER`, which clients retry), sends
//! `TransferLeader` to every voter (which lifts their leader lease) and the
//! chosen follower stands at once with a leadership-transfer election. A
//! replica lets such an election through only for the candidate its
//! leader named (`RaftService::refuse_vote`), so no one else can use one
//! to pass the leases.
//!
//! At most [`MAX_HANDOVERS`] groups are handed over at once (each is an
//! election on the receiving node; thousands at once were what overloaded
//! nodes before elections were queued). The most caught-up follower is
//! asked first (openraft's transfer stops the group's writes until it
//! happens; the follower stands once its log holds the leader's last
//! entry, waiting a moment for it). A group still
//! led [`ASK_AGAIN`] after it was asked goes to another follower, at most
//! [`MAX_ASKS`] times. Groups with a single voter cannot be handed over.
//! When the handover ends with groups still led here (its deadline, or no
//! follower could take them), the node falls silent: it makes and answers
//! no liveness call, so its peers find it gone within a second and elect
//! leaders for those groups instead of waiting for the process to exit.

use std::collections::HashMap;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;

use crate::network::{GroupId, Groups, Identity};
use crate::types::NodeId;

/// Groups being handed over at once.
pub const MAX_HANDOVERS: usize = 64;
/// A group still led this long after it was handed over is asked again
/// (to the next candidate).
pub const ASK_AGAIN: Duration = Duration::from_secs(1);
/// How long a handover waits for a candidate when no group it still leads
/// has one (its peers' liveness calls say within this whether they are
/// stopping too).
const NO_CANDIDATE_WAIT: Duration = Duration::from_millis(300);
/// How often the handover looks at the groups it still leads.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// Handover requests per group: a group that did not move after this many
/// is left to the peers' failover (its writes stay refused meanwhile).
const MAX_ASKS: usize = 3;

/// What a handover did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handover {
    /// Groups this node led (with another voter) while it handed over.
    pub led: usize,
    /// Groups it still led when it gave up (none when all went over).
    pub left: Vec<GroupId>,
    /// Handover requests it made (a group asked again counts again).
    pub asked: u64,
}

/// One group this node leads, as its metrics say now.
struct Led {
    id: GroupId,
    raft: crate::group::PartitionRaft,
    term: u64,
    /// Followers on a live node that is not stopping, the most caught up
    /// first.
    candidates: Vec<NodeId>,
}

fn led_here(identity: &Identity, groups: &Groups) -> Vec<Led> {
    let me = identity.node_id;
    let mut out = Vec::new();
    for (id, raft, _) in groups.all_heard() {
        let m = raft.metrics();
        let m = m.borrow_watched();
        if m.state != ServerState::Leader || m.current_leader != Some(me) {
            continue;
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().filter(|v| *v != me).collect();
        if voters.is_empty() {
            continue;
        }
        // How far behind the leader's last entry each follower is.
        let behind = |v: NodeId| {
            let matched = m.replication.as_ref().and_then(|r| r.get(&v).cloned().flatten()).map_or(0, |l| l.index + 1);
            m.last_log_index.map_or(0, |l| l + 1).saturating_sub(matched)
        };
        let mut candidates: Vec<NodeId> = voters
            .into_iter()
            .filter(|v| {
                let peer = identity.liveness.view(*v);
                peer.live && !peer.draining
            })
            .collect();
        // The most caught up first (the group takes no writes from the
        // request until the follower, once it holds the leader's last entry,
        // has won; under load none holds it at the very moment). Among
        // equals, by a number of the group's own, so that one node's groups
        // spread over its peers.
        let spread = |v: NodeId| v ^ id.topic_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(id.partition);
        candidates.sort_by_key(|v| (behind(*v), spread(*v)));
        out.push(Led { id, raft: raft.clone(), term: m.vote.leader_id.term, candidates });
    }
    out
}

/// Hands every group this node leads over to a follower, until none is
/// led here or `within` has passed; `progress` is told how many are still
/// led, at most once a second. Marks the node as draining first: it
/// stands for no election from then on.
pub async fn hand_over_all(
    identity: &Identity,
    groups: &Groups,
    within: Duration,
    mut progress: impl FnMut(usize),
) -> Handover {
    identity.liveness.set_draining();
    // Nor does openraft's own election timer (the controller's group
    // ticks) make this node a leader again.
    for raft in groups.all() {
        raft.runtime_config().elect(false);
    }
    let started = Instant::now();
    let deadline = started + within;
    let mut report = Handover::default();
    // Per group: when it was last asked, and how many times.
    let mut asked: HashMap<GroupId, (Instant, usize)> = HashMap::new();
    let mut told = Instant::now();
    let mut seen: std::collections::HashSet<GroupId> = std::collections::HashSet::new();
    loop {
        let led = led_here(identity, groups);
        seen.extend(led.iter().map(|l| l.id));
        report.led = seen.len();
        let now = Instant::now();
        // Nothing left that a peer could take (every other voter is down or
        // stopping too: a whole cluster told to stop at once; or asked too
        // often already).
        let exhausted =
            |l: &Led| asked.get(&l.id).is_some_and(|(at, times)| *times >= MAX_ASKS && now >= *at + ASK_AGAIN);
        let stuck = led.iter().all(|l| l.candidates.is_empty() || exhausted(l));
        if led.is_empty() || now >= deadline || (stuck && now >= started + NO_CANDIDATE_WAIT) {
            report.left = led.iter().map(|l| l.id).collect();
            if !report.left.is_empty() {
                // Those groups take no writes while openraft waits for a
                // transfer: the peers must find this node gone now.
                identity.liveness.fall_silent();
            }
            return report;
        }
        if now.duration_since(told) >= Duration::from_secs(1) {
            progress(led.len());
            told = now;
        }
        let in_flight = led.iter().filter(|l| asked.get(&l.id).is_some_and(|(at, _)| now < *at + ASK_AGAIN)).count();
        let mut room = MAX_HANDOVERS.saturating_sub(in_flight);
        for l in &led {
            if room == 0 {
                break;
            }
            let (at, times) = asked.get(&l.id).copied().unwrap_or((now, 0));
            if (times > 0 && now < at + ASK_AGAIN) || times >= MAX_ASKS || l.candidates.is_empty() {
                continue;
            }
            let to = l.candidates[times % l.candidates.len()];
            if let Some(heard) = groups.heard(l.id) {
                heard.hand_over(l.term, to);
            }
            tracing::debug!(group = %l.id, to, attempt = times + 1, "handing leadership over");
            match l.raft.trigger().transfer_leader(to).await {
                Ok(()) => report.asked += 1,
                Err(e) => tracing::warn!(group = %l.id, error = %e, "cannot hand this group over: its Raft stopped"),
            }
            asked.insert(l.id, (now, times + 1));
            room -= 1;
        }
        tokio::time::sleep(LOOK_EVERY.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
