"""The failover role: traffic from several consumer VMs, SIGKILL of the busiest producer host,
and how long until every consumer VM was served again (leasenet.checker.recovered_after)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter

import grpc.aio

from leasenet import checker
from leasenet.bench.measure import cluster_channel
from leasenet.bench.plans import NETWORK, REQUEST_TIMEOUT_S, FailoverResult, FailoverTask
from wire.tls import Kind
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc


async def busiest(task: FailoverTask) -> tuple[str, list[str]]:
    """The victim (the producer host with the most leased VMs) and the consumer VMs it serves."""
    async with cluster_channel(task.registry, Kind.REGISTRY) as reg:
        leases = (await rpb_grpc.InspectionStub(reg).ListLeases(
            rpb.ListLeasesRequest(service=task.service), timeout=5)).leases
    counts = Counter(m.host_id for lease in leases for m in lease.members if m.host_id in task.victims)
    victim = counts.most_common(1)[0][0] if counts else next(iter(task.victims))
    return victim, sorted({lease.consumer_vm for lease in leases if any(m.host_id == victim for m in lease.members)})


async def failover(task: FailoverTask) -> FailoverResult:
    requests: list[checker.Request] = []
    samples: list[str] = []
    stopping = False
    payload = random.randbytes(task.payload)
    channel = cluster_channel(task.consumer, Kind.CONSUMER)
    await asyncio.wait_for(channel.channel_ready(), 10)
    stub = cpb_grpc.ConsumerHostStub(channel)

    async def worker(address: str, token: str, idempotent: bool) -> None:
        request = cpb.SendRequest(network=NETWORK, src=address, token=token, target=task.target,
                                  payload=payload, idempotent=idempotent)
        while not stopping:
            sent = time.monotonic_ns()
            try:
                await stub.Send(request, timeout=REQUEST_TIMEOUT_S)
                code = checker.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                if code == "DEADLINE_EXCEEDED" and exc.details() == "Deadline Exceeded":
                    code = "UNANSWERED"  # the consumer host gave no outcome of its own in time
                if len(samples) < 3:
                    samples.append(f"{code}: {exc.details()}")
            requests.append(checker.Request(len(requests), address, idempotent, sent,
                                            (checker.Outcome(code, time.monotonic_ns()),)))

    workers = [asyncio.create_task(worker(a, t, i % 2 == 1))
               for i, (a, t) in enumerate(task.vms) for _ in range(task.workers_per_vm)]
    await asyncio.sleep(task.before_s)
    victim, hit = await busiest(task)
    killed_ns = time.monotonic_ns()
    os.kill(task.victims[victim], signal.SIGKILL)  # a process the harness started for us
    await asyncio.sleep(task.after_s)
    stopping = True
    await asyncio.gather(*workers)
    await channel.close()

    after = checker.recovered_after(requests, killed_ns, [a for a, _ in task.vms])
    recovered = {a: None if after.get(a) is None else round(after[a], 4) for a, _ in task.vms}  # type: ignore[arg-type]
    codes = Counter(r.outcomes[0].status for r in requests)
    errors_idem = sum(1 for r in requests if r.outcomes[0].status != checker.OK and r.idempotent)
    return FailoverResult(
        victim, hit, len(requests), codes.pop(checker.OK, 0), sum(codes.values()), dict(codes), errors_idem,
        codes.get("UNANSWERED", 0), samples, recovered,
        max((v for v in recovered.values() if v is not None), default=None)
        if all(v is not None for v in recovered.values()) else None)
