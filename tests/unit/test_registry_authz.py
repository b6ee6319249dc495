"""Who may call what on a registry (SPEC §10): the pure rules, each refusal with its status, and the
leasing agent holding to them over the in-memory store."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from mapping import keys
from mapping.model import ConsumerRef, Host, HostId, HostKind, LeaseId, LeasePolicy, Network, Pool, ProducerVm, Service
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from tests.unit.agents import register_consumer_host
from registry.authz import ANYONE, lessee, may_act_on_pool, may_inspect, sees_fencing_tokens
from registry.leasing import LeasingAgent
from wire.errors import NotFound, PermissionDenied, Status
from wire.tls import Identity, Kind
from wire.verdict import Refusal

C1, C2 = Identity(Kind.CONSUMER, "c1"), Identity(Kind.CONSUMER, "c2")
OTHERS = [Identity(Kind.PRODUCER, "c1"), Identity(Kind.REGISTRY, "r1"), Identity(Kind.OPERATOR, "admin")]
POOL = Pool("echo", "blue/10.1.0.1", HostId("c1"), LeaseId(0xabc), 10)  # type: ignore[arg-type]
SERVICE = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=1, max_pool=3, lease_ttl_s=5))


def denied(verdict: object, code: Status, text: str) -> bool:
    return isinstance(verdict, Refusal) and verdict.code == code and text in verdict.message


def test_a_consumer_host_leases_for_itself_whatever_the_request_names_or_omits() -> None:
    assert lessee(C1, "c1") == "c1" and lessee(C1, "") == "c1"
    assert denied(lessee(C1, "c2"), Status.PERMISSION_DENIED, "consumer/c1 cannot lease for consumer host 'c2'")


def test_only_consumer_hosts_may_lease_or_act_on_pools() -> None:
    for caller in OTHERS:
        assert denied(lessee(caller, "c1"), Status.PERMISSION_DENIED, f"serves consumer hosts only; the caller is {caller}")
        assert denied(may_act_on_pool(caller, POOL, "renew"), Status.PERMISSION_DENIED, "serves consumer hosts only")
    assert denied(lessee(None, "c1"), Status.PERMISSION_DENIED, "names no leasenet identity")
    assert denied(may_act_on_pool(None, POOL, "renew"), Status.PERMISSION_DENIED, "names no leasenet identity")


def test_a_consumer_host_acts_only_on_its_own_pools() -> None:
    assert may_act_on_pool(C1, POOL, "renew") is None
    assert denied(may_act_on_pool(C2, POOL, "release"), Status.PERMISSION_DENIED,
                  "lease abc is a pool of another consumer host; consumer/c2 may release only its own")


def test_an_insecure_registry_believes_what_the_caller_states() -> None:
    assert lessee(ANYONE, "c2") == "c2"
    assert may_act_on_pool(ANYONE, POOL, "grow") is None and may_inspect(ANYONE) is None
    assert sees_fencing_tokens(ANYONE)


def test_inspection_needs_an_identity_and_shows_fencing_tokens_to_operators_and_registries_only() -> None:
    assert all(may_inspect(caller) is None for caller in [C1, *OTHERS])
    assert denied(may_inspect(None), Status.PERMISSION_DENIED, "needs a certificate")
    assert [sees_fencing_tokens(c) for c in [C1, *OTHERS, None]] == [False, False, True, True, False]


@pytest.fixture
async def agent() -> AsyncIterator[tuple[MemoryStore, Replica, LeasingAgent, LeaseId]]:
    store = MemoryStore()
    for record in [Network("blue", 100), SERVICE, ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo"),
                   ProducerVm("blue", "10.1.1.2", HostId("p1"), "echo")]:
        await store.put(keys.key_of(record), keys.encode(record))
    liveness = await store.grant_lease(3)  # the producer host's own lease, not a pool's
    await store.put(keys.key_of(Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")),
                    keys.encode(Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")), lease=liveness)
    for host in ("c1", "c2"):
        await register_consumer_host(store, host)
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    try:
        yield store, replica, LeasingAgent(store, replica, rng=random.Random(1)), LeaseId(liveness)
    finally:
        task.cancel()
        await store.close()


async def test_renew_and_release_refuse_a_lease_that_is_no_pool_s_and_leave_it_alone(agent) -> None:
    store, replica, leasing, host_lease = agent
    for act in (leasing.renew_lease, leasing.release_lease):
        with pytest.raises(NotFound, match="cannot (renew|release) a host's liveness lease"):
            await act(host_lease, caller=C1)
        with pytest.raises(NotFound):
            await act(host_lease)  # not even a plaintext registry touches it
    assert "p1" in replica.state.hosts and await store.refresh_lease(host_lease) > 0


async def test_no_consumer_host_grows_shrinks_renews_or_releases_another_s_pool(agent) -> None:
    _, replica, leasing, _ = agent
    view = await leasing.request_lease(ConsumerRef("blue", "10.1.0.1", HostId("c1")), "echo")
    lease, [member] = view.pool.lease_id, view.members
    attempts = [leasing.grow_lease(lease, caller=C2), leasing.shrink_lease(lease, [member.vm.vm_id], caller=C2),
                leasing.renew_lease(lease, caller=C2), leasing.release_lease(lease, caller=C2)]
    for attempt in attempts:
        with pytest.raises(PermissionDenied, match="another consumer host; consumer/c2 may"):
            await attempt
    assert replica.state.members_by_lease[lease] == {member.vm.vm_id}
    assert await leasing.renew_lease(lease, caller=C1) == 2  # the owner's own calls succeed
    assert len((await leasing.grow_lease(lease, caller=C1)).members) == 2
