//! What the storage layer measures: fsync latency and group-commit sizes
//! (node-wide histograms the server registers with its metrics registry),
//! and per-partition traffic counters the server's handlers add to (read
//! at scrape time, summed per topic or per partition there).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The node's storage histograms; cheap to clone (shared buckets).
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    /// Seconds per `fdatasync` of a segment file.
    pub fsync_seconds: Histogram,
    /// Batches made durable by one group commit (one round of fsyncs).
    pub group_commit_batches: Histogram,
    /// Bytes made durable by one group commit.
    pub group_commit_bytes: Histogram,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        Self {
            // 50 µs to about 3.3 s.
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            // 1 to 4096 batches.
            group_commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 256 bytes to 64 MiB.
            group_commit_bytes: Histogram::new(exponential_buckets(256.0, 4.0, 10)),
        }
    }
}

/// Requests, records and bytes a partition served on this node (its
/// leader's handlers count them). Monotonic while the partition is open here.
#[derive(Debug, Default)]
pub struct Traffic {
    pub produce_requests: AtomicU64,
    pub produce_records: AtomicU64,
    pub produce_bytes: AtomicU64,
    pub fetch_requests: AtomicU64,
    pub fetch_records: AtomicU64,
    pub fetch_bytes: AtomicU64,
}

/// A snapshot of [`Traffic`], summable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrafficCounts {
    pub produce_requests: u64,
    pub produce_records: u64,
    pub produce_bytes: u64,
    pub fetch_requests: u64,
    pub fetch_records: u64,
    pub fetch_bytes: u64,
}

impl Traffic {
    /// One produce request's batch appended here.
    pub fn produced(&self, records: u64, bytes: u64) {
        self.produce_requests.fetch_add(1, Ordering::Relaxed);
        self.produce_records.fetch_add(records, Ordering::Relaxed);
        self.produce_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One fetch (or subscription chunk) answered from here.
    pub fn fetched(&self, records: u64, bytes: u64) {
        self.fetch_requests.fetch_add(1, Ordering::Relaxed);
        self.fetch_records.fetch_add(records, Ordering::Relaxed);
        self.fetch_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn counts(&self) -> TrafficCounts {
        TrafficCounts {
            produce_requests: self.produce_requests.load(Ordering::Relaxed),
            produce_records: self.produce_records.load(Ordering::Relaxed),
            produce_bytes: self.produce_bytes.load(Ordering::Relaxed),
            fetch_requests: self.fetch_requests.load(Ordering::Relaxed),
            fetch_records: self.fetch_records.load(Ordering::Relaxed),
            fetch_bytes: self.fetch_bytes.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::AddAssign for TrafficCounts {
    fn add_assign(&mut self, o: Self) {
        self.produce_requests += o.produce_requests;
        self.produce_records += o.produce_records;
        self.produce_bytes += o.produce_bytes;
        self.fetch_requests += o.fetch_requests;
        self.fetch_records += o.fetch_records;
        self.fetch_bytes += o.fetch_bytes;
    }
}
