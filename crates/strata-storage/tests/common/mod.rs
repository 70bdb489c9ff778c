//! Helpers shared by the storage integration tests: a temporary data
//! directory with a real RocksDB, batches, and reading a log back.
#![allow(dead_code)] // each test binary uses its own share of these

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_record::{Compression, Record, encode};
use strata_storage::{IndexDb, LogConfig, PartitionLog, Visibility};

pub fn records(n: usize, ts: i64, tag: &str) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            timestamp_ms: ts,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Bytes::from(format!("{tag}-{i}")),
            ..Record::default()
        })
        .collect()
}

pub fn batch(n: usize, ts: i64, tag: &str) -> Bytes {
    encode(&records(n, ts, tag), Compression::None)
}

pub fn small_segments() -> LogConfig {
    LogConfig { segment_bytes: 1024, ..LogConfig::default() }
}

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        Self { _dir: dir, root }
    }

    pub fn partition_dir(&self) -> PathBuf {
        self.root.join("p0")
    }

    pub fn open(&self, config: LogConfig) -> (Arc<IndexDb>, PartitionLog) {
        self.open_with_index("index", config)
    }

    pub fn open_with_index(&self, index_dir: &str, config: LogConfig) -> (Arc<IndexDb>, PartitionLog) {
        self.open_full(index_dir, config, Visibility::OnFlush)
    }

    /// A log whose appends become visible once applied (the Raft mode).
    pub fn open_applied(&self, config: LogConfig) -> (Arc<IndexDb>, PartitionLog) {
        self.open_full("index", config, Visibility::Applied)
    }

    fn open_full(&self, index_dir: &str, config: LogConfig, visibility: Visibility) -> (Arc<IndexDb>, PartitionLog) {
        let db = IndexDb::open(&self.root.join(index_dir)).expect("open index");
        let index = Arc::new(db.partition(1, 0));
        let log = PartitionLog::open_with("t", 0, &self.partition_dir(), index, config, visibility).expect("open log");
        (db, log)
    }
}

/// Drops a log and waits until its writer task has released the index, as a
/// process exit would, so the same directory can be opened again.
pub async fn close(db: Arc<IndexDb>, log: PartitionLog) {
    drop(log);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&db) > 1 {
        assert!(std::time::Instant::now() < deadline, "the writer task did not release the index");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

pub async fn read_all(log: &PartitionLog, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = log.read(offset, 4096).await.expect("read");
        if r.batches.is_empty() {
            return out;
        }
        for b in &r.batches {
            for rec in strata_record::decode(b).expect("decode") {
                if rec.offset >= offset {
                    out.push(rec);
                }
            }
        }
        offset = r.next_offset;
    }
}
