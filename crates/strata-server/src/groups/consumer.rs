//! A consumer group's membership, target assignment and reconciliation:
//! pure state, changed only by the coordinator, persisted in full (as JSON)
//! in the group's partition of the groups topic after every change.
//!
//! Reconciliation is incremental (Kafka's KIP-848 idea): when the target
//! assignment changes, a member is told at once to give up what it loses;
//! a partition goes to its new owner only once the old owner reported that
//! it gave it up (or left). Members that keep their partitions never stop.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::assignor::{self, Assignment, Strategy, Tp};

/// Why a group operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("member {member} is not in group {group} (removed after its session timeout, or it left): join again")]
    UnknownMember { group: String, member: String },
    #[error("group {group}: {why}")]
    Fenced { group: String, why: String },
    #[error("group {group} has {members} live member(s); {what}")]
    NotEmpty { group: String, members: usize, what: String },
    #[error("group {group} uses the {uses} assignor; this member asked for {asked} (every member must use the same)")]
    AssignorMismatch { group: String, uses: &'static str, asked: &'static str },
}

/// One member, as the coordinator knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub session_timeout_ms: u32,
    /// Grows each time `assigned` changes.
    pub epoch: u64,
    /// What the member was last told it may read.
    pub assigned: BTreeSet<Tp>,
    /// What the member may still be reading: `assigned`, plus what it was
    /// told to give up and has not yet reported given up; with the member
    /// epoch in which it got each.
    #[serde(with = "tp_map")]
    pub held: BTreeMap<Tp, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub name: String,
    /// Grows on every change of membership, subscriptions or partition counts.
    pub epoch: u64,
    pub strategy: Strategy,
    pub members: BTreeMap<String, Member>,
    /// The assignment the group converges to.
    pub target: Assignment,
    /// Partition counts of the subscribed topics the target was made for.
    pub partitions: BTreeMap<String, u32>,
}

/// How a member joins.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub strategy: Strategy,
    pub session_timeout_ms: u32,
}

impl ConsumerGroup {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), ..Self::default() }
    }

    /// "empty", "stable" (every member holds exactly its target) or
    /// "reconciling".
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.members.keys().all(|id| self.reconciled(id)) {
            "stable"
        } else {
            "reconciling"
        }
    }

    pub fn reconciled(&self, id: &str) -> bool {
        let Some(m) = self.members.get(id) else { return false };
        let target = self.target.get(id).cloned().unwrap_or_default();
        m.assigned == target && m.held.len() == m.assigned.len()
    }

    /// Every topic some member subscribes to.
    pub fn subscribed(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.topics.iter().cloned()).collect()
    }

    /// A new member (`id` fresh) or a rejoining one (`id` known).
    /// `partitions`: counts of every topic subscribed after the join.
    pub fn join(&mut self, id: &str, spec: JoinSpec, partitions: BTreeMap<String, u32>) -> Result<(), GroupError> {
        if !self.members.is_empty() && self.members.keys().any(|m| m != id) && spec.strategy != self.strategy {
            return Err(GroupError::AssignorMismatch {
                group: self.name.clone(),
                uses: self.strategy.name(),
                asked: spec.strategy.name(),
            });
        }
        self.strategy = spec.strategy;
        let changed = match self.members.get_mut(id) {
            Some(m) => {
                let changed = m.topics != spec.topics;
                m.client_id = spec.client_id;
                m.topics = spec.topics;
                m.session_timeout_ms = spec.session_timeout_ms;
                changed
            }
            None => {
                self.members.insert(
                    id.to_owned(),
                    Member {
                        client_id: spec.client_id,
                        topics: spec.topics,
                        session_timeout_ms: spec.session_timeout_ms,
                        epoch: 0,
                        assigned: BTreeSet::new(),
                        held: BTreeMap::new(),
                    },
                );
                true
            }
        };
        if changed || partitions != self.partitions {
            self.partitions = partitions;
            self.rebalance();
        }
        self.reconcile();
        Ok(())
    }

    /// Removes a member; its partitions go to others at once.
    pub fn remove(&mut self, id: &str) -> bool {
        if self.members.remove(id).is_none() {
            return false;
        }
        self.target.remove(id);
        self.rebalance();
        self.reconcile();
        true
    }

    /// A heartbeat reporting what the member holds: what it gave up is
    /// released (and may go to its new owner). Returns whether anything
    /// changed.
    pub fn heartbeat(&mut self, id: &str, owned: &BTreeSet<Tp>) -> Result<bool, GroupError> {
        let unknown = self.unknown(id);
        let member = self.members.get_mut(id).ok_or(unknown)?;
        let before = member.held.len();
        let assigned = member.assigned.clone();
        member.held.retain(|tp, _| assigned.contains(tp) || owned.contains(tp));
        if member.held.len() == before {
            return Ok(false);
        }
        self.reconcile();
        Ok(true)
    }

    /// New partition counts of the subscribed topics (a topic grew, or was
    /// deleted). Returns whether the target changed.
    pub fn set_partitions(&mut self, partitions: BTreeMap<String, u32>) -> bool {
        if partitions == self.partitions {
            return false;
        }
        self.partitions = partitions;
        self.rebalance();
        self.reconcile();
        true
    }

    fn unknown(&self, id: &str) -> GroupError {
        GroupError::UnknownMember { group: self.name.clone(), member: id.to_owned() }
    }

    /// A new group epoch and target assignment.
    fn rebalance(&mut self) {
        self.epoch += 1;
        let subs: BTreeMap<String, BTreeSet<String>> =
            self.members.iter().map(|(id, m)| (id.clone(), m.topics.clone())).collect();
        self.target = assignor::assign(self.strategy, &subs, &self.partitions, &self.target);
    }

    /// Moves every member towards its target: revokes at once what it
    /// loses, grants what nobody else still holds.
    fn reconcile(&mut self) {
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for (id, m) in &mut self.members {
            let target = self.target.get(id);
            let before = m.assigned.len();
            m.assigned.retain(|tp| target.is_some_and(|t| t.contains(tp)));
            if m.assigned.len() != before {
                changed.insert(id.clone());
            }
        }
        let mut holder: BTreeMap<Tp, String> = BTreeMap::new();
        for (id, m) in &self.members {
            for tp in m.held.keys() {
                holder.insert(tp.clone(), id.clone());
            }
        }
        let mut grants: BTreeMap<String, Vec<Tp>> = BTreeMap::new();
        for (id, target) in &self.target {
            let Some(m) = self.members.get(id) else { continue };
            for tp in target {
                if m.assigned.contains(tp) || holder.get(tp).is_some_and(|h| h != id) {
                    continue;
                }
                grants.entry(id.clone()).or_default().push(tp.clone());
                changed.insert(id.clone());
            }
        }
        for id in changed {
            let m = self.members.get_mut(&id).expect("changed members exist");
            m.epoch += 1;
            for tp in grants.remove(&id).unwrap_or_default() {
                m.held.entry(tp.clone()).or_insert(m.epoch);
                m.assigned.insert(tp);
            }
        }
    }

    /// Whether `id` at `epoch` may commit offsets of `tps`. A commit
    /// outside the group protocol (empty id) needs an empty group.
    pub fn check_commit(&self, id: &str, epoch: u64, tps: &BTreeSet<Tp>) -> Result<(), GroupError> {
        if id.is_empty() {
            if self.members.is_empty() {
                return Ok(());
            }
            return Err(GroupError::NotEmpty {
                group: self.name.clone(),
                members: self.members.len(),
                what: "a commit without a member id needs an empty group".to_owned(),
            });
        }
        let m = self.members.get(id).ok_or_else(|| self.unknown(id))?;
        if epoch > m.epoch {
            return Err(self.fenced(format!("member {id} commits with epoch {epoch}, but its epoch is {}", m.epoch)));
        }
        for tp in tps {
            match m.held.get(tp) {
                Some(given) if epoch >= *given => {}
                Some(given) => {
                    return Err(self.fenced(format!(
                        "member {id} commits {}/{} with epoch {epoch}, older than epoch {given} in which it got the partition",
                        tp.0, tp.1
                    )));
                }
                None => {
                    return Err(self.fenced(format!("member {id} does not own {}/{}", tp.0, tp.1)));
                }
            }
        }
        Ok(())
    }

    fn fenced(&self, why: String) -> GroupError {
        GroupError::Fenced { group: self.name.clone(), why }
    }

    /// The member owning each partition (for describe).
    pub fn owners(&self) -> BTreeMap<Tp, String> {
        let mut out = BTreeMap::new();
        for (id, m) in &self.members {
            for tp in m.held.keys() {
                out.insert(tp.clone(), id.clone());
            }
        }
        out
    }
}

/// `BTreeMap<Tp, V>` as a JSON list of `[[topic, partition], value]`
/// (JSON object keys must be strings).
mod tp_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Tp;

    pub fn serialize<S: Serializer, V: Serialize>(m: &BTreeMap<Tp, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<BTreeMap<Tp, V>, D::Error> {
        Ok(Vec::<(Tp, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topics: &[&str]) -> JoinSpec {
        JoinSpec {
            client_id: "c".into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            strategy: Strategy::Sticky,
            session_timeout_ms: 10_000,
        }
    }

    fn counts(n: u32) -> BTreeMap<String, u32> {
        [("t".to_owned(), n)].into()
    }

    fn all(set: &BTreeSet<Tp>) -> Vec<u32> {
        set.iter().map(|tp| tp.1).collect()
    }

    #[test]
    fn a_lone_member_gets_everything_at_once() {
        let mut g = ConsumerGroup::new("g");
        g.join("a", spec(&["t"]), counts(4)).expect("join");
        assert_eq!(all(&g.members["a"].assigned), vec![0, 1, 2, 3]);
        assert_eq!(g.state(), "stable");
        assert_eq!(g.members["a"].epoch, 1);
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_gave_it_up() {
        let mut g = ConsumerGroup::new("g");
        g.join("a", spec(&["t"]), counts(4)).expect("join a");
        let a_epoch = g.members["a"].epoch;
        g.join("b", spec(&["t"]), counts(4)).expect("join b");
        // a is told to give up two partitions; b gets nothing until then.
        assert_eq!(g.members["a"].assigned.len(), 2);
        assert_eq!(g.members["a"].held.len(), 4);
        assert!(g.members["a"].epoch > a_epoch);
        assert!(g.members["b"].assigned.is_empty());
        assert_eq!(g.state(), "reconciling");
        // a may still commit what it must give up (it is finishing it).
        let revoked: BTreeSet<Tp> = g.target["b"].clone();
        g.check_commit("a", g.members["a"].epoch, &revoked).expect("a commits what it gives up");
        // a reports it gave them up: b gets them.
        let kept = g.members["a"].assigned.clone();
        assert!(g.heartbeat("a", &kept).expect("heartbeat"));
        assert_eq!(g.members["b"].assigned, revoked);
        assert_eq!(g.state(), "stable");
        // Now a cannot commit them, b can (with its new epoch, not before).
        assert!(matches!(g.check_commit("a", g.members["a"].epoch, &revoked), Err(GroupError::Fenced { .. })));
        let b_epoch = g.members["b"].epoch;
        g.check_commit("b", b_epoch, &revoked).expect("b commits");
        assert!(matches!(g.check_commit("b", b_epoch - 1, &revoked), Err(GroupError::Fenced { .. })));
    }

    #[test]
    fn members_that_keep_their_partitions_are_not_interrupted() {
        let mut g = ConsumerGroup::new("g");
        for id in ["a", "b", "c"] {
            g.join(id, spec(&["t"]), counts(6)).expect("join");
            for m in g.members.clone().keys() {
                let assigned = g.members[m].assigned.clone();
                g.heartbeat(m, &assigned).expect("heartbeat");
            }
        }
        assert_eq!(g.state(), "stable");
        let before: BTreeMap<String, BTreeSet<Tp>> =
            g.members.iter().map(|(id, m)| (id.clone(), m.assigned.clone())).collect();
        // c leaves: a and b keep what they had and gain c's at once.
        assert!(g.remove("c"));
        for id in ["a", "b"] {
            assert!(before[id].is_subset(&g.members[id].assigned), "{id} lost partitions");
        }
        assert_eq!(g.members["a"].assigned.len() + g.members["b"].assigned.len(), 6);
        assert_eq!(g.state(), "stable");
    }

    #[test]
    fn zombies_and_strangers_cannot_commit() {
        let mut g = ConsumerGroup::new("g");
        g.join("a", spec(&["t"]), counts(2)).expect("join");
        let tp: BTreeSet<Tp> = [("t".to_owned(), 0)].into();
        let epoch = g.members["a"].epoch;
        g.check_commit("a", epoch, &tp).expect("owner commits");
        assert!(matches!(g.check_commit("a", epoch + 1, &tp), Err(GroupError::Fenced { .. })));
        assert!(matches!(g.check_commit("x", 1, &tp), Err(GroupError::UnknownMember { .. })));
        assert!(matches!(g.check_commit("", 0, &tp), Err(GroupError::NotEmpty { .. })));
        g.remove("a");
        assert!(matches!(g.check_commit("a", epoch, &tp), Err(GroupError::UnknownMember { .. })));
        g.check_commit("", 0, &tp).expect("an empty group takes tool commits");
    }

    #[test]
    fn growing_a_topic_assigns_the_new_partitions() {
        let mut g = ConsumerGroup::new("g");
        g.join("a", spec(&["t"]), counts(2)).expect("join");
        g.join("b", spec(&["t"]), counts(2)).expect("join");
        let a = g.members["a"].assigned.clone();
        g.heartbeat("a", &a).expect("hb");
        let epoch = g.epoch;
        assert!(g.set_partitions(counts(4)));
        assert!(g.epoch > epoch);
        let total: usize = g.members.values().map(|m| m.assigned.len()).sum();
        assert_eq!(total, 4);
        assert!(!g.set_partitions(counts(4)));
    }

    #[test]
    fn all_members_must_use_one_assignor() {
        let mut g = ConsumerGroup::new("g");
        g.join("a", spec(&["t"]), counts(2)).expect("join");
        let mut other = spec(&["t"]);
        other.strategy = Strategy::Range;
        assert!(matches!(g.join("b", other, counts(2)), Err(GroupError::AssignorMismatch { .. })));
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut g = ConsumerGroup::new("g");
        g.join("a", spec(&["t"]), counts(3)).expect("join");
        g.join("b", spec(&["t"]), counts(3)).expect("join");
        let json = serde_json::to_string(&g).expect("serialise");
        let back: ConsumerGroup = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, g);
    }
}
