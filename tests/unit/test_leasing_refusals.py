"""Why a lease is refused: an exhausted fleet (RESOURCE_EXHAUSTED) is not the same as producer
hosts re-registering after an outage (UNAVAILABLE, try again)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from mapping import keys
from mapping.model import ConsumerRef, Host, HostId, HostKind, LeasePolicy, Network, ProducerVm, Record, Service
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from tests.unit.agents import register_consumer_host
from registry.leasing import RETURNING_WINDOW_S, LeasingAgent, shortfall
from wire.errors import PoolExhausted, ProducerUnavailable, Status

KV = Service("kv", "blue", "10.1.255.2", 7, LeasePolicy(min_pool=2, max_pool=2, lease_ttl_s=5))
P1 = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")
VMS = [ProducerVm("blue", f"10.1.1.{n}", HostId("p1"), "kv") for n in range(4)]


def test_a_shortfall_covered_by_returning_vms_is_a_wait_and_otherwise_exhaustion() -> None:
    waiting = shortfall("kv", need=2, free=0, returning=6, purpose="lease a pool")
    assert isinstance(waiting, ProducerUnavailable) and waiting.code == Status.UNAVAILABLE
    assert waiting.message.startswith("producer hosts are re-registering; try again")
    exhausted = shortfall("kv", need=2, free=0, returning=0, purpose="lease a pool")
    assert isinstance(exhausted, PoolExhausted) and "has 0 free producer VM(s)" in exhausted.message
    assert isinstance(shortfall("kv", need=5, free=1, returning=2, purpose="lease a pool"), PoolExhausted)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def kv() -> AsyncIterator[tuple[MemoryStore, Replica, LeasingAgent, Clock]]:
    store = MemoryStore()
    for record in [Network("blue", 100), KV, P1, *VMS]:
        await store.put(keys.key_of(record), keys.encode(record))
    await register_consumer_host(store, "c1")
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    clock = Clock()
    yield store, replica, LeasingAgent(store, replica, rng=random.Random(1), clock=clock), clock
    task.cancel()
    await store.close()


def consumer(n: int) -> ConsumerRef:
    return ConsumerRef("blue", f"10.1.0.{n}", HostId("c1"))


async def write(store: MemoryStore, replica: Replica, *records: Record, delete: bool = False) -> None:
    """Put (or delete) the records, then wait until the agent's replica shows it."""
    revision = 0
    for record in records:
        key = keys.key_of(record)
        revision = (await store.delete(key)).revision if delete else await store.put(key, keys.encode(record))
    assert await replica.wait_for_revision(revision, 5)


async def test_vms_that_vanished_a_moment_ago_make_a_refusal_say_hosts_are_re_registering(kv) -> None:
    store, replica, agent, clock = kv
    await write(store, replica, P1, *VMS, delete=True)  # p1's liveness lease lapsed
    with pytest.raises(ProducerUnavailable, match="producer hosts are re-registering; try again"):
        await agent.request_lease(consumer(1), "kv")

    clock.now += RETURNING_WINDOW_S + 1  # it never came back: the fleet is what it is
    with pytest.raises(PoolExhausted, match="service 'kv' has 0 free producer VM"):
        await agent.request_lease(consumer(1), "kv")


async def test_re_registered_vms_still_holding_stale_claims_are_coming_back(kv) -> None:
    store, replica, agent, _ = kv
    await agent.request_lease(consumer(1), "kv")
    await agent.request_lease(consumer(2), "kv")  # every VM claimed
    with pytest.raises(PoolExhausted):
        await agent.request_lease(consumer(3), "kv")

    await write(store, replica, *VMS, delete=True)
    await write(store, replica, *VMS)  # new incarnations; no collector runs here, so the old claims stay
    with pytest.raises(ProducerUnavailable, match="0 free producer VM\\(s\\) now and 4 coming back"):
        await agent.request_lease(consumer(3), "kv")


async def test_the_vms_of_a_host_that_drained_are_not_coming_back(kv) -> None:
    store, replica, agent, _ = kv
    await write(store, replica, replace(P1, draining=True))
    await write(store, replica, P1, *VMS, delete=True)  # it deregistered after draining
    with pytest.raises(PoolExhausted, match="service 'kv' has 0 free producer VM"):
        await agent.request_lease(consumer(1), "kv")
