"""The bench's meters: nearest-rank percentiles and medians, the median of paired ratios with its
confidence interval, CPU seconds per process from /proc, and etcd's own counters of the gRPC
messages it received."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


CONFIDENCE = 0.95


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """A distribution-free confidence interval of the median: the order statistics x(k) and
    x(n+1-k) with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at least
    `confidence` (the whole range when no k reaches it). Returns (low, high, the coverage). It
    assumes only independent samples: no normality, no resampling, the same answer every time."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values to take an interval of")

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def paired(ratios: Iterable[float | None]) -> dict[str, Any]:
    """The median of paired ratios (one per round of slices), its confidence interval (the
    spread a verdict is read against) and the quartiles of the ratios themselves."""
    found = [r for r in ratios if r is not None and r == r]
    if not found:
        return {"median": None, "low": None, "high": None, "coverage": None, "q1": None, "q3": None, "n": 0,
                "pairs": []}
    low, high, coverage = median_interval(found)
    q = statistics.quantiles(found, n=4, method="inclusive") if len(found) > 1 else [found[0]] * 3
    return {"median": round(statistics.median(found), 3), "low": round(low, 3), "high": round(high, 3),
            "coverage": round(coverage, 3), "q1": round(q[0], 3), "q3": round(q[2], 3), "n": len(found),
            "pairs": [round(r, 3) for r in found]}


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU time of a process (or of one of its threads) so far (Linux /proc; None
    elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def thread_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process's live threads, to the nanosecond (/proc/<pid>/task/*/schedstat; None
    elsewhere): precise where /proc/<pid>/stat counts clock ticks, but a thread that exited takes
    its time with it."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU seconds that some processes used during a window; a name may stand for several
    processes (a producer host's command VMs), whose seconds add up. `precise`: the threads'
    nanosecond counts where they agree with /proc/<pid>/stat's ticks (a window of a second or two
    at 1% CPU is a tick or two), the ticks where they do not (a thread exited during the window)."""

    def __init__(self, pids: Mapping[str, int | Sequence[int]], *, precise: bool = False) -> None:
        self.pids = {name: (p,) if isinstance(p, int) else tuple(p) for name, p in pids.items()}
        self.precise = precise
        self.start: dict[str, tuple[float | None, float | None]] = {}
        self.used: dict[str, float] = {}

    def _seconds(self, pids: tuple[int, ...]) -> tuple[float | None, float | None]:
        """(ticks, nanoseconds) in seconds, each None unless every process was read."""
        ticks = [cpu_seconds(pid) for pid in pids]
        fine = [thread_cpu_seconds(pid) for pid in pids] if self.precise else [None]
        return (None if not ticks or None in ticks else sum(ticks),  # type: ignore[arg-type]
                None if None in fine else sum(fine))  # type: ignore[arg-type]

    def begin(self) -> None:
        self.start = {name: self._seconds(pids) for name, pids in self.pids.items()}

    def end(self) -> None:
        tick = 1 / os.sysconf("SC_CLK_TCK")
        for name, pids in self.pids.items():
            (now, now_fine), (then, then_fine) = self._seconds(pids), self.start.get(name, (None, None))
            if now is None or then is None:
                continue
            self.used[name] = now - then
            if now_fine is not None and then_fine is not None:
                fine = now_fine - then_fine
                # each tick count is its exact time cut to whole ticks: 2 ticks apart per process at most
                if abs(fine - self.used[name]) <= 2 * tick * len(pids):
                    self.used[name] = fine


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
