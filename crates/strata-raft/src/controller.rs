//! The cluster controller's state: which nodes exist, which topics, where
//! each partition's replicas live, and each topic's configuration.
//!
//! The controller is a Raft group of every node (its log is a segment log
//! like a partition's). A command is one record batch holding one record
//! whose value is the command in JSON; applying commands in log order gives
//! every node the same [`Metadata`]. Commands are checked by the leader
//! before it proposes them; applying re-checks, so a command that lost a
//! race (two creations of one name) changes nothing on any node.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_record::{Compression, FormatError, Record};
use strata_storage::TopicOverrides;

use crate::types::NodeId;

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// `HOST:PORT` other nodes and clients reach it at.
    pub addr: String,
    /// Random id of the node's data directory, fixed when it was created: a
    /// node id that comes back with another data directory is refused (node
    /// ids are never reused).
    pub incarnation: String,
}

/// A topic: its id, and per partition the replicas (the first is the
/// preferred leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: u64,
    pub replicas: Vec<Vec<NodeId>>,
    pub overrides: TopicOverrides,
}

/// The cluster's metadata, as of some controller entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Chosen when the cluster was first started; every node keeps it and
    /// refuses to work with nodes of another cluster.
    pub cluster_id: Option<String>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Topic ids are never reused (a deleted topic's data is never mistaken
    /// for a new topic's).
    pub next_topic_id: u64,
}

/// A change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Bootstrap {
        cluster_id: String,
    },
    RegisterNode(NodeRecord),
    CreateTopic {
        name: String,
        replicas: Vec<Vec<NodeId>>,
        overrides: TopicOverrides,
    },
    DeleteTopic {
        name: String,
    },
    AlterTopic {
        name: String,
        overrides: TopicOverrides,
    },
    /// New partitions for a topic that has `from` partitions: `replicas`
    /// are theirs, in order (refused if the topic has another count by
    /// then: a concurrent change won).
    AddPartitions {
        name: String,
        from: u32,
        replicas: Vec<Vec<NodeId>>,
    },
}

/// Why a command cannot be applied (the metadata is left unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the cluster is already bootstrapped as {0}")]
    AlreadyBootstrapped(String),
    #[error("node {id} was registered with another data directory; node ids are never reused: give this node a new id")]
    NodeIdReused { id: NodeId },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{topic}' has {current} partitions, not {expected} (changed meanwhile)")]
    PartitionCountChanged { topic: String, expected: u32, current: u32 },
    #[error("partition {partition} of '{topic}' names node {node}, which is not a member of the cluster")]
    UnknownNode { topic: String, partition: usize, node: NodeId },
}

impl Metadata {
    /// Applies `command`, or leaves the metadata as it was.
    pub fn apply(&mut self, command: &Command) -> Result<(), Rejected> {
        match command {
            Command::Bootstrap { cluster_id } => match &self.cluster_id {
                Some(existing) if existing != cluster_id => {
                    return Err(Rejected::AlreadyBootstrapped(existing.clone()));
                }
                _ => self.cluster_id = Some(cluster_id.clone()),
            },
            Command::RegisterNode(node) => {
                if let Some(known) = self.nodes.get(&node.id)
                    && known.incarnation != node.incarnation
                {
                    return Err(Rejected::NodeIdReused { id: node.id });
                }
                self.nodes.insert(node.id, node.clone());
            }
            Command::CreateTopic { name, replicas, overrides } => {
                if self.topics.contains_key(name) {
                    return Err(Rejected::TopicExists(name.clone()));
                }
                for (partition, set) in replicas.iter().enumerate() {
                    if let Some(node) = set.iter().find(|n| !self.nodes.contains_key(n)) {
                        return Err(Rejected::UnknownNode { topic: name.clone(), partition, node: *node });
                    }
                }
                self.next_topic_id = self.next_topic_id.max(1);
                let id = self.next_topic_id;
                self.next_topic_id += 1;
                let topic = TopicRecord { name: name.clone(), id, replicas: replicas.clone(), overrides: *overrides };
                self.topics.insert(name.clone(), topic);
            }
            Command::DeleteTopic { name } => {
                self.topics.remove(name).ok_or_else(|| Rejected::UnknownTopic(name.clone()))?;
            }
            Command::AlterTopic { name, overrides } => {
                let topic = self.topics.get_mut(name).ok_or_else(|| Rejected::UnknownTopic(name.clone()))?;
                topic.overrides = topic.overrides.merge(overrides);
            }
            Command::AddPartitions { name, from, replicas } => {
                let topic = self.topics.get(name).ok_or_else(|| Rejected::UnknownTopic(name.clone()))?;
                let current = topic.replicas.len() as u32;
                if current != *from {
                    return Err(Rejected::PartitionCountChanged { topic: name.clone(), expected: *from, current });
                }
                for (i, set) in replicas.iter().enumerate() {
                    if let Some(node) = set.iter().find(|n| !self.nodes.contains_key(n)) {
                        let partition = *from as usize + i;
                        return Err(Rejected::UnknownNode { topic: name.clone(), partition, node: *node });
                    }
                }
                if let Some(topic) = self.topics.get_mut(name) {
                    topic.replicas.extend(replicas.iter().cloned());
                }
            }
        }
        Ok(())
    }

    /// How many partitions each node leads by preference.
    fn preferred_leaders(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for topic in self.topics.values() {
            for set in &topic.replicas {
                if let Some(first) = set.first() {
                    *counts.entry(*first).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Places `partitions` partitions of `replication_factor` replicas each
    /// on the nodes in `live`: replicas of a partition on distinct nodes,
    /// replicas and preferred leaders spread evenly, starting from the nodes
    /// that lead the fewest partitions today.
    pub fn assign(
        &self,
        partitions: u32,
        replication_factor: u32,
        live: &[NodeId],
    ) -> Result<Vec<Vec<NodeId>>, AssignError> {
        if replication_factor == 0 {
            return Err(AssignError::ZeroReplicationFactor);
        }
        if replication_factor as usize > live.len() {
            return Err(AssignError::NotEnoughNodes { replication_factor, live: live.to_vec() });
        }
        let counts = self.preferred_leaders();
        let mut order: Vec<NodeId> = live.to_vec();
        order.sort_by_key(|id| (counts.get(id).copied().unwrap_or(0), *id));
        let n = order.len();
        Ok((0..partitions as usize)
            .map(|p| (0..replication_factor as usize).map(|r| order[(p + r) % n]).collect())
            .collect())
    }
}

/// Why replicas cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("the replication factor must be at least 1")]
    ZeroReplicationFactor,
    #[error(
        "replication factor {replication_factor} is larger than the number of live nodes ({}: {live:?})",
        live.len()
    )]
    NotEnoughNodes { replication_factor: u32, live: Vec<NodeId> },
}

/// The batch a command is proposed as.
pub fn encode_command(command: &Command) -> Result<Bytes, serde_json::Error> {
    let record = Record { value: Bytes::from(serde_json::to_vec(command)?), ..Record::default() };
    Ok(strata_record::encode(&[record], Compression::None))
}

/// Why a controller batch cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid controller batch: {0}")]
    Format(#[from] FormatError),
    #[error("malformed controller command: {0}")]
    Json(#[from] serde_json::Error),
}

/// The commands a controller batch holds.
pub fn decode_commands(batch: &Bytes) -> Result<Vec<Command>, CommandError> {
    let mut out = Vec::new();
    for record in strata_record::decode(batch)? {
        out.push(serde_json::from_slice(&record.value)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, incarnation: &str) -> Command {
        Command::RegisterNode(NodeRecord {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            incarnation: incarnation.into(),
        })
    }

    fn three_nodes() -> Metadata {
        let mut m = Metadata::default();
        for id in 1..=3 {
            m.apply(&node(id, &format!("inc-{id}"))).expect("register");
        }
        m
    }

    #[test]
    fn commands_survive_the_trip_through_a_batch() {
        let cmd = Command::CreateTopic {
            name: "t".into(),
            replicas: vec![vec![1, 2, 3]],
            overrides: TopicOverrides { retention_ms: Some(5), ..TopicOverrides::default() },
        };
        let batch = encode_command(&cmd).expect("encode");
        assert_eq!(decode_commands(&batch).expect("decode"), vec![cmd]);
    }

    #[test]
    fn a_node_id_is_never_reused_with_another_data_directory() {
        let mut m = three_nodes();
        m.apply(&node(2, "inc-2")).expect("the same node registering again is fine");
        let before = m.clone();
        assert_eq!(m.apply(&node(2, "other")), Err(Rejected::NodeIdReused { id: 2 }));
        assert_eq!(m, before, "a rejected command changes nothing");
    }

    #[test]
    fn topics_get_fresh_ids_and_names_stay_unique() {
        let mut m = three_nodes();
        let create = |name: &str| Command::CreateTopic {
            name: name.into(),
            replicas: vec![vec![1, 2, 3]],
            overrides: TopicOverrides::default(),
        };
        m.apply(&create("a")).expect("create");
        assert_eq!(m.apply(&create("a")), Err(Rejected::TopicExists("a".into())));
        m.apply(&Command::DeleteTopic { name: "a".into() }).expect("delete");
        m.apply(&create("a")).expect("create again");
        assert_eq!(m.topics["a"].id, 2, "a deleted topic's id is not reused");
        let bad =
            Command::CreateTopic { name: "b".into(), replicas: vec![vec![1, 9]], overrides: TopicOverrides::default() };
        assert!(matches!(m.apply(&bad), Err(Rejected::UnknownNode { node: 9, .. })));
    }

    #[test]
    fn partitions_are_added_only_to_the_count_they_were_planned_for() {
        let mut m = three_nodes();
        let create =
            Command::CreateTopic { name: "t".into(), replicas: vec![vec![1, 2]], overrides: TopicOverrides::default() };
        m.apply(&create).expect("create");
        let add = |from: u32, replicas: Vec<Vec<NodeId>>| Command::AddPartitions { name: "t".into(), from, replicas };
        m.apply(&add(1, vec![vec![2, 3], vec![3, 1]])).expect("add");
        assert_eq!(m.topics["t"].replicas, vec![vec![1, 2], vec![2, 3], vec![3, 1]]);
        let before = m.clone();
        // Planned for 1 partition, but the topic has 3 now: a concurrent add won.
        assert!(matches!(m.apply(&add(1, vec![vec![1, 2]])), Err(Rejected::PartitionCountChanged { current: 3, .. })));
        assert!(matches!(m.apply(&add(3, vec![vec![1, 9]])), Err(Rejected::UnknownNode { partition: 3, node: 9, .. })));
        assert!(matches!(
            m.apply(&Command::AddPartitions { name: "x".into(), from: 0, replicas: vec![] }),
            Err(Rejected::UnknownTopic(_))
        ));
        assert_eq!(m, before, "rejected commands change nothing");
    }

    #[test]
    fn replicas_and_leaders_spread_evenly() {
        let m = three_nodes();
        let placed = m.assign(8, 3, &[1, 2, 3]).expect("assign");
        let mut leaders = BTreeMap::new();
        for set in &placed {
            let mut distinct = set.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "replicas on distinct nodes: {set:?}");
            *leaders.entry(set[0]).or_insert(0) += 1;
        }
        assert!(leaders.values().all(|n| (2..=3).contains(n)), "leaders spread: {leaders:?}");

        // The next topic starts on the nodes that lead the fewest.
        let mut m = m;
        m.apply(&Command::CreateTopic { name: "t".into(), replicas: placed, overrides: TopicOverrides::default() })
            .expect("create");
        let next = m.assign(1, 1, &[1, 2, 3]).expect("assign");
        assert_eq!(next, vec![vec![3]], "node 3 led 2 of 8, the others 3");

        assert_eq!(m.assign(1, 0, &[1, 2, 3]), Err(AssignError::ZeroReplicationFactor));
        let err = m.assign(1, 4, &[1, 2, 3]).expect_err("too few nodes");
        assert_eq!(err.to_string(), "replication factor 4 is larger than the number of live nodes (3: [1, 2, 3])");
    }
}
