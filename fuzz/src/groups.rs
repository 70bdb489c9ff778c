//! Group records (`strata-server`): the records of `__strata_groups`,
//! decoded as a new coordinator loads its partition
//! (`groups::decode_entries`, then `ShardState::apply`), and the loaded
//! groups then used as the coordinator uses them (rebalance on new
//! partition counts, heartbeats, commit checks, share-group deliveries).
//!
//! Input: byte 0 chooses the form of the rest.
//! - bit 0 clear: the rest is a batch (its length field and checksum are
//!   fixed first, so mutations reach the records and the JSON);
//! - bit 0 set: one record per line, `group<TAB>json`, put into a batch
//!   compressed as bits 1-2 say (0 none, 1 lz4, 2 zstd).
//!
//! Checked: no panic; every decoded change encodes back to the same JSON;
//! a rebalance gives every subscribed partition to exactly one subscriber
//! and nothing else, whatever the loaded target was; a member is never
//! left assigned a partition outside its target; share-group delivery
//! state that was consistent stays consistent.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use strata_record::{BatchBuilder, Compression};
use strata_server::groups::assignor::Tp;
use strata_server::groups::consumer::ConsumerGroup;
use strata_server::groups::share::SharePartition;
use strata_server::groups::{self, Entry, ShardState};

/// The input for records given as (group, change) lines (for seeds).
pub fn seed_lines(entries: &[(&str, Entry)], compression: Compression) -> Vec<u8> {
    let bits = match compression {
        Compression::None => 0,
        Compression::Lz4 => 1,
        Compression::Zstd => 2,
    };
    let mut out = vec![1 | (bits << 1)];
    let lines: Vec<String> = entries
        .iter()
        .map(|(g, e)| format!("{g}\t{}", serde_json::to_string(e).expect("encode a group record")))
        .collect();
    out.extend_from_slice(lines.join("\n").as_bytes());
    out
}

/// The input for a batch as the coordinator writes it (for seeds).
pub fn seed_batch(batch: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(batch);
    out
}

pub fn run(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else { return false };
    let batch = if mode & 1 == 0 {
        match crate::fix_batch(rest) {
            Some(b) => Bytes::from(b),
            None => Bytes::copy_from_slice(rest),
        }
    } else {
        let compression = match (mode >> 1) % 3 {
            0 => Compression::None,
            1 => Compression::Lz4,
            _ => Compression::Zstd,
        };
        let mut builder = BatchBuilder::new(compression);
        for line in rest.split(|b| *b == b'\n') {
            let (key, value) = match line.iter().position(|b| *b == b'\t') {
                Some(at) => (&line[..at], &line[at + 1..]),
                None => (&b""[..], line),
            };
            builder.push_parts(0, Some(key), value, &[]);
        }
        builder.build()
    };
    let Ok(entries) = groups::decode_entries(&batch, 0) else { return false };
    let mut state = ShardState::default();
    for (_, group, entry) in entries {
        let json = serde_json::to_string(&entry).expect("encode a group record");
        let again: Entry = serde_json::from_str(&json).expect("decode a group record just encoded");
        assert_eq!(serde_json::to_string(&again).expect("encode"), json, "a group record changed on a round trip");
        state.apply(&group, entry);
    }
    for group in state.consumer.values().take(8) {
        use_consumer_group(group.clone());
    }
    for share in state.share.values().take(8) {
        for (config, parts) in share.topics.values().take(8) {
            for part in parts.values().take(8) {
                use_share_partition(part.clone(), config.max_deliveries);
            }
        }
    }
    true
}

fn use_consumer_group(mut group: ConsumerGroup) {
    let _ = (group.state(), group.owners(), group.subscribed());
    let ids: Vec<String> = group.members.keys().take(8).cloned().collect();
    for id in &ids {
        let _ = group.reconciled(id);
        let held: BTreeSet<Tp> = group.members[id].held.keys().cloned().collect();
        let epoch = group.members[id].epoch;
        let _ = group.check_commit(id, epoch, &held);
        let _ = group.check_commit(id, epoch.saturating_add(1), &held);
        let _ = group.check_commit("", epoch, &held);
    }
    // The topics' partition counts as the coordinator finds them: at most
    // a few partitions each, and the first subscribed topic deleted.
    let subscribed = group.subscribed();
    let mut counts: BTreeMap<String, u32> =
        subscribed.iter().take(8).map(|t| (t.clone(), group.partitions.get(t).copied().unwrap_or(1) % 9)).collect();
    // The target is checked after each rebalance only: a loaded target is
    // kept as it was written until something changes. From here on the
    // group's partition counts are `counts`.
    if group.set_partitions(counts.clone()) {
        check_assignment(&group, &counts);
    }
    if let Some(first) = subscribed.iter().next() {
        counts.remove(first);
        if group.set_partitions(counts.clone()) {
            check_assignment(&group, &counts);
        }
    }
    for id in &ids {
        // A heartbeat that changed something reconciled every member.
        if group.heartbeat(id, &BTreeSet::new()) == Ok(true) {
            check_assigned_within_target(&group);
        }
    }
    if let Some(id) = ids.first()
        && group.remove(id)
    {
        check_assignment(&group, &counts);
    }
}

/// Every partition of a subscribed topic goes to exactly one member that
/// subscribes to it, and nothing else is given.
fn check_assignment(group: &ConsumerGroup, counts: &BTreeMap<String, u32>) {
    let mut given = BTreeSet::new();
    for (id, set) in &group.target {
        let member = group.members.get(id).unwrap_or_else(|| panic!("the target names {id}, not a member"));
        for tp in set {
            assert!(member.topics.contains(&tp.0), "{id} was given {tp:?} without subscribing");
            assert!(counts.get(&tp.0).is_some_and(|n| tp.1 < *n), "{id} was given {tp:?}, which does not exist");
            assert!(given.insert(tp.clone()), "{tp:?} was given twice");
        }
    }
    for (topic, n) in counts {
        if group.members.values().any(|m| m.topics.contains(topic)) {
            for p in 0..*n {
                assert!(given.contains(&(topic.clone(), p)), "{topic}/{p} was given to nobody");
            }
        }
    }
    check_assigned_within_target(group);
}

fn check_assigned_within_target(group: &ConsumerGroup) {
    for (id, m) in &group.members {
        let target = group.target.get(id).cloned().unwrap_or_default();
        assert!(m.assigned.is_subset(&target), "member {id} is assigned partitions outside its target");
    }
}

/// Start at the first pending record (or the end), pending records within
/// [start, end).
fn consistent(p: &SharePartition) -> bool {
    p.start <= p.end
        && p.pending.keys().all(|o| (p.start..p.end).contains(o))
        && p.start == p.pending.keys().next().copied().unwrap_or(p.end)
}

fn use_share_partition(mut part: SharePartition, max_deliveries: u32) {
    let was = consistent(&part);
    let check = |part: &SharePartition, what: &str| {
        if was {
            assert!(consistent(part), "share-group state inconsistent after {what}: {part:?}");
        }
    };
    let upto = part.end.saturating_add(16);
    part.deliver_new(upto);
    check(&part, "deliver_new");
    let pending: Vec<u64> = part.pending.keys().take(16).copied().collect();
    for &o in &pending {
        part.redeliver(o);
        let _ = part.deliveries(o).map(|d| SharePartition::outcome(d, max_deliveries));
    }
    check(&part, "redeliver");
    if let Some(&o) = pending.first() {
        part.done(o);
        check(&part, "done");
    }
    part.skip_to(part.start.saturating_add(1));
    check(&part, "skip_to");
}
