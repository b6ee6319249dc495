"""The watch-synced replica: snapshot at R, events from R+1, no gap, no duplicate; reload after
compaction, reporting what vanished meanwhile."""

from __future__ import annotations

import asyncio

from mapping import keys
from mapping.model import Host, HostId, HostKind, Network
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from mapping.store import WatchBatch, WatchEvent


def host(n: int) -> Host:
    return Host(HostId(f"h{n}"), HostKind.PRODUCER, f"127.0.0.1:{7000 + n}")


async def put(store: MemoryStore, record: object) -> int:
    return await store.put(keys.key_of(record), keys.encode(record))  # type: ignore[arg-type]


async def test_the_replica_follows_the_store_without_gap_or_duplicate() -> None:
    store = MemoryStore()
    await put(store, host(1))
    replica = Replica(store)
    changes: list[tuple[str, bool]] = []
    replica.subscribe(lambda key, old, new, rev: changes.append((key, new is not None)))
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    rev = await put(store, host(2))
    await store.delete(keys.host_key(HostKind.PRODUCER, "h1"))
    assert await replica.wait_for_revision(rev + 1, 5)
    assert set(replica.state.hosts) == {"h2"}
    assert changes == [(keys.host_key(HostKind.PRODUCER, "h1"), True), (keys.host_key(HostKind.PRODUCER, "h2"), True), (keys.host_key(HostKind.PRODUCER, "h1"), False)]
    task.cancel()


async def test_events_at_or_below_the_held_revision_are_ignored() -> None:
    replica = Replica(MemoryStore())
    h = host(1)
    event = WatchEvent(keys.key_of(h), keys.encode(h), 5, 5)
    await replica.apply(WatchBatch(5, [event]))
    await replica.apply(WatchBatch(5, [WatchEvent(keys.key_of(h), None, 0, 5)]))  # a replay of revision 5
    assert set(replica.state.hosts) == {"h1"} and replica.revision == 5


async def test_a_reload_reports_what_vanished_while_the_watch_was_away() -> None:
    store = MemoryStore()
    await put(store, host(1))
    await put(store, Network("blue", 100))
    replica = Replica(store)
    replica.load(await store.snapshot(keys.ROOT))
    await store.delete(keys.host_key(HostKind.PRODUCER, "h1"))
    await put(store, host(2))
    gone: list[str] = []
    replica.subscribe(lambda key, old, new, rev: gone.append(key) if new is None else None)
    replica.load(await store.snapshot(keys.ROOT))
    assert gone == [keys.host_key(HostKind.PRODUCER, "h1")] and set(replica.state.hosts) == {"h2"}
    assert set(replica.state.networks) == {"blue"}


async def test_the_replica_reloads_when_its_watch_revision_was_compacted() -> None:
    store = MemoryStore()
    replica = Replica(store)
    replica.load(await store.snapshot(keys.ROOT))
    await put(store, host(1))
    rev = await put(store, host(2))
    store.compact(rev)  # the replica's next revision is gone
    task = asyncio.create_task(replica.run())
    assert await replica.wait_for_revision(rev, 5)
    assert set(replica.state.hosts) == {"h1", "h2"} and replica.reloads >= 2
    task.cancel()
