"""Quotas on leases (registry/quotas.py and the grant transaction): a full quota refuses with a
sentence naming it, slots end with the lease, and concurrent grants never exceed a quota."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from mapping import keys
from mapping.model import (
    ConsumerRef,
    Host,
    HostId,
    HostKind,
    LeasePolicy,
    Network,
    ProducerVm,
    Quotas,
    QuotaScope,
    QuotaSlot,
    Service,
)
from mapping.replica import Replica
from mapping.state import ClusterState
from mapping.store.memory import MemoryStore
from registry.leasing import LeasingAgent
from registry.quotas import Limit, choose_slots, limits
from tests.unit.agents import agent_on
from wire.errors import PoolExhausted, QuotaExceeded, Status

QUOTAS = Quotas(pools_per_network=6, pools_per_consumer_host=4, pools_per_consumer_vm=2)
BLUE = Network("blue", 100, QUOTAS)
SERVICES = [Service(f"s{n}", "blue", f"10.1.255.{n}", 7, LeasePolicy(min_pool=1, max_pool=2, lease_ttl_s=5))
            for n in range(1, 4)]
P1 = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")
VMS = [ProducerVm("blue", f"10.1.{s}.{n}", HostId("p1"), f"s{s}") for s in range(1, 4) for n in range(1, 11)]


def consumer(host: str, n: int) -> ConsumerRef:
    return ConsumerRef("blue", f"10.1.0.{n}", HostId(host))


def test_a_lease_counts_against_its_network_its_consumer_host_and_its_consumer_vm() -> None:
    wanted = limits(BLUE, SERVICES[0], consumer("c1", 1))
    assert [(w.scope, w.subject, w.limit) for w in wanted] == [
        (QuotaScope.NETWORK, "blue", 6), (QuotaScope.CONSUMER_HOST, "c1", 4), (QuotaScope.CONSUMER_VM, "blue/10.1.0.1", 2)]


def test_a_services_own_lower_cap_on_consumer_vms_is_the_one_that_counts() -> None:
    strict = replace(SERVICES[0], policy=replace(SERVICES[0].policy, max_pools_per_consumer=1))
    per_vm = limits(BLUE, strict, consumer("c1", 1))[2]
    assert per_vm.limit == 1 and per_vm.name == "max_pools_per_consumer of service 's1'"


def test_a_full_quota_is_refused_with_a_sentence_naming_it() -> None:
    state = ClusterState()
    for index in range(2):
        slot = QuotaSlot(QuotaScope.CONSUMER_VM, "blue/10.1.0.1", index, 7)
        state.apply(keys.key_of(slot), slot)
    with pytest.raises(QuotaExceeded) as refused:
        choose_slots(state, limits(BLUE, SERVICES[0], consumer("c1", 1)), 9, random.Random(1))
    assert refused.value.code == Status.RESOURCE_EXHAUSTED
    assert refused.value.message == ("consumer VM blue/10.1.0.1 already holds 2 lease(s), its quota "
                                     "(pools_per_consumer_vm of network 'blue' = 2); release one first")


def test_slots_are_drawn_among_the_free_ones_only() -> None:
    state = ClusterState()
    for index in range(99):
        if index != 42:
            slot = QuotaSlot(QuotaScope.NETWORK, "blue", index, 7)
            state.apply(keys.key_of(slot), slot)
    only = [Limit(QuotaScope.NETWORK, "blue", 100, "n")]
    drawn = {choose_slots(state, only, 9, random.Random(seed))[0].index for seed in range(20)}
    assert drawn <= {42, 99} and drawn


def test_a_quota_slot_survives_the_key_codec() -> None:
    slot = QuotaSlot(QuotaScope.CONSUMER_VM, "blue/10.1.0.1", 17, 0x1234)
    assert keys.key_of(slot) == "/leasenet/v2/quotas/consumer-vm/blue/10.1.0.1/17"
    assert keys.decode(keys.key_of(slot), keys.encode(slot)) == slot


@pytest.fixture
async def agent() -> AsyncIterator[tuple[MemoryStore, Replica, LeasingAgent]]:
    async with agent_on([BLUE, *SERVICES, P1, *VMS]) as running:
        yield running


async def test_each_quota_refuses_the_lease_that_would_exceed_it_while_other_tenants_still_lease(agent) -> None:
    store, replica, leasing = agent
    await leasing.request_lease(consumer("c1", 1), "s1")
    await leasing.request_lease(consumer("c1", 1), "s2")
    with pytest.raises(QuotaExceeded, match=r"consumer VM blue/10.1.0.1 already holds 2 lease\(s\)"):
        await leasing.request_lease(consumer("c1", 1), "s3")
    await leasing.request_lease(consumer("c1", 2), "s1")
    await leasing.request_lease(consumer("c1", 2), "s2")
    with pytest.raises(QuotaExceeded, match=r"consumer host 'c1' already holds 4 lease\(s\)"):
        await leasing.request_lease(consumer("c1", 3), "s1")
    await leasing.request_lease(consumer("c2", 4), "s1")
    await leasing.request_lease(consumer("c2", 4), "s2")
    with pytest.raises(QuotaExceeded, match=r"network 'blue' already holds 6 lease\(s\)"):
        await leasing.request_lease(consumer("c3", 5), "s1")
    assert len(replica.state.pools) == 6
    assert not [s for s in replica.state.quota_slots.values() if s.lease_id not in replica.state.pools_by_lease]


async def test_a_released_lease_gives_its_slots_back(agent) -> None:
    store, replica, leasing = agent
    first = await leasing.request_lease(consumer("c1", 1), "s1")
    second = await leasing.request_lease(consumer("c1", 1), "s2")
    await leasing.release_lease(first.pool.lease_id)
    await replica.wait_for_revision(await store.put("/unrelated", b"x"), 5)
    assert [s.lease_id for s in replica.state.quota_slots.values()] == [second.pool.lease_id] * 3  # one per scope
    await leasing.request_lease(consumer("c1", 1), "s3")  # its slot is free again


async def test_concurrent_grants_by_several_agents_never_exceed_a_quota(agent) -> None:
    store, replica, _ = agent
    agents = [LeasingAgent(store, replica, rng=random.Random(seed)) for seed in range(4)]
    asks = [agents[n % 4].request_lease(consumer(f"c{n}", n), f"s{1 + n % 3}") for n in range(12)]
    results = await asyncio.gather(*asks, return_exceptions=True)
    granted = [r for r in results if not isinstance(r, BaseException)]
    assert len(granted) == 6 and all(isinstance(r, PoolExhausted) for r in results if r not in granted)
    await replica.wait_for_revision(await store.put("/unrelated", b"x"), 5)
    network_slots = replica.state.slots_by_subject[(QuotaScope.NETWORK, "blue")]
    assert len(replica.state.pools) == 6 and network_slots == set(range(6))
