//! `strata bench groups`: the consumer-group figures. On a fresh topic it
//! produces N records, then measures
//! - the consume throughput of a 3-member consumer group (manual commit
//!   after every poll) reading the topic to its end;
//! - rebalance time, per round: two members read, a third joins (until the
//!   three hold disjoint partitions covering the topic, the new one some),
//!   then one dies without leaving (until the other two cover the topic);
//! - share-group acknowledgement throughput: 3 consumers fetch and accept
//!   every record (acknowledgements ride on the next fetch).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use strata_client::{Client, GroupConsumerConfig, ProducerConfig, Record, TopicConfig, TopicPartition, proto};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ClientOpts;
use crate::cli::connect;

#[derive(Args, Debug)]
pub struct GroupsBench {
    /// Records produced (and then consumed, and acknowledged).
    #[arg(long, default_value_t = 60_000)]
    pub records: u64,
    /// Value size of each record in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Partitions of the topic the bench creates.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Replicas per partition (default: 3, or every node of a smaller cluster).
    #[arg(long, short = 'r')]
    pub replication_factor: Option<u32>,
    /// Rebalance rounds (join, then death).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Longest any one step may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub step_timeout: Duration,
}

/// A member reading in its own task; publishes what it holds after every poll.
struct Member {
    held: watch::Receiver<BTreeSet<TopicPartition>>,
    task: JoinHandle<anyhow::Result<()>>,
}

async fn member(client: &Client, group: &str, topic: &str, consumed: Arc<AtomicU64>) -> anyhow::Result<Member> {
    let mut config = GroupConsumerConfig::new(group, &[topic]);
    config.client_id = "strata-bench".to_owned();
    config.max_wait = Duration::from_millis(100);
    let mut consumer = client.group_consumer(config).await?;
    let (tx, held) = watch::channel(BTreeSet::new());
    let task = tokio::spawn(async move {
        loop {
            let records = consumer.poll().await?;
            if !records.is_empty() {
                consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
                consumer.commit().await?;
            }
            tx.send_if_modified(|h| {
                let now = consumer.assignment();
                let changed = *h != now;
                *h = now;
                changed
            });
        }
    });
    Ok(Member { held, task })
}

/// Waits until the members' holdings are disjoint and cover `all`, and
/// each member of `must_hold` holds something.
async fn settled(
    members: &mut [Member],
    all: &BTreeSet<TopicPartition>,
    must_hold: &[usize],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let held: Vec<BTreeSet<TopicPartition>> = members.iter().map(|m| m.held.borrow().clone()).collect();
        let total: usize = held.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<&TopicPartition> = held.iter().flatten().collect();
        if total == all.len() && union.len() == all.len() && must_hold.iter().all(|i| !held[*i].is_empty()) {
            return Ok(());
        }
        for m in members.iter() {
            if m.task.is_finished() {
                bail!("a member stopped while the group rebalanced");
            }
        }
        let changes = members.iter_mut().map(|m| Box::pin(m.held.changed()));
        if tokio::time::timeout_at(deadline, futures::future::select_all(changes)).await.is_err() {
            bail!("the group did not settle within {timeout:?}: members hold {held:?}");
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub async fn run(opts: &ClientOpts, args: GroupsBench) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let topic = format!("bench-groups-{}", strata_record::now_ms());
    client
        .create_topic_replicated(&topic, args.partitions, args.replication_factor, TopicConfig::default())
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    let all: BTreeSet<TopicPartition> = (0..args.partitions).map(|p| (topic.clone(), p)).collect();

    eprintln!(
        "bench groups: producing {} records of {} bytes to {topic} ({} partitions)",
        args.records, args.record_size, args.partitions
    );
    let producer = client.producer(ProducerConfig::default());
    let value = Bytes::from(strata_bench::payload(1, args.record_size));
    let mut acks = Vec::with_capacity(args.records as usize);
    for _ in 0..args.records {
        acks.push(producer.send(&topic, None, Record { value: value.clone(), ..Default::default() }).await?);
    }
    for a in acks {
        a.await?;
    }

    // Consume throughput of a 3-member group.
    let consumed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(member(&client, "bench-consume", &topic, Arc::clone(&consumed)).await?);
    }
    let deadline = Instant::now() + args.step_timeout;
    while consumed.load(Ordering::Relaxed) < args.records {
        if Instant::now() > deadline || members.iter().any(|m| m.task.is_finished()) {
            bail!("the group read {} of {} records", consumed.load(Ordering::Relaxed), args.records);
        }
        let changes = members.iter_mut().map(|m| Box::pin(m.held.changed()));
        let _ = tokio::time::timeout(Duration::from_millis(20), futures::future::select_all(changes)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    for m in members {
        m.task.abort();
    }
    let rate = args.records as f64 / secs;
    println!(
        "consume, 3-member group: {} records in {secs:.2} s: {rate:.0} records/s, {:.1} MB/s (joins included, manual commit after every poll)",
        args.records,
        rate * args.record_size as f64 / 1e6
    );

    // Rebalance time.
    let (mut joins, mut deaths) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let group = format!("bench-rebalance-{round}");
        let idle = Arc::new(AtomicU64::new(0));
        let mut members = vec![
            member(&client, &group, &topic, Arc::clone(&idle)).await?,
            member(&client, &group, &topic, Arc::clone(&idle)).await?,
        ];
        settled(&mut members, &all, &[0, 1], args.step_timeout).await?;
        let t0 = Instant::now();
        members.push(member(&client, &group, &topic, Arc::clone(&idle)).await?);
        settled(&mut members, &all, &[0, 1, 2], args.step_timeout).await?;
        let join = t0.elapsed().as_secs_f64() * 1e3;
        // The first member dies: its task and session stop without a leave.
        let dead = members.remove(0);
        let t1 = Instant::now();
        dead.task.abort();
        let _ = dead.task.await;
        drop(dead.held);
        settled(&mut members, &all, &[], args.step_timeout).await?;
        let death = t1.elapsed().as_secs_f64() * 1e3;
        eprintln!("round {}: join {join:.1} ms, death {death:.1} ms", round + 1);
        joins.push(join);
        deaths.push(death);
        for m in members {
            m.task.abort();
        }
    }
    if args.rounds > 0 {
        println!(
            "rebalance, median of {} rounds: a member joins {:.1} ms, a member dies {:.1} ms",
            args.rounds,
            median(joins),
            median(deaths)
        );
    }

    // Share-group acknowledgement throughput.
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut consumers = Vec::new();
    for c in 0..3 {
        let (client, topic, acked) = (client.clone(), topic.clone(), Arc::clone(&acked));
        let total = args.records;
        let step_timeout = args.step_timeout;
        consumers.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            let deadline = Instant::now() + step_timeout;
            while acked.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                let n = pending.len() as u64;
                let resp = client
                    .share_fetch(proto::ShareFetchRequest {
                        group: "bench-share".into(),
                        topic: topic.clone(),
                        consumer_id: format!("bench-{c}"),
                        max_records: 100,
                        max_wait_ms: 100,
                        acks: std::mem::take(&mut pending),
                        ..Default::default()
                    })
                    .await?;
                if !resp.failed.is_empty() {
                    bail!("{} acknowledgements failed: {:?}", resp.failed.len(), resp.failed.first());
                }
                acked.fetch_add(n, Ordering::Relaxed);
                for r in resp.records {
                    let offset = r.record.map_or(0, |x| x.offset);
                    pending.push(proto::Acknowledgement {
                        partition: r.partition,
                        offset,
                        kind: proto::AckKind::Accept as i32,
                    });
                }
            }
            if !pending.is_empty() {
                let n = pending.len() as u64;
                client.share_ack("bench-share", &topic, &format!("bench-{c}"), &pending).await?;
                acked.fetch_add(n, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for c in consumers {
        c.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = acked.load(Ordering::Relaxed);
    if done < args.records {
        bail!("the share group acknowledged {done} of {} records in {secs:.1} s", args.records);
    }
    println!(
        "share group, 3 consumers: {done} records acknowledged in {secs:.2} s: {:.0} records/s",
        done as f64 / secs
    );
    Ok(())
}
