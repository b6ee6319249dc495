"""Measures what sharing the services out saves (issue 12 item 5): two registries, two services,
many grants at once landing on either registry alike (as consumer hosts that do not know the owner
would send them) or each at its service's owner (as consumer hosts do), with and without ownership
(`--no-sharding`). Prints the transactions lost to a
concurrent claim ("grant conflict" in the registries' logs), the grants that gave up after every
attempt lost, and the grant latencies.

    .venv/bin/python -m tests.integration.sharding_load [--grants 120] [--concurrency 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc.aio

from leasenet.cluster import LocalCluster, write_toml
from tests.integration.test_sharding import grant_lines
from mapping.config import ClusterConfig, to_toml
from mapping.model import LeasePolicy, Network, Service, parse_target
from mapping.ownership import owner
from wire import rpc
from wire.tls import Identity, Kind
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

NAMES = ("registry1", "registry2")
CONSUMER = Identity(Kind.CONSUMER, "c1")


def services() -> list[str]:
    """Two services, one owned by each registry."""
    first = "echo"
    other = next(f"echo-{n}" for n in range(100) if owner(f"echo-{n}", NAMES) != owner(first, NAMES))
    return [first, other]


def cluster_text(names: list[str]) -> str:
    policy = LeasePolicy(min_pool=1, max_pool=2, lease_ttl_s=30, idle_release_s=120)
    return to_toml(ClusterConfig([Network("blue", 100)], [
        Service(name, "blue", *parse_target(f"10.1.255.{i + 1}:7"), policy) for i, name in enumerate(names)]))


async def grant_all(addresses: list[str], cluster: LocalCluster, names: list[str], grants: int,
                    concurrency: int, direct: bool) -> tuple[list[float], int]:
    """`grants` leases per service, sent round-robin to the registries (`direct`: each to the
    service's owner, as consumer hosts do); (latencies, failures)."""
    tls = cluster.tls(CONSUMER)
    channels = [rpc.channel(a, tls, Kind.REGISTRY) for a in addresses]
    stubs = [rpb_grpc.LeasingStub(c) for c in channels]
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failures = 0

    async def one(i: int, n: int, service: str) -> None:
        """Grant `i` of `service` (the `n`th in all): even ones to the first registry, odd to the second."""
        nonlocal failures
        async with gate:
            started = time.perf_counter()
            try:
                to = NAMES.index(owner(service, NAMES)) if direct else i % len(stubs)  # type: ignore[arg-type]
                await stubs[to].RequestLease(rpb.RequestLeaseRequest(
                    service=service, consumer_network="blue", consumer_vm=f"10.1.{100 + n // 250}.{n % 250 + 1}"),
                    timeout=20)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                failures += 1
                print(f"  grant failed: {exc.code().name} {exc.details()}")

    try:
        await asyncio.gather(*(one(i, i * len(names) + k, s) for i in range(grants) for k, s in enumerate(names)))
    finally:
        for c in channels:
            await c.close()
    return latencies, failures


def run(sharding: bool, grants: int, concurrency: int, vms: int, direct: bool = False) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="leasenet-sharding-load-"))
    names = services()
    with LocalCluster(workdir) as cluster:
        cluster.start_etcd()
        config = write_toml(workdir / "cluster.toml", cluster_text(names))
        registries = [cluster.spawn(name, "registry", "--host-id", name, "--listen", f"{cluster.host}:0",
                                    "--cluster-config", str(config), *([] if sharding else ["--no-sharding"]))
                      for name in NAMES]
        for i, service in enumerate(names):
            cluster.producer(f"p{i + 1}", network="blue", service=service, vms=vms,
                             vm_address_start=f"10.1.{i + 1}.1", history=False)
        started = time.perf_counter()
        latencies, failures = asyncio.run(grant_all([r.address for r in registries], cluster, names, grants,
                                                    concurrency, direct))
        wall = time.perf_counter() - started
        logs = [r.log.read_text(errors="replace") for r in registries]
    shutil.rmtree(workdir, ignore_errors=True)
    ordered = sorted(latencies)
    return {"conflicts": sum(log.count("grant conflict") for log in logs),
            "grants by registry": [len(grant_lines(log)) for log in logs],  # type: ignore[dict-item]
            "failed": failures, "wall_s": wall, "p50_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=120, help="leases per service")
    parser.add_argument("--vms", type=int, default=128, help="producer VMs per service")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"2 registries, 2 services x {args.vms} VMs, {args.grants} grants per service, "
          f"concurrency {args.concurrency}, sent round-robin to both registries")
    for r in range(args.rounds):
        for sharding, direct in ((False, False), (True, False), (True, True)):
            figures = run(sharding, args.grants, args.concurrency, args.vms, direct)
            mode = "on, sent to the owner" if direct else "on, half forwarded" if sharding else "off"
            print(f"round {r + 1} ownership {mode}: " +
                  "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
