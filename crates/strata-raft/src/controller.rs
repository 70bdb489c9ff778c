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

use crate::security::{InvalidSecurity, SecurityCommand, SecurityRejected, SecurityState};
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
    /// Users, API tokens and ACLs (absent from metadata written before
    /// they existed).
    #[serde(default)]
    pub security: SecurityState,
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
    /// Users, tokens, ACLs (see [`crate::security`]).
    Security(SecurityCommand),
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
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
    #[error(transparent)]
    Security(#[from] SecurityRejected),
}

/// What no command may say, whatever the metadata: checked before a command
/// is proposed (with the cluster's members), and again, without them, when
/// it is applied (a command that fails then changes nothing, on every
/// node). The checks made when applying only ever protect what applying
/// relies on (names that are safe as paths, bounded counts); they never
/// become stricter from one version to the next, or a log written by an
/// older version would replay differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    #[error("a cluster id is 32 hexadecimal digits, not '{0}'")]
    ClusterId(String),
    #[error("node {0} is not a member of the cluster")]
    NotMember(NodeId),
    #[error("node {id}'s address '{addr}' is not HOST:PORT of at most {MAX_ADDRESS_LEN} bytes")]
    Address { id: NodeId, addr: String },
    #[error("node {id}'s incarnation '{incarnation}' is not 32 hexadecimal digits")]
    Incarnation { id: NodeId, incarnation: String },
    #[error(
        "topic name {name:?} is not 1 to {MAX_APPLIED_TOPIC_NAME_LEN} characters of [A-Za-z0-9._-] (nor '.' or '..')"
    )]
    TopicName { name: String },
    #[error("topic '{topic}' would have {count} partitions; at most {max}")]
    PartitionCount { topic: String, count: usize, max: u32 },
    #[error("partition {partition} of '{topic}' has no replica")]
    NoReplica { topic: String, partition: usize },
    #[error("partition {partition} of '{topic}' names node {node} twice")]
    DuplicateReplica { topic: String, partition: usize, node: NodeId },
    #[error("topic '{topic}' has id {id}, which the metadata never handed out (next is {next})")]
    TopicId { topic: String, id: u64, next: u64 },
    #[error(transparent)]
    Security(#[from] InvalidSecurity),
}

/// Longest node address a command may carry.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Longest topic name a command may carry when applied (the most any
/// version has allowed; new topics are held to `strata_storage`'s limit
/// before they are proposed).
pub const MAX_APPLIED_TOPIC_NAME_LEN: usize = 249;

fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_name(name: &str) -> Result<(), InvalidCommand> {
    let safe = !name.is_empty()
        && name.len() <= MAX_APPLIED_TOPIC_NAME_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if safe { Ok(()) } else { Err(InvalidCommand::TopicName { name: name.to_owned() }) }
}

fn check_address(id: NodeId, addr: &str) -> Result<(), InvalidCommand> {
    let port = addr.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(_)))
            if !host.is_empty() && addr.len() <= MAX_ADDRESS_LEN && !addr.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(InvalidCommand::Address { id, addr: addr.to_owned() }),
    }
}

fn check_replicas(
    topic: &str,
    first: usize,
    replicas: &[Vec<NodeId>],
    members: Option<&[NodeId]>,
) -> Result<(), InvalidCommand> {
    let max = strata_storage::MAX_PARTITIONS;
    if first + replicas.len() > max as usize {
        return Err(InvalidCommand::PartitionCount { topic: topic.to_owned(), count: first + replicas.len(), max });
    }
    for (i, set) in replicas.iter().enumerate() {
        let partition = first + i;
        if set.is_empty() {
            return Err(InvalidCommand::NoReplica { topic: topic.to_owned(), partition });
        }
        for (j, node) in set.iter().enumerate() {
            if set[..j].contains(node) {
                return Err(InvalidCommand::DuplicateReplica { topic: topic.to_owned(), partition, node: *node });
            }
            if members.is_some_and(|m| !m.contains(node)) {
                return Err(InvalidCommand::NotMember(*node));
            }
        }
    }
    Ok(())
}

impl Command {
    /// The checks of [`InvalidCommand`]. With `members` (the cluster's:
    /// before proposing), also that node ids are members and that ids and
    /// addresses have their form; without (when applying), only what
    /// applying relies on.
    pub fn check(&self, members: Option<&[NodeId]>) -> Result<(), InvalidCommand> {
        match self {
            Command::Bootstrap { cluster_id } => {
                if members.is_some() && !is_hex_id(cluster_id) {
                    return Err(InvalidCommand::ClusterId(cluster_id.clone()));
                }
            }
            Command::RegisterNode(node) => {
                if let Some(members) = members {
                    if !members.contains(&node.id) {
                        return Err(InvalidCommand::NotMember(node.id));
                    }
                    check_address(node.id, &node.addr)?;
                    if !is_hex_id(&node.incarnation) {
                        return Err(InvalidCommand::Incarnation { id: node.id, incarnation: node.incarnation.clone() });
                    }
                }
            }
            Command::CreateTopic { name, replicas, .. } => {
                check_name(name)?;
                if replicas.is_empty() {
                    let max = strata_storage::MAX_PARTITIONS;
                    return Err(InvalidCommand::PartitionCount { topic: name.clone(), count: 0, max });
                }
                check_replicas(name, 0, replicas, members)?;
            }
            Command::DeleteTopic { name } | Command::AlterTopic { name, .. } => check_name(name)?,
            Command::AddPartitions { name, from, replicas } => {
                check_name(name)?;
                check_replicas(name, *from as usize, replicas, members)?;
            }
            Command::Security(command) => command.check()?,
        }
        Ok(())
    }
}

impl Metadata {
    /// Applies `command`, or leaves the metadata as it was.
    pub fn apply(&mut self, command: &Command) -> Result<(), Rejected> {
        command.check(None)?;
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
            Command::Security(command) => self.security.apply(command)?,
        }
        Ok(())
    }

    /// Whether metadata received from a peer (in a controller snapshot)
    /// holds only what applying commands could have produced, for a
    /// cluster of `members`.
    pub fn check(&self, members: &[NodeId]) -> Result<(), InvalidCommand> {
        if let Some(id) = &self.cluster_id
            && !is_hex_id(id)
        {
            return Err(InvalidCommand::ClusterId(id.clone()));
        }
        for (id, node) in &self.nodes {
            if node.id != *id {
                return Err(InvalidCommand::NotMember(node.id));
            }
            Command::RegisterNode(node.clone()).check(Some(members))?;
        }
        let registered: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut ids = std::collections::BTreeSet::new();
        for (name, topic) in &self.topics {
            check_name(name)?;
            if topic.name != *name || topic.id == 0 || topic.id >= self.next_topic_id || !ids.insert(topic.id) {
                return Err(InvalidCommand::TopicId { topic: name.clone(), id: topic.id, next: self.next_topic_id });
            }
            check_replicas(name, 0, &topic.replicas, Some(&registered))?;
        }
        self.security.check()?;
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
    #[error("a control batch is not a controller command")]
    Control,
    #[error(transparent)]
    Invalid(#[from] InvalidCommand),
}

/// A controller batch as it may be proposed: a data batch (a control batch
/// would be taken for a Raft entry of its own) whose records are commands
/// that pass their checks for a cluster of `members`.
pub fn check_batch(batch: &Bytes, members: &[NodeId]) -> Result<Vec<Command>, CommandError> {
    if strata_record::verify(batch)?.control {
        return Err(CommandError::Control);
    }
    let commands = decode_commands(batch)?;
    for c in &commands {
        c.check(Some(members))?;
    }
    Ok(commands)
}

/// Applies a committed controller batch to `metadata`: each command in
/// turn, a rejected one changing nothing. Never fails: a batch that cannot
/// be read (it could only have been proposed by a faulty or older node) is
/// applied as a no-op, identically on every node, and the reason returned
/// for its proposer.
pub fn apply_batch(metadata: &mut Metadata, batch: &Bytes) -> Option<String> {
    let commands = match decode_commands(batch) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "a controller entry is not a command; applied as a no-op");
            return Some(e.to_string());
        }
    };
    let mut rejected = None;
    for command in &commands {
        if let Err(why) = metadata.apply(command) {
            tracing::debug!(%why, ?command, "controller command changed nothing");
            rejected.get_or_insert_with(|| why.to_string());
        }
    }
    rejected
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
    fn a_batch_that_is_not_a_command_is_refused_before_and_changes_nothing_after() {
        let members = [1, 2, 3];
        let garbage = strata_record::encode(
            &[Record { value: Bytes::from_static(b"not a command"), ..Record::default() }],
            Compression::None,
        );
        assert!(matches!(check_batch(&garbage, &members), Err(CommandError::Json(_))));
        let control = strata_record::control_batch("raft.membership", b"{}", 0);
        assert!(matches!(check_batch(&control, &members), Err(CommandError::Control)));
        let stranger = encode_command(&node(9, &"a".repeat(32))).expect("encode");
        assert!(matches!(check_batch(&stranger, &members), Err(CommandError::Invalid(InvalidCommand::NotMember(9)))));
        let ok = encode_command(&node(2, &"b".repeat(32))).expect("encode");
        check_batch(&ok, &members).expect("a member registering");

        // Applied anyway (a faulty or older proposer): a no-op, with a reason.
        let mut m = three_nodes();
        let before = m.clone();
        assert!(apply_batch(&mut m, &garbage).is_some_and(|why| why.contains("malformed controller command")));
        let bad_name = Command::CreateTopic {
            name: "../../etc".into(),
            replicas: vec![vec![1]],
            overrides: TopicOverrides::default(),
        };
        let why = apply_batch(&mut m, &encode_command(&bad_name).expect("encode")).expect("refused");
        assert!(why.contains("topic name"), "{why}");
        let twice =
            Command::CreateTopic { name: "t".into(), replicas: vec![vec![1, 1]], overrides: TopicOverrides::default() };
        let why = apply_batch(&mut m, &encode_command(&twice).expect("encode")).expect("refused");
        assert!(why.contains("twice"), "{why}");
        assert_eq!(m, before, "nothing changed");
    }

    #[test]
    fn metadata_from_a_peer_holds_only_what_commands_produce() {
        let mut m = three_nodes();
        m.apply(&Command::CreateTopic {
            name: "t".into(),
            replicas: vec![vec![1, 2]],
            overrides: TopicOverrides::default(),
        })
        .expect("create");
        let ids = |m: &Metadata| -> Vec<NodeId> { m.nodes.keys().copied().collect() };
        let mut good = m.clone();
        for node in good.nodes.values_mut() {
            node.incarnation = "c".repeat(32);
        }
        good.check(&ids(&good)).expect("consistent metadata");
        let mut forged = good.clone();
        if let Some(t) = forged.topics.get_mut("t") {
            t.id = 99;
        }
        assert!(matches!(forged.check(&ids(&good)), Err(InvalidCommand::TopicId { id: 99, .. })));
        let mut stranger = good.clone();
        if let Some(t) = stranger.topics.get_mut("t") {
            t.replicas = vec![vec![1, 7]];
        }
        assert!(matches!(stranger.check(&ids(&good)), Err(InvalidCommand::NotMember(7))));
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
