"""Reading what producer hosts recorded (--history) and checking the exclusivity invariants of
SPEC §4 on it: a producer VM never runs two requests at once, never serves two consumer VMs
under one claim, and never sits in two pools at once (checked on lease events)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Execution:
    vm: str
    request_id: int
    consumer: str
    token: int
    start_ns: int
    end_ns: int
    ok: bool


def read_executions(paths: list[Path]) -> list[Execution]:
    out = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                out.append(Execution(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut short by SIGKILL
    return out


def overlapping_executions(executions: Iterable[Execution]) -> list[tuple[Execution, Execution]]:
    """(still running, started meanwhile) pairs on one VM. Compared with the run that ends last so
    far, not just the previous one: a long run overlaps every short one that starts inside it."""
    by_vm: dict[str, list[Execution]] = defaultdict(list)
    for e in executions:
        by_vm[e.vm].append(e)
    overlaps = []
    for runs in by_vm.values():
        runs.sort(key=lambda e: (e.start_ns, e.end_ns))
        latest = runs[0]
        for run in runs[1:]:
            if run.start_ns < latest.end_ns:
                overlaps.append((latest, run))
            if run.end_ns > latest.end_ns:
                latest = run
    return overlaps


def shared_claims(executions: list[Execution]) -> list[tuple[str, int, set[str]]]:
    """(vm, fencing token, consumers) where one claim served more than one consumer VM."""
    consumers: dict[tuple[str, int], set[str]] = defaultdict(set)
    for e in executions:
        consumers[(e.vm, e.token)].add(e.consumer)
    return [(vm, token, c) for (vm, token), c in consumers.items() if len(c) > 1]


class PoolTracker:
    """Follows lease events and counts moments when one VM was a member of two leases."""

    def __init__(self) -> None:
        self.members: dict[str, set[str]] = {}
        self.violations: list[str] = []
        self.granted: set[str] = set()

    def update(self, lease_id: str, members: set[str], ended: bool) -> None:
        if ended:
            self.members.pop(lease_id, None)
            return
        self.granted.add(lease_id)
        for other, vms in self.members.items():
            if other != lease_id and vms & members:
                self.violations.append(f"VM(s) {sorted(vms & members)} in leases {other} and {lease_id} at once")
        self.members[lease_id] = members
