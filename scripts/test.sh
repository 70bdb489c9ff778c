#!/usr/bin/env bash
# Strata's test command (README quick start; .ci/run calls it too):
# formatting, clippy with warnings as errors, then every test of the
# workspace (unit, integration with real servers on loopback, kill -9 recovery,
# the README quick start run as written: crates/strata/tests/readme.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh

echo "== rustfmt" >&2
cargo fmt --all -- --check
echo "== clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests" >&2
cargo test --workspace --locked

# Fuzzing, short: every seed of fuzz/corpus replayed, then 25 s of seeded
# mutations spread over the five targets (record batches, segment recovery,
# snapshot metadata, controller commands, group records). The seed is
# printed; the same seed replays the same inputs. Long coverage-guided runs
# use AFL++ (fuzz/README.md).
echo "== fuzz (short run)" >&2
cargo run --locked -q -p strata-fuzz --bin strata-fuzz -- --seconds 25 --seed "${FUZZ_SEED:-$(date +%s)}"

# The Python example (producer.py / consumer.py on stubs generated from
# proto/) against a real server; pip installs its pinned requirements into a
# virtualenv under ~/.cache/strata.
echo "== python example" >&2
cargo build --locked -p strata
examples/python/run-test.sh "$(realpath "${CARGO_TARGET_DIR:-target}")/debug/strata"

# The Debian package, end to end (deploy/debian/test-package.sh): packaged
# from the debug build, installed in a container with systemd as PID 1 (an
# image built from Debian's packages on the first run, then cached), used,
# reloaded, stopped, upgraded, removed and purged. Needs root and Docker.
echo "== Debian package (systemd in a container)" >&2
if [ "$(id -u)" = 0 ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  deploy/debian/test-package.sh "$(realpath "${CARGO_TARGET_DIR:-target}")/debug/strata"
else
  echo "skipped: the package test needs root and a running Docker engine (apt-get install docker.io)" >&2
fi

# The containers (deploy/compose/test.sh): the strata image from the debug
# build, 3 nodes with TLS and Prometheus under docker-compose; produce and
# consume through them, stop and start one node, Prometheus scrapes all three.
echo "== docker-compose cluster" >&2
if [ "$(id -u)" = 0 ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
    && command -v docker-compose >/dev/null 2>&1; then
  deploy/compose/test.sh "$(realpath "${CARGO_TARGET_DIR:-target}")/debug/strata"
else
  echo "skipped: the compose test needs root, a running Docker engine and docker-compose (apt-get install docker.io docker-compose)" >&2
fi

# The fault-injection suite, short: 5 nodes on hosts of their own (Docker
# containers from the project's own image, built on the first run, or network
# namespaces without Docker; needs root), partitions, kill -9 and pauses for
# 60 s under the group workload (the log workload's producers and readers plus
# consumer-group members that commit, leave and crash), then the history is
# checked (docs/reliability.md has the long runs).
echo "== jepsen-like (short run)" >&2
netns_ok=false
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && ip netns add "sjprobe$$" 2>/dev/null; then
  ip netns del "sjprobe$$"
  netns_ok=true
fi
if $netns_ok; then
  cargo build --locked -p strata -p jepsen-like-tests
  target_dir="${CARGO_TARGET_DIR:-target}"
  seed="${JEPSEN_SEED:-$(date +%s)}"
  store="$(mktemp -d /tmp/strata-jepsen.XXXXXX)"
  if ! timeout 600 "$target_dir/debug/jepsen-like-tests" --nodes 5 --time-limit 60 --quiet 3-6 --hold 3-6 \
      --nemesis partition,kill,pause --workload group --seed "$seed" --store "$store" --strata "$target_dir/debug/strata"; then
    echo "jepsen-like run failed (seed $seed); its history and node logs are in $store" >&2
    exit 1
  fi
  rm -rf "$store"
elif [ "${CI:-}" = true ]; then
  echo "the jepsen-like suite needs root, iproute2 and the right to create network namespaces (CAP_SYS_ADMIN); CI must provide them" >&2
  exit 1
else
  echo "skipped: the jepsen-like suite needs root, iproute2 and the right to create network namespaces; run as root to include it" >&2
fi
