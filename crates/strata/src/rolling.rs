//! `strata cluster wait-healthy` and `strata cluster rolling-restart`:
//! restart a cluster one node at a time without losing availability.
//!
//! Healthy means: every configured member has registered and answers, every
//! partition has a leader, and every replica of every partition is in sync
//! with it and has caught up (Kafka's "no under-replicated partitions"). A
//! rolling restart waits for that before each node and after it, so at most
//! one replica of any partition is ever down; each node hands its
//! leaderships over when it is stopped (`handover_timeout_ms`), so
//! producers see no error. The controller's leader goes last.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use strata_client::Client;

use crate::ClientOpts;
use crate::cli::connect;
use crate::cluster::ClusterView;

/// How often the cluster is looked at while waiting.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often waiting prints what it waits for.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// The least time one look at the cluster gets, even past the deadline.
const MIN_LOOK: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct RollingRestartArgs {
    /// The command that restarts one node, run with `sh -c`. It must return
    /// once the node has been restarted (as `systemctl restart` does with
    /// strata.service, a Type=notify unit). {node} is replaced by the node's
    /// id, {addr} by its client address (HOST:PORT) and {host} by its host;
    /// the environment has STRATA_NODE_ID, STRATA_NODE_ADDR and
    /// STRATA_NODE_HOST too (prefer them, quoted, to the placeholders). E.g.
    /// --exec 'ssh "$STRATA_NODE_HOST" sudo systemctl restart strata'.
    #[arg(long)]
    exec: String,
    /// Only these nodes, in this order (repeat or comma-separate; default:
    /// every node by id, the controller's leader last).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<u64>,
    /// How long to wait for the cluster to be healthy, before the first
    /// node and after each restart, e.g. 10m.
    #[arg(long = "wait", default_value = "10m", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// How long --exec may take for one node, e.g. 15m; past it, it is
    /// killed and the rolling restart stops there.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    exec_timeout: Duration,
    /// Print what would be run, restart nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What keeps a cluster from being healthy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Registered nodes.
    pub nodes: usize,
    pub nodes_down: Vec<u64>,
    /// Configured members that have not registered yet (a new cluster
    /// before every node's first start).
    pub unregistered: Vec<u64>,
    pub partitions: usize,
    pub leaderless: usize,
    /// Partitions with a replica out of the leader's in-sync set.
    pub under_replicated: usize,
    /// Partitions with a replica that has not applied what their leader had
    /// applied one look earlier (or with no earlier look yet).
    pub behind: usize,
    /// Partitions some node knows that the node asked first does not list.
    pub unlisted: usize,
}

/// Each partition's leader and what it had applied, at the previous look.
type Targets = HashMap<(String, u32), (u64, u64)>;

impl Health {
    pub fn healthy(&self) -> bool {
        self.nodes_down.is_empty()
            && self.unregistered.is_empty()
            && self.leaderless == 0
            && self.under_replicated == 0
            && self.behind == 0
            && self.unlisted == 0
    }

    /// The health of `view`, and the targets of the next look. A replica is
    /// caught up once it has applied what its leader had applied at the
    /// previous look: a node just restarted counts as in sync with its
    /// leaders (its acknowledgements are recent) before it has caught up,
    /// and under load no follower ever equals its leader at one instant.
    fn of(
        view: &ClusterView,
        applied: &BTreeMap<(String, u32, u64), Option<u64>>,
        before: &Targets,
    ) -> (Self, Targets) {
        let mut health = Self {
            nodes: view.nodes.len(),
            nodes_down: view.nodes.iter().filter(|(_, (_, n))| n.is_none()).map(|(id, _)| *id).collect(),
            unregistered: view.unregistered(),
            unlisted: view.unlisted(),
            ..Self::default()
        };
        let mut targets = Targets::new();
        for t in &view.meta.topics {
            for p in &t.partitions {
                health.partitions += 1;
                let leader = view.leader(&t.name, p);
                if leader == 0 {
                    health.leaderless += 1;
                    continue;
                }
                let in_sync = view.in_sync(&t.name, p.partition, leader);
                if p.replicas.iter().any(|r| !in_sync.contains(r)) {
                    health.under_replicated += 1;
                }
                let of = |node: u64| applied.get(&(t.name.clone(), p.partition, node)).copied().flatten();
                let key = (t.name.clone(), p.partition);
                let caught_up = match before.get(&key) {
                    Some(&(was_leader, target)) if was_leader == leader => {
                        p.replicas.iter().all(|r| of(*r).is_some_and(|a| a >= target))
                    }
                    _ => false,
                };
                if !caught_up {
                    health.behind += 1;
                }
                if let Some(now) = of(leader) {
                    targets.insert(key, (leader, now));
                }
            }
        }
        (health, targets)
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} nodes up", self.nodes - self.nodes_down.len(), self.nodes)?;
        if !self.nodes_down.is_empty() {
            let down: Vec<String> = self.nodes_down.iter().map(u64::to_string).collect();
            write!(f, " (down: {})", down.join(", "))?;
        }
        if !self.unregistered.is_empty() {
            let missing: Vec<String> = self.unregistered.iter().map(u64::to_string).collect();
            write!(f, ", {} not registered yet", missing.join(", "))?;
        }
        write!(
            f,
            "; {} partitions, {} without a leader, {} under-replicated, {} catching up",
            self.partitions, self.leaderless, self.under_replicated, self.behind
        )?;
        if self.unlisted > 0 {
            write!(f, ", {} not yet in the first node's metadata", self.unlisted)?;
        }
        Ok(())
    }
}

/// Waits until the cluster is healthy, at most `within`; prints what it
/// waits for every few seconds. Returns the time it took.
pub async fn wait_healthy(client: &Client, topics: &[String], within: Duration) -> anyhow::Result<Duration> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut reported = started;
    let mut targets = Targets::new();
    loop {
        // Each look within the time left (a node cut off must not hold it).
        let left = within.saturating_sub(started.elapsed()).max(MIN_LOOK);
        let look = tokio::time::timeout(left, async {
            let view = ClusterView::gather(client, &names).await?;
            let applied = view.applied_indices().await;
            anyhow::Ok((view, applied))
        })
        .await;
        let last = match look {
            Ok(Ok((view, applied))) => {
                let (health, next) = Health::of(&view, &applied, &targets);
                if health.healthy() {
                    println!("healthy: {health} ({:.1} s)", started.elapsed().as_secs_f64());
                    return Ok(started.elapsed());
                }
                targets = next;
                health.to_string()
            }
            Ok(Err(e)) => format!("no metadata: {e:#}"),
            Err(_) => "no answer within the time left".to_owned(),
        };
        if started.elapsed() >= within {
            bail!("the cluster is not healthy after {within:?}: {last}");
        }
        if reported.elapsed() >= REPORT_EVERY {
            println!("waiting: {last} ({:.0} s)", started.elapsed().as_secs_f64());
            reported = Instant::now();
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The host of HOST:PORT or [V6]:PORT.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The command for one node. The address comes from the cluster's metadata,
/// which is not trusted with the shell: anything but a plain host name or
/// address is refused.
fn command_for(template: &str, node: u64, addr: &str) -> anyhow::Result<String> {
    // A letter, digit or '[' first: a leading '-' would be an option to the
    // command it is given to (`ssh -J...`).
    let plain = addr.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'[')
        && addr.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if !plain {
        bail!("node {node}'s address {addr:?} is not a plain HOST:PORT; not putting it in a shell command");
    }
    Ok(template.replace("{node}", &node.to_string()).replace("{addr}", addr).replace("{host}", host_of(addr)))
}

/// The nodes to restart, in order, with the command for each: `--nodes`,
/// or every registered node by id with the controller's leader last (as
/// Kafka's operators restart the active controller last: its leadership then
/// moves once, not with each node).
async fn plan(client: &Client, args: &RollingRestartArgs) -> anyhow::Result<Plan> {
    let meta = client.metadata(&[]).await?;
    let known: Vec<(u64, String)> = meta.brokers.iter().map(|b| (b.node_id, b.addr.clone())).collect();
    let order: Vec<(u64, String)> = if args.nodes.is_empty() {
        let mut all = known.clone();
        all.sort_by_key(|(id, _)| (*id == meta.controller_id, *id));
        all
    } else {
        args.nodes
            .iter()
            .map(|id| {
                known.iter().find(|(k, _)| k == id).cloned().with_context(|| {
                    if meta.members.contains(id) {
                        return format!("node {id} has not registered with the cluster yet (it never started?)");
                    }
                    let ids: Vec<String> = known.iter().map(|(k, _)| k.to_string()).collect();
                    format!("node {id} is not in the cluster (its nodes: {})", ids.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let nodes = order
        .into_iter()
        .map(|(id, addr)| {
            let command = command_for(&args.exec, id, &addr)?;
            Ok((id, addr, command))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Plan { nodes, controller: meta.controller_id })
}

/// What a rolling restart restarts.
struct Plan {
    /// Node, address, command; in order.
    nodes: Vec<(u64, String, String)>,
    /// The controller's leader when planned (0: none known).
    controller: u64,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.nodes.iter().map(|(id, _, _)| id.to_string()).collect();
        write!(f, "order: {}", ids.join(", "))?;
        if self.controller != 0 {
            write!(f, " (node {} leads the controller)", self.controller)?;
        }
        Ok(())
    }
}

pub async fn rolling_restart(opts: &ClientOpts, args: RollingRestartArgs) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let planned = plan(&client, &args).await?;
    if args.dry_run {
        println!("{planned}");
        for (id, _, command) in &planned.nodes {
            println!("node {id}: {command}");
        }
        return Ok(());
    }
    let started = Instant::now();
    println!("rolling restart of {} nodes; first, the cluster must be healthy", planned.nodes.len());
    wait_healthy(&client, &[], args.wait).await.context("not restarting anything")?;
    // Again, now that every configured member has registered.
    let planned = plan(&client, &args).await?;
    println!("{planned}");
    let order = planned.nodes;
    for (i, (id, addr, command)) in order.iter().enumerate() {
        println!("[{}/{}] restarting node {id} ({addr}): {command}", i + 1, order.len());
        let restart = Instant::now();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("STRATA_NODE_ID", id.to_string())
            .env("STRATA_NODE_ADDR", addr)
            .env("STRATA_NODE_HOST", host_of(addr))
            .kill_on_drop(true)
            .spawn()
            .context("cannot run sh")?;
        let done: Vec<String> = order[..i].iter().map(|(n, _, _)| n.to_string()).collect();
        let done = if done.is_empty() { "none".to_owned() } else { done.join(", ") };
        let status = match tokio::time::timeout(args.exec_timeout, child.wait()).await {
            Ok(status) => status.context("cannot wait for sh")?,
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "the restart command for node {id} took more than {:?} and was killed; stopped there \
                     (restarted before it: {done})",
                    args.exec_timeout
                );
            }
        };
        if !status.success() {
            bail!("the restart command for node {id} failed ({status}); stopped there (restarted before it: {done})");
        }
        println!(
            "[{}/{}] node {id} restarted in {:.1} s; waiting until it is back in sync",
            i + 1,
            order.len(),
            restart.elapsed().as_secs_f64()
        );
        wait_healthy(&client, &[], args.wait)
            .await
            .with_context(|| format!("after restarting node {id}; the nodes after it were not restarted"))?;
    }
    println!("rolling restart done: {} nodes in {:.1} s", order.len(), started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_the_node_and_refuse_shell_syntax_from_metadata() {
        let c = command_for("ssh {host} restart {node} # {addr}", 2, "10.0.0.2:7878").expect("plain");
        assert_eq!(c, "ssh 10.0.0.2 restart 2 # 10.0.0.2:7878");
        assert_eq!(command_for("{host}", 1, "[::1]:7878").expect("v6"), "::1");
        assert_eq!(command_for("{host}", 1, "node-1.strata_internal:7878").expect("name"), "node-1.strata_internal");
        for hostile in ["a;rm -rf /:1", "$(id):1", "a b:1", "`x`:1", "a|b:1", "", "a'b:1", "-Jevil.com:1", ":1"] {
            assert!(command_for("{host}", 1, hostile).is_err(), "{hostile:?} accepted");
        }
    }

    #[test]
    fn health_counts_what_is_missing() {
        let h = Health {
            nodes: 3,
            nodes_down: vec![2],
            unregistered: vec![4],
            partitions: 6,
            leaderless: 1,
            under_replicated: 4,
            behind: 5,
            unlisted: 2,
        };
        assert!(!h.healthy());
        assert_eq!(
            h.to_string(),
            "2 of 3 nodes up (down: 2), 4 not registered yet; 6 partitions, 1 without a leader, 4 under-replicated, 5 catching up, \
             2 not yet in the first node's metadata"
        );
        for lagging in [
            Health { behind: 1, ..Health::default() },
            Health { unlisted: 1, ..Health::default() },
            Health { unregistered: vec![3], ..Health::default() },
        ] {
            assert!(!lagging.healthy(), "{lagging}");
        }
        let ok = Health { nodes: 3, partitions: 6, ..Health::default() };
        assert!(ok.healthy());
    }
}
