//! Per-topic log configuration: server defaults plus per-topic overrides.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::limits::MIN_SEGMENT_BYTES;

/// Largest accepted `max_message_bytes` (the gRPC limit is set above it).
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 32 * 1024 * 1024;
/// A batch may decompress to at most this many times the topic's
/// `max_message_bytes` (and never more than
/// [`strata_record::MAX_UNCOMPRESSED_BYTES`]).
pub const UNCOMPRESSED_PER_MESSAGE_BYTES: usize = 8;

/// Effective configuration of a topic's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Delete sealed segments whose newest record is older than this; -1 keeps forever.
    pub retention_ms: i64,
    /// Delete oldest sealed segments while the partition is larger; -1: no limit.
    pub retention_bytes: i64,
    /// Roll the active segment when it reaches this size.
    pub segment_bytes: u64,
    /// Roll the active segment when it is this old (checked on append).
    pub segment_ms: u64,
    /// Largest encoded batch accepted on produce.
    pub max_message_bytes: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 1024 * 1024,
        }
    }
}

impl LogConfig {
    /// How many bytes a batch of this topic may decompress to.
    pub fn max_uncompressed_bytes(&self) -> usize {
        (self.max_message_bytes as usize)
            .saturating_mul(UNCOMPRESSED_PER_MESSAGE_BYTES)
            .min(strata_record::MAX_UNCOMPRESSED_BYTES)
    }

    /// Checks that the configuration is consistent and within the hard
    /// limits. The node's floors ([`crate::StorageLimits::check`]) apply on
    /// top, to what clients ask for.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StorageError::InvalidConfig(m));
        if self.retention_ms < -1 || self.retention_ms == 0 {
            return bad(format!("retention_ms must be -1 (forever) or positive, got {}", self.retention_ms));
        }
        if self.retention_bytes < -1 {
            return bad(format!("retention_bytes must be -1 (no limit) or >= 0, got {}", self.retention_bytes));
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return bad(format!("segment_bytes must be at least {MIN_SEGMENT_BYTES}, got {}", self.segment_bytes));
        }
        if self.segment_ms == 0 || self.segment_ms > i64::MAX as u64 {
            return bad(format!("segment_ms must be between 1 and {}, got {}", i64::MAX, self.segment_ms));
        }
        let min_msg = strata_record::HEADER_LEN as u32 + 1;
        if !(min_msg..=MAX_MESSAGE_BYTES_LIMIT).contains(&self.max_message_bytes) {
            return bad(format!(
                "max_message_bytes must be between {min_msg} and {MAX_MESSAGE_BYTES_LIMIT}, got {}",
                self.max_message_bytes
            ));
        }
        Ok(())
    }
}

/// Per-topic overrides; unset fields follow the server defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOverrides {
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<u64>,
    pub max_message_bytes: Option<u32>,
}

impl TopicOverrides {
    /// Effective config over `defaults`.
    pub fn apply(&self, defaults: &LogConfig) -> LogConfig {
        LogConfig {
            retention_ms: self.retention_ms.unwrap_or(defaults.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(defaults.retention_bytes),
            segment_bytes: self.segment_bytes.unwrap_or(defaults.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(defaults.segment_ms),
            max_message_bytes: self.max_message_bytes.unwrap_or(defaults.max_message_bytes),
        }
    }

    /// `self` with every field set in `other` replaced.
    pub fn merge(&self, other: &TopicOverrides) -> TopicOverrides {
        TopicOverrides {
            retention_ms: other.retention_ms.or(self.retention_ms),
            retention_bytes: other.retention_bytes.or(self.retention_bytes),
            segment_bytes: other.segment_bytes.or(self.segment_bytes),
            segment_ms: other.segment_ms.or(self.segment_ms),
            max_message_bytes: other.max_message_bytes.or(self.max_message_bytes),
        }
    }
}
