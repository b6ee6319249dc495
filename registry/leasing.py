"""The leasing agent (SPEC §3 step 3, §4): grants, grows, renews and releases leases.

A lease is a pool record (its id of its own) and one claim per producer VM, with the claim's mirror
under the pool (what the pool's consumer host watches), all attached to the consumer host's
liveness lease: one etcd lease per consumer host, however many pools it holds. Every grant or grow
is ONE etcd transaction that creates the claims only if no claim exists on any chosen VM, each
chosen VM is still the incarnation we saw and the consumer host is still the incarnation whose lease
we attach to; a lost race makes us catch up with the replica and choose again among what is still
free. A release is one guarded transaction deleting the pool's keys."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mapping import keys
from wire import metrics
from wire.errors import (
    ClaimConflict,
    InvalidRequest,
    LeaseExpired,
    LeasenetError,
    NotFound,
    PermissionDenied,
    PoolExhausted,
    PreconditionFailed,
    ProducerUnavailable,
)
from mapping.model import (Claim, ConsumerRef, Host, HostId, HostKind, LeaseId, Pool, ProducerVm, QuotaScope, QuotaSlot,
                           Record, Service, VmId, lease_hex, new_pool_id)
from registry.authz import ANYONE, Caller, may_act_on_pool
from registry import groupcommit, quotas
from registry.placement import choose_vms
from mapping.replica import Replica
from mapping.state import ClusterState
from mapping.store import Require, Store, TxnResult

log = logging.getLogger(__name__)

CATCH_UP_S = 2.0  # how long we wait for our replica to show a revision etcd already has
# a producer VM that vanished this recently is most likely coming back: its host's liveness lease
# lapsed (e.g. while etcd was down) and the host is re-registering
RETURNING_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class LeasedVm:
    """A producer VM in a lease, as the registry describes it."""

    vm: ProducerVm
    host_address: str
    fencing_token: int


@dataclass(frozen=True, slots=True)
class LeaseView:
    pool: Pool
    members: list[LeasedVm]


def shortfall(service: str, need: int, free: int, returning: int, purpose: str) -> LeasenetError:
    """Why `need` producer VMs of `service` cannot be claimed now (pure). `returning`: VMs of the
    service on their way back, which vanished moments ago or are back but still carry their previous
    incarnation's claim: while they would cover the need, producer hosts are re-registering (a wait,
    UNAVAILABLE) and the fleet is not exhausted (RESOURCE_EXHAUSTED)."""
    if returning and free + returning >= need:
        return ProducerUnavailable(f"producer hosts are re-registering; try again: service {service!r} has {free} "
                                   f"free producer VM(s) now and {returning} coming back, and {need} are needed "
                                   f"to {purpose}")
    return PoolExhausted(f"service {service!r} has {free} free producer VM(s) but {need} are needed to {purpose} "
                         f"(short by {need - free})", reason="no_free_vms")


def describe(state: ClusterState, pool: Pool) -> LeaseView:
    members = []
    for vm_id in sorted(state.claims_by_lease.get(pool.lease_id, ())):
        claim, vm = state.claims[vm_id], state.vms.get(vm_id)
        address = state.host_address(vm_id)
        if vm is not None and address is not None:
            members.append(LeasedVm(vm, address, claim.revision))
    return LeaseView(pool, members)


class LeasingAgent:
    def __init__(self, store: Store, replica: Replica, *, rng: random.Random | None = None,
                 max_attempts: int = 8, clock: Callable[[], float] = time.monotonic,
                 max_txns_in_flight: int = groupcommit.MAX_IN_FLIGHT) -> None:
        self.store = store
        self.replica = replica
        # grants (and releases) in flight reach etcd together when its transactions lag behind them
        self.commits = groupcommit.GroupCommit(store, max_in_flight=max_txns_in_flight)
        self.rng = rng or random.Random()
        self.max_attempts = max_attempts
        self.clock = clock
        self._vanished: dict[VmId, tuple[str, float]] = {}  # producer VM -> (its service, when it vanished)
        self._drained: set[HostId] = set()
        # VMs our own grants and grows in flight have chosen: the next choice leaves them out, so that
        # an owner serving all of a service's grants does not race itself (registry/ownership.py);
        # likewise the quota slots they chose, by scope and subject (quotas.choose_slots)
        self._in_flight: set[VmId] = set()
        self._slots_in_flight: dict[tuple[QuotaScope, str], set[int]] = {}
        self.conflicts = 0  # transactions lost to a concurrent claim (measured with and without ownership)
        replica.subscribe(self._on_change)

    def _on_change(self, key: str, old: Record | None, new: Record | None, revision: int) -> None:
        if not isinstance(new, (ProducerVm, Host)) and not isinstance(old, ProducerVm):
            return  # claims, pools, members, quota slots: every grant's events, nothing to note here
        if isinstance(new, ProducerVm):
            self._vanished.pop(new.vm_id, None)
            if old is None and (first := self.state.older_record(new)) is not None:
                log.warning("host %s registered VM %s too: host %s registered that address first (revision %d, "
                            "its %d); no grant will claim host %s's", new.host_id, new.vm_id, first.host_id,
                            first.revision, new.revision, new.host_id)
        elif isinstance(old, ProducerVm) and old.host_id not in self._drained and old.vm_id not in self.state.vms:
            self._vanished[old.vm_id] = (old.service, self.clock())
        elif isinstance(new, Host) and new.draining:  # it will deregister, and not come back
            self._drained.add(new.host_id)
        elif isinstance(new, Host):
            self._drained.discard(new.host_id)

    @property
    def state(self) -> ClusterState:
        return self.replica.state

    def _service(self, name: str) -> Service:
        service = self.state.services.get(name)
        if service is None:
            raise NotFound(f"service {name!r} is not registered")
        return service

    async def request_lease(self, consumer: ConsumerRef, service_name: str,
                            avoid_hosts: frozenset[str] = frozenset()) -> LeaseView:
        service = self._service(service_name)
        if consumer.network != service.network:
            raise PermissionDenied(f"consumer VM {consumer.vm_id} is in network {consumer.network!r}; "
                                   f"service {service.name!r} is in network {service.network!r}")
        pool_key = keys.pool_key(consumer.host_id, service.name, consumer.vm_id)
        if (existing := await self._live_pool(pool_key)) is not None:
            return self._existing(existing, consumer)
        network = self.state.networks.get(service.network)
        if network is None:
            raise NotFound(f"network {service.network!r} of service {service.name!r} is not registered")
        try:
            network.check_address(consumer.address, "consumer VM address")
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        wanted = quotas.limits(network, service, consumer)
        need = service.policy.min_pool
        pool_id = new_pool_id(self.rng)
        slots = self._choose_slots(wanted, pool_id)  # refuse before any write
        for attempt in range(self.max_attempts):
            host = await self._consumer_host(consumer.host_id)
            if host.ttl_s > service.policy.lease_ttl_s:  # its pools would outlive it longer than the service allows
                raise PreconditionFailed(f"consumer host {host.host_id!r} holds its pools on a liveness lease of "
                                         f"{host.ttl_s} s; service {service.name!r} lets a pool outlive its consumer "
                                         f"host by at most lease_ttl_s = {service.policy.lease_ttl_s} s: start the "
                                         f"consumer host with --liveness-ttl {service.policy.lease_ttl_s} or less")
            chosen = self.choose(service, need, f"lease a pool for consumer VM {consumer.vm_id}", avoid_hosts)
            pool = Pool(service.name, consumer.vm_id, consumer.host_id, pool_id, host.ttl_s)
            if attempt:  # the state moved on since the last choice
                slots = self._choose_slots(wanted, pool_id)
            claims, members = self._claims(chosen, pool)
            items = [(pool_key, keys.encode(pool)), *claims, *((keys.key_of(slot), keys.encode(slot)) for slot in slots)]
            result = await self._transact(chosen, items, host, self._guards(chosen), members, slots)
            if result.succeeded:  # said once, by the grant's audit line (registry/audit.py)
                return self._view(pool_id)
            metrics.GRANT_CONFLICTS.inc()
            if (existing := self.state.pools.get(pool_key)) is not None:  # another agent was faster
                return self._existing(existing, consumer)
        raise PoolExhausted(f"service {service.name!r}: every attempt to claim {need} producer VM(s) "
                            f"lost a race to other consumers ({self.max_attempts} attempts)", reason="lost_races")

    async def grow_lease(self, lease_id: LeaseId, count: int = 1, min_revision: int = 0,
                         avoid_hosts: frozenset[str] = frozenset(), *, caller: Caller = ANYONE) -> LeaseView:
        if count < 1:
            raise InvalidRequest(f"grow count must be at least 1, got {count}")
        await self.replica.wait_for_revision(min_revision, CATCH_UP_S)
        for _ in range(self.max_attempts):
            pool = self._pool(lease_id, caller, "grow")
            service = self._service(pool.service)
            held = len(self.state.claims_by_lease.get(lease_id, ()))
            if held + count > service.policy.max_pool:
                raise PoolExhausted(f"lease {lease_hex(lease_id)} holds {held} producer VM(s) of service "
                                    f"{service.name!r}; max_pool is {service.policy.max_pool}", reason="max_pool")
            host = await self._consumer_host(pool.consumer_host)
            chosen = self.choose(service, count, f"grow lease {lease_hex(lease_id)}", avoid_hosts)
            guards = [Require(keys.key_of(pool), pool.revision), *self._guards(chosen)]
            claims, members = self._claims(chosen, pool)
            result = await self._transact(chosen, claims, host, guards, members)
            if result.succeeded:
                return self._view(lease_id)
            metrics.GRANT_CONFLICTS.inc()
        raise PoolExhausted(f"service {pool.service!r}: every attempt to grow lease {lease_hex(lease_id)} "
                            f"lost a race to other consumers ({self.max_attempts} attempts)", reason="lost_races")

    async def shrink_lease(self, lease_id: LeaseId, vms: list[VmId], *, caller: Caller = ANYONE) -> LeaseView:
        """Delete the lease's claims on `vms` and their mirrors (each guarded by the claim's revision)."""
        self._pool(lease_id, caller, "shrink")
        revision = 0
        for vm in vms:
            claim = self.state.claims.get(vm)
            if claim is None or claim.lease_id != lease_id:
                continue  # not (or no longer) in this lease: nothing to give back
            revision = max(revision, (await delete_claim(self.store, claim)).revision)
        await self.replica.wait_for_revision(revision, CATCH_UP_S)
        return self._view(lease_id)

    async def renew_lease(self, lease_id: LeaseId, *, caller: Caller = ANYONE) -> int:
        """A pool lives as long as its consumer host's lease, which that host renews itself: renewing
        one pool only says whether it is still there, and its TTL. No etcd request."""
        pool = await self._pool_lease(lease_id, caller, "renew")
        return pool.ttl_s

    async def release_lease(self, lease_id: LeaseId, *, caller: Caller = ANYONE) -> None:
        """One transaction deleting the pool, its claims, their mirrors and its quota slots, guarded by
        the pool's revision. A claim a grow added that our replica does not show yet is left behind
        without its pool: the claim collector deletes it."""
        pool = await self._pool_lease(lease_id, caller, "release")
        state = self.state
        claims = [state.claims[vm] for vm in state.claims_by_lease.get(lease_id, ())]
        # the pool last: etcd reports a transaction's events in the order of its operations, and a pool
        # gone before its claims would have every replica's claim collector look at each of them
        doomed = [*(keys.key_of(c) for c in claims), *(keys.member_key(c) for c in claims),
                  *state.slots_by_lease.get(lease_id, ()), keys.key_of(pool)]
        result = await self.commits.delete_all(doomed, require=[Require(keys.key_of(pool), pool.revision)])
        await self.replica.wait_for_revision(result.revision, CATCH_UP_S)

    # --- helpers -------------------------------------------------------------------------------
    async def _live_pool(self, pool_key: str) -> Pool | None:
        """The pool at `pool_key` if etcd still has it: a pool released a moment ago may linger in our
        replica, so one read confirms a repeated request (rare: a consumer host asks once per pool)."""
        pool = self.state.pools.get(pool_key)
        if pool is None:
            return None
        held = await self.store.get(pool_key)
        return pool if held is not None and held.create_revision == pool.revision else None

    async def _catch_up(self) -> None:
        """Wait (bounded) until our replica holds what etcd holds now: one read, on rare paths only."""
        now = await self.store.range_page(keys.POOLS, limit=1)  # any key: only the revision matters
        await self.replica.wait_for_revision(now.revision, CATCH_UP_S)

    async def _consumer_host(self, host_id: HostId) -> Host:
        """The consumer host's record, whose liveness lease the pool's keys hang on. One our replica
        has not seen may have registered a moment ago: catch up once before refusing."""
        host = self.state.hosts.get(host_id)
        if host is None or host.kind is not HostKind.CONSUMER or not host.lease:
            await self._catch_up()
            host = self.state.hosts.get(host_id)
        if host is None or host.kind is not HostKind.CONSUMER or not host.lease:
            raise ProducerUnavailable(f"consumer host {host_id!r} is not registered (its liveness lease lapsed, or it "
                                      "has not registered yet): its pools hang on that lease; try again once it has "
                                      "registered")
        return host

    def _existing(self, pool: Pool, consumer: ConsumerRef) -> LeaseView:
        if pool.consumer_host != consumer.host_id:
            raise ClaimConflict(f"consumer VM {consumer.vm_id} already holds lease {lease_hex(pool.lease_id)} "
                                f"for service {pool.service!r} through consumer host {pool.consumer_host!r}")
        return describe(self.state, pool)

    def _pool(self, lease_id: LeaseId, caller: Caller = ANYONE, action: str = "use") -> Pool:
        pool = self.state.pools_by_lease.get(lease_id)
        if pool is None:
            raise LeaseExpired(f"lease {lease_hex(lease_id)} has expired or was released")
        return self._authorised(pool, caller, action)

    async def _pool_lease(self, lease_id: LeaseId, caller: Caller, action: str) -> Pool:
        """Renew and release touch an etcd lease directly: only a pool's, never a host's liveness lease.
        A pool our replica has not seen may have been granted a moment ago by another registry (the
        service's owner): first catch up with etcd's current revision (one read, on this rare path
        only), then refuse as NOT_FOUND, which the consumer host retries at its next renewal."""
        pool = self.state.pools_by_lease.get(lease_id)
        if pool is None:
            await self._catch_up()
            pool = self.state.pools_by_lease.get(lease_id)
        if pool is None:
            raise NotFound(f"lease {lease_hex(lease_id)} is not the lease of any pool (it ended, or it is not a pool's: "
                           f"the leasing API cannot {action} a host's liveness lease)")
        return self._authorised(pool, caller, action)

    @staticmethod
    def _authorised(pool: Pool, caller: Caller, action: str) -> Pool:
        if (denied := may_act_on_pool(caller, pool, action)) is not None:
            raise denied.exception()
        return pool

    def _view(self, lease_id: LeaseId) -> LeaseView:
        return describe(self.state, self._pool(lease_id))

    def choose(self, service: Service, count: int, purpose: str, avoid_hosts: frozenset[str]) -> list[ProducerVm]:
        """`avoid_hosts`: producer hosts the consumer host just lost its tunnel to; their records
        stay in etcd until their liveness lease lapses, but they are not worth leasing from. VMs our own
        grants in flight chose are left out while enough others are free (a grant in flight may yet
        fail, so when short we race it). Reads only the state's indexes: the same cost with 100 or
        10,000 VMs."""
        state = self.state
        free = state.free_by_service.get(service.name, {})
        avoid = {h for h in free if (host := state.hosts.get(h)) is not None and host.address in avoid_hosts} \
            if avoid_hosts else set()
        available = sum(len(bag) for h, bag in free.items() if h not in avoid)
        if available < count:
            raise shortfall(service.name, count, available, self._returning(service.name, avoid_hosts), purpose)
        busy = {vm for vm in self._in_flight
                if (record := state.vms.get(vm)) is not None and record.host_id not in avoid
                and vm in free.get(record.host_id, ())}
        loads = {h: state.host_load(h) for h in free}
        return [state.vms[v] for v in choose_vms(free, loads, count, self.rng, avoid,
                                                 busy if available - len(busy) >= count else ())]

    def _returning(self, service: str, avoid_hosts: frozenset[str]) -> int:
        """VMs of `service` on their way back: vanished within RETURNING_WINDOW_S and not yet seen
        again, or re-registered while the claim collector has yet to delete their stale claim."""
        since = self.clock() - RETURNING_WINDOW_S
        for vm_id in [v for v, (_, when) in self._vanished.items() if when < since]:
            del self._vanished[vm_id]
        state = self.state
        reclaimable = [vm for vm in (state.vms.get(v) for v in state.stale_claims)
                       if vm is not None and vm.service == service and state.is_usable(vm)
                       and state.host_address(vm.vm_id) not in avoid_hosts]
        return sum(s == service for s, _ in self._vanished.values()) + len(reclaimable)

    def _choose_slots(self, wanted: list[quotas.Limit], pool_id: LeaseId) -> list[QuotaSlot]:
        return quotas.choose_slots(self.state, wanted, pool_id, self.rng, self._slots_in_flight)

    async def _transact(self, chosen: list[ProducerVm], items: list[tuple[str, bytes]], host: Host,
                        guards: list[Require], mirrors: list[tuple[str, bytes]],
                        slots: Sequence[QuotaSlot] = ()) -> TxnResult:
        """Claim `chosen` (and take `slots`) in one transaction on the consumer host's lease (guarded
        by its record: the incarnation whose lease that is), then wait until our replica shows it (or
        the winner). Meanwhile other grants choose around them."""
        taken = {vm.vm_id for vm in chosen} - self._in_flight
        self._in_flight |= taken
        marked = [slot for slot in slots if self._mark(slot)]
        try:
            result = await self.commits.create_all(items, lease=host.lease, puts=mirrors,
                                                   require=[*guards, Require(keys.key_of(host), host.revision)])
            await self.replica.wait_for_revision(result.revision, CATCH_UP_S)
        finally:
            self._in_flight -= taken
            for slot in marked:
                self._unmark(slot)
        if not result.succeeded:
            self.conflicts += 1
            log.info("grant conflict on %s (consumer host %s): another claim won, or the host registered again; "
                     "choosing again", sorted(vm.vm_id for vm in chosen), host.host_id)
        return result

    def _mark(self, slot: QuotaSlot) -> bool:
        """Note a slot our grant in flight takes; False when another of ours took it already."""
        busy = self._slots_in_flight.setdefault((slot.scope, slot.subject), set())
        if slot.index in busy:
            return False
        busy.add(slot.index)
        return True

    def _unmark(self, slot: QuotaSlot) -> None:
        busy = self._slots_in_flight[subject := (slot.scope, slot.subject)]
        busy.discard(slot.index)
        if not busy:
            del self._slots_in_flight[subject]

    @staticmethod
    def _claims(chosen: list[ProducerVm], pool: Pool) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """The claims on `chosen`, and their mirrors under the pool: the same body (encoded once), so
        the consumer host reads a Claim."""
        claims, members = [], []
        for vm in chosen:
            claim = Claim(vm.vm_id, pool.lease_id, pool.service, pool.consumer_vm, pool.consumer_host, vm.revision,
                          host_id=vm.host_id)
            body = keys.encode(claim)
            claims.append((keys.key_of(claim), body))
            members.append((keys.member_key(claim), body))
        return claims, members

    @staticmethod
    def _guards(chosen: list[ProducerVm]) -> list[Require]:
        return [Require(keys.key_of(vm), vm.revision) for vm in chosen]


async def delete_claim(store: Store, claim: Claim) -> TxnResult:
    """Delete a claim and its mirror under its pool, only the claim we saw (its revision)."""
    return await store.delete_all([keys.key_of(claim), keys.member_key(claim)],
                                  require=[Require(keys.key_of(claim), claim.revision)])


class ClaimCollector:
    """Deletes claims on VMs that vanished or were re-registered (their producer host died or
    restarted): the pool shrinks, its consumer host sees it and refills; and claims whose pool is gone
    (a grow that crossed a release). Each goes with its mirror. Several registry replicas may run
    this at once: every delete is guarded by the claim's own revision."""

    def __init__(self, store: Store, replica: Replica) -> None:
        self.store = store
        self.replica = replica
        self._pending: asyncio.Queue[Claim] = asyncio.Queue()
        replica.subscribe(self._on_change)

    def _on_change(self, key: str, old: object, new: object, revision: int) -> None:
        state = self.replica.state
        if isinstance(old, ProducerVm) or isinstance(new, ProducerVm):
            vm_id = (new or old).vm_id  # type: ignore[union-attr]
            claim = state.claims.get(vm_id)
            if claim is not None and not state.claim_is_current(claim):
                self._pending.put_nowait(claim)
        elif isinstance(new, Claim) and not keys.is_member_key(key) and not self._wanted(new):
            self._pending.put_nowait(new)
        elif isinstance(old, Pool) and new is None:
            for vm in state.claims_by_lease.get(old.lease_id, ()):
                self._pending.put_nowait(state.claims[vm])

    def _wanted(self, claim: Claim) -> bool:
        """Its VM is the incarnation it claimed, and its pool is there."""
        state = self.replica.state
        return state.claim_is_current(claim) and claim.lease_id in state.pools_by_lease

    async def run(self) -> None:
        await self.replica.synced.wait()
        state = self.replica.state
        for claim in list(state.claims.values()):
            if not self._wanted(claim):
                self._pending.put_nowait(claim)
        while True:
            claim = await self._pending.get()
            if self.replica.state.claims.get(claim.vm) != claim:
                continue  # already gone (another registry replica, or the lease ended)
            if self._wanted(claim):
                # its VM and pool are there after all: a snapshot load applies claims/ keys before
                # pools/ and vms/ ones, so every claim looked orphaned for a moment when a registry started
                continue
            try:
                if (await delete_claim(self.store, claim)).succeeded:
                    why = "vanished VM" if not self.replica.state.claim_is_current(claim) else "ended pool's VM"
                    log.info("removed claim on %s %s (pool %s)", why, claim.vm, lease_hex(claim.lease_id))
            except Exception as exc:
                log.warning("could not remove stale claim on %s: %s (will retry)", claim.vm, exc)
                await asyncio.sleep(0.5)
                self._pending.put_nowait(claim)
