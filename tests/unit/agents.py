"""A leasing agent over a memory store holding the given records, its replica synced (unit tests)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from mapping import keys
from mapping.model import Host, HostId, HostKind, Record
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from registry.leasing import LeasingAgent


CONSUMER_HOSTS = tuple(f"c{n}" for n in range(12))


async def register_consumer_host(store: MemoryStore, host_id: str, ttl_s: int = 2, address: str = "127.0.0.1:1") -> Host:
    """A consumer host's record under a liveness lease of its own: its pools hang on that lease. The
    record says `ttl_s` (what a grant checks against a service's lease_ttl_s, at least 2); the lease
    itself lasts 60 s, so that a test needs no keep-alive."""
    lease = await store.grant_lease(60)
    host = Host(HostId(host_id), HostKind.CONSUMER, address, lease=lease, ttl_s=ttl_s)
    await store.put(keys.key_of(host), keys.encode(host), lease=lease)
    return host


@asynccontextmanager
async def agent_on(records: Iterable[Record], seed: int = 1, consumer_hosts: Iterable[str] = CONSUMER_HOSTS
                   ) -> AsyncIterator[tuple[MemoryStore, Replica, LeasingAgent]]:
    """`consumer_hosts` are registered, each under its own liveness lease."""
    records = list(records)
    store = MemoryStore()
    for record in records:
        await store.put(keys.key_of(record), keys.encode(record))
    for host_id in consumer_hosts:
        await register_consumer_host(store, host_id)
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    try:
        yield store, replica, LeasingAgent(store, replica, rng=random.Random(seed))
    finally:
        task.cancel()
        await store.close()
