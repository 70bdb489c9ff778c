//! Group calls: committed offsets of consumer groups, resets, listing and
//! describing groups, and share-group (queue) fetches and acknowledgements.
//!
//! Any node answers these: a node forwards a request for a group it does not
//! coordinate to the coordinator. While a coordinator moves (a failover of
//! its partition of the groups topic), calls answer `NOT_COORDINATOR`, or
//! find its node gone; they are retried here, backing off (jittered), until
//! the client's timeout.

use std::future::Future;
use std::time::Duration;

use strata_proto::v1 as pb;
use tokio::time::Instant;

use crate::retry::Backoff;
use crate::{Client, ClientError, GRPC_MESSAGE_LIMIT, Result};

/// The internal topic holding every group's state, and its partition count
/// (a group lives in the partition its name hashes to).
const GROUPS_TOPIC: &str = "__strata_groups";
const GROUPS_PARTITIONS: u32 = 8;

/// Back-off between attempts at a group call that finds no coordinator.
const COORDINATOR_BACKOFF_FIRST: Duration = Duration::from_millis(20);
const COORDINATOR_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Where a reset moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    /// The first record at or after this time (ms since the epoch); the log
    /// end when none is.
    Timestamp(i64),
    /// The committed offset moved by this many records (clamped to the log).
    Shift(i64),
}

impl ResetTo {
    fn to_proto(self) -> pb::reset_offsets_request::To {
        use pb::reset_offsets_request::To;
        match self {
            Self::Earliest => To::Earliest(true),
            Self::Latest => To::Latest(true),
            Self::Offset(o) => To::Offset(o),
            Self::Timestamp(t) => To::TimestampMs(t),
            Self::Shift(n) => To::Shift(n),
        }
    }
}

/// A record as the share-group API carries it, as [`crate::Record`].
pub fn record_from_proto(r: pb::Record) -> crate::Record {
    crate::Record {
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(|h| crate::Header { key: h.key, value: h.value }).collect(),
    }
}

fn shard_of(group: &str) -> u32 {
    strata_record::partition_for_key(group.as_bytes(), GROUPS_PARTITIONS)
}

/// The call found no coordinator, or lost it on the way (a connection that
/// broke mid-call answers `UNKNOWN` "transport error"): nothing was done, or
/// what was done is safe to do again.
pub(crate) fn no_coordinator(err: &ClientError) -> bool {
    err.reason() == Some("NOT_COORDINATOR") || err.is_not_leader() || err.is_retriable()
}

impl Client {
    pub(crate) fn groups_rpc(&self) -> pb::groups_client::GroupsClient<crate::Rpc> {
        pb::groups_client::GroupsClient::new(self.rpc_channel())
            .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(GRPC_MESSAGE_LIMIT)
    }

    /// The node that coordinates `group`, as far as it is known (before the
    /// groups topic exists, this node: any node creates it).
    pub(crate) async fn coordinator_node(&self, group: &str) -> Client {
        self.partition_leader(GROUPS_TOPIC, shard_of(group)).await.unwrap_or_else(|_| self.clone())
    }

    /// Forgets where `group`'s coordinator is (it did not answer as one).
    pub(crate) fn forget_coordinator(&self, group: &str) {
        if let Ok(mut leaders) = self.router.leaders.lock() {
            leaders.remove(&(GROUPS_TOPIC.to_owned(), shard_of(group)));
        }
    }

    /// Runs `call` at the coordinator of `group` (the leader of its
    /// partition of the groups topic, as far as it is known; any node
    /// forwards a group request it cannot answer). Retried, backing off, while
    /// no coordinator answers: `NOT_COORDINATOR`, a node that cannot be
    /// reached, lost mid-call, restarting or not answering in time, until the
    /// client's timeout ([`ClientError::Unreachable`] then). Every group call
    /// is safe to repeat (a repeated commit or reset writes the same offsets
    /// again; a repeated acknowledgement is answered as not held).
    async fn with_coordinator<T, F, Fut>(&self, group: &str, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.retry_coordinator(group, no_coordinator, || async { call(self.coordinator_node(group).await).await }).await
    }

    /// Runs `attempt` until it succeeds, fails in a way `again` does not
    /// allow, or the client's timeout has passed; forgets the coordinator
    /// and backs off between attempts.
    async fn retry_coordinator<T, F, Fut>(&self, group: &str, again: fn(&ClientError) -> bool, attempt: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut backoff = Backoff::new(COORDINATOR_BACKOFF_FIRST, COORDINATOR_BACKOFF_MAX);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let err = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !again(&err) {
                return Err(err);
            }
            self.forget_coordinator(group);
            if !backoff.wait(deadline).await {
                return Err(ClientError::Unreachable {
                    what: format!("the coordinator of group {group}"),
                    waited: started.elapsed(),
                    attempts,
                    last: Box::new(err),
                });
            }
        }
    }

    /// Commits offsets (the next offset to read, per partition) for
    /// `group`. A member passes its id and epoch (a removed member is
    /// refused with `FENCED_MEMBER`); a tool passes an empty id and epoch 0,
    /// which the coordinator accepts only while the group has no members.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: u64,
        offsets: &[(String, u32, u64)],
    ) -> Result<()> {
        let req = pb::CommitOffsetsRequest {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            member_epoch,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| pb::OffsetCommit {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        self.with_coordinator(group, |node| {
            let req = node.request(req.clone());
            async move { Ok(node.groups_rpc().commit_offsets(req).await?) }
        })
        .await?;
        Ok(())
    }

    /// A group's committed offsets (every partition it committed for when
    /// `partitions` is empty).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: &[pb::TopicPartitions],
    ) -> Result<Vec<pb::CommittedOffset>> {
        let req = pb::FetchOffsetsRequest { group: group.to_owned(), partitions: partitions.to_vec() };
        let resp = self
            .with_coordinator(group, |node| {
                let req = node.request(req.clone());
                async move { Ok(node.groups_rpc().fetch_offsets(req).await?) }
            })
            .await?;
        Ok(resp.into_inner().offsets)
    }

    /// Moves a group's committed offsets for `topic` (all partitions when
    /// `partitions` is empty). Refused while the group has members unless
    /// `force`; `dry_run` answers the offsets without committing them.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
        to: ResetTo,
        force: bool,
        dry_run: bool,
    ) -> Result<Vec<pb::CommittedOffset>> {
        let req = pb::ResetOffsetsRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions: partitions.to_vec(),
            to: Some(to.to_proto()),
            force,
            dry_run,
        };
        let resp = self
            .with_coordinator(group, |node| {
                let req = node.request(req.clone());
                async move { Ok(node.groups_rpc().reset_offsets(req).await?) }
            })
            .await?;
        Ok(resp.into_inner().offsets)
    }

    /// Every group of the cluster.
    pub async fn list_groups(&self) -> Result<Vec<pb::GroupSummary>> {
        let resp = self.groups_rpc().list_groups(self.request(pb::ListGroupsRequest {})).await?;
        Ok(resp.into_inner().groups)
    }

    /// A group's members, their partitions, and per partition the committed
    /// offset, log end offset and lag.
    pub async fn describe_group(&self, group: &str) -> Result<pb::DescribeGroupResponse> {
        let req = pb::DescribeGroupRequest { group: group.to_owned() };
        let resp = self
            .with_coordinator(group, |node| {
                let req = node.request(req.clone());
                async move { Ok(node.groups_rpc().describe_group(req).await?) }
            })
            .await?;
        Ok(resp.into_inner())
    }

    /// Acknowledges `req.acks`, then acquires up to `req.max_records`
    /// records of a share group (waiting up to `req.max_wait_ms` for one).
    /// Retried while no coordinator answers, as the other group calls, the
    /// connection lost mid-call included: records the lost call may have
    /// acquired come back once their lock times out (they are delivered
    /// again, as after any consumer failure), and its acknowledgements, if
    /// they were recorded, are answered as not held the second time.
    pub async fn share_fetch(&self, req: pb::ShareFetchRequest) -> Result<pb::ShareFetchResponse> {
        let wait = Duration::from_millis(u64::from(req.max_wait_ms));
        self.retry_coordinator(&req.group, no_coordinator, || async {
            let node = self.coordinator_node(&req.group).await;
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(self.timeout + wait);
            Ok(node.groups_rpc().share_fetch(request).await?.into_inner())
        })
        .await
    }

    /// Acknowledges records acquired from a share group; answers those that
    /// could not be (e.g. their lock had expired).
    pub async fn share_ack(
        &self,
        group: &str,
        topic: &str,
        consumer_id: &str,
        acks: &[pb::Acknowledgement],
    ) -> Result<Vec<pb::AckFailure>> {
        let req = pb::ShareAckRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            consumer_id: consumer_id.to_owned(),
            acks: acks.to_vec(),
        };
        let resp = self
            .with_coordinator(group, |node| {
                let req = node.request(req.clone());
                async move { Ok(node.groups_rpc().share_ack(req).await?) }
            })
            .await?;
        Ok(resp.into_inner().failed)
    }
}
