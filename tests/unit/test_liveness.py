"""Registration under a liveness lease (mapping/liveness.py): a host id already held by a live
process is refused and its records stay; a restarted host whose previous life was killed waits for
that life's lease to lapse and then registers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mapping import keys
from mapping.liveness import DuplicateHost, Liveness
from mapping.model import Host, HostId, HostKind, ProducerVm
from mapping.replica import Replica
from registry.leasing import LeasingAgent
from mapping.store.memory import MemoryStore
from tests.conftest import eventually_async

TTL_S = 1
P1 = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")
VMS = [ProducerVm("blue", f"10.1.1.{n}", HostId("p1"), "echo") for n in range(1, 4)]


def liveness(store: MemoryStore, host: Host = P1) -> Liveness:
    return Liveness(store, host.host_id, lambda: [host, *VMS], TTL_S)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    store = MemoryStore()
    yield store
    await store.close()


async def test_a_second_process_with_a_live_host_id_is_refused_and_the_first_keeps_its_records(store) -> None:
    first = liveness(store)
    await first.register()
    keep_alive = asyncio.create_task(first.keep_alive())
    held = await store.get(keys.key_of(P1))
    with pytest.raises(DuplicateHost, match="host id 'p1' is already in use by a live process"):
        await liveness(store).register()
    assert await store.get(keys.key_of(P1)) == held
    assert all([await store.get(keys.key_of(vm)) for vm in VMS])
    keep_alive.cancel()


async def test_a_host_restarted_before_its_old_lease_lapsed_registers_once_it_has(store) -> None:
    killed = liveness(store)
    await killed.register()  # and never renewed: the process was killed
    restarted = liveness(store)
    await restarted.register()
    assert restarted.lease_id != killed.lease_id
    assert (await store.get(keys.key_of(P1))).lease == restarted.lease_id  # type: ignore[union-attr]


async def test_a_host_that_deregistered_registers_again_at_once(store) -> None:
    stopped = liveness(store)
    await stopped.register()
    await stopped.deregister()
    again = liveness(store)
    await asyncio.wait_for(again.register(), TTL_S / 2)  # no waiting for a lease: it was revoked
    assert again.registrations == 1


async def test_two_hosts_registering_one_address_the_first_wins_in_every_registry(store, caplog) -> None:
    first = liveness(store)
    await first.register()
    other = Host(HostId("p2"), HostKind.PRODUCER, "127.0.0.1:7102")
    same = [ProducerVm(vm.network, vm.address, other.host_id, vm.service) for vm in VMS]
    second = Liveness(store, other.host_id, lambda: [other, *same], TTL_S)
    await second.register()  # its own keys: nothing in etcd stops it
    replica = Replica(store)
    agent = LeasingAgent(store, replica)  # a registry: it says which record it goes by
    task = asyncio.create_task(replica.run())
    try:
        await replica.synced.wait()
        assert {vm.host_id for vm in replica.state.vms.values()} == {"p1"}  # no grant sees p2's
        assert agent.state.free_count(VMS[0].service) == len(VMS)
        await first.deregister()  # the first host left: the second's records are the VMs now
        await eventually_async(lambda: {vm.host_id for vm in replica.state.vms.values()} == {"p2"}
                               and len(replica.state.vms) == len(VMS), 5, what="the second host's VMs in force")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # a registry that watched the second registration happen names both hosts in one line
    late = MemoryStore()
    watching = Replica(late)
    LeasingAgent(late, watching)
    follow = asyncio.create_task(watching.run())
    try:
        await watching.synced.wait()
        await liveness(late).register()
        twin = Liveness(late, other.host_id, lambda: [other, *same], TTL_S)
        await twin.register()
        await eventually_async(lambda: f"host p2 registered VM {VMS[0].vm_id} too: host p1 registered that address "
                               "first" in caplog.text, 5, what="the registry's line")
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)

async def test_vm_records_come_one_by_one_each_incarnation_withdrawn_and_updated_only_as_itself(store) -> None:
    healthy: list[ProducerVm] = []
    host = Liveness(store, P1.host_id, lambda: [P1, *healthy], TTL_S)
    assert await host.add(VMS[0]) is None  # before the host registered: nothing is written
    await host.register()
    assert await store.get(keys.key_of(VMS[0])) is None  # the host record first, no VM yet
    first = await host.add(VMS[0])
    held = await store.get(keys.key_of(VMS[0]))
    assert held is not None and held.create_revision == first and held.lease == host.lease_id
    used = ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo", used=True)
    assert await host.update_vm(used)
    marked = await store.get(keys.key_of(VMS[0]))
    assert marked is not None and marked.create_revision == first and b'"used":true' in marked.value
    assert await host.withdraw(VMS[0]) and await store.get(keys.key_of(VMS[0])) is None
    assert not await host.update_vm(used) and await store.get(keys.key_of(VMS[0])) is None  # never brought back
    assert not await host.withdraw(VMS[0])
    second = await host.add(VMS[0])
    assert second is not None and second > first  # a new incarnation


async def test_a_re_registration_brings_back_only_the_vms_healthy_at_that_moment(store) -> None:
    healthy = [VMS[1]]
    host = Liveness(store, P1.host_id, lambda: [P1, *healthy], TTL_S)
    await host.register()
    await host.add(VMS[1])
    await store.revoke_lease(host.lease_id)  # as if the lease had lapsed
    await host.register()
    assert [await store.get(keys.key_of(vm)) is not None for vm in VMS] == [False, True, False]
    assert await host.add(VMS[1]) == host.revisions[keys.key_of(VMS[1])]  # already back: not written twice
