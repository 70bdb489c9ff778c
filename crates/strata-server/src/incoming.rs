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

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Most client connections a node holds open at once.
pub const MAX_CLIENT_CONNECTIONS: usize = 4096;
/// Most client connections from one IP address.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// A new connection must send its first bytes within this.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing for this long is closed.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

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
    let mut c = counts.lock().map_err(|_| "the connection table lock was poisoned")?;
    if c.total >= max {
        return Err("the node holds its most client connections");
    }
    let n = c.by_address.entry(address).or_default();
    if *n >= MAX_CONNECTIONS_PER_ADDRESS {
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

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
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

/// Accepts connections on `listener`, at most `max` open at once (and
/// [`MAX_CONNECTIONS_PER_ADDRESS`] per address), each with `TCP_NODELAY`
/// (small answers, acks, must not wait for delayed ACKs).
pub fn limited(listener: TcpListener, max: usize) -> impl futures::Stream<Item = io::Result<Limited>> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    // When a refusal was last logged: at most one line a second.
    let logged: Option<Instant> = None;
    futures::stream::unfold((listener, counts, logged), move |(listener, counts, mut logged)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "the client listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match take_slot(&counts, peer.ip(), max) {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    let quiet_until = Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT));
                    let accepted = Limited { stream, _slot: slot, quiet_until, heard: false };
                    return Some((Ok(accepted), (listener, counts, logged)));
                }
                Err(why) => {
                    if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(%peer, max, per_address = MAX_CONNECTIONS_PER_ADDRESS, "refused a connection: {why}");
                        logged = Some(Instant::now());
                    }
                    drop(stream);
                }
            }
        }
    })
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
