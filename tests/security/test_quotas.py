"""Limits (SPEC §10, issue 11) on a whole cluster of real processes with mutual TLS and etcd auth:
each lease quota (consumer VM, consumer host, network) refused with RESOURCE_EXHAUSTED naming it
while another tenant's traffic flows; oversized or invalid names refused with INVALID_ARGUMENT
before anything reaches etcd; a second process with a live host id refused with one line while the
first keeps serving; a lease watcher that does not read ended with a status."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from leasenet.cluster import LocalCluster, consumer_toml, write_toml
from mapping import keys
from mapping.config import ClusterConfig, to_toml
from mapping.model import LeasePolicy, Network, Quotas, Service
from tests.conftest import eventually_async, tls_as
from tests.integration.helpers import TARGET, attached, dial, leases, send, send_status, start
from wire import tls as wtls
from wire.rpc import CHANNEL_OPTIONS
from wire.tls import Identity, Kind
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

C1 = Identity(Kind.CONSUMER, "c1")
ONE_VM = LeasePolicy(min_pool=1, max_pool=1, lease_ttl_s=5)
ECHO2 = "10.1.255.2:7"
RED_TARGET = "10.2.255.1:7"


def quota_cluster(cluster: LocalCluster) -> tuple[str, str, str]:
    """blue: 3 leases per network, 2 per consumer host, 1 per consumer VM; red: the defaults.
    c1 runs blue VMs .1-.3; c2 runs blue VMs .4-.5 and the red tenant 10.2.0.1."""
    config = ClusterConfig(
        networks=[Network("blue", 100, Quotas(pools_per_network=3, pools_per_consumer_host=2, pools_per_consumer_vm=1),
                          subnet="10.1.0.0/16"),
                  Network("red", 200)],
        services=[Service("echo", "blue", "10.1.255.1", 7, ONE_VM), Service("echo2", "blue", "10.1.255.2", 7, ONE_VM),
                  Service("red-echo", "red", "10.2.255.1", 7, ONE_VM)])
    registry = cluster.registry("registry1", write_toml(cluster.workdir / "cluster.toml", to_toml(config)))
    for host_id, network, service, start_at in [("p1", "blue", "echo", "10.1.1.1"), ("p2", "blue", "echo2", "10.1.2.1"),
                                                ("p3", "red", "red-echo", "10.2.1.1")]:
        cluster.producer(host_id, network=network, service=service, vms=3, vm_address_start=start_at)
    c1 = cluster.consumer("c1", config=write_toml(cluster.workdir / "c1.toml", consumer_toml(
        attached(["10.1.0.1", "10.1.0.2", "10.1.0.3"]))), registries=[registry.address])
    c2 = cluster.consumer("c2", config=write_toml(cluster.workdir / "c2.toml", consumer_toml(
        attached(["10.1.0.4", "10.1.0.5"]) + attached(["10.2.0.1"], "red"))), registries=[registry.address])
    return registry.address, c1.address, c2.address


async def test_each_quota_is_refused_with_resource_exhausted_naming_it_while_other_tenants_traffic_flows(
        cluster: LocalCluster) -> None:
    registry, c1, c2 = quota_cluster(cluster)
    await send(c1, "10.1.0.1")  # c1's first blue lease
    await send(c2, "10.2.0.1", target=RED_TARGET, network="red")
    outcomes: list[grpc.StatusCode] = []
    stop = asyncio.Event()

    async def other_tenants() -> None:  # red's VM and blue's first VM, on the leases they hold
        while not stop.is_set():
            for consumer, src, target, network in [(c2, "10.2.0.1", RED_TARGET, "red"), (c1, "10.1.0.1", TARGET, "blue")]:
                outcomes.append((await send_status(consumer, src, target=target, network=network))[0])

    traffic = asyncio.create_task(other_tenants())
    code, detail = await send_status(c1, "10.1.0.1", target=ECHO2)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "consumer VM blue/10.1.0.1 already holds 1 lease(s), its quota (pools_per_consumer_vm" in detail
    await send(c1, "10.1.0.2")  # c1's second blue lease: its host's quota is full
    code, detail = await send_status(c1, "10.1.0.3")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "consumer host 'c1' already holds 2 lease(s), its quota (pools_per_consumer_host" in detail
    await send(c2, "10.1.0.4")  # blue's third lease: the network's quota is full
    code, detail = await send_status(c2, "10.1.0.5")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "network 'blue' already holds 3 lease(s), its quota (pools_per_network" in detail
    await eventually_async(lambda: len(outcomes) >= 20, what="the other tenants' traffic")
    stop.set()
    await traffic
    assert outcomes.count(grpc.StatusCode.OK) == len(outcomes)  # 0 lost
    held = await leases(registry)
    assert sorted((lease.consumer_network, lease.consumer_vm) for lease in held) == [
        ("blue", "10.1.0.1"), ("blue", "10.1.0.2"), ("blue", "10.1.0.4"), ("red", "10.2.0.1")]


async def request_lease(registry: str, **fields: object) -> tuple[grpc.StatusCode, str]:
    request = rpb.RequestLeaseRequest(**{"service": "echo", "consumer_network": "blue", "consumer_vm": "10.1.0.1",
                                         **fields})
    async with dial(registry, Kind.REGISTRY, C1) as channel:
        try:
            await rpb_grpc.LeasingStub(channel).RequestLease(request, timeout=10)
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""


INVALID = [
    ({"consumer_vm": "v" * 500_000}, "consumer VM address is 500000 characters long; an IPv4 address has at most 15"),
    ({"service": "s" * 500_000}, "service is 500000 characters long; the limit is 63"),
    ({"consumer_network": "blue/../red"}, "consumer network 'blue/../red' may hold only letters, digits"),
    ({"consumer_vm": "10.9.0.1"}, "consumer VM address 10.9.0.1 is not in network 'blue' (10.1.0.0/16)"),
    ({"consumer_host": "c1\n"}, "consumer host 'c1\\n' may hold only letters, digits"),
    ({"avoid_hosts": ["127.0.0.1:1"] * 100}, "avoid_hosts lists 100 hosts; the limit is 64"),
]


async def test_an_invalid_or_oversized_name_in_request_lease_is_invalid_argument_and_nothing_is_written(
        cluster: LocalCluster) -> None:
    config = write_toml(cluster.workdir / "cluster.toml", to_toml(ClusterConfig(
        [Network("blue", 100, subnet="10.1.0.0/16")], [Service("echo", "blue", "10.1.255.1", 7, ONE_VM)])))
    registry = cluster.registry("registry1", config).address
    cluster.start_presence(Kind.CONSUMER, C1.id)  # the test leases as c1: its pools hang on c1's lease
    cluster.producer("p1", network="blue", service="echo", vms=1, vm_address_start="10.1.1.1")
    store = await cluster.open_store()
    try:
        before = await store.snapshot(keys.ROOT)
        for fields, sentence in INVALID:
            code, detail = await request_lease(registry, **fields)
            assert (code, detail[:len(sentence)]) == (grpc.StatusCode.INVALID_ARGUMENT, sentence)
        after = await store.snapshot(keys.ROOT)
    finally:
        await store.close()
    assert after.revision == before.revision  # not one write
    assert await request_lease(registry) == (grpc.StatusCode.OK, "")  # the same call, well formed


async def test_a_second_producer_host_with_a_live_host_id_is_refused_with_one_line_and_the_first_keeps_serving(
        cluster: LocalCluster) -> None:
    topology = start(cluster, producers=1, vms=2)
    consumer = topology.consumers[0].address
    await send(consumer, "10.1.0.1")
    store = await cluster.open_store()
    try:
        first = await store.get(keys.PRODUCER_HOSTS + "p1")
        duplicate = cluster.spawn("p1-again", *topology.producers[0].args, wait=False)
        assert duplicate.process is not None
        assert await asyncio.to_thread(duplicate.process.wait, 30) == 1
        assert await store.get(keys.PRODUCER_HOSTS + "p1") == first  # untouched: same lease, same revision
    finally:
        await store.close()
    output = duplicate.log.read_text().splitlines()
    refusals = [line for line in output if line.startswith("leasenet: ")]  # besides its start-up log lines
    assert "Traceback" not in "\n".join(output)
    assert len(refusals) == 1 and refusals[0].startswith("leasenet: host id 'p1' is already in use by a live process (")
    assert refusals[0].endswith("kept alive for more than its 3 s TTL): stop that process or choose another --host-id")
    for n in range(20):
        assert (await send(consumer, "10.1.0.1", f"after {n}".encode())).payload == f"after {n}".encode()


async def test_a_lease_watcher_that_does_not_read_is_ended_with_resource_exhausted_and_watchers_are_capped(
        cluster: LocalCluster) -> None:
    config = write_toml(cluster.workdir / "cluster.toml", to_toml(ClusterConfig(
        [Network("blue", 100)], [Service("echo", "blue", "10.1.255.1", 7, ONE_VM)])))
    registry = cluster.spawn("registry1", "registry", "--host-id", "registry1", "--listen", f"{cluster.host}:0",
                             "--cluster-config", str(config), "--watch-backlog", "16", "--max-watchers", "2").address
    cluster.producer("p1", network="blue", service="echo", vms=2, vm_address_start="10.1.1.1")
    cluster.start_presence(Kind.CONSUMER, C1.id)
    # a client that takes in little before it reads: its HTTP/2 window fills after a few events
    slow = grpc.aio.secure_channel(registry, wtls.channel_credentials(tls_as(Identity(Kind.OPERATOR, "ops"))),
                                   options=[*CHANNEL_OPTIONS, *wtls.channel_options(Kind.REGISTRY),
                                            ("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
    async with slow, dial(registry, Kind.REGISTRY) as other:
        watch = rpb_grpc.InspectionStub(slow).WatchLeases(rpb.WatchLeasesRequest())
        assert (await watch.read()).type == rpb.LeaseEvent.SYNCED
        second = rpb_grpc.InspectionStub(other).WatchLeases(rpb.WatchLeasesRequest())
        assert (await second.read()).type == rpb.LeaseEvent.SYNCED
        with pytest.raises(grpc.aio.AioRpcError) as capped:
            await rpb_grpc.InspectionStub(other).WatchLeases(rpb.WatchLeasesRequest()).read()
        assert capped.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already serves 2 lease watchers, its limit" in (capped.value.details() or "")
        second.cancel()

        async with dial(registry, Kind.REGISTRY, C1) as leasing_channel:
            leasing = rpb_grpc.LeasingStub(leasing_channel)
            for n in range(300):  # churn: each grant and release is four key changes
                lease = await leasing.RequestLease(rpb.RequestLeaseRequest(
                    service="echo", consumer_network="blue", consumer_vm=f"10.1.0.{1 + n % 200}"), timeout=10)
                await leasing.ReleaseLease(rpb.LeaseRef(lease_id=lease.lease_id), timeout=10)
                if watch.done():
                    break
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:  # what was sent before the end, then the status
                await asyncio.wait_for(watch.read(), 10)
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fell more than 16 changes behind" in (ended.value.details() or "")
