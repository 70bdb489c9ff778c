#!/usr/bin/env bash
# The Debian package's end-to-end test, in a container with systemd as PID 1
# (built from Debian's packages by deploy/docker/base-image.sh --systemd):
#
#   lintian finds nothing; install the .deb (the unit is installed, not
#   enabled); enable --now -> the service runs (Type=notify) as the strata
#   user, with /var/lib/strata 0750 and the conffile; produce and consume
#   through it; the README's strata health, cluster wait-healthy and cluster
#   rolling-restart (--exec 'systemctl restart strata'); systemctl reload; systemctl stop (exit 0, and the next start
#   says the last stop was clean and finds no torn tail); an upgrade to a
#   newer build leaves the running node alone and keeps an edited config and
#   the data across the restart; remove keeps data, config and user; purge
#   removes them.
#
#   deploy/debian/test-package.sh [STRATA_BINARY]
#
# STRATA_BINARY defaults to the debug build (${CARGO_TARGET_DIR:-target}/debug/strata);
# the packages are built from it with deploy/debian/build.sh --binary.
# Needs root and Docker. Prints each step; exits non-zero on the first
# failure with what was expected and what was found.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
binary="$(realpath "${1:-$target/debug/strata}")"
image=strata-debian-systemd:bookworm
name="strata-package-test-$$"
started=$SECONDS

step() { echo "== [package test $((SECONDS - started)) s] $*" >&2; }
fail() { echo "package test FAILED: $*" >&2; exit 1; }
inside() { docker exec "$name" "$@"; }

cleanup() {
  local code=$?
  if [ "$code" != 0 ] && docker inspect "$name" >/dev/null 2>&1; then
    echo "---- journal of strata.service (last 60 lines) ----" >&2
    docker exec "$name" journalctl -u strata --no-pager -n 60 >&2 || true
  fi
  docker rm -f "$name" >/dev/null 2>&1 || true
  exit "$code"
}
trap cleanup EXIT

# Waits until `$@` succeeds inside the container, at most $1 seconds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until inside "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within $limit s"
    sleep 0.2
  done
}

# The cursor of the unit's last journal entry so far.
journal_cursor() {
  local c
  c="$(inside journalctl -u strata -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')" \
    || fail "journalctl failed"
  [ -n "$c" ] || fail "journalctl gave no cursor"
  printf '%s\n' "$c"
}

# Prints the unit's journal (after cursor $1, if not empty) once it has a
# line matching $2, waiting at most 10 s: a line written to journald's
# stream before `systemctl` returned may still be on its way into the
# journal. Fails (status 1) if none comes.
journal_until() {
  local cursor=$1 pattern=$2 deadline=$((SECONDS + 10)) text
  local args=(-u strata --no-pager)
  [ -z "$cursor" ] || args+=(--after-cursor "$cursor")
  while :; do
    text="$(inside journalctl "${args[@]}")" || return 1
    if grep -Eq "$pattern" <<<"$text"; then
      printf '%s\n' "$text"
      return 0
    fi
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

step "building the packages (0.1.0-1, then 0.1.0-2 as the newer build) from $binary"
deb1="$(deploy/debian/build.sh --binary "$binary" --deb-version 0.1.0-1 --fast --lintian)"
cp "$deb1" "$target/debian/test-old.deb"
deb2="$(deploy/debian/build.sh --binary "$binary" --deb-version 0.1.0-2 --fast)"

step "the systemd image"
deploy/docker/base-image.sh --systemd >&2

step "booting systemd in container $name"
# The flags deploy/docker/base-image.sh documents (SYS_ADMIN is all systemd
# needs; --privileged fails where Docker itself lacks capabilities).
docker run -d --name "$name" --cap-add SYS_ADMIN \
  --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
  --stop-signal SIGRTMIN+3 "$image" /sbin/init >/dev/null
wait_for 60 "systemd's socket" test -S /run/systemd/private
state="$(timeout 120 docker exec "$name" systemctl is-system-running --wait || true)"
[ "$state" = running ] || [ "$state" = degraded ] || fail "systemd did not boot: $state"
# A full Debian system installs documentation: drop the slim image's
# dpkg excludes (man pages, docs) so the test sees what it would.
inside rm -f /etc/dpkg/dpkg.cfg.d/strata-slim
docker cp "$target/debian/test-old.deb" "$name:/tmp/strata-old.deb"
docker cp "$deb2" "$name:/tmp/strata-new.deb"

step "dpkg -i (0.1.0-1): installed, not started (a node is configured first); enable --now starts it"
inside dpkg -i /tmp/strata-old.deb >&2
[ "$(inside systemctl is-active strata || true)" = inactive ] || fail "strata.service runs before it was enabled"
[ "$(inside systemctl is-enabled strata || true)" = disabled ] || fail "strata.service is enabled by the install"
inside systemctl enable --now strata
[ "$(inside systemctl is-active strata)" = active ] || fail "strata.service is not active after enable --now"
[ "$(inside systemctl show strata -p Type --value)" = notify ] || fail "strata.service is not Type=notify"
[ "$(inside ps -o user= -C strata)" = strata ] || fail "the node does not run as the strata user"
[ "$(inside stat -c %a:%U:%G /var/lib/strata)" = 750:strata:strata ] \
  || fail "/var/lib/strata is $(inside stat -c %a:%U:%G /var/lib/strata), not 750:strata:strata"
# (captured, not piped into grep -q: under pipefail the writer's SIGPIPE would fail the check)
conffiles="$(inside dpkg-query -W -f='${Conffiles}\n' strata)"
grep -q ' /etc/strata/strata.toml ' <<<"$conffiles" \
  || fail "/etc/strata/strata.toml is not a conffile"
inside grep -q '^data_dir = "/var/lib/strata"$' /etc/strata/strata.toml || fail "the config's data_dir"
for f in /usr/share/bash-completion/completions/strata /usr/share/zsh/vendor-completions/_strata \
  /usr/share/man/man1/strata.1.gz /usr/share/man/man1/strata-server.1.gz; do
  inside test -s "$f" || fail "$f is missing"
done
journal_until "" "strata .* listening on 127.0.0.1:7878" >/dev/null \
  || fail "the node's start line is not in the journal"
inside systemd-analyze security strata --no-pager >"$target/debian/security.txt" 2>&1 || true
step "sandbox: $(grep -o 'Overall exposure level for strata.service: .*' "$target/debian/security.txt" || echo 'systemd-analyze security gave no score')"

step "produce and consume 200 records"
inside strata topic create pkg --partitions 3 --replication-factor 1 >&2
inside sh -c 'seq 1 200 | strata produce pkg' >&2
got="$(inside timeout 60 strata consume pkg --from earliest -n 200 | sort -n | tr '\n' ' ')" \
  || fail "consuming 200 records did not end within 60 s"
[ "$got" = "$(seq 1 200 | tr '\n' ' ')" ] || fail "consumed records differ from the produced ones"

step "the README's commands: strata health, cluster wait-healthy, cluster rolling-restart (systemctl restart)"
[ "$(inside strata health --server 127.0.0.1:7878)" = SERVING ] || fail "strata health did not say SERVING"
inside strata cluster wait-healthy --wait 60s >&2 || fail "wait-healthy: not healthy"
pid="$(inside systemctl show strata -p MainPID --value)"
inside strata cluster rolling-restart --exec 'systemctl restart strata' --wait 60s >"$target/debian/rolling.txt" 2>&1 \
  || fail "rolling-restart failed: $(cat "$target/debian/rolling.txt")"
grep -q "rolling restart done: 1 nodes" "$target/debian/rolling.txt" || fail "rolling-restart: $(cat "$target/debian/rolling.txt")"
[ "$(inside systemctl show strata -p MainPID --value)" != "$pid" ] || fail "rolling-restart did not restart the node"

step "systemctl reload: the node stays up, serving"
pid="$(inside systemctl show strata -p MainPID --value)"
inside systemctl reload strata
[ "$(inside systemctl is-active strata)" = active ] || fail "not active after reload"
[ "$(inside systemctl show strata -p MainPID --value)" = "$pid" ] || fail "reload restarted the process"
inside strata topic describe pkg >/dev/null || fail "not serving after reload"

step "systemctl stop: exit 0, a clean stop"
cursor="$(journal_cursor)"
inside systemctl stop strata
[ "$(inside systemctl show strata -p Result --value)" = success ] \
  || fail "stop result: $(inside systemctl show strata -p Result --value)"
[ "$(inside systemctl show strata -p ExecMainStatus --value)" = 0 ] \
  || fail "exit status $(inside systemctl show strata -p ExecMainStatus --value)"
journal_until "$cursor" "strata: stopped" >/dev/null || fail "no 'strata: stopped' in the journal for this stop"

step "systemctl start: the last stop was clean, no torn tail"
cursor="$(journal_cursor)"
inside systemctl start strata
# Serving is logged after recovery: the journal up to it holds all of it.
since="$(journal_until "$cursor" "strata .* listening on")" || fail "the start's serving line is not in the journal"
grep -q "closed cleanly when the node last stopped" <<<"$since" || fail "the start after a clean stop did not say so"
if grep -Eq "not closed cleanly|torn tail|interrupted by a crash" <<<"$since"; then
  fail "recovery work after a clean stop: $(grep -E 'not closed cleanly|torn tail|interrupted by a crash' <<<"$since")"
fi

step "upgrade to 0.1.0-2: the running node is left alone; the edited config and the data are kept"
inside sed -i 's/^retention_check_interval_ms = 30000$/retention_check_interval_ms = 45000/' /etc/strata/strata.toml
inside grep -q '^retention_check_interval_ms = 45000$' /etc/strata/strata.toml || fail "could not edit the config"
pid="$(inside systemctl show strata -p MainPID --value)"
inside dpkg -i /tmp/strata-new.deb >&2
[ "$(inside dpkg-query -W -f='${Version}' strata)" = 0.1.0-2 ] || fail "not upgraded"
inside grep -q '^retention_check_interval_ms = 45000$' /etc/strata/strata.toml || fail "the upgrade lost the edit"
[ "$(inside systemctl is-active strata)" = active ] || fail "not active after the upgrade"
[ "$(inside systemctl show strata -p MainPID --value)" = "$pid" ] || fail "the upgrade restarted the node by itself"
inside systemctl restart strata
[ "$(inside systemctl show strata -p MainPID --value)" != "$pid" ] || fail "systemctl restart did not restart the node"
got="$(inside timeout 60 strata consume pkg --from earliest -n 200 | sort -n | tr '\n' ' ')" \
  || fail "consuming 200 records after the upgrade did not end within 60 s"
[ "$got" = "$(seq 1 200 | tr '\n' ' ')" ] || fail "records lost across the upgrade"

step "dpkg -r: data, config and user stay"
inside dpkg -r strata >&2
inside test ! -e /usr/bin/strata || fail "/usr/bin/strata left after remove"
[ "$(inside systemctl is-active strata || true)" != active ] || fail "still running after remove"
inside test -d /var/lib/strata/topics || fail "remove deleted the data"
inside test -f /etc/strata/strata.toml || fail "remove deleted the config"
inside getent passwd strata >/dev/null || fail "remove deleted the user"

step "dpkg --purge: all gone"
inside dpkg --purge strata >&2
for p in /var/lib/strata /var/log/strata /etc/strata; do
  inside test ! -e "$p" || fail "$p left after purge"
done
if inside getent passwd strata >/dev/null; then fail "the strata user is left after purge"; fi
if inside getent group strata >/dev/null; then fail "the strata group is left after purge"; fi

step "ok"
echo "package test: ok ($((SECONDS - started)) s)"
