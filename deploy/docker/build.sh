#!/usr/bin/env bash
# Builds the strata image (deploy/docker/Dockerfile) from a prebuilt binary:
# copies the binary, the Dockerfile and the health check into a temporary
# build context (not the whole repository) and runs `docker build`.
#
#   deploy/docker/build.sh [--tag TAG] [--base IMAGE] [STRATA_BINARY]
#
#   STRATA_BINARY  default: ${CARGO_TARGET_DIR:-target}/release/strata
#                  (`cargo build --release -p strata`), relative to the
#                  repository's root
#   --tag TAG      the image's name, default strata:local
#   --base IMAGE   the Debian image to start from, default the Dockerfile's
#                  debian:bookworm-slim; without a registry use
#                  strata-debian:bookworm (deploy/docker/base-image.sh)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

tag=strata:local
base=
binary=
while [ $# -gt 0 ]; do
  case "$1" in
    --tag)
      tag="${2:?--tag needs a value}"
      shift 2
      ;;
    --base)
      base="${2:?--base needs a value}"
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "build.sh: unknown option '$1' (--tag, --base, --help)" >&2
      exit 2
      ;;
    *)
      binary="$1"
      shift
      ;;
  esac
done
if [ -z "$binary" ]; then
  target="${CARGO_TARGET_DIR:-target}"
  case "$target" in /*) ;; *) target="$root/$target" ;; esac
  binary="$target/release/strata"
fi
if [ ! -x "$binary" ]; then
  echo "build.sh: no strata binary at $binary (build one: cargo build --release -p strata, or give its path)" >&2
  exit 1
fi

context="$(mktemp -d "${TMPDIR:-/tmp}/strata-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
# A copy, not a link: a build writing the binary meanwhile cannot change it.
cp "$binary" "$context/strata"
cp "$here/Dockerfile" "$here/healthcheck" "$context/"

args=(--tag "$tag")
if [ -n "$base" ]; then
  args+=(--build-arg "BASE=$base")
fi
echo "[build] docker build ${args[*]} with $binary ($(du -h "$binary" | cut -f1))" >&2
docker build "${args[@]}" "$context" >&2
echo "[build] built $tag" >&2
