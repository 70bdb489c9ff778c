# Sourced by the bench scripts in this directory: a local 3-node `strata dev`
# cluster on ports 7701-7703. The caller sets `strata` (the binary) and `work`
# (a directory of its own, deleted on exit); this file sets `servers` and
# `dev_pid`, and stops the cluster and deletes `work` when the script exits.

servers=127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703
dev_pid=""

stop_cluster() {
  if [ -n "$dev_pid" ]; then kill -INT "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  dev_pid=""
}
cleanup() {
  stop_cluster
  rm -rf "$work"
}
trap cleanup EXIT
[ -x "$strata" ] || { echo "build first: cargo build --release -p strata" >&2; exit 1; }

# A fresh cluster in a directory of its own under `work`, answering within
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
