//! `strata cluster status` (nodes, and per partition the leader, replicas,
//! those in sync, applied index and each replica's lag) and `strata dev --nodes N` (a local
//! cluster of N nodes in one command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use strata_client::Client;

use crate::ClientOpts;
use crate::cli::{OutputFormat, connect, table};
use crate::rolling;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The controller's leader, the nodes (up, down, or configured but not
    /// registered yet) and, per partition, the leader, the replicas, the
    /// leader's applied index and how far each replica lags behind it.
    Status {
        /// Only these topics (default: all).
        #[arg(long)]
        topic: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Wait until the cluster is healthy: every configured member has
    /// registered and answers, and every partition has a leader and all its
    /// replicas in sync and caught up (no under-replicated partition). Exits
    /// non-zero if it is not within --wait (for scripts: before taking the
    /// next node down).
    WaitHealthy {
        /// Only these topics (default: all).
        #[arg(long)]
        topic: Vec<String>,
        /// How long to wait, e.g. 5m.
        #[arg(long = "wait", default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Restart every node, one at a time: wait until the cluster is healthy,
    /// run --exec for one node (each node hands its leaderships over when it
    /// stops), wait until it is back and every partition is in sync again,
    /// then the next node.
    RollingRestart(rolling::RollingRestartArgs),
}

/// How often `strata dev` looks for a node that exited.
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(200);

/// Replicas `cluster status` asks at once for their applied index.
const STATUS_CALLS: usize = 32;

/// What one replica says about its copy of a partition.
#[derive(Debug, Clone, Copy)]
struct Replica {
    applied: Option<u64>,
}

/// Each node's own answer to a metadata request: which nodes answer, and
/// what each says of each partition's leader and in-sync replicas. One
/// metadata request per node.
pub(crate) struct ClusterView {
    /// The metadata of the node asked first.
    pub meta: strata_client::proto::MetadataResponse,
    /// Every node: its address and, if it answered, a client for it.
    pub nodes: BTreeMap<u64, (String, Option<Client>)>,
    /// What each node said of each partition: (node, topic, partition) to
    /// (leader, in-sync replicas).
    said: BTreeMap<(u64, String, u32), (u64, Vec<u64>)>,
}

/// How long `ClusterView::gather` waits for one node's answer (a node cut
/// off by the network does not hold up the rest for the whole deadline).
const NODE_ANSWER_WAIT: Duration = Duration::from_secs(5);

impl ClusterView {
    pub async fn gather(client: &Client, names: &[&str]) -> anyhow::Result<Self> {
        let meta = client.metadata(names).await?;
        let mut nodes = BTreeMap::new();
        let mut said = BTreeMap::new();
        for b in &meta.brokers {
            let answer = tokio::time::timeout(NODE_ANSWER_WAIT, async {
                let n = client.node(&b.addr).await.ok()?;
                let view = n.metadata(names).await.ok()?;
                Some((n, view))
            })
            .await
            .ok()
            .flatten();
            let node = answer.map(|(n, view)| {
                for t in view.topics {
                    for p in t.partitions {
                        said.insert((b.node_id, t.name.clone(), p.partition), (p.leader, p.in_sync));
                    }
                }
                n
            });
            nodes.insert(b.node_id, (b.addr.clone(), node));
        }
        Ok(Self { meta, nodes, said })
    }

    /// The partition's leader: as the node asked first knows it, else as
    /// its replicas say; 0 when none knows one.
    pub fn leader(&self, topic: &str, p: &strata_client::proto::PartitionDescription) -> u64 {
        if p.leader != 0 {
            return p.leader;
        }
        p.replicas
            .iter()
            .filter_map(|id| self.said.get(&(*id, topic.to_owned(), p.partition)).map(|(l, _)| *l))
            .find(|l| *l != 0)
            .unwrap_or(0)
    }

    /// The replicas in sync with `leader`, as the leader says.
    pub fn in_sync(&self, topic: &str, partition: u32, leader: u64) -> Vec<u64> {
        self.said.get(&(leader, topic.to_owned(), partition)).map(|(_, s)| s.clone()).unwrap_or_default()
    }

    /// Members the node asked first was configured with that it does not
    /// know as registered (not yet joined, so no node knows their address;
    /// or, briefly, the first node's metadata lags). A node older than the
    /// `members` field lists none: then only registered nodes are checked.
    pub fn unregistered(&self) -> Vec<u64> {
        self.meta.members.iter().copied().filter(|id| !self.nodes.contains_key(id)).collect()
    }

    /// Partitions some node knows that the node asked first does not list
    /// (its metadata lags: a node just restarted, a topic just created).
    pub fn unlisted(&self) -> usize {
        let listed: std::collections::BTreeSet<(&str, u32)> = self
            .meta
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.name.as_str(), p.partition)))
            .collect();
        let known: std::collections::BTreeSet<(&str, u32)> =
            self.said.keys().map(|(_, topic, partition)| (topic.as_str(), *partition)).collect();
        known.difference(&listed).count()
    }

    /// Each replica's applied Raft index, by (topic, partition, node):
    /// `None` where the node did not answer. One request per replica,
    /// STATUS_CALLS at a time (thousands of partitions answer in a moment);
    /// each asks for the digest of no entry, so it costs the node nothing
    /// but the lookup.
    pub async fn applied_indices(&self) -> BTreeMap<(String, u32, u64), Option<u64>> {
        let mut asks = Vec::new();
        for t in &self.meta.topics {
            for p in &t.partitions {
                for id in &p.replicas {
                    asks.push((t.name.clone(), p.partition, *id));
                }
            }
        }
        let applied: Vec<Option<u64>> = futures::stream::iter(asks.iter().map(|(topic, partition, id)| {
            let node = self.nodes.get(id).and_then(|(_, n)| n.clone());
            async move {
                match node {
                    Some(n) => n.partition_digest(topic, *partition, Some(0)).await.ok().map(|d| d.applied_index),
                    None => None,
                }
            }
        }))
        .buffered(STATUS_CALLS)
        .collect()
        .await;
        asks.into_iter().zip(applied).collect()
    }
}

pub async fn run(opts: &ClientOpts, command: ClusterCommand) -> anyhow::Result<()> {
    let (topic, format) = match command {
        ClusterCommand::Status { topic, format } => (topic, format),
        ClusterCommand::WaitHealthy { topic, timeout } => {
            let client = connect(opts).await?;
            return rolling::wait_healthy(&client, &topic, timeout).await.map(drop);
        }
        ClusterCommand::RollingRestart(args) => return rolling::rolling_restart(opts, args).await,
    };
    let client = connect(opts).await?;
    let names: Vec<&str> = topic.iter().map(String::as_str).collect();
    let view = ClusterView::gather(&client, &names).await?;
    let (meta, nodes) = (&view.meta, &view.nodes);
    let mut applied = view.applied_indices().await;
    let mut rows = Vec::new();
    for t in &meta.topics {
        for p in &t.partitions {
            let replicas: BTreeMap<u64, Replica> = p
                .replicas
                .iter()
                .map(|id| (*id, Replica { applied: applied.remove(&(t.name.clone(), p.partition, *id)).flatten() }))
                .collect();
            let leader = view.leader(&t.name, p);
            let in_sync = view.in_sync(&t.name, p.partition, leader);
            rows.push((t.name.clone(), p.partition, leader, replicas, in_sync));
        }
    }
    match format {
        OutputFormat::Json => {
            let mut nodes_json: Vec<_> = nodes
                .iter()
                .map(|(id, (addr, n))| {
                    serde_json::json!({
                        "node_id": id,
                        "addr": addr,
                        "alive": n.is_some(),
                        "registered": true,
                    })
                })
                .collect();
            nodes_json.extend(view.unregistered().into_iter().map(|id| {
                serde_json::json!({
                    "node_id": id,
                    "addr": null,
                    "alive": false,
                    "registered": false,
                })
            }));
            let parts: Vec<_> = rows
                .iter()
                .map(|(topic, partition, leader, replicas, in_sync)| {
                    let applied = replicas.get(leader).and_then(|r| r.applied);
                    serde_json::json!({
                        "topic": topic,
                        "partition": partition,
                        "leader": leader,
                        "in_sync": in_sync,
                        "applied_index": applied,
                        "replicas": replicas.iter().map(|(id, r)| serde_json::json!({
                            "node_id": id,
                            "applied_index": r.applied,
                            "lag": lag(applied, r.applied),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let controller = serde_json::json!({
                "leader": (meta.controller_id != 0).then_some(meta.controller_id),
                "term": meta.controller_term,
                "as_seen_by": meta.node_id,
            });
            println!("{}", serde_json::json!({"controller": controller, "nodes": nodes_json, "partitions": parts}));
        }
        OutputFormat::Text => {
            match meta.controller_id {
                0 => println!("controller: no leader known to node {}", meta.node_id),
                id => println!(
                    "controller: node {id} leads (term {}, as node {} sees it)",
                    meta.controller_term, meta.node_id
                ),
            }
            let mut t = table(&["NODE", "ADDRESS", "STATUS"]);
            for (id, (addr, n)) in nodes {
                t.add_row(vec![id.to_string(), addr.clone(), if n.is_some() { "up" } else { "down" }.to_owned()]);
            }
            for id in view.unregistered() {
                t.add_row(vec![id.to_string(), "-".to_owned(), "not registered yet".to_owned()]);
            }
            println!("{t}\n");
            let mut t = table(&["TOPIC", "PARTITION", "LEADER", "IN-SYNC", "APPLIED-INDEX", "REPLICAS (node:lag)"]);
            for (topic, partition, leader, replicas, in_sync) in &rows {
                let applied = replicas.get(leader).and_then(|r| r.applied);
                let lags: Vec<String> = replicas
                    .iter()
                    .map(|(id, r)| match lag(applied, r.applied) {
                        Some(l) => format!("{id}:{l}"),
                        None => format!("{id}:?"),
                    })
                    .collect();
                t.add_row(vec![
                    topic.clone(),
                    partition.to_string(),
                    if *leader == 0 { "none".to_owned() } else { leader.to_string() },
                    in_sync.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                    applied.map_or_else(|| "?".to_owned(), |a| a.to_string()),
                    lags.join(" "),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// Entries a replica is behind the leader (`None`: either did not answer).
fn lag(leader: Option<u64>, replica: Option<u64>) -> Option<u64> {
    Some(leader?.saturating_sub(replica?))
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Nodes to run.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Client port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 7101)]
    base_port: u16,
    /// Cluster (node-to-node) port of node 1; node N's is this + N - 1.
    /// Default: --base-port + 100.
    #[arg(long)]
    cluster_base_port: Option<u16>,
    /// Folder holding each node's data directory (node-1, node-2, ...).
    #[arg(long, default_value = "strata-dev")]
    data_dir: PathBuf,
    /// TLS on the client listeners and authentication required, with a
    /// superuser `admin` whose password is made on the first start and
    /// kept in DATA_DIR/admin.password.
    #[arg(long)]
    secure: bool,
}

/// Runs a local cluster: one `strata server` process per node, on loopback;
/// Ctrl-C stops them all (each finishes its in-flight requests).
pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let cluster_base = match args.cluster_base_port {
        Some(p) => p,
        None => args.base_port.checked_add(100).context("--base-port leaves no room for the cluster ports")?,
    };
    let mut nodes = LocalCluster::start(args.nodes, args.base_port, cluster_base, &args.data_dir, args.secure).await?;
    let bootstrap = nodes.bootstrap();
    println!(
        "strata dev: {} nodes running, data and logs under {}, node-to-node mutual TLS with certificates in {}",
        args.nodes,
        args.data_dir.display(),
        nodes.tls_dir().display()
    );
    for i in 1..=args.nodes {
        println!(
            "  node {i}: {} (cluster listener {}, metrics http://{}/metrics)",
            nodes.addr(i),
            nodes.cluster_addr(i),
            nodes.metrics_addr(i)
        );
    }
    if args.secure {
        let dir = args.data_dir.display();
        println!("clients need TLS and credentials; as the superuser admin:");
        println!("  export STRATA_SERVER={bootstrap} STRATA_TLS_CA={dir}/tls/ca.crt");
        println!("  export STRATA_USER=admin STRATA_PASSWORD=\"$(cat {dir}/admin.password)\"");
        println!("try:\n  strata topic create demo --partitions 3 --replication-factor 3");
        println!("  strata user create alice --password alice-secret");
        println!("  strata acl create --allow-principal User:alice --operation write,read --topic demo");
        println!("  strata whoami\nCtrl-C stops the cluster.");
    } else {
        println!("try:\n  strata topic create demo --partitions 3 --replication-factor 3 --server {bootstrap}");
        println!("  strata cluster status --server {bootstrap}\nCtrl-C stops the cluster.");
    }
    // A node that exits meanwhile (stopped or killed to try a failover) is
    // reaped and reported; the others go on.
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            (node, status) = nodes.next_exit() => println!(
                "strata dev: node {node} exited ({status}; its log: {}); the others go on",
                args.data_dir.join(format!("node-{node}.log")).display()
            ),
        }
    }
    println!("strata dev: stopping");
    nodes.stop().await;
    Ok(())
}

/// Where `strata dev --secure` keeps the superuser's password.
const ADMIN_PASSWORD_FILE: &str = "admin.password";

/// The superuser's password of `strata dev --secure`: made once (random,
/// the file readable by its owner only), then kept.
fn ensure_admin_password(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(ADMIN_PASSWORD_FILE);
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    // 24 characters of 56 (no look-alikes), from the kernel's random
    // source, unbiased (bytes at or above 4 x 56 are skipped).
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut password = String::new();
    let mut random = std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?;
    while password.len() < 24 {
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut random, &mut byte).context("cannot read /dev/urandom")?;
        if usize::from(byte[0]) < 4 * ALPHABET.len() {
            password.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{password}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `strata server` child processes forming a cluster on loopback.
pub struct LocalCluster {
    exe: PathBuf,
    base_port: u16,
    cluster_base_port: u16,
    data_dir: PathBuf,
    peers: String,
    /// TLS for clients and authentication required (`--secure`).
    secure: bool,
    /// Node i at index i - 1; `None` while killed.
    children: Vec<Option<tokio::process::Child>>,
}

impl LocalCluster {
    /// Starts `n` nodes (node i's client listener on `base_port + i - 1`,
    /// its cluster listener on `cluster_base_port + i - 1`, data in
    /// `data_dir/node-i`, its log in `data_dir/node-i.log`, certificates in
    /// `data_dir/tls`, from a CA kept in `data_dir/ca`, made on the first
    /// start) and returns once every node
    /// accepts connections.
    pub async fn start(
        n: u16,
        base_port: u16,
        cluster_base_port: u16,
        data_dir: &std::path::Path,
        secure: bool,
    ) -> anyhow::Result<Self> {
        if n == 0 {
            bail!("a cluster needs at least 1 node");
        }
        for base in [base_port, cluster_base_port] {
            if u32::from(base) + u32::from(n) - 1 > u32::from(u16::MAX) {
                bail!("port {base} leaves no room for {n} nodes");
            }
        }
        let (clients, cluster) = (base_port..base_port + n, cluster_base_port..cluster_base_port + n);
        if clients.start < cluster.end && cluster.start < clients.end {
            bail!("the client ports {clients:?} and the cluster ports {cluster:?} overlap");
        }
        let exe = std::env::current_exe().context("cannot find the strata binary")?;
        crate::certs::ensure_dev_certs(&data_dir.join("ca"), &data_dir.join("tls"), n)?;
        if secure {
            crate::certs::ensure_dev_server_cert(&data_dir.join("ca"), &data_dir.join("tls"))?;
            ensure_admin_password(data_dir)?;
        }
        let peers: Vec<String> = (1..=n).map(|i| format!("{i}=127.0.0.1:{}", cluster_base_port + i - 1)).collect();
        let mut cluster = Self {
            exe,
            base_port,
            cluster_base_port,
            data_dir: data_dir.to_owned(),
            peers: peers.join(","),
            secure,
            children: (0..n).map(|_| None).collect(),
        };
        for i in 1..=n {
            cluster.spawn(i)?;
        }
        for i in 1..=n {
            cluster.wait_listening(i).await?;
        }
        Ok(cluster)
    }

    pub fn addr(&self, node: u16) -> String {
        format!("127.0.0.1:{}", self.base_port + node - 1)
    }

    pub fn cluster_addr(&self, node: u16) -> String {
        format!("127.0.0.1:{}", self.cluster_base_port + node - 1)
    }

    /// Node `node`'s metrics listener: 100 ports above its cluster
    /// listener (a node of its own each, not the shared default).
    pub fn metrics_addr(&self, node: u16) -> String {
        format!("127.0.0.1:{}", u32::from(self.cluster_base_port) + 100 + u32::from(node) - 1)
    }

    /// Where the nodes' certificates are.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn bootstrap(&self) -> String {
        (1..=self.children.len() as u16).map(|i| self.addr(i)).collect::<Vec<_>>().join(",")
    }

    /// Starts (or restarts) node `node`.
    pub fn spawn(&mut self, node: u16) -> anyhow::Result<()> {
        let dir = self.data_dir.join(format!("node-{node}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .with_context(|| format!("cannot open the log file of node {node}"))?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(["server", "--node-id", &node.to_string(), "--listen", &self.addr(node), "--peers", &self.peers])
            .args(["--metrics-listen", &self.metrics_addr(node)])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--cluster-tls-dir")
            .arg(self.tls_dir());
        if self.secure {
            let password = std::fs::read_to_string(self.data_dir.join(ADMIN_PASSWORD_FILE))
                .context("cannot read the admin password")?;
            command
                .arg("--tls-cert")
                .arg(self.tls_dir().join("server.crt"))
                .arg("--tls-key")
                .arg(self.tls_dir().join("server.key"))
                .arg("--require-auth")
                .env("STRATA_BOOTSTRAP_USER", format!("admin:{}", password.trim()));
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {node}"))?;
        self.children[node as usize - 1] = Some(child);
        Ok(())
    }

    /// Waits (at most 30 s) until node `node` accepts connections.
    pub async fn wait_listening(&self, node: u16) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let options = if self.secure {
            strata_client::ConnectOptions::with_tls_files(true, Some(self.tls_dir().join("ca.crt")), None, None)?
        } else {
            strata_client::ConnectOptions::default()
        };
        while Client::connect_with(&self.addr(node), options.clone()).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {node} is not listening on {} (see its log under {})",
                    self.addr(node),
                    self.data_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Runs `f` on a fresh cluster of `nodes` (plaintext clients, node i's
    /// client listener on `base_port + i - 1`, its cluster listener 100
    /// above) with its data in `data_dir`, cleared first and removed after;
    /// the cluster is stopped whatever `f` returns. What the benches use.
    pub async fn scratch<T>(
        nodes: u16,
        base_port: u16,
        data_dir: &Path,
        f: impl AsyncFnOnce(&mut LocalCluster) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir).with_context(|| format!("cannot clear {}", data_dir.display()))?;
        }
        let cluster_base = base_port.checked_add(100).context("--base-port leaves no room for the cluster ports")?;
        let mut cluster = Self::start(nodes, base_port, cluster_base, data_dir, false).await?;
        let result = f(&mut cluster).await;
        cluster.stop().await;
        let _ = std::fs::remove_dir_all(data_dir);
        result
    }

    /// Node `node`'s process id, while it runs.
    pub fn pid(&self, node: u16) -> Option<u32> {
        self.children.get(usize::from(node).checked_sub(1)?)?.as_ref()?.id()
    }

    /// Waits until a node exits on its own (killed, stopped, or failed) and
    /// reaps it; returns which and how it ended. Pends for ever once none
    /// runs.
    pub async fn next_exit(&mut self) -> (u16, std::process::ExitStatus) {
        loop {
            for (i, slot) in self.children.iter_mut().enumerate() {
                if let Some(child) = slot
                    && let Ok(Some(status)) = child.try_wait()
                {
                    *slot = None;
                    return (u16::try_from(i + 1).unwrap_or(u16::MAX), status);
                }
            }
            tokio::time::sleep(EXIT_CHECK_EVERY).await;
        }
    }

    /// SIGKILL of node `node`, waiting until it is gone.
    pub async fn kill(&mut self, node: u16) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[node as usize - 1].take() {
            child.kill().await.with_context(|| format!("cannot kill node {node}"))?;
        }
        Ok(())
    }

    /// SIGTERM to every node (each finishes what is in flight), then waits
    /// up to 15 s for each.
    pub async fn stop(mut self) {
        for child in self.children.iter().flatten() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
        }
        for child in self.children.iter_mut().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
        }
    }
}
