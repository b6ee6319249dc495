"""Leasing.Calls (issue 19 item 3): many leasing calls in flight on one stream to a real registry,
each answered under its own id, a refused call answered as its unary twin would be and leaving the
others alone; and a registry without the stream (an older release) asked with unary calls."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from consumer_host.leasing_stream import LeasingStream
from consumer_host.registry_client import RegistryClient
from leasenet.cluster import write_toml
from tests.conftest import eventually_async, tls_as
from tests.integration.helpers import cluster_toml, dial, leases
from wire.errors import NotFound
from wire.tls import Identity, Kind
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

C1 = Identity(Kind.CONSUMER, "c1")
VMS = 8


def grant_request(n: int, service: str = "echo") -> rpb.RequestLeaseRequest:
    return rpb.RequestLeaseRequest(service=service, consumer_network="blue", consumer_vm=f"10.1.0.{n}")


async def test_leasing_calls_in_flight_on_one_stream_are_each_answered_under_their_own_id(cluster):
    registry = cluster.registry("registry1", write_toml(cluster.workdir / "cluster.toml", cluster_toml()))
    cluster.producer("p1", network="blue", service="echo", vms=VMS, vm_address_start="10.1.1.1")
    cluster.start_presence(Kind.CONSUMER, "c1")
    async with dial(registry.address, Kind.REGISTRY, C1) as channel:
        stream = LeasingStream(rpb_grpc.LeasingStub(channel), f"leasing agent {registry.address}")

        async def settle(call):  # noqa: ANN001, ANN202 - a call's answer or its error
            try:
                return await call
            except Exception as exc:  # noqa: BLE001 - the error is the answer under test
                return exc

        async def producer_vms_up() -> bool:
            return len(await _vms(registry.address)) == VMS

        await eventually_async(producer_vms_up, what="the producer host's VMs registered")
        answers = await asyncio.gather(*(
            [settle(stream.call("RequestLease", grant_request(n), 10)) for n in range(1, VMS + 1)]
            + [settle(stream.call("RequestLease", grant_request(99, service="nosuch"), 10)),
               settle(stream.call("ReleaseLease", rpb.LeaseRef(lease_id="7"), 10))]))
        granted, (unknown_service, unknown_pool) = answers[:VMS], answers[VMS:]

        assert all(isinstance(a, rpb.Lease) for a in granted), granted
        assert sorted(a.consumer_vm for a in granted) == sorted(f"10.1.0.{n}" for n in range(1, VMS + 1))
        members = [m.vm_id for a in granted for m in a.members]
        assert len(members) == VMS and len(set(members)) == VMS, "two pools share a VM"
        assert isinstance(unknown_service, NotFound) and "nosuch" in unknown_service.message, unknown_service
        assert isinstance(unknown_pool, NotFound), unknown_pool

        await asyncio.gather(*(stream.call("ReleaseLease", rpb.LeaseRef(lease_id=a.lease_id), 10) for a in granted))
        assert await leases(registry.address) == []
        assert stream.supported
        await stream.close()


async def test_grants_go_on_without_a_failure_while_a_registry_drains(cluster):
    """SIGTERM: the registry says NOT_SERVING, answers the calls it read, ends its streams; the
    consumer host's calls go to the other registry meanwhile, none failing."""
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml())
    first, second = (cluster.registry(name, config) for name in ("registry1", "registry2"))
    cluster.producer("p1", network="blue", service="echo", vms=VMS, vm_address_start="10.1.1.1")
    cluster.start_presence(Kind.CONSUMER, "c1")

    async def producer_vms_up() -> bool:
        return len(await _vms(second.address)) == VMS

    await eventually_async(producer_vms_up, what="the producer host's VMs registered")
    client = RegistryClient([first.address, second.address], tls_as(C1))
    failures: list[str] = []
    cycles = 0

    async def churn(n: int, stop: asyncio.Event) -> None:
        nonlocal cycles
        while not stop.is_set():
            try:
                lease = await client.request_lease("echo", "blue", f"10.1.0.{n}", "c1", [])
                await client.release_lease(lease.lease_id)
                cycles += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(f"{type(exc).__name__}: {exc} ({getattr(exc, 'detail', '')})")

    stop = asyncio.Event()
    workers = [asyncio.create_task(churn(n, stop)) for n in range(1, 5)]
    try:
        await eventually_async(lambda: cycles >= 20, what="grants flowing")
        stopped = asyncio.get_running_loop().run_in_executor(None, cluster.stop, first.name)
        assert await stopped == 0, "registry1 did not drain and exit cleanly"
        before = cycles
        await eventually_async(lambda: cycles >= before + 20, what="grants flowing at the other registry")
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await client.close()
    assert failures == [], failures


async def _vms(address: str) -> list[rpb.ProducerVm]:
    async with dial(address, Kind.REGISTRY) as channel:
        return list((await rpb_grpc.InspectionStub(channel).ListVms(rpb.ListVmsRequest(), timeout=5)).vms)


class UnaryOnlyRegistry(rpb_grpc.LeasingServicer):
    """A registry of a release before Leasing.Calls: the generated base answers it UNIMPLEMENTED."""

    async def RequestLease(self, request: rpb.RequestLeaseRequest, context: grpc.aio.ServicerContext) -> rpb.Lease:  # noqa: N802
        return rpb.Lease(lease_id="1f", service=request.service, consumer_vm=request.consumer_vm)


async def test_a_registry_without_the_stream_is_asked_with_unary_calls() -> None:
    server = grpc.aio.server()
    rpb_grpc.add_LeasingServicer_to_server(UnaryOnlyRegistry(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = RegistryClient([f"127.0.0.1:{port}"])
    try:
        for vm in ("10.1.0.1", "10.1.0.2"):  # the first learns there is no stream, the second does not try
            lease = await client.request_lease("echo", "blue", vm, "c1", [])
            assert (lease.lease_id, lease.consumer_vm) == ("1f", vm)
        assert not client._streams[0].supported
    finally:
        await client.close()
        await server.stop(None)


class DrainingOnce(rpb_grpc.LeasingServicer):
    """A registry whose first stream drains: it reads a call, answers nothing and ends the stream
    cleanly (the call was never started); later streams answer."""

    def __init__(self) -> None:
        self.streams = 0

    async def Calls(self, calls, context):  # noqa: ANN001, ANN201, N802 - the gRPC method's shape
        self.streams += 1
        async for call in calls:
            if self.streams == 1:
                return
            yield rpb.LeasingAnswer(id=call.id, lease=rpb.Lease(lease_id="2a", consumer_vm=call.request.consumer_vm))


async def test_a_call_left_unread_by_a_draining_registry_is_sent_again_on_a_new_stream() -> None:
    registry = DrainingOnce()
    server = grpc.aio.server()
    rpb_grpc.add_LeasingServicer_to_server(registry, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = RegistryClient([f"127.0.0.1:{port}"])
    try:
        lease = await client.request_lease("echo", "blue", "10.1.0.1", "c1", [])
        assert (lease.lease_id, lease.consumer_vm, registry.streams) == ("2a", "10.1.0.1", 2)
        assert client.calls == 1  # one attempt: the stream's ending was not a failure
    finally:
        await client.close()
        await server.stop(None)
