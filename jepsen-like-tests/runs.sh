#!/usr/bin/env bash
# Several runs of the suite in a row (seeds FIRST..FIRST+RUNS-1), then one line
# per run from its results.json: the figures docs/reliability.md records.
#
#   jepsen-like-tests/runs.sh [RUNS=10] [SECONDS=300] [FIRST_SEED=1] [NEMESIS=partition,kill,pause] [WORKLOAD=log]
#
# Needs root and a release build: cargo build --release -p strata -p jepsen-like-tests
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
seconds="${2:-300}"
first="${3:-1}"
nemesis="${4:-partition,kill,pause}"
workload="${5:-log}"
bin="${CARGO_TARGET_DIR:-target}/release"
store="${STORE:-jepsen-like-tests/store}"
[ -x "$bin/jepsen-like-tests" ] && [ -x "$bin/strata" ] ||
  { echo "build first: cargo build --release -p strata -p jepsen-like-tests" >&2; exit 2; }

failed=0
for seed in $(seq "$first" $((first + runs - 1))); do
  echo "== run seed $seed: $seconds s, nemesis $nemesis, workload $workload" >&2
  timeout $((seconds + 900)) "$bin/jepsen-like-tests" --nodes 5 --time-limit "$seconds" --nemesis "$nemesis" \
    --workload "$workload" --seed "$seed" --store "$store" --strata "$bin/strata" >"$store.seed$seed.out" 2>&1
  rc=$?
  echo "seed $seed: exit $rc" >&2
  [ "$rc" = 0 ] || failed=$((failed + 1))
done

echo "| seed | valid | acknowledged sends | ops ok / fail / info | faults | anomalies (sum) | minority-fault produce success | heal to first write, median / max ms | group: commits ok / reads of commits ok / joins / leaves / crashes |"
echo "|---|---|---|---|---|---|---|---|---|"
for seed in $(seq "$first" $((first + runs - 1))); do
  results="$(ls -d "$store"/*-seed"$seed" 2>/dev/null | tail -1)/results.json"
  if [ ! -f "$results" ]; then
    echo "| $seed | no results (see $store.seed$seed.out) | | | | | | |"
    continue
  fi
  python3 - "$results" "$seed" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); rep = r["report"]
h = sorted(r["heal_to_first_write_ms"]) or [0]
m = r["minority_fault_send_success"]
group = "-"
if r["workload"] == "group":
    c = {"commit": 0, "read-committed": 0, "join": 0, "leave": 0, "crash": 0}
    for line in open(sys.argv[1].replace("results.json", "history.jsonl")):
        e = json.loads(line)
        if e["type"] == "ok" and e["f"] in ("commit", "read-committed"):
            c[e["f"]] += 1
        elif e["f"] == "member":
            c[e["action"]] = c.get(e["action"], 0) + 1
    group = f"{c['commit']} / {c['read-committed']} / {c['join']} / {c['leave']} / {c['crash']}"
print(f"| {sys.argv[2]} | {r['valid']} | {rep['sends_acked']} | {rep['ops_ok']} / {rep['ops_fail']} / {rep['ops_info']} | "
      f"{rep['faults']} | {sum(rep['counts'].values())} | {'-' if m is None else f'{m*100:.2f}%'} | {h[len(h)//2]} / {h[-1]} | {group} |")
EOF
done
exit $((failed > 0))
