#!/usr/bin/env bash
# A single NATS JetStream server on loopback, for `strata-peer-bench jetstream`.
#
#   deploy/bench/jetstream.sh          install nats-server if missing, start it, wait until it listens
#   deploy/bench/jetstream.sh stop     stop it
#   deploy/bench/jetstream.sh status   say whether it runs (exit 1 if not)
#
# Environment: PORT (default 4222); DIR (default /tmp/strata-jetstream), the store directory, which
# also holds nats-server.pid and nats-server.log.
#
# State beside any figures taken with it:
# - Debian's nats-server package is 2.9 (2.9.10 in bookworm), well behind upstream.
# - JetStream does NOT fsync on each publish by default: a PubAck means the message was written to
#   the stream's file (the OS page cache), and the server syncs to disk on an interval (2 minutes;
#   2.9 has no option to change it). Strata acknowledges a produce only after fsync.
set -euo pipefail

PORT=${PORT:-4222}
DIR=${DIR:-/tmp/strata-jetstream}
PIDFILE=$DIR/nats-server.pid
LOG=$DIR/nats-server.log

# The pid of the running server, or nothing (a stale pid file is ignored).
running_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 0
    if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == nats-server ]]; then
        echo "$pid"
    fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

case ${1:-start} in
start)
    if [[ -n $(running_pid) ]]; then
        echo "nats-server already runs (pid $(running_pid)) on 127.0.0.1:$PORT"
        exit 0
    fi
    if ! command -v nats-server >/dev/null && [[ ! -x /usr/sbin/nats-server ]]; then
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        $sudo apt-get install -y nats-server || { $sudo apt-get update && $sudo apt-get install -y nats-server; }
    fi
    server=$(command -v nats-server || echo /usr/sbin/nats-server)
    if listening; then
        echo "error: something already listens on 127.0.0.1:$PORT" >&2
        exit 1
    fi
    mkdir -p "$DIR"
    nohup "$server" -js -a 127.0.0.1 -p "$PORT" -sd "$DIR" </dev/null >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 200); do # 20 s
        if listening; then
            echo "nats-server $("$server" --version | awk '{print $2}') runs (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT, store $DIR, log $LOG"
            exit 0
        fi
        if [[ -z $(running_pid) ]]; then
            echo "error: nats-server exited; last lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: nats-server does not accept connections on 127.0.0.1:$PORT after 20 s (see $LOG)" >&2
    exit 1
    ;;
stop)
    pid=$(running_pid)
    if [[ -z $pid ]]; then
        echo "nats-server is not running"
        rm -f "$PIDFILE"
        exit 0
    fi
    kill "$pid"
    for _ in $(seq 1 100); do # 10 s
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        echo "error: nats-server (pid $pid) is still running 10 s after SIGTERM" >&2
        exit 1
    fi
    rm -f "$PIDFILE"
    echo "nats-server (pid $pid) stopped"
    ;;
status)
    pid=$(running_pid)
    if [[ -n $pid ]]; then
        echo "nats-server runs (pid $pid) on 127.0.0.1:$PORT, store $DIR"
    else
        echo "nats-server is not running"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
