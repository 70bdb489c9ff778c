//! The tower layer in front of every service of the client listener.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use strata_proto::v1::ErrorReason;
use tonic::{Code, Status};

use crate::incoming::ClientInfo;

/// The layer (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {}

impl AuthLayer {
    pub fn new() -> Self {
        Self {}
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated { inner }
    }
}

/// A service whose callers are checked first.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
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
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let plaintext_on_tls = request.extensions().get::<ClientInfo>().is_some_and(|i| i.plaintext_on_tls_port);
        if plaintext_on_tls {
            return Box::pin(async { Ok(tls_required().into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}
