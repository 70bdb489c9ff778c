//! Bounds on what a client puts into a group's state: identifiers and commit
//! metadata are copied into the coordinator's memory and into the records
//! of the groups topic (a member's `client_id` into every record of its
//! group's membership), so each is bounded, as Kafka bounds commit metadata
//! (`offset.metadata.max.bytes`, 4096). Checked where a request arrives,
//! before it is forwarded to the coordinator or written anywhere.

use strata_proto::v1 as pb;
use tonic::Status;

use crate::status::invalid;

/// Longest `client_id` of a member.
pub const MAX_CLIENT_ID_BYTES: usize = 255;
/// Longest `member_id` a member may present (the coordinator's own are 32).
pub const MAX_MEMBER_ID_BYTES: usize = 255;
/// Longest `consumer_id` of a share-group consumer.
pub const MAX_CONSUMER_ID_BYTES: usize = 255;
/// Longest metadata of one committed offset (Kafka's
/// `offset.metadata.max.bytes` default).
pub const MAX_COMMIT_METADATA_BYTES: usize = 4096;

fn bounded(field: &str, value: &str, limit: usize) -> Result<(), Status> {
    if value.len() > limit {
        return Err(invalid(format!("{field} is {} bytes, above the limit of {limit} bytes", value.len())));
    }
    Ok(())
}

pub fn check_join(join: &pb::GroupJoin) -> Result<(), Status> {
    bounded("client_id", &join.client_id, MAX_CLIENT_ID_BYTES)?;
    bounded("member_id", &join.member_id, MAX_MEMBER_ID_BYTES)
}

pub fn check_commit(req: &pb::CommitOffsetsRequest) -> Result<(), Status> {
    bounded("member_id", &req.member_id, MAX_MEMBER_ID_BYTES)?;
    for o in &req.offsets {
        bounded(
            &format!("the metadata of the offset of {} partition {}", o.topic, o.partition),
            &o.metadata,
            MAX_COMMIT_METADATA_BYTES,
        )?;
    }
    Ok(())
}

pub fn check_consumer_id(consumer_id: &str) -> Result<(), Status> {
    bounded("consumer_id", consumer_id, MAX_CONSUMER_ID_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_holds_exactly() {
        let join = |client_id: usize, member_id: usize| pb::GroupJoin {
            client_id: "c".repeat(client_id),
            member_id: "m".repeat(member_id),
            ..Default::default()
        };
        check_join(&join(MAX_CLIENT_ID_BYTES, MAX_MEMBER_ID_BYTES)).expect("at the limits");
        let err = check_join(&join(MAX_CLIENT_ID_BYTES + 1, 0)).expect_err("over");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "client_id is 256 bytes, above the limit of 255 bytes");
        assert!(check_join(&join(0, MAX_MEMBER_ID_BYTES + 1)).is_err());
        let commit = |metadata: usize| pb::CommitOffsetsRequest {
            offsets: vec![pb::OffsetCommit { topic: "t".into(), metadata: "x".repeat(metadata), ..Default::default() }],
            ..Default::default()
        };
        check_commit(&commit(MAX_COMMIT_METADATA_BYTES)).expect("at the limit");
        let err = check_commit(&commit(MAX_COMMIT_METADATA_BYTES + 1)).expect_err("over");
        assert!(err.message().contains("above the limit of 4096 bytes"), "{}", err.message());
        check_consumer_id(&"c".repeat(MAX_CONSUMER_ID_BYTES)).expect("at the limit");
        assert!(check_consumer_id(&"c".repeat(MAX_CONSUMER_ID_BYTES + 1)).is_err());
    }
}
