#!/usr/bin/env python3
"""What observability costs, and what a scrape of many partitions costs, with the same release build:

1. Produce throughput on 3 nodes (replication factor 3; --nodes 1: one node) with metrics on (every node's /metrics
   scraped every --scrape-every seconds, as Prometheus would) and traces exported over OTLP at 1%
   (parentbased_traceidratio 0.01, to otlp_sink.py, a real OTLP/gRPC receiver) against both off
   (`--metrics-listen ""`, no endpoint), alternating round by round on fresh clusters. The
   workload is the issue-3 one (1 KiB records, --batch records per request, 16 producers,
   8 partitions, acks=quorum).
2. With --scrape-partitions N: one node holding N partitions (topics of 100 partitions each),
   idle; the time of a scrape (median of 5) and the number of series, labelled per topic and
   per partition (`STRATA_METRICS_PARTITION_LABELS=true`).

    cargo build --release -p strata
    deploy/bench/observability-cost.py --rounds 4 --duration 10 --warmup 2
    deploy/bench/observability-cost.py --rounds 0 --scrape-partitions 3000

Prints Markdown tables and writes the raw runs as JSON (--json)."""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster  # noqa: E402
from compare import binary, common_args, load_timeout, machine, run_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SINK_REQUIREMENTS = ["grpcio==1.68.1", "opentelemetry-proto==1.29.0"]


def sink_python():
    """A virtualenv with the sink's requirements (made once)."""
    venv = os.path.expanduser("~/.cache/strata/benchvenv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q"] + SINK_REQUIREMENTS, check=True)
    return py


def start_sink(py, port):
    proc = subprocess.Popen([py, "-u", os.path.join(HERE, "otlp_sink.py"), "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening"):
        proc.kill()
        sys.exit(f"the OTLP sink did not start: {line!r}")
    return proc


def stop_sink(proc):
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return int(out.split()[-1]) if out.strip() else 0


def scrape(url):
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read().decode()
    return time.monotonic() - started, body


def series(body):
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


class Scraper(threading.Thread):
    """GETs every URL every `every` seconds until stopped; keeps the durations."""

    def __init__(self, urls, every):
        super().__init__(daemon=True)
        self.urls, self.every, self.stop, self.times = urls, every, threading.Event(), []

    def run(self):
        while not self.stop.wait(self.every):
            for u in self.urls:
                try:
                    self.times.append(scrape(u)[0])
                except OSError as e:
                    cluster.log(f"scrape of {u} failed: {e}")


def cpu_seconds(procs):
    """User and system CPU seconds the processes used so far (/proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def throughput(args, strata):
    py = sink_python()
    runs = []
    for rnd in range(args.rounds):
        for on in (False, True):
            work = os.path.join(args.workdir, f"r{rnd}-{'on' if on else 'off'}")
            shutil.rmtree(work, ignore_errors=True)
            metrics_ports = [args.port + 200 + i for i in range(args.nodes)]
            metrics_on = on and args.on in ("both", "metrics")
            traces_on = on and args.on in ("both", "traces")
            if metrics_on:
                node_args = lambda i: ["--metrics-listen", f"127.0.0.1:{metrics_ports[i]}"]  # noqa: E731
            else:
                node_args = lambda i: ["--metrics-listen", ""]  # noqa: E731
            sink, env = None, {}
            if traces_on:
                sink = start_sink(py, args.port + 300)
                env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{args.port + 300}",
                       "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
            addrs, procs = cluster.start_strata_cluster(args.nodes, work, strata, args.port, node_args=node_args,
                                                        extra_env=env)
            scraper = Scraper([f"http://127.0.0.1:{p}/metrics" for p in metrics_ports], args.scrape_every) \
                if metrics_on else None
            try:
                if scraper:
                    scraper.start()
                cpu_before = cpu_seconds(procs)
                produced = run_json([strata, "bench", "produce", "--server", addrs[0], "--topic", f"obs-r{rnd}",
                                     "--partitions", str(args.partitions), "--replication-factor", str(args.nodes)]
                                    + common_args(args, args.concurrency), load_timeout(args))
                # The nodes' CPU per record (warm-up included on both sides):
                # steadier than throughput on a machine shared with others.
                produced["server_cpu_us_per_record"] = 1e6 * (cpu_seconds(procs) - cpu_before) / max(
                    1, produced["records_per_sec"] * (args.duration + args.warmup))
            finally:
                if scraper:
                    scraper.stop.set()
                    scraper.join()
                cluster.stop_all(procs)
                spans = stop_sink(sink) if sink else 0
                shutil.rmtree(work, ignore_errors=True)
            scrapes = scraper.times if scraper else []
            cluster.log(f"round {rnd} observability {'on' if on else 'off'}: {produced['records_per_sec']:.0f} "
                        f"records/s (p99 {produced['latency_ms_p99']:.1f} ms, "
                        f"{produced['server_cpu_us_per_record']:.2f} µs of server CPU per record), {spans} spans exported, "
                        f"{len(scrapes)} scrapes")
            runs.append({"round": rnd, "on": on, "produce": produced, "spans": spans, "scrapes": scrapes})
    return runs


def many_partitions(args, strata):
    out = []
    for per_partition in (False, True):
        work = os.path.join(args.workdir, f"scrape-{'partition' if per_partition else 'topic'}")
        shutil.rmtree(work, ignore_errors=True)
        metrics = f"127.0.0.1:{args.port + 200}"
        env = {"STRATA_METRICS_PARTITION_LABELS": "true"} if per_partition else {}
        addrs, procs = cluster.start_strata_cluster(1, work, strata, args.port,
                                                    node_args=lambda i: ["--metrics-listen", metrics],
                                                    extra_env=env)
        try:
            topics = (args.scrape_partitions + 99) // 100
            started = time.monotonic()
            for t in range(topics):
                n = min(100, args.scrape_partitions - 100 * t)
                subprocess.run([strata, "topic", "create", f"many-{t}", "--partitions", str(n), "--server",
                                addrs[0]], check=True, capture_output=True, timeout=600)
            created = time.monotonic() - started
            scrape(f"http://{metrics}/metrics")  # warm
            timed = []
            for _ in range(5):
                # A node answers scrapes within a second of the last one
                # from what it gathered then: each timed one gathers anew.
                time.sleep(1.2)
                timed.append(scrape(f"http://{metrics}/metrics"))
        finally:
            cluster.stop_all(procs)
            shutil.rmtree(work, ignore_errors=True)
        row = {"labels": "partition" if per_partition else "topic", "partitions": args.scrape_partitions,
               "topics": topics, "scrape_ms_median": 1000 * statistics.median(t for t, _ in timed),
               "scrape_ms_max": 1000 * max(t for t, _ in timed), "series": series(timed[-1][1]),
               "bytes": len(timed[-1][1]), "create_s": created}
        cluster.log(f"{row}")
        out.append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=3)
    ap.add_argument("--on", choices=("both", "metrics", "traces"), default="both",
                    help="what the 'on' runs turn on (to tell the two costs apart)")
    ap.add_argument("--scrape-every", type=float, default=5.0)
    ap.add_argument("--scrape-partitions", type=int, default=0)
    ap.add_argument("--port", type=int, default=7979)
    ap.add_argument("--workdir", default="/var/tmp/strata-observability-cost")
    ap.add_argument("--json", default=None, help="where to write the raw runs")
    args = ap.parse_args()
    strata = binary("strata")
    results = {"machine": machine(), "args": vars(args), "runs": throughput(args, strata) if args.rounds else [],
               "scrape": many_partitions(args, strata) if args.scrape_partitions else []}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    m = results["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, {m['date']}.\n")
    runs = results["runs"]
    if runs:
        print("| round | off, records/s | on, records/s | change | off, server CPU µs/record | on | change | "
              "spans exported |")
        print("|---|---|---|---|---|---|---|---|")
        cpu = "server_cpu_us_per_record"
        for rnd in sorted({r["round"] for r in runs}):
            off = next(r for r in runs if r["round"] == rnd and not r["on"])
            on = next(r for r in runs if r["round"] == rnd and r["on"])
            a, b = off["produce"]["records_per_sec"], on["produce"]["records_per_sec"]
            c, d = off["produce"][cpu], on["produce"][cpu]
            print(f"| {rnd} | {a:,.0f} | {b:,.0f} | {100 * (b / a - 1):+.1f}% | {c:.2f} | {d:.2f} | "
                  f"{100 * (d / c - 1):+.1f}% | {on['spans']} |")
        med = {on: statistics.median(r["produce"]["records_per_sec"] for r in runs if r["on"] == on)
               for on in (False, True)}
        mcpu = {on: statistics.median(r["produce"][cpu] for r in runs if r["on"] == on) for on in (False, True)}
        scrapes = [t for r in runs for t in r["scrapes"]]
        print(f"| median | {med[False]:,.0f} | {med[True]:,.0f} | {100 * (med[True] / med[False] - 1):+.1f}% | "
              f"{mcpu[False]:.2f} | {mcpu[True]:.2f} | {100 * (mcpu[True] / mcpu[False] - 1):+.1f}% | |")
        if scrapes:
            print(f"\nScrapes under load: {len(scrapes)}, median {1000 * statistics.median(scrapes):.1f} ms, "
                  f"max {1000 * max(scrapes):.1f} ms.")
    if results["scrape"]:
        print("\n| partitions (one node) | labels | series | body | scrape median | scrape max |")
        print("|---|---|---|---|---|---|")
        for r in results["scrape"]:
            print(f"| {r['partitions']:,} ({r['topics']} topics) | per {r['labels']} | {r['series']:,} | "
                  f"{r['bytes'] / 1024:,.0f} KiB | {r['scrape_ms_median']:.1f} ms | {r['scrape_ms_max']:.1f} ms |")


if __name__ == "__main__":
    main()
