#!/usr/bin/env python3
"""What mutual TLS between nodes costs produce throughput: the same release build, the issue-3
workload (1 KiB records, --batch records per request, 16 producers, 8 partitions, acks=quorum),
on a cluster whose nodes talk over mutual TLS and on one started with --insecure-cluster,
alternating round by round on fresh clusters:

- 3 nodes, replication factor 3 (every entry crosses two TLS connections);
- 1 node with a cluster listener (--peers of itself; no replication traffic: the baseline cost of
  having TLS configured at all).

    cargo build --release -p strata
    deploy/bench/tls-cost.py --rounds 3 --duration 10 --warmup 2

Prints a Markdown table (medians per mode) and writes the raw runs as JSON (--json)."""

import argparse
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster  # noqa: E402
from compare import binary, machine, strata_load  # noqa: E402

MODES = [("3 nodes, RF 3", 3, False), ("3 nodes, RF 3", 3, True), ("1 node", 1, False), ("1 node", 1, True)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--port", type=int, default=7979)
    ap.add_argument("--workdir", default="/var/tmp/strata-tls-cost")
    ap.add_argument("--json", default=None, help="where to write the raw runs")
    args = ap.parse_args()
    strata = binary("strata")
    runs = []
    for rnd in range(args.rounds):
        for name, n, insecure in MODES:
            work = os.path.join(args.workdir, f"r{rnd}-{n}-{'plain' if insecure else 'tls'}")
            shutil.rmtree(work, ignore_errors=True)
            addrs, procs = cluster.start_strata_cluster(n, work, strata, args.port, insecure_cluster=insecure)
            try:
                r = strata_load(args, strata, addrs[0], f"tls-r{rnd}", args.partitions, args.concurrency,
                                replication_factor=n)
            finally:
                cluster.stop_all(procs)
                shutil.rmtree(work, ignore_errors=True)
            cluster.log(f"round {rnd} {name} {'insecure' if insecure else 'mTLS'}: "
                        f"{r['records_per_sec']:.0f} records/s, p99 {r['latency_ms_p99']:.1f} ms")
            runs.append({"mode": name, "nodes": n, "tls": not insecure, "round": rnd, **r})
    results = {"machine": machine(), "args": vars(args), "runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(report(results))


def report(results):
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, {m['date']}.", "",
             "| cluster | node-to-node | records/s | MB/s | p50 ms | p99 ms | TLS against plaintext |",
             "|---|---|---|---|---|---|---|"]
    for name, n, _ in MODES[::2]:
        med = {}
        for tls in (True, False):
            rs = [r for r in results["runs"] if r["nodes"] == n and r["tls"] == tls]
            med[tls] = {k: statistics.median(r[k] for r in rs) for k in ("records_per_sec", "mb_per_sec")}
            med[tls]["p50"] = statistics.median(r["latency_ms_p50"] for r in rs)
            med[tls]["p99"] = statistics.median(r["latency_ms_p99"] for r in rs)
        for tls in (True, False):
            d = med[tls]
            change = "" if not tls else f"{100 * (d['records_per_sec'] / med[False]['records_per_sec'] - 1):+.1f}%"
            lines.append(f"| {name} | {'mutual TLS' if tls else 'plaintext (--insecure-cluster)'} | "
                         f"{d['records_per_sec']:.0f} | {d['mb_per_sec']:.1f} | {d['p50']:.1f} | {d['p99']:.1f} | "
                         f"{change} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
