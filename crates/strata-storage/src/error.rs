//! Errors of the storage layer. Each variant says whether the caller may retry
//! ([`StorageError::is_retriable`]) and carries enough context (topic,
//! partition, file, byte position) for an operator to act on it.

use std::path::PathBuf;
use std::sync::Arc;

use strata_record::FormatError;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: Arc<std::io::Error> },
    #[error("index database error: {0}")]
    Index(String),
    #[error("corrupt data in topic '{topic}' partition {partition}: file {file} at byte {position}: {detail}")]
    Corrupt { topic: String, partition: u32, file: PathBuf, position: u64, detail: String },
    /// `reason` names no file (see [`StorageError::client_message`]): it is
    /// shown to clients.
    #[error("topic '{topic}' partition {partition} refuses to serve: {reason}")]
    PartitionFailed { topic: String, partition: u32, reason: Arc<str> },
    #[error(
        "offset {offset} is out of range for topic '{topic}' partition {partition}: valid offsets are {start} to {end}"
    )]
    OffsetOutOfRange { topic: String, partition: u32, offset: u64, start: u64, end: u64 },
    #[error("batch of {size} bytes exceeds max_message_bytes ({limit}) of topic '{topic}'")]
    BatchTooLarge { topic: String, size: usize, limit: u32 },
    #[error(
        "record timestamp {timestamp_ms} (ms since the epoch) for topic '{topic}' is more than {limit_ms} ms ahead of the server's clock"
    )]
    TimestampInFuture { topic: String, timestamp_ms: i64, limit_ms: i64 },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] FormatError),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{topic}' has no partition {partition} (it has {count})")]
    UnknownPartition { topic: String, partition: u32, count: u32 },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid partition count {count}: must be between 1 and {max}")]
    InvalidPartitionCount { count: u32, max: u32 },
    #[error(
        "topic '{topic}' has {current} partitions: the new count {requested} must be larger (partitions are never removed)"
    )]
    PartitionCountNotIncreasing { topic: String, current: u32, requested: u32 },
    #[error("invalid topic config: {0}")]
    InvalidConfig(String),
    #[error("data directory {0} is in use by another strata process")]
    DataDirLocked(PathBuf),
    #[error(
        "topic '{topic}' partition {partition}: entry (term {term}, index {index}) does not follow the last entry {last}"
    )]
    EntryOutOfOrder { topic: String, partition: u32, term: u64, index: u64, last: String },
    #[error(
        "topic '{topic}' partition {partition}: entry {index} starts at offset {stamped} on the leader but would start at {local} here: the replicas' offsets diverged"
    )]
    OffsetMismatch { topic: String, partition: u32, index: u64, stamped: u64, local: u64 },
    #[error("storage is shutting down")]
    ShuttingDown,
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source: Arc::new(source) }
    }

    /// True when the same request may succeed if sent again later.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::ShuttingDown)
    }

    /// Whether the message ([`std::fmt::Display`]) may name files of the
    /// node's data directory: such errors are logged in full on the node,
    /// and clients get [`StorageError::client_message`].
    pub fn names_files(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Index(_) | Self::Corrupt { .. } | Self::DataDirLocked(_))
    }

    /// The message for clients: as [`std::fmt::Display`], but without the
    /// paths of the node's files (their directory layout is no business of
    /// a client; the node's log has them). A segment is named by the offset
    /// it starts at.
    pub fn client_message(&self) -> String {
        match self {
            Self::Io { source, .. } => {
                format!("I/O error in this node's storage ({source}); the node's log names the file")
            }
            // RocksDB's messages may name its files.
            Self::Index(_) => "error in this node's index database; the node's log has the details".to_owned(),
            Self::Corrupt { topic, partition, file, position, detail } => format!(
                "corrupt data in topic '{topic}' partition {partition}: {} at byte {position}: {detail}",
                segment_of(file)
            ),
            Self::DataDirLocked(_) => "the data directory is in use by another strata process".to_owned(),
            other => other.to_string(),
        }
    }
}

/// "segment starting at offset N" for a segment file's path (or its name,
/// for another file).
fn segment_of(file: &std::path::Path) -> String {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.strip_suffix(crate::segment::SUFFIX).and_then(|stem| stem.parse::<u64>().ok()) {
        Some(base) => format!("the segment starting at offset {base}"),
        None => "a file of the partition".to_owned(),
    }
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        Self::Index(e.into_string())
    }
}

/// Adds a path to I/O errors.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| StorageError::io(path, e))
    }
}
