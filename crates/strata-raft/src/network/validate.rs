//! What a Raft message from a peer must satisfy before openraft sees it.
//!
//! openraft trusts its peers: a vote with a term near `u64::MAX` makes it
//! overflow, a vote for a node that does not exist is persisted, a forged
//! membership is adopted. The cluster listener lets only member nodes in
//! (mutual TLS), and every message is checked here as well, so that a
//! message no correct node sends is refused at the transport (with
//! `INVALID_ARGUMENT` saying what is wrong) and never reaches a group:
//!
//! - terms and log indices below 2^63 ([`MAX_TERM`], [`MAX_INDEX`]): far
//!   beyond anything real (a new term every millisecond for 290 million
//!   years), and room for openraft's arithmetic;
//! - the vote's node is a member of the cluster, and it is the sender's own
//!   node: a node asks votes for itself and replicates as itself (known when
//!   the connection is authenticated);
//! - no log id has a term beyond the vote's (a leader's log holds no entry
//!   of a later term than its own), entries follow `prev` one index after
//!   another with terms that never go down, and a membership names members
//!   only.

use openraft::EntryPayload;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

use crate::types::{LogId, NodeId, SnapshotMeta, StoredMembership, TypeConfig, Vote};

/// Largest term accepted from a peer.
pub const MAX_TERM: u64 = (1 << 63) - 1;
/// How far beyond a group's current term a peer's vote may reach: an
/// election moves the term by one, so a node cut off for days with pre-vote
/// off is still far below it, while a forged vote just under [`MAX_TERM`]
/// (after which no election could ever win: the next term would be out of
/// range) is refused.
pub const MAX_TERM_JUMP: u64 = 1 << 20;
/// Largest log index accepted from a peer.
pub const MAX_INDEX: u64 = (1 << 63) - 1;

/// Why a peer's message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{what} has term {term}, out of range (at most 2^63 - 1)")]
    Term { what: &'static str, term: u64 },
    #[error("{what} has index {index}, out of range (at most 2^63 - 1)")]
    Index { what: &'static str, index: u64 },
    #[error("the vote is for node {node}, which is not a member of the cluster")]
    NotMember { node: NodeId },
    #[error("the vote is for node {voted_for}, but the message comes from node {sender}")]
    NotSender { voted_for: NodeId, sender: NodeId },
    #[error("{what} has term {term}, beyond the vote's term {vote_term}")]
    BeyondVote { what: &'static str, term: u64, vote_term: u64 },
    #[error("entry {index} should be entry {expected}: entries must follow the previous one without a gap")]
    Gap { index: u64, expected: u64 },
    #[error("entry {index} has term {term}, below the term {before} of the entry before it")]
    TermDecreases { index: u64, term: u64, before: u64 },
    #[error("a membership names node {node}, which is not a member of the cluster")]
    MembershipNotMember { node: NodeId },
    #[error("the vote's term {term} is more than {MAX_TERM_JUMP} beyond this group's term {current}")]
    TermJump { term: u64, current: u64 },
    #[error("{0}")]
    Snapshot(String),
    #[error("{0}")]
    Refused(&'static str),
}

/// Who may send what: the cluster's members, the node at the other end
/// of the connection (`None`: not authenticated, `--insecure-cluster`), and
/// the receiving group's current term.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub members: &'a [NodeId],
    pub node: Option<NodeId>,
    pub current_term: u64,
}

impl Sender<'_> {
    /// The vote is in range, for a member, and the sender's own.
    pub fn check_vote(&self, vote: &Vote) -> Result<(), Invalid> {
        let (term, node) = (vote.leader_id.term, vote.leader_id.voted_for);
        if term > MAX_TERM {
            return Err(Invalid::Term { what: "the vote", term });
        }
        if term > self.current_term.saturating_add(MAX_TERM_JUMP) {
            return Err(Invalid::TermJump { term, current: self.current_term });
        }
        if !self.members.contains(&node) {
            return Err(Invalid::NotMember { node });
        }
        if let Some(sender) = self.node
            && sender != node
        {
            return Err(Invalid::NotSender { voted_for: node, sender });
        }
        Ok(())
    }

    /// A vote (or pre-vote) request: a candidate's vote is not committed.
    /// A leadership-transfer election (which passes every voter's leader
    /// lease) is structurally fine here; the Raft service lets it through
    /// only where the group's leader handed the group over to that
    /// candidate (`RaftService::refuse_vote`).
    pub fn check_vote_request(&self, req: &VoteRequest<TypeConfig>) -> Result<(), Invalid> {
        self.check_vote(&req.vote)?;
        if req.vote.committed {
            return Err(Invalid::Refused("a vote request carries a committed vote"));
        }
        check_log_id("the candidate's last entry", req.last_log_id.as_ref(), &req.vote)
    }

    /// A leader's handover (`TransferLeader`): the sender's own committed
    /// vote, to another member, with a last entry of the leader's terms.
    pub fn check_transfer(&self, from: &Vote, to: NodeId, last_log_id: Option<&LogId>) -> Result<(), Invalid> {
        self.check_vote(from)?;
        if !from.committed {
            return Err(Invalid::Refused("a handover from a vote that is not a leader's (not committed)"));
        }
        if !self.members.contains(&to) {
            return Err(Invalid::NotMember { node: to });
        }
        if to == from.leader_id.voted_for {
            return Err(Invalid::Refused("a handover from the leader to itself"));
        }
        check_log_id("the leader's last entry", last_log_id, from)
    }

    /// An append request: a leader's (committed) vote, previous entry,
    /// entries and commit point.
    pub fn check_append(&self, req: &AppendEntriesRequest<TypeConfig>) -> Result<(), Invalid> {
        self.check_vote(&req.vote)?;
        if !req.vote.committed {
            return Err(Invalid::Refused("an append carries a vote that is not a leader's (not committed)"));
        }
        check_log_id("the previous entry", req.prev_log_id.as_ref(), &req.vote)?;
        check_log_id("the commit point", req.leader_commit.as_ref(), &req.vote)?;
        let mut expected = req.prev_log_id.map_or(0, |p| p.index + 1);
        let mut before = req.prev_log_id.map_or(0, |p| p.leader_id.term);
        for entry in &req.entries {
            let id = entry.log_id;
            check_log_id("an entry", Some(&id), &req.vote)?;
            if id.index != expected {
                return Err(Invalid::Gap { index: id.index, expected });
            }
            if id.leader_id.term < before {
                return Err(Invalid::TermDecreases { index: id.index, term: id.leader_id.term, before });
            }
            if let EntryPayload::Membership(m) = &entry.payload {
                self.check_membership_nodes(m.nodes().map(|(id, _)| *id))?;
            }
            expected = id.index + 1;
            before = id.leader_id.term;
        }
        Ok(())
    }

    /// A snapshot's metadata, sent with `vote`.
    pub fn check_snapshot(&self, vote: &Vote, meta: &SnapshotMeta) -> Result<(), Invalid> {
        self.check_vote(vote)?;
        check_log_id("the snapshot's last entry", meta.last_log_id.as_ref(), vote)?;
        self.check_stored_membership(&meta.last_membership, vote)
    }

    fn check_stored_membership(&self, m: &StoredMembership, vote: &Vote) -> Result<(), Invalid> {
        check_log_id("the snapshot's membership entry", m.log_id().as_ref(), vote)?;
        self.check_membership_nodes(m.membership().nodes().map(|(id, _)| *id))
    }

    fn check_membership_nodes(&self, mut nodes: impl Iterator<Item = NodeId>) -> Result<(), Invalid> {
        match nodes.find(|n| !self.members.contains(n)) {
            Some(node) => Err(Invalid::MembershipNotMember { node }),
            None => Ok(()),
        }
    }
}

/// A log id in range, of no later term than the vote's.
fn check_log_id(what: &'static str, id: Option<&LogId>, vote: &Vote) -> Result<(), Invalid> {
    let Some(id) = id else { return Ok(()) };
    let (term, vote_term) = (id.leader_id.term, vote.leader_id.term);
    if term > MAX_TERM {
        return Err(Invalid::Term { what, term });
    }
    if id.index > MAX_INDEX {
        return Err(Invalid::Index { what, index: id.index });
    }
    if term > vote_term {
        return Err(Invalid::BeyondVote { what, term, vote_term });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::Membership;

    use super::*;
    use crate::types::{Entry, NodeInfo, Request};

    const MEMBERS: &[NodeId] = &[1, 2, 3];

    fn sender(node: Option<NodeId>) -> Sender<'static> {
        Sender { members: MEMBERS, node, current_term: MAX_TERM - 10 }
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry { log_id: LogId::new_term_index(term, index), payload: EntryPayload::Normal(Request::default()) }
    }

    fn append(vote: Vote, prev: Option<(u64, u64)>, entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote,
            prev_log_id: prev.map(|(t, i)| LogId::new_term_index(t, i)),
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn votes_out_of_range_for_strangers_or_for_someone_else_are_refused() {
        let s = sender(Some(2));
        s.check_vote(&Vote::new(7, 2)).expect("a member's own vote");
        assert_eq!(s.check_vote(&Vote::new(u64::MAX, 2)), Err(Invalid::Term { what: "the vote", term: u64::MAX }));
        assert!(s.check_vote(&Vote::new(1 << 63, 2)).is_err(), "2^63 is out of range");
        s.check_vote(&Vote::new(MAX_TERM, 2)).expect("2^63 - 1 is the largest");
        assert_eq!(s.check_vote(&Vote::new(7, 9)), Err(Invalid::NotMember { node: 9 }));
        assert_eq!(s.check_vote(&Vote::new(7, 3)), Err(Invalid::NotSender { voted_for: 3, sender: 2 }));
        sender(None).check_vote(&Vote::new(7, 3)).expect("unauthenticated: any member");

        let near = Sender { current_term: 5, ..s };
        assert_eq!(
            near.check_vote(&Vote::new(5 + MAX_TERM_JUMP + 1, 2)),
            Err(Invalid::TermJump { term: 5 + MAX_TERM_JUMP + 1, current: 5 })
        );
        near.check_vote(&Vote::new(5 + MAX_TERM_JUMP, 2)).expect("a jump within the bound");
        let mut transfer = VoteRequest::new(Vote::new(7, 2), None);
        transfer.leadership_transfer = true;
        s.check_vote_request(&transfer).expect("a transfer's vote is let through here (the service decides)");
        let leader = Vote::new_committed(7, 2);
        s.check_transfer(&leader, 1, Some(&LogId::new_term_index(7, 4))).expect("a leader hands over to a member");
        assert_eq!(s.check_transfer(&leader, 9, None), Err(Invalid::NotMember { node: 9 }));
        assert!(matches!(s.check_transfer(&leader, 2, None), Err(Invalid::Refused(_))), "to itself");
        assert!(matches!(s.check_transfer(&Vote::new(7, 2), 1, None), Err(Invalid::Refused(_))), "not a leader's");
        assert_eq!(
            s.check_transfer(&Vote::new_committed(7, 3), 1, None),
            Err(Invalid::NotSender { voted_for: 3, sender: 2 }),
            "another leader's handover"
        );
        assert!(s.check_transfer(&leader, 1, Some(&LogId::new_term_index(8, 4))).is_err(), "an entry beyond the term");
        let committed = VoteRequest::new(Vote::new_committed(7, 2), None);
        assert!(matches!(s.check_vote_request(&committed), Err(Invalid::Refused(_))));
        assert!(matches!(s.check_append(&append(Vote::new(7, 2), None, vec![])), Err(Invalid::Refused(_))));

        let mut req = VoteRequest::new(Vote::new(7, 2), Some(LogId::new_term_index(7, u64::MAX)));
        assert!(matches!(s.check_vote_request(&req), Err(Invalid::Index { .. })));
        req.last_log_id = Some(LogId::new_term_index(8, 10));
        assert!(matches!(s.check_vote_request(&req), Err(Invalid::BeyondVote { term: 8, vote_term: 7, .. })));
        req.last_log_id = Some(LogId::new_term_index(7, 10));
        s.check_vote_request(&req).expect("a candidate's real log");
    }

    #[test]
    fn appended_entries_follow_their_previous_entry() {
        let s = sender(Some(1));
        let vote = Vote::new_committed(5, 1);
        s.check_append(&append(vote, Some((4, 9)), vec![entry(4, 10), entry(5, 11)])).expect("contiguous");
        s.check_append(&append(vote, None, vec![entry(1, 0)])).expect("from the start");
        assert_eq!(
            s.check_append(&append(vote, Some((4, 9)), vec![entry(5, 12)])),
            Err(Invalid::Gap { index: 12, expected: 10 })
        );
        assert_eq!(
            s.check_append(&append(vote, Some((4, 9)), vec![entry(3, 10)])),
            Err(Invalid::TermDecreases { index: 10, term: 3, before: 4 })
        );
        assert!(matches!(
            s.check_append(&append(vote, Some((4, 9)), vec![entry(6, 10)])),
            Err(Invalid::BeyondVote { what: "an entry", .. })
        ));
        assert!(matches!(s.check_append(&append(vote, Some((6, 9)), vec![])), Err(Invalid::BeyondVote { .. })));
        let mut commit = append(vote, None, vec![]);
        commit.leader_commit = Some(LogId::new_term_index(5, 1 << 63));
        assert!(matches!(s.check_append(&commit), Err(Invalid::Index { .. })));

        let nodes: BTreeMap<NodeId, NodeInfo> = [(1, NodeInfo::default()), (7, NodeInfo::default())].into();
        let members: Vec<BTreeSet<NodeId>> = vec![[1, 7].into()];
        let forged = Membership::new(members, nodes).expect("membership");
        let entry = Entry { log_id: LogId::new_term_index(5, 10), payload: EntryPayload::Membership(forged) };
        assert_eq!(
            s.check_append(&append(vote, Some((4, 9)), vec![entry])),
            Err(Invalid::MembershipNotMember { node: 7 })
        );
    }
}
