#!/usr/bin/env bash
# Generates the Python stubs of Strata's gRPC API (proto/) into gen/.
#   pip install -r requirements.txt && ./gen.sh
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p gen
python3 -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen ../../proto/strata/v1/strata.proto
