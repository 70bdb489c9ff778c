//! Limits on what a client controls, on a real node over loopback gRPC:
//! each request just under a limit succeeds, just over it is refused with
//! its code and a message naming the limit, and the node keeps serving.
//! See "Limits" in docs/ARCHITECTURE.md.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use strata_client::proto as pb;
use strata_client::{Client, ClientError, TopicConfig};
use strata_record::{BatchBuilder, Compression, HEADER_LEN};
use strata_server::{LogConfig, Node, NodeConfig};
use tonic::Code;

/// The tests of this file run one at a time, so that each can compare the
/// process's (the node's) footprint before and after.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's resident memory (KiB) and open file descriptors.
fn footprint() -> (u64, usize) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    (rss, std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count())
}

/// No unbounded growth since `before`: resident memory within 128 MiB of
/// it (a refused request must not have been inflated or kept), and open
/// file descriptors within 32 of it (the active segments of the topics a
/// test creates stay open: the groups topic has 8 partitions).
async fn bounded(before: (u64, usize)) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (rss, fds) = footprint();
        if rss <= before.0 + 128 * 1024 && fds <= before.1 + 32 {
            eprintln!("footprint: RSS {} -> {rss} KiB, fds {} -> {fds}", before.0, before.1);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node grew: RSS {} -> {rss} KiB, open fds {} -> {fds}",
            before.0,
            before.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(dir: &Path) -> (Node, Client) {
    let node = Node::start(NodeConfig::single("127.0.0.1:0".parse().expect("addr"), dir.to_owned()))
        .await
        .expect("node starts");
    let client = Client::connect(&node.addr().to_string()).await.expect("connect");
    (node, client)
}

fn url(node: &Node) -> String {
    format!("http://{}", node.addr())
}

/// The error's code and reason, and its message.
fn refused<T: std::fmt::Debug>(r: strata_client::Result<T>, code: Code, reason: &str) -> String {
    let err = r.expect_err("must be refused");
    assert_eq!(err.code(), Some(code), "{err}");
    assert_eq!(err.reason(), Some(reason), "{err}");
    err.to_string()
}

fn status_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) -> String {
    let err = r.expect_err("must be refused");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(err.message().contains(needle), "'{needle}' not in: {}", err.message());
    err.message().to_owned()
}

async fn produce_one(client: &Client, topic: &str, value: &str) -> u64 {
    let record = pb::Record { value: Bytes::from(value.to_owned()), ..Default::default() };
    client.produce_records(topic, Some(0), vec![record]).await.expect("produce")[0].base_offset
}

/// The node still answers: a produce and a fetch on `topic`.
async fn still_serving(client: &Client, topic: &str) {
    let offset = produce_one(client, topic, "still here").await;
    let got = client.fetch(topic, 0, offset, 0, Duration::ZERO).await.expect("fetch");
    assert_eq!(got.records.first().map(|r| r.value.clone()), Some(Bytes::from("still here")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_floors_hold_on_create_and_alter() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, c) = start(dir.path()).await;
    let before = footprint();
    let floor = strata_storage::DEFAULT_MIN_SEGMENT_BYTES;
    let cfg = |bytes: u64, ms: u64| TopicConfig {
        segment_bytes: Some(bytes),
        segment_ms: Some(ms),
        ..TopicConfig::default()
    };
    let msg = refused(c.create_topic("seg", 1, cfg(floor - 1, 60_000)).await, Code::InvalidArgument, "INVALID_CONFIG");
    assert!(msg.contains("minimum of 1048576 bytes (storage.min_segment_bytes)"), "{msg}");
    let msg = refused(c.create_topic("seg", 1, cfg(floor, 59_999)).await, Code::InvalidArgument, "INVALID_CONFIG");
    assert!(msg.contains("minimum of 60000 ms (storage.min_segment_ms)"), "{msg}");
    c.create_topic("seg", 1, cfg(floor, 60_000)).await.expect("at the floors");
    let msg = refused(
        c.alter_topic_config("seg", TopicConfig { segment_bytes: Some(1024), ..TopicConfig::default() }).await,
        Code::InvalidArgument,
        "INVALID_CONFIG",
    );
    assert!(msg.contains("storage.min_segment_bytes"), "{msg}");
    let msg = refused(
        c.alter_topic_config("seg", TopicConfig { segment_ms: Some(1), ..TopicConfig::default() }).await,
        Code::InvalidArgument,
        "INVALID_CONFIG",
    );
    assert!(msg.contains("storage.min_segment_ms"), "{msg}");
    let config = c.describe_topic("seg").await.expect("describe").config.expect("config");
    assert_eq!((config.segment_bytes, config.segment_ms), (Some(floor), Some(60_000)), "nothing changed");
    still_serving(&c, "seg").await;
    bounded(before).await;
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_names_are_short_enough_for_their_directories() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, c) = start(dir.path()).await;
    let before = footprint();
    let longest = "n".repeat(strata_storage::MAX_TOPIC_NAME_LEN);
    assert_eq!(longest.len(), 234);
    let msg = refused(
        c.create_topic(&format!("{longest}x"), 1, TopicConfig::default()).await,
        Code::InvalidArgument,
        "INVALID_TOPIC_NAME",
    );
    assert!(msg.contains("longer than 234 characters"), "{msg}");
    // Kafka's 249 too: with `-<topic id>` its directory could pass 255 bytes.
    refused(
        c.create_topic(&"k".repeat(249), 1, TopicConfig::default()).await,
        Code::InvalidArgument,
        "INVALID_TOPIC_NAME",
    );
    c.create_topic(&longest, 1, TopicConfig::default()).await.expect("at the limit");
    still_serving(&c, &longest).await;
    // Every directory of the data directory fits in a file name.
    let topics = std::fs::read_dir(dir.path().join("topics")).expect("topics");
    for d in topics {
        let name = d.expect("entry").file_name();
        assert!(name.len() + 20 - 1 <= 255, "{name:?} could not hold the largest topic id");
    }
    bounded(before).await;
    node.shutdown().await.expect("shutdown");
}

/// A batch of one record: `random` bytes (a seeded generator), then zeros,
/// so that its payload is exactly `payload` bytes before compression.
fn batch_of(payload: usize, random: usize, compression: Compression) -> Bytes {
    let overhead = {
        let mut b = BatchBuilder::new(Compression::None);
        b.push_parts(strata_storage::now_ms(), None, &vec![0u8; payload - 16], &[]);
        b.size() - HEADER_LEN - (payload - 16)
    };
    let mut value = vec![0u8; payload - overhead];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15; // seed, fixed
    for v in value.iter_mut().take(random) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *v = x as u8;
    }
    let mut b = BatchBuilder::new(compression);
    b.push_parts(strata_storage::now_ms(), None, &value, &[]);
    assert_eq!(b.size() - HEADER_LEN, payload);
    b.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_is_bounded_in_size_and_ratio() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, c) = start(dir.path()).await;
    let before = footprint();
    c.create_topic("z", 1, TopicConfig::default()).await.expect("create");
    // max.message.bytes is 1 MiB: a batch may inflate to 8 MiB.
    let limit = 8 * 1024 * 1024;
    assert_eq!(LogConfig::default().max_uncompressed_bytes(), limit);
    // A bomb: a few KB of zstd that inflate to 64 MiB.
    let bomb = batch_of(strata_record::MAX_UNCOMPRESSED_BYTES, 0, Compression::Zstd);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let msg = refused(c.produce_batch("z", 0, bomb).await, Code::InvalidArgument, "RECORD_TOO_LARGE");
    assert!(msg.contains("above the limit of 8388608 bytes"), "{msg}");
    // Within the size limit, but 4 MiB from a few KB: the ratio.
    let msg = refused(
        c.produce_batch("z", 0, batch_of(4 * 1024 * 1024, 0, Compression::Zstd)).await,
        Code::InvalidArgument,
        "RECORD_TOO_LARGE",
    );
    assert!(msg.contains("at most 100:1"), "{msg}");
    // 100 KiB of noise keep the ratio near 80: the size limit decides.
    let at_limit = batch_of(limit, 100 * 1024, Compression::Zstd);
    assert!(at_limit.len() < 1024 * 1024 && limit / at_limit.len() < 100, "{} bytes", at_limit.len());
    let offset = c.produce_batch("z", 0, at_limit).await.expect("at the limit");
    let msg = refused(
        c.produce_batch("z", 0, batch_of(limit + 1, 100 * 1024, Compression::Zstd)).await,
        Code::InvalidArgument,
        "RECORD_TOO_LARGE",
    );
    assert!(msg.contains("8388609 bytes, above the limit of 8388608 bytes"), "{msg}");
    // Up to 1 MiB any ratio goes.
    c.produce_batch("z", 0, batch_of(1024 * 1024, 0, Compression::Zstd)).await.expect("1 MiB of zeros");
    let got = c.fetch("z", 0, offset, 0, Duration::ZERO).await.expect("fetch");
    assert_eq!(got.records[0].value.len(), limit - 7);
    still_serving(&c, "z").await;
    bounded(before).await;
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoded_fetch_is_bounded_by_max_bytes_in_decoded_records() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, c) = start(dir.path()).await;
    let before = footprint();
    c.create_topic("d", 1, TopicConfig::default()).await.expect("create");
    // 1,000 records of 1 KiB in one zstd batch of a few KB (under 1 MiB
    // decompressed: any ratio goes).
    let mut b = BatchBuilder::new(Compression::Zstd);
    for i in 0..1000 {
        b.push_parts(strata_storage::now_ms(), None, format!("{i:>1024}").as_bytes(), &[]);
    }
    let batch = b.build();
    assert!(batch.len() < 64 * 1024, "{}", batch.len());
    c.produce_batch("d", 0, batch).await.expect("produce");
    let mut consumer = pb::consumer_client::ConsumerClient::connect(url(&node)).await.expect("connect");
    let fetch = |offset: u64| pb::FetchRequest {
        topic: "d".into(),
        partition: 0,
        offset,
        max_bytes: 64 * 1024,
        max_wait_ms: 0,
        decode: true,
    };
    let mut offset = 0;
    let mut rounds = 0;
    while offset < 1000 {
        let r = consumer.fetch(fetch(offset)).await.expect("fetch").into_inner();
        let bytes: usize = r.records.iter().map(|r| r.value.len()).sum();
        assert!(!r.records.is_empty() && bytes <= 64 * 1024, "{bytes} bytes of {} records", r.records.len());
        assert_eq!(r.records[0].offset, offset);
        assert_eq!(r.next_offset, r.records.last().expect("records").offset + 1);
        offset = r.next_offset;
        rounds += 1;
        assert!(rounds <= 100, "stuck at {offset}");
    }
    assert!(rounds >= 15, "{rounds} fetches");
    bounded(before).await;
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_alter_delete_or_read_the_groups_topic() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, c) = start(dir.path()).await;
    let before = footprint();
    c.create_topic("t", 1, TopicConfig::default()).await.expect("create");
    let offsets = [("t".to_owned(), 0, 0)];
    c.commit_offsets("g", "", 0, &offsets).await.expect("a commit creates the groups topic");
    let groups = "__strata_groups";
    let msg = refused(
        c.alter_topic_config(groups, TopicConfig { retention_ms: Some(1000), ..TopicConfig::default() }).await,
        Code::PermissionDenied,
        "RESERVED_TOPIC",
    );
    assert!(msg.contains(groups), "{msg}");
    refused(c.delete_topic(groups).await, Code::PermissionDenied, "RESERVED_TOPIC");
    refused(c.fetch(groups, 0, 0, 0, Duration::ZERO).await, Code::PermissionDenied, "RESERVED_TOPIC");
    let mut consumer = pb::consumer_client::ConsumerClient::connect(url(&node)).await.expect("connect");
    let sub = pb::SubscribeRequest { topic: groups.into(), partition: 0, offset: 0, ..Default::default() };
    let err = consumer.subscribe(sub).await.expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let config = c.describe_topic(groups).await.expect("describe").config.expect("config");
    assert_eq!(config.retention_ms, Some(-1), "retention stays off");
    let committed = c.fetch_offsets("g", &[]).await.expect("offsets");
    assert_eq!(committed.len(), 1, "the group's offsets are still there");
    bounded(before).await;
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_sent_to_clients_name_no_path_of_the_data_directory() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, c) = start(dir.path()).await;
    let before = footprint();
    c.create_topic("c", 1, TopicConfig::default()).await.expect("create");
    for i in 0..3 {
        produce_one(&c, "c", &format!("value-{i}")).await;
    }
    // Flip a byte of the last batch (a record), behind the node's back.
    let topic_dir = std::fs::read_dir(dir.path().join("topics"))
        .expect("topics")
        .map(|d| d.expect("entry").path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("c-")))
        .expect("the topic's directory");
    let segment = topic_dir.join("0").join(format!("{:020}.log", 0));
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment).expect("open");
    let len = file.metadata().expect("metadata").len();
    let mut byte = [0u8; 1];
    let at = len - 4;
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x55], at).expect("write");
    let err = c.fetch("c", 0, 0, 0, Duration::ZERO).await.expect_err("corrupt");
    let root = dir.path().to_string_lossy().into_owned();
    match &err {
        ClientError::Server { code, message, .. } => {
            assert_eq!(*code, Code::DataLoss, "{err}");
            assert!(!message.contains(&root) && !message.contains('/'), "a path reached the client: {message}");
            assert!(message.contains("topic 'c' partition 0"), "{message}");
            assert!(message.contains("the segment starting at offset 0 at byte"), "{message}");
        }
        other => panic!("unexpected error {other}"),
    }
    // The partition stays failed; its status names no path either.
    let status = c.describe_topic("c").await.expect("describe").partitions[0].status.clone();
    assert!(status.starts_with("failed") && !status.contains('/'), "{status}");
    c.create_topic("other", 1, TopicConfig::default()).await.expect("the node serves other topics");
    still_serving(&c, "other").await;
    bounded(before).await;
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_identifiers_and_commit_metadata_are_bounded() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, c) = start(dir.path()).await;
    let before = footprint();
    c.create_topic("t", 1, TopicConfig::default()).await.expect("create");
    let mut groups = pb::groups_client::GroupsClient::connect(url(&node)).await.expect("connect");
    let commit = |member_id: usize, metadata: usize| pb::CommitOffsetsRequest {
        group: "g".into(),
        member_id: "m".repeat(member_id),
        member_epoch: 0,
        offsets: vec![pb::OffsetCommit { topic: "t".into(), partition: 0, offset: 0, metadata: "x".repeat(metadata) }],
    };
    groups.commit_offsets(commit(0, 4096)).await.expect("metadata at the limit");
    status_refused(
        groups.commit_offsets(commit(0, 4097)).await,
        Code::InvalidArgument,
        "above the limit of 4096 bytes",
    );
    status_refused(
        groups.commit_offsets(commit(256, 0)).await,
        Code::InvalidArgument,
        "member_id is 256 bytes, above the limit of 255 bytes",
    );
    let fetched = groups
        .fetch_offsets(pb::FetchOffsetsRequest { group: "g".into(), partitions: vec![] })
        .await
        .expect("offsets")
        .into_inner();
    assert_eq!(fetched.offsets[0].metadata.len(), 4096, "the refused commits changed nothing");

    let join = |client_id: usize| pb::GroupSessionRequest {
        kind: Some(pb::group_session_request::Kind::Join(pb::GroupJoin {
            group: "members".into(),
            topics: vec!["t".into()],
            client_id: "c".repeat(client_id),
            ..Default::default()
        })),
    };
    let err = groups.session(futures::stream::iter(vec![join(256)])).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("client_id is 256 bytes, above the limit of 255 bytes"), "{}", err.message());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(join(255)).await.expect("send");
    let mut answers =
        groups.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("joins").into_inner();
    let first = answers.next().await.expect("an answer").expect("joined");
    assert!(!first.member_id.is_empty());
    drop(tx);

    let share = |consumer: usize| pb::ShareFetchRequest {
        group: "q".into(),
        topic: "t".into(),
        consumer_id: "c".repeat(consumer),
        max_records: 1,
        ..Default::default()
    };
    status_refused(groups.share_fetch(share(256)).await, Code::InvalidArgument, "consumer_id is 256 bytes");
    groups.share_fetch(share(255)).await.expect("consumer id at the limit");
    let ack = pb::ShareAckRequest { group: "q".into(), topic: "t".into(), consumer_id: "c".repeat(256), acks: vec![] };
    status_refused(groups.share_ack(ack).await, Code::InvalidArgument, "consumer_id is 256 bytes");
    still_serving(&c, "t").await;
    bounded(before).await;
    node.shutdown().await.expect("shutdown");
}
