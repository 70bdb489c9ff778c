#!/usr/bin/env bash
# Strata's test command (README quick start; .ci/run calls it too):
# formatting, clippy with warnings as errors, then every test of the
# workspace (unit, integration with real servers on loopback, kill -9 recovery).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh

echo "== rustfmt" >&2
cargo fmt --all -- --check
echo "== clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests" >&2
cargo test --workspace --locked
