//! Three real `strata server` processes on loopback, as a cluster.
//!
//! - Produce continuously with acks=quorum, `kill -9` a partition's leader,
//!   keep producing: every acknowledged record is readable exactly once at
//!   its acknowledged offset; the killed node, restarted, catches up and
//!   every replica's digest matches.
//! - Pause a partition's leader (SIGSTOP): the others elect a new leader
//!   that serves; resumed, the old leader follows it and its log becomes
//!   the leader's (acks=leader writes it alone held are cut).
//! - `strata dev --nodes 3` runs a cluster that `strata cluster status`
//!   describes; Ctrl-C stops it.
//! - Bad input: replication factor 0 or above the live nodes, peers that
//!   leave this node out, a data directory of another node.
//!
//! Seeded: set STRATA_TEST_SEED to reproduce a run.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Acked, BIN, Cluster, ClusterPorts, Dev, Producers, ServerProcess, WAIT, assert_stored, eventually, free_port_run,
    leader_of, one_record, read_all,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use strata_client::{Acks, Client, Compression, Record, TopicConfig};
use tokio::sync::watch;

const PARTITIONS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_partition_leader_loses_no_acknowledged_record() {
    let seed = common::seed();
    eprintln!("STRATA_TEST_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "ha";
    client.create_topic_replicated(topic, PARTITIONS, Some(3), TopicConfig::default()).await.expect("create");

    // One producer per partition: unique values, acks=quorum (the default),
    // a record counted only once acknowledged.
    let acked: Acked = Arc::default();
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let (stop_tx, stop_rx) = watch::channel(false);
    let count_tx = Arc::new(count_tx);
    let mut producers = Vec::new();
    for p in 0..PARTITIONS {
        let (client, acked, count_tx, stop) =
            (client.clone(), Arc::clone(&acked), Arc::clone(&count_tx), stop_rx.clone());
        producers.push(tokio::spawn(async move {
            let mut failed = 0u32;
            for n in 0..20_000u64 {
                if *stop.borrow() {
                    break;
                }
                let value = format!("p{p}-{n}");
                let record = Record { value: Bytes::from(value.clone()), timestamp_ms: 1, ..Record::default() };
                let batch = strata_record::encode(&[record], Compression::None);
                match client.produce_batch(topic, p, batch).await {
                    Ok(offset) => {
                        acked.lock().expect("lock").push((p, offset, value));
                        count_tx.send_modify(|c| *c += 1);
                    }
                    // Unknown outcome (the leader died mid-request): it may
                    // or may not be there; not counted as acknowledged.
                    Err(_) => failed += 1,
                }
            }
            failed
        }));
    }

    let before = 100 + rng.random_range(0..200);
    tokio::time::timeout(WAIT, count_rx.wait_for(|c| *c >= before)).await.expect("records acknowledged").expect("rx");
    let victim_partition = rng.random_range(0..PARTITIONS);
    let victim = leader_of(&client, topic, victim_partition).await;
    eprintln!("kill -9 node {victim}, leader of partition {victim_partition}, after {before} acks");
    let killed_at = *count_rx.borrow();
    cluster.kill(victim);

    // Producing goes on at the new leader.
    let target = killed_at + 300;
    tokio::time::timeout(WAIT, count_rx.wait_for(|c| *c >= target)).await.expect("acks after failover").expect("rx");
    stop_tx.send_replace(true);
    let mut failed = 0;
    for p in producers {
        failed += p.await.expect("producer");
    }
    let acked = acked.lock().expect("lock").clone();
    eprintln!("{} acknowledged, {failed} failed (unknown outcome)", acked.len());

    // Every acknowledged record is there once, at its offset, on a survivor.
    let survivor = (1..=3).find(|id| *id != victim).expect("survivor");
    let reader = client.node(&cluster.addr(survivor)).await.expect("survivor");
    for p in 0..PARTITIONS {
        let mut at: HashMap<u64, String> = HashMap::new();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut offset = 0;
        loop {
            let chunk = reader.fetch(topic, p, offset, 1 << 20, Duration::ZERO).await.expect("fetch");
            if chunk.records.is_empty() {
                break;
            }
            for r in &chunk.records {
                let v = String::from_utf8_lossy(&r.value).into_owned();
                *seen.entry(v.clone()).or_default() += 1;
                at.insert(r.offset, v);
            }
            offset = chunk.next_offset;
        }
        for (_, off, value) in acked.iter().filter(|(ap, _, _)| *ap == p) {
            assert_eq!(at.get(off), Some(value), "partition {p}: acknowledged {value} missing at offset {off}");
            assert_eq!(seen[value], 1, "partition {p}: {value} stored more than once");
        }
    }

    // The killed node comes back, catches up, and every replica holds the
    // same log up to a common applied index.
    cluster.restart(victim);
    for p in 0..PARTITIONS {
        replicas_agree(&client, &cluster, topic, p).await;
    }
}

/// SIGTERM: the node hands every partition it leads over before it stops,
/// and producers (the client's routed produce, which retries `NOT_LEADER`)
/// see no error at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_with_sigterm_hands_its_partitions_over_and_producers_see_no_error() {
    const PARTS: u32 = 6;
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "drain";
    client.create_topic_replicated(topic, PARTS, Some(3), TopicConfig::default()).await.expect("create");
    let mut producers = Producers::start(&client, topic, PARTS);
    producers.wait_for(200).await;
    let mut led: HashMap<u64, usize> = HashMap::new();
    for p in 0..PARTS {
        *led.entry(leader_of(&client, topic, p).await).or_default() += 1;
    }
    let (&victim, &partitions) = led.iter().max_by_key(|(id, n)| (**n, **id)).expect("leaders");
    eprintln!("SIGTERM to node {victim}, which leads {partitions} of {PARTS} partitions");
    let stopped_at = producers.acknowledged();
    // Waiting for the process blocks: off the runtime's workers.
    let (exit, lines) = tokio::task::block_in_place(|| cluster.stop(victim));
    assert!(exit.success(), "node {victim} exited with {exit:?}");
    let handed = lines.iter().find(|l| l.contains("led groups over")).expect("the node reports its handover");
    eprintln!("node {victim}: {handed}");
    assert!(!handed.contains("left to the peers"), "every group was handed over: {handed}");
    // "handed N of M led groups over": all of them, its partitions at least.
    let counts: Vec<usize> = handed.split_whitespace().filter_map(|w| w.parse().ok()).take(2).collect::<Vec<usize>>();
    assert!(counts.len() == 2 && counts[0] == counts[1] && counts[1] >= partitions, "{handed}");

    producers.wait_for(stopped_at + 300).await;
    let (errors, acked) = producers.stop().await;
    assert!(errors.is_empty(), "producers saw errors across a graceful stop: {errors:?}");
    // Every acknowledged record is there once, at its offset.
    assert_stored(&client, topic, PARTS, &acked).await;
    // It comes back, catches up, and the replicas agree.
    cluster.restart(victim);
    for p in 0..PARTS {
        replicas_agree(&client, &cluster, topic, p).await;
    }
}

/// Waits until every replica of a partition has applied what its leader
/// had applied, and checks that all hold the same log up to there (their
/// `PartitionDigest`s are equal).
async fn replicas_agree(client: &Client, cluster: &Cluster, topic: &str, p: u32) {
    if let Err(e) = digests_agree(client, cluster, topic, p).await {
        panic!("{e}");
    }
}

/// [`replicas_agree`], answering what differs instead of panicking.
async fn digests_agree(client: &Client, cluster: &Cluster, topic: &str, p: u32) -> Result<(), String> {
    let mut nodes = Vec::new();
    for id in 1..=cluster.ports.len() as u64 {
        nodes.push(client.node(&cluster.addr(id)).await.expect("node"));
    }
    let leader = leader_of(client, topic, p).await;
    let target = client
        .node(&cluster.addr(leader))
        .await
        .expect("leader")
        .partition_digest(topic, p, None)
        .await
        .expect("digest")
        .applied_index;
    eventually("every replica applies the leader's entries", || async {
        let mut all = true;
        for n in &nodes {
            all &= n.partition_digest(topic, p, None).await.is_ok_and(|d| d.applied_index >= target);
        }
        all
    })
    .await;
    let mut digests = Vec::new();
    for n in &nodes {
        digests.push(n.partition_digest(topic, p, Some(target)).await.map_err(|e| e.to_string())?);
    }
    for d in &digests[1..] {
        let (a, b) = (&digests[0], d);
        if (a.entries, a.first_index, a.last_index, a.crc32c) != (b.entries, b.first_index, b.last_index, b.crc32c) {
            return Err(format!(
                "partition {p}: node {} and node {} differ up to index {target}: {a:?} vs {b:?}",
                a.node_id, b.node_id
            ));
        }
    }
    Ok(())
}

/// What node `id` says leads partition `p` (0: none known there).
async fn leader_seen_by(client: &Client, cluster: &Cluster, id: u64, topic: &str, p: u32) -> u64 {
    let node = client.node(&cluster.addr(id)).await.expect("node");
    let meta = node.metadata(&[topic]).await;
    meta.ok().and_then(|m| m.topics.first().map(|t| t.partitions[p as usize].leader)).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_is_replaced_and_steps_down_when_it_resumes() {
    let cluster = Cluster::start(3);
    let admin = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "paused";
    admin.create_topic_replicated(topic, 1, Some(3), TopicConfig::default()).await.expect("create");
    // Short deadlines: a request at a paused node gets no answer.
    let client = admin.with_timeout(Duration::from_secs(2));
    let mut acked = Vec::new();
    for n in 0..20 {
        let value = format!("committed-{n}");
        acked.push((client.produce_batch(topic, 0, one_record(&value)).await.expect("produce"), value));
    }
    let old = leader_of(&client, topic, 0).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != old).collect();

    // The followers pause: nothing commits, but while its lease lasts the
    // leader takes acks=leader writes (fsync'd there only).
    for f in &followers {
        cluster.signal(*f, "STOP");
    }
    let mut leader_only = Vec::new();
    for n in 0..5 {
        let value = format!("leader-only-{n}");
        match client.produce_batch_with(topic, 0, one_record(&value), Acks::Leader).await {
            Ok(offset) => leader_only.push((offset, value)),
            Err(e) => {
                eprintln!("acks=leader write {n} refused once the lease ran out: {e}");
                break;
            }
        }
    }
    assert!(!leader_only.is_empty(), "the leader took no acks=leader write within its lease");
    let end = acked.last().expect("acked").0 + 1;
    assert_eq!(leader_only[0].0, end, "the leader-only writes follow the committed ones");
    // Not committed: consumers do not see them.
    let old_client = client.node(&cluster.addr(old)).await.expect("old leader");
    assert_eq!(old_client.fetch(topic, 0, end, 1 << 20, Duration::ZERO).await.expect("fetch").records.len(), 0);

    // Now the leader pauses and the followers resume: they elect one of
    // themselves, which takes writes.
    cluster.signal(old, "STOP");
    for f in &followers {
        cluster.signal(*f, "CONT");
    }
    eventually("a follower is elected", || async {
        let l = leader_seen_by(&client, &cluster, followers[0], topic, 0).await;
        l != 0 && l != old
    })
    .await;
    let deadline = Instant::now() + WAIT;
    for n in 0.. {
        if acked.len() >= 40 {
            break;
        }
        assert!(Instant::now() < deadline, "{} writes at the new leader after {WAIT:?}", acked.len() - 20);
        let value = format!("after-{n}");
        // A request that times out may still be applied later: unknown
        // outcome, so it is not counted (and its value is never reused).
        match client.produce_batch(topic, 0, one_record(&value)).await {
            Ok(offset) => acked.push((offset, value)),
            Err(e) => eprintln!("{value}: {e}"),
        }
    }

    // The old leader resumes: it learns of the new term, follows, and its
    // log becomes the leader's (an uncommitted suffix is cut).
    cluster.signal(old, "CONT");
    eventually("the old leader follows a new one", || async {
        let (theirs, mine) = (
            leader_seen_by(&client, &cluster, followers[0], topic, 0).await,
            leader_seen_by(&client, &cluster, old, topic, 0).await,
        );
        theirs != old && theirs != 0 && mine == theirs
    })
    .await;
    replicas_agree(&client, &cluster, topic, 0).await;
    let all = read_all(&client, topic, 0).await;
    let at: HashMap<u64, &str> = all.iter().map(|(o, v)| (*o, v.as_str())).collect();
    for (offset, value) in &acked {
        assert_eq!(at.get(offset).copied(), Some(value.as_str()), "acknowledged {value} missing at {offset}");
        assert_eq!(all.iter().filter(|(_, v)| v == value).count(), 1, "{value} stored more than once");
    }
    // An acks=leader write the new leader did not have is gone (the weaker
    // promise); one it had kept its offset. Never twice, never elsewhere.
    let mut lost = 0;
    for (offset, value) in &leader_only {
        match all.iter().find(|(_, v)| v == value) {
            Some((o, _)) => assert_eq!(o, offset, "{value} moved"),
            None => lost += 1,
        }
    }
    eprintln!(
        "{} acks=leader writes, {lost} cut from the old leader's log, {} quorum writes",
        leader_only.len(),
        acked.len()
    );
}

/// A server whose standard error goes to `DATA_DIR.stderr`.
fn server(node_id: u64, ports: &ClusterPorts, data_dir: &std::path::Path) -> (std::process::Child, std::path::PathBuf) {
    let log = data_dir.with_extension("stderr");
    let child = std::process::Command::new(BIN)
        .args(ports.server_args(node_id))
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("stderr file"))
        .spawn()
        .expect("spawn strata server");
    (child, log)
}

/// Waits (at most [`WAIT`]) until one of `children` exits unsuccessfully,
/// and returns its standard error; kills the others.
fn first_exit(mut children: Vec<(std::process::Child, std::path::PathBuf)>) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        for i in 0..children.len() {
            if let Some(status) = children[i].0.try_wait().expect("try_wait") {
                let (_, log) = children.remove(i);
                for (mut other, _) in children {
                    let _ = other.kill();
                    let _ = other.wait();
                }
                assert!(!status.success(), "the server should have refused to run");
                return std::fs::read_to_string(log).expect("stderr");
            }
        }
        assert!(Instant::now() < deadline, "no server refused to run");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_a_topic_are_replicated_on_every_node_and_take_records() {
    let cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    client.create_topic_replicated("grown", 1, Some(3), TopicConfig::default()).await.expect("create");
    let grown = client.create_partitions("grown", 3).await.expect("add partitions");
    assert_eq!(grown.partition_count, 3);
    for id in 1..=3 {
        let node = client.node(&cluster.addr(id)).await.expect("node");
        eventually(&format!("node {id} holds the new partitions"), || async {
            node.describe_topic("grown").await.is_ok_and(|t| t.partition_count == 3)
        })
        .await;
    }
    // The new partitions have leaders and take records with acks=quorum.
    for p in 1..3 {
        let offset = client.produce_batch("grown", p, one_record("new")).await.expect("produce to a new partition");
        assert_eq!(offset, 0);
        replicas_agree(&client, &cluster, "grown", p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_input_gets_clear_errors() {
    let mut a = Cluster::start(3);
    let client = Client::connect(&a.bootstrap()).await.expect("connect");
    for (rf, needle) in [(0, "at least 1"), (4, "larger than the number of nodes in the cluster (3)")] {
        let err = client.create_topic_replicated("t", 1, Some(rf), TopicConfig::default()).await.expect_err("bad rf");
        assert_eq!(err.reason(), Some("INVALID_REPLICATION_FACTOR"), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // Wait until node 3 knows its cluster, then stop it: its directory is
    // another cluster's from now on.
    let identity = Cluster::dir_of(&a._dir, 3).join("node.json");
    eventually("node 3 learnt its cluster", || async {
        std::fs::read_to_string(&identity).is_ok_and(|s| s.contains("\"cluster_id\": \""))
    })
    .await;
    a.kill(3);

    // Peers that leave this node out.
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = ClusterPorts::new(3);
    // (A node 1 that ran once on `x`: its identity is written by then.)
    ServerProcess::start_node(&dir.path().join("x"), 1, &ports).kill();
    let err = {
        let out = std::process::Command::new(BIN)
            .args(["server", "--node-id", "4", "--listen", "127.0.0.1:1", "--peers", &ports.peers_arg()])
            .arg("--data-dir")
            .arg(dir.path().join("y"))
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err.contains("this node's id 4 is not among the peers"), "{err}");

    // Node 2 started with node 1's data directory.
    let err = first_exit(vec![server(2, &ports, &dir.path().join("x"))]);
    assert!(err.contains("belongs to node 1, not node 2"), "{err}");

    // Another cluster, running; its node 3 is stopped and started again
    // with the first cluster's node-3 directory: it refuses to go on.
    let b = Cluster::start(3);
    for id in 1..=3 {
        let identity = Cluster::dir_of(&b._dir, id).join("node.json");
        eventually("the second cluster bootstrapped", || async {
            std::fs::read_to_string(&identity).is_ok_and(|s| s.contains("\"cluster_id\": \""))
        })
        .await;
    }
    let mut b = b;
    b.kill(3);
    let children = vec![server(3, &b.ports, &Cluster::dir_of(&a._dir, 3))];
    let err = first_exit(children);
    assert!(err.contains("belongs to cluster"), "a node of another cluster: {err}");
}

#[test]
fn strata_dev_runs_a_local_cluster_that_cluster_status_describes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_port_run(3);
    // Its cluster listeners, and its metrics listeners 100 ports above them.
    let cluster_base = free_port_run(103);
    let dev = std::process::Command::new(BIN)
        .args(["dev", "--nodes", "3", "--base-port", &base.to_string()])
        .args(["--cluster-base-port", &cluster_base.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("dev"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn strata dev");
    let mut dev = Dev(dev);
    let mut lines = std::io::BufReader::new(dev.0.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout line");
        let done = line.contains("Ctrl-C stops the cluster");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    for i in 0..3 {
        assert!(text.contains(&format!("node {}: 127.0.0.1:{}", i + 1, base + i)), "{text}");
    }
    let servers: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let server = servers.join(",");
    common::ok(&server, &["topic", "create", "demo", "--partitions", "3", "--replication-factor", "3"], "");
    common::ok(&server, &["produce", "demo", "--partition", "1"], "a\nb\nc\n");

    // Every node up; every partition with a leader and three replicas, none
    // lagging once the writes are applied everywhere.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let out = common::ok(&server, &["cluster", "status", "--format", "json"], "");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        let parts = v["partitions"].as_array().expect("partitions").clone();
        let settled = parts.len() == 3
            && parts.iter().all(|p| {
                p["leader"].as_u64().is_some_and(|l| l != 0)
                    && p["in_sync"].as_array().is_some_and(|r| r.len() == 3)
                    && p["replicas"].as_array().is_some_and(|r| r.len() == 3 && r.iter().all(|x| x["lag"] == 0))
            });
        if settled {
            break v;
        }
        assert!(Instant::now() < deadline, "the cluster did not settle: {out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["alive"] == true && n["registered"] == true), "{status}");
    let leader = status["controller"]["leader"].as_u64().unwrap_or(0);
    assert!((1..=3).contains(&leader) && status["controller"]["term"].as_u64() > Some(0), "{status}");
    let text = common::ok(&server, &["cluster", "status"], "");
    assert!(text.contains("demo") && text.contains("up") && text.contains("controller: node "), "{text}");

    // A node stopped on its own (SIGTERM to its process) is reported; the
    // others go on.
    let node3 = dir.path().join("dev").join("node-3");
    let wanted = format!("--data-dir {}", node3.display());
    let pid = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .find_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(" server ") && cmdline.contains(&wanted))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .expect("node 3's process");
    let term = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(term.success());
    let exited = lines.by_ref().map_while(Result::ok).find(|l| l.contains("exited")).expect("dev reports the exit");
    assert!(exited.contains("node 3 exited") && exited.contains("the others go on"), "{exited}");

    // Ctrl-C stops every node cleanly.
    dev.interrupt();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopping")), "{rest:?}");
    let exit = dev.0.wait().expect("wait");
    assert!(exit.success(), "strata dev exited with {exit}");
    for i in 0..3 {
        assert!(std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok(), "node {} still listens", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_trims_every_replica_and_a_node_that_was_away_catches_up_from_a_snapshot() {
    // 4 KiB segments: below the default floor, which the operator lowers.
    let env = [("STRATA_RETENTION_CHECK_INTERVAL_MS", "200"), ("STRATA_STORAGE_MIN_SEGMENT_BYTES", "4096")];
    let mut cluster = Cluster::start_with(3, &env);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let topic = "trim";
    let config = TopicConfig { segment_bytes: Some(4096), retention_bytes: Some(16 * 1024), ..TopicConfig::default() };
    client.create_topic_replicated(topic, 1, Some(3), config).await.expect("create");
    let mut acked = Vec::new();
    for n in 0..10 {
        let value = format!("early-{n}");
        acked.push((client.produce_batch(topic, 0, one_record(&value)).await.expect("produce"), value));
    }
    let leader = leader_of(&client, topic, 0).await;
    let away = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(away);
    // Far more than retention keeps: the leader deletes segments the node
    // that is away has not seen.
    for n in 0..800 {
        let value = format!("later-{n:04}-{}", "x".repeat(64));
        acked.push((client.produce_batch(topic, 0, one_record(&value)).await.expect("produce"), value));
    }
    let leader_node = client.node(&cluster.addr(leader)).await.expect("leader");
    // The node that is away drops out of the in-sync replicas (after 10 s
    // without acknowledging the leader).
    eventually("the node away is out of sync", || async {
        let m = leader_node.metadata(&[topic]).await.expect("metadata");
        let in_sync = &m.topics[0].partitions[0].in_sync;
        in_sync.len() == 2 && !in_sync.contains(&away) && in_sync.contains(&leader)
    })
    .await;
    eventually("retention on the leader", || async {
        let d = leader_node.describe_topic(topic).await.expect("describe");
        d.partitions[0].log_start_offset > 100
    })
    .await;

    cluster.restart(away);
    eventually("every replica holds the same retained log", || async {
        digests_agree(&client, &cluster, topic, 0).await.is_ok()
    })
    .await;
    eventually("the returning node is in sync again", || async {
        let m = leader_node.metadata(&[topic]).await.expect("metadata");
        m.topics[0].partitions[0].in_sync.len() == 3
    })
    .await;
    let away_node = client.node(&cluster.addr(away)).await.expect("node");
    let start = away_node.describe_topic(topic).await.expect("describe").partitions[0].log_start_offset;
    assert!(start > 100, "the returning node holds only what the leader retained (log start {start})");

    // Every acknowledged record at or after the log start is there, once,
    // at its offset; those before were deleted by retention.
    let all = read_all(&client, topic, 0).await;
    let first = all.first().expect("records").0;
    let at: HashMap<u64, &str> = all.iter().map(|(o, v)| (*o, v.as_str())).collect();
    for (offset, value) in acked.iter().filter(|(o, _)| *o >= first) {
        assert_eq!(at.get(offset).copied(), Some(value.as_str()), "acknowledged {value} missing at {offset}");
    }
    assert_eq!(all.len() as u64, acked.last().expect("acked").0 + 1 - first, "no record twice, none missing");
}

/// Committed offsets and share-group acknowledgements are replicated like
/// records: they survive `kill -9` of every node, and a group's coordinator
/// moves when its node dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_offsets_and_acknowledgements_survive_kill_9_of_every_node() {
    use strata_client::proto as pb;
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    client.create_topic_replicated("tasks", 2, Some(3), TopicConfig::default()).await.expect("create");
    for p in 0..2 {
        for i in 0..4 {
            client.produce_batch("tasks", p, one_record(&format!("{p}-{i}"))).await.expect("produce");
        }
    }
    client.commit_offsets("billing", "", 0, &[("tasks".into(), 0, 3), ("tasks".into(), 1, 1)]).await.expect("commit");
    // A share group: two records acknowledged, two delivered and not.
    let fetch = |consumer: &str| pb::ShareFetchRequest {
        group: "workers".into(),
        topic: "tasks".into(),
        consumer_id: consumer.into(),
        max_records: 4,
        max_wait_ms: 2_000,
        lock_timeout_ms: 2_000,
        ..Default::default()
    };
    let got = client.share_fetch(fetch("a")).await.expect("share fetch");
    assert_eq!(got.records.len(), 4, "{got:?}");
    let acked: Vec<pb::Acknowledgement> = got.records[..2]
        .iter()
        .map(|r| pb::Acknowledgement {
            partition: r.partition,
            offset: r.record.as_ref().map_or(0, |x| x.offset),
            kind: pb::AckKind::Accept as i32,
        })
        .collect();
    assert!(client.share_ack("workers", "tasks", "a", &acked).await.expect("ack").is_empty());

    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect");
    let offsets = client.fetch_offsets("billing", &[]).await.expect("fetch offsets after the restart");
    let mut got_offsets: Vec<(u32, u64)> = offsets.iter().map(|o| (o.partition, o.offset)).collect();
    got_offsets.sort_unstable();
    assert_eq!(got_offsets, vec![(0, 3), (1, 1)]);
    // Every record but the two acknowledged is delivered; the two held ones
    // again once their lock timeout passed (who held them lived in memory,
    // so after the restart they count as held); the acknowledged ones never.
    let mut again = pb::ShareFetchResponse::default();
    let deadline = Instant::now() + WAIT;
    let mut acks = Vec::new();
    while again.records.len() < 6 && Instant::now() < deadline {
        let request = pb::ShareFetchRequest { max_records: 8, acks: std::mem::take(&mut acks), ..fetch("b") };
        let more = client.share_fetch(request).await.expect("share fetch");
        assert!(more.failed.is_empty(), "{more:?}");
        for r in &more.records {
            acks.push(pb::Acknowledgement {
                partition: r.partition,
                offset: r.record.as_ref().map_or(0, |x| x.offset),
                kind: pb::AckKind::Accept as i32,
            });
        }
        again.records.extend(more.records);
    }
    let key = |r: &pb::SharedRecord| (r.partition, r.record.as_ref().map_or(0, |x| x.offset));
    let mut again_keys: Vec<(u32, u64)> = again.records.iter().map(key).collect();
    again_keys.sort_unstable();
    let acked_keys: Vec<(u32, u64)> = got.records[..2].iter().map(key).collect();
    let expected: Vec<(u32, u64)> =
        (0..2).flat_map(|p| (0..4).map(move |o| (p, o))).filter(|k| !acked_keys.contains(k)).collect();
    assert_eq!(again_keys, expected);
    for r in &again.records {
        let held_before = got.records[2..].iter().any(|g| key(g) == key(r));
        assert_eq!(r.delivery_count, if held_before { 2 } else { 1 }, "{r:?}");
    }

    // The coordinator of "billing" dies: another node takes over and the
    // group's offsets are there and can move on.
    let shard = strata_record::partition_for_key(b"billing", 8);
    let coordinator = leader_of(&client, "__strata_groups", shard).await;
    cluster.kill(coordinator);
    client.commit_offsets("billing", "", 0, &[("tasks".into(), 1, 4)]).await.expect("commit at the new coordinator");
    let offsets = client.fetch_offsets("billing", &[]).await.expect("fetch offsets");
    assert!(offsets.iter().any(|o| o.partition == 1 && o.offset == 4), "{offsets:?}");
    assert!(offsets.iter().any(|o| o.partition == 0 && o.offset == 3), "{offsets:?}");
}

/// A node's value of an unlabelled metric, from its `/metrics`.
fn metric(addr: &str, name: &str) -> Option<f64> {
    let (status, body) = common::http_get(addr, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Idle partitions go quiescent (no Raft heartbeats or election timers) on
/// every node; a write to each is still acknowledged at once (the leader
/// renews its lease first); kill -9 of the node leading the most of them
/// still moves every one to a new leader that takes writes; the node,
/// restarted, follows them and its groups go quiet again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_partitions_go_quiet_and_still_fail_over() {
    const N: u32 = 12;
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = ClusterPorts::new(3);
    let metrics: Vec<String> = common::free_ports(3).into_iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let env_of = |id: u64| vec![("STRATA_METRICS_LISTEN".to_owned(), metrics[id as usize - 1].clone())];
    let nodes = (1..=3u64)
        .map(|id| Some(ServerProcess::start_node_with(&Cluster::dir_of(&dir, id), id, &ports, &env_of(id))))
        .collect();
    let mut cluster = Cluster { ports, nodes, env: Vec::new(), _dir: dir };
    let client = Client::connect(&cluster.bootstrap()).await.expect("connect").with_timeout(Duration::from_secs(5));
    let topic = "quiet";
    client.create_topic_replicated(topic, N, Some(3), TopicConfig::default()).await.expect("create");
    let all_quiet = |ids: Vec<u64>| {
        let metrics = metrics.clone();
        async move {
            ids.iter().all(|id| {
                let addr = &metrics[*id as usize - 1];
                metric(addr, "strata_raft_groups_quiescent") == Some(f64::from(N))
                    && metric(addr, "strata_raft_groups_ticking") == Some(0.0)
            })
        }
    };
    eventually("every partition group on every node is quiescent", || all_quiet(vec![1, 2, 3])).await;

    // Writes to quiescent partitions: each acknowledged.
    for p in 0..N {
        client.produce_batch(topic, p, one_record(&format!("first-{p}"))).await.expect("a write to a quiet partition");
    }
    eventually("quiescent again after the writes", || all_quiet(vec![1, 2, 3])).await;

    // kill -9 of the node leading the most partitions: each of its
    // partitions takes a write from a new leader.
    let mut led = HashMap::<u64, Vec<u32>>::new();
    for p in 0..N {
        led.entry(leader_of(&client, topic, p).await).or_default().push(p);
    }
    let (victim, partitions) = led.into_iter().max_by_key(|(_, ps)| ps.len()).expect("leaders");
    cluster.kill(victim);
    let survivors: Vec<String> = (1..=3).filter(|id| *id != victim).map(|id| cluster.addr(id)).collect();
    let writer = Client::connect(&survivors.join(",")).await.expect("connect").with_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + WAIT;
    for p in &partitions {
        loop {
            match writer.produce_batch(topic, *p, one_record(&format!("after-{p}"))).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "partition {p} took no write within {WAIT:?}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    eprintln!("node {victim} killed: {} partitions it led took writes from new leaders", partitions.len());

    // Restarted, the node follows: every group quiet on every node again,
    // and every replica holds the same records.
    let node = ServerProcess::start_node_with(
        &Cluster::dir_of(&cluster._dir, victim),
        victim,
        &cluster.ports,
        &env_of(victim),
    );
    cluster.nodes[victim as usize - 1] = Some(node);
    eventually("quiescent on every node after the restart", || all_quiet(vec![1, 2, 3])).await;
    for p in 0..N {
        replicas_agree(&client, &cluster, topic, p).await;
    }
    let total = |name: &str| metrics.iter().filter_map(|m| metric(m, name)).sum::<f64>();
    assert!(total("strata_raft_candidacies_total") > 0.0, "the survivors' quiescers stood for the dead node's groups");
}
