#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver for benchmarks: accepts every export, counts the spans,
keeps nothing. Prints `listening on PORT` once serving; on SIGTERM prints `spans N` and exits.

    otlp_sink.py [--port 4317]

Needs `grpcio` and `opentelemetry-proto` (observability-cost.py installs them in a virtualenv)."""
import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=4317)
    args = ap.parse_args()
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(1)
    print(f"spans {sink.spans}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
