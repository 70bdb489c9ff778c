#!/usr/bin/env python3
"""What client security costs: produce and consume throughput with TLS on the client listeners,
authentication and ACLs on (`--tls-cert --tls-key --require-auth`; the load runs as an ordinary
user with an API token, whose every request is authenticated and checked against prefixed ACLs)
against all of it off, the same release build, alternating round by round on fresh clusters:

- 1 node;
- 3 nodes, replication factor 3.

The workload is the issue-3 one (1 KiB records, --batch records per request, 16 producers, 8
partitions, acks=quorum); then `strata bench consume` reads what was produced.

    cargo build --release -p strata
    deploy/bench/security-cost.py --rounds 3 --duration 10 --warmup 2

Prints a Markdown table (medians per mode) and writes the raw runs as JSON (--json)."""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster  # noqa: E402
from compare import binary, common_args, load_timeout, machine, run_json  # noqa: E402

MODES = [("1 node", 1, False), ("1 node", 1, True), ("3 nodes, RF 3", 3, False), ("3 nodes, RF 3", 3, True)]


def cli(strata, args, env, check=True):
    return subprocess.run([strata] + args, env=env, check=check, capture_output=True, text=True, timeout=120)


def secure_env(strata, work, server):
    """A user `bench` allowed create/write/read/delete on topics prefixed `sec-`, and its token;
    returns the environment its commands run with."""
    admin = {**os.environ, "STRATA_SERVER": server, "STRATA_TLS_CA": os.path.join(work, "tls", "ca.crt"),
             "STRATA_USER": cluster.SECURE_ADMIN[0], "STRATA_PASSWORD": cluster.SECURE_ADMIN[1]}
    for _ in range(300):
        if cli(strata, ["whoami"], admin, check=False).returncode == 0:
            break
        time.sleep(0.1)
    cli(strata, ["user", "create", "bench", "--password", "bench-password-1"], admin)
    cli(strata, ["acl", "create", "--allow-principal", "User:bench", "--operation", "create,write,read,delete",
                 "--topic", "sec-", "--resource-pattern-type", "prefixed"], admin)
    token = cli(strata, ["token", "create", "--user", "bench"], admin).stdout.strip()
    env = {k: v for k, v in admin.items() if k not in ("STRATA_USER", "STRATA_PASSWORD")}
    env["STRATA_TOKEN"] = token
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--port", type=int, default=7979)
    ap.add_argument("--workdir", default="/var/tmp/strata-security-cost")
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=None, help="only clusters of this many nodes")
    ap.add_argument("--json", default=None, help="where to write the raw runs")
    args = ap.parse_args()
    strata = binary("strata")
    runs = []
    for rnd in range(args.rounds):
        for name, n, secure in MODES:
            if args.nodes is not None and n != args.nodes:
                continue
            work = os.path.join(args.workdir, f"r{rnd}-{n}-{'on' if secure else 'off'}")
            shutil.rmtree(work, ignore_errors=True)
            addrs, procs = cluster.start_strata_cluster(n, work, strata, args.port, secure_clients=secure)
            try:
                server = addrs[0]
                env = secure_env(strata, work, server) if secure else {**os.environ, "STRATA_SERVER": server}
                os.environ.update({k: v for k, v in env.items() if k.startswith("STRATA_")})
                topic = f"sec-r{rnd}"
                produced = run_json([strata, "bench", "produce", "--topic", topic, "--partitions",
                                     str(args.partitions), "--replication-factor", str(n)]
                                    + common_args(args, args.concurrency), load_timeout(args))
                consumed = run_json([strata, "bench", "consume", "--topic", topic, "--duration",
                                     f"{args.duration}s", "--format", "json"], load_timeout(args))
            finally:
                for k in ("STRATA_SERVER", "STRATA_TLS_CA", "STRATA_TOKEN"):
                    os.environ.pop(k, None)
                cluster.stop_all(procs)
                shutil.rmtree(work, ignore_errors=True)
            cluster.log(f"round {rnd} {name} security {'on' if secure else 'off'}: produce "
                        f"{produced['records_per_sec']:.0f} records/s (p99 {produced['latency_ms_p99']:.1f} ms), "
                        f"consume {consumed['records_per_sec']:.0f} records/s")
            runs.append({"mode": name, "nodes": n, "secure": secure, "round": rnd, "produce": produced,
                         "consume": consumed})
    results = {"machine": machine(), "args": vars(args), "runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    m = results["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, {m['date']}.\n")
    print("| cluster | produce off | produce on | change | consume off | consume on | change |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["mode"] for r in runs):
        med = {}
        for secure in (False, True):
            sel = [r for r in runs if r["mode"] == name and r["secure"] == secure]
            med[secure] = (statistics.median(r["produce"]["records_per_sec"] for r in sel),
                           statistics.median(r["consume"]["records_per_sec"] for r in sel))
        change = [100.0 * (med[True][i] / med[False][i] - 1.0) for i in range(2)]
        print(f"| {name} | {med[False][0]:,.0f} | {med[True][0]:,.0f} | {change[0]:+.1f}% | "
              f"{med[False][1]:,.0f} | {med[True][1]:,.0f} | {change[1]:+.1f}% |")


if __name__ == "__main__":
    main()
