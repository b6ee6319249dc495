"""ClusterState: the decoded, indexed view of the keyspace that every replica keeps in memory.
Pure: `apply` is the only mutation, and it returns what it replaced so listeners see both sides."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

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


@dataclass
class ClusterState:
    networks: dict[str, Network] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    hosts: dict[HostId, Host] = field(default_factory=dict)
    vms: dict[VmId, ProducerVm] = field(default_factory=dict)
    claims: dict[VmId, Claim] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)  # by pool key
    quota_slots: dict[str, QuotaSlot] = field(default_factory=dict)  # by key below quotas/
    # indexes, kept in step by apply()
    pools_by_lease: dict[LeaseId, Pool] = field(default_factory=dict)
    members_by_lease: dict[LeaseId, set[VmId]] = field(default_factory=lambda: defaultdict(set))
    services_by_target: dict[tuple[str, str], Service] = field(default_factory=dict)
    slots_by_subject: dict[tuple[QuotaScope, str], set[int]] = field(default_factory=lambda: defaultdict(set))

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
        return table.get(key if kind == "pools" else rest)

    def apply(self, key: str, record: Record | None) -> Record | None:
        """Put `record` at `key` (None deletes). Returns the record it replaced."""
        old = self.get(key)
        if old is not None:
            self._remove(key, old)
        if record is not None:
            self._add(key, record)
        return old

    def _add(self, key: str, r: Record) -> None:
        match r:
            case Network():
                self.networks[r.name] = r
            case Service():
                self.services[r.name] = r
                self.services_by_target[(r.network, r.target)] = r
            case Host():
                self.hosts[r.host_id] = r
            case ProducerVm():
                self.vms[r.vm_id] = r
            case Claim():
                self.claims[r.vm] = r
                self.members_by_lease[r.lease_id].add(r.vm)
            case Pool():
                self.pools[key] = r
                self.pools_by_lease[r.lease_id] = r
            case QuotaSlot():
                self.quota_slots[key[len(keys.QUOTAS):]] = r
                self.slots_by_subject[(r.scope, r.subject)].add(r.index)

    def _remove(self, key: str, r: Record) -> None:
        match r:
            case Network():
                del self.networks[r.name]
            case Service():
                del self.services[r.name]
                self.services_by_target.pop((r.network, r.target), None)
            case Host():
                del self.hosts[r.host_id]
            case ProducerVm():
                del self.vms[r.vm_id]
            case Claim():
                del self.claims[r.vm]
                members = self.members_by_lease.get(r.lease_id)
                if members is not None:
                    members.discard(r.vm)
                    if not members:
                        del self.members_by_lease[r.lease_id]
            case Pool():
                del self.pools[key]
                if self.pools_by_lease.get(r.lease_id) == r:
                    del self.pools_by_lease[r.lease_id]
            case QuotaSlot():
                del self.quota_slots[key[len(keys.QUOTAS):]]
                used = self.slots_by_subject.get((r.scope, r.subject))
                if used is not None:
                    used.discard(r.index)
                    if not used:
                        del self.slots_by_subject[(r.scope, r.subject)]

    # --- queries used by several components ---------------------------------------------------
    def producer_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind is HostKind.PRODUCER]

    def is_usable(self, vm: ProducerVm) -> bool:
        """A VM whose host is registered and not draining."""
        host = self.hosts.get(vm.host_id)
        return host is not None and not host.draining

    def free_vms(self, service: str) -> list[ProducerVm]:
        return [vm for vm in self.vms.values()
                if vm.service == service and vm.vm_id not in self.claims and self.is_usable(vm)]

    def host_address(self, vm: VmId) -> str | None:
        record = self.vms.get(vm)
        host = self.hosts.get(record.host_id) if record else None
        return host.address if host else None

    def claim_is_current(self, claim: Claim) -> bool:
        """The claim names the VM incarnation that exists now (a re-registered VM voids old claims)."""
        vm = self.vms.get(claim.vm)
        return vm is not None and vm.revision == claim.vm_revision
