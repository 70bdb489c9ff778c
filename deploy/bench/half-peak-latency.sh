#!/usr/bin/env bash
# Produce latency at half of Strata's peak on a local 3-node cluster (issue 3),
# with the disk's own fdatasync latency at the same write load measured in the
# same run, so the two can be compared.
#
#   deploy/bench/half-peak-latency.sh [ROUNDS]
#
# Steps (every step bounded in time):
#  1. fio alone: 3 writers (one per node), 64 KiB writes, fdatasync after each,
#     at the byte rate a node writes at half peak; prints the sync percentiles.
#  2. `strata dev --nodes 3`, then `strata bench produce` unpaced (the peak),
#     then ROUNDS paced runs at half of that peak (1 KiB records, 64 per
#     request, 16 producers, 8 partitions, RF 3, acks=quorum).
# Needs a release build (cargo build --release -p strata) and fio
# (apt-get install fio).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-3}"
strata="${STRATA:-target/release/strata}"
work="$(mktemp -d /tmp/strata-half-peak.XXXXXX)"
servers=127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

[ -x "$strata" ] || { echo "build first: cargo build --release -p strata" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }

bench() {
  timeout 120 "$strata" bench produce --server "$servers" --topic "$1" --partitions 8 --replication-factor 3 \
    --concurrency 16 --batch 64 --record-size 1024 --duration 10s --warmup 2s "${@:2}" 2>/dev/null | tail -1
}

# A fresh `strata dev` cluster in a directory of its own, answering within
# 20 s. Nothing is deleted until the script exits: on a filesystem mounted
# with online `discard` (this VM's root is), deleting the previous cluster's
# gigabytes makes the kernel discard them during the next step, and the
# discards stall every fsync for tens to hundreds of milliseconds.
clusters=0
start_cluster() {
  clusters=$((clusters + 1))
  sync
  "$strata" dev --nodes 3 --base-port 7701 --data-dir "$work/cluster$clusters" >"$work/dev.log" 2>&1 &
  dev_pid=$!
  for _ in $(seq 100); do
    "$strata" cluster status --server "$servers" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the cluster did not answer within 20 s; see $work/dev.log" >&2
  exit 1
}

echo "== strata dev --nodes 3 (data in $work)" >&2
start_cluster

echo "== peak (unpaced)" >&2
peak_line="$(bench peak)"
echo "peak: $peak_line"
peak="$(sed -E 's/.*s: ([0-9]+) records\/s.*/\1/' <<<"$peak_line")"
half=$((peak / 2))
# Each node holds a replica of every partition, so each writes the whole load.
mb_per_node=$(( (half * 1024 + 999999) / 1000000 ))

echo "== fio: 3 writers x ${mb_per_node} MB/s, 64 KiB + fdatasync each (the disk alone)" >&2
kill -INT "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=""
(cd "$work" && timeout 60 fio --name=sync --rw=write --bs=64k --size=256m --fdatasync=1 --numjobs=3 \
  --rate="${mb_per_node}m" --time_based --runtime=20 --group_reporting) >"$work/fio.txt" 2>&1
echo "fio fdatasync latency (usec):"
grep -A6 "sync percentiles" "$work/fio.txt" | tail -5

echo "== half of peak: $half records/s, $rounds rounds" >&2
start_cluster
for r in $(seq "$rounds"); do
  echo "half $r: $(bench "half$r" --rate "$half")"
done
