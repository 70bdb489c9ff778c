//! Protobuf messages of `strata.internal.v1.Raft` to openraft's and back.
//! Decoding checks only the shape (required fields present, batches whose
//! checksum holds); what the values may be is [`super::validate`]'s job.

use openraft::raft::{AppendEntriesRequest, VoteRequest, VoteResponse};
use strata_proto::internal as pb;
use tonic::Status;

use crate::types::{LogId, TypeConfig, Vote, batch_to_entry, entry_id};

pub(super) fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, index: id.index }
}

pub(super) fn log_id_from_pb(id: pb::LogId) -> LogId {
    LogId::new_term_index(id.term, id.index)
}

pub(super) fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, voted_for: v.leader_id.voted_for, committed: v.committed }
}

pub(super) fn vote_from_pb(v: Option<pb::Vote>) -> Result<Vote, Status> {
    let v = v.ok_or_else(|| Status::invalid_argument("the message has no vote"))?;
    Ok(if v.committed { Vote::new_committed(v.term, v.voted_for) } else { Vote::new(v.term, v.voted_for) })
}

pub(super) fn vote_request_from_pb(req: pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, Status> {
    let mut rpc = VoteRequest::new(vote_from_pb(req.vote)?, req.last_log_id.map(log_id_from_pb));
    rpc.leadership_transfer = req.leadership_transfer;
    Ok(rpc)
}

pub(super) fn vote_response_to_pb(resp: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: resp.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub(super) fn append_request_from_pb(
    req: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    let mut entries = Vec::with_capacity(req.entries.len());
    for e in req.entries {
        let id = entry_id(&log_id_from_pb(e.id.ok_or_else(|| Status::invalid_argument("an entry has no id"))?));
        let mut entry = batch_to_entry(id, e.batch).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !e.traceparent.is_empty()
            && crate::trace::enabled()
            && let openraft::EntryPayload::Normal(req) = &mut entry.payload
        {
            let parsed = strata_record::traceparent::TraceParent::parse(&e.traceparent);
            req.trace = parsed.map(|t| crate::trace::EntryTrace(t.span_context()));
        }
        entries.push(entry);
    }
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(req.vote)?,
        prev_log_id: req.prev_log_id.map(log_id_from_pb),
        entries,
        leader_commit: req.leader_commit.map(log_id_from_pb),
    })
}
