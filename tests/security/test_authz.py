"""Authorisation from the peer's certificate (SPEC §10), over real grpc.aio servers with mutual TLS
in this process: a registry (leasing + inspection) and a producer host's tunnel endpoint, sharing
one in-memory store. Every caller below holds a valid certificate from the cluster CA; what it may
do depends on the kind and id its certificate names, never on what its requests say."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from leasenet.etcd import free_port
from mapping import keys
from mapping.model import Host, HostId, HostKind, LeaseId, LeasePolicy, Network, ProducerVm, Record, Service, lease_hex
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from tests.unit.agents import register_consumer_host
from producer_host.actors import VmActor
from producer_host.handlers import handler_maker
from producer_host.service import TunnelServicer
from registry.leasing import LeasingAgent
from registry.service import InspectionServicer, LeasingServicer
from tests.security.conftest import material
from wire.tls import Identity, Kind, channel_credentials, channel_options, server_credentials
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc
from wire.v1 import tunnel_pb2 as tpb
from wire.v1 import tunnel_pb2_grpc as tpb_grpc

C1, C2 = Identity(Kind.CONSUMER, "c1"), Identity(Kind.CONSUMER, "c2")
PRODUCER, REGISTRY, OPERATOR = Identity(Kind.PRODUCER, "p1"), Identity(Kind.REGISTRY, "r1"), Identity(Kind.OPERATOR, "admin")
SERVICE = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=1, max_pool=3, lease_ttl_s=10))
CALL_TIMEOUT_S = 30  # generous: other test runs share this machine's two cores
VMS = [ProducerVm("blue", f"10.1.1.{n}", HostId("p1"), "echo") for n in (1, 2, 3)]


@dataclass
class World:
    pki: Path
    registry: str
    producer: str
    liveness_lease: LeaseId
    store: MemoryStore
    replica: Replica

    def dial(self, who: Identity, kind: Kind) -> grpc.aio.Channel:
        address = self.registry if kind is Kind.REGISTRY else self.producer
        return grpc.aio.secure_channel(address, channel_credentials(material(self.pki, who.kind, who.id)),
                                       options=channel_options(kind))

    async def leasing(self, who: Identity, method: str, request: object) -> object:
        async with self.dial(who, Kind.REGISTRY) as channel:
            return await getattr(rpb_grpc.LeasingStub(channel), method)(request, timeout=CALL_TIMEOUT_S)

    async def inspect(self, who: Identity, method: str, request: object) -> object:
        async with self.dial(who, Kind.REGISTRY) as channel:
            return await getattr(rpb_grpc.InspectionStub(channel), method)(request, timeout=CALL_TIMEOUT_S)

    async def lease(self, who: Identity = C1, vm: str = "10.1.0.1") -> rpb.Lease:
        return await self.leasing(who, "RequestLease", rpb.RequestLeaseRequest(  # type: ignore[return-value]
            service="echo", consumer_network="blue", consumer_vm=vm, consumer_host=who.id))

    async def exchange(self, who: Identity, frame: tpb.Frame) -> tpb.Frame:
        async with self.dial(who, Kind.PRODUCER) as channel:
            call = tpb_grpc.TunnelStub(channel).Exchange(timeout=CALL_TIMEOUT_S)
            await call.write(tpb.FrameBatch(frames=[frame]))
            [answer] = (await call.read()).frames
            await call.done_writing()
            return answer

    async def refused_stream(self, who: Identity, frame: tpb.Frame) -> tuple[grpc.StatusCode, str]:
        """How a tunnel stream that the producer host refuses at once ends: its status and sentence."""
        async with self.dial(who, Kind.PRODUCER) as channel:
            call = tpb_grpc.TunnelStub(channel).Exchange(timeout=CALL_TIMEOUT_S)
            try:
                await call.write(tpb.FrameBatch(frames=[frame]))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the server may end the stream before our first write
            return await call.code(), await call.details()

    async def call(self, who: Identity, frame: tpb.Frame) -> list[tpb.CallDown]:
        """A transparent call (Tunnel.Call) with `frame`'s headers: what came back."""
        async with self.dial(who, Kind.PRODUCER) as channel:
            call = tpb_grpc.TunnelStub(channel).Call(timeout=CALL_TIMEOUT_S)
            try:
                await call.write(tpb.CallUp(start=tpb.CallStart(outer=frame.outer, inner=frame.inner,
                                                                method="/p.S/M"),
                                            messages=[frame.payload], half_close=True))
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the server may end the stream before our first write: reading says how
            return [down async for down in call]

    def frame(self, member: rpb.PoolMember, *, src_host: str = "127.0.0.1:1", payload: bytes = b"hi") -> tpb.Frame:
        return tpb.Frame(id=1, outer=tpb.OuterHeader(vni=100, src_host=src_host, dst_host=self.producer,
                                                     fencing_token=member.fencing_token),
                         inner=tpb.InnerHeader(network="blue", src="10.1.0.1", dst=member.address, dst_port=7,
                                               request_id=1),
                         payload=payload)


async def _put(store: MemoryStore, record: Record, lease: int = 0) -> None:
    await store.put(keys.key_of(record), keys.encode(record), lease=lease)


async def _server(pki: Path, who: Identity) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(address, server_credentials(material(pki, who.kind, who.id)))
    return server, address


@pytest.fixture
async def world(pki: Path) -> AsyncIterator[World]:
    store = MemoryStore()
    replica = Replica(store)
    registry, registry_address = await _server(pki, REGISTRY)
    producer, producer_address = await _server(pki, PRODUCER)
    tunnel = TunnelServicer(HostId("p1"), replica, insecure=False)
    tunnel.address = producer_address
    tunnel.actors = {vm.vm_id: VmActor(vm, handler_maker("echo")) for vm in VMS}
    agent = LeasingAgent(store, replica, rng=random.Random(1))
    rpb_grpc.add_LeasingServicer_to_server(LeasingServicer(agent, insecure=False), registry)
    rpb_grpc.add_InspectionServicer_to_server(InspectionServicer(replica, insecure=False), registry)
    tpb_grpc.add_TunnelServicer_to_server(tunnel, producer)

    for record in [Network("blue", 100), SERVICE]:
        await _put(store, record)
    liveness = await store.grant_lease(30)  # the producer host's own lease, carrying its records
    for record in [Host(HostId("p1"), HostKind.PRODUCER, producer_address), *VMS]:
        await _put(store, record, liveness)
    for consumer in ("c1", "c2"):  # the consumer hosts the tests lease as: their pools hang on their leases
        await register_consumer_host(store, consumer)
    tasks = [asyncio.create_task(replica.run()), *(actor.start() for actor in tunnel.actors.values())]
    await replica.synced.wait()
    await registry.start()
    await producer.start()
    try:
        yield World(pki, registry_address, producer_address, LeaseId(liveness), store, replica)
    finally:
        await registry.stop(None)
        await producer.stop(None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


# --- the tunnel -----------------------------------------------------------------------------------
async def test_the_owner_s_frame_is_delivered(world: World) -> None:
    [member] = (await world.lease(C1)).members
    answer = await world.exchange(C1, world.frame(member, payload=b"mine"))
    assert (answer.status_code, answer.payload, answer.delivered) == (0, b"mine", True)


async def test_a_consumer_host_forging_frames_for_another_host_s_claim_is_refused(world: World) -> None:
    lease = await world.lease(C1)
    [member] = lease.members
    # c2 knows everything c1's frame carries (VNI, token, both VMs, even c1's address) but not c1's key
    answer = await world.exchange(C2, world.frame(member, payload=b"forged"))
    assert answer.status_code == grpc.StatusCode.PERMISSION_DENIED.value[0] and not answer.delivered
    assert "another consumer host's pool, not to consumer/c2" in answer.status_message
    assert answer.payload == b""


async def test_a_producer_or_registry_certificate_cannot_send_frames(world: World) -> None:
    [member] = (await world.lease(C1)).members
    for who in (PRODUCER, REGISTRY, OPERATOR):
        code, details = await world.refused_stream(who, world.frame(member))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (who, details)
        assert f"only consumer hosts send tunnel frames; this stream's peer is {who}" in details


async def test_a_call_is_validated_as_a_frame_is_and_only_the_owner_reaches_the_vm(world: World) -> None:
    [member] = (await world.lease(C1)).members
    [forged] = await world.call(C2, world.frame(member, payload=b"forged"))
    assert not forged.accepted and forged.end.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "another consumer host's pool, not to consumer/c2" in forged.end.details
    # the owner's call passes validation and reaches the VM, an in-process handler: it takes Send only
    [owned] = await world.call(C1, world.frame(member))
    assert not owned.accepted and owned.end.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "in-process handlers" in owned.end.details


async def test_a_producer_or_registry_certificate_cannot_open_a_call(world: World) -> None:
    [member] = (await world.lease(C1)).members
    for who in (PRODUCER, REGISTRY, OPERATOR):
        with pytest.raises(grpc.aio.AioRpcError) as refused_call:
            await world.call(who, world.frame(member))
        assert refused_call.value.code() == grpc.StatusCode.PERMISSION_DENIED, who
        assert "only consumer hosts send tunnel frames" in (refused_call.value.details() or "")


# --- leasing --------------------------------------------------------------------------------------
async def test_a_request_naming_another_consumer_host_is_refused(world: World) -> None:
    error = await refused(world.leasing(C2, "RequestLease", rpb.RequestLeaseRequest(
        service="echo", consumer_network="blue", consumer_vm="10.1.0.9", consumer_host="c1")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "consumer/c2 cannot lease for consumer host 'c1'" in (error.details() or "")
    assert world.replica.state.pools == {}


async def test_the_lease_goes_to_the_certificate_s_host_when_the_request_names_none(world: World) -> None:
    lease = await world.leasing(C2, "RequestLease", rpb.RequestLeaseRequest(
        service="echo", consumer_network="blue", consumer_vm="10.1.0.9"))
    assert lease.consumer_host == "c2"  # type: ignore[attr-defined]


async def test_no_one_but_the_owner_grows_shrinks_renews_or_releases_a_pool(world: World) -> None:
    lease = await world.lease(C1)
    [member] = lease.members
    calls = [("GrowLease", rpb.GrowLeaseRequest(lease_id=lease.lease_id)),
             ("ShrinkLease", rpb.ShrinkLeaseRequest(lease_id=lease.lease_id, vm_ids=[member.vm_id])),
             ("RenewLease", rpb.LeaseRef(lease_id=lease.lease_id)),
             ("ReleaseLease", rpb.LeaseRef(lease_id=lease.lease_id))]
    for who in (C2, PRODUCER, OPERATOR):
        for method, request in calls:
            error = await refused(world.leasing(who, method, request))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (who, method)
            assert error.details(), (who, method)
    assert [m.vm_id for m in (await world.inspect(OPERATOR, "GetLease", rpb.GetRequest(id=lease.lease_id))).members] \
        == [member.vm_id]  # type: ignore[attr-defined]
    # the owner's own calls succeed
    assert len((await world.leasing(C1, *calls[0])).members) == 2  # type: ignore[attr-defined]
    assert len((await world.leasing(C1, *calls[1])).members) == 1  # type: ignore[attr-defined]
    assert (await world.leasing(C1, *calls[2])).ttl_s > 0  # type: ignore[attr-defined]
    await world.leasing(C1, *calls[3])
    assert await world.store.refresh_lease(int(lease.lease_id, 16)) <= 0


async def test_a_producer_host_s_liveness_lease_cannot_be_renewed_or_released(world: World) -> None:
    for who in (C1, PRODUCER):
        for method in ("RenewLease", "ReleaseLease"):
            error = await refused(world.leasing(who, method, rpb.LeaseRef(lease_id=lease_hex(world.liveness_lease))))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "not the lease of any pool" in (error.details() or "")
    assert await world.store.refresh_lease(world.liveness_lease) > 0 and "p1" in world.replica.state.hosts


# --- inspection -----------------------------------------------------------------------------------
async def test_inspection_serves_any_certificate_but_shows_fencing_tokens_to_operators_only(world: World) -> None:
    await world.lease(C1)
    for who in (C1, C2, PRODUCER, REGISTRY, OPERATOR):
        hosts = await world.inspect(who, "ListHosts", rpb.ListHostsRequest())
        assert [h.host_id for h in hosts.hosts] == ["c1", "c2", "p1"]  # type: ignore[attr-defined]
    tokens = {}
    for who in (C1, C2, PRODUCER, OPERATOR):
        [lease] = (await world.inspect(who, "ListLeases", rpb.ListLeasesRequest())).leases  # type: ignore[attr-defined]
        tokens[who.kind.value + "/" + who.id] = [m.fencing_token for m in lease.members]
    claim_token = next(iter(world.replica.state.claims.values())).revision
    assert tokens == {"consumer/c1": [0], "consumer/c2": [0], "producer/p1": [0], "operator/admin": [claim_token]}
