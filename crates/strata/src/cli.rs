//! Client commands: `topic`, `produce`, `consume`.

use std::collections::VecDeque;
use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use strata_client::{Client, Compression, Header, ProducerConfig, Record, StartOffset, TopicConfig};

use crate::ClientOpts;

pub async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    Ok(Client::connect_with(&opts.server, opts.connect_options()?).await?.with_timeout(opts.timeout))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (default: 3, or every node of a smaller
        /// cluster); at most the number of live nodes.
        #[arg(long, short = 'r')]
        replication_factor: Option<u32>,
        /// Topic config, KEY=VALUE (retention.ms, retention.bytes, segment.bytes,
        /// segment.ms, max.message.bytes); repeatable.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// List topics.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Show a topic's config and partitions.
    Describe {
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Change a topic's config.
    AlterConfig {
        name: String,
        /// KEY=VALUE to set; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        set: Vec<String>,
    },
    /// Grow a topic to more partitions (never fewer). Records with a key may
    /// go to another partition afterwards; consumer groups reading the topic
    /// are rebalanced onto the new partitions.
    AddPartitions {
        name: String,
        /// The new total number of partitions.
        #[arg(long, short = 'p')]
        partitions: u32,
    },
    /// Delete a topic and all its records.
    Delete { name: String },
}

/// Parses `KEY=VALUE` topic settings (Kafka-style dotted or underscored keys).
pub fn parse_topic_config(pairs: &[String]) -> anyhow::Result<TopicConfig> {
    let mut config = TopicConfig::default();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("topic config '{pair}' is not KEY=VALUE");
        };
        let bad = |e: std::num::ParseIntError| anyhow::anyhow!("topic config {key}: '{value}' is not a number: {e}");
        match key.trim().replace('_', ".").as_str() {
            "retention.ms" => config.retention_ms = Some(value.trim().parse().map_err(bad)?),
            "retention.bytes" => config.retention_bytes = Some(value.trim().parse().map_err(bad)?),
            "segment.bytes" => config.segment_bytes = Some(value.trim().parse().map_err(bad)?),
            "segment.ms" => config.segment_ms = Some(value.trim().parse().map_err(bad)?),
            "max.message.bytes" => config.max_message_bytes = Some(value.trim().parse().map_err(bad)?),
            other => bail!(
                "unknown topic config '{other}' (known: retention.ms, retention.bytes, segment.bytes, segment.ms, max.message.bytes)"
            ),
        }
    }
    Ok(config)
}

fn config_lines(c: &TopicConfig) -> Vec<(&'static str, String)> {
    let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    vec![
        ("retention.ms", show(c.retention_ms)),
        ("retention.bytes", show(c.retention_bytes)),
        ("segment.bytes", show(c.segment_bytes.map(|v| v as i64))),
        ("segment.ms", show(c.segment_ms.map(|v| v as i64))),
        ("max.message.bytes", show(c.max_message_bytes.map(i64::from))),
    ]
}

fn topic_json(t: &strata_client::TopicDescription) -> serde_json::Value {
    let config: serde_json::Map<String, serde_json::Value> = t
        .config
        .as_ref()
        .map(|c| config_lines(c).into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect())
        .unwrap_or_default();
    serde_json::json!({
        "name": t.name,
        "topic_id": t.topic_id,
        "partitions": t.partition_count,
        "config": config,
        "partition_states": t.partitions.iter().map(|p| serde_json::json!({
            "partition": p.partition,
            "leader": p.leader,
            "replicas": p.replicas,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "segments": p.segments,
            "size_bytes": p.size_bytes,
            "status": p.status,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.iter().copied());
    t
}

pub async fn topic(opts: &ClientOpts, command: TopicCommand) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    match command {
        TopicCommand::Create { name, partitions, replication_factor, config } => {
            let config = parse_topic_config(&config)?;
            let t = client.create_topic_replicated(&name, partitions, replication_factor, config).await?;
            println!("created topic {} with {} partitions", t.name, t.partition_count);
        }
        TopicCommand::List { format } => {
            let topics = client.list_topics().await?;
            match format {
                OutputFormat::Json => {
                    println!("{}", serde_json::Value::Array(topics.iter().map(topic_json).collect()));
                }
                OutputFormat::Text => {
                    let mut t = table(&["NAME", "PARTITIONS", "RECORDS", "SIZE-BYTES"]);
                    for topic in &topics {
                        let records: u64 = topic.partitions.iter().map(|p| p.high_watermark - p.log_start_offset).sum();
                        let size: u64 = topic.partitions.iter().map(|p| p.size_bytes).sum();
                        t.add_row(vec![
                            topic.name.clone(),
                            topic.partition_count.to_string(),
                            records.to_string(),
                            size.to_string(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        TopicCommand::Describe { name, format } => {
            let topic = client.describe_topic(&name).await?;
            match format {
                OutputFormat::Json => println!("{}", topic_json(&topic)),
                OutputFormat::Text => {
                    println!("NAME        {}", topic.name);
                    println!("TOPIC-ID    {}", topic.topic_id);
                    println!("PARTITIONS  {}", topic.partition_count);
                    println!();
                    let mut c = table(&["CONFIG", "VALUE"]);
                    if let Some(config) = &topic.config {
                        for (k, v) in config_lines(config) {
                            c.add_row(vec![k.to_string(), v]);
                        }
                    }
                    println!("{c}\n");
                    let mut t = table(&[
                        "PARTITION",
                        "LEADER",
                        "REPLICAS",
                        "LOG-START-OFFSET",
                        "HIGH-WATERMARK",
                        "SEGMENTS",
                        "SIZE-BYTES",
                        "STATUS",
                    ]);
                    for p in &topic.partitions {
                        let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
                        t.add_row(vec![
                            p.partition.to_string(),
                            if p.leader == 0 { "-".to_owned() } else { p.leader.to_string() },
                            replicas.join(","),
                            p.log_start_offset.to_string(),
                            p.high_watermark.to_string(),
                            p.segments.to_string(),
                            p.size_bytes.to_string(),
                            p.status.clone(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        TopicCommand::AlterConfig { name, set } => {
            let config = parse_topic_config(&set)?;
            let t = client.alter_topic_config(&name, config).await?;
            println!("updated config of topic {}", t.name);
        }
        TopicCommand::AddPartitions { name, partitions } => {
            let t = client.create_partitions(&name, partitions).await?;
            println!("topic {} has {} partitions now", t.name, t.partition_count);
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Key of every record (records without a key spread over partitions).
    #[arg(long, short = 'k')]
    pub key: Option<String>,
    /// Partition to write to (default: by key hash; records without a key
    /// stick to a random partition and move on to another after each batch).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Header KEY=VALUE added to every record; repeatable.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Batch compression: none, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// How long a batch waits for more records.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub linger: std::time::Duration,
    /// When a record counts as written.
    #[arg(long, value_enum, default_value = "quorum")]
    pub acks: AcksArg,
}

/// What an acknowledgement waits for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AcksArg {
    /// fsync'd on a majority of the partition's replicas (survives the loss
    /// of any minority).
    Quorum,
    /// fsync'd on the leader only: lost if the leader fails before a
    /// majority holds it.
    Leader,
}

impl From<AcksArg> for strata_client::Acks {
    fn from(a: AcksArg) -> Self {
        match a {
            AcksArg::Quorum => Self::Quorum,
            AcksArg::Leader => Self::Leader,
        }
    }
}

/// Acknowledgements awaited at most this far behind the input.
const PRODUCE_WINDOW: usize = 10_000;

pub async fn produce(opts: &ClientOpts, args: ProduceArgs) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let headers: Vec<Header> = args
        .headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| Header { key: k.to_owned(), value: Bytes::from(v.to_owned()) })
                .with_context(|| format!("header '{h}' is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    // Fail early, with the server's message, if the topic does not exist.
    client.describe_topic(&args.topic).await?;
    let producer = client.producer(ProducerConfig {
        compression: args.compression,
        linger: args.linger,
        acks: args.acks.into(),
        ..ProducerConfig::default()
    });
    let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut pending = VecDeque::new();
    let mut count = 0u64;
    while let Some(line) = line_rx.recv().await {
        let line = line.context("cannot read standard input")?;
        let record = Record {
            key: args.key.as_ref().map(|k| Bytes::from(k.clone())),
            value: Bytes::from(line),
            headers: headers.clone(),
            ..Record::default()
        };
        pending.push_back(producer.send(&args.topic, args.partition, record).await?);
        if pending.len() >= PRODUCE_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await?;
        }
        count += 1;
    }
    producer.flush().await?;
    for delivery in pending {
        delivery.await?;
    }
    eprintln!("produced {count} records to {}", args.topic);
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecordFormat {
    /// The value only.
    Value,
    /// One JSON object per record: partition, offset, timestamp, key, value, headers.
    Json,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Partition to read (default: every partition).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Where to start: earliest, latest, an offset, an RFC 3339 time
    /// (2026-11-24T10:00:00Z), or a duration ago (-15m).
    // A duration ago starts with '-': a value, not a flag.
    #[arg(long, default_value = "earliest", allow_hyphen_values = true)]
    pub from: String,
    /// Exit after this many records (default: keep tailing).
    #[arg(long, short = 'n')]
    pub max_messages: Option<u64>,
    #[arg(long, value_enum, default_value = "value")]
    pub format: RecordFormat,
    /// Read as a member of this consumer group: the group's coordinator
    /// assigns partitions, reading starts at the group's committed offsets
    /// (--from for partitions it never committed), and offsets are committed
    /// after the records are printed.
    #[arg(long, conflicts_with_all = ["partition", "share_group"])]
    pub group: Option<String>,
    /// Read as a consumer of this share group (a queue): every record goes
    /// to one consumer of the group at a time and is acknowledged one by one.
    #[arg(long, conflicts_with = "partition")]
    pub share_group: Option<String>,
    /// With --group: manual commits after every batch printed, or auto-commit
    /// every 5 s. With --share-group: each record acknowledged after it is
    /// printed (manual), or with the next fetch (auto).
    #[arg(long, value_enum, default_value = "manual")]
    pub ack: AckMode,
    /// With --share-group: the most records this consumer holds
    /// unacknowledged (RabbitMQ's prefetch count).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    Manual,
    Auto,
}

/// Parses `--from`.
pub fn parse_start(from: &str) -> anyhow::Result<StartOffset> {
    let from = from.trim();
    if from == "earliest" {
        return Ok(StartOffset::Earliest);
    }
    if from == "latest" {
        return Ok(StartOffset::Latest);
    }
    if let Ok(offset) = from.parse::<u64>() {
        return Ok(StartOffset::Offset(offset));
    }
    if let Some(ago) = from.strip_prefix('-')
        && let Ok(d) = humantime::parse_duration(ago)
    {
        return Ok(StartOffset::Timestamp(strata_record::now_ms() - d.as_millis() as i64));
    }
    match humantime::parse_rfc3339_weak(from) {
        Ok(t) => {
            let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            Ok(StartOffset::Timestamp(ms))
        }
        Err(_) => bail!(
            "--from '{from}' is not earliest, latest, an offset, an RFC 3339 time (2026-11-24T10:00:00Z) or a duration ago (-15m)"
        ),
    }
}

fn format_ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Writes one record as `format` asks.
pub fn print_record(
    out: &mut impl Write,
    format: RecordFormat,
    partition: u32,
    record: &Record,
) -> std::io::Result<()> {
    match format {
        RecordFormat::Value => {
            out.write_all(&record.value)?;
            out.write_all(b"\n")
        }
        RecordFormat::Json => writeln!(out, "{}", record_json(partition, record)),
    }
}

pub fn record_json(partition: u32, r: &Record) -> serde_json::Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    serde_json::json!({
        "partition": partition,
        "offset": r.offset,
        "timestamp": format_ts(r.timestamp_ms),
        "timestamp_ms": r.timestamp_ms,
        "key": r.key.as_deref().map(text),
        "value": text(&r.value),
        "headers": r.headers.iter().map(|h| (h.key.clone(), serde_json::Value::String(text(&h.value)))).collect::<serde_json::Map<_, _>>(),
    })
}

pub async fn consume(opts: &ClientOpts, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let start = parse_start(&args.from)?;
    if args.group.is_some() {
        return crate::group::consume_group(&client, args, start).await;
    }
    if args.share_group.is_some() {
        return crate::group::consume_share(&client, args).await;
    }
    let topic = client.describe_topic(&args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= topic.partition_count => {
            bail!("topic '{}' has no partition {p} (it has {})", args.topic, topic.partition_count)
        }
        Some(p) => vec![p],
        None => (0..topic.partition_count).collect(),
    };
    let mut streams = Vec::with_capacity(partitions.len());
    for p in partitions {
        let stream = client.subscribe(&args.topic, p, start).await?;
        streams.push(stream.map(move |r| r.map(|rec| (p, rec))).boxed());
    }
    let mut merged = futures::stream::select_all(streams);
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    if args.max_messages == Some(0) {
        return Ok(());
    }
    // Tails until Ctrl-C (or -n), which ends it quietly.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let item = tokio::select! {
            item = merged.next() => item,
            _ = &mut interrupted => break,
        };
        let Some(item) = item else { break };
        let (partition, record) = item?;
        print_record(&mut out, args.format, partition, &record)?;
        out.flush()?;
        printed += 1;
        if args.max_messages.is_some_and(|n| printed >= n) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest").expect("ok"), StartOffset::Earliest);
        assert_eq!(parse_start("latest").expect("ok"), StartOffset::Latest);
        assert_eq!(parse_start("42").expect("ok"), StartOffset::Offset(42));
        assert_eq!(parse_start("2026-11-24T10:00:00Z").expect("ok"), StartOffset::Timestamp(1_795_514_400_000));
        assert!(matches!(parse_start("-15m").expect("ok"), StartOffset::Timestamp(_)));
        assert!(parse_start("yesterday-ish").is_err());
    }

    #[test]
    fn topic_config_pairs_parse_and_reject_unknown_keys() {
        let c = parse_topic_config(&["retention.ms=1000".into(), "segment_bytes=4096".into()]).expect("ok");
        assert_eq!(c.retention_ms, Some(1000));
        assert_eq!(c.segment_bytes, Some(4096));
        assert!(parse_topic_config(&["retention=1".into()]).is_err());
        assert!(parse_topic_config(&["retention.ms".into()]).is_err());
        assert!(parse_topic_config(&["retention.ms=soon".into()]).is_err());
    }
}
