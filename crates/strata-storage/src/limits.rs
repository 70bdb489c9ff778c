//! Node-wide limits on what topics may ask of the storage, set by the
//! operator (the `[storage]` section of the node's configuration), never by
//! clients: floors under `segment_bytes` and `segment_ms` (a topic rolling a
//! segment every millisecond, or every kilobyte, would run the node out of
//! file descriptors and index entries), and how many segment files stay
//! open. See "Limits" in docs/ARCHITECTURE.md.

use serde::{Deserialize, Serialize};

use crate::config::LogConfig;
use crate::error::{Result, StorageError};

/// Default floor of `segment_bytes`: 1 MiB, Kafka's minimum of
/// `segment.bytes` since 4.0.
pub const DEFAULT_MIN_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Default floor of `segment_ms`: one minute (Kafka has no floor; a segment
/// a millisecond is a denial of service, not a setting).
pub const DEFAULT_MIN_SEGMENT_MS: u64 = 60_000;
/// The floors themselves may not go below these (tests use small segments).
pub const MIN_SEGMENT_BYTES: u64 = 1024;
pub const MIN_SEGMENT_MS: u64 = 1;
/// Sealed segment files kept open at most, when the operator sets no
/// number: a quarter of the process's file descriptor limit
/// (`RLIMIT_NOFILE`), within these bounds. The rest is for active
/// segments (one per partition), RocksDB's files and sockets.
pub const OPEN_SEGMENT_FILES_DEFAULT_MAX: usize = 1024;
pub const OPEN_SEGMENT_FILES_DEFAULT_MIN: usize = 64;
/// The smallest cache an operator may set.
pub const OPEN_SEGMENT_FILES_MIN: usize = 4;

/// Limits of one node's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageLimits {
    /// Smallest `segment_bytes` a topic (or the topic defaults) may set.
    pub min_segment_bytes: u64,
    /// Smallest `segment_ms` a topic (or the topic defaults) may set.
    pub min_segment_ms: u64,
    /// Sealed segment files kept open (least recently used first to
    /// close); 0: derived from `RLIMIT_NOFILE` (see
    /// [`StorageLimits::open_files`]). Active segments stay open besides.
    pub open_segment_files: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            min_segment_bytes: DEFAULT_MIN_SEGMENT_BYTES,
            min_segment_ms: DEFAULT_MIN_SEGMENT_MS,
            open_segment_files: 0,
        }
    }
}

impl StorageLimits {
    /// Checks the limits themselves (the operator's configuration).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StorageError::InvalidConfig(m));
        if self.min_segment_bytes < MIN_SEGMENT_BYTES {
            return bad(format!(
                "storage.min_segment_bytes must be at least {MIN_SEGMENT_BYTES}, got {}",
                self.min_segment_bytes
            ));
        }
        if self.min_segment_ms < MIN_SEGMENT_MS || self.min_segment_ms > i64::MAX as u64 {
            return bad(format!(
                "storage.min_segment_ms must be between {MIN_SEGMENT_MS} and {}, got {}",
                i64::MAX,
                self.min_segment_ms
            ));
        }
        if self.open_segment_files != 0 && self.open_segment_files < OPEN_SEGMENT_FILES_MIN {
            return bad(format!(
                "storage.open_segment_files must be 0 (derived from the file descriptor limit) or at least {OPEN_SEGMENT_FILES_MIN}, got {}",
                self.open_segment_files
            ));
        }
        Ok(())
    }

    /// Checks a topic's effective configuration against the floors (and
    /// its own consistency). Called before a topic is created or altered,
    /// and on the topic defaults at startup.
    pub fn check(&self, config: &LogConfig) -> Result<()> {
        config.validate()?;
        if config.segment_bytes < self.min_segment_bytes {
            return Err(StorageError::InvalidConfig(format!(
                "segment.bytes {} is below the minimum of {} bytes (storage.min_segment_bytes)",
                config.segment_bytes, self.min_segment_bytes
            )));
        }
        if config.segment_ms < self.min_segment_ms {
            return Err(StorageError::InvalidConfig(format!(
                "segment.ms {} is below the minimum of {} ms (storage.min_segment_ms)",
                config.segment_ms, self.min_segment_ms
            )));
        }
        Ok(())
    }

    /// How many sealed segment files stay open: the configured number, or
    /// a quarter of the soft `RLIMIT_NOFILE`, between
    /// [`OPEN_SEGMENT_FILES_DEFAULT_MIN`] and [`OPEN_SEGMENT_FILES_DEFAULT_MAX`].
    pub fn open_files(&self) -> usize {
        if self.open_segment_files != 0 {
            return self.open_segment_files;
        }
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let quarter = soft.map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX));
        quarter.clamp(OPEN_SEGMENT_FILES_DEFAULT_MIN, OPEN_SEGMENT_FILES_DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_hold_exactly_at_their_bounds() {
        let limits = StorageLimits::default();
        let at = LogConfig {
            segment_bytes: DEFAULT_MIN_SEGMENT_BYTES,
            segment_ms: DEFAULT_MIN_SEGMENT_MS,
            ..LogConfig::default()
        };
        limits.check(&at).expect("at the floors");
        let err = limits.check(&LogConfig { segment_bytes: DEFAULT_MIN_SEGMENT_BYTES - 1, ..at }).expect_err("below");
        assert!(err.to_string().contains("below the minimum of 1048576 bytes (storage.min_segment_bytes)"), "{err}");
        let err = limits.check(&LogConfig { segment_ms: DEFAULT_MIN_SEGMENT_MS - 1, ..at }).expect_err("below");
        assert!(err.to_string().contains("below the minimum of 60000 ms (storage.min_segment_ms)"), "{err}");
        LogConfig::default().validate().expect("the defaults are valid");
        limits.check(&LogConfig::default()).expect("the defaults are above the floors");
    }

    #[test]
    fn the_operator_may_lower_the_floors_not_below_the_hard_minimum() {
        let low = StorageLimits { min_segment_bytes: 4096, min_segment_ms: 1, ..StorageLimits::default() };
        low.validate().expect("valid");
        low.check(&LogConfig { segment_bytes: 4096, segment_ms: 1, ..LogConfig::default() }).expect("allowed");
        let err = StorageLimits { min_segment_bytes: MIN_SEGMENT_BYTES - 1, ..low }.validate().expect_err("too low");
        assert!(err.to_string().contains("storage.min_segment_bytes"), "{err}");
        assert!(StorageLimits { open_segment_files: 3, ..low }.validate().is_err());
    }

    #[test]
    fn the_open_file_cache_is_sized_from_the_descriptor_limit_unless_set() {
        let derived = StorageLimits::default().open_files();
        assert!((OPEN_SEGMENT_FILES_DEFAULT_MIN..=OPEN_SEGMENT_FILES_DEFAULT_MAX).contains(&derived), "{derived}");
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(soft) = soft.and_then(|s| usize::try_from(s).ok()) {
            assert!(derived <= soft.max(4 * OPEN_SEGMENT_FILES_DEFAULT_MIN) / 4, "{derived} of {soft}");
        }
        assert_eq!(StorageLimits { open_segment_files: 10, ..StorageLimits::default() }.open_files(), 10);
    }
}
