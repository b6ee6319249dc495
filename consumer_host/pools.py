"""Lease pools held by this consumer host (SPEC §3 steps 2-6, §4): the driver of the pool book.

Every decision is `poolbook.PoolBook`'s; this module feeds it events (requests, registry answers,
replica changes, broken tunnels, the clock) and carries out its effects. Each registry call is a
task owned by `run()`'s task group: none outlives the manager, and a failing one is logged and
fed back to the book as an event, never left unretrieved."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from consumer_host.datapath import Admitted, HeldPool, PoolVm
from consumer_host.poolbook import (
    GROW_BACKOFF_S,
    Effect,
    Event,
    Granted,
    GrowLease,
    GrowRefused,
    Grown,
    HostBroken,
    LeaseRefused,
    PoolBook,
    PoolKey,
    ReleaseLease,
    ReplicaChanged,
    RequestDone,
    RequestLease,
    ShrinkLease,
    Shrunk,
    Taken,
    Tick,
    Wake,
)
from consumer_host.registry_client import RegistryClient
from consumer_host.sentences import lease_refused
from mapping.model import LeaseId, Record, VmId, lease_hex, parse_lease_hex
from mapping.replica import Replica
from wire.errors import LeaseExpired, LeasenetError, Overloaded, Status
from wire.v1 import registry_pb2 as pb
from wire.verdict import Refusal

log = logging.getLogger(__name__)


def _members(lease: pb.Lease) -> tuple[PoolVm, ...]:
    return tuple(PoolVm(VmId(m.vm_id), m.address, m.host_address, m.fencing_token) for m in lease.members)


def _error(refusal: Refusal, exhausted_because: str = "lease_refused") -> LeasenetError:
    """The refusal as an exception; a RESOURCE_EXHAUSTED one carries its reason for the metrics (the
    pool stayed busy to the deadline, or the leasing agent refused the lease or its growth), counted
    where it becomes the consumer VM's answer (consumer_host/service.py)."""
    error = refusal.exception()
    if error.code is Status.RESOURCE_EXHAUSTED:
        error.reason = exhausted_because
    return error


class _Signal:
    """Wakes the requests waiting on one pool at once; with a refusal they fail with it."""

    __slots__ = ("event", "refusal")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.refusal: Refusal | None = None


class PoolManager:
    def __init__(self, host_id: str, registry: RegistryClient, replica: Replica,
                 clock: Callable[[], float] = time.monotonic, *, max_waiters: int = 512) -> None:
        self.host_id = host_id
        self.max_waiters = max_waiters  # requests waiting on one pool (SPEC §3 step 5: a bounded queue)
        self._waiting: dict[PoolKey, int] = {}
        self.registry = registry
        self.replica = replica
        self.clock = clock
        self.book = PoolBook()
        self._effects: asyncio.Queue[Effect] = asyncio.Queue()
        self._signals: dict[PoolKey, _Signal] = {}
        replica.subscribe(self._on_change)

    @property
    def pools(self) -> dict[PoolKey, HeldPool]:
        return self.book.pools

    async def run(self, period_s: float = 0.25) -> None:
        """Carry out the book's effects and tick its clock, until cancelled; every task started
        here is owned by this task group and awaited when it ends."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._tick(period_s), name="pool ticks")
            while True:
                effect = await self._effects.get()
                tasks.create_task(self._carry_out(effect), name=type(effect).__name__)

    # --- metrics (sampled when scraped, on the event loop) -----------------------------------------
    def by_service(self, count: Callable[[HeldPool], int]) -> dict[tuple[str, ...], float]:
        """`count` summed over the pools of each service (every service known, 0 without pools)."""
        totals: dict[tuple[str, ...], float] = {(name,): 0 for name in self.replica.state.services}
        for pool in self.book.pools.values():
            totals[(pool.service.name,)] = totals.get((pool.service.name,), 0) + count(pool)
        return totals

    def waiters(self) -> dict[tuple[str, ...], float]:
        """Requests waiting for a VM of one of the service's pools."""
        totals: dict[tuple[str, ...], float] = {(name,): 0 for name in self.replica.state.services}
        for (_, service), n in self._waiting.items():
            totals[(service,)] = totals.get((service,), 0) + n
        return totals

    # --- the request path ----------------------------------------------------------------------
    async def acquire(self, admitted: Admitted, deadline: float) -> tuple[HeldPool, PoolVm]:
        """Steps 2-6: a VM of the consumer VM's pool, marked busy. Raises PoolExhausted past the
        deadline, Overloaded when `max_waiters` requests already wait on the pool, or the leasing
        agents' refusal."""
        key = (admitted.attachment.vm_id, admitted.service.name)
        queued = False
        try:
            while True:
                now = self.clock()
                outcome, effects = self.book.take(key, admitted, now)
                self._apply(effects)
                if isinstance(outcome, Taken):
                    return outcome.pool, outcome.member
                if isinstance(outcome, Refusal):
                    raise _error(outcome)
                remaining = deadline - now
                if remaining <= 0:
                    raise _error(self.book.past_deadline(key, admitted), "pool_busy")
                if not queued:
                    queued = self._join_queue(key, admitted)
                await self._wait(key, remaining)
        finally:
            if queued:
                self._leave_queue(key)

    def _join_queue(self, key: PoolKey, admitted: Admitted) -> bool:
        waiting = self._waiting.get(key, 0)
        if waiting >= self.max_waiters:
            raise Overloaded(f"{waiting} requests of consumer VM {admitted.attachment.address} already wait for a "
                             f"producer VM of service {admitted.service.name!r}, the limit; try again when some "
                             "are answered", reason="pool_waiters")
        self._waiting[key] = waiting + 1
        return True

    def _leave_queue(self, key: PoolKey) -> None:
        if (left := self._waiting[key] - 1) > 0:
            self._waiting[key] = left
        else:
            del self._waiting[key]

    async def _wait(self, key: PoolKey, remaining: float) -> None:
        """Until the pool's signal, a grow backoff's end, or `remaining` passed."""
        signal = self._signals.get(key) or self._signals.setdefault(key, _Signal())
        try:  # bounded: a grow backoff ends with no event
            async with asyncio.timeout(min(remaining, GROW_BACKOFF_S)):
                await signal.event.wait()
        except TimeoutError:
            pass
        if signal.refusal is not None:
            raise _error(signal.refusal)

    def put_back(self, pool: HeldPool, member: PoolVm, *, refused: bool = False) -> None:
        """Step 12: the request on `member` is over. `refused`: the producer host refused the
        frame, so the VM is skipped until the replica moves."""
        self._feed(RequestDone((pool.consumer, pool.service.name), pool.lease_id, member, refused, self.clock()))

    def host_broken(self, address: str) -> None:
        """The tunnel to a producer host broke: give its VMs back now instead of waiting for its
        liveness lease to lapse, and lease elsewhere until then."""
        self._feed(HostBroken(address, self.clock()))

    def _on_change(self, key: str, old: Record | None, new: Record | None, revision: int) -> None:
        self._feed(ReplicaChanged(old, new, self.replica.state, self.clock()))

    async def _tick(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            now = self.clock()
            self._feed(Tick(now))
            state = self.replica.state
            for effect in self.book.strays({state.pools[k].lease_id: state.pools[k].consumer_vm
                                            for k in state.pools_by_consumer_host.get(self.host_id, ())}, now):
                self._effects.put_nowait(effect)

    # --- events in, effects out ------------------------------------------------------------------
    def _feed(self, event: Event | None) -> None:
        if event is not None:
            self._apply(self.book.handle(event))

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Wake):
                signal = self._signals.pop(effect.key, None)  # every waiter wakes; the next wait gets a new one
                if signal is not None:
                    signal.refusal = effect.refusal
                    signal.event.set()
            else:
                self._effects.put_nowait(effect)

    async def _carry_out(self, effect: Effect) -> None:
        try:
            event = await self._call(effect)
        except Exception as exc:  # a bug, not a refusal: say so, and let the book go on
            log.exception("pool effect %s failed", type(effect).__name__)
            event = self._ended(effect, Refusal(LeasenetError, "internal error in the consumer host; see its log"))
        self._feed(event)

    async def _call(self, effect: Effect) -> Event | None:
        try:
            match effect:
                case RequestLease(key=key, admitted=admitted, avoid_hosts=avoid):
                    a = admitted.attachment
                    lease = await self.registry.request_lease(admitted.service.name, a.network, a.address,
                                                              self.host_id, list(avoid))
                    log.info("leased %s for %s: %s", lease.lease_id, a.vm_id, sorted(m.vm_id for m in lease.members))
                    return Granted(key, admitted, parse_lease_hex(lease.lease_id), lease.revision, _members(lease),
                                   self.clock())
                case GrowLease(key=key, lease_id=lease_id, min_revision=min_revision, avoid_hosts=avoid):
                    lease = await self.registry.grow_lease(lease_hex(lease_id), 1, min_revision, list(avoid), key[1])
                    return Grown(key, lease_id, _members(lease))
                case ShrinkLease(lease_id=lease_id, vms=vms):
                    await self.registry.shrink_lease(lease_hex(lease_id), list(vms))
                    return self._ended(effect, None)
                case ReleaseLease():
                    await self._release(effect.lease_id, effect.consumer)
                    return None
        except LeasenetError as exc:
            log.info("%s refused: %s%s", type(effect).__name__, exc.message, f" ({exc.detail})" if exc.detail else "")
            refusal = Refusal(type(exc), exc.message)
            if isinstance(effect, RequestLease):  # its refusal reaches consumer VMs: in their words
                refusal = lease_refused(exc, effect.admitted.service.name, effect.admitted.attachment.address)
            return self._ended(effect, refusal, expired=isinstance(exc, LeaseExpired))
        raise TypeError(f"the pool manager cannot carry out {effect!r}")

    def _ended(self, effect: Effect, refusal: Refusal | None, expired: bool = False) -> Event | None:
        """The event that tells the book an effect ended without its answer: refused, failed, or (a
        shrink) over either way, since the registry's claim collector frees the VMs in the end."""
        now = self.clock()
        match effect:
            case RequestLease(key=key):
                return LeaseRefused(key, refusal or Refusal(LeasenetError, "no answer"), now)
            case GrowLease(key=key, lease_id=lease_id):
                return GrowRefused(key, lease_id, expired, now)
            case ShrinkLease(key=key, lease_id=lease_id):
                return Shrunk(key, lease_id, waiting=key in self._signals, now=now)
        return None

    # --- release -------------------------------------------------------------------------------
    async def _release(self, lease_id: LeaseId, consumer: VmId) -> None:
        try:
            await self.registry.release_lease(lease_hex(lease_id))
            log.info("released lease %s of %s", lease_hex(lease_id), consumer)
        except LeasenetError as exc:  # its TTL ends it anyway
            log.warning("could not release lease %s: %s", lease_hex(lease_id), exc.message)

    async def release_all(self, consumer: VmId | None = None) -> int:
        """Release every pool (of one consumer VM): detach and shutdown."""
        effects = self.book.drop_all(consumer)
        self._apply([e for e in effects if isinstance(e, Wake)])
        releases = [e for e in effects if isinstance(e, ReleaseLease)]
        await asyncio.gather(*(self._release(e.lease_id, e.consumer) for e in releases))
        return len(releases)

    async def release_leftovers(self, settle_s: float = 2.0) -> int:
        """Leases held under this host id by a previous life of the host (killed, restarted within
        the TTL). This process knows nothing of them: adopting them would keep a dead host's leases
        alive, so they are given back at start and their VMs are free at once (SPEC §6)."""
        state = self.replica.state
        stale = [state.pools[key].lease_id for key in state.pools_by_consumer_host.get(self.host_id, ())]
        for lease_id in stale:
            try:
                await self.registry.release_lease(lease_hex(lease_id))
                log.info("released lease %s left by a previous run of this host", lease_hex(lease_id))
            except LeasenetError as exc:  # their TTL ends them anyway
                log.warning("could not release leftover lease %s: %s", lease_hex(lease_id), exc.message)
        # a first request must not find them again: wait (bounded) until the replica shows them gone
        deadline = self.clock() + settle_s
        while any(i in self.replica.state.pools_by_lease for i in stale) and self.clock() < deadline:
            await asyncio.sleep(0.02)
        return len(stale)


__all__ = ["PoolManager", "PoolKey"]
