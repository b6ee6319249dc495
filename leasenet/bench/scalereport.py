"""What `bench --scale` concludes from what it measured (pure: no I/O): where a grant/release
cycle's CPU goes, split between the processes party to it and those not, and the targets of issue
19 as `{target, value, limit, pass}` like the data-path bench's.

Party to a cycle: the consumer host it was leased for, the producer host whose VMs were granted,
and (by design, they serve every service and inspection) etcd and the registries. Every process's
CPU over the churn is taken net of its own background (its rate in an idle window with the same
fleet and pools: liveness and pool keep-alives, timers), then divided among the cycles it was
party to; a host party to some cycles and not to others (the churn has one producer host per
service) is charged, for the cycles it was not party to, what the hosts of its kind party to none
spent per cycle, and the rest is its party cost."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# the kinds of process in a cycle's CPU; etcd and registries are party to every cycle
ETCD, REGISTRY, CONSUMER, PRODUCER = "etcd", "registry", "consumer host", "producer host"

# issue 19's bars
NON_PARTY_PCT = 2.0  # a host not party to a grant: at most this % of a party host's CPU on it
EVENTS_GROWTH = 1.1  # watch events per grant at the larger fleet over the smaller one
POOL_UPKEEP_PER_S = 10.0  # etcd requests/s keeping the pools alive, beyond the hosts' liveness
REGISTRY_MS = 2.5  # both registries' CPU per grant/release cycle
GRANTS_PER_S = 300.0  # uncontended, with the bench's whole fleet running
GRANT_FLAT = 1.2  # grant p50 at the big fleet over the small one
REQUEST_FLAT = 1.1  # request p50 at C=1, the same


@dataclass(frozen=True, slots=True)
class Party:
    """One measured process: its kind and the churn lanes whose cycles it is party to."""
    kind: str
    lanes: frozenset[int] = field(default_factory=frozenset)


def net_cpu(used: Mapping[str, float], background_per_s: Mapping[str, float], window_s: float, *,
            floor: bool = True) -> dict[str, float]:
    """Each process's CPU seconds over the window beyond its idle rate; `floor`: at least 0 (a
    process idler than in its idle windows spent nothing on the cycles; unfloored, the figure shows
    how far the background's own spread reaches)."""
    net = {name: seconds - background_per_s.get(name, 0.0) * window_s for name, seconds in used.items()}
    return {name: max(0.0, seconds) for name, seconds in net.items()} if floor else net


def cycle_cpu(net: Mapping[str, float], parties: Mapping[str, Party], lane_cycles: Sequence[int]) -> dict[str, float | None]:
    """Milliseconds of CPU per grant/release cycle: etcd, the registries summed, and for each host
    kind the mean of its party hosts (per cycle they were party to) and of its non-party hosts (per
    cycle). None where no such process was measured or no cycle ran."""
    total = sum(lane_cycles)
    if not total:
        return {}
    out: dict[str, float | None] = {}
    for kind in (ETCD, REGISTRY):
        found = [seconds for name, seconds in net.items() if parties.get(name, Party("")).kind == kind]
        out["registries" if kind == REGISTRY else kind] = _ms(sum(found) / total) if found else None
    for kind in (CONSUMER, PRODUCER):
        hosts = {name: p for name, p in parties.items() if p.kind == kind and name in net}
        idle = [net[name] / total for name, p in hosts.items() if not p.lanes]
        per_idle = statistics.mean(idle) if idle else None
        party = []
        for name, p in hosts.items():
            mine = sum(lane_cycles[lane] for lane in p.lanes if lane < len(lane_cycles))
            if p.lanes and mine:
                # the cycles it was not party to cost it what they cost a host party to none
                party.append((net[name] - (per_idle or 0.0) * (total - mine)) / mine)
        out[f"party {kind}"] = _ms(statistics.mean(party)) if party else None
        out[f"non-party {kind}"] = _ms(per_idle) if per_idle is not None else None
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def non_party_share(cpu: Mapping[str, float | None]) -> dict[str, float | None]:
    """Per host kind: a non-party host's CPU per cycle as a percentage of a party host's."""
    out: dict[str, float | None] = {}
    for kind in (CONSUMER, PRODUCER):
        party, other = cpu.get(f"party {kind}"), cpu.get(f"non-party {kind}")
        out[kind] = round(100 * other / party, 2) if party and party > 0 and other is not None else None
    return out


def growth(sizes: Sequence[Mapping[str, Any]]) -> float | None:
    """Watch events per grant at the largest fleet over the smallest."""
    if len(sizes) < 2:
        return None
    low, high = sizes[0]["events_per_grant"], sizes[-1]["events_per_grant"]
    return round(high / low, 3) if low and high is not None else None


def _target(text: str, value: float | None, sign: str, limit: float, **extra: Any) -> dict[str, Any]:
    ok = value is not None and (value <= limit if sign == "<=" else value >= limit if sign == ">=" else value == limit)
    return {"target": text, "value": value, "limit": limit, "pass": ok, **extra}


def scale_targets(r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 19's targets on one `bench --scale` report."""
    plan, churn, fan, keep = r["settings"], r["churn"], r["watch_fanout"], r["keep_alive"]
    share = churn["non_party_pct"]
    small, big = fan["sizes"][0]["hosts"], fan["sizes"][-1]["hosts"]
    out = [_target(f"a {kind} not party to a grant spends <= {NON_PARTY_PCT:g}% of the CPU a party {kind} spends "
                   "on it (per grant/release cycle, background subtracted)", share[kind], "<=", NON_PARTY_PCT,
                   unit="%")
           for kind in (CONSUMER, PRODUCER)]
    out.append(_target(f"etcd watch events sent per grant at {big} hosts <= {EVENTS_GROWTH:g} x at {small} hosts "
                       f"({fan['sizes'][-1]['events_per_grant']} / {fan['sizes'][0]['events_per_grant']})",
                       fan["growth"], "<=", EVENTS_GROWTH))
    out.append(_target(f"etcd requests/s keeping {keep['pools']:,} pools alive on {plan['consumer_hosts']} consumer "
                       f"hosts <= {POOL_UPKEEP_PER_S:g} (beyond the hosts' liveness, {keep['hosts']['requests_per_s']}/s "
                       "apart)", keep["pools_requests_per_s"], "<=", POOL_UPKEEP_PER_S))
    out.append(_target(f"registries' CPU per grant/release cycle <= {REGISTRY_MS:g} ms (both registries summed)",
                       churn["cpu_ms_per_cycle"].get("registries"), "<=", REGISTRY_MS, unit="ms"))
    out.append(_target(f">= {GRANTS_PER_S:g} grants/s uncontended with the whole fleet running "
                       f"({churn['concurrency']} grants in flight)", churn["grants_per_s"], ">=", GRANTS_PER_S))
    out.append(_target("double claims = 0 (leasenet.checker on the claim history of the churn and the contended run)",
                       r["double_claims"], "==", 0))
    out.append(_target(f"{plan['producer_hosts'] * plan['vms_per_host']:,} VMs registered", r["big"]["vms"], "==",
                       plan["producer_hosts"] * plan["vms_per_host"]))
    out.append(_target(f"{plan['pools']:,} pools held", r["held"]["held"] if not r["held"]["errors"] else None, "==",
                       plan["pools"]))
    out.append(_target(f"grant p50 at {r['big']['vms']:,} VMs / at {r['small']['vms']:,} VMs <= {GRANT_FLAT:g} "
                       "(median of the rounds' ratios)", r["grant_p50_ratio"], "<=", GRANT_FLAT))
    out.append(_target(f"request p50 at C=1 at {r['big']['vms']:,} VMs / at {r['small']['vms']:,} VMs <= "
                       f"{REQUEST_FLAT:g} (median of the rounds' ratios)", r["request_p50_ratio"], "<=", REQUEST_FLAT))
    return out
