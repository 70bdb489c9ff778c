#!/usr/bin/env bash
# The Python example against a real server: producer.py sends, consumer.py (a
# share group with prefetch 1 and manual acks) receives and acknowledges, and a
# second consumer then finds nothing left to deliver. Then the same over TLS
# with an API token, against a node that requires authentication (ACLs).
#
#   examples/python/run-test.sh PATH/TO/strata
#
# Installs the pinned requirements into a virtualenv under ~/.cache/strata.
set -euo pipefail
# Resolved before the cd below: a relative path is relative to the caller's
# directory.
strata="$(realpath "${1:?usage: run-test.sh PATH/TO/strata}")"
cd "$(dirname "$0")"
venv="${STRATA_PYVENV:-$HOME/.cache/strata/pyvenv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "python3 -m venv failed: apt-get install python3-venv" >&2; exit 1; }
fi
"$venv/bin/pip" install -q -r requirements.txt
PATH="$venv/bin:$PATH" ./gen.sh

work="$(mktemp -d /tmp/strata-python.XXXXXX)"
server_pid=""
secure_pid=""
consumer_pid=""
cleanup() {
  [ -n "$consumer_pid" ] && kill "$consumer_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill -INT "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$secure_pid" ] && kill -INT "$secure_pid" 2>/dev/null && wait "$secure_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$strata" server --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
server_pid=$!
export STRATA_SERVER="127.0.0.1:$port"
for _ in $(seq 100); do
  "$strata" topic list --server "$STRATA_SERVER" >/dev/null 2>&1 && break
  sleep 0.1
done

# wait_for FILE TEXT SECONDS: until FILE holds TEXT, at most SECONDS.
wait_for() {
  local deadline=$((SECONDS + $3))
  until grep -qF "$2" "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1; }
    sleep 0.1
  done
}

# send_and_receive: producer.py sends, consumer.py receives and acknowledges
# (with the STRATA_* variables set now).
send_and_receive() {
  "$venv/bin/python" -u producer.py | tee "$work/producer.out"
  grep -qxF " [x] Sent 'Hello World!'" "$work/producer.out"
  "$venv/bin/python" -u consumer.py >"$work/consumer.out" 2>&1 &
  consumer_pid=$!
  wait_for "$work/consumer.out" " [x] Received 'Hello World!'" 30
  wait_for "$work/consumer.out" " [x] Done" 30
  # The record carried the producer's trace context to the consumer.
  wait_for "$work/consumer.out" "$(grep -F ' [x] trace ' "$work/producer.out")" 5
  kill -TERM "$consumer_pid"; wait "$consumer_pid" 2>/dev/null || true; consumer_pid=""
  cat "$work/consumer.out"
}
send_and_receive

# Acknowledged: the share group's partition is done up to the log end, with
# nothing in flight (nothing would be delivered again).
out="$("$strata" group describe hello-workers --format json --server "$STRATA_SERVER")"
echo "$out"
python3 - "$out" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
assert d["kind"] == "share", d
p = [x for x in d["partitions"] if x["topic"] == "hello"][0]
assert (p["committed"], p["log_end_offset"], p["lag"], p["in_flight"]) == (1, 1, 0, 0), p
PY
echo "python example: ok"

# Over TLS with an API token: a node with --require-auth, a user `worker`
# allowed what the example does, its token, and the CA's certificate.
"$strata" certs ca --dir "$work/ca" >/dev/null
"$strata" certs server --host 127.0.0.1 --ca-dir "$work/ca" --dir "$work/srv" >/dev/null
port2="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
STRATA_BOOTSTRAP_USER=admin:admin-pw "$strata" server --listen "127.0.0.1:$port2" --data-dir "$work/secure" \
  --tls-cert "$work/srv/server.crt" --tls-key "$work/srv/server.key" --require-auth >"$work/secure.log" 2>&1 &
secure_pid=$!
export STRATA_SERVER="127.0.0.1:$port2" STRATA_TLS_CA="$work/srv/ca.crt"
admin() { STRATA_USER=admin STRATA_PASSWORD=admin-pw "$strata" "$@"; }
for _ in $(seq 100); do admin whoami >/dev/null 2>&1 && break; sleep 0.1; done
admin user create worker --password worker-pw >/dev/null
admin acl create --allow-principal User:worker --operation create,write,read --topic hello >/dev/null
admin acl create --allow-principal User:worker --operation read --group hello-workers >/dev/null
STRATA_TOKEN="$(admin token create --user worker --description python-example)"
export STRATA_TOKEN
send_and_receive
# Without the token: refused, saying why.
if STRATA_TOKEN= "$venv/bin/python" producer.py >"$work/refused.out" 2>&1; then
  echo "the producer was not refused without a token" >&2; exit 1
fi
grep -q "requires authentication" "$work/refused.out" || { cat "$work/refused.out" >&2; exit 1; }
echo "python example over TLS with a token: ok"
