//! The one mapping from storage errors to gRPC statuses, with a stable
//! `google.rpc.ErrorInfo` reason (see `ErrorReason` in the proto).

use std::collections::HashMap;

use strata_proto::v1::ErrorReason;
use strata_storage::StorageError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A status with an `ErrorInfo` detail carrying `reason`.
pub fn status(code: Code, reason: ErrorReason, message: impl Into<String>) -> Status {
    status_with(code, reason, message, std::collections::BTreeMap::new())
}

/// [`status`], with `ErrorInfo` metadata (e.g. the leader to retry at).
pub fn status_with(
    code: Code,
    reason: ErrorReason,
    message: impl Into<String>,
    metadata: std::collections::BTreeMap<String, String>,
) -> Status {
    let details = ErrorDetails::with_error_info(
        reason.as_str_name(),
        strata_proto::ERROR_DOMAIN,
        metadata.into_iter().collect::<HashMap<String, String>>(),
    );
    Status::with_error_details(code, message, details)
}

pub fn invalid(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, ErrorReason::InvalidRequest, message)
}

pub fn from_storage(e: StorageError) -> Status {
    use StorageError as E;
    let (code, reason) = match &e {
        E::Io { .. } | E::Index(_) | E::EntryOutOfOrder { .. } | E::OffsetMismatch { .. } => {
            (Code::Internal, ErrorReason::StorageError)
        }
        E::Corrupt { .. } => (Code::DataLoss, ErrorReason::CorruptBatch),
        E::PartitionFailed { .. } => (Code::DataLoss, ErrorReason::PartitionFailed),
        E::OffsetOutOfRange { .. } => (Code::OutOfRange, ErrorReason::OffsetOutOfRange),
        E::BatchTooLarge { .. } => (Code::InvalidArgument, ErrorReason::RecordTooLarge),
        E::InvalidBatch(_) | E::TimestampInFuture { .. } => (Code::InvalidArgument, ErrorReason::InvalidRequest),
        E::UnknownTopic(_) => (Code::NotFound, ErrorReason::UnknownTopic),
        E::UnknownPartition { .. } => (Code::NotFound, ErrorReason::UnknownPartition),
        E::TopicExists(_) => (Code::AlreadyExists, ErrorReason::TopicAlreadyExists),
        E::InvalidTopicName { .. } => (Code::InvalidArgument, ErrorReason::InvalidTopicName),
        E::InvalidPartitionCount { .. } | E::PartitionCountNotIncreasing { .. } => {
            (Code::InvalidArgument, ErrorReason::InvalidPartitionCount)
        }
        E::InvalidConfig(_) => (Code::InvalidArgument, ErrorReason::InvalidConfig),
        E::DataDirLocked(_) => (Code::FailedPrecondition, ErrorReason::StorageError),
        E::ShuttingDown => (Code::Unavailable, ErrorReason::ShuttingDown),
    };
    status(code, reason, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_map_to_codes_with_reasons() {
        let s = from_storage(StorageError::UnknownTopic("x".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "unknown topic 'x'");
        let info = s.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "UNKNOWN_TOPIC");
        assert_eq!(info.domain, "strata.io");
        let s = from_storage(StorageError::OffsetOutOfRange {
            topic: "t".into(),
            partition: 1,
            offset: 9,
            start: 0,
            end: 5,
        });
        assert_eq!(s.code(), Code::OutOfRange);
    }
}
