//! The client listener's accept loop: at most [`MAX_CLIENT_CONNECTIONS`]
//! connections at once. Beyond that the node stops accepting until one
//! closes (new connections wait in the kernel's backlog, as Kafka's
//! `max.connections` does), so a client that opens connections in a loop
//! runs into a limit instead of the node's file descriptors.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Most client connections a node holds open at once.
pub const MAX_CLIENT_CONNECTIONS: usize = 4096;

/// An accepted client connection; its slot frees when it closes.
#[derive(Debug)]
pub struct Limited {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
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

/// Accepts connections on `listener`, at most `max` open at once, each with
/// `TCP_NODELAY` (small answers, acks, must not wait for delayed ACKs).
pub fn limited(listener: TcpListener, max: usize) -> impl futures::Stream<Item = io::Result<Limited>> {
    let slots = Arc::new(Semaphore::new(max));
    futures::stream::unfold((listener, slots, false), move |(listener, slots, mut warned)| async move {
        loop {
            let slot = match Arc::clone(&slots).try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    if !warned {
                        tracing::warn!(
                            max,
                            "the client listener holds its most connections; new ones wait until one closes"
                        );
                        warned = true;
                    }
                    let Ok(s) = Arc::clone(&slots).acquire_owned().await else { return None };
                    s
                }
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let accepted = Limited { stream, _slot: slot };
                    return Some((Ok(accepted), (listener, slots, false)));
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "the client listener cannot accept a connection");
                    drop(slot);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}
