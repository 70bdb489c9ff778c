//! Snapshot metadata (`strata-raft`): the JSON `SnapshotMeta` and
//! `PartitionSnapshot` a node decodes from a peer's InstallSnapshot
//! request, decoded as the Raft service decodes them, then installed into
//! a real controller state machine (segment log and RocksDB), as openraft
//! does with a snapshot it accepts.
//!
//! Input: the metadata's JSON, a NUL byte, the snapshot data's JSON.
//!
//! Checked: no panic; what decodes encodes back to the same value; an
//! installed snapshot is the state machine's current snapshot, its applied
//! entry and its published metadata; the log goes on after the snapshot's
//! entry at its offset; a state machine opened again on the same log finds
//! the same applied entry and metadata; and commands applied on top of the
//! installed metadata do not panic, and a rejected one changes nothing
//! (see [`crate::controller::apply_all`]).

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use strata_raft::controller::Metadata;
use strata_raft::state_machine::{PartitionSnapshot, StateMachine};
use strata_raft::types::SnapshotMeta;
use strata_storage::{EntryId, LogConfig, PartitionLog, Visibility};
use tokio::sync::watch;

use crate::env;

/// The input for a snapshot (for seeds).
pub fn seed(meta: &SnapshotMeta, data: &PartitionSnapshot) -> Vec<u8> {
    let mut out = serde_json::to_vec(meta).expect("encode the metadata");
    out.push(0);
    out.extend(serde_json::to_vec(data).expect("encode the snapshot data"));
    out
}

pub fn run(input: &[u8]) -> bool {
    let (meta_json, data_json) = match input.iter().position(|b| *b == 0) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &b""[..]),
    };
    // As the Raft service decodes an InstallSnapshot request.
    let meta: Result<SnapshotMeta, _> = serde_json::from_slice(meta_json);
    let data: Result<PartitionSnapshot, _> = serde_json::from_slice(data_json);
    if let Ok(m) = &meta {
        let again: SnapshotMeta = serde_json::from_slice(&serde_json::to_vec(m).expect("encode")).expect("decode");
        assert_eq!(&again, m, "snapshot metadata changed on a round trip");
    }
    if let Ok(d) = &data {
        let again: PartitionSnapshot = serde_json::from_slice(&serde_json::to_vec(d).expect("encode")).expect("decode");
        assert_eq!(&again, d, "snapshot data changed on a round trip");
    }
    let (Ok(meta), Ok(data)) = (meta, data) else { return false };
    let env = env::get();
    let scratch = env.scratch();
    let installed = env.runtime.block_on(install(&scratch, &meta, &data));
    if installed {
        // What the controller does next: apply commands on top.
        let mut metadata = data.metadata.clone().unwrap_or_default();
        let next = crate::controller::follow_up(&metadata);
        crate::controller::apply_all(&mut metadata, &next);
    }
    installed
}

async fn open_log(scratch: &env::Scratch) -> PartitionLog {
    PartitionLog::open_with(
        "__controller",
        0,
        &scratch.dir,
        scratch.index.clone(),
        LogConfig::default(),
        Visibility::Applied,
    )
    .unwrap_or_else(|e| panic!("open the controller log: {e}"))
}

async fn close(log: PartitionLog) {
    let writer = log.take_writer();
    drop(log);
    if let Some(w) = writer {
        w.await.expect("the writer task ends");
    }
}

/// Installs the snapshot; `true` when the state machine took it.
async fn install(scratch: &env::Scratch, meta: &SnapshotMeta, data: &PartitionSnapshot) -> bool {
    let log = open_log(scratch).await;
    let (tx, rx) = watch::channel(Arc::new(Metadata::default()));
    let mut sm = StateMachine::open_controller(log.clone(), tx).await.expect("open the state machine");
    let result = sm.install_snapshot(meta, data.clone()).await;
    let expected_metadata = data.metadata.clone().unwrap_or_default();
    if result.is_err() {
        drop(sm);
        close(log).await;
        return false;
    }
    assert_eq!(**rx.borrow(), expected_metadata, "the installed metadata was not published");
    let current = sm.get_current_snapshot().await.expect("current snapshot").expect("a current snapshot");
    assert_eq!(&current.meta, meta, "the installed snapshot is not the current one");
    assert_eq!(current.snapshot, *data, "the installed snapshot's data changed");
    let (applied, membership) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, meta.last_log_id, "the applied entry is not the snapshot's");
    assert_eq!(membership, meta.last_membership, "the membership is not the snapshot's");
    if let Some(last) = meta.last_log_id {
        let id = EntryId { term: last.leader_id.term, index: last.index };
        // The log held no entry: it goes on after the snapshot's.
        assert_eq!(log.last_purged(), Some(id), "the log does not go on after the snapshot's entry");
        assert_eq!(log.log_start_offset(), data.next_offset, "the log does not go on at the snapshot's offset");
    }
    drop(sm);
    close(log).await;

    // After a restart: the same applied entry and metadata.
    let log = open_log(scratch).await;
    assert_eq!(log.status().failure, None, "the log does not recover after a snapshot install");
    let (tx, rx) = watch::channel(Arc::new(Metadata::default()));
    let mut sm = StateMachine::open_controller(log.clone(), tx).await.expect("reopen the state machine");
    assert_eq!(**rx.borrow(), expected_metadata, "the metadata is not the snapshot's after a restart");
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, meta.last_log_id, "the applied entry is not the snapshot's after a restart");
    drop(sm);
    close(log).await;
    true
}
