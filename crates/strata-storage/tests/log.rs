//! Partition log behaviour against real segment files and a real RocksDB:
//! appends, reads, recovery (torn tail, corruption), index rebuild, retention
//! and time lookups.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Fixture, batch, close, read_all, records, segment_files, small_segments};
use strata_record::{Compression, Record, encode};
use strata_storage::{LogConfig, LogManager, StorageError, TopicOverrides};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_get_contiguous_offsets_and_read_back() {
    let fx = Fixture::new();
    let (_db, log) = fx.open(small_segments());
    let mut expected = Vec::new();
    for i in 0..20 {
        let info = log.append(batch(3, 1000 + i, &format!("b{i}"))).await.expect("append");
        assert_eq!(info.base_offset, i as u64 * 3);
        assert_eq!(info.record_count, 3);
        expected.extend((0..3).map(|j| format!("b{i}-{j}")));
    }
    assert_eq!(log.high_watermark(), 60);
    assert!(log.status().segments > 1, "1 KiB segments must have rolled");
    let got = read_all(&log, 0).await;
    let values: Vec<_> = got.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
    assert_eq!(values, expected);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
    }
    // Reading from the middle of a batch returns the whole batch holding it.
    let mid = log.read(4, 1).await.expect("read");
    let first = strata_record::decode(&mid.batches[0]).expect("decode");
    assert_eq!(first[0].offset, 3);
    assert_eq!(mid.next_offset, 6, "the next read starts after the batch returned");
    // Each batch is one log entry: consecutive indices from 0.
    let mut offset = 0;
    let mut index = 0;
    while offset < 60 {
        let read = log.read(offset, 1 << 20).await.expect("read");
        for b in &read.batches {
            let h = strata_record::verify(b).expect("valid");
            assert_eq!((h.log_index, h.base_offset), (index, index * 3));
            index += 1;
        }
        offset = read.next_offset;
    }
    assert_eq!(index, 20);
    // At the high watermark: nothing; past it: out of range.
    assert!(log.read(60, 1024).await.expect("read").batches.is_empty());
    let err = log.read(61, 1024).await.expect_err("beyond hw");
    assert!(matches!(err, StorageError::OffsetOutOfRange { offset: 61, start: 0, end: 60, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_all_acknowledged_with_distinct_offsets() {
    let fx = Fixture::new();
    let (_db, log) = fx.open(LogConfig::default());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move { log.append(batch(2, 5, &format!("c{i}"))).await }));
    }
    let mut bases = Vec::new();
    for t in tasks {
        bases.push(t.await.expect("join").expect("append").base_offset);
    }
    bases.sort_unstable();
    assert_eq!(bases, (0..200).map(|i| i * 2).collect::<Vec<u64>>());
    assert_eq!(read_all(&log, 0).await.len(), 400);
}

/// Producers each waiting for one append before the next, as clients do:
/// groups then come both ways, synced by the writer when the syncer is idle
/// and handed to the syncer otherwise, and every one must become durable in
/// write order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_producers_are_acknowledged_in_write_order() {
    let fx = Fixture::new();
    let (_db, log) = fx.open(LogConfig::default());
    let mut tasks = Vec::new();
    for p in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut bases = Vec::new();
            for i in 0..150 {
                let info = log.append(batch(2, 5, &format!("p{p}-{i}"))).await?;
                // Acknowledged means durable: the high watermark covers it.
                assert!(log.high_watermark() >= info.base_offset + 2, "acknowledged beyond the high watermark");
                bases.push(info.base_offset);
            }
            Ok::<_, strata_storage::StorageError>(bases)
        }));
    }
    let mut bases = Vec::new();
    for t in tasks {
        bases.extend(t.await.expect("join").expect("append"));
    }
    bases.sort_unstable();
    assert_eq!(bases, (0..2400).map(|i| i * 2).collect::<Vec<u64>>());
    assert_eq!(read_all(&log, 0).await.len(), 4800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_batches_are_rejected_and_write_nothing() {
    let fx = Fixture::new();
    let (_db, log) = fx.open(LogConfig { max_message_bytes: 200, ..LogConfig::default() });
    let big = encode(&[Record { value: Bytes::from(vec![7u8; 500]), ..Record::default() }], Compression::None);
    assert!(matches!(log.append(big).await, Err(StorageError::BatchTooLarge { limit: 200, .. })));
    let mut bad = batch(1, 1, "x").to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(matches!(log.append(Bytes::from(bad)).await, Err(StorageError::InvalidBatch(_))));
    // Bytes after a valid batch would be stored but never readable: rejected.
    let mut trailing = batch(1, 1, "y").to_vec();
    trailing.extend_from_slice(b"junk");
    assert!(matches!(log.append(Bytes::from(trailing)).await, Err(StorageError::InvalidBatch(_))));
    // A timestamp far in the future would pin time retention: rejected.
    let future = strata_storage::now_ms() + 2 * strata_storage::MAX_FUTURE_TIMESTAMP_MS;
    assert!(matches!(log.append(batch(1, future, "f")).await, Err(StorageError::TimestampInFuture { .. })));
    // Compressed batches are validated too (off the async workers).
    let mut bad_lz4 = encode(&records(3, 1, "z"), Compression::Lz4).to_vec();
    let last = bad_lz4.len() - 1;
    bad_lz4[last] ^= 0xff;
    strata_record::stamp(&mut bad_lz4, strata_record::Placement::default());
    assert!(matches!(log.append(Bytes::from(bad_lz4)).await, Err(StorageError::InvalidBatch(_))));
    assert_eq!(log.high_watermark(), 0);
    assert_eq!(log.status().size_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_on_recovery_and_appends_continue() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open(LogConfig::default());
        for i in 0..10 {
            log.append(batch(2, 1, &format!("t{i}"))).await.expect("append");
        }
        close(db, log).await;
    }
    let file = segment_files(&fx.partition_dir()).pop().expect("segment");
    let good_len = std::fs::metadata(&file).expect("meta").len();
    // A crash in the middle of writing the next batch: half of it on disk.
    let mut torn = batch(2, 1, "torn").to_vec();
    strata_record::stamp(&mut torn, strata_record::Placement { base_offset: 20, term: 0, log_index: 10 });
    let half = &torn[..torn.len() / 2];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, half))
        .expect("write torn");
    let (_db, log) = fx.open(LogConfig::default());
    assert_eq!(log.high_watermark(), 20);
    assert_eq!(std::fs::metadata(&file).expect("meta").len(), good_len);
    let info = log.append(batch(1, 1, "after")).await.expect("append after recovery");
    assert_eq!(info.base_offset, 20);
    assert_eq!(read_all(&log, 0).await.len(), 21);
    // The entry numbering continues from the last entry recovered.
    let read = log.read(20, 1024).await.expect("read");
    assert_eq!(strata_record::verify(&read.batches[0]).expect("valid").log_index, 10);
}

/// Found with the segment-recovery fuzz harness, on a hand-made input
/// (fuzz/corpus/segment/regression-last-offsets): a log that goes on near
/// u64::MAX (a crafted segment file, or a snapshot's next offset) panicked
/// on an append past the last offset.
/// What fits is appended; what does not is refused, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_past_the_last_offset_are_refused() {
    let fx = Fixture::new();
    let (db, log) = fx.open(LogConfig::default());
    log.reset_to_empty(u64::MAX - 5).await.expect("reset");
    let info = log.append(batch(5, 1, "last")).await.expect("the last offsets fit");
    assert_eq!(info.base_offset, u64::MAX - 5);
    assert_eq!(log.high_watermark(), u64::MAX);
    let err = log.append(batch(1, 1, "past")).await.expect_err("no offset left");
    assert!(matches!(err, StorageError::InvalidBatch(strata_record::FormatError::OffsetOverflow { .. })), "{err}");
    close(db, log).await;
    let (_db, log) = fx.open(LogConfig::default());
    assert_eq!(log.status().failure, None);
    assert_eq!(log.high_watermark(), u64::MAX);
    assert_eq!(read_all(&log, u64::MAX - 5).await.len(), 5);
}

/// Found by fuzzing segment recovery (fuzz/corpus/segment/regression-
/// last-entry-index): a segment whose last batch is Raft entry u64::MAX
/// recovered, and the next append panicked computing the next index. No
/// entry can follow it: appends are refused as out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_after_the_last_entry_index_are_refused() {
    let fx = Fixture::new();
    let (db, log) = fx.open(LogConfig::default());
    let last = strata_storage::EntryId { term: 2, index: u64::MAX };
    log.submit_entry(batch(1, 1, "last"), last).await.expect("submit").wait().await.expect("durable");
    close(db, log).await;
    let (_db, log) = fx.open(LogConfig::default());
    assert_eq!(log.last_entry(), Some(last));
    let err = log.append(batch(1, 1, "next")).await.expect_err("no index left");
    assert!(matches!(err, StorageError::EntryOutOfOrder { .. }), "{err}");
    let next = strata_storage::EntryId { term: 3, index: 0 };
    let err = log.submit_entry(batch(1, 1, "wrapped"), next).await.expect_err("no index left");
    assert!(matches!(err, StorageError::EntryOutOfOrder { .. }), "{err}");
    assert_eq!(read_all(&log, 0).await.len(), 1, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_middle_batch_makes_the_partition_refuse_to_serve() {
    let fx = Fixture::new();
    let batch_len;
    {
        let (db, log) = fx.open(LogConfig::default());
        let b = batch(2, 1, "m");
        batch_len = b.len() as u64;
        for _ in 0..10 {
            log.append(b.clone()).await.expect("append");
        }
        close(db, log).await;
    }
    let file = segment_files(&fx.partition_dir()).pop().expect("segment");
    let mut bytes = std::fs::read(&file).expect("read");
    let victim = 3 * batch_len as usize + 60; // inside batch 3's payload
    bytes[victim] ^= 0x01;
    std::fs::write(&file, &bytes).expect("write");
    let (_db, log) = fx.open(LogConfig::default());
    let err = log.read(0, 1024).await.expect_err("must refuse");
    let msg = err.to_string();
    assert!(matches!(err, StorageError::PartitionFailed { .. }), "{msg}");
    // Shown to clients: the segment by the offset it starts at, not by
    // its path (the node's log has the path).
    assert!(msg.contains("the segment starting at offset 0"), "names the segment: {msg}");
    assert!(!msg.contains(&fx.root.display().to_string()), "names no path: {msg}");
    assert!(msg.contains(&format!("at byte {}", 3 * batch_len)), "names the position: {msg}");
    assert!(msg.contains("partition 0"), "{msg}");
    assert!(matches!(log.append(batch(1, 1, "x")).await, Err(StorageError::PartitionFailed { .. })));
    // Nothing was truncated: the data stays for an operator to inspect.
    assert_eq!(std::fs::metadata(&file).expect("meta").len(), bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_a_sealed_segment_is_detected_on_read() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open(small_segments());
        for i in 0..30 {
            log.append(batch(2, 1, &format!("s{i}"))).await.expect("append");
        }
        assert!(log.status().segments >= 3);
        close(db, log).await;
    }
    let first = segment_files(&fx.partition_dir()).remove(0);
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[50] ^= 0x80; // inside batch 0's payload (header is 48 bytes)
    std::fs::write(&first, &bytes).expect("write");
    let (_db, log) = fx.open(small_segments());
    let err = log.read(0, 1024).await.expect_err("corrupt");
    assert!(matches!(err, StorageError::Corrupt { position: 0, .. }), "{err}");
    assert!(err.to_string().contains(&first.display().to_string()), "{err}");
    // From now on the partition refuses everything, even healthy offsets.
    let again = log.read(58, 1024).await.expect_err("failed partition");
    assert!(matches!(again, StorageError::PartitionFailed { .. }), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_index_is_rebuilt_from_the_segments() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open(small_segments());
        for i in 0..25 {
            log.append(batch(2, 100 + i, &format!("r{i}"))).await.expect("append");
        }
        close(db, log).await;
    }
    // A brand-new, empty index over the same segment files.
    let (_db, log) = fx.open_with_index("fresh-index", small_segments());
    assert_eq!(log.high_watermark(), 50);
    let got = read_all(&log, 0).await;
    assert_eq!(got.len(), 50);
    assert_eq!(String::from_utf8_lossy(&got[49].value), "r24-1");
    assert_eq!(log.offset_for_timestamp(110).await.expect("ts"), Some((20, 110)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_lookup_finds_first_record_at_or_after() {
    let fx = Fixture::new();
    let (_db, log) = fx.open(small_segments());
    // Timestamps are not monotonic: 10, 30, 20, 40, ...
    for ts in [10, 30, 20, 40, 35, 50] {
        log.append(batch(1, ts, "x")).await.expect("append");
    }
    assert_eq!(log.offset_for_timestamp(0).await.expect("ts"), Some((0, 10)));
    assert_eq!(log.offset_for_timestamp(11).await.expect("ts"), Some((1, 30)));
    assert_eq!(log.offset_for_timestamp(25).await.expect("ts"), Some((1, 30)));
    assert_eq!(log.offset_for_timestamp(31).await.expect("ts"), Some((3, 40)));
    assert_eq!(log.offset_for_timestamp(45).await.expect("ts"), Some((5, 50)));
    assert_eq!(log.offset_for_timestamp(51).await.expect("ts"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_deletes_oldest_segments_and_survives_restart() {
    let fx = Fixture::new();
    let config = LogConfig { segment_bytes: 1024, retention_bytes: 2048, ..LogConfig::default() };
    {
        let (db, log) = fx.open(config);
        let now = strata_storage::now_ms();
        for i in 0..80 {
            log.append(batch(2, now, &format!("z{i}"))).await.expect("append");
        }
        let before = log.status();
        let deleted = log.apply_retention(strata_storage::now_ms()).expect("retention");
        assert!(deleted > 0);
        let after = log.status();
        assert_eq!(after.segments, before.segments - deleted as u32);
        assert!(after.size_bytes >= 2048, "keeps at least retention_bytes: {}", after.size_bytes);
        assert!(after.log_start_offset > 0);
        let err = log.read(0, 1024).await.expect_err("deleted");
        assert!(matches!(err, StorageError::OffsetOutOfRange { .. }));
        assert_eq!(segment_files(&fx.partition_dir()).len(), after.segments as usize);
        close(db, log).await;
    }
    let (_db, log) = fx.open(config);
    let start = log.log_start_offset();
    assert!(start > 0);
    let got = read_all(&log, start).await;
    assert_eq!(got.first().map(|r| r.offset), Some(start));
    assert_eq!(got.last().map(|r| r.offset), Some(159));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_time_deletes_segments_older_than_the_limit() {
    let fx = Fixture::new();
    let config = LogConfig { segment_bytes: 1024, retention_ms: 60_000, ..LogConfig::default() };
    let (_db, log) = fx.open(config);
    let now = strata_storage::now_ms();
    for i in 0..20 {
        log.append(batch(2, now - 3_600_000, &format!("old{i}"))).await.expect("append");
    }
    for i in 0..20 {
        log.append(batch(2, now, &format!("new{i}"))).await.expect("append");
    }
    log.apply_retention(now).expect("retention");
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 40, "old segments go, new ones stay: start {start}");
    let got = read_all(&log, start).await;
    assert_eq!(got.first().map(|r| r.offset), Some(start));
    for r in &got {
        let new = String::from_utf8_lossy(&r.value).starts_with("new");
        assert_eq!(new, r.offset >= 40, "offset {} holds {:?}", r.offset, r.value);
    }
    assert_eq!(got.last().map(|r| r.offset), Some(79));
    // Time lookups still work for what remains.
    assert_eq!(log.offset_for_timestamp(now).await.expect("ts").map(|(o, _)| o), Some(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_when_data_arrives() {
    let fx = Fixture::new();
    let (_db, log) = fx.open(LogConfig::default());
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_beyond(0, Duration::from_secs(30)).await })
    };
    log.append(batch(1, 1, "w")).await.expect("append");
    let hw = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("woke").expect("join");
    assert_eq!(hw, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_validates_and_persists_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_id;
    {
        let m = LogManager::open(dir.path(), LogConfig::default()).expect("open");
        for bad in ["", "a/b", "..", "sp ace", &"x".repeat(250)] {
            assert!(
                matches!(
                    m.create_topic(bad, 1, TopicOverrides::default()).await,
                    Err(StorageError::InvalidTopicName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            m.create_topic("t", 0, TopicOverrides::default()).await,
            Err(StorageError::InvalidPartitionCount { .. })
        ));
        let bad_cfg = TopicOverrides { segment_bytes: Some(10), ..TopicOverrides::default() };
        assert!(matches!(m.create_topic("t", 1, bad_cfg).await, Err(StorageError::InvalidConfig(_))));
        assert!(m.list_topics().expect("list").is_empty(), "failed creates leave nothing");
        let info = m.create_topic("orders", 3, TopicOverrides::default()).await.expect("create");
        first_id = info.id;
        assert_eq!(info.partitions.len(), 3);
        assert!(matches!(
            m.create_topic("orders", 3, TopicOverrides::default()).await,
            Err(StorageError::TopicExists(_))
        ));
        m.partition("orders", 2).expect("p2").append(batch(1, 1, "o")).await.expect("append");
        assert!(matches!(m.partition("orders", 3), Err(StorageError::UnknownPartition { count: 3, .. })));
        // The data directory is locked while a node uses it.
        assert!(matches!(LogManager::open(dir.path(), LogConfig::default()), Err(StorageError::DataDirLocked(_))));
        let altered = m
            .alter_topic("orders", TopicOverrides { retention_ms: Some(5000), ..TopicOverrides::default() })
            .await
            .expect("alter");
        assert_eq!(altered.config.retention_ms, 5000);
        // Partitions are added, never removed; the new ones start empty.
        for bad in [2, 3] {
            assert!(matches!(
                m.add_partitions("orders", bad).await,
                Err(StorageError::PartitionCountNotIncreasing { current: 3, .. })
            ));
        }
        let grown = m.add_partitions("orders", 5).await.expect("add partitions");
        assert_eq!(grown.partitions.len(), 5);
        assert_eq!(grown.partitions[4].high_watermark, 0);
        m.partition("orders", 4).expect("p4").append(batch(1, 1, "n")).await.expect("append");
        assert!(matches!(m.add_partitions("nope", 2).await, Err(StorageError::UnknownTopic(_))));
        m.close().await;
        drop(m);
    }
    // A clean close leaves its mark, which the next open takes away (so a
    // crash after it is not taken for a clean stop).
    let clean_stop = dir.path().join("clean-stop");
    assert!(clean_stop.exists(), "close marks a clean stop");
    let m = LogManager::open(dir.path(), LogConfig::default()).expect("reopen");
    assert!(!clean_stop.exists(), "open removes the mark");
    let info = m.describe_topic("orders").expect("persisted");
    assert_eq!(info.config.retention_ms, 5000);
    assert_eq!(info.partitions[2].high_watermark, 1);
    assert_eq!(info.partitions.len(), 5, "added partitions are persisted");
    assert_eq!(info.partitions[4].high_watermark, 1);
    m.delete_topic("orders").await.expect("delete");
    assert!(matches!(m.describe_topic("orders"), Err(StorageError::UnknownTopic(_))));
    let again = m.create_topic("orders", 1, TopicOverrides::default()).await.expect("recreate");
    assert!(again.id > first_id, "topic ids are never reused");
    assert_eq!(again.partitions[0].high_watermark, 0, "a recreated topic starts empty");
    let dirs: Vec<_> = std::fs::read_dir(dir.path().join("topics")).expect("ls").collect();
    assert_eq!(dirs.len(), 1, "the deleted topic's files are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_directories_are_never_deleted_but_deleted_topics_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    // As if the catalog had been lost: a topic directory nobody knows about.
    let stray = dir.path().join("topics").join("orders-7");
    std::fs::create_dir_all(stray.join("0")).expect("mkdir");
    std::fs::write(stray.join("0").join("00000000000000000000.log"), b"precious").expect("write");
    let m = LogManager::open(dir.path(), LogConfig::default()).expect("open");
    assert!(stray.join("0").join("00000000000000000000.log").exists(), "unknown data must be left alone");
    m.create_topic("gone", 1, TopicOverrides::default()).await.expect("create");
    m.delete_topic("gone").await.expect("delete");
    m.close().await;
    drop(m);
    let m = LogManager::open(dir.path(), LogConfig::default()).expect("reopen");
    let mut dirs: Vec<_> = std::fs::read_dir(dir.path().join("topics"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["orders-7"]);
    m.close().await;
    drop(m);
}
