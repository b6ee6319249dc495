"""The leasing roles: grant latency at the leasing API, and consumer hosts racing for a fleet
smaller than the demand (double claims checked on the registry's lease events)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import grpc
import grpc.aio

from leasenet.bench.measure import GRANTS_HOST, cluster_channel, cluster_tls, ms, percentile
from leasenet.bench.plans import NETWORK, GrantsResult, GrantsTask, RaceResult, RaceTask
from leasenet.checker import ClaimLog, claims_from_lines, double_leases
from leasenet.demo import watch_leases
from wire.tls import Identity, Kind
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc


async def grants(task: GrantsTask) -> GrantsResult:
    """Lease a pool for a fresh consumer VM and release it, again and again: the grant latency."""
    latencies: list[float] = []
    sizes: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    host = Identity(Kind.CONSUMER, task.consumer_host) if task.consumer_host else GRANTS_HOST
    async with cluster_channel(task.registry, Kind.REGISTRY, host) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = rpb_grpc.LeasingStub(channel)
        for i in range(task.count + task.warmup):
            n = task.first + i
            consumer = f"10.7.{3 + n // 250}.{1 + n % 250}"  # a fresh consumer VM each time
            t0 = time.perf_counter()
            try:
                lease = await stub.RequestLease(rpb.RequestLeaseRequest(
                    service=task.service, consumer_network=NETWORK, consumer_vm=consumer,
                    consumer_host=host.id), timeout=5)
            except grpc.aio.AioRpcError as exc:
                failures[exc.code().name] += 1
                continue
            elapsed = time.perf_counter() - t0
            if i >= task.warmup:
                latencies.append(elapsed)
                sizes[len(lease.members)] += 1
            await stub.ReleaseLease(rpb.LeaseRef(lease_id=lease.lease_id), timeout=5)
    return GrantsResult(len(latencies), ms(percentile(latencies, 50)), ms(percentile(latencies, 99)),
                        {str(k): v for k, v in sizes.items()}, dict(failures))


async def race(task: RaceTask) -> RaceResult:
    """Every consumer VM of every consumer host loops: Send (leases a pool on first use) then
    Detach (releases it). The fleet is smaller than the demand, so most attempts lose."""
    claims, synced = ClaimLog(), asyncio.Event()
    watcher = asyncio.create_task(watch_leases(task.registry, claims, synced, cluster_tls()))
    await asyncio.wait_for(synced.wait(), 10)
    channels = [cluster_channel(c.address, Kind.CONSUMER) for c in task.consumers]
    served, exhausted, detached = 0, 0, 0
    errors: Counter[str] = Counter()
    samples: list[str] = []
    end = time.monotonic() + task.duration_s

    async def consumer_vm(stub: Any, address: str, token: str) -> None:
        nonlocal served, exhausted, detached
        rng = random.Random(address)
        request = cpb.SendRequest(network=NETWORK, src=address, token=token, target=task.target, payload=b"race")
        while time.monotonic() < end:
            try:
                await stub.Send(request, timeout=5)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    exhausted += 1
                else:
                    errors[exc.code().name] += 1
                    if len(samples) < 5:
                        samples.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(rng.uniform(0.002, 0.01))
                continue
            served += 1
            await stub.Detach(cpb.DetachRequest(network=NETWORK, address=address, token=token), timeout=5)
            detached += 1

    started = time.monotonic()
    await asyncio.gather(*(consumer_vm(cpb_grpc.ConsumerHostStub(ch), a, t)
                           for ch, c in zip(channels, task.consumers) for a, t in c.vms))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # the last lease events
    watcher.cancel()
    for ch in channels:
        await ch.close()
    granted = len(claims.leases)
    return RaceResult(granted, served, detached, exhausted, dict(errors), samples, round(elapsed, 3),
                      round(granted / elapsed, 1), [v.detail for v in double_leases(claims_from_lines(claims.lines))])
