//! The seed corpus, made by Strata's own code paths: batches built by the
//! record codec in each compression and control batches as the Raft layer
//! writes them; segment files written by a real partition log (plain
//! appends and Raft entries); controller commands as proposed; snapshots as
//! the state machine stores them; group records as the coordinator writes
//! them. `strata-fuzz --write-corpus` writes them to `fuzz/corpus/`.
//!
//! Seeds named `valid-*` must be accepted by their target (a unit test
//! checks); the others are edge cases (a torn tail, a flipped bit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use openraft::Membership;
use strata_raft::controller::{Command, Metadata, NodeRecord};
use strata_raft::state_machine::PartitionSnapshot;
use strata_raft::types::{SnapshotMeta, StoredMembership, log_id};
use strata_raft::{NodeId, NodeInfo};
use strata_record::{Compression, Header, Placement, Record};
use strata_server::groups::Entry;
use strata_server::groups::assignor::Strategy;
use strata_server::groups::consumer::{ConsumerGroup, JoinSpec};
use strata_server::groups::share::{ShareConfig, SharePartition};
use strata_storage::{EntryId, LogConfig, PartitionLog, TopicOverrides, Visibility};

use crate::{controller, env, groups, segment, snapshot};

const COMPRESSIONS: [(Compression, &str); 3] =
    [(Compression::None, "none"), (Compression::Lz4, "lz4"), (Compression::Zstd, "zstd")];

fn records(n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            offset: 0,
            timestamp_ms: 1_700_000_000_000 + i as i64 * 7,
            key: (i % 2 == 0).then(|| Bytes::from(format!("key-{i}"))),
            value: Bytes::from(format!("value {i} {}", "x".repeat(i as usize * 5))),
            headers: if i % 3 == 0 {
                vec![Header { key: "trace".into(), value: Bytes::from_static(b"\x00\x01") }]
            } else {
                Vec::new()
            },
        })
        .collect()
}

/// A batch of `n` records as a producer sends it, placed as the log
/// stamps it.
fn batch(n: u64, compression: Compression, at: Placement) -> Vec<u8> {
    let mut b = strata_record::encode(&records(n), compression).to_vec();
    strata_record::stamp(&mut b, at);
    b
}

fn membership() -> StoredMembership {
    let voters: BTreeSet<NodeId> = [1, 2, 3].into();
    let nodes: BTreeMap<NodeId, NodeInfo> =
        (1..=3).map(|id| (id, NodeInfo { addr: format!("10.0.0.{id}:7878") })).collect();
    let m = Membership::new(vec![voters], nodes).expect("a valid membership");
    StoredMembership::new(Some(log_id(EntryId { term: 1, index: 0 })), m)
}

fn commands() -> Vec<Command> {
    let node = |id: NodeId| {
        Command::RegisterNode(NodeRecord { id, addr: format!("10.0.0.{id}:7878"), incarnation: format!("inc-{id}") })
    };
    vec![
        Command::Bootstrap { cluster_id: "c-6f1d".into() },
        node(1),
        node(2),
        node(3),
        Command::CreateTopic {
            name: "orders".into(),
            replicas: vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]],
            overrides: TopicOverrides { retention_ms: Some(3_600_000), ..TopicOverrides::default() },
        },
        Command::AlterTopic {
            name: "orders".into(),
            overrides: TopicOverrides { segment_bytes: Some(1 << 20), ..TopicOverrides::default() },
        },
        Command::AddPartitions { name: "orders".into(), from: 3, replicas: vec![vec![1, 3, 2]] },
        Command::CreateTopic { name: "audit".into(), replicas: vec![vec![2]], overrides: TopicOverrides::default() },
        Command::DeleteTopic { name: "audit".into() },
    ]
}

fn metadata() -> Metadata {
    let mut m = Metadata::default();
    for c in commands() {
        m.apply(&c).expect("the seed commands apply");
    }
    m
}

fn group_entries() -> Vec<(&'static str, Entry)> {
    let mut group = ConsumerGroup::new("billing");
    let spec = |client: &str, topics: &[&str]| JoinSpec {
        client_id: client.into(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        strategy: Strategy::Sticky,
        session_timeout_ms: 10_000,
    };
    let counts: BTreeMap<String, u32> = [("orders".to_owned(), 4), ("refunds".to_owned(), 2)].into();
    group.join("m-1", spec("a", &["orders"]), counts.clone()).expect("join");
    group.join("m-2", spec("b", &["orders", "refunds"]), counts.clone()).expect("join");
    let mut ranged = ConsumerGroup::new("reports");
    let range = JoinSpec { strategy: Strategy::Range, ..spec("c", &["orders"]) };
    ranged.join("m-9", range, [("orders".to_owned(), 4)].into()).expect("join");
    let mut part = SharePartition::starting_at(10);
    part.deliver_new(20);
    part.redeliver(12);
    part.done(10);
    part.done(15);
    vec![
        ("billing", Entry::Consumer { state: group }),
        ("reports", Entry::Consumer { state: ranged }),
        (
            "billing",
            Entry::Offsets {
                offsets: vec![("orders".into(), 0, 42, String::new()), ("orders".into(), 1, 7, "meta".into())],
                timestamp_ms: 1_700_000_000_000,
            },
        ),
        (
            "jobs",
            Entry::ShareConfig { topic: "tasks".into(), config: ShareConfig::requested("tasks", "jobs", 0, 0, "") },
        ),
        ("jobs", Entry::SharePartition { topic: "tasks".into(), partition: 0, state: part }),
    ]
}

/// A segment file written by a real partition log: plain appends in each
/// compression, or Raft entries (a leader's blank entry among them).
fn segment_file(raft: bool) -> Vec<u8> {
    let env = env::get();
    let scratch = env.scratch();
    env.runtime.block_on(async {
        let visibility = if raft { Visibility::Applied } else { Visibility::OnFlush };
        let log =
            PartitionLog::open_with("seed", 0, &scratch.dir, scratch.index.clone(), LogConfig::default(), visibility)
                .expect("open a log");
        if raft {
            let blank = strata_record::control_batch("raft.blank", b"", 0);
            let mut tickets = vec![log.submit_entry(blank, EntryId { term: 1, index: 0 }).await.expect("submit")];
            for (i, (c, _)) in COMPRESSIONS.iter().enumerate() {
                let b = strata_record::encode(&records(3), *c);
                let id = EntryId { term: 1, index: i as u64 + 1 };
                tickets.push(log.submit_entry(b, id).await.expect("submit"));
            }
            for t in tickets {
                t.wait().await.expect("durable");
            }
        } else {
            for (i, (c, _)) in COMPRESSIONS.iter().enumerate() {
                log.append(strata_record::encode(&records(i as u64 + 2), *c)).await.expect("append");
            }
        }
        let writer = log.take_writer();
        drop(log);
        if let Some(w) = writer {
            w.await.expect("writer");
        }
    });
    std::fs::read(segment::path(&scratch.dir, 0)).expect("read the segment")
}

/// Every seed: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let at = Placement { base_offset: 1000, term: 3, log_index: 17 };
    for (c, name) in COMPRESSIONS {
        out.push(("record", format!("valid-{name}"), batch(5, c, at)));
    }
    out.push(("record", "valid-one-record".into(), batch(1, Compression::None, Placement::default())));
    out.push(("record", "valid-control-blank".into(), strata_record::control_batch("raft.blank", b"", 0).to_vec()));
    let members = serde_json::to_vec(membership().membership()).expect("encode a membership");
    out.push((
        "record",
        "valid-control-membership".into(),
        strata_record::control_batch("raft.membership", &members, 0).to_vec(),
    ));
    let whole = batch(4, Compression::Lz4, at);
    out.push(("record", "edge-truncated".into(), whole[..whole.len() - 9].to_vec()));

    let plain = segment_file(false);
    let raft = segment_file(true);
    out.push(("segment", "valid-appends".into(), segment::seed(&plain)));
    out.push(("segment", "valid-raft-entries".into(), segment::seed(&raft)));
    let mut torn = plain.clone();
    torn.extend_from_slice(&batch(2, Compression::None, Placement::default())[..40]);
    out.push(("segment", "valid-torn-tail".into(), segment::seed(&torn)));
    let mut sealed = segment::seed(&plain);
    sealed[0] = 4; // sealed, followed by the active segment at 2 + 3 + 4 records
    sealed[9..11].copy_from_slice(&9u16.to_le_bytes());
    out.push(("segment", "valid-sealed".into(), sealed));
    let mut flipped = plain.clone();
    flipped[70] ^= 0x10;
    out.push(("segment", "edge-corrupt-first-batch".into(), segment::seed(&flipped)));

    let meta =
        SnapshotMeta { last_log_id: Some(log_id(EntryId { term: 2, index: 40 })), last_membership: membership() };
    let controller_data = PartitionSnapshot { next_offset: 9, metadata: Some(metadata()), staged: None };
    out.push(("snapshot", "valid-controller".into(), snapshot::seed(&meta, &controller_data)));
    let partition_data = PartitionSnapshot { next_offset: 123_456, metadata: None, staged: None };
    out.push(("snapshot", "valid-partition".into(), snapshot::seed(&meta, &partition_data)));
    out.push((
        "snapshot",
        "valid-empty".into(),
        snapshot::seed(&SnapshotMeta::default(), &PartitionSnapshot::default()),
    ));

    for (c, name) in COMPRESSIONS {
        out.push(("controller", format!("valid-lines-{name}"), controller::seed_lines(&commands(), c)));
    }
    for (i, c) in commands().iter().enumerate().take(5) {
        let batch = strata_raft::controller::encode_command(c).expect("encode a command");
        out.push(("controller", format!("valid-batch-{i}"), controller::seed_batch(&batch)));
    }

    for (c, name) in COMPRESSIONS {
        out.push(("groups", format!("valid-lines-{name}"), groups::seed_lines(&group_entries(), c)));
    }
    // As the coordinator writes a group's changes: one batch, the group's
    // name as every record's key.
    let mut builder = strata_record::BatchBuilder::new(Compression::None);
    for (group, entry) in group_entries() {
        let value = serde_json::to_vec(&entry).expect("encode a group record");
        builder.push_parts(1_700_000_000_000, Some(group.as_bytes()), &value, &[]);
    }
    out.push(("groups", "valid-batch".into(), groups::seed_batch(&builder.build())));
    out
}

/// Writes every seed under `root/<target>/`.
pub fn write(root: &Path) -> std::io::Result<usize> {
    let seeds = all();
    for (target, name, data) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), data)?;
    }
    Ok(seeds.len())
}
