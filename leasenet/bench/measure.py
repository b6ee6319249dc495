"""The bench's meters: nearest-rank percentiles and medians, CPU seconds per process from /proc,
and etcd's own counters of the gRPC messages it received."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable

import grpc.aio

from wire import rpc
from wire.tls import Identity, Kind, TlsFiles, TlsMaterial


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of unsorted values (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def median(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None and v == v]  # drop None and nan
    return statistics.median(found) if found else None


def ms(seconds: float) -> float | None:
    return round(seconds * 1000, 3) if seconds == seconds else None  # nan (no samples) -> None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b and a == a and b == b else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU seconds that some processes used during a window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start: dict[str, float | None] = {}
        self.used: dict[str, float] = {}

    def begin(self) -> None:
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def end(self) -> None:
        for name, pid in self.pids.items():
            now, then = cpu_seconds(pid), self.start.get(name)
            if now is not None and then is not None:
                self.used[name] = now - then


async def meter_window(meter: CpuMeter, start: float, end: float) -> None:
    """Run `meter` from `start` to `end` (time.perf_counter values)."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    meter.begin()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    meter.end()


def etcd_counts(metrics_url: str) -> Counter[str]:
    """gRPC messages etcd received, per method, from its own Prometheus endpoint."""
    counts: Counter[str] = Counter()
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                labels, _, value = line.rpartition(" ")
                method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
                counts[method] += int(float(value))
    return counts


OPERATOR = Identity(Kind.OPERATOR, "admin")
GRANTS_HOST = Identity(Kind.CONSUMER, "bench-grants")  # the grants role leases as a consumer host would


def cluster_tls(identity: Identity = OPERATOR) -> TlsMaterial | None:
    """`identity`'s material from the harness's CA (LEASENET_TLS_DIR, set for every role); None: plaintext."""
    tls_dir = os.environ.get("LEASENET_TLS_DIR")
    return TlsFiles.in_dir(tls_dir, identity).load() if tls_dir else None


def cluster_channel(address: str, expect: Kind, identity: Identity = OPERATOR) -> grpc.aio.Channel:
    """A channel to one of the bench cluster's servers, presenting `identity`'s certificate."""
    return rpc.channel(address, cluster_tls(identity), expect)
