//! Back-off between attempts at a call that found no leader (or no
//! coordinator), and which failures are worth another attempt.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::ClientError;

/// Bounded exponential back-off with jitter: each pause is a random time
/// between half the current step and the whole of it ("equal jitter"), so
/// that clients that lost the same node do not all come back at once; the
/// step doubles up to its cap.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    step: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self { step: first, first, max }
    }

    /// The next pause (and the step doubles).
    pub(crate) fn next_pause(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let jitter = rand::rng().random_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_micros(jitter)
    }

    /// Back to the first step (after a success).
    pub(crate) fn reset(&mut self) {
        self.step = self.first;
    }

    /// Sleeps for the next pause, cut short at `deadline`. False when the
    /// deadline has passed already: no time is left for another attempt.
    pub(crate) async fn wait(&mut self, deadline: Instant) -> bool {
        let pause = self.next_pause();
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        true
    }
}

/// Which failures of a partition request are tried again (at the
/// partition's leader, looked up again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Only failures after which the request surely was not carried out:
    /// `NOT_LEADER`, `SERVER_BUSY` (the node had no memory to receive it),
    /// or a connection that could not be made. For writes.
    Unsent,
    /// Also a connection lost mid-call, a node unavailable or not answering
    /// in time: for reads, which are safe to repeat.
    Idempotent,
    /// As `Idempotent`, and also `OFFSET_OUT_OF_RANGE`: a read resuming at
    /// an offset a leader already served, so a node that has not got that
    /// far (a new leader before its first commit, a follower) is behind.
    Resume,
}

impl Retry {
    pub(crate) fn retries(self, err: &ClientError) -> bool {
        let unsent = err.is_not_leader() || err.is_server_busy() || matches!(err, ClientError::Connect { .. });
        match self {
            Self::Unsent => unsent,
            Self::Idempotent => unsent || err.is_retriable(),
            Self::Resume => unsent || err.is_retriable() || err.reason() == Some("OFFSET_OUT_OF_RANGE"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_jittered_within_half_a_step_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(250));
        let mut step = Duration::from_millis(20);
        for _ in 0..12 {
            let pause = b.next_pause();
            assert!(pause >= step / 2 && pause <= step, "{pause:?} outside [{:?}, {step:?}]", step / 2);
            step = (step * 2).min(Duration::from_millis(250));
        }
        b.reset();
        assert!(b.next_pause() <= Duration::from_millis(20));
    }

    #[test]
    fn reads_retry_lost_connections_writes_only_unsent_requests() {
        let lost = ClientError::Server {
            code: tonic::Code::Unknown,
            reason: String::new(),
            message: "transport error".into(),
            leader_addr: None,
        };
        let refused = ClientError::Connect { addr: "127.0.0.1:1".into(), reason: "refused".into(), closed: false };
        let beyond = ClientError::Server {
            code: tonic::Code::OutOfRange,
            reason: "OFFSET_OUT_OF_RANGE".into(),
            message: "out of range".into(),
            leader_addr: None,
        };
        assert!(Retry::Unsent.retries(&refused) && !Retry::Unsent.retries(&lost));
        assert!(Retry::Idempotent.retries(&refused) && Retry::Idempotent.retries(&lost));
        assert!(!Retry::Idempotent.retries(&beyond) && Retry::Resume.retries(&beyond));
    }
}
