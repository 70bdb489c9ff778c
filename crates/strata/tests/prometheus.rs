//! The shipped monitoring (deploy/prometheus, deploy/grafana) against a real
//! Prometheus (Debian's `prometheus` package: `prometheus` and `promtool`)
//! scraping three real `strata server` processes.
//!
//! - `promtool check config` passes on the shipped prometheus.yml and on the
//!   test's own; `promtool check rules` on the shipped alerts.yml, as it is.
//! - Under bounded load (a topic of 3 partitions with replication 3,
//!   produce, plain fetches, a consumer group that commits, a share group,
//!   one failing fetch), every expression of the Grafana dashboard returns
//!   data, and every metric an alert rule names exists.
//! - `strata_consumer_group_lag` is what the groups did not commit: for
//!   `billing` (no members left, every partition committed), the end
//!   offsets minus its commits; for a group that committed some partitions
//!   only and has a member subscribed to the whole topic (joined, then
//!   silent, as a consumer that hung), also the partitions never committed,
//!   from their log start. Each group's lag comes from one node, its
//!   coordinator, and agrees with `describe_group`.
//! - With the cluster healthy, the node-down, leaderless and
//!   under-replicated alerts are not firing; `kill -9` of that group's
//!   coordinator fires StrataNodeDown and StrataUnderReplicatedPartitions,
//!   and within [`FAILOVER_PATIENCE`] another node exports both groups' lag,
//!   unchanged, with no client asking anything of the groups meanwhile (the
//!   new coordinator loads the group's shard to be scraped); restarted
//!   (same data directory and ports), both alerts clear.
//!
//! Without `prometheus`/`promtool` on the PATH the test fails when `CI` is
//! `true` (scripts/ensure-deps.sh installs them), and is skipped otherwise.
//!
//! Seeded: set STRATA_TEST_SEED to reproduce a run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ClusterPorts, ServerProcess, free_ports, leader_of};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use strata_client::{Client, Compression, GroupConsumerConfig, Record, TopicConfig, proto as pb};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
const NODES: u64 = 3;
const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
/// What the shipped alert rules' `for:` durations become here, so that an
/// alert fires within the test's time budget.
const TEST_FOR: &str = "3s";
/// Longest wait for any one condition (alerts firing, clearing, data).
const PATIENCE: Duration = Duration::from_secs(90);
/// Longest wait, after its coordinator was killed, for a consumer group's
/// lag to be exported again by another node.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

/// Metrics whose series only exist once something happened (a failed
/// request, a share group used): a dashboard expression over them may be
/// empty, provided every metric it names is declared in a node's
/// `/metrics` (its `# TYPE` line) or known to Prometheus. The test makes
/// these events happen anyway, so they normally return data too.
const ONLY_AFTER_AN_EVENT: &[&str] = &[
    "strata_request_errors_total",
    "strata_share_group_in_flight",
    "strata_share_group_redeliveries_total",
    "strata_share_group_dead_letters_total",
];

/// Grafana's variables in the dashboard's expressions, and what they stand
/// for here.
const VARIABLES: &[(&str, &str)] = &[("$__rate_interval", "30s"), ("$job", "strata"), ("$instance", ".*")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_dashboard_queries_answer_and_alerts_fire_and_clear() {
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let Some(tools) = Tools::find() else { return };
    let started = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");

    // The shipped files, checked as they are.
    let alerts_text = std::fs::read_to_string(format!("{DEPLOY}/prometheus/alerts.yml")).expect("alerts.yml");
    let rules = alert_rules(&alerts_text);
    let checked = tools.promtool(&["check", "rules", &format!("{DEPLOY}/prometheus/alerts.yml")]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "promtool found another number of rules than the {} this test read in alerts.yml: {checked}",
        rules.len()
    );
    tools.promtool(&["check", "config", &format!("{DEPLOY}/prometheus/prometheus.yml")]);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DEPLOY}/grafana/dashboards/strata.json")).expect("strata.json"),
    )
    .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    eprintln!("{} alert rules, {} dashboard expressions", rules.len(), queries.len());

    // Three nodes, each serving /metrics on a port of its own.
    let cluster_ports = ClusterPorts::new(NODES as usize);
    let metrics_ports = free_ports(NODES as usize);
    let mut nodes =
        Nodes { ports: cluster_ports, metrics: metrics_ports, dir: work.path().join("nodes"), running: vec![] };
    for id in 1..=NODES {
        let node = nodes.start(id);
        nodes.running.push(Some(node));
    }

    // Prometheus: every second, the shipped rules with their `for:`
    // durations shortened to TEST_FOR (the expressions themselves as
    // shipped).
    let rules_copy = work.path().join("alerts.yml");
    std::fs::write(&rules_copy, shorten_for(&alerts_text)).expect("write the rules");
    let config = work.path().join("prometheus.yml");
    let targets: Vec<String> = (1..=NODES).map(|id| format!("'{}'", nodes.metrics_addr(id))).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: [{}]\n",
            rules_copy.display(),
            targets.join(", ")
        ),
    )
    .expect("write the config");
    tools.promtool(&["check", "config", config.to_str().expect("utf-8 path")]);
    let prometheus = Prometheus::start(&tools, &config, work.path());
    let prom = prometheus.addr.clone();
    poll("every node scraped", PATIENCE, || async {
        scalar(&prom, "sum(up{job=\"strata\"})").await == Some(NODES as f64)
    })
    .await;
    eprintln!("prometheus at {prom} scrapes {NODES} nodes ({:?})", started.elapsed());

    // Bounded load.
    let client = Client::connect(&nodes.ports.bootstrap()).await.expect("connect");
    client.create_topic_replicated(TOPIC, PARTITIONS, Some(3), TopicConfig::default()).await.expect("create");
    for p in 0..PARTITIONS {
        leader_of(&client, TOPIC, p).await;
    }
    let mut produced = 0u64;
    // Records produced to each partition: its end offset (nothing else
    // writes to the topic).
    let mut produced_to: BTreeMap<u32, u64> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for b in 0..rng.random_range(8..14) {
            let n = rng.random_range(50..150);
            let records: Vec<Record> = (0..n)
                .map(|i| Record {
                    key: Some(Bytes::from(format!("customer-{}", i % 7))),
                    value: Bytes::from(format!("{TOPIC}-{p}-{b}-{i}")),
                    timestamp_ms: strata_record::now_ms(),
                    ..Record::default()
                })
                .collect();
            client.produce_batch(TOPIC, p, strata_record::encode(&records, Compression::None)).await.expect("produce");
            produced += n;
            *produced_to.entry(p).or_default() += n;
        }
    }
    for p in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let chunk = client.fetch(TOPIC, p, offset, 64 * 1024, Duration::ZERO).await.expect("fetch");
            if chunk.records.is_empty() {
                break;
            }
            offset = chunk.next_offset;
        }
    }
    // One failing request, so that the error counters have a series.
    let beyond = client.fetch(TOPIC, 0, 1 << 40, 1024, Duration::ZERO).await;
    assert!(beyond.is_err(), "a fetch far beyond the end fails: {beyond:?}");

    // A consumer group reads everything and commits half of each partition:
    // its committed offsets, lag, members and rebalances exist.
    let mut consumer = client.group_consumer(GroupConsumerConfig::new("billing", &[TOPIC])).await.expect("join");
    let mut read = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while (read.len() as u64) < produced {
        read.extend(consumer.poll().await.expect("poll"));
        assert!(Instant::now() < deadline, "the group read {} of {produced} records", read.len());
    }
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &read {
        let end = ends.entry(r.partition).or_default();
        *end = (*end).max(r.record.offset + 1);
    }
    assert_eq!(ends, produced_to, "the group read every partition to its end");
    let half: Vec<_> = read.into_iter().filter(|r| r.record.offset < ends[&r.partition] / 2).collect();
    consumer.commit_through(&half).await.expect("commit");
    // Its lag once it has no members: what it did not commit.
    let billing_lag: u64 = ends.values().map(|end| end - end / 2).sum();

    // A share group: records held, one released and delivered again, one
    // rejected to the dead-letter topic.
    let share = |consumer: &str, max_records: u32, acks: Vec<pb::Acknowledgement>| pb::ShareFetchRequest {
        group: "workers".into(),
        topic: TOPIC.into(),
        consumer_id: consumer.into(),
        max_records,
        max_wait_ms: 2_000,
        lock_timeout_ms: 120_000,
        acks,
        ..Default::default()
    };
    let ack = |r: &pb::SharedRecord, kind: pb::AckKind| pb::Acknowledgement {
        partition: r.partition,
        offset: r.record.as_ref().map_or(0, |x| x.offset),
        kind: kind as i32,
    };
    // Who holds a record is not saved: if the share group's coordinator
    // fails over in between (a loaded machine can miss heartbeats), the
    // acknowledgement is refused with RECORD_NOT_ACQUIRED, by design; the
    // records are then available again, fetched and acknowledged anew.
    for attempt in 1..=5 {
        let held = client.share_fetch(share("a", 6, vec![])).await.expect("share fetch");
        assert!(held.records.len() >= 2, "{held:?}");
        let acks = vec![ack(&held.records[0], pb::AckKind::Release), ack(&held.records[1], pb::AckKind::Reject)];
        let failed = client.share_ack("workers", TOPIC, "a", &acks).await.expect("share ack");
        if failed.is_empty() {
            break;
        }
        assert!(failed.iter().all(|f| f.reason == "RECORD_NOT_ACQUIRED") && attempt < 5, "{failed:?}");
        eprintln!("attempt {attempt}: the acknowledgement was refused ({failed:?}); the coordinator moved");
    }
    // Another consumer gets the released record again (after others, maybe:
    // what it gets it accepts).
    let mut accepted = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = client.share_fetch(share("b", 50, std::mem::take(&mut accepted))).await.expect("share fetch");
        assert!(got.failed.is_empty(), "{got:?}");
        if got.records.iter().any(|r| r.delivery_count >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the released record was not delivered again");
        accepted = got.records.iter().map(|r| ack(r, pb::AckKind::Accept)).collect();
    }
    eprintln!(
        "load: {produced} records produced, fetched, consumed by a group; a share group used ({:?})",
        started.elapsed()
    );

    // Every dashboard expression answers (those over ONLY_AFTER_AN_EVENT
    // metrics may be empty if their names are known).
    let exposition = get_ok(&nodes.metrics_addr(1), "/metrics").await;
    let declared = declared_families(&exposition);
    let mut empty: Vec<String> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        empty.clear();
        for q in &queries {
            let result = query(&prom, q).await;
            if result.is_empty() {
                empty.push(q.clone());
            }
        }
        if empty.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let names = prometheus_names(&prom).await;
    let mut missing = Vec::new();
    for q in &empty {
        let metrics = metric_names(q);
        let allowed = metrics.iter().any(|m| ONLY_AFTER_AN_EVENT.contains(&m.as_str()));
        let unknown: Vec<&String> = metrics.iter().filter(|m| !known(m, &names, &declared)).collect();
        if allowed && unknown.is_empty() {
            eprintln!("no data (allowed, only after an event): {q}");
        } else {
            missing.push(format!("{q}\n    names no metric Prometheus or /metrics knows: {unknown:?}"));
        }
    }
    assert!(missing.is_empty(), "dashboard expressions without data:\n  {}", missing.join("\n  "));
    for q in &queries {
        let nan = query(&prom, q).await.iter().any(|s| s["value"][1].as_str() == Some("NaN"));
        if nan {
            eprintln!("note: NaN (no observation in the window) from {q}");
        }
    }
    // The dashboard's variables list the nodes.
    let instances = query(&prom, "count by (job, instance) (strata_build_info)").await;
    assert_eq!(instances.len(), NODES as usize, "one strata_build_info per node: {instances:?}");

    // Every metric an alert rule names exists (their expressions, with
    // thresholds, are rightly empty on a healthy cluster).
    for (alert, expr) in &rules {
        let metrics = metric_names(expr);
        assert!(!metrics.is_empty(), "{alert} names no metric: {expr}");
        for m in metrics {
            assert!(names.contains(&m), "{alert}: Prometheus knows no metric {m} (in {expr})");
        }
        let result = query(&prom, expr).await;
        eprintln!("{alert}: {} series now", result.len());
    }
    eprintln!("dashboard and alert expressions checked ({:?})", started.elapsed());
    consumer.close().await.expect("leave the group");

    // Consumer-group lag. `billing` has no members now and committed every
    // partition. Another group commits only some partitions (as a tool,
    // while it has no members), then a member subscribed to the whole topic
    // joins it at its coordinator and says nothing more (a consumer that
    // hung: no heartbeat, no leave, no join elsewhere): the partitions the
    // group never committed count from their log start.
    let group = format!("audit-{}", rng.random_range(0..1000));
    let mut uncommitted: Vec<u32> = (0..PARTITIONS).collect();
    let mut commits = Vec::new();
    for _ in 0..rng.random_range(1..PARTITIONS) {
        let p = uncommitted.remove(rng.random_range(0..uncommitted.len()));
        commits.push((TOPIC.to_owned(), p, rng.random_range(1..ends[&p])));
    }
    client.commit_offsets(&group, "", 0, &commits).await.expect("commit as a tool");
    let mut group_lag: u64 = commits.iter().map(|(_, p, offset)| ends[p] - offset).sum();
    for &p in &uncommitted {
        let leader = client.partition_leader(TOPIC, p).await.expect("leader");
        let start = leader.list_offsets(TOPIC, &[p], pb::OffsetSpec::Earliest, 0).await.expect("log start");
        group_lag += ends[&p] - start.first().expect("an offset").offset;
    }
    let coordinator = client.describe_group(&group).await.expect("describe").coordinator;
    assert!((1..=NODES).contains(&coordinator), "{group}'s coordinator: {coordinator}");
    let member = IdleMember::join(&nodes.ports.addr(coordinator), &group, TOPIC).await;
    let described = client.describe_group(&group).await.expect("describe");
    assert_eq!(described.coordinator, coordinator, "{group}'s coordinator moved: {described:?}");
    assert_eq!(described.members.len(), 1, "{described:?}");
    assert_eq!(described.partitions.iter().map(|p| p.lag).sum::<u64>(), group_lag, "{described:?}");
    eprintln!(
        "{group}: coordinated by node {coordinator}, commits {commits:?}, never committed {uncommitted:?}, \
         one idle member ({}); lag {group_lag}; billing's {billing_lag}",
        member.id
    );
    let coordinator_metrics = nodes.metrics_addr(coordinator);
    let lags = [(group.as_str(), group_lag), ("billing", billing_lag)];
    let exported = until_lags(&prom, &lags, None, PATIENCE).await;
    assert!(
        exported[&group].contains_key(&coordinator_metrics),
        "{group}'s lag comes from its coordinator: {exported:?}"
    );

    // Healthy: neither node-down, leaderless nor under-replicated firing.
    let health = ["StrataNodeDown", "StrataLeaderlessPartitions", "StrataUnderReplicatedPartitions"];
    poll("a healthy cluster without the health alerts", PATIENCE, || async {
        let firing = firing(&prom).await;
        health.iter().all(|a| !firing.iter().any(|(name, _)| name == a))
    })
    .await;

    // kill -9 of the group's coordinator: it is down, its partitions
    // under-replicated; another node coordinates the group and exports its
    // lag, unchanged, with no client asking anything of the group (its
    // member stays silent).
    let victim = coordinator;
    let victim_metrics = coordinator_metrics;
    eprintln!("kill -9 node {victim} (metrics at {victim_metrics}) ({:?})", started.elapsed());
    if let Some(node) = nodes.running[victim as usize - 1].take() {
        node.kill();
    }
    let killed = Instant::now();
    until_lags(&prom, &lags, Some(victim_metrics.as_str()), FAILOVER_PATIENCE).await;
    let members: Vec<String> = query(&prom, &format!("strata_group_members{{group=\"{group}\"}}"))
        .await
        .iter()
        .map(|s| format!("{} at {}", s["value"][1], s["metric"]["instance"]))
        .collect();
    eprintln!("both groups' lag back after {:?}; {group}'s members: {members:?}", killed.elapsed());
    drop(member);
    poll("StrataNodeDown and StrataUnderReplicatedPartitions firing", PATIENCE, || async {
        let firing = firing(&prom).await;
        let down = firing.iter().any(|(a, l)| a == "StrataNodeDown" && l["instance"] == victim_metrics.as_str());
        down && firing.iter().any(|(a, _)| a == "StrataUnderReplicatedPartitions")
    })
    .await;
    eprintln!("both alerts fire ({:?})", started.elapsed());

    // Back (same data directory and ports): both clear.
    let node = nodes.start(victim);
    nodes.running[victim as usize - 1] = Some(node);
    poll("StrataNodeDown and StrataUnderReplicatedPartitions no longer firing", PATIENCE, || async {
        let firing = firing(&prom).await;
        !firing.iter().any(|(a, _)| a == "StrataNodeDown" || a == "StrataUnderReplicatedPartitions")
    })
    .await;
    eprintln!("both alerts cleared ({:?})", started.elapsed());
    // What scraping took (a scrape asks leaders for consumer-group end
    // offsets, at most 2 s; more than scrape_timeout is a failed scrape).
    for s in query(&prom, "max_over_time(scrape_duration_seconds{job=\"strata\"}[5m])").await {
        eprintln!("longest scrape of {}: {} s", s["metric"]["instance"], s["value"][1]);
    }
    drop(prometheus);
}

/// A member of a consumer group that joined at its coordinator and then
/// says nothing (a consumer that hung): no heartbeat, no leave, and no join
/// elsewhere once its coordinator is gone. Its session timeout is the
/// longest there is (300 s), so that the coordinator keeps it through the
/// test. The coordinator's answers are read and dropped.
struct IdleMember {
    id: String,
    _requests: tokio::sync::mpsc::Sender<pb::GroupSessionRequest>,
    answers: tokio::task::JoinHandle<()>,
}

impl IdleMember {
    async fn join(addr: &str, group: &str, topic: &str) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the coordinator");
        let (requests, rx) = tokio::sync::mpsc::channel(1);
        let join = pb::GroupJoin {
            group: group.to_owned(),
            topics: vec![topic.to_owned()],
            session_timeout_ms: 300_000,
            client_id: "idle".to_owned(),
            ..Default::default()
        };
        let first = pb::GroupSessionRequest { kind: Some(pb::group_session_request::Kind::Join(join)) };
        requests.send(first).await.expect("queue the join");
        let mut stream = pb::groups_client::GroupsClient::new(channel)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("open a group session")
            .into_inner();
        let answer = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the join answered in time")
            .expect("the join accepted")
            .expect("an answer to the join");
        let answers = tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
        Self { id: answer.member_id, _requests: requests, answers }
    }
}

impl Drop for IdleMember {
    fn drop(&mut self) {
        self.answers.abort();
    }
}

/// `prometheus` and `promtool` from the PATH.
struct Tools {
    prometheus: PathBuf,
    promtool: PathBuf,
}

impl Tools {
    /// Both, or `None` (skipped) outside CI; in CI (`CI=true`) their absence
    /// fails the test.
    fn find() -> Option<Self> {
        let on_path = |name: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        };
        match (on_path("prometheus"), on_path("promtool")) {
            (Some(prometheus), Some(promtool)) => Some(Self { prometheus, promtool }),
            _ => {
                let why = "`prometheus` and `promtool` are not on the PATH: install Debian's prometheus package \
                           (apt-get install -y prometheus; scripts/ensure-deps.sh does)";
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("skipped: {why}");
                None
            }
        }
    }

    /// `promtool ARGS`, which must succeed; its output.
    fn promtool(&self, args: &[&str]) -> String {
        let out = Command::new(&self.promtool).args(args).output().expect("run promtool");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
        text
    }
}

/// The loopback cluster, its nodes' metrics ports and data directories.
struct Nodes {
    ports: ClusterPorts,
    metrics: Vec<u16>,
    dir: PathBuf,
    running: Vec<Option<ServerProcess>>,
}

impl Nodes {
    fn metrics_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.metrics[id as usize - 1])
    }

    /// Starts node `id` (again: same data directory and ports).
    fn start(&self, id: u64) -> ServerProcess {
        let mut args = self.ports.server_args(id);
        args.extend(["--metrics-listen".to_owned(), self.metrics_addr(id)]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServerProcess::spawn_with(&args, &self.dir.join(format!("node-{id}")), &[])
    }
}

/// A `prometheus` child process, killed when dropped (its log printed if
/// the test failed).
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(tools: &Tools, config: &Path, dir: &Path) -> Self {
        let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("create the log");
        let child = Command::new(&tools.prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Self { child, addr, log };
        let deadline = Instant::now() + PATIENCE;
        while !matches!(common::http_get(&p.addr, "/-/ready"), Ok((200, _))) {
            assert!(p.child.try_wait().expect("try_wait").is_none(), "prometheus exited (see its log below)");
            assert!(Instant::now() < deadline, "prometheus not ready after {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("prometheus ready at {} (log: {})", p.addr, p.log.display());
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- prometheus log (last 40 lines) ---");
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("[prometheus] {line}");
            }
        }
    }
}

/// Polls `check` (every 250 ms) until it is true, at most `within`.
async fn poll<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------
// The shipped files.
// ---------------------------------------------------------------------------

/// `(alert, expr)` of every rule of an alerts.yml in the layout its header
/// describes: `- alert: NAME`, then `expr:` on one line or as a `|` block.
fn alert_rules(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut alert: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        i += 1;
        if let Some(name) = t.strip_prefix("- alert:") {
            assert!(alert.is_none(), "alerts.yml: alert {alert:?} has no expr");
            alert = Some(name.trim().to_owned());
        } else if let Some(rest) = t.strip_prefix("expr:") {
            let name = alert.take().unwrap_or_else(|| panic!("alerts.yml: an expr outside a rule: {line}"));
            let rest = rest.trim();
            let expr = if rest.starts_with('|') {
                let mut block = Vec::new();
                while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line)) {
                    block.push(lines[i].trim());
                    i += 1;
                }
                block.join(" ").trim().to_owned()
            } else {
                assert!(
                    !rest.is_empty() && !rest.starts_with(['>', '"', '\'']),
                    "alerts.yml: {name}'s expr must be unquoted on one line or a `|` block (see its header): {line}"
                );
                rest.to_owned()
            };
            rules.push((name, expr));
        }
    }
    assert!(alert.is_none(), "alerts.yml: alert {alert:?} has no expr");
    assert!(!rules.is_empty(), "alerts.yml has no rules");
    rules
}

/// alerts.yml with every `for:` duration shortened to [`TEST_FOR`].
fn shorten_for(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("for:") {
            out.push_str(&line[..line.len() - t.len()]);
            out.push_str("for: ");
            out.push_str(TEST_FOR);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Every panel target's `expr` of a Grafana dashboard (rows' panels
/// included), with Grafana's variables replaced by [`VARIABLES`].
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            if panel["type"] != "row" {
                assert_eq!(
                    panel["datasource"]["uid"], "${datasource}",
                    "panel {title:?} must use the datasource variable"
                );
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                let mut expr =
                    target["expr"].as_str().unwrap_or_else(|| panic!("{title:?}: a target without expr")).to_owned();
                for (var, value) in VARIABLES {
                    expr = expr.replace(var, value);
                }
                assert!(!expr.contains('$'), "{title:?}: a variable this test does not know in {expr}");
                out.push(expr);
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(!out.is_empty(), "the dashboard has no queries");
    out
}

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers, ranges and grouping lists that are neither
/// functions, keywords nor numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Keywords, and the aggregation operators (followed by `by (...)` or
    // `without (...)` rather than `(`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'{' || c == b'[' {
            let close = if c == b'{' { b'}' } else { b']' };
            while i < b.len() && b[i] != close {
                if b[i] == b'"' {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let call = b.get(j) == Some(&b'(');
            if GROUPING.contains(&word.to_ascii_lowercase().as_str()) {
                if call {
                    // A label list: skip to its `)`.
                    while j < b.len() && b[j] != b')' {
                        j += 1;
                    }
                    i = j + 1;
                }
            } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric families a node's `/metrics` declares (`# TYPE NAME ...`).
fn declared_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `metric` is a name Prometheus has samples of, or a series name of a
/// family a node declares (`strata_x_total` of counter `strata_x`).
fn known(metric: &str, names: &BTreeSet<String>, declared: &BTreeSet<String>) -> bool {
    names.contains(metric)
        || declared.contains(metric)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| metric.strip_suffix(suffix).is_some_and(|family| declared.contains(family)))
}

// ---------------------------------------------------------------------------
// Prometheus's HTTP API, over a minimal HTTP/1.1 client.
// ---------------------------------------------------------------------------

/// [`http_get`] off the async runtime; the body of a 200.
async fn get_ok(addr: &str, path: &str) -> String {
    let (a, p) = (addr.to_owned(), path.to_owned());
    let got = tokio::task::spawn_blocking(move || common::http_get(&a, &p)).await.expect("join");
    match got {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET {path} at {addr}: {status}: {body}"),
        Err(e) => panic!("GET {path} at {addr}: {e}"),
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `data` of a successful API answer.
async fn api(prom: &str, path: &str) -> Value {
    let body = get_ok(prom, path).await;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    assert_eq!(v["status"], "success", "{path}: {body}");
    v["data"].clone()
}

/// An instant query's result (vector series, or a scalar as one).
async fn query(prom: &str, expr: &str) -> Vec<Value> {
    let data = api(prom, &format!("/api/v1/query?query={}", encode(expr))).await;
    match &data["result"] {
        Value::Array(series) if data["resultType"] != "scalar" && data["resultType"] != "string" => series.clone(),
        other => vec![serde_json::json!({ "metric": {}, "value": other })],
    }
}

/// The value of a query of one series, if it has exactly one.
async fn scalar(prom: &str, expr: &str) -> Option<f64> {
    match query(prom, expr).await.as_slice() {
        [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
        _ => None,
    }
}

/// `strata_consumer_group_lag` of `group` summed per exporting node
/// (instance).
async fn group_lag_by_instance(prom: &str, group: &str) -> BTreeMap<String, f64> {
    let expr = format!("sum by (instance) (strata_consumer_group_lag{{group=\"{group}\"}})");
    query(prom, &expr)
        .await
        .iter()
        .filter_map(|s| {
            let instance = s["metric"]["instance"].as_str()?.to_owned();
            Some((instance, s["value"][1].as_str()?.parse().ok()?))
        })
        .collect()
}

/// Polls Prometheus (every 250 ms, at most `within`) until each group's
/// `strata_consumer_group_lag` is exported by exactly one node, not
/// `except`, and sums to the group's expected lag; prints what Prometheus
/// answers as it changes. Each group's lag by exporting node.
async fn until_lags(
    prom: &str,
    lags: &[(&str, u64)],
    except: Option<&str>,
    within: Duration,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let started = Instant::now();
    let mut seen: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    loop {
        let mut all = true;
        for &(group, expected) in lags {
            let by_node = group_lag_by_instance(prom, group).await;
            if seen.get(group) != Some(&by_node) {
                eprintln!("  {:.1?}: {group}'s lag by node {by_node:?} (expected {expected})", started.elapsed());
            }
            all &= matches!(by_node.iter().next(), Some((node, v)) if by_node.len() == 1
                && Some(node.as_str()) != except && *v == expected as f64);
            seen.insert(group.to_owned(), by_node);
        }
        if all {
            return seen;
        }
        assert!(
            started.elapsed() < within,
            "after {within:?}, Prometheus has the groups' lag by node {seen:?}; expected {lags:?}, \
             each from one node other than {except:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every metric name Prometheus holds samples of.
async fn prometheus_names(prom: &str) -> BTreeSet<String> {
    let data = api(prom, "/api/v1/label/__name__/values").await;
    data.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

/// `(alertname, labels)` of the alerts firing now.
async fn firing(prom: &str) -> Vec<(String, Value)> {
    let data = api(prom, "/api/v1/alerts").await;
    data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| (a["labels"]["alertname"].as_str().unwrap_or_default().to_owned(), a["labels"].clone()))
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(names(r#"up{job="strata"} == 0"#), ["up"]);
    assert_eq!(
        names(
            "(max(strata_partitions) - sum(strata_partitions_leader) > 0) or (max(strata_partitions_leaderless) > 0)"
        ),
        ["strata_partitions", "strata_partitions_leader", "strata_partitions_leaderless"]
    );
    assert_eq!(
        names(r#"histogram_quantile(0.99, sum by (instance, le) (rate(x_bucket{a=~"b}c"}[5m]))) > 0.5"#),
        ["x_bucket"]
    );
    assert_eq!(names("predict_linear(strata_disk_free_bytes[1h], 6 * 3600) < 0"), ["strata_disk_free_bytes"]);
    assert_eq!(names("a / on (x) group_left (y) b offset 5m"), ["a", "b"]);
}

#[test]
fn alert_rules_are_read_line_by_line() {
    let text = concat!(
        "groups:\n",
        "  - name: g\n",
        "    rules:\n",
        "      - alert: A\n",
        "        expr: up == 0\n",
        "        for: 1m\n",
        "      - alert: B\n",
        "        expr: |\n",
        "          sum(x)\n",
        "            > 1\n",
        "        for: 5m\n",
        "        labels:\n",
        "          severity: warning\n",
    );
    assert_eq!(alert_rules(text), [("A".to_owned(), "up == 0".to_owned()), ("B".to_owned(), "sum(x) > 1".to_owned())]);
    let short = shorten_for(text);
    assert_eq!(short.matches(&format!("        for: {TEST_FOR}\n")).count(), 2, "{short}");
}
