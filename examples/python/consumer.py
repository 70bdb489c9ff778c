#!/usr/bin/env python3
"""Receives from the topic `hello` as a work queue (RabbitMQ tutorials 1-2, on Strata).

Joins the share group `hello-workers` with a prefetch of 1: the server hands this
consumer one record at a time, and the next only after it acknowledged the last. Each
record is acknowledged manually, after it was processed; a record this consumer
received but never acknowledged (it died) is delivered again after its lock times out.
Waits for more until Ctrl-C.

    pip install -r requirements.txt && ./gen.sh
    python3 consumer.py [--server 127.0.0.1:7878] [--tls-ca ca.crt --token stk_...]
"""
import argparse
import os
import sys
import uuid

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from strata.v1 import strata_pb2 as pb  # noqa: E402
from strata.v1 import strata_pb2_grpc as rpc  # noqa: E402

import strata_channel  # noqa: E402

GROUP = "hello-workers"


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
    consumer_id = f"consumer-{uuid.uuid4()}"
    with strata_channel.open_channel(args) as channel:
        ensure_topic(channel, "hello")
        groups = rpc.GroupsStub(channel)
        print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
        try:
            while True:
                # Long poll: waits up to 5 s for a record, at most 1 held unacknowledged.
                resp = groups.ShareFetch(
                    pb.ShareFetchRequest(group=GROUP, topic="hello", consumer_id=consumer_id,
                                         max_records=1, max_wait_ms=5000),
                    timeout=30,
                )
                for shared in resp.records:
                    print(f" [x] Received {shared.record.value.decode(errors='replace')!r}", flush=True)
                    # The producer's trace context, to link this processing to it.
                    for h in shared.record.headers:
                        if h.key == "traceparent":
                            print(f" [x] trace {h.value.decode(errors='replace').split('-')[1]}", flush=True)
                    # ... process the record here, then acknowledge it.
                    ack = pb.Acknowledgement(partition=shared.partition, offset=shared.record.offset,
                                             kind=pb.ACK_KIND_ACCEPT)
                    done = groups.ShareAck(
                        pb.ShareAckRequest(group=GROUP, topic="hello", consumer_id=consumer_id, acks=[ack]),
                        timeout=10,
                    )
                    for failure in done.failed:
                        print(f" [!] ack of offset {failure.offset} failed: {failure.message}", file=sys.stderr)
                    if not done.failed:
                        print(" [x] Done", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
