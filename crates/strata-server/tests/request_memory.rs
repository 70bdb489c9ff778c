//! The node-wide budget of request memory, on a real node over loopback:
//! a flood of large requests that never finish (raw HTTP/2, as an attacker
//! would send them) takes at most the budget; the requests past it wait,
//! or are refused with `RESOURCE_EXHAUSTED` / `SERVER_BUSY` naming the
//! limit; the node's memory stays bounded; and it serves others after.
//! See "Limits" in docs/ARCHITECTURE.md.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use strata_client::proto as pb;
use strata_client::{Client, TopicConfig};
use strata_server::request_memory::{MAX_WAITING, WAIT_LIMIT};
use strata_server::{Node, NodeConfig};

/// The process's (the node's) resident memory, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

const MESSAGE: usize = 32 * 1024 * 1024;
const BUDGET: u64 = 128 * 1024 * 1024;
const CONNECTIONS: usize = 2;
const STREAMS_PER_CONNECTION: usize = 64;

/// What became of one flooding request.
#[derive(Debug, PartialEq)]
enum Outcome {
    Busy,
    Other(String),
}

/// Opens `streams` unary `Produce` calls on one new connection, each with
/// a gRPC header announcing a 32 MiB message and its first 1 KiB; returns
/// the connection's sender (to keep it open), the calls' send halves and
/// answers.
async fn open_calls(
    addr: std::net::SocketAddr,
    streams: usize,
) -> (h2::client::SendRequest<Bytes>, Vec<h2::SendStream<Bytes>>, Vec<h2::client::ResponseFuture>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut start = BytesMut::new();
    start.put_u8(0);
    start.put_u32(MESSAGE as u32);
    start.put_bytes(1, 1024);
    let start = start.freeze();
    let (mut sends, mut answers) = (Vec::new(), Vec::new());
    let mut send = send;
    for _ in 0..streams {
        send = send.ready().await.expect("stream slot");
        let request = http::Request::post(format!("http://{addr}/strata.v1.Producer/Produce"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (answer, mut body) = send.send_request(request, false).expect("send request");
        body.send_data(start.clone(), false).expect("send the message's start");
        sends.push(body);
        answers.push(answer);
    }
    (send, sends, answers)
}

async fn outcome(answer: h2::client::ResponseFuture) -> Outcome {
    match answer.await {
        Ok(response) => {
            let header =
                |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let message = header("grpc-message");
            if header("grpc-status") == "8" && message.contains("limits.request_memory_bytes") {
                Outcome::Busy
            } else {
                Outcome::Other(format!("status {} {message}", header("grpc-status")))
            }
        }
        Err(e) => Outcome::Other(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_requests_takes_at_most_the_budget_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(NodeConfig {
        request_memory: BUDGET,
        ..NodeConfig::single("127.0.0.1:0".parse().expect("addr"), dir.path().to_owned())
    })
    .await
    .expect("node starts");
    let client = Client::connect(&node.addr().to_string()).await.expect("connect");
    client.create_topic("t", 1, TopicConfig::default()).await.expect("create");
    let before = rss_kib();

    // Every call announces its message; the node takes the memory of the
    // first three (3 x 32 MiB of 128), lets MAX_WAITING wait and refuses
    // the others at once.
    let started = Instant::now();
    let mut connections = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (send, bodies, calls) = open_calls(node.addr(), STREAMS_PER_CONNECTION).await;
        connections.push((send, bodies));
        answers.extend(calls);
    }
    let calls = answers.len();
    let answered: Vec<_> = answers.into_iter().map(|a| tokio::spawn(outcome(a))).collect();

    // Then every call sends the rest of its message but the last byte: the
    // three admitted ones are received in full; the waiting ones stay in
    // HTTP/2's flow-control windows.
    let rest = Bytes::from(vec![2u8; MESSAGE - 1024 - 1]);
    for (_, bodies) in &mut connections {
        for body in bodies.iter_mut() {
            let _ = body.send_data(rest.clone(), false); // refused calls are reset: ignore
        }
    }

    // Until every call but the admitted ones was refused (the waiting ones
    // after WAIT_LIMIT), the node's memory is watched.
    let mut outcomes = Vec::new();
    let mut peak = before;
    let deadline = started + WAIT_LIMIT + Duration::from_secs(30);
    let mut pending = answered;
    while Instant::now() < deadline {
        peak = peak.max(rss_kib());
        let (done, open): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
        pending = open;
        for h in done {
            outcomes.push(h.await.expect("task"));
        }
        if outcomes.len() >= calls - 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = outcomes.iter().filter(|o| **o == Outcome::Busy).count();
    let other: Vec<_> = outcomes.iter().filter(|o| **o != Outcome::Busy).collect();
    eprintln!(
        "{calls} calls: {busy} refused as busy, {} still held after {:?}; RSS {before} -> peak {peak} KiB",
        pending.len(),
        started.elapsed()
    );
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!(busy, calls - 3, "all but the three admitted calls are refused (waiting at most {WAIT_LIMIT:?})");
    assert!(calls - 3 > MAX_WAITING, "the flood is larger than the waiting room");
    // Unbounded, the node would buffer 128 x 32 MiB = 4 GiB. Bounded: the
    // budget (128 MiB), the HTTP/2 windows (32 MiB a connection), the
    // frames the waiting calls held, and allocator slack.
    let grown_mib = (peak.saturating_sub(before)) / 1024;
    assert!(grown_mib < 512, "the node grew by {grown_mib} MiB during the flood");

    // The flood ends; the node serves everyone else as before.
    drop(pending);
    drop(connections);
    let record = pb::Record { value: Bytes::from_static(b"after the flood"), ..Default::default() };
    let acks = client.produce_records("t", Some(0), vec![record]).await.expect("produce after the flood");
    assert_eq!(acks[0].base_offset, 0);
    node.shutdown().await.expect("shutdown");
}
