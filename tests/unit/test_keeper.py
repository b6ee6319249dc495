"""The lease keeper: every held lease renewed at a third of its TTL, a lease the store no longer
knows reported to its owner, a store that cannot be reached tried again rather than reported."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from mapping.store.keeper import LeaseKeeper
from mapping.store.memory import MemoryStore
from tests.conftest import eventually_async


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.refreshed: Counter[int] = Counter()
        self.refused = 0

    async def refresh_lease(self, lease_id: int) -> int:
        if not self.available:
            self.refused += 1
        ttl = await super().refresh_lease(lease_id)
        self.refreshed[lease_id] += 1
        return ttl


@contextlib.asynccontextmanager
async def running(keeper: LeaseKeeper, store: MemoryStore) -> AsyncIterator[None]:
    """`keeper` renewing in the background for the block; then stopped, and `store` closed."""
    task = asyncio.create_task(keeper.run())
    try:
        yield
    finally:
        task.cancel()
        await store.close()


async def test_held_leases_outlive_their_ttl_and_a_revoked_one_is_reported_to_its_owner() -> None:
    store = CountingStore()
    leases = [await store.grant_lease(1) for _ in range(3)]
    keeper = LeaseKeeper(store)
    lost = [keeper.hold(lease, 1) for lease in leases]
    async with running(keeper, store):
        # four renewals each at a third of the TTL: each lease has lived past its TTL
        await eventually_async(lambda: min(store.refreshed[lease] for lease in leases) >= 4, what="four renewals")
        assert all([await store.refresh_lease(lease) > 0 for lease in leases])
        await store.revoke_lease(leases[1])
        await asyncio.wait_for(lost[1].wait(), 5)
        assert keeper.held == [leases[0], leases[2]] and not lost[0].is_set() and not lost[2].is_set()


async def test_an_unreachable_store_is_tried_again_and_not_taken_for_a_lost_lease() -> None:
    store = CountingStore()
    lease = await store.grant_lease(30)
    keeper = LeaseKeeper(store)
    lost = keeper.hold(lease, 3)  # renewed every second, though etcd would keep it for 30 s
    async with running(keeper, store):
        store.available = False
        await eventually_async(lambda: store.refused >= 2, what="two renewals refused")
        store.available = True
        renewed = store.refreshed[lease]
        await eventually_async(lambda: store.refreshed[lease] > renewed, what="a renewal once etcd is back")
        assert not lost.is_set() and keeper.held == [lease]


async def test_run_returns_once_the_lease_it_waits_for_is_lost() -> None:
    store = MemoryStore()
    lease = await store.grant_lease(3)
    keeper = LeaseKeeper(store)
    lost = keeper.hold(lease, 3)
    await store.revoke_lease(lease)
    await asyncio.wait_for(keeper.run(until=lost), 5)
    assert lost.is_set() and keeper.held == []
    await store.close()
