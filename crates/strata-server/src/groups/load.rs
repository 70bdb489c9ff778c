//! Rebuilding a coordinator's shard from its partition of the groups topic,
//! and checking every record read back: a record that does not parse, or
//! holds what no coordinator writes, is reported with the topic, partition
//! and offset (`DATA_LOSS`), never applied and never a panic.

use std::time::Duration;

use strata_storage::{MAX_PARTITIONS, PartitionLog};
use tonic::Status;

use super::{Entry, GROUPS_TOPIC, MAX_SESSION_TIMEOUT_MS, MIN_SESSION_TIMEOUT_MS, ShardState, validate_group_name};
use crate::status::from_storage;

/// Largest chunk read while loading a partition.
const LOAD_READ_BYTES: usize = 4 * 1024 * 1024;
/// Epochs past this are not ones a coordinator wrote (they grow by one a
/// change): a record holding one is refused, so that no epoch overflows.
const MAX_EPOCH: u64 = 1 << 62;

/// Reads a shard's partition from its start up to entry `upto_index` (at
/// least: what is visible beyond it is read too) and rebuilds its groups.
/// Returns the state and the records read.
///
/// The coordinator waited until it applied `upto_index`; a leader applies
/// what a majority holds, which need not include itself, so its high
/// watermark (applied *and* durable here) may still be below that entry:
/// reading only up to it would miss committed changes. It waits (up to
/// `timeout`) until the entry is visible here first.
pub(super) async fn read_shard(
    log: &PartitionLog,
    p: u32,
    upto_index: u64,
    timeout: Duration,
) -> Result<(ShardState, u64), Status> {
    match tokio::time::timeout(timeout, log.wait_visible(upto_index)).await {
        Ok(visible) => visible.map_err(from_storage)?,
        Err(_) => {
            return Err(Status::unavailable(format!(
                "{GROUPS_TOPIC} partition {p}: entry {upto_index} was applied but is not durable here after {timeout:?}"
            )));
        }
    };
    let mut fresh = ShardState::default();
    let mut offset = log.log_start_offset();
    let mut records = 0u64;
    while offset < log.high_watermark() {
        let read = log.read(offset, LOAD_READ_BYTES).await.map_err(from_storage)?;
        if read.batches.is_empty() {
            break;
        }
        for batch in &read.batches {
            let decoded = strata_record::decode(batch).map_err(|e| {
                Status::data_loss(format!(
                    "{GROUPS_TOPIC} partition {p} near offset {offset}: a batch that does not decode: {e}"
                ))
            })?;
            for record in decoded.into_iter().filter(|r| r.offset >= offset) {
                let (group, entry) = parse(&record).map_err(|why| {
                    Status::data_loss(format!(
                        "{GROUPS_TOPIC} partition {p}, offset {}: a group record {why}",
                        record.offset
                    ))
                })?;
                fresh.apply(&group, entry);
                records += 1;
            }
        }
        offset = read.next_offset;
    }
    Ok((fresh, records))
}

/// A record of the groups topic: the group (its key) and the change.
fn parse(record: &strata_record::Record) -> Result<(String, Entry), String> {
    let key = record.key.as_deref().ok_or("without a key (the group's name)")?;
    let group = std::str::from_utf8(key).map_err(|_| "whose key (the group's name) is not UTF-8".to_owned())?;
    validate_group_name(group).map_err(|s| format!("whose key is not a group name: {}", s.message()))?;
    let entry: Entry = serde_json::from_slice(&record.value).map_err(|e| format!("that does not parse: {e}"))?;
    check(group, &entry).map_err(|why| format!("of group '{group}' that no coordinator writes: {why}"))?;
    Ok((group.to_owned(), entry))
}

/// What every record a coordinator writes satisfies (sizes are not checked
/// here: records written before the request limits existed stay readable).
fn check(group: &str, entry: &Entry) -> Result<(), String> {
    match entry {
        Entry::Consumer { state } => {
            if state.name != group {
                return Err(format!("the state of group '{}'", state.name));
            }
            if state.epoch > MAX_EPOCH {
                return Err(format!("group epoch {}", state.epoch));
            }
            if let Some((topic, n)) = state.partitions.iter().find(|(t, n)| t.is_empty() || **n > MAX_PARTITIONS) {
                return Err(format!("{n} partitions of topic '{topic}'"));
            }
            for (id, m) in &state.members {
                if id.is_empty() || m.epoch > MAX_EPOCH {
                    return Err(format!("member '{id}' at epoch {}", m.epoch));
                }
                if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&m.session_timeout_ms) {
                    return Err(format!("member '{id}' with a session timeout of {} ms", m.session_timeout_ms));
                }
            }
        }
        Entry::Offsets { offsets, .. } => {
            if let Some((topic, p, ..)) = offsets.iter().find(|(t, p, ..)| t.is_empty() || *p >= MAX_PARTITIONS) {
                return Err(format!("an offset of topic '{topic}' partition {p}"));
            }
        }
        Entry::ShareConfig { topic, config } => {
            if topic.is_empty() || config.dead_letter_topic.is_empty() || config.max_deliveries == 0 {
                return Err(format!("share settings {config:?} of topic '{topic}'"));
            }
        }
        Entry::SharePartition { topic, partition, state } => {
            if topic.is_empty() || *partition >= MAX_PARTITIONS || state.start > state.end {
                return Err(format!(
                    "share state [{}, {}) of topic '{topic}' partition {partition}",
                    state.start, state.end
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use strata_record::{BatchBuilder, Compression};
    use strata_storage::{EntryId, IndexDb, LogConfig, Visibility};
    use tonic::Code;

    use super::*;

    fn open(dir: &std::path::Path) -> PartitionLog {
        let db = IndexDb::open(&dir.join("index")).expect("index");
        let index = Arc::new(db.partition(1, 0));
        PartitionLog::open_with(GROUPS_TOPIC, 0, &dir.join("0"), index, LogConfig::default(), Visibility::Applied)
            .expect("log")
    }

    /// A batch of one record: `key`, and `value` as its value.
    fn record(key: Option<&[u8]>, value: &[u8]) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None);
        b.push_parts(strata_storage::now_ms(), key, value, &[]);
        b.build()
    }

    fn commit(group: &str, offset: u64) -> Bytes {
        let entry = Entry::Offsets { offsets: vec![("t".into(), 0, offset, String::new())], timestamp_ms: 1 };
        record(Some(group.as_bytes()), &serde_json::to_vec(&entry).expect("json"))
    }

    /// A coordinator that waited until it applied its new term's entries
    /// reads all of them, even those its own fsync has not reached yet (a
    /// leader applies what a majority holds, which need not include it:
    /// its high watermark can be behind what it applied).
    #[tokio::test(flavor = "current_thread")]
    async fn a_shard_is_read_up_to_what_was_applied_even_before_the_local_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path());
        let mut tickets = Vec::new();
        for i in 0..20u64 {
            tickets.push(log.submit_entry(commit("g", i), EntryId { term: 1, index: i }).await.expect("submit"));
        }
        // Committed (and applied) through the others' fsyncs: nothing has
        // run the writer of this one yet.
        log.set_applied(19).expect("applied");
        let (state, records) = read_shard(&log, 0, 19, Duration::from_secs(10)).await.expect("read");
        assert_eq!(records, 20, "every applied record is read");
        let committed = state.offsets.get("g").and_then(|o| o.get(&("t".to_owned(), 0))).map(|c| c.offset);
        assert_eq!(committed, Some(19));
        for t in tickets {
            t.wait().await.expect("durable");
        }
    }

    /// Each malformed record: the load fails with DATA_LOSS naming the
    /// topic, partition and offset; nothing panics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_malformed_group_record_is_reported_with_its_offset() {
        let consumer = |name: &str, patch: &dyn Fn(&mut serde_json::Value)| {
            let mut g =
                serde_json::to_value(Entry::Consumer { state: super::super::ConsumerGroup::new(name) }).expect("json");
            patch(&mut g);
            record(Some(b"g"), &serde_json::to_vec(&g).expect("json"))
        };
        let no_offsets = serde_json::to_vec(&Entry::Offsets { offsets: vec![], timestamp_ms: 1 }).expect("json");
        let cases: Vec<(&str, Bytes)> = vec![
            ("does not parse", record(Some(b"g"), b"{not json")),
            ("without a key", record(None, &no_offsets)),
            ("not UTF-8", record(Some(b"g\xff"), &no_offsets)),
            ("not a group name", record(Some(b"g\n"), &no_offsets)),
            ("the state of group 'other'", consumer("other", &|_| {})),
            (
                "4294967295 partitions",
                consumer("g", &|v| v["state"]["partitions"] = serde_json::json!({ "t": u32::MAX })),
            ),
            ("group epoch", consumer("g", &|v| v["state"]["epoch"] = serde_json::json!(u64::MAX))),
        ];
        for (what, bad) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = open(dir.path());
            let mut tickets = Vec::new();
            for (i, batch) in [commit("g", 0), commit("g", 1), bad, commit("g", 2)].into_iter().enumerate() {
                let id = EntryId { term: 1, index: i as u64 };
                tickets.push(log.submit_entry(batch, id).await.expect("submit"));
            }
            for t in tickets {
                t.wait().await.expect("durable");
            }
            log.set_applied(3).expect("applied");
            let Err(err) = read_shard(&log, 0, 3, Duration::from_secs(10)).await else {
                panic!("{what}: the malformed record was applied");
            };
            assert_eq!(err.code(), Code::DataLoss, "{what}: {err:?}");
            assert!(
                err.message().contains(&format!("{GROUPS_TOPIC} partition 0, offset 2")),
                "{what}: {}",
                err.message()
            );
            assert!(err.message().contains(what), "{what}: {}", err.message());
        }
    }
}
