//! Metric values after known operations, on a real node over loopback:
//! `/metrics` is scraped over HTTP as Prometheus would, and the request
//! log written beside it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use strata_client::proto as pb;
use strata_client::{Client, PartitionConsumer, StartOffset, TopicConfig};
use strata_server::metrics::MetricsConfig;
use strata_server::{Node, NodeConfig};

/// `GET /metrics` (or another path), the status line and the body.
fn get(addr: std::net::SocketAddr, path: &str, method: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The samples of an exposition: series (name and labels, as written) to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(s: &HashMap<String, f64>, series: &str) -> f64 {
    *s.get(series).unwrap_or_else(|| panic!("no series {series} in {:#?}", s.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_operations_and_the_request_log_names_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("requests.log");
    let config = NodeConfig {
        metrics: MetricsConfig { listen: Some("127.0.0.1:0".parse().expect("addr")), ..MetricsConfig::default() },
        request_log: Some(log_path.clone()),
        ..NodeConfig::single("127.0.0.1:0".parse().expect("addr"), dir.path().join("data"))
    };
    let node = Node::start(config).await.expect("node starts");
    let metrics = node.metrics_addr().expect("metrics listener");
    let client = Client::connect(&node.addr().to_string()).await.expect("connect");
    client.create_topic("orders", 2, TopicConfig::default()).await.expect("create");

    // 3 produce requests of 4 records each to partition 1, one to a topic
    // that does not exist.
    for i in 0..3 {
        let records = (0..4)
            .map(|j| pb::Record { value: format!("order {i}-{j}").into_bytes().into(), ..Default::default() })
            .collect();
        client.produce_records("orders", Some(1), records).await.expect("produce");
    }
    let missing = vec![pb::Record { value: b"x".to_vec().into(), ..Default::default() }];
    client.produce_records("nowhere", None, missing).await.expect_err("no such topic");
    // 2 fetches of partition 1.
    let mut consumer = PartitionConsumer::new(client.clone(), "orders", 1, StartOffset::Earliest).await.expect("c");
    let mut read = 0;
    while read < 12 {
        read += consumer.poll().await.expect("poll").len();
    }

    let (status, body) = tokio::task::spawn_blocking(move || get(metrics, "/metrics", "GET")).await.expect("get");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let s = samples(&body);
    assert_eq!(value(&s, r#"strata_requests_total{operation="produce"}"#), 4.0);
    assert_eq!(
        value(&s, r#"strata_request_errors_total{operation="produce",code="NOT_FOUND",reason="UNKNOWN_TOPIC"}"#),
        1.0
    );
    assert_eq!(value(&s, "strata_produce_latency_seconds_count"), 4.0);
    assert_eq!(value(&s, "strata_commit_latency_seconds_count"), 3.0);
    assert_eq!(value(&s, r#"strata_produce_requests_total{topic="orders"}"#), 3.0);
    assert_eq!(value(&s, r#"strata_produce_records_total{topic="orders"}"#), 12.0);
    assert!(value(&s, r#"strata_produce_bytes_total{topic="orders"}"#) > 12.0 * 9.0);
    assert!(value(&s, r#"strata_fetch_requests_total{topic="orders"}"#) >= 1.0);
    assert_eq!(value(&s, r#"strata_fetch_records_total{topic="orders"}"#), 12.0);
    assert_eq!(
        value(&s, r#"strata_requests_total{operation="fetch"}"#),
        value(&s, "strata_fetch_latency_seconds_count")
    );
    assert_eq!(value(&s, r#"strata_log_high_watermark{topic="orders"}"#), 12.0);
    assert_eq!(value(&s, r#"strata_log_start_offset{topic="orders"}"#), 0.0);
    assert!(value(&s, r#"strata_log_size_bytes{topic="orders"}"#) > 12.0 * 9.0);
    assert_eq!(value(&s, r#"strata_topic_partitions_leader{topic="orders"}"#), 2.0);
    assert_eq!(value(&s, "strata_topics"), 1.0);
    assert_eq!(value(&s, "strata_partitions"), 2.0);
    assert_eq!((value(&s, "strata_partitions_leader"), value(&s, "strata_partitions_leaderless")), (2.0, 0.0));
    assert_eq!(value(&s, "strata_partitions_under_replicated"), 0.0);
    // Each produce made at least one group commit, one fsync each.
    assert!(value(&s, "strata_storage_group_commit_batches_count") >= 3.0);
    assert!(value(&s, "strata_storage_fsync_seconds_count") >= value(&s, "strata_storage_group_commit_batches_count"));
    assert_eq!(value(&s, "strata_cluster_nodes"), 1.0);
    assert_eq!(value(&s, "strata_cluster_nodes_live"), 1.0);
    assert!(value(&s, "strata_grpc_connections") >= 1.0);
    assert!(value(&s, "strata_disk_free_bytes") <= value(&s, "strata_disk_total_bytes"));
    assert!(value(&s, "process_resident_memory_bytes") > 0.0 && value(&s, "process_open_fds") > 0.0);
    assert!(s.keys().any(|k| k.starts_with("strata_build_info{")));

    // Anything else is refused plainly.
    let (status, _) = tokio::task::spawn_blocking(move || get(metrics, "/other", "GET")).await.expect("get");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = tokio::task::spawn_blocking(move || get(metrics, "/metrics", "POST")).await.expect("get");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");

    // The request log: the produces (and the refused one) and the fetches.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let fetched: u64 =
            lines.iter().filter(|l| l["op"] == "fetch").map(|l| l["records"].as_u64().unwrap_or(0)).sum();
        if lines.iter().filter(|l| l["op"] == "produce").count() == 4 && fetched == 12 {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "the request log holds {lines:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let produced: Vec<_> = lines.iter().filter(|l| l["op"] == "produce" && l["result"] == "OK").collect();
    assert_eq!(produced.len(), 3);
    let offsets: Vec<u64> = produced.iter().map(|l| l["parts"][0]["offset"].as_u64().expect("offset")).collect();
    assert_eq!(offsets, [0, 4, 8]);
    assert!(produced.iter().all(|l| l["topic"] == "orders" && l["records"] == 4 && l["parts"][0]["partition"] == 1));
    assert!(produced.iter().all(|l| l["principal"] == "User:ANONYMOUS" && l["client"] == "127.0.0.1"));
    let refused = lines.iter().find(|l| l["result"] != "OK").expect("the refused produce");
    assert_eq!((refused["topic"].as_str(), refused["reason"].as_str()), (Some("nowhere"), Some("UNKNOWN_TOPIC")));
    node.shutdown().await.expect("shutdown");
}
