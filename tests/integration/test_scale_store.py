"""The store at fleet scale (SPEC §9, issue 12) on a real etcd: a keyspace bigger than gRPC's 4 MiB
message limit loads (the snapshot comes in pages) and lists through the registry in pages; a replica
whose watch position was compacted away reloads once and converges; every lease refresh of a
process rides one keep-alive stream, counted by etcd itself."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from leasenet.cluster import LocalCluster, write_toml
from mapping import keys
from mapping.model import Host, HostId, HostKind, ProducerVm
from mapping.replica import Replica
from mapping.store import MAX_TXN_OPS, WatchBatch
from mapping.store.etcd import EtcdStore
from mapping.store.keeper import LeaseKeeper
from tests.conftest import eventually_async
from tests.integration.helpers import cluster_toml, vms
from wire.errors import StoreUnavailable
from wire.rpc import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.integration

# a handler reference as long as a real one may be (module path and factory): ~290 bytes per VM in etcd
HANDLER = "company.platform.producers." + "handlers." * 12 + "echo_with_a_long_descriptive_name:factory"


def fleet(count: int) -> list[ProducerVm]:
    return [ProducerVm("blue", f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}", HostId(f"producer-{i // 1000:03}"),
                       "echo", HANDLER) for i in range(count)]


async def write_all(store: EtcdStore, records: list[Any]) -> int:
    items = [(keys.key_of(r), keys.encode(r)) for r in records]
    for i in range(0, len(items), MAX_TXN_OPS):
        assert (await store.create_all(items[i:i + MAX_TXN_OPS])).succeeded
    return sum(len(k) + len(v) for k, v in items)


async def test_a_keyspace_bigger_than_the_message_limit_loads_and_lists_in_pages(cluster: LocalCluster) -> None:
    store = await cluster.open_store()
    lagging = Plug(store)
    behind = Replica(lagging)  # type: ignore[arg-type]
    task = asyncio.create_task(behind.run())
    try:
        await behind.synced.wait()
        lagging.pull()
        written = await write_all(store, fleet(16_000))
        assert written > MAX_MESSAGE_BYTES  # one range over it all would exceed gRPC's receive limit
        # a replica cut off meanwhile catches up from its revision: etcd sends up to 1,000 revisions at once
        lagging.put_back()
        assert await behind.wait_for_revision((await store.range_page(keys.ROOT, limit=1)).revision, 30)
        assert len(behind.state.vms) == 16_000 and behind.reloads == 1
        task.cancel()
        registry = cluster.registry("registry1", write_toml(cluster.workdir / "cluster.toml", cluster_toml()))
        listed = await vms(registry.address)  # the CLI's page follower, 500 VMs a page
        assert len(listed) == 16_000 and len({v.vm_id for v in listed}) == 16_000
        before = store.requests
        snapshot = await store.snapshot(keys.ROOT)
        assert store.requests - before == -(-len(snapshot.items) // 1000)  # a range per 1,000 keys
        replica = Replica(store)
        replica.load(snapshot)
        assert len(replica.state.vms) == 16_000
    finally:
        await store.close()


class Plug:
    """A replica's store with a plug on its watch: pulled, the watch breaks and no new one starts
    until it is put back (a host cut off from etcd while the cluster moves on)."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.connected = asyncio.Event()
        self.connected.set()
        self.pulled = asyncio.Event()
        self.parked = asyncio.Event()  # a watch is waiting for the plug
        self.starts: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def pull(self) -> None:
        self.connected.clear()
        self.pulled.set()

    def put_back(self) -> None:
        self.pulled.clear()
        self.connected.set()

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self.parked.set()
        await self.connected.wait()
        self.parked.clear()
        self.starts.append(start_revision)
        batches = aiter(self.store.watch(prefix, start_revision))
        pulled = asyncio.ensure_future(self.pulled.wait())
        try:
            while True:
                batch = asyncio.ensure_future(anext(batches))
                await asyncio.wait([batch, pulled], return_when=asyncio.FIRST_COMPLETED)
                if pulled.done():
                    batch.cancel()
                    raise StoreUnavailable("the test pulled the plug")
                yield batch.result()
        finally:
            pulled.cancel()


def host(n: int) -> Host:
    return Host(HostId(f"h{n}"), HostKind.PRODUCER, f"127.0.0.1:{7000 + n}")


async def test_a_replica_whose_watch_was_compacted_away_reloads_once_and_converges(cluster: LocalCluster) -> None:
    store = await cluster.open_store()
    plug = Plug(store)
    replica = Replica(plug, reload_jitter_s=0.5)  # type: ignore[arg-type]
    gone: list[str] = []
    replica.subscribe(lambda key, old, new, rev: gone.append(key) if new is None else None)
    try:
        await write_all(store, [host(1), host(2)])
        task = asyncio.create_task(replica.run())
        await replica.synced.wait()
        plug.pull()
        await eventually_async(plug.parked.is_set, what="the replica's watch waits for etcd again")
        cut_off_at = replica.revision
        await store.delete(keys.key_of(host(1)))
        for n in range(3, 8):
            revision = await store.put(keys.key_of(host(n)), keys.encode(host(n)))
        await store._client.kv.compact(revision)  # type: ignore[union-attr]  # etcd forgets what the replica missed
        plug.put_back()
        assert await replica.wait_for_revision(revision, 20)
        assert set(replica.state.hosts) == {"h2", "h3", "h4", "h5", "h6", "h7"}
        assert gone == [keys.key_of(host(1))] and replica.reloads == 2  # the first load and one reload
        # the watch resumed where it was cut off, was told of the compaction, and resumed after the reload
        assert plug.starts[-2] == cut_off_at + 1 and plug.starts[-1] > revision
        task.cancel()
    finally:
        await store.close()


def etcd_counter(metrics_url: str, name: str, method: str) -> int:
    """A counter from etcd's own Prometheus metrics, summed over its labels, for one gRPC method."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return sum(int(float(line.rpartition(" ")[2])) for line in lines
               if line.startswith(name + "{") and f'grpc_method="{method}"' in line)


async def test_every_lease_a_process_keeps_alive_rides_one_keep_alive_stream(cluster: LocalCluster) -> None:
    assert cluster.etcd is not None
    metrics = cluster.etcd.members[0].metrics_url
    count: Callable[[str], int] = lambda name: etcd_counter(metrics, name, "LeaseKeepAlive")  # noqa: E731
    store = await cluster.open_store()
    try:
        streams, messages = count("grpc_server_started_total"), count("grpc_server_msg_received_total")
        leases = [await store.grant_lease(3) for _ in range(40)]
        keeper = LeaseKeeper(store)
        lost = [keeper.hold(lease, 3) for lease in leases]
        running = asyncio.create_task(keeper.run())
        # every lease renewed at least twice (each every second), as the registry's renewals are too
        await eventually_async(lambda: count("grpc_server_msg_received_total") - messages >= 2 * len(leases),
                               timeout_s=20, what="two renewals of each of 40 leases")
        await asyncio.gather(*(store.refresh_lease(lease) for lease in leases))
        assert count("grpc_server_started_total") - streams == 1  # not one per lease, nor per renewal
        assert not any(event.is_set() for event in lost)
        await store.revoke_lease(leases[0])
        await asyncio.wait_for(lost[0].wait(), 10)  # a lease etcd no longer knows is reported to its owner
        assert leases[0] not in keeper.held and len(keeper.held) == len(leases) - 1
        running.cancel()
    finally:
        await store.close()
