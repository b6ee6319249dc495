"""`leasenet demo`: the main job on one machine, carrying a real workload. An embedded etcd (or
LEASENET_ETCD_ENDPOINTS), two registries, two producer hosts whose producer VMs are real processes
(the notebook gRPC server of examples/notebook, one process per VM, health-checked and reset
between lessees) and a consumer host, each its own process. Three consumer VMs use the notebook
through their VIP endpoints (unix sockets) with its unmodified generated client; a third of the
way in the VM process serving one of them is SIGKILLed (its host replaces it), two thirds in the
busiest producer host. Then a fourth consumer VM shows the reset between lessees: what it stored is
there while it holds its lease and gone once the lease has ended. Prints the leases, the calls each
producer VM served (from the VMs' own records) and what the failover did; --json prints the summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from examples.notebook import notebook_pb2 as nb
from examples.notebook import notebook_pb2_grpc as nb_grpc
from examples.notebook import workload
from leasenet import checker, inspection
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

NETWORK, VNI, SERVICE, TARGET = "blue", 100, "notebook", "10.1.255.1:7"
CONSUMER_VMS = [("10.1.0.1", "token-a"), ("10.1.0.2", "token-b"), ("10.1.0.3", "token-c")]
RESET_VM = ("10.1.0.4", "token-d")  # the consumer VM that shows the reset, after the traffic
VMS_PER_HOST = 4  # the surviving host alone can hold every pool (one VM each) and a VM being reset
# the producer VM: the notebook server, one process per VM; {python} is the producer host's interpreter
VM_COMMAND = "{python} -m examples.notebook.server --listen unix://{socket} --vm-id {vm_id} --workdir {workdir}"
VM_READY_S = 30.0  # how long a replaced VM may take to be registered again
# one VM per pool, so that a consumer VM's Put and its next Get reach the same notebook
CLUSTER = ClusterConfig(networks=[Network(NETWORK, VNI)],
                        services=[Service(SERVICE, NETWORK, *parse_target(TARGET),
                                          LeasePolicy(min_pool=1, max_pool=1, lease_ttl_s=5, idle_release_s=30))])


@dataclass
class Summary:
    requests: int = 0  # gRPC calls the consumer VMs made through their VIP endpoints
    ok: int = 0
    errors: int = 0
    lost: int = 0
    leases_granted: int = 0
    exclusivity_violations: int = 0
    failover_s: float | None = None
    killed_host: str = ""
    killed_vm: str = ""  # the VM process SIGKILLed a third of the way in
    vm_replaced_s: float | None = None  # from that kill until its host registered the VM's next incarnation
    errors_by_code: dict[str, int] = field(default_factory=dict)
    gets_after_put: dict[str, int] = field(default_factory=dict)  # kept / lost (VM replaced) / wrong (never)
    per_vm_requests: dict[str, int] = field(default_factory=dict)  # calls each producer VM ran (its own record)
    reset: dict[str, object] = field(default_factory=dict)
    leases: list[dict[str, object]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)  # process -> host:port of its /metrics, at the end
    metrics_ok: float = 0  # the consumer host's leasenet_calls_total{code="OK"}: the same as ok


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


async def incarnation(registry: str, tls: TlsMaterial | None, vm_id: str) -> int:
    """The VM's registered incarnation (its record's revision), 0 while it is not registered."""
    async with rpc.channel(registry, tls, Kind.REGISTRY) as channel:
        return await inspection.incarnation(rpb_grpc.InspectionStub(channel), vm_id)


async def next_incarnation(registry: str, tls: TlsMaterial | None, vm_id: str, old: int) -> float | None:
    """Seconds until the VM is registered as an incarnation other than `old`; None past VM_READY_S."""
    started = time.perf_counter()
    async with rpc.channel(registry, tls, Kind.REGISTRY) as channel:
        at = await inspection.next_incarnation(rpb_grpc.InspectionStub(channel), vm_id, old, within_s=VM_READY_S,
                                               poll_s=0.1)
    return None if at is None else round(at - started, 3)


def failover_seconds(requests: list[Request], killed_ns: int) -> float:
    """For each consumer VM, from the kill to its first success on a call started after the kill;
    the longest of these is how long traffic took to flow again."""
    vms = {r.vm for r in requests}
    recovered = [s for s in checker.recovered_after(requests, killed_ns, vms).values() if s is not None]
    return round(max(recovered), 3) if recovered else float("nan")


async def until_calls(recorder: workload.Recorder, count: int, traffic: asyncio.Task[bool]) -> None:
    while recorder.calls < count and not traffic.done():
        await asyncio.sleep(0.05)


async def show_reset(cluster: LocalCluster, consumer: str, registry: str, socket: str,
                     say: Callable[[str], None]) -> dict[str, object]:
    """A consumer VM stores a value, reads it back under its lease, gives the lease back (Detach);
    its producer VM is restarted with an empty working directory before anyone else gets it, and
    the value is gone for whoever comes next, this consumer VM included."""
    tls = cluster.operator_tls
    address, token = RESET_VM
    async with grpc.aio.insecure_channel(socket) as channel:
        stub = nb_grpc.NotebookStub(channel)
        await stub.Put(nb.PutRequest(key="secret", value=b"for my eyes only"), timeout=10)
        before = await stub.Get(nb.GetRequest(key="secret"), timeout=10)
        who = await stub.Whoami(nb.WhoamiRequest(), timeout=10)
        old = await incarnation(registry, tls, who.vm_id)
        say(f"reset: consumer VM {address} stored a value on producer VM {who.vm_id} (pid {who.pid}) and read it "
            f"back: {'kept' if before.found else 'missing!'}; now it gives its lease back")
        async with rpc.channel(consumer, tls, Kind.CONSUMER) as leasing:
            released = (await cpb_grpc.ConsumerHostStub(leasing).Detach(
                cpb.DetachRequest(network=NETWORK, address=address, token=token), timeout=10)).released_leases
        restarted_s = await next_incarnation(registry, tls, who.vm_id, old)
        after = await stub.Get(nb.GetRequest(key="secret"), timeout=10)
        now = await stub.Whoami(nb.WhoamiRequest(), timeout=10)
    say(f"reset: {released} lease released; {who.vm_id} was restarted with an empty working directory "
        f"(ready again after {restarted_s} s); the next lease ({now.vm_id}, pid {now.pid}) finds the value "
        f"{'STILL THERE' if after.found else 'gone'}")
    return {"vm": who.vm_id, "kept_under_lease": before.found, "gone_after_reset": not after.found,
            "restarted_s": restarted_s, "pid_before": who.pid, "next_vm": now.vm_id, "next_pid": now.pid}


async def run(cluster: LocalCluster, total: int, say: Callable[[str], None]) -> Summary:
    work = cluster.workdir
    config = write_toml(work / "cluster.toml", to_toml(CLUSTER))
    say(f"starting etcd in {work}" + (" (plaintext: --insecure)" if cluster.insecure
                                       else f" with mutual TLS everywhere (CA and certificates in {cluster.tls_dir})"))
    await asyncio.to_thread(cluster.start_etcd)
    say(f"etcd at {','.join(cluster.etcd_endpoints)}; starting 2 registries, 2 producer hosts of {VMS_PER_HOST} "
        f"command VMs each (the notebook gRPC server, one process per VM), 1 consumer host"
        + ("" if cluster.insecure else ", each enrolled first (`leasenet enrol`: its certificate, and an etcd user "
           "whose role writes that host's own records only)"))
    registries = [(await asyncio.to_thread(cluster.registry, f"registry{i}", config)).address for i in (1, 2)]
    vm_history = work / "vms.history.jsonl"  # every VM appends the calls it ran: their own record
    for i in (1, 2):
        await asyncio.to_thread(cluster.producer, f"producer{i}", network=NETWORK, service=SERVICE, vms=VMS_PER_HOST,
                                vm_address_start=f"10.1.{i}.1", handler=None,
                                extra=("--vm-command", f"{VM_COMMAND} --history {vm_history}"))
    sockets = {a: f"unix://{work}/vip-{a}.sock" for a, _ in [*CONSUMER_VMS, RESET_VM]}
    consumer = await asyncio.to_thread(cluster.consumer, "consumer1", config=write_toml(
        work / "consumer1.toml", consumer_toml(ConsumerVm(NETWORK, a, t, vips=((TARGET, sockets[a]),))
                                               for a, t in [*CONSUMER_VMS, RESET_VM])), registries=registries)
    claims, synced = ClaimLog(), asyncio.Event()
    tls = cluster.operator_tls
    watcher = asyncio.create_task(watch_leases(registries[0], claims, synced, tls))
    async with asyncio.timeout(10):  # not wait_for: in 3.11 it can swallow a Ctrl-C's cancellation
        await synced.wait()

    recorder = workload.Recorder(open(work / "calls.jsonl", "a", encoding="utf-8"))
    vms = workload.consumer_vms([(f"{NETWORK}/{a}", sockets[a]) for a, _ in CONSUMER_VMS], recorder)
    rounds = max(4, math.ceil(total / (len(vms) * workload.CALLS_PER_ROUND)))
    say(f"{len(vms)} consumer VMs call {SERVICE} at {TARGET} through their VIP endpoints (unix sockets) with the "
        f"notebook's own generated client: {rounds} rounds of Whoami, Put, Get, and Sleep, Scan, Append, Chat")
    traffic = asyncio.create_task(workload.run(vms, rounds, pause_s=0.02, ready_timeout_s=60))
    s = Summary()
    await until_calls(recorder, rounds * len(vms) * workload.CALLS_PER_ROUND // 3, traffic)
    s.killed_vm, pid = vms[0].served_by, vms[0].pid
    old = await incarnation(registries[0], tls, s.killed_vm)
    say(f"a third in: SIGKILL the process of producer VM {s.killed_vm} (pid {pid}), serving {vms[0].name}")
    os.kill(pid, signal.SIGKILL)
    s.vm_replaced_s = await next_incarnation(registries[0], tls, s.killed_vm, old)
    say(f"its producer host withdrew it and registered a fresh process as a new incarnation after "
        f"{s.vm_replaced_s} s; the pool it was in was refilled")
    await until_calls(recorder, rounds * len(vms) * workload.CALLS_PER_ROUND * 2 // 3, traffic)
    victim = await busiest_producer(registries[0], tls)
    say(f"two thirds in: SIGKILL {victim} (the producer host with the most leased VMs)")
    killed_ns = time.monotonic_ns()
    cluster.signal(victim, signal.SIGKILL)
    if not await traffic:
        raise CliError("a consumer VM never got an answer from the notebook service")
    s.reset = await show_reset(cluster, consumer.address, registries[0], sockets[RESET_VM[0]], say)
    leases = await final_leases(registries[0], tls)
    watcher.cancel()
    recorder.stream.close()  # type: ignore[union-attr]

    requests = checker.requests_from_call_lines(recorder.lines)
    executions = checker.executions_from_vm_lines(checker.read_lines([vm_history]))
    exclusivity = checker.check(Recording([], [], checker.claims_from_lines(claims.lines), [], [],
                                          vm_calls=executions))
    codes = Counter(r.outcome.status for r in requests if r.outcome is not None)
    s.requests, s.ok, s.killed_host = len(requests), codes.pop("OK", 0), victim
    s.errors = sum(codes.values())
    s.errors_by_code = dict(codes)
    s.lost = s.requests - s.ok - s.errors
    s.gets_after_put = {state: recorder.states[state] for state in ("kept", "lost", "wrong")}
    s.leases_granted = len(claims.leases)
    s.violations = [f"{v.kind}: {v.detail}" for v in exclusivity.violations]
    s.violations += [f"state-leak: a Get found another value than its consumer VM's own {n} time(s)"
                     for n in [recorder.states["wrong"]] if n]
    s.exclusivity_violations = len(s.violations)
    s.failover_s = failover_seconds(requests, killed_ns)
    s.per_vm_requests = dict(sorted(Counter(e.vm for e in executions if e.ok).items()))
    s.leases = [{"lease_id": l.lease_id, "consumer_vm": l.consumer_vm, "members": [m.vm_id for m in l.members]}
                for l in leases]
    s.metrics = {name: proc.metrics for name, proc in cluster.procs.items() if proc.alive and proc.metrics}
    scraped = await asyncio.to_thread(metrics.scrape, consumer.metrics)
    s.metrics_ok = metrics.total(scraped, "leasenet_calls_total", kind="consumer_host", code="OK")
    return s


def render(s: Summary) -> str:
    rows = [[str(l["lease_id"]), SERVICE, f"{NETWORK}/{l['consumer_vm']}", "consumer1",
             str(len(l["members"])), ", ".join(l["members"])] for l in s.leases]  # type: ignore[arg-type]
    lines = ["", "Leases now:", table(rows, LEASE_HEADER), "", "Calls each producer VM ran (the VMs' own records):"]
    lines += [f"  {vm:<16} {n}" for vm, n in s.per_vm_requests.items()]
    r = s.reset
    lines += ["", f"VM failure: the process of {s.killed_vm} was SIGKILLed a third of the way in; its host registered "
                  f"a fresh process as a new incarnation after {s.vm_replaced_s} s.",
              f"Host failure: {s.killed_host} was SIGKILLed two thirds of the way in; calls flowed again after "
              f"{s.failover_s} s; its VMs left their pools and the pools refilled from the other host.",
              f"Reset: a value stored under a lease was {'kept' if r.get('kept_under_lease') else 'NOT kept'} while "
              f"the lease lasted and {'gone' if r.get('gone_after_reset') else 'STILL THERE'} after it ended "
              f"({r.get('vm')} restarted with an empty working directory in {r.get('restarted_s')} s)."]
    errors = ", ".join(f"{k} {v}" for k, v in s.errors_by_code.items()) or "none"
    states = ", ".join(f"{k} {v}" for k, v in s.gets_after_put.items())
    lines += [f"Calls: {s.requests} made, {s.ok} ok, {s.errors} errors ({errors}), {s.lost} lost; "
              f"a Get after its Put found: {states}",
              f"Leases granted: {s.leases_granted}; exclusivity violations: {s.exclusivity_violations}"]
    lines += [f"  ! {v}" for v in s.violations]
    if s.metrics:
        endpoints = ", ".join(f"{name} {address}" for name, address in s.metrics.items())
        lines += ["", f"Metrics (Prometheus, listed in METRICS.md): the consumer host counted {s.metrics_ok:.0f} OK "
                      f"calls in leasenet_calls_total. Every process served /metrics ({endpoints}; they "
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
