//! The metrics listener: plain HTTP/1.1, `GET /metrics` (and `HEAD`), the
//! OpenMetrics text. Loopback by default; it shows topic and group names,
//! so bind it to an interface only operators reach (no authentication).
//!
//! Bounded like every listener: at most [`MAX_CONNECTIONS`] at once, one
//! request each, a request's head within [`HEADER_TIMEOUT`], the whole
//! connection within [`CONNECTION_TIMEOUT`], no request body read; the node
//! gathers at most once a second however often it is asked
//! ([`super::SCRAPE_REUSE`]); anything but `/metrics` is 404, any method but
//! GET and HEAD 405.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{CONTENT_TYPE, Exposition};

/// Scrapers connected at once (Prometheus keeps one connection per target).
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may last in all (its one request and answer).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    exposition: Arc<Exposition>,
    req: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(respond(StatusCode::NOT_FOUND, text, "not found: the metrics are at /metrics\n"));
    }
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, text, "only GET and HEAD\n");
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return Ok(r);
        }
    };
    let body = exposition.scrape().await;
    Ok(respond(StatusCode::OK, CONTENT_TYPE, if head { Bytes::new() } else { Bytes::from(body.to_string()) }))
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, exposition: Arc<Exposition>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "the metrics listener cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let exposition = Arc::clone(&exposition);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&exposition), req));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                // One request per connection: an idle kept-alive connection
                // would hold a slot (Prometheus reconnects at each scrape).
                .keep_alive(false)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            // A scraper that never reads its answer does not keep the slot.
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "a metrics connection ended with an error"),
                Err(_) => tracing::debug!(%peer, "a metrics connection took over {CONNECTION_TIMEOUT:?}; closed"),
                Ok(Ok(())) => {}
            }
        });
    }
}
