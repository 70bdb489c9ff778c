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
work="$(mktemp -d /tmp/strata-rounds.XXXXXX)"
. deploy/bench/dev-cluster.sh
start_cluster
for r in $(seq "$rounds"); do
  echo "round $r: $(timeout $((secs + 60)) "$strata" bench produce --server "$servers" --topic rounds --partitions 8 \
    --replication-factor 3 --concurrency 16 --batch 64 --record-size 1024 --duration "${secs}s" --warmup 2s \
    --rate "$rate" | tail -1)"
done
