//! The one mapping from storage errors to gRPC statuses, with a stable
//! `google.rpc.ErrorInfo` reason (see `ErrorReason` in the proto).

use std::collections::HashMap;

use strata_proto::v1::ErrorReason;
use strata_record::FormatError;
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

/// The status a client gets for a storage error. Messages that could name
/// files of the node's data directory are logged here in full, and the
/// client gets the topic, partition and position with the reason, never a
/// path ([`StorageError::client_message`]).
pub fn from_storage(e: StorageError) -> Status {
    use StorageError as E;
    if e.names_files() {
        tracing::error!(error = %e, "storage error answered to a client");
    }
    let (code, reason) = match &e {
        E::Io { .. } | E::Index(_) | E::EntryOutOfOrder { .. } | E::OffsetMismatch { .. } => {
            (Code::Internal, ErrorReason::StorageError)
        }
        E::Corrupt { .. } => (Code::DataLoss, ErrorReason::CorruptBatch),
        E::PartitionFailed { .. } => (Code::DataLoss, ErrorReason::PartitionFailed),
        E::OffsetOutOfRange { .. } => (Code::OutOfRange, ErrorReason::OffsetOutOfRange),
        E::BatchTooLarge { .. } => (Code::InvalidArgument, ErrorReason::RecordTooLarge),
        E::InvalidBatch(FormatError::TooLarge { .. } | FormatError::RatioTooHigh { .. }) => {
            (Code::InvalidArgument, ErrorReason::RecordTooLarge)
        }
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
    status(code, reason, e.client_message())
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

    #[test]
    fn no_path_of_the_data_directory_reaches_a_client() {
        let dir = "/var/lib/strata-secret/topics/orders-7/0";
        let errors = [
            StorageError::Corrupt {
                topic: "orders".into(),
                partition: 0,
                file: format!("{dir}/00000000000000001200.log").into(),
                position: 4096,
                detail: "batch checksum mismatch".into(),
            },
            StorageError::Io {
                path: format!("{dir}/00000000000000001200.log").into(),
                source: std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
            },
            StorageError::Index(format!("IO error: While open a file for appending: {dir}/../index/000042.log")),
            StorageError::DataDirLocked("/var/lib/strata-secret".into()),
        ];
        for e in errors {
            assert!(e.to_string().contains("/var/lib/strata-secret"), "the log keeps the path: {e}");
            let s = from_storage(e);
            assert!(!s.message().contains("strata-secret") && !s.message().contains(".log"), "{}", s.message());
        }
        let s = from_storage(StorageError::Corrupt {
            topic: "orders".into(),
            partition: 3,
            file: format!("{dir}/00000000000000001200.log").into(),
            position: 4096,
            detail: "batch checksum mismatch".into(),
        });
        assert_eq!(s.code(), Code::DataLoss);
        assert_eq!(
            s.message(),
            "corrupt data in topic 'orders' partition 3: the segment starting at offset 1200 at byte 4096: batch checksum mismatch"
        );
    }
}
