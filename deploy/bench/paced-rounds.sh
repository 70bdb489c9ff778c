#!/usr/bin/env bash
# Produce latency over several paced rounds on one fresh local 3-node cluster
# (issue 3): shows whether later rounds get slower than the first.
#
#   deploy/bench/paced-rounds.sh RATE [ROUNDS] [SECONDS]
#
# Starts `strata dev --nodes 3` in a new directory under /tmp, then runs
# ROUNDS (default 4) rounds of `strata bench produce --rate RATE` for SECONDS
# (default 10) each, 1 KiB records, 64 per request, 16 producers, 8
# partitions, RF 3, acks=quorum; prints each round's summary (each second's
# latency goes to stderr). The data is deleted when the script exits.
# STRATA selects the binary (default target/release/strata).
set -euo pipefail
cd "$(dirname "$0")/../.."
rate="${1:?usage: paced-rounds.sh RATE [ROUNDS] [SECONDS]}"
rounds="${2:-4}"
secs="${3:-10}"
strata="${STRATA:-target/release/strata}"
[ -x "$strata" ] || { echo "build first: cargo build --release -p strata" >&2; exit 1; }
work="$(mktemp -d /tmp/strata-rounds.XXXXXX)"
servers=127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
sync
"$strata" dev --nodes 3 --base-port 7701 --data-dir "$work/cluster" >"$work/dev.log" 2>&1 &
dev_pid=$!
ready=false
for _ in $(seq 100); do
  if "$strata" cluster status --server "$servers" >/dev/null 2>&1; then ready=true; break; fi
  sleep 0.2
done
$ready || { echo "the cluster did not answer within 20 s; see $work/dev.log" >&2; exit 1; }
for r in $(seq "$rounds"); do
  echo "round $r: $(timeout $((secs + 60)) "$strata" bench produce --server "$servers" --topic rounds --partitions 8 \
    --replication-factor 3 --concurrency 16 --batch 64 --record-size 1024 --duration "${secs}s" --warmup 2s \
    --rate "$rate" | tail -1)"
done
