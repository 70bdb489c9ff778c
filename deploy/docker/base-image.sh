#!/usr/bin/env bash
# Builds Strata's Debian base images from Debian's packages, for machines
# without an image registry (nothing to pull): debootstrap writes a minimal
# bookworm root file system, which `docker import` turns into an image. Like
# jepsen-like-tests/src/image.rs, the root file system is cached under
# ~/.cache/strata/ and an image Docker already has is not built again, so
# only the first run pays (a minute or two, mostly downloads).
#
#   deploy/docker/base-image.sh              # strata-debian:bookworm
#   deploy/docker/base-image.sh --systemd    # strata-debian-systemd:bookworm
#   deploy/docker/base-image.sh --force ...  # debootstrap and import again
#
# strata-debian:bookworm: debootstrap --variant=minbase plus ca-certificates
# (bash and coreutils' `timeout`, which the strata image's health check
# uses, are in minbase). It stands in for debian:bookworm-slim:
#   docker build --build-arg BASE=strata-debian:bookworm ...
# Like the official image, it has no policy-rc.d: a Dockerfile that installs
# a package with a service adds one itself (deploy/compose/prometheus.Dockerfile).
#
# strata-debian-systemd:bookworm: the same plus systemd, systemd-sysv, dbus
# and procps, to boot systemd as PID 1 (e.g. to install and try a .deb with
# its unit). On this kind of host (Docker 20.10, cgroups v1) these flags
# boot it; `systemctl is-system-running --wait` answers "running" (the image
# masks the units that cannot work in a container), and a unit with
# systemd's sandboxing (ProtectSystem=strict, PrivateTmp, DynamicUser,
# SystemCallFilter=@system-service, ...) runs:
#
#   docker run -d --name strata-systemd --cap-add SYS_ADMIN \
#     --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
#     --stop-signal SIGRTMIN+3 strata-debian-systemd:bookworm /sbin/init
#   until docker exec strata-systemd test -S /run/systemd/private; do sleep 0.2; done
#   docker exec strata-systemd systemctl is-system-running --wait
#   docker stop strata-systemd && docker rm strata-systemd
#
# - `systemctl` run before systemd has made its socket says "Failed to
#   connect to bus": wait for /run/systemd/private first (the `until` line).
# - --privileged works on an ordinary host, but not where Docker itself runs
#   without every capability (as on the machine this was written on: "runc
#   create failed: unable to apply caps: operation not permitted");
#   --cap-add SYS_ADMIN is all systemd needs.
# - /sbin/init is also the image's default command; --stop-signal
#   SIGRTMIN+3 makes `docker stop` shut systemd down cleanly (in a fraction
#   of a second) rather than wait 10 s for the kill, as `docker import`
#   cannot set an image's STOPSIGNAL.
#
# Needs root (debootstrap) and Docker; installs debootstrap with apt-get when
# it is missing. MIRROR overrides the Debian mirror.
set -euo pipefail

MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
CACHE="${HOME:-/root}/.cache/strata"

systemd=false
force=false
for arg in "$@"; do
  case "$arg" in
    --systemd) systemd=true ;;
    --force) force=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "base-image.sh: unknown argument '$arg' (--systemd, --force, --help)" >&2
      exit 2
      ;;
  esac
done

if $systemd; then
  image="strata-debian-systemd:$SUITE"
  rootfs="$CACHE/debian-systemd-rootfs-$SUITE"
  packages="ca-certificates,systemd,systemd-sysv,dbus,procps"
else
  image="strata-debian:$SUITE"
  rootfs="$CACHE/debian-rootfs-$SUITE"
  packages="ca-certificates"
fi
done_marker="$rootfs/.strata-complete"

log() { echo "[base-image] $*" >&2; }

if ! $force && docker image inspect "$image" >/dev/null 2>&1; then
  log "$image exists (--force builds it again)"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "base-image.sh: debootstrap needs root; run it as root (or with sudo)" >&2
  exit 1
fi

if $force || [ ! -e "$done_marker" ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap (apt-get)"
    apt-get install -y -qq debootstrap >/dev/null ||
      { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; } || {
      echo "base-image.sh: debootstrap is missing and could not be installed: apt-get install debootstrap" >&2
      exit 1
    }
  fi
  log "debootstrap $SUITE (minbase + $packages) into $rootfs from $MIRROR (a minute or two)"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  if ! debootstrap --variant=minbase --include="$packages" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1; then
    tail -n 20 "$rootfs.log" >&2
    echo "base-image.sh: debootstrap failed; its log: $rootfs.log" >&2
    exit 1
  fi

  log "tidying the root file system"
  # The suite's updates and security fixes for what images built on it
  # install (debootstrap writes the main suite only).
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
  # Downloaded packages and package lists: not part of an image (an image
  # runs `apt-get update` before installing, as with the official one).
  # Docker supplies resolv.conf, hosts and hostname to every container.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # Documentation, manuals and translations, as debian:bookworm-slim leaves
  # them out (also from packages installed later); copyright files stay.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/strata-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
    "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/locale/*
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  if $systemd; then
    # Units that have nothing to do in a container, or fail there and leave
    # the system "degraded": consoles, kernel-side file systems, udev.
    for unit in getty@.service serial-getty@.service console-getty.service \
      sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
      sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
      systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service \
      systemd-remount-fs.service systemd-firstboot.service; do
      ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    # A machine id is made at first boot in every container.
    : >"$rootfs/etc/machine-id"
  fi
  touch "$done_marker"
else
  log "reusing the root file system in $rootfs"
fi

log "importing $rootfs as $image"
changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
if $systemd; then
  # systemd knows it runs in a container from this variable.
  changes+=(--change 'ENV container=docker' --change 'CMD ["/sbin/init"]')
else
  changes+=(--change 'CMD ["/bin/bash"]')
fi
tar -C "$rootfs" --exclude=./.strata-complete --numeric-owner -c . |
  docker import "${changes[@]}" - "$image" >/dev/null
log "built $image ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%d MB", $1 / 1e6}'))"
