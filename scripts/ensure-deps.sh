#!/usr/bin/env bash
# Makes sure the Debian packages Strata's build needs are installed:
#   clang, libclang-dev  - bindgen for RocksDB's C API (the rocksdb crate)
#   protobuf-compiler    - protoc, for the gRPC API in proto/
#   build-essential      - a C++ compiler for the bundled RocksDB
#   iproute2             - `ip`, for the fault-injection suite's network namespaces
#   python3, python3-venv - the Python example's test (stubs generated from proto/)
#   prometheus           - prometheus and promtool, for the metrics test (crates/strata/tests/prometheus.rs)
#   curl                 - the README's metrics example
# Installs them with apt-get when missing (as root, or through sudo);
# otherwise prints the exact command to run.
set -euo pipefail

packages=(clang libclang-dev protobuf-compiler build-essential iproute2 python3 python3-venv prometheus curl)
missing=()
for p in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "strata: installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "strata: please run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "strata: cargo is missing. Install Rust 1.89 or newer: https://rustup.rs (curl ... | sh), then retry." >&2
  exit 1
fi
