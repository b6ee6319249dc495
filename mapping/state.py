"""ClusterState: the decoded, indexed view of the keyspace that every replica keeps in memory.
Pure: `apply` is the only mutation, and it returns what it replaced so listeners see both sides.

Its indexes make every hot question cost the same with 100 or 10,000 VMs: `apply` keeps them in
step in O(1) per record (a host's own change touches only that host's VMs). A VM is *free* when it
exists, is not marked used (a command VM waiting for its reset), has no claim and its host is
registered and not draining; a claim is *stale* when its VM is
gone or was re-registered since (the claim collector's work).

A VM's record lives under its host's key (`vms/<host>/<network>/<address>`), so two hosts may hold a
record for one address (a configuration error, or a host that did not see the other yet): `vms` is
the oldest of them by create revision, the first registered, and every index follows it; the younger
stay in `vm_records` only, until the oldest is gone or their host withdraws them."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mapping import keys
from mapping.model import (
    Claim,
    Host,
    HostId,
    HostKind,
    LeaseId,
    Network,
    Pool,
    ProducerVm,
    QuotaScope,
    QuotaSlot,
    Record,
    Service,
    VmId,
)

T = TypeVar("T")


class Bag(Generic[T]):
    """A set that also draws a uniformly random member in O(1) (placement samples free VMs from it):
    a list of members and each one's position; removal swaps the last member into the hole."""

    __slots__ = ("_items", "_where")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._where: dict[T, int] = {}

    def add(self, item: T) -> None:
        if item not in self._where:
            self._where[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: T) -> None:
        at = self._where.pop(item, None)
        if at is None:
            return
        last = self._items.pop()
        if at < len(self._items):
            self._items[at] = last
            self._where[last] = at

    def pick(self, rng: random.Random) -> T:
        return self._items[rng.randrange(len(self._items))]

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def __eq__(self, other: object) -> bool:  # the same members, in whatever order
        return isinstance(other, Bag) and self._where.keys() == other._where.keys()

    def __repr__(self) -> str:
        return f"Bag({self._items!r})"


@dataclass
class ClusterState:
    networks: dict[str, Network] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    hosts: dict[HostId, Host] = field(default_factory=dict)
    vms: dict[VmId, ProducerVm] = field(default_factory=dict)  # the VM in force: the oldest record of its address
    vm_records: dict[VmId, dict[HostId, ProducerVm]] = field(default_factory=dict)  # every host's record
    claims: dict[VmId, Claim] = field(default_factory=dict)  # claims/<producer host>/<vm>, by VM
    # pools/<consumer host>/<pool>/<producer host>/<vm>: the claims again, as their pools' consumer host sees them
    members: dict[VmId, Claim] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)  # by pool key
    quota_slots: dict[str, QuotaSlot] = field(default_factory=dict)  # by key below quotas/
    # indexes, kept in step by apply(); a pool's id is `lease_id`
    pools_by_lease: dict[LeaseId, Pool] = field(default_factory=dict)
    claims_by_lease: dict[LeaseId, set[VmId]] = field(default_factory=lambda: defaultdict(set))
    members_by_lease: dict[LeaseId, set[VmId]] = field(default_factory=lambda: defaultdict(set))
    slots_by_lease: dict[LeaseId, set[str]] = field(default_factory=lambda: defaultdict(set))
    services_by_target: dict[tuple[str, str], Service] = field(default_factory=dict)
    slots_by_subject: dict[tuple[QuotaScope, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    vms_by_host: dict[HostId, set[VmId]] = field(default_factory=dict)
    vms_by_service: dict[str, set[VmId]] = field(default_factory=dict)
    free_by_service: dict[str, dict[HostId, Bag[VmId]]] = field(default_factory=dict)  # service -> host -> free
    claimed_by_host: Counter[HostId] = field(default_factory=Counter)  # claims on the host's existing VMs
    stale_claims: set[VmId] = field(default_factory=set)
    pools_by_consumer: dict[VmId, set[str]] = field(default_factory=dict)  # consumer VM -> pool keys
    pools_by_consumer_host: dict[HostId, set[str]] = field(default_factory=dict)

    def get(self, key: str) -> Record | None:
        kind = key[len(keys.ROOT):].partition("/")[0]
        rest = key[len(keys.ROOT) + len(kind) + 1:]
        table: dict[str, Record] | None = {
            "networks": self.networks, "services": self.services, "hosts": self.hosts, "vms": self.vms,
            "claims": self.claims, "pools": self.pools, "quotas": self.quota_slots,
        }.get(kind)  # type: ignore[assignment]
        if table is None:
            return None
        if kind == "hosts":  # hosts/<kind>/<id>, kept by id: the record must be this key's
            host = self.hosts.get(HostId(rest.partition("/")[2]))
            return host if host is not None and keys.key_of(host) == key else None
        if kind == "vms":  # vms/<host>/<vm id>: that host's record, in force or not
            owner = keys.vm_of_key(key)
            return self.vm_records.get(owner[1], {}).get(owner[0]) if owner else None
        if kind == "claims":  # claims/<host>/<vm id>: the claim must be this key's
            host, _, vm = rest.partition("/")
            claim = self.claims.get(VmId(vm))
            return claim if claim is not None and claim.host_id == host else None
        if keys.is_member_key(key):
            vm = _member_parts(rest)[1]
            member = self.members.get(vm)
            return member if member is not None and keys.member_key(member) == key else None
        return table.get(key if kind == "pools" else rest)

    def apply(self, key: str, record: Record | None) -> Record | None:
        """Put `record` at `key` (None deletes). Returns the record it replaced."""
        old = self.get(key)
        member = keys.is_member_key(key)
        if isinstance(record, Claim) and not member and (other := self.claims.get(record.vm)) is not None \
                and other.host_id != record.host_id:
            # a claim on another host's record of the address (first wins moved on): the VM in force
            # is claimed once; the other claim, stale, is the claim collector's (it deletes by revision)
            self._remove(keys.key_of(other), other)
        if old is not None:
            self._remove_member(old) if member else self._remove(key, old)  # type: ignore[arg-type]
        if record is not None:
            self._add_member(record) if member else self._add(key, record)  # type: ignore[arg-type]
        return old

    def _add_member(self, r: Claim) -> None:
        self.members[r.vm] = r
        self.members_by_lease[r.lease_id].add(r.vm)

    def _remove_member(self, r: Claim) -> None:
        del self.members[r.vm]
        _discard(self.members_by_lease, r.lease_id, r.vm)

    def _add(self, key: str, r: Record) -> None:
        match r:
            case Network():
                self.networks[r.name] = r
            case Service():
                self.services[r.name] = r
                self.services_by_target[(r.network, r.target)] = r
            case Host():
                self.hosts[r.host_id] = r
                self._refresh_host(r.host_id)
            case ProducerVm():
                self.vm_records.setdefault(r.vm_id, {})[r.host_id] = r
                self._elect(r.vm_id)
            case Claim():
                self.claims[r.vm] = r
                self.claims_by_lease[r.lease_id].add(r.vm)
                if (vm := self.vms.get(r.vm)) is not None:
                    self.claimed_by_host[vm.host_id] += 1
                self._refresh_vm(r.vm)
            case Pool():
                self.pools[key] = r
                self.pools_by_lease[r.lease_id] = r
                self.pools_by_consumer.setdefault(r.consumer_vm, set()).add(key)
                self.pools_by_consumer_host.setdefault(r.consumer_host, set()).add(key)
            case QuotaSlot():
                self.quota_slots[key[len(keys.QUOTAS):]] = r
                self.slots_by_subject[(r.scope, r.subject)].add(r.index)
                self.slots_by_lease[r.lease_id].add(key)

    def _remove(self, key: str, r: Record) -> None:
        match r:
            case Network():
                del self.networks[r.name]
            case Service():
                del self.services[r.name]
                self.services_by_target.pop((r.network, r.target), None)
            case Host():
                del self.hosts[r.host_id]
                self._refresh_host(r.host_id)
            case ProducerVm():
                records = self.vm_records[r.vm_id]
                del records[r.host_id]
                if not records:
                    del self.vm_records[r.vm_id]
                self._elect(r.vm_id)
            case Claim():
                del self.claims[r.vm]
                _discard(self.claims_by_lease, r.lease_id, r.vm)
                if (vm := self.vms.get(r.vm)) is not None:
                    self._uncount_claim(vm.host_id)
                self._refresh_vm(r.vm)
            case Pool():
                del self.pools[key]
                if self.pools_by_lease.get(r.lease_id) == r:
                    del self.pools_by_lease[r.lease_id]
                _discard(self.pools_by_consumer, r.consumer_vm, key)
                _discard(self.pools_by_consumer_host, r.consumer_host, key)
            case QuotaSlot():
                del self.quota_slots[key[len(keys.QUOTAS):]]
                _discard(self.slots_by_lease, r.lease_id, key)
                used = self.slots_by_subject.get((r.scope, r.subject))
                if used is not None:
                    used.discard(r.index)
                    if not used:
                        del self.slots_by_subject[(r.scope, r.subject)]

    # --- index upkeep --------------------------------------------------------------------------
    def _elect(self, vm_id: VmId) -> None:
        """Put the oldest record of the address in force (ties, never expected: by host id)."""
        records = self.vm_records.get(vm_id)
        oldest = min(records.values(), key=lambda v: (v.revision, v.host_id)) if records else None
        current = self.vms.get(vm_id)
        if current is oldest:
            return
        if current is not None:
            self._hide(current)
        if oldest is not None:
            self._show(oldest)

    def _show(self, r: ProducerVm) -> None:
        self.vms[r.vm_id] = r
        self.vms_by_host.setdefault(r.host_id, set()).add(r.vm_id)
        self.vms_by_service.setdefault(r.service, set()).add(r.vm_id)
        if r.vm_id in self.claims:
            self.claimed_by_host[r.host_id] += 1
        self._refresh_vm(r.vm_id)

    def _hide(self, r: ProducerVm) -> None:
        del self.vms[r.vm_id]
        _discard(self.vms_by_host, r.host_id, r.vm_id)
        _discard(self.vms_by_service, r.service, r.vm_id)
        if r.vm_id in self.claims:
            self._uncount_claim(r.host_id)
        self._set_free(r, False)
        self._refresh_vm(r.vm_id)

    def _uncount_claim(self, host: HostId) -> None:
        self.claimed_by_host[host] -= 1
        if self.claimed_by_host[host] <= 0:
            del self.claimed_by_host[host]

    def _refresh_vm(self, vm_id: VmId) -> None:
        """Re-derive the VM's free flag and its claim's staleness: O(1)."""
        vm, claim = self.vms.get(vm_id), self.claims.get(vm_id)
        if vm is not None:
            self._set_free(vm, claim is None and not vm.used and self.is_usable(vm))
        if claim is not None and not self.claim_is_current(claim):
            self.stale_claims.add(vm_id)
        else:
            self.stale_claims.discard(vm_id)

    def _refresh_host(self, host: HostId) -> None:
        """A host came, went or toggled draining: only its own VMs change their free flag."""
        for vm_id in self.vms_by_host.get(host, ()):
            self._refresh_vm(vm_id)

    def _set_free(self, vm: ProducerVm, free: bool) -> None:
        if free:
            self.free_by_service.setdefault(vm.service, {}).setdefault(vm.host_id, Bag()).add(vm.vm_id)
            return
        by_host = self.free_by_service.get(vm.service, {})
        bag = by_host.get(vm.host_id)
        if bag is not None:
            bag.discard(vm.vm_id)
            if not bag:
                del by_host[vm.host_id]
                if not by_host:
                    del self.free_by_service[vm.service]

    # --- queries used by several components ---------------------------------------------------
    def producer_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind is HostKind.PRODUCER]

    def is_usable(self, vm: ProducerVm) -> bool:
        """A VM whose host is registered and not draining."""
        host = self.hosts.get(vm.host_id)
        return host is not None and not host.draining

    def free_vms(self, service: str) -> list[ProducerVm]:
        return [self.vms[v] for bag in self.free_by_service.get(service, {}).values() for v in bag]

    def free_count(self, service: str) -> int:
        return sum(len(bag) for bag in self.free_by_service.get(service, {}).values())

    def host_load(self, host: HostId) -> float:
        """Share of the producer host's VMs that are claimed, 0.0 .. 1.0."""
        total = len(self.vms_by_host.get(host, ()))
        return self.claimed_by_host[host] / total if total else 0.0

    def host_address(self, vm: VmId) -> str | None:
        record = self.vms.get(vm)
        host = self.hosts.get(record.host_id) if record else None
        return host.address if host else None

    def older_record(self, vm: ProducerVm) -> ProducerVm | None:
        """Another host's record of `vm`'s address created before it: `vm` must give way (first wins)."""
        oldest = self.vms.get(vm.vm_id)
        return oldest if oldest is not None and oldest.host_id != vm.host_id and oldest.revision < vm.revision else None

    def all_vm_records(self) -> list[ProducerVm]:
        """Every host's VM record, in force or not (a reload must see each key)."""
        return [r for records in self.vm_records.values() for r in records.values()]

    def claim_is_current(self, claim: Claim) -> bool:
        """The claim names the VM incarnation that exists now (a re-registered VM voids old claims)."""
        vm = self.vms.get(claim.vm)
        return vm is not None and vm.revision == claim.vm_revision


def _member_parts(rest: str) -> tuple[HostId, VmId]:
    """(producer host, VM id) of a member key below pools/."""
    parts = rest.split("/")
    return HostId(parts[4]), VmId(f"{parts[5]}/{parts[6]}")


def _discard(index: dict[T, set[VmId]] | dict[T, set[str]], group: T, member: object) -> None:
    members = index.get(group)
    if members is not None:
        members.discard(member)  # type: ignore[arg-type]
        if not members:
            del index[group]
