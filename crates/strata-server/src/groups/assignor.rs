//! How a consumer group's partitions are spread over its members: range,
//! round-robin, and a sticky assignor that balances while moving as few
//! partitions as possible from the last assignment.
//!
//! Pure functions of (members and their subscriptions, partition counts,
//! the previous assignment); the coordinator runs them whenever the group
//! epoch changes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A topic partition.
pub type Tp = (String, u32);

/// Member id -> the partitions it is given.
pub type Assignment = BTreeMap<String, BTreeSet<Tp>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Range,
    RoundRobin,
    #[default]
    Sticky,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "round-robin",
            Self::Sticky => "sticky",
        }
    }
}

/// Every subscribed partition, sorted, with the members that may take it.
fn eligible(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<Tp, Vec<String>> {
    let mut out = BTreeMap::new();
    for (topic, count) in partitions {
        let subscribers: Vec<String> =
            members.iter().filter(|(_, topics)| topics.contains(topic)).map(|(id, _)| id.clone()).collect();
        if subscribers.is_empty() {
            continue;
        }
        for p in 0..*count {
            out.insert((topic.clone(), p), subscribers.clone());
        }
    }
    out
}

/// The assignment for `members` (id -> subscribed topics) over the topics'
/// partition counts. Every member appears in the result (possibly with
/// nothing); every subscribed partition goes to exactly one member that
/// subscribes to its topic.
pub fn assign(
    strategy: Strategy,
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut out: Assignment = members.keys().map(|id| (id.clone(), BTreeSet::new())).collect();
    let eligible = eligible(members, partitions);
    match strategy {
        Strategy::Range => {
            for (topic, count) in partitions {
                let subscribers: Vec<&String> =
                    members.iter().filter(|(_, t)| t.contains(topic)).map(|(id, _)| id).collect();
                if subscribers.is_empty() {
                    continue;
                }
                let (n, k) = (*count as usize, subscribers.len());
                let mut next = 0u32;
                for (i, id) in subscribers.iter().enumerate() {
                    let take = n / k + usize::from(i < n % k);
                    let set = out.get_mut(*id).expect("every member is in the output");
                    for _ in 0..take {
                        set.insert((topic.clone(), next));
                        next += 1;
                    }
                }
            }
        }
        Strategy::RoundRobin => {
            let ids: Vec<&String> = members.keys().collect();
            let mut turn = 0usize;
            for (tp, who) in &eligible {
                // The next member in the cycle that subscribes to the topic.
                for step in 0..ids.len() {
                    let id = ids[(turn + step) % ids.len()];
                    if who.contains(id) {
                        out.get_mut(id).expect("member").insert(tp.clone());
                        turn = (turn + step + 1) % ids.len();
                        break;
                    }
                }
            }
        }
        Strategy::Sticky => sticky(&mut out, &eligible, previous),
    }
    out
}

fn sticky(out: &mut Assignment, eligible: &BTreeMap<Tp, Vec<String>>, previous: &Assignment) {
    // Keep what each remaining member had, where it still may.
    let mut owner: BTreeMap<Tp, String> = BTreeMap::new();
    for (id, tps) in previous {
        if !out.contains_key(id) {
            continue;
        }
        for tp in tps {
            if eligible.get(tp).is_some_and(|who| who.contains(id)) && !owner.contains_key(tp) {
                owner.insert(tp.clone(), id.clone());
                out.get_mut(id).expect("member").insert(tp.clone());
            }
        }
    }
    // Everything else to the eligible member holding the fewest.
    for (tp, who) in eligible {
        if owner.contains_key(tp) {
            continue;
        }
        let id = who.iter().min_by_key(|id| (out[*id].len(), (*id).clone())).expect("a subscriber").clone();
        owner.insert(tp.clone(), id.clone());
        out.get_mut(&id).expect("member").insert(tp.clone());
    }
    // Balance: move one partition at a time from the fullest member to an
    // eligible one holding at least two fewer, until none can move. Each
    // move lowers the sum of squared counts, so this ends.
    loop {
        let mut by_count: Vec<(usize, String)> = out.iter().map(|(id, s)| (s.len(), id.clone())).collect();
        by_count.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut moved = false;
        'search: for (count, from) in &by_count {
            // Highest partitions first: a member keeps its lowest ones.
            for tp in out[from].iter().rev() {
                let best = eligible[tp]
                    .iter()
                    .filter(|id| *id != from && out[*id].len() + 1 < *count)
                    .min_by_key(|id| (out[*id].len(), (*id).clone()));
                if let Some(to) = best.cloned() {
                    let tp = tp.clone();
                    out.get_mut(from).expect("member").remove(&tp);
                    out.get_mut(&to).expect("member").insert(tp);
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        list.iter().map(|(id, t)| ((*id).to_owned(), t.iter().map(|s| (*s).to_owned()).collect())).collect()
    }

    fn counts(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    fn tps(list: &[(&str, u32)]) -> BTreeSet<Tp> {
        list.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect()
    }

    /// Every subscribed partition exactly once, to a subscriber, and
    /// nothing that does not exist.
    fn check_complete(a: &Assignment, m: &BTreeMap<String, BTreeSet<String>>, p: &BTreeMap<String, u32>) {
        let mut seen = BTreeSet::new();
        for (id, set) in a {
            for tp in set {
                assert!(m[id].contains(&tp.0), "{id} got {tp:?} without subscribing");
                assert!(p.get(&tp.0).is_some_and(|n| tp.1 < *n), "{id} got {tp:?}, which does not exist");
                assert!(seen.insert(tp.clone()), "{tp:?} given twice");
            }
        }
        for (topic, n) in p {
            if m.values().any(|t| t.contains(topic)) {
                for i in 0..*n {
                    assert!(seen.contains(&(topic.clone(), i)), "{topic}/{i} not given");
                }
            }
        }
    }

    fn spread(a: &Assignment) -> usize {
        let sizes: Vec<usize> = a.values().map(BTreeSet::len).collect();
        sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0)
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic() {
        let m = members(&[("a", &["t", "u"]), ("b", &["t", "u"])]);
        let p = counts(&[("t", 5), ("u", 2)]);
        let a = assign(Strategy::Range, &m, &p, &Assignment::new());
        assert_eq!(a["a"], tps(&[("t", 0), ("t", 1), ("t", 2), ("u", 0)]));
        assert_eq!(a["b"], tps(&[("t", 3), ("t", 4), ("u", 1)]));
        check_complete(&a, &m, &p);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let p = counts(&[("t", 7)]);
        let a = assign(Strategy::RoundRobin, &m, &p, &Assignment::new());
        assert_eq!(a["a"], tps(&[("t", 0), ("t", 3), ("t", 6)]));
        assert_eq!(a["b"], tps(&[("t", 1), ("t", 4)]));
        assert_eq!(a["c"], tps(&[("t", 2), ("t", 5)]));
    }

    #[test]
    fn every_strategy_honours_subscriptions() {
        let m = members(&[("a", &["t"]), ("b", &["t", "u"]), ("c", &["u", "v"])]);
        let p = counts(&[("t", 4), ("u", 3), ("v", 2), ("w", 3)]);
        for s in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            let a = assign(s, &m, &p, &Assignment::new());
            check_complete(&a, &m, &p);
            assert!(a.values().all(|set| set.iter().all(|tp| tp.0 != "w")), "{s:?} gave an unsubscribed topic");
        }
    }

    #[test]
    fn sticky_is_balanced_and_moves_only_what_it_must() {
        let p = counts(&[("t", 12)]);
        let two = members(&[("a", &["t"]), ("b", &["t"])]);
        let first = assign(Strategy::Sticky, &two, &p, &Assignment::new());
        assert_eq!(spread(&first), 0);
        // A third member joins: it gets 4, the others give up 2 each and keep
        // the rest.
        let three = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let second = assign(Strategy::Sticky, &three, &p, &first);
        check_complete(&second, &three, &p);
        assert_eq!(spread(&second), 0);
        for id in ["a", "b"] {
            assert!(second[id].is_subset(&first[id]), "{id} got partitions it did not have");
        }
        // b leaves: only b's partitions move.
        let without_b = members(&[("a", &["t"]), ("c", &["t"])]);
        let third = assign(Strategy::Sticky, &without_b, &p, &second);
        check_complete(&third, &without_b, &p);
        assert_eq!(spread(&third), 0);
        for id in ["a", "c"] {
            assert!(second[id].is_subset(&third[id]), "{id} lost partitions although b left");
        }
    }

    #[test]
    fn sticky_takes_new_partitions_and_drops_deleted_topics() {
        let m = members(&[("a", &["t", "u"]), ("b", &["t", "u"])]);
        let before = assign(Strategy::Sticky, &m, &counts(&[("t", 4), ("u", 2)]), &Assignment::new());
        // t grows to 6 partitions, u is deleted.
        let p = counts(&[("t", 6)]);
        let after = assign(Strategy::Sticky, &m, &p, &before);
        check_complete(&after, &m, &p);
        assert_eq!(spread(&after), 0);
        for id in ["a", "b"] {
            assert!(before[id].iter().any(|tp| tp.0 == "u"), "{id} held a partition of u before");
            assert!(after[id].iter().all(|tp| tp.0 != "u"), "{id} kept a partition of the deleted topic u");
            let kept: BTreeSet<Tp> = before[id].iter().filter(|tp| tp.0 == "t").cloned().collect();
            assert!(kept.is_subset(&after[id]), "{id} lost a partition of t");
        }
    }

    #[test]
    fn a_member_without_partitions_to_take_gets_none() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let p = counts(&[("t", 2)]);
        for s in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            let a = assign(s, &m, &p, &Assignment::new());
            check_complete(&a, &m, &p);
            assert_eq!(a.len(), 3);
            assert_eq!(a.values().map(BTreeSet::len).sum::<usize>(), 2);
        }
    }
}
