"""The leasing agent over the in-memory store (the contract suite holds it to etcd's behaviour)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from mapping import keys
from wire.errors import NotFound, PermissionDenied, PoolExhausted, PreconditionFailed
from registry.leasing import ClaimCollector, LeasingAgent
from mapping.model import ConsumerRef, Host, HostId, HostKind, LeasePolicy, Network, ProducerVm, Service, VmId, vm_id
from registry.placement import choose_vms
from mapping.replica import Replica
from mapping.state import Bag
from mapping.store.memory import MemoryStore
from tests.unit.agents import agent_on, register_consumer_host

SERVICE = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=2, max_pool=3, lease_ttl_s=5))


@pytest.fixture
async def setup() -> AsyncIterator[tuple[MemoryStore, Replica, LeasingAgent]]:
    vms = [ProducerVm("blue", f"10.1.1.{n}", HostId("p1" if n < 2 else "p2"), "echo") for n in range(4)]
    async with agent_on([Network("blue", 100), SERVICE, Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101"),
                         Host(HostId("p2"), HostKind.PRODUCER, "127.0.0.1:7102"), *vms]) as running:
        yield running


def consumer(n: int, host: str = "c1") -> ConsumerRef:
    return ConsumerRef("blue", f"10.1.0.{n}", HostId(host))


async def test_a_grant_claims_min_pool_vms_in_one_transaction(setup) -> None:
    store, replica, agent = setup
    before = store.requests
    view = await agent.request_lease(consumer(1), "echo")
    assert len(view.members) == 2 and len({m.fencing_token for m in view.members}) == 1
    assert store.requests - before == 1  # one transaction: no etcd lease per pool
    assert len(replica.state.claims) == 2


async def test_asking_again_returns_the_same_lease_and_a_pool_is_its_consumer_host_s(setup) -> None:
    store, replica, agent = setup
    first = await agent.request_lease(consumer(1), "echo")
    assert (await agent.request_lease(consumer(1), "echo")).pool.lease_id == first.pool.lease_id
    assert keys.key_of(first.pool) == "/leasenet/v2/pools/c1/echo/blue/10.1.0.1"
    host_lease = replica.state.hosts[HostId("c1")].lease
    held = [await store.get(k) for k in [keys.key_of(first.pool), *(keys.key_of(c) for c in replica.state.claims.values()),
                                         *(keys.member_key(c) for c in replica.state.claims.values())]]
    assert len(held) == 5 and all(kv is not None and kv.lease == host_lease for kv in held)  # one lease for all


async def test_no_capacity_is_resource_exhausted_naming_the_service_and_the_shortfall(setup) -> None:
    _, replica, agent = setup
    await agent.request_lease(consumer(1), "echo")
    await agent.request_lease(consumer(2), "echo")
    with pytest.raises(PoolExhausted, match=r"service 'echo' has 0 free producer VM\(s\) but 2 are needed .*short by 2"):
        await agent.request_lease(consumer(3), "echo")
    assert len(replica.state.pools) == 2  # the failed attempt left nothing behind


async def test_racing_grants_never_claim_a_vm_twice(setup) -> None:
    _, replica, agent = setup
    results = await asyncio.gather(*(agent.request_lease(consumer(n), "echo") for n in range(1, 6)),
                                   return_exceptions=True)
    granted = [r for r in results if not isinstance(r, BaseException)]
    assert len(granted) == 2 and all(isinstance(r, PoolExhausted) for r in results if r not in granted)
    members = [m.vm.vm_id for view in granted for m in view.members]
    assert len(members) == len(set(members)) == 4


async def test_a_pool_grows_to_max_pool_and_no_further(setup) -> None:
    _, _, agent = setup
    view = await agent.request_lease(consumer(1), "echo")
    grown = await agent.grow_lease(view.pool.lease_id)
    assert len(grown.members) == 3
    with pytest.raises(PoolExhausted, match="max_pool is 3"):
        await agent.grow_lease(view.pool.lease_id)


async def test_a_released_lease_frees_its_vms_and_cannot_be_renewed(setup) -> None:
    _, replica, agent = setup
    view = await agent.request_lease(consumer(1), "echo")
    assert await agent.renew_lease(view.pool.lease_id) == 2  # its consumer host's TTL
    await agent.release_lease(view.pool.lease_id)
    assert replica.state.claims == {} and replica.state.members == {} and replica.state.pools == {}
    assert replica.state.quota_slots == {}
    with pytest.raises(NotFound, match="not the lease of any pool"):
        await agent.renew_lease(view.pool.lease_id)


async def test_leases_are_refused_for_unknown_services_and_other_networks(setup) -> None:
    _, _, agent = setup
    with pytest.raises(NotFound, match="'nope'"):
        await agent.request_lease(consumer(1), "nope")
    with pytest.raises(PermissionDenied, match="network 'red'"):
        await agent.request_lease(ConsumerRef("red", "10.2.0.1", HostId("c1")), "echo")


async def test_claims_on_a_vanished_vm_are_collected(setup) -> None:
    store, replica, agent = setup
    collector = ClaimCollector(store, replica)
    task = asyncio.create_task(collector.run())
    view = await agent.request_lease(consumer(1), "echo")
    victim = view.members[0].vm
    await store.delete(keys.key_of(victim))
    for _ in range(100):
        if victim.vm_id not in replica.state.claims:
            break
        await asyncio.sleep(0.01)
    assert victim.vm_id not in replica.state.claims
    assert len(replica.state.members_by_lease[view.pool.lease_id]) == 1
    task.cancel()


def test_placement_prefers_lightly_loaded_hosts_and_never_repeats_a_vm() -> None:
    free: dict[HostId, Bag[VmId]] = {HostId("busy"): Bag(), HostId("idle"): Bag()}
    for n in range(10):
        free[HostId("busy" if n < 5 else "idle")].add(vm_id("blue", f"10.1.1.{n}"))
    rng = random.Random(7)
    picks = [choose_vms(free, {HostId("busy"): 0.9, HostId("idle"): 0.0}, 3, rng) for _ in range(200)]
    assert all(len(set(p)) == 3 for p in picks)
    idle_share = sum(v in free[HostId("idle")] for p in picks for v in p) / (3 * 200)
    assert idle_share > 0.7


def test_placement_takes_every_free_vm_when_asked_for_more_and_never_one_of_an_avoided_host() -> None:
    free: dict[HostId, Bag[VmId]] = {HostId("a"): Bag(), HostId("b"): Bag()}
    for n in range(6):
        free[HostId("a" if n < 3 else "b")].add(vm_id("blue", f"10.1.1.{n}"))
    chosen = choose_vms(free, {}, 10, random.Random(3), avoid={HostId("b")})
    assert sorted(chosen) == sorted(free[HostId("a")])


async def test_a_consumer_host_whose_lease_outlasts_the_service_s_lease_ttl_is_refused(setup) -> None:
    store, replica, agent = setup
    slow = await register_consumer_host(store, "c-slow", ttl_s=30)  # SERVICE's lease_ttl_s is 5
    await replica.wait_for_revision(await store.put("/unrelated", b"x"), 5)
    with pytest.raises(PreconditionFailed, match="liveness lease of 30 s; service 'echo' lets a pool outlive its "
                                                 "consumer host by at most lease_ttl_s = 5 s"):
        await agent.request_lease(consumer(1, host=slow.host_id), "echo")
    assert replica.state.pools == {}


async def test_a_pool_released_a_moment_ago_is_not_handed_out_again(setup) -> None:
    _, replica, agent = setup
    first = await agent.request_lease(consumer(1), "echo")
    await agent.release_lease(first.pool.lease_id)
    second = await agent.request_lease(consumer(1), "echo")
    assert second.pool.lease_id != first.pool.lease_id and len(second.members) == 2


class NoScan(dict):  # type: ignore[type-arg]
    """A table that refuses to be walked: lookups only."""

    def _refuse(self, *args: object) -> None:
        raise AssertionError("the whole table was scanned")

    __iter__ = values = items = keys = _refuse  # type: ignore[assignment]


async def test_a_grant_and_a_quota_check_read_indexes_and_never_walk_every_vm_claim_or_pool(setup) -> None:
    store, replica, agent = setup
    for name, target in (("quota", "10.1.255.2"), ("quota2", "10.1.255.3")):
        limited = Service(name, "blue", target, 7, LeasePolicy(min_pool=1, max_pool=1, lease_ttl_s=5,
                                                                max_pools_per_consumer=1))
        await store.put(keys.key_of(limited), keys.encode(limited))
    vm = ProducerVm("blue", "10.1.1.9", HostId("p1"), "quota")
    assert await replica.wait_for_revision(await store.put(keys.key_of(vm), keys.encode(vm)), 2)
    state = replica.state
    state.vms, state.claims, state.pools = NoScan(state.vms), NoScan(state.claims), NoScan(state.pools)
    view = await agent.request_lease(consumer(1), "quota")
    assert [m.vm.vm_id for m in view.members] == [vm.vm_id]
    with pytest.raises(PoolExhausted, match="its quota"):
        await agent.request_lease(consumer(1), "quota2")


async def test_a_vm_marked_used_is_never_granted_until_it_comes_back_unused(setup) -> None:
    """A command VM a lessee used is restarting (reset between lessees): the registry must not grant it."""
    store, replica, agent = setup
    for n in range(4):  # mark every VM but 10.1.1.3 used, as their hosts do on a claim's first call
        if n != 3:
            record = replica.state.vms[vm_id("blue", f"10.1.1.{n}")]
            await store.put(keys.key_of(record), keys.encode(ProducerVm(record.network, record.address,
                                                                        record.host_id, record.service, used=True)))
    await replica.wait_for_revision(await store.put("/unrelated", b""), 2.0)
    with pytest.raises(PoolExhausted, match="1 free producer VM"):
        await agent.request_lease(consumer(1), "echo")
    assert replica.state.free_vms("echo") == [replica.state.vms[vm_id("blue", "10.1.1.3")]]
