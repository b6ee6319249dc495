"""SPEC §3 step 11: the producer host refuses frames it must not deliver, each with its own status
and sentence, and keeps serving the frames it should."""

from __future__ import annotations

import grpc
import pytest

from wire import rpc
from wire.tls import Identity, Kind
from wire.v1 import tunnel_pb2 as tpb
from wire.v1 import tunnel_pb2_grpc as tpb_grpc
from tests.integration.helpers import dial, leases, send, start

pytestmark = pytest.mark.integration


async def exchange(address: str, frames: list[tpb.Frame],
                   sender: Identity = Identity(Kind.CONSUMER, "c1")) -> dict[int, tpb.Frame]:
    """Frames sent to a producer host as the consumer host `sender` (its certificate) would send them."""
    async with dial(address, Kind.PRODUCER, sender) as channel:
        call = tpb_grpc.TunnelStub(channel).Exchange()
        await call.write(tpb.FrameBatch(frames=frames))
        answers: dict[int, tpb.Frame] = {}
        while len(answers) < len(frames):
            batch = await call.read()
            answers.update({f.id: f for f in batch.frames})
        await call.done_writing()
        return answers


async def test_the_producer_host_refuses_misaddressed_unknown_unhosted_stale_and_foreign_frames(cluster):
    topo = start(cluster, vms=2, max_pool=1, consumers=[["10.1.0.1", "10.1.0.2"]])
    consumer, producer = topo.consumers[0], topo.producers[0]
    await send(consumer.address, "10.1.0.1")
    [lease] = await leases(topo.registry.address)
    [member] = lease.members

    def frame(i: int, *, dst_host: str = producer.address, vni: int = 100, dst: str = member.address,
              token: int = member.fencing_token, src: str = "10.1.0.1", network: str = "blue") -> tpb.Frame:
        return tpb.Frame(id=i, outer=tpb.OuterHeader(vni=vni, src_host=consumer.address, dst_host=dst_host,
                                                     fencing_token=token),
                         inner=tpb.InnerHeader(network=network, src=src, dst=dst, dst_port=7, request_id=i),
                         payload=b"frame %d" % i)

    answers = await exchange(producer.address, [
        frame(1, dst_host="127.0.0.1:1"),          # addressed to another host
        frame(2, vni=4242),                        # unknown VNI
        frame(3, dst="10.1.9.9"),                  # a VM not hosted here
        frame(4, token=member.fencing_token - 1),  # a stale claim
        frame(5, src="10.1.0.2"),                  # a claim that belongs to another consumer VM
        frame(6),                                  # a good one
        tpb.Frame(id=7),                           # malformed: no headers
    ])
    expect = {
        1: (grpc.StatusCode.INVALID_ARGUMENT, "addressed to host 127.0.0.1:1"),
        2: (grpc.StatusCode.NOT_FOUND, "VNI 4242"),
        3: (grpc.StatusCode.NOT_FOUND, "is not hosted on host p1"),
        4: (grpc.StatusCode.FAILED_PRECONDITION, "not the current claim"),
        5: (grpc.StatusCode.PERMISSION_DENIED, "is leased to consumer VM blue/10.1.0.1, not to blue/10.1.0.2"),
        6: (grpc.StatusCode.OK, ""),
        7: (grpc.StatusCode.INVALID_ARGUMENT, "missing"),
    }
    for i, (code, text) in expect.items():
        got = answers[i]
        assert (rpc.STATUS_BY_NUMBER[got.status_code], text in got.status_message) == (code, True), (i, got)
        assert got.delivered == (code == grpc.StatusCode.OK)
    good = answers[6]
    assert good.payload == b"frame 6"
    # SPEC step 12: outer addresses swapped, inner source is the producer VM
    assert (good.outer.src_host, good.outer.dst_host) == (producer.address, consumer.address)
    assert (good.inner.src, good.inner.dst) == (member.address, "10.1.0.1")
    # the host is unharmed: the consumer VM's traffic still flows
    assert (await send(consumer.address, "10.1.0.1", b"after")).payload == b"after"
