"""Which leasing agent owns which service (issue 12 item 5), as pure functions over the replica.

Each registry publishes `hosts/registry/<id>` (its address) under its own liveness lease, so every
process sees the live registries in its replica. A service's owner is the live registry with the
highest rendezvous (highest-random-weight) hash of (service, registry id): every process computes
the same owner from the same replica, the services spread evenly, and when a registry comes or
goes only the services it owned (or now wins) move. The unit is the service because a grant
chooses among all of a service's free VMs: two grants of the same service can race for a VM, two
grants of different services never can. Ownership only steers who transacts; correctness still
rests on etcd's compare-and-swap (a registry that thinks it owns a service it no longer owns, for
a moment, at worst loses a race as before)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

from mapping.model import HostId
from mapping.state import ClusterState


@functools.lru_cache(maxsize=4096)  # asked at every grant, for the same few services and registries
def score(unit: str, member: str) -> int:
    """The rendezvous weight of `member` for `unit`: a stable 64-bit hash of both (not Python's
    hash(), which differs per process)."""
    digest = hashlib.blake2b(f"{unit}\0{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(unit: str, members: Iterable[str]) -> str | None:
    """The member that owns `unit`: the highest score, ties broken by name; None without members."""
    return max(members, key=lambda m: (score(unit, m), m), default=None)


def registries(state: ClusterState) -> dict[HostId, str]:
    """The live registries in the replica: id -> the address they serve leasing calls on."""
    return {h.host_id: h.address for h in state.registries.values()}


def owner_address(state: ClusterState, service: str) -> str | None:
    """The address of the registry owning `service`, or None when no registry is registered."""
    live = registries(state)
    chosen = owner(service, live)
    return live[HostId(chosen)] if chosen is not None else None
