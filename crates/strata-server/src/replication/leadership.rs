//! Who leads what, as this node sees it: partition leaderships, in-sync
//! replicas, the nodes and their addresses, and the samples the metrics
//! scrape reads. Nothing here sends a message.

use super::*;

impl Replication {
    /// The last entry applied on this node's replica of a partition (`None`:
    /// no replica here).
    pub fn applied_index(&self, topic: &str, partition: u32) -> Option<u64> {
        let topic_id = self.metadata.borrow().topics.get(topic)?.id;
        let raft = self.groups.get(GroupId { topic_id, partition })?;
        let applied = raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
        Some(applied)
    }

    /// This node's view of a partition's Raft group (`None`: it holds no
    /// replica of it).
    pub fn leadership(&self, topic: &str, partition: u32) -> Option<Leadership> {
        let (topic_id, replicas) = {
            let metadata = self.metadata.borrow();
            let t = metadata.topics.get(topic)?;
            (t.id, t.replicas.get(partition as usize).cloned().unwrap_or_default())
        };
        let Some(raft) = self.groups.get(GroupId { topic_id, partition }) else {
            return Some(Leadership {
                topic_id,
                leading: false,
                term: 0,
                last_log_index: 0,
                leader: None,
                replicas,
                here: false,
            });
        };
        let m = raft.metrics().borrow_watched().clone();
        Some(Leadership {
            topic_id,
            leading: m.state == ServerState::Leader && m.current_leader == Some(self.node_id()),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            leader: self.known_leader(GroupId { topic_id, partition }, &m),
            replicas,
            here: true,
        })
    }

    /// Waits until this node's replica of a partition applied `index`.
    pub async fn wait_applied(
        &self,
        topic_id: u64,
        partition: u32,
        index: u64,
        timeout: Duration,
    ) -> Result<(), Status> {
        let group = GroupId { topic_id, partition };
        let raft = self.groups.get(group).ok_or_else(|| self.not_leader(group, None, "this node holds no replica"))?;
        raft.wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(format!("{group} did not apply entry {index} in {timeout:?}: {e}")))
    }

    /// Confirms, with a round of heartbeats answered by a majority, that
    /// this node still leads a partition in `term` (a read index): state it
    /// built from its own commits in that term is then no staler than the
    /// cluster's (a node cut off from the others may not know it was
    /// replaced). `NOT_LEADER` when it does not.
    pub async fn confirm_leading(
        &self,
        topic_id: u64,
        partition: u32,
        term: u64,
        timeout: Duration,
    ) -> Result<(), Status> {
        let group = GroupId { topic_id, partition };
        let raft = self.groups.get(group).ok_or_else(|| self.not_leader(group, None, "this node holds no replica"))?;
        let confirmed = tokio::time::timeout(timeout, raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)).await;
        let leader = || raft.metrics().borrow_watched().current_leader;
        match confirmed {
            Err(_) => Err(self.not_leader(group, leader(), &format!("no majority confirmed its lead in {timeout:?}"))),
            Ok(Err(e)) => Err(self.not_leader(group, leader(), &format!("its lead was not confirmed: {e}"))),
            Ok(Ok(_)) => {
                let m = raft.metrics().borrow_watched().clone();
                if m.state == ServerState::Leader && m.current_term == term {
                    Ok(())
                } else {
                    Err(self.not_leader(group, m.current_leader, &format!("the term moved on from {term}")))
                }
            }
        }
    }

    /// The address clients reach a node at (`None`: a node that has not
    /// registered yet).
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.directory.client_address(id)
    }

    /// The address clients reach this node at.
    pub fn advertised(&self) -> String {
        self.directory.advertised.to_string()
    }

    /// `NOT_LEADER` for a partition, naming its leader when known.
    pub fn not_leader_status(&self, topic_id: u64, partition: u32, leader: Option<NodeId>, why: &str) -> Status {
        self.not_leader(GroupId { topic_id, partition }, leader, why)
    }

    /// Every registered node and the address clients reach it at (this
    /// node's own address even before it registered).
    pub fn brokers(&self) -> Vec<(NodeId, String)> {
        let metadata = self.metadata.borrow();
        let mut out: BTreeMap<NodeId, String> =
            metadata.nodes.iter().map(|(id, node)| (*id, node.addr.clone())).collect();
        out.insert(self.node_id(), self.advertised());
        out.into_iter().collect()
    }

    /// Whether `node` answers this node's liveness calls.
    fn peer_live(&self, node: NodeId) -> bool {
        self.peers.identity().liveness.view(node).live
    }

    /// A partition group's leader as far as this node can tell: itself when
    /// it leads, otherwise the leader this replica trusts
    /// ([`strata_raft::quiesce::trusts`]: its node is live and this replica
    /// heard an append from its current run in this term), else none. A
    /// quiescent follower keeps naming the leader whose vote it holds after
    /// that leader's node died or restarted, and with no quorum left to
    /// elect another it would name it forever.
    fn known_leader(&self, group: GroupId, m: &openraft::RaftMetrics<TypeConfig>) -> Option<NodeId> {
        let me = self.node_id();
        let leader = m.current_leader?;
        if group == GroupId::CONTROLLER || (leader == me && m.state == ServerState::Leader) {
            return Some(leader);
        }
        let heard = self.groups.heard(group).map(|h| h.get()).unwrap_or_default();
        strata_raft::quiesce::trusts(&self.peers.identity().liveness, heard, m.current_term, leader).then_some(leader)
    }

    /// Replicas, the leader (as this node knows it; 0 when not) and, when
    /// this node leads it, the replicas in sync of a partition.
    pub fn placement(&self, topic: &str, partition: u32) -> (Vec<NodeId>, NodeId, Vec<NodeId>) {
        let metadata = self.metadata.borrow();
        let Some(t) = metadata.topics.get(topic) else { return (Vec::new(), 0, Vec::new()) };
        let replicas = t.replicas.get(partition as usize).cloned().unwrap_or_default();
        let group = GroupId { topic_id: t.id, partition };
        let Some(raft) = self.groups.get(group) else { return (replicas, 0, Vec::new()) };
        let watch = raft.metrics();
        let m = watch.borrow_watched();
        (replicas, self.known_leader(group, &m).unwrap_or(0), in_sync(&m, self.node_id(), |n| self.peer_live(n)))
    }

    pub(super) fn not_leader(&self, group: GroupId, leader: Option<NodeId>, why: &str) -> Status {
        not_leader(&self.directory, group, leader, why)
    }

    /// The state of every Raft group on this node, as its metrics say now
    /// (what the metrics scrape reads; no message is sent).
    pub fn sample_raft_groups(&self) -> Vec<RaftGroupSample> {
        let me = self.node_id();
        let mut out = Vec::new();
        // Not under the group table's lock: `known_leader` reads it too.
        for (group, raft, _) in self.groups.all_heard() {
            let watch = raft.metrics();
            let m = watch.borrow_watched();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(me);
            let last_log_index = m.last_log_index.unwrap_or(0);
            let (followers, in_sync) = if leading {
                let followers = m
                    .replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| **id != me)
                    .map(|(id, matched)| (*id, matched.map_or(0, |l| l.index)))
                    .collect();
                (followers, in_sync(&m, me, |n| self.peer_live(n)).len())
            } else {
                (Vec::new(), 0)
            };
            let voters = m.membership_config.membership().voter_ids().count();
            out.push(RaftGroupSample {
                group,
                term: m.current_term,
                leader: self.known_leader(group, &m),
                leading,
                voters,
                in_sync,
                last_log_index,
                followers,
            });
        }
        out
    }

    /// Snapshot transfers this node completed.
    pub fn transfers(&self) -> &strata_raft::network::Transfers {
        &self.peers.identity().transfers
    }

    /// The members this node was configured with.
    pub fn members(&self) -> Vec<NodeId> {
        self.cluster.members()
    }

    /// Members the controller's leader heard from within `within` (this
    /// node included); `None` when this node does not lead the controller.
    pub fn live_members(&self, within: Duration) -> Option<Vec<NodeId>> {
        use openraft::Instant as _;
        let m = self.controller.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return None;
        }
        let mut live = vec![self.node_id()];
        if let Some(acked) = &m.heartbeat {
            for (id, at) in acked {
                if *id != self.node_id() && at.as_ref().is_some_and(|t| t.elapsed() <= within) {
                    live.push(*id);
                }
            }
        }
        live.sort_unstable();
        Some(live)
    }

    /// The node leading the cluster controller, as this node knows it.
    pub fn controller_leader(&self) -> Option<NodeId> {
        self.controller.metrics().borrow_watched().current_leader
    }

    /// The controller's current term.
    pub fn controller_term(&self) -> u64 {
        self.controller.metrics().borrow_watched().current_term
    }
}

/// One Raft group on this node, as the metrics scrape sees it.
#[derive(Debug, Clone)]
pub struct RaftGroupSample {
    pub group: GroupId,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// This node leads it.
    pub leading: bool,
    /// Voters of the group.
    pub voters: usize,
    /// Replicas in sync, this one included (0 when not leading).
    pub in_sync: usize,
    pub last_log_index: u64,
    /// When leading: each follower and the last entry it holds.
    pub followers: Vec<(NodeId, u64)>,
}

/// A node's view of one partition's Raft group.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub topic_id: u64,
    /// This node leads the group.
    pub leading: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub leader: Option<NodeId>,
    /// Replicas of the partition, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// This node holds a replica.
    pub here: bool,
}

/// A follower that has not acknowledged the leader for this long is out of
/// sync (Kafka's `replica.lag.time.max.ms` is 30 s; Raft heartbeats come
/// every 100 ms here).
const IN_SYNC_LAG_TIME: Duration = Duration::from_secs(10);
/// ... or that is more entries than this behind the leader's commit point.
const IN_SYNC_LAG_ENTRIES: u64 = 1000;

/// The replicas in sync with this node, if it leads (see the proto's
/// `PartitionDescription.in_sync`). A quiescent leader hears nothing from
/// its followers while the partition is idle: a follower that holds its
/// last entry and whose node is `live` (node liveness) is in sync too.
fn in_sync(metrics: &openraft::RaftMetrics<TypeConfig>, me: NodeId, live: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    use openraft::Instant as _;
    if metrics.state != ServerState::Leader {
        return Vec::new();
    }
    let committed = metrics.cluster_committed.as_ref().map_or(0, |c| c.index);
    let last = metrics.last_log_index;
    let mut out = vec![me];
    if let (Some(matched), Some(acked)) = (&metrics.replication, &metrics.heartbeat) {
        for (id, m) in matched {
            let recent = acked.get(id).and_then(Option::as_ref).is_some_and(|t| t.elapsed() <= IN_SYNC_LAG_TIME);
            let close = m.map_or(0, |l| l.index).saturating_add(IN_SYNC_LAG_ENTRIES) >= committed;
            let holds_all = m.map(|l| l.index) == last;
            if *id != me && close && (recent || (holds_all && live(*id))) {
                out.push(*id);
            }
        }
    }
    out.sort_unstable();
    out
}

/// `NOT_LEADER`, naming the leader (id and address in the error's metadata
/// as `leader_id` and `leader_addr`) when it is known.
pub(super) fn not_leader(directory: &Directory, group: GroupId, leader: Option<NodeId>, why: &str) -> Status {
    let mut meta = BTreeMap::new();
    let named = match leader {
        Some(id) => {
            meta.insert("leader_id".to_owned(), id.to_string());
            match directory.client_address(id) {
                Some(addr) => {
                    meta.insert("leader_addr".to_owned(), addr.clone());
                    format!("node {id} at {addr}")
                }
                None => format!("node {id}"),
            }
        }
        None => "not known here".to_owned(),
    };
    status_with(
        tonic::Code::Unavailable,
        pb::ErrorReason::NotLeader,
        format!("this node does not lead {group} ({why}); the leader is {named}"),
        meta,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_raft::types::LogId;

    /// A leader (node 1) at entry 9 whose followers acknowledged nothing
    /// lately (a quiescent leader sends nothing): node 2 holds entry 9,
    /// node 3 entry 7.
    fn quiescent_leader() -> openraft::RaftMetrics<TypeConfig> {
        let mut m = openraft::RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.last_log_index = Some(9);
        m.cluster_committed = Some(LogId::new_term_index(2, 9));
        m.replication = Some(
            [
                (1, Some(LogId::new_term_index(2, 9))),
                (2, Some(LogId::new_term_index(2, 9))),
                (3, Some(LogId::new_term_index(2, 7))),
            ]
            .into(),
        );
        m.heartbeat = Some([(2, None), (3, None)].into());
        m
    }

    #[test]
    fn an_idle_follower_that_holds_every_entry_on_a_live_node_is_in_sync() {
        let m = quiescent_leader();
        assert_eq!(in_sync(&m, 1, |_| true), [1, 2], "node 3 lacks entries 8 and 9");
        assert_eq!(in_sync(&m, 1, |n| n != 2), [1], "node 2's node is down");
        let mut follower = m.clone();
        follower.state = ServerState::Follower;
        assert!(in_sync(&follower, 1, |_| true).is_empty(), "only a leader knows");
    }
}
