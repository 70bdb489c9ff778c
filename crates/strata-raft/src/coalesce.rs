//! Holding back entry-less replication requests that a later request makes
//! redundant.
//!
//! openraft sends a follower an AppendEntries request without entries
//! whenever the commit index moves and no new entry is ready to carry it.
//! Below peak that is nearly every commit: a produce then costs two requests
//! and two answers per follower (the entries, then the commit), and the
//! second pair is pure overhead for the producer, which is acknowledged at
//! commit on the leader. [`Coalesce`] holds such a request for a short
//! window; if a later request of the same stream comes within it, the held
//! one is dropped (the later one carries the same or a newer commit, and
//! starts where the held one ends), otherwise it goes out when the window
//! closes.
//!
//! Dropping it is sound and makes up no answer: openraft counts an answer
//! for every request of the stream up to the log id it names
//! (`drain_acked`), and an entry-less request names its prev, so any later
//! answer at or past that entry clears it, exactly as if it had been sent.
//! The only cost is that a follower learns a commit up to one window later
//! when no entry follows (heartbeats carry it too); the leader's commit, and
//! so every acknowledgement, is not delayed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use openraft::raft::AppendEntriesRequest;

use crate::types::TypeConfig;

/// A request of a replication stream as [`Coalesce`] sees it.
pub trait Supersedable {
    /// Whether this request carries no entries (a commit update, or a
    /// probe), so that it may be held back.
    fn holdable(&self) -> bool;
    /// Whether `later`, sent instead of this request, tells the follower
    /// everything this one would have and its answer acknowledges this
    /// one too.
    fn superseded_by(&self, later: &Self) -> bool;
}

impl Supersedable for AppendEntriesRequest<TypeConfig> {
    fn holdable(&self) -> bool {
        self.entries.is_empty()
    }

    fn superseded_by(&self, later: &Self) -> bool {
        // A later request of the same stream starts where this one ends (an
        // entry-less request ends at its prev) and carries a commit read
        // later; checked rather than assumed.
        later.vote == self.vote && later.prev_log_id == self.prev_log_id && later.leader_commit >= self.leader_commit
    }
}

/// A stream of replication requests in which an entry-less request is held
/// for up to `window` and dropped if a request that supersedes it comes
/// first. The end of the input sends what is held at once.
pub struct Coalesce<S: Stream> {
    input: Option<S>,
    window: Duration,
    /// The entry-less request held back, and when it must go out.
    held: Option<(S::Item, Pin<Box<tokio::time::Sleep>>)>,
    /// A request that came after a held one it does not supersede: it goes
    /// out right after the held one.
    next: Option<S::Item>,
    dropped: u64,
}

impl<S: Stream> Coalesce<S> {
    pub fn new(input: S, window: Duration) -> Self {
        Self { input: Some(input), window, held: None, next: None, dropped: 0 }
    }

    /// Requests dropped so far because a later one superseded them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<S> Stream for Coalesce<S>
where
    S: Stream + Unpin,
    S::Item: Supersedable + Unpin,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        if let Some(next) = this.next.take() {
            return Poll::Ready(Some(next));
        }
        while let Some(input) = this.input.as_mut() {
            match Pin::new(input).poll_next(cx) {
                Poll::Ready(Some(request)) => {
                    let Some((held, deadline)) = this.held.take() else {
                        if request.holdable() {
                            let deadline = Box::pin(tokio::time::sleep(this.window));
                            this.held = Some((request, deadline));
                            continue;
                        }
                        return Poll::Ready(Some(request));
                    };
                    if !held.superseded_by(&request) {
                        this.next = Some(request);
                        return Poll::Ready(Some(held));
                    }
                    this.dropped += 1;
                    if request.holdable() {
                        // Keeps the first one's deadline: a run of commit
                        // updates is not held for longer than one window.
                        this.held = Some((request, deadline));
                        continue;
                    }
                    return Poll::Ready(Some(request));
                }
                Poll::Ready(None) => {
                    this.input = None;
                }
                Poll::Pending => break,
            }
        }
        match this.held.as_mut() {
            None if this.input.is_none() => Poll::Ready(None),
            None => Poll::Pending,
            Some(_) if this.input.is_none() => Poll::Ready(this.held.take().map(|(r, _)| r)),
            Some((_, deadline)) => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(this.held.take().map(|(r, _)| r)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    /// A request: its prev index, its commit, and whether it has entries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Req {
        prev: u64,
        commit: u64,
        entries: bool,
    }

    impl Supersedable for Req {
        fn holdable(&self) -> bool {
            !self.entries
        }
        fn superseded_by(&self, later: &Self) -> bool {
            later.prev == self.prev && later.commit >= self.commit
        }
    }

    const WINDOW: Duration = Duration::from_millis(10);

    fn data(prev: u64, commit: u64) -> Req {
        Req { prev, commit, entries: true }
    }

    fn commit(prev: u64, commit: u64) -> Req {
        Req { prev, commit, entries: false }
    }

    fn send(tx: &mpsc::UnboundedSender<Req>, request: Req) {
        tx.send(request).expect("the stream under test is alive");
    }

    fn coalesced() -> (mpsc::UnboundedSender<Req>, Coalesce<UnboundedReceiverStream<Req>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Coalesce::new(UnboundedReceiverStream::new(rx), WINDOW))
    }

    /// The next request out, if one comes within `wait` (of paused time).
    async fn next_within(s: &mut Coalesce<UnboundedReceiverStream<Req>>, wait: Duration) -> Option<Option<Req>> {
        tokio::time::timeout(wait, s.next()).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_with_entries_pass_at_once() {
        let (tx, mut s) = coalesced();
        send(&tx, data(0, 0));
        send(&tx, data(1, 0));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(data(0, 0))));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(data(1, 0))));
        assert_eq!(next_within(&mut s, WINDOW * 5).await, None, "nothing else was sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_update_followed_by_entries_is_dropped() {
        let (tx, mut s) = coalesced();
        send(&tx, commit(2, 2));
        assert_eq!(next_within(&mut s, WINDOW / 2).await, None, "held within the window");
        send(&tx, data(2, 2));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(data(2, 2))));
        assert_eq!(s.dropped(), 1);
        assert_eq!(next_within(&mut s, WINDOW * 5).await, None, "the held update never goes out");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_commit_update_goes_out_when_the_window_closes() {
        let (tx, mut s) = coalesced();
        send(&tx, commit(2, 2));
        let start = tokio::time::Instant::now();
        assert_eq!(s.next().await, Some(commit(2, 2)));
        assert_eq!(start.elapsed(), WINDOW);
        assert_eq!(s.dropped(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_updates_is_held_one_window_and_only_the_newest_goes_out() {
        let (tx, mut s) = coalesced();
        let start = tokio::time::Instant::now();
        send(&tx, commit(4, 2));
        assert_eq!(next_within(&mut s, WINDOW / 2).await, None);
        send(&tx, commit(4, 3));
        send(&tx, commit(4, 4));
        assert_eq!(s.next().await, Some(commit(4, 4)));
        assert_eq!(start.elapsed(), WINDOW, "the first update's deadline holds");
        assert_eq!(s.dropped(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_does_not_supersede_goes_out_after_the_held_one() {
        let (tx, mut s) = coalesced();
        send(&tx, commit(4, 4));
        // Another prev (not a successor of the held request): both go out,
        // in order.
        send(&tx, data(5, 4));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(commit(4, 4))));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(data(5, 4))));
        // A lower commit does not supersede either.
        send(&tx, commit(6, 5));
        send(&tx, data(6, 4));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(commit(6, 5))));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(data(6, 4))));
        assert_eq!(s.dropped(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_input_sends_the_held_update_at_once() {
        let (tx, mut s) = coalesced();
        send(&tx, commit(2, 2));
        drop(tx);
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(Some(commit(2, 2))));
        assert_eq!(next_within(&mut s, Duration::ZERO).await, Some(None));
    }
}
