//! `strata bench partitions`: what many partitions cost a cluster.
//!
//! Starts its own loopback cluster (`--nodes`, every partition replicated
//! `--replication-factor` times), or with `--existing` uses the cluster at
//! `--server` (with the client's TLS and credential flags; idle figures
//! from each node's `--metrics` endpoint; no failover: the bench kills only
//! nodes it started; its topics are deleted at the end unless `--keep`),
//! then:
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
//!   of those partitions, writes one record at a time (100 ms between
//!   attempts) until one is acknowledged: the time from the kill to that
//!   acknowledgement, per partition (p50, p99, max).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use strata_client::{Client, Compression, Record, TopicConfig};

use crate::ClientOpts;
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
    /// Use the cluster at --server instead of starting one.
    #[arg(long)]
    existing: bool,
    /// With --existing: a node's metrics endpoint, HOST:PORT (repeatable),
    /// read for its CPU time, memory, threads and open files.
    #[arg(long = "metrics", value_name = "HOST:PORT", requires = "existing")]
    metrics: Vec<String>,
    /// Names of the topics: PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "parts")]
    topic_prefix: String,
    /// With --existing: leave the topics in place (deleted otherwise).
    #[arg(long, requires = "existing")]
    keep: bool,
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
/// Pause after a failed failover write before the next attempt (a Kafka
/// producer's default `retry.backoff.ms`): thousands of writers retrying
/// at once are load the survivors would otherwise spend answering them.
const FAILOVER_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Deadline of each failover write attempt.
const FAILOVER_ATTEMPT: Duration = Duration::from_secs(2);

/// One node's idle figures.
#[derive(Debug, serde::Serialize)]
struct Idle {
    /// `node N` of a cluster the bench started, or a metrics endpoint.
    node: String,
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
    /// All nodes together, as a share of this machine (nodes the bench
    /// started only).
    idle_cpu_percent_of_machine: Option<f64>,
    metadata_all_topics_ms: f64,
    load_partitions: u32,
    load_records_per_second: f64,
    load_latency_ms_p99: f64,
    killed_node: Option<u16>,
    /// Why failover was not measured, when it was not.
    failover_skipped: Option<String>,
    failover_partitions: usize,
    failover_ms_p50: f64,
    failover_ms_p99: f64,
    failover_ms_max: f64,
    failover_not_recovered: usize,
}

pub async fn run(opts: &ClientOpts, args: PartitionsBench) -> anyhow::Result<()> {
    if args.per_topic == 0 || args.partitions == 0 {
        bail!("--partitions and --per-topic must be at least 1");
    }
    let report = if args.existing {
        let client = crate::cli::connect(opts).await?.with_timeout(Duration::from_secs(60));
        let mut target = Target::Existing { opts, metrics: &args.metrics };
        let taken: Vec<String> = topics(&args).into_iter().map(|(n, _)| n).collect();
        for name in &taken {
            match client.describe_topic(name).await {
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
                Ok(_) => bail!("topic {name} exists already: choose another --topic-prefix (or delete it)"),
                Err(e) => return Err(e).with_context(|| format!("cannot tell whether topic {name} exists")),
            }
        }
        let report = measure(&args, &mut target).await;
        if !args.keep {
            eprintln!("deleting the bench's {} topics", taken.len());
            for name in &taken {
                if let Err(e) = client.delete_topic(name).await {
                    eprintln!("cannot delete topic {name}: {e}");
                }
            }
        }
        report?
    } else {
        LocalCluster::scratch(args.nodes, args.base_port, &args.data_dir, async |c| {
            measure(&args, &mut Target::Local(c)).await
        })
        .await?
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => print_text(&report),
    }
    Ok(())
}

/// The cluster measured.
enum Target<'a> {
    /// Started by the bench: its nodes' processes are read and killed.
    Local(&'a mut LocalCluster),
    /// Already running: reached with the client's flags; figures of a node
    /// only from its metrics endpoint.
    Existing { opts: &'a ClientOpts, metrics: &'a [String] },
}

impl Target<'_> {
    async fn client(&self) -> anyhow::Result<Client> {
        Ok(match self {
            Self::Local(c) => Client::connect(&c.bootstrap()).await?,
            Self::Existing { opts, .. } => crate::cli::connect(opts).await?,
        })
    }

    /// Each node's process figures now (a node that cannot be read is
    /// left out, and said so).
    async fn stats(&self, nodes: u16) -> Vec<(String, strata_server::metrics::process::ProcessStats)> {
        let mut out = Vec::new();
        match self {
            Self::Local(c) => {
                for n in 1..=nodes {
                    match c.pid(n).and_then(|pid| strata_server::metrics::process::stats_of(&pid.to_string())) {
                        Some(s) => out.push((format!("node {n}"), s)),
                        None => eprintln!("cannot read node {n}'s process figures"),
                    }
                }
            }
            Self::Existing { metrics, .. } => {
                for at in *metrics {
                    match scrape(at).await {
                        Ok(s) => out.push((at.clone(), s)),
                        Err(e) => eprintln!("cannot read the metrics at {at}: {e:#}"),
                    }
                }
            }
        }
        out
    }
}

/// A node's process figures from its Prometheus endpoint (plain HTTP).
async fn scrape(at: &str) -> anyhow::Result<strata_server::metrics::process::ProcessStats> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(at).await?;
        stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {at}\r\n\r\n").as_bytes()).await?;
        let mut raw = Vec::new();
        // A scrape is a few hundred KiB at most; bounded all the same.
        stream.take(64 << 20).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch).await.context("no answer within 10 s")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    if head.split_whitespace().nth(1) != Some("200") {
        bail!("answered {}", head.lines().next().unwrap_or_default());
    }
    let value = |name: &str| {
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse::<f64>().ok())
            })
            .with_context(|| format!("no {name}"))
    };
    Ok(strata_server::metrics::process::ProcessStats {
        cpu_seconds: value("process_cpu_seconds_total")?,
        resident_bytes: value("process_resident_memory_bytes")? as u64,
        threads: value("process_threads")? as u64,
        open_fds: value("process_open_fds")? as u64,
        ..Default::default()
    })
}

fn topics(args: &PartitionsBench) -> Vec<(String, u32)> {
    let mut left = args.partitions;
    let mut out = Vec::new();
    while left > 0 {
        let n = left.min(args.per_topic);
        out.push((format!("{}-{}", args.topic_prefix, out.len()), n));
        left -= n;
    }
    out
}

async fn measure(args: &PartitionsBench, target: &mut Target<'_>) -> anyhow::Result<Report> {
    let client = target.client().await?.with_timeout(Duration::from_secs(60));
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
    let before = target.stats(args.nodes).await;
    let idle_started = Instant::now();
    tokio::time::sleep(args.idle).await;
    let window = idle_started.elapsed().as_secs_f64();
    let after = target.stats(args.nodes).await;
    let mut idle = Vec::new();
    for (node, b) in &before {
        let Some((_, a)) = after.iter().find(|(n, _)| n == node) else { continue };
        idle.push(Idle {
            node: node.clone(),
            cpu_percent_of_a_core: 100.0 * (a.cpu_seconds - b.cpu_seconds) / window,
            rss_mib: a.resident_bytes as f64 / (1024.0 * 1024.0),
            threads: a.threads,
            open_fds: a.open_fds,
        });
    }
    // Nodes the bench started share this machine; an existing cluster's
    // may not.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine =
        matches!(target, Target::Local(_)).then(|| idle.iter().map(|i| i.cpu_percent_of_a_core).sum::<f64>() / cores);
    let nodes = match target {
        Target::Local(_) => args.nodes,
        Target::Existing { .. } => u16::try_from(client.metadata(&[]).await?.brokers.len()).unwrap_or(u16::MAX),
    };

    let mut report = Report {
        nodes,
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
        failover_skipped: None,
        failover_partitions: 0,
        failover_ms_p50: 0.0,
        failover_ms_p99: 0.0,
        failover_ms_max: 0.0,
        failover_not_recovered: 0,
    };
    if !args.load.is_zero() {
        load(args, target, &topics, &mut report).await?;
    }
    match target {
        _ if args.no_failover => report.failover_skipped = Some("--no-failover".into()),
        Target::Existing { .. } => {
            report.failover_skipped = Some("the bench kills only nodes of a cluster it started".into());
        }
        Target::Local(_) if args.nodes < 3 => report.failover_skipped = Some("fewer than 3 nodes".into()),
        Target::Local(cluster) => {
            // Leaders as they are now (they may have moved since creation).
            let leaders = wait_leaders(&client, &topics).await?;
            failover(cluster, &leaders, &mut report).await?;
        }
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
    target: &Target<'_>,
    topics: &[(String, u32)],
    report: &mut Report,
) -> anyhow::Result<()> {
    let (topic, n) = topics.first().context("no topic")?;
    let partitions = args.load_partitions.min(*n).max(1);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(target.client().await?.with_timeout(Duration::from_secs(30)));
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
    let topics: Vec<String> =
        led.iter().map(|(t, _)| t.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    for (topic, p) in led {
        // One client per topic, as a producer application would have: the
        // writes of a topic share its metadata.
        let i = topics.binary_search(&topic).unwrap_or(0);
        let writer = writers[i % writers.len()].clone();
        tasks.push(tokio::spawn(async move {
            let record = Record { value: bytes::Bytes::from_static(b"failover"), ..Record::default() };
            while killed.elapsed() < LIMIT {
                let batch = strata_record::encode(std::slice::from_ref(&record), Compression::None);
                if writer.produce_batch(&topic, p, batch).await.is_ok() {
                    return Some(killed.elapsed());
                }
                tokio::time::sleep(FAILOVER_RETRY_BACKOFF).await;
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

fn print_text(r: &Report) {
    println!(
        "{} partitions (RF {}) on {} nodes: created and led in {:.1} s ({:.0} partitions/s)",
        r.partitions, r.replication_factor, r.nodes, r.create_seconds, r.partitions_per_second
    );
    for i in &r.idle {
        println!(
            "  {}: idle CPU {:.1}% of a core, RSS {:.0} MiB, {} threads, {} open files",
            i.node, i.cpu_percent_of_a_core, i.rss_mib, i.threads, i.open_fds
        );
    }
    if let Some(machine) = r.idle_cpu_percent_of_machine {
        println!("  idle, all nodes: {machine:.1}% of the machine's CPU");
    }
    println!("  metadata of every topic: {:.1} ms", r.metadata_all_topics_ms);
    if r.load_partitions > 0 {
        println!(
            "  load on {} partitions: {:.0} records/s, p99 {:.1} ms per request",
            r.load_partitions, r.load_records_per_second, r.load_latency_ms_p99
        );
    }
    if let Some(why) = &r.failover_skipped {
        println!("  failover not measured: {why}");
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
