//! Client errors. [`ClientError::is_retriable`] tells transient failures
//! (worth retrying after a back-off) from definite ones.

use tonic::Code;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address '{addr}': {reason}")]
    InvalidAddress { addr: String, reason: String },
    /// No connection, or (`closed`) one the node closed, or a stream it
    /// refused, before it processed the request: a node stopping or
    /// restarting, most often. Either way nothing was carried out, so the
    /// request may be sent again.
    #[error("{}", connect_message(.addr, .reason, *.closed))]
    Connect { addr: String, reason: String, closed: bool },
    /// TLS material that cannot be read or used, or a TLS handshake that
    /// failed.
    #[error("{0}")]
    Tls(String),
    /// Credentials that cannot be used.
    #[error("{0}")]
    Auth(String),
    #[error("{message}")]
    Server {
        code: Code,
        reason: String,
        message: String,
        /// `NOT_LEADER`: the leader's address, when the server knows it.
        leader_addr: Option<String>,
    },
    #[error("the server sent a malformed batch: {0}")]
    Format(#[from] strata_record::FormatError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("the producer is closed")]
    Closed,
    /// No node answered for `what` (a partition's leader, a group's
    /// coordinator) before the caller's deadline: its nodes are down, or an
    /// election did not end in time. `last` is the last failure seen.
    #[error("{what} could not be reached within {waited:.1?} ({attempts} attempts); last error: {last}")]
    Unreachable { what: String, waited: std::time::Duration, attempts: u32, last: Box<ClientError> },
}

impl ClientError {
    /// True for failures that may succeed when retried: the server is
    /// unreachable, restarting, or the call timed out.
    pub fn is_retriable(&self) -> bool {
        if self.is_server_busy() {
            return true;
        }
        match self {
            Self::Connect { .. } | Self::Unreachable { .. } => true,
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

    /// `NOT_LEADER`: this node does not lead the partition (retry at the
    /// leader; [`ClientError::leader_addr`] names it when known).
    pub fn is_not_leader(&self) -> bool {
        self.reason() == Some("NOT_LEADER")
    }

    /// `SERVER_BUSY`: the node's memory for requests being received was in
    /// use; nothing of the request was done. Retry after a back-off.
    pub fn is_server_busy(&self) -> bool {
        self.reason() == Some("SERVER_BUSY")
    }

    /// The leader to retry at, when the server named it.
    pub fn leader_addr(&self) -> Option<&str> {
        match self {
            Self::Server { leader_addr, .. } => leader_addr.as_deref(),
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

fn at(addr: &str) -> String {
    if addr.is_empty() { String::new() } else { format!(" at {addr}") }
}

fn connect_message(addr: &str, reason: &str, closed: bool) -> String {
    if closed {
        format!(
            "strata{} closed the connection or refused the request before processing it, so it was not carried \
             out (the node may be stopping or restarting): {reason}",
            at(addr)
        )
    } else {
        format!("cannot connect to strata{}: {reason} (is the server running and listening there?)", at(addr))
    }
}

/// Whether a status's sources hold an error of type `E` (how tonic marks a
/// failure of its own, e.g. a refused connection or an expired deadline).
fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<E>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether the request surely never reached the node's handlers, so that a
/// write may be sent again without risk of doing it twice:
/// - hyper hands back, as "canceled", a request it had not yet given to
///   the connection when that connection closed or was not ready (a node
///   that stops closes its connections once its in-flight requests are
///   done);
/// - h2 fails a stream with the peer's graceful GOAWAY (NO_ERROR) only when
///   the stream is past the last one the peer said it processed (a GOAWAY
///   with an error code fails every stream left, processed or not: not
///   this case);
/// - a stream the peer reset with REFUSED_STREAM was not processed, by
///   HTTP/2's rules.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.is_remote()
            && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
        {
            return true;
        }
        source = e.source();
    }
    false
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let refused = caused_by::<tonic::ConnectError>(&status);
        if refused || never_sent(&status) {
            let closed = !refused;
            // A channel that lost its node reconnects on the next call and
            // answers this: nothing was sent, so it is safe to send again.
            return Self::Connect { addr: String::new(), reason: status.message().to_owned(), closed };
        }
        if caused_by::<tonic::TimeoutExpired>(&status) {
            // tonic reports its own deadline as CANCELLED; to the caller it
            // is a deadline: the node did not answer in time (the request
            // may or may not have been carried out).
            return Self::Server {
                code: Code::DeadlineExceeded,
                reason: String::new(),
                message: "no answer within the request's deadline".to_owned(),
                leader_addr: None,
            };
        }
        let info = tonic_types::StatusExt::get_details_error_info(&status);
        let leader_addr = info.as_ref().and_then(|i| i.metadata.get("leader_addr").cloned());
        let reason = info.map(|i| i.reason).unwrap_or_default();
        let message = if status.message().is_empty() {
            format!("server returned {:?}", status.code())
        } else {
            status.message().to_owned()
        };
        Self::Server { code: status.code(), reason, message, leader_addr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_is_not_reported_as_a_server_not_running() {
        let refused = ClientError::Connect { addr: "10.0.0.1:7878".into(), reason: "refused".into(), closed: false };
        assert_eq!(
            refused.to_string(),
            "cannot connect to strata at 10.0.0.1:7878: refused (is the server running and listening there?)"
        );
        let closed =
            ClientError::Connect { addr: "10.0.0.1:7878".into(), reason: "stream refused".into(), closed: true };
        let text = closed.to_string();
        assert!(text.starts_with("strata at 10.0.0.1:7878 closed the connection or refused the request"), "{text}");
        assert!(!text.contains("is the server running"), "{text}");
        assert!(closed.is_retriable() && refused.is_retriable());
    }
}
