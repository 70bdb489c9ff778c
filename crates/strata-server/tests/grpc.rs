//! A real node on a loopback port, driven through the Rust client and raw
//! gRPC: produce/fetch/subscribe/offsets/admin, error statuses, health and
//! reflection.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use strata_client::proto as pb;
use strata_client::{Acks, Client, Compression, PartitionConsumer, ProducerConfig, Record, StartOffset, TopicConfig};
use strata_server::{LogConfig, Node, NodeConfig};
use tonic::Code;

struct TestNode {
    node: Node,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn start() -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(NodeConfig::single("127.0.0.1:0".parse().expect("addr"), dir.path().to_owned()))
        .await
        .expect("node starts");
    let client = Client::connect(&node.addr().to_string()).await.expect("connect");
    TestNode { node, client, _dir: dir }
}

fn rec(key: Option<&str>, value: &str) -> pb::Record {
    pb::Record {
        key: key.map(|k| Bytes::from(k.to_owned())),
        value: Bytes::from(value.to_owned()),
        ..Default::default()
    }
}

fn expect_code<T: std::fmt::Debug>(r: strata_client::Result<T>, code: Code, reason: &str) -> String {
    let err = r.expect_err("must fail");
    assert_eq!(err.code(), Some(code), "{err}");
    assert_eq!(err.reason(), Some(reason), "{err}");
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_are_fetched_at_their_offsets() {
    let t = start().await;
    t.client.create_topic("orders", 3, TopicConfig::default()).await.expect("create");
    let records: Vec<_> = (0..30).map(|i| rec(Some(&format!("user-{}", i % 7)), &format!("v{i}"))).collect();
    let appends = t.client.produce_records("orders", None, records).await.expect("produce");
    assert_eq!(appends.iter().map(|a| a.record_count).sum::<u32>(), 30);
    // Same key, same partition: every record of user-3 is in one partition.
    let mut seen = 0;
    for p in 0..3 {
        let got = t.client.fetch("orders", p, 0, 0, Duration::ZERO).await.expect("fetch");
        for (i, r) in got.records.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            let key = String::from_utf8_lossy(r.key.as_deref().expect("key")).into_owned();
            let expected = strata_record::partition_for_key(key.as_bytes(), 3);
            assert_eq!(expected, p, "key {key} in partition {p}");
            assert!(r.timestamp_ms > 0, "the server stamps records without a timestamp");
        }
        seen += got.records.len();
        assert_eq!(got.high_watermark, got.records.len() as u64);
    }
    assert_eq!(seen, 30);
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_batches_compresses_and_reports_offsets() {
    let t = start().await;
    t.client.create_topic("events", 2, TopicConfig::default()).await.expect("create");
    // acks=leader on one node: acknowledged once fsync'd there.
    for (compression, acks) in
        [(Compression::None, Acks::Quorum), (Compression::Lz4, Acks::Leader), (Compression::Zstd, Acks::Quorum)]
    {
        let producer = t.client.producer(ProducerConfig { compression, acks, ..ProducerConfig::default() });
        let mut deliveries = Vec::new();
        for i in 0..500 {
            let record = Record {
                key: Some(Bytes::from(format!("k{}", i % 10))),
                value: Bytes::from(format!("{compression:?}-{i}")),
                ..Record::default()
            };
            deliveries.push((i, producer.send("events", None, record).await.expect("queued")));
        }
        producer.flush().await.expect("flush");
        for (i, d) in deliveries {
            let meta = d.await.expect("acknowledged");
            let got = t.client.fetch("events", meta.partition, meta.offset, 1, Duration::ZERO).await.expect("fetch");
            assert_eq!(got.records[0].offset, meta.offset);
            assert_eq!(got.records[0].value, Bytes::from(format!("{compression:?}-{i}")));
        }
    }
    let mut consumer =
        PartitionConsumer::new(t.client.clone(), "events", 0, StartOffset::Earliest).await.expect("consumer");
    let mut total = 0;
    while total < 1 {
        total += consumer.poll().await.expect("poll").len();
    }
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_statuses_and_writes_nothing() {
    let t = start().await;
    let c = &t.client;
    let small = TopicConfig { max_message_bytes: Some(200), ..TopicConfig::default() };
    c.create_topic("t", 2, small).await.expect("create");
    // What a new topic holds before any produce (with Raft: its first entries).
    let sizes = |d: &pb::TopicDescription| d.partitions.iter().map(|p| p.size_bytes).collect::<Vec<_>>();
    let before = sizes(&c.describe_topic("t").await.expect("describe"));

    let msg = expect_code(c.produce_records("nope", None, vec![rec(None, "x")]).await, Code::NotFound, "UNKNOWN_TOPIC");
    assert_eq!(msg, "unknown topic 'nope'");
    let msg =
        expect_code(c.produce_records("t", Some(5), vec![rec(None, "x")]).await, Code::NotFound, "UNKNOWN_PARTITION");
    assert!(msg.contains("no partition 5"), "{msg}");
    expect_code(
        c.create_topic("bad/name", 1, TopicConfig::default()).await,
        Code::InvalidArgument,
        "INVALID_TOPIC_NAME",
    );
    expect_code(
        c.create_topic("zero", 0, TopicConfig::default()).await,
        Code::InvalidArgument,
        "INVALID_PARTITION_COUNT",
    );
    expect_code(c.create_topic("t", 1, TopicConfig::default()).await, Code::AlreadyExists, "TOPIC_ALREADY_EXISTS");
    let bad_cfg = TopicConfig { retention_ms: Some(0), ..TopicConfig::default() };
    expect_code(c.create_topic("cfg", 1, bad_cfg).await, Code::InvalidArgument, "INVALID_CONFIG");
    let big = rec(None, &"x".repeat(500));
    let msg = expect_code(c.produce_records("t", Some(0), vec![big]).await, Code::InvalidArgument, "RECORD_TOO_LARGE");
    assert!(msg.contains("max_message_bytes"), "{msg}");
    expect_code(c.produce_records("t", Some(0), vec![]).await, Code::InvalidArgument, "INVALID_REQUEST");
    let batch =
        strata_record::encode(&[Record { value: Bytes::from_static(b"v"), ..Record::default() }], Compression::None);
    let mut corrupt = batch.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    expect_code(c.produce_batch("t", 0, Bytes::from(corrupt)).await, Code::InvalidArgument, "INVALID_REQUEST");
    let mut rpc = pb::producer_client::ProducerClient::connect(format!("http://{}", t.node.addr())).await.expect("rpc");
    let no_partition = pb::ProduceRequest { topic: "t".into(), batch: batch.clone(), ..Default::default() };
    let status = rpc.produce(no_partition).await.expect_err("needs a partition");
    assert_eq!(status.code(), Code::InvalidArgument);
    let both = pb::ProduceRequest {
        topic: "t".into(),
        partition: Some(0),
        batch,
        records: vec![rec(None, "x")],
        ..Default::default()
    };
    assert_eq!(rpc.produce(both).await.expect_err("both").code(), Code::InvalidArgument);
    let bad_acks =
        pb::ProduceRequest { topic: "t".into(), records: vec![rec(None, "x")], acks: 9, ..Default::default() };
    let status = rpc.produce(bad_acks).await.expect_err("unknown acks");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("unknown acks value 9"), "{}", status.message());
    let msg = expect_code(c.fetch("t", 0, 7, 0, Duration::ZERO).await, Code::OutOfRange, "OFFSET_OUT_OF_RANGE");
    assert!(msg.contains("valid offsets are 0 to 0"), "{msg}");
    let unspecified = c.list_offsets("t", &[], pb::OffsetSpec::Unspecified, 0).await;
    expect_code(unspecified, Code::InvalidArgument, "INVALID_REQUEST");
    // None of the rejected requests wrote anything.
    let d = c.describe_topic("t").await.expect("describe");
    assert!(d.partitions.iter().all(|p| p.high_watermark == 0));
    assert_eq!(sizes(&d), before);
    assert_eq!(c.list_topics().await.expect("list").len(), 1);
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_returns_as_soon_as_a_record_arrives() {
    let t = start().await;
    t.client.create_topic("lp", 1, TopicConfig::default()).await.expect("create");
    let fetch = {
        let c = t.client.clone();
        tokio::spawn(async move { c.fetch("lp", 0, 0, 0, Duration::from_secs(25)).await })
    };
    // Wait until the fetch is parked, then produce.
    tokio::task::yield_now().await;
    t.client.produce_records("lp", Some(0), vec![rec(None, "hello")]).await.expect("produce");
    let got =
        tokio::time::timeout(Duration::from_secs(20), fetch).await.expect("returned").expect("join").expect("fetch");
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0].value, Bytes::from_static(b"hello"));
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_tails_new_records_in_order() {
    let t = start().await;
    t.client.create_topic("tail", 1, TopicConfig::default()).await.expect("create");
    t.client.produce_records("tail", Some(0), vec![rec(None, "old")]).await.expect("produce");
    let mut stream = t.client.subscribe("tail", 0, StartOffset::Latest).await.expect("subscribe");
    for i in 0..5 {
        t.client.produce_records("tail", Some(0), vec![rec(None, &format!("new{i}"))]).await.expect("produce");
    }
    for i in 0..5u64 {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("record arrives")
            .expect("stream open")
            .expect("record");
        assert_eq!(r.offset, 1 + i);
        assert_eq!(r.value, Bytes::from(format!("new{i}")));
    }
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_finds_earliest_latest_and_by_timestamp() {
    let t = start().await;
    t.client.create_topic("ts", 1, TopicConfig::default()).await.expect("create");
    let records: Vec<_> = [1_000, 2_000, 3_000, 4_000]
        .iter()
        .map(|ts| pb::Record { value: Bytes::from(format!("{ts}")), timestamp_ms: *ts, ..Default::default() })
        .collect();
    t.client.produce_records("ts", Some(0), records).await.expect("produce");
    let at = |spec, ts| {
        let c = t.client.clone();
        async move { c.list_offsets("ts", &[0], spec, ts).await.expect("list")[0] }
    };
    assert_eq!(at(pb::OffsetSpec::Earliest, 0).await.offset, 0);
    assert_eq!(at(pb::OffsetSpec::Latest, 0).await.offset, 4);
    let found = at(pb::OffsetSpec::Timestamp, 2_500).await;
    assert_eq!((found.offset, found.timestamp_ms, found.found), (2, 3_000, true));
    let none = at(pb::OffsetSpec::Timestamp, 9_000).await;
    assert_eq!((none.offset, none.found), (4, false));
    let mut consumer =
        PartitionConsumer::new(t.client.clone(), "ts", 0, StartOffset::Timestamp(2_000)).await.expect("consumer");
    let got = consumer.poll().await.expect("poll");
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1, 2, 3]);
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_stream_keeps_order_and_answers_errors_in_band() {
    let t = start().await;
    t.client.create_topic("s", 1, TopicConfig::default()).await.expect("create");
    let mut rpc = pb::producer_client::ProducerClient::connect(format!("http://{}", t.node.addr())).await.expect("rpc");
    let requests: Vec<pb::ProduceRequest> = (0..50u64)
        .map(|i| pb::ProduceRequest {
            topic: "s".into(),
            partition: Some(if i == 25 { 9 } else { 0 }),
            records: vec![rec(None, &format!("r{i}"))],
            request_id: i,
            ..Default::default()
        })
        .collect();
    let mut responses = rpc.produce_stream(futures::stream::iter(requests)).await.expect("stream").into_inner();
    let mut by_id = std::collections::BTreeMap::new();
    while let Some(r) = responses.next().await {
        let r = r.expect("response");
        by_id.insert(r.request_id, r);
    }
    assert_eq!(by_id.len(), 50);
    let err = by_id[&25].error.as_ref().expect("request 25 failed");
    assert_eq!(err.code, Code::NotFound as i32);
    assert_eq!(err.reason, "UNKNOWN_PARTITION");
    let offsets: Vec<u64> = by_id.iter().filter(|(id, _)| **id != 25).map(|(_, r)| r.appends[0].base_offset).collect();
    assert_eq!(offsets, (0..49).collect::<Vec<_>>(), "offsets follow request order");
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_alters_describes_and_deletes_topics() {
    let t = start().await;
    let c = &t.client;
    let segment_bytes = Some(2 << 20);
    c.create_topic("a", 2, TopicConfig { segment_bytes, ..TopicConfig::default() }).await.expect("create");
    let d = c.describe_topic("a").await.expect("describe");
    let config = d.config.expect("config");
    assert_eq!(config.segment_bytes, segment_bytes);
    assert_eq!(config.retention_ms, Some(LogConfig::default().retention_ms));
    assert_eq!(d.partitions.len(), 2);
    assert!(d.partitions.iter().all(|p| p.status == "online"));
    let altered = c
        .alter_topic_config("a", TopicConfig { retention_bytes: Some(1 << 20), ..TopicConfig::default() })
        .await
        .expect("alter");
    assert_eq!(altered.config.expect("config").retention_bytes, Some(1 << 20));
    expect_code(c.alter_topic_config("a", TopicConfig::default()).await, Code::InvalidArgument, "INVALID_REQUEST");
    c.delete_topic("a").await.expect("delete");
    expect_code(c.describe_topic("a").await, Code::NotFound, "UNKNOWN_TOPIC");
    expect_code(c.delete_topic("a").await, Code::NotFound, "UNKNOWN_TOPIC");
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let t = start().await;
    let url = format!("http://{}", t.node.addr());
    let channel = tonic::transport::Endpoint::from_shared(url).expect("url").connect().await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest { service: "strata.v1.Producer".into() })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(resp.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        reflection.server_reflection_info(futures::stream::iter(vec![req])).await.expect("info").into_inner();
    let resp = stream.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["strata.v1.Producer", "strata.v1.Consumer", "strata.v1.Admin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    t.node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_ends_with_an_error_when_its_topic_is_deleted() {
    let t = start().await;
    t.client.create_topic("doomed", 1, TopicConfig::default()).await.expect("create");
    let mut stream = t.client.subscribe("doomed", 0, StartOffset::Earliest).await.expect("subscribe");
    t.client.delete_topic("doomed").await.expect("delete");
    let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the subscription is woken, not left waiting")
        .expect("an item");
    let err = item.expect_err("an error");
    assert!(err.to_string().contains("the topic was deleted"), "{err}");
    t.node.shutdown().await.expect("shutdown");
}
