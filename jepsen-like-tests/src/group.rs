//! The `group` workload: the `log` workload's producers and readers, plus
//! members of one consumer group that join, read, commit after processing,
//! and leave or crash (drop their session without a goodbye) at random,
//! while an observer reads the group's committed offsets. The checker
//! holds every commit and every read of the committed offsets to the
//! commits acknowledged before it was invoked: committed offsets never go
//! backwards, and an acknowledged commit is never lost (also across the
//! kill -9 of every node). What members read is checked like any poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_client::{Client, GroupConsumerConfig, GroupRecord, next_offsets};

use crate::history::{CHECKER, Kind, Op, Recorder};
use crate::workload::{OP_TIMEOUT, classify, decode};

/// Process numbers of group members start here (each member takes a new
/// one after an operation of unknown outcome); the observer's is below.
const MEMBER_PROCESS: i64 = 2_000_000;
const OBSERVER_PROCESS: i64 = 3_000_000;
/// A member not heard from for this long is removed by the coordinator.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Polls a member makes before it leaves or crashes: MIN..MAX.
const POLLS: std::ops::Range<u32> = 5..60;
/// Polls in a row that fail before a member gives up its session.
const MAX_POLL_ERRORS: u32 = 20;

#[derive(Debug, Clone)]
pub struct GroupWorkload {
    pub topic: String,
    pub group: String,
    pub members: u32,
    pub seed: u64,
}

impl GroupWorkload {
    /// Runs the members and the observer until `until`.
    pub async fn run(&self, client: &Client, recorder: &Arc<Recorder>, until: Instant) -> anyhow::Result<()> {
        let client = client.clone().with_timeout(OP_TIMEOUT);
        let mut tasks = tokio::task::JoinSet::new();
        for m in 0..self.members {
            let (client, recorder, this) = (client.clone(), Arc::clone(recorder), self.clone());
            tasks.spawn(async move { this.member(m, &client, &recorder, until).await });
        }
        {
            let (client, recorder, this) = (client.clone(), Arc::clone(recorder), self.clone());
            tasks.spawn(async move {
                while Instant::now() < until {
                    this.read_committed(&client, &recorder, OBSERVER_PROCESS).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                bail!("a group task panicked: {e}");
            }
        }
        Ok(())
    }

    /// One member slot: joins, polls and commits, then leaves or crashes,
    /// and joins again, until `until`.
    async fn member(&self, m: u32, client: &Client, recorder: &Recorder, until: Instant) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (0x6_0000_0000 + u64::from(m)));
        let mut process = MEMBER_PROCESS + i64::from(m);
        let stride = i64::from(self.members);
        let name = |id: &str| format!("member-{m}/{id}");
        while Instant::now() < until {
            let mut config = GroupConsumerConfig::new(&self.group, &[&self.topic]);
            config.session_timeout = SESSION_TIMEOUT;
            config.max_wait = Duration::from_millis(200);
            config.client_id = format!("jepsen-member-{m}");
            let joined = tokio::time::timeout(OP_TIMEOUT * 2, client.group_consumer(config)).await;
            let mut consumer = match joined {
                Ok(Ok(c)) => c,
                Ok(Err(_)) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let id = consumer.member_id();
            let member =
                |action: &str| Op::Member { group: self.group.clone(), member: name(&id), action: action.to_owned() };
            recorder.record(process, Kind::Ok, member("join"), None);
            let polls = rng.random_range(POLLS);
            let mut errors = 0;
            for _ in 0..polls {
                if Instant::now() >= until || errors >= MAX_POLL_ERRORS {
                    break;
                }
                let before = consumer.positions();
                let records = match consumer.poll().await {
                    Ok(r) => {
                        errors = 0;
                        r
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if records.is_empty() {
                    continue;
                }
                self.record_reads(recorder, process, &records, &before);
                // Processed: commit the offsets after them.
                let op = Op::Commit {
                    group: self.group.clone(),
                    offsets: next_offsets(&records).into_iter().map(|((_, p), o)| (p, o)).collect(),
                };
                recorder.record(process, Kind::Invoke, op.clone(), None);
                match consumer.commit_through(&records).await {
                    Ok(()) => {
                        recorder.record(process, Kind::Ok, op, None);
                    }
                    Err(e) => {
                        let kind = classify(&e);
                        recorder.record(process, kind, op, Some(e.to_string()));
                        if kind == Kind::Info {
                            process += stride;
                        }
                    }
                }
            }
            if rng.random_bool(0.5) {
                let left = tokio::time::timeout(OP_TIMEOUT * 2, consumer.close()).await;
                let detail = match left {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("no answer to the leave".to_owned()),
                };
                recorder.record(process, Kind::Ok, member("leave"), detail);
            } else {
                // Gone without a word: the coordinator notices the session
                // end (or its timeout) and moves the partitions.
                drop(consumer);
                recorder.record(process, Kind::Ok, member("crash"), None);
            }
        }
    }

    /// What a member read, as one poll per partition (the records of a
    /// partition come in offset order within a poll), from the member's
    /// position before the poll (so a read that skips ahead of it is a
    /// `poll-skip`); a partition assigned during the poll has no earlier
    /// position: its first record stands for it.
    fn record_reads(
        &self,
        recorder: &Recorder,
        process: i64,
        records: &[GroupRecord],
        before: &BTreeMap<(String, u32), u64>,
    ) {
        let mut by_partition: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for r in records {
            by_partition.entry(r.partition).or_default().push((r.record.offset, decode(&r.record.value)));
        }
        for (partition, read) in by_partition {
            let from = before.get(&(self.topic.clone(), partition)).copied().unwrap_or(read[0].0);
            recorder.record(
                process,
                Kind::Invoke,
                Op::Poll { partition, from, records: Vec::new(), drain: false },
                None,
            );
            recorder.record(process, Kind::Ok, Op::Poll { partition, from, records: read, drain: false }, None);
        }
    }

    /// One read of the group's committed offsets; `true` when it answered.
    async fn read_committed(&self, client: &Client, recorder: &Recorder, process: i64) -> bool {
        let op = |offsets| Op::ReadCommitted { group: self.group.clone(), offsets };
        recorder.record(process, Kind::Invoke, op(Vec::new()), None);
        match client.fetch_offsets(&self.group, &[]).await {
            Ok(committed) => {
                let offsets =
                    committed.iter().filter(|c| c.topic == self.topic).map(|c| (c.partition, c.offset)).collect();
                recorder.record(process, Kind::Ok, op(offsets), None);
                true
            }
            Err(e) => {
                recorder.record(process, classify(&e), op(Vec::new()), Some(e.to_string()));
                false
            }
        }
    }

    /// After the final heal: one read of the committed offsets that answers
    /// (every acknowledged commit must be in it).
    pub async fn final_read(&self, client: &Client, recorder: &Recorder, timeout: Duration) -> anyhow::Result<()> {
        let client = client.clone().with_timeout(OP_TIMEOUT);
        let deadline = Instant::now() + timeout;
        while !self.read_committed(&client, recorder, CHECKER).await {
            if Instant::now() > deadline {
                bail!("the group's committed offsets could not be read within {timeout:?} after the final heal");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }
}
