//! The cluster listener's accept loop.
//!
//! Connections are accepted on one task and their TLS handshakes run each
//! on a task of its own, with a deadline and a bound on how many run at
//! once: a peer that connects and sends nothing holds a slot for at most
//! [`HANDSHAKE_TIMEOUT`] and never stops others from connecting. A refused
//! handshake (no certificate, another CA's, or one that names no member) is
//! logged with the remote address and closed. Each accepted connection
//! carries the node its certificate names ([`PeerInfo`]), which the Raft
//! service reads from the request's extensions.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::names::node_named_by;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; later connections wait in the
/// kernel's backlog.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Who is at the other end of a cluster connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The member node the peer's certificate names; `None` on a cluster
    /// running without TLS (`--insecure-cluster`), where nothing is known.
    pub node: Option<u64>,
}

/// An accepted cluster connection.
#[derive(Debug)]
pub struct PeerStream {
    io: Io,
    info: PeerInfo,
}

#[derive(Debug)]
enum Io {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the cluster listener requires of a connection.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS: a certificate from the cluster's CA naming one of
    /// `members`.
    Mutual { config: Arc<ServerConfig>, members: Vec<u64> },
    /// Plaintext, anyone (`--insecure-cluster`).
    Insecure,
}

/// Accepts connections on `listener` until the returned stream is dropped.
pub fn incoming(listener: TcpListener, security: Security) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(MAX_PENDING_HANDSHAKES);
    tokio::spawn(accept_loop(listener, security, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: TcpListener, security: Security, tx: mpsc::Sender<io::Result<PeerStream>>) {
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "the cluster listener cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match &security {
            Security::Insecure => {
                let info = PeerInfo { remote: Some(remote), node: None };
                if tx.send(Ok(PeerStream { io: Io::Plain(tcp), info })).await.is_err() {
                    return;
                }
            }
            Security::Mutual { config, members } => {
                let permit = tokio::select! {
                    () = tx.closed() => return,
                    permit = Arc::clone(&handshakes).acquire_owned() => permit,
                };
                let Ok(permit) = permit else { return };
                let (config, members, tx) = (Arc::clone(config), members.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(%remote, error = %e, "refused a connection to the cluster listener");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%remote, "refused a connection to the cluster listener: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                            return;
                        }
                    };
                    let node = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| node_named_by(c, &members));
                    // The verifier refused every certificate that names no
                    // member, so `node` is known here.
                    let info = PeerInfo { remote: Some(remote), node };
                    let _ = tx.send(Ok(PeerStream { io: Io::Tls(Box::new(stream)), info })).await;
                });
            }
        }
    }
}
