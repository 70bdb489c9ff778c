//! Storage limits: the open segment files of a node with many segments
//! stay within its cache (while it runs, and through recovery), the topic
//! defaults respect the floors, topic names fit their directories.

mod common;

use std::path::Path;
use std::time::Duration;

use common::batch;
use strata_storage::{LogConfig, LogManager, StorageError, StorageLimits, TopicOverrides, Visibility};

/// Open file descriptors of this process on segment files under `root`
/// (RocksDB's write-ahead log files end in `.log` too: not those).
fn open_segment_fds(root: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(target) = std::fs::read_link(entry.expect("fd").path()) else { continue };
        if target.starts_with(root.join("topics")) && target.extension().is_some_and(|e| e == "log") {
            n += 1;
        }
    }
    n
}

/// Reads every partition of `topic` from its start, returning the records.
async fn read_all(m: &LogManager, topic: &str, partitions: u32) -> usize {
    let mut n = 0;
    for p in 0..partitions {
        let log = m.partition(topic, p).expect("partition");
        let mut offset = log.log_start_offset();
        while offset < log.high_watermark() {
            let read = log.read(offset, 1).await.expect("read");
            n += read.batches.len();
            offset = read.next_offset;
        }
    }
    n
}

const CACHE: usize = 8;
const PARTITIONS: u32 = 2;
const SEGMENTS_EACH: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_segments_keep_open_files_within_the_cache_through_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    let limits = StorageLimits { min_segment_bytes: 1024, open_segment_files: CACHE, ..StorageLimits::default() };
    let open = || LogManager::open_with_limits(&root, LogConfig::default(), Visibility::OnFlush, limits).expect("open");
    let m = open();
    let small = TopicOverrides { segment_bytes: Some(1024), ..TopicOverrides::default() };
    m.create_topic("many", PARTITIONS, small).await.expect("create");
    // A batch of about 700 bytes per segment.
    for p in 0..PARTITIONS {
        let log = m.partition("many", p).expect("partition");
        for i in 0..SEGMENTS_EACH {
            log.append(batch(10, 1_700_000_000_000, &format!("{i:>60}"))).await.expect("append");
        }
        assert_eq!(log.status().segments as usize, SEGMENTS_EACH, "one segment per batch");
    }
    // Sealed files are closed once sealed; reading them all opens each
    // through the cache, which keeps CACHE of them.
    let bound = CACHE + PARTITIONS as usize; // plus one active segment each
    assert!(open_segment_fds(&root) <= bound, "{} segment files open after writing", open_segment_fds(&root));
    assert_eq!(read_all(&m, "many", PARTITIONS).await, PARTITIONS as usize * SEGMENTS_EACH);
    let fds = open_segment_fds(&root);
    assert!(fds <= bound, "{fds} segment files open after reading {} segments", 2 * SEGMENTS_EACH);
    assert_eq!(m.open_files().len(), CACHE);
    m.close().await;
    drop(m);
    assert_eq!(open_segment_fds(&root), 0, "a closed node holds no segment file");

    // Recovery trusts the sealed segments' metadata: it opens the active
    // ones only.
    let m = open();
    assert!(open_segment_fds(&root) <= PARTITIONS as usize, "{} files open after recovery", open_segment_fds(&root));
    assert_eq!(read_all(&m, "many", PARTITIONS).await, PARTITIONS as usize * SEGMENTS_EACH);
    assert!(open_segment_fds(&root) <= bound, "{} files open after reading", open_segment_fds(&root));
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_deleted_by_retention_stays_readable_by_a_reader_holding_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = StorageLimits { min_segment_bytes: 1024, open_segment_files: 4, ..StorageLimits::default() };
    let m = LogManager::open_with_limits(dir.path(), LogConfig::default(), Visibility::OnFlush, limits).expect("open");
    let small = TopicOverrides { segment_bytes: Some(1024), retention_bytes: Some(0), ..TopicOverrides::default() };
    m.create_topic("gone", 1, small).await.expect("create");
    let log = m.partition("gone", 0).expect("partition");
    for i in 0..20 {
        log.append(batch(10, 1_700_000_000_000, &format!("{i:>60}"))).await.expect("append");
    }
    // Readers hammer the oldest segments while retention deletes them: a
    // read answers data or OFFSET_OUT_OF_RANGE, never an I/O error.
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                match log.read(log.log_start_offset(), 1 << 20).await {
                    Ok(_) | Err(StorageError::OffsetOutOfRange { .. }) => {}
                    Err(e) => panic!("a read during retention failed: {e}"),
                }
            }
        })
    };
    let deleted = log.apply_retention(strata_storage::now_ms()).expect("retention");
    assert_eq!(deleted, 19, "every sealed segment goes");
    tokio::time::timeout(Duration::from_secs(60), reader).await.expect("in time").expect("reader");
    assert!(m.open_files().len() <= 4);
    drop(log);
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_defaults_below_the_floors_are_refused_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = LogConfig { segment_bytes: 4096, ..LogConfig::default() };
    let err = LogManager::open(dir.path(), small).expect_err("below the floor");
    assert!(
        err.to_string().contains("topic_defaults: segment.bytes 4096 is below the minimum of 1048576 bytes"),
        "{err}"
    );
    let fast = LogConfig { segment_ms: 1000, ..LogConfig::default() };
    let err = LogManager::open(dir.path(), fast).expect_err("below the floor");
    assert!(err.to_string().contains("storage.min_segment_ms"), "{err}");
    // The operator may lower the floors.
    let low = StorageLimits { min_segment_bytes: 4096, min_segment_ms: 1000, ..StorageLimits::default() };
    let m = LogManager::open_with_limits(dir.path(), LogConfig { segment_ms: 1000, ..small }, Visibility::OnFlush, low)
        .expect("within lowered floors");
    let err = m.create_topic("t", 1, TopicOverrides { segment_bytes: Some(4095), ..TopicOverrides::default() }).await;
    assert!(matches!(err, Err(StorageError::InvalidConfig(_))), "{err:?}");
    m.create_topic("t", 1, TopicOverrides::default()).await.expect("at the lowered floor");
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_named_at_the_limit_survives_a_restart_with_the_largest_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "n".repeat(strata_storage::MAX_TOPIC_NAME_LEN);
    {
        let m = LogManager::open(dir.path(), LogConfig::default()).expect("open");
        // The cluster hands out ids: the largest one still makes a directory.
        m.create_topic_with_id(&name, u64::MAX, 1, TopicOverrides::default()).await.expect("create");
        m.partition(&name, 0).expect("partition").append(batch(1, 1, "v")).await.expect("append");
        let longer = format!("{name}x");
        let err = m.create_topic_with_id(&longer, u64::MAX - 1, 1, TopicOverrides::default()).await;
        assert!(matches!(err, Err(StorageError::InvalidTopicName { .. })), "{err:?}");
        let err = m.create_topic(&longer, 1, TopicOverrides::default()).await;
        assert!(matches!(err, Err(StorageError::InvalidTopicName { .. })), "{err:?}");
        // Kafka's longest name with a six-digit id: refused before anything
        // is recorded (it used to be recorded, then fail to make its
        // directory, and the node could not restart).
        let err = m.create_topic_with_id(&"k".repeat(249), 100_000, 1, TopicOverrides::default()).await;
        assert!(matches!(err, Err(StorageError::InvalidTopicName { .. })), "{err:?}");
        m.close().await;
    }
    let m = LogManager::open(dir.path(), LogConfig::default()).expect("restarts");
    assert_eq!(m.partition(&name, 0).expect("partition").high_watermark(), 1);
    m.close().await;
}
