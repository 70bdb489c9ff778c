//! Consumer and share groups on a real node over loopback gRPC: committed
//! offsets (their durability across kill -9 of every node is in
//! crates/strata/tests/cluster.rs), resets (refused with live members),
//! fencing of a member that is not the owner, and share-group delivery with
//! acknowledgement, release, redelivery and dead letters.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use strata_client::proto as pb;
use strata_client::{Client, GroupConsumerConfig, GroupRecord, ResetTo, TopicConfig};
use strata_server::{Node, NodeConfig, StorageLimits};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn start(dir: &Path) -> (Node, Client) {
    start_with_retention_every(dir, Duration::from_secs(3600)).await
}

async fn start_with_retention_every(dir: &Path, retention_check_interval: Duration) -> (Node, Client) {
    let node = Node::start(NodeConfig {
        // Retention tests use 4 KiB segments, below the default floor.
        storage: StorageLimits { min_segment_bytes: 4096, ..StorageLimits::default() },
        retention_check_interval,
        ..NodeConfig::single("127.0.0.1:0".parse().expect("addr"), dir.to_owned())
    })
    .await
    .expect("node starts");
    let client = Client::connect(&node.addr().to_string()).await.expect("connect");
    (node, client)
}

async fn produce(client: &Client, topic: &str, partition: u32, values: &[&str]) -> u64 {
    let records = values
        .iter()
        .map(|v| pb::Record { value: Bytes::from(v.to_string()), ..Default::default() })
        .collect::<Vec<_>>();
    let appends = client.produce_records(topic, Some(partition), records).await.expect("produce");
    appends[0].base_offset
}

fn committed(offsets: &[pb::CommittedOffset]) -> BTreeMap<(String, u32), u64> {
    offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.offset)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_are_fetched_reset_and_described() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("orders", 2, TopicConfig::default()).await.expect("create");
    produce(&client, "orders", 0, &["a", "b", "c"]).await;
    let before_ms = strata_storage::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await; // distinct timestamps, not a synchronisation
    produce(&client, "orders", 0, &["d", "e"]).await;

    client.commit_offsets("billing", "", 0, &[("orders".into(), 0, 2), ("orders".into(), 1, 0)]).await.expect("commit");
    let got = committed(&client.fetch_offsets("billing", &[]).await.expect("fetch offsets"));
    assert_eq!(got, BTreeMap::from([(("orders".into(), 0), 2), (("orders".into(), 1), 0)]));

    let reset = |to| {
        let client = client.clone();
        async move { committed(&client.reset_offsets("billing", "orders", &[0], to, false, false).await.expect("reset")) }
    };
    assert_eq!(reset(ResetTo::Latest).await[&("orders".into(), 0)], 5);
    assert_eq!(reset(ResetTo::Earliest).await[&("orders".into(), 0)], 0);
    assert_eq!(reset(ResetTo::Shift(4)).await[&("orders".into(), 0)], 4);
    assert_eq!(reset(ResetTo::Shift(-10)).await[&("orders".into(), 0)], 0);
    // The records at or after the time: the second produce's.
    assert_eq!(reset(ResetTo::Timestamp(before_ms + 1)).await[&("orders".into(), 0)], 3);
    let err = client
        .reset_offsets("billing", "orders", &[0], ResetTo::Offset(99), false, false)
        .await
        .expect_err("must fail");
    assert_eq!(err.code(), Some(Code::OutOfRange), "{err}");
    let got = committed(&client.fetch_offsets("billing", &[]).await.expect("fetch offsets"));
    assert_eq!(got[&("orders".into(), 0)], 3, "a refused reset changes nothing");

    let groups = client.list_groups().await.expect("list");
    assert!(groups.iter().any(|g| g.group == "billing" && g.kind == "consumer"), "{groups:?}");
    let d = client.describe_group("billing").await.expect("describe");
    let p0 = d.partitions.iter().find(|p| p.topic == "orders" && p.partition == 0).expect("partition 0");
    assert_eq!((p0.committed, p0.log_end_offset, p0.lag), (Some(3), 5, 2));
    node.shutdown().await.expect("shutdown");
}

/// A member's session: the join's answer, and the sender that keeps it open.
async fn join(
    client: &Client,
    group: &str,
    topic: &str,
) -> (mpsc::Sender<pb::GroupSessionRequest>, tonic::Streaming<pb::GroupSessionResponse>, pb::GroupSessionResponse) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::GroupSessionRequest {
        kind: Some(pb::group_session_request::Kind::Join(pb::GroupJoin {
            group: group.into(),
            topics: vec![topic.into()],
            session_timeout_ms: 10_000,
            ..Default::default()
        })),
    })
    .await
    .expect("send join");
    let mut rpc = pb::groups_client::GroupsClient::connect(format!("http://{}", client.addr())).await.expect("connect");
    let mut answers = rpc.session(ReceiverStream::new(rx)).await.expect("session").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("an answer in time")
        .expect("no error")
        .expect("an answer");
    (tx, answers, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_block_resets_and_strangers_cannot_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("events", 3, TopicConfig::default()).await.expect("create");
    let (_tx, _answers, first) = join(&client, "readers", "events").await;
    assert!(!first.member_id.is_empty());
    let owned: Vec<u32> = first.assignment.iter().flat_map(|a| a.partitions.clone()).collect();
    assert_eq!(owned.len(), 3, "a lone member gets every partition: {first:?}");

    let err =
        client.reset_offsets("readers", "events", &[], ResetTo::Earliest, false, false).await.expect_err("must fail");
    assert_eq!(err.reason(), Some("GROUP_NOT_EMPTY"), "{err}");
    client
        .reset_offsets("readers", "events", &[], ResetTo::Earliest, true, false)
        .await
        .expect("a forced reset goes through");

    // The member commits with its epoch; a stale epoch or an unknown member
    // is refused and changes nothing.
    client
        .commit_offsets("readers", &first.member_id, first.member_epoch, &[("events".into(), 0, 1)])
        .await
        .expect("commit");
    let stale =
        client.commit_offsets("readers", &first.member_id, first.member_epoch + 7, &[("events".into(), 0, 9)]).await;
    assert_eq!(stale.expect_err("must fail").reason(), Some("FENCED_MEMBER"));
    let stranger = client.commit_offsets("readers", "nobody", 1, &[("events".into(), 0, 9)]).await;
    assert!(stranger.is_err());
    let tool = client.commit_offsets("readers", "", 0, &[("events".into(), 0, 9)]).await;
    assert!(tool.is_err(), "a tool cannot commit while the group has members");
    let got = committed(&client.fetch_offsets("readers", &[]).await.expect("fetch offsets"));
    assert_eq!(got[&("events".into(), 0)], 1);
    node.shutdown().await.expect("shutdown");
}

fn fetch_req(consumer: &str, max_records: u32, acks: Vec<pb::Acknowledgement>) -> pb::ShareFetchRequest {
    pb::ShareFetchRequest {
        group: "workers".into(),
        topic: "jobs".into(),
        consumer_id: consumer.into(),
        max_records,
        max_wait_ms: 2_000,
        acks,
        lock_timeout_ms: 60_000,
        max_deliveries: 2,
        dead_letter_topic: String::new(),
    }
}

fn ack(r: &pb::SharedRecord, kind: pb::AckKind) -> pb::Acknowledgement {
    pb::Acknowledgement { partition: r.partition, offset: r.record.as_ref().map_or(0, |x| x.offset), kind: kind as i32 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_groups_deliver_each_record_to_one_consumer_and_dead_letter_poison() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("jobs", 1, TopicConfig::default()).await.expect("create");
    produce(&client, "jobs", 0, &["j0", "j1", "j2", "j3", "poison"]).await;

    // Two consumers with a prefetch of 2 each: disjoint records.
    let a = client.share_fetch(fetch_req("a", 2, vec![])).await.expect("fetch a");
    let b = client.share_fetch(fetch_req("b", 2, vec![])).await.expect("fetch b");
    let offsets = |r: &pb::ShareFetchResponse| -> Vec<u64> {
        r.records.iter().map(|x| x.record.as_ref().map_or(u64::MAX, |x| x.offset)).collect()
    };
    assert_eq!(offsets(&a), vec![0, 1]);
    assert_eq!(offsets(&b), vec![2, 3]);
    // Prefetch is a limit: a holds 2, so it gets nothing more until it acks.
    let none =
        client.share_fetch(pb::ShareFetchRequest { max_wait_ms: 0, ..fetch_req("a", 2, vec![]) }).await.expect("fetch");
    assert!(none.records.is_empty(), "{none:?}");

    // a accepts both and gets the last record; b releases 2 (redelivered) and accepts 3.
    let a2 = client
        .share_fetch(fetch_req("a", 2, a.records.iter().map(|r| ack(r, pb::AckKind::Accept)).collect()))
        .await
        .expect("ack + fetch");
    assert!(a2.failed.is_empty(), "{a2:?}");
    assert!(offsets(&a2).contains(&4), "{a2:?}");
    let failed = client
        .share_ack(
            "workers",
            "jobs",
            "b",
            &[ack(&b.records[0], pb::AckKind::Release), ack(&b.records[1], pb::AckKind::Accept)],
        )
        .await
        .expect("ack");
    assert!(failed.is_empty(), "{failed:?}");
    // Acknowledging twice is refused for that record.
    let again =
        client.share_ack("workers", "jobs", "b", &[ack(&b.records[1], pb::AckKind::Accept)]).await.expect("ack");
    assert_eq!(again.len(), 1);

    // a now holds 2 (redelivered, delivery 2) and 4 (poison); it accepts 2 and releases the poison.
    let held = client.share_fetch(fetch_req("a", 2, vec![])).await.expect("fetch");
    let mut all: Vec<&pb::SharedRecord> = a2.records.iter().chain(held.records.iter()).collect();
    all.sort_by_key(|r| r.record.as_ref().map_or(0, |x| x.offset));
    let by_offset: BTreeMap<u64, &pb::SharedRecord> =
        all.iter().map(|r| (r.record.as_ref().map_or(0, |x| x.offset), *r)).collect();
    assert_eq!(by_offset[&2].delivery_count, 2);
    let mut acks = vec![ack(by_offset[&2], pb::AckKind::Accept), ack(by_offset[&4], pb::AckKind::Release)];
    let failed = client.share_ack("workers", "jobs", "a", &acks).await.expect("ack");
    assert!(failed.is_empty(), "{failed:?}");
    // Delivered a second time (the limit): released again, it goes to the dead-letter topic.
    let last = client.share_fetch(fetch_req("b", 5, vec![])).await.expect("fetch");
    assert_eq!(offsets(&last), vec![4]);
    assert_eq!(last.records[0].delivery_count, 2);
    acks = vec![ack(&last.records[0], pb::AckKind::Release)];
    assert!(client.share_ack("workers", "jobs", "b", &acks).await.expect("ack").is_empty());

    let dlq = client.fetch("jobs.workers.dlq", 0, 0, 1 << 20, Duration::from_secs(5)).await.expect("dlq fetch");
    assert_eq!(dlq.records.len(), 1);
    assert_eq!(dlq.records[0].value, Bytes::from_static(b"poison"));
    // Nothing is left to deliver.
    let empty =
        client.share_fetch(pb::ShareFetchRequest { max_wait_ms: 0, ..fetch_req("c", 5, vec![]) }).await.expect("fetch");
    assert!(empty.records.is_empty(), "{empty:?}");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_never_acknowledged_is_delivered_again_after_its_lock_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("slow", 1, TopicConfig::default()).await.expect("create");
    produce(&client, "slow", 0, &["only"]).await;
    let req = |consumer: &str, wait_ms: u32| pb::ShareFetchRequest {
        group: "q".into(),
        topic: "slow".into(),
        consumer_id: consumer.into(),
        max_records: 1,
        max_wait_ms: wait_ms,
        lock_timeout_ms: 1_000,
        ..Default::default()
    };
    let first = client.share_fetch(req("sleepy", 0)).await.expect("fetch");
    assert_eq!(first.records.len(), 1);
    // Another consumer waits (long poll) and gets it once the lock expired.
    let second = client.share_fetch(req("other", 15_000)).await.expect("fetch");
    assert_eq!(second.records.len(), 1, "{second:?}");
    assert_eq!(second.records[0].delivery_count, 2);
    // The first consumer's late acknowledgement is refused.
    let late =
        client.share_ack("q", "slow", "sleepy", &[ack(&first.records[0], pb::AckKind::Accept)]).await.expect("ack");
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(
        client
            .share_ack("q", "slow", "other", &[ack(&second.records[0], pb::AckKind::Accept)])
            .await
            .expect("ack")
            .is_empty()
    );
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_a_share_group_acknowledge_every_record_exactly_once() {
    const RECORDS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("work", 3, TopicConfig::default()).await.expect("create");
    for p in 0..3u32 {
        let values: Vec<String> = (0..RECORDS / 3).map(|i| format!("{p}-{i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        produce(&client, "work", p, &refs).await;
    }
    let mut tasks = Vec::new();
    for c in 0..3 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut acks = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let resp = client
                    .share_fetch(pb::ShareFetchRequest {
                        group: "pool".into(),
                        topic: "work".into(),
                        consumer_id: format!("c{c}"),
                        max_records: 7,
                        max_wait_ms: 300,
                        acks: std::mem::take(&mut acks),
                        ..Default::default()
                    })
                    .await
                    .expect("fetch");
                assert!(resp.failed.is_empty(), "{resp:?}");
                if resp.records.is_empty() {
                    break; // every record was handed out and acknowledged, or is held by another consumer
                }
                for r in &resp.records {
                    got.push(r.record.as_ref().map(|x| x.value.clone()).unwrap_or_default());
                    acks.push(ack(r, pb::AckKind::Accept));
                }
                assert!(std::time::Instant::now() < deadline, "the queue did not drain in time");
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("consumer"));
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a record was delivered to two consumers");
    assert_eq!(all.len(), RECORDS);
    let d = client.describe_group("pool").await.expect("describe");
    for p in &d.partitions {
        assert_eq!((p.lag, p.in_flight), (0, 0), "{p:?}");
    }
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_partitions_move_when_it_dies_and_uncommitted_records_are_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("feed", 2, TopicConfig::default()).await.expect("create");
    for p in 0..2 {
        produce(&client, "feed", p, &["r0", "r1", "r2"]).await;
    }
    let mut first = client.group_consumer(GroupConsumerConfig::new("g", &["feed"])).await.expect("join");
    // A lone member reads both partitions; it commits partition 0 only.
    let mut read: Vec<GroupRecord> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read.len() < 6 {
        read.extend(first.poll().await.expect("poll"));
        assert!(std::time::Instant::now() < deadline, "read {} records", read.len());
    }
    let p0: Vec<GroupRecord> = read.into_iter().filter(|r| r.partition == 0).collect();
    first.commit_through(&p0).await.expect("commit");

    // A second member joins: the sticky assignor moves one partition to it.
    let mut second = client.group_consumer(GroupConsumerConfig::new("g", &["feed"])).await.expect("join");
    // The first member dies without committing partition 1.
    drop(first);
    let mut again: Vec<(u32, u64)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while again.len() < 3 {
        for r in second.poll().await.expect("poll") {
            again.push((r.partition, r.record.offset));
        }
        assert!(std::time::Instant::now() < deadline, "second member read {again:?}, holds {:?}", second.assignment());
    }
    // Partition 0 was committed: nothing of it comes again; partition 1 comes again from 0.
    assert_eq!(again, vec![(1, 0), (1, 1), (1, 2)]);
    assert_eq!(second.assignment().len(), 2);
    second.commit().await.expect("commit");
    second.close().await.expect("close");
    let got = committed(&client.fetch_offsets("g", &[]).await.expect("fetch offsets"));
    assert_eq!(got, BTreeMap::from([(("feed".into(), 0), 3), (("feed".into(), 1), 3)]));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_read_every_record_and_auto_commit_records_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("news", 2, TopicConfig::default()).await.expect("create");
    for p in 0..2 {
        produce(&client, "news", p, &["x", "y"]).await;
    }
    async fn read_all(client: &Client, group: &str, auto: bool) -> Vec<(u32, u64)> {
        let mut config = GroupConsumerConfig::new(group, &["news"]);
        if auto {
            config.auto_commit = Some(Duration::ZERO);
        }
        let mut c = client.group_consumer(config).await.expect("join");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < 4 {
            got.extend(c.poll().await.expect("poll").into_iter().map(|r| (r.partition, r.record.offset)));
            assert!(std::time::Instant::now() < deadline, "{group} read {got:?}");
        }
        if !auto {
            c.commit().await.expect("commit");
        }
        c.close().await.expect("close"); // auto-commit commits on close
        got.sort_unstable();
        got
    }
    // Publish/subscribe: each group gets every record.
    let all = vec![(0, 0), (0, 1), (1, 0), (1, 1)];
    assert_eq!(read_all(&client, "alpha", false).await, all);
    assert_eq!(read_all(&client, "beta", true).await, all);
    for g in ["alpha", "beta"] {
        let got = committed(&client.fetch_offsets(g, &[]).await.expect("fetch offsets"));
        assert_eq!(got, BTreeMap::from([(("news".into(), 0), 2), (("news".into(), 1), 2)]), "{g}");
    }
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_goes_to_the_dead_letter_topic_with_why_and_from_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("mail", 1, TopicConfig::default()).await.expect("create");
    produce(&client, "mail", 0, &["bad"]).await;
    let req = pb::ShareFetchRequest {
        group: "senders".into(),
        topic: "mail".into(),
        consumer_id: "s1".into(),
        max_records: 1,
        max_wait_ms: 2_000,
        dead_letter_topic: "mail-dead".into(),
        ..Default::default()
    };
    let got = client.share_fetch(req.clone()).await.expect("fetch");
    assert_eq!(got.records.len(), 1);
    let failed =
        client.share_ack("senders", "mail", "s1", &[ack(&got.records[0], pb::AckKind::Reject)]).await.expect("ack");
    assert!(failed.is_empty(), "{failed:?}");
    let dead = client.fetch("mail-dead", 0, 0, 1 << 20, Duration::from_secs(5)).await.expect("fetch dead letters");
    assert_eq!(dead.records.len(), 1);
    let headers: BTreeMap<String, String> = dead.records[0]
        .headers
        .iter()
        .map(|h| (h.key.clone(), String::from_utf8_lossy(&h.value).into_owned()))
        .collect();
    assert_eq!(headers["strata.dlq.reason"], "rejected");
    assert_eq!(headers["strata.dlq.topic"], "mail");
    assert_eq!(headers["strata.dlq.partition"], "0");
    assert_eq!(headers["strata.dlq.offset"], "0");
    assert_eq!(headers["strata.dlq.deliveries"], "1");
    // Rejected means never delivered again.
    let again = client.share_fetch(pb::ShareFetchRequest { max_wait_ms: 0, ..req }).await.expect("fetch");
    assert!(again.records.is_empty(), "{again:?}");
    // A reserved name cannot be a dead-letter topic.
    let reserved = client
        .share_fetch(pb::ShareFetchRequest {
            group: "other".into(),
            topic: "mail".into(),
            consumer_id: "s2".into(),
            dead_letter_topic: "__strata_dlq".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(reserved.reason(), Some("RESERVED_TOPIC"), "{reserved}");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_committed_offset_retention_deleted_reads_on_from_the_log_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start_with_retention_every(dir.path(), Duration::from_millis(100)).await;
    let config = TopicConfig { segment_bytes: Some(4096), retention_bytes: Some(8192), ..TopicConfig::default() };
    client.create_topic("old", 1, config).await.expect("create");
    produce(&client, "old", 0, &["first"]).await;
    client.reset_offsets("late", "old", &[], ResetTo::Earliest, false, false).await.expect("commit offset 0");
    // Enough batches of 1 KiB to roll segments and pass the size limit.
    let big = "v".repeat(1024);
    for _ in 0..40 {
        produce(&client, "old", 0, &[big.as_str()]).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let start = loop {
        let start = client.resolve_offset("old", 0, strata_client::StartOffset::Earliest).await.expect("earliest");
        if start > 0 {
            break start;
        }
        assert!(std::time::Instant::now() < deadline, "retention deleted nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut c = client.group_consumer(GroupConsumerConfig::new("late", &["old"])).await.expect("join");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.is_empty() {
        got = c.poll().await.expect("a position below the log start is not an error");
        assert!(std::time::Instant::now() < deadline, "nothing read");
    }
    assert!(got[0].record.offset >= start, "read {} below the log start {start}", got[0].record.offset);
    c.close().await.expect("close");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_a_time_replays_exactly_the_records_at_or_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("ticks", 2, TopicConfig::default()).await.expect("create");
    // Records stamped by their producer: partition p holds times p*100 + 1000*i.
    for p in 0..2u32 {
        for i in 1..=5i64 {
            let ts = 1000 * i + i64::from(p) * 100;
            let record = pb::Record { value: Bytes::from(ts.to_string()), timestamp_ms: ts, ..Default::default() };
            client.produce_records("ticks", Some(p), vec![record]).await.expect("produce");
        }
    }
    let mut c = client.group_consumer(GroupConsumerConfig::new("replay", &["ticks"])).await.expect("join");
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen < 10 {
        seen += c.poll().await.expect("poll").len();
        assert!(std::time::Instant::now() < deadline, "read {seen} of 10");
    }
    c.commit().await.expect("commit");
    c.close().await.expect("close");

    let at = 3050; // after partition 0's 3000, before partition 1's 3100
    let reset =
        client.reset_offsets("replay", "ticks", &[], ResetTo::Timestamp(at), false, false).await.expect("reset");
    assert_eq!(committed(&reset), BTreeMap::from([(("ticks".into(), 0), 3), (("ticks".into(), 1), 2)]));
    let mut c = client.group_consumer(GroupConsumerConfig::new("replay", &["ticks"])).await.expect("join again");
    let mut got: Vec<i64> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 5 {
        got.extend(c.poll().await.expect("poll").iter().map(|r| r.record.timestamp_ms));
        assert!(std::time::Instant::now() < deadline, "replayed {got:?}");
    }
    got.sort_unstable();
    // Exactly the records at or after the time, every one of them.
    assert_eq!(got, vec![3100, 4000, 4100, 5000, 5100]);
    assert!(c.poll().await.expect("poll").is_empty(), "nothing else is replayed");
    c.close().await.expect("close");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_cancelled_by_their_deadline_do_not_end_the_groups_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("beats", 1, TopicConfig::default()).await.expect("create");
    let (_tx, mut answers, first) = join(&client, "steady", "beats").await;
    let mut rpc = pb::groups_client::GroupsClient::connect(format!("http://{}", client.addr())).await.expect("connect");
    // Deadlines of a millisecond: the server drops most of these calls
    // while their write is on its way through Raft.
    for offset in 1..=30u64 {
        let mut req = tonic::Request::new(pb::CommitOffsetsRequest {
            group: "steady".into(),
            member_id: first.member_id.clone(),
            member_epoch: first.member_epoch,
            offsets: vec![pb::OffsetCommit { topic: "beats".into(), partition: 0, offset, metadata: String::new() }],
        });
        req.set_timeout(Duration::from_millis(1));
        let _ = rpc.commit_offsets(req).await;
    }
    // The member's session goes on: no error on its stream ...
    match tokio::time::timeout(Duration::from_millis(500), answers.message()).await {
        Err(_) | Ok(Ok(Some(_))) => {}
        Ok(other) => panic!("the member's session ended: {other:?}"),
    }
    // ... and its commits still count.
    client
        .commit_offsets("steady", &first.member_id, first.member_epoch, &[("beats".into(), 0, 99)])
        .await
        .expect("commit");
    let got = committed(&client.fetch_offsets("steady", &[]).await.expect("fetch offsets"));
    assert_eq!(got[&("beats".into(), 0)], 99);
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_a_topic_are_assigned_to_its_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("grow", 2, TopicConfig::default()).await.expect("create");
    let mut c = client.group_consumer(GroupConsumerConfig::new("growers", &["grow"])).await.expect("join");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.assignment().len() < 2 {
        c.poll().await.expect("poll");
        assert!(std::time::Instant::now() < deadline, "holds {:?}", c.assignment());
    }

    // Not more partitions, or the cluster's own topic: refused, nothing changes.
    let same = client.create_partitions("grow", 2).await.expect_err("must fail");
    assert_eq!((same.code(), same.reason()), (Some(Code::InvalidArgument), Some("INVALID_PARTITION_COUNT")), "{same}");
    let reserved = client.create_partitions("__strata_groups", 9).await.expect_err("must fail");
    assert_eq!(reserved.code(), Some(Code::PermissionDenied), "{reserved}");
    let unknown = client.create_partitions("nope", 3).await.expect_err("must fail");
    assert_eq!(unknown.code(), Some(Code::NotFound), "{unknown}");

    let grown = client.create_partitions("grow", 4).await.expect("add partitions");
    assert_eq!(grown.partition_count, 4);
    produce(&client, "grow", 3, &["on a new partition"]).await;
    // The member is given the new partitions and reads them.
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.is_empty() {
        got = c.poll().await.expect("poll");
        assert!(std::time::Instant::now() < deadline, "holds {:?}", c.assignment());
    }
    assert_eq!((got[0].partition, got[0].record.value.as_ref()), (3, b"on a new partition".as_ref()));
    assert_eq!(c.assignment().len(), 4);
    c.close().await.expect("close");
    node.shutdown().await.expect("shutdown");
}

/// Regression (found by the jepsen-like group workload): a leader cut off by
/// a partition answered a fetch at the group's position with
/// OFFSET_OUT_OF_RANGE (its log ended before it), and the member moved back
/// to that node's end, then read and committed offsets below the group's.
/// A position beyond the end the member hears of stays where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_beyond_the_log_end_is_never_moved_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, client) = start(dir.path()).await;
    client.create_topic("ahead", 1, TopicConfig::default()).await.expect("create");
    produce(&client, "ahead", 0, &["a", "b", "c"]).await;
    // Committed beyond the end (as a group that read further on the real
    // leader sees it from a node that is behind).
    client.commit_offsets("later", "", 0, &[("ahead".into(), 0, 5)]).await.expect("commit");
    let mut c = client.group_consumer(GroupConsumerConfig::new("later", &["ahead"])).await.expect("join");
    for _ in 0..3 {
        let got = c.poll().await.expect("poll");
        assert!(got.is_empty(), "read {got:?} from below the committed offset");
    }
    produce(&client, "ahead", 0, &["d", "e", "f"]).await;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.is_empty() {
        got = c.poll().await.expect("poll");
        assert!(std::time::Instant::now() < deadline, "nothing read");
    }
    assert_eq!(got.iter().map(|r| r.record.offset).collect::<Vec<_>>(), vec![5], "reading goes on at the position");
    c.close().await.expect("close");
    node.shutdown().await.expect("shutdown");
}
