//! `strata bench partitions`: what many partitions cost a cluster.
//!
//! Starts its own loopback cluster (`--nodes`, every partition replicated
//! `--replication-factor` times), then:
//! - creates `--partitions` partitions (topics of `--per-topic`), timed:
//!   partitions per second, until every one has a leader;
//! - lets the cluster settle for 5 s, then idle for `--idle`, and reads each node's CPU time and
//!   resident memory from `/proc` (a share of one core, MiB);
//! - times a metadata request for every topic (what `topic describe` and
//!   clients' routing ask);
//! - with `--load`, produces to the first topic's first `--load-partitions`
//!   partitions for that long (one producer each, 64 records of 1 KiB per
//!   request, acks=quorum): records per second with the others idle;
//! - kills (SIGKILL) the node that leads the most partitions and, for each
//!   of those partitions, writes one record at a time until one is
//!   acknowledged: the time from the kill to that acknowledgement, per
//!   partition (p50, p99, max).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use strata_client::{Client, Compression, Record, TopicConfig};

use crate::cli::OutputFormat;
use crate::cluster::LocalCluster;

#[derive(Args, Debug)]
pub struct PartitionsBench {
    /// Partitions to create in all.
    #[arg(long, default_value_t = 1000)]
    partitions: u32,
    /// Partitions per topic (topics `parts-0`, `parts-1`, ...).
    #[arg(long, default_value_t = 100)]
    per_topic: u32,
    /// Nodes of the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Replicas per partition.
    #[arg(long, short = 'r', default_value_t = 3)]
    replication_factor: u32,
    /// How long the cluster idles while its CPU is measured.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Skip the failover measurement.
    #[arg(long)]
    no_failover: bool,
    /// Produce to some partitions for this long (after the idle
    /// measurement); 0 s: no load.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    load: Duration,
    /// Partitions of the first topic produced to under `--load`.
    #[arg(long, default_value_t = 100)]
    load_partitions: u32,
    /// Port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 7701)]
    base_port: u16,
    /// Where the nodes keep their data (removed at the end).
    #[arg(long, default_value = "/var/tmp/strata-partitions")]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
}

/// Every wait is bounded by this.
const LIMIT: Duration = Duration::from_secs(300);
/// Time left after creation before the idle measurement (partition groups
/// stop heartbeating 2 s after their last entry).
const SETTLE: Duration = Duration::from_secs(5);
/// Connections the failover's writers share (each carries at most 256
/// requests at once): every partition of the killed node is written to at
/// once, so that each one's time is its own, not its place in a queue.
const FAILOVER_CONNECTIONS: usize = 16;
/// Deadline of each failover write attempt.
const FAILOVER_ATTEMPT: Duration = Duration::from_secs(2);

/// One node's idle figures.
#[derive(Debug, serde::Serialize)]
struct Idle {
    node: u16,
    cpu_percent_of_a_core: f64,
    rss_mib: f64,
    threads: u64,
    open_fds: u64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    nodes: u16,
    partitions: u32,
    replication_factor: u32,
    create_seconds: f64,
    partitions_per_second: f64,
    idle_seconds: f64,
    idle: Vec<Idle>,
    idle_cpu_percent_of_machine: f64,
    metadata_all_topics_ms: f64,
    load_partitions: u32,
    load_records_per_second: f64,
    load_latency_ms_p99: f64,
    killed_node: Option<u16>,
    failover_partitions: usize,
    failover_ms_p50: f64,
    failover_ms_p99: f64,
    failover_ms_max: f64,
    failover_not_recovered: usize,
}

pub async fn run(args: PartitionsBench) -> anyhow::Result<()> {
    if args.per_topic == 0 || args.partitions == 0 {
        bail!("--partitions and --per-topic must be at least 1");
    }
    let report =
        LocalCluster::scratch(args.nodes, args.base_port, &args.data_dir, async |c| measure(&args, c).await).await?;
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => print_text(&report),
    }
    Ok(())
}

fn topics(args: &PartitionsBench) -> Vec<(String, u32)> {
    let mut left = args.partitions;
    let mut out = Vec::new();
    while left > 0 {
        let n = left.min(args.per_topic);
        out.push((format!("parts-{}", out.len()), n));
        left -= n;
    }
    out
}

async fn measure(args: &PartitionsBench, cluster: &mut LocalCluster) -> anyhow::Result<Report> {
    let client = Client::connect(&cluster.bootstrap()).await?.with_timeout(Duration::from_secs(60));
    let topics = topics(args);
    let started = Instant::now();
    for (i, (name, n)) in topics.iter().enumerate() {
        let one = Instant::now();
        create(&client, name, *n, args.replication_factor).await?;
        eprintln!(
            "created {name} ({n} partitions in {:.2} s; {} of {} topics)",
            one.elapsed().as_secs_f64(),
            i + 1,
            topics.len()
        );
    }
    wait_leaders(&client, &topics).await?;
    let create = started.elapsed();
    eprintln!("{} partitions created and led after {:.1} s", args.partitions, create.as_secs_f64());

    // Groups go quiet once idle for a moment: measure the steady state.
    eprintln!("settling for {SETTLE:?}, then idling for {:?}", args.idle);
    tokio::time::sleep(SETTLE).await;
    let before: Vec<_> = (1..=args.nodes).map(|n| cluster.pid(n).and_then(cpu_seconds)).collect();
    let idle_started = Instant::now();
    tokio::time::sleep(args.idle).await;
    let window = idle_started.elapsed().as_secs_f64();
    let mut idle = Vec::new();
    for (i, b) in before.iter().enumerate() {
        let node = i as u16 + 1;
        let stats = cluster.pid(node).and_then(|pid| strata_server::metrics::process::stats_of(&pid.to_string()));
        let (Some(b), Some(a)) = (b, stats) else { continue };
        idle.push(Idle {
            node,
            cpu_percent_of_a_core: 100.0 * (a.cpu_seconds - b) / window,
            rss_mib: a.resident_bytes as f64 / (1024.0 * 1024.0),
            threads: a.threads,
            open_fds: a.open_fds,
        });
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine = idle.iter().map(|i| i.cpu_percent_of_a_core).sum::<f64>() / cores;

    let mut report = Report {
        nodes: args.nodes,
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        create_seconds: create.as_secs_f64(),
        partitions_per_second: f64::from(args.partitions) / create.as_secs_f64(),
        idle_seconds: window,
        idle,
        idle_cpu_percent_of_machine: machine,
        metadata_all_topics_ms: metadata_ms(&client, &topics).await?,
        load_partitions: 0,
        load_records_per_second: 0.0,
        load_latency_ms_p99: 0.0,
        killed_node: None,
        failover_partitions: 0,
        failover_ms_p50: 0.0,
        failover_ms_p99: 0.0,
        failover_ms_max: 0.0,
        failover_not_recovered: 0,
    };
    if !args.load.is_zero() {
        load(args, cluster, &topics, &mut report).await?;
    }
    if !args.no_failover && args.nodes >= 3 {
        // Leaders as they are now (they may have moved since creation).
        let leaders = wait_leaders(&client, &topics).await?;
        failover(cluster, &leaders, &mut report).await?;
    }
    Ok(report)
}

/// The median time of a metadata request naming every topic (of 5).
async fn metadata_ms(client: &Client, topics: &[(String, u32)]) -> anyhow::Result<f64> {
    let names: Vec<&str> = topics.iter().map(|(n, _)| n.as_str()).collect();
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        client.metadata(&names).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Produces to the first `--load-partitions` partitions of the first topic
/// for `--load` (3 s of warm-up first, not measured).
async fn load(
    args: &PartitionsBench,
    cluster: &LocalCluster,
    topics: &[(String, u32)],
    report: &mut Report,
) -> anyhow::Result<()> {
    let (topic, n) = topics.first().context("no topic")?;
    let partitions = args.load_partitions.min(*n).max(1);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(&cluster.bootstrap()).await?.with_timeout(Duration::from_secs(30)));
    }
    let shape = crate::bench::Shape {
        record_size: 1024,
        batch: 64,
        compression: Compression::None,
        seed: 1,
        mode: crate::bench::ProduceMode::Stream,
        acks: crate::cli::AcksArg::Quorum,
    };
    let workers = crate::bench::produce_workers(&clients, topic, partitions, partitions as usize, &shape).await?;
    eprintln!("producing to {partitions} partitions of {topic} for {:?}", args.load);
    let limits = strata_bench::Limits {
        records: None,
        duration: Some(args.load),
        max_duration: args.load + Duration::from_secs(60),
        warmup: Duration::from_secs(3),
        rate: None,
    };
    let r = strata_bench::run(&format!("{partitions} loaded partitions"), workers, limits).await?;
    report.load_partitions = partitions;
    report.load_records_per_second = r.records_per_sec;
    report.load_latency_ms_p99 = r.latency_ms_p99;
    Ok(())
}

/// Creates a topic; a creation that timed out (a busy cluster) is asked
/// again, and one that had happened meanwhile counts.
async fn create(client: &Client, name: &str, partitions: u32, rf: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + LIMIT;
    loop {
        match client.create_topic_replicated(name, partitions, Some(rf), TopicConfig::default()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("already exists") => return Ok(()),
            Err(e) if Instant::now() < deadline => eprintln!("creating {name}: {e}; again"),
            Err(e) => return Err(e).with_context(|| format!("cannot create {name}")),
        }
    }
}

/// Waits until every partition has a leader; returns them.
async fn wait_leaders(client: &Client, topics: &[(String, u32)]) -> anyhow::Result<Vec<(String, u32, u64)>> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let names: Vec<&str> = topics.iter().map(|(n, _)| n.as_str()).collect();
        let meta = client.metadata(&names).await?;
        let led: Vec<(String, u32, u64)> = meta
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.name.clone(), p.partition, p.leader)))
            .collect();
        let total: u32 = topics.iter().map(|(_, n)| n).sum();
        if led.len() == total as usize && led.iter().all(|(_, _, l)| *l != 0) {
            return Ok(led);
        }
        if Instant::now() > deadline {
            bail!("not every partition had a leader after {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills the node leading the most partitions; per partition it led, the
/// time from the kill to a write acknowledged by a new leader.
async fn failover(
    cluster: &mut LocalCluster,
    leaders: &[(String, u32, u64)],
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut counts = std::collections::BTreeMap::<u64, usize>::new();
    for (_, _, l) in leaders {
        *counts.entry(*l).or_default() += 1;
    }
    let (victim, _) = counts.iter().max_by_key(|(_, n)| **n).context("no leaders")?;
    let victim = u16::try_from(*victim).context("node id out of range")?;
    let led: Vec<(String, u32)> =
        leaders.iter().filter(|(_, _, l)| *l == u64::from(victim)).map(|(t, p, _)| (t.clone(), *p)).collect();
    // A client that does not go through the victim.
    let survivors: Vec<String> = (1..=report.nodes).filter(|n| *n != victim).map(|n| cluster.addr(n)).collect();
    let mut writers = Vec::with_capacity(FAILOVER_CONNECTIONS);
    for _ in 0..FAILOVER_CONNECTIONS {
        writers.push(Client::connect(&survivors.join(",")).await?.with_timeout(FAILOVER_ATTEMPT));
    }
    eprintln!("killing node {victim}, the leader of {} partitions", led.len());
    let killed = Instant::now();
    cluster.kill(victim).await?;
    let mut tasks = Vec::with_capacity(led.len());
    for (i, (topic, p)) in led.into_iter().enumerate() {
        let writer = writers[i % writers.len()].clone();
        tasks.push(tokio::spawn(async move {
            let record = Record { value: bytes::Bytes::from_static(b"failover"), ..Record::default() };
            while killed.elapsed() < LIMIT {
                let batch = strata_record::encode(std::slice::from_ref(&record), Compression::None);
                if writer.produce_batch(&topic, p, batch).await.is_ok() {
                    return Some(killed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        }));
    }
    let mut times = Vec::new();
    let mut lost = 0;
    for t in tasks {
        match t.await {
            Ok(Some(d)) => times.push(d.as_secs_f64() * 1000.0),
            _ => lost += 1,
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    report.killed_node = Some(victim);
    report.failover_partitions = times.len() + lost;
    report.failover_ms_p50 = pct(0.5);
    report.failover_ms_p99 = pct(0.99);
    report.failover_ms_max = times.last().copied().unwrap_or(0.0);
    report.failover_not_recovered = lost;
    Ok(())
}

/// User and system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    strata_server::metrics::process::stats_of(&pid.to_string()).map(|s| s.cpu_seconds)
}

fn print_text(r: &Report) {
    println!(
        "{} partitions (RF {}) on {} nodes: created and led in {:.1} s ({:.0} partitions/s)",
        r.partitions, r.replication_factor, r.nodes, r.create_seconds, r.partitions_per_second
    );
    for i in &r.idle {
        println!(
            "  node {}: idle CPU {:.1}% of a core, RSS {:.0} MiB, {} threads, {} open files",
            i.node, i.cpu_percent_of_a_core, i.rss_mib, i.threads, i.open_fds
        );
    }
    println!("  idle, all nodes: {:.1}% of the machine's CPU", r.idle_cpu_percent_of_machine);
    println!("  metadata of every topic: {:.1} ms", r.metadata_all_topics_ms);
    if r.load_partitions > 0 {
        println!(
            "  load on {} partitions: {:.0} records/s, p99 {:.1} ms per request",
            r.load_partitions, r.load_records_per_second, r.load_latency_ms_p99
        );
    }
    if let Some(node) = r.killed_node {
        println!(
            "  kill -9 of node {node} (leader of {} partitions): writes acknowledged again after p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms; {} not within {:?}",
            r.failover_partitions,
            r.failover_ms_p50,
            r.failover_ms_p99,
            r.failover_ms_max,
            r.failover_not_recovered,
            LIMIT
        );
    }
}
