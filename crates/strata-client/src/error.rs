//! Client errors. [`ClientError::is_retriable`] tells transient failures
//! (worth retrying after a back-off) from definite ones.

use tonic::Code;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address '{addr}': {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot connect to strata at {addr}: {reason} (is the server running and listening there?)")]
    Connect { addr: String, reason: String },
    #[error("{message}")]
    Server { code: Code, reason: String, message: String },
    #[error("the server sent a malformed batch: {0}")]
    Format(#[from] strata_record::FormatError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("the producer is closed")]
    Closed,
}

impl ClientError {
    /// True for failures that may succeed when retried: the server is
    /// unreachable, restarting, or the call timed out.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Server { code, .. } => matches!(
                code,
                Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Unknown | Code::Cancelled
            ),
            _ => false,
        }
    }

    /// The gRPC code, for server errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The stable `ErrorInfo` reason the server attached (e.g. `UNKNOWN_TOPIC`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Server { reason, .. } if !reason.is_empty() => Some(reason),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let reason = tonic_types::StatusExt::get_details_error_info(&status).map(|i| i.reason).unwrap_or_default();
        let message = if status.message().is_empty() {
            format!("server returned {:?}", status.code())
        } else {
            status.message().to_owned()
        };
        Self::Server { code: status.code(), reason, message }
    }
}
