"""Which free producer VMs to claim: pure, so it can be tested on its own.

Weighted toward lightly loaded producer hosts: a VM is drawn with a weight that grows with the
share of its host that is still free. Random (not 'always the emptiest host') so that several
leasing agents racing for the same fleet spread over different VMs instead of colliding."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from mapping.model import HostId, ProducerVm
from mapping.state import ClusterState


def host_loads(state: ClusterState) -> dict[HostId, float]:
    """Share of each producer host's VMs that are claimed, 0.0 .. 1.0."""
    total: Counter[HostId] = Counter(vm.host_id for vm in state.vms.values())
    claimed: Counter[HostId] = Counter(state.vms[c.vm].host_id for c in state.claims.values() if c.vm in state.vms)
    return {host: claimed[host] / n for host, n in total.items()}


def choose_vms(free: Iterable[ProducerVm], loads: dict[HostId, float], count: int,
               rng: random.Random) -> list[ProducerVm]:
    """Up to `count` distinct VMs, drawn without replacement, weight = (1 - host load) + epsilon."""
    candidates = list(free)
    chosen: list[ProducerVm] = []
    while candidates and len(chosen) < count:
        weights = [1.0 - loads.get(vm.host_id, 0.0) + 0.05 for vm in candidates]
        pick = rng.choices(range(len(candidates)), weights=weights)[0]
        chosen.append(candidates.pop(pick))
    return chosen
