"""Sharing the services out among the registries (mapping/ownership.py, registry/authz.py on_behalf,
the leasing agent's in-flight choices, the consumer host asking the owner first): the pure rules,
one agent never racing itself, and where a consumer host sends its grants."""

from __future__ import annotations

import asyncio
import random
from collections import Counter


from consumer_host.registry_client import RegistryClient
from mapping import keys
from mapping.model import ConsumerRef, Host, HostId, HostKind, LeaseId, LeasePolicy, Network, Pool, ProducerVm, Service
from mapping.ownership import owner, owner_address, registries, score
from mapping.replica import Replica
from mapping.state import ClusterState
from mapping.store.memory import MemoryStore
from tests.unit.agents import register_consumer_host
from registry.authz import ANYONE, Forwarded, lessee, may_act_on_pool, on_behalf
from registry.leasing import LeasingAgent
from registry.ownership import FORWARDED_FOR, forwarded_for
from wire.errors import Status, Unavailable
from wire.tls import Identity, Kind
from wire.verdict import Refusal

SERVICES = [f"svc-{n}" for n in range(3000)]
R1, R2 = Identity(Kind.REGISTRY, "r1"), Identity(Kind.REGISTRY, "r2")
POOL = Pool("echo", "blue/10.1.0.1", HostId("c1"), LeaseId(0xabc), 10)  # type: ignore[arg-type]


def test_every_process_computes_the_same_owner_from_the_same_registries_in_any_order() -> None:
    assert owner("echo", ["r1", "r2", "r3"]) == owner("echo", ["r3", "r1", "r2"])
    assert score("echo", "r1") == score("echo", "r1") != score("echo", "r2")
    assert owner("echo", []) is None


def test_the_services_spread_evenly_over_the_registries() -> None:
    for members in (["r1", "r2"], ["r1", "r2", "r3"], [f"registry{n}" for n in range(1, 6)]):
        counts = Counter(owner(s, members) for s in SERVICES)
        fair = len(SERVICES) / len(members)
        assert set(counts) == set(members)
        assert all(abs(c - fair) < 0.1 * fair for c in counts.values()), counts


def test_when_a_registry_dies_only_its_own_services_move() -> None:
    before = {s: owner(s, ["r1", "r2", "r3"]) for s in SERVICES}
    after = {s: owner(s, ["r1", "r3"]) for s in SERVICES}
    moved = {s for s in SERVICES if before[s] != after[s]}
    assert moved == {s for s in SERVICES if before[s] == "r2"}


def test_when_a_registry_joins_it_takes_only_its_fair_share_from_the_others() -> None:
    before = {s: owner(s, ["r1", "r2"]) for s in SERVICES}
    after = {s: owner(s, ["r1", "r2", "r3"]) for s in SERVICES}
    moved = [s for s in SERVICES if before[s] != after[s]]
    assert all(after[s] == "r3" for s in moved)
    assert abs(len(moved) - len(SERVICES) / 3) < 0.1 * len(SERVICES) / 3


def test_only_registry_records_are_registries_and_the_owner_is_named_by_its_address() -> None:
    state = ClusterState()
    for host in [Host(HostId("r1"), HostKind.REGISTRY, "127.0.0.1:7001"),
                 Host(HostId("r2"), HostKind.REGISTRY, "127.0.0.1:7002"),
                 Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")]:
        state.apply(keys.key_of(host), host)
    assert registries(state) == {"r1": "127.0.0.1:7001", "r2": "127.0.0.1:7002"}
    assert owner_address(state, "echo") == registries(state)[owner("echo", ["r1", "r2"])]  # type: ignore[index]
    assert owner_address(ClusterState(), "echo") is None
    assert state.producer_hosts() == [state.hosts[HostId("p1")]]


def test_a_registry_record_round_trips_under_the_registries_prefix() -> None:
    host = Host(HostId("r1"), HostKind.REGISTRY, "127.0.0.1:7001", revision=4)
    key = keys.key_of(host)
    assert key.startswith(keys.REGISTRIES) and key.startswith(keys.WRITE_PREFIXES["registry"])  # type: ignore[arg-type]
    assert keys.decode(key, keys.encode(host), 4) == host


def test_a_call_not_forwarded_is_the_peers_own() -> None:
    consumer = Identity(Kind.CONSUMER, "c1")
    assert on_behalf(consumer, None) == consumer
    assert on_behalf(ANYONE, "c2") is ANYONE  # --insecure believes every stated field anyway


def test_a_registry_may_forward_a_call_for_the_consumer_host_it_names() -> None:
    caller = on_behalf(R1, "c1")
    assert caller == Forwarded("c1", via="r1") and str(caller) == "consumer/c1 (forwarded by registry/r1)"
    assert lessee(caller, "c1") == "c1" and lessee(caller, "") == "c1"
    assert may_act_on_pool(caller, POOL, "grow") is None


def test_a_forwarded_call_still_acts_only_for_the_consumer_host_it_was_forwarded_for() -> None:
    caller = on_behalf(R2, "c2")
    refused = may_act_on_pool(caller, POOL, "grow")
    assert isinstance(refused, Refusal) and "may grow only its own" in refused.message
    assert isinstance(lessee(caller, "c1"), Refusal)


def test_no_one_but_a_registry_may_claim_to_forward_a_call() -> None:
    for peer in [Identity(Kind.CONSUMER, "c2"), Identity(Kind.PRODUCER, "p1"), Identity(Kind.OPERATOR, "admin"), None]:
        verdict = on_behalf(peer, "c1")
        assert isinstance(verdict, Refusal) and verdict.code == Status.PERMISSION_DENIED
        assert "only a registry may forward" in verdict.message


def test_a_forwarded_consumer_host_id_must_be_a_valid_name() -> None:
    verdict = on_behalf(R1, "../c1")
    assert isinstance(verdict, Refusal) and "forwarded consumer host id" in verdict.message


def test_the_forwarding_mark_is_read_from_the_metadata() -> None:
    assert forwarded_for([("x-other", "1"), (FORWARDED_FOR, "c1")]) == "c1"
    assert forwarded_for([("x-other", "1")]) is None and forwarded_for(None) is None


async def test_concurrent_grants_through_one_agent_never_race_each_other() -> None:
    """The owner serves all of a service's grants: each leaves out the VMs its siblings in flight
    chose, so none loses a transaction to another (before: same replica, same free VMs, conflicts)."""
    store = MemoryStore()
    service = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=1, max_pool=1, lease_ttl_s=5))
    records = [Network("blue", 100), service, Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")]
    records += [ProducerVm("blue", f"10.1.1.{n}", HostId("p1"), "echo") for n in range(8)]
    for record in records:
        await store.put(keys.key_of(record), keys.encode(record))
    for n in range(10):
        await register_consumer_host(store, f"c{n}")
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    agent = LeasingAgent(store, replica, rng=random.Random(3))
    try:
        views = await asyncio.gather(*(agent.request_lease(ConsumerRef("blue", f"10.1.0.{n}", HostId("c1")), "echo")
                                       for n in range(8)))
        assert len({v.members[0].vm.vm_id for v in views}) == 8
        assert agent.conflicts == 0
    finally:
        task.cancel()
        await store.close()


def client_with(owner_address: str | None, *, second_reachable: bool = True) -> tuple[RegistryClient, list[str]]:
    """A client of two registries, "first" and "second", whose attempts answer their name or (the
    second, unless `second_reachable`) fail as unreachable; `calls` lists whom each attempt asked."""
    calls: list[str] = []
    client = RegistryClient(["127.0.0.1:7001", "127.0.0.1:7002"], owner=lambda service: owner_address)

    async def ask(index: int, method: str, request: object, timeout_s: float) -> str:
        name = ("first", "second")[index]
        calls.append(name)
        if name == "second" and not second_reachable:
            raise Unavailable("leasing agent 127.0.0.1:7002 ended its stream of leasing calls")
        return name

    client._ask = ask  # type: ignore[method-assign]
    return client, calls


async def test_a_consumer_host_sends_a_grant_to_the_services_owner_first() -> None:
    client, calls = client_with("127.0.0.1:7002")
    assert await client.request_lease("echo", "blue", "10.1.0.1", "c1", []) == "second"
    assert calls == ["second"]


async def test_an_owner_address_the_consumer_host_was_not_given_is_not_dialled() -> None:
    client, calls = client_with("10.9.9.9:7000")  # from etcd: never trusted as a place to connect to
    assert await client.request_lease("echo", "blue", "10.1.0.1", "c1", []) == "first"
    assert calls == ["first"]


async def test_an_unreachable_owner_costs_one_try_then_the_grant_fails_over() -> None:
    client, calls = client_with("127.0.0.1:7002", second_reachable=False)
    assert await client.request_lease("echo", "blue", "10.1.0.1", "c1", []) == "first"
    assert calls == ["second", "first"]
