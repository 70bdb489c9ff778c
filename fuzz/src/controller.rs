//! Controller commands (`strata-raft`): a controller entry's batch decoded
//! with `decode_commands`, each command applied in order with
//! `Metadata::apply`, as every node does with its controller log.
//!
//! Input: byte 0 chooses the form of the rest.
//! - bit 0 clear: the rest is a batch (its length field and checksum are
//!   fixed first, so mutations reach the records and the JSON);
//! - bit 0 set: the rest is one command's JSON per line, put into a batch
//!   compressed as bits 1-2 say (0 none, 1 lz4, 2 zstd).
//!
//! Checked: no panic; a command the metadata rejects changes nothing; and
//! after every command the metadata keeps its invariants (see
//! [`invariants`]), survives a JSON round trip (it is what a
//! controller snapshot carries), and places new partitions correctly.

use std::collections::BTreeSet;

use bytes::Bytes;
use strata_raft::NodeId;
use strata_raft::controller::{self, Command, Metadata, NodeRecord};
use strata_record::{BatchBuilder, Compression};
use strata_storage::TopicOverrides;

/// The input for commands given as JSON lines (for seeds).
pub fn seed_lines(commands: &[Command], compression: Compression) -> Vec<u8> {
    let bits = match compression {
        Compression::None => 0,
        Compression::Lz4 => 1,
        Compression::Zstd => 2,
    };
    let mut out = vec![1 | (bits << 1)];
    let lines: Vec<String> = commands.iter().map(|c| serde_json::to_string(c).expect("encode a command")).collect();
    out.extend_from_slice(lines.join("\n").as_bytes());
    out
}

/// The input for a batch as proposed (for seeds).
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
            builder.push_parts(0, None, line, &[]);
        }
        builder.build()
    };
    let commands = match controller::decode_commands(&batch) {
        Ok(c) => c,
        Err(_) => return false,
    };
    let mut metadata = Metadata::default();
    apply_all(&mut metadata, &commands);
    let next = follow_up(&metadata);
    apply_all(&mut metadata, &next);
    true
}

/// Applies `commands` in order, checking after each.
pub fn apply_all(metadata: &mut Metadata, commands: &[Command]) {
    // Invariants hold only for metadata built by commands; a snapshot's
    // metadata may break them (and then must still not make apply panic).
    let held = invariants(metadata).is_ok();
    for command in commands {
        let before = metadata.clone();
        match metadata.apply(command) {
            Err(_) => assert_eq!(*metadata, before, "a rejected command changed the metadata: {command:?}"),
            Ok(()) => {
                if held && let Err(broken) = invariants(metadata) {
                    panic!("{broken} after {command:?}");
                }
            }
        }
        let json = serde_json::to_vec(metadata).expect("encode the metadata");
        let again: Metadata = serde_json::from_slice(&json).expect("decode the metadata");
        assert_eq!(again, *metadata, "the metadata changed on a JSON round trip");
        check_assign(metadata);
    }
}

/// What commands guarantee: topics are filed under their names, topic ids
/// are distinct and below the next id, and every replica is on a known node.
fn invariants(metadata: &Metadata) -> Result<(), String> {
    let mut ids = BTreeSet::new();
    for (name, topic) in &metadata.topics {
        if *name != topic.name {
            return Err(format!("topic '{}' is filed as '{name}'", topic.name));
        }
        if !ids.insert(topic.id) {
            return Err(format!("topic id {} is used twice", topic.id));
        }
        if topic.id >= metadata.next_topic_id {
            return Err(format!("topic id {} is not below the next id {}", topic.id, metadata.next_topic_id));
        }
        for (p, set) in topic.replicas.iter().enumerate() {
            if let Some(node) = set.iter().find(|n| !metadata.nodes.contains_key(n)) {
                return Err(format!("partition {p} of '{name}' is on unknown node {node}"));
            }
        }
    }
    for (id, node) in &metadata.nodes {
        if *id != node.id {
            return Err(format!("node {} is filed as {id}", node.id));
        }
    }
    Ok(())
}

/// New partitions are placed on distinct live nodes, leaders spread.
fn check_assign(metadata: &Metadata) {
    let live: Vec<NodeId> = metadata.nodes.keys().copied().take(5).collect();
    for rf in 1..=live.len().min(3) as u32 {
        let placed = metadata.assign(4, rf, &live).expect("enough live nodes");
        assert_eq!(placed.len(), 4);
        for set in &placed {
            let distinct: BTreeSet<_> = set.iter().collect();
            assert_eq!(distinct.len(), rf as usize, "replicas not on distinct nodes: {set:?}");
            assert!(set.iter().all(|n| live.contains(n)), "a replica on a node not live: {set:?}");
        }
    }
}

/// What a controller might do next with this metadata: register a new
/// node, create a topic, grow, alter and delete the existing ones.
pub fn follow_up(metadata: &Metadata) -> Vec<Command> {
    let mut out = Vec::new();
    let new_id = metadata.nodes.keys().next_back().map_or(Some(1), |id| id.checked_add(1));
    if let Some(id) = new_id {
        out.push(Command::RegisterNode(NodeRecord {
            id,
            addr: "127.0.0.1:7000".into(),
            incarnation: format!("fuzz-{id}"),
        }));
    }
    let live: Vec<NodeId> = metadata.nodes.keys().copied().chain(new_id).take(3).collect();
    if let Ok(replicas) = metadata.assign(2, live.len().min(3) as u32, &live) {
        out.push(Command::CreateTopic {
            name: "fuzz-follow-up".into(),
            replicas,
            overrides: TopicOverrides::default(),
        });
    }
    for (name, topic) in metadata.topics.iter().take(4) {
        let from = u32::try_from(topic.replicas.len()).unwrap_or(u32::MAX);
        out.push(Command::AddPartitions { name: name.clone(), from, replicas: vec![live.clone()] });
        out.push(Command::AlterTopic {
            name: name.clone(),
            overrides: TopicOverrides { retention_ms: Some(1000), ..TopicOverrides::default() },
        });
        out.push(Command::DeleteTopic { name: name.clone() });
    }
    out
}
