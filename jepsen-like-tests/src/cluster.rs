//! The cluster under test: one `strata server` process per host, the same
//! binary and flags a user runs (`--node-id --listen --peers --data-dir`),
//! started inside the host's network namespace. The harness kills (SIGKILL),
//! pauses (SIGSTOP), resumes (SIGCONT) and restarts them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::net::Host;

/// Port every node listens on (each host has its own address).
pub const PORT: u16 = 7878;

#[derive(Debug)]
struct Node {
    host: Host,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    strata: PathBuf,
    nodes: Vec<Node>,
    peers: String,
}

impl Cluster {
    /// Starts a node on every host; data and logs under `dir`.
    pub async fn start(strata: &Path, hosts: &[Host], dir: &Path) -> anyhow::Result<Self> {
        let peers = hosts.iter().map(|h| format!("{}={}:{PORT}", h.node, h.ip)).collect::<Vec<_>>().join(",");
        let nodes = hosts
            .iter()
            .map(|h| Node {
                host: h.clone(),
                data_dir: dir.join(format!("n{}", h.node)),
                log: dir.join(format!("n{}.log", h.node)),
                child: None,
                paused: false,
            })
            .collect();
        let mut cluster = Self { strata: strata.to_owned(), nodes, peers };
        for node in 1..=hosts.len() as u32 {
            cluster.spawn(node)?;
        }
        Ok(cluster)
    }

    /// Every node's client address.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("{}:{PORT}", n.host.ip)).collect()
    }

    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.host.node).collect()
    }

    /// Address of node `id`.
    pub fn addr(&self, id: u32) -> String {
        self.nodes.iter().find(|n| n.host.node == id).map(|n| format!("{}:{PORT}", n.host.ip)).unwrap_or_default()
    }

    fn node(&mut self, id: u32) -> anyhow::Result<&mut Node> {
        self.nodes.iter_mut().find(|n| n.host.node == id).with_context(|| format!("no node {id}"))
    }

    fn spawn(&mut self, id: u32) -> anyhow::Result<()> {
        let strata = self.strata.clone();
        let peers = self.peers.clone();
        let node = self.node(id)?;
        if node.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&node.data_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.host.namespace])
            .arg(&strata)
            .args(["server", "--node-id", &id.to_string(), "--listen", &format!("{}:{PORT}", node.host.ip)])
            .args(["--peers", &peers, "--data-dir"])
            .arg(&node.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {id} ({})", strata.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// `kill -9`; the node stays down until [`Cluster::restart`].
    pub async fn kill(&mut self, id: u32) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if let Some(mut child) = node.child.take() {
            if let Some(pid) = child.id() {
                Self::signal(pid, "KILL")?;
            }
            child.wait().await?;
        }
        node.paused = false;
        Ok(())
    }

    /// Starts a killed node again (its data directory kept).
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// SIGSTOP.
    pub fn pause(&mut self, id: u32) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if let Some(pid) = node.child.as_ref().and_then(Child::id) {
            Self::signal(pid, "STOP")?;
            node.paused = true;
        }
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u32) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if let Some(pid) = node.child.as_ref().and_then(Child::id)
            && node.paused
        {
            Self::signal(pid, "CONT")?;
        }
        node.paused = false;
        Ok(())
    }

    /// Nodes that are running and not paused.
    pub fn up(&self) -> Vec<u32> {
        self.nodes.iter().filter(|n| n.child.is_some() && !n.paused).map(|n| n.host.node).collect()
    }

    /// Restarts every killed node and resumes every paused one.
    pub fn revive_all(&mut self) -> anyhow::Result<()> {
        for id in self.node_ids() {
            self.resume(id)?;
            self.restart(id)?;
        }
        Ok(())
    }

    /// Fails if a node exited on its own (a crash, not a kill of ours).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("node {} exited by itself ({status}); see {}", node.host.node, node.log.display());
            }
        }
        Ok(())
    }

    /// Waits until every node answers a metadata request, within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for addr in self.addrs() {
            loop {
                let ok = match tokio::time::timeout(Duration::from_secs(2), strata_client::Client::connect(&addr)).await
                {
                    Ok(Ok(c)) => {
                        matches!(tokio::time::timeout(Duration::from_secs(2), c.metadata(&[])).await, Ok(Ok(_)))
                    }
                    _ => false,
                };
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node at {addr} did not answer within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Stops every node (SIGCONT first, so paused ones can die).
    pub async fn stop(&mut self) {
        for id in self.node_ids() {
            let _ = self.resume(id);
            let _ = self.kill(id).await;
        }
    }
}
