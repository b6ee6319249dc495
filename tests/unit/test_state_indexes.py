"""The replica state's indexes, kept in step one event at a time, always say what a from-scratch
look at every record says: after any sequence of puts and deletes of hosts, VMs, claims and pools
(hypothesis makes the sequences up), each index equals its definition computed over the world."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mapping import keys
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, Pool, ProducerVm, Record, vm_id
from mapping.state import Bag, ClusterState

HOSTS = [HostId(f"p{i}") for i in range(3)]
SERVICES = ["echo", "kv"]
ADDRESSES = [f"10.1.1.{i}" for i in range(6)]
CONSUMERS = [vm_id("blue", f"10.1.0.{i}") for i in range(3)]
CONSUMER_HOSTS = [HostId("c1"), HostId("c2")]

host = st.builds(Host, st.sampled_from(HOSTS), st.just(HostKind.PRODUCER), st.sampled_from(["127.0.0.1:1", "127.0.0.1:2"]),
                 st.booleans(), st.integers(1, 3))
vm = st.builds(ProducerVm, st.just("blue"), st.sampled_from(ADDRESSES), st.sampled_from(HOSTS),
               st.sampled_from(SERVICES), st.just("echo"), st.integers(1, 3), st.booleans())
claim = st.builds(Claim, st.sampled_from(ADDRESSES).map(lambda a: vm_id("blue", a)), st.integers(1, 4).map(LeaseId),
                  st.sampled_from(SERVICES), st.sampled_from(CONSUMERS), st.sampled_from(CONSUMER_HOSTS),
                  st.integers(1, 3), st.integers(1, 99), st.sampled_from(HOSTS))
pool = st.builds(Pool, st.sampled_from(SERVICES), st.sampled_from(CONSUMERS), st.sampled_from(CONSUMER_HOSTS),
                 st.integers(1, 4).map(LeaseId), st.just(5), st.integers(1, 99))
# an event: put a record at its key, or delete whatever is at that record's key
event = st.tuples(st.one_of(host, vm, claim, pool), st.booleans())


def indexes(state: ClusterState) -> dict[str, Any]:
    """Every index, in plain sets and counts (Bag order is an implementation detail)."""
    return {
        "vms_by_host": {h: set(v) for h, v in state.vms_by_host.items()},
        "vms_by_service": {s: set(v) for s, v in state.vms_by_service.items()},
        "free": {s: {h: set(bag) for h, bag in by_host.items()} for s, by_host in state.free_by_service.items()},
        "claimed_by_host": dict(state.claimed_by_host),
        "stale_claims": set(state.stale_claims),
        "pools_by_consumer": {c: set(p) for c, p in state.pools_by_consumer.items()},
        "pools_by_consumer_host": {c: set(p) for c, p in state.pools_by_consumer_host.items()},
        "claims_by_lease": {lease: set(m) for lease, m in state.claims_by_lease.items() if m},
    }


def from_definitions(state: ClusterState) -> dict[str, Any]:
    """The same indexes computed the slow way, over every record."""
    def group(pairs: list[tuple[Any, Any]]) -> dict[Any, set[Any]]:
        out: dict[Any, set[Any]] = {}
        for k, v in pairs:
            out.setdefault(k, set()).add(v)
        return out

    free: dict[str, dict[HostId, set[Any]]] = {}
    for v in state.vms.values():
        if v.vm_id not in state.claims and not v.used and state.is_usable(v):
            free.setdefault(v.service, {}).setdefault(v.host_id, set()).add(v.vm_id)
    return {
        "vms_by_host": group([(v.host_id, v.vm_id) for v in state.vms.values()]),
        "vms_by_service": group([(v.service, v.vm_id) for v in state.vms.values()]),
        "free": free,
        "claimed_by_host": dict(Counter(state.vms[c].host_id for c in state.claims if c in state.vms)),
        "stale_claims": {c.vm for c in state.claims.values() if not state.claim_is_current(c)},
        "pools_by_consumer": group([(p.consumer_vm, k) for k, p in state.pools.items()]),
        "pools_by_consumer_host": group([(p.consumer_host, k) for k, p in state.pools.items()]),
        "claims_by_lease": group([(c.lease_id, c.vm) for c in state.claims.values()]),
    }


def run(events: list[tuple[Record, bool]]) -> ClusterState:
    state = ClusterState()
    for record, delete in events:
        state.apply(keys.key_of(record), None if delete else record)
    return state


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=60))
def test_indexes_kept_one_event_at_a_time_equal_their_definitions_over_every_record(events) -> None:
    state = run(events)
    assert indexes(state) == from_definitions(state)


@settings(max_examples=100, deadline=None)
@given(st.lists(event, max_size=60))
def test_indexes_equal_those_of_a_state_rebuilt_from_scratch_out_of_the_final_records(events) -> None:
    state = run(events)
    final = [*state.hosts.values(), *state.vms.values(), *state.claims.values(), *state.pools.values()]
    random.Random(len(events)).shuffle(final)
    rebuilt = run([(r, False) for r in final])
    assert indexes(state) == indexes(rebuilt)


def test_a_bag_draws_only_its_members_and_forgets_a_removed_one() -> None:
    bag: Bag[str] = Bag()
    for item in "abcd":
        bag.add(item)
    bag.discard("b")
    bag.discard("z")  # not a member: nothing happens
    rng = random.Random(1)
    assert {bag.pick(rng) for _ in range(200)} == {"a", "c", "d"} and len(bag) == 3 and "b" not in bag


def test_a_host_that_starts_draining_takes_only_its_own_vms_out_of_the_free_set() -> None:
    state = ClusterState()
    for h in HOSTS[:2]:
        state.apply(keys.key_of(Host(h, HostKind.PRODUCER, "127.0.0.1:1")), Host(h, HostKind.PRODUCER, "127.0.0.1:1"))
    for i, a in enumerate(ADDRESSES[:4]):
        record = ProducerVm("blue", a, HOSTS[i % 2], "echo")
        state.apply(keys.key_of(record), record)
    draining = Host(HOSTS[0], HostKind.PRODUCER, "127.0.0.1:1", draining=True)
    state.apply(keys.key_of(draining), draining)
    assert set(state.free_by_service["echo"]) == {HOSTS[1]} and state.free_count("echo") == 2


def test_a_used_vm_is_never_free_and_its_next_incarnation_is() -> None:
    """A command VM a lessee used waits for its reset: no grant may choose it, even once its claim
    is gone; the record its host registers after the restart (unused) is free again."""
    state = ClusterState()
    state.apply(keys.key_of(h := Host(HOSTS[0], HostKind.PRODUCER, "127.0.0.1:1")), h)
    fresh = ProducerVm("blue", ADDRESSES[0], HOSTS[0], "echo", revision=5)
    claim = Claim(fresh.vm_id, LeaseId(1), "echo", CONSUMERS[0], CONSUMER_HOSTS[0], 5, revision=7)
    state.apply(keys.key_of(fresh), fresh)
    state.apply(keys.key_of(claim), claim)
    used = ProducerVm("blue", ADDRESSES[0], HOSTS[0], "echo", revision=5, used=True)  # a put keeps the revision
    state.apply(keys.key_of(used), used)
    assert state.claim_is_current(claim)  # the mark does not void the claim in flight
    state.apply(keys.key_of(claim), None)
    assert state.free_count("echo") == 0 and state.free_vms("echo") == []
    state.apply(keys.key_of(used), None)  # withdrawn for its restart
    state.apply(keys.key_of(fresh), ProducerVm("blue", ADDRESSES[0], HOSTS[0], "echo", revision=9))
    assert state.free_count("echo") == 1


def test_the_used_mark_is_omitted_from_the_record_when_false_and_read_back_when_true() -> None:
    vm = ProducerVm("blue", ADDRESSES[0], HOSTS[0], "echo", revision=3)
    assert b"used" not in keys.encode(vm)
    marked = ProducerVm("blue", ADDRESSES[0], HOSTS[0], "echo", used=True)
    assert keys.decode(keys.key_of(marked), keys.encode(marked), 3) == ProducerVm(
        "blue", ADDRESSES[0], HOSTS[0], "echo", revision=3, used=True)
