"""Lease pools held by this consumer host (SPEC §3 steps 2-6, §4): lease on first use, grow when
busy, wait within the deadline, renew while in use, release when idle, and follow the replica so
that members that vanish (dead producer host, expired claim) leave the pool and it refills.

The decisions are `datapath.Pool`'s; this module does the waiting and the registry calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from consumer_host.datapath import Admitted, Grow, Member, Pool, Use, members_from_state
from consumer_host.registry_client import RegistryClient
from wire.v1 import registry_pb2 as pb
from mapping import keys
from wire.errors import LeaseExpired, LeasenetError, PoolExhausted, StoreUnavailable
from mapping.model import Claim, Host, LeaseId, Pool as PoolRecord, ProducerVm, Record, VmId, lease_hex, parse_lease_hex
from mapping.replica import Replica

log = logging.getLogger(__name__)

PoolKey = tuple[VmId, str]  # (consumer VM, service)
GROW_BACKOFF_S = 0.2  # after the registry said no capacity, don't ask again at once
# how long a producer host we lost the tunnel to is avoided: longer than a liveness TTL, after
# which the registry knows by itself (or the host came back and re-registered)
AVOID_HOST_S = 5.0


def _members(lease: pb.Lease) -> dict[VmId, Member]:
    return {VmId(m.vm_id): Member(VmId(m.vm_id), m.address, m.host_address, m.fencing_token) for m in lease.members}


class PoolManager:
    def __init__(self, host_id: str, registry: RegistryClient, replica: Replica,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host_id = host_id
        self.registry = registry
        self.replica = replica
        self.clock = clock
        self.pools: dict[PoolKey, Pool] = {}
        self.leases_granted = 0
        self._by_lease: dict[LeaseId, PoolKey] = {}
        self._leasing: dict[PoolKey, asyncio.Task[Pool]] = {}
        self._signals: dict[PoolKey, asyncio.Event] = {}
        self._grow_blocked_until: dict[PoolKey, float] = {}
        self._next_renew: dict[PoolKey, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        # claims we gave up on (VM -> fencing token): a late answer must not revive them, but the same
        # VM claimed again later (a new token, e.g. after its host came back) is a member like any other
        self._forgotten: dict[LeaseId, dict[VmId, int]] = {}
        self._avoid_hosts: dict[str, float] = {}  # producer host address -> until
        replica.subscribe(self._on_change)

    # --- the request path ----------------------------------------------------------------------
    async def acquire(self, admitted: Admitted, deadline: float) -> tuple[Pool, Member]:
        """Steps 2-6: a member of the consumer VM's pool, marked busy. Raises PoolExhausted past
        the deadline."""
        key = (admitted.attachment.vm_id, admitted.service.name)
        while True:
            pool = self.pools.get(key) or await self._lease(key, admitted, deadline)
            now = self.clock()
            decision = pool.decide()
            if isinstance(decision, Use):
                pool.take(decision.member, now)
                return pool, decision.member
            signal = self._signal(key)
            if isinstance(decision, Grow) and now >= self._grow_blocked_until.get(key, 0.0):
                self._spawn(self._grow(key, pool))
            remaining = deadline - now
            if remaining <= 0:
                raise PoolExhausted(
                    f"no producer VM of service {pool.service.name!r} freed up in time: the pool of consumer VM "
                    f"{pool.consumer} has {len(pool.members)} VM(s), all busy (max_pool "
                    f"{pool.service.policy.max_pool})")
            try:
                async with asyncio.timeout(min(remaining, GROW_BACKOFF_S)):
                    await signal.wait()
            except TimeoutError:
                pass

    def give_back(self, pool: Pool, member: Member, *, refused: bool = False) -> None:
        pool.give_back(member, self.clock())
        if refused:  # the producer host refused the frame: don't pick this VM again until the replica moves
            pool.avoid.add(member.vm)
        self._notify((pool.consumer, pool.service.name))

    # --- leasing -------------------------------------------------------------------------------
    async def _lease(self, key: PoolKey, admitted: Admitted, deadline: float) -> Pool:
        task = self._leasing.get(key)
        if task is None:  # one lease request per pool, however many requests wait for it
            task = self._leasing[key] = asyncio.get_running_loop().create_task(self._request_lease(key, admitted))
            task.add_done_callback(lambda _: self._leasing.pop(key, None))
        try:
            async with asyncio.timeout(max(0.0, deadline - self.clock())):
                return await asyncio.shield(task)
        except TimeoutError:  # a hung agent or etcd: answer within the deadline; the lease request goes on
            raise StoreUnavailable(f"no leasing agent granted consumer VM {key[0]} a lease of service {key[1]!r} "
                                   f"within the request's deadline") from None

    async def _request_lease(self, key: PoolKey, admitted: Admitted) -> Pool:
        a = admitted.attachment
        lease = await self.registry.request_lease(admitted.service.name, a.network, a.address, self.host_id,
                                                  self._hosts_to_avoid())
        pool = Pool(admitted.service, a.vm_id, parse_lease_hex(lease.lease_id), lease.revision,
                    members=_members(lease), last_used=self.clock())
        self.pools[key] = pool
        self._by_lease[pool.lease_id] = key
        self._next_renew[key] = self.clock() + pool.service.policy.lease_ttl_s / 3
        self.leases_granted += 1
        log.info("leased %s for %s: %s", lease.lease_id, a.vm_id, sorted(pool.members))
        return pool

    def _hosts_to_avoid(self) -> list[str]:
        now = self.clock()
        for address in [a for a, until in self._avoid_hosts.items() if until <= now]:
            del self._avoid_hosts[address]
        return sorted(self._avoid_hosts)

    async def _grow(self, key: PoolKey, pool: Pool, give_back: list[VmId] | None = None) -> None:
        """Add one member. With `give_back`, first return those members to the registry (in this
        order, so the pool's max_pool counts only what it really uses)."""
        if pool.growing and not give_back:
            return
        pool.growing = True
        try:
            if give_back:
                await self._shrink(pool, give_back)
                if not pool.needs_refill() and not self._waiters(key):
                    return
            lease = await self.registry.grow_lease(lease_hex(pool.lease_id), 1, pool.revision,
                                                   self._hosts_to_avoid())
            forgotten = self._forgotten.get(pool.lease_id, {})
            pool.members.update({vm: m for vm, m in _members(lease).items() if m.fencing_token > forgotten.get(vm, 0)})
            pool.revision = max(pool.revision, max((m.fencing_token for m in lease.members), default=0))
        except LeaseExpired:
            self._drop(key)
        except LeasenetError as exc:
            self._grow_blocked_until[key] = self.clock() + GROW_BACKOFF_S
            log.info("cannot grow pool of %s: %s", pool.consumer, exc.message)
        finally:
            pool.growing = False
            self._notify(key)

    # --- following the replica -----------------------------------------------------------------
    def _on_change(self, key: str, old: Record | None, new: Record | None, revision: int) -> None:
        if isinstance(old, Claim) and old.lease_id in self._by_lease and (new is None or new.lease_id != old.lease_id):
            self._forget_members(self._by_lease[old.lease_id], [old.vm], tokens={old.vm: old.revision})
        elif isinstance(old, PoolRecord) and new is None and old.lease_id in self._by_lease:
            log.info("lease %s ended (released or expired)", lease_hex(old.lease_id))
            self._drop(self._by_lease[old.lease_id])
        elif isinstance(new, Claim) and new.lease_id in self._by_lease:
            self._adopt(self._by_lease[new.lease_id], new)
        elif isinstance(new, Host) and (old is None or old.revision != new.revision):
            self._avoid_hosts.pop(new.address, None)  # the host (re)registered: worth trying again
        elif isinstance(old, ProducerVm) and (new is None or new.revision != old.revision):
            for pool_key, pool in list(self.pools.items()):
                if old.vm_id in pool.members:
                    self._forget_members(pool_key, [old.vm_id])

    def _adopt(self, key: PoolKey, claim: Claim) -> None:
        """A claim of one of our leases that no agent told us of (a grow whose answer was lost when
        its agent failed): the replica shows it, so the pool uses it instead of leaking it."""
        pool, state = self.pools.get(key), self.replica.state
        vm, host_address = state.vms.get(claim.vm), state.host_address(claim.vm)
        if (pool is None or vm is None or host_address is None or claim.vm in pool.members
                or not state.claim_is_current(claim)
                or claim.revision <= self._forgotten.get(pool.lease_id, {}).get(claim.vm, 0)):
            return
        pool.members[claim.vm] = Member(claim.vm, vm.address, host_address, claim.revision)
        pool.revision = max(pool.revision, claim.revision)
        self._notify(key)

    def host_broken(self, address: str) -> None:
        """The tunnel to a producer host broke: give its VMs back now instead of waiting for its
        liveness lease to lapse, and lease elsewhere until then."""
        self._avoid_hosts[address] = self.clock() + AVOID_HOST_S
        for key, pool in list(self.pools.items()):
            gone = [vm for vm, m in pool.members.items() if m.host_address == address]
            if gone:
                self._forget_members(key, gone, give_back=True)

    async def _shrink(self, pool: Pool, vms: list[VmId]) -> None:
        try:
            await self.registry.shrink_lease(lease_hex(pool.lease_id), list(vms))
        except LeasenetError as exc:  # the registry's claim collector cleans up when the host's lease lapses
            log.info("could not give back %s: %s", vms, exc.message)

    def _forget_members(self, key: PoolKey, vms: list[VmId], give_back: bool = False,
                        tokens: dict[VmId, int] | None = None) -> None:
        pool = self.pools.get(key)
        if pool is None:
            return
        forgotten = self._forgotten.setdefault(pool.lease_id, {})
        for vm in vms:
            member = pool.members.pop(vm, None)
            pool.busy.discard(vm)
            token = member.fencing_token if member is not None else (tokens or {}).get(vm, 0)
            forgotten[vm] = max(forgotten.get(vm, 0), token)
        pool.avoid.clear()
        if give_back:
            self._spawn(self._grow(key, pool, give_back=vms))
        elif pool.needs_refill():
            self._grow_blocked_until.pop(key, None)
            self._spawn(self._grow(key, pool))
        self._notify(key)

    def _drop(self, key: PoolKey) -> None:
        pool = self.pools.pop(key, None)
        if pool is not None:
            self._by_lease.pop(pool.lease_id, None)
            self._forgotten.pop(pool.lease_id, None)
            self._next_renew.pop(key, None)
            self._notify(key)

    # --- renewal and idle release ---------------------------------------------------------------
    async def maintain(self, period_s: float = 0.25) -> None:
        while True:
            await asyncio.sleep(period_s)
            now = self.clock()
            for key, pool in list(self.pools.items()):
                if pool.is_idle(now):
                    self._drop(key)
                    self._spawn(self._release(pool))
                elif now >= self._next_renew.get(key, now):
                    self._next_renew[key] = now + pool.service.policy.lease_ttl_s / 3
                    self._spawn(self._renew(key, pool))

    async def _renew(self, key: PoolKey, pool: Pool) -> None:
        try:
            # a hung agent is given up on within a renewal period, so the next agent renews in time
            ttl = pool.service.policy.lease_ttl_s
            await self.registry.renew_lease(lease_hex(pool.lease_id), timeout_s=min(3.0, max(0.5, ttl / 3)))
        except LeaseExpired:
            log.warning("lease %s of %s expired; the next request leases anew", lease_hex(pool.lease_id),
                        pool.consumer)
            self._drop(key)
        except LeasenetError as exc:
            log.warning("could not renew lease %s: %s", lease_hex(pool.lease_id), exc.message)

    async def _release(self, pool: Pool) -> None:
        try:
            await self.registry.release_lease(lease_hex(pool.lease_id))
            log.info("released lease %s of %s", lease_hex(pool.lease_id), pool.consumer)
        except LeasenetError as exc:  # its TTL ends it anyway
            log.warning("could not release lease %s: %s", lease_hex(pool.lease_id), exc.message)

    async def release_all(self, consumer: VmId | None = None) -> int:
        """Release every pool (of one consumer VM): detach and shutdown."""
        keys_ = [k for k in self.pools if consumer is None or k[0] == consumer]
        pools = [self.pools[k] for k in keys_]
        for k in keys_:
            self._drop(k)
        await asyncio.gather(*(self._release(p) for p in pools))
        return len(pools)

    async def release_leftovers(self, settle_s: float = 2.0) -> int:
        """Leases held under this host id by a previous life of the host (killed, restarted within
        the TTL). This process knows nothing of them: adopting them would keep a dead host's leases
        alive, so they are given back at start and their VMs are free at once (SPEC §6)."""
        stale = [p.lease_id for p in self.replica.state.pools.values() if p.consumer_host == self.host_id]
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

    # --- plumbing -------------------------------------------------------------------------------
    def _waiters(self, key: PoolKey) -> bool:
        return key in self._signals

    def _signal(self, key: PoolKey) -> asyncio.Event:
        signal = self._signals.get(key)
        if signal is None:
            signal = self._signals[key] = asyncio.Event()
        return signal

    def _notify(self, key: PoolKey) -> None:
        signal = self._signals.pop(key, None)  # wake every waiter; the next wait gets a fresh event
        if signal is not None:
            signal.set()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = ["PoolManager", "PoolKey", "keys", "members_from_state"]
