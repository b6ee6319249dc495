"""The request path's memos: admission verdicts follow the replica's networks and services, and a
frame built from a member's template carries the route and the request's own fields."""

from __future__ import annotations

import asyncio

import pytest

from consumer_host.datapath import Attachment, PoolVm, route
from consumer_host.tokens import PlainToken
from consumer_host.service import ConsumerConfig, RequestPath
from wire.v1 import consumer_pb2 as pb
from mapping import keys
from wire.errors import LeasenetError, NotFound, Status, Unauthenticated
from mapping.model import HostId, LeasePolicy, Network, Service, VmId
from mapping.replica import Replica
from mapping.store.memory import MemoryStore

ECHO = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy())
VM = Attachment("blue", "10.1.0.1", PlainToken("secret"))
MEMBER = PoolVm(VmId("blue/10.1.1.5"), "10.1.1.5", "127.0.0.1:7100", 42)


def request(token: str = "secret", src: str = "10.1.0.1", request_id: int = 1) -> pb.SendRequest:
    return pb.SendRequest(network="blue", src=src, token=token, target="10.1.255.1:7", payload=b"hi",
                          request_id=request_id, src_port=5000)


async def synced_path() -> tuple[MemoryStore, Replica, RequestPath, asyncio.Task[None]]:
    store = MemoryStore()
    for record in (Network("blue", 100), ECHO):
        await store.put(keys.key_of(record), keys.encode(record))
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    config = ConsumerConfig(HostId("c1"), "127.0.0.1:0", "127.0.0.1:7200", [], {VM.vm_id: VM})
    # admission and frames need neither pools nor tunnels
    return store, replica, RequestPath(config, replica, None, None), task  # type: ignore[arg-type]


async def test_an_admission_holds_until_its_service_changes() -> None:
    store, replica, path, task = await synced_path()
    try:
        first = await path._admit(request())
        assert await path._admit(request()) is first  # remembered
        with pytest.raises(LeasenetError) as refused:
            await path._admit(request(token="guess"))
        assert type(refused.value) is Unauthenticated and refused.value.code == Status.UNAUTHENTICATED
        assert await path._admit(request()) is first  # a refusal is not remembered over the verdict

        revision = (await store.delete(keys.service_key("echo"))).revision
        assert await replica.wait_for_revision(revision, 5)
        with pytest.raises(LeasenetError) as gone:
            await path._admit(request())
        assert type(gone.value) is NotFound and gone.value.code == Status.NOT_FOUND
    finally:
        task.cancel()


async def test_a_frame_from_a_template_has_the_route_and_its_own_request() -> None:
    _, _, path, task = await synced_path()
    try:
        admitted = await path._admit(request())
        a = path._frame(MEMBER, admitted, request(request_id=1), 5.0)
        b = path._frame(MEMBER, admitted, request(src="10.1.0.1", request_id=2), 5.0)
        r = route(MEMBER, ECHO, 100, "127.0.0.1:7200")
        for frame, request_id in ((a, 1), (b, 2)):
            assert (frame.outer.vni, frame.outer.src_host, frame.outer.dst_host, frame.outer.fencing_token) == (
                r.vni, r.src_host, r.dst_host, r.fencing_token)
            assert (frame.inner.network, frame.inner.src, frame.inner.src_port, frame.inner.dst,
                    frame.inner.dst_port, frame.inner.request_id, frame.payload) == (
                "blue", "10.1.0.1", 5000, "10.1.1.5", 7, request_id, b"hi")
            assert frame.inner.deadline_ms > 0
        a.payload = b"changed"
        assert path._frame(MEMBER, admitted, request(), 5.0).payload == b"hi"  # the template is not shared
    finally:
        task.cancel()
