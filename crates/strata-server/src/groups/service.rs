//! The `strata.v1.Groups` gRPC service. Any node answers: a request for a
//! group another node coordinates is forwarded there (at most twice: a node
//! without a replica of the group's partition forwards to a replica, which
//! knows the leader), so thin clients need no routing of their own.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use strata_proto::v1 as pb;
use strata_proto::v1::groups_client::GroupsClient;
use strata_proto::v1::groups_server::GroupsServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::{Coordinator, Route, SessionHandle, limits, not_coordinator};
use crate::auth::{Auth, Resource, identity_of};
use crate::service::{shutting_down, until_shutdown};
use crate::status::invalid;
use strata_raft::security::Operation;

/// Metadata header counting how often a request was forwarded.
pub const FORWARDED_HEADER: &str = "x-strata-forwarded";
const MAX_HOPS: u32 = 2;
/// Deadline of a forwarded unary request (a share fetch may long-poll 30 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(45);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct GroupService {
    coordinator: Arc<Coordinator>,
    auth: Arc<Auth>,
    shutdown: watch::Receiver<bool>,
}

fn hops<T>(req: &Request<T>) -> u32 {
    req.metadata().get(FORWARDED_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn forwarded<T>(message: T, hops: u32) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(FORWARDED_HEADER, (hops + 1).into());
    req.set_timeout(FORWARD_TIMEOUT);
    req
}

impl GroupService {
    pub fn new(coordinator: Arc<Coordinator>, auth: Arc<Auth>, shutdown: watch::Receiver<bool>) -> Self {
        Self { coordinator, auth, shutdown }
    }

    /// Kafka's checks for a group's offsets: `operation` on the group, then
    /// on each topic.
    fn authorize_offsets<'a, T>(
        &self,
        request: &Request<T>,
        operation: Operation,
        group: &str,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Status> {
        let identity = identity_of(request);
        self.auth.authorize_identity(&identity, operation, Resource::Group(group))?;
        for topic in topics {
            self.auth.authorize_identity(&identity, operation, Resource::Topic(topic))?;
        }
        Ok(())
    }

    pub fn into_server(self) -> GroupsServer<Self> {
        GroupsServer::new(self)
            .max_decoding_message_size(crate::GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(crate::GRPC_MESSAGE_LIMIT)
    }

    /// The coordinator (or a replica) `node`, over the cluster listener:
    /// nodes prove who they are there, so a forwarded request is a node's.
    fn remote(&self, node: strata_raft::NodeId) -> Result<GroupsClient<Channel>, Status> {
        let channel = self
            .coordinator
            .replication()
            .peer_channel(node)
            .ok_or_else(|| Status::unavailable(format!("node {node} is not a configured member")))?;
        Ok(GroupsClient::new(channel)
            .max_decoding_message_size(crate::GRPC_MESSAGE_LIMIT)
            .max_encoding_message_size(crate::GRPC_MESSAGE_LIMIT))
    }

    /// `None`: this node coordinates `group`; else the node to forward to.
    async fn forward_to(&self, group: &str, hops: u32) -> Result<Option<GroupsClient<Channel>>, Status> {
        match self.coordinator.route(group).await? {
            Route::Local => Ok(None),
            Route::Remote(_) if hops >= MAX_HOPS => Err(not_coordinator(group, "it was forwarded here already")),
            Route::Remote(node) => self.remote(node).map(Some),
        }
    }
}

#[tonic::async_trait]
impl pb::groups_server::Groups for GroupService {
    type SessionStream = BoxStream<pb::GroupSessionResponse>;

    async fn session(
        &self,
        request: Request<Streaming<pb::GroupSessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let hops = hops(&request);
        let identity = identity_of(&request);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| invalid("the session ended before its GroupJoin"))?;
        let Some(pb::group_session_request::Kind::Join(join)) = first.kind.clone() else {
            return Err(invalid("the first message of a session must be a GroupJoin"));
        };
        limits::check_join(&join)?;
        self.auth.authorize_identity(&identity, Operation::Read, Resource::Group(&join.group))?;
        // The assignment tells partition counts: DESCRIBE on each topic.
        for topic in &join.topics {
            self.auth.authorize_identity(&identity, Operation::Describe, Resource::Topic(topic))?;
        }
        if let Some(mut remote) = self.forward_to(&join.group, hops).await? {
            let rest = inbound
                .take_while(|m| futures::future::ready(m.is_ok()))
                .filter_map(|m| futures::future::ready(m.ok()));
            let outbound = futures::stream::once(async move { first }).chain(rest);
            let mut req = Request::new(outbound);
            req.metadata_mut().insert(FORWARDED_HEADER, (hops + 1).into());
            let answers = remote.session(req).await?.into_inner();
            return Ok(Response::new(Box::pin(answers)));
        }
        // The join and the session run in one task: a join that completes
        // after the member went away is left again at once (the session
        // sees its stream closed), not kept until its session timeout.
        let (tx, rx) = mpsc::channel(16);
        let (coordinator, shutdown) = (Arc::clone(&self.coordinator), self.shutdown.clone());
        tokio::spawn(async move {
            match coordinator.join(join).await {
                Ok(handle) => session_loop(coordinator, handle, inbound, tx, shutdown).await,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let hops = hops(&request);
        let topics = request.get_ref().offsets.iter().map(|o| o.topic.as_str());
        self.authorize_offsets(&request, Operation::Read, &request.get_ref().group, topics)?;
        let req = request.into_inner();
        limits::check_commit(&req)?;
        if let Some(mut remote) = self.forward_to(&req.group, hops).await? {
            return remote.commit_offsets(forwarded(req, hops)).await;
        }
        detached(&self.coordinator, move |c| async move { c.commit(req).await }).await?;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let hops = hops(&request);
        let identity = identity_of(&request);
        let topics = request.get_ref().partitions.iter().map(|p| p.topic.as_str());
        self.authorize_offsets(&request, Operation::Describe, &request.get_ref().group, topics)?;
        let req = request.into_inner();
        let mut answer = match self.forward_to(&req.group, hops).await? {
            Some(mut remote) => remote.fetch_offsets(forwarded(req, hops)).await?.into_inner(),
            None => pb::FetchOffsetsResponse { offsets: self.coordinator.fetch_offsets(&req).await? },
        };
        // All of the group's offsets asked for: those of topics the caller
        // may describe.
        answer.offsets.retain(|o| self.auth.may(&identity, Operation::Describe, Resource::Topic(&o.topic)));
        Ok(Response::new(answer))
    }

    async fn reset_offsets(
        &self,
        request: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let hops = hops(&request);
        let topic = request.get_ref().topic.as_str();
        self.authorize_offsets(&request, Operation::Read, &request.get_ref().group, [topic])?;
        let req = request.into_inner();
        if let Some(mut remote) = self.forward_to(&req.group, hops).await? {
            return remote.reset_offsets(forwarded(req, hops)).await;
        }
        let offsets = detached(&self.coordinator, move |c| async move { c.reset(req).await }).await?;
        Ok(Response::new(pb::ResetOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let identity = identity_of(&request);
        let mut all: BTreeMap<String, pb::GroupSummary> = BTreeMap::new();
        for g in self.coordinator.list_local().await {
            all.insert(g.group.clone(), g);
        }
        // Asked by a user: every node lists the groups it coordinates.
        if hops(&request) == 0 {
            let me = self.coordinator.replication.node_id();
            for (id, _) in self.coordinator.replication.brokers() {
                if id == me {
                    continue;
                }
                let mut remote = self.remote(id)?;
                let mut req = forwarded(pb::ListGroupsRequest {}, MAX_HOPS);
                req.set_timeout(Duration::from_secs(5));
                match remote.list_groups(req).await {
                    Ok(resp) => {
                        for g in resp.into_inner().groups {
                            all.insert(g.group.clone(), g);
                        }
                    }
                    Err(e) => tracing::warn!(node = id, error = %e.message(), "a node did not list its groups"),
                }
            }
        }
        // Only the groups the caller may describe.
        all.retain(|name, _| self.auth.may(&identity, Operation::Describe, Resource::Group(name)));
        Ok(Response::new(pb::ListGroupsResponse { groups: all.into_values().collect() }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let hops = hops(&request);
        self.auth.authorize(&request, Operation::Describe, Resource::Group(&request.get_ref().group))?;
        let req = request.into_inner();
        if let Some(mut remote) = self.forward_to(&req.group, hops).await? {
            return remote.describe_group(forwarded(req, hops)).await;
        }
        Ok(Response::new(self.coordinator.describe(&req.group).await?))
    }

    async fn share_fetch(
        &self,
        request: Request<pb::ShareFetchRequest>,
    ) -> Result<Response<pb::ShareFetchResponse>, Status> {
        let hops = hops(&request);
        let topic = request.get_ref().topic.as_str();
        self.authorize_offsets(&request, Operation::Read, &request.get_ref().group, [topic])?;
        // Dead letters are written (and the topic made) by the node: the
        // caller must be allowed to do both itself.
        let dead_letters = request.get_ref().dead_letter_topic.as_str();
        if !dead_letters.is_empty() {
            let identity = identity_of(&request);
            self.auth.authorize_identity(&identity, Operation::Write, Resource::Topic(dead_letters))?;
            if !self.auth.may(&identity, Operation::Create, Resource::Cluster) {
                self.auth.authorize_identity(&identity, Operation::Create, Resource::Topic(dead_letters))?;
            }
        }
        let req = request.into_inner();
        limits::check_consumer_id(&req.consumer_id)?;
        if let Some(mut remote) = self.forward_to(&req.group, hops).await? {
            return remote.share_fetch(forwarded(req, hops)).await;
        }
        let shutdown = self.shutdown.clone();
        tokio::select! {
            r = self.coordinator.share_fetch(req) => Ok(Response::new(r?)),
            () = until_shutdown(shutdown) => Err(shutting_down()),
        }
    }

    async fn share_ack(&self, request: Request<pb::ShareAckRequest>) -> Result<Response<pb::ShareAckResponse>, Status> {
        let hops = hops(&request);
        let topic = request.get_ref().topic.as_str();
        self.authorize_offsets(&request, Operation::Read, &request.get_ref().group, [topic])?;
        let req = request.into_inner();
        limits::check_consumer_id(&req.consumer_id)?;
        if let Some(mut remote) = self.forward_to(&req.group, hops).await? {
            return remote.share_ack(forwarded(req, hops)).await;
        }
        let failed = detached(&self.coordinator, move |c| async move {
            c.share_ack(&req.group, &req.topic, &req.consumer_id, &req.acks).await
        })
        .await?;
        Ok(Response::new(pb::ShareAckResponse { failed }))
    }
}

/// Runs a coordinator operation that writes to its end even when the caller
/// goes away (a client's deadline, a dropped connection): a group write
/// cancelled between its proposal and its commit would leave the shard to be
/// reloaded, which ends every session of the shard's groups.
pub(super) async fn detached<T, F, Fut>(coordinator: &Arc<Coordinator>, op: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(Arc<Coordinator>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
{
    tokio::spawn(op(Arc::clone(coordinator)))
        .await
        .map_err(|e| Status::internal(format!("a group operation did not finish: {e}")))?
}

/// A member's session at its coordinator: heartbeats in, assignments out;
/// the stream ending removes the member.
async fn session_loop(
    coordinator: Arc<Coordinator>,
    mut handle: SessionHandle,
    mut inbound: Streaming<pb::GroupSessionRequest>,
    tx: mpsc::Sender<Result<pb::GroupSessionResponse, Status>>,
    shutdown: watch::Receiver<bool>,
) {
    use pb::group_session_request::Kind;
    let first = handle.rx.borrow_and_update().clone();
    if tx.send(Ok(first)).await.is_err() {
        return coordinator.leave(&handle, "it went away").await;
    }
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(m)) => match m.kind {
                    Some(Kind::Heartbeat(h)) => {
                        if let Err(e) = coordinator.heartbeat(&handle, &h.owned).await {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        let now = handle.rx.borrow_and_update().clone();
                        if tx.send(Ok(now)).await.is_err() {
                            return coordinator.leave(&handle, "it went away").await;
                        }
                    }
                    Some(Kind::Leave(_)) => return coordinator.leave(&handle, "it asked to").await,
                    Some(Kind::Join(_)) | None => {
                        let _ = tx.send(Err(invalid("a session takes one GroupJoin, as its first message"))).await;
                        return coordinator.leave(&handle, "it sent a second join").await;
                    }
                },
                Ok(None) => return coordinator.leave(&handle, "its session stream closed").await,
                Err(_) => return coordinator.leave(&handle, "its session stream broke").await,
            },
            changed = handle.rx.changed() => {
                if changed.is_err() {
                    let _ = tx.send(Err(not_coordinator(
                        &handle.group,
                        "the session ended here: the member was removed after its session timeout, or the coordinator moved; join again with the member id",
                    ))).await;
                    return;
                }
                let now = handle.rx.borrow_and_update().clone();
                if tx.send(Ok(now)).await.is_err() {
                    return coordinator.leave(&handle, "it went away").await;
                }
            }
            () = tx.closed() => return coordinator.leave(&handle, "it went away").await,
            () = until_shutdown(shutdown.clone()) => {
                let _ = tx.send(Err(shutting_down())).await;
                return;
            }
        }
    }
}
