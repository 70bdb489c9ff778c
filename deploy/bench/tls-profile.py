#!/usr/bin/env python3
"""Where the CPU goes with and without TLS between nodes: a fresh 3-node cluster (RF 3), the
issue-3 workload for 14 s, and `perf record` of the three server processes for 6 s of it; prints
the top symbols. Needs Debian's linux-perf and a release build (`cargo build --release -p strata`).

    deploy/bench/tls-profile.py            # mutual TLS
    deploy/bench/tls-profile.py --insecure # plaintext (--insecure-cluster)"""

import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster  # noqa: E402
from compare import binary  # noqa: E402


def main():
    insecure = "--insecure" in sys.argv[1:]
    strata = binary("strata")
    work = "/var/tmp/strata-tls-profile"
    shutil.rmtree(work, ignore_errors=True)
    data = os.path.join(work, "perf.data")
    addrs, procs = cluster.start_strata_cluster(3, os.path.join(work, "cluster"), strata, 7979,
                                                insecure_cluster=insecure)
    try:
        subprocess.run([strata, "topic", "create", "p", "--partitions", "8", "--replication-factor", "3",
                        "--server", addrs[0]], check=True)
        bench = subprocess.Popen([strata, "bench", "produce", "--server", addrs[0], "--topic", "p",
                                  "--concurrency", "16", "--batch", "64", "--record-size", "1024",
                                  "--duration", "14s", "--warmup", "1s", "--format", "json"], stdout=subprocess.PIPE)
        time.sleep(4)
        pids = ",".join(str(p.pid) for p in procs)
        subprocess.run(["perf", "record", "-F", "499", "-p", pids, "-o", data, "--", "sleep", "6"],
                       stderr=subprocess.DEVNULL, check=True)
        print(bench.communicate()[0].decode().strip().splitlines()[-1])
    finally:
        cluster.stop_all(procs)
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio"],
                            capture_output=True, text=True).stdout
    print("\n".join([line for line in report.splitlines() if "%" in line and not line.startswith("#")][:25]))


if __name__ == "__main__":
    main()
