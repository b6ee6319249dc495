"""A host's own records in etcd, under one liveness lease (SPEC §5): if the host dies, the lease
lapses and its records vanish; everyone watching learns it. Used by both host kinds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from mapping import keys
from wire.errors import InvalidRequest, StoreUnavailable
from mapping.model import HostId, Record
from mapping.store import Require, Store

log = logging.getLogger(__name__)


class Liveness:
    def __init__(self, store: Store, host_id: HostId, records: Callable[[], Sequence[Record]], ttl_s: int) -> None:
        self.store = store
        self.host_id = host_id
        self.records = records  # called on every (re-)registration: records may change (draining)
        self.ttl_s = ttl_s
        self.lease_id = 0
        self.registrations = 0

    async def register(self) -> None:
        items = [(keys.key_of(r), keys.encode(r)) for r in self.records()]
        for _ in range(3):
            self.lease_id = await self.store.grant_lease(self.ttl_s)
            if (await self.store.create_all(items, lease=self.lease_id)).succeeded:
                self.registrations += 1
                log.info("host %s registered %d record(s) under lease %x", self.host_id, len(items), self.lease_id)
                return
            await self.store.revoke_lease(self.lease_id)
            await self._clear_own_leftovers(items)
        raise InvalidRequest(f"host {self.host_id} cannot register: its records keep conflicting")

    async def _clear_own_leftovers(self, items: list[tuple[str, bytes]]) -> None:
        """A previous life of this host (restarted before its lease lapsed) may still hold our keys;
        anything held by another host is a configuration error."""
        for key, _ in items:
            current = await self.store.get(key)
            if current is None:
                continue
            record = keys.decode(key, current.value, current.create_revision)
            owner = getattr(record, "host_id", None)
            if owner != self.host_id:
                raise InvalidRequest(f"host {self.host_id} cannot register: {key} is registered by host {owner}")
            await self.store.delete(key, require=[Require(key, current.create_revision)])

    async def keep_alive(self) -> None:
        """Renew every TTL/3; if the lease lapsed (a long etcd outage, a SIGSTOP), register anew."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if await self.store.refresh_lease(self.lease_id) <= 0:
                    log.warning("liveness lease of host %s lapsed; registering again", self.host_id)
                    await self.register()
            except StoreUnavailable as exc:
                log.warning("cannot renew liveness of host %s: %s", self.host_id, exc)

    async def update(self, record: Record) -> None:
        await self.store.put(keys.key_of(record), keys.encode(record), lease=self.lease_id)

    async def deregister(self, keep_alive: asyncio.Task[None] | None = None) -> None:
        """Revoke the lease, so that our records vanish now rather than at the TTL. Its keep-alive
        task is cancelled first: finding the lease gone, it would register again."""
        if keep_alive is not None:
            keep_alive.cancel()
        if self.registrations:
            await self.store.revoke_lease(self.lease_id)
