"""Quotas on leases, enforced inside the grant's etcd transaction (pure: no I/O).

etcd cannot count inside a transaction, so a quota of N leases is N slot keys,
`quotas/<scope>/<subject>/<0..N-1>`. A grant creates one free slot per scope (network, consumer
host, consumer VM) in the same transaction as the pool, each compared with create_revision == 0,
and attached to the pool's etcd lease: when the lease ends, released or expired with a dead
consumer host, its slots vanish with it and nothing leaks. Two grants that pick the same slot
collide like two grants that pick the same VM: one wins, the other catches up and chooses again.
Slots are drawn at random among the free ones, so concurrent grants rarely collide.

A quota counts leases, not producer VMs: a lease holds at most its service's max_pool VMs, and
counting VMs would need slots given back on every shrink and by the claim collector, outside
the lease's life."""

from __future__ import annotations

import random
from collections.abc import Mapping, Set
from dataclasses import dataclass

from mapping.model import ConsumerRef, Network, QuotaScope, QuotaSlot, Service
from mapping.state import ClusterState
from wire.errors import QuotaExceeded

_DENSE = 4  # when fewer than 1 in _DENSE slots are free, list them instead of drawing blindly


@dataclass(frozen=True, slots=True)
class Limit:
    scope: QuotaScope
    subject: str
    limit: int
    name: str  # the quota's name in the cluster config, for the refusal's sentence


def limits(network: Network, service: Service, consumer: ConsumerRef) -> list[Limit]:
    """The quotas a new lease of `service` by `consumer` counts against."""
    quotas = network.quotas
    per_vm = Limit(QuotaScope.CONSUMER_VM, consumer.vm_id, quotas.pools_per_consumer_vm,
                   f"pools_per_consumer_vm of network {network.name!r}")
    if 0 < service.policy.max_pools_per_consumer < per_vm.limit:
        per_vm = Limit(QuotaScope.CONSUMER_VM, consumer.vm_id, service.policy.max_pools_per_consumer,
                       f"max_pools_per_consumer of service {service.name!r}")
    return [
        Limit(QuotaScope.NETWORK, network.name, quotas.pools_per_network, f"pools_per_network of network {network.name!r}"),
        Limit(QuotaScope.CONSUMER_HOST, consumer.host_id, quotas.pools_per_consumer_host,
              f"pools_per_consumer_host of network {network.name!r}"),
        per_vm,
    ]


def _describe(limit: Limit) -> str:
    match limit.scope:
        case QuotaScope.NETWORK:
            return f"network {limit.subject!r}"
        case QuotaScope.CONSUMER_HOST:
            return f"consumer host {limit.subject!r}"
    return f"consumer VM {limit.subject}"


def choose_slots(state: ClusterState, wanted: list[Limit], lease_id: int, rng: random.Random,
                 in_flight: Mapping[tuple[QuotaScope, str], set[int]] | None = None) -> list[QuotaSlot]:
    """A free slot under each limit, or QuotaExceeded naming the first quota that is full. Slots our
    own grants in flight chose (`in_flight`, by scope and subject) are left out while others are
    free: concurrent grants of one consumer host would otherwise draw the same slot now and then,
    and all but one would lose the race and start again."""
    slots = []
    for limit in wanted:
        used = state.slots_by_subject.get((limit.scope, limit.subject), set())
        # len(used) bounds the slots under the limit from above; count exactly only when it reaches the
        # limit (a quota nearly full, or lowered below slots still held): a grant stays O(1) in the leases
        taken = len(used) if len(used) < limit.limit else sum(1 for index in used if index < limit.limit)
        if taken >= limit.limit:
            raise QuotaExceeded(f"{_describe(limit)} already holds {taken} lease(s), its quota ({limit.name} = "
                                f"{limit.limit}); release one first")
        busy = (in_flight.get((limit.scope, limit.subject)) if in_flight else None) or _NONE
        if limit.limit - taken <= len(busy):  # every free slot may be in flight: race them
            busy = _NONE
        index = _free_index(used, busy, limit.limit, taken + len(busy), rng)
        slots.append(QuotaSlot(limit.scope, limit.subject, index, lease_id))
    return slots


_NONE: frozenset[int] = frozenset()


def _free_index(used: set[int], busy: Set[int], limit: int, taken: int, rng: random.Random) -> int:
    """A slot below `limit` in neither `used` nor `busy` (one is, and `taken` bounds how many are)."""
    if (limit - taken) * _DENSE >= limit:  # at least 1 in _DENSE is free: a few draws find one
        while (index := rng.randrange(limit)) in used or index in busy:
            pass
        return index
    return rng.choice([i for i in range(limit) if i not in used and i not in busy])
