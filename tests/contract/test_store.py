"""One contract, two backends: the in-memory store must behave as etcd does wherever leasenet
relies on it (atomic create-only transactions, guards, leases, TTL expiry, watch from a revision)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from mapping.store import MAX_TXN_OPS, Compacted, Require, Store
from mapping.store.etcd import EtcdStore
from mapping.store.memory import MemoryStore
from wire.errors import InvalidRequest

_run = itertools.count()


@pytest.fixture(params=["memory", "etcd"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        s = await EtcdStore(request.getfixturevalue("etcd_endpoints")).connect()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"/contract/{request.node.name}/{next(_run)}/"


async def test_create_all_is_atomic_and_never_overwrites(store: Store, prefix: str) -> None:
    first = await store.create_all([(prefix + "a", b"1"), (prefix + "b", b"2")])
    assert first.succeeded
    clash = await store.create_all([(prefix + "b", b"X"), (prefix + "c", b"3")])
    assert not clash.succeeded and clash.revision >= first.revision
    snap = await store.snapshot(prefix)
    assert [(kv.key[len(prefix):], kv.value) for kv in snap.items] == [("a", b"1"), ("b", b"2")]
    assert all(kv.create_revision == first.revision for kv in snap.items)


async def test_guards_compare_the_create_revision(store: Store, prefix: str) -> None:
    rev = (await store.create_all([(prefix + "vm", b"v")])).revision
    assert not (await store.create_all([(prefix + "claim", b"c")], require=[Require(prefix + "vm", rev + 99)])).succeeded
    assert (await store.create_all([(prefix + "claim", b"c")], require=[Require(prefix + "vm", rev)])).succeeded
    assert not (await store.delete(prefix + "claim", require=[Require(prefix + "claim", 1)])).succeeded
    claim = await store.get(prefix + "claim")
    assert claim is not None
    assert (await store.delete(prefix + "claim", require=[Require(prefix + "claim", claim.create_revision)])).succeeded
    assert await store.get(prefix + "claim") is None


async def test_a_guarded_update_keeps_the_create_revision_and_never_brings_back_a_deleted_key(store: Store,
                                                                                             prefix: str) -> None:
    created = await store.create_all([(prefix + "vm", b"1")])
    assert (await store.update(prefix + "vm", b"2", require=[Require(prefix + "vm", created.revision)])).succeeded
    held = await store.get(prefix + "vm")
    assert held is not None and held.value == b"2" and held.create_revision == created.revision
    assert not (await store.update(prefix + "vm", b"3", require=[Require(prefix + "vm", created.revision + 99)])).succeeded
    await store.delete(prefix + "vm")
    assert not (await store.update(prefix + "vm", b"4", require=[Require(prefix + "vm", created.revision)])).succeeded
    assert await store.get(prefix + "vm") is None


async def test_revoking_a_lease_deletes_its_keys(store: Store, prefix: str) -> None:
    lease = await store.grant_lease(10)
    assert (await store.create_all([(prefix + "x", b"1"), (prefix + "y", b"2")], lease=lease)).succeeded
    assert (await store.get(prefix + "x")).lease == lease  # type: ignore[union-attr]
    assert await store.refresh_lease(lease) > 0
    await store.revoke_lease(lease)
    assert (await store.snapshot(prefix)).items == []
    assert await store.refresh_lease(lease) == 0
    await store.revoke_lease(lease)  # revoking twice is harmless


async def test_an_unrenewed_lease_expires_and_watchers_see_the_deletes(store: Store, prefix: str) -> None:
    start = (await store.snapshot(prefix)).revision
    lease = await store.grant_lease(2)
    await store.put(prefix + "k", b"v", lease=lease)
    seen: list[tuple[str, bytes | None]] = []

    async def watch() -> None:
        async for batch in store.watch(prefix, start + 1):
            seen.extend((e.key[len(prefix):], e.value) for e in batch.events)
            if any(v is None for _, v in seen):
                return

    await asyncio.wait_for(watch(), 15)
    assert seen == [("k", b"v"), ("k", None)]
    assert await store.get(prefix + "k") is None


async def test_watch_from_a_revision_replays_exactly_what_came_after(store: Store, prefix: str) -> None:
    r1 = await store.put(prefix + "a", b"1")
    await store.put(prefix + "b", b"2")
    await store.delete(prefix + "a")
    events = []

    async def collect() -> None:
        async for batch in store.watch(prefix, r1 + 1):
            events.extend((e.key[len(prefix):], e.value, e.mod_revision) for e in batch.events)
            if len(events) >= 2:
                return

    await asyncio.wait_for(collect(), 10)
    assert [(k, v) for k, v, _ in events] == [("b", b"2"), ("a", None)]
    assert events[0][2] < events[1][2]


async def test_watching_a_compacted_revision_says_so(store: Store, prefix: str) -> None:
    r1 = await store.put(prefix + "a", b"1")
    r2 = await store.put(prefix + "a", b"2")
    await compact(store, r2)
    with pytest.raises(Compacted):
        async for _ in store.watch(prefix, r1):
            pass


async def compact(store: Store, revision: int) -> None:
    if isinstance(store, MemoryStore):
        store.compact(revision)
    else:
        await store._client.kv.compact(revision, physical=True)  # type: ignore[attr-defined]  # test-only


async def test_a_snapshot_read_in_pages_is_one_revision_holding_every_key_exactly_once(store: Store,
                                                                                        prefix: str) -> None:
    keys = [f"{prefix}{i:02d}" for i in range(25)]
    assert (await store.create_all([(k, k.encode()) for k in keys[:20]])).succeeded
    assert (await store.create_all([(k, k.encode()) for k in keys[20:]])).succeeded
    first = await store.range_page(prefix, limit=4)
    await store.delete(keys[0])  # changes after the first page's revision stay out of this snapshot
    await store.put(prefix + "99", b"late")
    pages, page = [first.items], first
    while page.more:
        page = await store.range_page(prefix, after=pages[-1][-1].key, revision=first.revision, limit=4)
        pages.append(page.items)
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 4, 1]
    assert [kv.key for p in pages for kv in p] == keys
    now = await store.snapshot(prefix, page_size=4)
    assert [kv.key for kv in now.items] == keys[1:] + [prefix + "99"] and now.revision > first.revision
    assert now.items == (await store.snapshot(prefix)).items  # the default page holds them all at once


async def test_a_range_at_a_compacted_revision_says_so_and_a_snapshot_still_reads(store: Store, prefix: str) -> None:
    r1 = await store.put(prefix + "a", b"1")
    r2 = await store.put(prefix + "a", b"2")
    await compact(store, r2)
    with pytest.raises(Compacted):
        await store.range_page(prefix, revision=r1, limit=1)
    assert [kv.value for kv in (await store.snapshot(prefix, page_size=1)).items] == [b"2"]


async def test_a_transaction_over_etcds_operation_limit_is_refused_before_it_is_sent(store: Store, prefix: str) -> None:
    items = [(f"{prefix}{i:04d}", b"x") for i in range(MAX_TXN_OPS + 1)]
    with pytest.raises(InvalidRequest, match="exceeds etcd's limit of 128 operations"):
        await store.create_all(items)
    assert (await store.snapshot(prefix)).items == []
    assert (await store.create_all(items[:MAX_TXN_OPS])).succeeded  # the limit itself is etcd's: it takes 128
