//! `jepsen-like-tests`: runs a Strata cluster on separate hosts (Docker
//! containers, or network namespaces), drives it with concurrent clients while injecting faults,
//! records the history and checks it. Exits 0 when the history is valid,
//! 1 on any anomaly, 2 when the run itself could not be carried out, and 3
//! when it shows no anomaly but proves nothing (no acknowledged send, or no
//! fault that took effect though faults were asked for).
//!
//!   cargo run -p jepsen-like-tests --release -- --nodes 5 --time-limit 300 \
//!       --nemesis partition,kill,pause --workload log --seed 42
//!   cargo run -p jepsen-like-tests --release -- --check store/<run>/history.jsonl

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use jepsen_like_tests::checker::{self, Report, Verdict};
use jepsen_like_tests::cluster::Cluster;
use jepsen_like_tests::group::GroupWorkload;
use jepsen_like_tests::history::{self, Event, Kind, NEMESIS, Op, Recorder};
use jepsen_like_tests::nemesis::{Family, GRACEFUL_STOP, Nemesis, Schedule};
use jepsen_like_tests::net::Network;
use jepsen_like_tests::workload::{Liveness, LogWorkload};
use rand::SeedableRng;
use serde::Serialize;
use strata_client::Client;
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(about = "Fault-injection suite: a real Strata cluster, concurrent clients, faults, a checked history")]
struct Args {
    /// Nodes in the cluster, each on a host of its own.
    #[arg(long, default_value_t = 5)]
    nodes: u32,
    /// Hosts: docker (containers from the project's own Debian image) or
    /// netns (network namespaces). Default: docker when an engine answers.
    #[arg(long)]
    hosts: Option<jepsen_like_tests::net::Kind>,
    /// Seconds of load and faults (the final heal, drain and checks come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Fault families, comma separated: partition, kill, pause; or none.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// Workload: log (producers and offset readers), or group (the same,
    /// plus members of a consumer group that join, commit, leave and crash).
    #[arg(long, default_value = "log")]
    workload: String,
    /// Consumer-group members (the group workload).
    #[arg(long, default_value_t = 4)]
    members: u32,
    /// Seed of every random choice (default: from the clock; always printed).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Concurrent producer processes.
    #[arg(long, default_value_t = 10)]
    producers: u32,
    /// Concurrent reader processes (each polls its share of the partitions).
    #[arg(long, default_value_t = 4)]
    readers: u32,
    /// Quiet seconds before each fault: MIN-MAX.
    #[arg(long, default_value = "5-10")]
    quiet: String,
    /// Seconds each fault is held: MIN-MAX.
    #[arg(long, default_value = "3-8")]
    hold: String,
    /// Where runs are stored (store/<run>/{history.jsonl,results.json,n*.log}).
    #[arg(long, default_value = "store")]
    store: PathBuf,
    /// The strata binary (default: `strata` beside this program).
    #[arg(long)]
    strata: Option<PathBuf>,
    /// Only check an existing history.jsonl and print its results.
    #[arg(long, value_name = "HISTORY")]
    check: Option<PathBuf>,
}

fn range(s: &str) -> anyhow::Result<(Duration, Duration)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (f64, f64) = (a.trim().parse()?, b.trim().parse()?);
    if a < 0.0 || b < a {
        bail!("'{s}' is not a range MIN-MAX of seconds");
    }
    Ok((Duration::from_secs_f64(a), Duration::from_secs_f64(b)))
}

#[derive(Debug, Serialize)]
struct Results {
    seed: u64,
    nodes: u32,
    time_limit_s: u64,
    nemesis: String,
    workload: String,
    /// The verdict is [`Verdict::Valid`].
    valid: bool,
    verdict: Verdict,
    /// Produce requests that succeeded while only a minority was faulted.
    minority_fault_send_success: Option<f64>,
    /// Milliseconds from each heal to the first acknowledged write after it.
    heal_to_first_write_ms: Vec<u64>,
    /// Produce outcomes and latency during rolling restarts against before
    /// the first fault (the rolling-restart nemesis).
    rolling_restart: Option<RollingRestartFigures>,
    report: Report,
}

/// Produce requests invoked in a span of the run.
#[derive(Debug, Default, Serialize, Clone, Copy)]
struct SendFigures {
    sends: u64,
    ok: u64,
    /// Refused: definitely not written.
    fail: u64,
    /// Unknown outcome (e.g. a deadline).
    info: u64,
    /// ok / sends.
    success_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize, Clone, Copy)]
struct RollingRestartFigures {
    restarts: u64,
    /// Seconds from each rolling restart's start to its end, summed.
    duration_s: f64,
    before: SendFigures,
    during: SendFigures,
    /// Nodes stopped (SIGTERM) within the rolling restarts.
    stops: u64,
    /// Sends in flight at any moment from a node's SIGTERM to
    /// [`AROUND_STOP`] after it exited.
    around_stops: SendFigures,
}

/// How long after a node's exit sends still count as around its stop.
const AROUND_STOP: Duration = Duration::from_secs(2);

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(verdict) => verdict.exit_code(),
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<Verdict> {
    let families: Vec<Family> = match args.nemesis.as_str() {
        "none" | "" => Vec::new(),
        list => {
            list.split(',').map(|f| f.trim().parse::<Family>()).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?
        }
    };
    if let Some(path) = &args.check {
        let events = history::load(path)?;
        let report = checker::check(&events);
        let verdict = report.verdict(!families.is_empty());
        print_summary(&report, &verdict, None, &heal_to_first_write(&events), rolling_restart_figures(&events));
        return Ok(verdict);
    }
    if args.workload != "log" && args.workload != "group" {
        bail!("unknown workload '{}' (known: log, group)", args.workload);
    }
    if args.nodes < args.replication_factor || args.nodes == 0 {
        bail!("--nodes {} is fewer than --replication-factor {}", args.nodes, args.replication_factor);
    }
    let schedule = Schedule { quiet: range(&args.quiet)?, hold: range(&args.hold)? };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 1_000_000_007).unwrap_or(1)
    });
    eprintln!("seed {seed}");
    let strata = match &args.strata {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("strata"),
    };
    if !strata.exists() {
        bail!(
            "the strata binary is missing at {} (build it: cargo build --release -p strata, or pass --strata)",
            strata.display()
        );
    }
    // Containers mount it by absolute path.
    let strata = strata.canonicalize()?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir = args.store.join(format!("{started}-seed{seed}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    eprintln!("run stored in {}", dir.display());

    use jepsen_like_tests::net::Kind as Hosts;
    let kind = match args.hosts {
        Some(Hosts::Docker) => {
            jepsen_like_tests::image::ensure()?;
            Hosts::Docker
        }
        Some(Hosts::Netns) => Hosts::Netns,
        None if jepsen_like_tests::net::docker_available() => match jepsen_like_tests::image::ensure() {
            Ok(()) => Hosts::Docker,
            Err(e) => {
                eprintln!("warning: no container image ({e:#}); using network namespaces instead");
                Hosts::Netns
            }
        },
        None => Hosts::Netns,
    };
    let tag = (std::process::id() % 60_000) as u16;
    let network = Network::create(kind, args.nodes, tag)?;
    eprintln!("{} hosts ({kind:?}) on {}", args.nodes, network.subnet());
    let cluster = Cluster::start(&strata, &network.hosts, network.network_name(), &dir).await?;
    drive(&args, seed, families, schedule, &dir, network, cluster).await
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &Args,
    seed: u64,
    families: Vec<Family>,
    schedule: Schedule,
    dir: &Path,
    network: Network,
    cluster: Cluster,
) -> anyhow::Result<Verdict> {
    let addrs = cluster.addrs();
    let connect_options = cluster.connect_options()?;
    let node_addrs: Vec<(u32, String)> = cluster.node_ids().into_iter().map(|n| (n, cluster.addr(n))).collect();
    let cluster = Arc::new(Mutex::new(cluster));
    let network = Arc::new(Mutex::new(network));
    let result = async {
        cluster.lock().await.wait_ready(Duration::from_secs(60)).await?;
        let client =
            Client::connect_with(&addrs.join(","), connect_options).await?.with_timeout(Duration::from_secs(30));
        let topic = "jepsen".to_owned();
        let config = strata_client::TopicConfig::default();
        client
            .create_topic_replicated(&topic, args.partitions, Some(args.replication_factor), config)
            .await
            .context("cannot create the topic")?;
        eprintln!("topic {topic}: {} partitions, replication factor {}", args.partitions, args.replication_factor);

        let recorder = Arc::new(Recorder::create(&dir.join("history.jsonl"))?);
        let workload = LogWorkload {
            topic: topic.clone(),
            partitions: args.partitions,
            producers: args.producers,
            readers: args.readers,
            seed,
        };
        let group = (args.workload == "group").then(|| GroupWorkload {
            topic: topic.clone(),
            group: "jepsen-group".to_owned(),
            members: args.members,
            seed,
        });
        let minority_fault = Arc::new(AtomicBool::new(false));
        let liveness = Arc::new(Liveness::default());
        let until = Instant::now() + Duration::from_secs(args.time_limit);
        let nemesis = (!families.is_empty()).then(|| {
            let leader_client = client.clone();
            let leader_topic = topic.clone();
            let nemesis = Nemesis {
                cluster: Arc::clone(&cluster),
                network: Arc::clone(&network),
                recorder: Arc::clone(&recorder),
                families: families.clone(),
                schedule,
                rng: rand::rngs::StdRng::seed_from_u64(seed),
                leader_of_partition0: Arc::new(move || {
                    let (c, t) = (leader_client.clone(), leader_topic.clone());
                    Box::pin(async move {
                        let meta = tokio::time::timeout(Duration::from_secs(2), c.metadata(&[&t])).await.ok()?.ok()?;
                        let leader = meta.topics.first()?.partitions.first()?.leader;
                        (leader != 0).then_some(leader as u32)
                    })
                }),
                minority_fault: Arc::clone(&minority_fault),
            };
            tokio::spawn(nemesis.run(until))
        });
        let progress = {
            let recorder = Arc::clone(&recorder);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    eprintln!("[run] {:>6.1}s {} events", recorder.elapsed().as_secs_f64(), recorder.len());
                }
            })
        };
        let log_load = workload.run(&client, &recorder, until, &minority_fault, &liveness);
        let group_load = async {
            match &group {
                Some(g) => g.run(&client, &recorder, until).await,
                None => Ok(()),
            }
        };
        let (log_load, group_load) = tokio::join!(log_load, group_load);
        let load = log_load.and(group_load);
        if load.is_err()
            && let Some(n) = &nemesis
        {
            // Or it goes on restarting nodes while they are being stopped.
            n.abort();
        }
        load?;
        let faults = match nemesis {
            Some(n) => n.await.context("the nemesis panicked")??,
            None => Default::default(),
        };
        progress.abort();
        eprintln!(
            "load done ({} faults took effect of {} attempted); healing everything, then draining",
            faults.effective, faults.attempted
        );

        network.lock().await.heal()?;
        {
            let mut c = cluster.lock().await;
            c.revive_all()?;
            c.check_alive()?;
        }
        let heal = Op::Nemesis { fault: "final-heal".into(), nodes: Vec::new(), detail: String::new() };
        recorder.record(NEMESIS, Kind::Ok, heal, None);
        cluster.lock().await.wait_ready(Duration::from_secs(120)).await?;
        let acked = recorder.finish()?;
        workload.drain(&client, &recorder, &acked, Duration::from_secs(120)).await?;
        if let Some(g) = &group {
            g.final_read(&client, &recorder, Duration::from_secs(60)).await?;
        }
        workload.digests(&client, &node_addrs, &recorder, Duration::from_secs(60)).await?;
        cluster.lock().await.check_alive()?;

        let events = recorder.finish()?;
        let report = checker::check(&events);
        let verdict = report.verdict(!families.is_empty());
        let sends = liveness.minority_sends.load(Ordering::Relaxed);
        let results = Results {
            seed,
            nodes: args.nodes,
            time_limit_s: args.time_limit,
            nemesis: args.nemesis.clone(),
            workload: args.workload.clone(),
            valid: verdict == Verdict::Valid,
            verdict,
            minority_fault_send_success: (sends > 0)
                .then(|| liveness.minority_sends_ok.load(Ordering::Relaxed) as f64 / sends as f64),
            heal_to_first_write_ms: heal_to_first_write(&events),
            rolling_restart: rolling_restart_figures(&events),
            report,
        };
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
        print_summary(
            &results.report,
            &results.verdict,
            results.minority_fault_send_success,
            &results.heal_to_first_write_ms,
            results.rolling_restart,
        );
        eprintln!("history, results and node logs in {}", dir.display());
        anyhow::Ok(results.verdict)
    }
    .await;
    cluster.lock().await.stop().await;
    drop(network);
    result
}

/// For every heal, the time to the first write invoked after it that was
/// acknowledged.
fn heal_to_first_write(events: &[Event]) -> Vec<u64> {
    // Each acknowledged send with the time it was invoked.
    let mut invoked = std::collections::HashMap::new();
    let mut acked = Vec::new();
    for e in events.iter().filter(|e| matches!(e.op, Op::Send { .. })) {
        match e.kind {
            Kind::Invoke => {
                invoked.insert(e.process, e.time_ns);
            }
            Kind::Ok => acked.extend(invoked.get(&e.process).map(|&t| (t, e.time_ns))),
            _ => {}
        }
    }
    events
        .iter()
        .filter(|e| {
            e.process == NEMESIS
                && e.kind == Kind::Ok
                && matches!(&e.op, Op::Nemesis { fault, .. } if fault.ends_with("heal"))
        })
        .filter_map(|h| {
            acked
                .iter()
                .filter(|(t, _)| *t > h.time_ns)
                .map(|(_, done)| done)
                .min()
                .map(|done| (done - h.time_ns) / 1_000_000)
        })
        .collect()
}

/// Sends that overlapped a rolling restart (in flight at any moment from
/// its invoke to its outcome, so those slowed by it count too) against
/// those invoked and done before the first fault, after the first
/// [`WARM_UP`] of the run (connections, first elections); `None` without a
/// rolling restart.
fn rolling_restart_figures(events: &[Event]) -> Option<RollingRestartFigures> {
    let mut windows = Vec::new();
    let mut stops = Vec::new();
    let (mut open, mut stopping) = (None, None);
    let mut first_fault = None;
    let around = AROUND_STOP.as_nanos() as u64;
    for e in events.iter().filter(|e| e.process == NEMESIS) {
        let Op::Nemesis { fault, .. } = &e.op else { continue };
        if e.kind == Kind::Invoke {
            first_fault.get_or_insert(e.time_ns);
        }
        match (fault.as_str(), e.kind) {
            ("rolling-restart", Kind::Invoke) => open = Some(e.time_ns),
            ("rolling-restart", _) => windows.extend(open.take().map(|start| (start, e.time_ns))),
            (GRACEFUL_STOP, Kind::Invoke) => stopping = Some(e.time_ns),
            (GRACEFUL_STOP, _) => stops.extend(stopping.take().map(|start| (start, e.time_ns + around))),
            _ => {}
        }
    }
    if windows.is_empty() {
        return None;
    }
    let first_fault = first_fault.unwrap_or(u64::MAX);
    // Each send's invoke time, outcome and latency.
    let mut invoked = std::collections::HashMap::new();
    let mut before = Vec::new();
    let mut during = Vec::new();
    let mut near = Vec::new();
    for e in events.iter().filter(|e| matches!(e.op, Op::Send { .. })) {
        if e.kind == Kind::Invoke {
            invoked.insert(e.process, e.time_ns);
            continue;
        }
        let Some(start) = invoked.remove(&e.process) else { continue };
        let outcome = (e.kind, (e.time_ns - start) as f64 / 1e6);
        if stops.iter().any(|(a, b)| start <= *b && e.time_ns >= *a) {
            near.push(outcome);
        }
        if windows.iter().any(|(a, b)| start <= *b && e.time_ns >= *a) {
            during.push(outcome);
        } else if start >= WARM_UP.as_nanos() as u64 && e.time_ns < first_fault {
            before.push(outcome);
        }
    }
    Some(RollingRestartFigures {
        restarts: windows.len() as u64,
        duration_s: windows.iter().map(|(a, b)| (b - a) as f64 / 1e9).sum(),
        before: send_figures(&before),
        during: send_figures(&during),
        stops: stops.len() as u64,
        around_stops: send_figures(&near),
    })
}

/// The start of a run left out of the "before" figures.
const WARM_UP: Duration = Duration::from_secs(5);

fn send_figures(outcomes: &[(Kind, f64)]) -> SendFigures {
    let count = |k: Kind| outcomes.iter().filter(|(kind, _)| *kind == k).count() as u64;
    let mut ok_ms: Vec<f64> = outcomes.iter().filter(|(k, _)| *k == Kind::Ok).map(|(_, ms)| *ms).collect();
    ok_ms.sort_by(f64::total_cmp);
    let at = |q: f64| if ok_ms.is_empty() { 0.0 } else { ok_ms[((ok_ms.len() - 1) as f64 * q).round() as usize] };
    let sends = outcomes.len() as u64;
    SendFigures {
        sends,
        ok: count(Kind::Ok),
        fail: count(Kind::Fail),
        info: count(Kind::Info),
        success_rate: if sends == 0 { 0.0 } else { count(Kind::Ok) as f64 / sends as f64 },
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

fn print_summary(
    report: &Report,
    verdict: &Verdict,
    minority_success: Option<f64>,
    heal_ms: &[u64],
    rolling: Option<RollingRestartFigures>,
) {
    println!();
    println!("| ops ok | ops fail | ops info | acknowledged sends | faults took effect / attempted |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} / {} |",
        report.ops_ok, report.ops_fail, report.ops_info, report.sends_acked, report.faults, report.faults_attempted
    );
    println!();
    println!("| anomaly | count |");
    println!("|---|---|");
    for (name, count) in &report.counts {
        println!("| {name} | {count} |");
    }
    for a in report.anomalies.iter().take(20) {
        println!("  {} {}: {}", a.kind.name(), a.partition.map(|p| format!("p{p}")).unwrap_or_default(), a.detail);
    }
    if let Some(s) = minority_success {
        println!("\nproduce success while only a minority was faulted: {:.2}%", s * 100.0);
    }
    if !heal_ms.is_empty() {
        let mut sorted = heal_ms.to_vec();
        sorted.sort_unstable();
        println!(
            "heal to first acknowledged write: median {} ms, max {} ms ({} heals)",
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            sorted.len()
        );
    }
    if let Some(r) = rolling {
        println!("\nrolling restarts: {} taking {:.1} s in all", r.restarts, r.duration_s);
        println!("| sends | invoked | ok | fail | info | success | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|---|---|---|");
        let near = format!("within {} s of one of {} node stops", AROUND_STOP.as_secs(), r.stops);
        for (name, f) in [
            ("before the first fault".to_owned(), r.before),
            ("during rolling restarts".to_owned(), r.during),
            (near, r.around_stops),
        ] {
            println!(
                "| {name} | {} | {} | {} | {} | {:.3}% | {:.1} | {:.1} | {:.1} |",
                f.sends,
                f.ok,
                f.fail,
                f.info,
                f.success_rate * 100.0,
                f.p50_ms,
                f.p99_ms,
                f.max_ms
            );
        }
    }
    println!("\n{verdict}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time_ms: u64, process: i64, kind: Kind, op: Op) -> Event {
        Event { index: 0, time_ns: time_ms * 1_000_000, process, kind, op, error: None }
    }

    fn send() -> Op {
        Op::Send { partition: 0, value: 0, offset: None }
    }

    fn stop() -> Op {
        Op::Nemesis { fault: GRACEFUL_STOP.into(), nodes: vec![1], detail: String::new() }
    }

    fn restart(kind: Kind) -> Event {
        let op = Op::Nemesis { fault: "rolling-restart".into(), nodes: vec![1, 2, 3], detail: String::new() };
        event(if kind == Kind::Invoke { 10_000 } else { 20_000 }, NEMESIS, kind, op)
    }

    #[test]
    fn rolling_restart_figures_split_sends_by_when_they_were_invoked() {
        let events = vec![
            // In the warm-up: in neither span.
            event(1_000, 1, Kind::Invoke, send()),
            event(1_900, 1, Kind::Ok, send()),
            event(6_000, 1, Kind::Invoke, send()),
            event(6_010, 1, Kind::Ok, send()),
            event(7_000, 1, Kind::Invoke, send()),
            event(7_020, 1, Kind::Ok, send()),
            // Invoked before the restart, slowed by it: during.
            event(9_990, 3, Kind::Invoke, send()),
            restart(Kind::Invoke),
            event(10_100, NEMESIS, Kind::Invoke, stop()),
            event(10_400, 3, Kind::Ok, send()),
            event(10_500, NEMESIS, Kind::Ok, stop()),
            event(11_000, 1, Kind::Invoke, send()),
            event(11_500, 1, Kind::Ok, send()),
            event(12_000, 2, Kind::Invoke, send()),
            event(12_001, 2, Kind::Fail, send()),
            restart(Kind::Ok),
            // After the window: in neither span.
            event(30_000, 1, Kind::Invoke, send()),
            event(30_001, 1, Kind::Ok, send()),
        ];
        let f = rolling_restart_figures(&events).expect("a rolling restart");
        assert_eq!(f.restarts, 1);
        assert!((f.duration_s - 10.0).abs() < 1e-9);
        assert_eq!((f.before.sends, f.before.ok, f.before.fail), (2, 2, 0));
        assert!((f.before.max_ms - 20.0).abs() < 1e-9 && (f.before.p50_ms - 20.0).abs() < 1e-9);
        assert_eq!((f.during.sends, f.during.ok, f.during.fail), (3, 2, 1));
        assert!((f.during.p99_ms - 500.0).abs() < 1e-9 && (f.during.max_ms - 500.0).abs() < 1e-9);
        // 10.1 s to 12.5 s (2 s after the exit): the sends of processes 3,
        // 1 and 2.
        assert_eq!((f.stops, f.around_stops.sends, f.around_stops.fail), (1, 3, 1));
        assert!(rolling_restart_figures(&events[..6]).is_none(), "no rolling restart, no figures");
    }
}
