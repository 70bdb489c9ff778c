#!/usr/bin/env python3
"""Sends "Hello World!" to the durable topic `hello` (RabbitMQ tutorial 1, on Strata).

The record is persistent: the server answers once it is fsync'd on a majority of the
partition's replicas (acks=quorum, the default).

    pip install -r requirements.txt && ./gen.sh
    python3 producer.py [--server 127.0.0.1:7878] [--tls-ca ca.crt --token stk_...]
"""
import argparse
import os
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    strata_channel.add_arguments(parser)
    args = parser.parse_args()
    with strata_channel.open_channel(args) as channel:
        ensure_topic(channel, "hello")
        producer = rpc.ProducerStub(channel)
        producer.Produce(
            pb.ProduceRequest(topic="hello", records=[pb.Record(value=b"Hello World!")], acks=pb.ACKS_QUORUM),
            timeout=10,
        )
        print(" [x] Sent 'Hello World!'")


if __name__ == "__main__":
    main()
