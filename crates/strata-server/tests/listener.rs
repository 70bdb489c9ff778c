//! The client listener's bounds, on a real node over loopback: connections
//! from one address beyond `MAX_CONNECTIONS_PER_ADDRESS` are closed at once,
//! a connection that sends no HTTP/2 preface is closed after
//! `FIRST_BYTES_TIMEOUT`, and the node keeps serving with its open file
//! descriptors back where they were.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use strata_client::Client;
use strata_server::incoming::{FIRST_BYTES_TIMEOUT, MAX_CONNECTIONS_PER_ADDRESS};
use strata_server::{Node, NodeConfig};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// Whether the node closed `stream` (a read returns end of file or an
/// error) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // The server's HTTP/2 SETTINGS: it serves this connection; read on.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bounds_are_closed_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(NodeConfig::single("127.0.0.1:0".parse().expect("addr"), dir.path().to_owned()))
        .await
        .expect("node starts");
    let addr = node.addr();
    let before = open_fds();

    // Silent connections from one address: up to the bound they are held,
    // the next one is closed at once.
    let mut held: Vec<TcpStream> =
        (0..MAX_CONNECTIONS_PER_ADDRESS).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    let mut over = TcpStream::connect(addr).expect("the kernel accepts the connection");
    assert!(closed_within(&mut over, Duration::from_secs(5)), "a connection over the per-address bound is closed");

    // Those under the bound are held, until FIRST_BYTES_TIMEOUT passes
    // without a preface.
    assert!(!closed_within(&mut held[1], Duration::from_secs(1)), "a connection under the bound is held");
    assert!(
        closed_within(&mut held[0], FIRST_BYTES_TIMEOUT + Duration::from_secs(5)),
        "a connection that sends no preface is closed"
    );
    drop(held);

    // Serving, and its descriptors (in this process: the node's) back.
    let client = Client::connect(&addr.to_string()).await.expect("connect after the flood");
    client.list_topics().await.expect("the node serves");
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds() > before + 8 {
        assert!(Instant::now() < deadline, "open descriptors {} stay above {before}", open_fds());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.shutdown().await.expect("shutdown");
}
