//! The cluster listener's accept loop.
//!
//! Connections are accepted on one task and their TLS handshakes run each
//! on a task of its own, with a deadline ([`HANDSHAKE_TIMEOUT`]) and bounds
//! on how many run at once, in all ([`MAX_PENDING_HANDSHAKES`]) and from one
//! address ([`MAX_PENDING_PER_ADDRESS`]). A connection over a bound is
//! closed at once rather than queued, so connections that send nothing can
//! hold a few slots for a few seconds but never keep the nodes themselves
//! from connecting. A refused handshake (no certificate, another CA's, or
//! one that names no member) is logged with the remote address and closed.
//! Each accepted connection carries the node its certificate names
//! ([`PeerInfo`]), which the Raft service reads from the request's
//! extensions.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::server::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::names::node_named_by;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most handshakes in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Most handshakes in progress from one IP address.
pub const MAX_PENDING_PER_ADDRESS: usize = 4;

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
    let pending = Arc::new(Mutex::new(HashMap::<IpAddr, usize>::new()));
    let mut logged: Option<Instant> = None;
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
        let (config, members) = match &security {
            Security::Insecure => {
                let info = PeerInfo { remote: Some(remote), node: None };
                if tx.send(Ok(PeerStream { io: Io::Plain(tcp), info })).await.is_err() {
                    return;
                }
                continue;
            }
            Security::Mutual { config, members } => (Arc::clone(config), members.clone()),
        };
        let Some(slot) = Pending::take(&pending, remote.ip()) else {
            if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(%remote, "refused a connection to the cluster listener: too many TLS handshakes in progress");
                logged = Some(Instant::now());
            }
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
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
            let node =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| node_named_by(c, &members));
            // The verifier refused every certificate that names no member,
            // so `node` is known here.
            let info = PeerInfo { remote: Some(remote), node };
            let _ = tx.send(Ok(PeerStream { io: Io::Tls(Box::new(stream)), info })).await;
        });
    }
}

/// A handshake in progress, counted in all and per address until dropped.
struct Pending {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl Pending {
    fn take(table: &Arc<Mutex<HashMap<IpAddr, usize>>>, address: IpAddr) -> Option<Self> {
        let mut t = table.lock().ok()?;
        let total: usize = t.values().sum();
        let n = t.entry(address).or_default();
        if total >= MAX_PENDING_HANDSHAKES || *n >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Self { table: Arc::clone(table), address })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock()
            && let Some(n) = t.get_mut(&self.address)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_handshakes_are_bounded_per_address_and_in_all() {
        let table = Arc::new(Mutex::new(HashMap::new()));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let held: Vec<_> = (0..MAX_PENDING_PER_ADDRESS).map(|_| Pending::take(&table, a).expect("a slot")).collect();
        assert!(Pending::take(&table, a).is_none(), "one address over its bound");
        drop(held);
        assert!(table.lock().expect("lock").is_empty(), "slots come back");
        let all: Vec<_> = (0..MAX_PENDING_HANDSHAKES)
            .map(|i| Pending::take(&table, IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8])).expect("a slot"))
            .collect();
        assert!(Pending::take(&table, "10.9.9.9".parse().expect("ip")).is_none(), "over the bound in all");
        drop(all);
    }
}
