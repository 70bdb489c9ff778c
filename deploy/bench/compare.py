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
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def binary(name):
    path = os.path.join(target_dir(), "release", name)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run `cargo build --release -p strata -p strata-peer-bench` first")
    return path


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


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


def run_json(cmd):
    log("+", " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workdir", default="/var/tmp/strata-bench")
    ap.add_argument("--port", type=int, default=7979)
    ap.add_argument("--nats-port", type=int, default=4222)
    ap.add_argument("--batch", type=int, default=64, help="records per request (per publish window for JetStream)")
    ap.add_argument("--skip-fio", action="store_true")
    args = ap.parse_args()

    strata, peer = binary("strata"), binary("strata-peer-bench")
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    results = {"machine": machine(), "fio": [], "runs": []}

    if not args.skip_fio:
        for bs in ["64k", "256k", "1m"]:
            r = fio(args.workdir, bs, 10)
            log(f"fio {bs}: {r['mb_per_sec']:.0f} MB/s")
            results["fio"].append(r)

    server = subprocess.Popen(
        [strata, "server", "--listen", f"127.0.0.1:{args.port}", "--data-dir", os.path.join(args.workdir, "strata")],
        stderr=open(os.path.join(args.workdir, "strata.log"), "w"), env={**os.environ, "RUST_LOG": "warn"})
    env = {**os.environ, "PORT": str(args.nats_port), "DIR": os.path.join(args.workdir, "jetstream")}
    subprocess.run([os.path.join(ROOT, "deploy/bench/jetstream.sh")], check=True, env=env)
    try:
        wait_port(args.port)
        wait_port(args.nats_port)
        server_addr = f"127.0.0.1:{args.port}"
        workloads = [(p, c) for p in (1, 8) for c in (1, 16)]
        for rnd in range(args.rounds):
            for partitions, conc in workloads:
                common = ["--concurrency", str(conc), "--batch", str(args.batch), "--record-size", "1024",
                          "--duration", f"{args.duration}s", "--warmup", f"{args.warmup}s", "--format", "json"]
                topic = f"bench-r{rnd}-p{partitions}-c{conc}"
                s = run_json([strata, "bench", "produce", "--server", server_addr, "--topic", topic,
                              "--partitions", str(partitions)] + common)
                subprocess.run([strata, "topic", "delete", topic, "--server", server_addr], check=True,
                               capture_output=True)
                results["runs"].append({"system": "strata", "partitions": partitions, "concurrency": conc,
                                        "round": rnd, **s})
                j = run_json([peer, "jetstream", "--url", f"127.0.0.1:{args.nats_port}"] + common)
                results["runs"].append({"system": "jetstream", "partitions": partitions, "concurrency": conc,
                                        "round": rnd, **j})
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run([os.path.join(ROOT, "deploy/bench/jetstream.sh"), "stop"], env=env)
        shutil.rmtree(args.workdir, ignore_errors=True)

    print(report(results, args))
    with open(os.path.join(ROOT, "docs", "bench-results.json"), "w") as f:
        json.dump(results, f, indent=1)


def machine():
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": os.uname().release,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def report(results, args):
    lines = [f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"kernel {results['machine']['kernel']}, {results['machine']['date']}.", ""]
    if results["fio"]:
        lines += ["| fio sequential write, fdatasync after each write | MB/s | 1 KiB records/s |", "|---|---|---|"]
        for r in results["fio"]:
            lines.append(f"| bs={r['bs']} | {r['mb_per_sec']:.0f} | {r['records_per_sec_1k']:.0f} |")
        lines.append("")
    lines += [f"Medians of {args.rounds} alternating rounds, {args.duration} s each after {args.warmup} s warm-up; "
              f"1 KiB records, {args.batch} records per request (JetStream: {args.batch} publishes awaited together).",
              "", "| system | partitions | producers | in flight | records/s | MB/s | p50 ms | p99 ms | p99.9 ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["system"], r["partitions"], r["concurrency"]) for r in results["runs"]},
                  key=lambda k: (k[1], k[2], k[0] != "strata"))
    for system, p, c in keys:
        runs = [r for r in results["runs"] if (r["system"], r["partitions"], r["concurrency"]) == (system, p, c)]
        med = lambda f: statistics.median(r[f] for r in runs)
        pp = p if system == "strata" else "1 stream"
        lines.append(f"| {system} | {pp} | {c} | {c * args.batch} | {med('records_per_sec'):.0f} | "
                     f"{med('mb_per_sec'):.1f} | {med('latency_ms_p50'):.2f} | {med('latency_ms_p99'):.2f} | "
                     f"{med('latency_ms_p999'):.2f} |")
    lines += ["", "Strata fsyncs (fdatasync) before every acknowledgement. JetStream 2.9 as packaged by Debian "
              "acknowledges publishes without fsync (it syncs on an interval), so its figures are not durable ones."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
