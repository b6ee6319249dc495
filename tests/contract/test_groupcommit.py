"""Group commit (registry/groupcommit.py) on both stores: parts queued behind a transaction in
flight go in one, each hears its own outcome (a lost race sends the batch's parts again alone),
parts writing one key never share a transaction, and creates combine only on one lease."""

from __future__ import annotations

import asyncio

from mapping.store import Require, Store
from registry.groupcommit import GroupCommit
from tests.contract.test_store import prefix, store  # noqa: F401 - the fixtures, on both backends


def part(prefix: str, name: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{name}/a", b"1"), (f"{prefix}{name}/b", b"2")]


async def test_creates_queued_behind_one_in_flight_go_in_one_transaction(store: Store, prefix: str) -> None:  # noqa: F811
    commits = GroupCommit(store, max_in_flight=1)
    results = await asyncio.gather(*(commits.create_all(part(prefix, f"p{n}"), lease=0, require=[],
                                                        puts=[(f"{prefix}mirror/p{n}", b"m")]) for n in range(5)))
    assert all(r.succeeded for r in results)
    first, rest = results[0], results[1:]
    assert len({r.revision for r in rest}) == 1 and rest[0].revision > first.revision
    assert commits.batches == 1
    snap = await store.snapshot(prefix)
    assert len(snap.items) == 15
    created = {kv.key: kv.create_revision for kv in snap.items}
    assert created[f"{prefix}p0/a"] == first.revision and created[f"{prefix}p4/b"] == rest[0].revision


async def test_a_batch_that_loses_a_race_sends_each_part_again_alone(store: Store, prefix: str) -> None:  # noqa: F811
    taken = (await store.create_all([(f"{prefix}p2/a", b"someone else's")])).revision
    commits = GroupCommit(store, max_in_flight=1)
    results = await asyncio.gather(*(commits.create_all(part(prefix, f"p{n}"), lease=0, require=[])
                                     for n in range(5)))
    assert [r.succeeded for r in results] == [True, True, False, True, True]
    assert commits.batches == 1
    held = await store.get(f"{prefix}p2/a")
    assert held is not None and held.create_revision == taken and await store.get(f"{prefix}p2/b") is None


async def test_parts_writing_one_key_never_share_a_transaction(store: Store, prefix: str) -> None:  # noqa: F811
    commits = GroupCommit(store, max_in_flight=1)
    same = [(f"{prefix}pool", b"x")]
    results = await asyncio.gather(commits.create_all(part(prefix, "first"), lease=0, require=[]),
                                   commits.create_all([*same, (f"{prefix}one", b"1")], lease=0, require=[]),
                                   commits.create_all([*same, (f"{prefix}two", b"2")], lease=0, require=[]))
    assert [r.succeeded for r in results] == [True, True, False]  # the second won the key; no error
    assert await store.get(f"{prefix}two") is None


async def test_creates_combine_only_on_one_lease_and_releases_combine(store: Store, prefix: str) -> None:  # noqa: F811
    leases = [await store.grant_lease(30), await store.grant_lease(30)]
    commits = GroupCommit(store, max_in_flight=1)
    blocker = commits.create_all(part(prefix, "first"), lease=0, require=[])
    await asyncio.gather(blocker, *(commits.create_all(part(prefix, f"l{lease}-{n}"), lease=lease, require=[])
                                    for lease in leases for n in range(2)))
    assert commits.batches == 2  # one per lease
    snap = await store.snapshot(prefix)
    assert all(kv.lease == int(kv.key.split("/l")[-1].split("-")[0]) for kv in snap.items if "/l" in kv.key)

    doomed = [kv for kv in snap.items if "/l" in kv.key]
    results = await asyncio.gather(*(commits.delete_all([kv.key], require=[Require(kv.key, kv.create_revision)])
                                     for kv in doomed))
    assert all(r.succeeded for r in results) and commits.batches == 3
    assert [kv.key for kv in (await store.snapshot(prefix)).items] == [k for k, _ in part(prefix, "first")]
