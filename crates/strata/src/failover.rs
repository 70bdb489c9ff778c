//! `strata bench failover`: how long a partition is unavailable for writes
//! when its leader is killed.
//!
//! Starts its own loopback cluster, creates a one-partition topic with a
//! replica on every node, and keeps one producer writing (one request in
//! flight, acks=quorum). Each round kills the partition's leader with
//! SIGKILL and measures from the kill to the first acknowledgement of a
//! request *sent after* the kill (so an answer the old leader sent just
//! before dying does not count); then restarts the killed node and waits
//! until it has caught up before the next round.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use strata_client::{Client, Compression, Record, TopicConfig};

use crate::cli::OutputFormat;
use crate::cluster::LocalCluster;

#[derive(Args, Debug)]
pub struct FailoverBench {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Nodes of the cluster (the topic has a replica on each).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 7601)]
    base_port: u16,
    /// Where the nodes keep their data (removed at the end).
    #[arg(long, default_value = "/var/tmp/strata-failover")]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
}

const TOPIC: &str = "failover";
/// Every wait of a round is bounded by this.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

/// Acknowledged requests: (sent, acknowledged).
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

pub async fn run(args: FailoverBench) -> anyhow::Result<()> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (a leader must be killable with a majority left)");
    }
    let times =
        LocalCluster::scratch(args.nodes, args.base_port, &args.data_dir, async |c| measure(&args, c).await).await?;
    report(&args, &times)
}

async fn measure(args: &FailoverBench, cluster: &mut LocalCluster) -> anyhow::Result<Vec<Duration>> {
    let client = Client::connect(&cluster.bootstrap()).await?.with_timeout(Duration::from_secs(5));
    let rf = u32::from(args.nodes);
    client.create_topic_replicated(TOPIC, 1, Some(rf), TopicConfig::default()).await?;
    let acks: Acks = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (client, acks, stop) = (client.clone(), Arc::clone(&acks), Arc::clone(&stop));
        tokio::spawn(async move {
            let record = Record { value: bytes::Bytes::from(vec![b'x'; 1024]), ..Record::default() };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = strata_record::encode(std::slice::from_ref(&record), Compression::None);
                let sent = Instant::now();
                if client.produce_batch(TOPIC, 0, batch).await.is_ok() {
                    acks.lock().map(|mut a| a.push((sent, Instant::now()))).ok();
                } else {
                    // The leader just died (the answer was lost): go on.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut times = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        // The producer is being acknowledged.
        let started = Instant::now();
        wait_for(&acks, started, "acknowledgements before the kill").await?;
        let leader = leader(&client).await?;
        let killed = Instant::now();
        cluster.kill(leader).await?;
        let first = wait_for(&acks, killed, "an acknowledgement after the kill").await?;
        let took = first - killed;
        eprintln!("round {round}: killed node {leader}; writes acknowledged again after {} ms", took.as_millis());
        times.push(took);
        cluster.spawn(leader)?;
        cluster.wait_listening(leader).await?;
        caught_up(&client, cluster, leader).await?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = producer.await;
    Ok(times)
}

/// Waits until a request sent after `after` is acknowledged; returns when.
async fn wait_for(acks: &Acks, after: Instant, what: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + ROUND_LIMIT;
    loop {
        // One producer, one request at a time: acks are in send order, so
        // the first one sent after `after` is found from the end.
        let found = acks
            .lock()
            .ok()
            .and_then(|a| a.iter().rev().take_while(|(sent, _)| *sent > after).last().map(|(_, acked)| *acked));
        if let Some(at) = found {
            return Ok(at);
        }
        if Instant::now() > deadline {
            bail!("no {what} within {ROUND_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn leader(client: &Client) -> anyhow::Result<u16> {
    let deadline = Instant::now() + ROUND_LIMIT;
    loop {
        let meta = client.metadata(&[TOPIC]).await;
        let leader = meta.ok().and_then(|m| m.topics.first().and_then(|t| t.partitions.first().map(|p| p.leader)));
        if let Some(l) = leader.filter(|l| *l != 0) {
            return u16::try_from(l).context("node id out of range");
        }
        if Instant::now() > deadline {
            bail!("the partition has no leader");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the restarted node has applied what the leader had.
async fn caught_up(client: &Client, cluster: &LocalCluster, node: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + ROUND_LIMIT;
    let leader = leader(client).await?;
    let target = client.node(&cluster.addr(leader)).await?.partition_digest(TOPIC, 0, None).await?.applied_index;
    let restarted = client.node(&cluster.addr(node)).await?;
    loop {
        if restarted.partition_digest(TOPIC, 0, None).await.is_ok_and(|d| d.applied_index >= target) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {node} did not catch up within {ROUND_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(args: &FailoverBench, times: &[Duration]) -> anyhow::Result<()> {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = if ms.is_empty() {
        0.0
    } else if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    let (min, max) = (ms.first().copied().unwrap_or(0.0), ms.last().copied().unwrap_or(0.0));
    match args.format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({"nodes": args.nodes, "rounds": ms.len(), "failover_ms": ms,
                "median_ms": median, "min_ms": min, "max_ms": max})
        ),
        OutputFormat::Text => println!(
            "failover (kill -9 of the leader -> first acknowledged write, {} nodes): median {median:.0} ms, \
             min {min:.0} ms, max {max:.0} ms over {} rounds",
            args.nodes,
            ms.len()
        ),
    }
    Ok(())
}
