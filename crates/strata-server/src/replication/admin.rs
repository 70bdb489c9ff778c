//! Controller commands: topics (create, add partitions, alter, delete),
//! security records, and the retention pass over this node's replicas.

use super::*;

impl Replication {
    /// Proposes a command to the controller (at its leader, wherever it is)
    /// and returns once it is applied on this node. The command is checked
    /// first as the controller's leader checks it; one that the controller
    /// applied as a no-op (it lost a race) is answered with the reason.
    pub(super) async fn propose_controller(&self, command: &Command) -> Result<Arc<Metadata>, Status> {
        let batch = encode_command(command).map_err(|e| Status::internal(e.to_string()))?;
        strata_raft::controller::check_batch(&batch, &self.cluster.members())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        check_topic_limits(&self.logs, command).map_err(Status::invalid_argument)?;
        let written = self.peers.propose(&self.controller, GroupId::CONTROLLER, batch).await.map_err(|s| {
            if s.code() == tonic::Code::InvalidArgument {
                Status::invalid_argument(format!("the controller refused the change: {}", s.message()))
            } else {
                controller_unavailable(format!("the controller cannot take the change: {}", s.message()))
            }
        })?;
        let applied = self
            .controller
            .wait(Some(CONTROLLER_TIMEOUT))
            .applied_index_at_least(Some(written.log_id.index), "controller change applied")
            .await;
        applied.map_err(|e| controller_unavailable(format!("the controller change was not applied here: {e}")))?;
        if let Some(reason) = written.rejected {
            // The typed answer (exists, unknown, changed meanwhile) when the
            // metadata now says why; otherwise the controller's reason.
            self.check_command(command)?;
            return Err(Status::failed_precondition(format!("the controller did not apply the change: {reason}")));
        }
        Ok(Arc::clone(&self.metadata.borrow()))
    }

    /// Nodes that answer now (this one always does).
    async fn live_nodes(&self) -> Vec<NodeId> {
        let checks = self.cluster.members().into_iter().map(|id| async move {
            let live = id == self.node_id() || self.peers.identify(id, LIVENESS_TIMEOUT).await.is_ok();
            live.then_some(id)
        });
        futures::future::join_all(checks).await.into_iter().flatten().collect()
    }

    /// Creates a topic across the cluster: places its replicas on live
    /// nodes, has the controller record it, and waits until this node holds
    /// it (and its local replicas have a leader).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        overrides: TopicOverrides,
    ) -> Result<(), Status> {
        self.logs.validate_new_topic(name, partitions, &overrides).map_err(from_storage)?;
        let members = self.cluster.peers.len() as u32;
        let rf = replication_factor.unwrap_or(DEFAULT_REPLICATION_FACTOR.min(members));
        // Live: answering now and registered with the controller. Right
        // after the cluster starts, nodes are still registering: give them
        // a moment when there are enough members.
        if rf as usize > self.cluster.peers.len() {
            return Err(status(
                tonic::Code::InvalidArgument,
                pb::ErrorReason::InvalidReplicationFactor,
                format!("replication factor {rf} is larger than the number of nodes in the cluster ({members})"),
            ));
        }
        if rf > 0 {
            let mut rx = self.metadata.clone();
            let _ = tokio::time::timeout(REGISTRATION_WAIT, rx.wait_for(|m| m.nodes.len() >= rf as usize)).await;
        }
        let registered = self.metadata.borrow().nodes.keys().copied().collect::<Vec<_>>();
        let live: Vec<_> = self.live_nodes().await.into_iter().filter(|id| registered.contains(id)).collect();
        let replicas = self.metadata.borrow().assign(partitions, rf, &live).map_err(|e| {
            status(tonic::Code::InvalidArgument, pb::ErrorReason::InvalidReplicationFactor, e.to_string())
        })?;
        let command = Command::CreateTopic { name: name.to_owned(), replicas: replicas.clone(), overrides };
        self.check_command(&command)?;
        let metadata = self.propose_controller(&command).await?;
        match metadata.topics.get(name) {
            Some(t) if t.replicas == replicas => {}
            _ => return Err(from_storage(StorageError::TopicExists(name.to_owned()))),
        }
        self.reconcile_for(name).await?;
        let topic_id = metadata.topics[name].id;
        self.wait_leaders(topic_id, 0..partitions).await;
        info!(topic = name, partitions, replication_factor = rf, "topic created");
        Ok(())
    }

    /// Waits (up to a timeout each) until this node's replicas of
    /// `partitions` have a leader and applied their first entry: they take
    /// records once this returns.
    async fn wait_leaders(&self, topic_id: u64, partitions: std::ops::Range<u32>) {
        for p in partitions {
            if let Some(raft) = self.groups.get(GroupId { topic_id, partition: p }) {
                let ready = |m: &openraft::RaftMetrics<TypeConfig>| {
                    m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.last_log_index
                };
                let _ = raft.wait(Some(LEADER_TIMEOUT)).metrics(ready, "a leader").await;
            }
        }
    }

    /// Grows a topic to `count` partitions across the cluster: the new
    /// partitions' replicas are placed on live nodes (as many as the
    /// topic's first partition has), recorded by the controller, and
    /// started. Consumer groups reading the topic are rebalanced onto them.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<(), Status> {
        let (current, rf) = {
            let metadata = self.metadata.borrow();
            let topic =
                metadata.topics.get(name).ok_or_else(|| from_storage(StorageError::UnknownTopic(name.to_owned())))?;
            (topic.replicas.len() as u32, topic.replicas.first().map_or(1, Vec::len) as u32)
        };
        if count <= current {
            return Err(from_storage(StorageError::PartitionCountNotIncreasing {
                topic: name.to_owned(),
                current,
                requested: count,
            }));
        }
        if count > strata_storage::MAX_PARTITIONS {
            return Err(from_storage(StorageError::InvalidPartitionCount {
                count,
                max: strata_storage::MAX_PARTITIONS,
            }));
        }
        let registered = self.metadata.borrow().nodes.keys().copied().collect::<Vec<_>>();
        let live: Vec<_> = self.live_nodes().await.into_iter().filter(|id| registered.contains(id)).collect();
        let replicas = self.metadata.borrow().assign(count - current, rf, &live).map_err(|e| {
            status(
                tonic::Code::Unavailable,
                pb::ErrorReason::InvalidReplicationFactor,
                format!("cannot place the new partitions' {rf} replicas: {e}"),
            )
        })?;
        let command = Command::AddPartitions { name: name.to_owned(), from: current, replicas: replicas.clone() };
        self.check_command(&command)?;
        let metadata = self.propose_controller(&command).await?;
        let topic =
            metadata.topics.get(name).ok_or_else(|| from_storage(StorageError::UnknownTopic(name.to_owned())))?;
        if topic.replicas.get(current as usize..) != Some(&replicas[..]) {
            return Err(Status::aborted(format!(
                "topic '{name}' changed while its partitions were being added (it has {} now); check, then retry",
                topic.replicas.len()
            )));
        }
        let topic_id = topic.id;
        self.reconcile_for(name).await?;
        self.wait_leaders(topic_id, current..count).await;
        info!(topic = name, from = current, to = count, "partitions added");
        Ok(())
    }

    /// Whether the current metadata takes `command` (it is checked again
    /// when applied: a concurrent change may still win).
    fn check_command(&self, command: &Command) -> Result<(), Status> {
        let mut metadata = Metadata::clone(&self.metadata.borrow());
        metadata.apply(command).map_err(|rejected| match rejected {
            Rejected::TopicExists(name) => from_storage(StorageError::TopicExists(name)),
            Rejected::UnknownTopic(name) => from_storage(StorageError::UnknownTopic(name)),
            changed @ Rejected::PartitionCountChanged { .. } => {
                Status::aborted(format!("{changed}; check, then retry"))
            }
            Rejected::Invalid(e) => Status::invalid_argument(e.to_string()),
            refused @ (Rejected::AlreadyBootstrapped(_) | Rejected::NodeIdReused { .. }) => {
                Status::failed_precondition(refused.to_string())
            }
            Rejected::Security(e) => {
                status(tonic::Code::FailedPrecondition, pb::ErrorReason::SecurityConflict, e.to_string())
            }
            other => controller_unavailable(other.to_string()),
        })
    }

    /// Applies a change of users, tokens or ACLs across the cluster and
    /// returns the metadata with it.
    pub async fn propose_security(
        &self,
        command: strata_raft::security::SecurityCommand,
    ) -> Result<Arc<Metadata>, Status> {
        let command = Command::Security(command);
        self.check_command(&command)?;
        self.propose_controller(&command).await
    }

    /// The controller's metadata as this node applied it, and its changes.
    pub fn metadata_watch(&self) -> watch::Receiver<Arc<Metadata>> {
        self.metadata.clone()
    }

    /// Deletes a topic across the cluster.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Status> {
        let command = Command::DeleteTopic { name: name.to_owned() };
        self.check_command(&command)?;
        self.propose_controller(&command).await?;
        self.reconcile_for(name).await
    }

    /// Changes a topic's configuration across the cluster.
    pub async fn alter_topic(&self, name: &str, changes: TopicOverrides) -> Result<(), Status> {
        let current = self.logs.topic_overrides(name).map_err(from_storage)?;
        self.logs.validate_new_topic(name, 1, &current.merge(&changes)).map_err(from_storage)?;
        let command = Command::AlterTopic { name: name.to_owned(), overrides: changes };
        self.check_command(&command)?;
        self.propose_controller(&command).await?;
        self.reconcile_for(name).await
    }

    /// One retention pass over every replica this node holds; returns the
    /// segments deleted.
    pub async fn apply_retention(&self, now_ms: i64) -> usize {
        let metadata = Arc::clone(&self.metadata.borrow());
        let mut deleted = 0;
        for topic in metadata.topics.values() {
            for partition in 0..topic.replicas.len() as u32 {
                let Some(raft) = self.groups.get(GroupId { topic_id: topic.id, partition }) else { continue };
                let Ok(log) = self.logs.partition(&topic.name, partition) else { continue };
                match strata_raft::retention::apply(&raft, &log, now_ms).await {
                    Ok(n) => deleted += n,
                    Err(e) => warn!(topic = %topic.name, partition, error = %e, "retention pass failed"),
                }
            }
        }
        deleted
    }
}

/// This node's limits on a controller command's topic (name, partition
/// count, settings and their floors), as the public API checks them: what a
/// forwarded command must pass too.
pub(super) fn check_topic_limits(logs: &LogManager, command: &Command) -> Result<(), String> {
    let checked = match command {
        Command::CreateTopic { name, replicas, overrides } => {
            logs.validate_new_topic(name, replicas.len() as u32, overrides)
        }
        Command::AlterTopic { name, overrides } => match logs.topic_overrides(name) {
            Ok(current) => logs.validate_new_topic(name, 1, &current.merge(overrides)),
            // Not known here yet: its settings alone.
            Err(_) => logs.validate_new_topic(name, 1, overrides),
        },
        _ => Ok(()),
    };
    checked.map_err(|e| e.client_message())
}
