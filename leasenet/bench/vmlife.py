"""The VM life cycle of command VMs in `leasenet bench --calls` (issue 18 parts 2 and 7): how long a
command VM takes from a reset to serving again, and whether restarts slow grants.

On a cluster of its own (plaintext: etcd, a registry, four producer hosts, a consumer host; the
fleets and services are plans.LIFE_FLEETS), one role process (`vm-lifecycle`) measures

    restart-to-ready  reset: a consumer VM calls Whoami through its VIP endpoint (its pool of 1 is
                      leased and its VM used), then Detaches (its consumer host releases the lease;
                      the producer host restarts the used VM with an empty work dir). From the
                      Detach being sent to the registry's GetVm answering the VM's next incarnation
                      (a new `revision`: leasenet.inspection.next_incarnation), polled every POLL_S.
                      kill: SIGKILL of the VM's process (its pid from Whoami), to the same.
    grants            RequestLease latency (a fresh consumer VM each time, released at once, no call:
                      the VM stays warm) for a pool of 1 and of 4, from fleets of command VMs that are
                      all serving, alternating batch by batch with fleets of in-process VMs of the same
                      sizes; and, during each reset and kill, the pool of 1 from the command VMs while
                      one of them restarts (a grant every RESTARTING_GRANT_GAP_S at most).

The figures are reported, not judged: the issue sets no bar for them."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc.aio

from examples.notebook import notebook_pb2 as npb
from examples.notebook import notebook_pb2_grpc as npb_grpc
from leasenet.bench.harness import Bench
from leasenet.bench.measure import ms, percentile
from leasenet.bench.plans import LIFE_CLUSTER, LIFE_CONSUMER, LIFE_FLEETS, LIFE_SERVICE, LIFE_VMS, NETWORK
from leasenet.cluster import ConsumerVm, consumer_toml
from leasenet.inspection import next_incarnation
from mapping.config import to_toml
from wire import rpc
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc
from wire.tls import Kind

POLL_S = 0.005  # the resolution of a restart-to-ready figure
RESTARTING_GRANT_GAP_S = 0.05  # between the grants measured while a VM restarts
READY_S = 60.0  # a restarted VM (or the fleet at start) serving again, on a loaded 2-core machine
GRANT_HOST = "bench-life"
METHOD = ("restart-to-ready: from the release (Detach sent) or the SIGKILL to the registry's GetVm answering "
          f"the VM's next incarnation, polled every {POLL_S * 1000:.0f} ms; grants: RequestLease from a fresh "
          "consumer VM, released at once")


@dataclass(frozen=True, slots=True)
class LifeCounts:
    resets: int
    kills: int
    grant_rounds: int  # batches alternate between the fleets, round after round
    grants_per_batch: int


QUICK, FULL = LifeCounts(3, 1, 2, 5), LifeCounts(12, 3, 6, 10)


@dataclass(frozen=True, slots=True)
class VmLifeTask:
    role: ClassVar[str] = "vm-lifecycle"
    registry: str
    consumer_host: str
    vip: str  # the consumer VM's VIP endpoint for LIFE_SERVICE
    counts: LifeCounts


@dataclass(frozen=True, slots=True)
class VmLifeResult:
    reset_s: list[float]
    kill_s: list[float]
    grant_ms: dict[str, list[float]]  # service -> RequestLease latencies, all its VMs serving
    grant_restarting_ms: list[float]  # LIFE_SERVICE while one of its VMs restarts
    failures: dict[str, int] = field(default_factory=dict)
    event_loop: str = "asyncio"


# --- the role ------------------------------------------------------------------------------------
class Lifecycle:
    def __init__(self, task: VmLifeTask, registry: grpc.aio.Channel, host: grpc.aio.Channel,
                 vip: grpc.aio.Channel) -> None:
        self.task = task
        self.leasing = rpb_grpc.LeasingStub(registry)
        self.inspection = rpb_grpc.InspectionStub(registry)
        self.consumer = cpb_grpc.ConsumerHostStub(host)
        self.notebook = npb_grpc.NotebookStub(vip)
        self.fresh = itertools.count()  # numbers the fresh consumer VMs of the grants
        self.failures: Counter[str] = Counter()

    async def grant(self, service: str) -> float | None:
        """One RequestLease's latency in ms (None: refused, counted), the lease released at once."""
        n = next(self.fresh)
        t0 = time.perf_counter()
        try:
            lease = await self.leasing.RequestLease(rpb.RequestLeaseRequest(
                service=service, consumer_network=NETWORK, consumer_vm=f"10.7.{30 + n // 250}.{1 + n % 250}",
                consumer_host=GRANT_HOST), timeout=10)
        except grpc.aio.AioRpcError as exc:
            self.failures[f"grant {service}: {exc.code().name}"] += 1
            return None
        elapsed = time.perf_counter() - t0
        await self.leasing.ReleaseLease(rpb.LeaseRef(lease_id=lease.lease_id), timeout=10)
        return elapsed * 1000

    async def fleets_serving(self) -> None:
        """Until every fleet has all its VMs registered and free: the fleet is warm."""
        deadline = time.monotonic() + READY_S
        for service in LIFE_FLEETS:
            while True:
                listed = await self.inspection.ListVms(rpb.ListVmsRequest(service=service), timeout=10)
                if sum(1 for vm in listed.vms if not vm.lease_id and not vm.used) == LIFE_VMS:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {service} fleet did not have its {LIFE_VMS} VMs serving within "
                                       f"{READY_S:.0f} s")
                await asyncio.sleep(0.1)  # VM processes starting: poll until the deadline

    async def warm_grants(self) -> dict[str, list[float]]:
        """Batches of grants per fleet, the fleets in the other order each round (none runs first
        always); one discarded grant per fleet first (channels, caches)."""
        out: dict[str, list[float]] = {service: [] for service in LIFE_FLEETS}
        for service in LIFE_FLEETS:
            await self.grant(service)
        order = list(LIFE_FLEETS)
        for r in range(self.task.counts.grant_rounds):
            for service in order if r % 2 == 0 else order[::-1]:
                for _ in range(self.task.counts.grants_per_batch):
                    if (latency := await self.grant(service)) is not None:
                        out[service].append(latency)
        return out

    async def next_incarnation(self, vm_id: str, revision: int) -> float:
        """When the registry first answers a new incarnation of `vm_id` (perf_counter)."""
        at = await next_incarnation(self.inspection, vm_id, revision, within_s=READY_S, poll_s=POLL_S)
        if at is None:
            raise RuntimeError(f"the VM {vm_id} was not registered again within {READY_S:.0f} s")
        return at

    async def restart(self, kill: bool, restarting: list[float]) -> float:
        """Use a VM (a Whoami through the VIP endpoint), then release it or SIGKILL its process:
        seconds until its next incarnation is registered. Meanwhile, grants from the same fleet."""
        me = await self.whoami()
        before = await self.inspection.GetVm(rpb.GetRequest(id=me.vm_id), timeout=5)
        address, token = LIFE_CONSUMER
        detach = cpb.DetachRequest(network=NETWORK, address=address, token=token)
        t0 = time.perf_counter()
        if kill:
            os.kill(me.pid, signal.SIGKILL)
        else:
            await self.consumer.Detach(detach, timeout=10)
        ready = asyncio.create_task(self.next_incarnation(me.vm_id, before.revision))
        while not ready.done():
            if (latency := await self.grant(LIFE_SERVICE)) is not None:
                restarting.append(latency)
            await asyncio.wait({ready}, timeout=RESTARTING_GRANT_GAP_S)  # paced: the grants must not slow the restart
        elapsed = await ready - t0
        if kill:  # the pool refilled with another VM, never called: released without a reset
            await self.consumer.Detach(detach, timeout=10)
        return elapsed

    async def whoami(self) -> npb.WhoamiReply:
        """A call through the VIP endpoint (the consumer host leases a pool on the first one; its VM
        is then used), retried until the deadline while no VM is grantable yet."""
        deadline = time.monotonic() + READY_S
        while True:
            try:
                return await self.notebook.Whoami(npb.WhoamiRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no call through the VIP endpoint answered within {READY_S:.0f} s: "
                                       f"{exc.code().name}: {exc.details()}") from None
                await asyncio.sleep(0.1)  # a pool not granted yet: poll until the deadline


async def vm_lifecycle(task: VmLifeTask) -> VmLifeResult:
    async with rpc.channel(task.registry) as registry, rpc.channel(task.consumer_host) as host, \
            rpc.channel(task.vip) as vip:
        life = Lifecycle(task, registry, host, vip)
        await life.fleets_serving()
        grants = await life.warm_grants()
        restarting: list[float] = []
        resets = [await life.restart(False, restarting) for _ in range(task.counts.resets)]
        kills = [await life.restart(True, restarting) for _ in range(task.counts.kills)]
    return VmLifeResult(resets, kills, grants, restarting, dict(life.failures))


# --- the harness's side --------------------------------------------------------------------------
def run_vm_lifecycle(bench: Bench, quick: bool, vm_command: str, vip: Path) -> dict[str, Any]:
    """Start the life cycle's cluster (command VMs of `vm_command`), run the role, summarize."""
    counts = QUICK if quick else FULL
    bench.say(f"VM life cycle: {len(LIFE_FLEETS)} fleets of {LIFE_VMS} VMs, {counts.resets} resets and "
              f"{counts.kills} kills of a command VM, grants of pools of 1 and 4")
    config = bench.workdir / "vm-life.toml"
    config.write_text(to_toml(LIFE_CLUSTER))
    plain, registry = bench.plaintext_cluster("vm-life", config=config)
    consumer_config = bench.workdir / "c-life.toml"
    address, token = LIFE_CONSUMER
    consumer_config.write_text(consumer_toml([ConsumerVm(NETWORK, address, token,
                                                         vips=((LIFE_FLEETS[LIFE_SERVICE][0], f"unix://{vip}"),))]))
    specs = {f"p-{service}": bench.producer(f"p-{service}", service, LIFE_VMS, start, history=False,
                                            vm_command=vm_command if command else "")
             for service, (_, _, command, start) in LIFE_FLEETS.items()}
    specs["c-life"] = ["consumer-host", "--host-id", "c-life", "--listen", "127.0.0.1:0", "--registry", registry,
                       "--config", str(consumer_config)]
    procs = bench.start(specs, plain)
    plain.start_presence(Kind.CONSUMER, GRANT_HOST)  # the grants' pools hang on that consumer host's lease
    task = VmLifeTask(registry, procs["c-life"].address, f"unix://{vip}", counts)
    result = bench.role("vm-lifecycle", task, VmLifeResult, 120 + (counts.resets + counts.kills) * READY_S)
    return summarize_vm_lifecycle(result, counts)


def stats(samples: list[float], to_ms: Callable[[float], float | None] = ms) -> dict[str, Any]:
    """p50, p90 and n of samples (to_ms: their unit to ms)."""
    return {"p50_ms": to_ms(percentile(samples, 50)), "p90_ms": to_ms(percentile(samples, 90)), "n": len(samples)}


def in_ms(value: float) -> float | None:
    return round(value, 3) if value == value else None  # nan (no samples) -> None


def summarize_vm_lifecycle(result: VmLifeResult, counts: LifeCounts) -> dict[str, Any]:
    fleets = {"command VMs, all serving": {pool: result.grant_ms[s] for s, (_, pool, cmd, _) in LIFE_FLEETS.items()
                                           if cmd},
              "in-process VMs": {pool: result.grant_ms[s] for s, (_, pool, cmd, _) in LIFE_FLEETS.items() if not cmd},
              "command VMs, one restarting": {1: result.grant_restarting_ms}}
    return {"method": METHOD, "vms_per_fleet": LIFE_VMS, "counts": asdict(counts),
            "restart_to_ready": {"reset": stats(result.reset_s), "kill": stats(result.kill_s)},
            "grant": {fleet: {str(pool): stats(samples, in_ms) for pool, samples in pools.items()}
                      for fleet, pools in fleets.items()},
            "failures": result.failures}


def vm_lifecycle_problems(section: dict[str, Any]) -> list[str]:
    """What --calls --quick asserts of it: every figure measured, no grant refused."""
    figures = {f"restart-to-ready ({how})": s for how, s in section["restart_to_ready"].items()}
    figures.update({f"grant p50, pool of {pool} ({fleet})": s for fleet, pools in section["grant"].items()
                    for pool, s in pools.items()})
    problems = [f"VM life cycle: no {name} measured" for name, s in figures.items() if not s["n"] or not s["p50_ms"]]
    return problems + [f"VM life cycle: {what} x{n}" for what, n in section["failures"].items()]
