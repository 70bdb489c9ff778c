#!/usr/bin/env python3
"""Side-by-side produce benchmark: Strata vs NATS JetStream, plus the disk's limit.

Runs on one machine, in one session, alternating the systems round by round (machines
here are noisy), and reports medians. Every Strata acknowledgement is fsync'd; Debian's
JetStream (2.9) does NOT fsync on publish (it syncs on an interval), which the report says.

    cargo build --release -p strata -p strata-peer-bench
    deploy/bench/compare.py --rounds 3 --duration 15 > docs/bench-run.md

Needs: fio (installed with apt-get if missing), nats-server (deploy/bench/jetstream.sh).
Data goes under --workdir (default /var/tmp/strata-bench, on disk, not tmpfs) and is
removed after each run.

--cluster 3 compares 3-node clusters on loopback (deploy/bench/cluster.py): 3 clustered
nats-server processes and a stream with 3 replicas (file storage) against 3 `strata server`
nodes and a topic with replication factor 3; each system's cluster is started afresh for
each round and stopped at its end. Its default workload is the 8-partition, 16-producer one:

    deploy/bench/compare.py --cluster 3 --rounds 3 --duration 10 --warmup 2 --skip-fio
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import cluster
from cluster import log, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def binary(name):
    path = os.path.join(target_dir(), "release", name)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run `cargo build --release -p strata -p strata-peer-bench` first")
    return path


def fio(workdir, bs, seconds):
    if shutil.which("fio") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "fio"], check=True)
    d = os.path.join(workdir, "fio")
    os.makedirs(d, exist_ok=True)
    out = subprocess.run(
        ["fio", "--name=seq-fdatasync", f"--directory={d}", "--rw=write", f"--bs={bs}", "--size=2g",
         "--fdatasync=1", "--ioengine=sync", f"--runtime={seconds}", "--time_based", "--output-format=json"],
        check=True, capture_output=True, text=True).stdout
    shutil.rmtree(d, ignore_errors=True)
    job = json.loads(out)["jobs"][0]["write"]
    return {"bs": bs, "mb_per_sec": job["bw_bytes"] / 1e6, "iops": job["iops"],
            "records_per_sec_1k": job["bw_bytes"] / 1024}


def run_json(cmd, timeout):
    log("+", " ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"command still running after {timeout} s (killed): {' '.join(cmd)}")
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def common_args(args, conc):
    """Load flags shared by `strata bench produce` and `strata-peer-bench jetstream`."""
    return ["--concurrency", str(conc), "--batch", str(args.batch), "--record-size", "1024",
            "--duration", f"{args.duration}s", "--warmup", f"{args.warmup}s", "--format", "json"]


def load_timeout(args):
    """Bound on one load run: its warm-up and duration plus setup (stream/topic creation) and slack."""
    return args.warmup + args.duration + 120


def strata_load(args, strata, server_addr, topic, partitions, conc, replication_factor=None):
    """One `strata bench produce` run against server_addr (a cluster's first node in cluster mode;
    the topic is then created with --replication-factor, a flag of the cluster CLI being built),
    then deletes the topic."""
    rf = [] if replication_factor is None else ["--replication-factor", str(replication_factor)]
    r = run_json([strata, "bench", "produce", "--server", server_addr, "--topic", topic,
                  "--partitions", str(partitions)] + rf + common_args(args, conc), load_timeout(args))
    subprocess.run([strata, "topic", "delete", topic, "--server", server_addr], check=True, capture_output=True,
                   timeout=120)
    return r


def jetstream_load(args, peer, url, conc, replicas=1):
    return run_json([peer, "jetstream", "--url", url, "--replicas", str(replicas)] + common_args(args, conc),
                    load_timeout(args))


def parse_workloads(text):
    out = []
    for item in text.split(","):
        p, _, c = item.partition(":")
        out.append((int(p), int(c)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workdir", default="/var/tmp/strata-bench")
    ap.add_argument("--port", type=int, default=7979, help="Strata's port (cluster mode: the first node's; "
                                                           "the others follow)")
    ap.add_argument("--nats-port", type=int, default=4222, help="NATS client port (cluster mode: the first "
                                                                 "server's; the others follow)")
    ap.add_argument("--nats-cluster-port", type=int, default=6222, help="cluster mode: the first nats-server's "
                                                                         "route port; the others follow")
    ap.add_argument("--nats-monitor-port", type=int, default=8222, help="cluster mode: the first nats-server's "
                                                                         "HTTP monitoring port; the others follow")
    ap.add_argument("--batch", type=int, default=64, help="records per request (per publish window for JetStream)")
    ap.add_argument("--cluster", type=int, default=1, choices=(1, 3),
                    help="1: one server per system (default); 3: 3-node clusters on loopback, replicas 3")
    ap.add_argument("--workloads", help="PARTITIONS:PRODUCERS,... (default 1:1,1:16,8:1,8:16; with --cluster 3, "
                                        "8:16); JetStream always uses one stream")
    ap.add_argument("--skip-strata", action="store_true", help="run JetStream only")
    ap.add_argument("--skip-fio", action="store_true")
    ap.add_argument("--json", help="where to write the raw results (default docs/bench-results.json; "
                                   "with --cluster 3, docs/bench-results-cluster3.json)")
    args = ap.parse_args()
    workloads = parse_workloads(args.workloads or ("1:1,1:16,8:1,8:16" if args.cluster == 1 else "8:16"))
    json_path = args.json or os.path.join(ROOT, "docs", "bench-results.json" if args.cluster == 1
                                          else f"bench-results-cluster{args.cluster}.json")

    peer = binary("strata-peer-bench")
    strata = None if args.skip_strata else binary("strata")
    if args.cluster > 1 and strata is not None and not cluster.strata_cluster_supported(strata):
        sys.exit(f"Strata cluster mode needs the cluster CLI (`strata server --node-id N --peers ...`), which "
                 f"{strata} does not have yet; run with --skip-strata to measure JetStream alone")
    if args.cluster > 1 and strata is None:
        log("--skip-strata: JetStream only (Strata cluster mode needs the cluster CLI, "
            "`strata server --node-id N --peers ...`)")
    # Ctrl-C (even when started in the background, which ignores SIGINT) and SIGTERM unwind
    # through the finally blocks that stop every server.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    results = {"machine": machine(), "cluster": args.cluster, "fio": [], "runs": []}
    try:
        if not args.skip_fio:
            for bs in ["64k", "256k", "1m"]:
                r = fio(args.workdir, bs, 10)
                log(f"fio {bs}: {r['mb_per_sec']:.0f} MB/s")
                results["fio"].append(r)
        if args.cluster == 1:
            run_single(args, strata, peer, workloads, results)
        else:
            run_cluster(args, strata, peer, workloads, results)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)

    print(report(results, args))
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    log(f"raw results: {json_path}")


def run_single(args, strata, peer, workloads, results):
    """One strata server and one nats-server (deploy/bench/jetstream.sh) for all rounds."""
    server = None
    if strata is not None:
        server = subprocess.Popen(
            [strata, "server", "--listen", f"127.0.0.1:{args.port}", "--data-dir",
             os.path.join(args.workdir, "strata")],
            stderr=open(os.path.join(args.workdir, "strata.log"), "w"), env={**os.environ, "RUST_LOG": "warn"})
    env = {**os.environ, "PORT": str(args.nats_port), "DIR": os.path.join(args.workdir, "jetstream")}
    try:
        subprocess.run([os.path.join(ROOT, "deploy/bench/jetstream.sh")], check=True, env=env)
        if server is not None:
            wait_port(args.port, procs=[server])
        wait_port(args.nats_port)
        server_addr = f"127.0.0.1:{args.port}"
        for rnd in range(args.rounds):
            for partitions, conc in workloads:
                tags = {"partitions": partitions, "concurrency": conc, "round": rnd}
                if server is not None:
                    s = strata_load(args, strata, server_addr, f"bench-r{rnd}-p{partitions}-c{conc}", partitions,
                                    conc)
                    results["runs"].append({"system": "strata", **tags, **s})
                j = jetstream_load(args, peer, f"127.0.0.1:{args.nats_port}", conc)
                results["runs"].append({"system": "jetstream", **tags, **j})
    finally:
        if server is not None:
            cluster.stop_all([server])
        subprocess.run([os.path.join(ROOT, "deploy/bench/jetstream.sh"), "stop"], env=env)


def run_cluster(args, strata, peer, workloads, results):
    """Each round: a fresh Strata cluster runs every workload and is stopped, then a fresh
    JetStream cluster does the same."""
    n = args.cluster
    for rnd in range(args.rounds):
        if strata is not None:
            addrs, procs = cluster.start_strata_cluster(n, os.path.join(args.workdir, f"strata-r{rnd}"), strata,
                                                        args.port)
            try:
                for partitions, conc in workloads:
                    s = strata_load(args, strata, addrs[0], f"bench-r{rnd}-p{partitions}-c{conc}", partitions, conc,
                                    replication_factor=n)
                    results["runs"].append({"system": "strata", "partitions": partitions, "concurrency": conc,
                                            "round": rnd, "replicas": n, **s})
            finally:
                cluster.stop_all(procs)
                shutil.rmtree(os.path.join(args.workdir, f"strata-r{rnd}"), ignore_errors=True)
        with cluster.NatsCluster(n, os.path.join(args.workdir, f"jetstream-r{rnd}"), args.nats_port,
                                 args.nats_cluster_port, args.nats_monitor_port) as nats:
            for partitions, conc in workloads:
                j = jetstream_load(args, peer, nats.url, conc, replicas=n)
                leader = nats.stream_leader("STRATA_PEER_BENCH")
                log(f"JetStream stream leader: {leader} (clients connect to n1)")
                results["runs"].append({"system": "jetstream", "partitions": partitions, "concurrency": conc,
                                        "round": rnd, "replicas": n, "stream_leader": leader, **j})


def machine():
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": os.uname().release,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def report(results, args):
    n = args.cluster
    lines = [f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"kernel {results['machine']['kernel']}, {results['machine']['date']}.", ""]
    if results["fio"]:
        lines += ["| fio sequential write, fdatasync after each write | MB/s | 1 KiB records/s |", "|---|---|---|"]
        for r in results["fio"]:
            lines.append(f"| bs={r['bs']} | {r['mb_per_sec']:.0f} | {r['records_per_sec_1k']:.0f} |")
        lines.append("")
    if n > 1:
        lines += [f"{n}-node clusters: each system runs as {n} server processes on this one machine, over loopback "
                  f"(127.0.0.1), sharing its {results['machine']['cores']} cores and one disk with each other and "
                  f"with the load generator; each system's cluster is started afresh every round. JetStream: "
                  f"nats-server {nats_version()}, one stream, file storage, replicas {n}; the load generator connects "
                  f"to n1 (the stream leader is whichever server the meta leader placed it on).", ""]
    lines += [f"Medians of {args.rounds} {'alternating ' if not args.skip_strata else ''}rounds, {args.duration} s "
              f"each after {args.warmup} s warm-up; 1 KiB records, {args.batch} records per request (JetStream: "
              f"{args.batch} publishes awaited together); latency is per request ({args.batch} records), from send to "
              f"the last acknowledgement.",
              "", "| system | partitions | producers | in flight | records/s | MB/s | p50 ms | p99 ms | p99.9 ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["system"], r["partitions"], r["concurrency"]) for r in results["runs"]},
                  key=lambda k: (k[1], k[2], k[0] != "strata"))
    for system, p, c in keys:
        runs = [r for r in results["runs"] if (r["system"], r["partitions"], r["concurrency"]) == (system, p, c)]
        med = lambda f: statistics.median(r[f] for r in runs)
        name = system if n == 1 else f"{system} {'RF' if system == 'strata' else 'R'}{n}"
        pp = p if system == "strata" else "1 stream"
        lines.append(f"| {name} | {pp} | {c} | {c * args.batch} | {med('records_per_sec'):.0f} | "
                     f"{med('mb_per_sec'):.1f} | {med('latency_ms_p50'):.2f} | {med('latency_ms_p99'):.2f} | "
                     f"{med('latency_ms_p999'):.2f} |")
    lines += ["", "Every round, records/s:", ""]
    for system, p, c in keys:
        runs = sorted((r for r in results["runs"] if (r["system"], r["partitions"], r["concurrency"]) == (system, p, c)),
                      key=lambda r: r["round"])
        extra = ""
        if any(r.get("stream_leader") for r in runs):
            extra = " (stream leader: " + ", ".join(str(r.get("stream_leader")) for r in runs) + ")"
        lines.append(f"- {system}, {p if system == 'strata' else '1 stream'}, {c} producers: "
                     + " / ".join(f"{r['records_per_sec']:.0f}" for r in runs) + extra)
    if n == 1:
        lines += ["", "Strata fsyncs (fdatasync) before every acknowledgement. JetStream 2.9 as packaged by Debian "
                  "acknowledges publishes without fsync (it syncs on an interval), so its figures are not durable "
                  "ones."]
    else:
        lines += ["", f"JetStream R{n} does NOT fsync on publish: a PubAck means the stream's Raft group committed the "
                  f"message (stored by a quorum of the {n} servers), written to their files (the OS page cache); each "
                  f"server syncs to disk on an interval (2 minutes by default), so these figures are not durable "
                  f"ones. All {n} servers are processes on one machine talking over loopback, so there is no network "
                  f"latency or bandwidth limit between replicas, and they compete for the same CPU and disk."]
        if args.skip_strata:
            lines += ["", "Strata was not run (--skip-strata): Strata's cluster mode needs the cluster CLI "
                      "(`strata server --node-id N --peers ...`), which is being built."]
        else:
            lines += ["", "Strata fsyncs (fdatasync) before every acknowledgement."]
    return "\n".join(lines)


def nats_version():
    res = subprocess.run([cluster.nats_server_binary(), "--version"], capture_output=True, text=True)
    return res.stdout.split()[-1] if res.returncode == 0 and res.stdout.split() else "(unknown version)"


if __name__ == "__main__":
    main()
