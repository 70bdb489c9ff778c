//! Runs the real `strata` binary: servers as child processes on loopback
//! ports, and CLI commands.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_strata");

/// The seed of a test's random choices: `STRATA_TEST_SEED` to reproduce a
/// run, else the clock; printed either way.
pub fn seed() -> u64 {
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| strata_record::now_ms() as u64);
    eprintln!("STRATA_TEST_SEED={seed}");
    seed
}

/// How long the cluster tests wait for any one condition.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` until it is true, at most [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader of partition `p` of `topic`, once one is known (at most
/// [`WAIT`]).
pub async fn leader_of(client: &strata_client::Client, topic: &str, p: u32) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let meta = client.metadata(&[topic]).await;
        let leader = meta.ok().and_then(|m| m.topics.first().map(|t| t.partitions[p as usize].leader));
        match leader {
            Some(l) if l != 0 => return l,
            _ => assert!(std::time::Instant::now() < deadline, "no leader of {topic}/{p} after {WAIT:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `strata server` child process; killed with SIGKILL when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// The last [`KEPT_LINES`] lines it printed to stderr.
    pub lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    /// The thread reading its stderr (it ends when the process exits).
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Lines of a server's stderr a test keeps (the last ones).
pub const KEPT_LINES: usize = 10_000;

/// Free loopback ports (each bound, then released for a server to take).
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port_run(1)).collect()
}

/// A loopback cluster's ports and certificates: node i+1 serves clients on
/// `client[i]` and its peers on `cluster[i]`, with mutual TLS from the
/// certificates in `tls` (made with `strata certs`, as an operator would).
#[derive(Clone)]
pub struct ClusterPorts {
    pub client: Vec<u16>,
    pub cluster: Vec<u16>,
    pub tls: std::sync::Arc<tempfile::TempDir>,
}

impl ClusterPorts {
    pub fn new(n: usize) -> Self {
        let ports = free_ports(2 * n);
        // The CA in `ca/`, what nodes read in `node/` (as an operator keeps
        // the CA's key off the nodes).
        let tls = tempfile::tempdir().expect("tempdir");
        let ca = tls.path().join("ca").to_str().expect("utf-8 path").to_owned();
        let dir = tls.path().join("node").to_str().expect("utf-8 path").to_owned();
        run_ok(&["certs", "ca", "--dir", &ca]);
        for id in 1..=n {
            run_ok(&["certs", "node", "--node-id", &id.to_string(), "--ca-dir", &ca, "--dir", &dir]);
        }
        Self { client: ports[..n].to_vec(), cluster: ports[n..].to_vec(), tls: std::sync::Arc::new(tls) }
    }

    pub fn len(&self) -> usize {
        self.client.len()
    }

    /// Node `id`'s client address.
    pub fn addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.client[id as usize - 1])
    }

    /// Node `id`'s cluster listener address.
    pub fn cluster_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.cluster[id as usize - 1])
    }

    /// Every node's client address, comma-separated (a `--server` list).
    pub fn bootstrap(&self) -> String {
        (1..=self.len() as u64).map(|id| self.addr(id)).collect::<Vec<_>>().join(",")
    }

    /// The `--peers` list: every node's cluster listener.
    pub fn peers_arg(&self) -> String {
        (1..=self.len() as u64).map(|id| format!("{id}={}", self.cluster_addr(id))).collect::<Vec<_>>().join(",")
    }

    /// The nodes' certificate folder (ca.crt, node-ID.crt, node-ID.key).
    pub fn tls_dir(&self) -> PathBuf {
        self.tls.path().join("node")
    }

    /// The CA's folder (ca.crt, ca.key).
    pub fn ca_dir(&self) -> PathBuf {
        self.tls.path().join("ca")
    }

    /// `strata server` arguments of node `id` (without `--data-dir`).
    pub fn server_args(&self, id: u64) -> Vec<String> {
        let tls = self.tls_dir().to_str().expect("utf-8 path").to_owned();
        ["server", "--node-id", &id.to_string(), "--listen", &self.addr(id), "--peers", &self.peers_arg()]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["--cluster-tls-dir".to_owned(), tls])
            .collect()
    }
}

/// Runs `strata ARGS`, which must succeed.
pub fn run_ok(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().expect("run strata");
    assert!(out.status.success(), "strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl ServerProcess {
    /// Starts a server on an ephemeral loopback port and waits until it
    /// prints the address it listens on.
    pub fn start(data_dir: &Path) -> Self {
        Self::spawn(&["server", "--listen", "127.0.0.1:0"], data_dir)
    }

    /// Like [`ServerProcess::start`], with extra environment variables.
    pub fn start_with(data_dir: &Path, env: &[(String, String)]) -> Self {
        Self::spawn_with(&["server", "--listen", "127.0.0.1:0"], data_dir, env)
    }

    /// Starts node `node_id` of the loopback cluster `ports`.
    pub fn start_node(data_dir: &Path, node_id: u64, ports: &ClusterPorts) -> Self {
        Self::start_node_with(data_dir, node_id, ports, &[])
    }

    /// Like [`ServerProcess::start_node`], with extra environment variables
    /// (e.g. `STRATA_RETENTION_CHECK_INTERVAL_MS`).
    pub fn start_node_with(data_dir: &Path, node_id: u64, ports: &ClusterPorts, env: &[(String, String)]) -> Self {
        let args = ports.server_args(node_id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn_with(&args, data_dir, env)
    }

    fn spawn(args: &[&str], data_dir: &Path) -> Self {
        Self::spawn_with(args, data_dir, &[])
    }

    /// `strata ARGS --data-dir DATA_DIR` with `env`, once it listens.
    pub fn spawn_with(args: &[&str], data_dir: &Path, env: &[(String, String)]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let kept = std::sync::Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(" listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = tx.send(addr);
                }
                eprintln!("[server] {line}");
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("server printed its address within 60 s");
        Self { child, addr, data_dir: data_dir.to_owned(), lines, reader: Some(reader) }
    }

    /// SIGTERM, then waits (at most `within`) for the process to exit;
    /// returns its exit status and what it printed.
    pub fn terminate(mut self, within: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM");
        let deadline = std::time::Instant::now() + within;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                break exit;
            }
            assert!(std::time::Instant::now() < deadline, "the server did not exit within {within:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader has every line once the pipe closes with the process.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader");
        }
        let lines = self.lines.lock().expect("lines").iter().cloned().collect();
        (exit, lines)
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `strata ARGS` against `server`, feeding `stdin`.
pub fn strata(server: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("STRATA_SERVER", server)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("strata output")
}

/// Like [`strata`], but the command must succeed; returns stdout.
pub fn ok(server: &str, args: &[&str], stdin: &str) -> String {
    let out = strata(server, args, stdin);
    assert!(
        out.status.success(),
        "strata {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// A port `p` such that `p`, `p + 1`, ... `p + n - 1` are free on loopback
/// (each bound, then released for a server to take).
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`): a port
/// the kernel handed out for `127.0.0.1:0` could, once released, become the
/// local port of some outgoing connection (a node dialling its peers) before
/// the server that is to listen on it starts. Ports below that range are
/// never given to outgoing connections. Within a test process no port is
/// handed out twice (one counter for all); each process starts at its own
/// place (by its id), so two test processes rarely meet.
pub fn free_port_run(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n32 = u32::from(n.max(1));
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    // An ephemeral range reaching down near LOWEST leaves no room below it:
    // then any port above LOWEST (the race above is possible again).
    let top = if (LOWEST + 1_000..=65_536).contains(&ephemeral) { ephemeral } else { 65_536 };
    let span = top - LOWEST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span / n32 {
        let base = LOWEST + (start + NEXT.fetch_add(n32, Ordering::Relaxed)) % span;
        if base + n32 > top {
            continue;
        }
        let all_free =
            (base..base + n32).map(|p| std::net::TcpListener::bind(("127.0.0.1", p as u16))).all(|l| l.is_ok());
        if all_free {
            return base as u16;
        }
    }
    panic!("no run of {n} free ports between {LOWEST} and {top}");
}

/// A `strata dev` process, stopped with Ctrl-C (SIGINT) when dropped, so a
/// failing test does not leave its nodes running.
pub struct Dev(pub std::process::Child);

impl Dev {
    pub fn interrupt(&self) {
        let status = std::process::Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        assert!(status.expect("run kill").success(), "kill -INT strata dev");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = std::process::Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
            let deadline = std::time::Instant::now() + WAIT;
            while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `GET PATH` at `addr` (one request, `Connection: close`): the status and
/// the body (chunked transfer decoded).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let at: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&at, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8(body).map_err(|e| e.to_string())?))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("a truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("a truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A cluster of real `strata server` processes on loopback ports.
pub struct Cluster {
    pub ports: ClusterPorts,
    pub nodes: Vec<Option<ServerProcess>>,
    /// Environment every node starts with.
    pub env: Vec<(String, String)>,
    pub _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    pub fn start_with(n: usize, env: &[(&str, &str)]) -> Self {
        let ids: Vec<u64> = (1..=n as u64).collect();
        Self::start_nodes(n, &ids, env)
    }

    /// A cluster of `n` members of which only `ids` are started (the rest
    /// start with [`Cluster::restart`]).
    pub fn start_nodes(n: usize, ids: &[u64], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = ClusterPorts::new(n);
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let nodes = (1..=n as u64)
            .map(|id| {
                ids.contains(&id).then(|| ServerProcess::start_node_with(&Self::dir_of(&dir, id), id, &ports, &env))
            })
            .collect();
        Self { ports, nodes, env, _dir: dir }
    }

    pub fn dir_of(dir: &tempfile::TempDir, id: u64) -> std::path::PathBuf {
        dir.path().join(format!("node-{id}"))
    }

    pub fn addr(&self, id: u64) -> String {
        self.ports.addr(id)
    }

    pub fn bootstrap(&self) -> String {
        self.ports.bootstrap()
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.kill();
        }
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) {
        let node = self.nodes[id as usize - 1].as_ref().expect("node runs");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(node.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} node {id}");
    }

    /// SIGTERM to node `id`; its exit status and what it printed.
    pub fn stop(&mut self, id: u64) -> (std::process::ExitStatus, Vec<String>) {
        let node = self.nodes[id as usize - 1].take().expect("node runs");
        node.terminate(Duration::from_secs(90))
    }

    /// Starts node `id` (again).
    pub fn restart(&mut self, id: u64) {
        let node = ServerProcess::start_node_with(&Self::dir_of(&self._dir, id), id, &self.ports, &self.env);
        self.nodes[id as usize - 1] = Some(node);
    }
}

/// Every record of a partition (from its log start), by offset, read from
/// its leader.
pub async fn read_all(client: &strata_client::Client, topic: &str, p: u32) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let earliest = client.list_offsets(topic, &[p], strata_client::proto::OffsetSpec::Earliest, 0).await;
    let mut offset = earliest.expect("earliest offset")[0].offset;
    loop {
        let chunk = client.fetch(topic, p, offset, 1 << 20, Duration::ZERO).await.expect("fetch");
        if chunk.records.is_empty() {
            return out;
        }
        out.extend(chunk.records.iter().map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned())));
        offset = chunk.next_offset;
    }
}

pub fn one_record(value: &str) -> bytes::Bytes {
    let record =
        strata_client::Record { value: bytes::Bytes::from(value.to_owned()), timestamp_ms: 1, ..Default::default() };
    strata_record::encode(&[record], strata_client::Compression::None)
}

/// Records acknowledged, as (partition, offset, value).
pub type Acked = std::sync::Arc<std::sync::Mutex<Vec<(u32, u64, String)>>>;

/// One producer per partition of a topic (the client's routed produce,
/// acks=quorum), each sending unique values `p{P}-{N}` one at a time until
/// stopped, keeping what was acknowledged and every error it saw.
pub struct Producers {
    acked: Acked,
    count: tokio::sync::watch::Receiver<usize>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Producers {
    pub fn start(client: &strata_client::Client, topic: &'static str, partitions: u32) -> Self {
        let acked: Acked = Acked::default();
        let (count_tx, count) = tokio::sync::watch::channel(0usize);
        let count_tx = std::sync::Arc::new(count_tx);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let tasks = (0..partitions)
            .map(|p| {
                let (client, acked, count_tx, stop) =
                    (client.clone(), std::sync::Arc::clone(&acked), std::sync::Arc::clone(&count_tx), stop_rx.clone());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    // Bounded: a test stops them long before.
                    for n in 0..1_000_000u64 {
                        if *stop.borrow() {
                            break;
                        }
                        let value = format!("p{p}-{n}");
                        match client.produce_batch(topic, p, one_record(&value)).await {
                            Ok(offset) => {
                                acked.lock().expect("lock").push((p, offset, value));
                                count_tx.send_modify(|c| *c += 1);
                            }
                            Err(e) => errors.push(format!("partition {p}, {value}: {e}")),
                        }
                    }
                    errors
                })
            })
            .collect();
        Self { acked, count, stop, tasks }
    }

    /// Records acknowledged so far, in all.
    pub fn acknowledged(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits (at most [`WAIT`]) until `n` records were acknowledged in all.
    pub async fn wait_for(&mut self, n: usize) {
        tokio::time::timeout(WAIT, self.count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} records not acknowledged within {WAIT:?}"))
            .expect("producers' counter");
    }

    /// Stops them: every error they saw, and every record acknowledged.
    pub async fn stop(self) -> (Vec<String>, Vec<(u32, u64, String)>) {
        self.stop.send_replace(true);
        let mut errors = Vec::new();
        for task in self.tasks {
            errors.extend(task.await.expect("producer"));
        }
        let acked = self.acked.lock().expect("lock").clone();
        (errors, acked)
    }
}

/// Every acknowledged record of `acked` is stored at its offset.
pub async fn assert_stored(client: &strata_client::Client, topic: &str, partitions: u32, acked: &[(u32, u64, String)]) {
    for p in 0..partitions {
        let stored: std::collections::HashMap<u64, String> = read_all(client, topic, p).await.into_iter().collect();
        for (_, offset, value) in acked.iter().filter(|(q, _, _)| *q == p) {
            assert_eq!(
                stored.get(offset),
                Some(value),
                "partition {p}: acknowledged {value} missing at offset {offset}"
            );
        }
    }
}
