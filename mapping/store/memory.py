"""An in-memory Store with real lease semantics (TTL, keep-alive, revoke deletes attached keys,
expiry emits delete events). For unit tests; `tests/contract/` holds it to etcd's behaviour."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from wire.errors import StoreUnavailable
from mapping.store.base import (SNAPSHOT_PAGE_KEYS, Compacted, KeyValue, Page, Require, Snapshot, TxnResult,
                                WatchBatch, WatchEvent, check_txn_size, paged_snapshot)


@dataclass
class _Lease:
    ttl_s: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


class MemoryStore:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, tick_s: float = 0.05) -> None:
        self.requests = 0
        self.available = True  # tests flip it to simulate an outage
        self._clock = clock
        self._tick_s = tick_s
        self._revision = 1
        self._compacted = 0
        self._data: dict[str, KeyValue] = {}
        # every version of every key, (revision, value or None once deleted): ranges at a past revision
        self._versions: dict[str, list[tuple[int, KeyValue | None]]] = {}
        self._history: list[WatchEvent] = []
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._watchers: set[asyncio.Queue[list[WatchEvent]]] = set()
        self._expirer: asyncio.Task[None] | None = None

    # --- helpers -----------------------------------------------------------------------------
    def _enter(self) -> None:
        self.requests += 1
        if not self.available:
            raise StoreUnavailable("etcd is unavailable (memory store switched off)")
        self.expire_due()

    def _commit(self, events: list[WatchEvent]) -> None:
        self._history.extend(events)
        for q in self._watchers:
            q.put_nowait(events)

    def _delete_keys(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        self._revision += 1
        events = []
        for key in keys:
            kv = self._data.pop(key)
            self._versions[key].append((self._revision, None))
            if kv.lease in self._leases:
                self._leases[kv.lease].keys.discard(key)
            events.append(WatchEvent(key=key, value=None, create_revision=0, mod_revision=self._revision))
        self._commit(events)

    def _holds(self, require: Sequence[Require]) -> bool:
        return all((self._data[r.key].create_revision if r.key in self._data else 0) == r.create_revision
                   for r in require)

    def expire_due(self) -> None:
        now = self._clock()
        for lease_id, lease in list(self._leases.items()):
            if lease.expires_at <= now:
                del self._leases[lease_id]
                self._delete_keys(sorted(lease.keys))

    async def _expire_forever(self) -> None:
        while self._leases:
            await asyncio.sleep(self._tick_s)
            self.expire_due()
        self._expirer = None

    def compact(self, revision: int) -> None:
        self._compacted = revision
        self._history = [e for e in self._history if e.mod_revision > revision]

    # --- Store -------------------------------------------------------------------------------
    async def snapshot(self, prefix: str, *, page_size: int = SNAPSHOT_PAGE_KEYS) -> Snapshot:
        return await paged_snapshot(self, prefix, page_size)

    async def range_page(self, prefix: str, *, after: str = "", revision: int = 0, limit: int) -> Page:
        self._enter()
        if revision and revision < self._compacted:
            raise Compacted(self._compacted)
        at = revision or self._revision
        found = [kv for key in sorted(self._versions) if key.startswith(prefix) and key > after
                 for kv in [self._version_at(key, at)] if kv is not None]
        return Page(at, found[:limit], len(found) > limit)

    def _version_at(self, key: str, revision: int) -> KeyValue | None:
        held = [kv for rev, kv in self._versions[key] if rev <= revision]
        return held[-1] if held else None

    async def get(self, key: str) -> KeyValue | None:
        self._enter()
        return self._data.get(key)

    def _put(self, key: str, value: bytes, lease: int, revision: int) -> WatchEvent:
        if lease and lease not in self._leases:
            raise StoreUnavailable(f"etcd rejected the write: lease {lease:x} not found")
        old = self._data.get(key)
        create = old.create_revision if old else revision
        if old and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._data[key] = KeyValue(key, value, create, revision, lease)
        self._versions.setdefault(key, []).append((revision, self._data[key]))
        if lease:
            self._leases[lease].keys.add(key)
        return WatchEvent(key, value, create, revision)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._enter()
        self._revision += 1
        self._commit([self._put(key, value, lease, self._revision)])
        return self._revision

    async def update(self, key: str, value: bytes, *, lease: int = 0, require: Sequence[Require] = ()) -> TxnResult:
        self._enter()
        if not self._holds(require):
            return TxnResult(False, self._revision)
        self._revision += 1
        self._commit([self._put(key, value, lease, self._revision)])
        return TxnResult(True, self._revision)

    async def delete(self, key: str, *, require: Sequence[Require] = ()) -> TxnResult:
        self._enter()
        if not self._holds(require) or key not in self._data:
            return TxnResult(False, self._revision)
        self._delete_keys([key])
        return TxnResult(True, self._revision)

    async def delete_all(self, keys: Sequence[str], *, require: Sequence[Require] = ()) -> TxnResult:
        self._enter()
        if not self._holds(require):
            return TxnResult(False, self._revision)
        self._delete_keys([k for k in dict.fromkeys(keys) if k in self._data])
        return TxnResult(True, self._revision)

    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0,
                         require: Sequence[Require] = (), puts: Sequence[tuple[str, bytes]] = ()) -> TxnResult:
        check_txn_size(items, require, puts)
        self._enter()
        if any(k in self._data for k, _ in items) or not self._holds(require):
            return TxnResult(False, self._revision)
        if lease and lease not in self._leases:
            raise StoreUnavailable(f"etcd rejected the transaction: lease {lease:x} not found")
        self._revision += 1
        self._commit([self._put(k, v, lease, self._revision) for k, v in [*items, *puts]])
        return TxnResult(True, self._revision)

    async def grant_lease(self, ttl_s: int) -> int:
        self._enter()
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _Lease(ttl_s, self._clock() + ttl_s)
        if self._expirer is None:
            self._expirer = asyncio.get_running_loop().create_task(self._expire_forever())
        return lease_id

    async def refresh_lease(self, lease_id: int) -> int:
        self._enter()
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires_at = self._clock() + lease.ttl_s
        return lease.ttl_s

    async def revoke_lease(self, lease_id: int) -> None:
        self._enter()
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._delete_keys(sorted(lease.keys))

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self.requests += 1
        if start_revision and start_revision <= self._compacted:
            raise Compacted(self._compacted)
        queue: asyncio.Queue[list[WatchEvent]] = asyncio.Queue()
        backlog = [e for e in self._history if e.mod_revision >= start_revision] if start_revision else []
        self._watchers.add(queue)
        try:
            if backlog:
                queue.put_nowait(backlog)
            while True:
                events = await queue.get()
                yield WatchBatch(events[-1].mod_revision, [e for e in events if e.key.startswith(prefix)])
        finally:
            self._watchers.discard(queue)

    async def close(self) -> None:
        if self._expirer is not None:
            self._expirer.cancel()
