//! The tower layer in front of every service of a listener: who is calling.
//!
//! On the client listener: a plaintext client on a TLS listener is answered
//! `TLS_REQUIRED`; the caller is authenticated ([`Auth::authenticate`]) and
//! its [`Identity`] put in the request's extensions for the services'
//! checks. A response stream of a caller who proved itself with a token or
//! a session (a subscription, a group session) is checked every second,
//! and ends with `UNAUTHENTICATED` once the user or token is gone or the
//! credential expired. On the cluster listener the caller is the peer node
//! its certificate names.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use strata_proto::v1::ErrorReason;
use tonic::{Code, Status};

use super::{Auth, Credential, Identity, Principal};
use crate::incoming::ClientInfo;

/// How often an open response stream's credential is checked again.
pub const REVALIDATE_EVERY: Duration = Duration::from_secs(1);

/// Calls that need no credentials: logging in, health checks, reflection.
fn open_path(path: &str) -> bool {
    path == "/strata.v1.Security/Login"
        || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
}

/// The layer (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated { inner, auth: Arc::clone(&self.auth) }
    }
}

/// A service whose callers are checked first.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<Auth>,
}

/// What a plaintext client on a TLS listener is told.
pub fn tls_required() -> Status {
    crate::status::status(
        Code::Unauthenticated,
        ErrorReason::TlsRequired,
        "this Strata listener requires TLS, and the client connected without it: connect with TLS \
         (the CLI: --tls-ca FILE, or an https:// server address)",
    )
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ResBody> tower_service::Service<http::Request<tonic::body::Body>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let refuse = |status: Status| -> Self::Future { Box::pin(async move { Ok(status.into_http()) }) };
        let identity = if let Some(peer) = request.extensions().get::<strata_tls::PeerInfo>() {
            // The cluster listener: a member node (mutual TLS), or, on a
            // cluster without TLS, whoever reached the port.
            Identity::node(peer.node)
        } else {
            let info = request.extensions().get::<ClientInfo>().cloned();
            if info.as_ref().is_some_and(|i| i.plaintext_on_tls_port) {
                return refuse(tls_required());
            }
            match self.auth.authenticate(request.headers(), info.as_ref()) {
                Ok(identity) => identity,
                Err(_) if open_path(request.uri().path()) => Identity {
                    principal: Principal::Anonymous,
                    remote: info.and_then(|i| i.remote).map(|a| a.ip()),
                    credential: Credential::None,
                },
                Err(status) => return refuse(status),
            }
        };
        let watch = matches!(identity.credential, Credential::Token { .. } | Credential::Session { .. })
            .then(|| (Arc::clone(&self.auth), identity.clone()));
        request.extensions_mut().insert(identity);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match watch {
                Some((auth, identity)) => response.map(|body| {
                    let mut tick = tokio::time::interval(REVALIDATE_EVERY);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tonic::body::Body::new(Revocable { inner: body, auth, identity, tick, ended: false })
                }),
                None => response.map(tonic::body::Body::new),
            })
        })
    }
}

/// A response body that ends with `UNAUTHENTICATED` when its caller's
/// credential stops holding.
struct Revocable<B> {
    inner: B,
    auth: Arc<Auth>,
    identity: Identity,
    tick: tokio::time::Interval,
    ended: bool,
}

impl<B> Body for Revocable<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        while this.tick.poll_tick(cx).is_ready() {
            if let Err(status) = this.auth.still_valid(&this.identity) {
                this.ended = true;
                tracing::info!(
                    target: "strata::audit",
                    principal = %this.identity.principal,
                    "ended an open stream: {}",
                    status.message()
                );
                let mut trailers = http::HeaderMap::new();
                let _ = status.add_header(&mut trailers);
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
