//! The client listener's accept loop, bounded so that one client cannot
//! lock others out or exhaust the node's file descriptors:
//!
//! - at most [`MAX_CLIENT_CONNECTIONS`] connections in all, and
//!   [`MAX_CONNECTIONS_PER_ADDRESS`] from one IP address; a connection over
//!   either limit is accepted and closed at once (the client fails fast
//!   instead of waiting in the kernel's backlog);
//! - a connection that sends nothing for [`FIRST_BYTES_TIMEOUT`] after it
//!   was accepted (no HTTP/2 preface), or nothing at all for
//!   [`CLIENT_IDLE_TIMEOUT`] later on, is closed (Kafka's
//!   `connections.max.idle.ms` is 10 minutes too). A tailing subscriber
//!   whose connection is closed so resumes where it was (the Rust client
//!   does).
//!
//! With TLS (`--tls-cert`), handshakes run each on a task of their own, at
//! most [`MAX_PENDING_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so slow handshakes never hold up accepting. A
//! connection whose first byte is not a TLS record is a plaintext client
//! on a TLS port: it is served as plaintext but marked
//! ([`ClientInfo::plaintext_on_tls_port`]), and every request on it is
//! answered with an error saying that the port requires TLS, instead of a
//! handshake failure the client could not explain.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use strata_tls::ServingTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Most client connections a node holds open at once.
pub const MAX_CLIENT_CONNECTIONS: usize = 4096;
/// Most client connections from one IP address.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// A new connection must send its first bytes within this.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing for this long is closed.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Most TLS handshakes in progress at once (more connections are closed).
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Most TLS handshakes in progress from one address: one host's silent
/// connections cannot hold every handshake slot.
pub const MAX_PENDING_HANDSHAKES_PER_ADDRESS: usize = 16;
/// Longest a TLS handshake may take (from the first byte).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the node knows of a client connection (in each request's
/// extensions).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub remote: Option<SocketAddr>,
    /// The connection is TLS.
    pub tls: bool,
    /// A plaintext client on a listener that requires TLS: every request is
    /// refused with a message saying so.
    pub plaintext_on_tls_port: bool,
    /// The subject of the client's certificate (verified against the
    /// client CA), as `CN=alice,O=acme` (RFC 4514, most specific first,
    /// as Kafka prints it).
    pub certificate_subject: Option<String>,
    /// The node's own client (its group coordinator), connected in-process.
    pub internal: bool,
}

/// Open connections, in all and per address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Counts`], given back when it closes.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_address.get_mut(&self.address) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_address.remove(&self.address);
                }
            }
        }
    }
}

/// Takes a slot for a connection from `address`, or says which limit is
/// reached.
fn take_slot(counts: &Arc<Mutex<Counts>>, address: IpAddr, max: usize) -> Result<Slot, &'static str> {
    take_slot_with(counts, address, max, MAX_CONNECTIONS_PER_ADDRESS)
}

fn take_slot_with(
    counts: &Arc<Mutex<Counts>>,
    address: IpAddr,
    max: usize,
    per_address: usize,
) -> Result<Slot, &'static str> {
    let mut c = counts.lock().map_err(|_| "the connection table lock was poisoned")?;
    if c.total >= max {
        return Err("the node holds its most client connections");
    }
    let n = c.by_address.entry(address).or_default();
    if *n >= per_address {
        return Err("this address holds its most client connections");
    }
    *n += 1;
    c.total += 1;
    Ok(Slot { counts: Arc::clone(counts), address })
}

/// An accepted client connection.
#[derive(Debug)]
pub struct Limited {
    stream: TcpStream,
    _slot: Slot,
    /// When the connection is closed unless it sends something first.
    quiet_until: Pin<Box<Sleep>>,
    heard: bool,
}

impl AsyncRead for Limited {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.heard = true;
                    this.quiet_until.as_mut().reset(Instant::now() + CLIENT_IDLE_TIMEOUT);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.quiet_until.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let (what, limit) = if this.heard {
                        ("no bytes", CLIENT_IDLE_TIMEOUT)
                    } else {
                        ("no HTTP/2 preface", FIRST_BYTES_TIMEOUT)
                    };
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("{what} within {limit:?}"))))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A client connection, plaintext or TLS.
#[derive(Debug)]
pub struct ClientConnection {
    io: Io,
    info: ClientInfo,
}

#[derive(Debug)]
enum Io {
    Plain(Limited),
    Tls(Box<tokio_rustls::server::TlsStream<Limited>>),
    Memory(tokio::io::DuplexStream),
}

impl Connected for ClientConnection {
    type ConnectInfo = ClientInfo;

    fn connect_info(&self) -> ClientInfo {
        self.info.clone()
    }
}

impl AsyncRead for ClientConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// At most one warning a second per kind of refusal.
#[derive(Debug, Default)]
struct Quiet(Option<Instant>);

impl Quiet {
    fn ready(&mut self) -> bool {
        let ready = self.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if ready {
            self.0 = Some(Instant::now());
        }
        ready
    }
}

/// The connections the client listener serves: accepted ones, and the
/// node's own in-process ones ([`Connections::in_process`]).
#[derive(Debug)]
pub struct Connections {
    tx: mpsc::Sender<io::Result<ClientConnection>>,
    rx: mpsc::Receiver<io::Result<ClientConnection>>,
    stats: ConnectionStats,
}

/// The client listener's connection figures (for the metrics).
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    counts: Arc<Mutex<Counts>>,
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
    pub refused: Arc<std::sync::atomic::AtomicU64>,
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().map_or(0, |c| c.total)
    }
}

/// Buffer of each direction of an in-process connection.
const IN_PROCESS_BUFFER: usize = 1024 * 1024;

impl Default for Connections {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(64);
        Self { tx, rx, stats: ConnectionStats::default() }
    }
}

impl Connections {
    /// The figures of the connections accepted (shared: read them later).
    pub fn stats(&self) -> ConnectionStats {
        self.stats.clone()
    }

    /// A channel to this node's services that never leaves the process:
    /// each connection it opens is a pipe whose other end is served as a
    /// connection marked [`ClientInfo::internal`].
    pub fn in_process(&self) -> tonic::transport::Channel {
        let tx = self.tx.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let tx = tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(IN_PROCESS_BUFFER);
                let info = ClientInfo { internal: true, ..ClientInfo::default() };
                tx.send(Ok(ClientConnection { io: Io::Memory(server), info }))
                    .await
                    .map_err(|_| io::Error::other("the node's server has stopped"))?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        });
        tonic::transport::Endpoint::from_static("http://in-process.strata.internal")
            .connect_with_connector_lazy(connector)
    }

    /// Accepts connections on `listener` until the returned stream is
    /// dropped: at most `max` open at once (and
    /// [`MAX_CONNECTIONS_PER_ADDRESS`] per address), each with
    /// `TCP_NODELAY` (small answers, acks, must not wait for delayed ACKs);
    /// with `tls`, each handshaken off the accept path.
    pub fn accept(
        self,
        listener: TcpListener,
        max: usize,
        tls: Option<ServingTls>,
    ) -> ReceiverStream<io::Result<ClientConnection>> {
        tokio::spawn(accept_loop(listener, max, tls, self.tx, self.stats));
        ReceiverStream::new(self.rx)
    }
}

async fn accept_loop(
    listener: TcpListener,
    max: usize,
    tls: Option<ServingTls>,
    tx: mpsc::Sender<io::Result<ClientConnection>>,
    stats: ConnectionStats,
) {
    let counts = Arc::clone(&stats.counts);
    // Handshakes in progress, per address; at most MAX_PENDING_HANDSHAKES
    // in all.
    let handshakes = Arc::new(Mutex::new(Counts::default()));
    let (mut refused_logged, mut busy_logged) = (Quiet::default(), Quiet::default());
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "the client listener cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match take_slot(&counts, peer.ip(), max) {
            Ok(slot) => slot,
            Err(why) => {
                stats.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if refused_logged.ready() {
                    tracing::warn!(%peer, max, per_address = MAX_CONNECTIONS_PER_ADDRESS, "refused a connection: {why}");
                }
                continue;
            }
        };
        stats.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let quiet_until = Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT));
        let limited = Limited { stream, _slot: slot, quiet_until, heard: false };
        let mut info = ClientInfo { remote: Some(peer), ..ClientInfo::default() };
        let Some(tls) = &tls else {
            if tx.send(Ok(ClientConnection { io: Io::Plain(limited), info })).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) =
            take_slot_with(&handshakes, peer.ip(), MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_ADDRESS)
        else {
            if busy_logged.ready() {
                tracing::warn!(
                    %peer,
                    "refused a connection: too many TLS handshakes in progress ({MAX_PENDING_HANDSHAKES} in all, \
                     {MAX_PENDING_HANDSHAKES_PER_ADDRESS} from one address)"
                );
            }
            continue;
        };
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = match handshake(limited, &tls, &mut info).await {
                Ok(io) => ClientConnection { io, info },
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "a TLS handshake on the client listener failed");
                    return;
                }
            };
            let _ = tx.send(Ok(connection)).await;
        });
    }
}

/// TLS for a connection whose first byte is a TLS record; a plaintext one
/// is passed on, marked.
async fn handshake(limited: Limited, tls: &ServingTls, info: &mut ClientInfo) -> io::Result<Io> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTES_TIMEOUT, limited.stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1..)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1..)) => {
            info.plaintext_on_tls_port = true;
            return Ok(Io::Plain(limited));
        }
        Ok(Ok(_)) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a byte was sent")),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no bytes within the first-bytes timeout")),
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(limited))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake took too long"))??;
    info.tls = true;
    info.certificate_subject =
        stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(strata_tls::certificate_subject);
    Ok(Io::Tls(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_all_and_per_address_and_come_back() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let mut held: Vec<Slot> =
            (0..MAX_CONNECTIONS_PER_ADDRESS).map(|_| take_slot(&counts, a, 1000).expect("under the limit")).collect();
        let why = take_slot(&counts, a, 1000).expect_err("one address over its limit");
        assert!(why.contains("this address"), "{why}");
        let _b = take_slot(&counts, b, 1000).expect("another address");
        held.pop();
        let _a = take_slot(&counts, a, 1000).expect("a slot came back");
        // 257 open now.
        let why = take_slot(&counts, b, MAX_CONNECTIONS_PER_ADDRESS).expect_err("the node over its limit");
        assert!(why.contains("the node"), "{why}");
    }
}
