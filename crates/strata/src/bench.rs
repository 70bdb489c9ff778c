//! `strata bench produce|consume`: drives a node with the shared load
//! generator ([`strata_bench`]).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use strata_bench::{Limits, Op, Worker};
use strata_client::{Client, Compression};
use strata_record::BatchBuilder;

use crate::ClientOpts;
use crate::cli::{AcksArg, OutputFormat};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Producers send batches and wait for each acknowledgement (fsync'd).
    Produce(ProduceBench),
    /// Consumers read a topic from the start to its end.
    Consume(ConsumeBench),
    /// Starts a local cluster and measures leader failover: kill -9 of a
    /// partition's leader to the first acknowledged write, per round.
    Failover(crate::failover::FailoverBench),
    /// Consumer groups: consume throughput of a 3-member group, rebalance
    /// time (a member joins, a member dies), share-group ack throughput.
    Groups(crate::group_bench::GroupsBench),
    /// Starts a local cluster with many partitions: creation rate, idle CPU
    /// and memory per node, failover time per partition of a killed leader.
    Partitions(crate::partitions_bench::PartitionsBench),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Topic to use (created if missing).
    #[arg(long, default_value = "strata-bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Replicas per partition of a topic the bench creates (default: 3, or
    /// every node of a smaller cluster).
    #[arg(long, short = 'r')]
    pub replication_factor: Option<u32>,
    /// Target records per second over all workers (default: as fast as
    /// possible); latency then counts from when each request was due.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Concurrent workers (each has one request in flight).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// gRPC connections shared by the workers.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Stop after this many records.
    #[arg(long)]
    pub records: Option<u64>,
    /// Stop after this long (e.g. 30s); the default when --records is not given is 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Unmeasured warm-up before the measured run.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct ProduceBench {
    #[command(flatten)]
    pub common: Common,
    /// Value size of each record in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records per produce request.
    #[arg(long, short = 'b', default_value_t = 64)]
    pub batch: usize,
    /// Batch compression: none, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How requests travel: one ProduceStream per worker (pipelined API) or a
    /// unary Produce call per request.
    #[arg(long, value_enum, default_value = "stream")]
    pub mode: ProduceMode,
    /// When a request counts as written.
    #[arg(long, value_enum, default_value = "quorum")]
    pub acks: AcksArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ProduceMode {
    Stream,
    Unary,
}

#[derive(Args, Debug)]
pub struct ConsumeBench {
    #[command(flatten)]
    pub common: Common,
    /// Bytes asked for per fetch.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub fetch_bytes: u32,
}

async fn clients(opts: &ClientOpts, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        out.push(crate::cli::connect(opts).await?);
    }
    Ok(out)
}

pub async fn run(opts: &ClientOpts, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) => produce(opts, args).await,
        BenchCommand::Consume(args) => consume(opts, args).await,
        BenchCommand::Failover(args) => crate::failover::run(args).await,
        BenchCommand::Groups(args) => crate::group_bench::run(opts, args).await,
        BenchCommand::Partitions(args) => crate::partitions_bench::run(opts, args).await,
    }
}

/// Partition count of the topic, creating it when missing.
async fn ensure_topic(client: &Client, c: &Common) -> anyhow::Result<u32> {
    match client.describe_topic(&c.topic).await {
        Ok(t) => Ok(t.partition_count),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            eprintln!("creating topic {} with {} partitions", c.topic, c.partitions);
            let created =
                client.create_topic_replicated(&c.topic, c.partitions, c.replication_factor, Default::default());
            Ok(created.await?.partition_count)
        }
        Err(e) => Err(e.into()),
    }
}

type ProduceStream = (
    tokio::sync::mpsc::Sender<strata_client::proto::ProduceRequest>,
    tonic::Streaming<strata_client::proto::ProduceResponse>,
);

struct ProduceWorker {
    /// The client the worker was given, which finds leaders ...
    root: Client,
    /// ... and its handle on the partition's leader.
    client: Client,
    /// Set in stream mode: the worker's open ProduceStream.
    stream: Option<ProduceStream>,
    topic: String,
    partition: u32,
    values: Vec<Bytes>,
    compression: Compression,
    record_size: usize,
    acks: strata_client::Acks,
}

impl Worker for ProduceWorker {
    async fn op(&mut self) -> anyhow::Result<Option<Op>> {
        let now = strata_record::now_ms();
        let mut builder = BatchBuilder::with_capacity(self.compression, self.values.len() * (self.record_size + 8));
        for v in &self.values {
            builder.push_parts(now, None, v, &[]);
        }
        let batch = builder.build();
        match &mut self.stream {
            None => {
                self.client.produce_batch_with(&self.topic, self.partition, batch, self.acks).await?;
            }
            Some((requests, responses)) => {
                let req = strata_client::proto::ProduceRequest {
                    topic: self.topic.clone(),
                    partition: Some(self.partition),
                    batch: batch.clone(),
                    acks: self.acks as i32,
                    ..Default::default()
                };
                requests.send(req).await.context("the produce stream closed")?;
                let resp = responses.message().await?.context("the server ended the produce stream")?;
                match resp.error {
                    None => {}
                    // The leader moved, or is renewing its lease: the batch
                    // goes again by the client's routed path (which finds
                    // the leader and backs off, as the Producer does), and
                    // the stream is opened again at that leader. The
                    // operation's latency includes all of it.
                    Some(e) if e.reason == "NOT_LEADER" => {
                        self.client.produce_batch_with(&self.topic, self.partition, batch, self.acks).await?;
                        self.client = self.root.partition_leader(&self.topic, self.partition).await?;
                        self.stream = Some(self.client.produce_stream(1).await?);
                    }
                    Some(e) => anyhow::bail!("produce failed: {} ({})", e.message, e.reason),
                }
            }
        }
        let n = self.values.len() as u64;
        Ok(Some(Op { records: n, bytes: n * self.record_size as u64 }))
    }
}

async fn produce(opts: &ClientOpts, args: ProduceBench) -> anyhow::Result<()> {
    let c = &args.common;
    let clients = clients(opts, c.connections).await?;
    let partitions = ensure_topic(&clients[0], c).await?;
    eprintln!(
        "bench produce: topic {} ({partitions} partitions), {} workers x {} records of {} bytes per request, compression {:?}, {:?} mode, acks {:?}, seed {}",
        c.topic, c.concurrency, args.batch, args.record_size, args.compression, args.mode, args.acks, args.seed
    );
    let workers = produce_workers(&clients, &c.topic, partitions, c.concurrency, &Shape::of(&args)).await?;
    let label = format!("strata produce c={} b={} p={partitions} {:?}", c.concurrency, args.batch, args.mode);
    run_and_print(&label, workers, c).await
}

/// Runs `workers` to the limits the common flags set and prints the report.
async fn run_and_print<W: Worker>(label: &str, workers: Vec<W>, c: &Common) -> anyhow::Result<()> {
    let limits = Limits { rate: c.rate, ..Limits::from_flags(c.records, c.duration, c.warmup) };
    strata_bench::run(label, workers, limits).await?.print(matches!(c.format, OutputFormat::Json))
}

/// What a producer worker sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub record_size: usize,
    pub batch: usize,
    pub compression: Compression,
    pub seed: u64,
    pub mode: ProduceMode,
    pub acks: AcksArg,
}

impl Shape {
    fn of(args: &ProduceBench) -> Self {
        Self {
            record_size: args.record_size,
            batch: args.batch,
            compression: args.compression,
            seed: args.seed,
            mode: args.mode,
            acks: args.acks,
        }
    }
}

/// `concurrency` producers of `args`' batches to `topic`, worker `w` to
/// partition `w % partitions` at its leader, over `clients` in turn.
pub(crate) async fn produce_workers(
    clients: &[Client],
    topic: &str,
    partitions: u32,
    concurrency: usize,
    args: &Shape,
) -> anyhow::Result<Vec<impl Worker + use<>>> {
    let mut workers = Vec::with_capacity(concurrency.max(1));
    for w in 0..concurrency.max(1) {
        // Each worker talks to its partition's leader.
        let root = clients[w % clients.len()].clone();
        let client = root.partition_leader(topic, w as u32 % partitions).await?;
        let stream = match args.mode {
            ProduceMode::Stream => Some(client.produce_stream(1).await?),
            ProduceMode::Unary => None,
        };
        workers.push(ProduceWorker {
            root,
            client,
            stream,
            topic: topic.to_owned(),
            partition: w as u32 % partitions,
            values: (0..args.batch.max(1))
                .map(|i| {
                    Bytes::from(strata_bench::payload(args.seed ^ ((w as u64) << 32) ^ i as u64, args.record_size))
                })
                .collect(),
            compression: args.compression,
            record_size: args.record_size,
            acks: args.acks.into(),
        });
    }
    Ok(workers)
}

struct ConsumeWorker {
    client: Client,
    topic: String,
    partition: u32,
    next: u64,
    end: u64,
    fetch_bytes: u32,
}

impl Worker for ConsumeWorker {
    async fn op(&mut self) -> anyhow::Result<Option<Op>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let chunk = self.client.fetch(&self.topic, self.partition, self.next, self.fetch_bytes, Duration::ZERO).await?;
        let records = chunk.records.iter().take_while(|r| r.offset < self.end).count() as u64;
        let bytes = chunk.records.iter().take_while(|r| r.offset < self.end).map(|r| r.value.len() as u64).sum();
        self.next = chunk.next_offset;
        Ok(Some(Op { records, bytes }))
    }
}

async fn consume(opts: &ClientOpts, args: ConsumeBench) -> anyhow::Result<()> {
    let c = &args.common;
    let clients = clients(opts, c.connections).await?;
    let topic = clients[0].describe_topic(&c.topic).await.context("the consume bench reads an existing topic")?;
    let workers: Vec<ConsumeWorker> = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| ConsumeWorker {
            // Fetches are routed to each partition's leader.
            client: clients[i % clients.len()].clone(),
            topic: c.topic.clone(),
            partition: p.partition,
            next: p.log_start_offset,
            end: p.high_watermark,
            fetch_bytes: args.fetch_bytes,
        })
        .collect();
    let total: u64 = workers.iter().map(|w| w.end - w.next).sum();
    eprintln!("bench consume: topic {} ({} partitions, {total} records)", c.topic, workers.len());
    let label = format!("strata consume p={}", workers.len());
    run_and_print(&label, workers, c).await
}
