"""`leasenet demo`: the main job on one machine. An embedded etcd (or LEASENET_ETCD_ENDPOINTS),
two registries, two producer hosts and a consumer host, each its own process; three consumer VMs
send requests to one service; one producer host is SIGKILLed midway. Prints the leases, the
requests each producer VM served, and what the failover did; --json prints the summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from leasenet import checker
from leasenet.checker import ClaimLog, Recording, Request
from leasenet.cluster import ConsumerVm, LocalCluster, consumer_toml, write_toml
from leasenet.console import CliError
from leasenet.inspection import LEASE_HEADER, table
from mapping.config import ClusterConfig, to_toml
from mapping.model import LeasePolicy, Network, Service, parse_target
from wire import metrics, rpc
from wire.tls import Kind, TlsMaterial
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

NETWORK, VNI, SERVICE, TARGET = "blue", 100, "compute", "10.1.255.1:7"
CONSUMER_VMS = [("10.1.0.1", "token-a"), ("10.1.0.2", "token-b"), ("10.1.0.3", "token-c")]
WORKERS_PER_VM = 3
VMS_PER_HOST = 6  # enough that the surviving host alone can hold every pool at max_pool
REQUEST_TIMEOUT_S = 5.0

CLUSTER = ClusterConfig(networks=[Network(NETWORK, VNI)],
                        services=[Service(SERVICE, NETWORK, *parse_target(TARGET),
                                          LeasePolicy(min_pool=1, max_pool=2, lease_ttl_s=5, idle_release_s=30))])


@dataclass
class Summary:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    lost: int = 0
    leases_granted: int = 0
    exclusivity_violations: int = 0
    failover_s: float | None = None
    killed_host: str = ""
    errors_by_code: dict[str, int] = field(default_factory=dict)
    per_vm_requests: dict[str, int] = field(default_factory=dict)
    leases: list[dict[str, object]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)  # process -> host:port of its /metrics, at the end
    metrics_ok: float = 0  # the consumer host's leasenet_requests_total{code="OK"}: the same as ok


async def drive(consumer_address: str, total: int, half_done: asyncio.Event,
                tls: TlsMaterial | None = None) -> list[Request]:
    """Every consumer VM sends its share with a few concurrent workers; idempotent requests. Each
    comes back as the checker's record of a request and its outcome."""
    outcomes: list[Request] = []
    ids = iter(range(1, total + 1))
    async with rpc.channel(consumer_address, tls, Kind.CONSUMER) as channel:
        stub = cpb_grpc.ConsumerHostStub(channel)

        async def worker(address: str, token: str, share: int) -> None:
            for _ in range(share):
                request_id = next(ids)
                sent = time.monotonic_ns()
                try:
                    await stub.Send(cpb.SendRequest(network=NETWORK, src=address, token=token, target=TARGET,
                                                    payload=f"job {request_id}".encode(), request_id=request_id,
                                                    idempotent=True), timeout=REQUEST_TIMEOUT_S)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                outcomes.append(Request(request_id, address, True, sent,
                                        (checker.Outcome(code, time.monotonic_ns()),)))
                if len(outcomes) >= total // 2:
                    half_done.set()

        per_worker = total // (len(CONSUMER_VMS) * WORKERS_PER_VM)
        shares = [per_worker] * (len(CONSUMER_VMS) * WORKERS_PER_VM)
        shares[0] += total - sum(shares)
        workers = [worker(a, t, shares[i * WORKERS_PER_VM + w])
                   for i, (a, t) in enumerate(CONSUMER_VMS) for w in range(WORKERS_PER_VM)]
        await asyncio.gather(*workers)
    return outcomes


async def watch_leases(registry: str, log: ClaimLog, synced: asyncio.Event, tls: TlsMaterial | None = None) -> None:
    """Follow a registry's lease events into `log`, the claims the checker reads (`tls`: the
    operator's material; None: plaintext)."""
    async with rpc.channel(registry, tls, Kind.REGISTRY) as channel:
        async for event in rpb_grpc.InspectionStub(channel).WatchLeases(rpb.WatchLeasesRequest()):
            if event.type == rpb.LeaseEvent.SYNCED:
                synced.set()
                continue
            lease = event.lease
            log.update(lease.lease_id, f"{lease.consumer_network}/{lease.consumer_vm}", lease.consumer_host,
                       {m.vm_id: m.fencing_token for m in lease.members}, event.revision,
                       ended=event.type == rpb.LeaseEvent.ENDED, seen_ns=time.monotonic_ns())


async def busiest_producer(registry: str, tls: TlsMaterial | None) -> str:
    counts = Counter(m.host_id for lease in await final_leases(registry, tls) for m in lease.members)
    return counts.most_common(1)[0][0] if counts else "producer1"


async def final_leases(registry: str, tls: TlsMaterial | None) -> list[rpb.Lease]:
    async with rpc.channel(registry, tls, Kind.REGISTRY) as channel:
        return list((await rpb_grpc.InspectionStub(channel).ListLeases(rpb.ListLeasesRequest(), timeout=5)).leases)


def failover_seconds(outcomes: list[Request], killed_ns: int) -> float:
    """For each consumer VM, from the kill to its first success on a request sent after the kill;
    the longest of these is how long traffic took to flow again."""
    recovered = [s for s in checker.recovered_after(outcomes, killed_ns, [a for a, _ in CONSUMER_VMS]).values()
                 if s is not None]
    return round(max(recovered), 3) if recovered else float("nan")


async def run(cluster: LocalCluster, total: int, say: callable) -> Summary:  # type: ignore[valid-type]
    work = cluster.workdir
    config = write_toml(work / "cluster.toml", to_toml(CLUSTER))
    say(f"starting etcd in {work}" + (" (plaintext: --insecure)" if cluster.insecure
                                       else f" with mutual TLS everywhere (CA and certificates in {cluster.tls_dir})"))
    await asyncio.to_thread(cluster.start_etcd)
    say(f"etcd at {','.join(cluster.etcd_endpoints)}; starting 2 registries, 2 producer hosts, 1 consumer host")
    registries = [(await asyncio.to_thread(cluster.registry, f"registry{i}", config)).address for i in (1, 2)]
    for i in (1, 2):
        await asyncio.to_thread(cluster.producer, f"producer{i}", network=NETWORK, service=SERVICE, vms=VMS_PER_HOST,
                                vm_address_start=f"10.1.{i}.1", handler="work",
                                extra=("--handler-option", "iterations=2000"))
    consumer = await asyncio.to_thread(cluster.consumer, "consumer1", config=write_toml(
        work / "consumer1.toml", consumer_toml(ConsumerVm(NETWORK, a, t) for a, t in CONSUMER_VMS)),
                                       registries=registries)
    claims, synced, half_done = ClaimLog(), asyncio.Event(), asyncio.Event()
    tls = cluster.operator_tls
    watcher = asyncio.create_task(watch_leases(registries[0], claims, synced, tls))
    async with asyncio.timeout(10):  # not wait_for: in 3.11 it can swallow a Ctrl-C's cancellation
        await synced.wait()

    say(f"{len(CONSUMER_VMS)} consumer VMs send {total} requests to {SERVICE} at {TARGET}")
    traffic = asyncio.create_task(drive(consumer.address, total, half_done, tls))
    await half_done.wait()
    victim = await busiest_producer(registries[0], tls)
    say(f"halfway: SIGKILL {victim} (the producer host with the most leased VMs)")
    killed_ns = time.monotonic_ns()
    cluster.signal(victim, signal.SIGKILL)
    outcomes = await traffic
    leases = await final_leases(registries[0], tls)
    watcher.cancel()

    recorded = checker.load(executions=sorted(work.glob("*.history.jsonl")))
    executions = recorded.executions
    exclusivity = checker.check(Recording([], executions, checker.claims_from_lines(claims.lines), [], []))
    codes = Counter(o.outcome.status for o in outcomes if o.outcome is not None)
    s = Summary(requests=total, ok=codes.pop("OK", 0), killed_host=victim)
    s.errors = sum(codes.values())
    s.errors_by_code = dict(codes)
    s.lost = total - s.ok - s.errors
    s.leases_granted = len(claims.leases)
    s.violations = [f"{v.kind}: {v.detail}" for v in exclusivity.violations]
    s.exclusivity_violations = len(s.violations)
    s.failover_s = failover_seconds(outcomes, killed_ns)
    s.per_vm_requests = dict(sorted(Counter(e.vm for e in executions if e.ok).items()))
    s.leases = [{"lease_id": l.lease_id, "consumer_vm": l.consumer_vm, "members": [m.vm_id for m in l.members]}
                for l in leases]
    s.metrics = {name: proc.metrics for name, proc in cluster.procs.items() if proc.alive and proc.metrics}
    scraped = await asyncio.to_thread(metrics.scrape, consumer.metrics)
    s.metrics_ok = metrics.total(scraped, "leasenet_requests_total", kind="consumer_host", code="OK")
    return s


def render(s: Summary) -> str:
    rows = [[str(l["lease_id"]), SERVICE, f"{NETWORK}/{l['consumer_vm']}", "consumer1",
             str(len(l["members"])), ", ".join(l["members"])] for l in s.leases]  # type: ignore[arg-type]
    lines = ["", "Leases now:", table(rows, LEASE_HEADER), "", "Requests served per producer VM:"]
    lines += [f"  {vm:<16} {n}" for vm, n in s.per_vm_requests.items()]
    lines += ["", f"Failover: {s.killed_host} was SIGKILLed halfway; traffic flowed again after {s.failover_s} s; "
                  f"its VMs left their pools and the pools refilled from the other host."]
    errors = ", ".join(f"{k} {v}" for k, v in s.errors_by_code.items()) or "none"
    lines += [f"Requests: {s.requests} sent, {s.ok} ok, {s.errors} errors ({errors}), {s.lost} lost",
              f"Leases granted: {s.leases_granted}; exclusivity violations: {s.exclusivity_violations}"]
    lines += [f"  ! {v}" for v in s.violations]
    if s.metrics:
        endpoints = ", ".join(f"{name} {address}" for name, address in s.metrics.items())
        lines += ["", f"Metrics (Prometheus, listed in METRICS.md): the consumer host counted {s.metrics_ok:.0f} OK "
                      f"requests in leasenet_requests_total. Every process served /metrics ({endpoints}; they "
                      f"stopped with the demo). On a running cluster, start each process with --metrics-listen "
                      f"HOST:PORT and look:",
                  f"  curl -s http://{s.metrics.get('consumer1', '127.0.0.1:9100')}/metrics | grep '^leasenet_'"]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> None:
    if args.requests < 20:
        raise CliError("--requests must be at least 20 (the demo kills a host halfway)")
    if args.insecure and args.tls_dir:
        raise CliError("--insecure contradicts --tls-dir: give one of them")
    endpoints = rpc.split_addresses(args.etcd_endpoints, "etcd endpoint") if args.etcd_endpoints else []
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="leasenet-demo-")
    workdir = Path(args.workdir or tmp.name)  # type: ignore[union-attr]

    def say(text: str) -> None:
        if not args.json:
            print(f"[demo] {text}", flush=True)

    cluster = LocalCluster(workdir, etcd_endpoints=endpoints, insecure=args.insecure,
                           tls_dir=Path(args.tls_dir) if args.tls_dir else None, metrics=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    try:
        summary = asyncio.run(run(cluster, args.requests, say))
    finally:
        cluster.close()  # also on Ctrl-C: every process we started is stopped
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        out = asdict(summary)
        print(json.dumps(out, indent=2))
    else:
        print(render(summary))
    if summary.lost or summary.exclusivity_violations:
        raise CliError(f"demo failed its promises: {summary.lost} lost, "
                       f"{summary.exclusivity_violations} exclusivity violations")
