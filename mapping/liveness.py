"""A host's own records in etcd, under one liveness lease (SPEC §5): if the host dies, the lease
lapses and its records vanish; everyone watching learns it. Used by both host kinds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from mapping import keys
from mapping.model import Host, HostId, Record
from mapping.store import MAX_TXN_OPS, Require, Store
from wire import metrics
from wire.errors import InvalidRequest, StoreUnavailable

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
        """Create every record under a new liveness lease, in transactions of at most etcd's limit
        (a host may have thousands of VMs). The host record goes last: until it exists no one can
        route to the VMs already written, so a half-registered host is never used. A conflict
        revokes the lease, which takes every chunk written so far with it, and starts again."""
        records = sorted(self.records(), key=lambda r: isinstance(r, Host))
        items = [(keys.key_of(r), keys.encode(r)) for r in records]
        chunks = [items[i:i + MAX_TXN_OPS] for i in range(0, len(items), MAX_TXN_OPS)]
        for _ in range(3):
            self.lease_id = await self.store.grant_lease(self.ttl_s)
            if await self._create_chunks(chunks):
                self.registrations += 1
                log.info("host %s registered %d record(s) in %d transaction(s) under lease %x", self.host_id,
                         len(items), len(chunks), self.lease_id)
                return
            await self.store.revoke_lease(self.lease_id)
            await self._clear_own_leftovers(items)
        raise InvalidRequest(f"host {self.host_id} cannot register: its records keep conflicting")

    async def _create_chunks(self, chunks: list[list[tuple[str, bytes]]]) -> bool:
        for chunk in chunks:
            if not (await self.store.create_all(chunk, lease=self.lease_id)).succeeded:
                return False
        return True

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
                    metrics.KEEPALIVE_FAILURES.inc()
                    log.warning("liveness lease of host %s lapsed; registering again", self.host_id)
                    await self.register()
            except StoreUnavailable as exc:
                metrics.KEEPALIVE_FAILURES.inc()
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
