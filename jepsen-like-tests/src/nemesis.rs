//! Faults on a schedule: wait, inject one fault, hold it, heal, repeat.
//! Every fault goes into the history (process [`NEMESIS`]): `invoke` when
//! it is attempted, then `ok` only once it was seen to take effect (the
//! killed process died of SIGKILL, the cut links' blackhole routes are in
//! place on both hosts, the paused process is stopped or its container
//! frozen), else `fail`; then the heal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::history::{Kind, NEMESIS, Op, Recorder};
use crate::net::Network;

/// The history's name of one node's stop within a rolling restart.
pub const GRACEFUL_STOP: &str = "graceful-stop";

/// How long a node may take to stop gracefully (its handover is 30 s at
/// most, finishing requests 10 s).
const STOP_WITHIN: Duration = Duration::from_secs(60);
/// How long the cluster may take to be healthy again after a restart.
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);

/// Fault families, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Partition,
    Kill,
    Pause,
    /// Every node in turn stopped with SIGTERM (a graceful stop: it hands
    /// its leaderships over) and started again, the next one only once
    /// `strata cluster wait-healthy` says every partition is in sync.
    RollingRestart,
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "partition" => Ok(Self::Partition),
            "kill" => Ok(Self::Kill),
            "pause" => Ok(Self::Pause),
            "rolling-restart" => Ok(Self::RollingRestart),
            other => Err(format!("unknown nemesis '{other}' (known: partition, kill, pause, rolling-restart)")),
        }
    }
}

/// One fault, ready to inject.
#[derive(Debug, Clone)]
enum Fault {
    /// Groups that cannot talk to each other.
    Partition {
        name: &'static str,
        groups: Vec<Vec<u32>>,
    },
    /// Each node sees only its neighbours (majorities ring).
    Ring {
        sees: Vec<(u32, Vec<u32>)>,
    },
    /// `all`: every node of the cluster.
    Kill {
        nodes: Vec<u32>,
        all: bool,
    },
    Pause {
        nodes: Vec<u32>,
    },
    /// In this order.
    RollingRestart {
        nodes: Vec<u32>,
    },
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Self::Partition { name, .. } => name,
            Self::Ring { .. } => "partition-majorities-ring",
            Self::Kill { nodes, .. } if nodes.len() == 1 => "kill-one",
            Self::Kill { all: true, .. } => "kill-all",
            Self::Kill { .. } => "kill-minority",
            Self::Pause { nodes } if nodes.len() == 1 => "pause-one",
            Self::Pause { .. } => "pause-minority",
            Self::RollingRestart { .. } => "rolling-restart",
        }
    }

    fn nodes(&self) -> Vec<u32> {
        match self {
            Self::Partition { groups, .. } => groups.first().cloned().unwrap_or_default(),
            Self::Ring { sees } => sees.iter().map(|(n, _)| *n).collect(),
            Self::Kill { nodes, .. } | Self::Pause { nodes } | Self::RollingRestart { nodes } => nodes.clone(),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Partition { groups, .. } => format!("groups {groups:?}"),
            Self::Ring { sees } => format!("each node sees {sees:?}"),
            Self::Kill { nodes, .. } => format!("kill -9 {nodes:?}, restart at heal"),
            Self::Pause { nodes } => format!("pause {nodes:?} (SIGSTOP, or a container frozen), resumed at heal"),
            Self::RollingRestart { nodes } => {
                format!("SIGTERM and restart {nodes:?} one at a time, each once the cluster is healthy")
            }
        }
    }
}

/// Timing of the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Quiet time before each fault, drawn from this range.
    pub quiet: (Duration, Duration),
    /// How long each fault is held, drawn from this range.
    pub hold: (Duration, Duration),
}

/// What the nemesis did, for the summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct NemesisStats {
    /// Faults attempted.
    pub attempted: u64,
    /// Faults seen to take effect.
    pub effective: u64,
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub network: Arc<Mutex<Network>>,
    pub recorder: Arc<Recorder>,
    pub families: Vec<Family>,
    pub schedule: Schedule,
    pub rng: StdRng,
    /// Finds the current leader of partition 0 (for "isolate the leader").
    pub leader_of_partition0: Arc<dyn Fn() -> BoxFuture<Option<u32>> + Send + Sync>,
    /// Set while a fault is on a minority only (for the liveness figure).
    pub minority_fault: Arc<std::sync::atomic::AtomicBool>,
}

/// A boxed future, to keep the leader lookup object-safe.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

fn draw(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo { lo } else { lo + (hi - lo).mul_f64(rng.random::<f64>()) }
}

impl Nemesis {
    /// Runs faults until `until`, then heals everything.
    pub async fn run(mut self, until: Instant) -> anyhow::Result<NemesisStats> {
        let mut stats = NemesisStats::default();
        loop {
            let quiet = draw(&mut self.rng, self.schedule.quiet);
            if Instant::now() + quiet >= until {
                break;
            }
            tokio::time::sleep(quiet).await;
            let fault = self.pick().await;
            let hold = draw(&mut self.rng, self.schedule.hold).min(until.saturating_duration_since(Instant::now()));
            let op = Op::Nemesis { fault: fault.name().into(), nodes: fault.nodes(), detail: fault.detail() };
            self.recorder.record(NEMESIS, Kind::Invoke, op.clone(), None);
            let minority = self.is_minority(&fault).await;
            stats.attempted += 1;
            let took = match self.inject(&fault).await {
                Ok(evidence) => {
                    stats.effective += 1;
                    let done =
                        Op::Nemesis { fault: fault.name().into(), nodes: fault.nodes(), detail: evidence.clone() };
                    self.recorder.record(NEMESIS, Kind::Ok, done, None);
                    evidence
                }
                Err(e) => {
                    self.recorder.record(NEMESIS, Kind::Fail, op.clone(), Some(format!("{e:#}")));
                    format!("DID NOT TAKE EFFECT: {e:#}")
                }
            };
            eprintln!(
                "[nemesis] {:>6.1}s {} {}: {took}",
                self.recorder.elapsed().as_secs_f64(),
                fault.name(),
                fault.detail()
            );
            self.minority_fault.store(minority, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(hold).await;
            self.minority_fault.store(false, std::sync::atomic::Ordering::Relaxed);
            self.heal(&fault).await?;
            self.recorder.record(
                NEMESIS,
                Kind::Ok,
                Op::Nemesis { fault: "heal".into(), nodes: fault.nodes(), detail: String::new() },
                None,
            );
            eprintln!("[nemesis] {:>6.1}s healed", self.recorder.elapsed().as_secs_f64());
        }
        Ok(stats)
    }

    async fn is_minority(&self, fault: &Fault) -> bool {
        let n = self.cluster.lock().await.node_ids().len();
        match fault {
            Fault::Kill { nodes, .. } | Fault::Pause { nodes } => nodes.len() * 2 < n,
            // Over by the time the flag would be set (it is set for the
            // hold, after the injection): the figures of a rolling restart
            // come from its own window in the history.
            Fault::RollingRestart { .. } => false,
            // A node isolated, or the smaller half: the rest keep a majority.
            Fault::Partition { groups, .. } => groups.iter().any(|g| g.len() * 2 > n),
            Fault::Ring { .. } => false,
        }
    }

    async fn pick(&mut self) -> Fault {
        let mut nodes = self.cluster.lock().await.node_ids();
        let n = nodes.len();
        let family = *self.families.choose(&mut self.rng).unwrap_or(&Family::Kill);
        nodes.shuffle(&mut self.rng);
        let minority = (n - 1) / 2;
        match family {
            Family::Partition => match self.rng.random_range(0..4) {
                0 => Fault::Partition { name: "partition-one", groups: vec![vec![nodes[0]], nodes[1..].to_vec()] },
                1 => {
                    let (a, b) = nodes.split_at(minority.max(1));
                    Fault::Partition { name: "partition-halves", groups: vec![a.to_vec(), b.to_vec()] }
                }
                2 if n >= 5 => {
                    let mut ring = nodes.clone();
                    ring.sort_unstable();
                    let sees = (0..n).map(|i| (ring[i], vec![ring[(i + n - 1) % n], ring[(i + 1) % n]])).collect();
                    Fault::Ring { sees }
                }
                _ => {
                    let leader = (self.leader_of_partition0)().await.unwrap_or(nodes[0]);
                    let rest = nodes.iter().copied().filter(|&x| x != leader).collect();
                    Fault::Partition { name: "partition-leader", groups: vec![vec![leader], rest] }
                }
            },
            Family::Kill => match self.rng.random_range(0..4) {
                0 | 1 => Fault::Kill { nodes: vec![nodes[0]], all: n == 1 },
                2 => Fault::Kill { nodes: nodes[..minority.max(1)].to_vec(), all: false },
                _ => Fault::Kill { nodes: nodes.clone(), all: true },
            },
            Family::RollingRestart => {
                nodes.sort_unstable();
                Fault::RollingRestart { nodes }
            }
            Family::Pause => match self.rng.random_range(0..3) {
                0 | 1 => Fault::Pause { nodes: vec![nodes[0]] },
                _ => Fault::Pause { nodes: nodes[..minority.max(1)].to_vec() },
            },
        }
    }

    /// Injects the fault and checks that it took effect; returns how it
    /// was seen to (an error: it did not, or not on every node).
    async fn inject(&self, fault: &Fault) -> anyhow::Result<String> {
        match fault {
            Fault::Partition { groups, .. } => {
                let mut network = self.network.lock().await;
                network.partition(groups)?;
                network.verify_cuts()
            }
            Fault::Ring { sees } => {
                let mut network = self.network.lock().await;
                network.restrict(sees)?;
                network.verify_cuts()
            }
            Fault::Kill { nodes, .. } => {
                let mut cluster = self.cluster.lock().await;
                let mut seen = Vec::new();
                for &n in nodes {
                    seen.push(cluster.kill(n).await?);
                }
                Ok(seen.join("; "))
            }
            Fault::Pause { nodes } => {
                let mut cluster = self.cluster.lock().await;
                let mut seen = Vec::new();
                for &n in nodes {
                    seen.push(cluster.pause(n)?);
                }
                Ok(seen.join("; "))
            }
            Fault::RollingRestart { nodes } => self.rolling_restart(nodes).await,
        }
    }

    /// Stops each node with SIGTERM and starts it again, the first once the
    /// cluster is healthy and each next one once it is healthy again (as
    /// `strata cluster rolling-restart` does); records how long it took.
    async fn rolling_restart(&self, nodes: &[u32]) -> anyhow::Result<String> {
        let started = Instant::now();
        let mut seen = Vec::new();
        self.wait_healthy().await?;
        for &n in nodes {
            // Each stop is in the history too: the figures look at the
            // sends around it.
            let op = |detail: String| Op::Nemesis { fault: GRACEFUL_STOP.into(), nodes: vec![n], detail };
            self.recorder.record(NEMESIS, Kind::Invoke, op(String::new()), None);
            let stopped = {
                let mut cluster = self.cluster.lock().await;
                let stopped = match cluster.terminate(n, STOP_WITHIN).await {
                    Ok(stopped) => stopped,
                    Err(e) => {
                        self.recorder.record(NEMESIS, Kind::Fail, op(String::new()), Some(format!("{e:#}")));
                        return Err(e);
                    }
                };
                self.recorder.record(NEMESIS, Kind::Ok, op(stopped.clone()), None);
                // `docker start` blocks: the worker's other tasks move on.
                tokio::task::block_in_place(|| cluster.restart(n))?;
                stopped
            };
            let healthy = self.wait_healthy().await?;
            eprintln!("[nemesis] {stopped}; restarted, healthy again after {healthy:.1} s");
            seen.push(format!("{stopped}, healthy again {healthy:.1} s after its restart"));
        }
        seen.push(format!("rolling restart took {:.1} s", started.elapsed().as_secs_f64()));
        Ok(seen.join("; "))
    }

    /// `strata cluster wait-healthy`; the seconds it took.
    async fn wait_healthy(&self) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut cli = self.cluster.lock().await.cli();
        let out =
            cli.args(["cluster", "wait-healthy", "--wait", &format!("{}s", HEALTHY_WITHIN.as_secs())]).output().await?;
        if !out.status.success() {
            bail!(
                "strata cluster wait-healthy failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed().as_secs_f64())
    }

    async fn heal(&self, fault: &Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Partition { .. } | Fault::Ring { .. } => self.network.lock().await.heal(),
            Fault::Kill { .. } | Fault::Pause { .. } | Fault::RollingRestart { .. } => {
                self.cluster.lock().await.revive_all()
            }
        }
    }
}
