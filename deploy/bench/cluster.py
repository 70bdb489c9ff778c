"""Clusters of N server processes on loopback for `compare.py --cluster N`.

- NATS JetStream: `NatsCluster`, N nats-server processes (server names n1..nN, one cluster),
  each with its own config file, store directory, client, cluster (route) and monitoring port.
- Strata: `start_strata_cluster`, N `strata server --node-id I --peers ...` processes. That CLI
  is being built; `strata_cluster_supported` says whether the given binary has it.

Every process started here is stopped by `stop_all` (SIGTERM, then SIGKILL after a grace
period); callers use try/finally (or the context manager) so that errors and Ctrl-C leave
no server behind. Only 127.0.0.1 is used.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

HOST = "127.0.0.1"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def listening(port):
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def wait_port(port, seconds=60, procs=()):
    """Waits until something accepts connections on 127.0.0.1:port; exits if one of `procs` dies."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if listening(port):
            return
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"{' '.join(p.args)} exited with {p.returncode} before 127.0.0.1:{port} listened")
        time.sleep(0.1)
    sys.exit(f"nothing listens on {HOST}:{port} after {seconds} s")


def require_free(ports):
    busy = [p for p in ports if listening(p)]
    if busy:
        sys.exit(f"something already listens on {HOST} port(s) {', '.join(map(str, busy))}; pick other ports")


def stop_all(procs, grace=20):
    """SIGTERM to every process still running, then SIGKILL to any left after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            log(f"{p.args[0]} (pid {p.pid}) still runs {grace} s after SIGTERM; killing it")
            p.kill()
            p.wait()


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# NATS JetStream


def nats_server_binary():
    path = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if path is None:
        log("nats-server is missing: installing the Debian package")
        if subprocess.run(["apt-get", "install", "-y", "-qq", "nats-server"]).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "nats-server"], check=True)
        path = shutil.which("nats-server") or "/usr/sbin/nats-server"
    return path


def nats_config(name, cluster_name, client_port, cluster_port, monitor_port, route_ports, store_dir):
    routes = "\n".join(f"    nats-route://{HOST}:{p}" for p in route_ports)
    return f"""# written by deploy/bench/cluster.py
server_name: {name}
listen: {HOST}:{client_port}
http: {HOST}:{monitor_port}
jetstream {{
  store_dir: "{store_dir}"
  max_memory_store: 256MB
  max_file_store: 16GB
}}
cluster {{
  name: {cluster_name}
  listen: {HOST}:{cluster_port}
  routes: [
{routes}
  ]
}}
"""


def http_json(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class NatsCluster:
    """N clustered nats-server processes with JetStream; `with NatsCluster(...) as c:` starts them,
    waits for a JetStream meta leader known to every server, and stops them all on exit."""

    def __init__(self, n, workdir, client_port=4222, cluster_port=6222, monitor_port=8222, name="strata-bench"):
        self.n, self.workdir, self.name = n, workdir, name
        self.client_ports = [client_port + i for i in range(n)]
        self.cluster_ports = [cluster_port + i for i in range(n)]
        self.monitor_ports = [monitor_port + i for i in range(n)]
        self.procs = []

    @property
    def url(self):
        """The first server's address; clients learn the others from it (INFO connect_urls)."""
        return f"{HOST}:{self.client_ports[0]}"

    def start(self):
        server = nats_server_binary()
        require_free(self.client_ports + self.cluster_ports + self.monitor_ports)
        os.makedirs(self.workdir, exist_ok=True)
        for i in range(self.n):
            name = f"n{i + 1}"
            conf = os.path.join(self.workdir, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(nats_config(name, self.name, self.client_ports[i], self.cluster_ports[i],
                                    self.monitor_ports[i], [p for j, p in enumerate(self.cluster_ports) if j != i],
                                    os.path.join(self.workdir, name)))
            self.procs.append(subprocess.Popen([server, "-c", conf], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL,
                                               stderr=open(os.path.join(self.workdir, f"{name}.log"), "w")))
        for port in self.client_ports:
            wait_port(port, 20, self.procs)
        leader = self.wait_meta_leader()
        log(f"JetStream cluster {self.name}: {self.n} servers on {HOST}:{self.client_ports[0]}-{self.client_ports[-1]}, "
            f"meta leader {leader}")
        return self

    def wait_meta_leader(self, seconds=60):
        """Waits until every server's /jsz names the same meta leader, of a cluster of N, and the
        leader sees its N-1 followers as current (only the leader's /jsz lists them)."""
        deadline = time.time() + seconds
        last = None
        while time.time() < deadline:
            self.check_alive()
            try:
                metas = [http_json(f"http://{HOST}:{p}/jsz").get("meta_cluster") or {} for p in self.monitor_ports]
                last = metas
                leaders = {m.get("leader") for m in metas}
                if len(leaders) == 1 and leaders.pop() and all(m.get("cluster_size", 0) >= self.n for m in metas):
                    leader = metas[0]["leader"]
                    followers = metas[int(leader[1:]) - 1].get("replicas") or []
                    if sum(1 for r in followers if r.get("current")) >= self.n - 1:
                        return leader
            except (OSError, ValueError) as e:
                last = e
            time.sleep(0.2)
        logs = "".join(f"--- n{i + 1}.log:\n{tail(os.path.join(self.workdir, f'n{i + 1}.log'))}" for i in range(self.n))
        self.stop()
        sys.exit(f"JetStream cluster has no meta leader known to all {self.n} servers after {seconds} s "
                 f"(last /jsz meta_cluster: {last})\n{logs}")

    def check_alive(self):
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                log_path = os.path.join(self.workdir, f"n{i + 1}.log")
                msg = f"nats-server n{i + 1} exited with {p.returncode}; last lines of {log_path}:\n{tail(log_path)}"
                self.stop()
                sys.exit(msg)

    def stream_leader(self, stream):
        """The server that leads `stream` (from n1's /jsz), or None."""
        try:
            jsz = http_json(f"http://{HOST}:{self.monitor_ports[0]}/jsz?streams=true")
            for acc in jsz.get("account_details") or []:
                for s in acc.get("stream_detail") or []:
                    if s.get("name") == stream:
                        return (s.get("cluster") or {}).get("leader")
        except OSError:
            pass
        return None

    def stop(self):
        stop_all(self.procs)
        self.procs = []

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Strata


def strata_cluster_supported(strata):
    """Whether `strata server` has the cluster flags (--node-id, --peers)."""
    res = subprocess.run([strata, "server", "--help"], capture_output=True, text=True)
    return res.returncode == 0 and "--node-id" in res.stdout and "--peers" in res.stdout


SECURE_ADMIN = ("admin", "bench-admin-password")


def start_strata_cluster(n, workdir, strata, base_port=7979, insecure_cluster=False, secure_clients=False,
                         node_args=None, extra_env=None):
    """Starts N `strata server` processes on 127.0.0.1:base_port.. with node ids 1..N, their
    cluster listeners on base_port+100.., and the same --peers list each (the cluster listeners),
    data in workdir/nI; returns (addresses, processes) once every node listens. Nodes talk over
    mutual TLS with certificates made by `strata certs` in workdir/tls, or, with
    insecure_cluster, in plaintext (--insecure-cluster). With secure_clients, the client
    listeners serve TLS (workdir/tls/server.crt, trusted through workdir/tls/ca.crt) and require
    authentication; the superuser SECURE_ADMIN is bootstrapped. The caller stops them with
    stop_all(processes) in a finally block. node_args(i) gives extra flags of node i (0-based);
    extra_env, extra environment variables of every node."""
    addrs = [f"{HOST}:{base_port + i}" for i in range(n)]
    cluster_ports = [base_port + 100 + i for i in range(n)]
    require_free([base_port + i for i in range(n)] + cluster_ports)
    peers = ",".join(f"{i + 1}={HOST}:{p}" for i, p in enumerate(cluster_ports))
    os.makedirs(workdir, exist_ok=True)
    tls = os.path.join(workdir, "tls")
    ca = os.path.join(workdir, "ca")
    if not insecure_cluster or secure_clients:
        subprocess.run([strata, "certs", "ca", "--dir", ca, "--force"], check=True, stdout=subprocess.DEVNULL)
    if insecure_cluster:
        security = ["--insecure-cluster"]
    else:
        for i in range(n):
            subprocess.run([strata, "certs", "node", "--node-id", str(i + 1), "--ca-dir", ca, "--dir", tls,
                            "--force"], check=True, stdout=subprocess.DEVNULL)
        security = ["--cluster-tls-dir", tls]
    env = {**os.environ, "RUST_LOG": "warn", **(extra_env or {})}
    if secure_clients:
        subprocess.run([strata, "certs", "server", "--host", HOST, "--ca-dir", ca, "--dir", tls, "--force"],
                       check=True, stdout=subprocess.DEVNULL)
        security += ["--tls-cert", os.path.join(tls, "server.crt"), "--tls-key", os.path.join(tls, "server.key"),
                     "--require-auth"]
        env["STRATA_BOOTSTRAP_USER"] = ":".join(SECURE_ADMIN)
    procs = []
    try:
        for i, addr in enumerate(addrs):
            procs.append(subprocess.Popen(
                [strata, "server", "--node-id", str(i + 1), "--listen", addr, "--peers", peers,
                 "--data-dir", os.path.join(workdir, f"n{i + 1}")] + security
                + (node_args(i) if node_args else []),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(workdir, f"n{i + 1}.log"), "w"), env=env))
        for i in range(n):
            wait_port(base_port + i, 60, procs)
    except BaseException:
        stop_all(procs)
        raise
    log(f"Strata cluster: {n} nodes on {addrs[0]}-{addrs[-1]}")
    return addrs, procs
