"""A leasing agent over a memory store holding the given records, its replica synced (unit tests)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from mapping import keys
from mapping.model import Record
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from registry.leasing import LeasingAgent


@asynccontextmanager
async def agent_on(records: Iterable[Record], seed: int = 1) -> AsyncIterator[tuple[MemoryStore, Replica, LeasingAgent]]:
    store = MemoryStore()
    for record in records:
        await store.put(keys.key_of(record), keys.encode(record))
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    try:
        yield store, replica, LeasingAgent(store, replica, rng=random.Random(seed))
    finally:
        task.cancel()
        await store.close()
