//! Retention of a replicated partition. Each replica applies the topic's
//! limits to its own log, as Kafka's brokers do, but through openraft: the
//! segments to delete must be covered by a snapshot and purged by openraft
//! first, so it never reads (or replicates) an entry that is gone. A
//! replica that then needs the deleted entries gets a snapshot, which
//! carries the retained ones ([`crate::transfer`]).

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use strata_storage::PartitionLog;

use crate::group::PartitionRaft;

/// How long one pass waits for the snapshot, then for the purge.
const STEP_WAIT: Duration = Duration::from_secs(10);

/// Why a retention pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Storage(#[from] strata_storage::StorageError),
    #[error("the partition's Raft group stopped: {0}")]
    Raft(String),
}

/// One retention pass over a replicated partition: returns the segments
/// deleted. Nothing is deleted before it is applied here, covered by a
/// snapshot and purged by openraft; when openraft postpones the purge (a
/// replica is still being sent those entries), or a snapshot transfer is
/// reading the log from its start, a later pass deletes them.
pub async fn apply(raft: &PartitionRaft, log: &PartitionLog, now_ms: i64) -> Result<usize, RetentionError> {
    let cut = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.retention_cut(now_ms))
            .await
            .map_err(|e| RetentionError::Raft(format!("retention task failed: {e}")))??
    };
    let Some(cut) = cut else { return Ok(0) };
    let metrics = raft.metrics().borrow_watched().clone();
    if metrics.last_applied.is_none_or(|a| a.index < cut.index) {
        return Ok(0); // not applied yet: a later pass
    }
    let raft_err = |e: &dyn std::fmt::Display| RetentionError::Raft(e.to_string());
    if metrics.purged.is_none_or(|p| p.index < cut.index) {
        if metrics.snapshot.is_none_or(|s| s.index < cut.index) {
            raft.trigger().snapshot().await.map_err(|e| raft_err(&e))?;
            let covered = raft
                .wait(Some(STEP_WAIT))
                .metrics(|m| m.snapshot.is_some_and(|s| s.index >= cut.index), "a snapshot covering the cut")
                .await;
            if covered.is_err() {
                return Ok(0);
            }
        }
        raft.trigger().purge_log(cut.index).await.map_err(|e| raft_err(&e))?;
        let purged = raft
            .wait(Some(STEP_WAIT))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= cut.index), "the cut purged")
            .await;
        if purged.is_err() {
            return Ok(0); // postponed by openraft: a replica still reads them
        }
    }
    if log.start_pinned() {
        return Ok(0); // a snapshot transfer reads from the log start: later
    }
    let before = log.status().segments;
    log.purge(cut).await?;
    let deleted = before.saturating_sub(log.status().segments) as usize;
    if deleted > 0 {
        tracing::info!(
            topic = log.topic(),
            partition = log.partition(),
            deleted_segments = deleted,
            log_start = log.log_start_offset(),
            "retention deleted segments"
        );
    }
    Ok(deleted)
}
