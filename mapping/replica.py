"""The watch-synced local replica of the keyspace (SPEC §3 step 2): the hosts' hot paths read it,
never etcd. It loads a snapshot at revision R, then applies watch events from R+1 on, skipping
any event at or below the revision it already holds (no gap, no duplicate). After an outage it
resumes the watch from where it stopped; if that revision was compacted, it reloads once, in pages
at the current revision, after a random pause (every host's watch fails at the same compaction: the
pause spreads their reloads), and the reload reports every key that vanished meanwhile as deleted
(a reconnect leaves no ghosts). Until then it serves what it holds."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from mapping import keys
from wire import metrics
from wire.errors import StoreUnavailable
from mapping.model import Record
from mapping.state import ClusterState
from mapping.store import Compacted, Snapshot, Store, WatchBatch

log = logging.getLogger(__name__)

# (key, old record, new record, revision); old or new is None for creates and deletes
Listener = Callable[[str, Record | None, Record | None, int], None]

# the longest pause before reloading after a compaction (spread over [0, this))
RELOAD_JITTER_S = 2.0


class Replica:
    """`prefixes`: what this process keeps (mapping/scopes.py), one watch each. Each prefix has its
    own position: a prefix in which nothing happens never advances, so waiting for a revision names
    the key it is about (`wait_for_revision(..., key=)`); `revision` is the lowest position, which
    for a replica of one prefix (a registry's: the whole root) is simply its position."""

    def __init__(self, store: Store, *, prefixes: tuple[str, ...] = (keys.ROOT,),
                 reload_jitter_s: float = RELOAD_JITTER_S) -> None:
        self.store = store
        self.prefixes = prefixes
        self.reload_jitter_s = reload_jitter_s
        self.state = ClusterState()
        self.positions = {prefix: 0 for prefix in prefixes}
        self.synced = asyncio.Event()
        self.reloads = 0
        self._loaded: set[str] = set()
        self._listeners: list[Listener] = []
        self._advanced = asyncio.Condition()

    @property
    def revision(self) -> int:
        return min(self.positions.values())

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def run(self) -> None:
        if len(self.prefixes) == 1:
            return await self._follow(self.prefixes[0])
        async with asyncio.TaskGroup() as tasks:
            for prefix in self.prefixes:
                tasks.create_task(self._follow(prefix), name=f"replica {prefix}")

    async def _follow(self, prefix: str) -> None:
        need_snapshot = True
        backoff = 0.1
        while True:
            try:
                if need_snapshot:
                    self.load(await self.store.snapshot(prefix), prefix)
                    need_snapshot = False
                    await self._notify()  # a reload also moves the revision that waiters wait for
                async for batch in self.store.watch(prefix, self.positions[prefix] + 1):
                    await self.apply(batch, prefix)
                    backoff = 0.1
            except Compacted as exc:
                pause = random.uniform(0, self.reload_jitter_s)
                log.warning("replica: cannot resume the watch on %s at %d: %s; reloading in %.2f s", prefix,
                            self.positions[prefix] + 1, exc, pause)
                need_snapshot = True
                await asyncio.sleep(pause)
            except StoreUnavailable as exc:
                log.warning("replica: %s; retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def load(self, snapshot: Snapshot, prefix: str | None = None) -> None:
        """Replace the state under `prefix` (the only one, by default) with a snapshot, telling
        listeners about every difference."""
        prefix = prefix or self.prefixes[0]
        self.reloads += 1
        metrics.REPLICA_RELOADS.inc()
        fresh = {kv.key: keys.decode(kv.key, kv.value, kv.create_revision) for kv in snapshot.items}
        stale = [k for k in self._all_keys() if k.startswith(prefix) and fresh.get(k) is None]
        for key in stale:
            self._set(key, None, snapshot.revision)
        for key, record in fresh.items():
            if record is not None and self.state.get(key) != record:
                self._set(key, record, snapshot.revision)
        self._loaded.add(prefix)
        self._advance(prefix, snapshot.revision)

    async def apply(self, batch: WatchBatch, prefix: str | None = None) -> None:
        prefix = prefix or self.prefixes[0]
        position = self.positions[prefix]
        for ev in batch.events:
            if ev.mod_revision <= position:
                continue  # already in the snapshot (or seen before a resume)
            record = None if ev.value is None else keys.decode(ev.key, ev.value, ev.create_revision)
            self._set(ev.key, record, ev.mod_revision)
        # An event batch is complete only up to its last event (during a catch-up etcd puts its own
        # current revision in the header while more events follow); an empty batch is a progress mark.
        self._advance(prefix, max(e.mod_revision for e in batch.events) if batch.events else batch.revision)
        metrics.REPLICA_LAG.set(max(0, batch.revision - self.positions[prefix]))
        await self._notify()

    async def _notify(self) -> None:
        async with self._advanced:
            self._advanced.notify_all()

    async def wait_for_revision(self, revision: int, timeout_s: float, *, key: str | None = None) -> bool:
        """Wait until the replica holds everything up to `revision` (of the prefix holding `key`, or
        of every prefix); False on timeout."""
        watched = [p for p in self.prefixes if key is None or key.startswith(p) or p.startswith(key)]

        def reached() -> bool:
            return all(self.positions[p] >= revision for p in watched)
        try:
            async with asyncio.timeout(timeout_s):
                async with self._advanced:
                    await self._advanced.wait_for(reached)
            return True
        except TimeoutError:
            return reached()

    def _advance(self, prefix: str, revision: int) -> None:
        self.positions[prefix] = max(self.positions[prefix], revision)
        if len(self._loaded) == len(self.prefixes):
            self.synced.set()

    def _set(self, key: str, record: Record | None, revision: int) -> None:
        old = self.state.apply(key, record)
        if old is None and record is None:
            return
        for listener in list(self._listeners):
            try:
                listener(key, old, record, revision)
            except Exception:  # a broken listener must not stop the replica
                log.exception("replica listener failed for %s", key)

    def _all_keys(self) -> list[str]:
        s = self.state
        return ([keys.network_key(n) for n in s.networks] + [keys.service_key(n) for n in s.services]
                + [keys.key_of(h) for h in s.hosts.values()] + [keys.key_of(v) for v in s.all_vm_records()]
                + [keys.key_of(c) for c in s.claims.values()] + [keys.member_key(c) for c in s.members.values()]
                + list(s.pools) + [keys.QUOTAS + k for k in s.quota_slots])
