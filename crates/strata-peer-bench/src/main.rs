//! `strata-peer-bench`: drives a peer system (NATS JetStream) with the same load generator as
//! `strata bench produce` ([`strata_bench`]: the same worker loop, clock, histogram, flags and
//! report), so the two sets of figures can be put side by side. It is a separate binary, kept out
//! of `strata`, so that the product does not carry a NATS client and its dependencies: this is a
//! measuring tool, not a feature.
//!
//! One operation publishes `--batch` messages of `--record-size` bytes to one subject and then
//! waits for every publish acknowledgement (PubAck), so `--concurrency` x `--batch` publishes are
//! in flight, like Strata's produce window. Note that JetStream by default acknowledges a publish
//! once it is written to the stream's file, not fsync'd (it syncs on an interval), whereas Strata
//! acknowledges after fsync: state this beside any figures.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::stream::{Config, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use strata_bench::{Limits, Op, Worker};

#[derive(Parser, Debug)]
#[command(name = "strata-peer-bench", version, about = "Drives peer systems with Strata's load generator.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publishers send batches to a JetStream stream and wait for every PubAck.
    Jetstream(JetStreamBench),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct JetStreamBench {
    /// NATS server address, HOST:PORT or nats://HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:4222")]
    url: String,
    /// Stream to publish to (deleted and re-created before the run).
    #[arg(long, default_value = "STRATA_PEER_BENCH")]
    stream: String,
    /// Subject of the stream, and of every publish.
    #[arg(long, default_value = "bench.records")]
    subject: String,
    /// Replicas of the stream (more than 1 needs a JetStream cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Deadline of each JetStream API request and of each PubAck, e.g. 10s or 500ms.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Concurrent workers (each has one batch of publishes in flight).
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// NATS connections shared by the workers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Stop after this many records.
    #[arg(long)]
    records: Option<u64>,
    /// Stop after this long (e.g. 30s); the default when --records is not given is 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Unmeasured warm-up before the measured run.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
    /// Size of each message payload in bytes.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Messages published per operation before waiting for their PubAcks.
    #[arg(long, short = 'b', default_value_t = 64)]
    batch: usize,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct PublishWorker {
    js: jetstream::Context,
    subject: String,
    values: Vec<Bytes>,
    record_size: usize,
}

impl Worker for PublishWorker {
    async fn op(&mut self) -> anyhow::Result<Option<Op>> {
        let mut acks = Vec::with_capacity(self.values.len());
        for v in &self.values {
            let ack = self
                .js
                .publish(self.subject.clone(), v.clone())
                .await
                .with_context(|| format!("cannot publish to {}", self.subject))?;
            acks.push(ack.into_future());
        }
        futures::future::try_join_all(acks)
            .await
            .with_context(|| format!("no PubAck for a publish to {}", self.subject))?;
        let n = self.values.len() as u64;
        Ok(Some(Op { records: n, bytes: n * self.record_size as u64 }))
    }
}

/// One JetStream context per NATS connection.
async fn contexts(args: &JetStreamBench) -> anyhow::Result<Vec<jetstream::Context>> {
    let n = args.connections.max(1);
    // Enough ack permits per context for every publish that can be in flight on it, so the
    // client's own limit (5000 by default) never narrows the window.
    let window = args.concurrency.max(1) * args.batch.max(1);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let client = async_nats::ConnectOptions::new()
            .name("strata-peer-bench")
            .connect(args.url.as_str())
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot connect to NATS at {}: {e} (start it with deploy/bench/jetstream.sh)", args.url)
            })?;
        out.push(
            jetstream::ContextBuilder::new().timeout(args.timeout).max_ack_inflight(window.max(5000)).build(client),
        );
    }
    Ok(out)
}

/// Deletes the stream if it exists and creates it afresh: file storage, the given replicas, one
/// subject, default limits.
async fn recreate_stream(js: &jetstream::Context, args: &JetStreamBench) -> anyhow::Result<()> {
    use jetstream::context::DeleteStreamErrorKind as Kind;
    match js.delete_stream(&args.stream).await {
        Ok(_) => eprintln!("deleted stream {}", args.stream),
        Err(e) => match e.kind() {
            Kind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {}
            Kind::Request => anyhow::bail!(
                "cannot delete stream {}: {e} (is JetStream enabled on {}? nats-server needs -js)",
                args.stream,
                args.url
            ),
            _ => anyhow::bail!("cannot delete stream {}: {e}", args.stream),
        },
    }
    let config = Config {
        name: args.stream.clone(),
        subjects: vec![args.subject.clone()],
        storage: StorageType::File,
        num_replicas: args.replicas,
        ..Default::default()
    };
    js.create_stream(config).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot create stream {} (file storage, replicas {}, subject {}): {e}",
            args.stream,
            args.replicas,
            args.subject
        )
    })?;
    eprintln!("created stream {} (file storage, replicas {}, subject {})", args.stream, args.replicas, args.subject);
    Ok(())
}

async fn jetstream_bench(args: JetStreamBench) -> anyhow::Result<()> {
    let contexts = contexts(&args).await?;
    recreate_stream(&contexts[0], &args).await?;
    eprintln!(
        "bench jetstream produce: stream {} at {}, {} workers x {} messages of {} bytes per operation, {} connections, seed {}",
        args.stream,
        args.url,
        args.concurrency,
        args.batch,
        args.record_size,
        contexts.len(),
        args.seed
    );
    let workers = (0..args.concurrency.max(1))
        .map(|w| PublishWorker {
            js: contexts[w % contexts.len()].clone(),
            subject: args.subject.clone(),
            values: (0..args.batch.max(1))
                .map(|i| {
                    Bytes::from(strata_bench::payload(args.seed ^ ((w as u64) << 32) ^ i as u64, args.record_size))
                })
                .collect(),
            record_size: args.record_size,
        })
        .collect();
    let label = format!("jetstream produce c={} b={} r={}", args.concurrency, args.batch, args.replicas);
    let limits = Limits::from_flags(args.records, args.duration, args.warmup);
    let report = strata_bench::run(&label, workers, limits).await?;
    report.print(matches!(args.format, OutputFormat::Json))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Jetstream(args) => jetstream_bench(args).await,
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
