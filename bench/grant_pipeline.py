"""Grants in flight at once (issue 19 item 3): grants/s and the registries' CPU per grant/release cycle
(bench/PROFILE.md, "Where a grant's CPU goes").

    .venv/bin/python bench/grant_pipeline.py [--workers 16] [--seconds 15] [--lanes 1|2] [--fleet] [--watch]
        [--tree DIR | --registry-trees A,B] [--rate R] [--profile DIR] [--unary] [--json] [--keep]

Starts the embedded etcd (mutual TLS and auth, as `leasenet bench --scale`), two registries, a consumer
host's presence (the pools hang on its lease) and, per registry, a service it owns with a producer host
of 200 VMs. Then `--workers` consumer VMs per service each lease a pool of 4 at the service's owner and
release it, again and again, for `--seconds` (after a warm-up), as the scale bench's churn does. It
prints grants/s, the CPU per cycle of each process from /proc (the registries, etcd, the rest, this
driver), etcd's requests per cycle (its own counters), the registries' lost races and the machine's
load: CPU per cycle is the steadier figure on a shared machine, grants/s moves with the neighbours,
and CPU per cycle falls as the rate rises (batching), so compare runs at a like rate.

`--lanes 1`: only r1's service is leased, so r2's CPU is what following the grants costs. `--fleet`:
also the scale bench's big fleet in every replica (10 producer hosts of 1,000 VMs, 4 consumer hosts'
presences holding 2,000 pools). `--watch`: double claims checked from WatchLeases (the subscriber costs
r1 CPU of its own). `--workers 0`: the idle processes' CPU per second. `--tree DIR`: run the cluster's
processes from another checkout (e.g. `git archive <commit> | tar -x -C DIR`), to interleave
before/after runs; `--registry-trees A,B`: r1 from A and r2 from B in one cluster, one load for both.
`--rate R`: offer R cycles/s in all. `--profile DIR`: each registry samples its own stacks during the
measured window (a SIGPROF sampler on its CPU time, bench/profiled/sitecustomize.py), writes
DIR/<name>.stacks (collapsed stacks), and the functions where the samples fall are printed. No
assertion on timing anywhere: this is a measuring tool, not a test."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from typing import Any

import grpc.aio
from google.protobuf.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402 - run as a script

from consumer_host.leasing_stream import LeasingStream  # noqa: E402
from leasenet.bench.measure import CpuMeter, cpu_seconds, etcd_counts  # noqa: E402
from leasenet.checker import ClaimLog, claims_from_lines, double_leases  # noqa: E402
from leasenet.cluster import LocalCluster  # noqa: E402
from leasenet.demo import watch_leases  # noqa: E402
from mapping.config import ClusterConfig, to_toml  # noqa: E402
from mapping.model import LeasePolicy, Network, Service  # noqa: E402
from mapping.ownership import owner  # noqa: E402
from wire import rpc  # noqa: E402
from wire.errors import LeasenetError  # noqa: E402
from wire.tls import Identity, Kind  # noqa: E402
from wire.v1 import registry_pb2 as rpb  # noqa: E402
from wire.v1 import registry_pb2_grpc as rpb_grpc  # noqa: E402

NETWORK, VNI = "bench", 4242
POOL = 4
VMS_PER_SERVICE = 200
GRANTS_HOST = Identity(Kind.CONSUMER, "pipeline-grants")
REGISTRIES = ("r1", "r2")
# one service owned by each registry (rendezvous hashing over r1, r2), as the scale bench's churn
SERVICES = tuple(next(f"churn-{n}" for n in range(100) if owner(f"churn-{n}", REGISTRIES) == r) for r in REGISTRIES)
FLEET_SERVICE, FLEET_HOSTS, FLEET_VMS, FLEET_CONSUMERS, FLEET_POOLS = "scale", 10, 1000, 4, 2000
PROFILED = Path(__file__).resolve().parent / "profiled"
REPO = Path(__file__).resolve().parent.parent


def cluster_config() -> ClusterConfig:
    policy = LeasePolicy(min_pool=POOL, max_pool=POOL, lease_ttl_s=30, idle_release_s=600)
    return ClusterConfig([Network(NETWORK, VNI)], [
        *(Service(name, NETWORK, f"10.7.255.{20 + i}", 7, policy) for i, name in enumerate(SERVICES)),
        Service(FLEET_SERVICE, NETWORK, "10.7.255.10", 7, policy)])


def start(cluster: LocalCluster, fleet: bool, registry_paths: list[str]) -> dict[str, str]:
    """The cluster; returns each service's owner registry address. `registry_paths`: the PYTHONPATH
    of r1 and of r2, when it is not the other processes' (the checkout each runs from)."""
    cluster.start_etcd()
    config = cluster.workdir / "cluster.toml"
    config.write_text(to_toml(cluster_config()))
    addresses = {}
    shared = dict(cluster.env)
    for name, path in zip(REGISTRIES, registry_paths or [shared.get("PYTHONPATH", "")] * len(REGISTRIES)):
        cluster.env["PYTHONPATH"] = path
        addresses[name] = cluster.registry(name, config).address
    cluster.env = shared
    cluster.start_presence(Kind.CONSUMER, GRANTS_HOST.id)
    for i, service in enumerate(SERVICES):
        cluster.producer(f"p-{service}", network=NETWORK, service=service, vms=VMS_PER_SERVICE,
                         vm_address_start=f"10.{17 - i}.0.1", history=False)
    if fleet:
        for h in range(FLEET_HOSTS):
            cluster.producer(f"p{h + 1}", network=NETWORK, service=FLEET_SERVICE, vms=FLEET_VMS,
                             vm_address_start=f"10.{21 + h}.0.1", history=False)
        for c in range(FLEET_CONSUMERS):
            cluster.start_presence(Kind.CONSUMER, f"c{c + 1}")
    return {service: addresses[owner(service, REGISTRIES) or "r1"] for service in SERVICES}


async def hold_fleet_pools(cluster: LocalCluster, registry: str) -> int:
    """FLEET_POOLS pools of the fleet service, held by the fleet's consumer hosts' presences."""
    held = 0

    async def one(host: str, n: int, stub: rpb_grpc.LeasingStub) -> None:
        nonlocal held
        await stub.RequestLease(rpb.RequestLeaseRequest(service=FLEET_SERVICE, consumer_network=NETWORK,
                                                        consumer_vm=f"10.{40 + n // 62500}.{n // 250 % 250}.{1 + n % 250}",
                                                        consumer_host=host), timeout=30)
        held += 1

    per = FLEET_POOLS // FLEET_CONSUMERS
    for c in range(FLEET_CONSUMERS):
        host = f"c{c + 1}"
        async with rpc.channel(registry, cluster.tls(Identity(Kind.CONSUMER, host)), Kind.REGISTRY) as channel:
            stub = rpb_grpc.LeasingStub(channel)
            for first in range(0, per, 50):
                await asyncio.gather(*(one(host, c * per + n, stub) for n in range(first, min(first + 50, per))))
    return held


async def churn(cluster: LocalCluster, lanes: dict[str, str], workers: int, warmup_s: float, seconds: float,
                watch: bool, profile: bool, rate: float, unary: bool = False) -> dict[str, object]:
    """Workers lease and release at each service's owner; CPU metered over the measured window only."""
    pids = {name: proc.process.pid for name, proc in cluster.procs.items() if proc.process is not None}
    assert cluster.etcd is not None and cluster.etcd.members[0].process is not None
    pids["etcd"] = cluster.etcd.members[0].process.pid
    pids["driver"] = os.getpid()
    meter = CpuMeter(pids)
    claims, synced = ClaimLog(), asyncio.Event()
    watcher = None
    if watch:
        watcher = asyncio.create_task(watch_leases(next(iter(lanes.values())), claims, synced, cluster.operator_tls))
        await asyncio.wait_for(synced.wait(), 30)
    tls = cluster.tls(GRANTS_HOST)
    channels = {service: rpc.channel(address, tls, Kind.REGISTRY) for service, address in lanes.items()}
    measuring = False
    grants = 0
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    stop = asyncio.Event()

    every = len(lanes) * workers / rate if rate else 0.0  # a worker's cycles start this far apart

    # as a consumer host asks (one stream of calls per registry), or with `unary` calls, to compare
    streams = {service: LeasingStream(rpb_grpc.LeasingStub(channel), service) for service, channel in channels.items()}

    async def ask(service: str, method: str, request: Message) -> Any:
        if unary:
            try:
                return await getattr(rpb_grpc.LeasingStub(channels[service]), method)(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise rpc.error_from_rpc(exc, service) from None
        return await streams[service].call(method, request, 10)

    async def worker(service: str, n: int) -> None:
        nonlocal grants
        rng = random.Random(n)
        consumer = f"10.{60 + n // 62500}.{n // 250 % 250}.{1 + n % 250}"
        due = time.perf_counter() + rng.uniform(0, every)
        while not stop.is_set():
            if every:  # paced: the same offered load for every tree compared, so that batching is alike
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due = max(due + every, time.perf_counter() - every)
            began = time.perf_counter()
            try:
                lease = await ask(service, "RequestLease", rpb.RequestLeaseRequest(
                    service=service, consumer_network=NETWORK, consumer_vm=consumer))
                await ask(service, "ReleaseLease", rpb.LeaseRef(lease_id=lease.lease_id))
            except LeasenetError as exc:
                if measuring:
                    errors[exc.code.name] += 1
                await asyncio.sleep(rng.uniform(0.001, 0.005))
                continue
            if measuring:
                grants += 1
                latencies.append(time.perf_counter() - began)

    if not workers:  # idle: what the processes cost with no grant at all
        meter.begin()
        await asyncio.sleep(seconds)
        meter.end()
        return {name: round(used * 1000 / seconds, 1) for name, used in meter.used.items()} | {
            "unit": "ms of CPU per second, idle", "load": [round(x, 2) for x in os.getloadavg()]}
    tasks = [asyncio.create_task(worker(service, lane * workers + w))
             for lane, service in enumerate(lanes) for w in range(workers)]
    await asyncio.sleep(warmup_s)
    load_before = os.getloadavg()
    measuring = True
    if profile:
        signal_registries(cluster, signal.SIGUSR1)
    etcd_before = etcd_counts(cluster.etcd.members[0].metrics_url)
    meter.begin()
    def main_thread(name: str) -> float:  # a registry's event loop; grpc's own threads are the rest
        return cpu_seconds(pids[name], thread=pids[name]) or 0.0

    threads = {name: main_thread(name) for name in REGISTRIES}
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    meter.end()
    etcd_sent = etcd_counts(cluster.etcd.members[0].metrics_url) - etcd_before
    if profile:
        signal_registries(cluster, signal.SIGUSR2)
    threads = {name: main_thread(name) - before for name, before in threads.items()}
    elapsed = time.perf_counter() - started
    measuring = False
    stop.set()
    await asyncio.gather(*tasks)
    for stream in streams.values():
        await stream.close()
    for channel in channels.values():
        await channel.close()
    violations: list[str] = []
    if watcher is not None:
        await asyncio.sleep(0.5)  # the last lease events
        watcher.cancel()
        violations = [v.detail for v in double_leases(claims_from_lines(claims.lines))]
    latencies.sort()
    used = meter.used
    registries = sum(used.get(name, 0.0) for name in REGISTRIES)
    others = sum(s for name, s in used.items() if name not in (*REGISTRIES, "etcd", "driver"))
    return {
        "cycles": grants, "seconds": round(elapsed, 2), "grants_per_s": round(grants / elapsed, 1),
        "registries_ms_per_cycle": round(registries * 1000 / grants, 3) if grants else None,
        "per_registry_ms_per_cycle": {n: round(used.get(n, 0.0) * 1000 / grants, 3) for n in REGISTRIES} if grants else {},
        "etcd_ms_per_cycle": round(used.get("etcd", 0.0) * 1000 / grants, 3) if grants else None,
        "registries_main_thread_share": round(sum(threads.values()) / registries, 2) if registries else None,
        "others_ms_per_cycle": round(others * 1000 / grants, 3) if grants else None,
        "driver_ms_per_cycle": round(used.get("driver", 0.0) * 1000 / grants, 3) if grants else None,
        "all_ms_per_cycle": round(sum(used.values()) * 1000 / grants, 3) if grants else None,
        "registries_cpu_share": round(registries / elapsed, 2),
        "cycle_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "cycle_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "etcd_requests_per_cycle": {method: round(n / grants, 2) for method, n in sorted(etcd_sent.items())
                                    if n >= grants / 100} if grants else {},
        "errors": dict(errors), "double_claims": len(violations), "violations": violations[:5],
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def signal_registries(cluster: LocalCluster, sig: int) -> None:
    """Start (SIGUSR1) or stop and write (SIGUSR2) the registries' profiles (bench/profiled/)."""
    for name in REGISTRIES:
        os.kill(cluster.procs[name].process.pid, sig)  # type: ignore[union-attr]


def wait_for_profiles(where: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all((where / f"{n}.stacks").exists() for n in REGISTRIES):
        time.sleep(0.2)


def print_profile(path: Path, top: int) -> None:
    """Where a registry's samples fall (bench/profiled/): each function's share of the samples with it
    on the stack (inclusive) and at the top of the stack (own), our code's functions only."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"--- {path.name}: {total} samples (1 ms of CPU each)")
    print("inclusive:")
    for frame, n in inclusive.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("own:")
    for frame, n in own.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16, help="consumer VMs leasing at once per service")
    parser.add_argument("--seconds", type=float, default=15.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=0.0, help="offer this many cycles/s in all (0: as many as "
                        "the workers complete); CPU per cycle depends on the load (batching), so compare at one rate")
    parser.add_argument("--lanes", type=int, default=2, choices=(1, 2),
                        help="services leased (1: only r1's, so r2's CPU is what following the grants costs)")
    parser.add_argument("--fleet", action="store_true", help="the scale bench's big fleet and 2,000 pools too")
    parser.add_argument("--tree", type=Path, help="run the cluster's processes from this checkout")
    parser.add_argument("--registry-trees", type=lambda text: [Path(t) for t in text.split(",")], default=[],
                        help="A,B: r1 runs from checkout A, r2 from B (both registries do the same work: one "
                        "service each, every event followed), so one run compares two trees under one load")
    parser.add_argument("--profile", type=Path, help="sample the registries' stacks (bench/profiled/), written here")
    parser.add_argument("--watch", action="store_true", help="check for double claims from WatchLeases (a "
                        "subscriber costs the registry it watches CPU per cycle of its own)")
    parser.add_argument("--unary", action="store_true", help="ask with unary calls, not on Leasing.Calls streams "
                        "(as a consumer host asks a registry of a release before the stream)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="leasenet-pipeline-"))
    # `python -m leasenet` puts its working directory first on sys.path: from a checkout's root, every
    # process would run that checkout, whatever --tree says
    os.chdir(workdir)
    cluster = LocalCluster(workdir)
    profiled = [str(PROFILED)] if args.profile else []
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        cluster.env["LEASENET_BENCH_PROFILE"] = str(args.profile.resolve())
    cluster.env["PYTHONPATH"] = os.pathsep.join([str((args.tree or REPO).resolve()), *profiled])
    registry_paths = [os.pathsep.join([str(tree.resolve()), *profiled]) for tree in args.registry_trees]
    try:
        lanes = dict(list(start(cluster, args.fleet, registry_paths).items())[:args.lanes])
        pools = asyncio.run(hold_fleet_pools(cluster, lanes[SERVICES[0]])) if args.fleet else 0
        result = asyncio.run(churn(cluster, lanes, args.workers, args.warmup, args.seconds, args.watch,
                                   bool(args.profile), args.rate, args.unary))
        result |= {"calls": "unary" if args.unary else "stream", "rate": args.rate, "workers_per_service": args.workers, "services": len(lanes), "fleet_pools": pools,
                   "tree": str(args.tree or "."), "profiled": bool(args.profile),
                   "registry_trees": {n: str(t) for n, t in zip(REGISTRIES, args.registry_trees)}}
        if args.profile:
            wait_for_profiles(args.profile)
    finally:
        cluster.close()
    if isinstance(result, dict) and "cycles" in result:  # lost races, as the registries logged them
        result["conflicts"] = {name: (workdir / f"{name}.log").read_text(errors="replace").count("grant conflict")
                               for name in REGISTRIES}
        if args.keep:
            print(f"work dir: {workdir}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    if args.profile:
        for name in REGISTRIES:
            if (args.profile / f"{name}.stacks").exists():
                print_profile(args.profile / f"{name}.stacks", 45)


if __name__ == "__main__":
    main()
