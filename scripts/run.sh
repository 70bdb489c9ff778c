#!/usr/bin/env bash
# Runs one Strata node with the embedded default config: gRPC on
# 127.0.0.1:7878, data in ./strata-data. Extra arguments go to
# `strata server` (e.g. --listen 0.0.0.0:7878 --data-dir /srv/strata).
# The first build compiles RocksDB and takes a while (about 20 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
exec cargo run --release --locked --bin strata -- server "$@"
