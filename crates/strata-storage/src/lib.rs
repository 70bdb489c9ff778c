//! Strata's storage layer: durable, partitioned, append-only logs.
//!
//! Each partition is a directory of segment files holding record batches
//! exactly as [`strata_record`] encodes them, written by a group-commit writer
//! (many appends, one `fdatasync`, then every waiter is acknowledged). A
//! node-wide RocksDB, behind the [`LogIndex`] trait, holds the offset and time
//! indices, partition and segment metadata and the topic catalog; payloads
//! never go into RocksDB. Recovery after a crash verifies checksums, truncates
//! a torn tail and repairs the indices; corruption anywhere else makes the
//! partition refuse to serve and names the file and byte position.
//!
//! The segment log is built to become each partition's Raft log: batches carry
//! a term, offsets are assigned by the single writer, and the index supports
//! truncating a suffix.

mod config;
mod error;
mod files;
mod index;
mod limits;
mod log;
mod manager;
mod metrics;
mod segment;

pub use config::{LogConfig, MAX_MESSAGE_BYTES_LIMIT, TopicOverrides, UNCOMPRESSED_PER_MESSAGE_BYTES};
pub use error::{Result, StorageError};
pub use files::FileCache;
pub use index::{INDEX_OPEN_FILES, IndexDb, IndexEntry, LogIndex, PartitionMeta, RocksIndex, SegmentMeta};
pub use limits::{DEFAULT_MIN_SEGMENT_BYTES, DEFAULT_MIN_SEGMENT_MS, MIN_SEGMENT_BYTES, MIN_SEGMENT_MS, StorageLimits};
pub use log::{
    AppendInfo, AppendTicket, EntryId, LogDigest, MAX_FUTURE_TIMESTAMP_MS, PartitionLog, PartitionStatus, Progress,
    ReadResult, StartPin, Visibility,
};
pub use manager::{LogManager, MAX_PARTITIONS, MAX_TOPIC_NAME_LEN, TopicInfo, TopicRecord, validate_topic_name};
pub use metrics::{StorageMetrics, Traffic, TrafficCounts};

pub use strata_record::now_ms;
