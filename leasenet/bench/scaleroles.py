"""`leasenet bench --scale`'s measuring roles, each run in a process of its own (leasenet.bench's
__main__): `hold` leases one pool per consumer VM through its consumer host, `grant-rate` grants and
releases pools as fast as the registries allow, following the claims' history for double claims."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
import grpc.aio

from consumer_host.leasing_stream import LeasingStream
from leasenet.bench.measure import cluster_channel, cluster_tls
from leasenet.bench.plans import (
    NETWORK, RaceConsumerHost,
)
from leasenet.bench.watching import ClaimHistory
from leasenet.checker import claims_from_lines, double_leases
from leasenet.cluster import OPERATOR
from mapping.store.etcd import EtcdStore
from wire.errors import LeasenetError, Status
from wire.tls import Identity, Kind
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc


# --- roles ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HoldTask:
    role: ClassVar[str] = "hold"
    consumers: list[RaceConsumerHost]  # each consumer VM sends once: its pool is leased and kept
    target: str
    concurrency: int


@dataclass(frozen=True, slots=True)
class HoldResult:
    held: int
    errors: dict[str, int]
    elapsed_s: float
    event_loop: str = "asyncio"


async def hold(task: HoldTask) -> HoldResult:
    """Lease one pool per consumer VM through its consumer host (a first request leases it)."""
    errors: Counter[str] = Counter()
    held = 0
    gate = asyncio.Semaphore(task.concurrency)
    channels = [cluster_channel(c.address, Kind.CONSUMER) for c in task.consumers]

    async def one(stub: Any, address: str, token: str) -> None:
        nonlocal held
        async with gate:
            try:
                await stub.Send(cpb.SendRequest(network=NETWORK, src=address, token=token, target=task.target,
                                                payload=b"hold"), timeout=30)
                held += 1
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1

    started = time.monotonic()
    await asyncio.gather(*(one(cpb_grpc.ConsumerHostStub(ch), a, t)
                           for ch, c in zip(channels, task.consumers) for a, t in c.vms))
    for ch in channels:
        await ch.close()
    return HoldResult(held, dict(errors), round(time.monotonic() - started, 2))


@dataclass(frozen=True, slots=True)
class RateTask:
    role: ClassVar[str] = "grant-rate"
    lanes: list[list[str]]  # [service, registry address]: where each group of workers leases
    workers: int  # per lane, each a consumer VM of its own
    first: int  # numbers the consumer VMs, unique across runs
    cycles: int  # stop after this many grants in all (0: only the duration counts)
    duration_s: float
    consumer_host: str  # whom the pools are leased for (its certificate is presented)
    etcd: list[str]  # follow the claims' history here for double claims (empty: don't)


@dataclass(frozen=True, slots=True)
class RateResult:
    grants: int
    refusals: int
    errors: dict[str, int]
    elapsed_s: float
    grants_per_s: float
    refusals_per_s: float
    violations: list[str] = field(default_factory=list)
    lane_grants: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # this process's CPU: the consumer host's side of the calls, made here on its behalf
    claim_lines: int = 0  # lines of the claims' history the double claims were checked on
    event_loop: str = "asyncio"


async def grant_rate(task: RateTask) -> RateResult:
    """Workers on every registry lease a pool and release it, again and again, as one consumer host
    would: grants and refusals (RESOURCE_EXHAUSTED) counted apart; with `etcd`, the claims' history
    followed meanwhile and checked for double claims (leasenet.checker)."""
    history, store, follower = None, None, None
    if task.etcd:
        store = await EtcdStore(task.etcd, timeout_s=30, tls=cluster_tls(OPERATOR)).connect()
        history = ClaimHistory(store)
        follower = asyncio.create_task(history.replica.run())
        await asyncio.wait_for(history.replica.synced.wait(), 60)
    grants = refusals = 0
    lane_grants = [0] * len(task.lanes)
    errors: Counter[str] = Counter()
    end = time.monotonic() + task.duration_s
    identity = Identity(Kind.CONSUMER, task.consumer_host)
    channels = [cluster_channel(registry, Kind.REGISTRY, identity) for _, registry in task.lanes]

    async def worker(stream: LeasingStream, service: str, lane: int, n: int) -> None:
        nonlocal grants, refusals
        rng = random.Random(n)
        consumer = f"10.{60 + n // 62500}.{n // 250 % 250}.{1 + n % 250}"
        while time.monotonic() < end and not (task.cycles and grants >= task.cycles):
            try:
                lease = await stream.call("RequestLease", rpb.RequestLeaseRequest(
                    service=service, consumer_network=NETWORK, consumer_vm=consumer,
                    consumer_host=task.consumer_host), timeout_s=10)
            except LeasenetError as exc:
                if exc.code is Status.RESOURCE_EXHAUSTED:
                    refusals += 1
                else:
                    errors[exc.code.name] += 1
                await asyncio.sleep(rng.uniform(0.001, 0.005))
                continue
            grants += 1
            lane_grants[lane] += 1
            try:
                await stream.call("ReleaseLease", rpb.LeaseRef(lease_id=lease.lease_id), timeout_s=10)
            except LeasenetError as exc:
                errors[f"release {exc.code.name}"] += 1

    # as a consumer host asks: every call on one stream per registry (consumer_host/leasing_stream.py)
    streams = [LeasingStream(rpb_grpc.LeasingStub(ch), f"leasing agent {registry}")
               for ch, (_, registry) in zip(channels, task.lanes)]
    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker(stream, service, lane, task.first + lane * task.workers + w)
                           for lane, (stream, (service, _)) in enumerate(zip(streams, task.lanes))
                           for w in range(task.workers)))
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    for stream in streams:
        await stream.close()
    for ch in channels:
        await ch.close()
    violations: list[str] = []
    lines = 0
    if history is not None and store is not None and follower is not None:
        # every release was answered after its transaction: the history is complete once the replica
        # holds none of the claims leased for our consumer host
        deadline = time.monotonic() + 30
        while history.holds(task.consumer_host) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        follower.cancel()
        await store.close()
        lines = len(history.lines)
        violations = [v.detail for v in double_leases(claims_from_lines(history.lines))]
    return RateResult(grants, refusals, dict(errors), round(elapsed, 2), round(grants / elapsed, 1),
                      round(refusals / elapsed, 1), violations, lane_grants, round(cpu, 3), lines)


SCALE_ROLES: dict[str, tuple[type[Any], Callable[[Any], Awaitable[Any]]]] = {
    HoldTask.role: (HoldTask, hold), RateTask.role: (RateTask, grant_rate)}
