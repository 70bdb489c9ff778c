//! Clients ride through a failover: three real `strata server` processes on
//! loopback, a topic of 3 partitions replicated 3 times.
//!
//! - Each partition's leader in turn is killed (-9), and at once
//!   `strata consume --from earliest -n N` runs against the surviving
//!   nodes: it waits for the new leader and prints every acknowledged
//!   record exactly once (the killed node is restarted, and caught up,
//!   before the next round: two nodes down would leave no majority).
//! - A tailing `strata consume` whose stream breaks mid-way (its partition's
//!   leader killed) resumes at the new leader from the next offset: every
//!   record of the log printed once, none skipped, and Ctrl-C ends it with
//!   status 0.
//! - A consumer-group member started at once after a partition leader's
//!   kill reads on from the group's commits: the two members together
//!   print every acknowledged record exactly once.
//! - With no leader to be had (two of three nodes down), `strata consume`
//!   gives up at its `--timeout` with an error naming the partition.
//!
//! (A file of its own: cluster.rs is at its size limit.) Seeded: set
//! STRATA_TEST_SEED to reproduce a run.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BIN, ClusterPorts, ServerProcess, WAIT, eventually, leader_of};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use strata_client::{Client, ProducerConfig, Record, TopicConfig};

const PARTITIONS: u32 = 3;

struct Cluster {
    ports: ClusterPorts,
    nodes: Vec<Option<ServerProcess>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = ClusterPorts::new(n);
        let nodes = (1..=n as u64)
            .map(|id| Some(ServerProcess::start_node(&dir.path().join(format!("node-{id}")), id, &ports)))
            .collect();
        Self { ports, nodes, dir }
    }

    fn addr(&self, id: u64) -> String {
        self.ports.addr(id)
    }

    fn ids(&self) -> impl Iterator<Item = u64> + use<> {
        1..=self.ports.len() as u64
    }

    /// The addresses of the nodes but `except`, comma-separated.
    fn others(&self, except: u64) -> String {
        self.ids().filter(|id| *id != except).map(|id| self.addr(id)).collect::<Vec<_>>().join(",")
    }

    fn bootstrap(&self) -> String {
        self.ids().map(|id| self.addr(id)).collect::<Vec<_>>().join(",")
    }

    /// SIGKILL, and the process reaped.
    fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.kill();
        }
    }

    fn restart(&mut self, id: u64) {
        let dir = self.dir.path().join(format!("node-{id}"));
        self.nodes[id as usize - 1] = Some(ServerProcess::start_node(&dir, id, &self.ports));
    }
}

/// Waits until every node has applied what the leader of each partition
/// had applied.
async fn caught_up(client: &Client, cluster: &Cluster, topic: &str) {
    for p in 0..PARTITIONS {
        let leader = client.node(&cluster.addr(leader_of(client, topic, p).await)).await.expect("leader");
        let target = leader.partition_digest(topic, p, None).await.expect("digest").applied_index;
        for id in cluster.ids() {
            let node = client.node(&cluster.addr(id)).await.expect("node");
            eventually(&format!("node {id} applying {topic}/{p} up to {target}"), || async {
                node.partition_digest(topic, p, None).await.is_ok_and(|d| d.applied_index >= target)
            })
            .await;
        }
    }
}

/// (partition, offset, value) of every record produced, once acknowledged.
type Acked = BTreeSet<(u32, u64, String)>;

/// Produces `n` records, `prefix-i` to partition `i % PARTITIONS`, with
/// acks=quorum; answers them once every one is acknowledged.
async fn produce(client: &Client, topic: &str, prefix: &str, n: usize) -> Acked {
    let producer = client.producer(ProducerConfig::default());
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let value = format!("{prefix}-{i}");
        let record = Record { value: Bytes::from(value.clone()), ..Record::default() };
        let partition = i as u32 % PARTITIONS;
        pending.push((value, producer.send(topic, Some(partition), record).await.expect("queue")));
    }
    let mut acked = Acked::new();
    for (value, delivery) in pending {
        let meta = tokio::time::timeout(WAIT, delivery).await.expect("acknowledged in time").expect("produced");
        acked.insert((meta.partition, meta.offset, value));
    }
    acked
}

/// A `--format json` line of `strata consume` as (partition, offset, value).
fn parse(line: &str) -> (u32, u64, String) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let partition = v["partition"].as_u64().expect("partition") as u32;
    (partition, v["offset"].as_u64().expect("offset"), v["value"].as_str().expect("value").to_owned())
}

/// Runs `strata ARGS` against `server` until it exits (at most [`WAIT`]):
/// success, stdout, stderr.
fn run_cli(server: &str, args: &[&str]) -> (bool, String, String) {
    let child = Command::new(BIN)
        .args(args)
        .env("STRATA_SERVER", server)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => {
            let out = out.expect("strata output");
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.success(), text(&out.stdout), text(&out.stderr))
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("strata {args:?} still running after {WAIT:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_rides_through_the_kill_of_each_partition_leader() {
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "failover";
    client.create_topic_replicated(topic, PARTITIONS, Some(3), TopicConfig::default()).await.expect("create");
    let n = 300 + rng.random_range(0..300);
    let acked = produce(&client, topic, "v", n).await;
    assert_eq!(acked.len(), n);

    let mut order: Vec<u32> = (0..PARTITIONS).collect();
    order.shuffle(&mut rng);
    for p in order {
        let victim = leader_of(&client, topic, p).await;
        eprintln!("kill -9 node {victim}, leader of {topic}/{p}; consuming at once from the others");
        cluster.kill(victim);
        let started = Instant::now();
        let count = n.to_string();
        let (ok, out, err) = run_cli(
            &cluster.others(victim),
            &["consume", topic, "--from", "earliest", "-n", &count, "--format", "json"],
        );
        assert!(ok, "strata consume failed after {:?}: {err}", started.elapsed());
        let printed: Vec<(u32, u64, String)> = out.lines().map(parse).collect();
        eprintln!("{} records consumed in {:?} with node {victim} down", printed.len(), started.elapsed());
        let distinct: Acked = printed.iter().cloned().collect();
        assert_eq!(printed.len(), distinct.len(), "a record printed twice");
        assert_eq!(distinct, acked, "the records printed are not the acknowledged ones");

        cluster.restart(victim);
        caught_up(&client, &cluster, topic).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_consume_resumes_after_its_stream_breaks() {
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "tail";
    client.create_topic_replicated(topic, PARTITIONS, Some(3), TopicConfig::default()).await.expect("create");
    let before = produce(&client, topic, "before", 100 + rng.random_range(0..200)).await;

    let mut consumer = Command::new(BIN)
        .args(["consume", topic, "--from", "earliest", "--format", "json"])
        .env("STRATA_SERVER", cluster.bootstrap())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata consume");
    let stdout = consumer.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let receive_until = |printed: &mut Vec<(u32, u64, String)>, want: usize| {
        let deadline = Instant::now() + WAIT;
        while printed.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => printed.push(parse(&line)),
                Err(e) => panic!("{} of {want} records printed ({e})", printed.len()),
            }
        }
    };
    receive_until(&mut printed, before.len());

    // The node leading a partition goes: that partition's stream breaks.
    let p = rng.random_range(0..PARTITIONS);
    let victim = leader_of(&client, topic, p).await;
    eprintln!("kill -9 node {victim}, leader of {topic}/{p}, under a tailing consume");
    cluster.kill(victim);
    let after = produce(&client, topic, "after", 100 + rng.random_range(0..200)).await;

    // Everything in the log (the producer may have written a batch twice,
    // retrying one whose acknowledgement was lost), each record once.
    let mut log = Acked::new();
    let survivor = cluster.ids().find(|id| *id != victim).expect("a survivor");
    let reader = client.node(&cluster.addr(survivor)).await.expect("a survivor");
    for p in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let chunk = reader.fetch(topic, p, offset, 1 << 20, Duration::ZERO).await.expect("fetch");
            if chunk.records.is_empty() {
                break;
            }
            log.extend(chunk.records.iter().map(|r| (p, r.offset, String::from_utf8_lossy(&r.value).into_owned())));
            offset = chunk.next_offset;
        }
    }
    assert!(log.is_superset(&before) && log.is_superset(&after), "an acknowledged record is missing from the log");
    receive_until(&mut printed, log.len());

    // Ctrl-C ends it, quietly.
    let status = Command::new("kill").args(["-INT", &consumer.id().to_string()]).status().expect("kill -INT");
    assert!(status.success());
    let (tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(consumer.wait_with_output());
    });
    let out = exited.recv_timeout(WAIT).expect("strata consume exits on Ctrl-C").expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "strata consume: {} {stderr}", out.status);
    printed.extend(lines.try_iter().map(|l| parse(&l)));
    let distinct: Acked = printed.iter().cloned().collect();
    assert_eq!(printed.len(), distinct.len(), "a record printed twice");
    assert_eq!(distinct, log, "the records printed are not those of the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_member_rides_through_the_kill_of_a_partition_leader() {
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "grouped";
    client.create_topic_replicated(topic, PARTITIONS, Some(3), TopicConfig::default()).await.expect("create");
    let n = 300 + rng.random_range(0..300);
    let acked = produce(&client, topic, "g", n).await;

    // A first member reads a third and commits what it printed.
    let first = (n / 3).to_string();
    let args = ["consume", topic, "--group", "readers", "-n", &first, "--format", "json"];
    let (ok, out, err) = run_cli(&cluster.bootstrap(), &args);
    assert!(ok, "the first member failed: {err}");
    let mut printed: Vec<(u32, u64, String)> = out.lines().map(parse).collect();

    // A partition's leader goes; at once the next member reads the rest
    // from the survivors (the group's coordinator may have been there too).
    let p = rng.random_range(0..PARTITIONS);
    let victim = leader_of(&client, topic, p).await;
    eprintln!("kill -9 node {victim}, leader of {topic}/{p}; the next member reads at once from the others");
    cluster.kill(victim);
    let started = Instant::now();
    let rest = (n - n / 3).to_string();
    let args = ["consume", topic, "--group", "readers", "-n", &rest, "--format", "json"];
    let (ok, out, err) = run_cli(&cluster.others(victim), &args);
    assert!(ok, "the next member failed after {:?}: {err}", started.elapsed());
    eprintln!("the next member read the rest in {:?}", started.elapsed());
    printed.extend(out.lines().map(parse));
    let distinct: Acked = printed.iter().cloned().collect();
    assert_eq!(printed.len(), distinct.len(), "a record printed twice");
    assert_eq!(distinct, acked, "the records printed are not the acknowledged ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_leader_consume_gives_up_at_its_timeout_with_a_clear_error() {
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "leaderless";
    client.create_topic_replicated(topic, PARTITIONS, Some(3), TopicConfig::default()).await.expect("create");
    produce(&client, topic, "x", 3).await;
    // Two of three nodes gone: no majority, no leader, whatever the wait.
    let leader = leader_of(&client, topic, 0).await;
    let other = cluster.ids().find(|id| *id != leader).expect("another node");
    cluster.kill(leader);
    cluster.kill(other);
    let survivor = cluster.ids().find(|id| *id != leader && *id != other).expect("a survivor");
    let started = Instant::now();
    let (ok, _, err) =
        run_cli(&cluster.addr(survivor), &["consume", topic, "--from", "earliest", "-n", "3", "--timeout", "2s"]);
    let took = started.elapsed();
    eprintln!("after {took:?}: {err}");
    assert!(!ok, "consumed without a leader");
    assert!(err.contains(&format!("the leader of {topic}/")), "{err}");
    assert!(err.contains("could not be reached within"), "{err}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(20), "gave up after {took:?}");
}
