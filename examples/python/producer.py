#!/usr/bin/env python3
"""Sends "Hello World!" to the durable topic `hello` (RabbitMQ tutorial 1, on Strata).

The record is persistent: the server answers once it is fsync'd on a majority of the
partition's replicas (acks=quorum, the default).

It is traced: the request carries a W3C `traceparent` (gRPC metadata, so the broker's spans
continue the trace when the node exports traces over OTLP) and the record carries it in a
`traceparent` header (so consumers link back to it). An application using the OpenTelemetry
SDK would put its current span's context there (`opentelemetry.propagate.inject(carrier)`);
this example makes a sampled one of its own, or takes TRACEPARENT from the environment.

    pip install -r requirements.txt && ./gen.sh
    python3 producer.py [--server 127.0.0.1:7878] [--tls-ca ca.crt --token stk_...]
"""
import argparse
import os
import secrets
import sys

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from strata.v1 import strata_pb2 as pb  # noqa: E402
from strata.v1 import strata_pb2_grpc as rpc  # noqa: E402

import strata_channel  # noqa: E402


def ensure_topic(channel, name):
    admin = rpc.AdminStub(channel)
    try:
        admin.CreateTopic(pb.CreateTopicRequest(name=name, partitions=1), timeout=10)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def traceparent():
    """The W3C trace context of this send: TRACEPARENT, else a new sampled trace."""
    given = os.environ.get("TRACEPARENT", "")
    if given:
        return given
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    strata_channel.add_arguments(parser)
    args = parser.parse_args()
    with strata_channel.open_channel(args) as channel:
        ensure_topic(channel, "hello")
        producer = rpc.ProducerStub(channel)
        trace = traceparent()
        record = pb.Record(value=b"Hello World!", headers=[pb.Header(key="traceparent", value=trace.encode())])
        producer.Produce(
            pb.ProduceRequest(topic="hello", records=[record], acks=pb.ACKS_QUORUM),
            metadata=(("traceparent", trace),),
            timeout=10,
        )
        print(" [x] Sent 'Hello World!'")
        print(f" [x] trace {trace.split('-')[1]}")


if __name__ == "__main__":
    main()
