//! The cluster under test: one `strata server` process per host, the same
//! binary and flags a user runs (`--node-id --listen --peers --data-dir
//! --cluster-tls-dir --tls-cert --tls-key --require-auth`: nodes talk to
//! each other over mutual TLS, clients reach them over TLS and log in as a
//! superuser the nodes bootstrap, with a CA and certificates made by
//! `strata certs` for the run),
//! started in the host's container (the binary mounted read-only, data and
//! log in the run's folder) or network namespace. The harness kills
//! (SIGKILL), pauses (SIGSTOP, or the cgroup freezer for a container),
//! resumes and restarts them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::net::{Host, Kind, output, run};

/// Port every node serves clients on (each host has its own address).
pub const PORT: u16 = 7878;
/// Port every node's cluster listener (node-to-node traffic) is on.
pub const CLUSTER_PORT: u16 = 7879;

#[derive(Debug)]
struct Node {
    host: Host,
    data_dir: PathBuf,
    log: PathBuf,
    /// The process (namespace hosts).
    child: Option<Child>,
    /// The container exists / runs (container hosts).
    created: bool,
    running: bool,
    paused: bool,
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    strata: PathBuf,
    nodes: Vec<Node>,
    peers: String,
    /// The Docker network of container hosts.
    network: String,
    dir: PathBuf,
}

/// The superuser the suite's clients log in as (made by the nodes from
/// `STRATA_BOOTSTRAP_USER`).
pub const USER: &str = "jepsen";
pub const PASSWORD: &str = "jepsen-run-password";

/// A CA (beside `dir`, in `ca`), the certificates of nodes 1..=n and the
/// client listeners' certificate (for `hosts`) in `dir`, made with the
/// strata binary under test (`strata certs`), as an operator would.
fn make_certs(strata: &Path, dir: &Path, n: u32, hosts: &[String]) -> anyhow::Result<()> {
    let d = dir.to_str().context("the run's folder is not UTF-8")?;
    let run_certs = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new(strata).arg("certs").args(args).args(["--dir", d, "--force"]).output()?;
        if !out.status.success() {
            bail!("strata certs {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ca = dir.with_file_name("ca");
    let ca = ca.to_str().context("the run's folder is not UTF-8")?;
    let out = std::process::Command::new(strata).args(["certs", "ca", "--dir", ca, "--force"]).output()?;
    if !out.status.success() {
        bail!("strata certs ca failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for id in 1..=n {
        run_certs(&["node", "--node-id", &id.to_string(), "--ca-dir", ca])?;
    }
    run_certs(&["server", "--host", &hosts.join(","), "--ca-dir", ca])?;
    Ok(())
}

impl Cluster {
    /// Starts a node on every host; data and logs under `dir`.
    pub async fn start(strata: &Path, hosts: &[Host], network: &str, dir: &Path) -> anyhow::Result<Self> {
        let peers = hosts.iter().map(|h| format!("{}={}:{CLUSTER_PORT}", h.node, h.ip)).collect::<Vec<_>>().join(",");
        let ips: Vec<String> = hosts.iter().map(|h| h.ip.clone()).collect();
        make_certs(strata, &dir.join("tls"), hosts.len() as u32, &ips)?;
        let nodes = hosts
            .iter()
            .map(|h| Node {
                host: h.clone(),
                data_dir: dir.join(format!("n{}", h.node)),
                log: dir.join(format!("n{}.log", h.node)),
                child: None,
                created: false,
                running: false,
                paused: false,
            })
            .collect();
        let mut cluster =
            Self { strata: strata.to_owned(), nodes, peers, network: network.to_owned(), dir: dir.to_owned() };
        for node in 1..=hosts.len() as u32 {
            cluster.spawn(node)?;
        }
        Ok(cluster)
    }

    /// How the suite's clients connect: TLS trusting the run's CA, logged
    /// in as the superuser the nodes bootstrap.
    pub fn connect_options(&self) -> anyhow::Result<strata_client::ConnectOptions> {
        let ca = self.dir.join("tls/ca.crt");
        let mut options = strata_client::ConnectOptions::with_tls_files(true, Some(ca), None, None)?;
        options.credentials =
            strata_client::Credentials::Password { user: USER.to_owned(), password: PASSWORD.to_owned() };
        Ok(options)
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
        let (strata, peers, network, dir) =
            (self.strata.clone(), self.peers.clone(), self.network.clone(), self.dir.clone());
        let node = self.node(id)?;
        std::fs::create_dir_all(&node.data_dir)?;
        let listen = format!("{}:{PORT}", node.host.ip);
        match node.host.kind {
            Kind::Docker if node.running => {}
            Kind::Docker if node.created => {
                run(&["docker", "start", &node.host.name])?;
                node.running = true;
            }
            Kind::Docker => {
                // The run's folder is mounted at the same path, so data and
                // log land where the namespace hosts put them.
                let d = dir.to_string_lossy();
                let tls = dir.join("tls");
                let command = format!(
                    "STRATA_BOOTSTRAP_USER={USER}:{PASSWORD} exec /usr/local/bin/strata server --node-id {id} \
                     --listen {listen} --peers {peers} --data-dir {} --cluster-tls-dir {} --tls-cert {} --tls-key {} \
                     --require-auth >> {} 2>&1",
                    node.data_dir.display(),
                    tls.display(),
                    tls.join("server.crt").display(),
                    tls.join("server.key").display(),
                    node.log.display()
                );
                run(&[
                    "docker",
                    "run",
                    "-d",
                    "--name",
                    &node.host.name,
                    "--hostname",
                    &node.host.name,
                    "--network",
                    &network,
                    "--ip",
                    &node.host.ip,
                    "--cap-add",
                    "NET_ADMIN",
                    "-v",
                    &format!("{}:/usr/local/bin/strata:ro", strata.display()),
                    "-v",
                    &format!("{d}:{d}"),
                    crate::image::IMAGE,
                    "sh",
                    "-c",
                    &command,
                ])
                .with_context(|| format!("cannot start node {id}'s container"))?;
                node.created = true;
                node.running = true;
            }
            Kind::Netns => {
                if node.child.is_some() {
                    return Ok(());
                }
                let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
                let child = Command::new("ip")
                    .args(["netns", "exec", &node.host.name])
                    .arg(&strata)
                    .args(["server", "--node-id", &id.to_string(), "--listen", &listen])
                    .args(["--peers", &peers, "--data-dir"])
                    .arg(&node.data_dir)
                    .arg("--cluster-tls-dir")
                    .arg(dir.join("tls"))
                    .arg("--tls-cert")
                    .arg(dir.join("tls/server.crt"))
                    .arg("--tls-key")
                    .arg(dir.join("tls/server.key"))
                    .arg("--require-auth")
                    .env("STRATA_BOOTSTRAP_USER", format!("{USER}:{PASSWORD}"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("cannot start node {id} ({})", strata.display()))?;
                node.child = Some(child);
            }
        }
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

    /// Whether node `id`'s container runs, as Docker sees it.
    fn container_running(name: &str) -> anyhow::Result<bool> {
        let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", name]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "true")
    }

    /// `kill -9`; the node stays down until [`Cluster::restart`]. Returns
    /// how its death was seen: the process (or the container's) ended by
    /// SIGKILL. An error when it was not running or ended otherwise.
    pub async fn kill(&mut self, id: u32) -> anyhow::Result<String> {
        let node = self.node(id)?;
        let seen = match node.host.kind {
            Kind::Docker => {
                if !node.running {
                    bail!("node {id} is not running");
                }
                if !Self::container_running(&node.host.name)? {
                    bail!("node {id} exited by itself before it was killed; see {}", node.log.display());
                }
                if node.paused {
                    run(&["docker", "unpause", &node.host.name])?;
                }
                run(&["docker", "kill", "-s", "KILL", &node.host.name])?;
                let code = output(&["docker", "wait", &node.host.name])?;
                node.running = false;
                node.paused = false;
                // The server is the container's first process (`exec`).
                if code != "137" {
                    bail!("node {id}'s container exited with status {code}, not 137 (SIGKILL)");
                }
                format!("node {id}: its container exited with 137 (SIGKILL)")
            }
            Kind::Netns => {
                let Some(mut child) = node.child.take() else { bail!("node {id} is not running") };
                node.paused = false;
                if let Some(status) = child.try_wait()? {
                    bail!("node {id} exited by itself ({status}) before it was killed; see {}", node.log.display());
                }
                let pid = child.id().with_context(|| format!("node {id} has no process id"))?;
                Self::signal(pid, "KILL")?;
                let status = child.wait().await?;
                use std::os::unix::process::ExitStatusExt;
                if status.signal() != Some(9) {
                    bail!("node {id} (pid {pid}) ended with {status}, not by SIGKILL");
                }
                format!("node {id}: pid {pid} died of SIGKILL")
            }
        };
        Ok(seen)
    }

    /// Stops node `id` as an operator does (SIGTERM: `systemctl stop`,
    /// `docker stop`): it hands its leaderships over, then exits; the node
    /// stays down until [`Cluster::restart`]. Returns how its exit was seen:
    /// status 0 within `within`. An error when it was not running, exited
    /// otherwise, or was still running after `within` (then it is killed).
    pub async fn terminate(&mut self, id: u32, within: Duration) -> anyhow::Result<String> {
        let node = self.node(id)?;
        let started = Instant::now();
        match node.host.kind {
            Kind::Docker => {
                if !node.running || node.paused {
                    bail!("node {id} is not running");
                }
                let t = within.as_secs().max(1).to_string();
                let name = node.host.name.clone();
                // Off the runtime's workers: `docker stop` lasts as long as
                // the node's graceful stop, and a worker blocked that long
                // would stall the clients' tasks queued on it (their
                // connections would not even answer the node's GOAWAY).
                let code = tokio::task::spawn_blocking(move || {
                    run(&["docker", "stop", "-t", &t, &name])?;
                    output(&["docker", "wait", &name])
                })
                .await??;
                node.running = false;
                if code != "0" {
                    bail!("node {id}'s container exited with status {code} after SIGTERM, not 0");
                }
            }
            Kind::Netns => {
                let Some(mut child) = node.child.take() else { bail!("node {id} is not running") };
                if node.paused {
                    bail!("node {id} is paused");
                }
                let pid = child.id().with_context(|| format!("node {id} has no process id"))?;
                Self::signal(pid, "TERM")?;
                let status = match tokio::time::timeout(within, child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        let _ = child.kill().await;
                        bail!("node {id} (pid {pid}) was still running {within:?} after SIGTERM; killed");
                    }
                };
                if !status.success() {
                    bail!("node {id} (pid {pid}) ended with {status} after SIGTERM, not 0");
                }
            }
        }
        Ok(format!("node {id}: exited 0 {:.1} s after SIGTERM", started.elapsed().as_secs_f64()))
    }

    /// A `strata` command-line client for this cluster (TLS with the run's
    /// CA, logged in as the superuser), e.g. `cluster wait-healthy`.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(&self.strata);
        command
            .env("STRATA_SERVER", self.addrs().join(","))
            .env("STRATA_TLS_CA", self.dir.join("tls/ca.crt"))
            .env("STRATA_USER", USER)
            .env("STRATA_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Starts a killed node again (its data directory kept).
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// SIGSTOP (a container: frozen, `docker pause`). Returns how the stop
    /// was seen: the process is stopped (waited for, not reaped), or Docker
    /// reports the container paused. An error when the node is not running
    /// or did not stop.
    pub fn pause(&mut self, id: u32) -> anyhow::Result<String> {
        let node = self.node(id)?;
        match node.host.kind {
            Kind::Docker => {
                if !node.running {
                    bail!("node {id} is not running");
                }
                if !node.paused {
                    run(&["docker", "pause", &node.host.name])?;
                    node.paused = true;
                }
                let paused = output(&["docker", "inspect", "-f", "{{.State.Paused}}", &node.host.name])?;
                if paused != "true" {
                    bail!("node {id}'s container is not paused (Docker says Paused={paused})");
                }
                Ok(format!("node {id}: its container is frozen"))
            }
            Kind::Netns => {
                let pid =
                    node.child.as_ref().and_then(Child::id).with_context(|| format!("node {id} is not running"))?;
                Self::signal(pid, "STOP")?;
                node.paused = true;
                // Blocks until the stop lands (or the process dies), and
                // leaves the child's state for the usual wait.
                use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
                let raw = Pid::from_raw(pid as i32).with_context(|| format!("pid {pid}"))?;
                let status =
                    waitid(WaitId::Pid(raw), WaitIdOptions::STOPPED | WaitIdOptions::EXITED | WaitIdOptions::NOWAIT)
                        .with_context(|| format!("waiting for node {id} (pid {pid}) to stop"))?;
                match status {
                    Some(s) if s.stopped() => Ok(format!("node {id}: pid {pid} is stopped")),
                    other => bail!("node {id} (pid {pid}) did not stop: {other:?}"),
                }
            }
        }
    }

    /// SIGCONT (a container: `docker unpause`).
    pub fn resume(&mut self, id: u32) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if node.paused {
            match node.host.kind {
                Kind::Docker => run(&["docker", "unpause", &node.host.name])?,
                Kind::Netns => {
                    if let Some(pid) = node.child.as_ref().and_then(Child::id) {
                        Self::signal(pid, "CONT")?;
                    }
                }
            }
        }
        node.paused = false;
        Ok(())
    }

    /// Nodes that are running and not paused.
    pub fn up(&self) -> Vec<u32> {
        self.nodes.iter().filter(|n| (n.child.is_some() || n.running) && !n.paused).map(|n| n.host.node).collect()
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
            if node.running && !Self::container_running(&node.host.name)? {
                bail!("node {} exited by itself; see {}", node.host.node, node.log.display());
            }
        }
        Ok(())
    }

    /// Waits until every node answers a metadata request, within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for addr in self.addrs() {
            loop {
                let connect = strata_client::Client::connect_with(&addr, self.connect_options()?);
                let ok = match tokio::time::timeout(Duration::from_secs(5), connect).await {
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

    /// Stops every node (resumed first, so paused ones can die) and removes
    /// the containers.
    pub async fn stop(&mut self) {
        for id in self.node_ids() {
            let _ = self.resume(id);
            let _ = self.kill(id).await;
        }
        for node in &mut self.nodes {
            if node.created {
                let _ = run(&["docker", "rm", "-f", &node.host.name]);
                node.created = false;
            }
        }
    }
}
