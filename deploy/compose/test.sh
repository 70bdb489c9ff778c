#!/usr/bin/env bash
# End-to-end test of the containers (deploy/docker/, deploy/compose/):
#
#   deploy/compose/test.sh STRATA_BINARY      # e.g. target/debug/strata
#
# 1. builds the Debian base image from Debian's packages (no registry
#    needed; deploy/docker/base-image.sh, cached after the first run), the
#    strata image from STRATA_BINARY (deploy/docker/build.sh) and
#    Prometheus' image (Debian's package);
# 2. makes certificates and brings up the 3 nodes and Prometheus with
#    docker-compose under a project name of its own, on free loopback ports;
# 3. with STRATA_BINARY as the client on the host (TLS, the compose CA):
#    creates a topic of 3 partitions, replication factor 3; produces records
#    to each partition and reads them back exactly; produces more while
#    node2 stops (`docker-compose stop`: SIGTERM, the node hands its
#    partitions over) and after; starts node2 again, waits until every
#    replica is in sync, and checks that every partition holds exactly what
#    was acknowledged, in order (nothing lost, nothing doubled);
# 4. checks that Prometheus scrapes all three nodes (up == 1) and has
#    loaded every rule of deploy/prometheus/alerts.yml.
#
# Every wait polls a condition with a deadline; the records' contents come
# from a seed (printed; COMPOSE_TEST_SEED replays it). The project is torn
# down (`docker-compose down -v`) on every exit; on a failure the nodes' and
# Prometheus' logs are kept in a folder the last lines name. Needs root
# (debootstrap, the first time), Docker, docker-compose, curl and python3.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 STRATA_BINARY (e.g. target/debug/strata)" >&2
  exit 2
fi
bin="$(realpath "$1")"
if [ ! -x "$bin" ]; then
  echo "compose test: no strata binary at $1" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

seed="${COMPOSE_TEST_SEED:-$(date +%s)}"
project="strata-compose-test-$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/strata-compose-test.XXXXXX")"
topic=compose-test
partitions=3
per_partition=1500 # records per partition in each of the three rounds
start_time=$SECONDS

log() { printf '[compose test +%3ds] %s\n' $((SECONDS - start_time)) "$*" >&2; }
fail() {
  printf '[compose test +%3ds] FAILED: %s\n' $((SECONDS - start_time)) "$*" >&2
  exit 1
}

# Free loopback ports for the three client listeners and Prometheus.
read -r port1 port2 port3 prom_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
export STRATA_IMAGE=strata:compose-test
export STRATA_BASE_IMAGE=strata-debian:bookworm
export STRATA_CERTS_DIR="$work/certs"
export STRATA_NODE1_PORT=$port1 STRATA_NODE2_PORT=$port2 STRATA_NODE3_PORT=$port3
export STRATA_PROMETHEUS_PORT=$prom_port
# The host's client: node1's published port, the compose CA.
export STRATA_SERVER="127.0.0.1:$port1" STRATA_TLS_CA="$work/certs/ca/ca.crt"

# Every docker-compose command within 5 minutes (a stop takes at most the
# 60 s stop_grace_period).
dc() { timeout 300 docker-compose --ansi never -p "$project" -f "$here/docker-compose.yml" "$@"; }
strata() { "$bin" "$@" --timeout 15s; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$status" != 0 ]; then
    local keep
    keep="$(mktemp -d "${TMPDIR:-/tmp}/strata-compose-failed.XXXXXX")"
    dc ps >&2 || true
    for s in node1 node2 node3 prometheus; do
      dc logs --no-color "$s" >"$keep/$s.log" 2>&1 || true
    done
    cp -r "$work/records" "$keep/" 2>/dev/null || true
    echo "--- last lines of node2's log:" >&2
    tail -n 30 "$keep/node2.log" >&2 || true
    echo "compose test FAILED (seed $seed): the services' logs and the records are in $keep" >&2
  fi
  log "tearing down (docker-compose down -v)"
  dc down -v --remove-orphans -t 10 >/dev/null 2>&1 || echo "compose test: docker-compose down failed (project $project)" >&2
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# quietly COMMAND...: runs COMMAND, showing its output only if it fails
# (and then failing the test).
quietly() {
  "$@" >"$work/quietly.out" 2>&1 || {
    tail -n 40 "$work/quietly.out" >&2
    fail "$*"
  }
}

# wait_for WHAT SECONDS COMMAND...: runs COMMAND every half second until it
# succeeds; fails the test after SECONDS.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >"$work/last-wait.out" 2>&1; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$work/last-wait.out" >&2
      fail "$what: not after ${limit}s"
    fi
    sleep 0.5
  done
}

log "seed $seed, project $project, ports: nodes $port1 $port2 $port3, prometheus $prom_port"

# --- 1. images --------------------------------------------------------------
log "base image (deploy/docker/base-image.sh)"
"$root/deploy/docker/base-image.sh"
log "strata image $STRATA_IMAGE from $bin"
quietly "$root/deploy/docker/build.sh" --tag "$STRATA_IMAGE" --base "$STRATA_BASE_IMAGE" "$bin"
log "prometheus image (Debian's package)"
quietly dc build prometheus

# --- 2. certificates, up ----------------------------------------------------
"$here/certs.sh"
log "docker-compose up -d node1 node2 node3 prometheus"
quietly dc up -d node1 node2 node3 prometheus

# cluster status as JSON, checked by a Python expression over `s` (the
# status) and `nodes` (node id -> alive).
status_is() {
  strata cluster status --format json >"$work/status.json" || return 1
  python3 - "$work/status.json" "$1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
nodes = {n["node_id"]: n["alive"] for n in s["nodes"]}
ok = eval("(" + sys.argv[2] + ")")
if not ok:
    print(json.dumps(s, indent=1)[:3000])
sys.exit(0 if ok else 1)
EOF
}
healthy() {
  local id
  id="$(dc ps -q "$1")"
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]
}

log "waiting for the cluster: 3 nodes up"
wait_for "the 3 nodes answer (strata cluster status)" 120 \
  status_is 'sorted(nodes) == [1, 2, 3] and all(nodes.values())'
log "waiting for Docker's health checks"
for s in node1 node2 node3; do
  wait_for "$s's health check (healthy)" 90 healthy "$s"
done

# --- 3. produce, consume, stop and start node2 -------------------------------
log "creating topic $topic: $partitions partitions, replication factor 3"
strata topic create "$topic" --partitions "$partitions" --replication-factor 3 >/dev/null
in_sync='sorted(nodes) == [1, 2, 3] and all(nodes.values())
  and len([p for p in s["partitions"] if p["topic"] == "'"$topic"'"]) == '"$partitions"'
  and all(p["leader"] != 0 and sorted(p["in_sync"]) == [1, 2, 3]
          and all(r["lag"] == 0 for r in p["replicas"])
          for p in s["partitions"])'
wait_for "every partition led, with 3 replicas in sync" 90 status_is "$in_sync"

mkdir -p "$work/records"
# records ROUND: writes each partition's records of a round to
# records/ROUND-P (the seed's random tokens, numbered) and appends them to
# records/expected-P.
records() {
  python3 - "$work/records" "$1" "$seed" "$partitions" "$per_partition" <<'EOF'
import random, sys
out, rnd, seed, parts, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(f"{seed}-{rnd}")
for p in range(parts):
    lines = [f"{rnd}-p{p}-{i:05d}-{rng.getrandbits(64):016x}\n" for i in range(n)]
    open(f"{out}/{rnd}-{p}", "w").writelines(lines)
    open(f"{out}/expected-{p}", "a").writelines(lines)
EOF
}
# produce ROUND [PACE]: produces each partition's records of ROUND, the
# partitions at once; with PACE, a record every PACE seconds (to keep
# producing across an event).
produce() {
  local round=$1 pace=${2:-} p pids=()
  for ((p = 0; p < partitions; p++)); do
    if [ -n "$pace" ]; then
      python3 -u -c '
import sys, time
for line in open(sys.argv[1]):
    sys.stdout.write(line)
    time.sleep(float(sys.argv[2]))
' "$work/records/$round-$p" "$pace" | timeout 180 "$bin" produce "$topic" --partition "$p" --timeout 15s 2>"$work/produce-$round-$p.err" &
    else
      timeout 180 "$bin" produce "$topic" --partition "$p" --timeout 15s <"$work/records/$round-$p" 2>"$work/produce-$round-$p.err" &
    fi
    pids+=($!)
  done
  for ((p = 0; p < partitions; p++)); do
    if ! wait "${pids[$p]}"; then
      cat "$work/produce-$round-$p.err" >&2
      fail "producing round $round to partition $p"
    fi
  done
}
# check: every partition holds exactly its expected records, in order, and
# nothing after them.
check() {
  local p n
  for ((p = 0; p < partitions; p++)); do
    n=$(wc -l <"$work/records/expected-$p")
    if ! timeout 60 "$bin" consume "$topic" --partition "$p" --from earliest -n "$n" >"$work/records/got-$p" 2>"$work/consume.err"; then
      cat "$work/consume.err" >&2
      fail "consuming $n records of partition $p (got $(wc -l <"$work/records/got-$p"))"
    fi
    if ! cmp -s "$work/records/expected-$p" "$work/records/got-$p"; then
      diff "$work/records/expected-$p" "$work/records/got-$p" >"$work/records/diff-$p" || true
      head -n 10 "$work/records/diff-$p" >&2
      fail "partition $p does not hold exactly what was acknowledged (above: the first differences, < expected, > read)"
    fi
  done
  # Nothing after them: each partition's high watermark (its next offset)
  # is its count of records.
  strata topic describe "$topic" --format json >"$work/describe.json"
  python3 - "$work/describe.json" "$work/records" <<'EOF' || fail "a partition holds more than was produced"
import json, sys
t = json.load(open(sys.argv[1]))
for p in t["partition_states"]:
    n = sum(1 for _ in open(f"{sys.argv[2]}/expected-{p['partition']}"))
    if (p["log_start_offset"], p["high_watermark"]) != (0, n):
        sys.exit(f"partition {p['partition']}: offsets {p['log_start_offset']} to {p['high_watermark']}, not 0 to {n}")
EOF
}

log "round a: $per_partition records to each partition"
records a
produce a
log "reading them back"
check

log "round b: producing while node2 stops (docker-compose stop: SIGTERM, handover)"
records b
produce b 0.002 &
producers=$!
stop_started=$SECONDS
quietly dc stop node2
log "node2 stopped after $((SECONDS - stop_started))s"
node2_exit="$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -q node2)")"
[ "$node2_exit" = 0 ] || fail "node2 exited with status $node2_exit on SIGTERM (0 expected: a graceful stop)"
wait "$producers" || fail "round b's producers"

log "round c: $per_partition records to each partition with node2 down"
records c
produce c
status_is 'nodes.get(2) is False' || fail "cluster status does not show node2 down"

log "docker-compose start node2; waiting until every replica is in sync"
quietly dc start node2
wait_for "node2 back and every partition in sync" 120 status_is "$in_sync"
wait_for "node2's health check (healthy)" 90 healthy node2
log "reading everything back: rounds a, b and c, per partition"
check

# --- 4. Prometheus -----------------------------------------------------------
prom() { curl -fsS --max-time 10 "http://127.0.0.1:$prom_port/api/v1/$1"; }
scrapes_all() {
  prom 'query?query=up%7Bjob%3D%22strata%22%7D' | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
up = sorted((x["metric"]["instance"], x["value"][1]) for x in r)
print(up)
sys.exit(0 if up == [("node1:9464", "1"), ("node2:9464", "1"), ("node3:9464", "1")] else 1)'
}
log "Prometheus: waiting for up{job=\"strata\"} == 1 on node1, node2 and node3"
wait_for "Prometheus scraping all three nodes" 120 scrapes_all
rules_loaded() {
  prom rules | python3 -c '
import json, re, sys
want = sorted(re.findall(r"^\s*- alert: (\S+)", open(sys.argv[1]).read(), re.M))
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
have = sorted(r["name"] for r in rules)
errors = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
print("want", want, "have", have, "errors", errors)
sys.exit(0 if want and have == want and not errors else 1)' "$root/deploy/prometheus/alerts.yml"
}
log "Prometheus: every rule of alerts.yml loaded"
wait_for "Prometheus' rules" 60 rules_loaded

log "passed in $((SECONDS - start_time))s"
echo "compose test: ok"
