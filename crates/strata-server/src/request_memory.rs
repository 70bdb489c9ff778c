//! The node-wide budget of memory for request messages being received.
//!
//! Per connection the client listener already bounds message sizes and
//! concurrent streams, but a message under way sits in tonic's buffer until
//! it is whole, so without a node-wide bound `connections × streams × 33 MiB`
//! could be held at once. Each request body passes through [`MeteredBody`],
//! which reads the gRPC framing (a flag byte and a 4-byte length before each
//! message) and, when a message starts, takes as many bytes as the message
//! has from the node's [`RequestMemory`] before the message reaches tonic:
//!
//! - A message's bytes stay taken while it is received, decoded and handled:
//!   for a unary request until its handler answered; in a stream until the
//!   next message starts (or the stream ends).
//! - When the budget is used up, a message waits (the body is not read, so
//!   HTTP/2 flow control stops the client: the window, 8 MiB per stream and
//!   32 MiB per connection, is all that is buffered meanwhile), at most
//!   [`WAIT_LIMIT`], and at most [`MAX_WAITING`] messages wait in the whole
//!   node (each holds the one frame, at most 1 MiB, that told its length).
//!   Past either it is refused with `RESOURCE_EXHAUSTED`, reason
//!   `SERVER_BUSY`, which clients retry after a back-off.
//! - A length over the largest message allowed is not charged: tonic
//!   refuses that message as soon as it reads the same header.
//!
//! So the node holds at most the budget, plus [`MAX_WAITING`] frames, plus
//! the HTTP/2 windows of its connections, for requests being received.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use strata_proto::v1::ErrorReason;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tonic::{Code, Status};

/// The default budget (`limits.request_memory_bytes`): 256 MiB.
pub const DEFAULT_REQUEST_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// The smallest budget allowed: it must hold the largest message.
pub const MIN_REQUEST_MEMORY_BYTES: u64 = crate::GRPC_MESSAGE_LIMIT as u64 + 5;
/// The largest budget allowed (the semaphore's range, and far beyond any
/// node's memory).
pub const MAX_REQUEST_MEMORY_BYTES: u64 = 1 << 40;
/// How long a message waits for memory before it is refused.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Most messages waiting for memory in the whole node; more are refused at
/// once.
pub const MAX_WAITING: usize = 64;

/// Bytes of the gRPC frame header: a compression flag and a big-endian u32
/// length.
const GRPC_HEADER: usize = 5;

/// The node's budget.
#[derive(Debug)]
pub struct RequestMemory {
    bytes: Arc<Semaphore>,
    limit: u64,
    waiting: AtomicUsize,
    wait_limit: Duration,
    /// When a refusal was last logged (at most one line a second).
    logged: Mutex<Option<Instant>>,
}

impl RequestMemory {
    /// A budget of `limit` bytes (checked by [`check_limit`]).
    pub fn new(limit: u64) -> Arc<Self> {
        Self::with_wait_limit(limit, WAIT_LIMIT)
    }

    fn with_wait_limit(limit: u64, wait_limit: Duration) -> Arc<Self> {
        let limit = limit.clamp(MIN_REQUEST_MEMORY_BYTES, MAX_REQUEST_MEMORY_BYTES);
        Arc::new(Self {
            bytes: Arc::new(Semaphore::new(limit as usize)),
            limit,
            waiting: AtomicUsize::new(0),
            wait_limit,
            logged: Mutex::new(None),
        })
    }

    /// Bytes taken by messages now.
    pub fn in_use(&self) -> u64 {
        self.limit - self.bytes.available_permits() as u64
    }

    fn busy(&self, why: &str) -> Status {
        if let Ok(mut logged) = self.logged.lock()
            && logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(limit = self.limit, "refused a request: {why}");
            *logged = Some(Instant::now());
        }
        crate::status::status(
            Code::ResourceExhausted,
            ErrorReason::ServerBusy,
            format!(
                "the node's memory for requests being received ({} MiB, limits.request_memory_bytes) is in use: \
                 {why}; retry later",
                self.limit / (1024 * 1024)
            ),
        )
    }

    /// A waiting place, unless [`MAX_WAITING`] messages wait already.
    fn wait_slot(self: &Arc<Self>) -> Option<WaitSlot> {
        let mut n = self.waiting.load(Ordering::Relaxed);
        loop {
            if n >= MAX_WAITING {
                return None;
            }
            match self.waiting.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(WaitSlot(Arc::clone(self))),
                Err(now) => n = now,
            }
        }
    }
}

/// Checks an operator's budget.
pub fn check_limit(limit: u64) -> Result<(), String> {
    if !(MIN_REQUEST_MEMORY_BYTES..=MAX_REQUEST_MEMORY_BYTES).contains(&limit) {
        return Err(format!(
            "limits.request_memory_bytes must be from {MIN_REQUEST_MEMORY_BYTES} (the largest message) to \
             {MAX_REQUEST_MEMORY_BYTES}, got {limit}"
        ));
    }
    Ok(())
}

/// A message's place among the waiting ones, given back on drop.
#[derive(Debug)]
struct WaitSlot(Arc<RequestMemory>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The bytes a request holds, shared by its body and (for a unary call)
/// the future answering it, so they are given back when both are done.
type Held = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

fn hold(held: &Held, permit: OwnedSemaphorePermit) {
    if let Ok(mut h) = held.lock() {
        match h.as_mut() {
            Some(p) => p.merge(permit),
            None => *h = Some(permit),
        }
    }
}

fn release(held: &Held) {
    if let Ok(mut h) = held.lock() {
        h.take();
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

/// A frame held back until the memory of the messages it starts is granted.
struct Waiting {
    frame: Frame<Bytes>,
    acquire: Acquire,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _slot: WaitSlot,
}

/// Where the body is in the gRPC framing.
#[derive(Debug, Default)]
struct Framing {
    /// Header bytes of the next message seen so far.
    header: [u8; GRPC_HEADER],
    header_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    /// Walks `data`; returns the bytes to charge for the messages that
    /// start in it and whether any does.
    fn scan(&mut self, mut data: &[u8]) -> (u64, bool) {
        let (mut charge, mut started) = (0u64, false);
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                data.advance(take as usize);
                continue;
            }
            let take = (GRPC_HEADER - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data.advance(take);
            if self.header_len == GRPC_HEADER {
                self.header_len = 0;
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                self.remaining = u64::from(len);
                started = true;
                if len as usize <= crate::GRPC_MESSAGE_LIMIT {
                    charge += GRPC_HEADER as u64 + u64::from(len);
                }
            }
        }
        (charge, started)
    }
}

/// A request body that takes the memory of each message from the budget
/// before handing it on.
pub struct MeteredBody<B> {
    inner: B,
    budget: Arc<RequestMemory>,
    held: Held,
    framing: Framing,
    waiting: Option<Waiting>,
}

impl<B> MeteredBody<B> {
    fn new(inner: B, budget: Arc<RequestMemory>, held: Held) -> Self {
        Self { inner, budget, held, framing: Framing::default(), waiting: None }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(mut w) = this.waiting.take() {
            return match w.acquire.as_mut().poll(cx) {
                Poll::Ready(Ok(permit)) => {
                    hold(&this.held, permit);
                    Poll::Ready(Some(Ok(w.frame)))
                }
                Poll::Ready(Err(_)) => Poll::Ready(Some(Err(Status::unavailable("the node is shutting down")))),
                Poll::Pending => match w.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let why = format!("waited {:?} for it", this.budget.wait_limit);
                        Poll::Ready(Some(Err(this.budget.busy(&why))))
                    }
                    Poll::Pending => {
                        this.waiting = Some(w);
                        Poll::Pending
                    }
                },
            };
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let Some(data) = frame.data_ref() else { return Poll::Ready(Some(Ok(frame))) };
        let (charge, started) = this.framing.scan(data);
        if started {
            // The message before is handled (or being handled): its bytes
            // go back.
            release(&this.held);
        }
        if charge == 0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        // At most the whole budget (several messages in one frame).
        let charge = charge.min(this.budget.limit) as u32;
        match Arc::clone(&this.budget.bytes).try_acquire_many_owned(charge) {
            Ok(permit) => {
                hold(&this.held, permit);
                Poll::Ready(Some(Ok(frame)))
            }
            Err(TryAcquireError::Closed) => Poll::Ready(Some(Err(Status::unavailable("the node is shutting down")))),
            Err(TryAcquireError::NoPermits) => {
                let Some(slot) = this.budget.wait_slot() else {
                    let why = format!("{MAX_WAITING} requests wait for it already");
                    return Poll::Ready(Some(Err(this.budget.busy(&why))));
                };
                let acquire = Box::pin(Arc::clone(&this.budget.bytes).acquire_many_owned(charge));
                let deadline = Box::pin(tokio::time::sleep(this.budget.wait_limit));
                this.waiting = Some(Waiting { frame, acquire, deadline, _slot: slot });
                // Poll the acquisition (and so register for its wake-up).
                Pin::new(this).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The tower layer that meters every request body of a server.
#[derive(Debug, Clone)]
pub struct RequestMemoryLayer {
    budget: Arc<RequestMemory>,
}

impl RequestMemoryLayer {
    pub fn new(budget: Arc<RequestMemory>) -> Self {
        Self { budget }
    }
}

impl<S> tower_layer::Layer<S> for RequestMemoryLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner, budget: Arc::clone(&self.budget) }
    }
}

/// A service whose request bodies are metered.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    budget: Arc<RequestMemory>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ResBody> tower_service::Service<http::Request<tonic::body::Body>> for Metered<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let held: Held = Arc::new(Mutex::new(None));
        let (parts, body) = request.into_parts();
        let body = tonic::body::Body::new(MeteredBody::new(body, Arc::clone(&self.budget), Arc::clone(&held)));
        let answer = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let response = answer.await;
            // A unary request's message is handled now; a stream's body
            // keeps its own reference.
            drop(held);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn framing_charges_each_message_where_it_starts_even_across_frames() {
        let mut f = Framing::default();
        let two = [message(10), message(3)].concat();
        assert_eq!(f.scan(&two), (15 + 8, true));
        // A header split over two frames, then the rest of its message.
        let m = message(100);
        assert_eq!(f.scan(&m[..2]), (0, false));
        assert_eq!(f.scan(&m[2..50]), (105, true));
        assert_eq!(f.scan(&m[50..]), (0, false));
        // Over the largest message: not charged (tonic refuses it).
        let mut huge = vec![0u8];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(f.scan(&huge), (0, true));
    }

    /// A body of the given frames that then stays open.
    fn body(frames: Vec<Vec<u8>>) -> tonic::body::Body {
        use futures::StreamExt;
        let frames: Vec<Result<Frame<Bytes>, Status>> =
            frames.into_iter().map(|f| Ok(Frame::data(Bytes::from(f)))).collect();
        tonic::body::Body::new(http_body_util::StreamBody::new(
            futures::stream::iter(frames).chain(futures::stream::pending()),
        ))
    }

    fn metered(budget: &Arc<RequestMemory>, frames: Vec<Vec<u8>>) -> (MeteredBody<tonic::body::Body>, Held) {
        let held: Held = Arc::new(Mutex::new(None));
        (MeteredBody::new(body(frames), Arc::clone(budget), Arc::clone(&held)), held)
    }

    const BIG: usize = crate::GRPC_MESSAGE_LIMIT;

    #[tokio::test]
    async fn messages_hold_their_bytes_until_the_next_starts_or_the_request_ends() {
        let budget = RequestMemory::new(MIN_REQUEST_MEMORY_BYTES);
        let (mut b, held) = metered(&budget, vec![message(1000), message(10)]);
        b.frame().await.expect("frame").expect("ok");
        assert_eq!(budget.in_use(), 1005);
        b.frame().await.expect("frame").expect("ok");
        assert_eq!(budget.in_use(), 15, "the first message's bytes went back");
        drop(b);
        assert_eq!(budget.in_use(), 15, "the answering future holds them still");
        drop(held);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_waits_for_memory_then_is_refused_after_the_wait_limit() {
        let budget = RequestMemory::with_wait_limit(MIN_REQUEST_MEMORY_BYTES, Duration::from_secs(10));
        let (mut first, first_held) = metered(&budget, vec![message(BIG)]);
        first.frame().await.expect("frame").expect("ok");
        // The second waits while the first holds the budget, and gets it
        // when the first is done.
        let (mut second, _held) = metered(&budget, vec![message(BIG)]);
        let got = tokio::spawn(async move { second.frame().await.expect("frame").map(|_| ()) });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!got.is_finished(), "must wait");
        drop((first, first_held));
        got.await.expect("task").expect("granted once the first is done");
        // A third waits out the limit and is refused, saying which limit.
        let (mut third, _h) = metered(&budget, vec![message(BIG)]);
        let err = third.frame().await.expect("frame").expect_err("refused");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.message().contains("limits.request_memory_bytes"), "{}", err.message());
        assert_eq!(budget.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_waiting_messages_wait() {
        let budget = RequestMemory::new(MIN_REQUEST_MEMORY_BYTES);
        let (mut first, _h) = metered(&budget, vec![message(BIG)]);
        first.frame().await.expect("frame").expect("ok");
        let mut waiting = Vec::new();
        for _ in 0..MAX_WAITING {
            let (mut b, h) = metered(&budget, vec![message(10)]);
            let poll = futures::poll!(b.frame());
            assert!(poll.is_pending(), "waits");
            waiting.push((b, h));
        }
        let (mut over, _h) = metered(&budget, vec![message(10)]);
        let err = over.frame().await.expect("frame").expect_err("refused at once");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.message().contains("wait for it already"), "{}", err.message());
        drop(waiting);
        assert_eq!(budget.waiting.load(Ordering::Relaxed), 0);
    }
}
