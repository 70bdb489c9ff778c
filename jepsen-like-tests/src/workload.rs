//! The `log` workload: producers send unique values (acks=quorum) to
//! partitions they pick at random; readers poll partitions by offset (assign
//! mode); at the end every partition is drained in full and every replica's
//! digest taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_client::{Client, ClientError, Compression};
use strata_record::BatchBuilder;
use tonic::Code;

use crate::history::{CHECKER, Kind, Op, Recorder};

/// Client deadline of one operation: past it the operation is `info`.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct LogWorkload {
    pub topic: String,
    pub partitions: u32,
    pub producers: u32,
    pub readers: u32,
    pub seed: u64,
}

/// Produce outcomes while only a minority was faulted (liveness).
#[derive(Debug, Default)]
pub struct Liveness {
    pub minority_sends: AtomicU64,
    pub minority_sends_ok: AtomicU64,
}

fn encode(value: u64) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    b.push_parts(strata_record::now_ms(), None, &value.to_be_bytes(), &[]);
    b.build()
}

/// A value as written by [`encode`]; anything else reads as `u64::MAX`,
/// which no producer sends (the checker reports it as G1a).
pub(crate) fn decode(value: &[u8]) -> u64 {
    <[u8; 8]>::try_from(value).map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

/// `fail` when the operation definitely did not take effect, else `info`.
pub fn classify(e: &ClientError) -> Kind {
    match e {
        // Never sent, or refused by a node that does not lead (not proposed).
        ClientError::Connect { .. } | ClientError::InvalidAddress { .. } => Kind::Fail,
        e if e.is_not_leader() => Kind::Fail,
        ClientError::Server {
            code:
                Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::Unauthenticated,
            ..
        } => Kind::Fail,
        _ => Kind::Info,
    }
}

impl LogWorkload {
    /// Runs producers and readers until `until`.
    pub async fn run(
        &self,
        client: &Client,
        recorder: &Arc<Recorder>,
        until: Instant,
        minority_fault: &Arc<AtomicBool>,
        liveness: &Arc<Liveness>,
    ) -> anyhow::Result<()> {
        let next_value = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let client = client.clone().with_timeout(OP_TIMEOUT);
        for p in 0..self.producers {
            let (client, recorder, next_value) = (client.clone(), Arc::clone(recorder), Arc::clone(&next_value));
            let (minority_fault, liveness) = (Arc::clone(minority_fault), Arc::clone(liveness));
            let (topic, partitions, producers) = (self.topic.clone(), self.partitions, self.producers);
            let mut rng = StdRng::seed_from_u64(self.seed ^ (0x5EED_0000 + u64::from(p)));
            tasks.spawn(async move {
                let mut process = i64::from(p);
                while Instant::now() < until {
                    let value = next_value.fetch_add(1, Ordering::Relaxed);
                    let partition = rng.random_range(0..partitions);
                    let minority = minority_fault.load(Ordering::Relaxed);
                    recorder.record(process, Kind::Invoke, Op::Send { partition, value, offset: None }, None);
                    let result = client.produce_batch(&topic, partition, encode(value)).await;
                    if minority {
                        liveness.minority_sends.fetch_add(1, Ordering::Relaxed);
                    }
                    match result {
                        Ok(offset) => {
                            if minority {
                                liveness.minority_sends_ok.fetch_add(1, Ordering::Relaxed);
                            }
                            let op = Op::Send { partition, value, offset: Some(offset) };
                            recorder.record(process, Kind::Ok, op, None);
                        }
                        Err(e) => {
                            let kind = classify(&e);
                            let op = Op::Send { partition, value, offset: None };
                            recorder.record(process, kind, op, Some(e.to_string()));
                            if kind == Kind::Info {
                                // The operation may still be in flight: this
                                // process is done; a new one takes its place.
                                process += i64::from(producers);
                            }
                            // Do not spin while the cluster has no leader.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        for r in 0..self.readers {
            let (client, recorder) = (client.clone(), Arc::clone(recorder));
            let mine: Vec<u32> = (0..self.partitions).filter(|p| p % self.readers == r).collect();
            let topic = self.topic.clone();
            let process = i64::from(self.producers + r) + 1_000_000;
            tasks.spawn(async move {
                let mut positions = vec![0u64; mine.len()];
                let mut turn = 0usize;
                while Instant::now() < until && !mine.is_empty() {
                    let i = turn % mine.len();
                    turn += 1;
                    let polled = poll(&client, &recorder, process, &topic, mine[i], positions[i], false).await;
                    match polled {
                        Some((next, _)) => positions[i] = next,
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a client task panicked")?;
        }
        Ok(())
    }

    /// Reads every partition from offset 0 to its end: the leader's high
    /// watermark, and at least past every offset acknowledged in `history`
    /// (a node that lost the lead and lags still answers reads, with its own
    /// lower end). A partition that does not get there within `timeout` is
    /// left as read so far: the checker reports what is missing.
    pub async fn drain(
        &self,
        client: &Client,
        recorder: &Recorder,
        history: &[crate::history::Event],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let client = client.clone().with_timeout(OP_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let mut acked_end = vec![0u64; self.partitions as usize];
        for e in history {
            if let (Kind::Ok, Op::Send { partition, offset: Some(o), .. }) = (e.kind, &e.op)
                && let Some(end) = acked_end.get_mut(*partition as usize)
            {
                *end = (*end).max(o + 1);
            }
        }
        for partition in 0..self.partitions {
            let mut position = 0;
            let want = acked_end[partition as usize];
            loop {
                if Instant::now() > deadline {
                    eprintln!(
                        "partition {partition}: not drained within {timeout:?} (read to offset {position}, acknowledged up to {want})"
                    );
                    break;
                }
                match poll(&client, recorder, CHECKER, &self.topic, partition, position, true).await {
                    Some((next, end)) if next >= end && next >= want => break,
                    // Caught up with a node that is behind: wait for it (or a
                    // refreshed leader) to go further.
                    Some((next, end)) if next >= end => {
                        position = next;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Some((next, _)) => position = next,
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }

    /// Records every replica's digest of every partition, once all the
    /// replicas of a partition have applied the same entries.
    pub async fn digests(
        &self,
        client: &Client,
        addrs: &[(u32, String)],
        recorder: &Recorder,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let addr_of = |node: u32| {
            addrs
                .iter()
                .find(|(n, _)| *n == node)
                .map(|(_, a)| a.as_str())
                .with_context(|| format!("no node {node} in the cluster"))
        };
        let meta = client.metadata(&[&self.topic]).await?;
        let topic = meta.topics.first().context("the topic is missing from the metadata")?;
        for p in &topic.partitions {
            let replicas: Vec<u32> = p.replicas.iter().map(|&r| r as u32).collect();
            loop {
                let mut digests = Vec::new();
                let mut errors = Vec::new();
                for &node in &replicas {
                    let addr = addr_of(node)?;
                    let d = async { client.node(addr).await?.partition_digest(&self.topic, p.partition, None).await };
                    match d.await {
                        Ok(d) => digests.push((node, d)),
                        Err(e) => errors.push(format!("node {node}: {e}")),
                    }
                }
                let applied: Vec<u64> = digests.iter().map(|(_, d)| d.applied_index).collect();
                if digests.len() == replicas.len() && applied.windows(2).all(|w| w[0] == w[1]) {
                    let upto = applied[0];
                    for &node in &replicas {
                        let node_client = client.node(addr_of(node)?).await?;
                        let d = node_client.partition_digest(&self.topic, p.partition, Some(upto)).await?;
                        let op = Op::Digest {
                            partition: p.partition,
                            node,
                            upto: d.upto,
                            first_index: d.first_index,
                            entries: d.entries,
                            crc32c: d.crc32c,
                        };
                        recorder.record(CHECKER, Kind::Ok, op, None);
                    }
                    break;
                }
                if Instant::now() > deadline {
                    let applied: Vec<String> =
                        digests.iter().map(|(n, d)| format!("node {n}: {}", d.applied_index)).collect();
                    bail!(
                        "the replicas of partition {} did not converge within {timeout:?} (applied: {}; errors: {})",
                        p.partition,
                        applied.join(", "),
                        if errors.is_empty() { "none".to_owned() } else { errors.join("; ") }
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

/// One poll of `partition` from `from` at its leader; returns the offset to
/// read next and the leader's high watermark, or `None` when it failed.
async fn poll(
    client: &Client,
    recorder: &Recorder,
    process: i64,
    topic: &str,
    partition: u32,
    from: u64,
    drain: bool,
) -> Option<(u64, u64)> {
    recorder.record(process, Kind::Invoke, Op::Poll { partition, from, records: Vec::new(), drain }, None);
    match client.fetch(topic, partition, from, 256 * 1024, Duration::from_millis(100)).await {
        Ok(result) => {
            let records: Vec<(u64, u64)> = result.records.iter().map(|r| (r.offset, decode(&r.value))).collect();
            let next = records.last().map_or(from, |(o, _)| o + 1);
            recorder.record(process, Kind::Ok, Op::Poll { partition, from, records, drain }, None);
            Some((next, result.high_watermark))
        }
        Err(e) => {
            let op = Op::Poll { partition, from, records: Vec::new(), drain };
            recorder.record(process, classify(&e), op, Some(e.to_string()));
            None
        }
    }
}
