"""The pool book: every decision about the lease pools this consumer host holds (SPEC §3 steps
2-6, §4, §6), as pure code. Events go in (a lease granted or refused, a grow answered, a request
done, a tick of the clock, a replica change, a broken tunnel); effects come out (request, grow,
shrink or release a lease; wake the requests waiting on a pool). No I/O, no asyncio, no
protobuf: `consumer_host.pools.PoolManager` feeds the events in and carries the effects out
(h11's shape: decide synchronously, then do the I/O).

Words, each with one meaning: a *held pool* is a lease as this host holds it (`HeldPool`; its etcd
record is `mapping.model.Pool`); a *pool VM* is one claimed producer VM in it (`PoolVm`); a request
*takes* a pool VM and *puts it back* when its answer returns; the host *shrinks* a lease to give
VMs back to the registry and *releases* a lease to give all of it back."""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer_host.datapath import Admitted, Grow, HeldPool, PoolVm, Use, pool_vm
from mapping.model import Claim, Host, HostKind, LeaseId, Pool as PoolRecord, Record, VmId
from mapping.state import ClusterState
from wire.errors import PoolExhausted, StoreUnavailable, Unavailable
from wire.verdict import Refusal

PoolKey = tuple[VmId, str]  # (consumer VM, service)

GROW_BACKOFF_S = 0.2  # after the registry said no capacity, don't ask again at once
# how long a producer host we lost the tunnel to is avoided: longer than a liveness TTL, after
# which the registry knows by itself (or the host came back and re-registered)
AVOID_HOST_S = 5.0
# after the leasing agents answered UNAVAILABLE (etcd unreachable, or no agent reachable), requests
# needing a new lease fail at once for this long instead of each waiting for its deadline (SPEC §6)
LEASING_PAUSE_S = 1.0
# a pool of ours in etcd that the book does not hold this long is released (a lost answer, a failed release)
STRAY_GRACE_S = 10.0


# --- effects: what the driver must do -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RequestLease:
    key: PoolKey
    admitted: Admitted
    avoid_hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GrowLease:
    key: PoolKey
    lease_id: LeaseId
    min_revision: int
    avoid_hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShrinkLease:
    """Give these VMs back to the registry (the lease goes on without them)."""

    key: PoolKey
    lease_id: LeaseId
    vms: tuple[VmId, ...]


@dataclass(frozen=True, slots=True)
class ReleaseLease:
    lease_id: LeaseId
    consumer: VmId


@dataclass(frozen=True, slots=True)
class Wake:
    """Wake the requests waiting on this pool; with a refusal, they fail with it."""

    key: PoolKey
    refusal: Refusal | None = None


Effect = RequestLease | GrowLease | ShrinkLease | ReleaseLease | Wake


# --- events: what happened ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Granted:
    key: PoolKey
    admitted: Admitted
    lease_id: LeaseId
    revision: int
    members: tuple[PoolVm, ...]
    now: float


@dataclass(frozen=True, slots=True)
class LeaseRefused:
    key: PoolKey
    refusal: Refusal
    now: float


@dataclass(frozen=True, slots=True)
class Grown:
    key: PoolKey
    lease_id: LeaseId
    members: tuple[PoolVm, ...]


@dataclass(frozen=True, slots=True)
class GrowRefused:
    key: PoolKey
    lease_id: LeaseId
    expired: bool  # the lease is gone: forget the pool
    now: float


@dataclass(frozen=True, slots=True)
class Shrunk:
    """A shrink is over (given back, or the registry's claim collector will do it)."""

    key: PoolKey
    lease_id: LeaseId
    waiting: bool  # requests wait on the pool: refill it even above min_pool
    now: float


@dataclass(frozen=True, slots=True)
class RequestDone:
    key: PoolKey
    lease_id: LeaseId
    member: PoolVm
    refused: bool  # the producer host refused the frame: skip this VM until the replica moves
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class HostBroken:
    address: str
    now: float


@dataclass(frozen=True, slots=True)
class ReplicaChanged:
    old: Record | None
    new: Record | None
    state: ClusterState
    now: float


Event = (Granted | LeaseRefused | Grown | GrowRefused | Shrunk | RequestDone | Tick | HostBroken
         | ReplicaChanged)


# --- what a request gets from take() -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Taken:
    pool: HeldPool
    member: PoolVm


@dataclass(frozen=True, slots=True)
class Waiting:
    """Wait for a Wake of this pool (or the deadline), then take again."""


Outcome = Taken | Waiting | Refusal


@dataclass(frozen=True, slots=True)
class LeasingDown:
    until: float
    reason: str


@dataclass
class PoolBook:
    pools: dict[PoolKey, HeldPool] = field(default_factory=dict)
    leases_granted: int = 0
    by_lease: dict[LeaseId, PoolKey] = field(default_factory=dict)
    leasing: set[PoolKey] = field(default_factory=set)  # one lease request per pool in flight
    leasing_down: LeasingDown | None = None
    strays_seen: dict[LeaseId, float] = field(default_factory=dict)  # pool id -> when first seen unheld
    grow_blocked_until: dict[PoolKey, float] = field(default_factory=dict)
    # claims we gave up on (VM -> fencing token): a late answer must not revive them, but the same
    # VM claimed again later (a new token, e.g. after its host came back) is a member like any other
    forgotten: dict[LeaseId, dict[VmId, int]] = field(default_factory=dict)
    avoided_hosts: dict[str, float] = field(default_factory=dict)  # producer host address -> until

    # --- the request path (steps 2, 4, 5, 6) ------------------------------------------------------
    def take(self, key: PoolKey, admitted: Admitted, now: float) -> tuple[Outcome, list[Effect]]:
        """A pool VM for this request, or wait (leasing or growing the pool meanwhile), or a refusal."""
        pool = self.pools.get(key)
        if pool is None:
            if key in self.leasing:
                return Waiting(), []
            down = self.leasing_down
            if down is not None and now < down.until:
                return Refusal(StoreUnavailable,
                               f"{down.reason}; requests needing a new lease fail at once until a leasing agent "
                               f"answers again (asked again within {LEASING_PAUSE_S:g} s)"), []
            self.leasing.add(key)
            return Waiting(), [RequestLease(key, admitted, self.avoid_hosts(now))]
        decision = pool.decide()
        if isinstance(decision, Use):
            pool.take(decision.member, now)
            return Taken(pool, decision.member), []
        if isinstance(decision, Grow) and now >= self.grow_blocked_until.get(key, 0.0):
            return Waiting(), [self._grow(key, pool, now)]
        return Waiting(), []

    def past_deadline(self, key: PoolKey, admitted: Admitted) -> Refusal:
        """Why a request that waited until its deadline got nothing."""
        pool = self.pools.get(key)
        if pool is None:  # a hung agent or etcd: answer within the deadline; the lease request goes on
            return Refusal(StoreUnavailable,
                           f"no leasing agent granted consumer VM {key[0]} a lease of service {key[1]!r} within the "
                           f"request's deadline")
        return Refusal(PoolExhausted,
                       f"no producer VM of service {pool.service.name!r} freed up in time: the pool of consumer VM "
                       f"{pool.consumer} has {len(pool.members)} VM(s), all busy (max_pool "
                       f"{pool.service.policy.max_pool})")

    def avoid_hosts(self, now: float) -> tuple[str, ...]:
        for address in [a for a, until in self.avoided_hosts.items() if until <= now]:
            del self.avoided_hosts[address]
        return tuple(sorted(self.avoided_hosts))

    # --- events ------------------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Effect]:
        match event:  # cases are tried in order: the one every request ends with comes first
            case RequestDone(key=key, lease_id=lease_id, member=member, refused=refused, now=now):
                pool = self._pool(key, lease_id)
                if pool is None:
                    return []
                pool.put_back(member, now)
                if refused:
                    pool.avoid.add(member.vm)
                return [Wake(key)]
            case Granted():
                return self._granted(event)
            case LeaseRefused(key=key, refusal=refusal, now=now):
                self.leasing.discard(key)
                if issubclass(refusal.error, Unavailable):
                    self.leasing_down = LeasingDown(now + LEASING_PAUSE_S, refusal.message)
                return [Wake(key, refusal)]
            case Grown():
                return self._grown(event)
            case GrowRefused(key=key, lease_id=lease_id, expired=expired, now=now):
                pool = self._pool(key, lease_id)
                if pool is None:
                    return []
                pool.growing = False
                if expired:
                    return self._drop(key)
                self.grow_blocked_until[key] = now + GROW_BACKOFF_S
                return [Wake(key)]
            case Shrunk(key=key, lease_id=lease_id, waiting=waiting, now=now):
                pool = self._pool(key, lease_id)
                if pool is None or pool.growing or not (pool.needs_refill() or waiting):
                    return []
                return [self._grow(key, pool, now)]
            case Tick(now=now):
                return self._tick(now)
            case HostBroken(address=address, now=now):
                self.avoided_hosts[address] = now + AVOID_HOST_S
                return self._leave_host(address, now, shrink=True)
            case ReplicaChanged():
                return self._replica_changed(event)
        raise TypeError(f"the pool book has no rule for {event!r}")

    def strays(self, in_etcd: dict[LeaseId, VmId], now: float) -> list[Effect]:
        """Pools of this host that etcd holds and the book does not (a grant whose answer was lost, a
        release that failed): they hang on this host's lease and would live as long as it does, so
        each one still there STRAY_GRACE_S after it was first seen (a grant's answer arrives well
        within that) is released. Its VMs are free again; a request for it leases anew."""
        for pool_id in list(self.strays_seen):
            if pool_id not in in_etcd or pool_id in self.by_lease:
                del self.strays_seen[pool_id]
        effects: list[Effect] = []
        for pool_id, consumer in in_etcd.items():
            if pool_id in self.by_lease:
                continue
            first = self.strays_seen.setdefault(pool_id, now)
            if now - first >= STRAY_GRACE_S:
                del self.strays_seen[pool_id]
                effects.append(ReleaseLease(pool_id, consumer))
        return effects

    def drop_all(self, consumer: VmId | None = None) -> list[Effect]:
        """Forget every pool (of one consumer VM) and release its lease: detach and shutdown."""
        effects: list[Effect] = []
        for key in [k for k in self.pools if consumer is None or k[0] == consumer]:
            effects += [ReleaseLease(self.pools[key].lease_id, key[0]), *self._drop(key)]
        return effects

    # --- rules -------------------------------------------------------------------------------------
    def _granted(self, event: Granted) -> list[Effect]:
        key, now = event.key, event.now
        self.leasing.discard(key)
        self.leasing_down = None
        service = event.admitted.service
        pool = HeldPool(service, key[0], event.lease_id, event.revision,
                        members={m.vm: m for m in event.members}, last_used=now)
        self.pools[key] = pool
        self.by_lease[pool.lease_id] = key
        self.leases_granted += 1
        return [Wake(key)]

    def _grown(self, event: Grown) -> list[Effect]:
        pool = self._pool(event.key, event.lease_id)
        if pool is None:  # the lease ended meanwhile: its answer is stale
            return []
        pool.growing = False
        self.leasing_down = None
        forgotten = self.forgotten.get(pool.lease_id, {})
        pool.members.update({m.vm: m for m in event.members if m.fencing_token > forgotten.get(m.vm, 0)})
        pool.revision = max(pool.revision, max((m.fencing_token for m in event.members), default=0))
        return [Wake(event.key)]

    def _grow(self, key: PoolKey, pool: HeldPool, now: float) -> GrowLease:
        pool.growing = True
        return GrowLease(key, pool.lease_id, pool.revision, self.avoid_hosts(now))

    def _tick(self, now: float) -> list[Effect]:
        """Idle pools are released (SPEC §4). Nothing is renewed per pool: every pool hangs on this
        host's liveness lease, which its keep-alive renews (one etcd request per TTL/3 for them all)."""
        effects: list[Effect] = []
        for key, pool in list(self.pools.items()):
            if pool.is_idle(now):
                effects += [ReleaseLease(pool.lease_id, pool.consumer), *self._drop(key)]
        return effects

    def _replica_changed(self, event: ReplicaChanged) -> list[Effect]:
        old, new, now = event.old, event.new, event.now
        if isinstance(old, Claim) and old.lease_id in self.by_lease and (new is None or new.lease_id != old.lease_id):
            return self._forget(self.by_lease[old.lease_id], [old.vm], now, tokens={old.vm: old.revision})
        if isinstance(old, PoolRecord) and new is None and old.lease_id in self.by_lease:
            return self._drop(self.by_lease[old.lease_id])  # released or expired
        if isinstance(new, Claim) and new.lease_id in self.by_lease:
            return self._adopt(self.by_lease[new.lease_id], new, event.state)
        if isinstance(new, Host) and (old is None or old.revision != new.revision):
            self.avoided_hosts.pop(new.address, None)  # the host (re)registered: worth trying again
        # A producer host that drains takes no new request, and one whose record is gone has lost its
        # VMs: their members leave our pools now (this host sees host records, not VM records; the
        # registry's claim collector would tell us a moment later), so waiting requests go elsewhere.
        if isinstance(new, Host) and new.kind is HostKind.PRODUCER and new.draining and not getattr(old, "draining", False):
            # idle members are given back (room to grow elsewhere at once); a busy one keeps its claim until
            # its call is answered (the host waits for it; ending the claim would cut it: a command VM is
            # reset when its claim ends)
            return self._leave_host(new.address, now, shrink=True, spare_busy=True)
        if isinstance(old, Host) and new is None and old.kind is HostKind.PRODUCER:
            return self._leave_host(old.address, now, shrink=False)
        return []

    def _leave_host(self, address: str, now: float, *, shrink: bool, spare_busy: bool = False) -> list[Effect]:
        """Every member on the producer host at `address` leaves its pool; with `shrink` it is given back
        to the registry, except (`spare_busy`) one with a request in flight, which is only forgotten."""
        effects: list[Effect] = []
        for key, pool in list(self.pools.items()):
            gone = [vm for vm, m in pool.members.items() if m.host_address == address]
            kept = [vm for vm in gone if spare_busy and vm in pool.busy]
            given = [vm for vm in gone if vm not in kept]
            if kept:
                effects += self._forget(key, kept, now)
            if given:
                effects += self._forget(key, given, now, shrink=shrink)
        return effects

    def _adopt(self, key: PoolKey, claim: Claim, state: ClusterState) -> list[Effect]:
        """A claim of one of our leases that no agent told us of (a grow whose answer was lost when
        its agent failed): the replica shows it, so the pool uses it instead of leaking it."""
        pool = self.pools.get(key)
        member = pool_vm(state, claim)
        if (pool is None or member is None or claim.vm in pool.members
                or claim.revision <= self.forgotten.get(pool.lease_id, {}).get(claim.vm, 0)):
            return []
        pool.members[claim.vm] = member
        pool.revision = max(pool.revision, claim.revision)
        return [Wake(key)]

    def _forget(self, key: PoolKey, vms: list[VmId], now: float, *, shrink: bool = False,
                tokens: dict[VmId, int] | None = None) -> list[Effect]:
        """These VMs leave the pool. With `shrink`, they are given back to the registry first (their
        host broke; the registry would otherwise wait for its liveness lease); then the pool refills."""
        pool = self.pools.get(key)
        if pool is None:
            return []
        forgotten = self.forgotten.setdefault(pool.lease_id, {})
        for vm in vms:
            member = pool.members.pop(vm, None)
            pool.busy.discard(vm)
            token = member.fencing_token if member is not None else (tokens or {}).get(vm, 0)
            forgotten[vm] = max(forgotten.get(vm, 0), token)
        pool.avoid.clear()
        effects: list[Effect] = []
        if shrink:
            effects.append(ShrinkLease(key, pool.lease_id, tuple(vms)))
        elif pool.needs_refill() and not pool.growing:
            self.grow_blocked_until.pop(key, None)
            effects.append(self._grow(key, pool, now))
        return [*effects, Wake(key)]

    def _drop(self, key: PoolKey) -> list[Effect]:
        pool = self.pools.pop(key, None)
        if pool is None:
            return []
        self.by_lease.pop(pool.lease_id, None)
        self.forgotten.pop(pool.lease_id, None)
        self.grow_blocked_until.pop(key, None)
        return [Wake(key)]

    def _pool(self, key: PoolKey, lease_id: LeaseId) -> HeldPool | None:
        """The pool an answer is about, if it is still the one held under that lease."""
        pool = self.pools.get(key)
        return pool if pool is not None and pool.lease_id == lease_id else None
