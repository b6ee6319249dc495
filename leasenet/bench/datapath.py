"""The load-generator role (data path): a consumer VM for the overlay and a plain client for the
direct server and the relay, in the unary and the stream style, slice after slice as the harness
lists them (the targets of a cell alternate, round after round)."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc.aio

from leasenet.bench.measure import CpuMeter, cluster_channel, etcd_counts, meter_window, ms, percentile
from leasenet.bench.plans import REQUEST_TIMEOUT_S, Cell, CellResult, LoadResult, LoadTask
from wire import rpc
from wire.tls import Kind
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc


@dataclass
class Tally:
    """What one cell counted while it ran."""

    sent: int = 0
    answered: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


async def unary_cell(call: Callable[..., Awaitable[Any]], requests: list[Any], concurrency: int, warmup_s: float,
                     duration_s: float, meter: CpuMeter) -> Tally:
    """C callers, each making its next unary call (e.g. a stub's Send) when the last one returned;
    caller i sends requests[i mod len(requests)] (here: acts as that consumer VM)."""
    clock = time.perf_counter
    measure_from = clock() + warmup_s
    end = measure_from + duration_s
    tally = Tally()

    async def worker(request: Any) -> None:
        while (t0 := clock()) < end:
            tally.sent += 1
            try:
                await call(request, timeout=REQUEST_TIMEOUT_S)
                failed = None
            except grpc.aio.AioRpcError as exc:
                failed = exc.code().name
            t1 = clock()
            tally.answered += 1
            if failed is not None:
                tally.errors[failed] += 1
                continue
            tally.ok += 1
            if measure_from <= t1 <= end:
                tally.latencies.append(t1 - t0)

    await asyncio.gather(meter_window(meter, measure_from, end),
                         *(worker(requests[i % len(requests)]) for i in range(concurrency)))
    return tally


async def stream_cell(open_stream: Callable[..., Any], requests: list[Any], concurrency: int, warmup_s: float,
                      duration_s: float, meter: CpuMeter) -> Tally:
    """C requests in flight on one SendStream; the answer to slot i's request lets slot i send its
    next one (slot i acts as consumer VM i mod len(requests))."""
    clock = time.perf_counter
    measure_from = clock() + warmup_s
    end = measure_from + duration_s
    tally = Tally()
    in_flight: dict[int, tuple[int, float]] = {}  # request id -> (slot, sent at)
    ids = iter(range(1, 1 << 62))
    call = open_stream(timeout=warmup_s + duration_s + 60)

    async def send(slot: int) -> None:
        request = requests[slot % len(requests)]
        request.request_id = next(ids)  # serialized by write(): one message object per slot serves
        in_flight[request.request_id] = (slot, clock())
        tally.sent += 1
        await call.write(request)

    metering = asyncio.create_task(meter_window(meter, measure_from, end))
    for slot in range(concurrency):
        await send(slot)
    async for resp in call:
        t1 = clock()
        entry = in_flight.pop(resp.request_id, None)
        if entry is None:
            tally.errors["UNEXPECTED_RESPONSE"] += 1
            continue
        slot, t0 = entry
        tally.answered += 1
        if resp.status_code:
            tally.errors[f"status {resp.status_code}"] += 1
        else:
            tally.ok += 1
            if measure_from <= t1 <= end:
                tally.latencies.append(t1 - t0)
        if t1 < end:
            await send(slot)
        elif not in_flight:
            await call.done_writing()
    await metering
    return tally


def cell_result(cell: Cell, t: Tally, meter: CpuMeter, elapsed_s: float, etcd: dict[str, int] | None = None) -> CellResult:
    """A slice's figures from what it counted: the answers inside its measured window make its
    throughput, latencies and CPU per request."""
    lat = t.latencies
    return CellResult(
        **asdict(cell), sent=t.sent, answered=t.answered, ok=t.ok, errors=dict(t.errors), measured=len(lat),
        rps=round(len(lat) / cell.duration_s, 1), p50_ms=ms(percentile(lat, 50)), p99_ms=ms(percentile(lat, 99)),
        mean_ms=ms(statistics.fmean(lat)) if lat else None, elapsed_s=round(elapsed_s, 3),
        cpu_us_per_request={k: round(v * 1e6 / len(lat), 1) for k, v in meter.used.items()} if lat else {},
        etcd=etcd or {})


async def idle_cell(cell: Cell, metrics: str) -> CellResult:
    """Nothing sent: what etcd sees without traffic (its background rate)."""
    before = await asyncio.to_thread(etcd_counts, metrics)
    started = time.perf_counter()
    await asyncio.sleep(cell.duration_s)
    after = await asyncio.to_thread(etcd_counts, metrics)
    return CellResult(**asdict(cell), elapsed_s=time.perf_counter() - started, etcd=dict(after - before))


def counts_etcd(target: str) -> bool:
    """The slices around which etcd's counters are read: the plaintext overlay's (the TLS
    overlay's etcd serves its metrics over TLS only)."""
    return target in ("overlay", "overlay-again")


async def load(task: LoadTask) -> LoadResult:
    channels: dict[str, grpc.aio.Channel] = {}  # one per address: overlay and overlay-again share theirs
    out = []
    for cell in task.cells:
        if cell.target == "idle":
            out.append(await idle_cell(cell, task.etcd_metrics))
            continue
        address = task.addresses[cell.target]
        if address not in channels:
            # the *-tls targets over mutual TLS as the operator (the harness's CA), the others in plaintext
            channels[address] = (cluster_channel(address, Kind.CONSUMER) if cell.target.endswith("-tls")
                                 else rpc.channel(address))
            await asyncio.wait_for(channels[address].channel_ready(), 10)
        stub = cpb_grpc.ConsumerHostStub(channels[address])
        payload = random.randbytes(cell.payload)
        requests = [cpb.SendRequest(network=network, src=src, token=token, target=target, payload=payload)
                    for network, src, token, target in task.consumers]
        overlay = counts_etcd(cell.target)
        before = await asyncio.to_thread(etcd_counts, task.etcd_metrics) if overlay else Counter()
        started = time.perf_counter()
        meter = CpuMeter({**task.pids.get(cell.target, {}), "client": os.getpid()})
        if cell.mode == "unary":
            t = await unary_cell(stub.Send, requests, cell.concurrency, cell.warmup_s, cell.duration_s, meter)
        else:
            t = await stream_cell(stub.SendStream, requests, cell.concurrency, cell.warmup_s, cell.duration_s, meter)
        elapsed = time.perf_counter() - started
        etcd = dict(await asyncio.to_thread(etcd_counts, task.etcd_metrics) - before) if overlay else {}
        out.append(cell_result(cell, t, meter, elapsed, etcd))
    for channel in channels.values():
        await channel.close()
    return LoadResult(out)
