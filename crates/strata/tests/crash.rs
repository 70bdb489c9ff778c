//! Kill -9 while producing: every acknowledged record must be there, at its
//! acknowledged offset, after a restart. Seeded; set STRATA_TEST_SEED to
//! reproduce a run.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ServerProcess;
use rand::{Rng, SeedableRng, rngs::StdRng};
use strata_client::{Client, ProducerConfig, Record, TopicConfig};

const PARTITIONS: u32 = 4;
const CYCLES: usize = 5;

type Acked = Arc<Mutex<Vec<(u32, u64, String)>>>;

/// One producer per partition, each sending unique values until its
/// acknowledgements start failing (the server was killed).
fn start_producers(client: &Client, cycle: usize, acked: &Acked) -> Vec<tokio::task::JoinHandle<()>> {
    (0..PARTITIONS)
        .map(|p| {
            // No retries: a record is either acknowledged or failed.
            let producer = client.producer(ProducerConfig {
                retries: 0,
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            });
            let acked = Arc::clone(acked);
            tokio::spawn(async move {
                let mut pending = std::collections::VecDeque::new();
                for n in 0u64.. {
                    let value = format!("c{cycle}-p{p}-{n}");
                    let record = Record { value: Bytes::from(value.clone()), ..Record::default() };
                    let Ok(delivery) = producer.send("crash", Some(p), record).await else { return };
                    pending.push_back((value, delivery));
                    while pending.len() > 64 || (n % 16 == 0 && !pending.is_empty()) {
                        let Some((value, delivery)) = pending.pop_front() else { break };
                        match delivery.await {
                            Ok(meta) => acked.lock().expect("lock").push((p, meta.offset, value)),
                            Err(_) => return,
                        }
                    }
                }
            })
        })
        .collect()
}

async fn read_partition(client: &Client, partition: u32) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let chunk =
            client.fetch("crash", partition, offset, 1 << 20, Duration::ZERO).await.expect("fetch after restart");
        if chunk.records.is_empty() {
            return out;
        }
        for r in chunk.records {
            out.push((r.offset, String::from_utf8_lossy(&r.value).into_owned()));
        }
        offset = chunk.next_offset;
    }
}

async fn wait_for_acks(acked: &Acked, target: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().expect("lock").len() < target {
        assert!(Instant::now() < deadline, "producers did not reach {target} acknowledgements in 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill() {
    let seed = common::seed();
    println!("seed {seed} (reproduce with STRATA_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));

    for cycle in 0..CYCLES {
        // 64 KiB segments (below the default floor of 1 MiB): many rolls.
        let env = [("STRATA_STORAGE_MIN_SEGMENT_BYTES".to_owned(), (64 * 1024).to_string())];
        let server = ServerProcess::start_with(dir.path(), &env);
        let client = Client::connect(&server.addr).await.expect("connect");
        if cycle == 0 {
            let config = TopicConfig { segment_bytes: Some(64 * 1024), ..TopicConfig::default() };
            client.create_topic("crash", PARTITIONS, config).await.expect("create");
        }
        let before = acked.lock().expect("lock").len();
        let producers = start_producers(&client, cycle, &acked);
        let kill_after = before + rng.random_range(300..3000);
        wait_for_acks(&acked, kill_after).await;
        server.kill();
        for p in producers {
            let _ = tokio::time::timeout(Duration::from_secs(60), p).await.expect("producer stops after the kill");
        }
        println!("cycle {cycle}: killed after {} acknowledged records in total", acked.lock().expect("lock").len());
    }

    let server = ServerProcess::start(dir.path());
    let client = Client::connect(&server.addr).await.expect("connect");
    let mut logs = HashMap::new();
    for p in 0..PARTITIONS {
        let records = read_partition(&client, p).await;
        for (i, (offset, _)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64, "partition {p}: offsets are contiguous from 0");
        }
        logs.insert(p, records);
    }
    let acked = acked.lock().expect("lock").clone();
    for (p, offset, value) in &acked {
        let found = logs[p].get(*offset as usize).map(|(_, v)| v.as_str());
        assert_eq!(found, Some(value.as_str()), "acknowledged record lost or moved: partition {p} offset {offset}");
    }
    println!("{} acknowledged records all present after {CYCLES} kill -9 cycles", acked.len());
}
