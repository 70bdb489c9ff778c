//! A produce's way through its partition's Raft group: the proposal, and
//! the wait for its commit (`acks=quorum`) or the leader's flush
//! (`acks=leader`).

use super::*;
use crate::replication::leadership::not_leader;

impl Replication {
    /// Proposes a validated batch to its partition's group; the proposal
    /// resolves once the batch is committed and applied.
    pub async fn propose(
        &self,
        topic_id: u64,
        partition: u32,
        batch: bytes::Bytes,
        acks: pb::Acks,
        trace: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<Pending, Status> {
        let group = GroupId { topic_id, partition };
        let Some(raft) = self.groups.get(group) else {
            let replicas = self
                .metadata
                .borrow()
                .topics
                .values()
                .find(|t| t.id == topic_id)
                .and_then(|t| t.replicas.get(partition as usize).cloned())
                .unwrap_or_default();
            return Err(self.not_leader(group, None, &format!("this node holds no replica (replicas: {replicas:?})")));
        };
        let (responder, rx) = ProgressResponder::complete_only();
        let mut request = Request::new(batch);
        request.trace = trace.map(strata_raft::trace::EntryTrace);
        let local = match acks {
            pb::Acks::Leader => {
                let (notice, local) = LocalFlush::new();
                request.on_local_flush = Some(notice);
                Some(local)
            }
            pb::Acks::Quorum | pb::Acks::Unspecified => None,
        };
        strata_raft::quiesce::renew_lease(&raft).await;
        raft.client_write_ff(request, Some(responder)).await.map_err(|e| shutting_down(&e))?;
        Ok(Pending { group, rx, local, directory: self.directory.clone() })
    }
}

fn shutting_down(e: &impl std::fmt::Display) -> Status {
    status(tonic::Code::Unavailable, pb::ErrorReason::ShuttingDown, format!("the partition's Raft group stopped: {e}"))
}

/// A proposal on its way through Raft (awaited apart from proposing, so a
/// pipelined producer proposes in order without waiting).
#[derive(Debug)]
pub struct Pending {
    group: GroupId,
    rx: tokio::sync::oneshot::Receiver<ClientWriteResult<TypeConfig>>,
    /// `acks=leader`: the leader's own flush of the entry.
    local: Option<tokio::sync::oneshot::Receiver<LocalFlushResult>>,
    directory: Directory,
}

fn reason(f: &ForwardToLeader<TypeConfig>) -> &'static str {
    match f.reason {
        openraft::error::ForwardReason::NotLeader => "not the leader",
        openraft::error::ForwardReason::LeadershipTransfer => "handing leadership over",
        openraft::error::ForwardReason::LeaseExpired => "a new leader not yet confirmed by a quorum",
    }
}

impl Pending {
    /// Where the batch landed, once committed and applied (`acks=quorum`),
    /// or once fsync'd in the leader's log (`acks=leader`; whichever of
    /// that and a refusal comes first).
    pub async fn wait(self) -> Result<AppendInfo, Status> {
        let Self { group, mut rx, local, directory } = self;
        let result = match local {
            None => rx.await,
            Some(local) => tokio::select! {
                biased;
                done = &mut rx => done,
                flushed = local => match flushed {
                    Ok(Ok(info)) => {
                        // Answered now; the commit's answer comes later and
                        // is taken (openraft warns about a dropped receiver).
                        tokio::spawn(async move {
                            let _ = rx.await;
                        });
                        return Ok(info);
                    }
                    Ok(Err(why)) => {
                        return Err(status(
                            tonic::Code::Internal,
                            pb::ErrorReason::StorageError,
                            format!("{group} could not write the batch: {why}"),
                        ));
                    }
                    // Dropped unfired: the entry never reached the log;
                    // the proposal's own answer says why.
                    Err(_) => rx.await,
                },
            },
        };
        Pending::answer(group, &directory, result.map_err(|e| shutting_down(&e))?)
    }

    fn answer(
        group: GroupId,
        directory: &Directory,
        result: ClientWriteResult<TypeConfig>,
    ) -> Result<AppendInfo, Status> {
        match result {
            Ok(resp) => Ok(AppendInfo { base_offset: resp.data.base_offset, record_count: resp.data.record_count }),
            Err(ClientWriteError::ForwardToLeader(f)) => Err(not_leader(directory, group, f.leader_id, reason(&f))),
            Err(ClientWriteError::LogEntryDiscarded(f)) => {
                let leader = not_leader(directory, group, f.leader_id, "leadership changed");
                Err(status(
                    tonic::Code::Unavailable,
                    pb::ErrorReason::OutcomeUnknown,
                    format!(
                        "{group} changed leader while the batch was in flight: it may or may not be committed; {}",
                        leader.message()
                    ),
                ))
            }
            Err(e) => Err(status(
                tonic::Code::Internal,
                pb::ErrorReason::StorageError,
                format!("{group} could not commit the batch: {e}"),
            )),
        }
    }
}
