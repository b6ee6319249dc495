"""Which free producer VMs to claim: pure, so it can be tested on its own.

Weighted toward lightly loaded producer hosts: a VM is drawn with a weight that grows with the
share of its host that is still free. Random (not 'always the emptiest host') so that several
leasing agents racing for the same fleet spread over different VMs instead of colliding.

It never looks at every VM: the state keeps each service's free VMs in a bag per host, so a draw
picks a host (weight = its free VMs x its VM weight, O(hosts)) and then a VM of that host's bag
(O(1)). That is the same distribution as weighing every free VM one by one."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping

from mapping.model import HostId, VmId
from mapping.state import Bag

SPARE_WEIGHT = 0.05  # a full host still gets a little weight: its last free VMs remain reachable


def vm_weight(load: float) -> float:
    return 1.0 - load + SPARE_WEIGHT


def choose_vms(free: Mapping[HostId, Bag[VmId]], loads: Mapping[HostId, float], count: int, rng: random.Random,
               avoid: Collection[HostId] = (), busy: Collection[VmId] = ()) -> list[VmId]:
    """Up to `count` distinct free VMs, drawn without replacement, weight = (1 - host load) + epsilon;
    hosts in `avoid` are not drawn from, nor VMs in `busy` (few: those our own grants in flight chose).
    Costs O(count x hosts + busy x hosts), whatever the number of VMs."""
    hosts = [h for h, bag in free.items() if bag and h not in avoid]
    each = [vm_weight(loads.get(h, 0.0)) for h in hosts]
    left = [len(free[h]) - sum(1 for vm in busy if vm in free[h]) for h in hosts]
    chosen: list[VmId] = []
    taken: set[VmId] = set(busy)
    while len(chosen) < count and any(left):
        at = rng.choices(range(len(hosts)), weights=[n * w for n, w in zip(left, each)])[0]
        vm = _draw(free[hosts[at]], taken, rng)
        chosen.append(vm)
        taken.add(vm)
        left[at] -= 1
    return chosen


def _draw(bag: Bag[VmId], taken: set[VmId], rng: random.Random) -> VmId:
    """A member of `bag` not in `taken` (at least one is): a few random tries, then a scan of the
    bag, which happens only when most of it is taken (and then the bag is small: count <= 63)."""
    for _ in range(8):
        vm = bag.pick(rng)
        if vm not in taken:
            return vm
    return rng.choice([vm for vm in bag if vm not in taken])
