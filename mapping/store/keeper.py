"""The leases a process holds, kept alive together: each renewed at a third of its TTL through
`Store.refresh_lease` (on etcd, every refresh of the process shares one keep-alive stream), a lease
etcd answers with TTL 0 (expired, revoked) dropped and its owner told, a failed refresh tried again
sooner. Unlike etcd3aio's `keep_alive_context`, which only logs, the owner always learns of a loss."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mapping.store.base import Store
from wire.errors import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class _Held:
    ttl_s: float
    due: float
    expired: asyncio.Event = field(default_factory=asyncio.Event)


def renewal_period(ttl_s: float) -> float:
    """How often a lease is renewed: a third of its TTL, so two renewals may fail before it lapses."""
    return ttl_s / 3


class LeaseKeeper:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._held: dict[int, _Held] = {}
        self._changed = asyncio.Event()

    def hold(self, lease_id: int, ttl_s: float) -> asyncio.Event:
        """Keep `lease_id` alive from now on; the event is set if etcd reports it gone."""
        held = _Held(ttl_s, self._clock() + renewal_period(ttl_s))
        self._held[lease_id] = held
        self._changed.set()
        return held.expired

    def drop(self, lease_id: int) -> None:
        """Stop renewing `lease_id` (released, or its owner stopped)."""
        self._held.pop(lease_id, None)

    @property
    def held(self) -> list[int]:
        return list(self._held)

    async def run(self, *, until: asyncio.Event | None = None) -> None:
        """Renew whatever is due, all at once, then wait for the next due time or a new lease; return
        once `until` is set (e.g. the event of a lease that expired), else run until cancelled."""
        while until is None or not until.is_set():
            now = self._clock()
            due = [lease_id for lease_id, held in self._held.items() if held.due <= now]
            if due:
                await asyncio.gather(*(self._renew(lease_id) for lease_id in due))
                continue
            self._changed.clear()
            wait_s = min((held.due for held in self._held.values()), default=now + 3600) - now
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _renew(self, lease_id: int) -> None:
        held = self._held.get(lease_id)
        if held is None:
            return
        try:
            ttl = await self.store.refresh_lease(lease_id)
        except StoreUnavailable as exc:
            log.warning("cannot renew lease %x: %s", lease_id, exc)
            held.due = self._clock() + renewal_period(held.ttl_s) / 2
            return
        if self._held.get(lease_id) is not held:
            return  # dropped or held anew while the refresh was under way
        if ttl <= 0:
            del self._held[lease_id]
            held.expired.set()
        else:
            held.due = self._clock() + renewal_period(held.ttl_s)
