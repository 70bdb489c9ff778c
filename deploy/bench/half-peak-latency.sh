#!/usr/bin/env bash
# Produce latency at half of Strata's peak on a local 3-node cluster (issue 3),
# with the disk's own fdatasync latency at the same write load measured in the
# same run, so the two can be compared.
#
#   deploy/bench/half-peak-latency.sh [ROUNDS]
#
# Steps (every step bounded in time):
#  1. `strata dev --nodes 3`, then `strata bench produce` unpaced (the peak).
#  2. ROUNDS times: fio alone on the same disk with the cluster idle, as the
#     cluster writes at half peak (24 files, 64 KiB writes, fdatasync after
#     each; see disk_alone), then a paced run at half of the peak (1 KiB
#     records, 64 per request, 16 producers, 8 partitions, RF 3,
#     acks=quorum), so that each Strata figure has the disk's own beside it.
# Needs a release build (cargo build --release -p strata) and fio
# (apt-get install fio).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-3}"
strata="${STRATA:-target/release/strata}"
work="$(mktemp -d /tmp/strata-half-peak.XXXXXX)"
. deploy/bench/dev-cluster.sh
command -v fio >/dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }

bench() {
  timeout 120 "$strata" bench produce --server "$servers" --topic "$1" --partitions 8 --replication-factor 3 \
    --concurrency 16 --batch 64 --record-size 1024 --duration 10s --warmup 2s "${@:2}" 2>/dev/null | tail -1
}

echo "== strata dev --nodes 3 (data in $work)" >&2
start_cluster

echo "== peak (unpaced)" >&2
peak_line="$(bench peak)"
echo "peak: $peak_line"
peak="$(sed -E 's/.*s: ([0-9]+) records\/s.*/\1/' <<<"$peak_line")"
half=$((peak / 2))
# Each node holds a replica of every partition, so each writes the whole
# load: the disk sees 3 x 8 files appended at once, each with an fdatasync
# per write.
kb_per_file=$(( (half * 1024 / 8 + 1023) / 1024 ))

# fio alone, while the cluster idles: 24 files (3 nodes x 8 partitions)
# appended 64 KiB at a time with an fdatasync after each write, at the rate
# each partition replica writes at half peak, for 10 s. Prints the
# fdatasync percentiles in ms. The disk of a VM changes from minute to
# minute, so it is measured again right before each round.
disk_alone() {
  local dir="$work/fio$1"
  mkdir -p "$dir"
  (cd "$dir" && timeout 60 fio --name=sync --rw=write --bs=64k --size=256m --fdatasync=1 --fallocate=none \
    --numjobs=24 --rate="${kb_per_file}k" --time_based --runtime=10 --group_reporting --output-format=json) \
    >"$work/fio$1.json" 2>/dev/null
  python3 - "$work/fio$1.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["jobs"][0]["sync"]["lat_ns"]["percentile"]
ms = lambda q: p[q] / 1e6
print(f"fdatasync p50 {ms('50.000000'):.2f} ms, p99 {ms('99.000000'):.2f} ms, p99.9 {ms('99.900000'):.2f} ms")
PY
}

echo "== half of peak: $half records/s, $rounds rounds on a fresh cluster, each after the disk alone (24 files x ${kb_per_file} KiB/s)" >&2
stop_cluster
start_cluster
for r in $(seq "$rounds"); do
  echo "disk $r: $(disk_alone "$r")"
  echo "half $r: $(bench "half$r" --rate "$half")"
done
